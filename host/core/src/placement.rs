//! Where a job's attempts may run: label requirements (`--require`),
//! tenant-bound worker pools, and the reason a job waits when no connected
//! worker qualifies. YARN's node labels and queues bound to them, as pure
//! data and one predicate, so the scheduler's placement is a lookup when
//! workers or jobs change, never a poll.

use crate::model::TenantId;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// One `--require`: `KEY=VALUE`, `KEY!=VALUE` or `KEY` (present).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LabelRequirement {
    Equals {
        key: String,
        value: String,
    },
    /// The label is absent, or has another value.
    NotEquals {
        key: String,
        value: String,
    },
    Present {
        key: String,
    },
}

impl LabelRequirement {
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        match self {
            LabelRequirement::Equals { key, value } => labels.get(key) == Some(value),
            LabelRequirement::NotEquals { key, value } => labels.get(key) != Some(value),
            LabelRequirement::Present { key } => labels.contains_key(key),
        }
    }
}

impl std::str::FromStr for LabelRequirement {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let key_ok = |k: &str| {
            !k.is_empty()
                && k.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
        };
        let (requirement, key) = if let Some((k, v)) = s.split_once("!=") {
            let r = LabelRequirement::NotEquals {
                key: k.into(),
                value: v.into(),
            };
            (r, k)
        } else if let Some((k, v)) = s.split_once('=') {
            let r = LabelRequirement::Equals {
                key: k.into(),
                value: v.into(),
            };
            (r, k)
        } else {
            (LabelRequirement::Present { key: s.into() }, s)
        };
        if !key_ok(key) {
            return Err(format!(
                "{s:?} is not KEY, KEY=VALUE or KEY!=VALUE (a key is letters, digits, '-', '_', '.', '/')"
            ));
        }
        Ok(requirement)
    }
}

impl fmt::Display for LabelRequirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LabelRequirement::Equals { key, value } => write!(f, "{key}={value}"),
            LabelRequirement::NotEquals { key, value } => write!(f, "{key}!={value}"),
            LabelRequirement::Present { key } => write!(f, "{key}"),
        }
    }
}

/// A job's placement constraints, part of its request.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    /// Every requirement must hold on a worker that runs the job's attempts.
    pub require: Vec<LabelRequirement>,
    /// Fail the job when no connected worker qualifies for this long;
    /// 0 waits for ever.
    pub timeout_ms: u64,
}

/// What the placement needs to know of a worker.
#[derive(Clone, Copy, Debug)]
pub struct WorkerView<'a> {
    pub labels: &'a BTreeMap<String, String>,
    /// The tenant this worker is dedicated to (it joined with that tenant's
    /// worker token), or `None` for a shared worker.
    pub pool: Option<&'a TenantId>,
}

/// What the placement needs to know of a job.
#[derive(Clone, Copy, Debug)]
pub struct JobView<'a> {
    pub tenant: &'a TenantId,
    pub placement: &'a Placement,
    /// The tenant's configuration confines its jobs to its own pool.
    pub pool_only: bool,
}

/// Whether `job`'s attempts may run on `worker`: a dedicated worker runs
/// only its tenant's attempts; a pool-only tenant runs only on its pool;
/// every label requirement holds.
pub fn may_run(worker: WorkerView<'_>, job: JobView<'_>) -> bool {
    let pool_ok = match worker.pool {
        Some(tenant) => tenant == job.tenant,
        None => !job.pool_only,
    };
    pool_ok
        && job
            .placement
            .require
            .iter()
            .all(|r| r.matches(worker.labels))
}

/// Why no worker among the `connected` ones qualifies for `job`: shown by
/// `wmr status` after "waiting: ", and the failure past `--placement-timeout`.
pub fn unplaceable_reason(job: JobView<'_>, connected: usize) -> String {
    let mut wants: Vec<String> = job
        .placement
        .require
        .iter()
        .map(|r| r.to_string())
        .collect();
    if job.pool_only {
        wants.insert(0, format!("pool={}", job.tenant.0));
    }
    let what = if wants.is_empty() {
        "no connected worker is open to this tenant".to_string()
    } else {
        format!("no connected worker matches {}", wants.join(","))
    };
    let noun = if connected == 1 { "worker" } else { "workers" };
    format!("{what} ({connected} {noun} connected)")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn req(s: &str) -> LabelRequirement {
        s.parse().expect("valid requirement")
    }

    #[test]
    fn requirements_parse_print_and_match() {
        let zone_a = labels(&[("zone", "a"), ("gpu", "")]);
        assert!(req("zone=a").matches(&zone_a));
        assert!(!req("zone=b").matches(&zone_a));
        assert!(req("zone!=b").matches(&zone_a));
        assert!(!req("zone!=a").matches(&zone_a));
        assert!(req("disk!=ssd").matches(&zone_a), "absent label is not ssd");
        assert!(req("gpu").matches(&zone_a));
        assert!(!req("tpu").matches(&zone_a));
        for s in ["zone=a", "zone!=b", "gpu", "k8s.io/arch=x"] {
            assert_eq!(req(s).to_string(), s);
        }
        assert_eq!(
            "=a".parse::<LabelRequirement>().unwrap_err(),
            "\"=a\" is not KEY, KEY=VALUE or KEY!=VALUE (a key is letters, digits, '-', '_', '.', '/')"
        );
        assert!("".parse::<LabelRequirement>().is_err());
        assert!("a b".parse::<LabelRequirement>().is_err());
    }

    #[test]
    fn pools_confine_both_ways() {
        let (alice, bob) = (TenantId("alice".into()), TenantId("bob".into()));
        let none = BTreeMap::new();
        let open = Placement::default();
        let shared = WorkerView {
            labels: &none,
            pool: None,
        };
        let alices = WorkerView {
            labels: &none,
            pool: Some(&alice),
        };
        let job = |tenant, pool_only| JobView {
            tenant,
            placement: &open,
            pool_only,
        };
        assert!(may_run(shared, job(&bob, false)));
        assert!(!may_run(alices, job(&bob, false)), "dedicated to alice");
        assert!(may_run(alices, job(&alice, false)));
        assert!(may_run(alices, job(&alice, true)));
        assert!(!may_run(shared, job(&alice, true)), "alice is pool-only");
    }

    #[test]
    fn the_waiting_reason_names_what_is_missing() {
        let alice = TenantId("alice".into());
        let placement = Placement {
            require: vec![req("zone=eu")],
            timeout_ms: 0,
        };
        let job = JobView {
            tenant: &alice,
            placement: &placement,
            pool_only: false,
        };
        assert_eq!(
            unplaceable_reason(job, 3),
            "no connected worker matches zone=eu (3 workers connected)"
        );
        let job = JobView {
            pool_only: true,
            ..job
        };
        assert_eq!(
            unplaceable_reason(job, 1),
            "no connected worker matches pool=alice,zone=eu (1 worker connected)"
        );
    }
}

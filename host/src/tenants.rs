//! Tenants: who may use a coordinator, with what quotas, and where.
//!
//! `STATE/tenants.toml` lists the tenants and the worker token, each token
//! stored only as its SHA-256 (`wmr tenant add` prints the token once). It
//! is read again on every authentication, so editing it (revoking a
//! tenant) takes effect without a restart. Without the file the coordinator
//! is in development mode: one tenant, `local`, for anyone who has pinned
//! its certificate, and any worker may join. The operator token
//! (`wmr tenant operator-token`) is for `wmr coordinator --http` only.

use crate::model::{Limits, TenantId};
use crate::storage::{self, S3Url};
use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

pub const FILE_NAME: &str = "tenants.toml";

/// What `tenants.toml` holds.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TenantsFile {
    /// SHA-256 (hex) of the token workers join with.
    #[serde(default)]
    pub worker_token_sha256: Option<String>,
    /// SHA-256 (hex) of the operator's token (`wmr tenant operator-token`):
    /// over `wmr coordinator --http` it sees every tenant's jobs.
    #[serde(default)]
    pub operator_token_sha256: Option<String>,
    #[serde(default)]
    pub tenants: BTreeMap<String, Tenant>,
}

/// One tenant's identity, place and quotas.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Tenant {
    pub token_sha256: String,
    /// Inputs and outputs must lie below this directory.
    pub root: PathBuf,
    /// Share of the slots relative to other tenants with work.
    #[serde(default = "one")]
    pub weight: u32,
    #[serde(default)]
    pub quota: Quota,
    /// SHA-256 (hex) of the token of workers dedicated to this tenant
    /// (`wmr tenant worker-token --tenant NAME`): they run and serve only
    /// its attempts.
    #[serde(default)]
    pub pool_worker_token_sha256: Option<String>,
    /// Its jobs run only on its dedicated workers (`--pool-only`).
    #[serde(default)]
    pub pool_only: bool,
}

fn default_job_output() -> u64 {
    Limits::default().job_output_bytes
}

fn one() -> u32 {
    1
}

/// Per-tenant limits; a job asking for more is refused, naming the quota.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Quota {
    pub max_concurrent_attempts: u32,
    pub max_fuel_per_attempt: u64,
    pub max_memory_per_attempt: u64,
    pub max_timeout_ms_per_attempt: u64,
    pub max_module_bytes: u64,
    pub max_output_bytes_per_attempt: u64,
    #[serde(default = "default_job_output")]
    pub max_output_bytes_per_job: u64,
    pub max_jobs_queued: u32,
}

impl Default for Quota {
    fn default() -> Self {
        let limits = Limits::default();
        Quota {
            max_concurrent_attempts: 64,
            max_fuel_per_attempt: limits.fuel,
            max_memory_per_attempt: limits.memory_bytes,
            max_timeout_ms_per_attempt: limits.timeout_ms,
            max_module_bytes: 32 << 20,
            max_output_bytes_per_attempt: limits.output_bytes,
            max_output_bytes_per_job: limits.job_output_bytes,
            max_jobs_queued: 16,
        }
    }
}

impl Quota {
    /// Set one quota by name (`wmr tenant add --quota NAME=VALUE`).
    pub fn set(&mut self, name: &str, value: u64) -> anyhow::Result<()> {
        let small = || u32::try_from(value).with_context(|| format!("{name}={value} is too large"));
        match name {
            "max_concurrent_attempts" => self.max_concurrent_attempts = small()?,
            "max_fuel_per_attempt" => self.max_fuel_per_attempt = value,
            "max_memory_per_attempt" => self.max_memory_per_attempt = value,
            "max_timeout_ms_per_attempt" => self.max_timeout_ms_per_attempt = value,
            "max_module_bytes" => self.max_module_bytes = value,
            "max_output_bytes_per_attempt" => self.max_output_bytes_per_attempt = value,
            "max_output_bytes_per_job" => self.max_output_bytes_per_job = value,
            "max_jobs_queued" => self.max_jobs_queued = small()?,
            _ => bail!(
                "unknown quota {name:?}; the quotas are max_concurrent_attempts, max_fuel_per_attempt, max_memory_per_attempt, max_timeout_ms_per_attempt, max_module_bytes, max_output_bytes_per_attempt, max_output_bytes_per_job, max_jobs_queued"
            ),
        }
        Ok(())
    }

    /// Check a job's limits and modules against the quota; the error names
    /// the quota and its value.
    pub fn check_job(&self, limits: &Limits, module_bytes: &[usize]) -> anyhow::Result<()> {
        let checks = [
            (
                "max_fuel_per_attempt",
                limits.fuel,
                self.max_fuel_per_attempt,
            ),
            (
                "max_memory_per_attempt",
                limits.memory_bytes,
                self.max_memory_per_attempt,
            ),
            (
                "max_timeout_ms_per_attempt",
                limits.timeout_ms,
                self.max_timeout_ms_per_attempt,
            ),
            (
                "max_output_bytes_per_attempt",
                limits.output_bytes,
                self.max_output_bytes_per_attempt,
            ),
            (
                "max_output_bytes_per_job",
                limits.job_output_bytes,
                self.max_output_bytes_per_job,
            ),
        ];
        for (name, asked, allowed) in checks {
            if asked > allowed {
                bail!("quota {name} is {allowed}; the job asks for {asked}");
            }
        }
        for &bytes in module_bytes {
            if bytes as u64 > self.max_module_bytes {
                bail!(
                    "quota max_module_bytes is {}; the module has {bytes} bytes",
                    self.max_module_bytes
                );
            }
        }
        Ok(())
    }
}

/// Who a request comes from, once authenticated.
#[derive(Clone, Debug)]
pub struct Principal {
    pub tenant: TenantId,
    /// `None`: development mode, no confinement.
    pub root: Option<PathBuf>,
    pub weight: u32,
    pub quota: Quota,
}

/// The same words for an unknown tenant and a wrong token: nothing is
/// revealed about which tenants exist.
pub const REFUSED: &str = "unknown tenant or wrong token";

/// Read `STATE/tenants.toml`; `None` when there is none (development mode).
pub fn load(state_dir: &Path) -> anyhow::Result<Option<TenantsFile>> {
    let path = state_dir.join(FILE_NAME);
    match std::fs::read_to_string(&path) {
        Ok(text) => toml::from_str(&text)
            .map(Some)
            .with_context(|| format!("{}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("{}", path.display())),
    }
}

fn token_hash(token: &str) -> String {
    crate::model::sha256_hex(token.as_bytes())
}

/// Check a client's tenant and token.
pub fn authenticate(state_dir: &Path, tenant: &TenantId, token: &str) -> anyhow::Result<Principal> {
    let Some(file) = load(state_dir)? else {
        return Ok(Principal {
            tenant: TenantId::local(),
            root: None,
            weight: 1,
            quota: Quota::default(),
        });
    };
    match file.tenants.get(&tenant.0) {
        Some(t) if constant_time_eq(&t.token_sha256, &token_hash(token)) => Ok(Principal {
            tenant: tenant.clone(),
            root: Some(t.root.clone()),
            weight: t.weight.max(1),
            quota: t.quota.clone(),
        }),
        _ => bail!(REFUSED),
    }
}

/// Check a worker's token (any worker may join in development mode): the
/// cluster's worker token admits a shared worker; a tenant's pool token a
/// worker dedicated to that tenant (returned).
pub fn authenticate_worker(state_dir: &Path, token: &str) -> anyhow::Result<Option<TenantId>> {
    let Some(file) = load(state_dir)? else {
        return Ok(None);
    };
    let hash = token_hash(token);
    if file
        .worker_token_sha256
        .as_ref()
        .is_some_and(|h| constant_time_eq(h, &hash))
    {
        return Ok(None);
    }
    let pool = file.tenants.iter().find(|(_, t)| {
        t.pool_worker_token_sha256
            .as_ref()
            .is_some_and(|h| constant_time_eq(h, &hash))
    });
    match pool {
        Some((name, _)) => Ok(Some(TenantId(name.clone()))),
        None => bail!("wrong worker token"),
    }
}

/// The name the operator presents with its token over HTTP
/// (`operator:TOKEN`); no tenant may take it.
pub const OPERATOR: &str = "operator";

/// Is `token` the operator's (`wmr tenant operator-token`)? Never in
/// development mode, where there are no tokens.
pub fn authenticate_operator(state_dir: &Path, token: &str) -> anyhow::Result<bool> {
    let Some(file) = load(state_dir)? else {
        return Ok(false);
    };
    Ok(file
        .operator_token_sha256
        .as_ref()
        .is_some_and(|h| constant_time_eq(h, &token_hash(token))))
}

/// `wmr tenant operator-token`: a new operator token (the old one stops
/// working); returns it (shown once: only its hash is stored).
pub fn new_operator_token(state_dir: &Path) -> anyhow::Result<String> {
    let mut file = load(state_dir)?.unwrap_or_default();
    let token = new_token();
    file.operator_token_sha256 = Some(token_hash(&token));
    save(state_dir, &file)?;
    Ok(token)
}

fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// A fresh random token.
fn new_token() -> String {
    (0..32)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}

/// `wmr tenant add`: create or replace a tenant; returns its token (shown
/// once: only its hash is stored).
pub fn add_tenant(
    state_dir: &Path,
    name: &str,
    root: &Path,
    weight: u32,
    quota: Quota,
    pool_only: bool,
) -> anyhow::Result<String> {
    anyhow::ensure!(
        !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
        "a tenant name is letters, digits, '-' and '_'"
    );
    anyhow::ensure!(
        name != OPERATOR,
        "{OPERATOR:?} is reserved for the operator (`wmr tenant operator-token`)"
    );
    let root = match S3Url::of_path(root) {
        Some(url) => url?.to_path(),
        None => std::path::absolute(root)?,
    };
    let mut file = load(state_dir)?.unwrap_or_default();
    let token = new_token();
    // Replacing a tenant keeps its pool's workers admitted.
    let pool_worker_token_sha256 = file
        .tenants
        .get(name)
        .and_then(|t| t.pool_worker_token_sha256.clone());
    file.tenants.insert(
        name.to_string(),
        Tenant {
            token_sha256: token_hash(&token),
            root,
            weight: weight.max(1),
            quota,
            pool_worker_token_sha256,
            pool_only,
        },
    );
    save(state_dir, &file)?;
    Ok(token)
}

/// `wmr tenant worker-token [--tenant NAME]`: a new token for shared
/// workers, or for workers dedicated to tenant `pool` (the old one stops
/// working).
pub fn new_worker_token(state_dir: &Path, pool: Option<&str>) -> anyhow::Result<String> {
    let mut file = load(state_dir)?.unwrap_or_default();
    let token = new_token();
    match pool {
        None => file.worker_token_sha256 = Some(token_hash(&token)),
        Some(name) => {
            let Some(tenant) = file.tenants.get_mut(name) else {
                bail!("no tenant {name}");
            };
            tenant.pool_worker_token_sha256 = Some(token_hash(&token));
        }
    }
    save(state_dir, &file)?;
    Ok(token)
}

/// `wmr tenant revoke`.
pub fn revoke(state_dir: &Path, name: &str) -> anyhow::Result<()> {
    let mut file = load(state_dir)?.unwrap_or_default();
    if file.tenants.remove(name).is_none() {
        bail!("no tenant {name}");
    }
    save(state_dir, &file)
}

fn save(state_dir: &Path, file: &TenantsFile) -> anyhow::Result<()> {
    std::fs::create_dir_all(state_dir)?;
    let path = state_dir.join(FILE_NAME);
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, toml::to_string_pretty(file)?)?;
    std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))
}

/// Confine `path` to `root`: resolved without `..` and through symlinks
/// (as far as it exists), it must lie below `root`.
pub fn confine(root: &Path, path: &Path) -> anyhow::Result<PathBuf> {
    if path.components().any(|c| c == Component::ParentDir) {
        bail!("path {} contains '..'", path.display());
    }
    if let Some(root) = S3Url::of_path(root) {
        return confine_object(&root?, path);
    }
    if storage::is_object(path) {
        bail!("path {} is outside the tenant's root", path.display());
    }
    let root = root
        .canonicalize()
        .with_context(|| format!("tenant root {}", root.display()))?;
    let absolute = if path.is_absolute() {
        path.to_path_buf()
    } else {
        root.join(path)
    };
    // Resolve the longest existing prefix (symlinks included), then append
    // the part that does not exist yet (an output directory).
    let mut existing = absolute.clone();
    let mut rest = Vec::new();
    while !existing.exists() {
        let Some(name) = existing.file_name() else {
            break;
        };
        rest.push(name.to_os_string());
        existing.pop();
    }
    let mut resolved = existing
        .canonicalize()
        .with_context(|| format!("{}", existing.display()))?;
    for name in rest.iter().rev() {
        resolved.push(name);
    }
    if !resolved.starts_with(&root) {
        bail!("path {} is outside the tenant's root", path.display());
    }
    Ok(resolved)
}

/// [`confine`] for a root in an object store (`s3://bucket/alice/`): the
/// path must be an object location in the same bucket, its key below the
/// root's prefix by whole segments; a relative path is taken below it.
fn confine_object(root: &S3Url, path: &Path) -> anyhow::Result<PathBuf> {
    let outside = || anyhow::anyhow!("path {} is outside the tenant's root", path.display());
    let url = match S3Url::of_path(path) {
        Some(url) => url?,
        None if path.is_relative() => {
            let text = path.to_str().ok_or_else(outside)?;
            S3Url::parse(&root.join(text).to_string())?
        }
        None => return Err(outside()),
    };
    let below = url.bucket == root.bucket
        && format!("{}/", url.key.trim_end_matches('/')).starts_with(&root.dir_prefix());
    if !below {
        return Err(outside());
    }
    Ok(url.to_path())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SECURITY: a tenant confined to `s3://bucket/alice/` names nothing of
    /// `s3://bucket/bob/`, another bucket, a local path, or `alicex/`.
    #[test]
    fn object_store_roots_confine_by_bucket_and_whole_prefix_segments() {
        let root = Path::new("s3://bucket/alice/");
        let ok = |p: &str| confine(root, Path::new(p)).unwrap();
        assert_eq!(
            ok("s3://bucket/alice/in"),
            PathBuf::from("s3://bucket/alice/in")
        );
        assert_eq!(ok("s3://bucket/alice"), PathBuf::from("s3://bucket/alice"));
        assert_eq!(ok("out/r1"), PathBuf::from("s3://bucket/alice/out/r1"));
        for outside in [
            "s3://bucket/bob/in",
            "s3://bucket/alicex/in",
            "s3://other/alice/in",
            "s3://bucket/",
            "/etc/passwd",
        ] {
            let e = confine(root, Path::new(outside)).unwrap_err();
            assert_eq!(
                e.to_string(),
                format!("path {outside} is outside the tenant's root")
            );
        }
        let e = confine(root, Path::new("s3://bucket/alice/../bob")).unwrap_err();
        assert_eq!(e.to_string(), "path s3://bucket/alice/../bob contains '..'");
        // A local root does not reach into a store.
        let dir = tempfile::tempdir().unwrap();
        let e = confine(dir.path(), Path::new("s3://bucket/alice/in")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "path s3://bucket/alice/in is outside the tenant's root"
        );
    }

    #[test]
    fn confinement_refuses_dotdot_absolute_paths_and_symlinks_that_leave() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("alice");
        std::fs::create_dir_all(root.join("data")).unwrap();
        std::fs::create_dir_all(dir.path().join("bob")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("bob"), root.join("escape")).unwrap();
        assert!(confine(&root, Path::new("data")).is_ok());
        assert!(confine(&root, Path::new("out/new")).is_ok());
        let refused = |p: &str| confine(&root, Path::new(p)).unwrap_err().to_string();
        assert!(refused("../bob").contains("contains '..'"));
        assert!(refused("/etc").contains("outside the tenant's root"));
        assert!(refused("escape/x").contains("outside the tenant's root"));
    }

    #[test]
    fn the_operator_token_is_stored_hashed_and_replaced_and_its_name_is_reserved() {
        let dir = tempfile::tempdir().unwrap();
        assert!(
            !authenticate_operator(dir.path(), "x").unwrap(),
            "development mode"
        );
        let first = new_operator_token(dir.path()).unwrap();
        assert!(authenticate_operator(dir.path(), &first).unwrap());
        assert!(!authenticate_operator(dir.path(), "nope").unwrap());
        let second = new_operator_token(dir.path()).unwrap();
        assert!(
            !authenticate_operator(dir.path(), &first).unwrap(),
            "replaced"
        );
        assert!(authenticate_operator(dir.path(), &second).unwrap());
        let text = std::fs::read_to_string(dir.path().join(FILE_NAME)).unwrap();
        assert!(!text.contains(&second), "only the hash is stored");
        let quota = Quota::default();
        assert!(add_tenant(dir.path(), OPERATOR, dir.path(), 1, quota, false).is_err());
    }

    #[test]
    fn tokens_are_checked_and_unknown_tenants_look_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let token =
            add_tenant(dir.path(), "alice", dir.path(), 2, Quota::default(), false).unwrap();
        let alice = TenantId("alice".into());
        assert_eq!(authenticate(dir.path(), &alice, &token).unwrap().weight, 2);
        let wrong = authenticate(dir.path(), &alice, "nope")
            .unwrap_err()
            .to_string();
        let unknown = authenticate(dir.path(), &TenantId("eve".into()), &token)
            .unwrap_err()
            .to_string();
        assert_eq!(wrong, REFUSED);
        assert_eq!(unknown, REFUSED);
        revoke(dir.path(), "alice").unwrap();
        assert!(authenticate(dir.path(), &alice, &token).is_err());
        let text = std::fs::read_to_string(dir.path().join(FILE_NAME)).unwrap();
        assert!(!text.contains(&token), "only the hash is stored");
    }

    #[test]
    fn quotas_name_themselves() {
        let quota = Quota {
            max_fuel_per_attempt: 10,
            ..Quota::default()
        };
        let limits = Limits {
            fuel: 11,
            ..Limits::default()
        };
        let e = quota.check_job(&limits, &[]).unwrap_err().to_string();
        assert_eq!(e, "quota max_fuel_per_attempt is 10; the job asks for 11");
    }
}

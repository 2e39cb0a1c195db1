//! `wmr status --json` and `wmr jobs --json` as the networked suites read
//! them. Their assertions are about the attempt log: which task ran on
//! which worker, when, with which epoch, and how it ended.

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Task {
    Map(u64),
    Reduce(u64),
}

impl Task {
    /// The attempt-private file name stem, as in ARCHITECTURE.md.
    pub fn attempt_stem(self, epoch: u64) -> String {
        match self {
            Task::Map(i) => format!("m-{i:05}.a{epoch}"),
            Task::Reduce(i) => format!("r-{i:05}.a{epoch}"),
        }
    }
}

/// One record of the attempt log.
#[derive(Clone, Debug)]
pub struct Attempt {
    pub task: Task,
    pub epoch: u64,
    pub worker: u64,
    /// Milliseconds since the job was submitted (the coordinator's clock).
    pub started_ms: u64,
    pub ended_ms: Option<u64>,
    /// "Committed", "Running", "RejectedStale", "Lost", "OutputLost" or
    /// "Failed" (whose reason is dropped), or "Superseded" (it lost a
    /// speculation race).
    pub outcome: String,
    /// A backup attempt started by speculation.
    pub speculative: bool,
}

impl Attempt {
    pub fn parse(record: &Value) -> Attempt {
        let task = &record["task"];
        let task = match (task.get("Map"), task.get("Reduce")) {
            (Some(i), None) => Task::Map(i.as_u64().expect("map index")),
            (None, Some(i)) => Task::Reduce(i.as_u64().expect("reduce index")),
            _ => panic!("bad task in attempt record {record}"),
        };
        let outcome = match &record["outcome"] {
            Value::String(s) => s.clone(),
            Value::Object(m) if m.len() == 1 => m.keys().next().unwrap().clone(),
            other => panic!("bad outcome {other} in attempt record {record}"),
        };
        let num = |field: &str| {
            record[field]
                .as_u64()
                .unwrap_or_else(|| panic!("attempt record without {field}: {record}"))
        };
        Attempt {
            task,
            epoch: num("epoch"),
            worker: num("worker"),
            started_ms: num("started_ms"),
            ended_ms: match &record["ended_ms"] {
                Value::Null => None,
                v => Some(v.as_u64().expect("ended_ms")),
            },
            outcome,
            speculative: record["speculative"].as_bool().unwrap_or(false),
        }
    }

    /// An attempt is one epoch of one task.
    pub fn key(&self) -> (Task, u64) {
        (self.task, self.epoch)
    }

    /// Both intervals intersect (an attempt still running ends at infinity).
    pub fn overlaps(&self, other: &Attempt) -> bool {
        let end = |a: &Attempt| a.ended_ms.unwrap_or(u64::MAX);
        self.started_ms < end(other) && other.started_ms < end(self)
    }
}

/// A job's `wmr status --json`.
#[derive(Clone, Debug)]
pub struct Status {
    pub job: String,
    pub phase: String,
    pub attempts: Vec<Attempt>,
    /// id → (name, connected)
    pub workers: BTreeMap<u64, (String, bool)>,
    pub raw: Value,
}

impl Status {
    pub fn parse(json: &Value) -> Status {
        let attempts = json["attempt_log"]
            .as_array()
            .unwrap_or_else(|| panic!("status without attempt_log: {json}"))
            .iter()
            .map(Attempt::parse)
            .collect();
        let workers = json["workers"]
            .as_array()
            .unwrap_or_else(|| panic!("status without workers: {json}"))
            .iter()
            .map(|w| {
                (
                    w["id"].as_u64().expect("worker id"),
                    (
                        w["name"].as_str().expect("worker name").to_string(),
                        w["connected"].as_bool().expect("worker connected"),
                    ),
                )
            })
            .collect();
        Status {
            job: json["job"]
                .as_str()
                .unwrap_or_else(|| panic!("status without job: {json}"))
                .to_string(),
            phase: json["phase"]
                .as_str()
                .unwrap_or_else(|| panic!("status without phase: {json}"))
                .to_string(),
            attempts,
            workers,
            raw: json.clone(),
        }
    }

    /// For failure messages: the phase, outcomes counted, the last attempts.
    pub fn summary(&self) -> String {
        let mut outcomes: BTreeMap<&str, usize> = BTreeMap::new();
        for a in &self.attempts {
            *outcomes.entry(a.outcome.as_str()).or_default() += 1;
        }
        let last = &self.attempts[self.attempts.len().saturating_sub(8)..];
        format!(
            "job {} phase {}, attempts by outcome {outcomes:?}, workers {:?}, last attempts {last:?}",
            self.job, self.phase, self.workers
        )
    }

    pub fn maps(&self) -> Vec<&Attempt> {
        self.attempts
            .iter()
            .filter(|a| matches!(a.task, Task::Map(_)))
            .collect()
    }

    pub fn committed(&self) -> Vec<&Attempt> {
        self.attempts
            .iter()
            .filter(|a| a.outcome == "Committed")
            .collect()
    }

    /// Every task committed in `before` (an earlier status of this job)
    /// did not run again: its committed attempt is still its newest.
    pub fn assert_committed_tasks_not_rerun(&self, before: &Status, event: &str) {
        for old in before.committed() {
            let newest = self
                .attempts
                .iter()
                .filter(|a| a.task == old.task)
                .max_by_key(|a| a.epoch)
                .unwrap();
            assert!(
                newest.key() == old.key() && newest.outcome == "Committed",
                "{old:?} was committed before {event}, but the task ran again: {newest:?}"
            );
        }
    }

    pub fn keys(&self) -> BTreeSet<(Task, u64)> {
        self.attempts.iter().map(Attempt::key).collect()
    }

    pub fn max_epoch(&self) -> u64 {
        self.attempts.iter().map(|a| a.epoch).max().unwrap_or(0)
    }

    pub fn worker_name(&self, id: u64) -> &str {
        &self
            .workers
            .get(&id)
            .unwrap_or_else(|| panic!("worker {id} not in status: {}", self.raw))
            .0
    }

    pub fn attempt(&self, task: Task, epoch: u64) -> &Attempt {
        self.attempts
            .iter()
            .find(|a| a.task == task && a.epoch == epoch)
            .unwrap_or_else(|| panic!("no attempt {task:?} epoch {epoch} in {}", self.raw))
    }

    /// Each of the 8 map tasks (one per book) and of the `reducers` reduce
    /// tasks has exactly one committed attempt: whatever failed or ran
    /// twice, the output was committed once.
    pub fn assert_one_commit_per_task(&self, reducers: u64) {
        let mut commits: BTreeMap<Task, usize> = BTreeMap::new();
        for a in self.committed() {
            *commits.entry(a.task).or_default() += 1;
        }
        let expected: BTreeMap<Task, usize> = (0..8)
            .map(Task::Map)
            .chain((0..reducers).map(Task::Reduce))
            .map(|t| (t, 1))
            .collect();
        assert_eq!(
            commits,
            expected,
            "committed attempts per task; {}",
            self.summary()
        );
    }
}

/// When `job` was submitted, from a `wmr jobs --json` listing: attempt
/// times are relative to it.
pub fn submitted_unix_ms(jobs: &Value, job: &str) -> u64 {
    jobs.as_array()
        .expect("jobs --json is an array")
        .iter()
        .find(|j| j["job"] == job)
        .unwrap_or_else(|| panic!("job {job} not in {jobs}"))["submitted_unix_ms"]
        .as_u64()
        .expect("submitted_unix_ms")
}

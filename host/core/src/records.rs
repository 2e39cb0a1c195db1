//! What the coordinator keeps durable: a job's record and the batch of
//! changes written in one transaction. Plain data: the `wmr` crate's
//! `store` module writes them to redb, the coordinator's state machine
//! ([`crate::cluster`]) says what to write and when.

use crate::model::{Capability, InputSplit, JobId, ModuleHash, TenantId, WorkerId};
use crate::scheduler::{AttemptRecord, JobOutcome, Phase};
use crate::summary::{JobSummary, PhaseChange};
use crate::wire::JobRequest;
use serde::{Deserialize, Serialize};

/// A job as stored.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JobRecord {
    pub id: JobId,
    pub tenant: TenantId,
    /// The request, with the module bytes removed (they are in `modules`).
    pub request: JobRequest,
    pub map_module: ModuleHash,
    pub reduce_module: ModuleHash,
    /// The splits as first planned: a resumed job must not re-plan them.
    pub splits: Vec<InputSplit>,
    pub transitions: Vec<PhaseChange>,
    pub outcome: Option<JobOutcome>,
    pub summary: Option<JobSummary>,
}

impl JobRecord {
    pub fn phase(&self) -> Option<Phase> {
        self.transitions.last().map(|t| t.phase)
    }
}

/// What one transaction writes.
#[derive(Clone, Debug, Default)]
pub struct Batch {
    pub modules: Vec<(ModuleHash, Vec<u8>)>,
    pub jobs: Vec<JobRecord>,
    pub attempts: Vec<(JobId, AttemptRecord)>,
    /// Shuffle capabilities of newly admitted (or restored) jobs.
    pub capabilities: Vec<(JobId, Capability)>,
    /// Worker identities seen for the first time, with the id each got:
    /// a worker keeps its id across the coordinator's restarts, so the
    /// attempt records name it for good.
    pub workers: Vec<(String, WorkerId)>,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.modules.is_empty()
            && self.jobs.is_empty()
            && self.attempts.is_empty()
            && self.capabilities.is_empty()
            && self.workers.is_empty()
    }
}

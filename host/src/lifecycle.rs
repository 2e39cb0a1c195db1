//! One job lifecycle for `wmr run` and the coordinator: validate, plan,
//! prepare, then (decided by the state machine, [`crate::cluster`]) commit
//! or clean up. Both drivers call these and nothing else for a job's files,
//! so the two modes cannot drift apart.

use crate::cluster::Clock;
use crate::commit::JobDirs;
use crate::protocol::{DeadLetter, JobId, ModuleHash, TenantId};
use crate::records::JobRecord;
use crate::scheduler::Phase;
use crate::split;
use crate::summary::PhaseChange;
use crate::wire::JobRequest;
use std::path::Path;
use std::time::Instant;

/// The time now, for the state machine.
pub fn clock() -> Clock {
    Clock {
        now: Instant::now(),
        unix_ms: crate::store::unix_ms(),
    }
}

/// Validate `request` (module bytes already taken out), plan its splits and
/// prepare its directories. Every check comes before the first directory is
/// created: a refused job leaves nothing behind.
pub fn plan_job(
    job: JobId,
    tenant: TenantId,
    request: JobRequest,
    (map_module, reduce_module): (ModuleHash, ModuleHash),
    work_root: &Path,
    unix_ms: u64,
) -> anyhow::Result<(JobRecord, JobDirs)> {
    crate::protocol::check_job_settings(
        request.reducers,
        request.split_bytes,
        request.max_attempts,
        &request.limits,
    )
    .map_err(anyhow::Error::msg)?;
    let files = split::discover_inputs(&request.inputs)?;
    let splits = split::plan_splits(&files, request.split_bytes)?;
    let dirs = JobDirs::new(job, work_root, &request.output);
    dirs.prepare()?;
    let record = JobRecord {
        id: job,
        tenant,
        request,
        map_module,
        reduce_module,
        splits,
        transitions: vec![PhaseChange {
            phase: Phase::Submitted,
            unix_ms,
            reason: "submitted".into(),
        }],
        outcome: None,
        summary: None,
    };
    Ok((record, dirs))
}

/// Carry out [`crate::cluster::Effect::CommitJob`]: publish the output and
/// the dead letters, `_SUCCESS` last.
pub fn commit_job(dirs: &JobDirs, dead_letters: &[DeadLetter]) -> Result<(), String> {
    dirs.finish(dead_letters).map_err(|e| format!("{e:#}"))
}

/// Carry out [`crate::cluster::Effect::CleanupJob`]: a job that did not
/// complete publishes nothing.
pub fn cleanup_job(dirs: &JobDirs) {
    if let Err(e) = dirs.cleanup_work() {
        tracing::warn!(job = %dirs.job, "cleaning up: {e:#}");
    }
}

//! One job lifecycle for `wmr run` and the coordinator: validate, plan,
//! prepare, then (decided by the state machine, [`crate::cluster`]) commit
//! or clean up. Both drivers call these and nothing else for a job's files,
//! so the two modes cannot drift apart.

use crate::cluster::Clock;
use crate::commit::JobDirs;
use crate::model::{DeadLetter, JobId, ModuleHash, TenantId};
use crate::records::JobRecord;
use crate::scheduler::Phase;
use crate::summary::PhaseChange;
use crate::wire::JobRequest;
use crate::{sampler, split};
use std::path::Path;
use std::time::Instant;

/// The time now, for the state machine.
pub fn clock() -> Clock {
    Clock {
        now: Instant::now(),
        unix_ms: crate::store::unix_ms(),
    }
}

/// Validate `request` (module bytes already taken out), plan its splits,
/// settle its partitioner and prepare its directories. Every check comes
/// before the first directory is created: a refused job leaves nothing
/// behind.
///
/// `map` is the job's map component: a `--partitioner range` job without
/// boundaries runs it over a sample of the input to choose them
/// ([`sampler`]); they are stored in the record's request, so a restored or
/// resumed job keeps them.
pub fn plan_job(
    job: JobId,
    tenant: TenantId,
    mut request: JobRequest,
    (map_module, reduce_module): (ModuleHash, ModuleHash),
    map: sampler::MapComponent<'_>,
    work_root: &Path,
    unix_ms: u64,
) -> anyhow::Result<(JobRecord, JobDirs)> {
    crate::model::check_job_settings(
        request.reducers,
        request.split_bytes,
        request.max_attempts,
        &request.limits,
        &request.shuffle_settings,
    )
    .map_err(anyhow::Error::msg)?;
    let files = split::discover_inputs(&request.inputs)?;
    let splits = split::plan_splits(&files, request.split_bytes)?;
    sampler::settle_partitioner(&mut request, &splits, &map_module, &map)?;
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

//! The messages of the networked protocol, one enum per direction.
//!
//! Every stream starts with an [`Open`] frame saying what it is for. A
//! worker keeps one control stream open for its whole connection; module
//! fetches and client requests each use a stream of their own.

use crate::model::{
    Assignment, AttemptEpoch, AttemptReport, Capability, JobId, Limits, ModuleHash, OutputDigest,
    OutputFormat, Peer, ShuffleSettings, TaskId, TenantId, WorkerId,
};
use crate::placement::Placement;
use crate::scheduler::{AttemptRecord, Phase};
use crate::summary::JobSummary;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// The first frame of every stream.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Open {
    /// A worker's control stream.
    Worker {
        name: String,
        slots: u32,
        labels: BTreeMap<String, String>,
        /// Where this worker serves its map outputs to reducers.
        shuffle: Option<Peer>,
        /// The cluster's worker token (`wmr tenant worker-token`).
        token: String,
        /// This worker's durable identity (a random id kept in its work
        /// dir): the same across its reconnections and the coordinator's
        /// restarts. A claim: under mutual TLS the coordinator uses the
        /// certificate's fingerprint instead.
        identity: String,
    },
    /// A reducer fetches one partition of a committed map output from the
    /// worker holding it (answered with [`PartitionReply`]). Served only
    /// when `capability` is the job's (see [`Capability`]).
    FetchPartition {
        job: JobId,
        task: TaskId,
        epoch: AttemptEpoch,
        partition: u32,
        capability: Capability,
    },
    /// Fetch a module by hash (answered with [`ModuleReply`]). Answered only
    /// on a connection whose worker control stream was admitted (worker
    /// token and, with mutual TLS, an allowed certificate).
    FetchModule(ModuleHash),
    /// A client request (answered with [`ClientReply`] frames).
    Client {
        tenant: TenantId,
        /// The tenant's secret (`wmr tenant add`); checked on every stream.
        token: String,
        request: ClientRequest,
    },
}

/// Worker → coordinator, on the control stream.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum FromWorker {
    Heartbeat,
    Finished(AttemptReport),
    /// Finish what is running, take nothing new (SIGTERM).
    Draining,
    /// The result of a [`ToWorker::Commit`].
    Committed {
        job: JobId,
        task: TaskId,
        epoch: AttemptEpoch,
        result: Result<(), String>,
    },
    // New variants go last: a variant's position is its encoding.
    /// The committed map outputs this worker still holds, sent first thing
    /// on every session (in frames of at most [`ANNOUNCE_CHUNK`]). Each is
    /// re-adopted if it is the committed epoch of its task in the
    /// coordinator's durable record, with the same digest, held by this
    /// same worker; otherwise the coordinator answers `Release` (or
    /// `JobDone` for a job it does not run).
    Announce(Vec<HeldOutput>),
}

/// Held outputs per [`FromWorker::Announce`] frame, at most.
pub const ANNOUNCE_CHUNK: usize = 4096;

/// A committed map output on a worker's disk, as it re-announces it; the
/// digest is taken from the file's bytes at announcement time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldOutput {
    pub job: JobId,
    pub task: TaskId,
    pub epoch: AttemptEpoch,
    pub digest: OutputDigest,
}

/// Coordinator → worker, on the control stream.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum ToWorker {
    Welcome {
        worker: WorkerId,
        heartbeat_ms: u64,
        /// The tenant this worker is dedicated to (it joined with that
        /// tenant's worker token): it runs and serves nobody else's attempts.
        pool: Option<TenantId>,
    },
    /// The worker may not join (wrong worker token).
    Refused(String),
    Assign(Box<Assignment>),
    /// Stop this attempt now (its epoch is stale, or the job ended).
    Interrupt {
        job: JobId,
        task: TaskId,
        epoch: AttemptEpoch,
    },
    /// The report of this attempt was processed (accepted or rejected);
    /// the worker may forget it.
    Ack {
        job: JobId,
        task: TaskId,
        epoch: AttemptEpoch,
    },
    /// Publish this map attempt's output on the worker (worker-local shuffle).
    Commit {
        job: JobId,
        task: TaskId,
        epoch: AttemptEpoch,
    },
    /// Delete this attempt's private files (stale or failed).
    Discard {
        job: JobId,
        task: TaskId,
        epoch: AttemptEpoch,
    },
    /// The job ended: delete everything the worker kept for it.
    JobDone {
        job: JobId,
    },
    // New variants go last: a variant's position is its encoding.
    /// A committed map output this worker announced is not wanted (not the
    /// committed epoch in the durable record, a different digest, another
    /// worker's): delete it.
    Release {
        job: JobId,
        task: TaskId,
        epoch: AttemptEpoch,
    },
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum PartitionReply {
    /// The next piece of the partition's blocks (see the intermediate
    /// format), at most [`PARTITION_CHUNK_BYTES`]: a partition of any size
    /// streams through bounded frames and is spooled to disk.
    Chunk(Vec<u8>),
    /// The partition is complete: `bytes` were sent in all.
    End {
        bytes: u64,
    },
    Missing(String),
}

/// The largest [`PartitionReply::Chunk`].
pub const PARTITION_CHUNK_BYTES: usize = 1 << 20;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum ModuleReply {
    Found(Vec<u8>),
    Missing,
    /// The connection has no admitted worker control stream.
    Refused(String),
}

/// What a client submits. Paths are absolute: coordinator and workers
/// share the filesystem (shared-store mode).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JobRequest {
    pub map_module: Vec<u8>,
    /// `None`: the map module is the reduce module too.
    pub reduce_module: Option<Vec<u8>>,
    pub inputs: Vec<String>,
    pub output: PathBuf,
    pub output_format: OutputFormat,
    pub reducers: u32,
    pub split_bytes: u64,
    pub limits: Limits,
    pub params: BTreeMap<String, String>,
    pub max_attempts: u32,
    pub shuffle_settings: ShuffleSettings,
    /// Which workers may run the job's attempts (`--require`).
    pub placement: Placement,
    /// Backup attempts for stragglers (`--speculate`; off by default, as
    /// in Spark and Hadoop).
    pub speculate: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum ClientRequest {
    /// Answered with `Submitted`, then `Progress`…, then `Done`.
    Submit(Box<JobRequest>),
    /// A job by id (or id prefix); the newest job when `None`.
    Status(Option<String>),
    Cancel(String),
    /// Follow a submitted job: `Progress`…, then `Done` (at once if ended).
    Watch(String),
    /// Every job the coordinator knows (durable across restarts).
    Jobs,
    /// Run a failed or cancelled job again; committed tasks are kept.
    Resume(String),
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum ClientReply {
    Submitted {
        job: String,
    },
    Progress {
        phase: Phase,
        committed: usize,
        running: usize,
        total: usize,
    },
    Done(Box<JobSummary>),
    Status(Box<StatusReport>),
    Cancelled {
        job: String,
    },
    Jobs(Vec<JobListing>),
    Error(String),
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JobListing {
    pub job: String,
    pub phase: Phase,
    pub outcome: Option<crate::scheduler::JobOutcome>,
    pub committed: usize,
    pub tasks: usize,
    pub submitted_unix_ms: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WorkerInfo {
    pub id: WorkerId,
    pub name: String,
    pub slots: u32,
    pub connected: bool,
    pub labels: BTreeMap<String, String>,
    /// The tenant it is dedicated to, if any.
    pub pool: Option<TenantId>,
}

/// `wmr status --json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StatusReport {
    pub job: String,
    pub phase: Phase,
    pub outcome: Option<crate::scheduler::JobOutcome>,
    pub tasks: usize,
    pub committed: usize,
    pub running: usize,
    pub pending: usize,
    /// Why the job's pending tasks cannot be placed ("waiting: no
    /// connected worker matches zone=eu (3 workers connected)"), if so.
    pub waiting: Option<String>,
    pub attempt_log: Vec<AttemptRecord>,
    pub workers: Vec<WorkerInfo>,
    /// Every phase change, with its time and reason (durable).
    pub transitions: Vec<crate::summary::PhaseChange>,
    /// Aggregates over the attempt log: "job", "map" and "reduce".
    pub totals: BTreeMap<String, Totals>,
}

/// Work done, summed over attempts (all attempts for time and fuel, the
/// committed ones for bytes, records and counters), including attempts
/// from before a coordinator restart.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Totals {
    pub attempts: u64,
    pub committed: u64,
    pub wall_ms: u64,
    pub fuel_used: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub records_out: u64,
    pub counters: BTreeMap<String, i64>,
}

impl Totals {
    pub fn of(log: &[AttemptRecord]) -> BTreeMap<String, Totals> {
        let mut totals: BTreeMap<String, Totals> = BTreeMap::new();
        for record in log {
            let phase = match record.task {
                TaskId::Map(_) => "map",
                TaskId::Reduce(_) => "reduce",
            };
            for key in ["job", phase] {
                let t = totals.entry(key.to_string()).or_default();
                t.attempts += 1;
                let Some(stats) = &record.stats else { continue };
                t.wall_ms += stats.wall_ms;
                t.fuel_used += stats.fuel_used;
                if record.outcome == crate::scheduler::AttemptOutcome::Committed {
                    t.committed += 1;
                    t.bytes_in += stats.bytes_in;
                    t.bytes_out += stats.bytes_out;
                    t.records_out += stats.records_out;
                    for (name, value) in &stats.counters {
                        // Saturating: guests choose the deltas.
                        let total = t.counters.entry(name.clone()).or_default();
                        *total = total.saturating_add(*value);
                    }
                }
            }
        }
        totals
    }
}

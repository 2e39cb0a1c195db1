//! The coordinator's state machine: every job, tenant and worker, in the
//! style of quinn-proto. Time and events go in (a worker joined, a worker's
//! message, a client's request, a commit's result, a timer), effects come
//! out in order ([`Effect`]: persist these records, send this to that
//! worker, reply to that client, commit these files). The QUIC server and
//! the redb store (`wmr coordinator`) and the embedded driver (`wmr run`)
//! only carry events in and effects out, so everything the coordinator
//! decides is exercised by the deterministic simulation.
//!
//! **I10 persist before effect.** Every effect that lets something outside
//! the machine act on a state change (an assignment, a commit, an `Ack`
//! that lets a worker forget a report, a reply to a client) comes after the
//! [`Effect::Persist`] holding that change. A driver carries effects out in
//! order and stops if a `Persist` fails, so nothing acknowledged is ever
//! missing from the durable state after a crash.

use crate::model::{
    AttemptEpoch, Capability, DeadLetter, JobId, ModuleHash, Peer, Shuffle, TaskId, TaskInput,
    TenantId, WorkerId,
};
use crate::placement::{JobView, WorkerView, may_run, unplaceable_reason};
use crate::records::{Batch, JobRecord};
use crate::scheduler::{
    Action, AttemptOutcome, AttemptRecord, Event, JobOutcome, JobPlan, Phase, RestoredMapOutputs,
    Scheduler, SchedulerConfig, Speculation,
};
use crate::summary::{JobSummary, PhaseChange, dead_letters, summarize};
use crate::wire::{
    ClientReply, FromWorker, HeldOutput, JobListing, JobRequest, StatusReport, ToWorker, Totals,
    WorkerInfo,
};
use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
pub struct ClusterConfig {
    pub heartbeat: Duration,
    /// A running attempt not renewed by a heartbeat for this long is lost.
    pub lease: Duration,
    /// Where map outputs live: on the workers that produced them
    /// (`WorkerLocal`: they commit them), or where they outlive those
    /// workers and the coordinator commits them (`SharedStore`: in
    /// `work_root`, shared by all; `Object`: in an object store).
    pub shuffle: Shuffle,
    pub work_root: PathBuf,
}

/// The time an event happens: monotonic for leases and timers, wall-clock
/// for the times written to the durable record.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    pub now: Instant,
    pub unix_ms: u64,
}

/// A client stream, named by the driver; replies go to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClientId(pub u64);

/// What a job's tenant may use, as it stands when the job is admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TenantTerms {
    /// Its share of the cluster relative to other tenants.
    pub weight: u32,
    /// At most this many of its attempts run at once.
    pub max_concurrent_attempts: u32,
    /// At most this many of its jobs are unfinished at once.
    pub max_jobs_queued: u32,
    /// Its jobs run only on workers dedicated to it (its pool).
    pub pool_only: bool,
}

/// What the driver must do, in order (I10).
#[derive(Clone, Debug)]
pub enum Effect {
    /// Write these records in one transaction; stop if that fails.
    Persist(Box<Batch>),
    /// Send `message` to `worker` (dropped if it is gone: its loss is an
    /// event of its own).
    Send { worker: WorkerId, message: ToWorker },
    /// Answer `client`. `Done` and `Error` end a `Submit` or `Watch`
    /// stream; the other requests get exactly one reply.
    Reply {
        client: ClientId,
        reply: ClientReply,
    },
    /// Shared store: publish this attempt's files (atomic rename), then
    /// call [`Cluster::commit_finished`].
    CommitAttempt {
        job: JobId,
        task: TaskId,
        epoch: AttemptEpoch,
    },
    /// Shared store: delete this attempt's private files.
    DiscardAttempt {
        job: JobId,
        task: TaskId,
        epoch: AttemptEpoch,
    },
    /// Every task committed: publish the job's output and these dead
    /// letters, then call [`Cluster::job_committed`].
    CommitJob {
        job: JobId,
        dead_letters: Vec<DeadLetter>,
    },
    /// The job ended without publishing: remove its intermediate files.
    CleanupJob { job: JobId },
}

struct WorkerEntry {
    name: String,
    slots: u32,
    labels: BTreeMap<String, String>,
    /// The tenant it is dedicated to (it joined with that tenant's token).
    pool: Option<TenantId>,
    shuffle: Option<Peer>,
    connected: bool,
    /// Finishing what it runs, taking nothing new.
    draining: bool,
    /// When it last joined or sent a message (heartbeats included), unix ms:
    /// the web UI's heartbeat age.
    last_heard_unix_ms: u64,
}

struct JobEntry {
    id: JobId,
    /// Carried in every assignment: authorises shuffle fetches of this job.
    capability: Capability,
    scheduler: Scheduler,
    watchers: Vec<ClientId>,
    started: Instant,
    summary: Option<JobSummary>,
    /// The durable record, rewritten when the phase changes.
    record: JobRecord,
    /// This job's share of each worker's slots, as last told its scheduler.
    quotas: BTreeMap<WorkerId, u32>,
    terms: TenantTerms,
    /// `CommitJob` was emitted; `job_committed` has not come back yet.
    committing: bool,
    /// Since when, and why, no connected worker may run its pending tasks.
    waiting: Option<(Instant, String)>,
}

impl JobEntry {
    fn view(&self) -> JobView<'_> {
        JobView {
            tenant: &self.record.tenant,
            placement: &self.record.request.placement,
            pool_only: self.terms.pool_only,
        }
    }

    /// When `--placement-timeout` fails the job, if it is waiting.
    fn placement_deadline(&self) -> Option<Instant> {
        let timeout = self.record.request.placement.timeout_ms;
        match &self.waiting {
            Some((since, _)) if timeout > 0 => Some(*since + Duration::from_millis(timeout)),
            _ => None,
        }
    }
}

impl WorkerEntry {
    fn view(&self) -> WorkerView<'_> {
        WorkerView {
            labels: &self.labels,
            pool: self.pool.as_ref(),
        }
    }

    /// Open to new attempts.
    fn live(&self) -> bool {
        self.connected && !self.draining
    }
}

/// Who reads the cluster through `wmr coordinator --http`: one tenant, or
/// the operator (every tenant's jobs and workers).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Viewer {
    Tenant(TenantId),
    Operator,
}

impl Viewer {
    pub fn sees(&self, tenant: &TenantId) -> bool {
        match self {
            Viewer::Tenant(own) => own == tenant,
            Viewer::Operator => true,
        }
    }
}

/// Plain numbers for `/metrics`, computed from the cluster at a scrape
/// ([`Cluster::metrics_snapshot`]). Cumulative numbers (attempts, bytes,
/// fuel, dead letters) are sums over the jobs the coordinator knows, which
/// are durable, so they do not fall back at a restart.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MetricsSnapshot {
    /// Jobs by phase (every phase present).
    pub jobs_by_phase: BTreeMap<Phase, u64>,
    /// Attempts by outcome label (every label present): see [`outcome_label`].
    pub attempts_by_outcome: BTreeMap<&'static str, u64>,
    /// Durations (ms, ended − started) of ended attempts, by "map"/"reduce".
    pub attempt_ms: BTreeMap<&'static str, Vec<u64>>,
    /// Of committed attempts, as in [`Totals`].
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub records_out: u64,
    /// Of every attempt.
    pub fuel_used: u64,
    /// Records skipped by committed attempts.
    pub dead_letters: u64,
    /// Unfinished jobs by tenant (what `max_jobs_queued` limits).
    pub queued_jobs: BTreeMap<TenantId, u64>,
    pub workers: Vec<WorkerMetrics>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerMetrics {
    pub id: WorkerId,
    pub name: String,
    pub slots: u32,
    /// Attempts of the visible jobs running on it.
    pub busy: u32,
    pub connected: bool,
}

pub const ALL_PHASES: [Phase; 6] = [
    Phase::Submitted,
    Phase::Mapping,
    Phase::Reducing,
    Phase::Completed,
    Phase::Failed,
    Phase::Cancelled,
];

pub const ATTEMPT_OUTCOMES: [&str; 7] = [
    "running",
    "committed",
    "failed",
    "rejected_stale",
    "lost",
    "output_lost",
    "superseded",
];

/// An attempt outcome as a metric label (the failure's reason is left out:
/// labels stay few).
pub fn outcome_label(outcome: &AttemptOutcome) -> &'static str {
    match outcome {
        AttemptOutcome::Running => "running",
        AttemptOutcome::Committed => "committed",
        AttemptOutcome::Failed(_) => "failed",
        AttemptOutcome::RejectedStale => "rejected_stale",
        AttemptOutcome::Lost => "lost",
        AttemptOutcome::OutputLost => "output_lost",
        AttemptOutcome::Superseded => "superseded",
    }
}

/// A job as the web UI's job page shows it: `wmr status --json` and what
/// was asked for.
#[derive(Clone, Debug)]
pub struct JobDetail {
    pub tenant: TenantId,
    pub report: StatusReport,
    /// The request as submitted, without the module bytes: inputs, output,
    /// parameters, limits, placement.
    pub request: JobRequest,
    /// Records skipped by committed attempts (skip mode).
    pub dead_letters: Vec<DeadLetter>,
}

/// A job as the web UI's jobs page lists it.
#[derive(Clone, Debug)]
pub struct JobRow {
    pub tenant: TenantId,
    pub listing: JobListing,
    pub running: usize,
    /// When it completed, failed or was cancelled (unix ms).
    pub ended_unix_ms: Option<u64>,
}

/// A worker as the web UI's workers page shows it.
#[derive(Clone, Debug)]
pub struct WorkerDetail {
    pub info: WorkerInfo,
    /// Attempts of the jobs the viewer may see running on it now.
    pub running: u32,
    pub draining: bool,
    /// When it last joined or sent anything (heartbeats included), unix ms.
    pub last_heard_unix_ms: u64,
}

/// The coordinator's state across jobs, tenants and workers.
pub struct Cluster {
    config: ClusterConfig,
    workers: BTreeMap<WorkerId, WorkerEntry>,
    next_worker: u32,
    jobs: Vec<JobEntry>,
    /// Indexes into `jobs` of the unfinished jobs, oldest first. They share
    /// the workers' slots (see `rebalance`).
    admitted: Vec<usize>,
    effects: VecDeque<Effect>,
    /// Durable worker identities and their ids (persisted when first seen).
    identities: BTreeMap<String, WorkerId>,
    /// How long a restored job waits for workers to re-announce its
    /// committed map outputs before running those tasks again.
    reannounce_window: Duration,
}

/// A worker's session idles out after this many leases of silence (I13).
pub const SESSION_IDLE_LEASES: u32 = 3;

impl Cluster {
    pub fn new(config: ClusterConfig) -> Self {
        // A worker notices a restarted coordinator at once (the stateless
        // reset of its old connection), a dead one within its session's idle
        // timeout; then it retries every 5 s at most.
        let reannounce_window = config.lease * SESSION_IDLE_LEASES + Duration::from_secs(10);
        Cluster {
            config,
            workers: BTreeMap::new(),
            next_worker: 1,
            jobs: Vec::new(),
            admitted: Vec::new(),
            effects: VecDeque::new(),
            identities: BTreeMap::new(),
            reannounce_window,
        }
    }

    /// How long restored jobs wait for their map outputs to be re-announced
    /// (set before [`Self::restore`]).
    pub fn set_reannounce_window(&mut self, window: Duration) {
        self.reannounce_window = window;
    }

    /// The worker identities an earlier incarnation persisted, before any
    /// worker joins: a worker that comes back gets its old id, so the
    /// durable attempt records name it, and new ids are above every old one.
    pub fn restore_workers(&mut self, known: impl IntoIterator<Item = (String, WorkerId)>) {
        debug_assert!(self.workers.is_empty(), "workers restored after one joined");
        for (identity, id) in known {
            self.next_worker = self.next_worker.max(id.0 + 1);
            self.identities.insert(identity, id);
        }
    }

    // ---- outputs ----

    /// The next thing the driver must do, in order.
    #[must_use]
    pub fn poll_effect(&mut self) -> Option<Effect> {
        self.effects.pop_front()
    }

    /// When [`Self::handle_timeout`] must next be called.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let jobs = self.admitted.iter().map(|&i| &self.jobs[i]);
        jobs.flat_map(|j| [j.scheduler.poll_timeout(), j.placement_deadline()])
            .flatten()
            .min()
    }

    // ---- workers ----

    /// A worker's control stream was admitted: it gets an id and a welcome.
    /// `pool` is the tenant whose worker token it joined with, if any.
    pub fn worker_joined(
        &mut self,
        clock: Clock,
        name: String,
        slots: u32,
        labels: BTreeMap<String, String>,
        pool: Option<TenantId>,
        shuffle: Option<Peer>,
    ) -> WorkerId {
        self.worker_joined_as(clock, None, name, slots, labels, pool, shuffle)
    }

    /// [`Self::worker_joined`] for a worker with a durable `identity`: it
    /// gets the id it had before (in this incarnation or an earlier one),
    /// or a new one, persisted before the welcome (I10). A second
    /// connection of a connected identity replaces the first, which is
    /// lost.
    #[allow(clippy::too_many_arguments)]
    pub fn worker_joined_as(
        &mut self,
        clock: Clock,
        identity: Option<String>,
        name: String,
        slots: u32,
        labels: BTreeMap<String, String>,
        pool: Option<TenantId>,
        shuffle: Option<Peer>,
    ) -> WorkerId {
        let known = identity
            .as_ref()
            .and_then(|i| self.identities.get(i))
            .copied();
        let worker = match known {
            Some(id) => {
                if self.workers.get(&id).is_some_and(|w| w.connected) {
                    tracing::info!(worker = %id, "a worker connected again: its old connection is gone");
                    self.worker_gone(clock, id);
                }
                id
            }
            None => {
                let id = WorkerId(self.next_worker);
                self.next_worker += 1;
                if let Some(identity) = identity {
                    self.identities.insert(identity.clone(), id);
                    let batch = Batch {
                        workers: vec![(identity, id)],
                        ..Batch::default()
                    };
                    self.effects.push_back(Effect::Persist(Box::new(batch)));
                }
                id
            }
        };
        let pool_name = pool.as_ref().map(|t| t.0.as_str());
        tracing::info!(%worker, %name, slots, ?labels, pool = pool_name, "worker joined");
        self.workers.insert(
            worker,
            WorkerEntry {
                name,
                slots,
                labels,
                pool: pool.clone(),
                shuffle,
                connected: true,
                draining: false,
                last_heard_unix_ms: clock.unix_ms,
            },
        );
        let heartbeat_ms = self.config.heartbeat.as_millis() as u64;
        self.effects.push_back(Effect::Send {
            worker,
            message: ToWorker::Welcome {
                worker,
                heartbeat_ms,
                pool,
            },
        });
        // `rebalance` gives the jobs their share of its slots.
        self.settle(clock);
        worker
    }

    /// A worker's connection closed: its attempts run again (I8 for the
    /// map outputs it held).
    pub fn worker_gone(&mut self, clock: Clock, worker: WorkerId) {
        tracing::info!(%worker, "worker left");
        if let Some(entry) = self.workers.get_mut(&worker) {
            entry.connected = false;
        }
        for &i in &self.admitted {
            let job = &mut self.jobs[i];
            job.scheduler
                .handle(clock.now, Event::WorkerLost { worker });
            job.quotas.remove(&worker);
        }
        self.settle(clock);
    }

    pub fn from_worker(&mut self, clock: Clock, worker: WorkerId, message: FromWorker) {
        if let Some(entry) = self.workers.get_mut(&worker) {
            entry.last_heard_unix_ms = clock.unix_ms;
        }
        match message {
            FromWorker::Heartbeat => {
                for &i in &self.admitted {
                    let event = Event::Heartbeat { worker };
                    self.jobs[i].scheduler.handle(clock.now, event);
                }
                self.settle(clock);
            }
            FromWorker::Committed {
                job,
                task,
                epoch,
                result,
            } => self.commit_finished(clock, job, task, epoch, result),
            FromWorker::Announce(outputs) => self.outputs_announced(clock, worker, outputs),
            FromWorker::Draining => {
                if let Some(w) = self.workers.get_mut(&worker) {
                    w.draining = true;
                }
                for &i in &self.admitted {
                    let event = Event::WorkerDraining { worker };
                    self.jobs[i].scheduler.handle(clock.now, event);
                }
                self.settle(clock);
            }
            FromWorker::Finished(report) => {
                let (job, task, epoch) = (report.job, report.task, report.epoch);
                if let Some(i) = self.unfinished(job) {
                    if !report.log.is_empty() {
                        tracing::debug!(%job, %task, %epoch, log = %report.log, "attempt log");
                    }
                    let event = Event::AttemptFinished(report);
                    self.jobs[i].scheduler.handle(clock.now, event);
                } else {
                    // A failed attempt may have left files too (an upload
                    // it could not abort itself).
                    self.discard_late(worker, job, task, epoch);
                }
                // After the verdict is persisted (I10), whatever it was:
                // the worker may forget the report.
                self.settle(clock);
                self.effects.push_back(Effect::Send {
                    worker,
                    message: ToWorker::Ack { job, task, epoch },
                });
            }
        }
    }

    /// A worker re-announced the committed map outputs it holds: each job
    /// re-adopts those matching its durable record; the worker is told to
    /// delete the others (`Release`), and everything of a job that is not
    /// running (`JobDone`).
    fn outputs_announced(&mut self, clock: Clock, worker: WorkerId, outputs: Vec<HeldOutput>) {
        let mut by_job: BTreeMap<JobId, Vec<HeldOutput>> = BTreeMap::new();
        for output in outputs {
            by_job.entry(output.job).or_default().push(output);
        }
        let mut answers = Vec::new();
        for (job, held) in by_job {
            let Some(i) = self.unfinished(job) else {
                answers.push(ToWorker::JobDone { job });
                continue;
            };
            let scheduler = &mut self.jobs[i].scheduler;
            let outputs = held.iter().map(|h| (h.task, h.epoch, h.digest)).collect();
            scheduler.handle(clock.now, Event::OutputsAnnounced { worker, outputs });
            for h in held {
                if !scheduler.holds_output(h.task, h.epoch, worker) {
                    answers.push(ToWorker::Release {
                        job,
                        task: h.task,
                        epoch: h.epoch,
                    });
                }
            }
        }
        self.settle(clock);
        for message in answers {
            self.effects.push_back(Effect::Send { worker, message });
        }
    }

    /// A report of a job that has ended: unless it is the attempt the job
    /// committed, its files go (I3, I14). A speculation loser or a stale
    /// attempt may finish after the job did.
    fn discard_late(&mut self, worker: WorkerId, job: JobId, task: TaskId, epoch: AttemptEpoch) {
        let Some(entry) = self.jobs.iter().rev().find(|j| j.id == job) else {
            return;
        };
        let committed =
            entry.scheduler.attempt_log().iter().any(|r| {
                r.task == task && r.epoch == epoch && r.outcome == AttemptOutcome::Committed
            });
        if committed {
            return;
        }
        tracing::debug!(%job, %task, %epoch, %worker, "late attempt of an ended job discarded");
        let effect = match task {
            TaskId::Map(_) if self.config.shuffle.on_workers() => Effect::Send {
                worker,
                message: ToWorker::Discard { job, task, epoch },
            },
            _ => Effect::DiscardAttempt { job, task, epoch },
        };
        self.effects.push_back(effect);
    }

    /// The result of [`Effect::CommitAttempt`] (or of a worker's commit).
    pub fn commit_finished(
        &mut self,
        clock: Clock,
        job: JobId,
        task: TaskId,
        epoch: AttemptEpoch,
        result: Result<(), String>,
    ) {
        if let Some(i) = self.unfinished(job) {
            let event = Event::CommitFinished {
                task,
                epoch,
                result,
            };
            self.jobs[i].scheduler.handle(clock.now, event);
        }
        self.settle(clock);
    }

    /// The result of [`Effect::CommitJob`].
    pub fn job_committed(&mut self, clock: Clock, job: JobId, result: Result<(), String>) {
        let Some(i) = self.unfinished(job) else {
            return;
        };
        debug_assert!(self.jobs[i].committing, "job_committed without CommitJob");
        let failed = result.is_err();
        let outcome = match result {
            Ok(()) => JobOutcome::Completed,
            Err(e) => JobOutcome::Failed(format!("job commit: {e}")),
        };
        self.finish(clock, i, outcome);
        if failed {
            self.effects.push_back(Effect::CleanupJob { job });
        }
        self.settle(clock);
    }

    /// Expire the leases that ran out by `clock.now`, and fail the jobs
    /// that waited for a worker longer than their `--placement-timeout`.
    pub fn handle_timeout(&mut self, clock: Clock) {
        for &i in &self.admitted {
            let job = &mut self.jobs[i];
            job.scheduler.handle_timeout(clock.now);
            if job.placement_deadline().is_some_and(|at| at <= clock.now) {
                let (_, why) = job.waiting.take().expect("a deadline means waiting");
                let timeout = human_ms(job.record.request.placement.timeout_ms);
                let reason = format!("{why} for --placement-timeout {timeout}");
                tracing::info!(job = %job.id, %reason, "no worker may run the job");
                job.scheduler.handle(clock.now, Event::Fail { reason });
            }
        }
        self.settle(clock);
    }

    // ---- clients ----

    /// Whether `tenant` may queue one more job (checked before the driver
    /// plans it, so a refused job creates nothing).
    pub fn check_admission(&self, tenant: &TenantId, terms: TenantTerms) -> Result<(), String> {
        let queued = self
            .admitted
            .iter()
            .filter(|&&i| self.jobs[i].record.tenant == *tenant)
            .count();
        if queued >= terms.max_jobs_queued as usize {
            return Err(format!(
                "quota max_jobs_queued is {}; the tenant has {queued} unfinished jobs",
                terms.max_jobs_queued
            ));
        }
        Ok(())
    }

    /// Admit a planned job. Its record, modules and capability are
    /// persisted before the client hears `Submitted` (I10).
    pub fn submit(
        &mut self,
        clock: Clock,
        client: Option<ClientId>,
        record: JobRecord,
        capability: Capability,
        terms: TenantTerms,
        modules: Vec<(ModuleHash, Vec<u8>)>,
    ) {
        let job = record.id;
        tracing::info!(%job, tenant = %record.tenant.0, "job submitted");
        let batch = Batch {
            modules,
            jobs: vec![record.clone()],
            attempts: Vec::new(),
            capabilities: vec![(job, capability.clone())],
            workers: Vec::new(),
        };
        self.effects.push_back(Effect::Persist(Box::new(batch)));
        let scheduler = Scheduler::new(
            self.plan(&record),
            self.scheduler_config(&record),
            clock.now,
        );
        self.admit(clock, record, capability, terms, scheduler, client);
    }

    /// Bring back an unfinished job: after a restart (`keep_commits`:
    /// committed tasks stay committed) or for `wmr resume` (its committed
    /// outputs were cleaned up: every task runs again). Every new epoch is
    /// above `epoch_floor` and above every stored one (I1, I3).
    #[allow(clippy::too_many_arguments)]
    pub fn restore(
        &mut self,
        clock: Clock,
        client: Option<ClientId>,
        record: JobRecord,
        mut attempts: Vec<AttemptRecord>,
        epoch_floor: AttemptEpoch,
        keep_commits: bool,
        capability: Capability,
        terms: TenantTerms,
    ) {
        if !keep_commits {
            for r in &mut attempts {
                if r.outcome == AttemptOutcome::Committed {
                    r.outcome = AttemptOutcome::OutputLost;
                }
            }
        }
        let floor = attempts
            .iter()
            .map(|r| r.epoch)
            .max()
            .map_or(epoch_floor, |e| e.max(epoch_floor));
        let map_outputs = if !self.config.shuffle.on_workers() {
            RestoredMapOutputs::Kept
        } else {
            RestoredMapOutputs::AwaitAnnouncement {
                until: clock.now + self.reannounce_window,
            }
        };
        let scheduler = Scheduler::restore(
            self.plan(&record),
            self.scheduler_config(&record),
            clock.now,
            attempts,
            floor,
            map_outputs,
        );
        tracing::info!(job = %record.id, "job resumed");
        let batch = Batch {
            jobs: vec![record.clone()],
            capabilities: vec![(record.id, capability.clone())],
            ..Batch::default()
        };
        self.effects.push_back(Effect::Persist(Box::new(batch)));
        self.admit(clock, record, capability, terms, scheduler, client);
    }

    /// Keep a finished job (after a restart) for `status`, `jobs`, `dlq`.
    pub fn load_finished(&mut self, clock: Clock, record: JobRecord, attempts: Vec<AttemptRecord>) {
        let scheduler = Scheduler::restore(
            self.plan(&record),
            self.scheduler_config(&record),
            clock.now,
            attempts,
            AttemptEpoch(0),
            RestoredMapOutputs::Kept,
        );
        self.jobs.push(JobEntry {
            id: record.id,
            // A finished job assigns nothing (`resume` restores it anew).
            capability: Capability::default(),
            scheduler,
            watchers: Vec::new(),
            started: clock.now,
            summary: record.summary.clone(),
            record,
            quotas: BTreeMap::new(),
            terms: TenantTerms {
                weight: 1,
                max_concurrent_attempts: 0,
                max_jobs_queued: 0,
                pool_only: false,
            },
            committing: false,
            waiting: None,
        });
    }

    /// `wmr resume`: the record under which a failed or cancelled job of
    /// `tenant` runs again (the driver loads its attempts, prepares its
    /// directories, and calls [`Self::restore`] without `keep_commits`).
    pub fn resume_record(
        &self,
        clock: Clock,
        tenant: &TenantId,
        job: &str,
    ) -> Result<JobRecord, String> {
        let i = self
            .find(tenant, Some(job))
            .ok_or_else(|| not_found(Some(job)))?;
        let entry = &self.jobs[i];
        match &entry.summary {
            None => return Err(format!("job {} is still running", entry.id)),
            Some(s) if s.outcome == JobOutcome::Completed => {
                return Err(format!("job {} already completed", entry.id));
            }
            Some(_) => {}
        }
        let mut record = entry.record.clone();
        record.outcome = None;
        record.summary = None;
        record.transitions.push(PhaseChange {
            phase: Phase::Submitted,
            unix_ms: clock.unix_ms,
            reason: "resumed".into(),
        });
        Ok(record)
    }

    pub fn status(&mut self, client: ClientId, tenant: &TenantId, job: Option<&str>) {
        let reply = match self.find(tenant, job) {
            Some(i) => ClientReply::Status(Box::new(self.status_report(i))),
            None => ClientReply::Error(not_found(job)),
        };
        self.effects.push_back(Effect::Reply { client, reply });
    }

    pub fn watch(&mut self, client: ClientId, tenant: &TenantId, job: &str) {
        match self.find(tenant, Some(job)) {
            Some(i) => match &self.jobs[i].summary {
                Some(summary) => {
                    let reply = ClientReply::Done(Box::new(summary.clone()));
                    self.effects.push_back(Effect::Reply { client, reply });
                }
                None => self.jobs[i].watchers.push(client),
            },
            None => {
                let reply = ClientReply::Error(not_found(Some(job)));
                self.effects.push_back(Effect::Reply { client, reply });
            }
        }
    }

    pub fn jobs(&mut self, client: ClientId, tenant: &TenantId) {
        // A resumed job has an older entry too: list the newest.
        let listings = self
            .newest_entries()
            .filter(|&i| self.jobs[i].record.tenant == *tenant)
            .map(|i| self.listing(i))
            .collect();
        let reply = ClientReply::Jobs(listings);
        self.effects.push_back(Effect::Reply { client, reply });
    }

    pub fn cancel(&mut self, clock: Clock, client: ClientId, tenant: &TenantId, job: &str) {
        let reply = match self.find(tenant, Some(job)) {
            Some(i) => {
                self.jobs[i].scheduler.handle(clock.now, Event::Cancel);
                ClientReply::Cancelled {
                    job: self.jobs[i].id.to_string(),
                }
            }
            None => ClientReply::Error(not_found(Some(job))),
        };
        self.settle(clock);
        self.effects.push_back(Effect::Reply { client, reply });
    }

    /// A watcher's stream ended: stop telling it about its job.
    pub fn client_gone(&mut self, client: ClientId) {
        for job in &mut self.jobs {
            job.watchers.retain(|&c| c != client);
        }
    }

    // ---- queries (for tests and the drivers) ----

    /// The unfinished jobs, oldest first.
    pub fn unfinished_jobs(&self) -> Vec<JobId> {
        self.admitted.iter().map(|&i| self.jobs[i].id).collect()
    }

    /// The newest entry of `job`.
    pub fn scheduler(&self, job: JobId) -> Option<&Scheduler> {
        self.jobs
            .iter()
            .rposition(|j| j.id == job)
            .map(|i| &self.jobs[i].scheduler)
    }

    pub fn summary(&self, job: JobId) -> Option<&JobSummary> {
        self.jobs
            .iter()
            .rposition(|j| j.id == job)
            .and_then(|i| self.jobs[i].summary.as_ref())
    }

    /// `job` (an id prefix) as `wmr status JOB --json` shows it to its
    /// tenant, with that tenant, if `viewer` may see it.
    pub fn report_for(&self, viewer: &Viewer, job: &str) -> Option<(TenantId, StatusReport)> {
        let i = self.find_where(|t| viewer.sees(t), Some(job))?;
        Some((self.jobs[i].record.tenant.clone(), self.status_report(i)))
    }

    /// The jobs `viewer` may see, as `wmr jobs --json` lists them, each
    /// with its tenant.
    pub fn listings_for(&self, viewer: &Viewer) -> Vec<(TenantId, JobListing)> {
        self.newest_entries()
            .filter(|&i| viewer.sees(&self.jobs[i].record.tenant))
            .map(|i| (self.jobs[i].record.tenant.clone(), self.listing(i)))
            .collect()
    }

    /// The workers `viewer` may see: a tenant does not see another
    /// tenant's dedicated workers (as in `wmr status`).
    pub fn workers_for(&self, viewer: &Viewer) -> Vec<WorkerInfo> {
        self.workers
            .iter()
            .filter(|(_, w)| w.pool.as_ref().is_none_or(|t| viewer.sees(t)))
            .map(|(&id, w)| WorkerInfo {
                id,
                name: w.name.clone(),
                slots: w.slots,
                connected: w.connected,
                labels: w.labels.clone(),
                pool: w.pool.clone(),
            })
            .collect()
    }

    /// `job` (an id prefix) with its request and dead letters, if `viewer`
    /// may see it (the web UI's job page).
    pub fn detail_for(&self, viewer: &Viewer, job: &str) -> Option<JobDetail> {
        let i = self.find_where(|t| viewer.sees(t), Some(job))?;
        let entry = &self.jobs[i];
        let mut request = entry.record.request.clone();
        // The modules are the store's, never shown.
        request.map_module = Vec::new();
        request.reduce_module = None;
        Some(JobDetail {
            tenant: entry.record.tenant.clone(),
            report: self.status_report(i),
            request,
            dead_letters: dead_letters(&entry.scheduler),
        })
    }

    /// The jobs `viewer` may see, oldest first, with their running count and
    /// end time (the web UI's jobs page).
    pub fn rows_for(&self, viewer: &Viewer) -> Vec<JobRow> {
        self.newest_entries()
            .filter(|&i| viewer.sees(&self.jobs[i].record.tenant))
            .map(|i| {
                let job = &self.jobs[i];
                let (_, running, _) = job.scheduler.progress();
                let listing = self.listing(i);
                let ended = matches!(
                    listing.phase,
                    Phase::Completed | Phase::Failed | Phase::Cancelled
                );
                JobRow {
                    tenant: job.record.tenant.clone(),
                    ended_unix_ms: ended
                        .then(|| job.record.transitions.last().map(|t| t.unix_ms))
                        .flatten(),
                    running,
                    listing,
                }
            })
            .collect()
    }

    /// [`Self::workers_for`] with what each runs for `viewer` and when it
    /// was last heard from (the web UI's workers page).
    pub fn worker_details_for(&self, viewer: &Viewer) -> Vec<WorkerDetail> {
        self.workers_for(viewer)
            .into_iter()
            .map(|info| {
                let entry = &self.workers[&info.id];
                let running = self
                    .admitted
                    .iter()
                    .filter(|&&i| viewer.sees(&self.jobs[i].record.tenant))
                    .map(|&i| self.jobs[i].scheduler.running_on(info.id))
                    .sum();
                WorkerDetail {
                    running,
                    draining: entry.draining,
                    last_heard_unix_ms: entry.last_heard_unix_ms,
                    info,
                }
            })
            .collect()
    }

    /// The aggregates behind `/metrics`, over the jobs and workers `viewer`
    /// may see: a tenant's numbers count only its own jobs' attempts (busy
    /// slots included), so nothing of another tenant's work shows.
    pub fn metrics_snapshot(&self, viewer: &Viewer) -> MetricsSnapshot {
        let mut snapshot = MetricsSnapshot::default();
        for phase in ALL_PHASES {
            snapshot.jobs_by_phase.insert(phase, 0);
        }
        for outcome in ATTEMPT_OUTCOMES {
            snapshot.attempts_by_outcome.insert(outcome, 0);
        }
        let visible: Vec<usize> = self
            .newest_entries()
            .filter(|&i| viewer.sees(&self.jobs[i].record.tenant))
            .collect();
        for &i in &visible {
            *snapshot.jobs_by_phase.entry(self.phase_of(i)).or_default() += 1;
            let log = self.jobs[i].scheduler.attempt_log();
            for record in log {
                *snapshot
                    .attempts_by_outcome
                    .entry(outcome_label(&record.outcome))
                    .or_default() += 1;
                if let Some(ended) = record.ended_ms {
                    let phase = match record.task {
                        TaskId::Map(_) => "map",
                        TaskId::Reduce(_) => "reduce",
                    };
                    let ms = ended.saturating_sub(record.started_ms);
                    snapshot.attempt_ms.entry(phase).or_default().push(ms);
                }
            }
            if let Some(t) = Totals::of(log).get("job") {
                snapshot.bytes_in += t.bytes_in;
                snapshot.bytes_out += t.bytes_out;
                snapshot.records_out += t.records_out;
                snapshot.fuel_used += t.fuel_used;
            }
            snapshot.dead_letters += dead_letters(&self.jobs[i].scheduler).len() as u64;
        }
        for &i in &self.admitted {
            let tenant = &self.jobs[i].record.tenant;
            if viewer.sees(tenant) {
                *snapshot.queued_jobs.entry(tenant.clone()).or_default() += 1;
            }
        }
        for info in self.workers_for(viewer) {
            let busy = self
                .admitted
                .iter()
                .filter(|&&i| viewer.sees(&self.jobs[i].record.tenant))
                .map(|&i| self.jobs[i].scheduler.running_on(info.id))
                .sum();
            snapshot.workers.push(WorkerMetrics {
                id: info.id,
                name: info.name,
                slots: info.slots,
                busy,
                connected: info.connected,
            });
        }
        snapshot
    }

    /// The newest entry of each job (a resumed job has an older one too).
    fn newest_entries(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.jobs.len())
            .filter(|&i| !self.jobs[i + 1..].iter().any(|j| j.id == self.jobs[i].id))
    }

    /// Check every unfinished job's scheduler (`Scheduler::audit`) and that
    /// no live worker runs more attempts than it has slots.
    pub fn audit(&self) -> Result<(), String> {
        for &i in &self.admitted {
            self.jobs[i].scheduler.audit()?;
        }
        for (w, entry) in &self.workers {
            let running: u32 = self
                .admitted
                .iter()
                .map(|&i| self.jobs[i].scheduler.running_on(*w))
                .sum();
            if entry.connected && running > entry.slots {
                return Err(format!(
                    "worker {w} runs {running} attempts on {} slots",
                    entry.slots
                ));
            }
            // Placement: labels and pools hold for every running attempt.
            for &i in &self.admitted {
                let job = &self.jobs[i];
                if job.scheduler.running_on(*w) > 0 && !may_run(entry.view(), job.view()) {
                    return Err(format!(
                        "job {} runs on worker {w}, which it may not",
                        job.id
                    ));
                }
            }
        }
        Ok(())
    }

    // ---- internals ----

    fn unfinished(&self, job: JobId) -> Option<usize> {
        self.admitted
            .iter()
            .rev()
            .copied()
            .find(|&i| self.jobs[i].id == job)
    }

    fn admit(
        &mut self,
        clock: Clock,
        record: JobRecord,
        capability: Capability,
        terms: TenantTerms,
        scheduler: Scheduler,
        client: Option<ClientId>,
    ) {
        let job = record.id;
        self.jobs.push(JobEntry {
            id: job,
            capability,
            scheduler,
            watchers: client.into_iter().collect(),
            started: clock.now,
            summary: None,
            record,
            quotas: BTreeMap::new(),
            terms,
            committing: false,
            waiting: None,
        });
        self.admitted.push(self.jobs.len() - 1);
        if let Some(client) = client {
            let reply = ClientReply::Submitted {
                job: job.to_string(),
            };
            self.effects.push_back(Effect::Reply { client, reply });
        }
        self.settle(clock);
    }

    fn plan(&self, record: &JobRecord) -> JobPlan {
        JobPlan {
            tenant: record.tenant.clone(),
            job: record.id,
            map_module: record.map_module.clone(),
            reduce_module: record.reduce_module.clone(),
            splits: record.splits.clone(),
            reducers: record.request.reducers,
            limits: record.request.limits.clone(),
            params: record.request.params.clone(),
            output: record.request.output.clone(),
            output_format: record.request.output_format,
            shuffle_settings: record.request.shuffle_settings.clone(),
            work_root: self.config.work_root.clone(),
            shuffle: self.config.shuffle.clone(),
        }
    }

    fn scheduler_config(&self, record: &JobRecord) -> SchedulerConfig {
        SchedulerConfig {
            max_attempts: record.request.max_attempts,
            lease: self.config.lease,
            speculation: record.request.speculate.then(Speculation::default),
            ..SchedulerConfig::default()
        }
    }

    /// Share the slots out again and carry out every job's actions, until
    /// nothing changes (bounded: each round either finishes a job or stops).
    fn settle(&mut self, clock: Clock) {
        for _ in 0..=self.jobs.len() {
            self.rebalance(clock.now);
            let before = self.admitted.len();
            for i in self.admitted.clone() {
                self.carry_out(clock, i);
            }
            if self.admitted.len() == before {
                return;
            }
        }
    }

    /// Turn job `i`'s actions into effects: first a `Persist` of the
    /// records they changed, then the effects themselves (I10).
    fn carry_out(&mut self, clock: Clock, i: usize) {
        let mut actions = Vec::new();
        while let Some(action) = self.jobs[i].scheduler.poll_action() {
            actions.push(action);
        }
        let failure = actions.iter().find_map(|a| match a {
            Action::Finished(JobOutcome::Failed(why)) => Some(why.as_str()),
            _ => None,
        });
        let failure = failure.map(str::to_owned);
        self.persist(clock, i, failure.as_deref());
        for action in actions {
            let job = &mut self.jobs[i];
            let id = job.id;
            match action {
                Action::Assign {
                    worker,
                    mut assignment,
                } => {
                    debug_assert!(
                        self.workers
                            .get(&worker)
                            .is_some_and(|w| may_run(w.view(), job.view())),
                        "placement: job {id} assigned to worker {worker}, which it may not use"
                    );
                    if let TaskInput::Reduce { map_outputs, .. } = &assignment.input {
                        // Tell the reducer where each map output lives.
                        for (_, _, holder) in map_outputs {
                            let peer = self.workers.get(holder).and_then(|w| w.shuffle.clone());
                            if let Some(peer) = peer {
                                assignment.peers.insert(*holder, peer);
                            }
                        }
                    }
                    assignment.capability = job.capability.clone();
                    let message = ToWorker::Assign(assignment);
                    self.effects.push_back(Effect::Send { worker, message });
                }
                Action::Commit {
                    task: task @ TaskId::Map(_),
                    epoch,
                    worker,
                } if self.config.shuffle.on_workers() => {
                    // The worker holds the files: it renames and answers
                    // `Committed`. If it is gone, `WorkerLost` requeues.
                    let message = ToWorker::Commit {
                        job: id,
                        task,
                        epoch,
                    };
                    self.effects.push_back(Effect::Send { worker, message });
                }
                Action::Commit { task, epoch, .. } => {
                    self.effects.push_back(Effect::CommitAttempt {
                        job: id,
                        task,
                        epoch,
                    });
                }
                Action::Discard {
                    task: task @ TaskId::Map(_),
                    epoch,
                    worker,
                } if self.config.shuffle.on_workers() => {
                    let message = ToWorker::Discard {
                        job: id,
                        task,
                        epoch,
                    };
                    self.effects.push_back(Effect::Send { worker, message });
                }
                Action::Discard { task, epoch, .. } => {
                    self.effects.push_back(Effect::DiscardAttempt {
                        job: id,
                        task,
                        epoch,
                    });
                }
                Action::Interrupt {
                    task,
                    epoch,
                    worker,
                } => {
                    let message = ToWorker::Interrupt {
                        job: id,
                        task,
                        epoch,
                    };
                    self.effects.push_back(Effect::Send { worker, message });
                }
                Action::Finished(JobOutcome::Completed) => {
                    let max = job.record.request.limits.max_dead_letters;
                    match commit_decision(&job.scheduler, max) {
                        Ok(dead_letters) => {
                            job.committing = true;
                            self.effects.push_back(Effect::CommitJob {
                                job: id,
                                dead_letters,
                            });
                        }
                        Err(outcome) => {
                            self.finish(clock, i, outcome);
                            self.effects.push_back(Effect::CleanupJob { job: id });
                        }
                    }
                }
                Action::Finished(outcome) => {
                    self.finish(clock, i, outcome);
                    self.effects.push_back(Effect::CleanupJob { job: id });
                }
            }
        }
        self.report_progress(i);
    }

    /// Queue a `Persist` of what changed in job `i` (attempt records, phase).
    /// `failure`: why the job failed, if it just did (the phase's reason).
    fn persist(&mut self, clock: Clock, i: usize, failure: Option<&str>) {
        let job = &mut self.jobs[i];
        let mut batch = Batch::default();
        for record in job.scheduler.take_changed_records() {
            batch.attempts.push((job.id, record));
        }
        let phase = if job.summary.is_none() && job.scheduler.attempt_log().is_empty() {
            Phase::Submitted
        } else {
            job.scheduler.phase()
        };
        if job.record.phase() != Some(phase) {
            let reason = match phase {
                Phase::Submitted => "queued",
                Phase::Mapping if job.scheduler.unclaimed() > 0 => {
                    "restored: waiting for workers to re-announce map outputs"
                }
                Phase::Mapping if job.record.phase() == Some(Phase::Reducing) => {
                    "a map output was lost"
                }
                Phase::Mapping => "workers assigned",
                Phase::Reducing => "every map task committed",
                Phase::Completed => "every reduce task committed",
                Phase::Failed => failure.unwrap_or("a task failed too often"),
                Phase::Cancelled => "cancelled",
            };
            job.record.transitions.push(PhaseChange {
                phase,
                unix_ms: clock.unix_ms,
                reason: reason.into(),
            });
            batch.jobs.push(job.record.clone());
        }
        if !batch.is_empty() {
            self.effects.push_back(Effect::Persist(Box::new(batch)));
        }
    }

    /// Job `i` ended: persist its outcome and summary, then tell its
    /// watchers and the workers (I10).
    fn finish(&mut self, clock: Clock, i: usize, outcome: JobOutcome) {
        let job = &mut self.jobs[i];
        debug_assert!(job.summary.is_none(), "job {} finished twice", job.id);
        job.committing = false;
        job.waiting = None;
        tracing::info!(job = %job.id, ?outcome, "job finished");
        let summary = summarize(&job.scheduler, outcome, clock.now - job.started);
        job.record.outcome = Some(summary.outcome.clone());
        job.record.summary = Some(summary.clone());
        let mut batch = Batch::default();
        for record in job.scheduler.take_changed_records() {
            batch.attempts.push((job.id, record));
        }
        batch.jobs.push(job.record.clone());
        self.effects.push_back(Effect::Persist(Box::new(batch)));
        for client in job.watchers.drain(..) {
            let reply = ClientReply::Done(Box::new(summary.clone()));
            self.effects.push_back(Effect::Reply { client, reply });
        }
        job.summary = Some(summary);
        let done = job.id;
        for (&worker, w) in &self.workers {
            if w.connected {
                let message = ToWorker::JobDone { job: done };
                self.effects.push_back(Effect::Send { worker, message });
            }
        }
        self.admitted.retain(|&a| a != i);
    }

    fn report_progress(&mut self, i: usize) {
        let job = &self.jobs[i];
        if job.watchers.is_empty() || job.summary.is_some() {
            return;
        }
        let (committed, running, _) = job.scheduler.progress();
        let reply = ClientReply::Progress {
            phase: job.scheduler.phase(),
            committed,
            running,
            total: job.scheduler.task_count(),
        };
        for &client in &job.watchers {
            let reply = reply.clone();
            self.effects.push_back(Effect::Reply { client, reply });
        }
    }

    /// Max-min fair shares of the live workers' slots between unfinished
    /// jobs, by demand (pending + running tasks): first between tenants by
    /// weight (each capped by its concurrency quota), then between each
    /// tenant's jobs. Running attempts are never preempted: a job keeps at
    /// least the slots it uses, and a smaller share takes effect as they
    /// finish. A job gets slots only on workers it may run on (labels,
    /// pools): its demand counts no more than those workers' slots, so a
    /// job confined to a few workers does not hold back the others' shares.
    fn rebalance(&mut self, now: Instant) {
        let capacity: Vec<(WorkerId, u32)> = self
            .workers
            .iter()
            .filter(|(_, w)| w.live())
            .map(|(id, w)| (*id, w.slots))
            .collect();
        let total = capacity.iter().map(|(_, s)| s).sum();
        let jobs = self.admitted.clone();
        // placeable[k][c]: may job k run on capacity[c]?
        let placeable: Vec<Vec<bool>> = jobs
            .iter()
            .map(|&i| {
                let job = self.jobs[i].view();
                capacity
                    .iter()
                    .map(|(w, _)| may_run(self.workers[w].view(), job))
                    .collect()
            })
            .collect();
        self.update_waiting(now, &jobs, &placeable);
        // Slots go only where a job can use them now: a worker that missed
        // a lease gets nothing new from that job until its next heartbeat,
        // so a share there would hold a slot another job could use.
        let eligible: Vec<Vec<bool>> = jobs
            .iter()
            .zip(&placeable)
            .map(|(&i, ok)| {
                let scheduler = &self.jobs[i].scheduler;
                ok.iter()
                    .zip(&capacity)
                    .map(|(&ok, (w, _))| ok && !scheduler.is_suspect(*w))
                    .collect()
            })
            .collect();
        // Attempts still running on draining workers count against quotas,
        // not against the live slots being shared.
        let draining_running: Vec<u64> = jobs
            .iter()
            .map(|&i| {
                self.workers
                    .iter()
                    .filter(|(_, w)| w.connected && w.draining)
                    .map(|(id, _)| u64::from(self.jobs[i].scheduler.running_on(*id)))
                    .sum()
            })
            .collect();
        // What each job could use of the live slots: its queued tasks and
        // its attempts on live workers, at most the slots it can use now
        // plus what it runs on live workers it cannot use (suspect ones).
        let demand: Vec<u32> = jobs
            .iter()
            .zip(&eligible)
            .zip(&draining_running)
            .map(|((&i, ok), &draining)| {
                let scheduler = &self.jobs[i].scheduler;
                let reachable: u32 = capacity
                    .iter()
                    .zip(ok)
                    .map(|((w, slots), &ok)| if ok { *slots } else { scheduler.running_on(*w) })
                    .sum();
                let wants = scheduler.demand() as u64 - draining;
                (wants as u32).min(reachable)
            })
            .collect();
        let mut tenants: Vec<TenantId> = Vec::new();
        for &i in &jobs {
            let t = &self.jobs[i].record.tenant;
            if !tenants.contains(t) {
                tenants.push(t.clone());
            }
        }
        let of = |t: &TenantId| -> Vec<usize> {
            (0..jobs.len())
                .filter(|&k| self.jobs[jobs[k]].record.tenant == *t)
                .collect()
        };
        let tenant_demand: Vec<u32> = tenants
            .iter()
            .map(|t| {
                let ks = of(t);
                let cap = self.jobs[jobs[ks[0]]].terms.max_concurrent_attempts;
                let draining: u64 = ks.iter().map(|&k| draining_running[k]).sum();
                let cap = u64::from(cap).saturating_sub(draining) as u32;
                ks.iter().map(|&k| demand[k]).sum::<u32>().min(cap)
            })
            .collect();
        let caps: Vec<u32> = tenants
            .iter()
            .map(|t| self.jobs[jobs[of(t)[0]]].terms.max_concurrent_attempts)
            .collect();
        let weights: Vec<u32> = tenants
            .iter()
            .map(|t| self.jobs[jobs[of(t)[0]]].terms.weight)
            .collect();
        let served: Vec<u64> = jobs
            .iter()
            .map(|&i| self.jobs[i].scheduler.attempt_log().len() as u64)
            .collect();
        let tenant_served: Vec<u64> = tenants
            .iter()
            .map(|t| of(t).iter().map(|&k| served[k]).sum())
            .collect();
        let tenant_alloc = weighted_fair(total, &tenant_demand, &weights, &tenant_served);
        let mut alloc = vec![0; jobs.len()];
        for (t, tenant) in tenants.iter().enumerate() {
            let ks = of(tenant);
            let within = max_min_fair(
                tenant_alloc[t],
                &ks.iter().map(|&k| demand[k]).collect::<Vec<_>>(),
                &ks.iter().map(|&k| served[k]).collect::<Vec<_>>(),
            );
            for (k, a) in ks.into_iter().zip(within) {
                alloc[k] = a;
            }
        }
        // A job's quota is its allocation, never more: an attempt of a job
        // over its share that finishes is not replaced. A worker is occupied
        // by max(quota, running) of each job, so nothing oversubscribes it
        // while a job shrinks to its share.
        let running: Vec<BTreeMap<WorkerId, u32>> = jobs
            .iter()
            .map(|&i| {
                let s = &self.jobs[i].scheduler;
                capacity
                    .iter()
                    .map(|(w, _)| (*w, s.running_on(*w)))
                    .collect()
            })
            .collect();
        let mut quota: Vec<BTreeMap<WorkerId, u32>> = running
            .iter()
            .enumerate()
            .map(|(k, r)| {
                // First keep slots where the job already runs.
                let mut left = alloc[k];
                r.iter()
                    .map(|(w, &n)| {
                        let keep = n.min(left);
                        left -= keep;
                        (*w, keep)
                    })
                    .collect()
            })
            .collect();
        let occupied = |quota: &[BTreeMap<WorkerId, u32>], w: &WorkerId| -> u32 {
            quota
                .iter()
                .zip(&running)
                .map(|(q, r)| q[w].max(r[w]))
                .sum()
        };
        // Free slots are placed one at a time, each to the tenant holding the
        // fewest slots for its weight, then to its least-served job. Slots
        // free up one by one as attempts end, so this order decides who gets
        // the next one: a tenant below its share, not whichever job is older.
        let tenant_of: Vec<usize> = jobs
            .iter()
            .map(|&i| {
                let t = &self.jobs[i].record.tenant;
                tenants.iter().position(|x| x == t).expect("listed above")
            })
            .collect();
        let failing: Vec<Option<WorkerId>> = jobs
            .iter()
            .map(|&i| self.jobs[i].scheduler.failing_worker())
            .collect();
        // Two passes: first every job up to its fair allocation; then, work
        // conserving, slots that no job could use within its allocation
        // (placement left them stranded) go to jobs that can use them.
        for conserving in [false, true] {
            loop {
                let free: Vec<u32> = capacity
                    .iter()
                    .map(|(w, cap)| cap.saturating_sub(occupied(&quota, w)))
                    .collect();
                let mut held = vec![0u64; tenants.len()];
                for (k, &n) in draining_running.iter().enumerate() {
                    held[tenant_of[k]] += n;
                }
                for (k, (q, r)) in quota.iter().zip(&running).enumerate() {
                    held[tenant_of[k]] +=
                        q.iter().map(|(w, &n)| u64::from(n.max(r[w]))).sum::<u64>();
                }
                let wanting: Vec<usize> = (0..quota.len())
                    .filter(|&k| {
                        if conserving {
                            // Slots it holds, running beyond its quota too.
                            let holds: u32 =
                                quota[k].iter().map(|(w, &n)| n.max(running[k][w])).sum();
                            holds < demand[k]
                        } else {
                            quota[k].values().sum::<u32>() < alloc[k]
                        }
                    })
                    .filter(|&k| held[tenant_of[k]] < u64::from(caps[tenant_of[k]]))
                    .filter(|&k| (0..capacity.len()).any(|c| eligible[k][c] && free[c] > 0))
                    .collect();
                let next = wanting.iter().copied().min_by(|&a, &b| {
                    let (ta, tb) = (tenant_of[a], tenant_of[b]);
                    let (wa, wb) = (u64::from(weights[ta]), u64::from(weights[tb]));
                    (held[ta] * wb)
                        .cmp(&(held[tb] * wa))
                        .then(served[a].cmp(&served[b]))
                        .then(a.cmp(&b))
                });
                let Some(k) = next else { break };
                // Not the worker its retries keep failing on, if it can be
                // helped; then the roomiest of its workers that the fewest
                // other waiting jobs could use: a flexible job leaves a
                // confined one room.
                let failing = failing[k];
                let contention = |c: usize| wanting.iter().filter(|&&j| eligible[j][c]).count();
                let c = (0..capacity.len())
                    .filter(|&c| eligible[k][c] && free[c] > 0)
                    .min_by_key(|&c| {
                        let (w, _) = capacity[c];
                        (
                            Some(w) == failing,
                            contention(c),
                            std::cmp::Reverse(free[c]),
                            w,
                        )
                    })
                    .expect("wanting jobs have a free eligible worker");
                let w = capacity[c].0;
                *quota[k].get_mut(&w).expect("every live worker") += 1;
            }
        }
        // Every share first, then scheduling: a job must not assign under
        // its old share on a worker whose slots now go to another job.
        for (k, &i) in jobs.iter().enumerate() {
            for (&worker, &slots) in &quota[k] {
                let job = &mut self.jobs[i];
                if job.quotas.get(&worker) != Some(&slots) {
                    job.quotas.insert(worker, slots);
                    job.scheduler.set_share(worker, slots);
                }
            }
        }
        for &i in &jobs {
            self.jobs[i].scheduler.schedule_now(now);
        }
    }

    /// Mark which jobs cannot be placed now (no live worker may run their
    /// pending tasks), since when and why; clear it for the others.
    fn update_waiting(&mut self, now: Instant, jobs: &[usize], eligible: &[Vec<bool>]) {
        let connected = self.workers.values().filter(|w| w.connected).count();
        for (&i, ok) in jobs.iter().zip(eligible) {
            let job = &mut self.jobs[i];
            let stuck = job.scheduler.demand() > 0 && !ok.iter().any(|&ok| ok);
            match (&job.waiting, stuck) {
                (None, true) => {
                    let why = unplaceable_reason(job.view(), connected);
                    tracing::info!(job = %job.id, "waiting: {why}");
                    job.waiting = Some((now, why));
                }
                (Some(_), false) => {
                    tracing::info!(job = %job.id, "placed: a worker may run it");
                    job.waiting = None;
                }
                (Some((since, why)), true) => {
                    // Same wait; the count of connected workers may change.
                    let now_why = unplaceable_reason(job.view(), connected);
                    if *why != now_why {
                        job.waiting = Some((*since, now_why));
                    }
                }
                (None, false) => {}
            }
        }
    }

    fn listing(&self, i: usize) -> JobListing {
        let job = &self.jobs[i];
        let (committed, _, _) = job.scheduler.progress();
        JobListing {
            job: job.id.to_string(),
            phase: self.phase_of(i),
            outcome: job.summary.as_ref().map(|s| s.outcome.clone()),
            committed,
            tasks: job.scheduler.task_count(),
            submitted_unix_ms: job.record.transitions.first().map_or(0, |t| t.unix_ms),
        }
    }

    /// A job that has not run an attempt yet is `Submitted`; otherwise its
    /// scheduler's phase.
    fn phase_of(&self, i: usize) -> Phase {
        let job = &self.jobs[i];
        match &job.summary {
            Some(summary) => match summary.outcome {
                JobOutcome::Completed => Phase::Completed,
                JobOutcome::Failed(_) => Phase::Failed,
                JobOutcome::Cancelled => Phase::Cancelled,
            },
            None if job.scheduler.attempt_log().is_empty() => Phase::Submitted,
            None => job.scheduler.phase(),
        }
    }

    /// The newest of `tenant`'s jobs matching `job` (an id prefix), or its
    /// newest job. Another tenant's job is simply not found.
    fn find(&self, tenant: &TenantId, job: Option<&str>) -> Option<usize> {
        self.find_where(|t| t == tenant, job)
    }

    /// As [`Self::find`], among the jobs of the tenants `sees` accepts.
    fn find_where(&self, sees: impl Fn(&TenantId) -> bool, job: Option<&str>) -> Option<usize> {
        let own = |j: &JobEntry| sees(&j.record.tenant);
        match job {
            None => self.jobs.iter().rposition(own),
            Some(id) => self.jobs.iter().rposition(|j| {
                let full = j.id.0.simple().to_string();
                own(j) && !id.is_empty() && full.starts_with(&id.to_ascii_lowercase())
            }),
        }
    }

    fn status_report(&self, i: usize) -> StatusReport {
        let job = &self.jobs[i];
        let (committed, running, pending) = job.scheduler.progress();
        StatusReport {
            job: job.id.to_string(),
            phase: self.phase_of(i),
            outcome: job.summary.as_ref().map(|s| s.outcome.clone()),
            tasks: job.scheduler.task_count(),
            committed,
            running,
            pending,
            waiting: job
                .waiting
                .as_ref()
                .map(|(_, why)| format!("waiting: {why}")),
            attempt_log: job.scheduler.attempt_log().to_vec(),
            // Another tenant's dedicated workers are not this tenant's to see.
            workers: self.workers_for(&Viewer::Tenant(job.record.tenant.clone())),
            transitions: job.record.transitions.clone(),
            totals: Totals::of(job.scheduler.attempt_log()),
        }
    }
}

/// `2500` → "2.5s", `2000` → "2s", `300` → "300ms".
fn human_ms(ms: u64) -> String {
    match ms {
        ms if ms % 1000 == 0 => format!("{}s", ms / 1000),
        ms if ms >= 1000 => format!("{}s", ms as f64 / 1000.0),
        ms => format!("{ms}ms"),
    }
}

/// The job commit's one decision, for every driver: the dead letters to
/// publish with the output, or the outcome of a job that skipped more
/// records than `--max-dead-letters` allows.
pub fn commit_decision(
    scheduler: &Scheduler,
    max_dead_letters: u32,
) -> Result<Vec<DeadLetter>, JobOutcome> {
    let dead = dead_letters(scheduler);
    if dead.len() > max_dead_letters as usize {
        return Err(JobOutcome::Failed(format!(
            "{} records made the guest trap, more than --max-dead-letters {max_dead_letters}; first: {}:{}: {}",
            dead.len(),
            dead[0].file,
            dead[0].offset,
            dead[0].message
        )));
    }
    Ok(dead)
}

fn not_found(job: Option<&str>) -> String {
    match job {
        Some(id) => format!("job {id} not found"),
        None => "no job has been submitted".into(),
    }
}

/// Max-min fair shares of `total` slots for jobs wanting `demand` each:
/// nobody gets more than it wants, and what one leaves goes to the others.
pub fn max_min_fair(total: u32, demand: &[u32], served: &[u64]) -> Vec<u32> {
    weighted_fair(total, demand, &vec![1; demand.len()], served)
}

/// Weighted max-min fairness (water-filling): each party gets slots in
/// proportion to its weight, never more than it wants; what it leaves is
/// shared again among the others. Slots too few to go round go to the
/// heaviest, then to the least served so far (attempts started), then the
/// oldest: as slots free up, a job that got none yet gets one, so no job
/// waits for another to finish.
pub fn weighted_fair(total: u32, demand: &[u32], weight: &[u32], served: &[u64]) -> Vec<u32> {
    debug_assert_eq!(demand.len(), weight.len());
    let mut alloc = vec![0u32; demand.len()];
    let mut remaining = total;
    let mut open: Vec<usize> = (0..demand.len()).filter(|&k| demand[k] > 0).collect();
    while remaining > 0 && !open.is_empty() {
        let weights: u64 = open.iter().map(|&k| u64::from(weight[k].max(1))).sum();
        let mut gave = 0;
        for &k in &open {
            let share = (u64::from(remaining) * u64::from(weight[k].max(1)) / weights) as u32;
            let give = share.min(demand[k] - alloc[k]);
            alloc[k] += give;
            gave += give;
        }
        remaining -= gave;
        if gave == 0 {
            // Less than one slot per party: one each, heaviest first.
            let mut order = open.clone();
            order.sort_by_key(|&k| (std::cmp::Reverse(weight[k]), served[k]));
            for k in order.into_iter().take(remaining as usize) {
                alloc[k] += 1;
                remaining -= 1;
            }
        }
        open.retain(|&k| alloc[k] < demand[k]);
    }
    debug_assert!(alloc.iter().zip(demand).all(|(a, d)| a <= d));
    debug_assert!(alloc.iter().sum::<u32>() <= total);
    alloc
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{AttemptFailure, AttemptStats, InputSplit, Limits};
    use crate::wire::JobRequest;

    /// A finished job of `tenant` (2 maps, 1 reducer) with `attempts`.
    fn load_job(cluster: &mut Cluster, clock: Clock, tenant: &str, attempts: Vec<AttemptRecord>) {
        let record = JobRecord {
            id: JobId::new(),
            tenant: TenantId(tenant.into()),
            request: JobRequest {
                map_module: Vec::new(),
                reduce_module: None,
                inputs: vec!["/in".into()],
                output: PathBuf::from("/out"),
                output_format: Default::default(),
                shuffle_settings: Default::default(),
                reducers: 1,
                split_bytes: 4096,
                limits: Limits::default(),
                params: BTreeMap::new(),
                max_attempts: 3,
                placement: Default::default(),
                speculate: false,
            },
            map_module: ModuleHash("m".into()),
            reduce_module: ModuleHash("m".into()),
            splits: (0..2)
                .map(|s| InputSplit {
                    path: PathBuf::from("/in"),
                    offset: s * 4096,
                    len: 4096,
                })
                .collect(),
            transitions: vec![PhaseChange {
                phase: Phase::Submitted,
                unix_ms: 1,
                reason: "submitted".into(),
            }],
            outcome: None,
            summary: None,
        };
        cluster.load_finished(clock, record, attempts);
    }

    fn attempt(task: TaskId, epoch: u32, ms: (u64, u64), outcome: AttemptOutcome) -> AttemptRecord {
        AttemptRecord {
            task,
            epoch: AttemptEpoch(epoch),
            worker: WorkerId(1),
            started_ms: ms.0,
            ended_ms: Some(ms.1),
            outcome,
            stats: Some(AttemptStats {
                bytes_in: 100,
                bytes_out: 10,
                records_out: 1,
                fuel_used: 1000,
                wall_ms: ms.1 - ms.0,
                counters: BTreeMap::new(),
                dead_letters: Vec::new(),
                output_digest: None,
            }),
            speculative: false,
        }
    }

    #[test]
    fn metrics_snapshots_count_only_what_the_viewer_may_see() {
        let mut cluster = Cluster::new(ClusterConfig {
            heartbeat: Duration::from_secs(1),
            lease: Duration::from_secs(10),
            shuffle: Shuffle::SharedStore,
            work_root: PathBuf::from("/work"),
        });
        let clock = Clock {
            now: Instant::now(),
            unix_ms: 1,
        };
        let failed = AttemptOutcome::Failed(AttemptFailure::Trap("boom".into()));
        let alice = vec![
            attempt(TaskId::Map(0), 1, (0, 50), failed),
            attempt(TaskId::Map(0), 2, (60, 80), AttemptOutcome::Committed),
            attempt(TaskId::Map(1), 3, (0, 30), AttemptOutcome::Committed),
        ];
        load_job(&mut cluster, clock, "alice", alice);
        let bob = vec![attempt(
            TaskId::Map(0),
            1,
            (0, 5),
            AttemptOutcome::Committed,
        )];
        load_job(&mut cluster, clock, "bob", bob);
        let shared = cluster.worker_joined(clock, "shared".into(), 4, BTreeMap::new(), None, None);
        let bobs = Some(TenantId("bob".into()));
        cluster.worker_joined(clock, "bobs".into(), 2, BTreeMap::new(), bobs, None);

        let a = cluster.metrics_snapshot(&Viewer::Tenant(TenantId("alice".into())));
        assert_eq!(a.attempts_by_outcome["committed"], 2);
        assert_eq!(a.attempts_by_outcome["failed"], 1);
        assert_eq!(a.attempts_by_outcome["lost"], 0);
        assert_eq!(a.attempt_ms["map"], vec![50, 20, 30]);
        assert!(!a.attempt_ms.contains_key("reduce"));
        // Bytes of committed attempts, fuel of all.
        assert_eq!((a.bytes_in, a.bytes_out, a.fuel_used), (200, 20, 3000));
        assert_eq!(a.jobs_by_phase.values().sum::<u64>(), 1);
        assert!(a.queued_jobs.is_empty(), "finished jobs are not queued");
        // Bob's dedicated worker is not alice's to see.
        let names: Vec<&str> = a.workers.iter().map(|w| w.name.as_str()).collect();
        assert_eq!(names, ["shared"]);
        assert_eq!(
            (a.workers[0].id, a.workers[0].slots, a.workers[0].busy),
            (shared, 4, 0)
        );

        let all = cluster.metrics_snapshot(&Viewer::Operator);
        assert_eq!(all.attempts_by_outcome["committed"], 3);
        assert_eq!(all.jobs_by_phase.values().sum::<u64>(), 2);
        assert_eq!(all.workers.len(), 2);
        assert_eq!(cluster.listings_for(&Viewer::Operator).len(), 2);
        let alices = cluster.listings_for(&Viewer::Tenant(TenantId("alice".into())));
        assert_eq!(alices.len(), 1);
        let bob_job = &cluster.listings_for(&Viewer::Tenant(TenantId("bob".into())))[0]
            .1
            .job;
        let prefix = bob_job.as_str();
        let alice = Viewer::Tenant(TenantId("alice".into()));
        assert!(cluster.report_for(&alice, prefix).is_none());
        assert!(cluster.report_for(&Viewer::Operator, prefix).is_some());
    }

    #[test]
    fn weighted_shares_follow_the_weights() {
        assert_eq!(weighted_fair(9, &[100, 100], &[2, 1], &[0; 2]), vec![6, 3]);
        assert_eq!(weighted_fair(4, &[100, 100], &[1, 1], &[0; 2]), vec![2, 2]);
        assert_eq!(weighted_fair(10, &[2, 100], &[3, 1], &[0; 2]), vec![2, 8]);
        assert_eq!(weighted_fair(1, &[5, 5], &[1, 3], &[0; 2]), vec![0, 1]);
    }

    #[test]
    fn fair_shares_split_evenly_and_pass_on_what_is_not_wanted() {
        assert_eq!(max_min_fair(4, &[10, 10], &[0; 2]), vec![2, 2]);
        assert_eq!(max_min_fair(4, &[1, 10], &[0; 2]), vec![1, 3]);
        assert_eq!(max_min_fair(2, &[5, 5, 5], &[0; 3]), vec![1, 1, 0]);
        assert_eq!(max_min_fair(9, &[2, 0, 100], &[0; 3]), vec![2, 0, 7]);
        assert_eq!(max_min_fair(0, &[3], &[0; 1]), vec![0]);
        assert_eq!(max_min_fair(6, &[1, 1], &[0; 2]), vec![1, 1]);
        // Too few slots to go round: the least served job gets one first.
        assert_eq!(max_min_fair(2, &[5, 5, 5], &[9, 9, 0]), vec![1, 0, 1]);
    }
}

//! The coordinator's brain: a sans-IO state machine for one job.
//!
//! No threads, sockets, clocks or files here. The driver feeds events with
//! [`Scheduler::handle`] / [`Scheduler::handle_timeout`] (time is an input)
//! and carries out what [`Scheduler::poll_action`] returns: assign an attempt,
//! commit or discard an attempt's files, interrupt a stale attempt. The
//! embedded driver and the networked coordinator drive the same machine, and
//! the simulation tests drive it with thousands of random schedules.
//!
//! Invariants (ARCHITECTURE.md has the full lifecycle):
//! - I1 epochs only grow: each assignment of a task carries a higher epoch;
//! - I2 only the attempt holding the task's current epoch may commit, and a
//!   task commits at most once;
//! - I3 a stale or failed attempt's files are discarded, never published;
//! - I4 reduce tasks start only when every map task is committed;
//! - I5 a worker runs at most `slots` attempts at once.
//!
//! With speculation (`--speculate`, [`Speculation`]) a straggling task may
//! have two live attempts at once, its running attempt and one backup on
//! another worker: the first to finish commits (I2 holds: one commit per
//! task), the other is interrupted and its files discarded (I3).

use crate::model::{
    Assignment, AttemptEpoch, AttemptFailure, AttemptReport, AttemptStats, InputSplit, JobId,
    Limits, ModuleHash, OutputDigest, OutputFormat, Shuffle, ShuffleSettings, TaskId, TaskInput,
    TenantId, WorkerId,
};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

/// What a job is, as the scheduler needs it.
#[derive(Clone, Debug)]
pub struct JobPlan {
    pub tenant: TenantId,
    pub job: JobId,
    pub map_module: ModuleHash,
    pub reduce_module: ModuleHash,
    pub splits: Vec<InputSplit>,
    pub reducers: u32,
    pub limits: Limits,
    pub params: BTreeMap<String, String>,
    pub output: std::path::PathBuf,
    pub output_format: OutputFormat,
    pub shuffle_settings: ShuffleSettings,
    pub work_root: std::path::PathBuf,
    /// Where map outputs live. On the worker that produced them
    /// (networked mode's default): when that worker is lost, its committed
    /// map tasks run again. In a shared directory or an object store: they
    /// outlive it.
    pub shuffle: Shuffle,
}

#[derive(Clone, Debug)]
pub struct SchedulerConfig {
    /// Attempts per task before the job fails (Hadoop's default is 4).
    pub max_attempts: u32,
    /// A running attempt whose worker sends no heartbeat for this long is
    /// presumed lost and its task reassigned with a higher epoch.
    pub lease: Duration,
    /// A failed task waits this long before its next attempt, doubling
    /// with each failure (capped at 10 s): a transient fault gets time to
    /// pass, and a deterministic one does not burn the attempts at once.
    pub retry_backoff: Duration,
    /// Backup attempts for stragglers (`--speculate`); `None`: never.
    pub speculation: Option<Speculation>,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            max_attempts: 4,
            lease: Duration::from_secs(10),
            retry_backoff: Duration::from_millis(100),
            speculation: None,
        }
    }
}

/// When a running task gets a backup attempt (Spark's
/// `spark.speculation.quantile` / `multiplier` / `minTaskRuntime`): once
/// `quantile_permille` of its phase's tasks are committed, a task whose
/// attempt has run longer than `multiplier_permille` × the median duration
/// of the phase's committed attempts, and at least `min_runtime`, gets one
/// backup on another worker, in a slot the job's share allows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Speculation {
    pub quantile_permille: u32,
    pub multiplier_permille: u32,
    pub min_runtime: Duration,
}

impl Default for Speculation {
    fn default() -> Self {
        Speculation {
            quantile_permille: 750,
            multiplier_permille: 1500,
            min_runtime: Duration::from_secs(1),
        }
    }
}

/// The longest a failed task waits before its next attempt.
const RETRY_BACKOFF_MAX: Duration = Duration::from_secs(10);

#[derive(Clone, Debug)]
pub enum Event {
    /// A worker joined with `slots` slots for this job.
    WorkerJoined {
        worker: WorkerId,
        slots: u32,
    },
    WorkerLost {
        worker: WorkerId,
    },
    /// The worker is alive: renew the leases of all its attempts.
    Heartbeat {
        worker: WorkerId,
    },
    /// The worker finishes what it runs but takes nothing new.
    WorkerDraining {
        worker: WorkerId,
    },
    AttemptFinished(AttemptReport),
    /// The driver carried out [`Action::Commit`].
    CommitFinished {
        task: TaskId,
        epoch: AttemptEpoch,
        result: Result<(), String>,
    },
    Cancel,
    /// The job cannot go on for a reason outside its tasks (no worker may
    /// run it within `--placement-timeout`): interrupt and fail.
    Fail {
        reason: String,
    },
    /// After a coordinator restart, `worker` says it still holds these
    /// committed map outputs (epoch and the digest of its file's bytes).
    /// One that is its task's committed epoch in the durable record, on
    /// this same worker, with the recorded digest, is adopted again; the
    /// holder's copy with another digest makes the task run again now.
    OutputsAnnounced {
        worker: WorkerId,
        outputs: Vec<(TaskId, AttemptEpoch, OutputDigest)>,
    },
}

/// What becomes of the committed map outputs of a restored job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestoredMapOutputs {
    /// They are in the shared store: committed they stay.
    Kept,
    /// They were on workers, which re-announce them: each waits until
    /// `until` for its worker to do so ([`Event::OutputsAnnounced`]), and
    /// runs again if it does not.
    AwaitAnnouncement { until: Instant },
}

#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    Assign {
        worker: WorkerId,
        assignment: Box<Assignment>,
    },
    /// Publish this attempt's output (atomic rename). Only ever for the
    /// task's current epoch, at most once per task.
    Commit {
        task: TaskId,
        epoch: AttemptEpoch,
        worker: WorkerId,
    },
    /// Delete this attempt's private files; they must never publish.
    Discard {
        task: TaskId,
        epoch: AttemptEpoch,
        worker: WorkerId,
    },
    /// Interrupt a running attempt that no longer holds its task's epoch.
    Interrupt {
        task: TaskId,
        epoch: AttemptEpoch,
        worker: WorkerId,
    },
    Finished(JobOutcome),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobOutcome {
    Completed,
    Failed(String),
    Cancelled,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Phase {
    /// Queued behind another job (the scheduler itself starts in Mapping).
    Submitted,
    Mapping,
    Reducing,
    Completed,
    Failed,
    Cancelled,
}

#[derive(Clone, Debug, PartialEq)]
enum TaskState {
    Pending,
    Running {
        epoch: AttemptEpoch,
        worker: WorkerId,
        lease_until: Instant,
        /// When this attempt was assigned (speculation measures from it).
        since: Instant,
    },
    Committing {
        epoch: AttemptEpoch,
        worker: WorkerId,
    },
    Committed {
        epoch: AttemptEpoch,
        worker: WorkerId,
    },
    /// Committed before a coordinator restart, on a worker that has not
    /// re-announced it yet (worker-local map outputs only). Not usable by
    /// reducers (I4 counts only `Committed`); back to `Committed` when its
    /// worker re-announces it, to `Pending` when the wait is over.
    Unclaimed {
        epoch: AttemptEpoch,
        worker: WorkerId,
    },
}

#[derive(Clone, Debug)]
struct Task {
    state: TaskState,
    /// The newest epoch handed out for this task (0: never assigned).
    epoch: AttemptEpoch,
    failures: u32,
    last_failure: Option<String>,
    failed_on: Option<WorkerId>,
    /// Every worker an attempt of this task failed on (for the job's error).
    failed_workers: std::collections::BTreeSet<WorkerId>,
    /// A failed task is not retried before this (backoff).
    not_before: Option<Instant>,
    /// A second live attempt (speculation), only while `state` is Running,
    /// never on the running attempt's worker.
    backup: Option<Backup>,
    /// It had a backup: a task gets at most one.
    speculated: bool,
}

/// A task's backup attempt (speculation).
#[derive(Clone, Debug, PartialEq)]
struct Backup {
    epoch: AttemptEpoch,
    worker: WorkerId,
    lease_until: Instant,
    since: Instant,
}

#[derive(Clone, Debug)]
struct WorkerSlots {
    slots: u32,
    running: u32,
    /// An attempt's lease expired on this worker: it gets nothing new until
    /// it is heard from again (a frozen worker must not get its task back).
    suspect: bool,
}

/// One line of the attempt log: who ran what, when, and how it ended.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AttemptRecord {
    pub task: TaskId,
    pub epoch: AttemptEpoch,
    pub worker: WorkerId,
    pub started_ms: u64,
    pub ended_ms: Option<u64>,
    pub outcome: AttemptOutcome,
    pub stats: Option<AttemptStats>,
    /// A backup attempt started by speculation.
    pub speculative: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AttemptOutcome {
    Running,
    Committed,
    Failed(AttemptFailure),
    /// Finished, but its epoch was no longer current: discarded unpublished.
    RejectedStale,
    /// Its worker was lost or its lease expired.
    Lost,
    /// Committed, but the map output was lost with its worker (or could
    /// not be fetched): the task ran again.
    OutputLost,
    /// Another attempt of its task (speculation: the backup, or the
    /// attempt it backed up) finished first and committed: interrupted,
    /// its files discarded.
    Superseded,
}

pub struct Scheduler {
    plan: JobPlan,
    config: SchedulerConfig,
    started: Instant,
    phase: Phase,
    tasks: BTreeMap<TaskId, Task>,
    pending: VecDeque<TaskId>,
    workers: BTreeMap<WorkerId, WorkerSlots>,
    actions: VecDeque<Action>,
    log: Vec<AttemptRecord>,
    /// Index into `log` of each attempt.
    log_index: BTreeMap<(TaskId, AttemptEpoch), usize>,
    /// Log records changed since the last [`Scheduler::take_changed_records`]
    /// (what a durable driver must write).
    changed: std::collections::BTreeSet<usize>,
    /// Tasks by state, kept as states change: per-event work must not scan
    /// every task (a 20,000-task job spent 70 % of its time doing so).
    tally: StateTally,
    /// An upper bound on the pending tasks waiting out a backoff: the
    /// backoff scans run only while it is above zero.
    backoffs: usize,
    /// The epoch of the last commit issued per task: what I2 is checked
    /// against (a map task commits again only after its output was lost,
    /// and then at a higher epoch).
    commits_issued: BTreeMap<TaskId, AttemptEpoch>,
    /// Tasks `Unclaimed`, and until when their workers may re-announce them.
    unclaimed: std::collections::BTreeSet<TaskId>,
    unclaimed_until: Option<Instant>,
    /// Durations (ms) of the attempts committed in this incarnation, sorted,
    /// per phase (maps, reduces): speculation's median.
    committed_ms: [Vec<u64>; 2],
    /// Tasks due a backup that found no free slot on another worker when
    /// last looked at: part of the job's demand, so its share can grow.
    backups_wanted: usize,
    /// The last time [`Self::schedule`] ran: speculation deadlines up to
    /// then were looked at, and wait for a free slot (an event), not a timer.
    last_scheduled: Option<Instant>,
}

/// Counts of committed tasks and the set of running (or committing) ones.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct StateTally {
    committed_maps: usize,
    committed_reduces: usize,
    running: std::collections::BTreeSet<TaskId>,
}

impl StateTally {
    fn of(tasks: &BTreeMap<TaskId, Task>) -> Self {
        let mut tally = StateTally::default();
        for (id, t) in tasks {
            tally.add(*id, &t.state);
        }
        tally
    }

    /// Every task state change goes through here.
    fn set(&mut self, task: TaskId, state: &mut TaskState, to: TaskState) {
        self.remove(task, state);
        self.add(task, &to);
        *state = to;
    }

    fn add(&mut self, task: TaskId, state: &TaskState) {
        match (state, task) {
            (TaskState::Committed { .. }, TaskId::Map(_)) => self.committed_maps += 1,
            (TaskState::Committed { .. }, TaskId::Reduce(_)) => self.committed_reduces += 1,
            (TaskState::Running { .. } | TaskState::Committing { .. }, _) => {
                let new = self.running.insert(task);
                debug_assert!(new, "{task} was already running");
            }
            (TaskState::Pending | TaskState::Unclaimed { .. }, _) => {}
        }
    }

    fn remove(&mut self, task: TaskId, state: &TaskState) {
        match (state, task) {
            (TaskState::Committed { .. }, TaskId::Map(_)) => self.committed_maps -= 1,
            (TaskState::Committed { .. }, TaskId::Reduce(_)) => self.committed_reduces -= 1,
            (TaskState::Running { .. } | TaskState::Committing { .. }, _) => {
                let was = self.running.remove(&task);
                debug_assert!(was, "{task} was not running");
            }
            (TaskState::Pending | TaskState::Unclaimed { .. }, _) => {}
        }
    }
}

impl Scheduler {
    pub fn new(plan: JobPlan, config: SchedulerConfig, now: Instant) -> Self {
        assert!(plan.reducers > 0, "at least one reducer");
        assert!(config.max_attempts > 0, "at least one attempt per task");
        let mut tasks = BTreeMap::new();
        let mut pending = VecDeque::new();
        for i in 0..plan.splits.len() as u32 {
            tasks.insert(TaskId::Map(i), Task::new());
            pending.push_back(TaskId::Map(i));
        }
        for r in 0..plan.reducers {
            tasks.insert(TaskId::Reduce(r), Task::new());
        }
        let mut scheduler = Scheduler {
            plan,
            config,
            started: now,
            phase: Phase::Mapping,
            tasks,
            pending,
            workers: BTreeMap::new(),
            actions: VecDeque::new(),
            log: Vec::new(),
            log_index: BTreeMap::new(),
            changed: std::collections::BTreeSet::new(),
            tally: StateTally::default(),
            backoffs: 0,
            commits_issued: BTreeMap::new(),
            unclaimed: std::collections::BTreeSet::new(),
            unclaimed_until: None,
            committed_ms: [Vec::new(), Vec::new()],
            backups_wanted: 0,
            last_scheduled: None,
        };
        // A job with no input has no map tasks: it goes straight to reduce.
        scheduler.advance_phase();
        scheduler
    }

    /// Rebuild a job's scheduler after a coordinator restart from its
    /// durable attempt log. Committed tasks stay committed and never run
    /// again; attempts that were running are lost; every new assignment gets
    /// an epoch above `epoch_floor`, above every epoch of an earlier
    /// incarnation, so their late results are rejected (I1, I3). Committed
    /// map outputs held by workers wait for their workers to re-announce
    /// them (`map_outputs`).
    pub fn restore(
        plan: JobPlan,
        config: SchedulerConfig,
        now: Instant,
        records: Vec<AttemptRecord>,
        epoch_floor: AttemptEpoch,
        map_outputs: RestoredMapOutputs,
    ) -> Self {
        let mut scheduler = Scheduler::new(plan, config, now);
        debug_assert!(scheduler.log.is_empty());
        // Time keeps counting from the job's first start.
        let elapsed = records
            .iter()
            .filter_map(|r| r.ended_ms.or(Some(r.started_ms)))
            .max();
        scheduler.started = now - Duration::from_millis(elapsed.unwrap_or(0));
        scheduler.phase = Phase::Mapping;
        scheduler.pending.clear();
        for mut record in records {
            let (task, epoch) = (record.task, record.epoch);
            let Some(t) = scheduler.tasks.get_mut(&task) else {
                continue; // a task of another plan: ignore rather than guess
            };
            t.epoch = t.epoch.max(epoch).max(epoch_floor);
            match (record.outcome.clone(), map_outputs) {
                (AttemptOutcome::Committed, RestoredMapOutputs::AwaitAnnouncement { until })
                    if matches!(task, TaskId::Map(_)) =>
                {
                    t.state = TaskState::Unclaimed {
                        epoch,
                        worker: record.worker,
                    };
                    scheduler.unclaimed.insert(task);
                    scheduler.unclaimed_until = Some(until);
                }
                (AttemptOutcome::Committed, _) => {
                    t.state = TaskState::Committed {
                        epoch,
                        worker: record.worker,
                    };
                    scheduler.unclaimed.remove(&task);
                }
                (AttemptOutcome::Running, _) => {
                    record.outcome = AttemptOutcome::Lost;
                    record.ended_ms = Some(scheduler.millis(now));
                }
                _ => {}
            }
            scheduler
                .log_index
                .insert((task, epoch), scheduler.log.len());
            scheduler.changed.insert(scheduler.log.len());
            scheduler.log.push(record);
        }
        for t in scheduler.tasks.values_mut() {
            t.epoch = t.epoch.max(epoch_floor);
        }
        let waiting: Vec<TaskId> = scheduler
            .tasks
            .iter()
            .filter(|(id, t)| matches!(id, TaskId::Map(_)) && t.state == TaskState::Pending)
            .map(|(id, _)| *id)
            .collect();
        scheduler.pending.extend(waiting);
        // The loop above set states directly.
        scheduler.tally = StateTally::of(&scheduler.tasks);
        scheduler.recount_backoffs();
        scheduler.advance_phase();
        scheduler
    }

    /// Check the kept tally against a scan of every task (for tests that
    /// drive many schedules; a mismatch names both).
    pub fn audit(&self) -> Result<(), String> {
        let scanned = StateTally::of(&self.tasks);
        if scanned != self.tally {
            return Err(format!("kept {:?}, scanned {scanned:?}", self.tally));
        }
        let waiting = self
            .pending
            .iter()
            .filter(|id| self.tasks[*id].not_before.is_some())
            .count();
        if waiting > self.backoffs {
            return Err(format!(
                "{waiting} tasks in backoff, bound {}",
                self.backoffs
            ));
        }
        // Speculation: a backup only beside a running attempt, on another
        // worker, above its epoch, at most one per task.
        for (id, t) in &self.tasks {
            let Some(backup) = &t.backup else { continue };
            match t.state {
                TaskState::Running { epoch, worker, .. }
                    if worker != backup.worker && epoch < backup.epoch && t.speculated => {}
                ref state => return Err(format!("{id} has backup {backup:?} beside {state:?}")),
            }
        }
        Ok(())
    }

    /// The attempt records changed since the last call: a durable driver
    /// writes them before it acknowledges anything to workers or clients.
    #[must_use]
    pub fn take_changed_records(&mut self) -> Vec<AttemptRecord> {
        let changed = std::mem::take(&mut self.changed);
        changed.into_iter().map(|i| self.log[i].clone()).collect()
    }

    // ---- getters ----

    pub fn phase(&self) -> Phase {
        self.phase
    }

    pub fn job(&self) -> JobId {
        self.plan.job
    }

    pub fn attempt_log(&self) -> &[AttemptRecord] {
        &self.log
    }

    /// (committed, running, pending) task counts.
    pub fn progress(&self) -> (usize, usize, usize) {
        let committed = self.tally.committed_maps + self.tally.committed_reduces;
        let running = self.tally.running.len();
        (committed, running, self.tasks.len() - committed - running)
    }

    /// Slots this job could use now: pending tasks plus running attempts,
    /// plus attempts being committed: a commit usually brings more work (the
    /// reduce phase after the last map), and a slot that went to another
    /// job during the rename could not be taken back (no preemption).
    pub fn demand(&self) -> usize {
        self.pending.len() + self.tally.running.len() + self.backups() + self.backups_wanted
    }

    /// Backup attempts running now (speculation).
    fn backups(&self) -> usize {
        if self.config.speculation.is_none() {
            return 0;
        }
        self.tally
            .running
            .iter()
            .filter(|id| self.tasks[*id].backup.is_some())
            .count()
    }

    /// Tasks queued for a slot (some may be waiting out a backoff).
    pub fn queued(&self) -> usize {
        self.pending.len()
    }

    /// The worker every queued task last failed on, if they all did: the
    /// coordinator places this job's share elsewhere when it can, so that
    /// retries do not keep going back to a worker that fails them (a full
    /// disk, say). Stops at the first task that says otherwise.
    pub fn failing_worker(&self) -> Option<WorkerId> {
        let mut tasks = self.pending.iter().map(|t| self.tasks[t].failed_on);
        let first = tasks.next()??;
        tasks.all(|w| w == Some(first)).then_some(first)
    }

    /// Attempts of this job running on `worker`.
    pub fn running_on(&self, worker: WorkerId) -> u32 {
        self.workers.get(&worker).map_or(0, |w| w.running)
    }

    /// The worker missed a lease and gets nothing new from this job until
    /// its next heartbeat.
    pub fn is_suspect(&self, worker: WorkerId) -> bool {
        self.workers.get(&worker).is_some_and(|w| w.suspect)
    }

    /// Committed map outputs still waiting to be re-announced.
    pub fn unclaimed(&self) -> usize {
        self.unclaimed.len()
    }

    pub fn task_count(&self) -> usize {
        self.tasks.len()
    }

    // ---- inputs ----

    pub fn handle(&mut self, now: Instant, event: Event) {
        match event {
            Event::WorkerJoined { worker, slots } => self.set_share(worker, slots),
            Event::WorkerLost { worker } => self.worker_lost(now, worker),
            Event::Heartbeat { worker } => self.renew_leases(now, worker),
            Event::WorkerDraining { worker } => {
                if let Some(w) = self.workers.get_mut(&worker) {
                    w.slots = 0;
                }
            }
            Event::AttemptFinished(report) => self.attempt_finished(now, report),
            Event::CommitFinished {
                task,
                epoch,
                result,
            } => self.commit_finished(now, task, epoch, result),
            Event::Cancel => self.cancel(now),
            Event::Fail { reason } => {
                if self.is_active() {
                    self.fail(now, reason);
                }
            }
            Event::OutputsAnnounced { worker, outputs } => {
                self.outputs_announced(now, worker, outputs)
            }
        }
        self.schedule(now);
    }

    /// Set this job's share of a worker's slots (fair share; what runs
    /// there keeps running) without scheduling: the coordinator sets every
    /// job's shares first, then calls [`Self::schedule_now`], so no job
    /// assigns under its old share on a worker whose slots went to another.
    pub fn set_share(&mut self, worker: WorkerId, slots: u32) {
        self.workers
            .entry(worker)
            .and_modify(|w| w.slots = slots)
            .or_insert(WorkerSlots {
                slots,
                running: 0,
                suspect: false,
            });
    }

    /// Assign what the current shares allow.
    pub fn schedule_now(&mut self, now: Instant) {
        self.schedule(now);
    }

    /// Whether `worker` holds the output of `task` at `epoch` that this job
    /// counts on (committed there, or waiting for it to re-announce it):
    /// any other output a worker announces is released.
    pub fn holds_output(&self, task: TaskId, epoch: AttemptEpoch, worker: WorkerId) -> bool {
        self.tasks.get(&task).is_some_and(|t| match t.state {
            TaskState::Committed {
                epoch: e,
                worker: w,
            }
            | TaskState::Unclaimed {
                epoch: e,
                worker: w,
            } => e == epoch && w == worker,
            _ => false,
        })
    }

    /// Expire leases whose deadline has passed and the wait for workers to
    /// re-announce their map outputs, and start the backups that are due
    /// (speculation, in [`Self::schedule`]).
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.unclaimed_until.is_some_and(|until| until <= now) {
            self.unclaimed_until = None;
            for task in std::mem::take(&mut self.unclaimed) {
                tracing::info!(job = %self.plan.job, %task, "map output not re-announced in time; running the task again");
                self.unclaim(task);
            }
        }
        let expired_backups: Vec<(TaskId, AttemptEpoch, WorkerId)> = self
            .tally
            .running
            .iter()
            .filter_map(|id| match &self.tasks[id].backup {
                Some(b) if b.lease_until <= now => Some((*id, b.epoch, b.worker)),
                _ => None,
            })
            .collect();
        for (task, epoch, worker) in expired_backups {
            tracing::debug!(job = %self.plan.job, %task, %epoch, %worker, "backup's lease expired");
            self.interrupt_expired(task, epoch, worker);
            self.drop_backup(now, task, AttemptOutcome::Lost);
        }
        let expired: Vec<(TaskId, AttemptEpoch, WorkerId)> = self
            .tally
            .running
            .iter()
            .map(|id| (id, &self.tasks[id]))
            .filter_map(|(id, t)| match t.state {
                TaskState::Running {
                    epoch,
                    worker,
                    lease_until,
                    ..
                } if lease_until <= now => Some((*id, epoch, worker)),
                _ => None,
            })
            .collect();
        for (task, epoch, worker) in expired {
            tracing::debug!(job = %self.plan.job, %task, %epoch, %worker, "lease expired");
            self.interrupt_expired(task, epoch, worker);
            self.requeue(now, task, AttemptOutcome::Lost);
        }
        self.schedule(now);
    }

    /// An attempt whose lease expired: tell its worker to stop it (if it
    /// still can hear us) and suspect the worker until it reports again.
    fn interrupt_expired(&mut self, task: TaskId, epoch: AttemptEpoch, worker: WorkerId) {
        self.actions.push_back(Action::Interrupt {
            task,
            epoch,
            worker,
        });
        if let Some(w) = self.workers.get_mut(&worker) {
            w.suspect = true;
        }
    }

    // ---- outputs ----

    /// The next thing the driver must do, in order.
    #[must_use]
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When [`Self::handle_timeout`] must next be called.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let leases = self
            .tally
            .running
            .iter()
            .filter_map(|id| match self.tasks[id].state {
                TaskState::Running { lease_until, .. } => Some(lease_until),
                _ => None,
            });
        // No task in backoff (the usual case): no scan of the queue.
        let scanned = if self.backoffs > 0 {
            self.pending.len()
        } else {
            0
        };
        let retries = self
            .pending
            .range(..scanned)
            .filter_map(|id| self.tasks[id].not_before);
        let unclaimed = self.unclaimed_until.filter(|_| !self.unclaimed.is_empty());
        let backup_leases = self
            .tally
            .running
            .iter()
            .filter_map(|id| self.tasks[id].backup.as_ref().map(|b| b.lease_until));
        // Backups due later than the last look (earlier ones wait for a
        // slot, which comes with an event).
        let due = self.speculation_due().into_iter().map(|(_, _, at)| at);
        let due = due.filter(|at| self.last_scheduled.is_none_or(|last| *at > last));
        leases
            .chain(retries)
            .chain(unclaimed)
            .chain(backup_leases)
            .chain(due)
            .min()
    }

    // ---- transitions ----

    fn worker_lost(&mut self, now: Instant, worker: WorkerId) {
        let backups: Vec<TaskId> = self
            .tally
            .running
            .iter()
            .filter(|id| {
                self.tasks[*id]
                    .backup
                    .as_ref()
                    .is_some_and(|b| b.worker == worker)
            })
            .copied()
            .collect();
        for task in backups {
            self.drop_backup(now, task, AttemptOutcome::Lost);
        }
        self.workers.remove(&worker);
        // With map outputs on workers, the worker itself commits a map
        // attempt; on a lost worker that commit never completes. (Other
        // commits are the coordinator's own renames and do complete.)
        let committing: Vec<TaskId> = self
            .tasks
            .iter()
            .filter(|(id, t)| {
                self.plan.shuffle.on_workers()
                    && matches!(id, TaskId::Map(_))
                    && matches!(t.state, TaskState::Committing { worker: w, .. } if w == worker)
            })
            .map(|(id, _)| *id)
            .collect();
        for task in committing {
            let t = self.tasks.get_mut(&task).expect("known task");
            let TaskState::Committing { epoch, .. } = t.state else {
                unreachable!()
            };
            self.tally.set(task, &mut t.state, TaskState::Pending);
            self.record_end(now, task, epoch, AttemptOutcome::Lost, None);
            self.enqueue(task);
        }
        if self.plan.shuffle.on_workers() {
            let lost: Vec<(TaskId, AttemptEpoch)> = self
                .tasks
                .iter()
                .filter_map(|(id, t)| match t.state {
                    TaskState::Committed { epoch, worker: w }
                        if w == worker && matches!(id, TaskId::Map(_)) =>
                    {
                        Some((*id, epoch))
                    }
                    _ => None,
                })
                .collect();
            for (task, epoch) in lost {
                self.lose_map_output(now, task, epoch);
            }
        }
        let running: Vec<TaskId> = self
            .tasks
            .iter()
            .filter(|(_, t)| matches!(t.state, TaskState::Running { worker: w, .. } if w == worker))
            .map(|(id, _)| *id)
            .collect();
        for task in running {
            self.requeue(now, task, AttemptOutcome::Lost);
        }
    }

    fn renew_leases(&mut self, now: Instant, worker: WorkerId) {
        if let Some(w) = self.workers.get_mut(&worker) {
            w.suspect = false;
        }
        let lease = self.config.lease;
        for id in &self.tally.running {
            let task = self.tasks.get_mut(id).expect("known task");
            if let TaskState::Running {
                worker: w,
                lease_until,
                ..
            } = &mut task.state
                && *w == worker
            {
                *lease_until = now + lease;
            }
            if let Some(backup) = &mut task.backup
                && backup.worker == worker
            {
                backup.lease_until = now + lease;
            }
        }
    }

    /// Put a running task back in the queue; its attempt becomes stale.
    /// If the task has a backup attempt, that one carries the task on
    /// instead (it becomes the running attempt; nothing is queued).
    fn requeue(&mut self, now: Instant, task: TaskId, outcome: AttemptOutcome) {
        let t = self.tasks.get_mut(&task).expect("known task");
        let TaskState::Running { epoch, worker, .. } = t.state else {
            return;
        };
        match t.backup.take() {
            Some(backup) => {
                debug_assert_ne!(backup.worker, worker, "a backup runs elsewhere");
                tracing::debug!(job = %self.plan.job, %task, epoch = %backup.epoch, worker = %backup.worker, "backup carries the task on");
                let running = TaskState::Running {
                    epoch: backup.epoch,
                    worker: backup.worker,
                    lease_until: backup.lease_until,
                    since: backup.since,
                };
                self.tally.set(task, &mut t.state, running);
            }
            None => self.tally.set(task, &mut t.state, TaskState::Pending),
        }
        self.release_slot(worker);
        self.record_end(now, task, epoch, outcome, None);
        if self.tasks[&task].state == TaskState::Pending {
            self.enqueue(task);
        }
    }

    /// End a task's backup attempt; its running attempt goes on.
    fn drop_backup(&mut self, now: Instant, task: TaskId, outcome: AttemptOutcome) {
        let t = self.tasks.get_mut(&task).expect("known task");
        let Some(backup) = t.backup.take() else {
            return;
        };
        debug_assert!(matches!(t.state, TaskState::Running { .. }));
        self.release_slot(backup.worker);
        self.record_end(now, task, backup.epoch, outcome, None);
    }

    /// Queue a pending task if it can run now: map tasks while the job is
    /// active, reduce tasks only while reducing (I4); the others are queued
    /// when the phase is (re)entered.
    fn enqueue(&mut self, task: TaskId) {
        let eligible = match task {
            TaskId::Map(_) => self.is_active(),
            TaskId::Reduce(_) => self.phase == Phase::Reducing,
        };
        if eligible && !self.pending.contains(&task) {
            self.pending.push_front(task);
            self.backoffs += usize::from(self.tasks[&task].not_before.is_some());
        }
    }

    /// Count the queued tasks waiting out a backoff, after the queue was
    /// filled wholesale (a phase change, a restore).
    fn recount_backoffs(&mut self) {
        self.backoffs = self
            .pending
            .iter()
            .filter(|id| self.tasks[*id].not_before.is_some())
            .count();
    }

    /// A committed map output is gone (its worker was lost, or a reducer
    /// could not fetch it): run the map task again, and hold back reduce
    /// tasks until it is committed again.
    fn lose_map_output(&mut self, now: Instant, task: TaskId, epoch: AttemptEpoch) {
        debug_assert!(matches!(task, TaskId::Map(_)));
        let active = self.is_active();
        let t = self.tasks.get_mut(&task).expect("known task");
        if !active || !matches!(t.state, TaskState::Committed { epoch: e, .. } if e == epoch) {
            return;
        }
        tracing::debug!(job = %self.plan.job, %task, %epoch, "map output lost; running the task again");
        self.tally.set(task, &mut t.state, TaskState::Pending);
        if let Some(&i) = self.log_index.get(&(task, epoch)) {
            self.log[i].outcome = AttemptOutcome::OutputLost;
            self.changed.insert(i);
        }
        let _ = now;
        if self.phase == Phase::Reducing {
            self.phase = Phase::Mapping;
            self.pending.retain(|t| matches!(t, TaskId::Map(_)));
        }
        self.enqueue(task);
    }

    /// Adopt the announced outputs that are what the durable record says
    /// was committed: the task's committed epoch, on this worker (ids are
    /// durable identities), with the recorded digest. The holder's copy
    /// with another digest is lost: the task runs again at once. Any other
    /// claim changes nothing (another worker's, another epoch).
    fn outputs_announced(
        &mut self,
        now: Instant,
        worker: WorkerId,
        outputs: Vec<(TaskId, AttemptEpoch, OutputDigest)>,
    ) {
        let _ = now;
        for (task, epoch, digest) in outputs {
            let Some(t) = self.tasks.get_mut(&task) else {
                continue;
            };
            if t.state != (TaskState::Unclaimed { epoch, worker }) {
                continue;
            }
            let recorded = self
                .log_index
                .get(&(task, epoch))
                .and_then(|&i| self.log[i].stats.as_ref())
                .and_then(|s| s.output_digest);
            self.unclaimed.remove(&task);
            if recorded == Some(digest) {
                tracing::info!(job = %self.plan.job, %task, %epoch, %worker, "map output re-adopted");
                let t = self.tasks.get_mut(&task).expect("known task");
                self.tally
                    .set(task, &mut t.state, TaskState::Committed { epoch, worker });
            } else {
                tracing::warn!(job = %self.plan.job, %task, %epoch, %worker, ?recorded, announced = ?digest, "re-announced map output differs from the committed one; running the task again");
                self.unclaim(task);
            }
        }
        if self.unclaimed.is_empty() {
            self.unclaimed_until = None;
        }
        self.advance_phase();
    }

    /// An `Unclaimed` map output is given up: its task runs again.
    fn unclaim(&mut self, task: TaskId) {
        let t = self.tasks.get_mut(&task).expect("known task");
        let TaskState::Unclaimed { epoch, .. } = t.state else {
            debug_assert!(false, "{task} is not unclaimed");
            return;
        };
        self.tally.set(task, &mut t.state, TaskState::Pending);
        if let Some(&i) = self.log_index.get(&(task, epoch)) {
            self.log[i].outcome = AttemptOutcome::OutputLost;
            self.changed.insert(i);
        }
        debug_assert!(
            self.phase != Phase::Reducing,
            "I4: reducing with {task} unclaimed"
        );
        self.enqueue(task);
    }

    fn attempt_finished(&mut self, now: Instant, report: AttemptReport) {
        let AttemptReport {
            task,
            epoch,
            worker,
            outcome,
            ..
        } = report;
        let Some(t) = self.tasks.get_mut(&task) else {
            tracing::warn!(job = %self.plan.job, %task, "report for an unknown task ignored");
            return;
        };
        let primary = matches!(t.state, TaskState::Running { epoch: e, worker: w, .. } if e == epoch && w == worker);
        let backup = t
            .backup
            .as_ref()
            .is_some_and(|b| b.epoch == epoch && b.worker == worker);
        if !primary && !backup {
            // I3: a stale attempt (or a duplicate report) never publishes.
            let duplicate_of_committed = matches!(t.state, TaskState::Committed { epoch: e, .. } | TaskState::Committing { epoch: e, .. } | TaskState::Unclaimed { epoch: e, .. } if e == epoch);
            if !duplicate_of_committed {
                tracing::debug!(job = %self.plan.job, %task, %epoch, %worker, current = %t.epoch, "rejected stale attempt");
                self.actions.push_back(Action::Discard {
                    task,
                    epoch,
                    worker,
                });
                self.record_end(now, task, epoch, AttemptOutcome::RejectedStale, None);
            }
            return;
        }
        if outcome.is_ok() {
            // Speculation: the first live attempt to finish wins.
            self.supersede_other_attempt(now, task, epoch);
        }
        let t = self.tasks.get_mut(&task).expect("known task");
        match outcome {
            Ok(stats) => {
                if matches!(task, TaskId::Reduce(_)) {
                    // The job's output limit holds before publication: an
                    // attempt that would pass it is never committed.
                    let limit = self.plan.limits.job_output_bytes;
                    let total = self.reduce_output_bytes().saturating_add(stats.bytes_out);
                    if total > limit {
                        self.refuse_over_job_output(now, task, epoch, worker, stats, limit, total);
                        return;
                    }
                }
                let t = self.tasks.get_mut(&task).expect("known task");
                if let TaskState::Running { since, .. } = t.state {
                    let ms = now.saturating_duration_since(since).as_millis() as u64;
                    let durations = &mut self.committed_ms[phase_index(task)];
                    let at = durations.partition_point(|&d| d <= ms);
                    durations.insert(at, ms);
                }
                // I2: a commit only for the task's live attempt (its newest
                // epoch, or the older one a backup lost to), and no other
                // attempt of the task left running.
                debug_assert!(
                    epoch <= t.epoch
                        && t.backup.is_none()
                        && matches!(t.state, TaskState::Running { epoch: e, .. } if e == epoch),
                    "I2: {task} commits its live attempt only"
                );
                self.tally
                    .set(task, &mut t.state, TaskState::Committing { epoch, worker });
                self.release_slot(worker);
                if let Some(&i) = self.log_index.get(&(task, epoch)) {
                    self.log[i].stats = Some(stats);
                    self.changed.insert(i);
                }
                tracing::debug!(job = %self.plan.job, %task, %epoch, %worker, "committing");
                // I2: at most one commit per epoch, each above the last.
                let previous = self.commits_issued.insert(task, epoch);
                debug_assert!(
                    previous.is_none_or(|p| p < epoch),
                    "I2: {task} {epoch} committed after {previous:?}"
                );
                self.actions.push_back(Action::Commit {
                    task,
                    epoch,
                    worker,
                });
            }
            Err(AttemptFailure::FetchFailed {
                map_task,
                map_epoch,
                worker: holder,
                reason,
            }) => {
                // Not the reduce's fault: no failure counted; the map task
                // whose output is missing runs again first.
                let failure = AttemptFailure::FetchFailed {
                    map_task,
                    map_epoch,
                    worker: holder,
                    reason,
                };
                tracing::debug!(job = %self.plan.job, %task, %epoch, %worker, %failure, "fetch failed");
                self.actions.push_back(Action::Discard {
                    task,
                    epoch,
                    worker,
                });
                self.end_attempt(now, task, epoch, AttemptOutcome::Failed(failure));
                self.lose_map_output(now, map_task, map_epoch);
            }
            Err(failure) => {
                t.failures += 1;
                t.last_failure = Some(format!("{worker} {epoch}: {failure}"));
                t.failed_workers.insert(worker);
                let failed_on = t.failed_workers.clone();
                t.failed_on = Some(worker);
                t.not_before = Some(now + backoff(self.config.retry_backoff, t.failures));
                self.backoffs += 1;
                let failures = t.failures;
                tracing::debug!(job = %self.plan.job, %task, %epoch, %worker, %failure, failures, "attempt failed");
                self.actions.push_back(Action::Discard {
                    task,
                    epoch,
                    worker,
                });
                if failures >= self.config.max_attempts {
                    let outcome = AttemptOutcome::Failed(failure.clone());
                    self.end_attempt(now, task, epoch, outcome);
                    let message = format!(
                        "task {task} failed {failures} times on {}; last: {worker} {epoch}: {failure}",
                        list(&failed_on)
                    );
                    self.fail(now, message);
                } else {
                    self.end_attempt(now, task, epoch, AttemptOutcome::Failed(failure));
                }
            }
        }
    }

    /// End one live attempt of a task that did not commit: its backup, or
    /// its running attempt (then the backup carries on, or it is queued).
    fn end_attempt(
        &mut self,
        now: Instant,
        task: TaskId,
        epoch: AttemptEpoch,
        outcome: AttemptOutcome,
    ) {
        let t = &self.tasks[&task];
        if t.backup.as_ref().is_some_and(|b| b.epoch == epoch) {
            self.drop_backup(now, task, outcome);
        } else {
            debug_assert!(matches!(t.state, TaskState::Running { epoch: e, .. } if e == epoch));
            self.requeue(now, task, outcome);
        }
    }

    /// Speculation: attempt `epoch` of `task` finished first; the task's
    /// other live attempt, if any, is interrupted and will be discarded
    /// when it reports (I3). Afterwards `epoch` is the running attempt and
    /// there is no backup.
    fn supersede_other_attempt(&mut self, now: Instant, task: TaskId, epoch: AttemptEpoch) {
        let t = &self.tasks[&task];
        let TaskState::Running {
            epoch: running,
            worker,
            ..
        } = t.state
        else {
            unreachable!("a live attempt's task is running");
        };
        let loser = match &t.backup {
            None => return,
            Some(backup) if backup.epoch == epoch => (running, worker),
            Some(backup) => (backup.epoch, backup.worker),
        };
        tracing::debug!(job = %self.plan.job, %task, winner = %epoch, loser = %loser.0, "speculation: first attempt to finish wins");
        self.actions.push_back(Action::Interrupt {
            task,
            epoch: loser.0,
            worker: loser.1,
        });
        self.end_attempt(now, task, loser.0, AttemptOutcome::Superseded);
        debug_assert!(self.tasks[&task].backup.is_none());
    }

    /// Output bytes of the reduce attempts committed or being committed.
    fn reduce_output_bytes(&self) -> u64 {
        self.tasks
            .iter()
            .filter(|(task, _)| matches!(task, TaskId::Reduce(_)))
            .filter_map(|(task, t)| match t.state {
                TaskState::Committed { epoch, .. } | TaskState::Committing { epoch, .. } => {
                    self.log_index.get(&(*task, epoch))
                }
                _ => None,
            })
            .filter_map(|&i| self.log[i].stats.as_ref())
            .map(|s| s.bytes_out)
            .sum()
    }

    /// Discard a reduce attempt whose output would take the job past its
    /// output limit, and fail the job: a re-run would write the same bytes.
    #[allow(clippy::too_many_arguments)]
    fn refuse_over_job_output(
        &mut self,
        now: Instant,
        task: TaskId,
        epoch: AttemptEpoch,
        worker: WorkerId,
        stats: AttemptStats,
        limit: u64,
        total: u64,
    ) {
        let t = self.tasks.get_mut(&task).expect("known task");
        self.tally.set(task, &mut t.state, TaskState::Pending);
        self.release_slot(worker);
        self.actions.push_back(Action::Discard {
            task,
            epoch,
            worker,
        });
        let failure = AttemptFailure::JobOutputLimit { limit, total };
        self.record_end(
            now,
            task,
            epoch,
            AttemptOutcome::Failed(failure.clone()),
            Some(stats),
        );
        self.fail(now, format!("task {task} {epoch} on {worker}: {failure}"));
    }

    fn commit_finished(
        &mut self,
        now: Instant,
        task: TaskId,
        epoch: AttemptEpoch,
        result: Result<(), String>,
    ) {
        let t = self.tasks.get_mut(&task).expect("known task");
        let TaskState::Committing { epoch: e, worker } = t.state else {
            // The worker holding this commit was lost meanwhile: the task
            // was requeued, this late result changes nothing.
            tracing::debug!(job = %self.plan.job, %task, %epoch, "late commit result ignored");
            return;
        };
        if e != epoch {
            tracing::debug!(job = %self.plan.job, %task, %epoch, "late commit result ignored");
            return;
        }
        match result {
            Ok(()) => {
                self.tally
                    .set(task, &mut t.state, TaskState::Committed { epoch, worker });
                self.record_end(now, task, epoch, AttemptOutcome::Committed, None);
                self.advance_phase();
            }
            Err(message) => {
                self.tally.set(task, &mut t.state, TaskState::Pending);
                t.failures += 1;
                t.not_before = Some(now + backoff(self.config.retry_backoff, t.failures));
                self.backoffs += 1;
                let failures = t.failures;
                let failure = AttemptFailure::Host(format!("commit failed: {message}"));
                self.record_end(
                    now,
                    task,
                    epoch,
                    AttemptOutcome::Failed(failure.clone()),
                    None,
                );
                if !self.is_active() {
                    // The job already ended (failed or cancelled) while this
                    // commit was in flight: it must not end twice.
                } else if failures >= self.config.max_attempts {
                    self.fail(now, format!("task {task}: {failure}"));
                } else {
                    self.enqueue(task);
                }
            }
        }
    }

    fn cancel(&mut self, now: Instant) {
        if !self.is_active() {
            return;
        }
        self.phase = Phase::Cancelled;
        self.interrupt_running(now);
        self.actions
            .push_back(Action::Finished(JobOutcome::Cancelled));
    }

    fn fail(&mut self, now: Instant, message: String) {
        debug_assert!(self.is_active());
        tracing::debug!(job = %self.plan.job, %message, "job failed");
        // Running attempts of a failed job are interrupted; their late
        // results are stale and get discarded.
        self.phase = Phase::Failed;
        self.interrupt_running(now);
        self.actions
            .push_back(Action::Finished(JobOutcome::Failed(message)));
    }

    fn interrupt_running(&mut self, now: Instant) {
        for (task, epoch, worker) in self.running_attempts() {
            self.actions.push_back(Action::Interrupt {
                task,
                epoch,
                worker,
            });
            self.end_attempt(now, task, epoch, AttemptOutcome::Lost);
        }
        self.pending.clear();
    }

    /// Every live attempt: backups first, then running attempts (ending
    /// them in this order promotes no backup).
    fn running_attempts(&self) -> Vec<(TaskId, AttemptEpoch, WorkerId)> {
        let running = self.tasks.iter().filter_map(|(id, t)| match t.state {
            TaskState::Running { epoch, worker, .. } => Some((*id, epoch, worker)),
            _ => None,
        });
        let backups = self
            .tasks
            .iter()
            .filter_map(|(id, t)| t.backup.as_ref().map(|b| (*id, b.epoch, b.worker)));
        backups.chain(running).collect()
    }

    fn is_active(&self) -> bool {
        matches!(self.phase, Phase::Mapping | Phase::Reducing)
    }

    /// I4: move to reducing when every map task is committed, and finish
    /// when every reduce task is.
    fn advance_phase(&mut self) {
        let maps = self.plan.splits.len();
        let reduces = self.plan.reducers as usize;
        debug_assert_eq!(
            maps + reduces,
            self.tasks.len(),
            "one task per split and reducer"
        );
        if self.phase == Phase::Mapping && self.tally.committed_maps == maps {
            self.phase = Phase::Reducing;
            debug_assert!(self.pending.is_empty());
            let waiting: Vec<TaskId> = self
                .tasks
                .iter()
                .filter(|(id, t)| matches!(id, TaskId::Reduce(_)) && t.state == TaskState::Pending)
                .map(|(id, _)| *id)
                .collect();
            self.pending.extend(waiting);
            self.recount_backoffs();
        }
        if self.phase == Phase::Reducing && self.tally.committed_reduces == reduces {
            self.phase = Phase::Completed;
            self.actions
                .push_back(Action::Finished(JobOutcome::Completed));
        }
    }

    /// Hand pending tasks to workers with free slots, least-loaded first;
    /// then backups to stragglers in the slots left (speculation).
    fn schedule(&mut self, now: Instant) {
        self.schedule_pending(now);
        self.speculate(now);
        self.last_scheduled = Some(now);
    }

    fn schedule_pending(&mut self, now: Instant) {
        if !self.is_active() {
            return;
        }
        // A backoff that has passed is over: `poll_timeout` reports only
        // backoffs still to come.
        if self.backoffs > 0 {
            self.backoffs = 0;
            for id in &self.pending {
                let t = self.tasks.get_mut(id).expect("known task");
                if t.not_before.is_some_and(|at| at <= now) {
                    t.not_before = None;
                }
                self.backoffs += usize::from(t.not_before.is_some());
            }
        }
        while !self.pending.is_empty() {
            let Some(worker) = self
                .workers
                .iter()
                .filter(|(_, w)| w.running < w.slots && !w.suspect)
                .min_by_key(|(id, w)| (w.running * 1000 / w.slots.max(1), **id))
                .map(|(id, _)| *id)
            else {
                return;
            };
            // A retry waits out its backoff, and prefers a worker other
            // than the one it last failed on: another task for this worker,
            // else another free worker for the task, else this worker.
            let ready = |t: &TaskId| self.tasks[t].not_before.is_none_or(|at| at <= now);
            let elsewhere = |t: &TaskId| self.tasks[t].failed_on != Some(worker);
            let Some(position) = self
                .pending
                .iter()
                .position(|t| ready(t) && elsewhere(t))
                .or_else(|| self.pending.iter().position(ready))
            else {
                return;
            };
            let task = self.pending.remove(position).expect("not empty");
            let failed_on = self.tasks[&task].failed_on;
            let other = self
                .workers
                .iter()
                .filter(|(id, w)| w.running < w.slots && !w.suspect && Some(**id) != failed_on)
                .min_by_key(|(id, w)| (w.running * 1000 / w.slots.max(1), **id))
                .map(|(id, _)| *id);
            let worker = match other {
                Some(other) if failed_on == Some(worker) => other,
                _ => worker,
            };
            self.assign(now, task, worker);
        }
    }

    fn assign(&mut self, now: Instant, task: TaskId, worker: WorkerId) {
        let t = self.tasks.get_mut(&task).expect("known task");
        debug_assert_eq!(
            t.state,
            TaskState::Pending,
            "only pending tasks are assigned"
        );
        let epoch = AttemptEpoch(t.epoch.0.checked_add(1).expect("I1: epochs never wrap"));
        t.epoch = epoch;
        let running = TaskState::Running {
            epoch,
            worker,
            lease_until: now + self.config.lease,
            since: now,
        };
        self.tally.set(task, &mut t.state, running);
        self.dispatch(now, task, epoch, worker, false);
    }

    /// Speculation: give the running attempts due a backup one on another
    /// worker with a free slot of this job's share; count those that find
    /// none (they add to the job's demand).
    fn speculate(&mut self, now: Instant) {
        self.backups_wanted = 0;
        if !self.is_active() {
            return;
        }
        let due: Vec<(TaskId, WorkerId)> = self
            .speculation_due()
            .into_iter()
            .filter(|(_, _, at)| *at <= now)
            .map(|(task, worker, _)| (task, worker))
            .collect();
        for (task, running_on) in due {
            let t = &self.tasks[&task];
            // Least loaded, and not a worker an attempt of the task failed on
            // if another will do.
            let worker = self
                .workers
                .iter()
                .filter(|(id, w)| w.running < w.slots && !w.suspect && **id != running_on)
                .min_by_key(|(id, w)| {
                    (
                        t.failed_workers.contains(*id),
                        w.running * 1000 / w.slots.max(1),
                        **id,
                    )
                })
                .map(|(id, _)| *id);
            match worker {
                Some(worker) => self.start_backup(now, task, worker),
                None => self.backups_wanted += 1,
            }
        }
    }

    /// The running attempts that get a backup, with their worker and the
    /// time they are due one: of the current phase, without a backup so
    /// far, once the phase has committed its quantile ([`Speculation`]).
    fn speculation_due(&self) -> Vec<(TaskId, WorkerId, Instant)> {
        let Some(rule) = &self.config.speculation else {
            return Vec::new();
        };
        let (tasks, committed, index) = match self.phase {
            Phase::Mapping => (self.plan.splits.len(), self.tally.committed_maps, 0),
            Phase::Reducing => (self.plan.reducers as usize, self.tally.committed_reduces, 1),
            _ => return Vec::new(),
        };
        let durations = &self.committed_ms[index];
        let quantile_reached =
            committed as u64 * 1000 >= u64::from(rule.quantile_permille) * tasks as u64;
        if durations.is_empty() || !quantile_reached {
            return Vec::new();
        }
        let median_ms = durations[durations.len() / 2];
        let threshold = Duration::from_millis(
            median_ms.saturating_mul(u64::from(rule.multiplier_permille)) / 1000,
        )
        .max(rule.min_runtime);
        self.tally
            .running
            .iter()
            .filter(|id| phase_index(**id) == index)
            .filter_map(|id| {
                let t = &self.tasks[id];
                match t.state {
                    TaskState::Running { worker, since, .. } if !t.speculated => {
                        Some((*id, worker, since + threshold))
                    }
                    _ => None,
                }
            })
            .collect()
    }

    /// Start a backup attempt of a running task on `worker` (speculation):
    /// a new epoch, a slot of its own; the task's running attempt goes on.
    fn start_backup(&mut self, now: Instant, task: TaskId, worker: WorkerId) {
        let t = self.tasks.get_mut(&task).expect("known task");
        let TaskState::Running {
            worker: running_on, ..
        } = t.state
        else {
            unreachable!("only a running task gets a backup");
        };
        debug_assert!(t.backup.is_none() && !t.speculated, "one backup per task");
        debug_assert_ne!(
            running_on, worker,
            "a backup never runs beside its original"
        );
        let epoch = AttemptEpoch(t.epoch.0.checked_add(1).expect("I1: epochs never wrap"));
        t.epoch = epoch;
        t.speculated = true;
        t.backup = Some(Backup {
            epoch,
            worker,
            lease_until: now + self.config.lease,
            since: now,
        });
        tracing::debug!(job = %self.plan.job, %task, %epoch, %worker, straggler_on = %running_on, "speculation: backup attempt");
        self.dispatch(now, task, epoch, worker, true);
    }

    /// Take a slot on `worker` for attempt `epoch` of `task`, log it and
    /// send it there.
    fn dispatch(
        &mut self,
        now: Instant,
        task: TaskId,
        epoch: AttemptEpoch,
        worker: WorkerId,
        speculative: bool,
    ) {
        // I1, against the attempt log (this incarnation's attempts and the
        // restored ones): no attempt of the task ever had this epoch or a
        // higher one.
        debug_assert!(
            self.log_index
                .range((task, epoch)..=(task, AttemptEpoch(u32::MAX)))
                .next()
                .is_none(),
            "I1: {task} {epoch} is not above every epoch it had"
        );
        let input = match task {
            TaskId::Map(i) => TaskInput::Map(self.plan.splits[i as usize].clone()),
            TaskId::Reduce(partition) => TaskInput::Reduce {
                partition,
                map_outputs: self.committed_maps(),
            },
        };
        let slots = self.workers.get_mut(&worker).expect("known worker");
        slots.running += 1;
        debug_assert!(slots.running <= slots.slots, "I5: slots respected");
        let module = match task {
            TaskId::Map(_) => self.plan.map_module.clone(),
            TaskId::Reduce(_) => self.plan.reduce_module.clone(),
        };
        let mut params = self.plan.params.clone();
        params.insert("wmr.attempt".into(), epoch.0.to_string());
        params.insert("wmr.task".into(), task.to_string());
        tracing::debug!(job = %self.plan.job, %task, %epoch, %worker, "assigned");
        self.log_index.insert((task, epoch), self.log.len());
        self.changed.insert(self.log.len());
        self.log.push(AttemptRecord {
            task,
            epoch,
            worker,
            started_ms: self.millis(now),
            ended_ms: None,
            outcome: AttemptOutcome::Running,
            stats: None,
            speculative,
        });
        self.actions.push_back(Action::Assign {
            worker,
            assignment: Box::new(Assignment {
                tenant: self.plan.tenant.clone(),
                job: self.plan.job,
                task,
                epoch,
                module,
                input,
                reducers: self.plan.reducers,
                limits: self.plan.limits.clone(),
                params,
                output: self.plan.output.clone(),
                output_format: self.plan.output_format,
                shuffle_settings: self.plan.shuffle_settings.clone(),
                work_root: self.plan.work_root.clone(),
                shuffle: self.plan.shuffle.clone(),
                peers: BTreeMap::new(),
                capability: Default::default(),
            }),
        });
    }

    fn committed_maps(&self) -> Vec<(TaskId, AttemptEpoch, WorkerId)> {
        self.tasks
            .iter()
            .filter_map(|(id, t)| match (id, &t.state) {
                (TaskId::Map(_), TaskState::Committed { epoch, worker }) => {
                    Some((*id, *epoch, *worker))
                }
                _ => None,
            })
            .collect()
    }

    fn release_slot(&mut self, worker: WorkerId) {
        if let Some(w) = self.workers.get_mut(&worker) {
            debug_assert!(w.running > 0);
            w.running = w.running.saturating_sub(1);
        }
    }

    fn record_end(
        &mut self,
        now: Instant,
        task: TaskId,
        epoch: AttemptEpoch,
        outcome: AttemptOutcome,
        stats: Option<AttemptStats>,
    ) {
        let ended = self.millis(now);
        if let Some(&i) = self.log_index.get(&(task, epoch)) {
            let record = &mut self.log[i];
            // A committed attempt's record says so for good (or that its
            // output was lost later); a duplicate report changes nothing.
            if matches!(
                record.outcome,
                AttemptOutcome::Committed | AttemptOutcome::OutputLost
            ) && outcome != AttemptOutcome::Committed
            {
                return;
            }
            self.changed.insert(i);
            // A stale attempt that reports after being marked lost keeps the
            // later, more precise outcome; one that lost a speculation race
            // stays `Superseded` (why it was rejected), ending when it stopped.
            record.ended_ms = Some(ended);
            if !(record.outcome == AttemptOutcome::Superseded
                && outcome == AttemptOutcome::RejectedStale)
            {
                record.outcome = outcome;
            }
            if stats.is_some() {
                record.stats = stats;
            }
        }
    }

    fn millis(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.started).as_millis() as u64
    }
}

impl Task {
    fn new() -> Self {
        Task {
            state: TaskState::Pending,
            epoch: AttemptEpoch(0),
            failures: 0,
            last_failure: None,
            failed_on: None,
            failed_workers: std::collections::BTreeSet::new(),
            not_before: None,
            backup: None,
            speculated: false,
        }
    }
}

/// Where a task's committed durations are kept: maps 0, reduces 1.
fn phase_index(task: TaskId) -> usize {
    match task {
        TaskId::Map(_) => 0,
        TaskId::Reduce(_) => 1,
    }
}

/// `base · 2^(failures-1)`, capped.
fn backoff(base: Duration, failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    (base * 2u32.pow(doublings)).min(RETRY_BACKOFF_MAX)
}

/// `w1, w2`.
fn list(workers: &std::collections::BTreeSet<WorkerId>) -> String {
    let names: Vec<String> = workers.iter().map(|w| w.to_string()).collect();
    names.join(", ")
}

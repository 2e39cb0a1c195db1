//! Deterministic simulation of the scheduler, in the style of FoundationDB's
//! simulator and TigerBeetle's VOPR.
//!
//! Each seed builds a random job and a random cluster, then drives the sans-IO
//! [`Scheduler`] through a random schedule of faults: attempts that trap,
//! reports that arrive late, twice or out of order, workers that vanish (their
//! attempts keep running as zombies and may still report), leases that
//! expire, commits that fail. Every action the scheduler emits is checked
//! against the invariants I1..I5 documented in `wmr_core::scheduler`. Then the
//! faults stop and the job must finish within a bounded number of rounds.
//!
//! Every property is checked in both shuffle modes. With the worker-local
//! shuffle (`JobPlan::map_outputs_on_workers`, I8 in ARCHITECTURE.md) the
//! worker commits its own map outputs and keeps them: a lost worker takes
//! its committed map outputs with it (and may never answer a commit it was
//! asked for), and reduce attempts fail with `FetchFailed`, naming the epoch
//! of a map task the simulation knows is committed, or a stale one. The
//! model then says which map tasks the scheduler must run again, and I2/I4
//! are checked per output loss.
//!
//! Nothing here reads the real clock after start-up (time is `base + sim_ms`),
//! sleeps or spawns threads, so a seed replays exactly:
//!
//! ```text
//! WMR_SIM_SEED=123 cargo test --release --test simulation      # one seed
//! WMR_SIM_SEEDS=100000 cargo test --release --test simulation  # more seeds
//! ```

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use wmr_core::model::{
    AttemptEpoch, AttemptFailure, AttemptReport, AttemptStats, InputSplit, JobId, Limits,
    ModuleHash, Shuffle, TaskId, TaskInput, TenantId, WorkerId,
};
use wmr_core::scheduler::{
    Action, AttemptOutcome, Event, JobOutcome, JobPlan, Phase, Scheduler, SchedulerConfig,
};

/// Seeds per test (four tests: two profiles, two shuffle modes) unless
/// `WMR_SIM_SEEDS` says otherwise.
const DEFAULT_SEEDS: u64 = 15_000;
/// Random fault steps per seed.
const FAULT_STEPS: usize = 2_000;
const LEASE_MS: u64 = 5_000;
const RETRY_BACKOFF_MS: u64 = 100;
/// Never more workers alive at once than this.
const MAX_ALIVE: usize = 8;

/// Fails the current seed, naming it so that it can be replayed.
macro_rules! check {
    ($sim:expr, $cond:expr, $($fmt:tt)+) => {
        if !$cond {
            panic!(
                "seed {} ({}): {} (replay: WMR_SIM_SEED={} cargo test --release --test simulation)",
                $sim.seed,
                $sim.profile.name,
                format_args!($($fmt)+),
                $sim.seed,
            )
        }
    };
}

/// How hostile a run is, and which shuffle the job uses.
#[derive(Clone, Copy, Debug)]
struct Profile {
    name: &'static str,
    max_attempts: u32,
    /// Probability that a finishing attempt traps instead of succeeding.
    trap: f64,
    /// Probability that carrying out a commit fails.
    commit_err: f64,
    /// Whether the fault phase may cancel the job.
    cancel: bool,
    /// Whether the job must end `Completed` (true when failures cannot
    /// exhaust `max_attempts`).
    must_complete: bool,
    /// `JobPlan::map_outputs_on_workers`: map outputs live on the worker
    /// that produced them, which also carries out their commits.
    map_outputs_on_workers: bool,
    /// Probability that a finishing reduce attempt fails with `FetchFailed`
    /// (worker-local shuffle only).
    fetch_fail: f64,
}

/// With this many attempts per task no fault phase can fail the job, so
/// only convergence is tested.
const FORGIVING: Profile = Profile {
    name: "forgiving",
    max_attempts: 1_000,
    trap: 0.2,
    commit_err: 0.1,
    cancel: false,
    must_complete: true,
    map_outputs_on_workers: false,
    fetch_fail: 0.0,
};

/// Few attempts, many failures: jobs often fail, some get cancelled.
const HARSH: Profile = Profile {
    name: "harsh",
    max_attempts: 2,
    trap: 0.3,
    commit_err: 0.2,
    cancel: true,
    must_complete: false,
    map_outputs_on_workers: false,
    fetch_fail: 0.0,
};

/// FORGIVING with the worker-local shuffle: lost workers lose map outputs,
/// reducers fail to fetch them.
const LOCAL_FORGIVING: Profile = Profile {
    name: "worker-local forgiving",
    map_outputs_on_workers: true,
    fetch_fail: 0.5,
    ..FORGIVING
};

/// HARSH with the worker-local shuffle: with 2 attempts per task, a reduce
/// whose `FetchFailed` counted as a failure would fail the job. Fewer traps
/// than HARSH, so that more jobs get as far as reducing.
const LOCAL_HARSH: Profile = Profile {
    name: "worker-local harsh",
    trap: 0.15,
    commit_err: 0.1,
    map_outputs_on_workers: true,
    fetch_fail: 0.6,
    ..HARSH
};

/// What a reduce assignment names: each map task's committed epoch and holder.
type MapOutputs = Vec<(TaskId, AttemptEpoch, WorkerId)>;

struct Sim {
    seed: u64,
    rng: StdRng,
    profile: Profile,
    base: Instant,
    sim_ms: u64,
    sched: Scheduler,
    plan: JobPlan,

    // ---- the simulated world ----
    /// Workers the scheduler was told are alive, with their slots.
    alive: BTreeMap<WorkerId, u32>,
    /// Workers reported lost; they never come back under the same id.
    lost: Vec<WorkerId>,
    next_worker: u32,
    /// Attempts executing on some worker, alive or lost: they run until the
    /// simulation finishes them, whatever the scheduler thinks of them.
    executing: Vec<(TaskId, AttemptEpoch, WorkerId)>,
    /// Reports sent but not delivered yet; delivered in random order.
    network: Vec<AttemptReport>,
    /// Commit actions the driver has not carried out yet. With the
    /// worker-local shuffle this includes map commits of lost workers, which
    /// may still answer (late) or never.
    commits: Vec<(TaskId, AttemptEpoch, WorkerId)>,

    // ---- the model: what the scheduler has said so far ----
    tasks: BTreeSet<TaskId>,
    /// The newest Assign of each task (I1, I2).
    latest: BTreeMap<TaskId, (AttemptEpoch, WorkerId)>,
    /// Attempts the scheduler still considers running, by worker (I5).
    running: BTreeMap<(TaskId, AttemptEpoch), WorkerId>,
    /// Every Assign: who ran each attempt.
    assigned: BTreeMap<(TaskId, AttemptEpoch), WorkerId>,
    /// The map outputs each reduce attempt was assigned.
    reduce_inputs: BTreeMap<(TaskId, AttemptEpoch), MapOutputs>,
    /// Commit issued, CommitFinished not fed back yet (and not reverted by
    /// the loss of the worker carrying it out).
    committing: BTreeMap<TaskId, (AttemptEpoch, WorkerId)>,
    /// CommitFinished Ok fed back, and the output not lost since.
    committed: BTreeMap<TaskId, (AttemptEpoch, WorkerId)>,
    /// How many entries of `committed` are map tasks.
    maps_committed: usize,
    commit_ok: BTreeMap<TaskId, u32>,
    /// Committed map outputs lost since (worker-local shuffle): the
    /// scheduler must run those map tasks again.
    outputs_lost: BTreeMap<TaskId, u32>,
    /// The committed attempts whose output was lost (their log line must
    /// say `OutputLost`).
    lost_attempts: BTreeSet<(TaskId, AttemptEpoch)>,
    /// Failures counted against each task's `max_attempts`.
    failures: BTreeMap<TaskId, u32>,
    /// The map outputs named by the latest Reduce assignment, and the map
    /// tasks whose output was lost after it.
    last_reduce_inputs: Option<BTreeMap<TaskId, (AttemptEpoch, WorkerId)>>,
    lost_since_last_reduce: BTreeSet<TaskId>,
    assigns: usize,
    outcome: Option<JobOutcome>,
    finished: u32,
}

impl Sim {
    fn new(seed: u64, profile: Profile) -> Sim {
        let mut rng = StdRng::seed_from_u64(seed);
        let splits = rng.random_range(0..40u32);
        let reducers = rng.random_range(1..=8u32);
        let plan = JobPlan {
            tenant: TenantId::local(),
            job: JobId::new(),
            map_module: ModuleHash("m".into()),
            reduce_module: ModuleHash("r".into()),
            // Never read: the scheduler only hands them out.
            splits: (0..splits)
                .map(|i| InputSplit {
                    path: PathBuf::from(format!("in/{i}.txt")),
                    offset: u64::from(i) * 4096,
                    len: 4096,
                })
                .collect(),
            reducers,
            limits: Limits::default(),
            params: BTreeMap::new(),
            output: PathBuf::from("out"),
            output_format: Default::default(),
            shuffle_settings: Default::default(),
            work_root: PathBuf::from("work"),
            shuffle: if profile.map_outputs_on_workers {
                Shuffle::WorkerLocal
            } else {
                Shuffle::SharedStore
            },
        };
        let config = SchedulerConfig {
            max_attempts: profile.max_attempts,
            lease: Duration::from_millis(LEASE_MS),
            // Retries wait for simulated time like everything else.
            retry_backoff: Duration::from_millis(RETRY_BACKOFF_MS),
            // Speculation is simulated with the whole coordinator
            // (`tests/cluster_simulation.rs`).
            speculation: None,
        };
        // The only read of the real clock: everything after is `base + sim_ms`.
        let base = Instant::now();
        let tasks = (0..splits)
            .map(TaskId::Map)
            .chain((0..reducers).map(TaskId::Reduce))
            .collect();
        let mut sim = Sim {
            seed,
            rng,
            profile,
            base,
            sim_ms: 0,
            sched: Scheduler::new(plan.clone(), config, base),
            plan,
            alive: BTreeMap::new(),
            lost: Vec::new(),
            next_worker: 0,
            executing: Vec::new(),
            network: Vec::new(),
            commits: Vec::new(),
            tasks,
            latest: BTreeMap::new(),
            running: BTreeMap::new(),
            assigned: BTreeMap::new(),
            reduce_inputs: BTreeMap::new(),
            committing: BTreeMap::new(),
            committed: BTreeMap::new(),
            maps_committed: 0,
            commit_ok: BTreeMap::new(),
            outputs_lost: BTreeMap::new(),
            lost_attempts: BTreeSet::new(),
            failures: BTreeMap::new(),
            last_reduce_inputs: None,
            lost_since_last_reduce: BTreeSet::new(),
            assigns: 0,
            outcome: None,
            finished: 0,
        };
        sim.drain(None);
        for _ in 0..sim.rng.random_range(2..=6) {
            sim.add_worker();
        }
        sim
    }

    fn now(&self) -> Instant {
        self.base + Duration::from_millis(self.sim_ms)
    }

    /// Runs one seed to the end: faults, then convergence, then the late
    /// stragglers of a finished job.
    fn run(seed: u64, profile: Profile) {
        let mut sim = Sim::new(seed, profile);
        // Faults stop at a random point, often early, so that convergence
        // is tested from every stage of the job. They go on after the job
        // finished: late reports, failing commits and lost workers must not
        // revive it.
        let shift = sim.rng.random_range(0..8);
        let fault_steps = sim.rng.random_range(0..=FAULT_STEPS >> shift);
        for _ in 0..fault_steps {
            sim.step_fault();
        }
        // Each fault-free round commits at least one outstanding task.
        let budget = sim.tasks.len() + 5;
        let mut rounds = 0;
        while sim.outcome.is_none() {
            check!(
                sim,
                rounds < budget,
                "liveness: no Finished after {rounds} fault-free rounds; progress {:?}, phase {:?}",
                sim.sched.progress(),
                sim.sched.phase()
            );
            sim.step_clean();
            rounds += 1;
        }
        sim.flush();
        sim.check_final();
    }

    // ---- steps ----

    /// One random step of the fault phase.
    fn step_fault(&mut self) {
        match self.rng.random_range(0..100) {
            0..25 => self.finish_some_attempt(),
            25..50 => self.deliver_some_report(),
            50..64 => self.carry_out_some_commit(),
            64..76 => self.heartbeat_some_worker(),
            76..90 => self.advance_clock(),
            90..94 => self.lose_some_worker(),
            94..98 => {
                if self.alive.len() < MAX_ALIVE {
                    self.add_worker();
                }
            }
            _ => {
                if self.profile.cancel && self.rng.random_bool(0.05) {
                    self.handle(Event::Cancel);
                }
            }
        }
    }

    /// One fault-free round: every worker heartbeats, every attempt
    /// (zombies included) succeeds and is delivered, every commit succeeds.
    fn step_clean(&mut self) {
        if self.alive.is_empty() {
            self.add_worker();
        }
        let workers: Vec<WorkerId> = self.alive.keys().copied().collect();
        for worker in workers {
            self.handle(Event::Heartbeat { worker });
        }
        for (task, epoch, worker) in std::mem::take(&mut self.executing) {
            self.send_report(task, epoch, worker, Ok(AttemptStats::default()));
        }
        while !self.network.is_empty() {
            let i = self.rng.random_range(0..self.network.len());
            let report = self.network.swap_remove(i);
            self.deliver(report);
        }
        while !self.commits.is_empty() {
            let i = self.rng.random_range(0..self.commits.len());
            self.finish_commit(i, true);
        }
        // A driver with nothing in flight sleeps until the scheduler's timer
        // (a retry backoff, or a lease).
        let timer = self
            .sched
            .poll_timeout()
            .map(|t| t.saturating_duration_since(self.base).as_millis() as u64);
        self.sim_ms = match timer {
            Some(t) if self.executing.is_empty() && t > self.sim_ms => t,
            _ => self.sim_ms + 100,
        };
        self.timeout_if_due(false);
    }

    /// After Finished: deliver every straggler and carry out every pending
    /// commit (with the profile's failures). The job must stay finished.
    fn flush(&mut self) {
        while !(self.executing.is_empty() && self.network.is_empty() && self.commits.is_empty()) {
            for (task, epoch, worker) in std::mem::take(&mut self.executing) {
                let outcome = self.random_outcome(task, epoch);
                self.send_report(task, epoch, worker, outcome);
            }
            while !self.network.is_empty() {
                let i = self.rng.random_range(0..self.network.len());
                let report = self.network.swap_remove(i);
                self.deliver(report);
            }
            while !self.commits.is_empty() {
                let i = self.rng.random_range(0..self.commits.len());
                let ok = !self.rng.random_bool(self.profile.commit_err);
                self.finish_commit(i, ok);
            }
        }
        self.sim_ms += 2 * LEASE_MS;
        self.timeout_if_due(true);
    }

    // ---- world events ----

    fn random_outcome(
        &mut self,
        task: TaskId,
        epoch: AttemptEpoch,
    ) -> Result<AttemptStats, AttemptFailure> {
        if self.rng.random_bool(self.profile.trap) {
            Err(AttemptFailure::Trap("simulated trap".into()))
        } else if self.profile.map_outputs_on_workers
            && matches!(task, TaskId::Reduce(_))
            && !self.plan.splits.is_empty()
            && self.rng.random_bool(self.profile.fetch_fail)
        {
            Err(self.fetch_failure(task, epoch))
        } else {
            Ok(AttemptStats::default())
        }
    }

    /// A reduce attempt could not fetch one map task's output. It names the
    /// epoch the simulation knows is committed, or the one its assignment
    /// named (stale if that output was lost since), or any older epoch.
    fn fetch_failure(&mut self, task: TaskId, epoch: AttemptEpoch) -> AttemptFailure {
        let map_task = TaskId::Map(self.rng.random_range(0..self.plan.splits.len() as u32));
        let named = self.reduce_inputs[&(task, epoch)]
            .iter()
            .find(|(t, _, _)| *t == map_task)
            .map(|&(_, e, w)| (e, w))
            .expect("I4 checked: a reduce assignment names every map task");
        let (map_epoch, worker) = match self.rng.random_range(0..10) {
            0..6 => self.committed.get(&map_task).copied().unwrap_or(named),
            6..8 => named,
            _ => {
                let newest = self.latest[&map_task].0;
                let e = AttemptEpoch(self.rng.random_range(1..=newest.0));
                (
                    e,
                    self.assigned
                        .get(&(map_task, e))
                        .copied()
                        .unwrap_or(named.1),
                )
            }
        };
        AttemptFailure::FetchFailed {
            map_task,
            map_epoch,
            worker,
            reason: "simulated fetch failure".into(),
        }
    }

    /// A worker (alive or zombie) finishes an attempt and sends its report.
    fn finish_some_attempt(&mut self) {
        if self.executing.is_empty() {
            return;
        }
        let i = self.rng.random_range(0..self.executing.len());
        let (task, epoch, worker) = self.executing.swap_remove(i);
        let outcome = self.random_outcome(task, epoch);
        self.send_report(task, epoch, worker, outcome);
    }

    fn send_report(
        &mut self,
        task: TaskId,
        epoch: AttemptEpoch,
        worker: WorkerId,
        outcome: Result<AttemptStats, AttemptFailure>,
    ) {
        self.network.push(AttemptReport {
            job: self.plan.job,
            task,
            epoch,
            worker,
            outcome,
            log: String::new(),
        });
    }

    /// Delivers a random in-flight report: picking at random reorders and
    /// delays them; sometimes a copy stays behind to arrive again later.
    fn deliver_some_report(&mut self) {
        if self.network.is_empty() {
            return;
        }
        let i = self.rng.random_range(0..self.network.len());
        let report = if self.rng.random_bool(0.1) {
            self.network[i].clone()
        } else {
            self.network.swap_remove(i)
        };
        self.deliver(report);
    }

    fn carry_out_some_commit(&mut self) {
        if self.commits.is_empty() {
            return;
        }
        let i = self.rng.random_range(0..self.commits.len());
        let ok = !self.rng.random_bool(self.profile.commit_err);
        self.finish_commit(i, ok);
    }

    /// Mostly alive workers; sometimes a lost one whose process lingers.
    fn heartbeat_some_worker(&mut self) {
        let worker = if !self.lost.is_empty() && self.rng.random_bool(0.1) {
            self.lost[self.rng.random_range(0..self.lost.len())]
        } else if !self.alive.is_empty() {
            let i = self.rng.random_range(0..self.alive.len());
            *self.alive.keys().nth(i).expect("in range")
        } else {
            return;
        };
        self.handle(Event::Heartbeat { worker });
    }

    /// Mostly small ticks; sometimes a jump past the lease so that attempts
    /// of workers that did not heartbeat expire.
    fn advance_clock(&mut self) {
        self.sim_ms += if self.rng.random_bool(0.1) {
            self.rng.random_range(LEASE_MS..=2 * LEASE_MS)
        } else {
            self.rng.random_range(1..=500)
        };
        // A driver may also wake up early: that must be harmless.
        let spurious = self.rng.random_bool(0.05);
        self.timeout_if_due(spurious);
    }

    fn timeout_if_due(&mut self, anyway: bool) {
        let now = self.now();
        let due = self.sched.poll_timeout().is_some_and(|t| t <= now);
        if !(due || anyway) {
            return;
        }
        self.sched.handle_timeout(now);
        self.drain(None);
        self.check_phase();
        let next = self.sched.poll_timeout();
        check!(
            self,
            next.is_none_or(|t| t > now),
            "lease: after handle_timeout(now) poll_timeout is still due ({:?} ms)",
            next.map(|t| t.duration_since(self.base).as_millis())
        );
    }

    fn lose_some_worker(&mut self) {
        if self.alive.is_empty() {
            return;
        }
        let local = self.profile.map_outputs_on_workers;
        // With the worker-local shuffle, half the time a worker holding
        // committed map outputs.
        let holders: Vec<WorkerId> = if local && self.rng.random_bool(0.5) {
            let holders: BTreeSet<WorkerId> = self
                .committed
                .iter()
                .filter(|(t, (_, w))| matches!(t, TaskId::Map(_)) && self.alive.contains_key(w))
                .map(|(_, (_, w))| *w)
                .collect();
            holders.into_iter().collect()
        } else {
            Vec::new()
        };
        let worker = if holders.is_empty() {
            let i = self.rng.random_range(0..self.alive.len());
            *self.alive.keys().nth(i).expect("in range")
        } else {
            holders[self.rng.random_range(0..holders.len())]
        };
        self.alive.remove(&worker);
        self.lost.push(worker);
        // Its attempts stop counting against slots; in the world they keep
        // running as zombies and may still report.
        self.running.retain(|_, w| *w != worker);
        if local {
            // It was carrying out its map commits itself: they go back to
            // Pending, though the worker may still answer, late, or never.
            let reverted: Vec<TaskId> = self
                .committing
                .iter()
                .filter(|(t, (_, w))| matches!(t, TaskId::Map(_)) && *w == worker)
                .map(|(t, _)| *t)
                .collect();
            for task in reverted {
                self.committing.remove(&task);
            }
            let mut i = 0;
            while i < self.commits.len() {
                let (task, _, w) = self.commits[i];
                if w == worker && matches!(task, TaskId::Map(_)) && self.rng.random_bool(0.5) {
                    self.commits.swap_remove(i);
                } else {
                    i += 1;
                }
            }
            // Its committed map outputs are gone, unless the job is over.
            if self.outcome.is_none() {
                let gone: Vec<TaskId> = self
                    .committed
                    .iter()
                    .filter(|(t, (_, w))| matches!(t, TaskId::Map(_)) && *w == worker)
                    .map(|(t, _)| *t)
                    .collect();
                for task in gone {
                    self.lose_output(task);
                }
            }
        }
        self.handle(Event::WorkerLost { worker });
    }

    fn add_worker(&mut self) {
        let worker = WorkerId(self.next_worker);
        self.next_worker += 1;
        let slots = self.rng.random_range(1..=3);
        self.alive.insert(worker, slots);
        self.handle(Event::WorkerJoined { worker, slots });
    }

    // ---- feeding the scheduler ----

    /// Feeds one event and checks every action it causes.
    fn handle(&mut self, event: Event) -> Vec<Action> {
        let cause = match &event {
            Event::AttemptFinished(r) => Some((r.task, r.epoch)),
            _ => None,
        };
        self.sched.handle(self.now(), event);
        let actions = self.drain(cause);
        self.check_phase();
        actions
    }

    fn drain(&mut self, cause: Option<(TaskId, AttemptEpoch)>) -> Vec<Action> {
        // The scheduler's kept counts agree with a scan of its tasks.
        if let Err(e) = self.sched.audit() {
            panic!("scheduler tally: {e}");
        }
        let mut actions = Vec::new();
        while let Some(action) = self.sched.poll_action() {
            self.apply_action(&action, cause);
            actions.push(action);
        }
        actions
    }

    /// Delivers one report and checks I3: the current attempt's success is
    /// committed, everything else except a repeat of the committing attempt
    /// is discarded. A current attempt's failure counts against its task,
    /// except `FetchFailed`, which loses the named map output instead if
    /// that is exactly the committed epoch.
    fn deliver(&mut self, report: AttemptReport) {
        let (task, epoch, worker) = (report.task, report.epoch, report.worker);
        let current = self.running.remove(&(task, epoch)).is_some();
        let success = report.outcome.is_ok();
        let publishing = self.committing.get(&task).map(|c| c.0) == Some(epoch)
            || self.committed.get(&task).map(|c| c.0) == Some(epoch);
        let mut must_fail = false;
        if current {
            match &report.outcome {
                Ok(_) => {}
                &Err(AttemptFailure::FetchFailed {
                    map_task,
                    map_epoch,
                    ..
                }) => {
                    if self.outcome.is_none()
                        && self.committed.get(&map_task).map(|c| c.0) == Some(map_epoch)
                    {
                        self.lose_output(map_task);
                    }
                }
                Err(_) => must_fail = self.count_failure(task),
            }
        }
        let actions = self.handle(Event::AttemptFinished(report));
        self.check_failed(task, must_fail, &actions);
        let commits = actions
            .iter()
            .filter(|a| {
                **a == Action::Commit {
                    task,
                    epoch,
                    worker,
                }
            })
            .count();
        let discards = actions
            .iter()
            .filter(|a| {
                **a == Action::Discard {
                    task,
                    epoch,
                    worker,
                }
            })
            .count();
        if current && success {
            check!(
                self,
                commits == 1 && discards == 0,
                "I2: success of current attempt {task} {epoch} on {worker} gave {commits} Commit and {discards} Discard"
            );
        } else if publishing {
            check!(
                self,
                commits == 0 && discards == 0,
                "I3: repeated report of {task} {epoch}, whose output is being published, gave {commits} Commit and {discards} Discard"
            );
        } else {
            check!(
                self,
                commits == 0 && discards == 1,
                "I3: stale or failed report {task} {epoch} on {worker} (success {success}) gave {commits} Commit and {discards} Discard"
            );
        }
    }

    /// Carries out pending commit `i` and feeds back its result.
    fn finish_commit(&mut self, i: usize, ok: bool) {
        let (task, epoch, worker) = self.commits.swap_remove(i);
        let result = if ok {
            Ok(())
        } else {
            Err("simulated rename failure".into())
        };
        let event = Event::CommitFinished {
            task,
            epoch,
            result,
        };
        if self.committing.get(&task) != Some(&(epoch, worker)) {
            // A map commit of a worker lost meanwhile: the task went back to
            // Pending, and this late answer must change nothing.
            check!(
                self,
                self.profile.map_outputs_on_workers && self.lost.contains(&worker),
                "simulation: commit of {task} {epoch} on {worker} neither in flight nor lost"
            );
            let before = (self.sched.progress(), self.sched.phase());
            let actions = self.handle(event);
            let after = (self.sched.progress(), self.sched.phase());
            check!(
                self,
                actions.is_empty() && before == after,
                "late CommitFinished(ok {ok}) of {task} {epoch} from lost {worker} was not ignored: {actions:?}, (progress, phase) {before:?} -> {after:?}"
            );
            return;
        }
        self.committing.remove(&task);
        let mut must_fail = false;
        if ok {
            self.committed.insert(task, (epoch, worker));
            if matches!(task, TaskId::Map(_)) {
                self.maps_committed += 1;
            }
            let n = self.commit_ok.entry(task).or_default();
            *n += 1;
            let n = *n;
            let lost = self.outputs_lost.get(&task).copied().unwrap_or(0);
            check!(
                self,
                n == lost + 1,
                "I2: {task} committed successfully {n} times, its output lost {lost} times"
            );
        } else {
            must_fail = self.count_failure(task);
        }
        let actions = self.handle(event);
        self.check_failed(task, must_fail, &actions);
    }

    /// The committed output of map task `task` is gone (its worker was lost,
    /// or a reducer could not fetch exactly its committed epoch): the
    /// scheduler must run it again before any reduce is assigned (I8).
    fn lose_output(&mut self, task: TaskId) {
        debug_assert!(self.profile.map_outputs_on_workers && self.outcome.is_none());
        let (epoch, _) = self.committed.remove(&task).expect("committed");
        self.maps_committed -= 1;
        *self.outputs_lost.entry(task).or_default() += 1;
        self.lost_attempts.insert((task, epoch));
        self.lost_since_last_reduce.insert(task);
    }

    /// Counts a failure against `task`; returns whether the job must fail
    /// now (it is still running and the task used up its attempts).
    fn count_failure(&mut self, task: TaskId) -> bool {
        let n = self.failures.entry(task).or_default();
        *n += 1;
        self.outcome.is_none() && *n >= self.profile.max_attempts
    }

    /// The job fails exactly when a counted failure uses up a task's
    /// attempts (`FetchFailed`, lost workers and expired leases don't count).
    fn check_failed(&self, task: TaskId, must_fail: bool, actions: &[Action]) {
        let failed = actions
            .iter()
            .any(|a| matches!(a, Action::Finished(JobOutcome::Failed(_))));
        check!(
            self,
            failed == must_fail,
            "max_attempts: after {} counted failures of {task} (max {}) the job {} fail",
            self.failures.get(&task).copied().unwrap_or(0),
            self.profile.max_attempts,
            if failed { "did" } else { "did not" }
        );
    }

    /// While the job runs, it is reducing exactly when every map task is
    /// committed (with the worker-local shuffle it goes back to mapping when
    /// a committed map output is lost).
    fn check_phase(&self) {
        if self.outcome.is_some() {
            return;
        }
        let expected = if self.maps_committed == self.plan.splits.len() {
            Phase::Reducing
        } else {
            Phase::Mapping
        };
        let phase = self.sched.phase();
        check!(
            self,
            phase == expected,
            "I4: phase {phase:?} with {} of {} map tasks committed",
            self.maps_committed,
            self.plan.splits.len()
        );
    }

    // ---- checking actions ----

    fn apply_action(&mut self, action: &Action, cause: Option<(TaskId, AttemptEpoch)>) {
        match action {
            Action::Assign { worker, assignment } => self.check_assign(*worker, assignment),
            &Action::Commit {
                task,
                epoch,
                worker,
            } => {
                self.check_commit(task, epoch, worker, cause);
                self.committing.insert(task, (epoch, worker));
                self.commits.push((task, epoch, worker));
            }
            &Action::Discard { task, epoch, .. } => {
                // Deleting the files of the attempt being published would
                // lose committed output.
                check!(
                    self,
                    self.committing.get(&task).map(|c| c.0) != Some(epoch)
                        && self.committed.get(&task).map(|c| c.0) != Some(epoch),
                    "I3: Discard of {task} {epoch}, whose output is being or was published"
                );
            }
            &Action::Interrupt {
                task,
                epoch,
                worker,
            } => self.apply_interrupt(task, epoch, worker),
            Action::Finished(outcome) => self.check_finished(outcome),
        }
    }

    fn check_assign(&mut self, worker: WorkerId, a: &wmr_core::model::Assignment) {
        let task = a.task;
        check!(
            self,
            self.outcome.is_none(),
            "Assign of {task} after Finished({:?})",
            self.outcome
        );
        check!(
            self,
            self.tasks.contains(&task),
            "Assign of unknown task {task}"
        );
        check!(
            self,
            a.job == self.plan.job,
            "Assign of {task} names another job"
        );
        check!(
            self,
            !self.committed.contains_key(&task) && !self.committing.contains_key(&task),
            "I2: {task} assigned again although its output is committed or committing"
        );
        // I1: every Assign of a task has a higher epoch than all before it.
        if let Some(&(previous, _)) = self.latest.get(&task) {
            check!(
                self,
                a.epoch > previous,
                "I1: {task} assigned epoch {} after epoch {previous}",
                a.epoch
            );
        }
        check!(
            self,
            !self.running.keys().any(|(t, _)| *t == task),
            "{task} assigned while another attempt of it is running"
        );
        // I5: slots of a live worker.
        let Some(&slots) = self.alive.get(&worker) else {
            panic!(
                "seed {}: I5: {task} assigned to {worker}, which is lost or unknown",
                self.seed
            );
        };
        let busy = self.running.values().filter(|w| **w == worker).count();
        check!(
            self,
            busy < slots as usize,
            "I5: {task} assigned to {worker}, which already runs {busy} attempts in {slots} slots"
        );
        match (task, &a.input) {
            (TaskId::Map(i), TaskInput::Map(split)) => {
                check!(
                    self,
                    *split == self.plan.splits[i as usize] && a.module == self.plan.map_module,
                    "{task} assigned with the wrong split or module"
                );
            }
            (
                TaskId::Reduce(r),
                TaskInput::Reduce {
                    partition,
                    map_outputs,
                },
            ) => {
                check!(
                    self,
                    *partition == r,
                    "{task} assigned partition {partition}"
                );
                check!(
                    self,
                    a.module == self.plan.reduce_module,
                    "{task} assigned the map module"
                );
                self.check_map_outputs(task, map_outputs);
                self.reduce_inputs
                    .insert((task, a.epoch), map_outputs.clone());
                self.last_reduce_inputs =
                    Some(map_outputs.iter().map(|&(t, e, w)| (t, (e, w))).collect());
                self.lost_since_last_reduce.clear();
            }
            _ => panic!("seed {}: {task} assigned a mismatched input", self.seed),
        }
        self.latest.insert(task, (a.epoch, worker));
        self.assigned.insert((task, a.epoch), worker);
        self.running.insert((task, a.epoch), worker);
        self.executing.push((task, a.epoch, worker));
        self.assigns += 1;
    }

    /// I4: reduce starts only after every map committed (and not lost
    /// since), and reads exactly the committed attempt of each map task.
    fn check_map_outputs(&self, task: TaskId, map_outputs: &[(TaskId, AttemptEpoch, WorkerId)]) {
        let expected: BTreeMap<TaskId, (AttemptEpoch, WorkerId)> = self
            .committed
            .iter()
            .filter(|(t, _)| matches!(t, TaskId::Map(_)))
            .map(|(t, c)| (*t, *c))
            .collect();
        check!(
            self,
            expected.len() == self.plan.splits.len(),
            "I4: {task} assigned with only {} of {} map tasks committed",
            expected.len(),
            self.plan.splits.len()
        );
        let listed: BTreeMap<TaskId, (AttemptEpoch, WorkerId)> =
            map_outputs.iter().map(|&(t, e, w)| (t, (e, w))).collect();
        check!(
            self,
            listed.len() == map_outputs.len() && listed == expected,
            "I4: {task} lists map outputs {map_outputs:?}, committed are {expected:?}"
        );
    }

    /// I2: only the newest attempt's own success report leads to a Commit,
    /// and never twice for one task, unless its committed output was lost
    /// in between.
    fn check_commit(
        &self,
        task: TaskId,
        epoch: AttemptEpoch,
        worker: WorkerId,
        cause: Option<(TaskId, AttemptEpoch)>,
    ) {
        check!(
            self,
            self.outcome.is_none(),
            "Commit of {task} {epoch} after Finished({:?})",
            self.outcome
        );
        check!(
            self,
            self.latest.get(&task) == Some(&(epoch, worker)),
            "I2: Commit of {task} {epoch} on {worker}, but its latest Assign is {:?}",
            self.latest.get(&task)
        );
        check!(
            self,
            cause == Some((task, epoch)),
            "I3: Commit of {task} {epoch} not caused by that attempt's report (cause {cause:?})"
        );
        check!(
            self,
            !self.committing.contains_key(&task) && !self.committed.contains_key(&task),
            "I2: second Commit of {task} ({epoch}); committing {:?}, committed {:?}",
            self.committing.get(&task),
            self.committed.get(&task)
        );
    }

    fn apply_interrupt(&mut self, task: TaskId, epoch: AttemptEpoch, worker: WorkerId) {
        check!(
            self,
            self.running.remove(&(task, epoch)) == Some(worker),
            "I5: Interrupt of {task} {epoch} on {worker}, which was not running"
        );
        // A live worker usually honours it and reports the attempt as
        // cancelled; otherwise the attempt races on and may still report.
        if self.alive.contains_key(&worker) && self.rng.random_bool(0.5) {
            let found = self
                .executing
                .iter()
                .position(|&a| a == (task, epoch, worker));
            if let Some(i) = found {
                self.executing.swap_remove(i);
                self.send_report(task, epoch, worker, Err(AttemptFailure::Cancelled));
            }
        }
    }

    fn check_finished(&mut self, outcome: &JobOutcome) {
        self.finished += 1;
        check!(
            self,
            self.finished == 1,
            "Finished emitted {} times: first {:?}, now {outcome:?}",
            self.finished,
            self.outcome
        );
        check!(
            self,
            self.running.is_empty(),
            "Finished({outcome:?}) with attempts still running: {:?}",
            self.running
        );
        if *outcome == JobOutcome::Completed {
            self.check_all_committed_once();
        }
        self.outcome = Some(outcome.clone());
    }

    /// I2: when the job completed, every task committed exactly once, or
    /// with the worker-local shuffle once more than its output was lost
    /// (reduce outputs are never lost).
    fn check_all_committed_once(&self) {
        let done: BTreeSet<TaskId> = self.committed.keys().copied().collect();
        check!(
            self,
            done == self.tasks,
            "I2: Completed with tasks {:?} not committed",
            self.tasks.difference(&done).collect::<Vec<_>>()
        );
        let extra: Vec<_> = self
            .commit_ok
            .iter()
            .filter(|&(t, &n)| n != self.outputs_lost.get(t).copied().unwrap_or(0) + 1)
            .collect();
        check!(
            self,
            extra.is_empty(),
            "I2: tasks committed more often than their output was lost, plus once: {extra:?}, lost {:?}",
            self.outputs_lost
        );
        check!(
            self,
            self.outputs_lost
                .keys()
                .all(|t| matches!(t, TaskId::Map(_))),
            "simulation: reduce output lost {:?}",
            self.outputs_lost
        );
        // I4: the last reduce assignment named the final map outputs, except
        // those lost after it (while the last reduces ran): the scheduler
        // runs such a map task again although no reduce will read it.
        if let Some(named) = &self.last_reduce_inputs {
            let stale: Vec<_> = self
                .committed
                .range(..TaskId::Reduce(0))
                .filter(|&(t, c)| {
                    named.get(t) != Some(c) && !self.lost_since_last_reduce.contains(t)
                })
                .collect();
            check!(
                self,
                named.len() == self.plan.splits.len() && stale.is_empty(),
                "I4: Completed with map outputs {stale:?}, but the last reduce assignment named {named:?} (outputs lost after it: {:?})",
                self.lost_since_last_reduce
            );
        }
    }

    fn check_final(&self) {
        check!(
            self,
            self.finished == 1,
            "Finished emitted {} times",
            self.finished
        );
        let outcome = self.outcome.as_ref().expect("finished");
        if self.profile.must_complete {
            check!(
                self,
                *outcome == JobOutcome::Completed,
                "convergence: job ended {outcome:?} although max_attempts is {}",
                self.profile.max_attempts
            );
        }
        let phase = self.sched.phase();
        let expected_phase = match outcome {
            JobOutcome::Completed => Phase::Completed,
            JobOutcome::Failed(_) => Phase::Failed,
            JobOutcome::Cancelled => Phase::Cancelled,
        };
        check!(
            self,
            phase == expected_phase,
            "phase {phase:?} after Finished({outcome:?})"
        );
        if *outcome == JobOutcome::Completed {
            self.check_all_committed_once();
            check!(
                self,
                self.sched.progress() == (self.tasks.len(), 0, 0),
                "progress {:?} of a completed job with {} tasks",
                self.sched.progress(),
                self.tasks.len()
            );
        }
        // The attempt log has one line per Assign, and says Committed for
        // exactly the attempts whose commit succeeded.
        let log = self.sched.attempt_log();
        check!(
            self,
            log.len() == self.assigns,
            "attempt log has {} lines for {} assigns",
            log.len(),
            self.assigns
        );
        let logged: Vec<(TaskId, AttemptEpoch, WorkerId)> = log
            .iter()
            .filter(|r| r.outcome == AttemptOutcome::Committed)
            .map(|r| (r.task, r.epoch, r.worker))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let committed: Vec<(TaskId, AttemptEpoch, WorkerId)> = self
            .committed
            .iter()
            .map(|(t, &(e, w))| (*t, e, w))
            .collect();
        check!(
            self,
            logged == committed,
            "attempt log says committed {logged:?}, commits (not lost since) were {committed:?}"
        );
        // ... and `OutputLost` for exactly the committed attempts whose map
        // output was lost.
        let output_lost: BTreeSet<(TaskId, AttemptEpoch)> = log
            .iter()
            .filter(|r| r.outcome == AttemptOutcome::OutputLost)
            .map(|r| (r.task, r.epoch))
            .collect();
        check!(
            self,
            output_lost == self.lost_attempts,
            "attempt log says output lost for {output_lost:?}, lost were {:?}",
            self.lost_attempts
        );
    }
}

fn seeds() -> Vec<u64> {
    if let Ok(seed) = std::env::var("WMR_SIM_SEED") {
        return vec![seed.parse().expect("WMR_SIM_SEED is a u64")];
    }
    let n = std::env::var("WMR_SIM_SEEDS")
        .map(|n| n.parse().expect("WMR_SIM_SEEDS is a u64"))
        .unwrap_or(DEFAULT_SEEDS);
    (0..n).collect()
}

/// Runs every seed; a panic inside the scheduler itself is re-raised with
/// the seed that caused it.
fn run_seeds(profile: Profile) {
    for seed in seeds() {
        if catch_unwind(AssertUnwindSafe(|| Sim::run(seed, profile))).is_err() {
            panic!(
                "seed {seed} ({}) failed (see the panic above); replay: WMR_SIM_SEED={seed} cargo test --release --test simulation",
                profile.name
            );
        }
    }
}

/// Faults never exhaust `max_attempts` here, so once they stop the job must
/// complete, every task committed exactly once, with I1..I5 checked on every
/// action along the way.
#[test]
fn random_schedules_commit_every_task_exactly_once() {
    run_seeds(FORGIVING);
}

/// With few attempts per task jobs fail (or get cancelled): Finished comes
/// exactly once (Failed exactly when a task used up its attempts), and
/// nothing is assigned or committed after it, even as late reports and
/// in-flight commits keep arriving.
#[test]
fn failed_jobs_finish_once_and_commit_nothing_after() {
    run_seeds(HARSH);
}

/// With the worker-local shuffle, lost workers take their committed map
/// outputs with them and reducers fail to fetch: once faults stop the job
/// must still complete, each map task committed once more than its output
/// was lost, each reduce task exactly once, and no reduce assigned while a
/// map output is missing.
#[test]
fn worker_local_shuffle_reruns_lost_map_outputs_and_commits_every_reduce_once() {
    run_seeds(LOCAL_FORGIVING);
}

/// With the worker-local shuffle and few attempts per task: Finished comes
/// exactly once, and the job fails only when counted failures use up a
/// task's attempts (`FetchFailed` is not counted against the reduce).
#[test]
fn worker_local_failed_jobs_finish_once_and_fetch_failures_never_count() {
    run_seeds(LOCAL_HARSH);
}

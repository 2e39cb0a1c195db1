//! Deterministic simulation of the scheduler, in the style of FoundationDB's
//! simulator and TigerBeetle's VOPR.
//!
//! Each seed builds a random job and a random cluster, then drives the sans-IO
//! [`Scheduler`] through a random schedule of faults: attempts that trap,
//! reports that arrive late, twice or out of order, workers that vanish (their
//! attempts keep running as zombies and may still report), leases that
//! expire, commits that fail. Every action the scheduler emits is checked
//! against the invariants I1..I5 documented in `wmr::scheduler`. Then the
//! faults stop and the job must finish within a bounded number of rounds.
//!
//! Nothing here reads the real clock after start-up (time is `base + sim_ms`),
//! sleeps or spawns threads, so a seed replays exactly:
//!
//! ```text
//! WMR_SIM_SEED=123 cargo test --release --test simulation     # one seed
//! WMR_SIM_SEEDS=20000 cargo test --release --test simulation  # more seeds
//! ```

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use wmr::protocol::{
    AttemptEpoch, AttemptFailure, AttemptReport, AttemptStats, InputSplit, JobId, Limits,
    ModuleHash, TaskId, TaskInput, TenantId, WorkerId,
};
use wmr::scheduler::{
    Action, AttemptOutcome, Event, JobOutcome, JobPlan, Phase, Scheduler, SchedulerConfig,
};

/// Seeds per test unless `WMR_SIM_SEEDS` says otherwise.
const DEFAULT_SEEDS: u64 = 20_000;
/// Random fault steps per seed.
const FAULT_STEPS: usize = 2_000;
const LEASE_MS: u64 = 5_000;
/// Never more workers alive at once than this.
const MAX_ALIVE: usize = 8;

/// Fails the current seed, naming it so that it can be replayed.
macro_rules! check {
    ($sim:expr, $cond:expr, $($fmt:tt)+) => {
        if !$cond {
            panic!(
                "seed {}: {} (replay: WMR_SIM_SEED={} cargo test --release --test simulation)",
                $sim.seed,
                format_args!($($fmt)+),
                $sim.seed,
            )
        }
    };
}

/// How hostile a run is.
#[derive(Clone, Copy, Debug)]
struct Profile {
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
}

/// With this many attempts per task no fault phase can fail the job, so
/// only convergence is tested.
const FORGIVING: Profile = Profile {
    max_attempts: 1_000,
    trap: 0.2,
    commit_err: 0.1,
    cancel: false,
    must_complete: true,
};

/// Few attempts, many failures: jobs often fail, some get cancelled.
const HARSH: Profile = Profile {
    max_attempts: 2,
    trap: 0.3,
    commit_err: 0.2,
    cancel: true,
    must_complete: false,
};

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
    /// Commit actions the driver has not carried out yet.
    commits: Vec<(TaskId, AttemptEpoch)>,

    // ---- the model: what the scheduler has said so far ----
    tasks: BTreeSet<TaskId>,
    /// The newest Assign of each task (I1, I2).
    latest: BTreeMap<TaskId, (AttemptEpoch, WorkerId)>,
    /// Attempts the scheduler still considers running, by worker (I5).
    running: BTreeMap<(TaskId, AttemptEpoch), WorkerId>,
    /// Commit issued, CommitFinished not fed back yet.
    committing: BTreeMap<TaskId, (AttemptEpoch, WorkerId)>,
    /// CommitFinished Ok fed back.
    committed: BTreeMap<TaskId, (AttemptEpoch, WorkerId)>,
    commit_ok: BTreeMap<TaskId, u32>,
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
            work_root: PathBuf::from("work"),
            map_outputs_on_workers: false,
        };
        let config = SchedulerConfig {
            max_attempts: profile.max_attempts,
            lease: Duration::from_millis(LEASE_MS),
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
            committing: BTreeMap::new(),
            committed: BTreeMap::new(),
            commit_ok: BTreeMap::new(),
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
        self.sim_ms += 100;
        self.timeout_if_due(false);
    }

    /// After Finished: deliver every straggler and carry out every pending
    /// commit (with the profile's failures). The job must stay finished.
    fn flush(&mut self) {
        while !(self.executing.is_empty() && self.network.is_empty() && self.commits.is_empty()) {
            for (task, epoch, worker) in std::mem::take(&mut self.executing) {
                let outcome = self.random_outcome();
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

    fn random_outcome(&mut self) -> Result<AttemptStats, AttemptFailure> {
        if self.rng.random_bool(self.profile.trap) {
            Err(AttemptFailure::Trap("simulated trap".into()))
        } else {
            Ok(AttemptStats::default())
        }
    }

    /// A worker (alive or zombie) finishes an attempt and sends its report.
    fn finish_some_attempt(&mut self) {
        if self.executing.is_empty() {
            return;
        }
        let i = self.rng.random_range(0..self.executing.len());
        let (task, epoch, worker) = self.executing.swap_remove(i);
        let outcome = self.random_outcome();
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
        let i = self.rng.random_range(0..self.alive.len());
        let worker = *self.alive.keys().nth(i).expect("in range");
        self.alive.remove(&worker);
        self.lost.push(worker);
        // Its attempts stop counting against slots; in the world they keep
        // running as zombies and may still report.
        self.running.retain(|_, w| *w != worker);
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
        self.drain(cause)
    }

    fn drain(&mut self, cause: Option<(TaskId, AttemptEpoch)>) -> Vec<Action> {
        let mut actions = Vec::new();
        while let Some(action) = self.sched.poll_action() {
            self.apply_action(&action, cause);
            actions.push(action);
        }
        actions
    }

    /// Delivers one report and checks I3: the current attempt's success is
    /// committed, everything else except a repeat of the committing attempt
    /// is discarded.
    fn deliver(&mut self, report: AttemptReport) {
        let (task, epoch, worker) = (report.task, report.epoch, report.worker);
        let current = self.running.remove(&(task, epoch)).is_some();
        let success = report.outcome.is_ok();
        let publishing = self.committing.get(&task).map(|c| c.0) == Some(epoch)
            || self.committed.get(&task).map(|c| c.0) == Some(epoch);
        let actions = self.handle(Event::AttemptFinished(report));
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
        let (task, epoch) = self.commits.swap_remove(i);
        let (e, worker) = self.committing.remove(&task).expect("commit in flight");
        debug_assert_eq!(e, epoch);
        if ok {
            self.committed.insert(task, (epoch, worker));
            let n = self.commit_ok.entry(task).or_default();
            *n += 1;
            let n = *n;
            check!(self, n == 1, "I2: {task} committed successfully {n} times");
        }
        let result = if ok {
            Ok(())
        } else {
            Err("simulated rename failure".into())
        };
        self.handle(Event::CommitFinished {
            task,
            epoch,
            result,
        });
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
                self.commits.push((task, epoch));
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

    fn check_assign(&mut self, worker: WorkerId, a: &wmr::protocol::Assignment) {
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
            }
            _ => panic!("seed {}: {task} assigned a mismatched input", self.seed),
        }
        self.latest.insert(task, (a.epoch, worker));
        self.running.insert((task, a.epoch), worker);
        self.executing.push((task, a.epoch, worker));
        self.assigns += 1;
    }

    /// I4: reduce starts only after every map committed, and reads exactly
    /// the committed attempt of each map task.
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
    /// and never twice for one task.
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

    /// I2: when the job completed, every task committed exactly once.
    fn check_all_committed_once(&self) {
        let done: BTreeSet<TaskId> = self.committed.keys().copied().collect();
        check!(
            self,
            done == self.tasks,
            "I2: Completed with tasks {:?} not committed",
            self.tasks.difference(&done).collect::<Vec<_>>()
        );
        check!(
            self,
            self.commit_ok.values().all(|n| *n == 1),
            "I2: some task committed more than once: {:?}",
            self.commit_ok
        );
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
        let logged: BTreeMap<TaskId, (AttemptEpoch, WorkerId)> = log
            .iter()
            .filter(|r| r.outcome == AttemptOutcome::Committed)
            .map(|r| (r.task, (r.epoch, r.worker)))
            .collect();
        check!(
            self,
            logged == self.committed,
            "attempt log says committed {logged:?}, commits were {:?}",
            self.committed
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
                "seed {seed} failed (see the panic above); replay: WMR_SIM_SEED={seed} cargo test --release --test simulation"
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
/// exactly once, and nothing is assigned or committed after it, even as late
/// reports and in-flight commits keep arriving.
#[test]
fn failed_jobs_finish_once_and_commit_nothing_after() {
    run_seeds(HARSH);
}

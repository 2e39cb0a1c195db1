//! Deterministic simulation of the coordinator's state machine
//! ([`Cluster`]) and its workers' report ledgers ([`AttemptLedger`]), in
//! the style of `tests/simulation.rs` (which drives one job's scheduler).
//!
//! Each seed builds a few tenants with random terms, a few jobs submitted at
//! random times and a few fake workers, then drives the sans-IO `Cluster`
//! through a random schedule of faults: attempts that trap, commits that
//! fail, connections that break (losing every message in flight both ways),
//! reports delivered twice, workers that drain, leases that expire, jobs
//! cancelled, and coordinator crashes at a random point of the effect
//! stream, after which a new `Cluster` is rebuilt from the simulated durable
//! store with `restore`/`load_finished`, as `wmr coordinator` does. Every
//! effect is checked as it is carried out (I10 against the durable store;
//! I1–I3 against the assignments and commits seen so far), and the whole
//! state after every event (`Cluster::audit`, tenant quotas, the ledgers).
//! Then the faults stop and every job must finish within a bounded number
//! of rounds, every task committed once.
//!
//! Each fake worker is a process with an `AttemptLedger` that outlives its
//! connections; a connection is two ordered queues (the QUIC control
//! stream). Nothing reads the real clock after start-up (time is
//! `base + ms`), sleeps or spawns threads, so a seed replays exactly:
//!
//! ```text
//! WMR_SIM_SEED=123 cargo test --release -p wmr-core --test cluster_simulation   # one seed
//! WMR_SIM_SEEDS=5000 cargo test --release -p wmr-core --test cluster_simulation # more seeds
//! ```
//!
//! Even seeds use the shared store (the coordinator commits), odd seeds the
//! worker-local shuffle (map tasks are committed by the worker that ran
//! them, and their outputs do not survive that worker; after a restart
//! they wait for a re-announcement, which only the re-announcing profile's
//! workers make, and otherwise run again).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use wmr_core::attempt_ledger::{AttemptKey, AttemptLedger};
use wmr_core::cluster::{ClientId, Clock, Cluster, ClusterConfig, Effect, TenantTerms};
use wmr_core::model::{
    AttemptEpoch, AttemptFailure, AttemptReport, AttemptStats, Capability, InputSplit, JobId,
    Limits, ModuleHash, OutputDigest, Shuffle, TaskId, TaskInput, TenantId, WorkerId,
};
use wmr_core::placement::{LabelRequirement, Placement};
use wmr_core::records::{Batch, JobRecord};
use wmr_core::scheduler::{AttemptOutcome, AttemptRecord, JobOutcome, Phase};
use wmr_core::summary::PhaseChange;
use wmr_core::wire::{ClientReply, FromWorker, HeldOutput, JobRequest, ToWorker};

/// Seeds per test unless `WMR_SIM_SEEDS` says otherwise.
const DEFAULT_SEEDS: u64 = 300;
/// Random steps of the fault phase, at most.
const FAULT_STEPS: usize = 3_000;
const LEASE_MS: u64 = 2_000;
/// Worker processes alive at once, at most.
const MAX_WORKERS: usize = 6;
/// Coordinator crashes per seed, at most.
const MAX_RESTARTS: u32 = 20;
/// Wall-clock time of `base`, for the records' `unix_ms`.
const UNIX_BASE_MS: u64 = 1_700_000_000_000;

/// Fails the current seed, naming it so that it can be replayed.
macro_rules! check {
    ($sim:expr, $cond:expr, $($fmt:tt)+) => {
        if !$cond {
            panic!(
                "seed {} ({}, {}): {} (replay: WMR_SIM_SEED={} cargo test --release -p wmr-core --test cluster_simulation {})",
                $sim.seed,
                $sim.profile.name,
                if $sim.shared_store { "shared store" } else { "worker-local" },
                format_args!($($fmt)+),
                $sim.seed,
                $sim.profile.test,
            )
        }
    };
}

/// Which faults a run injects and what it must end with.
#[derive(Clone, Copy, Debug)]
struct Profile {
    name: &'static str,
    /// The test running it (for the replay command).
    test: &'static str,
    max_attempts: u32,
    /// Probability that an attempt traps instead of succeeding.
    trap: f64,
    /// Probability that carrying out a commit fails.
    commit_err: f64,
    /// Clients cancel jobs now and then.
    cancel: bool,
    /// Probability that a crash step schedules a coordinator crash (0:
    /// none).
    crash: f64,
    /// How many in 8 of the steps that may break a connection do (0: none).
    breaks: u32,
    /// Probability that a delivered report is delivered again.
    duplicate: f64,
    /// Workers drain (SIGTERM) and exit.
    drain: bool,
    /// Every job must end `Completed` (failures cannot use up its attempts).
    must_complete: bool,
    /// Workers carry labels and tenant pools, jobs require labels, tenants
    /// may be pool-only; free slots must go to jobs that can use them.
    placement: bool,
    /// Workers have durable identities and re-announce the map outputs
    /// they hold on every connection; at a coordinator restart some come
    /// back with another identity or with an output whose bytes changed.
    reannounce: bool,
    /// Jobs run with `--speculate`.
    speculate: bool,
    /// Probability that a worker is slow (its attempts take 10–40 s
    /// instead of up to 3 s): a straggler.
    slow: f64,
}

const QUOTAS: Profile = Profile {
    name: "tenants",
    test: "several_tenants_share_workers_within_their_quotas_and_every_job_finishes",
    max_attempts: 1_000,
    trap: 0.05,
    commit_err: 0.05,
    cancel: false,
    crash: 0.0,
    breaks: 2,
    duplicate: 0.05,
    drain: false,
    must_complete: true,
    placement: false,
    reannounce: false,
    speculate: false,
    slow: 0.0,
};

const HARSH: Profile = Profile {
    name: "harsh",
    test: "failed_and_cancelled_jobs_finish_once_and_commit_nothing_after",
    max_attempts: 2,
    trap: 0.2,
    commit_err: 0.1,
    cancel: true,
    crash: 0.2,
    breaks: 2,
    duplicate: 0.1,
    drain: true,
    must_complete: false,
    placement: false,
    reannounce: false,
    speculate: false,
    slow: 0.0,
};

const CRASHY: Profile = Profile {
    name: "crashy",
    test: "i10_every_effect_follows_the_persist_of_its_state",
    max_attempts: 1_000,
    trap: 0.1,
    commit_err: 0.1,
    cancel: true,
    crash: 1.0,
    breaks: 2,
    duplicate: 0.1,
    drain: true,
    must_complete: false,
    placement: false,
    reannounce: false,
    speculate: false,
    slow: 0.0,
};

const RESTARTS: Profile = Profile {
    name: "restarts",
    test: "a_coordinator_restart_at_a_random_point_loses_no_commit_and_commits_nothing_twice",
    max_attempts: 1_000,
    trap: 0.0,
    commit_err: 0.0,
    cancel: false,
    crash: 0.5,
    breaks: 0,
    duplicate: 0.0,
    drain: false,
    must_complete: true,
    placement: false,
    reannounce: false,
    speculate: false,
    slow: 0.0,
};

const LOSSY: Profile = Profile {
    name: "lossy",
    test: "lost_and_duplicated_reports_are_acked_once_and_never_lost",
    max_attempts: 1_000,
    trap: 0.05,
    commit_err: 0.0,
    cancel: false,
    crash: 0.0,
    breaks: 8,
    duplicate: 0.3,
    drain: true,
    must_complete: true,
    placement: false,
    reannounce: false,
    speculate: false,
    slow: 0.0,
};

const PLACEMENT: Profile = Profile {
    name: "placement",
    test: "labelled_placement_runs_attempts_only_where_allowed_and_wastes_no_usable_slot",
    max_attempts: 1_000,
    trap: 0.0,
    commit_err: 0.0,
    cancel: false,
    crash: 0.3,
    breaks: 2,
    duplicate: 0.05,
    drain: true,
    must_complete: true,
    placement: true,
    reannounce: false,
    speculate: false,
    slow: 0.0,
};

const REANNOUNCE: Profile = Profile {
    name: "reannounce",
    test: "restarted_coordinators_adopt_only_the_committed_map_outputs_workers_re_announce",
    max_attempts: 1_000,
    trap: 0.02,
    commit_err: 0.02,
    cancel: false,
    crash: 0.5,
    breaks: 1,
    duplicate: 0.05,
    drain: false,
    must_complete: true,
    placement: false,
    reannounce: true,
    speculate: false,
    slow: 0.0,
};

/// Map outputs named in reduce assignments that a restarted coordinator
/// adopted from a re-announcing worker (all seeds): the profile must not be
/// vacuous.
static ADOPTED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The digest a fake map attempt's output has (a function of the attempt).
fn digest_of(key: AttemptKey) -> OutputDigest {
    let (_, task, epoch) = key;
    let index = match task {
        TaskId::Map(i) | TaskId::Reduce(i) => u64::from(i),
    };
    OutputDigest {
        bytes: 1_000 + index,
        crc32c: epoch.0.wrapping_mul(2_654_435_761) ^ index as u32,
    }
}

const SPECULATION: Profile = Profile {
    name: "speculation",
    test: "stragglers_get_one_backup_elsewhere_and_each_task_commits_once",
    max_attempts: 1_000,
    trap: 0.05,
    commit_err: 0.05,
    cancel: false,
    crash: 0.2,
    breaks: 2,
    duplicate: 0.05,
    drain: true,
    must_complete: true,
    placement: false,
    reannounce: false,
    speculate: true,
    slow: 0.3,
};

/// The same slow workers without `--speculate`: no backup ever.
const SLOW_WITHOUT_SPECULATION: Profile = Profile {
    name: "slow, no speculation",
    test: "without_speculate_a_straggler_never_gets_a_backup",
    speculate: false,
    ..SPECULATION
};

/// Backup attempts started and won over every seed of the speculation
/// profile: the test checks that the seeds exercise speculation at all.
static BACKUPS_STARTED: AtomicU64 = AtomicU64::new(0);
static BACKUPS_WON: AtomicU64 = AtomicU64::new(0);

/// Label values the placement profile draws from.
const ZONES: [&str; 3] = ["a", "b", "c"];

struct Tenant {
    id: TenantId,
    terms: TenantTerms,
}

struct PlannedJob {
    record: JobRecord,
    tenant: usize,
    submit_at: u64,
    /// Submitted, and not lost in a crash before its record was durable.
    submitted: bool,
}

/// What a restarted coordinator reads back: each `Persist` applied in order,
/// newest write wins.
#[derive(Default)]
struct Durable {
    jobs: BTreeMap<JobId, JobRecord>,
    attempts: BTreeMap<(JobId, TaskId, AttemptEpoch), AttemptRecord>,
    capabilities: BTreeMap<JobId, Capability>,
    workers: BTreeMap<String, WorkerId>,
}

impl Durable {
    fn apply(&mut self, batch: Batch) {
        for (identity, id) in batch.workers {
            self.workers.insert(identity, id);
        }
        for record in batch.jobs {
            self.jobs.insert(record.id, record);
        }
        for (job, record) in batch.attempts {
            self.attempts
                .insert((job, record.task, record.epoch), record);
        }
        for (job, capability) in batch.capabilities {
            self.capabilities.insert(job, capability);
        }
    }

    fn attempts_of(&self, job: JobId) -> Vec<AttemptRecord> {
        let from = (job, TaskId::Map(0), AttemptEpoch(0));
        let to = (job, TaskId::Reduce(u32::MAX), AttemptEpoch(u32::MAX));
        self.attempts
            .range(from..=to)
            .map(|(_, r)| r.clone())
            .collect()
    }
}

/// An attempt a worker process executes.
struct Execution {
    /// The session it was assigned on: its report names that worker id.
    worker: WorkerId,
    done_at: u64,
    outcome: Result<(), AttemptFailure>,
}

/// A `wmr worker` process: its ledger outlives its connections.
struct FakeWorker {
    name: String,
    slots: u32,
    labels: BTreeMap<String, String>,
    /// The tenant whose pool token it joins with.
    pool: Option<TenantId>,
    ledger: AttemptLedger,
    /// The current connection's worker id.
    session: Option<WorkerId>,
    /// Drained and exited; never comes back.
    stopped: bool,
    /// Its attempts take much longer than the others' (a straggler).
    slow: bool,
    executing: BTreeMap<AttemptKey, Execution>,
    /// Coordinator → worker on the current connection, in order.
    inbox: VecDeque<ToWorker>,
    /// Worker → coordinator on the current connection, in order.
    outbox: VecDeque<FromWorker>,
    /// Local commits (worker-local shuffle) whose answer goes on this
    /// connection: key and when it completes.
    commits: Vec<(AttemptKey, u64)>,
    /// Every attempt it reported, and every Ack it received.
    reported: BTreeSet<AttemptKey>,
    acked: BTreeSet<AttemptKey>,
    /// Its durable identity (re-announcing profile).
    identity: String,
    /// Committed map outputs on its disk, with the digest of their bytes.
    held: BTreeMap<AttemptKey, OutputDigest>,
}

impl FakeWorker {
    fn new(name: String, slots: u32) -> Self {
        FakeWorker {
            name,
            slots,
            labels: BTreeMap::new(),
            pool: None,
            ledger: AttemptLedger::default(),
            session: None,
            stopped: false,
            slow: false,
            executing: BTreeMap::new(),
            inbox: VecDeque::new(),
            outbox: VecDeque::new(),
            commits: Vec::new(),
            reported: BTreeSet::new(),
            acked: BTreeSet::new(),
            identity: String::new(),
            held: BTreeMap::new(),
        }
    }

    /// Move what the ledger wants said onto the connection.
    fn pump(&mut self) {
        while let Some(message) = self.ledger.poll_send() {
            self.outbox.push_back(message);
        }
    }

    /// The connection is gone: whatever was in flight either way is lost.
    fn disconnect(&mut self) {
        self.ledger.disconnected();
        self.session = None;
        self.inbox.clear();
        self.outbox.clear();
        self.commits.clear();
    }

    fn busy(&self) -> bool {
        !(self.executing.is_empty()
            && self.inbox.is_empty()
            && self.outbox.is_empty()
            && self.commits.is_empty())
    }
}

struct Sim {
    seed: u64,
    profile: Profile,
    shared_store: bool,
    rng: StdRng,
    base: Instant,
    ms: u64,
    cluster: Cluster,
    incarnation: u32,
    /// Effects still to carry out before the coordinator crashes.
    crash_in: Option<u32>,

    tenants: Vec<Tenant>,
    jobs: Vec<PlannedJob>,
    job_index: BTreeMap<JobId, usize>,
    /// Jobs the current coordinator knows (restored or submitted to it).
    known: BTreeSet<JobId>,
    /// The epoch floor each restored job got.
    floors: BTreeMap<JobId, AttemptEpoch>,
    workers: Vec<FakeWorker>,
    /// Live connections of the current coordinator → worker process.
    sessions: BTreeMap<WorkerId, usize>,
    /// Every worker id the current coordinator handed out.
    issued: Vec<WorkerId>,
    /// The worker process each id names (durable identities: across
    /// restarts too).
    owners: BTreeMap<WorkerId, usize>,
    durable: Durable,
    next_client: u64,
    /// Client streams following a job (`Submit`, `Watch`) and the `Done`
    /// replies each got.
    watchers: BTreeMap<ClientId, (JobId, u32)>,

    // ---- the model: what the effects said so far ----
    /// The newest epoch assigned per task (I1).
    latest: BTreeMap<(JobId, TaskId), AttemptEpoch>,
    /// Speculation: per task, the attempt a backup was started for and the
    /// backup's epoch (either may commit, once).
    backed_up: BTreeMap<(JobId, TaskId), (AttemptEpoch, AttemptEpoch)>,
    /// The epoch of the last commit effect carried out per task (I2).
    last_commit: BTreeMap<(JobId, TaskId), AttemptEpoch>,
    /// Commits that published their files (the rename happened).
    published: BTreeMap<(JobId, TaskId), Vec<AttemptEpoch>>,
    /// Success reports delivered to the coordinator.
    reported_ok: BTreeSet<(JobId, TaskId, AttemptEpoch)>,
    /// Committed outputs the coordinator renamed into place (every reduce
    /// part; map outputs too with the shared store), until cleaned up.
    files: BTreeSet<(JobId, TaskId, AttemptEpoch)>,
    /// Attempts the coordinator told to discard (I3: never published).
    discarded: BTreeSet<(JobId, TaskId, AttemptEpoch)>,
}

fn job_id(i: usize) -> JobId {
    // Distinct leading hex digits: `JobId`'s Display shows only those.
    JobId(uuid::Uuid::from_u128(((i as u128 + 1) << 96) | 0xabc))
}

fn key_of(record: &AttemptRecord, job: JobId) -> (JobId, TaskId, AttemptEpoch) {
    (job, record.task, record.epoch)
}

impl Sim {
    fn new(seed: u64, profile: Profile) -> Sim {
        let mut rng = StdRng::seed_from_u64(seed);
        // Re-announcing is about outputs held by workers.
        let shared_store = !profile.reannounce && seed.is_multiple_of(2);
        let tenants: Vec<Tenant> = (0..rng.random_range(1..=4))
            .map(|t| Tenant {
                id: TenantId(format!("tenant-{t}")),
                terms: TenantTerms {
                    weight: rng.random_range(1..=4),
                    max_concurrent_attempts: rng.random_range(1..=16),
                    max_jobs_queued: 1_000,
                    pool_only: profile.placement && rng.random_bool(0.25),
                },
            })
            .collect();
        let mut jobs = Vec::new();
        for i in 0..rng.random_range(1..=6) {
            let tenant = rng.random_range(0..tenants.len());
            let splits = rng.random_range(1..=30u32);
            let reducers = rng.random_range(1..=5u32);
            let id = job_id(i);
            let submit_at = if i == 0 {
                0
            } else {
                rng.random_range(0..20_000)
            };
            let mut placement = Placement::default();
            if profile.placement {
                let zone = ZONES[rng.random_range(0..ZONES.len())].to_string();
                let (key, value) = ("zone".to_string(), zone);
                match rng.random_range(0..5) {
                    0 => placement
                        .require
                        .push(LabelRequirement::Equals { key, value }),
                    1 => placement
                        .require
                        .push(LabelRequirement::NotEquals { key, value }),
                    2 => placement
                        .require
                        .push(LabelRequirement::Present { key: "gpu".into() }),
                    _ => {}
                }
            }
            let record = JobRecord {
                id,
                tenant: tenants[tenant].id.clone(),
                request: JobRequest {
                    map_module: Vec::new(),
                    reduce_module: None,
                    inputs: vec![format!("/in/{i}")],
                    output: PathBuf::from(format!("/out/{i}")),
                    output_format: Default::default(),
                    shuffle_settings: Default::default(),
                    reducers,
                    split_bytes: 4096,
                    limits: Limits::default(),
                    params: BTreeMap::new(),
                    max_attempts: profile.max_attempts,
                    placement,
                    speculate: profile.speculate,
                },
                map_module: ModuleHash("map".into()),
                reduce_module: ModuleHash("reduce".into()),
                // Never read: the coordinator only hands them out.
                splits: (0..splits)
                    .map(|s| InputSplit {
                        path: PathBuf::from(format!("/in/{i}")),
                        offset: u64::from(s) * 4096,
                        len: 4096,
                    })
                    .collect(),
                transitions: vec![PhaseChange {
                    phase: Phase::Submitted,
                    unix_ms: UNIX_BASE_MS + submit_at,
                    reason: "submitted".into(),
                }],
                outcome: None,
                summary: None,
            };
            jobs.push(PlannedJob {
                record,
                tenant,
                submit_at,
                submitted: false,
            });
        }
        let job_index = jobs
            .iter()
            .enumerate()
            .map(|(i, j)| (j.record.id, i))
            .collect();
        // The only read of the real clock: everything after is `base + ms`.
        let base = Instant::now();
        let mut sim = Sim {
            seed,
            profile,
            shared_store,
            rng,
            base,
            ms: 0,
            cluster: Cluster::new(Self::config(shared_store)),
            incarnation: 0,
            crash_in: None,
            tenants,
            jobs,
            job_index,
            known: BTreeSet::new(),
            floors: BTreeMap::new(),
            workers: Vec::new(),
            sessions: BTreeMap::new(),
            issued: Vec::new(),
            owners: BTreeMap::new(),
            durable: Durable::default(),
            next_client: 0,
            watchers: BTreeMap::new(),
            latest: BTreeMap::new(),
            backed_up: BTreeMap::new(),
            last_commit: BTreeMap::new(),
            published: BTreeMap::new(),
            files: BTreeSet::new(),
            reported_ok: BTreeSet::new(),
            discarded: BTreeSet::new(),
        };
        for _ in 0..sim.rng.random_range(1..=MAX_WORKERS) {
            sim.add_worker();
        }
        sim.submit_due();
        sim
    }

    fn config(shared_store: bool) -> ClusterConfig {
        ClusterConfig {
            heartbeat: Duration::from_millis(500),
            lease: Duration::from_millis(LEASE_MS),
            shuffle: if shared_store {
                Shuffle::SharedStore
            } else {
                Shuffle::WorkerLocal
            },
            work_root: PathBuf::from("/work"),
        }
    }

    fn clock(&self) -> Clock {
        Clock {
            now: self.base + Duration::from_millis(self.ms),
            unix_ms: UNIX_BASE_MS + self.ms,
        }
    }

    fn run(seed: u64, profile: Profile) {
        let mut sim = Sim::new(seed, profile);
        // Faults stop at a random point, often early, so that convergence
        // is tested from every stage.
        let shift = sim.rng.random_range(0..4);
        let steps = sim.rng.random_range(0..=FAULT_STEPS >> shift);
        for _ in 0..steps {
            sim.step_fault();
            sim.check_state();
        }
        // Each fault-free round ends with nothing in flight; a job that gets
        // no slot in one (a low-weight tenant's) must get one in a later one.
        let tasks: usize = sim
            .jobs
            .iter()
            .map(|j| j.record.splits.len() + j.record.request.reducers as usize)
            .sum();
        let budget = tasks + 20;
        let mut rounds = 0;
        while !sim.all_finished() {
            check!(
                sim,
                rounds < budget,
                "liveness: jobs {:?} unfinished after {rounds} fault-free rounds",
                sim.cluster.unfinished_jobs()
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
        match self.rng.random_range(0..100u32) {
            0..14 => self.tick(),
            14..28 => self.finish_some_attempt(),
            28..46 => self.deliver_to_some_worker(),
            46..66 => self.deliver_from_some_worker(),
            66..76 => self.heartbeat_some_worker(),
            76..80 => self.complete_some_local_commit(),
            80..88 => {
                if self.rng.random_range(0..8) < self.profile.breaks {
                    self.break_some_connection();
                }
            }
            88..92 => self.reconnect_or_add_worker(),
            92..93 => {
                if self.profile.drain {
                    self.drain_some_worker();
                }
            }
            93..94 => {
                if self.incarnation < MAX_RESTARTS
                    && self.crash_in.is_none()
                    && self.rng.random_bool(self.profile.crash)
                {
                    // Crash before some effect still to come.
                    self.crash_in = Some(self.rng.random_range(0..30));
                }
            }
            94..98 => self.client_query(),
            _ => {
                if self.profile.cancel && self.rng.random_bool(0.1) {
                    self.cancel_some_job();
                }
            }
        }
        self.retire_drained();
    }

    /// One fault-free round: every worker connected and heartbeating, every
    /// attempt succeeds, every message is delivered until nothing is in
    /// flight; then time moves to the next timer.
    fn step_clean(&mut self) {
        self.crash_in = None;
        self.ms += 100;
        self.submit_due_anyway();
        for w in 0..self.workers.len() {
            if !self.workers[w].stopped && self.workers[w].session.is_none() {
                self.connect(w);
            }
        }
        if !self
            .workers
            .iter()
            .any(|w| w.session.is_some() && !w.ledger.is_draining())
        {
            self.add_worker();
        }
        if self.profile.placement {
            self.add_workers_for_stranded_jobs();
        }
        for w in 0..self.workers.len() {
            if self.workers[w].session.is_some() {
                self.workers[w].outbox.push_back(FromWorker::Heartbeat);
            }
        }
        self.quiesce(false);
        // A driver with nothing in flight sleeps until the machine's timer.
        let timer = self
            .cluster
            .poll_timeout()
            .map(|t| t.saturating_duration_since(self.base).as_millis() as u64);
        if let Some(t) = timer {
            self.ms = self.ms.max(t);
            self.cluster.handle_timeout(self.clock());
            self.drain();
            self.check_state();
        }
    }

    /// Deliver everything until nothing is in flight. `faults`: attempts and
    /// commits fail with the profile's probabilities.
    fn quiesce(&mut self, faults: bool) {
        for _ in 0..100_000 {
            if !self.workers.iter().any(FakeWorker::busy) {
                return;
            }
            for w in 0..self.workers.len() {
                while !self.workers[w].inbox.is_empty() {
                    self.deliver_to(w);
                }
                let keys: Vec<AttemptKey> = self.workers[w].executing.keys().copied().collect();
                for key in keys {
                    if !faults {
                        let run = self.workers[w].executing.get_mut(&key).expect("listed");
                        if run.outcome != Err(AttemptFailure::Cancelled) {
                            run.outcome = Ok(());
                        }
                    }
                    self.finish_attempt(w, key);
                }
                while !self.workers[w].commits.is_empty() {
                    self.complete_local_commit(w, 0, faults);
                }
                while !self.workers[w].outbox.is_empty() {
                    self.deliver_from(w, faults);
                    if self.profile.placement && !faults {
                        self.check_no_usable_slot_idle();
                    }
                }
                self.check_state();
            }
            self.retire_drained();
        }
        check!(self, false, "nothing settles: messages keep flowing");
    }

    /// After every job finished: late reports and commits must change
    /// nothing, and every worker ends with nothing unacknowledged.
    fn flush(&mut self) {
        self.crash_in = None;
        for w in 0..self.workers.len() {
            if !self.workers[w].stopped && self.workers[w].session.is_none() {
                self.connect(w);
            }
        }
        self.quiesce(true);
        check!(self, self.all_finished(), "a finished job came back");
    }

    // ---- the world ----

    fn tick(&mut self) {
        self.ms += if self.rng.random_bool(0.05) {
            self.rng.random_range(LEASE_MS..=2 * LEASE_MS)
        } else {
            self.rng.random_range(1..=250)
        };
        self.submit_due();
        let due = self
            .cluster
            .poll_timeout()
            .is_some_and(|t| t <= self.clock().now);
        if due || self.rng.random_bool(0.05) {
            // A driver may wake early too: that must be harmless.
            self.cluster.handle_timeout(self.clock());
            self.drain();
        }
    }

    fn submit_due(&mut self) {
        for i in 0..self.jobs.len() {
            if !self.jobs[i].submitted && self.jobs[i].submit_at <= self.ms {
                self.submit(i);
            }
        }
    }

    fn submit_due_anyway(&mut self) {
        for i in 0..self.jobs.len() {
            if !self.jobs[i].submitted {
                self.submit(i);
            }
        }
    }

    fn submit(&mut self, i: usize) {
        let tenant = &self.tenants[self.jobs[i].tenant];
        let (id, terms) = (tenant.id.clone(), tenant.terms);
        let admitted = self.cluster.check_admission(&id, terms);
        check!(self, admitted.is_ok(), "admission refused: {admitted:?}");
        let client = self.client();
        let record = self.jobs[i].record.clone();
        self.jobs[i].submitted = true;
        self.known.insert(record.id);
        self.watchers.insert(client, (record.id, 0));
        let capability = Capability(format!("cap-{i}"));
        let modules = vec![(ModuleHash("map".into()), b"map".to_vec())];
        self.cluster.submit(
            self.clock(),
            Some(client),
            record,
            capability,
            terms,
            modules,
        );
        self.drain();
    }

    fn client(&mut self) -> ClientId {
        self.next_client += 1;
        ClientId(self.next_client)
    }

    fn add_worker(&mut self) {
        // Draining workers are on their way out: they do not count.
        let alive = self
            .workers
            .iter()
            .filter(|w| !w.stopped && !w.ledger.is_draining())
            .count();
        if alive >= MAX_WORKERS {
            return;
        }
        let name = format!("worker-{}", self.workers.len());
        let slots = self.rng.random_range(1..=4);
        let mut worker = FakeWorker::new(name, slots);
        worker.identity = format!("id-{}-{}", self.workers.len(), self.rng.random::<u32>());
        worker.slow = self.profile.slow > 0.0 && self.rng.random_bool(self.profile.slow);
        if self.profile.placement {
            let zone = ZONES[self.rng.random_range(0..ZONES.len())];
            worker.labels.insert("zone".into(), zone.into());
            if self.rng.random_bool(0.3) {
                worker.labels.insert("gpu".into(), String::new());
            }
            if self.rng.random_bool(0.25) {
                let t = self.rng.random_range(0..self.tenants.len());
                worker.pool = Some(self.tenants[t].id.clone());
            }
        }
        self.workers.push(worker);
        self.connect(self.workers.len() - 1);
    }

    /// Whether worker process `w` may run job `i`'s attempts: the model's
    /// own reading of labels and pools, independent of the machine's.
    fn allowed(&self, w: usize, i: usize) -> bool {
        let worker = &self.workers[w];
        let job = &self.jobs[i];
        let tenant = &self.tenants[job.tenant];
        let pool_ok = match &worker.pool {
            Some(t) => *t == tenant.id,
            None => !tenant.terms.pool_only,
        };
        let labels_ok = job
            .record
            .request
            .placement
            .require
            .iter()
            .all(|r| match r {
                LabelRequirement::Equals { key, value } => worker.labels.get(key) == Some(value),
                LabelRequirement::NotEquals { key, value } => worker.labels.get(key) != Some(value),
                LabelRequirement::Present { key } => worker.labels.contains_key(key),
            });
        pool_ok && labels_ok
    }

    /// Liveness with placement: an unfinished job no live worker may run
    /// gets one made for it (an operator adding a machine with the labels).
    fn add_workers_for_stranded_jobs(&mut self) {
        for i in 0..self.jobs.len() {
            let id = self.jobs[i].record.id;
            if !self.jobs[i].submitted || self.cluster.summary(id).is_some() {
                continue;
            }
            let served = (0..self.workers.len()).any(|w| {
                self.workers[w].session.is_some()
                    && !self.workers[w].ledger.is_draining()
                    && self.allowed(w, i)
            });
            if served {
                continue;
            }
            let mut worker = FakeWorker::new(format!("worker-{}", self.workers.len()), 2);
            let tenant = &self.tenants[self.jobs[i].tenant];
            if tenant.terms.pool_only {
                worker.pool = Some(tenant.id.clone());
            }
            worker.labels.insert("gpu".into(), String::new());
            for r in &self.jobs[i].record.request.placement.require {
                let zone = match r {
                    LabelRequirement::Equals { value, .. } => value.clone(),
                    LabelRequirement::NotEquals { value, .. } => {
                        let other = ZONES.iter().find(|z| **z != value.as_str());
                        other.expect("three zones").to_string()
                    }
                    LabelRequirement::Present { .. } => "a".into(),
                };
                worker.labels.insert("zone".into(), zone);
            }
            self.workers.push(worker);
            self.connect(self.workers.len() - 1);
            check!(self, self.allowed(self.workers.len() - 1, i), "made to fit");
        }
    }

    /// Work conservation under placement: after a fault-free round settles,
    /// no live worker has a free slot that an unfinished job could use (it
    /// may run there, has tasks waiting, and its tenant is under quota). A
    /// job confined to some workers must not hold back the others.
    fn check_no_usable_slot_idle(&self) {
        let mut running = vec![0u32; self.tenants.len()];
        for job in self.cluster.unfinished_jobs() {
            let scheduler = self.cluster.scheduler(job).expect("unfinished job");
            let tenant = self.jobs[self.job_index[&job]].tenant;
            let on_workers: u32 = self.issued.iter().map(|&w| scheduler.running_on(w)).sum();
            running[tenant] += on_workers;
            // A commit in flight keeps its slot in the job's share (what it
            // brings next could not take the slot back): not idle.
            if scheduler.demand() > scheduler.queued() + on_workers as usize {
                return;
            }
        }
        for (w, worker) in self.workers.iter().enumerate() {
            let Some(id) = worker.session else { continue };
            let jobs = self.cluster.unfinished_jobs();
            let suspect = jobs.iter().any(|&j| {
                let scheduler = self.cluster.scheduler(j).expect("unfinished");
                scheduler.is_suspect(id)
            });
            // A suspect worker (its heartbeat not yet delivered) or a
            // draining one rightly takes nothing new.
            if worker.ledger.is_draining() || suspect {
                continue;
            }
            let used: u32 = self
                .cluster
                .unfinished_jobs()
                .iter()
                .map(|&j| {
                    self.cluster
                        .scheduler(j)
                        .expect("unfinished")
                        .running_on(id)
                })
                .sum();
            if used >= worker.slots {
                continue;
            }
            for job in self.cluster.unfinished_jobs() {
                let i = self.job_index[&job];
                let scheduler = self.cluster.scheduler(job).expect("unfinished job");
                let waiting = scheduler.queued();
                let tenant = self.jobs[i].tenant;
                let under_quota =
                    running[tenant] < self.tenants[tenant].terms.max_concurrent_attempts;
                check!(
                    self,
                    !(self.allowed(w, i) && waiting > 0 && under_quota),
                    "{job} has {waiting} tasks waiting while worker {id} ({:?}, pool {:?}), which it may use, has {} of {} slots free",
                    worker.labels,
                    worker.pool,
                    worker.slots - used,
                    worker.slots
                );
            }
        }
    }

    /// Worker process `w` opens a connection: a new worker id, and its
    /// ledger sends every unacknowledged report again.
    fn connect(&mut self, w: usize) {
        let worker = &self.workers[w];
        let (name, slots) = (worker.name.clone(), worker.slots);
        let (labels, pool) = (worker.labels.clone(), worker.pool.clone());
        let identity = self.profile.reannounce.then(|| worker.identity.clone());
        let id =
            self.cluster
                .worker_joined_as(self.clock(), identity, name, slots, labels, pool, None);
        if self.profile.reannounce {
            // A durable identity keeps its id; no two identities share one.
            // (An id whose persist a crash dropped was never used: every
            // effect naming it came after that persist.)
            let identity = &self.workers[w].identity;
            let durable = self.durable.workers.get(identity).copied();
            let shared = self
                .durable
                .workers
                .iter()
                .filter(|&(other, &i)| i == id && other != identity)
                .count();
            check!(
                self,
                !self.sessions.contains_key(&id) && durable.is_none_or(|d| d == id) && shared == 0,
                "worker id {id} handed to process {w} ({identity}), durably {durable:?}, shared by {shared} other identities"
            );
            self.owners.insert(id, w);
            if !self.issued.contains(&id) {
                self.issued.push(id);
            }
        } else {
            check!(
                self,
                !self.sessions.contains_key(&id) && !self.issued.contains(&id),
                "worker id {id} handed out twice"
            );
            self.issued.push(id);
            self.owners.insert(id, w);
        }
        self.sessions.insert(id, w);
        let worker = &mut self.workers[w];
        worker.session = Some(id);
        worker.ledger.connected();
        if self.profile.reannounce && !worker.held.is_empty() {
            let held = worker
                .held
                .iter()
                .map(|(&(job, task, epoch), &digest)| HeldOutput {
                    job,
                    task,
                    epoch,
                    digest,
                })
                .collect();
            worker.outbox.push_back(FromWorker::Announce(held));
        }
        worker.pump();
        self.drain();
    }

    fn reconnect_or_add_worker(&mut self) {
        let down: Vec<usize> = (0..self.workers.len())
            .filter(|&w| !self.workers[w].stopped && self.workers[w].session.is_none())
            .collect();
        if down.is_empty() || self.rng.random_bool(0.1) {
            self.add_worker();
        } else {
            let w = down[self.rng.random_range(0..down.len())];
            self.connect(w);
        }
    }

    fn connected(&self) -> Vec<usize> {
        (0..self.workers.len())
            .filter(|&w| self.workers[w].session.is_some())
            .collect()
    }

    fn break_some_connection(&mut self) {
        let up = self.connected();
        if !up.is_empty() {
            let w = up[self.rng.random_range(0..up.len())];
            self.break_connection(w);
        }
    }

    fn break_connection(&mut self, w: usize) {
        let id = self.workers[w].session.expect("connected");
        self.workers[w].disconnect();
        self.sessions.remove(&id);
        self.cluster.worker_gone(self.clock(), id);
        self.drain();
    }

    fn drain_some_worker(&mut self) {
        let up = self.connected();
        // Keep one worker taking work most of the time.
        if up.len() < 2 {
            return;
        }
        let w = up[self.rng.random_range(0..up.len())];
        self.workers[w].ledger.drain();
        self.workers[w].pump();
    }

    /// A drained worker exits: its connection closes, for good.
    fn retire_drained(&mut self) {
        for w in 0..self.workers.len() {
            let worker = &self.workers[w];
            if worker.session.is_some() && worker.ledger.drained() && worker.executing.is_empty() {
                self.break_connection(w);
                self.workers[w].stopped = true;
            }
        }
    }

    fn heartbeat_some_worker(&mut self) {
        let up = self.connected();
        if !up.is_empty() {
            let w = up[self.rng.random_range(0..up.len())];
            self.workers[w].outbox.push_back(FromWorker::Heartbeat);
        }
    }

    fn finish_some_attempt(&mut self) {
        let now = self.ms;
        let due: Vec<(usize, AttemptKey)> = (0..self.workers.len())
            .flat_map(|w| {
                self.workers[w]
                    .executing
                    .iter()
                    .filter(move |(_, run)| run.done_at <= now)
                    .map(move |(key, _)| (w, *key))
            })
            .collect();
        if !due.is_empty() {
            let (w, key) = due[self.rng.random_range(0..due.len())];
            self.finish_attempt(w, key);
        }
    }

    /// An attempt ends (zombies of a lost connection too): the ledger keeps
    /// the report until acknowledged and sends it if connected.
    fn finish_attempt(&mut self, w: usize, key: AttemptKey) {
        let worker = &mut self.workers[w];
        let run = worker.executing.remove(&key).expect("executing");
        let report = AttemptReport {
            job: key.0,
            task: key.1,
            epoch: key.2,
            worker: run.worker,
            outcome: run.outcome.map(|()| AttemptStats {
                output_digest: matches!(key.1, TaskId::Map(_)).then(|| digest_of(key)),
                ..AttemptStats::default()
            }),
            log: String::new(),
        };
        let fresh = worker.reported.insert(key);
        worker.ledger.finished(report);
        worker.pump();
        check!(self, fresh, "worker {w} finished {key:?} twice");
    }

    fn deliver_to_some_worker(&mut self) {
        let ready: Vec<usize> = (0..self.workers.len())
            .filter(|&w| !self.workers[w].inbox.is_empty())
            .collect();
        if !ready.is_empty() {
            let w = ready[self.rng.random_range(0..ready.len())];
            self.deliver_to(w);
        }
    }

    /// The worker handles the next message from the coordinator.
    fn deliver_to(&mut self, w: usize) {
        let Some(message) = self.workers[w].inbox.pop_front() else {
            return;
        };
        let session = self.workers[w]
            .session
            .expect("only connected workers get mail");
        match message {
            ToWorker::Assign(a) => {
                let key = (a.job, a.task, a.epoch);
                let fresh = self.workers[w].ledger.assigned(key);
                check!(self, fresh, "{key:?} assigned to worker {w} twice");
                let done_at = if self.workers[w].slow {
                    self.ms + self.rng.random_range(10_000..40_000)
                } else {
                    self.ms + self.rng.random_range(20..3_000)
                };
                let outcome = if self.rng.random_bool(self.profile.trap) {
                    Err(AttemptFailure::Trap("simulated trap".into()))
                } else {
                    Ok(())
                };
                let run = Execution {
                    worker: session,
                    done_at,
                    outcome,
                };
                self.workers[w].executing.insert(key, run);
            }
            ToWorker::Interrupt { job, task, epoch } => {
                if let Some(run) = self.workers[w].executing.get_mut(&(job, task, epoch)) {
                    run.done_at = self.ms;
                    run.outcome = Err(AttemptFailure::Cancelled);
                }
            }
            ToWorker::Ack { job, task, epoch } => {
                let key = (job, task, epoch);
                let worker = &mut self.workers[w];
                let ours = worker.reported.contains(&key);
                worker.ledger.acked(key);
                worker.acked.insert(key);
                check!(
                    self,
                    ours,
                    "worker {w} got an Ack for {key:?} it never reported"
                );
            }
            ToWorker::Commit { job, task, epoch } => {
                // I8: only the worker that ran (and reported) it holds the files.
                let key = (job, task, epoch);
                let ours = self.workers[w].reported.contains(&key);
                check!(
                    self,
                    ours,
                    "worker {w} asked to commit {key:?} it never ran"
                );
                let at = self.ms + self.rng.random_range(0..300);
                self.workers[w].commits.push((key, at));
            }
            ToWorker::Welcome { worker, .. } => {
                check!(
                    self,
                    worker == session,
                    "welcomed as {worker}, joined as {session}"
                );
            }
            ToWorker::Refused(reason) => check!(self, false, "refused: {reason}"),
            ToWorker::Release { job, task, epoch } => {
                self.workers[w].held.remove(&(job, task, epoch));
            }
            ToWorker::JobDone { job } => self.workers[w].held.retain(|k, _| k.0 != job),
            ToWorker::Discard { .. } => {}
        }
    }

    fn complete_some_local_commit(&mut self) {
        let now = self.ms;
        let due: Vec<(usize, usize)> = (0..self.workers.len())
            .flat_map(|w| {
                self.workers[w]
                    .commits
                    .iter()
                    .enumerate()
                    .filter(move |(_, (_, at))| *at <= now)
                    .map(move |(i, _)| (w, i))
            })
            .collect();
        if !due.is_empty() {
            let (w, i) = due[self.rng.random_range(0..due.len())];
            self.complete_local_commit(w, i, true);
        }
    }

    /// Worker-local shuffle: the worker renames the map output and answers.
    fn complete_local_commit(&mut self, w: usize, i: usize, faults: bool) {
        let ((job, task, epoch), _) = self.workers[w].commits.swap_remove(i);
        let result = if faults && self.rng.random_bool(self.profile.commit_err) {
            Err("simulated rename failure".to_string())
        } else {
            self.published.entry((job, task)).or_default().push(epoch);
            self.workers[w]
                .held
                .insert((job, task, epoch), digest_of((job, task, epoch)));
            Ok(())
        };
        let message = FromWorker::Committed {
            job,
            task,
            epoch,
            result,
        };
        self.workers[w].outbox.push_back(message);
    }

    fn deliver_from_some_worker(&mut self) {
        let ready: Vec<usize> = (0..self.workers.len())
            .filter(|&w| !self.workers[w].outbox.is_empty())
            .collect();
        if !ready.is_empty() {
            let w = ready[self.rng.random_range(0..ready.len())];
            self.deliver_from(w, true);
        }
    }

    /// The coordinator handles the worker's next message; a report may be
    /// duplicated on the way (it arrives again later on this connection).
    fn deliver_from(&mut self, w: usize, faults: bool) {
        let Some(message) = self.workers[w].outbox.pop_front() else {
            return;
        };
        let session = self.workers[w].session.expect("connected");
        if let FromWorker::Finished(report) = &message {
            if faults && self.rng.random_bool(self.profile.duplicate) {
                self.workers[w].outbox.push_back(message.clone());
            }
            if report.outcome.is_ok() {
                self.reported_ok
                    .insert((report.job, report.task, report.epoch));
            }
        }
        self.cluster.from_worker(self.clock(), session, message);
        self.drain();
    }

    // ---- clients ----

    fn known_job(&mut self) -> Option<JobId> {
        let known: Vec<JobId> = self.known.iter().copied().collect();
        (!known.is_empty()).then(|| known[self.rng.random_range(0..known.len())])
    }

    fn tenant_of(&self, job: JobId) -> TenantId {
        self.jobs[self.job_index[&job]].record.tenant.clone()
    }

    fn client_query(&mut self) {
        let Some(job) = self.known_job() else { return };
        let tenant = self.tenant_of(job);
        let client = self.client();
        match self.rng.random_range(0..3) {
            0 => {
                self.watchers.insert(client, (job, 0));
                self.cluster
                    .watch(client, &tenant, &job.0.simple().to_string());
            }
            1 => {
                let prefix = job.to_string();
                self.cluster.status(client, &tenant, Some(&prefix));
            }
            _ => self.cluster.jobs(client, &tenant),
        }
        self.drain();
    }

    fn cancel_some_job(&mut self) {
        let Some(job) = self.known_job() else { return };
        let tenant = self.tenant_of(job);
        let client = self.client();
        let id = job.0.simple().to_string();
        self.cluster.cancel(self.clock(), client, &tenant, &id);
        self.drain();
    }

    // ---- the coordinator's driver ----

    /// Carry out the machine's effects in order, as `wmr coordinator`
    /// does; a crash drops every effect not carried out yet.
    fn drain(&mut self) {
        while let Some(effect) = self.cluster.poll_effect() {
            match self.crash_in {
                Some(0) => {
                    self.crash_in = None;
                    self.restart();
                    continue;
                }
                Some(n) => self.crash_in = Some(n - 1),
                None => {}
            }
            self.carry_out(effect);
        }
    }

    fn carry_out(&mut self, effect: Effect) {
        match effect {
            Effect::Persist(batch) => self.durable.apply(*batch),
            Effect::Send { worker, message } => {
                self.check_send(worker, &message);
                // A message for a gone connection is dropped.
                if let Some(&w) = self.sessions.get(&worker) {
                    self.workers[w].inbox.push_back(message);
                }
            }
            Effect::Reply { client, reply } => self.check_reply(client, reply),
            Effect::CommitAttempt { job, task, epoch } => {
                // Worker-local shuffle: the coordinator still commits the
                // reduce outputs (they go to the shared output directory).
                check!(
                    self,
                    self.shared_store || matches!(task, TaskId::Reduce(_)),
                    "CommitAttempt of {task} with the worker-local shuffle"
                );
                self.check_commit(job, task, epoch);
                let result = if self.rng.random_bool(self.profile.commit_err) {
                    Err("simulated rename failure".to_string())
                } else {
                    self.published.entry((job, task)).or_default().push(epoch);
                    self.files.insert((job, task, epoch));
                    Ok(())
                };
                self.cluster
                    .commit_finished(self.clock(), job, task, epoch, result);
            }
            Effect::DiscardAttempt { job, task, epoch } => {
                self.discarded.insert((job, task, epoch));
            }
            Effect::CommitJob { job, .. } => {
                self.check_job_commit(job);
                self.cluster.job_committed(self.clock(), job, Ok(()));
            }
            Effect::CleanupJob { job } => {
                // I10: files go only once the job's end is durable, or a
                // crash now restores a job whose committed outputs are gone.
                let outcome = self.durable.jobs.get(&job).and_then(|r| r.outcome.clone());
                self.files.retain(|(j, _, _)| *j != job);
                check!(
                    self,
                    matches!(outcome, Some(JobOutcome::Failed(_) | JobOutcome::Cancelled)),
                    "I10: CleanupJob of {job} while its durable outcome is {outcome:?}"
                );
            }
        }
    }

    /// The coordinator crashes: every connection drops, and a new
    /// coordinator restores the durable state as `wmr coordinator` does:
    /// unfinished jobs with `keep_commits` (the machine itself forgets map
    /// outputs held by workers) and an epoch floor above every earlier
    /// incarnation's; finished ones for `status` only.
    fn restart(&mut self) {
        self.incarnation += 1;
        for worker in &mut self.workers {
            if worker.session.is_some() {
                worker.disconnect();
            }
        }
        self.sessions.clear();
        self.issued.clear();
        if self.profile.reannounce {
            self.outage();
        } else {
            self.owners.clear();
        }
        self.known.clear();
        // Client streams end with the process; a job whose submission was
        // not durable was never acknowledged, and its client submits again.
        self.watchers.clear();
        for job in &mut self.jobs {
            if job.submitted && !self.durable.jobs.contains_key(&job.record.id) {
                job.submitted = false;
            }
        }
        self.cluster = Cluster::new(Self::config(self.shared_store));
        if self.profile.reannounce {
            let known = self.durable.workers.clone();
            self.cluster.restore_workers(known);
        }
        let floor = AttemptEpoch(self.incarnation << 20);
        let records: Vec<JobRecord> = self.durable.jobs.values().cloned().collect();
        for record in records {
            let id = record.id;
            let attempts = self.durable.attempts_of(id);
            self.known.insert(id);
            if record.outcome.is_some() {
                self.cluster.load_finished(self.clock(), record, attempts);
                continue;
            }
            let capability = self.durable.capabilities.get(&id).cloned();
            check!(
                self,
                capability.is_some(),
                "I10: job {id} durable without its capability"
            );
            let terms = self.tenants[self.jobs[self.job_index[&id]].tenant].terms;
            self.floors.insert(id, floor);
            self.cluster.restore(
                self.clock(),
                None,
                record,
                attempts,
                floor,
                true,
                capability.expect("checked"),
                terms,
            );
        }
    }

    /// What the coordinator's outage does to the workers (re-announcing
    /// profile): one may come back with a new identity (its files kept, as
    /// a worker restarted on the same work dir without its `worker-id`),
    /// one may find an output's bytes changed on its disk.
    fn outage(&mut self) {
        for w in 0..self.workers.len() {
            if self.rng.random_bool(0.1) {
                self.workers[w].identity = format!("id-{w}-{}", self.rng.random::<u32>());
            }
            let held: Vec<AttemptKey> = self.workers[w].held.keys().copied().collect();
            if !held.is_empty() && self.rng.random_bool(0.2) {
                let key = held[self.rng.random_range(0..held.len())];
                let digest = self.workers[w].held.get_mut(&key).expect("listed");
                digest.crc32c ^= 1 << self.rng.random_range(0..32);
            }
        }
    }

    // ---- checks on the effect stream (I10, I1–I3) ----

    fn durable_attempt(
        &self,
        job: JobId,
        task: TaskId,
        epoch: AttemptEpoch,
    ) -> Option<&AttemptRecord> {
        self.durable.attempts.get(&(job, task, epoch))
    }

    /// Every epoch the current coordinator hands out for `job` is above
    /// this (I1): above every earlier incarnation's, for a restored job.
    fn floor(&self, job: JobId) -> AttemptEpoch {
        self.floors.get(&job).copied().unwrap_or(AttemptEpoch(0))
    }

    fn durable_outcome(&self, job: JobId) -> Option<JobOutcome> {
        self.durable.jobs.get(&job).and_then(|r| r.outcome.clone())
    }

    fn check_send(&mut self, worker: WorkerId, message: &ToWorker) {
        match message {
            ToWorker::Assign(a) => {
                let (job, task, epoch) = (a.job, a.task, a.epoch);
                let durable = self.durable_attempt(job, task, epoch);
                check!(
                    self,
                    durable.is_some_and(|r| r.worker == worker && r.outcome == AttemptOutcome::Running),
                    "I10: Assign of {job} {task} {epoch} to {worker}, durable record {durable:?}"
                );
                let outcome = self.durable_outcome(job);
                check!(
                    self,
                    outcome.is_none(),
                    "Assign of {job} {task} after it ended {outcome:?}"
                );
                let speculative = durable.is_some_and(|r| r.speculative);
                let previous = self.latest.insert((job, task), epoch);
                check!(
                    self,
                    previous.is_none_or(|p| p < epoch) && epoch > self.floor(job),
                    "I1: {job} {task} assigned {epoch} after {previous:?}"
                );
                if speculative {
                    self.check_backup(job, task, epoch, worker, previous);
                }
                if let Some(&w) = self.sessions.get(&worker) {
                    let i = self.job_index[&job];
                    check!(
                        self,
                        self.allowed(w, i),
                        "placement: {job} {task} assigned to {worker} ({:?}, pool {:?}), which it may not use",
                        self.workers[w].labels,
                        self.workers[w].pool
                    );
                }
            }
            ToWorker::Ack { job, task, epoch } => {
                // I10: the verdict on the report is durable before the
                // worker may forget it. A report accepted for commit leaves
                // its record `Running` with the report's stats until the
                // commit ends: that is its verdict.
                if self.durable.jobs.contains_key(job) {
                    let durable = self.durable_attempt(*job, *task, *epoch);
                    check!(
                        self,
                        durable.is_none_or(
                            |r| r.outcome != AttemptOutcome::Running || r.stats.is_some()
                        ),
                        "I10: Ack of {job} {task} {epoch} while its durable record is {durable:?}"
                    );
                }
            }
            ToWorker::Commit { job, task, epoch } => {
                check!(
                    self,
                    !self.shared_store,
                    "a worker commits with a shared store"
                );
                check!(
                    self,
                    matches!(task, TaskId::Map(_)),
                    "a worker commits {task}"
                );
                self.check_commit(*job, *task, *epoch);
            }
            ToWorker::Discard { job, task, epoch } => {
                self.discarded.insert((*job, *task, *epoch));
            }
            ToWorker::JobDone { job } => {
                let outcome = self.durable_outcome(*job);
                check!(
                    self,
                    outcome.is_some(),
                    "I10: JobDone of {job} before its outcome is durable"
                );
            }
            ToWorker::Welcome { .. }
            | ToWorker::Interrupt { .. }
            | ToWorker::Refused(_)
            | ToWorker::Release { .. } => {}
        }
        if let ToWorker::Assign(a) = message
            && let TaskInput::Reduce { map_outputs, .. } = &a.input
            && !self.shared_store
        {
            self.check_map_outputs(a.job, map_outputs);
        }
    }

    /// A reduce assignment names, for every map task, the output the
    /// durable record says was committed (that epoch, on that worker), held
    /// by that worker process with the recorded digest: a restarted
    /// coordinator never adopts another epoch, another identity's claim or
    /// changed bytes.
    fn check_map_outputs(&self, job: JobId, map_outputs: &[(TaskId, AttemptEpoch, WorkerId)]) {
        for &(task, epoch, holder) in map_outputs {
            let durable = self.durable_attempt(job, task, epoch);
            check!(
                self,
                durable
                    .is_some_and(|r| r.outcome == AttemptOutcome::Committed && r.worker == holder),
                "reduce of {job} reads {task} {epoch} on {holder}, durable record {durable:?}"
            );
            let recorded = durable.and_then(|r| r.stats.as_ref()?.output_digest);
            let process = self.owners.get(&holder).copied();
            let held = process.and_then(|w| self.workers[w].held.get(&(job, task, epoch)));
            check!(
                self,
                recorded.is_some() && held == recorded.as_ref(),
                "reduce of {job} reads {task} {epoch} on {holder} (process {process:?}): it holds {held:?}, the record says {recorded:?}"
            );
            if epoch < self.floor(job) {
                ADOPTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }

    /// A backup attempt (speculation): only with `--speculate`, beside a
    /// running attempt of the task on another worker, one per task.
    fn check_backup(
        &mut self,
        job: JobId,
        task: TaskId,
        epoch: AttemptEpoch,
        worker: WorkerId,
        previous: Option<AttemptEpoch>,
    ) {
        let planned = &self.jobs[self.job_index[&job]].record;
        check!(
            self,
            planned.request.speculate,
            "backup {job} {task} {epoch} of a job without --speculate"
        );
        let original = previous.and_then(|p| self.durable_attempt(job, task, p));
        check!(
            self,
            original.is_some_and(|r| r.outcome == AttemptOutcome::Running && r.worker != worker),
            "backup {job} {task} {epoch} on {worker} beside {original:?}"
        );
        let original = previous.expect("checked");
        let again = self.backed_up.insert((job, task), (original, epoch));
        // A restarted coordinator may back up a task again (in a new incarnation).
        check!(
            self,
            again.is_none_or(|(_, b)| b < self.floor(job)),
            "a second backup of {job} {task}: {epoch} after {again:?}"
        );
    }

    /// A commit (by the coordinator or by a worker): I10, and I2/I3 — only
    /// the task's current epoch, after a success report, never a
    /// discarded attempt, each commit above the last.
    fn check_commit(&mut self, job: JobId, task: TaskId, epoch: AttemptEpoch) {
        let durable = self.durable_attempt(job, task, epoch);
        check!(
            self,
            durable.is_some_and(|r| r.stats.is_some()),
            "I10: commit of {job} {task} {epoch}, durable record {durable:?}"
        );
        let outcome = self.durable_outcome(job);
        check!(
            self,
            outcome.is_none(),
            "commit of {job} {task} {epoch} after the job ended {outcome:?}"
        );
        check!(
            self,
            self.reported_ok.contains(&(job, task, epoch)),
            "I2: commit of {job} {task} {epoch} without a success report"
        );
        // A report of an earlier incarnation never commits, even for a task
        // not assigned again yet.
        // With speculation the attempt a backup lost to is live too.
        let latest = self.latest.get(&(job, task)).copied();
        let backed_up = self.backed_up.get(&(job, task)).copied();
        let live = latest == Some(epoch)
            || (backed_up.is_some() && backed_up == latest.map(|l| (epoch, l)));
        check!(
            self,
            live && epoch > self.floor(job),
            "I2: commit of {job} {task} {epoch}, newest assigned {latest:?}, backed up {backed_up:?}"
        );
        check!(
            self,
            !self.discarded.contains(&(job, task, epoch)),
            "I3: commit of discarded {job} {task} {epoch}"
        );
        let last = self.last_commit.insert((job, task), epoch);
        check!(
            self,
            last.is_none_or(|l| l < epoch),
            "I2: {job} {task} committed at {epoch} after {last:?}"
        );
    }

    /// CommitJob publishes the job's output: every task durably committed,
    /// and each committed output the coordinator holds still in place.
    fn check_job_commit(&mut self, job: JobId) {
        let planned = &self.jobs[self.job_index[&job]].record;
        let tasks = planned.splits.len() + planned.request.reducers as usize;
        let committed: Vec<(TaskId, AttemptEpoch)> = self
            .durable
            .attempts_of(job)
            .iter()
            .filter(|r| r.outcome == AttemptOutcome::Committed)
            .map(|r| (r.task, r.epoch))
            .collect();
        check!(
            self,
            committed.len() == tasks,
            "I10: CommitJob of {job} with {} of {tasks} tasks durably committed",
            committed.len()
        );
        for (task, epoch) in committed {
            let held = self.shared_store || matches!(task, TaskId::Reduce(_));
            check!(
                self,
                !held || self.files.contains(&(job, task, epoch)),
                "CommitJob of {job}: the output of {task} {epoch} is gone"
            );
        }
        let outcome = self.durable_outcome(job);
        check!(
            self,
            outcome.is_none(),
            "CommitJob of {job} after it ended {outcome:?}"
        );
    }

    fn check_reply(&mut self, client: ClientId, reply: ClientReply) {
        let watched = self.watchers.get(&client).map(|(job, _)| *job);
        match reply {
            ClientReply::Submitted { job } => {
                check!(
                    self,
                    watched.is_some(),
                    "Submitted {job} to {client:?}, which submitted nothing"
                );
                let id = watched.expect("checked");
                check!(
                    self,
                    job == id.to_string(),
                    "Submitted {job} to the client of {id}"
                );
                check!(
                    self,
                    self.durable.jobs.contains_key(&id),
                    "I10: Submitted {id} before its record is durable"
                );
            }
            ClientReply::Done(summary) => {
                check!(
                    self,
                    watched.is_some(),
                    "Done to {client:?}, which follows no job"
                );
                let id = watched.expect("checked");
                check!(
                    self,
                    summary.job == id.to_string(),
                    "Done of {} to the client of {id}",
                    summary.job
                );
                let outcome = self.durable_outcome(id);
                check!(
                    self,
                    outcome.as_ref() == Some(&summary.outcome),
                    "I10: Done {:?} for {id} while its durable outcome is {outcome:?}",
                    summary.outcome
                );
                self.watchers.get_mut(&client).expect("checked").1 += 1;
            }
            ClientReply::Progress {
                committed, total, ..
            } => {
                check!(
                    self,
                    watched.is_some(),
                    "Progress to {client:?}, which follows no job"
                );
                check!(self, committed <= total, "Progress {committed}/{total}");
            }
            ClientReply::Status(status) => {
                check!(self, status.committed <= status.tasks, "status {status:?}");
            }
            ClientReply::Cancelled { .. } | ClientReply::Jobs(_) => {}
            ClientReply::Error(e) => check!(self, false, "{client:?} got an error: {e}"),
        }
    }

    // ---- checks on the state ----

    /// After every event: the machine's own audit (each scheduler's tally,
    /// no worker over its slots), each tenant within its concurrency quota,
    /// each attempt logged once and each task committed at most once, and
    /// each worker still holding every report not acknowledged.
    fn check_state(&self) {
        if let Err(e) = self.cluster.audit() {
            check!(self, false, "audit: {e}");
        }
        let mut running = vec![0u32; self.tenants.len()];
        for job in self.cluster.unfinished_jobs() {
            let scheduler = self.cluster.scheduler(job).expect("unfinished job");
            let tenant = self.jobs[self.job_index[&job]].tenant;
            running[tenant] += self
                .issued
                .iter()
                .map(|&w| scheduler.running_on(w))
                .sum::<u32>();
            self.check_log(job, scheduler.attempt_log());
        }
        for (t, tenant) in self.tenants.iter().enumerate() {
            let cap = tenant.terms.max_concurrent_attempts;
            check!(
                self,
                running[t] <= cap,
                "{} runs {} attempts, quota {cap}",
                tenant.id.0,
                running[t]
            );
        }
        for (w, worker) in self.workers.iter().enumerate() {
            let unacked: BTreeSet<AttemptKey> = worker.ledger.unacked().copied().collect();
            let expected: BTreeSet<AttemptKey> =
                worker.reported.difference(&worker.acked).copied().collect();
            check!(
                self,
                unacked == expected,
                "worker {w} keeps {unacked:?}, reported and not acked {expected:?}"
            );
            let running: BTreeSet<AttemptKey> = worker.ledger.running().copied().collect();
            check!(
                self,
                running.iter().eq(worker.executing.keys()),
                "worker {w}'s ledger runs {running:?}"
            );
        }
    }

    /// Each (task, epoch) once in the log; each task committed at most once;
    /// at most one attempt per task running, or two with a backup.
    fn check_log(&self, job: JobId, log: &[AttemptRecord]) -> BTreeMap<TaskId, AttemptEpoch> {
        let mut seen = BTreeSet::new();
        let mut committed = BTreeMap::new();
        let mut running: BTreeMap<TaskId, (u32, u32)> = BTreeMap::new();
        for record in log {
            let key = key_of(record, job);
            check!(self, seen.insert(key), "{key:?} logged twice");
            if record.outcome == AttemptOutcome::Running {
                let (all, backups) = running.entry(record.task).or_default();
                *all += 1;
                *backups += u32::from(record.speculative);
                check!(
                    self,
                    *all == 1 || (*all == 2 && *backups == 1),
                    "{job} {}: {all} attempts running, {backups} of them backups",
                    record.task
                );
            }
            if record.outcome == AttemptOutcome::Committed {
                let twice = committed.insert(record.task, record.epoch);
                check!(
                    self,
                    twice.is_none(),
                    "I2: {job} {} committed at {twice:?} and {}",
                    record.task,
                    record.epoch
                );
            }
        }
        committed
    }

    fn all_finished(&self) -> bool {
        self.jobs
            .iter()
            .all(|j| j.submitted && self.cluster.summary(j.record.id).is_some())
    }

    fn check_final(&self) {
        check!(
            self,
            self.cluster.unfinished_jobs().is_empty(),
            "unfinished jobs remain"
        );
        for planned in &self.jobs {
            let job = planned.record.id;
            let summary = self.cluster.summary(job).expect("all finished");
            if self.profile.must_complete {
                check!(
                    self,
                    summary.outcome == JobOutcome::Completed,
                    "{job} ended {:?}",
                    summary.outcome
                );
            }
            let durable = self.durable_outcome(job);
            check!(
                self,
                durable.as_ref() == Some(&summary.outcome),
                "{job}: durable outcome {durable:?}, summary {:?}",
                summary.outcome
            );
            let log = self.cluster.scheduler(job).expect("known").attempt_log();
            let committed = self.check_log(job, log);
            if summary.outcome != JobOutcome::Completed {
                continue;
            }
            // Every task committed exactly once, by the newest rename of
            // its files; the durable log says so too.
            let tasks = (0..planned.record.splits.len() as u32)
                .map(TaskId::Map)
                .chain((0..planned.record.request.reducers).map(TaskId::Reduce));
            for task in tasks {
                let epoch = committed.get(&task);
                let published = self.published.get(&(job, task)).and_then(|p| p.last());
                check!(
                    self,
                    epoch.is_some() && epoch == published,
                    "{job} {task}: committed {epoch:?}, newest published {published:?}"
                );
                let durable: Vec<AttemptEpoch> = self
                    .durable
                    .attempts_of(job)
                    .iter()
                    .filter(|r| r.task == task && r.outcome == AttemptOutcome::Committed)
                    .map(|r| r.epoch)
                    .collect();
                check!(
                    self,
                    durable.len() == 1 && Some(&durable[0]) == epoch,
                    "{job} {task}: durably committed at {durable:?}, in memory {epoch:?}"
                );
            }
        }
        for planned in &self.jobs {
            let job = planned.record.id;
            let summary = self.cluster.summary(job).expect("all finished");
            let log = self.cluster.scheduler(job).expect("known").attempt_log();
            let backups = log.iter().filter(|r| r.speculative).count();
            check!(
                self,
                backups == summary.speculative
                    && (planned.record.request.speculate || backups == 0),
                "{job}: {backups} backups logged, summary {}, --speculate {}",
                summary.speculative,
                planned.record.request.speculate
            );
            BACKUPS_STARTED.fetch_add(summary.speculative as u64, Ordering::Relaxed);
            BACKUPS_WON.fetch_add(summary.speculative_won as u64, Ordering::Relaxed);
            // I3: an attempt that lost a speculation race and still reported
            // success (a failed one deletes its own files) is discarded,
            // never published, even when the job ended first.
            for record in log
                .iter()
                .filter(|r| r.outcome == AttemptOutcome::Superseded)
            {
                let key = key_of(record, job);
                check!(
                    self,
                    !self.reported_ok.contains(&key) || self.discarded.contains(&key),
                    "I3: superseded {key:?} reported success and was not discarded"
                );
                let published = self
                    .published
                    .get(&(job, record.task))
                    .is_some_and(|p| p.contains(&record.epoch));
                check!(self, !published, "I3: superseded {key:?} published");
            }
        }
        for (w, worker) in self.workers.iter().enumerate() {
            check!(
                self,
                worker.ledger.idle() && worker.acked == worker.reported,
                "worker {w} ends with running {:?}, unacked {:?}",
                worker.ledger.running().collect::<Vec<_>>(),
                worker.ledger.unacked().collect::<Vec<_>>()
            );
        }
        // Every client still following a job heard `Done` exactly once.
        for (client, (job, dones)) in &self.watchers {
            check!(
                self,
                *dones == 1,
                "{client:?} following {job} heard Done {dones} times"
            );
        }
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

/// Runs every seed; a panic inside the machine itself (a `debug_assert!`)
/// is re-raised with the seed that caused it.
fn run_seeds(profile: Profile) {
    for seed in seeds() {
        if catch_unwind(AssertUnwindSafe(|| Sim::run(seed, profile))).is_err() {
            panic!(
                "seed {seed} ({}) failed (see the panic above); replay: WMR_SIM_SEED={seed} cargo test --release -p wmr-core --test cluster_simulation {}",
                profile.name, profile.test
            );
        }
    }
}

/// Tenants of different weights and quotas share workers that come, go and
/// reconnect: no tenant ever runs more attempts than its quota, no worker
/// more than its slots, and once faults stop every job completes (a
/// low-weight tenant's too), each task committed exactly once.
#[test]
fn several_tenants_share_workers_within_their_quotas_and_every_job_finishes() {
    run_seeds(QUOTAS);
}

/// With two attempts per task, traps, failing commits and cancels, jobs
/// fail: each ends once, durably, its clients hear `Done` once, and nothing
/// of it is assigned or committed once its end is durable.
#[test]
fn failed_and_cancelled_jobs_finish_once_and_commit_nothing_after() {
    run_seeds(HARSH);
}

/// Crashes at any point of the effect stream, with every other fault and
/// cancels: each assignment, commit, Ack, reply, job commit and cleanup is
/// carried out only after the `Persist` holding its state (checked on every
/// effect, in every test; here most often right before a crash would expose
/// a missing write).
#[test]
fn i10_every_effect_follows_the_persist_of_its_state() {
    run_seeds(CRASHY);
}

/// The coordinator crashes at random points and comes back from its durable
/// state; attempts of the old incarnation keep running and report to the
/// new one, which acknowledges them and never commits them. Every job
/// completes, each task committed once in the final state, by its newest
/// commit.
#[test]
fn a_coordinator_restart_at_a_random_point_loses_no_commit_and_commits_nothing_twice() {
    run_seeds(RESTARTS);
}

/// Connections break often (losing reports, Acks, commits and their
/// answers in flight), reports are delivered twice, workers drain: a worker
/// forgets a report only after its Ack, ends with nothing unacknowledged,
/// each attempt is logged once and only a task's current epoch commits.
#[test]
fn lost_and_duplicated_reports_are_acked_once_and_never_lost() {
    run_seeds(LOSSY);
}

/// Workers with zone labels, gpu flags and tenant pools; jobs requiring
/// `zone=`, `zone!=` or `gpu`; pool-only tenants. Every assignment goes to a
/// worker the job may use (checked by the model and by `Cluster::audit`),
/// no usable slot stays idle while a job that may use it waits, and every
/// job completes once a worker it may use is connected.
#[test]
fn labelled_placement_runs_attempts_only_where_allowed_and_wastes_no_usable_slot() {
    run_seeds(PLACEMENT);
}

/// Workers with durable identities keep their committed map outputs across
/// coordinator crashes and re-announce them on every connection; at each
/// crash one may come back under another identity (its files kept) or
/// with an output whose bytes changed. Every reduce reads exactly the
/// output the durable record committed (epoch, worker, digest), never a
/// re-announced claim that differs; every job completes with each task
/// committed once; outputs were re-adopted (not only run again).
#[test]
fn restarted_coordinators_adopt_only_the_committed_map_outputs_workers_re_announce() {
    run_seeds(REANNOUNCE);
    let adopted = ADOPTED.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        adopted > 0 || seeds().len() < 10,
        "no reduce read a re-adopted map output in {} seeds",
        seeds().len()
    );
    println!("reduce inputs read from re-adopted map outputs: {adopted}");
}

/// Speculation (`--speculate`) with slow workers among fast ones, faults
/// and coordinator restarts: a backup starts only beside a running attempt
/// of its task, on another worker, once per task; either attempt may
/// commit, but only one ever does (I2); the one that lost is interrupted
/// and, when it reports, discarded and never published (I3); every job
/// completes with each task committed exactly once by its newest rename.
/// The seeds together must start backups and see some win.
#[test]
fn stragglers_get_one_backup_elsewhere_and_each_task_commits_once() {
    run_seeds(SPECULATION);
    let started = BACKUPS_STARTED.load(Ordering::Relaxed);
    let won = BACKUPS_WON.load(Ordering::Relaxed);
    eprintln!("speculation: {started} backup attempts over the seeds, {won} won");
    assert!(
        started > 0 && won > 0,
        "the seeds exercised no speculation: {started} backups, {won} won"
    );
}

/// The same slow workers without `--speculate`: no backup is ever started
/// (checked on every assignment and in every summary).
#[test]
fn without_speculate_a_straggler_never_gets_a_backup() {
    run_seeds(SLOW_WITHOUT_SPECULATION);
}

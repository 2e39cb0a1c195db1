//! The embedded driver behind `wmr run`: the scheduler and N worker threads
//! in one process, no set-up. It carries out the scheduler's actions exactly
//! as a networked coordinator does, with channels instead of QUIC streams.

use crate::commit::JobDirs;
use crate::executor::Executor;
use crate::protocol::{
    Assignment, AttemptEpoch, AttemptReport, JobId, Limits, TaskId, TenantId, WorkerId,
};
use crate::sandbox::Role;
use crate::scheduler::{Action, Event, JobOutcome, JobPlan, Scheduler, SchedulerConfig};
use crate::split;
use crate::summary::{JobSummary, Progress, dead_letters, summarize};
use anyhow::Context as _;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

/// Everything `wmr run` needs to know about a job.
#[derive(Clone, Debug)]
pub struct JobSpec {
    pub map: PathBuf,
    pub reduce: PathBuf,
    pub inputs: Vec<String>,
    pub output: PathBuf,
    pub output_format: crate::protocol::OutputFormat,
    pub reducers: u32,
    pub split_bytes: u64,
    pub limits: Limits,
    pub params: BTreeMap<String, String>,
    pub max_attempts: u32,
}

/// Commit a job whose tasks all committed: publish its output and dead
/// letters, unless it skipped more records than it may.
pub fn commit_job(dirs: &JobDirs, scheduler: &Scheduler, max_dead_letters: u32) -> JobOutcome {
    let dead = dead_letters(scheduler);
    if dead.len() > max_dead_letters as usize {
        let _ = dirs.cleanup_work();
        return JobOutcome::Failed(format!(
            "{} records made the guest trap, more than --max-dead-letters {max_dead_letters}; first: {}:{}: {}",
            dead.len(),
            dead[0].file,
            dead[0].offset,
            dead[0].message
        ));
    }
    match dirs.finish(&dead) {
        Ok(()) => JobOutcome::Completed,
        Err(e) => JobOutcome::Failed(format!("job commit: {e:#}")),
    }
}

/// Compile and validate both components; errors name the file and the role.
pub fn load_modules(
    executor: &Executor,
    map: &Path,
    reduce: &Path,
) -> anyhow::Result<(crate::protocol::ModuleHash, crate::protocol::ModuleHash)> {
    let load = |path: &Path, role: Role| {
        let bytes = std::fs::read(path).with_context(|| format!("{}", path.display()))?;
        executor
            .add_module(&bytes, role)
            .with_context(|| format!("{}", path.display()))
    };
    Ok((load(map, Role::Map)?, load(reduce, Role::Reduce)?))
}

/// Run a job to the end with `workers` local worker threads.
pub fn run_embedded(
    spec: &JobSpec,
    workers: u32,
    work_root: &Path,
    on_progress: &mut dyn FnMut(Progress),
) -> anyhow::Result<JobSummary> {
    assert!(workers > 0, "at least one worker");
    let started = Instant::now();
    let executor = Arc::new(Executor::new(workers)?);
    // Everything that can be wrong with the request is found before any
    // file is written.
    let (map_module, reduce_module) = load_modules(&executor, &spec.map, &spec.reduce)?;
    let files = split::discover_inputs(&spec.inputs)?;
    let splits = split::plan_splits(&files, spec.split_bytes)?;
    let job = JobId::new();
    let span = tracing::info_span!("job", %job);
    let _enter = span.enter();
    let dirs = JobDirs::new(job, work_root, &spec.output);
    let output_existed = spec.output.exists();
    dirs.prepare()?;

    let plan = JobPlan {
        tenant: TenantId::local(),
        job,
        map_module,
        reduce_module,
        splits,
        reducers: spec.reducers,
        limits: spec.limits.clone(),
        params: spec.params.clone(),
        output: spec.output.clone(),
        output_format: spec.output_format,
        work_root: work_root.to_path_buf(),
        map_outputs_on_workers: false,
    };
    let config = SchedulerConfig {
        max_attempts: spec.max_attempts,
        // Local workers cannot vanish; their attempts end by the sandbox's
        // own deadline. The lease only backs that up.
        lease: Duration::from_millis(spec.limits.timeout_ms) + Duration::from_secs(30),
        ..SchedulerConfig::default()
    };
    let mut scheduler = Scheduler::new(plan, config, Instant::now());
    let pool = WorkerPool::start(executor, workers);
    for &worker in pool.senders.keys() {
        scheduler.handle(Instant::now(), Event::WorkerJoined { worker, slots: 1 });
    }
    let outcome = drive(&mut scheduler, &pool, &dirs, on_progress);
    drop(pool);
    let outcome = match outcome {
        JobOutcome::Completed => commit_job(&dirs, &scheduler, spec.limits.max_dead_letters),
        other => other,
    };
    match &outcome {
        JobOutcome::Completed => {}
        _ => {
            // A job that did not complete publishes nothing.
            dirs.cleanup_work()?;
            if !output_existed {
                let _ = std::fs::remove_dir(&spec.output);
            }
        }
    }
    Ok(summarize(&scheduler, outcome, started.elapsed()))
}

/// Carry out actions and feed events until the job ends.
fn drive(
    scheduler: &mut Scheduler,
    pool: &WorkerPool,
    dirs: &JobDirs,
    on_progress: &mut dyn FnMut(Progress),
) -> JobOutcome {
    let mut cancels: HashMap<(TaskId, AttemptEpoch), Arc<AtomicBool>> = HashMap::new();
    loop {
        while let Some(action) = scheduler.poll_action() {
            match action {
                Action::Assign { worker, assignment } => {
                    let cancel = Arc::new(AtomicBool::new(false));
                    cancels.insert((assignment.task, assignment.epoch), cancel.clone());
                    pool.senders[&worker]
                        .send((*assignment, cancel))
                        .expect("worker threads outlive the job");
                }
                Action::Commit { task, epoch, .. } => {
                    let result = dirs
                        .commit_attempt(task, epoch)
                        .map_err(|e| format!("{e:#}"));
                    let event = Event::CommitFinished {
                        task,
                        epoch,
                        result,
                    };
                    scheduler.handle(Instant::now(), event);
                }
                Action::Discard { task, epoch, .. } => {
                    if let Err(e) = dirs.abort_attempt(task, epoch) {
                        tracing::warn!(%task, %epoch, "discarding attempt files: {e:#}");
                    }
                }
                Action::Interrupt { task, epoch, .. } => {
                    if let Some(cancel) = cancels.get(&(task, epoch)) {
                        cancel.store(true, Ordering::Relaxed);
                    }
                }
                Action::Finished(outcome) => {
                    for cancel in cancels.values() {
                        cancel.store(true, Ordering::Relaxed);
                    }
                    return outcome;
                }
            }
        }
        let (committed, running, _) = scheduler.progress();
        on_progress(Progress {
            phase: scheduler.phase(),
            committed,
            running,
            total: scheduler.task_count(),
        });
        let wait = scheduler
            .poll_timeout()
            .map(|t| t.saturating_duration_since(Instant::now()))
            .unwrap_or(Duration::from_secs(3600));
        match pool.reports.recv_timeout(wait) {
            Ok(report) => {
                cancels.remove(&(report.task, report.epoch));
                if !report.log.is_empty() {
                    tracing::debug!(task = %report.task, epoch = %report.epoch, log = %report.log, "attempt log");
                }
                let worker = report.worker;
                scheduler.handle(Instant::now(), Event::AttemptFinished(report));
                // A report is proof of life: the embedded workers send no
                // heartbeats, and a worker marked suspect when a lease ran
                // out would otherwise never be given work again (a job
                // whose every worker was suspect hung; issue 10).
                scheduler.handle(Instant::now(), Event::Heartbeat { worker });
            }
            Err(mpsc::RecvTimeoutError::Timeout) => scheduler.handle_timeout(Instant::now()),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return JobOutcome::Failed("all workers stopped".into());
            }
        }
    }
}

/// Local worker threads, one slot each.
struct WorkerPool {
    senders: BTreeMap<WorkerId, mpsc::Sender<(Assignment, Arc<AtomicBool>)>>,
    reports: mpsc::Receiver<AttemptReport>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl WorkerPool {
    fn start(executor: Arc<Executor>, workers: u32) -> Self {
        let (report_tx, reports) = mpsc::channel();
        let mut senders = BTreeMap::new();
        let mut threads = Vec::new();
        for i in 0..workers {
            let worker = WorkerId(i + 1);
            let (tx, rx) = mpsc::channel::<(Assignment, Arc<AtomicBool>)>();
            senders.insert(worker, tx);
            let (executor, report_tx) = (executor.clone(), report_tx.clone());
            let thread = std::thread::Builder::new()
                .name(format!("wmr-worker-{}", worker.0))
                .spawn(move || {
                    for (assignment, cancel) in rx {
                        let report = executor.execute(&assignment, worker, cancel);
                        if report_tx.send(report).is_err() {
                            break;
                        }
                    }
                })
                .expect("spawning a worker thread");
            threads.push(thread);
        }
        WorkerPool {
            senders,
            reports,
            threads,
        }
    }
}

impl Drop for WorkerPool {
    /// Close the assignment channels and wait: in-flight attempts finish (or
    /// stop at their cancel flag) before the driver cleans up their files.
    fn drop(&mut self) {
        self.senders.clear();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

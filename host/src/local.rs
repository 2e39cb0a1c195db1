//! The embedded driver behind `wmr run`: the coordinator's state machine
//! ([`Cluster`]) and N worker threads in one process, no set-up. It carries
//! out the same effects as the networked coordinator, with channels instead
//! of QUIC streams and no durable state.

use crate::cluster::{ClientId, Cluster, ClusterConfig, Effect, TenantTerms};
use crate::commit::JobDirs;
use crate::compile_cache::{CacheOptions, CacheReport};
use crate::executor::Executor;
use crate::lifecycle::{self, clock};
use crate::model::{
    Assignment, AttemptEpoch, AttemptReport, Capability, JobId, ModuleHash, TaskId, TenantId,
    WorkerId,
};
use crate::placement::{JobView, WorkerView, may_run};
use crate::sandbox::Role;
use crate::summary::{JobSummary, Progress};
use crate::wire::{ClientReply, FromWorker, JobRequest, ToWorker};
use anyhow::Context as _;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Duration;

/// Compile and validate both components; errors name the file and the role.
/// Returns their hashes and the map component's bytes (the range
/// partitioner's sampler runs it).
pub fn load_modules(
    executor: &Executor,
    map: &Path,
    reduce: &Path,
) -> anyhow::Result<((ModuleHash, ModuleHash), Vec<u8>)> {
    let read = |path: &Path| std::fs::read(path).with_context(|| format!("{}", path.display()));
    let load = |bytes: &[u8], path: &Path, role: Role| {
        executor
            .add_module(bytes, role)
            .with_context(|| format!("{}", path.display()))
    };
    let map_bytes = read(map)?;
    let map_module = load(&map_bytes, map, Role::Map)?;
    let reduce_module = load(&read(reduce)?, reduce, Role::Reduce)?;
    Ok(((map_module, reduce_module), map_bytes))
}

/// The worker threads of an embedded run: all alike, with these labels.
pub struct LocalWorkers {
    pub count: u32,
    pub labels: BTreeMap<String, String>,
}

/// The one client of an embedded run.
const CLIENT: ClientId = ClientId(0);

/// What `wmr run` did: the job's summary and what the compile cache did.
pub struct EmbeddedRun {
    pub summary: JobSummary,
    /// `None` without a cache (`--no-cache`, or a directory not safe to use).
    pub compile_cache: Option<CacheReport>,
}

/// Run a job to the end with `workers` local worker threads. `request`
/// carries no module bytes: the components are read from `map` and
/// `reduce`. Compiled components come from (and go to) `compile_cache`.
pub fn run_embedded(
    map: &Path,
    reduce: &Path,
    request: JobRequest,
    local_workers: &LocalWorkers,
    compile_cache: Option<&CacheOptions>,
    work_root: &Path,
    on_progress: &mut dyn FnMut(Progress),
) -> anyhow::Result<EmbeddedRun> {
    let workers = local_workers.count;
    anyhow::ensure!(workers > 0, "--workers must be greater than 0");
    // Local workers never change: a job none of them may run would wait
    // for ever, so it is refused before anything is written.
    let tenant = TenantId::local();
    let job_view = JobView {
        tenant: &tenant,
        placement: &request.placement,
        pool_only: false,
    };
    let worker_view = WorkerView {
        labels: &local_workers.labels,
        pool: None,
    };
    if !may_run(worker_view, job_view) {
        let wants: Vec<String> = request
            .placement
            .require
            .iter()
            .map(|r| r.to_string())
            .collect();
        let have: Vec<String> = local_workers
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        anyhow::bail!(
            "no local worker matches {} (their labels: {}; set them with --labels)",
            wants.join(","),
            if have.is_empty() {
                "none".to_string()
            } else {
                have.join(",")
            }
        );
    }
    let executor = Arc::new(Executor::with_compile_cache(workers, compile_cache)?);
    // Everything that can be wrong with the request is found before any
    // file is written.
    let (modules, map_bytes) = load_modules(&executor, map, reduce)?;
    let cache_report = executor.sandbox().compile_cache_report();
    let job = JobId::new();
    let span = tracing::info_span!("job", %job);
    let _enter = span.enter();
    let output = request.output.clone();
    let output_existed = output.exists();
    // Local workers cannot vanish; their attempts end by the sandbox's own
    // deadline. The lease only backs that up.
    let lease = Duration::from_millis(request.limits.timeout_ms) + Duration::from_secs(30);
    let (record, dirs) = lifecycle::plan_job(
        job,
        TenantId::local(),
        request,
        modules,
        crate::sampler::MapComponent {
            bytes: &map_bytes,
            sandbox: Some(executor.sandbox()),
        },
        work_root,
        clock().unix_ms,
    )?;
    let mut cluster = Cluster::new(ClusterConfig {
        heartbeat: lease,
        lease,
        shuffle: crate::model::Shuffle::SharedStore,
        work_root: work_root.to_path_buf(),
    });
    let pool = WorkerPool::start(executor, workers);
    for worker in 1..=workers {
        let name = format!("local-{worker}");
        let labels = local_workers.labels.clone();
        let id = cluster.worker_joined(clock(), name, 1, labels, None, None);
        debug_assert_eq!(id, WorkerId(worker));
    }
    let terms = TenantTerms {
        weight: 1,
        max_concurrent_attempts: u32::MAX,
        max_jobs_queued: 1,
        pool_only: false,
    };
    cluster.submit(
        clock(),
        Some(CLIENT),
        record,
        Capability::default(),
        terms,
        Vec::new(),
    );
    let mut cleanup = false;
    let summary = drive(&mut cluster, &pool, &dirs, &mut cleanup, on_progress);
    // In-flight attempts stop at their cancel flags before their files go.
    drop(pool);
    if cleanup {
        lifecycle::cleanup_job(&dirs);
    }
    let summary = summary?;
    if summary.outcome != crate::scheduler::JobOutcome::Completed && !output_existed {
        // A job that did not complete publishes nothing.
        let _ = std::fs::remove_dir(&output);
    }
    Ok(EmbeddedRun {
        summary,
        compile_cache: cache_report,
    })
}

/// Carry out effects and feed events until the job ends.
fn drive(
    cluster: &mut Cluster,
    pool: &WorkerPool,
    dirs: &JobDirs,
    cleanup: &mut bool,
    on_progress: &mut dyn FnMut(Progress),
) -> anyhow::Result<JobSummary> {
    let mut cancels: HashMap<(TaskId, AttemptEpoch), Arc<AtomicBool>> = HashMap::new();
    // The summary is returned only once every effect queued with it (the
    // job's cleanup comes after its final Persist) has been carried out.
    let mut done: Option<JobSummary> = None;
    loop {
        while let Some(effect) = cluster.poll_effect() {
            match effect {
                // Nothing of `wmr run` outlives the process.
                Effect::Persist(_) => {}
                Effect::Send { worker, message } => match message {
                    ToWorker::Assign(assignment) => {
                        let cancel = Arc::new(AtomicBool::new(false));
                        cancels.insert((assignment.task, assignment.epoch), cancel.clone());
                        pool.senders[&worker]
                            .send((*assignment, cancel))
                            .expect("worker threads outlive the job");
                    }
                    ToWorker::Interrupt { task, epoch, .. } => {
                        if let Some(cancel) = cancels.get(&(task, epoch)) {
                            cancel.store(true, Ordering::Relaxed);
                        }
                    }
                    // Reports travel over a channel that loses nothing;
                    // map outputs are in the shared work directory.
                    _ => {}
                },
                Effect::Reply { reply, .. } => match reply {
                    ClientReply::Progress {
                        phase,
                        committed,
                        running,
                        total,
                    } => on_progress(Progress {
                        phase,
                        committed,
                        running,
                        total,
                    }),
                    ClientReply::Done(summary) => {
                        for cancel in cancels.values() {
                            cancel.store(true, Ordering::Relaxed);
                        }
                        done = Some(*summary);
                    }
                    ClientReply::Error(e) => anyhow::bail!(e),
                    _ => {}
                },
                Effect::CommitAttempt { job, task, epoch } => {
                    let result = dirs
                        .commit_attempt(task, epoch)
                        .map_err(|e| format!("{e:#}"));
                    cluster.commit_finished(clock(), job, task, epoch, result);
                }
                Effect::DiscardAttempt { task, epoch, .. } => {
                    if let Err(e) = dirs.abort_attempt(task, epoch) {
                        tracing::warn!(%task, %epoch, "discarding attempt files: {e:#}");
                    }
                }
                Effect::CommitJob { job, dead_letters } => {
                    let result = lifecycle::commit_job(dirs, &dead_letters);
                    cluster.job_committed(clock(), job, result);
                }
                // Carried out once the worker threads have stopped.
                Effect::CleanupJob { .. } => *cleanup = true,
            }
        }
        if let Some(summary) = done {
            return Ok(summary);
        }
        let wait = cluster
            .poll_timeout()
            .map(|t| t.saturating_duration_since(std::time::Instant::now()))
            .unwrap_or(Duration::from_secs(3600));
        match pool.reports.recv_timeout(wait) {
            Ok(report) => {
                cancels.remove(&(report.task, report.epoch));
                let worker = report.worker;
                cluster.from_worker(clock(), worker, FromWorker::Finished(report));
                // A report is proof of life: the embedded workers send no
                // heartbeats, and a worker marked suspect when a lease ran
                // out would otherwise never be given work again (a job
                // whose every worker was suspect hung; issue 10).
                cluster.from_worker(clock(), worker, FromWorker::Heartbeat);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => cluster.handle_timeout(clock()),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                anyhow::bail!("all workers stopped");
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

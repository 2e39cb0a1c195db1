//! `wmr worker`: joins a coordinator over QUIC and runs attempts.
//!
//! The worker never gives up on a transient error: when the connection
//! drops it reconnects with capped exponential backoff and re-sends the
//! reports the coordinator has not acknowledged (a report is idempotent:
//! the coordinator accepts it once and rejects stale epochs). On SIGTERM it
//! drains: it tells the coordinator, takes nothing new, finishes what runs,
//! delivers the reports, then exits.

use crate::attempt_ledger::{AttemptKey, AttemptLedger};
use crate::commit::JobDirs;
use crate::executor::Executor;
use crate::model::{
    Assignment, AttemptFailure, AttemptReport, Capability, JobId, ModuleHash, Peer, Shuffle,
    TaskId, TaskInput, WorkerId,
};
use crate::sandbox::Role;
use crate::transport::{self, Channel};
use crate::wire::{
    ANNOUNCE_CHUNK, FromWorker, HeldOutput, ModuleReply, Open, PARTITION_CHUNK_BYTES,
    PartitionReply, ToWorker,
};
use anyhow::{Context as _, bail};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, mpsc};

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// What the worker proposes as its session's QUIC idle timeout: longer
/// than any lease, so that the coordinator's (three leases, I13 in
/// ARCHITECTURE.md) is the one that counts (QUIC takes the smaller).
const SESSION_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
/// One attempt to reach the coordinator. A handshake whose packets are
/// lost is retried with QUIC's doubling probe timeout, so a long attempt
/// would reach a coordinator that came back (or a healed link) late; a
/// fresh attempt after the backoff sends at once.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Silence after which a shuffle connection counts as lost: a fetch from
/// a holder cut off mid-transfer fails after this (`FetchFailed`).
const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a reducer waits to connect to a worker holding map output.
const FETCH_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone, Debug)]
pub struct WorkerOptions {
    pub coordinator: SocketAddr,
    pub fingerprint: String,
    pub slots: u32,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// Fault injection: exit abruptly at the start of a task with this
    /// probability (the MIT lab's `maybeCrash`).
    pub crash_probability: f64,
    /// Fetched modules, by hash.
    pub cache_dir: PathBuf,
    /// Compiled components on disk (`None`: compile every module).
    pub compile_cache: Option<crate::compile_cache::CacheOptions>,
    /// Map outputs this worker keeps (worker-local shuffle).
    pub work_dir: PathBuf,
    /// Where this worker serves map outputs to reducers.
    pub shuffle_listen: SocketAddr,
    /// The cluster's worker token (empty in development mode).
    pub token: String,
}

/// The coordinator refused this worker (wrong worker token).
#[derive(Debug, thiserror::Error)]
#[error("the coordinator refused this worker: {0}")]
struct Refused(String);

/// What outlives a connection: the report protocol's state machine and the
/// interrupt flags of the running attempts.
#[derive(Default)]
struct WorkerState {
    ledger: Mutex<AttemptLedger>,
    cancels: Mutex<HashMap<AttemptKey, Arc<AtomicBool>>>,
    /// Wakes the session (a permit is kept if it is busy writing, so no
    /// report waits for the next heartbeat).
    changed: Notify,
    /// The tenant this worker is dedicated to, as the coordinator's
    /// welcome said (its worker token decides).
    pool: Mutex<Option<crate::model::TenantId>>,
}

impl WorkerState {
    fn ledger(&self) -> std::sync::MutexGuard<'_, AttemptLedger> {
        self.ledger.lock().expect("poisoned")
    }
}

/// The file next to a job's map outputs holding the job's shuffle
/// capability, as the worker received it with an assignment.
pub const CAPABILITY_FILE: &str = "capability";
/// The file next to a job's map outputs holding the job's full id (the
/// directory name has only its first 8 hex digits).
pub const JOB_ID_FILE: &str = "job-id";
/// The file in a worker's work dir holding its durable identity.
pub const IDENTITY_FILE: &str = "worker-id";

/// Run until drained after `shutdown` resolves.
pub async fn run(
    options: WorkerOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    run_as(options, None, shutdown).await
}

/// [`run`], presenting `identity` as this worker's client certificate to
/// the coordinator (mutual TLS, `wmr worker --identity DIR`).
pub async fn run_as(
    options: WorkerOptions,
    identity: Option<transport::Identity>,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let client_identity = identity;
    // Durable across the coordinator's restarts and this worker's own: its
    // certificate under --identity, else an id kept in the work dir.
    let durable_identity = match &client_identity {
        Some(certificate) => format!("tls:{}", certificate.fingerprint()),
        None => load_or_create_identity(&options.work_dir)?,
    };
    let executor = Arc::new(Executor::with_compile_cache(
        options.slots,
        options.compile_cache.as_ref(),
    )?);
    let state = Arc::new(WorkerState::default());
    let identity = transport::Identity::ephemeral()?;
    let shuffle_endpoint =
        transport::server_endpoint(&identity, options.shuffle_listen, IDLE_TIMEOUT)?;
    let peer = Peer {
        addr: shuffle_endpoint.local_addr()?,
        fingerprint: identity.fingerprint(),
    };
    tracing::info!(addr = %peer.addr, fingerprint = %peer.fingerprint, "serving map outputs");
    let shuffle_server = tokio::spawn(serve_shuffle(
        shuffle_endpoint.clone(),
        options.work_dir.clone(),
    ));
    let result = serve(
        &options,
        client_identity.as_ref(),
        &durable_identity,
        &peer,
        &executor,
        &state,
        shutdown,
    )
    .await;
    // Reducers can no longer fetch from here: close the shuffle endpoint.
    shuffle_endpoint.close(quinn::VarInt::from_u32(0), b"worker stopped");
    shuffle_server.abort();
    result
}

/// Sessions, one after another, until drained or refused.
async fn serve(
    options: &WorkerOptions,
    identity: Option<&transport::Identity>,
    durable_identity: &str,
    peer: &Peer,
    executor: &Arc<Executor>,
    state: &Arc<WorkerState>,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let mut backoff = BACKOFF_MIN;
    tokio::pin!(shutdown);
    let mut shutdown_seen = false;
    loop {
        // The session is never dropped for a shutdown: it sees the draining
        // flag, tells the coordinator, and ends once everything is reported.
        let result = {
            let session = session(
                options,
                identity,
                durable_identity,
                peer,
                executor,
                state,
                &mut backoff,
            );
            tokio::pin!(session);
            loop {
                tokio::select! {
                    result = &mut session => break result,
                    () = &mut shutdown, if !shutdown_seen => {
                        shutdown_seen = true;
                        state.ledger().drain();
                        state.changed.notify_one();
                    }
                }
            }
        };
        match result {
            Ok(()) => return Ok(()),
            // Retrying cannot fix a refusal.
            Err(e) if e.downcast_ref::<Refused>().is_some() => return Err(e),
            Err(e) => tracing::warn!("{e:#}; reconnecting in {backoff:?}"),
        }
        if state.ledger().drained() {
            return Ok(());
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// One connection's life. Returns `Ok` only when drained.
async fn session(
    options: &WorkerOptions,
    identity: Option<&transport::Identity>,
    durable_identity: &str,
    peer: &Peer,
    executor: &Arc<Executor>,
    state: &Arc<WorkerState>,
    backoff: &mut Duration,
) -> anyhow::Result<()> {
    let connect = transport::connect_as(
        options.coordinator,
        &options.fingerprint,
        SESSION_IDLE_TIMEOUT,
        identity,
    );
    let (_endpoint, connection) = tokio::time::timeout(CONNECT_TIMEOUT, connect)
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "no answer from {} within {CONNECT_TIMEOUT:?}",
                options.coordinator
            )
        })??;
    let mut control = Channel::open(&connection).await?;
    control
        .write(&Open::Worker {
            name: options.name.clone(),
            slots: options.slots,
            labels: options.labels.clone(),
            shuffle: Some(peer.clone()),
            token: options.token.clone(),
            identity: durable_identity.to_string(),
        })
        .await?;
    let (worker, heartbeat_ms) = match control.expect().await? {
        ToWorker::Welcome {
            worker,
            heartbeat_ms,
            pool,
        } => {
            *state.pool.lock().expect("poisoned") = pool;
            (worker, heartbeat_ms)
        }
        ToWorker::Refused(reason) => return Err(Refused(reason).into()),
        _ => bail!("the coordinator did not welcome this worker"),
    };
    *backoff = BACKOFF_MIN;
    let span = tracing::info_span!("worker", %worker);
    let _enter = span.enter();
    tracing::info!(coordinator = %options.coordinator, "joined");
    // First thing: the committed map outputs kept here, so that a restarted
    // coordinator can adopt them instead of running their tasks again.
    let work_dir = options.work_dir.clone();
    let held = tokio::task::spawn_blocking(move || held_outputs(&work_dir))
        .await
        .context("scanning the work dir")?;
    if !held.is_empty() {
        tracing::info!(outputs = held.len(), "announcing the map outputs kept here");
    }
    for chunk in held.chunks(ANNOUNCE_CHUNK) {
        write(&mut control.send, &FromWorker::Announce(chunk.to_vec())).await?;
    }

    // A reader task: frame reads are not cancel-safe, so they never race
    // in a select.
    let (inbound_tx, mut inbound) = mpsc::unbounded_channel();
    let mut recv = control.recv;
    let reader = tokio::spawn(async move {
        loop {
            let frame = transport::read_frame::<ToWorker>(&mut recv).await;
            let end = !matches!(frame, Ok(Some(_)));
            if inbound_tx.send(frame).is_err() || end {
                return;
            }
        }
    });
    let mut send = control.send;
    // Commit results; reports and `Draining` come from the ledger.
    let (outbound, mut outgoing) = mpsc::unbounded_channel::<FromWorker>();
    state.ledger().connected();
    let mut heartbeat = tokio::time::interval(Duration::from_millis(heartbeat_ms.max(10)));
    let result = loop {
        // What the ledger wants said (re-sent reports first), in order.
        let pending: Vec<FromWorker> = std::iter::from_fn(|| state.ledger().poll_send()).collect();
        let mut failed = None;
        for message in &pending {
            if let Err(e) = write(&mut send, message).await {
                failed = Some(e);
                break;
            }
        }
        if let Some(e) = failed {
            break Err(e);
        }
        if state.ledger().drained() {
            break Ok(());
        }
        tokio::select! {
            _ = heartbeat.tick() => {
                if let Err(e) = write(&mut send, &FromWorker::Heartbeat).await { break Err(e) }
            }
            Some(message) = outgoing.recv() => {
                if let Err(e) = write(&mut send, &message).await { break Err(e) }
            }
            frame = inbound.recv() => match frame {
                Some(Ok(Some(message))) => handle(message, worker, options, executor, state, &connection, &outbound),
                Some(Ok(None)) | None => break Err(anyhow::anyhow!("the coordinator closed the connection")),
                Some(Err(e)) => break Err(anyhow::anyhow!("from the coordinator: {e}")),
            },
            () = state.changed.notified() => {}
        }
    };
    // What was not written is sent again on the next session.
    state.ledger().disconnected();
    reader.abort();
    connection.close(quinn::VarInt::from_u32(0), b"worker leaving");
    result
}

async fn write(send: &mut quinn::SendStream, message: &FromWorker) -> anyhow::Result<()> {
    send.write_all(&transport::encode(message))
        .await
        .context("writing to the coordinator")
}

fn handle(
    message: ToWorker,
    worker: WorkerId,
    options: &WorkerOptions,
    executor: &Arc<Executor>,
    state: &Arc<WorkerState>,
    connection: &quinn::Connection,
    outbound: &mpsc::UnboundedSender<FromWorker>,
) {
    match message {
        ToWorker::Assign(assignment) => {
            if options.crash_probability > 0.0 && rand::random::<f64>() < options.crash_probability
            {
                tracing::warn!(task = %assignment.task, "fault injection: crashing");
                std::process::exit(3);
            }
            let key = (assignment.job, assignment.task, assignment.epoch);
            if !state.ledger().assigned(key) {
                tracing::warn!(job = %key.0, task = %key.1, epoch = %key.2, "ignoring a repeated assignment");
                return;
            }
            let cancel = Arc::new(AtomicBool::new(false));
            state
                .cancels
                .lock()
                .expect("poisoned")
                .insert(key, cancel.clone());
            let mut assignment = *assignment;
            let pool = state.pool.lock().expect("poisoned").clone();
            if let Some(pool) = pool.filter(|t| *t != assignment.tenant) {
                // Defence in depth: the coordinator never places another
                // tenant's attempt here, and this worker never runs one.
                tracing::warn!(job = %key.0, task = %key.1, epoch = %key.2, "refusing another tenant's attempt");
                state.cancels.lock().expect("poisoned").remove(&key);
                state.ledger().finished(AttemptReport {
                    job: key.0,
                    task: key.1,
                    epoch: key.2,
                    worker,
                    outcome: Err(crate::model::AttemptFailure::Host(format!(
                        "this worker is dedicated to tenant {}",
                        pool.0
                    ))),
                    log: String::new(),
                });
                state.changed.notify_one();
                return;
            }
            if let Shuffle::Object(_) = assignment.shuffle {
                // Attempt files are written here, then uploaded (map
                // outputs) or read into here (reduces): this worker's own
                // directory, no path shared with another process.
                assignment.work_root = options.work_dir.clone();
            }
            if assignment.shuffle == Shuffle::WorkerLocal {
                // Map outputs stay here, in this worker's own directory.
                assignment.work_root = options.work_dir.clone();
                // Reducers must present the job's capability to read them.
                if let Err(e) = record_capability(options, assignment.job, &assignment.capability) {
                    tracing::warn!(job = %assignment.job, "recording the shuffle capability: {e:#}");
                }
            }
            let (executor, state, connection, cache) = (
                executor.clone(),
                state.clone(),
                connection.clone(),
                options.cache_dir.clone(),
            );
            tokio::spawn(async move {
                let report =
                    run_attempt(assignment, worker, cancel, executor, &connection, &cache).await;
                state.cancels.lock().expect("poisoned").remove(&key);
                // Kept until acknowledged; sent on this session or the next.
                state.ledger().finished(report);
                state.changed.notify_one();
            });
        }
        ToWorker::Interrupt { job, task, epoch } => {
            if let Some(cancel) = state
                .cancels
                .lock()
                .expect("poisoned")
                .get(&(job, task, epoch))
            {
                tracing::info!(%job, %task, %epoch, "interrupting attempt");
                cancel.store(true, Ordering::SeqCst);
            }
        }
        ToWorker::Ack { job, task, epoch } => {
            state.ledger().acked((job, task, epoch));
            state.changed.notify_one();
        }
        ToWorker::Commit { job, task, epoch } => {
            let (outbound, dirs) = (outbound.clone(), local_dirs(options, job));
            tokio::task::spawn_blocking(move || {
                let result = dirs
                    .commit_attempt(task, epoch)
                    .map_err(|e| format!("{e:#}"));
                let _ = outbound.send(FromWorker::Committed {
                    job,
                    task,
                    epoch,
                    result,
                });
            });
        }
        ToWorker::Discard { job, task, epoch } => {
            if let Err(e) = local_dirs(options, job).abort_attempt(task, epoch) {
                tracing::warn!(%job, %task, %epoch, "discarding: {e:#}");
            }
        }
        ToWorker::Release { job, task, epoch } => {
            let path = local_dirs(options, job).committed_path(task, epoch);
            match std::fs::remove_file(&path) {
                Ok(()) => tracing::info!(%job, %task, %epoch, "released a map output"),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!(%job, %task, %epoch, "releasing a map output: {e}"),
            }
        }
        ToWorker::JobDone { job } => {
            let dirs = local_dirs(options, job);
            if let Err(e) = std::fs::remove_dir_all(&dirs.work)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(%job, "removing map outputs: {e:#}");
            }
        }
        ToWorker::Welcome { .. } | ToWorker::Refused(_) => {
            tracing::warn!("unexpected second welcome ignored")
        }
    }
}

async fn run_attempt(
    assignment: crate::model::Assignment,
    worker: WorkerId,
    cancel: Arc<AtomicBool>,
    executor: Arc<Executor>,
    connection: &quinn::Connection,
    cache: &std::path::Path,
) -> AttemptReport {
    let role = match assignment.task {
        TaskId::Map(_) => Role::Map,
        TaskId::Reduce(_) => Role::Reduce,
    };
    if !executor.has_module(&assignment.module, role) {
        let loaded = match fetch_module(connection, &assignment.module, cache).await {
            Ok(bytes) => {
                let executor = executor.clone();
                tokio::task::spawn_blocking(move || executor.add_module(&bytes, role).map(|_| ()))
                    .await
                    .unwrap_or_else(|e| Err(anyhow::anyhow!("compiling: {e}")))
            }
            Err(e) => Err(e),
        };
        if let Err(e) = loaded {
            return AttemptReport {
                job: assignment.job,
                task: assignment.task,
                epoch: assignment.epoch,
                worker,
                outcome: Err(crate::model::AttemptFailure::Host(format!(
                    "module {}: {e:#}",
                    assignment.module
                ))),
                log: String::new(),
            };
        }
    }
    let (job, task, epoch) = (assignment.job, assignment.task, assignment.epoch);
    let fetched = match fetch_map_outputs(&assignment, worker, &assignment.work_root).await {
        Ok(fetched) => fetched,
        Err(failure) => {
            let dirs = JobDirs::new(job, &assignment.work_root, std::path::Path::new(""));
            let _ = std::fs::remove_dir_all(dirs.reduce_scratch(task, epoch));
            return AttemptReport {
                job,
                task,
                epoch,
                worker,
                outcome: Err(failure),
                log: String::new(),
            };
        }
    };
    tokio::task::spawn_blocking(move || {
        executor.execute_with_inputs(&assignment, worker, cancel, fetched)
    })
    .await
    .unwrap_or_else(|e| AttemptReport {
        job,
        task,
        epoch,
        worker,
        outcome: Err(crate::model::AttemptFailure::Host(format!(
            "attempt panicked: {e}"
        ))),
        log: String::new(),
    })
}

/// A module from the disk cache, or fetched from the coordinator once and
/// checked against its hash before it is cached or compiled.
async fn fetch_module(
    connection: &quinn::Connection,
    hash: &ModuleHash,
    cache: &std::path::Path,
) -> anyhow::Result<Vec<u8>> {
    let cached = cache.join(format!("{}.wasm", hash.0));
    if let Ok(bytes) = std::fs::read(&cached)
        && ModuleHash::of(&bytes) == *hash
    {
        return Ok(bytes);
    }
    let mut channel = Channel::open(connection).await?;
    channel.write(&Open::FetchModule(hash.clone())).await?;
    let bytes = match channel.expect::<ModuleReply>().await? {
        ModuleReply::Found(bytes) => bytes,
        ModuleReply::Missing => bail!("the coordinator does not have module {hash}"),
        ModuleReply::Refused(reason) => bail!("module {hash}: {reason}"),
    };
    if ModuleHash::of(&bytes) != *hash {
        bail!("module {hash}: received bytes do not match the hash");
    }
    std::fs::create_dir_all(cache).with_context(|| format!("creating {}", cache.display()))?;
    // Several workers may share the cache: each writes its own temporary.
    let tmp = cached.with_extension(format!(
        "{}.{}.tmp",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::write(&tmp, &bytes)?;
    std::fs::rename(&tmp, &cached)?;
    Ok(bytes)
}

/// Keep `job`'s shuffle capability in `job-<id>/capability` (0600) under
/// the work dir, where the shuffle endpoint checks fetches against it.
/// Removed with the job's map outputs (`JobDone`).
fn record_capability(
    options: &WorkerOptions,
    job: JobId,
    capability: &Capability,
) -> anyhow::Result<()> {
    anyhow::ensure!(!capability.0.is_empty(), "the assignment carries none");
    let dir = local_dirs(options, job).work;
    let path = dir.join(CAPABILITY_FILE);
    if std::fs::read_to_string(&path).is_ok_and(|known| known == capability.0) {
        return Ok(());
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    // The job's full id, for re-announcing its map outputs.
    let id_path = dir.join(JOB_ID_FILE);
    std::fs::write(&id_path, job.0.simple().to_string())
        .with_context(|| format!("{}", id_path.display()))?;
    write_private_atomically(&path, capability.0.as_bytes())
}

/// Write `bytes` to `path` readable by this user only (0600), replacing it
/// atomically: a crash leaves the old file or the new one, never a torn one.
fn write_private_atomically(path: &std::path::Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = path.with_extension(format!("{}.tmp", rand::random::<u32>()));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("{}", tmp.display()))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path).with_context(|| format!("{}", path.display()))
}

/// This worker's durable identity from `work_dir/worker-id`, created (32
/// random hex digits, 0600) on first start.
fn load_or_create_identity(work_dir: &std::path::Path) -> anyhow::Result<String> {
    let path = work_dir.join(IDENTITY_FILE);
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => return Ok(id.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    std::fs::create_dir_all(work_dir)
        .with_context(|| format!("creating {}", work_dir.display()))?;
    let id = format!("{:032x}", rand::random::<u128>());
    write_private_atomically(&path, id.as_bytes())?;
    tracing::info!(identity = %id, "created this worker's identity in {}", path.display());
    Ok(id)
}

/// The committed map outputs under `work_dir` (`job-*/map/m-NNNNN.aE`, in
/// job directories that name their job), each with the digest of its bytes
/// as they are now. Unreadable entries are skipped: not announced, they
/// are not adopted, and their tasks run again.
fn held_outputs(work_dir: &std::path::Path) -> Vec<HeldOutput> {
    let mut held = Vec::new();
    let Ok(jobs) = std::fs::read_dir(work_dir) else {
        return held;
    };
    for entry in jobs.flatten() {
        let dir = entry.path();
        let Some(job) = std::fs::read_to_string(dir.join(JOB_ID_FILE))
            .ok()
            .and_then(|id| uuid::Uuid::parse_str(id.trim()).ok())
            .map(JobId)
        else {
            continue;
        };
        let Ok(outputs) = std::fs::read_dir(dir.join("map")) else {
            continue;
        };
        for output in outputs.flatten() {
            let name = output.file_name();
            let Some((task, epoch)) = name.to_str().and_then(parse_committed_map_name) else {
                continue;
            };
            match crate::intermediate::digest_file(&output.path()) {
                Ok(digest) => held.push(HeldOutput {
                    job,
                    task,
                    epoch,
                    digest,
                }),
                Err(e) => tracing::warn!(%job, %task, %epoch, "not announced: {e:#}"),
            }
        }
    }
    held.sort_by_key(|h| (h.job, h.task, h.epoch));
    held
}

/// `m-00003.a2` → (m-00003, a2), as [`JobDirs::committed_path`] names them.
fn parse_committed_map_name(name: &str) -> Option<(TaskId, crate::model::AttemptEpoch)> {
    let (task, epoch) = name.strip_prefix("m-")?.split_once(".a")?;
    let task = TaskId::Map(task.parse().ok()?);
    let epoch = crate::model::AttemptEpoch(epoch.parse().ok()?);
    (JobDirs::new(
        JobId(uuid::Uuid::nil()),
        std::path::Path::new(""),
        std::path::Path::new(""),
    )
    .committed_path(task, epoch)
    .file_name()?
        == name)
        .then_some((task, epoch))
}

/// Whether `presented` is the capability this worker received for `job`.
async fn authorised(work_dir: &std::path::Path, job: JobId, presented: &Capability) -> bool {
    let dirs = JobDirs::new(job, work_dir, std::path::Path::new(""));
    match tokio::fs::read_to_string(dirs.work.join(CAPABILITY_FILE)).await {
        Ok(known) => Capability(known).admits(&presented.0),
        Err(_) => false,
    }
}

/// This worker's directories for `job` (map outputs only; the output
/// directory is not used here).
fn local_dirs(options: &WorkerOptions, job: JobId) -> JobDirs {
    JobDirs::new(job, &options.work_dir, std::path::Path::new(""))
}

/// A reduce task's inputs under worker-local shuffle: every map output's
/// partition, fetched from the worker holding it (this one included) and
/// spooled to a file in the attempt's scratch directory, chunk by chunk.
/// `None` for every other task. A fetch that fails names the map task so
/// that the coordinator runs it again; blocks are checked when read.
async fn fetch_map_outputs(
    assignment: &Assignment,
    me: WorkerId,
    work_dir: &std::path::Path,
) -> Result<Option<Vec<PathBuf>>, AttemptFailure> {
    let TaskInput::Reduce {
        partition,
        map_outputs,
    } = &assignment.input
    else {
        return Ok(None);
    };
    if assignment.shuffle != Shuffle::WorkerLocal {
        return Ok(None);
    }
    let scratch = JobDirs::new(assignment.job, work_dir, std::path::Path::new(""))
        .reduce_scratch(assignment.task, assignment.epoch);
    let mut fetched = Vec::with_capacity(map_outputs.len());
    let mut connections: HashMap<WorkerId, (quinn::Endpoint, quinn::Connection)> = HashMap::new();
    for (i, &(map_task, map_epoch, holder)) in map_outputs.iter().enumerate() {
        let failed = |reason: String| AttemptFailure::FetchFailed {
            map_task,
            map_epoch,
            worker: holder,
            reason,
        };
        let request = Open::FetchPartition {
            job: assignment.job,
            task: map_task,
            epoch: map_epoch,
            partition: *partition,
            capability: assignment.capability.clone(),
        };
        let peer = assignment
            .peers
            .get(&holder)
            .ok_or_else(|| failed("no shuffle address for that worker".into()))?;
        if holder == me {
            tracing::trace!(%map_task, "map output is local, fetching through the endpoint anyway");
        }
        let connection = match connections.entry(holder) {
            std::collections::hash_map::Entry::Occupied(entry) => entry.into_mut(),
            std::collections::hash_map::Entry::Vacant(entry) => {
                // A dead holder must not keep this reducer (and its slot)
                // for the whole idle timeout: fail fast, the map reruns.
                let connect = transport::connect(peer.addr, &peer.fingerprint, IDLE_TIMEOUT);
                let connected = tokio::time::timeout(FETCH_CONNECT_TIMEOUT, connect)
                    .await
                    .map_err(|_| failed(format!("no answer within {FETCH_CONNECT_TIMEOUT:?}")))?
                    .map_err(|e| failed(format!("{e:#}")))?;
                entry.insert(connected)
            }
        };
        let path = scratch.join(format!("{i}.blocks"));
        spool_partition(&connection.1, &request, &scratch, &path)
            .await
            .map_err(|e| match e {
                // This worker's own disk (full, say): the reduce attempt
                // fails and runs elsewhere; the map output is fine.
                Spool::Local(e) => AttemptFailure::Host(format!(
                    "spooling the output of {map_task} {map_epoch}: {e:#}"
                )),
                Spool::Peer(e) => failed(format!("{e:#}")),
            })?;
        fetched.push(path);
    }
    Ok(Some(fetched))
}

/// Fetch one partition into `path`, a chunk at a time.
/// Why a partition could not be spooled: this worker's own files, or the
/// peer (unreachable, missing, corrupt on the wire).
enum Spool {
    Local(anyhow::Error),
    Peer(anyhow::Error),
}

async fn spool_partition(
    connection: &quinn::Connection,
    request: &Open,
    scratch: &std::path::Path,
    path: &std::path::Path,
) -> Result<(), Spool> {
    use tokio::io::AsyncWriteExt as _;
    let local = |e: std::io::Error, what: &str| {
        Spool::Local(anyhow::Error::new(e).context(format!("{what} {}", path.display())))
    };
    tokio::fs::create_dir_all(scratch)
        .await
        .map_err(|e| local(e, "creating the directory of"))?;
    let mut file = tokio::fs::File::create(path)
        .await
        .map_err(|e| local(e, "creating"))?;
    let peer = Spool::Peer;
    let mut channel = Channel::open(connection).await.map_err(peer)?;
    channel
        .write(request)
        .await
        .map_err(|e| peer(anyhow::Error::new(e)))?;
    let mut received: u64 = 0;
    loop {
        match channel.expect::<PartitionReply>().await.map_err(peer)? {
            PartitionReply::Chunk(bytes) => {
                received += bytes.len() as u64;
                file.write_all(&bytes)
                    .await
                    .map_err(|e| local(e, "writing"))?;
            }
            PartitionReply::End { bytes } => {
                if bytes != received {
                    return Err(peer(anyhow::anyhow!(
                        "the partition ended after {received} of {bytes} bytes"
                    )));
                }
                // Written data reaches the file (or fails: a full disk)
                // only here.
                file.flush().await.map_err(|e| local(e, "writing"))?;
                return Ok(());
            }
            PartitionReply::Missing(reason) => return Err(peer(anyhow::anyhow!("{reason}"))),
        }
    }
}

/// Stream partition `partition` of the map output at `path` as chunks and
/// an end frame. An error before the first chunk is answered as missing.
async fn send_partition(
    channel: &mut Channel,
    path: &std::path::Path,
    partition: u32,
) -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _};
    let range = {
        let path = path.to_path_buf();
        tokio::task::spawn_blocking(move || crate::intermediate::partition_range(&path, partition))
            .await??
    };
    let mut file = tokio::fs::File::open(path).await?;
    file.seek(std::io::SeekFrom::Start(range.0)).await?;
    let mut left = range.1 - range.0;
    let mut chunk = vec![0u8; PARTITION_CHUNK_BYTES];
    while left > 0 {
        let n = (left as usize).min(PARTITION_CHUNK_BYTES);
        file.read_exact(&mut chunk[..n]).await?;
        // Once a chunk is out, a failure can only end the stream: the
        // reducer sees no End and fails the fetch.
        channel
            .write(&PartitionReply::Chunk(chunk[..n].to_vec()))
            .await?;
        left -= n as u64;
    }
    channel
        .write(&PartitionReply::End {
            bytes: range.1 - range.0,
        })
        .await?;
    let _ = channel.send.finish();
    let _ = channel.send.stopped().await;
    Ok(())
}

/// The refusal of a partition fetch without the job's capability (the
/// same whether the job is unknown here or the capability is wrong).
pub fn not_authorised(job: JobId) -> String {
    format!("not authorised: no valid shuffle capability for job {job}")
}

/// Serve this worker's committed map outputs to reducers, to requests
/// carrying the job's capability.
async fn serve_shuffle(endpoint: quinn::Endpoint, work_dir: PathBuf) {
    while let Some(incoming) = endpoint.accept().await {
        let work_dir = work_dir.clone();
        tokio::spawn(async move {
            let Ok(connection) = incoming.await else {
                return;
            };
            let peer = connection.remote_address();
            // Every log line of this connection (bad frames too) names the peer.
            let span = tracing::info_span!("shuffle", %peer);
            while let Ok((send, recv)) = connection.accept_bi().await {
                let mut channel = Channel { send, recv };
                let work_dir = work_dir.clone();
                let stream = async move {
                    let reply = match channel.read::<Open>().await {
                        Ok(Some(Open::FetchPartition {
                            job,
                            task,
                            epoch,
                            partition,
                            capability,
                        })) => {
                            if authorised(&work_dir, job, &capability).await {
                                let dirs = JobDirs::new(job, &work_dir, std::path::Path::new(""));
                                let path = dirs.committed_path(task, epoch);
                                // Sent as it is: the reducer checks every
                                // block, so corruption here or on the way
                                // is caught there.
                                match send_partition(&mut channel, &path, partition).await {
                                    Ok(()) => return,
                                    Err(e) => {
                                        PartitionReply::Missing(format!("{task} {epoch}: {e:#}"))
                                    }
                                }
                            } else {
                                tracing::warn!(%job, %task, %epoch, partition, "partition fetch refused: wrong or missing capability");
                                PartitionReply::Missing(not_authorised(job))
                            }
                        }
                        Ok(_) => PartitionReply::Missing(
                            "a shuffle endpoint only serves partitions".into(),
                        ),
                        Err(error) => {
                            channel.reject(&error);
                            return;
                        }
                    };
                    let _ = channel.write(&reply).await;
                    let _ = channel.send.finish();
                    let _ = channel.send.stopped().await;
                };
                tokio::spawn(tracing::Instrument::instrument(stream, span.clone()));
            }
        });
    }
}

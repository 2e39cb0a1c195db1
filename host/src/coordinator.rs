//! `wmr coordinator`: the QUIC server around the scheduler.
//!
//! One task (the core) owns all state: the jobs' schedulers, the workers and
//! their outbound queues. Connection tasks only translate frames into
//! [`CoreEvent`]s and back, so every decision is made by the sans-IO
//! scheduler, in one place, in order. Jobs share the workers: slots are
//! split between tenants by weight, then between each tenant's jobs
//! (`rebalance`). Storage is shared (coordinator and workers see the same filesystem), so
//! the core commits and discards attempt files itself.

use crate::cluster::{ClientId, Cluster, ClusterConfig, Effect, TenantTerms};
use crate::commit::JobDirs;
use crate::lifecycle::{self, clock};
use crate::model::{
    AttemptEpoch, Capability, JobId, ModuleHash, Peer, Shuffle, TenantId, WorkerId,
};
use crate::records::JobRecord;
use crate::store::StateStore;
use crate::tenants::{self, Principal};
use crate::transport::{self, Channel, Identity};
use crate::wire::{
    ClientReply, ClientRequest, FromWorker, JobRequest, ModuleReply, Open, PartitionReply, ToWorker,
};
use anyhow::Context as _;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

#[derive(Clone, Debug)]
pub struct CoordinatorConfig {
    pub listen: SocketAddr,
    pub state_dir: PathBuf,
    /// Intermediate data (must be visible to every worker).
    pub work_root: PathBuf,
    pub lease: Duration,
    pub heartbeat: Duration,
    /// Where map outputs live: on the workers (default), in `work_root`
    /// (`--shared-store`, shared by all) or in an object store
    /// (`--shuffle-store s3://…`).
    pub shuffle: Shuffle,
    /// Keep the job state in memory only (nothing survives a restart).
    pub ephemeral_state: bool,
    /// Serve `/metrics` and `/api/...` here ([`crate::web`]).
    pub http: Option<SocketAddr>,
    /// How long a restored job waits for workers to re-announce its
    /// committed map outputs (`None`: twice the lease plus 10 s).
    pub reannounce_window: Option<Duration>,
}

impl CoordinatorConfig {
    /// A lease must outlast several heartbeats, or a healthy worker loses
    /// its attempts to one delayed packet.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.lease >= self.heartbeat * 3,
            "--lease ({:?}) must be at least 3 heartbeats ({:?})",
            self.lease,
            self.heartbeat
        );
        Ok(())
    }
}

pub use wmr_core::cluster::SESSION_IDLE_LEASES;

type Modules = Arc<RwLock<HashMap<ModuleHash, Arc<Vec<u8>>>>>;

/// `STATE/worker-fingerprints`: when it exists, mutual TLS is on for
/// workers: a worker stream is admitted only from a peer whose client
/// certificate has one of the listed SHA-256 fingerprints (re-read at every
/// join, like `tenants.toml`).
pub const WORKER_FINGERPRINTS: &str = "worker-fingerprints";

/// `wmr tenant allow-worker`: add a worker certificate's fingerprint to
/// `STATE/worker-fingerprints` (creating it turns mutual TLS on).
pub fn allow_worker(state_dir: &std::path::Path, fingerprint: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let fingerprint = fingerprint.trim().to_ascii_lowercase();
    anyhow::ensure!(
        fingerprint.len() == 64 && fingerprint.bytes().all(|b| b.is_ascii_hexdigit()),
        "{fingerprint:?} is not a SHA-256 fingerprint (64 hex digits)"
    );
    std::fs::create_dir_all(state_dir)
        .with_context(|| format!("creating {}", state_dir.display()))?;
    let path = state_dir.join(WORKER_FINGERPRINTS);
    if path.exists() && transport::load_fingerprints(&path)?.contains(&fingerprint) {
        return Ok(());
    }
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("{}", path.display()))?;
    writeln!(file, "{fingerprint}").with_context(|| format!("{}", path.display()))?;
    Ok(())
}

/// Admit a worker's control stream: the worker token, and under mutual TLS
/// the fingerprint of the certificate the peer proved it holds.
/// Returns the tenant a pool token dedicates the worker to.
fn admit_worker(
    state_dir: &std::path::Path,
    token: &str,
    connection: &quinn::Connection,
) -> anyhow::Result<Option<TenantId>> {
    let pool = tenants::authenticate_worker(state_dir, token)?;
    let path = state_dir.join(WORKER_FINGERPRINTS);
    if !path.exists() {
        return Ok(pool);
    }
    let allowed = transport::load_fingerprints(&path)?;
    match transport::peer_fingerprint(connection) {
        None => anyhow::bail!(
            "mutual TLS is required: this worker presented no certificate (start it with --identity DIR)"
        ),
        Some(seen) if !allowed.contains(&seen) => {
            anyhow::bail!("this worker's certificate {seen} is not an allowed worker certificate")
        }
        Some(_) => Ok(pool),
    }
}

/// An admitted worker, as its `Open::Worker` frame and token described it.
struct WorkerHello {
    name: String,
    slots: u32,
    labels: BTreeMap<String, String>,
    /// The tenant whose pool token it joined with.
    pool: Option<TenantId>,
    shuffle: Option<Peer>,
    /// Its durable identity: its certificate's fingerprint under mutual
    /// TLS, else the id it claims.
    identity: Option<String>,
}

/// One admitted control stream of a worker: a worker id outlives its
/// connections, so events of a replaced connection are told apart by this.
type Session = u64;

/// What connection tasks tell the driver.
enum CoreEvent {
    WorkerJoined {
        hello: WorkerHello,
        outbox: mpsc::UnboundedSender<ToWorker>,
        reply: oneshot::Sender<(WorkerId, Session)>,
    },
    WorkerGone(WorkerId, Session),
    FromWorker(WorkerId, Session, FromWorker),
    /// A client request; its replies go to `replies` (one, or a stream
    /// ending with `Done` or `Error`).
    Client {
        principal: Principal,
        request: ClientRequest,
        replies: mpsc::UnboundedSender<ClientReply>,
    },
    /// A read-only look at the state (the HTTP endpoints), run by the
    /// driver between events, so the `Cluster` stays its one owner.
    Inspect(Box<dyn FnOnce(&Cluster) + Send>),
}

/// A handle for reading the coordinator's state from other tasks.
#[derive(Clone)]
pub struct Inspector(mpsc::UnboundedSender<CoreEvent>);

impl Inspector {
    /// `look` at the cluster, in the driver's task; `None` if the driver
    /// has stopped.
    pub async fn inspect<T: Send + 'static>(
        &self,
        look: impl FnOnce(&Cluster) -> T + Send + 'static,
    ) -> Option<T> {
        let (answer, answered) = oneshot::channel();
        let event = CoreEvent::Inspect(Box::new(move |cluster| {
            let _ = answer.send(look(cluster));
        }));
        self.0.send(event).ok()?;
        answered.await.ok()
    }
}

/// Run the coordinator until `shutdown` resolves.
pub async fn serve(
    config: CoordinatorConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    config.validate()?;
    if let Shuffle::Object(root) = &config.shuffle {
        // A missing bucket or bad credentials: one line now, not a failed
        // map attempt per task later.
        crate::shuffle_store::check_root(root)?;
    }
    // The state first: a corrupt state file stops the coordinator before it
    // listens or writes anything.
    std::fs::create_dir_all(&config.state_dir)
        .with_context(|| format!("creating {}", config.state_dir.display()))?;
    let store = if config.ephemeral_state {
        StateStore::in_memory()?
    } else {
        StateStore::open(&config.state_dir)?
    };
    let incarnation = store.next_incarnation()?;
    let identity = Identity::load_or_generate(&config.state_dir)?;
    // Peers are asked for a client certificate (optionally: tenants have
    // none); workers need an allowed one when STATE/worker-fingerprints exists.
    // I13: the transport ends a worker's session only well after its
    // lease: QUIC's probes back off exponentially, so a link healed after
    // t is probed again up to t later; with three leases a partition healed
    // within about one and a half leases keeps the session (and the map
    // outputs the worker holds).
    let endpoint = transport::server_endpoint_with(
        &identity,
        config.listen,
        config.lease * SESSION_IDLE_LEASES,
        true,
    )?;
    let addr = endpoint.local_addr()?;
    publish(
        &config.state_dir.join("fingerprint"),
        &identity.fingerprint(),
    )?;
    publish(
        &config.state_dir.join("coordinator.addr"),
        &addr.to_string(),
    )?;
    // On stderr: stdout stays free for machine-readable output.
    eprintln!(
        "wmr coordinator listening on {addr}, fingerprint {}",
        identity.fingerprint()
    );

    let modules: Modules = Arc::default();
    let (events, inbox) = mpsc::unbounded_channel();
    let mut core = Driver::new(config.clone(), store, modules.clone());
    // Epochs of this incarnation start above any earlier one's, so late
    // results of attempts from before a crash are rejected (I1, I3).
    let epoch_floor = AttemptEpoch((incarnation - 1) << 20);
    // Workers keep their ids: the attempt records name them.
    core.cluster.restore_workers(core.store.workers()?);
    if let Some(window) = config.reannounce_window {
        core.cluster.set_reannounce_window(window);
    }
    for record in core.store.jobs()? {
        if record.outcome.is_none() {
            core.restore(None, record, epoch_floor, true)?;
        } else {
            let attempts = core.store.attempts(record.id)?;
            // Its directories, for the late reports of its attempts: their
            // files are discarded still (I3, I14).
            let dirs = JobDirs::new(record.id, &core.config.work_root, &record.request.output);
            core.dirs.insert(record.id, dirs);
            core.cluster.load_finished(clock(), record, attempts);
        }
    }
    core.carry_out();
    let core_task = tokio::spawn(core.run(inbox));
    let web_task = match config.http {
        Some(listen) => {
            let inspector = Inspector(events.clone());
            let server = crate::web::bind(listen, &config.state_dir, inspector).await?;
            Some(tokio::spawn(server))
        }
        None => None,
    };
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                let (events, modules) = (events.clone(), modules.clone());
                let state_dir = config.state_dir.clone();
                tokio::spawn(async move {
                    match incoming.await {
                        Ok(connection) => {
                            serve_connection(connection, events, modules, state_dir).await
                        }
                        Err(e) => tracing::info!("handshake failed: {e}"),
                    }
                });
            }
            () = &mut shutdown => break,
        }
    }
    endpoint.close(quinn::VarInt::from_u32(0), b"coordinator shutting down");
    if let Some(web_task) = web_task {
        web_task.abort();
    }
    drop(events);
    core_task.abort();
    endpoint.wait_idle().await;
    Ok(())
}

/// Write a small file atomically (tmp + rename), so readers never see half.
fn publish(path: &std::path::Path, text: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

/// The answer to a module fetch on a connection without an admitted worker.
pub const MODULE_REFUSED: &str =
    "refused: modules are served only to an admitted worker (open a worker stream first)";

/// Every stream of a connection starts with an [`Open`] frame.
async fn serve_connection(
    connection: quinn::Connection,
    events: mpsc::UnboundedSender<CoreEvent>,
    modules: Modules,
    state_dir: PathBuf,
) {
    let peer = connection.remote_address();
    // Set once a worker control stream of this connection is admitted:
    // module fetches are answered only then.
    let worker_admitted = Arc::new(std::sync::atomic::AtomicBool::new(false));
    loop {
        let (send, recv) = match connection.accept_bi().await {
            Ok(stream) => stream,
            Err(e) => {
                tracing::debug!(%peer, "connection ended: {e}");
                return;
            }
        };
        let mut channel = Channel { send, recv };
        let (events, modules, state_dir) = (events.clone(), modules.clone(), state_dir.clone());
        let (connection, worker_admitted) = (connection.clone(), worker_admitted.clone());
        tokio::spawn(async move {
            let open = match channel.read::<Open>().await {
                Ok(Some(open)) => open,
                Ok(None) => return,
                Err(error) => {
                    // Say why before closing: the peer gets a clear error,
                    // the coordinator carries on.
                    tracing::warn!(%peer, %error, "refused a stream");
                    let reply = ClientReply::Error(format!("refused: {error}"));
                    let _ = channel.write(&reply).await;
                    let _ = channel.send.finish();
                    let _ = channel.recv.stop(quinn::VarInt::from_u32(1));
                    return;
                }
            };
            match open {
                Open::Worker {
                    name,
                    slots,
                    labels,
                    shuffle,
                    token,
                    identity,
                } => match admit_worker(&state_dir, &token, &connection) {
                    Ok(pool) => {
                        worker_admitted.store(true, std::sync::atomic::Ordering::SeqCst);
                        // A certificate is proven; an id is only claimed.
                        let identity = match transport::peer_fingerprint(&connection) {
                            Some(fingerprint) => Some(format!("tls:{fingerprint}")),
                            None if identity.is_empty() => None,
                            None => Some(format!("id:{identity}")),
                        };
                        let hello = WorkerHello {
                            name,
                            slots: slots.clamp(1, 64),
                            labels,
                            pool,
                            shuffle,
                            identity,
                        };
                        serve_worker(channel, hello, events).await
                    }
                    Err(e) => {
                        tracing::warn!(%peer, %name, "worker refused: {e:#}");
                        let _ = channel.write(&ToWorker::Refused(format!("{e:#}"))).await;
                        let _ = channel.send.finish();
                        let _ = channel.send.stopped().await;
                    }
                },
                Open::FetchPartition { .. } => {
                    let reply =
                        PartitionReply::Missing("the coordinator holds no map output".into());
                    let _ = channel.write(&reply).await;
                    let _ = channel.send.finish();
                }
                Open::FetchModule(hash) => {
                    let reply = if !worker_admitted.load(std::sync::atomic::Ordering::SeqCst) {
                        tracing::warn!(%peer, module = %hash, "module fetch refused: no admitted worker on this connection");
                        ModuleReply::Refused(MODULE_REFUSED.into())
                    } else {
                        let found = modules.read().expect("poisoned").get(&hash).cloned();
                        match found {
                            Some(bytes) => ModuleReply::Found(bytes.to_vec()),
                            None => ModuleReply::Missing,
                        }
                    };
                    let _ = channel.write(&reply).await;
                    let _ = channel.send.finish();
                }
                Open::Client {
                    tenant,
                    token,
                    request,
                } => match tenants::authenticate(&state_dir, &tenant, &token) {
                    Ok(principal) => serve_client(channel, principal, request, events).await,
                    Err(e) => {
                        tracing::warn!(%peer, tenant = %tenant.0, "client refused: {e:#}");
                        let _ = channel.write(&ClientReply::Error(format!("{e:#}"))).await;
                        let _ = channel.send.finish();
                        let _ = channel.send.stopped().await;
                    }
                },
            }
        });
    }
}

async fn serve_worker(
    channel: Channel,
    hello: WorkerHello,
    events: mpsc::UnboundedSender<CoreEvent>,
) {
    let (outbox, mut outgoing) = mpsc::unbounded_channel();
    let (reply, id) = oneshot::channel();
    let joined = CoreEvent::WorkerJoined {
        hello,
        outbox,
        reply,
    };
    if events.send(joined).is_err() {
        return;
    }
    let Ok((worker, session)) = id.await else {
        return;
    };
    let span = tracing::info_span!("worker", %worker);
    let Channel { mut send, mut recv } = channel;
    // Reads are not cancel-safe: a task of their own, never raced.
    let reader_events = events.clone();
    // It ends with the bad frame that closed the stream, if one did.
    let reader = tokio::spawn(async move {
        loop {
            match transport::read_frame::<FromWorker>(&mut recv).await {
                Ok(Some(message)) => {
                    if reader_events
                        .send(CoreEvent::FromWorker(worker, session, message))
                        .is_err()
                    {
                        return None;
                    }
                }
                Ok(None) => return None,
                Err(transport::FrameError::Io(error)) => {
                    tracing::debug!(%worker, %error, "worker connection ended");
                    return None;
                }
                Err(error) => {
                    tracing::warn!(%worker, %error, "closing a worker's stream after a bad frame");
                    let _ = recv.stop(quinn::VarInt::from_u32(1));
                    return Some(error);
                }
            }
        }
    });
    let writer = async {
        while let Some(message) = outgoing.recv().await {
            if send.write_all(&transport::encode(&message)).await.is_err() {
                break;
            }
        }
    };
    let bad_frame = tokio::select! {
        ended = reader => ended.ok().flatten(),
        () = tracing::Instrument::instrument(writer, span) => None,
    };
    if let Some(error) = bad_frame {
        // Say why, then end the stream cleanly; the worker is lost (its
        // attempts run again) and the coordinator carries on.
        let refusal = ToWorker::Refused(format!("bad frame: {error}"));
        let _ = send.write_all(&transport::encode(&refusal)).await;
        let _ = send.finish();
    }
    let _ = events.send(CoreEvent::WorkerGone(worker, session));
}

async fn serve_client(
    mut channel: Channel,
    principal: Principal,
    request: ClientRequest,
    events: mpsc::UnboundedSender<CoreEvent>,
) {
    // One answer, or a stream of them ending with `Done` or `Error`.
    let streaming = matches!(request, ClientRequest::Submit(_) | ClientRequest::Watch(_));
    let (replies, mut incoming) = mpsc::unbounded_channel();
    let _ = events.send(CoreEvent::Client {
        principal,
        request,
        replies,
    });
    while let Some(reply) = incoming.recv().await {
        let last = !streaming || matches!(reply, ClientReply::Done(_) | ClientReply::Error(_));
        if channel.write(&reply).await.is_err() || last {
            break;
        }
    }
    let _ = channel.send.finish();
    // Wait for the peer to read everything before the stream is dropped.
    let _ = channel.send.stopped().await;
}

/// The I/O around the coordinator's state machine ([`Cluster`]): it turns
/// connection events into calls and carries out the effects, in order.
struct Driver {
    config: CoordinatorConfig,
    cluster: Cluster,
    store: StateStore,
    modules: Modules,
    /// The current session of each connected worker and its outbox.
    outboxes: HashMap<WorkerId, (Session, mpsc::UnboundedSender<ToWorker>)>,
    next_session: Session,
    clients: HashMap<ClientId, mpsc::UnboundedSender<ClientReply>>,
    next_client: u64,
    dirs: HashMap<JobId, JobDirs>,
}

impl Driver {
    fn new(config: CoordinatorConfig, store: StateStore, modules: Modules) -> Self {
        let cluster = Cluster::new(ClusterConfig {
            heartbeat: config.heartbeat,
            lease: config.lease,
            shuffle: config.shuffle.clone(),
            work_root: config.work_root.clone(),
        });
        Driver {
            config,
            cluster,
            store,
            modules,
            outboxes: HashMap::new(),
            next_session: 1,
            clients: HashMap::new(),
            next_client: 1,
            dirs: HashMap::new(),
        }
    }

    async fn run(mut self, mut inbox: mpsc::UnboundedReceiver<CoreEvent>) {
        loop {
            let deadline = self
                .cluster
                .poll_timeout()
                .map(tokio::time::Instant::from_std);
            let event = match deadline {
                Some(deadline) => tokio::select! {
                    event = inbox.recv() => event,
                    () = tokio::time::sleep_until(deadline) => {
                        self.cluster.handle_timeout(clock());
                        self.carry_out();
                        continue;
                    }
                },
                None => inbox.recv().await,
            };
            let Some(event) = event else { return };
            self.handle(event);
            self.carry_out();
        }
    }

    fn handle(&mut self, event: CoreEvent) {
        match event {
            CoreEvent::WorkerJoined {
                hello,
                outbox,
                reply,
            } => {
                let WorkerHello {
                    name,
                    slots,
                    labels,
                    pool,
                    shuffle,
                    identity,
                } = hello;
                let session = self.next_session;
                self.next_session += 1;
                // Its effects (the welcome) are carried out once the
                // outbox below is in place.
                let worker = self.cluster.worker_joined_as(
                    clock(),
                    identity,
                    name,
                    slots,
                    labels,
                    pool,
                    shuffle,
                );
                self.outboxes.insert(worker, (session, outbox));
                let _ = reply.send((worker, session));
            }
            CoreEvent::WorkerGone(worker, session) => {
                // A connection replaced by a newer one of the same worker
                // was already taken for lost when the newer one joined.
                if self
                    .outboxes
                    .get(&worker)
                    .is_some_and(|(s, _)| *s == session)
                {
                    self.outboxes.remove(&worker);
                    self.cluster.worker_gone(clock(), worker);
                }
            }
            CoreEvent::FromWorker(worker, session, message) => {
                if self
                    .outboxes
                    .get(&worker)
                    .is_some_and(|(s, _)| *s == session)
                {
                    self.cluster.from_worker(clock(), worker, message)
                }
            }
            CoreEvent::Inspect(look) => look(&self.cluster),
            CoreEvent::Client {
                principal,
                request,
                replies,
            } => {
                let client = ClientId(self.next_client);
                self.next_client += 1;
                self.clients.insert(client, replies);
                let tenant = principal.tenant.clone();
                match request {
                    ClientRequest::Submit(request) => {
                        if let Err(e) = self.submit(client, &principal, *request) {
                            self.reply(client, ClientReply::Error(format!("{e:#}")));
                        }
                    }
                    ClientRequest::Status(job) => {
                        self.cluster.status(client, &tenant, job.as_deref())
                    }
                    ClientRequest::Cancel(job) => {
                        self.cluster.cancel(clock(), client, &tenant, &job)
                    }
                    ClientRequest::Watch(job) => self.cluster.watch(client, &tenant, &job),
                    ClientRequest::Jobs => self.cluster.jobs(client, &tenant),
                    ClientRequest::Resume(job) => {
                        if let Err(e) = self.resume(client, &tenant, &job) {
                            self.reply(client, ClientReply::Error(format!("{e:#}")));
                        }
                    }
                }
            }
        }
    }

    /// Carry out the machine's effects in order (I10: a failed `Persist`
    /// stops the coordinator before anything after it happens).
    fn carry_out(&mut self) {
        while let Some(effect) = self.cluster.poll_effect() {
            match effect {
                Effect::Persist(batch) => {
                    if let Err(e) = self.store.write(&batch) {
                        // Without durable state the coordinator must not
                        // acknowledge anything: stop, and let a restart
                        // resume from the last write.
                        tracing::error!("writing the state: {e:#}");
                        eprintln!("error: writing the state: {e:#}");
                        std::process::exit(1);
                    }
                }
                Effect::Send { worker, message } => {
                    // A closed outbox: the worker's loss is already on its way.
                    if let Some((_, outbox)) = self.outboxes.get(&worker) {
                        let _ = outbox.send(message);
                    }
                }
                Effect::Reply { client, reply } => self.reply(client, reply),
                Effect::CommitAttempt { job, task, epoch } => {
                    let result = match self.dirs.get(&job) {
                        Some(dirs) => dirs
                            .commit_attempt(task, epoch)
                            .map_err(|e| format!("{e:#}")),
                        None => Err(format!("job {job} has no directories")),
                    };
                    self.cluster
                        .commit_finished(clock(), job, task, epoch, result);
                }
                Effect::DiscardAttempt { job, task, epoch } => {
                    if let Some(dirs) = self.dirs.get(&job)
                        && let Err(e) = dirs.abort_attempt(task, epoch)
                    {
                        tracing::warn!(%job, %task, %epoch, "discarding: {e:#}");
                    }
                }
                Effect::CommitJob { job, dead_letters } => {
                    let result = match self.dirs.get(&job) {
                        Some(dirs) => lifecycle::commit_job(dirs, &dead_letters),
                        None => Err(format!("job {job} has no directories")),
                    };
                    self.cluster.job_committed(clock(), job, result);
                }
                Effect::CleanupJob { job } => {
                    if let Some(dirs) = self.dirs.get(&job) {
                        lifecycle::cleanup_job(dirs);
                    }
                }
            }
        }
    }

    /// Send a client its reply; a closed stream stops its watching.
    fn reply(&mut self, client: ClientId, reply: ClientReply) {
        let Some(replies) = self.clients.get(&client) else {
            return;
        };
        if replies.send(reply).is_err() {
            self.clients.remove(&client);
            self.cluster.client_gone(client);
        }
    }

    /// Admit a job: quotas, confinement, the one check of its settings, its
    /// plan and directories (`lifecycle::plan_job`), then the machine.
    fn submit(
        &mut self,
        client: ClientId,
        principal: &Principal,
        mut request: JobRequest,
    ) -> anyhow::Result<()> {
        let mut sizes = vec![request.map_module.len()];
        sizes.extend(request.reduce_module.as_ref().map(Vec::len));
        principal.quota.check_job(&request.limits, &sizes)?;
        let terms = self.tenant_terms(&principal.tenant);
        self.cluster
            .check_admission(&principal.tenant, terms)
            .map_err(anyhow::Error::msg)?;
        if let Some(root) = &principal.root {
            for input in &mut request.inputs {
                *input = tenants::confine(root, std::path::Path::new(input.as_str()))?
                    .to_string_lossy()
                    .into_owned();
            }
            request.output = tenants::confine(root, &request.output)?;
        }
        let map_bytes = std::mem::take(&mut request.map_module);
        let reduce_bytes = request.reduce_module.take();
        let map_module = ModuleHash::of(&map_bytes);
        let reduce_module = reduce_bytes
            .as_ref()
            .map_or_else(|| map_module.clone(), |b| ModuleHash::of(b));
        let job = JobId::new();
        let (record, dirs) = lifecycle::plan_job(
            job,
            principal.tenant.clone(),
            request,
            (map_module.clone(), reduce_module.clone()),
            crate::sampler::MapComponent {
                bytes: &map_bytes,
                sandbox: None,
            },
            &self.config.work_root,
            clock().unix_ms,
        )?;
        let mut modules = vec![(map_module, map_bytes)];
        modules.extend(reduce_bytes.map(|b| (reduce_module, b)));
        for (hash, bytes) in &modules {
            self.serve_module(hash.clone(), bytes.clone());
        }
        let dirs = dirs.with_shuffle(&self.config.shuffle, &record.tenant)?;
        self.dirs.insert(job, dirs);
        let capability = Capability::generate();
        self.cluster
            .submit(clock(), Some(client), record, capability, terms, modules);
        Ok(())
    }

    /// `wmr resume`: a failed or cancelled job runs again under the same id.
    fn resume(&mut self, client: ClientId, tenant: &TenantId, job: &str) -> anyhow::Result<()> {
        let record = self
            .cluster
            .resume_record(clock(), tenant, job)
            .map_err(anyhow::Error::msg)?;
        self.restore(Some(client), record, AttemptEpoch(0), false)
    }

    /// Bring back an unfinished job (after a restart, or resumed): its
    /// modules, attempt log, capability and directories, then the machine.
    fn restore(
        &mut self,
        client: Option<ClientId>,
        record: JobRecord,
        epoch_floor: AttemptEpoch,
        keep_commits: bool,
    ) -> anyhow::Result<()> {
        for hash in [&record.map_module, &record.reduce_module] {
            let bytes = self.store.module(hash)?.with_context(|| {
                format!("job {}: module {hash} is missing from the state", record.id)
            })?;
            self.serve_module(hash.clone(), bytes);
        }
        let attempts = self.store.attempts(record.id)?;
        // The same capability as before (a job stored by an older build
        // gets one now).
        let capability = self
            .store
            .capability(record.id)?
            .unwrap_or_else(Capability::generate);
        let dirs = JobDirs::new(record.id, &self.config.work_root, &record.request.output)
            .with_shuffle(&self.config.shuffle, &record.tenant)?;
        if keep_commits {
            dirs.ensure()?;
        } else {
            // Its committed outputs were cleaned up when it stopped.
            dirs.prepare()?;
        }
        self.dirs.insert(record.id, dirs);
        let terms = self.tenant_terms(&record.tenant);
        self.cluster.restore(
            clock(),
            client,
            record,
            attempts,
            epoch_floor,
            keep_commits,
            capability,
            terms,
        );
        Ok(())
    }

    /// A tenant's terms from `tenants.toml` as it is now (development mode:
    /// weight 1 and the default quota).
    fn tenant_terms(&self, tenant: &TenantId) -> TenantTerms {
        let file = tenants::load(&self.config.state_dir).ok().flatten();
        match file.as_ref().and_then(|f| f.tenants.get(&tenant.0)) {
            Some(t) => terms_of(t.weight, &t.quota, t.pool_only),
            None => terms_of(1, &tenants::Quota::default(), false),
        }
    }

    /// Make a module fetchable by workers (by its content hash).
    fn serve_module(&mut self, hash: ModuleHash, bytes: Vec<u8>) {
        self.modules
            .write()
            .expect("poisoned")
            .entry(hash)
            .or_insert_with(|| Arc::new(bytes));
    }
}

fn terms_of(weight: u32, quota: &tenants::Quota, pool_only: bool) -> TenantTerms {
    TenantTerms {
        weight: weight.max(1),
        max_concurrent_attempts: quota.max_concurrent_attempts,
        max_jobs_queued: quota.max_jobs_queued,
        pool_only,
    }
}

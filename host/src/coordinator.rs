//! `wmr coordinator`: the QUIC server around the scheduler.
//!
//! One task (the core) owns all state: the jobs' schedulers, the workers and
//! their outbound queues. Connection tasks only translate frames into
//! [`CoreEvent`]s and back, so every decision is made by the sans-IO
//! scheduler, in one place, in order. Jobs share the workers: slots are
//! split between tenants by weight, then between each tenant's jobs
//! (`rebalance`). Storage is shared (coordinator and workers see the same filesystem), so
//! the core commits and discards attempt files itself.

use crate::commit::JobDirs;
use crate::protocol::{
    AttemptEpoch, Capability, JobId, ModuleHash, Peer, TaskId, TaskInput, TenantId, WorkerId,
};
use crate::scheduler::Phase;
use crate::scheduler::{Action, Event, JobOutcome, JobPlan, Scheduler, SchedulerConfig};
use crate::split;
use crate::store::{Batch, JobRecord, StateStore, unix_ms};
use crate::summary::PhaseChange;
use crate::summary::{JobSummary, summarize};
use crate::tenants::{self, Principal};
use crate::transport::{self, Channel, Identity};
use crate::wire::{
    ClientReply, ClientRequest, FromWorker, JobRequest, ModuleReply, Open, PartitionReply,
    StatusReport, ToWorker, WorkerInfo,
};
use anyhow::Context as _;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

#[derive(Clone, Debug)]
pub struct CoordinatorConfig {
    pub listen: SocketAddr,
    pub state_dir: PathBuf,
    /// Intermediate data (must be visible to every worker).
    pub work_root: PathBuf,
    pub lease: Duration,
    pub heartbeat: Duration,
    /// Map outputs go to `work_root` (shared by all) instead of staying on
    /// the workers that produced them.
    pub shared_store: bool,
    /// Keep the job state in memory only (nothing survives a restart).
    pub ephemeral_state: bool,
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
fn admit_worker(
    state_dir: &std::path::Path,
    token: &str,
    connection: &quinn::Connection,
) -> anyhow::Result<()> {
    tenants::authenticate_worker(state_dir, token)?;
    let path = state_dir.join(WORKER_FINGERPRINTS);
    if !path.exists() {
        return Ok(());
    }
    let allowed = transport::load_fingerprints(&path)?;
    match transport::peer_fingerprint(connection) {
        None => anyhow::bail!(
            "mutual TLS is required: this worker presented no certificate (start it with --identity DIR)"
        ),
        Some(seen) if !allowed.contains(&seen) => {
            anyhow::bail!("this worker's certificate {seen} is not an allowed worker certificate")
        }
        Some(_) => Ok(()),
    }
}

/// What connection tasks tell the core.
enum CoreEvent {
    WorkerJoined {
        name: String,
        slots: u32,
        shuffle: Option<Peer>,
        outbox: mpsc::UnboundedSender<ToWorker>,
        reply: oneshot::Sender<WorkerId>,
    },
    WorkerGone(WorkerId),
    FromWorker(WorkerId, FromWorker),
    Submit {
        principal: Principal,
        request: Box<JobRequest>,
        replies: mpsc::UnboundedSender<ClientReply>,
    },
    Status(Principal, Option<String>, oneshot::Sender<ClientReply>),
    Cancel(Principal, String, oneshot::Sender<ClientReply>),
    Watch(Principal, String, mpsc::UnboundedSender<ClientReply>),
    Jobs(Principal, oneshot::Sender<ClientReply>),
    Resume(Principal, String, oneshot::Sender<ClientReply>),
}

struct WorkerEntry {
    name: String,
    slots: u32,
    shuffle: Option<Peer>,
    outbox: mpsc::UnboundedSender<ToWorker>,
    connected: bool,
    /// Finishing what it runs, taking nothing new.
    draining: bool,
}

struct JobEntry {
    id: JobId,
    /// Carried in every assignment: authorises shuffle fetches of this job.
    capability: Capability,
    scheduler: Scheduler,
    dirs: JobDirs,
    /// Map outputs stay on workers: they commit and discard them.
    worker_local: bool,
    watchers: Vec<mpsc::UnboundedSender<ClientReply>>,
    started: Instant,
    summary: Option<JobSummary>,
    /// The durable record, rewritten when the phase changes.
    record: JobRecord,
    /// This job's share of each worker's slots, as last told its scheduler.
    quotas: BTreeMap<WorkerId, u32>,
    /// Its tenant's weight and concurrency quota (for `rebalance`).
    weight: u32,
    max_concurrent: u32,
}

/// Run the coordinator until `shutdown` resolves.
pub async fn serve(
    config: CoordinatorConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    config.validate()?;
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
    let endpoint =
        transport::server_endpoint_with(&identity, config.listen, config.lease * 2, true)?;
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
    let mut core = Core::new(config.clone(), store, modules.clone());
    // Epochs of this incarnation start above any earlier one's, so late
    // results of attempts from before a crash are rejected (I1, I3).
    let epoch_floor = AttemptEpoch((incarnation - 1) << 20);
    for record in core.store.jobs()? {
        if record.outcome.is_none() {
            core.restore(record, epoch_floor, true)?;
        } else {
            core.load_finished(record)?;
        }
    }
    core.settle();
    let core_task = tokio::spawn(core.run(inbox));
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
                    shuffle,
                    token,
                    ..
                } => match admit_worker(&state_dir, &token, &connection) {
                    Ok(()) => {
                        worker_admitted.store(true, std::sync::atomic::Ordering::SeqCst);
                        serve_worker(channel, name, slots, shuffle, events).await
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
    name: String,
    slots: u32,
    shuffle: Option<Peer>,
    events: mpsc::UnboundedSender<CoreEvent>,
) {
    let (outbox, mut outgoing) = mpsc::unbounded_channel();
    let (reply, id) = oneshot::channel();
    let slots = slots.clamp(1, 64);
    if events
        .send(CoreEvent::WorkerJoined {
            name,
            slots,
            shuffle,
            outbox,
            reply,
        })
        .is_err()
    {
        return;
    }
    let Ok(worker) = id.await else { return };
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
                        .send(CoreEvent::FromWorker(worker, message))
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
    let _ = events.send(CoreEvent::WorkerGone(worker));
}

async fn serve_client(
    mut channel: Channel,
    principal: Principal,
    request: ClientRequest,
    events: mpsc::UnboundedSender<CoreEvent>,
) {
    // One answer, or a stream of them ending with `Done` or `Error`.
    let one = |make: &dyn Fn(oneshot::Sender<ClientReply>) -> CoreEvent| {
        let (tx, rx) = oneshot::channel();
        let _ = events.send(make(tx));
        rx
    };
    let (tx, mut replies) = mpsc::unbounded_channel();
    let answer = match request {
        ClientRequest::Submit(request) => {
            let _ = events.send(CoreEvent::Submit {
                principal,
                request,
                replies: tx,
            });
            None
        }
        ClientRequest::Watch(job) => {
            let _ = events.send(CoreEvent::Watch(principal, job, tx));
            None
        }
        ClientRequest::Status(job) => Some(one(&|reply| {
            CoreEvent::Status(principal.clone(), job.clone(), reply)
        })),
        ClientRequest::Cancel(job) => Some(one(&|reply| {
            CoreEvent::Cancel(principal.clone(), job.clone(), reply)
        })),
        ClientRequest::Jobs => Some(one(&|reply| CoreEvent::Jobs(principal.clone(), reply))),
        ClientRequest::Resume(job) => Some(one(&|reply| {
            CoreEvent::Resume(principal.clone(), job.clone(), reply)
        })),
    };
    match answer {
        Some(rx) => {
            if let Ok(reply) = rx.await {
                let _ = channel.write(&reply).await;
            }
        }
        None => {
            while let Some(reply) = replies.recv().await {
                let last = matches!(reply, ClientReply::Done(_) | ClientReply::Error(_));
                if channel.write(&reply).await.is_err() || last {
                    break;
                }
            }
        }
    }
    let _ = channel.send.finish();
    // Wait for the peer to read everything before the stream is dropped.
    let _ = channel.send.stopped().await;
}

/// The state owned by the core task.
struct Core {
    config: CoordinatorConfig,
    store: StateStore,
    modules: Modules,
    workers: BTreeMap<WorkerId, WorkerEntry>,
    next_worker: u32,
    jobs: Vec<JobEntry>,
    /// Indexes into `jobs` of the unfinished jobs, oldest first. They
    /// share the workers' slots (see `rebalance`).
    admitted: Vec<usize>,
}

impl Core {
    fn new(config: CoordinatorConfig, store: StateStore, modules: Modules) -> Self {
        Core {
            config,
            store,
            modules,
            workers: BTreeMap::new(),
            next_worker: 1,
            jobs: Vec::new(),
            admitted: Vec::new(),
        }
    }

    async fn run(mut self, mut inbox: mpsc::UnboundedReceiver<CoreEvent>) {
        loop {
            let deadline = self
                .admitted
                .iter()
                .filter_map(|&i| self.jobs[i].scheduler.poll_timeout())
                .min()
                .map(tokio::time::Instant::from_std);
            let event = match deadline {
                Some(deadline) => tokio::select! {
                    event = inbox.recv() => event,
                    () = tokio::time::sleep_until(deadline) => {
                        self.for_admitted(|s, now| s.handle_timeout(now));
                        self.settle();
                        continue;
                    }
                },
                None => inbox.recv().await,
            };
            let Some(event) = event else { return };
            self.handle(event);
            self.settle();
        }
    }

    /// Feed an event to every unfinished job.
    fn for_admitted(&mut self, f: impl Fn(&mut Scheduler, Instant)) {
        let now = Instant::now();
        for &i in &self.admitted {
            f(&mut self.jobs[i].scheduler, now);
        }
    }

    /// Share the slots out again and carry out every job's actions, until
    /// nothing changes (bounded: each round either finishes a job or stops).
    fn settle(&mut self) {
        for _ in 0..=self.jobs.len() {
            self.rebalance();
            let before = self.admitted.len();
            for i in self.admitted.clone() {
                self.carry_out(i);
            }
            if self.admitted.len() == before {
                return;
            }
        }
    }

    /// Max-min fair shares of the live workers' slots between unfinished
    /// jobs, by demand (pending + running tasks), older jobs first for the
    /// remainder. Running attempts are never preempted: a job keeps at least
    /// the slots it uses, and a smaller share takes effect as they finish.
    fn rebalance(&mut self) {
        let capacity: Vec<(WorkerId, u32)> = self
            .workers
            .iter()
            .filter(|(_, w)| w.connected && !w.draining)
            .map(|(id, w)| (*id, w.slots))
            .collect();
        let total = capacity.iter().map(|(_, s)| s).sum();
        let jobs = self.admitted.clone();
        let demand: Vec<u32> = jobs
            .iter()
            .map(|&i| self.jobs[i].scheduler.demand() as u32)
            .collect();
        // Two levels: tenants share the slots by weight (each capped by its
        // concurrency quota), then each tenant's share is split between its
        // jobs.
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
                let cap = self.jobs[jobs[ks[0]]].max_concurrent;
                ks.iter().map(|&k| demand[k]).sum::<u32>().min(cap)
            })
            .collect();
        let weights: Vec<u32> = tenants
            .iter()
            .map(|t| self.jobs[jobs[of(t)[0]]].weight)
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
        // the next one: a tenant below its share, not whichever job is older
        // (a tenant with 100 queued jobs would otherwise take every slot
        // that frees).
        let tenant_of: Vec<usize> = jobs
            .iter()
            .map(|&i| {
                let t = &self.jobs[i].record.tenant;
                tenants.iter().position(|x| x == t).expect("listed above")
            })
            .collect();
        loop {
            let roomiest = capacity
                .iter()
                .map(|(w, cap)| (*w, cap.saturating_sub(occupied(&quota, w))))
                .filter(|(_, free)| *free > 0)
                .max_by_key(|(w, free)| (*free, std::cmp::Reverse(*w)));
            let Some((w, _)) = roomiest else { break };
            let mut held = vec![0u64; tenants.len()];
            for (k, (q, r)) in quota.iter().zip(&running).enumerate() {
                held[tenant_of[k]] += q.iter().map(|(w, &n)| u64::from(n.max(r[w]))).sum::<u64>();
            }
            let next = (0..quota.len())
                .filter(|&k| quota[k].values().sum::<u32>() < alloc[k])
                .min_by(|&a, &b| {
                    let (ta, tb) = (tenant_of[a], tenant_of[b]);
                    let (wa, wb) = (u64::from(weights[ta]), u64::from(weights[tb]));
                    (held[ta] * wb)
                        .cmp(&(held[tb] * wa))
                        .then(served[a].cmp(&served[b]))
                        .then(a.cmp(&b))
                });
            let Some(k) = next else { break };
            *quota[k].get_mut(&w).expect("every live worker") += 1;
        }
        let now = Instant::now();
        for (k, &i) in jobs.iter().enumerate() {
            for (&worker, &slots) in &quota[k] {
                let job = &mut self.jobs[i];
                if job.quotas.get(&worker) != Some(&slots) {
                    job.quotas.insert(worker, slots);
                    job.scheduler
                        .handle(now, Event::WorkerJoined { worker, slots });
                }
            }
        }
    }

    fn handle(&mut self, event: CoreEvent) {
        match event {
            CoreEvent::WorkerJoined {
                name,
                slots,
                shuffle,
                outbox,
                reply,
            } => {
                let worker = WorkerId(self.next_worker);
                self.next_worker += 1;
                let heartbeat_ms = self.config.heartbeat.as_millis() as u64;
                let _ = outbox.send(ToWorker::Welcome {
                    worker,
                    heartbeat_ms,
                });
                tracing::info!(%worker, %name, slots, "worker joined");
                self.workers.insert(
                    worker,
                    WorkerEntry {
                        name,
                        slots,
                        shuffle,
                        outbox,
                        connected: true,
                        draining: false,
                    },
                );
                let _ = reply.send(worker);
                // `rebalance` gives the jobs their share of its slots.
            }
            CoreEvent::WorkerGone(worker) => {
                tracing::info!(%worker, "worker left");
                if let Some(entry) = self.workers.get_mut(&worker) {
                    entry.connected = false;
                }
                self.for_admitted(|s, now| s.handle(now, Event::WorkerLost { worker }));
                for job in &mut self.jobs {
                    job.quotas.remove(&worker);
                }
            }
            CoreEvent::FromWorker(worker, message) => self.worker_message(worker, message),
            CoreEvent::Submit {
                principal,
                request,
                replies,
            } => match self.submit(&principal, *request) {
                Ok(index) => {
                    let job = self.jobs[index].id.to_string();
                    let _ = replies.send(ClientReply::Submitted { job });
                    self.jobs[index].watchers.push(replies);
                    self.admitted.push(index);
                }
                Err(e) => {
                    let _ = replies.send(ClientReply::Error(format!("{e:#}")));
                }
            },
            CoreEvent::Status(principal, job, reply) => {
                let _ = reply.send(match self.find(&principal, job.as_deref()) {
                    Some(i) => ClientReply::Status(Box::new(self.status(i))),
                    None => ClientReply::Error(not_found(job.as_deref())),
                });
            }
            CoreEvent::Watch(principal, job, replies) => match self.find(&principal, Some(&job)) {
                Some(i) => match &self.jobs[i].summary {
                    Some(summary) => {
                        let _ = replies.send(ClientReply::Done(Box::new(summary.clone())));
                    }
                    None => self.jobs[i].watchers.push(replies),
                },
                None => {
                    let _ = replies.send(ClientReply::Error(not_found(Some(&job))));
                }
            },
            CoreEvent::Jobs(principal, reply) => {
                // A resumed job has an older entry too: list the newest.
                let listings = (0..self.jobs.len())
                    .filter(|&i| self.jobs[i].record.tenant == principal.tenant)
                    .filter(|&i| !self.jobs[i + 1..].iter().any(|j| j.id == self.jobs[i].id))
                    .map(|i| self.listing(i))
                    .collect();
                let _ = reply.send(ClientReply::Jobs(listings));
            }
            CoreEvent::Resume(principal, job, reply) => {
                let _ = reply.send(match self.resume(&principal, &job) {
                    Ok(id) => ClientReply::Submitted { job: id },
                    Err(e) => ClientReply::Error(format!("{e:#}")),
                });
            }
            CoreEvent::Cancel(principal, job, reply) => {
                let _ = reply.send(match self.find(&principal, Some(&job)) {
                    Some(i) => {
                        self.jobs[i].scheduler.handle(Instant::now(), Event::Cancel);
                        ClientReply::Cancelled {
                            job: self.jobs[i].id.to_string(),
                        }
                    }
                    None => ClientReply::Error(not_found(Some(&job))),
                });
            }
        }
    }

    fn worker_message(&mut self, worker: WorkerId, message: FromWorker) {
        match message {
            FromWorker::Heartbeat => {
                self.for_admitted(|s, now| s.handle(now, Event::Heartbeat { worker }));
            }
            FromWorker::Committed {
                job,
                task,
                epoch,
                result,
            } => {
                if let Some(i) = self.jobs.iter().rposition(|j| j.id == job) {
                    let event = Event::CommitFinished {
                        task,
                        epoch,
                        result,
                    };
                    self.jobs[i].scheduler.handle(Instant::now(), event);
                    self.carry_out(i);
                }
            }
            FromWorker::Draining => {
                if let Some(w) = self.workers.get_mut(&worker) {
                    w.draining = true;
                }
                self.for_admitted(|s, now| s.handle(now, Event::WorkerDraining { worker }));
            }
            FromWorker::Finished(report) => {
                let (job, task, epoch) = (report.job, report.task, report.epoch);
                if let Some(i) = self.jobs.iter().rposition(|j| j.id == job) {
                    if !report.log.is_empty() {
                        tracing::debug!(%job, %task, %epoch, log = %report.log, "attempt log");
                    }
                    self.jobs[i]
                        .scheduler
                        .handle(Instant::now(), Event::AttemptFinished(report));
                    self.carry_out(i);
                }
                // Acknowledged whatever the verdict: the worker may forget it.
                if let Some(entry) = self.workers.get(&worker) {
                    let _ = entry.outbox.send(ToWorker::Ack { job, task, epoch });
                }
            }
        }
    }

    fn submit(&mut self, principal: &Principal, request: JobRequest) -> anyhow::Result<usize> {
        let tenant = principal.tenant.clone();
        let mut request = request;
        // Tenancy: quotas first, then every path confined to the root.
        let mut sizes = vec![request.map_module.len()];
        sizes.extend(request.reduce_module.as_ref().map(Vec::len));
        principal.quota.check_job(&request.limits, &sizes)?;
        let queued = self
            .admitted
            .iter()
            .filter(|&&i| self.jobs[i].record.tenant == tenant)
            .count();
        if queued >= principal.quota.max_jobs_queued as usize {
            anyhow::bail!(
                "quota max_jobs_queued is {}; the tenant has {queued} unfinished jobs",
                principal.quota.max_jobs_queued
            );
        }
        if let Some(root) = &principal.root {
            for input in &mut request.inputs {
                *input = tenants::confine(root, std::path::Path::new(input.as_str()))?
                    .to_string_lossy()
                    .into_owned();
            }
            request.output = tenants::confine(root, &request.output)?;
        }
        crate::protocol::check_job_settings(
            request.reducers,
            request.split_bytes,
            request.max_attempts,
            &request.limits,
        )
        .map_err(anyhow::Error::msg)?;
        let mut batch = Batch::default();
        let map_bytes = std::mem::take(&mut request.map_module);
        let map_module = self.store_module(map_bytes.clone());
        batch.modules.push((map_module.clone(), map_bytes));
        let reduce_module = match request.reduce_module.take() {
            Some(bytes) => {
                let hash = self.store_module(bytes.clone());
                batch.modules.push((hash.clone(), bytes));
                hash
            }
            None => map_module.clone(),
        };
        let files = split::discover_inputs(&request.inputs)?;
        let splits = split::plan_splits(&files, request.split_bytes)?;
        let job = JobId::new();
        let dirs = JobDirs::new(job, &self.config.work_root, &request.output);
        dirs.prepare()?;
        let record = JobRecord {
            id: job,
            tenant,
            request,
            map_module,
            reduce_module,
            splits,
            transitions: vec![PhaseChange {
                phase: Phase::Submitted,
                unix_ms: unix_ms(),
                reason: "submitted".into(),
            }],
            outcome: None,
            summary: None,
        };
        // Durable before the client hears "submitted".
        batch.jobs.push(record.clone());
        let capability = Capability::generate();
        batch.capabilities.push((job, capability.clone()));
        self.store.write(&batch)?;
        let scheduler = Scheduler::new(
            self.plan(&record),
            self.scheduler_config(&record),
            Instant::now(),
        );
        tracing::info!(%job, tenant = %record.tenant.0, "job submitted");
        let (weight, max_concurrent) = (principal.weight, principal.quota.max_concurrent_attempts);
        self.jobs.push(JobEntry {
            id: job,
            capability,
            scheduler,
            dirs,
            worker_local: !self.config.shared_store,
            watchers: Vec::new(),
            started: Instant::now(),
            summary: None,
            record,
            quotas: BTreeMap::new(),
            weight,
            max_concurrent,
        });
        Ok(self.jobs.len() - 1)
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
            work_root: self.config.work_root.clone(),
            map_outputs_on_workers: !self.config.shared_store,
        }
    }

    fn scheduler_config(&self, record: &JobRecord) -> SchedulerConfig {
        SchedulerConfig {
            max_attempts: record.request.max_attempts,
            lease: self.config.lease,
            ..SchedulerConfig::default()
        }
    }

    /// Bring back an unfinished job after a restart (or `wmr resume`):
    /// committed tasks stay committed, everything else runs again with
    /// epochs above every earlier one.
    fn restore(
        &mut self,
        record: JobRecord,
        epoch_floor: AttemptEpoch,
        keep_commits: bool,
    ) -> anyhow::Result<usize> {
        for hash in [&record.map_module, &record.reduce_module] {
            let bytes = self.store.module(hash)?.with_context(|| {
                format!("job {}: module {hash} is missing from the state", record.id)
            })?;
            self.store_module(bytes);
        }
        let mut records = self.store.attempts(record.id)?;
        if !keep_commits {
            // A stopped job's committed outputs were cleaned up with it.
            for r in &mut records {
                if r.outcome == crate::scheduler::AttemptOutcome::Committed {
                    r.outcome = crate::scheduler::AttemptOutcome::OutputLost;
                }
            }
        }
        let floor = records
            .iter()
            .map(|r| r.epoch)
            .max()
            .map_or(epoch_floor, |e| e.max(epoch_floor));
        let scheduler = Scheduler::restore(
            self.plan(&record),
            self.scheduler_config(&record),
            Instant::now(),
            records,
            floor,
            self.config.shared_store,
        );
        let id = record.id;
        tracing::info!(job = %id, "job resumed");
        // The same capability as before (a job stored by an older build
        // gets one now).
        let capability = match self.store.capability(id)? {
            Some(capability) => capability,
            None => {
                let capability = Capability::generate();
                let mut batch = Batch::default();
                batch.capabilities.push((id, capability.clone()));
                self.store.write(&batch)?;
                capability
            }
        };
        let dirs = JobDirs::new(id, &self.config.work_root, &record.request.output);
        if keep_commits {
            dirs.ensure()?;
        } else {
            // Its committed outputs were cleaned up when it stopped.
            dirs.prepare()?;
        }
        let (weight, max_concurrent) = self.tenant_terms(&record.tenant);
        self.jobs.push(JobEntry {
            id,
            capability,
            scheduler,
            dirs,
            worker_local: !self.config.shared_store,
            watchers: Vec::new(),
            started: Instant::now(),
            summary: None,
            record,
            quotas: BTreeMap::new(),
            weight,
            max_concurrent,
        });
        let i = self.jobs.len() - 1;
        self.admitted.push(i);
        Ok(i)
    }

    /// Keep a finished job (after a restart) for `status`, `jobs`, `dlq`.
    fn load_finished(&mut self, record: JobRecord) -> anyhow::Result<()> {
        let records = self.store.attempts(record.id)?;
        let scheduler = Scheduler::restore(
            self.plan(&record),
            self.scheduler_config(&record),
            Instant::now(),
            records,
            AttemptEpoch(0),
            true,
        );
        let id = record.id;
        self.jobs.push(JobEntry {
            id,
            // A finished job assigns nothing (`resume` restores it anew).
            capability: Capability::default(),
            scheduler,
            dirs: JobDirs::new(id, &self.config.work_root, &record.request.output),
            worker_local: !self.config.shared_store,
            watchers: Vec::new(),
            started: Instant::now(),
            summary: record.summary.clone(),
            record,
            quotas: BTreeMap::new(),
            weight: 1,
            max_concurrent: 0,
        });
        Ok(())
    }

    /// A tenant's weight and concurrency quota, from `tenants.toml` as it
    /// is now (development mode: 1 and the default quota).
    fn tenant_terms(&self, tenant: &TenantId) -> (u32, u32) {
        let file = tenants::load(&self.config.state_dir).ok().flatten();
        match file.as_ref().and_then(|f| f.tenants.get(&tenant.0)) {
            Some(t) => (t.weight.max(1), t.quota.max_concurrent_attempts),
            None => (1, tenants::Quota::default().max_concurrent_attempts),
        }
    }

    /// Write what changed in job `i` (attempt records, phase) durably.
    fn persist(&mut self, i: usize) {
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
                Phase::Mapping if job.record.phase() == Some(Phase::Reducing) => {
                    "a map output was lost"
                }
                Phase::Mapping => "workers assigned",
                Phase::Reducing => "every map task committed",
                Phase::Completed => "every reduce task committed",
                Phase::Failed => "a task failed too often",
                Phase::Cancelled => "cancelled",
            };
            job.record.transitions.push(PhaseChange {
                phase,
                unix_ms: unix_ms(),
                reason: reason.into(),
            });
            batch.jobs.push(job.record.clone());
        }
        if let Err(e) = self.store.write(&batch) {
            // Without durable state the coordinator must not acknowledge
            // anything: stop, and let a restart resume from the last write.
            tracing::error!("writing the state: {e:#}");
            eprintln!("error: writing the state: {e:#}");
            std::process::exit(1);
        }
    }

    fn store_module(&mut self, bytes: Vec<u8>) -> ModuleHash {
        let hash = ModuleHash::of(&bytes);
        self.modules
            .write()
            .expect("poisoned")
            .entry(hash.clone())
            .or_insert_with(|| Arc::new(bytes));
        hash
    }

    /// Carry out job `i`'s actions, feeding back commit results.
    fn carry_out(&mut self, i: usize) {
        while let Some(action) = self.jobs[i].scheduler.poll_action() {
            let job = &mut self.jobs[i];
            match action {
                Action::Assign {
                    worker,
                    mut assignment,
                } => {
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
                    if !tell(&self.workers, worker, ToWorker::Assign(assignment)) {
                        job.scheduler
                            .handle(Instant::now(), Event::WorkerLost { worker });
                    }
                }
                Action::Commit {
                    task: task @ TaskId::Map(_),
                    epoch,
                    worker,
                } if job.worker_local => {
                    // The worker holds the files: it renames and answers with
                    // `Committed`. If it is gone, `WorkerLost` requeues the task.
                    let job_id = job.id;
                    tell(
                        &self.workers,
                        worker,
                        ToWorker::Commit {
                            job: job_id,
                            task,
                            epoch,
                        },
                    );
                }
                Action::Commit { task, epoch, .. } => {
                    let result = job
                        .dirs
                        .commit_attempt(task, epoch)
                        .map_err(|e| format!("{e:#}"));
                    let event = Event::CommitFinished {
                        task,
                        epoch,
                        result,
                    };
                    job.scheduler.handle(Instant::now(), event);
                }
                Action::Discard {
                    task: task @ TaskId::Map(_),
                    epoch,
                    worker,
                } if job.worker_local => {
                    let job_id = job.id;
                    tell(
                        &self.workers,
                        worker,
                        ToWorker::Discard {
                            job: job_id,
                            task,
                            epoch,
                        },
                    );
                }
                Action::Discard { task, epoch, .. } => {
                    if let Err(e) = job.dirs.abort_attempt(task, epoch) {
                        tracing::warn!(job = %job.id, %task, %epoch, "discarding: {e:#}");
                    }
                }
                Action::Interrupt {
                    task,
                    epoch,
                    worker,
                } => {
                    let job_id = job.id;
                    tell(
                        &self.workers,
                        worker,
                        ToWorker::Interrupt {
                            job: job_id,
                            task,
                            epoch,
                        },
                    );
                }
                Action::Finished(outcome) => self.finish(i, outcome),
            }
        }
        self.persist(i);
        self.report_progress(i);
    }

    fn finish(&mut self, i: usize, outcome: JobOutcome) {
        let job = &mut self.jobs[i];
        let outcome = match outcome {
            JobOutcome::Completed => crate::local::commit_job(
                &job.dirs,
                &job.scheduler,
                job.record.request.limits.max_dead_letters,
            ),
            other => {
                if let Err(e) = job.dirs.cleanup_work() {
                    tracing::warn!(job = %job.id, "cleaning up: {e:#}");
                }
                other
            }
        };
        tracing::info!(job = %job.id, ?outcome, "job finished");
        let summary = summarize(&job.scheduler, outcome, job.started.elapsed());
        for watcher in job.watchers.drain(..) {
            let _ = watcher.send(ClientReply::Done(Box::new(summary.clone())));
        }
        job.record.outcome = Some(summary.outcome.clone());
        job.record.summary = Some(summary.clone());
        let mut batch = Batch::default();
        batch.jobs.push(job.record.clone());
        job.summary = Some(summary);
        if let Err(e) = self.store.write(&batch) {
            tracing::error!("writing the state: {e:#}");
        }
        let done = job.id;
        for w in self.workers.values().filter(|w| w.connected) {
            let _ = w.outbox.send(ToWorker::JobDone { job: done });
        }
        self.admitted.retain(|&a| a != i);
    }

    fn report_progress(&mut self, i: usize) {
        let job = &mut self.jobs[i];
        if job.watchers.is_empty() {
            return;
        }
        let (committed, running, _) = job.scheduler.progress();
        let reply = ClientReply::Progress {
            phase: job.scheduler.phase(),
            committed,
            running,
            total: job.scheduler.task_count(),
        };
        job.watchers.retain(|w| w.send(reply.clone()).is_ok());
    }

    fn listing(&self, i: usize) -> crate::wire::JobListing {
        let job = &self.jobs[i];
        let (committed, _, _) = job.scheduler.progress();
        crate::wire::JobListing {
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

    /// `wmr resume`: a failed or cancelled job runs again under the same id.
    fn resume(&mut self, principal: &Principal, job: &str) -> anyhow::Result<String> {
        let i = self
            .find(principal, Some(job))
            .with_context(|| not_found(Some(job)))?;
        let entry = &self.jobs[i];
        match &entry.summary {
            None => anyhow::bail!("job {} is still running", entry.id),
            Some(s) if s.outcome == JobOutcome::Completed => {
                anyhow::bail!("job {} already completed", entry.id)
            }
            Some(_) => {}
        }
        let mut record = entry.record.clone();
        record.outcome = None;
        record.summary = None;
        record.transitions.push(PhaseChange {
            phase: Phase::Submitted,
            unix_ms: unix_ms(),
            reason: "resumed".into(),
        });
        let mut batch = Batch::default();
        batch.jobs.push(record.clone());
        self.store.write(&batch)?;
        // The old entry stays for the log; `find` prefers the newest.
        let new = self.restore(record, AttemptEpoch(0), false)?;
        Ok(self.jobs[new].id.to_string())
    }

    /// The newest of `principal`'s jobs matching `job` (an id prefix), or
    /// its newest job. Another tenant's job is simply not found.
    fn find(&self, principal: &Principal, job: Option<&str>) -> Option<usize> {
        let own = |j: &JobEntry| j.record.tenant == principal.tenant;
        match job {
            None => self.jobs.iter().rposition(own),
            Some(id) => self.jobs.iter().rposition(|j| {
                let full = j.id.0.simple().to_string();
                own(j) && !id.is_empty() && full.starts_with(&id.to_ascii_lowercase())
            }),
        }
    }

    fn status(&self, i: usize) -> StatusReport {
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
            attempt_log: job.scheduler.attempt_log().to_vec(),
            workers: self
                .workers
                .iter()
                .map(|(&id, w)| WorkerInfo {
                    id,
                    name: w.name.clone(),
                    slots: w.slots,
                    connected: w.connected,
                })
                .collect(),
            transitions: job.record.transitions.clone(),
            totals: crate::wire::Totals::of(job.scheduler.attempt_log()),
        }
    }
}

fn not_found(job: Option<&str>) -> String {
    match job {
        Some(id) => format!("job {id} not found"),
        None => "no job has been submitted".into(),
    }
}

/// Send `message` to `worker` if it is connected; whether it was sent.
fn tell(workers: &BTreeMap<WorkerId, WorkerEntry>, worker: WorkerId, message: ToWorker) -> bool {
    workers
        .get(&worker)
        .is_some_and(|w| w.outbox.send(message).is_ok())
}

/// Max-min fair shares of `total` slots for jobs wanting `demand` each:
/// nobody gets more than it wants, and what one leaves goes to the others
/// (leftovers of an uneven split go to the oldest jobs).
fn max_min_fair(total: u32, demand: &[u32], served: &[u64]) -> Vec<u32> {
    weighted_fair(total, demand, &vec![1; demand.len()], served)
}

/// Weighted max-min fairness (water-filling): each party gets slots in
/// proportion to its weight, never more than it wants; what it leaves is
/// shared again among the others. Slots too few to go round go to the
/// heaviest, then to the least served so far (attempts started), then the
/// oldest: as slots free up, a job that got none yet gets one, so no job
/// waits for another to finish.
fn weighted_fair(total: u32, demand: &[u32], weight: &[u32], served: &[u64]) -> Vec<u32> {
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
    use super::{max_min_fair, weighted_fair};

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

//! Transport security over real QUIC on loopback: per-job shuffle
//! capabilities, module fetches only for admitted workers, optional mutual
//! TLS for workers, and bad frames from an admitted worker (SECURITY.md,
//! "Network peers").
//!
//! Every process a test starts is owned by a [`Proc`], whose `Drop` kills it
//! (SIGKILL), so nothing outlives a test, even one that panics. Every wait is
//! a bounded poll or a timeout. The tests run one at a time.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;
use support::cluster::*;
use support::status::Status;
use support::*;
use wmr::model::{Capability, JobId, ModuleHash, TaskId};
use wmr::transport::{Channel, MAX_FRAME_BYTES, PROTOCOL_VERSION};
use wmr::wire::{ModuleReply, Open, PartitionReply, ToWorker};

/// Bound on a whole job.
const JOB_LIMIT: Duration = Duration::from_secs(120);
/// Bound on one short client call or raw QUIC session.
const CLIENT_LIMIT: Duration = Duration::from_secs(30);

/// The hostile guest's reducers busy-wait 2 s each, so a job's committed
/// map outputs stay on their workers (deleted when the job ends) while a
/// test fetches them; many small splits.
const SLOW_REDUCES: [&str; 6] = [
    "--param",
    "reduce-ms=2000",
    "--split-size",
    "512KiB",
    "--grant",
    "clock",
];

/// Run a tokio future on a fresh runtime, bounded by [`CLIENT_LIMIT`].
fn block_on<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        tokio::time::timeout(CLIENT_LIMIT, future)
            .await
            .unwrap_or_else(|_| panic!("{what}: not done within {CLIENT_LIMIT:?}"))
    })
}

// ---------------------------------------------------------------------------
// A cluster in development mode (no tenants.toml)

/// A coordinator with `args`, for jobs of 4 reducers; `prepare` runs on
/// the state dir before it starts.
fn start(args: &[&str], prepare: impl FnOnce(&Path, &Path)) -> Cluster {
    Cluster::options()
        .args(args)
        .reducers(4)
        .client_limit(CLIENT_LIMIT)
        .start_with(prepare)
}

impl Cluster {
    /// A one-slot worker keeping its map outputs in `ROOT/work-NAME`,
    /// logging at info (its shuffle endpoint's address and fingerprint),
    /// so that a test can reach what a reducer would.
    fn spawn_observed_worker(&mut self, name: &str, extra: &[&str]) -> Proc {
        let mut cmd = self.worker_command(name);
        cmd.env("WMR_LOG", "info")
            .args(["--slots", "1"])
            .arg("--work-dir")
            .arg(self.worker_dir(name))
            .args(extra);
        self.spawn(&format!("worker-{name}"), cmd)
    }

    fn worker_dir(&self, name: &str) -> PathBuf {
        self.root.join(format!("work-{name}"))
    }

    fn assert_serving(&mut self) {
        assert!(
            self.coordinator().exited().is_none(),
            "the coordinator died"
        );
    }
}

/// A log file's text without ANSI escapes.
fn plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The value of `field=` on the first log line containing `message`.
fn log_field(text: &str, message: &str, field: &str) -> Option<String> {
    let text = plain(text);
    let line = text.lines().find(|l| l.contains(message))?;
    let start = line.find(&format!("{field}="))? + field.len() + 1;
    Some(
        line[start..]
            .split_whitespace()
            .next()?
            .trim_matches('"')
            .to_string(),
    )
}

/// Open a worker control stream on `connection` (development mode: no
/// worker token) and wait to be welcomed.
async fn join_as_worker(connection: &quinn::Connection, name: &str) -> Channel {
    let mut control = Channel::open(connection).await.unwrap();
    control
        .write(&Open::Worker {
            name: name.into(),
            slots: 1,
            labels: Default::default(),
            shuffle: None,
            token: String::new(),
            // No identity: a fresh worker id, as before identities.
            identity: String::new(),
        })
        .await
        .unwrap();
    match control.expect::<ToWorker>().await.unwrap() {
        ToWorker::Welcome { .. } => {}
        other => panic!("{name}: not welcomed: {other:?}"),
    }
    control
}

/// One request on a fresh stream of `connection`; the raw answer bytes.
async fn exchange(connection: &quinn::Connection, request: &[u8]) -> Vec<u8> {
    let (mut send, mut recv) = connection.open_bi().await.expect("opening a stream");
    // The peer may refuse the stream before reading it all.
    let _ = send.write_all(request).await;
    let _ = send.finish();
    recv.read_to_end(MAX_FRAME_BYTES + 16)
        .await
        .unwrap_or_default()
}

/// Decode one whole frame (and nothing after it).
fn one_frame<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> T {
    let (prefix, body) = bytes
        .split_first_chunk::<4>()
        .unwrap_or_else(|| panic!("no frame in {bytes:?}"));
    let len = wmr::transport::check_length(*prefix).expect("a valid length");
    assert_eq!(len, body.len(), "exactly one frame");
    wmr::transport::decode(body).expect("a well-formed frame")
}

/// Every frame in `bytes`, in order.
fn frames<T: serde::de::DeserializeOwned>(mut bytes: &[u8]) -> Vec<T> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let (prefix, rest) = bytes
            .split_first_chunk::<4>()
            .unwrap_or_else(|| panic!("a cut frame in {bytes:?}"));
        let len = wmr::transport::check_length(*prefix).expect("a valid length");
        out.push(wmr::transport::decode(&rest[..len]).expect("a well-formed frame"));
        bytes = &rest[len..];
    }
    out
}

/// A committed map output found in a worker's work dir while a job runs.
struct CommittedMapOutput {
    /// Index into the names searched.
    worker: usize,
    path: PathBuf,
    capability_file: PathBuf,
    /// A job id with the real job's prefix (the worker names its files by
    /// it), and that prefix.
    job: JobId,
    short: String,
    task: TaskId,
    epoch: wmr::model::AttemptEpoch,
}

/// Wait (bounded) for a committed map output in the work dir of one of the
/// workers `names`, while `deploy` runs.
fn committed_map_output(c: &Cluster, names: &[&str], deploy: &mut Proc) -> CommittedMapOutput {
    let (worker, path, capability_file) =
        poll("a committed map output on a worker", JOB_LIMIT, || {
            if let Some(status) = deploy.exited() {
                panic!("deploy exited ({status}) early: {}", deploy.stderr_text());
            }
            for (i, name) in names.iter().enumerate() {
                let Ok(jobs) = std::fs::read_dir(c.worker_dir(name)) else {
                    continue;
                };
                for job in jobs.flatten() {
                    let Ok(maps) = std::fs::read_dir(job.path().join("map")) else {
                        continue;
                    };
                    for map in maps.flatten() {
                        let name = map.file_name().to_string_lossy().to_string();
                        if name.starts_with("m-") && map.path().is_file() {
                            return Some((i, map.path(), job.path().join("capability")));
                        }
                    }
                }
            }
            None
        });
    let job_dir = path.parent().unwrap().parent().unwrap();
    let short = job_dir
        .file_name()
        .unwrap()
        .to_string_lossy()
        .strip_prefix("job-")
        .unwrap()
        .to_string();
    let job = JobId(uuid::Uuid::parse_str(&format!("{short}{}", "0".repeat(24))).unwrap());
    assert_eq!(job.to_string(), short);
    let stem = path.file_name().unwrap().to_string_lossy().to_string();
    let (task, epoch) = stem.split_once(".a").unwrap();
    let task = TaskId::Map(task.strip_prefix("m-").unwrap().parse().unwrap());
    let epoch = wmr::model::AttemptEpoch(epoch.parse().unwrap());
    CommittedMapOutput {
        worker,
        path,
        capability_file,
        job,
        short,
        task,
        epoch,
    }
}

// ---------------------------------------------------------------------------
// 1. Shuffle fetches need the job's capability

/// Worker-local shuffle: while a job's reducers run, a raw QUIC client that
/// pins a mapper's shuffle certificate (as reducers do) asks for a real
/// committed partition. Without the job's capability (a random one, or
/// none) it is refused with the exact error, and the refusal is logged;
/// with the capability the worker received (read from its work dir: the
/// positive control) the same request gets the partition's exact bytes.
/// Malformed, truncated, oversize and wrong-version frames on the shuffle
/// endpoint are each refused without an answer, logged, and leave the
/// connection up. The job's output still equals the sequential reference.
#[test]
fn shuffle_fetch_without_the_jobs_capability_is_refused() {
    let _serial = serial();
    let mut c = start(&[], |_, _| {});
    for name in ["w1", "w2"] {
        let worker = c.spawn_observed_worker(name, &[]);
        c.workers.push(worker);
    }
    let out = c.root.join("out");
    // Each reduce attempt busy-waits 2 s: the map outputs stay in place
    // (they are deleted when the job ends) while the test fetches.
    let mut deploy = c.deploy(&guest("hostile"), &books(), &out, &SLOW_REDUCES);

    let found = committed_map_output(&c, &["w1", "w2"], &mut deploy);
    let (worker, committed, capability_file) = (found.worker, found.path, found.capability_file);
    let (job, short, task, epoch) = (found.job, found.short, found.task, found.epoch);
    let (start, end) = wmr::intermediate::partition_range(&committed, 0).unwrap();
    let partition_bytes = std::fs::read(&committed).unwrap()[start as usize..end as usize].to_vec();

    let capability = std::fs::read_to_string(&capability_file).expect("the recorded capability");
    assert_eq!(capability.len(), 64, "32 random bytes, hex: {capability:?}");
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&capability_file)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the capability file is private");

    let log = c.workers[worker].stderr_text();
    let shuffle_addr: std::net::SocketAddr = log_field(&log, "serving map outputs", "addr")
        .unwrap_or_else(|| panic!("no `serving map outputs` line in {log}"))
        .parse()
        .unwrap();
    assert!(shuffle_addr.ip().is_loopback());
    let shuffle_fingerprint = log_field(&log, "serving map outputs", "fingerprint").unwrap();

    let request = |capability: Capability| {
        wmr::transport::encode(&Open::FetchPartition {
            job,
            task,
            epoch,
            partition: 0,
            capability,
        })
    };
    let refusal = format!("not authorised: no valid shuffle capability for job {short}");
    let version = PROTOCOL_VERSION.to_be_bytes();
    let frame = |len: u32, body: &[u8]| [&len.to_be_bytes()[..], body].concat();
    let bad_frames: Vec<(&str, Vec<u8>)> = vec![
        ("garbage", frame(9, &[&version[..], &[0xff; 7]].concat())),
        (
            "truncated",
            frame(1000, &[&version[..], &[1, 2, 3]].concat()),
        ),
        ("oversize", frame(MAX_FRAME_BYTES as u32 + 1, &version)),
        ("wrong version", frame(4, &[0x7f, 0x7f, 1, 2])),
    ];
    let (wrong, missing, garbage, right) = block_on("fetching partitions", async {
        let (_endpoint, connection) =
            wmr::transport::connect(shuffle_addr, &shuffle_fingerprint, CLIENT_LIMIT)
                .await
                .expect("pinning the worker's shuffle certificate");
        let wrong = exchange(&connection, &request(Capability::generate())).await;
        let missing = exchange(&connection, &request(Capability::default())).await;
        let mut garbage = Vec::new();
        for (what, bytes) in &bad_frames {
            garbage.push((*what, exchange(&connection, bytes).await));
        }
        assert!(
            connection.close_reason().is_none(),
            "a refused fetch closed the whole connection"
        );
        let right = exchange(&connection, &request(Capability(capability.clone()))).await;
        (wrong, missing, garbage, right)
    });
    match one_frame::<PartitionReply>(&wrong) {
        PartitionReply::Missing(reason) => assert_eq!(reason, refusal),
        other => panic!("a wrong capability read a partition: {other:?}"),
    }
    match one_frame::<PartitionReply>(&missing) {
        PartitionReply::Missing(reason) => assert_eq!(reason, refusal),
        other => panic!("no capability read a partition: {other:?}"),
    }
    for (what, answer) in &garbage {
        assert!(
            answer.is_empty(),
            "{what}: a bad frame got an answer: {answer:?}"
        );
    }
    let mut received = Vec::new();
    let mut replies = frames::<PartitionReply>(&right).into_iter();
    for reply in replies.by_ref() {
        match reply {
            PartitionReply::Chunk(bytes) => received.extend(bytes),
            PartitionReply::End { bytes } => {
                assert_eq!(bytes, received.len() as u64);
                break;
            }
            PartitionReply::Missing(reason) => panic!("the job's capability was refused: {reason}"),
        }
    }
    assert!(replies.next().is_none(), "frames after the end");
    assert!(received == partition_bytes, "not the partition");
    let log = plain(&c.workers[worker].stderr_text());
    assert_eq!(
        log.matches("partition fetch refused: wrong or missing capability")
            .count(),
        2,
        "each refusal is logged: {log}"
    );
    assert_eq!(
        log.matches("closing a stream after a bad frame").count(),
        bad_frames.len(),
        "each bad frame is logged: {log}"
    );
    assert!(log.contains("stream ended inside a frame"), "{log}");

    c.deploy_finishes_ok(&mut deploy, JOB_LIMIT);
    assert_output_equals_reference(&out, "hostile", 4);
    // The job is done: the workers delete its map outputs and capability
    // when the coordinator tells them (just after the job commit).
    poll("the job's capability to be deleted", CLIENT_LIMIT, || {
        (!capability_file.exists()).then_some(())
    });
    c.assert_serving();
}

// ---------------------------------------------------------------------------
// 2. Modules go to admitted workers only

/// After a job, the coordinator holds its module. A peer that completed
/// the TLS handshake but has no admitted worker stream asks for it by hash
/// and is refused with the exact error (and it is logged); a peer that
/// first joins as a worker on the same connection gets the exact bytes.
#[test]
fn module_fetch_needs_an_admitted_worker() {
    let _serial = serial();
    let mut c = start(&["--shared-store"], |_, _| {});
    let worker = c.spawn_observed_worker("w1", &[]);
    c.workers.push(worker);
    let out = c.root.join("out");
    let mut deploy = c.deploy(&guest("wordcount"), &books(), &out, &[]);
    c.deploy_finishes_ok(&mut deploy, JOB_LIMIT);
    assert_output_equals_reference(&out, "wordcount", 4);

    let module = std::fs::read(guest("wordcount")).unwrap();
    let hash = ModuleHash::of(&module);
    let fetch = wmr::transport::encode(&Open::FetchModule(hash.clone()));
    let (refused, found) = block_on("fetching a module", async {
        let (_endpoint, connection) =
            wmr::transport::connect(c.socket_addr(), &c.fingerprint, CLIENT_LIMIT)
                .await
                .expect("connecting to the coordinator");
        let refused = exchange(&connection, &fetch).await;

        // The same request after joining as a worker (development mode:
        // no worker token) on another connection.
        let (_endpoint, worker) =
            wmr::transport::connect(c.socket_addr(), &c.fingerprint, CLIENT_LIMIT)
                .await
                .expect("connecting to the coordinator");
        let _control = join_as_worker(&worker, "raw").await;
        let found = exchange(&worker, &fetch).await;
        (refused, found)
    });
    match one_frame::<ModuleReply>(&refused) {
        ModuleReply::Refused(reason) => assert_eq!(
            reason,
            "refused: modules are served only to an admitted worker (open a worker stream first)"
        ),
        other => panic!("an unauthenticated peer got {other:?}"),
    }
    match one_frame::<ModuleReply>(&found) {
        ModuleReply::Found(bytes) => assert!(bytes == module, "not the module's bytes"),
        other => panic!("an admitted worker got {other:?}"),
    }
    let log = plain(&c.coordinator().stderr_text());
    assert!(
        log.contains("module fetch refused: no admitted worker on this connection")
            && log.contains(&hash.to_string()),
        "{log}"
    );
    c.assert_serving();
}

// ---------------------------------------------------------------------------
// 3. Mutual TLS for workers

/// `wmr worker --identity DIR --print-fingerprint` makes a persistent
/// identity; `wmr tenant allow-worker` lists it. With the list in place, a
/// worker presenting another certificate and a worker presenting none are
/// refused with clear errors (exit 1, no retry); the allowed one runs a
/// job to the reference output, and tenants still connect without a
/// certificate.
#[test]
fn mutual_tls_admits_only_allowed_worker_certificates() {
    let _serial = serial();
    let identity = |root: &Path, dir: &Path| {
        let mut cmd = wmr_in(root);
        cmd.args(["worker", "--print-fingerprint", "--identity"])
            .arg(dir);
        let out = output_within(cmd, "worker --print-fingerprint", CLIENT_LIMIT);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let fingerprint = String::from_utf8(out.stdout).unwrap().trim().to_string();
        assert_eq!(fingerprint.len(), 64, "{fingerprint:?}");
        fingerprint
    };
    let mut fingerprints = Vec::new();
    let mut c = start(&[], |root, state| {
        let allowed = identity(root, &root.join("id-allowed"));
        // Persistent: the same identity the second time, key kept private.
        assert_eq!(identity(root, &root.join("id-allowed")), allowed);
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(root.join("id-allowed/key.der"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let other = identity(root, &root.join("id-other"));
        assert_ne!(allowed, other);
        let mut cmd = wmr_in(root);
        cmd.args(["tenant", "allow-worker", &allowed, "--state"])
            .arg(state);
        let out = output_within(cmd, "tenant allow-worker", CLIENT_LIMIT);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        fingerprints.push(allowed);
        fingerprints.push(other);
    });
    let (allowed, other) = (&fingerprints[0], &fingerprints[1]);
    assert_eq!(
        std::fs::read_to_string(c.state.join("worker-fingerprints")).unwrap(),
        format!("{allowed}\n")
    );

    let id_other = c.root.join("id-other");
    let mut wrong = c.spawn_observed_worker("other", &["--identity", id_other.to_str().unwrap()]);
    let mut none = c.spawn_observed_worker("none", &[]);
    for (worker, expected) in [
        (
            &mut wrong,
            format!(
                "error: the coordinator refused this worker: this worker's certificate {other} is not an allowed worker certificate"
            ),
        ),
        (
            &mut none,
            "error: the coordinator refused this worker: mutual TLS is required: this worker presented no certificate (start it with --identity DIR)".to_string(),
        ),
    ] {
        let status = worker.wait_within(CLIENT_LIMIT);
        assert_eq!(status.code(), Some(1), "{}", worker.stderr_text());
        let stderr = plain(&worker.stderr_text());
        assert_eq!(stderr.lines().last(), Some(expected.as_str()), "{stderr}");
    }
    let log = plain(&c.coordinator().stderr_text());
    assert_eq!(log.matches("worker refused").count(), 2, "{log}");

    let id_allowed = c.root.join("id-allowed");
    let worker = c.spawn_observed_worker("allowed", &["--identity", id_allowed.to_str().unwrap()]);
    c.workers.push(worker);
    let out = c.root.join("out");
    let mut deploy = c.deploy(&guest("wordcount"), &books(), &out, &[]);
    c.deploy_finishes_ok(&mut deploy, JOB_LIMIT);
    assert_output_equals_reference(&out, "wordcount", 4);
    c.assert_serving();
}

// ---------------------------------------------------------------------------
// 4. Bad frames from an admitted worker

/// An admitted worker's control stream sends a malformed frame, a
/// truncated frame, an oversize length prefix or a frame of another
/// protocol version: each time the coordinator answers `Refused` with the
/// reason, ends that stream cleanly (the connection stays up), logs it, and
/// carries on; a real worker then runs a job to the reference output.
#[test]
fn bad_frames_from_an_admitted_worker_close_only_its_stream() {
    let _serial = serial();
    let mut c = start(&["--shared-store"], |_, _| {});
    let version = PROTOCOL_VERSION.to_be_bytes();
    let frame = |len: u32, body: &[u8]| [&len.to_be_bytes()[..], body].concat();
    let cases: Vec<(&str, Vec<u8>, String)> = vec![
        (
            "garbage",
            frame(16, &[&version[..], &[0xff; 14]].concat()),
            "bad frame: malformed frame: ".into(),
        ),
        (
            "truncated",
            frame(1000, &[&version[..], &[1, 2, 3]].concat()),
            "bad frame: stream ended inside a frame".into(),
        ),
        (
            "oversize",
            frame(MAX_FRAME_BYTES as u32 + 1, &version),
            format!(
                "bad frame: frame of {} bytes exceeds the limit of {MAX_FRAME_BYTES} bytes",
                MAX_FRAME_BYTES + 1
            ),
        ),
        (
            "wrong version",
            frame(4, &[0x7f, 0x7f, 1, 2]),
            format!(
                "bad frame: frame speaks protocol version 32639, this wmr speaks {PROTOCOL_VERSION}"
            ),
        ),
    ];
    let addr = c.socket_addr();
    let fingerprint = c.fingerprint.clone();
    for (what, bytes, expected) in &cases {
        let refusal = block_on(what, async {
            let (_endpoint, connection) = wmr::transport::connect(addr, &fingerprint, CLIENT_LIMIT)
                .await
                .expect("connecting to the coordinator");
            let mut control = join_as_worker(&connection, &format!("bad-{what}")).await;
            control.send.write_all(bytes).await.unwrap();
            if *what == "truncated" {
                control.send.finish().unwrap();
            }
            let refusal = match control.read::<ToWorker>().await {
                Ok(Some(ToWorker::Refused(reason))) => reason,
                other => panic!("{what}: the coordinator answered {other:?}, not Refused"),
            };
            // Then the stream ends cleanly, and only the stream.
            assert!(
                matches!(control.read::<ToWorker>().await, Ok(None)),
                "{what}: the stream did not end cleanly"
            );
            assert!(
                connection.close_reason().is_none(),
                "{what}: the coordinator closed the whole connection"
            );
            refusal
        });
        assert!(
            refusal.starts_with(expected.as_str()),
            "{what}: refused with {refusal:?}, expected {expected:?}"
        );
        if *what != "garbage" {
            assert_eq!(&refusal, expected, "{what}");
        }
        c.assert_serving();
    }
    let log = plain(&c.coordinator().stderr_text());
    assert_eq!(
        log.matches("closing a worker's stream after a bad frame")
            .count(),
        cases.len(),
        "each bad frame is logged with its reason: {log}"
    );
    assert!(log.contains("stream ended inside a frame"), "{log}");

    let worker = c.spawn_observed_worker("w1", &[]);
    c.workers.push(worker);
    let out = c.root.join("out");
    let mut deploy = c.deploy(&guest("wordcount"), &books(), &out, &[]);
    c.deploy_finishes_ok(&mut deploy, JOB_LIMIT);
    assert_output_equals_reference(&out, "wordcount", 4);
    c.assert_serving();
}

// ---------------------------------------------------------------------------
// 5. Tenant pools

/// `wmr tenant ARGS --state STATE`; its stdout (a token), trimmed.
fn tenant_admin(c: &Cluster, args: &[&str]) -> String {
    let mut cmd = c.wmr();
    cmd.arg("tenant").args(args).arg("--state").arg(&c.state);
    let out = output_within(cmd, &format!("wmr tenant {args:?}"), CLIENT_LIMIT);
    assert!(
        out.status.success(),
        "wmr tenant {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// One partition fetch from the worker whose log is `log`; the partition's
/// bytes, or the refusal.
fn fetch_partition(
    log: &str,
    found: &CommittedMapOutput,
    capability: &str,
) -> Result<Vec<u8>, String> {
    let addr: std::net::SocketAddr = log_field(log, "serving map outputs", "addr")
        .unwrap_or_else(|| panic!("no `serving map outputs` line in {log}"))
        .parse()
        .unwrap();
    let fingerprint = log_field(log, "serving map outputs", "fingerprint").unwrap();
    let request = wmr::transport::encode(&Open::FetchPartition {
        job: found.job,
        task: found.task,
        epoch: found.epoch,
        partition: 0,
        capability: Capability(capability.to_string()),
    });
    let answer = block_on("fetching a partition", async {
        let (_endpoint, connection) = wmr::transport::connect(addr, &fingerprint, CLIENT_LIMIT)
            .await
            .expect("pinning the worker's shuffle certificate");
        exchange(&connection, &request).await
    });
    let mut received = Vec::new();
    for reply in frames::<PartitionReply>(&answer) {
        match reply {
            PartitionReply::Chunk(bytes) => received.extend(bytes),
            PartitionReply::End { .. } => return Ok(received),
            PartitionReply::Missing(reason) => return Err(reason),
        }
    }
    panic!("no end of the partition in {answer:?}")
}

/// Tenant `alice` is pool-only (`wmr tenant add --pool-only`) with one
/// dedicated worker, joined with her pool token (`wmr tenant worker-token
/// --tenant alice`); `bob` has a shared worker. Both jobs complete with the
/// reference output; every alice attempt ran on her worker and none of
/// bob's did; bob's status does not list her worker; and her worker refuses
/// a fetch of bob's committed partition even with bob's real capability,
/// which the shared worker (the positive control) serves (SECURITY.md,
/// "Tenant pools").
#[test]
fn a_tenant_pool_worker_runs_and_serves_only_its_tenant() {
    let _serial = serial();
    let mut c = Cluster::options()
        .tenants(&["alice", "bob"])
        .tenant_books()
        .reducers(4)
        .client_limit(CLIENT_LIMIT)
        .start();
    let root = path(&c.tenants[0].root);
    c.tenants[0].token = tenant_admin(&c, &["add", "alice", "--root", &root, "--pool-only"]);
    let pool_token = tenant_admin(&c, &["worker-token", "--tenant", "alice"]);
    let worker_token = c.worker_token.clone().expect("tenant mode");
    let pool = c.spawn_observed_worker("pool-alice", &["--token", &pool_token]);
    c.workers.push(pool);
    let shared = c.spawn_observed_worker("shared", &["--token", &worker_token]);
    c.workers.push(shared);

    let (alice, bob) = (c.tenants[0].clone(), c.tenants[1].clone());
    let (alice_out, bob_out) = (alice.root.join("out"), bob.root.join("out"));
    let mut alice_deploy =
        c.deploy_as(&alice, &guest("wordcount"), &alice.books(), &alice_out, &[]);
    // Bob's reducers busy-wait 2 s each: his map outputs stay in place
    // while the test fetches.
    let mut bob_deploy = c.deploy_as(
        &bob,
        &guest("hostile"),
        &bob.books(),
        &bob_out,
        &SLOW_REDUCES,
    );
    let found = committed_map_output(&c, &["shared"], &mut bob_deploy);
    let capability = std::fs::read_to_string(&found.capability_file).expect("bob's capability");
    let pool_log = c.workers[0].stderr_text();
    let refusal = format!(
        "not authorised: no valid shuffle capability for job {}",
        found.short
    );
    assert_eq!(
        fetch_partition(&pool_log, &found, &capability),
        Err(refusal)
    );
    let shared_log = c.workers[1].stderr_text();
    let served = fetch_partition(&shared_log, &found, &capability).expect("the positive control");
    let (start, end) = wmr::intermediate::partition_range(&found.path, 0).unwrap();
    let bytes = std::fs::read(&found.path).unwrap()[start as usize..end as usize].to_vec();
    assert!(
        served == bytes,
        "the shared worker served another partition"
    );

    let alice_job = c.deploy_finishes_ok(&mut alice_deploy, JOB_LIMIT);
    let bob_job = c.deploy_finishes_ok(&mut bob_deploy, JOB_LIMIT);
    assert_output_equals_reference(&alice_out, "wordcount", 4);
    assert_output_equals_reference(&bob_out, "hostile", 4);
    let alice_status = Status::parse(&c.json(&alice, &["status", &alice_job, "--json"]));
    for a in &alice_status.attempts {
        assert_eq!(alice_status.worker_name(a.worker), "pool-alice", "{a:?}");
    }
    let bob_status = Status::parse(&c.json(&bob, &["status", &bob_job, "--json"]));
    let bob_sees: Vec<&str> = bob_status
        .workers
        .values()
        .map(|(n, _)| n.as_str())
        .collect();
    assert_eq!(bob_sees, ["shared"], "bob sees only shared workers");
    for a in &bob_status.attempts {
        assert_eq!(bob_status.worker_name(a.worker), "shared", "{a:?}");
    }
    assert!(!bob_status.attempts.is_empty() && !alice_status.attempts.is_empty());
    c.assert_serving();
}

// ---------------------------------------------------------------------------
// 6. Clients that cannot reach the coordinator

/// `wmr status` pointed at a port where nothing answers (a bound UDP socket
/// that never replies) gives up after `--connect-timeout` with one line
/// naming the address and STATE/coordinator.addr; a malformed fingerprint
/// is refused before any connection; a wrong one says the certificate did
/// not match.
#[test]
fn clients_that_cannot_reach_the_coordinator_say_so_fast() {
    let _serial = serial();
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap().to_string();
    let pin = "ab".repeat(32);
    let status = |addr: &str, fingerprint: &str, extra: &[&str]| {
        let mut cmd = wmr();
        cmd.args([
            "status",
            "--coordinator",
            addr,
            "--fingerprint",
            fingerprint,
        ])
        .args(extra);
        let started = std::time::Instant::now();
        let out = output_within(cmd, "wmr status", CLIENT_LIMIT);
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        let stderr = String::from_utf8(out.stderr).unwrap();
        (stderr.trim().to_string(), started.elapsed())
    };
    let (line, took) = status(&addr, &pin, &["--connect-timeout", "1s"]);
    assert_eq!(
        line,
        format!(
            "error: no coordinator answered at {addr} within 1.0 s (--connect-timeout); is it running? It writes the address it listens on to STATE/coordinator.addr"
        )
    );
    assert!(took < Duration::from_secs(10), "gave up after {took:?}");
    let (line, took) = status(&addr, &pin, &[]);
    assert!(line.contains("within 5.0 s (--connect-timeout)"), "{line}");
    assert!(
        took < Duration::from_secs(15),
        "the default gave up after {took:?}"
    );

    let (line, took) = status(&addr, "not-hex", &[]);
    assert_eq!(
        line,
        "error: the fingerprint \"not-hex\" is not 64 hex digits (SHA-256; the coordinator writes its own to STATE/fingerprint)"
    );
    assert!(took < Duration::from_secs(2), "refused only after {took:?}");

    let mut c = start(&[], |_, _| {});
    let real = c.addr.clone();
    let (line, _) = status(&real, &pin, &[]);
    assert!(
        line.contains(&format!(
            "the peer's certificate did not match the pinned fingerprint: it is {}, not {pin}",
            c.fingerprint
        )),
        "{line}"
    );
    c.assert_serving();
}

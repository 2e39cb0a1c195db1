//! Integration tests of the durable coordinator: its state (jobs, modules,
//! the attempt log, incarnations) lives in `STATE/wmr-state.redb` (redb), so
//! a coordinator killed with SIGKILL and started again with the same
//! `--state` and `--listen` resumes its jobs: committed tasks stay committed,
//! everything else runs again with higher epochs, and `wmr deploy` follows
//! its job across the restart.
//!
//! - the coordinator is SIGKILLed in the map phase and, after its restart,
//!   again the moment the reduce phase begins; the job completes with the
//!   reference output and no committed task runs twice;
//! - a truncated state file stops the coordinator with a one-line error and
//!   is left untouched;
//! - a cancelled job is resumed with `wmr resume` and completes;
//! - a completed job is still listed after a restart.
//!
//! As in `distributed.rs`: real processes on 127.0.0.1, every process owned
//! by a [`Proc`] whose `Drop` kills it, every wait a bounded poll on an
//! observable condition, and each test under a hard time bound that every
//! wait respects. The tests run one at a time.

mod support;

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};

use std::time::{Duration, Instant};
use support::*;
use wmr::local::Progress;
use wmr::scheduler::Phase;

/// nReduce of the MIT lab, as in `distributed.rs`.
const REDUCERS: &str = "10";
/// The step of every bounded poll.
const STEP: Duration = Duration::from_millis(10);
/// Bound on one client call (`wmr status`, `jobs`, `cancel`, `resume`).
const CLIENT_LIMIT: Duration = Duration::from_secs(30);
/// A short lease: the idle timeout of the QUIC connections is twice the
/// lease, so workers and `wmr deploy` notice a dead coordinator in ~6 s.
const FAST: [&str; 4] = ["--lease", "3s", "--heartbeat", "500ms"];

// ---------------------------------------------------------------------------
// Processes

/// A child process that is killed (SIGKILL) and reaped when dropped; its
/// stdout and stderr go to files, whose tail is printed if the test panics.
struct Proc {
    name: String,
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Proc {
    fn spawn(name: &str, mut cmd: Command, logs: &Path) -> Proc {
        let stdout = logs.join(format!("{name}.stdout"));
        let stderr = logs.join(format!("{name}.stderr"));
        cmd.stdin(Stdio::null())
            .stdout(File::create(&stdout).unwrap())
            .stderr(File::create(&stderr).unwrap());
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {name}: {e}"));
        Proc {
            name: name.to_string(),
            child,
            stdout,
            stderr,
        }
    }

    fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("try_wait")
    }

    /// SIGKILL now and reap.
    fn kill_now(&mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reaping");
    }

    fn stdout_text(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let text = self.stderr_text();
            let lines: Vec<&str> = text.lines().collect();
            eprintln!("--- {} stderr (last lines) ---", self.name);
            for line in &lines[lines.len().saturating_sub(20)..] {
                eprintln!("{line}");
            }
        }
    }
}

// ---------------------------------------------------------------------------
// A coordinator that can be killed and started again, and its workers

struct Cluster {
    /// `None` while it is dead.
    coordinator: Option<Proc>,
    workers: Vec<Proc>,
    coordinator_args: Vec<String>,
    /// `127.0.0.1:0` until the first start; then the bound address, which
    /// every restart listens on again.
    addr: String,
    fingerprint: String,
    starts: usize,
    spawned: usize,
    root: PathBuf,
    state: PathBuf,
    logs: PathBuf,
    /// The hard bound of the test: no wait goes past it.
    deadline: Instant,
    // Last: removed after every process above was killed.
    _tmp: tempfile::TempDir,
}

impl Cluster {
    /// A coordinator with `args` on 127.0.0.1:0; the test must end within
    /// `bound`.
    fn start(bound: Duration, args: &[&str]) -> Cluster {
        let deadline = Instant::now() + bound;
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        let (state, logs) = (root.join("state"), root.join("logs"));
        std::fs::create_dir_all(&logs).unwrap();
        std::fs::create_dir_all(root.join("tmp")).unwrap();
        let mut c = Cluster {
            coordinator: None,
            workers: Vec::new(),
            coordinator_args: args.iter().map(|a| a.to_string()).collect(),
            addr: "127.0.0.1:0".into(),
            fingerprint: String::new(),
            starts: 0,
            spawned: 0,
            root,
            state,
            logs,
            deadline,
            _tmp: tmp,
        };
        c.start_coordinator();
        c
    }

    /// Poll `condition` every [`STEP`] until it holds; panic with `what`
    /// after `limit` or at the test's deadline, whichever comes first.
    fn poll<T>(&self, what: &str, limit: Duration, mut condition: impl FnMut() -> Option<T>) -> T {
        let deadline = self.deadline.min(Instant::now() + limit);
        loop {
            if let Some(value) = condition() {
                return value;
            }
            assert!(
                Instant::now() < deadline,
                "timed out ({}): {what}",
                if deadline == self.deadline {
                    "the test's time bound".to_string()
                } else {
                    format!("{limit:?}")
                }
            );
            std::thread::sleep(STEP);
        }
    }

    fn left(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// `wmr` with TMPDIR inside the test's directory.
    fn wmr(&self) -> Command {
        let mut cmd = wmr();
        cmd.env("TMPDIR", self.root.join("tmp"))
            .env_remove("WMR_COORDINATOR")
            .env_remove("WMR_FINGERPRINT");
        cmd
    }

    /// Start (or restart) the coordinator on `self.addr` with the same
    /// state, and wait until it listens: it has written
    /// `STATE/coordinator.addr`, which is removed first so that an old copy
    /// does not count. A restart keeps the address and the certificate.
    fn start_coordinator(&mut self) {
        assert!(self.coordinator.is_none(), "the coordinator is running");
        let addr_file = self.state.join("coordinator.addr");
        let _ = std::fs::remove_file(&addr_file);
        self.starts += 1;
        let mut cmd = self.wmr();
        cmd.args(["coordinator", "--listen", &self.addr, "--state"])
            .arg(&self.state)
            .args(&self.coordinator_args);
        let name = format!("coordinator-{}", self.starts);
        let mut coordinator = Proc::spawn(&name, cmd, &self.logs);
        let (addr, fingerprint) = self.poll(
            "the coordinator to write coordinator.addr",
            Duration::from_secs(30),
            || {
                if let Some(status) = coordinator.exited() {
                    panic!(
                        "{name} exited ({status}) before listening: {}",
                        coordinator.stderr_text()
                    );
                }
                let addr = std::fs::read_to_string(&addr_file).ok()?;
                let fingerprint = std::fs::read_to_string(self.state.join("fingerprint")).ok()?;
                Some((addr.trim().to_string(), fingerprint.trim().to_string()))
            },
        );
        if self.starts == 1 {
            let parsed: std::net::SocketAddr = addr.parse().unwrap();
            assert!(parsed.ip().is_loopback() && parsed.port() != 0, "{addr}");
            (self.addr, self.fingerprint) = (addr, fingerprint);
        } else {
            assert_eq!(addr, self.addr, "the restarted coordinator's address");
            assert_eq!(
                fingerprint, self.fingerprint,
                "the restarted coordinator's certificate"
            );
        }
        self.coordinator = Some(coordinator);
    }

    /// SIGKILL the coordinator: no chance to write anything more.
    fn kill_coordinator(&mut self) {
        let mut coordinator = self.coordinator.take().expect("a running coordinator");
        if let Some(status) = coordinator.exited() {
            panic!(
                "the coordinator had already exited ({status}): {}",
                coordinator.stderr_text()
            );
        }
        coordinator.kill_now();
    }

    fn peer_args(&self) -> [&str; 4] {
        [
            "--coordinator",
            &self.addr,
            "--fingerprint",
            &self.fingerprint,
        ]
    }

    /// Workers `w1..=wn`.
    fn add_workers(&mut self, n: usize, extra: &[&str]) {
        for i in 1..=n {
            let mut cmd = self.wmr();
            cmd.args(["worker", "--connect", &self.addr])
                .args(["--fingerprint", &self.fingerprint])
                .args(["--name", &format!("w{i}")])
                .args(extra);
            let worker = Proc::spawn(&format!("worker-w{i}"), cmd, &self.logs);
            self.workers.push(worker);
        }
    }

    /// Start `wmr deploy GUEST --input BOOKS --output OUT --reducers 10`.
    fn deploy(&mut self, guest: &Path, out: &Path, extra: &[&str]) -> Proc {
        self.spawned += 1;
        let mut cmd = self.wmr();
        cmd.arg("deploy")
            .arg(guest)
            .arg("--input")
            .arg(books())
            .arg("--output")
            .arg(out)
            .args(self.peer_args())
            .args(["--reducers", REDUCERS])
            .args(extra);
        Proc::spawn(&format!("deploy-{}", self.spawned), cmd, &self.logs)
    }

    /// Wait until a running deploy has said `job JOBID submitted`.
    fn job_id(&self, deploy: &mut Proc) -> String {
        self.poll(
            "deploy to print `job JOBID submitted`",
            CLIENT_LIMIT,
            || {
                let text = deploy.stderr_text();
                if let Some(line) = text.lines().next()
                    && text.contains('\n')
                {
                    return Some(parse_submitted(line));
                }
                if let Some(status) = deploy.exited() {
                    panic!("deploy exited ({status}) before submitting: {text}");
                }
                None
            },
        )
    }

    /// Wait for a deploy to exit; its status and stderr.
    fn deploy_exit(&self, deploy: &mut Proc, limit: Duration) -> (ExitStatus, String) {
        let what = format!("{} to exit", deploy.name);
        let status = self.poll(&what, limit, || deploy.exited());
        (status, deploy.stderr_text())
    }

    /// A client command (`status`, `jobs`, `cancel`, `resume`, with the
    /// coordinator's address and fingerprint), bounded in time.
    fn client(&self, args: &[&str]) -> Output {
        let mut cmd = self.wmr();
        cmd.args(args).args(self.peer_args());
        let limit = CLIENT_LIMIT.min(self.left());
        output_within(cmd, &format!("wmr {args:?}"), limit)
    }

    fn client_ok(&self, args: &[&str]) -> Output {
        let out = self.client(args);
        assert!(
            out.status.success(),
            "wmr {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    fn client_json(&self, args: &[&str]) -> Value {
        let out = self.client_ok(args);
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "wmr {args:?} printed no JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// `wmr status JOB --json`.
    fn status(&self, job: &str) -> Status {
        Status::parse(&self.client_json(&["status", job, "--json"]))
    }

    /// `wmr jobs [--resumable] --json`: the listings of `job` (one, normally).
    fn listings(&self, job: &str, resumable: bool) -> Vec<Value> {
        let mut args = vec!["jobs", "--json"];
        if resumable {
            args.push("--resumable");
        }
        let json = self.client_json(&args);
        let all = json
            .as_array()
            .unwrap_or_else(|| panic!("wmr {args:?}: not a list: {json}"));
        for entry in all {
            for field in [
                "job",
                "phase",
                "outcome",
                "committed",
                "tasks",
                "submitted_unix_ms",
            ] {
                assert!(
                    entry.get(field).is_some(),
                    "wmr {args:?}: no {field} in {entry}"
                );
            }
        }
        all.iter().filter(|e| e["job"] == job).cloned().collect()
    }

    /// Follow `job` as a reconnecting `wmr deploy` does (`Watch`) until a
    /// progress report satisfies `until`; that report. The coordinator
    /// pushes progress as it happens (at least on every heartbeat), so this
    /// returns within milliseconds of the condition. Panics if the job ends
    /// first, or after `limit` (or the test's deadline).
    fn watch_until(
        &self,
        job: &str,
        what: &str,
        limit: Duration,
        mut until: impl FnMut(&Progress) -> bool,
    ) -> Progress {
        use wmr::transport::Channel;
        use wmr::wire::{ClientReply, ClientRequest, Open};
        let limit = limit.min(self.left());
        let addr: std::net::SocketAddr = self.addr.parse().unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let follow = async {
                let (_endpoint, connection) =
                    wmr::transport::connect(addr, &self.fingerprint, Duration::from_secs(30))
                        .await
                        .expect("connecting to the coordinator");
                let mut channel = Channel::open(&connection).await.expect("opening a stream");
                channel
                    .write(&Open::Client {
                        tenant: wmr::protocol::TenantId::local(),
                        // Development mode (no tenants.toml): no token.
                        token: String::new(),
                        request: ClientRequest::Watch(job.to_string()),
                    })
                    .await
                    .expect("sending Watch");
                loop {
                    match channel.read::<ClientReply>().await {
                        Ok(Some(ClientReply::Progress {
                            phase,
                            committed,
                            running,
                            total,
                        })) => {
                            let progress = Progress {
                                phase,
                                committed,
                                running,
                                total,
                            };
                            if until(&progress) {
                                return progress;
                            }
                        }
                        Ok(Some(other)) => panic!("job {job} ended before {what}: {other:?}"),
                        Ok(None) => panic!("the coordinator ended the watch of {job}"),
                        Err(e) => panic!("watching {job}: {e}"),
                    }
                }
            };
            tokio::time::timeout(limit, follow)
                .await
                .unwrap_or_else(|_| panic!("job {job}: no {what} within {limit:?}"))
        })
    }
}

/// Run a short command with a hard time limit.
fn output_within(mut cmd: Command, what: &str, limit: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning wmr");
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut stdout, &mut buf).map(|_| buf)
    });
    let err = std::thread::spawn(move || {
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut stderr, &mut buf).map(|_| buf)
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what}: no answer within {limit:?}");
        }
        std::thread::sleep(STEP);
    };
    Output {
        status,
        stdout: out.join().unwrap().unwrap_or_default(),
        stderr: err.join().unwrap().unwrap_or_default(),
    }
}

fn parse_submitted(line: &str) -> String {
    let job = line
        .strip_prefix("job ")
        .and_then(|rest| rest.strip_suffix(" submitted"))
        .unwrap_or_else(|| {
            panic!("deploy's first stderr line is {line:?}, not `job JOBID submitted`")
        });
    assert!(!job.is_empty() && !job.contains(char::is_whitespace));
    job.to_string()
}

// ---------------------------------------------------------------------------
// `wmr status --json`

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Task {
    Map(u64),
    Reduce(u64),
}

#[derive(Clone, Debug)]
struct Attempt {
    task: Task,
    epoch: u64,
    /// "Committed", "Running", "RejectedStale", "Lost", "OutputLost", "Failed".
    outcome: String,
    /// Milliseconds since the job started (the coordinator's clock).
    started_ms: u64,
    ended_ms: Option<u64>,
}

impl Attempt {
    fn parse(record: &Value) -> Attempt {
        let task = &record["task"];
        let task = match (task.get("Map"), task.get("Reduce")) {
            (Some(i), None) => Task::Map(i.as_u64().expect("map index")),
            (None, Some(i)) => Task::Reduce(i.as_u64().expect("reduce index")),
            _ => panic!("bad task in attempt record {record}"),
        };
        let outcome = match &record["outcome"] {
            Value::String(s) => s.clone(),
            Value::Object(m) if m.len() == 1 => m.keys().next().unwrap().clone(),
            other => panic!("bad outcome {other} in attempt record {record}"),
        };
        let num = |field: &str| {
            record[field]
                .as_u64()
                .unwrap_or_else(|| panic!("attempt record without {field}: {record}"))
        };
        Attempt {
            task,
            epoch: num("epoch"),
            outcome,
            started_ms: num("started_ms"),
            ended_ms: record["ended_ms"].as_u64(),
        }
    }

    fn key(&self) -> (Task, u64) {
        (self.task, self.epoch)
    }
}

#[derive(Clone, Debug)]
struct Status {
    phase: String,
    attempts: Vec<Attempt>,
}

impl Status {
    fn parse(json: &Value) -> Status {
        Status {
            phase: json["phase"]
                .as_str()
                .unwrap_or_else(|| panic!("status without phase: {json}"))
                .to_string(),
            attempts: json["attempt_log"]
                .as_array()
                .unwrap_or_else(|| panic!("status without attempt_log: {json}"))
                .iter()
                .map(Attempt::parse)
                .collect(),
        }
    }

    fn summary(&self) -> String {
        let mut outcomes: BTreeMap<&str, usize> = BTreeMap::new();
        for a in &self.attempts {
            *outcomes.entry(a.outcome.as_str()).or_default() += 1;
        }
        format!(
            "phase {}, attempts by outcome {outcomes:?}, attempts {:?}",
            self.phase, self.attempts
        )
    }

    fn keys(&self) -> BTreeSet<(Task, u64)> {
        self.attempts.iter().map(Attempt::key).collect()
    }

    fn max_epoch(&self) -> u64 {
        self.attempts.iter().map(|a| a.epoch).max().unwrap_or(0)
    }

    fn committed(&self) -> Vec<&Attempt> {
        self.attempts
            .iter()
            .filter(|a| a.outcome == "Committed")
            .collect()
    }

    /// Each of the 8 map and 10 reduce tasks has exactly one committed
    /// attempt.
    fn assert_one_commit_per_task(&self) {
        let mut commits: BTreeMap<Task, usize> = BTreeMap::new();
        for a in self.committed() {
            *commits.entry(a.task).or_default() += 1;
        }
        let reducers = REDUCERS.parse::<u64>().unwrap();
        let expected: BTreeMap<Task, usize> = (0..8)
            .map(Task::Map)
            .chain((0..reducers).map(Task::Reduce))
            .map(|t| (t, 1))
            .collect();
        assert_eq!(
            commits,
            expected,
            "committed attempts per task; {}",
            self.summary()
        );
    }
}

// ---------------------------------------------------------------------------
// Outputs

/// The committed output (with `_SUCCESS`, 10 part files) equals the
/// reference; on a difference, say where.
fn assert_output_equals_reference(out: &Path, guest_name: &str) {
    let expected = books_reference(guest_name);
    let got = sorted_output(out);
    assert_eq!(
        part_files(out).len(),
        REDUCERS.parse::<usize>().unwrap(),
        "{}: one part file per reducer",
        out.display()
    );
    if got != expected {
        let first = got
            .iter()
            .zip(&expected)
            .position(|(g, e)| g != e)
            .unwrap_or(got.len().min(expected.len()));
        panic!(
            "{}: {guest_name} output differs from the reference: {} lines vs {} expected; first difference at sorted line {first}: got {:?}, expected {:?}",
            out.display(),
            got.len(),
            expected.len(),
            got.get(first),
            expected.get(first)
        );
    }
    assert!(
        !out.join("_temporary").exists(),
        "{}/_temporary remains",
        out.display()
    );
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

// ---------------------------------------------------------------------------
// 1. Coordinator crashes

/// Shared store, two one-slot workers, map calls of 1 s. The coordinator is
/// SIGKILLed once a map task has committed, started again (same `--state`,
/// same `--listen`), and SIGKILLed again the moment the reduce phase begins
/// (pushed by the coordinator to a `Watch`), then started once more. The
/// `wmr deploy` that submitted the job rides out both crashes and exits 0;
/// the output equals the reference; the attempt log has one committed
/// attempt per task, keeps attempts from before each crash, and no task
/// committed before a crash ran again.
#[test]
fn coordinator_killed_while_mapping_and_while_reducing_resumes_the_job() {
    let _serial = serial();
    let started = Instant::now();
    let mut args = vec!["--shared-store"];
    args.extend(FAST);
    let mut c = Cluster::start(Duration::from_secs(150), &args);
    c.add_workers(2, &["--slots", "1"]);
    books_reference("hostile");
    let out = c.root.join("out");
    let mut deploy = c.deploy(&guest("hostile"), &out, &strs(&sleep_params(1000)));
    let job = c.job_id(&mut deploy);

    // Crash 1: in the map phase, once a map task has committed.
    let first = c.poll("a committed map attempt", Duration::from_secs(30), || {
        let status = c.status(&job);
        assert_eq!(status.phase, "Mapping", "{}", status.summary());
        let committed = status
            .committed()
            .iter()
            .any(|a| matches!(a.task, Task::Map(_)));
        committed.then_some(status)
    });
    c.kill_coordinator();
    println!(
        "{:.1} s: killed the coordinator while mapping; {}",
        started.elapsed().as_secs_f64(),
        first.summary()
    );
    assert!(
        deploy.exited().is_none(),
        "deploy exited when the coordinator died: {}",
        deploy.stderr_text()
    );
    c.start_coordinator();

    // The new incarnation knows the job at once, and assigns attempts (the
    // workers reconnect) with epochs above every earlier one.
    let second = c.poll(
        "an attempt of the restarted coordinator",
        Duration::from_secs(60),
        || {
            let status = c.status(&job);
            let fresh = status.attempts.iter().any(|a| a.epoch > first.max_epoch());
            fresh.then_some(status)
        },
    );
    for old in first.committed() {
        assert!(
            second
                .attempts
                .iter()
                .any(|a| a.key() == old.key() && a.outcome == "Committed"),
            "{old:?}, committed before the crash, is not committed after it; {}",
            second.summary()
        );
    }

    // Crash 2: the moment the reduce phase begins.
    let at = c.watch_until(&job, "the reduce phase", Duration::from_secs(60), |p| {
        p.phase == Phase::Reducing
    });
    c.kill_coordinator();
    println!(
        "{:.1} s: killed the coordinator when reducing began: {at:?}",
        started.elapsed().as_secs_f64()
    );
    assert!(at.committed < at.total, "{at:?}");
    assert!(
        deploy.exited().is_none(),
        "deploy exited when the coordinator died: {}",
        deploy.stderr_text()
    );
    c.start_coordinator();

    let (exit, stderr) = c.deploy_exit(&mut deploy, Duration::from_secs(90));
    assert!(
        exit.success(),
        "deploy failed ({exit}): {stderr}\nstdout: {}",
        deploy.stdout_text()
    );
    assert_eq!(parse_submitted(stderr.lines().next().unwrap()), job);
    println!("{:.1} s: deploy exited 0", started.elapsed().as_secs_f64());
    assert_output_equals_reference(&out, "hostile");

    let status = c.status(&job);
    assert_eq!(status.phase, "Completed", "{}", status.summary());
    status.assert_one_commit_per_task();
    // Attempts from before each crash are still in the log.
    for (crash, before) in [(1, &first), (2, &second)] {
        let kept = before.keys().intersection(&status.keys()).count();
        assert!(
            kept > 0,
            "no attempt from before crash {crash} in the log; before: {}; now: {}",
            before.summary(),
            status.summary()
        );
    }
    // No task committed before a crash ran again: its committed attempt is
    // the newest attempt of the task.
    for before in [&first, &second] {
        for old in before.committed() {
            let newest = status
                .attempts
                .iter()
                .filter(|a| a.task == old.task)
                .max_by_key(|a| a.epoch)
                .unwrap();
            assert!(
                newest.key() == old.key() && newest.outcome == "Committed",
                "{old:?} was committed before a crash, but the task ran again: {newest:?}"
            );
        }
    }
    // The second crash hit reduce attempts: they were lost (or, reported
    // late, rejected as stale) and ran again.
    let cut_short: Vec<&Attempt> = status
        .attempts
        .iter()
        .filter(|a| {
            matches!(a.task, Task::Reduce(_))
                && (a.outcome == "Lost" || a.outcome == "RejectedStale")
        })
        .collect();
    assert!(
        !cut_short.is_empty(),
        "no reduce attempt was cut short by the second crash; {}",
        status.summary()
    );
    assert!(
        status
            .attempts
            .iter()
            .all(|a| a.outcome != "Running" && a.outcome != "Failed"),
        "{}",
        status.summary()
    );

    // `wmr jobs`: completed, so not resumable.
    let listed = c.listings(&job, false);
    assert_eq!(listed.len(), 1, "wmr jobs --json lists {job}: {listed:?}");
    assert_eq!(listed[0]["phase"], "Completed", "{}", listed[0]);
    assert_eq!(listed[0]["outcome"], "Completed", "{}", listed[0]);
    assert_eq!(listed[0]["committed"], 18, "{}", listed[0]);
    assert_eq!(listed[0]["tasks"], 18, "{}", listed[0]);
    let resumable = c.listings(&job, true);
    assert!(
        resumable.is_empty(),
        "wmr jobs --resumable lists the completed job: {resumable:?}"
    );
    println!(
        "{:.1} s: {} attempts, {} cut short by the second crash",
        started.elapsed().as_secs_f64(),
        status.attempts.len(),
        cut_short.len()
    );
}

// ---------------------------------------------------------------------------
// 2. A corrupt state file

/// A real state directory (a job completed, then the coordinator was
/// SIGKILLed), copied, with `wmr-state.redb` truncated to 8 KiB: the
/// coordinator refuses to start with one line naming the file, exits 1, and
/// changes nothing in the directory (the file's bytes, no coordinator.addr).
/// The untouched original still starts.
#[test]
fn truncated_state_file_stops_the_coordinator_and_is_left_as_it_is() {
    let _serial = serial();
    let mut args = vec!["--shared-store"];
    args.extend(FAST);
    let mut c = Cluster::start(Duration::from_secs(90), &args);
    c.add_workers(2, &[]);
    let out = c.root.join("out");
    let mut deploy = c.deploy(&guest("wordcount"), &out, &[]);
    let (exit, stderr) = c.deploy_exit(&mut deploy, Duration::from_secs(60));
    assert!(exit.success(), "deploy failed ({exit}): {stderr}");
    assert_output_equals_reference(&out, "wordcount");
    c.kill_coordinator();

    let copy = c.root.join("state-copy");
    copy_dir(&c.state, &copy);
    std::fs::remove_file(copy.join("coordinator.addr")).unwrap();
    let db = copy.join("wmr-state.redb");
    let len = std::fs::metadata(&db).unwrap().len();
    assert!(len > 64 * 1024, "{}: only {len} bytes", db.display());
    File::options()
        .write(true)
        .open(&db)
        .unwrap()
        .set_len(8 * 1024)
        .unwrap();
    let before = snapshot(&copy);

    let mut cmd = c.wmr();
    cmd.args(["coordinator", "--listen", "127.0.0.1:0", "--state"])
        .arg(&copy)
        .args(&args);
    let refused = output_within(cmd, "wmr coordinator on a truncated state", CLIENT_LIMIT);
    let stderr = String::from_utf8_lossy(&refused.stderr).to_string();
    assert_eq!(
        refused.status.code(),
        Some(1),
        "exit status; stderr {stderr:?}"
    );
    let prefix = format!(
        "error: state file {} is corrupt or unreadable (",
        db.display()
    );
    assert!(
        stderr.starts_with(&prefix)
            && stderr.ends_with("); it was left as it is\n")
            && stderr.lines().count() == 1,
        "not the one-line error {prefix}...); it was left as it is: {stderr:?}"
    );
    assert!(
        refused.stdout.is_empty(),
        "stdout: {:?}",
        String::from_utf8_lossy(&refused.stdout)
    );
    assert!(
        !copy.join("coordinator.addr").exists(),
        "coordinator.addr was written"
    );
    let after = snapshot(&copy);
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>(),
        "the state directory's entries changed"
    );
    // Each changed file, with the offset of its first changed byte.
    let changed: Vec<(&String, Option<usize>)> = before
        .iter()
        .filter(|(name, bytes)| after.get(*name) != Some(bytes))
        .map(|(name, bytes)| {
            let now = &after[name];
            let at = bytes.iter().zip(now).position(|(b, a)| b != a);
            (name, at.or(Some(bytes.len().min(now.len()))))
        })
        .collect();
    assert!(
        changed.is_empty(),
        "the refusing coordinator changed files of the state directory (name, first changed byte): {changed:?}"
    );

    // The original state is fine: the coordinator starts from it.
    c.start_coordinator();
}

// ---------------------------------------------------------------------------
// 3. Cancel and resume

/// Map outputs on the workers (the default), two one-slot workers, map
/// calls of 500 ms. Once a map task has committed, `wmr cancel` stops the
/// job: its deploy exits 1 with `error: job cancelled` and the job is
/// listed as resumable. `wmr resume` runs it again under the same id, and
/// (followed by polling `wmr status`) it completes with the reference
/// output and one committed attempt per task.
#[test]
fn cancelled_job_is_resumed_and_completes() {
    let _serial = serial();
    let mut c = Cluster::start(Duration::from_secs(120), &FAST);
    c.add_workers(2, &["--slots", "1"]);
    books_reference("hostile");
    let out = c.root.join("out");
    let mut deploy = c.deploy(&guest("hostile"), &out, &strs(&sleep_params(500)));
    let job = c.job_id(&mut deploy);
    c.poll("a committed map attempt", Duration::from_secs(30), || {
        let status = c.status(&job);
        assert_eq!(status.phase, "Mapping", "{}", status.summary());
        (!status.committed().is_empty()).then_some(())
    });

    let cancelled = c.client_ok(&["cancel", &job]);
    assert_eq!(
        String::from_utf8_lossy(&cancelled.stdout),
        format!("job {job} cancelled\n")
    );
    let (exit, stderr) = c.deploy_exit(&mut deploy, Duration::from_secs(30));
    assert_eq!(exit.code(), Some(1), "deploy of a cancelled job: {stderr}");
    assert_eq!(
        stderr.lines().last(),
        Some("error: job cancelled"),
        "deploy's stderr: {stderr:?}"
    );
    assert_eq!(c.status(&job).phase, "Cancelled");
    assert!(!out.join("_SUCCESS").exists(), "a cancelled job published");
    assert!(part_files(&out).is_empty(), "a cancelled job published");
    let resumable = c.listings(&job, true);
    assert!(
        resumable.iter().any(|l| l["phase"] == "Cancelled"),
        "wmr jobs --resumable does not list the cancelled job: {resumable:?}"
    );

    let resumed = c.client_ok(&["resume", &job]);
    assert_eq!(
        String::from_utf8_lossy(&resumed.stdout),
        format!("job {job} resumed\n")
    );
    let status = c.poll(
        "the resumed job to complete",
        Duration::from_secs(60),
        || {
            let status = c.status(&job);
            assert!(
                status.phase != "Failed" && status.phase != "Cancelled",
                "{}",
                status.summary()
            );
            (status.phase == "Completed").then_some(status)
        },
    );
    assert_output_equals_reference(&out, "hostile");
    status.assert_one_commit_per_task();

    // Completed now: listed as such, and no longer resumable.
    let listed = c.listings(&job, false);
    assert!(
        listed.iter().any(|l| l["phase"] == "Completed"),
        "wmr jobs --json: {listed:?}"
    );
    let resumable = c.listings(&job, true);
    assert!(
        resumable.is_empty(),
        "wmr jobs --resumable still lists the resumed and completed job: {resumable:?}"
    );
}

// ---------------------------------------------------------------------------
// 4. The job list survives a restart

/// `wmr jobs` is "durable across restarts": a job completed before a clean
/// restart (SIGTERM) is still listed, as Completed, and `wmr status` still
/// finds it.
#[test]
fn completed_job_is_listed_after_a_restart() {
    let _serial = serial();
    let mut args = vec!["--shared-store"];
    args.extend(FAST);
    let mut c = Cluster::start(Duration::from_secs(90), &args);
    c.add_workers(2, &[]);
    let out = c.root.join("out");
    let mut deploy = c.deploy(&guest("wordcount"), &out, &[]);
    let job = c.job_id(&mut deploy);
    let (exit, stderr) = c.deploy_exit(&mut deploy, Duration::from_secs(60));
    assert!(exit.success(), "deploy failed ({exit}): {stderr}");

    let mut coordinator = c.coordinator.take().unwrap();
    let term = Command::new("kill")
        .arg("-TERM")
        .arg(coordinator.child.id().to_string())
        .status()
        .expect("running kill");
    assert!(term.success());
    let exit = c.poll("the coordinator to exit on SIGTERM", CLIENT_LIMIT, || {
        coordinator.exited()
    });
    assert!(exit.success(), "coordinator exit on SIGTERM: {exit}");
    drop(coordinator);
    c.start_coordinator();

    let listed = c.listings(&job, false);
    assert!(
        listed
            .iter()
            .any(|l| l["phase"] == "Completed" && l["outcome"] == "Completed"),
        "wmr jobs --json after a restart does not list the completed job {job}: {listed:?}"
    );
    assert!(c.listings(&job, true).is_empty());
    assert_eq!(c.status(&job).phase, "Completed");
}

/// Issue 4: three jobs submitted at once on two one-slot workers all
/// complete, and none waits for another to finish: every pair of jobs ran
/// attempts during each other's lifetime.
#[test]
fn three_jobs_at_once_share_two_workers() {
    let _serial = serial();
    let mut args = vec!["--shared-store"];
    args.extend(FAST);
    let mut c = Cluster::start(Duration::from_secs(120), &args);
    c.add_workers(2, &["--slots", "1"]);
    let params = sleep_params(300);
    let outs: Vec<PathBuf> = (0..3).map(|i| c.root.join(format!("out-{i}"))).collect();
    let mut deploys: Vec<Proc> = outs
        .iter()
        .map(|out| c.deploy(&guest("hostile"), out, &strs(&params)))
        .collect();
    let jobs: Vec<String> = deploys.iter_mut().map(|d| c.job_id(d)).collect();
    for d in &mut deploys {
        let (exit, stderr) = c.deploy_exit(d, Duration::from_secs(100));
        assert!(exit.success(), "deploy failed ({exit}): {stderr}");
    }
    for out in &outs {
        assert_output_equals_reference(out, "hostile");
    }
    // Absolute [first attempt start, last attempt end] of each job.
    let spans: Vec<(u64, u64)> = jobs
        .iter()
        .map(|job| {
            let listing = &c.listings(job, false)[0];
            let submitted = listing["submitted_unix_ms"].as_u64().unwrap();
            let status = c.status(job);
            let start = status.attempts.iter().map(|a| a.started_ms).min().unwrap();
            let end = status
                .attempts
                .iter()
                .filter_map(|a| a.ended_ms)
                .max()
                .unwrap();
            (submitted + start, submitted + end)
        })
        .collect();
    for a in 0..3 {
        for b in 0..3 {
            if a != b {
                assert!(
                    spans[a].0 < spans[b].1,
                    "job {} started only after job {} finished: {spans:?}",
                    jobs[a],
                    jobs[b]
                );
            }
        }
    }
}

/// Issue 4: a guest that traps on 3 records out of 100,000: the job
/// completes, and `wmr dlq` lists exactly those 3 with the trap message.
#[test]
fn dlq_lists_exactly_the_records_the_guest_trapped_on() {
    let _serial = serial();
    let mut args = vec!["--shared-store"];
    args.extend(FAST);
    let mut c = Cluster::start(Duration::from_secs(90), &args);
    c.add_workers(2, &[]);
    let input = c.root.join("input").join("records.txt");
    std::fs::create_dir_all(input.parent().unwrap()).unwrap();
    let (mut text, mut offsets) = (String::new(), Vec::new());
    for i in 0..100_000u32 {
        let poisoned = [11, 40_000, 99_999].contains(&i);
        if poisoned {
            offsets.push(text.len() as u64);
        }
        text.push_str(&format!(
            "record {i} alpha beta{}\n",
            if poisoned { " POISON" } else { "" }
        ));
    }
    std::fs::write(&input, text).unwrap();
    let out = c.root.join("out");
    let mut cmd = c.wmr();
    cmd.arg("deploy")
        .arg(guest("hostile"))
        .arg("--input")
        .arg(&input)
        .arg("--output")
        .arg(&out)
        .args(c.peer_args())
        .args([
            "--split-size",
            "512KiB",
            "--param",
            "mode=trap",
            "--param",
            "trap-on=POISON",
        ]);
    let mut deploy = Proc::spawn("deploy-dlq", cmd, &c.logs);
    let job = c.job_id(&mut deploy);
    let (exit, stderr) = c.deploy_exit(&mut deploy, Duration::from_secs(60));
    assert!(exit.success(), "deploy failed ({exit}): {stderr}");
    let listed = c.client_ok(&["dlq", &job, "--json"]);
    let dead: Vec<Value> = String::from_utf8(listed.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let found: Vec<u64> = dead.iter().map(|d| d["offset"].as_u64().unwrap()).collect();
    assert_eq!(found, offsets);
    for d in &dead {
        assert_eq!(d["file"], "records.txt");
        assert!(d["record"].as_str().unwrap().ends_with(" POISON"), "{d}");
        assert!(
            d["message"]
                .as_str()
                .unwrap()
                .contains("poisoned record: record "),
            "{d}"
        );
    }
    assert_eq!(
        std::fs::read_to_string(out.join("_dead_letters.jsonl"))
            .unwrap()
            .lines()
            .count(),
        3
    );
}

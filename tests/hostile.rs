//! The hostile-input suite over real processes and QUIC (issue #5): a
//! coordinator with two tenants and two workers. While tenant `bob` runs a
//! word count, tenant `alice` submits hostile jobs — an infinite loop, a
//! memory bomb, unbounded recursion, an output flood, host imports called
//! with huge or invalid arguments, WASI file/env/network escapes. Each must
//! fail with its own reason exactly as `wmr deploy` and `wmr status` show it
//! to the user; the workers must stay up and keep serving; bob's output must
//! equal the sequential reference byte for byte.
//!
//! Every process is owned by a [`Proc`] whose `Drop` kills it (SIGKILL), so
//! nothing outlives the test, even one that panics. Every wait is a bounded
//! poll.

mod support;

use serde_json::Value;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};
use support::*;

/// The step of every bounded poll.
const STEP: Duration = Duration::from_millis(10);
/// Bound on a whole job (each hostile job's limits end it far sooner).
const JOB_LIMIT: Duration = Duration::from_secs(45);
/// Bound on one short client call.
const CLIENT_LIMIT: Duration = Duration::from_secs(20);

fn poll<T>(what: &str, limit: Duration, mut condition: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = condition() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?}: {what}"
        );
        std::thread::sleep(STEP);
    }
}

// ---------------------------------------------------------------------------
// Processes (the same harness as tests/tenancy.rs)

/// A child process killed (SIGKILL) and reaped when dropped.
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

    fn wait_within(&mut self, limit: Duration) -> ExitStatus {
        let what = format!("{} to exit", self.name);
        poll(&what, limit, || self.exited())
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
            let tail = &lines[lines.len().saturating_sub(20)..];
            eprintln!("--- {} stderr (last lines) ---", self.name);
            for line in tail {
                eprintln!("{line}");
            }
        }
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

fn wmr_in(root: &Path) -> Command {
    let mut cmd = wmr();
    cmd.env("TMPDIR", root.join("tmp"));
    for var in [
        "WMR_COORDINATOR",
        "WMR_FINGERPRINT",
        "WMR_TENANT",
        "WMR_TOKEN",
        "WMR_WORKER_TOKEN",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

fn parse_submitted(line: &str) -> String {
    line.strip_prefix("job ")
        .and_then(|rest| rest.strip_suffix(" submitted"))
        .unwrap_or_else(|| {
            panic!("deploy's first stderr line is {line:?}, not `job JOBID submitted`")
        })
        .to_string()
}

// ---------------------------------------------------------------------------
// A cluster with two tenants

struct Tenant {
    name: String,
    token: String,
    root: PathBuf,
}

struct Cluster {
    _coordinator: Proc,
    workers: Vec<Proc>,
    addr: String,
    fingerprint: String,
    logs: PathBuf,
    root: PathBuf,
    spawned: usize,
    // Last: removed after every process above was killed.
    _tmp: tempfile::TempDir,
}

impl Cluster {
    /// Tenants `names` (weight 1, each with an empty root), a coordinator
    /// and `workers` workers of one slot each.
    fn start(names: &[&str], workers: usize) -> (Cluster, Vec<Tenant>) {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().canonicalize().unwrap();
        let (state, logs) = (root.join("state"), root.join("logs"));
        for dir in [&state, &logs, &root.join("tmp")] {
            std::fs::create_dir_all(dir).unwrap();
        }
        let tenants: Vec<Tenant> = names
            .iter()
            .map(|name| {
                let troot = root.join("tenants").join(name);
                std::fs::create_dir_all(&troot).unwrap();
                let mut cmd = wmr_in(&root);
                cmd.args(["tenant", "add", name, "--state"])
                    .arg(&state)
                    .arg("--root")
                    .arg(&troot)
                    .args(["--weight", "1"]);
                let out = output_within(cmd, "tenant add", CLIENT_LIMIT);
                assert!(
                    out.status.success(),
                    "tenant add {name}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
                Tenant {
                    name: name.to_string(),
                    token,
                    root: troot,
                }
            })
            .collect();
        let mut cmd = wmr_in(&root);
        cmd.args(["tenant", "worker-token", "--state"]).arg(&state);
        let out = output_within(cmd, "tenant worker-token", CLIENT_LIMIT);
        assert!(out.status.success(), "worker-token failed");
        let worker_token = String::from_utf8(out.stdout).unwrap().trim().to_string();

        let mut cmd = wmr_in(&root);
        cmd.args(["coordinator", "--listen", "127.0.0.1:0", "--state"])
            .arg(&state)
            .arg("--shared-store");
        let mut coordinator = Proc::spawn("coordinator", cmd, &logs);
        let (addr, fingerprint) = poll(
            "the coordinator to write coordinator.addr and fingerprint",
            CLIENT_LIMIT,
            || {
                if let Some(status) = coordinator.exited() {
                    panic!(
                        "the coordinator exited ({status}): {}",
                        coordinator.stderr_text()
                    );
                }
                let addr = std::fs::read_to_string(state.join("coordinator.addr")).ok()?;
                let fingerprint = std::fs::read_to_string(state.join("fingerprint")).ok()?;
                let (addr, fingerprint) = (addr.trim(), fingerprint.trim());
                (!addr.is_empty() && fingerprint.len() == 64)
                    .then(|| (addr.to_string(), fingerprint.to_string()))
            },
        );
        let mut cluster = Cluster {
            _coordinator: coordinator,
            workers: Vec::new(),
            addr,
            fingerprint,
            logs,
            root,
            spawned: 0,
            _tmp: tmp,
        };
        for i in 1..=workers {
            let mut cmd = wmr_in(&cluster.root);
            cmd.args(["worker", "--connect", &cluster.addr])
                .args(["--fingerprint", &cluster.fingerprint])
                .args(["--token", &worker_token])
                .args(["--slots", "1", "--name", &format!("w{i}")]);
            let worker = Proc::spawn(&format!("worker-w{i}"), cmd, &cluster.logs);
            cluster.workers.push(worker);
        }
        (cluster, tenants)
    }

    /// `wmr ARGS --coordinator .. --fingerprint .. --tenant NAME --token TOKEN`
    fn client(&self, tenant: &Tenant, args: &[&str]) -> Command {
        let mut cmd = wmr_in(&self.root);
        cmd.args(args)
            .args(["--coordinator", &self.addr])
            .args(["--fingerprint", &self.fingerprint])
            .args(["--tenant", &tenant.name, "--token", &tenant.token]);
        cmd
    }

    fn json(&self, tenant: &Tenant, args: &[&str]) -> Value {
        let cmd = self.client(tenant, args);
        let out = output_within(cmd, &format!("wmr {args:?}"), CLIENT_LIMIT);
        assert!(
            out.status.success(),
            "wmr {args:?} as {}: {}",
            tenant.name,
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Start `wmr deploy GUEST --input INPUT --output OUT EXTRA..` as `tenant`.
    fn deploy(
        &mut self,
        tenant: &Tenant,
        guest: &Path,
        input: &Path,
        out: &Path,
        extra: &[&str],
    ) -> Proc {
        self.spawned += 1;
        let mut cmd = self.client(tenant, &["deploy"]);
        cmd.arg(guest)
            .arg("--input")
            .arg(input)
            .arg("--output")
            .arg(out)
            .args(extra);
        Proc::spawn(
            &format!("deploy-{}-{}", tenant.name, self.spawned),
            cmd,
            &self.logs,
        )
    }

    /// Every worker process is still running.
    fn assert_workers_alive(&mut self) {
        for worker in &mut self.workers {
            assert_eq!(
                worker.exited(),
                None,
                "{} died: {}",
                worker.name,
                worker.stderr_text()
            );
        }
    }
}

/// A deploy's job id, once the coordinator accepted it.
fn submitted(deploy: &Proc) -> String {
    let line = poll("deploy to print `job ID submitted`", CLIENT_LIMIT, || {
        let text = deploy.stderr_text();
        let line = text.lines().next()?;
        line.ends_with(" submitted").then(|| line.to_string())
    });
    parse_submitted(&line)
}

/// Absolute [start, end] (unix ms) of a job's finished attempts, with the
/// worker of each and whether it committed.
fn attempts(c: &Cluster, tenant: &Tenant, job: &str) -> Vec<(u64, u64, u64, bool)> {
    let listing = c.json(tenant, &["jobs", "--json"]);
    let submitted = listing
        .as_array()
        .expect("jobs --json is an array")
        .iter()
        .find(|j| j["job"] == job)
        .unwrap_or_else(|| panic!("job {job} not in {listing}"))["submitted_unix_ms"]
        .as_u64()
        .expect("submitted_unix_ms");
    let status = c.json(tenant, &["status", job, "--json"]);
    status["attempt_log"]
        .as_array()
        .unwrap_or_else(|| panic!("status without attempt_log: {status}"))
        .iter()
        .map(|a| {
            let start = a["started_ms"].as_u64().expect("started_ms");
            let end = a["ended_ms"].as_u64().expect("ended_ms of a finished job");
            let worker = a["worker"].as_u64().expect("worker id");
            let committed = a["outcome"] == "Committed";
            (submitted + start, submitted + end, worker, committed)
        })
        .collect()
}

/// One hostile job of alice's: the guest's mode, its own limits, and the
/// reason its one attempt must fail with, as the user reads it.
struct Hostile {
    name: &'static str,
    args: Vec<&'static str>,
    reason: String,
}

fn hostile_jobs() -> Vec<Hostile> {
    let job = |name, args: &[&'static str], reason: &str| Hostile {
        name,
        args: args.to_vec(),
        reason: reason.to_string(),
    };
    // std's `TcpStream::connect` binds first: that is the denial.
    let escape = "denied: network access to 0.0.0.0:0 (TcpBind) is not granted \
        (then the guest failed: escape refused: file: No such file or directory (os error 44); \
        env: environment variable not found; net: Permission denied (os error 2))";
    vec![
        job(
            "infinite loop (fuel)",
            &["--param", "mode=loop", "--fuel", "200000000"],
            "out of fuel (limit 200000000)",
        ),
        job(
            "infinite loop (wall clock)",
            &["--param", "mode=loop", "--timeout", "300ms"],
            "timed out (limit 300 ms)",
        ),
        job(
            "memory bomb",
            &["--param", "mode=membomb", "--memory", "16MiB"],
            "out of memory (limit 16777216 bytes)",
        ),
        job(
            "unbounded recursion",
            &["--param", "mode=recurse"],
            // The guest's stack lives in its linear memory, below its data:
            // it runs off the bottom of memory.
            "guest trapped: wasm trap: out of bounds memory access",
        ),
        job(
            "output flood",
            &["--param", "mode=flood", "--output-limit", "64KiB"],
            "output limit exceeded (limit 65536 bytes)",
        ),
        job(
            "WASI file, env and network escape",
            &["--param", "mode=escape"],
            escape,
        ),
        job(
            "emit: a batch of aliased 2 MiB pairs",
            &["--param", "mode=emit-alias", "--output-limit", "1MiB"],
            "output limit exceeded (limit 1048576 bytes)",
        ),
        job(
            "emit: a pair outside linear memory",
            &["--param", "mode=emit-oob"],
            "guest trapped: list pointer/length out of bounds of memory",
        ),
        job(
            "incr-counter: a 1 MiB name",
            &["--param", "mode=counter-long-name"],
            "guest trapped: incr-counter: counter name longer than 256 bytes",
        ),
        job(
            "incr-counter: 100,000 names",
            &["--param", "mode=counter-many"],
            "guest trapped: incr-counter: more than 1024 distinct counters",
        ),
        job(
            "log: not UTF-8",
            &["--param", "mode=log-invalid-utf8"],
            "guest trapped: log: the message is not valid UTF-8",
        ),
        job(
            "an 8 MiB error message",
            &["--param", "mode=error-huge"],
            &format!(
                "guest returned an error: {}… (8388608 bytes, cut at 4096)",
                "E".repeat(4096)
            ),
        ),
    ]
}

/// Alice's hostile jobs run while bob's word count does; each fails with
/// its own reason, the workers survive and keep serving, and bob's output
/// is the sequential reference byte for byte.
#[test]
fn hostile_jobs_fail_with_their_reasons_while_a_neighbours_word_count_completes_exactly() {
    let started = Instant::now();
    let (mut c, tenants) = Cluster::start(&["alice", "bob"], 2);
    let (alice, bob) = (&tenants[0], &tenants[1]);

    // Bob's corpus and its sequential reference. Bob's job is word count
    // (the hostile guest's benign mode counts words with wordcount's own
    // tokenizer), slowed to 200 ms per 4 KiB split so that it surely spans
    // alice's hostile jobs (each of alice's deploys first compiles the
    // module to validate it, which takes seconds on a busy machine).
    let corpus = bob.root.join("corpus");
    generated_corpus(&corpus, 5);
    let hostile = guest("hostile");
    let bob_params = [
        "--param",
        "mode=sleep",
        "--param",
        "ms=200",
        "--grant",
        "clock",
    ];
    let expected = reference(&hostile, &[&corpus], &["mode=sleep", "ms=0"]);
    assert!(expected.len() > 10, "the reference is not trivial");

    let bob_out = bob.root.join("out");
    let mut bob_args = vec!["--split-size", "4KiB", "--reducers", "3"];
    bob_args.extend(bob_params);
    let mut bob_deploy = c.deploy(bob, &hostile, &corpus, &bob_out, &bob_args);
    let bob_job = submitted(&bob_deploy);
    // Alice starts once bob's job is under way, so the two surely overlap.
    poll("bob's job to commit a task", JOB_LIMIT, || {
        let report = c.json(bob, &["status", &bob_job, "--json"]);
        (report["committed"].as_u64() >= Some(1)).then_some(())
    });

    // Alice's input: one small file, one map task.
    let small = alice.root.join("small.txt");
    std::fs::write(
        &small,
        "It was the best of times, it was the worst of times\n",
    )
    .unwrap();
    let jobs = hostile_jobs();
    let mut deploys: Vec<(Proc, PathBuf)> = Vec::new();
    for (i, h) in jobs.iter().enumerate() {
        let out = alice.root.join(format!("out-{i}"));
        let mut args = vec![
            "--max-attempts",
            "1",
            "--max-dead-letters",
            "0",
            "--reducers",
            "1",
        ];
        args.extend(&h.args);
        deploys.push((c.deploy(alice, &hostile, &small, &out, &args), out));
    }

    // Each hostile job fails with its own reason, as deploy prints it and
    // as `wmr status` reports it.
    let mut hostile_attempts = Vec::new();
    for (h, (deploy, out)) in jobs.iter().zip(&mut deploys) {
        let status = deploy.wait_within(JOB_LIMIT);
        let stderr = deploy.stderr_text();
        assert_eq!(status.code(), Some(1), "{}: {stderr}", h.name);
        let job = parse_submitted(stderr.lines().next().unwrap_or_default());
        let last = stderr.lines().last().unwrap_or_default();
        let (worker, reason) = failure_of(last).unwrap_or_else(|| {
            panic!(
                "{}: deploy's last line is not a task failure: {last:?}",
                h.name
            )
        });
        assert_eq!(reason, h.reason, "{}: the reason deploy printed", h.name);
        assert!(!out.join("_SUCCESS").exists(), "{}: committed", h.name);

        let report = c.json(alice, &["status", &job, "--json"]);
        let message = format!(
            "task m-00000 failed 1 times on {worker}; last: {worker} a1: {}",
            h.reason
        );
        assert_eq!(
            report["outcome"],
            serde_json::json!({ "Failed": message }),
            "{}: the outcome `wmr status` reports",
            h.name
        );
        let log = report["attempt_log"].as_array().expect("attempt_log");
        assert_eq!(log.len(), 1, "{}: one attempt: {report}", h.name);
        assert!(
            log[0]["outcome"].get("Failed").is_some(),
            "{}: the attempt's outcome: {}",
            h.name,
            log[0]["outcome"]
        );
        hostile_attempts.extend(attempts(&c, alice, &job));
        eprintln!("{}: {reason:.100}", h.name);
    }
    c.assert_workers_alive();

    // Bob's job completes, exactly.
    let status = bob_deploy.wait_within(JOB_LIMIT);
    assert!(
        status.success(),
        "bob's deploy failed ({status}): {}\nstdout: {}",
        bob_deploy.stderr_text(),
        bob_deploy.stdout_text()
    );
    assert!(
        sorted_output(&bob_out) == expected,
        "bob's output is not the sequential reference"
    );
    // ... while alice's hostile attempts ran.
    let bob_attempts = attempts(&c, bob, &bob_job);
    let bob_start = bob_attempts.iter().map(|a| a.0).min().unwrap();
    let bob_end = bob_attempts.iter().map(|a| a.1).max().unwrap();
    let overlapping = hostile_attempts
        .iter()
        .filter(|a| a.0 < bob_end && a.1 > bob_start)
        .count();
    assert!(
        overlapping > 0,
        "no hostile attempt ran while bob's job did ([{bob_start}, {bob_end}]): {hostile_attempts:?}"
    );
    eprintln!(
        "{overlapping} of {} hostile attempts overlapped bob's job ({} attempts, {} ms)",
        hostile_attempts.len(),
        bob_attempts.len(),
        bob_end - bob_start
    );

    // Every worker that ran a hostile attempt is still alive, connected, and
    // serves: a job afterwards commits attempts on both workers.
    c.assert_workers_alive();
    let report = c.json(bob, &["status", &bob_job, "--json"]);
    let workers = report["workers"].as_array().expect("workers");
    assert_eq!(workers.len(), 2, "{report}");
    assert!(
        workers.iter().all(|w| w["connected"] == true),
        "a worker is gone: {report}"
    );
    let after_out = alice.root.join("after");
    let mut after = c.deploy(
        alice,
        &hostile,
        &small,
        &after_out,
        &[
            "--param",
            "mode=sleep",
            "--param",
            "ms=20",
            "--grant",
            "clock",
        ],
    );
    let after_job = submitted(&after);
    let status = after.wait_within(JOB_LIMIT);
    assert!(
        status.success(),
        "alice's job after: {}",
        after.stderr_text()
    );
    let used: std::collections::BTreeSet<u64> = attempts(&c, alice, &after_job)
        .iter()
        .filter(|a| a.3)
        .map(|a| a.2)
        .collect();
    let hostile_workers: std::collections::BTreeSet<u64> =
        hostile_attempts.iter().map(|a| a.2).collect();
    eprintln!("hostile attempts ran on workers {hostile_workers:?}; the job after used {used:?}");
    assert_eq!(
        used.len(),
        2,
        "the job after the hostile ones committed attempts on both workers"
    );

    // Extreme counter deltas from two map tasks: the job's totals, as
    // `wmr status` sums them, saturate instead of wrapping.
    let two = alice.root.join("two");
    std::fs::create_dir_all(&two).unwrap();
    for name in ["a.txt", "b.txt"] {
        std::fs::copy(&small, two.join(name)).unwrap();
    }
    let mut counters = c.deploy(
        alice,
        &hostile,
        &two,
        &alice.root.join("counters"),
        &["--param", "mode=counter-extreme"],
    );
    let counters_job = submitted(&counters);
    let status = counters.wait_within(JOB_LIMIT);
    assert!(status.success(), "counter job: {}", counters.stderr_text());
    let report = c.json(alice, &["status", &counters_job, "--json"]);
    assert_eq!(
        report["totals"]["map"]["counters"],
        serde_json::json!({ "max": i64::MAX, "min": i64::MIN }),
        "{}",
        report["totals"]
    );
    c.assert_workers_alive();

    // About 15 s on an idle machine; not asserted (a loaded CI machine is
    // slower), every wait above is bounded instead.
    eprintln!("the suite took {:?}", started.elapsed());
}

/// `error: job failed: task m-00000 failed 1 times on wN; last: wN a1: REASON`
/// → (`wN`, REASON).
fn failure_of(line: &str) -> Option<(String, String)> {
    let rest = line.strip_prefix("error: job failed: task m-00000 failed 1 times on ")?;
    let (worker, rest) = rest.split_once("; last: ")?;
    let reason = rest.strip_prefix(&format!("{worker} a1: "))?;
    Some((worker.to_string(), reason.to_string()))
}

//! The multi-process harness of the networked suites (distributed, durable,
//! tenancy, hostile, security): a coordinator, workers and clients as real
//! `wmr` processes on 127.0.0.1, in a temporary directory that holds the
//! coordinator's state, every log, every output and the processes' TMPDIR.
//!
//! Every process a test starts is owned by a [`Proc`], whose `Drop` kills it
//! (SIGKILL, which also ends a SIGSTOPped process), so nothing outlives a
//! test, even one that panics. Every wait is a bounded poll on an observable
//! condition: a hung process fails its test instead of hanging the suite.

use serde_json::Value;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};
use wmr::summary::Progress;

/// The step of every bounded poll.
pub const STEP: Duration = Duration::from_millis(10);

pub fn sleep_step() {
    std::thread::sleep(STEP);
}

/// Poll `condition` every [`STEP`] until it holds; panic with `what` after
/// `limit`. Returns the value the condition produced.
pub fn poll<T>(what: &str, limit: Duration, mut condition: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = condition() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?}: {what}"
        );
        sleep_step();
    }
}

// ---------------------------------------------------------------------------
// Processes

/// A child process that is killed (SIGKILL) and reaped when dropped; its
/// stdout and stderr go to files, whose tail is printed if the test panics.
pub struct Proc {
    pub name: String,
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Proc {
    pub fn spawn(name: &str, mut cmd: Command, logs: &Path) -> Proc {
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

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status if the process has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("try_wait")
    }

    pub fn wait_within(&mut self, limit: Duration) -> ExitStatus {
        let what = format!("{} to exit", self.name);
        poll(&what, limit, || self.exited())
    }

    pub fn stdout_text(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Send a signal with kill(1) (libc is not a dependency).
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .expect("running kill");
        assert!(status.success(), "kill -{signal} {} failed", self.name);
    }

    /// SIGKILL now and reap: the abrupt death of a machine.
    pub fn kill_now(&mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reaping");
    }

    /// SIGTERM, then wait (bounded) for the exit.
    pub fn terminate(&mut self, limit: Duration) -> ExitStatus {
        if let Some(status) = self.exited() {
            return status;
        }
        self.signal("TERM");
        self.wait_within(limit)
    }

    /// The process state letter from /proc (`T` when stopped).
    pub fn state(&self) -> Option<char> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).ok()?;
        // pid (comm) STATE ...: comm may hold spaces, so split after ')'.
        stat.rsplit_once(')')?.1.trim_start().chars().next()
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

/// Run a short command with a hard time limit; its output, whatever the
/// exit status. Both pipes are drained by threads, so a chatty command
/// cannot block on a full pipe while we wait for it.
pub fn output_within(mut cmd: Command, what: &str, limit: Duration) -> Output {
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
        sleep_step();
    };
    Output {
        status,
        stdout: out.join().unwrap().unwrap_or_default(),
        stderr: err.join().unwrap().unwrap_or_default(),
    }
}

/// `wmr` with TMPDIR inside the test's directory, so that anything a
/// process writes to the system temp dir is found (and removed) too, and
/// without the environment that would point it at another coordinator or
/// identity than the test's, or colour its logs.
pub fn wmr_in(root: &Path) -> Command {
    let mut cmd = super::wmr();
    cmd.env("TMPDIR", root.join("tmp")).env("NO_COLOR", "1");
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

/// The job id in deploy's first stderr line, `job JOBID submitted`.
pub fn parse_submitted(line: &str) -> String {
    let job = line
        .strip_prefix("job ")
        .and_then(|rest| rest.strip_suffix(" submitted"))
        .unwrap_or_else(|| {
            panic!("deploy's first stderr line is {line:?}, not `job JOBID submitted`")
        });
    assert!(
        !job.is_empty() && !job.contains(char::is_whitespace),
        "job id {job:?}"
    );
    job.to_string()
}

/// Copy the directory tree `from` to `to`.
pub fn copy_dir(from: &Path, to: &Path) {
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
// A cluster on loopback

/// A tenant made by `wmr tenant add`, with its root directory.
#[derive(Clone, Debug)]
pub struct Tenant {
    pub name: String,
    pub token: String,
    pub root: PathBuf,
}

impl Tenant {
    /// The copy of the books in the tenant's root ([`Options::tenant_books`]).
    pub fn books(&self) -> PathBuf {
        self.root.join("books")
    }
}

/// How a [`Cluster`] starts. The defaults: development mode (no
/// `tenants.toml`, no tokens), map outputs kept on the workers (the
/// coordinator's default), deploys without `--reducers`, 30 s for a client
/// call and for the coordinator to listen, and no bound on the whole test.
pub struct Options {
    coordinator_args: Vec<String>,
    /// Environment of every `wmr` process (store credentials).
    env: Vec<(String, String)>,
    /// Tenant roots other than `ROOT/tenants/NAME` (`s3://…`).
    tenant_roots: Vec<(String, String)>,
    tenants: Vec<String>,
    tenant_args: Vec<String>,
    tenant_books: bool,
    reducers: Option<u64>,
    client_limit: Duration,
    bound: Option<Duration>,
}

impl Options {
    /// Extra `wmr coordinator` arguments (`--lease`, `--heartbeat`, ...).
    pub fn args(mut self, args: &[&str]) -> Options {
        self.coordinator_args
            .extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// `NAME=VALUE` in the environment of every `wmr` process the cluster
    /// starts (e.g. object store credentials).
    pub fn env(mut self, vars: &[(&str, &str)]) -> Options {
        self.env
            .extend(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        self
    }

    /// `wmr tenant add NAME --root ROOT` with this root (e.g.
    /// `s3://bucket/alice/`) instead of a directory of the test's.
    pub fn tenant_root(mut self, name: &str, root: &str) -> Options {
        self.tenant_roots.push((name.to_string(), root.to_string()));
        self
    }

    /// `--shared-store`: map outputs are committed into the coordinator's
    /// work dir instead of staying on their worker.
    pub fn shared_store(self) -> Options {
        self.args(&["--shared-store"])
    }

    /// Tenants `names` (weight 1, each with a root under `ROOT/tenants`),
    /// and workers that present the worker token.
    pub fn tenants(mut self, names: &[&str]) -> Options {
        self.tenants = names.iter().map(|n| n.to_string()).collect();
        self
    }

    /// Arguments added to every `wmr tenant add` (quotas).
    pub fn tenant_args(mut self, args: &[&str]) -> Options {
        self.tenant_args = args.iter().map(|a| a.to_string()).collect();
        self
    }

    /// A copy of the books in every tenant's root, since a tenant may read
    /// only below its root.
    pub fn tenant_books(mut self) -> Options {
        self.tenant_books = true;
        self
    }

    /// `--reducers N` on every [`Cluster::deploy`].
    pub fn reducers(mut self, n: u64) -> Options {
        self.reducers = Some(n);
        self
    }

    /// The bound on one client call and on the coordinator's start.
    pub fn client_limit(mut self, limit: Duration) -> Options {
        self.client_limit = limit;
        self
    }

    /// The whole test must end within `bound`: the cluster's own waits
    /// ([`Cluster::poll`], client calls, deploys, [`Cluster::watch_until`])
    /// end at that deadline too, so a slow test fails at its bound instead
    /// of after the sum of its waits' limits.
    pub fn bound(mut self, bound: Duration) -> Options {
        self.bound = Some(bound);
        self
    }

    pub fn start(self) -> Cluster {
        self.start_with(|_, _| {})
    }

    /// Start, after `prepare(root, state)` has run on the fresh directories
    /// (e.g. to list allowed worker certificates in the state dir).
    pub fn start_with(self, prepare: impl FnOnce(&Path, &Path)) -> Cluster {
        let deadline = self.bound.map(|bound| Instant::now() + bound);
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().canonicalize().unwrap();
        let (state, logs) = (root.join("state"), root.join("logs"));
        for dir in [&state, &logs, &root.join("tmp")] {
            std::fs::create_dir_all(dir).unwrap();
        }
        let mut c = Cluster {
            env: self.env,
            tenant_roots: self.tenant_roots,
            coordinator: None,
            workers: Vec::new(),
            addr: "127.0.0.1:0".into(),
            fingerprint: String::new(),
            tenants: Vec::new(),
            worker_token: None,
            root,
            state,
            logs,
            spawned: 0,
            starts: 0,
            coordinator_args: self.coordinator_args,
            reducers: self.reducers,
            client_limit: self.client_limit,
            deadline,
            _tmp: tmp,
        };
        if !self.tenants.is_empty() {
            c.add_tenants(&self.tenants, &self.tenant_args, self.tenant_books);
        }
        prepare(&c.root, &c.state);
        c.start_coordinator();
        c
    }
}

/// A coordinator, its workers, and the temporary directory holding the
/// coordinator's state, every log, every output and the processes' TMPDIR.
pub struct Cluster {
    env: Vec<(String, String)>,
    tenant_roots: Vec<(String, String)>,
    /// `None` while it is down, between [`Cluster::kill_coordinator`] (or a
    /// test taking it) and [`Cluster::start_coordinator`].
    pub coordinator: Option<Proc>,
    pub workers: Vec<Proc>,
    /// `127.0.0.1:0` until the first start; then the bound address, which
    /// every restart listens on again.
    pub addr: String,
    pub fingerprint: String,
    /// Empty in development mode.
    pub tenants: Vec<Tenant>,
    /// What workers present in tenant mode (`wmr tenant worker-token`).
    pub worker_token: Option<String>,
    pub root: PathBuf,
    pub state: PathBuf,
    pub logs: PathBuf,
    /// Deploys started so far, which number their log files.
    pub spawned: usize,
    starts: usize,
    coordinator_args: Vec<String>,
    reducers: Option<u64>,
    client_limit: Duration,
    deadline: Option<Instant>,
    // Last: removed after every process above was killed.
    _tmp: tempfile::TempDir,
}

impl Cluster {
    pub fn options() -> Options {
        Options {
            coordinator_args: Vec::new(),
            env: Vec::new(),
            tenant_roots: Vec::new(),
            tenants: Vec::new(),
            tenant_args: Vec::new(),
            tenant_books: false,
            reducers: None,
            client_limit: Duration::from_secs(30),
            bound: None,
        }
    }

    /// Poll as [`poll`] does, but end at the test's deadline
    /// ([`Options::bound`]) too.
    pub fn poll<T>(
        &self,
        what: &str,
        limit: Duration,
        mut condition: impl FnMut() -> Option<T>,
    ) -> T {
        let Some(bound) = self.deadline else {
            return poll(what, limit, condition);
        };
        let deadline = bound.min(Instant::now() + limit);
        loop {
            if let Some(value) = condition() {
                return value;
            }
            assert!(
                Instant::now() < deadline,
                "timed out ({}): {what}",
                if deadline == bound {
                    "the test's time bound".to_string()
                } else {
                    format!("{limit:?}")
                }
            );
            sleep_step();
        }
    }

    /// `limit`, cut short by the test's deadline.
    pub fn within(&self, limit: Duration) -> Duration {
        match self.deadline {
            Some(deadline) => limit.min(deadline.saturating_duration_since(Instant::now())),
            None => limit,
        }
    }

    /// `wmr` with TMPDIR inside the test's directory (see [`wmr_in`]).
    pub fn wmr(&self) -> Command {
        let mut cmd = wmr_in(&self.root);
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    /// A process of this cluster, logging to its logs directory.
    pub fn spawn(&self, name: &str, cmd: Command) -> Proc {
        Proc::spawn(name, cmd, &self.logs)
    }

    pub fn socket_addr(&self) -> std::net::SocketAddr {
        self.addr.parse().unwrap()
    }

    /// The running coordinator.
    pub fn coordinator(&mut self) -> &mut Proc {
        self.coordinator.as_mut().expect("a running coordinator")
    }

    // ---- tenants

    /// `wmr tenant add` for each of `names`, then `wmr tenant worker-token`,
    /// all before the coordinator starts (it reads `tenants.toml` then).
    fn add_tenants(&mut self, names: &[String], tenant_args: &[String], books: bool) {
        for name in names {
            let given = self.tenant_roots.iter().find(|(n, _)| n == name);
            let root = match given {
                Some((_, root)) => PathBuf::from(root),
                None => self.root.join("tenants").join(name),
            };
            if given.is_none() {
                std::fs::create_dir_all(&root).unwrap();
            }
            if books && given.is_none() {
                copy_dir(&super::books(), &root.join("books"));
            }
            let mut cmd = self.wmr();
            cmd.args(["tenant", "add", name, "--state"])
                .arg(&self.state)
                .arg("--root")
                .arg(&root)
                .args(["--weight", "1"])
                .args(tenant_args);
            let out = output_within(cmd, "tenant add", self.client_limit);
            assert!(
                out.status.success(),
                "tenant add {name}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
            assert!(token.len() >= 32, "token {token:?}");
            self.tenants.push(Tenant {
                name: name.clone(),
                token,
                root,
            });
        }
        let mut cmd = self.wmr();
        cmd.args(["tenant", "worker-token", "--state"])
            .arg(&self.state);
        let out = output_within(cmd, "tenant worker-token", self.client_limit);
        assert!(out.status.success(), "worker-token failed");
        self.worker_token = Some(String::from_utf8(out.stdout).unwrap().trim().to_string());
    }

    // ---- the coordinator

    /// Start (or restart) the coordinator on `self.addr` with the same
    /// state, and wait until it listens: it has written
    /// `STATE/coordinator.addr`, which is removed first so that an old copy
    /// does not count, and its certificate fingerprint. A restart keeps the
    /// address and the certificate.
    pub fn start_coordinator(&mut self) {
        assert!(self.coordinator.is_none(), "the coordinator is running");
        let addr_file = self.state.join("coordinator.addr");
        let _ = std::fs::remove_file(&addr_file);
        self.starts += 1;
        let mut cmd = self.wmr();
        cmd.args(["coordinator", "--listen", &self.addr, "--state"])
            .arg(&self.state)
            .args(&self.coordinator_args);
        let name = match self.starts {
            1 => "coordinator".to_string(),
            n => format!("coordinator-{n}"),
        };
        let mut coordinator = self.spawn(&name, cmd);
        let (addr, fingerprint) = self.poll(
            "the coordinator to write coordinator.addr and fingerprint",
            self.client_limit,
            || {
                if let Some(status) = coordinator.exited() {
                    panic!(
                        "{name} exited ({status}) before listening: {}",
                        coordinator.stderr_text()
                    );
                }
                let addr = std::fs::read_to_string(&addr_file).ok()?;
                let fingerprint = std::fs::read_to_string(self.state.join("fingerprint")).ok()?;
                // Either file may be read half-written.
                let (addr, fingerprint) = (addr.trim(), fingerprint.trim());
                (!addr.is_empty() && fingerprint.len() == 64)
                    .then(|| (addr.to_string(), fingerprint.to_string()))
            },
        );
        if self.starts == 1 {
            let parsed: std::net::SocketAddr = addr
                .parse()
                .unwrap_or_else(|e| panic!("coordinator.addr {addr:?}: {e}"));
            assert!(parsed.ip().is_loopback(), "{addr}: not on loopback");
            assert_ne!(parsed.port(), 0, "{addr}: the bound port, not 0");
            assert!(
                fingerprint
                    .chars()
                    .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)),
                "fingerprint {fingerprint:?}: not a hex SHA-256"
            );
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

    /// The coordinator, which exited by itself (a fault injected), is
    /// gone: its exit status (a restart may follow).
    pub fn coordinator_exited(&mut self, limit: Duration) -> ExitStatus {
        let mut coordinator = self.coordinator.take().expect("a coordinator");
        coordinator.wait_within(limit)
    }

    /// SIGKILL the coordinator: no chance to write anything more.
    pub fn kill_coordinator(&mut self) {
        let mut coordinator = self.coordinator.take().expect("a running coordinator");
        if let Some(status) = coordinator.exited() {
            panic!(
                "the coordinator had already exited ({status}): {}",
                coordinator.stderr_text()
            );
        }
        coordinator.kill_now();
    }

    // ---- workers

    /// `wmr worker` connected to the coordinator as `name`, without the
    /// worker token (see [`Cluster::spawn_worker`]); not started.
    pub fn worker_command(&self, name: &str) -> Command {
        let mut cmd = self.wmr();
        cmd.args(["worker", "--connect", &self.addr])
            .args(["--fingerprint", &self.fingerprint])
            .args(["--name", name]);
        cmd
    }

    /// A worker process, with the worker token in tenant mode (not yet
    /// pushed onto `workers`).
    pub fn spawn_worker(&mut self, name: &str, extra: &[&str]) -> Proc {
        let mut cmd = self.worker_command(name);
        if let Some(token) = &self.worker_token {
            cmd.args(["--token", token]);
        }
        cmd.args(extra);
        self.spawn(&format!("worker-{name}"), cmd)
    }

    /// Workers `w1..=wn`.
    pub fn add_workers(&mut self, n: usize, extra: &[&str]) {
        for i in 1..=n {
            let worker = self.spawn_worker(&format!("w{i}"), extra);
            self.workers.push(worker);
        }
    }

    pub fn worker_named(&self, name: &str) -> &Proc {
        let proc_name = format!("worker-{name}");
        self.workers
            .iter()
            .find(|w| w.name == proc_name)
            .unwrap_or_else(|| panic!("no worker process named {name}"))
    }

    // ---- clients

    /// `--coordinator ADDR --fingerprint HEX`
    pub fn peer_args(&self) -> [&str; 4] {
        [
            "--coordinator",
            &self.addr,
            "--fingerprint",
            &self.fingerprint,
        ]
    }

    /// A client command (`status`, `jobs`, `cancel`, ...) in development
    /// mode, bounded in time; its output, whatever the exit status.
    pub fn client(&self, args: &[&str]) -> Output {
        let mut cmd = self.wmr();
        cmd.args(args).args(self.peer_args());
        let limit = self.within(self.client_limit);
        output_within(cmd, &format!("wmr {args:?}"), limit)
    }

    /// A client command that must succeed.
    pub fn client_ok(&self, args: &[&str]) -> Output {
        let out = self.client(args);
        assert!(
            out.status.success(),
            "wmr {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// A client command that must succeed and print JSON.
    pub fn client_json(&self, args: &[&str]) -> Value {
        let out = self.client_ok(args);
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "wmr {args:?} printed no JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// `wmr ARGS --coordinator .. --fingerprint .. --tenant NAME --token TOKEN`,
    /// not started: any name and token, to test refusals too.
    pub fn tenant_command(&self, tenant: &str, token: &str, args: &[&str]) -> Command {
        let mut cmd = self.wmr();
        cmd.args(args)
            .args(self.peer_args())
            .args(["--tenant", tenant, "--token", token]);
        cmd
    }

    /// A client command as `tenant` (name and token), bounded in time.
    pub fn run_as(&self, tenant: &str, token: &str, args: &[&str]) -> Output {
        let cmd = self.tenant_command(tenant, token, args);
        output_within(
            cmd,
            &format!("wmr {args:?}"),
            self.within(self.client_limit),
        )
    }

    /// A client command as `tenant` that must succeed and print JSON.
    pub fn json(&self, tenant: &Tenant, args: &[&str]) -> Value {
        let out = self.run_as(&tenant.name, &tenant.token, args);
        assert!(
            out.status.success(),
            "wmr {args:?} as {}: {}",
            tenant.name,
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    // ---- deploys

    /// Start `wmr deploy GUEST --input INPUT --output OUT [--reducers N]
    /// EXTRA..` in development mode.
    pub fn deploy(&mut self, guest: &Path, input: &Path, out: &Path, extra: &[&str]) -> Proc {
        self.spawned += 1;
        let mut cmd = self.wmr();
        cmd.arg("deploy").args(self.peer_args());
        self.deploy_args(&mut cmd, guest, input, out, extra);
        self.spawn(&format!("deploy-{}", self.spawned), cmd)
    }

    /// [`Cluster::deploy`] as `tenant`.
    pub fn deploy_as(
        &mut self,
        tenant: &Tenant,
        guest: &Path,
        input: &Path,
        out: &Path,
        extra: &[&str],
    ) -> Proc {
        self.spawned += 1;
        let mut cmd = self.tenant_command(&tenant.name, &tenant.token, &["deploy"]);
        self.deploy_args(&mut cmd, guest, input, out, extra);
        let name = format!("deploy-{}-{}", tenant.name, self.spawned);
        self.spawn(&name, cmd)
    }

    fn deploy_args(
        &self,
        cmd: &mut Command,
        guest: &Path,
        input: &Path,
        out: &Path,
        extra: &[&str],
    ) {
        cmd.arg(guest)
            .arg("--input")
            .arg(input)
            .arg("--output")
            .arg(out);
        if let Some(n) = self.reducers {
            cmd.args(["--reducers", &n.to_string()]);
        }
        cmd.args(extra);
    }

    /// Wait (bounded) until a running deploy has said `job JOBID submitted`.
    pub fn job_id(&self, deploy: &mut Proc) -> String {
        self.poll(
            "deploy to print `job JOBID submitted`",
            self.client_limit,
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

    /// Wait (bounded) for a deploy to exit; its status and stderr.
    pub fn deploy_exit(&self, deploy: &mut Proc, limit: Duration) -> (ExitStatus, String) {
        let what = format!("{} to exit", deploy.name);
        let status = self.poll(&what, limit, || deploy.exited());
        (status, deploy.stderr_text())
    }

    /// Wait (bounded) for a deploy and insist that it succeeded; the job id.
    pub fn deploy_finishes_ok(&self, deploy: &mut Proc, limit: Duration) -> String {
        let (status, stderr) = self.deploy_exit(deploy, limit);
        assert!(
            status.success(),
            "deploy failed ({status}): {stderr}\nstdout: {}",
            deploy.stdout_text()
        );
        parse_submitted(stderr.lines().next().unwrap_or_default())
    }

    /// Follow `job` as a reconnecting `wmr deploy` does (`Watch`, in
    /// development mode) until a progress report satisfies `until`, and
    /// return that report. The coordinator pushes progress as it happens
    /// (and at least on every heartbeat), so this returns within
    /// milliseconds of the condition, which polling `wmr status` would miss.
    /// Panics if the job ends first, or after `limit`.
    pub fn watch_until(
        &self,
        job: &str,
        what: &str,
        limit: Duration,
        mut until: impl FnMut(&Progress) -> bool,
    ) -> Progress {
        use wmr::transport::Channel;
        use wmr::wire::{ClientReply, ClientRequest, Open};
        let limit = self.within(limit);
        let addr = self.socket_addr();
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
                        tenant: wmr::model::TenantId::local(),
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

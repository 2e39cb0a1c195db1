//! Network namespaces for the partition tests (root only, as CI runs).
//!
//! Every node (the coordinator, each worker) is a namespace of its own
//! whose one address (`10.201.0.N/32` on its loopback) is reached from
//! every other node over a veth pair of their own: a full mesh, so that the
//! link between any two nodes can be cut (`ip link set … down`: packets are
//! dropped silently, as a real partition drops them, rather than refused)
//! and healed without touching the others. Nothing is created in the
//! test's own namespace, so tests cannot disturb the machine or each other;
//! names carry the test process's id (and a counter), and namespaces left
//! by a test process that died are removed by the next one.
//!
//! A [`Net`] deletes its namespaces (and with them every veth end) when it
//! is dropped, even when the test panics. Processes running in them must be
//! killed first: [`NetCluster`] declares its processes before its `Net`.

use super::cluster::{Proc, output_within, poll, wmr_in};
use serde_json::Value;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Namespace names start with this, then `<pid>-<n>-<node>`.
const PREFIX: &str = "wmrp-";

/// Run `ip ARGS`, which must succeed.
fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running `ip` (iproute2; `just test` installs it): {e}"));
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The partition tests create network namespaces: they need root (CI runs
/// as root) and iproute2.
pub fn require_root() {
    assert!(
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() } == 0,
        "the partition tests create network namespaces (ip netns) and must run as root (CI does)"
    );
}

/// Delete namespaces a test process that no longer runs left behind (it
/// was killed before its `Drop` ran).
fn remove_orphans() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

/// A full mesh of namespaces, one per node.
pub struct Net {
    nodes: Vec<String>,
    /// `wmrp-<pid>-<n>-`
    prefix: String,
}

impl Net {
    /// Namespaces for `nodes` (short names: they name veth interfaces,
    /// `to-NODE`, at most 15 bytes), each with its address on `lo`, and a
    /// veth pair with a /32 route between every two of them.
    pub fn new(nodes: &[&str]) -> Net {
        require_root();
        remove_orphans();
        static NETS: AtomicUsize = AtomicUsize::new(0);
        let n = NETS.fetch_add(1, Ordering::SeqCst);
        let net = Net {
            nodes: nodes.iter().map(|s| s.to_string()).collect(),
            prefix: format!("{PREFIX}{}-{n}-", std::process::id()),
        };
        // `net` is built first: a failure below still deletes what exists.
        for node in nodes {
            assert!(node.len() <= 12, "node name {node:?} too long");
            let ns = net.ns(node);
            ip(&["netns", "add", &ns]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
            let addr = format!("{}/32", net.addr(node));
            ip(&["-n", &ns, "addr", "add", &addr, "dev", "lo"]);
        }
        for (i, a) in nodes.iter().enumerate() {
            for b in &nodes[i + 1..] {
                let (ns_a, ns_b) = (net.ns(a), net.ns(b));
                let (to_a, to_b) = (format!("to-{a}"), format!("to-{b}"));
                ip(&[
                    "-n", &ns_a, "link", "add", &to_b, "type", "veth", "peer", "name", &to_a,
                    "netns", &ns_b,
                ]);
                for (ns, dev, peer, me) in [(&ns_a, &to_b, b, a), (&ns_b, &to_a, a, b)] {
                    ip(&["-n", ns, "link", "set", dev, "up"]);
                    net.route(me, peer);
                }
            }
        }
        net
    }

    /// The namespace of `node`.
    pub fn ns(&self, node: &str) -> String {
        format!("{}{node}", self.prefix)
    }

    /// The address of `node`: 10.201.0.(its index + 1).
    pub fn addr(&self, node: &str) -> Ipv4Addr {
        let i = self
            .nodes
            .iter()
            .position(|n| n == node)
            .unwrap_or_else(|| panic!("no node {node}"));
        Ipv4Addr::new(10, 201, 0, i as u8 + 1)
    }

    fn set_link(&self, a: &str, b: &str, state: &str) {
        assert_ne!(a, b);
        // Either end down takes the pair's carrier away in both directions.
        ip(&["-n", &self.ns(a), "link", "set", &format!("to-{b}"), state]);
    }

    /// Cut the link between `a` and `b`: their packets are dropped.
    pub fn cut(&self, a: &str, b: &str) {
        self.set_link(a, b, "down");
    }

    /// Restore the link between `a` and `b`, and `a`'s route to `b`
    /// (taking a device down deletes the routes through it; the peer's end
    /// only lost its carrier and kept its route).
    pub fn heal(&self, a: &str, b: &str) {
        self.set_link(a, b, "up");
        self.route(a, b);
    }

    /// `a`'s /32 route to `b` over their veth pair.
    fn route(&self, a: &str, b: &str) {
        let (dst, src) = (format!("{}/32", self.addr(b)), self.addr(a).to_string());
        let dev = format!("to-{b}");
        ip(&[
            "-n",
            &self.ns(a),
            "route",
            "replace",
            &dst,
            "dev",
            &dev,
            "src",
            &src,
        ]);
    }

    /// Cut `node` off from every other node.
    pub fn isolate(&self, node: &str) {
        for other in self.others(node) {
            self.cut(node, &other);
        }
    }

    /// Restore every link of `node`.
    pub fn rejoin(&self, node: &str) {
        for other in self.others(node) {
            self.heal(node, &other);
        }
    }

    fn others(&self, node: &str) -> Vec<String> {
        self.nodes.iter().filter(|n| *n != node).cloned().collect()
    }

    /// `ip netns exec NS PROGRAM` with `template`'s arguments' program and
    /// environment (arguments are added by the caller).
    pub fn command(&self, node: &str, template: &Command) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns(node)])
            .arg(template.get_program())
            .args(template.get_args());
        for (key, value) in template.get_envs() {
            match value {
                Some(value) => cmd.env(key, value),
                None => cmd.env_remove(key),
            };
        }
        cmd
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        // Deleting a namespace deletes the veth ends in it, and so the pairs.
        for node in &self.nodes {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.ns(node)])
                .status();
        }
    }
}

/// A coordinator in namespace `c` and workers in their own namespaces, as
/// real `wmr` processes; clients (deploy, status) run next to the
/// coordinator, so an operator's view survives every partition.
pub struct NetCluster {
    // Dropped in this order: processes, then namespaces, then files.
    pub deploy: Option<Proc>,
    pub coordinator: Proc,
    pub workers: Vec<Proc>,
    pub net: Net,
    pub addr: String,
    pub fingerprint: String,
    pub root: PathBuf,
    logs: PathBuf,
    deadline: Instant,
    _tmp: tempfile::TempDir,
}

/// The coordinator's node.
pub const COORDINATOR: &str = "c";

/// `WMR_TEST_LOG` becomes the coordinator's and the workers' `WMR_LOG`
/// (e.g. `wmr=debug`), to see a scenario's transitions in their logs.
fn daemon_log(cmd: &mut Command) {
    if let Ok(filter) = std::env::var("WMR_TEST_LOG") {
        cmd.env("WMR_LOG", filter);
    }
}

impl NetCluster {
    /// Namespaces `c` and `workers`, the coordinator listening on `c`'s
    /// address with `coordinator_args`; the whole test must end within
    /// `bound` (every wait below ends at that deadline).
    pub fn start(workers: &[&str], coordinator_args: &[&str], bound: Duration) -> NetCluster {
        let deadline = Instant::now() + bound;
        let mut nodes = vec![COORDINATOR];
        nodes.extend(workers);
        let net = Net::new(&nodes);
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().canonicalize().unwrap();
        let (state, logs) = (root.join("state"), root.join("logs"));
        for dir in [&state, &logs, &root.join("tmp")] {
            std::fs::create_dir_all(dir).unwrap();
        }
        let listen = format!("{}:0", net.addr(COORDINATOR));
        let mut cmd = net.command(COORDINATOR, &wmr_in(&root));
        cmd.args(["coordinator", "--listen", &listen, "--state"])
            .arg(&state)
            .args(coordinator_args);
        daemon_log(&mut cmd);
        let mut coordinator = Proc::spawn("coordinator", cmd, &logs);
        let limit = deadline.saturating_duration_since(Instant::now());
        let (addr, fingerprint) = poll("the coordinator to listen", limit, || {
            if let Some(status) = coordinator.exited() {
                panic!(
                    "the coordinator exited ({status}): {}",
                    coordinator.stderr_text()
                );
            }
            let addr = std::fs::read_to_string(state.join("coordinator.addr")).ok()?;
            let fingerprint = std::fs::read_to_string(state.join("fingerprint")).ok()?;
            let (addr, fingerprint) = (addr.trim(), fingerprint.trim());
            (addr.starts_with(&listen[..listen.len() - 1]) && fingerprint.len() == 64)
                .then(|| (addr.to_string(), fingerprint.to_string()))
        });
        let mut cluster = NetCluster {
            deploy: None,
            coordinator,
            workers: Vec::new(),
            net,
            addr,
            fingerprint,
            root,
            logs,
            deadline,
            _tmp: tmp,
        };
        for worker in workers {
            cluster.spawn_worker(worker);
        }
        cluster
    }

    /// Time left before the test's bound.
    pub fn left(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// Poll `condition` until it holds, within `limit` and the test's bound.
    pub fn poll<T>(&self, what: &str, limit: Duration, condition: impl FnMut() -> Option<T>) -> T {
        poll(what, limit.min(self.left()), condition)
    }

    /// `wmr worker --name NODE --slots 1` in namespace NODE, serving map
    /// outputs on its own address.
    fn spawn_worker(&mut self, node: &str) {
        let shuffle = format!("{}:0", self.net.addr(node));
        let mut cmd = self.net.command(node, &wmr_in(&self.root));
        cmd.args(["worker", "--connect", &self.addr])
            .args(["--fingerprint", &self.fingerprint])
            .args(["--name", node, "--slots", "1"])
            .args(["--shuffle-listen", &shuffle]);
        cmd.arg("--work-dir")
            .arg(self.root.join(format!("work-{node}")));
        daemon_log(&mut cmd);
        let worker = Proc::spawn(&format!("worker-{node}"), cmd, &self.logs);
        self.workers.push(worker);
    }

    /// A client command next to the coordinator, bounded in time.
    pub fn client(&self, args: &[&str]) -> Output {
        let mut cmd = self.net.command(COORDINATOR, &wmr_in(&self.root));

        cmd.args(args).args([
            "--coordinator",
            &self.addr,
            "--fingerprint",
            &self.fingerprint,
        ]);
        let limit = Duration::from_secs(30).min(self.left());
        output_within(cmd, &format!("wmr {args:?}"), limit)
    }

    /// `wmr status JOB --json`.
    pub fn status(&self, job: &str) -> Value {
        let out = self.client(&["status", job, "--json"]);
        assert!(
            out.status.success(),
            "wmr status: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("status --json prints JSON")
    }

    /// Start `wmr deploy GUEST --input INPUT --output OUT EXTRA..` next to
    /// the coordinator and wait for its job id.
    pub fn deploy(&mut self, guest: &Path, input: &Path, out: &Path, extra: &[&str]) -> String {
        let mut cmd = self.net.command(COORDINATOR, &wmr_in(&self.root));
        cmd.arg("deploy")
            .arg(guest)
            .arg("--input")
            .arg(input)
            .arg("--output")
            .arg(out)
            .args([
                "--coordinator",
                &self.addr,
                "--fingerprint",
                &self.fingerprint,
            ])
            .args(extra);
        let mut deploy = Proc::spawn("deploy", cmd, &self.logs);
        let job = self.poll("deploy to submit", Duration::from_secs(60), || {
            let text = deploy.stderr_text();
            if let Some(line) = text.lines().next()
                && text.contains('\n')
            {
                return Some(super::cluster::parse_submitted(line));
            }
            if let Some(status) = deploy.exited() {
                panic!("deploy exited ({status}) before submitting: {text}");
            }
            None
        });
        self.deploy = Some(deploy);
        job
    }

    /// Wait for the deploy to exit; its status and stderr.
    pub fn deploy_exit(&mut self, limit: Duration) -> (ExitStatus, String) {
        let limit = limit.min(self.left());
        let deploy = self.deploy.as_mut().expect("a deploy");
        let status = poll("deploy to exit", limit, || deploy.exited());
        (status, deploy.stderr_text())
    }
}

impl Drop for NetCluster {
    fn drop(&mut self) {
        // With WMR_TEST_LOG set, a failed test's logs are kept for reading.
        if std::thread::panicking() && std::env::var_os("WMR_TEST_LOG").is_some() {
            let keep =
                std::env::temp_dir().join(format!("wmr-partition-logs-{}", std::process::id()));
            super::cluster::copy_dir(&self.logs, &keep);
            eprintln!("logs kept in {}", keep.display());
        }
    }
}

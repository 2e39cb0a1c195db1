//! Placement by worker labels over real processes (issue 17): jobs that
//! `--require` labels run only on matching workers, a job no connected
//! worker matches waits without spinning and says why, `--placement-timeout`
//! fails it with that reason, and losing the only matching worker makes a
//! job wait until another joins. Tenant pools are in `tests/security.rs`.
//!
//! Every process a test starts is owned by a [`Proc`], whose `Drop` kills it
//! (SIGKILL), so nothing outlives a test, even one that panics. Every wait is
//! a bounded poll. The tests run one at a time.

mod support;

use std::time::{Duration, Instant};
use support::cluster::*;
use support::status::Status;
use support::*;

/// Bound on a whole job.
const JOB_LIMIT: Duration = Duration::from_secs(120);
/// Bound on one short client call.
const CLIENT_LIMIT: Duration = Duration::from_secs(30);

fn start() -> Cluster {
    Cluster::options()
        .reducers(4)
        .client_limit(CLIENT_LIMIT)
        .start()
}

impl Cluster {
    /// A one-slot worker `name` with `--labels labels`.
    fn labelled_worker(&mut self, name: &str, labels: &str) {
        let worker = self.spawn_worker(name, &["--slots", "1", "--labels", labels]);
        self.workers.push(worker);
    }

    /// `wmr status JOB` (text) until it shows `line`.
    fn status_shows(&self, job: &str, line: &str) {
        let deadline = Instant::now() + CLIENT_LIMIT;
        loop {
            let last = String::from_utf8(self.client_ok(&["status", job]).stdout).unwrap();
            if last.lines().any(|l| l.trim() == line) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {CLIENT_LIMIT:?}: status to show {line:?}; last:\n{last}"
            );
            support::cluster::sleep_step();
        }
    }

    /// The names of the workers that ran `job`'s attempts.
    fn attempt_workers(&self, job: &str) -> Vec<String> {
        let status = Status::parse(&self.client_json(&["status", job, "--json"]));
        status
            .attempts
            .iter()
            .map(|a| status.worker_name(a.worker).to_string())
            .collect()
    }
}

/// CPU time (user + system) a process has used, from /proc/PID/stat.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/PID/stat");
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line.
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // Clock ticks of USER_HZ, 100 per second in Linux's ABI on every
    // architecture we run on.
    Duration::from_millis(ticks * 10)
}

/// Two workers labelled `zone=a` and `zone=b`; a job with `--require
/// zone=b`: every attempt in its attempt log ran on the `zone=b` worker,
/// and the output equals the sequential reference.
#[test]
fn a_job_requiring_a_label_runs_only_on_matching_workers() {
    let _serial = serial();
    let mut c = start();
    c.labelled_worker("in-a", "zone=a");
    c.labelled_worker("in-b", "zone=b");
    let out = c.root.join("out");
    let mut deploy = c.deploy(
        &guest("wordcount"),
        &books(),
        &out,
        &["--require", "zone=b"],
    );
    let job = c.deploy_finishes_ok(&mut deploy, JOB_LIMIT);
    assert_output_equals_reference(&out, "wordcount", 4);
    let ran_on = c.attempt_workers(&job);
    assert_eq!(ran_on.len(), 8 + 4, "one attempt per task: {ran_on:?}");
    assert!(ran_on.iter().all(|w| w == "in-b"), "{ran_on:?}");
}

/// A job requiring a label no worker has stays queued and `wmr status`
/// says why; over 5 s of waiting the coordinator uses almost no CPU (no
/// livelock: placement is a lookup when workers or jobs change, not a
/// poll); when a matching worker joins, the job starts at once and
/// completes with the reference output, on that worker only.
#[test]
fn a_job_no_worker_matches_waits_idle_and_starts_when_one_joins() {
    let _serial = serial();
    let mut c = start();
    c.labelled_worker("in-a", "zone=a");
    let out = c.root.join("out");
    let mut deploy = c.deploy(
        &guest("wordcount"),
        &books(),
        &out,
        &["--require", "zone=eu"],
    );
    let job = c.job_id(&mut deploy);
    c.status_shows(
        &job,
        "waiting: no connected worker matches zone=eu (1 worker connected)",
    );

    let pid = c.coordinator().pid();
    let (cpu_before, wall_before) = (cpu_time(pid), Instant::now());
    // A measurement window, not a synchronisation: nothing is awaited.
    std::thread::sleep(Duration::from_secs(5));
    let (cpu, wall) = (cpu_time(pid) - cpu_before, wall_before.elapsed());
    eprintln!("coordinator CPU while the job waited: {cpu:?} over {wall:?}");
    assert!(
        cpu < Duration::from_millis(250),
        "the coordinator used {cpu:?} of CPU in {wall:?} while a job waited"
    );
    assert!(deploy.exited().is_none(), "the waiting job ended");
    assert!(!out.join("_SUCCESS").exists());

    c.labelled_worker("in-eu", "zone=eu");
    c.deploy_finishes_ok(&mut deploy, JOB_LIMIT);
    assert_output_equals_reference(&out, "wordcount", 4);
    let ran_on = c.attempt_workers(&job);
    assert!(ran_on.iter().all(|w| w == "in-eu"), "{ran_on:?}");
}

/// With `--placement-timeout 2s`, a job no worker matches fails with the
/// waiting reason after about 2 s, and publishes nothing.
#[test]
fn placement_timeout_fails_the_job_with_the_reason() {
    let _serial = serial();
    let mut c = start();
    c.labelled_worker("in-a", "zone=a");
    let out = c.root.join("out");
    let started = Instant::now();
    let mut deploy = c.deploy(
        &guest("wordcount"),
        &books(),
        &out,
        &[
            "--require",
            "zone=eu",
            "--require",
            "gpu",
            "--placement-timeout",
            "2s",
        ],
    );
    let (status, stderr) = c.deploy_exit(&mut deploy, JOB_LIMIT);
    let took = started.elapsed();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert_eq!(
        stderr.lines().last().unwrap(),
        "error: job failed: no connected worker matches zone=eu,gpu (1 worker connected) for --placement-timeout 2s"
    );
    assert!(took >= Duration::from_secs(2), "failed after {took:?}");
    assert!(took < Duration::from_secs(20), "failed only after {took:?}");
    assert!(!out.join("_SUCCESS").exists(), "a failed job published");
    assert!(part_files(&out).is_empty(), "a failed job left parts");
}

/// The only `zone=b` worker is SIGKILLed while the job runs: the job
/// waits, saying why, and completes with the reference output when another
/// `zone=b` worker joins; no attempt ran on the `zone=a` worker.
#[test]
fn losing_the_only_matching_worker_makes_the_job_wait_for_another() {
    let _serial = serial();
    // A SIGKILLed worker sends no close: it is lost when its session idles
    // out, after three leases (I13), so a short lease keeps this test short.
    let mut c = Cluster::options()
        .reducers(4)
        .client_limit(CLIENT_LIMIT)
        .args(&["--lease", "3s", "--heartbeat", "500ms"])
        .start();
    c.labelled_worker("in-a", "zone=a");
    c.labelled_worker("in-b", "zone=b");
    let out = c.root.join("out");
    let mut extra: Vec<String> = sleep_params(300);
    extra.extend(["--require", "zone=b"].map(String::from));
    let mut deploy = c.deploy(&guest("hostile"), &books(), &out, &strs(&extra));
    let job = c.job_id(&mut deploy);
    c.watch_until(&job, "a committed task", JOB_LIMIT, |p| p.committed >= 1);
    c.workers[1].kill_now();
    c.status_shows(
        &job,
        "waiting: no connected worker matches zone=b (1 worker connected)",
    );
    assert!(deploy.exited().is_none(), "the job ended without a worker");

    c.labelled_worker("in-b-again", "zone=b");
    c.deploy_finishes_ok(&mut deploy, JOB_LIMIT);
    assert_output_equals_reference(&out, "hostile", 4);
    let ran_on = c.attempt_workers(&job);
    assert!(ran_on.iter().all(|w| w.starts_with("in-b")), "{ran_on:?}");
    assert!(ran_on.iter().any(|w| w == "in-b-again"), "{ran_on:?}");
}

/// `wmr run --require` is checked against its local workers' `--labels`:
/// a job none of them may run is refused before anything is written; with
/// matching labels it runs to the reference output.
#[test]
fn wmr_run_places_on_its_local_workers_labels() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let wordcount = guest("wordcount");
    let common = [
        "run",
        "--map",
        &path(&wordcount),
        "--input",
        &path(&books()),
        "--output",
        &path(&out),
        "--reducers",
        "3",
    ];
    let refused = run_err(&[&common[..], &["--labels", "zone=a", "--require", "zone=b"]].concat());
    assert_eq!(
        refused.trim(),
        "error: no local worker matches zone=b (their labels: zone=a; set them with --labels)"
    );
    assert!(!out.exists(), "a refused run created its output");
    run_ok(
        &[
            &common[..],
            &[
                "--labels",
                "zone=b,gpu=1",
                "--require",
                "zone=b",
                "--require",
                "gpu",
            ],
        ]
        .concat(),
    );
    assert_output_equals_reference(&out, "wordcount", 3);
}

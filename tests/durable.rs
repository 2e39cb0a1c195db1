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
use std::fs::File;
use std::path::{Path, PathBuf};

use std::time::{Duration, Instant};
use support::cluster::*;
use support::status::*;
use support::*;
use wmr::scheduler::Phase;

/// nReduce of the MIT lab, as in `distributed.rs`.
const REDUCERS: u64 = 10;
/// Bound on one client call (`wmr status`, `jobs`, `cancel`, `resume`).
const CLIENT_LIMIT: Duration = Duration::from_secs(30);
/// A short lease: the idle timeout of the QUIC connections is twice the
/// lease, so workers and `wmr deploy` notice a dead coordinator in ~6 s.
const FAST: [&str; 4] = ["--lease", "3s", "--heartbeat", "500ms"];

/// A coordinator with `args`, for jobs of [`REDUCERS`] reducers; the test
/// must end within `bound`.
fn start(bound: Duration, args: &[&str]) -> Cluster {
    Cluster::options()
        .args(args)
        .reducers(REDUCERS)
        .client_limit(CLIENT_LIMIT)
        .bound(bound)
        .start()
}

/// The cluster most tests use: map outputs in the coordinator's shared
/// store, short leases.
fn start_shared(bound: Duration) -> Cluster {
    start(bound, &shared_args())
}

fn shared_args() -> Vec<&'static str> {
    let mut args = vec!["--shared-store"];
    args.extend(FAST);
    args
}

impl Cluster {
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
}

// ---------------------------------------------------------------------------
// Outputs

/// The committed output equals the reference, and nothing of the job's
/// attempts is left in the output directory.
fn assert_committed_output(out: &Path, guest_name: &str) {
    assert_output_equals_reference(out, guest_name, REDUCERS);
    assert!(
        !out.join("_temporary").exists(),
        "{}/_temporary remains",
        out.display()
    );
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
    let mut c = start_shared(Duration::from_secs(150));
    c.add_workers(2, &["--slots", "1"]);
    books_reference("hostile");
    let out = c.root.join("out");
    let mut deploy = c.deploy(
        &guest("hostile"),
        &books(),
        &out,
        &strs(&sleep_params(1000)),
    );
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
    assert_committed_output(&out, "hostile");

    let status = c.status(&job);
    assert_eq!(status.phase, "Completed", "{}", status.summary());
    status.assert_one_commit_per_task(REDUCERS);
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
        status.assert_committed_tasks_not_rerun(before, "a crash");
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
    let mut c = start_shared(Duration::from_secs(90));
    c.add_workers(2, &[]);
    let out = c.root.join("out");
    let mut deploy = c.deploy(&guest("wordcount"), &books(), &out, &[]);
    let (exit, stderr) = c.deploy_exit(&mut deploy, Duration::from_secs(60));
    assert!(exit.success(), "deploy failed ({exit}): {stderr}");
    assert_committed_output(&out, "wordcount");
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
        .args(shared_args());
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
    let mut c = start(Duration::from_secs(120), &FAST);
    c.add_workers(2, &["--slots", "1"]);
    books_reference("hostile");
    let out = c.root.join("out");
    let mut deploy = c.deploy(&guest("hostile"), &books(), &out, &strs(&sleep_params(500)));
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
    assert_committed_output(&out, "hostile");
    status.assert_one_commit_per_task(REDUCERS);

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
    let mut c = start_shared(Duration::from_secs(90));
    c.add_workers(2, &[]);
    let out = c.root.join("out");
    let mut deploy = c.deploy(&guest("wordcount"), &books(), &out, &[]);
    let job = c.job_id(&mut deploy);
    let (exit, stderr) = c.deploy_exit(&mut deploy, Duration::from_secs(60));
    assert!(exit.success(), "deploy failed ({exit}): {stderr}");

    let mut coordinator = c.coordinator.take().unwrap();
    coordinator.signal("TERM");
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
    let mut c = start_shared(Duration::from_secs(120));
    c.add_workers(2, &["--slots", "1"]);
    let params = sleep_params(300);
    let outs: Vec<PathBuf> = (0..3).map(|i| c.root.join(format!("out-{i}"))).collect();
    let mut deploys: Vec<Proc> = outs
        .iter()
        .map(|out| c.deploy(&guest("hostile"), &books(), out, &strs(&params)))
        .collect();
    let jobs: Vec<String> = deploys.iter_mut().map(|d| c.job_id(d)).collect();
    for d in &mut deploys {
        let (exit, stderr) = c.deploy_exit(d, Duration::from_secs(100));
        assert!(exit.success(), "deploy failed ({exit}): {stderr}");
    }
    for out in &outs {
        assert_committed_output(out, "hostile");
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
    let mut c = start_shared(Duration::from_secs(90));
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

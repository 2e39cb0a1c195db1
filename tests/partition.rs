//! Network partitions (issue 14, item 2), with real network namespaces
//! (root only, as CI runs): the coordinator and each worker are `wmr`
//! processes in namespaces of their own, joined by veth pairs whose links
//! the tests cut and heal at moments chosen by polling `wmr status --json`
//! (tests/support/netns.rs). Every scenario checks the output against
//! `wmr seq` (I6), one commit per task at the task's newest epoch and one
//! part file per reducer (I2), and that the attempts the partition made
//! stale were rejected or lost, never committed (I3), and bounds the time
//! from healing to the job's end ([`HEAL_BOUND`]; the measured time is
//! printed).
//!
//! Timing: leases of 3 s, heartbeats every 300 ms; a session's QUIC idle
//! timeout is three leases (9 s, I13), so a partition healed within about
//! one and a half leases keeps the session, a longer one ends it.
//! `WMR_TEST_LOG=wmr=debug` gives the daemons that log filter and keeps a
//! failed test's logs.

mod support;

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use support::netns::{COORDINATOR, NetCluster};
use support::status::{Attempt, Status, Task};
use support::*;

const LEASE: &str = "3s";
const HEARTBEAT: &str = "300ms";
/// Enough reduce tasks (1.5 s each) that the job outlasts the few
/// seconds a healed session takes to resume (QUIC probes back off), so
/// the late reports arrive while it runs.
const REDUCERS: u64 = 8;
/// The job's parameters: each map attempt sleeps 800 ms in the host (the
/// hostile guest's `nap` mode) and each reduce attempt busy-waits 1.5 s
/// first, so a test can act while one runs; otherwise a word count.
const PARAMS: [&str; 3] = ["mode=nap", "ms=800", "reduce-ms=1500"];
/// The bound on a whole test.
const TEST_BOUND: Duration = Duration::from_secs(90);
/// The stated bound from healing a partition to the job's end.
const HEAL_BOUND: Duration = Duration::from_secs(30);

const WORKERS: [&str; 3] = ["w1", "w2", "w3"];

/// `--param P` for each of [`PARAMS`], and `--grant clock` (the
/// reduce's busy-wait reads the clock).
fn job_params() -> Vec<&'static str> {
    let mut args = vec!["--grant", "clock"];
    for p in PARAMS {
        args.extend(["--param", p]);
    }
    args
}

/// `wmr seq` with the job's parameters, sorted, computed once.
fn expected() -> &'static Vec<String> {
    static EXPECTED: OnceLock<Vec<String>> = OnceLock::new();
    EXPECTED.get_or_init(|| {
        let (map, books) = (path(&guest("hostile")), path(&books()));
        let mut args = vec!["seq", "--map", &map, "--input", &books];
        args.extend(job_params());
        let lines = sorted_lines_of(&args);
        assert!(lines.len() > 1000, "the reference is not trivial");
        lines
    })
}

fn start() -> NetCluster {
    NetCluster::start(
        &WORKERS,
        &["--lease", LEASE, "--heartbeat", HEARTBEAT],
        TEST_BOUND,
    )
}

fn deploy(c: &mut NetCluster) -> (String, std::path::PathBuf) {
    let out = c.root.join("out");
    let mut extra = vec!["--reducers", "8"];
    extra.extend(job_params());
    let job = c.deploy(&guest("hostile"), &books(), &out, &extra);
    (job, out)
}

fn status(c: &NetCluster, job: &str) -> Status {
    Status::parse(&c.status(job))
}

/// Ids the worker named `name` had (one per session).
fn ids_of(status: &Status, name: &str) -> BTreeSet<u64> {
    status
        .workers
        .iter()
        .filter(|(_, (n, _))| n == name)
        .map(|(id, _)| *id)
        .collect()
}

fn on<'a>(status: &'a Status, name: &str) -> Vec<&'a Attempt> {
    let ids = ids_of(status, name);
    status
        .attempts
        .iter()
        .filter(|a| ids.contains(&a.worker))
        .collect()
}

/// Wait for the deploy to succeed after the partition healed at `healed`;
/// the time from healing to the job's end, within [`HEAL_BOUND`].
fn finishes_after_healing(c: &mut NetCluster, healed: Instant) -> Duration {
    let (exit, stderr) = c.deploy_exit(HEAL_BOUND);
    let after = healed.elapsed();
    assert!(exit.success(), "deploy failed ({exit}): {stderr}");
    assert!(after <= HEAL_BOUND, "the job ended {after:?} after healing");
    after
}

/// What every scenario must end with: the reference output in exactly one
/// part file per reducer and `_SUCCESS` (I6, I7), one commit per task, at
/// the newest epoch the task ever had (I1, I2), and no attempt left
/// running.
fn assert_job_correct(out: &Path, status: &Status) {
    assert_eq!(status.phase, "Completed", "{}", status.summary());
    let mut files: Vec<String> = std::fs::read_dir(out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    let mut expected_files: Vec<String> = (0..REDUCERS).map(|r| format!("part-r-{r:05}")).collect();
    expected_files.insert(0, "_SUCCESS".into());
    assert_eq!(files, expected_files, "the output directory");
    let got = sorted_output(out);
    if &got != expected() {
        let first = got
            .iter()
            .zip(expected())
            .position(|(g, e)| g != e)
            .unwrap_or(got.len().min(expected().len()));
        panic!(
            "I6: output differs from `wmr seq`: {} lines vs {}; first difference at {first}: {:?} vs {:?}",
            got.len(),
            expected().len(),
            got.get(first),
            expected().get(first)
        );
    }
    status.assert_one_commit_per_task(REDUCERS);
    let mut newest: BTreeMap<Task, u64> = BTreeMap::new();
    for a in &status.attempts {
        let e = newest.entry(a.task).or_default();
        *e = (*e).max(a.epoch);
        assert_ne!(a.outcome, "Running", "an attempt still running: {a:?}");
    }
    for a in status.committed() {
        assert_eq!(
            a.epoch, newest[&a.task],
            "I2: {:?} committed epoch {} but had epoch {}",
            a.task, a.epoch, newest[&a.task]
        );
    }
}

/// A worker cut off from the coordinator but not from its peers, for
/// longer than a lease and less than the session timeout (I13): the map attempt it
/// was running is lost with its lease and runs elsewhere; when the link
/// heals its late report is rejected as stale (I3), and the map outputs
/// it had committed stay committed — its peers fetched them from it all
/// along, nothing ran twice for them (its connection was never lost).
#[test]
fn a_worker_cut_off_from_the_coordinator_but_not_its_peers() {
    let _serial = serial();
    expected();
    let mut c = start();
    let (job, out) = deploy(&mut c);
    // w3 holds a committed map output and runs another map attempt.
    let (running, committed_before) = c.poll(
        "w3 to commit a map task and run another",
        Duration::from_secs(60),
        || {
            let s = status(&c, &job);
            let mine = on(&s, "w3");
            let committed: Vec<Task> = mine
                .iter()
                .filter(|a| a.outcome == "Committed" && matches!(a.task, Task::Map(_)))
                .map(|a| a.task)
                .collect();
            let running = mine
                .iter()
                .find(|a| a.outcome == "Running" && matches!(a.task, Task::Map(_)))?;
            (!committed.is_empty()).then(|| (running.key(), committed))
        },
    );
    c.net.cut(COORDINATOR, "w3");
    let cut = Instant::now();
    // Its lease expires: the attempt is lost and the task runs again.
    c.poll(
        "the cut-off attempt's lease to expire",
        Duration::from_secs(20),
        || {
            let s = status(&c, &job);
            (s.attempt(running.0, running.1).outcome == "Lost").then_some(())
        },
    );
    c.net.heal(COORDINATOR, "w3");
    let healed = Instant::now();
    let after = finishes_after_healing(&mut c, healed);
    let s = status(&c, &job);
    assert_job_correct(&out, &s);
    assert_eq!(
        s.attempt(running.0, running.1).outcome,
        "RejectedStale",
        "I3: the late report of the cut-off attempt; {}",
        s.summary()
    );
    assert_eq!(ids_of(&s, "w3").len(), 1, "w3 kept its session");
    for task in committed_before {
        let commits = on(&s, "w3")
            .into_iter()
            .filter(|a| a.task == task && a.outcome == "Committed")
            .count();
        assert_eq!(
            commits,
            1,
            "{task:?}, committed on w3 before the cut, was fetched from it; {}",
            s.summary()
        );
    }
    eprintln!(
        "worker cut from the coordinator for {:?}: the job ended {after:?} after healing",
        healed - cut
    );
}

/// The map tasks a fetch failure named, with the holder's worker id, from
/// the raw attempt log.
fn fetch_failures(status: &Status) -> Vec<(Task, u64)> {
    status.raw["attempt_log"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a["outcome"].get("Failed")?.get("FetchFailed").cloned())
        .map(|f: Value| {
            let map = f["map_task"]["Map"].as_u64().expect("a map task");
            (Task::Map(map), f["worker"].as_u64().expect("a worker"))
        })
        .collect()
}

/// A worker cut off from its peers but not from the coordinator: the
/// reducers elsewhere cannot fetch the map outputs it holds, fail with
/// `FetchFailed` (not charged to them), and those map tasks run again on
/// workers the reducers can reach (I8); the job is not stuck. The links
/// heal once that has happened, and the job ends within the bound.
#[test]
fn a_worker_cut_off_from_its_peers_but_not_the_coordinator() {
    let _serial = serial();
    expected();
    let mut c = start();
    let (job, out) = deploy(&mut c);
    c.poll("w3 to commit a map task", Duration::from_secs(60), || {
        let s = status(&c, &job);
        on(&s, "w3")
            .iter()
            .any(|a| a.outcome == "Committed" && matches!(a.task, Task::Map(_)))
            .then_some(())
    });
    c.net.cut("w3", "w1");
    c.net.cut("w3", "w2");
    let cut = Instant::now();
    // A reducer failed to fetch from w3, and the map task it named was
    // committed again, elsewhere.
    let (rerun, during) = c.poll(
        "a map output held by w3 to run again after a failed fetch",
        Duration::from_secs(60),
        || {
            let s = status(&c, &job);
            let w3 = ids_of(&s, "w3");
            let rerun = fetch_failures(&s)
                .into_iter()
                .filter(|(_, holder)| w3.contains(holder))
                .find(|(task, _)| {
                    s.committed()
                        .iter()
                        .any(|a| a.task == *task && !w3.contains(&a.worker))
                })?;
            Some((rerun.0, s))
        },
    );
    eprintln!(
        "while w3 was cut off from its peers ({:?}): {}",
        cut.elapsed(),
        during.summary()
    );
    c.net.heal("w3", "w1");
    c.net.heal("w3", "w2");
    let healed = Instant::now();
    let after = finishes_after_healing(&mut c, healed);
    let s = status(&c, &job);
    assert_job_correct(&out, &s);
    assert!(
        s.attempts
            .iter()
            .any(|a| a.task == rerun && a.outcome == "OutputLost"),
        "I8: {rerun:?}'s output on w3 was marked lost; {}",
        s.summary()
    );
    eprintln!(
        "worker cut from its peers for {:?}: the job ended {after:?} after healing",
        healed - cut
    );
}

/// The coordinator cut off from every worker until every worker's
/// connection timed out (longer than a lease, then the idle timeout): the
/// running attempts are lost with their leases, the workers with their
/// connections, and the map outputs they held with them (I8). When the
/// links heal the workers reconnect, re-send the reports they kept (stale
/// by then, rejected: I3), and the job ends within the bound.
#[test]
fn the_coordinator_cut_off_from_everyone_for_longer_than_a_lease() {
    let _serial = serial();
    expected();
    let mut c = start();
    let (job, out) = deploy(&mut c);
    c.poll(
        "a committed map task and three running ones",
        Duration::from_secs(60),
        || {
            let s = status(&c, &job);
            let committed = s.maps().iter().any(|a| a.outcome == "Committed");
            let running = s.maps().iter().filter(|a| a.outcome == "Running").count();
            (committed && running == WORKERS.len()).then_some(s)
        },
    );
    c.net.isolate(COORDINATOR);
    let cut = Instant::now();
    // What ran at the cut, read after it (clients run in the coordinator's
    // namespace): an attempt may have committed between the poll and the cut.
    let before = status(&c, &job);
    c.poll(
        "every worker's connection to time out",
        Duration::from_secs(30),
        || {
            let s = status(&c, &job);
            s.workers
                .values()
                .all(|(_, connected)| !connected)
                .then_some(())
        },
    );
    c.net.rejoin(COORDINATOR);
    let healed = Instant::now();
    let after = finishes_after_healing(&mut c, healed);
    let s = status(&c, &job);
    assert_job_correct(&out, &s);
    for a in before.maps() {
        let now = s.attempt(a.task, a.epoch);
        match a.outcome.as_str() {
            "Committed" => assert_eq!(now.outcome, "OutputLost", "I8: {a:?}"),
            "Running" => assert!(
                ["RejectedStale", "Lost"].contains(&now.outcome.as_str()),
                "I3: an attempt running when the coordinator was cut off: {now:?}"
            ),
            _ => {}
        }
    }
    let stale = s
        .attempts
        .iter()
        .filter(|a| a.outcome == "RejectedStale")
        .count();
    assert!(
        stale > 0,
        "I3: the reports kept through the partition were rejected; {}",
        s.summary()
    );
    // Each worker's sessions ended (polled above; its committed outputs are
    // OutputLost) and it came back under the id of its durable identity.
    for w in WORKERS {
        let ids = ids_of(&s, w);
        assert_eq!(ids.len(), 1, "{w} keeps its id across sessions: {ids:?}");
        let id = ids.first().unwrap();
        assert!(s.workers[id].1, "{w} is connected again after healing");
    }
    eprintln!(
        "coordinator cut off for {:?}: the job ended {after:?} after healing",
        healed - cut
    );
}

/// A partition in the middle of a reduce commit: the worker running a
/// reduce attempt is cut off from the coordinator while the attempt
/// finishes, so its report (the first step of the commit) is in flight
/// when the lease expires and the task is given to another worker. The
/// link heals while that attempt runs: the late report arrives and is
/// rejected (I3), its part file is never published, the new attempt
/// commits, and the output has one part file per reducer (I2).
#[test]
fn a_partition_that_heals_in_the_middle_of_a_reduce_commit() {
    let _serial = serial();
    expected();
    let mut c = start();
    let (job, out) = deploy(&mut c);
    let (cut_off, worker) = c.poll("a reduce attempt to run", Duration::from_secs(60), || {
        let s = status(&c, &job);
        let a = s
            .attempts
            .iter()
            .find(|a| a.outcome == "Running" && matches!(a.task, Task::Reduce(_)))?;
        Some((a.key(), s.worker_name(a.worker).to_string()))
    });
    c.net.cut(COORDINATOR, &worker);
    let cut = Instant::now();
    let retry = c.poll(
        "the cut-off reduce attempt to be lost and run again",
        Duration::from_secs(20),
        || {
            let s = status(&c, &job);
            if s.attempt(cut_off.0, cut_off.1).outcome != "Lost" {
                return None;
            }
            s.attempts
                .iter()
                .find(|a| a.task == cut_off.0 && a.epoch > cut_off.1)
                .map(Attempt::key)
        },
    );
    c.net.heal(COORDINATOR, &worker);
    let healed = Instant::now();
    let after = finishes_after_healing(&mut c, healed);
    let s = status(&c, &job);
    assert_job_correct(&out, &s);
    assert_eq!(
        s.attempt(cut_off.0, cut_off.1).outcome,
        "RejectedStale",
        "I3: the report that was in flight; {}",
        s.summary()
    );
    assert!(
        s.committed()
            .iter()
            .any(|a| a.task == cut_off.0 && a.epoch >= retry.1),
        "the retry (or a later attempt) committed {:?}",
        cut_off.0
    );
    eprintln!(
        "reduce report in flight for {:?}: the job ended {after:?} after healing",
        healed - cut
    );
}

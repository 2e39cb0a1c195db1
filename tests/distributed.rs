//! Integration tests of the networked mode: `wmr coordinator`, `wmr worker`
//! processes and `wmr deploy` / `wmr status` clients over QUIC on 127.0.0.1.
//!
//! A port of the MIT 6.5840 Lab 1 `test-mr.sh` (word count, indexer, map
//! parallelism, job count, early exit, crash), plus a stale attempt (a worker
//! frozen past its lease), a frozen coordinator, and peers that speak
//! garbage or present the wrong certificate fingerprint. Every job reads the
//! eight bundled books with 10 reducers, and its committed output must equal
//! the sequential reference (`wmr seq`) line for line.
//!
//! Most tests start the coordinator with `--shared-store` (map outputs in its
//! work dir); those of [`Mode::WorkerLocal`] use the default, where map
//! outputs stay on their worker and reducers fetch them over QUIC: word
//! count, indexer, a worker killed while reducers read its map outputs
//! (I8: they run again), and the crash test.
//!
//! Every process a test starts is owned by a [`Proc`], whose `Drop` kills it
//! (SIGKILL, which also ends a SIGSTOPped process), so nothing outlives a
//! test, even one that panics. Every wait is a bounded poll on an observable
//! condition. The tests run one at a time (the machine may have two cores,
//! and a starved heartbeat would make timing-based assertions flaky).

mod support;

use std::path::{Path, PathBuf};

use std::time::{Duration, Instant};
use support::cluster::*;
use support::status::*;
use support::*;
use wmr::scheduler::Phase;
use wmr::summary::Progress;

/// nReduce of the MIT lab.
const REDUCERS: u64 = 10;
/// Where map outputs live, i.e. how the coordinator is started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// `--shared-store` (coordinator and workers share the filesystem, as on
    /// loopback): map outputs are committed into the coordinator's work dir.
    SharedStore,
    /// The default: map outputs stay on the worker that produced them and
    /// reducers fetch them worker-to-worker over QUIC; a lost worker's
    /// committed map outputs run again (I8).
    WorkerLocal,
}

impl Mode {
    fn args(self) -> &'static [&'static str] {
        match self {
            Mode::SharedStore => &["--shared-store"],
            Mode::WorkerLocal => &[],
        }
    }
}

/// The mode of the tests that do not choose one.
const COORDINATOR_MODE: Mode = Mode::SharedStore;
/// Bound on a whole job (deploy until it returns) in the longer tests.
const JOB_LIMIT: Duration = Duration::from_secs(90);
/// Bound on one `wmr status` / `wmr cancel` call.
const CLIENT_LIMIT: Duration = Duration::from_secs(30);

/// Start a coordinator in [`COORDINATOR_MODE`]; see [`start_in`].
fn start(coordinator_args: &[&str]) -> Cluster {
    start_in(COORDINATOR_MODE, coordinator_args)
}

/// Start a coordinator in `mode` with `coordinator_args`, for jobs of
/// [`REDUCERS`] reducers.
fn start_in(mode: Mode, coordinator_args: &[&str]) -> Cluster {
    Cluster::options()
        .args(mode.args())
        .args(coordinator_args)
        .reducers(REDUCERS)
        .client_limit(CLIENT_LIMIT)
        .start()
}

impl Cluster {
    /// Deploy over the books and wait for success; the job id.
    fn deploy_ok(&mut self, guest: &Path, out: &Path, extra: &[&str]) -> String {
        let mut deploy = self.deploy(guest, &books(), out, extra);
        self.deploy_finishes_ok(&mut deploy, JOB_LIMIT)
    }

    /// `wmr status [JOBID] --json`, which must succeed.
    fn status(&self, job: Option<&str>) -> Status {
        let mut args = vec!["status"];
        args.extend(job);
        args.push("--json");
        Status::parse(&self.client_json(&args))
    }
}

// ---------------------------------------------------------------------------
// Outputs

/// Paths under `dir` whose name is `stem` or `stem` followed by a
/// non-digit (so `m-00003.a1` does not match `m-00003.a12`).
fn find_named(dir: &Path, stem: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().to_string();
        if let Some(rest) = name.strip_prefix(stem)
            && !rest.starts_with(|c: char| c.is_ascii_digit())
        {
            found.push(path.clone());
        }
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            found.extend(find_named(&path, stem));
        }
    }
    found
}

// ---------------------------------------------------------------------------
// 1. Word count and indexer

/// MIT: wc test, 3 workers.
#[test]
fn wc_with_three_workers_equals_reference() {
    let _serial = serial();
    let mut c = start(&[]);
    c.add_workers(3, &[]);
    let out = c.root.join("out");
    let job = c.deploy_ok(&guest("wordcount"), &out, &[]);
    assert_output_equals_reference(&out, "wordcount", REDUCERS);
    let status = c.status(Some(&job));
    assert_eq!(status.job, job);
    assert_eq!(status.phase, "Completed");
}

/// MIT: indexer test, 2 workers.
#[test]
fn indexer_with_two_workers_equals_reference() {
    let _serial = serial();
    let mut c = start(&[]);
    c.add_workers(2, &[]);
    let out = c.root.join("out");
    let job = c.deploy_ok(&guest("indexer"), &out, &[]);
    assert_output_equals_reference(&out, "indexer", REDUCERS);
    assert_eq!(c.status(Some(&job)).phase, "Completed");
}

/// MIT: wc test, 3 workers, map outputs kept on the workers (default mode):
/// every reducer fetches its partition from each map task's worker.
#[test]
fn wc_with_three_workers_worker_local_equals_reference() {
    let _serial = serial();
    let mut c = start_in(Mode::WorkerLocal, &[]);
    c.add_workers(3, &[]);
    let out = c.root.join("out");
    let job = c.deploy_ok(&guest("wordcount"), &out, &[]);
    assert_output_equals_reference(&out, "wordcount", REDUCERS);
    let status = c.status(Some(&job));
    assert_eq!(status.phase, "Completed");
    status.assert_one_commit_per_task(REDUCERS);
    // Nothing was lost, so nothing ran twice.
    assert!(
        status.attempts.iter().all(|a| a.outcome == "Committed"),
        "{}",
        status.summary()
    );
    // Committed map outputs are the workers' business: none of them is in
    // the coordinator's work dir.
    let in_state = find_named(&c.root.join("state"), "m-00000");
    assert!(
        in_state.is_empty(),
        "map outputs in the coordinator's state dir: {in_state:?}"
    );
}

/// MIT: indexer test, 2 workers, map outputs kept on the workers.
#[test]
fn indexer_with_two_workers_worker_local_equals_reference() {
    let _serial = serial();
    let mut c = start_in(Mode::WorkerLocal, &[]);
    c.add_workers(2, &[]);
    let out = c.root.join("out");
    let job = c.deploy_ok(&guest("indexer"), &out, &[]);
    assert_output_equals_reference(&out, "indexer", REDUCERS);
    let status = c.status(Some(&job));
    assert_eq!(status.phase, "Completed");
    status.assert_one_commit_per_task(REDUCERS);
}

// ---------------------------------------------------------------------------
// 2. Parallelism

/// MIT: map parallelism. Two one-slot workers, map calls that take 1 s:
/// two map attempts on different workers run at the same time.
///
/// (MIT's reduce parallelism test needs a guest that is slow in `reduce`;
/// no example guest is, so only map parallelism is tested.)
#[test]
fn map_attempts_on_two_workers_overlap_in_time() {
    let _serial = serial();
    let mut c = start(&[]);
    c.add_workers(2, &["--slots", "1"]);
    let out = c.root.join("out");
    let job = c.deploy_ok(&guest("hostile"), &out, &strs(&sleep_params(1000)));
    assert_output_equals_reference(&out, "hostile", REDUCERS);
    let status = c.status(Some(&job));
    let maps: Vec<&Attempt> = status
        .maps()
        .into_iter()
        .filter(|a| a.outcome == "Committed")
        .collect();
    assert_eq!(maps.len(), 8, "one committed map attempt per book");
    let overlapping = maps
        .iter()
        .any(|a| maps.iter().any(|b| a.worker != b.worker && a.overlaps(b)));
    assert!(
        overlapping,
        "no two map attempts on different workers overlap: {:?}",
        maps
    );
    for a in &maps {
        assert!(
            a.ended_ms.unwrap() >= a.started_ms + 1000,
            "{a:?}: shorter than the guest's 1 s"
        );
    }
}

/// MIT: reduce parallelism. Two reduce attempts (each busy for 1 s in the
/// guest) run on two workers at the same time.
#[test]
fn reduce_attempts_on_two_workers_overlap_in_time() {
    let _serial = serial();
    let mut c = start(&[]);
    c.add_workers(2, &["--slots", "1"]);
    let out = c.root.join("out");
    let job = c.deploy_ok(
        &guest("hostile"),
        &out,
        &["--param", "reduce-ms=1000", "--grant", "clock"],
    );
    assert_output_equals_reference(&out, "hostile", REDUCERS);
    let status = c.status(Some(&job));
    let reduces: Vec<&Attempt> = status
        .attempts
        .iter()
        .filter(|a| matches!(a.task, Task::Reduce(_)) && a.outcome == "Committed")
        .collect();
    assert_eq!(
        reduces.len(),
        REDUCERS as usize,
        "one committed attempt per reducer"
    );
    let overlapping = reduces.iter().any(|a| {
        reduces
            .iter()
            .any(|b| a.worker != b.worker && a.overlaps(b))
    });
    assert!(
        overlapping,
        "no two reduce attempts on different workers overlap: {reduces:?}"
    );
    for a in &reduces {
        assert!(
            a.ended_ms.unwrap() >= a.started_ms + 1000,
            "{a:?}: shorter than 1 s"
        );
    }
}

// ---------------------------------------------------------------------------
// 3. Job count

/// MIT: job count. Without failures each of the 8 map tasks runs once.
#[test]
fn four_workers_run_exactly_eight_map_attempts() {
    let _serial = serial();
    let mut c = start(&[]);
    c.add_workers(4, &["--slots", "1"]);
    let out = c.root.join("out");
    let job = c.deploy_ok(&guest("hostile"), &out, &strs(&sleep_params(2000)));
    assert_output_equals_reference(&out, "hostile", REDUCERS);
    let status = c.status(Some(&job));
    let maps = status.maps();
    assert_eq!(
        maps.len(),
        8,
        "exactly 8 map attempts (one per book): {:?}",
        maps
    );
    let mut tasks: Vec<Task> = maps.iter().map(|a| a.task).collect();
    tasks.sort();
    tasks.dedup();
    assert_eq!(tasks, (0..8).map(Task::Map).collect::<Vec<_>>());
    assert!(
        maps.iter()
            .all(|a| a.outcome == "Committed" && a.epoch == 1 && !a.speculative)
    );
}

// ---------------------------------------------------------------------------
// 4. Early exit

/// MIT: early exit. When deploy returns the output is complete and final:
/// stopping the workers, then the coordinator, changes nothing.
#[test]
fn output_is_final_when_deploy_returns() {
    let _serial = serial();
    let mut c = start(&[]);
    c.add_workers(3, &[]);
    let out = c.root.join("out");
    let job = c.deploy_ok(&guest("wordcount"), &out, &[]);
    let first = snapshot(&out);
    assert!(
        first.contains_key("_SUCCESS"),
        "no _SUCCESS: {:?}",
        first.keys()
    );
    assert!(
        !first.keys().any(|k| k.starts_with("_temporary")),
        "_temporary left behind: {:?}",
        first.keys()
    );
    assert_output_equals_reference(&out, "wordcount", REDUCERS);
    assert_eq!(c.status(Some(&job)).phase, "Completed");

    for worker in &mut c.workers {
        worker.terminate(Duration::from_secs(10));
    }
    assert!(
        snapshot(&out) == first,
        "the output changed after the workers stopped"
    );
    let status = c.coordinator().terminate(Duration::from_secs(10));
    assert!(
        status.success() || status.code().is_none(),
        "coordinator exit on SIGTERM: {status}"
    );
    assert!(
        snapshot(&out) == first,
        "the output changed after the coordinator stopped"
    );
}

// ---------------------------------------------------------------------------
// 5. Crashes

/// MIT: crash test. Workers exit abruptly at the start of a task with
/// probability 0.3 and are restarted as they die; five jobs in a row each
/// complete with the reference output.
#[test]
fn workers_crashing_at_random_still_give_reference_output() {
    let _serial = serial();
    // A short lease, so that a crashed worker's task is reassigned quickly.
    let mut c = start(&["--lease", "1s", "--heartbeat", "250ms"]);
    let crashy = ["--slots", "1", "--crash-probability", "0.3"];
    c.add_workers(3, &crashy);
    let mut total_restarts = 0;
    for round in 0..5 {
        total_restarts += crash_round(&mut c, &crashy, round, Duration::from_secs(60));
    }
    assert!(
        total_restarts > 0,
        "--crash-probability 0.3 crashed no worker in five jobs"
    );
}

/// The crash test with map outputs on the workers, with faults chosen
/// rather than drawn: a crashed worker takes its committed map outputs with
/// it (I8), and reducers wait for a dead peer until their fetch times out,
/// so random crashes would make the run time unbounded. Two jobs on three
/// one-slot workers, map calls of 200 ms (so every worker runs map tasks).
/// In each job a worker picked by a seeded RNG is SIGKILLed (and replaced
/// by a fresh one) once two map tasks have committed, and another, picked
/// among the rest, the moment the reduce phase begins: its committed map
/// outputs are lost and run again. Both jobs complete with the reference
/// output and one commit per task; the whole test takes at most 90 s.
#[test]
fn workers_killed_one_at_a_time_worker_local_still_give_reference_output() {
    use rand::{Rng, SeedableRng};
    const LIMIT: Duration = Duration::from_secs(90);
    let _serial = serial();
    let started = Instant::now();
    let mut c = start_in(
        Mode::WorkerLocal,
        &["--lease", "1s", "--heartbeat", "250ms"],
    );
    c.add_workers(3, &["--slots", "1"]);
    let mut rng = rand::rngs::StdRng::seed_from_u64(6_5840);
    books_reference("hostile");
    let mut params = sleep_params(200);
    params.extend(["--max-attempts".into(), "10".into()]);
    for round in 0..2 {
        let out = c.root.join(format!("out-{round}"));
        let mut deploy = c.deploy(&guest("hostile"), &books(), &out, &strs(&params));
        let job = c.job_id(&mut deploy);
        let left = || LIMIT.saturating_sub(started.elapsed());
        let kills: [(&str, ProgressTest); 2] = [
            ("two committed map tasks", |p| {
                p.phase == Phase::Mapping && p.committed >= 2
            }),
            ("the reduce phase", |p| p.phase == Phase::Reducing),
        ];
        let mut killed = Vec::new();
        for (k, (when, until)) in kills.into_iter().enumerate() {
            let at = c.watch_until(&job, when, left(), until);
            // Not the fresh worker that replaced the first victim: it may
            // hold no map output yet.
            let candidates: Vec<usize> = (0..c.workers.len())
                .filter(|i| !killed.contains(i))
                .collect();
            let i = candidates[rng.random_range(0..candidates.len())];
            c.workers[i].kill_now();
            killed.push(i);
            let name = format!("w{}-{round}-{k}", i + 1);
            println!(
                "round {round}: killed {} at {at:?}; {name} replaces it",
                c.workers[i].name
            );
            let fresh = c.spawn_worker(&name, &["--slots", "1"]);
            c.workers[i] = fresh;
        }
        c.deploy_finishes_ok(&mut deploy, left());
        assert_output_equals_reference(&out, "hostile", REDUCERS);
        let status = c.status(Some(&job));
        assert_eq!(status.phase, "Completed");
        status.assert_one_commit_per_task(REDUCERS);
        let lost = status
            .attempts
            .iter()
            .filter(|a| a.outcome == "OutputLost")
            .count();
        assert!(
            lost > 0,
            "round {round}: no map output was lost; {}",
            status.summary()
        );
        println!(
            "round {round}: job {job} completed, {} attempts, {lost} map outputs lost, {:.1} s in",
            status.attempts.len(),
            started.elapsed().as_secs_f64()
        );
    }
}

/// A condition on a job's progress (see [`Cluster::watch_until`]).
type ProgressTest = fn(&Progress) -> bool;

/// One job of the crash test: deploy word count, restart every worker that
/// dies until the deploy returns (within `limit`), then check the output and
/// that each task has exactly one committed attempt. The number of restarts.
fn crash_round(c: &mut Cluster, crashy: &[&str], round: usize, limit: Duration) -> usize {
    let out = c.root.join(format!("out-{round}"));
    let mut deploy = c.deploy(
        &guest("wordcount"),
        &books(),
        &out,
        &["--max-attempts", "10"],
    );
    let deadline = Instant::now() + limit;
    let mut restarts = 0;
    while deploy.exited().is_none() {
        for i in 0..c.workers.len() {
            if c.workers[i].exited().is_some() {
                restarts += 1;
                let name = format!("w{}-{round}-{restarts}", i + 1);
                let fresh = c.spawn_worker(&name, crashy);
                // Dropping the old one reaps it.
                c.workers[i] = fresh;
            }
        }
        assert!(restarts < 300, "round {round}: {restarts} restarts");
        if Instant::now() >= deadline {
            let status = c.status(None);
            panic!(
                "round {round}: the job did not finish within {limit:?} ({restarts} restarts); {}",
                status.summary()
            );
        }
        sleep_step();
    }
    let job = c.deploy_finishes_ok(&mut deploy, Duration::ZERO);
    assert_output_equals_reference(&out, "wordcount", REDUCERS);
    let status = c.status(Some(&job));
    assert_eq!(status.phase, "Completed");
    status.assert_one_commit_per_task(REDUCERS);
    let lost = status
        .attempts
        .iter()
        .filter(|a| a.outcome == "OutputLost")
        .count();
    println!(
        "crash round {round}: job {job} completed after {restarts} worker restarts, {} attempts, {lost} map outputs lost",
        status.attempts.len()
    );
    restarts
}

// ---------------------------------------------------------------------------
// 5b. A worker holding map outputs is lost while reducers read them

/// Worker-local mode, I8. Three one-slot workers, map calls of 300 ms, so
/// each worker commits map outputs. The moment the job enters the reduce
/// phase (pushed by the coordinator to a `Watch`), worker w1 is SIGKILLed:
/// the reducers cannot fetch its outputs and the coordinator loses it. The
/// job still completes with the reference output, and the attempt log shows
/// each map task committed on w1 as `OutputLost`, followed by a later
/// (higher-epoch) committed attempt of the same task on another worker.
#[test]
fn worker_killed_while_reducing_has_its_map_outputs_run_again() {
    let _serial = serial();
    let mut c = start_in(
        Mode::WorkerLocal,
        &["--lease", "1s", "--heartbeat", "250ms"],
    );
    c.add_workers(3, &["--slots", "1"]);
    let out = c.root.join("out");
    let mut deploy = c.deploy(&guest("hostile"), &books(), &out, &strs(&sleep_params(300)));
    let job = c.job_id(&mut deploy);

    // w1 holds a committed map output before the map phase ends.
    poll(
        "w1 to commit a map attempt",
        Duration::from_secs(30),
        || {
            let status = c.status(Some(&job));
            assert_eq!(
                status.phase,
                "Mapping",
                "the map phase ended before w1 committed a map attempt: {}",
                status.summary()
            );
            status
                .maps()
                .iter()
                .any(|a| a.outcome == "Committed" && status.worker_name(a.worker) == "w1")
                .then_some(())
        },
    );
    let Progress {
        committed,
        running,
        total,
        ..
    } = c.watch_until(&job, "the reduce phase", JOB_LIMIT, |p| {
        p.phase == Phase::Reducing
    });
    let victim = c
        .workers
        .iter()
        .position(|w| w.name == "worker-w1")
        .unwrap();
    c.workers[victim].kill_now();
    println!("killed w1 when reducing: {committed}/{total} tasks committed, {running} running");
    assert!(
        committed < total,
        "the job had committed every task when w1 was killed"
    );

    c.deploy_finishes_ok(&mut deploy, JOB_LIMIT);
    assert_output_equals_reference(&out, "hostile", REDUCERS);
    let status = c.status(Some(&job));
    assert_eq!(status.phase, "Completed");
    status.assert_one_commit_per_task(REDUCERS);
    let w1: Vec<u64> = status
        .workers
        .iter()
        .filter(|(_, (name, _))| name == "w1")
        .map(|(&id, _)| id)
        .collect();
    assert_eq!(w1.len(), 1, "workers: {:?}", status.workers);
    let lost: Vec<&Attempt> = status
        .maps()
        .into_iter()
        .filter(|a| a.worker == w1[0] && a.outcome == "OutputLost")
        .collect();
    assert!(
        !lost.is_empty(),
        "no map output of w1 is OutputLost; {}",
        status.summary()
    );
    // Every map task w1 had committed lost its output and ran again.
    for a in status.maps() {
        if a.worker == w1[0] {
            assert_ne!(
                a.outcome, "Committed",
                "{a:?}: w1's output still counts as committed"
            );
        }
    }
    for old in &lost {
        let again = status
            .maps()
            .into_iter()
            .find(|a| a.task == old.task && a.outcome == "Committed")
            .unwrap_or_else(|| panic!("{old:?}: never committed again; {}", status.summary()));
        assert!(
            again.epoch > old.epoch && again.started_ms >= old.started_ms,
            "{old:?} lost its output, but the committed attempt {again:?} is not a later one"
        );
        assert_ne!(again.worker, old.worker, "{again:?} ran on the dead worker");
        println!(
            "{:?}: output lost with w1 ({old:?}), committed again: {again:?}",
            old.task
        );
    }
    assert!(
        !out.join("_temporary").exists(),
        "output/_temporary remains"
    );
}

// ---------------------------------------------------------------------------
// 6. Stale attempt

/// A worker frozen (SIGSTOP) in the middle of a map attempt loses its lease;
/// the task is reassigned with a higher epoch and committed; the frozen
/// attempt, resumed (SIGCONT), is rejected as stale and leaves no file.
#[test]
fn frozen_worker_attempt_is_rejected_and_leaves_no_file() {
    let _serial = serial();
    let mut c = start(&["--lease", "2s", "--heartbeat", "500ms"]);
    c.add_workers(2, &["--slots", "1"]);
    let out = c.root.join("out");
    let mut params = sleep_params(4000);
    params.extend(["--split-size".into(), "1GiB".into()]);
    let mut deploy = c.deploy(&guest("hostile"), &books(), &out, &strs(&params));
    let job = c.job_id(&mut deploy);

    // A running map attempt, and the process of its worker.
    let (frozen, frozen_name) = poll("a Running map attempt", Duration::from_secs(30), || {
        let status = c.status(Some(&job));
        let running = status
            .maps()
            .into_iter()
            .find(|a| a.outcome == "Running")?
            .clone();
        let name = status.worker_name(running.worker).to_string();
        Some((running, name))
    });
    let worker = c.worker_named(&frozen_name);
    worker.signal("STOP");
    poll("the worker to be stopped", Duration::from_secs(5), || {
        (worker.state() == Some('T')).then_some(())
    });

    // Its task is reassigned with a higher epoch and committed.
    let successor = poll(
        "a higher-epoch attempt of the frozen task to commit",
        Duration::from_secs(40),
        || {
            assert!(
                deploy.exited().is_none(),
                "deploy ended while a worker was frozen"
            );
            let status = c.status(Some(&job));
            status
                .attempts
                .iter()
                .find(|a| {
                    a.task == frozen.task && a.epoch > frozen.epoch && a.outcome == "Committed"
                })
                .cloned()
        },
    );
    assert_ne!(successor.worker, frozen.worker);
    println!("froze {frozen_name} in {frozen:?}; committed instead: {successor:?}");
    c.worker_named(&frozen_name).signal("CONT");

    c.deploy_finishes_ok(&mut deploy, JOB_LIMIT);
    assert_output_equals_reference(&out, "hostile", REDUCERS);

    // The resumed worker has dealt with its stale attempt once it reported
    // it (RejectedStale), or once it has run an attempt started after the
    // freeze (a one-slot worker had to drop the stale one first).
    let status = poll(
        "the frozen attempt to be rejected, or its worker to run again",
        Duration::from_secs(15),
        || {
            let status = c.status(Some(&job));
            let record = status.attempt(frozen.task, frozen.epoch);
            let resumed = status.attempts.iter().any(|a| {
                a.outcome == "Committed"
                    && a.started_ms > frozen.started_ms
                    && status.worker_name(a.worker) == frozen_name
            });
            (record.outcome == "RejectedStale" || resumed).then_some(status)
        },
    );
    assert_eq!(status.phase, "Completed");
    let record = status.attempt(frozen.task, frozen.epoch);
    assert!(
        record.outcome == "RejectedStale" || record.outcome == "Lost",
        "the frozen attempt ended as {:?}",
        record
    );
    assert!(record.ended_ms.is_some(), "{record:?}: no end time");
    println!("the frozen attempt ended as {record:?}");
    let of_task: Vec<&Attempt> = status
        .attempts
        .iter()
        .filter(|a| a.task == frozen.task)
        .collect();
    println!("every attempt of {:?}: {of_task:?}", frozen.task);
    let committed: Vec<&Attempt> = status
        .attempts
        .iter()
        .filter(|a| a.task == frozen.task && a.outcome == "Committed")
        .collect();
    assert_eq!(committed.len(), 1, "one commit for {:?}", frozen.task);

    let stem = frozen.task.attempt_stem(frozen.epoch);
    let leftovers = find_named(&c.root, &stem);
    assert!(
        leftovers.is_empty(),
        "files of the stale attempt {stem} remain: {leftovers:?}"
    );
    assert!(
        !out.join("_temporary").exists(),
        "output/_temporary remains"
    );
}

/// Speculation (`--speculate`): one of two one-slot workers is frozen
/// (SIGSTOP) in the middle of a map attempt, with a lease far longer than
/// the job. Once 6 of the 8 maps are committed and the frozen attempt is
/// older than 1.5 × their median (at least 1 s), it gets a backup on the
/// other worker, which commits; the frozen attempt is `Superseded`.
/// Resumed (SIGCONT) after that, its worker reports it and it is discarded
/// (I3: no file of it remains). The job ends with the reference output,
/// each task committed once (I2), well before the lease would have
/// expired; without the flag, `four_workers_run_exactly_eight_map_attempts`
/// sees no backup.
#[test]
fn a_frozen_worker_s_map_task_is_won_by_its_backup_with_speculate() {
    let _serial = serial();
    const LEASE: Duration = Duration::from_secs(60);
    let mut c = start(&["--lease", "60s", "--heartbeat", "500ms"]);
    c.add_workers(2, &["--slots", "1"]);
    let out = c.root.join("out");
    let mut params = sleep_params(1000);
    params.extend(["--split-size".into(), "1GiB".into(), "--speculate".into()]);
    let mut deploy = c.deploy(&guest("hostile"), &books(), &out, &strs(&params));
    let job = c.job_id(&mut deploy);

    let (frozen, frozen_name) = poll("a Running map attempt", Duration::from_secs(30), || {
        let status = c.status(Some(&job));
        let running = status
            .maps()
            .into_iter()
            .find(|a| a.outcome == "Running")?
            .clone();
        let name = status.worker_name(running.worker).to_string();
        Some((running, name))
    });
    let worker = c.worker_named(&frozen_name);
    worker.signal("STOP");
    let frozen_at = Instant::now();
    poll("the worker to be stopped", Duration::from_secs(5), || {
        (worker.state() == Some('T')).then_some(())
    });

    // The backup, on the other worker, commits while the worker is frozen.
    let backup = poll("a backup of the frozen task to commit", LEASE / 2, || {
        let status = c.status(Some(&job));
        status
            .attempts
            .iter()
            .find(|a| a.task == frozen.task && a.speculative && a.outcome == "Committed")
            .cloned()
    });
    let won_after = frozen_at.elapsed();
    assert_ne!(
        backup.worker, frozen.worker,
        "a backup never runs beside its original"
    );
    assert!(
        backup.epoch > frozen.epoch,
        "I1: {backup:?} after {frozen:?}"
    );
    let status = c.status(Some(&job));
    assert_eq!(
        status.attempt(frozen.task, frozen.epoch).outcome,
        "Superseded",
        "{}",
        status.summary()
    );
    println!("froze {frozen_name} in {frozen:?}; its backup won after {won_after:?}: {backup:?}");
    c.worker_named(&frozen_name).signal("CONT");

    c.deploy_finishes_ok(&mut deploy, JOB_LIMIT);
    let job_after = frozen_at.elapsed();
    assert_output_equals_reference(&out, "hostile", REDUCERS);
    assert!(
        job_after < LEASE,
        "the job took {job_after:?} after the freeze, not well within the {LEASE:?} lease"
    );
    println!("job done {job_after:?} after the freeze (lease {LEASE:?})");

    // The resumed worker reports the interrupted attempt: it stays
    // `Superseded` (with an end time) and its files are discarded.
    let status = poll(
        "the superseded attempt to be reported",
        Duration::from_secs(15),
        || {
            let status = c.status(Some(&job));
            let ended = status.attempt(frozen.task, frozen.epoch).ended_ms.is_some();
            let stem = frozen.task.attempt_stem(frozen.epoch);
            (ended && find_named(&c.root, &stem).is_empty()).then_some(status)
        },
    );
    let record = status.attempt(frozen.task, frozen.epoch);
    assert_eq!(record.outcome, "Superseded", "{record:?}");
    status.assert_one_commit_per_task(REDUCERS);
    let backups: Vec<&Attempt> = status.attempts.iter().filter(|a| a.speculative).collect();
    assert_eq!(backups.len(), 1, "one backup in all: {}", status.summary());
    assert!(
        !out.join("_temporary").exists(),
        "output/_temporary remains"
    );
}

// ---------------------------------------------------------------------------
// 7. Coordinator unreachable

/// The coordinator is frozen (SIGSTOP) for about 3 s in the middle of the
/// map phase; after SIGCONT the job completes with the reference output.
#[test]
fn job_survives_coordinator_frozen_for_three_seconds() {
    let _serial = serial();
    let mut c = start(&[]);
    c.add_workers(2, &["--slots", "1"]);
    let out = c.root.join("out");
    let mut deploy = c.deploy(
        &guest("hostile"),
        &books(),
        &out,
        &strs(&sleep_params(1000)),
    );
    let job = c.job_id(&mut deploy);
    poll("a committed map attempt", Duration::from_secs(30), || {
        let status = c.status(Some(&job));
        assert_eq!(status.phase, "Mapping", "the map phase ended too soon");
        status
            .maps()
            .iter()
            .any(|a| a.outcome == "Committed")
            .then_some(())
    });

    c.coordinator().signal("STOP");
    poll(
        "the coordinator to be stopped",
        Duration::from_secs(5),
        || (c.coordinator().state() == Some('T')).then_some(()),
    );
    let frozen_at = Instant::now();
    // The fault itself: the coordinator stays frozen for 3 s.
    while frozen_at.elapsed() < Duration::from_secs(3) {
        assert_eq!(
            c.coordinator().state(),
            Some('T'),
            "the coordinator woke up"
        );
        sleep_step();
    }
    c.coordinator().signal("CONT");

    let job_again = c.deploy_finishes_ok(&mut deploy, JOB_LIMIT);
    assert_eq!(job_again, job);
    assert_output_equals_reference(&out, "hostile", REDUCERS);
    assert_eq!(c.status(Some(&job)).phase, "Completed");
}

// ---------------------------------------------------------------------------
// 8. Bad peers

/// A client that expects another certificate is refused with a one-line
/// error naming the fingerprint; garbage datagrams do not disturb the
/// coordinator, which goes on serving status calls and running a job.
#[test]
fn wrong_fingerprint_is_refused_and_garbage_datagrams_are_ignored() {
    use rand::{RngCore, SeedableRng};
    let _serial = serial();
    let mut c = start(&[]);
    c.add_workers(2, &[]);

    // (a) The wrong fingerprint.
    let zeros = "0".repeat(64);
    let mut cmd = c.wmr();
    cmd.args([
        "status",
        "--coordinator",
        &c.addr,
        "--fingerprint",
        &zeros,
        "--json",
    ]);
    let refused = output_within(cmd, "wmr status with a wrong fingerprint", CLIENT_LIMIT);
    assert_eq!(
        refused.status.code(),
        Some(1),
        "exit status {}",
        refused.status
    );
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.starts_with("error: ") && stderr.ends_with('\n') && stderr.lines().count() == 1,
        "not a one-line error: {stderr:?}"
    );
    assert!(
        stderr.contains("fingerprint"),
        "the error does not mention the fingerprint: {stderr:?}"
    );
    assert!(
        refused.stdout.is_empty(),
        "stdout: {:?}",
        String::from_utf8_lossy(&refused.stdout)
    );

    // (b) Garbage datagrams: random bytes, empty, one byte, a QUIC long
    // header with an unknown version, a short header, a maximal datagram.
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let target: std::net::SocketAddr = c.addr.parse().unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(6_5840);
    let send_garbage = |rng: &mut rand::rngs::StdRng| {
        let mut datagrams: Vec<Vec<u8>> = vec![Vec::new(), vec![0xff]];
        let mut long = vec![0xc0, 0x0a, 0x0a, 0x0a, 0x0a, 8];
        long.resize(1200, 0);
        rng.fill_bytes(&mut long[6..]);
        datagrams.push(long);
        let mut short = vec![0x40; 64];
        rng.fill_bytes(&mut short[1..]);
        datagrams.push(short);
        for len in [1, 20, 1200, 1500, 65_000] {
            let mut random = vec![0; len];
            rng.fill_bytes(&mut random);
            datagrams.push(random);
        }
        for datagram in &datagrams {
            // A send may fail (e.g. too large); the coordinator must not care.
            let _ = socket.send_to(datagram, target);
        }
    };
    send_garbage(&mut rng);

    let out = c.root.join("out");
    let mut deploy = c.deploy(&guest("wordcount"), &books(), &out, &[]);
    let job = c.job_id(&mut deploy);
    send_garbage(&mut rng);
    let status = c.status(Some(&job));
    assert_eq!(status.job, job);
    send_garbage(&mut rng);
    c.deploy_finishes_ok(&mut deploy, JOB_LIMIT);
    assert_output_equals_reference(&out, "wordcount", REDUCERS);
    send_garbage(&mut rng);
    // Without JOBID: the most recent job.
    let status = c.status(None);
    assert_eq!(status.job, job);
    assert_eq!(status.phase, "Completed");
    assert!(c.coordinator().exited().is_none(), "the coordinator died");
}

/// Bad frames over a real QUIC connection (pinned TLS, the coordinator's
/// ALPN): malformed, wrong version, oversize, truncated. Each bad stream
/// is refused on its own: the same connection then serves a valid status
/// request, `wmr status` works, and the job running meanwhile completes.
#[test]
fn bad_frames_on_a_quic_connection_leave_the_coordinator_serving() {
    use wmr::transport::{Channel, MAX_FRAME_BYTES, PROTOCOL_VERSION, check_length, decode};
    use wmr::wire::{ClientReply, ClientRequest, Open};
    let _serial = serial();
    let mut c = start(&[]);
    c.add_workers(2, &["--slots", "1"]);
    let out = c.root.join("out");
    let mut deploy = c.deploy(&guest("hostile"), &books(), &out, &strs(&sleep_params(500)));
    let job = c.job_id(&mut deploy);
    assert_eq!(c.status(Some(&job)).phase, "Mapping");

    let version = PROTOCOL_VERSION.to_be_bytes();
    let frame = |len: u32, body: &[u8]| [&len.to_be_bytes()[..], body].concat();
    let bad_frames: Vec<(&str, Vec<u8>)> = vec![
        (
            "malformed",
            frame(16, &[&version[..], &[0xff; 14]].concat()),
        ),
        ("wrong version", frame(4, &[0x7f, 0x7f, 1, 2])),
        (
            "oversize",
            frame(
                MAX_FRAME_BYTES as u32 + 1,
                &[&version[..], &[0; 64]].concat(),
            ),
        ),
        ("u32::MAX length", frame(u32::MAX, &[0; 64])),
        ("no room for a version", frame(1, &[0])),
        (
            "truncated",
            frame(1000, &[&version[..], &[1, 2, 3]].concat()),
        ),
        ("random", (0..=255u8).cycle().take(3000).collect()),
    ];
    let addr: std::net::SocketAddr = c.addr.parse().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let reply = runtime.block_on(async {
        let session = async {
            let (_endpoint, connection) =
                wmr::transport::connect(addr, &c.fingerprint, Duration::from_secs(30))
                    .await
                    .expect("connecting with the right fingerprint");
            for (what, bytes) in &bad_frames {
                let (mut send, mut recv) = connection.open_bi().await.expect("opening a stream");
                // The coordinator may refuse the stream before reading it all.
                let _ = send.write_all(bytes).await;
                let _ = send.finish();
                // It resets or ends the stream, possibly after one error
                // reply; it must not leave the stream hanging.
                if let Ok(answer) = recv.read_to_end(1 << 20).await
                    && !answer.is_empty()
                {
                    let reply = answer
                        .split_first_chunk::<4>()
                        .filter(|(prefix, body)| {
                            check_length(**prefix).is_ok_and(|len| len == body.len())
                        })
                        .and_then(|(_, body)| decode::<ClientReply>(body).ok());
                    assert!(
                        matches!(reply, Some(ClientReply::Error(_))),
                        "{what}: the coordinator answered a bad frame with {answer:?}, not one error reply"
                    );
                }
                assert!(
                    connection.close_reason().is_none(),
                    "{what}: the coordinator closed the whole connection"
                );
            }
            let mut channel = Channel::open(&connection).await.expect("opening a stream");
            channel
                .write(&Open::Client {
                    tenant: wmr::model::TenantId::local(),
                    token: String::new(),
                    request: ClientRequest::Status(Some(job.clone())),
                })
                .await
                .expect("writing a status request");
            channel
                .expect::<ClientReply>()
                .await
                .expect("a reply on the same connection")
        };
        tokio::time::timeout(Duration::from_secs(30), session)
            .await
            .expect("the bad-frame session did not end within 30 s")
    });
    match reply {
        ClientReply::Status(report) => assert_eq!(report.job, job),
        other => panic!("status request after bad frames: {other:?}"),
    }
    drop(runtime);

    assert_eq!(c.status(Some(&job)).job, job);
    c.deploy_finishes_ok(&mut deploy, JOB_LIMIT);
    assert_output_equals_reference(&out, "hostile", REDUCERS);
    assert_eq!(c.status(Some(&job)).phase, "Completed");
    assert!(c.coordinator().exited().is_none(), "the coordinator died");
}

/// SIGTERM drains a worker: it takes nothing new, finishes and reports what
/// it runs (committed, not lost), then exits 0; the job completes elsewhere.
#[test]
fn sigterm_drains_a_worker_without_losing_its_attempt() {
    let _serial = serial();
    let mut c = start(&[]);
    let mut drainer = c.spawn_worker("drainer", &["--slots", "1"]);
    let out = c.root.join("out");
    let mut deploy = c.deploy(
        &guest("hostile"),
        &books(),
        &out,
        &strs(&sleep_params(1500)),
    );
    let job = c.job_id(&mut deploy);
    poll("an attempt running on the drainer", JOB_LIMIT, || {
        let status = c.status(Some(&job));
        status
            .attempts
            .iter()
            .any(|a| a.outcome == "Running")
            .then_some(())
    });
    drainer.signal("TERM");
    let exit = drainer.wait_within(Duration::from_secs(30));
    assert!(exit.success(), "drained worker exit: {exit}");
    let status = c.status(Some(&job));
    let mine: Vec<&Attempt> = status.attempts.iter().collect();
    assert!(!mine.is_empty());
    for a in &mine {
        assert_eq!(
            a.outcome, "Committed",
            "the drained worker's attempts: {mine:?}"
        );
    }
    c.add_workers(2, &["--slots", "1"]);
    c.deploy_finishes_ok(&mut deploy, JOB_LIMIT);
    assert_output_equals_reference(&out, "hostile", REDUCERS);
}

// ---------------------------------------------------------------------------
// Cancel

/// `wmr cancel` over QUIC ends attempts that are busy-looping in the guest
/// and attempts asleep in the host (WASI poll): two jobs, one of each, one
/// slot each on two workers; once both guests run, both jobs are cancelled
/// and each worker logs its attempt ended as cancelled. Issue 14 asks for
/// within 1 s; the bound here is 3 s for a loaded machine, and the figure
/// is printed. Both deploys end with `job cancelled` and publish nothing.
#[test]
fn cancel_ends_busy_and_sleeping_attempts_within_a_second() {
    let _serial = serial();
    let mut c = start(&[]);
    let hostile = guest("hostile");
    // The default fuel (5·10¹⁰, also the development mode's quota) keeps
    // a spinning guest busy for tens of seconds, as the default timeout does.
    let long = ["--timeout", "120s"];
    let (busy_out, nap_out) = (c.root.join("busy"), c.root.join("nap"));
    let busy_args = [&["--param", "mode=loop"][..], &long].concat();
    let mut busy = c.deploy(&hostile, &books(), &busy_out, &busy_args);
    let nap_args = [&["--param", "mode=nap", "--param", "ms=600000"][..], &long].concat();
    let mut nap = c.deploy(&hostile, &books(), &nap_out, &nap_args);
    let jobs = [c.job_id(&mut busy), c.job_id(&mut nap)];
    // Workers join once both jobs are queued: each job gets one slot (a
    // job alone would take both, and nothing is preempted).
    for name in ["w1", "w2"] {
        let mut cmd = c.worker_command(name);
        cmd.env("WMR_LOG", "info").args(["--slots", "1"]);
        let worker = c.spawn(&format!("worker-{name}"), cmd);
        c.workers.push(worker);
    }
    // Both guests run: each job has a running attempt, and each worker has
    // loaded the component (it logs the compile cache's hit or miss).
    c.poll("both jobs to run a guest", JOB_LIMIT, || {
        let running = jobs.iter().all(|j| {
            c.status(Some(j))
                .attempts
                .iter()
                .any(|a| a.outcome == "Running")
        });
        let loaded = c
            .workers
            .iter()
            .all(|w| w.stderr_text().contains("compile cache"));
        (running && loaded).then_some(())
    });
    let cancelled_at = Instant::now();
    for job in &jobs {
        c.client_ok(&["cancel", job]);
    }
    let mut ended = Vec::new();
    for w in 0..2 {
        let took = c.poll(
            "the attempt to end as cancelled",
            Duration::from_secs(10),
            || {
                let log = c.workers[w].stderr_text();
                log.lines()
                    .any(|l| l.contains("attempt failed") && l.contains("cancelled"))
                    .then(|| cancelled_at.elapsed())
            },
        );
        ended.push(took);
    }
    eprintln!("attempts ended {ended:?} after the cancel was sent");
    for took in &ended {
        assert!(
            *took < Duration::from_secs(3),
            "an attempt ended {took:?} after the cancel"
        );
    }
    for (deploy, out) in [(&mut busy, &busy_out), (&mut nap, &nap_out)] {
        let (status, stderr) = c.deploy_exit(deploy, JOB_LIMIT);
        assert_eq!(status.code(), Some(1), "{stderr}");
        assert_eq!(stderr.lines().last().unwrap(), "error: job cancelled");
        assert!(!out.join("_SUCCESS").exists(), "a cancelled job published");
    }
}

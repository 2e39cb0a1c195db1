//! Map outputs in an object store (`wmr coordinator --shuffle-store
//! s3://…`), on a real S3-protocol server (`s3s-fs`, tests/support/s3.rs)
//! on loopback: a QUIC cluster whose coordinator and workers each have a
//! private work dir and share only the network and a bucket.

mod support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};
use support::cluster::{Cluster, output_within, wmr_in};
use support::s3::S3Server;
use support::status::{Status, Task};
use support::*;

const BUCKET: &str = "shuffle";
const PREFIX: &str = "wmr";
const ROOT: &str = "s3://shuffle/wmr";
/// Bound on one deployed job.
const JOB_LIMIT: Duration = Duration::from_secs(150);

fn aws_env(server: &S3Server) -> Vec<(String, String)> {
    vec![
        ("AWS_ACCESS_KEY_ID".into(), support::s3::ACCESS_KEY.into()),
        (
            "AWS_SECRET_ACCESS_KEY".into(),
            support::s3::SECRET_KEY.into(),
        ),
        ("AWS_ENDPOINT_URL".into(), server.endpoint()),
        ("AWS_ALLOW_HTTP".into(), "true".into()),
        ("AWS_REGION".into(), "us-east-1".into()),
    ]
}

/// A coordinator with `--shuffle-store s3://shuffle/wmr` and `args`, its
/// processes (workers, deploys) given the server's credentials.
fn start(server: &S3Server, reducers: u64, args: &[&str], env: &[(&str, &str)]) -> Cluster {
    server.bucket(BUCKET);
    let mut vars = aws_env(server);
    vars.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    Cluster::options()
        .env(&vars)
        .args(&["--shuffle-store", ROOT])
        .args(args)
        .reducers(reducers)
        .bound(Duration::from_secs(240))
        .start()
}

fn status(c: &Cluster, job: &str) -> Status {
    Status::parse(&c.client_json(&["status", job, "--json"]))
}

/// Nothing of the job is left in the shuffle prefix, and no upload is open.
fn assert_shuffle_prefix_empty(server: &S3Server) {
    assert_eq!(
        server.keys(BUCKET, PREFIX),
        Vec::<String>::new(),
        "left in {ROOT}"
    );
    assert_eq!(server.open_uploads(), Vec::<String>::new());
}

/// I6 + I2 on an object store shuffle: word count over the books at a
/// 64 KiB split size (many map outputs, each read by every reducer with
/// ranged GETs) equals `wmr seq`; each task ran exactly once (nothing
/// failed), and the job's shuffle prefix is empty after it.
#[test]
fn word_count_with_an_object_store_shuffle_equals_the_sequential_reference() {
    let server = S3Server::start();
    let mut c = start(&server, 3, &[], &[]);
    c.add_workers(3, &["--slots", "2"]);
    let out = c.root.join("out");
    let mut deploy = c.deploy(
        &guest("wordcount"),
        &books(),
        &out,
        &["--split-size", "64KiB"],
    );
    let job = c.deploy_finishes_ok(&mut deploy, JOB_LIMIT);
    assert_output_equals_reference(&out, "wordcount", 3);
    let status = status(&c, &job);
    assert_eq!(status.phase, "Completed");
    let maps = status.maps().len();
    assert!(
        maps > 8,
        "a 64 KiB split size gives more than one map task a book: {maps}"
    );
    for a in &status.attempts {
        assert_eq!(a.outcome, "Committed", "{a:?}; {}", status.summary());
    }
    assert_eq!(status.attempts.len(), maps + 3, "{}", status.summary());
    let workers_used: std::collections::BTreeSet<u64> =
        status.maps().iter().map(|a| a.worker).collect();
    assert!(
        workers_used.len() > 1,
        "one worker ran every map: {}",
        status.summary()
    );
    assert_shuffle_prefix_empty(&server);
}

/// A committed map output in the object store outlives its worker (unlike
/// a worker-local one, I8): w1 commits map outputs, is SIGKILLed when the
/// reduce phase starts, and the job completes without running any map task
/// again — exactly 8 map attempts, all committed — while reduces started
/// after the kill read w1's outputs from the store. Output equals `wmr seq`
/// (I6); the shuffle prefix is empty after the job.
#[test]
fn a_killed_worker_s_committed_map_outputs_are_read_from_the_store_not_run_again() {
    const REDUCERS: u64 = 4;
    let server = S3Server::start();
    let mut c = start(
        &server,
        REDUCERS,
        &["--lease", "1s", "--heartbeat", "250ms"],
        &[],
    );
    c.add_workers(3, &["--slots", "1"]);
    let out = c.root.join("out");
    let mut deploy = c.deploy(&guest("hostile"), &books(), &out, &strs(&sleep_params(300)));
    let job = c.job_id(&mut deploy);
    c.watch_until(&job, "the reduce phase", JOB_LIMIT, |p| {
        p.phase == wmr::scheduler::Phase::Reducing
    });
    let victim = c
        .workers
        .iter()
        .position(|w| w.name == "worker-w1")
        .unwrap();
    c.workers[victim].kill_now();
    let killed_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;

    c.deploy_finishes_ok(&mut deploy, JOB_LIMIT);
    assert_output_equals_reference(&out, "hostile", REDUCERS);
    let status = status(&c, &job);
    assert_eq!(status.phase, "Completed");
    status.assert_one_commit_per_task(REDUCERS);
    let w1 = *status
        .workers
        .iter()
        .find(|(_, (name, _))| name == "w1")
        .map(|(id, _)| id)
        .expect("w1 in the status");
    // No map task ran again: one attempt each, committed, w1's among them.
    let maps = status.maps();
    assert_eq!(maps.len(), 8, "{}", status.summary());
    assert!(
        maps.iter()
            .all(|a| a.outcome == "Committed" && a.epoch == 1),
        "{}",
        status.summary()
    );
    let on_w1 = maps.iter().filter(|a| a.worker == w1).count();
    assert!(
        on_w1 > 0,
        "w1 committed no map output: {}",
        status.summary()
    );
    // Reduces: one commit each; at most the one w1 was running is lost.
    let reduces: Vec<_> = status
        .attempts
        .iter()
        .filter(|a| matches!(a.task, Task::Reduce(_)))
        .collect();
    let not_committed: Vec<_> = reduces
        .iter()
        .filter(|a| a.outcome != "Committed")
        .collect();
    assert!(
        not_committed.len() <= 1
            && not_committed
                .iter()
                .all(|a| a.worker == w1 && a.outcome == "Lost"),
        "{}",
        status.summary()
    );
    assert_eq!(reduces.len() as u64, REDUCERS + not_committed.len() as u64);
    // With 4 reducers on 3 one-slot workers, at least one reduce started
    // after the kill, so it read w1's outputs with w1 gone.
    let submitted = support::status::submitted_unix_ms(&c.client_json(&["jobs", "--json"]), &job);
    assert!(
        reduces
            .iter()
            .any(|a| a.outcome == "Committed" && submitted + a.started_ms > killed_ms),
        "every reduce started before w1 was killed (at {killed_ms}): {}",
        status.summary()
    );
    assert_shuffle_prefix_empty(&server);
}

/// I11 on an object store shuffle: the coordinator flips the last byte of
/// m-00000's first uploaded output when it commits it (fault injection);
/// the reducer's ranged read of it fails its block checksum, the reduce
/// reports `FetchFailed`, m-00000 runs again, and the output equals
/// `wmr seq`.
#[test]
fn a_flipped_byte_in_a_stored_map_output_reruns_its_map_task() {
    let server = S3Server::start();
    let mut c = start(
        &server,
        1,
        &[],
        &[("WMR_FAULT_CORRUPT_MAP_OUTPUT", "m-00000")],
    );
    c.add_workers(2, &[]);
    let out = c.root.join("out");
    let mut deploy = c.deploy(&guest("wordcount"), &books(), &out, &[]);
    let job = c.deploy_finishes_ok(&mut deploy, JOB_LIMIT);
    assert_output_equals_reference(&out, "wordcount", 1);
    let status = status(&c, &job);
    let map_0: Vec<(u64, &str)> = status
        .attempts
        .iter()
        .filter(|a| a.task == Task::Map(0))
        .map(|a| (a.epoch, a.outcome.as_str()))
        .collect();
    assert_eq!(
        map_0,
        [(1, "OutputLost"), (2, "Committed")],
        "{}",
        status.summary()
    );
    let failed: Vec<String> = status.raw["attempt_log"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["task"].get("Reduce").is_some())
        .filter_map(|r| r["outcome"].get("Failed").map(|f| f.to_string()))
        .collect();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert!(
        failed[0].contains("FetchFailed") && failed[0].contains("corrupt block: checksum mismatch"),
        "{}",
        failed[0]
    );
    assert_shuffle_prefix_empty(&server);
}

/// A `--shuffle-store` whose bucket does not exist stops the coordinator
/// at start-up with one line, before it listens.
#[test]
fn a_missing_shuffle_bucket_is_one_line_at_start_up() {
    let server = S3Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let mut cmd = wmr_in(tmp.path());
    server.env(&mut cmd);
    cmd.args(["coordinator", "--listen", "127.0.0.1:0", "--state"])
        .arg(tmp.path().join("state"))
        .args(["--shuffle-store", "s3://nobucket/wmr"]);
    let out = output_within(cmd, "wmr coordinator", Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "error: --shuffle-store s3://nobucket/wmr: bucket nobucket does not exist\n"
    );
    assert!(!tmp.path().join("state/coordinator.addr").exists());
}

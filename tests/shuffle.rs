//! The bounded shuffle end to end (issue 12): map output spilled past a
//! small `--sort-buffer` and merged, reduce inputs merged from more map
//! outputs than one merge holds, and checksums that turn a flipped byte in
//! a committed map output into a re-run of its map task.

mod support;

use std::time::Duration;
use support::cluster::{Cluster, output_within};
use support::*;

/// Every line of the books that holds a space, with its count: several
/// MiB of distinct keys, far more than a 64 KiB sort buffer.
const PATTERN: &str = "pattern= ";

fn grep_reference() -> Vec<String> {
    reference(&guest("grep"), &[&books()], &[PATTERN])
}

fn counter(summary: &serde_json::Value, name: &str) -> i64 {
    summary["counters"][name].as_i64().unwrap_or(0)
}

/// Invariant: spilling changes where pairs wait, never what the job
/// outputs. Splits of 24 KiB give more map outputs (over 128) than two
/// merges open, so the reducer first merges them in groups of 64; splits
/// of 256 KiB with a
/// 64 KiB sort buffer make every map attempt spill several times. With
/// either codec the output equals `wmr seq`, and the summary counts the
/// spills.
#[test]
fn a_partition_many_times_the_sort_buffer_equals_the_sequential_reference() {
    let expected = grep_reference();
    assert!(expected.len() > 50_000, "{} lines", expected.len());
    for (reducers, codec, split) in [("1", "lz4", "24KiB"), ("3", "none", "256KiB")] {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("out");
        let run = run_ok(&[
            "run",
            "--map",
            &path(&guest("grep")),
            "--input",
            &path(&books()),
            "--output",
            &path(&out),
            "--param",
            PATTERN,
            "--reducers",
            reducers,
            "--workers",
            "2",
            "--split-size",
            split,
            "--sort-buffer",
            "64KiB",
            "--shuffle-compression",
            codec,
            "--work-dir",
            &path(tmp.path()),
            "--json",
        ]);
        let summary = summary_json(&run);
        let maps = summary["attempt_log"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["task"].get("Map").is_some())
            .count();
        let spills = counter(&summary, "wmr.map.spills");
        if split == "24KiB" {
            assert!(
                maps > 128,
                "{maps} map tasks: fewer than three merge groups"
            );
        } else {
            assert!(
                spills >= 3 * maps as i64,
                "{spills} spills for {maps} map tasks"
            );
            assert!(counter(&summary, "wmr.map.spilled-pairs") > expected.len() as i64 / 2);
        }
        assert_eq!(sorted_output(&out), expected, "R={reducers} {codec}");
        // Nothing of the shuffle is left behind.
        let left: Vec<_> = walk(&tmp.path().join("wmr"));
        assert!(left.is_empty(), "left behind: {left:?}");
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return files;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

/// The reason of every failed attempt of `task` in the attempt log.
fn failures(summary: &serde_json::Value, task: &str) -> Vec<String> {
    summary["attempt_log"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["task"].get(task).is_some())
        .filter_map(|r| r["outcome"].get("Failed").map(|f| f.to_string()))
        .collect()
}

fn outcomes_of_map_0(summary: &serde_json::Value) -> Vec<(u64, String)> {
    summary["attempt_log"]
        .as_array()
        .unwrap()
        .iter()
        .map(support::status::Attempt::parse)
        .filter(|a| a.task == support::status::Task::Map(0))
        .map(|a| (a.epoch, a.outcome))
        .collect()
}

/// Invariant (integrity): a corrupt block is never read as data. The
/// first committed output of m-00000 gets its last byte flipped (fault
/// injection); the reducer reading it fails the fetch on the block's
/// checksum, m-00000 runs again, and the job's output equals `wmr seq`.
#[test]
fn a_flipped_byte_in_a_committed_map_output_reruns_its_map_task() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let mut cmd = wmr();
    cmd.env("WMR_FAULT_CORRUPT_MAP_OUTPUT", "m-00000").args([
        "run",
        "--map",
        &path(&guest("grep")),
        "--input",
        &path(&books()),
        "--output",
        &path(&out),
        "--param",
        PATTERN,
        "--reducers",
        "1",
        "--workers",
        "2",
        "--json",
    ]);
    let run = output_within(cmd, "wmr run", Duration::from_secs(120));
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let summary = summary_json(&run);
    assert_eq!(
        outcomes_of_map_0(&summary),
        [(1, "OutputLost".to_string()), (2, "Committed".to_string())]
    );
    let reduce_failures = failures(&summary, "Reduce");
    assert_eq!(reduce_failures.len(), 1, "{reduce_failures:?}");
    assert!(
        reduce_failures[0].contains("FetchFailed")
            && reduce_failures[0].contains("corrupt block: checksum mismatch"),
        "{}",
        reduce_failures[0]
    );
    assert_eq!(sorted_output(&out), grep_reference());
}

/// The same across machines: map outputs stay on the QUIC workers, every
/// worker flips the last byte of m-00000's first committed output, and the
/// reducer that fetched it over QUIC detects it, so m-00000 runs again.
#[test]
fn a_flipped_byte_on_a_worker_is_caught_after_the_fetch() {
    let mut c = Cluster::options()
        .reducers(1)
        .bound(Duration::from_secs(180))
        .start();
    for name in ["w1", "w2"] {
        let mut cmd = c.worker_command(name);
        cmd.env("WMR_FAULT_CORRUPT_MAP_OUTPUT", "m-00000");
        let worker = c.spawn(&format!("worker-{name}"), cmd);
        c.workers.push(worker);
    }
    let out = c.root.join("out");
    let mut deploy = c.deploy(&guest("grep"), &books(), &out, &["--param", PATTERN]);
    let job = c.job_id(&mut deploy);
    c.deploy_finishes_ok(&mut deploy, Duration::from_secs(150));
    let status = support::status::Status::parse(&c.client_json(&["status", &job, "--json"]));
    assert_eq!(status.phase, "Completed");
    let map_0: Vec<(u64, String)> = status
        .maps()
        .iter()
        .filter(|a| a.task == support::status::Task::Map(0))
        .map(|a| (a.epoch, a.outcome.clone()))
        .collect();
    assert_eq!(
        map_0,
        [(1, "OutputLost".to_string()), (2, "Committed".to_string())]
    );
    assert_eq!(sorted_output(&out), grep_reference());
}

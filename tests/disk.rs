//! Full disks (issue 14, item 3), on real tmpfs mounts (the tests run as
//! root, as CI does): a worker whose work dir fills up fails those
//! attempts as host failures — never dead letters — and the tasks run on
//! another worker; an output location that fills fails the job with one
//! line and publishes nothing.
//!
//! Every process a test starts is owned by a [`Proc`], whose `Drop` kills it
//! (SIGKILL), and every mount by a [`Tmpfs`], unmounted after the processes
//! are gone, even when a test panics. Every wait is a bounded poll.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use support::cluster::*;
use support::status::Status;
use support::*;

/// Bound on a whole job.
const JOB_LIMIT: Duration = Duration::from_secs(120);
/// Bound on one short client call.
const CLIENT_LIMIT: Duration = Duration::from_secs(30);

/// A tmpfs of a fixed size, unmounted on drop.
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Tmpfs {
        assert!(
            // SAFETY: geteuid has no preconditions.
            unsafe { libc::geteuid() } == 0,
            "the full-disk tests mount tmpfs and must run as root (CI does)"
        );
        std::fs::create_dir_all(path).unwrap();
        let status = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(path)
            .status()
            .expect("running mount");
        assert!(status.success(), "mount -t tmpfs {}", path.display());
        Tmpfs {
            path: path.to_path_buf(),
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: a process still holding a file there cannot keep it mounted.
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// A 64 KiB work dir holds about one map output of the books: worker
/// `small` runs out of space on its later map attempts. Those fail as host
/// failures naming the OS error (`No space left on device`), are retried on
/// worker `big`, and the job completes with the reference output, no dead
/// letters, every task committed once; what `small` committed is fetched
/// from it by the reducers.
#[test]
fn a_worker_whose_disk_fills_fails_those_attempts_and_the_job_completes() {
    let _serial = serial();
    let mut c = Cluster::options()
        .reducers(4)
        .client_limit(CLIENT_LIMIT)
        .start();
    let small_dir = c.root.join("small-work");
    let _tmpfs = Tmpfs::mount(&small_dir, "64k");
    let small = c.spawn_worker("small", &["--slots", "1", "--work-dir", &path(&small_dir)]);
    c.workers.push(small);
    let big = c.spawn_worker("big", &["--slots", "1"]);
    c.workers.push(big);
    let out = c.root.join("out");
    let mut deploy = c.deploy(
        &guest("wordcount"),
        &books(),
        &out,
        &["--max-attempts", "8"],
    );
    let job = c.deploy_finishes_ok(&mut deploy, JOB_LIMIT);
    assert_output_equals_reference(&out, "wordcount", 4);
    assert!(
        !out.join("_dead_letters.jsonl").exists(),
        "a full disk made dead letters"
    );

    let status = Status::parse(&c.client_json(&["status", &job, "--json"]));
    status.assert_one_commit_per_task(4);
    let failed_on_small: Vec<String> = status.raw["attempt_log"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| status.worker_name(a["worker"].as_u64().unwrap()) == "small")
        .filter_map(|a| a["outcome"].get("Failed"))
        .map(|f| f.to_string())
        .collect();
    assert!(
        !failed_on_small.is_empty(),
        "no attempt failed on the 64 KiB worker: {}",
        status.summary()
    );
    for failure in &failed_on_small {
        assert!(failure.contains("No space left on device"), "{failure}");
        assert!(
            failure.contains("\"Host\""),
            "not a host failure: {failure}"
        );
    }
    eprintln!("failures on the full worker: {failed_on_small:?}");
}

/// The job's output directory is a 16 KiB tmpfs (the word count of the
/// books writes ~230 KB): every reduce attempt runs out of space, the job
/// fails with one line naming the OS error, and nothing is published: no
/// `_SUCCESS`, no part file, no `_temporary`.
#[test]
fn an_output_location_that_fills_fails_the_job_and_publishes_nothing() {
    let _serial = serial();
    let mut c = Cluster::options()
        .args(&["--shared-store"])
        .reducers(2)
        .client_limit(CLIENT_LIMIT)
        .start();
    let out = c.root.join("out");
    let _tmpfs = Tmpfs::mount(&out, "16k");
    c.add_workers(2, &["--slots", "1"]);
    let mut deploy = c.deploy(
        &guest("wordcount"),
        &books(),
        &out,
        &["--max-attempts", "2"],
    );
    let (status, stderr) = c.deploy_exit(&mut deploy, JOB_LIMIT);
    assert_eq!(status.code(), Some(1), "{stderr}");
    let last = stderr.lines().last().unwrap();
    assert!(
        last.starts_with("error: job failed: task r-0000")
            && last.ends_with("No space left on device (os error 28)"),
        "{last}"
    );
    let left: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(left.is_empty(), "a failed job left {left:?} in its output");
}

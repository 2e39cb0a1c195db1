//! The on-disk compile cache through the `wmr` binary: a second run loads
//! the compiled component instead of compiling it, a damaged file is
//! replaced, concurrent writers leave a valid cache, `--no-cache` writes
//! nothing, and a directory others can write is not used.

mod support;

use serde_json::json;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Output;
use support::*;

/// A small job: word count over one short file.
struct Job {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    input: PathBuf,
    cache: PathBuf,
}

impl Job {
    fn new() -> Job {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        let input = root.join("in.txt");
        std::fs::write(&input, "the cat and the hat\nthe end\n").unwrap();
        Job {
            cache: root.join("cache"),
            _tmp: tmp,
            root,
            input,
        }
    }

    /// `wmr run` of the job into `out-NAME`, cache flags left to the caller.
    fn bare(&self, name: &str) -> std::process::Command {
        let mut cmd = wmr();
        cmd.args(["run", "--workers", "2", "--reducers", "2"])
            .arg("--map")
            .arg(guest("wordcount"))
            .arg("--input")
            .arg(&self.input)
            .arg("--output")
            .arg(self.root.join(format!("out-{name}")))
            .arg("--work-dir")
            .arg(self.root.join("work"));
        cmd
    }

    /// `wmr run --json` of the job into `out-NAME` with its own
    /// `--cache-dir` and `extra` flags; not yet run.
    fn command(&self, name: &str, extra: &[&str]) -> std::process::Command {
        let mut cmd = self.bare(name);
        cmd.arg("--json")
            .arg("--cache-dir")
            .arg(&self.cache)
            .args(extra);
        cmd
    }

    /// Run it, insist that it succeeds with the reference's output, and
    /// return its `compile_cache` summary field and stderr.
    fn run(&self, name: &str, extra: &[&str]) -> (serde_json::Value, String) {
        let out = self.command(name, extra).output().unwrap();
        self.check(name, &out)
    }

    fn check(&self, name: &str, out: &Output) -> (serde_json::Value, String) {
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{name}: {stderr}");
        assert_eq!(
            sorted_output(&self.root.join(format!("out-{name}"))),
            reference(&guest("wordcount"), &[&self.input], &[]),
            "{name}"
        );
        (summary_json(out)["compile_cache"].clone(), stderr)
    }

    fn compiled_dir(&self) -> PathBuf {
        self.cache.join("compiled")
    }

    /// The cache's files, by name.
    fn files(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.compiled_dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// The one compiled file (after a run), asserting it is the only file.
    fn the_file(&self) -> PathBuf {
        let files = self.files();
        assert_eq!(files.len(), 1, "{files:?}");
        assert!(files[0].ends_with(".cwasm"), "{files:?}");
        self.compiled_dir().join(&files[0])
    }

    fn report(&self, hits: u64, misses: u64, discarded: u64) -> serde_json::Value {
        json!({
            "dir": self.compiled_dir(),
            "hits": hits,
            "misses": misses,
            "discarded": discarded,
        })
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

#[test]
fn the_second_run_loads_the_compiled_component_instead_of_compiling_it() {
    let job = Job::new();
    let (first, _) = job.run("first", &["--cache-max-size", "1GiB"]);
    assert_eq!(first, job.report(0, 1, 0));
    assert_eq!(mode(&job.compiled_dir()), 0o700);
    let file = job.the_file();
    assert_eq!(mode(&file), 0o600);
    let name = file.file_name().unwrap().to_string_lossy().into_owned();
    let module = wmr::model::ModuleHash::of(&std::fs::read(guest("wordcount")).unwrap());
    assert!(name.starts_with(&format!("{}-", module.0)), "{name}");

    let out = job
        .command("second", &[])
        .env("WMR_LOG", "wmr::compile_cache=info")
        .output()
        .unwrap();
    let (second, stderr) = job.check("second", &out);
    assert_eq!(second, job.report(1, 0, 0));
    assert!(stderr.contains("compile cache hit"), "{stderr}");
    assert!(stderr.contains(&module.0), "{stderr}");
    assert!(!stderr.contains("compile cache miss"), "{stderr}");
    // The text summary says so too.
    let mut cmd = job.bare("text");
    cmd.arg("--cache-dir").arg(&job.cache);
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        stdout.contains(&format!(
            "  compile cache: 1 hits, 0 compiled, 0 discarded ({})\n",
            job.compiled_dir().display()
        )),
        "{stdout}"
    );
}

#[test]
fn a_damaged_cache_file_is_detected_replaced_and_the_job_still_right() {
    let job = Job::new();
    job.run("fill", &[]);
    let file = job.the_file();
    let good = std::fs::read(&file).unwrap();
    let flipped = {
        let mut bytes = good.clone();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x01;
        bytes
    };
    let truncated = good[..good.len() / 2].to_vec();
    let cases = [
        (
            "flipped",
            flipped,
            "the artifact's digest does not match".to_string(),
        ),
        (
            "truncated",
            truncated,
            "no wmr compile cache trailer".to_string(),
        ),
        ("empty", Vec::new(), "truncated (0 bytes)".to_string()),
    ];
    for (name, damaged, reason) in cases {
        std::fs::write(&file, damaged).unwrap();
        let (report, stderr) = job.run(name, &[]);
        assert_eq!(report, job.report(0, 1, 1), "{name}");
        assert!(
            stderr.contains(&format!(
                "compile cache: discarding {}: {reason}; compiling again",
                file.display()
            )),
            "{name}: {stderr}"
        );
        // Replaced by a good one: the next run loads it.
        assert_eq!(job.the_file(), file);
        let (report, _) = job.run(&format!("{name}-after"), &[]);
        assert_eq!(report, job.report(1, 0, 0), "{name}");
    }
}

#[test]
fn processes_populating_an_empty_cache_at_once_all_succeed_and_leave_it_valid() {
    let job = Job::new();
    let names = ["a", "b", "c", "d"];
    let children: Vec<_> = names
        .iter()
        .map(|name| {
            job.command(name, &[])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut misses = 0;
    for (name, child) in names.iter().zip(children) {
        let out = child.wait_with_output().unwrap();
        let (report, stderr) = job.check(name, &out);
        assert_eq!(report["discarded"], 0, "{name}: {stderr}");
        assert_eq!(
            report["hits"].as_u64().unwrap() + report["misses"].as_u64().unwrap(),
            1,
            "{name}"
        );
        misses += report["misses"].as_u64().unwrap();
        assert!(!stderr.contains("compile cache"), "{name}: {stderr}");
    }
    assert!(misses >= 1);
    // One whole file, no temporaries: the next run loads it.
    job.the_file();
    let (report, _) = job.run("after", &[]);
    assert_eq!(report, job.report(1, 0, 0));
}

#[test]
fn no_cache_neither_reads_nor_writes() {
    let job = Job::new();
    let (report, _) = job.run("off", &["--no-cache"]);
    assert_eq!(report, serde_json::Value::Null);
    assert!(!job.cache.exists(), "--no-cache created the cache");
    // With a full cache too: it compiles.
    job.run("fill", &[]);
    let out = job
        .command("off-again", &["--no-cache"])
        .env("WMR_LOG", "wmr::compile_cache=info")
        .output()
        .unwrap();
    let (report, stderr) = job.check("off-again", &out);
    assert_eq!(report, serde_json::Value::Null);
    assert!(!stderr.contains("compile cache"), "{stderr}");
}

#[test]
fn a_cache_directory_others_can_write_is_not_used() {
    let job = Job::new();
    std::fs::create_dir_all(job.compiled_dir()).unwrap();
    std::fs::set_permissions(job.compiled_dir(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let (report, stderr) = job.run("shared", &[]);
    assert_eq!(report, serde_json::Value::Null);
    assert!(
        stderr.contains(&format!(
            "compile cache not used: {}: writable by group or others (mode 777); compiling every component",
            job.compiled_dir().display()
        )),
        "{stderr}"
    );
    assert!(job.files().is_empty(), "{:?}", job.files());
}

#[test]
fn the_default_cache_is_under_xdg_cache_home() {
    let job = Job::new();
    let home = job.root.join("xdg");
    let mut cmd = job.bare("default");
    cmd.arg("--json").env("XDG_CACHE_HOME", &home);
    let out = cmd.output().unwrap();
    let (report, _) = job.check("default", &out);
    assert_eq!(report["dir"], json!(home.join("wmr/compiled")));
    assert_eq!(report["misses"], 1);
}

/// A worker keeps compiled code in `--cache-dir`/compiled (and the fetched
/// module in `--cache-dir`): a new worker process on the same cache runs
/// the job without compiling.
#[test]
fn a_new_worker_on_the_same_cache_does_not_compile() {
    use std::time::Duration;
    use support::cluster::Cluster;
    let _serial = serial();
    let mut c = Cluster::options().reducers(2).start();
    let input = c.root.join("in.txt");
    std::fs::write(&input, "the cat and the hat\nthe end\n").unwrap();
    let cache = c.root.join("worker-cache");
    let module = wmr::model::ModuleHash::of(&std::fs::read(guest("wordcount")).unwrap());
    let worker = |c: &Cluster, name: &str| {
        let mut cmd = c.worker_command(name);
        cmd.arg("--cache-dir")
            .arg(&cache)
            .env("WMR_LOG", "wmr::compile_cache=info");
        c.spawn(&format!("worker-{name}"), cmd)
    };
    let mut first = worker(&c, "first");
    let out = c.root.join("out-1");
    let mut deploy = c.deploy(&guest("wordcount"), &input, &out, &["--no-cache"]);
    c.deploy_finishes_ok(&mut deploy, Duration::from_secs(60));
    assert!(first.terminate(Duration::from_secs(30)).success());
    let log = first.stderr_text();
    assert!(log.contains("compile cache miss"), "{log}");
    assert!(log.contains(&module.0), "{log}");
    assert!(cache.join(format!("{}.wasm", module.0)).is_file());
    let compiled: Vec<_> = std::fs::read_dir(cache.join("compiled"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(compiled.len(), 1, "{compiled:?}");
    assert!(compiled[0].starts_with(&module.0), "{compiled:?}");

    let mut second = worker(&c, "second");
    let out = c.root.join("out-2");
    let mut deploy = c.deploy(&guest("wordcount"), &input, &out, &["--no-cache"]);
    c.deploy_finishes_ok(&mut deploy, Duration::from_secs(60));
    assert_eq!(
        sorted_output(&out),
        reference(&guest("wordcount"), &[&input], &[])
    );
    assert!(second.terminate(Duration::from_secs(30)).success());
    let log = second.stderr_text();
    assert!(log.contains("compile cache hit"), "{log}");
    assert!(!log.contains("compile cache miss"), "{log}");
}

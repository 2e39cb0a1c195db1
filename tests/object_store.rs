//! Inputs and outputs on an S3-compatible store: a real S3-protocol server
//! (`s3s-fs`, see tests/support/s3.rs) on loopback, reached by the real
//! `wmr` binary through object_store with SigV4. Objects are plain files
//! under the server's root, so outputs are checked by reading them there.

mod support;

use std::path::Path;
use std::process::Output;
use support::s3::{S3Server, SECRET_KEY};
use support::*;

/// `wmr ARGS` with the server's credentials and endpoint in `AWS_*`.
fn wmr_s3(server: &S3Server, args: &[&str]) -> Output {
    let mut cmd = wmr();
    server.env(&mut cmd);
    cmd.args(args).output().expect("running wmr")
}

fn wordcount_run(input: &str, output: &str) -> Vec<String> {
    let guest = path(&guest("wordcount"));
    let mut args: Vec<String> = vec!["run".into(), "--map".into(), guest];
    args.extend([
        "--input".into(),
        input.into(),
        "--output".into(),
        output.into(),
    ]);
    // Splits far smaller than a book: the ranges cut lines, and every
    // split must still end on a line boundary (as for files).
    args.extend(["--split-size", "48KiB", "--reducers", "3", "--workers", "2"].map(String::from));
    args
}

fn run_ok_s3(server: &S3Server, args: &[String]) -> Output {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = wmr_s3(server, &args);
    assert!(
        out.status.success(),
        "wmr {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_no_secret(&out);
    out
}

/// SECURITY: the secret key appears nowhere in what wmr printed.
fn assert_no_secret(out: &Output) {
    for text in [&out.stdout, &out.stderr] {
        assert!(
            !String::from_utf8_lossy(text).contains(SECRET_KEY),
            "the secret key was printed"
        );
    }
}

/// The `_SUCCESS` of an object store output lists each part and its size,
/// and they match what is there; nothing else is under the prefix.
fn assert_success_lists_parts(dir: &Path, reducers: usize) {
    let listing = std::fs::read_to_string(dir.join("_SUCCESS")).expect("_SUCCESS");
    let mut named = Vec::new();
    for line in listing.lines() {
        let (name, size) = line.split_once(' ').expect("NAME SIZE");
        let actual = std::fs::metadata(dir.join(name)).unwrap().len();
        assert_eq!(size.parse::<u64>().unwrap(), actual, "{name}: listed size");
        named.push(name.to_string());
    }
    let expected: Vec<String> = (0..reducers).map(|r| format!("part-r-{r:05}")).collect();
    assert_eq!(named, expected, "_SUCCESS lists every part, in order");
    // Objects are the files below the prefix (s3s-fs leaves the empty
    // directories of deleted keys, which no listing shows).
    let mut held = files_below(dir);
    held.sort();
    let mut want = expected.clone();
    want.push("_SUCCESS".into());
    want.sort();
    assert_eq!(held, want, "only the parts and _SUCCESS (no _temporary)");
}

/// Invariant I2 on a store without rename: `wmr run` S3 → S3 over the
/// books equals `wmr seq` on the local files; `_SUCCESS` lists the parts;
/// no multipart upload is left open.
#[test]
fn s3_input_to_s3_output_equals_the_sequential_reference() {
    let server = S3Server::start();
    server.seed("books", "in", &books());
    run_ok_s3(&server, &wordcount_run("s3://books/in", "s3://books/out"));
    let out = server.root.join("books/out");
    assert_output_equals_reference(&out, "wordcount", 3);
    assert_success_lists_parts(&out, 3);
    assert_eq!(server.open_uploads(), Vec::<String>::new());
}

/// Local files in, S3 out; and S3 in (by glob), local out.
#[test]
fn local_to_s3_and_s3_to_local_equal_the_sequential_reference() {
    let server = S3Server::start();
    server.bucket("results");
    run_ok_s3(
        &server,
        &wordcount_run(&path(&books()), "s3://results/wc/run1"),
    );
    let out = server.root.join("results/wc/run1");
    assert_output_equals_reference(&out, "wordcount", 3);
    assert_success_lists_parts(&out, 3);

    server.seed("books", "texts", &books());
    let local = tempfile::tempdir().unwrap();
    let local_out = local.path().join("out");
    run_ok_s3(
        &server,
        &wordcount_run("s3://books/texts/pg-*.txt", &path(&local_out)),
    );
    assert_output_equals_reference(&local_out, "wordcount", 3);
    assert_eq!(server.open_uploads(), Vec::<String>::new());
}

/// Run a word count that must fail; its stderr, which must be exactly one
/// line, and nothing may be under `s3://books/out`.
fn refused(server: &S3Server, input: &str, output: &str, env: &[(&str, &str)]) -> String {
    let args = wordcount_run(input, output);
    let mut cmd = wmr();
    server.env(&mut cmd);
    for (name, value) in env {
        cmd.env(name, value);
    }
    let started = std::time::Instant::now();
    let out = cmd.args(&args).output().expect("running wmr");
    assert!(!out.status.success(), "wmr {args:?} unexpectedly succeeded");
    assert_eq!(out.status.code(), Some(1));
    // Bounded retries: an unreachable store fails in seconds.
    assert!(started.elapsed() < std::time::Duration::from_secs(60));
    assert_no_secret(&out);
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    stderr
}

/// Each bad input gets its one line and nothing is left in the output
/// prefix (I7: a job that does not run publishes nothing).
#[test]
fn bad_object_store_locations_get_one_clear_line_and_leave_nothing() {
    let server = S3Server::start();
    server.seed("books", "in", &books());
    server.seed("books", "taken", &books());
    std::fs::create_dir_all(server.root.join("books/empty")).unwrap();
    let nothing_in_out = || assert_eq!(server.keys("books", "out"), Vec::<String>::new());

    let e = refused(&server, "s3://nobucket/in", "s3://books/out", &[]);
    assert_eq!(
        e,
        "error: input s3://nobucket/in: bucket nobucket does not exist\n"
    );
    nothing_in_out();

    let e = refused(&server, "s3://books/in", "s3://nobucket/out", &[]);
    assert_eq!(
        e,
        "error: output s3://nobucket/out: bucket nobucket does not exist\n"
    );
    assert!(!server.root.join("nobucket").exists());

    let wrong = [("AWS_SECRET_ACCESS_KEY", "not-the-secret")];
    let e = refused(&server, "s3://books/in", "s3://books/out", &wrong);
    assert_eq!(
        e,
        "error: input s3://books/in: access denied (check AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN)\n"
    );
    nothing_in_out();

    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let endpoint = format!("http://127.0.0.1:{port}");
    let e = refused(
        &server,
        "s3://books/in",
        "s3://books/out",
        &[("AWS_ENDPOINT_URL", &endpoint)],
    );
    assert_eq!(
        e,
        format!(
            "error: input s3://books/in: cannot reach the object store at {endpoint} (4 tries with backoff)\n"
        )
    );
    nothing_in_out();

    let e = refused(&server, "s3://books/empty", "s3://books/out", &[]);
    assert_eq!(
        e,
        "error: input s3://books/empty: no objects under this prefix\n"
    );
    nothing_in_out();

    let before = server.keys("books", "taken");
    let e = refused(&server, "s3://books/in", "s3://books/taken", &[]);
    assert_eq!(
        e,
        "error: output s3://books/taken already holds pg-being_ernest.txt: choose an empty or new prefix\n"
    );
    assert_eq!(
        server.keys("books", "taken"),
        before,
        "the held objects are untouched"
    );
    nothing_in_out();
    assert_eq!(server.open_uploads(), Vec::<String>::new());
}

/// The server's `AWS_*` settings as name/value pairs.
fn aws_env(server: &S3Server) -> Vec<(String, String)> {
    vec![
        ("AWS_ACCESS_KEY_ID".into(), support::s3::ACCESS_KEY.into()),
        ("AWS_SECRET_ACCESS_KEY".into(), SECRET_KEY.into()),
        ("AWS_ENDPOINT_URL".into(), server.endpoint()),
        ("AWS_ALLOW_HTTP".into(), "true".into()),
        ("AWS_REGION".into(), "us-east-1".into()),
    ]
}

/// The paths of the files below `dir`, relative to it.
fn files_below(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(at) = stack.pop() {
        for entry in std::fs::read_dir(&at).into_iter().flatten() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let relative = path.strip_prefix(dir).unwrap();
                found.push(relative.to_string_lossy().into_owned());
            }
        }
    }
    found
}

/// Every file below `dir` whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(bytes) = std::fs::read(&path)
                && bytes.windows(needle.len()).any(|w| w == needle.as_bytes())
            {
                found.push(path.display().to_string());
            }
        }
    }
    found
}

/// SECURITY (tenant confinement): over QUIC, a tenant confined to
/// `s3://data/alice/` cannot read or write `s3://data/bob/`; inside its
/// prefix a job runs S3 → S3 on workers that share no directory with the
/// coordinator and equals the reference (I6). The secret is in no log,
/// no `wmr status` and no state file.
#[test]
fn a_tenant_confined_to_its_prefix_cannot_read_or_write_anothers() {
    use std::time::Duration;
    use support::cluster::Cluster;
    let server = S3Server::start();
    server.seed("data", "alice/books", &books());
    server.seed("data", "bob/books", &books());
    let env = aws_env(&server);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut c = Cluster::options()
        .env(&env)
        .tenants(&["alice", "bob"])
        .tenant_root("alice", "s3://data/alice/")
        .tenant_root("bob", "s3://data/bob/")
        .reducers(2)
        .bound(Duration::from_secs(300))
        .start();
    c.add_workers(2, &[]);
    let alice = c.tenants[0].clone();
    let wordcount = guest("wordcount");
    let refused = |c: &mut Cluster, input: &str, output: &str| {
        let mut deploy = c.deploy_as(&alice, &wordcount, Path::new(input), Path::new(output), &[]);
        let (status, stderr) = c.deploy_exit(&mut deploy, Duration::from_secs(30));
        assert_eq!(status.code(), Some(1), "not refused: {stderr}");
        stderr
    };
    let bob_before = server.keys("data", "bob");
    assert_eq!(
        refused(&mut c, "s3://data/bob/books", "s3://data/alice/out"),
        "error: path s3://data/bob/books is outside the tenant's root\n"
    );
    assert_eq!(
        refused(&mut c, "s3://data/alice/books", "s3://data/bob/out"),
        "error: path s3://data/bob/out is outside the tenant's root\n"
    );
    assert_eq!(
        refused(&mut c, "s3://data/alicex/books", "s3://data/alice/out"),
        "error: path s3://data/alicex/books is outside the tenant's root\n"
    );
    assert_eq!(
        server.keys("data", "bob"),
        bob_before,
        "bob's prefix untouched"
    );
    assert_eq!(server.keys("data", "alice/out"), Vec::<String>::new());

    let mut deploy = c.deploy_as(
        &alice,
        &wordcount,
        Path::new("s3://data/alice/books"),
        Path::new("s3://data/alice/out"),
        &[],
    );
    let job = c.deploy_finishes_ok(&mut deploy, Duration::from_secs(240));
    let out = server.root.join("data/alice/out");
    assert_output_equals_reference(&out, "wordcount", 2);
    assert_success_lists_parts(&out, 2);
    assert_eq!(server.open_uploads(), Vec::<String>::new());

    let status = c.run_as(&alice.name, &alice.token, &["status", &job, "--json"]);
    assert!(status.status.success());
    assert!(!String::from_utf8_lossy(&status.stdout).contains(SECRET_KEY));
    assert_eq!(files_containing(&c.root, SECRET_KEY), Vec::<String>::new());
}

/// A worker of a cluster that shares nothing with the others but the
/// network and the bucket: its own `--work-dir`, module and compile cache
/// and TMPDIR under `ROOT/machines/NAME`, one slot, and
/// `WMR_FAULT_HOLD_UPLOAD=hold` if given (see `object_commit.rs`).
fn private_worker(
    c: &support::cluster::Cluster,
    name: &str,
    hold: Option<&str>,
) -> support::cluster::Proc {
    let home = c.root.join("machines").join(name);
    for dir in ["work", "cache", "tmp"] {
        std::fs::create_dir_all(home.join(dir)).unwrap();
    }
    let mut cmd = c.worker_command(name);
    cmd.args(["--slots", "1", "--work-dir"])
        .arg(home.join("work"))
        .arg("--cache-dir")
        .arg(home.join("cache"))
        .env("TMPDIR", home.join("tmp"))
        .env("XDG_CACHE_HOME", home.join("cache"));
    if let Some(hold) = hold {
        cmd.env("WMR_FAULT_HOLD_UPLOAD", hold);
    }
    c.spawn(&format!("worker-{name}"), cmd)
}

/// Commit protocol on a store without rename: a coordinator that dies
/// between the job commit's clean-up (the upload manifests deleted) and
/// `_SUCCESS` lists every part after its restart, from the listing it kept
/// before the clean-up. It used to find no manifests and write an empty
/// `_SUCCESS` over complete parts.
#[test]
fn a_coordinator_dying_before_success_lists_every_part_after_its_restart() {
    use std::time::Duration;
    use support::cluster::Cluster;
    const REDUCERS: u64 = 3;
    let server = S3Server::start();
    server.seed("books", "in", &books());
    let once = tempfile::tempdir().unwrap();
    let marker = once.path().join("die-once");
    std::fs::write(&marker, "").unwrap();
    let mut env = aws_env(&server);
    env.push((
        "WMR_FAULT_DIE_BEFORE_SUCCESS".into(),
        marker.to_string_lossy().into_owned(),
    ));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut c = Cluster::options()
        .env(&env)
        .reducers(REDUCERS)
        .bound(Duration::from_secs(300))
        .start();
    c.add_workers(2, &[]);
    let out = server.root.join("books/out");
    let mut deploy = c.deploy(
        &guest("wordcount"),
        Path::new("s3://books/in"),
        Path::new("s3://books/out"),
        &["--split-size", "256KiB"],
    );
    let status = c.coordinator_exited(Duration::from_secs(180));
    assert!(!status.success(), "the coordinator should have aborted");
    assert!(!marker.exists());
    assert!(!out.join("_SUCCESS").exists());
    // The clean-up ran: of the job's temporary objects only the kept
    // listing is left, and it names every part.
    let temporary = files_below(&out.join("_temporary"));
    assert_eq!(temporary.len(), 1, "{temporary:?}");
    assert!(temporary[0].ends_with("/_success_listing"), "{temporary:?}");
    c.start_coordinator();
    // The kept listing goes right after `_SUCCESS`.
    c.poll(
        "_SUCCESS after the restart",
        Duration::from_secs(120),
        || {
            (out.join("_SUCCESS").exists() && files_below(&out.join("_temporary")).is_empty())
                .then_some(())
        },
    );
    assert_success_lists_parts(&out, REDUCERS as usize);
    let expected = reference(&guest("wordcount"), &[&books()], &[]);
    assert_eq!(sorted_output(&out), expected);
    deploy.kill_now();
}

/// The objects a reader listing `dir` sees (files below it, `_temporary/`
/// left out), with their sizes.
fn visible_objects(dir: &Path) -> std::collections::BTreeMap<String, u64> {
    files_below(dir)
        .into_iter()
        .filter(|name| !name.starts_with("_temporary/"))
        .map(|name| {
            let size = std::fs::metadata(dir.join(&name)).map_or(u64::MAX, |m| m.len());
            (name, size)
        })
        .collect()
}

/// What `_SUCCESS` says the output is: each part and its size, and
/// `_SUCCESS` itself.
fn listed_by_success(dir: &Path) -> std::collections::BTreeMap<String, u64> {
    let success = dir.join("_SUCCESS");
    let listing = std::fs::read_to_string(&success).expect("_SUCCESS");
    let mut listed: std::collections::BTreeMap<String, u64> = listing
        .lines()
        .map(|line| {
            let (name, size) = line.split_once(' ').expect("NAME SIZE");
            (name.to_string(), size.parse().expect("a size"))
        })
        .collect();
    listed.insert("_SUCCESS".into(), listing.len() as u64);
    listed
}

/// I14 (no upload outlives its job), I2 and I3 on an object store, over
/// QUIC, on a cluster whose processes share no directory (each worker its
/// own work dir, caches and TMPDIR; the coordinator its state dir): word
/// count S3 → S3 over the books in many splits and 4 reducers while
/// - w1 is SIGKILLed in the middle of a reduce upload (created, one part
///   up, its manifest not complete: `WMR_FAULT_HOLD_UPLOAD=part`), and
/// - w2 is SIGSTOPped just before it creates its reduce upload
///   (`WMR_FAULT_HOLD_UPLOAD=create`), kept stopped past its lease until the
///   job has written `_SUCCESS`, then resumed: its late attempt starts its
///   upload after the job's clean-up, finds the job closed and aborts it.
///
/// The output equals `wmr seq` byte for byte, `_SUCCESS` lists exactly the
/// parts with their sizes, a reader polling the prefix from `_SUCCESS` on
/// (through the resumed worker's late attempt and its drain) never sees
/// anything else, each reduce task commits once at a higher epoch than
/// the killed and the frozen attempts, and in the end no multipart upload
/// is open and nothing is left under `_temporary/`.
#[test]
fn a_cluster_sharing_only_a_bucket_survives_a_kill_mid_upload_and_a_frozen_worker() {
    use std::time::Duration;
    use support::cluster::Cluster;
    use support::status::{Status, Task};
    const REDUCERS: u64 = 4;
    let server = S3Server::start();
    server.seed("books", "in", &books());
    let env = aws_env(&server);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut c = Cluster::options()
        .env(&env)
        .args(&["--lease", "2s", "--heartbeat", "500ms"])
        .reducers(REDUCERS)
        .bound(Duration::from_secs(300))
        .start();
    let w1 = private_worker(&c, "w1", Some("part"));
    let w2 = private_worker(&c, "w2", Some("create"));
    let w3 = private_worker(&c, "w3", None);
    c.workers.extend([w1, w2, w3]);
    let out = server.root.join("books/out");
    let mut deploy = c.deploy(
        &guest("wordcount"),
        Path::new("s3://books/in"),
        Path::new("s3://books/out"),
        &["--split-size", "64KiB"],
    );
    let job = c.job_id(&mut deploy);
    let status = |c: &Cluster| Status::parse(&c.client_json(&["status", &job, "--json"]));
    // The reduce attempt a worker runs (it has one slot).
    let running_reduce = |c: &Cluster, name: &str| {
        let status = status(c);
        status
            .attempts
            .iter()
            .find(|a| {
                matches!(a.task, Task::Reduce(_))
                    && a.outcome == "Running"
                    && status.worker_name(a.worker) == name
            })
            .cloned()
    };
    let holding = |c: &Cluster, name: &str| {
        c.worker_named(name)
            .stderr_text()
            .contains("fault injected: the upload holds")
    };

    // w1 holds in the middle of its upload: the manifest names an upload
    // with one part, not complete, and the server has it open.
    let killed = c.poll(
        "w1 to hold its reduce upload mid-way",
        Duration::from_secs(120),
        || {
            holding(&c, "w1")
                .then(|| running_reduce(&c, "w1"))
                .flatten()
        },
    );
    let manifest_name = format!("{}.pending", killed.task.attempt_stem(killed.epoch));
    let manifest = files_below(&out.join("_temporary"))
        .into_iter()
        .find(|f| f.ends_with(&format!("/{manifest_name}")))
        .unwrap_or_else(|| panic!("no manifest {manifest_name} of w1's attempt"));
    let pending: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("_temporary").join(&manifest)).unwrap())
            .unwrap();
    assert_eq!(pending["complete"], false, "{pending}");
    let upload = pending["upload"].as_str().unwrap().to_string();
    let open = server.open_uploads();
    for held in [
        format!(".upload-{upload}.json"),
        format!(".upload_id-{upload}.part-1"),
    ] {
        assert!(open.contains(&held), "w1's open upload {held}: {open:?}");
    }
    c.workers[0].kill_now();

    // w2 holds just before creating its upload: frozen there.
    let frozen = c.poll(
        "w2 to hold before its reduce upload",
        Duration::from_secs(120),
        || {
            holding(&c, "w2")
                .then(|| running_reduce(&c, "w2"))
                .flatten()
        },
    );
    c.workers[1].signal("STOP");
    c.poll("w2 to be stopped", Duration::from_secs(5), || {
        (c.workers[1].state() == Some('T')).then_some(())
    });

    // The job completes on w3; from `_SUCCESS` on, a reader sees exactly
    // what it lists.
    c.poll("_SUCCESS", Duration::from_secs(240), || {
        assert!(deploy.exited().is_none() || out.join("_SUCCESS").exists());
        out.join("_SUCCESS").exists().then_some(())
    });
    let listed = listed_by_success(&out);
    let parts: Vec<String> = (0..REDUCERS).map(|r| format!("part-r-{r:05}")).collect();
    let mut expected: Vec<String> = parts.clone();
    expected.push("_SUCCESS".into());
    expected.sort();
    assert_eq!(listed.keys().cloned().collect::<Vec<_>>(), expected);
    let reader_sees_the_listing = || {
        assert_eq!(visible_objects(&out), listed, "the prefix after _SUCCESS");
    };
    reader_sees_the_listing();
    c.deploy_finishes_ok(&mut deploy, Duration::from_secs(60));
    reader_sees_the_listing();
    assert_output_equals_reference(&out, "wordcount", REDUCERS);

    // w2 resumes after its lease and the job's clean-up: its late attempt
    // creates an upload, finds the job closed, aborts it (I14).
    c.workers[1].signal("CONT");
    c.poll(
        "w2's late attempt to abort its upload",
        Duration::from_secs(60),
        || {
            reader_sees_the_listing();
            c.worker_named("w2")
                .stderr_text()
                .contains("this late attempt aborts its upload")
                .then_some(())
        },
    );
    // Drained, w2 has delivered its report and had it acknowledged.
    let status_w2 = c.workers[1].terminate(Duration::from_secs(60));
    assert!(status_w2.success(), "w2 after draining: {status_w2}");
    reader_sees_the_listing();
    assert_output_equals_reference(&out, "wordcount", REDUCERS);
    assert_success_lists_parts(&out, REDUCERS as usize);
    assert_eq!(server.open_uploads(), Vec::<String>::new(), "open uploads");
    assert_eq!(
        files_below(&out.join("_temporary")),
        Vec::<String>::new(),
        "left under _temporary/"
    );

    // One commit per reduce task; the killed and the frozen attempts'
    // tasks committed at a higher epoch, on w3 (I1, I2, I3).
    let status = status(&c);
    assert_eq!(status.phase, "Completed");
    for r in 0..REDUCERS {
        let commits: Vec<_> = status
            .committed()
            .into_iter()
            .filter(|a| a.task == Task::Reduce(r))
            .collect();
        assert_eq!(commits.len(), 1, "commits of r{r}: {}", status.summary());
    }
    for (name, stale) in [("w1", &killed), ("w2", &frozen)] {
        let record = status.attempt(stale.task, stale.epoch);
        assert_ne!(record.outcome, "Committed", "{name}'s attempt {record:?}");
        assert!(record.ended_ms.is_some(), "{name}'s attempt {record:?}");
        let committed = status
            .committed()
            .into_iter()
            .find(|a| a.task == stale.task)
            .cloned()
            .unwrap();
        assert!(
            committed.epoch > stale.epoch,
            "{committed:?} after {stale:?}"
        );
        assert_eq!(status.worker_name(committed.worker), "w3");
    }
    // Nothing of the workers in the coordinator's or the clients' TMPDIR.
    let shared_tmp: Vec<_> = std::fs::read_dir(c.root.join("tmp"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("wmr-worker"))
        .collect();
    assert_eq!(shared_tmp, Vec::<String>::new());
}

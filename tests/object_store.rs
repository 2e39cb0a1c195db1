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

//! Integration tests of tenancy over real processes: a coordinator with a
//! `tenants.toml`, workers holding the worker token, and clients acting as
//! tenants `alice` and `bob`. Checks fair share by weight, isolation of jobs,
//! confinement of paths to a tenant's root, worker authentication and quotas.
//!
//! Every process a test starts is owned by a [`Proc`], whose `Drop` kills it
//! (SIGKILL), so nothing outlives a test, even one that panics. Every wait is
//! a bounded poll. The tests run one at a time.

mod support;

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;
use support::cluster::*;
use support::status::{Status, submitted_unix_ms};
use support::*;

/// Bound on a whole job.
const JOB_LIMIT: Duration = Duration::from_secs(120);
/// Bound on one short client call.
const CLIENT_LIMIT: Duration = Duration::from_secs(30);
/// The one-line refusal of an unknown tenant or a wrong token.
const REFUSED: &str = "error: unknown tenant or wrong token";

/// Tenants `names` of weight 1, each with a copy of the books in its root,
/// and a coordinator with a shared store, for jobs of 4 reducers.
fn start(names: &[&str]) -> (Cluster, Vec<Tenant>) {
    start_with(names, &[])
}

/// As [`start`], with `tenant_args` added to every `wmr tenant add`.
fn start_with(names: &[&str], tenant_args: &[&str]) -> (Cluster, Vec<Tenant>) {
    let c = Cluster::options()
        .tenants(names)
        .tenant_args(tenant_args)
        .tenant_books()
        .shared_store()
        .reducers(4)
        .client_limit(CLIENT_LIMIT)
        .start();
    let tenants = c.tenants.clone();
    (c, tenants)
}

impl Cluster {
    /// Run a client command that must fail with exit 1; its stderr, trimmed.
    fn refused(&self, tenant: &str, token: &str, args: &[&str]) -> String {
        let out = self.run_as(tenant, token, args);
        assert_eq!(
            out.status.code(),
            Some(1),
            "wmr {args:?} as {tenant}: expected exit 1; stdout {} stderr {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stderr).unwrap().trim().to_string()
    }

    /// A deploy that must be refused: exit 1 and its one stderr line.
    fn deploy_refused(&mut self, tenant: &Tenant, input: &Path, extra: &[&str]) -> String {
        let out = tenant.root.join(format!("refused-{}", self.spawned));
        let mut deploy = self.deploy_as(tenant, &guest("wordcount"), input, &out, extra);
        let status = deploy.wait_within(CLIENT_LIMIT);
        let stderr = deploy.stderr_text();
        assert_eq!(status.code(), Some(1), "deploy not refused: {stderr}");
        assert!(!out.join("_SUCCESS").exists(), "a refused job committed");
        stderr.trim().to_string()
    }
}

// ---------------------------------------------------------------------------
// 1. Fair share

/// Absolute [start, end] (unix ms) of every finished attempt of a job.
fn attempt_intervals(status: &Value, submitted_unix_ms: u64) -> Vec<(u64, u64)> {
    Status::parse(status)
        .attempts
        .iter()
        .map(|a| {
            let end = a.ended_ms.expect("ended_ms of a finished job");
            (submitted_unix_ms + a.started_ms, submitted_unix_ms + end)
        })
        .collect()
}

/// Two tenants of weight 1 submit ~30 sleeping map tasks each at the same
/// time on two 1-slot workers: while both jobs run, each tenant must get
/// 50% ± 15% of the attempt-slot time (SECURITY.md, "Fair share").
#[test]
fn two_tenants_of_equal_weight_share_the_slots_equally() {
    let _serial = serial();
    let (mut c, tenants) = start(&["alice", "bob"]);
    c.add_workers(2, &["--slots", "1"]);
    let hostile = guest("hostile");
    let extra = [
        "--param",
        "mode=sleep",
        "--param",
        "ms=400",
        "--grant",
        "clock",
        "--split-size",
        "128KiB",
    ];
    let outs: Vec<PathBuf> = tenants.iter().map(|t| t.root.join("out")).collect();
    let mut deploys: Vec<Proc> = tenants
        .iter()
        .zip(&outs)
        .map(|(t, out)| {
            let books = t.books();
            c.deploy_as(t, &hostile, &books, out, &extra)
        })
        .collect();
    let jobs: Vec<String> = deploys
        .iter_mut()
        .map(|d| c.deploy_finishes_ok(d, JOB_LIMIT))
        .collect();

    let expected = reference(&hostile, &[&books()], &[]);
    assert!(expected.len() > 1000, "the reference is not trivial");
    for out in &outs {
        assert!(
            sorted_output(out) == expected,
            "{}: not the reference",
            out.display()
        );
    }

    let mut intervals = Vec::new();
    for (t, job) in tenants.iter().zip(&jobs) {
        let listing = c.json(t, &["jobs", "--json"]);
        let submitted = submitted_unix_ms(&listing, job);
        let status = c.json(t, &["status", job, "--json"]);
        let attempts = attempt_intervals(&status, submitted);
        assert!(attempts.len() >= 20, "{job}: {} attempts", attempts.len());
        intervals.push((submitted, attempts));
    }
    for ((submitted, attempts), job) in intervals.iter().zip(&jobs) {
        let first = attempts.iter().map(|&(s, _)| s).min().unwrap();
        let last = attempts.iter().map(|&(_, e)| e).max().unwrap();
        eprintln!(
            "job {job}: submitted {submitted}, {} attempts from +{} ms to +{} ms",
            attempts.len(),
            first - submitted,
            last - submitted
        );
    }
    // The window both jobs were running: from the later submission to the
    // earlier last attempt end.
    let start = intervals.iter().map(|(s, _)| *s).max().unwrap();
    let end = intervals
        .iter()
        .map(|(_, a)| a.iter().map(|&(_, e)| e).max().unwrap())
        .min()
        .unwrap();
    assert!(
        end > start + 2000,
        "the jobs barely overlapped: [{start}, {end}]"
    );
    let busy: Vec<u64> = intervals
        .iter()
        .map(|(_, attempts)| {
            attempts
                .iter()
                .map(|&(s, e)| e.min(end).saturating_sub(s.max(start)))
                .sum()
        })
        .collect();
    let total = (busy[0] + busy[1]) as f64;
    assert!(total > 0.0, "no attempt ran in the common window");
    let share = busy[0] as f64 / total;
    eprintln!(
        "common window {} ms; alice {} ms, bob {} ms of attempt-slot time: alice's share {:.3}, bob's {:.3}",
        end - start,
        busy[0],
        busy[1],
        share,
        1.0 - share
    );
    assert!(
        (0.35..=0.65).contains(&share),
        "alice's share {share:.3} of the slots is not 50% ± 15% (alice {} ms, bob {} ms)",
        busy[0],
        busy[1]
    );
}

// ---------------------------------------------------------------------------
// 2. Isolation and authentication

#[test]
fn tenants_see_only_their_own_jobs_and_revocation_is_immediate() {
    let _serial = serial();
    let (mut c, tenants) = start(&["alice", "bob"]);
    let (alice, bob) = (&tenants[0], &tenants[1]);
    c.add_workers(1, &["--slots", "1"]);
    let out = alice.root.join("out");
    let mut deploy = c.deploy_as(alice, &guest("wordcount"), &alice.books(), &out, &[]);
    let job = c.deploy_finishes_ok(&mut deploy, JOB_LIMIT);

    // Alice sees her job.
    let listing = c.json(alice, &["jobs", "--json"]);
    submitted_unix_ms(&listing, &job);
    let status = c.json(alice, &["status", &job, "--json"]);
    assert_eq!(status["job"], job.as_str());

    // Bob does not.
    let not_found = format!("error: job {job} not found");
    assert_eq!(
        c.refused(&bob.name, &bob.token, &["status", &job, "--json"]),
        not_found
    );
    assert_eq!(
        c.refused(&bob.name, &bob.token, &["cancel", &job]),
        not_found
    );
    let listing = c.json(bob, &["jobs", "--json"]);
    let listed = listing.as_array().expect("jobs --json is an array");
    assert!(
        listed.iter().all(|j| j["job"] != job.as_str()),
        "bob's job list shows alice's job: {listing}"
    );
    // Alice's job is untouched by bob's cancel.
    let status = c.json(alice, &["status", &job, "--json"]);
    assert_eq!(status["job"], job.as_str());

    // A wrong token and an unknown tenant get the same answer.
    let wrong = c.refused(&alice.name, &bob.token, &["jobs", "--json"]);
    assert_eq!(wrong, REFUSED);
    let unknown = c.refused("carol", &alice.token, &["jobs", "--json"]);
    assert_eq!(unknown, REFUSED);
    let empty = c.refused(&alice.name, "", &["status", &job, "--json"]);
    assert_eq!(empty, REFUSED);

    // Revoking bob takes effect at once, without a restart.
    let mut cmd = c.wmr();
    cmd.args(["tenant", "revoke", "bob", "--state"])
        .arg(&c.state);
    let out = output_within(cmd, "tenant revoke", CLIENT_LIMIT);
    assert!(
        out.status.success(),
        "revoke: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        c.refused(&bob.name, &bob.token, &["jobs", "--json"]),
        REFUSED
    );
    // Alice is unaffected.
    c.json(alice, &["jobs", "--json"]);
}

// ---------------------------------------------------------------------------
// 3. Confinement

#[test]
fn inputs_outside_the_tenants_root_are_refused() {
    let _serial = serial();
    let (mut c, tenants) = start(&["alice"]);
    let alice = &tenants[0];
    let outside = c.root.join("outside");
    copy_dir(&books(), &outside);

    // An absolute path outside the root.
    let msg = c.deploy_refused(alice, &outside, &[]);
    assert_eq!(
        msg,
        format!(
            "error: path {} is outside the tenant's root",
            outside.display()
        )
    );

    // A path with `..` that leaves the root.
    let dotdot = alice.root.join("../../outside");
    assert!(dotdot.is_dir());
    let msg = c.deploy_refused(alice, &dotdot, &[]);
    assert!(
        msg == format!(
            "error: path {} is outside the tenant's root",
            dotdot.display()
        ) || msg == format!("error: path {} contains '..'", dotdot.display()),
        "`..` refusal: {msg:?}"
    );
    assert_eq!(msg.lines().count(), 1, "{msg}");

    // A symlink inside the root pointing outside.
    let link = alice.root.join("link");
    std::os::unix::fs::symlink(&outside, &link).unwrap();
    let msg = c.deploy_refused(alice, &link, &[]);
    assert_eq!(
        msg,
        format!(
            "error: path {} is outside the tenant's root",
            link.display()
        )
    );
}

// ---------------------------------------------------------------------------
// 4. Worker authentication

#[test]
fn a_worker_with_a_wrong_token_is_refused() {
    let _serial = serial();
    let (c, _tenants) = start(&["alice"]);
    let mut cmd = c.worker_command("intruder");
    cmd.args(["--token", "not-the-worker-token", "--slots", "1"]);
    let mut worker = c.spawn("worker-intruder", cmd);
    let status = worker.wait_within(CLIENT_LIMIT);
    let stderr = worker.stderr_text();
    assert_eq!(status.code(), Some(1), "worker: {stderr}");
    assert!(
        stderr.contains("wrong worker token"),
        "worker's error: {stderr}"
    );
}

// ---------------------------------------------------------------------------
// 5. Quotas

#[test]
fn a_job_over_the_fuel_quota_is_refused_naming_the_quota() {
    let _serial = serial();
    let (mut c, tenants) = start(&["alice"]);
    let alice = &tenants[0];
    let msg = c.deploy_refused(alice, &alice.books(), &["--fuel", "999999999999999"]);
    assert_eq!(
        msg,
        "error: quota max_fuel_per_attempt is 50000000000; the job asks for 999999999999999"
    );
}

// ---------------------------------------------------------------------------
// 6. Many jobs against one

/// The attempts of one job: (start, end) in unix ms, ends of running ones
/// as `u64::MAX`.
fn attempt_times(c: &Cluster, tenant: &Tenant, job: &str, submitted: u64) -> Vec<(u64, u64)> {
    Status::parse(&c.json(tenant, &["status", job, "--json"]))
        .attempts
        .iter()
        .map(|a| {
            let end = a.ended_ms.map_or(u64::MAX, |e| submitted + e);
            (submitted + a.started_ms, end)
        })
        .collect()
}

/// Fair share (SECURITY.md): alice queues 100 jobs of one-second map tasks
/// on two 1-slot workers, then bob submits one job. Bob's tenant is owed
/// half the slots, so his first task takes the first slot that frees: no
/// attempt of alice's starts between bob's submission and bob's first
/// attempt, and none while bob's job runs with fewer attempts than its
/// share. Bob waits at most one task duration per slot, not 100 jobs.
#[test]
fn a_tenant_with_100_jobs_does_not_delay_another_tenants_single_job() {
    let _serial = serial();
    let (mut c, tenants) = start_with(&["alice", "bob"], &["--quota", "max_jobs_queued=200"]);
    let (alice, bob) = (&tenants[0], &tenants[1]);
    let hostile = guest("hostile");
    for t in &tenants {
        let lines: String = (0..200)
            .map(|i| format!("record {i} of {}\n", t.name))
            .collect();
        std::fs::write(t.root.join("small.txt"), lines).unwrap();
    }
    // One map task of a second, and (`start`) four quick reduces.
    let sleepy = [
        "--param",
        "mode=sleep",
        "--param",
        "ms=1000",
        "--grant",
        "clock",
    ];

    // Alice's 100 jobs, submitted detached, a few clients at a time.
    let submit = |i: usize| {
        let out = alice.root.join(format!("out-{i}"));
        let mut cmd = c.tenant_command(&alice.name, &alice.token, &["deploy", "--detach"]);
        cmd.arg(&hostile)
            .arg("--input")
            .arg(alice.root.join("small.txt"))
            .arg("--output")
            .arg(&out)
            .args(sleepy)
            .args(["--reducers", "4"]);
        let done = output_within(cmd, "deploy --detach", CLIENT_LIMIT);
        assert!(
            done.status.success(),
            "alice's deploy {i}: {}",
            String::from_utf8_lossy(&done.stderr)
        );
        String::from_utf8(done.stdout).unwrap().trim().to_string()
    };
    let alice_jobs: Vec<String> = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..4)
            .map(|t| scope.spawn(move || (t..100).step_by(4).map(submit).collect::<Vec<_>>()))
            .collect();
        threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect()
    });
    assert_eq!(alice_jobs.len(), 100);
    let listing = c.json(alice, &["jobs", "--json"]);
    assert_eq!(listing.as_array().map(Vec::len), Some(100), "{listing}");
    // The workers join once alice's jobs are queued (submitting is quicker
    // without two busy guests on the machine's two cores).
    c.add_workers(2, &["--slots", "1"]);
    // Both slots busy with alice's work before bob arrives.
    poll("alice to run on both slots", JOB_LIMIT, || {
        let listing = c.json(alice, &["jobs", "--json"]);
        let running = listing
            .as_array()
            .unwrap()
            .iter()
            .filter(|j| j["phase"] != "Submitted")
            .count();
        (running >= 2).then_some(())
    });

    let bob_out = bob.root.join("out");
    let mut deploy = c.deploy_as(
        bob,
        &hostile,
        &bob.root.join("small.txt"),
        &bob_out,
        &sleepy,
    );
    let bob_job = c.deploy_finishes_ok(&mut deploy, JOB_LIMIT);
    assert_eq!(
        sorted_output(&bob_out),
        reference(&hostile, &[&bob.root.join("small.txt")], &[])
    );
    let bob_listing = c.json(bob, &["jobs", "--json"]);
    let bob_submitted = submitted_unix_ms(&bob_listing, &bob_job);
    let bob_attempts = attempt_times(&c, bob, &bob_job, bob_submitted);
    assert_eq!(
        bob_attempts.len(),
        5,
        "one map and four reduces: {bob_attempts:?}"
    );
    let bob_first = bob_attempts.iter().map(|&(s, _)| s).min().unwrap();
    let bob_end = bob_attempts.iter().map(|&(_, e)| e).max().unwrap();

    // Every attempt of alice's that ran around bob's job.
    let listing = c.json(alice, &["jobs", "--json"]);
    let mut alice_attempts = Vec::new();
    for job in listing.as_array().unwrap() {
        if job["phase"] == "Submitted" {
            continue;
        }
        let id = job["job"].as_str().unwrap();
        let submitted = job["submitted_unix_ms"].as_u64().unwrap();
        alice_attempts.extend(attempt_times(&c, alice, id, submitted));
    }
    // Attempt times are each job's submission time (wall clock) plus
    // milliseconds since its scheduler started (monotonic), so two jobs'
    // times can be off by the few ms between those two readings (more on a
    // loaded machine: one CI run saw ~10 ms). Tasks take 1000 ms: a real
    // violation overlaps by far more than this.
    const SLACK: u64 = 100;
    let started_while_bob_waited: Vec<_> = alice_attempts
        .iter()
        .filter(|&&(s, _)| s > bob_submitted + SLACK && s + SLACK < bob_first)
        .collect();
    let running_at_bob = alice_attempts
        .iter()
        .filter(|&&(s, e)| s <= bob_submitted && e > bob_submitted)
        .count();
    eprintln!(
        "bob waited {} ms for his first slot, his job took {} ms; {running_at_bob} alice attempts were running when he submitted",
        bob_first - bob_submitted,
        bob_end - bob_submitted
    );
    assert!(running_at_bob >= 1, "alice held no slot when bob submitted");
    assert!(
        started_while_bob_waited.is_empty(),
        "alice's attempts {started_while_bob_waited:?} started after bob's submission ({bob_submitted}) and before his first attempt ({bob_first})"
    );
    // While bob's job ran, alice never held both slots again: each of her
    // attempts that started meanwhile overlaps at most one other of hers.
    let during: Vec<&(u64, u64)> = alice_attempts
        .iter()
        .filter(|&&(s, _)| s > bob_first + SLACK && s + SLACK < bob_end)
        .collect();
    for &&(s, _) in &during {
        let holding = alice_attempts
            .iter()
            .filter(|&&(s2, e2)| s2 <= s && e2 > s + SLACK)
            .count();
        assert!(
            holding <= 1,
            "alice held {holding} slots at {s} while bob's job ran ({bob_first}..{bob_end})"
        );
    }
}

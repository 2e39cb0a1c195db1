//! The web UI of `wmr coordinator --http` in a real headless browser
//! (Debian's chromium through chromedriver, `support/browser.rs`), against
//! a real coordinator, workers and deploys on loopback:
//! - a finished job's page shows every attempt of the run — a failed one
//!   and a stale one (its worker SIGSTOPped past its lease, then SIGCONT)
//!   among them — as a bar of the right outcome, exactly as the attempt log
//!   of `wmr status --json` has them (I3: the stale attempt is shown
//!   discarded, its task committed once by another epoch), with the phase
//!   timeline and the counters; the same after a coordinator restart;
//! - the jobs page follows a running job without a reload;
//! - access: a tenant's session never shows another tenant's job (page,
//!   API, metrics), no or a malformed session gets the login page, bad
//!   input gets 404/413, and the coordinator keeps running jobs throughout;
//! - hostile text (a `<script>` parameter and guest error) is shown as text.
//!
//! Screenshots of each page go to `TARGET_TMPDIR/webui-screenshots/`.
//! Every process is owned by a `Proc` (killed on drop), every wait is a
//! bounded poll; the tests run one at a time.

#[path = "support/browser.rs"]
mod browser;
mod support;

use browser::{Browser, screenshot_dir};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;
use support::cluster::*;
use support::status::*;
use support::*;

const JOB_LIMIT: Duration = Duration::from_secs(60);
const CLIENT_LIMIT: Duration = Duration::from_secs(30);
/// The bound on each whole test.
const TEST_BOUND: Duration = Duration::from_secs(150);

/// Text that would run as script if a page inserted it unescaped.
const HOSTILE: &str = "<script>window.pwned=1</script><img src=x onerror=\"window.pwned=2\">";

/// A plain-HTTP client of the coordinator's `--http` address that does not
/// follow redirects (a refused page is a 303 to /login).
struct Http {
    base: String,
    agent: ureq::Agent,
}

struct Answer {
    status: u16,
    location: Option<String>,
    body: String,
}

impl Http {
    fn of(c: &Cluster) -> Http {
        let file = c.state.join("http.addr");
        let addr = c.poll("the coordinator to write http.addr", CLIENT_LIMIT, || {
            let text = std::fs::read_to_string(&file).ok()?;
            text.trim().parse::<std::net::SocketAddr>().ok()
        });
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_global(Some(CLIENT_LIMIT))
            .build()
            .into();
        Http {
            base: format!("http://{addr}"),
            agent,
        }
    }

    fn get(&self, path: &str, cookie: Option<&str>, html: bool) -> Answer {
        let mut request = self.agent.get(format!("{}{path}", self.base));
        if let Some(cookie) = cookie {
            request = request.header("Cookie", cookie);
        }
        if html {
            request = request.header("Accept", "text/html,application/xhtml+xml");
        }
        answer(request.call())
    }

    fn post_form(&self, path: &str, body: &str) -> Answer {
        let request = self
            .agent
            .post(format!("{}{path}", self.base))
            .header("Content-Type", "application/x-www-form-urlencoded")
            .header("Accept", "text/html");
        answer(request.send(body))
    }
}

fn answer(result: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Answer {
    let mut response = result.expect("an HTTP answer");
    let location = response
        .headers()
        .get("location")
        .map(|v| v.to_str().unwrap().to_string());
    Answer {
        status: response.status().as_u16(),
        location,
        body: response.body_mut().read_to_string().unwrap(),
    }
}

/// The timeline class the UI gives an attempt record of `wmr status
/// --json` (`web/pages.rs`, `outcome_class`).
fn expected_class(record: &Value) -> &'static str {
    let dead_letters = record["stats"]["dead_letters"]
        .as_array()
        .is_some_and(|d| !d.is_empty());
    match &record["outcome"] {
        Value::String(s) => match s.as_str() {
            "Running" => "running",
            "Committed" if dead_letters => "dead-lettered",
            "Committed" => "committed",
            "RejectedStale" => "stale",
            "Lost" => "lost",
            "OutputLost" => "output-lost",
            "Superseded" => "superseded",
            other => panic!("unknown outcome {other}"),
        },
        Value::Object(failed) if failed.contains_key("Failed") => match &failed["Failed"] {
            Value::String(s) if s == "Cancelled" => "cancelled",
            _ => "failed",
        },
        other => panic!("unknown outcome {other}"),
    }
}

fn task_name(record: &Value) -> String {
    let task = &record["task"];
    match (task.get("Map"), task.get("Reduce")) {
        (Some(i), None) => format!("m-{:05}", i.as_u64().unwrap()),
        (None, Some(i)) => format!("r-{:05}", i.as_u64().unwrap()),
        _ => panic!("bad task {task}"),
    }
}

/// (task, epoch, class) of every attempt in `status`, sorted.
fn expected_bars(status: &Value) -> Vec<(String, u64, String)> {
    let mut bars: Vec<(String, u64, String)> = status["attempt_log"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let class = expected_class(r).to_string();
            (task_name(r), r["epoch"].as_u64().unwrap(), class)
        })
        .collect();
    bars.sort();
    bars
}

/// (task, epoch, class) of every bar of the job page's attempt timeline,
/// sorted; each bar's hover text must name its task and epoch.
fn page_bars(browser: &Browser) -> Vec<(String, u64, String)> {
    let bars = browser.eval(
        "return [...document.querySelectorAll('svg.attempts rect.bar')].map(r => \
         [r.dataset.task, Number(r.dataset.epoch), r.dataset.outcome, \
          r.getAttribute('class'), r.querySelector('title').textContent])",
    );
    let mut found: Vec<(String, u64, String)> = bars
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            let (task, epoch, outcome) = (
                b[0].as_str().unwrap(),
                b[1].as_u64().unwrap(),
                b[2].as_str().unwrap(),
            );
            assert_eq!(b[3].as_str().unwrap(), format!("bar {outcome}"), "{b}");
            let title = b[4].as_str().unwrap();
            assert!(
                title.starts_with(&format!("{task} a{epoch} on ")),
                "{title}"
            );
            assert!(title.contains(&format!(": {outcome}\n")), "{title}");
            (task.to_string(), epoch, outcome.to_string())
        })
        .collect();
    found.sort();
    found
}

fn count_by_class(bars: &[(String, u64, String)]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for (_, _, class) in bars {
        *counts.entry(class.clone()).or_default() += 1;
    }
    counts
}

/// The page shows nothing a hostile string could have run.
fn assert_nothing_ran(browser: &Browser) {
    let ran = browser.eval(
        "return [typeof window.pwned, document.querySelectorAll('main script, main img').length]",
    );
    assert_eq!(
        ran,
        serde_json::json!(["undefined", 0]),
        "injected markup ran"
    );
}

fn copy_books(to: &Path, names: &[&str]) {
    std::fs::create_dir_all(to).unwrap();
    for name in names {
        let file = format!("pg-{name}.txt");
        std::fs::copy(books().join(&file), to.join(&file)).unwrap();
    }
}

fn status(c: &Cluster, job: &str) -> Value {
    c.client_json(&["status", job, "--json"])
}

#[test]
fn the_job_page_shows_every_attempt_of_a_run_with_a_failed_and_a_stale_one() {
    let _serial = serial();
    let mut c = Cluster::options()
        .shared_store()
        .reducers(1)
        .client_limit(CLIENT_LIMIT)
        .bound(TEST_BOUND)
        .args(&[
            "--lease",
            "2s",
            "--heartbeat",
            "500ms",
            "--http",
            "127.0.0.1:0",
        ])
        .start();
    c.add_workers(2, &["--slots", "1", "--labels", "zone=eu"]);
    let input = c.root.join("in");
    copy_books(&input, &["metamorphosis", "being_ernest"]);
    let out = c.root.join("out");
    // Each map task's first attempt fails (with hostile text in its error);
    // the retries run 3 s.
    let why = format!("why={HOSTILE}");
    let args = [
        "--param",
        "mode=flaky",
        "--param",
        "fail-attempts=1",
        "--param",
        "ms=3000",
        "--grant",
        "clock",
        "--param",
        &why,
        "--split-size",
        "1GiB",
    ];
    let mut deploy = c.deploy(&guest("hostile"), &input, &out, &args);
    let job = c.job_id(&mut deploy);

    // A retry running: freeze its worker past the lease.
    let (frozen, frozen_name) = c.poll("a retry (a2) running", JOB_LIMIT, || {
        let s = Status::parse(&status(&c, &job));
        let retry = s
            .maps()
            .into_iter()
            .find(|a| a.outcome == "Running" && a.epoch >= 2)?
            .clone();
        Some((retry.clone(), s.worker_name(retry.worker).to_string()))
    });
    let worker = c.worker_named(&frozen_name);
    worker.signal("STOP");
    c.poll("the worker to be stopped", CLIENT_LIMIT, || {
        (worker.state() == Some('T')).then_some(())
    });
    // Its task runs again under a higher epoch; then the frozen worker
    // wakes up and reports its attempt, which is stale by now (I3).
    c.poll("the frozen task to run again", JOB_LIMIT, || {
        let s = Status::parse(&status(&c, &job));
        s.attempts
            .iter()
            .any(|a| a.task == frozen.task && a.epoch > frozen.epoch)
            .then_some(())
    });
    c.worker_named(&frozen_name).signal("CONT");
    c.deploy_finishes_ok(&mut deploy, JOB_LIMIT);
    let finished = status(&c, &job);
    let record = Status::parse(&finished)
        .attempt(frozen.task, frozen.epoch)
        .clone();
    assert!(
        record.outcome == "RejectedStale" || record.outcome == "Lost",
        "the frozen attempt: {record:?}"
    );

    // The page shows exactly the attempt log.
    let http = Http::of(&c);
    let browser = Browser::start(&c.logs, 1280, 1000);
    browser.goto(&format!("{}/jobs/{job}", http.base));
    let expected = expected_bars(&finished);
    let shown = page_bars(&browser);
    assert_eq!(
        shown, expected,
        "the attempt timeline against `wmr status --json`"
    );
    let counts = count_by_class(&shown);
    assert_eq!(counts.get("failed"), Some(&2), "{counts:?}");
    assert_eq!(counts.get("committed"), Some(&3), "{counts:?}");
    assert_eq!(
        counts.get("stale").or(counts.get("lost")),
        Some(&1),
        "{counts:?}"
    );
    println!("attempt bars by outcome: {counts:?}; the frozen attempt: {record:?}");
    // One lane per worker slot: two one-slot workers.
    let lanes = browser.eval("return document.querySelectorAll('svg.attempts .lane-label').length");
    assert!(lanes.as_u64().unwrap() >= 2, "{lanes}");
    // Every colour in the legend.
    let legend = browser
        .eval("return [...document.querySelectorAll('ul.legend li')].map(l => l.dataset.outcome)");
    assert_eq!(
        legend,
        serde_json::json!([
            "committed",
            "dead-lettered",
            "failed",
            "stale",
            "lost",
            "output-lost",
            "cancelled",
            "superseded",
            "running"
        ])
    );

    // The phase timeline: each change with its reason.
    let phases = browser.eval(
        "return [...document.querySelectorAll('ol.phases li')].map(l => \
         [l.dataset.phase, l.querySelector('.reason').textContent])",
    );
    let transitions: Vec<Value> = finished["transitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| serde_json::json!([t["phase"], t["reason"]]))
        .collect();
    assert_eq!(phases, Value::Array(transitions));
    assert_eq!(phases[phases.as_array().unwrap().len() - 1][0], "Completed");
    // Totals and counters, as the CLI's.
    let totals = browser.eval(
        "return [...document.querySelectorAll('table.totals tr[data-scope]')].map(r => \
         [r.dataset.scope, Number(r.children[1].textContent), Number(r.children[2].textContent), Number(r.children[4].textContent)])",
    );
    for row in totals.as_array().unwrap() {
        let t = &finished["totals"][row[0].as_str().unwrap()];
        assert_eq!(row[1], t["attempts"], "{row}");
        assert_eq!(row[2], t["committed"], "{row}");
        assert_eq!(row[3], t["fuel_used"], "{row}");
    }
    assert_eq!(totals.as_array().unwrap().len(), 3, "{totals}");
    let counters = browser.eval(
        "return Object.fromEntries([...document.querySelectorAll('table.counters tr')].map(r => \
         [r.dataset.counter, Number(r.querySelector('.value').textContent)]))",
    );
    assert_eq!(counters, finished["totals"]["job"]["counters"]);

    // Hostile text is text: the parameter and the guest's error.
    let param =
        browser.eval("return document.querySelector('tr[data-param=why] .value').textContent");
    assert_eq!(param, HOSTILE);
    let error = browser
        .eval("return document.querySelector('svg.attempts rect.bar.failed title').textContent");
    assert!(
        error
            .as_str()
            .unwrap()
            .ends_with(&format!("fails on purpose: {HOSTILE}")),
        "{error}"
    );
    assert_nothing_ran(&browser);

    let shots = screenshot_dir("job");
    browser.screenshot(&shots.join("job.png"), 1280, 1900);
    browser.goto(&format!("{}/workers", http.base));
    let workers = browser.eval(
        "return [...document.querySelectorAll('table.workers tbody tr')].map(r => [r.children[0].textContent, r.children[2].textContent, r.dataset.state])",
    );
    assert_eq!(workers.as_array().unwrap().len(), 2, "{workers}");
    for w in workers.as_array().unwrap() {
        assert_eq!(w[1], "zone=eu", "{workers}");
        assert_eq!(w[2], "connected", "{workers}");
    }
    browser.screenshot(&shots.join("workers.png"), 1280, 500);

    // After a restart the page comes from the durable state, the same.
    c.kill_coordinator();
    std::fs::remove_file(c.state.join("http.addr")).unwrap();
    c.start_coordinator();
    let http = Http::of(&c);
    browser.goto(&format!("{}/jobs/{job}", http.base));
    assert_eq!(page_bars(&browser), expected, "after a restart");
    assert_eq!(
        browser.eval("return document.querySelector('main').dataset.poll"),
        "off",
        "a finished job's page does not poll"
    );
}

#[test]
fn the_jobs_page_follows_a_running_job_without_a_reload() {
    let _serial = serial();
    let mut c = Cluster::options()
        .shared_store()
        .reducers(1)
        .client_limit(CLIENT_LIMIT)
        .bound(TEST_BOUND)
        .args(&["--http", "127.0.0.1:0"])
        .start();
    c.add_workers(1, &["--slots", "1"]);
    let http = Http::of(&c);
    let browser = Browser::start(&c.logs, 1280, 700);
    browser.goto(&format!("{}/", http.base));
    let empty = browser.eval("return document.querySelector('main .empty').textContent");
    assert_eq!(empty, "No jobs yet.");
    browser.eval("window.sameLoad = 'yes'; return null");

    // Three map tasks one after another (one slot), 1.5 s each.
    let input = c.root.join("in");
    copy_books(&input, &["metamorphosis", "being_ernest", "tom_sawyer"]);
    let args = [
        "--param",
        "mode=flaky",
        "--param",
        "ms=1500",
        "--grant",
        "clock",
        "--split-size",
        "1GiB",
    ];
    let mut deploy = c.deploy(&guest("hostile"), &input, &c.root.join("out"), &args);
    let job = c.job_id(&mut deploy);
    let row = format!("tr[data-job=\"{job}\"]");
    let read = format!(
        "const r = document.querySelector('{row}'); if (!r) return null; \
         return [r.dataset.phase, Number(r.querySelector('.count').dataset.committed)]"
    );
    // Every state the page shows, in order, until it shows the job done.
    let mut seen: Vec<Value> = Vec::new();
    let mut shot = false;
    c.poll("the jobs page to show the job completed", JOB_LIMIT, || {
        let state = browser.eval(&read);
        if state.is_null() {
            return None;
        }
        if seen.last() != Some(&state) {
            seen.push(state.clone());
        }
        if !shot && state[0] == "Mapping" && state[1].as_u64() >= Some(1) {
            browser.screenshot(&screenshot_dir("jobs").join("jobs.png"), 1280, 700);
            shot = true;
        }
        (state[0] == "Completed").then_some(())
    });
    c.deploy_finishes_ok(&mut deploy, JOB_LIMIT);
    println!("the jobs page showed, without a reload: {seen:?}");
    assert!(
        seen.iter()
            .any(|s| s[0] == "Mapping" && s[1].as_u64() < Some(3)),
        "{seen:?}"
    );
    assert_eq!(seen.last().unwrap(), &serde_json::json!(["Completed", 4]));
    assert!(seen.len() >= 3, "progress seen changing: {seen:?}");
    assert!(shot, "a screenshot while mapping");
    let load = browser
        .eval("return [window.sameLoad, Number(document.getElementById('live').dataset.updates)]");
    assert_eq!(load[0], "yes", "the page was reloaded");
    assert!(load[1].as_u64().unwrap() >= 2, "{load}");
    let outcome = browser.eval(&format!(
        "return document.querySelector('{row} .outcome').textContent"
    ));
    assert_eq!(outcome, "completed");
}

#[test]
fn a_tenants_session_shows_only_its_jobs_and_bad_input_gets_login_or_404() {
    let _serial = serial();
    let mut c = Cluster::options()
        .tenants(&["alice", "bob"])
        .tenant_books()
        .shared_store()
        .reducers(1)
        .client_limit(CLIENT_LIMIT)
        .bound(TEST_BOUND)
        .args(&["--http", "127.0.0.1:0"])
        .start();
    c.add_workers(2, &[]);
    let http = Http::of(&c);
    let (alice, bob) = (c.tenants[0].clone(), c.tenants[1].clone());
    let mut deploy = c.deploy_as(
        &alice,
        &guest("wordcount"),
        &alice.books(),
        &alice.root.join("out"),
        &[],
    );
    let alice_job = c.deploy_finishes_ok(&mut deploy, JOB_LIMIT);
    let mut deploy = c.deploy_as(
        &bob,
        &guest("wordcount"),
        &bob.books(),
        &bob.root.join("out"),
        &[],
    );
    let bob_job = c.job_id(&mut deploy);

    // No session: every page is the login page.
    let browser = Browser::start(&c.logs, 1280, 600);
    for path in ["/", "/workers", &format!("/jobs/{alice_job}")] {
        browser.goto(&format!("{}{path}", http.base));
        assert!(
            browser.url().ends_with("/login"),
            "{path}: {}",
            browser.url()
        );
    }
    let form = browser
        .eval("return [...document.querySelectorAll('form.login-form input')].map(i => i.name)");
    assert_eq!(form, serde_json::json!(["tenant", "token"]));
    browser.screenshot(&screenshot_dir("login").join("login.png"), 1280, 600);
    // A wrong token: the login page again, saying so.
    browser.type_into("input[name=tenant]", "alice");
    browser.type_into("input[name=token]", "0123abcd");
    browser.click("form.login-form button");
    // A click that submits a form may return before the next page loads.
    let said = c.poll("the login page's error", CLIENT_LIMIT, || {
        let text =
            browser.eval("return document.querySelector('.form-error')?.textContent ?? null");
        text.as_str().map(String::from)
    });
    assert!(said.contains("wrong token"), "{said}");

    // Alice signs in with the form: her job, not Bob's.
    browser.goto(&format!("{}/login", http.base));
    browser.type_into("input[name=tenant]", "alice");
    browser.type_into("input[name=token]", &alice.token);
    browser.click("form.login-form button");
    c.poll("the jobs page after signing in", CLIENT_LIMIT, || {
        browser.url().ends_with('/').then_some(())
    });
    let jobs = browser.eval(
        "return [...document.querySelectorAll('table.jobs tbody tr')].map(r => r.dataset.job)",
    );
    assert_eq!(jobs, serde_json::json!([alice_job]));
    browser.goto(&format!("{}/jobs/{bob_job}", http.base));
    let status = browser.eval("return document.querySelector('main').dataset.status");
    assert_eq!(status, "404", "Bob's job from Alice's session");
    browser.goto(&format!("{}/jobs/ffffffff", http.base));
    assert_eq!(
        browser.eval("return document.querySelector('main').dataset.status"),
        "404"
    );
    browser.screenshot(&screenshot_dir("login").join("not-found.png"), 1280, 400);

    // The same with her cookie over plain HTTP: page, API and metrics.
    let cookie = format!("wmr_session=alice:{}", alice.token);
    // Bob's job reads exactly as a job that does not exist.
    let page = http.get(&format!("/jobs/{bob_job}"), Some(&cookie), true);
    assert_eq!(page.status, 404);
    let unknown = http.get("/jobs/ffffffff", Some(&cookie), true);
    assert_eq!(
        page.body.replace(&bob_job, "ID"),
        unknown.body.replace("ffffffff", "ID")
    );
    assert_eq!(
        http.get(&format!("/api/jobs/{bob_job}"), Some(&cookie), false)
            .status,
        404
    );
    let own = http.get(&format!("/jobs/{alice_job}"), Some(&cookie), true);
    assert_eq!(own.status, 200);
    let metrics = http.get("/metrics", Some(&cookie), false);
    assert_eq!(metrics.status, 200);
    assert!(
        !metrics.body.contains("bob") && !metrics.body.contains(&bob_job),
        "{}",
        metrics.body
    );
    assert!(
        metrics.body.contains("wmr_jobs{phase=\"completed\"} 1"),
        "{}",
        metrics.body
    );

    // Bad input while Bob's job runs: a malformed or no session goes to the
    // login page, an unknown path is a 404 page, a huge body 413.
    for cookie in [
        None,
        Some("wmr_session=garbage"),
        Some("wmr_session=alice:"),
        Some("wmr_session=a:b;c"),
    ] {
        let refused = http.get("/", cookie, true);
        assert_eq!(refused.status, 303, "{cookie:?}");
        assert_eq!(refused.location.as_deref(), Some("/login"), "{cookie:?}");
    }
    let unknown = http.get("/no/such/page", Some(&cookie), true);
    assert_eq!(unknown.status, 404);
    assert!(
        unknown.body.contains("data-status=\"404\""),
        "{}",
        unknown.body
    );
    let huge = format!("tenant=alice&token={}", "a".repeat(64 << 10));
    assert_eq!(http.post_form("/login", &huge).status, 413);
    // In the browser: a forged cookie after signing out.
    browser.goto(&format!("{}/", http.base));
    browser.click("header form button");
    c.poll("the login page after signing out", CLIENT_LIMIT, || {
        browser.url().ends_with("/login").then_some(())
    });
    browser.eval("document.cookie = 'wmr_session=%3Cscript%3E; path=/'; return null");
    browser.goto(&format!("{}/", http.base));
    assert!(browser.url().ends_with("/login"), "{}", browser.url());

    // ... and the coordinator ran Bob's job meanwhile.
    c.deploy_finishes_ok(&mut deploy, JOB_LIMIT);
    let bobs = c.json(&bob, &["status", &bob_job, "--json"]);
    assert_eq!(bobs["phase"], "Completed");
}

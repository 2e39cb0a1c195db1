//! `wmr coordinator --http`: `/api/...` and `/metrics` of a real coordinator
//! with real workers and deploys, read over plain HTTP and checked against
//! the CLI's JSON (`wmr status --json`, `wmr jobs --json`) and a real
//! Prometheus text parser; access as the CLI's (tenants, the operator
//! token, development mode), and bad requests refused while the coordinator
//! carries on.
//!
//! Every process is owned by a [`Proc`] (killed on drop); every wait is a
//! bounded poll. The tests run one at a time.

mod support;

use serde_json::Value;
use std::time::Duration;
use support::cluster::*;
use support::*;

const JOB_LIMIT: Duration = Duration::from_secs(120);
const CLIENT_LIMIT: Duration = Duration::from_secs(30);

/// An HTTP answer: status, headers we look at, body.
struct Answer {
    status: u16,
    set_cookie: Option<String>,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// A plain-HTTP client of the coordinator's `--http` address.
struct Http {
    base: String,
    agent: ureq::Agent,
}

impl Http {
    /// The address the coordinator published in `STATE/http.addr`.
    fn of(c: &Cluster) -> Http {
        let file = c.state.join("http.addr");
        let addr = c.poll("the coordinator to write http.addr", CLIENT_LIMIT, || {
            let text = std::fs::read_to_string(&file).ok()?;
            let addr: std::net::SocketAddr = text.trim().parse().ok()?;
            Some(addr)
        });
        assert!(addr.ip().is_loopback() && addr.port() != 0, "{addr}");
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(CLIENT_LIMIT))
            .build();
        Http {
            base: format!("http://{addr}"),
            agent: config.into(),
        }
    }

    fn get(&self, path: &str, auth: Option<&str>) -> Answer {
        let mut request = self.agent.get(format!("{}{path}", self.base));
        if let Some(auth) = auth {
            request = request.header("Authorization", format!("Bearer {auth}"));
        }
        answer(request.call())
    }

    fn get_with_cookie(&self, path: &str, cookie: &str) -> Answer {
        let request = self
            .agent
            .get(format!("{}{path}", self.base))
            .header("Cookie", cookie);
        answer(request.call())
    }

    fn post_form(&self, path: &str, body: &str) -> Answer {
        let request = self
            .agent
            .post(format!("{}{path}", self.base))
            .header("Content-Type", "application/x-www-form-urlencoded");
        answer(request.send(body))
    }
}

fn answer(result: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Answer {
    let mut response = result.expect("an HTTP answer");
    let set_cookie = response
        .headers()
        .get("set-cookie")
        .map(|v| v.to_str().unwrap().to_string());
    Answer {
        status: response.status().as_u16(),
        set_cookie,
        body: response.body_mut().read_to_string().unwrap(),
    }
}

/// `/metrics` parsed by a real Prometheus text parser.
fn scrape(http: &Http, auth: Option<&str>) -> prometheus_parse::Scrape {
    let answer = http.get("/metrics", auth);
    assert_eq!(answer.status, 200, "{}", answer.body);
    let lines = answer.body.lines().map(|l| Ok(l.to_string()));
    prometheus_parse::Scrape::parse(lines).expect("parseable metrics")
}

/// The value of sample `metric` whose label `key` is `value`.
fn sample(scrape: &prometheus_parse::Scrape, metric: &str, key: &str, value: &str) -> f64 {
    let found = scrape
        .samples
        .iter()
        .find(|s| s.metric == metric && s.labels.get(key) == Some(value))
        .unwrap_or_else(|| panic!("no {metric}{{{key}={value:?}}}"));
    match found.value {
        prometheus_parse::Value::Counter(v)
        | prometheus_parse::Value::Gauge(v)
        | prometheus_parse::Value::Untyped(v) => v,
        ref other => panic!("{metric}: {other:?}"),
    }
}

fn committed_attempts(status: &Value) -> f64 {
    let committed = status["totals"]["job"]["committed"].as_f64().unwrap();
    assert!(committed >= 3.0, "maps and 2 reduces: {status}");
    committed
}

#[test]
fn the_api_serves_the_clis_documents_and_metrics_in_development_mode() {
    let _serial = serial();
    let mut c = Cluster::options()
        .shared_store()
        .reducers(2)
        .args(&["--http", "127.0.0.1:0"])
        .start();
    c.add_workers(2, &[]);
    let http = Http::of(&c);
    let out = c.root.join("out");
    let mut deploy = c.deploy(&guest("wordcount"), &books(), &out, &[]);
    let job = c.deploy_finishes_ok(&mut deploy, JOB_LIMIT);

    // Development mode: no credentials needed, as with the CLI.
    let status = c.client_json(&["status", &job, "--json"]);
    let api = http.get(&format!("/api/jobs/{job}"), None);
    assert_eq!(api.status, 200, "{}", api.body);
    assert_eq!(
        api.json(),
        status,
        "/api/jobs/{job} is `wmr status {job} --json`"
    );
    let jobs = http.get("/api/jobs", None);
    assert_eq!(jobs.status, 200);
    assert_eq!(jobs.json(), c.client_json(&["jobs", "--json"]));
    c.poll("both workers in /api/workers", CLIENT_LIMIT, || {
        let workers = http.get("/api/workers", None).json();
        (workers.as_array().unwrap().len() == 2).then_some(())
    });

    let metrics = scrape(&http, None);
    let committed = sample(&metrics, "wmr_attempts_total", "outcome", "committed");
    assert_eq!(committed, committed_attempts(&status));
    assert_eq!(sample(&metrics, "wmr_jobs", "phase", "completed"), 1.0);
    let bytes_in = status["totals"]["job"]["bytes_in"].as_f64().unwrap();
    let scraped_in = metrics
        .samples
        .iter()
        .find(|s| s.metric == "wmr_bytes_in_total")
        .expect("wmr_bytes_in_total");
    assert_eq!(scraped_in.value, prometheus_parse::Value::Untyped(bytes_in));
    let durations = metrics
        .samples
        .iter()
        .find(|s| {
            s.metric == "wmr_attempt_duration_seconds" && s.labels.get("phase") == Some("map")
        })
        .expect("the map attempts' duration histogram");
    assert!(matches!(
        durations.value,
        prometheus_parse::Value::Histogram(_)
    ));

    // Bad requests: refused, and the coordinator carries on.
    assert_eq!(http.get("/api/jobs/ffffffff", None).status, 404);
    assert_eq!(http.get("/api/nothing", None).status, 404);
    let malformed = http.get("/api/jobs", Some("no-colon"));
    assert_eq!(malformed.status, 401, "{}", malformed.body);
    assert!(malformed.json()["error"].is_string());
    assert_eq!(
        http.get_with_cookie("/api/jobs", "wmr_session=;;").status,
        401
    );
    let huge = format!("tenant=local&token={}", "a".repeat(64 << 10));
    assert_eq!(http.post_form("/login", &huge).status, 413);
    c.client_json(&["status", &job, "--json"]);
    assert_eq!(http.get(&format!("/api/jobs/{job}"), None).status, 200);
    // ... and runs jobs: a second one, seen by both windows.
    let mut again = c.deploy(&guest("wordcount"), &books(), &c.root.join("out2"), &[]);
    let second = c.deploy_finishes_ok(&mut again, JOB_LIMIT);
    let listed = http.get("/api/jobs", None).json();
    assert_eq!(listed, c.client_json(&["jobs", "--json"]));
    assert_eq!(listed[1]["job"].as_str(), Some(second.as_str()), "{listed}");
    assert_eq!(
        sample(&scrape(&http, None), "wmr_jobs", "phase", "completed"),
        2.0
    );
}

#[test]
fn tenants_see_only_their_own_jobs_and_the_operator_sees_all() {
    let _serial = serial();
    let mut c = Cluster::options()
        .tenants(&["alice", "bob"])
        .tenant_books()
        .shared_store()
        .reducers(2)
        .client_limit(CLIENT_LIMIT)
        .args(&["--http", "127.0.0.1:0"])
        .start();
    c.add_workers(2, &[]);
    let http = Http::of(&c);
    let (alice, bob) = (c.tenants[0].clone(), c.tenants[1].clone());
    // tenants.toml is read at every request: a token made now works now.
    let mut cmd = c.wmr();
    cmd.args(["tenant", "operator-token", "--state"])
        .arg(&c.state);
    let out = output_within(cmd, "tenant operator-token", CLIENT_LIMIT);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let operator = format!("operator:{}", String::from_utf8(out.stdout).unwrap().trim());

    let mut deploys: Vec<Proc> = [&alice, &bob]
        .iter()
        .map(|t| {
            let out = t.root.join("out");
            c.deploy_as(t, &guest("wordcount"), &t.books(), &out, &[])
        })
        .collect();
    let ids: Vec<String> = deploys
        .iter_mut()
        .map(|d| c.deploy_finishes_ok(d, JOB_LIMIT))
        .collect();
    let (alice_job, bob_job) = (&ids[0], &ids[1]);
    let as_alice = format!("alice:{}", alice.token);

    // No or wrong credentials.
    for path in [
        "/api/jobs",
        "/api/workers",
        "/metrics",
        &format!("/api/jobs/{alice_job}"),
    ] {
        let refused = http.get(path, None);
        assert_eq!(refused.status, 401, "{path}: {}", refused.body);
        assert!(refused.json()["error"].is_string());
        assert_eq!(http.get(path, Some("alice:0123abcd")).status, 401, "{path}");
        assert_eq!(
            http.get(path, Some(&format!("bob:{}", alice.token))).status,
            401
        );
    }

    // Alice: her job as the CLI shows it, Bob's not at all.
    let status = c.json(&alice, &["status", alice_job, "--json"]);
    let api = http.get(&format!("/api/jobs/{alice_job}"), Some(&as_alice));
    assert_eq!(api.status, 200, "{}", api.body);
    assert_eq!(api.json(), status);
    let hidden = http.get(&format!("/api/jobs/{bob_job}"), Some(&as_alice));
    assert_eq!(hidden.status, 404, "{}", hidden.body);
    let listed = http.get("/api/jobs", Some(&as_alice)).json();
    assert_eq!(listed, c.json(&alice, &["jobs", "--json"]));
    let names: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["job"].as_str().unwrap())
        .collect();
    assert_eq!(names, [alice_job.as_str()]);
    let metrics = scrape(&http, Some(&as_alice));
    let committed = sample(&metrics, "wmr_attempts_total", "outcome", "committed");
    assert_eq!(committed, committed_attempts(&status));
    assert_eq!(sample(&metrics, "wmr_jobs", "phase", "completed"), 1.0);
    for s in &metrics.samples {
        for value in s.labels.values() {
            assert!(
                !value.contains("bob") && !value.contains(bob_job.as_str()),
                "{s:?}"
            );
        }
    }

    // The session cookie of `POST /login` works as the header does.
    let login = http.post_form("/login", &format!("tenant=alice&token={}", alice.token));
    assert_eq!(login.status, 200, "{}", login.body);
    let set_cookie = login.set_cookie.expect("a session cookie");
    assert!(set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Strict"));
    let cookie = set_cookie.split(';').next().unwrap();
    let by_cookie = http.get_with_cookie("/api/jobs", cookie);
    assert_eq!(by_cookie.json(), listed);
    let wrong = http.post_form("/login", "tenant=alice&token=0123abcd");
    assert_eq!(wrong.status, 401);
    assert!(wrong.set_cookie.is_none());

    // The operator: everyone's jobs, each with its tenant, and all metrics.
    let all = http.get("/api/jobs", Some(&operator)).json();
    let mut seen: Vec<(String, String)> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|j| {
            (
                j["tenant"].as_str().unwrap().into(),
                j["job"].as_str().unwrap().into(),
            )
        })
        .collect();
    seen.sort();
    let mut expected = vec![
        ("alice".to_string(), alice_job.clone()),
        ("bob".to_string(), bob_job.clone()),
    ];
    expected.sort();
    assert_eq!(seen, expected);
    let bobs = http.get(&format!("/api/jobs/{bob_job}"), Some(&operator));
    assert_eq!(bobs.status, 200);
    assert_eq!(bobs.json(), c.json(&bob, &["status", bob_job, "--json"]));
    let everything = scrape(&http, Some(&operator));
    let bob_status = c.json(&bob, &["status", bob_job, "--json"]);
    assert_eq!(
        sample(&everything, "wmr_attempts_total", "outcome", "committed"),
        committed_attempts(&status) + committed_attempts(&bob_status)
    );
    assert_eq!(sample(&everything, "wmr_jobs", "phase", "completed"), 2.0);

    // Oversized bodies: 413; and the coordinator still serves the CLI.
    let huge = format!("tenant=alice&token={}", "a".repeat(64 << 10));
    assert_eq!(http.post_form("/login", &huge).status, 413);
    c.json(&alice, &["status", alice_job, "--json"]);
}

//! `wmr coordinator --http ADDR`: the operator's window, over plain HTTP.
//!
//! `/metrics` (Prometheus/OpenMetrics text) and `/api/...` (the JSON of
//! `wmr jobs --json` and `wmr status --json`), read from the coordinator's
//! state through the driver ([`Inspector`]), so the `Cluster` keeps one
//! owner. Access follows the CLI: a tenant sees only its own jobs (another
//! tenant's job is "not found"), in development mode (no `tenants.toml`)
//! everyone is tenant `local`; the operator token sees everything.
//! Credentials: `Authorization: Bearer TENANT:TOKEN`, or the cookie
//! `wmr_session=TENANT:TOKEN` that `POST /login` sets.
//!
//! The pages of the web UI (`/`, `/jobs/{id}`, `/workers`, `/login`) are
//! in [`pages`]: HTML rendered here from the same reads.
//!
//! Plain HTTP on purpose: bind loopback and let a reverse proxy terminate
//! TLS (see SECURITY.md).

mod pages;

use crate::cluster::{ALL_PHASES, Cluster, MetricsSnapshot, Viewer};
use crate::coordinator::Inspector;
use crate::model::TenantId;
use crate::tenants;
use anyhow::Context as _;
use axum::extract::{DefaultBodyLimit, Path as UrlPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Request bodies (only `POST /login` reads one) larger than this: 413.
pub const BODY_LIMIT: usize = 8 << 10;

/// The session cookie `POST /login` sets.
pub const SESSION_COOKIE: &str = "wmr_session";

/// Where the bound address is published (`--http 127.0.0.1:0` picks a port).
pub const ADDR_FILE: &str = "http.addr";

struct Web {
    state_dir: PathBuf,
    inspector: Inspector,
}

/// Bind `listen`, publish the bound address in `STATE/http.addr`, and
/// return the server to run (on the coordinator's runtime).
pub async fn bind(
    listen: SocketAddr,
    state_dir: &Path,
    inspector: Inspector,
) -> anyhow::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("--http {listen}"))?;
    let addr = listener.local_addr()?;
    if !addr.ip().is_loopback() {
        tracing::warn!(%addr, "--http is not on loopback: this is plain HTTP; put a TLS proxy in front");
    }
    let path = state_dir.join(ADDR_FILE);
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, addr.to_string()).with_context(|| format!("{}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("{}", path.display()))?;
    eprintln!("wmr coordinator serving HTTP on http://{addr}");
    let app = router(Arc::new(Web {
        state_dir: state_dir.to_path_buf(),
        inspector,
    }));
    Ok(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("the HTTP server stopped: {e}");
        }
    })
}

fn router(web: Arc<Web>) -> Router {
    Router::new()
        .route("/", get(pages::jobs))
        .route("/jobs/{id}", get(pages::job))
        .route("/workers", get(pages::workers))
        .route("/static/ui.css", get(pages::css))
        .route("/static/ui.js", get(pages::js))
        .route("/metrics", get(metrics))
        .route("/api/jobs", get(jobs))
        .route("/api/jobs/{id}", get(job))
        .route("/api/workers", get(workers))
        .route("/login", get(pages::login_form).post(login))
        .route("/logout", post(logout))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(middleware::from_fn(refuse_large_bodies))
        .with_state(web)
}

/// An unknown path: a 404 page for a browser, JSON for the rest.
async fn not_found(headers: HeaderMap) -> Response {
    if pages::wants_html(&headers) {
        return pages::error_page(StatusCode::NOT_FOUND, "no such page");
    }
    error(StatusCode::NOT_FOUND, "no such endpoint")
}

/// A JSON error: `{"error": "..."}`.
fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

/// A refused request: its status and why.
struct Refusal(StatusCode, String);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        error(self.0, &self.1)
    }
}

/// Refuse a declared oversized body before any handler runs, whatever the
/// route (`DefaultBodyLimit` covers bodies that do not declare a length).
async fn refuse_large_bodies(request: Request, next: Next) -> Response {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > BODY_LIMIT as u64) {
        let message = format!("request body over {BODY_LIMIT} bytes");
        return error(StatusCode::PAYLOAD_TOO_LARGE, &message);
    }
    next.run(request).await
}

/// Who the request comes from: `Err` is the response refusing it.
fn viewer(web: &Web, headers: &HeaderMap) -> Result<Viewer, Refusal> {
    let unauthorized = |message: &str| Refusal(StatusCode::UNAUTHORIZED, message.into());
    let credentials = match credentials(headers) {
        Ok(credentials) => credentials,
        Err(message) => return Err(unauthorized(message)),
    };
    let development = match tenants::load(&web.state_dir) {
        Ok(file) => file.is_none(),
        Err(e) => {
            tracing::error!("reading tenants.toml: {e:#}");
            return Err(Refusal(
                StatusCode::INTERNAL_SERVER_ERROR,
                "reading tenants.toml failed".into(),
            ));
        }
    };
    let Some((tenant, token)) = credentials else {
        if development {
            return Ok(Viewer::Tenant(TenantId::local()));
        }
        return Err(unauthorized(
            "credentials required: Authorization: Bearer TENANT:TOKEN, or POST /login",
        ));
    };
    check(&web.state_dir, &tenant, &token).map_err(|message| unauthorized(&message))
}

/// Check a tenant's (or the operator's) token, as the CLI's are checked.
fn check(state_dir: &Path, tenant: &str, token: &str) -> Result<Viewer, String> {
    if tenant == tenants::OPERATOR
        && tenants::authenticate_operator(state_dir, token).map_err(|e| format!("{e:#}"))?
    {
        return Ok(Viewer::Operator);
    }
    match tenants::authenticate(state_dir, &TenantId(tenant.into()), token) {
        Ok(principal) => Ok(Viewer::Tenant(principal.tenant)),
        Err(e) => {
            tracing::info!(tenant, "HTTP request refused: {e:#}");
            Err(tenants::REFUSED.into())
        }
    }
}

/// `TENANT:TOKEN` from the `Authorization` header or the session cookie;
/// `Ok(None)` when neither is there, `Err` when one is malformed.
fn credentials(headers: &HeaderMap) -> Result<Option<(String, String)>, &'static str> {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let value = value
            .to_str()
            .map_err(|_| "malformed Authorization header")?;
        let pair = value
            .strip_prefix("Bearer ")
            .ok_or("the Authorization header must be Bearer TENANT:TOKEN")?;
        return split_pair(pair.trim())
            .map(Some)
            .ok_or("the Authorization header must be Bearer TENANT:TOKEN");
    }
    for value in headers.get_all(header::COOKIE) {
        let value = value.to_str().map_err(|_| "malformed Cookie header")?;
        for cookie in value.split(';') {
            if let Some(pair) = cookie.trim().strip_prefix("wmr_session=") {
                return split_pair(pair)
                    .map(Some)
                    .ok_or("the wmr_session cookie must be TENANT:TOKEN");
            }
        }
    }
    Ok(None)
}

/// `TENANT:TOKEN`, both non-empty and cookie-safe (letters, digits, '-',
/// '_'), as tenant names and tokens are.
fn split_pair(pair: &str) -> Option<(String, String)> {
    let (tenant, token) = pair.split_once(':')?;
    let safe = |s: &str| {
        !s.is_empty()
            && s.len() <= 256
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    (safe(tenant) && safe(token)).then(|| (tenant.to_string(), token.to_string()))
}

/// Run `look` on the cluster for the request's viewer.
async fn inspect<T: Send + 'static>(
    web: &Web,
    headers: &HeaderMap,
    look: impl FnOnce(&Cluster, &Viewer) -> T + Send + 'static,
) -> Result<(Viewer, T), Refusal> {
    let viewer = viewer(web, headers)?;
    let seen = viewer.clone();
    match web
        .inspector
        .inspect(move |cluster| look(cluster, &seen))
        .await
    {
        Some(answer) => Ok((viewer, answer)),
        None => Err(Refusal(
            StatusCode::SERVICE_UNAVAILABLE,
            "the coordinator is stopping".into(),
        )),
    }
}

/// `GET /api/jobs`: `wmr jobs --json`; the operator's entries name their
/// tenant too (`"tenant"`).
async fn jobs(State(web): State<Arc<Web>>, headers: HeaderMap) -> Response {
    match inspect(&web, &headers, |c, v| c.listings_for(v)).await {
        Ok((viewer, listings)) => {
            let entries: Vec<Value> = listings
                .into_iter()
                .map(|(tenant, listing)| {
                    let mut value = serde_json::to_value(listing).expect("serialisable");
                    if viewer == Viewer::Operator
                        && let Value::Object(fields) = &mut value
                    {
                        fields.insert("tenant".into(), Value::String(tenant.0));
                    }
                    value
                })
                .collect();
            Json(entries).into_response()
        }
        Err(refused) => refused.into_response(),
    }
}

/// `GET /api/jobs/{id}`: `wmr status ID --json` (an id prefix, as there).
async fn job(
    State(web): State<Arc<Web>>,
    UrlPath(id): UrlPath<String>,
    headers: HeaderMap,
) -> Response {
    let wanted = id.clone();
    match inspect(&web, &headers, move |c, v| c.report_for(v, &wanted)).await {
        Ok((_, Some((_, report)))) => Json(report).into_response(),
        Ok((_, None)) => error(StatusCode::NOT_FOUND, &format!("job {id} not found")),
        Err(refused) => refused.into_response(),
    }
}

/// `GET /api/workers`: every worker the caller may see (not another
/// tenant's dedicated workers).
async fn workers(State(web): State<Arc<Web>>, headers: HeaderMap) -> Response {
    match inspect(&web, &headers, |c, v| c.workers_for(v)).await {
        Ok((_, workers)) => Json(workers).into_response(),
        Err(refused) => refused.into_response(),
    }
}

/// `GET /metrics`, computed from the cluster at each scrape.
async fn metrics(State(web): State<Arc<Web>>, headers: HeaderMap) -> Response {
    match inspect(&web, &headers, |c, v| c.metrics_snapshot(v)).await {
        Ok((_, snapshot)) => match render(&snapshot) {
            Ok(text) => {
                let content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8";
                ([(header::CONTENT_TYPE, content_type)], text).into_response()
            }
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &format!("{e}")),
        },
        Err(refused) => refused.into_response(),
    }
}

#[derive(serde::Deserialize)]
struct Login {
    tenant: String,
    token: String,
}

/// `POST /login` (form fields `tenant`, `token`): checks them and sets the
/// session cookie (HttpOnly, SameSite=Strict; not Secure: plain HTTP on
/// loopback, or behind a TLS proxy). A browser's form (it accepts HTML) is
/// sent on to the jobs page, or shown the login page again with why.
async fn login(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Form(login): Form<Login>,
) -> Response {
    let html = pages::wants_html(&headers);
    let refused = |message: &str| match html {
        true => pages::login_page(StatusCode::UNAUTHORIZED, message),
        false => error(StatusCode::UNAUTHORIZED, message),
    };
    let pair = format!("{}:{}", login.tenant, login.token);
    let Some((tenant, token)) = split_pair(&pair) else {
        return refused(tenants::REFUSED);
    };
    match check(&web.state_dir, &tenant, &token) {
        Ok(viewer) => {
            let cookie = format!("{SESSION_COOKIE}={pair}; HttpOnly; SameSite=Strict; Path=/");
            let Ok(cookie) = HeaderValue::from_str(&cookie) else {
                return refused(tenants::REFUSED);
            };
            if html {
                let to_jobs = axum::response::Redirect::to("/");
                return ([(header::SET_COOKIE, cookie)], to_jobs).into_response();
            }
            let who = match viewer {
                Viewer::Operator => json!({ "operator": true }),
                Viewer::Tenant(t) => json!({ "tenant": t.0 }),
            };
            ([(header::SET_COOKIE, cookie)], Json(who)).into_response()
        }
        Err(message) => refused(&message),
    }
}

/// `POST /logout`: clears the session cookie (a browser then sees the
/// login page).
async fn logout(headers: HeaderMap) -> Response {
    let cookie = format!("{SESSION_COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0");
    let cookie = HeaderValue::from_str(&cookie).expect("a valid header");
    if pages::wants_html(&headers) {
        let to_login = axum::response::Redirect::to("/login");
        return ([(header::SET_COOKIE, cookie)], to_login).into_response();
    }
    ([(header::SET_COOKIE, cookie)], StatusCode::NO_CONTENT).into_response()
}

type Labels = Vec<(String, String)>;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The snapshot in the text format. No per-job labels: a scrape's series
/// stay few however many jobs the coordinator has run.
pub fn render(s: &MetricsSnapshot) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::default();
    let gauges = |registry: &mut Registry, name: &str, help: &str| {
        let family = Family::<Labels, Gauge>::default();
        registry.register(name, help, family.clone());
        family
    };
    let counter = |registry: &mut Registry, name: &str, help: &str, value: u64| {
        let counter = Counter::<u64>::default();
        counter.inc_by(value);
        registry.register(name, help, counter);
    };
    let jobs = gauges(&mut registry, "wmr_jobs", "Jobs by phase");
    for phase in ALL_PHASES {
        let name = format!("{phase:?}").to_lowercase();
        let n = s.jobs_by_phase.get(&phase).copied().unwrap_or(0);
        jobs.get_or_create(&labels(&[("phase", &name)]))
            .set(n as i64);
    }
    let attempts = Family::<Labels, Counter>::default();
    registry.register("wmr_attempts", "Attempts by outcome", attempts.clone());
    for (outcome, n) in &s.attempts_by_outcome {
        attempts
            .get_or_create(&labels(&[("outcome", outcome)]))
            .inc_by(*n);
    }
    let durations = Family::<Labels, Histogram, _>::new_with_constructor(|| {
        Histogram::new(exponential_buckets(0.01, 4.0, 9))
    });
    registry.register(
        "wmr_attempt_duration_seconds",
        "Durations of ended attempts by phase",
        durations.clone(),
    );
    for phase in ["map", "reduce"] {
        let histogram = durations.get_or_create(&labels(&[("phase", phase)]));
        for ms in s.attempt_ms.get(phase).into_iter().flatten() {
            histogram.observe(*ms as f64 / 1000.0);
        }
    }
    counter(
        &mut registry,
        "wmr_bytes_in",
        "Input bytes of committed attempts",
        s.bytes_in,
    );
    counter(
        &mut registry,
        "wmr_bytes_out",
        "Output bytes of committed attempts",
        s.bytes_out,
    );
    counter(
        &mut registry,
        "wmr_records_out",
        "Records out of committed attempts",
        s.records_out,
    );
    counter(
        &mut registry,
        "wmr_fuel_used",
        "Fuel used by all attempts",
        s.fuel_used,
    );
    counter(
        &mut registry,
        "wmr_dead_letters",
        "Records skipped (guest trapped)",
        s.dead_letters,
    );
    let queued = gauges(
        &mut registry,
        "wmr_jobs_queued",
        "Unfinished jobs by tenant",
    );
    for (tenant, n) in &s.queued_jobs {
        queued
            .get_or_create(&labels(&[("tenant", &tenant.0)]))
            .set(*n as i64);
    }
    let slots = gauges(&mut registry, "wmr_worker_slots", "Slots of each worker");
    let busy = gauges(
        &mut registry,
        "wmr_worker_slots_busy",
        "Busy slots of each worker",
    );
    let connected = gauges(&mut registry, "wmr_worker_connected", "1 if connected");
    for w in &s.workers {
        let id = w.id.to_string();
        let l = labels(&[("worker", &w.name), ("id", &id)]);
        slots.get_or_create(&l).set(i64::from(w.slots));
        busy.get_or_create(&l).set(i64::from(w.busy));
        connected.get_or_create(&l).set(i64::from(w.connected));
    }
    let mut text = String::new();
    encode(&mut text, &registry)?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(name: header::HeaderName, value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn credentials_come_from_the_header_or_the_cookie_and_malformed_ones_are_refused() {
        let pair = Some(("alice".to_string(), "abc".to_string()));
        assert_eq!(
            credentials(&headers(header::AUTHORIZATION, "Bearer alice:abc")),
            Ok(pair.clone())
        );
        let cookie = headers(header::COOKIE, "theme=dark; wmr_session=alice:abc");
        assert_eq!(credentials(&cookie), Ok(pair));
        assert_eq!(
            credentials(&headers(header::COOKIE, "theme=dark")),
            Ok(None)
        );
        assert_eq!(credentials(&HeaderMap::new()), Ok(None));
        for bad in [
            "Basic YWxpY2U6YWJj",
            "Bearer alice",
            "Bearer :abc",
            "Bearer a:b;c",
        ] {
            assert!(
                credentials(&headers(header::AUTHORIZATION, bad)).is_err(),
                "{bad}"
            );
        }
        assert!(credentials(&headers(header::COOKIE, "wmr_session=garbage")).is_err());
    }

    #[test]
    fn metrics_render_as_parseable_text_with_every_phase_and_outcome() {
        let mut snapshot = MetricsSnapshot::default();
        snapshot
            .jobs_by_phase
            .insert(crate::scheduler::Phase::Completed, 2);
        snapshot.attempts_by_outcome.insert("committed", 7);
        snapshot.attempt_ms.insert("map", vec![5, 5000]);
        let text = render(&snapshot).unwrap();
        assert!(text.contains("wmr_jobs{phase=\"completed\"} 2"), "{text}");
        assert!(text.contains("wmr_jobs{phase=\"submitted\"} 0"), "{text}");
        assert!(
            text.contains("wmr_attempts_total{outcome=\"committed\"} 7"),
            "{text}"
        );
        assert!(
            text.contains("wmr_attempt_duration_seconds_count{phase=\"map\"} 2"),
            "{text}"
        );
        assert!(text.trim_end().ends_with("# EOF"), "{text}");
    }
}

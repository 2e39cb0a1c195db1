//! The web UI: server-rendered pages (`/`, `/jobs/{id}`, `/workers`,
//! `/login`) from askama templates in `host/templates`, which escape every
//! value they insert (job parameters, error texts, labels are the users').
//! Pages read the `Cluster` through the same [`Inspector`] closures as the
//! JSON endpoints and keep nothing. Live pages carry `data-poll="on"`:
//! `/static/ui.js` re-fetches the page every second and swaps its `#live`
//! part, so there is one renderer (this module) and no JavaScript one.
//! A page refused for want of credentials redirects to `/login`.
//!
//! [`Inspector`]: crate::coordinator::Inspector

use super::{Refusal, SESSION_COOKIE, Web, inspect};
use crate::cluster::{JobDetail, JobRow, Viewer, WorkerDetail};
use crate::model::{AttemptFailure, TaskId, WorkerId};
use crate::scheduler::{AttemptOutcome, AttemptRecord, JobOutcome, Phase};
use crate::summary::human_duration;
use crate::wire::StatusReport;
use askama::Template;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Every outcome class a bar of the attempt timeline may have, in the
/// legend's order, with what it means.
pub const OUTCOME_CLASSES: [(&str, &str); 9] = [
    ("committed", "committed: its output is the task's"),
    (
        "dead-lettered",
        "committed, with records skipped (dead letters)",
    ),
    ("failed", "failed: the guest trapped, erred or hit a limit"),
    (
        "stale",
        "stale: finished after its lease ran out; discarded",
    ),
    ("lost", "lost: its worker went away or missed its lease"),
    ("output-lost", "committed, then its map output was lost"),
    ("cancelled", "cancelled with its job"),
    (
        "superseded",
        "superseded: the other attempt of a speculated task won",
    ),
    ("running", "running"),
];

/// The timeline class of an attempt (see [`OUTCOME_CLASSES`]).
pub fn outcome_class(record: &AttemptRecord) -> &'static str {
    match &record.outcome {
        AttemptOutcome::Running => "running",
        AttemptOutcome::Committed
            if record
                .stats
                .as_ref()
                .is_some_and(|s| !s.dead_letters.is_empty()) =>
        {
            "dead-lettered"
        }
        AttemptOutcome::Committed => "committed",
        AttemptOutcome::Failed(AttemptFailure::Cancelled) => "cancelled",
        AttemptOutcome::Failed(_) => "failed",
        AttemptOutcome::RejectedStale => "stale",
        AttemptOutcome::Lost => "lost",
        AttemptOutcome::OutputLost => "output-lost",
        AttemptOutcome::Superseded => "superseded",
    }
}

/// Content-Security-Policy of every page: no inline script or style, so
/// markup that slipped past escaping still could not run.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

const UI_CSS: &str = include_str!("../../templates/ui.css");
const UI_JS: &str = include_str!("../../templates/ui.js");

pub(super) async fn css() -> Response {
    static_asset("text/css; charset=utf-8", UI_CSS)
}

pub(super) async fn js() -> Response {
    static_asset("text/javascript; charset=utf-8", UI_JS)
}

fn static_asset(content_type: &'static str, body: &'static str) -> Response {
    let mut response = ([(header::CONTENT_TYPE, content_type)], body).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// A rendered page with the UI's headers.
fn page(status: StatusCode, template: &impl Template) -> Response {
    match template.render() {
        Ok(html) => {
            let mut response = (status, Html(html)).into_response();
            let headers = response.headers_mut();
            headers.insert(
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(CSP),
            );
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            headers.insert(
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            );
            response
        }
        Err(e) => {
            tracing::error!("rendering a page: {e}");
            (StatusCode::INTERNAL_SERVER_ERROR, "rendering failed").into_response()
        }
    }
}

/// The header every page shows: who is looking, and a sign-out button when
/// a session cookie is there.
pub struct Chrome {
    pub who: String,
    pub signed_in: bool,
}

impl Chrome {
    fn of(viewer: &Viewer, headers: &HeaderMap) -> Chrome {
        let who = match viewer {
            Viewer::Operator => "operator (every tenant)".to_string(),
            Viewer::Tenant(t) => format!("tenant {}", t.0),
        };
        Chrome {
            who,
            signed_in: has_session_cookie(headers),
        }
    }

    fn anonymous() -> Chrome {
        Chrome {
            who: String::new(),
            signed_in: false,
        }
    }
}

fn has_session_cookie(headers: &HeaderMap) -> bool {
    let prefix = format!("{SESSION_COOKIE}=");
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .any(|c| c.trim().starts_with(&prefix))
}

/// What a page answers when the request is refused: no or bad credentials
/// go to the login page, anything else is an error page.
fn refused(refusal: Refusal) -> Response {
    let Refusal(status, message) = refusal;
    if status == StatusCode::UNAUTHORIZED {
        tracing::debug!("page refused: {message}");
        return Redirect::to("/login").into_response();
    }
    error_page(status, &message)
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage {
    chrome: Chrome,
    status: u16,
    title: String,
    message: String,
}

pub(super) fn error_page(status: StatusCode, message: &str) -> Response {
    let template = ErrorPage {
        chrome: Chrome::anonymous(),
        status: status.as_u16(),
        title: status.canonical_reason().unwrap_or("error").to_string(),
        message: message.to_string(),
    };
    page(status, &template)
}

/// Does the client want HTML (a browser) rather than JSON?
pub(super) fn wants_html(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/html"))
}

// ---- times and numbers as people read them

/// A wall-clock time (unix ms) in the coordinator's time zone.
fn local_time(unix_ms: u64) -> String {
    let zone = jiff::tz::TimeZone::system();
    match jiff::Timestamp::from_millisecond(unix_ms as i64) {
        Ok(t) => t.to_zoned(zone).strftime("%Y-%m-%d %H:%M:%S").to_string(),
        Err(_) => format!("{unix_ms} ms since 1970"),
    }
}

fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn ms(ms: u64) -> String {
    human_duration(Duration::from_millis(ms))
}

/// `1234567` → `1 234 567`, `2048` bytes → `2.0 KiB`.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    match unit {
        0 => format!("{n} B"),
        _ => format!("{value:.1} {}", UNITS[unit]),
    }
}

fn phase_name(phase: Phase) -> String {
    format!("{phase:?}")
}

fn outcome_text(outcome: &Option<JobOutcome>) -> String {
    match outcome {
        None => String::new(),
        Some(JobOutcome::Completed) => "completed".into(),
        Some(JobOutcome::Cancelled) => "cancelled".into(),
        Some(JobOutcome::Failed(why)) => format!("failed: {why}"),
    }
}

// ---- the jobs page

pub struct JobLine {
    pub tenant: String,
    pub job: String,
    pub phase: String,
    pub committed: usize,
    pub running: usize,
    pub tasks: usize,
    pub started: String,
    pub duration: String,
    pub outcome: String,
}

#[derive(Template)]
#[template(path = "jobs.html")]
struct JobsPage {
    chrome: Chrome,
    jobs: Vec<JobLine>,
}

fn job_line(row: JobRow, now: u64) -> JobLine {
    let listing = row.listing;
    let started = listing.submitted_unix_ms;
    let until = row.ended_unix_ms.unwrap_or(now);
    JobLine {
        tenant: row.tenant.0,
        job: listing.job,
        phase: phase_name(listing.phase),
        committed: listing.committed,
        running: row.running,
        tasks: listing.tasks,
        started: local_time(started),
        duration: ms(until.saturating_sub(started)),
        outcome: outcome_text(&listing.outcome),
    }
}

/// `GET /`: the viewer's jobs, newest first.
pub(super) async fn jobs(State(web): State<Arc<Web>>, headers: HeaderMap) -> Response {
    match inspect(&web, &headers, |c, v| c.rows_for(v)).await {
        Ok((viewer, rows)) => {
            let now = now_unix_ms();
            let mut jobs: Vec<JobLine> = rows.into_iter().map(|r| job_line(r, now)).collect();
            jobs.reverse();
            let template = JobsPage {
                chrome: Chrome::of(&viewer, &headers),
                jobs,
            };
            page(StatusCode::OK, &template)
        }
        Err(refusal) => refused(refusal),
    }
}

// ---- the job page

/// One row of the attempt timeline: a slot of a worker.
pub struct Lane {
    pub y: u32,
    pub label: String,
}

/// One attempt on the timeline.
pub struct Bar {
    pub x: f64,
    pub y: u32,
    pub width: f64,
    pub outcome: &'static str,
    pub task: String,
    pub epoch: u32,
    pub worker: String,
    /// The hover text: epoch, times, fuel, bytes, error.
    pub title: String,
}

pub struct Tick {
    pub x: f64,
    pub label: String,
}

/// The attempt timeline, laid out: one lane per worker slot, attempts
/// packed into the first lane of their worker free when they started.
pub struct Timeline {
    pub width: u32,
    pub height: u32,
    pub lanes: Vec<Lane>,
    pub bars: Vec<Bar>,
    pub ticks: Vec<Tick>,
}

const LABEL_WIDTH: f64 = 150.0;
const PLOT_WIDTH: f64 = 830.0;
const AXIS_HEIGHT: u32 = 24;
const LANE_HEIGHT: u32 = 22;

fn worker_names(report: &StatusReport) -> BTreeMap<WorkerId, (String, u32)> {
    report
        .workers
        .iter()
        .map(|w| (w.id, (w.name.clone(), w.slots)))
        .collect()
}

/// Lay out `report`'s attempts; running ones end at `now_ms` (ms since the
/// job's start, as the attempt log's times are).
pub fn timeline(report: &StatusReport, now_ms: u64) -> Timeline {
    let names = worker_names(report);
    let end_of = |r: &AttemptRecord| r.ended_ms.unwrap_or(now_ms).max(r.started_ms);
    let span = report
        .attempt_log
        .iter()
        .map(end_of)
        .max()
        .unwrap_or(0)
        .max(1);
    let scale = PLOT_WIDTH / span as f64;
    let mut by_worker: BTreeMap<WorkerId, Vec<&AttemptRecord>> = BTreeMap::new();
    for record in &report.attempt_log {
        by_worker.entry(record.worker).or_default().push(record);
    }
    let mut lanes = Vec::new();
    let mut bars = Vec::new();
    for (worker, mut records) in by_worker {
        records.sort_by_key(|r| (r.started_ms, r.task, r.epoch));
        let (name, slots) = names
            .get(&worker)
            .cloned()
            .unwrap_or_else(|| (worker.to_string(), 1));
        // Each lane's end; an attempt takes the first lane free at its start.
        let mut lane_ends: Vec<u64> = vec![0; slots.max(1) as usize];
        let first_lane = lanes.len();
        for record in records {
            let lane = match lane_ends.iter().position(|&end| end <= record.started_ms) {
                Some(lane) => lane,
                None => {
                    lane_ends.push(0);
                    lane_ends.len() - 1
                }
            };
            lane_ends[lane] = end_of(record).max(record.started_ms + 1);
            let y = AXIS_HEIGHT + (first_lane + lane) as u32 * LANE_HEIGHT;
            let width = (end_of(record) - record.started_ms) as f64 * scale;
            bars.push(Bar {
                x: LABEL_WIDTH + record.started_ms as f64 * scale,
                y: y + 3,
                width: width.max(3.0),
                outcome: outcome_class(record),
                task: record.task.to_string(),
                epoch: record.epoch.0,
                worker: name.clone(),
                title: hover(record, &name, now_ms),
            });
        }
        for lane in 0..lane_ends.len() {
            // Lanes past the worker's slots hold attempts whose logged times
            // overlap (a commit's end may follow the next assignment).
            let label = match lane < slots.max(1) as usize {
                true => format!("{name} · slot {}", lane + 1),
                false => format!("{name} · overlap"),
            };
            lanes.push(Lane {
                y: AXIS_HEIGHT + (first_lane + lane) as u32 * LANE_HEIGHT,
                label,
            });
        }
    }
    let ticks = (0..=4)
        .map(|k| Tick {
            x: LABEL_WIDTH + PLOT_WIDTH * k as f64 / 4.0,
            label: format!("+{}", ms(span * k / 4)),
        })
        .collect();
    Timeline {
        width: (LABEL_WIDTH + PLOT_WIDTH) as u32 + 30,
        height: AXIS_HEIGHT + lanes.len().max(1) as u32 * LANE_HEIGHT + 4,
        lanes,
        bars,
        ticks,
    }
}

fn failure(record: &AttemptRecord) -> Option<String> {
    match &record.outcome {
        AttemptOutcome::Failed(why) => Some(why.to_string()),
        _ => None,
    }
}

/// The text shown on hovering an attempt's bar.
fn hover(record: &AttemptRecord, worker: &str, now_ms: u64) -> String {
    let class = outcome_class(record);
    let mut text = format!(
        "{} {} on {worker}: {class}\nstarted +{}, ",
        record.task,
        record.epoch,
        ms(record.started_ms)
    );
    match record.ended_ms {
        Some(end) => text.push_str(&format!(
            "ended +{} ({})",
            ms(end),
            ms(end.saturating_sub(record.started_ms))
        )),
        None => text.push_str(&format!(
            "running for {}",
            ms(now_ms.saturating_sub(record.started_ms))
        )),
    }
    if let Some(stats) = &record.stats {
        text.push_str(&format!(
            "\nfuel {}, bytes in {}, out {}, records out {}",
            stats.fuel_used,
            bytes(stats.bytes_in),
            bytes(stats.bytes_out),
            stats.records_out
        ));
        if !stats.dead_letters.is_empty() {
            text.push_str(&format!("\ndead letters: {}", stats.dead_letters.len()));
        }
    }
    if let Some(error) = failure(record) {
        text.push_str(&format!("\nerror: {error}"));
    }
    text
}

pub struct PhaseLine {
    pub phase: String,
    pub at: String,
    pub after: String,
    pub reason: String,
}

pub struct TaskLine {
    pub task: String,
    pub attempts: usize,
    pub outcome: &'static str,
    pub committed: String,
    pub error: String,
}

pub struct TotalsLine {
    pub scope: String,
    pub attempts: u64,
    pub committed: u64,
    pub wall: String,
    pub fuel: u64,
    pub bytes_in: String,
    pub bytes_out: String,
    pub records_out: u64,
}

pub struct DeadLine {
    pub file: String,
    pub offset: u64,
    pub record: String,
    pub message: String,
}

#[derive(Template)]
#[template(path = "job.html")]
struct JobPage {
    chrome: Chrome,
    job: String,
    tenant: String,
    phase: String,
    outcome: String,
    finished: bool,
    committed: usize,
    running: usize,
    pending: usize,
    tasks: usize,
    waiting: String,
    phases: Vec<PhaseLine>,
    timeline: Timeline,
    legend: Vec<(&'static str, &'static str)>,
    task_lines: Vec<TaskLine>,
    totals: Vec<TotalsLine>,
    counters: Vec<(String, i64)>,
    dead_letters: Vec<DeadLine>,
    params: Vec<(String, String)>,
    settings: Vec<(&'static str, String)>,
}

fn tasks(report: &StatusReport) -> Vec<TaskLine> {
    let names = worker_names(report);
    let name_of = |worker: WorkerId| match names.get(&worker) {
        Some((name, _)) => name.clone(),
        None => worker.to_string(),
    };
    let mut by_task: BTreeMap<TaskId, Vec<&AttemptRecord>> = BTreeMap::new();
    for record in &report.attempt_log {
        by_task.entry(record.task).or_default().push(record);
    }
    by_task
        .into_iter()
        .map(|(task, records)| {
            let last = records
                .iter()
                .max_by_key(|r| r.epoch)
                .expect("a task listed has an attempt");
            let committed = records
                .iter()
                .find(|r| r.outcome == AttemptOutcome::Committed)
                .map(|r| format!("{} on {}", r.epoch, name_of(r.worker)))
                .unwrap_or_default();
            let error = records
                .iter()
                .rev()
                .find_map(|r| failure(r))
                .unwrap_or_default();
            TaskLine {
                task: task.to_string(),
                attempts: records.len(),
                outcome: outcome_class(last),
                committed,
                error,
            }
        })
        .collect()
}

fn job_page(detail: JobDetail, chrome: Chrome) -> JobPage {
    let report = &detail.report;
    let submitted = report.transitions.first().map_or(0, |t| t.unix_ms);
    let finished = report.outcome.is_some();
    let now_ms = match (finished, report.transitions.last()) {
        (true, Some(last)) => last.unix_ms.saturating_sub(submitted),
        _ => now_unix_ms().saturating_sub(submitted),
    };
    let phases = report
        .transitions
        .iter()
        .map(|t| PhaseLine {
            phase: phase_name(t.phase),
            at: local_time(t.unix_ms),
            after: format!("+{}", ms(t.unix_ms.saturating_sub(submitted))),
            reason: t.reason.clone(),
        })
        .collect();
    let totals = ["job", "map", "reduce"]
        .iter()
        .filter_map(|scope| {
            let t = report.totals.get(*scope)?;
            Some(TotalsLine {
                scope: scope.to_string(),
                attempts: t.attempts,
                committed: t.committed,
                wall: ms(t.wall_ms),
                fuel: t.fuel_used,
                bytes_in: bytes(t.bytes_in),
                bytes_out: bytes(t.bytes_out),
                records_out: t.records_out,
            })
        })
        .collect();
    let counters = report
        .totals
        .get("job")
        .map(|t| t.counters.clone().into_iter().collect())
        .unwrap_or_default();
    let request = &detail.request;
    let limits = &request.limits;
    let require: Vec<String> = request
        .placement
        .require
        .iter()
        .map(|r| r.to_string())
        .collect();
    let settings = vec![
        ("inputs", request.inputs.join(", ")),
        ("output", request.output.display().to_string()),
        ("output format", format!("{:?}", request.output_format)),
        ("reducers", request.reducers.to_string()),
        ("split size", bytes(request.split_bytes)),
        ("max attempts", request.max_attempts.to_string()),
        ("fuel per attempt", limits.fuel.to_string()),
        ("memory per attempt", bytes(limits.memory_bytes)),
        ("timeout per attempt", ms(limits.timeout_ms)),
        ("output per attempt", bytes(limits.output_bytes)),
        ("job output", bytes(limits.job_output_bytes)),
        ("max dead letters", limits.max_dead_letters.to_string()),
        ("clock granted", limits.clock.to_string()),
        (
            "sort buffer",
            bytes(request.shuffle_settings.sort_buffer_bytes),
        ),
        (
            "shuffle",
            format!(
                "{:?}, {:?}",
                request.shuffle_settings.compression, request.shuffle_settings.partitioner
            ),
        ),
        ("requires", require.join(", ")),
    ];
    JobPage {
        chrome,
        job: report.job.clone(),
        tenant: detail.tenant.0.clone(),
        phase: phase_name(report.phase),
        outcome: outcome_text(&report.outcome),
        finished,
        committed: report.committed,
        running: report.running,
        pending: report.pending,
        tasks: report.tasks,
        waiting: report.waiting.clone().unwrap_or_default(),
        phases,
        timeline: timeline(report, now_ms),
        legend: OUTCOME_CLASSES.to_vec(),
        task_lines: tasks(report),
        totals,
        counters,
        dead_letters: detail
            .dead_letters
            .iter()
            .map(|d| DeadLine {
                file: d.file.clone(),
                offset: d.offset,
                record: d.record.clone(),
                message: d.message.clone(),
            })
            .collect(),
        params: request
            .params
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        settings,
    }
}

/// `GET /jobs/{id}`: one job (an id prefix); another tenant's or an unknown
/// job is a 404 page.
pub(super) async fn job(
    State(web): State<Arc<Web>>,
    UrlPath(id): UrlPath<String>,
    headers: HeaderMap,
) -> Response {
    let wanted = id.clone();
    match inspect(&web, &headers, move |c, v| c.detail_for(v, &wanted)).await {
        Ok((viewer, Some(detail))) => {
            let template = job_page(detail, Chrome::of(&viewer, &headers));
            page(StatusCode::OK, &template)
        }
        Ok((_, None)) => error_page(StatusCode::NOT_FOUND, &format!("job {id} not found")),
        Err(refusal) => refused(refusal),
    }
}

// ---- the workers page

pub struct WorkerLine {
    pub id: String,
    pub name: String,
    pub labels: String,
    pub pool: String,
    pub slots: u32,
    pub running: u32,
    pub heard: String,
    pub state: &'static str,
}

#[derive(Template)]
#[template(path = "workers.html")]
struct WorkersPage {
    chrome: Chrome,
    workers: Vec<WorkerLine>,
}

fn worker_line(w: WorkerDetail, now: u64) -> WorkerLine {
    let state = match (w.info.connected, w.draining) {
        (false, _) => "lost",
        (true, true) => "draining",
        (true, false) => "connected",
    };
    let labels: Vec<String> = w
        .info
        .labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    WorkerLine {
        id: w.info.id.to_string(),
        name: w.info.name,
        labels: labels.join(", "),
        pool: w.info.pool.map(|t| t.0).unwrap_or_default(),
        slots: w.info.slots,
        running: w.running,
        heard: format!("{} ago", ms(now.saturating_sub(w.last_heard_unix_ms))),
        state,
    }
}

/// `GET /workers`: the workers the viewer may see.
pub(super) async fn workers(State(web): State<Arc<Web>>, headers: HeaderMap) -> Response {
    match inspect(&web, &headers, |c, v| c.worker_details_for(v)).await {
        Ok((viewer, details)) => {
            let now = now_unix_ms();
            let template = WorkersPage {
                chrome: Chrome::of(&viewer, &headers),
                workers: details.into_iter().map(|w| worker_line(w, now)).collect(),
            };
            page(StatusCode::OK, &template)
        }
        Err(refusal) => refused(refusal),
    }
}

// ---- the login page

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    chrome: Chrome,
    error: String,
}

/// `GET /login`: the form that posts to `POST /login`.
pub(super) async fn login_form() -> Response {
    login_page(StatusCode::OK, "")
}

pub(super) fn login_page(status: StatusCode, error: &str) -> Response {
    let template = LoginPage {
        chrome: Chrome::anonymous(),
        error: error.to_string(),
    };
    page(status, &template)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{AttemptEpoch, AttemptStats, DeadLetter};

    fn record(task: u32, epoch: u32, worker: u32, span: (u64, Option<u64>)) -> AttemptRecord {
        AttemptRecord {
            task: TaskId::Map(task),
            epoch: AttemptEpoch(epoch),
            worker: WorkerId(worker),
            started_ms: span.0,
            ended_ms: span.1,
            outcome: AttemptOutcome::Committed,
            stats: None,
            speculative: false,
        }
    }

    fn report(log: Vec<AttemptRecord>) -> StatusReport {
        StatusReport {
            job: "0123abcd".into(),
            phase: Phase::Mapping,
            outcome: None,
            tasks: 4,
            committed: 0,
            running: 0,
            pending: 0,
            waiting: None,
            attempt_log: log,
            workers: Vec::new(),
            transitions: Vec::new(),
            totals: BTreeMap::new(),
        }
    }

    #[test]
    fn overlapping_attempts_of_a_worker_take_separate_lanes_and_later_ones_reuse_them() {
        let log = vec![
            record(0, 1, 1, (0, Some(100))),
            record(1, 1, 1, (50, Some(150))),
            record(2, 1, 1, (120, None)),
            record(3, 1, 2, (0, Some(10))),
        ];
        let t = timeline(&report(log), 200);
        let ys: Vec<u32> = t.bars.iter().map(|b| b.y).collect();
        // w1: lanes 0, 1, then lane 0 again (free since 100); w2: lane 2.
        assert_eq!(ys[0], ys[2]);
        assert_ne!(ys[0], ys[1]);
        assert_eq!(t.lanes.len(), 3);
        assert!(ys[3] > ys[1]);
        // The running attempt reaches the right edge (now = the span).
        let running = &t.bars[2];
        assert!((running.x + running.width - (LABEL_WIDTH + PLOT_WIDTH)).abs() < 0.01);
    }

    #[test]
    fn every_outcome_has_its_class_and_the_hover_names_epoch_times_fuel_and_error() {
        let mut r = record(0, 3, 1, (1000, Some(3500)));
        r.outcome = AttemptOutcome::Failed(AttemptFailure::Trap("<b>boom</b>".into()));
        r.stats = Some(AttemptStats {
            bytes_in: 2048,
            fuel_used: 77,
            ..AttemptStats::default()
        });
        assert_eq!(outcome_class(&r), "failed");
        let text = hover(&r, "w1", 0);
        assert_eq!(
            text,
            "m-00000 a3 on w1: failed\nstarted +1.0 s, ended +3.5 s (2.5 s)\n\
             fuel 77, bytes in 2.0 KiB, out 0 B, records out 0\nerror: guest trapped: <b>boom</b>"
        );
        r.outcome = AttemptOutcome::Failed(AttemptFailure::Cancelled);
        assert_eq!(outcome_class(&r), "cancelled");
        r.outcome = AttemptOutcome::RejectedStale;
        assert_eq!(outcome_class(&r), "stale");
        r.outcome = AttemptOutcome::Committed;
        assert_eq!(outcome_class(&r), "committed");
        r.stats.as_mut().unwrap().dead_letters.push(DeadLetter {
            file: "f".into(),
            offset: 0,
            record: "r".into(),
            message: "m".into(),
        });
        assert_eq!(outcome_class(&r), "dead-lettered");
        let classes: Vec<&str> = OUTCOME_CLASSES.iter().map(|(c, _)| *c).collect();
        for outcome in [
            AttemptOutcome::Lost,
            AttemptOutcome::OutputLost,
            AttemptOutcome::Running,
        ] {
            r.outcome = outcome;
            assert!(classes.contains(&outcome_class(&r)));
        }
    }

    #[test]
    fn a_hostile_parameter_is_escaped_in_the_page() {
        let chrome = Chrome {
            who: "tenant <i>x</i>".into(),
            signed_in: true,
        };
        let template = LoginPage {
            chrome,
            error: "<script>alert(1)</script>".into(),
        };
        let html = template.render().unwrap();
        assert!(
            !html.contains("<script>alert") && !html.contains("<i>x"),
            "{html}"
        );
        assert!(
            html.contains("&#60;script&#62;alert(1)&#60;/script&#62;"),
            "{html}"
        );
    }
}

//! The client side of `wmr deploy`, `wmr status` and `wmr cancel`.

use crate::model::TenantId;
use crate::summary::{JobSummary, Progress};
use crate::transport::{self, Channel};
use crate::wire::{ClientReply, ClientRequest, JobRequest, Open, StatusReport};
use anyhow::bail;
use std::net::SocketAddr;
use std::time::Duration;

/// How to reach a coordinator.
#[derive(Clone, Debug)]
pub struct Remote {
    pub coordinator: SocketAddr,
    pub fingerprint: String,
    pub tenant: TenantId,
    /// The tenant's token (empty in development mode).
    pub token: String,
    /// Give up when no coordinator answers within this (`--connect-timeout`).
    pub connect_timeout: Duration,
}

/// Long enough to ride out a coordinator paused for a few seconds.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

async fn open(
    remote: &Remote,
    request: ClientRequest,
) -> anyhow::Result<(quinn::Endpoint, Channel)> {
    let addr = remote.coordinator;
    let connect = transport::connect(addr, &remote.fingerprint, IDLE_TIMEOUT);
    let Ok(connected) = tokio::time::timeout(remote.connect_timeout, connect).await else {
        bail!(
            "no coordinator answered at {addr} within {} (--connect-timeout); is it running? It writes the address it listens on to STATE/coordinator.addr",
            crate::summary::human_duration(remote.connect_timeout)
        );
    };
    let (endpoint, connection) = connected?;
    let mut channel = Channel::open(&connection).await?;
    channel
        .write(&Open::Client {
            tenant: remote.tenant.clone(),
            token: remote.token.clone(),
            request,
        })
        .await?;
    Ok((endpoint, channel))
}

/// Submit a job and return its id once the coordinator has accepted it
/// (`wmr deploy --detach`); the job runs on without the client.
pub async fn submit(remote: &Remote, request: JobRequest) -> anyhow::Result<String> {
    let (endpoint, mut channel) = open(remote, ClientRequest::Submit(Box::new(request))).await?;
    let job = match channel.read::<ClientReply>().await? {
        Some(ClientReply::Submitted { job }) => job,
        Some(ClientReply::Error(message)) => bail!("{message}"),
        Some(other) => bail!("unexpected reply from the coordinator: {other:?}"),
        None => bail!("the coordinator closed the stream before accepting the job"),
    };
    endpoint.close(0u32.into(), b"detached");
    Ok(job)
}

/// Submit a job and follow it to the end. `on_submitted` gets the job id,
/// `on_progress` every progress report. If the coordinator goes away after
/// accepting the job (it restarts from its durable state), reconnect and
/// keep following the same job.
pub async fn deploy(
    remote: &Remote,
    request: JobRequest,
    on_submitted: &mut dyn FnMut(&str),
    on_progress: &mut dyn FnMut(Progress),
) -> anyhow::Result<JobSummary> {
    let (mut _endpoint, mut channel) =
        open(remote, ClientRequest::Submit(Box::new(request))).await?;
    let mut job: Option<String> = None;
    loop {
        let lost = loop {
            let reply = match channel.read::<ClientReply>().await {
                Ok(Some(reply)) => reply,
                Ok(None) => break "the coordinator closed the stream".to_string(),
                Err(e) => break e.to_string(),
            };
            match reply {
                ClientReply::Submitted { job: id } => {
                    on_submitted(&id);
                    job = Some(id);
                }
                ClientReply::Progress {
                    phase,
                    committed,
                    running,
                    total,
                } => on_progress(Progress {
                    phase,
                    committed,
                    running,
                    total,
                }),
                ClientReply::Done(summary) => return Ok(*summary),
                ClientReply::Error(message) => bail!("{message}"),
                other => bail!("unexpected reply from the coordinator: {other:?}"),
            }
        };
        let Some(id) = &job else {
            bail!("{lost} before the job was accepted");
        };
        tracing::warn!("lost the coordinator ({lost}); following job {id} again");
        (_endpoint, channel) = reconnect(remote, ClientRequest::Watch(id.clone())).await?;
    }
}

/// Open a request again, with capped backoff, for up to `RECONNECT_FOR`.
async fn reconnect(
    remote: &Remote,
    request: ClientRequest,
) -> anyhow::Result<(quinn::Endpoint, Channel)> {
    const RECONNECT_FOR: Duration = Duration::from_secs(600);
    let deadline = tokio::time::Instant::now() + RECONNECT_FOR;
    let mut backoff = Duration::from_millis(100);
    loop {
        match open(remote, request.clone()).await {
            Ok(opened) => return Ok(opened),
            Err(e) if tokio::time::Instant::now() + backoff > deadline => {
                return Err(e.context(format!("the coordinator stayed away for {RECONNECT_FOR:?}")));
            }
            Err(_) => {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// Every job the coordinator knows.
pub async fn jobs(remote: &Remote) -> anyhow::Result<Vec<crate::wire::JobListing>> {
    let (_endpoint, mut channel) = open(remote, ClientRequest::Jobs).await?;
    match channel.expect::<ClientReply>().await? {
        ClientReply::Jobs(jobs) => Ok(jobs),
        ClientReply::Error(message) => bail!("{message}"),
        other => bail!("unexpected reply from the coordinator: {other:?}"),
    }
}

/// Run a failed or cancelled job again.
pub async fn resume(remote: &Remote, job: String) -> anyhow::Result<String> {
    let (_endpoint, mut channel) = open(remote, ClientRequest::Resume(job)).await?;
    match channel.expect::<ClientReply>().await? {
        ClientReply::Submitted { job } => Ok(job),
        ClientReply::Error(message) => bail!("{message}"),
        other => bail!("unexpected reply from the coordinator: {other:?}"),
    }
}

pub async fn status(remote: &Remote, job: Option<String>) -> anyhow::Result<StatusReport> {
    let (_endpoint, mut channel) = open(remote, ClientRequest::Status(job)).await?;
    match channel.expect::<ClientReply>().await? {
        ClientReply::Status(report) => Ok(*report),
        ClientReply::Error(message) => bail!("{message}"),
        other => bail!("unexpected reply from the coordinator: {other:?}"),
    }
}

pub async fn cancel(remote: &Remote, job: String) -> anyhow::Result<String> {
    let (_endpoint, mut channel) = open(remote, ClientRequest::Cancel(job)).await?;
    match channel.expect::<ClientReply>().await? {
        ClientReply::Cancelled { job } => Ok(job),
        ClientReply::Error(message) => bail!("{message}"),
        other => bail!("unexpected reply from the coordinator: {other:?}"),
    }
}

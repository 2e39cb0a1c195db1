//! The client side of `wmr deploy`, `wmr status` and `wmr cancel`.

use crate::local::{JobSummary, Progress};
use crate::protocol::TenantId;
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
}

/// Long enough to ride out a coordinator paused for a few seconds.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

async fn open(
    remote: &Remote,
    request: ClientRequest,
) -> anyhow::Result<(quinn::Endpoint, Channel)> {
    let (endpoint, connection) =
        transport::connect(remote.coordinator, &remote.fingerprint, IDLE_TIMEOUT).await?;
    let mut channel = Channel::open(&connection).await?;
    channel
        .write(&Open::Client {
            tenant: remote.tenant.clone(),
            request,
        })
        .await?;
    Ok((endpoint, channel))
}

/// Submit a job and follow it to the end. `on_submitted` gets the job id,
/// `on_progress` every progress report.
pub async fn deploy(
    remote: &Remote,
    request: JobRequest,
    on_submitted: &mut dyn FnMut(&str),
    on_progress: &mut dyn FnMut(Progress),
) -> anyhow::Result<JobSummary> {
    let (_endpoint, mut channel) = open(remote, ClientRequest::Submit(Box::new(request))).await?;
    loop {
        match channel.read::<ClientReply>().await? {
            Some(ClientReply::Submitted { job }) => on_submitted(&job),
            Some(ClientReply::Progress {
                phase,
                committed,
                running,
                total,
            }) => on_progress(Progress {
                phase,
                committed,
                running,
                total,
            }),
            Some(ClientReply::Done(summary)) => return Ok(*summary),
            Some(ClientReply::Error(message)) => bail!("{message}"),
            Some(other) => bail!("unexpected reply from the coordinator: {other:?}"),
            None => bail!("the coordinator closed the connection before the job ended"),
        }
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

//! Map outputs in an object store: `wmr coordinator --shuffle-store
//! s3://bucket/prefix`, for clusters whose workers share no disk and come
//! and go.
//!
//! A map attempt writes its output (the format of [`crate::intermediate`],
//! a CRC32C per block) in the worker's private work dir, then uploads it to
//! a key that names its job, task and epoch, under its tenant, and only
//! then reports success:
//!
//! ```text
//! <prefix>/<tenant>/job-<id>/m-00003.a2          an attempt's output (whole, once uploaded)
//! <prefix>/<tenant>/job-<id>/m-00003.a2.upload   while a large one is uploading: its upload id
//! ```
//!
//! The key is the attempt's own, so a stale attempt cannot overwrite the
//! committed one; the coordinator's commit of a map task publishes nothing
//! (it is the attempt log that says which epoch is committed, I2), and a
//! reduce assignment names the committed epoch of every map task. A
//! reducer reads the header (one ranged GET) and then its partition (ranged
//! GETs of at most [`RANGE_BYTES`]) into its scratch dir, and checks every
//! block as it merges: a bad header or block is a `FetchFailed`, and that
//! map task runs again (I11). A committed output stays readable when the
//! worker that wrote it is gone, so a lost worker costs only what it was
//! running (unlike worker-local outputs, I8).
//!
//! Discarded attempts' objects are deleted by the coordinator; at the job's
//! end (commit, failure, cancel) the whole `job-<id>/` prefix goes, with
//! any upload a killed worker left open (its `.upload` marker names it).
//! Credentials and endpoint are each process's own (`AWS_*`,
//! `--s3-endpoint`, see [`crate::storage`]).

use crate::model::{AttemptEpoch, JobId, TaskId, TenantId};
use crate::storage::{self, S3Url};
use anyhow::Context as _;
use std::io::Write as _;
use std::path::Path;

/// Bytes per uploaded part and per ranged GET: one is held in memory at a
/// time (S3 wants parts of at least 5 MiB, but the last).
pub const RANGE_BYTES: usize = 8 * 1024 * 1024;
const UPLOAD_MARKER: &str = ".upload";

/// One job's map outputs in the store.
#[derive(Clone, Debug)]
pub struct ShuffleObjects {
    /// `<prefix>/<tenant>/job-<id>/`
    job_prefix: S3Url,
}

impl ShuffleObjects {
    /// The objects of `job` (of `tenant`) under the `--shuffle-store` root.
    pub fn new(root: &str, tenant: &TenantId, job: JobId) -> anyhow::Result<Self> {
        let root = S3Url::parse(root)?;
        Ok(ShuffleObjects {
            job_prefix: root.join(&format!("{}/job-{}/", tenant.0, job.0.simple())),
        })
    }

    pub fn job_prefix(&self) -> &S3Url {
        &self.job_prefix
    }

    /// Where an attempt's map output is uploaded.
    pub fn attempt_object(&self, task: TaskId, epoch: AttemptEpoch) -> S3Url {
        self.job_prefix.join(&format!("{task}.{epoch}"))
    }

    fn marker(&self, task: TaskId, epoch: AttemptEpoch) -> S3Url {
        self.job_prefix
            .join(&format!("{task}.{epoch}{UPLOAD_MARKER}"))
    }

    /// Upload a finished map output from `local`: one PUT, or for a large
    /// one a multipart upload (its id kept in a marker object first, so
    /// that the job's clean-up can abort it if this worker dies mid-way).
    /// Memory: one part.
    pub fn upload(&self, task: TaskId, epoch: AttemptEpoch, local: &Path) -> anyhow::Result<()> {
        let object = self.attempt_object(task, epoch);
        let what = || format!("uploading the map output to {object}");
        let len = std::fs::metadata(local)
            .with_context(|| format!("reading {}", local.display()))?
            .len();
        if len as usize <= storage::UPLOAD_PART_BYTES {
            let bytes =
                std::fs::read(local).with_context(|| format!("reading {}", local.display()))?;
            return storage::put(&object, bytes).map_err(|e| storage::explain(e, what()));
        }
        let marker = self.marker(task, epoch);
        let upload = storage::create_upload(&object).map_err(|e| storage::explain(e, what()))?;
        let parts = (|| -> anyhow::Result<()> {
            storage::put(&marker, upload.clone().into_bytes())?;
            let mut parts = Vec::new();
            storage::upload_file_parts(&object, &upload, local, |etag, _| parts.push(etag))?;
            storage::complete_upload(&object, &upload, &parts)
        })();
        if let Err(e) = parts {
            let _ = storage::abort_upload(&object, &upload);
            let _ = storage::delete(&marker);
            return Err(storage::explain(e, what()));
        }
        storage::delete(&marker).map_err(|e| storage::explain(e, what()))
    }

    /// Copy partition `partition` of an attempt's map output into `to` (its
    /// blocks only, as a fetch over QUIC spools them): a HEAD, a ranged GET
    /// of the header (checked against its CRC), then ranged GETs of at most
    /// [`RANGE_BYTES`]. The blocks are checked when they are merged.
    pub fn fetch_partition(
        &self,
        task: TaskId,
        epoch: AttemptEpoch,
        partition: u32,
        to: &Path,
    ) -> Result<u64, Fetch> {
        let object = self.attempt_object(task, epoch);
        let peer = |e: anyhow::Error| Fetch::Store(storage::explain(e, object.to_string()));
        let mut reader = storage::InputReader::open(&object.to_path()).map_err(peer)?;
        let len = reader.len();
        let (start, end) = crate::intermediate::partition_range_in(&mut reader, len, partition)
            .with_context(|| format!("reading the map output {object}"))
            .map_err(Fetch::Store)?;
        let local = |e: std::io::Error| {
            Fetch::Local(anyhow::Error::new(e).context(format!("writing {}", to.display())))
        };
        if let Some(dir) = to.parent() {
            std::fs::create_dir_all(dir).map_err(local)?;
        }
        let mut file = std::io::BufWriter::new(std::fs::File::create(to).map_err(local)?);
        let mut at = start;
        while at < end {
            let n = (end - at).min(RANGE_BYTES as u64);
            let bytes = storage::get_range(&object, at..at + n).map_err(peer)?;
            file.write_all(&bytes).map_err(local)?;
            at += n;
        }
        file.flush().map_err(local)?;
        Ok(end - start)
    }

    /// Delete an attempt's output (a failed, stale or duplicate attempt), and
    /// abort its upload if it was cut off.
    pub fn delete_attempt(&self, task: TaskId, epoch: AttemptEpoch) -> anyhow::Result<()> {
        let marker = self.marker(task, epoch);
        if let Ok(upload) = storage::get(&marker) {
            let upload = String::from_utf8_lossy(&upload).into_owned();
            storage::abort_upload(&self.attempt_object(task, epoch), &upload)?;
            storage::delete(&marker)?;
        }
        storage::delete(&self.attempt_object(task, epoch))
    }

    /// Delete everything of the job (at its end: committed, failed or
    /// cancelled): uploads left open first, then every object.
    pub fn delete_job(&self) -> anyhow::Result<()> {
        let what = || format!("shuffle store {}", self.job_prefix);
        let found = storage::list(&self.job_prefix).map_err(|e| storage::explain(e, what()))?;
        for marker in found.iter().filter(|o| o.url.key.ends_with(UPLOAD_MARKER)) {
            if let Ok(upload) = storage::get(&marker.url) {
                let key = &marker.url.key[..marker.url.key.len() - UPLOAD_MARKER.len()];
                let object = S3Url {
                    bucket: marker.url.bucket.clone(),
                    key: key.to_string(),
                };
                let upload = String::from_utf8_lossy(&upload).into_owned();
                storage::abort_upload(&object, &upload).map_err(|e| storage::explain(e, what()))?;
            }
        }
        for object in &found {
            storage::delete(&object.url).map_err(|e| storage::explain(e, what()))?;
        }
        tracing::debug!(prefix = %self.job_prefix, objects = found.len(), "shuffle objects deleted");
        Ok(())
    }
}

/// Why a partition could not be read: the store (missing object, corrupt
/// header, unreachable: the map task runs again) or this machine's disk
/// (the reduce attempt fails, the map output is fine).
#[derive(Debug)]
pub enum Fetch {
    Store(anyhow::Error),
    Local(anyhow::Error),
}

/// `--shuffle-store`'s location, checked at start-up: an `s3://` URL whose
/// bucket answers a listing (a missing bucket, bad credentials or an
/// unreachable endpoint stop the coordinator with one line).
pub fn check_root(root: &str) -> anyhow::Result<()> {
    let what = || format!("--shuffle-store {root}");
    let url = S3Url::parse(root).with_context(what)?;
    let prefix = S3Url {
        bucket: url.bucket.clone(),
        key: url.dir_prefix(),
    };
    storage::list(&prefix).map_err(|e| storage::explain(e, what()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_name_tenant_job_task_and_epoch() {
        let job = JobId(uuid::Uuid::nil());
        let objects =
            ShuffleObjects::new("s3://shuffle/wmr", &TenantId("alice".into()), job).unwrap();
        assert_eq!(
            objects
                .attempt_object(TaskId::Map(3), AttemptEpoch(2))
                .to_string(),
            format!("s3://shuffle/wmr/alice/job-{}/m-00003.a2", job.0.simple())
        );
        assert_eq!(
            objects.job_prefix().to_string(),
            format!("s3://shuffle/wmr/alice/job-{}/", job.0.simple())
        );
        assert!(ShuffleObjects::new("/local/dir", &TenantId("a".into()), job).is_err());
    }
}

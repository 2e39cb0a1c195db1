//! The reduce output committer for an object store, which has no rename.
//!
//! As S3A's "magic" committer: a reduce attempt uploads its part straight
//! to the part's final key as a multipart upload and does not complete it,
//! so nothing of it is visible. Its upload id and part ETags go in a small
//! manifest, written as soon as the upload exists (so an attempt killed
//! mid-upload can still be aborted by whoever cleans up) and rewritten,
//! `complete: true`, once every part is up:
//!
//! ```text
//! <out>/_temporary/job-<id>/r-00007.a2.pending            the attempt's manifest
//! <out>/_temporary/job-<id>/committed/part-r-00007.pending the committed epoch's
//! <out>/part-r-00007                                      completed at the job commit
//! <out>/_SUCCESS                                          written last: parts and sizes
//! ```
//!
//! Committing a task (the coordinator, once per task: I2) copies the
//! committed epoch's manifest to `committed/`. The job commit completes
//! exactly those uploads, aborts every other upload of the job (failed,
//! stale or duplicate attempts), deletes `_temporary/job-<id>/`, and
//! writes `_SUCCESS` last, naming each part and its size. A reader that
//! waits for `_SUCCESS` and reads the parts it lists never sees a partial,
//! stale or duplicate part; a job that fails or is cancelled completes no
//! upload.
//!
//! No upload outlives its job (I14), however late an attempt is: the job's
//! `_open` marker exists from `prepare` until the job commit or clean-up,
//! which delete it *before* listing the manifests. An attempt checks the
//! marker after each manifest write; if it is gone, the attempt aborts its
//! own upload and deletes its manifest. S3 listings are strongly
//! consistent, so a manifest written while the marker existed is in the
//! closing listing (and aborted there), and one written later is withdrawn
//! by its attempt.

use crate::model::{AttemptEpoch, DeadLetter, JobId, TaskId};
use crate::storage::{self, S3Url};
use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};
use std::path::Path;

const TEMPORARY: &str = "_temporary";
const PENDING: &str = ".pending";
/// The job commit's `_SUCCESS` listing, kept under the job's temporary
/// prefix from before the clean-up until `_SUCCESS` is written.
const LISTING: &str = "_success_listing";
/// The job still takes uploads while `_temporary/job-<id>/_open` exists.
const OPEN: &str = "_open";
/// The longest a `WMR_FAULT_HOLD_UPLOAD` hold lasts.
const HOLD_LIMIT: std::time::Duration = std::time::Duration::from_secs(120);

/// An attempt's upload, as its manifest records it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
struct Pending {
    /// The part's final key (in the output's bucket).
    key: String,
    upload: String,
    /// ETags of the parts, in order.
    parts: Vec<String>,
    bytes: u64,
    /// Every part is up: the upload may be completed.
    complete: bool,
}

/// One job's output under an `s3://` prefix.
#[derive(Clone, Debug)]
pub struct ObjectOutput {
    pub output: S3Url,
    pub job: JobId,
}

impl ObjectOutput {
    fn job_temporary(&self) -> S3Url {
        self.output.join(&format!("{TEMPORARY}/job-{}/", self.job))
    }

    fn attempt_manifest(&self, task: TaskId, epoch: AttemptEpoch) -> S3Url {
        self.job_temporary()
            .join(&format!("{task}.{epoch}{PENDING}"))
    }

    fn committed_manifest(&self, partition: u32) -> S3Url {
        self.job_temporary().join(&format!(
            "committed/{}{PENDING}",
            crate::commit::part_name(partition)
        ))
    }

    fn part(&self, partition: u32) -> S3Url {
        self.output.join(&crate::commit::part_name(partition))
    }

    fn open_marker(&self) -> S3Url {
        self.job_temporary().join(OPEN)
    }

    /// Stop taking uploads (I14): the first step of the job commit and of
    /// the clean-up, before they list the manifests.
    fn close(&self) -> anyhow::Result<()> {
        storage::delete(&self.open_marker())
    }

    /// A job restored after a restart takes uploads again (I14 holds: its
    /// commit or clean-up, even one begun before the restart, closes it
    /// again before listing).
    pub fn reopen(&self) -> anyhow::Result<()> {
        storage::put(&self.open_marker(), Vec::new())
    }

    /// Whether the job still takes uploads.
    fn is_open(&self) -> anyhow::Result<bool> {
        storage::exists(&self.open_marker())
    }

    /// The output prefix must hold nothing but leftovers of killed runs
    /// (`_temporary/`), whose uploads are aborted and manifests deleted.
    /// This listing is also the first request to the output's bucket: a
    /// missing bucket or bad credentials stop the job here.
    pub fn prepare(&self) -> anyhow::Result<()> {
        let prefix = S3Url {
            bucket: self.output.bucket.clone(),
            key: self.output.dir_prefix(),
        };
        let found = storage::list(&prefix)
            .map_err(|e| storage::explain(e, format!("output {}", self.output)))?;
        let temporary = format!("{}{TEMPORARY}/", prefix.key);
        if let Some(held) = found.iter().find(|o| !o.url.key.starts_with(&temporary)) {
            bail!(
                "output {} already holds {}: choose an empty or new prefix",
                self.output,
                &held.url.key[prefix.key.len()..]
            );
        }
        for leftover in &found {
            discard_manifest(&leftover.url, &[])?;
        }
        self.reopen()
    }

    /// Upload a reduce attempt's finished part (a local file) without
    /// completing it; the manifest is written first, then again complete.
    /// Returns the part's size. An attempt that fails here, or finds the
    /// job closed (I14), aborts its upload and deletes its manifest itself.
    pub fn upload_attempt(
        &self,
        task: TaskId,
        epoch: AttemptEpoch,
        local: &Path,
    ) -> anyhow::Result<u64> {
        let TaskId::Reduce(partition) = task else {
            panic!("{task} is not a reduce task")
        };
        let part = self.part(partition);
        let manifest = self.attempt_manifest(task, epoch);
        self.hold_for_tests(Hold::Create, task, epoch);
        let upload = storage::create_upload(&part)?;
        let mut pending = Pending {
            key: part.key.clone(),
            upload,
            parts: Vec::new(),
            bytes: 0,
            complete: false,
        };
        let uploaded = self.upload_parts(task, epoch, &manifest, &mut pending, local);
        if let Err(e) = &uploaded {
            if e.downcast_ref::<Closed>().is_some() {
                tracing::warn!(%task, %epoch, "the job's output is closed: this late attempt aborts its upload");
            }
            if let Err(e) = storage::abort_upload(&part, &pending.upload) {
                tracing::warn!(%task, %epoch, "aborting the upload of {part}: {e:#}");
            }
            if let Err(e) = storage::delete(&manifest) {
                tracing::warn!(%task, %epoch, "deleting {manifest}: {e:#}");
            }
        }
        uploaded
    }

    /// [`Self::upload_attempt`] once the upload exists: manifest, parts,
    /// complete manifest, each manifest write followed by the check of I14.
    fn upload_parts(
        &self,
        task: TaskId,
        epoch: AttemptEpoch,
        manifest: &S3Url,
        pending: &mut Pending,
        local: &Path,
    ) -> anyhow::Result<u64> {
        let part = S3Url {
            bucket: self.output.bucket.clone(),
            key: pending.key.clone(),
        };
        write_manifest(manifest, pending)?;
        self.ensure_open()?;
        let upload = pending.upload.clone();
        storage::upload_file_parts(&part, &upload, local, |etag, n| {
            pending.parts.push(etag);
            pending.bytes += n as u64;
            if pending.parts.len() == 1 {
                self.hold_for_tests(Hold::Part, task, epoch);
            }
        })?;
        pending.complete = true;
        write_manifest(manifest, pending)?;
        self.ensure_open()?;
        tracing::debug!(%task, %epoch, bytes = pending.bytes, parts = pending.parts.len(), "part uploaded, not completed");
        Ok(pending.bytes)
    }

    /// I14's check, after a manifest write: the job must still be open.
    fn ensure_open(&self) -> anyhow::Result<()> {
        if self.is_open()? {
            return Ok(());
        }
        Err(Closed { job: self.job }.into())
    }

    /// Commit a reduce attempt (I2: once per task, its current epoch): its
    /// manifest becomes the task's.
    pub fn commit_attempt(&self, task: TaskId, epoch: AttemptEpoch) -> anyhow::Result<()> {
        let TaskId::Reduce(partition) = task else {
            panic!("{task} is not a reduce task")
        };
        let committed = self.committed_manifest(partition);
        if storage::exists(&committed)? {
            bail!("{task} is already committed at {committed}");
        }
        let pending = read_manifest(&self.attempt_manifest(task, epoch))?;
        if !pending.complete {
            bail!("committing {task} {epoch}: its upload is not complete");
        }
        write_manifest(&committed, &pending)
    }

    /// Abort an attempt's upload and delete its manifest.
    pub fn abort_attempt(&self, task: TaskId, epoch: AttemptEpoch) -> anyhow::Result<()> {
        discard_manifest(&self.attempt_manifest(task, epoch), &[])
    }

    /// The job commit: complete the committed uploads, abort the others,
    /// drop `_temporary/job-<id>/`, write `_SUCCESS` (parts and sizes) last.
    pub fn finish(&self, dead_letters: &[DeadLetter]) -> anyhow::Result<()> {
        // I14: no attempt's manifest can appear unseen after this.
        self.close()?;
        // The listing is kept before the manifests go: a coordinator that
        // restarts between the clean-up and `_SUCCESS` finds it there
        // (it would otherwise list no manifests and commit an empty
        // `_SUCCESS`).
        let kept = self.job_temporary().join(LISTING);
        let (listing, completed) = match storage::get(&kept) {
            // Every committed upload was completed before the listing was
            // kept: those left must not be aborted.
            Ok(bytes) => (
                String::from_utf8(bytes.to_vec()).context("the kept _SUCCESS listing")?,
                self.committed_uploads()?,
            ),
            Err(e) if is_not_found(&e) => {
                let (listing, completed) = self.complete_parts(dead_letters)?;
                storage::put(&kept, listing.clone().into_bytes())?;
                (listing, completed)
            }
            Err(e) => return Err(e),
        };
        self.cleanup_except(&completed)?;
        die_before_success_for_tests(self.job);
        storage::put(
            &self.output.join(crate::commit::SUCCESS_MARKER),
            listing.into_bytes(),
        )?;
        storage::delete(&kept)
    }

    /// The uploads of the committed manifests still there.
    fn committed_uploads(&self) -> anyhow::Result<Vec<String>> {
        let mut uploads = Vec::new();
        for manifest in storage::list(&self.job_temporary().join("committed/"))? {
            match read_manifest(&manifest.url) {
                Ok(pending) => uploads.push(pending.upload),
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(uploads)
    }

    /// Complete every committed part's upload and write the dead letters:
    /// the `_SUCCESS` listing and the uploads completed.
    fn complete_parts(&self, dead_letters: &[DeadLetter]) -> anyhow::Result<(String, Vec<String>)> {
        let mut listing = String::new();
        let mut completed = Vec::new();
        // Every reduce task commits (an empty one too), so these are all
        // the parts, in partition order.
        for manifest in storage::list(&self.job_temporary().join("committed/"))? {
            let pending = read_manifest(&manifest.url)?;
            let part = S3Url {
                bucket: self.output.bucket.clone(),
                key: pending.key.clone(),
            };
            debug_assert!(part.key.starts_with(&self.output.dir_prefix()));
            if let Err(e) = storage::complete_upload(&part, &pending.upload, &pending.parts) {
                // A coordinator restarted mid-commit completed it already.
                if storage::size(&part).ok() != Some(pending.bytes) {
                    return Err(e.context(format!("completing {part}")));
                }
            }
            listing.push_str(&format!("{} {}\n", part.name(), pending.bytes));
            completed.push(pending.upload);
        }
        if !dead_letters.is_empty() {
            let mut text = String::new();
            for dead in dead_letters {
                text.push_str(&serde_json::to_string(dead)?);
                text.push('\n');
            }
            let len = text.len();
            storage::put(
                &self.output.join(crate::commit::DEAD_LETTERS),
                text.into_bytes(),
            )?;
            listing.push_str(&format!("{} {len}\n", crate::commit::DEAD_LETTERS));
        }
        Ok((listing, completed))
    }

    /// Abort every upload of this job not yet completed and delete its
    /// manifests (a failed or cancelled job, or after the job commit).
    pub fn cleanup(&self) -> anyhow::Result<()> {
        self.cleanup_except(&[])?;
        storage::delete(&self.job_temporary().join(LISTING))
    }

    /// [`Self::cleanup`], but leave the uploads in `completed` be (an
    /// abort of a completed upload is an error on some stores).
    fn cleanup_except(&self, completed: &[String]) -> anyhow::Result<()> {
        self.close()?;
        for manifest in storage::list(&self.job_temporary())? {
            // The listing of a commit in progress goes after `_SUCCESS`.
            if manifest.url.key.ends_with(LISTING) {
                continue;
            }
            discard_manifest(&manifest.url, completed)?;
        }
        Ok(())
    }
}

/// The job's output no longer takes uploads (I14): it was committed, or
/// the job ended.
#[derive(Debug, thiserror::Error)]
#[error("job {job} has closed its output (it committed or ended): the upload is aborted")]
struct Closed {
    job: JobId,
}

/// Fault injection (as `WMR_FAULT_HOLD_UPLOAD`): with
/// `WMR_FAULT_DIE_BEFORE_SUCCESS=FILE` in its environment and FILE there,
/// the process removes FILE and aborts between the job commit's clean-up
/// and `_SUCCESS`, as a machine dying there would; once, since FILE is
/// gone for the restarted process.
fn die_before_success_for_tests(job: JobId) {
    let Some(once) = std::env::var_os("WMR_FAULT_DIE_BEFORE_SUCCESS") else {
        return;
    };
    if std::fs::remove_file(once).is_ok() {
        tracing::warn!(%job, "fault injected: dying before _SUCCESS");
        std::process::abort();
    }
}

/// Where `WMR_FAULT_HOLD_UPLOAD` holds an upload.
#[derive(Clone, Copy, Debug)]
enum Hold {
    /// Before the upload is created.
    Create,
    /// After its first part, before the manifest says it is complete.
    Part,
}

impl ObjectOutput {
    /// Fault injection (as `WMR_FAULT_CORRUPT_MAP_OUTPUT`): with
    /// `WMR_FAULT_HOLD_UPLOAD=create` (or `part`) in its environment, the
    /// first reduce upload of this process stops before creating its
    /// upload (or after its first part) until the job has written
    /// `_SUCCESS` (at most [`HOLD_LIMIT`]), saying so in the log. The tests
    /// use it to kill or freeze a worker inside that window and to make an
    /// attempt start its upload after the job's clean-up.
    fn hold_for_tests(&self, at: Hold, task: TaskId, epoch: AttemptEpoch) {
        use std::sync::atomic::{AtomicBool, Ordering};
        static HELD: AtomicBool = AtomicBool::new(false);
        let Some(wanted) = std::env::var_os("WMR_FAULT_HOLD_UPLOAD") else {
            return;
        };
        let name = match at {
            Hold::Create => "create",
            Hold::Part => "part",
        };
        if wanted != name || HELD.swap(true, Ordering::SeqCst) {
            return;
        }
        let success = self.output.join(crate::commit::SUCCESS_MARKER);
        tracing::warn!(%task, %epoch, "fault injected: the upload holds at `{name}` until {success} exists");
        let deadline = std::time::Instant::now() + HOLD_LIMIT;
        while std::time::Instant::now() < deadline && !storage::exists(&success).unwrap_or(false) {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        tracing::warn!(%task, %epoch, "fault injected: the upload goes on");
    }
}

/// Abort the upload a manifest names (unless it is in `completed`) and
/// delete the manifest.
fn discard_manifest(manifest: &S3Url, completed: &[String]) -> anyhow::Result<()> {
    if manifest.key.ends_with(PENDING) {
        match read_manifest(manifest) {
            Ok(pending) if completed.contains(&pending.upload) => {}
            Ok(pending) => {
                let part = S3Url {
                    bucket: manifest.bucket.clone(),
                    key: pending.key.clone(),
                };
                // An upload aborted already (by the attempt itself, then by
                // the coordinator) is refused by some stores: the manifest
                // goes anyway, and a real failure shows in the log.
                if let Err(e) = storage::abort_upload(&part, &pending.upload) {
                    tracing::warn!("aborting the upload of {part}: {e:#}");
                }
            }
            Err(e) if is_not_found(&e) => return Ok(()),
            Err(e) => return Err(e),
        }
    }
    storage::delete(manifest)
}

fn is_not_found(e: &anyhow::Error) -> bool {
    matches!(
        e.downcast_ref::<storage::StoreError>(),
        Some(storage::StoreError::NotFound)
    )
}

fn write_manifest(url: &S3Url, pending: &Pending) -> anyhow::Result<()> {
    storage::put(url, serde_json::to_vec(pending)?)
}

fn read_manifest(url: &S3Url) -> anyhow::Result<Pending> {
    let bytes = storage::get(url)?;
    serde_json::from_slice(&bytes).with_context(|| format!("{url}: not an upload manifest"))
}

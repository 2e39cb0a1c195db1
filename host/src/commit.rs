//! Where attempts write, and how one attempt per task is published.
//!
//! An attempt writes only to its attempt-private path, named by task and
//! epoch: one file for a map attempt (every reduce partition in it, see
//! `intermediate`), a directory holding its part file for a
//! reduce attempt. Committing a task (`commit_attempt`) is one `rename` of
//! that file to the task's committed name; a reduce output is fsynced
//! before and its directory after the rename. A rename is atomic, so a
//! reader sees either nothing or a complete file.
//! Nothing else writes a committed name, and the scheduler asks for at most
//! one commit per task (invariant I2), so output is never duplicated.
//!
//! As in Hadoop's FileOutputCommitter (v1), committed reduce outputs stay
//! under `_temporary` until the job commits (`finish`): every part file is
//! renamed into the output directory, then `_SUCCESS` is written. A job
//! that fails, is cancelled or is killed leaves no part file in the output;
//! `_SUCCESS` tells a reader that the output is complete.
//!
//! ```text
//! <work>/job-<id>/map/_attempts/m-00003.a2                   map attempt, private
//! <work>/job-<id>/map/m-00003.a2                             committed map output
//! <output>/_temporary/job-<id>/r-00007.a1/part-r-00007       reduce attempt, private
//! <output>/_temporary/job-<id>/committed/part-r-00007        committed reduce task
//! <output>/part-r-00007                                      after the job commit
//! <output>/_SUCCESS                                          written last
//! ```
//!
//! An `s3://` output has no rename: its reduce attempts write their part to
//! this machine's work dir, then upload it uncompleted, and
//! [`crate::object_commit`] publishes exactly the committed epochs' uploads.
//! Map outputs stay on the local work dir either way, unless the cluster
//! keeps them in an object store (`--shuffle-store`,
//! [`crate::shuffle_store`]): a map attempt then uploads its output to its
//! own key, a map commit renames nothing, and the job's end deletes them.

use crate::model::{AttemptEpoch, JobId, Shuffle, TaskId};
use crate::object_commit::ObjectOutput;
use crate::shuffle_store::ShuffleObjects;
use crate::storage::S3Url;
use anyhow::{Context as _, bail};
use std::path::{Path, PathBuf};

/// The directories of one job.
#[derive(Clone, Debug)]
pub struct JobDirs {
    pub job: JobId,
    /// Intermediate data of this job (private to the job: named by its id).
    pub work: PathBuf,
    pub output: PathBuf,
    /// Map outputs in an object store (`--shuffle-store`), not in `work`.
    pub shuffle: Option<ShuffleObjects>,
}

pub const SUCCESS_MARKER: &str = "_SUCCESS";
/// Skipped records of a job, JSON lines, next to its part files.
pub const DEAD_LETTERS: &str = "_dead_letters.jsonl";
const TEMPORARY: &str = "_temporary";

impl JobDirs {
    pub fn new(job: JobId, work_root: &Path, output: &Path) -> Self {
        JobDirs {
            job,
            work: work_root.join(format!("job-{job}")),
            output: output.to_path_buf(),
            shuffle: None,
        }
    }

    /// These directories with the job's map outputs where `shuffle` keeps
    /// them: an object store's for [`Shuffle::Object`], else `work`.
    pub fn with_shuffle(
        mut self,
        shuffle: &Shuffle,
        tenant: &crate::model::TenantId,
    ) -> anyhow::Result<Self> {
        if let Shuffle::Object(root) = shuffle {
            self.shuffle = Some(ShuffleObjects::new(root, tenant, self.job)?);
        }
        Ok(self)
    }

    /// The object store committer when the output is an `s3://` prefix.
    pub fn object_output(&self) -> Option<ObjectOutput> {
        let url = S3Url::of_path(&self.output)?.ok()?;
        Some(ObjectOutput {
            output: url,
            job: self.job,
        })
    }

    fn job_temporary(&self) -> PathBuf {
        self.output
            .join(TEMPORARY)
            .join(format!("job-{}", self.job))
    }

    /// The attempt-private location of an attempt's output.
    pub fn attempt_path(&self, task: TaskId, epoch: AttemptEpoch) -> PathBuf {
        let name = format!("{task}.{epoch}");
        match task {
            TaskId::Map(_) => self.work.join("map/_attempts").join(name),
            TaskId::Reduce(_) => self.job_temporary().join(name),
        }
    }

    /// A reduce attempt's scratch directory on this machine: fetched
    /// partitions and merge passes; removed when the attempt ends.
    pub fn reduce_scratch(&self, task: TaskId, epoch: AttemptEpoch) -> PathBuf {
        self.work.join("reduce").join(format!("{task}.{epoch}"))
    }

    /// Where a task's output lives once the task is committed. A map
    /// output keeps its epoch in the name: a map task may be committed
    /// again after its first output was lost, and a reducer must read
    /// exactly the attempt the coordinator named.
    pub fn committed_path(&self, task: TaskId, epoch: AttemptEpoch) -> PathBuf {
        match task {
            TaskId::Map(_) => self.work.join("map").join(format!("{task}.{epoch}")),
            TaskId::Reduce(r) => self.job_temporary().join("committed").join(part_name(r)),
        }
    }

    /// Where a reduce attempt writes its part file: in the output's
    /// `_temporary`, or for an object store output, in this machine's work
    /// dir until it is uploaded.
    pub fn reduce_attempt_file(&self, task: TaskId, epoch: AttemptEpoch) -> PathBuf {
        let TaskId::Reduce(r) = task else {
            panic!("{task} is not a reduce task")
        };
        if self.object_output().is_some() {
            return self
                .work
                .join("reduce-out")
                .join(format!("{task}.{epoch}"))
                .join(part_name(r));
        }
        self.attempt_path(task, epoch).join(part_name(r))
    }

    /// For an object store output: upload a finished reduce attempt's part,
    /// uncompleted (see [`crate::object_commit`]), and drop the local copy.
    pub fn upload_reduce_attempt(&self, task: TaskId, epoch: AttemptEpoch) -> anyhow::Result<()> {
        let Some(object) = self.object_output() else {
            return Ok(());
        };
        let local = self.reduce_attempt_file(task, epoch);
        let uploaded = object.upload_attempt(task, epoch, &local);
        remove_if_exists(local.parent().expect("attempt files have parents"))?;
        uploaded.map(|_| ())
    }

    /// Make sure the output directory can take this job's output: it must not
    /// hold committed output already (as Hadoop refuses an existing output
    /// directory). Leftovers of killed runs (`_temporary`) are removed.
    pub fn prepare(&self) -> anyhow::Result<()> {
        if let Some(object) = self.object_output() {
            object.prepare()?;
            std::fs::create_dir_all(self.work.join("map/_attempts"))
                .with_context(|| format!("creating work dir {}", self.work.display()))?;
            return Ok(());
        }
        if self.output.exists() {
            if !self.output.is_dir() {
                bail!(
                    "output {} exists and is not a directory",
                    self.output.display()
                );
            }
            let mut held: Vec<String> = std::fs::read_dir(&self.output)?
                .map(|entry| entry.map(|e| e.file_name().to_string_lossy().into_owned()))
                .collect::<Result<_, _>>()?;
            held.retain(|name| name != TEMPORARY);
            held.sort();
            if let Some(first) = held.first() {
                bail!(
                    "output {} already holds {first}: choose an empty or new directory",
                    self.output.display()
                );
            }
            remove_if_exists(&self.output.join(TEMPORARY))?;
        }
        std::fs::create_dir_all(&self.output)
            .with_context(|| format!("creating output {}", self.output.display()))?;
        std::fs::create_dir_all(self.job_temporary().join("committed"))
            .with_context(|| format!("creating output {}", self.output.display()))?;
        std::fs::create_dir_all(self.work.join("map/_attempts"))
            .with_context(|| format!("creating work dir {}", self.work.display()))?;
        Ok(())
    }

    /// Create the job's directories if missing, deleting nothing (a job
    /// resumed after a restart keeps what it had committed).
    pub fn ensure(&self) -> anyhow::Result<()> {
        match self.object_output() {
            Some(object) => object.reopen()?,
            None => std::fs::create_dir_all(self.job_temporary().join("committed"))
                .with_context(|| format!("creating output {}", self.output.display()))?,
        }
        std::fs::create_dir_all(self.work.join("map/_attempts"))
            .with_context(|| format!("creating work dir {}", self.work.display()))
    }

    /// Publish an attempt's output: one atomic rename (I2 is the caller's:
    /// the scheduler asks once per task, for the current epoch only).
    pub fn commit_attempt(&self, task: TaskId, epoch: AttemptEpoch) -> anyhow::Result<()> {
        if let (TaskId::Reduce(_), Some(object)) = (task, self.object_output()) {
            return object.commit_attempt(task, epoch);
        }
        if let (TaskId::Map(_), Some(objects)) = (task, &self.shuffle) {
            // Uploaded to the attempt's own key before it reported: the
            // commit is the attempt log's record of this epoch (I2).
            corrupt_object_for_tests(task, epoch, objects);
            return Ok(());
        }
        let from = match task {
            TaskId::Map(_) => self.attempt_path(task, epoch),
            TaskId::Reduce(_) => self.reduce_attempt_file(task, epoch),
        };
        let to = self.committed_path(task, epoch);
        if to.exists() {
            bail!("{task} is already committed at {}", to.display());
        }
        std::fs::rename(&from, &to)
            .with_context(|| format!("committing {task} {epoch}: rename {}", from.display()))?;
        if let TaskId::Reduce(_) = task {
            // Final output is durable (see `intermediate` for why map
            // output is not).
            sync_dir(to.parent().expect("committed paths have parents"))?;
            remove_if_exists(&self.attempt_path(task, epoch))?;
        } else {
            corrupt_for_tests(task, epoch, &to);
        }
        Ok(())
    }

    /// Delete an attempt's private output (a failed or stale attempt).
    pub fn abort_attempt(&self, task: TaskId, epoch: AttemptEpoch) -> anyhow::Result<()> {
        if let (TaskId::Reduce(_), Some(object)) = (task, self.object_output()) {
            let local = self.reduce_attempt_file(task, epoch);
            remove_if_exists(local.parent().expect("attempt files have parents"))?;
            return object.abort_attempt(task, epoch);
        }
        remove_if_exists(&self.attempt_path(task, epoch))?;
        if let (TaskId::Map(_), Some(objects)) = (task, &self.shuffle) {
            objects.delete_attempt(task, epoch)?;
        }
        Ok(())
    }

    /// The job commit, after every task committed: move the committed part
    /// files into the output, drop temporary data, write `_SUCCESS` last.
    pub fn finish(&self, dead_letters: &[crate::model::DeadLetter]) -> anyhow::Result<()> {
        if let Some(object) = self.object_output() {
            object.finish(dead_letters)?;
            return self.cleanup_work();
        }
        if !dead_letters.is_empty() {
            // One JSON object per line; `_` keeps it out of later inputs.
            let mut text = String::new();
            for dead in dead_letters {
                text.push_str(&serde_json::to_string(dead)?);
                text.push('\n');
            }
            let path = self.job_temporary().join("committed").join(DEAD_LETTERS);
            std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
            std::fs::File::open(&path)?.sync_all()?;
        }
        let committed = self.job_temporary().join("committed");
        for entry in std::fs::read_dir(&committed)? {
            let entry = entry?;
            let to = self.output.join(entry.file_name());
            std::fs::rename(entry.path(), &to)
                .with_context(|| format!("publishing {}", to.display()))?;
        }
        sync_dir(&self.output)?;
        remove_if_exists(&self.output.join(TEMPORARY))?;
        let marker = self.output.join(SUCCESS_MARKER);
        std::fs::File::create(&marker)?.sync_all()?;
        sync_dir(&self.output)?;
        self.cleanup_work()
    }

    /// Remove this job's intermediate data and attempt leftovers.
    pub fn cleanup_work(&self) -> anyhow::Result<()> {
        remove_if_exists(&self.work)?;
        if let Some(objects) = &self.shuffle {
            objects.delete_job()?;
        }
        if let Some(object) = self.object_output() {
            return object.cleanup();
        }
        let temp = self.output.join(TEMPORARY);
        remove_if_exists(&temp.join(format!("job-{}", self.job)))?;
        // `_temporary` itself goes once it is empty.
        let _ = std::fs::remove_dir(&temp);
        Ok(())
    }
}

/// Fault injection (as FoundationDB's buggify): with
/// `WMR_FAULT_CORRUPT_MAP_OUTPUT=m-00003` in its environment, the process
/// committing that map task's first attempt flips the last byte of the
/// committed file, as a bad disk or cable would. The tests use it to check
/// that a corrupt block is caught and the map task runs again.
fn corrupt_for_tests(task: TaskId, epoch: AttemptEpoch, path: &Path) {
    use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
    let Some(target) = std::env::var_os("WMR_FAULT_CORRUPT_MAP_OUTPUT") else {
        return;
    };
    if target.to_str() != Some(task.to_string().as_str()) || epoch != AttemptEpoch(1) {
        return;
    }
    let flip = || -> std::io::Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)?;
        let at = file.metadata()?.len().saturating_sub(1);
        let mut byte = [0u8];
        file.seek(SeekFrom::Start(at))?;
        file.read_exact(&mut byte)?;
        byte[0] ^= 0x01;
        file.seek(SeekFrom::Start(at))?;
        file.write_all(&byte)
    };
    match flip() {
        Ok(()) => {
            tracing::warn!(%task, %epoch, "fault injected: flipped the last byte of {}", path.display())
        }
        Err(e) => tracing::warn!(%task, %epoch, "fault injection failed: {e}"),
    }
}

/// [`corrupt_for_tests`] for a map output in an object store: the
/// committing coordinator flips the last byte of the uploaded object.
fn corrupt_object_for_tests(task: TaskId, epoch: AttemptEpoch, objects: &ShuffleObjects) {
    let Some(target) = std::env::var_os("WMR_FAULT_CORRUPT_MAP_OUTPUT") else {
        return;
    };
    if target.to_str() != Some(task.to_string().as_str()) || epoch != AttemptEpoch(1) {
        return;
    }
    let object = objects.attempt_object(task, epoch);
    let flip = || -> anyhow::Result<()> {
        let mut bytes = crate::storage::get(&object)?.to_vec();
        let last = bytes.last_mut().context("empty object")?;
        *last ^= 0x01;
        crate::storage::put(&object, bytes)
    };
    match flip() {
        Ok(()) => {
            tracing::warn!(%task, %epoch, "fault injected: flipped the last byte of {object}")
        }
        Err(e) => tracing::warn!(%task, %epoch, "fault injection failed: {e:#}"),
    }
}

/// `part-r-00007`, as Hadoop names reduce outputs.
pub fn part_name(partition: u32) -> String {
    format!("part-r-{partition:05}")
}

fn remove_if_exists(path: &Path) -> anyhow::Result<()> {
    let result = if path.is_dir() {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    };
    match result {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", path.display()))
        }
        _ => Ok(()),
    }
}

/// fsync a directory so that a rename in it is durable.
pub fn sync_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing directory {}", dir.display()))
}

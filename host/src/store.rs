//! The coordinator's durable state, in one redb file (`STATE/wmr-state.redb`).
//!
//! redb: an embedded, transactional, crash-safe (copy-on-write B-trees,
//! checksummed commits) key-value store in pure Rust; no server, no C.
//!
//! What is stored: every job (its request without module bytes, its splits,
//! phase transitions with time and reason, outcome, summary), every module
//! by hash, every attempt record, and a counter of coordinator
//! incarnations. Writes happen in one transaction per batch of events,
//! before anything that depends on them is acknowledged.

use crate::model::{AttemptEpoch, Capability, JobId, ModuleHash, TaskId, WorkerId};
pub use crate::records::{Batch, JobRecord};
use crate::scheduler::AttemptRecord;
use anyhow::{Context as _, bail};
use redb::{
    Database, ReadableDatabase as _, ReadableTable as _, ReadableTableMetadata as _,
    TableDefinition,
};
use std::path::{Path, PathBuf};

/// The on-disk format this build reads and writes (2: a job's limits hold
/// its output limit; 3: a committed map output is one file, not a
/// directory of partition files, so jobs resumed from format 2 could not
/// read theirs; 4: a job's request holds its output format; 7: an attempt's
/// stats hold its map output's digest, and worker identities are kept; a
/// job's request holds `speculate`, attempts their speculative flag).
pub const FORMAT_VERSION: u64 = 7;
const FILE_NAME: &str = "wmr-state.redb";

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const JOBS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("jobs");
const MODULES: TableDefinition<&str, &[u8]> = TableDefinition::new("modules");
/// Key: job id (16 bytes); value: the job's shuffle capability (hex). A
/// table of its own, so job records of earlier builds still decode (a job
/// restored without one gets a fresh one).
const CAPABILITIES: TableDefinition<&[u8], &str> = TableDefinition::new("capabilities");
/// Key: job id (16 bytes) + task (1 + 4 bytes) + epoch (4 bytes), big-endian.
const ATTEMPTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("attempts");
/// Key: a worker's durable identity; value: the worker id it was given.
const WORKERS: TableDefinition<&str, u32> = TableDefinition::new("workers");

pub struct StateStore {
    db: Database,
    path: PathBuf,
}

impl StateStore {
    /// Open `dir/wmr-state.redb`, creating it if there is none. A file that
    /// is corrupt, truncated or of a newer format is an error naming the
    /// file; it is never replaced or treated as empty.
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        let path = dir.join(FILE_NAME);
        let db = if path.exists() {
            // Check it without writing first: opening read-write may touch
            // the header even of a file it then refuses. A file that only
            // needs the crash recovery redb does on open is fine.
            match Database::builder().open_read_only(&path) {
                Ok(_) => {}
                // It needs the recovery redb runs after a crash: rehearse it
                // on a copy, so that a file recovery cannot save is refused
                // unchanged.
                Err(redb::DatabaseError::RepairAborted) => {
                    let copy = path.with_extension("redb.check");
                    std::fs::copy(&path, &copy)
                        .with_context(|| format!("copying {}", path.display()))?;
                    let rehearsal = Database::open(&copy).map(drop);
                    let _ = std::fs::remove_file(&copy);
                    if let Err(e) = rehearsal {
                        bail!(
                            "state file {} is corrupt or unreadable ({e}); it was left as it is",
                            path.display()
                        );
                    }
                }
                Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                    bail!(
                        "state file {} is in use by another coordinator",
                        path.display()
                    )
                }
                Err(e) => bail!(
                    "state file {} is corrupt or unreadable ({e}); it was left as it is",
                    path.display()
                ),
            }
            Database::open(&path).map_err(|e| {
                anyhow::anyhow!(
                    "state file {} is corrupt or unreadable ({e}); it was left as it is",
                    path.display()
                )
            })?
        } else {
            Database::create(&path).with_context(|| format!("creating {}", path.display()))?
        };
        let store = StateStore { db, path };
        store.check_format()?;
        Ok(store)
    }

    /// A store that lives in memory only: what durability is measured
    /// against (`wmr-bench`), and for throwaway coordinators.
    pub fn in_memory() -> anyhow::Result<Self> {
        let db = Database::builder().create_with_backend(redb::backends::InMemoryBackend::new())?;
        let store = StateStore {
            db,
            path: PathBuf::from("(memory)"),
        };
        store.check_format()?;
        Ok(store)
    }

    fn check_format(&self) -> anyhow::Result<()> {
        let txn = self.db.begin_write()?;
        {
            let mut meta = txn.open_table(META)?;
            let found = meta.get("format")?.map(|v| v.value());
            match found {
                Some(v) if v > FORMAT_VERSION => bail!(
                    "state file {} has format {v}; this wmr reads format {FORMAT_VERSION} (upgrade wmr)",
                    self.path.display()
                ),
                Some(v) if v < FORMAT_VERSION => bail!(
                    "state file {} has format {v}, written by an older wmr; this wmr reads format {FORMAT_VERSION} (finish its jobs with that wmr, or move the state directory aside)",
                    self.path.display()
                ),
                Some(_) => {}
                None => {
                    // A file with tables but no format is not one of ours.
                    let jobs = txn.open_table(JOBS)?;
                    if !jobs.is_empty()? {
                        bail!("state file {} has no format marker", self.path.display());
                    }
                    meta.insert("format", FORMAT_VERSION)?;
                }
            }
            txn.open_table(MODULES)?;
            txn.open_table(ATTEMPTS)?;
            txn.open_table(CAPABILITIES)?;
            txn.open_table(WORKERS)?;
        }
        txn.commit()?;
        Ok(())
    }

    /// Count this coordinator start and return its number (1, 2, ...).
    pub fn next_incarnation(&self) -> anyhow::Result<u32> {
        let txn = self.db.begin_write()?;
        let n = {
            let mut meta = txn.open_table(META)?;
            let n = meta.get("incarnation")?.map_or(0, |v| v.value()) + 1;
            meta.insert("incarnation", n)?;
            n
        };
        txn.commit()?;
        Ok(n as u32)
    }

    /// Write a batch in one durable transaction.
    pub fn write(&self, batch: &Batch) -> anyhow::Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let txn = self.db.begin_write()?;
        {
            let mut modules = txn.open_table(MODULES)?;
            for (hash, bytes) in &batch.modules {
                if modules.get(hash.0.as_str())?.is_none() {
                    modules.insert(hash.0.as_str(), bytes.as_slice())?;
                }
            }
            let mut jobs = txn.open_table(JOBS)?;
            for job in &batch.jobs {
                let bytes = postcard::to_stdvec(job)?;
                jobs.insert(job.id.0.as_bytes().as_slice(), bytes.as_slice())?;
            }
            let mut capabilities = txn.open_table(CAPABILITIES)?;
            for (job, capability) in &batch.capabilities {
                capabilities.insert(job.0.as_bytes().as_slice(), capability.0.as_str())?;
            }
            let mut attempts = txn.open_table(ATTEMPTS)?;
            for (job, record) in &batch.attempts {
                let bytes = postcard::to_stdvec(record)?;
                let key = attempt_key(*job, record.task, record.epoch);
                attempts.insert(key.as_slice(), bytes.as_slice())?;
            }
            let mut workers = txn.open_table(WORKERS)?;
            for (identity, id) in &batch.workers {
                workers.insert(identity.as_str(), id.0)?;
            }
        }
        txn.commit()
            .with_context(|| format!("writing {}", self.path.display()))?;
        Ok(())
    }

    pub fn jobs(&self) -> anyhow::Result<Vec<JobRecord>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(JOBS)?;
        let mut jobs = Vec::new();
        for entry in table.iter()? {
            let (_, value) = entry?;
            jobs.push(postcard::from_bytes(value.value()).context("decoding a job record")?);
        }
        Ok(jobs)
    }

    /// Every worker identity seen, with its id.
    pub fn workers(&self) -> anyhow::Result<Vec<(String, WorkerId)>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(WORKERS)?;
        let mut workers = Vec::new();
        for entry in table.iter()? {
            let (identity, id) = entry?;
            workers.push((identity.value().to_string(), WorkerId(id.value())));
        }
        Ok(workers)
    }

    /// The shuffle capability issued to `job`, if one was stored.
    pub fn capability(&self, job: JobId) -> anyhow::Result<Option<Capability>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(CAPABILITIES)?;
        Ok(table
            .get(job.0.as_bytes().as_slice())?
            .map(|v| Capability(v.value().to_string())))
    }

    pub fn module(&self, hash: &ModuleHash) -> anyhow::Result<Option<Vec<u8>>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(MODULES)?;
        Ok(table.get(hash.0.as_str())?.map(|v| v.value().to_vec()))
    }

    pub fn attempts(&self, job: JobId) -> anyhow::Result<Vec<AttemptRecord>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(ATTEMPTS)?;
        let (from, to) = (attempt_key_prefix(job, 0), attempt_key_prefix(job, 1));
        let mut records = Vec::new();
        for entry in table.range(from.as_slice()..to.as_slice())? {
            let (_, value) = entry?;
            records
                .push(postcard::from_bytes(value.value()).context("decoding an attempt record")?);
        }
        Ok(records)
    }
}

fn attempt_key_prefix(job: JobId, bump: u8) -> Vec<u8> {
    let mut key = job.0.as_bytes().to_vec();
    if bump == 1 {
        // The first key after every key of this job.
        key.push(0xff);
    }
    key
}

fn attempt_key(job: JobId, task: TaskId, epoch: AttemptEpoch) -> Vec<u8> {
    let mut key = job.0.as_bytes().to_vec();
    let (kind, index) = match task {
        TaskId::Map(i) => (0u8, i),
        TaskId::Reduce(i) => (1u8, i),
    };
    key.push(kind);
    key.extend_from_slice(&index.to_be_bytes());
    key.extend_from_slice(&epoch.0.to_be_bytes());
    key
}

/// Milliseconds since the Unix epoch, for persisted times.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A job's shuffle capability survives a reopen (a coordinator restart
    /// or `wmr resume` gives the job the same one).
    #[test]
    fn a_jobs_capability_is_stored_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let (job, other) = (JobId::new(), JobId::new());
        let capability = Capability::generate();
        {
            let store = StateStore::open(dir.path()).unwrap();
            let mut batch = Batch::default();
            batch.capabilities.push((job, capability.clone()));
            store.write(&batch).unwrap();
        }
        let store = StateStore::open(dir.path()).unwrap();
        assert_eq!(store.capability(job).unwrap(), Some(capability));
        assert_eq!(store.capability(other).unwrap(), None);
    }
}

//! The domain of wmr: ids (tenant, job, task, attempt epoch, worker),
//! limits and the one check of a job's settings, assignments, attempt
//! reports and failures.
//!
//! Plain data (serde): the messages of [`crate::wire`] carry them, so the
//! embedded driver and a networked one carry exactly the same thing. Every
//! assignment and report names its tenant, job, task and attempt epoch.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

/// Who owns a job, its modules, files and attempts.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TenantId(pub String);

impl TenantId {
    /// The tenant of `wmr run`, which has the machine to itself.
    pub fn local() -> Self {
        TenantId("local".into())
    }
}

/// A job, unique across coordinator restarts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct JobId(pub uuid::Uuid);

impl JobId {
    pub fn new() -> Self {
        JobId(uuid::Uuid::new_v4())
    }
}

impl Default for JobId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The first 8 hex digits are plenty for humans and file names.
        write!(f, "{}", &self.0.simple().to_string()[..8])
    }
}

/// A task within its job: map tasks first, then reduce tasks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum TaskId {
    Map(u32),
    Reduce(u32),
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TaskId::Map(i) => write!(f, "m-{i:05}"),
            TaskId::Reduce(i) => write!(f, "r-{i:05}"),
        }
    }
}

/// Names one attempt of a task. The coordinator raises it every time it
/// assigns the task; only the attempt holding the current epoch may commit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AttemptEpoch(pub u32);

impl fmt::Display for AttemptEpoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a{}", self.0)
    }
}

/// A worker (one per process; the embedded driver numbers its threads).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct WorkerId(pub u32);

impl fmt::Display for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "w{}", self.0)
    }
}

/// A module's SHA-256, hex: modules are content-addressed.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ModuleHash(pub String);

impl ModuleHash {
    /// The content address of a module's bytes.
    pub fn of(bytes: &[u8]) -> Self {
        ModuleHash(sha256_hex(bytes))
    }
}

/// Hex SHA-256 of `bytes`. Module addresses, certificate fingerprints and
/// the stored hashes of tokens are all this digest; only a module's is a
/// [`ModuleHash`].
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

impl fmt::Display for ModuleHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", &self.0[..12.min(self.0.len())])
    }
}

/// Per-attempt resource limits, enforced inside the worker's sandbox.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Wasm fuel per attempt, all its guest calls and stores together.
    pub fuel: u64,
    /// Linear memory (all memories together) per attempt, bytes.
    pub memory_bytes: u64,
    /// Wall-clock time per attempt, milliseconds (epoch interruption).
    pub timeout_ms: u64,
    /// Bytes the guest may emit in one attempt.
    pub output_bytes: u64,
    /// Bytes of guest stdout/stderr/log kept in the attempt's log.
    pub log_bytes: u64,
    /// Records a job may skip because the guest traps on them (skip mode);
    /// 0: a trapping record fails the attempt.
    #[serde(default)]
    pub max_dead_letters: u32,
    /// Bytes of committed output (all reduce attempts together) per job.
    pub job_output_bytes: u64,
    /// The guest may read the host's clocks (`--grant clock`). Without it
    /// both WASI clocks read zero: no timing, and output that cannot depend
    /// on when an attempt ran.
    pub clock: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            fuel: 50_000_000_000,
            memory_bytes: 512 << 20,
            timeout_ms: 120_000,
            output_bytes: 1 << 30,
            log_bytes: 64 << 10,
            max_dead_letters: 10,
            job_output_bytes: 1 << 40,
            clock: false,
        }
    }
}

/// How a job's intermediate data is buffered, compressed and partitioned
/// (`--sort-buffer`, `--shuffle-compression`, `--partitioner`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShuffleSettings {
    /// Host memory for a map attempt's emitted pairs; when full they are
    /// sorted and spilled to a run on disk (Hadoop's `io.sort.mb`).
    pub sort_buffer_bytes: u64,
    /// How each block of intermediate data is compressed.
    pub compression: Compression,
    pub partitioner: Partitioner,
}

impl Default for ShuffleSettings {
    fn default() -> Self {
        ShuffleSettings {
            sort_buffer_bytes: 64 << 20,
            compression: Compression::default(),
            partitioner: Partitioner::Hash,
        }
    }
}

/// The codec of intermediate blocks. Part of the block format: a block
/// names its codec, so readers need no job settings.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    /// LZ4 block format (lz4_flex).
    #[default]
    Lz4,
}

/// Which reduce partition a key goes to.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Partitioner {
    /// FNV-1a of the key modulo the reducers.
    #[default]
    Hash,
    /// Total order: partition `p` holds the keys `k` with
    /// `boundaries[p - 1] <= k < boundaries[p]` (byte order), so the part
    /// files concatenated are sorted. `boundaries` is sorted and holds
    /// `reducers - 1` keys, sampled from the input when the job is planned.
    Range { boundaries: Vec<Vec<u8>> },
}

impl Partitioner {
    /// The partition of `key` among `reducers`.
    pub fn partition(&self, key: &[u8], reducers: u32) -> u32 {
        match self {
            Partitioner::Hash => hash_partition(key, reducers),
            Partitioner::Range { boundaries } => {
                debug_assert!(boundaries.len() < reducers as usize);
                boundaries.partition_point(|b| b.as_slice() <= key) as u32
            }
        }
    }
}

/// The hash partition of `key` among `reducers`: FNV-1a, written out here
/// because it is part of the output layout and must never change between
/// versions, machines or processes (std's hashers are seeded per process).
pub fn hash_partition(key: &[u8], reducers: u32) -> u32 {
    debug_assert!(reducers > 0);
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &byte in key {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (hash % u64::from(reducers)) as u32
}

/// The smallest `--sort-buffer`: room for a few blocks of intermediate data.
pub const MIN_SORT_BUFFER_BYTES: u64 = 64 << 10;

/// The one check of a job's settings, shared by `wmr run`, `wmr deploy`
/// (before anything is sent) and the coordinator (whatever a client sent):
/// each refusal names its flag, and nothing has been created yet.
pub fn check_job_settings(
    reducers: u32,
    split_bytes: u64,
    max_attempts: u32,
    limits: &Limits,
    shuffle: &ShuffleSettings,
) -> Result<(), String> {
    if shuffle.sort_buffer_bytes < MIN_SORT_BUFFER_BYTES {
        return Err(format!(
            "--sort-buffer must be at least {} KiB",
            MIN_SORT_BUFFER_BYTES >> 10
        ));
    }
    let positive = [
        ("--reducers", u64::from(reducers)),
        ("--split-size", split_bytes),
        ("--max-attempts", u64::from(max_attempts)),
        ("--fuel", limits.fuel),
        ("--memory", limits.memory_bytes),
        ("--timeout", limits.timeout_ms),
        ("--output-limit", limits.output_bytes),
    ];
    match positive.iter().find(|(_, value)| *value == 0) {
        Some((flag, _)) => Err(format!("{flag} must be greater than 0")),
        None => Ok(()),
    }
}

/// How reduce output records are written to the part files
/// (`--output-format`); a property of the job. Either way one emitted
/// record is exactly one output line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum OutputFormat {
    /// `KEY VALUE` (`KEY` alone for an empty value), with `\`, LF and CR
    /// in both escaped as `\\`, `\n` and `\r`; nothing else is escaped.
    #[default]
    Text,
    /// `{"key":K,"value":V}` with JSON strings, or `key_base64` /
    /// `value_base64` (standard, padded) for bytes that are not UTF-8.
    Jsonl,
}

/// A contiguous byte range of one input file, cut on line boundaries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputSplit {
    pub path: PathBuf,
    pub offset: u64,
    pub len: u64,
}

/// What a task reads.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskInput {
    Map(InputSplit),
    /// Partition `partition` of every committed map task's output: which
    /// attempt committed it and on which worker it lives.
    Reduce {
        partition: u32,
        map_outputs: Vec<(TaskId, AttemptEpoch, WorkerId)>,
    },
}

/// One attempt to run one task: everything a worker needs, nothing more.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    pub tenant: TenantId,
    pub job: JobId,
    pub task: TaskId,
    pub epoch: AttemptEpoch,
    /// `--map` module for map tasks, `--reduce` module for reduce tasks.
    pub module: ModuleHash,
    pub input: TaskInput,
    pub reducers: u32,
    pub limits: Limits,
    pub params: BTreeMap<String, String>,
    /// The job's output directory (shared store: reduce attempts write
    /// their private files below it).
    pub output: PathBuf,
    /// How reduce attempts write their records.
    pub output_format: OutputFormat,
    /// How intermediate data is buffered, compressed and partitioned.
    pub shuffle_settings: ShuffleSettings,
    /// The root of intermediate data in the shared store.
    pub work_root: PathBuf,
    pub shuffle: Shuffle,
    /// Where to fetch map outputs from (reduce tasks, worker-local shuffle).
    pub peers: BTreeMap<WorkerId, Peer>,
    /// The job's shuffle capability: a worker serves this job's map outputs
    /// only to a fetch carrying it (set by the coordinator, empty in the
    /// embedded driver).
    pub capability: Capability,
}

/// A per-job secret (32 random bytes, hex) the coordinator issues when it
/// admits a job and persists with it. Every assignment of the job carries
/// it; a worker's shuffle endpoint serves a partition of the job only to a
/// request presenting it. `Debug` never prints it.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capability(pub String);

impl Capability {
    /// A fresh, unguessable capability (from the thread-local CSPRNG,
    /// seeded by the operating system).
    pub fn generate() -> Self {
        let bytes: [u8; 32] = rand::random();
        Capability(bytes.iter().map(|b| format!("{b:02x}")).collect())
    }

    /// Whether `presented` is this capability, compared in constant time
    /// (for equal lengths). An empty capability matches nothing.
    pub fn admits(&self, presented: &str) -> bool {
        let (mine, theirs) = (self.0.as_bytes(), presented.as_bytes());
        if mine.is_empty() || mine.len() != theirs.len() {
            return false;
        }
        let diff = mine
            .iter()
            .zip(theirs)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        std::hint::black_box(diff) == 0
    }
}

impl fmt::Debug for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Capability(<secret>)")
    }
}

/// Where map outputs live.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Shuffle {
    /// In `work_root`, visible to everyone (embedded mode, shared disks).
    SharedStore,
    /// On the worker that produced them; reducers fetch them over QUIC.
    WorkerLocal,
    // New variants go last: a variant's position is its wire encoding.
    /// In an object store under this `s3://bucket/prefix` (`--shuffle-store`):
    /// a map attempt uploads its output before it reports success, reducers
    /// read the committed epoch's object with ranged GETs. Like
    /// `SharedStore`, a committed output outlives the worker that wrote it.
    Object(String),
}

impl Shuffle {
    /// Map outputs live on the worker that produced them: when that worker
    /// is lost, so are they (I8).
    pub fn on_workers(&self) -> bool {
        matches!(self, Shuffle::WorkerLocal)
    }
}

/// A worker's shuffle endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    pub addr: std::net::SocketAddr,
    pub fingerprint: String,
}

/// Why an attempt failed. The variants are the classification users see.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum AttemptFailure {
    #[error("guest trapped: {0}")]
    Trap(String),
    #[error("guest returned an error: {0}")]
    GuestError(String),
    #[error("out of fuel (limit {0})")]
    OutOfFuel(u64),
    #[error("out of memory (limit {0} bytes)")]
    OutOfMemory(u64),
    #[error("timed out (limit {0} ms)")]
    TimedOut(u64),
    #[error("output limit exceeded (limit {0} bytes)")]
    OutputLimit(u64),
    /// Committing this reduce attempt would take the job's output past its
    /// limit: the attempt is discarded and the job fails.
    #[error(
        "job output limit exceeded: {total} bytes with this attempt (limit {limit} bytes per job)"
    )]
    JobOutputLimit { limit: u64, total: u64 },
    #[error("denied: {0}")]
    Denied(String),
    #[error("cancelled")]
    Cancelled,
    /// A reduce attempt could not read a committed map output: that map
    /// task must run again (not counted against the reduce's attempts).
    #[error("fetching the output of {map_task} {map_epoch} from {worker} failed: {reason}")]
    FetchFailed {
        map_task: TaskId,
        map_epoch: AttemptEpoch,
        worker: WorkerId,
        reason: String,
    },
    /// The host could not run the attempt (unreadable input, bad module...).
    #[error("{0}")]
    Host(String),
    // New variants go last: a variant's position is its wire and storage
    // encoding (format_pins.rs).
    /// A host import refused its arguments (a bound, a reserved name, bytes
    /// that are not UTF-8): the host's verdict, not the guest's own trap, so
    /// skip mode never bisects it into dead letters.
    #[error("refused by the host: {0}")]
    Refused(String),
}

/// What a finished attempt measured.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptStats {
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub records_out: u64,
    pub fuel_used: u64,
    pub wall_ms: u64,
    pub counters: BTreeMap<String, i64>,
    /// Records skipped because the guest trapped on them.
    #[serde(default)]
    pub dead_letters: Vec<DeadLetter>,
    /// A map attempt's output file as written (size and CRC32C): what a
    /// worker's re-announcement of it is checked against after a
    /// coordinator restart. `None` for reduce attempts.
    #[serde(default)]
    pub output_digest: Option<OutputDigest>,
}

/// The size and CRC32C of a whole map output file. Taken by the worker when
/// the attempt wrote it (reported, and durable in the attempt's record) and
/// again from the bytes on its disk when it re-announces the output.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputDigest {
    pub bytes: u64,
    pub crc32c: u32,
}

/// An input record the guest trapped on, isolated and skipped.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub file: String,
    /// Byte offset of the record (line) in its file.
    pub offset: u64,
    /// The record, cut at 1 KiB.
    pub record: String,
    /// Why the guest failed on it.
    pub message: String,
}

/// A worker's report that an attempt ended. A success means the attempt's
/// output is complete and durable in its attempt-private location; it is not
/// yet visible: only the coordinator's commit publishes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptReport {
    pub job: JobId,
    pub task: TaskId,
    pub epoch: AttemptEpoch,
    pub worker: WorkerId,
    pub outcome: Result<AttemptStats, AttemptFailure>,
    /// Guest stdout/stderr and `log` lines, capped at `Limits::log_bytes`.
    pub log: String,
}

#[cfg(test)]
mod tests {
    use super::Capability;

    #[test]
    fn capabilities_are_random_secret_and_compared_exactly() {
        let (a, b) = (Capability::generate(), Capability::generate());
        assert_eq!(a.0.len(), 64);
        assert_ne!(a, b);
        assert!(a.admits(&a.0));
        assert!(!a.admits(&b.0));
        assert!(!a.admits(&a.0[..63]));
        assert!(!a.admits(""));
        assert!(!Capability::default().admits(""));
        assert_eq!(format!("{a:?}"), "Capability(<secret>)");
    }
}

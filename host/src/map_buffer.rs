//! A map attempt's emitted pairs, held compactly until they are written.
//!
//! Pairs are copied into 1 MiB chunks of one arena (a pair larger than
//! [`OWN_CHUNK_BYTES`] gets a chunk of its own) and indexed per reduce
//! partition by a 16-byte [`PairRef`]. What a pair really costs the host is
//! then its bytes plus [`HOST_BYTES_PER_PAIR`], which is what the sandbox
//! charges against the output limit (it was ~80 bytes per pair as a
//! `Vec<(Vec<u8>, Vec<u8>)>`, charged 8). Sorting is in place and needs no
//! scratch memory; the map output is streamed to its file in the format of
//! [`crate::intermediate`].
//!
//! [`MapOutput`] bounds it: when the buffer holds `--sort-buffer` bytes it
//! is sorted and spilled to a run on disk, and at the end the runs are
//! merged into the attempt's one map output.

use crate::intermediate::{self, RunWriter};
use crate::model::{AttemptFailure, Compression, Partitioner};
use crate::sandbox::{Group, PairSink};
use crate::shuffle::Pair;
use anyhow::Context as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Size of a shared arena chunk.
const CHUNK_BYTES: usize = 1 << 20;
/// A pair at least this large gets a chunk of its own, so a chunk wastes at
/// most this much at its end (6 % of a chunk).
const OWN_CHUNK_BYTES: usize = 64 << 10;
/// What one pair costs the host beyond its key and value: its index entry
/// (16 bytes) and that index's growth slack (a `Vec` doubles, so up to as
/// much again). The sandbox charges this per emitted pair.
pub const HOST_BYTES_PER_PAIR: u64 = crate::sandbox::PAIR_OVERHEAD_BYTES;

/// Where one pair is: chunk and offset of its record (`varint key_len |
/// varint value_len | key | value`), and its key's first eight bytes
/// ([`intermediate::key_prefix`]), so that most comparisons of a sort
/// read only the index, not the arena. Its position in the arena is also
/// its emission order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct PairRef {
    prefix: u64,
    chunk: u32,
    offset: u32,
}

const _: () = assert!(std::mem::size_of::<PairRef>() == 16);
// The charge covers the index entry and its growth slack.
const _: () = assert!(2 * std::mem::size_of::<PairRef>() as u64 <= HOST_BYTES_PER_PAIR);

/// Emitted pairs, by reduce partition.
pub struct MapBuffer {
    chunks: Vec<Vec<u8>>,
    parts: Vec<Vec<PairRef>>,
    partitioner: Arc<Partitioner>,
    /// Host bytes held: chunk capacity and index entries with their slack.
    bytes: u64,
    /// Size of a shared chunk: [`CHUNK_BYTES`], or less for a small sort
    /// buffer (so one chunk is not already over it).
    chunk_bytes: usize,
}

/// A point to go back to: a run of the guest that trapped leaves nothing.
#[derive(Clone, Debug)]
pub struct Mark {
    chunks: usize,
    last_chunk_len: usize,
    part_lens: Vec<usize>,
}

impl MapBuffer {
    pub fn new(reducers: u32, partitioner: Arc<Partitioner>) -> Self {
        MapBuffer {
            chunks: Vec::new(),
            parts: vec![Vec::new(); reducers as usize],
            partitioner,
            bytes: 0,
            chunk_bytes: CHUNK_BYTES,
        }
    }

    /// Chunks of at most a sixteenth of `limit` (at least 4 KiB).
    pub fn limit_chunks_to(&mut self, limit: u64) {
        self.chunk_bytes = ((limit / 16) as usize).clamp(4 << 10, CHUNK_BYTES);
    }

    /// An empty buffer partitioning (and chunking) as this one does.
    pub fn empty_like(&self) -> Self {
        let mut empty = MapBuffer::new(self.reducers(), self.partitioner.clone());
        empty.chunk_bytes = self.chunk_bytes;
        empty
    }

    /// What the buffer costs the host, in bytes.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn reducers(&self) -> u32 {
        self.parts.len() as u32
    }

    /// Copy a pair in, under the partition of its key.
    pub fn push(&mut self, key: &[u8], value: &[u8]) {
        let len = intermediate::varint_len(key.len() as u64)
            + intermediate::varint_len(value.len() as u64)
            + key.len()
            + value.len();
        let chunk_bytes = self.chunk_bytes;
        let fits = self
            .chunks
            .last()
            .is_some_and(|c| c.capacity() - c.len() >= len && c.capacity() == chunk_bytes);
        if !fits {
            // OWN_CHUNK_BYTES is 1/16 of a full chunk; smaller chunks keep
            // that ratio.
            let own = OWN_CHUNK_BYTES * chunk_bytes / CHUNK_BYTES;
            let capacity = if len >= own { len } else { chunk_bytes };
            self.chunks.push(Vec::with_capacity(capacity));
            self.bytes += capacity as u64;
        }
        let chunk = self.chunks.len() - 1;
        let data = &mut self.chunks[chunk];
        let offset = data.len();
        intermediate::put_varint(data, key.len() as u64);
        intermediate::put_varint(data, value.len() as u64);
        data.extend_from_slice(key);
        data.extend_from_slice(value);
        debug_assert_eq!(data.len(), offset + len, "a record outgrew its chunk");
        let pair = PairRef {
            prefix: intermediate::key_prefix(key),
            chunk: chunk as u32,
            offset: u32::try_from(offset).expect("chunks are at most 4 GiB"),
        };
        let p = self.partitioner.partition(key, self.reducers());
        self.parts[p as usize].push(pair);
        self.bytes += HOST_BYTES_PER_PAIR;
    }

    pub fn mark(&self) -> Mark {
        Mark {
            chunks: self.chunks.len(),
            last_chunk_len: self.chunks.last().map_or(0, Vec::len),
            part_lens: self.parts.iter().map(Vec::len).collect(),
        }
    }

    /// Forget every pair pushed since `mark`.
    pub fn rollback(&mut self, mark: &Mark) {
        self.chunks.truncate(mark.chunks);
        if let Some(last) = self.chunks.last_mut() {
            last.truncate(mark.last_chunk_len);
        }
        for (part, &len) in self.parts.iter_mut().zip(&mark.part_lens) {
            part.truncate(len);
        }
        self.bytes = self.chunks.iter().map(|c| c.capacity() as u64).sum::<u64>()
            + self.len() as u64 * HOST_BYTES_PER_PAIR;
    }

    /// Pairs held, all partitions together.
    pub fn len(&self) -> usize {
        self.parts.iter().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The key and value of `pair`'s record.
    fn record(&self, pair: &PairRef) -> (&[u8], &[u8]) {
        let data = &self.chunks[pair.chunk as usize][pair.offset as usize..];
        let mut at = 0;
        let mut len = || intermediate::get_varint(data, &mut at).expect("written by push") as usize;
        let (key_len, value_len) = (len(), len());
        let value_at = at + key_len;
        (&data[at..value_at], &data[value_at..value_at + value_len])
    }

    fn key(&self, pair: &PairRef) -> &[u8] {
        self.record(pair).0
    }

    fn value(&self, pair: &PairRef) -> &[u8] {
        self.record(pair).1
    }

    /// Sort every partition by key; equal keys keep their emitted order (the
    /// arena position breaks ties, so the unstable in-place sort is stable
    /// in effect and allocates nothing).
    pub fn sort(&mut self) {
        for p in 0..self.parts.len() {
            self.sort_partition(p);
        }
    }

    fn sort_partition(&mut self, p: usize) {
        let mut part = std::mem::take(&mut self.parts[p]);
        part.sort_unstable_by(|a, b| {
            a.prefix
                .cmp(&b.prefix)
                .then_with(|| self.key(a).cmp(self.key(b)))
                .then((a.chunk, a.offset).cmp(&(b.chunk, b.offset)))
        });
        self.parts[p] = part;
    }

    /// The pairs of `partition`, in index order.
    pub fn pairs(&self, partition: u32) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.parts[partition as usize]
            .iter()
            .map(|p| self.record(p))
    }

    /// Sort and write every partition as one run (the format of
    /// [`crate::intermediate`]). Returns the stored bytes of the partitions.
    pub fn write(&mut self, path: &Path, codec: Compression) -> anyhow::Result<u64> {
        self.sort();
        let mut writer = RunWriter::create(path, self.reducers(), codec)?;
        for p in 0..self.reducers() {
            for (key, value) in self.pairs(p) {
                writer.push(p, key, value)?;
            }
        }
        writer.finish()
    }
}

/// Runs the job's combiner over groups of one spill: `Ok(true)` when it
/// combined them (its pairs, sent to the sink, replace them), `Ok(false)`
/// when it declined (what it sent is dropped; nothing more is combined).
pub type CombineFn =
    Arc<dyn Fn(&[Group], Box<dyn PairSink>) -> Result<bool, AttemptFailure> + Send + Sync>;

/// Groups handed to one combiner call, in bytes (as for `reduce`).
const COMBINE_BATCH_BYTES: usize = 1 << 20;
/// Most of what one combiner call's output and the pairs it emits outside
/// its batch's key range are held in memory before they go to runs of
/// their own, at most (a quarter of the sort buffer, at least its minimum).
const COMBINE_SCRATCH_MAX_BYTES: u64 = 4 << 20;

fn host_failure(e: anyhow::Error) -> AttemptFailure {
    AttemptFailure::Host(format!("{e:#}"))
}

/// What a spill wrote.
#[derive(Default)]
struct Written {
    bytes: u64,
    pairs: u64,
}

/// A map attempt's output as the guest emits it: a [`MapBuffer`] of at most
/// `--sort-buffer` bytes, sorted (and combined, if the job has a combiner)
/// and spilled to a run on disk whenever it fills, so the host holds at
/// most the sort buffer (and a combiner batch) whatever the guest emits.
/// [`MapOutput::finish`] merges the runs into the attempt's map output.
/// Runs not merged are deleted when it is dropped.
pub struct MapOutput {
    buffer: MapBuffer,
    sort_buffer: u64,
    codec: Compression,
    /// Run files are `{prefix}.run{n}`, `n` from a counter shared with
    /// every child.
    prefix: PathBuf,
    counter: Arc<std::sync::atomic::AtomicU32>,
    runs: Vec<PathBuf>,
    combiner: Option<CombineFn>,
    /// The combiner declined once: it is not asked again in this attempt.
    declined: Arc<std::sync::atomic::AtomicBool>,
    pub counters: SpillCounters,
}

/// What a map output's spills and combiner runs did (by this output and the
/// children it absorbed); reported as host counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpillCounters {
    /// Runs written because the sort buffer was full (and the last part of
    /// a map output that spilled).
    pub spills: u64,
    /// Pairs and stored bytes in them (after combining).
    pub spilled_pairs: u64,
    pub spilled_bytes: u64,
    /// Pairs handed to the combiner and pairs it emitted (Hadoop's
    /// COMBINE_INPUT_RECORDS and COMBINE_OUTPUT_RECORDS).
    pub combine_input_pairs: u64,
    pub combine_output_pairs: u64,
}

impl SpillCounters {
    fn add(&mut self, other: &SpillCounters) {
        self.spills += other.spills;
        self.spilled_pairs += other.spilled_pairs;
        self.spilled_bytes += other.spilled_bytes;
        self.combine_input_pairs += other.combine_input_pairs;
        self.combine_output_pairs += other.combine_output_pairs;
    }
}

impl MapOutput {
    pub fn new(mut buffer: MapBuffer, sort_buffer: u64, codec: Compression, prefix: &Path) -> Self {
        buffer.limit_chunks_to(sort_buffer);
        MapOutput {
            buffer,
            sort_buffer,
            codec,
            prefix: prefix.to_path_buf(),
            counter: Arc::default(),
            runs: Vec::new(),
            combiner: None,
            declined: Arc::default(),
            counters: SpillCounters::default(),
        }
    }

    /// Combine every spill (and the last part in memory) with `combiner`.
    pub fn with_combiner(mut self, combiner: CombineFn) -> Self {
        self.combiner = Some(combiner);
        self
    }

    /// An empty output with the same settings, whose runs do not collide
    /// with this one's: skip mode gives each guest run one, and
    /// [`Self::absorb`]s it when the run succeeds or drops it when it traps.
    pub fn child(&self) -> Self {
        let mut buffer = self.buffer.empty_like();
        buffer.limit_chunks_to(self.sort_buffer);
        MapOutput {
            buffer,
            sort_buffer: self.sort_buffer,
            codec: self.codec,
            prefix: self.prefix.clone(),
            counter: self.counter.clone(),
            runs: Vec::new(),
            combiner: self.combiner.clone(),
            declined: self.declined.clone(),
            counters: SpillCounters::default(),
        }
    }

    /// Copy a pair in; spill if that filled the buffer.
    pub fn push(&mut self, key: &[u8], value: &[u8]) -> Result<(), AttemptFailure> {
        if self.push_deferred(key, value) {
            self.spill()?;
        }
        Ok(())
    }

    /// Copy a pair in; `true` when the buffer is full and the caller must
    /// [`Self::spill`] before pushing more.
    pub fn push_deferred(&mut self, key: &[u8], value: &[u8]) -> bool {
        self.buffer.push(key, value);
        self.buffer.bytes() >= self.sort_buffer
    }

    fn next_run_path(&self) -> PathBuf {
        let n = self
            .counter
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut path = self.prefix.clone().into_os_string();
        path.push(format!(".run{n}"));
        PathBuf::from(path)
    }

    /// Sort (and combine) the buffer and write it as a run; the buffer
    /// starts empty.
    pub fn spill(&mut self) -> Result<(), AttemptFailure> {
        self.spill_counted().map(|_| ())
    }

    fn spill_counted(&mut self) -> Result<u64, AttemptFailure> {
        if self.buffer.is_empty() {
            return Ok(0);
        }
        let path = self.next_run_path();
        // Listed before it is written: a failed write is deleted too.
        self.runs.push(path.clone());
        let written = self.write_buffer(&path)?;
        self.counters.spills += 1;
        self.counters.spilled_pairs += written.pairs;
        self.counters.spilled_bytes += written.bytes;
        self.buffer = self.buffer.empty_like();
        Ok(written.bytes)
    }

    fn combining(&self) -> Option<CombineFn> {
        let declined = self.declined.load(std::sync::atomic::Ordering::Relaxed);
        self.combiner.clone().filter(|_| !declined)
    }

    /// Sort the buffer and write it at `path`, combined if there is a
    /// combiner. What the combiner emits outside the key range of its batch
    /// (or past what one batch may hold) goes to runs of its own, listed
    /// after this one.
    fn write_buffer(&mut self, path: &Path) -> Result<Written, AttemptFailure> {
        self.buffer.sort();
        let reducers = self.buffer.reducers();
        let mut writer = RunWriter::create(path, reducers, self.codec).map_err(host_failure)?;
        let mut pairs = 0;
        match self.combining() {
            None => {
                for p in 0..reducers {
                    for (key, value) in self.buffer.pairs(p) {
                        writer.push(p, key, value).map_err(host_failure)?;
                        pairs += 1;
                    }
                }
            }
            Some(combine) => {
                let scratch = (self.sort_buffer / 4).clamp(
                    crate::model::MIN_SORT_BUFFER_BYTES,
                    COMBINE_SCRATCH_MAX_BYTES,
                );
                let mut stray = self.child();
                stray.combiner = None;
                stray.sort_buffer = scratch;
                stray.buffer.limit_chunks_to(scratch);
                let stray = Arc::new(Mutex::new(stray));
                let mut combined = CombinedWrite {
                    buffer: &self.buffer,
                    writer: &mut writer,
                    combine: &combine,
                    stray: &stray,
                    scratch: scratch as usize,
                    declined: &self.declined,
                    counters: &mut self.counters,
                    pairs: 0,
                };
                for p in 0..reducers {
                    combined.partition(p)?;
                }
                pairs = combined.pairs;
                let mut stray = Arc::into_inner(stray)
                    .expect("the combiner's stores are gone")
                    .into_inner()
                    .expect("poisoned");
                stray.spill()?;
                self.counters.add(&stray.counters);
                stray.counters = SpillCounters::default();
                let finished = writer.finish().map_err(host_failure)?;
                self.runs.append(&mut stray.runs);
                return Ok(Written {
                    bytes: finished,
                    pairs,
                });
            }
        }
        let bytes = writer.finish().map_err(host_failure)?;
        Ok(Written { bytes, pairs })
    }

    /// Take in what a child holds, after everything this output holds
    /// (emission order is kept: a key's values stay in the order emitted).
    pub fn absorb(&mut self, mut child: MapOutput) -> Result<(), AttemptFailure> {
        if !child.runs.is_empty() {
            self.spill()?;
            self.runs.append(&mut child.runs);
        }
        self.counters.add(&child.counters);
        let held = std::mem::replace(
            &mut child.buffer,
            MapBuffer::new(0, Arc::new(Partitioner::Hash)),
        );
        for p in 0..held.reducers() {
            for (key, value) in held.pairs(p) {
                self.push(key, value)?;
            }
        }
        Ok(())
    }

    /// Forget everything: the buffer and the runs.
    pub fn clear(&mut self) {
        self.buffer = self.buffer.empty_like();
        self.remove_runs();
    }

    fn remove_runs(&mut self) {
        for run in self.runs.drain(..) {
            let _ = std::fs::remove_file(run);
        }
    }

    /// [`Self::finish`], with what the spills and the combiner did.
    pub fn finish_counted(mut self, path: &Path) -> Result<(u64, SpillCounters), AttemptFailure> {
        let finished = self.finish_inner(path);
        finished.map(|bytes| (bytes, self.counters))
    }

    /// The attempt's map output at `path` (see [`Self::finish_inner`]).
    pub fn finish(mut self, path: &Path) -> Result<u64, AttemptFailure> {
        self.finish_inner(path)
    }

    /// Write the attempt's map output at `path`: the buffer alone when
    /// nothing was spilled, else the runs and the buffer merged. Returns
    /// the stored bytes of its partitions.
    fn finish_inner(&mut self, path: &Path) -> Result<u64, AttemptFailure> {
        if self.runs.is_empty() {
            // The last part, combined, as the output itself (a stray run
            // of the combiner's makes it a run to merge).
            let written = self.write_buffer(path)?;
            if self.runs.is_empty() {
                return Ok(written.bytes);
            }
            let last = self.next_run_path();
            std::fs::rename(path, &last)
                .with_context(|| format!("renaming {}", path.display()))
                .map_err(host_failure)?;
            self.runs.insert(0, last);
            self.buffer = self.buffer.empty_like();
        } else {
            self.spill()?;
        }
        let reducers = self.buffer.reducers();
        let bytes =
            intermediate::merge_runs(&self.runs, reducers, self.codec, path).map_err(host_failure);
        self.remove_runs();
        bytes
    }
}

impl Drop for MapOutput {
    fn drop(&mut self) {
        self.remove_runs();
    }
}

/// One spill's combined write: each partition's sorted pairs, the groups
/// of several values handed to the combiner in batches of about
/// [`COMBINE_BATCH_BYTES`], its output merged back in key order with the
/// single values around it. The merge is in order because a batch covers
/// a range of keys and its output, sorted, is checked to fall in that
/// range (and partition); a pair that does not (a combiner emitting other
/// keys) is a stray, written to a run of its own.
struct CombinedWrite<'a> {
    buffer: &'a MapBuffer,
    writer: &'a mut RunWriter,
    combine: &'a CombineFn,
    stray: &'a Arc<Mutex<MapOutput>>,
    scratch: usize,
    declined: &'a std::sync::atomic::AtomicBool,
    counters: &'a mut SpillCounters,
    pairs: u64,
}

impl CombinedWrite<'_> {
    fn write(&mut self, p: u32, key: &[u8], value: &[u8]) -> Result<(), AttemptFailure> {
        self.pairs += 1;
        self.writer.push(p, key, value).map_err(host_failure)
    }

    /// End of the group starting at `i` of `part`.
    fn group_end(&self, part: &[PairRef], i: usize) -> usize {
        let key = self.buffer.key(&part[i]);
        let mut j = i + 1;
        while j < part.len() && self.buffer.key(&part[j]) == key {
            j += 1;
        }
        j
    }

    fn partition(&mut self, p: u32) -> Result<(), AttemptFailure> {
        let buffer = self.buffer;
        let part = &buffer.parts[p as usize];
        let mut batch: Vec<Group> = Vec::new();
        let mut batch_bytes = 0;
        // Start of the index range the pending batch covers (single values
        // in it wait to be merged with its output).
        let mut range_start = 0;
        let mut i = 0;
        while i < part.len() {
            let j = self.group_end(part, i);
            let declined = self.declined.load(std::sync::atomic::Ordering::Relaxed);
            if batch.is_empty() && (j - i == 1 || declined) {
                for r in &part[i..j] {
                    self.write(p, buffer.key(r), buffer.value(r))?;
                }
                i = j;
                range_start = j;
                continue;
            }
            let value_bytes =
                || -> usize { part[i..j].iter().map(|r| buffer.value(r).len() + 8).sum() };
            if j - i > 1 && value_bytes() >= COMBINE_BATCH_BYTES {
                // A hot key: combined in chunks of its own, so that one
                // combiner call never holds more than a batch of it.
                if !batch.is_empty() {
                    self.flush(p, &mut batch, range_start, i)?;
                    batch_bytes = 0;
                }
                self.hot_group(p, i, j)?;
                i = j;
                range_start = j;
                continue;
            }
            if j - i > 1 {
                let group = Group {
                    key: buffer.key(&part[i]).to_vec(),
                    values: part[i..j]
                        .iter()
                        .map(|r| buffer.value(r).to_vec())
                        .collect(),
                };
                batch_bytes += group_bytes(&group);
                batch.push(group);
            }
            i = j;
            if batch_bytes >= COMBINE_BATCH_BYTES {
                self.flush(p, &mut batch, range_start, i)?;
                batch_bytes = 0;
                range_start = i;
            }
        }
        if !batch.is_empty() {
            self.flush(p, &mut batch, range_start, part.len())?;
        }
        Ok(())
    }

    /// The group `part[i..j]` of one key too large for a batch, combined a
    /// batch of its values at a time. Pairs of its key go straight to the
    /// run (everything before was written, everything after is greater);
    /// others the combiner emits go to the stray runs.
    fn hot_group(&mut self, p: u32, i: usize, j: usize) -> Result<(), AttemptFailure> {
        let buffer = self.buffer;
        let part = &buffer.parts[p as usize];
        let key = buffer.key(&part[i]);
        let mut start = i;
        while start < j {
            let mut end = start;
            let mut bytes = 0;
            while end < j && (end == start || bytes < COMBINE_BATCH_BYTES) {
                bytes += buffer.value(&part[end]).len() + 8;
                end += 1;
            }
            let declined = self.declined.load(std::sync::atomic::Ordering::Relaxed);
            let combined = if declined {
                None
            } else {
                let mut batch = vec![Group {
                    key: key.to_vec(),
                    values: part[start..end]
                        .iter()
                        .map(|r| buffer.value(r).to_vec())
                        .collect(),
                }];
                self.combine(&mut batch)?
            };
            match combined {
                None => {
                    for r in &part[start..end] {
                        self.write(p, key, buffer.value(r))?;
                    }
                }
                Some(out) => {
                    let reducers = buffer.reducers();
                    let (own, outside): (Vec<Pair>, Vec<Pair>) =
                        out.into_iter().partition(|(k, _)| {
                            k == key && buffer.partitioner.partition(k, reducers) == p
                        });
                    self.write_strays(&outside)?;
                    for (k, v) in own {
                        self.write(p, &k, &v)?;
                    }
                }
            }
            start = end;
        }
        Ok(())
    }

    /// Pairs the combiner emitted outside the range it combined: to the
    /// stray runs, merged with the map output at the end.
    fn write_strays(&mut self, pairs: &[Pair]) -> Result<(), AttemptFailure> {
        let mut stray = self.stray.lock().expect("poisoned");
        for (k, v) in pairs {
            stray.push(k, v)?;
        }
        Ok(())
    }

    /// Run the combiner over `batch` (emptied): its output, or `None` when
    /// it declined (which it then does for the rest of the attempt).
    fn combine(&mut self, batch: &mut Vec<Group>) -> Result<Option<Vec<Pair>>, AttemptFailure> {
        let collected = Arc::new(Mutex::new(Collected {
            pairs: Vec::new(),
            bytes: 0,
            cap: self.scratch,
            emitted: 0,
            stray: self.stray.clone(),
        }));
        let combined = (self.combine)(batch, Box::new(CollectSink(collected.clone())))?;
        let (out, emitted) = {
            let mut collected = collected.lock().expect("poisoned");
            (std::mem::take(&mut collected.pairs), collected.emitted)
        };
        if !combined {
            self.declined
                .store(true, std::sync::atomic::Ordering::Relaxed);
            batch.clear();
            return Ok(None);
        }
        self.counters.combine_input_pairs +=
            batch.iter().map(|g| g.values.len() as u64).sum::<u64>();
        self.counters.combine_output_pairs += emitted;
        batch.clear();
        Ok(Some(out))
    }

    /// Combine `batch` (the groups of several values in `part[start..end]`)
    /// and write the range: the combiner's output and the single values.
    fn flush(
        &mut self,
        p: u32,
        batch: &mut Vec<Group>,
        start: usize,
        end: usize,
    ) -> Result<(), AttemptFailure> {
        let buffer = self.buffer;
        let part = &buffer.parts[p as usize];
        let Some(mut out) = self.combine(batch)? else {
            // Declined: the range stays as it came, and so does the rest.
            for r in &part[start..end] {
                self.write(p, buffer.key(r), buffer.value(r))?;
            }
            return Ok(());
        };
        out.sort_by(|a, b| a.0.cmp(&b.0));
        let low = buffer.key(&part[start]);
        let high = part.get(end).map(|r| buffer.key(r));
        let reducers = buffer.reducers();
        let (inside, outside): (Vec<Pair>, Vec<Pair>) = out.into_iter().partition(|(k, _)| {
            k.as_slice() >= low
                && high.is_none_or(|h| k.as_slice() < h)
                && buffer.partitioner.partition(k, reducers) == p
        });
        self.write_strays(&outside)?;
        // Merge the single values of the range with the combined pairs.
        let mut combined = inside.into_iter().peekable();
        let mut i = start;
        while i < end {
            let j = self.group_end(part, i);
            if j - i == 1 {
                let key = buffer.key(&part[i]);
                while let Some((k, v)) = combined.next_if(|(k, _)| k.as_slice() < key) {
                    self.write(p, &k, &v)?;
                }
                self.write(p, key, buffer.value(&part[i]))?;
            }
            i = j;
        }
        for (k, v) in combined {
            self.write(p, &k, &v)?;
        }
        Ok(())
    }
}

fn group_bytes(group: &Group) -> usize {
    group.key.len() + group.values.iter().map(|v| v.len() + 8).sum::<usize>()
}

/// One combiner call's output: held up to `cap` bytes, then moved to the
/// stray runs (so one call cannot make the host hold more).
struct Collected {
    pairs: Vec<Pair>,
    bytes: usize,
    cap: usize,
    emitted: u64,
    stray: Arc<Mutex<MapOutput>>,
}

struct CollectSink(Arc<Mutex<Collected>>);

impl PairSink for CollectSink {
    fn accept(&mut self, key: Vec<u8>, value: Vec<u8>) -> anyhow::Result<()> {
        let mut collected = self.0.lock().expect("poisoned");
        collected.emitted += 1;
        collected.bytes += key.len() + value.len() + HOST_BYTES_PER_PAIR as usize;
        collected.pairs.push((key, value));
        if collected.bytes > collected.cap {
            let pairs = std::mem::take(&mut collected.pairs);
            collected.bytes = 0;
            let mut stray = collected.stray.lock().expect("poisoned");
            for (k, v) in pairs {
                stray.push(&k, &v).map_err(|f| anyhow::anyhow!("{f}"))?;
            }
        }
        Ok(())
    }
}

/// A sink that pushes emitted pairs into a shared [`MapOutput`]; `emit`
/// spills it when it is full.
#[derive(Clone)]
pub struct OutputSink {
    output: Arc<Mutex<MapOutput>>,
    due: bool,
}

impl OutputSink {
    pub fn new(output: Arc<Mutex<MapOutput>>) -> Self {
        OutputSink { output, due: false }
    }
}

impl PairSink for OutputSink {
    fn accept(&mut self, key: Vec<u8>, value: Vec<u8>) -> anyhow::Result<()> {
        self.accept_slices(&key, &value)
    }

    fn accept_slices(&mut self, key: &[u8], value: &[u8]) -> anyhow::Result<()> {
        let full = self
            .output
            .lock()
            .expect("poisoned")
            .push_deferred(key, value);
        self.due |= full;
        Ok(())
    }

    fn spill_due(&self) -> bool {
        self.due
    }

    fn spill(&mut self) -> Result<(), AttemptFailure> {
        self.due = false;
        self.output.lock().expect("poisoned").spill()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shuffle::Pair;

    fn pairs_of(buffer: &MapBuffer, p: u32) -> Vec<Pair> {
        buffer
            .pairs(p)
            .map(|(k, v)| (k.to_vec(), v.to_vec()))
            .collect()
    }

    fn new_buffer(reducers: u32) -> MapBuffer {
        MapBuffer::new(reducers, Arc::new(Partitioner::Hash))
    }

    /// A map output spilled many times (sort buffer far below the data, a
    /// value past a chunk, past the own-chunk size, and empty ones) is byte
    /// for byte the output written from memory, with the same equal-key
    /// order; the runs are gone afterwards.
    #[test]
    fn a_spilled_map_output_equals_the_unspilled_one() {
        let dir = tempfile::tempdir().unwrap();
        let emit = |output: &mut MapOutput| {
            for i in 0..40_000u32 {
                let key = format!("k{}", i % 700).into_bytes();
                let value = match i % 10_000 {
                    0 => vec![b'v'; CHUNK_BYTES + 3],
                    1 => vec![b'w'; OWN_CHUNK_BYTES],
                    2 => Vec::new(),
                    _ => i.to_string().into_bytes(),
                };
                output.push(&key, &value).unwrap();
            }
        };
        let mut small = MapOutput::new(
            new_buffer(3),
            crate::model::MIN_SORT_BUFFER_BYTES,
            Compression::Lz4,
            &dir.path().join("small"),
        );
        emit(&mut small);
        let spills = small.counters.spills;
        let mut large = MapOutput::new(
            new_buffer(3),
            1 << 30,
            Compression::Lz4,
            &dir.path().join("large"),
        );
        emit(&mut large);
        assert_eq!(large.counters.spills, 0);
        assert!(spills > 20 && spills < 100, "{spills} spills");
        small.finish(&dir.path().join("small.out")).unwrap();
        large.finish(&dir.path().join("large.out")).unwrap();
        assert_eq!(
            std::fs::read(dir.path().join("small.out")).unwrap(),
            std::fs::read(dir.path().join("large.out")).unwrap()
        );
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["large.out", "small.out"]);
    }

    #[test]
    fn a_rollback_forgets_what_came_after_the_mark() {
        let mut buffer = new_buffer(2);
        buffer.push(b"a", b"1");
        let mark = buffer.mark();
        for i in 0..10_000u32 {
            buffer.push(&i.to_be_bytes(), &[0; 200]);
        }
        buffer.rollback(&mark);
        assert_eq!(buffer.len(), 1);
        buffer.push(b"b", b"2");
        buffer.sort();
        let all: Vec<Pair> = (0..2).flat_map(|p| pairs_of(&buffer, p)).collect();
        assert_eq!(all.len(), 2);
        assert!(all.contains(&(b"a".to_vec(), b"1".to_vec())));
        assert!(all.contains(&(b"b".to_vec(), b"2".to_vec())));
    }

    /// A summing combiner (as word count's) whose batches it declines
    /// from the `decline_from`-th call on, or that emits some sums under
    /// a key of its own (`stray`: outside its batch's range).
    fn summing(decline_from: usize, stray: bool) -> (CombineFn, Arc<Mutex<usize>>) {
        let calls = Arc::new(Mutex::new(0));
        let counted = calls.clone();
        let combine: CombineFn = Arc::new(move |groups: &[Group], mut sink: Box<dyn PairSink>| {
            let mut calls = counted.lock().unwrap();
            *calls += 1;
            if *calls >= decline_from {
                // What it emitted before declining is dropped.
                sink.accept(b"junk".to_vec(), b"999".to_vec()).unwrap();
                return Ok(false);
            }
            for (i, g) in groups.iter().enumerate() {
                let sum: u64 = g
                    .values
                    .iter()
                    .map(|v| std::str::from_utf8(v).unwrap().parse::<u64>().unwrap())
                    .sum();
                let key = if stray && i % 7 == 0 {
                    [b"~stray-".as_slice(), &g.key].concat()
                } else {
                    g.key.clone()
                };
                sink.accept(key, sum.to_string().into_bytes()).unwrap();
            }
            Ok(true)
        });
        (combine, calls)
    }

    /// Every key's summed values in a finished map output, checking each
    /// partition is sorted and holds only its own keys.
    fn sums_of(path: &Path, reducers: u32) -> std::collections::BTreeMap<Vec<u8>, u64> {
        let mut sums = std::collections::BTreeMap::new();
        for p in 0..reducers {
            let mut reader = intermediate::BlockReader::open_partition(path, p).unwrap();
            let mut last: Option<Vec<u8>> = None;
            while reader.advance().unwrap() {
                let (k, v) = (reader.key(), reader.value());
                assert_eq!(crate::model::hash_partition(k, reducers), p);
                assert!(
                    last.as_deref().is_none_or(|l| l <= k),
                    "partition {p} unsorted"
                );
                last = Some(k.to_vec());
                let key = k.strip_prefix(b"~stray-").unwrap_or(k);
                *sums.entry(key.to_vec()).or_default() +=
                    std::str::from_utf8(v).unwrap().parse::<u64>().unwrap();
            }
        }
        sums
    }

    /// Invariant: combining a spill changes how many pairs wait, never
    /// what they sum to. 5,000 keys emitted 8 times each (1 each, in a
    /// 64 KiB sort buffer, so many spills): every spill is combined (far
    /// fewer spilled pairs than emitted), a combiner declining part-way
    /// keeps every pair (issue 10: they were dropped) and is not asked
    /// again, and one emitting keys outside its batch (strays) loses none.
    #[test]
    fn combined_spills_keep_every_sum() {
        let dir = tempfile::tempdir().unwrap();
        for (case, decline_from, stray) in [
            ("sum", usize::MAX, false),
            ("decline", 40, false),
            ("stray", usize::MAX, true),
        ] {
            let (combine, calls) = summing(decline_from, stray);
            let prefix = dir.path().join(case);
            let mut output = MapOutput::new(
                new_buffer(3),
                crate::model::MIN_SORT_BUFFER_BYTES,
                Compression::Lz4,
                &prefix,
            )
            .with_combiner(combine);
            let emitted = 40_000u64;
            for i in 0..emitted {
                // Runs of equal keys, so each spill holds some several times.
                let key = format!("key-{:06}", (i / 4) % 5000 + (i % 2) * 3);
                output.push(key.as_bytes(), b"1").unwrap();
            }
            let counters = output.counters;
            let out = dir.path().join(format!("{case}.out"));
            output.finish(&out).unwrap();
            let sums = sums_of(&out, 3);
            assert_eq!(sums.values().sum::<u64>(), emitted, "{case}");
            assert!(counters.spills > 10, "{case}: {counters:?}");
            match case {
                "decline" => {
                    assert_eq!(*calls.lock().unwrap(), 40, "asked again after declining");
                    assert!(!sums.contains_key(b"junk".as_slice()));
                }
                _ => {
                    assert!(
                        counters.spilled_pairs < emitted * 2 / 3,
                        "{case}: {counters:?}"
                    );
                    assert!(counters.combine_output_pairs < counters.combine_input_pairs);
                }
            }
            std::fs::remove_file(&out).unwrap();
        }
        // No run is left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    /// A hot key (more of its values in one spill than a combiner batch)
    /// is combined a batch of its values at a time: no call gets more than
    /// a batch and one value, and summing, declining part-way through the
    /// key, or emitting strays keeps every count.
    #[test]
    fn a_hot_key_is_combined_a_batch_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        for (case, decline_from, stray) in [
            ("sum", usize::MAX, false),
            ("decline", 2, false),
            ("stray", usize::MAX, true),
        ] {
            let (summing, calls) = summing(decline_from, stray);
            let largest = Arc::new(Mutex::new(0usize));
            let seen = largest.clone();
            let combine: CombineFn = Arc::new(move |groups: &[Group], sink| {
                let bytes = groups.iter().map(group_bytes).sum::<usize>();
                let mut seen = seen.lock().unwrap();
                *seen = (*seen).max(bytes);
                summing(groups, sink)
            });
            let prefix = dir.path().join(case);
            let mut output = MapOutput::new(new_buffer(2), 16 << 20, Compression::Lz4, &prefix)
                .with_combiner(combine);
            let emitted = 600_000u64;
            for i in 0..emitted {
                let key = if i % 10 == 0 {
                    format!("a-{}", i % 100)
                } else {
                    "hot".to_string()
                };
                output.push(key.as_bytes(), b"1").unwrap();
            }
            let counters = output.counters;
            let out = dir.path().join(format!("{case}.out"));
            output.finish(&out).unwrap();
            let sums = sums_of(&out, 2);
            assert_eq!(sums.values().sum::<u64>(), emitted, "{case}");
            let hot: u64 = sums
                .iter()
                .filter(|(k, _)| k.ends_with(b"hot"))
                .map(|(_, n)| n)
                .sum();
            assert_eq!(hot, emitted * 9 / 10, "{case}");
            assert!(counters.spills >= 1, "{case}: {counters:?}");
            let largest = *largest.lock().unwrap();
            assert!(
                largest <= COMBINE_BATCH_BYTES + 9 + 3,
                "{case}: a call of {largest} bytes"
            );
            assert!(*calls.lock().unwrap() >= 2, "{case}");
            std::fs::remove_file(&out).unwrap();
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    /// A combiner failing at a spill fails the spill with its reason, and
    /// the runs are removed with the output.
    #[test]
    fn a_failing_combiner_fails_the_spill() {
        let dir = tempfile::tempdir().unwrap();
        let combine: CombineFn =
            Arc::new(|_: &[Group], _| Err(AttemptFailure::Trap("in the combiner: boom".into())));
        let mut output = MapOutput::new(
            new_buffer(2),
            crate::model::MIN_SORT_BUFFER_BYTES,
            Compression::Lz4,
            &dir.path().join("m"),
        )
        .with_combiner(combine);
        let failure = (0..100_000u32)
            .find_map(|i| output.push(format!("k{}", i % 10).as_bytes(), b"1").err())
            .expect("a spill failed");
        assert_eq!(
            failure,
            AttemptFailure::Trap("in the combiner: boom".into())
        );
        drop(output);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}

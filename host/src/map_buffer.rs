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
use crate::model::{Compression, Partitioner};
use crate::sandbox::{Group, PairSink};
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

/// Where one pair's bytes are: chunk, offset, key length, value length.
/// Its position in the arena is also its emission order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct PairRef {
    chunk: u32,
    offset: u32,
    key_len: u32,
    value_len: u32,
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
        let len = key.len() + value.len();
        let (key_len, value_len) = (
            u32::try_from(key.len()).expect("a wasm32 guest's key fits in u32"),
            u32::try_from(value.len()).expect("a wasm32 guest's value fits in u32"),
        );
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
        data.extend_from_slice(key);
        data.extend_from_slice(value);
        let pair = PairRef {
            chunk: chunk as u32,
            offset: offset as u32,
            key_len,
            value_len,
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

    fn key(&self, pair: &PairRef) -> &[u8] {
        let start = pair.offset as usize;
        &self.chunks[pair.chunk as usize][start..start + pair.key_len as usize]
    }

    fn value(&self, pair: &PairRef) -> &[u8] {
        let start = pair.offset as usize + pair.key_len as usize;
        &self.chunks[pair.chunk as usize][start..start + pair.value_len as usize]
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
            self.key(a)
                .cmp(self.key(b))
                .then((a.chunk, a.offset).cmp(&(b.chunk, b.offset)))
        });
        self.parts[p] = part;
    }

    /// The pairs of `partition`, in index order.
    pub fn pairs(&self, partition: u32) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.parts[partition as usize]
            .iter()
            .map(|p| (self.key(p), self.value(p)))
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

    /// Run the combiner over the keys of each partition that have several
    /// values, in batches of about `batch_bytes`. `combine` gets a batch and
    /// the buffer as its sink: its output is pushed back in (under the
    /// partition of each key it emits) and replaces the batch's pairs. It
    /// returns `Ok(false)` when the guest has no combiner or declines; from
    /// then on every remaining pair is kept as it is. Single values are
    /// never handed over (a combiner may run zero or more times).
    pub fn combine<E>(
        this: &Arc<Mutex<MapBuffer>>,
        batch_bytes: usize,
        mut combine: impl FnMut(&[Group], Box<dyn PairSink>) -> Result<bool, E>,
    ) -> Result<(), E> {
        let reducers = this.lock().expect("poisoned").reducers();
        for p in 0..reducers as usize {
            // The partition's pairs, sorted (the combiner may have emitted
            // into it while an earlier partition was combined) and taken
            // out: what the combiner emits into it now lands in the emptied
            // slot.
            let (taken, groups) = {
                let mut buffer = this.lock().expect("poisoned");
                buffer.sort_partition(p);
                let taken = std::mem::take(&mut buffer.parts[p]);
                let groups = group_runs(&buffer, &taken);
                (taken, groups)
            };
            let mut kept: Vec<PairRef> = Vec::with_capacity(taken.len());
            let mut batch: Vec<Group> = Vec::new();
            let mut batch_runs: Vec<(usize, usize)> = Vec::new();
            let mut batch_size = 0;
            let mut declined = false;
            let mut flush = |batch: &mut Vec<Group>,
                             runs: &mut Vec<(usize, usize)>,
                             kept: &mut Vec<PairRef>,
                             declined: &mut bool|
             -> Result<(), E> {
                if batch.is_empty() {
                    return Ok(());
                }
                let sink = Box::new(BufferSink(this.clone()));
                let mark = this.lock().expect("poisoned").mark();
                if !combine(batch, sink)? {
                    // Declined: what it emitted is dropped; the batch stays
                    // as it came, and so does everything after it.
                    this.lock().expect("poisoned").rollback(&mark);
                    *declined = true;
                    for &(start, end) in runs.iter() {
                        kept.extend_from_slice(&taken[start..end]);
                    }
                }
                batch.clear();
                runs.clear();
                Ok(())
            };
            for (start, end) in groups {
                if declined || end - start == 1 {
                    kept.extend_from_slice(&taken[start..end]);
                    continue;
                }
                let group = {
                    let buffer = this.lock().expect("poisoned");
                    Group {
                        key: buffer.key(&taken[start]).to_vec(),
                        values: taken[start..end]
                            .iter()
                            .map(|r| buffer.value(r).to_vec())
                            .collect(),
                    }
                };
                batch_size +=
                    group.key.len() + group.values.iter().map(|v| v.len() + 8).sum::<usize>();
                batch.push(group);
                batch_runs.push((start, end));
                if batch_size >= batch_bytes {
                    batch_size = 0;
                    flush(&mut batch, &mut batch_runs, &mut kept, &mut declined)?;
                }
            }
            flush(&mut batch, &mut batch_runs, &mut kept, &mut declined)?;
            let mut buffer = this.lock().expect("poisoned");
            let emitted = std::mem::take(&mut buffer.parts[p]);
            kept.extend(emitted);
            buffer.parts[p] = kept;
            if declined {
                // Nothing more is combined; the rest of the partitions stay.
                break;
            }
        }
        this.lock().expect("poisoned").sort();
        Ok(())
    }
}

/// The index ranges of equal keys in a sorted partition.
fn group_runs(buffer: &MapBuffer, part: &[PairRef]) -> Vec<(usize, usize)> {
    let mut runs = Vec::new();
    let mut start = 0;
    for i in 1..=part.len() {
        if i == part.len() || buffer.key(&part[i]) != buffer.key(&part[start]) {
            runs.push((start, i));
            start = i;
        }
    }
    runs
}

/// A sink that pushes emitted pairs into a shared [`MapBuffer`].
#[derive(Clone)]
pub struct BufferSink(pub Arc<Mutex<MapBuffer>>);

impl PairSink for BufferSink {
    fn accept(&mut self, key: Vec<u8>, value: Vec<u8>) -> anyhow::Result<()> {
        self.0.lock().expect("poisoned").push(&key, &value);
        Ok(())
    }
}

/// A map attempt's output as the guest emits it: a [`MapBuffer`] of at most
/// `--sort-buffer` bytes, sorted and spilled to a run on disk whenever it
/// fills, so the host holds at most the sort buffer whatever the guest
/// emits. [`MapOutput::finish`] merges the runs into the attempt's map
/// output. Runs not merged are deleted when it is dropped.
pub struct MapOutput {
    buffer: Arc<Mutex<MapBuffer>>,
    sort_buffer: u64,
    codec: Compression,
    /// Run files are `{prefix}.run{n}`, `n` from a counter shared with
    /// every child.
    prefix: PathBuf,
    counter: Arc<std::sync::atomic::AtomicU32>,
    runs: Vec<PathBuf>,
    /// Spills written (by this output and the children it absorbed).
    pub spills: u64,
    pub spilled_pairs: u64,
}

impl MapOutput {
    pub fn new(mut buffer: MapBuffer, sort_buffer: u64, codec: Compression, prefix: &Path) -> Self {
        buffer.limit_chunks_to(sort_buffer);
        MapOutput {
            buffer: Arc::new(Mutex::new(buffer)),
            sort_buffer,
            codec,
            prefix: prefix.to_path_buf(),
            counter: Arc::default(),
            runs: Vec::new(),
            spills: 0,
            spilled_pairs: 0,
        }
    }

    /// An empty output with the same settings, whose runs do not collide
    /// with this one's: skip mode gives each guest run one, and
    /// [`Self::absorb`]s it when the run succeeds or drops it when it traps.
    pub fn child(&self) -> Self {
        let buffer = self.buffer.lock().expect("poisoned").empty_like();
        MapOutput {
            buffer: Arc::new(Mutex::new(buffer)),
            sort_buffer: self.sort_buffer,
            codec: self.codec,
            prefix: self.prefix.clone(),
            counter: self.counter.clone(),
            runs: Vec::new(),
            spills: 0,
            spilled_pairs: 0,
        }
    }

    /// The in-memory part (the combiner works on it).
    pub fn buffer(&self) -> &Arc<Mutex<MapBuffer>> {
        &self.buffer
    }

    pub fn push(&mut self, key: &[u8], value: &[u8]) -> anyhow::Result<()> {
        let full = {
            let mut buffer = self.buffer.lock().expect("poisoned");
            buffer.push(key, value);
            buffer.bytes() >= self.sort_buffer
        };
        if full {
            self.spill()?;
        }
        Ok(())
    }

    /// Sort the buffer and write it as a run; the buffer starts empty.
    pub fn spill(&mut self) -> anyhow::Result<()> {
        let mut buffer = self.buffer.lock().expect("poisoned");
        if buffer.is_empty() {
            return Ok(());
        }
        let n = self
            .counter
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut path = self.prefix.clone().into_os_string();
        path.push(format!(".run{n}"));
        let path = PathBuf::from(path);
        // Listed before it is written: a failed write is deleted too.
        self.runs.push(path.clone());
        buffer.write(&path, self.codec)?;
        self.spills += 1;
        self.spilled_pairs += buffer.len() as u64;
        *buffer = buffer.empty_like();
        Ok(())
    }

    /// Take in what a child holds, after everything this output holds
    /// (emission order is kept: a key's values stay in the order emitted).
    pub fn absorb(&mut self, mut child: MapOutput) -> anyhow::Result<()> {
        if !child.runs.is_empty() {
            self.spill()?;
            self.runs.append(&mut child.runs);
        }
        self.spills += child.spills;
        self.spilled_pairs += child.spilled_pairs;
        let held = std::mem::replace(
            &mut *child.buffer.lock().expect("poisoned"),
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
        let mut buffer = self.buffer.lock().expect("poisoned");
        *buffer = buffer.empty_like();
        drop(buffer);
        self.remove_runs();
    }

    fn remove_runs(&mut self) {
        for run in self.runs.drain(..) {
            let _ = std::fs::remove_file(run);
        }
    }

    /// Write the attempt's map output at `path`: the buffer alone when
    /// nothing was spilled, else the runs and the buffer merged. Returns
    /// the stored bytes of its partitions.
    pub fn finish(mut self, path: &Path) -> anyhow::Result<u64> {
        if self.runs.is_empty() {
            let mut buffer = self.buffer.lock().expect("poisoned");
            return buffer.write(path, self.codec);
        }
        self.spill()?;
        let reducers = self.buffer.lock().expect("poisoned").reducers();
        let bytes = intermediate::merge_runs(&self.runs, reducers, self.codec, path);
        self.remove_runs();
        bytes
    }
}

impl Drop for MapOutput {
    fn drop(&mut self) {
        self.remove_runs();
    }
}

/// A sink that pushes emitted pairs into a shared [`MapOutput`], spilling.
#[derive(Clone)]
pub struct OutputSink(pub Arc<Mutex<MapOutput>>);

impl PairSink for OutputSink {
    fn accept(&mut self, key: Vec<u8>, value: Vec<u8>) -> anyhow::Result<()> {
        self.0.lock().expect("poisoned").push(&key, &value)
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
        let spills = small.spills;
        let mut large = MapOutput::new(
            new_buffer(3),
            1 << 30,
            Compression::Lz4,
            &dir.path().join("large"),
        );
        emit(&mut large);
        assert_eq!(large.spills, 0);
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

    /// A combiner that declines part-way keeps every pair: the batch it
    /// declined and all later ones (issue 10: they were dropped).
    #[test]
    fn a_declining_combiner_keeps_every_pair() {
        let buffer = Arc::new(Mutex::new(new_buffer(2)));
        for i in 0..20_000u32 {
            let key = format!("key-{:06}", i % 5000).into_bytes();
            buffer.lock().unwrap().push(&key, b"1");
        }
        let mut calls = 0;
        // Combines the first batch (sums), declines the second.
        MapBuffer::combine(&buffer, 4096, |groups, mut sink| {
            calls += 1;
            if calls > 1 {
                return Ok::<bool, ()>(false);
            }
            for g in groups {
                sink.accept(g.key.clone(), g.values.len().to_string().into_bytes())
                    .unwrap();
            }
            Ok(true)
        })
        .unwrap();
        assert_eq!(calls, 2);
        let buffer = buffer.lock().unwrap();
        // Every key's values still sum to its count.
        let mut sums = std::collections::BTreeMap::<Vec<u8>, u64>::new();
        for p in 0..2 {
            for (k, v) in buffer.pairs(p) {
                assert_eq!(crate::model::hash_partition(k, 2), p);
                *sums.entry(k.to_vec()).or_default() +=
                    std::str::from_utf8(v).unwrap().parse::<u64>().unwrap();
            }
        }
        assert_eq!(sums.len(), 5000);
        assert!(sums.values().all(|&n| n == 4), "{sums:?}");
        // And each partition is sorted.
        for p in 0..2 {
            let keys: Vec<Vec<u8>> = buffer.pairs(p).map(|(k, _)| k.to_vec()).collect();
            assert!(keys.windows(2).all(|w| w[0] <= w[1]));
        }
    }
}

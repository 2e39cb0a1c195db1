//! A map attempt's emitted pairs, held compactly until they are written.
//!
//! Pairs are copied into 1 MiB chunks of one arena (a pair larger than
//! [`OWN_CHUNK_BYTES`] gets a chunk of its own) and indexed per reduce
//! partition by a 16-byte [`PairRef`]. What a pair really costs the host is
//! then its bytes plus [`HOST_BYTES_PER_PAIR`], which is what the sandbox
//! charges against the output limit (it was ~80 bytes per pair as a
//! `Vec<(Vec<u8>, Vec<u8>)>`, charged 8). Sorting is in place and needs no
//! scratch memory; the map output is streamed to its file in the format of
//! [`crate::shuffle::decode_partition`].

use crate::sandbox::{Group, PairSink};
use crate::shuffle;
use anyhow::Context as _;
use std::io::{Seek as _, SeekFrom, Write as _};
use std::path::Path;
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
}

/// A point to go back to: a run of the guest that trapped leaves nothing.
#[derive(Clone, Debug)]
pub struct Mark {
    chunks: usize,
    last_chunk_len: usize,
    part_lens: Vec<usize>,
}

impl MapBuffer {
    pub fn new(reducers: u32) -> Self {
        MapBuffer {
            chunks: Vec::new(),
            parts: vec![Vec::new(); reducers as usize],
        }
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
        let fits = self
            .chunks
            .last()
            .is_some_and(|c| c.capacity() - c.len() >= len && c.capacity() == CHUNK_BYTES);
        if !fits {
            let capacity = if len >= OWN_CHUNK_BYTES {
                len
            } else {
                CHUNK_BYTES
            };
            self.chunks.push(Vec::with_capacity(capacity));
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
        let p = shuffle::partition_of(key, self.reducers());
        self.parts[p as usize].push(pair);
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

    /// Write the map output file (see [`shuffle::write_map_output`] for the
    /// layout), streaming each sorted partition in postcard's encoding of
    /// `Vec<(Vec<u8>, Vec<u8>)>`. Returns the bytes of the partitions.
    pub fn write(&mut self, path: &Path) -> anyhow::Result<u64> {
        self.sort();
        let write = || -> anyhow::Result<u64> {
            let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
            let header = 8 * (self.parts.len() as u64 + 2);
            file.write_all(&vec![0; header as usize])?;
            let mut offsets = vec![header];
            let mut at = header;
            let varint = |file: &mut std::io::BufWriter<_>, n: usize| -> std::io::Result<u64> {
                let mut buf = [0u8; 10];
                let encoded =
                    postcard::to_slice(&(n as u64), &mut buf).expect("10 bytes hold a u64");
                file.write_all(encoded)?;
                Ok(encoded.len() as u64)
            };
            for p in 0..self.parts.len() {
                at += varint(&mut file, self.parts[p].len())?;
                for (key, value) in self.pairs(p as u32) {
                    at += varint(&mut file, key.len())?;
                    file.write_all(key)?;
                    at += varint(&mut file, value.len())?;
                    file.write_all(value)?;
                    at += (key.len() + value.len()) as u64;
                }
                offsets.push(at);
            }
            file.seek(SeekFrom::Start(0))?;
            file.write_all(&(self.parts.len() as u64).to_le_bytes())?;
            for offset in &offsets {
                file.write_all(&offset.to_le_bytes())?;
            }
            file.flush()?;
            Ok(at - header)
        };
        write().with_context(|| format!("writing map output {}", path.display()))
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

    /// The streamed file is byte for byte what `shuffle::write_map_output`
    /// writes for the same sorted pairs (the format readers decode).
    #[test]
    fn the_streamed_map_output_matches_the_reference_encoding() {
        let dir = tempfile::tempdir().unwrap();
        let mut buffer = MapBuffer::new(3);
        let mut reference: Vec<Vec<Pair>> = vec![Vec::new(); 3];
        for i in 0..5000u32 {
            let key = format!("k{}", i % 700).into_bytes();
            // Values past one chunk, past the own-chunk size, and empty.
            let value = match i % 1000 {
                0 => vec![b'v'; CHUNK_BYTES + 3],
                1 => vec![b'w'; OWN_CHUNK_BYTES],
                2 => Vec::new(),
                _ => i.to_string().into_bytes(),
            };
            buffer.push(&key, &value);
            reference[shuffle::partition_of(&key, 3) as usize].push((key, value));
        }
        for part in &mut reference {
            shuffle::sort_pairs(part);
        }
        let ours = dir.path().join("ours");
        let theirs = dir.path().join("theirs");
        let bytes = buffer.write(&ours).unwrap();
        let want = shuffle::write_map_output(&theirs, &reference).unwrap();
        assert_eq!(bytes, want);
        assert_eq!(
            std::fs::read(&ours).unwrap(),
            std::fs::read(&theirs).unwrap()
        );
    }

    #[test]
    fn a_rollback_forgets_what_came_after_the_mark() {
        let mut buffer = MapBuffer::new(2);
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
        let buffer = Arc::new(Mutex::new(MapBuffer::new(2)));
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
                assert_eq!(shuffle::partition_of(k, 2), p);
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

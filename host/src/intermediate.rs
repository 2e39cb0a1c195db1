//! The intermediate (shuffle) file format: sorted runs of pairs in
//! checksummed, optionally compressed blocks, and the streaming k-way merge
//! that reads them. Nothing here holds a whole partition in memory.
//!
//! A run file holds every reduce partition of one map attempt (or of one
//! spill), as Spark's sort shuffle and Hadoop's `file.out` do:
//!
//! ```text
//! "WMRSHUF1"                       magic and format version
//! R                                u64 LE: partitions
//! offsets[0..=R]                   u64 LE from the start of the file;
//!                                  partition p is offsets[p]..offsets[p+1]
//! crc32c                           u32 LE of every byte before it
//! blocks...                        each partition: zero or more blocks
//! ```
//!
//! A block is `codec (u8) | raw_len (u32 LE) | stored_len (u32 LE) |
//! crc32c (u32 LE) | stored bytes`, the CRC covering the nine bytes before
//! it and the stored bytes. Its raw bytes are whole records, each
//! `varint key_len | key | varint value_len | value` (LEB128, postcard's
//! varint): a record never spans blocks, so a block decodes alone. A block
//! is cut once it holds [`BLOCK_BYTES`]; one record larger than that is a
//! block of its own.
//!
//! A fetched partition is the same block sequence on its own (no header).
//! Every read checks every CRC: a corrupt or truncated block is an error
//! naming the file, which the executor turns into a fetch failure (the map
//! task runs again), never wrong output.
//!
//! Not fsynced, on purpose: intermediate data need not survive a machine
//! crash, because a crashed worker is a lost worker and its map outputs run
//! again (I8); as in Hadoop, only final output is made durable. Visibility
//! is still atomic (commit is a rename).

use crate::model::Compression;
use anyhow::{Context as _, bail, ensure};
use std::io::{BufReader, BufWriter, Read, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};

pub const MAGIC: &[u8; 8] = b"WMRSHUF1";
/// Raw bytes per block before it is cut.
pub const BLOCK_BYTES: usize = 64 << 10;
const BLOCK_HEADER: usize = 13;
/// Runs merged at once; more are merged first, as few as [`merge_level`]
/// allows (each source holds a block as stored and raw, and a read
/// buffer: ~150 KiB, so ~37 MiB at full fan-in). 256 keeps a 2 GiB job of
/// 8 MiB splits to one merge pass on the reduce side.
pub const MERGE_FAN_IN: usize = 256;
/// Read buffer of one merge source: block headers go through it; a
/// block's stored bytes are mostly read past it, straight into the block.
const READ_BUFFER: usize = 16 << 10;

const CODEC_NONE: u8 = 0;
const CODEC_LZ4: u8 = 1;

/// The bytes of a run file's header for `partitions`.
fn header_len(partitions: u32) -> u64 {
    8 + 8 + 8 * (u64::from(partitions) + 1) + 4
}

/// Writes a run: partitions in increasing order, each partition's pairs in
/// key order (the caller sorts; checked in debug builds).
pub struct RunWriter {
    file: BufWriter<std::fs::File>,
    path: PathBuf,
    codec: Compression,
    offsets: Vec<u64>,
    partitions: u32,
    at: u64,
    block: Vec<u8>,
    stored: Vec<u8>,
    #[cfg(debug_assertions)]
    last_key: Option<Vec<u8>>,
}

impl RunWriter {
    pub fn create(path: &Path, partitions: u32, codec: Compression) -> anyhow::Result<Self> {
        let file = std::fs::File::create(path)
            .with_context(|| format!("creating intermediate file {}", path.display()))?;
        let mut file = BufWriter::with_capacity(256 << 10, file);
        let header = header_len(partitions);
        // The header is written last, once the offsets are known.
        file.write_all(&vec![0; header as usize])?;
        Ok(RunWriter {
            file,
            path: path.to_path_buf(),
            codec,
            offsets: vec![header],
            partitions,
            at: header,
            block: Vec::with_capacity(BLOCK_BYTES + 64),
            stored: Vec::new(),
            #[cfg(debug_assertions)]
            last_key: None,
        })
    }

    /// The partition now being written.
    fn current(&self) -> u32 {
        (self.offsets.len() - 1) as u32
    }

    /// Append a pair to `partition` (never below the last one written).
    pub fn push(&mut self, partition: u32, key: &[u8], value: &[u8]) -> anyhow::Result<()> {
        ensure!(
            partition < self.partitions && partition >= self.current(),
            "partition {partition} written out of order"
        );
        while self.current() < partition {
            self.end_partition()?;
        }
        #[cfg(debug_assertions)]
        {
            debug_assert!(
                self.last_key.as_deref().is_none_or(|last| last <= key),
                "a run's partition must be written in key order"
            );
            self.last_key = Some(key.to_vec());
        }
        put_varint(&mut self.block, key.len() as u64);
        self.block.extend_from_slice(key);
        put_varint(&mut self.block, value.len() as u64);
        self.block.extend_from_slice(value);
        if self.block.len() >= BLOCK_BYTES {
            self.flush_block()?;
        }
        Ok(())
    }

    fn flush_block(&mut self) -> anyhow::Result<()> {
        if self.block.is_empty() {
            return Ok(());
        }
        let raw_len = u32::try_from(self.block.len()).context("a block past 4 GiB")?;
        let (codec, stored): (u8, &[u8]) = match self.codec {
            Compression::None => (CODEC_NONE, &self.block),
            Compression::Lz4 => {
                self.stored.clear();
                self.stored.resize(
                    lz4_flex::block::get_maximum_output_size(self.block.len()),
                    0,
                );
                let n = lz4_flex::block::compress_into(&self.block, &mut self.stored)
                    .context("compressing a block")?;
                self.stored.truncate(n);
                (CODEC_LZ4, &self.stored)
            }
        };
        let mut header = [0u8; BLOCK_HEADER];
        header[0] = codec;
        header[1..5].copy_from_slice(&raw_len.to_le_bytes());
        header[5..9].copy_from_slice(&(stored.len() as u32).to_le_bytes());
        let crc = crc32c::crc32c_append(crc32c::crc32c(&header[..9]), stored);
        header[9..13].copy_from_slice(&crc.to_le_bytes());
        self.file.write_all(&header)?;
        self.file.write_all(stored)?;
        self.at += (BLOCK_HEADER + stored.len()) as u64;
        self.block.clear();
        Ok(())
    }

    fn end_partition(&mut self) -> anyhow::Result<()> {
        self.flush_block()?;
        self.offsets.push(self.at);
        #[cfg(debug_assertions)]
        {
            self.last_key = None;
        }
        Ok(())
    }

    /// Close the run; returns the bytes of its partitions (as stored).
    pub fn finish(mut self) -> anyhow::Result<u64> {
        let result = (|| -> anyhow::Result<u64> {
            while self.offsets.len() <= self.partitions as usize {
                self.end_partition()?;
            }
            let mut header = Vec::with_capacity(header_len(self.partitions) as usize);
            header.extend_from_slice(MAGIC);
            header.extend_from_slice(&u64::from(self.partitions).to_le_bytes());
            for offset in &self.offsets {
                header.extend_from_slice(&offset.to_le_bytes());
            }
            let crc = crc32c::crc32c(&header);
            header.extend_from_slice(&crc.to_le_bytes());
            self.file.seek(SeekFrom::Start(0))?;
            self.file.write_all(&header)?;
            self.file.flush()?;
            Ok(self.at - header_len(self.partitions))
        })();
        result.with_context(|| format!("writing intermediate file {}", self.path.display()))
    }
}

/// The bytes [`put_varint`] writes for `n`.
pub(crate) fn varint_len(n: u64) -> usize {
    (64 - (n | 1).leading_zeros() as usize).div_ceil(7)
}

pub(crate) fn put_varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

pub(crate) fn get_varint(bytes: &[u8], at: &mut usize) -> Option<u64> {
    let mut n: u64 = 0;
    for shift in (0..64).step_by(7) {
        let byte = *bytes.get(*at)?;
        *at += 1;
        n |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(n);
        }
    }
    None
}

/// The size and CRC32C of a whole file (a committed map output): what the
/// attempt reports and what a worker re-announces after a coordinator
/// restart, read from the bytes on disk each time.
pub fn digest_file(path: &Path) -> anyhow::Result<crate::model::OutputDigest> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut buffer = vec![0u8; 64 << 10];
    let (mut bytes, mut crc) = (0u64, 0u32);
    loop {
        let n = file
            .read(&mut buffer)
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        bytes += n as u64;
        crc = crc32c::crc32c_append(crc, &buffer[..n]);
    }
    Ok(crate::model::OutputDigest { bytes, crc32c: crc })
}

/// Where partition `partition` of the run file at `path` lies: its byte
/// range, checked against the header's CRC and the file's length.
pub fn partition_range(path: &Path, partition: u32) -> anyhow::Result<(u64, u64)> {
    let read = || -> anyhow::Result<(u64, u64)> {
        let mut file = std::fs::File::open(path)?;
        let len = file.metadata()?.len();
        partition_range_in(&mut file, len, partition)
    };
    read().with_context(|| format!("reading intermediate file {}", path.display()))
}

/// [`partition_range`] of a run of `len` bytes read from its start by
/// `file` (a local file, or an object read with ranged GETs).
pub fn partition_range_in(
    file: &mut impl Read,
    len: u64,
    partition: u32,
) -> anyhow::Result<(u64, u64)> {
    let mut fixed = [0u8; 16];
    file.read_exact(&mut fixed)
        .context("corrupt header: shorter than its fixed part")?;
    ensure!(&fixed[..8] == MAGIC, "not a wmr intermediate file");
    let partitions = u64::from_le_bytes(fixed[8..16].try_into().expect("8 bytes"));
    ensure!(
        partitions < (1 << 24),
        "corrupt header: {partitions} partitions"
    );
    let mut rest = vec![0u8; 8 * (partitions as usize + 1) + 4];
    file.read_exact(&mut rest)
        .context("corrupt header: truncated")?;
    let (offsets, crc) = rest.split_at(rest.len() - 4);
    let want = u32::from_le_bytes(crc.try_into().expect("4 bytes"));
    let got = crc32c::crc32c_append(crc32c::crc32c(&fixed), offsets);
    ensure!(got == want, "corrupt header: checksum mismatch");
    ensure!(
        u64::from(partition) < partitions,
        "no partition {partition}: it holds {partitions}"
    );
    let offset =
        |i: usize| u64::from_le_bytes(offsets[8 * i..8 * i + 8].try_into().expect("8 bytes"));
    let (start, end) = (offset(partition as usize), offset(partition as usize + 1));
    ensure!(
        start <= end && end <= len,
        "corrupt header: partition {partition} at {start}..{end} of {len} bytes"
    );
    Ok((start, end))
}

/// A reader of one partition's blocks, record by record, checking each
/// block's CRC. `key()`/`value()` are the current record after `advance`
/// returned `true`.
pub struct BlockReader {
    source: BufReader<std::fs::File>,
    name: String,
    /// Stored bytes of this partition not yet read.
    remaining: u64,
    stored_total: u64,
    raw: Vec<u8>,
    stored: Vec<u8>,
    /// Next record in `raw`.
    at: usize,
    key: (usize, usize),
    value: (usize, usize),
}

impl BlockReader {
    /// Partition `partition` of the run file at `path`.
    pub fn open_partition(path: &Path, partition: u32) -> anyhow::Result<Self> {
        let (start, end) = partition_range(path, partition)?;
        Self::open_range(path, start, end)
    }

    /// A file holding only a block sequence (a fetched partition).
    pub fn open_blocks(path: &Path) -> anyhow::Result<Self> {
        let len = std::fs::metadata(path)
            .with_context(|| format!("reading intermediate file {}", path.display()))?
            .len();
        Self::open_range(path, 0, len)
    }

    fn open_range(path: &Path, start: u64, end: u64) -> anyhow::Result<Self> {
        let open = || -> anyhow::Result<BufReader<std::fs::File>> {
            let mut file = std::fs::File::open(path)?;
            file.seek(SeekFrom::Start(start))?;
            Ok(BufReader::with_capacity(READ_BUFFER, file))
        };
        let source =
            open().with_context(|| format!("reading intermediate file {}", path.display()))?;
        Ok(BlockReader {
            source,
            name: path.display().to_string(),
            remaining: end - start,
            stored_total: end - start,
            raw: Vec::new(),
            stored: Vec::new(),
            at: 0,
            key: (0, 0),
            value: (0, 0),
        })
    }

    /// The stored bytes of the partition (what was read or fetched).
    pub fn stored_bytes(&self) -> u64 {
        self.stored_total
    }

    pub fn key(&self) -> &[u8] {
        &self.raw[self.key.0..self.key.1]
    }

    pub fn value(&self) -> &[u8] {
        &self.raw[self.value.0..self.value.1]
    }

    /// Move to the next record; `false` at the end of the partition.
    pub fn advance(&mut self) -> anyhow::Result<bool> {
        self.advance_inner()
            .with_context(|| format!("reading intermediate file {}", self.name))
    }

    fn advance_inner(&mut self) -> anyhow::Result<bool> {
        while self.at == self.raw.len() {
            if self.remaining == 0 {
                return Ok(false);
            }
            self.read_block()?;
        }
        let raw = &self.raw;
        let mut at = self.at;
        let field = |at: &mut usize| -> Option<(usize, usize)> {
            let len = usize::try_from(get_varint(raw, at)?).ok()?;
            let start = *at;
            let end = start.checked_add(len).filter(|&e| e <= raw.len())?;
            *at = end;
            Some((start, end))
        };
        let (Some(key), Some(value)) = (field(&mut at), field(&mut at)) else {
            bail!("corrupt block: a record runs past its block");
        };
        self.key = key;
        self.value = value;
        self.at = at;
        Ok(true)
    }

    fn read_block(&mut self) -> anyhow::Result<()> {
        ensure!(
            self.remaining >= BLOCK_HEADER as u64,
            "corrupt block: {} bytes left, a block header needs {BLOCK_HEADER}",
            self.remaining
        );
        let mut header = [0u8; BLOCK_HEADER];
        self.source
            .read_exact(&mut header)
            .context("truncated block header")?;
        let codec = header[0];
        let raw_len = u32::from_le_bytes(header[1..5].try_into().expect("4 bytes")) as usize;
        let stored_len = u32::from_le_bytes(header[5..9].try_into().expect("4 bytes")) as u64;
        let want = u32::from_le_bytes(header[9..13].try_into().expect("4 bytes"));
        let left = self.remaining - BLOCK_HEADER as u64;
        ensure!(
            stored_len <= left,
            "corrupt block: {stored_len} stored bytes, {left} left in the partition"
        );
        self.stored.clear();
        self.stored.resize(stored_len as usize, 0);
        self.source
            .read_exact(&mut self.stored)
            .context("truncated block")?;
        let got = crc32c::crc32c_append(crc32c::crc32c(&header[..9]), &self.stored);
        ensure!(got == want, "corrupt block: checksum mismatch");
        self.remaining = left - stored_len;
        match codec {
            CODEC_NONE => {
                ensure!(
                    raw_len as u64 == stored_len,
                    "corrupt block: lengths differ"
                );
                std::mem::swap(&mut self.raw, &mut self.stored);
            }
            CODEC_LZ4 => {
                self.raw.clear();
                self.raw.resize(raw_len, 0);
                let n = lz4_flex::block::decompress_into(&self.stored, &mut self.raw)
                    .map_err(|e| anyhow::anyhow!("corrupt block: {e}"))?;
                ensure!(
                    n == raw_len,
                    "corrupt block: decompressed {n} of {raw_len} bytes"
                );
            }
            other => bail!("corrupt block: unknown codec {other}"),
        }
        self.at = 0;
        Ok(())
    }
}

/// The first eight bytes of `key`, zero-padded, as a big-endian integer:
/// if two keys' prefixes differ they order as the keys do (a shorter key
/// pads with zeroes, and is a prefix of the other or differs before).
pub fn key_prefix(key: &[u8]) -> u64 {
    let mut bytes = [0u8; 8];
    let n = key.len().min(8);
    bytes[..n].copy_from_slice(&key[..n]);
    u64::from_be_bytes(bytes)
}

/// A k-way merge of sorted sources: records in key order, equal keys in
/// source order (then each source's own order), so a key's values arrive
/// in a deterministic order, the same as a stable sort of the sources
/// concatenated.
pub struct Merge {
    sources: Vec<BlockReader>,
    /// Each source's current key's [`key_prefix`]: most comparisons end
    /// there, without touching the keys' bytes.
    prefixes: Vec<u64>,
    /// Indexes of sources with a current record, a binary min-heap.
    heap: Vec<usize>,
    /// The top source's record was handed out and must advance first.
    taken: bool,
}

/// A key and its value, borrowed from a reader's block.
pub type Record<'a> = (&'a [u8], &'a [u8]);

/// A merge's read error and the source it came from (the caller names the
/// map output).
#[derive(Debug)]
pub struct SourceError {
    pub source: usize,
    pub error: anyhow::Error,
}

impl Merge {
    pub fn new(sources: Vec<BlockReader>) -> Result<Self, SourceError> {
        let mut merge = Merge {
            prefixes: vec![0; sources.len()],
            sources,
            heap: Vec::new(),
            taken: false,
        };
        for i in 0..merge.sources.len() {
            match merge.sources[i].advance() {
                Ok(true) => {
                    merge.prefixes[i] = key_prefix(merge.sources[i].key());
                    merge.heap.push(i);
                }
                Ok(false) => {}
                Err(error) => return Err(SourceError { source: i, error }),
            }
        }
        for i in (0..merge.heap.len() / 2).rev() {
            merge.sift_down(i);
        }
        Ok(merge)
    }

    fn less(&self, a: usize, b: usize) -> bool {
        let (sa, sb) = (self.heap[a], self.heap[b]);
        match self.prefixes[sa].cmp(&self.prefixes[sb]) {
            std::cmp::Ordering::Equal => {
                (self.sources[sa].key(), sa) < (self.sources[sb].key(), sb)
            }
            order => order.is_lt(),
        }
    }

    fn sift_down(&mut self, mut i: usize) {
        loop {
            let (l, r) = (2 * i + 1, 2 * i + 2);
            let mut least = i;
            if l < self.heap.len() && self.less(l, least) {
                least = l;
            }
            if r < self.heap.len() && self.less(r, least) {
                least = r;
            }
            if least == i {
                return;
            }
            self.heap.swap(i, least);
            i = least;
        }
    }

    /// The next record, `None` at the end.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Result<Option<Record<'_>>, SourceError> {
        if self.taken {
            self.taken = false;
            let top = self.heap[0];
            match self.sources[top].advance() {
                Ok(true) => self.prefixes[top] = key_prefix(self.sources[top].key()),
                Ok(false) => {
                    let last = self.heap.pop().expect("not empty");
                    if !self.heap.is_empty() {
                        self.heap[0] = last;
                    }
                }
                Err(error) => return Err(SourceError { source: top, error }),
            }
            self.sift_down(0);
        }
        let Some(&top) = self.heap.first() else {
            return Ok(None);
        };
        self.taken = true;
        let source = &self.sources[top];
        Ok(Some((source.key(), source.value())))
    }
}

/// The groups of consecutive sources (index ranges; the rest are left as
/// they are) that the next merge level turns into one run each, so that
/// `n` sources end in one merge of at most `fan_in`. Only as many sources
/// as that needs are merged first (Hadoop's merge factor of the first
/// pass): 75 sources at a fan-in of 64 rewrite 12, not 64. Only when even
/// that needs more than `fan_in` groups is a level a full one (every
/// `fan_in` consecutive sources). Consecutive, so equal keys keep source
/// order.
pub fn merge_level(n: usize, fan_in: usize) -> Vec<std::ops::Range<usize>> {
    assert!(fan_in >= 2, "a merge of fewer than two sources");
    if n <= fan_in {
        return Vec::new();
    }
    // A group of `s` sources leaves one run: `s - 1` fewer sources.
    let excess = n - fan_in;
    let groups = excess.div_ceil(fan_in - 1);
    if groups > fan_in {
        return (0..n)
            .step_by(fan_in)
            .map(|start| start..(start + fan_in).min(n))
            .filter(|group| group.len() > 1)
            .collect();
    }
    let (mut level, mut start, mut left) = (Vec::with_capacity(groups), 0, excess);
    while left > 0 {
        let size = left.min(fan_in - 1) + 1;
        level.push(start..start + size);
        start += size;
        left -= size - 1;
    }
    debug_assert_eq!(
        n - level.iter().map(|g| g.len() - 1).sum::<usize>(),
        fan_in,
        "the final merge takes exactly the fan-in"
    );
    level
}

/// Merge the runs at `runs` (every partition of each, run order breaking
/// ties) into one run at `out`; at most [`MERGE_FAN_IN`] runs are open at
/// once: more are merged level by level, into files next to `out`. Returns the
/// stored bytes of `out`'s partitions.
pub fn merge_runs(
    runs: &[PathBuf],
    partitions: u32,
    codec: Compression,
    out: &Path,
) -> anyhow::Result<u64> {
    let mut runs = runs.to_vec();
    let mut temporary: Vec<PathBuf> = Vec::new();
    // Level by level: groups of consecutive runs become one run each, so
    // run order (and so the order of equal keys) is kept.
    loop {
        let level = merge_level(runs.len(), MERGE_FAN_IN);
        if level.is_empty() {
            break;
        }
        let mut next = Vec::with_capacity(runs.len());
        let mut at = 0;
        for range in level {
            next.extend_from_slice(&runs[at..range.start]);
            at = range.end;
            let group = &runs[range];
            // `{out}.passN`, the whole name kept: `m-00003.a2` and a stale
            // `m-00003.a1` of the same task must not share a file.
            let mut merged = out.as_os_str().to_owned();
            merged.push(format!(".pass{}", temporary.len() + 1));
            let merged = PathBuf::from(merged);
            let result = merge_into(group, partitions, codec, &merged);
            temporary.push(merged.clone());
            if let Err(e) = result {
                for path in temporary {
                    let _ = std::fs::remove_file(path);
                }
                return Err(e);
            }
            next.push(merged);
        }
        next.extend_from_slice(&runs[at..]);
        runs = next;
    }
    let bytes = merge_into(&runs, partitions, codec, out);
    for path in temporary {
        let _ = std::fs::remove_file(path);
    }
    bytes
}

fn merge_into(
    runs: &[PathBuf],
    partitions: u32,
    codec: Compression,
    out: &Path,
) -> anyhow::Result<u64> {
    let mut writer = RunWriter::create(out, partitions, codec)?;
    for p in 0..partitions {
        let sources = runs
            .iter()
            .map(|run| BlockReader::open_partition(run, p))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let mut merge = Merge::new(sources).map_err(|e| e.error)?;
        while let Some((key, value)) = merge.next().map_err(|e| e.error)? {
            writer.push(p, key, value)?;
        }
    }
    writer.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shuffle::Pair;

    fn write(path: &Path, parts: &[Vec<Pair>], codec: Compression) -> u64 {
        let mut writer = RunWriter::create(path, parts.len() as u32, codec).unwrap();
        for (p, pairs) in parts.iter().enumerate() {
            for (k, v) in pairs {
                writer.push(p as u32, k, v).unwrap();
            }
        }
        writer.finish().unwrap()
    }

    fn read(path: &Path, partition: u32) -> anyhow::Result<Vec<Pair>> {
        let mut reader = BlockReader::open_partition(path, partition)?;
        let mut out = Vec::new();
        while reader.advance()? {
            out.push((reader.key().to_vec(), reader.value().to_vec()));
        }
        Ok(out)
    }

    fn sorted_pairs(n: u32, seed: u32) -> Vec<Pair> {
        let mut pairs: Vec<Pair> = (0..n)
            .map(|i| {
                let k = (i.wrapping_mul(2_654_435_761).wrapping_add(seed)) % (n / 3 + 1);
                let value = if i % 997 == 0 {
                    vec![b'x'; BLOCK_BYTES + 17]
                } else {
                    i.to_string().into_bytes()
                };
                (format!("key-{k:08}").into_bytes(), value)
            })
            .collect();
        pairs.sort_by(|a, b| a.0.cmp(&b.0));
        pairs
    }

    /// Records past several blocks (and a record larger than a block) read
    /// back exactly, with either codec; empty partitions too.
    #[test]
    fn a_run_gives_back_each_partition_with_either_codec() {
        let dir = tempfile::tempdir().unwrap();
        for codec in [Compression::None, Compression::Lz4] {
            let parts = vec![sorted_pairs(20_000, 1), Vec::new(), sorted_pairs(3_000, 2)];
            let path = dir.path().join(format!("{codec:?}"));
            write(&path, &parts, codec);
            for (p, pairs) in parts.iter().enumerate() {
                assert_eq!(&read(&path, p as u32).unwrap(), pairs);
            }
            let err = read(&path, 3).unwrap_err();
            assert_eq!(
                format!("{err:#}"),
                format!(
                    "reading intermediate file {}: no partition 3: it holds 3",
                    path.display()
                )
            );
        }
    }

    /// Integrity: any single flipped byte — header or block — is an error,
    /// never different records (checked at every byte of a small run).
    #[test]
    fn every_flipped_byte_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let parts = vec![
            vec![
                (b"a".to_vec(), b"1".to_vec()),
                (b"b".to_vec(), b"2".to_vec()),
            ],
            vec![(b"c".to_vec(), vec![7; 300])],
        ];
        for codec in [Compression::None, Compression::Lz4] {
            let path = dir.path().join("run");
            write(&path, &parts, codec);
            let good = std::fs::read(&path).unwrap();
            for at in 0..good.len() {
                let mut bad = good.clone();
                bad[at] ^= 0x10;
                std::fs::write(&path, &bad).unwrap();
                let got: Vec<anyhow::Result<Vec<Pair>>> = (0..2).map(|p| read(&path, p)).collect();
                assert!(
                    got.iter().any(|r| r.is_err()),
                    "{codec:?}: flipping byte {at} of {} went unnoticed",
                    good.len()
                );
            }
        }
    }

    /// The merge equals a stable sort of the sources concatenated (equal
    /// keys: source order), through a level of merges when there are more
    /// runs than the fan-in (two full groups and a single run left over),
    /// and the level's files are gone afterwards.
    #[test]
    fn merging_runs_equals_a_stable_sort() {
        let dir = tempfile::tempdir().unwrap();
        let runs: Vec<PathBuf> = (0..(2 * MERGE_FAN_IN as u32 + 1))
            .map(|i| {
                let path = dir.path().join(format!("run{i}"));
                let mut pairs = sorted_pairs(300 + i, i);
                for pair in &mut pairs {
                    pair.1 = format!(
                        "{}@{i}",
                        String::from_utf8_lossy(&pair.1[..4.min(pair.1.len())])
                    )
                    .into_bytes();
                }
                write(&path, &[pairs.clone(), pairs], Compression::Lz4);
                path
            })
            .collect();
        let mut want: Vec<Pair> = Vec::new();
        for run in &runs {
            want.extend(read(run, 1).unwrap());
        }
        want.sort_by(|a, b| a.0.cmp(&b.0));
        let out = dir.path().join("merged");
        merge_runs(&runs, 2, Compression::Lz4, &out).unwrap();
        assert_eq!(read(&out, 1).unwrap(), want);
        assert_eq!(read(&out, 0).unwrap(), want);
        let files = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(files, runs.len() + 1, "merge levels left files behind");
    }

    /// Merge planning: whatever the count, levels of disjoint groups of
    /// 2..=fan_in consecutive sources end in at most fan_in sources; when
    /// one level can get there it is the only one and merges the fewest
    /// sources that can (each group of `s` removes `s - 1`).
    #[test]
    fn merge_levels_end_within_the_fan_in_rewriting_the_fewest() {
        for fan_in in [2, 3, 4, 7, 64] {
            for n in 0..=(fan_in * fan_in * 3 + 5) {
                let mut count = n;
                let mut levels = 0;
                loop {
                    let level = merge_level(count, fan_in);
                    if level.is_empty() {
                        break;
                    }
                    levels += 1;
                    let mut end = 0;
                    for group in &level {
                        assert!(group.start >= end && (2..=fan_in).contains(&group.len()));
                        end = group.end;
                    }
                    assert!(end <= count);
                    let merged: usize = level.iter().map(|g| g.len()).sum();
                    if count <= fan_in * fan_in {
                        let excess = count - fan_in;
                        assert_eq!(merged, excess + excess.div_ceil(fan_in - 1), "n={count}");
                    }
                    count -= merged - level.len();
                }
                assert!(count <= fan_in, "n={n} fan_in={fan_in}: {count} left");
                if n <= fan_in * fan_in {
                    assert!(levels <= 1, "n={n} fan_in={fan_in}: {levels} levels");
                }
            }
        }
    }

    proptest::proptest! {
        /// Keys whose prefixes differ order as their prefixes do (zero
        /// bytes and keys shorter than eight bytes included).
        #[test]
        fn key_prefixes_order_as_keys_do(
            a in proptest::collection::vec(0u8..3, 0..12),
            b in proptest::collection::vec(0u8..3, 0..12),
        ) {
            let (pa, pb) = (key_prefix(&a), key_prefix(&b));
            if pa != pb {
                proptest::prop_assert_eq!(pa.cmp(&pb), a.cmp(&b));
            }
        }
    }

    /// Golden bytes: changing them changes what every reader of a map
    /// output (another worker's fetch) sees.
    #[test]
    fn run_format_golden_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run");
        write(
            &path,
            &[vec![(b"k".to_vec(), b"v".to_vec())], Vec::new()],
            Compression::None,
        );
        let bytes = std::fs::read(&path).unwrap();
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            concat!(
                "574d525348554631",
                "0200000000000000",
                "2c00000000000000",
                "3d00000000000000",
                "3d00000000000000",
                "f962e4d3",
                "00",
                "04000000",
                "04000000",
                "18730135",
                "016b0176"
            )
        );
    }
}

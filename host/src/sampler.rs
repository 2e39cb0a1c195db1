//! The key sampler of `--partitioner range` (TeraSort's sampler): pick the
//! `R - 1` boundaries that cut the job's map keys into `R` ranges of about
//! equal size, so that `part-r-00000 < part-r-00001 < …` in byte order.
//!
//! # Design
//!
//! - **What is sampled.** The keys a range partitioner sees are whatever the
//!   job's *map* component emits, not input lines, so the sampler runs the
//!   job's map component ([`Sandbox::run_map`]) over a bounded sample of the
//!   input and keeps the keys it emits (values are dropped).
//! - **Which input.** [`SAMPLE_WINDOWS`] windows at evenly spaced byte
//!   positions of the whole input (over the planned splits, in order), each
//!   starting at the first line that starts at or after its position and
//!   holding whole lines, at most `split size / 10` bytes (clamped to
//!   [`MIN_WINDOW_BYTES`] … [`MAX_WINDOW_BYTES`]; one line longer than that
//!   is taken whole). With ten or more equal splits that is TeraSort's
//!   "the start of 10 evenly spaced splits"; with fewer splits (one big
//!   file) the windows still spread over the whole input. Each window is one
//!   `map` call (the key is the file's name, as in a map attempt); windows
//!   never overlap.
//! - **Limits.** The whole sample is about one split's worth of input and
//!   runs as one attempt: the job's limits (fuel, memory, output held per
//!   window), one wall-clock deadline for all windows, at most
//!   [`SAMPLE_TIMEOUT_MS`] (the coordinator plans jobs on its driver task,
//!   which must not stall past a lease). If the job can map a split, it can
//!   map its sample.
//! - **Failures.** A window whose `map` fails (trap, error, a limit) refuses
//!   the job with one line naming the window; nothing has been created yet.
//!   Skip mode does not apply to the sample.
//! - **Keys kept.** At most [`MAX_SAMPLE_KEYS`] (TeraSort's default sample
//!   size), a uniform reservoir sample of every key emitted, drawn with a
//!   fixed seed (the same input and component give the same boundaries);
//!   each key is cut to [`MAX_BOUNDARY_BYTES`] (a boundary travels in every
//!   assignment; cutting keys keeps their byte order, so the partition
//!   stays a total order, only less even among keys that share a long
//!   prefix).
//! - **Quantiles** ([`pick_boundaries`]): sort the sample, take the keys at
//!   positions `i·n/R` for `i = 1 … R-1`, each strictly greater than the
//!   previous boundary and than the smallest key (moving forward past
//!   repeats). Fewer distinct keys than reducers give fewer boundaries:
//!   reducers past the last boundary get nothing. One key is never split
//!   over reducers: a single key holding half the input makes one reducer
//!   hold half of it.
//! - **Durability.** The boundaries go into the job's request, stored with
//!   its record: a restored or resumed job uses the same boundaries and
//!   never samples again.
//!
//! Map keys after a combiner are assumed to be map keys (the combiner
//! should not invent keys); they are partitioned by the same boundaries.

use crate::model::{InputSplit, ModuleHash, Partitioner};
use crate::sandbox::{AttemptContext, PairSink, Role, Sandbox};
use crate::wire::JobRequest;
use anyhow::{Context as _, bail};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

/// Windows of input the map component is run over.
pub const SAMPLE_WINDOWS: u64 = 10;
/// The largest window (TeraSort: about 10,000 records of 100 bytes).
pub const MAX_WINDOW_BYTES: u64 = 1 << 20;
/// The smallest window, however small the splits.
pub const MIN_WINDOW_BYTES: u64 = 16 << 10;
/// Keys kept from the sample (a reservoir).
pub const MAX_SAMPLE_KEYS: usize = 100_000;
/// A sampled key is cut to this many bytes, so no boundary is longer.
pub const MAX_BOUNDARY_BYTES: usize = 256;
/// The wall-clock bound of the whole sample (below the job's `--timeout`
/// when that is shorter).
pub const SAMPLE_TIMEOUT_MS: u64 = 10_000;
/// The reservoir's fixed seed: sampling is deterministic.
const SEED: u64 = 0x7e7a_5047_5eed_0001;

/// The job's map component, for the sampler.
pub struct MapComponent<'a> {
    /// The component's bytes (their hash must be the job's map module).
    pub bytes: &'a [u8],
    /// The sandbox to run it in (`wmr run`: the executor's, which has it
    /// compiled already); `None`: a sandbox made for the sample and dropped
    /// after it (the coordinator, which runs no guests of its own).
    pub sandbox: Option<&'a Sandbox>,
}

/// Settle the job's partitioner before it is planned: a range partitioner
/// without boundaries gets them from a sample of `splits` (see the module
/// docs); one with boundaries (sent by a client) has them checked. Leaves a
/// hash partitioner alone. Creates no file.
pub fn settle_partitioner(
    request: &mut JobRequest,
    splits: &[InputSplit],
    map_module: &ModuleHash,
    map: &MapComponent<'_>,
) -> anyhow::Result<()> {
    let Partitioner::Range { boundaries } = &request.shuffle_settings.partitioner else {
        return Ok(());
    };
    if !boundaries.is_empty() {
        return check_boundaries(boundaries, request.reducers).map_err(anyhow::Error::msg);
    }
    if request.reducers < 2 {
        // One range: nothing to cut.
        return Ok(());
    }
    let keys = sample_keys(request, splits, map_module, map)
        .context("sampling keys for --partitioner range")?;
    let boundaries = pick_boundaries(keys, request.reducers);
    tracing::info!(
        boundaries = boundaries.len(),
        reducers = request.reducers,
        "range partitioner sampled"
    );
    request.shuffle_settings.partitioner = Partitioner::Range { boundaries };
    Ok(())
}

/// Boundaries a client sent: sorted, distinct, fewer than `reducers`, each
/// at most [`MAX_BOUNDARY_BYTES`] (a partition index never reaches
/// `reducers`).
pub fn check_boundaries(boundaries: &[Vec<u8>], reducers: u32) -> Result<(), String> {
    let fits = boundaries.len() < reducers as usize
        && boundaries.windows(2).all(|w| w[0] < w[1])
        && boundaries.iter().all(|b| b.len() <= MAX_BOUNDARY_BYTES);
    if fits {
        Ok(())
    } else {
        Err(format!(
            "--partitioner range: {} boundaries for {reducers} reducers; they must be fewer than --reducers, sorted, distinct and at most {MAX_BOUNDARY_BYTES} bytes each",
            boundaries.len()
        ))
    }
}

/// The boundaries of `reducers` ranges of about equal size from a sample of
/// keys: the keys at positions `i·n/R` of the sorted sample (`i = 1 … R-1`),
/// each moved forward past repeats until it is greater than the previous
/// boundary and than the smallest key. Strictly increasing, at most
/// `reducers - 1` of them, fewer when the sample has fewer distinct keys.
pub fn pick_boundaries(mut keys: Vec<Vec<u8>>, reducers: u32) -> Vec<Vec<u8>> {
    keys.sort_unstable();
    let n = keys.len();
    let r = reducers as usize;
    let mut boundaries: Vec<Vec<u8>> = Vec::new();
    if n == 0 || r < 2 {
        return boundaries;
    }
    let mut at = 0;
    for i in 1..r {
        at = at.max(i * n / r);
        // Greater than the last boundary, or than the smallest key: a
        // range below the smallest sampled key would hold nothing.
        let floor = boundaries.last().unwrap_or(&keys[0]);
        while at < n && keys[at] <= *floor {
            at += 1;
        }
        if at == n {
            break;
        }
        boundaries.push(keys[at].clone());
    }
    boundaries
}

/// Run the map component over the sample windows; the keys it emitted (a
/// reservoir of at most [`MAX_SAMPLE_KEYS`], each cut to
/// [`MAX_BOUNDARY_BYTES`]).
fn sample_keys(
    request: &JobRequest,
    splits: &[InputSplit],
    map_module: &ModuleHash,
    map: &MapComponent<'_>,
) -> anyhow::Result<Vec<Vec<u8>>> {
    if ModuleHash::of(map.bytes) != *map_module {
        bail!("the map component changed while the job was planned");
    }
    // On a thread of its own: the coordinator plans jobs on its tokio
    // runtime, where WASI's synchronous bindings may not block.
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("wmr-sampler".into())
            .spawn_scoped(scope, || run_sample(request, splits, map))
            .context("starting the sampler thread")?
            .join()
            .unwrap_or_else(|_| bail!("the sampler panicked"))
    })
}

/// [`sample_keys`] on the sampler's thread.
fn run_sample(
    request: &JobRequest,
    splits: &[InputSplit],
    map: &MapComponent<'_>,
) -> anyhow::Result<Vec<Vec<u8>>> {
    let own;
    let sandbox = match map.sandbox {
        Some(sandbox) => sandbox,
        None => {
            own = Sandbox::with_capacity(1)?;
            &own
        }
    };
    let module = sandbox.load(map.bytes, Role::Map)?;
    let mut limits = request.limits.clone();
    limits.timeout_ms = limits.timeout_ms.min(SAMPLE_TIMEOUT_MS);
    let mut params = request.params.clone();
    params.insert("wmr.attempt".into(), "1".into());
    params.insert("wmr.task".into(), "sample".into());
    let ctx = AttemptContext::new(limits, Arc::new(params), Arc::new(AtomicBool::new(false)));
    let reservoir = Reservoir::new();
    let window_bytes =
        (request.split_bytes / SAMPLE_WINDOWS).clamp(MIN_WINDOW_BYTES, MAX_WINDOW_BYTES);
    for window in windows(splits, window_bytes) {
        let split = &splits[window.split];
        let Some((offset, bytes)) = read_window(split, &window, ctx.limits.memory_bytes)
            .with_context(|| format!("input {}", split.path.display()))?
        else {
            continue;
        };
        let name = split
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let call = sandbox.run_map(
            &module,
            &ctx,
            name.as_bytes(),
            &bytes,
            Box::new(reservoir.clone()),
        );
        if let Err(failure) = call.result {
            // One line, whatever the guest's message holds.
            let failure = failure.to_string().replace(['\n', '\r'], " ");
            bail!(
                "map of {} at offset {offset}: {failure}",
                split.path.display()
            );
        }
        // The keys kept are the reservoir's; the output limit holds per
        // window, as it would per split.
        ctx.restore_output_held(0);
    }
    Ok(reservoir.into_keys())
}

/// Where one sample window starts looking for its first line, and where it
/// must end at the latest (the next window's position in the same split).
#[derive(Debug, PartialEq, Eq)]
struct Window {
    split: usize,
    from: u64,
    until: u64,
    bytes: u64,
}

/// [`SAMPLE_WINDOWS`] windows at evenly spaced positions of the splits'
/// bytes taken in order (fewer when the input is smaller than that many
/// bytes).
fn windows(splits: &[InputSplit], bytes: u64) -> Vec<Window> {
    let total: u64 = splits.iter().map(|s| s.len).sum();
    let mut positions: Vec<u64> = (0..SAMPLE_WINDOWS)
        .map(|i| (u128::from(i) * u128::from(total) / u128::from(SAMPLE_WINDOWS)) as u64)
        .collect();
    positions.dedup();
    let mut found: Vec<Window> = Vec::new();
    let (mut split, mut base) = (0, 0u64);
    for position in positions.into_iter().filter(|&p| p < total) {
        while position >= base + splits[split].len {
            base += splits[split].len;
            split += 1;
        }
        let s = &splits[split];
        let from = s.offset + (position - base);
        if let Some(last) = found.last_mut()
            && last.split == split
        {
            last.until = from;
        }
        found.push(Window {
            split,
            from,
            until: s.offset + s.len,
            bytes,
        });
    }
    found
}

/// The window's bytes: whole lines, starting at the first line that starts
/// at or after `window.from`, at most `window.bytes` of them and ending at
/// or before `window.until` (but at least one whole line, if that line is
/// at most `max_line` bytes); with the offset of its first byte. `None`
/// when no line starts in the window.
fn read_window(
    split: &InputSplit,
    window: &Window,
    max_line: u64,
) -> anyhow::Result<Option<(u64, Vec<u8>)>> {
    let split_end = split.offset + split.len;
    let mut file = crate::storage::InputReader::open(&split.path)?;
    // A split starts with a line; elsewhere a line starts after a `\n`.
    let start = if window.from == split.offset {
        window.from
    } else {
        crate::split::line_end_at_or_after(&mut file, window.from - 1, split_end)?
    };
    if start >= window.until.min(split_end) {
        return Ok(None);
    }
    file.seek(SeekFrom::Start(start))?;
    let mut file = BufReader::new(file);
    let want = window.bytes.min(window.until - start);
    let mut bytes = Vec::new();
    (&mut file).take(want).read_to_end(&mut bytes)?;
    let end = start + bytes.len() as u64;
    if end < split_end {
        match bytes.iter().rposition(|&b| b == b'\n') {
            Some(i) => bytes.truncate(i + 1),
            None => {
                // The first line is longer than the window: take it whole,
                // unless a map attempt could not hold it either.
                let rest = (split_end - end).min(max_line.saturating_sub(bytes.len() as u64));
                (&mut file).take(rest).read_until(b'\n', &mut bytes)?;
                let whole = bytes.last() == Some(&b'\n') || start + bytes.len() as u64 == split_end;
                if !whole {
                    return Ok(None);
                }
            }
        }
    }
    Ok(Some((start, bytes)))
}

/// A uniform sample of the emitted keys (Algorithm R), shared by the
/// windows' stores.
#[derive(Clone)]
struct Reservoir(Arc<Mutex<ReservoirState>>);

struct ReservoirState {
    keys: Vec<Vec<u8>>,
    seen: u64,
    rng: rand::rngs::StdRng,
}

impl Reservoir {
    fn new() -> Self {
        Reservoir(Arc::new(Mutex::new(ReservoirState {
            keys: Vec::new(),
            seen: 0,
            rng: rand::SeedableRng::seed_from_u64(SEED),
        })))
    }

    fn into_keys(self) -> Vec<Vec<u8>> {
        std::mem::take(&mut self.0.lock().expect("poisoned").keys)
    }
}

impl PairSink for Reservoir {
    fn accept(&mut self, mut key: Vec<u8>, _value: Vec<u8>) -> anyhow::Result<()> {
        key.truncate(MAX_BOUNDARY_BYTES);
        let mut state = self.0.lock().expect("poisoned");
        state.seen += 1;
        if state.keys.len() < MAX_SAMPLE_KEYS {
            state.keys.push(key);
        } else {
            let seen = state.seen;
            let j = rand::Rng::random_range(&mut state.rng, 0..seen);
            if let Some(slot) = state.keys.get_mut(j as usize) {
                *slot = key;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(list: &[&str]) -> Vec<Vec<u8>> {
        list.iter().map(|k| k.as_bytes().to_vec()).collect()
    }

    /// Every key's partition under `boundaries`, among `reducers`.
    fn partition_sizes(sample: &[Vec<u8>], boundaries: Vec<Vec<u8>>, reducers: u32) -> Vec<usize> {
        let p = Partitioner::Range { boundaries };
        let mut sizes = vec![0; reducers as usize];
        for k in sample {
            sizes[p.partition(k, reducers) as usize] += 1;
        }
        sizes
    }

    /// Invariant: the boundaries are the `i·n/R` quantiles of the sorted
    /// sample, so distinct keys split into equal ranges, in key order.
    #[test]
    fn boundaries_are_evenly_spaced_quantiles() {
        let sample: Vec<Vec<u8>> = (0..100)
            .rev()
            .map(|i| format!("k{i:03}").into_bytes())
            .collect();
        let b = pick_boundaries(sample.clone(), 4);
        assert_eq!(b, keys(&["k025", "k050", "k075"]));
        assert_eq!(partition_sizes(&sample, b, 4), vec![25, 25, 25, 25]);
        assert_eq!(pick_boundaries(sample.clone(), 1), Vec::<Vec<u8>>::new());
        assert_eq!(pick_boundaries(Vec::new(), 8), Vec::<Vec<u8>>::new());
    }

    /// Invariant: with fewer distinct keys than reducers, the boundaries
    /// are the distinct keys but the smallest, strictly increasing: every
    /// distinct key has a reducer of its own, and no partition index
    /// reaches `reducers`.
    #[test]
    fn fewer_distinct_keys_than_reducers_give_fewer_boundaries() {
        let sample = keys(&["c", "a", "b", "a", "b", "c", "a"]);
        let b = pick_boundaries(sample.clone(), 8);
        assert_eq!(b, keys(&["b", "c"]));
        check_boundaries(&b, 8).unwrap();
        assert_eq!(partition_sizes(&sample, b, 8), vec![3, 2, 2, 0, 0, 0, 0, 0]);
        // One distinct key: nothing to cut.
        assert_eq!(pick_boundaries(keys(&["x"; 50]), 4), Vec::<Vec<u8>>::new());
    }

    /// Invariant: a heavily repeated key takes one range; the boundaries
    /// after it still cut the remaining keys, strictly increasing.
    #[test]
    fn repeats_move_boundaries_forward() {
        let mut sample = keys(&["m"; 60]);
        sample.extend((0..40).map(|i| format!("z{i:02}").into_bytes()));
        sample.extend(keys(&["a"]));
        let b = pick_boundaries(sample.clone(), 4);
        assert!(b.windows(2).all(|w| w[0] < w[1]), "{b:?}");
        assert_eq!(b.len(), 3, "{b:?}");
        assert_eq!(b[0], b"m");
        let sizes = partition_sizes(&sample, b, 4);
        assert_eq!(sizes[0], 1, "{sizes:?}");
        assert_eq!(sizes[1], 60, "{sizes:?}");
        assert_eq!(sizes.iter().sum::<usize>(), sample.len());
        assert!(sizes[2] > 0 && sizes[3] > 0, "{sizes:?}");
    }

    #[test]
    fn boundaries_from_clients_are_checked() {
        check_boundaries(&keys(&["b", "d"]), 3).unwrap();
        check_boundaries(&[], 1).unwrap();
        for (bad, reducers) in [
            (keys(&["b", "d"]), 2),
            (keys(&["d", "b"]), 4),
            (keys(&["b", "b"]), 4),
        ] {
            assert_eq!(
                check_boundaries(&bad, reducers).unwrap_err(),
                format!(
                    "--partitioner range: 2 boundaries for {reducers} reducers; they must be fewer than --reducers, sorted, distinct and at most 256 bytes each"
                )
            );
        }
        assert!(check_boundaries(&[vec![b'x'; MAX_BOUNDARY_BYTES + 1]], 2).is_err());
    }

    /// Invariant: windows sit at evenly spaced positions of the input, in
    /// order, and never reach into the next window of their split.
    #[test]
    fn windows_spread_over_the_input_without_overlap() {
        let split = |len, offset| InputSplit {
            path: "f".into(),
            offset,
            len,
        };
        // One split of 1000 bytes: ten windows, each ending where the next starts.
        let w = windows(&[split(1000, 0)], 64);
        assert_eq!(w.len(), 10);
        for (i, window) in w.iter().enumerate() {
            assert_eq!(window.from, 100 * i as u64);
            assert_eq!(window.until, 100 * i as u64 + 100);
        }
        // Twenty splits of 50 bytes: one window at the start of every other.
        let splits: Vec<InputSplit> = (0..20).map(|i| split(50, 50 * i)).collect();
        let w = windows(&splits, 64);
        assert_eq!(
            w.iter()
                .map(|w| (w.split, w.from, w.until))
                .collect::<Vec<_>>(),
            (0..10)
                .map(|i| (2 * i, 100 * i as u64, 100 * i as u64 + 50))
                .collect::<Vec<_>>()
        );
        // Less input than windows, and empty splits.
        assert_eq!(windows(&[split(0, 0), split(3, 0)], 64).len(), 3);
        assert!(windows(&[split(0, 0)], 64).is_empty());
    }

    /// Invariant: a window holds whole lines only, starting at the first
    /// line that starts at or after its position.
    #[test]
    fn a_window_holds_whole_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.txt");
        std::fs::write(&path, "aaaa\nbbbb\ncccc\ndddd\n").unwrap();
        let split = InputSplit {
            path: path.clone(),
            offset: 0,
            len: 20,
        };
        let read = |from, until, bytes| {
            let w = Window {
                split: 0,
                from,
                until,
                bytes,
            };
            read_window(&split, &w, 1 << 20).unwrap()
        };
        assert_eq!(read(0, 20, 12), Some((0, b"aaaa\nbbbb\n".to_vec())));
        assert_eq!(read(1, 20, 100), Some((5, b"bbbb\ncccc\ndddd\n".to_vec())));
        assert_eq!(read(5, 20, 5), Some((5, b"bbbb\n".to_vec())));
        assert_eq!(read(6, 16, 100), Some((10, b"cccc\n".to_vec())));
        // Cut short by the next window, it still ends at a line's end.
        assert_eq!(read(6, 12, 100), Some((10, b"cccc\n".to_vec())));
        // A line longer than the window is taken whole.
        assert_eq!(read(0, 20, 2), Some((0, b"aaaa\n".to_vec())));
        // No line starts in the window.
        assert_eq!(read(17, 20, 100), None);
        // A window at the start of a split in the middle of its file.
        let second = InputSplit {
            path,
            offset: 10,
            len: 10,
        };
        let w = Window {
            split: 1,
            from: 10,
            until: 20,
            bytes: 100,
        };
        assert_eq!(
            read_window(&second, &w, 1 << 20).unwrap(),
            Some((10, b"cccc\ndddd\n".to_vec()))
        );
    }
}

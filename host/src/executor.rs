//! The worker side of an attempt: turn an [`Assignment`] into private output
//! files and an [`AttemptReport`]. It never publishes: the coordinator's
//! commit does (see [`crate::commit`]).

use crate::commit::JobDirs;
use crate::compile_cache::CacheOptions;
use crate::intermediate::{self, BlockReader, Merge, RunWriter};
use crate::map_buffer::{CombineFn, MapBuffer, MapOutput, OutputSink};
use crate::model::{
    Assignment, AttemptEpoch, AttemptFailure, AttemptReport, AttemptStats, ModuleHash, TaskId,
    TaskInput, WorkerId,
};
use crate::reduce_input::{MergeSource, PartBatches};
use crate::sandbox::{
    AttemptContext, CallOutcome, Combiner, LoadedModule, PairSink, Role, Sandbox, pair_charge,
};
use crate::shuffle;
use crate::split;
use anyhow::{Context as _, anyhow};
use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

/// Host counters of a map attempt that spilled: runs written, pairs in them.
pub const SPILLS_COUNTER: &str = "wmr.map.spills";
pub const SPILLED_PAIRS_COUNTER: &str = "wmr.map.spilled-pairs";
/// Stored (compressed) bytes of those runs.
pub const SPILLED_BYTES_COUNTER: &str = "wmr.map.spilled-bytes";
/// Pairs handed to the combiner and pairs it emitted, over the spills and
/// the last part of the map output (Hadoop's COMBINE_INPUT_RECORDS,
/// COMBINE_OUTPUT_RECORDS).
pub const COMBINE_INPUT_COUNTER: &str = "wmr.map.combine-input-pairs";
pub const COMBINE_OUTPUT_COUNTER: &str = "wmr.map.combine-output-pairs";

fn create_parent(path: &Path) -> anyhow::Result<()> {
    let dir = path.parent().expect("attempt paths have parents");
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))
}

/// Runs attempts. Compiles each module once per process and keeps it.
pub struct Executor {
    sandbox: Sandbox,
    modules: RwLock<HashMap<(ModuleHash, RoleKey), LoadedModule>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum RoleKey {
    Map,
    Reduce,
}

impl From<Role> for RoleKey {
    fn from(role: Role) -> Self {
        match role {
            Role::Map => RoleKey::Map,
            Role::Reduce => RoleKey::Reduce,
        }
    }
}

impl Executor {
    /// An executor for `slots` attempts at a time. Its sandbox holds room
    /// for three stores per slot and a few more: an interrupted attempt may
    /// still be unwinding when its slot is given the next one, and a map
    /// runs its combiner at a spill.
    pub fn new(slots: u32) -> anyhow::Result<Self> {
        Self::with_compile_cache(slots, None)
    }

    /// [`Self::new`], loading compiled components from the on-disk cache in
    /// `cache` (and writing them to it) if given.
    pub fn with_compile_cache(slots: u32, cache: Option<&CacheOptions>) -> anyhow::Result<Self> {
        // Three stores per slot: a map attempt runs its combiner while the
        // map waits in a spill.
        let mut sandbox = Sandbox::with_capacity(slots.saturating_mul(3).saturating_add(4))?;
        if let Some(options) = cache {
            sandbox.use_compile_cache(options);
        }
        Ok(Executor {
            sandbox,
            modules: RwLock::default(),
        })
    }

    pub fn sandbox(&self) -> &Sandbox {
        &self.sandbox
    }

    pub fn has_module(&self, hash: &ModuleHash, role: Role) -> bool {
        let modules = self.modules.read().expect("poisoned");
        modules.contains_key(&(hash.clone(), role.into()))
    }

    /// Compile and validate `bytes` for `role`; cached by content hash.
    pub fn add_module(&self, bytes: &[u8], role: Role) -> anyhow::Result<ModuleHash> {
        let hash = ModuleHash::of(bytes);
        if self.has_module(&hash, role) {
            return Ok(hash);
        }
        let loaded = self.sandbox.load_hashed(bytes, &hash, role)?;
        let mut modules = self.modules.write().expect("poisoned");
        modules.insert((hash.clone(), role.into()), loaded);
        Ok(hash)
    }

    fn module(&self, hash: &ModuleHash, role: Role) -> Result<LoadedModule, AttemptFailure> {
        let modules = self.modules.read().expect("poisoned");
        modules
            .get(&(hash.clone(), role.into()))
            .cloned()
            .ok_or_else(|| AttemptFailure::Host(format!("module {hash} is not loaded")))
    }

    /// Run one attempt to the end. Output stays attempt-private.
    pub fn execute(
        &self,
        assignment: &Assignment,
        worker: WorkerId,
        cancel: Arc<AtomicBool>,
    ) -> AttemptReport {
        self.execute_with_inputs(assignment, worker, cancel, None)
    }

    /// [`Self::execute`], with a reduce task's map outputs already fetched
    /// (encoded partition files, in `map_outputs` order) instead of read
    /// from the shared store.
    pub fn execute_with_inputs(
        &self,
        assignment: &Assignment,
        worker: WorkerId,
        cancel: Arc<AtomicBool>,
        fetched: Option<Vec<PathBuf>>,
    ) -> AttemptReport {
        let span = tracing::info_span!("attempt", job = %assignment.job, task = %assignment.task,
            epoch = %assignment.epoch, %worker);
        let _enter = span.enter();
        let started = Instant::now();
        let dirs = match JobDirs::new(assignment.job, &assignment.work_root, &assignment.output)
            .with_shuffle(&assignment.shuffle, &assignment.tenant)
        {
            Ok(dirs) => dirs,
            Err(e) => {
                return AttemptReport {
                    job: assignment.job,
                    task: assignment.task,
                    epoch: assignment.epoch,
                    worker,
                    outcome: Err(AttemptFailure::Host(format!("{e:#}"))),
                    log: String::new(),
                };
            }
        };
        let ctx = AttemptContext::new(
            assignment.limits.clone(),
            Arc::new(assignment.params.clone()),
            cancel,
        );
        let (outcome, log) = match &assignment.input {
            TaskInput::Map(split) => self.run_map(&dirs, assignment, &ctx, split),
            TaskInput::Reduce {
                partition,
                map_outputs,
            } => self.run_reduce(&dirs, assignment, &ctx, *partition, map_outputs, fetched),
        };
        let outcome = outcome.map(|mut stats| {
            stats.wall_ms = started.elapsed().as_millis() as u64;
            stats
        });
        if let Err(failure) = &outcome {
            tracing::info!(%failure, "attempt failed");
            // Partial files of a failed attempt are deleted here too, not
            // only when the coordinator's discard arrives.
            let _ = dirs.abort_attempt(assignment.task, assignment.epoch);
        }
        AttemptReport {
            job: assignment.job,
            task: assignment.task,
            epoch: assignment.epoch,
            worker,
            outcome,
            log,
        }
    }

    fn run_map(
        &self,
        dirs: &JobDirs,
        a: &Assignment,
        ctx: &AttemptContext,
        split: &crate::model::InputSplit,
    ) -> (Result<AttemptStats, AttemptFailure>, String) {
        let module = match self.module(&a.module, Role::Map) {
            Ok(m) => m,
            Err(e) => return (Err(e), String::new()),
        };
        // The split is copied into the guest's memory whole: one larger
        // than the memory limit cannot run, so it is not read at all (a
        // single 6 GiB line took the host down).
        if split.len > ctx.limits.memory_bytes {
            let log = format!(
                "the split of {} at {} is {} bytes, more than the memory limit",
                split.path.display(),
                split.offset,
                split.len
            );
            return (
                Err(AttemptFailure::OutOfMemory(ctx.limits.memory_bytes)),
                log,
            );
        }
        let input = match split::read_split(split) {
            Ok(bytes) => bytes,
            Err(e) => return (Err(AttemptFailure::Host(format!("{e:#}"))), String::new()),
        };
        let path = dirs.attempt_path(a.task, a.epoch);
        if let Err(e) = create_parent(&path) {
            return (Err(AttemptFailure::Host(format!("{e:#}"))), String::new());
        }
        let settings = &a.shuffle_settings;
        let partitioner = Arc::new(settings.partitioner.clone());
        let mut output = MapOutput::new(
            MapBuffer::new(a.reducers, partitioner),
            settings.sort_buffer_bytes,
            settings.compression,
            &path,
        );
        // The combiner runs at every spill and on the last part: a failure
        // there fails the attempt as the combiner's own (never bisected).
        let combiner_failed = Arc::new(AtomicBool::new(false));
        if let Some(combiner) = self.sandbox.combiner(&module, ctx) {
            output = output.with_combiner(combine_fn(combiner, combiner_failed.clone()));
        }
        let output = Arc::new(Mutex::new(output));
        let name = split
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned());
        let key = name.unwrap_or_default();
        let call = self.sandbox.run_map(
            &module,
            ctx,
            key.as_bytes(),
            &input,
            Box::new(OutputSink::new(output.clone())),
        );
        let log = call.log.clone();
        let mut stats = stats_of(&call, input.len() as u64);
        let in_combiner = combiner_failed.load(std::sync::atomic::Ordering::Relaxed);
        match call.result {
            Ok(()) => {}
            Err(AttemptFailure::Trap(_)) if ctx.limits.max_dead_letters > 0 && !in_combiner => {
                // Skip mode: drop this call's output and find the records
                // the guest traps on, running the rest without them.
                output.lock().expect("poisoned").clear();
                ctx.restore_output_held(0);
                let found = self.isolate_bad_records(
                    &module,
                    ctx,
                    (&key, &input, split.offset),
                    &output,
                    &combiner_failed,
                );
                match found {
                    Ok(dead) => stats.dead_letters = dead,
                    Err(failure) => return (Err(failure), log),
                }
            }
            Err(failure) => return (Err(failure), log),
        }
        drop(input);
        let output = Arc::into_inner(output)
            .expect("the guest's stores are gone")
            .into_inner()
            .expect("poisoned");
        let written = output.finish_counted(&path);
        stats.fuel_used = ctx.fuel_used();
        let written = written.map(|(bytes, counters)| {
            // Host counters, as Hadoop's SPILLED_RECORDS and COMBINE_*:
            // summed over the committed attempts like the guest's own.
            let mut add = |name: &str, n: u64| {
                if n > 0 {
                    stats.counters.insert(name.into(), n as i64);
                }
            };
            add(SPILLS_COUNTER, counters.spills);
            add(SPILLED_PAIRS_COUNTER, counters.spilled_pairs);
            add(SPILLED_BYTES_COUNTER, counters.spilled_bytes);
            add(COMBINE_INPUT_COUNTER, counters.combine_input_pairs);
            add(COMBINE_OUTPUT_COUNTER, counters.combine_output_pairs);
            bytes
        });
        match written {
            Ok(bytes) => {
                stats.bytes_out = bytes;
                // Recorded with the commit: a re-announced copy must match.
                match crate::intermediate::digest_file(&path) {
                    Ok(digest) => stats.output_digest = Some(digest),
                    Err(e) => return (Err(AttemptFailure::Host(format!("{e:#}"))), log),
                }
                // `--shuffle-store`: in the store, at this attempt's own
                // key, before the report says it succeeded.
                if let Some(objects) = &dirs.shuffle {
                    let uploaded = objects.upload(a.task, a.epoch, &path);
                    let _ = std::fs::remove_file(&path);
                    if let Err(e) = uploaded {
                        return (Err(AttemptFailure::Host(format!("{e:#}"))), log);
                    }
                }
                (Ok(stats), log)
            }
            Err(failure) => (Err(failure), log),
        }
    }

    /// Bisect `input` by lines, in fresh stores, until every record that
    /// makes `map` trap is alone (Hadoop's skip mode). Output of the good
    /// ranges goes to `output`. At most `max_dead_letters` records are
    /// skipped; one more fails the attempt. Every run shares the attempt's
    /// fuel, deadline and output limit.
    fn isolate_bad_records(
        &self,
        module: &LoadedModule,
        ctx: &AttemptContext,
        (file, input, base_offset): (&str, &[u8], u64),
        output: &Arc<Mutex<MapOutput>>,
        combiner_failed: &AtomicBool,
    ) -> Result<Vec<crate::model::DeadLetter>, AttemptFailure> {
        let max = ctx.limits.max_dead_letters as usize;
        let bound = bisection_bound(ctx.limits.max_dead_letters);
        let mut runs = 0;
        let mut dead = Vec::new();
        // Ranges still to run, whole lines; the last pushed runs first.
        let mut ranges = vec![(0, input.len())];
        while let Some((lo, hi)) = ranges.pop() {
            runs += 1;
            if runs > bound {
                return Err(AttemptFailure::Trap(format!(
                    "skip mode ran {bound} guest stores without isolating the records that trap (the bound for --max-dead-letters {max})"
                )));
            }
            // Each run emits into an output of its own (it may spill too),
            // taken in when the run succeeds, dropped with its runs when
            // it traps.
            let child = Arc::new(Mutex::new(output.lock().expect("poisoned").child()));
            let held = ctx.output_held();
            let call = self.sandbox.run_map(
                module,
                ctx,
                file.as_bytes(),
                &input[lo..hi],
                Box::new(OutputSink::new(child.clone())),
            );
            let child = Arc::into_inner(child)
                .expect("the store is gone")
                .into_inner()
                .expect("poisoned");
            match call.result {
                Ok(()) => output.lock().expect("poisoned").absorb(child)?,
                Err(AttemptFailure::Trap(message))
                    if !combiner_failed.load(std::sync::atomic::Ordering::Relaxed) =>
                {
                    drop(child);
                    ctx.restore_output_held(held);
                    match split::middle_line_break(&input[lo..hi]) {
                        Some(mid) => {
                            ranges.push((lo + mid, hi));
                            ranges.push((lo, lo + mid));
                        }
                        None => {
                            dead.push(crate::model::DeadLetter {
                                file: file.to_string(),
                                offset: base_offset + lo as u64,
                                record: dead_letter_text(&input[lo..hi]),
                                message: message.clone(),
                            });
                            if dead.len() > max {
                                return Err(AttemptFailure::Trap(format!(
                                    "more than {max} records make the guest trap (--max-dead-letters); last: {message}"
                                )));
                            }
                        }
                    }
                }
                Err(other) => return Err(other),
            }
        }
        Ok(dead)
    }

    fn run_reduce(
        &self,
        dirs: &JobDirs,
        a: &Assignment,
        ctx: &AttemptContext,
        partition: u32,
        map_outputs: &[(TaskId, AttemptEpoch, WorkerId)],
        fetched: Option<Vec<PathBuf>>,
    ) -> (Result<AttemptStats, AttemptFailure>, String) {
        let scratch_dir = ScratchDir(dirs.reduce_scratch(a.task, a.epoch));
        let scratch = scratch_dir.0.as_path();
        let host_err = |e: anyhow::Error| AttemptFailure::Host(format!("{e:#}"));
        let module = match self.module(&a.module, Role::Reduce) {
            Ok(m) => m,
            Err(e) => return (Err(e), String::new()),
        };
        let fetched = match (fetched, &dirs.shuffle) {
            (None, Some(objects)) => {
                match fetch_from_store(objects, partition, map_outputs, scratch) {
                    Ok(paths) => Some(paths),
                    Err(failure) => return (Err(failure), String::new()),
                }
            }
            (fetched, _) => fetched,
        };
        // A map output that cannot be read whole and intact (missing,
        // truncated, a block failing its checksum) is a fetch failure: the
        // map task runs again; the reduce is not charged.
        let fetch_failed = |i: usize, e: anyhow::Error| {
            let (map_task, map_epoch, worker) = map_outputs[i];
            AttemptFailure::FetchFailed {
                map_task,
                map_epoch,
                worker,
                reason: format!("{e:#}"),
            }
        };
        // Sources in map-task order, so a key's values arrive in a
        // deterministic order. Each is opened only when it is merged: a
        // reader holds a file and ~130 KiB of buffers, and a job may have
        // thousands of map tasks.
        let mut sources: Vec<ReduceSource> = map_outputs
            .iter()
            .enumerate()
            .map(|(i, (task, epoch, _))| match &fetched {
                Some(paths) => ReduceSource::Fetched(paths[i].clone()),
                None => ReduceSource::Local(dirs.committed_path(*task, *epoch), partition),
            })
            .collect();
        // Which map outputs each source holds (a merged run: several).
        let mut origin: Vec<Vec<usize>> = (0..sources.len()).map(|i| vec![i]).collect();
        let mut bytes_in = 0;
        let mut open = |sources: Vec<ReduceSource>,
                        origin: &[Vec<usize>]|
         -> Result<Vec<BlockReader>, AttemptFailure> {
            let mut readers = Vec::with_capacity(sources.len());
            for (i, source) in sources.into_iter().enumerate() {
                let reader = match &source {
                    ReduceSource::Local(path, p) | ReduceSource::Merged(path, p) => {
                        BlockReader::open_partition(path, *p)
                    }
                    ReduceSource::Fetched(path) => BlockReader::open_blocks(path),
                }
                .map_err(|e| fetch_failed(origin[i][0], e))?;
                // A merged run's bytes were counted as its map outputs.
                if !matches!(source, ReduceSource::Merged(..)) {
                    bytes_in += reader.stored_bytes();
                }
                readers.push(reader);
            }
            Ok(readers)
        };
        // More sources than one merge holds: merge groups of consecutive
        // ones into runs first (keeping their order; as few as
        // `merge_level` allows), naming the map task of a bad one.
        let mut pass = 0;
        loop {
            let level = intermediate::merge_level(sources.len(), intermediate::MERGE_FAN_IN);
            if level.is_empty() {
                break;
            }
            let mut items = std::mem::take(&mut sources)
                .into_iter()
                .zip(std::mem::take(&mut origin));
            let mut at = 0;
            for range in level {
                let (kept, merged): (Vec<_>, Vec<_>) = items
                    .by_ref()
                    .take(range.end - at)
                    .enumerate()
                    .partition(|(i, _)| at + i < range.start);
                at = range.end;
                for (_, (source, from)) in kept {
                    sources.push(source);
                    origin.push(from);
                }
                let (taken, from): (Vec<_>, Vec<Vec<usize>>) =
                    merged.into_iter().map(|(_, item)| item).unzip();
                pass += 1;
                let run = scratch.join(format!("merge{pass}"));
                let readers = match open(taken, &from) {
                    Ok(readers) => readers,
                    Err(failure) => return (Err(failure), String::new()),
                };
                let merged = merge_to_run(readers, scratch, &run, a.shuffle_settings.compression)
                    .map_err(|(source, e)| match source {
                        Some(i) => fetch_failed(from[i][0], e),
                        None => host_err(e),
                    });
                if let Err(failure) = merged {
                    return (Err(failure), String::new());
                }
                sources.push(ReduceSource::Merged(run, 0));
                origin.push(from.concat());
            }
            for (source, from) in items {
                sources.push(source);
                origin.push(from);
            }
        }
        let readers = match open(sources, &origin) {
            Ok(readers) => readers,
            Err(failure) => return (Err(failure), String::new()),
        };
        let merge = match Merge::new(readers) {
            Ok(merge) => merge,
            Err(e) => {
                return (
                    Err(fetch_failed(origin[e.source][0], e.error)),
                    String::new(),
                );
            }
        };
        let failed = Arc::new(Mutex::new(None));
        let input = PartBatches::new(MergeSource {
            merge,
            failed: failed.clone(),
        });
        let path = dirs.reduce_attempt_file(a.task, a.epoch);
        let writer = match LineWriter::create(&path, a.output_format) {
            Ok(w) => w,
            Err(e) => return (Err(host_err(e)), String::new()),
        };
        let written = writer.written.clone();
        let call = self
            .sandbox
            .run_reduce(&module, ctx, Box::new(input), Box::new(writer));
        let log = call.log.clone();
        // The input could not be read to its end: whatever the guest did
        // with part of it is discarded with the attempt.
        if let Some(e) = failed.lock().expect("poisoned").take() {
            let i = origin[e.source][0];
            return (Err(fetch_failed(i, e.error)), log);
        }
        let mut stats = stats_of(&call, bytes_in);
        if let Err(failure) = call.result {
            return (Err(failure), log);
        }
        // The sandbox dropped the writer (flushed and fsynced it) with the store.
        let finished = written.lock().expect("poisoned").take();
        match finished {
            Some(Ok(bytes)) => {
                stats.bytes_out = bytes;
                // An object store output: uploaded now, completed only if
                // the coordinator commits this epoch.
                if let Err(e) = dirs.upload_reduce_attempt(a.task, a.epoch) {
                    return (Err(host_err(e)), log);
                }
                (Ok(stats), log)
            }
            Some(Err(e)) => (Err(AttemptFailure::Host(e)), log),
            None => (
                Err(AttemptFailure::Host("reduce output was not closed".into())),
                log,
            ),
        }
    }
}

/// `--shuffle-store`: partition `partition` of every map output, read from
/// the store into `scratch` (the committed epochs the assignment names). A
/// map output that cannot be read is a fetch failure naming its map task.
fn fetch_from_store(
    objects: &crate::shuffle_store::ShuffleObjects,
    partition: u32,
    map_outputs: &[(TaskId, AttemptEpoch, WorkerId)],
    scratch: &Path,
) -> Result<Vec<PathBuf>, AttemptFailure> {
    use crate::shuffle_store::Fetch;
    let mut paths = Vec::with_capacity(map_outputs.len());
    for (i, &(map_task, map_epoch, worker)) in map_outputs.iter().enumerate() {
        let path = scratch.join(format!("{i}.blocks"));
        match objects.fetch_partition(map_task, map_epoch, partition, &path) {
            Ok(_) => paths.push(path),
            Err(Fetch::Store(e)) => {
                return Err(AttemptFailure::FetchFailed {
                    map_task,
                    map_epoch,
                    worker,
                    reason: format!("{e:#}"),
                });
            }
            Err(Fetch::Local(e)) => {
                return Err(AttemptFailure::Host(format!(
                    "spooling the output of {map_task} {map_epoch}: {e:#}"
                )));
            }
        }
    }
    Ok(paths)
}

/// One input of a reduce attempt's merge.
enum ReduceSource {
    /// A partition of a committed map output in the shared store.
    Local(PathBuf, u32),
    /// A partition fetched from a worker and spooled (blocks only).
    Fetched(PathBuf),
    /// A run of an earlier merge pass, in the attempt's scratch directory.
    Merged(PathBuf, u32),
}

/// A reduce attempt's scratch directory, removed however the attempt ends.
struct ScratchDir(PathBuf);

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Merge `sources` into a one-partition run at `run` (in `scratch`). An
/// error names the source it came from, or none when writing failed.
fn merge_to_run(
    sources: Vec<BlockReader>,
    scratch: &Path,
    run: &Path,
    codec: crate::model::Compression,
) -> Result<BlockReader, (Option<usize>, anyhow::Error)> {
    let local = |e: anyhow::Error| (None, e);
    std::fs::create_dir_all(scratch)
        .with_context(|| format!("creating {}", scratch.display()))
        .map_err(local)?;
    let mut writer = RunWriter::create(run, 1, codec).map_err(local)?;
    let mut merge = Merge::new(sources).map_err(|e| (Some(e.source), e.error))?;
    while let Some((key, value)) = merge.next().map_err(|e| (Some(e.source), e.error))? {
        writer.push(0, key, value).map_err(local)?;
    }
    writer.finish().map_err(local)?;
    BlockReader::open_partition(run, 0).map_err(local)
}

/// The map output's combiner: each batch in a fresh store of the attempt;
/// its output replaces the batch's pairs against the output limit. A
/// failure is the combiner's (`in the combiner: …`) and sets `failed`.
fn combine_fn(combiner: Combiner, failed: Arc<AtomicBool>) -> CombineFn {
    Arc::new(move |groups, sink| {
        let ctx = combiner.ctx();
        let held = ctx.output_held();
        match combiner.run(groups, sink) {
            // Declined: whatever it emitted is dropped and the batch stays
            // as it came.
            None => {
                ctx.restore_output_held(held);
                Ok(false)
            }
            Some(Ok(())) => {
                let replaced = groups
                    .iter()
                    .flat_map(|g| g.values.iter().map(|v| pair_charge(g.key.len(), v.len())))
                    .sum();
                ctx.release_output(replaced);
                Ok(true)
            }
            Some(Err(failure)) => {
                failed.store(true, std::sync::atomic::Ordering::Relaxed);
                Err(match failure {
                    AttemptFailure::Trap(m) => {
                        AttemptFailure::Trap(format!("in the combiner: {m}"))
                    }
                    AttemptFailure::GuestError(m) => {
                        AttemptFailure::GuestError(format!("in the combiner: {m}"))
                    }
                    other => other,
                })
            }
        }
    })
}

/// The guest stores one attempt's skip mode may run: finding one bad
/// record among 2^40 lines takes at most 80 (both halves at each of 40
/// levels), so `max_dead_letters + 1` of them fit. A guest that traps on
/// every range but on no single line would otherwise run ~2 stores a line.
fn bisection_bound(max_dead_letters: u32) -> usize {
    80 * (max_dead_letters as usize + 1) + 1
}

/// A record for a dead letter: its first 1 KiB, as text (the record itself
/// may be gigabytes; it is cut before it is copied).
fn dead_letter_text(record: &[u8]) -> String {
    const KEPT: usize = 1024;
    // Up to 3 more bytes, so a character cut at KEPT is not lost to lossy decoding.
    let head = &record[..record.len().min(KEPT + 3)];
    let text = String::from_utf8_lossy(head);
    let mut text = text.trim_end_matches(['\n', '\r']).to_string();
    if text.len() > KEPT {
        let mut end = KEPT;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

fn stats_of(call: &CallOutcome, bytes_in: u64) -> AttemptStats {
    AttemptStats {
        bytes_in,
        bytes_out: call.bytes_out,
        records_out: call.records_out,
        fuel_used: call.fuel_used,
        wall_ms: 0,
        counters: call.counters.clone(),
        dead_letters: Vec::new(),
        output_digest: None,
    }
}

/// Writes reduce output records as lines in the job's output format;
/// flushes and fsyncs when dropped with the store, leaving the byte count
/// (or the error) in `written`.
struct LineWriter {
    file: Option<std::io::BufWriter<std::fs::File>>,
    format: crate::model::OutputFormat,
    line: Vec<u8>,
    bytes: u64,
    written: Arc<Mutex<Option<Result<u64, String>>>>,
}

impl LineWriter {
    fn create(path: &Path, format: crate::model::OutputFormat) -> anyhow::Result<Self> {
        let dir = path.parent().expect("attempt files have a parent");
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let file =
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
        Ok(LineWriter {
            file: Some(std::io::BufWriter::with_capacity(256 << 10, file)),
            format,
            line: Vec::new(),
            bytes: 0,
            written: Arc::default(),
        })
    }
}

impl PairSink for LineWriter {
    fn accept(&mut self, key: Vec<u8>, value: Vec<u8>) -> anyhow::Result<()> {
        self.line.clear();
        shuffle::output_record(&mut self.line, self.format, &key, &value);
        self.bytes += self.line.len() as u64;
        let file = self.file.as_mut().ok_or_else(|| anyhow!("output closed"))?;
        file.write_all(&self.line).context("writing reduce output")
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        let Some(file) = self.file.take() else { return };
        let result = file
            .into_inner()
            .map_err(|e| e.into_error())
            .and_then(|f| f.sync_all())
            .map(|()| self.bytes)
            .map_err(|e| format!("writing reduce output: {e}"));
        *self.written.lock().expect("poisoned") = Some(result);
    }
}

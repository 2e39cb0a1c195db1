//! The worker side of an attempt: turn an [`Assignment`] into private output
//! files and an [`AttemptReport`]. It never publishes: the coordinator's
//! commit does (see [`crate::commit`]).

use crate::commit::JobDirs;
use crate::map_buffer::{BufferSink, MapBuffer};
use crate::protocol::{
    Assignment, AttemptEpoch, AttemptFailure, AttemptReport, AttemptStats, ModuleHash, TaskId,
    TaskInput, WorkerId,
};
use crate::sandbox::{
    AttemptContext, CallOutcome, LoadedModule, PairSink, Role, Sandbox, pair_charge,
};
use crate::shuffle::{self, Pair};
use crate::split;
use anyhow::{Context as _, anyhow};
use std::collections::HashMap;
use std::io::Write as _;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

/// Groups handed to one `reduce`/`combine` call, in bytes.
const GROUP_BATCH_BYTES: usize = 1 << 20;

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
    /// for twice that and a few more: an interrupted attempt may still be
    /// unwinding when its slot is given the next one.
    pub fn new(slots: u32) -> anyhow::Result<Self> {
        Ok(Executor {
            sandbox: Sandbox::with_capacity(slots.saturating_mul(2).saturating_add(4))?,
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
        let loaded = self.sandbox.load(bytes, role)?;
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
        fetched: Option<Vec<Vec<u8>>>,
    ) -> AttemptReport {
        let span = tracing::info_span!("attempt", job = %assignment.job, task = %assignment.task,
            epoch = %assignment.epoch, %worker);
        let _enter = span.enter();
        let started = Instant::now();
        let dirs = JobDirs::new(assignment.job, &assignment.work_root, &assignment.output);
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
        split: &crate::protocol::InputSplit,
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
        let buffer = Arc::new(Mutex::new(MapBuffer::new(a.reducers)));
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
            Box::new(BufferSink(buffer.clone())),
        );
        let log = call.log.clone();
        let mut stats = stats_of(&call, input.len() as u64);
        match call.result {
            Ok(()) => {}
            Err(AttemptFailure::Trap(_)) if ctx.limits.max_dead_letters > 0 => {
                // Skip mode: drop this call's output and find the records
                // the guest traps on, running the rest without them.
                *buffer.lock().expect("poisoned") = MapBuffer::new(a.reducers);
                ctx.restore_output_held(0);
                let found =
                    self.isolate_bad_records(&module, ctx, &key, &input, split.offset, &buffer);
                match found {
                    Ok(dead) => stats.dead_letters = dead,
                    Err(failure) => return (Err(failure), log),
                }
            }
            Err(failure) => return (Err(failure), log),
        }
        drop(input);
        let path = dirs.attempt_path(a.task, a.epoch);
        let written = self.combine_and_write(&module, ctx, &buffer, &path);
        stats.fuel_used = ctx.fuel_used();
        match written {
            Ok(bytes) => {
                stats.bytes_out = bytes;
                (Ok(stats), log)
            }
            Err(failure) => (Err(failure), log),
        }
    }

    /// Bisect `input` by lines, in fresh stores, until every record that
    /// makes `map` trap is alone (Hadoop's skip mode). Output of the good
    /// ranges goes to `buffer`. At most `max_dead_letters` records are
    /// skipped; one more fails the attempt. Every run shares the attempt's
    /// fuel, deadline and output limit.
    fn isolate_bad_records(
        &self,
        module: &LoadedModule,
        ctx: &AttemptContext,
        file: &str,
        input: &[u8],
        base_offset: u64,
        buffer: &Arc<Mutex<MapBuffer>>,
    ) -> Result<Vec<crate::protocol::DeadLetter>, AttemptFailure> {
        let max = ctx.limits.max_dead_letters as usize;
        let mut dead = Vec::new();
        // Ranges still to run, whole lines; the last pushed runs first.
        let mut ranges = vec![(0, input.len())];
        while let Some((lo, hi)) = ranges.pop() {
            let mark = buffer.lock().expect("poisoned").mark();
            let held = ctx.output_held();
            let call = self.sandbox.run_map(
                module,
                ctx,
                file.as_bytes(),
                &input[lo..hi],
                Box::new(BufferSink(buffer.clone())),
            );
            match call.result {
                Ok(()) => {}
                Err(AttemptFailure::Trap(message)) => {
                    buffer.lock().expect("poisoned").rollback(&mark);
                    ctx.restore_output_held(held);
                    match split::middle_line_break(&input[lo..hi]) {
                        Some(mid) => {
                            ranges.push((lo + mid, hi));
                            ranges.push((lo, lo + mid));
                        }
                        None => {
                            dead.push(crate::protocol::DeadLetter {
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

    /// Apply the combiner to keys with several values, then write the
    /// attempt's map output file (attempt-private), each partition sorted.
    fn combine_and_write(
        &self,
        module: &LoadedModule,
        ctx: &AttemptContext,
        buffer: &Arc<Mutex<MapBuffer>>,
        path: &Path,
    ) -> Result<u64, AttemptFailure> {
        let host_err = |e: anyhow::Error| AttemptFailure::Host(format!("{e:#}"));
        let dir = path.parent().expect("attempt paths have parents");
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating {}", dir.display()))
            .map_err(host_err)?;
        if module.has_combiner() {
            MapBuffer::combine(buffer, GROUP_BATCH_BYTES, |groups, sink| {
                let held = ctx.output_held();
                match self.sandbox.run_combine(module, ctx, groups, sink) {
                    // Declined: whatever it emitted is dropped (the buffer
                    // rolls back) and the batch stays as it came.
                    None => {
                        ctx.restore_output_held(held);
                        Ok(false)
                    }
                    Some(Ok(())) => {
                        // Its output replaces the batch's pairs.
                        let replaced = groups
                            .iter()
                            .flat_map(|g| {
                                g.values.iter().map(|v| pair_charge(g.key.len(), v.len()))
                            })
                            .sum();
                        ctx.release_output(replaced);
                        Ok(true)
                    }
                    Some(Err(failure)) => Err(failure),
                }
            })?;
        }
        let mut buffer = buffer.lock().expect("poisoned");
        buffer.write(path).map_err(host_err)
    }

    fn run_reduce(
        &self,
        dirs: &JobDirs,
        a: &Assignment,
        ctx: &AttemptContext,
        partition: u32,
        map_outputs: &[(TaskId, AttemptEpoch, WorkerId)],
        fetched: Option<Vec<Vec<u8>>>,
    ) -> (Result<AttemptStats, AttemptFailure>, String) {
        let host_err = |e: anyhow::Error| AttemptFailure::Host(format!("{e:#}"));
        let module = match self.module(&a.module, Role::Reduce) {
            Ok(m) => m,
            Err(e) => return (Err(e), String::new()),
        };
        // Map outputs in task order, so a key's values arrive in a
        // deterministic order.
        let mut pairs: Vec<Pair> = Vec::new();
        let mut bytes_in = 0;
        let encoded: Vec<Vec<u8>> = match fetched {
            Some(fetched) => fetched,
            None => {
                let mut read = Vec::with_capacity(map_outputs.len());
                for (task, epoch, _) in map_outputs {
                    let path = dirs.committed_path(*task, *epoch);
                    match shuffle::read_map_partition(&path, partition) {
                        Ok(bytes) => read.push(bytes),
                        Err(e) => {
                            let e = e.context(format!("map output of {task}"));
                            return (Err(host_err(e)), String::new());
                        }
                    }
                }
                read
            }
        };
        for (bytes, (task, _, _)) in encoded.iter().zip(map_outputs) {
            bytes_in += bytes.len() as u64;
            match shuffle::decode_partition(bytes) {
                Ok(mut p) => pairs.append(&mut p),
                Err(e) => {
                    let e = e.context(format!("map output of {task}"));
                    return (Err(host_err(e)), String::new());
                }
            }
        }
        shuffle::sort_pairs(&mut pairs);
        let groups = shuffle::group_sorted(pairs);
        let path = dirs.reduce_attempt_file(a.task, a.epoch);
        let writer = match LineWriter::create(&path, a.output_format) {
            Ok(w) => w,
            Err(e) => return (Err(host_err(e)), String::new()),
        };
        let written = writer.written.clone();
        let mut batches = shuffle::batches(groups, GROUP_BATCH_BYTES);
        let call = self
            .sandbox
            .run_reduce(&module, ctx, &mut batches, Box::new(writer));
        let log = call.log.clone();
        let mut stats = stats_of(&call, bytes_in);
        if let Err(failure) = call.result {
            return (Err(failure), log);
        }
        // The sandbox dropped the writer (flushed and fsynced it) with the store.
        let finished = written.lock().expect("poisoned").take();
        match finished {
            Some(Ok(bytes)) => {
                stats.bytes_out = bytes;
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
    }
}

/// Writes reduce output records as lines in the job's output format;
/// flushes and fsyncs when dropped with the store, leaving the byte count
/// (or the error) in `written`.
struct LineWriter {
    file: Option<std::io::BufWriter<std::fs::File>>,
    format: crate::protocol::OutputFormat,
    line: Vec<u8>,
    bytes: u64,
    written: Arc<Mutex<Option<Result<u64, String>>>>,
}

impl LineWriter {
    fn create(path: &Path, format: crate::protocol::OutputFormat) -> anyhow::Result<Self> {
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

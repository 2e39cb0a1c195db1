//! `wmr-bench`: word count measured several ways in one run (`just bench`).
//! Its own binary, built on the `wmr` library: not part of the product.
//!
//! Every row reads the same generated corpus (from the page cache) and
//! counts the same words with the same tokenizer: the native rows include
//! the guest's `count.rs` verbatim, so the gap between rows is the cost of
//! the sandbox and of the map/reduce machinery, not of different code. All
//! rows must agree on the word total, or the run fails.
//!
//! The networked rows run a coordinator and two workers inside this
//! process, on one tokio runtime, talking QUIC over loopback; every row
//! starts a fresh cluster and stops it (and removes its directories) before
//! the next. The corpus runs twice: with the default worker-local shuffle
//! (map outputs stay on the worker that produced them and reducers fetch
//! them over QUIC) and with a shared store (map outputs are files every
//! worker reads, so only the control plane crosses QUIC). A second job of
//! many one-line tasks (`--tasks`) measures the fixed cost per task:
//! embedded, and over QUIC with the durable state store and with the
//! in-memory one; their difference is the cost of durability.
//!
//! `wmr-bench shuffle` is a separate benchmark (`shuffle.rs`), and so is
//! `wmr-bench s3` (`s3.rs`).

use anyhow::{Context as _, anyhow, bail, ensure};
use rustc_hash::{FxBuildHasher, FxHashMap};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::BuildHasher;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use wmr::client::{self, Remote};
use wmr::coordinator::{self, CoordinatorConfig};
use wmr::local::run_embedded;
use wmr::model::{Limits, TaskId, TenantId, WorkerId};
use wmr::sandbox::{AttemptContext, LoadedModule, PairSink, Role, Sandbox};
use wmr::scheduler::JobOutcome;
use wmr::summary::JobSummary;
use wmr::wire::JobRequest;
use wmr::worker::{self, WorkerOptions};

mod s3;
mod shuffle;

/// The guest's tokenizer, compiled natively.
#[path = "../../../examples/wordcount/src/count.rs"]
mod count;

const MIB: u64 = 1 << 20;
/// The corpus is this many equal files: one map call (or split) each.
const FILES: u64 = 16;
/// Attempts timed for the per-attempt store cost.
const STORE_ATTEMPTS: u32 = 2000;
const STORE_TARGET_US: f64 = 50.0;
/// Issue #2's throughput targets: the guest against the same code native on
/// one thread, and `wmr run` with 2 workers against native on two threads.
const GUEST_TARGET: f64 = 0.7;
const RUN_TARGET: f64 = 0.35;
/// The tiny job's default number of one-line map tasks (plus one reduce).
const TINY_TASKS: u64 = 2000;
/// Per task over QUIC with the durable state store (the target).
const PER_TASK_TARGET_MS: f64 = 1.0;
/// Rounds of the per-task job over QUIC, per state store.
const PER_TASK_ROUNDS: u32 = 3;
/// Rounds of the native and guest throughput rows; each keeps its fastest.
const THROUGHPUT_ROUNDS: u32 = 5;
/// One-line maps of the job that warms a per-task cluster up.
const WARMUP_TASKS: u64 = 8;
/// Warm-up jobs at most, until each worker has compiled map and reduce.
const WARMUP_JOBS: usize = 5;
const TINY_LINE: &str = "the quick brown fox\n";
const TINY_LINE_WORDS: u64 = 4;
/// Bound on the in-process cluster's start-up and shutdown.
const CLUSTER_LIMIT: Duration = Duration::from_secs(30);
/// How long a stopped cluster's closing connections may take to end
/// before the tasks still alive count as left behind.
const SETTLE_LIMIT: Duration = Duration::from_millis(300);
/// Bound on one deployed job.
const JOB_LIMIT: Duration = Duration::from_secs(600);
/// The cluster as `wmr coordinator` runs it by default.
const DEFAULT_CLUSTER: ClusterMode = ClusterMode {
    shared_store: false,
    ephemeral_state: false,
};
const QUIC_LOCAL_ROW: &str = "QUIC, 2 workers, worker-local shuffle (default)";
const QUIC_SHARED_ROW: &str = "QUIC, 2 workers, shared store";
const CLUSTER_NOTE: &str = "QUIC rows: a coordinator and 2 one-slot workers in this process over \
                            loopback, durable state; each row starts a fresh cluster, so it includes \
                            connecting, shipping the module and compiling it on each worker. \
                            worker-local shuffle: map outputs stay on their worker, reducers fetch them \
                            over QUIC; shared store: map outputs are files on the local filesystem that \
                            every worker reads, nothing but control crosses QUIC. The job output is a \
                            local directory in both.";
const REFERENCE: &str = "reference on this machine: native 2-thread FxHash ~440 MB/s; \
                         Spark local[2] ~21 MB/s; Dask ~16 MB/s";

#[derive(clap::Parser, Debug)]
#[command(
    name = "wmr-bench",
    about = "Word count measured several ways in one run",
    after_help = "The shuffle benchmark is `wmr-bench shuffle` (see `wmr-bench shuffle --help`); \
                  reading from S3 against local files is `wmr-bench s3`."
)]
pub struct BenchArgs {
    /// Corpus size in MiB (generated from the bundled books).
    #[arg(long, default_value_t = 256)]
    pub size_mib: u64,
    /// The word-count guest component (.wasm).
    #[arg(long)]
    pub guest: PathBuf,
    /// Directory of the books (*.txt) the corpus is generated from.
    #[arg(long, default_value = "examples/data")]
    pub data: PathBuf,
    /// One-line map tasks of the per-task overhead job (plus one reduce).
    #[arg(long, default_value_t = TINY_TASKS)]
    pub tasks: u64,
    /// Print the figures as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// One throughput row of the result.
#[derive(Serialize)]
struct Row {
    name: String,
    seconds: f64,
    mb_per_s: f64,
    vs_native_1_thread: f64,
    vs_native_2_threads: f64,
}

/// One row of the per-task overhead: a job of `--tasks` one-line maps.
#[derive(Serialize)]
struct PerTask {
    name: String,
    /// Map and reduce tasks.
    tasks: usize,
    /// The median of `samples_seconds`.
    seconds: f64,
    ms_per_task: f64,
    /// Wall time of each round.
    samples_seconds: Vec<f64>,
}

/// The per-task overhead over QUIC with the durable and the in-memory
/// state store, and what durability costs.
#[derive(Serialize)]
struct Durability {
    durable_ms_per_task: f64,
    in_memory_ms_per_task: f64,
    /// Durable minus in-memory.
    cost_ms_per_task: f64,
    target_ms_per_task: f64,
    /// The durable store's figure is under the target.
    target_met: bool,
}

/// How an in-process cluster was stopped.
#[derive(Serialize)]
struct ClusterStop {
    name: String,
    shared_store: bool,
    ephemeral_state: bool,
    /// Tokio tasks still alive `SETTLE_LIMIT` after the workers and the
    /// coordinator had returned; the runtime's shutdown cancelled them.
    tasks_left: usize,
}

/// Everything `wmr bench` prints, as a table or as JSON.
#[derive(Serialize)]
struct Report {
    corpus_files: u64,
    corpus_bytes: u64,
    words: u64,
    distinct_words: usize,
    rows: Vec<Row>,
    /// Guest ÷ native one-thread speed in each round, sorted.
    guest_vs_native_1_per_round: Vec<f64>,
    cluster_note: &'static str,
    per_task: Vec<PerTask>,
    durability: Durability,
    clusters: Vec<ClusterStop>,
    guest_compile_seconds: f64,
    store_attempts: u32,
    store_attempt_us: f64,
    peak_rss_kib: Option<u64>,
    reference: &'static str,
}

/// What a row counted: the figures all rows must agree on. The guest map
/// row sees only per-file counts, so it has no distinct-word figure.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Totals {
    words: u64,
    distinct: Option<usize>,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("WMR_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    // `wmr-bench shuffle ...` is the shuffle benchmark; anything else is the
    // word count, parsed exactly as before the subcommand existed.
    let subcommand = std::env::args_os().nth(1);
    let result = if subcommand.as_ref().is_some_and(|a| a == "shuffle") {
        shuffle::run(&clap::Parser::parse_from(std::env::args_os().skip(1)))
    } else if subcommand.as_ref().is_some_and(|a| a == "s3") {
        s3::run(&clap::Parser::parse_from(std::env::args_os().skip(1)))
    } else {
        run(&<BenchArgs as clap::Parser>::parse())
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

pub fn run(args: &BenchArgs) -> anyhow::Result<ExitCode> {
    ensure!(args.size_mib > 0, "--size-mib must be at least 1");
    ensure!(args.tasks > 0, "--tasks must be at least 1");
    let guest = std::fs::read(&args.guest)
        .with_context(|| format!("reading the guest {}", args.guest.display()))?;
    let scratch = Scratch::create()?;
    let files = write_corpus(&args.data, &scratch.path.join("corpus"), args.size_mib)?;
    let corpus_bytes = warm_page_cache(&files)?;
    let report = measure(args, &guest, &scratch, &files, corpus_bytes)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report, args.size_mib);
    }
    Ok(ExitCode::SUCCESS)
}

/// Run every measurement, check that they agree, and collect the figures.
fn measure(
    args: &BenchArgs,
    guest: &[u8],
    scratch: &Scratch,
    files: &[PathBuf],
    corpus_bytes: u64,
) -> anyhow::Result<Report> {
    // The guest rows share one engine; it is dropped before `wmr run`
    // builds its own, as a separate process would.
    let sandbox = Sandbox::new()?;
    let (compile, module) = timed(|| sandbox.load(guest, Role::Map))?;
    // The single-process rows take turns, and each keeps its fastest round:
    // a disturbance of the machine (other processes) only ever slows a
    // round down, and does not land on one row only. The two one-thread
    // rows take turns file by file (native count of a file, then the
    // guest's map of it), so both see the machine in the same state; each
    // round's ratio of the two is the paired ratio.
    let (mut native_1, mut native_2, mut guest_map) = (f64::MAX, f64::MAX, f64::MAX);
    let mut guest_ratios = Vec::new();
    let mut expected = None;
    for _ in 0..THROUGHPUT_ROUNDS {
        let round = one_thread_round(&sandbox, &module, files)?;
        let expected = *expected.get_or_insert(round.native_totals);
        check_agrees("native, 1 thread", expected, round.native_totals)?;
        let guest_totals = Totals {
            words: round.guest_words,
            distinct: None,
        };
        check_agrees("guest map", expected, guest_totals)?;
        native_1 = native_1.min(round.native_seconds);
        guest_map = guest_map.min(round.guest_seconds);
        guest_ratios.push(round.native_seconds / round.guest_seconds);
        let (seconds, totals) = timed(|| native_two_threads(files))?;
        check_agrees("native, 2 threads", expected, totals)?;
        native_2 = native_2.min(seconds);
    }
    let expected = expected.expect("at least one round");
    guest_ratios.sort_by(f64::total_cmp);
    let store_us = store_cost_us(&sandbox, &module)?;
    drop((module, sandbox));

    let file_bytes = corpus_bytes / files.len() as u64;
    let corpus = Job {
        input: scratch.path.join("corpus"),
        reducers: 2,
        split_bytes: file_bytes,
        bytes: corpus_bytes,
    };
    let output = scratch.path.join("out-run");
    let (run_2, summary) = timed(|| embedded_job(&args.guest, &corpus, &output, scratch))?;
    check_agrees(
        "wmr run",
        expected,
        corpus.totals("wmr run", &summary, &output)?,
    )?;

    // The tiny job: one-line files, so every map task has next to nothing
    // to do and the job measures what each task costs the machinery.
    let tiny = write_tiny_input(&scratch.path.join("tiny"), args.tasks)?;
    let tiny_expected = tiny_totals(args.tasks);
    let output = scratch.path.join("out-tiny-run");
    let (tiny_embedded, summary) = timed(|| embedded_job(&args.guest, &tiny, &output, scratch))?;
    let totals = tiny.totals("tiny job, wmr run", &summary, &output)?;
    check_agrees("tiny job, wmr run", tiny_expected, totals)?;
    let tiny_tasks = summary.tasks;
    ensure!(
        tiny_tasks as u64 == args.tasks + 1,
        "the tiny job has {tiny_tasks} tasks, not {} maps and a reduce",
        args.tasks
    );

    // Each networked row on a cluster of its own, stopped before the next.
    let mut clusters = Vec::new();
    let quic_local = quic_throughput(
        QUIC_LOCAL_ROW,
        DEFAULT_CLUSTER,
        guest,
        &corpus,
        expected,
        scratch,
        &mut clusters,
    )?;
    let shared = ClusterMode {
        shared_store: true,
        ..DEFAULT_CLUSTER
    };
    let quic_shared = quic_throughput(
        QUIC_SHARED_ROW,
        shared,
        guest,
        &corpus,
        expected,
        scratch,
        &mut clusters,
    )?;

    // Two reducers: both workers run a reduce at once.
    let warmup = Job {
        reducers: 2,
        ..write_tiny_input(&scratch.path.join("warmup"), WARMUP_TASKS)?
    };
    let tiny_job = TinyJob {
        job: &tiny,
        expected: tiny_expected,
        warmup: &warmup,
    };
    let durable_row = "QUIC, worker-local shuffle, durable state";
    let memory_row = "QUIC, worker-local shuffle, in-memory state";
    let in_memory = ClusterMode {
        ephemeral_state: true,
        ..DEFAULT_CLUSTER
    };
    // The two stores take turns, so a disturbance of the machine (other
    // processes, a page-cache flush) does not land on one store only; each
    // row is the median of its rounds.
    let (mut tiny_durable, mut tiny_in_memory) = (Vec::new(), Vec::new());
    for round in 1..=PER_TASK_ROUNDS {
        for (name, mode, samples) in [
            (durable_row, DEFAULT_CLUSTER, &mut tiny_durable),
            (memory_row, in_memory, &mut tiny_in_memory),
        ] {
            let name = format!("{name}, round {round}");
            samples.push(quic_per_task(
                &name,
                mode,
                round,
                guest,
                &tiny_job,
                scratch,
                &mut clusters,
            )?);
        }
    }

    let per_task = |name: &str, samples: Vec<f64>| {
        let seconds = median(&samples);
        PerTask {
            name: name.to_string(),
            tasks: tiny_tasks,
            seconds,
            ms_per_task: seconds * 1e3 / tiny_tasks as f64,
            samples_seconds: samples,
        }
    };
    let per_task_rows = vec![
        per_task("wmr run, 2 workers (embedded)", vec![tiny_embedded]),
        per_task(durable_row, tiny_durable),
        per_task(memory_row, tiny_in_memory),
    ];
    let durable_ms = per_task_rows[1].ms_per_task;
    let in_memory_ms = per_task_rows[2].ms_per_task;
    let durability = Durability {
        durable_ms_per_task: durable_ms,
        in_memory_ms_per_task: in_memory_ms,
        cost_ms_per_task: durable_ms - in_memory_ms,
        target_ms_per_task: PER_TASK_TARGET_MS,
        target_met: durable_ms < PER_TASK_TARGET_MS,
    };
    let row = |name: &str, seconds: f64| {
        let mb_per_s = corpus_bytes as f64 / 1e6 / seconds;
        Row {
            name: name.to_string(),
            seconds,
            mb_per_s,
            vs_native_1_thread: native_1 / seconds,
            vs_native_2_threads: native_2 / seconds,
        }
    };
    Ok(Report {
        corpus_files: files.len() as u64,
        corpus_bytes,
        words: expected.words,
        distinct_words: expected.distinct.unwrap_or_default(),
        guest_vs_native_1_per_round: guest_ratios,
        rows: vec![
            row("native, 1 thread (std HashMap)", native_1),
            row("native, 2 threads (FxHash)", native_2),
            row(
                &format!(
                    "guest map, 1 thread (store per {} MiB file)",
                    file_bytes >> 20
                ),
                guest_map,
            ),
            row("wmr run, 2 workers, 2 reducers", run_2),
            row(QUIC_LOCAL_ROW, quic_local),
            row(QUIC_SHARED_ROW, quic_shared),
        ],
        cluster_note: CLUSTER_NOTE,
        per_task: per_task_rows,
        durability,
        clusters,
        guest_compile_seconds: compile,
        store_attempts: STORE_ATTEMPTS,
        store_attempt_us: store_us,
        peak_rss_kib: peak_rss_kib(),
        reference: REFERENCE,
    })
}

/// The corpus job on a fresh cluster in `mode`, checked against the
/// native count; its wall time, from connecting to the job's end.
fn quic_throughput(
    name: &str,
    mode: ClusterMode,
    guest: &[u8],
    corpus: &Job,
    expected: Totals,
    scratch: &Scratch,
    clusters: &mut Vec<ClusterStop>,
) -> anyhow::Result<f64> {
    let output = scratch.path.join(format!("out-{}", mode.slug()));
    let dir = scratch.path.join(format!("cluster-{}", mode.slug()));
    let (seconds, summary) = with_cluster(name, &dir, mode, clusters, |cluster| {
        timed(|| cluster.deploy(guest, corpus, &output))
    })?;
    check_agrees(name, expected, corpus.totals(name, &summary, &output)?)?;
    // With maps on both workers every reducer fetches from the other one:
    // the worker-local row really shuffles over QUIC.
    let ran = distinct_workers(&summary, |t| matches!(t, TaskId::Map(_)));
    ensure!(ran == 2, "{name}: map attempts ran on {ran} workers, not 2");
    Ok(seconds)
}

/// The tiny job of the per-task rows, and the job that warms a cluster up.
struct TinyJob<'a> {
    job: &'a Job,
    expected: Totals,
    warmup: &'a Job,
}

/// The tiny job on a fresh cluster in `mode`, after warm-up jobs that have
/// each worker compile the guest as map and as reduce, so the figure holds
/// the per-task cost only. Its wall time.
fn quic_per_task(
    name: &str,
    mode: ClusterMode,
    round: u32,
    guest: &[u8],
    tiny: &TinyJob<'_>,
    scratch: &Scratch,
    clusters: &mut Vec<ClusterStop>,
) -> anyhow::Result<f64> {
    let dir = scratch
        .path
        .join(format!("cluster-tiny-{}-{round}", mode.slug()));
    with_cluster(name, &dir, mode, clusters, |cluster| {
        warm_up(cluster, guest, tiny.warmup, &dir)?;
        let output = dir.join("out-tiny");
        let (seconds, summary) = timed(|| cluster.deploy(guest, tiny.job, &output))?;
        let totals = tiny.job.totals(name, &summary, &output)?;
        check_agrees(name, tiny.expected, totals)?;
        Ok(seconds)
    })
}

/// The median of `samples` (the upper one of an even count).
fn median(samples: &[f64]) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

/// Run the warm-up job until both workers have run a map and a reduce (so
/// compiled the guest for both), at most `WARMUP_JOBS` times.
fn warm_up(cluster: &Cluster, guest: &[u8], warmup: &Job, dir: &Path) -> anyhow::Result<()> {
    let mut compiled = BTreeSet::new();
    for i in 0..WARMUP_JOBS {
        let output = dir.join(format!("out-warmup-{i}"));
        let summary = cluster.deploy(guest, warmup, &output)?;
        let totals = warmup.totals("warm-up job", &summary, &output)?;
        check_agrees("warm-up job", tiny_totals(WARMUP_TASKS), totals)?;
        compiled.extend(
            summary
                .attempt_log
                .iter()
                .map(|r| (r.worker, matches!(r.task, TaskId::Map(_)))),
        );
        if compiled.len() == 4 {
            return Ok(());
        }
    }
    bail!("after {WARMUP_JOBS} warm-up jobs the workers had run only (worker, is map) {compiled:?}")
}

/// Time `f`, in seconds.
fn timed<T>(f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<(f64, T)> {
    let start = Instant::now();
    let value = f()?;
    Ok((start.elapsed().as_secs_f64(), value))
}

/// A benchmark that computes the wrong thing is worthless: stop.
fn check_agrees(row: &str, expected: Totals, got: Totals) -> anyhow::Result<()> {
    let distinct_ok = match (expected.distinct, got.distinct) {
        (Some(e), Some(g)) => e == g,
        _ => true,
    };
    ensure!(
        expected.words == got.words && distinct_ok,
        "{row} counted {got:?} but native counted {expected:?}: the rows do not compute the same thing"
    );
    Ok(())
}

// ---------------------------------------------------------------- corpus

/// A scratch directory named by the pid, removed when dropped (also when
/// the benchmark fails).
struct Scratch {
    path: PathBuf,
}

impl Scratch {
    fn create() -> anyhow::Result<Self> {
        let path = std::env::temp_dir().join(format!("wmr-bench-{}", std::process::id()));
        // A leftover of an earlier process with the same pid is stale.
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Scratch { path })
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Write `FILES` files of `size_mib / FILES` MiB each into `dir`. File `i`
/// holds the books concatenated in sorted order starting at book `i`, so
/// the files differ but the corpus is the same on every run.
fn write_corpus(data: &Path, dir: &Path, size_mib: u64) -> anyhow::Result<Vec<PathBuf>> {
    let books = read_books(data)?;
    let file_bytes = (size_mib * MIB / FILES) as usize;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    (0..FILES as usize)
        .map(|i| {
            let path = dir.join(format!("corpus-{i:02}.txt"));
            std::fs::write(&path, rotated_text(&books, i, file_bytes))
                .with_context(|| format!("writing {}", path.display()))?;
            Ok(path)
        })
        .collect()
}

/// The `*.txt` files of `data`, sorted by name.
fn read_books(data: &Path) -> anyhow::Result<Vec<Vec<u8>>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(data)
        .with_context(|| {
            format!(
                "reading the books in {} (run from the repository root or pass --data)",
                data.display()
            )
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "txt"))
        .collect();
    paths.sort();
    let mut books = paths
        .iter()
        .map(|p| std::fs::read(p).with_context(|| format!("reading {}", p.display())))
        .collect::<anyhow::Result<Vec<_>>>()?;
    // An empty book would make the rotation loop forever.
    books.retain(|b| !b.is_empty());
    ensure!(
        !books.is_empty(),
        "no non-empty *.txt books in {}",
        data.display()
    );
    Ok(books)
}

/// `len` bytes of the books in turn, starting at book `first`. The end is
/// cut after a newline and padded with newlines, so no word is cut in half.
fn rotated_text(books: &[Vec<u8>], first: usize, len: usize) -> Vec<u8> {
    let mut text = Vec::with_capacity(len);
    for book in books.iter().cycle().skip(first) {
        let room = len - text.len();
        if book.len() <= room {
            text.extend_from_slice(book);
            continue;
        }
        let cut = book[..room]
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        text.extend_from_slice(&book[..cut]);
        break;
    }
    text.resize(len, b'\n');
    text
}

/// Read every file once so all rows read from the page cache; the total size.
fn warm_page_cache(files: &[PathBuf]) -> anyhow::Result<u64> {
    files.iter().try_fold(0, |total, path| {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        Ok(total + bytes.len() as u64)
    })
}

// ---------------------------------------------------------------- native

/// Count one file as the guest's map does (in-file counts),
/// then merge the counts into `global` as the guest's reduce would.
fn count_file<S: BuildHasher + Default>(
    path: &Path,
    global: &mut HashMap<Vec<u8>, u64, S>,
) -> anyhow::Result<()> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let mut counts = HashMap::with_hasher(S::default());
    count::count_words(&bytes, &mut counts);
    merge(global, counts);
    Ok(())
}

fn merge<'w, S: BuildHasher>(
    global: &mut HashMap<Vec<u8>, u64, S>,
    counts: impl IntoIterator<Item = (count::Word<'w>, u64)>,
) {
    for (count::Word(word), n) in counts {
        // Look up first: allocating a key per word would dominate.
        match global.get_mut(word) {
            Some(total) => *total += n,
            None => {
                global.insert(word.to_vec(), n);
            }
        }
    }
}

fn totals_of<S>(global: &HashMap<Vec<u8>, u64, S>) -> Totals {
    Totals {
        words: global.values().sum(),
        distinct: Some(global.len()),
    }
}

/// Two threads take alternate files; their maps are merged at the end.
fn native_two_threads(files: &[PathBuf]) -> anyhow::Result<Totals> {
    let mut halves = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..2)
            .map(|t| {
                scope.spawn(move || {
                    let mut global: FxHashMap<Vec<u8>, u64> = FxHashMap::default();
                    for path in files.iter().skip(t).step_by(2) {
                        count_file::<FxBuildHasher>(path, &mut global)?;
                    }
                    anyhow::Ok(global)
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().expect("a counting thread panicked"))
            .collect::<anyhow::Result<Vec<_>>>()
    })?;
    let mut global = halves.pop().expect("two threads");
    for half in halves {
        for (word, n) in half {
            *global.entry(word).or_insert(0) += n;
        }
    }
    Ok(totals_of(&global))
}

// ---------------------------------------------------------------- guest

/// Counts what a map attempt emits: pairs, and the sum of their counts.
#[derive(Default)]
struct Tally {
    pairs: AtomicU64,
    words: AtomicU64,
}

struct TallySink(Arc<Tally>);

impl PairSink for TallySink {
    fn accept(&mut self, _key: Vec<u8>, value: Vec<u8>) -> anyhow::Result<()> {
        let n: u64 = std::str::from_utf8(&value)
            .ok()
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| anyhow!("the guest emitted a count that is not a number"))?;
        self.0.pairs.fetch_add(1, Ordering::Relaxed);
        self.0.words.fetch_add(n, Ordering::Relaxed);
        Ok(())
    }
}

fn attempt_context() -> AttemptContext {
    AttemptContext::new(
        Limits::default(),
        Arc::default(),
        Arc::new(AtomicBool::new(false)),
    )
}

/// One round of the two one-thread rows.
struct OneThreadRound {
    native_seconds: f64,
    native_totals: Totals,
    guest_seconds: f64,
    guest_words: u64,
}

/// Native (std `HashMap`) and guest, file by file in turns, each timed on
/// its own. The guest makes one map call (hence one fresh store) per file,
/// with the default limits (fuel and epoch deadline on).
fn one_thread_round(
    sandbox: &Sandbox,
    module: &LoadedModule,
    files: &[PathBuf],
) -> anyhow::Result<OneThreadRound> {
    let mut global: HashMap<Vec<u8>, u64> = HashMap::new();
    let ctx = attempt_context();
    let tally = Arc::new(Tally::default());
    let (mut native_seconds, mut guest_seconds) = (0.0, 0.0);
    for path in files {
        native_seconds += timed(|| count_file(path, &mut global))?.0;
        guest_seconds += timed(|| {
            let text =
                std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            let key = path.file_name().unwrap_or_default().to_string_lossy();
            let sink = Box::new(TallySink(tally.clone()));
            let call = sandbox.run_map(module, &ctx, key.as_bytes(), &text, sink);
            call.result
                .map_err(|f| anyhow!("guest map of {}: {f}", path.display()))
        })?
        .0;
    }
    Ok(OneThreadRound {
        native_seconds,
        native_totals: totals_of(&global),
        guest_seconds,
        guest_words: tally.words.load(Ordering::Relaxed),
    })
}

/// Microseconds per attempt of a fresh store, instantiation and a map call
/// on empty input: the fixed cost every task pays.
fn store_cost_us(sandbox: &Sandbox, module: &LoadedModule) -> anyhow::Result<f64> {
    let ctx = attempt_context();
    let attempt = || {
        let sink = Box::new(TallySink(Arc::default()));
        sandbox
            .run_map(module, &ctx, b"", b"", sink)
            .result
            .map_err(|f| anyhow!("guest map of empty input: {f}"))
    };
    // One untimed attempt first: the first touch of the compiled code and
    // of the allocator's pools is not a per-attempt cost.
    attempt()?;
    let start = Instant::now();
    for _ in 0..STORE_ATTEMPTS {
        attempt()?;
    }
    Ok(start.elapsed().as_secs_f64() * 1e6 / f64::from(STORE_ATTEMPTS))
}

// ---------------------------------------------------------------- wmr run

/// A word-count job of the benchmark: what it reads and how it is split.
struct Job {
    /// A directory of input files.
    input: PathBuf,
    reducers: u32,
    split_bytes: u64,
    /// The size of the input: what the map tasks must have read.
    bytes: u64,
}

impl Job {
    fn input(&self) -> anyhow::Result<String> {
        Ok(self
            .input
            .to_str()
            .context("the temp dir path is not UTF-8")?
            .to_string())
    }

    /// Check that the job completed and read all its input; what its
    /// output (the job's `output` directory) counted.
    fn totals(&self, name: &str, summary: &JobSummary, output: &Path) -> anyhow::Result<Totals> {
        match &summary.outcome {
            JobOutcome::Completed => {}
            other => bail!("{name} did not complete: {other:?}"),
        }
        ensure!(
            summary.bytes_in == self.bytes,
            "{name} read {} bytes of a {}-byte input",
            summary.bytes_in,
            self.bytes
        );
        output_totals(output)
    }
}

/// `wmr run` in this process: 2 workers, `job.reducers` reducers.
fn embedded_job(
    guest: &Path,
    job: &Job,
    output: &Path,
    scratch: &Scratch,
) -> anyhow::Result<JobSummary> {
    let request = wmr::wire::JobRequest {
        map_module: Vec::new(),
        reduce_module: None,
        inputs: vec![job.input()?],
        output: output.to_path_buf(),
        output_format: Default::default(),
        reducers: job.reducers,
        split_bytes: job.split_bytes,
        limits: Limits::default(),
        params: BTreeMap::new(),
        max_attempts: 1,
        shuffle_settings: Default::default(),
        placement: Default::default(),
        speculate: false,
    };
    // No compile cache: the benchmark times compiles as a fresh process does.
    run_embedded(
        guest,
        guest,
        request,
        &wmr::local::LocalWorkers {
            count: 2,
            labels: BTreeMap::new(),
        },
        None,
        &scratch.path.join("work"),
        &mut |_| {},
    )
    .map(|run| run.summary)
}

/// `tasks` one-line files in `dir`: one map task each, and one reducer.
fn write_tiny_input(dir: &Path, tasks: u64) -> anyhow::Result<Job> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for i in 0..tasks {
        let path = dir.join(format!("tiny-{i:06}.txt"));
        std::fs::write(&path, TINY_LINE).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(Job {
        input: dir.to_path_buf(),
        reducers: 1,
        split_bytes: TINY_LINE.len() as u64,
        bytes: tasks * TINY_LINE.len() as u64,
    })
}

/// What a job of `tasks` one-line maps counts.
fn tiny_totals(tasks: u64) -> Totals {
    Totals {
        words: tasks * TINY_LINE_WORDS,
        distinct: Some(TINY_LINE_WORDS as usize),
    }
}

/// How many workers ran attempts of a job's tasks that `which` selects.
fn distinct_workers(summary: &JobSummary, which: impl Fn(&TaskId) -> bool) -> usize {
    let workers: BTreeSet<WorkerId> = summary
        .attempt_log
        .iter()
        .filter(|r| which(&r.task))
        .map(|r| r.worker)
        .collect();
    workers.len()
}

/// Sum the `word count` lines of the job's part files.
fn output_totals(output: &Path) -> anyhow::Result<Totals> {
    let mut totals = Totals {
        words: 0,
        distinct: Some(0),
    };
    for entry in std::fs::read_dir(output)? {
        let path = entry?.path();
        let is_part = path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("part-r-"));
        if !is_part {
            continue;
        }
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        for line in text.lines() {
            let n: u64 = line
                .rsplit_once(' ')
                .and_then(|(_, n)| n.parse().ok())
                .with_context(|| format!("{}: bad line {line:?}", path.display()))?;
            totals.words += n;
            totals.distinct = totals.distinct.map(|d| d + 1);
        }
    }
    Ok(totals)
}

// ---------------------------------------------------------------- cluster

/// The coordinator settings a row varies.
#[derive(Clone, Copy, Debug)]
struct ClusterMode {
    /// Map outputs in the coordinator's work root, read by every worker,
    /// instead of on the worker that produced them.
    shared_store: bool,
    /// Job state in memory instead of `STATE/wmr-state.redb`.
    ephemeral_state: bool,
}

impl ClusterMode {
    /// A name for the mode's directories.
    fn slug(self) -> String {
        let store = if self.shared_store { "shared" } else { "local" };
        let state = if self.ephemeral_state {
            "memory"
        } else {
            "durable"
        };
        format!("{store}-{state}")
    }
}

/// Start a cluster in `dir` (which must not exist), run `f` on it, then
/// stop the cluster and remove `dir`, also when `f` fails; how the
/// cluster stopped goes to `stops`.
fn with_cluster<T>(
    name: &str,
    dir: &Path,
    mode: ClusterMode,
    stops: &mut Vec<ClusterStop>,
    f: impl FnOnce(&Cluster) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    ensure!(!dir.exists(), "{} exists already", dir.display());
    let started = Cluster::start(dir, mode);
    let result = match started {
        Ok(cluster) => {
            let result = f(&cluster);
            match cluster.stop() {
                Ok(tasks_left) => {
                    stops.push(ClusterStop {
                        name: name.to_string(),
                        shared_store: mode.shared_store,
                        ephemeral_state: mode.ephemeral_state,
                        tasks_left,
                    });
                    result
                }
                // The row's own error, if any, says more than the stop's.
                Err(stop) => result.and(Err(stop)),
            }
        }
        Err(e) => Err(e),
    };
    let removed =
        std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()));
    let value = result.with_context(|| format!("{name}: cluster in {}", dir.display()))?;
    removed?;
    Ok(value)
}

/// A coordinator and two 1-slot workers on one multi-thread runtime in
/// this process, on 127.0.0.1. Each stops when its watch turns `true`.
struct Cluster {
    runtime: tokio::runtime::Runtime,
    stop_workers: watch::Sender<bool>,
    stop_coordinator: watch::Sender<bool>,
    coordinator: tokio::task::JoinHandle<anyhow::Result<()>>,
    workers: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
    remote: Remote,
}

/// A future that resolves once `stop` turns `true` (or is dropped).
fn stopped(stop: &watch::Sender<bool>) -> impl std::future::Future<Output = ()> + use<> {
    let mut rx = stop.subscribe();
    async move {
        let _ = rx.wait_for(|&stop| stop).await;
    }
}

/// Wait until the coordinator listens: it publishes its fingerprint, then
/// its address, each atomically. Its address and fingerprint.
fn listening(
    runtime: &tokio::runtime::Runtime,
    coordinator: &mut tokio::task::JoinHandle<anyhow::Result<()>>,
    state_dir: &Path,
) -> anyhow::Result<(SocketAddr, String)> {
    let addr_file = state_dir.join("coordinator.addr");
    let deadline = Instant::now() + CLUSTER_LIMIT;
    loop {
        let addr = std::fs::read_to_string(&addr_file);
        let fingerprint = std::fs::read_to_string(state_dir.join("fingerprint"));
        if let (Ok(addr), Ok(fingerprint)) = (addr, fingerprint) {
            let addr: SocketAddr = addr
                .trim()
                .parse()
                .with_context(|| format!("{}: not an address", addr_file.display()))?;
            return Ok((addr, fingerprint.trim().to_string()));
        }
        if coordinator.is_finished() {
            let ended = runtime.block_on(coordinator);
            bail!("the coordinator stopped before it listened: {ended:?}");
        }
        ensure!(
            Instant::now() < deadline,
            "the coordinator did not write {} within {CLUSTER_LIMIT:?}",
            addr_file.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

impl Cluster {
    fn start(dir: &Path, mode: ClusterMode) -> anyhow::Result<Cluster> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("wmr-bench-cluster")
            .build()
            .context("building the tokio runtime")?;
        let (stop_workers, _) = watch::channel(false);
        let (stop_coordinator, _) = watch::channel(false);
        let state_dir = dir.join("state");
        let config = CoordinatorConfig {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            state_dir: state_dir.clone(),
            work_root: dir.join("work"),
            lease: Duration::from_secs(10),
            heartbeat: Duration::from_secs(1),
            shuffle: if mode.shared_store {
                wmr::model::Shuffle::SharedStore
            } else {
                wmr::model::Shuffle::WorkerLocal
            },
            ephemeral_state: mode.ephemeral_state,
            http: None,
            reannounce_window: None,
        };
        let mut coordinator = runtime.spawn(coordinator::serve(config, stopped(&stop_coordinator)));
        let (addr, fingerprint) = match listening(&runtime, &mut coordinator, &state_dir) {
            Ok(listening) => listening,
            Err(e) => {
                stop_coordinator.send_replace(true);
                runtime.shutdown_timeout(CLUSTER_LIMIT);
                return Err(e);
            }
        };

        let workers = (0..2)
            .map(|i| {
                let options = WorkerOptions {
                    coordinator: addr,
                    fingerprint: fingerprint.clone(),
                    slots: 1,
                    name: format!("bench-{i}"),
                    labels: BTreeMap::new(),
                    crash_probability: 0.0,
                    cache_dir: dir.join(format!("cache-{i}")),
                    compile_cache: None,
                    work_dir: dir.join(format!("worker-{i}")),
                    shuffle_listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
                    // No `tenants.toml` in the state dir: development mode.
                    token: String::new(),
                };
                runtime.spawn(worker::run(options, stopped(&stop_workers)))
            })
            .collect();
        Ok(Cluster {
            runtime,
            stop_workers,
            stop_coordinator,
            coordinator,
            workers,
            remote: Remote {
                coordinator: addr,
                fingerprint,
                tenant: TenantId("bench".into()),
                token: String::new(),
                connect_timeout: Duration::from_secs(30),
            },
        })
    }

    /// Deploy `job` (the guest maps and reduces) and follow it to the end.
    fn deploy(&self, guest: &[u8], job: &Job, output: &Path) -> anyhow::Result<JobSummary> {
        let request = JobRequest {
            map_module: guest.to_vec(),
            reduce_module: None,
            inputs: vec![job.input()?],
            output: output.to_path_buf(),
            output_format: Default::default(),
            reducers: job.reducers,
            split_bytes: job.split_bytes,
            limits: Limits::default(),
            params: BTreeMap::new(),
            max_attempts: 1,
            shuffle_settings: Default::default(),
            placement: Default::default(),
            speculate: false,
        };
        let (mut on_submitted, mut on_progress) = (|_: &str| {}, |_| {});
        let deploy = client::deploy(&self.remote, request, &mut on_submitted, &mut on_progress);
        self.runtime
            .block_on(async { tokio::time::timeout(JOB_LIMIT, deploy).await })
            .map_err(|_| anyhow!("the deployed job did not end within {JOB_LIMIT:?}"))?
    }

    /// Drain the workers, then stop the coordinator, then shut the runtime
    /// down (cancelling what is left); bounded. How many tasks were left.
    fn stop(self) -> anyhow::Result<usize> {
        let Cluster {
            runtime,
            stop_workers,
            stop_coordinator,
            coordinator,
            workers,
            ..
        } = self;
        let ended = runtime.block_on(async {
            tokio::time::timeout(CLUSTER_LIMIT, async {
                stop_workers.send_replace(true);
                for worker in workers {
                    worker.await.context("a worker panicked")??;
                }
                stop_coordinator.send_replace(true);
                coordinator.await.context("the coordinator panicked")?
            })
            .await
        });
        // Connections close over a few round trips: give them a moment.
        let settle = Instant::now() + SETTLE_LIMIT;
        let mut tasks_left = runtime.metrics().num_alive_tasks();
        while tasks_left > 0 && Instant::now() < settle {
            std::thread::sleep(Duration::from_millis(10));
            tasks_left = runtime.metrics().num_alive_tasks();
        }
        runtime.shutdown_timeout(CLUSTER_LIMIT);
        ended.map_err(|_| anyhow!("the cluster did not stop within {CLUSTER_LIMIT:?}"))??;
        Ok(tasks_left)
    }
}

// ---------------------------------------------------------------- output

/// The process's peak resident set (Linux only).
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The throughput targets against the rows: the guest's by both its
/// best-of ratio and its paired median (on a noisy machine the two differ).
fn print_throughput_targets(r: &Report) {
    let row = |prefix: &str| r.rows.iter().find(|row| row.name.starts_with(prefix));
    let ratios = &r.guest_vs_native_1_per_round;
    if let (Some(guest), Some(&median)) = (row("guest map"), ratios.get(ratios.len() / 2)) {
        let best = guest.vs_native_1_thread;
        let verdict = match (best >= GUEST_TARGET, median >= GUEST_TARGET) {
            (true, true) => "ok",
            (false, true) => "by the paired median only",
            (true, false) => "by the best-of only",
            (false, false) => "MISSED",
        };
        println!(
            "target: guest >= {GUEST_TARGET:.2}x native 1 thread: best-of {best:.3}x, paired median {median:.3}x: {verdict}"
        );
    }
    if let Some(run) = row("wmr run") {
        let ratio = run.vs_native_2_threads;
        let verdict = if ratio >= RUN_TARGET { "ok" } else { "MISSED" };
        println!("target: wmr run >= {RUN_TARGET:.2}x native 2 threads: {ratio:.3}x: {verdict}");
    }
}

fn print_table(r: &Report, size_mib: u64) {
    println!(
        "corpus: {} files, {size_mib} MiB ({:.1} MB); {} words, {} distinct",
        r.corpus_files,
        r.corpus_bytes as f64 / 1e6,
        r.words,
        r.distinct_words
    );
    println!(
        "{:<48} {:>8} {:>9} {:>10} {:>10}",
        "", "seconds", "MB/s", "vs native1", "vs native2"
    );
    for row in &r.rows {
        println!(
            "{:<48} {:>8.3} {:>9.1} {:>9.3}x {:>9.3}x",
            row.name, row.seconds, row.mb_per_s, row.vs_native_1_thread, row.vs_native_2_threads
        );
    }
    println!(
        "native and guest rows: the fastest of {THROUGHPUT_ROUNDS} rounds, taken in turns (the two one-thread rows file by file); the others: one run"
    );
    let ratios = &r.guest_vs_native_1_per_round;
    if let (Some(low), Some(high)) = (ratios.first(), ratios.last()) {
        println!(
            "guest vs native 1 thread, paired per round: median {:.3}x (from {low:.3}x to {high:.3}x)",
            ratios[ratios.len() / 2]
        );
    }
    print_throughput_targets(r);
    println!("{}", r.cluster_note);
    if let Some(first) = r.per_task.first() {
        println!(
            "per-task overhead: {} tasks ({} one-line maps + 1 reduce), wall time / tasks:",
            first.tasks,
            first.tasks - 1
        );
    }
    for t in &r.per_task {
        let rounds = if t.samples_seconds.len() > 1 {
            let each: Vec<String> = t
                .samples_seconds
                .iter()
                .map(|s| format!("{:.3}", s * 1e3 / t.tasks as f64))
                .collect();
            format!("  (median of {})", each.join(", "))
        } else {
            String::new()
        };
        println!(
            "  {:<46} {:>8.3} s {:>8.3} ms/task{rounds}",
            t.name, t.seconds, t.ms_per_task
        );
    }
    let d = &r.durability;
    println!(
        "  cost of durability: {:.3} ms per task (durable {:.3} - in-memory {:.3})",
        d.cost_ms_per_task, d.durable_ms_per_task, d.in_memory_ms_per_task
    );
    println!(
        "  durable store: {:.3} ms per task; target < {} ms: {}",
        d.durable_ms_per_task,
        d.target_ms_per_task,
        if d.target_met { "ok" } else { "MISSED" }
    );
    println!(
        "  (embedded includes compiling the guest, once for map and reduce; each QUIC row is a \
         fresh cluster whose workers compiled it in warm-up jobs first)"
    );
    let left: Vec<usize> = r.clusters.iter().map(|c| c.tasks_left).collect();
    if left.iter().all(|&n| n == 0) {
        println!(
            "clusters: {} started, stopped and removed; no tasks left",
            left.len()
        );
    } else {
        println!(
            "clusters: {} started, stopped and removed; tokio tasks still alive {SETTLE_LIMIT:?} \
             after the workers and the coordinator returned, per cluster: {left:?} (cancelled by \
             the runtime shutdown)",
            left.len()
        );
    }
    let verdict = if r.store_attempt_us < STORE_TARGET_US {
        "ok"
    } else {
        "over"
    };
    println!(
        "store + instantiate + empty map: {:.1} µs per attempt ({} attempts; target < {STORE_TARGET_US} µs: {verdict})",
        r.store_attempt_us, r.store_attempts
    );
    println!(
        "guest compile: {:.3} s once per process (not in the guest map row; in the wmr run row)",
        r.guest_compile_seconds
    );
    match r.peak_rss_kib {
        Some(kib) => println!("peak RSS: {:.1} MiB", kib as f64 / 1024.0),
        None => println!("peak RSS: unavailable"),
    }
    println!("{}", r.reference);
}

#[cfg(test)]
mod tests {
    use super::count;
    use proptest::prelude::*;
    use std::collections::HashMap;

    /// The definition of a word, written the obvious way.
    fn reference(text: &[u8]) -> HashMap<String, u64> {
        let mut counts = HashMap::new();
        for word in String::from_utf8_lossy(text).split(|c: char| !c.is_alphabetic()) {
            if !word.is_empty() {
                *counts.entry(word.to_string()).or_insert(0) += 1;
            }
        }
        counts
    }

    fn counted(text: &[u8]) -> HashMap<String, u64> {
        let mut counts = HashMap::new();
        count::count_words(text, &mut counts);
        // Every word is UTF-8.
        counts
            .into_iter()
            .map(|(w, n)| (String::from_utf8(w.0.to_vec()).expect("a UTF-8 word"), n))
            .collect()
    }

    // ASCII letters and separators (each side of the case-folding edges),
    // non-ASCII letters of 2, 3 and 4 bytes, non-ASCII non-letters, and
    // byte sequences that are not UTF-8 (stray continuation, truncated
    // sequences, overlong, surrogate, 0xff).
    const PIECES: &[&[u8]] = &[
        b"a",
        b"z",
        b"A",
        b"Z",
        b"q",
        b" ",
        b"\n",
        b"@",
        b"[",
        b"`",
        b"{",
        b"0",
        b"9",
        b"'",
        b"-",
        b"\x7f",
        "\u{e9}".as_bytes(),
        "\u{df}".as_bytes(),
        "\u{3a9}".as_bytes(),
        "\u{44f}".as_bytes(),
        "\u{4e2d}".as_bytes(),
        "\u{1d538}".as_bytes(),
        "\u{2014}".as_bytes(),
        "\u{2019}".as_bytes(),
        "\u{fffd}".as_bytes(),
        "\u{1f600}".as_bytes(),
        "\u{a0}".as_bytes(),
        b"\x80",
        b"\xc3",
        b"\xe2\x82",
        b"\xf0\x9f\x98",
        b"\xc0\x80",
        b"\xed\xa0\x80",
        b"\xff",
    ];

    proptest! {
        /// The one-pass, word-at-a-time tokenizer finds exactly the words
        /// of the lossy-decode-then-split definition, at every alignment.
        #[test]
        fn fast_tokenizer_matches_the_definition(
            pieces in prop::collection::vec(prop::sample::select(PIECES), 0..80)
        ) {
            let text = pieces.concat();
            prop_assert_eq!(counted(&text), reference(&text));
        }

        /// `Word`'s word-wide comparison is byte equality, at every length
        /// and wherever the two differ (one byte flipped, or none).
        #[test]
        fn word_equality_is_byte_equality(
            a in prop::collection::vec(any::<u8>(), 0..40),
            flip in prop::option::of((any::<prop::sample::Index>(), 1..=255u8)),
        ) {
            let mut b = a.clone();
            if let (Some((at, by)), false) = (flip, a.is_empty()) {
                b[at.index(a.len())] ^= by;
            }
            prop_assert_eq!(count::Word(&a) == count::Word(&b), a == b);
            let shorter = &b[..b.len().saturating_sub(1)];
            prop_assert_eq!(count::Word(&a) == count::Word(shorter), a[..] == *shorter);
        }
    }

    #[test]
    fn fast_tokenizer_matches_the_definition_on_the_books() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/data");
        let mut books = 0;
        for entry in std::fs::read_dir(dir).expect("examples/data") {
            let text = std::fs::read(entry.expect("entry").path()).expect("a book");
            assert_eq!(counted(&text), reference(&text));
            books += 1;
        }
        assert_eq!(books, 8);
    }
}

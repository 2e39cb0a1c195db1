//! `wmr-bench shuffle` (`just bench-shuffle`): issue 12's shuffle
//! measurements, driving the `wmr` binary through its CLI only, so the
//! figures are what a user of `wmr run` gets, whole process included.
//!
//! 1. Unique lines: for each size, a file of unique text lines (generated
//!    from a fixed seed) counted by `LC_ALL=C sort | uniq -c` and by
//!    `wmr run` with the grep guest (every line matches, so every line is a
//!    key: the shuffle carries the whole input). Both outputs must equal
//!    the generated lines, each counted once, or the run fails.
//! 2. Emit flood: the hostile guest emits tiny pairs until the output limit
//!    stops it; what that costs in time and memory.
//!
//! A missed target is reported, not an error.

use anyhow::{Context as _, bail, ensure};
use std::fs::File;
use std::hash::{DefaultHasher, Hasher as _};
use std::io::{self, BufRead as _, BufReader, BufWriter, Write as _};
use std::os::unix::process::ExitStatusExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, ExitStatus, Stdio};
use std::time::Instant;

const MIB: u64 = 1 << 20;
/// Issue 12's targets: `wmr run` at least as fast as sort, in at most this
/// much memory (the whole process).
const RATIO_TARGET: f64 = 1.0;
const RSS_TARGET_MIB: f64 = 512.0;
/// The generated lines depend on nothing else.
const SEED: u64 = 0x5eed_0012_c0ff_ee00;
const MIN_LINE: usize = 20;
const MAX_LINE: usize = 100;
/// Workers and reducers of `wmr run`, and sort's threads: the same cores.
const PARALLEL: &str = "2";
const SORT_BUFFER: &str = "256M";
/// Enough to make line prefixes repeat often, so sort compares past them.
const WORDS: &[&str] = &[
    "the", "of", "and", "to", "in", "a", "is", "that", "for", "it", "as", "was", "with", "be",
    "by", "on", "not", "he", "this", "are", "or", "his", "from", "at", "which", "but", "have",
    "an", "had", "they", "you", "were", "their", "one", "all", "we", "can", "her", "has", "there",
    "been", "if", "more", "when", "will", "would", "who", "so", "no", "river", "lantern",
    "harbour", "quietly", "mountain", "letter", "window", "morning", "silver", "garden", "engine",
    "north", "paper", "stone", "winter",
];

#[derive(clap::Parser, Debug)]
#[command(
    name = "wmr-bench shuffle",
    bin_name = "wmr-bench shuffle",
    about = "Shuffle benchmark: unique-lines count against sort | uniq -c, and an emit flood"
)]
pub struct ShuffleArgs {
    /// Sizes of the unique-lines input, in MiB (comma-separated): one row each.
    #[arg(long, value_delimiter = ',', default_value = "600,2048")]
    pub sizes_mib: Vec<u64>,
    /// The `wmr` binary.
    #[arg(long, default_value = "target/release/wmr")]
    pub wmr: PathBuf,
    /// Directory of the guest components (grep.wasm, hostile.wasm).
    #[arg(long, default_value = "target/guests/wasm32-wasip2/release")]
    pub guests: PathBuf,
    /// Where the scratch directory is made (default: of the temp
    /// directories, the one with the most free space).
    #[arg(long)]
    pub scratch: Option<PathBuf>,
}

/// One unique-lines row.
struct LinesRow {
    size_mib: u64,
    lines: u64,
    sort: Measured,
    wmr: Measured,
}

/// The emit-flood row: expected to fail, so its outcome is reported.
struct FloodRow {
    run: Measured,
    status: ExitStatus,
    /// wmr's error line, or its summary's outcome when it succeeded.
    outcome: String,
}

/// A process (or pipeline) run: wall time and peak resident set.
#[derive(Clone, Copy)]
struct Measured {
    seconds: f64,
    peak_rss_kib: u64,
}

impl Measured {
    fn rss_mib(&self) -> f64 {
        self.peak_rss_kib as f64 / 1024.0
    }
}

/// An order-independent digest of a multiset of (line, count) records:
/// two outputs with equal digests hold the same records, whatever their
/// order and split into files, without either being held in memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Digest {
    records: u64,
    sum: u64,
    xor: u64,
}

impl Digest {
    fn add(&mut self, line: &[u8], count: u64) {
        // Fixed keys: the same record hashes the same throughout the process.
        let mut hasher = DefaultHasher::new();
        hasher.write(line);
        hasher.write_u64(count);
        let hash = hasher.finish();
        self.records += 1;
        self.sum = self.sum.wrapping_add(hash);
        self.xor ^= hash;
    }
}

pub fn run(args: &ShuffleArgs) -> anyhow::Result<ExitCode> {
    ensure!(
        !args.sizes_mib.is_empty(),
        "--sizes-mib needs at least one size"
    );
    ensure!(
        args.sizes_mib.iter().all(|&s| s > 0),
        "--sizes-mib: every size must be at least 1"
    );
    let grep = args.guests.join("grep.wasm");
    let hostile = args.guests.join("hostile.wasm");
    for path in [&args.wmr, &grep, &hostile] {
        ensure!(path.is_file(), "{} does not exist", path.display());
    }
    let scratch = Scratch::create(args.scratch.as_deref())?;
    print_header(&scratch)?;

    let mut rows = Vec::new();
    let mut flood = None;
    // The table is printed whatever happens, then the error if any.
    let result = (|| {
        for &size_mib in &args.sizes_mib {
            rows.push(unique_lines(args, &grep, &scratch.path, size_mib)?);
        }
        flood = Some(emit_flood(args, &hostile, &scratch.path)?);
        anyhow::Ok(())
    })();
    print_table(&rows, flood.as_ref());
    result?;
    Ok(ExitCode::SUCCESS)
}

/// Generate the input, count it both ways, check both against the
/// generated lines. Each step's files are removed once used: the largest
/// size needs a few times its input in scratch space, not more.
fn unique_lines(
    args: &ShuffleArgs,
    grep: &Path,
    scratch: &Path,
    size_mib: u64,
) -> anyhow::Result<LinesRow> {
    let dir = scratch.join(format!("lines-{size_mib}"));
    std::fs::create_dir_all(&dir)?;
    let input = dir.join("input.txt");
    eprintln!("[{size_mib} MiB] generating {}", input.display());
    let (lines, expected) = generate(&input, size_mib * MIB)?;

    eprintln!("[{size_mib} MiB] sort | uniq -c");
    let counted = dir.join("uniq.txt");
    let sort_tmp = dir.join("sort-tmp");
    std::fs::create_dir_all(&sort_tmp)?;
    let sort = sort_uniq(&input, &sort_tmp, &counted)?;
    let got = digest_uniq(&counted)?;
    ensure!(
        got == expected,
        "[{size_mib} MiB] sort | uniq -c output {got:?} differs from the generated lines \
         {expected:?}"
    );
    std::fs::remove_dir_all(&sort_tmp)?;
    std::fs::remove_file(&counted)?;

    eprintln!("[{size_mib} MiB] wmr run");
    let output = dir.join("out");
    let output_limit = format!("{}MiB", output_limit_mib(size_mib));
    let (wmr, status) = run_wmr(
        &args.wmr,
        &dir,
        &[
            "--map".as_ref(),
            grep.as_os_str(),
            "--param".as_ref(),
            "pattern= ".as_ref(),
            "--input".as_ref(),
            input.as_os_str(),
            "--output-limit".as_ref(),
            output_limit.as_ref(),
        ],
        &output,
    )?;
    if !status.success() {
        bail!(
            "[{size_mib} MiB] wmr run failed ({status}): {}",
            error_line(&dir)
        );
    }
    let got = digest_parts(&output)?;
    ensure!(
        got == expected,
        "[{size_mib} MiB] wmr run output {got:?} differs from the generated lines {expected:?}"
    );
    std::fs::remove_dir_all(&dir)?;
    Ok(LinesRow {
        size_mib,
        lines,
        sort,
        wmr,
    })
}

/// `wmr run`'s output limit per attempt for a row: the default 1 GiB, or
/// twice the input if more. Every line is a key, so a reduce attempt emits
/// its share of the input plus 33 bytes a line as the limit counts it
/// (with 2 reducers, about 0.8 times the input): at the default, 2 GiB of
/// input fails the job, which would measure the limit, not the shuffle.
fn output_limit_mib(size_mib: u64) -> u64 {
    (2 * size_mib).max(1024)
}

/// `hostile.wasm` in `emit-tiny` mode on a one-line input, default limits.
fn emit_flood(args: &ShuffleArgs, hostile: &Path, scratch: &Path) -> anyhow::Result<FloodRow> {
    let dir = scratch.join("flood");
    std::fs::create_dir_all(&dir)?;
    let input = dir.join("input.txt");
    std::fs::write(&input, "the quick brown fox\n")?;
    eprintln!("[flood] wmr run, hostile mode=emit-tiny");
    let (run, status) = run_wmr(
        &args.wmr,
        &dir,
        &[
            "--map".as_ref(),
            hostile.as_os_str(),
            "--param".as_ref(),
            "mode=emit-tiny".as_ref(),
            "--input".as_ref(),
            input.as_os_str(),
        ],
        &dir.join("out"),
    )?;
    let outcome = if status.success() {
        summary_outcome(&dir)
    } else {
        error_line(&dir)
    };
    std::fs::remove_dir_all(&dir)?;
    Ok(FloodRow {
        run,
        status,
        outcome,
    })
}

// ---------------------------------------------------------------- input

/// Write unique lines to `path` until it holds at least `bytes`; the line
/// count and the digest of every line counted once.
///
/// Line `i` embeds a bijective mix of `i` (so no two lines are equal)
/// between words; lengths are uniform in MIN_LINE..=MAX_LINE. Each line is
/// printable ASCII with at least one space and no backslash.
fn generate(path: &Path, bytes: u64) -> anyhow::Result<(u64, Digest)> {
    let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut out = BufWriter::with_capacity(MIB as usize, file);
    let mut rng = SEED;
    let mut digest = Digest::default();
    let mut line = Vec::with_capacity(MAX_LINE + 1);
    let (mut written, mut lines) = (0u64, 0u64);
    while written < bytes {
        line.clear();
        let target = MIN_LINE + (splitmix(&mut rng) % (MAX_LINE - MIN_LINE + 1) as u64) as usize;
        for _ in 0..=splitmix(&mut rng) % 2 {
            line.extend_from_slice(word(&mut rng));
            line.push(b' ');
        }
        write!(line, "{:016x}", mix(lines ^ SEED))?;
        while line.len() < target {
            let next = word(&mut rng);
            if line.len() + 1 + next.len() > MAX_LINE {
                break;
            }
            line.push(b' ');
            line.extend_from_slice(next);
        }
        debug_assert!((MIN_LINE..=MAX_LINE).contains(&line.len()));
        digest.add(&line, 1);
        line.push(b'\n');
        out.write_all(&line)?;
        written += line.len() as u64;
        lines += 1;
    }
    let file = out.into_inner().map_err(|e| e.into_error())?;
    // On disk before anything is timed: writeback would slow the first run.
    file.sync_all()?;
    Ok((lines, digest))
}

fn word(rng: &mut u64) -> &'static [u8] {
    WORDS[(splitmix(rng) % WORDS.len() as u64) as usize].as_bytes()
}

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    mix(*state)
}

/// SplitMix64's finalizer: a bijection on u64.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

// ---------------------------------------------------------------- runs

/// `LC_ALL=C sort -S 256M --parallel=2 -T TMP INPUT | uniq -c > OUTPUT`,
/// timed until both exit; the peak RSS is sort's (uniq's is a few MiB).
fn sort_uniq(input: &Path, tmp: &Path, output: &Path) -> anyhow::Result<Measured> {
    let out = File::create(output)?;
    let start = Instant::now();
    let mut sort = Command::new("sort")
        .env("LC_ALL", "C")
        .args(["-S", SORT_BUFFER, &format!("--parallel={PARALLEL}"), "-T"])
        .arg(tmp)
        .arg(input)
        .stdout(Stdio::piped())
        .spawn()
        .context("spawning sort")?;
    let pipe = sort.stdout.take().expect("sort's stdout is piped");
    let uniq = Command::new("uniq")
        .env("LC_ALL", "C")
        .arg("-c")
        .stdin(pipe)
        .stdout(out)
        .spawn()
        .context("spawning uniq")?;
    let (sort_status, sort_rss) = reap(sort)?;
    let (uniq_status, _) = reap(uniq)?;
    let seconds = start.elapsed().as_secs_f64();
    ensure!(sort_status.success(), "sort failed: {sort_status}");
    ensure!(uniq_status.success(), "uniq -c failed: {uniq_status}");
    Ok(Measured {
        seconds,
        peak_rss_kib: sort_rss,
    })
}

/// `wmr run JOB --output OUTPUT --reducers 2 --workers 2 --work-dir DIR/work
/// --json`, its summary in `DIR/summary.json` and its stderr in
/// `DIR/stderr.txt`. A failed job is the caller's to judge.
fn run_wmr(
    wmr: &Path,
    dir: &Path,
    job: &[&std::ffi::OsStr],
    output: &Path,
) -> anyhow::Result<(Measured, ExitStatus)> {
    let work = dir.join("work");
    std::fs::create_dir_all(&work)?;
    let stdout = File::create(dir.join("summary.json"))?;
    let stderr = File::create(dir.join("stderr.txt"))?;
    let start = Instant::now();
    let child = Command::new(wmr)
        .arg("run")
        .args(job)
        .arg("--output")
        .arg(output)
        .args(["--reducers", PARALLEL, "--workers", PARALLEL, "--work-dir"])
        .arg(&work)
        .arg("--json")
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .with_context(|| format!("spawning {}", wmr.display()))?;
    let (status, peak_rss_kib) = reap(child)?;
    let seconds = start.elapsed().as_secs_f64();
    Ok((
        Measured {
            seconds,
            peak_rss_kib,
        },
        status,
    ))
}

/// Wait for `child` with `wait4`, which also returns its resource usage:
/// its exit status and peak RSS in KiB (`ru_maxrss` is KiB on Linux).
/// Taking the `Child` by value means std never waits for it again.
fn reap(child: Child) -> anyhow::Result<(ExitStatus, u64)> {
    let pid = libc::pid_t::try_from(child.id())?;
    let mut status = 0;
    // SAFETY: `rusage` is plain integers; all zeroes is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: `pid` is our child, not yet reaped; both pointers are to
        // live locals of the right types.
        let reaped = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if reaped == pid {
            break;
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error).context("wait4");
        }
    }
    let peak_rss_kib = u64::try_from(usage.ru_maxrss).unwrap_or(0);
    Ok((ExitStatus::from_raw(status), peak_rss_kib))
}

/// wmr's one-line error (`error: ...`) from its stderr, or its last line.
fn error_line(dir: &Path) -> String {
    let stderr = std::fs::read_to_string(dir.join("stderr.txt")).unwrap_or_default();
    let mut lines = stderr.lines().rev().filter(|l| !l.trim().is_empty());
    let last = lines.clone().next().unwrap_or("(no output on stderr)");
    lines
        .find(|l| l.starts_with("error:"))
        .unwrap_or(last)
        .to_string()
}

/// The outcome, attempts and wall time from wmr's `--json` summary. Read
/// as untyped JSON: this binary depends on wmr's CLI, not its internals.
fn summary_outcome(dir: &Path) -> String {
    let text = std::fs::read_to_string(dir.join("summary.json")).unwrap_or_default();
    match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(summary) => format!(
            "outcome {}, {} attempts, {} records out",
            summary["outcome"], summary["attempts"], summary["records_out"]
        ),
        Err(_) => "(no JSON summary)".to_string(),
    }
}

// ---------------------------------------------------------------- outputs

/// The digest of `uniq -c` output: lines `%7d LINE` (count right-aligned,
/// one space, the line verbatim).
fn digest_uniq(path: &Path) -> anyhow::Result<Digest> {
    let mut digest = Digest::default();
    for_each_line(path, |record| {
        let start = record.iter().position(|&b| b != b' ').unwrap_or(0);
        let (count, line) = split_at_space(&record[start..], false)?;
        digest.add(line, count);
        Ok(())
    })?;
    Ok(digest)
}

/// The digest of `wmr run`'s text output: `LINE COUNT` in `part-r-*`.
fn digest_parts(output: &Path) -> anyhow::Result<Digest> {
    ensure!(
        output.join("_SUCCESS").exists(),
        "{} has no _SUCCESS",
        output.display()
    );
    let mut digest = Digest::default();
    for entry in std::fs::read_dir(output)? {
        let path = entry?.path();
        if path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("part-r-"))
        {
            for_each_line(&path, |record| {
                let (count, line) = split_at_space(record, true)?;
                digest.add(line, count);
                Ok(())
            })?;
        }
    }
    Ok(digest)
}

/// Split `COUNT LINE` (at the first space) or `LINE COUNT` (at the last).
fn split_at_space(record: &[u8], count_last: bool) -> anyhow::Result<(u64, &[u8])> {
    let at = if count_last {
        record.iter().rposition(|&b| b == b' ')
    } else {
        record.iter().position(|&b| b == b' ')
    };
    let Some(at) = at else {
        bail!("no count in {:?}", String::from_utf8_lossy(record));
    };
    let (count, line) = if count_last {
        (&record[at + 1..], &record[..at])
    } else {
        (&record[..at], &record[at + 1..])
    };
    let count = std::str::from_utf8(count)
        .ok()
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("bad count in {:?}", String::from_utf8_lossy(record)))?;
    Ok((count, line))
}

/// Call `f` with each line of `path`, without its newline, reusing one
/// buffer (the files are gigabytes).
fn for_each_line(
    path: &Path,
    mut f: impl FnMut(&[u8]) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut reader = BufReader::with_capacity(MIB as usize, file);
    let mut line = Vec::new();
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            return Ok(());
        }
        if line.last() == Some(&b'\n') {
            line.pop();
        }
        f(&line)?;
    }
}

// ---------------------------------------------------------------- scratch

/// A scratch directory named by the pid, removed when dropped (also when
/// the benchmark fails).
struct Scratch {
    path: PathBuf,
}

impl Scratch {
    /// In `parent`, or else in whichever of the usual temp directories has
    /// the most free space (the largest row needs several GiB).
    fn create(parent: Option<&Path>) -> anyhow::Result<Self> {
        let parent = match parent {
            Some(parent) => parent.to_path_buf(),
            None => {
                let mut candidates = vec![std::env::temp_dir(), PathBuf::from("/var/tmp")];
                if let Some(home) = std::env::var_os("HOME") {
                    candidates.push(Path::new(&home).join(".cache"));
                }
                let mut best: Option<(u64, PathBuf)> = None;
                for dir in candidates {
                    if let Some(free) = free_bytes(&dir)
                        && best.as_ref().is_none_or(|(most, _)| free > *most)
                    {
                        best = Some((free, dir));
                    }
                }
                best.map_or_else(std::env::temp_dir, |(_, dir)| dir)
            }
        };
        let path = parent.join(format!("wmr-bench-shuffle-{}", std::process::id()));
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

/// Bytes free to an unprivileged user on the filesystem of `dir`.
fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt as _;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: `statvfs` is plain integers; all zeroes is a valid value.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a live `statvfs` to fill.
    if unsafe { libc::statvfs(path.as_ptr(), &mut stat) } != 0 {
        return None;
    }
    Some(stat.f_bavail * stat.f_frsize)
}

// ---------------------------------------------------------------- report

fn print_header(scratch: &Scratch) -> anyhow::Result<()> {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let ram_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            let line = m.lines().find(|l| l.starts_with("MemTotal:"))?;
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .map_or_else(
            || "unknown".to_string(),
            |kib| format!("{:.1} GiB", kib as f64 / MIB as f64),
        );
    let free = free_bytes(&scratch.path).map_or_else(
        || "unknown".to_string(),
        |b| format!("{:.1} GiB", b as f64 / (1024 * MIB) as f64),
    );
    let sort_version = Command::new("sort")
        .arg("--version")
        .output()
        .context("running sort --version")?;
    let sort_version = String::from_utf8_lossy(&sort_version.stdout)
        .lines()
        .next()
        .unwrap_or("unknown")
        .to_string();
    println!("wmr-bench shuffle: {cores} cores, {ram_gib} RAM");
    println!("scratch: {} ({free} free)", scratch.path.display());
    println!(
        "baseline: LC_ALL=C sort -S {SORT_BUFFER} --parallel={PARALLEL} -T SCRATCH FILE | uniq -c \
         > SCRATCH ({sort_version})"
    );
    println!(
        "wmr:      wmr run --map grep.wasm --param 'pattern= ' --input FILE --reducers {PARALLEL} \
         --workers {PARALLEL} --work-dir SCRATCH --json --output-limit LIMIT (LIMIT: 1 GiB or twice \
         the input if more; other settings default)"
    );
    Ok(())
}

fn print_table(rows: &[LinesRow], flood: Option<&FloodRow>) {
    if rows.is_empty() && flood.is_none() {
        return;
    }
    let ok = |met: bool| if met { "ok" } else { "MISSED" };
    println!();
    println!(
        "{:<20} {:>11} {:>11} {:>9} {:>7} {:>13} {:>12}  outputs",
        "unique lines", "lines", "sort|uniq s", "wmr s", "ratio", "sort RSS MiB", "wmr RSS MiB"
    );
    for r in rows {
        println!(
            "{:<20} {:>11} {:>11.2} {:>9.2} {:>7.2} {:>13.1} {:>12.1}  equal",
            format!("{} MiB", r.size_mib),
            r.lines,
            r.sort.seconds,
            r.wmr.seconds,
            r.sort.seconds / r.wmr.seconds,
            r.sort.rss_mib(),
            r.wmr.rss_mib()
        );
    }
    if let Some(f) = flood {
        println!();
        println!(
            "emit flood (hostile.wasm mode=emit-tiny, one-line input, default limits): {:.2} s, \
             peak RSS {:.1} MiB, {}: {}",
            f.run.seconds,
            f.run.rss_mib(),
            match (f.status.code(), f.status.signal()) {
                (Some(code), _) => format!("exit code {code}"),
                (None, Some(signal)) => format!("killed by signal {signal}"),
                (None, None) => f.status.to_string(),
            },
            f.outcome
        );
    }
    println!();
    println!(
        "verdicts (ratio = sort|uniq time / wmr time, target >= {RATIO_TARGET:.1}; wmr peak RSS \
         target <= {RSS_TARGET_MIB} MiB):"
    );
    for r in rows {
        let ratio = r.sort.seconds / r.wmr.seconds;
        println!(
            "  unique lines {} MiB: ratio {ratio:.2} {}; peak RSS {:.1} MiB {}",
            r.size_mib,
            ok(ratio >= RATIO_TARGET),
            r.wmr.rss_mib(),
            ok(r.wmr.rss_mib() <= RSS_TARGET_MIB)
        );
    }
    if let Some(f) = flood {
        println!(
            "  emit flood: peak RSS {:.1} MiB {}",
            f.run.rss_mib(),
            ok(f.run.rss_mib() <= RSS_TARGET_MIB)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_ignores_order_and_sees_counts() {
        let mut a = Digest::default();
        a.add(b"x y", 1);
        a.add(b"z w", 2);
        let mut b = Digest::default();
        b.add(b"z w", 2);
        b.add(b"x y", 1);
        assert_eq!(a, b);
        let mut c = Digest::default();
        c.add(b"z w", 1);
        c.add(b"x y", 2);
        assert_ne!(a, c);
    }

    #[test]
    fn both_output_formats_parse_to_the_same_record() {
        let (count, line) = split_at_space(b"12 a b c", false).unwrap();
        assert_eq!((count, line), (12, &b"a b c"[..]));
        let (count, line) = split_at_space(b"a b c 12", true).unwrap();
        assert_eq!((count, line), (12, &b"a b c"[..]));
    }

    #[test]
    fn generated_lines_are_unique_and_well_formed() {
        let dir = std::env::temp_dir().join(format!("wmr-bench-gen-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("input.txt");
        let (lines, _) = generate(&path, MIB).unwrap();
        let text = std::fs::read(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let mut seen = std::collections::HashSet::new();
        for line in text.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            assert!((MIN_LINE..=MAX_LINE).contains(&line.len()));
            assert!(line.contains(&b' '));
            assert!(
                line.iter()
                    .all(|&b| (b' '..=b'~').contains(&b) && b != b'\\')
            );
            assert!(seen.insert(line));
        }
        assert_eq!(seen.len() as u64, lines);
    }
}

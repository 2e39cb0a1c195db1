//! I6, differentially: random jobs through `wmr run` (and, fewer, through a
//! coordinator and workers over QUIC on loopback) commit byte for byte the
//! output of `wmr seq`, the sequential reference.
//!
//! A case draws from a seed: input files (duplicates, hot keys, empty
//! lines, lines of tens of KiB, `\r`, `\t`, NUL, invalid UTF-8, a missing
//! final newline), `--reducers`, `--split-size`, the workers and the guest:
//! `lines` with `combine=sum`, `lines` with `combine=decline` (the SDK's
//! default combiner) and `lines-map`, which exports no combiner at all
//! (reduced by `lines`). Both outputs are produced by the binary and compared
//! as sorted lines of bytes, so the test does not depend on the text format.
//!
//! Environment: `WMR_DIFF_SEED` (decimal, `0x` hex or `random`; default a
//! fixed seed, so CI is deterministic), `WMR_DIFF_CASES` (embedded cases,
//! default 16; the cluster runs a fifth as many, at least one),
//! `WMR_DIFF_ONLY=K` (only case K: how a failure is replayed),
//! `WMR_DIFF_KEEP=1` (keep a failing case's directory). A longer run:
//! `just differential 200`.

mod support;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use support::cluster::{Cluster, output_within};
use support::*;

const DEFAULT_SEED: u64 = 0x00d1_ff10_5eed_0010;
const DEFAULT_CASES: usize = 16;
/// Bound on one `wmr run`, `wmr seq` or deploy (issue 10: `wmr run` can hang).
const LIMIT: Duration = Duration::from_secs(180);
const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;

// ---------------------------------------------------------------------------
// Seeds and cases

/// splitmix64: tiny, and stable across versions of any crate.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix(self.0)
    }

    /// Uniform in `lo..=hi` (the modulo bias does not matter here).
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }

    /// Log-uniform in `lo..=hi`: as many small values as large ones.
    fn log_range(&mut self, lo: u64, hi: u64) -> u64 {
        let (a, b) = ((lo as f64).ln(), ((hi + 1) as f64).ln());
        let unit = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        ((a + (b - a) * unit).exp() as u64).clamp(lo, hi)
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[(self.next() % items.len() as u64) as usize]
    }
}

/// The splitmix64 finaliser.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// What the environment asks for (see the top of the file).
struct Settings {
    seed: u64,
    cases: usize,
    only: Option<usize>,
    keep: bool,
}

fn settings() -> Settings {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    let seed = match var("WMR_DIFF_SEED").as_deref().map(str::trim) {
        None => DEFAULT_SEED,
        Some("random") => mix(std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64),
        Some(s) => match s.strip_prefix("0x") {
            Some(hex) => u64::from_str_radix(hex, 16),
            None => s.parse(),
        }
        .unwrap_or_else(|e| panic!("WMR_DIFF_SEED={s}: {e}")),
    };
    let number = |name: &str| {
        var(name).map(|s| {
            s.trim()
                .parse::<usize>()
                .unwrap_or_else(|e| panic!("{name}={s}: {e}"))
        })
    };
    Settings {
        seed,
        cases: number("WMR_DIFF_CASES").unwrap_or(DEFAULT_CASES),
        only: number("WMR_DIFF_ONLY"),
        keep: var("WMR_DIFF_KEEP").is_some_and(|v| v != "0"),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Guest {
    /// `lines`, `--param combine=sum`.
    Sum,
    /// `lines`, `--param combine=decline`: the SDK's default combiner.
    Decline,
    /// `lines-map` (no combiner export) as map, `lines` as reduce.
    MapOnly,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Size {
    /// ~10-200 KiB in up to 6 files, splits of 4-256 KiB.
    Small,
    /// ~0.1-2 MiB, splits of 4 KiB-8 MiB.
    Medium,
    /// 3-7 MiB in 1-2 files with > 1 MiB of keys with several values per
    /// map task: past the host's 1 MiB group batch (issue 10).
    Big,
}

/// One random job.
#[derive(Debug)]
struct Case {
    guest: Guest,
    size: Size,
    keys: &'static str,
    reducers: u32,
    split_size: u64,
    /// Worker threads of `wmr run`, or worker processes of the cluster.
    workers: u32,
    /// Cluster only: slots per worker, and `--shared-store`.
    slots: u32,
    shared_store: bool,
}

impl Case {
    /// Guest and size cycle with `cycle` so that any 9 consecutive cases
    /// cover every pair of them (a few cases cover all of them); the rest is
    /// drawn from `rng`.
    fn draw(rng: &mut Rng, cycle: usize) -> Case {
        let guest = [Guest::Sum, Guest::Decline, Guest::MapOnly][cycle % 3];
        let size = [Size::Big, Size::Small, Size::Medium][(cycle + cycle / 3) % 3];
        let split_size = match size {
            Size::Small => rng.log_range(4 * KIB, 256 * KIB),
            Size::Medium => rng.log_range(4 * KIB, 8 * MIB),
            Size::Big => rng.log_range(MIB, 8 * MIB),
        };
        Case {
            guest,
            size,
            keys: rng.pick(&["line", "line", "word", "hot"]),
            reducers: rng.log_range(1, 10) as u32,
            split_size,
            workers: rng.range(1, 4) as u32,
            slots: rng.range(1, 2) as u32,
            shared_store: rng.chance(50),
        }
    }

    /// `(map, reduce, params)` of the job.
    fn job(&self) -> (PathBuf, Option<PathBuf>, Vec<String>) {
        let keys = format!("key={}", self.keys);
        match self.guest {
            Guest::Sum => (guest("lines"), None, vec![keys, "combine=sum".into()]),
            Guest::Decline => (guest("lines"), None, vec![keys, "combine=decline".into()]),
            Guest::MapOnly => (guest("lines-map"), Some(guest("lines")), vec![keys]),
        }
    }
}

// ---------------------------------------------------------------------------
// Inputs

const WORDS: [&str; 8] = ["map", "reduce", "the", "épée", "日本", "x", "HOT", "a\tb"];

/// One line (never a `\n`) of a random kind; `id` makes most of them distinct.
fn line(rng: &mut Rng, id: u64) -> Vec<u8> {
    match rng.range(0, 99) {
        0..=39 => format!("k{id:06}").into_bytes(),
        40..=59 => {
            let mut text = Vec::new();
            for i in 0..rng.range(1, 6) {
                if i > 0 {
                    text.extend_from_slice(rng.pick(&[" ", "  ", "\t", " \r "]).as_bytes());
                }
                text.extend_from_slice(rng.pick(&WORDS).as_bytes());
            }
            text
        }
        60..=79 => {
            let len = rng.range(0, 24) as usize;
            random_bytes(rng, len)
        }
        80..=86 => format!("crlf {id}\r").into_bytes(),
        87..=92 => format!(" \t spaced {id} \t").into_bytes(),
        _ => [
            b"\xff\xfe caf\xc3\xa9 \x00 ".as_slice(),
            id.to_string().as_bytes(),
        ]
        .concat(),
    }
}

/// Any bytes but `\n` (NUL in its place).
fn random_bytes(rng: &mut Rng, len: usize) -> Vec<u8> {
    (0..len)
        .map(|_| match rng.next() as u8 {
            b'\n' => 0,
            b => b,
        })
        .collect()
}

/// Write the case's input files into `dir`; their total size.
fn generate(rng: &mut Rng, size: Size, dir: &Path) -> u64 {
    let distinct = match size {
        Size::Small => rng.log_range(20, 3_000),
        Size::Medium => rng.log_range(3_000, 40_000),
        Size::Big => rng.range(120_000, 220_000),
    };
    let mut table: Vec<Vec<u8>> = (0..distinct).map(|id| line(rng, id)).collect();
    // Long lines: longer than the SDK's 64 KiB emit batch together, and
    // than many split sizes.
    for _ in 0..rng.pick(&[0, 0, 1, 2, 3]) {
        let len = rng.log_range(10 * KIB, 60 * KIB) as usize;
        table.push(if rng.chance(50) {
            random_bytes(rng, len)
        } else {
            "long line ".repeat(len / 10).into_bytes()
        });
    }
    // Each line 1-5 times, copies close together (so that they meet in one
    // map task) but shuffled within a random window.
    let mut order: Vec<usize> = Vec::new();
    for id in 0..table.len() {
        let copies = rng.pick(&[1, 1, 2, 2, 2, 3, 5]);
        order.extend(std::iter::repeat_n(id, copies));
    }
    let window = rng.log_range(1, 4096) as usize;
    for i in 0..order.len() {
        let j = i + (rng.next() as usize) % window.min(order.len() - i);
        order.swap(i, j);
    }
    // Hot lines (one may be empty) between the others.
    let hot: Vec<usize> = (0..rng.range(0, 3))
        .map(|i| {
            table.push(if i == 0 && rng.chance(50) {
                Vec::new()
            } else {
                format!("hot line {i}").into_bytes()
            });
            table.len() - 1
        })
        .collect();
    let hot_percent = if hot.is_empty() { 0 } else { rng.range(1, 30) };
    let mut lines = Vec::with_capacity(order.len());
    for id in order {
        lines.push(id);
        while rng.chance(hot_percent) {
            lines.push(rng.pick(&hot));
        }
    }
    // Cut into files of consecutive lines; some empty, some without a
    // final newline.
    let files = match size {
        Size::Small => rng.range(1, 6),
        Size::Medium => rng.range(1, 4),
        Size::Big => rng.range(1, 2),
    };
    let mut cuts: Vec<usize> = (1..files)
        .map(|_| rng.range(0, lines.len() as u64) as usize)
        .collect();
    cuts.extend([0, lines.len()]);
    cuts.sort_unstable();
    std::fs::create_dir_all(dir).unwrap();
    let mut total = 0;
    for (f, range) in cuts.windows(2).enumerate() {
        let mut text = Vec::new();
        for &id in &lines[range[0]..range[1]] {
            text.extend_from_slice(&table[id]);
            text.push(b'\n');
        }
        if rng.chance(20) {
            text.pop();
        }
        total += text.len() as u64;
        std::fs::write(dir.join(format!("in-{f}")), text).unwrap();
    }
    total
}

// ---------------------------------------------------------------------------
// Running and comparing

fn display(args: &[String]) -> String {
    let quoted: Vec<String> = args
        .iter()
        .map(|a| {
            if a.contains([' ', '\t', '\'']) {
                format!("'{a}'")
            } else {
                a.clone()
            }
        })
        .collect();
    format!("wmr {}", quoted.join(" "))
}

/// Run `wmr ARGS` (bounded); panic with its stderr unless it succeeds.
fn wmr_ok(args: &[String]) {
    let mut cmd: Command = wmr();
    cmd.args(args);
    let out = output_within(cmd, &display(args), LIMIT);
    assert!(
        out.status.success(),
        "`{}` failed ({}): {}",
        display(args),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// The job's options shared by `run`, `seq` and `deploy`.
fn job_args(case: &Case) -> (String, Option<String>, Vec<String>) {
    let (map, reduce, params) = case.job();
    let params = params
        .into_iter()
        .flat_map(|p| ["--param".to_string(), p])
        .collect();
    (path(&map), reduce.map(|r| path(&r)), params)
}

/// `wmr seq` of the case into `file`.
fn reference_into(case: &Case, input: &Path, file: &Path) -> Vec<String> {
    let (map, reduce, params) = job_args(case);
    let mut args = vec!["seq".into(), "--map".into(), map];
    if let Some(reduce) = reduce {
        args.extend(["--reduce".into(), reduce]);
    }
    args.extend(["--input".into(), path(input), "--output".into(), path(file)]);
    args.extend(params);
    wmr_ok(&args);
    args
}

fn sorted_lines(text: &[u8]) -> Vec<&[u8]> {
    let mut lines: Vec<&[u8]> = text.split(|&b| b == b'\n').collect();
    // Every line ends with `\n`: the piece after the last one is no line.
    if lines.last().is_some_and(|l| l.is_empty()) {
        lines.pop();
    }
    lines.sort_unstable();
    lines
}

fn show(line: Option<&&[u8]>) -> String {
    let Some(line) = line else {
        return "none".into();
    };
    let text = line.escape_ascii().to_string();
    match text.char_indices().nth(120) {
        Some((cut, _)) => format!("\"{}…\" ({} bytes)", &text[..cut], line.len()),
        None => format!("\"{text}\""),
    }
}

/// Compare the committed output in `out` (`_SUCCESS`, R part files) with
/// the reference file, as sorted lines; `Err` says how they differ.
fn compare(out: &Path, reducers: u32, reference: &Path) -> Result<usize, String> {
    if !out.join("_SUCCESS").is_file() {
        return Err(format!("{}: no _SUCCESS", out.display()));
    }
    let parts = part_files(out);
    if parts.len() != reducers as usize {
        return Err(format!("{} part files, expected {reducers}", parts.len()));
    }
    let got: Vec<u8> = parts
        .iter()
        .flat_map(|p| std::fs::read(p).unwrap())
        .collect();
    let expected = std::fs::read(reference).unwrap();
    let (got, expected) = (sorted_lines(&got), sorted_lines(&expected));
    if got == expected {
        return Ok(got.len());
    }
    // Merge the sorted lines: what is missing, what is extra.
    let (mut i, mut j, mut missing, mut extra) = (0, 0, Vec::new(), Vec::new());
    while i < got.len() || j < expected.len() {
        match (got.get(i), expected.get(j)) {
            (Some(g), Some(e)) if g == e => (i, j) = (i + 1, j + 1),
            (Some(g), e) if e.is_none_or(|e| g < e) => {
                extra.push(*g);
                i += 1;
            }
            (_, e) => {
                missing.push(*e.unwrap());
                j += 1;
            }
        }
    }
    let first = got.iter().zip(&expected).position(|(g, e)| g != e);
    let first = first.unwrap_or(got.len().min(expected.len()));
    Err(format!(
        "output differs from `wmr seq`: {} lines, expected {} ({} missing, {} unexpected); \
         first difference at sorted line {first}: got {}, expected {}; \
         first missing: {}; first unexpected: {}",
        got.len(),
        expected.len(),
        missing.len(),
        extra.len(),
        show(got.get(first)),
        show(expected.get(first)),
        show(missing.first()),
        show(extra.first()),
    ))
}

/// Run cases `0..count` (or `WMR_DIFF_ONLY`) of `test`; a case that fails,
/// however it fails, is reported with its seed and replay command, and the
/// test fails after every case has run.
fn run_cases(test: &str, count: usize, mut case: impl FnMut(&Settings, usize, &mut Rng)) {
    let settings = settings();
    let cases: Vec<usize> = match settings.only {
        Some(k) => vec![k],
        None => (0..count).collect(),
    };
    eprintln!(
        "{test}: seed {:#x}, cases {cases:?} (WMR_DIFF_SEED, WMR_DIFF_CASES, WMR_DIFF_ONLY)",
        settings.seed
    );
    let mut failures = Vec::new();
    for k in cases {
        // Each case has its own stream, so that it replays alone.
        let tag = test.bytes().fold(0, |h, b| mix(h ^ u64::from(b)));
        let mut rng = Rng(mix(settings.seed ^ mix(tag ^ k as u64)));
        let start = Instant::now();
        match catch_unwind(AssertUnwindSafe(|| case(&settings, k, &mut rng))) {
            Ok(()) => eprintln!("  case {k}: ok in {:.1?}", start.elapsed()),
            Err(panic) => {
                let message = panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("(no message)");
                failures.push(format!(
                    "seed {seed:#x} case {k}: {message}\n  replay: WMR_DIFF_SEED={seed:#x} \
                     WMR_DIFF_ONLY={k} cargo test --release --test differential {test} -- \
                     --nocapture",
                    seed = settings.seed
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} case(s) of {test} failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Keep `dir` when asked to (for a failing case); say where it is.
fn kept(settings: &Settings, dir: tempfile::TempDir) -> String {
    if settings.keep {
        format!("inputs kept in {}", dir.keep().display())
    } else {
        "WMR_DIFF_KEEP=1 keeps the inputs".into()
    }
}

fn describe(case: &Case, input_bytes: u64) -> String {
    format!(
        "{:?} guest, key={}, {:?} input of {} KiB, --reducers {}, --split-size {}, {} workers",
        case.guest,
        case.keys,
        case.size,
        input_bytes / KIB,
        case.reducers,
        case.split_size,
        case.workers,
    )
}

// ---------------------------------------------------------------------------
// The tests

/// I6: `wmr run` with random reducers, splits and workers commits the
/// output of `wmr seq`, byte for byte, with and without a combiner.
#[test]
fn i6_random_jobs_match_the_sequential_reference_embedded() {
    let _serial = serial();
    let count = settings().cases;
    run_cases(
        "i6_random_jobs_match_the_sequential_reference_embedded",
        count,
        |settings, k, rng| {
            let case = Case::draw(rng, k);
            let tmp = tempfile::tempdir().unwrap();
            let input = tmp.path().join("input");
            let bytes = generate(rng, case.size, &input);
            eprintln!("  case {k}: {}", describe(&case, bytes));
            let reference = tmp.path().join("seq.txt");
            let seq = reference_into(&case, &input, &reference);
            let (map, reduce, params) = job_args(&case);
            let out = tmp.path().join("out");
            let mut args = vec!["run".into(), "--map".into(), map];
            if let Some(reduce) = reduce {
                args.extend(["--reduce".into(), reduce]);
            }
            args.extend(
                [
                    "--input",
                    &path(&input),
                    "--output",
                    &path(&out),
                    "--work-dir",
                    &path(&tmp.path().join("work")),
                    "--reducers",
                    &case.reducers.to_string(),
                    "--split-size",
                    &case.split_size.to_string(),
                    "--workers",
                    &case.workers.to_string(),
                ]
                .map(String::from),
            );
            args.extend(params);
            wmr_ok(&args);
            if let Err(difference) = compare(&out, case.reducers, &reference) {
                panic!(
                    "{}: {difference}\n  `{}`\n  `{}`\n  ({})",
                    describe(&case, bytes),
                    display(&args),
                    display(&seq),
                    kept(settings, tmp)
                );
            }
        },
    );
}

/// I6 over QUIC: the same random jobs deployed to a coordinator and 1-4
/// worker processes (map outputs on the workers or in a shared store).
#[test]
fn i6_random_jobs_match_the_sequential_reference_cluster() {
    let _serial = serial();
    let cases = settings().cases;
    let count = if cases == 0 { 0 } else { (cases / 5).max(1) };
    run_cases(
        "i6_random_jobs_match_the_sequential_reference_cluster",
        count,
        |_settings, k, rng| {
            // Offset so that the default three cases are Big with no
            // combiner, Medium with one and Big with a declining one.
            let case = Case::draw(rng, k + 5);
            let mut c = Cluster::options()
                .args(if case.shared_store {
                    &["--shared-store"]
                } else {
                    &[]
                })
                .reducers(case.reducers.into())
                .client_limit(Duration::from_secs(60))
                .start();
            let input = c.root.join("input");
            let bytes = generate(rng, case.size, &input);
            eprintln!(
                "  case {k}: {}, {} slots each, shared store: {}",
                describe(&case, bytes),
                case.slots,
                case.shared_store
            );
            let reference = c.root.join("seq.txt");
            reference_into(&case, &input, &reference);
            c.add_workers(case.workers as usize, &["--slots", &case.slots.to_string()]);
            let (map, reduce, params) = job_args(&case);
            let mut extra: Vec<String> = reduce.into_iter().collect();
            extra.extend(["--split-size".into(), case.split_size.to_string()]);
            extra.extend(params);
            let out = c.root.join("out");
            let mut deploy = c.deploy(Path::new(&map), &input, &out, &strs(&extra));
            let (status, stderr) = c.deploy_exit(&mut deploy, LIMIT);
            assert!(status.success(), "deploy failed ({status}): {stderr}");
            if let Err(difference) = compare(&out, case.reducers, &reference) {
                panic!(
                    "{}, {} slots each, shared store: {}: {difference}",
                    describe(&case, bytes),
                    case.slots,
                    case.shared_store
                );
            }
        },
    );
}

/// I6, issue 10: a map emitting one pair per line over 200,000 distinct
/// lines, each present twice, with no combiner export (and with the SDK's
/// declining one), keeps every key with 1, 3 and 10 reducers. The combiner
/// used to drop every 1 MiB batch of groups after the first.
#[test]
fn i6_a_job_without_combiner_keeps_all_200000_keys() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("lines.txt");
    let mut order: Vec<u32> = (0..200_000).flat_map(|i| [i, i]).collect();
    let mut rng = Rng(10);
    for i in (1..order.len()).rev() {
        order.swap(i, (rng.next() % (i as u64 + 1)) as usize);
    }
    let text: String = order.iter().map(|i| format!("line-{i:06}\n")).collect();
    std::fs::write(&input, text).unwrap();
    let mut failures = Vec::new();
    for guest in [Guest::MapOnly, Guest::Decline] {
        let case = Case {
            guest,
            size: Size::Big,
            keys: "line",
            reducers: 1,
            split_size: 8 * MIB,
            workers: 2,
            slots: 1,
            shared_store: false,
        };
        let reference = tmp.path().join(format!("seq-{guest:?}.txt"));
        reference_into(&case, &input, &reference);
        let (map, reduce, params) = job_args(&case);
        for reducers in [1, 3, 10] {
            let out = tmp.path().join(format!("out-{guest:?}-r{reducers}"));
            let mut args = vec!["run".into(), "--map".into(), map.clone()];
            if let Some(reduce) = &reduce {
                args.extend(["--reduce".into(), reduce.clone()]);
            }
            args.extend([
                "--input".into(),
                path(&input),
                "--output".into(),
                path(&out),
            ]);
            args.extend(["--reducers".into(), reducers.to_string()]);
            args.extend(params.iter().cloned());
            wmr_ok(&args);
            match compare(&out, reducers, &reference) {
                Ok(200_000) => {}
                Ok(n) => failures.push(format!("{guest:?} R={reducers}: {n} lines, as seq")),
                Err(e) => failures.push(format!("{guest:?} R={reducers}: {e}")),
            }
        }
    }
    assert!(
        failures.is_empty(),
        "records lost without a combiner:\n{}",
        failures.join("\n")
    );
}

//! Total order (issue 12, item 5): `--partitioner range` samples the map
//! keys of the input (TeraSort's sampler, `host/src/sampler.rs`) and cuts
//! them into key ranges, so that `part-r-00000 < part-r-00001 < …` in byte
//! order. The `sort` guest over TeraGen-like rows (`support/terasort.rs`)
//! through the real `wmr` binary, embedded and over a QUIC cluster; each
//! output is checked by the TeraValidate-like validator: every part file
//! sorted, each part's last key at most the next part's first key, and the
//! rows' count and order-independent checksum equal to the input's.
//!
//! The inputs are 8 MB (80,000 rows of 100 bytes) cut into 1 MiB splits:
//! past the guest SDK's emit batches, the host's group batches and, with
//! `--sort-buffer 256KiB`, the map side's sort buffer (spills).

mod support;

#[path = "support/terasort.rs"]
mod terasort;

use std::path::{Path, PathBuf};
use std::time::Duration;
use support::cluster::Cluster;
use support::*;
use terasort::{Checksum, generate, summarize, validate};
use wmr::model::Partitioner;

/// Rows of each generated input (8 MB).
const ROWS: u64 = 80_000;
const REDUCERS: usize = 4;

/// Write `rows` generated rows into `dir`, in two files (5/8 and 3/8 of
/// the rows); the input's checksum and its lines sorted.
fn write_input(dir: &Path, seed: u64, skew: bool) -> (Checksum, Vec<u8>) {
    std::fs::create_dir_all(dir).unwrap();
    let data = generate(seed, ROWS, skew);
    let cut = (ROWS as usize * 5 / 8) * terasort::ROW_BYTES;
    std::fs::write(dir.join("a.txt"), &data[..cut]).unwrap();
    std::fs::write(dir.join("b.txt"), &data[cut..]).unwrap();
    let mut lines: Vec<&[u8]> = data.split_inclusive(|&b| b == b'\n').collect();
    lines.sort_unstable();
    (summarize(&data), lines.concat())
}

/// `wmr run --map sort.wasm` over `input` into `out` with `extra` flags.
fn run_sort(input: &Path, out: &Path, extra: &[&str]) {
    let sort = guest("sort");
    let mut args = vec![
        "run",
        "--map",
        sort.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--split-size",
        "1MiB",
        "--json",
    ];
    args.extend_from_slice(extra);
    run_ok(&args);
}

/// The validator's summary of a committed output directory of `REDUCERS`
/// part files, or the first place its order breaks.
fn validate_output(out: &Path) -> Result<terasort::Summary, String> {
    assert!(
        out.join("_SUCCESS").is_file(),
        "{}: no _SUCCESS",
        out.display()
    );
    let parts: Vec<PathBuf> = part_files(out);
    assert_eq!(parts.len(), REDUCERS, "one part file per reducer");
    validate(&parts)
}

/// Each reducer holds between half and one and a half times its even share
/// of the rows. The sample is about 10,000 keys (ten windows of a tenth of
/// a 1 MiB split), so a sampled quantile is off by about
/// sqrt(p(1-p)/n) ≈ 0.5 % of the rows: 12.5 % off is far outside chance.
fn assert_spread(rows_per_file: &[u64], what: &str) {
    let even = ROWS as f64 / REDUCERS as f64;
    for (p, &rows) in rows_per_file.iter().enumerate() {
        let share = rows as f64 / even;
        assert!(
            (0.5..=1.5).contains(&share),
            "{what}: reducer {p} holds {rows} rows, {share:.2} of its even share ({rows_per_file:?})"
        );
    }
}

/// Invariant (total order): with `--partitioner range`, the part files
/// concatenated are the input's rows sorted by key, byte for byte; the
/// validator passes; no row is lost or duplicated (count and checksum);
/// every reducer gets a share. The same job hash-partitioned fails the
/// validator, so the validator does see disorder.
#[test]
fn range_partitioned_parts_concatenate_to_the_sorted_input() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    let (expected, sorted) = write_input(&input, 1, false);
    let out = tmp.path().join("out");
    run_sort(&input, &out, &["--partitioner", "range", "--reducers", "4"]);
    let summary = validate_output(&out).unwrap_or_else(|e| panic!("not in total order: {e}"));
    assert_eq!(summary.checksum, expected, "rows and checksum");
    assert_eq!(summary.checksum.rows, ROWS);
    assert_spread(&summary.rows_per_file, "uniform keys");
    let concatenated: Vec<u8> = part_files(&out)
        .iter()
        .flat_map(|p| std::fs::read(p).unwrap())
        .collect();
    assert!(
        concatenated == sorted,
        "the part files concatenated are not the sorted input"
    );

    let hashed = tmp.path().join("hashed");
    run_sort(
        &input,
        &hashed,
        &["--partitioner", "hash", "--reducers", "4"],
    );
    let error = validate_output(&hashed).expect_err("hash partitions are not in total order");
    assert!(error.contains("is smaller than key"), "{error}");
}

/// Invariant: the boundaries follow the keys' distribution, not the key
/// space. Half of the rows crowd into three narrow key prefixes, so cutting
/// the key space (the first key byte) into four equal ranges would give one
/// reducer more than half of the rows; the sampled boundaries give every
/// reducer between half and one and a half times its even share, and the
/// output is still in total order with every row once. With a 256 KiB sort
/// buffer the map attempts spill several sorted runs each.
#[test]
fn a_skewed_input_still_spreads_over_reducers() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    let (expected, _) = write_input(&input, 2, true);
    let naive = naive_largest_share(&input);
    assert!(naive > 0.5, "the input is not skewed: {naive:.2}");
    let out = tmp.path().join("out");
    run_sort(
        &input,
        &out,
        &[
            "--partitioner",
            "range",
            "--reducers",
            "4",
            "--sort-buffer",
            "256KiB",
        ],
    );
    let summary = validate_output(&out).unwrap_or_else(|e| panic!("not in total order: {e}"));
    assert_eq!(summary.checksum, expected, "rows and checksum");
    assert_spread(&summary.rows_per_file, "skewed keys");
}

/// The largest share of rows in one of four equal ranges of the first key
/// byte: what a partitioner that ignores the data would give a reducer.
fn naive_largest_share(input: &Path) -> f64 {
    let mut counts = [0u64; REDUCERS];
    let (low, high) = (b'!' as usize, b'~' as usize + 1);
    for file in ["a.txt", "b.txt"] {
        for line in std::fs::read(input.join(file))
            .unwrap()
            .split(|&b| b == b'\n')
        {
            if let Some(&first) = line.first() {
                counts[(first as usize - low) * REDUCERS / (high - low)] += 1;
            }
        }
    }
    *counts.iter().max().unwrap() as f64 / ROWS as f64
}

/// Invariant: a range job that cannot be sampled is refused before it
/// starts, with one line naming the sample window and the guest's failure,
/// exit status 1, and nothing created (no output, no work directory).
#[test]
fn a_map_that_traps_while_sampling_refuses_the_job_in_one_line() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in.txt");
    std::fs::write(&input, "a line\nPOISON here\nanother line\n").unwrap();
    let (out, work) = (tmp.path().join("out"), tmp.path().join("work"));
    let hostile = guest("hostile");
    let result = run(&[
        "run",
        "--map",
        &path(&hostile),
        "--input",
        &path(&input),
        "--output",
        &path(&out),
        "--work-dir",
        &path(&work),
        "--param",
        "mode=trap",
        "--param",
        "trap-on=POISON",
        "--partitioner",
        "range",
    ]);
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert_eq!(result.status.code(), Some(1), "{stderr}");
    assert_eq!(without_panic_location(&stderr), sampling_trap_error(&input));
    assert!(!out.exists(), "the output was created");
    assert!(!work.exists(), "the work directory was created");
}

/// What `wmr` says when the hostile guest traps on a sample window of
/// `input` (`a line\nPOISON here\n…`: the windows are single lines of
/// this small input, and the one at offset 7 holds the poisoned record).
fn sampling_trap_error(input: &Path) -> String {
    format!(
        "error: sampling keys for --partitioner range: map of {} at offset 7: guest trapped: wasm trap: wasm `unreachable` instruction executed; thread '<unnamed>' (1) panicked at hostile/src/lib.rs:LINE:COLUMN: poisoned record: POISON here\n",
        input.display()
    )
}

/// `text` with the line and column of the guest's panic (`lib.rs:77:21`,
/// which moves when the hostile guest is edited) replaced by `LINE:COLUMN`.
fn without_panic_location(text: &str) -> String {
    const AT: &str = "panicked at hostile/src/lib.rs:";
    let Some(start) = text.find(AT).map(|i| i + AT.len()) else {
        return text.to_string();
    };
    let Some(len) = text[start..].find(": ") else {
        return text.to_string();
    };
    let location = &text[start..start + len];
    assert!(
        location.split(':').count() == 2 && location.split(':').all(|n| n.parse::<u32>().is_ok()),
        "{text}"
    );
    format!("{}LINE:COLUMN{}", &text[..start], &text[start + len..])
}

/// Invariant: `--partitioner` takes `hash` or `range` only; anything else
/// is clap's usage error (status 2) naming the flag and the values.
#[test]
fn an_unknown_partitioner_is_a_usage_error() {
    let out = run(&[
        "run",
        "--map",
        "x.wasm",
        "--input",
        "x",
        "--output",
        "y",
        "--partitioner",
        "sorted",
    ]);
    assert_eq!(out.status.code(), Some(2), "clap's usage error");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.lines().next(),
        Some("error: invalid value 'sorted' for '--partitioner <PARTITIONER>'"),
        "{stderr}"
    );
    assert!(
        stderr.contains("[possible values: hash, range]"),
        "{stderr}"
    );
}

/// Invariant: the validator accepts parts in key order and names the
/// first place the order breaks otherwise; its checksum does not depend on
/// the rows' order; the skewed generator crowds half of the rows into the
/// hot prefixes.
#[test]
fn the_validator_sees_disorder_and_its_checksum_ignores_order() {
    let tmp = tempfile::tempdir().unwrap();
    let data = generate(3, 1000, false);
    assert_eq!(data.len(), 1000 * terasort::ROW_BYTES);
    let mut lines: Vec<&[u8]> = data.split_inclusive(|&b| b == b'\n').collect();
    lines.sort_unstable();
    let (low, high) = (tmp.path().join("low"), tmp.path().join("high"));
    std::fs::write(&low, lines[..400].concat()).unwrap();
    std::fs::write(&high, lines[400..].concat()).unwrap();
    let summary = validate(&[low.clone(), high.clone()]).unwrap();
    assert_eq!(summary.checksum, summarize(&data));
    assert_eq!(summary.rows_per_file, vec![400, 600]);
    let error = validate(&[high.clone(), low.clone()]).unwrap_err();
    assert!(
        error.starts_with(&format!("{}:1: key ", low.display())),
        "{error}"
    );
    let swapped = [lines[1], lines[0]].concat();
    std::fs::write(&low, &swapped).unwrap();
    assert!(validate(std::slice::from_ref(&low)).is_err());
    assert_eq!(summarize(&swapped), summarize(&lines[..2].concat()));

    let skewed = generate(3, 10_000, true);
    let hot = skewed
        .split(|&b| b == b'\n')
        .filter(|l| terasort::HOT_PREFIXES.iter().any(|p| l.starts_with(p)))
        .count();
    assert!(
        (4_500..=5_600).contains(&hot),
        "{hot} of 10000 rows are hot"
    );
}

/// Invariant: the range partitioner works the same through a QUIC cluster
/// (the coordinator samples at submit; map outputs stay on the two workers
/// and reducers fetch their ranges): total order, every row once, every
/// reducer a share. A range job whose map traps on the sample is refused
/// by the coordinator with the same one line, and creates no output and no
/// record. The boundaries are in the job's durable record.
#[test]
fn range_partitioning_through_a_quic_cluster() {
    let _serial = serial();
    let mut cluster = Cluster::options()
        .client_limit(Duration::from_secs(30))
        .bound(Duration::from_secs(180))
        .start();
    cluster.add_workers(2, &["--slots", "2"]);
    let input = cluster.root.join("in");
    let (expected, _) = write_input(&input, 4, true);
    let out = cluster.root.join("out");
    let mut deploy = cluster.deploy(
        &guest("sort"),
        &input,
        &out,
        &[
            "--partitioner",
            "range",
            "--reducers",
            "4",
            "--split-size",
            "1MiB",
        ],
    );
    cluster.deploy_finishes_ok(&mut deploy, Duration::from_secs(120));
    let summary = validate_output(&out).unwrap_or_else(|e| panic!("not in total order: {e}"));
    assert_eq!(summary.checksum, expected, "rows and checksum");
    assert_spread(&summary.rows_per_file, "a cluster, skewed keys");

    let poisoned = cluster.root.join("poisoned.txt");
    std::fs::write(&poisoned, "a line\nPOISON here\nanother line\n").unwrap();
    let refused = cluster.root.join("refused");
    let mut deploy = cluster.deploy(
        &guest("hostile"),
        &poisoned,
        &refused,
        &[
            "--partitioner",
            "range",
            "--param",
            "mode=trap",
            "--param",
            "trap-on=POISON",
        ],
    );
    let (status, stderr) = cluster.deploy_exit(&mut deploy, Duration::from_secs(60));
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert_eq!(
        without_panic_location(&stderr),
        sampling_trap_error(&poisoned)
    );
    assert!(!refused.exists(), "the refused job created its output");

    // The boundaries are durable: the job's stored record holds the three
    // keys its part files are cut at (a restored or resumed job reads them
    // from there and never samples again), and the refused job left no
    // record at all.
    cluster.kill_coordinator();
    let store = wmr::store::StateStore::open(&cluster.state).unwrap();
    let jobs = store.jobs().unwrap();
    assert_eq!(jobs.len(), 1, "only the completed job has a record");
    let Partitioner::Range { boundaries } = &jobs[0].request.shuffle_settings.partitioner else {
        panic!("the stored partitioner is not a range partitioner");
    };
    assert_eq!(boundaries.len(), REDUCERS - 1, "{boundaries:?}");
    let parts = part_files(&out);
    for (i, boundary) in boundaries.iter().enumerate() {
        let (below, above) = (edge_key(&parts[i], false), edge_key(&parts[i + 1], true));
        assert!(
            below.as_slice() < boundary.as_slice() && boundary.as_slice() <= above.as_slice(),
            "boundary {i} {boundary:?} does not lie between {below:?} and {above:?}"
        );
    }
}

/// The first (or last) key of a part file.
fn edge_key(part: &Path, first: bool) -> Vec<u8> {
    let text = std::fs::read(part).unwrap();
    let mut lines = text.split(|&b| b == b'\n').filter(|l| !l.is_empty());
    let line = if first {
        lines.next()
    } else {
        lines.next_back()
    };
    terasort::key_of(line.expect("a part file with rows")).to_vec()
}

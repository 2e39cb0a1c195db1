//! End-to-end tests of `wmr run` (the embedded default): the real binary,
//! real guests, output compared with the sequential reference.

mod support;

use std::path::Path;
use support::*;

/// Run a job over the bundled books and a generated corpus with small
/// splits (so that every book is several map tasks).
fn run_job(
    guest: &Path,
    inputs: &[&Path],
    out: &Path,
    reducers: u32,
    workers: u32,
    extra: &[&str],
) {
    let (reducers, workers) = (reducers.to_string(), workers.to_string());
    let mut args = vec!["run", "--map"];
    let guest = path(guest);
    args.push(&guest);
    let inputs: Vec<String> = inputs.iter().map(|p| path(p)).collect();
    for input in &inputs {
        args.extend(["--input", input]);
    }
    let out = path(out);
    args.extend([
        "--output",
        &out,
        "--reducers",
        &reducers,
        "--workers",
        &workers,
    ]);
    args.extend(["--split-size", "256KiB"]);
    args.extend(extra);
    run_ok(&args);
}

fn assert_matches_reference_for_every_r_and_n(guest_name: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let generated = tmp.path().join("generated");
    generated_corpus(&generated, 7);
    let guest = guest(guest_name);
    let inputs = [books(), generated];
    let inputs: Vec<&Path> = inputs.iter().map(|p| p.as_path()).collect();
    let expected = reference(&guest, &inputs, &[]);
    assert!(expected.len() > 1000, "the reference is not trivial");
    for reducers in [1, 3, 10] {
        for workers in [1, 4] {
            let out = tmp.path().join(format!("out-r{reducers}-n{workers}"));
            run_job(&guest, &inputs, &out, reducers, workers, &[]);
            assert_eq!(part_files(&out).len(), reducers as usize);
            assert!(
                sorted_output(&out) == expected,
                "{guest_name} R={reducers} N={workers}: output differs from the sequential reference"
            );
        }
    }
}

/// Invariant: the distributed result equals the sequential one, for any
/// number of reducers and workers.
#[test]
fn wordcount_equals_sequential_reference_for_r_1_3_10_and_n_1_4() {
    assert_matches_reference_for_every_r_and_n("wordcount");
}

#[test]
fn indexer_equals_sequential_reference_for_r_1_3_10_and_n_1_4() {
    assert_matches_reference_for_every_r_and_n("indexer");
}

#[test]
fn wordcount_lines_are_word_space_count() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in.txt");
    std::fs::write(&input, "b a b\nc, b; Émile émile\n").unwrap();
    let out = tmp.path().join("out");
    run_job(&guest("wordcount"), &[&input], &out, 2, 1, &[]);
    assert_eq!(
        sorted_output(&out),
        ["a 1", "b 3", "c 1", "Émile 1", "émile 1"].map(String::from)
    );
}

#[test]
fn grep_pattern_parameter_matches_reference() {
    let tmp = tempfile::tempdir().unwrap();
    let guest = guest("grep");
    let expected = reference(&guest, &[&books()], &["pattern=Holmes"]);
    assert!(expected.len() > 100);
    let out = tmp.path().join("out");
    run_job(
        &guest,
        &[&books()],
        &out,
        3,
        2,
        &["--param", "pattern=Holmes"],
    );
    assert_eq!(sorted_output(&out), expected);
}

/// Invariant: output is a function of the input, not of the run.
#[test]
fn same_job_twice_gives_byte_identical_part_files() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    run_job(&guest("indexer"), &[&books()], &a, 5, 4, &[]);
    run_job(&guest("indexer"), &[&books()], &b, 5, 2, &[]);
    let (pa, pb) = (part_files(&a), part_files(&b));
    assert_eq!(pa.len(), 5);
    for (x, y) in pa.iter().zip(&pb) {
        assert_eq!(x.file_name(), y.file_name());
        assert!(
            std::fs::read(x).unwrap() == std::fs::read(y).unwrap(),
            "{} differs",
            x.display()
        );
    }
}

fn map_tasks(summary: &serde_json::Value) -> usize {
    let log = summary["attempt_log"].as_array().unwrap();
    let mut maps: Vec<&serde_json::Value> = log
        .iter()
        .map(|r| &r["task"])
        .filter(|t| t.get("Map").is_some())
        .collect();
    maps.sort_by_key(|t| t["Map"].as_u64());
    maps.dedup();
    maps.len()
}

/// Without failures every task runs exactly once (no speculative or
/// duplicate attempt), as the MIT lab's job-count test demands.
#[test]
fn without_failures_each_task_has_exactly_one_attempt() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let args = [
        "run",
        "--map",
        &path(&guest("wordcount")),
        "--input",
        &path(&books()),
        "--output",
        &path(&out),
        "--reducers",
        "3",
        "--workers",
        "4",
        "--split-size",
        "256KiB",
        "--json",
    ];
    let summary = summary_json(&run_ok(&args));
    let maps = map_tasks(&summary);
    assert!(maps > 8, "several splits per book");
    assert_eq!(summary["tasks"].as_u64(), Some(maps as u64 + 3));
    assert_eq!(summary["attempts"].as_u64(), Some(maps as u64 + 3));
    assert_eq!(summary["failed_attempts"].as_u64(), Some(0));
    let bytes: u64 = std::fs::read_dir(books())
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert_eq!(
        summary["bytes_in"].as_u64(),
        Some(bytes),
        "every input byte is read once"
    );
}

/// Invariant: a failed attempt is retried (up to the limit) with a higher
/// epoch, and the job's output still equals the reference.
#[test]
fn failed_attempts_are_retried_and_output_equals_reference() {
    let tmp = tempfile::tempdir().unwrap();
    let guest = guest("hostile");
    let expected = reference(&guest, &[&books()], &[]);
    let out = tmp.path().join("out");
    let args = [
        "run",
        "--map",
        &path(&guest),
        "--input",
        &path(&books()),
        "--output",
        &path(&out),
        "--reducers",
        "3",
        "--workers",
        "2",
        "--param",
        "mode=flaky",
        "--param",
        "fail-attempts=2",
        "--max-attempts",
        "3",
        "--json",
    ];
    let summary = summary_json(&run_ok(&args));
    let maps = map_tasks(&summary) as u64;
    assert_eq!(maps, 8, "one split per book at the default split size");
    // Each map task failed twice; reduce tasks never fail (the guest checks
    // the attempt number in map only).
    assert_eq!(summary["failed_attempts"].as_u64(), Some(2 * maps));
    assert_eq!(summary["attempts"].as_u64(), Some(3 * maps + 3));
    assert_eq!(sorted_output(&out), expected);
}

/// A task that fails every attempt fails the job, with the task, the count
/// and the guest's message, and publishes nothing. One book, one map task:
/// with several failing tasks, which one runs out of attempts first
/// depends on how their backoffs interleave.
#[test]
fn task_failing_every_attempt_fails_job_and_publishes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let book = std::fs::read_dir(books())
        .unwrap()
        .map(|e| e.unwrap().path())
        .min()
        .unwrap();
    let stderr = run_err(&[
        "run",
        "--map",
        &path(&guest("hostile")),
        "--input",
        &path(&book),
        "--output",
        &path(&out),
        "--workers",
        "1",
        "--param",
        "mode=flaky",
        "--param",
        "fail-attempts=9",
        "--max-attempts",
        "3",
    ]);
    assert_eq!(
        stderr,
        "error: job failed: task m-00000 failed 3 times on w1; last: w1 a3: guest returned an error: flaky: attempt 3 fails on purpose\n"
    );
    assert!(!out.exists(), "a failed job leaves no output directory");
}

/// Invariant (I2, quota): a job's committed output never exceeds its output
/// limit. At exactly the size of the output the job completes; one byte less
/// and the reduce attempt is discarded before it publishes, the job fails
/// naming the limit, and nothing is written.
#[test]
fn job_output_limit_holds_at_the_exact_byte() {
    let tmp = tempfile::tempdir().unwrap();
    let wordcount = guest("wordcount");
    let expected = books_reference("wordcount");
    let size: usize = expected.iter().map(|line| line.len() + 1).sum();
    let job = |out: &Path, limit: usize| {
        let (wordcount, input, out, limit) = (
            path(&wordcount),
            path(&books()),
            path(out),
            limit.to_string(),
        );
        let args = [
            "run",
            "--map",
            &wordcount,
            "--input",
            &input,
            "--output",
            &out,
            "--reducers",
            "1",
            "--workers",
            "1",
            "--job-output-limit",
            &limit,
        ];
        run(&args)
    };
    let fits = tmp.path().join("fits");
    let done = job(&fits, size);
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    assert_eq!(sorted_output(&fits), expected);

    let over = tmp.path().join("over");
    let failed = job(&over, size - 1);
    assert!(!failed.status.success());
    assert_eq!(
        String::from_utf8_lossy(&failed.stderr),
        format!(
            "error: job failed: task r-00000 a1 on w1: job output limit exceeded: {size} bytes with this attempt (limit {} bytes per job)\n",
            size - 1
        )
    );
    assert!(
        !over.exists(),
        "a job over its output limit publishes nothing"
    );
}

/// Invariant: an attempt that fails midway leaves no partial file: the
/// reduce below writes some output, then traps.
#[test]
fn reduce_attempt_failing_midway_leaves_no_partial_file() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let stderr = run_err(&[
        "run",
        "--map",
        &path(&guest("hostile")),
        "--input",
        &path(&books()),
        "--output",
        &path(&out),
        "--reducers",
        "1",
        "--workers",
        "2",
        "--max-attempts",
        "2",
        "--param",
        "reduce-trap-on=Holmes",
    ]);
    assert!(
        stderr.starts_with("error: job failed: task r-00000 failed 2 times on w"),
        "{stderr}"
    );
    assert!(stderr.contains("poisoned key in reduce"), "{stderr}");
    assert!(
        !out.exists(),
        "nothing published: {:?}",
        std::fs::read_dir(&out).map(|d| d.count())
    );
}

#[test]
fn bad_components_and_missing_input_give_one_line_errors_and_no_output() {
    use rand::{RngCore, SeedableRng};
    let tmp = tempfile::tempdir().unwrap();
    let core = tmp.path().join("core.wasm");
    std::fs::write(&core, b"\0asm\x01\0\0\0").unwrap();
    let random = tmp.path().join("random.wasm");
    let mut bytes = vec![0u8; 4096];
    rand::rngs::StdRng::seed_from_u64(1).fill_bytes(&mut bytes);
    bytes[0] = b'R';
    std::fs::write(&random, bytes).unwrap();
    let wrong = guest("wrong-world");
    let out = tmp.path().join("out");
    let cases = [
        (
            wrong.clone(),
            books(),
            format!(
                "{}: the component exports `wmr:mapreduce/mapper@0.1.0` but this wmr speaks wmr:mapreduce@0.2.0: rebuild it against wit/ of this version",
                wrong.display()
            ),
        ),
        (
            core.clone(),
            books(),
            format!(
                "{}: this is a core Wasm module, not a component: build with --target wasm32-wasip2 or wrap it with `wasm-tools component new`",
                core.display()
            ),
        ),
        (
            random.clone(),
            books(),
            format!(
                "{}: not a WebAssembly file (no \\0asm header)",
                random.display()
            ),
        ),
        (
            guest("wordcount"),
            tmp.path().join("missing"),
            format!(
                "input {}: no such file or directory",
                tmp.path().join("missing").display()
            ),
        ),
    ];
    for (module, input, message) in cases {
        let stderr = run_err(&[
            "run",
            "--map",
            &path(&module),
            "--input",
            &path(&input),
            "--output",
            &path(&out),
        ]);
        assert_eq!(stderr, format!("error: {message}\n"));
        assert!(!out.exists(), "{message}: no output written");
        let validate = run(&["validate", &path(&module)]);
        if module != guest("wordcount") {
            assert_eq!(
                String::from_utf8_lossy(&validate.stderr),
                format!("error: {message}\n")
            );
        }
    }
    // A 0.1.0 reducer (pushed `list<group>` batches) as the `--reduce`.
    let stderr = run_err(&[
        "run",
        "--map",
        &path(&guest("wordcount")),
        "--reduce",
        &path(&wrong),
        "--input",
        &path(&books()),
        "--output",
        &path(&out),
    ]);
    assert_eq!(
        stderr,
        format!(
            "error: {}: the component exports `wmr:mapreduce/reducer@0.1.0` but this wmr speaks wmr:mapreduce@0.2.0: rebuild it against wit/ of this version\n",
            wrong.display()
        )
    );
    assert!(!out.exists(), "old reducer: no output written");
}

#[test]
fn validate_lists_the_roles_a_component_can_play() {
    let out = run_ok(&["validate", &path(&guest("wordcount"))]);
    let expected = format!(
        "ok: {} fits wmr:mapreduce@0.2.0 (map, combine, reduce)\n",
        guest("wordcount").display()
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), expected);
}

#[test]
fn output_directory_holding_output_is_refused_untouched() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    run_job(&guest("wordcount"), &[&books()], &out, 2, 2, &[]);
    let before = sorted_output(&out);
    let stderr = run_err(&[
        "run",
        "--map",
        &path(&guest("wordcount")),
        "--input",
        &path(&books()),
        "--output",
        &path(&out),
    ]);
    assert_eq!(
        stderr,
        format!(
            "error: output {} already holds _SUCCESS: choose an empty or new directory\n",
            out.display()
        )
    );
    assert_eq!(sorted_output(&out), before);
}

/// Invariant: a killed job publishes nothing, and its leftovers do not
/// pollute the next job into the same output directory.
#[test]
fn killed_run_leaves_no_part_file_and_rerun_equals_reference() {
    let tmp = tempfile::tempdir().unwrap();
    let (out, work) = (tmp.path().join("out"), tmp.path().join("work"));
    let guest = guest("hostile");
    let mut child = wmr()
        .args([
            "run",
            "--map",
            &path(&guest),
            "--input",
            &path(&books()),
            "--output",
            &path(&out),
            "--work-dir",
            &path(&work),
            "--workers",
            "2",
            "--split-size",
            "64KiB",
            "--reducers",
            "4",
            "--param",
            "mode=sleep",
            "--param",
            "ms=100",
            "--grant",
            "clock",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait (bounded) until some map task has committed, then SIGKILL.
    let committed_map = || committed_map_tasks(&work.join("wmr")) > 0;
    let mut polls = 0;
    while !committed_map() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the job ended before it could be killed"
        );
        polls += 1;
        assert!(polls < 6000, "no map task committed within 60 s");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        part_files(&out).is_empty(),
        "a killed job published part files"
    );
    assert!(!out.join("_SUCCESS").exists());

    run_job(&guest, &[&books()], &out, 4, 2, &[]);
    assert_eq!(sorted_output(&out), reference(&guest, &[&books()], &[]));
    assert!(!out.join("_temporary").exists(), "leftovers are cleaned");
}

/// Committed map tasks of any job under a work root: `job-*/map/m-*`.
fn committed_map_tasks(work_root: &Path) -> usize {
    let Ok(jobs) = std::fs::read_dir(work_root) else {
        return 0;
    };
    let mut n = 0;
    for job in jobs.flatten() {
        if let Ok(entries) = std::fs::read_dir(job.path().join("map")) {
            n += entries
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("m-"))
                .count();
        }
    }
    n
}

/// 100,000 lines, 3 of which make the guest trap.
fn poisoned_corpus(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf, Vec<u64>) {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let words = ["alpha", "beta", "épée", "Straße", "naïve", "map", "reduce"];
    let (mut all, mut clean, mut offsets) = (String::new(), String::new(), Vec::new());
    for i in 0..100_000 {
        let n = rng.random_range(1..8);
        let mut line: Vec<&str> = (0..n)
            .map(|_| words[rng.random_range(0..words.len())])
            .collect();
        // Clean lines carry a word of their own (letters: the guest's
        // tokenizer splits at digits): ~100,000 distinct keys, past a small
        // sort buffer.
        let own: String = std::iter::successors(Some(i + 1), |n| Some(n / 26))
            .take_while(|&n| n > 0)
            .map(|n| char::from(b'a' + (n % 26) as u8))
            .collect();
        if [7, 50_123, 99_998].contains(&i) {
            line.push("POISON");
            offsets.push(all.len() as u64);
        } else {
            line.push(&own);
            clean.push_str(&line.join(" "));
            clean.push('\n');
        }
        all.push_str(&line.join(" "));
        all.push('\n');
    }
    let (input, reference_input) = (dir.join("in.txt"), dir.join("clean").join("in.txt"));
    std::fs::create_dir_all(reference_input.parent().unwrap()).unwrap();
    std::fs::write(&input, all).unwrap();
    std::fs::write(&reference_input, clean).unwrap();
    (input, reference_input, offsets)
}

/// Skip mode: each record that makes the guest trap is isolated and
/// skipped; the job completes with exactly those records as dead letters.
/// The same with a 64 KiB sort buffer, so that the bisection's runs spill
/// (each run emits into its own output, kept or dropped whole).
#[test]
fn records_that_trap_become_dead_letters_and_the_rest_completes() {
    let tmp = tempfile::tempdir().unwrap();
    let (input, reference_input, offsets) = poisoned_corpus(tmp.path());
    let guest = guest("hostile");
    let expected = reference(&guest, &[&reference_input], &[]);
    for sort_buffer in ["64MiB", "64KiB"] {
        let out = tmp.path().join(format!("out-{sort_buffer}"));
        let run = run_ok(&[
            "run",
            "--map",
            &path(&guest),
            "--input",
            &path(&input),
            "--output",
            &path(&out),
            "--param",
            "mode=trap",
            "--param",
            "trap-on=POISON",
            "--split-size",
            "512KiB",
            "--reducers",
            "3",
            "--max-dead-letters",
            "3",
            "--sort-buffer",
            sort_buffer,
            "--json",
        ]);
        let spills = summary_json(&run)["counters"]["wmr.map.spills"]
            .as_i64()
            .unwrap_or(0);
        assert_eq!(spills > 0, sort_buffer == "64KiB", "{spills} spills");
        assert_eq!(sorted_output(&out), expected, "--sort-buffer {sort_buffer}");
        let dead: Vec<serde_json::Value> = std::fs::read_to_string(out.join("_dead_letters.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let found: Vec<u64> = dead.iter().map(|d| d["offset"].as_u64().unwrap()).collect();
        assert_eq!(found, offsets);
        for d in &dead {
            assert_eq!(d["file"], "in.txt");
            assert!(d["record"].as_str().unwrap().ends_with(" POISON"));
            let message = d["message"].as_str().unwrap();
            assert!(message.contains("poisoned record: "), "{message}");
        }
    }
}

#[test]
fn more_trapping_records_than_allowed_fail_the_job() {
    let tmp = tempfile::tempdir().unwrap();
    let (input, _, _) = poisoned_corpus(tmp.path());
    let out = tmp.path().join("out");
    let stderr = run_err(&[
        "run",
        "--map",
        &path(&guest("hostile")),
        "--input",
        &path(&input),
        "--output",
        &path(&out),
        "--param",
        "mode=trap",
        "--param",
        "trap-on=POISON",
        "--workers",
        "1",
        "--max-attempts",
        "1",
        "--max-dead-letters",
        "0",
    ]);
    assert!(
        stderr.starts_with(
            "error: job failed: task m-00000 failed 1 times on w1; last: w1 a1: guest trapped: "
        ),
        "{stderr}"
    );
    assert!(!out.exists());
    let stderr = run_err(&[
        "run",
        "--map",
        &path(&guest("hostile")),
        "--input",
        &path(&input),
        "--output",
        &path(&out),
        "--param",
        "mode=trap",
        "--param",
        "trap-on=POISON",
        "--split-size",
        "512KiB",
        "--max-dead-letters",
        "2",
    ]);
    assert!(stderr.starts_with("error: job failed: 3 records made the guest trap, more than --max-dead-letters 2; first: in.txt:"), "{stderr}");
    assert!(!out.exists());
}

/// Under a virtual memory limit too small for the instance pool (`ulimit
/// -v` of 16 GB; the pool reserves ~4 GiB per memory slot up front), `wmr
/// run` says so, allocates each attempt's instance on its own, and its
/// output equals the reference.
#[test]
fn a_virtual_memory_limit_too_small_for_the_pool_still_runs_jobs() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let wordcount = guest("wordcount");
    let (guest_path, books_path, out_path) = (path(&wordcount), path(&books()), path(&out));
    let run = std::process::Command::new("sh")
        .args(["-c", "ulimit -v 16000000 && exec \"$0\" \"$@\""])
        .arg(env!("CARGO_BIN_EXE_wmr"))
        .args(["run", "--map", &guest_path, "--input", &books_path])
        .args(["--output", &out_path, "--workers", "2", "--reducers", "3"])
        .env("WMR_LOG", "warn")
        .env("XDG_CACHE_HOME", test_cache_home())
        .output()
        .expect("running wmr under ulimit");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    assert!(
        stderr.contains(
            "no instance pool (failed to create memory pool mapping); allocating each \
             attempt's instance on its own (slower stores)"
        ),
        "{stderr}"
    );
    assert_eq!(sorted_output(&out), reference(&wordcount, &[&books()], &[]));
}

/// The lines of the committed part files as bytes, sorted; every part file
/// ends with a newline (or is empty).
fn part_lines(out: &Path) -> Vec<Vec<u8>> {
    assert!(
        out.join("_SUCCESS").is_file(),
        "{}: no _SUCCESS",
        out.display()
    );
    let mut lines = Vec::new();
    for file in part_files(out) {
        let bytes = std::fs::read(&file).unwrap();
        let Some(body) = bytes.strip_suffix(b"\n") else {
            assert!(bytes.is_empty(), "{}: no final newline", file.display());
            continue;
        };
        lines.extend(body.split(|&b| b == b'\n').map(<[u8]>::to_vec));
    }
    lines.sort();
    lines
}

/// The records of `--output-format jsonl` output, sorted: every line is one
/// JSON object holding `key` or `key_base64`, and `value` or `value_base64`.
fn jsonl_records(bytes: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    use base64::Engine as _;
    let text = std::str::from_utf8(bytes).expect("jsonl output is UTF-8");
    let mut records: Vec<(Vec<u8>, Vec<u8>)> = text
        .lines()
        .map(|line| {
            let object: serde_json::Map<String, serde_json::Value> = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("not a JSON object: {line:?}: {e}"));
            assert_eq!(object.len(), 2, "{line}");
            let field = |name: &str| match (object.get(name), object.get(&format!("{name}_base64")))
            {
                (Some(s), None) => s.as_str().expect(line).as_bytes().to_vec(),
                (None, Some(b)) => base64::engine::general_purpose::STANDARD
                    .decode(b.as_str().expect(line))
                    .expect(line),
                _ => panic!("{name}: {line}"),
            };
            (field("key"), field("value"))
        })
        .collect();
    records.sort();
    records
}

/// `wmr seq --output-format jsonl`: its records, sorted.
fn seq_jsonl_records(guest: &Path, inputs: &[&Path], params: &[&str]) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut args: Vec<String> = vec!["seq".into(), "--map".into(), path(guest)];
    for input in inputs {
        args.extend(["--input".into(), path(input)]);
    }
    for param in params {
        args.extend(["--param".into(), param.to_string()]);
    }
    args.extend(["--output-format".into(), "jsonl".into()]);
    jsonl_records(&run_ok(&strs(&args)).stdout)
}

/// The generated corpus plus a document whose name holds a newline and
/// what looks like an indexer record: `(dir, that file's name)`.
fn corpus_with_forging_name(dir: &Path) -> (std::path::PathBuf, &'static str) {
    let input = dir.join("in");
    generated_corpus(&input, 10);
    let name = "doc1\nzzz-forged 999 victim.txt";
    std::fs::write(input.join(name), "map reduce\nvictim\n").unwrap();
    (input, name)
}

/// Issue 10, 7: an input file named `doc1\nzzz-forged 999 victim.txt` added
/// forged lines to the indexer's output. Now one record is one line: as
/// many lines as distinct words, none forged, the name escaped.
#[test]
fn a_file_name_holding_a_newline_adds_no_record() {
    let tmp = tempfile::tempdir().unwrap();
    let (input, name) = corpus_with_forging_name(tmp.path());
    // The indexer's words: maximal runs of alphabetic characters.
    let mut words = std::collections::BTreeSet::new();
    for entry in std::fs::read_dir(&input).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        for word in text.split(|c: char| !c.is_alphabetic()) {
            if !word.is_empty() {
                words.insert(word.to_string());
            }
        }
    }
    let indexer = guest("indexer");
    let out = tmp.path().join("out");
    run_job(&indexer, &[&input], &out, 3, 2, &[]);
    let lines = part_lines(&out);
    assert_eq!(lines.len(), words.len(), "one line per distinct word");
    assert!(!lines.iter().any(|l| l.starts_with(b"zzz-forged")));
    let escaped = name.replace('\n', "\\n");
    let victim = format!("victim 1 {escaped}");
    assert!(lines.contains(&victim.into_bytes()), "{escaped}");
    assert_eq!(
        sorted_output(&out),
        reference(&indexer, &[&input], &[]),
        "wmr seq escapes the same way"
    );
}

/// A key holding a newline (and one holding a CR and a byte that is not
/// UTF-8) is one escaped line, in `wmr run` and in `wmr seq`.
#[test]
fn a_key_holding_a_newline_adds_no_record() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in.txt");
    std::fs::write(&input, "x y\n").unwrap();
    let hostile = guest("hostile");
    let out = tmp.path().join("out");
    run_job(
        &hostile,
        &[&input],
        &out,
        2,
        1,
        &["--param", "mode=emit-newline-key"],
    );
    let expected: Vec<Vec<u8>> = vec![
        b"a\\nforged-record 999999 1".to_vec(),
        b"x 1".to_vec(),
        b"y 1".to_vec(),
        b"\xff\\r 1".to_vec(),
    ];
    assert_eq!(part_lines(&out), expected);
    let seq = run_ok(&[
        "seq",
        "--map",
        &path(&hostile),
        "--input",
        &path(&input),
        "--param",
        "mode=emit-newline-key",
    ]);
    let mut seq_lines: Vec<Vec<u8>> = seq
        .stdout
        .strip_suffix(b"\n")
        .unwrap()
        .split(|&b| b == b'\n')
        .map(<[u8]>::to_vec)
        .collect();
    seq_lines.sort();
    assert_eq!(seq_lines, expected);
}

/// `--output-format jsonl`: every line is a JSON object, and the records
/// (decoded, base64 where the bytes are not UTF-8) equal `wmr seq`'s.
#[test]
fn jsonl_output_decodes_to_the_sequential_records() {
    let tmp = tempfile::tempdir().unwrap();
    let (input, name) = corpus_with_forging_name(tmp.path());
    let indexer = guest("indexer");
    let out = tmp.path().join("index");
    run_job(
        &indexer,
        &[&input],
        &out,
        3,
        2,
        &["--output-format", "jsonl"],
    );
    let mut bytes = Vec::new();
    for file in part_files(&out) {
        bytes.extend(std::fs::read(file).unwrap());
    }
    let records = jsonl_records(&bytes);
    assert!(records.len() > 5);
    let victim = (b"victim".to_vec(), format!("1 {name}").into_bytes());
    assert!(records.contains(&victim));
    assert_eq!(records, seq_jsonl_records(&indexer, &[&input], &[]));

    let small = tmp.path().join("small.txt");
    std::fs::write(&small, "x y\n").unwrap();
    let hostile = guest("hostile");
    let out = tmp.path().join("hostile");
    let params = ["mode=emit-newline-key"];
    run_job(
        &hostile,
        &[&small],
        &out,
        2,
        1,
        &["--param", params[0], "--output-format", "jsonl"],
    );
    let mut bytes = Vec::new();
    for file in part_files(&out) {
        bytes.extend(std::fs::read(file).unwrap());
    }
    assert!(
        String::from_utf8(bytes.clone())
            .unwrap()
            .contains(r#"{"key_base64":"/w0=","value":"1"}"#),
        "the key that is not UTF-8 is base64"
    );
    let records = jsonl_records(&bytes);
    let one = |k: &[u8]| (k.to_vec(), b"1".to_vec());
    assert_eq!(
        records,
        [
            one(b"a\nforged-record 999999"),
            one(b"x"),
            one(b"y"),
            one(b"\xff\r")
        ]
    );
    assert_eq!(records, seq_jsonl_records(&hostile, &[&small], &params));
}

#[test]
fn an_unknown_output_format_is_a_usage_error() {
    let out = run(&[
        "seq",
        "--map",
        "x.wasm",
        "--input",
        "x",
        "--output-format",
        "csv",
    ]);
    assert_eq!(out.status.code(), Some(2), "clap's usage error");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("invalid value 'csv' for '--output-format <OUTPUT_FORMAT>'")
            && stderr.contains("[possible values: text, jsonl]"),
        "{stderr}"
    );
}

/// Issue 11: every invalid setting is refused the same way by `run` and
/// `deploy`: one `error:` line naming the flag, exit 1, nothing created
/// (`wmr run --max-attempts 0` panicked and left `OUTPUT/_temporary`).
#[test]
fn invalid_settings_are_refused_in_one_line_and_create_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let wordcount = guest("wordcount");
    let cases: [(&str, &str, &str); 8] = [
        (
            "--max-attempts",
            "0",
            "--max-attempts must be greater than 0",
        ),
        ("--reducers", "0", "--reducers must be greater than 0"),
        ("--workers", "0", "--workers must be greater than 0"),
        ("--split-size", "0", "--split-size must be greater than 0"),
        ("--fuel", "0", "--fuel must be greater than 0"),
        ("--memory", "0", "--memory must be greater than 0"),
        ("--timeout", "0s", "--timeout must be greater than 0"),
        (
            "--output-limit",
            "0",
            "--output-limit must be greater than 0",
        ),
    ];
    for (flag, value, message) in cases {
        let out = tmp.path().join(format!("out{flag}"));
        let work = tmp.path().join(format!("work{flag}"));
        let args = [
            "run",
            "--map",
            &path(&wordcount),
            "--input",
            &path(&books()),
            "--output",
            &path(&out),
            "--work-dir",
            &path(&work),
            flag,
            value,
        ];
        let result = run(&args);
        let stderr = String::from_utf8_lossy(&result.stderr);
        assert_eq!(result.status.code(), Some(1), "run {flag}: {stderr}");
        assert_eq!(stderr, format!("error: {message}\n"), "run {flag}");
        assert!(!out.exists(), "run {flag}: the output was created");
        assert!(!work.exists(), "run {flag}: the work directory was created");
        if flag == "--workers" {
            continue; // `deploy` has no workers of its own.
        }
        // `deploy` refuses it before it connects (nothing listens here).
        let result = run(&[
            "deploy",
            &path(&wordcount),
            "--input",
            &path(&books()),
            "--output",
            &path(&out),
            "--coordinator",
            "127.0.0.1:9",
            "--fingerprint",
            "00",
            flag,
            value,
        ]);
        let stderr = String::from_utf8_lossy(&result.stderr);
        assert_eq!(result.status.code(), Some(1), "deploy {flag}: {stderr}");
        assert_eq!(stderr, format!("error: {message}\n"), "deploy {flag}");
        assert!(!out.exists(), "deploy {flag}: the output was created");
    }
}

//! The sandbox: hostile guests fail their attempt with the right reason,
//! within their limit, and the same process keeps serving normal work.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use support::*;
use wmr::protocol::{AttemptFailure, Limits};
use wmr::sandbox::{AttemptContext, CollectPairs, Role, Sandbox};

#[path = "../examples/wordcount/src/count.rs"]
mod count;

const TEXT: &str = "It was the best of times, it was the worst of times; café CAFÉ\n";

fn limits() -> Limits {
    Limits {
        fuel: 2_000_000_000,
        memory_bytes: 64 << 20,
        timeout_ms: 2_000,
        output_bytes: 1 << 20,
        log_bytes: 16 << 10,
        max_dead_letters: 0,
    }
}

fn context(limits: Limits, params: &[(&str, &str)]) -> AttemptContext {
    let params: BTreeMap<String, String> = params
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    AttemptContext {
        limits,
        params: Arc::new(params),
        cancel: Arc::new(AtomicBool::new(false)),
    }
}

fn run_hostile(
    sandbox: &Sandbox,
    limits: Limits,
    params: &[(&str, &str)],
) -> (Result<(), AttemptFailure>, Vec<wmr::shuffle::Pair>) {
    let module = sandbox
        .load(&std::fs::read(guest("hostile")).unwrap(), Role::Map)
        .unwrap();
    let sink = CollectPairs::default();
    let call = sandbox.run_map(
        &module,
        &context(limits, params),
        b"f.txt",
        TEXT.as_bytes(),
        Box::new(sink.clone()),
    );
    (call.result, sink.take())
}

/// After a hostile attempt, the same sandbox (engine, linker, process) must
/// still compute word count exactly as the native tokenizer does.
fn assert_still_counts_words(sandbox: &Sandbox) {
    let module = sandbox
        .load(&std::fs::read(guest("wordcount")).unwrap(), Role::Map)
        .unwrap();
    let sink = CollectPairs::default();
    let call = sandbox.run_map(
        &module,
        &context(limits(), &[]),
        b"f.txt",
        TEXT.as_bytes(),
        Box::new(sink.clone()),
    );
    assert_eq!(call.result, Ok(()));
    let mut got: Vec<(String, u64)> = sink
        .take()
        .into_iter()
        .map(|(k, v)| {
            (
                String::from_utf8(k).unwrap(),
                String::from_utf8(v).unwrap().parse().unwrap(),
            )
        })
        .collect();
    got.sort();
    let mut native = HashMap::new();
    count::count_words(TEXT, &mut native);
    let mut want: Vec<(String, u64)> = native
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    want.sort();
    assert_eq!(got, want);
}

#[test]
fn infinite_loop_runs_out_of_fuel() {
    let sandbox = Sandbox::new().unwrap();
    let (result, _) = run_hostile(&sandbox, limits(), &[("mode", "loop")]);
    assert_eq!(result, Err(AttemptFailure::OutOfFuel(2_000_000_000)));
    assert_still_counts_words(&sandbox);
}

#[test]
fn infinite_loop_with_unlimited_fuel_times_out() {
    let sandbox = Sandbox::new().unwrap();
    let limits = Limits {
        fuel: u64::MAX / 2,
        timeout_ms: 300,
        ..limits()
    };
    let started = std::time::Instant::now();
    let (result, _) = run_hostile(&sandbox, limits, &[("mode", "loop")]);
    assert_eq!(result, Err(AttemptFailure::TimedOut(300)));
    // Epoch interruption is checked every 10 ms; a generous bound still
    // catches a deadline that is not enforced at all.
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    assert_still_counts_words(&sandbox);
}

#[test]
fn memory_bomb_runs_out_of_memory() {
    let sandbox = Sandbox::new().unwrap();
    let (result, _) = run_hostile(&sandbox, limits(), &[("mode", "membomb")]);
    assert_eq!(result, Err(AttemptFailure::OutOfMemory(64 << 20)));
    assert_still_counts_words(&sandbox);
}

#[test]
fn output_flood_hits_the_output_limit() {
    let sandbox = Sandbox::new().unwrap();
    let (result, pairs) = run_hostile(&sandbox, limits(), &[("mode", "flood")]);
    assert_eq!(result, Err(AttemptFailure::OutputLimit(1 << 20)));
    let accepted: usize = pairs.iter().map(|(k, v)| k.len() + v.len()).sum();
    assert!(accepted <= 1 << 20, "nothing past the limit was accepted");
    assert_still_counts_words(&sandbox);
}

#[test]
fn wasi_escape_is_denied_and_leaks_nothing() {
    let sandbox = Sandbox::new().unwrap();
    let (result, pairs) = run_hostile(&sandbox, limits(), &[("mode", "escape")]);
    let Err(AttemptFailure::Denied(what)) = result else {
        panic!("expected a denial, got {result:?}")
    };
    assert!(what.starts_with("network access to "), "{what}");
    // The guest's own report: the file and the environment were refused too.
    assert!(what.contains("file: "), "{what}");
    assert!(
        what.contains("env: environment variable not found"),
        "{what}"
    );
    assert!(
        pairs.iter().all(|(k, _)| !k.starts_with(b"leak:")),
        "leaked {pairs:?}"
    );
    assert_still_counts_words(&sandbox);
}

#[test]
fn trap_on_a_record_names_the_record() {
    let sandbox = Sandbox::new().unwrap();
    let (result, _) = run_hostile(
        &sandbox,
        limits(),
        &[("mode", "trap"), ("trap-on", "worst")],
    );
    let Err(AttemptFailure::Trap(message)) = result else {
        panic!("expected a trap, got {result:?}")
    };
    assert!(
        message.contains("poisoned record: It was the best of times, it was the worst of times"),
        "{message}"
    );
    assert_still_counts_words(&sandbox);
}

#[test]
fn unbounded_recursion_traps() {
    let sandbox = Sandbox::new().unwrap();
    let (result, _) = run_hostile(&sandbox, limits(), &[("mode", "recurse")]);
    assert!(matches!(result, Err(AttemptFailure::Trap(_))), "{result:?}");
    assert_still_counts_words(&sandbox);
}

/// The same classification reaches the user through `wmr run`, one line.
#[test]
fn hostile_jobs_fail_with_classified_reasons_through_the_cli() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let input = tmp.path().join("in.txt");
    std::fs::write(&input, TEXT).unwrap();
    let cases = [
        (
            vec!["--param", "mode=loop", "--fuel", "1000000000"],
            "out of fuel (limit 1000000000)",
        ),
        (
            vec![
                "--param",
                "mode=loop",
                "--fuel",
                "100000000000000",
                "--timeout",
                "500ms",
            ],
            "timed out (limit 500 ms)",
        ),
        (
            vec!["--param", "mode=membomb", "--memory", "32MiB"],
            "out of memory (limit 33554432 bytes)",
        ),
        (
            vec!["--param", "mode=flood", "--output-limit", "1MiB"],
            "output limit exceeded (limit 1048576 bytes)",
        ),
    ];
    let (guest, input, out_arg) = (path(&guest("hostile")), path(&input), path(&out));
    for (extra, reason) in cases {
        let mut args = vec![
            "run", "--map", &guest, "--input", &input, "--output", &out_arg,
        ];
        args.extend(["--max-attempts", "1", "--workers", "1"]);
        args.extend(extra);
        let stderr = run_err(&args);
        assert_eq!(
            stderr,
            format!(
                "error: job failed: task m-00000 failed 1 times on w1; last: w1 a1: {reason}\n"
            )
        );
        assert!(!out.exists());
    }
}

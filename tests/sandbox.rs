//! The sandbox: hostile guests fail their attempt with the right reason,
//! within their limit, and the same process keeps serving normal work.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use support::*;
use wmr::model::{AttemptFailure, Limits};
use wmr::sandbox::{AttemptContext, CallOutcome, CollectPairs, LoadedModule, Role, Sandbox};

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
        ..Limits::default()
    }
}

fn context(limits: Limits, params: &[(&str, &str)]) -> AttemptContext {
    let params: BTreeMap<String, String> = params
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    AttemptContext::new(limits, Arc::new(params), Arc::new(AtomicBool::new(false)))
}

fn run_hostile(
    sandbox: &Sandbox,
    limits: Limits,
    params: &[(&str, &str)],
) -> (Result<(), AttemptFailure>, Vec<wmr::shuffle::Pair>) {
    let (call, pairs) = call_hostile(sandbox, &hostile(sandbox), limits, params);
    (call.result, pairs)
}

fn hostile(sandbox: &Sandbox) -> LoadedModule {
    sandbox
        .load(&std::fs::read(guest("hostile")).unwrap(), Role::Map)
        .unwrap()
}

/// One map call of the hostile guest: what it measured and what it emitted.
fn call_hostile(
    sandbox: &Sandbox,
    module: &LoadedModule,
    limits: Limits,
    params: &[(&str, &str)],
) -> (CallOutcome, Vec<wmr::shuffle::Pair>) {
    let sink = CollectPairs::default();
    let call = sandbox.run_map(
        module,
        &context(limits, params),
        b"f.txt",
        TEXT.as_bytes(),
        Box::new(sink.clone()),
    );
    (call, sink.take())
}

/// The pairs word count emits for `TEXT`, sorted.
fn word_counts(pairs: Vec<wmr::shuffle::Pair>) -> Vec<(String, u64)> {
    let mut got: Vec<(String, u64)> = pairs
        .into_iter()
        .map(|(k, v)| {
            (
                String::from_utf8(k).unwrap(),
                String::from_utf8(v).unwrap().parse().unwrap(),
            )
        })
        .collect();
    got.sort();
    got
}

fn native_word_counts() -> Vec<(String, u64)> {
    let mut native = HashMap::new();
    count::count_words(TEXT.as_bytes(), &mut native);
    let mut want: Vec<(String, u64)> = native
        .into_iter()
        .map(|(k, v): (count::Word, u64)| (String::from_utf8(k.0.to_vec()).unwrap(), v))
        .collect();
    want.sort();
    want
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
    assert_eq!(word_counts(sink.take()), native_word_counts());
}

/// A sink that, on its first pair, says so and then holds the guest (and
/// with it the store's pool slot) until released.
struct Gate {
    started: Option<std::sync::mpsc::Sender<()>>,
    release: std::sync::mpsc::Receiver<()>,
}

impl wmr::sandbox::PairSink for Gate {
    fn accept(&mut self, _key: Vec<u8>, _value: Vec<u8>) -> anyhow::Result<()> {
        if let Some(started) = self.started.take() {
            started.send(()).unwrap();
            self.release.recv().unwrap();
        }
        Ok(())
    }
}

/// An attempt past the instance pool's capacity fails as the host's
/// problem (retried elsewhere; never bisected as a bad record), the
/// attempt holding the slot is unaffected, and the slot serves the next.
#[test]
fn an_attempt_past_the_pool_capacity_fails_as_a_host_error() {
    let sandbox = Sandbox::with_capacity(1).unwrap();
    let module = hostile(&sandbox);
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let (release_tx, release_rx) = std::sync::mpsc::channel();
    std::thread::scope(|scope| {
        let holder = scope.spawn(|| {
            let gate = Gate {
                started: Some(started_tx),
                release: release_rx,
            };
            let ctx = context(limits(), &[("mode", "flood")]);
            sandbox
                .run_map(&module, &ctx, b"f", b"", Box::new(gate))
                .result
        });
        started_rx.recv().unwrap();
        let limits = Limits {
            max_dead_letters: 10,
            ..limits()
        };
        let (second, pairs) = run_hostile(&sandbox, limits, &[("mode", "loop")]);
        assert_eq!(
            second,
            Err(AttemptFailure::Host(
                "this worker's instance pool is full: maximum concurrent limit of 1 for \
                 component instances reached"
                    .into()
            ))
        );
        assert!(pairs.is_empty());
        release_tx.send(()).unwrap();
        assert_eq!(
            holder.join().unwrap(),
            Err(AttemptFailure::OutputLimit(1 << 20))
        );
    });
    assert_still_counts_words(&sandbox);
}

/// A component that is both the map and the reduce module, or is loaded
/// again, is compiled once per process.
#[test]
fn a_component_is_compiled_once_for_both_roles() {
    let sandbox = Sandbox::new().unwrap();
    let wordcount = std::fs::read(guest("wordcount")).unwrap();
    sandbox.load(&wordcount, Role::Map).unwrap();
    sandbox.load(&wordcount, Role::Reduce).unwrap();
    sandbox.load(&wordcount, Role::Map).unwrap();
    assert_eq!(sandbox.compiled_components(), 1);
    sandbox
        .load(&std::fs::read(guest("indexer")).unwrap(), Role::Reduce)
        .unwrap();
    assert_eq!(sandbox.compiled_components(), 2);
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

/// A reduce input that never ends: one key whose every batch continues.
struct EndlessKey {
    batches: Arc<std::sync::atomic::AtomicU64>,
}

impl wmr::sandbox::ReduceInput for EndlessKey {
    fn next_batch_framed(&mut self) -> anyhow::Result<Vec<u8>> {
        self.batches
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(wmr::reduce_input::frame_batch(&[wmr::sandbox::GroupPart {
            key: b"hot".to_vec(),
            values: vec![b"1".to_vec(); 10_000],
            continues: true,
        }]))
    }

    fn ended(&self) -> bool {
        false
    }
}

/// Issue 12 (bounded reduce): fuel, the wall-clock limit and the output
/// limit hold across a reducer's pulls of its input, not per batch. An
/// endless hot key, pulled by a reducer that sums (`lines`) or emits every
/// value (`sort`), ends the attempt with the limit that was reached after
/// many batches, in one store.
#[test]
fn limits_hold_across_the_batches_a_reducer_pulls() {
    let sandbox = Sandbox::new().unwrap();
    let load = |name| {
        sandbox
            .load(&std::fs::read(guest(name)).unwrap(), Role::Reduce)
            .unwrap()
    };
    let (lines, sort) = (load("lines"), load("sort"));
    let cases = [
        (&lines, limits(), AttemptFailure::OutOfFuel(2_000_000_000)),
        (
            &lines,
            Limits {
                fuel: u64::MAX / 2,
                timeout_ms: 300,
                ..limits()
            },
            AttemptFailure::TimedOut(300),
        ),
        (&sort, limits(), AttemptFailure::OutputLimit(1 << 20)),
    ];
    for (module, limits, want) in cases {
        let batches = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let input = EndlessKey {
            batches: batches.clone(),
        };
        let started = std::time::Instant::now();
        let sink = CollectPairs::default();
        let call = sandbox.run_reduce(
            module,
            &context(limits, &[]),
            Box::new(input),
            Box::new(sink.clone()),
        );
        assert_eq!(call.result, Err(want.clone()));
        let pulled = batches.load(std::sync::atomic::Ordering::Relaxed);
        assert!(pulled > 2, "{want}: only {pulled} batches pulled");
        assert!(started.elapsed() < std::time::Duration::from_secs(20));
        let emitted: usize = sink.take().iter().map(|(k, v)| k.len() + v.len()).sum();
        assert!(emitted <= 1 << 20, "{want}: {emitted} bytes accepted");
    }
    assert_still_counts_words(&sandbox);
}

/// A reducer may stop pulling before the end of its input (`first-key`
/// emits its partition's first key and returns): the attempt succeeds
/// with what it emitted, and its log says the rest was not read.
#[test]
fn a_reducer_that_returns_early_succeeds_and_its_log_says_so() {
    let sandbox = Sandbox::new().unwrap();
    let module = sandbox
        .load(&std::fs::read(guest("first-key")).unwrap(), Role::Reduce)
        .unwrap();
    // Past several batches: the guest reads one of them.
    let pairs: Vec<wmr::shuffle::Pair> = (0..200_000u32)
        .map(|i| {
            (
                format!("k{:07}", i / 3).into_bytes(),
                i.to_string().into_bytes(),
            )
        })
        .collect();
    let input = wmr::reduce_input::PartBatches::new(wmr::reduce_input::SortedPairs::new(pairs));
    let sink = CollectPairs::default();
    let call = sandbox.run_reduce(
        &module,
        &context(limits(), &[]),
        Box::new(input),
        Box::new(sink.clone()),
    );
    assert_eq!(call.result, Ok(()));
    assert_eq!(sink.take(), vec![(b"k0000000".to_vec(), b"0".to_vec())]);
    assert_eq!(
        call.log,
        "[Level::Info] reduce returned before the end of its input: the rest was not read\n"
    );
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
    // std's `TcpStream::connect` creates a socket first: that is refused.
    assert!(
        what.starts_with("creating a TCP socket is not granted"),
        "{what}"
    );
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

/// What the `clock` mode read: wall-clock seconds and whether the monotonic
/// clock moved.
fn clocks(pairs: &[wmr::shuffle::Pair]) -> (u64, bool) {
    let value = |key: &str| {
        let (_, v) = pairs
            .iter()
            .find(|(k, _)| k.as_slice() == key.as_bytes())
            .unwrap_or_else(|| panic!("no {key} in {pairs:?}"));
        String::from_utf8(v.clone()).unwrap()
    };
    (
        value("clock:wall-secs").parse().unwrap(),
        value("clock:monotonic-moves").parse().unwrap(),
    )
}

/// Without `--grant clock` both WASI clocks stand still at zero; with it
/// the guest reads the host's time.
#[test]
fn clocks_read_zero_unless_granted() {
    let sandbox = Sandbox::new().unwrap();
    let (result, pairs) = run_hostile(&sandbox, limits(), &[("mode", "clock")]);
    result.unwrap();
    assert_eq!(clocks(&pairs), (0, false));

    let granted = Limits {
        clock: true,
        ..limits()
    };
    let (result, pairs) = run_hostile(&sandbox, granted, &[("mode", "clock")]);
    result.unwrap();
    let (wall, moves) = clocks(&pairs);
    let host = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        wall.abs_diff(host) <= 60,
        "the guest's wall clock {wall} is not the host's {host}"
    );
    assert!(moves, "the granted monotonic clock did not move");
    assert_still_counts_words(&sandbox);
}

/// A guest asleep in a host call (WASI `poll`) runs no Wasm, so no epoch
/// check can stop it: its wall-clock limit must still hold.
#[test]
fn a_guest_asleep_in_the_host_times_out() {
    let sandbox = Sandbox::new().unwrap();
    let limits = Limits {
        timeout_ms: 300,
        ..limits()
    };
    let start = std::time::Instant::now();
    let (result, _) = run_hostile(&sandbox, limits, &[("mode", "nap"), ("ms", "600000")]);
    assert_eq!(result, Err(AttemptFailure::TimedOut(300)));
    assert!(
        start.elapsed() < std::time::Duration::from_secs(30),
        "the attempt ran for {:?}",
        start.elapsed()
    );
    assert_still_counts_words(&sandbox);
}

/// Cancels its attempt when the guest's first pair arrives.
struct CancelOnFirstPair(Arc<AtomicBool>);

impl wmr::sandbox::PairSink for CancelOnFirstPair {
    fn accept(&mut self, _key: Vec<u8>, _value: Vec<u8>) -> anyhow::Result<()> {
        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }
}

/// A guest asleep in the host when its attempt is cancelled (as a stale or
/// backup attempt is) wakes and ends as cancelled, without waiting for its
/// wall-clock limit: its worker slot and pool slot are free again.
#[test]
fn a_guest_asleep_in_the_host_ends_when_cancelled() {
    let sandbox = Sandbox::new().unwrap();
    let limits = Limits {
        timeout_ms: 60_000,
        ..limits()
    };
    let ctx = context(limits, &[("mode", "nap"), ("ms", "600000")]);
    let sink = CancelOnFirstPair(ctx.cancel.clone());
    let start = std::time::Instant::now();
    let call = sandbox.run_map(&hostile(&sandbox), &ctx, b"f", b"", Box::new(sink));
    assert_eq!(call.result, Err(AttemptFailure::Cancelled));
    assert!(
        start.elapsed() < std::time::Duration::from_secs(10),
        "the attempt ran for {:?}",
        start.elapsed()
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
    // A Rust guest's stack lives at the bottom of its linear memory: deep
    // recursion runs it off the bottom long before the 1 MiB native stack
    // limit is reached.
    assert_eq!(
        result,
        Err(AttemptFailure::Trap(
            "wasm trap: out of bounds memory access".into()
        ))
    );
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

// ---------------------------------------------------------------------------
// Host imports called with huge or invalid arguments. Each ends with its own
// bounded outcome, and the host copies nothing past the bound.

#[test]
fn emit_of_a_value_over_the_output_limit_is_refused_before_it_is_copied() {
    let sandbox = Sandbox::new().unwrap();
    let (call, pairs) = call_hostile(
        &sandbox,
        &hostile(&sandbox),
        limits(),
        &[("mode", "emit-huge")],
    );
    assert_eq!(call.result, Err(AttemptFailure::OutputLimit(1 << 20)));
    assert_eq!(pairs, vec![], "nothing was accepted");
    assert_eq!(call.bytes_out, 0);
    assert_still_counts_words(&sandbox);
}

/// Issue 10, 8: a 300 MiB value under a 1 GiB output limit failed as
/// "fuel allocated for hostcalls has been exhausted" (wasmtime's default
/// 128 MiB per host call). The hostcall bound is the memory limit now:
/// whatever the guest hands over is in its memory already.
#[test]
fn a_300_mib_value_within_the_limits_is_emitted_whole() {
    let sandbox = Sandbox::new().unwrap();
    // Time and fuel to spare: copying 300 MiB twice takes a second or
    // more on a loaded machine; the hostcall bound is what is tested.
    let big = Limits {
        memory_bytes: 1 << 30,
        output_bytes: 1 << 30,
        timeout_ms: 60_000,
        fuel: Limits::default().fuel,
        ..limits()
    };
    let bytes = (300 << 20).to_string();
    let (call, pairs) = call_hostile(
        &sandbox,
        &hostile(&sandbox),
        big,
        &[("mode", "emit-huge"), ("bytes", &bytes)],
    );
    assert_eq!(call.result, Ok(()));
    let huge = pairs
        .iter()
        .find(|(k, _)| k == b"huge")
        .expect("the huge pair");
    assert_eq!(huge.1.len(), 300 << 20);
    assert!(huge.1.iter().all(|&b| b == b'v'));
    assert_still_counts_words(&sandbox);
}

/// 65,536 pairs that all point at one 1 MiB buffer: 128 GiB if the host
/// copied the batch before looking at it. It is charged pair by pair.
#[test]
fn emit_of_aliased_pairs_is_charged_pair_by_pair_and_copies_nothing_past_the_limit() {
    let sandbox = Sandbox::new().unwrap();
    let started = std::time::Instant::now();
    let (call, pairs) = call_hostile(
        &sandbox,
        &hostile(&sandbox),
        limits(),
        &[("mode", "emit-alias")],
    );
    assert_eq!(call.result, Err(AttemptFailure::OutputLimit(1 << 20)));
    assert_eq!(pairs, vec![]);
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    // With a limit that lets a few through, exactly those are copied.
    let roomy = Limits {
        output_bytes: 5 << 21,
        ..limits()
    };
    let (call, pairs) = call_hostile(
        &sandbox,
        &hostile(&sandbox),
        roomy,
        &[("mode", "emit-alias")],
    );
    assert_eq!(call.result, Err(AttemptFailure::OutputLimit(5 << 21)));
    assert_eq!(pairs.len(), 4, "4 pairs of 2 MiB + 32 fit in 10 MiB, not 5");
    assert_eq!(call.bytes_out, 4 << 21);
    assert_still_counts_words(&sandbox);
}

#[test]
fn a_flood_of_empty_pairs_hits_the_output_limit_at_32_bytes_a_pair() {
    let sandbox = Sandbox::new().unwrap();
    let (call, pairs) = call_hostile(
        &sandbox,
        &hostile(&sandbox),
        limits(),
        &[("mode", "emit-empty")],
    );
    assert_eq!(call.result, Err(AttemptFailure::OutputLimit(1 << 20)));
    let per_pair = wmr::sandbox::PAIR_OVERHEAD_BYTES as usize;
    assert_eq!(pairs.len(), (1 << 20) / per_pair);
    assert_eq!(call.records_out, ((1 << 20) / per_pair) as u64);
    assert_eq!(call.bytes_out, 0);
    assert_still_counts_words(&sandbox);
}

#[test]
fn emit_of_a_pair_outside_linear_memory_traps_after_the_valid_pairs_before_it() {
    let sandbox = Sandbox::new().unwrap();
    let (call, pairs) = call_hostile(
        &sandbox,
        &hostile(&sandbox),
        limits(),
        &[("mode", "emit-oob")],
    );
    assert_eq!(
        call.result,
        Err(AttemptFailure::Trap(
            "list pointer/length out of bounds of memory".into()
        ))
    );
    assert_eq!(pairs, vec![(b"key".to_vec(), b"key".to_vec())]);
    assert_still_counts_words(&sandbox);
}

/// `emit-framed` takes the whole pairs before a cut one, then refuses
/// the buffer naming the byte where the cut pair starts.
#[test]
fn emit_framed_of_a_cut_pair_refuses_after_the_whole_pairs_before_it() {
    let sandbox = Sandbox::new().unwrap();
    let (call, pairs) = call_hostile(
        &sandbox,
        &hostile(&sandbox),
        limits(),
        &[("mode", "emit-framed-cut")],
    );
    assert_eq!(
        call.result,
        Err(AttemptFailure::Refused(
            "emit-framed: the buffer does not frame whole pairs (at byte 4 of 7)".into()
        ))
    );
    assert_eq!(pairs, vec![(b"a".to_vec(), b"b".to_vec())]);
    assert_still_counts_words(&sandbox);
}

#[test]
fn a_counter_name_over_256_bytes_fails_the_attempt_naming_the_bound() {
    let sandbox = Sandbox::new().unwrap();
    let (call, _) = call_hostile(
        &sandbox,
        &hostile(&sandbox),
        limits(),
        &[("mode", "counter-long-name")],
    );
    assert_eq!(
        call.result,
        Err(AttemptFailure::Refused(
            "incr-counter: counter name longer than 256 bytes".into()
        ))
    );
    assert!(call.counters.is_empty(), "{:?}", call.counters.keys());
    assert_still_counts_words(&sandbox);
}

/// The host's own counters (`wmr.map.spills`) cannot be forged.
#[test]
fn a_counter_named_like_the_hosts_fails_the_attempt() {
    let sandbox = Sandbox::new().unwrap();
    let (call, _) = call_hostile(
        &sandbox,
        &hostile(&sandbox),
        limits(),
        &[("mode", "counter-reserved")],
    );
    assert_eq!(
        call.result,
        Err(AttemptFailure::Refused(
            "incr-counter: counter names starting with `wmr.` are the host's".into()
        ))
    );
    assert!(call.counters.is_empty(), "{:?}", call.counters.keys());
    assert_still_counts_words(&sandbox);
}

#[test]
fn more_than_1024_distinct_counters_fail_the_attempt_naming_the_bound() {
    let sandbox = Sandbox::new().unwrap();
    let (call, _) = call_hostile(
        &sandbox,
        &hostile(&sandbox),
        limits(),
        &[("mode", "counter-many")],
    );
    assert_eq!(
        call.result,
        Err(AttemptFailure::Refused(
            "incr-counter: more than 1024 distinct counters".into()
        ))
    );
    assert_eq!(call.counters.len(), wmr::sandbox::MAX_COUNTERS);
    assert_still_counts_words(&sandbox);
}

#[test]
fn extreme_counter_deltas_saturate_and_the_job_still_counts_words() {
    let sandbox = Sandbox::new().unwrap();
    let (call, pairs) = call_hostile(
        &sandbox,
        &hostile(&sandbox),
        limits(),
        &[("mode", "counter-extreme")],
    );
    assert_eq!(call.result, Ok(()));
    let want: BTreeMap<String, i64> = [("max".into(), i64::MAX), ("min".into(), i64::MIN)].into();
    assert_eq!(call.counters, want);
    assert_eq!(word_counts(pairs), native_word_counts());
}

#[test]
fn a_huge_log_line_is_cut_at_the_log_limit_and_the_job_still_counts_words() {
    let sandbox = Sandbox::new().unwrap();
    let (call, pairs) = call_hostile(
        &sandbox,
        &hostile(&sandbox),
        limits(),
        &[("mode", "log-huge")],
    );
    assert_eq!(call.result, Ok(()));
    assert_eq!(
        call.log.len(),
        16 << 10,
        "the log is cut at --log limit exactly (ASCII)"
    );
    assert!(
        call.log.starts_with("[Level::Info] LLLL"),
        "{}",
        &call.log[..40]
    );
    assert_eq!(word_counts(pairs), native_word_counts());
}

#[test]
fn a_log_message_that_is_not_utf8_fails_the_attempt() {
    let sandbox = Sandbox::new().unwrap();
    let (call, _) = call_hostile(
        &sandbox,
        &hostile(&sandbox),
        limits(),
        &[("mode", "log-invalid-utf8")],
    );
    assert_eq!(
        call.result,
        Err(AttemptFailure::Refused(
            "log: the message is not valid UTF-8".into()
        ))
    );
    assert_eq!(call.log, "");
    assert_still_counts_words(&sandbox);
}

#[test]
fn a_log_level_outside_the_enum_fails_the_attempt() {
    let sandbox = Sandbox::new().unwrap();
    let (call, _) = call_hostile(
        &sandbox,
        &hostile(&sandbox),
        limits(),
        &[("mode", "log-bad-level")],
    );
    assert_eq!(
        call.result,
        Err(AttemptFailure::Trap("unexpected discriminant: 99".into()))
    );
    assert_still_counts_words(&sandbox);
}

#[test]
fn a_parameter_with_a_huge_name_is_none_and_the_job_still_counts_words() {
    let sandbox = Sandbox::new().unwrap();
    let (call, pairs) = call_hostile(
        &sandbox,
        &hostile(&sandbox),
        limits(),
        &[("mode", "param-huge")],
    );
    assert_eq!(call.result, Ok(()));
    assert_eq!(word_counts(pairs), native_word_counts());
}

#[test]
fn a_huge_guest_error_message_is_cut_at_4_kib() {
    let sandbox = Sandbox::new().unwrap();
    let (call, _) = call_hostile(
        &sandbox,
        &hostile(&sandbox),
        limits(),
        &[("mode", "error-huge")],
    );
    let want = format!("{}… (8388608 bytes, cut at 4096)", "E".repeat(4096));
    assert_eq!(call.result, Err(AttemptFailure::GuestError(want)));
    assert_still_counts_words(&sandbox);
}

#[test]
fn a_flood_of_refused_connections_is_denied_naming_the_first_eight() {
    let sandbox = Sandbox::new().unwrap();
    let (call, pairs) = call_hostile(
        &sandbox,
        &hostile(&sandbox),
        limits(),
        &[("mode", "net-flood")],
    );
    // std's `TcpStream::connect` creates a socket first: that is refused,
    // so no connection ever gets as far as an address.
    let one = "creating a TCP socket is not granted";
    let want = format!(
        "{} (and 992 more) (then the guest failed: net-flood: 1000 connections refused)",
        [one; 8].join("; ")
    );
    assert_eq!(call.result, Err(AttemptFailure::Denied(want)));
    assert_eq!(pairs, vec![]);
    assert_still_counts_words(&sandbox);
}

/// The reasons a raw host call with arbitrary arguments may end an attempt:
/// wasmtime's canonical-ABI checks and wmr's own bounds.
const CLASSIFIED_TRAPS: &[&str] = &[
    "list pointer/length out of bounds of memory",
    "list pointer is not aligned",
    "string pointer/length out of bounds of memory",
    "incr-counter: the counter name is not valid UTF-8",
    "incr-counter: counter name longer than 256 bytes",
    "incr-counter: counter names starting with `wmr.` are the host's",
    "incr-counter: more than 1024 distinct counters",
    "log: the message is not valid UTF-8",
    "param: the name is not valid UTF-8",
];

fn classified(result: &Result<(), AttemptFailure>, limits: &Limits) -> bool {
    match result {
        Ok(()) => true,
        Err(AttemptFailure::OutputLimit(limit)) => *limit == limits.output_bytes,
        Err(AttemptFailure::Trap(message) | AttemptFailure::Refused(message)) => {
            CLASSIFIED_TRAPS.contains(&message.as_str())
                || message.starts_with("unexpected discriminant: ")
        }
        Err(_) => false,
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 64, ..Default::default() })]

    /// Fuzz of the WIT-facing host imports: raw canonical-ABI calls with
    /// arbitrary pointers, lengths, levels and deltas. Every attempt ends
    /// `Ok` or with a classified reason, within the output, log and counter
    /// bounds; the host never panics.
    #[test]
    fn raw_host_calls_with_arbitrary_arguments_end_only_in_classified_outcomes(
        seed in proptest::prelude::any::<u64>(),
        calls in 1u32..300,
    ) {
        let sandbox = shared_sandbox();
        let limits = Limits { output_bytes: 16 << 10, log_bytes: 1 << 10, ..limits() };
        let (seed, calls) = (seed.to_string(), calls.to_string());
        let params = [("mode", "abi-fuzz"), ("seed", seed.as_str()), ("calls", calls.as_str())];
        let (call, pairs) = call_hostile(&sandbox.0, &sandbox.1, limits.clone(), &params);
        proptest::prop_assert!(classified(&call.result, &limits), "{:?}", call.result);
        let copied: u64 = pairs.iter().map(|(k, v)| (k.len() + v.len()) as u64).sum();
        proptest::prop_assert_eq!(copied, call.bytes_out);
        proptest::prop_assert!(call.bytes_out + 8 * call.records_out <= limits.output_bytes);
        proptest::prop_assert!(call.log.len() as u64 <= limits.log_bytes);
        proptest::prop_assert!(call.counters.len() <= wmr::sandbox::MAX_COUNTERS);
        proptest::prop_assert!(call.counters.keys().all(|k| k.len() <= wmr::sandbox::MAX_COUNTER_NAME_BYTES));
    }
}

/// One sandbox and one compiled hostile module for all fuzz cases.
fn shared_sandbox() -> &'static (Sandbox, LoadedModule) {
    static SHARED: std::sync::OnceLock<(Sandbox, LoadedModule)> = std::sync::OnceLock::new();
    SHARED.get_or_init(|| {
        let sandbox = Sandbox::new().unwrap();
        let module = hostile(&sandbox);
        (sandbox, module)
    })
}

#[test]
fn after_the_abi_fuzz_the_sandbox_still_counts_words() {
    let (sandbox, module) = shared_sandbox();
    for seed in 0..32u64 {
        let seed = seed.to_string();
        let params = [
            ("mode", "abi-fuzz"),
            ("seed", seed.as_str()),
            ("calls", "200"),
        ];
        let (call, _) = call_hostile(sandbox, module, limits(), &params);
        assert!(
            classified(&call.result, &limits()),
            "seed {seed}: {:?}",
            call.result
        );
    }
    assert_still_counts_words(sandbox);
}

/// 2 MiB of stdout and stderr from the hostile guest in `mode`: 128 times
/// the log limit, line by line; slow-ish, hence the time limit.
fn print_flood(sandbox: &Sandbox, mode: &str) -> (CallOutcome, Vec<wmr::shuffle::Pair>) {
    let roomy = Limits {
        timeout_ms: 30_000,
        ..limits()
    };
    call_hostile(sandbox, &hostile(sandbox), roomy, &[("mode", mode)])
}

#[test]
fn a_print_flood_is_cut_at_the_log_limit_and_the_job_still_counts_words() {
    let sandbox = Sandbox::new().unwrap();
    let (call, pairs) = print_flood(&sandbox, "print-flood");
    assert_eq!(call.result, Ok(()));
    assert_flood_kept_head_and_tail(&call.log);
    assert!(call.log.ends_with("PPPP\n"), "{}", tail_of(&call.log));
    assert_eq!(word_counts(pairs), native_word_counts());
}

/// 2 MiB of stdout and stderr against a 16 KiB log limit: the first
/// 12,224 bytes, a line saying what was dropped, the last 4,096 bytes.
fn assert_flood_kept_head_and_tail(log: &str) {
    let head = (16 << 10) - 4096 - 64;
    let dropped = (2 << 20) - head - 4096;
    assert!(log.len() <= 16 << 10, "{} bytes kept", log.len());
    assert!(log[..head].bytes().all(|b| b == b'P' || b == b'\n'));
    let marker = format!("\n[… {dropped} bytes dropped …]\n");
    assert_eq!(&log[head..head + marker.len()], marker);
    assert_eq!(log.len(), head + marker.len() + 4096);
}

fn tail_of(log: &str) -> &str {
    &log[log.len().saturating_sub(200)..]
}

/// A guest that prints past the log limit and then panics: the panic
/// message is at the end of its output, and still names the failure.
#[test]
fn a_panic_after_a_print_flood_keeps_its_message() {
    let sandbox = Sandbox::new().unwrap();
    let (call, pairs) = print_flood(&sandbox, "print-flood-panic");
    let Err(AttemptFailure::Trap(message)) = &call.result else {
        panic!("expected a trap, got {:?}", call.result);
    };
    assert!(
        message.starts_with("wasm trap: wasm `unreachable` instruction executed; thread")
            && message.contains("panicked at")
            && message.ends_with(": gave up after printing 2 MiB"),
        "{message}"
    );
    assert!(
        tail_of(&call.log).contains("gave up after printing 2 MiB\n"),
        "{}",
        tail_of(&call.log)
    );
    assert!(pairs.is_empty());
    assert_still_counts_words(&sandbox);
}

/// Two map tasks each report `max` = i64::MAX: the job's total saturates
/// rather than wrapping (or panicking in a debug build).
#[test]
fn counter_totals_over_tasks_saturate_instead_of_overflowing() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    std::fs::create_dir_all(&input).unwrap();
    std::fs::write(input.join("a.txt"), TEXT).unwrap();
    std::fs::write(input.join("b.txt"), TEXT).unwrap();
    let out = tmp.path().join("out");
    let (guest, input, out) = (path(&guest("hostile")), path(&input), path(&out));
    let run = run_ok(&[
        "run",
        "--map",
        &guest,
        "--input",
        &input,
        "--output",
        &out,
        "--param",
        "mode=counter-extreme",
        "--json",
    ]);
    let summary: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(
        summary["counters"],
        serde_json::json!({ "max": i64::MAX, "min": i64::MIN }),
        "{summary}"
    );
}

/// Issue 10, 3: an attempt's limits hold for all its stores together (skip
/// mode's bisection and the combiner run several). A second store of an
/// attempt that used up its fuel, its time or its output gets none of it
/// back.
#[test]
fn the_stores_of_one_attempt_share_its_fuel_deadline_and_output() {
    let sandbox = Sandbox::new().unwrap();
    let module = hostile(&sandbox);
    let run = |ctx: &AttemptContext| {
        let sink = CollectPairs::default();
        let started = std::time::Instant::now();
        let call = sandbox.run_map(&module, ctx, b"f", TEXT.as_bytes(), Box::new(sink.clone()));
        (call, sink.take(), started.elapsed())
    };

    let fuel = Limits {
        fuel: 200_000_000,
        ..limits()
    };
    let ctx = context(fuel, &[("mode", "loop")]);
    let (first, _, _) = run(&ctx);
    assert_eq!(first.result, Err(AttemptFailure::OutOfFuel(200_000_000)));
    assert_eq!(ctx.fuel_used(), 200_000_000);
    let (second, _, _) = run(&ctx);
    assert_eq!(second.result, Err(AttemptFailure::OutOfFuel(200_000_000)));
    assert_eq!(second.fuel_used, 0, "the second store had no fuel to use");

    let time = Limits {
        fuel: u64::MAX,
        timeout_ms: 300,
        ..limits()
    };
    let ctx = context(time, &[("mode", "loop")]);
    let (first, _, took) = run(&ctx);
    assert_eq!(first.result, Err(AttemptFailure::TimedOut(300)));
    assert!(took >= std::time::Duration::from_millis(300), "{took:?}");
    let (second, _, took) = run(&ctx);
    assert_eq!(second.result, Err(AttemptFailure::TimedOut(300)));
    // Past the deadline already: the first epoch tick (10 ms) ends it.
    assert!(took < std::time::Duration::from_millis(250), "{took:?}");

    let ctx = context(limits(), &[("mode", "flood")]);
    let (first, pairs, _) = run(&ctx);
    assert_eq!(first.result, Err(AttemptFailure::OutputLimit(1 << 20)));
    assert!(!pairs.is_empty());
    assert!(ctx.output_held() <= 1 << 20);
    let (second, pairs, _) = run(&ctx);
    assert_eq!(second.result, Err(AttemptFailure::OutputLimit(1 << 20)));
    assert_eq!(pairs, vec![], "the attempt's output account was full");
    // What a trapped skip-mode range emitted is given back with its pairs.
    ctx.restore_output_held(0);
    let (third, pairs, _) = run(&ctx);
    assert_eq!(third.result, Err(AttemptFailure::OutputLimit(1 << 20)));
    assert!(!pairs.is_empty());
    assert_still_counts_words(&sandbox);
}

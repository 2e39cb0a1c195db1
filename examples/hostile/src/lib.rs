//! Hostile and faulty guests for the sandbox tests, chosen with
//! `--param mode=...`:
//! - `loop`: spins forever in `map`;
//! - `membomb`: allocates without bound;
//! - `flood`: emits pairs without end;
//! - `trap`: panics on the first line containing `--param trap-on=TEXT`,
//!   after busy-waiting `--param map-ms=N` (needs `--grant clock`): skip
//!   mode then bisects slowly;
//! - `escape`: tries to read a file, the environment and the network;
//! - `flaky`: fails attempts numbered up to `--param fail-attempts=N` (the
//!   error ends with `: WHY` given `--param why=WHY`); later attempts
//!   busy-wait `--param ms=N` (needs `--grant clock`) and emit nothing;
//! - `recurse`: recurses without bound;
//! - `sleep`: busy-waits `--param ms=N` per map call (needs `--grant clock`);
//! - `clock`: emits what its wall and monotonic clocks read;
//! - `nap`: sleeps `--param ms=N` in the host (WASI `poll`), then counts words;
//! - `slow-combine`: emits every word with `1` (no counting in `map`); its
//!   combiner busy-waits `--param combine-ms=N` once per call (per batch of
//!   groups, needs `--grant clock`), then sums; it panics on a group whose
//!   key is `--param combine-trap-on=WORD`;
//! - `socket-hoard`: opens unconnected TCP sockets through wasi-libc's
//!   `socket()` until one is refused, keeping them all.
//!
//! Modes that call the host imports with huge or invalid arguments (some
//! through the raw canonical-ABI imports, as a guest not built with the SDK
//! could):
//! - `emit-huge`: one pair with a value of `--param bytes=N` (default 8 MiB);
//! - `emit-alias`: one batch of `--param count=N` (default 65536) pairs whose
//!   keys and values all point at the same 1 MiB buffer;
//! - `emit-empty`: empty pairs without end, in batches of 4096;
//! - `emit-tiny`: 1-byte pairs (key `k`, empty value) without end, in
//!   batches of 4096;
//! - `emit-oob`: a batch whose second pair's key points past linear memory;
//! - `emit-newline-key`: the keys `a\nforged-record 999999` and `\xff\r`
//!   (not UTF-8), value `1`, then counts words;
//! - `counter-long-name`: a counter named with 1 MiB of text;
//! - `trap-multiline`: panics on any input of more than one line, so skip
//!   mode's bisection never finds a bad record;
//! - `counter-reserved`: a counter named like the host's own (`wmr.…`);
//! - `counter-many`: 100,000 distinct counters;
//! - `counter-extreme`: `max` += i64::MAX twice, `min` += i64::MIN twice,
//!   then counts words;
//! - `log-huge`: an 8 MiB log line, then counts words;
//! - `log-invalid-utf8`: a log message of bytes that are not UTF-8;
//! - `log-bad-level`: a log level outside the enum;
//! - `param-huge`: asks for a parameter with an 8 MiB name (must be none),
//!   then counts words;
//! - `error-huge`: fails the attempt with an 8 MiB error message;
//! - `net-flood`: 1,000 refused connections, then fails;
//! - `print-flood`: 1 MiB each to stdout and stderr, then counts words;
//! - `abi-fuzz`: `--param calls=N` pseudo-random raw host calls seeded by
//!   `--param seed=S`, mixing valid and invalid pointers and lengths, then
//!   counts words.
//!
//! Independently of the mode, `--param reduce-trap-on=KEY` makes `reduce`
//! flush some output and then panic on that key, and `--param reduce-ms=N`
//! busy-waits N ms once per reduce attempt.
//!
//! Every mode that finishes counts words like `wordcount`.
#[path = "../../wordcount/src/count.rs"]
mod count;

use std::collections::HashMap;
use std::hint::black_box;
use wmr_guest::{Emitter, Group, Job, Values};

struct Hostile;

impl Job for Hostile {
    fn map(file: &[u8], text: &[u8], out: &mut Emitter) -> Result<(), String> {
        let mode = wmr_guest::param("mode").unwrap_or_default();
        match mode.as_str() {
            "loop" => spin_forever(),
            "membomb" => allocate_forever(),
            "flood" => loop {
                out.emit("flood", "x".repeat(1024));
            },
            "trap" => {
                busy_wait(param_num("map-ms"));
                let poison = wmr_guest::param("trap-on").ok_or("trap needs --param trap-on")?;
                let text = String::from_utf8_lossy(text);
                if let Some(line) = text.lines().find(|l| l.contains(poison.as_str())) {
                    panic!("poisoned record: {line}");
                }
            }
            "trap-multiline" => {
                if text.iter().filter(|&&b| b == b'\n').count() > 1 {
                    panic!("more than one line");
                }
            }
            "escape" => escape(out)?,
            "clock" => read_clocks(out),
            "flaky" => {
                let attempt: u32 = param_num("wmr.attempt");
                let failures: u32 = param_num("fail-attempts");
                if attempt <= failures {
                    let why = wmr_guest::param("why").map(|w| format!(": {w}"));
                    let why = why.unwrap_or_default();
                    return Err(format!("flaky: attempt {attempt} fails on purpose{why}"));
                }
                busy_wait(param_num("ms"));
            }
            "recurse" => {
                black_box(recurse(black_box(1)));
            }
            "sleep" => busy_wait(param_num("ms")),
            "nap" => {
                // Say so first: a test can then act while the guest sleeps.
                out.emit("napping", "");
                out.flush();
                std::thread::sleep(std::time::Duration::from_millis(param_num("ms")));
            }
            "emit-huge" => {
                let bytes: usize = param_num("bytes");
                let bytes = if bytes == 0 { 8 << 20 } else { bytes };
                out.emit("huge", vec![b'v'; bytes]);
                out.flush();
            }
            "emit-alias" => emit_alias(),
            "emit-tiny" => loop {
                let batch = vec![RawPair::of(b"k", b""); 4096];
                // SAFETY: a valid list of valid pairs.
                unsafe { raw::emit(batch.as_ptr().cast_mut().cast(), batch.len()) };
            },
            "slow-combine" => {
                for word in text
                    .split(u8::is_ascii_whitespace)
                    .filter(|w| !w.is_empty())
                {
                    out.emit(word, "1");
                }
                return Ok(());
            }
            "socket-hoard" => socket_hoard()?,
            "emit-empty" => loop {
                let batch = vec![RawPair::default(); 4096];
                // SAFETY: a valid list of valid (empty) pairs.
                unsafe { raw::emit(batch.as_ptr().cast_mut().cast(), batch.len()) };
            },
            "emit-oob" => {
                let key = b"key";
                let pairs = [
                    RawPair::of(key, key),
                    RawPair {
                        key_ptr: u32::MAX - 16,
                        key_len: 1024,
                        ..RawPair::of(key, key)
                    },
                ];
                // SAFETY: the host must refuse the out-of-bounds pair.
                unsafe { raw::emit(pairs.as_ptr().cast_mut().cast(), pairs.len()) };
            }
            "emit-framed-cut" => {
                // One whole pair (`a` → `b`), then a key of 5 bytes of
                // which the buffer holds 2.
                let framed = [1, b'a', 1, b'b', 5, b'k', b'e'];
                wmr_guest::bindings::wmr::mapreduce::host::emit_framed(&framed);
            }
            "emit-newline-key" => {
                out.emit("a\nforged-record 999999", "1");
                out.emit(b"\xff\r", "1");
            }
            "counter-long-name" => wmr_guest::incr_counter(&"c".repeat(1 << 20), 1),
            "counter-reserved" => wmr_guest::incr_counter("wmr.map.spills", 1_000),
            "counter-many" => {
                for i in 0..100_000 {
                    wmr_guest::incr_counter(&format!("c{i}"), 1);
                }
            }
            "counter-extreme" => {
                for _ in 0..2 {
                    wmr_guest::incr_counter("max", i64::MAX);
                    wmr_guest::incr_counter("min", i64::MIN);
                }
            }
            "log-huge" => wmr_guest::log(wmr_guest::Level::Info, &"L".repeat(8 << 20)),
            "log-invalid-utf8" => {
                let bytes = [b'o', b'k', 0xff, 0xfe];
                // SAFETY: in-bounds bytes; their encoding is the host's to refuse.
                unsafe { raw::log(2, bytes.as_ptr().cast_mut(), bytes.len()) };
            }
            "log-bad-level" => {
                let bytes = b"level 99";
                // SAFETY: the level is out of range; the host must refuse it.
                unsafe { raw::log(99, bytes.as_ptr().cast_mut(), bytes.len()) };
            }
            "param-huge" => {
                if let Some(value) = wmr_guest::param(&"p".repeat(8 << 20)) {
                    return Err(format!("a parameter with an 8 MiB name: {value:?}"));
                }
            }
            "error-huge" => return Err("E".repeat(8 << 20)),
            "net-flood" => {
                let refused = (0..1000)
                    .filter(|_| std::net::TcpStream::connect("127.0.0.1:9").is_err())
                    .count();
                return Err(format!("net-flood: {refused} connections refused"));
            }
            "print-flood" | "print-flood-panic" => {
                let line = "P".repeat(1023);
                for _ in 0..(1 << 10) {
                    println!("{line}");
                    eprintln!("{line}");
                }
                if mode == "print-flood-panic" {
                    panic!("gave up after printing 2 MiB");
                }
            }
            "abi-fuzz" => abi_fuzz(param_num("seed"), param_num("calls")),
            "" => {}
            other => return Err(format!("unknown mode {other:?}")),
        }
        let _ = file;
        let mut counts = HashMap::new();
        count::count_words(text, &mut counts);
        for (word, n) in counts {
            out.emit(word.0, n.to_string());
        }
        Ok(())
    }

    fn combine(group: &Group, out: &mut Emitter) -> Option<Result<(), String>> {
        // Per instance, that is per combine call (a fresh store each).
        static WAITED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        static MODE: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
        if MODE.get_or_init(|| wmr_guest::param("mode")).as_deref() != Some("slow-combine") {
            return None;
        }
        if !WAITED.swap(true, std::sync::atomic::Ordering::Relaxed) {
            busy_wait(param_num("combine-ms"));
        }
        if wmr_guest::param("combine-trap-on").is_some_and(|k| k.as_bytes() == group.key) {
            panic!("poisoned key in combine");
        }
        let total: u64 = group.values.iter().map(|v| wmr_guest::parse_u64(v)).sum();
        out.emit(&group.key, total.to_string());
        Some(Ok(()))
    }

    fn reduce(key: &[u8], values: Values, out: &mut Emitter) -> Result<(), String> {
        // `--param reduce-ms=N`: busy-wait N ms once per reduce attempt (a
        // fresh instance per attempt, so the flag starts false each time).
        static WAITED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        if !WAITED.swap(true, std::sync::atomic::Ordering::Relaxed) {
            busy_wait(param_num("reduce-ms"));
        }
        if wmr_guest::param("reduce-trap-on").is_some_and(|k| k.as_bytes() == key) {
            // Make sure some output reached the host before the trap.
            out.flush();
            panic!("poisoned key in reduce");
        }
        let total: u64 = values.map(|v| wmr_guest::parse_u64(&v)).sum();
        out.emit(key, total.to_string());
        Ok(())
    }
}

fn param_num<T: std::str::FromStr + Default>(name: &str) -> T {
    wmr_guest::param(name)
        .and_then(|v| v.parse().ok())
        .unwrap_or_default()
}

/// Spin for `ms` milliseconds of the guest's clock (zero without
/// `--grant clock`, so then not at all).
fn busy_wait(ms: u64) {
    let start = std::time::Instant::now();
    while start.elapsed().as_millis() < u128::from(ms) {
        black_box(0);
    }
}

/// Unconnected sockets until one is refused (each was a host fd).
fn socket_hoard() -> Result<(), String> {
    unsafe extern "C" {
        // wasi-libc: `wasi:sockets/tcp-create-socket` behind a descriptor.
        fn socket(domain: i32, kind: i32, protocol: i32) -> i32;
    }
    // wasi-libc's AF_INET and SOCK_STREAM.
    const AF_INET: i32 = 1;
    const SOCK_STREAM: i32 = 6;
    let mut kept = Vec::new();
    for i in 0..1_000_000 {
        // SAFETY: a libc call with plain integer arguments.
        let fd = unsafe { socket(AF_INET, SOCK_STREAM, 0) };
        if fd < 0 {
            return Err(format!(
                "socket {i} refused: {}",
                std::io::Error::last_os_error()
            ));
        }
        kept.push(fd);
    }
    Err(format!("{} sockets held", black_box(kept).len()))
}

fn spin_forever() -> ! {
    let mut n = 0u64;
    loop {
        n = black_box(n.wrapping_add(1));
    }
}

fn allocate_forever() -> ! {
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        // Touch every page so the memory is really used.
        hoard.push(vec![0xA5; 1 << 20]);
        black_box(&hoard);
    }
}

#[allow(unconditional_recursion, reason = "unbounded recursion is the point")]
fn recurse(n: u64) -> u64 {
    let pad = black_box([n; 64]);
    recurse(black_box(n + 1)) + pad[3]
}

/// Tries to escape the sandbox. Anything it manages to read is emitted, so a
/// leak shows up in the job's output; when everything is refused it fails
/// with what each attempt got.
fn escape(out: &mut Emitter) -> Result<(), String> {
    let mut refused = Vec::new();
    match std::fs::read_to_string("/etc/passwd") {
        Ok(stolen) => out.emit("leak:file", stolen),
        Err(e) => refused.push(format!("file: {e}")),
    }
    match std::env::var("HOME").or_else(|_| std::env::var("PATH")) {
        Ok(stolen) => out.emit("leak:env", stolen),
        Err(e) => refused.push(format!("env: {e}")),
    }
    match std::net::TcpStream::connect("127.0.0.1:9") {
        Ok(_) => out.emit("leak:net", "connected"),
        Err(e) => refused.push(format!("net: {e}")),
    }
    if refused.len() == 3 {
        return Err(format!("escape refused: {}", refused.join("; ")));
    }
    Ok(())
}

/// The host imports as the canonical ABI lowers them: pointers and lengths
/// into this guest's linear memory, whatever they hold.
mod raw {
    #[link(wasm_import_module = "wmr:mapreduce/host@0.2.0")]
    unsafe extern "C" {
        #[link_name = "emit"]
        pub fn emit(pairs: *mut u8, len: usize);
        #[link_name = "incr-counter"]
        pub fn incr_counter(name: *mut u8, len: usize, delta: i64);
        #[link_name = "log"]
        pub fn log(level: i32, message: *mut u8, len: usize);
        #[link_name = "param"]
        pub fn param(name: *mut u8, len: usize, ret: *mut u8);
    }
}

/// A `pair` in the canonical ABI: two (pointer, length) lists.
#[derive(Clone, Copy, Default)]
#[repr(C)]
struct RawPair {
    key_ptr: u32,
    key_len: u32,
    value_ptr: u32,
    value_len: u32,
}

impl RawPair {
    fn of(key: &[u8], value: &[u8]) -> Self {
        RawPair {
            key_ptr: key.as_ptr() as u32,
            key_len: key.len() as u32,
            value_ptr: value.as_ptr() as u32,
            value_len: value.len() as u32,
        }
    }
}

/// One batch whose pairs all alias one buffer: lifted eagerly it would be
/// `count` × 2 MiB on the host.
fn emit_alias() {
    let count: usize = param_num("count");
    let count = if count == 0 { 1 << 16 } else { count };
    let buffer = vec![b'a'; 1 << 20];
    let pairs = vec![RawPair::of(&buffer, &buffer); count];
    // SAFETY: every pointer is in bounds; aliasing is legal in the ABI.
    unsafe { raw::emit(pairs.as_ptr().cast_mut().cast(), pairs.len()) };
    black_box(&buffer);
}

/// xorshift64*: deterministic, no dependencies.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Raw host calls with arguments drawn from `seed`: mostly well-formed,
/// sometimes out of bounds, misaligned, huge, not UTF-8 or out of range.
/// The return area of `param` is always valid, so the host never writes
/// over this guest's own data.
fn abi_fuzz(seed: u64, calls: u32) {
    // splitmix64 of the seed: neighbouring seeds start far apart.
    let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    let mut rng = Rng((z ^ (z >> 31)) | 1);
    // ASCII, then a last KiB that is mostly not UTF-8.
    const TEXT: usize = 63 << 10;
    let mut buffer = vec![0u8; 64 << 10];
    for (i, b) in buffer.iter_mut().enumerate() {
        *b = if i >= TEXT && rng.below(4) == 0 {
            0xff
        } else {
            b'a' + rng.below(26) as u8
        };
    }
    let base = buffer.as_ptr() as u32;
    let memory_end = (core::arch::wasm32::memory_size(0) * 65536) as u32;
    let mut pairs = vec![RawPair::default(); 64];
    let mut ret = [0u64; 2];
    for _ in 0..calls {
        // (pointer, length): inside the buffer, at the end of memory,
        // anywhere, or huge.
        let span = |rng: &mut Rng| -> (u32, u32) {
            match rng.below(256) {
                0 => (memory_end - rng.below(64) as u32, rng.below(256) as u32),
                1 => (rng.next() as u32, rng.next() as u32),
                2 => (
                    base + rng.below(1024) as u32,
                    u32::MAX - rng.below(4) as u32,
                ),
                3 => (
                    base + TEXT as u32 + rng.below(512) as u32,
                    rng.below(64) as u32,
                ),
                _ => {
                    let at = rng.below(TEXT as u64);
                    let len = match rng.below(16) {
                        0 => rng.below(TEXT as u64 - at + 1),
                        _ => rng.below((TEXT as u64 - at).min(300) + 1),
                    };
                    (base + at as u32, len as u32)
                }
            }
        };
        // SAFETY: the host reads what these point at, or refuses them; it
        // writes only into `ret` and memory it allocates through the SDK's
        // `cabi_realloc`.
        unsafe {
            match rng.below(4) {
                0 => {
                    let n = match rng.below(8) {
                        0 => rng.below(pairs.len() as u64 + 1),
                        _ => rng.below(5),
                    } as usize;
                    for pair in pairs.iter_mut().take(n) {
                        (pair.key_ptr, pair.key_len) = span(&mut rng);
                        (pair.value_ptr, pair.value_len) = span(&mut rng);
                    }
                    let (mut list, mut len) = (pairs.as_ptr() as u32, n as u32);
                    match rng.below(64) {
                        0 => list += 1 + rng.below(3) as u32,
                        1 => len = u32::MAX / 16,
                        _ => {}
                    }
                    raw::emit(list as usize as *mut u8, len as usize);
                }
                1 => {
                    // Mostly a few short names, so that counters repeat.
                    let (ptr, len) = match rng.below(8) {
                        0 => span(&mut rng),
                        _ => (base + rng.below(16) as u32, 1 + rng.below(3) as u32),
                    };
                    let delta = match rng.below(4) {
                        0 => i64::MAX,
                        1 => i64::MIN,
                        _ => rng.below(100) as i64 - 50,
                    };
                    raw::incr_counter(ptr as usize as *mut u8, len as usize, delta);
                }
                2 => {
                    let (ptr, len) = span(&mut rng);
                    let level = if rng.below(64) == 0 {
                        rng.next() as i32
                    } else {
                        rng.below(5) as i32
                    };
                    raw::log(level, ptr as usize as *mut u8, len as usize);
                }
                _ => {
                    let (ptr, len) = span(&mut rng);
                    raw::param(
                        ptr as usize as *mut u8,
                        len as usize,
                        ret.as_mut_ptr().cast(),
                    );
                }
            }
        }
    }
    black_box(&buffer);
}

wmr_guest::export!(Hostile);

/// `clock` mode: what the guest's clocks say. Emits `clock:wall-secs` (the
/// wall clock's seconds since 1970) and `clock:monotonic-moves` (whether
/// the monotonic clock advanced during a bounded spin).
fn read_clocks(out: &mut Emitter) {
    let wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let start = std::time::Instant::now();
    let mut spins = 0u64;
    while start.elapsed().is_zero() && spins < 1_000_000 {
        spins = black_box(spins + 1);
    }
    out.emit("clock:wall-secs", wall.to_string());
    out.emit(
        "clock:monotonic-moves",
        (!start.elapsed().is_zero()).to_string(),
    );
}

//! Hostile and faulty guests for the sandbox tests, chosen with
//! `--param mode=...`:
//! - `loop`: spins forever in `map`;
//! - `membomb`: allocates without bound;
//! - `flood`: emits pairs without end;
//! - `trap`: panics on the first line containing `--param trap-on=TEXT`;
//! - `escape`: tries to read a file, the environment and the network;
//! - `flaky`: fails attempts numbered up to `--param fail-attempts=N`;
//! - `recurse`: recurses without bound;
//! - `sleep`: busy-waits `--param ms=N` per map call.
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
use wmr_guest::{Emitter, Group, Job};

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
                let poison = wmr_guest::param("trap-on").ok_or("trap needs --param trap-on")?;
                let text = String::from_utf8_lossy(text);
                if let Some(line) = text.lines().find(|l| l.contains(poison.as_str())) {
                    panic!("poisoned record: {line}");
                }
            }
            "escape" => escape(out)?,
            "flaky" => {
                let attempt: u32 = param_num("wmr.attempt");
                let failures: u32 = param_num("fail-attempts");
                if attempt <= failures {
                    return Err(format!("flaky: attempt {attempt} fails on purpose"));
                }
            }
            "recurse" => {
                black_box(recurse(black_box(1)));
            }
            "sleep" => {
                let ms: u64 = param_num("ms");
                let start = std::time::Instant::now();
                while start.elapsed().as_millis() < u128::from(ms) {
                    black_box(0);
                }
            }
            "" => {}
            other => return Err(format!("unknown mode {other:?}")),
        }
        let _ = file;
        let text = String::from_utf8_lossy(text);
        let mut counts = HashMap::new();
        count::count_words(&text, &mut counts);
        for (word, n) in counts {
            out.emit(word, n.to_string());
        }
        Ok(())
    }

    fn reduce(group: &Group, out: &mut Emitter) -> Result<(), String> {
        // `--param reduce-ms=N`: busy-wait N ms once per reduce attempt (a
        // fresh instance per attempt, so the flag starts false each time).
        static WAITED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        if !WAITED.swap(true, std::sync::atomic::Ordering::Relaxed) {
            let ms: u64 = param_num("reduce-ms");
            let start = std::time::Instant::now();
            while start.elapsed().as_millis() < u128::from(ms) {
                black_box(0);
            }
        }
        if wmr_guest::param("reduce-trap-on").is_some_and(|k| k.as_bytes() == group.key) {
            // Make sure some output reached the host before the trap.
            out.flush();
            panic!("poisoned key in reduce");
        }
        let total: u64 = group.values.iter().map(|v| wmr_guest::parse_u64(v)).sum();
        out.emit(&group.key, total.to_string());
        Ok(())
    }
}

fn param_num<T: std::str::FromStr + Default>(name: &str) -> T {
    wmr_guest::param(name)
        .and_then(|v| v.parse().ok())
        .unwrap_or_default()
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

wmr_guest::export!(Hostile);

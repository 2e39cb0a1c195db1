//! Shared helpers for the end-to-end tests: build the guests once, run the
//! real `wmr` binary, compute the sequential reference, compare outputs.
#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, MutexGuard, OnceLock};

pub mod cluster;
pub mod netns;
pub mod s3;
pub mod status;

/// The repository root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The bundled books.
pub fn books() -> PathBuf {
    root().join("examples/data")
}

/// A guest component by crate name (`wordcount`, `hostile`, ...), built once
/// per test binary with the same command as `just guests`.
pub fn guest(name: &str) -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let dir = BUILT.get_or_init(|| {
        let target = root().join("target/guests");
        let status = Command::new(env!("CARGO"))
            .current_dir(root())
            .args([
                "build",
                "--release",
                "--target",
                "wasm32-wasip2",
                "--manifest-path",
            ])
            .arg(root().join("examples/Cargo.toml"))
            .arg("--target-dir")
            .arg(&target)
            .status()
            .expect("running cargo to build the guests");
        assert!(
            status.success(),
            "building the guests failed (is wasm32-wasip2 installed? `just setup`)"
        );
        target.join("wasm32-wasip2/release")
    });
    let path = dir.join(format!("{}.wasm", name.replace('-', "_")));
    assert!(path.is_file(), "no guest at {}", path.display());
    path
}

/// The `wmr` binary under test. Its default compile cache is one the test
/// binaries share under the target directory (not the user's): tests then
/// compile each guest about once, and concurrent tests exercise concurrent
/// use of one cache.
pub fn wmr() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wmr"));
    cmd.env("WMR_LOG", "warn")
        .env("XDG_CACHE_HOME", test_cache_home());
    cmd
}

/// `XDG_CACHE_HOME` of the `wmr` processes the tests start.
pub fn test_cache_home() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("wmr-test-cache")
}

/// Run `wmr` with `args`; the output, whatever the exit status.
pub fn run(args: &[&str]) -> Output {
    wmr().args(args).output().expect("running wmr")
}

/// Run `wmr` and insist that it succeeds.
pub fn run_ok(args: &[&str]) -> Output {
    let out = run(args);
    assert!(
        out.status.success(),
        "wmr {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Run `wmr`, insist that it fails, and return its stderr.
pub fn run_err(args: &[&str]) -> String {
    let out = run(args);
    assert!(!out.status.success(), "wmr {args:?} unexpectedly succeeded");
    assert_eq!(out.status.code(), Some(1), "wmr {args:?}: exit code");
    String::from_utf8(out.stderr).unwrap()
}

/// All lines of the committed part files, sorted.
pub fn sorted_output(dir: &Path) -> Vec<String> {
    assert!(
        dir.join("_SUCCESS").is_file(),
        "{}: no _SUCCESS",
        dir.display()
    );
    let mut lines = Vec::new();
    for file in part_files(dir) {
        let text = std::fs::read_to_string(&file).unwrap();
        lines.extend(text.lines().map(str::to_string));
    }
    lines.sort();
    lines
}

/// The `part-r-*` files of an output directory, sorted by name.
pub fn part_files(dir: &Path) -> Vec<PathBuf> {
    let mut parts: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| entries.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    parts.retain(|p| {
        p.file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("part-r-")
    });
    parts.sort();
    parts
}

/// The summary `wmr run --json` printed.
pub fn summary_json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).expect("--json prints JSON")
}

/// The sequential reference (`wmr seq`), lines sorted.
pub fn reference(map: &Path, inputs: &[&Path], params: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = vec!["seq".into(), "--map".into(), path(map)];
    for input in inputs {
        args.extend(["--input".into(), path(input)]);
    }
    for param in params {
        args.extend(["--param".into(), param.to_string()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    sorted_lines_of(&args)
}

/// The lines `wmr ARGS` prints (e.g. a `seq` with its own flags), sorted.
pub fn sorted_lines_of(args: &[&str]) -> Vec<String> {
    let out = run_ok(args);
    let mut lines: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    lines.sort();
    lines
}

pub fn path(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

/// Text files generated from `seed`: words with non-ASCII letters, digits
/// and punctuation between them, a line longer than the split size, an
/// empty file and a file without a final newline.
pub fn generated_corpus(dir: &Path, seed: u64) {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let words = [
        "map",
        "reduce",
        "Wasm",
        "épée",
        "naïve",
        "Straße",
        "日本語",
        "καλημέρα",
        "x",
        "THE",
    ];
    let seps = [" ", " ", ", ", ". ", "42", " -- ", "\t", "\n", "\n", "'"];
    std::fs::create_dir_all(dir).unwrap();
    for f in 0..4 {
        let mut text = String::new();
        for _ in 0..rng.random_range(2_000..20_000) {
            text.push_str(words[rng.random_range(0..words.len())]);
            text.push_str(seps[rng.random_range(0..seps.len())]);
        }
        if f == 1 {
            // One line far longer than the split size used in the tests.
            text.push_str(&"long ".repeat(100_000));
        }
        if f == 2 {
            text.push_str("no final newline");
        } else {
            text.push('\n');
        }
        std::fs::write(dir.join(format!("gen-{f}.txt")), text).unwrap();
    }
    std::fs::write(dir.join("gen-empty.txt"), "").unwrap();
}

// ---- shared by the multi-process suites ----

/// The sequential reference over the books, computed once per guest.
pub fn books_reference(guest_name: &str) -> Vec<String> {
    static CACHE: Mutex<Option<HashMap<String, Vec<String>>>> = Mutex::new(None);
    let mut cache = CACHE.lock().unwrap_or_else(|p| p.into_inner());
    cache
        .get_or_insert_with(HashMap::new)
        .entry(guest_name.to_string())
        .or_insert_with(|| {
            let expected = reference(&guest(guest_name), &[&books()], &[]);
            assert!(expected.len() > 1000, "the reference is not trivial");
            expected
        })
        .clone()
}

/// The committed output of a job over the books (with `_SUCCESS`, one part
/// file per reducer) equals the sequential reference; on a difference, say
/// where instead of printing both.
pub fn assert_output_equals_reference(out: &Path, guest_name: &str, reducers: u64) {
    let expected = books_reference(guest_name);
    let got = sorted_output(out);
    assert_eq!(
        part_files(out).len() as u64,
        reducers,
        "{}: one part file per reducer",
        out.display()
    );
    if got != expected {
        let first = got
            .iter()
            .zip(&expected)
            .position(|(g, e)| g != e)
            .unwrap_or(got.len().min(expected.len()));
        panic!(
            "{}: {guest_name} output differs from the sequential reference: {} lines vs {} expected; first difference at sorted line {first}: got {:?}, expected {:?}",
            out.display(),
            got.len(),
            expected.len(),
            got.get(first),
            expected.get(first)
        );
    }
}

/// Every file under `dir`, by relative path, with its bytes.
pub fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(base: &Path, dir: &Path, into: &mut BTreeMap<String, Vec<u8>>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            let name = path
                .strip_prefix(base)
                .unwrap()
                .to_string_lossy()
                .to_string();
            if entry.file_type().unwrap().is_dir() {
                into.insert(format!("{name}/"), Vec::new());
                walk(base, &path, into);
            } else {
                into.insert(name, std::fs::read(&path).unwrap());
            }
        }
    }
    let mut files = BTreeMap::new();
    walk(dir, dir, &mut files);
    files
}

/// The hostile guest's `sleep` mode: it busy-waits on the clock, which the
/// job must grant.
pub fn sleep_params(ms: u32) -> Vec<String> {
    vec![
        "--param".into(),
        "mode=sleep".into(),
        "--param".into(),
        format!("ms={ms}"),
        "--grant".into(),
        "clock".into(),
    ]
}

pub fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// The tests of this file run one at a time.
pub fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

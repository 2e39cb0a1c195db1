//! Guests written in Python and JavaScript (guest-sdk/python, guest-sdk/js):
//! the real `wmr` binary runs the examples' components and their output is
//! compared with the Rust word count's, byte for byte; an exception in a
//! guest fails the attempt with the exception's text.
//!
//! Such a component is 12-19 MB and takes seconds to compile, so each test
//! starts its `wmr` processes at once and waits for all of them.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use support::*;

/// A Python (`py`) or JavaScript (`js`) guest, built by `just guests-py` /
/// `just guests-js` (once per test binary; they rebuild only what changed).
fn poly_guest(lang: &str, name: &str) -> PathBuf {
    static PY: OnceLock<()> = OnceLock::new();
    static JS: OnceLock<()> = OnceLock::new();
    let once = if lang == "py" { &PY } else { &JS };
    once.get_or_init(|| {
        let status = Command::new("just")
            .current_dir(root())
            .arg(format!("guests-{lang}"))
            .status()
            .expect("running just (cargo install just --locked)");
        assert!(status.success(), "just guests-{lang} failed");
    });
    let path = root().join(format!("target/guests/{lang}/{name}.wasm"));
    assert!(path.is_file(), "no guest at {}", path.display());
    path
}

/// Start `wmr` with `args` (stdout and stderr captured).
fn start(args: &[String]) -> Child {
    wmr()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting wmr")
}

fn finish(child: Child, what: &str) -> Output {
    let out = child.wait_with_output().expect("waiting for wmr");
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn run_args(
    guest: &Path,
    inputs: &[&Path],
    out: &Path,
    reducers: u32,
    extra: &[&str],
) -> Vec<String> {
    let mut args: Vec<String> = vec!["run".into(), "--map".into(), path(guest)];
    for input in inputs {
        args.extend(["--input".into(), path(input)]);
    }
    args.extend([
        "--output".into(),
        path(out),
        "--reducers".into(),
        reducers.to_string(),
        "--json".into(),
    ]);
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// Each part file's bytes, by name.
fn parts(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    assert!(
        dir.join("_SUCCESS").is_file(),
        "{}: no _SUCCESS",
        dir.display()
    );
    part_files(dir)
        .into_iter()
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&p).unwrap())
        })
        .collect()
}

/// Words on which Python's `str.isalpha` or a naive JavaScript rule would
/// differ from Rust's `char::is_alphabetic`: a Roman numeral (Nl), a
/// circled letter and a Devanagari vowel sign (Other_Alphabetic), letters
/// outside the BMP, digits and `_` inside words, and bytes that are not
/// UTF-8.
fn tricky_input(dir: &Path) -> PathBuf {
    let file = dir.join("tricky.txt");
    let mut text: Vec<u8> = "Chapter Ⅻ: Ⓐnna met नमस्ते and 𝒜𝒷𝒸, x1y2 snake_case naïve Straße ½ ²\n"
        .as_bytes()
        .to_vec();
    text.extend_from_slice(b"bad\xffbytes \xe2\x82 cut \xc3\n");
    std::fs::write(&file, text).unwrap();
    file
}

/// The Python and JavaScript word counts equal the Rust word count, part
/// file for part file, with one reducer and with three, over the bundled
/// books plus a file of characters where word rules tend to differ.
#[test]
fn python_and_js_word_counts_equal_the_rust_word_count() {
    let tmp = tempfile::tempdir().unwrap();
    let tricky = tricky_input(tmp.path());
    let books = books();
    let inputs = [books.as_path(), tricky.as_path()];
    let guests = [
        ("rust", guest("wordcount")),
        ("py", poly_guest("py", "wordcount")),
        ("js", poly_guest("js", "wordcount")),
    ];
    let mut running = Vec::new();
    for reducers in [1, 3] {
        for (lang, guest) in &guests {
            let out = tmp.path().join(format!("{lang}-r{reducers}"));
            let child = start(&run_args(guest, &inputs, &out, reducers, &[]));
            running.push((format!("{lang} word count, R = {reducers}"), child, out));
        }
    }
    let outputs: Vec<(String, PathBuf)> = running
        .into_iter()
        .map(|(what, child, out)| {
            finish(child, &what);
            (what, out)
        })
        .collect();
    // The Rust word count itself agrees with the sequential reference.
    let expected = reference(&guests[0].1, &inputs, &[]);
    assert!(expected.len() > 1000, "the reference is not trivial");
    for (what, out) in &outputs {
        if what.starts_with("rust") {
            assert_eq!(sorted_output(out), expected, "{what}");
        }
    }
    for reducers in [1, 3] {
        let rust = parts(&tmp.path().join(format!("rust-r{reducers}")));
        assert_eq!(rust.len(), reducers);
        for lang in ["py", "js"] {
            let got = parts(&tmp.path().join(format!("{lang}-r{reducers}")));
            assert_eq!(
                got.keys().collect::<Vec<_>>(),
                rust.keys().collect::<Vec<_>>()
            );
            for (name, bytes) in &rust {
                if got[name] != *bytes {
                    let mine = String::from_utf8_lossy(&got[name]);
                    let theirs = String::from_utf8_lossy(bytes);
                    let diff = mine
                        .lines()
                        .zip(theirs.lines())
                        .find(|(a, b)| a != b)
                        .map(|(a, b)| format!("{lang}: {a:?}, rust: {b:?}"))
                        .unwrap_or_else(|| "one is a prefix of the other".into());
                    panic!("{lang} word count, R = {reducers}: {name} differs: {diff}");
                }
            }
        }
    }
    // The tricky file has words only Rust's rule makes: a Roman numeral,
    // a circled letter, a vowel sign (the virama before it is no letter).
    for word in [
        "Ⅻ",
        "Ⓐnna",
        "नमस",
        "ते",
        "𝒜𝒷𝒸",
        "bad",
        "bytes",
        "x",
        "y",
        "snake",
    ] {
        assert!(
            expected
                .iter()
                .any(|l| l.strip_prefix(word).is_some_and(|r| r.starts_with(' '))),
            "{word} is a word to Rust"
        );
    }
}

/// A Python guest that raises and a JavaScript guest that throws fail their
/// attempts (every attempt, retried as attempts are) with the exception's
/// text; `wmr` reports the failed job and exits with status 1.
#[test]
fn a_python_exception_and_a_js_throw_fail_the_attempt_with_their_text() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in.txt");
    std::fs::write(&input, "x = 1\nsecond line\n").unwrap();
    let cases = [
        (
            poly_guest("py", "raises"),
            "ValueError: bad record: 'x = 1' (at raises.py:7 in parse)",
        ),
        (
            poly_guest("js", "throws"),
            "RangeError: bad record: x = 1 (at parse@throws.js:",
        ),
    ];
    let running: Vec<(Child, &str)> = cases
        .iter()
        .enumerate()
        .map(|(i, (guest, text))| {
            let out = tmp.path().join(format!("out-{i}"));
            let args = run_args(guest, &[&input], &out, 1, &["--max-attempts", "2"]);
            (start(&args), *text)
        })
        .collect();
    for (child, text) in running {
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        let expected = format!(
            // The retry goes to the other worker.
            "error: job failed: task m-00000 failed 2 times on w1, w2; last: w2 a2: guest returned an error: {text}"
        );
        assert!(
            stderr.starts_with(&expected),
            "{stderr}\nexpected: {expected}"
        );
        let summary = summary_json(&Output {
            status: out.status,
            stdout: out.stdout,
            stderr: Vec::new(),
        });
        let attempts = summary["attempt_log"].as_array().unwrap();
        assert_eq!(attempts.len(), 2, "{summary}");
        for attempt in attempts {
            let error = attempt["outcome"]["Failed"]["GuestError"].as_str().unwrap();
            assert!(error.starts_with(text), "{error}");
        }
    }
}

/// The wordstats examples (parameters, counters, log, combine) give the
/// same output and counters in Python and JavaScript, and both equal what
/// the Rust word count's output implies.
#[test]
fn wordstats_in_python_and_js_follow_their_parameters() {
    let tmp = tempfile::tempdir().unwrap();
    let params = [
        "--shuffle-compression",
        "none",
        "--param",
        "min-length=3",
        "--param",
        "fold=yes",
        "--param",
        "min-count=5",
    ];
    let running: Vec<(&str, Child, PathBuf)> = ["py", "js"]
        .into_iter()
        .map(|lang| {
            let out = tmp.path().join(lang);
            let args = run_args(
                &poly_guest(lang, "wordstats"),
                &[&books()],
                &out,
                2,
                &params,
            );
            (lang, start(&args), out)
        })
        .collect();
    // What the Rust word count implies: words of at least 3 letters,
    // lower-cased (the books are ASCII), seen at least 5 times.
    let mut folded: BTreeMap<String, u64> = BTreeMap::new();
    let (mut words, mut skipped) = (0, 0);
    for line in books_reference("wordcount") {
        let (word, n) = line.split_once(' ').unwrap();
        let n: u64 = n.parse().unwrap();
        if word.chars().count() < 3 {
            skipped += n;
        } else {
            words += n;
            *folded.entry(word.to_lowercase()).or_default() += n;
        }
    }
    let mut expected: Vec<String> = folded
        .iter()
        .filter(|&(_, &n)| n >= 5)
        .map(|(w, n)| format!("{w} {n}"))
        .collect();
    expected.sort();
    for (lang, child, out) in running {
        let run = finish(child, &format!("{lang} wordstats"));
        assert_eq!(sorted_output(&out), expected, "{lang} wordstats");
        let counters = &summary_json(&run)["counters"];
        assert_eq!(counters["words"], words, "{lang}: {counters}");
        assert_eq!(counters["skipped"], skipped, "{lang}: {counters}");
        assert_eq!(counters["distinct"], expected.len(), "{lang}: {counters}");
        // The combiner ran: without it each of the `words` pairs (a key of
        // at least 3 bytes and the value "1") would leave the map side.
        let map_out: u64 = summary_json(&run)["attempt_log"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["task"].get("Map").is_some())
            .map(|a| a["stats"]["bytes_out"].as_u64().unwrap())
            .sum();
        assert!(map_out < 4 * words, "{lang}: {map_out} bytes out of map");
    }
}

/// The second `wmr run` of the Python word count loads the compiled
/// component from the compile cache (the summary counts the hit) instead
/// of compiling it again, and gives the same output.
#[test]
fn the_second_python_run_loads_its_compiled_component_from_the_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let guest = poly_guest("py", "wordcount");
    let books = books();
    let mut summaries = Vec::new();
    for run in ["first", "second"] {
        let out = tmp.path().join(run);
        let mut args = run_args(&guest, &[books.as_path()], &out, 2, &[]);
        args.extend(["--cache-dir".into(), path(&cache)]);
        let started = std::time::Instant::now();
        let output = finish(start(&args), &format!("{run} python run"));
        eprintln!(
            "{run} run of the Python word count: {:?}",
            started.elapsed()
        );
        let summary: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        summaries.push((summary["compile_cache"].clone(), sorted_output(&out)));
    }
    let (first, second) = (&summaries[0], &summaries[1]);
    assert_eq!(first.0["hits"], 0, "{}", first.0);
    assert_eq!(first.0["misses"], 1, "{}", first.0);
    assert_eq!(second.0["hits"], 1, "{}", second.0);
    assert_eq!(second.0["misses"], 0, "{}", second.0);
    assert_eq!(
        first.1, second.1,
        "the cached component gives the same output"
    );
    assert!(first.1.len() > 1000, "the output is not trivial");
}

//! # wmr-guest: write wmr map/reduce jobs in plain Rust
//!
//! Implement [`Job`] for a unit struct and export it with [`export!`]. Build
//! with `cargo build --release --target wasm32-wasip2`; the `cdylib` is a
//! Wasm component that fits the `wmr:mapreduce/job` world and can be passed
//! to `wmr run` as both `--map` and `--reduce`.
//!
//! ```ignore
//! use std::collections::HashMap;
//! use wmr_guest::{Emitter, Job, Values};
//!
//! struct WordCount;
//!
//! impl Job for WordCount {
//!     fn map(_file: &[u8], text: &[u8], out: &mut Emitter) -> Result<(), String> {
//!         let text = String::from_utf8_lossy(text);
//!         // Count inside the guest: one pair per distinct word, not per word.
//!         let mut counts: HashMap<&str, u64> = HashMap::new();
//!         for word in text.split(|c: char| !c.is_alphabetic()).filter(|w| !w.is_empty()) {
//!             *counts.entry(word).or_default() += 1;
//!         }
//!         for (word, n) in counts {
//!             out.emit(word, n.to_string());
//!         }
//!         Ok(())
//!     }
//!
//!     fn reduce(key: &[u8], values: Values, out: &mut Emitter) -> Result<(), String> {
//!         // The values are pulled from the host as the iteration goes: a
//!         // key with any number of them is summed in bounded memory.
//!         let total: u64 = values.map(|v| wmr_guest::parse_u64(&v)).sum();
//!         out.emit(key, total.to_string());
//!         Ok(())
//!     }
//! }
//!
//! wmr_guest::export!(WordCount);
//! ```
//!
//! ## Layout
//! - [`Job`]: the three functions an author writes (`combine` is optional).
//! - [`Values`]: a key's values in `reduce`, pulled from the host lazily.
//! - [`Emitter`]: buffers pairs and hands them to the host in batches.
//! - [`param`], [`incr_counter`], [`log`]: host services.

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "wmr:mapreduce/job@0.2.0",
        pub_export_macro: true,
        export_macro_name: "__export_job_world",
        default_bindings_module: "::wmr_guest::bindings",
    });
}

use bindings::wmr::mapreduce::host;
pub use bindings::wmr::mapreduce::host::Level;
pub use bindings::wmr::mapreduce::types::Group;
use bindings::wmr::mapreduce::types::ReduceInput;

/// Pairs are handed to the host once this many key+value bytes are buffered.
const EMIT_BATCH_BYTES: usize = 64 * 1024;

/// A map/reduce job. Every function returns `Err(message)` to fail the
/// attempt cleanly; a panic fails it too, as a trap.
pub trait Job {
    /// Map one split: `file` is the input file's name, `text` whole lines of it.
    fn map(file: &[u8], text: &[u8], out: &mut Emitter) -> Result<(), String>;

    /// Reduce one key and all of its values (called in key order). The
    /// values come as the iteration goes (in batches pulled from the host),
    /// so a key's values need not fit in memory; those not iterated are
    /// skipped.
    fn reduce(key: &[u8], values: Values, out: &mut Emitter) -> Result<(), String>;

    /// Combine one key's values on the map side. `None` (the default) means
    /// "no combiner": the host keeps the values as they are.
    fn combine(group: &Group, out: &mut Emitter) -> Option<Result<(), String>> {
        let _ = (group, out);
        None
    }
}

/// Collects emitted pairs and passes them to the host in batches, framed
/// in one buffer (`emit-framed`): no allocation per pair.
pub struct Emitter {
    framed: Vec<u8>,
}

impl Emitter {
    fn new() -> Self {
        Emitter { framed: Vec::new() }
    }

    /// Emit one pair. Accepts `&str`, `String`, `&[u8]`, `Vec<u8>`, ...
    pub fn emit(&mut self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        let (key, value) = (key.as_ref(), value.as_ref());
        put_varint(&mut self.framed, key.len());
        self.framed.extend_from_slice(key);
        put_varint(&mut self.framed, value.len());
        self.framed.extend_from_slice(value);
        if self.framed.len() >= EMIT_BATCH_BYTES {
            self.flush();
        }
    }

    /// Hand everything buffered to the host now.
    pub fn flush(&mut self) {
        if !self.framed.is_empty() {
            host::emit_framed(&self.framed);
            self.framed.clear();
        }
    }
}

/// Unsigned LEB128, as `emit-framed` and `next-batch-framed` frame lengths.
fn put_varint(out: &mut Vec<u8>, mut n: usize) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// One key's values in [`Job::reduce`], in order, pulled from the host in
/// batches as the iteration reaches them.
pub struct Values<'a> {
    cursor: &'a mut dyn NextValue,
}

trait NextValue {
    fn next_value(&mut self) -> Option<Vec<u8>>;
}

impl Iterator for Values<'_> {
    type Item = Vec<u8>;

    fn next(&mut self) -> Option<Vec<u8>> {
        self.cursor.next_value()
    }
}

impl NextValue for Cursor<'_> {
    fn next_value(&mut self) -> Option<Vec<u8>> {
        let value = self.next_value_at()?;
        Some(self.batch[value].to_vec())
    }
}

/// The tags of `next-batch-framed`'s entries (see wit/).
const TAG_KEY: u8 = 0;
const TAG_VALUE: u8 = 1;
const TAG_CONTINUES: u8 = 2;

/// Where `reduce` is in its input: the framed batch pulled last and the
/// next entry in it.
struct Cursor<'a> {
    input: &'a ReduceInput,
    batch: Vec<u8>,
    at: usize,
}

impl<'a> Cursor<'a> {
    fn new(input: &'a ReduceInput) -> Self {
        Cursor {
            input,
            batch: Vec::new(),
            at: 0,
        }
    }

    fn pull(&mut self) {
        self.batch = self.input.next_batch_framed();
        self.at = 0;
    }

    /// The length-prefixed bytes at the cursor, skipped.
    fn field(&mut self) -> std::ops::Range<usize> {
        let (mut len, mut shift) = (0usize, 0);
        loop {
            let byte = self.batch[self.at];
            self.at += 1;
            len |= usize::from(byte & 0x7f) << shift;
            shift += 7;
            if byte & 0x80 == 0 {
                break;
            }
        }
        let start = self.at;
        self.at += len;
        start..self.at
    }

    /// Move to the next key (past whatever is left of the current one's
    /// values) and copy it into `key`; `false` at the end of the input.
    fn next_key(&mut self, key: &mut Vec<u8>) -> bool {
        while self.next_value_at().is_some() {}
        if self.at == self.batch.len() {
            self.pull();
            if self.batch.is_empty() {
                return false;
            }
        }
        assert_eq!(self.batch[self.at], TAG_KEY, "a framed batch out of order");
        self.at += 1;
        let range = self.field();
        key.clear();
        key.extend_from_slice(&self.batch[range]);
        true
    }

    /// The current key's next value, where it lies in `batch`. A key that
    /// continues goes on past the next batch's first key entry (the same
    /// key).
    fn next_value_at(&mut self) -> Option<std::ops::Range<usize>> {
        loop {
            match self.batch.get(self.at) {
                Some(&TAG_VALUE) => {
                    self.at += 1;
                    return Some(self.field());
                }
                Some(&TAG_CONTINUES) => {
                    self.pull();
                    if self.batch.first() != Some(&TAG_KEY) {
                        return None;
                    }
                    self.at = 1;
                    self.field();
                }
                _ => return None,
            }
        }
    }
}

/// A job parameter given with `--param name=value`.
pub fn param(name: &str) -> Option<String> {
    host::param(name)
}

/// Add `delta` to the job counter `name`.
pub fn incr_counter(name: &str, delta: i64) {
    host::incr_counter(name, delta)
}

/// Write a line to the attempt's log.
pub fn log(level: Level, message: &str) {
    host::log(level, message)
}

/// Parse a decimal number emitted as text; anything else counts as 0.
pub fn parse_u64(bytes: &[u8]) -> u64 {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[doc(hidden)]
pub struct Export<J>(std::marker::PhantomData<J>);

impl<J: Job> bindings::exports::wmr::mapreduce::mapper::Guest for Export<J> {
    fn map(key: Vec<u8>, value: Vec<u8>) -> Result<(), String> {
        let mut out = Emitter::new();
        J::map(&key, &value, &mut out)?;
        out.flush();
        Ok(())
    }
}

impl<J: Job> bindings::exports::wmr::mapreduce::reducer::Guest for Export<J> {
    fn reduce(input: &ReduceInput) -> Result<(), String> {
        let mut out = Emitter::new();
        let mut cursor = Cursor::new(input);
        let mut key = Vec::new();
        while cursor.next_key(&mut key) {
            J::reduce(
                &key,
                Values {
                    cursor: &mut cursor,
                },
                &mut out,
            )?;
        }
        out.flush();
        Ok(())
    }
}

impl<J: Job> bindings::exports::wmr::mapreduce::combiner::Guest for Export<J> {
    fn combine(groups: Vec<Group>) -> Result<bool, String> {
        let mut out = Emitter::new();
        for group in &groups {
            match J::combine(group, &mut out) {
                None => return Ok(false),
                Some(result) => result?,
            }
        }
        out.flush();
        Ok(true)
    }
}

/// Export a [`Job`] implementation as the component's `map`, `reduce` and
/// `combine`: `wmr_guest::export!(MyJob);`
#[macro_export]
macro_rules! export {
    ($job:ty) => {
        type __WmrExport = $crate::Export<$job>;
        $crate::bindings::__export_job_world!(__WmrExport with_types_in $crate::bindings);
    };
}

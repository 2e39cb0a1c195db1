//! # wmr-guest: write wmr map/reduce jobs in plain Rust
//!
//! Implement [`Job`] for a unit struct and export it with [`export!`]. Build
//! with `cargo build --release --target wasm32-wasip2`; the `cdylib` is a
//! Wasm component that fits the `wmr:mapreduce/job` world and can be passed
//! to `wmr run` as both `--map` and `--reduce`.
//!
//! ```ignore
//! use std::collections::HashMap;
//! use wmr_guest::{Emitter, Group, Job};
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
//!     fn reduce(group: &Group, out: &mut Emitter) -> Result<(), String> {
//!         let total: u64 = group.values.iter().map(|v| wmr_guest::parse_u64(v)).sum();
//!         out.emit(&group.key, total.to_string());
//!         Ok(())
//!     }
//! }
//!
//! wmr_guest::export!(WordCount);
//! ```
//!
//! ## Layout
//! - [`Job`]: the three functions an author writes (`combine` is optional).
//! - [`Emitter`]: buffers pairs and hands them to the host in batches.
//! - [`param`], [`incr_counter`], [`log`]: host services.

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "wmr:mapreduce/job@0.1.0",
        pub_export_macro: true,
        export_macro_name: "__export_job_world",
        default_bindings_module: "::wmr_guest::bindings",
    });
}

use bindings::wmr::mapreduce::host;
pub use bindings::wmr::mapreduce::host::Level;
pub use bindings::wmr::mapreduce::types::Group;

/// Pairs are handed to the host once this many key+value bytes are buffered.
const EMIT_BATCH_BYTES: usize = 64 * 1024;

/// A map/reduce job. Every function returns `Err(message)` to fail the
/// attempt cleanly; a panic fails it too, as a trap.
pub trait Job {
    /// Map one split: `file` is the input file's name, `text` whole lines of it.
    fn map(file: &[u8], text: &[u8], out: &mut Emitter) -> Result<(), String>;

    /// Reduce one key and all of its values (called in key order).
    fn reduce(group: &Group, out: &mut Emitter) -> Result<(), String>;

    /// Combine one key's values on the map side. `None` (the default) means
    /// "no combiner": the host keeps the values as they are.
    fn combine(group: &Group, out: &mut Emitter) -> Option<Result<(), String>> {
        let _ = (group, out);
        None
    }
}

/// Collects emitted pairs and passes them to the host in batches.
pub struct Emitter {
    pending: Vec<host::Pair>,
    pending_bytes: usize,
}

impl Emitter {
    fn new() -> Self {
        Emitter {
            pending: Vec::new(),
            pending_bytes: 0,
        }
    }

    /// Emit one pair. Accepts `&str`, `String`, `&[u8]`, `Vec<u8>`, ...
    pub fn emit(&mut self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        let (key, value) = (key.as_ref().to_vec(), value.as_ref().to_vec());
        self.pending_bytes += key.len() + value.len();
        self.pending.push(host::Pair { key, value });
        if self.pending_bytes >= EMIT_BATCH_BYTES {
            self.flush();
        }
    }

    /// Hand everything buffered to the host now.
    pub fn flush(&mut self) {
        if !self.pending.is_empty() {
            host::emit(&self.pending);
            self.pending.clear();
            self.pending_bytes = 0;
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
    fn reduce(groups: Vec<Group>) -> Result<(), String> {
        let mut out = Emitter::new();
        for group in &groups {
            J::reduce(group, &mut out)?;
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

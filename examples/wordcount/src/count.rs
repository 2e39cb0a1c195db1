//! The word-count tokenizer, shared verbatim with the host's native benchmark
//! baseline (`host/src/bench.rs` includes this file) so the two compare the
//! same code.

use std::collections::HashMap;
use std::hash::BuildHasher;

/// Add every word of `text` to `counts`. A word is a maximal run of
/// characters for which `char::is_alphabetic()` is true; case is kept.
pub fn count_words<'t, S: BuildHasher>(text: &'t str, counts: &mut HashMap<&'t str, u64, S>) {
    for word in text.split(|c: char| !c.is_alphabetic()) {
        if !word.is_empty() {
            *counts.entry(word).or_insert(0) += 1;
        }
    }
}

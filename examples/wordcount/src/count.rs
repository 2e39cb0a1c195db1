//! The word-count tokenizer, shared verbatim with the host's native benchmark
//! baseline (`host/src/bench.rs` includes this file) so the two compare the
//! same code.
//!
//! A word is a maximal run of characters for which `char::is_alphabetic()`
//! is true; case is kept; bytes that are not UTF-8 separate words (they
//! would decode as U+FFFD). That is
//! `String::from_utf8_lossy(text).split(|c: char| !c.is_alphabetic())`
//! without the empty pieces, but in one pass, eight bytes at a time: ASCII
//! letters and separators are classified with word-wide arithmetic (SWAR),
//! and only non-ASCII characters are decoded. Fewer, longer loop iterations
//! suit a Wasm guest, where each iteration also pays a fuel and an epoch
//! check, and whose `usize` is 32 bits wide.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGH: u64 = 0x8080_8080_8080_8080;

/// A word: bytes that are always UTF-8 (only decoded characters are taken).
///
/// It hashes as its bytes alone: a `[u8]` would hash its length first, and
/// a `str` appends 0xff, each an extra hasher call per word that only
/// matters when keys are hashed together. It compares with a few word-wide
/// loads instead of `memcmp`: most words are shorter than 8 bytes, and in a
/// Wasm guest `memcmp` is a byte loop that pays fuel and epoch checks on
/// each byte. Both halved the guest's time per word.
#[derive(Clone, Copy, Debug)]
pub struct Word<'t>(pub &'t [u8]);

impl Hash for Word<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write(self.0);
    }
}

impl PartialEq for Word<'_> {
    fn eq(&self, other: &Self) -> bool {
        let (a, b) = (self.0, other.0);
        let n = a.len();
        if n != b.len() {
            return false;
        }
        match n {
            0 => true,
            // The first, middle and last byte cover all of 1 to 3 bytes.
            1..4 => a[0] == b[0] && a[n / 2] == b[n / 2] && a[n - 1] == b[n - 1],
            // Two 4-byte loads that overlap as needed.
            4..8 => u32_at(a, 0) == u32_at(b, 0) && u32_at(a, n - 4) == u32_at(b, n - 4),
            // 8-byte loads; the last one ends at the end (overlapping).
            _ => {
                let mut at = 0;
                while at + 8 < n {
                    if word_at(a, at) != word_at(b, at) {
                        return false;
                    }
                    at += 8;
                }
                word_at(a, n - 8) == word_at(b, n - 8)
            }
        }
    }
}

impl Eq for Word<'_> {}

/// Add every word of `text` to `counts`.
pub fn count_words<'t, S: BuildHasher>(text: &'t [u8], counts: &mut HashMap<Word<'t>, u64, S>) {
    let mut at = 0;
    loop {
        let start = skip_separators(text, at);
        if start == text.len() {
            return;
        }
        at = word_end(text, start);
        *counts.entry(Word(&text[start..at])).or_insert(0) += 1;
    }
}

/// The high bit of each byte of `w` is set where that byte is an ASCII letter.
#[inline]
fn ascii_letters(w: u64) -> u64 {
    // Fold case and drop the high bit: every byte is then at most 0x7f, so
    // the additions below never carry into the next byte.
    let y = (w | (0x20 * ONES)) & !HIGH;
    let at_least_a = y + (0x80 - b'a' as u64) * ONES;
    let past_z = y + (0x80 - b'z' as u64 - 1) * ONES;
    at_least_a & !past_z & !w & HIGH
}

/// Eight bytes from `at` (which must leave eight bytes), little-endian.
#[inline]
fn word_at(bytes: &[u8], at: usize) -> u64 {
    let mut w = [0; 8];
    w.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(w)
}

/// Four bytes from `at` (which must leave four bytes), little-endian.
#[inline]
fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut w = [0; 4];
    w.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(w)
}

/// The character starting at byte `at` and its length in bytes, or `None`
/// if no valid UTF-8 sequence starts there.
#[inline]
fn char_at(bytes: &[u8], at: usize) -> Option<(char, usize)> {
    let chunk = &bytes[at..bytes.len().min(at + 4)];
    let valid = match std::str::from_utf8(chunk) {
        Ok(valid) => valid,
        Err(e) => std::str::from_utf8(&chunk[..e.valid_up_to()]).ok()?,
    };
    valid.chars().next().map(|c| (c, c.len_utf8()))
}

/// The index of the first letter at or after `at`, or the text's length.
fn skip_separators(bytes: &[u8], mut at: usize) -> usize {
    while at < bytes.len() {
        // Skip ASCII separators: a whole word of them at a time.
        if at + 8 <= bytes.len() {
            let w = word_at(bytes, at);
            let separators = !ascii_letters(w) & !w & HIGH;
            let other = !separators & HIGH;
            if other == 0 {
                at += 8;
                continue;
            }
            at += (other.trailing_zeros() / 8) as usize;
        } else if bytes[at] < 0x80 && !bytes[at].is_ascii_alphabetic() {
            at += 1;
            continue;
        }
        // `at` is an ASCII letter or the first byte of a non-ASCII character.
        if bytes[at] < 0x80 {
            return at;
        }
        match char_at(bytes, at) {
            Some((c, _)) if c.is_alphabetic() => return at,
            Some((_, len)) => at += len,
            // Not UTF-8: a separator, and the next byte may start a character.
            None => at += 1,
        }
    }
    at
}

/// The end of the word that starts at `at` (a letter).
fn word_end(bytes: &[u8], mut at: usize) -> usize {
    while at < bytes.len() {
        if at + 8 <= bytes.len() {
            let w = word_at(bytes, at);
            let other = !ascii_letters(w) & HIGH;
            if other == 0 {
                at += 8;
                continue;
            }
            at += (other.trailing_zeros() / 8) as usize;
        } else if bytes[at].is_ascii_alphabetic() {
            at += 1;
            continue;
        }
        // `at` is an ASCII non-letter or the first byte of a non-ASCII character.
        if bytes[at] < 0x80 {
            return at;
        }
        match char_at(bytes, at) {
            Some((c, len)) if c.is_alphabetic() => at += len,
            _ => return at,
        }
    }
    at
}

//! TeraGen and TeraValidate for the total-order tests (and the benchmark):
//! [`generate`] writes rows of random fixed-width keys, [`validate`] checks
//! that part files hold them in order and summarises them so that the
//! output can be compared with the input ([`summarize`]). Pure std.
//!
//! Included with `#[path]` by the tests that use it (it is not a module
//! of `support`, so other test binaries do not compile it).
//!
//! A row is one line of [`ROW_BYTES`] bytes: a [`KEY_BYTES`]-byte key of
//! printable ASCII without space or `\`, a space, the row number (12
//! decimal digits), a space and a filler of letters, then LF. Nothing in a
//! row is escaped by wmr's text output, so the `sort` guest's output lines
//! are exactly the input's rows.

use std::path::PathBuf;

/// Bytes of a key.
pub const KEY_BYTES: usize = 10;
/// Bytes of a row, its newline included (as TeraGen's 100-byte records).
pub const ROW_BYTES: usize = 100;
/// Share of the rows of a skewed input whose keys start with one of
/// [`HOT_PREFIXES`].
pub const HOT_SHARE_PERCENT: u64 = 50;
/// The key prefixes a skewed input crowds half of its rows into: three
/// narrow ranges in the middle of the key space.
pub const HOT_PREFIXES: [&[u8]; 3] = [b"Q0", b"Q5", b"R"];

/// The key alphabet: `!` ..= `~` without `\` (93 characters).
fn key_alphabet() -> Vec<u8> {
    (b'!'..=b'~').filter(|&b| b != b'\\').collect()
}

/// SplitMix64.
fn next(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// `rows` rows from `seed` (TeraGen). Keys are uniform over the alphabet;
/// with `skew`, [`HOT_SHARE_PERCENT`] % of the rows instead get a key
/// starting with one of [`HOT_PREFIXES`] (random after it).
pub fn generate(seed: u64, rows: u64, skew: bool) -> Vec<u8> {
    let alphabet = key_alphabet();
    let mut rng = seed ^ 0x5445_5241_4745_4e00;
    let mut out = Vec::with_capacity(rows as usize * ROW_BYTES);
    for row in 0..rows {
        let mut key = Vec::with_capacity(KEY_BYTES);
        if skew && next(&mut rng) % 100 < HOT_SHARE_PERCENT {
            let prefix = HOT_PREFIXES[(next(&mut rng) % HOT_PREFIXES.len() as u64) as usize];
            key.extend_from_slice(prefix);
        }
        while key.len() < KEY_BYTES {
            key.push(alphabet[(next(&mut rng) % alphabet.len() as u64) as usize]);
        }
        out.extend_from_slice(&key);
        out.extend_from_slice(format!(" {row:012} ").as_bytes());
        let filler = ROW_BYTES - KEY_BYTES - 14 - 1;
        let letter = b'A' + (row % 26) as u8;
        out.extend(std::iter::repeat_n(letter, filler));
        out.push(b'\n');
    }
    out
}

/// A row's key: the line up to its first space (the whole line without one).
pub fn key_of(line: &[u8]) -> &[u8] {
    line.iter()
        .position(|&b| b == b' ')
        .map_or(line, |i| &line[..i])
}

/// An order-independent summary of rows: how many, and the wrapping sum of
/// a 64-bit hash of each (TeraValidate's checksum: equal for the same rows
/// in any order).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Checksum {
    pub rows: u64,
    pub sum: u64,
}

impl Checksum {
    fn add(&mut self, line: &[u8]) {
        // FNV-1a, then SplitMix64's finaliser to spread it.
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for &b in line {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        let mut mixed = hash;
        self.rows += 1;
        self.sum = self.sum.wrapping_add(next(&mut mixed));
    }
}

/// The lines of `text` (without their newlines; no empty last line).
fn lines(text: &[u8]) -> impl Iterator<Item = &[u8]> {
    let text = text.strip_suffix(b"\n").unwrap_or(text);
    text.split(|&b| b == b'\n')
        .filter(move |_| !text.is_empty())
}

/// The checksum of the rows of an input (or of any text).
pub fn summarize(text: &[u8]) -> Checksum {
    let mut checksum = Checksum::default();
    for line in lines(text) {
        checksum.add(line);
    }
    checksum
}

/// What [`validate`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    /// All rows together.
    pub checksum: Checksum,
    /// Rows in each part file, in the order given.
    pub rows_per_file: Vec<u64>,
}

/// TeraValidate: each file's keys are in byte order, and the last key of
/// each file is at most the first key of the next non-empty one, so the
/// files concatenated are sorted. Returns the rows' checksum and the rows
/// per file; the error names the file and line where the order breaks.
pub fn validate(part_files: &[PathBuf]) -> Result<Summary, String> {
    let mut checksum = Checksum::default();
    let mut rows_per_file = Vec::new();
    // The last key so far, and where it was.
    let mut last: Option<(Vec<u8>, String)> = None;
    for file in part_files {
        let text = std::fs::read(file).map_err(|e| format!("{}: {e}", file.display()))?;
        let mut rows = 0;
        for (i, line) in lines(&text).enumerate() {
            let key = key_of(line);
            if let Some((previous, at)) = &last
                && key < previous.as_slice()
            {
                return Err(format!(
                    "{}:{}: key {:?} is smaller than key {:?} at {at}",
                    file.display(),
                    i + 1,
                    String::from_utf8_lossy(key),
                    String::from_utf8_lossy(previous)
                ));
            }
            last = Some((key.to_vec(), format!("{}:{}", file.display(), i + 1)));
            checksum.add(line);
            rows += 1;
        }
        rows_per_file.push(rows);
    }
    Ok(Summary {
        checksum,
        rows_per_file,
    })
}

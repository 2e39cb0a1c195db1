//! The keys a `lines` map emits, shared verbatim by `lines-map` (which has
//! no SDK) so that both components emit the same pairs.

/// `--param key=line|word|hot` (default `line`).
pub enum Keys {
    /// One key per line: the line's bytes, exactly.
    Line,
    /// One key per ASCII-whitespace-separated token.
    Word,
    /// The line, plus `HOT` (one key with a value per line).
    Hot,
}

impl Keys {
    pub fn from_param(value: Option<&str>) -> Result<Keys, String> {
        match value {
            None | Some("line") => Ok(Keys::Line),
            Some("word") => Ok(Keys::Word),
            Some("hot") => Ok(Keys::Hot),
            Some(other) => Err(format!("key={other}: expected line, word or hot")),
        }
    }
}

/// Call `emit` with every key of `text` (whole lines). Lines are split on
/// `\n` only and keep every other byte (`\r`, NUL, invalid UTF-8): the
/// differential test wants the host, not the guest, to meet odd bytes.
pub fn each_key(text: &[u8], keys: &Keys, mut emit: impl FnMut(&[u8])) {
    if text.is_empty() {
        return;
    }
    // A final `\n` ends the last line; it does not start an empty one.
    let text = text.strip_suffix(b"\n").unwrap_or(text);
    for line in text.split(|&b| b == b'\n') {
        match keys {
            Keys::Line => emit(line),
            Keys::Word => line
                .split(u8::is_ascii_whitespace)
                .filter(|word| !word.is_empty())
                .for_each(&mut emit),
            Keys::Hot => {
                emit(line);
                emit(b"HOT");
            }
        }
    }
}

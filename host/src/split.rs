//! Input discovery and splitting.
//!
//! As in Hadoop's `TextInputFormat`, a split never cuts a line: each split
//! ends just after a newline (or at the end of the file), and a line longer
//! than the split size stays whole in one split.

use crate::model::InputSplit;
use crate::storage::{self, InputReader};
use anyhow::{Context as _, bail};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// Expand each `--input` (a file, a directory or a glob; or an `s3://`
/// object, prefix or glob) into files or objects, sorted.
/// In a directory, hidden files and names starting with `_` are skipped
/// (Hadoop's convention for markers such as `_SUCCESS`).
pub fn discover_inputs(inputs: &[String]) -> anyhow::Result<Vec<PathBuf>> {
    if inputs.is_empty() {
        bail!("no --input given");
    }
    let mut files = Vec::new();
    for input in inputs {
        let path = Path::new(input);
        if storage::is_object(path) {
            let found = discover_objects(input)
                .map_err(|e| storage::explain(e, format!("input {input}")))?;
            files.extend(found);
        } else if path.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(path)
                .with_context(|| format!("input {input}: cannot list directory"))?
                .filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.is_file() && !is_hidden(p))
                .collect();
            if found.is_empty() {
                bail!("input {input}: directory has no input files");
            }
            found.sort();
            files.extend(found);
        } else if path.is_file() {
            files.push(path.to_path_buf());
        } else if input.contains(['*', '?', '[']) {
            let mut found: Vec<PathBuf> = glob::glob(input)
                .with_context(|| format!("input {input}: bad glob"))?
                .filter_map(|p| p.ok())
                .filter(|p| p.is_file())
                .collect();
            if found.is_empty() {
                bail!("input {input}: glob matched no files");
            }
            found.sort();
            files.extend(found);
        } else {
            bail!("input {input}: no such file or directory");
        }
    }
    files.dedup();
    Ok(files)
}

/// The objects an `s3://` input names, as a local input would: an object
/// itself; else the objects directly below it taken as a directory
/// (hidden and `_` names skipped); or those a glob matches (`*` does not
/// cross `/`, as in a shell).
fn discover_objects(input: &str) -> anyhow::Result<Vec<PathBuf>> {
    let url = storage::S3Url::parse(input)?;
    let visible = |key: &str, below: &str| {
        let rest = &key[below.len()..];
        !rest.is_empty() && !rest.contains('/') && !is_hidden(Path::new(rest))
    };
    let found: Vec<PathBuf> = if let Some(at) = url.key.find(['*', '?', '[']) {
        let pattern = glob::Pattern::new(&url.key).context("bad glob")?;
        let literal = storage::S3Url {
            bucket: url.bucket.clone(),
            key: url.key[..at].to_string(),
        };
        let options = glob::MatchOptions {
            require_literal_separator: true,
            ..Default::default()
        };
        let found: Vec<PathBuf> = storage::list(&literal)?
            .into_iter()
            .filter(|o| pattern.matches_with(&o.url.key, options))
            .map(|o| o.url.to_path())
            .collect();
        if found.is_empty() {
            bail!("glob matched no objects");
        }
        found
    } else {
        // One listing answers both "is it an object?" and "what is below
        // it?" (a HEAD of a "directory" is an error on some servers).
        let listed = storage::list(&url)?;
        if !url.key.is_empty() && listed.iter().any(|o| o.url.key == url.key) {
            return Ok(vec![url.to_path()]);
        }
        let below = url.dir_prefix();
        let found: Vec<PathBuf> = listed
            .into_iter()
            .filter(|o| o.url.key.starts_with(&below) && visible(&o.url.key, &below))
            .map(|o| o.url.to_path())
            .collect();
        if found.is_empty() {
            bail!("no objects under this prefix");
        }
        found
    };
    Ok(found)
}

fn is_hidden(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.') || n.starts_with('_'))
}

/// Cut `files` into splits of at least `split_bytes` (the last split of a
/// file may be shorter), each ending on a line boundary.
pub fn plan_splits(files: &[PathBuf], split_bytes: u64) -> anyhow::Result<Vec<InputSplit>> {
    assert!(split_bytes > 0, "split size must be positive");
    let mut splits = Vec::new();
    for path in files {
        // An object is scanned in ranged GETs around each nominal end.
        let mut file = InputReader::open(path)?;
        let len = file.len();
        let mut start = 0;
        while start < len {
            let nominal = start + split_bytes;
            let end = if nominal >= len {
                len
            } else {
                line_end_at_or_after(&mut file, nominal - 1, len)?
            };
            debug_assert!(end > start && end <= len);
            splits.push(InputSplit {
                path: path.clone(),
                offset: start,
                len: end - start,
            });
            start = end;
        }
        if len == 0 {
            // An empty file is still an input: one empty split.
            splits.push(InputSplit {
                path: path.clone(),
                offset: 0,
                len: 0,
            });
        }
    }
    Ok(splits)
}

/// The offset just after the first `\n` at or after `from` (or `len`):
/// where the next line starts. Files and objects alike (Hadoop's
/// LineRecordReader rule: a split owns the line that crosses its end).
pub fn line_end_at_or_after(
    file: &mut (impl Read + Seek),
    from: u64,
    len: u64,
) -> anyhow::Result<u64> {
    file.seek(SeekFrom::Start(from))?;
    let mut buf = [0u8; 64 * 1024];
    let mut pos = from;
    while pos < len {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        if let Some(i) = buf[..n].iter().position(|&b| b == b'\n') {
            return Ok(pos + i as u64 + 1);
        }
        pos += n as u64;
    }
    Ok(len)
}

/// Where to cut `lines` in two non-empty runs of whole lines, near the
/// middle; `None` when it is a single line.
pub fn middle_line_break(lines: &[u8]) -> Option<usize> {
    let len = lines.len();
    let inner = |p: usize| p + 1 < len;
    let after = lines[len / 2..]
        .iter()
        .position(|&b| b == b'\n')
        .map(|i| len / 2 + i);
    if let Some(p) = after.filter(|&p| inner(p)) {
        return Some(p + 1);
    }
    lines[..len / 2]
        .iter()
        .rposition(|&b| b == b'\n')
        .map(|p| p + 1)
}

/// Read one split's bytes (one ranged GET for an object).
pub fn read_split(split: &InputSplit) -> anyhow::Result<Vec<u8>> {
    storage::read_range(&split.path, split.offset, split.len)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split_texts(text: &[u8], size: u64) -> Vec<Vec<u8>> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.txt");
        std::fs::write(&path, text).unwrap();
        plan_splits(&[path], size)
            .unwrap()
            .iter()
            .map(|s| read_split(s).unwrap())
            .collect()
    }

    /// Invariant: splits cover the file exactly, in order, and never cut a line.
    #[test]
    fn splits_cover_the_file_and_never_cut_a_line() {
        let text = b"alpha beta\ngamma\n\nthis line is much longer than the split\nend";
        for size in 1..=text.len() as u64 + 1 {
            let parts = split_texts(text, size);
            assert_eq!(parts.concat(), text, "size {size}");
            for part in &parts[..parts.len() - 1] {
                assert_eq!(part.last(), Some(&b'\n'), "size {size}: {part:?}");
                assert!(part.len() as u64 >= size);
            }
        }
    }

    #[test]
    fn middle_line_break_cuts_between_whole_lines() {
        assert_eq!(middle_line_break(b"one line\n"), None);
        assert_eq!(middle_line_break(b"no newline"), None);
        assert_eq!(middle_line_break(b"a\nb\n"), Some(2));
        assert_eq!(middle_line_break(b"a\nbbbbbbbbbb\n"), Some(2));
        assert_eq!(middle_line_break(b"aaaaaaaaaa\nb"), Some(11));
    }

    #[test]
    fn empty_file_is_one_empty_split() {
        assert_eq!(split_texts(b"", 10), vec![Vec::<u8>::new()]);
    }
}

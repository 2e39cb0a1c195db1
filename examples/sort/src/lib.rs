//! Sort (TeraSort's job): every input line `KEY PAYLOAD` becomes the pair
//! (`KEY`, `PAYLOAD`): the key is the line up to its first space (the whole
//! line when it has none), the value what follows that space. With
//! `--param key_bytes=N` the key is the line's first N bytes instead (the
//! whole line when shorter) and the value the rest, without one space that
//! follows the key. Empty lines are dropped.
//!
//! `reduce` emits every value under its key, so with the default text
//! output (`key value`) each output line is an input line, and with
//! `--partitioner range` the part files concatenated are the input's lines
//! sorted by key. Lines holding `\` or CR come out escaped (`\\`, `\r`).
use wmr_guest::{Emitter, Job, Values};

struct Sort;

impl Job for Sort {
    fn map(_file: &[u8], text: &[u8], out: &mut Emitter) -> Result<(), String> {
        let key_bytes = match wmr_guest::param("key_bytes") {
            Some(n) => Some(
                n.parse::<usize>()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or_else(|| format!("key_bytes must be a positive number, not {n:?}"))?,
            ),
            None => None,
        };
        let mut records = 0;
        for line in text.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let (key, value) = match key_bytes {
                Some(n) if line.len() > n => {
                    let rest = &line[n..];
                    (&line[..n], rest.strip_prefix(b" ").unwrap_or(rest))
                }
                Some(_) => (line, &b""[..]),
                None => match line.iter().position(|&b| b == b' ') {
                    Some(i) => (&line[..i], &line[i + 1..]),
                    None => (line, &b""[..]),
                },
            };
            out.emit(key, value);
            records += 1;
        }
        wmr_guest::incr_counter("sort.map_records", records);
        Ok(())
    }

    fn reduce(key: &[u8], values: Values, out: &mut Emitter) -> Result<(), String> {
        for value in values {
            out.emit(key, value);
        }
        Ok(())
    }
}

wmr_guest::export!(Sort);

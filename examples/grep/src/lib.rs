//! Distributed grep: `--param pattern=TEXT`. Each output line is a matching
//! input line followed by how many times it occurs in the input.
use wmr_guest::{Emitter, Group, Job, Values};

struct Grep;

impl Job for Grep {
    fn map(_file: &[u8], text: &[u8], out: &mut Emitter) -> Result<(), String> {
        let pattern = wmr_guest::param("pattern").ok_or("grep needs --param pattern=TEXT")?;
        let text = String::from_utf8_lossy(text);
        for line in text.lines().filter(|l| l.contains(pattern.as_str())) {
            out.emit(line, "1");
        }
        Ok(())
    }

    fn reduce(key: &[u8], values: Values, out: &mut Emitter) -> Result<(), String> {
        out.emit(key, sum(values).to_string());
        Ok(())
    }

    fn combine(group: &Group, out: &mut Emitter) -> Option<Result<(), String>> {
        out.emit(&group.key, sum(group.values.iter()).to_string());
        Some(Ok(()))
    }
}

fn sum<V: AsRef<[u8]>>(values: impl Iterator<Item = V>) -> u64 {
    values.map(|v| wmr_guest::parse_u64(v.as_ref())).sum()
}

wmr_guest::export!(Grep);

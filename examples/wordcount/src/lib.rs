//! Word count: each output line is `word count`.
mod count;

use std::collections::HashMap;
use wmr_guest::{Emitter, Group, Job, Values};

struct WordCount;

impl Job for WordCount {
    fn map(_file: &[u8], text: &[u8], out: &mut Emitter) -> Result<(), String> {
        // In-mapper combining: one pair per distinct word in the split.
        let mut counts = HashMap::new();
        count::count_words(text, &mut counts);
        for (word, n) in counts {
            out.emit(word.0, n.to_string());
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

wmr_guest::export!(WordCount);

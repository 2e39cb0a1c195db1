//! Inverted index, as in the MIT 6.5840 lab: each output line is
//! `word N doc1,doc2,...` with the N documents containing `word`, sorted.
use std::collections::{BTreeSet, HashSet};
use wmr_guest::{Emitter, Group, Job, Values};

struct Indexer;

impl Job for Indexer {
    fn map(file: &[u8], text: &[u8], out: &mut Emitter) -> Result<(), String> {
        let text = String::from_utf8_lossy(text);
        let words: HashSet<&str> = text
            .split(|c: char| !c.is_alphabetic())
            .filter(|w| !w.is_empty())
            .collect();
        for word in words {
            out.emit(word, file);
        }
        Ok(())
    }

    fn reduce(key: &[u8], values: Values, out: &mut Emitter) -> Result<(), String> {
        // A document split over several map tasks appears more than once.
        let docs: BTreeSet<Vec<u8>> = values.collect();
        let mut line = format!("{} ", docs.len()).into_bytes();
        for (i, doc) in docs.iter().enumerate() {
            if i > 0 {
                line.push(b',');
            }
            line.extend_from_slice(doc);
        }
        out.emit(key, line);
        Ok(())
    }

    fn combine(group: &Group, out: &mut Emitter) -> Option<Result<(), String>> {
        for doc in distinct(group) {
            out.emit(&group.key, doc);
        }
        Some(Ok(()))
    }
}

fn distinct(group: &Group) -> BTreeSet<&[u8]> {
    group.values.iter().map(|v| v.as_slice()).collect()
}

wmr_guest::export!(Indexer);

//! A reduce attempt's input as the guest pulls it: sorted records cut into
//! batches of group parts (`wmr:mapreduce/types.reduce-input`).
//!
//! A batch holds about [`REDUCE_BATCH_BYTES`]: whole groups while they fit
//! (word count's millions of small groups cross the boundary once per
//! batch, as before), and a key too large for one batch goes in parts, its
//! last part in the batch marked `continues`. Memory holds one batch and
//! one record of lookahead, whatever the size of a key's group.

use crate::intermediate::{Merge, SourceError};
use crate::sandbox::{GroupPart, Pair, ReduceInput};
use std::sync::{Arc, Mutex};

/// Bytes of keys and values (plus 8 a value) in one batch.
pub const REDUCE_BATCH_BYTES: usize = 1 << 20;

/// Sorted records, borrowed one at a time.
pub trait RecordSource: Send {
    fn next_record(&mut self) -> anyhow::Result<Option<(&[u8], &[u8])>>;
}

/// Batches of group parts from a [`RecordSource`].
pub struct PartBatches<S> {
    source: S,
    limit: usize,
    /// A record read past the end of the last batch: the next one's first.
    pending: Option<Pair>,
    /// The source has ended (or failed).
    exhausted: bool,
    /// A batch came back empty.
    ended: bool,
}

impl<S: RecordSource> PartBatches<S> {
    pub fn new(source: S) -> Self {
        Self::with_limit(source, REDUCE_BATCH_BYTES)
    }

    /// Batches of about `limit` bytes (tests use small ones).
    pub fn with_limit(source: S, limit: usize) -> Self {
        PartBatches {
            source,
            limit: limit.max(1),
            pending: None,
            exhausted: false,
            ended: false,
        }
    }

    /// The next batch, framed as `next-batch-framed` lays it out.
    fn batch(&mut self) -> anyhow::Result<Vec<u8>> {
        let mut out = Vec::new();
        let mut size = 0;
        // The current part's key, where it lies in `out`.
        let mut key: Option<std::ops::Range<usize>> = None;
        if let Some((k, v)) = self.pending.take() {
            size += k.len() + v.len() + 8;
            key = Some(put_key(&mut out, &k));
            put_value(&mut out, &v);
        }
        while !self.exhausted {
            let Some((k, v)) = self.source.next_record().inspect_err(|_| {
                self.exhausted = true;
            })?
            else {
                self.exhausted = true;
                break;
            };
            let same_key = key.as_ref().is_some_and(|at| out[at.clone()] == *k);
            if size < self.limit {
                if same_key {
                    size += v.len() + 8;
                } else {
                    size += k.len() + v.len() + 8;
                    key = Some(put_key(&mut out, k));
                }
                put_value(&mut out, v);
                continue;
            }
            // Full: this record starts the next batch, continuing the
            // last part's key or not.
            if same_key {
                out.push(TAG_CONTINUES);
            }
            self.pending = Some((k.to_vec(), v.to_vec()));
            break;
        }
        Ok(out)
    }
}

/// The tags of `next-batch-framed`'s entries (see wit/).
const TAG_KEY: u8 = 0;
const TAG_VALUE: u8 = 1;
const TAG_CONTINUES: u8 = 2;

/// Start a part of `key`; returns where the key's bytes are.
fn put_key(out: &mut Vec<u8>, key: &[u8]) -> std::ops::Range<usize> {
    out.push(TAG_KEY);
    crate::intermediate::put_varint(out, key.len() as u64);
    out.extend_from_slice(key);
    out.len() - key.len()..out.len()
}

fn put_value(out: &mut Vec<u8>, value: &[u8]) {
    out.push(TAG_VALUE);
    crate::intermediate::put_varint(out, value.len() as u64);
    out.extend_from_slice(value);
}

/// Group parts framed as `next-batch-framed` lays them out (the inverse
/// of [`unframe_batch`]).
pub fn frame_batch(parts: &[GroupPart]) -> Vec<u8> {
    let mut out = Vec::new();
    for part in parts {
        put_key(&mut out, &part.key);
        for value in &part.values {
            put_value(&mut out, value);
        }
        if part.continues {
            out.push(TAG_CONTINUES);
        }
    }
    out
}

/// A framed batch as `next-batch`'s group parts (for guests that pull
/// those).
pub fn unframe_batch(framed: &[u8]) -> anyhow::Result<Vec<GroupPart>> {
    let mut parts: Vec<GroupPart> = Vec::new();
    let mut at = 0;
    let bytes = |at: &mut usize| -> Option<Vec<u8>> {
        let len = usize::try_from(crate::intermediate::get_varint(framed, at)?).ok()?;
        let bytes = framed.get(*at..at.checked_add(len)?)?.to_vec();
        *at += len;
        Some(bytes)
    };
    while let Some(&tag) = framed.get(at) {
        at += 1;
        match (tag, parts.last_mut()) {
            (TAG_KEY, _) => {
                let key =
                    bytes(&mut at).ok_or_else(|| anyhow::anyhow!("a framed batch cut short"))?;
                parts.push(GroupPart {
                    key,
                    values: Vec::new(),
                    continues: false,
                });
            }
            (TAG_VALUE, Some(part)) => part
                .values
                .push(bytes(&mut at).ok_or_else(|| anyhow::anyhow!("a framed batch cut short"))?),
            (TAG_CONTINUES, Some(part)) if at == framed.len() => part.continues = true,
            (tag, _) => anyhow::bail!("a framed batch has tag {tag} at byte {}", at - 1),
        }
    }
    Ok(parts)
}

impl<S: RecordSource> ReduceInput for PartBatches<S> {
    fn next_batch_framed(&mut self) -> anyhow::Result<Vec<u8>> {
        let batch = self.batch()?;
        self.ended |= batch.is_empty();
        Ok(batch)
    }

    fn ended(&self) -> bool {
        self.ended
    }
}

/// A reduce attempt's merge as a [`RecordSource`]. A read error is also
/// left in `failed`, naming its source, for the attempt to report as a
/// fetch failure of that map output.
pub struct MergeSource {
    pub merge: Merge,
    pub failed: Arc<Mutex<Option<SourceError>>>,
}

impl RecordSource for MergeSource {
    fn next_record(&mut self) -> anyhow::Result<Option<(&[u8], &[u8])>> {
        match self.merge.next() {
            Ok(record) => Ok(record),
            Err(e) => {
                let message = format!("{:#}", e.error);
                *self.failed.lock().expect("poisoned") = Some(e);
                Err(anyhow::anyhow!(message))
            }
        }
    }
}

/// Sorted pairs held in memory (`wmr seq`).
pub struct SortedPairs {
    pairs: std::vec::IntoIter<Pair>,
    current: Option<Pair>,
}

impl SortedPairs {
    pub fn new(pairs: Vec<Pair>) -> Self {
        debug_assert!(
            pairs.windows(2).all(|w| w[0].0 <= w[1].0),
            "pairs must be sorted"
        );
        SortedPairs {
            pairs: pairs.into_iter(),
            current: None,
        }
    }
}

impl RecordSource for SortedPairs {
    fn next_record(&mut self) -> anyhow::Result<Option<(&[u8], &[u8])>> {
        self.current = self.pairs.next();
        Ok(self
            .current
            .as_ref()
            .map(|(k, v)| (k.as_slice(), v.as_slice())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::collection::vec;
    use proptest::prelude::*;

    fn pairs() -> impl Strategy<Value = Vec<Pair>> {
        // Few distinct keys: long groups; values of 0..40 bytes.
        let key = prop_oneof![
            4 => prop::sample::select(vec![&b"a"[..], b"b", b"hot", b""]).prop_map(<[u8]>::to_vec),
            1 => vec(any::<u8>(), 0..20),
        ];
        vec((key, vec(any::<u8>(), 0..40)), 0..400).prop_map(|mut pairs| {
            pairs.sort_by(|a, b| a.0.cmp(&b.0));
            pairs
        })
    }

    proptest! {
        /// The parts put together again are the groups of the sorted pairs,
        /// values in order; every batch keeps to its limit but for one
        /// record, holds a key at most once, and only its last part may
        /// continue, exactly when the next batch starts with that key.
        #[test]
        fn batches_of_parts_reassemble_the_groups_within_their_bound(
            pairs in pairs(),
            limit in 1usize..300,
        ) {
            let groups = crate::shuffle::group_sorted(pairs.clone());
            let max_record = pairs.iter().map(|(k, v)| k.len() + v.len() + 8).max().unwrap_or(0);
            let mut input = PartBatches::with_limit(SortedPairs::new(pairs), limit);
            let mut batches = Vec::new();
            loop {
                // Framed and unframed say the same.
                let framed = input.next_batch_framed().unwrap();
                let batch = unframe_batch(&framed).unwrap();
                prop_assert_eq!(frame_batch(&batch), framed);
                if batch.is_empty() {
                    break;
                }
                batches.push(batch);
            }
            prop_assert!(input.ended());
            prop_assert!(input.next_batch().unwrap().is_empty());
            let mut got: Vec<(Vec<u8>, Vec<Vec<u8>>)> = Vec::new();
            let mut continuing = false;
            for (i, batch) in batches.iter().enumerate() {
                let size: usize = batch
                    .iter()
                    .map(|p| p.key.len() + p.values.iter().map(|v| v.len() + 8).sum::<usize>())
                    .sum();
                prop_assert!(size < limit + max_record, "batch {i}: {size} bytes");
                for (j, part) in batch.iter().enumerate() {
                    prop_assert!(!part.values.is_empty());
                    prop_assert!(!part.continues || j + 1 == batch.len());
                    prop_assert!(batch[..j].iter().all(|p| p.key != part.key));
                    if continuing && j == 0 {
                        let last = got.last_mut().unwrap();
                        prop_assert_eq!(&last.0, &part.key);
                        last.1.extend(part.values.iter().cloned());
                    } else {
                        prop_assert!(got.last().is_none_or(|(k, _)| *k < part.key));
                        got.push((part.key.clone(), part.values.clone()));
                    }
                }
                let last = batch.last().unwrap();
                continuing = last.continues;
                if let Some(next) = batches.get(i + 1) {
                    prop_assert_eq!(last.continues, next[0].key == last.key);
                } else {
                    prop_assert!(!last.continues);
                }
            }
            let want: Vec<_> = groups.into_iter().map(|g| (g.key, g.values)).collect();
            prop_assert_eq!(got, want);
        }
    }
}

//! Intermediate data: partitioning, sorting, grouping and its file format.
//!
//! A map attempt writes one file per reduce partition: the pairs of that
//! partition sorted by key, postcard-encoded as `Vec<(key, value)>`.

use crate::sandbox::Group;
use anyhow::Context as _;
use std::io::Write as _;
use std::path::Path;

pub type Pair = (Vec<u8>, Vec<u8>);

/// The partition of `key` among `reducers`: FNV-1a, written out here
/// because it is part of the output layout and must never change between
/// versions, machines or processes (std's hashers are seeded per process).
pub fn partition_of(key: &[u8], reducers: u32) -> u32 {
    debug_assert!(reducers > 0);
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &byte in key {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (hash % u64::from(reducers)) as u32
}

/// Sort pairs by key; equal keys keep their emitted order (stable sort),
/// so a group's values arrive in a deterministic order.
pub fn sort_pairs(pairs: &mut [Pair]) {
    pairs.sort_by(|a, b| a.0.cmp(&b.0));
}

/// Group sorted pairs by key.
pub fn group_sorted(pairs: Vec<Pair>) -> Vec<Group> {
    debug_assert!(
        pairs.windows(2).all(|w| w[0].0 <= w[1].0),
        "pairs must be sorted"
    );
    let mut groups: Vec<Group> = Vec::new();
    for (key, value) in pairs {
        match groups.last_mut() {
            Some(group) if group.key == key => group.values.push(value),
            _ => groups.push(Group {
                key,
                values: vec![value],
            }),
        }
    }
    groups
}

/// Cut groups into batches of about `batch_bytes`, so that one guest call
/// handles many keys (boundary crossings are the expensive part).
pub fn batches(groups: Vec<Group>, batch_bytes: usize) -> impl Iterator<Item = Vec<Group>> {
    let mut groups = groups.into_iter().peekable();
    std::iter::from_fn(move || {
        groups.peek()?;
        let mut batch = Vec::new();
        let mut size = 0;
        while let Some(group) = groups.next_if(|_| size < batch_bytes) {
            size += group.key.len() + group.values.iter().map(|v| v.len() + 8).sum::<usize>();
            batch.push(group);
        }
        Some(batch)
    })
}

/// Write one partition file. Not fsynced, on purpose: intermediate data
/// need not survive a machine crash, because a crashed worker is a lost
/// worker and its map outputs run again (I8); as in Hadoop, only final
/// output is made durable. Visibility is still atomic (commit is a rename).
pub fn write_partition(path: &Path, pairs: &[Pair]) -> anyhow::Result<u64> {
    let bytes = postcard::to_stdvec(pairs).context("encoding intermediate pairs")?;
    let mut file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    file.write_all(&bytes)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(bytes.len() as u64)
}

/// Decode the bytes of a partition file written by [`write_partition`].
pub fn decode_partition(bytes: &[u8]) -> anyhow::Result<Vec<Pair>> {
    postcard::from_bytes(bytes).context("decoding intermediate pairs")
}

/// Format one reduce output record as a line: `key value`, or `key` alone
/// when the value is empty.
pub fn output_line(out: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    out.extend_from_slice(key);
    if !value.is_empty() {
        out.push(b' ');
        out.extend_from_slice(value);
    }
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_is_stable_across_versions() {
        // Pinned values: changing the function would scatter existing outputs.
        // FNV-1a("hello") = 0xa430d84680aabd0b, the published test value.
        assert_eq!(
            partition_of(b"hello", 7),
            (0xa430_d846_80aa_bd0bu64 % 7) as u32
        );
        assert_eq!(
            partition_of(b"", 10),
            (0xcbf2_9ce4_8422_2325u64 % 10) as u32
        );
        assert_eq!(partition_of(b"a", 1), 0);
        let spread: std::collections::BTreeSet<u32> = (0..200u32)
            .map(|i| partition_of(i.to_string().as_bytes(), 10))
            .collect();
        assert_eq!(spread.len(), 10);
    }

    #[test]
    fn groups_keep_emitted_value_order() {
        let mut pairs: Vec<Pair> = vec![
            (b"b".to_vec(), b"1".to_vec()),
            (b"a".to_vec(), b"2".to_vec()),
            (b"b".to_vec(), b"3".to_vec()),
        ];
        sort_pairs(&mut pairs);
        let groups = group_sorted(pairs);
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[1].values, vec![b"1".to_vec(), b"3".to_vec()]);
    }

    #[test]
    fn batches_hold_every_group_once() {
        let groups: Vec<Group> = (0..100u32)
            .map(|i| Group {
                key: i.to_be_bytes().to_vec(),
                values: vec![vec![0; 10]],
            })
            .collect();
        let keys = |gs: &[Group]| gs.iter().map(|g| g.key.clone()).collect::<Vec<_>>();
        let all: Vec<Group> = batches(groups.clone(), 100).flatten().collect();
        assert_eq!(keys(&all), keys(&groups));
        assert!(batches(groups, 100).count() > 1);
    }
}

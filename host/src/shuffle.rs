//! Partitioning, sorting and grouping pairs in memory (`wmr seq` and the
//! tests), and the output record formats. The intermediate file format is
//! [`crate::intermediate`].

use crate::model::OutputFormat;
use crate::sandbox::Group;
pub use crate::sandbox::Pair;

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

/// Append one reduce output record to `out` as one line in `format`: one
/// emitted record is always exactly one line, whatever bytes its key and
/// value hold (ARCHITECTURE.md, "Output formats").
pub fn output_record(out: &mut Vec<u8>, format: OutputFormat, key: &[u8], value: &[u8]) {
    match format {
        OutputFormat::Text => text_line(out, key, value),
        OutputFormat::Jsonl => jsonl_line(out, key, value),
    }
}

/// `KEY VALUE`, or `KEY` alone when the value is empty, both escaped with
/// [`escape_text_field`].
fn text_line(out: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    escape_text_field(out, key);
    if !value.is_empty() {
        out.push(b' ');
        escape_text_field(out, value);
    }
    out.push(b'\n');
}

/// The text format's escaping, reversible: `\` → `\\`, LF → `\n`, CR →
/// `\r`; every other byte (spaces, tabs, bytes that are not UTF-8) as it is.
fn escape_text_field(out: &mut Vec<u8>, field: &[u8]) {
    let mut rest = field;
    while let Some(at) = rest
        .iter()
        .position(|&b| matches!(b, b'\\' | b'\n' | b'\r'))
    {
        out.extend_from_slice(&rest[..at]);
        out.extend_from_slice(match rest[at] {
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            _ => b"\\r",
        });
        rest = &rest[at + 1..];
    }
    out.extend_from_slice(rest);
}

/// `{"key":K,"value":V}`: a JSON string for a field that is UTF-8, else the
/// field is named `key_base64` / `value_base64` and holds standard base64.
fn jsonl_line(out: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    out.push(b'{');
    jsonl_field(out, "key", key);
    out.push(b',');
    jsonl_field(out, "value", value);
    out.extend_from_slice(b"}\n");
}

fn jsonl_field(out: &mut Vec<u8>, name: &str, bytes: &[u8]) {
    use base64::Engine as _;
    out.push(b'"');
    out.extend_from_slice(name.as_bytes());
    match std::str::from_utf8(bytes) {
        Ok(text) => {
            out.extend_from_slice(b"\":");
            serde_json::to_writer(&mut *out, text).expect("writing to a Vec cannot fail");
        }
        Err(_) => {
            // Base64's alphabet needs no JSON escaping.
            out.extend_from_slice(b"_base64\":\"");
            let encoded = base64::engine::general_purpose::STANDARD.encode(bytes);
            out.extend_from_slice(encoded.as_bytes());
            out.push(b'"');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_is_stable_across_versions() {
        // Pinned values: changing the function would scatter existing outputs.
        // FNV-1a("hello") = 0xa430d84680aabd0b, the published test value.
        assert_eq!(
            crate::model::hash_partition(b"hello", 7),
            (0xa430_d846_80aa_bd0bu64 % 7) as u32
        );
        assert_eq!(
            crate::model::hash_partition(b"", 10),
            (0xcbf2_9ce4_8422_2325u64 % 10) as u32
        );
        assert_eq!(crate::model::hash_partition(b"a", 1), 0);
        let spread: std::collections::BTreeSet<u32> = (0..200u32)
            .map(|i| crate::model::hash_partition(i.to_string().as_bytes(), 10))
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

    fn line(format: OutputFormat, key: &[u8], value: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        output_record(&mut out, format, key, value);
        out
    }

    /// The text format's inverse of `escape_text_field`, for the tests.
    fn unescape(field: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut bytes = field.iter();
        while let Some(&b) = bytes.next() {
            if b != b'\\' {
                out.push(b);
                continue;
            }
            match bytes.next() {
                Some(b'\\') => out.push(b'\\'),
                Some(b'n') => out.push(b'\n'),
                Some(b'r') => out.push(b'\r'),
                other => panic!("bad escape \\{other:?} in {field:?}"),
            }
        }
        out
    }

    #[test]
    fn text_escapes_backslash_lf_and_cr_and_nothing_else() {
        let text = |k: &[u8], v: &[u8]| line(OutputFormat::Text, k, v);
        assert_eq!(text(b"word", b"3"), b"word 3\n");
        assert_eq!(text(b"a\\b", b"c\\"), b"a\\\\b c\\\\\n");
        assert_eq!(text(b"a\nforged 999", b"1"), b"a\\nforged 999 1\n");
        assert_eq!(text(b"cr\r", b"\r\n"), b"cr\\r \\r\\n\n");
        // A literal backslash followed by `n` stays apart from an escaped LF.
        assert_eq!(text(b"\\n", b"\n"), b"\\\\n \\n\n");
        // An empty value: the key alone; an empty key: the line starts with
        // the separator; both empty: an empty line. Each is one line.
        assert_eq!(text(b"key", b""), b"key\n");
        assert_eq!(text(b"", b"1"), b" 1\n");
        assert_eq!(text(b"", b""), b"\n");
        // Spaces, tabs, other control bytes and bytes that are not UTF-8
        // are written as they are.
        assert_eq!(text(b"a b\tc", b"\x00\x7f"), b"a b\tc \x00\x7f\n");
        assert_eq!(text(b"\xff\xfe", b"caf\xc3\xa9"), b"\xff\xfe caf\xc3\xa9\n");
    }

    #[test]
    fn jsonl_writes_strings_or_base64_per_field() {
        let jsonl = |k: &[u8], v: &[u8]| line(OutputFormat::Jsonl, k, v);
        assert_eq!(
            jsonl(b"word", b"3"),
            b"{\"key\":\"word\",\"value\":\"3\"}\n"
        );
        assert_eq!(jsonl(b"", b""), b"{\"key\":\"\",\"value\":\"\"}\n");
        assert_eq!(
            jsonl(b"a\nforged \"x\"\\", b"\r\t\x01"),
            b"{\"key\":\"a\\nforged \\\"x\\\"\\\\\",\"value\":\"\\r\\t\\u0001\"}\n"
        );
        // UTF-8 beyond ASCII is a JSON string as it is.
        assert_eq!(
            jsonl("Straße".as_bytes(), "日本".as_bytes()),
            "{\"key\":\"Straße\",\"value\":\"日本\"}\n".as_bytes()
        );
        // Not UTF-8: that field (only) becomes base64, padded.
        assert_eq!(
            jsonl(b"\xff", b"ok"),
            b"{\"key_base64\":\"/w==\",\"value\":\"ok\"}\n"
        );
        assert_eq!(
            jsonl(b"k", b"\xc3\x28\n"),
            b"{\"key\":\"k\",\"value_base64\":\"wygK\"}\n"
        );
    }

    /// Golden bytes of a small part file in each format: changing them
    /// changes what every reader of wmr's output sees.
    #[test]
    fn output_formats_golden_bytes() {
        let records: [(&[u8], &[u8]); 5] = [
            (b"Holmes", b"42"),
            (b"doc1\nzzz-forged 999 victim.txt", b"1 a.txt"),
            (b"back\\slash", b""),
            (b"", b"cr\r"),
            (b"\x80bin", b"\xfe"),
        ];
        let file = |format| {
            let mut out = Vec::new();
            for (key, value) in records {
                output_record(&mut out, format, key, value);
            }
            out
        };
        let text: [&[u8]; 5] = [
            b"Holmes 42\n",
            b"doc1\\nzzz-forged 999 victim.txt 1 a.txt\n",
            b"back\\\\slash\n",
            b" cr\\r\n",
            b"\x80bin \xfe\n",
        ];
        assert_eq!(file(OutputFormat::Text), text.concat());
        assert_eq!(
            String::from_utf8(file(OutputFormat::Jsonl)).unwrap(),
            concat!(
                r#"{"key":"Holmes","value":"42"}"#,
                "\n",
                r#"{"key":"doc1\nzzz-forged 999 victim.txt","value":"1 a.txt"}"#,
                "\n",
                r#"{"key":"back\\slash","value":""}"#,
                "\n",
                r#"{"key":"","value":"cr\r"}"#,
                "\n",
                r#"{"key_base64":"gGJpbg==","value_base64":"/g=="}"#,
                "\n",
            )
        );
    }

    proptest::proptest! {
        /// One record is one line in either format, and it reads back to the
        /// record's bytes (text: split at the first space, for keys without
        /// one; jsonl: JSON, then base64 where named so).
        #[test]
        fn every_record_is_one_line_that_reads_back(
            key in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..24),
            value in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..24),
        ) {
            let text = line(OutputFormat::Text, &key, &value);
            proptest::prop_assert_eq!(text.iter().filter(|&&b| b == b'\n').count(), 1);
            proptest::prop_assert!(!text.contains(&b'\r'));
            proptest::prop_assert_eq!(text.last(), Some(&b'\n'));
            if !key.contains(&b' ') {
                let body = &text[..text.len() - 1];
                let (k, v) = match body.iter().position(|&b| b == b' ') {
                    Some(at) => (&body[..at], &body[at + 1..]),
                    None => (body, &[][..]),
                };
                proptest::prop_assert_eq!(unescape(k), key.clone());
                proptest::prop_assert_eq!(unescape(v), value.clone());
            }

            let jsonl = line(OutputFormat::Jsonl, &key, &value);
            proptest::prop_assert_eq!(jsonl.iter().filter(|&&b| b == b'\n').count(), 1);
            let object: serde_json::Map<String, serde_json::Value> =
                serde_json::from_slice(&jsonl).unwrap();
            proptest::prop_assert_eq!(object.len(), 2);
            let field = |name: &str| -> Vec<u8> {
                use base64::Engine as _;
                match (&object.get(name), &object.get(&format!("{name}_base64"))) {
                    (Some(s), None) => s.as_str().unwrap().as_bytes().to_vec(),
                    (None, Some(b)) => base64::engine::general_purpose::STANDARD
                        .decode(b.as_str().unwrap())
                        .unwrap(),
                    _ => panic!("{name}: {object:?}"),
                }
            };
            proptest::prop_assert_eq!(field("key"), key);
            proptest::prop_assert_eq!(field("value"), value);
        }
    }
}

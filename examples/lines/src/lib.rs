//! Test guest of tests/differential.rs: counts input lines (or tokens).
//! Every key's value is `1`; reduce sums. `--param key=line|word|hot` (see
//! `keys.rs`); `--param combine=sum` sums on the map side, `combine=decline`
//! (the default) keeps the SDK's default combiner, which declines.
use std::sync::OnceLock;
use wmr_guest::{Emitter, Group, Job, Values};

mod keys;

struct Lines;

impl Job for Lines {
    fn map(_file: &[u8], text: &[u8], out: &mut Emitter) -> Result<(), String> {
        let keys = keys::Keys::from_param(wmr_guest::param("key").as_deref())?;
        keys::each_key(text, &keys, |key| out.emit(key, "1"));
        Ok(())
    }

    fn reduce(key: &[u8], values: Values, out: &mut Emitter) -> Result<(), String> {
        out.emit(key, sum(values).to_string());
        Ok(())
    }

    fn combine(group: &Group, out: &mut Emitter) -> Option<Result<(), String>> {
        // Read once per instance: combine runs once per group.
        static COMBINE: OnceLock<Option<String>> = OnceLock::new();
        match COMBINE
            .get_or_init(|| wmr_guest::param("combine"))
            .as_deref()
        {
            Some("sum") => {
                out.emit(&group.key, sum(group.values.iter()).to_string());
                Some(Ok(()))
            }
            None | Some("decline") => None,
            Some(other) => Some(Err(format!("combine={other}: expected sum or decline"))),
        }
    }
}

fn sum<V: AsRef<[u8]>>(values: impl Iterator<Item = V>) -> u64 {
    values.map(|v| wmr_guest::parse_u64(v.as_ref())).sum()
}

wmr_guest::export!(Lines);

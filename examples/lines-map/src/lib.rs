//! Test guest of tests/differential.rs: the `lines` map as a component that
//! exports only `mapper` (world `map-task`), written without the SDK, so it
//! has no combiner export at all. Run it with `--reduce lines.wasm`.
wit_bindgen::generate!({
    path: "../../wit",
    world: "wmr:mapreduce/map-task@0.2.0",
});

#[path = "../../lines/src/keys.rs"]
mod keys;

use wmr::mapreduce::host::{self, Pair};

/// Pairs go to the host in batches of about this many bytes, as the SDK does.
const BATCH_BYTES: usize = 64 * 1024;

struct LinesMap;

impl exports::wmr::mapreduce::mapper::Guest for LinesMap {
    fn map(_file: Vec<u8>, text: Vec<u8>) -> Result<(), String> {
        let keys = keys::Keys::from_param(host::param("key").as_deref())?;
        let (mut batch, mut bytes) = (Vec::new(), 0);
        keys::each_key(&text, &keys, |key| {
            bytes += key.len() + 1;
            batch.push(Pair {
                key: key.to_vec(),
                value: b"1".to_vec(),
            });
            if bytes >= BATCH_BYTES {
                host::emit(&batch);
                batch.clear();
                bytes = 0;
            }
        });
        if !batch.is_empty() {
            host::emit(&batch);
        }
        Ok(())
    }
}

export!(LinesMap);

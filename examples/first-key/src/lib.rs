//! A reducer that stops early: it emits the first key of its partition with
//! that key's first value and returns without reading the rest, as a "head"
//! would. Written against `wit/` with plain wit-bindgen (no SDK) and the
//! list calls (`next-batch`, `emit`), which the Rust SDK no longer uses:
//! any binding of the world works.
wit_bindgen::generate!({
    path: "../../wit",
    world: "reduce-task",
});

use wmr::mapreduce::host;
use wmr::mapreduce::types::ReduceInput;

struct FirstKey;

impl exports::wmr::mapreduce::reducer::Guest for FirstKey {
    fn reduce(input: &ReduceInput) -> Result<(), String> {
        if let Some(part) = input.next_batch().into_iter().next() {
            let value = part.values.into_iter().next().unwrap_or_default();
            host::emit(&[host::Pair {
                key: part.key,
                value,
            }]);
        }
        Ok(())
    }
}

export!(FirstKey);

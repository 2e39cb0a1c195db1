//! The sequential reference (`wmr seq`): the oracle for output equality.
//!
//! The same components, one thread, no splitting and no partitioning: `map`
//! once per whole input file, one global sort, `reduce` over every group in
//! one store (pulled in the same batches as an attempt's). No combiner (a
//! combiner must not change the result).

use crate::model::{Limits, OutputFormat};
use crate::reduce_input::{PartBatches, SortedPairs};
use crate::sandbox::{AttemptContext, CollectPairs, Role, Sandbox};
use crate::shuffle::{self, Pair};
use crate::split;
use anyhow::{Context as _, anyhow};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

/// Run the job sequentially and return its output, lines in key order, in
/// `format`.
pub fn run_sequential(
    map: &Path,
    reduce: &Path,
    inputs: &[String],
    limits: &Limits,
    params: &BTreeMap<String, String>,
    format: OutputFormat,
) -> anyhow::Result<Vec<u8>> {
    let sandbox = Sandbox::new()?;
    let read = |p: &Path| std::fs::read(p).with_context(|| format!("{}", p.display()));
    let map_module = sandbox
        .load(&read(map)?, Role::Map)
        .with_context(|| format!("{}", map.display()))?;
    let reduce_module = sandbox
        .load(&read(reduce)?, Role::Reduce)
        .with_context(|| format!("{}", reduce.display()))?;
    let mut params = params.clone();
    params.insert("wmr.attempt".into(), "1".into());
    // A fresh attempt context per guest call: each gets the job's limits
    // whole, as an attempt would.
    let params = Arc::new(params);
    let ctx = || {
        AttemptContext::new(
            limits.clone(),
            params.clone(),
            Arc::new(AtomicBool::new(false)),
        )
    };
    let mut pairs: Vec<Pair> = Vec::new();
    for file in split::discover_inputs(inputs)? {
        let text = crate::storage::read_all(&file)?;
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let sink = CollectPairs::default();
        let call = sandbox.run_map(
            &map_module,
            &ctx(),
            name.as_bytes(),
            &text,
            Box::new(sink.clone()),
        );
        call.result
            .map_err(|f| anyhow!("map of {}: {f}", file.display()))?;
        pairs.append(&mut sink.take());
    }
    shuffle::sort_pairs(&mut pairs);
    let input = PartBatches::new(SortedPairs::new(pairs));
    let sink = CollectPairs::default();
    let call = sandbox.run_reduce(
        &reduce_module,
        &ctx(),
        Box::new(input),
        Box::new(sink.clone()),
    );
    call.result.map_err(|f| anyhow!("reduce: {f}"))?;
    let mut out = Vec::new();
    for (key, value) in &sink.take() {
        shuffle::output_record(&mut out, format, key, value);
    }
    Ok(out)
}

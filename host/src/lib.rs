//! # wmr: a WebAssembly-sandboxed map/reduce executor
//!
//! ## Layout
//! - [`model`], [`scheduler`], [`summary`]: re-exported from `wmr-core`
//!   (`host/core`): ids, limits and messages; one job's sans-IO state
//!   machine; what a finished job did. No I/O in them.
//! - [`sandbox`]: the wasmtime engine, one fresh store per attempt, limits.
//! - [`compile_cache`]: compiled components on disk, shared by processes.
//! - [`executor`]: runs one attempt into attempt-private files.
//! - [`reduce_input`]: a reduce attempt's input, cut into the batches the guest pulls.
//! - [`commit`]: job directory layout and the atomic commit of an attempt.
//! - [`split`], [`shuffle`]: input splitting; partition, sort, group.
//! - [`storage`]: `s3://` locations (object_store) next to local paths;
//!   [`object_commit`]: the reduce output committer for a store without rename.
//! - [`cluster`] (from `wmr-core`): the coordinator's state machine,
//!   driven by [`coordinator`] (QUIC, redb) and [`local`] (`wmr run`).
//! - [`lifecycle`]: plan, prepare, commit and clean up a job's files.
//! - [`local`]: the embedded driver of `wmr run` (threads and channels).
//! - [`transport`], [`wire`]: QUIC with pinned TLS, frames, messages.
//! - [`coordinator`], [`worker`]: the `wmr coordinator` and `wmr worker`
//!   processes.
//! - [`seq`]: the sequential reference. The benchmark is its own crate,
//!   `host/bench` (`wmr-bench`), outside the product.
pub use wmr_core::{attempt_ledger, cluster, model, placement, records, scheduler, summary, wire};

pub mod client;
pub mod commit;
pub mod compile_cache;
pub mod coordinator;
pub mod executor;
#[cfg(test)]
mod format_pins;
pub mod intermediate;
pub mod lifecycle;
pub mod local;
pub mod map_buffer;
pub mod object_commit;
pub mod reduce_input;
pub mod sampler;
pub mod sandbox;
pub mod seq;
pub mod shuffle;
pub mod shuffle_store;
pub mod split;
pub mod storage;
pub mod store;
pub mod tenants;
pub mod transport;
pub mod web;
pub mod worker;

//! # wmr: a WebAssembly-sandboxed map/reduce executor
//!
//! ## Layout
//! - [`protocol`]: the messages between coordinator and workers (plain data).
//! - [`scheduler`]: the coordinator's sans-IO state machine (no I/O, no clock).
//! - [`sandbox`]: the wasmtime engine, one fresh store per attempt, limits.
//! - [`worker`]: runs one attempt into attempt-private files.
//! - [`commit`]: job directory layout and the atomic commit of an attempt.
//! - [`split`], [`shuffle`]: input splitting; partition, sort, group.
//! - [`local`]: the embedded driver of `wmr run` (threads and channels).
//! - [`transport`], [`wire`]: QUIC with pinned TLS, frames, messages.
//! - [`coordinator`], [`node`]: the networked coordinator and worker.
//! - [`seq`]: the sequential reference; [`bench`]: `wmr bench`.
pub mod bench;
pub mod client;
pub mod commit;
pub mod coordinator;
pub mod local;
pub mod map_buffer;
pub mod node;
pub mod protocol;
pub mod sandbox;
pub mod scheduler;
pub mod seq;
pub mod shuffle;
pub mod split;
pub mod store;
pub mod tenants;
pub mod transport;
pub mod wire;
pub mod worker;

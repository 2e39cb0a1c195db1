//! # wmr: a WebAssembly-sandboxed map/reduce executor
//!
//! ## Layout
//! - [`protocol`]: the messages between coordinator and workers (plain data).
//! - [`scheduler`]: the coordinator's sans-IO state machine (no I/O, no clock).
//! - [`sandbox`]: the wasmtime engine, one fresh store per attempt, limits.
//! - [`worker`]: runs one attempt into attempt-private files.
//! - [`commit`]: job directory layout and the atomic commit of an attempt.
//! - [`split`], [`shuffle`]: input splitting; partition, sort, group.
pub mod bench;
pub mod commit;
pub mod local;
pub mod protocol;
pub mod sandbox;
pub mod scheduler;
pub mod seq;
pub mod shuffle;
pub mod split;
pub mod worker;

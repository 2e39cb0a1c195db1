//! # wmr-core: what wmr decides, without doing any I/O
//!
//! The parts of wmr that are plain data and pure state machines, in a crate
//! that depends on no async runtime, no QUIC, no storage engine and no Wasm
//! engine (Cargo enforces it: they are not dependencies), so that
//! `cargo test -p wmr-core` runs the deterministic simulation without
//! building wasmtime.
//!
//! - [`protocol`]: ids, limits, assignments, attempt reports and failures.
//! - [`scheduler`]: one job's sans-IO state machine: events and time in,
//!   actions out (I1–I9).
//! - [`summary`]: what a finished job did, from its scheduler.
pub mod protocol;
pub mod scheduler;
pub mod summary;

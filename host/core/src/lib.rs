//! # wmr-core: what wmr decides, without doing any I/O
//!
//! The parts of wmr that are plain data and pure state machines, in a crate
//! that depends on no async runtime, no QUIC, no storage engine and no Wasm
//! engine (Cargo enforces it: they are not dependencies), so that
//! `cargo test -p wmr-core` runs the deterministic simulation without
//! building wasmtime.
//!
//! - [`model`]: the domain: ids, limits, assignments, attempt reports and
//!   failures (the wire protocol itself is [`wire`]).
//! - [`scheduler`]: one job's sans-IO state machine: events and time in,
//!   actions out (I1–I9).
//! - [`summary`]: what a finished job did, from its scheduler.
//! - [`wire`]: the messages of the networked protocol (the frames around
//!   them are the `wmr` crate's `transport`).
//! - [`records`]: what the coordinator keeps durable.
//! - [`attempt_ledger`]: the worker's side of the report protocol (run,
//!   report, re-send until acknowledged, drain).
//! - [`cluster`]: the coordinator's state machine across jobs, tenants and
//!   workers: events and time in, effects out (persist, send, reply,
//!   commit).
//! - [`placement`]: label requirements and tenant pools: which worker may
//!   run which job's attempts.
pub mod attempt_ledger;
pub mod cluster;
pub mod model;
pub mod placement;
pub mod records;
pub mod scheduler;
pub mod summary;
pub mod wire;

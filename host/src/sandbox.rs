//! The Wasm sandbox: one `Engine` per process, a fresh `Store` per guest
//! call sequence (an attempt runs one or more: skip mode's bisection and
//! the combiner's batches add stores, all under the attempt's one budget,
//! [`AttemptContext`]).
//!
//! Every attempt gets fuel, a memory limit (a `ResourceLimiter`), a wall-clock
//! deadline checked through epoch interruption, an output limit enforced in
//! `emit`, and a WASI context with no directories, no environment, no
//! network and captured (size-capped) stdio. Whatever the guest does, the
//! attempt ends in an [`AttemptFailure`] the host can report; the host never
//! dies because of a guest.
//!
//! The `wmr:mapreduce/host` imports are linked by hand ([`add_host_imports`])
//! rather than through the generated `Host` trait, so that the host looks at
//! the size of what the guest hands over before copying any of it: a batch
//! of pairs is lifted one pair at a time and each is charged against the
//! output limit first; strings are read in place. What any host call may
//! copy is bounded by the output limit, the log limit and the constants
//! below; wasmtime's hostcall fuel (the memory limit, at least 128 MiB per
//! call) bounds the rest, including WASI calls.

use crate::compile_cache::{CacheOptions, CacheReport, CompileCache};
use crate::intermediate;
use crate::model::{AttemptFailure, Limits};
use anyhow::{Context as _, bail};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use wasmtime::component::{
    Component, ComponentType, Lift, Linker, Resource, ResourceTable, WasmList, WasmStr,
};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, ResourceLimiter, Store,
    StoreContextMut, UpdateDeadline,
};
use wasmtime_wasi::clocks::WasiClocksView as _;
use wasmtime_wasi::p2::DynPollable;
use wasmtime_wasi::p2::bindings::clocks::monotonic_clock;
use wasmtime_wasi::p2::bindings::sockets::{network, tcp_create_socket};
use wasmtime_wasi::p2::bindings::sync::sockets::udp_create_socket;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "map-task",
    });

    pub mod reduce {
        wasmtime::component::bindgen!({
            path: "../wit",
            world: "reduce-task",
            with: {
                "wmr:mapreduce/host": super::wmr::mapreduce::host,
                "wmr:mapreduce/types.reduce-input": crate::sandbox::ReduceInputHandle,
            },
        });
    }

    pub mod combine {
        wasmtime::component::bindgen!({
            path: "../wit",
            world: "combine-task",
            with: {
                "wmr:mapreduce/host": super::wmr::mapreduce::host,
                "wmr:mapreduce/types": super::reduce::wmr::mapreduce::types,
            },
        });
    }
}

pub use bindings::reduce::wmr::mapreduce::types::{Group, GroupPart};
use bindings::wmr::mapreduce::host;

/// The WIT package version this host speaks.
pub const WORLD_PACKAGE: &str = "wmr:mapreduce@0.2.0";
/// Its name without the version, as import and export names start.
const WORLD_NAME: &str = "wmr:mapreduce";
const MAPPER_EXPORT: &str = "wmr:mapreduce/mapper@0.2.0";
const REDUCER_EXPORT: &str = "wmr:mapreduce/reducer@0.2.0";

/// How often the epoch advances: the granularity of timeouts and cancels.
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Attempts a [`Sandbox::new`] holds pool slots for at once.
pub const DEFAULT_CONCURRENT_ATTEMPTS: u32 = 16;

/// Pool slots one attempt may use. A Rust guest needs one component
/// instance, a few core instances, one memory and one table; these leave
/// room for components from other toolchains (componentize-py links a
/// dozen core modules).
const CORE_INSTANCES_PER_ATTEMPT: u32 = 64;
const MEMORIES_PER_ATTEMPT: u32 = 4;
const TABLES_PER_ATTEMPT: u32 = 16;
/// Table elements of one attempt, all tables together (host memory: 8–16
/// bytes each).
const TABLE_ELEMENTS_PER_ATTEMPT: u64 = 1 << 20;
/// Resource handles (streams, pollables, sockets, …) one store may hold.
/// A Rust guest uses a handful; each costs host memory, a socket an fd.
pub const MAX_RESOURCES_PER_STORE: usize = 4096;
/// wasmtime's own hostcall fuel (bytes one guest-to-host call may copy).
const DEFAULT_HOSTCALL_FUEL: usize = 128 << 20;

/// Bytes of each memory and table reset by `memset` rather than `madvise`
/// when a slot is reused: a small attempt then takes no page faults.
const KEEP_RESIDENT_BYTES: usize = 64 << 10;

/// The instance name the host imports are linked under.
const HOST_IMPORT: &str = "wmr:mapreduce/host@0.2.0";
/// The instance of the `reduce-input` resource and its method.
const TYPES_IMPORT: &str = "wmr:mapreduce/types@0.2.0";

/// A counter name longer than this fails the attempt
/// (`incr-counter: counter name longer than 256 bytes`).
pub const MAX_COUNTER_NAME_BYTES: usize = 256;
/// More distinct counters than this in one attempt fail it
/// (`incr-counter: more than 1024 distinct counters`).
pub const MAX_COUNTERS: usize = 1024;
/// What each emitted pair costs against the output limit on top of its key
/// and value bytes: what holding it really costs the host (see
/// [`crate::map_buffer`]), so a flood of empty pairs is bounded by the
/// output limit in host memory too.
pub const PAIR_OVERHEAD_BYTES: u64 = 32;
/// A guest's error message (and a trap's) is cut to this many bytes: it
/// travels to the coordinator and is kept in the job's attempt log.
pub const MAX_FAILURE_MESSAGE_BYTES: usize = 4096;
/// Denied capability uses an attempt records by name; the rest are counted.
pub const MAX_DENIALS_KEPT: usize = 8;

/// What a component is loaded for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Map,
    Reduce,
}

impl Role {
    fn export(self) -> &'static str {
        match self {
            Role::Map => MAPPER_EXPORT,
            Role::Reduce => REDUCER_EXPORT,
        }
    }
}

/// An emitted pair: key and value bytes.
pub type Pair = (Vec<u8>, Vec<u8>);

/// A reduce attempt's input, as the guest pulls it through
/// `reduce-input.next-batch` (see [`crate::reduce_input`]).
pub trait ReduceInput: Send {
    /// The next batch, framed as `next-batch-framed` lays it out; empty at
    /// the end (and after it).
    fn next_batch_framed(&mut self) -> anyhow::Result<Vec<u8>>;

    /// The next batch of group parts, empty at the end (and after it).
    fn next_batch(&mut self) -> anyhow::Result<Vec<GroupPart>> {
        crate::reduce_input::unframe_batch(&self.next_batch_framed()?)
    }
    /// Whether a batch came back empty: the guest read everything.
    fn ended(&self) -> bool;
}

/// The host type of the `reduce-input` resource. Its one handle is a borrow
/// the host lends `reduce`; the input itself is the store's
/// ([`AttemptState`]), as a store runs one `reduce` call.
pub struct ReduceInputHandle;

/// Where an attempt's emitted pairs go.
pub trait PairSink: Send {
    fn accept(&mut self, key: Vec<u8>, value: Vec<u8>) -> anyhow::Result<()>;

    /// [`Self::accept`] of borrowed bytes; a sink that copies them anyway
    /// (the map's sort buffer) saves two allocations per pair.
    fn accept_slices(&mut self, key: &[u8], value: &[u8]) -> anyhow::Result<()> {
        self.accept(key.to_vec(), value.to_vec())
    }

    /// The sink wants [`Self::spill`] called before it takes more: `emit`
    /// does it with the store's budget handed over, since a spill may run
    /// another store of the attempt (the combiner).
    fn spill_due(&self) -> bool {
        false
    }

    fn spill(&mut self) -> Result<(), AttemptFailure> {
        Ok(())
    }
}

impl PairSink for Vec<Pair> {
    fn accept(&mut self, key: Vec<u8>, value: Vec<u8>) -> anyhow::Result<()> {
        self.push((key, value));
        Ok(())
    }
}

/// The host's state inside one attempt's `Store`.
pub struct AttemptState {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: Limits,
    memory_limit_hit: bool,
    /// Bytes of all the store's linear memories together.
    memory_bytes: u64,
    /// What those may grow to: the memory limit less what a store of the
    /// same attempt holds while this one runs inside its call (a map
    /// suspended in `emit` while its spill is combined).
    memory_room: u64,
    /// Elements of all the store's tables together.
    table_elements: u64,
    sink: Box<dyn PairSink>,
    /// `emit`'s copy of the pair being handed to the sink.
    scratch: Vec<u8>,
    bytes_out: u64,
    records_out: u64,
    /// What the attempt holds (all its stores; see [`AttemptBudget`]) plus
    /// this store's pairs, each at [`pair_charge`]: what the output limit is
    /// checked against.
    charged_out: u64,
    /// The fuel this store was given: what the attempt had left (at its
    /// start or at its last [`Self::hand_over_budget`]).
    fuel_given: u64,
    /// Fuel used before the last hand-over (already in the budget).
    fuel_handed_over: u64,
    budget: Arc<Mutex<AttemptBudget>>,
    counters: BTreeMap<String, i64>,
    params: Arc<BTreeMap<String, String>>,
    log: String,
    /// A log line was cut: the log takes no more lines.
    log_cut: bool,
    stdio: CappedStdio,
    denied: Arc<Mutex<Denials>>,
    deadline: Instant,
    cancel: Arc<AtomicBool>,
    sink_error: Option<String>,
    /// A reduce store's input.
    reduce_input: Option<Box<dyn ReduceInput>>,
    /// Why reading the reduce input failed, for the attempt's failure.
    input_error: Option<String>,
}

impl WasiView for AttemptState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl ResourceLimiter for AttemptState {
    // Called for every memory, from its creation (current 0) on: the sum
    // of the approved growths is all memories together.
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = (self.memory_bytes + desired as u64).saturating_sub(current as u64);
        if total > self.memory_room {
            self.memory_limit_hit = true;
            return Ok(false);
        }
        self.memory_bytes = total;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = (self.table_elements + desired as u64).saturating_sub(current as u64);
        if total > TABLE_ELEMENTS_PER_ATTEMPT {
            return Ok(false);
        }
        self.table_elements = total;
        Ok(true)
    }

    // Counts per store; the pool's per-component maximums refuse a
    // component with more at load time already.
    fn instances(&self) -> usize {
        CORE_INSTANCES_PER_ATTEMPT as usize
    }

    fn memories(&self) -> usize {
        MEMORIES_PER_ATTEMPT as usize
    }

    fn tables(&self) -> usize {
        TABLES_PER_ATTEMPT as usize
    }
}

/// Denied capability uses: the first [`MAX_DENIALS_KEPT`] by name, then a count.
#[derive(Default)]
struct Denials {
    kept: Vec<String>,
    more: u64,
}

impl Denials {
    fn record(&mut self, what: String) {
        if self.kept.len() < MAX_DENIALS_KEPT {
            self.kept.push(what);
        } else {
            self.more += 1;
        }
    }

    fn describe(&self) -> Option<String> {
        if self.kept.is_empty() {
            return None;
        }
        let mut what = self.kept.join("; ");
        if self.more > 0 {
            what.push_str(&format!(" (and {} more)", self.more));
        }
        Some(what)
    }
}

/// `wasi:clocks/monotonic-clock` whose sleeps end by the attempt's deadline
/// or soon after it is cancelled. A guest asleep in the host
/// (`subscribe-duration` + `pollable.block`) runs no Wasm, so no epoch
/// check could stop it; the sleep returns at the deadline, or within
/// [`CANCEL_POLL`] of a cancel, and the next epoch check ends the attempt
/// as timed out or cancelled.
struct DeadlineClock;

/// How often a guest's sleep in the host looks at its attempt's cancel flag.
const CANCEL_POLL: Duration = Duration::from_millis(10);

impl wasmtime::component::HasData for DeadlineClock {
    type Data<'a> = DeadlineClockView<'a>;
}

struct DeadlineClockView<'a> {
    clocks: wasmtime_wasi::clocks::WasiClocksCtxView<'a>,
    deadline: Instant,
    cancel: Arc<AtomicBool>,
}

/// A guest's sleep: until `until`, or until its attempt is cancelled.
struct CancellableSleep {
    until: tokio::time::Instant,
    cancel: Arc<AtomicBool>,
}

// The trait is declared with `async_trait`; this is its expansion.
impl wasmtime_wasi::p2::Pollable for CancellableSleep {
    fn ready<'life, 'future>(
        &'life mut self,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'future>>
    where
        'life: 'future,
        Self: 'future,
    {
        Box::pin(async move {
            while !self.cancel.load(Ordering::Relaxed) {
                let now = tokio::time::Instant::now();
                if now >= self.until {
                    return;
                }
                tokio::time::sleep_until(self.until.min(now + CANCEL_POLL)).await;
            }
        })
    }
}

impl DeadlineClockView<'_> {
    fn left(&self) -> u64 {
        let left = self.deadline.saturating_duration_since(Instant::now());
        u64::try_from(left.as_nanos()).unwrap_or(u64::MAX)
    }
}

impl monotonic_clock::Host for DeadlineClockView<'_> {
    fn now(&mut self) -> wasmtime::Result<u64> {
        self.clocks.now()
    }

    fn resolution(&mut self) -> wasmtime::Result<u64> {
        self.clocks.resolution()
    }

    fn subscribe_instant(&mut self, when: u64) -> wasmtime::Result<Resource<DynPollable>> {
        // As a duration from the guest's "now" (a stopped clock's is zero).
        let duration = when.saturating_sub(self.clocks.now()?);
        self.subscribe_duration(duration)
    }

    fn subscribe_duration(&mut self, duration: u64) -> wasmtime::Result<Resource<DynPollable>> {
        let capped = duration.min(self.left());
        if capped == 0 {
            // WASI's own zero sleep: it yields to the runtime once.
            return self.clocks.subscribe_duration(0);
        }
        let sleep = CancellableSleep {
            until: tokio::time::Instant::now() + Duration::from_nanos(capped),
            cancel: self.cancel.clone(),
        };
        let sleep = self.clocks.table.push(sleep)?;
        wasmtime_wasi::p2::subscribe(self.clocks.table, sleep)
    }
}

/// `wasi:sockets` socket creation, refused: a socket is an fd, and a guest
/// that may not connect or bind has no use for one. Without this a guest
/// could hold the worker's whole fd limit in unconnected sockets (issue 10).
/// The refusal is recorded, so the attempt fails as `denied`.
struct NoSockets;

impl wasmtime::component::HasData for NoSockets {
    type Data<'a> = SocketDenials<'a>;
}

/// The view [`NoSockets`] hands the socket-creation imports.
struct SocketDenials<'a>(&'a Mutex<Denials>);

impl SocketDenials<'_> {
    fn refuse(&self, kind: &str) -> wasmtime_wasi::p2::SocketError {
        self.0
            .lock()
            .expect("denial log poisoned")
            .record(format!("creating a {kind} socket is not granted"));
        network::ErrorCode::AccessDenied.into()
    }
}

impl tcp_create_socket::Host for SocketDenials<'_> {
    fn create_tcp_socket(
        &mut self,
        _family: network::IpAddressFamily,
    ) -> wasmtime_wasi::p2::SocketResult<Resource<wasmtime_wasi::p2::TcpSocket>> {
        Err(self.refuse("TCP"))
    }
}

impl udp_create_socket::Host for SocketDenials<'_> {
    fn create_udp_socket(
        &mut self,
        _family: network::IpAddressFamily,
    ) -> wasmtime_wasi::p2::SocketResult<Resource<wasmtime_wasi::p2::UdpSocket>> {
        Err(self.refuse("UDP"))
    }
}

// Required by the bindings' trait bounds; only the create functions are
// linked through this view.
impl network::Host for SocketDenials<'_> {
    fn convert_error_code(
        &mut self,
        error: wasmtime_wasi::p2::SocketError,
    ) -> wasmtime::Result<network::ErrorCode> {
        error.downcast()
    }

    fn network_error_code(
        &mut self,
        _error: Resource<network::Error>,
    ) -> wasmtime::Result<Option<network::ErrorCode>> {
        Ok(None)
    }
}

impl network::HostNetwork for SocketDenials<'_> {
    fn drop(&mut self, _network: Resource<network::Network>) -> wasmtime::Result<()> {
        Ok(())
    }
}

/// The clocks of a guest without `--grant clock`: always zero.
struct StoppedClock;

impl wasmtime_wasi::HostWallClock for StoppedClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

impl wasmtime_wasi::HostMonotonicClock for StoppedClock {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }
    fn now(&self) -> u64 {
        0
    }
}

/// The guest's stdout and stderr, at most `cap` bytes: the first bytes and
/// the last [`STDIO_TAIL_BYTES`], with a line saying how much was dropped
/// between them. The tail is kept because a guest that prints too much and
/// then panics has its panic message at the very end. Writes past the
/// limit still succeed, so a guest that prints a lot goes on (a full pipe
/// would fail its writes and make Rust's `println!` panic).
#[derive(Clone)]
struct CappedStdio {
    kept: Arc<Mutex<KeptStdio>>,
    cap: usize,
}

#[derive(Default)]
struct KeptStdio {
    head: Vec<u8>,
    tail: std::collections::VecDeque<u8>,
    dropped: u64,
}

const STDIO_TAIL_BYTES: usize = 4096;
/// Room left for the `[… N bytes dropped …]` line.
const STDIO_MARKER_BYTES: usize = 64;

impl CappedStdio {
    fn new(cap: usize) -> Self {
        CappedStdio {
            kept: Arc::default(),
            cap,
        }
    }

    /// Bytes kept at the end; none when the cap is too small to split.
    fn tail_cap(&self) -> usize {
        if self.cap < 4 * STDIO_MARKER_BYTES {
            0
        } else {
            STDIO_TAIL_BYTES.min(self.cap / 4)
        }
    }

    fn write(&self, mut bytes: &[u8]) {
        let tail_cap = self.tail_cap();
        let head_cap = if tail_cap == 0 {
            self.cap
        } else {
            self.cap - tail_cap - STDIO_MARKER_BYTES
        };
        let mut kept = self.kept.lock().expect("poisoned");
        let room = head_cap.saturating_sub(kept.head.len());
        let to_head = bytes.len().min(room);
        kept.head.extend_from_slice(&bytes[..to_head]);
        bytes = &bytes[to_head..];
        if tail_cap == 0 {
            kept.dropped += bytes.len() as u64;
            return;
        }
        // Only the last `tail_cap` bytes can stay in the tail.
        if bytes.len() > tail_cap {
            kept.dropped += (bytes.len() - tail_cap) as u64;
            bytes = &bytes[bytes.len() - tail_cap..];
        }
        let overflow = (kept.tail.len() + bytes.len()).saturating_sub(tail_cap);
        kept.tail.drain(..overflow);
        kept.dropped += overflow as u64;
        kept.tail.extend(bytes);
    }

    fn contents(&self) -> Vec<u8> {
        let kept = self.kept.lock().expect("poisoned");
        let mut out = kept.head.clone();
        if kept.dropped > 0 && self.tail_cap() > 0 {
            out.extend_from_slice(format!("\n[… {} bytes dropped …]\n", kept.dropped).as_bytes());
        }
        out.extend(kept.tail.iter());
        out
    }
}

impl wasmtime_wasi::cli::IsTerminal for CappedStdio {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl wasmtime_wasi::cli::StdoutStream for CappedStdio {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl tokio::io::AsyncWrite for CappedStdio {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        bytes: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.write(bytes);
        std::task::Poll::Ready(Ok(bytes.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// Markers carried by the errors that end an attempt from the host side.
#[derive(Debug, thiserror::Error)]
enum HostStop {
    #[error("output limit exceeded")]
    OutputLimit,
    #[error("output could not be stored: {0}")]
    Sink(String),
    #[error("wall-clock limit reached")]
    TimedOut,
    #[error("cancelled")]
    Cancelled,
    /// A host import refused its arguments; the text names the import and
    /// the bound.
    #[error("{0}")]
    Refused(String),
    /// Another store the sink ran for this attempt failed (the combiner at
    /// a spill): the attempt fails as that store did.
    #[error("{0}")]
    Spill(AttemptFailure),
    /// The reduce input could not be read.
    #[error("reading the reduce input: {0}")]
    Input(String),
}

/// A `pair` as the guest laid it out, not yet copied: the host checks the
/// sizes before it copies the bytes.
#[derive(ComponentType, Lift)]
#[component(record)]
struct RawPair {
    key: WasmList<u8>,
    value: WasmList<u8>,
}

fn stop(stop: HostStop) -> wasmtime::Error {
    wasmtime::Error::new(stop)
}

fn not_utf8(what: &str) -> wasmtime::Error {
    stop(HostStop::Refused(format!("{what} is not valid UTF-8")))
}

/// Link the `wmr:mapreduce/host` imports. Each reads its arguments in place
/// and copies only what passed its bound.
fn add_host_imports(linker: &mut Linker<AttemptState>) -> wasmtime::Result<()> {
    let mut host = linker.instance(HOST_IMPORT)?;
    host.func_wrap(
        "emit",
        |mut store: StoreContextMut<'_, AttemptState>, (pairs,): (WasmList<RawPair>,)| {
            // One copy of each pair, through a buffer kept across pairs.
            let mut copy = std::mem::take(&mut store.data_mut().scratch);
            for i in 0..pairs.len() {
                let pair = pairs.get(&mut store, i).expect("index within the list")?;
                let state = store.data_mut();
                state
                    .charge_pair(pair.key.len(), pair.value.len())
                    .map_err(stop)?;
                copy.clear();
                copy.extend_from_slice(pair.key.as_le_slice(&store));
                copy.extend_from_slice(pair.value.as_le_slice(&store));
                let (key, value) = copy.split_at(pair.key.len());
                store.data_mut().accept_pair(key, value).map_err(stop)?;
                if store.data().sink.spill_due() {
                    spill_sink(&mut store)?;
                }
            }
            // Not kept past a large pair: the buffer is host memory.
            if copy.capacity() <= SCRATCH_KEPT_BYTES {
                store.data_mut().scratch = copy;
            }
            Ok(())
        },
    )?;
    host.func_wrap(
        "emit-framed",
        |mut store: StoreContextMut<'_, AttemptState>, (framed,): (WasmList<u8>,)| {
            // Copied a window at a time into a buffer kept across calls:
            // host memory stays bounded whatever the guest passes, and each
            // pair is charged before it is accepted (a pair larger than a
            // window is charged before it is copied at all).
            let mut window = std::mem::take(&mut store.data_mut().scratch);
            let result = emit_framed(&mut store, &framed, &mut window);
            if window.capacity() <= SCRATCH_KEPT_BYTES {
                store.data_mut().scratch = window;
            }
            result
        },
    )?;
    host.func_wrap(
        "incr-counter",
        |mut store: StoreContextMut<'_, AttemptState>, (name, delta): (WasmStr, i64)| {
            let name = name
                .to_str(&store)
                .map_err(|_| not_utf8("incr-counter: the counter name"))?;
            // Checked before the name is copied.
            check_counter_name(&name).map_err(stop)?;
            let name = name.into_owned();
            store.data_mut().incr_counter(&name, delta).map_err(stop)
        },
    )?;
    host.func_wrap(
        "log",
        |mut store: StoreContextMut<'_, AttemptState>, (level, message): (host::Level, WasmStr)| {
            let message = message
                .to_str(&store)
                .map_err(|_| not_utf8("log: the message"))?;
            // Only what fits in the attempt's log is copied.
            let room = store.data().log_room();
            let kept = prefix_within(&message, room).to_string();
            store.data_mut().log(level, &kept);
            Ok(())
        },
    )?;
    host.func_wrap(
        "param",
        |store: StoreContextMut<'_, AttemptState>, (name,): (WasmStr,)| {
            let name = name
                .to_str(&store)
                .map_err(|_| not_utf8("param: the name"))?;
            Ok((store.data().param(&name),))
        },
    )?;
    let mut types = linker.instance(TYPES_IMPORT)?;
    // The host lends the one handle and never hands out an owned one, so
    // there is nothing to destroy.
    types.resource(
        "reduce-input",
        wasmtime::component::ResourceType::host::<ReduceInputHandle>(),
        |_, _| Ok(()),
    )?;
    types.func_wrap(
        "[method]reduce-input.next-batch",
        |mut store: StoreContextMut<'_, AttemptState>,
         (_input,): (Resource<ReduceInputHandle>,)| {
            store
                .data_mut()
                .next_batch(|input| input.next_batch())
                .map(|batch| (batch,))
                .map_err(stop)
        },
    )?;
    types.func_wrap(
        "[method]reduce-input.next-batch-framed",
        |mut store: StoreContextMut<'_, AttemptState>,
         (_input,): (Resource<ReduceInputHandle>,)| {
            store
                .data_mut()
                .next_batch(|input| input.next_batch_framed())
                .map(|batch| (batch,))
                .map_err(stop)
        },
    )?;
    Ok(())
}

/// `emit-framed`: the pairs of `framed` (in guest memory), through
/// `window`, each charged and accepted as `emit` does.
fn emit_framed(
    store: &mut StoreContextMut<'_, AttemptState>,
    framed: &WasmList<u8>,
    window: &mut Vec<u8>,
) -> wasmtime::Result<()> {
    let total = framed.len();
    let malformed = |at: usize| {
        stop(HostStop::Refused(format!(
            "emit-framed: the buffer does not frame whole pairs (at byte {at} of {total})"
        )))
    };
    let mut at = 0;
    'windows: while at < total {
        let end = total.min(at + SCRATCH_KEPT_BYTES);
        window.clear();
        window.extend_from_slice(&framed.as_le_slice(&*store)[at..end]);
        let mut pos = 0;
        loop {
            // `varint key-len | key | varint value-len | value`: the key at
            // `key_at`, the value at `value_at`, the record ending at
            // `record_end` (offsets in the window).
            let mut header = framed_header(window, pos);
            if header.is_none() && pos == 0 && end < total {
                // A key larger than the window: its header, read in place.
                header = framed_header(&framed.as_le_slice(&*store)[at..], 0);
            }
            let Some((key_at, key_len, value_at, value_len)) = header else {
                // A header cut by the window's end is read again from the
                // next window; cut by the buffer's end, it is malformed.
                if pos == window.len() || (pos > 0 && end < total) {
                    break;
                }
                return Err(malformed(at + pos));
            };
            let record_end = value_at
                .checked_add(value_len)
                .filter(|&n| at + n <= total)
                .ok_or_else(|| malformed(at + pos))?;
            if record_end > window.len() {
                if pos > 0 {
                    break;
                }
                // Larger than a window: charged, then copied on its own.
                store
                    .data_mut()
                    .charge_pair(key_len, value_len)
                    .map_err(stop)?;
                let slice = framed.as_le_slice(&*store);
                let key = slice[at + key_at..at + key_at + key_len].to_vec();
                let value = slice[at + value_at..at + record_end].to_vec();
                store.data_mut().accept_pair(&key, &value).map_err(stop)?;
                if store.data().sink.spill_due() {
                    spill_sink(store)?;
                }
                at += record_end;
                continue 'windows;
            } else {
                let state = store.data_mut();
                state.charge_pair(key_len, value_len).map_err(stop)?;
                let (key, value) = (
                    &window[key_at..key_at + key_len],
                    &window[value_at..record_end],
                );
                state.accept_pair(key, value).map_err(stop)?;
                pos = record_end;
            }
            if store.data().sink.spill_due() {
                spill_sink(store)?;
            }
            if pos == window.len() {
                break;
            }
        }
        at += pos;
    }
    Ok(())
}

/// The framed pair at `pos` of `bytes` (`varint key-len | key | varint
/// value-len | value`): where its key and value start and their lengths;
/// `None` if its header is cut short or malformed.
fn framed_header(bytes: &[u8], pos: usize) -> Option<(usize, usize, usize, usize)> {
    let mut key_at = pos;
    let key_len = usize::try_from(intermediate::get_varint(bytes, &mut key_at)?).ok()?;
    let mut value_at = key_at.checked_add(key_len)?;
    let value_len = usize::try_from(intermediate::get_varint(bytes, &mut value_at)?).ok()?;
    Some((key_at, key_len, value_at, value_len))
}

/// The emit buffer a store keeps between calls, at most.
const SCRATCH_KEPT_BYTES: usize = 64 << 10;
/// Native stack of the thread a spill runs on: its combiner store gets a
/// stack of its own rather than what the suspended map left of this one.
const SPILL_THREAD_STACK_BYTES: usize = 8 << 20;

/// Let the sink spill (and combine: another store of the attempt) while
/// this store waits in `emit`: the store hands what it used to the
/// attempt's budget first, and takes back what is left after, so the
/// attempt's fuel, output and memory limits hold for both stores together.
fn spill_sink(store: &mut StoreContextMut<'_, AttemptState>) -> wasmtime::Result<()> {
    let fuel_left = store.get_fuel()?;
    store.data_mut().hand_over_budget(fuel_left);
    let state = store.data_mut();
    let sink = &mut state.sink;
    // On a thread of its own: a guest running inside a guest's call would
    // otherwise share one native stack with it.
    let spilled = std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("wmr-spill".into())
            .stack_size(SPILL_THREAD_STACK_BYTES)
            .spawn_scoped(scope, || sink.spill())
            .map(|thread| thread.join())
    });
    let fuel_left = store.data_mut().take_back_budget();
    store.set_fuel(fuel_left)?;
    match spilled {
        Ok(Ok(Ok(()))) => Ok(()),
        Ok(Ok(Err(failure))) => Err(stop(HostStop::Spill(failure))),
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        Err(e) => Err(stop(HostStop::Sink(format!(
            "starting a spill thread: {e}"
        )))),
    }
}

fn check_counter_name(name: &str) -> Result<(), HostStop> {
    if name.len() > MAX_COUNTER_NAME_BYTES {
        return Err(HostStop::Refused(format!(
            "incr-counter: counter name longer than {MAX_COUNTER_NAME_BYTES} bytes"
        )));
    }
    // The host's counters (spills) must mean what they say.
    if name.starts_with(RESERVED_COUNTER_PREFIX) {
        return Err(HostStop::Refused(format!(
            "incr-counter: counter names starting with `{RESERVED_COUNTER_PREFIX}` are the host's"
        )));
    }
    Ok(())
}

/// Counters the host keeps itself (`wmr.map.spills`, ...).
pub const RESERVED_COUNTER_PREFIX: &str = "wmr.";

/// The host side of the `wmr:mapreduce/host` imports, after lifting.
impl AttemptState {
    /// A fresh attempt's host state: empty WASI context, no output yet.
    fn new(ctx: &AttemptContext, sink: Box<dyn PairSink>) -> AttemptState {
        let stdio = CappedStdio::new(ctx.limits.log_bytes as usize);
        let denied = Arc::new(Mutex::new(Denials::default()));
        let denied_log = denied.clone();
        let mut wasi = WasiCtx::builder();
        if !ctx.limits.clock {
            // No clock unless granted: both WASI clocks stand still at zero,
            // so a guest learns nothing from timing and its output cannot
            // depend on when it ran.
            wasi.wall_clock(StoppedClock).monotonic_clock(StoppedClock);
        }
        let wasi = wasi
            .stdout(stdio.clone())
            .stderr(stdio.clone())
            // TCP/UDP stay "allowed" so that every socket address reaches
            // this check, which refuses it and records the denial.
            .allow_tcp(true)
            .allow_udp(true)
            .socket_addr_check(move |addr: SocketAddr, use_| {
                denied_log
                    .lock()
                    .expect("denial log poisoned")
                    .record(format!(
                        "network access to {addr} ({use_:?}) is not granted"
                    ));
                Box::pin(async { false })
            })
            .build();
        let (deadline, fuel_given, charged_out, memory_room) = {
            let budget = ctx.budget.lock().expect("poisoned");
            (
                budget.deadline,
                ctx.limits.fuel.saturating_sub(budget.fuel_used),
                budget.output_held,
                ctx.limits
                    .memory_bytes
                    .saturating_sub(budget.memory_suspended),
            )
        };
        let mut table = ResourceTable::new();
        // Each handle is host memory (and a socket may be an fd): cap what
        // one store can hold.
        table.set_max_capacity(MAX_RESOURCES_PER_STORE);
        AttemptState {
            wasi,
            table,
            limits: ctx.limits.clone(),
            memory_limit_hit: false,
            memory_room,
            sink,
            scratch: Vec::new(),
            bytes_out: 0,
            records_out: 0,
            charged_out,
            fuel_given,
            fuel_handed_over: 0,
            budget: ctx.budget.clone(),
            memory_bytes: 0,
            table_elements: 0,
            counters: BTreeMap::new(),
            params: ctx.params.clone(),
            log: String::new(),
            log_cut: false,
            stdio,
            denied,
            deadline,
            cancel: ctx.cancel.clone(),
            sink_error: None,
            reduce_input: None,
            input_error: None,
        }
    }

    /// `reduce-input.next-batch`. The time limit and a cancel are checked
    /// here too: reading the input is the host's time, spent between the
    /// guest's epoch checks.
    fn next_batch<T>(
        &mut self,
        next: impl FnOnce(&mut dyn ReduceInput) -> anyhow::Result<T>,
    ) -> Result<T, HostStop> {
        if self.cancel.load(Ordering::Relaxed) {
            return Err(HostStop::Cancelled);
        }
        if Instant::now() >= self.deadline {
            return Err(HostStop::TimedOut);
        }
        let input = self.reduce_input.as_mut().ok_or_else(|| {
            HostStop::Refused("reduce-input: there is no reduce input outside `reduce`".into())
        })?;
        next(input.as_mut()).map_err(|e| {
            let message = format!("{e:#}");
            self.input_error = Some(message.clone());
            HostStop::Input(message)
        })
    }

    /// Count one pair of `key_len + value_len` bytes against the output
    /// limit, before its bytes are copied.
    fn charge_pair(&mut self, key_len: usize, value_len: usize) -> Result<(), HostStop> {
        let bytes = (key_len as u64).saturating_add(value_len as u64);
        let charged = self
            .charged_out
            .saturating_add(pair_charge(key_len, value_len));
        if charged > self.limits.output_bytes {
            return Err(HostStop::OutputLimit);
        }
        self.charged_out = charged;
        self.bytes_out += bytes;
        self.records_out += 1;
        Ok(())
    }

    /// Put what this store used so far into the attempt's budget, as if it
    /// had finished: another store of the attempt starts from there.
    fn hand_over_budget(&mut self, fuel_left: u64) {
        let used = self.fuel_given.saturating_sub(fuel_left);
        self.fuel_handed_over += used;
        self.fuel_given = fuel_left;
        let mut budget = self.budget.lock().expect("poisoned");
        budget.fuel_used = budget.fuel_used.saturating_add(used);
        budget.output_held = self.charged_out;
        budget.memory_suspended = self.memory_bytes;
    }

    /// After [`Self::hand_over_budget`] and the other store: go on with
    /// what the attempt has left. Returns the fuel to set.
    fn take_back_budget(&mut self) -> u64 {
        let mut budget = self.budget.lock().expect("poisoned");
        budget.memory_suspended = 0;
        self.charged_out = budget.output_held;
        self.fuel_given = self.limits.fuel.saturating_sub(budget.fuel_used);
        self.fuel_given
    }

    /// Hand a charged pair to the sink.
    fn accept_pair(&mut self, key: &[u8], value: &[u8]) -> Result<(), HostStop> {
        if let Err(e) = self.sink.accept_slices(key, value) {
            self.sink_error = Some(format!("{e:#}"));
            return Err(HostStop::Sink(format!("{e:#}")));
        }
        Ok(())
    }

    fn incr_counter(&mut self, name: &str, delta: i64) -> Result<(), HostStop> {
        check_counter_name(name)?;
        if let Some(c) = self.counters.get_mut(name) {
            *c = c.saturating_add(delta);
            return Ok(());
        }
        if self.counters.len() >= MAX_COUNTERS {
            return Err(HostStop::Refused(format!(
                "incr-counter: more than {MAX_COUNTERS} distinct counters"
            )));
        }
        self.counters.insert(name.to_string(), delta);
        Ok(())
    }

    /// Bytes the attempt's log can still take.
    fn log_room(&self) -> usize {
        (self.limits.log_bytes as usize).saturating_sub(self.log.len())
    }

    /// Append a line to the attempt's log. Once a line had to be cut, the
    /// log is full: later lines are dropped, so the log stays a prefix of
    /// what the guest logged.
    fn log(&mut self, level: host::Level, message: &str) {
        if self.log_cut {
            return;
        }
        let line = format!("[{level:?}] {}\n", prefix_within(message, self.log_room()));
        let before = self.log.len();
        append_capped(&mut self.log, &line, self.limits.log_bytes);
        self.log_cut = self.log.len() - before < line.len();
    }

    fn param(&self, name: &str) -> Option<String> {
        self.params.get(name).cloned()
    }
}

/// The longest prefix of `text` of at most `max` bytes that ends on a
/// character boundary.
fn prefix_within(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

fn append_capped(buf: &mut String, text: &str, cap: u64) {
    let room = (cap as usize).saturating_sub(buf.len());
    buf.push_str(prefix_within(text, room));
}

/// `text` cut to [`MAX_FAILURE_MESSAGE_BYTES`], saying so when it was cut.
fn cap_message(text: String) -> String {
    if text.len() <= MAX_FAILURE_MESSAGE_BYTES {
        return text;
    }
    let total = text.len();
    format!(
        "{}… ({total} bytes, cut at {MAX_FAILURE_MESSAGE_BYTES})",
        prefix_within(&text, MAX_FAILURE_MESSAGE_BYTES)
    )
}

/// A component compiled and linked once per process, instantiated per attempt.
#[derive(Clone)]
pub struct LoadedModule {
    map: Option<bindings::MapTaskPre<AttemptState>>,
    reduce: Option<bindings::reduce::ReduceTaskPre<AttemptState>>,
    combine: Option<bindings::combine::CombineTaskPre<AttemptState>>,
}

impl LoadedModule {
    /// The module exports a combiner (it may still decline to combine).
    pub fn has_combiner(&self) -> bool {
        self.combine.is_some()
    }
}

/// One attempt's inputs and what it has used so far. An attempt may run
/// several stores (skip mode's bisection, combiner batches, a map then its
/// combiner): they share this context, so its limits hold for the attempt,
/// all its stores together, not per store (issue 10).
#[derive(Clone)]
pub struct AttemptContext {
    pub limits: Limits,
    pub params: Arc<BTreeMap<String, String>>,
    pub cancel: Arc<AtomicBool>,
    budget: Arc<Mutex<AttemptBudget>>,
}

/// What an attempt's stores have used, carried from one store to the next.
#[derive(Debug)]
struct AttemptBudget {
    /// The attempt's wall-clock deadline, fixed when it starts.
    deadline: Instant,
    fuel_used: u64,
    /// Output bytes (plus [`PAIR_OVERHEAD_BYTES`] per pair) the host holds
    /// for the attempt: what the output limit is checked against.
    output_held: u64,
    /// Linear memory of a store suspended while another runs inside its
    /// call (see [`spill_sink`]): the other may use the rest of the limit.
    memory_suspended: u64,
}

impl AttemptContext {
    /// A context for an attempt starting now: its deadline is
    /// `limits.timeout_ms` from here.
    pub fn new(
        limits: Limits,
        params: Arc<BTreeMap<String, String>>,
        cancel: Arc<AtomicBool>,
    ) -> Self {
        let deadline = Instant::now() + Duration::from_millis(limits.timeout_ms);
        AttemptContext {
            limits,
            params,
            cancel,
            budget: Arc::new(Mutex::new(AttemptBudget {
                deadline,
                fuel_used: 0,
                output_held: 0,
                memory_suspended: 0,
            })),
        }
    }

    /// Fuel the attempt's stores have used.
    pub fn fuel_used(&self) -> u64 {
        self.budget.lock().expect("poisoned").fuel_used
    }

    /// Output the host holds for the attempt, as charged.
    pub fn output_held(&self) -> u64 {
        self.budget.lock().expect("poisoned").output_held
    }

    /// Go back to an earlier [`Self::output_held`]: the pairs emitted since
    /// were dropped (a skip-mode run that trapped).
    pub fn restore_output_held(&self, held: u64) {
        let mut budget = self.budget.lock().expect("poisoned");
        debug_assert!(held <= budget.output_held, "output held only shrinks back");
        budget.output_held = held;
    }

    /// Pairs of `charged` bytes were replaced by a combiner's output.
    pub fn release_output(&self, charged: u64) {
        let mut budget = self.budget.lock().expect("poisoned");
        debug_assert!(charged <= budget.output_held, "released more than held");
        budget.output_held = budget.output_held.saturating_sub(charged);
    }
}

/// What the host charges for one held pair against the output limit.
pub fn pair_charge(key_len: usize, value_len: usize) -> u64 {
    (key_len as u64)
        .saturating_add(value_len as u64)
        .saturating_add(PAIR_OVERHEAD_BYTES)
}

/// What one guest call sequence produced.
pub struct CallOutcome {
    pub result: Result<(), AttemptFailure>,
    pub fuel_used: u64,
    pub bytes_out: u64,
    pub records_out: u64,
    pub counters: BTreeMap<String, i64>,
    pub log: String,
}

/// The process's one engine, its linker and the epoch ticker.
pub struct Sandbox {
    engine: Engine,
    linker: Linker<AttemptState>,
    ticker_stop: Arc<AtomicBool>,
    /// Compiled components by the SHA-256 of their bytes: a component that
    /// is both the map and the reduce module is compiled once.
    compiled: Mutex<std::collections::HashMap<crate::model::ModuleHash, Component>>,
    /// Compiled components on disk, shared with other processes.
    disk_cache: Option<CompileCache>,
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}

impl Sandbox {
    pub fn new() -> anyhow::Result<Self> {
        Self::with_capacity(DEFAULT_CONCURRENT_ATTEMPTS)
    }

    /// A sandbox whose instance pool holds `concurrent_attempts` attempts
    /// at once. An attempt past that fails as a host failure ("this
    /// worker's instance pool is full"); callers size it above their slot
    /// count.
    pub fn with_capacity(concurrent_attempts: u32) -> anyhow::Result<Self> {
        let mut config = Config::new();
        config.consume_fuel(true);
        config.epoch_interruption(true);
        config.wasm_component_model(true);
        // Guests run on worker threads; keep their stack use bounded too.
        config.max_wasm_stack(1 << 20);
        // Pooled instances: a fresh store per attempt reuses a slot's
        // mappings instead of mmap/munmap per attempt (~2x faster stores).
        // The pool does not cap memory below wasm32's 4 GiB: the attempt's
        // `ResourceLimiter` is the memory limit.
        let n = concurrent_attempts.max(1);
        let mut pool = PoolingAllocationConfig::new();
        pool.total_component_instances(n)
            .total_core_instances(n.saturating_mul(CORE_INSTANCES_PER_ATTEMPT))
            .total_memories(n.saturating_mul(MEMORIES_PER_ATTEMPT))
            .total_tables(n.saturating_mul(TABLES_PER_ATTEMPT))
            .max_memories_per_module(2)
            .max_tables_per_module(4)
            // One attempt's component may not take more pool slots than
            // its share: refused at load, before any attempt runs, so a
            // job cannot fill the pool its neighbours need.
            .max_memories_per_component(MEMORIES_PER_ATTEMPT)
            .max_tables_per_component(TABLES_PER_ATTEMPT)
            .max_core_instances_per_component(CORE_INSTANCES_PER_ATTEMPT)
            .table_elements(100_000)
            .max_core_instance_size(16 << 20)
            .linear_memory_keep_resident(KEEP_RESIDENT_BYTES)
            .table_keep_resident(KEEP_RESIDENT_BYTES);
        // `WMR_PROFILE=perfmap`: name guest functions for `perf` (a
        // /tmp/perf-PID.map file); how the guest hot spots were found.
        if std::env::var("WMR_PROFILE").as_deref() == Ok("perfmap") {
            config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        let mut pooled = config.clone();
        pooled.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        // The pool reserves its address space up front (about 4 GiB per
        // memory slot); under a virtual memory limit (`ulimit -v`) that
        // fails, and one instance at a time still fits: fall back to
        // allocating per attempt rather than not running at all.
        let engine = match Engine::new(&pooled) {
            Ok(engine) => engine,
            Err(e) => {
                tracing::warn!(
                    "no instance pool ({e}); allocating each attempt's instance on its own (slower stores)"
                );
                Engine::new(&config).map_err(|e| anyhow::anyhow!("{e}"))?
            }
        };
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(|e| anyhow::anyhow!("{e}"))?;
        // Replace the monotonic clock's sleeps with ones capped at the
        // attempt's deadline (see `DeadlineClock`).
        linker.allow_shadowing(true);
        monotonic_clock::add_to_linker::<AttemptState, DeadlineClock>(&mut linker, |state| {
            let (deadline, cancel) = (state.deadline, state.cancel.clone());
            DeadlineClockView {
                clocks: state.clocks(),
                deadline,
                cancel,
            }
        })
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        // And refuse to create sockets (see `NoSockets`).
        tcp_create_socket::add_to_linker::<AttemptState, NoSockets>(&mut linker, |state| {
            SocketDenials(&state.denied)
        })
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        udp_create_socket::add_to_linker::<AttemptState, NoSockets>(&mut linker, |state| {
            SocketDenials(&state.denied)
        })
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        linker.allow_shadowing(false);
        add_host_imports(&mut linker).map_err(|e| anyhow::anyhow!("{e}"))?;
        let ticker_stop = Arc::new(AtomicBool::new(false));
        let (weak_engine, stop) = (engine.weak(), ticker_stop.clone());
        std::thread::Builder::new()
            .name("wmr-epoch".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    match weak_engine.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => break,
                    }
                }
            })
            .context("starting the epoch ticker")?;
        Ok(Sandbox {
            engine,
            linker,
            ticker_stop,
            compiled: Mutex::default(),
            disk_cache: None,
        })
    }

    /// Load compiled components from (and write them to) the on-disk cache
    /// in `options`. A directory that cannot be used safely is not used: a
    /// warning says why, and every component is compiled.
    pub fn use_compile_cache(&mut self, options: &CacheOptions) {
        match CompileCache::open(options, &self.engine) {
            Ok(cache) => self.disk_cache = Some(cache),
            Err(e) => tracing::warn!("compile cache not used: {e:#}; compiling every component"),
        }
    }

    /// What the on-disk cache did so far; `None` without one.
    pub fn compile_cache_report(&self) -> Option<CacheReport> {
        self.disk_cache.as_ref().map(CompileCache::report)
    }

    /// Compile a component and check that it fits `role` in the wmr world.
    /// Errors are one line and name what is wrong.
    pub fn load(&self, bytes: &[u8], role: Role) -> anyhow::Result<LoadedModule> {
        self.load_hashed(bytes, &crate::model::ModuleHash::of(bytes), role)
    }

    /// [`Self::load`] of bytes whose hash the caller has computed already
    /// (`ModuleHash::of(bytes)`): hashing an 18 MB component costs about
    /// as much as loading its compiled code from the cache.
    pub fn load_hashed(
        &self,
        bytes: &[u8],
        digest: &crate::model::ModuleHash,
        role: Role,
    ) -> anyhow::Result<LoadedModule> {
        check_is_component(bytes)?;
        let component = self.compile(bytes, digest)?;
        // Versions first: a component of another version also imports
        // what this wmr does not provide, and the version says why.
        self.check_exports(&component, role)?;
        let pre = self.linker.instantiate_pre(&component).map_err(|e| {
            anyhow::anyhow!(
                "the component needs an import wmr does not provide: {}",
                one_line(&e)
            )
        })?;
        let mut module = LoadedModule {
            map: None,
            reduce: None,
            combine: None,
        };
        let wrong = |e: wasmtime::Error| {
            anyhow::anyhow!(
                "`{}` does not match the {WORLD_PACKAGE} world: {}",
                role.export(),
                one_line(&e)
            )
        };
        match role {
            Role::Map => {
                module.map = Some(bindings::MapTaskPre::new(pre.clone()).map_err(wrong)?);
                // The combiner is optional: use it only if it fits.
                module.combine = bindings::combine::CombineTaskPre::new(pre).ok();
            }
            Role::Reduce => {
                module.reduce = Some(bindings::reduce::ReduceTaskPre::new(pre).map_err(wrong)?)
            }
        }
        Ok(module)
    }

    /// How many distinct components this sandbox has compiled.
    pub fn compiled_components(&self) -> usize {
        self.compiled.lock().expect("poisoned").len()
    }

    fn compile(
        &self,
        bytes: &[u8],
        digest: &crate::model::ModuleHash,
    ) -> anyhow::Result<Component> {
        if let Some(component) = self.compiled.lock().expect("poisoned").get(digest) {
            return Ok(component.clone());
        }
        // Compiled outside the lock: other loads need not wait for it.
        let compile = || {
            Component::new(&self.engine, bytes).map_err(|e| {
                let e = one_line(&e);
                if e.contains("exceeds the configured maximum") {
                    anyhow::anyhow!("the component needs more than one attempt may have: {e}")
                } else {
                    anyhow::anyhow!("not a valid Wasm component: {e}")
                }
            })
        };
        let component = match &self.disk_cache {
            Some(cache) => cache.load_or_compile(&self.engine, digest, compile)?,
            None => compile()?,
        };
        let mut compiled = self.compiled.lock().expect("poisoned");
        Ok(compiled.entry(digest.clone()).or_insert(component).clone())
    }

    fn check_exports(&self, component: &Component, role: Role) -> anyhow::Result<()> {
        let ty = component.component_type();
        let exports: Vec<String> = ty
            .exports(&self.engine)
            .map(|(n, _)| n.to_string())
            .collect();
        if exports.iter().any(|e| e == role.export()) {
            // Its imports of the wmr world must be of this version too.
            let other = ty
                .imports(&self.engine)
                .map(|(n, _)| n.to_string())
                .find(|n| is_other_version(n));
            if let Some(other) = other {
                bail!(
                    "the component imports `{other}` but this wmr speaks {WORLD_PACKAGE}: rebuild it against wit/ of this version"
                );
            }
            return Ok(());
        }
        let wanted_base = role.export().split('@').next().unwrap_or_default();
        if let Some(other) = exports
            .iter()
            .find(|e| e.split('@').next() == Some(wanted_base))
        {
            bail!(
                "the component exports `{other}` but this wmr speaks {WORLD_PACKAGE}: rebuild it against wit/ of this version"
            );
        }
        let listed = if exports.is_empty() {
            "nothing".to_string()
        } else {
            exports.join(", ")
        };
        bail!(
            "the component does not export `{}` (it exports {listed}); is it a wmr {} component?",
            role.export(),
            match role {
                Role::Map => "map",
                Role::Reduce => "reduce",
            }
        )
    }

    fn new_store(&self, ctx: &AttemptContext, sink: Box<dyn PairSink>) -> Store<AttemptState> {
        new_store(&self.engine, ctx, sink)
    }

    /// Run `map(key, value)` in a fresh store; pairs go to `sink`.
    pub fn run_map(
        &self,
        module: &LoadedModule,
        ctx: &AttemptContext,
        key: &[u8],
        value: &[u8],
        sink: Box<dyn PairSink>,
    ) -> CallOutcome {
        let pre = module.map.as_ref().expect("loaded for map");
        let mut store = self.new_store(ctx, sink);
        let result = pre
            .instantiate(&mut store)
            .and_then(|inst| inst.wmr_mapreduce_mapper().call_map(&mut store, key, value));
        finish(store, result)
    }

    /// Run `reduce` once in a fresh store, lending it `input` to pull
    /// from. A guest that returns before the end of its input succeeds;
    /// the rest is not read, and the attempt's log says so.
    pub fn run_reduce(
        &self,
        module: &LoadedModule,
        ctx: &AttemptContext,
        input: Box<dyn ReduceInput>,
        sink: Box<dyn PairSink>,
    ) -> CallOutcome {
        let pre = module.reduce.as_ref().expect("loaded for reduce");
        let mut store = self.new_store(ctx, sink);
        store.data_mut().reduce_input = Some(input);
        let result = pre.instantiate(&mut store).and_then(|inst| {
            let input = Resource::<ReduceInputHandle>::new_borrow(0);
            inst.wmr_mapreduce_reducer().call_reduce(&mut store, input)
        });
        let state = store.data_mut();
        if matches!(result, Ok(Ok(())))
            && let Some(input) = state.reduce_input.take()
            && !input.ended()
        {
            state.log(
                host::Level::Info,
                "reduce returned before the end of its input: the rest was not read",
            );
        }
        finish(store, result)
    }

    /// Run the optional combiner over `groups` in a fresh store; its pairs
    /// go to `sink`. `None` when the module has no combiner or it declines
    /// (then the caller drops whatever it emitted).
    pub fn run_combine(
        &self,
        module: &LoadedModule,
        ctx: &AttemptContext,
        groups: &[Group],
        sink: Box<dyn PairSink>,
    ) -> Option<Result<(), AttemptFailure>> {
        self.combiner(module, ctx)?.run(groups, sink)
    }

    /// The module's combiner for `ctx`'s attempt, to run from anywhere (a
    /// spill); `None` when the module has none.
    pub fn combiner(&self, module: &LoadedModule, ctx: &AttemptContext) -> Option<Combiner> {
        Some(Combiner {
            engine: self.engine.clone(),
            pre: module.combine.clone()?,
            ctx: ctx.clone(),
        })
    }
}

/// A module's combiner bound to one attempt: each run is a fresh store
/// under the attempt's budget.
pub struct Combiner {
    engine: Engine,
    pre: bindings::combine::CombineTaskPre<AttemptState>,
    ctx: AttemptContext,
}

impl Combiner {
    /// Run the combiner over `groups`; its pairs go to `sink`. `None` when
    /// it declines (then the caller drops whatever it emitted).
    pub fn run(
        &self,
        groups: &[Group],
        sink: Box<dyn PairSink>,
    ) -> Option<Result<(), AttemptFailure>> {
        let mut store = new_store(&self.engine, &self.ctx, sink);
        let result = self.pre.instantiate(&mut store).and_then(|inst| {
            inst.wmr_mapreduce_combiner()
                .call_combine(&mut store, groups)
        });
        let declined = matches!(result, Ok(Ok(false)));
        // Finished either way: what the store used counts for the attempt.
        let outcome = finish(store, result.map(|r| r.map(|_| ())));
        match (declined, outcome.result) {
            (true, Ok(())) => None,
            (_, result) => Some(result),
        }
    }

    pub fn ctx(&self) -> &AttemptContext {
        &self.ctx
    }
}

/// A fresh store for one of `ctx`'s guest call sequences.
fn new_store(
    engine: &Engine,
    ctx: &AttemptContext,
    sink: Box<dyn PairSink>,
) -> Store<AttemptState> {
    let state = AttemptState::new(ctx, sink);
    let mut store = Store::new(engine, state);

    store.limiter(|s| s as &mut dyn ResourceLimiter);
    // Fuel and the epoch deadline must be set before instantiation: the
    // fuel the attempt has left (the deadline is the attempt's, in the
    // state).
    let fuel = store.data().fuel_given;
    store.set_fuel(fuel).expect("fuel is enabled");
    // What one guest-to-host call may have the host copy: anything the
    // guest hands over sits in its memory, so its memory limit bounds
    // it; below that, wasmtime's default. Our own imports charge what
    // they copy against the output and log limits first.
    let hostcall = usize::try_from(ctx.limits.memory_bytes)
        .unwrap_or(usize::MAX)
        .max(DEFAULT_HOSTCALL_FUEL);
    store.set_hostcall_fuel(hostcall);
    store.set_max_component_handles(MAX_RESOURCES_PER_STORE);
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(|ctx| {
        let state = ctx.data();
        if state.cancel.load(Ordering::Relaxed) {
            return Err(wasmtime::Error::new(HostStop::Cancelled));
        }
        if Instant::now() >= state.deadline {
            return Err(wasmtime::Error::new(HostStop::TimedOut));
        }
        Ok(UpdateDeadline::Continue(1))
    });
    store
}

/// A sink that collects pairs where the caller can take them afterwards.
#[derive(Clone, Default)]
pub struct CollectPairs(pub Arc<Mutex<Vec<Pair>>>);

impl CollectPairs {
    pub fn take(&self) -> Vec<Pair> {
        std::mem::take(&mut *self.0.lock().expect("poisoned"))
    }
}

impl PairSink for CollectPairs {
    fn accept(&mut self, key: Vec<u8>, value: Vec<u8>) -> anyhow::Result<()> {
        self.0.lock().expect("poisoned").push((key, value));
        Ok(())
    }
}

/// Classify how the guest call sequence ended and collect what it measured.
fn finish(
    mut store: Store<AttemptState>,
    result: wasmtime::Result<Result<(), String>>,
) -> CallOutcome {
    let fuel_left = store.get_fuel().unwrap_or(0);
    let state = store.data_mut();
    let fuel_used = state.fuel_given.saturating_sub(fuel_left);
    {
        // Carry what this store used to the attempt's next store.
        let mut budget = state.budget.lock().expect("poisoned");
        budget.fuel_used = budget.fuel_used.saturating_add(fuel_used);
        budget.output_held = state.charged_out;
    }
    let fuel_used = fuel_used + state.fuel_handed_over;
    let stdio = String::from_utf8_lossy(&state.stdio.contents()).into_owned();
    let mut log = std::mem::take(&mut state.log);
    append_capped(&mut log, &stdio, state.limits.log_bytes);
    let denied = state.denied.lock().expect("poisoned").describe();
    let result = match (result, denied) {
        // A denied capability fails the attempt even if the guest coped:
        // its output may silently depend on what it could not reach.
        (result, Some(mut what)) => {
            if let Ok(Err(message)) = result {
                what.push_str(&format!(" (then the guest failed: {message})"));
            }
            Err(AttemptFailure::Denied(cap_message(what)))
        }
        // Cancelled while asleep in the host, the guest may return before
        // any epoch check sees the cancel; it is cancelled all the same.
        (Ok(Ok(())), None) if state.cancel.load(Ordering::Relaxed) => {
            Err(AttemptFailure::Cancelled)
        }
        (Ok(Ok(())), None) => Ok(()),
        (Ok(Err(message)), None) => Err(AttemptFailure::GuestError(cap_message(message))),
        (Err(error), None) => Err(classify_trap(&error, state, fuel_left, &stdio)),
    };
    CallOutcome {
        result,
        fuel_used,
        bytes_out: state.bytes_out,
        records_out: state.records_out,
        counters: std::mem::take(&mut state.counters),
        log,
    }
}

fn classify_trap(
    error: &wasmtime::Error,
    state: &AttemptState,
    fuel_left: u64,
    stdio: &str,
) -> AttemptFailure {
    let limits = &state.limits;
    if let Some(stop) = error.downcast_ref::<HostStop>() {
        return match stop {
            HostStop::OutputLimit => AttemptFailure::OutputLimit(limits.output_bytes),
            HostStop::TimedOut => AttemptFailure::TimedOut(limits.timeout_ms),
            HostStop::Cancelled => AttemptFailure::Cancelled,
            HostStop::Sink(msg) => AttemptFailure::Host(format!("storing output: {msg}")),
            HostStop::Refused(msg) => AttemptFailure::Refused(msg.clone()),
            HostStop::Spill(failure) => failure.clone(),
            HostStop::Input(msg) => {
                AttemptFailure::Host(format!("reading the reduce input: {msg}"))
            }
        };
    }
    if let Some(msg) = &state.sink_error {
        return AttemptFailure::Host(format!("storing output: {msg}"));
    }
    if let Some(msg) = &state.input_error {
        return AttemptFailure::Host(format!("reading the reduce input: {msg}"));
    }
    // Not the guest's doing: the attempt is retried, never bisected.
    if let Some(full) = error.downcast_ref::<wasmtime::PoolConcurrencyLimitError>() {
        return AttemptFailure::Host(format!("this worker's instance pool is full: {full}"));
    }
    if let Some(trap) = error.downcast_ref::<wasmtime::Trap>()
        && (*trap == wasmtime::Trap::OutOfFuel || fuel_left == 0)
    {
        return AttemptFailure::OutOfFuel(limits.fuel);
    }
    if state.memory_limit_hit {
        return AttemptFailure::OutOfMemory(limits.memory_bytes);
    }
    // A Rust guest's panic message is on its stderr; it says more than
    // "unreachable executed".
    let panic_line = stdio.lines().find(|l| l.contains("panicked at")).map(|l| {
        let next = stdio.lines().skip_while(|x| *x != l).nth(1).unwrap_or("");
        format!("{l} {next}")
    });
    let trap = error
        .downcast_ref::<wasmtime::Trap>()
        .map(|t| t.to_string())
        .unwrap_or_else(|| error_message(error));
    match panic_line {
        Some(panic) => AttemptFailure::Trap(cap_message(format!("{trap}; {}", panic.trim()))),
        None => AttemptFailure::Trap(cap_message(trap)),
    }
}

/// An error from inside a guest call on one line: its messages, without the
/// wasm backtrace wasmtime attaches as context (e.g. a host import refusing
/// a pointer: `list pointer/length out of bounds of memory`).
fn error_message(error: &wasmtime::Error) -> String {
    let messages: Vec<String> = error
        .chain()
        .map(|e| e.to_string())
        .filter(|m| !m.starts_with("error while executing at wasm backtrace"))
        .map(|m| m.lines().next().unwrap_or_default().to_string())
        .collect();
    if messages.is_empty() {
        return one_line(error);
    }
    messages.join(": ")
}

fn one_line(error: &wasmtime::Error) -> String {
    let text = format!("{error:#}");
    text.lines().next().unwrap_or_default().to_string()
}

/// An import or export name of the wmr world at another version
/// (`wmr:mapreduce/host@0.1.0`).
fn is_other_version(name: &str) -> bool {
    let version = WORLD_PACKAGE.split('@').nth(1).unwrap_or_default();
    match name
        .strip_prefix(WORLD_NAME)
        .and_then(|n| n.strip_prefix('/'))
    {
        Some(rest) => rest.split('@').nth(1) != Some(version),
        None => false,
    }
}

/// A cheap, clear check before handing bytes to the compiler.
fn check_is_component(bytes: &[u8]) -> anyhow::Result<()> {
    const MAGIC: &[u8] = b"\0asm";
    if bytes.len() < 8 || &bytes[..4] != MAGIC {
        bail!("not a WebAssembly file (no \\0asm header)");
    }
    // Layer 0 is a core module, layer 1 a component.
    if bytes[6..8] == [0, 0] {
        bail!(
            "this is a core Wasm module, not a component: build with --target wasm32-wasip2 or wrap it with `wasm-tools component new`"
        );
    }
    Ok(())
}

/// Which roles (`map`, `combine`, `reduce`) a component file can play.
/// Fails, naming what is wrong, when it can play none.
pub fn validate_file(path: &std::path::Path) -> anyhow::Result<Vec<&'static str>> {
    let bytes = std::fs::read(path).with_context(|| format!("{}", path.display()))?;
    let sandbox = Sandbox::new()?;
    let mut roles = Vec::new();
    let map = sandbox.load(&bytes, Role::Map);
    if let Ok(module) = &map {
        roles.push("map");
        if module.combine.is_some() {
            roles.push("combine");
        }
    }
    if sandbox.load(&bytes, Role::Reduce).is_ok() {
        roles.push("reduce");
    }
    if roles.is_empty() {
        let error = map.err().expect("map failed");
        return Err(error.context(path.display().to_string()));
    }
    Ok(roles)
}

/// Fuzz of the host imports after lifting: arbitrary call sequences against
/// one attempt's state, checked against a model of the bounds. (The lifting
/// itself, from arbitrary pointers and lengths in guest memory, is fuzzed
/// through the hostile guest's `abi-fuzz` mode in `tests/sandbox.rs`.)
#[cfg(test)]
mod tests {
    use super::*;
    use proptest::collection::vec;
    use proptest::prelude::*;

    const OUTPUT_LIMIT: u64 = 4096;
    const LOG_LIMIT: u64 = 512;

    #[derive(Clone, Debug)]
    enum Call {
        Emit(Vec<u8>, Vec<u8>),
        Counter(String, i64),
        /// `n` distinct counters `many-0`, `many-1`, ...
        ManyCounters(u16),
        Log(u8, String),
        Param(String),
    }

    fn name() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => prop::sample::select(vec!["a", "b", "é", "words", ""]).prop_map(String::from),
            2 => "[a-zé日]{0,40}",
            1 => (250usize..=260).prop_map(|n| "n".repeat(n)),
            1 => (0usize..100_000).prop_map(|n| "x".repeat(n)),
        ]
    }

    fn bytes() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            6 => vec(any::<u8>(), 0..32),
            1 => vec(any::<u8>(), 0..2048),
            1 => (0usize..1 << 16).prop_map(|n| vec![b'h'; n]),
        ]
    }

    fn call() -> impl Strategy<Value = Call> {
        let delta = prop_oneof![Just(i64::MAX), Just(i64::MIN), any::<i64>(), -5i64..5];
        prop_oneof![
            4 => (bytes(), bytes()).prop_map(|(k, v)| Call::Emit(k, v)),
            3 => (name(), delta).prop_map(|(n, d)| Call::Counter(n, d)),
            1 => (0u16..1100).prop_map(Call::ManyCounters),
            2 => (0u8..5, prop_oneof![".{0,80}", (0usize..4096).prop_map(|n| "é".repeat(n))])
                .prop_map(|(l, m)| Call::Log(l, m)),
            1 => prop_oneof![Just("p".to_string()), name()].prop_map(Call::Param),
        ]
    }

    fn level(i: u8) -> host::Level {
        [
            host::Level::Trace,
            host::Level::Debug,
            host::Level::Info,
            host::Level::Warn,
            host::Level::Error,
        ][usize::from(i % 5)]
    }

    /// What the model expects one counter call to do.
    fn model_counter(
        model: &mut BTreeMap<String, i64>,
        name: &str,
        delta: i64,
    ) -> Result<(), String> {
        if name.len() > MAX_COUNTER_NAME_BYTES {
            return Err("incr-counter: counter name longer than 256 bytes".into());
        }
        if let Some(c) = model.get_mut(name) {
            *c = c.saturating_add(delta);
        } else if model.len() >= MAX_COUNTERS {
            return Err("incr-counter: more than 1024 distinct counters".into());
        } else {
            model.insert(name.to_string(), delta);
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn host_imports_keep_their_bounds_and_refuse_with_classified_errors(
            calls in vec(call(), 0..64)
        ) {
            let params: BTreeMap<String, String> = [("p".to_string(), "value".to_string())].into();
            let ctx = AttemptContext::new(
                Limits {
                    output_bytes: OUTPUT_LIMIT,
                    log_bytes: LOG_LIMIT,
                    ..Limits::default()
                },
                Arc::new(params.clone()),
                Arc::default(),
            );
            let sink = CollectPairs::default();
            let mut state = AttemptState::new(&ctx, Box::new(sink.clone()));
            let (mut pairs, mut charged) = (Vec::new(), 0u64);
            let mut counters = BTreeMap::new();
            let mut full_log = String::new();
            // A refused call ends the attempt (the import traps): stop there.
            'calls: for call in calls {
                match call {
                    Call::Emit(key, value) => {
                        let cost = (key.len() + value.len()) as u64 + PAIR_OVERHEAD_BYTES;
                        let got = state
                            .charge_pair(key.len(), value.len())
                            .and_then(|()| state.accept_pair(&key, &value));
                        if charged + cost > OUTPUT_LIMIT {
                            prop_assert!(matches!(got, Err(HostStop::OutputLimit)), "{got:?}");
                            break 'calls;
                        }
                        prop_assert!(got.is_ok(), "{got:?}");
                        charged += cost;
                        pairs.push((key, value));
                    }
                    Call::Counter(name, delta) => {
                        let want = model_counter(&mut counters, &name, delta);
                        let got = state.incr_counter(&name, delta).map_err(|e| e.to_string());
                        prop_assert_eq!(&got, &want);
                        if got.is_err() {
                            break 'calls;
                        }
                    }
                    Call::ManyCounters(n) => {
                        for i in 0..n {
                            let name = format!("many-{i}");
                            let want = model_counter(&mut counters, &name, 1);
                            let got = state.incr_counter(&name, 1).map_err(|e| e.to_string());
                            prop_assert_eq!(&got, &want);
                            if got.is_err() {
                                break 'calls;
                            }
                        }
                    }
                    Call::Log(l, message) => {
                        state.log(level(l), &message);
                        full_log.push_str(&format!("[{:?}] {message}\n", level(l)));
                    }
                    Call::Param(name) => {
                        prop_assert_eq!(state.param(&name), params.get(&name).cloned());
                    }
                }
                // The bounds hold after every call.
                prop_assert!(state.charged_out <= OUTPUT_LIMIT);
                prop_assert!(state.log.len() as u64 <= LOG_LIMIT);
                prop_assert!(state.counters.len() <= MAX_COUNTERS);
                prop_assert!(state.counters.keys().all(|k| k.len() <= MAX_COUNTER_NAME_BYTES));
            }
            prop_assert_eq!(&state.counters, &counters);
            prop_assert_eq!(state.records_out, pairs.len() as u64);
            prop_assert_eq!(
                state.bytes_out,
                pairs.iter().map(|(k, v)| (k.len() + v.len()) as u64).sum::<u64>()
            );
            prop_assert_eq!(sink.take(), pairs);
            // The log is what was logged, cut (on a character boundary) at
            // its limit.
            prop_assert!(full_log.starts_with(&state.log));
            prop_assert!(
                state.log.len() == full_log.len()
                    || state.log.len() as u64 + 4 > LOG_LIMIT,
                "log cut early: {} of {} bytes", state.log.len(), full_log.len()
            );
        }
    }

    #[test]
    fn long_failure_messages_are_cut_and_say_so() {
        let cut = cap_message("é".repeat(5000));
        assert!(cut.len() < MAX_FAILURE_MESSAGE_BYTES + 64, "{}", cut.len());
        assert!(cut.ends_with("… (10000 bytes, cut at 4096)"), "{cut}");
        assert_eq!(cap_message("short".into()), "short");
    }

    #[test]
    fn denials_past_the_first_few_are_counted_not_kept() {
        let mut denials = Denials::default();
        assert_eq!(denials.describe(), None);
        for i in 0..1000 {
            denials.record(format!("d{i}"));
        }
        assert_eq!(
            denials.describe().unwrap(),
            "d0; d1; d2; d3; d4; d5; d6; d7 (and 992 more)"
        );
    }
}

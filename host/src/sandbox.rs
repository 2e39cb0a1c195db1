//! The Wasm sandbox: one `Engine` per process, a fresh `Store` per attempt.
//!
//! Every attempt gets fuel, a memory limit (a `ResourceLimiter`), a wall-clock
//! deadline checked through epoch interruption, an output limit enforced in
//! `emit`, and a WASI context with no directories, no environment, no
//! network and captured (size-capped) stdio. Whatever the guest does, the
//! attempt ends in an [`AttemptFailure`] the host can report; the host never
//! dies because of a guest.

use crate::protocol::{AttemptFailure, Limits};
use crate::shuffle::Pair;
use anyhow::{Context as _, bail};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Config, Engine, ResourceLimiter, Store, UpdateDeadline};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "map-task",
        imports: { "wmr:mapreduce/host.emit": trappable },
    });

    pub mod reduce {
        wasmtime::component::bindgen!({
            path: "../wit",
            world: "reduce-task",
            with: { "wmr:mapreduce/host": super::wmr::mapreduce::host },
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

pub use bindings::reduce::wmr::mapreduce::types::Group;
use bindings::wmr::mapreduce::host;

/// The WIT package version this host speaks.
pub const WORLD_PACKAGE: &str = "wmr:mapreduce@0.1.0";
const MAPPER_EXPORT: &str = "wmr:mapreduce/mapper@0.1.0";
const REDUCER_EXPORT: &str = "wmr:mapreduce/reducer@0.1.0";

/// How often the epoch advances: the granularity of timeouts and cancels.
const EPOCH_TICK: Duration = Duration::from_millis(10);

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

/// Where an attempt's emitted pairs go.
pub trait PairSink: Send {
    fn accept(&mut self, key: Vec<u8>, value: Vec<u8>) -> anyhow::Result<()>;
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
    sink: Box<dyn PairSink>,
    bytes_out: u64,
    records_out: u64,
    counters: BTreeMap<String, i64>,
    params: Arc<BTreeMap<String, String>>,
    log: String,
    stdio: MemoryOutputPipe,
    denied: Arc<Mutex<Vec<String>>>,
    deadline: Instant,
    cancel: Arc<AtomicBool>,
    sink_error: Option<String>,
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
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired as u64 > self.limits.memory_bytes {
            self.memory_limit_hit = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1 << 20)
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
}

impl host::Host for AttemptState {
    fn emit(&mut self, pairs: Vec<host::Pair>) -> wasmtime::Result<()> {
        for host::Pair { key, value } in pairs {
            self.bytes_out += (key.len() + value.len()) as u64;
            self.records_out += 1;
            if self.bytes_out > self.limits.output_bytes {
                return Err(wasmtime::Error::new(HostStop::OutputLimit));
            }
            if let Err(e) = self.sink.accept(key, value) {
                self.sink_error = Some(format!("{e:#}"));
                return Err(wasmtime::Error::new(HostStop::Sink(format!("{e:#}"))));
            }
        }
        Ok(())
    }

    fn incr_counter(&mut self, name: String, delta: i64) {
        // Bounded: a guest cannot grow the counter table without limit.
        if self.counters.len() < 1024 || self.counters.contains_key(&name) {
            let c = self.counters.entry(name).or_default();
            *c = c.saturating_add(delta);
        }
    }

    fn log(&mut self, level: host::Level, message: String) {
        let line = format!("[{level:?}] {message}\n");
        append_capped(&mut self.log, &line, self.limits.log_bytes);
    }

    fn param(&mut self, name: String) -> Option<String> {
        self.params.get(&name).cloned()
    }
}

fn append_capped(buf: &mut String, text: &str, cap: u64) {
    let room = (cap as usize).saturating_sub(buf.len());
    if room == 0 {
        return;
    }
    let mut end = text.len().min(room);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    buf.push_str(&text[..end]);
}

/// A component compiled and linked once per process, instantiated per attempt.
#[derive(Clone)]
pub struct LoadedModule {
    map: Option<bindings::MapTaskPre<AttemptState>>,
    reduce: Option<bindings::reduce::ReduceTaskPre<AttemptState>>,
    combine: Option<bindings::combine::CombineTaskPre<AttemptState>>,
}

/// Per-attempt inputs that are not limits.
pub struct AttemptContext {
    pub limits: Limits,
    pub params: Arc<BTreeMap<String, String>>,
    pub cancel: Arc<AtomicBool>,
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
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}

impl Sandbox {
    pub fn new() -> anyhow::Result<Self> {
        let mut config = Config::new();
        config.consume_fuel(true);
        config.epoch_interruption(true);
        config.wasm_component_model(true);
        // Guests run on worker threads; keep their stack use bounded too.
        config.max_wasm_stack(1 << 20);
        let engine = Engine::new(&config).map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(|e| anyhow::anyhow!("{e}"))?;
        host::add_to_linker::<_, HasSelf<AttemptState>>(&mut linker, |s| s)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
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
        })
    }

    /// Compile a component and check that it fits `role` in the wmr world.
    /// Errors are one line and name what is wrong.
    pub fn load(&self, bytes: &[u8], role: Role) -> anyhow::Result<LoadedModule> {
        check_is_component(bytes)?;
        let component = Component::new(&self.engine, bytes)
            .map_err(|e| anyhow::anyhow!("not a valid Wasm component: {}", one_line(&e)))?;
        let pre = self.linker.instantiate_pre(&component).map_err(|e| {
            anyhow::anyhow!(
                "the component needs an import wmr does not provide: {}",
                one_line(&e)
            )
        })?;
        self.check_exports(&component, role)?;
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

    fn check_exports(&self, component: &Component, role: Role) -> anyhow::Result<()> {
        let ty = component.component_type();
        let exports: Vec<String> = ty
            .exports(&self.engine)
            .map(|(n, _)| n.to_string())
            .collect();
        if exports.iter().any(|e| e == role.export()) {
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
        let stdio = MemoryOutputPipe::new(ctx.limits.log_bytes as usize);
        let denied = Arc::new(Mutex::new(Vec::new()));
        let denied_log = denied.clone();
        let wasi = WasiCtx::builder()
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
                    .push(format!(
                        "network access to {addr} ({use_:?}) is not granted"
                    ));
                Box::pin(async { false })
            })
            .build();
        let state = AttemptState {
            wasi,
            table: ResourceTable::new(),
            limits: ctx.limits.clone(),
            memory_limit_hit: false,
            sink,
            bytes_out: 0,
            records_out: 0,
            counters: BTreeMap::new(),
            params: ctx.params.clone(),
            log: String::new(),
            stdio,
            denied,
            deadline: Instant::now() + Duration::from_millis(ctx.limits.timeout_ms),
            cancel: ctx.cancel.clone(),
            sink_error: None,
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| s as &mut dyn ResourceLimiter);
        // Fuel and the epoch deadline must be set before instantiation.
        store.set_fuel(ctx.limits.fuel).expect("fuel is enabled");
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

    /// Run `reduce` over `batches` of groups in one fresh store.
    pub fn run_reduce(
        &self,
        module: &LoadedModule,
        ctx: &AttemptContext,
        batches: &mut dyn Iterator<Item = Vec<Group>>,
        sink: Box<dyn PairSink>,
    ) -> CallOutcome {
        let pre = module.reduce.as_ref().expect("loaded for reduce");
        let mut store = self.new_store(ctx, sink);
        let result = pre.instantiate(&mut store).and_then(|inst| {
            for batch in batches {
                let r = inst
                    .wmr_mapreduce_reducer()
                    .call_reduce(&mut store, &batch)?;
                if r.is_err() {
                    return Ok(r);
                }
            }
            Ok(Ok(()))
        });
        finish(store, result)
    }

    /// Run the optional combiner over `groups`. `None` when the module has
    /// no combiner or declines to combine.
    pub fn run_combine(
        &self,
        module: &LoadedModule,
        ctx: &AttemptContext,
        groups: &[Group],
    ) -> Option<Result<Vec<Pair>, AttemptFailure>> {
        let pre = module.combine.as_ref()?;
        let collected = CollectPairs::default();
        let mut store = self.new_store(ctx, Box::new(collected.clone()));
        let result = pre.instantiate(&mut store).and_then(|inst| {
            inst.wmr_mapreduce_combiner()
                .call_combine(&mut store, groups)
        });
        let combined = match &result {
            Ok(Ok(false)) => return None,
            _ => result.map(|r| r.map(|_| ())),
        };
        let outcome = finish(store, combined);
        Some(outcome.result.map(|()| collected.take()))
    }
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
    let fuel_used = state.limits.fuel.saturating_sub(fuel_left);
    let stdio = String::from_utf8_lossy(&state.stdio.contents()).into_owned();
    let mut log = std::mem::take(&mut state.log);
    append_capped(&mut log, &stdio, state.limits.log_bytes);
    let denied = state.denied.lock().expect("poisoned").clone();
    let result = match result {
        // A denied capability fails the attempt even if the guest coped:
        // its output may silently depend on what it could not reach.
        _ if !denied.is_empty() => {
            let mut what = denied.join("; ");
            if let Ok(Err(message)) = &result {
                what.push_str(&format!(" (then the guest failed: {message})"));
            }
            Err(AttemptFailure::Denied(what))
        }
        Ok(Ok(())) => Ok(()),
        Ok(Err(message)) => Err(AttemptFailure::GuestError(message)),
        Err(error) => Err(classify_trap(&error, state, fuel_left, &stdio)),
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
        };
    }
    if let Some(msg) = &state.sink_error {
        return AttemptFailure::Host(format!("storing output: {msg}"));
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
        .unwrap_or_else(|| one_line(error));
    match panic_line {
        Some(panic) => AttemptFailure::Trap(format!("{trap}; {}", panic.trim())),
        None => AttemptFailure::Trap(trap),
    }
}

fn one_line(error: &wasmtime::Error) -> String {
    let text = format!("{error:#}");
    text.lines().next().unwrap_or_default().to_string()
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

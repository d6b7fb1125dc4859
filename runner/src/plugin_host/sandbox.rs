//! The per-call sandbox: a fresh store with WASI granting nothing, a memory cap, and a CPU
//! deadline that counts guest time only (time spent in host calls such as SQL is excluded).

use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::{ResourceLimiter, Store, UpdateDeadline};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{ResourceTable, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

/// How much of a guest's stderr is kept.
const STDERR_CAPTURE: usize = 8 * 1024;

use super::services::Services;

/// Limits applied to every plugin call.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub deadline: Duration,
    pub memory_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { deadline: Duration::from_secs(2), memory_bytes: 64 << 20 }
    }
}

/// How often the engine's epoch advances; the deadline is checked at this granularity.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

pub struct StoreState {
    wasi: WasiCtx,
    /// The guest's stderr, kept in memory (capped) so a panic message can name the cause.
    stderr: MemoryOutputPipe,
    table: ResourceTable,
    limiter: MemoryLimiter,
    pub(super) plugin: Arc<str>,
    pub(super) services: Arc<Services>,
    pub(super) settings: Arc<Vec<(String, String)>>,
    pub(super) sql_granted: bool,
    started: Instant,
    /// Wall time spent inside host functions, not charged to the guest.
    pub(super) host_time: Duration,
    deadline: Duration,
    pub(super) deadline_hit: bool,
}

impl WasiView for StoreState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl StoreState {
    pub fn memory_hit(&self) -> Option<usize> {
        self.limiter.hit
    }

    /// The last words the guest wrote to stderr (a Rust panic: "panicked at …" and its
    /// message), without the backtrace advice.
    pub fn stderr_tail(&self) -> String {
        let bytes = self.stderr.contents();
        let text = String::from_utf8_lossy(&bytes);
        let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with("note: ")).collect();
        lines[lines.len().saturating_sub(2)..].join(" ").chars().take(500).collect()
    }
}

pub(super) struct CallSetup {
    pub plugin: Arc<str>,
    pub services: Arc<Services>,
    pub settings: Arc<Vec<(String, String)>>,
    pub sql_granted: bool,
    pub limits: Limits,
}

pub(super) fn new_store(engine: &wasmtime::Engine, setup: CallSetup) -> Store<StoreState> {
    // Nothing is granted: no preopened dirs, no env, no args, no sockets, no name lookup.
    let stderr = MemoryOutputPipe::new(STDERR_CAPTURE);
    let wasi = WasiCtxBuilder::new()
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .stderr(stderr.clone())
        .build();
    let state = StoreState {
        wasi,
        stderr,
        table: ResourceTable::new(),
        limiter: MemoryLimiter { max: setup.limits.memory_bytes, hit: None },
        plugin: setup.plugin,
        services: setup.services,
        settings: setup.settings,
        sql_granted: setup.sql_granted,
        started: Instant::now(),
        host_time: Duration::ZERO,
        deadline: setup.limits.deadline,
        deadline_hit: false,
    };
    let mut store = Store::new(engine, state);
    store.limiter(|s| &mut s.limiter);
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(|mut ctx| {
        let s = ctx.data_mut();
        let guest_time = s.started.elapsed().saturating_sub(s.host_time);
        if guest_time >= s.deadline {
            s.deadline_hit = true;
            return Err(wasmtime::Trap::Interrupt.into());
        }
        // Yield so that a busy plugin does not starve the runner's other tasks.
        Ok(UpdateDeadline::Yield(1))
    });
    store
}

/// Caps linear memory and records the request that went over, so the error can say so
/// (a Rust guest that cannot grow just hits `unreachable`, which reads like a panic).
struct MemoryLimiter {
    max: usize,
    hit: Option<usize>,
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.max {
            self.hit = Some(desired);
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= 1 << 20)
    }

    fn instances(&self) -> usize {
        64
    }
    fn tables(&self) -> usize {
        64
    }
    fn memories(&self) -> usize {
        16
    }
}

//! The wasmtime engine shared by every plugin, and the per-call store: limits,
//! the epoch ticker that enforces deadlines, and the host imports.

use super::counters::{CounterStore, PluginCounters};
use super::stats::StatsStore;
use super::{PluginError, PluginOptions};
use crate::counters_config::CounterBackend;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use wasmtime::component::{HasSelf, Linker};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, ResourceLimiter, Store,
    UpdateDeadline,
};

wasmtime::component::bindgen!({
    path: "../plugins/wit",
    world: "filter",
    // A shared counter backend that is down with `fail_closed` fails the
    // plugin's call: the import traps, and the request gets the plugin's
    // failure status.
    imports: { "kiln:filter/host.counter-add": trappable },
});

pub use kiln::filter::host::LogLevel;
pub use kiln::filter::types as wit;

/// How often the epoch advances: how often a running call's CPU time is
/// checked against its budget once the budget's worth of wall time has
/// passed, so a 50 ms budget is enforced within 5 ms of CPU.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);

/// A call may take this many times its CPU budget in wall time before it
/// is stopped anyway (a thread starved of CPU for that long is an outage
/// of its own; the cap keeps a call from hanging its request forever).
const WALL_CAP_FACTOR: u32 = 20;

/// Log lines from plugins longer than this are cut, so a plugin cannot flood
/// the proxy's log with one call.
const MAX_LOG_LINE: usize = 4096;

/// One engine for all plugins and all reloads: `InstancePre`s are tied to
/// the engine that compiled them, and the epoch ticker drives this engine.
pub struct Runtime {
    pub engine: Engine,
    pub linker: Linker<CallState>,
    pub options: PluginOptions,
    pub counters: CounterStore,
    pub stats: StatsStore,
    deadline_ticks: u64,
    /// Each call's budget: CPU time of the thread running it.
    budget: Duration,
    _ticker: EpochTicker,
}

impl Runtime {
    pub fn new(options: &PluginOptions) -> Result<Arc<Runtime>, PluginError> {
        let engine = match Engine::new(&engine_config(options, Reservation::Guarded)) {
            Ok(engine) => engine,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "cannot reserve guarded plugin memories; plugins run with explicit bounds checks (slower)");
                Engine::new(&engine_config(options, Reservation::Cap))
                    .map_err(|e| PluginError::Engine(format!("{e:#}")))?
            }
        };
        let mut linker = Linker::new(&engine);
        Filter::add_to_linker::<CallState, HasSelf<CallState>>(&mut linker, |s| s)
            .map_err(|e| PluginError::Engine(format!("{e:#}")))?;
        let tick_ms = EPOCH_TICK.as_millis().max(1) as u64;
        let deadline_ticks = (options.deadline.as_millis() as u64)
            .div_ceil(tick_ms)
            .max(1);
        let namespace = options.counters.namespace(|k| std::env::var(k).ok());
        let counters =
            CounterStore::new(&options.counters, &namespace).map_err(PluginError::Counters)?;
        // A wait for Redis uses no CPU, so only the wall-time cap bounds it:
        // rate-limit's two calls per request must fit well inside it.
        let wall_cap = options.deadline * WALL_CAP_FACTOR;
        if options.counters.backend() == CounterBackend::Redis
            && 4 * u128::from(options.counters.timeout_ms) > wall_cap.as_millis()
        {
            tracing::warn!(
                timeout_ms = options.counters.timeout_ms,
                wall_cap_ms = wall_cap.as_millis() as u64,
                "[counters] timeout_ms is over a quarter of a plugin call's wall-time cap: a slow Redis can make counting plugins fail"
            );
        }
        Ok(Arc::new(Runtime {
            _ticker: EpochTicker::start(engine.clone()),
            engine,
            linker,
            options: options.clone(),
            counters,
            stats: StatsStore::default(),
            deadline_ticks,
            budget: options.deadline,
        }))
    }

    /// A fresh store for one call of plugin `name`: limits set, deadline armed.
    pub fn store(&self, plugin: Arc<PluginContext>) -> Store<CallState> {
        let mut store = Store::new(
            &self.engine,
            CallState {
                plugin,
                memory_cap: self.options.memory_cap,
                memory_exceeded: false,
                // A chain's calls follow each other within microseconds:
                // they share a reading, as `rearm`'s calls do.
                started: CallClock::recent(Instant::now(), self.budget / 50),
                counted_locally: false,
            },
        );
        store.limiter(|s| s as &mut dyn ResourceLimiter);
        // The budget is CPU time, not wall time: on a machine busy with other
        // requests, a call that waits for a core has used nothing, and
        // stopping it would turn load into failed requests. The epoch fires
        // once the budget's worth of wall time has passed (no call can have
        // used more CPU than that), then every tick, to compare the thread's
        // CPU time with the budget.
        let budget = self.budget;
        let wall_cap = budget * WALL_CAP_FACTOR;
        store.epoch_deadline_callback(move |ctx| {
            let started = &ctx.data().started;
            if started.cpu_used() >= budget || started.wall.elapsed() >= wall_cap {
                Ok(UpdateDeadline::Interrupt)
            } else {
                Ok(UpdateDeadline::Continue(1))
            }
        });
        // The budget counts from here, so instantiation is included.
        store.set_epoch_deadline(self.deadline_ticks);
        store
    }

    /// Gives a store that serves several calls (one response's instance,
    /// called per chunk) the full budget again before the next call.
    ///
    /// The thread's CPU time is a system call (about 0.35 µs here, a fifth
    /// of what a response plugin's call per chunk cost), so calls in quick
    /// succession share one reading of it, at most `budget / 50` old: a call
    /// is then stopped after at least 98 % of its budget, never later.
    /// `now`: the wall time, just read by the caller.
    pub fn rearm(&self, store: &mut Store<CallState>, now: Instant) {
        store.data_mut().started = CallClock::recent(now, self.budget / 50);
        store.set_epoch_deadline(self.deadline_ticks);
    }
}

/// When a call started, in CPU time of the thread running it and in wall time.
struct CallClock {
    /// The thread's CPU time at the start, or shortly before it (see
    /// [`CallClock::recent`]): never after, so the CPU a call is charged is
    /// never less than what it used.
    cpu: Duration,
    wall: Instant,
}

std::thread_local! {
    /// This thread's last reading of its CPU time, and when it was taken.
    static CPU_READING: std::cell::Cell<Option<(Instant, Duration)>> =
        const { std::cell::Cell::new(None) };
}

impl CallClock {
    /// When a call starts: `wall`, and the thread's CPU time, or the
    /// thread's last reading of it if that is at most `stale` old (the
    /// reading is a system call): the thread can have used at most `stale`
    /// of CPU since, which the call is then charged on top of its own.
    fn recent(wall: Instant, stale: Duration) -> CallClock {
        match CPU_READING.get() {
            Some((at, cpu)) if wall.saturating_duration_since(at) <= stale => {
                CallClock { cpu, wall }
            }
            _ => {
                let cpu = thread_cpu_time();
                CPU_READING.set(Some((wall, cpu)));
                CallClock { cpu, wall }
            }
        }
    }

    /// CPU time this thread used since the call started. A plugin call runs
    /// to its end on the thread that started it (calls are synchronous), so
    /// this is the call's own CPU time.
    fn cpu_used(&self) -> Duration {
        thread_cpu_time().saturating_sub(self.cpu)
    }
}

/// CPU time of the calling thread. Written by hand: one libc call, which no
/// crate of this workspace wraps (std measures only wall time).
pub fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec to a valid pointer;
    // CLOCK_THREAD_CPUTIME_ID exists on every Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Bytes of a pooled memory (and table) that are reset in place, and so stay
/// resident, between instances; see `engine_config`.
const KEEP_RESIDENT: usize = 1 << 20;

/// How much address space each plugin memory slot reserves.
#[derive(Clone, Copy)]
enum Reservation {
    /// 4 GiB plus a 2 GiB guard region, wasmtime's default: the compiled
    /// code needs no bounds checks (output-guard: 4 % less CPU per chunk,
    /// 12 % with `pii = true`). 6 GiB of address space (not memory) per slot.
    Guarded,
    /// Only the memory cap: fits where address space is limited (`ulimit -v`),
    /// at the cost of a bounds check on every memory access.
    Cap,
}

fn engine_config(options: &PluginOptions, reservation: Reservation) -> Config {
    let mut pool = PoolingAllocationConfig::new();
    let n = options.max_concurrent_calls.max(1);
    // A component made from a Rust core module instantiates the main module
    // plus wit-component's shim and fixup modules: up to 4 core instances,
    // 2 tables and 1 memory per call.
    pool.total_component_instances(n)
        .total_core_instances(4 * n)
        .total_memories(n)
        .total_tables(2 * n)
        .max_memory_size(options.memory_cap);
    // A slot is reset for its next instance to the module's initial image:
    // with PAGEMAP_SCAN (Linux 6.7+) only the pages the last instance wrote,
    // copied back or zeroed in place, up to this many bytes; without it the
    // lowest this many bytes are. The pages stay mapped, so the next
    // instance neither faults them in again nor pays for the `madvise` that
    // would drop them: a call of a small plugin went from about 45 to about
    // 20 µs of CPU (docs/BENCHMARKS.md). Bytes a plugin wrote beyond this are
    // given back to the OS as before; this bounds the memory a slot keeps.
    pool.linear_memory_keep_resident(KEEP_RESIDENT)
        .table_keep_resident(KEEP_RESIDENT)
        .pagemap_scan(wasmtime::Enabled::Auto);

    let mut config = Config::new();
    config
        .epoch_interruption(true)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
        .memory_reservation_for_growth(0);
    match reservation {
        Reservation::Guarded => config
            .memory_reservation(4 << 30)
            .memory_guard_size(2 << 30),
        Reservation::Cap => config.memory_reservation(options.memory_cap as u64),
    };
    // `perf record` then names the plugins' functions (from their name
    // sections) instead of `wasm[0]::function[N]`: for plugin authors
    // chasing a hot spot. Off by default: it writes /tmp/perf-PID.map.
    if std::env::var_os("KILN_PLUGIN_PERFMAP").is_some() {
        config.profiler(wasmtime::ProfilingStrategy::PerfMap);
    }
    config
}

/// Advances the engine's epoch every [`EPOCH_TICK`] on its own thread, for
/// as long as the runtime lives. Without it, deadlines never fire.
struct EpochTicker {
    stop: Arc<AtomicBool>,
}

impl EpochTicker {
    fn start(engine: Engine) -> EpochTicker {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let spawned = std::thread::Builder::new()
            .name("kiln-plugin-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    engine.increment_epoch();
                }
            });
        if let Err(e) = spawned {
            // Without the ticker a looping plugin would hang its request, so
            // make it loud; every call would still run, just without deadline.
            tracing::error!(error = %e, "could not start the plugin deadline thread; plugin deadlines are not enforced");
        }
        EpochTicker { stop }
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// What the host imports need to know about the plugin being called.
pub struct PluginContext {
    pub name: String,
    pub config_json: String,
    pub counters: Arc<PluginCounters>,
}

/// The data of one store (one call of one plugin).
pub struct CallState {
    pub plugin: Arc<PluginContext>,
    memory_cap: usize,
    /// Set when the plugin tried to grow past the cap, to explain the trap.
    pub memory_exceeded: bool,
    /// When the current call started, for its CPU budget.
    started: CallClock,
    /// A `counter-add` of this store fell back to in-process counting; the
    /// store's later adds stay in process (see `PluginCounters::add`).
    counted_locally: bool,
}

impl ResourceLimiter for CallState {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_cap {
            self.memory_exceeded = true;
            // Trap rather than let memory.grow return -1: the guest's
            // allocator would abort anyway, and a trap says why.
            return Err(wasmtime::format_err!(
                "plugin memory would grow to {desired} bytes, over the cap of {} bytes",
                self.memory_cap
            ));
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

impl kiln::filter::types::Host for CallState {}

impl kiln::filter::host::Host for CallState {
    fn log(&mut self, level: LogLevel, mut message: String) {
        if message.len() > MAX_LOG_LINE {
            let mut cut = MAX_LOG_LINE;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push_str(" …(cut)");
        }
        let plugin = self.plugin.name.as_str();
        match level {
            LogLevel::Debug => tracing::debug!(plugin, "{message}"),
            LogLevel::Info => tracing::info!(plugin, "{message}"),
            LogLevel::Warn => tracing::warn!(plugin, "{message}"),
            LogLevel::Error => tracing::error!(plugin, "{message}"),
        }
    }

    fn monotonic_now(&mut self) -> u64 {
        monotonic_origin().elapsed().as_nanos() as u64
    }

    fn wall_now(&mut self) -> u64 {
        wall_now_ms()
    }

    fn counter_add(
        &mut self,
        key: String,
        window_ms: u64,
        delta: u64,
    ) -> wasmtime::Result<kiln::filter::host::WindowCount> {
        // With a shared backend this waits for Redis, at most
        // `[counters] timeout_ms`: the plugin's thread may block (see
        // counters::redis). The wait uses no CPU, so it does not eat the
        // call's CPU budget; the wall-time cap still bounds the call.
        let count = self
            .plugin
            .counters
            .add(
                &key,
                window_ms,
                delta,
                wall_now_ms(),
                &mut self.counted_locally,
            )
            .map_err(|e| wasmtime::format_err!("{}", e.0))?;
        Ok(kiln::filter::host::WindowCount {
            total: count.total,
            resets_in_ms: count.resets_in_ms,
        })
    }

    fn config(&mut self) -> String {
        self.plugin.config_json.clone()
    }
}

fn monotonic_origin() -> Instant {
    static ORIGIN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

pub fn wall_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

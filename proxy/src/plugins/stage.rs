//! The plugin stage the proxy runs: the current chain behind an `ArcSwap`,
//! reloaded on SIGHUP or when a plugin file changes.
//!
//! A request takes the chain that is current when it arrives and finishes on
//! it, even if a reload swaps in a new one meanwhile. A reload that fails
//! (missing file, bad pin, config refused) keeps the old chain and logs why.
//!
//! Before any request plugin runs, the stage refuses (413) a body larger
//! than the policy plugins are given to check (`[limits]`
//! `plugin_max_body_bytes`, `plugin_max_json_values`). Without this bound a
//! client could pick a body (150,000 one-character messages) that a plugin
//! cannot read within its deadline, and so choose, for a plugin with
//! `on_error = "allow"`, that the policy is skipped.

use super::chain::Chain;
use super::loader;
use super::pace::Pace;
use super::runtime::{Runtime, thread_cpu_time};
use super::{PluginError, PluginSpec};
use crate::counters_config::CounterBackend;
use crate::filter::{FilterRequest, RequestFilter, RouteKind, Verdict, VerdictFuture};
use arc_swap::ArcSwap;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// Where fresh `[[plugins]]` entries come from on SIGHUP.
pub type SpecSource = Arc<dyn Fn() -> Result<Vec<PluginSpec>, String> + Send + Sync>;

pub struct PluginStage {
    runtime: Arc<Runtime>,
    specs: Mutex<Vec<PluginSpec>>,
    current: ArcSwap<Chain>,
}

/// Builds a chain from specs: all or nothing.
fn build(runtime: &Arc<Runtime>, specs: &[PluginSpec]) -> Result<Chain, PluginError> {
    for (i, spec) in specs.iter().enumerate() {
        if specs[..i].iter().any(|s| s.name == spec.name) {
            return Err(PluginError::DuplicateName(spec.name.clone()));
        }
    }
    let mut plugins = Vec::with_capacity(specs.len());
    for (spec, loaded) in specs.iter().zip(load_all(runtime, specs)) {
        let plugin = loaded?;
        tracing::info!(
            plugin = %plugin.name,
            path = %spec.path.display(),
            sha256 = %plugin.info.sha256,
            cached = plugin.info.from_cache,
            "plugin loaded"
        );
        plugins.push(plugin);
    }
    // Redis counters make a plugin call wait for the network.
    let may_run_in_place = runtime.options.counters.backend() != CounterBackend::Redis;
    Ok(Chain {
        runtime: runtime.clone(),
        plugins,
        pace: Pace::new(may_run_in_place),
    })
}

fn panicked(spec: &PluginSpec) -> PluginError {
    PluginError::Invalid {
        name: spec.name.clone(),
        path: spec.path.clone(),
        reason: "loading it panicked (a bug in kiln-proxy); see the log".into(),
    }
}

/// Loads the plugins on as many threads as there are cores: compiling is
/// the slow part of a cold start (about 200 ms per 150 KB plugin), and
/// Cranelift compiles one module on one thread.
fn load_all(
    runtime: &Runtime,
    specs: &[PluginSpec],
) -> Vec<Result<loader::LoadedPlugin, PluginError>> {
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(specs.len());
    if workers <= 1 {
        return specs
            .iter()
            .map(|spec| loader::load(runtime, spec))
            .collect();
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let slots: Vec<Mutex<Option<Result<loader::LoadedPlugin, PluginError>>>> =
        specs.iter().map(|_| Mutex::new(None)).collect();
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(spec) = specs.get(i) else { break };
                    // A panic in the loader must fail this plugin, not the
                    // whole scope (which would re-raise it).
                    let loaded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        loader::load(runtime, spec)
                    }))
                    .unwrap_or_else(|_| Err(panicked(spec)));
                    *slots[i].lock().unwrap_or_else(|p| p.into_inner()) = Some(loaded);
                }
            });
        }
    });
    slots
        .into_iter()
        .zip(specs)
        .map(|(slot, spec)| {
            slot.into_inner()
                .unwrap_or_else(|p| p.into_inner())
                .unwrap_or_else(|| Err(panicked(spec)))
        })
        .collect()
}

impl PluginStage {
    pub fn new(runtime: Arc<Runtime>, specs: &[PluginSpec]) -> Result<PluginStage, PluginError> {
        let chain = build(&runtime, specs)?;
        Ok(PluginStage {
            runtime,
            specs: Mutex::new(specs.to_vec()),
            current: ArcSwap::from_pointee(chain),
        })
    }

    /// Appends per-plugin call metrics (OpenMetrics text, see `crate::metrics`).
    pub fn render_metrics(&self, out: &mut String) {
        self.runtime.stats.render(out);
        self.runtime.counters.render_metrics(out);
    }

    /// The chain new requests use.
    pub fn chain(&self) -> Arc<Chain> {
        self.current.load_full()
    }

    /// Reloads every plugin from disk with the current specs.
    pub fn reload(&self) -> Result<(), PluginError> {
        let specs = self.specs.lock().unwrap_or_else(|p| p.into_inner()).clone();
        self.reload_with(specs)
    }

    /// Replaces the specs (e.g. after the proxy re-read its config) and
    /// reloads. On failure nothing changes: neither the specs nor the chain.
    pub fn reload_with(&self, specs: Vec<PluginSpec>) -> Result<(), PluginError> {
        match build(&self.runtime, &specs) {
            Ok(chain) => {
                tracing::info!(plugins = chain.len(), "plugin chain reloaded");
                self.current.store(Arc::new(chain));
                *self.specs.lock().unwrap_or_else(|p| p.into_inner()) = specs;
                Ok(())
            }
            Err(e) => {
                tracing::error!(error = %e, "plugin reload failed; the previous plugin chain stays in service");
                Err(e)
            }
        }
    }

    /// Starts the reloader on the current tokio runtime: on SIGHUP, and when
    /// a plugin file's size or modification time changes (checked every
    /// `options.watch_interval`). Compiling happens on a blocking thread.
    pub fn spawn_reloader(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        self.spawn_reloader_with(None)
    }

    /// Like [`PluginStage::spawn_reloader`], and on SIGHUP the `[[plugins]]`
    /// entries are first read again from `source` (e.g. the proxy's config
    /// file), so an operator can add, remove or reconfigure plugins without a
    /// restart. If `source` fails, nothing changes and the log says why.
    pub fn spawn_reloader_with(
        self: &Arc<Self>,
        source: Option<SpecSource>,
    ) -> tokio::task::JoinHandle<()> {
        let stage = Arc::downgrade(self);
        let interval = self.runtime.options.watch_interval;
        tokio::spawn(async move {
            #[cfg(unix)]
            let mut hup = match tokio::signal::unix::signal(
                tokio::signal::unix::SignalKind::hangup(),
            ) {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for SIGHUP; plugins reload on file change only");
                    None
                }
            };
            let mut last = match stage.upgrade() {
                Some(s) => s.fingerprint(),
                None => return,
            };
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                #[cfg(unix)]
                let signalled = tokio::select! {
                    _ = tick.tick() => false,
                    Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
                };
                #[cfg(not(unix))]
                let signalled = {
                    tick.tick().await;
                    false
                };
                // Stop when the proxy dropped the stage.
                let Some(s) = stage.upgrade() else { return };
                let now = s.fingerprint();
                if !signalled && now == last {
                    continue;
                }
                if signalled {
                    tracing::info!("SIGHUP: reloading plugins");
                } else {
                    tracing::info!("a plugin file changed: reloading plugins");
                }
                last = now;
                let source = if signalled { source.clone() } else { None };
                // Failed reloads are logged by reload_with() and keep the old chain.
                let reloaded = tokio::task::spawn_blocking(move || match source {
                    None => {
                        let _ = s.reload();
                        None
                    }
                    Some(source) => match source() {
                        Ok(specs) => {
                            let _ = s.reload_with(specs);
                            Some(s.fingerprint())
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "cannot re-read the [[plugins]] entries; the previous plugin chain stays in service");
                            None
                        }
                    },
                })
                .await;
                // New specs may name other files: watch those from now on.
                if let Ok(Some(fingerprint)) = reloaded {
                    last = fingerprint;
                }
            }
        })
    }

    /// (path, size, mtime) of every plugin file, to notice changes.
    fn fingerprint(&self) -> Vec<(PathBuf, Option<(u64, SystemTime)>)> {
        let specs = self.specs.lock().unwrap_or_else(|p| p.into_inner());
        specs
            .iter()
            .map(|s| {
                let meta = std::fs::metadata(&s.path)
                    .ok()
                    .and_then(|m| Some((m.len(), m.modified().ok()?)));
                (s.path.clone(), meta)
            })
            .collect()
    }
}

impl RequestFilter for PluginStage {
    fn render_metrics(&self, out: &mut String) {
        PluginStage::render_metrics(self, out)
    }

    fn responses(&self) -> Option<&dyn crate::response::ResponseStage> {
        Some(self)
    }

    fn filters(&self, route: RouteKind) -> bool {
        self.chain().filters(route)
    }

    fn apply(&self, request: FilterRequest) -> VerdictFuture<'_> {
        let chain = self.chain();
        let options = &self.runtime.options;
        let (max_bytes, max_values) = (options.max_body_bytes, options.max_json_values);
        Box::pin(async move {
            let route = request.route;
            if !chain.filters(route) {
                return Verdict::Forward(request);
            }
            if let Some(message) = too_large_to_check(&request.body, max_bytes, max_values) {
                tracing::info!(%message, "request refused before the plugins ran");
                return Verdict::Reject {
                    status: 413,
                    message,
                    headers: Vec::new(),
                };
            }
            // Plugin calls are CPU work bounded by their budget (about 10 µs
            // each typically, up to the budget per plugin). On the proxy's
            // multi-thread runtime a chain that has been quick lately runs
            // right here; otherwise block_in_place runs it here and hands
            // this worker's other tasks to another thread, so a slow plugin
            // cannot stall other connections (see `pace`). Either avoids the
            // thread hop of spawn_blocking. Other runtimes (current-thread,
            // as in tests) use spawn_blocking.
            let on_multi_thread = tokio::runtime::Handle::try_current()
                .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
            if on_multi_thread {
                // CPU time, not wall time: a thread the OS preempts on a busy
                // machine has not met a slow plugin.
                let timed = |chain: &Chain, request| {
                    let started = thread_cpu_time();
                    let verdict = chain.run(request);
                    chain.pace.record(thread_cpu_time().saturating_sub(started));
                    verdict
                };
                if chain.pace.run_in_place() {
                    return timed(&chain, request);
                }
                return tokio::task::block_in_place(move || timed(&chain, request));
            }
            let trace = crate::telemetry::current();
            let run = move || {
                let _attached = trace.map(|cx| cx.attach());
                chain.run(request)
            };
            match tokio::task::spawn_blocking(run).await {
                Ok(verdict) => verdict,
                Err(e) => {
                    tracing::error!(error = %e, "the plugin chain's thread failed; request refused");
                    Verdict::Reject {
                        status: 500,
                        message: "request refused because the policy plugins failed; the proxy log has the details".into(),
                        headers: Vec::new(),
                    }
                }
            }
        })
    }
}

/// Why `body` is too large for the policy plugins to be given, if it is.
fn too_large_to_check(body: &[u8], max_bytes: usize, max_values: usize) -> Option<String> {
    if body.len() > max_bytes {
        return Some(format!(
            "the request body has {} bytes, more than the {max_bytes} this service's policy \
             checks accept (limits.plugin_max_body_bytes); send a shorter request",
            body.len()
        ));
    }
    match count_json_values(body, max_values) {
        Ok(_) => None,
        Err(TooMany) => Some(format!(
            "the request body has more than {max_values} JSON values (messages, parts, \
             fields), more than this service's policy checks accept \
             (limits.plugin_max_json_values); send fewer messages or split the request"
        )),
    }
}

/// The count went past the limit.
#[derive(Debug, PartialEq, Eq)]
struct TooMany;

/// Counts the JSON values in `body` (every scalar, array and object, at any
/// depth), stopping as soon as there are more than `limit`: a plugin's cost
/// grows with their number more than with the bytes (150,000 tiny messages
/// cost it far more than one long string). A body that is not JSON counts
/// what was read before the error: the view stage has refused those already.
fn count_json_values(body: &[u8], limit: usize) -> Result<usize, TooMany> {
    let mut count = Count { seen: 0, limit };
    let mut de = serde_json::Deserializer::from_slice(body);
    match (&mut count).deserialize(&mut de) {
        Err(_) if count.seen > limit => Err(TooMany),
        _ => Ok(count.seen),
    }
}

struct Count {
    seen: usize,
    limit: usize,
}

impl Count {
    fn one<E: de::Error>(&mut self) -> Result<(), E> {
        self.seen += 1;
        if self.seen > self.limit {
            return Err(E::custom("too many JSON values"));
        }
        Ok(())
    }
}

impl<'de> DeserializeSeed<'de> for &mut Count {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for &mut Count {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        self.one()
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        self.one()
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        self.one()
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        self.one()
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        self.one()
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.one()
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        self.one()?;
        while seq.next_element_seed(&mut *self)?.is_some() {}
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        self.one()?;
        while map.next_key::<IgnoredAny>()?.is_some() {
            map.next_value_seed(&mut *self)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_values_are_counted_at_every_depth() {
        let count = |s: &str| count_json_values(s.as_bytes(), 100);
        assert_eq!(count("1"), Ok(1));
        assert_eq!(count("[]"), Ok(1));
        assert_eq!(count(r#"{"a":[1,"x",null,{"b":true}]}"#), Ok(7));
        assert_eq!(count_json_values(b"[1,2,3]", 3), Err(TooMany));
        assert_eq!(count_json_values(b"[1,2]", 3), Ok(3));
        // Counting stops at the limit, whatever follows.
        assert_eq!(count_json_values(b"[1,2,3,4,not json", 3), Err(TooMany));
        assert_eq!(count("[1,2,"), Ok(3));
    }

    #[test]
    fn bodies_over_either_limit_are_refused_with_the_key_to_raise() {
        let many = format!("[{}1]", "1,".repeat(50));
        let m = too_large_to_check(many.as_bytes(), 1 << 20, 10).unwrap();
        assert!(m.contains("limits.plugin_max_json_values"), "{m}");
        let m = too_large_to_check(&[b' '; 11], 10, 100).unwrap();
        assert!(
            m.contains("11 bytes") && m.contains("limits.plugin_max_body_bytes"),
            "{m}"
        );
        assert_eq!(too_large_to_check(many.as_bytes(), 1 << 20, 100), None);
    }
}

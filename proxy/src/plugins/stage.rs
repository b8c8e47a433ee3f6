//! The plugin stage the proxy runs: the current chain behind an `ArcSwap`,
//! reloaded on SIGHUP or when a plugin file changes.
//!
//! A request takes the chain that is current when it arrives and finishes on
//! it, even if a reload swaps in a new one meanwhile. A reload that fails
//! (missing file, bad pin, config refused) keeps the old chain and logs why.

use super::chain::Chain;
use super::loader;
use super::runtime::Runtime;
use super::{PluginError, PluginSpec};
use crate::filter::{FilterRequest, RequestFilter, Verdict, VerdictFuture};
use arc_swap::ArcSwap;
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
    Ok(Chain {
        runtime: runtime.clone(),
        plugins,
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

    /// Appends per-plugin call metrics (Prometheus text format).
    pub fn render_metrics(&self, out: &mut String) {
        self.runtime.stats.render(out)
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

    fn apply(&self, request: FilterRequest) -> VerdictFuture<'_> {
        let chain = self.chain();
        Box::pin(async move {
            if chain.plugins().all(|p| p.pre.is_none()) {
                return Verdict::Forward(request);
            }
            // Plugin calls are CPU work bounded by their deadline (tens of
            // µs typically, up to the deadline per plugin). On the proxy's
            // multi-thread runtime, block_in_place runs them right here and
            // hands this worker's other tasks to another thread, so a slow
            // plugin cannot stall other connections, without the thread hop
            // of spawn_blocking (which costs more than a plugin call). Other
            // runtimes (current-thread, as in tests) use spawn_blocking.
            let on_multi_thread = tokio::runtime::Handle::try_current()
                .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
            if on_multi_thread {
                return tokio::task::block_in_place(move || chain.run(request));
            }
            match tokio::task::spawn_blocking(move || chain.run(request)).await {
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

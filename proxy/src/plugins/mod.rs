//! The wasm plugin host: everything wasmtime-specific lives under this module.
//!
//! The rest of the proxy sees a [`RequestFilter`](crate::filter::RequestFilter)
//! built by [`load_chain`]. The contract with plugins is the WIT package
//! `kiln:filter@0.1.0` in `plugins/wit/filter.wit`.
//!
//! - `runtime`: the engine (pooling allocator, epoch deadlines, memory cap)
//!   and the host imports.
//! - `loader`: file → pinned, componentized, compiled, linked plugin.
//! - `cache`: compiled artifacts on disk.
//! - `chain`: running a request through the plugins in order.
//! - `stage`: the current chain, hot reload.
//! - `tool`: `kiln-proxy plugin check|run`.

mod cache;
mod chain;
mod counters;
mod loader;
mod response;
mod response_world;
mod routes;
mod runtime;
mod stage;
mod stats;
pub mod tool;

pub use crate::filter::PluginSpec;
pub use chain::{Chain, Outcome};
pub use loader::{INTERFACE, LoadedPlugin, PluginInfo, RESPONSE_INTERFACE};
pub use runtime::Runtime;
pub use stage::PluginStage;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Limits and places for the plugin host; `Default` gives the documented defaults.
#[derive(Clone, Debug)]
pub struct PluginOptions {
    /// CPU time a plugin call may take, instantiation included (default 50 ms).
    pub deadline: Duration,
    /// Linear memory a plugin instance may use (default 64 MiB).
    pub memory_cap: usize,
    /// Plugin calls that may run at once; beyond it a call fails (and the
    /// request with it, per `on_error`). Sizes the pooling allocator.
    pub max_concurrent_calls: u32,
    /// Where compiled plugins are cached (default `~/.cache/kiln/plugins`).
    pub cache_dir: PathBuf,
    /// How often plugin files are checked for changes.
    pub watch_interval: Duration,
}

impl Default for PluginOptions {
    fn default() -> Self {
        PluginOptions {
            deadline: Duration::from_millis(50),
            memory_cap: 64 << 20,
            max_concurrent_calls: 128,
            cache_dir: cache::default_dir(),
            watch_interval: Duration::from_secs(2),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("could not set up the wasm engine: {0}")]
    Engine(String),
    #[error("plugin `{name}`: cannot read {}: {source}; check the `path` of this [[plugins]] entry", path.display())]
    Read {
        name: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "plugin `{name}`: {} has sha256 {actual}, but the config pins {expected}; \
         if the new file is intended, update the `sha256` pin",
        path.display()
    )]
    PinMismatch {
        name: String,
        path: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("plugin `{name}` ({}): {reason}", path.display())]
    Invalid {
        name: String,
        path: PathBuf,
        reason: String,
    },
    #[error("plugin `{name}` refused its [plugins.config]: {message}")]
    Config { name: String, message: String },
    #[error("two [[plugins]] entries are named `{0}`; plugin names must be unique")]
    DuplicateName(String),
}

/// Loads the plugins of the proxy config into a filter stage. Every plugin
/// must load (pins checked, configs accepted), or none does.
///
/// Call [`PluginStage::spawn_reloader`] from inside the tokio runtime to
/// reload on SIGHUP and on file changes.
pub fn load_chain(
    specs: &[PluginSpec],
    options: &PluginOptions,
) -> Result<Arc<PluginStage>, PluginError> {
    let runtime = Runtime::new(options)?;
    Ok(Arc::new(PluginStage::new(runtime, specs)?))
}

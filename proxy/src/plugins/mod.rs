//! The wasm plugin host: everything wasmtime-specific lives under this module.
//!
//! The rest of the proxy sees a [`RequestFilter`](crate::filter::RequestFilter)
//! built by [`load_chain`]. The contract with plugins is the WIT package
//! `kiln:filter@0.2.0` in `plugins/wit/filter.wit`.
//!
//! - `runtime`: the engine (pooling allocator, epoch deadlines, memory cap)
//!   and the host imports.
//! - `loader`: file → pinned, componentized, compiled, linked plugin.
//! - `cache`: compiled artifacts on disk.
//! - `chain`: running a request through the plugins in order.
//! - `stage`: the current chain, hot reload.
//! - `pace`: whether a chain runs on the worker thread or beside it.
//! - `tool`: `kiln-proxy plugin check|run`.

mod cache;
mod chain;
mod counters;
mod loader;
mod pace;
mod response;
mod response_world;
mod routes;
mod runtime;
mod stage;
pub(crate) mod stats;
pub mod tool;

pub mod spec;
pub use chain::{Chain, Outcome};
pub use loader::{INTERFACE, LoadedPlugin, PluginInfo, RESPONSE_INTERFACE};
pub use runtime::Runtime;
pub use spec::{OnError, PluginSpec};
pub use stage::{PluginStage, SpecSource};

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
    /// Where compiled plugins are cached (default `~/.cache/kiln/plugins`;
    /// empty: nothing is cached). Used only while it belongs to the proxy's
    /// user and no one else can write it.
    pub cache_dir: PathBuf,
    /// How often plugin files are checked for changes.
    pub watch_interval: Duration,
    /// The largest request body handed to request plugins, in bytes and in
    /// JSON values; beyond either, the request is refused (413) before any
    /// plugin runs. From `[limits]` `plugin_max_body_bytes` and
    /// `plugin_max_json_values`.
    pub max_body_bytes: usize,
    pub max_json_values: usize,
    /// Where `counter-add` counts: the proxy config's `[counters]`.
    pub counters: crate::counters_config::CountersConfig,
}

impl Default for PluginOptions {
    fn default() -> Self {
        PluginOptions {
            deadline: Duration::from_millis(50),
            memory_cap: 64 << 20,
            max_concurrent_calls: 128,
            cache_dir: cache::default_dir(),
            watch_interval: Duration::from_secs(2),
            max_body_bytes: crate::config::Limits::default().plugin_max_body_bytes,
            max_json_values: crate::config::Limits::default().plugin_max_json_values,
            counters: Default::default(),
        }
    }
}

impl PluginOptions {
    /// The defaults, overridden by `KILN_PLUGIN_DEADLINE_MS`,
    /// `KILN_PLUGIN_MEMORY_MB`, `KILN_PLUGIN_MAX_CONCURRENT_CALLS` and
    /// `KILN_PLUGIN_CACHE_DIR` when set (through `env`, for testability).
    pub fn from_env(env: impl Fn(&str) -> Option<String>) -> Result<PluginOptions, PluginError> {
        let mut o = PluginOptions::default();
        let number = |key: &str, min: u64, max: u64| -> Result<Option<u64>, PluginError> {
            let Some(text) = env(key) else {
                return Ok(None);
            };
            match text.trim().parse::<u64>() {
                Ok(n) if (min..=max).contains(&n) => Ok(Some(n)),
                _ => Err(PluginError::Setting(format!(
                    "{key}={text:?}: expected a whole number from {min} to {max}"
                ))),
            }
        };
        if let Some(ms) = number("KILN_PLUGIN_DEADLINE_MS", 1, 60_000)? {
            o.deadline = Duration::from_millis(ms);
        }
        if let Some(mb) = number("KILN_PLUGIN_MEMORY_MB", 1, 4096)? {
            o.memory_cap = (mb as usize) << 20;
        }
        if let Some(n) = number("KILN_PLUGIN_MAX_CONCURRENT_CALLS", 1, 10_000)? {
            o.max_concurrent_calls = n as u32;
        }
        if let Some(dir) = env("KILN_PLUGIN_CACHE_DIR").filter(|d| !d.is_empty()) {
            o.cache_dir = PathBuf::from(dir);
        }
        Ok(o)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("invalid plugin setting {0}")]
    Setting(String),
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
    #[error("invalid [counters] setting: {0}")]
    Counters(String),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_come_from_the_environment() {
        let env = |k: &str| match k {
            "KILN_PLUGIN_DEADLINE_MS" => Some("200".to_owned()),
            "KILN_PLUGIN_MEMORY_MB" => Some("16".to_owned()),
            "KILN_PLUGIN_CACHE_DIR" => Some("/var/cache/kiln".to_owned()),
            _ => None,
        };
        let o = PluginOptions::from_env(env).unwrap();
        assert_eq!(o.deadline, Duration::from_millis(200));
        assert_eq!(o.memory_cap, 16 << 20);
        assert_eq!(o.cache_dir, PathBuf::from("/var/cache/kiln"));
        assert_eq!(
            o.max_concurrent_calls,
            PluginOptions::default().max_concurrent_calls
        );
    }

    #[test]
    fn bad_settings_name_the_variable() {
        let err = PluginOptions::from_env(|k| {
            (k == "KILN_PLUGIN_DEADLINE_MS").then(|| "50ms".to_owned())
        })
        .unwrap_err();
        assert!(
            err.to_string().contains("KILN_PLUGIN_DEADLINE_MS=\"50ms\""),
            "{err}"
        );
        assert!(
            PluginOptions::from_env(|k| (k == "KILN_PLUGIN_MEMORY_MB").then(|| "0".to_owned()))
                .is_err()
        );
    }
}

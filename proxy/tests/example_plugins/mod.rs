//! Plugin entries for the tests: any plugin file ([`spec`]), and the example
//! plugins of plugins/examples as scripts/build-plugins leaves them in
//! target/plugins ([`plugin`]). Shared by the tests and the benches.

#![allow(dead_code)]

use std::path::PathBuf;

use kiln_proxy::plugins::{OnError, PluginSpec};
use serde_json::Value;

/// The example plugin `name` (e.g. "api-key") with `config`, denying on error.
pub fn plugin(name: &str, config: Value) -> PluginSpec {
    // Cargo names the built file after the crate: dashes become underscores.
    let file = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(format!("../target/plugins/{}.wasm", name.replace('-', "_")));
    assert!(
        file.exists(),
        "{} is missing: run scripts/build-plugins first",
        file.display()
    );
    spec(name, file, config)
}

/// The plugin at `path` named `name` with `config`, on every inference
/// route, denying on error (the config defaults).
pub fn spec(name: &str, path: impl Into<PathBuf>, config: Value) -> PluginSpec {
    PluginSpec {
        name: name.into(),
        path: path.into(),
        sha256: None,
        on_error: OnError::Deny,
        routes: None,
        config,
    }
}

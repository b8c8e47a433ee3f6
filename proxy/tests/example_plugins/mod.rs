//! The example plugins of plugins/examples, as scripts/build-plugins leaves
//! them in target/plugins. Shared by the tests and the benches.

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
    PluginSpec {
        name: name.into(),
        path: file,
        sha256: None,
        on_error: OnError::Deny,
        routes: None,
        config,
    }
}

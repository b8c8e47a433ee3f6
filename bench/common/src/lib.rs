//! What kiln's benchmarks share.

use std::path::PathBuf;
use std::time::Duration;

use kiln_proxy::plugins::{OnError, PluginSpec};
use serde_json::Value;

/// CPU time (user + system) of the whole process so far, every thread: a
/// bench that runs client, emulator and proxies in one process compares
/// setups by it, whatever else the machine is doing.
pub fn process_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec to a valid pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// An example plugin (built by scripts/build-plugins into target/plugins,
/// or into `PLUGINS_DIR`) with `config`, failing closed.
pub fn example_plugin(name: &str, config: Value) -> anyhow::Result<PluginSpec> {
    let dir = std::env::var_os("PLUGINS_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/plugins"),
        PathBuf::from,
    );
    let path = dir.join(format!("{}.wasm", name.replace('-', "_")));
    anyhow::ensure!(
        path.exists(),
        "{} is missing: run scripts/build-plugins first",
        path.display()
    );
    Ok(PluginSpec {
        name: name.into(),
        path,
        sha256: None,
        on_error: OnError::Deny,
        routes: None,
        config,
    })
}

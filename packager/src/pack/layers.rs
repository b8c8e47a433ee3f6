//! Which files go into which layer. Weights change rarely and are huge, so
//! each gets its own layer (an unchanged model is never re-sent, and a runtime
//! can fetch layers in parallel); manifests and small blobs share one layer;
//! the proxy, its plugins and config, which change most often, come last.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::layers::{LayerError, LayerSpec, Source};
use crate::pull::PulledModel;

/// Blobs at least this big get their own layer even if their type is not
/// a known weights type (an unknown large blob still deserves its own layer).
const OWN_LAYER_BYTES: u64 = 32 << 20;

/// Ollama media types that hold weights.
const WEIGHT_TYPES: [&str; 3] = [
    "application/vnd.ollama.image.model",
    "application/vnd.ollama.image.projector",
    "application/vnd.ollama.image.adapter",
];

/// Where the proxy's files go in the image.
pub const PROXY_BIN: &str = "/usr/local/bin/kiln-proxy";
pub const PROXY_CONFIG: &str = "/etc/kiln/proxy.toml";
pub const PLUGIN_DIR: &str = "/plugins";

/// The files of the proxy layer.
#[derive(Clone, Debug)]
pub struct ProxyFiles {
    pub bin: PathBuf,
    pub plugins: Vec<PathBuf>,
    pub config: Option<PathBuf>,
}

/// One layer per weight blob, then one with every manifest and small blob.
/// Blobs shared by several models appear once.
pub fn model_layers(
    models: &[PulledModel],
    models_path: &str,
) -> Result<Vec<LayerSpec>, LayerError> {
    let root = models_path.trim_end_matches('/');
    let mut seen = BTreeSet::new();
    let mut weights = Vec::new();
    let mut small = LayerSpec::new(format!(
        "models: manifests and small blobs of {}",
        models
            .iter()
            .map(|m| m.reference.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    ));
    for model in models {
        let manifest_path = format!("{root}/{}", model.reference.manifest_path().display());
        small.file(
            &manifest_path,
            0o644,
            Source::Bytes(Arc::from(model.manifest.as_slice())),
        )?;
        for blob in model.blobs() {
            if !seen.insert(blob.digest.clone()) {
                continue;
            }
            let hex = blob.digest.trim_start_matches("sha256:");
            // Ollama names blob files sha256-<hex> (a dash, not a colon).
            let path = format!("{root}/blobs/sha256-{hex}");
            let source = Source::blob(&blob.path, blob.size, &blob.digest);
            if WEIGHT_TYPES.contains(&blob.media_type.as_str()) || blob.size >= OWN_LAYER_BYTES {
                let mut layer =
                    LayerSpec::new(format!("weights: {} {}", model.reference, blob.digest));
                layer.file(&path, 0o644, source)?;
                weights.push(layer);
            } else {
                small.file(&path, 0o644, source)?;
            }
        }
    }
    weights.push(small);
    Ok(weights)
}

/// The proxy binary, its plugins and its config.
pub fn proxy_layer(files: &ProxyFiles) -> Result<LayerSpec, LayerError> {
    let mut layer = LayerSpec::new("proxy: kiln-proxy, plugins and config");
    layer.file(PROXY_BIN, 0o755, Source::file(&files.bin)?)?;
    if let Some(config) = &files.config {
        layer.file(PROXY_CONFIG, 0o644, Source::file(config)?)?;
    }
    for plugin in &files.plugins {
        layer.file(&plugin_path(plugin), 0o644, Source::file(plugin)?)?;
    }
    Ok(layer)
}

/// `/plugins/<file name>`: where a `--plugin` file lands (and what the
/// proxy config's `path` must say).
pub fn plugin_path(plugin: &Path) -> String {
    let name = plugin
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    format!("{PLUGIN_DIR}/{name}")
}

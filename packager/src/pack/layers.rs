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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pull::BlobRef;
    use crate::reference::ModelRef;

    fn blob(media_type: &str, digest_byte: char, size: u64) -> BlobRef {
        BlobRef {
            digest: format!("sha256:{}", digest_byte.to_string().repeat(64)),
            media_type: media_type.into(),
            size,
            path: PathBuf::from(format!("/cache/{digest_byte}")),
        }
    }

    fn model(name: &str, weights: char, shared: char) -> PulledModel {
        PulledModel {
            reference: ModelRef::parse(name).expect("ref"),
            manifest: format!("manifest of {name}").into_bytes(),
            manifest_digest: format!("sha256:{}", "0".repeat(64)),
            config: blob("application/vnd.docker.container.image.v1+json", 'c', 100),
            layers: vec![
                blob("application/vnd.ollama.image.model", weights, 1000),
                blob("application/vnd.ollama.image.license", shared, 10),
                // Not a weights type, but big enough for its own layer.
                blob("application/vnd.ollama.image.unknown", 'e', OWN_LAYER_BYTES),
            ],
        }
    }

    #[test]
    fn weights_get_own_layers_and_shared_blobs_appear_once() {
        let models = [model("gemma3:4b", 'a', 'b'), model("gemma3:1b", 'd', 'b')];
        let layers = model_layers(&models, "/models").expect("layers");
        let descriptions: Vec<&str> = layers.iter().map(|l| l.description.as_str()).collect();
        // Weights a, e (big), d (e is shared, so once), then the small layer.
        assert_eq!(layers.len(), 4, "{descriptions:?}");
        assert!(
            layers[..3]
                .iter()
                .all(|l| l.file_count() == 1 && l.description.starts_with("weights:"))
        );
        // Two manifests + config c + license b, each once.
        assert_eq!(layers[3].file_count(), 4);
        assert!(
            layers[3].description.contains("gemma3:4b")
                && layers[3].description.contains("gemma3:1b")
        );
    }

    #[test]
    fn plugins_land_in_the_plugin_dir_by_file_name() {
        assert_eq!(
            plugin_path(Path::new("target/plugins/api_key.wasm")),
            "/plugins/api_key.wasm"
        );
    }
}

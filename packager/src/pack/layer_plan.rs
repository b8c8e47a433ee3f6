//! Which files go into which layer. Weights change rarely and are huge, so
//! each large blob gets its own layer (an unchanged model, or an unchanged
//! tensor of a new model version, is never re-sent, and a runtime can fetch
//! layers in parallel); manifests and small blobs share one layer; the
//! proxy, its plugins and config, which change most often, come last.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::layers::{LayerError, LayerSpec, Source};
use crate::pull::PulledModel;

/// Blobs at least this big get their own layer even if their type is not
/// a known weights type (an unknown large blob still deserves its own layer,
/// and so does each large tensor of a safetensors model).
const OWN_LAYER_BYTES: u64 = 32 << 20;

/// At most this many blobs get a layer of their own. Overlay filesystems
/// stack at most ~128 layers (Docker refuses images beyond 127), and the
/// base image and kiln's other layers need some of them; a safetensors model
/// can have hundreds of large tensors.
const MAX_OWN_LAYERS: usize = 88;
/// Large blobs beyond [`MAX_OWN_LAYERS`] share this many layers, picked by
/// digest, so one changed tensor re-sends one group, not all of them.
const SHARED_GROUPS: usize = 8;

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

/// A blob of a model as the layer plan sees it.
#[derive(Clone, Copy, Debug)]
pub struct PlannedBlob<'a> {
    pub digest: &'a str,
    pub media_type: &'a str,
    pub size: u64,
}

/// Where each blob goes: its own layer, one of the shared groups of large
/// blobs, or the layer of small files. Decided from the manifests alone, so
/// `pull` can frame a blob as its layer's tar while downloading it.
#[derive(Debug, Default)]
pub struct LayerPlan {
    /// Digests with a layer of their own.
    pub own: BTreeSet<String>,
    /// Digest → group index, for large blobs beyond the budget.
    pub grouped: BTreeMap<String, usize>,
}

impl LayerPlan {
    /// Blobs are given in manifest order; each digest counts once.
    pub fn new<'a>(blobs: impl IntoIterator<Item = PlannedBlob<'a>>) -> LayerPlan {
        let mut seen = BTreeSet::new();
        let mut large: Vec<PlannedBlob> = blobs
            .into_iter()
            .filter(|b| seen.insert(b.digest))
            .filter(|b| WEIGHT_TYPES.contains(&b.media_type) || b.size >= OWN_LAYER_BYTES)
            .collect();
        // The largest blobs keep their own layers; ties by digest, so the
        // plan does not depend on manifest order.
        large.sort_by(|a, b| b.size.cmp(&a.size).then(a.digest.cmp(b.digest)));
        let mut plan = LayerPlan::default();
        for (i, blob) in large.iter().enumerate() {
            if i < MAX_OWN_LAYERS {
                plan.own.insert(blob.digest.to_string());
            } else {
                let group = u8::from_str_radix(blob.digest.get(7..9).unwrap_or("00"), 16)
                    .map_or(0, |b| b as usize % SHARED_GROUPS);
                plan.grouped.insert(blob.digest.to_string(), group);
            }
        }
        plan
    }

    /// The plan for pulled models.
    pub fn for_models(models: &[PulledModel]) -> LayerPlan {
        LayerPlan::new(models.iter().flat_map(|m| {
            m.blobs().map(|b| PlannedBlob {
                digest: &b.digest,
                media_type: &b.media_type,
                size: b.size,
            })
        }))
    }
}

/// `<models path>/blobs/sha256-<hex>`: Ollama names blob files with a dash, not a colon.
pub fn blob_image_path(models_path: &str, digest: &str) -> String {
    let hex = digest.trim_start_matches("sha256:");
    format!("{}/blobs/sha256-{hex}", models_path.trim_end_matches('/'))
}

/// The layer holding one blob alone. Its bytes (and so its digest) depend
/// only on the models path and the blob, which is what lets `pull` compute
/// the digest while it downloads the blob.
pub fn own_layer(
    models_path: &str,
    digest: &str,
    size: u64,
    cached: &Path,
    description: String,
) -> Result<LayerSpec, LayerError> {
    let mut layer = LayerSpec::new(description);
    layer.file(
        &blob_image_path(models_path, digest),
        0o644,
        Source::blob(cached, size, digest),
    )?;
    Ok(layer)
}

/// One layer per large blob (within the budget), the shared groups of the
/// remaining large blobs, then one with every manifest and small blob.
/// Blobs shared by several models appear once.
pub fn model_layers(
    models: &[PulledModel],
    models_path: &str,
) -> Result<Vec<LayerSpec>, LayerError> {
    let root = models_path.trim_end_matches('/');
    let plan = LayerPlan::for_models(models);
    let mut seen = BTreeSet::new();
    let mut weights = Vec::new();
    let mut groups: BTreeMap<usize, LayerSpec> = BTreeMap::new();
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
            let path = blob_image_path(root, &blob.digest);
            let source = Source::blob(&blob.path, blob.size, &blob.digest);
            if plan.own.contains(&blob.digest) {
                weights.push(own_layer(
                    root,
                    &blob.digest,
                    blob.size,
                    &blob.path,
                    format!("weights: {} {}", model.reference, blob.digest),
                )?);
            } else if let Some(&group) = plan.grouped.get(&blob.digest) {
                groups
                    .entry(group)
                    .or_insert_with(|| {
                        LayerSpec::new(format!("weights: large blobs, group {group}"))
                    })
                    .file(&path, 0o644, source)?;
            } else {
                small.file(&path, 0o644, source)?;
            }
        }
    }
    weights.extend(groups.into_values());
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
    use crate::model_ref::ModelRef;
    use crate::pull::BlobRef;

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
    fn large_tensors_beyond_the_layer_budget_share_stable_groups() {
        let digests: Vec<String> = (0..200u32)
            .map(|i| format!("sha256:{:064x}", u128::from(i) * 0x1234_5678_9abc_def1))
            .collect();
        let blobs = |extra: u64| {
            digests
                .iter()
                .enumerate()
                .map(move |(i, d)| PlannedBlob {
                    digest: d.as_str(),
                    media_type: "application/vnd.ollama.image.tensor",
                    size: OWN_LAYER_BYTES + i as u64 + extra,
                })
                .chain([PlannedBlob {
                    digest: "sha256:small",
                    media_type: "application/vnd.ollama.image.tensor",
                    size: 4096,
                }])
        };
        let plan = LayerPlan::new(blobs(0));
        assert_eq!(plan.own.len(), MAX_OWN_LAYERS);
        assert_eq!(plan.grouped.len(), 200 - MAX_OWN_LAYERS);
        assert!(plan.grouped.values().all(|&g| g < SHARED_GROUPS));
        // The largest keep their own layers; the small one is in neither.
        assert!(plan.own.contains(&digests[199]) && !plan.own.contains(&digests[0]));
        assert!(!plan.own.contains("sha256:small") && !plan.grouped.contains_key("sha256:small"));
        // Same blobs in another order: same plan.
        let reversed: Vec<PlannedBlob> = blobs(0).collect::<Vec<_>>().into_iter().rev().collect();
        assert_eq!(LayerPlan::new(reversed).grouped, plan.grouped);
    }

    #[test]
    fn plugins_land_in_the_plugin_dir_by_file_name() {
        assert_eq!(
            plugin_path(Path::new("target/plugins/api_key.wasm")),
            "/plugins/api_key.wasm"
        );
    }
}

//! What an Ollama model manifest and config may contain, checked before any
//! large download starts: the registry protocol is not an official API, so
//! anything unexpected is refused loudly rather than half-supported.

use serde::Deserialize;

use super::PullError;
use crate::model_ref::ModelRef;

pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// The GGUF weights.
pub const OLLAMA_MODEL: &str = "application/vnd.ollama.image.model";
/// One tensor of a safetensors model (Ollama's `manifest.MediaTypeImageTensor`),
/// named by the layer's `name` field (`model.layers.0.mlp.up_proj.weight`).
pub const OLLAMA_TENSOR: &str = "application/vnd.ollama.image.tensor";
/// A JSON file of a safetensors model (`config.json`, `tokenizer.json`),
/// named by the layer's `name` field.
pub const OLLAMA_JSON: &str = "application/vnd.ollama.image.json";

/// Layer types Ollama understands: the GGUF path (`server/images.go`
/// GetModel) and the safetensors path (`x/create`, `manifest/layer.go`),
/// whose tensors and JSON files are one layer each.
const KNOWN_LAYERS: &[&str] = &[
    OLLAMA_TENSOR,
    OLLAMA_JSON,
    "application/vnd.ollama.image.model",
    "application/vnd.ollama.image.projector",
    "application/vnd.ollama.image.adapter",
    "application/vnd.ollama.image.template",
    "application/vnd.ollama.image.prompt",
    "application/vnd.ollama.image.system",
    "application/vnd.ollama.image.params",
    "application/vnd.ollama.image.messages",
    "application/vnd.ollama.image.license",
    "application/vnd.ollama.image.embed",
    "application/vnd.ollama.image.draft",
];

/// A layer as listed in the manifest. Fields kiln does not act on (a
/// tensor's `dtype` and `shape`, `from`) stay in the manifest bytes, which
/// are kept exactly as served.
#[derive(Debug, Clone, Deserialize)]
pub struct Descriptor {
    #[serde(rename = "mediaType")]
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    /// A safetensors layer's tensor or file name.
    #[serde(default)]
    pub name: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Manifest {
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
    #[serde(rename = "mediaType", default)]
    pub media_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

/// Parses and checks a manifest as served.
pub fn parse_manifest(model: &ModelRef, bytes: &[u8]) -> Result<Manifest, PullError> {
    let invalid = |reason: String| PullError::InvalidManifest {
        model: model.short(),
        reason,
    };
    let manifest: Manifest = serde_json::from_slice(bytes)
        .map_err(|e| invalid(format!("not a Docker v2 manifest: {e}")))?;
    if manifest.schema_version != 2 {
        return Err(invalid(format!(
            "schemaVersion {} (expected 2)",
            manifest.schema_version
        )));
    }
    if let Some(media_type) = &manifest.media_type
        && media_type != DOCKER_MANIFEST
    {
        return Err(invalid(format!(
            "media type {media_type} (expected {DOCKER_MANIFEST})"
        )));
    }
    if manifest.config.media_type != DOCKER_CONFIG {
        return Err(invalid(format!(
            "config media type {} (expected {DOCKER_CONFIG})",
            manifest.config.media_type
        )));
    }
    for layer in std::iter::once(&manifest.config).chain(&manifest.layers) {
        crate::blob_cache::hex_of(&layer.digest).map_err(|e| invalid(e.to_string()))?;
    }
    for layer in &manifest.layers {
        let media_type = layer.media_type.as_str();
        if !KNOWN_LAYERS.contains(&media_type) {
            return Err(PullError::Unsupported {
                model: model.short(),
                reason: format!(
                    "layer type {media_type} is unknown to kiln; refusing to guess what it is"
                ),
            });
        }
        // Ollama finds a safetensors model's tensors and files by these names.
        if (media_type == OLLAMA_TENSOR || media_type == OLLAMA_JSON)
            && layer.name.as_deref().is_none_or(str::is_empty)
        {
            return Err(invalid(format!(
                "its safetensors layer {} ({media_type}) has no name, and Ollama finds \
                 tensors and files by name",
                layer.digest
            )));
        }
    }
    if !manifest
        .layers
        .iter()
        .any(|l| l.media_type == OLLAMA_MODEL || l.media_type == OLLAMA_TENSOR)
    {
        return Err(cloud_or_weightless(model));
    }
    Ok(manifest)
}

/// The few config fields kiln acts on.
#[derive(Debug, Deserialize)]
struct Config {
    #[serde(default)]
    remote_host: Option<String>,
}

/// Refuses cloud models: their config names a `remote_host` and they have no weights.
pub fn check_config(model: &ModelRef, bytes: &[u8]) -> Result<(), PullError> {
    let config: Config = serde_json::from_slice(bytes).map_err(|e| PullError::InvalidManifest {
        model: model.short(),
        reason: format!("its config blob is not JSON: {e}"),
    })?;
    if config.remote_host.is_some_and(|h| !h.is_empty()) {
        return Err(cloud_or_weightless(model));
    }
    Ok(())
}

pub fn cloud_or_weightless(model: &ModelRef) -> PullError {
    PullError::Unsupported {
        model: model.short(),
        reason: "it is an Ollama cloud model (runs on ollama.com, no weights to bake); pick a local tag such as gemma3:4b"
            .into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> ModelRef {
        ModelRef::parse("gemma3:4b").unwrap()
    }

    fn manifest_with(layer_type: &str) -> Vec<u8> {
        let d = format!("sha256:{}", "ab".repeat(32));
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST,
            "config": {"mediaType": DOCKER_CONFIG, "digest": d, "size": 10},
            "layers": [
                {"mediaType": OLLAMA_MODEL, "digest": d, "size": 10},
                {"mediaType": layer_type, "digest": d, "size": 10},
            ],
        }))
        .unwrap()
    }

    #[test]
    fn gguf_and_tensor_layers_are_accepted_and_unknown_layers_refused() {
        assert!(
            parse_manifest(
                &model(),
                &manifest_with("application/vnd.ollama.image.template")
            )
            .is_ok()
        );
        let unknown =
            parse_manifest(&model(), &manifest_with("application/x-surprise")).unwrap_err();
        assert!(
            unknown.to_string().contains("application/x-surprise"),
            "{unknown}"
        );
    }

    fn tensor_manifest(layers: serde_json::Value) -> Vec<u8> {
        let d = format!("sha256:{}", "ab".repeat(32));
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST,
            "config": {"mediaType": DOCKER_CONFIG, "digest": d, "size": 10},
            "layers": layers,
        }))
        .unwrap()
    }

    #[test]
    fn safetensors_models_need_a_name_on_each_tensor_and_json_layer() {
        let d = format!("sha256:{}", "cd".repeat(32));
        let good = tensor_manifest(serde_json::json!([
            {"mediaType": OLLAMA_TENSOR, "digest": d, "size": 10,
             "name": "model.embed_tokens.weight", "dtype": "BF16", "shape": [5]},
            {"mediaType": OLLAMA_JSON, "digest": d, "size": 10, "name": "config.json"},
        ]));
        let manifest = parse_manifest(&model(), &good).unwrap();
        assert_eq!(
            manifest.layers[0].name.as_deref(),
            Some("model.embed_tokens.weight")
        );
        let nameless = tensor_manifest(serde_json::json!([
            {"mediaType": OLLAMA_TENSOR, "digest": d, "size": 10},
        ]));
        let err = parse_manifest(&model(), &nameless).unwrap_err();
        assert!(err.to_string().contains("has no name"), "{err}");
        // JSON files alone are no model.
        let weightless = tensor_manifest(serde_json::json!([
            {"mediaType": OLLAMA_JSON, "digest": d, "size": 10, "name": "config.json"},
        ]));
        assert!(parse_manifest(&model(), &weightless).is_err());
    }

    #[test]
    fn configs_without_diff_ids_are_accepted() {
        let safetensors = br#"{"model_format":"safetensors","model_family":"qwen3","model_families":["qwen3"],"model_type":"0.6B","file_type":"bf16","requires":"0.14.0","architecture":"amd64","os":"linux"}"#;
        assert!(check_config(&model(), safetensors).is_ok());
    }

    #[test]
    fn cloud_configs_are_refused() {
        let err =
            check_config(&model(), br#"{"remote_host":"https://ollama.com:443"}"#).unwrap_err();
        assert!(err.to_string().contains("cloud model"), "{err}");
        assert!(check_config(&model(), br#"{"model_format":"gguf"}"#).is_ok());
    }
}

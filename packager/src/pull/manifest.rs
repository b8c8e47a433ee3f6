//! What an Ollama model manifest and config may contain, checked before any
//! large download starts: the registry protocol is not an official API, so
//! anything unexpected is refused loudly rather than half-supported.

use serde::Deserialize;

use super::PullError;
use crate::reference::ModelRef;

pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// The GGUF weights.
pub const OLLAMA_MODEL: &str = "application/vnd.ollama.image.model";

/// Layer types Ollama's GGUF path understands (`server/images.go` GetModel).
/// `.tensor` and `.json` belong to the safetensors/MLX path and are refused.
const KNOWN_LAYERS: &[&str] = &[
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

#[derive(Debug, Clone, Deserialize)]
pub struct Descriptor {
    #[serde(rename = "mediaType")]
    pub media_type: String,
    pub digest: String,
    pub size: u64,
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
        crate::cache::hex_of(&layer.digest).map_err(|e| invalid(e.to_string()))?;
    }
    for layer in &manifest.layers {
        let media_type = layer.media_type.as_str();
        if media_type.ends_with(".tensor") || media_type == "application/vnd.ollama.image.json" {
            return Err(PullError::Unsupported {
                model: model.short(),
                reason: format!(
                    "it is a safetensors (MLX) model (layer {media_type}); only GGUF models are supported"
                ),
            });
        }
        if !KNOWN_LAYERS.contains(&media_type) {
            return Err(PullError::Unsupported {
                model: model.short(),
                reason: format!(
                    "layer type {media_type} is unknown to kiln; refusing to guess what it is"
                ),
            });
        }
    }
    if !manifest.layers.iter().any(|l| l.media_type == OLLAMA_MODEL) {
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
    fn gguf_layers_are_accepted_and_tensor_or_unknown_layers_refused() {
        assert!(
            parse_manifest(
                &model(),
                &manifest_with("application/vnd.ollama.image.template")
            )
            .is_ok()
        );
        let tensor = parse_manifest(
            &model(),
            &manifest_with("application/vnd.ollama.image.tensor"),
        )
        .unwrap_err();
        assert!(tensor.to_string().contains("safetensors"), "{tensor}");
        let unknown =
            parse_manifest(&model(), &manifest_with("application/x-surprise")).unwrap_err();
        assert!(
            unknown.to_string().contains("application/x-surprise"),
            "{unknown}"
        );
    }

    #[test]
    fn cloud_configs_are_refused() {
        let err =
            check_config(&model(), br#"{"remote_host":"https://ollama.com:443"}"#).unwrap_err();
        assert!(err.to_string().contains("cloud model"), "{err}");
        assert!(check_config(&model(), br#"{"model_format":"gguf"}"#).is_ok());
    }
}

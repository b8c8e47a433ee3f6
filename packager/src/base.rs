//! Reading the base image from its registry: index → the requested platform's
//! manifest → config. Docker v2 and OCI manifests are both accepted; the
//! layers' media types are checked here so a base kiln cannot carry fails
//! before any upload.

use std::sync::Arc;

use bytes::Bytes;

use crate::image::{self, AnyManifest, Descriptor, ImageRef, Platform, config};
use crate::registry::{RegistryClient, RegistryError};

#[derive(Debug, thiserror::Error)]
pub enum BaseError {
    #[error("base image {reference}: {error}")]
    Registry {
        reference: String,
        error: RegistryError,
    },
    #[error(
        "base image {reference} has no {wanted} image (it has: {available}); pick another --platform or --base"
    )]
    NoPlatform {
        reference: String,
        wanted: String,
        available: String,
    },
    #[error("base image {reference} is {actual}, not {wanted}; pick another --platform or --base")]
    WrongPlatform {
        reference: String,
        wanted: String,
        actual: String,
    },
    #[error("base image {reference}: {detail}")]
    Invalid { reference: String, detail: String },
}

/// One platform's image of the base, with its config read and its layers
/// still in the registry (they are copied, mounted or skipped by the sink).
pub struct BaseImage {
    pub reference: ImageRef,
    pub client: Arc<RegistryClient>,
    /// Digest of the single-platform manifest kiln builds on.
    pub manifest_digest: String,
    pub platform: Platform,
    pub config: Bytes,
    /// Layer descriptors with OCI media types.
    pub layers: Vec<Descriptor>,
}

/// Resolves `reference` for `platform` and reads its config.
pub async fn resolve(
    reference: &ImageRef,
    platform: &Platform,
    client: Arc<RegistryClient>,
) -> Result<BaseImage, BaseError> {
    let name = reference.to_string();
    let reg = |error| BaseError::Registry {
        reference: name.clone(),
        error,
    };
    let invalid = |detail: String| BaseError::Invalid {
        reference: name.clone(),
        detail,
    };
    let repo = &reference.repository;

    let top = client
        .get_manifest(repo, reference.reference())
        .await
        .map_err(reg)?;
    let (manifest, manifest_digest) = match top.parse(&name).map_err(|e| invalid(e.to_string()))? {
        AnyManifest::Image(m) => (m, top.digest.clone()),
        AnyManifest::Index(index) => {
            let entry = index
                .manifests
                .iter()
                .find(|d| d.platform.as_ref().is_some_and(|p| platform.matches(p)))
                .ok_or_else(|| BaseError::NoPlatform {
                    reference: name.clone(),
                    wanted: platform.to_string(),
                    available: available_platforms(&index.manifests),
                })?;
            let raw = client
                .get_manifest(repo, &entry.digest)
                .await
                .map_err(reg)?;
            match raw.parse(&name).map_err(|e| invalid(e.to_string()))? {
                AnyManifest::Image(m) => (m, raw.digest),
                AnyManifest::Index(_) => {
                    return Err(invalid("an index points at another index".into()));
                }
            }
        }
    };
    image::validate_digest(&manifest.config.digest).map_err(|e| invalid(e.to_string()))?;
    let config = client
        .get_blob_bytes(repo, &manifest.config.digest)
        .await
        .map_err(reg)?;

    // A single-platform base (no index) must still be the platform asked for:
    // Cloud Run runs linux/amd64 only, and an arm64 base would crash there.
    #[derive(serde::Deserialize)]
    struct ConfigPlatform {
        architecture: Option<String>,
        os: Option<String>,
        variant: Option<String>,
    }
    let cp: ConfigPlatform =
        serde_json::from_slice(&config).map_err(|e| invalid(format!("config is not JSON: {e}")))?;
    let actual = Platform {
        os: cp.os.unwrap_or_default(),
        architecture: cp.architecture.unwrap_or_default(),
        variant: cp.variant,
    };
    if !platform.matches(&actual) {
        return Err(BaseError::WrongPlatform {
            reference: name,
            wanted: platform.to_string(),
            actual: actual.to_string(),
        });
    }

    let diff_ids = config::diff_ids(&config).map_err(|e| invalid(e.to_string()))?;
    if diff_ids.len() != manifest.layers.len() {
        return Err(invalid(format!(
            "config lists {} layers but the manifest has {}",
            diff_ids.len(),
            manifest.layers.len()
        )));
    }
    let mut layers = Vec::with_capacity(manifest.layers.len());
    for layer in manifest.layers {
        image::validate_digest(&layer.digest).map_err(|e| invalid(e.to_string()))?;
        let media_type =
            image::to_oci_layer_type(&layer.media_type).map_err(|e| invalid(e.to_string()))?;
        layers.push(Descriptor {
            media_type: media_type.to_string(),
            platform: None,
            ..layer
        });
    }
    Ok(BaseImage {
        reference: reference.clone(),
        client,
        manifest_digest,
        platform: actual,
        config,
        layers,
    })
}

fn available_platforms(entries: &[Descriptor]) -> String {
    let list: Vec<String> = entries
        .iter()
        .filter_map(|d| d.platform.as_ref())
        .filter(|p| p.os != "unknown")
        .map(Platform::to_string)
        .collect();
    if list.is_empty() {
        "no platforms listed".into()
    } else {
        list.join(", ")
    }
}

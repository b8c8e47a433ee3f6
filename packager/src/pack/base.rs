//! The base image of `kiln pack`, read with [`crate::image::remote`] and
//! checked for what kiln builds on: the platform asked for, one diff_id per
//! layer, layer media types kiln can carry (converted to OCI's), so a base
//! that cannot work fails before any upload.

use std::sync::Arc;

use bytes::Bytes;

use crate::image::remote::{self, RemoteError, RemoteImage};
use crate::image::{self, Descriptor, ImageRef, Platform, config};
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
    let RemoteImage {
        manifest_digest,
        manifest,
        config,
    } = remote::read(&client, reference, platform)
        .await
        .map_err(|e| match e {
            RemoteError::Registry(error) => reg(error),
            RemoteError::NoPlatform {
                wanted, available, ..
            } => BaseError::NoPlatform {
                reference: name.clone(),
                wanted,
                available,
            },
            RemoteError::Invalid(detail) => invalid(detail),
        })?;

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

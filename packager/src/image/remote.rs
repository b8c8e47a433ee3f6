//! Reading an image from its registry: tag or digest → (through an index)
//! the requested platform's manifest → config. One reader for `pack --base`
//! and `kiln inspect`; the layers stay in the registry until a sink asks.

use bytes::Bytes;

use super::{AnyManifest, Descriptor, ImageRef, Manifest, Platform};
use crate::registry::{RegistryClient, RegistryError};

#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("{reference} has no {wanted} image (it has: {available})")]
    NoPlatform {
        reference: String,
        wanted: String,
        available: String,
    },
    #[error("{0}")]
    Invalid(String),
}

/// One platform's image: its manifest as read and its config's bytes.
pub struct RemoteImage {
    /// Digest of the single-platform manifest.
    pub manifest_digest: String,
    pub manifest: Manifest,
    pub config: Bytes,
}

/// Reads `reference`, choosing `platform` when it names an index.
pub async fn read(
    client: &RegistryClient,
    reference: &ImageRef,
    platform: &Platform,
) -> Result<RemoteImage, RemoteError> {
    let name = reference.to_string();
    let invalid = |e: super::ImageError| RemoteError::Invalid(e.to_string());
    let repo = &reference.repository;
    let mut raw = client.get_manifest(repo, reference.reference()).await?;
    if let AnyManifest::Index(index) = raw.parse(&name).map_err(invalid)? {
        let entry =
            pick_platform(&index.manifests, platform).ok_or_else(|| RemoteError::NoPlatform {
                reference: name.clone(),
                wanted: platform.to_string(),
                available: available_platforms(&index.manifests),
            })?;
        raw = client.get_manifest(repo, &entry.digest).await?;
    }
    let AnyManifest::Image(manifest) = raw.parse(&name).map_err(invalid)? else {
        return Err(RemoteError::Invalid(
            "an index points at another index".into(),
        ));
    };
    super::validate_digest(&manifest.config.digest).map_err(invalid)?;
    let config = client.get_blob_bytes(repo, &manifest.config.digest).await?;
    Ok(RemoteImage {
        manifest_digest: raw.digest,
        manifest,
        config,
    })
}

/// The entry of an index for `platform`.
pub fn pick_platform<'a>(entries: &'a [Descriptor], platform: &Platform) -> Option<&'a Descriptor> {
    entries
        .iter()
        .find(|d| d.platform.as_ref().is_some_and(|p| platform.matches(p)))
}

/// `linux/amd64, linux/arm64`: what an index offers (attestations, listed as
/// `unknown/unknown`, left out).
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

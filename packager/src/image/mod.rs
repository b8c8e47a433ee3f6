//! The image model: descriptors, manifests, indexes and platforms, kept apart
//! from where an image comes from (`registry`, `source`) and where it goes
//! (`sinks`). Everything here is plain data plus pure conversions.

pub mod config;
pub mod reference;
pub mod remote;

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub use reference::ImageRef;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const OCI_LAYER_NONDIST_TAR: &str = "application/vnd.oci.image.layer.nondistributable.v1.tar";
pub const OCI_LAYER_NONDIST_GZIP: &str =
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
pub const DOCKER_LAYER_ZSTD: &str = "application/vnd.docker.image.rootfs.diff.tar.zstd";
pub const DOCKER_FOREIGN_GZIP: &str = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";

/// What kiln accepts when it asks a registry for a manifest: both single-image
/// manifests and both kinds of multi-platform index.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json";

/// Annotation on each layer kiln adds, saying what the layer holds (shown by `kiln inspect`).
pub const LAYER_CONTENT_ANNOTATION: &str = "dev.kiln.layer.content";
/// Config label listing the baked models as JSON `[{"name":…,"digest":…}]`.
pub const MODELS_LABEL: &str = "dev.kiln.models";
/// Config label naming where the models live inside the image (`OLLAMA_MODELS`).
pub const MODELS_PATH_LABEL: &str = "dev.kiln.models-path";

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error(
        "unsupported layer media type {0}; kiln can carry gzip, zstd and uncompressed tar layers"
    )]
    UnsupportedLayer(String),
    #[error(
        "unsupported manifest media type {0:?}; expected an OCI or Docker v2 image manifest or index"
    )]
    UnsupportedManifest(String),
    #[error("{what} is not valid JSON for an image {kind}: {source}")]
    Json {
        what: String,
        kind: &'static str,
        source: serde_json::Error,
    },
    #[error("invalid platform {0:?}; use OS/ARCH[/VARIANT], e.g. linux/amd64")]
    Platform(String),
    #[error("invalid digest {0:?}; expected sha256: followed by 64 lowercase hex digits")]
    Digest(String),
}

/// A content descriptor as in the OCI image spec.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub urls: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
}

impl Descriptor {
    pub fn new(media_type: &str, digest: &str, size: u64) -> Descriptor {
        Descriptor {
            media_type: media_type.to_string(),
            digest: digest.to_string(),
            size,
            urls: None,
            annotations: None,
            platform: None,
        }
    }

    /// The hex part of a `sha256:` digest.
    pub fn hex(&self) -> &str {
        self.digest.strip_prefix("sha256:").unwrap_or(&self.digest)
    }

    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations.as_ref()?.get(key).map(String::as_str)
    }
}

/// A single-platform image manifest (OCI or Docker v2 schema 2; same shape).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

impl Manifest {
    /// Canonical bytes: these are what gets pushed and written, so the digest
    /// printed equals the digest a registry computes.
    pub fn to_bytes(&self) -> Vec<u8> {
        // Serialising plain structs of strings and integers cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// A multi-platform index (OCI index or Docker manifest list).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub manifests: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// What a registry returned for a manifest request.
#[derive(Clone, Debug)]
pub enum AnyManifest {
    Image(Manifest),
    Index(Index),
}

impl AnyManifest {
    /// Parses manifest bytes using the served `Content-Type`, falling back to
    /// the `mediaType` field (some registries serve `application/json`).
    pub fn parse(content_type: &str, bytes: &[u8], what: &str) -> Result<AnyManifest, ImageError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Probe {
            media_type: Option<String>,
            manifests: Option<serde_json::Value>,
        }
        let json_err = |kind, source| ImageError::Json {
            what: what.to_string(),
            kind,
            source,
        };
        let probe: Probe = serde_json::from_slice(bytes).map_err(|e| json_err("manifest", e))?;
        let content_type = content_type.split(';').next().unwrap_or("").trim();
        let media_type = match content_type {
            OCI_INDEX | DOCKER_MANIFEST_LIST | OCI_MANIFEST | DOCKER_MANIFEST => {
                content_type.to_string()
            }
            _ => probe.media_type.clone().unwrap_or_else(|| {
                // An OCI manifest may omit mediaType; its shape tells.
                if probe.manifests.is_some() {
                    OCI_INDEX
                } else {
                    OCI_MANIFEST
                }
                .to_string()
            }),
        };
        match media_type.as_str() {
            OCI_INDEX | DOCKER_MANIFEST_LIST => Ok(AnyManifest::Index(
                serde_json::from_slice(bytes).map_err(|e| json_err("index", e))?,
            )),
            OCI_MANIFEST | DOCKER_MANIFEST => Ok(AnyManifest::Image(
                serde_json::from_slice(bytes).map_err(|e| json_err("manifest", e))?,
            )),
            other => Err(ImageError::UnsupportedManifest(other.to_string())),
        }
    }
}

/// `os/architecture[/variant]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Platform {
    pub fn linux_amd64() -> Platform {
        Platform {
            architecture: "amd64".into(),
            os: "linux".into(),
            variant: None,
        }
    }

    pub fn parse(s: &str) -> Result<Platform, ImageError> {
        let parts: Vec<&str> = s.split('/').collect();
        let valid =
            |p: &&str| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        match parts.as_slice() {
            [os, arch] if valid(os) && valid(arch) => Ok(Platform {
                os: os.to_string(),
                architecture: arch.to_string(),
                variant: None,
            }),
            [os, arch, variant] if valid(os) && valid(arch) && valid(variant) => Ok(Platform {
                os: os.to_string(),
                architecture: arch.to_string(),
                variant: Some(variant.to_string()),
            }),
            _ => Err(ImageError::Platform(s.to_string())),
        }
    }

    /// Whether an index entry's platform satisfies this request. A request
    /// without a variant accepts any variant (linux/arm64 matches arm64/v8).
    pub fn matches(&self, other: &Platform) -> bool {
        self.os == other.os
            && self.architecture == other.architecture
            && (self.variant.is_none() || self.variant == other.variant)
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// The OCI media type for a base layer. Docker v2.2 layer types map one to one;
/// OCI types pass through. Kiln always emits an OCI manifest because Docker
/// v2.2 has no media type for the uncompressed weight layers.
pub fn to_oci_layer_type(media_type: &str) -> Result<&'static str, ImageError> {
    Ok(match media_type {
        DOCKER_LAYER_GZIP | OCI_LAYER_GZIP => OCI_LAYER_GZIP,
        DOCKER_LAYER_TAR | OCI_LAYER_TAR => OCI_LAYER_TAR,
        DOCKER_LAYER_ZSTD | OCI_LAYER_ZSTD => OCI_LAYER_ZSTD,
        DOCKER_FOREIGN_GZIP | OCI_LAYER_NONDIST_GZIP => OCI_LAYER_NONDIST_GZIP,
        OCI_LAYER_NONDIST_TAR => OCI_LAYER_NONDIST_TAR,
        other => return Err(ImageError::UnsupportedLayer(other.to_string())),
    })
}

/// Checks that a digest is `sha256:` + 64 lowercase hex digits, so it is safe
/// to use in URLs and file names.
pub fn validate_digest(digest: &str) -> Result<(), ImageError> {
    match digest.strip_prefix("sha256:") {
        Some(hex)
            if hex.len() == 64
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) =>
        {
            Ok(())
        }
        _ => Err(ImageError::Digest(digest.to_string())),
    }
}

/// `sha256:<hex>` of some bytes.
pub fn sha256_digest(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platform_parse_table() {
        assert_eq!(
            Platform::parse("linux/amd64").unwrap(),
            Platform::linux_amd64()
        );
        assert_eq!(
            Platform::parse("linux/arm64/v8")
                .unwrap()
                .variant
                .as_deref(),
            Some("v8")
        );
        for bad in [
            "",
            "linux",
            "linux/",
            "/amd64",
            "linux/amd64/v8/x",
            "linux/am d64",
        ] {
            assert!(Platform::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn platform_without_variant_matches_any_variant() {
        let want = Platform::parse("linux/arm64").unwrap();
        assert!(want.matches(&Platform::parse("linux/arm64/v8").unwrap()));
        assert!(!Platform::parse("linux/arm64/v7").unwrap().matches(&want));
        assert!(!want.matches(&Platform::linux_amd64()));
    }

    #[test]
    fn docker_layer_types_convert_to_oci() {
        assert_eq!(
            to_oci_layer_type(DOCKER_LAYER_GZIP).unwrap(),
            OCI_LAYER_GZIP
        );
        assert_eq!(to_oci_layer_type(DOCKER_LAYER_TAR).unwrap(), OCI_LAYER_TAR);
        assert_eq!(to_oci_layer_type(OCI_LAYER_ZSTD).unwrap(), OCI_LAYER_ZSTD);
        assert_eq!(
            to_oci_layer_type(DOCKER_FOREIGN_GZIP).unwrap(),
            OCI_LAYER_NONDIST_GZIP
        );
        assert!(to_oci_layer_type("application/vnd.in-toto+json").is_err());
    }

    #[test]
    fn manifest_kind_follows_content_type_then_media_type() {
        let index = br#"{"schemaVersion":2,"manifests":[]}"#;
        assert!(matches!(
            AnyManifest::parse("application/json", index, "t").unwrap(),
            AnyManifest::Index(_)
        ));
        let image = br#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json",
            "config":{"mediaType":"a","digest":"sha256:00","size":1},"layers":[]}"#;
        assert!(matches!(
            AnyManifest::parse("text/plain", image, "t").unwrap(),
            AnyManifest::Image(_)
        ));
        let schema1 = br#"{"schemaVersion":1,"mediaType":"application/vnd.docker.distribution.manifest.v1+prettyjws"}"#;
        assert!(matches!(
            AnyManifest::parse("", schema1, "t"),
            Err(ImageError::UnsupportedManifest(_))
        ));
    }

    #[test]
    fn digest_validation_rejects_path_tricks() {
        validate_digest(&sha256_digest(b"x")).unwrap();
        for bad in ["sha256:../../etc/passwd", "sha512:00", "sha256:ABCDEF", ""] {
            assert!(validate_digest(bad).is_err(), "{bad:?}");
        }
    }
}

//! Seeds a test registry with what kiln reads in production: an Ollama-format
//! model (as `registry.ollama.ai` serves it) and a multi-arch base image (as
//! Docker Hub serves `ollama/ollama`).

use std::io::{self, Read};

use anyhow::Result;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::http::digest_of;
use crate::registry::TestRegistry;

pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
pub const OLLAMA_MODEL: &str = "application/vnd.ollama.image.model";
pub const OLLAMA_TEMPLATE: &str = "application/vnd.ollama.image.template";
pub const OLLAMA_LICENSE: &str = "application/vnd.ollama.image.license";
pub const OLLAMA_PARAMS: &str = "application/vnd.ollama.image.params";

/// Deterministic pseudo-random bytes: the same `(seed, len)` always gives the
/// same stream, so a large "GGUF" blob never has to be held in memory or on disk.
pub struct SyntheticBytes {
    state: u64,
    remaining: u64,
    header: &'static [u8],
    offset: u64,
}

impl SyntheticBytes {
    /// A blob that starts like a GGUF file, followed by noise.
    pub fn gguf(seed: u64, len: u64) -> SyntheticBytes {
        SyntheticBytes {
            state: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
            remaining: len,
            header: b"GGUF",
            offset: 0,
        }
    }

    /// The digest and length of the whole stream, computed by reading it once.
    pub fn digest(seed: u64, len: u64) -> String {
        let mut hasher = Sha256::new();
        let mut reader = SyntheticBytes::gguf(seed, len);
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = reader.read(&mut buf).unwrap_or(0);
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        format!("sha256:{}", hex::encode(hasher.finalize()))
    }
}

impl Read for SyntheticBytes {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf
            .len()
            .min(self.remaining.min(usize::MAX as u64) as usize);
        for (i, byte) in buf[..n].iter_mut().enumerate() {
            let pos = self.offset + i as u64;
            *byte = if (pos as usize) < self.header.len() {
                self.header[pos as usize]
            } else {
                // xorshift64: fast, deterministic, incompressible enough for tests.
                self.state ^= self.state << 13;
                self.state ^= self.state >> 7;
                self.state ^= self.state << 17;
                self.state as u8
            };
        }
        self.offset += n as u64;
        self.remaining -= n as u64;
        Ok(n)
    }
}

/// What to put in a seeded Ollama model.
#[derive(Clone, Debug)]
pub struct ModelSpec {
    /// Size of the GGUF weights blob.
    pub weights_size: u64,
    /// Changes the weights' bytes (two models with different seeds differ).
    pub seed: u64,
    /// The config's `model_family`.
    pub family: String,
    /// Set `remote_host` in the config, as Ollama's `-cloud` tags do.
    pub cloud: bool,
    /// Extra layers `(media type, bytes)`, e.g. an unknown type to test refusal.
    pub extra_layers: Vec<(String, Vec<u8>)>,
}

impl Default for ModelSpec {
    fn default() -> Self {
        ModelSpec {
            weights_size: 1 << 20,
            seed: 1,
            family: "gemma3".into(),
            cloud: false,
            extra_layers: Vec::new(),
        }
    }
}

/// A blob as listed in a manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Blob {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
}

/// What was seeded, for tests to compare against.
#[derive(Clone, Debug)]
pub struct SeededModel {
    pub repo: String,
    pub tag: String,
    /// The manifest bytes exactly as the registry serves them.
    pub manifest: Vec<u8>,
    pub manifest_digest: String,
    pub config: Blob,
    /// Layers in manifest order; the first is the weights.
    pub layers: Vec<Blob>,
    pub spec: ModelSpec,
}

impl SeededModel {
    /// The bytes of a seeded blob (weights regenerated from the spec).
    pub fn blob_reader(&self, registry: &TestRegistry, digest: &str) -> Result<Box<dyn Read>> {
        if self.layers.first().is_some_and(|l| l.digest == digest) {
            return Ok(Box::new(SyntheticBytes::gguf(
                self.spec.seed,
                self.spec.weights_size,
            )));
        }
        Ok(Box::new(io::Cursor::new(
            registry.get_blob(&self.repo, digest)?,
        )))
    }
}

impl TestRegistry {
    /// Seeds an Ollama-format model at `repo:tag` (e.g. `library/gemma3`, `4b`):
    /// a Docker v2 manifest with an Ollama config and `application/vnd.ollama.image.*` layers.
    pub fn seed_ollama_model(
        &self,
        repo: &str,
        tag: &str,
        spec: &ModelSpec,
    ) -> Result<SeededModel> {
        let weights_digest = SyntheticBytes::digest(spec.seed, spec.weights_size);
        self.push_blob(
            repo,
            &weights_digest,
            spec.weights_size,
            &mut SyntheticBytes::gguf(spec.seed, spec.weights_size),
        )?;
        let mut layers = vec![Blob {
            media_type: OLLAMA_MODEL.into(),
            digest: weights_digest.clone(),
            size: spec.weights_size,
        }];

        let small: Vec<(String, Vec<u8>)> = [
            (
                OLLAMA_TEMPLATE.to_string(),
                b"{{ .System }}\n{{ .Prompt }}".to_vec(),
            ),
            (
                OLLAMA_LICENSE.to_string(),
                b"Gemma Terms of Use (test copy)\n".to_vec(),
            ),
            (
                OLLAMA_PARAMS.to_string(),
                br#"{"stop":["<end_of_turn>"],"temperature":1,"top_k":64,"top_p":0.95}"#.to_vec(),
            ),
        ]
        .into_iter()
        .chain(spec.extra_layers.iter().cloned())
        .collect();
        for (media_type, bytes) in &small {
            let digest = self.push_bytes(repo, bytes)?;
            layers.push(Blob {
                media_type: media_type.clone(),
                digest,
                size: bytes.len() as u64,
            });
        }

        let mut config = json!({
            "model_format": "gguf",
            "model_family": spec.family,
            "model_families": [spec.family],
            "model_type": "4.3B",
            "file_type": "Q4_K_M",
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| l.digest.clone()).collect::<Vec<_>>()},
        });
        if spec.cloud {
            config["remote_host"] = json!("https://ollama.com:443");
            config["remote_model"] =
                json!(format!("{}:{tag}", repo.rsplit('/').next().unwrap_or(repo)));
        }
        let (config, manifest) = self.push_config_and_build_manifest(repo, &config, &layers)?;
        let manifest_digest = self.push_manifest(repo, tag, DOCKER_MANIFEST, &manifest)?;
        Ok(SeededModel {
            repo: repo.into(),
            tag: tag.into(),
            manifest,
            manifest_digest,
            config,
            layers,
            spec: spec.clone(),
        })
    }

    /// Seeds a multi-arch base image at `repo:tag` shaped like `ollama/ollama`:
    /// a Docker manifest list with linux/amd64 and linux/arm64 images, each with
    /// two gzip layers, `/bin/ollama` as entrypoint and `serve` as command.
    pub fn seed_base_image(&self, repo: &str, tag: &str) -> Result<SeededBase> {
        let mut platforms = Vec::new();
        for arch in ["amd64", "arm64"] {
            let os_layer = gzip_tar(&[
                ("etc/os-release", b"ID=kiln-test-base\n".as_slice(), 0o644),
                ("etc/kiln-base-arch", arch.as_bytes(), 0o644),
            ])?;
            let script = format!("#!/bin/sh\necho \"fake ollama ({arch}) $*\"\n");
            let bin_layer = gzip_tar(&[("bin/ollama", script.as_bytes(), 0o755)])?;
            let mut layers = Vec::new();
            let mut diff_ids = Vec::new();
            for (tar, gz) in [os_layer, bin_layer] {
                diff_ids.push(digest_of(&tar));
                let digest = self.push_bytes(repo, &gz)?;
                layers.push(Blob {
                    media_type: DOCKER_LAYER_GZIP.into(),
                    digest,
                    size: gz.len() as u64,
                });
            }
            let config = json!({
                "architecture": arch,
                "os": "linux",
                "config": {
                    "Env": [
                        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                        "OLLAMA_HOST=0.0.0.0:11434",
                        "NVIDIA_VISIBLE_DEVICES=all",
                    ],
                    "Entrypoint": ["/bin/ollama"],
                    "Cmd": ["serve"],
                    "ExposedPorts": {"11434/tcp": {}},
                },
                "rootfs": {"type": "layers", "diff_ids": diff_ids},
                "history": [
                    {"created": "2025-01-01T00:00:00Z", "created_by": "ADD os files"},
                    {"created": "2025-01-01T00:00:00Z", "created_by": "COPY ollama /bin/ollama"},
                ],
            });
            let (config, manifest) = self.push_config_and_build_manifest(repo, &config, &layers)?;
            let digest =
                self.push_manifest(repo, &digest_of(&manifest), DOCKER_MANIFEST, &manifest)?;
            platforms.push(SeededPlatform {
                architecture: arch.into(),
                manifest_digest: digest,
                manifest_size: manifest.len() as u64,
                config,
                layers,
                diff_ids,
            });
        }
        let index = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST_LIST,
            "manifests": platforms.iter().map(|p| json!({
                "mediaType": DOCKER_MANIFEST,
                "digest": p.manifest_digest,
                "size": p.manifest_size,
                "platform": {"architecture": p.architecture, "os": "linux"},
            })).collect::<Vec<_>>(),
        }))?;
        let index_digest = self.push_manifest(repo, tag, DOCKER_MANIFEST_LIST, &index)?;
        Ok(SeededBase {
            repo: repo.into(),
            tag: tag.into(),
            index_digest,
            platforms,
        })
    }
}

/// A seeded multi-arch base image.
#[derive(Clone, Debug)]
pub struct SeededBase {
    pub repo: String,
    pub tag: String,
    pub index_digest: String,
    pub platforms: Vec<SeededPlatform>,
}

impl SeededBase {
    pub fn platform(&self, architecture: &str) -> Option<&SeededPlatform> {
        self.platforms
            .iter()
            .find(|p| p.architecture == architecture)
    }
}

/// One platform's image in a seeded base.
#[derive(Clone, Debug)]
pub struct SeededPlatform {
    pub architecture: String,
    pub manifest_digest: String,
    pub manifest_size: u64,
    pub config: Blob,
    /// Compressed layers, in order.
    pub layers: Vec<Blob>,
    /// Digests of the uncompressed layers, in order.
    pub diff_ids: Vec<String>,
}

impl TestRegistry {
    /// Uploads an image config and returns it with the Docker v2 manifest
    /// that lists it and `layers` (the manifest itself is not pushed).
    fn push_config_and_build_manifest(
        &self,
        repo: &str,
        config: &serde_json::Value,
        layers: &[Blob],
    ) -> Result<(Blob, Vec<u8>)> {
        let config_bytes = serde_json::to_vec(config)?;
        let config = Blob {
            media_type: DOCKER_CONFIG.into(),
            digest: self.push_bytes(repo, &config_bytes)?,
            size: config_bytes.len() as u64,
        };
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST,
            "config": descriptor(&config),
            "layers": layers.iter().map(descriptor).collect::<Vec<_>>(),
        }))?;
        Ok((config, manifest))
    }
}

fn descriptor(blob: &Blob) -> serde_json::Value {
    json!({"mediaType": blob.media_type, "digest": blob.digest, "size": blob.size})
}

/// A reproducible gzip'd tar: fixed mtime, owner root, entries in the given order.
/// Returns `(tar, tar.gz)`.
fn gzip_tar(files: &[(&str, &[u8], u32)]) -> Result<(Vec<u8>, Vec<u8>)> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, bytes, mode) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(*mode);
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        header.set_entry_type(tar::EntryType::Regular);
        builder.append_data(&mut header, path, *bytes)?;
    }
    let tar = builder.into_inner()?;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    io::Write::write_all(&mut gz, &tar)?;
    let gz = gz.finish()?;
    Ok((tar, gz))
}

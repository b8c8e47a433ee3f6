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
pub const OLLAMA_TENSOR: &str = "application/vnd.ollama.image.tensor";
pub const OLLAMA_JSON: &str = "application/vnd.ollama.image.json";

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
    /// Write `rootfs.diff_ids` in the config (older Ollama did; newer writes none).
    pub diff_ids: bool,
}

impl Default for ModelSpec {
    fn default() -> Self {
        ModelSpec {
            weights_size: 1 << 20,
            seed: 1,
            family: "gemma3".into(),
            cloud: false,
            extra_layers: Vec::new(),
            diff_ids: true,
        }
    }
}

/// One tensor of a seeded safetensors model.
#[derive(Clone, Debug)]
pub struct TensorSpec {
    /// e.g. `model.layers.0.mlp.up_proj.weight`.
    pub name: String,
    /// BF16 elements (two bytes each).
    pub elements: u64,
    /// Changes the tensor's bytes; equal name, size and seed give equal blobs.
    pub seed: u64,
}

/// What to put in a seeded safetensors model.
#[derive(Clone, Debug, Default)]
pub struct TensorModelSpec {
    /// In manifest order. A tensor listed twice is one blob listed twice.
    pub tensors: Vec<TensorSpec>,
    /// `(name, contents)` of the JSON files (`config.json`, `tokenizer.json`).
    pub json_files: Vec<(String, String)>,
}

impl TensorModelSpec {
    /// `layers` transformer blocks of four tensors each (two projections of
    /// `big` elements, two norms of 1024), an embedding of `big` elements and
    /// the JSON files a model directory has. `seed` changes every tensor.
    pub fn transformer(layers: usize, big: u64, seed: u64) -> TensorModelSpec {
        let mut tensors = vec![TensorSpec {
            name: "model.embed_tokens.weight".into(),
            elements: big,
            seed,
        }];
        for i in 0..layers {
            for (part, elements) in [
                ("input_layernorm.weight", 1024),
                ("self_attn.q_proj.weight", big),
                ("post_attention_layernorm.weight", 1024),
                ("mlp.up_proj.weight", big),
            ] {
                tensors.push(TensorSpec {
                    name: format!("model.layers.{i}.{part}"),
                    elements,
                    seed: seed + i as u64,
                });
            }
        }
        tensors.push(TensorSpec {
            name: "model.norm.weight".into(),
            elements: 1024,
            seed,
        });
        TensorModelSpec {
            tensors,
            json_files: vec![
                (
                    "config.json".into(),
                    format!(
                        r#"{{"architectures":["Qwen3ForCausalLM"],"num_hidden_layers":{layers}}}"#
                    ),
                ),
                (
                    "tokenizer.json".into(),
                    r#"{"version":"1.0","model":{"type":"BPE"}}"#.into(),
                ),
                (
                    "generation_config.json".into(),
                    r#"{"temperature":0.6,"top_p":0.95}"#.into(),
                ),
            ],
        }
    }
}

/// A packed safetensors file holding one BF16 tensor: the 8-byte header
/// length, the JSON header, then the data.
fn safetensors_blob(name: &str, elements: u64, seed: u64) -> Vec<u8> {
    let data_len = elements * 2;
    let header = json!({
        name: {"dtype": "BF16", "shape": [elements], "data_offsets": [0, data_len]},
    })
    .to_string();
    let mut out = Vec::with_capacity(8 + header.len() + data_len as usize);
    out.extend_from_slice(&(header.len() as u64).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    let mut data = SyntheticBytes::gguf(seed, data_len);
    data.header = b"";
    let start = out.len();
    out.resize(start + data_len as usize, 0);
    let _ = data.read_exact(&mut out[start..]);
    out
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
        if self
            .layers
            .first()
            .is_some_and(|l| l.digest == digest && l.media_type == OLLAMA_MODEL)
        {
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
        });
        if spec.diff_ids {
            config["rootfs"] = json!({"type": "layers", "diff_ids": layers.iter().map(|l| l.digest.clone()).collect::<Vec<_>>()});
        }
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

    /// Seeds a safetensors model at `repo:tag` the way Ollama's `x/create`
    /// writes one: a Docker v2 manifest whose layers are one
    /// `application/vnd.ollama.image.tensor` blob per tensor (a packed
    /// safetensors file, with `name`, `dtype` and `shape` on the layer), the
    /// model's JSON files as `application/vnd.ollama.image.json` layers, and a
    /// config without `rootfs` (Ollama's `ConfigV2` has none).
    pub fn seed_tensor_model(
        &self,
        repo: &str,
        tag: &str,
        spec: &TensorModelSpec,
    ) -> Result<SeededModel> {
        let mut layers = Vec::new();
        let mut entries = Vec::new();
        for tensor in &spec.tensors {
            let bytes = safetensors_blob(&tensor.name, tensor.elements, tensor.seed);
            let digest = self.push_bytes(repo, &bytes)?;
            let blob = Blob {
                media_type: OLLAMA_TENSOR.into(),
                digest,
                size: bytes.len() as u64,
            };
            entries.push(json!({
                "mediaType": blob.media_type,
                "digest": blob.digest,
                "size": blob.size,
                "name": tensor.name,
                "dtype": "BF16",
                "shape": [tensor.elements],
            }));
            layers.push(blob);
        }
        for (name, text) in &spec.json_files {
            let digest = self.push_bytes(repo, text.as_bytes())?;
            let blob = Blob {
                media_type: OLLAMA_JSON.into(),
                digest,
                size: text.len() as u64,
            };
            entries.push(json!({
                "mediaType": blob.media_type,
                "digest": blob.digest,
                "size": blob.size,
                "name": name,
            }));
            layers.push(blob);
        }
        let config = json!({
            "model_format": "safetensors",
            "model_family": "qwen3",
            "model_families": ["qwen3"],
            "model_type": "0.6B",
            "file_type": "bf16",
            "capabilities": ["completion"],
            "requires": "0.14.0",
            "architecture": "amd64",
            "os": "linux",
        });
        let config_bytes = serde_json::to_vec(&config)?;
        let config = Blob {
            media_type: DOCKER_CONFIG.into(),
            digest: self.push_bytes(repo, &config_bytes)?,
            size: config_bytes.len() as u64,
        };
        // Pretty-printed, as some registries serve it: the bytes must be kept as they are.
        let manifest = serde_json::to_vec_pretty(&json!({
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST,
            "config": descriptor(&config),
            "layers": entries,
        }))?;
        let manifest_digest = self.push_manifest(repo, tag, DOCKER_MANIFEST, &manifest)?;
        Ok(SeededModel {
            repo: repo.into(),
            tag: tag.into(),
            manifest,
            manifest_digest,
            config,
            layers,
            spec: ModelSpec {
                weights_size: 0,
                ..ModelSpec::default()
            },
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

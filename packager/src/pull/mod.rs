//! `kiln pull`: Ollama models from a registry (Ollama's own, or a mirror
//! given by `--source-registry`) into the local content-addressed cache.
//!
//! The result, [`PulledModel`], is what `pack` builds from and what
//! [`crate::models_dir`] lays out as an `OLLAMA_MODELS` tree.

mod blobs;
pub mod cli;
mod download;
mod local;
pub mod manifest;
pub mod ollama_registry;
mod partial;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use futures_util::{StreamExt as _, TryStreamExt as _};
use reqwest::{StatusCode, Url};

pub use crate::image::reference::{is_loopback, is_plain_http};
pub use ollama_registry::Credentials;

use crate::blob_cache::{Cache, CacheError};
use crate::credentials::{AuthOptions, Credential};
use crate::layers::TarFraming;
use crate::model_ref::ModelRef;
use crate::pack::layer_plan::{LayerPlan, PlannedBlob, own_layer};
use crate::progress::{Progress, ProgressMode};
use ollama_registry::{MANIFEST_ACCEPT, OllamaRegistry, redact};

/// How to pull. `PullOptions::new(cache_dir)` gives the defaults.
#[derive(Clone, Debug)]
pub struct PullOptions {
    pub cache_dir: PathBuf,
    /// Fetch from this registry instead of the model's own host, keeping the
    /// canonical name (and so the canonical on-disk path).
    pub source_registry: Option<Url>,
    /// Hosts (`host[:port]`) reached over plain HTTP besides loopback ones.
    pub insecure_registries: Vec<String>,
    /// User name and password for the registry (`KILN_REGISTRY_USERNAME` and
    /// `_PASSWORD` on the command line); they win over `credential_sources`.
    pub credentials: Option<Credentials>,
    /// Where else credentials may come from (docker config, credential
    /// helpers, gcloud and the metadata server for Google registries), as for
    /// pushes; `None`: anonymous unless `credentials` are given.
    pub credential_sources: Option<AuthOptions>,
    /// Concurrent connections per large blob. `None`: 16 (as Ollama), but 1
    /// for a loopback registry, where extra connections add CPU work and no
    /// throughput (see docs/BENCHMARKS.md, "Pull").
    pub parallel: Option<usize>,
    /// Bytes per ranged part; `None` picks by blob size.
    pub part_size: Option<u64>,
    /// Blobs downloaded at once for safetensors models, which have hundreds
    /// (4, as Ollama's `OLLAMA_MAX_TRANSFER_STREAMS`). GGUF models' blobs come
    /// one after the other, each in parallel ranges, as Ollama fetches them.
    pub blob_streams: usize,
    /// `OLLAMA_MODELS` inside the image `kiln pack` will build: each blob that
    /// gets a layer of its own there is also hashed as that layer while it
    /// downloads, so the first pack hashes nothing. `None`: blobs only.
    pub layer_models_path: Option<String>,
    /// Failed attempts in a row (without progress) before a part gives up.
    pub max_retries: u32,
    /// First retry delay; doubles per failure up to 32×.
    pub retry_base_delay: Duration,
    /// A connection that delivers nothing for this long is restarted.
    pub stall_timeout: Duration,
    pub connect_timeout: Duration,
    pub progress: ProgressMode,
    /// An existing Ollama store (`~/.ollama/models`) to import from before
    /// going to the network; blobs are verified while copied.
    pub from_ollama_dir: Option<PathBuf>,
}

impl PullOptions {
    pub fn new(cache_dir: impl Into<PathBuf>) -> PullOptions {
        PullOptions {
            cache_dir: cache_dir.into(),
            source_registry: None,
            insecure_registries: Vec::new(),
            credentials: None,
            credential_sources: None,
            parallel: None,
            part_size: None,
            blob_streams: 4,
            layer_models_path: Some(DEFAULT_MODELS_PATH.to_string()),
            max_retries: 6,
            retry_base_delay: Duration::from_secs(1),
            stall_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(30),
            progress: ProgressMode::Auto,
            from_ollama_dir: None,
        }
    }
}

impl PullOptions {
    /// Connections per large blob for the registry at `base`.
    pub fn connections_for(&self, base: &Url) -> usize {
        let loopback = base.host_str().is_some_and(is_loopback);
        self.parallel
            .unwrap_or(if loopback { 1 } else { 16 })
            .max(1)
    }
}

/// `OLLAMA_MODELS` in images `kiln pack` builds, unless `--models-path` says otherwise.
pub const DEFAULT_MODELS_PATH: &str = "/models";

/// A blob in the cache, verified against its digest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobRef {
    /// `sha256:<hex>`.
    pub digest: String,
    pub media_type: String,
    pub size: u64,
    /// The verified file in the cache.
    pub path: PathBuf,
}

/// A model whose manifest and blobs are all in the cache.
#[derive(Clone, Debug)]
pub struct PulledModel {
    pub reference: ModelRef,
    /// The manifest bytes exactly as served (Ollama's model ID is their sha256).
    pub manifest: Vec<u8>,
    /// `sha256:<hex>` of `manifest`.
    pub manifest_digest: String,
    pub config: BlobRef,
    /// In manifest order.
    pub layers: Vec<BlobRef>,
}

impl PulledModel {
    /// Config and layers, each digest once.
    pub fn blobs(&self) -> impl Iterator<Item = &BlobRef> {
        std::iter::once(&self.config).chain(&self.layers)
    }
}

/// Everything that can go wrong in a pull, each with what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error("model {model:?} not found in {registry}{}", hint.as_ref().map(|h| format!("; see {h}")).unwrap_or_default())]
    NotFound {
        model: String,
        registry: String,
        hint: Option<String>,
    },
    #[error("{registry} refused access: {detail}")]
    Unauthorized { registry: String, detail: String },
    #[error("cannot pull {model:?}: {reason}")]
    Unsupported { model: String, reason: String },
    #[error("the manifest of {model:?} is not usable: {reason}")]
    InvalidManifest { model: String, reason: String },
    #[error(
        "blob from {registry} does not match its digest: expected {expected}, got {actual}; \
         the bad bytes were deleted, pull again (if it repeats, something between you and the registry alters data)"
    )]
    DigestMismatch {
        expected: String,
        actual: String,
        registry: String,
    },
    #[error("unexpected answer from {registry}: {detail}")]
    Protocol { registry: String, detail: String },
    #[error("{what}: {detail}; check the network and the registry address, then run again")]
    Network { what: String, detail: String },
    #[error("{what}: HTTP {status}{}", if body.is_empty() { String::new() } else { format!(" ({body})") })]
    Http {
        what: String,
        status: u16,
        body: String,
    },
    #[error("{what} ignored the Range header (HTTP 200 to a request for part of the blob)")]
    RangeIgnored { what: String },
    #[error("no data for {seconds}s while downloading {digest}")]
    Stalled { digest: String, seconds: f64 },
    #[error(
        "downloading {digest} failed {attempts} times in a row ({last}); run the same command again to resume"
    )]
    Exhausted {
        digest: String,
        attempts: u32,
        last: String,
    },
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error("{path}: {source}{}", io_hint(source))]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What to do about a local I/O error, when there is something to do.
fn io_hint(error: &std::io::Error) -> &'static str {
    match error.kind() {
        std::io::ErrorKind::StorageFull => {
            "; free some space or pass --cache-dir DIR on a larger disk (progress is kept)"
        }
        std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem => {
            "; pass --cache-dir DIR somewhere writable"
        }
        _ => "",
    }
}

impl PullError {
    /// Worth retrying: the network, a stall, or the server's temporary trouble.
    pub fn is_transient(&self) -> bool {
        match self {
            PullError::Network { .. } | PullError::Stalled { .. } => true,
            PullError::Http { status, .. } => *status == 408 || *status == 429 || *status >= 500,
            _ => false,
        }
    }
}

pub(crate) use crate::registry::describe;

/// The registry base URL a model is fetched from.
pub fn registry_base(model: &ModelRef, options: &PullOptions) -> Result<Url, PullError> {
    if let Some(url) = &options.source_registry {
        return Ok(url.clone());
    }
    let scheme = if is_plain_http(&model.host, &options.insecure_registries) {
        "http"
    } else {
        "https"
    };
    Url::parse(&format!("{scheme}://{}", model.host)).map_err(|e| PullError::Protocol {
        registry: model.host.clone(),
        detail: format!("{} is not a usable host: {e}", model.host),
    })
}

/// The credential for the registry at `base`: the given user name and
/// password, else what the credential sources hold for that host.
async fn credential_for_pull(base: &Url, options: &PullOptions) -> Result<Credential, PullError> {
    if let Some(c) = &options.credentials {
        return Ok(Credential::Basic {
            username: c.username.clone(),
            password: c.password.clone(),
        });
    }
    let Some(sources) = &options.credential_sources else {
        return Ok(Credential::Anonymous);
    };
    let host = match (base.host_str(), base.port()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_string(),
        _ => return Ok(Credential::Anonymous),
    };
    crate::credentials::credential_for(&host, sources, false)
        .await
        .map_err(|e| PullError::Unauthorized {
            registry: host,
            detail: e.to_string(),
        })
}

/// Pulls the models into the cache: all manifests first (so a typo fails
/// before gigabytes move), then each distinct blob once.
pub async fn pull_models(
    options: &PullOptions,
    models: &[ModelRef],
) -> Result<Vec<PulledModel>, PullError> {
    let cache = Cache::new(&options.cache_dir);
    let progress = Progress::new(options.progress);
    let mut clients: HashMap<Url, OllamaRegistry> = HashMap::new();
    let mut plans = Vec::new();
    for model in models {
        if model.is_cloud_tag() {
            return Err(manifest::cloud_or_weightless(model));
        }
        let base = registry_base(model, options)?;
        let client = match clients.get(&base) {
            Some(c) => c.clone(),
            None => {
                let credential = credential_for_pull(&base, options).await?;
                let c = OllamaRegistry::new(base.clone(), credential, options.connect_timeout)?;
                clients.insert(base, c.clone());
                c
            }
        };
        let local = match &options.from_ollama_dir {
            Some(dir) => local::read_manifest(dir, model)?,
            None => None,
        };
        let bytes = match local {
            Some(bytes) => bytes,
            None => fetch_manifest(&client, model, options).await?,
        };
        let parsed = manifest::parse_manifest(model, &bytes)?;
        plans.push((model.clone(), client, bytes, parsed));
    }

    let fetcher = blobs::BlobFetcher {
        cache: &cache,
        options,
        progress: &progress,
    };
    // What the total bar counts: each distinct blob not yet in the cache.
    let mut seen = std::collections::HashSet::new();
    let missing: u64 = plans
        .iter()
        .flat_map(|(_, _, _, parsed)| std::iter::once(&parsed.config).chain(&parsed.layers))
        .filter(|blob| seen.insert(blob.digest.as_str()))
        .filter(|blob| {
            cache
                .lookup(&blob.digest, blob.size)
                .ok()
                .flatten()
                .is_none()
        })
        .map(|blob| blob.size)
        .sum();
    progress.add_total(missing);
    // Configs first: they say which models are cloud models with no weights,
    // so those are refused before any weights move.
    let mut configs = Vec::new();
    for (model, client, _, parsed) in &plans {
        let config = fetcher.fetch(client, model, &parsed.config, None).await?;
        let config_bytes = std::fs::read(&config.path).map_err(|source| PullError::Io {
            path: config.path.clone(),
            source,
        })?;
        manifest::check_config(model, &config_bytes)?;
        configs.push(config);
    }
    // Every distinct layer once; a few at a time when there are tensors (a
    // safetensors model has hundreds, some shared between models or within one).
    let streams = if plans.iter().any(|(_, _, _, parsed)| {
        parsed
            .layers
            .iter()
            .any(|l| l.media_type == manifest::OLLAMA_TENSOR)
    }) {
        options.blob_streams.max(1)
    } else {
        1
    };
    let framings = layer_framings(&cache, &plans, options)?;
    let mut seen = std::collections::HashSet::new();
    let jobs: Vec<_> = plans
        .iter()
        .flat_map(|(model, client, _, parsed)| {
            parsed.layers.iter().map(move |l| (model, client, l))
        })
        .filter(|(_, _, layer)| seen.insert(layer.digest.as_str()))
        .map(|(model, client, layer)| {
            let framing = framings.get(&layer.digest);
            fetcher.fetch(client, model, layer, framing)
        })
        .collect();
    let fetched: HashMap<String, BlobRef> = futures_util::stream::iter(jobs)
        .buffer_unordered(streams)
        .map_ok(|blob| (blob.digest.clone(), blob))
        .try_collect()
        .await?;
    let mut pulled = Vec::new();
    for ((model, _, bytes, parsed), config) in plans.iter().zip(configs) {
        let layers = parsed
            .layers
            .iter()
            .map(|layer| BlobRef {
                media_type: layer.media_type.clone(),
                ..fetched[&layer.digest].clone()
            })
            .collect();
        pulled.push(PulledModel {
            reference: model.clone(),
            manifest: bytes.clone(),
            manifest_digest: format!(
                "sha256:{}",
                hex::encode(<sha2::Sha256 as sha2::Digest>::digest(bytes))
            ),
            config,
            layers,
        });
    }
    progress.finish();
    Ok(pulled)
}

/// The tar framing of each blob that `kiln pack` will give a layer of its
/// own (the same plan pack makes from the same manifests).
fn layer_framings(
    cache: &Cache,
    plans: &[(ModelRef, OllamaRegistry, Vec<u8>, manifest::Manifest)],
    options: &PullOptions,
) -> Result<HashMap<String, TarFraming>, PullError> {
    let Some(models_path) = &options.layer_models_path else {
        return Ok(HashMap::new());
    };
    let blobs = plans.iter().flat_map(|(_, _, _, parsed)| {
        std::iter::once(&parsed.config)
            .chain(&parsed.layers)
            .map(|b| PlannedBlob {
                digest: &b.digest,
                media_type: &b.media_type,
                size: b.size,
            })
    });
    let mut framings = HashMap::new();
    for digest in LayerPlan::new(blobs).own {
        let Some(size) = plans
            .iter()
            .flat_map(|(_, _, _, parsed)| std::iter::once(&parsed.config).chain(&parsed.layers))
            .find(|l| l.digest == digest)
            .map(|l| l.size)
        else {
            continue;
        };
        let path = cache.blob_path(&digest)?;
        let framing = own_layer(models_path, &digest, size, &path, String::new())
            .ok()
            .and_then(|spec| TarFraming::of(&spec).ok().flatten());
        if let Some(framing) = framing {
            framings.insert(digest, framing);
        }
    }
    Ok(framings)
}

const MANIFEST_LIMIT: usize = 4 << 20;

/// GETs the manifest with Ollama's exact `Accept` header and keeps the bytes
/// as served; transient failures are retried.
pub async fn fetch_manifest(
    client: &OllamaRegistry,
    model: &ModelRef,
    options: &PullOptions,
) -> Result<Vec<u8>, PullError> {
    let mut failures = 0;
    loop {
        match fetch_manifest_once(client, model).await {
            Err(e) if e.is_transient() && failures < options.max_retries.min(3) => {
                failures += 1;
                tokio::time::sleep(options.retry_base_delay.saturating_mul(1 << failures)).await;
            }
            other => return other,
        }
    }
}

async fn fetch_manifest_once(
    client: &OllamaRegistry,
    model: &ModelRef,
) -> Result<Vec<u8>, PullError> {
    let url = client.manifest_url(&model.repository(), &model.tag)?;
    let (mut response, final_url) = client
        .get(url, &model.repository(), Some(MANIFEST_ACCEPT), None)
        .await?;
    let what = format!("GET {}", redact(&final_url));
    match response.status() {
        StatusCode::OK => {}
        StatusCode::NOT_FOUND => {
            return Err(PullError::NotFound {
                model: model.short(),
                registry: client.display_host(),
                hint: model.tags_page(),
            });
        }
        status @ (StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) => {
            return Err(PullError::Unauthorized {
                registry: client.display_host(),
                detail: format!(
                    "HTTP {status} for {}; check KILN_REGISTRY_USERNAME/KILN_REGISTRY_PASSWORD",
                    model.short()
                ),
            });
        }
        status => {
            let body = response.text().await.unwrap_or_default();
            return Err(PullError::Http {
                what,
                status: status.as_u16(),
                body: body
                    .lines()
                    .next()
                    .unwrap_or("")
                    .chars()
                    .take(200)
                    .collect(),
            });
        }
    }
    let mut bytes = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| PullError::Network {
        what: what.clone(),
        detail: describe(&e),
    })? {
        if bytes.len() + chunk.len() > MANIFEST_LIMIT {
            return Err(PullError::InvalidManifest {
                model: model.short(),
                reason: format!("it is larger than {MANIFEST_LIMIT} bytes"),
            });
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn many_connections_for_remote_registries_one_for_loopback_unless_asked() {
        let mut options = PullOptions::new("/tmp/unused");
        let url = |s: &str| Url::parse(s).unwrap();
        assert_eq!(
            options.connections_for(&url("https://registry.ollama.ai")),
            16
        );
        assert_eq!(options.connections_for(&url("http://127.0.0.1:5000")), 1);
        assert_eq!(options.connections_for(&url("http://[::1]:5000")), 1);
        options.parallel = Some(8);
        assert_eq!(options.connections_for(&url("http://127.0.0.1:5000")), 8);
    }

    #[test]
    fn models_are_fetched_from_their_own_host_unless_a_source_registry_is_given() {
        let mut options = PullOptions::new("/tmp/unused");
        let base = |name: &str, options: &PullOptions| {
            registry_base(&ModelRef::parse(name).unwrap(), options)
                .unwrap()
                .to_string()
        };
        assert_eq!(base("gemma3:4b", &options), "https://registry.ollama.ai/");
        assert_eq!(
            base(
                "hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M",
                &options
            ),
            "https://hf.co/"
        );
        assert_eq!(
            base("127.0.0.1:5000/library/gemma3:4b", &options),
            "http://127.0.0.1:5000/"
        );
        options.source_registry = Some(Url::parse("http://127.0.0.1:5001").unwrap());
        assert_eq!(base("gemma3:4b", &options), "http://127.0.0.1:5001/");
    }

    #[test]
    fn not_found_names_the_model_registry_and_tags_page() {
        let model = ModelRef::parse("gemma3:5b").unwrap();
        let err = PullError::NotFound {
            model: model.short(),
            registry: model.host.clone(),
            hint: model.tags_page(),
        };
        assert_eq!(
            err.to_string(),
            r#"model "gemma3:5b" not found in registry.ollama.ai; see https://ollama.com/library/gemma3/tags"#
        );
    }
}

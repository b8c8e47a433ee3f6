//! `kiln pack`: pull models → read the base → build layers → new config and
//! OCI manifest → one sink (registry, OCI layout, docker archive).

pub mod base;
pub mod cli;
pub mod layer_plan;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;

use crate::credentials::{AuthOptions, credential_for};
use crate::image::config::{AddedLayer, ConfigEdit, edit_config};
use crate::image::{self, Descriptor, ImageRef, Manifest, Platform};
use crate::layers::{Compression, Layer, LayerCache};
use crate::model_ref::ModelRef;
use crate::pull::{PullOptions, PulledModel, pull_models};
use crate::registry::RegistryClient;
use crate::sinks::{
    self, Blob, BlobSource, BuiltImage, PushOptions, PushReport, RegistrySink, Sink,
};
use base::BaseImage;

pub use layer_plan::ProxyFiles;

/// Where Ollama listens inside the image behind the proxy (loopback only: the
/// proxy is the only way in), and without the proxy (Cloud Run's port).
const OLLAMA_BEHIND_PROXY: &str = "127.0.0.1:11434";
const OLLAMA_DIRECT: &str = "0.0.0.0:8080";
const PORT: &str = "8080/tcp";

#[derive(Debug, thiserror::Error)]
pub enum PackError {
    #[error(transparent)]
    Pull(#[from] crate::pull::PullError),
    #[error(transparent)]
    Base(#[from] base::BaseError),
    #[error(transparent)]
    Auth(#[from] crate::credentials::AuthError),
    #[error(transparent)]
    Registry(#[from] crate::registry::RegistryError),
    #[error(transparent)]
    Layer(#[from] crate::layers::LayerError),
    #[error(transparent)]
    Image(#[from] image::ImageError),
    #[error(transparent)]
    Push(#[from] sinks::registry::PushError),
    #[error(transparent)]
    Sink(#[from] sinks::SinkError),
}

/// Where the image goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    Push(ImageRef),
    /// An OCI layout directory and the tag recorded in its `index.json`.
    Oci {
        dir: PathBuf,
        tag: String,
    },
    /// A `docker load`-able tar and the name:tag it carries (default from the first model).
    DockerArchive {
        path: PathBuf,
        repo_tag: Option<String>,
    },
}

/// Everything `kiln pack` needs, as plain data.
#[derive(Clone, Debug)]
pub struct PackOptions {
    pub models: Vec<ModelRef>,
    pub pull: PullOptions,
    pub base: ImageRef,
    pub platform: Platform,
    pub proxy: Option<ProxyFiles>,
    pub output: Output,
    /// `OLLAMA_MODELS` inside the image.
    pub models_path: String,
    pub insecure_registries: Vec<String>,
    pub auth: AuthOptions,
    pub push: PushOptions,
    /// How kiln's own layers are stored (base layers are kept as they are).
    pub compression: Compression,
    /// Status lines on stderr.
    pub progress: bool,
}

/// What was built.
#[derive(Clone, Debug)]
pub struct PackOutcome {
    pub manifest_digest: String,
    /// `REF@sha256:…` after a push.
    pub pushed: Option<String>,
    pub push_report: Option<PushReport>,
    /// Digests of the layers kiln added, in order.
    pub added_layers: Vec<String>,
}

pub async fn pack(opts: &PackOptions) -> Result<PackOutcome, PackError> {
    let say = |msg: String| {
        if opts.progress {
            eprintln!("{msg}");
        }
    };
    // The base first: a typo in --base or --platform fails in a second, not
    // after gigabytes of weights.
    say(format!(
        "reading base image {} ({})",
        opts.base, opts.platform
    ));
    if opts.platform != Platform::linux_amd64() {
        say(format!(
            "note: Cloud Run runs linux/amd64 only; this {} image will not run there",
            opts.platform
        ));
    }
    // --username/--password-stdin belong to the push target, and so to a base
    // image on that same registry.
    let base_is_on_target =
        matches!(&opts.output, Output::Push(t) if t.registry == opts.base.registry);
    let base_client = Arc::new(client_for(&opts.base, opts, base_is_on_target).await?);
    let base = base::resolve(&opts.base, &opts.platform, base_client).await?;
    // Likewise the output (a 401 here beats one after the build).
    let mut sink = match &opts.output {
        Output::Push(target) => {
            let client = Arc::new(client_for(target, opts, true).await?);
            Sink::Registry(RegistrySink::prepare(client, target.clone(), opts.push.clone()).await?)
        }
        Output::Oci { dir, tag } => Sink::OciLayout {
            dir: dir.clone(),
            tag: tag.clone(),
        },
        Output::DockerArchive { path, repo_tag } => Sink::DockerArchive {
            path: path.clone(),
            repo_tag: repo_tag
                .clone()
                .unwrap_or_else(|| default_repo_tag(&opts.models)),
        },
    };
    // The base layers do not depend on the models: a registry sink starts
    // copying them now, so a first push to another registry overlaps the base
    // copy with the pull. A failed pull drops (and so aborts) that copy.
    sink.start(base_blobs(&base));

    // The pull hashes each weights layer (as this image lays it out) while it
    // downloads the blob, so the layers below are found in the digest cache.
    let mut pull = opts.pull.clone();
    pull.layer_models_path =
        (opts.compression == Compression::None).then(|| opts.models_path.clone());
    let models = pull_models(&pull, &opts.models).await?;

    let cache = LayerCache::new(Some(opts.pull.cache_dir.clone()));
    let mut specs = layer_plan::model_layers(&models, &opts.models_path)?;
    if let Some(proxy) = &opts.proxy {
        specs.push(layer_plan::proxy_layer(proxy)?);
    }
    let mut added = Vec::with_capacity(specs.len());
    for spec in specs {
        say(format!(
            "layer: {} ({} files)",
            spec.description,
            spec.file_count()
        ));
        added.push(Arc::new(
            Layer::build(spec, &cache, opts.compression).await?,
        ));
    }

    let image = assemble(&base, &models, &added, opts)?;
    let added_layers = added.iter().map(|l| l.digest.clone()).collect();
    let mut outcome = PackOutcome {
        manifest_digest: image.manifest_digest.clone(),
        pushed: None,
        push_report: None,
        added_layers,
    };
    say(sink.describe());
    if let Some(report) = sink.finish(&image).await?
        && let Output::Push(target) = &opts.output
    {
        outcome.pushed = Some(target.with_digest(&report.digest).to_string());
        outcome.push_report = Some(report);
    }
    Ok(outcome)
}

async fn client_for(
    reference: &ImageRef,
    opts: &PackOptions,
    target: bool,
) -> Result<RegistryClient, PackError> {
    let credential = credential_for(&reference.registry, &opts.auth, target).await?;
    let plain = image::reference::is_plain_http(&reference.registry, &opts.insecure_registries);
    Ok(RegistryClient::new(
        reference.api_host(),
        plain,
        credential,
    )?)
}

/// The base's layers, read from the base's registry when a sink needs them.
fn base_blobs(base: &BaseImage) -> Vec<Blob> {
    base.layers
        .iter()
        .map(|d| Blob {
            descriptor: d.clone(),
            source: BlobSource::Remote {
                client: base.client.clone(),
                registry: base.reference.registry.clone(),
                repo: base.reference.repository.clone(),
            },
        })
        .collect()
}

/// The new config and manifest over the base's layers and kiln's.
fn assemble(
    base: &BaseImage,
    models: &[PulledModel],
    added: &[Arc<Layer>],
    opts: &PackOptions,
) -> Result<BuiltImage, PackError> {
    let base_config: serde_json::Value = serde_json::from_slice(&base.config).unwrap_or_default();
    // Fixed, input-derived time: the same inputs give the same digest.
    let created = base_config
        .get("created")
        .and_then(|c| c.as_str())
        .unwrap_or("1970-01-01T00:00:00Z")
        .to_string();

    let mut env = vec![
        ("OLLAMA_MODELS".to_string(), opts.models_path.clone()),
        ("OLLAMA_KEEP_ALIVE".into(), "-1".into()),
        ("OLLAMA_NOPRUNE".into(), "1".into()),
        ("OLLAMA_NO_CLOUD".into(), "1".into()),
    ];
    let (entrypoint, cmd) = match &opts.proxy {
        Some(proxy) => {
            env.push(("OLLAMA_HOST".into(), OLLAMA_BEHIND_PROXY.into()));
            let mut entry = vec![layer_plan::PROXY_BIN.to_string(), "--spawn-ollama".into()];
            // The base's entrypoint is the Ollama binary (`/bin/ollama`): tell
            // the proxy where it is rather than rely on PATH.
            if let Some(ollama) = base_config
                .pointer("/config/Entrypoint/0")
                .and_then(|v| v.as_str())
            {
                entry.extend(["--ollama-command".to_string(), ollama.to_string()]);
            }
            if proxy.config.is_some() {
                env.push(("KILN_CONFIG".into(), layer_plan::PROXY_CONFIG.into()));
            }
            // The image preloads what it bakes. An environment variable rather
            // than flags, so a deploy (`kiln deploy render --preload`) can
            // override it; it also overrides the config file's list.
            let preload: Vec<String> = models.iter().map(|m| m.reference.short()).collect();
            env.push(("KILN_OLLAMA_PRELOAD".into(), preload.join(",")));
            (Some(entry), Some(Vec::new()))
        }
        None => {
            env.push(("OLLAMA_HOST".into(), OLLAMA_DIRECT.into()));
            (None, None)
        }
    };
    let model_list: Vec<serde_json::Value> = models
        .iter()
        .map(|m| serde_json::json!({"name": m.reference.to_string(), "digest": m.manifest_digest}))
        .collect();
    let labels = BTreeMap::from([
        (
            image::MODELS_LABEL.to_string(),
            serde_json::Value::Array(model_list).to_string(),
        ),
        (
            image::MODELS_PATH_LABEL.to_string(),
            opts.models_path.clone(),
        ),
        (
            "org.opencontainers.image.base.name".to_string(),
            opts.base.to_string(),
        ),
        (
            "org.opencontainers.image.base.digest".to_string(),
            base.manifest_digest.clone(),
        ),
    ]);
    let edit = ConfigEdit {
        env,
        entrypoint,
        cmd,
        exposed_ports: vec![PORT.to_string()],
        labels,
        layers: added
            .iter()
            .map(|l| AddedLayer {
                diff_id: l.diff_id.clone(),
                created_by: format!("kiln pack: {}", l.spec.description),
            })
            .collect(),
        created,
    };
    let config_bytes = Bytes::from(edit_config(&base.config, &edit)?);
    let config_desc = Descriptor::new(
        image::OCI_CONFIG,
        &image::sha256_digest(&config_bytes),
        config_bytes.len() as u64,
    );

    let mut layers = base_blobs(base);
    for layer in added {
        let mut descriptor =
            Descriptor::new(layer.compression.media_type(), &layer.digest, layer.size);
        descriptor.annotations = Some(BTreeMap::from([(
            image::LAYER_CONTENT_ANNOTATION.to_string(),
            layer.spec.description.clone(),
        )]));
        layers.push(Blob {
            descriptor,
            source: BlobSource::Local(layer.clone()),
        });
    }
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(image::OCI_MANIFEST.to_string()),
        config: config_desc.clone(),
        layers: layers.iter().map(|b| b.descriptor.clone()).collect(),
        annotations: Some(BTreeMap::from([
            (
                "org.opencontainers.image.base.name".to_string(),
                opts.base.to_string(),
            ),
            (
                "org.opencontainers.image.base.digest".to_string(),
                base.manifest_digest.clone(),
            ),
        ])),
    };
    let manifest_bytes = Bytes::from(manifest.to_bytes());
    Ok(BuiltImage {
        manifest_digest: image::sha256_digest(&manifest_bytes),
        manifest: manifest_bytes,
        manifest_media_type: image::OCI_MANIFEST.to_string(),
        layers,
        config: Blob {
            descriptor: config_desc,
            source: BlobSource::Bytes(config_bytes),
        },
    })
}

/// `kiln/gemma3:4b` for a docker archive without an explicit name.
fn default_repo_tag(models: &[ModelRef]) -> String {
    match models.first() {
        Some(m) => format!("kiln/{}:{}", m.model, m.tag),
        None => "kiln/image:latest".into(),
    }
}

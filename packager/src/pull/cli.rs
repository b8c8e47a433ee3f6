//! The `kiln pull` command line: flags to [`PullOptions`], then pull and
//! optionally lay out an `OLLAMA_MODELS` directory.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use reqwest::Url;

use super::{Credentials, PullOptions, pull_models};
use crate::blob_cache::Cache;
use crate::credentials::AuthOptions;
use crate::model_ref::ModelRef;
use crate::models_dir::write_models_dir;
use crate::progress::ProgressMode;

const ABOUT: &str = "\
Models are named as in Ollama: gemma3:4b is registry.ollama.ai/library/gemma3:4b;
user/model:tag and HOST[:PORT]/NAMESPACE/MODEL:TAG work too; the tag defaults to latest.

Blobs are downloaded in parallel ranged parts, verified against their sha256
digests, and kept in a shared content-addressed cache. An interrupted pull
resumes where it stopped when run again. Registries that ask for credentials
get KILN_REGISTRY_USERNAME and KILN_REGISTRY_PASSWORD, else what `docker login`
stored (config, credential helpers), else gcloud's token for Google registries;
credentials are never sent to the CDN a registry redirects to. GGUF and
safetensors models and hf.co/USER/REPO:QUANT references are pulled alike.

Examples:
  kiln pull gemma3:4b --models-dir ./models
      then: OLLAMA_MODELS=./models ollama serve
  kiln pull gemma3:4b --source-registry http://127.0.0.1:5000 --models-dir ./models
      a mirror; the tree still says registry.ollama.ai/library/gemma3/4b
  kiln pull gemma3:4b --from-ollama-dir ~/.ollama/models
      reuse what a local Ollama already downloaded";

/// `kiln pull` flags.
#[derive(clap::Args, Debug)]
#[command(after_long_help = ABOUT)]
pub struct PullArgs {
    /// Models to pull, e.g. gemma3:4b.
    #[arg(required = true, value_name = "MODEL", value_parser = parse_model)]
    pub models: Vec<ModelRef>,

    /// Write an exact OLLAMA_MODELS tree here (manifests/, blobs/); models share blobs.
    #[arg(long, value_name = "DIR")]
    pub models_dir: Option<PathBuf>,

    /// Fetch from this registry (a mirror) while keeping each model's canonical name and path.
    #[arg(long, value_name = "URL", value_parser = parse_url)]
    pub source_registry: Option<Url>,

    /// Blob cache [default: $XDG_CACHE_HOME/kiln, else ~/.cache/kiln].
    #[arg(long, value_name = "DIR", env = "KILN_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,

    /// Reuse models from a local Ollama store (e.g. ~/.ollama/models); blobs are verified while copied.
    #[arg(long, value_name = "DIR")]
    pub from_ollama_dir: Option<PathBuf>,

    /// Use plain HTTP for this registry host (loopback hosts always use it).
    #[arg(long, value_name = "HOST[:PORT]")]
    pub insecure_registry: Vec<String>,

    /// Concurrent connections per large blob [default: 16, or 1 for a loopback registry].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=64))]
    pub parallel: Option<u16>,

    /// Bytes per ranged request [default: about 4 parts per connection, 8 MiB to 256 MiB].
    #[arg(long, value_name = "BYTES", value_parser = clap::value_parser!(u64).range(65536..))]
    pub part_size: Option<u64>,

    /// Failed attempts in a row before a download gives up (progress is kept for the next run).
    #[arg(long, value_name = "N", default_value_t = 6)]
    pub retries: u32,

    /// Restart a connection that delivers nothing for this many seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    pub stall_timeout: u64,

    /// How to show progress.
    #[arg(long, value_enum, default_value_t = ProgressMode::Auto)]
    pub progress: ProgressMode,
}

fn parse_model(s: &str) -> Result<ModelRef, String> {
    ModelRef::parse(s).map_err(|e| e.to_string())
}

fn parse_url(s: &str) -> Result<Url, String> {
    let url = Url::parse(s)
        .map_err(|e| format!("{s:?} is not a URL ({e}); e.g. http://127.0.0.1:5000"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(format!(
            "{s:?}: expected http://HOST[:PORT] or https://HOST[:PORT]"
        ));
    }
    Ok(url)
}

impl PullArgs {
    /// The library options these flags ask for.
    pub fn options(&self) -> anyhow::Result<PullOptions> {
        let cache_dir = match &self.cache_dir {
            Some(dir) => dir.clone(),
            None => Cache::default_dir()?,
        };
        let mut options = PullOptions::new(cache_dir);
        options.source_registry = self.source_registry.clone();
        options.insecure_registries = self.insecure_registry.clone();
        options.credentials = credentials_from_env();
        options.credential_sources = Some(AuthOptions::from_environment());
        options.parallel = self.parallel.map(usize::from);
        options.part_size = self.part_size;
        options.max_retries = self.retries;
        options.stall_timeout = Duration::from_secs(self.stall_timeout.max(1));
        options.progress = self.progress;
        options.from_ollama_dir = self.from_ollama_dir.clone();
        Ok(options)
    }
}

/// `KILN_REGISTRY_USERNAME` / `KILN_REGISTRY_PASSWORD`, when both are set.
pub fn credentials_from_env() -> Option<Credentials> {
    let username = std::env::var("KILN_REGISTRY_USERNAME")
        .ok()
        .filter(|v| !v.is_empty())?;
    let password = std::env::var("KILN_REGISTRY_PASSWORD").ok()?;
    Some(Credentials { username, password })
}

/// Runs `kiln pull`.
pub async fn run(args: &PullArgs) -> anyhow::Result<()> {
    let options = args.options()?;
    let pulled = pull_models(&options, &args.models).await?;
    if let Some(dir) = &args.models_dir {
        write_models_dir(dir, &pulled)
            .with_context(|| format!("writing the models directory {}", dir.display()))?;
    }
    for model in &pulled {
        let size: u64 = model.blobs().map(|b| b.size).sum();
        let id = model.manifest_digest.trim_start_matches("sha256:");
        let place = match &args.models_dir {
            Some(dir) => format!("in {}", dir.display()),
            None => format!("cached in {}", options.cache_dir.display()),
        };
        crate::stdout::print(format_args!(
            "{}  id {}  {}  {place}\n",
            model.reference.short(),
            &id[..12.min(id.len())],
            indicatif::HumanBytes(size)
        ))?;
    }
    Ok(())
}

//! The `kiln pack` command line: flags to [`PackOptions`], then pack.

use std::io::BufRead as _;
use std::path::PathBuf;

use anyhow::Context as _;
use reqwest::Url;

use super::{Output, PackOptions, ProxyFiles, pack};
use crate::blob_cache::Cache;
use crate::credentials::AuthOptions;
use crate::image::{ImageRef, Platform};
use crate::layers::Compression;
use crate::model_ref::ModelRef;
use crate::progress::ProgressMode;
use crate::pull::PullOptions;
use crate::pull::cli::credentials_from_env;
use crate::sinks::PushOptions;

/// Bake Ollama models into a runnable image, without Docker
///
/// Pulls the models (as `kiln pull` does), reads the base image for the
/// platform, adds deterministic layers (one per weights blob, one with
/// manifests and small blobs, and with --proxy-bin one with kiln-proxy,
/// plugins and its config; uncompressed unless --compression gzip), and
/// writes or pushes the result. Packing the same inputs twice gives the same
/// digest, and a push sends only what the registry does not already have
/// (layer digests are cached, so an unchanged model is not even re-read).
///
/// Examples:
///
///   kiln pack gemma3:4b --push europe-west1-docker.pkg.dev/PROJECT/REPO/ollama-gemma:4b
///
///   kiln pack gemma3:4b gemma3:1b --proxy-bin target/release/kiln-proxy \
///       --plugin api_key.wasm --proxy-config proxy.toml --push REGISTRY/IMAGE:TAG
///
///   kiln pack gemma3:4b --output oci:./kiln-out        # skopeo copy oci:./kiln-out:latest …
///
///   kiln pack gemma3:4b --output docker-archive:gemma.tar  # docker load -i gemma.tar
///
/// Credentials come from --username/--password-stdin, ~/.docker/config.json
/// (auths, credHelpers), or for *-docker.pkg.dev from gcloud or the metadata
/// server. Inside the image, OLLAMA_MODELS=--models-path; Ollama listens on
/// 0.0.0.0:8080, or on 127.0.0.1:11434 behind kiln-proxy (which then is the
/// entrypoint and listens on $PORT). `kiln inspect IMAGE_REF` shows the result.
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct PackArgs {
    /// Models to bake in, e.g. gemma3:4b (several share blobs).
    #[arg(required = true, value_name = "MODEL", value_parser = parse_model)]
    pub models: Vec<ModelRef>,

    /// Base image, read for --platform.
    #[arg(long, value_name = "IMAGE", default_value = "ollama/ollama:latest", value_parser = parse_image)]
    pub base: ImageRef,

    /// Push the image here (any OCI registry), printing IMAGE_REF@sha256:… on success.
    #[arg(long, value_name = "IMAGE_REF", value_parser = parse_image, conflicts_with = "output")]
    pub push: Option<ImageRef>,

    /// Write the image locally: oci:DIR[:TAG] or docker-archive:FILE.tar[:NAME:TAG] [default: oci:./kiln-out].
    #[arg(long, value_name = "oci:DIR | docker-archive:FILE.tar", value_parser = parse_output)]
    pub output: Option<Output>,

    /// Platform to take from a multi-platform base (Cloud Run runs linux/amd64 only).
    #[arg(long, value_name = "OS/ARCH", default_value = "linux/amd64", value_parser = parse_platform)]
    pub platform: Platform,

    /// kiln-proxy binary to put in front of Ollama (it becomes the entrypoint).
    #[arg(long, value_name = "PATH")]
    pub proxy_bin: Option<PathBuf>,

    /// A wasm plugin for kiln-proxy, placed at /plugins/<file name> (repeatable; needs --proxy-bin).
    #[arg(long, value_name = "FILE.wasm", requires = "proxy_bin")]
    pub plugin: Vec<PathBuf>,

    /// kiln-proxy config (TOML), placed at /etc/kiln/proxy.toml (needs --proxy-bin).
    #[arg(long, value_name = "FILE", requires = "proxy_bin")]
    pub proxy_config: Option<PathBuf>,

    /// OLLAMA_MODELS inside the image.
    #[arg(long, value_name = "PATH", default_value = "/models", value_parser = parse_models_path)]
    pub models_path: String,

    /// Fetch models from this registry (a mirror) while keeping their canonical names.
    #[arg(long, value_name = "URL", value_parser = parse_url)]
    pub source_registry: Option<Url>,

    /// Blob and layer-digest cache [default: $XDG_CACHE_HOME/kiln, else ~/.cache/kiln].
    #[arg(long, value_name = "DIR", env = "KILN_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,

    /// Use plain HTTP for this registry host (loopback hosts always use it; repeatable).
    #[arg(long, value_name = "HOST[:PORT]")]
    pub insecure_registry: Vec<String>,

    /// User name for the --push registry (with --password-stdin).
    #[arg(long, value_name = "NAME", requires = "password_stdin")]
    pub username: Option<String>,

    /// Read the --push registry's password or token from stdin.
    #[arg(long, requires = "username")]
    pub password_stdin: bool,

    /// How kiln's layers are stored: uncompressed (fastest, default) or gzip
    /// (for runtimes that refuse uncompressed layers).
    #[arg(long, value_enum, default_value_t = Compression::None)]
    pub compression: Compression,

    /// Uploads in flight at once.
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=16))]
    pub parallel: u16,

    /// How to show download progress.
    #[arg(long, value_enum, default_value_t = ProgressMode::Auto)]
    pub progress: ProgressMode,
}

fn parse_model(s: &str) -> Result<ModelRef, String> {
    ModelRef::parse(s).map_err(|e| e.to_string())
}

fn parse_image(s: &str) -> Result<ImageRef, String> {
    ImageRef::parse(s).map_err(|e| e.to_string())
}

fn parse_platform(s: &str) -> Result<Platform, String> {
    Platform::parse(s).map_err(|e| e.to_string())
}

fn parse_url(s: &str) -> Result<Url, String> {
    match Url::parse(s) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.host_str().is_some() => Ok(url),
        _ => Err(format!(
            "{s:?}: expected http://HOST[:PORT] or https://HOST[:PORT]"
        )),
    }
}

fn parse_models_path(s: &str) -> Result<String, String> {
    let ok = s.starts_with('/') && s.len() > 1 && !s.split('/').any(|p| p == "..");
    if ok {
        Ok(s.trim_end_matches('/').to_string())
    } else {
        Err(format!("{s:?}: expected an absolute path such as /models"))
    }
}

/// `oci:DIR[:TAG]`, `docker-archive:FILE.tar[:NAME:TAG]`.
pub fn parse_output(s: &str) -> Result<Output, String> {
    if let Some(rest) = s.strip_prefix("oci:") {
        let (dir, tag) = crate::sinks::oci_layout::parse_spec(rest)?;
        return Ok(Output::Oci {
            dir,
            tag: tag.unwrap_or_else(|| "latest".into()),
        });
    }
    if let Some(rest) = s.strip_prefix("docker-archive:") {
        let (path, repo_tag) = match rest.split_once(':') {
            Some((path, name)) => {
                ImageRef::parse(name).map_err(|e| e.to_string())?;
                (path, Some(name.to_string()))
            }
            None => (rest, None),
        };
        if path.is_empty() {
            return Err(format!("{s:?}: expected docker-archive:FILE.tar"));
        }
        return Ok(Output::DockerArchive {
            path: PathBuf::from(path),
            repo_tag,
        });
    }
    Err(format!(
        "{s:?}: expected oci:DIR or docker-archive:FILE.tar (or use --push IMAGE_REF)"
    ))
}

impl PackArgs {
    /// The library options these flags ask for.
    pub fn options(&self) -> anyhow::Result<PackOptions> {
        let cache_dir = match &self.cache_dir {
            Some(dir) => dir.clone(),
            None => Cache::default_dir()?,
        };
        let mut pull = PullOptions::new(cache_dir);
        pull.source_registry = self.source_registry.clone();
        pull.insecure_registries = self.insecure_registry.clone();
        pull.credentials = credentials_from_env();
        pull.credential_sources = Some(AuthOptions::from_environment());
        pull.progress = self.progress;
        let output = match (&self.push, &self.output) {
            (Some(target), _) => Output::Push(target.clone()),
            (None, Some(output)) => output.clone(),
            (None, None) => Output::Oci {
                dir: PathBuf::from("./kiln-out"),
                tag: "latest".into(),
            },
        };
        let mut auth = AuthOptions::from_environment();
        if let Some(username) = &self.username {
            let mut password = String::new();
            std::io::stdin()
                .lock()
                .read_line(&mut password)
                .context("reading the password from stdin")?;
            auth.explicit = Some((
                username.clone(),
                password.trim_end_matches(['\r', '\n']).to_string(),
            ));
        }
        let proxy = self.proxy_bin.as_ref().map(|bin| ProxyFiles {
            bin: bin.clone(),
            plugins: self.plugin.clone(),
            config: self.proxy_config.clone(),
        });
        Ok(PackOptions {
            models: self.models.clone(),
            pull,
            base: self.base.clone(),
            platform: self.platform.clone(),
            proxy,
            output,
            models_path: self.models_path.clone(),
            insecure_registries: self.insecure_registry.clone(),
            auth,
            push: PushOptions {
                parallel: usize::from(self.parallel),
                progress: !matches!(self.progress, ProgressMode::Quiet),
                ..PushOptions::default()
            },
            compression: self.compression,
            progress: !matches!(self.progress, ProgressMode::Quiet),
        })
    }
}

/// Runs `kiln pack`; prints `IMAGE_REF@sha256:…` (push) or the digest on stdout.
pub async fn run(args: &PackArgs) -> anyhow::Result<()> {
    let options = args.options()?;
    let outcome = pack(&options).await?;
    match (&outcome.pushed, &outcome.push_report) {
        (Some(reference), Some(report)) => {
            eprintln!(
                "pushed: {} uploaded ({}), {} mounted, {} already there",
                report.uploaded,
                crate::sinks::registry::human(report.uploaded_bytes),
                report.mounted,
                report.present
            );
            crate::stdout::print(format_args!("{reference}\n"))?;
        }
        _ => crate::stdout::print(format_args!("{}\n", outcome.manifest_digest))?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_specs() {
        assert_eq!(
            parse_output("oci:./kiln-out").unwrap(),
            Output::Oci {
                dir: "./kiln-out".into(),
                tag: "latest".into()
            }
        );
        assert_eq!(
            parse_output("oci:/tmp/x:v1").unwrap(),
            Output::Oci {
                dir: "/tmp/x".into(),
                tag: "v1".into()
            }
        );
        assert_eq!(
            parse_output("docker-archive:g.tar:kiln/gemma3:4b").unwrap(),
            Output::DockerArchive {
                path: "g.tar".into(),
                repo_tag: Some("kiln/gemma3:4b".into())
            }
        );
        assert_eq!(
            parse_output("docker-archive:g.tar").unwrap(),
            Output::DockerArchive {
                path: "g.tar".into(),
                repo_tag: None
            }
        );
        for bad in [
            "dir:/x",
            "oci:",
            "docker-archive:",
            "oci:/x:bad tag",
            "/tmp/x",
        ] {
            assert!(parse_output(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn models_path_must_be_absolute() {
        assert_eq!(parse_models_path("/models/").unwrap(), "/models");
        assert!(parse_models_path("models").is_err());
        assert!(parse_models_path("/a/../b").is_err());
        assert!(parse_models_path("/").is_err());
    }
}

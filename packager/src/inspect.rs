//! `kiln inspect IMAGE_REF`: what an image holds (platform, layers with size
//! and content, env, entrypoint, baked models), from a registry or an OCI
//! layout directory (`oci:DIR[:TAG]`).

use anyhow::Context as _;
use serde_json::Value;

use crate::credentials::{AuthOptions, credential_for};
use crate::image::remote::{self, RemoteError};
use crate::image::{self, ImageRef, Manifest, Platform};
use crate::registry::RegistryClient;
use crate::sinks::oci_layout;
use crate::sinks::registry::human;

/// Show what a (kiln-built) image holds: platform, layers, env, entrypoint, models.
///
/// IMAGE_REF is a registry reference (127.0.0.1:5000/kiln/gemma:4b,
/// REGION-docker.pkg.dev/P/R/IMAGE:TAG) or a local OCI layout (oci:DIR[:TAG]).
#[derive(clap::Args, Debug)]
pub struct InspectArgs {
    /// The image to inspect.
    #[arg(value_name = "IMAGE_REF")]
    pub image: String,
    /// Platform to show from a multi-platform image.
    #[arg(long, value_name = "OS/ARCH", default_value = "linux/amd64")]
    pub platform: String,
    /// Use plain HTTP for this registry host (loopback hosts always use it).
    #[arg(long, value_name = "HOST[:PORT]")]
    pub insecure_registry: Vec<String>,
    /// Print the manifest and config as JSON instead of a summary.
    #[arg(long)]
    pub json: bool,
}

/// A resolved image: manifest digest, manifest and config.
pub struct Inspected {
    pub name: String,
    pub digest: String,
    pub manifest: Manifest,
    pub config: Value,
}

pub async fn run(args: &InspectArgs) -> anyhow::Result<()> {
    let platform = Platform::parse(&args.platform)?;
    let inspected = match args.image.strip_prefix("oci:") {
        Some(layout) => read_layout(layout)?,
        None => read_registry(&args.image, &platform, &args.insecure_registry).await?,
    };
    if args.json {
        let out = serde_json::json!({"name": inspected.name, "digest": inspected.digest,
            "manifest": inspected.manifest, "config": inspected.config});
        crate::stdout::print(format_args!("{}\n", serde_json::to_string_pretty(&out)?))?;
    } else {
        crate::stdout::print(render(&inspected))?;
    }
    Ok(())
}

/// Reads an image from its registry, choosing `platform` from an index.
pub async fn read_registry(
    reference: &str,
    platform: &Platform,
    insecure: &[String],
) -> anyhow::Result<Inspected> {
    let reference = ImageRef::parse(reference)?;
    let credential =
        credential_for(&reference.registry, &AuthOptions::from_environment(), false).await?;
    let plain = image::reference::is_plain_http(&reference.registry, insecure);
    let client = RegistryClient::new(reference.api_host(), plain, credential)?;
    let image = remote::read(&client, &reference, platform)
        .await
        .map_err(|e| match e {
            RemoteError::NoPlatform { .. } => anyhow::anyhow!("{e}; pass --platform"),
            other => other.into(),
        })?;
    Ok(Inspected {
        name: reference.to_string(),
        digest: image.manifest_digest,
        manifest: image.manifest,
        config: serde_json::from_slice(&image.config).context("the image config is not JSON")?,
    })
}

/// Reads an image from an OCI layout: `DIR` or `DIR:TAG`.
pub fn read_layout(spec: &str) -> anyhow::Result<Inspected> {
    let (dir, tag) = oci_layout::parse_spec(spec).map_err(anyhow::Error::msg)?;
    let (digest, manifest, config) = oci_layout::read(&dir, tag.as_deref())?;
    Ok(Inspected {
        name: format!("oci:{spec}"),
        digest,
        manifest,
        config: serde_json::from_slice(&config).context("the image config is not JSON")?,
    })
}

/// The human summary.
pub fn render(i: &Inspected) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let c = &i.config;
    let s = |v: &Value| v.as_str().unwrap_or("").to_string();
    let _ = writeln!(out, "Image:      {}", i.name);
    let _ = writeln!(out, "Digest:     {}", i.digest);
    let _ = writeln!(out, "Platform:   {}/{}", s(&c["os"]), s(&c["architecture"]));
    let _ = writeln!(
        out,
        "Entrypoint: {}",
        c.pointer("/config/Entrypoint").unwrap_or(&Value::Null)
    );
    let _ = writeln!(
        out,
        "Cmd:        {}",
        c.pointer("/config/Cmd").unwrap_or(&Value::Null)
    );
    if let Some(ports) = c.pointer("/config/ExposedPorts").and_then(Value::as_object) {
        let _ = writeln!(
            out,
            "Ports:      {}",
            ports.keys().cloned().collect::<Vec<_>>().join(", ")
        );
    }
    let _ = writeln!(out, "Env:");
    for e in c
        .pointer("/config/Env")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let _ = writeln!(out, "  {}", s(e));
    }
    let labels = c.pointer("/config/Labels");
    let models = labels
        .and_then(|l| l.get(image::MODELS_LABEL))
        .and_then(Value::as_str);
    match models.and_then(|m| serde_json::from_str::<Vec<Value>>(m).ok()) {
        Some(models) => {
            let path = labels
                .and_then(|l| l.get(image::MODELS_PATH_LABEL))
                .map(s)
                .unwrap_or_default();
            let _ = writeln!(out, "Models (in {path}):");
            for m in models {
                let _ = writeln!(out, "  {}  {}", s(&m["name"]), s(&m["digest"]));
            }
        }
        None => {
            let _ = writeln!(out, "Models:     none (not built by kiln pack)");
        }
    }
    // History entries for empty layers (ENV, CMD…) have no layer.
    let history: Vec<String> = c["history"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|h| !h["empty_layer"].as_bool().unwrap_or(false))
        .map(|h| s(&h["created_by"]))
        .collect();
    let total: u64 = i.manifest.layers.iter().map(|l| l.size).sum();
    let _ = writeln!(
        out,
        "Layers ({}, {}):",
        i.manifest.layers.len(),
        human(total)
    );
    for (n, layer) in i.manifest.layers.iter().enumerate() {
        let kind = layer.media_type.rsplit('.').next().unwrap_or("");
        let what = layer
            .annotation(image::LAYER_CONTENT_ANNOTATION)
            .map(str::to_string)
            .or_else(|| history.get(n).map(|h| h.chars().take(80).collect()))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "  {:>2}  {}  {:>9}  {:<9} {}",
            n + 1,
            crate::sinks::registry::short(&layer.digest),
            human(layer.size),
            kind,
            what
        );
    }
    out
}

//! `kiln inspect IMAGE_REF`: what an image holds (platform, layers with size
//! and content, env, entrypoint, baked models), from a registry or an OCI
//! layout directory (`oci:DIR[:TAG]`).

use std::path::Path;

use anyhow::{Context as _, bail};
use serde_json::Value;

use crate::auth::{AuthOptions, credential_for};
use crate::image::{self, AnyManifest, ImageRef, Manifest, Platform};
use crate::registry::RegistryClient;
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
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print!("{}", render(&inspected));
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
    let repo = &reference.repository;
    let mut raw = client.get_manifest(repo, reference.reference()).await?;
    if let AnyManifest::Index(index) = raw.parse(&reference.to_string())? {
        let entry = index
            .manifests
            .iter()
            .find(|d| d.platform.as_ref().is_some_and(|p| platform.matches(p)))
            .with_context(|| format!("{reference} has no {platform} image; pass --platform"))?;
        raw = client.get_manifest(repo, &entry.digest).await?;
    }
    let AnyManifest::Image(manifest) = raw.parse(&reference.to_string())? else {
        bail!("{reference}: an index points at another index");
    };
    let config = client.get_blob_bytes(repo, &manifest.config.digest).await?;
    Ok(Inspected {
        name: reference.to_string(),
        digest: raw.digest,
        manifest,
        config: serde_json::from_slice(&config).context("the image config is not JSON")?,
    })
}

/// Reads an image from an OCI layout: `DIR` or `DIR:TAG`.
pub fn read_layout(spec: &str) -> anyhow::Result<Inspected> {
    let (dir, tag) = match spec.rsplit_once(':') {
        Some((d, t)) if !t.contains('/') && !d.is_empty() => (d, Some(t)),
        _ => (spec, None),
    };
    let dir = Path::new(dir);
    let read = |rel: &str| {
        std::fs::read(dir.join(rel)).with_context(|| format!("reading {}/{rel}", dir.display()))
    };
    let index: image::Index =
        serde_json::from_slice(&read("index.json")?).context("index.json is not an OCI index")?;
    let entry = index
        .manifests
        .iter()
        .find(|d| tag.is_none() || d.annotation("org.opencontainers.image.ref.name") == tag)
        .with_context(|| {
            format!(
                "{} has no image tagged {}",
                dir.display(),
                tag.unwrap_or("(any)")
            )
        })?;
    image::validate_digest(&entry.digest)?;
    let manifest: Manifest =
        serde_json::from_slice(&read(&format!("blobs/sha256/{}", entry.hex()))?)
            .context("the manifest is not an OCI image manifest")?;
    image::validate_digest(&manifest.config.digest)?;
    let config = read(&format!("blobs/sha256/{}", manifest.config.hex()))?;
    Ok(Inspected {
        name: format!("oci:{spec}"),
        digest: entry.digest.clone(),
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

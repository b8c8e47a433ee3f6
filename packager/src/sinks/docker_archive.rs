//! `--output docker-archive:FILE.tar`: the format `docker save` writes and
//! `docker load` reads (`manifest.json`, a config file, one file per layer).
//! Base layers stay compressed as served; `docker load` and skopeo detect
//! compression per layer. Written to a temporary file beside FILE and renamed
//! at the end, so a failure never leaves a partial archive.

use std::path::Path;

use serde_json::json;
use tokio::io::AsyncWriteExt as _;

use super::{Blob, BlobSource, BuiltImage, OutputError, copy_verified};
use crate::layers;

/// Writes `image` to `path`, naming it `repo_tag` (e.g. `kiln/gemma3:4b`).
pub async fn write(image: &BuiltImage, path: &Path, repo_tag: &str) -> Result<(), OutputError> {
    let io = |e: std::io::Error| OutputError::io(path, &e);
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(io)?;
    let tmp = tempfile::Builder::new()
        .prefix(".kiln-archive-")
        .tempfile_in(&parent)
        .map_err(io)?;
    let mut out = tokio::io::BufWriter::with_capacity(
        1 << 20,
        tokio::fs::File::from_std(tmp.reopen().map_err(io)?),
    );

    let mut layer_names = Vec::new();
    for blob in &image.layers {
        let name = format!("{}.tar", blob.descriptor.hex());
        if !layer_names.contains(&name) {
            append(&mut out, &name, blob, path).await?;
        }
        layer_names.push(name);
    }
    let config_name = format!("{}.json", image.config.descriptor.hex());
    append(&mut out, &config_name, &image.config, path).await?;
    let manifest =
        json!([{"Config": config_name, "RepoTags": [repo_tag], "Layers": layer_names}]).to_string();
    let manifest_blob = Blob {
        descriptor: crate::image::Descriptor::new(
            "application/json",
            &crate::image::sha256_digest(manifest.as_bytes()),
            manifest.len() as u64,
        ),
        source: BlobSource::Bytes(manifest.into()),
    };
    append(&mut out, "manifest.json", &manifest_blob, path).await?;
    out.write_all(&[0u8; 1024]).await.map_err(io)?;
    out.flush().await.map_err(io)?;
    out.into_inner().sync_all().await.map_err(io)?;
    tmp.persist(path).map_err(|e| io(e.error))?;
    Ok(())
}

async fn append(
    out: &mut (impl tokio::io::AsyncWrite + Unpin),
    name: &str,
    blob: &Blob,
    path: &Path,
) -> Result<(), OutputError> {
    let size = blob.descriptor.size;
    let header = layers::file_header(name, 0o644, size).map_err(|e| OutputError::other(path, e))?;
    out.write_all(&header)
        .await
        .map_err(|e| OutputError::io(path, &e))?;
    copy_verified(blob, out, path).await?;
    let pad = (size.next_multiple_of(512) - size) as usize;
    out.write_all(&vec![0u8; pad])
        .await
        .map_err(|e| OutputError::io(path, &e))?;
    Ok(())
}

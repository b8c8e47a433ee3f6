//! `oci:DIR[:TAG]`: an OCI image layout (`oci-layout`, `index.json`,
//! `blobs/sha256/…`), written by `kiln pack --output` and read by `kiln inspect`.
//! A layout is built in a temporary directory beside DIR and renamed into
//! place at the end, so a failure never leaves a partial layout. Blobs an
//! earlier layout at DIR already holds are hard-linked, not re-read.

use std::path::{Path, PathBuf};

use futures_util::StreamExt as _;
use serde_json::json;

use super::{BuiltImage, OutputError, copy_verified};

/// Blobs fetched or copied at once.
const PARALLEL: usize = 3;

/// `DIR[:TAG]`, what follows `oci:`. A trailing `:TAG` (no slash in it)
/// names the image in `index.json`; `None` when there is none.
pub fn parse_spec(spec: &str) -> Result<(PathBuf, Option<String>), String> {
    let (dir, tag) = match spec.rsplit_once(':') {
        Some((dir, tag)) if !tag.contains('/') && !dir.is_empty() => (dir, Some(tag)),
        _ => (spec, None),
    };
    let tag_ok = tag.is_none_or(|tag| {
        !tag.is_empty()
            && tag
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
    });
    if dir.is_empty() || !tag_ok {
        return Err(format!("\"oci:{spec}\": expected oci:DIR or oci:DIR:TAG"));
    }
    Ok((PathBuf::from(dir), tag.map(str::to_string)))
}

/// The image tagged `tag` (or the first one) of the layout at `dir`: its
/// manifest digest, manifest and config bytes.
pub fn read(
    dir: &Path,
    tag: Option<&str>,
) -> anyhow::Result<(String, crate::image::Manifest, Vec<u8>)> {
    use anyhow::Context as _;
    let read = |rel: &str| {
        std::fs::read(dir.join(rel)).with_context(|| format!("reading {}/{rel}", dir.display()))
    };
    let index: crate::image::Index =
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
    crate::image::validate_digest(&entry.digest)?;
    let manifest: crate::image::Manifest =
        serde_json::from_slice(&read(&format!("blobs/sha256/{}", entry.hex()))?)
            .context("the manifest is not an OCI image manifest")?;
    crate::image::validate_digest(&manifest.config.digest)?;
    let config = read(&format!("blobs/sha256/{}", manifest.config.hex()))?;
    Ok((entry.digest.clone(), manifest, config))
}

/// Writes `image` as an OCI layout at `dir`, tagged `tag` in `index.json`.
pub async fn write(image: &BuiltImage, dir: &Path, tag: &str) -> Result<(), OutputError> {
    let io = |e: std::io::Error| OutputError::io(dir, &e);
    if dir.exists() && !is_replaceable(dir) {
        return Err(OutputError::other(
            dir,
            "exists and is not an OCI layout kiln can replace; remove it or choose another --output",
        ));
    }
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(io)?;
    let tmp = tempfile::Builder::new()
        .prefix(".kiln-oci-")
        .tempdir_in(&parent)
        .map_err(io)?;
    let blobs = tmp.path().join("blobs/sha256");
    std::fs::create_dir_all(&blobs).map_err(io)?;

    // Each blob is its own file, so base layers download a few at a time.
    let mut seen = std::collections::HashSet::new();
    let mut pending = Vec::new();
    for blob in image.blobs() {
        let hex = blob.descriptor.hex();
        if !seen.insert(hex.to_string()) {
            continue; // The same blob twice (e.g. two empty layers).
        }
        let dest = blobs.join(hex);
        let previous = dir.join("blobs/sha256").join(hex);
        if std::fs::metadata(&previous).is_ok_and(|m| m.len() == blob.descriptor.size)
            && std::fs::hard_link(&previous, &dest).is_ok()
        {
            continue;
        }
        pending.push((blob, dest));
    }
    let mut writes = futures_util::stream::iter(pending)
        .map(|(blob, dest)| async move {
            let io = |e: std::io::Error| OutputError::io(dir, &e);
            let mut file = tokio::fs::File::create(&dest).await.map_err(io)?;
            copy_verified(blob, &mut file, dir).await?;
            file.sync_all().await.map_err(io)
        })
        .buffer_unordered(PARALLEL);
    while let Some(written) = writes.next().await {
        written?;
    }
    drop(writes);
    std::fs::write(
        blobs.join(image.manifest_digest.trim_start_matches("sha256:")),
        &image.manifest,
    )
    .map_err(io)?;
    std::fs::write(
        tmp.path().join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .map_err(io)?;
    let index = json!({
        "schemaVersion": 2,
        "mediaType": crate::image::OCI_INDEX,
        "manifests": [{
            "mediaType": image.manifest_media_type,
            "digest": image.manifest_digest,
            "size": image.manifest.len(),
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }],
    });
    std::fs::write(tmp.path().join("index.json"), index.to_string()).map_err(io)?;

    // Swap in: old layout aside, new one in, old one removed.
    let old = if dir.exists() {
        let aside = parent.join(format!(".kiln-old-{}", std::process::id()));
        std::fs::rename(dir, &aside).map_err(io)?;
        Some(aside)
    } else {
        None
    };
    if let Err(e) = std::fs::rename(tmp.path(), dir) {
        if let Some(old) = &old {
            let _ = std::fs::rename(old, dir);
        }
        return Err(io(e));
    }
    let _ = tmp.keep();
    if let Some(old) = old {
        let _ = std::fs::remove_dir_all(old);
    }
    Ok(())
}

/// An existing DIR is replaced only if it is empty or an OCI layout: kiln
/// must never delete a directory of someone's files because of a typo.
fn is_replaceable(dir: &Path) -> bool {
    dir.join("oci-layout").is_file()
        || std::fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_none())
}

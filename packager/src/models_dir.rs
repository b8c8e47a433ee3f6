//! Writes an exact `OLLAMA_MODELS` tree from pulled models:
//! `manifests/<host>/<ns>/<model>/<tag>` holding the manifest bytes as served,
//! and `blobs/sha256-<hex>` (dash, not colon), files 0644, directories 0755.
//!
//! Nothing else may appear: `ollama serve` prunes unreferenced blobs and
//! `*-partial*` files at start, and fails when it cannot remove an empty
//! manifest directory on a read-only filesystem (as in an image layer).
//! So every file is written under a temporary name that Ollama would not
//! mistake for a blob, then renamed into place.

use std::fs;
use std::io;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use crate::blob_cache::{hex_of, set_mode};
use crate::pull::PulledModel;

#[derive(Debug, thiserror::Error)]
pub enum ModelsDirError {
    #[error("{path}: {source}; check that the models directory is writable")]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "{path} exists with size {actual}, expected {expected} bytes for {digest}; remove it and run again"
    )]
    Conflict {
        path: PathBuf,
        digest: String,
        expected: u64,
        actual: u64,
    },
    #[error(transparent)]
    Cache(#[from] crate::blob_cache::CacheError),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ModelsDirError + '_ {
    move |source| ModelsDirError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Where a blob lives under `OLLAMA_MODELS`.
pub fn blob_path(digest: &str) -> Result<PathBuf, ModelsDirError> {
    Ok(PathBuf::from("blobs").join(format!("sha256-{}", hex_of(digest)?)))
}

/// Writes (or adds to) the tree at `dir`. Blobs already present with the
/// right size are kept, so models in one directory share blobs.
pub fn write_models_dir(dir: &Path, models: &[PulledModel]) -> Result<(), ModelsDirError> {
    make_dir(dir, dir)?;
    let blobs = dir.join("blobs");
    make_dir(dir, &blobs)?;
    for model in models {
        for blob in model.blobs() {
            let target = dir.join(blob_path(&blob.digest)?);
            match fs::metadata(&target) {
                Ok(meta) if meta.len() == blob.size => continue,
                Ok(meta) => {
                    return Err(ModelsDirError::Conflict {
                        path: target,
                        digest: blob.digest.clone(),
                        expected: blob.size,
                        actual: meta.len(),
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(ModelsDirError::Io {
                        path: target,
                        source: e,
                    });
                }
            }
            place_blob(&blob.path, &target)?;
        }
        let manifest = dir.join(model.reference.manifest_path());
        if let Some(parent) = manifest.parent() {
            make_dir(dir, parent)?;
        }
        write_file(&manifest, &model.manifest)?;
    }
    Ok(())
}

/// Hard-links from the cache when both are on one filesystem (instant, no
/// extra space: cache files are immutable), else copies.
fn place_blob(from: &Path, to: &Path) -> Result<(), ModelsDirError> {
    let tmp = temp_name(to);
    let _ = fs::remove_file(&tmp);
    if fs::hard_link(from, &tmp).is_err() {
        fs::copy(from, &tmp).map_err(io_err(&tmp))?;
    }
    set_mode(&tmp, 0o644).map_err(io_err(&tmp))?;
    fs::rename(&tmp, to).map_err(io_err(to))
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), ModelsDirError> {
    let tmp = temp_name(path);
    {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .open(&tmp)
            .map_err(io_err(&tmp))?;
        io::Write::write_all(&mut file, bytes).map_err(io_err(&tmp))?;
    }
    // The umask may have narrowed the mode given to open.
    set_mode(&tmp, 0o644).map_err(io_err(&tmp))?;
    fs::rename(&tmp, path).map_err(io_err(path))
}

/// `.kiln-tmp-<name>` beside the target: same filesystem for the rename, and
/// a dot name no glob of Ollama's (`manifests/*/*/*/*`, `sha256-*`) matches.
fn temp_name(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".kiln-tmp-{name}"))
}

/// Creates `path` and any missing parents below `root`, each 0755.
fn make_dir(root: &Path, path: &Path) -> Result<(), ModelsDirError> {
    let mut missing = Vec::new();
    let mut current = path;
    while !current.exists() {
        missing.push(current.to_path_buf());
        match current.parent() {
            Some(parent) if current != root => current = parent,
            _ => break,
        }
    }
    for dir in missing.iter().rev() {
        match fs::create_dir(dir) {
            Ok(()) => set_mode(dir, 0o755).map_err(io_err(dir))?,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                return Err(ModelsDirError::Io {
                    path: dir.clone(),
                    source: e,
                });
            }
        }
    }
    Ok(())
}

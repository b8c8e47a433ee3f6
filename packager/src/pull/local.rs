//! `--from-ollama-dir`: reuse a model an existing Ollama install already has
//! (`~/.ollama/models`), so nothing is downloaded twice. Blobs are hashed
//! while copied into the cache: a local store is not trusted more than a
//! registry.

use std::fs;
use std::io::{self, Read as _, Write as _};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use super::PullError;
use crate::blob_cache::{Cache, hex_of};
use crate::layers::{LayerCache, TarFraming};
use crate::model_ref::ModelRef;

/// The model's manifest bytes from the local store, if it has them.
pub(crate) fn read_manifest(dir: &Path, model: &ModelRef) -> Result<Option<Vec<u8>>, PullError> {
    let path = dir.join(model.manifest_path());
    match fs::read(&path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(PullError::Io { path, source }),
    }
}

/// Copies `blobs/sha256-<hex>` from the local store into the cache,
/// verifying it (and hashing it as its own layer, when `layer` frames it);
/// `None` when the store lacks it (or has a wrong size).
pub(crate) fn import_blob(
    dir: &Path,
    cache: &Cache,
    digest: &str,
    size: u64,
    layer: Option<&TarFraming>,
) -> Result<Option<PathBuf>, PullError> {
    let source = dir
        .join("blobs")
        .join(format!("sha256-{}", hex_of(digest)?));
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| PullError::Io { path, source }
    };
    let mut input = match fs::File::open(&source) {
        Ok(f) if f.metadata().map(|m| m.len()).ok() == Some(size) => f,
        Ok(_) => return Ok(None),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(PullError::Io {
                path: source,
                source: e,
            });
        }
    };
    let partial = cache.partial_path(digest)?;
    if let Some(parent) = partial.parent() {
        fs::create_dir_all(parent).map_err(io_err(parent))?;
    }
    let mut output = fs::File::create(&partial).map_err(io_err(&partial))?;
    let mut hasher = Sha256::new();
    let mut layer_hasher = layer.map(|framing| {
        let mut h = Sha256::new();
        h.update(&framing.prefix);
        h
    });
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = input.read(&mut buffer).map_err(io_err(&source))?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
        if let Some(h) = &mut layer_hasher {
            h.update(&buffer[..n]);
        }
        output.write_all(&buffer[..n]).map_err(io_err(&partial))?;
    }
    drop(output);
    let actual = format!("sha256:{}", hex::encode(hasher.finalize()));
    if actual != digest {
        let _ = fs::remove_file(&partial);
        return Err(PullError::DigestMismatch {
            expected: digest.into(),
            actual,
            registry: source.display().to_string(),
        });
    }
    // A download state left by an earlier, interrupted network pull no longer describes the file.
    let _ = fs::remove_file(cache.state_path(digest)?);
    let path = cache.commit(digest, &partial)?;
    if let (Some(framing), Some(h)) = (layer, layer_hasher) {
        framing.finish(h, &LayerCache::new(Some(cache.root().to_path_buf())));
    }
    Ok(Some(path))
}

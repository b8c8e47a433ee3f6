//! The layer digest cache: maps everything that determines a layer's bytes
//! (paths, modes, and each file's identity) to the layer's digest, so
//! re-packing an unchanged multi-GB model reads no weights at all.
//! Entries are tiny files written atomically; the cache is safe to delete and
//! to share between concurrent runs.

use std::fmt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// How a source file is recognised as unchanged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FileIdentity {
    /// The file's content digest, known and verified by whoever stored it
    /// (the blob cache names files by their digest).
    Content(String),
    /// Path, size, mtime and inode: what `make` and cargo trust too.
    Stat {
        path: String,
        size: u64,
        mtime_ns: i128,
        dev: u64,
        ino: u64,
    },
}

impl FileIdentity {
    pub fn from_metadata(path: &Path, meta: &std::fs::Metadata) -> FileIdentity {
        FileIdentity::Stat {
            path: path.display().to_string(),
            size: meta.len(),
            mtime_ns: meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128,
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }
}

impl fmt::Display for FileIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FileIdentity::Content(d) => write!(f, "content {d}"),
            FileIdentity::Stat {
                path,
                size,
                mtime_ns,
                dev,
                ino,
            } => {
                write!(f, "stat {path:?} {size} {mtime_ns} {dev} {ino}")
            }
        }
    }
}

/// A directory of `key → "digest size"` entries; `None` disables caching.
#[derive(Clone, Debug)]
pub struct LayerCache {
    dir: Option<PathBuf>,
}

impl LayerCache {
    /// `root` is kiln's cache directory; entries live under `root/layers/`.
    pub fn new(root: Option<PathBuf>) -> LayerCache {
        LayerCache {
            dir: root.map(|r| r.join("layers")),
        }
    }

    /// `(digest, size, diff_id)` of the layer stored under `key`.
    pub fn get(&self, key: &str) -> Option<(String, u64, String)> {
        let text = std::fs::read_to_string(self.dir.as_ref()?.join(key)).ok()?;
        let mut fields = text.split_whitespace();
        let digest = fields.next()?;
        let size = fields.next()?.parse().ok()?;
        // Uncompressed layers: the diff_id is the digest.
        let diff_id = fields.next().unwrap_or(digest);
        crate::image::validate_digest(digest).ok()?;
        crate::image::validate_digest(diff_id).ok()?;
        Some((digest.to_string(), size, diff_id.to_string()))
    }

    /// Best effort: a cache that cannot be written only costs a re-hash next time.
    pub fn put(&self, key: &str, digest: &str, size: u64, diff_id: &str) {
        let Some(dir) = &self.dir else { return };
        let write = || -> std::io::Result<()> {
            std::fs::create_dir_all(dir)?;
            let tmp = tempfile::NamedTempFile::new_in(dir)?;
            std::fs::write(tmp.path(), format!("{digest} {size} {diff_id}\n"))?;
            tmp.persist(dir.join(key)).map_err(|e| e.error)?;
            Ok(())
        };
        if let Err(e) = write() {
            tracing::warn!(
                "could not write the layer digest cache in {}: {e}",
                dir.display()
            );
        }
    }
}

//! The local content-addressed cache: verified blobs by digest.
//!
//! Layout under the cache root:
//! ```text
//! blobs/sha256/<hex>               verified bytes, 0644, only ever renamed into place
//! blobs/sha256/<hex>.partial       a download in progress (sparse, written at offsets)
//! blobs/sha256/<hex>.partial.json  which byte ranges of the partial file are written
//! blobs/sha256/<hex>.lock          held (flock) by the one process writing <hex>
//! ```
//! The cache is safe to delete and safe to share between concurrent runs: a
//! writer holds the blob's lock file for the whole download, and readers only
//! ever see complete, verified files because they appear by atomic rename.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use fs4::fs_std::FileExt as _;

/// Errors about the cache directory itself.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("invalid digest {0:?}: expected sha256:<64 lowercase hex digits>")]
    InvalidDigest(String),
    #[error("cache {path}: {source}; check the directory is writable or pass --cache-dir DIR")]
    Io { path: PathBuf, source: io::Error },
    #[error("no cache directory: neither XDG_CACHE_HOME nor HOME is set; pass --cache-dir DIR")]
    NoDefault,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CacheError + '_ {
    move |source| CacheError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A cache rooted at one directory.
#[derive(Clone, Debug)]
pub struct Cache {
    root: PathBuf,
}

/// Holds a blob's lock file; the lock is released on drop (when the file closes).
#[derive(Debug)]
pub struct BlobLock {
    _file: fs::File,
}

impl Cache {
    pub fn new(root: impl Into<PathBuf>) -> Cache {
        Cache { root: root.into() }
    }

    /// `$XDG_CACHE_HOME/kiln`, else `~/.cache/kiln`.
    pub fn default_dir() -> Result<PathBuf, CacheError> {
        if let Some(xdg) = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
            return Ok(PathBuf::from(xdg).join("kiln"));
        }
        let home = std::env::var_os("HOME")
            .filter(|v| !v.is_empty())
            .ok_or(CacheError::NoDefault)?;
        Ok(PathBuf::from(home).join(".cache").join("kiln"))
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn blob_dir(&self) -> PathBuf {
        self.root.join("blobs").join("sha256")
    }

    /// Path of the verified blob (which may not exist yet).
    pub fn blob_path(&self, digest: &str) -> Result<PathBuf, CacheError> {
        Ok(self.blob_dir().join(hex_of(digest)?))
    }

    pub(crate) fn partial_path(&self, digest: &str) -> Result<PathBuf, CacheError> {
        Ok(self.blob_dir().join(format!("{}.partial", hex_of(digest)?)))
    }

    pub(crate) fn state_path(&self, digest: &str) -> Result<PathBuf, CacheError> {
        Ok(self
            .blob_dir()
            .join(format!("{}.partial.json", hex_of(digest)?)))
    }

    /// The verified blob, if present with the expected size.
    ///
    /// Only the size is checked: files get here solely by rename after their
    /// digest was verified, so re-hashing gigabytes on every run buys nothing.
    pub fn lookup(&self, digest: &str, size: u64) -> Result<Option<PathBuf>, CacheError> {
        let path = self.blob_path(digest)?;
        match fs::metadata(&path) {
            Ok(meta) if meta.is_file() && meta.len() == size => Ok(Some(path)),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(CacheError::Io { path, source: e }),
        }
    }

    fn open_lock(&self, digest: &str) -> Result<(fs::File, PathBuf), CacheError> {
        let dir = self.blob_dir();
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let path = dir.join(format!("{}.lock", hex_of(digest)?));
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err(&path))?;
        Ok((file, path))
    }

    /// Takes the blob's exclusive lock, waiting while another process (or
    /// task) holds it. Blocking: call from a blocking thread.
    pub fn lock_blob_blocking(&self, digest: &str) -> Result<BlobLock, CacheError> {
        let (file, path) = self.open_lock(digest)?;
        file.lock_exclusive().map_err(io_err(&path))?;
        Ok(BlobLock { _file: file })
    }

    /// The blob's lock if nobody holds it, without waiting.
    pub fn try_lock_blob(&self, digest: &str) -> Result<Option<BlobLock>, CacheError> {
        let (file, path) = self.open_lock(digest)?;
        let locked = file.try_lock_exclusive().map_err(io_err(&path))?;
        Ok(locked.then_some(BlobLock { _file: file }))
    }

    /// Async wrapper over [`Cache::lock_blob_blocking`].
    pub async fn lock_blob(&self, digest: &str) -> Result<BlobLock, CacheError> {
        let cache = self.clone();
        let digest = digest.to_string();
        let path = self.blob_dir();
        tokio::task::spawn_blocking(move || cache.lock_blob_blocking(&digest))
            .await
            .map_err(|e| CacheError::Io {
                path,
                source: io::Error::other(e),
            })?
    }

    /// Moves a verified file into place under its digest.
    pub fn commit(&self, digest: &str, verified: &Path) -> Result<PathBuf, CacheError> {
        let path = self.blob_path(digest)?;
        set_mode(verified, 0o644).map_err(io_err(verified))?;
        fs::rename(verified, &path).map_err(io_err(&path))?;
        Ok(path)
    }
}

/// The hex part of `sha256:<hex>`, checked so it is safe as a file name.
pub fn hex_of(digest: &str) -> Result<&str, CacheError> {
    let hex = digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
        .ok_or_else(|| CacheError::InvalidDigest(digest.to_string()))?;
    Ok(hex)
}

pub(crate) fn set_mode(path: &Path, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_that_are_not_safe_file_names_are_refused() {
        let good = format!("sha256:{}", "ab".repeat(32));
        assert!(hex_of(&good).is_ok());
        for bad in [
            "sha256:../../etc/passwd".to_string(),
            format!("sha256:{}", "AB".repeat(32)),
            format!("sha512:{}", "ab".repeat(32)),
            format!("sha256:{}/", "ab".repeat(32)),
            "sha256:".to_string(),
        ] {
            assert!(hex_of(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn lookup_requires_the_expected_size() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path());
        let digest = format!("sha256:{}", "cd".repeat(32));
        assert!(cache.lookup(&digest, 3).unwrap().is_none());
        let tmp = dir.path().join("tmp");
        fs::write(&tmp, b"abc").unwrap();
        cache.lock_blob_blocking(&digest).unwrap();
        let path = cache.commit(&digest, &tmp).unwrap();
        assert_eq!(cache.lookup(&digest, 3).unwrap(), Some(path));
        assert!(cache.lookup(&digest, 4).unwrap().is_none());
    }
}

//! On-disk cache of compiled plugins, so a restart (or a reload of an
//! unchanged plugin) skips Cranelift: compiling a 100 KB plugin takes tens of
//! milliseconds to seconds; loading the cached artifact takes microseconds.
//!
//! Loading an artifact runs its machine code, so the cache must not be a way
//! around the plugin's sha256 pin:
//! - each entry starts with a header that binds it to the sha256 of the
//!   component it was compiled from (the pinned file, componentized
//!   deterministically) and to the engine's compatibility hash, plus the
//!   sha256 of the artifact itself; all three are checked before wasmtime
//!   sees a byte, so another plugin's artifact copied under this name (or a
//!   truncated one) is refused and the plugin is compiled again;
//! - the directory must belong to the proxy's user and be writable by no one
//!   else, and so must each entry; otherwise the cache is not used at all
//!   (compiling costs time, never safety);
//! - there is no fallback to a shared temp dir: without `$XDG_CACHE_HOME`
//!   or `$HOME` (and no `KILN_PLUGIN_CACHE_DIR`) nothing is cached.
//!
//! The header cannot stop someone who can write the directory from forging an
//! entry: that is what the ownership and mode checks are for.

use std::hash::{Hash, Hasher};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

/// Format tag of an entry: bumped when the header changes.
const MAGIC: &[u8; 12] = b"kiln-cwasm\x00\x02";
/// MAGIC, component sha256, engine hash (u64 LE), artifact sha256.
const HEADER_LEN: usize = 12 + 32 + 8 + 32;

pub struct ArtifactCache {
    /// `None`: nothing is cached.
    dir: Option<PathBuf>,
}

/// Where the component came from, for `plugin check` and logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    Compiled,
    Cached,
}

impl ArtifactCache {
    /// A cache in `dir`; an empty path disables caching.
    pub fn new(dir: PathBuf) -> Self {
        ArtifactCache {
            dir: (!dir.as_os_str().is_empty()).then_some(dir),
        }
    }

    /// The cache directory, created if missing, when only this user can write it.
    fn usable_dir(&self) -> Option<&Path> {
        let dir = self.dir.as_deref()?;
        if let Err(e) = std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
        {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot create the plugin cache directory; plugins are compiled at every start");
            return None;
        }
        match private(dir) {
            Ok(()) => Some(dir),
            Err(why) => {
                tracing::warn!(dir = %dir.display(), "not using the plugin cache directory: {why}; plugins are compiled at every start (fix its owner and mode, e.g. chmod 700, or set KILN_PLUGIN_CACHE_DIR)");
                None
            }
        }
    }

    fn engine_hash(engine: &Engine) -> u64 {
        // The compatibility hash is only ever compared with itself from the
        // same binary, so std's hasher (stable within one build) is enough.
        let mut h = std::hash::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        h.finish()
    }

    /// The compiled component: from the cache when it holds a verified
    /// entry, else compiled now and stored (cache failures only cost speed,
    /// so they are logged, never fatal).
    pub fn load_or_compile(
        &self,
        engine: &Engine,
        component_bytes: &[u8],
        component_sha256: &str,
    ) -> Result<(Component, Origin), wasmtime::Error> {
        let Some(dir) = self.usable_dir() else {
            return Ok((Component::new(engine, component_bytes)?, Origin::Compiled));
        };
        let engine_hash = Self::engine_hash(engine);
        let digest: [u8; 32] = Sha256::digest(component_bytes).into();
        let path = dir.join(format!("{component_sha256}-{engine_hash:016x}.cwasm"));
        if path.exists() {
            match read_verified(&path, &digest, engine_hash) {
                Ok(artifact) => {
                    // SAFETY: wasmtime requires bytes produced by `serialize`
                    // of a compatible engine. These were written by `store`
                    // below into a directory only this user can write, and
                    // their header names this component and this engine and
                    // carries their own digest, all checked just now;
                    // wasmtime checks its own header and version as well.
                    match unsafe { Component::deserialize(engine, &artifact) } {
                        Ok(component) => return Ok((component, Origin::Cached)),
                        Err(e) => {
                            tracing::warn!(path = %path.display(), error = %format!("{e:#}"), "ignoring unusable cached plugin artifact; recompiling")
                        }
                    }
                }
                Err(why) => {
                    tracing::warn!(path = %path.display(), "ignoring cached plugin artifact: {why}; recompiling")
                }
            }
        }
        let component = Component::new(engine, component_bytes)?;
        match component.serialize() {
            Ok(artifact) => {
                if let Err(e) = store(&path, &header(&digest, engine_hash, &artifact), &artifact) {
                    tracing::warn!(dir = %dir.display(), error = %e, "could not cache the compiled plugin; the next start compiles it again");
                }
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "could not serialize the compiled plugin")
            }
        }
        Ok((component, Origin::Compiled))
    }
}

/// Ok when `path` belongs to this process's user and no one else may write it.
fn private(path: &Path) -> Result<(), String> {
    let meta = std::fs::symlink_metadata(path).map_err(|e| e.to_string())?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me {
        return Err(format!(
            "it belongs to uid {}, not to this user ({me})",
            meta.uid()
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(format!(
            "its mode {:o} lets other users write to it",
            meta.mode() & 0o7777
        ));
    }
    Ok(())
}

fn header(component_digest: &[u8; 32], engine_hash: u64, artifact: &[u8]) -> Vec<u8> {
    let mut h = Vec::with_capacity(HEADER_LEN);
    h.extend_from_slice(MAGIC);
    h.extend_from_slice(component_digest);
    h.extend_from_slice(&engine_hash.to_le_bytes());
    h.extend_from_slice(&Sha256::digest(artifact));
    h
}

/// The artifact of an entry, once its owner, mode and header check out.
fn read_verified(
    path: &Path,
    component_digest: &[u8; 32],
    engine_hash: u64,
) -> Result<Vec<u8>, String> {
    private(path)?;
    let mut bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    if bytes.len() < HEADER_LEN || &bytes[..12] != MAGIC {
        return Err("it has no kiln artifact header".into());
    }
    if bytes[12..44] != component_digest[..] {
        return Err("it was compiled from another plugin".into());
    }
    if bytes[44..52] != engine_hash.to_le_bytes() {
        return Err("it was compiled by another engine".into());
    }
    let artifact = bytes.split_off(HEADER_LEN);
    if bytes[52..84] != Sha256::digest(&artifact)[..] {
        return Err("its contents do not match their digest".into());
    }
    Ok(artifact)
}

/// Writes the entry to `path` atomically (a reader sees the whole file or
/// none), readable and writable by this user only.
fn store(path: &Path, header: &[u8], artifact: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(
        format!(
            ".tmp-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        )
        .replace(['(', ')'], ""),
    );
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(header)?;
    file.write_all(artifact)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// The default cache directory: `$XDG_CACHE_HOME/kiln/plugins`, else
/// `~/.cache/kiln/plugins`, else none (an empty path: nothing is cached,
/// rather than a directory other users can write, such as /tmp).
pub fn default_dir() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| PathBuf::from(h).join(".cache"))
        })
        .map(|base| base.join("kiln").join("plugins"))
        .unwrap_or_default()
}

//! On-disk cache of compiled plugins, so a restart (or a reload of an
//! unchanged plugin) skips Cranelift: compiling a 100 KB plugin takes tens of
//! milliseconds to seconds; loading the cached artifact takes microseconds.
//!
//! An entry is named by the sha256 of the component bytes and the engine's
//! precompile-compatibility hash (wasmtime version, target, settings), so an
//! artifact is only ever loaded by an engine that can run it.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use wasmtime::Engine;
use wasmtime::component::Component;

pub struct ArtifactCache {
    dir: PathBuf,
}

/// Where the component came from, for `plugin check` and logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    Compiled,
    Cached,
}

impl ArtifactCache {
    pub fn new(dir: PathBuf) -> Self {
        ArtifactCache { dir }
    }

    fn entry_path(&self, engine: &Engine, component_sha256: &str) -> PathBuf {
        // The compatibility hash is only ever compared with itself from the
        // same binary, so std's hasher (stable within one build) is enough.
        let mut h = std::hash::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        self.dir
            .join(format!("{component_sha256}-{:016x}.cwasm", h.finish()))
    }

    /// The compiled component: from the cache when it holds a usable entry,
    /// else compiled now and stored (cache failures only cost speed, so they
    /// are logged, never fatal).
    pub fn load_or_compile(
        &self,
        engine: &Engine,
        component_bytes: &[u8],
        component_sha256: &str,
    ) -> Result<(Component, Origin), wasmtime::Error> {
        let path = self.entry_path(engine, component_sha256);
        if path.exists() {
            // SAFETY: wasmtime requires that deserialized bytes were produced
            // by `serialize` of a compatible engine. Entries in this directory
            // are written only by `store` below (atomically, by rename), and
            // the name carries the engine's compatibility hash; wasmtime also
            // checks the header and rejects artifacts from another version.
            // The directory must not be writable by untrusted users.
            match unsafe { Component::deserialize_file(engine, &path) } {
                Ok(component) => return Ok((component, Origin::Cached)),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %format!("{e:#}"), "ignoring unusable cached plugin artifact; recompiling")
                }
            }
        }
        let component = Component::new(engine, component_bytes)?;
        match component.serialize() {
            Ok(bytes) => {
                if let Err(e) = store(&path, &bytes) {
                    tracing::warn!(dir = %self.dir.display(), error = %e, "could not cache the compiled plugin; the next start compiles it again");
                }
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "could not serialize the compiled plugin")
            }
        }
        Ok((component, Origin::Compiled))
    }
}

/// Writes `bytes` to `path` atomically: a reader sees the whole file or none.
fn store(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile_in(dir)?;
    std::io::Write::write_all(&mut tmp.1, bytes)?;
    tmp.1.sync_all()?;
    std::fs::rename(&tmp.0, path)
}

fn tempfile_in(dir: &Path) -> std::io::Result<(PathBuf, std::fs::File)> {
    let path = dir.join(
        format!(
            ".tmp-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        )
        .replace(['(', ')'], ""),
    );
    let file = std::fs::File::create(&path)?;
    Ok((path, file))
}

/// The default cache directory: `$XDG_CACHE_HOME/kiln/plugins`, else
/// `~/.cache/kiln/plugins`, else the system temp dir.
pub fn default_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| PathBuf::from(h).join(".cache"))
        })
        .unwrap_or_else(std::env::temp_dir);
    base.join("kiln").join("plugins")
}

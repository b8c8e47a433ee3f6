//! Deterministic, uncompressed tar layers that are never materialised: a layer
//! is a plan of header bytes, file ranges and padding, read straight from the
//! source files whenever a digest or an upload needs its bytes. Equal inputs
//! give byte-identical tars (sorted entries, mtime 0, uid/gid 0, fixed modes),
//! so digests are stable across runs and machines and the registry already
//! having a layer can be decided by a HEAD request.

pub mod digest_cache;
mod framing;
mod tar_stream;

use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use sha2::{Digest as _, Sha256};

pub use digest_cache::{FileIdentity, LayerCache};
pub use framing::TarFraming;
pub use tar_stream::LayerReader;

#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error("cannot read {path}: {error}")]
    Read { path: PathBuf, error: io::Error },
    #[error("{path} changed while kiln was reading it (expected {expected} bytes); run kiln again")]
    Changed { path: PathBuf, expected: u64 },
    #[error("invalid path {0:?} inside a layer")]
    Path(String),
}

/// Where a file's bytes come from.
#[derive(Clone, Debug)]
pub enum Source {
    /// A file on disk, read when the layer is read; `len` is its size when planned.
    File {
        path: PathBuf,
        len: u64,
        identity: FileIdentity,
    },
    /// Small in-memory content (manifests, configs).
    Bytes(Arc<[u8]>),
}

impl Source {
    pub fn len(&self) -> u64 {
        match self {
            Source::File { len, .. } => *len,
            Source::Bytes(b) => b.len() as u64,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A file, identified by its metadata (path, size, mtime, inode) for the digest cache.
    pub fn file(path: impl Into<PathBuf>) -> Result<Source, LayerError> {
        let path = path.into();
        let meta = std::fs::metadata(&path).map_err(|error| LayerError::Read {
            path: path.clone(),
            error,
        })?;
        let identity = FileIdentity::from_metadata(&path, &meta);
        Ok(Source::File {
            path,
            len: meta.len(),
            identity,
        })
    }

    /// A file whose content is known by digest (a verified blob in the cache):
    /// the digest cache can then skip even the `stat`-based identity.
    pub fn blob(path: impl Into<PathBuf>, len: u64, digest: &str) -> Source {
        Source::File {
            path: path.into(),
            len,
            identity: FileIdentity::Content(digest.to_string()),
        }
    }
}

#[derive(Clone, Debug)]
enum Node {
    Dir,
    File { mode: u32, source: Source },
}

/// What goes into one layer. Paths are absolute inside the image (`/models/…`).
#[derive(Clone, Debug)]
pub struct LayerSpec {
    /// What the layer holds, for humans (`kiln inspect`, history).
    pub description: String,
    nodes: BTreeMap<String, Node>,
}

impl LayerSpec {
    pub fn new(description: impl Into<String>) -> LayerSpec {
        LayerSpec {
            description: description.into(),
            nodes: BTreeMap::new(),
        }
    }

    /// Adds a file (and its parent directories, mode 0755).
    pub fn file(&mut self, path: &str, mode: u32, source: Source) -> Result<&mut Self, LayerError> {
        let rel = normalise(path)?;
        let mut parent = String::new();
        let parts: Vec<&str> = rel.split('/').collect();
        for part in &parts[..parts.len() - 1] {
            parent.push_str(part);
            self.nodes.entry(parent.clone()).or_insert(Node::Dir);
            parent.push('/');
        }
        self.nodes.insert(rel, Node::File { mode, source });
        Ok(self)
    }

    /// Number of files (not directories) in the layer.
    pub fn file_count(&self) -> usize {
        self.nodes
            .values()
            .filter(|n| matches!(n, Node::File { .. }))
            .count()
    }

    /// The exact tar size, computed from the plan without reading any file.
    pub fn tar_size(&self) -> Result<u64, LayerError> {
        Ok(tar_stream::plan(self)?.iter().map(|s| s.len()).sum())
    }

    /// A reader producing the tar bytes.
    pub fn open(&self) -> Result<LayerReader, LayerError> {
        Ok(LayerReader::new(tar_stream::plan(self)?))
    }

    /// Entries in tar order: `(relative path, mode, Some(source) for files)`.
    fn entries(&self) -> impl Iterator<Item = (&str, u32, Option<&Source>)> {
        self.nodes.iter().map(|(path, node)| match node {
            Node::Dir => (path.as_str(), 0o755, None),
            Node::File { mode, source } => (path.as_str(), *mode, Some(source)),
        })
    }

    /// A stable description of every input that determines the tar's bytes,
    /// hashed into the digest-cache key.
    fn cache_key(&self) -> String {
        let mut h = Sha256::new();
        h.update(tar_stream::FORMAT_VERSION.as_bytes());
        for (path, mode, source) in self.entries() {
            h.update(format!("\0{path}\0{mode:o}\0").as_bytes());
            match source {
                None => h.update(b"dir"),
                Some(Source::Bytes(b)) => {
                    h.update(format!("bytes {}", hex::encode(Sha256::digest(b))).as_bytes())
                }
                Some(Source::File { len, identity, .. }) => {
                    h.update(format!("file {len} {identity}").as_bytes())
                }
            }
        }
        hex::encode(h.finalize())
    }
}

fn layer_key(spec: &LayerSpec, compression: Compression) -> String {
    format!("{}-{}", spec.cache_key(), compression.cache_tag())
}

/// How kiln's layers are stored in the image. Uncompressed is the default:
/// weights barely compress and an uncompressed layer needs one hash pass and
/// no CPU on either end. gzip is the escape hatch for runtimes that insist on
/// compressed layers (Cloud Run documents gzip and zstd, and is silent on
/// uncompressed ones).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Compression {
    #[default]
    None,
    Gzip,
}

impl Compression {
    pub fn media_type(self) -> &'static str {
        match self {
            Compression::None => crate::image::OCI_LAYER_TAR,
            Compression::Gzip => crate::image::OCI_LAYER_GZIP,
        }
    }

    /// Part of the digest-cache key. gzip output depends on the encoder and
    /// its level: bump this when either changes, or cached digests would no
    /// longer match the bytes (a registry would then reject the upload).
    fn cache_tag(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip-fast-flate2-1-miniz",
        }
    }
}

/// A layer with its digest known: ready for any sink.
#[derive(Clone, Debug)]
pub struct Layer {
    pub spec: LayerSpec,
    pub compression: Compression,
    /// sha256 of the blob as stored (compressed or not).
    pub digest: String,
    /// Size of the blob as stored.
    pub size: u64,
    /// sha256 of the uncompressed tar (`rootfs.diff_ids`).
    pub diff_id: String,
}

impl Layer {
    /// Computes (or finds in the cache) the digests of a layer. Hashing runs
    /// on a blocking thread; a cache hit reads nothing but a small file.
    pub async fn build(
        spec: LayerSpec,
        cache: &LayerCache,
        compression: Compression,
    ) -> Result<Layer, LayerError> {
        let key = layer_key(&spec, compression);
        let tar_size = spec.tar_size()?;
        if let Some((digest, size, diff_id)) = cache.get(&key)
            && (compression != Compression::None || size == tar_size)
        {
            return Ok(Layer {
                spec,
                compression,
                digest,
                size,
                diff_id,
            });
        }
        let reader = spec.open()?;
        let (digest, size, diff_id) =
            tokio::task::spawn_blocking(move || hash_layer(reader, compression))
                .await
                .map_err(|e| LayerError::Read {
                    path: "layer".into(),
                    error: io::Error::other(e),
                })??;
        cache.put(&key, &digest, size, &diff_id);
        Ok(Layer {
            spec,
            compression,
            digest,
            size,
            diff_id,
        })
    }

    /// The blob's bytes as stored: the tar, or the tar gzip'd on the fly
    /// (deterministically: same input, same encoder, same bytes).
    pub fn open(&self) -> Result<Box<dyn io::Read + Send>, LayerError> {
        let tar = self.spec.open()?;
        Ok(match self.compression {
            Compression::None => Box::new(tar),
            Compression::Gzip => Box::new(gzip(tar)),
        })
    }
}

fn gzip<R: io::Read>(reader: R) -> flate2::read::GzEncoder<R> {
    // GzBuilder's defaults write mtime 0 and no file name: reproducible.
    flate2::GzBuilder::new().read(reader, flate2::Compression::fast())
}

/// One pass over the tar: its digest (the diff_id) and, when compressing, the
/// compressed stream's digest and size.
fn hash_layer(
    reader: LayerReader,
    compression: Compression,
) -> Result<(String, u64, String), LayerError> {
    let mut tar = HashingReader {
        inner: reader,
        hasher: Sha256::new(),
        error: None,
    };
    match compression {
        Compression::None => {
            let (digest, size) = hash_pipelined(tar.inner)?;
            Ok((digest.clone(), size, digest))
        }
        Compression::Gzip => {
            let mut out = Sha256::new();
            let result = drain(&mut gzip(&mut tar), Some(&mut out));
            let size = result.map_err(|e| tar.error.take().unwrap_or(e))?;
            let diff_id = format!("sha256:{}", hex::encode(tar.hasher.finalize()));
            Ok((
                format!("sha256:{}", hex::encode(out.finalize())),
                size,
                diff_id,
            ))
        }
    }
}

/// sha256 and length of a layer, with reading and hashing on two threads:
/// on a multi-GB layer the hash (about 2 GB/s with SHA-NI) is the bottleneck,
/// and the reads then cost nothing.
fn hash_pipelined(mut reader: LayerReader) -> Result<(String, u64), LayerError> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Vec<u8>, LayerError>>(4);
    let read = std::thread::spawn(move || {
        loop {
            let mut buf = vec![0u8; 1 << 20];
            match reader.read_layer(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    buf.truncate(n);
                    if tx.send(Ok(buf)).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            }
        }
    });
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    for chunk in rx {
        let chunk = chunk?;
        hasher.update(&chunk);
        size += chunk.len() as u64;
    }
    // The reader thread ends once the channel is drained; a panic there is a bug.
    read.join().map_err(|_| LayerError::Read {
        path: "layer".into(),
        error: io::Error::other("the layer reader thread panicked"),
    })?;
    Ok((format!("sha256:{}", hex::encode(hasher.finalize())), size))
}

/// Reads `reader` to the end in 1 MiB chunks, hashing into `hasher` if given.
fn drain(reader: &mut impl io::Read, mut hasher: Option<&mut Sha256>) -> Result<u64, LayerError> {
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = reader.read(&mut buf).map_err(|error| LayerError::Read {
            path: "layer".into(),
            error,
        })?;
        if n == 0 {
            return Ok(total);
        }
        if let Some(h) = hasher.as_deref_mut() {
            h.update(&buf[..n]);
        }
        total += n as u64;
    }
}

/// Hashes what passes through; keeps the layer's own error (which names the
/// file at fault) for when the reader sits under an encoder.
struct HashingReader {
    inner: LayerReader,
    hasher: Sha256,
    error: Option<LayerError>,
}

impl io::Read for HashingReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.inner.read_layer(buf) {
            Ok(n) => {
                self.hasher.update(&buf[..n]);
                Ok(n)
            }
            Err(e) => {
                let shown = io::Error::other(e.to_string());
                self.error = Some(e);
                Err(shown)
            }
        }
    }
}

/// The header block(s) of one regular file entry, in kiln's fixed format
/// (for writers of other tars, such as the docker-archive sink).
pub fn file_header(path: &str, mode: u32, size: u64) -> Result<Vec<u8>, LayerError> {
    tar_stream::header_bytes(path, mode, Some(size))
}

/// `/models/blobs/x` → `models/blobs/x`; rejects `..`, empty parts and NULs so a
/// hostile model name cannot place files outside the image paths kiln chose.
fn normalise(path: &str) -> Result<String, LayerError> {
    let rel = path.trim_start_matches('/');
    let ok = !rel.is_empty()
        && !rel.contains('\0')
        && rel
            .split('/')
            .all(|p| !p.is_empty() && p != "." && p != "..");
    if ok {
        Ok(rel.to_string())
    } else {
        Err(LayerError::Path(path.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn bytes(b: &[u8]) -> Source {
        Source::Bytes(Arc::from(b))
    }

    fn read_all(spec: &LayerSpec) -> Vec<u8> {
        let mut out = Vec::new();
        spec.open().unwrap().read_to_end(&mut out).unwrap();
        out
    }

    #[test]
    fn tar_is_sorted_complete_and_readable() {
        let mut spec = LayerSpec::new("t");
        spec.file(
            "/models/manifests/registry.ollama.ai/library/gemma3/4b",
            0o644,
            bytes(b"{}"),
        )
        .unwrap();
        spec.file("/models/blobs/sha256-ab", 0o644, bytes(&[7u8; 1000]))
            .unwrap();
        let tar_bytes = read_all(&spec);
        assert_eq!(tar_bytes.len() as u64, spec.tar_size().unwrap());
        let mut archive = tar::Archive::new(tar_bytes.as_slice());
        let entries: Vec<(String, u32, u64, u64, u64)> = archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let h = e.header();
                (
                    e.path().unwrap().display().to_string(),
                    h.mode().unwrap(),
                    h.uid().unwrap(),
                    h.mtime().unwrap(),
                    h.size().unwrap(),
                )
            })
            .collect();
        let paths: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(
            paths,
            [
                "models/",
                "models/blobs/",
                "models/blobs/sha256-ab",
                "models/manifests/",
                "models/manifests/registry.ollama.ai/",
                "models/manifests/registry.ollama.ai/library/",
                "models/manifests/registry.ollama.ai/library/gemma3/",
                "models/manifests/registry.ollama.ai/library/gemma3/4b",
            ]
        );
        assert!(entries.iter().all(|e| e.2 == 0 && e.3 == 0));
        assert_eq!(entries[0].1, 0o755);
        assert_eq!((entries[2].1, entries[2].4), (0o644, 1000));
    }

    #[test]
    fn long_paths_survive() {
        let long = format!("/models/manifests/{}/tag", "n".repeat(150));
        let mut spec = LayerSpec::new("t");
        spec.file(&long, 0o644, bytes(b"x")).unwrap();
        let tar_bytes = read_all(&spec);
        assert_eq!(tar_bytes.len() as u64, spec.tar_size().unwrap());
        let mut archive = tar::Archive::new(tar_bytes.as_slice());
        let names: Vec<String> = archive
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        assert!(names.contains(&long[1..].to_string()), "{names:?}");
    }

    #[test]
    fn sizes_beyond_8_gib_use_base256_headers() {
        let nine_gib = 9u64 << 30;
        let header =
            tar_stream::header_bytes("models/blobs/sha256-big", 0o644, Some(nine_gib)).unwrap();
        let parsed = tar::Header::from_byte_slice(&header[header.len() - 512..]);
        assert_eq!(parsed.size().unwrap(), nine_gib);
        assert_eq!(
            parsed.as_bytes()[124] & 0x80,
            0x80,
            "size field must be GNU base-256"
        );
    }

    #[test]
    fn hostile_paths_are_rejected() {
        let mut spec = LayerSpec::new("t");
        for bad in ["/models/../etc/passwd", "/", "/models//x", "/a/./b"] {
            assert!(spec.file(bad, 0o644, bytes(b"")).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn digest_is_stable_and_cached_by_identity() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("w.gguf");
        std::fs::write(&file, vec![3u8; 5000]).unwrap();
        let cache = LayerCache::new(Some(dir.path().join("cache")));
        let spec = || {
            let mut s = LayerSpec::new("w");
            s.file(
                "/models/blobs/sha256-w",
                0o644,
                Source::file(&file).unwrap(),
            )
            .unwrap();
            s
        };
        let first = Layer::build(spec(), &cache, Compression::None)
            .await
            .unwrap();
        let mut expected = Sha256::new();
        expected.update(read_all(&spec()));
        assert_eq!(
            first.digest,
            format!("sha256:{}", hex::encode(expected.finalize()))
        );
        // Same identity → served from the cache, even if bytes changed underneath
        // without changing size/mtime/inode (proves nothing was re-hashed).
        let key = format!("{}-none", spec().cache_key());
        let fake = crate::image::sha256_digest(b"from the cache");
        cache.put(&key, &fake, first.size, &fake);
        assert_eq!(
            Layer::build(spec(), &cache, Compression::None)
                .await
                .unwrap()
                .digest,
            fake
        );
        // A different size is a different identity.
        std::fs::write(&file, vec![3u8; 6000]).unwrap();
        assert_ne!(
            Layer::build(spec(), &cache, Compression::None)
                .await
                .unwrap()
                .digest,
            fake
        );
    }

    #[tokio::test]
    async fn a_framed_file_hashes_to_the_layer_digest() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("blob");
        let bytes: Vec<u8> = (0..70_001u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&file, &bytes).unwrap();
        let digest = crate::image::sha256_digest(&bytes);
        let spec = || {
            let mut s = LayerSpec::new("w");
            s.file(
                "/models/blobs/sha256-x",
                0o644,
                Source::blob(&file, bytes.len() as u64, &digest),
            )
            .unwrap();
            s
        };
        let framing = TarFraming::of(&spec()).unwrap().expect("one file");
        let cache = LayerCache::new(Some(dir.path().join("cache")));
        let mut hasher = Sha256::new();
        hasher.update(&framing.prefix);
        hasher.update(&bytes);
        let framed = framing.finish(hasher, &cache);
        assert_eq!(framed, crate::image::sha256_digest(&read_all(&spec())));
        // Pack finds it: the layer is not hashed again (the file is gone).
        std::fs::remove_file(&file).unwrap();
        let layer = Layer::build(spec(), &cache, Compression::None)
            .await
            .unwrap();
        assert_eq!(
            (layer.digest, layer.size),
            (framed, spec().tar_size().unwrap())
        );
        // Two files: no framing.
        let mut two = spec();
        two.file("/models/x", 0o644, bytes_source(b"x")).unwrap();
        assert!(TarFraming::of(&two).unwrap().is_none());
    }

    fn bytes_source(b: &[u8]) -> Source {
        Source::Bytes(Arc::from(b))
    }

    #[test]
    fn shrinking_file_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("w");
        std::fs::write(&file, vec![1u8; 4096]).unwrap();
        let mut spec = LayerSpec::new("w");
        spec.file("/w", 0o644, Source::file(&file).unwrap())
            .unwrap();
        std::fs::write(&file, vec![1u8; 100]).unwrap();
        let err = spec
            .open()
            .unwrap()
            .read_to_end(&mut Vec::new())
            .unwrap_err();
        assert!(
            err.to_string().contains("changed while kiln was reading"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn gzip_layers_are_reproducible_and_unpack_to_the_tar() {
        let mut spec = LayerSpec::new("t");
        let noise: Vec<u8> = (0..300_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        spec.file("/models/blobs/sha256-n", 0o644, bytes(&noise))
            .unwrap();
        spec.file("/models/manifests/m", 0o644, bytes(b"{}"))
            .unwrap();
        let cache = LayerCache::new(None);
        let layer = Layer::build(spec.clone(), &cache, Compression::Gzip)
            .await
            .unwrap();
        let tar_bytes = read_all(&spec);
        assert_eq!(layer.diff_id, crate::image::sha256_digest(&tar_bytes));
        // Read back in odd-sized pieces: the bytes must not depend on how they are read.
        let mut gz = Vec::new();
        let mut reader = layer.open().unwrap();
        let mut buf = [0u8; 777];
        loop {
            let n = reader.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            gz.extend_from_slice(&buf[..n]);
        }
        assert_eq!(
            (crate::image::sha256_digest(&gz), gz.len() as u64),
            (layer.digest.clone(), layer.size)
        );
        let mut unpacked = Vec::new();
        flate2::read::GzDecoder::new(gz.as_slice())
            .read_to_end(&mut unpacked)
            .unwrap();
        assert_eq!(unpacked, tar_bytes);
        let again = Layer::build(spec, &cache, Compression::Gzip).await.unwrap();
        assert_eq!(again.digest, layer.digest);
    }
}

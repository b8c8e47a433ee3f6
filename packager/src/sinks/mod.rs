//! Where a built image goes. One image, three small transports:
//! `registry` (push), `oci_layout` (an OCI image layout directory) and
//! `docker_archive` (a `docker load`-able tar). Each reads blobs through
//! [`BlobSource::stream`], so bytes move from their source to their
//! destination without ever being held whole in memory.

pub mod docker_archive;
pub mod oci_layout;
pub mod registry;

pub use registry::{PushOptions, PushReport, RegistrySink};

use std::io::{self, Read};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};

use crate::image::Descriptor;
use crate::layers::Layer;
use crate::registry::RegistryClient;

/// Chunk size when streaming local layers; large enough to keep syscalls rare.
const CHUNK: usize = 1 << 20;

/// Where a blob's bytes come from.
#[derive(Clone)]
pub enum BlobSource {
    /// A base layer still in its registry.
    Remote {
        client: Arc<RegistryClient>,
        registry: String,
        repo: String,
    },
    /// A layer kiln built from local files.
    Local(Arc<Layer>),
    /// Small in-memory content (the config).
    Bytes(Bytes),
}

/// A blob of the image: its descriptor (as it appears in the manifest) and its source.
#[derive(Clone)]
pub struct Blob {
    pub descriptor: Descriptor,
    pub source: BlobSource,
}

/// A finished image: everything a sink needs.
pub struct BuiltImage {
    /// Layers in manifest order.
    pub layers: Vec<Blob>,
    pub config: Blob,
    /// Exact manifest bytes (what gets pushed and written).
    pub manifest: Bytes,
    pub manifest_digest: String,
    pub manifest_media_type: String,
}

impl BuiltImage {
    /// Layers then config: everything that must exist before the manifest.
    pub fn blobs(&self) -> impl Iterator<Item = &Blob> {
        self.layers.iter().chain(std::iter::once(&self.config))
    }
}

/// Where the image goes: opened before the build (so a bad target fails
/// before any weights move), given the base layers as soon as they are known,
/// finished with the built image.
pub enum Sink {
    Registry(RegistrySink),
    OciLayout {
        dir: std::path::PathBuf,
        tag: String,
    },
    DockerArchive {
        path: std::path::PathBuf,
        repo_tag: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error(transparent)]
    Push(#[from] registry::PushError),
    #[error(transparent)]
    Output(#[from] OutputError),
}

impl Sink {
    /// What finishing does, for the status line.
    pub fn describe(&self) -> String {
        match self {
            Sink::Registry(sink) => format!("pushing {}", sink.target()),
            Sink::OciLayout { dir, .. } => format!("writing OCI layout {}", dir.display()),
            Sink::DockerArchive { path, .. } => {
                format!("writing docker archive {}", path.display())
            }
        }
    }

    /// The image's first layers (the base's), before the rest is built. A
    /// registry starts copying them; local outputs wait for the whole image.
    pub fn start(&mut self, first_layers: Vec<Blob>) {
        if let Sink::Registry(sink) = self {
            sink.start(first_layers);
        }
    }

    /// Writes or pushes the image; a push reports what it did.
    pub async fn finish(self, image: &BuiltImage) -> Result<Option<PushReport>, SinkError> {
        match self {
            Sink::Registry(sink) => Ok(Some(sink.finish(image).await?)),
            Sink::OciLayout { dir, tag } => {
                oci_layout::write(image, &dir, &tag).await?;
                Ok(None)
            }
            Sink::DockerArchive { path, repo_tag } => {
                docker_archive::write(image, &path, &repo_tag).await?;
                Ok(None)
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error(transparent)]
    Registry(#[from] crate::registry::RegistryError),
    #[error("{0}")]
    Io(String),
}

impl Blob {
    /// Opens the blob's bytes as a stream. Called once per attempt, so a
    /// retry re-reads the file or re-fetches the base layer from the start.
    pub async fn stream(
        &self,
    ) -> Result<std::pin::Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>, StreamError> {
        match &self.source {
            BlobSource::Bytes(b) => {
                let b = b.clone();
                Ok(Box::pin(futures_util::stream::once(async move { Ok(b) })))
            }
            BlobSource::Remote { client, repo, .. } => {
                let (_, stream) = client.get_blob(repo, &self.descriptor.digest).await?;
                Ok(Box::pin(stream.map(|r| r.map_err(io::Error::other))))
            }
            BlobSource::Local(layer) => {
                let reader = layer.open().map_err(|e| StreamError::Io(e.to_string()))?;
                Ok(Box::pin(reader_stream(reader)))
            }
        }
    }
}

/// Turns a blocking reader into a stream: a blocking thread reads chunks and
/// hands them over a small channel (bounded, so memory stays at a few MiB).
pub fn reader_stream(
    mut reader: impl Read + Send + 'static,
) -> impl Stream<Item = io::Result<Bytes>> + Send {
    let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<Bytes>>(4);
    tokio::task::spawn_blocking(move || {
        loop {
            let mut buf = vec![0u8; CHUNK];
            match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    buf.truncate(n);
                    if tx.blocking_send(Ok(Bytes::from(buf))).is_err() {
                        break; // The receiver went away (upload aborted).
                    }
                }
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    break;
                }
            }
        }
    });
    futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    })
}

/// A failure writing a local output (`oci:` or `docker-archive:`).
#[derive(Debug, thiserror::Error)]
#[error("writing {path}: {detail}")]
pub struct OutputError {
    pub path: std::path::PathBuf,
    pub detail: String,
}

impl OutputError {
    pub(crate) fn io(path: &std::path::Path, e: &io::Error) -> OutputError {
        let detail = if e.kind() == io::ErrorKind::StorageFull || e.raw_os_error() == Some(28) {
            "no space left on device; free some space or choose another --output".to_string()
        } else if e.kind() == io::ErrorKind::FileTooLarge {
            "the file is too large for this file system or limit; choose another --output"
                .to_string()
        } else {
            e.to_string()
        };
        OutputError {
            path: path.to_path_buf(),
            detail,
        }
    }

    pub(crate) fn other(path: &std::path::Path, detail: impl ToString) -> OutputError {
        OutputError {
            path: path.to_path_buf(),
            detail: detail.to_string(),
        }
    }
}

/// Copies a blob into `out`, checking its size and sha256 on the way, so a
/// truncated download or a changed file never lands in an output.
pub(crate) async fn copy_verified(
    blob: &Blob,
    out: &mut (impl tokio::io::AsyncWrite + Unpin),
    path: &std::path::Path,
) -> Result<(), OutputError> {
    use sha2::Digest as _;
    use tokio::io::AsyncWriteExt as _;
    let mut stream = blob
        .stream()
        .await
        .map_err(|e| OutputError::other(path, e))?;
    let mut hasher = sha2::Sha256::new();
    let mut size = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            OutputError::other(path, format!("reading {}: {e}", blob.descriptor.digest))
        })?;
        hasher.update(&chunk);
        size += chunk.len() as u64;
        out.write_all(&chunk)
            .await
            .map_err(|e| OutputError::io(path, &e))?;
    }
    let digest = format!("sha256:{}", hex::encode(hasher.finalize()));
    if digest != blob.descriptor.digest || size != blob.descriptor.size {
        return Err(OutputError::other(
            path,
            format!(
                "blob {} arrived as {digest} ({size} bytes); run kiln again",
                blob.descriptor.digest
            ),
        ));
    }
    Ok(())
}

//! Pushing to a registry the way real registries need it:
//! - HEAD first: a blob the repository has is never sent again;
//! - mount within one registry (no bytes move), stream across registries;
//! - monolithic uploads only: POST, then one PUT with the whole body.
//!   Artifact Registry rejects chunked uploads, so no PATCH, no Content-Range;
//! - a few uploads at a time, each retried from its source on transient errors;
//! - the manifest last, so a failed push never leaves a tag pointing at
//!   blobs that are not there.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::Semaphore;

use super::{Blob, BlobSource, BuiltImage, StreamError};
use crate::image::ImageRef;
use crate::registry::{Mount, RegistryClient, RegistryError};

#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("pushing {target}: {error}")]
    Registry {
        target: String,
        error: RegistryError,
    },
    #[error("pushing {target}: {detail}")]
    Source { target: String, detail: String },
}

#[derive(Clone, Debug)]
pub struct PushOptions {
    /// Uploads in flight at once. Registries lose upload sessions under heavy
    /// parallelism; crane uses 4, KitOps 5.
    pub parallel: usize,
    /// Attempts per blob for transient failures (network, 5xx, 429).
    pub attempts: u32,
    /// Print one line per blob to stderr.
    pub progress: bool,
}

impl Default for PushOptions {
    fn default() -> Self {
        PushOptions {
            parallel: 3,
            attempts: 3,
            progress: true,
        }
    }
}

/// What happened to each blob, for the summary line and for tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PushReport {
    pub digest: String,
    pub uploaded: usize,
    pub uploaded_bytes: u64,
    pub mounted: usize,
    pub present: usize,
}

enum Outcome {
    Present,
    Mounted,
    Uploaded(u64),
}

impl PushReport {
    fn add(&mut self, other: &PushReport) {
        self.uploaded += other.uploaded;
        self.uploaded_bytes += other.uploaded_bytes;
        self.mounted += other.mounted;
        self.present += other.present;
    }
}

/// Pushes to one target. Blob pushes may run from several tasks at once (the
/// base layers start while the models are still being pulled); one semaphore
/// keeps the uploads in flight at `parallel` overall.
pub struct Pusher {
    client: Arc<RegistryClient>,
    target: ImageRef,
    opts: PushOptions,
    permits: Arc<Semaphore>,
}

impl Pusher {
    pub fn new(client: Arc<RegistryClient>, target: ImageRef, opts: PushOptions) -> Pusher {
        let permits = Arc::new(Semaphore::new(opts.parallel.max(1)));
        Pusher {
            client,
            target,
            opts,
            permits,
        }
    }

    /// Pushes every blob the target lacks. Stops at the first failure (the
    /// uploads still in flight are dropped).
    pub async fn push_blobs(&self, blobs: Vec<Blob>) -> Result<PushReport, PushError> {
        let name = self.target.to_string();
        let mut outcomes = futures_util::stream::iter(blobs)
            .map(|blob| async move {
                let _permit = self.permits.acquire().await;
                push_with_retries(&blob, &self.target, &self.client, &self.opts).await
            })
            .buffer_unordered(self.opts.parallel.max(1));
        let mut report = PushReport::default();
        while let Some(outcome) = outcomes.next().await {
            match outcome.map_err(|e| e.into_push(&name))? {
                Outcome::Present => report.present += 1,
                Outcome::Mounted => report.mounted += 1,
                Outcome::Uploaded(n) => {
                    report.uploaded += 1;
                    report.uploaded_bytes += n;
                }
            }
        }
        Ok(report)
    }

    /// Pushes the manifest under the target's tag (or digest): call it last,
    /// once every blob is there, so a tag never points at missing blobs.
    pub async fn push_manifest(&self, image: &BuiltImage) -> Result<String, PushError> {
        let reference = self
            .target
            .digest
            .clone()
            .or_else(|| self.target.tag.clone())
            .unwrap_or_else(|| "latest".into());
        self.client
            .put_manifest(
                &self.target.repository,
                &reference,
                &image.manifest_media_type,
                image.manifest.clone(),
            )
            .await
            .map_err(|error| PushError::Registry {
                target: self.target.to_string(),
                error,
            })
    }
}

/// The registry sink: opened before the build ([`RegistrySink::prepare`]
/// proves the target takes these credentials), handed the base layers as
/// soon as they are known ([`RegistrySink::start`], so a push to another
/// registry copies them while the models are still being pulled), and
/// finished with the image ([`RegistrySink::finish`]: the rest of the blobs,
/// then the manifest).
pub struct RegistrySink {
    pusher: Arc<Pusher>,
    /// The blobs already being pushed (a prefix of the image's layers) and their task.
    started: Option<(usize, AbortOnDrop)>,
}

impl RegistrySink {
    pub fn new(client: Arc<RegistryClient>, target: ImageRef, opts: PushOptions) -> RegistrySink {
        RegistrySink {
            pusher: Arc::new(Pusher::new(client, target, opts)),
            started: None,
        }
    }

    /// Opens the sink after one HEAD with push scope: a wrong password or
    /// an unreachable registry fails before any weights are pulled or hashed.
    pub async fn prepare(
        client: Arc<RegistryClient>,
        target: ImageRef,
        opts: PushOptions,
    ) -> Result<RegistrySink, PushError> {
        let probe = crate::image::sha256_digest(b"");
        client
            .blob_exists(&target.repository, &probe)
            .await
            .map_err(|error| PushError::Registry {
                target: target.to_string(),
                error,
            })?;
        Ok(RegistrySink::new(client, target, opts))
    }

    pub fn target(&self) -> &ImageRef {
        &self.pusher.target
    }

    /// Starts pushing the image's first layers (the base's) in the background.
    /// A sink dropped before [`RegistrySink::finish`] aborts them.
    pub fn start(&mut self, first_layers: Vec<Blob>) {
        let (pusher, count) = (self.pusher.clone(), first_layers.len());
        let task = tokio::spawn(async move { pusher.push_blobs(first_layers).await });
        self.started = Some((count, AbortOnDrop(task)));
    }

    /// Pushes the blobs not started yet alongside those that were, then the
    /// manifest, last. The first failure ends both.
    pub async fn finish(mut self, image: &BuiltImage) -> Result<PushReport, PushError> {
        let (count, started) = match self.started.take() {
            Some((count, task)) => (count, Some(task)),
            None => (0, None),
        };
        let rest: Vec<Blob> = image.blobs().skip(count).cloned().collect();
        let started = async {
            match started {
                Some(task) => task.join(&self.pusher.target).await,
                None => Ok(PushReport::default()),
            }
        };
        let (first, rest) = tokio::try_join!(started, self.pusher.push_blobs(rest))?;
        let digest = self.pusher.push_manifest(image).await?;
        Ok(combine(&[&first, &rest], digest))
    }
}

/// A spawned push that is aborted if the sink is dropped before joining it.
struct AbortOnDrop(tokio::task::JoinHandle<Result<PushReport, PushError>>);

impl AbortOnDrop {
    async fn join(mut self, target: &ImageRef) -> Result<PushReport, PushError> {
        match (&mut self.0).await {
            Ok(result) => result,
            Err(e) => Err(PushError::Source {
                target: target.to_string(),
                detail: format!("the upload task failed: {e}"),
            }),
        }
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Pushes every blob the target lacks, then the manifest.
pub async fn push(
    image: &BuiltImage,
    target: &ImageRef,
    client: &Arc<RegistryClient>,
    opts: &PushOptions,
) -> Result<PushReport, PushError> {
    RegistrySink::new(client.clone(), target.clone(), opts.clone())
        .finish(image)
        .await
}

/// Adds up the reports of pushes made in parts.
pub fn combine(parts: &[&PushReport], digest: String) -> PushReport {
    let mut total = PushReport {
        digest,
        ..PushReport::default()
    };
    for part in parts {
        total.add(part);
    }
    total
}

async fn push_with_retries(
    blob: &Blob,
    target: &ImageRef,
    client: &RegistryClient,
    opts: &PushOptions,
) -> Result<Outcome, StreamError> {
    let mut attempt = 1;
    loop {
        match push_blob(blob, target, client, opts.progress).await {
            Ok(outcome) => {
                if opts.progress {
                    let what = match outcome {
                        Outcome::Present => "already there",
                        Outcome::Mounted => "mounted",
                        Outcome::Uploaded(_) => "uploaded",
                    };
                    eprintln!(
                        "  {} {} ({}): {what}",
                        short(&blob.descriptor.digest),
                        kind(blob),
                        human(blob.descriptor.size)
                    );
                }
                return Ok(outcome);
            }
            Err(StreamError::Registry(e)) if e.is_transient() && attempt < opts.attempts => {
                if opts.progress {
                    eprintln!(
                        "  {}: {e}; retrying ({attempt}/{})",
                        short(&blob.descriptor.digest),
                        opts.attempts - 1
                    );
                }
                tokio::time::sleep(Duration::from_secs(u64::from(attempt))).await;
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

async fn push_blob(
    blob: &Blob,
    target: &ImageRef,
    client: &RegistryClient,
    progress: bool,
) -> Result<Outcome, StreamError> {
    let repo = &target.repository;
    let digest = &blob.descriptor.digest;
    if client.blob_exists(repo, digest).await? {
        return Ok(Outcome::Present);
    }
    let location = match &blob.source {
        BlobSource::Remote {
            registry,
            repo: from,
            ..
        } if *registry == target.registry && from != repo => {
            match client.mount_blob(repo, digest, from).await? {
                Mount::Mounted => return Ok(Outcome::Mounted),
                Mount::Upload(location) => location,
            }
        }
        _ => client.start_upload(repo).await?,
    };
    let stream = blob.stream().await?;
    let size = blob.descriptor.size;
    // Big uploads report progress now and then: a multi-GB PUT is otherwise
    // minutes of silence that look like a hang.
    let sent = Arc::new(AtomicU64::new(0));
    let counted = {
        let sent = sent.clone();
        stream.inspect(move |chunk| {
            if let Ok(chunk) = chunk {
                sent.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            }
        })
    };
    let ticker = (progress && size >= PROGRESS_MIN_BYTES).then(|| {
        let (sent, name) = (sent.clone(), short(digest).to_string());
        tokio::spawn(async move {
            let mut every = tokio::time::interval(PROGRESS_EVERY);
            every.tick().await;
            loop {
                every.tick().await;
                let done = sent.load(Ordering::Relaxed);
                eprintln!("  {name} uploading: {} of {}", human(done), human(size));
            }
        })
    });
    let result = client
        .put_upload(
            repo,
            &location,
            digest,
            size,
            reqwest::Body::wrap_stream(counted),
        )
        .await;
    if let Some(ticker) = ticker {
        ticker.abort();
    }
    result?;
    Ok(Outcome::Uploaded(size))
}

/// Uploads at least this big print progress every [`PROGRESS_EVERY`].
const PROGRESS_MIN_BYTES: u64 = 256 << 20;
const PROGRESS_EVERY: Duration = Duration::from_secs(10);

impl StreamError {
    fn into_push(self, target: &str) -> PushError {
        match self {
            StreamError::Registry(error) => PushError::Registry {
                target: target.to_string(),
                error,
            },
            StreamError::Io(detail) => PushError::Source {
                target: target.to_string(),
                detail,
            },
        }
    }
}

fn kind(blob: &Blob) -> &'static str {
    match blob.source {
        BlobSource::Remote { .. } => "base layer",
        BlobSource::Local(_) => "layer",
        BlobSource::Bytes(_) => "config",
    }
}

/// `sha256:0123456789ab`.
pub(crate) fn short(digest: &str) -> &str {
    &digest[..digest.len().min(19)]
}

/// Sizes for people: 3.3 GB, 489 B.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit < UNITS.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

//! One blob from the registry into the cache: parallel `Range` parts written
//! at their offsets into a sparse partial file, SHA-256 computed while the
//! download runs, resume from a state file, retries with backoff on errors and
//! stalls, and an atomic rename once the digest matches. The partial file's
//! bookkeeping and the hasher are in [`super::partial`].

use std::fs;
use std::io;
use std::os::unix::fs::FileExt as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use reqwest::header::{CONTENT_LENGTH, CONTENT_RANGE};
use reqwest::{Response, StatusCode, Url};
use tokio::task::JoinSet;

use super::ollama_registry::{OllamaRegistry, redact};
use super::partial::{
    Hashers, Shared, WRITE_BUFFER, hash_prefix, open_partial, part_size_for, save_periodically,
    save_state,
};
use super::{PullError, PullOptions, describe};
use crate::blob_cache::Cache;
use crate::layers::{LayerCache, TarFraming};
use crate::progress::BlobProgress;

/// Where a part's bytes come from: the registry URL, or the CDN URL it redirected to.
#[derive(Clone)]
struct Source {
    url: Url,
}

pub(crate) struct BlobJob<'a> {
    pub client: &'a OllamaRegistry,
    pub cache: &'a Cache,
    pub options: &'a PullOptions,
    pub repository: &'a str,
    pub digest: &'a str,
    pub size: u64,
    /// The blob's own layer in `kiln pack`, hashed alongside the blob.
    pub layer: Option<&'a TarFraming>,
}

impl BlobJob<'_> {
    fn connections(&self) -> usize {
        self.options.connections_for(self.client.base())
    }
}

/// Downloads (or resumes) the blob into the cache; returns the verified path.
/// The caller holds the blob's lock.
pub(crate) async fn download(
    job: &BlobJob<'_>,
    progress_for: impl Fn(u64) -> BlobProgress,
) -> Result<PathBuf, PullError> {
    let wanted = part_size_for(job.size, job.connections(), job.options.part_size);
    match download_in_parts(job, wanted, &progress_for).await {
        // A server that ignores Range (answers 200 with the whole blob) can
        // still serve one plain GET; what was written cannot be resumed there.
        Err(PullError::RangeIgnored { what }) if wanted < job.size => {
            tracing::warn!("{what} ignored Range; fetching the blob in one request");
            let _ = fs::remove_file(job.cache.state_path(job.digest)?);
            download_in_parts(job, job.size, &progress_for).await
        }
        other => other,
    }
}

async fn download_in_parts(
    job: &BlobJob<'_>,
    wanted: u64,
    progress_for: &impl Fn(u64) -> BlobProgress,
) -> Result<PathBuf, PullError> {
    let partial = job.cache.partial_path(job.digest)?;
    let state_path = job.cache.state_path(job.digest)?;
    let (file, state) = open_partial(&partial, &state_path, job.size, wanted)?;
    let (part_size, parts) = (state.part_size, state.done.len());
    let already: u64 = state.done.iter().sum();
    let pending: Vec<usize> = (0..parts)
        .filter(|&p| {
            let start = p as u64 * part_size;
            start + state.done[p] < (start + part_size).min(job.size)
        })
        .collect();
    let (shared, hot) = Shared::new(file, &partial, &state, pending, progress_for(already));
    let shared = Arc::new(shared);

    let hashers = Hashers::new(job.layer.map(|framing| {
        use sha2::Digest as _;
        let mut hasher = sha2::Sha256::new();
        hasher.update(&framing.prefix);
        hasher
    }));
    let result = run(job, &shared, hot, hashers).await;
    // Save what is on disk whatever happened, so the next run resumes.
    let _ = save_state(&state_path, &shared.state());
    let (actual, layer_hasher) = match result {
        Ok(hashed) => hashed,
        Err(e) => {
            shared.progress.abandon();
            return Err(e);
        }
    };
    if actual != job.digest {
        shared.progress.abandon();
        let _ = fs::remove_file(&partial);
        let _ = fs::remove_file(&state_path);
        return Err(PullError::DigestMismatch {
            expected: job.digest.to_string(),
            actual,
            registry: job.client.display_host(),
        });
    }
    let path = job.cache.commit(job.digest, &partial)?;
    let _ = fs::remove_file(&state_path);
    if let (Some(framing), Some(hasher)) = (job.layer, layer_hasher) {
        framing.finish(
            hasher,
            &LayerCache::new(Some(job.cache.root().to_path_buf())),
        );
    }
    shared.progress.finish();
    Ok(path)
}

/// Fetches the pending parts and hashes the file; returns `sha256:<hex>`
/// and the layer's hasher.
async fn run(
    job: &BlobJob<'_>,
    shared: &Arc<Shared>,
    hot: std::sync::mpsc::Receiver<(u64, Vec<u8>)>,
    hashers: Hashers,
) -> Result<(String, Option<sha2::Sha256>), PullError> {
    // Both helpers stop with this future, also when a caller drops it mid-way.
    let mut hasher = AbortOnDrop(tokio::spawn(hash_prefix(Arc::clone(shared), hot, hashers)));
    let _stop_hasher = CancelOnDrop(shared.as_ref());
    let _saver = AbortOnDrop(tokio::spawn(save_periodically(
        Arc::clone(shared),
        job.cache.state_path(job.digest)?,
    )));
    fetch_parts(job, shared).await?;
    (&mut hasher.0).await.map_err(|e| PullError::Io {
        path: job.cache.root().to_path_buf(),
        source: io::Error::other(e),
    })?
}

/// Stops the hasher's blocking thread, which an abort cannot reach.
struct CancelOnDrop<'a>(&'a Shared);

impl Drop for CancelOnDrop<'_> {
    fn drop(&mut self) {
        self.0.cancelled.store(true, Ordering::Release);
    }
}

struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn fetch_parts(job: &BlobJob<'_>, shared: &Arc<Shared>) -> Result<(), PullError> {
    let Some(&first) = shared.pending.first() else {
        return Ok(());
    };
    shared.next.store(1, Ordering::SeqCst);
    // The first part's request also resolves the registry's redirect to the
    // CDN; the other workers then go straight to the resolved URL.
    let registry_url = job.client.blob_url(job.repository, job.digest)?;
    let template = WorkerCtx {
        client: job.client.clone(),
        repository: job.repository.to_string(),
        digest: job.digest.to_string(),
        registry_url: registry_url.clone(),
        retry: RetryPolicy::from(job.options),
    };
    let (response, source) = open_part(&template, shared, first).await?;
    let source = Source { url: source };
    let mut workers = JoinSet::new();
    let connections = job.connections().min(shared.pending.len());
    let mut initial = Some((first, response));
    for _ in 0..connections {
        let initial = initial.take();
        let shared = Arc::clone(shared);
        let mut source = source.clone();
        let ctx = template.clone();
        workers.spawn(async move {
            if let Some((part, response)) = initial {
                fetch_part(&ctx, &shared, &mut source, part, Some(response)).await?;
            }
            worker_loop(&ctx, &shared, &mut source).await
        });
    }
    while let Some(joined) = workers.join_next().await {
        let result = joined.map_err(|e| PullError::Io {
            path: job.cache.root().to_path_buf(),
            source: io::Error::other(e),
        })?;
        if let Err(e) = result {
            workers.abort_all();
            return Err(e);
        }
    }
    Ok(())
}

#[derive(Clone, Copy)]
struct RetryPolicy {
    max_retries: u32,
    base_delay: Duration,
    stall_timeout: Duration,
}

impl From<&PullOptions> for RetryPolicy {
    fn from(o: &PullOptions) -> Self {
        RetryPolicy {
            max_retries: o.max_retries,
            base_delay: o.retry_base_delay,
            stall_timeout: o.stall_timeout,
        }
    }
}

#[derive(Clone)]
struct WorkerCtx {
    client: OllamaRegistry,
    repository: String,
    digest: String,
    registry_url: Url,
    retry: RetryPolicy,
}

async fn worker_loop(
    ctx: &WorkerCtx,
    shared: &Shared,
    source: &mut Source,
) -> Result<(), PullError> {
    loop {
        let index = shared.next.fetch_add(1, Ordering::SeqCst);
        let Some(&part) = shared.pending.get(index) else {
            return Ok(());
        };
        fetch_part(ctx, shared, source, part, None).await?;
    }
}

/// Fetches the rest of one part, retrying with exponential backoff. An
/// attempt that made progress resets the retry count: a long download over a
/// flaky link keeps going as long as bytes keep arriving.
async fn fetch_part(
    ctx: &WorkerCtx,
    shared: &Shared,
    source: &mut Source,
    part: usize,
    mut response: Option<Response>,
) -> Result<(), PullError> {
    let mut failures = 0u32;
    loop {
        let before = shared.done[part].load(Ordering::Acquire);
        let (start, end) = shared.part_range(part);
        if start + before >= end {
            return Ok(());
        }
        let attempt = async {
            let response = match response.take() {
                Some(r) => r,
                None => open_range(ctx, shared, source, part).await?,
            };
            stream_part(ctx, shared, part, response).await
        };
        let error = match attempt.await {
            Ok(()) => continue,
            Err(e) => e,
        };
        // Presigned CDN URLs expire: a refusal from the CDN sends this worker
        // back through the registry for a fresh redirect.
        let expired = source.url != ctx.registry_url
            && matches!(
                error,
                PullError::Unauthorized { .. }
                    | PullError::Http {
                        status: 404 | 410,
                        ..
                    }
            );
        if !error.is_transient() && !expired {
            return Err(error);
        }
        if shared.done[part].load(Ordering::Acquire) > before {
            failures = 0;
        } else {
            failures += 1;
        }
        if failures > ctx.retry.max_retries {
            return Err(PullError::Exhausted {
                digest: ctx.digest.clone(),
                attempts: failures,
                // The inner cause only: this error carries its own advice.
                last: match &error {
                    PullError::Network { what, detail } => format!("{what}: {detail}"),
                    other => other.to_string(),
                },
            });
        }
        if expired {
            source.url = ctx.registry_url.clone();
        }
        let delay = ctx.retry.base_delay.saturating_mul(1 << failures.min(5));
        tracing::debug!(part, failures, ?delay, "retrying part: {error}");
        tokio::time::sleep(delay).await;
    }
}

async fn open_range(
    ctx: &WorkerCtx,
    shared: &Shared,
    source: &mut Source,
    part: usize,
) -> Result<Response, PullError> {
    let done = shared.done[part].load(Ordering::Acquire);
    let (response, url) = request_range(ctx, shared, &source.url, part, done).await?;
    source.url = url;
    Ok(response)
}

/// The first request of a download, through the registry (and its
/// redirect); retried here because no worker runs yet.
async fn open_part(
    ctx: &WorkerCtx,
    shared: &Shared,
    part: usize,
) -> Result<(Response, Url), PullError> {
    let done = shared.done[part].load(Ordering::Acquire);
    let mut failures = 0;
    loop {
        match request_range(ctx, shared, &ctx.registry_url, part, done).await {
            Ok(ok) => return Ok(ok),
            Err(e) if e.is_transient() && failures < ctx.retry.max_retries => {
                failures += 1;
                tokio::time::sleep(ctx.retry.base_delay.saturating_mul(1 << failures.min(5))).await;
            }
            Err(PullError::Http { status: 404, .. }) => {
                return Err(PullError::Protocol {
                    registry: ctx.client.display_host(),
                    detail: format!(
                        "blob {} is listed in the manifest but the registry does not have it",
                        ctx.digest
                    ),
                });
            }
            Err(e) => return Err(e),
        }
    }
}

/// One GET for the missing bytes of `part`; checks the answer is the range asked for.
async fn request_range(
    ctx: &WorkerCtx,
    shared: &Shared,
    url: &Url,
    part: usize,
    done: u64,
) -> Result<(Response, Url), PullError> {
    let (start, end) = shared.part_range(part);
    let from = start + done;
    // A whole small blob is fetched without Range: some servers answer 200 to
    // a full range anyway, and a plain GET is what they cache best.
    let whole = from == 0 && end == shared.size;
    let range = (!whole).then_some((from, end - 1));
    // Waiting for response headers counts as a stall too.
    let client = &ctx.client;
    let stall = ctx.retry.stall_timeout;
    let (response, final_url) =
        tokio::time::timeout(stall, client.get(url.clone(), &ctx.repository, None, range))
            .await
            .map_err(|_| PullError::Stalled {
                digest: ctx.digest.clone(),
                seconds: stall.as_secs_f64(),
            })??;
    let status = response.status();
    let what = format!("GET {}", redact(&final_url));
    match status {
        StatusCode::PARTIAL_CONTENT if range.is_some() => {
            let content_range = response
                .headers()
                .get(CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let expected = format!("bytes {from}-{}/{}", end - 1, shared.size);
            if content_range != expected {
                return Err(PullError::Protocol {
                    registry: client.display_host(),
                    detail: format!(
                        "{what} answered Content-Range {content_range:?}, expected {expected:?}"
                    ),
                });
            }
        }
        StatusCode::OK if whole => {
            if let Some(length) = response
                .headers()
                .get(CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                && length.parse::<u64>().ok() != Some(shared.size)
            {
                return Err(PullError::Protocol {
                    registry: client.display_host(),
                    detail: format!(
                        "{what} sent {length} bytes, the manifest says {}",
                        shared.size
                    ),
                });
            }
        }
        // Range ignored: the body would be the whole blob, not this part.
        StatusCode::OK => {
            return Err(PullError::RangeIgnored { what });
        }
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
            return Err(PullError::Unauthorized {
                registry: client.display_host(),
                detail: format!("{what} answered HTTP {status}"),
            });
        }
        _ => {
            let body = response.text().await.unwrap_or_default();
            return Err(PullError::Http {
                what,
                status: status.as_u16(),
                body: first_line(&body),
            });
        }
    }
    Ok((response, final_url))
}

/// Streams a response into the part's bytes, in positioned writes of up to
/// [`WRITE_BUFFER`] bytes.
async fn stream_part(
    ctx: &WorkerCtx,
    shared: &Shared,
    part: usize,
    mut response: Response,
) -> Result<(), PullError> {
    let (start, end) = shared.part_range(part);
    let mut buffer = shared.buffer();
    let mut offset = start + shared.done[part].load(Ordering::Acquire);
    let result: Result<(), PullError> = async {
        loop {
            let chunk = tokio::time::timeout(ctx.retry.stall_timeout, response.chunk())
                .await
                .map_err(|_| PullError::Stalled {
                    digest: ctx.digest.clone(),
                    seconds: ctx.retry.stall_timeout.as_secs_f64(),
                })?;
            let chunk = chunk.map_err(|e| PullError::Network {
                what: format!("reading {}", ctx.digest),
                detail: describe(&e),
            })?;
            let Some(chunk) = chunk else { break };
            let room = (end - offset) as usize - buffer.len();
            buffer.extend_from_slice(&chunk[..chunk.len().min(room)]);
            if buffer.len() >= WRITE_BUFFER
                || buffer.len() == room.min(chunk.len()) && offset + buffer.len() as u64 == end
            {
                offset += write_buffer(shared, part, offset, &mut buffer)?;
            }
            if offset + buffer.len() as u64 >= end {
                break;
            }
        }
        Ok(())
    }
    .await;
    // Bytes that arrived before an error are good bytes: keep them.
    offset += write_buffer(shared, part, offset, &mut buffer)?;
    result?;
    if offset < end {
        return Err(PullError::Network {
            what: format!("reading {}", ctx.digest),
            detail: format!("connection closed at byte {offset}, expected {end}"),
        });
    }
    Ok(())
}

fn write_buffer(
    shared: &Shared,
    part: usize,
    offset: u64,
    buffer: &mut Vec<u8>,
) -> Result<u64, PullError> {
    if buffer.is_empty() {
        return Ok(0);
    }
    // A positioned write of ≤1 MiB lands in the page cache in well under a
    // millisecond; a blocking-pool hop per write would cost more than it saves.
    shared
        .file
        .write_all_at(buffer, offset)
        .map_err(|source| PullError::Io {
            path: shared.path.clone(),
            source,
        })?;
    let n = buffer.len() as u64;
    let full = std::mem::take(buffer);
    *buffer = shared.written(part, offset, full);
    Ok(n)
}

fn first_line(body: &str) -> String {
    body.lines()
        .next()
        .unwrap_or("")
        .chars()
        .take(200)
        .collect()
}

//! One blob from the registry into the cache: parallel `Range` parts written
//! at their offsets into a sparse partial file, SHA-256 computed while the
//! download runs, resume from a state file, retries with backoff on errors and
//! stalls, and an atomic rename once the digest matches.
//!
//! Hashing while streaming: SHA-256 is sequential, but parts arrive in
//! parallel. Workers take parts *in order* from a queue (a sliding window, not
//! Ollama's 16 fixed slices), so the written bytes form a contiguous prefix
//! plus a window of ~`parallel` parts in flight. A hasher task follows that
//! prefix, re-reading the just-written bytes from the page cache, so hashing
//! overlaps the download and only the last window is hashed after it ends.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{FileExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use reqwest::header::{CONTENT_LENGTH, CONTENT_RANGE};
use reqwest::{Response, StatusCode, Url};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tokio::sync::Notify;
use tokio::task::JoinSet;

use super::client::{RegistryClient, redact};
use super::{PullError, PullOptions, describe};
use crate::cache::Cache;
use crate::progress::BlobProgress;

/// Bytes gathered from the network before one positioned write.
const WRITE_BUFFER: usize = 1 << 20;
/// Bytes hashed per blocking hasher step.
const HASH_STEP: u64 = 64 << 20;
/// How often the resume state is saved while downloading.
const STATE_INTERVAL: Duration = Duration::from_millis(500);

/// Part size for a blob: about four parts per connection so the in-order
/// window stays small, within [8 MiB, 256 MiB].
pub fn part_size_for(size: u64, parallel: usize, requested: Option<u64>) -> u64 {
    if let Some(requested) = requested {
        return requested.max(1);
    }
    (size / (parallel.max(1) as u64 * 4)).clamp(8 << 20, 256 << 20)
}

/// Persisted next to the partial file: which bytes of each part are on disk.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
struct State {
    size: u64,
    part_size: u64,
    /// Bytes written from the start of each part.
    done: Vec<u64>,
}

struct Shared {
    file: File,
    size: u64,
    part_size: u64,
    done: Vec<AtomicU64>,
    /// Parts still to fetch, in offset order; workers take them from `next`.
    pending: Vec<usize>,
    next: AtomicUsize,
    /// Wakes the hasher when new bytes are written.
    written: Notify,
    progress: BlobProgress,
}

impl Shared {
    fn part_range(&self, part: usize) -> (u64, u64) {
        let start = part as u64 * self.part_size;
        (start, (start + self.part_size).min(self.size))
    }

    /// End of the contiguous written prefix.
    fn frontier(&self) -> u64 {
        for (part, done) in self.done.iter().enumerate() {
            let (start, end) = self.part_range(part);
            let done = done.load(Ordering::Acquire);
            if start + done < end {
                return start + done;
            }
        }
        self.size
    }

    fn state(&self) -> State {
        State {
            size: self.size,
            part_size: self.part_size,
            done: self
                .done
                .iter()
                .map(|d| d.load(Ordering::Acquire))
                .collect(),
        }
    }
}

/// Where a part's bytes come from: the registry URL, or the CDN URL it redirected to.
#[derive(Clone)]
struct Source {
    url: Url,
}

pub(crate) struct BlobJob<'a> {
    pub client: &'a RegistryClient,
    pub cache: &'a Cache,
    pub options: &'a PullOptions,
    pub repository: &'a str,
    pub digest: &'a str,
    pub size: u64,
}

/// Downloads (or resumes) the blob into the cache; returns the verified path.
/// The caller holds the blob's lock.
pub(crate) async fn download(
    job: &BlobJob<'_>,
    progress_for: impl FnOnce(u64) -> BlobProgress,
) -> Result<PathBuf, PullError> {
    let partial = job.cache.partial_path(job.digest)?;
    let state_path = job.cache.state_path(job.digest)?;
    let part_size = part_size_for(job.size, job.options.parallel, job.options.part_size);
    let parts = job.size.div_ceil(part_size).max(1) as usize;

    let (file, state) = open_partial(&partial, &state_path, job.size, part_size, parts)?;
    let already: u64 = state.done.iter().sum();
    let pending: Vec<usize> = (0..parts)
        .filter(|&p| {
            let start = p as u64 * part_size;
            start + state.done[p] < (start + part_size).min(job.size)
        })
        .collect();
    let shared = Arc::new(Shared {
        file,
        size: job.size,
        part_size,
        done: state.done.iter().map(|&d| AtomicU64::new(d)).collect(),
        pending,
        next: AtomicUsize::new(0),
        written: Notify::new(),
        progress: progress_for(already),
    });

    let result = run(job, &shared).await;
    // Save what is on disk whatever happened, so the next run resumes.
    let _ = save_state(&state_path, &shared.state());
    let actual = match result {
        Ok(actual) => actual,
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
    shared.progress.finish();
    Ok(path)
}

/// Fetches the pending parts and hashes the file; returns `sha256:<hex>`.
async fn run(job: &BlobJob<'_>, shared: &Arc<Shared>) -> Result<String, PullError> {
    // Both helpers stop with this future, also when a caller drops it mid-way.
    let mut hasher = AbortOnDrop(tokio::spawn(hash_prefix(Arc::clone(shared))));
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
    let (response, source) = open_part(
        job,
        shared,
        &Source {
            url: registry_url.clone(),
        },
        first,
    )
    .await?;
    let source = Source { url: source };
    let mut workers = JoinSet::new();
    let connections = job.options.parallel.max(1).min(shared.pending.len());
    let retry = RetryPolicy::from(job.options);
    let mut initial = Some((first, response));
    for _ in 0..connections {
        let initial = initial.take();
        let shared = Arc::clone(shared);
        let mut source = source.clone();
        let ctx = WorkerCtx {
            client: job.client.clone(),
            repository: job.repository.to_string(),
            digest: job.digest.to_string(),
            registry_url: registry_url.clone(),
            retry,
        };
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

struct WorkerCtx {
    client: RegistryClient,
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
        if !error.is_transient() {
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
        // A CDN URL may have expired; go through the registry again.
        if matches!(
            error,
            PullError::Http {
                status: 401 | 403 | 404 | 410,
                ..
            }
        ) {
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
    let (response, url) = request_range(
        &ctx.client,
        &ctx.repository,
        shared,
        &source.url,
        part,
        done,
    )
    .await?;
    source.url = url;
    Ok(response)
}

async fn open_part(
    job: &BlobJob<'_>,
    shared: &Shared,
    source: &Source,
    part: usize,
) -> Result<(Response, Url), PullError> {
    let done = shared.done[part].load(Ordering::Acquire);
    let retry = RetryPolicy::from(job.options);
    let mut failures = 0;
    loop {
        match request_range(job.client, job.repository, shared, &source.url, part, done).await {
            Ok(ok) => return Ok(ok),
            Err(e) if e.is_transient() && failures < retry.max_retries => {
                failures += 1;
                tokio::time::sleep(retry.base_delay.saturating_mul(1 << failures.min(5))).await;
            }
            Err(PullError::Http { status: 404, .. }) => {
                return Err(PullError::Protocol {
                    registry: job.client.display_host(),
                    detail: format!(
                        "blob {} is listed in the manifest but the registry does not have it",
                        job.digest
                    ),
                });
            }
            Err(e) => return Err(e),
        }
    }
}

/// One GET for the missing bytes of `part`; checks the answer is the range asked for.
async fn request_range(
    client: &RegistryClient,
    repository: &str,
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
    let (response, final_url) = client.get(url.clone(), repository, None, range).await?;
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
            return Err(PullError::Protocol {
                registry: client.display_host(),
                detail: format!(
                    "{what} ignored the Range header (HTTP 200 to a range request); kiln needs Range support"
                ),
            });
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
    let mut buffer: Vec<u8> = Vec::with_capacity(WRITE_BUFFER);
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
            path: PathBuf::from("partial blob"),
            source,
        })?;
    let n = buffer.len() as u64;
    shared.done[part].fetch_add(n, Ordering::AcqRel);
    shared.progress.inc(n);
    shared.written.notify_one();
    buffer.clear();
    Ok(n)
}

/// Hashes the contiguous written prefix as it grows; returns `sha256:<hex>`.
async fn hash_prefix(shared: Arc<Shared>) -> Result<String, PullError> {
    let mut hasher = Sha256::new();
    let mut hashed = 0u64;
    while hashed < shared.size {
        let frontier = shared.frontier();
        if frontier == hashed {
            shared.written.notified().await;
            continue;
        }
        let upto = frontier.min(hashed + HASH_STEP);
        let task_shared = Arc::clone(&shared);
        let (returned, result) = tokio::task::spawn_blocking(move || {
            let result = hash_range(&task_shared.file, &mut hasher, hashed, upto);
            (hasher, result)
        })
        .await
        .map_err(|e| PullError::Io {
            path: PathBuf::from("partial blob"),
            source: io::Error::other(e),
        })?;
        hasher = returned;
        result.map_err(|source| PullError::Io {
            path: PathBuf::from("partial blob"),
            source,
        })?;
        hashed = upto;
    }
    Ok(format!("sha256:{}", hex::encode(hasher.finalize())))
}

fn hash_range(file: &File, hasher: &mut Sha256, from: u64, to: u64) -> io::Result<()> {
    let mut buffer = vec![0u8; (1 << 20).min((to - from) as usize)];
    let mut at = from;
    while at < to {
        let n = buffer.len().min((to - at) as usize);
        file.read_exact_at(&mut buffer[..n], at)?;
        hasher.update(&buffer[..n]);
        at += n as u64;
    }
    Ok(())
}

async fn save_periodically(shared: Arc<Shared>, path: PathBuf) {
    let mut interval = tokio::time::interval(STATE_INTERVAL);
    loop {
        interval.tick().await;
        if let Err(e) = save_state(&path, &shared.state()) {
            tracing::warn!("saving download state {}: {e}", path.display());
        }
    }
}

/// Writes the state by rename, so a kill mid-write leaves the old state.
fn save_state(path: &Path, state: &State) -> io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    fs::write(&tmp, serde_json::to_vec(state)?)?;
    fs::rename(&tmp, path)
}

/// Opens the partial file, resuming when its state matches this blob and
/// part size; otherwise starts over with an empty sparse file.
fn open_partial(
    partial: &Path,
    state_path: &Path,
    size: u64,
    part_size: u64,
    parts: usize,
) -> Result<(File, State), PullError> {
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| PullError::Io { path, source }
    };
    if let Some(parent) = partial.parent() {
        fs::create_dir_all(parent).map_err(io_err(parent))?;
    }
    let saved: Option<State> = fs::read(state_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let file_len = fs::metadata(partial).map(|m| m.len()).ok();
    let resumable = saved.filter(|s| {
        s.size == size
            && s.part_size == part_size
            && s.done.len() == parts
            && file_len == Some(size)
            && s.done
                .iter()
                .enumerate()
                .all(|(p, &d)| p as u64 * part_size + d <= ((p as u64 + 1) * part_size).min(size))
    });
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o644)
        .open(partial)
        .map_err(io_err(partial))?;
    match resumable {
        Some(state) => Ok((file, state)),
        None => {
            file.set_len(0).map_err(io_err(partial))?;
            file.set_len(size).map_err(io_err(partial))?;
            let state = State {
                size,
                part_size,
                done: vec![0; parts],
            };
            save_state(state_path, &state).map_err(io_err(state_path))?;
            Ok((file, state))
        }
    }
}

fn first_line(body: &str) -> String {
    body.lines()
        .next()
        .unwrap_or("")
        .chars()
        .take(200)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_size_keeps_about_four_parts_per_connection_within_bounds() {
        assert_eq!(part_size_for(1 << 30, 16, None), 16 << 20);
        assert_eq!(part_size_for(1 << 20, 16, None), 8 << 20);
        assert_eq!(part_size_for(100 << 30, 16, None), 256 << 20);
        assert_eq!(part_size_for(1 << 30, 16, Some(1 << 20)), 1 << 20);
    }
}

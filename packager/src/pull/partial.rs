//! The partial file of one download and what is known about it: which bytes
//! of each part are written (persisted next to it for resume), the
//! contiguous prefix they form, and the hasher that follows that prefix.
//!
//! Hashing while streaming: SHA-256 is sequential, but parts arrive in
//! parallel. Workers take parts *in order* from a queue (a sliding window, not
//! Ollama's 16 fixed slices), so the written bytes form a contiguous prefix
//! plus a window of ~`parallel` parts in flight. The hasher thread follows
//! that prefix: buffers that extend it exactly are handed over in memory
//! right after their write (all of them with one connection), and the rest
//! is re-read from the page cache once the prefix reaches it. Hashing thus
//! overlaps the download on another core and only the last window is hashed
//! after it ends.
//!
//! A blob that becomes a layer of its own in `kiln pack` is also hashed as
//! that layer's tar (header, bytes, padding) by a second hasher on a third
//! thread, fed the same buffers: the first pack after a pull then hashes
//! nothing.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{FileExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::PullError;
use crate::progress::BlobProgress;

/// Bytes hashed per blocking hasher step.
const HASH_STEP: u64 = 64 << 20;
/// Buffers in flight to the hasher; beyond this, it re-reads from disk.
const HOT_BUFFERS: usize = 8;
/// Bytes gathered from the network before one positioned write.
pub(super) const WRITE_BUFFER: usize = 1 << 20;
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
pub(super) struct State {
    pub(super) size: u64,
    pub(super) part_size: u64,
    /// Bytes written from the start of each part.
    pub(super) done: Vec<u64>,
}

pub(super) struct Shared {
    pub(super) file: File,
    /// The partial file's path, for error messages.
    pub(super) path: PathBuf,
    pub(super) size: u64,
    pub(super) part_size: u64,
    pub(super) done: Vec<AtomicU64>,
    /// Parts still to fetch, in offset order; workers take them from `next`.
    pub(super) pending: Vec<usize>,
    pub(super) next: AtomicUsize,
    pub(super) progress: BlobProgress,
    /// Written buffers offered to the hasher, with their offsets.
    hot: SyncSender<(u64, Vec<u8>)>,
    /// Buffers the hasher is done with, for workers to reuse.
    pool: Mutex<Vec<Vec<u8>>>,
    /// Set when the download ends, so the hasher thread stops.
    pub(super) cancelled: AtomicBool,
}

impl Shared {
    /// The download's shared state, and the receiving end for the hasher.
    pub(super) fn new(
        file: File,
        path: &Path,
        state: &State,
        pending: Vec<usize>,
        progress: BlobProgress,
    ) -> (Shared, Receiver<(u64, Vec<u8>)>) {
        let (hot, receiver) = sync_channel(HOT_BUFFERS);
        let shared = Shared {
            file,
            path: path.to_path_buf(),
            size: state.size,
            part_size: state.part_size,
            done: state.done.iter().map(|&d| AtomicU64::new(d)).collect(),
            pending,
            next: AtomicUsize::new(0),
            progress,
            hot,
            pool: Mutex::new(Vec::new()),
            cancelled: AtomicBool::new(false),
        };
        (shared, receiver)
    }

    /// An empty write buffer, reused when one is free: fresh 1 MiB
    /// allocations would page-fault on every write.
    pub(super) fn buffer(&self) -> Vec<u8> {
        self.pool
            .lock()
            .ok()
            .and_then(|mut pool| pool.pop())
            .unwrap_or_else(|| Vec::with_capacity(WRITE_BUFFER))
    }

    fn recycle(&self, mut buffer: Vec<u8>) {
        buffer.clear();
        if let Ok(mut pool) = self.pool.lock() {
            pool.push(buffer);
        }
    }

    /// Records `buffer` as written at `offset` of `part` and offers it to the
    /// hasher; returns an empty buffer to go on with.
    pub(super) fn written(&self, part: usize, offset: u64, buffer: Vec<u8>) -> Vec<u8> {
        let n = buffer.len() as u64;
        self.done[part].fetch_add(n, Ordering::AcqRel);
        self.progress.inc(n);
        match self.hot.try_send((offset, buffer)) {
            Ok(()) => self.buffer(),
            // The hasher is busy: it will read these bytes back from disk.
            Err(TrySendError::Full((_, mut b)) | TrySendError::Disconnected((_, mut b))) => {
                b.clear();
                b
            }
        }
    }

    pub(super) fn part_range(&self, part: usize) -> (u64, u64) {
        let start = part as u64 * self.part_size;
        (start, (start + self.part_size).min(self.size))
    }

    /// End of the contiguous written prefix.
    pub(super) fn frontier(&self) -> u64 {
        for (part, done) in self.done.iter().enumerate() {
            let (start, end) = self.part_range(part);
            let done = done.load(Ordering::Acquire);
            if start + done < end {
                return start + done;
            }
        }
        self.size
    }

    pub(super) fn state(&self) -> State {
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

/// The blob's hasher and, when the blob is framed as a layer, the layer's
/// hasher on a thread of its own (SHA-256 runs at ~2 GB/s per core; two in
/// a row would halve the rate the hasher keeps up with the download).
pub(super) struct Hashers {
    blob: Sha256,
    tar: Option<TarThread>,
}

struct TarThread {
    chunks: SyncSender<Arc<Vec<u8>>>,
    done: Receiver<()>,
    thread: std::thread::JoinHandle<Sha256>,
}

impl Hashers {
    /// `tar`: the layer's hasher, already fed the tar bytes before the blob.
    pub(super) fn new(tar: Option<Sha256>) -> Hashers {
        let tar = tar.map(|mut hasher| {
            let (chunks, receiver) = sync_channel::<Arc<Vec<u8>>>(1);
            let (ack, done) = sync_channel(1);
            let thread = std::thread::spawn(move || {
                for chunk in receiver {
                    hasher.update(chunk.as_slice());
                    drop(chunk);
                    if ack.send(()).is_err() {
                        break;
                    }
                }
                hasher
            });
            TarThread {
                chunks,
                done,
                thread,
            }
        });
        Hashers {
            blob: Sha256::new(),
            tar,
        }
    }

    /// Hashes `buffer` into both; hands the buffer back for reuse.
    fn update(&mut self, buffer: Vec<u8>) -> Vec<u8> {
        let Some(tar) = &self.tar else {
            self.blob.update(&buffer);
            return buffer;
        };
        let shared = Arc::new(buffer);
        if tar.chunks.send(Arc::clone(&shared)).is_err() {
            // The thread is gone (it cannot panic on update): hash here.
            self.tar = None;
        }
        self.blob.update(shared.as_slice());
        if let Some(tar) = &self.tar
            && tar.done.recv().is_err()
        {
            self.tar = None;
        }
        Arc::try_unwrap(shared).unwrap_or_else(|shared| shared.as_ref().clone())
    }

    /// `sha256:<hex>` of the blob, and the layer's hasher.
    fn finish(self) -> (String, Option<Sha256>) {
        let digest = format!("sha256:{}", hex::encode(self.blob.finalize()));
        let tar = self.tar.and_then(|tar| {
            drop(tar.chunks);
            tar.thread.join().ok()
        });
        (digest, tar)
    }
}

/// Hashes the contiguous written prefix as it grows, on a blocking thread;
/// returns `sha256:<hex>` and the layer's hasher, when there is one.
pub(super) async fn hash_prefix(
    shared: Arc<Shared>,
    hot: Receiver<(u64, Vec<u8>)>,
    hashers: Hashers,
) -> Result<(String, Option<Sha256>), PullError> {
    tokio::task::spawn_blocking(move || hash_blocking(&shared, hot, hashers))
        .await
        .map_err(|e| PullError::Io {
            path: PathBuf::from("the hasher thread"),
            source: io::Error::other(e),
        })?
}

fn hash_blocking(
    shared: &Shared,
    hot: Receiver<(u64, Vec<u8>)>,
    mut hashers: Hashers,
) -> Result<(String, Option<Sha256>), PullError> {
    let io_err = |source| PullError::Io {
        path: shared.path.clone(),
        source,
    };
    let mut hashed = 0u64;
    let mut scratch = Vec::new();
    while hashed < shared.size {
        if shared.cancelled.load(Ordering::Acquire) {
            return Err(io_err(io::Error::other(
                "download ended before hashing did",
            )));
        }
        match hot.recv_timeout(Duration::from_millis(5)) {
            Ok((offset, buffer)) => {
                if offset == hashed {
                    hashed += buffer.len() as u64;
                    shared.recycle(hashers.update(buffer));
                    continue;
                }
                shared.recycle(buffer);
            }
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {}
        }
        // Bytes written but not handed over (out of order, or the channel
        // was full): read them back.
        let frontier = shared.frontier();
        if frontier > hashed {
            let upto = frontier.min(hashed + HASH_STEP);
            scratch =
                hash_range(&shared.file, &mut hashers, scratch, hashed, upto).map_err(io_err)?;
            hashed = upto;
        }
    }
    Ok(hashers.finish())
}

fn hash_range(
    file: &File,
    hashers: &mut Hashers,
    mut buffer: Vec<u8>,
    from: u64,
    to: u64,
) -> io::Result<Vec<u8>> {
    let mut at = from;
    while at < to {
        let n = WRITE_BUFFER.min((to - at) as usize);
        buffer.resize(n, 0);
        file.read_exact_at(&mut buffer, at)?;
        buffer = hashers.update(buffer);
        at += n as u64;
    }
    Ok(buffer)
}

pub(super) async fn save_periodically(shared: Arc<Shared>, path: PathBuf) {
    let mut interval = tokio::time::interval(STATE_INTERVAL);
    loop {
        interval.tick().await;
        if let Err(e) = save_state(&path, &shared.state()) {
            tracing::warn!("saving download state {}: {e}", path.display());
        }
    }
}

/// Writes the state by rename, so a kill mid-write leaves the old state.
pub(super) fn save_state(path: &Path, state: &State) -> io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    fs::write(&tmp, serde_json::to_vec(state)?)?;
    fs::rename(&tmp, path)
}

/// Opens the partial file, resuming when its saved state describes this
/// blob (its part size wins over `part_size`, so a rerun with another
/// `--parallel` keeps the bytes); otherwise starts over with an empty sparse file.
pub(super) fn open_partial(
    partial: &Path,
    state_path: &Path,
    size: u64,
    part_size: u64,
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
            && s.part_size > 0
            && s.done.len() as u64 == size.div_ceil(s.part_size).max(1)
            && file_len == Some(size)
            && s.done.iter().enumerate().all(|(p, &d)| {
                p as u64 * s.part_size + d <= ((p as u64 + 1) * s.part_size).min(size)
            })
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
            let parts = size.div_ceil(part_size.max(1)).max(1) as usize;
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

    fn shared(size: u64, part_size: u64, done: &[u64]) -> Shared {
        let dir = tempfile::tempdir().unwrap();
        let file = File::create(dir.path().join("f")).unwrap();
        let state = State {
            size,
            part_size,
            done: done.to_vec(),
        };
        let progress =
            crate::progress::Progress::new(crate::progress::ProgressMode::Quiet).blob("b", size, 0);
        Shared::new(file, Path::new("f"), &state, Vec::new(), progress).0
    }

    #[test]
    fn frontier_is_the_end_of_the_contiguous_written_prefix() {
        assert_eq!(shared(25, 10, &[10, 3, 5]).frontier(), 13);
        assert_eq!(shared(25, 10, &[4, 10, 5]).frontier(), 4);
        assert_eq!(shared(25, 10, &[10, 10, 5]).frontier(), 25);
        assert_eq!(shared(25, 10, &[10, 10, 4]).frontier(), 24);
    }

    #[test]
    fn saved_state_is_resumed_only_when_it_describes_this_download() {
        let dir = tempfile::tempdir().unwrap();
        let (partial, state) = (dir.path().join("p"), dir.path().join("p.json"));
        let (_, fresh) = open_partial(&partial, &state, 25, 10).unwrap();
        assert_eq!(fresh.done, vec![0, 0, 0]);
        assert_eq!(
            fs::metadata(&partial).unwrap().len(),
            25,
            "sparse file of the full size"
        );
        let saved = |done: Vec<u64>| {
            save_state(
                &state,
                &State {
                    size: 25,
                    part_size: 10,
                    done,
                },
            )
            .unwrap()
        };
        saved(vec![10, 2, 0]);
        let (_, resumed) = open_partial(&partial, &state, 25, 10).unwrap();
        assert_eq!(resumed.done, vec![10, 2, 0]);
        // Another part size asked for (--parallel changed): the saved one wins.
        let (_, kept) = open_partial(&partial, &state, 25, 5).unwrap();
        assert_eq!((kept.part_size, kept.done), (10, vec![10, 2, 0]));
        // A state claiming more than a part holds: start over.
        saved(vec![11, 0, 0]);
        let (_, bogus) = open_partial(&partial, &state, 25, 10).unwrap();
        assert_eq!(bogus.done, vec![0, 0, 0]);
        // Another blob size: start over.
        saved(vec![10, 2, 0]);
        let (_, other) = open_partial(&partial, &state, 26, 10).unwrap();
        assert_eq!((other.size, other.done), (26, vec![0, 0, 0]));
    }

    #[test]
    fn in_order_buffers_are_hashed_from_memory_and_the_rest_from_disk() {
        let data: Vec<u8> = (0..40u32).map(|i| (i * 7) as u8).collect();
        let expected = format!("sha256:{}", hex::encode(Sha256::digest(&data)));
        let dir = tempfile::tempdir().unwrap();
        let progress = crate::progress::Progress::new(crate::progress::ProgressMode::Quiet);

        // Handed over in order and never written: only the in-memory path can
        // produce the right digest (the file holds zeros).
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join("a"))
            .unwrap();
        file.set_len(40).unwrap();
        let state = State {
            size: 40,
            part_size: 40,
            done: vec![0],
        };
        let (shared, hot) = Shared::new(
            file,
            Path::new("a"),
            &state,
            vec![0],
            progress.blob("a", 40, 0),
        );
        for offset in [0usize, 16, 32] {
            let end = (offset + 16).min(40);
            shared.written(0, offset as u64, data[offset..end].to_vec());
        }
        assert_eq!(
            hash_blocking(&shared, hot, Hashers::new(None)).unwrap().0,
            expected
        );

        // Written to disk but handed over out of order: read back from the file.
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join("b"))
            .unwrap();
        file.write_all_at(&data, 0).unwrap();
        let state = State {
            size: 40,
            part_size: 20,
            done: vec![0, 0],
        };
        let (shared, hot) = Shared::new(
            file,
            Path::new("b"),
            &state,
            vec![0, 1],
            progress.blob("b", 40, 0),
        );
        shared.written(1, 20, data[20..].to_vec());
        shared.written(0, 0, data[..20].to_vec());
        assert_eq!(
            hash_blocking(&shared, hot, Hashers::new(None)).unwrap().0,
            expected
        );
    }

    #[test]
    fn the_layer_hasher_sees_the_same_bytes_as_the_blob_hasher() {
        let data: Vec<u8> = (0..3000u32).map(|i| (i * 13) as u8).collect();
        let dir = tempfile::tempdir().unwrap();
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join("c"))
            .unwrap();
        file.write_all_at(&data, 0).unwrap();
        let state = State {
            size: 3000,
            part_size: 1000,
            done: vec![0, 0, 0],
        };
        let progress = crate::progress::Progress::new(crate::progress::ProgressMode::Quiet);
        let (shared, hot) = Shared::new(
            file,
            Path::new("c"),
            &state,
            vec![0, 1, 2],
            progress.blob("c", 3000, 0),
        );
        // In order from memory, then out of order (read back from disk).
        shared.written(0, 0, data[..1000].to_vec());
        shared.written(2, 2000, data[2000..].to_vec());
        shared.written(1, 1000, data[1000..2000].to_vec());
        let mut tar = Sha256::new();
        tar.update(b"header");
        let (blob, tar) = hash_blocking(&shared, hot, Hashers::new(Some(tar))).unwrap();
        assert_eq!(
            blob,
            format!("sha256:{}", hex::encode(Sha256::digest(&data)))
        );
        let mut expected = Sha256::new();
        expected.update(b"header");
        expected.update(&data);
        assert_eq!(tar.unwrap().finalize(), expected.finalize());
    }
}

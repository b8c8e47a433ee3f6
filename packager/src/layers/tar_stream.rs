//! The byte plan of a tar layer and a reader over it. File bodies are read
//! from disk in place, so a 3 GB weights layer costs no copy and no temp file.

use std::fs::File;
use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::Arc;

use super::{LayerError, LayerSpec, Source};

/// Part of the digest-cache key: bump it when the tar encoding changes.
pub(super) const FORMAT_VERSION: &str = "kiln-tar-v1";

pub(super) enum Segment {
    Bytes(Arc<[u8]>),
    File { path: PathBuf, len: u64 },
    Zeros(u64),
}

impl Segment {
    pub(super) fn len(&self) -> u64 {
        match self {
            Segment::Bytes(b) => b.len() as u64,
            Segment::File { len, .. } => *len,
            Segment::Zeros(n) => *n,
        }
    }
}

/// GNU header(s) for one entry: a `././@LongLink` entry precedes it when the
/// path does not fit in 100 bytes, and sizes of 8 GiB and more are written in
/// GNU base-256 (the `tar` crate does both; the data itself is not written).
pub(super) fn header_bytes(
    path: &str,
    mode: u32,
    size: Option<u64>,
) -> Result<Vec<u8>, LayerError> {
    let mut header = tar::Header::new_gnu();
    header.set_mode(mode);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    let name = match size {
        Some(size) => {
            header.set_entry_type(tar::EntryType::Regular);
            header.set_size(size);
            path.to_string()
        }
        None => {
            header.set_entry_type(tar::EntryType::Directory);
            header.set_size(0);
            format!("{path}/")
        }
    };
    let mut builder = tar::Builder::new(Vec::new());
    // With an empty body `append_data` writes exactly the header blocks.
    builder
        .append_data(&mut header, &name, io::empty())
        .map_err(|_| LayerError::Path(path.to_string()))?;
    let mut bytes = builder
        .into_inner()
        .map_err(|_| LayerError::Path(path.to_string()))?;
    // `into_inner` also writes the two zero blocks that end an archive.
    bytes.truncate(bytes.len().saturating_sub(1024));
    Ok(bytes)
}

pub(super) fn plan(spec: &LayerSpec) -> Result<Vec<Segment>, LayerError> {
    let mut segments = Vec::new();
    for (path, mode, source) in spec.entries() {
        let size = source.map(Source::len);
        segments.push(Segment::Bytes(Arc::from(header_bytes(path, mode, size)?)));
        match source {
            None => {}
            Some(Source::Bytes(b)) => segments.push(Segment::Bytes(b.clone())),
            Some(Source::File { path, len, .. }) => segments.push(Segment::File {
                path: path.clone(),
                len: *len,
            }),
        }
        let pad = size.unwrap_or(0).next_multiple_of(512) - size.unwrap_or(0);
        if pad > 0 {
            segments.push(Segment::Zeros(pad));
        }
    }
    // End of archive: two zero blocks.
    segments.push(Segment::Zeros(1024));
    Ok(segments)
}

/// Reads a layer's bytes segment by segment.
pub struct LayerReader {
    segments: std::vec::IntoIter<Segment>,
    current: Option<Current>,
}

enum Current {
    Bytes(Arc<[u8]>, usize),
    File {
        file: File,
        path: PathBuf,
        remaining: u64,
        expected: u64,
    },
    Zeros(u64),
}

impl LayerReader {
    pub(super) fn new(segments: Vec<Segment>) -> LayerReader {
        LayerReader {
            segments: segments.into_iter(),
            current: None,
        }
    }

    /// Like `Read::read`, with an error that names the file at fault.
    pub fn read_layer(&mut self, buf: &mut [u8]) -> Result<usize, LayerError> {
        loop {
            if buf.is_empty() {
                return Ok(0);
            }
            let current = match &mut self.current {
                Some(c) => c,
                None => match self.segments.next() {
                    None => return Ok(0),
                    Some(Segment::Bytes(b)) => self.current.insert(Current::Bytes(b, 0)),
                    Some(Segment::Zeros(n)) => self.current.insert(Current::Zeros(n)),
                    Some(Segment::File { path, len }) => {
                        let file = File::open(&path).map_err(|error| LayerError::Read {
                            path: path.clone(),
                            error,
                        })?;
                        self.current.insert(Current::File {
                            file,
                            path,
                            remaining: len,
                            expected: len,
                        })
                    }
                },
            };
            let n = match current {
                Current::Bytes(b, pos) => {
                    let n = (b.len() - *pos).min(buf.len());
                    buf[..n].copy_from_slice(&b[*pos..*pos + n]);
                    *pos += n;
                    n
                }
                Current::Zeros(remaining) => {
                    let n = (*remaining).min(buf.len() as u64) as usize;
                    buf[..n].fill(0);
                    *remaining -= n as u64;
                    n
                }
                Current::File {
                    file,
                    path,
                    remaining,
                    expected,
                } => {
                    let want = (*remaining).min(buf.len() as u64) as usize;
                    let n = if want == 0 {
                        0
                    } else {
                        file.read(&mut buf[..want])
                            .map_err(|error| LayerError::Read {
                                path: path.clone(),
                                error,
                            })?
                    };
                    if n == 0 && *remaining > 0 {
                        return Err(LayerError::Changed {
                            path: path.clone(),
                            expected: *expected,
                        });
                    }
                    *remaining -= n as u64;
                    if *remaining == 0 {
                        // A file that grew is as wrong as one that shrank.
                        let mut probe = [0u8; 1];
                        if file.read(&mut probe).map_err(|error| LayerError::Read {
                            path: path.clone(),
                            error,
                        })? > 0
                        {
                            return Err(LayerError::Changed {
                                path: path.clone(),
                                expected: *expected,
                            });
                        }
                    }
                    n
                }
            };
            let done = match current {
                Current::Bytes(b, pos) => *pos == b.len(),
                Current::Zeros(r) | Current::File { remaining: r, .. } => *r == 0,
            };
            if done {
                self.current = None;
            }
            if n > 0 {
                return Ok(n);
            }
        }
    }
}

impl Read for LayerReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.read_layer(buf).map_err(|e| match e {
            LayerError::Read { error, .. } => error,
            other => io::Error::other(other.to_string()),
        })
    }
}

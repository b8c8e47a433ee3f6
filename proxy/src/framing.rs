//! Response framing: cutting an upstream body stream into whole frames, so a
//! response plugin always sees a complete unit — one NDJSON line of Ollama's
//! `/api/*` streams, or one SSE event of the OpenAI-compatible `/v1/*`
//! streams — however the bytes were split into reads.
//!
//! Partial frames are buffered across reads, but only up to a limit: a frame
//! that grows past it is an error, never unbounded memory (a broken or
//! hostile upstream could otherwise send one endless line).
//!
//! Pure: no I/O, no async; the response stage feeds it reads and drains
//! frames.

use bytes::{Bytes, BytesMut};

/// How frames are delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// One JSON value per line, each ended by `\n` (`application/x-ndjson`).
    Ndjson,
    /// Server-sent events (`text/event-stream`): lines ended by `\n`, `\r\n`
    /// or `\r`, an event ended by an empty line.
    Sse,
}

impl Format {
    fn unit(self) -> &'static str {
        match self {
            Format::Ndjson => "NDJSON line",
            Format::Sse => "SSE event",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error(
        "Ollama sent a {unit} longer than {limit} bytes; the response plugins cannot inspect it \
         (raise limits.max_body_bytes if such chunks are expected)"
    )]
    TooLong { unit: &'static str, limit: usize },
}

/// Splits a byte stream into whole frames of one [`Format`].
pub struct Framer {
    format: Format,
    limit: usize,
    /// A read that arrived while nothing was pending, kept as it came: whole
    /// frames are cut from it without copying (the common case: Ollama
    /// writes one chunk per read). Moved into `buf` once only a partial
    /// frame is left in it; never non-empty together with `buf`.
    head: Bytes,
    buf: BytesMut,
    /// Bytes of the pending data already searched for the end of its first
    /// frame, so a frame that arrives in many small reads is scanned once,
    /// not once per read.
    scanned: usize,
    /// SSE only: where the current line starts, to notice an empty line.
    line_start: usize,
}

impl Framer {
    /// A framer that refuses frames longer than `limit` bytes (terminator included).
    pub fn new(format: Format, limit: usize) -> Framer {
        Framer {
            format,
            limit: limit.max(1),
            head: Bytes::new(),
            buf: BytesMut::new(),
            scanned: 0,
            line_start: 0,
        }
    }

    pub fn format(&self) -> Format {
        self.format
    }

    /// Bytes held that do not form a whole frame yet (after [`Framer::next_frame`]
    /// returned `None`).
    pub fn buffered(&self) -> usize {
        self.head.len() + self.buf.len()
    }

    /// Adds the next read of the body. Whole frames come out of [`Framer::next_frame`].
    pub fn push(&mut self, data: &[u8]) {
        self.spill();
        self.buf.extend_from_slice(data);
    }

    /// Like [`Framer::push`], without copying when nothing is pending.
    pub fn push_bytes(&mut self, data: Bytes) {
        if self.head.is_empty() && self.buf.is_empty() {
            self.head = data;
        } else {
            self.push(&data);
        }
    }

    fn spill(&mut self) {
        if !self.head.is_empty() {
            self.buf.extend_from_slice(&self.head);
            self.head = Bytes::new();
        }
    }

    /// The next whole frame, terminator included, or `None` until more bytes
    /// arrive. An error when the pending frame is already over the limit;
    /// the framer is then unusable (the stream must end).
    pub fn next_frame(&mut self) -> Result<Option<Bytes>, FrameError> {
        let in_head = !self.head.is_empty();
        let data: &[u8] = if in_head { &self.head } else { &self.buf };
        let len = data.len();
        let end = match self.format {
            Format::Ndjson => find_line_end(data, &mut self.scanned),
            Format::Sse => find_event_end(data, &mut self.scanned, &mut self.line_start),
        };
        match end {
            Some(end) if end <= self.limit => {
                self.scanned = 0;
                self.line_start = 0;
                Ok(Some(if in_head {
                    self.head.split_to(end)
                } else {
                    self.buf.split_to(end).freeze()
                }))
            }
            Some(_) => Err(self.too_long()),
            None if len > self.limit => Err(self.too_long()),
            None => {
                // Only part of a frame left: later reads append to it.
                self.spill();
                Ok(None)
            }
        }
    }

    /// At the end of the body: what is left, as a last frame without its
    /// terminator (a `stream:false` body, or a stream cut short), unless it
    /// is only whitespace. Call after `next_frame` returned `None`.
    pub fn finish(&mut self) -> Result<Option<Bytes>, FrameError> {
        self.spill();
        if self.buf.len() > self.limit {
            return Err(self.too_long());
        }
        let rest = self.buf.split().freeze();
        self.scanned = 0;
        self.line_start = 0;
        if rest.iter().all(u8::is_ascii_whitespace) {
            return Ok(None);
        }
        Ok(Some(rest))
    }

    fn too_long(&self) -> FrameError {
        FrameError::TooLong {
            unit: self.format.unit(),
            limit: self.limit,
        }
    }
}

fn find_line_end(data: &[u8], scanned: &mut usize) -> Option<usize> {
    match memchr::memchr(b'\n', &data[*scanned..]) {
        Some(i) => Some(*scanned + i + 1),
        None => {
            *scanned = data.len();
            None
        }
    }
}

/// The end of the first event: one past the line break of its empty line.
/// Line breaks are `\n`, `\r\n` or a lone `\r` (the SSE grammar), so a `\r`
/// at the very end of the data must wait for the next byte.
fn find_event_end(data: &[u8], scanned: &mut usize, line_start: &mut usize) -> Option<usize> {
    let mut i = *scanned;
    while let Some(off) = memchr::memchr2(b'\n', b'\r', &data[i..]) {
        let p = i + off;
        let next = if data[p] == b'\r' {
            match data.get(p + 1) {
                None => {
                    *scanned = p;
                    return None;
                }
                Some(b'\n') => p + 2,
                Some(_) => p + 1,
            }
        } else {
            p + 1
        };
        if p == *line_start {
            return Some(next);
        }
        *line_start = next;
        i = next;
    }
    *scanned = data.len();
    None
}

/// The value of an SSE event's `data` field: its `data:` lines joined by
/// `\n`, one leading space stripped from each (the SSE rules). `None` for an
/// event without data (a comment, a lone `event:` or `id:`).
pub fn sse_data(event: &[u8]) -> Option<std::borrow::Cow<'_, [u8]>> {
    // Most events are one `data:` line (all of Ollama's OpenAI events are):
    // borrowed after one search for the line end.
    if let Some(rest) = event.strip_prefix(b"data:") {
        let end = memchr::memchr2(b'\n', b'\r', rest).unwrap_or(rest.len());
        if rest[end..].iter().all(|b| matches!(b, b'\n' | b'\r')) {
            let value = &rest[..end];
            return Some(std::borrow::Cow::Borrowed(
                value.strip_prefix(b" ").unwrap_or(value),
            ));
        }
    }
    let mut lines = event
        .split(|b| *b == b'\n' || *b == b'\r')
        .filter_map(|line| {
            let value = line.strip_prefix(b"data")?;
            match value.first() {
                None => Some(&value[..0]),
                Some(b':') => Some(value[1..].strip_prefix(b" ").unwrap_or(&value[1..])),
                Some(_) => None,
            }
        });
    let first = lines.next()?;
    match lines.next() {
        None => Some(std::borrow::Cow::Borrowed(first)),
        Some(second) => {
            let mut joined = first.to_vec();
            for part in std::iter::once(second).chain(lines) {
                joined.push(b'\n');
                joined.extend_from_slice(part);
            }
            Some(std::borrow::Cow::Owned(joined))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `reads` one by one and collects every frame, then the rest.
    fn frames(format: Format, limit: usize, reads: &[&[u8]]) -> Result<Vec<Vec<u8>>, FrameError> {
        let mut f = Framer::new(format, limit);
        let mut out = Vec::new();
        for (i, r) in reads.iter().enumerate() {
            // Both ways in: kept as the read's own bytes, and copied.
            if i % 2 == 0 {
                f.push_bytes(Bytes::copy_from_slice(r));
            } else {
                f.push(r);
            }
            while let Some(frame) = f.next_frame()? {
                out.push(frame.to_vec());
            }
        }
        if let Some(rest) = f.finish()? {
            out.push(rest.to_vec());
        }
        Ok(out)
    }

    fn all_splits(input: &[u8]) -> impl Iterator<Item = Vec<&[u8]>> {
        (0..=input.len()).flat_map(move |a| {
            (a..=input.len()).map(move |b| vec![&input[..a], &input[a..b], &input[b..]])
        })
    }

    #[test]
    fn ndjson_lines_come_out_whole_however_the_reads_split_them() {
        let body = b"{\"response\":\"The \"}\n{\"response\":\"sky\"}\n{\"done\":true}\n";
        let want: Vec<Vec<u8>> = vec![
            b"{\"response\":\"The \"}\n".to_vec(),
            b"{\"response\":\"sky\"}\n".to_vec(),
            b"{\"done\":true}\n".to_vec(),
        ];
        for reads in all_splits(body) {
            assert_eq!(
                frames(Format::Ndjson, 1024, &reads).unwrap(),
                want,
                "{reads:?}"
            );
        }
    }

    #[test]
    fn sse_events_come_out_whole_however_the_reads_split_them() {
        let body = b"data: {\"a\":1}\n\ndata: {\"b\":2}\r\n\r\n: keep-alive\n\ndata: [DONE]\n\n";
        let want: Vec<Vec<u8>> = vec![
            b"data: {\"a\":1}\n\n".to_vec(),
            b"data: {\"b\":2}\r\n\r\n".to_vec(),
            b": keep-alive\n\n".to_vec(),
            b"data: [DONE]\n\n".to_vec(),
        ];
        for reads in all_splits(body) {
            assert_eq!(
                frames(Format::Sse, 1024, &reads).unwrap(),
                want,
                "{reads:?}"
            );
        }
    }

    #[test]
    fn sse_accepts_lone_cr_line_breaks_and_multi_line_events() {
        let body = b"event: x\rdata: 1\r\rid: 7\ndata: a\ndata: b\n\n";
        let got = frames(Format::Sse, 1024, &[body]).unwrap();
        assert_eq!(
            got,
            vec![
                b"event: x\rdata: 1\r\r".to_vec(),
                b"id: 7\ndata: a\ndata: b\n\n".to_vec()
            ]
        );
        assert_eq!(sse_data(&got[0]).unwrap().as_ref(), b"1");
        assert_eq!(sse_data(&got[1]).unwrap().as_ref(), b"a\nb");
    }

    #[test]
    fn a_trailing_cr_waits_for_the_next_byte() {
        let mut f = Framer::new(Format::Sse, 1024);
        f.push(b"data: x\r\n\r");
        assert_eq!(
            f.next_frame().unwrap(),
            None,
            "\\r may be the start of \\r\\n"
        );
        f.push(b"\ndata: y\n\n");
        assert_eq!(
            f.next_frame().unwrap().unwrap().as_ref(),
            b"data: x\r\n\r\n"
        );
        assert_eq!(f.next_frame().unwrap().unwrap().as_ref(), b"data: y\n\n");
        assert_eq!(f.next_frame().unwrap(), None);
        assert_eq!(f.buffered(), 0);
    }

    #[test]
    fn a_body_without_final_terminator_is_the_last_frame() {
        // A stream:false answer is one JSON object, often without a newline.
        let got = frames(Format::Ndjson, 1024, &[b"{\"done\":", b"true}"]).unwrap();
        assert_eq!(got, vec![b"{\"done\":true}".to_vec()]);
        // Whitespace left at the end is not a frame.
        let got = frames(Format::Sse, 1024, &[b"data: 1\n\n\n"]).unwrap();
        assert_eq!(got, vec![b"data: 1\n\n".to_vec(), b"\n".to_vec()]);
        let got = frames(Format::Ndjson, 1024, &[b"{}\n  \n", b" "]).unwrap();
        assert_eq!(got, vec![b"{}\n".to_vec(), b"  \n".to_vec()]);
    }

    #[test]
    fn a_frame_over_the_limit_is_an_error_not_memory() {
        let err = frames(Format::Ndjson, 8, &[b"0123", b"45678", b"9\n"]).unwrap_err();
        assert_eq!(
            err,
            FrameError::TooLong {
                unit: "NDJSON line",
                limit: 8
            }
        );
        assert!(err.to_string().contains("longer than 8 bytes"), "{err}");
        // Exactly at the limit, terminator included, is fine.
        assert_eq!(
            frames(Format::Ndjson, 8, &[b"0123456\n"]).unwrap(),
            vec![b"0123456\n".to_vec()]
        );
        // A whole frame that is too long is refused too, even if it arrived in one read.
        assert!(frames(Format::Sse, 8, &[b"data: 12345\n\n"]).is_err());
        // And the unterminated rest at the end.
        assert!(frames(Format::Ndjson, 4, &[b"123456"]).is_err());
        // Many short frames in one big read are not limited in total.
        let many = b"{}\n".repeat(1000);
        assert_eq!(frames(Format::Ndjson, 8, &[&many]).unwrap().len(), 1000);
    }

    #[test]
    fn a_frame_in_many_small_reads_is_scanned_once() {
        // Byte-at-a-time reads of a long line: the scan position moves on,
        // so this stays linear (and fast) rather than quadratic.
        let mut f = Framer::new(Format::Sse, 1 << 20);
        let line = [b"data: ".as_slice(), &[b'x'; 200_000], b"\n\n"].concat();
        let mut n = 0;
        for b in line.chunks(1) {
            f.push(b);
            if let Some(frame) = f.next_frame().unwrap() {
                assert_eq!(frame.len(), line.len());
                n += 1;
            }
        }
        assert_eq!(n, 1);
    }

    #[test]
    fn sse_data_reads_the_data_field() {
        assert_eq!(
            sse_data(b"data: {\"x\":1}\n\n").unwrap().as_ref(),
            b"{\"x\":1}"
        );
        assert_eq!(sse_data(b"data:[DONE]\n\n").unwrap().as_ref(), b"[DONE]");
        assert_eq!(sse_data(b"data\n\n").unwrap().as_ref(), b"");
        assert_eq!(sse_data(b": comment\n\n"), None);
        assert_eq!(sse_data(b"event: ping\n\n"), None);
        assert_eq!(sse_data(b"datum: 1\n\n"), None, "field names match whole");
    }
}

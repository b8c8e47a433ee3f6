//! Bodies in both directions: reading a client's request body under a size
//! limit and an idle timeout, and passing Ollama's response through chunk by
//! chunk — never buffered — while watching for its end, its token counts,
//! the request deadline, and a stream that breaks off.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::time::{Instant, Sleep};

use crate::routes::{ApiStyle, error_body, sse_error};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type ReqBody = UnsyncBoxBody<Bytes, BoxError>;
pub type RespBody = UnsyncBoxBody<Bytes, BoxError>;

pub fn full(bytes: impl Into<Bytes>) -> UnsyncBoxBody<Bytes, BoxError> {
    http_body_util::Full::new(bytes.into())
        .map_err(|e| -> BoxError { match e {} })
        .boxed_unsync()
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("request body is larger than the limit of {0} bytes")]
    TooLarge(usize),
    #[error("client sent no body data for {0:?}")]
    Idle(Duration),
    #[error("cannot read the request body: {0}")]
    Broken(String),
}

/// Reads a whole (small, inference) request body: at most `limit` bytes,
/// with at most `idle` between pieces, so a slow client cannot hold a slot.
pub async fn read_limited(
    mut body: Incoming,
    limit: usize,
    idle: Duration,
) -> Result<Bytes, ReadError> {
    let mut buf = BytesMut::new();
    loop {
        let frame = match tokio::time::timeout(idle, body.frame()).await {
            Err(_) => return Err(ReadError::Idle(idle)),
            Ok(None) => return Ok(buf.freeze()),
            Ok(Some(Err(e))) => return Err(ReadError::Broken(e.to_string())),
            Ok(Some(Ok(frame))) => frame,
        };
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > limit {
                return Err(ReadError::TooLarge(limit));
            }
            buf.extend_from_slice(&data);
        }
    }
}

/// How the response is framed, which decides how an error can still be told
/// to a client once the status line has gone out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// `application/x-ndjson`: one more `{"error":…}` line, as Ollama itself does.
    Ndjson,
    /// `text/event-stream`: one more `data: {"error":{…}}` event.
    Sse,
    /// Anything else: the connection is cut, so the client sees a truncated body.
    Opaque,
}

impl Framing {
    pub fn of_content_type(ct: Option<&str>) -> Framing {
        match ct.map(|c| {
            c.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        }) {
            Some(c) if c == "application/x-ndjson" => Framing::Ndjson,
            Some(c) if c == "text/event-stream" => Framing::Sse,
            _ => Framing::Opaque,
        }
    }
}

/// How a response body ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Completed,
    ClientGone,
    UpstreamBroke,
    TimedOut,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Completed => "completed",
            Outcome::ClientGone => "client_disconnected",
            Outcome::UpstreamBroke => "upstream_broke",
            Outcome::TimedOut => "timed_out",
        }
    }
}

/// Called once when a passthrough body ends, however it ends.
pub trait OnEnd: Send {
    fn on_end(&mut self, outcome: Outcome, bytes: u64, tokens: Option<(u64, u64)>);
}

/// The two clocks of a streamed answer: the request deadline, and the idle
/// timeout between pieces of Ollama's body. The idle timer is not moved on
/// every piece (a timer-wheel update per token); when it fires it checks
/// when data last came and re-arms from there.
pub struct StreamTimers {
    deadline: Pin<Box<Sleep>>,
    idle: Pin<Box<Sleep>>,
    idle_after: Duration,
    last_data: Instant,
}

impl StreamTimers {
    pub fn new(deadline: Instant, idle_after: Duration) -> StreamTimers {
        StreamTimers {
            deadline: Box::pin(tokio::time::sleep_until(deadline)),
            idle: Box::pin(tokio::time::sleep(idle_after)),
            idle_after,
            last_data: Instant::now(),
        }
    }

    /// Ollama sent something.
    pub fn data_came(&mut self) {
        self.last_data = Instant::now();
    }

    /// Called when Ollama's body is pending: why the answer must end now,
    /// if it must. Registers the task to be woken when a clock runs out.
    pub fn poll_expired(&mut self, cx: &mut Context<'_>) -> Option<String> {
        if self.deadline.as_mut().poll(cx).is_ready() {
            return Some("request timed out (limits.request_timeout_s)".into());
        }
        while self.idle.as_mut().poll(cx).is_ready() {
            let quiet_until = self.last_data + self.idle_after;
            if Instant::now() >= quiet_until {
                return Some(format!(
                    "Ollama sent nothing for {:?} (limits.idle_timeout_s)",
                    self.idle_after
                ));
            }
            // Data came since the timer was set: re-arm from the last data.
            self.idle.as_mut().reset(quiet_until);
        }
        None
    }
}

/// The last two bytes a stream sent to the client, so that an error chunk
/// written after them starts on a fresh line (NDJSON) or event (SSE).
#[derive(Clone, Copy, Debug)]
pub struct SentTail([u8; 2]);

impl Default for SentTail {
    /// Nothing sent yet: as if after a complete line and event.
    fn default() -> Self {
        SentTail([b'\n', b'\n'])
    }
}

impl SentTail {
    /// `data` went out after what this tail ends.
    pub fn follow(&mut self, data: &[u8]) {
        let before = self.0;
        self.0 = match data.len() {
            0 => before,
            1 => [before[1], data[0]],
            n => [data[n - 2], data[n - 1]],
        };
    }

    /// The chunk that ends the stream with `message` in the client's format:
    /// an Ollama `{"error"}` line, or an SSE error event of `style`.
    pub fn error_chunk(self, sse: bool, style: ApiStyle, message: &str) -> Vec<u8> {
        let mut out = Vec::new();
        if sse {
            if self.0 != [b'\n', b'\n'] {
                out.extend_from_slice(b"\n\n");
            }
            out.extend_from_slice(&sse_error(style, 500, message));
        } else {
            if self.0[1] != b'\n' {
                out.push(b'\n');
            }
            out.extend(error_body(ApiStyle::Ollama, 500, message));
            out.push(b'\n');
        }
        out
    }
}

/// Ollama's response, passed through frame by frame.
pub struct Passthrough<E: OnEnd> {
    inner: Incoming,
    framing: Framing,
    style: ApiStyle,
    timers: StreamTimers,
    tap: TokenTap,
    bytes: u64,
    tail: SentTail,
    state: State,
    on_end: Option<E>,
    /// Held until the body ends or is dropped: the admission slot, typically.
    _guard: Option<Box<dyn Send>>,
    stashed: Option<Stashed>,
}

/// Found while merging ready frames, delivered at the next poll.
enum Stashed {
    End,
    Error(String),
    Frame(Frame<Bytes>),
}

/// Merge at most this much already-received data into one frame.
pub(crate) const COALESCE_MAX: usize = 32 * 1024;

#[derive(PartialEq, Eq)]
enum State {
    Streaming,
    /// An error line went out; the next poll ends the body.
    Ending,
    Done,
}

impl<E: OnEnd> Passthrough<E> {
    pub fn new(
        inner: Incoming,
        framing: Framing,
        style: ApiStyle,
        deadline: Instant,
        idle_after: Duration,
        guard: Option<Box<dyn Send>>,
        on_end: E,
    ) -> Self {
        Passthrough {
            inner,
            framing,
            style,
            timers: StreamTimers::new(deadline, idle_after),
            tap: TokenTap::default(),
            bytes: 0,
            tail: SentTail::default(),
            state: State::Streaming,
            on_end: Some(on_end),
            _guard: guard,
            stashed: None,
        }
    }

    /// Appends frames Ollama has already sent to `first`, without ever
    /// waiting for more: fewer, larger writes to the client, nothing delayed.
    fn coalesce(&mut self, first: Bytes, cx: &mut Context<'_>) -> Bytes {
        let mut merged: Option<BytesMut> = None;
        let mut len = first.len();
        while len < COALESCE_MAX && self.stashed.is_none() && !self.inner.is_end_stream() {
            match Pin::new(&mut self.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(more) => {
                        len += more.len();
                        merged
                            .get_or_insert_with(|| BytesMut::from(&first[..]))
                            .extend_from_slice(&more);
                    }
                    Err(other) => self.stashed = Some(Stashed::Frame(other)),
                },
                Poll::Ready(Some(Err(e))) => self.stashed = Some(Stashed::Error(e.to_string())),
                Poll::Ready(None) => self.stashed = Some(Stashed::End),
                Poll::Pending => break,
            }
        }
        merged.map_or(first, BytesMut::freeze)
    }

    /// Bookkeeping for data on its way to the client.
    fn observe(&mut self, data: &[u8]) {
        self.bytes += data.len() as u64;
        self.tap.feed(data);
        self.tail.follow(data);
        self.timers.data_came();
    }

    fn end(&mut self, outcome: Outcome) {
        self.state = State::Done;
        if let Some(mut e) = self.on_end.take() {
            e.on_end(outcome, self.bytes, self.tap.finish());
        }
        // Free the admission slot now, not when hyper drops the body.
        self._guard = None;
    }

    /// The stream cannot continue: tell the client in its format when the
    /// framing allows it, otherwise cut the connection.
    fn fail(
        &mut self,
        outcome: Outcome,
        message: String,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.end(outcome);
        let sse = match self.framing {
            Framing::Ndjson => false,
            Framing::Sse => true,
            Framing::Opaque => return Poll::Ready(Some(Err(message.into()))),
        };
        let line = self.tail.error_chunk(sse, self.style, &message);
        self.state = State::Ending;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(line)))))
    }
}

impl<E: OnEnd + Unpin> Body for Passthrough<E> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match this.state {
            State::Done => return Poll::Ready(None),
            State::Ending => {
                this.state = State::Done;
                return Poll::Ready(None);
            }
            State::Streaming => {}
        }
        // What the previous poll found after the data it merged.
        match this.stashed.take() {
            Some(Stashed::End) => {
                this.end(Outcome::Completed);
                return Poll::Ready(None);
            }
            Some(Stashed::Error(e)) => {
                let msg = format!("Ollama's response broke off mid-stream: {e}");
                return this.fail(Outcome::UpstreamBroke, msg);
            }
            Some(Stashed::Frame(f)) => return Poll::Ready(Some(Ok(f))),
            None => {}
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let frame = match frame.into_data() {
                    Ok(data) => {
                        let data = this.coalesce(data, cx);
                        this.observe(&data);
                        Frame::data(data)
                    }
                    Err(other) => other,
                };
                // With a Content-Length, hyper stops polling once it has the
                // bytes: the end is known now, not at a later poll.
                if this.stashed.is_none() && this.inner.is_end_stream() {
                    this.end(Outcome::Completed);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                this.end(Outcome::Completed);
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => this.fail(
                Outcome::UpstreamBroke,
                format!("Ollama's response broke off mid-stream: {e}"),
            ),
            Poll::Pending => match this.timers.poll_expired(cx) {
                Some(why) => this.fail(Outcome::TimedOut, why),
                None => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self.state {
            State::Done => true,
            State::Ending => false,
            State::Streaming => self.stashed.is_none() && self.inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        if self.state == State::Streaming {
            self.inner.size_hint()
        } else {
            SizeHint::default()
        }
    }
}

impl<E: OnEnd> Drop for Passthrough<E> {
    fn drop(&mut self) {
        if self.on_end.is_some() {
            if self.inner.is_end_stream() {
                self.end(Outcome::Completed);
                return;
            }
            // Dropped before its end: hyper gave up on the client. Dropping
            // `inner` closes the upstream connection, which is how Ollama
            // learns to stop generating and free the slot.
            self.end(Outcome::ClientGone);
        }
    }
}

/// Finds the token counts in Ollama's final chunk (`prompt_eval_count`,
/// `eval_count`) or OpenAI's usage (`prompt_tokens`, `completion_tokens`)
/// without holding more than the current line.
#[derive(Default)]
struct TokenTap {
    line: Vec<u8>,
    overflow: bool,
    found: Option<(u64, u64)>,
}

/// Ollama's final chunk (`"eval_count"`) or OpenAI's usage (`"usage"`).
fn mentions_counts(bytes: &[u8]) -> bool {
    memchr::memmem::find(bytes, b"\"eval_count\"").is_some()
        || memchr::memmem::find(bytes, b"\"usage\"").is_some()
}

/// A final chunk is small; longer lines are token text and are skipped.
const MAX_LINE: usize = 64 * 1024;

impl TokenTap {
    /// Looks at whole lines where they lie in `data`; only a line split across
    /// reads is copied, and only regions that mention a count are parsed.
    fn feed(&mut self, data: &[u8]) {
        let mut rest = data;
        if !self.line.is_empty() || self.overflow {
            let Some(nl) = memchr::memchr(b'\n', rest) else {
                self.push(rest);
                return;
            };
            self.push(&rest[..nl]);
            self.line_done();
            rest = &rest[nl + 1..];
        }
        let (whole, tail) = match memchr::memrchr(b'\n', rest) {
            Some(nl) => (&rest[..nl], &rest[nl + 1..]),
            None => (&rest[..0], rest),
        };
        if mentions_counts(whole) {
            for line in whole.split(|b| *b == b'\n') {
                self.inspect(line);
            }
        }
        self.push(tail);
    }

    fn push(&mut self, part: &[u8]) {
        if self.overflow || self.line.len() + part.len() > MAX_LINE {
            self.overflow = true;
            self.line.clear();
        } else {
            self.line.extend_from_slice(part);
        }
    }

    fn line_done(&mut self) {
        let line = std::mem::take(&mut self.line);
        if !self.overflow {
            self.inspect(&line);
        }
        self.line = line;
        self.line.clear();
        self.overflow = false;
    }

    fn inspect(&mut self, line: &[u8]) {
        let line = line.strip_prefix(b"data: ").unwrap_or(line);
        if !mentions_counts(line) {
            return;
        }
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(line) else {
            return;
        };
        let n = |p: &str| v.pointer(p).and_then(|x| x.as_u64());
        let counts = n("/prompt_eval_count")
            .zip(n("/eval_count"))
            .or_else(|| n("/usage/prompt_tokens").zip(n("/usage/completion_tokens")));
        if counts.is_some() {
            self.found = counts;
        }
    }

    /// The counts, after looking at a last line that had no newline (a `stream:false` body).
    fn finish(&mut self) -> Option<(u64, u64)> {
        if !self.line.is_empty() {
            self.line_done();
        }
        self.found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_tap_reads_final_chunks_split_across_reads() {
        let mut t = TokenTap::default();
        t.feed(b"{\"response\":\"a\",\"done\":false}\n{\"done\":true,\"prompt_eval_");
        t.feed(b"count\":12,\"eval_count\":34}\n");
        assert_eq!(t.finish(), Some((12, 34)));

        let mut t = TokenTap::default();
        t.feed(b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":5,\"total_tokens\":8}}\n\ndata: [DONE]\n\n");
        assert_eq!(t.finish(), Some((3, 5)));

        let mut t = TokenTap::default();
        t.feed(b"{\"message\":{},\"prompt_eval_count\":1,\"eval_count\":2}");
        assert_eq!(
            t.finish(),
            Some((1, 2)),
            "stream:false bodies have no newline"
        );
    }

    #[test]
    fn framing_follows_content_type() {
        assert_eq!(
            Framing::of_content_type(Some("application/x-ndjson")),
            Framing::Ndjson
        );
        assert_eq!(
            Framing::of_content_type(Some("text/event-stream; charset=utf-8")),
            Framing::Sse
        );
        assert_eq!(
            Framing::of_content_type(Some("application/json")),
            Framing::Opaque
        );
        assert_eq!(Framing::of_content_type(None), Framing::Opaque);
    }
}

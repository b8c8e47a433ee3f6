//! A streamed answer through the response hooks: Ollama's body is cut into
//! whole chunks (NDJSON lines or SSE events), each chunk goes through the
//! hooks and out again, and however the stream ends the client gets a
//! well-formed end in its own format — an error chunk when the status has
//! long been sent — while the hooks and the access log learn how it ended.
//!
//! Hooks run inline, on the task polling the body: a call costs
//! microseconds, less than a hop to the blocking pool would, and each call
//! is bounded by the plugin deadline. Like the passthrough body, each poll
//! takes every frame Ollama has already sent (up to 32 KiB), so the hooks
//! get them in one call and the client in one write when the proxy is
//! behind, and one at a time when it keeps pace.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::time::Instant;

use super::blocks::Blocks;
use super::chunk::{Chunk, Kind, Shape, Usage};
use super::edits::Edits;
use super::thinking::ThinkingEnd;
use super::transcript::Transcript;
use super::{ResponseContext, ResponseHooks, ResponseOutcome};
use crate::body::{BoxError, COALESCE_MAX, OnEnd, Outcome, SentTail, StreamTimers};
use crate::framing::{Format, Framer};
use crate::routes::ApiStyle;

/// How the streamed body is set up.
pub struct StreamSetup {
    pub format: Format,
    pub shape: Shape,
    pub style: ApiStyle,
    /// Longest chunk accepted (`limits.max_body_bytes`).
    pub max_chunk: usize,
    pub deadline: Instant,
    pub idle_after: Duration,
    pub hide_usage_chunk: bool,
}

pub struct FilteredStream<E: OnEnd> {
    inner: Incoming,
    framer: Framer,
    kind: Kind,
    shape: Shape,
    style: ApiStyle,
    hide_usage_chunk: bool,
    hooks: Box<dyn ResponseHooks>,
    /// The text sent, for an API that repeats it (see `transcript`).
    transcript: Option<Transcript>,
    /// Which blocks hold text, for an API that does not say at their end
    /// (see `blocks`).
    blocks: Option<Blocks>,
    /// Where the thinking ends, for an API that does not say (see `thinking`).
    thinking_end: Option<ThinkingEnd>,
    /// Whether the hooks changed the answer, for the fields that describe
    /// its text token by token (see `edits`).
    edits: Option<Edits>,
    /// The chunks of the current read, on their way through the hooks
    /// (kept to reuse its allocation).
    batch: Vec<Chunk>,
    ctx: ResponseContext,
    timers: StreamTimers,
    usage: Option<Usage>,
    bytes: u64,
    tail: SentTail,
    done: bool,
    on_end: Option<E>,
    /// Held until the body ends or is dropped: the admission slot.
    _guard: Option<Box<dyn Send>>,
}

impl<E: OnEnd> FilteredStream<E> {
    pub fn new(
        inner: Incoming,
        setup: StreamSetup,
        hooks: Box<dyn ResponseHooks>,
        ctx: ResponseContext,
        guard: Option<Box<dyn Send>>,
        on_end: E,
    ) -> Self {
        let kind = match setup.format {
            Format::Ndjson => Kind::Line,
            Format::Sse => Kind::Event,
        };
        FilteredStream {
            inner,
            framer: Framer::new(setup.format, setup.max_chunk),
            kind,
            shape: setup.shape,
            style: setup.style,
            hide_usage_chunk: setup.hide_usage_chunk,
            hooks,
            transcript: Transcript::of(setup.shape, kind),
            blocks: Blocks::of(setup.shape, kind),
            thinking_end: ThinkingEnd::of(setup.shape, kind),
            edits: Edits::of(setup.shape),
            batch: Vec::new(),
            ctx,
            timers: StreamTimers::new(setup.deadline, setup.idle_after),
            usage: None,
            bytes: 0,
            tail: SentTail::default(),
            done: false,
            on_end: Some(on_end),
            _guard: guard,
        }
    }

    /// Cuts every whole chunk out of what has arrived into `batch`.
    fn cut(&mut self) -> Result<(), String> {
        while let Some(frame) = self.framer.next_frame().map_err(|e| e.to_string())? {
            self.batch.push(Chunk::new(frame, self.kind, self.shape));
        }
        Ok(())
    }

    /// The chunks of `batch` through the hooks, their output appended to
    /// `out`; `Err` when a hook ended the stream (after the chunks it let go).
    fn process(&mut self, out: &mut Output) -> Result<(), String> {
        if self.batch.is_empty() {
            return Ok(());
        }
        for chunk in &mut self.batch {
            if let Some(b) = &mut self.blocks {
                b.mark(chunk);
            }
            if let Some(t) = &mut self.thinking_end {
                t.mark(chunk);
            }
            if let Some(u) = chunk.usage() {
                self.usage = Some(Usage::merged(self.usage, u));
            }
        }
        let result = self.hooks.on_chunks(&self.ctx, &mut self.batch);
        let sent = match &result {
            Ok(()) => self.batch.len(),
            Err(ended) => ended.sent,
        };
        // Draining drops the chunks past `sent` too: they never go out.
        for mut chunk in self.batch.drain(..).take(sent) {
            if let Some(e) = &mut self.edits {
                e.sent(&mut chunk);
            }
            if let Some(t) = &mut self.transcript {
                t.sent(&mut chunk);
            }
            if let Some(inserted) = chunk.inserted() {
                out.extend_from_slice(inserted);
            }
            if !(self.hide_usage_chunk && chunk.is_usage_only()) {
                out.push(chunk.raw());
            }
        }
        result.map_err(|ended| ended.stop.message)
    }

    /// Upstream finished: the last, unterminated chunk (if any), then the end.
    fn finish(&mut self, mut out: Output) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.framer.finish() {
            Ok(Some(rest)) => {
                self.batch.push(Chunk::new(rest, self.kind, self.shape));
                if let Err(m) = self.process(&mut out) {
                    return self.close_with_error(ResponseOutcome::EndedByPlugin, m, out);
                }
            }
            Ok(None) => {}
            Err(e) => {
                return self.close_with_error(ResponseOutcome::UpstreamFailed, e.to_string(), out);
            }
        }
        self.close(ResponseOutcome::Completed, out)
    }

    /// Ends the stream: hooks and access log told, slot freed, `out` sent last.
    fn close(
        &mut self,
        outcome: ResponseOutcome,
        out: Output,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.done = true;
        self.end(outcome, out.len() as u64);
        if out.is_empty() {
            return Poll::Ready(None);
        }
        Poll::Ready(Some(Ok(Frame::data(self.sent(out.freeze())))))
    }

    fn end(&mut self, outcome: ResponseOutcome, extra: u64) {
        if let Some(mut e) = self.on_end.take() {
            self.hooks.on_complete(&self.ctx, outcome, self.usage);
            let tokens = self.usage.map(|u| (u.prompt_tokens, u.completion_tokens));
            e.on_end(body_outcome(outcome), self.bytes + extra, tokens);
        }
        // Free the admission slot now, not when hyper drops the body.
        self._guard = None;
    }

    /// Ends the stream with one more chunk saying why, in the client's format.
    fn close_with_error(
        &mut self,
        outcome: ResponseOutcome,
        message: String,
        mut out: Output,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match outcome {
            ResponseOutcome::EndedByPlugin => {
                tracing::warn!(request_id = %self.ctx.request_id, reason = %message, "a response plugin ended the stream")
            }
            _ => {
                tracing::warn!(request_id = %self.ctx.request_id, reason = %message, "stream ended early")
            }
        }
        let mut tail = self.tail;
        tail.follow(out.bytes());
        out.extend_from_slice(&tail.error_chunk(self.kind == Kind::Event, self.style, &message));
        self.close(outcome, out)
    }

    fn sent(&mut self, data: Bytes) -> Bytes {
        self.bytes += data.len() as u64;
        self.tail.follow(&data);
        data
    }
}

/// What one read turns into: a single unchanged chunk goes out as the very
/// bytes that came in (no copy, the usual case when Ollama writes a chunk
/// per read); several are joined into one frame.
#[derive(Default)]
struct Output {
    first: Option<Bytes>,
    joined: BytesMut,
}

impl Output {
    fn push(&mut self, bytes: Bytes) {
        if self.first.is_none() && self.joined.is_empty() {
            self.first = Some(bytes);
        } else {
            self.extend_from_slice(&bytes);
        }
    }

    fn extend_from_slice(&mut self, bytes: &[u8]) {
        if let Some(first) = self.first.take() {
            self.joined.extend_from_slice(&first);
        }
        self.joined.extend_from_slice(bytes);
    }

    fn len(&self) -> usize {
        self.first.as_ref().map_or(0, Bytes::len) + self.joined.len()
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn bytes(&self) -> &[u8] {
        match &self.first {
            Some(f) => f,
            None => &self.joined,
        }
    }

    fn freeze(self) -> Bytes {
        match self.first {
            Some(first) => first,
            None => self.joined.freeze(),
        }
    }
}

fn body_outcome(o: ResponseOutcome) -> Outcome {
    match o {
        ResponseOutcome::Completed | ResponseOutcome::EndedByPlugin => Outcome::Completed,
        ResponseOutcome::ClientGone => Outcome::ClientGone,
        ResponseOutcome::UpstreamFailed => Outcome::UpstreamBroke,
        ResponseOutcome::TimedOut => Outcome::TimedOut,
    }
}

impl<E: OnEnd + Unpin> Body for FilteredStream<E> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        loop {
            // Every frame that is ready, cut into chunks as it comes (so the
            // framer keeps its no-copy path), up to COALESCE_MAX bytes.
            let mut read = 0;
            let mut end = None;
            while read < COALESCE_MAX {
                match Pin::new(&mut this.inner).poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => {
                        let Ok(data) = frame.into_data() else {
                            continue; // trailers: nothing to filter
                        };
                        read += data.len().max(1);
                        this.framer.push_bytes(data);
                        if let Err(m) = this.cut() {
                            end = Some(Err((ResponseOutcome::UpstreamFailed, m)));
                            break;
                        }
                        if this.inner.is_end_stream() {
                            end = Some(Ok(()));
                            break;
                        }
                    }
                    Poll::Ready(None) => {
                        end = Some(Ok(()));
                        break;
                    }
                    Poll::Ready(Some(Err(e))) => {
                        let m = format!("Ollama's response broke off mid-stream: {e}");
                        end = Some(Err((ResponseOutcome::UpstreamFailed, m)));
                        break;
                    }
                    Poll::Pending => break,
                }
            }
            if read > 0 {
                this.timers.data_came();
            }
            // The whole chunks go out, also those before a break.
            let mut out = Output::default();
            if let Err(m) = this.process(&mut out) {
                return this.close_with_error(ResponseOutcome::EndedByPlugin, m, out);
            }
            match end {
                Some(Ok(())) => return this.finish(out),
                Some(Err((outcome, message))) => {
                    return this.close_with_error(outcome, message, out);
                }
                None => {}
            }
            if !out.is_empty() {
                let data = this.sent(out.freeze());
                return Poll::Ready(Some(Ok(Frame::data(data))));
            }
            if read >= COALESCE_MAX {
                continue; // only part of a long chunk so far, and more is ready
            }
            // Pending, with nothing whole to send.
            return match this.timers.poll_expired(cx) {
                Some(why) => {
                    this.close_with_error(ResponseOutcome::TimedOut, why, Output::default())
                }
                None => Poll::Pending,
            };
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

impl<E: OnEnd> Drop for FilteredStream<E> {
    fn drop(&mut self) {
        // Dropped before its end: hyper gave up on the client. Dropping
        // `inner` closes the upstream connection, so Ollama stops generating.
        self.end(ResponseOutcome::ClientGone, 0);
    }
}

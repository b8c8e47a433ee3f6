//! Ollama's answer passed through to the client chunk by chunk — never
//! buffered, never parsed but for its token counts — when no response
//! plugin looks at it.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use hyper::body::{Body, Frame, SizeHint};

use crate::body::BoxError;
use crate::response::{Codec, Kind, Usage};
use crate::response_body::{COALESCE_MAX, Framing, OnEnd, Outcome, Tracker};

/// Ollama's response, passed through frame by frame.
pub struct Passthrough<E: OnEnd> {
    inner: crate::body::RespBody,
    framing: Framing,
    tracker: Tracker<E>,
    /// The token counts, for routes whose answers a codec reads.
    tap: Option<TokenTap>,
    state: State,
    stashed: Option<Stashed>,
}

/// Found while merging ready frames, delivered at the next poll.
enum Stashed {
    End,
    Error(String),
    Frame(Frame<Bytes>),
}

#[derive(PartialEq, Eq)]
enum State {
    Streaming,
    /// An error line went out; the next poll ends the body.
    Ending,
    Done,
}

impl<E: OnEnd> Passthrough<E> {
    /// `codec`: the route's, which reads the token counts.
    pub fn new(
        inner: crate::body::RespBody,
        framing: Framing,
        codec: Option<&'static dyn Codec>,
        tracker: Tracker<E>,
    ) -> Self {
        Passthrough {
            inner,
            framing,
            tracker,
            tap: codec.map(|c| TokenTap::new(c, framing.chunk_kind())),
            state: State::Streaming,
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
        if let Some(tap) = &mut self.tap {
            tap.feed(data);
        }
        self.tracker.sent(data);
        self.tracker.timers.data_came();
    }

    fn end(&mut self, outcome: Outcome) {
        self.state = State::Done;
        let usage = self.tap.as_mut().and_then(TokenTap::finish);
        self.tracker.end(outcome, usage);
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
        let line = self.tracker.error_chunk(sse, &[], &message);
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
            Poll::Pending => match this.tracker.timers.poll_expired(cx) {
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
        if self.tracker.running() {
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

/// Finds the token counts in the answer as it passes, with the route's
/// codec — the same reading the response hooks get — without holding more
/// than the current line: a line or SSE data line of a stream, or a whole
/// body that fits in [`MAX_LINE`].
struct TokenTap {
    codec: &'static dyn Codec,
    kind: Kind,
    line: Vec<u8>,
    overflow: bool,
    found: Option<Usage>,
}

/// A chunk with counts is small; longer lines are token text and are skipped.
const MAX_LINE: usize = 64 * 1024;

impl TokenTap {
    fn new(codec: &'static dyn Codec, kind: Kind) -> TokenTap {
        TokenTap {
            codec,
            kind,
            line: Vec::new(),
            overflow: false,
            found: None,
        }
    }

    /// Looks at whole lines where they lie in `data`; only a line split across
    /// reads is copied, and only lines that may hold counts are parsed. A
    /// whole body is read once, at the end.
    fn feed(&mut self, data: &[u8]) {
        if self.kind == Kind::Whole {
            self.push(data);
            return;
        }
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
        if self.codec.may_carry_usage(whole) || crate::telemetry::may_finish(whole) {
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
        let json = line.strip_prefix(b"data:").unwrap_or(line);
        // OpenAI's streams say why they stopped before their usage chunk.
        if crate::telemetry::may_finish(json) {
            crate::telemetry::note_final_chunk(json);
        }
        if !self.codec.may_carry_usage(json) {
            return;
        }
        if let Some(u) = self.codec.read(json, self.kind).usage {
            self.found = Some(Usage::merged(self.found, u));
            crate::telemetry::note_final_chunk(json);
        }
    }

    /// The counts, after looking at a last line that had no newline (a
    /// `stream:false` body).
    fn finish(&mut self) -> Option<Usage> {
        if !self.line.is_empty() {
            self.line_done();
        }
        self.found
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::response::{MESSAGES, OLLAMA_CHAT, OLLAMA_GENERATE, OPENAI_CHAT, RESPONSES};

    fn counts(mut t: TokenTap) -> Option<(u64, u64)> {
        t.finish().map(|u| (u.prompt_tokens, u.completion_tokens))
    }

    #[test]
    fn token_tap_reads_final_chunks_split_across_reads() {
        let mut t = TokenTap::new(OLLAMA_GENERATE, Kind::Line);
        t.feed(b"{\"response\":\"a\",\"done\":false}\n{\"done\":true,\"prompt_eval_");
        t.feed(b"count\":12,\"eval_count\":34}\n");
        assert_eq!(counts(t), Some((12, 34)));

        let mut t = TokenTap::new(OPENAI_CHAT, Kind::Event);
        t.feed(b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":5,\"total_tokens\":8}}\n\ndata: [DONE]\n\n");
        assert_eq!(counts(t), Some((3, 5)));

        let mut t = TokenTap::new(OLLAMA_CHAT, Kind::Whole);
        t.feed(b"{\"message\":{},\"prompt_eval_count\":1,\"eval_count\":2}");
        assert_eq!(
            counts(t),
            Some((1, 2)),
            "stream:false bodies have no newline"
        );
    }

    #[test]
    fn token_tap_reads_every_api() {
        // Ollama omits prompt_eval_count when it is 0 (a cached prompt).
        let mut t = TokenTap::new(OLLAMA_GENERATE, Kind::Line);
        t.feed(b"{\"response\":\"\",\"done\":true,\"eval_count\":4}\n");
        assert_eq!(counts(t), Some((0, 4)));
        // Anthropic: input in message_start, output in message_delta.
        let mut t = TokenTap::new(MESSAGES, Kind::Event);
        t.feed(b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":5,\"output_tokens\":0}}}\n\n");
        t.feed(b"event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":9}}\n\n");
        assert_eq!(counts(t), Some((5, 9)));
        let mut t = TokenTap::new(RESPONSES, Kind::Whole);
        t.feed(b"{\"object\":\"response\",\"output\":[],\"usage\":{\"input_tokens\":2,\"output_tokens\":3}}\n");
        assert_eq!(counts(t), Some((2, 3)));
    }
}

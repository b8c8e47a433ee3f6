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

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};

use super::ResponseOutcome;
use super::answer::{Answer, Output};
use crate::body::BoxError;
use crate::framing::{Format, Framer};
use crate::response_body::{COALESCE_MAX, OnEnd, Outcome, Tracker};

pub struct FilteredStream<E: OnEnd> {
    inner: crate::body::RespBody,
    framer: Framer,
    answer: Answer,
    tracker: Tracker<E>,
    done: bool,
}

impl<E: OnEnd> FilteredStream<E> {
    /// `max_chunk`: the longest chunk accepted (`limits.max_body_bytes`).
    pub fn new(
        inner: crate::body::RespBody,
        format: Format,
        max_chunk: usize,
        answer: Answer,
        tracker: Tracker<E>,
    ) -> Self {
        FilteredStream {
            inner,
            framer: Framer::new(format, max_chunk),
            answer,
            tracker,
            done: false,
        }
    }

    /// Cuts every whole chunk out of what has arrived.
    fn cut(&mut self) -> Result<(), String> {
        while let Some(frame) = self.framer.next_frame().map_err(|e| e.to_string())? {
            self.answer.push(frame);
        }
        Ok(())
    }

    /// The chunks cut so far through the hooks, their output appended to
    /// `out`; `Err` when a hook ended the stream (after the chunks it let go).
    fn process(&mut self, out: &mut Output) -> Result<(), String> {
        self.answer.run(out).map_err(|stop| stop.message)
    }

    /// Upstream finished: the last, unterminated chunk (if any), then the end.
    fn finish(&mut self, mut out: Output) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.framer.finish() {
            Ok(Some(rest)) => {
                self.answer.push(rest);
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
        let data = out.freeze();
        self.tracker.sent(&data);
        self.end(outcome);
        if data.is_empty() {
            return Poll::Ready(None);
        }
        Poll::Ready(Some(Ok(Frame::data(data))))
    }

    fn end(&mut self, outcome: ResponseOutcome) {
        if self.tracker.running() {
            self.answer.complete(outcome);
        }
        self.tracker.end(body_outcome(outcome), self.answer.usage());
    }

    /// Ends the stream with one more chunk saying why, in the client's format.
    fn close_with_error(
        &mut self,
        outcome: ResponseOutcome,
        message: String,
        mut out: Output,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let request_id = &self.answer.ctx.request_id;
        match outcome {
            ResponseOutcome::EndedByPlugin => {
                tracing::warn!(request_id = %request_id, reason = %message, "a response plugin ended the stream")
            }
            _ => {
                tracing::warn!(request_id = %request_id, reason = %message, "stream ended early")
            }
        }
        let sse = self.framer.format() == Format::Sse;
        let error = self.tracker.error_chunk(sse, out.bytes(), &message);
        out.extend_from_slice(&error);
        self.close(outcome, out)
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
                this.tracker.timers.data_came();
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
                let data = out.freeze();
                this.tracker.sent(&data);
                return Poll::Ready(Some(Ok(Frame::data(data))));
            }
            if read >= COALESCE_MAX {
                continue; // only part of a long chunk so far, and more is ready
            }
            // Pending, with nothing whole to send.
            return match this.tracker.timers.poll_expired(cx) {
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
        self.end(ResponseOutcome::ClientGone);
    }
}

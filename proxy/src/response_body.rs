//! What every response body shares, passed through or filtered: how the
//! answer is framed, how it ended, its clocks (the request deadline and the
//! idle timeout), and the [`Tracker`] that owns the admission slot, counts
//! the bytes sent, and tells the access log and metrics once, however the
//! body ends.

use std::pin::Pin;
use std::task::Context;
use std::time::Duration;

use tokio::time::{Instant, Sleep};

use crate::admission::Permit;
use crate::response::Usage;
use crate::routes::{ApiStyle, error_body, sse_error};

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
    /// How the answer is cut into chunks.
    pub fn chunk_kind(self) -> crate::response::Kind {
        use crate::response::Kind;
        match self {
            Framing::Ndjson => Kind::Line,
            Framing::Sse => Kind::Event,
            Framing::Opaque => Kind::Whole,
        }
    }

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

/// Called once when a response body ends, however it ends.
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

/// Merge at most this much already-received data into one frame.
pub(crate) const COALESCE_MAX: usize = 32 * 1024;

/// The slot a response holds until it ends: an inference request's
/// admission permit, or a non-inference request's place among
/// `limits.max_other_in_flight`.
pub enum Slot {
    Admitted(Permit),
    Other(tokio::sync::OwnedSemaphorePermit),
}

/// The bookkeeping of one response body: the admission slot it holds until
/// it ends, its clocks, the bytes sent, and the end hook.
pub struct Tracker<E: OnEnd> {
    pub timers: StreamTimers,
    style: ApiStyle,
    bytes: u64,
    tail: SentTail,
    on_end: Option<E>,
    /// Held until the body ends or is dropped.
    slot: Option<Slot>,
}

impl<E: OnEnd> Tracker<E> {
    pub fn new(
        deadline: Instant,
        idle_after: Duration,
        style: ApiStyle,
        slot: Option<Slot>,
        on_end: E,
    ) -> Tracker<E> {
        Tracker {
            timers: StreamTimers::new(deadline, idle_after),
            style,
            bytes: 0,
            tail: SentTail::default(),
            on_end: Some(on_end),
            slot,
        }
    }

    /// `data` is going to the client.
    pub fn sent(&mut self, data: &[u8]) {
        self.bytes += data.len() as u64;
        self.tail.follow(data);
    }

    /// The body has not ended yet.
    pub fn running(&self) -> bool {
        self.on_end.is_some()
    }

    /// The body ended: the access log and metrics are told (the first time
    /// only), and the admission slot is freed now, not when hyper drops the
    /// body.
    pub fn end(&mut self, outcome: Outcome, usage: Option<Usage>) {
        if let Some(mut e) = self.on_end.take() {
            let tokens = usage.map(|u| (u.prompt_tokens, u.completion_tokens));
            e.on_end(outcome, self.bytes, tokens);
        }
        self.slot = None;
    }

    /// The chunk that ends the stream with `message` in the client's format,
    /// after what was sent (see [`SentTail::error_chunk`]), `pending` too.
    pub fn error_chunk(&self, sse: bool, pending: &[u8], message: &str) -> Vec<u8> {
        let mut tail = self.tail;
        tail.follow(pending);
        tail.error_chunk(sse, self.style, message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

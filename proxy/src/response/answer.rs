//! One answer through the response hooks, whatever its API: chunks in,
//! marked by the codec's state, through the hooks, fixed up by the codec's
//! state, and out — with the answer's token usage on the way. The streamed
//! body, the whole-body path and `kiln-proxy plugin run` all drive this.

use bytes::{Bytes, BytesMut};

use super::codec::{AnswerState, Codec, Kind, Usage};
use super::{Armed, Chunk, ResponseContext, ResponseHooks, ResponseOutcome, Stop};

pub struct Answer {
    codec: &'static dyn Codec,
    kind: Kind,
    state: Option<Box<dyn AnswerState>>,
    hooks: Box<dyn ResponseHooks>,
    pub ctx: ResponseContext,
    hide_usage_chunk: bool,
    usage: Option<Usage>,
    /// Streamed chunks that carried generated text, thinking or tool calls:
    /// what the model generated so far, at about one token per chunk (Ollama
    /// sends a chunk per token), for an answer that ends before its usage.
    generated: u64,
    /// The chunks of the current read, on their way through the hooks
    /// (kept to reuse its allocation).
    batch: Vec<Chunk>,
    /// The completion hook ran.
    completed: bool,
}

impl Answer {
    /// The answer to an armed request, cut into chunks of `kind`.
    pub fn new(armed: Armed, kind: Kind) -> Answer {
        Answer::of(
            armed.codec,
            kind,
            armed.hooks,
            armed.ctx,
            armed.hide_usage_chunk,
        )
    }

    pub fn of(
        codec: &'static dyn Codec,
        kind: Kind,
        hooks: Box<dyn ResponseHooks>,
        ctx: ResponseContext,
        hide_usage_chunk: bool,
    ) -> Answer {
        Answer {
            codec,
            kind,
            state: codec.answer(kind),
            hooks,
            ctx,
            hide_usage_chunk,
            usage: None,
            generated: 0,
            batch: Vec::new(),
            completed: false,
        }
    }

    /// One whole chunk (a line, an event, a body) for the next [`Answer::run`].
    pub fn push(&mut self, raw: Bytes) {
        self.batch.push(Chunk::new(raw, self.kind, self.codec));
    }

    pub fn usage(&self) -> Option<Usage> {
        self.usage
    }

    /// The chunks pushed so far through the hooks, in one call (a hook pays
    /// its call cost per read, not per chunk); what goes to the client is
    /// appended to `out`. `Err` when a hook ended the answer: the chunks it
    /// let go are in `out`, the rest are dropped.
    pub fn run(&mut self, out: &mut Output) -> Result<(), Stop> {
        if self.batch.is_empty() {
            return Ok(());
        }
        for chunk in &mut self.batch {
            if let Some(s) = &mut self.state {
                s.before_hooks(chunk);
            }
            if let Some(u) = chunk.usage() {
                self.usage = Some(Usage::merged(self.usage, u));
                crate::telemetry::note_final_chunk(&chunk.raw());
            } else if chunk.done() && crate::telemetry::enabled() {
                // OpenAI's streams say why they stopped before their usage chunk.
                crate::telemetry::note_final_chunk(&chunk.raw());
            }
            if chunk.kind() != Kind::Whole && chunk.generated() {
                self.generated += 1;
            }
        }
        let result = self.hooks.on_chunks(&self.ctx, &mut self.batch);
        let sent = match &result {
            Ok(()) => self.batch.len(),
            Err(ended) => ended.sent,
        };
        // In place (a chunk is a large struct, not moved out to be sent);
        // clearing drops the chunks past `sent` too: they never go out.
        for chunk in self.batch.iter_mut().take(sent) {
            if let Some(s) = &mut self.state {
                s.after_hooks(chunk);
            }
            // A whole body has one place for everything: itself.
            if let Some(inserted) = chunk.inserted().filter(|_| self.kind != Kind::Whole) {
                out.extend_from_slice(inserted);
            }
            if !(self.hide_usage_chunk && chunk.is_usage_only()) {
                out.push(chunk.raw());
            }
        }
        self.batch.clear();
        result.map_err(|ended| ended.stop)
    }

    /// Tells the hooks how the answer ended; once, later calls do nothing.
    pub fn complete(&mut self, outcome: ResponseOutcome) {
        if !std::mem::replace(&mut self.completed, true) {
            let usage = charged_usage(self.usage, self.generated);
            self.hooks.on_complete(&self.ctx, outcome, usage);
        }
    }
}

/// The usage the completion hook is given: what Ollama reported, unless the
/// answer ended (or was cut off by the client) before Ollama reported its
/// output tokens — then the streamed chunks that carried generated output
/// count as that many tokens. A caller who reads part of an answer and
/// hangs up is charged what was generated, not nothing; the prompt is
/// charged only when Ollama reported it.
fn charged_usage(reported: Option<Usage>, generated: u64) -> Option<Usage> {
    match reported {
        Some(u) if u.completion_tokens > 0 || generated == 0 => Some(u),
        None if generated == 0 => None,
        reported => Some(Usage {
            prompt_tokens: reported.map_or(0, |u| u.prompt_tokens),
            completion_tokens: generated,
        }),
    }
}

#[cfg(test)]
mod charged_usage_tests {
    use super::*;

    #[test]
    fn reported_output_tokens_win_and_a_cut_answer_is_charged_its_chunks() {
        let u = |p, c| Usage {
            prompt_tokens: p,
            completion_tokens: c,
        };
        assert_eq!(charged_usage(Some(u(9, 40)), 12), Some(u(9, 40)));
        assert_eq!(charged_usage(None, 0), None);
        assert_eq!(charged_usage(None, 9), Some(u(0, 9)));
        // Anthropic's message_start reports the input before any output.
        assert_eq!(charged_usage(Some(u(7, 0)), 3), Some(u(7, 3)));
        assert_eq!(charged_usage(Some(u(7, 0)), 0), Some(u(7, 0)));
    }
}

/// What one read turns into: a single unchanged chunk goes out as the very
/// bytes that came in (no copy, the usual case when Ollama writes a chunk
/// per read); several are joined into one frame.
#[derive(Default)]
pub struct Output {
    first: Option<Bytes>,
    joined: BytesMut,
}

impl Output {
    pub fn push(&mut self, bytes: Bytes) {
        if self.first.is_none() && self.joined.is_empty() {
            self.first = Some(bytes);
        } else {
            self.extend_from_slice(&bytes);
        }
    }

    pub fn extend_from_slice(&mut self, bytes: &[u8]) {
        if let Some(first) = self.first.take() {
            self.joined.extend_from_slice(&first);
        }
        self.joined.extend_from_slice(bytes);
    }

    pub fn len(&self) -> usize {
        self.first.as_ref().map_or(0, Bytes::len) + self.joined.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn bytes(&self) -> &[u8] {
        match &self.first {
            Some(f) => f,
            None => &self.joined,
        }
    }

    pub fn freeze(self) -> Bytes {
        match self.first {
            Some(first) => first,
            None => self.joined.freeze(),
        }
    }
}

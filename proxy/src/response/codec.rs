//! What varies between the APIs whose answers the response hooks see, as one
//! trait: a [`Codec`] per API (`ollama`, `openai`, `responses`, `messages`,
//! `gemini`) reads a raw chunk of its API into a [`View`], writes a channel
//! back into it, makes a chunk of its own to carry inserted text, and keeps
//! the state an answer of its API needs ([`AnswerState`]). Everything above
//! — the [`Chunk`], the streamed and whole bodies, the hooks — is
//! format-blind. What the codecs share to do it: the lenient typed reading
//! (`lenient`) and the byte-level edits and framing (`wire`).

use std::fmt;

use bytes::Bytes;
use serde_json::Value;

use super::chunk::Chunk;
use crate::framing::Format;

/// How the chunk was cut from the body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// One NDJSON line, `\n` included.
    Line,
    /// One SSE event, its blank line included.
    Event,
    /// The whole body of an answer that does not stream.
    Whole,
}

/// The text channels of an answer: the text, the model's thinking, and
/// the arguments of its tool calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Channel {
    Text,
    Thinking,
    /// Every tool call's arguments in the chunk as JSON text, one line per
    /// call (see [`arguments_text`](super::wire::arguments_text)). Ollama sends each call whole, in one
    /// chunk, on every API, so a call's arguments are never split between
    /// chunks, and have no place outside the chunk that carries the call:
    /// this channel is only rewritten, never inserted.
    ToolArguments,
}

impl Channel {
    /// Every channel, in the order inserted chunks go out (the model thinks
    /// before it answers).
    pub const ALL: [Channel; Channel::COUNT] =
        [Channel::Thinking, Channel::Text, Channel::ToolArguments];
    pub const COUNT: usize = 3;

    pub(super) fn index(self) -> usize {
        self as usize
    }
}

/// Token counts as Ollama reports them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

impl Usage {
    /// The counts of an answer after a later report: a count the later
    /// report gives (non-zero) replaces the earlier one, a missing one keeps
    /// it. Anthropic's stream reports the input tokens in `message_start`
    /// and the output tokens in `message_delta` (where Ollama repeats the
    /// final input count, and Anthropic itself sends none); every other API
    /// reports once.
    pub fn merged(earlier: Option<Usage>, later: Usage) -> Usage {
        let Some(earlier) = earlier else {
            return later;
        };
        let keep = |later: u64, earlier: u64| if later == 0 { earlier } else { later };
        Usage {
            prompt_tokens: keep(later.prompt_tokens, earlier.prompt_tokens),
            completion_tokens: keep(later.completion_tokens, earlier.completion_tokens),
        }
    }
}

/// What the hooks see of a chunk, whatever its API.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct View {
    pub text: Option<String>,
    /// The model's thinking (reasoning) in this chunk.
    pub thinking: Option<String>,
    /// The arguments of the tool calls in this chunk ([`Channel::ToolArguments`]).
    pub tool_arguments: Option<String>,
    /// Generation ends with this chunk, by what the chunk itself says.
    pub done: bool,
    /// The thinking ends with this chunk, by what the chunk itself says (a
    /// Responses `reasoning_summary_text.done`); what only earlier chunks
    /// tell, the codec's [`AnswerState`] marks.
    pub thinking_done: bool,
    /// The chunk carries tool calls: like text, they end the thinking.
    pub tool_calls: bool,
    pub usage: Option<Usage>,
    /// OpenAI's usage chunk: no choices, only usage.
    pub usage_only: bool,
}

impl View {
    pub fn get(&self, channel: Channel) -> Option<&str> {
        match channel {
            Channel::Text => self.text.as_deref(),
            Channel::Thinking => self.thinking.as_deref(),
            Channel::ToolArguments => self.tool_arguments.as_deref(),
        }
    }

    pub(super) fn set(&mut self, channel: Channel, value: String) {
        match channel {
            Channel::Text => self.text = Some(value),
            Channel::Thinking => self.thinking = Some(value),
            Channel::ToolArguments => self.tool_arguments = Some(value),
        }
    }

    /// Everything but `channel` reads the same in both views.
    pub(super) fn same_but(&self, other: &View, channel: Channel) -> bool {
        Channel::ALL
            .into_iter()
            .filter(|c| *c != channel)
            .all(|c| self.get(c) == other.get(c))
            && self.done == other.done
            && self.thinking_done == other.thinking_done
            && self.tool_calls == other.tool_calls
            && self.usage == other.usage
            && self.usage_only == other.usage_only
    }
}

/// One API's answers: how to read, patch and make its chunks. Adding a
/// channel adds a case to `read`, `splice_key`, `place` and `synthesize`
/// of each codec; adding an API is one more implementation and a line in
/// the route table (`routes::classify`).
pub trait Codec: Send + Sync + 'static {
    /// For logs and tests.
    fn name(&self) -> &'static str;

    /// How the API frames a streamed answer: SSE events (the OpenAI and
    /// Anthropic APIs); Ollama's own API overrides it with NDJSON lines.
    fn stream_format(&self) -> Format {
        Format::Sse
    }

    /// Reads a chunk's JSON (a line, an event's data, a body). Anything not
    /// of the API's shape reads as nothing (no text, no usage, not done).
    fn read(&self, json: &[u8], kind: Kind) -> View;

    /// False when the raw chunk cannot carry token counts (no parse).
    fn may_carry_usage(&self, raw: &[u8]) -> bool;

    /// Whether the API has `channel` at all.
    fn carries(&self, channel: Channel) -> bool {
        let _ = channel;
        true
    }

    /// The object key (`"name":`) whose JSON string holds `channel` in a
    /// chunk of `kind`, for the in-place splice; `None`: always the tree.
    fn splice_key(&self, channel: Channel, kind: Kind) -> Option<&'static [u8]>;

    /// The arguments of each tool call in the tree `v` of a chunk of `kind`,
    /// in order: a JSON string (OpenAI's, the Responses API's) or an object
    /// (Ollama's, Anthropic's). What [`Channel::ToolArguments`] reads and
    /// rewrites; none on an API without tool calls.
    fn tool_arguments<'v>(&self, v: &'v mut Value, kind: Kind) -> Vec<&'v mut Value> {
        let _ = (v, kind);
        Vec::new()
    }

    /// Puts `value` as `channel` into the tree `v` of a chunk of `kind`
    /// (`had`: the chunk carried that channel). `false` when the chunk has
    /// no place for it: then a chunk of the API goes before it instead.
    fn place(&self, v: &mut Value, channel: Channel, kind: Kind, had: bool, value: &str) -> bool;

    /// The bytes of chunks of the API carrying `pieces` (what hooks put,
    /// in order) of `channel`, to go before a chunk of `kind` whose tree is
    /// `near` (they name the same item, model, block…).
    fn synthesize(
        &self,
        near: Option<&Value>,
        kind: Kind,
        channel: Channel,
        pieces: &[String],
    ) -> Vec<u8>;

    /// The state one answer of the API needs, cut into chunks of `kind`.
    fn answer(&self, kind: Kind) -> Option<Box<dyn AnswerState>>;

    /// What the request needs changed for its answer to be filtered (see
    /// `openai`); most APIs need nothing.
    fn plan_request(&self, stream: bool, body: &[u8]) -> UsagePlan {
        let _ = (stream, body);
        UsagePlan::KEEP
    }
}

impl fmt::Debug for dyn Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What the response stage changes about a request to get its usage.
#[derive(Debug, PartialEq, Eq)]
pub struct UsagePlan {
    /// The body to forward instead, when it had to be changed.
    pub body: Option<Bytes>,
    /// Drop the usage chunk on the way back: the client did not ask for it.
    pub hide_usage_chunk: bool,
}

impl UsagePlan {
    pub const KEEP: UsagePlan = UsagePlan {
        body: None,
        hide_usage_chunk: false,
    };
}

/// What one answer of an API keeps between its chunks.
pub trait AnswerState: Send {
    /// A chunk on its way to the hooks, in order (mark what only earlier
    /// chunks tell: where the text or thinking ends).
    fn before_hooks(&mut self, chunk: &mut Chunk) {
        let _ = chunk;
    }

    /// A chunk after the hooks, on its way out, in order (fix what the
    /// hooks' changes left stale: copies of the text, sequence numbers,
    /// token-by-token fields).
    fn after_hooks(&mut self, chunk: &mut Chunk) {
        let _ = chunk;
    }
}

/// Where the model's thinking ends, on the APIs whose chunks do not say
/// (Ollama's `/api/generate` and `/api/chat`, OpenAI's
/// `/v1/chat/completions`): they stream the thinking before the text with
/// no event closing it, so the thinking has ended when a chunk after it
/// carries text or tool calls (Ollama's chunk may carry the last thinking
/// and the first text at once; OpenAI's shape splits it in two chunks, the
/// reasoning one with `"content":""`, which is not text). Thinking a hook
/// holds back must go out on that chunk at the latest. The model may think
/// again later (after a tool call), and the next such chunk is marked
/// again. Until thinking is seen it parses nothing: a chunk without the
/// field's name (`marker`) carries none.
#[derive(Debug)]
pub struct ThinkingEnd {
    marker: &'static memchr::memmem::Finder<'static>,
    /// Thinking was seen, and no text or tool call since.
    thinking: bool,
}

impl ThinkingEnd {
    pub fn new(marker: &'static memchr::memmem::Finder<'static>) -> ThinkingEnd {
        ThinkingEnd {
            marker,
            thinking: false,
        }
    }

    /// One chunk on its way to the hooks, in order.
    pub fn mark(&mut self, chunk: &mut Chunk) {
        if !self.thinking && !chunk.raw_has(self.marker) {
            return;
        }
        if chunk.thinking().is_some_and(|t| !t.is_empty()) {
            self.thinking = true;
        }
        let answers = chunk.text().is_some_and(|t| !t.is_empty()) || chunk.has_tool_calls();
        if self.thinking && answers {
            chunk.set_thinking_done(true);
            self.thinking = false;
        }
    }
}

#[cfg(test)]
mod tests;

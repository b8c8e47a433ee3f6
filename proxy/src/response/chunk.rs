//! One chunk of an Ollama or OpenAI-compatible answer, as the response hooks
//! see it: its generated text and the model's thinking (two text channels,
//! each in one normalized form whatever the API), its token usage, whether
//! generation (or the thinking) ends with it — and rewriting that text and
//! thinking back into the API's own JSON.

use bytes::{BufMut, Bytes, BytesMut};
use serde_json::{Value, json};

use std::cell::OnceCell;
use std::sync::LazyLock;

use memchr::memmem::Finder;

use super::events;
use super::peek::{self, Block, Info};
use crate::framing::sse_data;

/// Only chunks with these bytes can carry token counts.
static EVAL_COUNT: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"eval_count\""));
static USAGE: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"usage\""));
/// Only chunks with these bytes can carry thinking (Ollama's name, OpenAI's).
static THINKING: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"thinking\""));
static REASONING: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"reasoning\""));
/// Only chunks with these bytes can carry the fields that describe the
/// text token by token (see [`Chunk::drop_token_fields`]).
static CONTEXT: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"context\""));
static LOGPROBS: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"logprobs\""));

/// The two text channels of an answer: the text, and the model's thinking.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Channel {
    Text,
    Thinking,
}

/// The JSON shape of a route's answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// `/api/generate`: text in `response`, thinking in `thinking`.
    OllamaGenerate,
    /// `/api/chat`: text in `message.content`, thinking in
    /// `message.thinking` (both may come in one chunk).
    OllamaChat,
    /// `/v1/chat/completions`: `choices[0].delta.content` streamed,
    /// `choices[0].message.content` whole; thinking in `reasoning` there.
    OpenaiChat,
    /// `/v1/completions`: `choices[0].text`; no thinking.
    OpenaiCompletions,
    /// `/v1/responses` (OpenAI Responses API): `delta` of
    /// `response.output_text.delta` events streamed, the `output_text` parts
    /// of `output[]` whole. Later events repeat the text: see `transcript`.
    /// Thinking: `response.reasoning_summary_text.delta` events, the
    /// `summary_text` parts of `reasoning` items whole.
    OpenaiResponses,
    /// `/v1/messages` (Anthropic Messages API): `delta.text` of
    /// `content_block_delta` events with a `text_delta` streamed, the `text`
    /// blocks of `content[]` whole. Thinking: `thinking_delta`s, `thinking`
    /// blocks.
    AnthropicMessages,
    /// Anything else: chunks are passed to the hooks raw, without text or
    /// usage.
    Other,
}

impl Shape {
    pub fn of_path(path: &str) -> Shape {
        match path.trim_end_matches('/') {
            "/api/generate" => Shape::OllamaGenerate,
            "/api/chat" => Shape::OllamaChat,
            "/v1/chat/completions" => Shape::OpenaiChat,
            "/v1/completions" => Shape::OpenaiCompletions,
            "/v1/responses" => Shape::OpenaiResponses,
            "/v1/messages" => Shape::AnthropicMessages,
            _ => Shape::Other,
        }
    }
}

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

pub struct Chunk {
    raw: Bytes,
    kind: Kind,
    shape: Shape,
    /// What the hooks see, read on first use: a chunk every hook passes
    /// without looking is never parsed.
    info: OnceCell<Info>,
    /// The chunk's JSON as a tree, built only to rewrite it; `None` when it
    /// is not a JSON object (`[DONE]`, comments) or not built yet.
    value: Option<Value>,
    /// `value` was changed: `raw` is rebuilt from it.
    changed: bool,
    /// [`Chunk::done`] and [`Chunk::thinking_done`] as the answer's earlier
    /// chunks tell (see `blocks`, `thinking`), over what `info` reads from
    /// the chunk alone (kept apart so a rewrite can compare readings).
    done_mark: Option<bool>,
    thinking_done_mark: Option<bool>,
    /// A hook changed the chunk's text (by either path).
    edited: bool,
    /// A hook changed the chunk's thinking (by either path).
    thinking_edited: bool,
    /// What goes out before this one: `thinking_before`, then
    /// `text_before`.
    before: Option<Vec<u8>>,
    /// A text chunk to send before this one, when a hook put text on a chunk
    /// that has no place for it.
    text_before: Option<Vec<u8>>,
    /// The text of `text_before`.
    before_text: Option<String>,
    /// A thinking chunk to send before this one (and before any text
    /// inserted: the model thinks first), when a hook put thinking on a
    /// chunk that has no place for it.
    thinking_before: Option<Vec<u8>>,
    /// The thinking of `thinking_before`.
    before_thinking: Option<String>,
}

impl Chunk {
    pub fn new(raw: Bytes, kind: Kind, shape: Shape) -> Chunk {
        Chunk {
            raw,
            kind,
            shape,
            info: OnceCell::new(),
            value: None,
            changed: false,
            done_mark: None,
            thinking_done_mark: None,
            edited: false,
            thinking_edited: false,
            before: None,
            text_before: None,
            before_text: None,
            thinking_before: None,
            before_thinking: None,
        }
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    pub fn shape(&self) -> Shape {
        self.shape
    }

    /// The JSON of the chunk: the line, the SSE event's data, the body.
    fn data(&self) -> Option<std::borrow::Cow<'_, [u8]>> {
        match self.kind {
            Kind::Event => sse_data(&self.raw),
            Kind::Line | Kind::Whole => Some(std::borrow::Cow::Borrowed(&self.raw[..])),
        }
    }

    fn info(&self) -> &Info {
        self.info.get_or_init(|| {
            self.data()
                .map(|d| peek::read(&d, self.kind, self.shape))
                .unwrap_or_default()
        })
    }

    /// The tree of the chunk's JSON, built on first use.
    pub(super) fn tree(&mut self) -> Option<&mut Value> {
        if self.value.is_none() && self.shape != Shape::Other {
            self.value = self
                .data()
                .and_then(|d| serde_json::from_slice::<Value>(&d).ok())
                .filter(Value::is_object);
        }
        self.value.as_mut()
    }

    /// Where this chunk's thinking lives, as a JSON pointer (Ollama's and
    /// OpenAI's chat shapes; the event APIs place it in `events`).
    fn thinking_pointer(&self) -> Option<&'static str> {
        Some(match (self.shape, self.kind) {
            (Shape::OllamaGenerate, _) => "/thinking",
            (Shape::OllamaChat, _) => "/message/thinking",
            (Shape::OpenaiChat, Kind::Whole) => "/choices/0/message/reasoning",
            (Shape::OpenaiChat, _) => "/choices/0/delta/reasoning",
            _ => return None,
        })
    }

    /// Where this chunk's generated text lives, as a JSON pointer.
    fn text_pointer(&self) -> Option<&'static str> {
        Some(match (self.shape, self.kind) {
            (Shape::OllamaGenerate, _) => "/response",
            (Shape::OllamaChat, _) => "/message/content",
            (Shape::OpenaiChat, Kind::Whole) => "/choices/0/message/content",
            (Shape::OpenaiChat, _) => "/choices/0/delta/content",
            (Shape::OpenaiCompletions, _) => "/choices/0/text",
            (Shape::OpenaiResponses | Shape::AnthropicMessages | Shape::Other, _) => return None,
        })
    }

    /// The generated text of this chunk, if it carries any.
    pub fn text(&self) -> Option<&str> {
        self.info().text.as_deref()
    }

    /// The text, when something read it already ([`Chunk::text`] parses on
    /// first use; this never does).
    pub fn text_read(&self) -> Option<&str> {
        self.info.get()?.text.as_deref()
    }

    /// The model's thinking (reasoning) in this chunk, if it carries any:
    /// Ollama's `thinking` (`/api/generate`) or `message.thinking`
    /// (`/api/chat`), OpenAI's `delta.reasoning` (`message.reasoning` whole),
    /// a Responses `response.reasoning_summary_text.delta` (the `summary_text`
    /// of the `reasoning` items whole), a Messages `thinking_delta` (the
    /// `thinking` blocks whole). `/v1/completions` has none.
    pub fn thinking(&self) -> Option<&str> {
        self.info().thinking.as_deref()
    }

    /// The thinking, when something read the chunk already (never parses).
    pub fn thinking_read(&self) -> Option<&str> {
        self.info.get()?.thinking.as_deref()
    }

    /// True when the model's thinking ends with this chunk: thinking a hook
    /// holds back must go out on this chunk at the latest. Generation's end
    /// ends it; so do a Responses `response.reasoning_summary_text.done`,
    /// the `content_block_stop` of a Messages thinking block (see `blocks`)
    /// and, on Ollama's and OpenAI's chat shapes, the first chunk with text
    /// or tool calls after thinking (see `thinking`). Always true whole.
    pub fn thinking_done(&self) -> bool {
        self.done()
            || self
                .thinking_done_mark
                .unwrap_or_else(|| self.info().thinking_done)
    }

    /// Sets [`Chunk::thinking_done`], for what only the answer's earlier
    /// chunks tell.
    pub(super) fn set_thinking_done(&mut self, done: bool) {
        self.thinking_done_mark = Some(done);
    }

    /// True when the chunk carries tool calls (the chat shapes).
    pub(super) fn has_tool_calls(&self) -> bool {
        self.info().tool_calls
    }

    /// False when the chunk's bytes show it carries no thinking (no parse).
    pub(super) fn may_think(&self) -> bool {
        let finder = match self.shape {
            Shape::OpenaiChat => &*REASONING,
            _ => &*THINKING,
        };
        finder.find(&self.raw).is_some()
    }

    /// True when generation ends with this chunk (see the WIT `chunk.done`).
    pub fn done(&self) -> bool {
        self.kind == Kind::Whole || self.done_mark.unwrap_or_else(|| self.info().done)
    }

    /// Sets [`Chunk::done`], for what only the answer's earlier chunks tell
    /// (the stop of a `/v1/messages` text block, see `blocks`).
    pub(super) fn set_done(&mut self, done: bool) {
        self.done_mark = Some(done);
    }

    /// The content block a `/v1/messages` event opens or closes.
    pub(super) fn block(&self) -> Option<Block> {
        self.info().block
    }

    /// The token counts in this chunk: Ollama's final chunk
    /// (`prompt_eval_count` is omitted by Ollama when it is 0), or OpenAI's
    /// `usage`. Chunks that cannot hold them are not parsed to find out.
    pub fn usage(&self) -> Option<Usage> {
        let finder = match self.shape {
            Shape::OllamaGenerate | Shape::OllamaChat => &*EVAL_COUNT,
            Shape::OpenaiChat
            | Shape::OpenaiCompletions
            | Shape::OpenaiResponses
            | Shape::AnthropicMessages => &*USAGE,
            Shape::Other => return None,
        };
        finder.find(&self.raw)?;
        self.info().usage
    }

    /// True for the extra chunk OpenAI streams carry with
    /// `stream_options.include_usage`: no choices, only usage.
    pub fn is_usage_only(&self) -> bool {
        self.kind == Kind::Event && USAGE.find(&self.raw).is_some() && self.info().usage_only
    }

    /// The chunk's bytes as they are now (rewritten or not), without any
    /// chunk inserted before it.
    pub fn raw(&self) -> Bytes {
        if !self.changed {
            return self.raw.clone();
        }
        let Some(v) = &self.value else {
            return self.raw.clone();
        };
        // Serializing a Value cannot fail; keys come out sorted (serde_json
        // has no order-preserving map here), which JSON readers ignore.
        let json = serde_json::to_vec(v).unwrap_or_default();
        let mut out = Vec::with_capacity(json.len() + 8);
        match self.kind {
            Kind::Line => {
                out.extend_from_slice(&json);
                out.push(b'\n');
            }
            Kind::Event => frame_event(&mut out, event_lines(&self.raw), &json),
            Kind::Whole => {
                out.extend_from_slice(&json);
                if self.raw.ends_with(b"\n") {
                    out.push(b'\n');
                }
            }
        }
        Bytes::from(out)
    }

    /// Replaces the generated text. A chunk with no place for text (a usage
    /// chunk, `[DONE]`, an error line) gets a text chunk of its API sent
    /// just before it instead. Unknown shapes cannot carry text: `false`.
    pub fn set_text(&mut self, text: String) -> bool {
        self.set_part(Channel::Text, text)
    }

    /// Replaces the model's thinking, as [`Chunk::set_text`] the text: in
    /// place when the chunk has thinking or a place for it (Ollama's
    /// `thinking` / `message.thinking`, OpenAI's `reasoning`, created when
    /// missing: thinking released on the first text chunk lands in it);
    /// else in a thinking chunk or event of the API sent just before this
    /// one (before any text inserted there). `false` where the API has no
    /// thinking (`/v1/completions`, unknown shapes).
    pub fn set_thinking(&mut self, thinking: String) -> bool {
        self.set_part(Channel::Thinking, thinking)
    }

    /// [`Chunk::set_text`] and [`Chunk::set_thinking`]: the fast splice,
    /// else the tree, else a chunk of the API inserted before this one.
    fn set_part(&mut self, channel: Channel, value: String) -> bool {
        let current = match channel {
            Channel::Text => self.text(),
            Channel::Thinking => self.thinking(),
        };
        if current == Some(value.as_str()) {
            return true;
        }
        let carries = match channel {
            Channel::Text => self.shape != Shape::Other,
            Channel::Thinking => !matches!(self.shape, Shape::Other | Shape::OpenaiCompletions),
        };
        if !carries {
            return false;
        }
        let mut info = self.info().clone();
        let had = match channel {
            Channel::Text => info.text.is_some(),
            Channel::Thinking => info.thinking.is_some(),
        };
        let spliced = !self.changed
            && match channel {
                Channel::Text => self.splice_text(&value, &info),
                Channel::Thinking => had && self.splice_thinking(&value, &info),
            };
        if spliced {
            self.mark_edited(channel);
            return true;
        }
        let pointer = match channel {
            Channel::Text => self.text_pointer(),
            Channel::Thinking => self.thinking_pointer(),
        };
        let placed = match pointer {
            Some(pointer) => match self.tree().and_then(|v| text_slot(v, pointer)) {
                Some(slot) => {
                    *slot = Value::String(value.clone());
                    true
                }
                None => false,
            },
            // The event APIs: a text or thinking event, or a whole body.
            None => {
                let (shape, kind) = (self.shape, self.kind);
                self.tree()
                    .is_some_and(|v| events::place(v, channel, shape, kind, had, &value))
            }
        };
        if placed {
            self.changed = true;
            self.mark_edited(channel);
            match channel {
                Channel::Text => info.text = Some(value),
                Channel::Thinking => info.thinking = Some(value),
            }
            self.info = OnceCell::from(info);
            return true;
        }
        self.insert_before(channel, &value);
        true
    }

    fn mark_edited(&mut self, channel: Channel) {
        match channel {
            Channel::Text => self.edited = true,
            Channel::Thinking => self.thinking_edited = true,
        }
    }

    /// Puts `text` of `channel` in a chunk of the API sent before this one.
    fn insert_before(&mut self, channel: Channel, text: &str) {
        let (joined, raw) = match channel {
            Channel::Text => (&mut self.before_text, &mut self.text_before),
            Channel::Thinking => (&mut self.before_thinking, &mut self.thinking_before),
        };
        let joined = joined.get_or_insert_with(String::new);
        joined.push_str(text);
        let joined = joined.clone();
        let had = raw.take();
        let synthetic = if self.is_event_api() {
            // One event carries all the text put here (by several hooks):
            // a `/v1/responses` event inserted takes a sequence number.
            self.synthetic(channel, &joined, None)
        } else {
            let mut all = had.unwrap_or_default();
            all.extend_from_slice(&self.synthetic(channel, text, None));
            all
        };
        match channel {
            Channel::Text => self.text_before = Some(synthetic),
            Channel::Thinking => self.thinking_before = Some(synthetic),
        }
        self.join_before();
    }

    /// `before`: the thinking inserted, then the text.
    fn join_before(&mut self) {
        let parts = [&self.thinking_before, &self.text_before];
        let mut all: Option<Vec<u8>> = None;
        for part in parts.into_iter().flatten() {
            all.get_or_insert_with(Vec::new).extend_from_slice(part);
        }
        self.before = all;
    }

    fn is_event_api(&self) -> bool {
        matches!(
            self.shape,
            Shape::OpenaiResponses | Shape::AnthropicMessages
        )
    }

    /// Gives the `/v1/responses` events inserted before this chunk (see
    /// [`Chunk::inserted`]) the sequence numbers from `seq` on, in the order
    /// they go out (thinking, then text); returns how many there are. A
    /// thinking event names `reasoning` (the answer's reasoning item, as
    /// the transcript knows it) when this chunk names no reasoning item.
    pub(super) fn number_inserted(&mut self, seq: u64, reasoning: Option<(&str, u64)>) -> u64 {
        if self.shape != Shape::OpenaiResponses {
            return 0;
        }
        let mut n = 0;
        if let Some(thinking) = self.before_thinking.clone() {
            self.thinking_before =
                Some(self.synthetic_in(Channel::Thinking, &thinking, Some(seq), reasoning));
            n += 1;
        }
        if let Some(text) = self.before_text.clone() {
            self.text_before = Some(self.synthetic(Channel::Text, &text, Some(seq + n)));
            n += 1;
        }
        self.join_before();
        n
    }

    /// Marks the tree (see [`Chunk::tree`]) as changed: `raw` is rebuilt
    /// from it. What the hooks read of the chunk stays as it was.
    pub(super) fn tree_changed(&mut self) {
        if self.value.is_some() {
            self.changed = true;
        }
    }

    /// The fast rewrite: the text's JSON string replaced in the bytes as
    /// they are, key order and all, with no tree built. Taken only when
    /// reading the result back gives the new text and nothing else changed;
    /// otherwise (a missing field, a look-alike key) the tree does it.
    fn splice_text(&mut self, text: &str, before: &Info) -> bool {
        let key: &[u8] = match (self.shape, self.kind) {
            (Shape::OllamaGenerate, _) => b"\"response\":",
            (Shape::OllamaChat | Shape::OpenaiChat, _) => b"\"content\":",
            (Shape::OpenaiCompletions, _) => b"\"text\":",
            (Shape::OpenaiResponses, Kind::Event | Kind::Line) => b"\"delta\":",
            (Shape::OpenaiResponses | Shape::AnthropicMessages, _) => b"\"text\":",
            (Shape::Other, _) => return false,
        };
        let Some(spliced) = splice_string(&self.raw, key, text) else {
            return false;
        };
        self.take_splice(spliced, before, |after| {
            after.text.as_deref() == Some(text) && after.thinking == before.thinking
        })
    }

    /// The fast rewrite of the thinking, as [`Chunk::splice_text`]. Not for
    /// a whole Responses body: its reasoning items repeat the thinking in
    /// `encrypted_content`, which the tree rewrites too.
    fn splice_thinking(&mut self, thinking: &str, before: &Info) -> bool {
        let key: &[u8] = match (self.shape, self.kind) {
            (Shape::OllamaGenerate | Shape::OllamaChat | Shape::AnthropicMessages, _) => {
                b"\"thinking\":"
            }
            (Shape::OpenaiChat, _) => b"\"reasoning\":",
            (Shape::OpenaiResponses, Kind::Event | Kind::Line) => b"\"delta\":",
            _ => return false,
        };
        let Some(spliced) = splice_string(&self.raw, key, thinking) else {
            return false;
        };
        self.take_splice(spliced, before, |after| {
            after.thinking.as_deref() == Some(thinking) && after.text == before.text
        })
    }

    /// Takes the `spliced` bytes when reading them back satisfies `wanted`
    /// and everything else read is as `before`.
    fn take_splice(
        &mut self,
        spliced: Vec<u8>,
        before: &Info,
        wanted: impl FnOnce(&Info) -> bool,
    ) -> bool {
        let candidate = Chunk::new(Bytes::from(spliced), self.kind, self.shape);
        let after = candidate.info();
        let same_rest = after.done == before.done
            && after.thinking_done == before.thinking_done
            && after.tool_calls == before.tool_calls
            && after.usage == before.usage
            && after.usage_only == before.usage_only
            && after.block == before.block;
        if !wanted(after) || !same_rest {
            return false;
        }
        self.info = OnceCell::from(after.clone());
        self.raw = candidate.raw;
        self.value = None;
        true
    }

    /// A chunk of this API carrying `text` in `channel`, to insert before
    /// this chunk; `seq`: its `/v1/responses` sequence number, when not
    /// this chunk's.
    fn synthetic(&self, channel: Channel, text: &str, seq: Option<u64>) -> Vec<u8> {
        self.synthetic_in(channel, text, seq, None)
    }

    /// [`Chunk::synthetic`]; a Responses thinking event names `reasoning`
    /// (the answer's reasoning item) when this chunk names none.
    fn synthetic_in(
        &self,
        channel: Channel,
        text: &str,
        seq: Option<u64>,
        reasoning: Option<(&str, u64)>,
    ) -> Vec<u8> {
        if self.is_event_api() {
            let v = self.value.as_ref();
            return events::synthetic(v, self.shape, self.kind, channel, text, seq, reasoning);
        }
        let model = self
            .value
            .as_ref()
            .and_then(|v| v.get("model"))
            .cloned()
            .unwrap_or(Value::Null);
        let id = self
            .value
            .as_ref()
            .and_then(|v| v.get("id"))
            .cloned()
            .unwrap_or_else(|| json!("chatcmpl-kiln"));
        // Thinking chunks as Ollama writes them: with an empty text.
        let v = match (self.shape, channel) {
            (Shape::OllamaGenerate, Channel::Text) => {
                json!({"model": model, "response": text, "done": false})
            }
            (Shape::OllamaGenerate, Channel::Thinking) => {
                json!({"model": model, "response": "", "thinking": text, "done": false})
            }
            (Shape::OllamaChat, Channel::Text) => json!({
                "model": model,
                "message": {"role": "assistant", "content": text},
                "done": false,
            }),
            (Shape::OllamaChat, Channel::Thinking) => json!({
                "model": model,
                "message": {"role": "assistant", "content": "", "thinking": text},
                "done": false,
            }),
            (Shape::OpenaiChat, Channel::Text) => json!({
                "id": id, "object": "chat.completion.chunk", "created": unix_now(), "model": model,
                "choices": [{"index": 0, "delta": {"role": "assistant", "content": text}, "finish_reason": null}],
            }),
            (Shape::OpenaiChat, Channel::Thinking) => json!({
                "id": id, "object": "chat.completion.chunk", "created": unix_now(), "model": model,
                "choices": [{"index": 0, "delta": {"role": "assistant", "content": "", "reasoning": text}, "finish_reason": null}],
            }),
            (Shape::OpenaiCompletions, Channel::Text) => json!({
                "id": id, "object": "text_completion", "created": unix_now(), "model": model,
                "choices": [{"index": 0, "text": text, "finish_reason": null}],
            }),
            _ => return Vec::new(),
        };
        let json = serde_json::to_vec(&v).unwrap_or_default();
        let mut out = Vec::with_capacity(json.len() + 8);
        match self.kind {
            Kind::Event => frame_event(&mut out, &[], &json),
            Kind::Line | Kind::Whole => {
                out.extend_from_slice(&json);
                out.push(b'\n');
            }
        }
        out
    }

    /// Appends what goes to the client for this chunk to `out`.
    pub fn write_to(&self, out: &mut BytesMut) {
        if let Some(before) = &self.before {
            out.put_slice(before);
        }
        out.put_slice(&self.raw());
    }

    /// The chunk a hook's text made the host insert before this one, if any.
    pub fn inserted(&self) -> Option<&[u8]> {
        self.before.as_deref()
    }

    /// True when a hook changed this chunk's own text.
    pub fn text_edited(&self) -> bool {
        self.edited
    }

    /// True when a hook changed this chunk's own thinking.
    pub fn thinking_edited(&self) -> bool {
        self.thinking_edited
    }

    /// True when a hook changed this chunk's text or thinking, or put text
    /// or thinking before it: what goes out differs from what Ollama sent.
    pub(super) fn changed_by_hooks(&self) -> bool {
        self.edited
            || self.thinking_edited
            || self.before_text.is_some()
            || self.before_thinking.is_some()
    }

    /// Takes out, after the hooks ran, the fields that still describe the
    /// text Ollama generated, token by token, when they no longer match
    /// what goes out (the hooks cannot see or edit them): the chunk's
    /// `logprobs` (each names a token's text) when a hook changed its text
    /// or thinking, and `/api/generate`'s `context` (the token ids of the
    /// prompt and the whole answer, which a tokenizer turns back into the
    /// text) when `answer_changed`: a hook changed this or an earlier chunk
    /// of the answer. Removed, not emptied: Ollama omits both when it has
    /// none (omitempty). Only an edited chunk, or one whose bytes hold the
    /// name, goes further than a flag test; removing takes the tree path.
    pub(super) fn drop_token_fields(&mut self, answer_changed: bool) {
        if (self.edited || self.thinking_edited) && LOGPROBS.find(&self.raw).is_some() {
            match self.shape {
                Shape::OllamaGenerate | Shape::OllamaChat => self.remove_field("", "logprobs"),
                Shape::OpenaiChat | Shape::OpenaiCompletions => {
                    self.remove_field("/choices/0", "logprobs")
                }
                _ => {}
            }
        }
        if answer_changed
            && self.shape == Shape::OllamaGenerate
            && CONTEXT.find(&self.raw).is_some()
        {
            self.remove_field("", "context");
        }
    }

    /// Removes `key` from the object at `parent` (a JSON pointer) of the
    /// chunk's tree; `raw` is rebuilt from it when there was one.
    fn remove_field(&mut self, parent: &str, key: &str) {
        let removed = self
            .tree()
            .and_then(|v| v.pointer_mut(parent))
            .and_then(Value::as_object_mut)
            .is_some_and(|o| o.remove(key).is_some());
        if removed {
            self.changed = true;
        }
    }

    /// The name on an SSE event's `event:` line, when it starts with one
    /// (the event APIs name every event, so the name is known unparsed).
    pub fn event_name(&self) -> Option<&str> {
        let rest = self.raw.strip_prefix(b"event:")?;
        let end = memchr::memchr2(b'\n', b'\r', rest)?;
        std::str::from_utf8(&rest[..end]).ok().map(str::trim)
    }

    /// An SSE event named `name` carrying `json`, as the event APIs send
    /// them; for tests.
    #[cfg(test)]
    pub(super) fn named_event(shape: Shape, name: &str, json: &str) -> Chunk {
        let raw = format!("event: {name}\ndata: {json}\n\n");
        Chunk::new(Bytes::from(raw), Kind::Event, shape)
    }

    /// The text of the chunk inserted before this one, if any.
    pub fn inserted_text(&self) -> Option<&str> {
        self.before_text.as_deref()
    }

    /// The thinking of the chunk inserted before this one, if any.
    pub fn inserted_thinking(&self) -> Option<&str> {
        self.before_thinking.as_deref()
    }

    /// The JSON body of this (whole) chunk as it is now, for a rebuilt
    /// non-streaming answer.
    pub fn into_whole_body(self) -> Bytes {
        self.raw()
    }
}

/// `raw` with the JSON string value of the first object key `key`
/// (`"name":`, quotes and colon included) replaced by `text`. `None` when
/// there is no such key with a string value.
fn splice_string(raw: &[u8], key: &[u8], text: &str) -> Option<Vec<u8>> {
    let mut from = 0;
    while let Some(found) = memchr::memmem::find(&raw[from..], key) {
        let at = from + found;
        from = at + 1;
        // A key follows `{` or `,`; anything else is inside a longer name.
        let prev = raw[..at].iter().rev().find(|b| !b.is_ascii_whitespace());
        if !matches!(prev, Some(b'{' | b',')) {
            continue;
        }
        let mut start = at + key.len();
        while raw.get(start)?.is_ascii_whitespace() {
            start += 1;
        }
        if raw[start] != b'"' {
            return None;
        }
        let mut end = start + 1;
        loop {
            match raw.get(end)? {
                b'\\' => end += 2,
                b'"' => break,
                _ => end += 1,
            }
        }
        let mut out = Vec::with_capacity(raw.len() + text.len());
        out.extend_from_slice(&raw[..start]);
        // Serializing a str cannot fail.
        serde_json::to_writer(&mut out, text).ok()?;
        out.extend_from_slice(&raw[end + 1..]);
        return Some(out);
    }
    None
}

/// An SSE event: its `event:`/`id:` lines (`lines`, each with its line
/// end), then `json` as its data.
pub(super) fn frame_event(out: &mut Vec<u8>, lines: &[u8], json: &[u8]) {
    out.extend_from_slice(lines);
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(json);
    out.extend_from_slice(b"\n\n");
}

/// The lines of an SSE event before its first `data:` line (`event:`,
/// `id:`…), kept when the data is rewritten: the event APIs name every
/// event there, and their clients dispatch on it.
fn event_lines(raw: &[u8]) -> &[u8] {
    let mut at = 0;
    while at < raw.len() && !raw[at..].starts_with(b"data") {
        match memchr::memchr(b'\n', &raw[at..]) {
            Some(n) => at += n + 1,
            None => return &[],
        }
    }
    &raw[..at]
}

/// The string at `pointer`, created when its parent object exists (Ollama's
/// `done` chunk may lack `response`; a finish chunk may lack `delta.content`).
fn text_slot<'a>(v: &'a mut Value, pointer: &str) -> Option<&'a mut Value> {
    let (parent, leaf) = pointer.rsplit_once('/')?;
    let is_ollama_chunk = v.get("done").is_some() || v.get("model").is_some();
    let parent_value = if parent.is_empty() {
        // Ollama /api/generate: only a response object (not an error line) gets text.
        if !is_ollama_chunk && v.get("response").is_none() {
            return None;
        }
        v
    } else if parent == "/message" {
        if v.get("message").is_none() {
            if !is_ollama_chunk {
                return None;
            }
            v.as_object_mut()?
                .insert("message".into(), json!({"role": "assistant"}));
        }
        v.pointer_mut(parent)?
    } else if let Some(choice_field) = parent.strip_prefix("/choices/0/") {
        let choice = v.pointer_mut("/choices/0")?.as_object_mut()?;
        choice
            .entry(choice_field.to_string())
            .or_insert_with(|| json!({}))
    } else {
        v.pointer_mut(parent)?
    };
    let obj = parent_value.as_object_mut()?;
    Some(obj.entry(leaf.to_string()).or_insert(Value::Null))
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests;

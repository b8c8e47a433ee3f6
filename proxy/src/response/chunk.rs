//! One chunk of an Ollama or OpenAI-compatible answer, as the response hooks
//! see it: its generated text in one normalized form whatever the API, its
//! token usage, whether generation ends with it — and rewriting that text
//! back into the API's own JSON.

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

/// The JSON shape of a route's answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// `/api/generate`: text in `response`.
    OllamaGenerate,
    /// `/api/chat`: text in `message.content`.
    OllamaChat,
    /// `/v1/chat/completions`: `choices[0].delta.content` streamed,
    /// `choices[0].message.content` whole.
    OpenaiChat,
    /// `/v1/completions`: `choices[0].text`.
    OpenaiCompletions,
    /// `/v1/responses` (OpenAI Responses API): `delta` of
    /// `response.output_text.delta` events streamed, the `output_text` parts
    /// of `output[]` whole. Later events repeat the text: see `transcript`.
    OpenaiResponses,
    /// `/v1/messages` (Anthropic Messages API): `delta.text` of
    /// `content_block_delta` events with a `text_delta` streamed, the `text`
    /// blocks of `content[]` whole.
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
    /// A hook changed the chunk's text (by either path).
    edited: bool,
    /// A text chunk to send before this one, when a hook put text on a chunk
    /// that has no place for it.
    before: Option<Vec<u8>>,
    /// The text of `before`.
    before_text: Option<String>,
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
            edited: false,
            before: None,
            before_text: None,
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

    /// True when generation ends with this chunk (see the WIT `chunk.done`).
    pub fn done(&self) -> bool {
        self.kind == Kind::Whole || self.info().done
    }

    /// Sets [`Chunk::done`], for what only the answer's earlier chunks tell
    /// (the stop of a `/v1/messages` text block, see `blocks`).
    pub(super) fn set_done(&mut self, done: bool) {
        self.info();
        if let Some(info) = self.info.get_mut() {
            info.done = done;
        }
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
        if self.text() == Some(text.as_str()) {
            return true;
        }
        if self.shape == Shape::Other {
            return false;
        }
        let mut info = self.info().clone();
        if !self.changed && self.splice_text(&text, &info) {
            self.edited = true;
            return true;
        }
        let placed = match self.text_pointer() {
            Some(pointer) => match self.tree().and_then(|v| text_slot(v, pointer)) {
                Some(slot) => {
                    *slot = Value::String(text.clone());
                    true
                }
                None => false,
            },
            // The event APIs: a text event, or a whole body.
            None => {
                let (shape, kind, has_text) = (self.shape, self.kind, info.text.is_some());
                self.tree()
                    .is_some_and(|v| events::place_text(v, shape, kind, has_text, &text))
            }
        };
        if placed {
            self.changed = true;
            self.edited = true;
            info.text = Some(text);
            self.info = OnceCell::from(info);
            return true;
        }
        let joined = self.before_text.get_or_insert_with(String::new);
        joined.push_str(&text);
        let joined = joined.clone();
        if self.is_event_api() {
            // One event carries all the text put here (by several hooks):
            // a `/v1/responses` event inserted takes a sequence number.
            self.before = Some(self.synthetic(&joined, None));
        } else {
            let synthetic = self.synthetic(&text, None);
            self.before
                .get_or_insert_with(Vec::new)
                .extend_from_slice(&synthetic);
        }
        true
    }

    fn is_event_api(&self) -> bool {
        matches!(
            self.shape,
            Shape::OpenaiResponses | Shape::AnthropicMessages
        )
    }

    /// Gives the `/v1/responses` event inserted before this chunk (see
    /// [`Chunk::inserted`]) the sequence number `seq`.
    pub(super) fn number_inserted(&mut self, seq: u64) {
        if let (Some(text), Shape::OpenaiResponses) = (self.before_text.clone(), self.shape) {
            self.before = Some(self.synthetic(&text, Some(seq)));
        }
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
        let candidate = Chunk::new(Bytes::from(spliced), self.kind, self.shape);
        let after = candidate.info();
        let same_rest = after.done == before.done
            && after.usage == before.usage
            && after.usage_only == before.usage_only;
        if after.text.as_deref() != Some(text) || !same_rest {
            return false;
        }
        self.info = OnceCell::from(after.clone());
        self.raw = candidate.raw;
        self.value = None;
        true
    }

    /// A chunk of this API carrying `text`, to insert before this chunk;
    /// `seq`: its `/v1/responses` sequence number, when not this chunk's.
    fn synthetic(&self, text: &str, seq: Option<u64>) -> Vec<u8> {
        if self.is_event_api() {
            return events::synthetic(self.value.as_ref(), self.shape, self.kind, text, seq);
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
        let v = match self.shape {
            Shape::OllamaGenerate => json!({"model": model, "response": text, "done": false}),
            Shape::OllamaChat => json!({
                "model": model,
                "message": {"role": "assistant", "content": text},
                "done": false,
            }),
            Shape::OpenaiChat => json!({
                "id": id, "object": "chat.completion.chunk", "created": unix_now(), "model": model,
                "choices": [{"index": 0, "delta": {"role": "assistant", "content": text}, "finish_reason": null}],
            }),
            Shape::OpenaiCompletions => json!({
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

    /// The name on an SSE event's `event:` line, when it starts with one
    /// (the event APIs name every event, so the name is known unparsed).
    pub fn event_name(&self) -> Option<&str> {
        let rest = self.raw.strip_prefix(b"event:")?;
        let end = memchr::memchr2(b'\n', b'\r', rest)?;
        std::str::from_utf8(&rest[..end]).ok().map(str::trim)
    }

    /// The text of the chunk inserted before this one, if any.
    pub fn inserted_text(&self) -> Option<&str> {
        self.before_text.as_deref()
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

//! The OpenAI Responses API as Ollama serves it (`/v1/responses`;
//! openai/responses.go, `ResponsesStreamConverter`, `ToResponse`): typed
//! events streamed (each JSON names itself in `type`, and the SSE `event:`
//! line repeats it) — text in the `delta` of `response.output_text.delta`,
//! thinking in `response.reasoning_summary_text.delta`; whole, the
//! `output_text` parts of `output[]`'s message items and the
//! `summary_text` parts of its reasoning items. Usage in the response
//! object (`input_tokens`, `output_tokens`).
//!
//! The answer's state is a [`Transcript`]: a streamed answer repeats its
//! text, and numbers its events.
//!
//! A streamed `/v1/responses` answer carries its text twice: once in
//! `response.output_text.delta` events, then whole again in
//! `response.output_text.done` (`text`), `response.content_part.done`
//! (`part.text`), `response.output_item.done` (`item.content[].text`) and
//! the final `response.completed` (`response.output[].content[].text`)
//! (openai/responses.go, `processCompletion`). When a hook rewrote a delta
//! (a redaction), those copies must say what the client got — the rewritten
//! deltas joined — or the original text reaches the client at the end.
//!
//! A [`Transcript`] follows one answer's chunks after the hooks, in the
//! order they are sent: it keeps the text of each message item as sent and,
//! once any text event was rewritten or inserted, rewrites the copies. Only
//! streamed Responses answers get one. Until a hook changes something it
//! parses nothing: it appends the text the hooks already read to a string,
//! and tells events apart by their `event:` line. (A chunk no hook read
//! went past hooks that had all stopped looking — `pass-rest`, or left out
//! after a failure — and none of them can change a later chunk either, so
//! nothing unread is missed before a change; after one, every delta is read.)
//! Other APIs send their text once (a whole body too, where `set_text`
//! places it), and pay nothing.
//!
//! The thinking is repeated the same way: sent in
//! `response.reasoning_summary_text.delta` events, then whole in
//! `response.reasoning_summary_text.done` (`text`), the reasoning item of
//! `response.output_item.done` (`item.summary[].text` and
//! `item.encrypted_content`, where Ollama puts the plain thinking) and of
//! `response.completed` (`finishReasoning`, `processCompletion`). The
//! transcript keeps each reasoning item's thinking as sent too, and
//! rewrites those copies once a hook changed or inserted thinking.
//!
//! Every event of a streamed Responses answer also has a `sequence_number`,
//! counting up by one. A text event the host inserts (see [`event`]) takes
//! the number of the event it goes before, and that event and every later
//! one are renumbered one up; until an event is inserted, nothing is.

use std::sync::LazyLock;

use memchr::memmem::Finder;
use serde::Deserialize;
use serde_json::{Value, json};

use super::chunk::Chunk;
use super::codec::{AnswerState, Channel, Codec, Kind, Usage, View};
use super::lenient::{List, Obj, Scalar, typed};
use super::wire::{arguments_text, frame_event};

static USAGE: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"usage\""));

pub struct Responses;

#[derive(Deserialize, Default)]
struct Peek<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Scalar<'a>,
    #[serde(borrow, default)]
    delta: Scalar<'a>,
    /// The response object of the lifecycle events.
    #[serde(borrow, default)]
    response: Obj<WithUsage<'a>>,
    /// Whole body: `"object": "response"` and its items.
    #[serde(borrow, default)]
    object: Scalar<'a>,
    #[serde(borrow, default)]
    output: List<OutputItem<'a>>,
    #[serde(borrow, default)]
    usage: Obj<Tokens<'a>>,
}

#[derive(Deserialize, Default)]
struct WithUsage<'a> {
    #[serde(borrow, default)]
    usage: Obj<Tokens<'a>>,
}

/// Token counts as the event APIs name them (either may be missing).
#[derive(Deserialize, Default)]
pub(super) struct Tokens<'a> {
    #[serde(borrow, default)]
    input_tokens: Scalar<'a>,
    #[serde(borrow, default)]
    output_tokens: Scalar<'a>,
}

impl Tokens<'_> {
    pub(super) fn usage(&self) -> Usage {
        Usage {
            prompt_tokens: self.input_tokens.u64().unwrap_or(0),
            completion_tokens: self.output_tokens.u64().unwrap_or(0),
        }
    }
}

#[derive(Deserialize, Default)]
struct OutputItem<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Scalar<'a>,
    #[serde(borrow, default)]
    content: List<Part<'a>>,
    /// A `reasoning` item's summary parts (`summary_text`).
    #[serde(borrow, default)]
    summary: List<Part<'a>>,
}

/// A part of a whole answer: a Responses content or summary part, an
/// Anthropic content block.
#[derive(Deserialize, Default)]
pub(super) struct Part<'a> {
    #[serde(rename = "type", borrow, default)]
    pub kind: Scalar<'a>,
    #[serde(borrow, default)]
    pub text: Scalar<'a>,
    /// An Anthropic `thinking` block's (or `thinking_delta`'s) thinking.
    #[serde(borrow, default)]
    pub thinking: Scalar<'a>,
    /// An Anthropic `input_json_delta`'s piece of a tool call's input.
    #[serde(borrow, default)]
    pub partial_json: Scalar<'a>,
}

/// The `field` of the parts of type `kind`, joined; `None` when there are none.
pub(super) fn joined<'a>(
    parts: impl Iterator<Item = &'a Part<'a>>,
    kind: &str,
    field: impl Fn(&'a Part<'a>) -> &'a Scalar<'a>,
) -> Option<String> {
    let mut texts = parts
        .filter(|p| p.kind.as_str() == Some(kind))
        .map(|p| field(p).as_str().unwrap_or(""))
        .peekable();
    texts.peek()?;
    Some(texts.collect())
}

/// The Responses event that ends the thinking: the reasoning item's
/// summary is complete (held thinking must go out before it, while its
/// deltas are still allowed).
const THINKING_DONE: &str = "response.reasoning_summary_text.done";
const THINKING_DELTA: &str = "response.reasoning_summary_text.delta";
const TEXT_DELTA: &str = "response.output_text.delta";
const ARGUMENTS_DELTA: &str = "response.function_call_arguments.delta";

/// The events that end generation: `response.output_text.done` closes the
/// text (held text must go out before it, while deltas are still allowed),
/// the others end the response.
fn ends(event: &str) -> bool {
    matches!(
        event,
        "response.output_text.done"
            | "response.completed"
            | "response.incomplete"
            | "response.failed"
    )
}

impl Codec for Responses {
    fn name(&self) -> &'static str {
        "openai-responses"
    }

    fn read(&self, json: &[u8], kind: Kind) -> View {
        let Some(p) = typed::<Peek>(json) else {
            return View::default();
        };
        if kind == Kind::Whole {
            // Only a response object has text where `place` puts it.
            if p.object.as_str() != Some("response") {
                return View {
                    done: true,
                    thinking_done: true,
                    usage: p.usage.0.as_ref().map(Tokens::usage),
                    ..View::default()
                };
            }
            let items = |kind: &'static str| {
                p.output
                    .0
                    .iter()
                    .filter(move |i| i.kind.as_str() == Some(kind))
            };
            let parts = items("message").flat_map(|i| &i.content.0);
            // Ollama's `ToResponse` repeats the thinking as
            // `encrypted_content`, which is not read: a copy.
            let summaries = items("reasoning").flat_map(|i| &i.summary.0);
            let tool_calls = items("function_call").next().is_some();
            return View {
                text: joined(parts, "output_text", |p| &p.text),
                thinking: joined(summaries, "summary_text", |p| &p.text),
                tool_arguments: tool_calls
                    .then(|| arguments_text(self, json, kind))
                    .flatten(),
                tool_calls,
                done: true,
                thinking_done: true,
                usage: p.usage.0.as_ref().map(Tokens::usage),
                ..View::default()
            };
        }
        let event = p.kind.as_str().unwrap_or("");
        let delta = || p.delta.as_str().map(str::to_owned);
        View {
            text: (event == TEXT_DELTA).then(delta).flatten(),
            thinking: (event == THINKING_DELTA).then(delta).flatten(),
            tool_arguments: (event == ARGUMENTS_DELTA).then(delta).flatten(),
            tool_calls: event == ARGUMENTS_DELTA,
            done: ends(event),
            thinking_done: event == THINKING_DONE,
            usage: p
                .response
                .0
                .as_ref()
                .and_then(|r| r.usage.0.as_ref())
                .map(Tokens::usage),
            ..View::default()
        }
    }

    fn may_carry_usage(&self, raw: &[u8]) -> bool {
        USAGE.find(raw).is_some()
    }

    /// Not the thinking of a whole body: its reasoning items repeat it in
    /// `encrypted_content`, which the tree rewrites too.
    fn splice_key(&self, channel: Channel, kind: Kind) -> Option<&'static [u8]> {
        match (kind, channel) {
            (Kind::Event | Kind::Line, _) => Some(b"\"delta\":"),
            (Kind::Whole, Channel::Text) => Some(b"\"text\":"),
            (Kind::Whole, Channel::Thinking) | (_, Channel::ToolArguments) => None,
        }
    }

    /// Streamed, the `delta` of a `response.function_call_arguments.delta`
    /// (Ollama sends a call's whole arguments in one; the transcript keeps
    /// their copies in step); whole, the `arguments` of each
    /// `function_call` item of `output[]`.
    fn tool_arguments<'v>(&self, v: &'v mut Value, kind: Kind) -> Vec<&'v mut Value> {
        if kind != Kind::Whole {
            if !is_type(v, ARGUMENTS_DELTA) {
                return Vec::new();
            }
            return v.get_mut("delta").into_iter().collect();
        }
        let calls = v.get_mut("output").and_then(Value::as_array_mut);
        calls
            .into_iter()
            .flatten()
            .filter(|item| is_type(item, "function_call"))
            .filter_map(|item| item.get_mut("arguments"))
            .collect()
    }

    /// The delta of a text or thinking event (`had`: the chunk is one); in
    /// a whole body, the first text (summary) part, emptying the others so
    /// the body says `value` once, adding a part when there is none.
    fn place(&self, v: &mut Value, channel: Channel, kind: Kind, had: bool, value: &str) -> bool {
        match (kind, channel) {
            (_, Channel::ToolArguments) => false,
            (Kind::Event | Kind::Line, _) if had => match v.as_object_mut() {
                Some(o) => {
                    o.insert("delta".into(), Value::String(value.into()));
                    true
                }
                None => false,
            },
            (Kind::Whole, Channel::Text) => place_in_body(v, value),
            (Kind::Whole, Channel::Thinking) => think_in_body(v, value),
            _ => false,
        }
    }

    /// One event carries all the text put before a chunk (by several
    /// hooks); it takes the chunk's sequence number, until the transcript
    /// renumbers it.
    fn synthesize(
        &self,
        near: Option<&Value>,
        kind: Kind,
        channel: Channel,
        pieces: &[String],
    ) -> Vec<u8> {
        if kind != Kind::Event {
            return Vec::new();
        }
        event(near, channel, &pieces.concat(), None, None)
    }

    fn answer(&self, kind: Kind) -> Option<Box<dyn AnswerState>> {
        (kind == Kind::Event).then(|| Box::new(Transcript::default()) as Box<dyn AnswerState>)
    }
}

/// A text (thinking) delta event carrying `text`, to go before the event
/// whose tree is `near` (a `response.output_text.done` when a hook releases
/// held text at the end): it names the same item. Keys sorted, as Ollama's
/// Go marshals a map. It takes `seq` as its `sequence_number`, or else
/// `near`'s; a thinking event names `reasoning` (the answer's reasoning
/// item) when `near` names none.
fn event(
    near: Option<&Value>,
    channel: Channel,
    text: &str,
    seq: Option<u64>,
    reasoning: Option<(&str, u64)>,
) -> Vec<u8> {
    let n = |p: &str| near.and_then(|v| v.pointer(p)).and_then(Value::as_u64);
    // Serializing a str cannot fail.
    let text = serde_json::to_string(text).unwrap_or_default();
    let seq = seq.or_else(|| n("/sequence_number")).unwrap_or(0);
    let (name, json) = match channel {
        Channel::Thinking => {
            // `processThinking`'s delta.
            let (item_id, output_index) = reasoning_item(near, reasoning);
            let item_id = serde_json::to_string(&item_id).unwrap_or_default();
            let json = format!(
                "{{\"delta\":{text},\"item_id\":{item_id},\"output_index\":{output_index},\
                 \"sequence_number\":{seq},\"summary_index\":{},\"type\":\"{THINKING_DELTA}\"}}",
                n("/summary_index").unwrap_or(0),
            );
            (THINKING_DELTA, json)
        }
        Channel::Text => {
            let (item_id, output_index) = message_item(near);
            let item_id = serde_json::to_string(&item_id).unwrap_or_default();
            let json = format!(
                "{{\"content_index\":{},\"delta\":{text},\"item_id\":{item_id},\"logprobs\":[],\
                 \"output_index\":{output_index},\"sequence_number\":{seq},\"type\":\"{TEXT_DELTA}\"}}",
                n("/content_index").unwrap_or(0),
            );
            (TEXT_DELTA, json)
        }
        // Arguments are never inserted (see `Channel::ToolArguments`).
        Channel::ToolArguments => return Vec::new(),
    };
    let mut out = Vec::with_capacity(json.len() + 40);
    frame_event(
        &mut out,
        format!("event: {name}\n").as_bytes(),
        json.as_bytes(),
    );
    out
}

fn is_type(v: &Value, kind: &str) -> bool {
    v.get("type").and_then(Value::as_str) == Some(kind)
}

fn list(v: Option<&Value>) -> impl Iterator<Item = &Value> {
    v.and_then(Value::as_array).into_iter().flatten()
}

fn array_mut<'a>(v: &'a mut Value, key: &str) -> Option<&'a mut Vec<Value>> {
    v.get_mut(key).and_then(Value::as_array_mut)
}

/// Sets `field` of the first of `parts` to `text`, of the others to "", so
/// that together they say `text`. `false` when there is none.
pub(super) fn fill<'a>(
    parts: impl Iterator<Item = &'a mut Value>,
    field: &str,
    text: &str,
) -> bool {
    let mut first = true;
    for part in parts {
        if let Some(o) = part.as_object_mut() {
            let t = if first { text } else { "" };
            o.insert(field.into(), Value::String(t.into()));
            first = false;
        }
    }
    !first
}

/// `output[]` items of type `reasoning`: their `summary_text` parts, and
/// `encrypted_content`, where Ollama repeats the thinking in plain text
/// (`ToResponse`): an item keeps it only with the thinking it now has, or
/// the original would reach the client there.
fn think_in_body(v: &mut Value, thinking: &str) -> bool {
    if !is_type_of(v, "object", "response") {
        return false;
    }
    let Some(output) = array_mut(v, "output") else {
        return false;
    };
    let is_part = |p: &Value| is_type(p, "summary_text");
    let has_part = output
        .iter()
        .filter(|i| is_type(i, "reasoning"))
        .any(|i| list(i.get("summary")).any(is_part));
    if !has_part {
        // A summary part in the first reasoning item, or a reasoning item
        // first in `output`, as `ToResponse` writes it.
        let part = json!({"type": "summary_text", "text": ""});
        match output.iter_mut().find(|i| is_type(i, "reasoning")) {
            Some(item) => match item.as_object_mut() {
                Some(o) => o
                    .entry("summary")
                    .and_modify(|s| {
                        if !s.is_array() {
                            *s = json!([]);
                        }
                    })
                    .or_insert_with(|| json!([]))
                    .as_array_mut()
                    .into_iter()
                    .for_each(|s| s.push(part.clone())),
                None => return false,
            },
            None => {
                output.insert(
                    0,
                    json!({
                        "id": "rs_kiln", "type": "reasoning",
                        "summary": [{"type": "summary_text", "text": thinking}],
                        "encrypted_content": thinking,
                    }),
                );
                return true;
            }
        }
    }
    // The first reasoning item with a summary part gets the thinking; the
    // others none.
    let mut placed = false;
    for item in output.iter_mut().filter(|i| is_type(i, "reasoning")) {
        let first = !placed && list(item.get("summary")).any(is_part);
        placed |= first;
        fill_reasoning_item(item, if first { thinking } else { "" });
    }
    placed
}

/// A Responses `reasoning` item says `thinking`: its first `summary_text`
/// part does, its other parts say nothing, and so does its
/// `encrypted_content`, where Ollama repeats the thinking in plain text.
fn fill_reasoning_item(item: &mut Value, thinking: &str) {
    let parts = array_mut(item, "summary").into_iter().flatten();
    fill(
        parts.filter(|p| is_type(p, "summary_text")),
        "text",
        thinking,
    );
    if let Some(o) = item.as_object_mut() {
        if o.contains_key("encrypted_content") {
            o.insert("encrypted_content".into(), Value::String(thinking.into()));
        }
    }
}

/// `output[]` items of type `message`, their `output_text` content parts.
fn place_in_body(v: &mut Value, text: &str) -> bool {
    if !is_type_of(v, "object", "response") {
        return false;
    }
    let Some(output) = array_mut(v, "output") else {
        return false;
    };
    let parts = output
        .iter_mut()
        .filter(|i| is_type(i, "message"))
        .filter_map(|i| array_mut(i, "content"))
        .flat_map(|c| c.iter_mut().filter(|p| is_type(p, "output_text")));
    if fill(parts, "text", text) {
        return true;
    }
    let part = json!({"type": "output_text", "text": text, "annotations": [], "logprobs": []});
    if let Some(content) = output
        .iter_mut()
        .find(|i| is_type(i, "message"))
        .and_then(|i| array_mut(i, "content"))
    {
        content.push(part);
    } else {
        output.push(json!({
            "id": "msg_kiln", "type": "message", "status": "completed", "role": "assistant",
            "content": [part],
        }));
    }
    true
}

fn is_type_of(v: &Value, key: &str, value: &str) -> bool {
    v.get(key).and_then(Value::as_str) == Some(value)
}

/// The message item a Responses event is about: its own `item_id` and
/// `output_index`, the item of an `output_item` event, or the last message
/// of a response object's `output`.
fn message_item(v: Option<&Value>) -> (String, u64) {
    item_of(v, "message", "msg_kiln", |_| true)
}

/// The reasoning item a Responses event is about, as [`message_item`]:
/// the event's own item only when it is a reasoning event or item (a text
/// event names its message), else `known` (the answer's last reasoning
/// item, when the caller knows it).
fn reasoning_item(v: Option<&Value>, known: Option<(&str, u64)>) -> (String, u64) {
    if let (false, Some((id, index))) = (v.is_some_and(names_reasoning), known) {
        return (id.to_owned(), index);
    }
    item_of(v, "reasoning", "rs_kiln", names_reasoning)
}

/// A reasoning event, or an `output_item` event of a reasoning item.
fn names_reasoning(v: &Value) -> bool {
    let event = v.get("type").and_then(Value::as_str).unwrap_or("");
    event.starts_with("response.reasoning")
        || is_type(v.get("item").unwrap_or(&Value::Null), "reasoning")
}

fn item_of(
    v: Option<&Value>,
    kind: &str,
    default: &str,
    own: impl Fn(&Value) -> bool,
) -> (String, u64) {
    let Some(v) = v else {
        return (default.into(), 0);
    };
    let index = v.get("output_index").and_then(Value::as_u64);
    let id = v
        .get("item_id")
        .or_else(|| v.pointer("/item/id"))
        .and_then(Value::as_str)
        .filter(|_| own(v));
    if let Some(id) = id {
        return (id.into(), index.unwrap_or(0));
    }
    let output = v
        .pointer("/response/output")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    match output.iter().rposition(|i| is_type(i, kind)) {
        Some(at) => {
            let id = output[at]
                .get("id")
                .and_then(Value::as_str)
                .unwrap_or(default);
            (id.into(), at as u64)
        }
        None => (default.into(), output.len() as u64),
    }
}

#[derive(Debug, Default)]
pub struct Transcript {
    /// The message items in the order they were added: id, text sent.
    items: Vec<(String, String)>,
    /// A hook changed the text of the answer: the copies need rewriting.
    diverged: bool,
    /// The reasoning items in the order they were added: id, thinking sent.
    thoughts: Vec<(String, String)>,
    /// A hook changed the thinking: its copies need rewriting.
    thoughts_diverged: bool,
    /// The function calls' arguments as sent: item id, arguments.
    calls: Vec<(String, String)>,
    /// A hook changed a call's arguments: their copies need rewriting.
    calls_diverged: bool,
    /// The last reasoning item added: id, `output_index` (the item thinking
    /// inserted before an event that names none goes to).
    reasoning: Option<(String, u64)>,
    /// Events inserted so far: the later events' sequence numbers go up by as many.
    shift: u64,
}

impl AnswerState for Transcript {
    fn after_hooks(&mut self, chunk: &mut Chunk) {
        self.sent(chunk);
    }
}

impl Transcript {
    /// One chunk on its way to the client, after the hooks: its text is
    /// recorded, and a copy of the text is made to match what was sent.
    pub fn sent(&mut self, chunk: &mut Chunk) {
        if self.shift > 0 || chunk.inserted().is_some() {
            self.renumber(chunk);
        }
        if let Some(inserted) = chunk.inserted_thinking().map(str::to_owned) {
            // Inserted before this chunk, in the reasoning item it names.
            let known = self.reasoning.as_ref().map(|(i, n)| (i.as_str(), *n));
            let (id, _) = reasoning_item(chunk.tree().map(|v| &*v), known);
            entry(&mut self.thoughts, &id).push_str(&inserted);
            self.thoughts_diverged = true;
        }
        if let Some(inserted) = chunk.inserted_text().map(str::to_owned) {
            // Inserted before this chunk, in the item this chunk names.
            let (id, _) = message_item(chunk.tree().map(|v| &*v));
            self.item(&id).push_str(&inserted);
            self.diverged = true;
        }
        if chunk.event_name() == Some(ARGUMENTS_DELTA) {
            // A call's arguments, whole (Ollama sends them in one delta).
            let id = chunk
                .tree()
                .and_then(|v| v.get("item_id"))
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned();
            let sent = chunk.tool_arguments().unwrap_or("").to_owned();
            entry(&mut self.calls, &id).push_str(&sent);
            self.calls_diverged |= chunk.tool_arguments_edited();
            return;
        }
        let is_thought = if self.thoughts_diverged {
            chunk.thinking().is_some()
        } else {
            chunk.thinking_read().is_some()
        };
        if is_thought {
            if self.thoughts.is_empty() {
                // A delta without its `output_item.added`: use the id it names.
                let (id, _) = reasoning_item(chunk.tree().map(|v| &*v), None);
                entry(&mut self.thoughts, &id);
            }
            if let (Some((_, sent)), Some(t)) = (self.thoughts.last_mut(), chunk.thinking()) {
                sent.push_str(t);
            }
            self.thoughts_diverged |= chunk.thinking_edited();
            return;
        }
        let is_delta = if self.diverged {
            chunk.text().is_some()
        } else {
            chunk.text_read().is_some()
        };
        if is_delta {
            if self.items.is_empty() {
                // A delta without its `output_item.added`: use the id it names.
                let (id, _) = message_item(chunk.tree().map(|v| &*v));
                self.item(&id);
            }
            if let (Some((_, sent)), Some(text)) = (self.items.last_mut(), chunk.text()) {
                sent.push_str(text);
            }
            self.diverged |= chunk.text_edited();
            return;
        }
        match chunk.event_name() {
            Some("response.output_item.added") => {
                let item = chunk.tree().and_then(|v| {
                    let kind = v.pointer("/item/type").and_then(Value::as_str)?;
                    let id = v.pointer("/item/id").and_then(Value::as_str)?;
                    let index = v.get("output_index").and_then(Value::as_u64).unwrap_or(0);
                    Some((kind == "reasoning", id.to_owned(), index))
                });
                match item {
                    Some((false, id, _)) => {
                        self.item(&id);
                    }
                    Some((true, id, index)) => {
                        entry(&mut self.thoughts, &id);
                        self.reasoning = Some((id, index));
                    }
                    None => {}
                }
            }
            Some(
                name @ ("response.output_text.done"
                | "response.content_part.done"
                | "response.reasoning_summary_text.done"
                | "response.function_call_arguments.done"
                | "response.output_item.done"
                | "response.completed"
                | "response.incomplete"
                | "response.failed"),
            ) if self.diverged || self.thoughts_diverged || self.calls_diverged => {
                let name = name.to_owned();
                if let Some(v) = chunk.tree() {
                    self.patch(&name, v);
                    chunk.tree_changed();
                }
            }
            _ => {}
        }
    }

    /// The sequence numbers of `chunk` and of the event inserted before it.
    fn renumber(&mut self, chunk: &mut Chunk) {
        let inserted = chunk.inserted().is_some();
        let seq = chunk
            .tree()
            .and_then(|v| v.get("sequence_number"))
            .and_then(Value::as_u64);
        let Some(seq) = seq else {
            return; // not a numbered event: nothing to follow
        };
        if inserted {
            // The events inserted get the numbers from here on, in the
            // order they go out (thinking, then text).
            let mut n = seq + self.shift;
            let known = self.reasoning.as_ref().map(|(i, n)| (i.as_str(), *n));
            for channel in Channel::ALL {
                let Some(text) = chunk.inserted_of(channel).map(str::to_owned) else {
                    continue;
                };
                let near = chunk.tree().map(|v| &*v);
                let bytes = event(near, channel, &text, Some(n), known);
                chunk.set_inserted(channel, bytes);
                n += 1;
            }
            self.shift = n - seq;
        }
        if let Some(v) = chunk.tree().and_then(Value::as_object_mut) {
            v.insert("sequence_number".into(), (seq + self.shift).into());
            chunk.tree_changed();
        }
    }

    /// The text sent for item `id`, added (empty) when new.
    fn item(&mut self, id: &str) -> &mut String {
        entry(&mut self.items, id)
    }

    /// The text sent for item `id`: nothing, for an item no text event
    /// named (its text never reached the client).
    fn text_of(&self, id: Option<&str>) -> &str {
        sent_of(&self.items, id)
    }

    /// Rewrites the copies of the text and thinking in the tree `v` of
    /// event `name`: each only when a hook changed it.
    fn patch(&self, name: &str, v: &mut Value) {
        let id = v.get("item_id").and_then(Value::as_str).map(str::to_owned);
        let (text, thinking) = (self.diverged, self.thoughts_diverged);
        match name {
            "response.reasoning_summary_text.done" => {
                if thinking {
                    let sent = sent_of(&self.thoughts, id.as_deref()).to_owned();
                    set_text(v, &sent);
                }
            }
            "response.function_call_arguments.done" => {
                if self.calls_diverged {
                    let sent = sent_of(&self.calls, id.as_deref()).to_owned();
                    if let Some(o) = v.as_object_mut() {
                        o.insert("arguments".into(), Value::String(sent));
                    }
                }
            }
            "response.output_text.done" | "response.content_part.done" if !text => {}
            "response.output_text.done" => {
                let text = self.text_of(id.as_deref()).to_owned();
                set_text(v, &text);
            }
            "response.content_part.done" => {
                let text = self.text_of(id.as_deref()).to_owned();
                if let Some(part) = v.get_mut("part") {
                    set_text(part, &text);
                }
            }
            "response.output_item.done" => {
                if let Some(item) = v.get_mut("item") {
                    self.patch_item(item);
                }
            }
            _ => {
                let output = v
                    .pointer_mut("/response/output")
                    .and_then(Value::as_array_mut);
                for item in output.into_iter().flatten() {
                    self.patch_item(item);
                }
            }
        }
    }

    /// A message item: its first `output_text` part gets the text sent, the
    /// others none. A reasoning item: its first `summary_text` part and its
    /// `encrypted_content` get the thinking sent, the other parts none. A
    /// function call: its `arguments` as sent.
    fn patch_item(&self, item: &mut Value) {
        let id = item.get("id").and_then(Value::as_str);
        match item.get("type").and_then(Value::as_str) {
            Some("function_call") if self.calls_diverged => {
                let sent = sent_of(&self.calls, id).to_owned();
                if let Some(o) = item.as_object_mut() {
                    o.insert("arguments".into(), Value::String(sent));
                }
            }
            Some("reasoning") if self.thoughts_diverged => {
                let sent = sent_of(&self.thoughts, id).to_owned();
                fill_reasoning_item(item, &sent);
            }
            Some("message") if self.diverged => {
                let text = self.text_of(id).to_owned();
                let parts = item
                    .get_mut("content")
                    .and_then(Value::as_array_mut)
                    .into_iter()
                    .flatten()
                    .filter(|p| p.get("type").and_then(Value::as_str) == Some("output_text"));
                fill(parts, "text", &text);
            }
            _ => {}
        }
    }
}

/// What was sent for item `id` in `items`, added (empty) when new.
fn entry<'a>(items: &'a mut Vec<(String, String)>, id: &str) -> &'a mut String {
    let at = match items.iter().position(|(i, _)| i == id) {
        Some(at) => at,
        None => {
            items.push((id.to_owned(), String::new()));
            items.len() - 1
        }
    };
    &mut items[at].1
}

/// What was sent for item `id`: nothing, for an item no event named (its
/// text never reached the client).
fn sent_of<'a>(items: &'a [(String, String)], id: Option<&str>) -> &'a str {
    items
        .iter()
        .find(|(i, _)| Some(i.as_str()) == id)
        .map_or("", |(_, t)| t.as_str())
}

fn set_text(v: &mut Value, text: &str) {
    if let Some(o) = v.as_object_mut() {
        o.insert("text".into(), Value::String(text.into()));
    }
}

#[cfg(test)]
mod tests;

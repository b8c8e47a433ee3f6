//! The OpenAI Responses API as Ollama serves it (`/v1/responses`;
//! openai/responses.go, `ResponsesStreamConverter`, `ToResponse`): typed
//! events streamed (each JSON names itself in `type`, and the SSE `event:`
//! line repeats it) — text in the `delta` of `response.output_text.delta`,
//! thinking in `response.reasoning_summary_text.delta`; whole, the
//! `output_text` parts of `output[]`'s message items and the
//! `summary_text` parts of its reasoning items. Usage in the response
//! object (`input_tokens`, `output_tokens`).
//!
//! The answer's state is a [`Transcript`] (`responses/transcript.rs`): a
//! streamed answer repeats its text, and numbers its events.

// Named by path: the fuzz target includes this file by path too, and a
// file included so looks for its modules beside itself.
#[path = "responses/transcript.rs"]
mod transcript;

use std::sync::LazyLock;

use memchr::memmem::Finder;
use serde::Deserialize;
use serde_json::{Value, json};

use super::codec::{AnswerState, Channel, Codec, Kind, Usage, View};
use super::lenient::{List, Obj, Scalar, typed};
use super::wire::{arguments_text, frame_event, put_string};

pub use transcript::Transcript;

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
            (Kind::Event | Kind::Line, _) if had => put_string(v.as_object_mut(), "delta", value),
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

#[cfg(test)]
mod tests;

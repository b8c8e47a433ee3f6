//! The Anthropic Messages API as Ollama serves it (`/v1/messages`;
//! anthropic/anthropic.go, `StreamConverter`, `ToMessagesResponse`): typed
//! events streamed — text in the `delta.text` of `content_block_delta`
//! events with a `text_delta`, thinking in `thinking_delta`s; whole, the
//! `text` and `thinking` blocks of `content[]`. Usage: the input tokens in
//! `message_start`, the output tokens in `message_delta` (see
//! [`Usage::merged`](super::codec::Usage::merged)). Errors are Anthropic's own (`routes::ApiStyle`).
//!
//! The answer's state is [`Blocks`]: which block a stop closes.

use std::sync::LazyLock;

use memchr::memmem::Finder;
use serde::Deserialize;
use serde_json::{Value, json};

use super::chunk::Chunk;
use super::codec::{AnswerState, Channel, Codec, Kind, View};
use super::lenient::{List, Obj, Scalar, typed};
use super::responses::{Part, Tokens, fill, joined};
use super::wire::{arguments_text, frame_event, put_string};

static USAGE: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"usage\""));

pub struct Messages;

#[derive(Deserialize, Default)]
struct Peek<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Scalar<'a>,
    #[serde(borrow, default)]
    delta: Obj<Part<'a>>,
    /// `message_start`'s message.
    #[serde(borrow, default)]
    message: Obj<WithUsage<'a>>,
    #[serde(borrow, default)]
    usage: Obj<Tokens<'a>>,
    /// Whole body.
    #[serde(borrow, default)]
    content: List<Part<'a>>,
}

#[derive(Deserialize, Default)]
struct WithUsage<'a> {
    #[serde(borrow, default)]
    usage: Obj<Tokens<'a>>,
}

impl Codec for Messages {
    fn name(&self) -> &'static str {
        "anthropic-messages"
    }

    fn read(&self, json: &[u8], kind: Kind) -> View {
        let Some(p) = typed::<Peek>(json) else {
            return View::default();
        };
        // Only a message has text where `place` puts it.
        if kind == Kind::Whole && p.kind.as_str() != Some("message") {
            return View {
                done: true,
                thinking_done: true,
                usage: p.usage.0.as_ref().map(Tokens::usage),
                ..View::default()
            };
        }
        if kind == Kind::Whole {
            let tool_calls = p
                .content
                .0
                .iter()
                .any(|p| p.kind.as_str() == Some("tool_use"));
            return View {
                text: joined(p.content.0.iter(), "text", |p| &p.text),
                thinking: joined(p.content.0.iter(), "thinking", |p| &p.thinking),
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
        let (text, thinking, arguments) = match (event, &p.delta.0) {
            ("content_block_delta", Some(d)) => {
                let s = |f: &Scalar| Some(f.as_str().unwrap_or("").to_owned());
                match d.kind.as_str() {
                    Some("text_delta") => (s(&d.text), None, None),
                    Some("thinking_delta") => (None, s(&d.thinking), None),
                    Some("input_json_delta") => (None, None, s(&d.partial_json)),
                    _ => (None, None, None),
                }
            }
            _ => (None, None, None),
        };
        let usage = match event {
            "message_start" => p.message.0.as_ref().and_then(|m| m.usage.0.as_ref()),
            "message_delta" => p.usage.0.as_ref(),
            _ => None,
        };
        View {
            text,
            thinking,
            tool_calls: arguments.is_some(),
            tool_arguments: arguments,
            // `message_delta` ends the message; the stop of a text block
            // ends the text too, which only [`Blocks`] can tell.
            done: event == "message_delta",
            usage: usage.map(Tokens::usage),
            ..View::default()
        }
    }

    fn may_carry_usage(&self, raw: &[u8]) -> bool {
        USAGE.find(raw).is_some()
    }

    fn splice_key(&self, channel: Channel, _kind: Kind) -> Option<&'static [u8]> {
        Some(match channel {
            Channel::Text => b"\"text\":",
            Channel::Thinking => b"\"thinking\":",
            Channel::ToolArguments => return None,
        })
    }

    /// Streamed, the `partial_json` of an `input_json_delta` (Ollama sends
    /// a call's whole input in one); whole, the `input` of each `tool_use`
    /// block of `content[]`.
    fn tool_arguments<'v>(&self, v: &'v mut Value, kind: Kind) -> Vec<&'v mut Value> {
        if kind != Kind::Whole {
            return v.pointer_mut("/delta/partial_json").into_iter().collect();
        }
        v.get_mut("content")
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
            .filter(|b| is_type(b, "tool_use"))
            .filter_map(|b| b.get_mut("input"))
            .collect()
    }

    /// The delta of a text or thinking event (`had`: the chunk is one); in
    /// a whole body, the first block of the kind, emptying the others so
    /// the body says `value` once, adding a block when there is none.
    fn place(&self, v: &mut Value, channel: Channel, kind: Kind, had: bool, value: &str) -> bool {
        let field = match channel {
            Channel::Text => "text",
            Channel::Thinking => "thinking",
            Channel::ToolArguments => return false,
        };
        match (kind, channel) {
            (Kind::Event | Kind::Line, _) if had => put_string(
                v.pointer_mut("/delta").and_then(Value::as_object_mut),
                field,
                value,
            ),
            (Kind::Whole, Channel::Text) => place_in_body(v, value),
            (Kind::Whole, Channel::Thinking) => think_in_body(v, value),
            _ => false,
        }
    }

    /// One delta event carries all the text put before a chunk (by several
    /// hooks), in the block that chunk names (a `content_block_stop` when a
    /// hook releases held text at the end). Fields in the order of Ollama's
    /// Go struct.
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
        let index = near
            .and_then(|v| v.get("index"))
            .and_then(Value::as_u64)
            .unwrap_or(0);
        // Serializing a str cannot fail.
        let text = serde_json::to_string(&pieces.concat()).unwrap_or_default();
        let delta = match channel {
            Channel::Text => format!("{{\"type\":\"text_delta\",\"text\":{text}}}"),
            Channel::Thinking => format!("{{\"type\":\"thinking_delta\",\"thinking\":{text}}}"),
            Channel::ToolArguments => return Vec::new(),
        };
        let json =
            format!("{{\"type\":\"content_block_delta\",\"index\":{index},\"delta\":{delta}}}");
        let mut out = Vec::with_capacity(json.len() + 40);
        frame_event(&mut out, b"event: content_block_delta\n", json.as_bytes());
        out
    }

    fn answer(&self, kind: Kind) -> Option<Box<dyn AnswerState>> {
        (kind == Kind::Event).then(|| Box::new(Blocks::default()) as Box<dyn AnswerState>)
    }
}

fn is_type(v: &Value, kind: &str) -> bool {
    v.get("type").and_then(Value::as_str) == Some(kind)
}

fn array_mut<'a>(v: &'a mut Value, key: &str) -> Option<&'a mut Vec<Value>> {
    v.get_mut(key).and_then(Value::as_array_mut)
}

fn is_object_of(v: &Value, key: &str, value: &str) -> bool {
    v.get(key).and_then(Value::as_str) == Some(value)
}

/// `content[]` blocks of type `thinking`; a new one goes first (the model
/// thinks before it answers).
fn think_in_body(v: &mut Value, thinking: &str) -> bool {
    if !is_object_of(v, "type", "message") {
        return false;
    }
    let Some(content) = array_mut(v, "content") else {
        return false;
    };
    let thoughts = content.iter_mut().filter(|b| is_type(b, "thinking"));
    if !fill(thoughts, "thinking", thinking) {
        content.insert(0, json!({"type": "thinking", "thinking": thinking}));
    }
    true
}

/// `content[]` blocks of type `text`.
fn place_in_body(v: &mut Value, text: &str) -> bool {
    if !is_object_of(v, "type", "message") {
        return false;
    }
    let Some(content) = array_mut(v, "content") else {
        return false;
    };
    if fill(
        content.iter_mut().filter(|b| is_type(b, "text")),
        "text",
        text,
    ) {
        return true;
    }
    content.push(json!({"type": "text", "text": text}));
    true
}

/// A content block opened or closed by an event. Whether a stop ends the
/// text depends on what its start opened, which only the answer's earlier
/// events tell (see [`Blocks`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Block {
    /// `content_block_start`; `text`, `thinking`: its `content_block.type`
    /// is `text`, `thinking`.
    Start {
        index: u64,
        text: bool,
        thinking: bool,
    },
    /// `content_block_stop`.
    Stop { index: u64 },
}

#[derive(Deserialize, Default)]
struct BlockEvent<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Scalar<'a>,
    #[serde(borrow, default)]
    index: Scalar<'a>,
    #[serde(borrow, default)]
    content_block: Obj<Part<'a>>,
}

/// The block the event `chunk` opens or closes, if any.
pub fn block_of(chunk: &Chunk) -> Option<Block> {
    let data = chunk.data()?;
    let e = typed::<BlockEvent>(&data)?;
    let index = e.index.u64()?;
    let opens = e.content_block.0.as_ref().and_then(|b| b.kind.as_str());
    match e.kind.as_str()? {
        "content_block_start" => Some(Block::Start {
            index,
            text: opens == Some("text"),
            thinking: opens == Some("thinking"),
        }),
        "content_block_stop" => Some(Block::Stop { index }),
        _ => None,
    }
}

/// Which content blocks of a streamed `/v1/messages` answer hold its text.
///
/// Anthropic's stream closes every content block — thinking, text,
/// tool use — with the same `content_block_stop`, which names the block
/// only by `index`. Only the stop of a *text* block ends the text (held
/// text must go out before it, in a delta of that block); what a block is,
/// its `content_block_start` said earlier in the same answer. [`Blocks`]
/// keeps that per answer and marks the chunks before the hooks see them.
///
/// It reads only block starts and stops, which it knows by their `event:`
/// line without parsing: the deltas, most of the stream, cost a comparison.
#[derive(Debug, Default)]
pub struct Blocks {
    /// The indexes of the blocks opened as text (a handful per answer).
    text: Vec<u64>,
    /// The indexes of the blocks opened as thinking.
    thinking: Vec<u64>,
}

impl AnswerState for Blocks {
    fn before_hooks(&mut self, chunk: &mut Chunk) {
        self.mark(chunk);
    }
}

impl Blocks {
    /// One chunk on its way to the hooks, in order: a block start is noted,
    /// a block stop is done when its block is a text block.
    pub fn mark(&mut self, chunk: &mut Chunk) {
        // Ollama names every event; an event without a name is read.
        if !matches!(
            chunk.event_name(),
            None | Some("content_block_start" | "content_block_stop")
        ) {
            return;
        }
        match block_of(chunk) {
            Some(Block::Start {
                index,
                text,
                thinking,
            }) => {
                // An index opened again (not Ollama's way) is what it opens now.
                self.text.retain(|&i| i != index);
                self.thinking.retain(|&i| i != index);
                if text {
                    self.text.push(index);
                }
                if thinking {
                    self.thinking.push(index);
                }
            }
            Some(Block::Stop { index }) => {
                let text = self.text.contains(&index);
                chunk.set_done(text);
                // The stop of a thinking block ends the thinking: held
                // thinking goes out before it, in a delta of that block.
                chunk.set_thinking_done(self.thinking.contains(&index));
            }
            None => {}
        }
    }
}

#[cfg(test)]
mod tests;

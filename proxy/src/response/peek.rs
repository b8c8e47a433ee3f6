//! Reading what the response hooks need from a chunk — its text, whether
//! generation ends with it, its usage — without building a JSON tree: a
//! borrowed, typed parse that skips every other field. A tree is built only
//! when a hook rewrites the text. This keeps a chunk that passes untouched
//! cheap, which is most chunks.

use std::borrow::Cow;

use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::Value;

use super::chunk::{Kind, Shape, Usage};

/// What the hooks see of a chunk.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Info {
    pub text: Option<String>,
    /// The model's thinking (reasoning) in this chunk: a second text
    /// channel, read from the API's own field (see `Chunk::thinking`).
    pub thinking: Option<String>,
    pub done: bool,
    /// The thinking ends with this chunk, by what the chunk itself says
    /// (a Responses `reasoning_summary_text.done`); what only earlier
    /// chunks tell is marked by the stream (see `thinking`, `blocks`).
    pub thinking_done: bool,
    /// The chunk carries tool calls (Ollama's and OpenAI's chat shapes):
    /// like text, they end the thinking before them.
    pub tool_calls: bool,
    pub usage: Option<Usage>,
    /// OpenAI's usage chunk: no choices, only usage.
    pub usage_only: bool,
    /// A `/v1/messages` event that opens or closes a content block.
    pub block: Option<Block>,
}

/// A content block opened or closed by a `/v1/messages` event. Whether a
/// stop ends the text depends on what its start opened, which only the
/// answer's earlier events tell (see `blocks`).
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

#[derive(Deserialize)]
struct Peek<'a> {
    #[serde(borrow, default)]
    response: Option<Cow<'a, str>>,
    /// `/api/generate`'s thinking.
    #[serde(borrow, default)]
    thinking: Option<Cow<'a, str>>,
    /// `/api/generate`'s tool calls (only their presence is read).
    #[serde(default)]
    tool_calls: Option<IgnoredAny>,
    #[serde(borrow, default)]
    message: Option<Content<'a>>,
    #[serde(default)]
    done: Option<bool>,
    #[serde(default)]
    eval_count: Option<u64>,
    #[serde(default)]
    prompt_eval_count: Option<u64>,
    #[serde(borrow, default)]
    choices: Option<FirstChoice<'a>>,
    #[serde(default)]
    usage: Option<OpenaiUsage>,
}

/// `choices`, of which the hooks read only the first: the others are
/// skipped without being collected (no allocation per chunk).
struct FirstChoice<'a> {
    first: Option<Choice<'a>>,
}

impl<'de: 'a, 'a> Deserialize<'de> for FirstChoice<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for Visit<'a> {
            type Value = FirstChoice<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an array of choices")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Self::Value, A::Error> {
                let first = seq.next_element::<Choice<'a>>()?;
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(FirstChoice { first })
            }
        }
        d.deserialize_seq(Visit(std::marker::PhantomData))
    }
}

#[derive(Deserialize)]
struct Content<'a> {
    #[serde(borrow, default)]
    content: Option<Cow<'a, str>>,
    /// Ollama's `message.thinking`.
    #[serde(borrow, default)]
    thinking: Option<Cow<'a, str>>,
    /// OpenAI's `delta.reasoning` / `message.reasoning`.
    #[serde(borrow, default)]
    reasoning: Option<Cow<'a, str>>,
    #[serde(default)]
    tool_calls: Option<IgnoredAny>,
}

impl<'a> Content<'a> {
    /// Text, thinking (Ollama's name or OpenAI's), whether tools are called.
    fn parts(self, openai: bool) -> (Option<Cow<'a, str>>, Option<Cow<'a, str>>, bool) {
        let thinking = if openai {
            self.reasoning
        } else {
            self.thinking
        };
        (self.content, thinking, self.tool_calls.is_some())
    }
}

#[derive(Deserialize)]
struct Choice<'a> {
    #[serde(borrow, default)]
    delta: Option<Content<'a>>,
    #[serde(borrow, default)]
    message: Option<Content<'a>>,
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    finish_reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct OpenaiUsage {
    prompt_tokens: u64,
    completion_tokens: u64,
}

/// Reads `json` (a chunk's JSON: a line, an event's data, a body).
/// Anything that is not a JSON object of the expected shape has no text,
/// no usage and does not end generation.
pub fn read(json: &[u8], kind: Kind, shape: Shape) -> Info {
    match shape {
        Shape::Other => return Info::default(),
        Shape::OpenaiResponses => return read_as::<ResponsesPeek>(json, kind, shape),
        Shape::AnthropicMessages => return read_as::<MessagesPeek>(json, kind, shape),
        _ => {}
    }
    match typed::<Peek>(json) {
        Ok(p) => from_peek(p, kind, shape),
        // A field of an unexpected type (say, OpenAI content parts): read
        // the slow way, field by field, so one odd field does not hide the rest.
        Err(_) => match serde_json::from_slice::<Value>(json) {
            Ok(v) if v.is_object() => from_value(&v, kind, shape),
            _ => Info::default(),
        },
    }
}

/// A typed parse. Valid UTF-8 (every chunk Ollama writes) is checked once,
/// so the parser does not check each string again.
fn typed<'a, P: Deserialize<'a>>(json: &'a [u8]) -> serde_json::Result<P> {
    match std::str::from_utf8(json) {
        Ok(text) => serde_json::from_str(text),
        Err(_) => serde_json::from_slice(json),
    }
}

/// The typed reading of the event APIs, with the same tree fallback.
fn read_as<'a, P: Deserialize<'a> + Reading>(json: &'a [u8], kind: Kind, shape: Shape) -> Info {
    match typed::<P>(json) {
        Ok(p) => p.reading(kind),
        Err(_) => match serde_json::from_slice::<Value>(json) {
            Ok(v) if v.is_object() => from_value(&v, kind, shape),
            _ => Info::default(),
        },
    }
}

fn from_peek(mut p: Peek, kind: Kind, shape: Shape) -> Info {
    // Ollama writes thinking and text in one chunk (`/api/chat`:
    // `message.thinking`, `message.content`); OpenAI in one delta
    // (`reasoning`, `content`), which Ollama splits in two chunks.
    let first = p.choices.as_mut().and_then(|c| c.first.as_mut());
    let (text, thinking, tool_calls) = match (shape, kind) {
        (Shape::OllamaGenerate, _) => {
            (p.response.take(), p.thinking.take(), p.tool_calls.is_some())
        }
        (Shape::OllamaChat, _) => p
            .message
            .take()
            .map_or((None, None, false), |m| m.parts(false)),
        (Shape::OpenaiChat, Kind::Whole) => first
            .and_then(|c| c.message.take())
            .map_or((None, None, false), |m| m.parts(true)),
        (Shape::OpenaiChat, _) => first
            .and_then(|c| c.delta.take())
            .map_or((None, None, false), |m| m.parts(true)),
        (Shape::OpenaiCompletions, _) => (first.and_then(|c| c.text.take()), None, false),
        _ => (None, None, false),
    };
    let first = p.choices.as_ref().and_then(|c| c.first.as_ref());
    let ollama = matches!(shape, Shape::OllamaGenerate | Shape::OllamaChat);
    let done = kind == Kind::Whole
        || if ollama {
            p.done == Some(true)
        } else {
            first.is_some_and(|c| c.finish_reason.is_some())
        };
    let usage = if ollama {
        p.eval_count.map(|completion_tokens| Usage {
            prompt_tokens: p.prompt_eval_count.unwrap_or(0),
            completion_tokens,
        })
    } else {
        p.usage.as_ref().map(|u| Usage {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
        })
    };
    let usage_only = !ollama
        && kind == Kind::Event
        && p.usage.is_some()
        && p.choices.as_ref().is_some_and(|c| c.first.is_none());
    Info {
        text: text.map(Cow::into_owned),
        thinking: thinking.map(Cow::into_owned),
        done,
        thinking_done: false,
        tool_calls,
        usage,
        usage_only,
        block: None,
    }
}

/// The same reading over a JSON tree.
pub fn from_value(v: &Value, kind: Kind, shape: Shape) -> Info {
    match shape {
        Shape::OpenaiResponses => return responses_from_value(v, kind),
        Shape::AnthropicMessages => return messages_from_value(v, kind),
        _ => {}
    }
    let (pointer, thinking, tools) = match (shape, kind) {
        (Shape::OllamaGenerate, _) => ("/response", "/thinking", "/tool_calls"),
        (Shape::OllamaChat, _) => (
            "/message/content",
            "/message/thinking",
            "/message/tool_calls",
        ),
        (Shape::OpenaiChat, Kind::Whole) => (
            "/choices/0/message/content",
            "/choices/0/message/reasoning",
            "/choices/0/message/tool_calls",
        ),
        (Shape::OpenaiChat, _) => (
            "/choices/0/delta/content",
            "/choices/0/delta/reasoning",
            "/choices/0/delta/tool_calls",
        ),
        (Shape::OpenaiCompletions, _) => ("/choices/0/text", "", ""),
        _ => return Info::default(),
    };
    let string = |p: &str| {
        v.pointer(p)
            .filter(|_| !p.is_empty())
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let n = |p: &str| v.pointer(p).and_then(Value::as_u64);
    let ollama = matches!(shape, Shape::OllamaGenerate | Shape::OllamaChat);
    let done = kind == Kind::Whole
        || if ollama {
            v.get("done") == Some(&Value::Bool(true))
        } else {
            v.pointer("/choices/0/finish_reason")
                .is_some_and(Value::is_string)
        };
    let usage = if ollama {
        n("/eval_count").map(|completion_tokens| Usage {
            prompt_tokens: n("/prompt_eval_count").unwrap_or(0),
            completion_tokens,
        })
    } else {
        n("/usage/prompt_tokens")
            .zip(n("/usage/completion_tokens"))
            .map(|(prompt_tokens, completion_tokens)| Usage {
                prompt_tokens,
                completion_tokens,
            })
    };
    let usage_only = !ollama
        && kind == Kind::Event
        && v.get("usage").is_some_and(Value::is_object)
        && v.get("choices")
            .and_then(Value::as_array)
            .is_some_and(Vec::is_empty);
    Info {
        text: string(pointer),
        thinking: string(thinking),
        done,
        thinking_done: false,
        tool_calls: !tools.is_empty() && v.pointer(tools).is_some_and(|t| !t.is_null()),
        usage,
        usage_only,
        block: None,
    }
}

// `/v1/responses` and `/v1/messages` answer with typed events (each JSON
// names itself in `type`, and the SSE `event:` line repeats it), and their
// whole bodies keep the text in a list of parts. What Ollama sends is in
// docs/PLUGINS.md ("Where the text is"); the Go code is
// openai/responses.go (`ResponsesStreamConverter`, `ToResponse`) and
// anthropic/anthropic.go (`StreamConverter`, `ToMessagesResponse`).

/// A typed peek of one of the event APIs, read for a chunk of `kind`.
trait Reading {
    fn reading(self, kind: Kind) -> Info;
}

/// Token counts as both event APIs name them. Anthropic's `message_delta`
/// may lack `input_tokens` (Ollama sends it, Anthropic does not).
#[derive(Deserialize)]
struct TokenCounts {
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
}

impl TokenCounts {
    fn usage(&self) -> Usage {
        Usage {
            prompt_tokens: self.input_tokens.unwrap_or(0),
            completion_tokens: self.output_tokens.unwrap_or(0),
        }
    }
}

/// A part of a whole answer: a Responses `output_text` content part, an
/// Anthropic content block.
#[derive(Deserialize)]
struct Part<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
    /// An Anthropic `thinking` block's (or `thinking_delta`'s) thinking.
    #[serde(borrow, default)]
    thinking: Option<Cow<'a, str>>,
}

/// The text of the parts of type `kind`, joined; `None` when there are none.
fn joined<'a>(parts: impl Iterator<Item = &'a Part<'a>>, kind: &str) -> Option<String> {
    joined_field(parts, kind, |p| &p.text)
}

/// The `field` of the parts of type `kind`, joined; `None` when there are none.
fn joined_field<'a>(
    parts: impl Iterator<Item = &'a Part<'a>>,
    kind: &str,
    field: impl Fn(&'a Part<'a>) -> &'a Option<Cow<'a, str>>,
) -> Option<String> {
    let mut texts = parts.filter(|p| p.kind.as_deref() == Some(kind));
    let first = field(texts.next()?).as_deref().unwrap_or("");
    let mut text = first.to_owned();
    for p in texts {
        text.push_str(field(p).as_deref().unwrap_or(""));
    }
    Some(text)
}

#[derive(Deserialize)]
struct ResponsesPeek<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    delta: Option<Cow<'a, str>>,
    /// The response object of the lifecycle events.
    #[serde(default)]
    response: Option<ResponsesObject>,
    /// Whole body.
    #[serde(borrow, default)]
    output: Option<Vec<OutputItem<'a>>>,
    #[serde(default)]
    usage: Option<TokenCounts>,
}

#[derive(Deserialize)]
struct ResponsesObject {
    #[serde(default)]
    usage: Option<TokenCounts>,
}

#[derive(Deserialize)]
struct OutputItem<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    content: Option<Vec<Part<'a>>>,
    /// A `reasoning` item's summary parts (`summary_text`).
    #[serde(borrow, default)]
    summary: Option<Vec<Part<'a>>>,
}

/// The thinking of a whole Responses body: the `summary_text` parts of its
/// `reasoning` items (Ollama's `ToResponse` writes one, and the same text
/// again as `encrypted_content`, which is not read: a copy).
fn responses_thinking<'a>(output: &'a [OutputItem<'a>]) -> Option<String> {
    let parts = output
        .iter()
        .filter(|i| i.kind.as_deref() == Some("reasoning"))
        .flat_map(|i| i.summary.iter().flatten());
    joined(parts, "summary_text")
}

/// The Responses event that ends the thinking: the reasoning item's
/// summary is complete (held thinking must go out before it, while its
/// deltas are still allowed).
const THINKING_DONE: &str = "response.reasoning_summary_text.done";
const THINKING_DELTA: &str = "response.reasoning_summary_text.delta";

/// The Responses events that end generation: `response.output_text.done`
/// closes the text (held text must go out before it, while deltas are
/// still allowed), the others end the response.
fn responses_done(kind: &str) -> bool {
    matches!(
        kind,
        "response.output_text.done"
            | "response.completed"
            | "response.incomplete"
            | "response.failed"
    )
}

impl Reading for ResponsesPeek<'_> {
    fn reading(self, kind: Kind) -> Info {
        if kind == Kind::Whole {
            let parts = self
                .output
                .iter()
                .flatten()
                .filter(|i| i.kind.as_deref() == Some("message"))
                .flat_map(|i| i.content.iter().flatten());
            return Info {
                text: joined(parts, "output_text"),
                thinking: responses_thinking(self.output.as_deref().unwrap_or_default()),
                done: true,
                thinking_done: true,
                usage: self.usage.as_ref().map(TokenCounts::usage),
                ..Info::default()
            };
        }
        let event = self.kind.as_deref().unwrap_or("");
        let (text, thinking) = match event {
            "response.output_text.delta" => (self.delta, None),
            THINKING_DELTA => (None, self.delta),
            _ => (None, None),
        };
        Info {
            text: text.map(Cow::into_owned),
            thinking: thinking.map(Cow::into_owned),
            done: responses_done(event),
            thinking_done: event == THINKING_DONE,
            usage: self
                .response
                .as_ref()
                .and_then(|r| r.usage.as_ref())
                .map(TokenCounts::usage),
            ..Info::default()
        }
    }
}

#[derive(Deserialize)]
struct MessagesPeek<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    delta: Option<Part<'a>>,
    /// The block a `content_block_*` event is about.
    #[serde(default)]
    index: Option<u64>,
    /// `content_block_start`'s block.
    #[serde(borrow, default)]
    content_block: Option<Part<'a>>,
    /// `message_start`'s message.
    #[serde(default)]
    message: Option<ResponsesObject>,
    #[serde(default)]
    usage: Option<TokenCounts>,
    /// Whole body.
    #[serde(borrow, default)]
    content: Option<Vec<Part<'a>>>,
}

/// The Messages event that ends generation by itself: `message_delta` ends
/// the message. The `content_block_stop` of a text block ends the text too
/// (held text must go out before it, as a delta of that block), but the
/// event does not say which kind of block it closes: the stream's
/// `blocks` marks it done, knowing what each `content_block_start` opened.
fn messages_done(kind: &str) -> bool {
    kind == "message_delta"
}

/// The block event `event` (with the block's `index`, and for a start the
/// type of the block it opens) is about.
fn messages_block(event: &str, index: Option<u64>, opens: Option<&str>) -> Option<Block> {
    let index = index?;
    match event {
        "content_block_start" => Some(Block::Start {
            index,
            text: opens == Some("text"),
            thinking: opens == Some("thinking"),
        }),
        "content_block_stop" => Some(Block::Stop { index }),
        _ => None,
    }
}

impl Reading for MessagesPeek<'_> {
    fn reading(self, kind: Kind) -> Info {
        if kind == Kind::Whole {
            return Info {
                text: joined(self.content.iter().flatten(), "text"),
                thinking: joined_field(self.content.iter().flatten(), "thinking", |p| &p.thinking),
                done: true,
                thinking_done: true,
                usage: self.usage.as_ref().map(TokenCounts::usage),
                ..Info::default()
            };
        }
        let event = self.kind.as_deref().unwrap_or("");
        let opens = self.content_block.as_ref().and_then(|b| b.kind.as_deref());
        let block = messages_block(event, self.index, opens);
        let (text, thinking) = match (event, self.delta) {
            ("content_block_delta", Some(d)) => match d.kind.as_deref() {
                Some("text_delta") => (Some(d.text.map(Cow::into_owned).unwrap_or_default()), None),
                Some("thinking_delta") => (
                    None,
                    Some(d.thinking.map(Cow::into_owned).unwrap_or_default()),
                ),
                _ => (None, None),
            },
            _ => (None, None),
        };
        let usage = match event {
            "message_start" => self.message.and_then(|m| m.usage),
            "message_delta" => self.usage,
            _ => None,
        };
        Info {
            text,
            thinking,
            done: messages_done(event),
            usage: usage.as_ref().map(TokenCounts::usage),
            block,
            ..Info::default()
        }
    }
}

/// The same readings over a tree, field by field.
fn counts(u: Option<&Value>) -> Option<Usage> {
    let u = u.filter(|u| u.is_object())?;
    let n = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0);
    Some(Usage {
        prompt_tokens: n("input_tokens"),
        completion_tokens: n("output_tokens"),
    })
}

fn joined_values<'a>(parts: impl Iterator<Item = &'a Value>, kind: &str) -> Option<String> {
    joined_fields(parts, kind, "text")
}

fn joined_fields<'a>(
    parts: impl Iterator<Item = &'a Value>,
    kind: &str,
    field: &str,
) -> Option<String> {
    let mut texts = parts
        .filter(|p| p.get("type").and_then(Value::as_str) == Some(kind))
        .map(|p| p.get(field).and_then(Value::as_str).unwrap_or(""))
        .peekable();
    texts.peek()?;
    Some(texts.collect())
}

fn list(v: Option<&Value>) -> impl Iterator<Item = &Value> {
    v.and_then(Value::as_array).into_iter().flatten()
}

fn responses_from_value(v: &Value, kind: Kind) -> Info {
    if kind == Kind::Whole {
        let parts = list(v.get("output"))
            .filter(|i| i.get("type").and_then(Value::as_str) == Some("message"))
            .flat_map(|i| list(i.get("content")));
        let summaries = list(v.get("output"))
            .filter(|i| i.get("type").and_then(Value::as_str) == Some("reasoning"))
            .flat_map(|i| list(i.get("summary")));
        return Info {
            text: joined_values(parts, "output_text"),
            thinking: joined_values(summaries, "summary_text"),
            done: true,
            thinking_done: true,
            usage: counts(v.get("usage")),
            ..Info::default()
        };
    }
    let event = v.get("type").and_then(Value::as_str).unwrap_or("");
    let delta = || v.get("delta").and_then(Value::as_str).map(str::to_owned);
    Info {
        text: match event {
            "response.output_text.delta" => delta(),
            _ => None,
        },
        thinking: match event {
            THINKING_DELTA => delta(),
            _ => None,
        },
        done: responses_done(event),
        thinking_done: event == THINKING_DONE,
        usage: counts(v.pointer("/response/usage")),
        ..Info::default()
    }
}

fn messages_from_value(v: &Value, kind: Kind) -> Info {
    if kind == Kind::Whole {
        return Info {
            text: joined_values(list(v.get("content")), "text"),
            thinking: joined_fields(list(v.get("content")), "thinking", "thinking"),
            done: true,
            thinking_done: true,
            usage: counts(v.get("usage")),
            ..Info::default()
        };
    }
    let event = v.get("type").and_then(Value::as_str).unwrap_or("");
    let delta_of = |kind: &str, field: &str| match event {
        "content_block_delta" if v.pointer("/delta/type").and_then(Value::as_str) == Some(kind) => {
            Some(
                v.pointer("/delta")
                    .and_then(|d| d.get(field))
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned(),
            )
        }
        _ => None,
    };
    let text = delta_of("text_delta", "text");
    let thinking = delta_of("thinking_delta", "thinking");
    let usage = match event {
        "message_start" => counts(v.pointer("/message/usage")),
        "message_delta" => counts(v.get("usage")),
        _ => None,
    };
    let block = messages_block(
        event,
        v.get("index").and_then(Value::as_u64),
        v.pointer("/content_block/type").and_then(Value::as_str),
    );
    Info {
        text,
        thinking,
        done: messages_done(event),
        usage,
        block,
        ..Info::default()
    }
}

#[cfg(test)]
mod tests;

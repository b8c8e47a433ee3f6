//! Ollama's own answers: `/api/generate` (text in `response`, thinking in
//! `thinking`) and `/api/chat` (`message.content`, `message.thinking`; both
//! may come in one chunk). Streamed as NDJSON, the last line `done:true`
//! with the token counts (`prompt_eval_count` is omitted when it is 0);
//! whole, the same object once.

use std::borrow::Cow;
use std::sync::LazyLock;

use memchr::memmem::Finder;
use serde::Deserialize;
use serde_json::{Value, json};

use super::chunk::Chunk;
use super::codec::{AnswerState, Channel, Codec, Kind, ThinkingEnd, Usage, View};
use super::lenient::{Obj, Scalar, typed};
use super::wire::{arguments_text, each_at, frame, put_string};
use crate::framing::Format;

/// Only chunks with these bytes can carry token counts, thinking, the
/// fields that describe the text token by token.
static EVAL_COUNT: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"eval_count\""));
static THINKING: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"thinking\""));
pub(super) static LOGPROBS: LazyLock<Finder<'static>> =
    LazyLock::new(|| Finder::new(b"\"logprobs\""));
static CONTEXT: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"context\""));

/// `/api/generate` (`chat: false`) or `/api/chat`.
pub struct Ollama {
    pub chat: bool,
}

#[derive(Deserialize, Default)]
struct Peek<'a> {
    #[serde(borrow, default)]
    response: Scalar<'a>,
    /// `/api/generate`'s thinking.
    #[serde(borrow, default)]
    thinking: Scalar<'a>,
    /// `/api/generate`'s tool calls (only their presence is read).
    #[serde(borrow, default)]
    tool_calls: Option<Scalar<'a>>,
    #[serde(borrow, default)]
    message: Obj<Message<'a>>,
    #[serde(default)]
    done: Scalar<'a>,
    #[serde(default)]
    eval_count: Scalar<'a>,
    #[serde(default)]
    prompt_eval_count: Scalar<'a>,
}

#[derive(Deserialize, Default)]
struct Message<'a> {
    #[serde(borrow, default)]
    content: Scalar<'a>,
    #[serde(borrow, default)]
    thinking: Scalar<'a>,
    #[serde(borrow, default)]
    tool_calls: Option<Scalar<'a>>,
}

/// `tool_calls` present and not null (`Option` reads null as `None`).
fn calls(t: &Option<Scalar<'_>>) -> bool {
    t.is_some()
}

impl Codec for Ollama {
    fn name(&self) -> &'static str {
        if self.chat {
            "ollama-chat"
        } else {
            "ollama-generate"
        }
    }

    fn stream_format(&self) -> Format {
        Format::Ndjson
    }

    fn read(&self, json: &[u8], kind: Kind) -> View {
        let Some(p) = typed::<Peek>(json) else {
            return View::default();
        };
        let (text, thinking, tool_calls) = if self.chat {
            match p.message.0 {
                Some(m) => (m.content.str(), m.thinking.str(), calls(&m.tool_calls)),
                None => (None, None, false),
            }
        } else {
            (p.response.str(), p.thinking.str(), calls(&p.tool_calls))
        };
        View {
            text: text.map(Cow::into_owned),
            thinking: thinking.map(Cow::into_owned),
            tool_arguments: tool_calls
                .then(|| arguments_text(self, json, kind))
                .flatten(),
            done: p.done.is_true(),
            tool_calls,
            usage: p.eval_count.u64().map(|completion_tokens| Usage {
                prompt_tokens: p.prompt_eval_count.u64().unwrap_or(0),
                completion_tokens,
            }),
            ..View::default()
        }
    }

    fn may_carry_usage(&self, raw: &[u8]) -> bool {
        EVAL_COUNT.find(raw).is_some()
    }

    fn splice_key(&self, channel: Channel, _kind: Kind) -> Option<&'static [u8]> {
        Some(match (channel, self.chat) {
            (Channel::Text, false) => b"\"response\":",
            (Channel::Text, true) => b"\"content\":",
            (Channel::Thinking, _) => b"\"thinking\":",
            (Channel::ToolArguments, _) => return None,
        })
    }

    /// `message.tool_calls[].function.arguments` (objects); `tool_calls` at
    /// the top on `/api/generate`.
    fn tool_arguments<'v>(&self, v: &'v mut Value, _kind: Kind) -> Vec<&'v mut Value> {
        let calls = if self.chat {
            "/message/tool_calls"
        } else {
            "/tool_calls"
        };
        each_at(v, calls, "/function/arguments")
    }

    /// The field, created when missing — only in a chunk of Ollama's (not
    /// an error line): its `done` chunk may lack `response`, and thinking
    /// released on the first text chunk lands in a new `thinking`.
    fn place(&self, v: &mut Value, channel: Channel, _kind: Kind, _had: bool, value: &str) -> bool {
        let is_ollama_chunk = v.get("done").is_some() || v.get("model").is_some();
        let field = match channel {
            Channel::Text if self.chat => "content",
            Channel::Text => "response",
            Channel::Thinking => "thinking",
            Channel::ToolArguments => return false,
        };
        let parent = if self.chat {
            if v.get("message").is_none() {
                if !is_ollama_chunk {
                    return false;
                }
                if let Some(o) = v.as_object_mut() {
                    o.insert("message".into(), json!({"role": "assistant"}));
                }
            }
            v.get_mut("message")
        } else {
            // Only a response object (not an error line) gets text; one
            // that has the field (which `read` read) is one.
            (is_ollama_chunk || v.get("response").is_some() || v.get(field).is_some()).then_some(v)
        };
        put_string(parent.and_then(Value::as_object_mut), field, value)
    }

    /// Chunks as Ollama writes them; thinking ones with an empty text.
    fn synthesize(
        &self,
        near: Option<&Value>,
        kind: Kind,
        channel: Channel,
        pieces: &[String],
    ) -> Vec<u8> {
        let model = near
            .and_then(|v| v.get("model"))
            .cloned()
            .unwrap_or(Value::Null);
        let mut out = Vec::new();
        for piece in pieces {
            let v = match (self.chat, channel) {
                (false, Channel::Text) => json!({"model": model, "response": piece, "done": false}),
                (false, Channel::Thinking) => {
                    json!({"model": model, "response": "", "thinking": piece, "done": false})
                }
                (true, Channel::Text) => json!({
                    "model": model,
                    "message": {"role": "assistant", "content": piece},
                    "done": false,
                }),
                (true, Channel::Thinking) => json!({
                    "model": model,
                    "message": {"role": "assistant", "content": "", "thinking": piece},
                    "done": false,
                }),
                (_, Channel::ToolArguments) => return Vec::new(),
            };
            let json = serde_json::to_vec(&v).unwrap_or_default();
            out.extend(frame(kind, &json));
        }
        out
    }

    fn answer(&self, kind: Kind) -> Option<Box<dyn AnswerState>> {
        Some(Box::new(OllamaAnswer {
            generate: !self.chat,
            thinking_end: (kind != Kind::Whole).then(|| ThinkingEnd::new(&THINKING)),
            changed: false,
        }))
    }
}

/// The state of one Ollama answer: where the thinking ends (see
/// [`ThinkingEnd`]), and whether the hooks changed the answer.
///
/// Ollama describes the text it generated token by token: `logprobs` on
/// each chunk, and on `/api/generate`'s final chunk `context` (the token
/// ids of the prompt and of the whole answer, thinking included). Left as
/// Ollama wrote them after a hook redacted the text, they give the redacted
/// text back to anyone with the model's tokenizer; the hooks cannot see or
/// edit them, so they go: a chunk's `logprobs` when its own text or
/// thinking changed, `context` when any chunk of the answer so far did.
/// Removed, not emptied: Ollama omits both when it has none (omitempty). An
/// answer nothing changed keeps both: they match what was sent, and
/// clients use `context` to continue.
struct OllamaAnswer {
    generate: bool,
    thinking_end: Option<ThinkingEnd>,
    changed: bool,
}

impl AnswerState for OllamaAnswer {
    fn before_hooks(&mut self, chunk: &mut Chunk) {
        if let Some(t) = &mut self.thinking_end {
            t.mark(chunk);
        }
    }

    fn after_hooks(&mut self, chunk: &mut Chunk) {
        self.changed |= chunk.changed_by_hooks();
        if chunk.own_edited() && chunk.raw_has(&LOGPROBS) {
            chunk.remove_field("", "logprobs");
        }
        if self.changed && self.generate && chunk.raw_has(&CONTEXT) {
            chunk.remove_field("", "context");
        }
    }
}

//! OpenAI's chat shapes as Ollama serves them: `/v1/chat/completions`
//! (`choices[0].delta.content` streamed, `choices[0].message.content`
//! whole; thinking in `reasoning` there) and `/v1/completions`
//! (`choices[0].text`; no thinking). Streamed as SSE `data:` events ending
//! `data: [DONE]`; a choice's `finish_reason` ends generation; token counts
//! in `usage`, streamed only when asked (see [`Codec::plan_request`]).

use std::borrow::Cow;
use std::sync::LazyLock;

use bytes::Bytes;
use memchr::memmem::Finder;
use serde::Deserialize;
use serde_json::{Value, json};

use super::chunk::Chunk;
use super::codec::{AnswerState, Channel, Codec, Kind, ThinkingEnd, Usage, UsagePlan, View};
use super::lenient::{First, Obj, Scalar, typed};
use super::ollama::LOGPROBS;
use super::wire::{arguments_text, each_at, frame, put_string, unix_now};

static USAGE: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"usage\""));
static REASONING: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"reasoning\""));

/// `/v1/chat/completions` (`chat: true`) or `/v1/completions`.
pub struct OpenAi {
    pub chat: bool,
}

#[derive(Deserialize, Default)]
struct Peek<'a> {
    #[serde(borrow, default)]
    choices: Option<First<Choice<'a>>>,
    #[serde(default)]
    usage: Obj<OpenaiUsage<'a>>,
}

#[derive(Deserialize, Default)]
struct Choice<'a> {
    #[serde(borrow, default)]
    delta: Obj<Content<'a>>,
    #[serde(borrow, default)]
    message: Obj<Content<'a>>,
    #[serde(borrow, default)]
    text: Scalar<'a>,
    #[serde(borrow, default)]
    finish_reason: Scalar<'a>,
}

#[derive(Deserialize, Default)]
struct Content<'a> {
    #[serde(borrow, default)]
    content: Scalar<'a>,
    #[serde(borrow, default)]
    reasoning: Scalar<'a>,
    /// Only its presence is read (null reads as absent).
    #[serde(borrow, default)]
    tool_calls: Option<Scalar<'a>>,
}

#[derive(Deserialize, Default)]
struct OpenaiUsage<'a> {
    #[serde(borrow, default)]
    prompt_tokens: Scalar<'a>,
    #[serde(borrow, default)]
    completion_tokens: Scalar<'a>,
}

impl Codec for OpenAi {
    fn name(&self) -> &'static str {
        if self.chat {
            "openai-chat"
        } else {
            "openai-completions"
        }
    }

    fn read(&self, json: &[u8], kind: Kind) -> View {
        let Some(p) = typed::<Peek>(json) else {
            return View::default();
        };
        let usage = p.usage.0.as_ref().and_then(|u| {
            Some(Usage {
                prompt_tokens: u.prompt_tokens.u64()?,
                completion_tokens: u.completion_tokens.u64()?,
            })
        });
        let usage_only = kind == Kind::Event
            && p.usage.0.is_some()
            && p.choices.as_ref().is_some_and(|c| c.list && c.len == 0);
        let Some(choice) = p.choices.and_then(|c| c.first) else {
            return View {
                usage,
                usage_only,
                ..View::default()
            };
        };
        // OpenAI sends thinking and text in one delta (`reasoning`,
        // `content`), which Ollama splits in two chunks.
        let done = kind == Kind::Whole || choice.finish_reason.as_str().is_some();
        let (text, thinking, tool_calls) = if !self.chat {
            (choice.text.str(), None, false)
        } else {
            let content = if kind == Kind::Whole {
                choice.message.0
            } else {
                choice.delta.0
            };
            match content {
                Some(c) => (c.content.str(), c.reasoning.str(), c.tool_calls.is_some()),
                None => (None, None, false),
            }
        };
        View {
            text: text.map(Cow::into_owned),
            thinking: thinking.map(Cow::into_owned),
            tool_arguments: tool_calls
                .then(|| arguments_text(self, json, kind))
                .flatten(),
            done,
            tool_calls,
            usage,
            usage_only,
            ..View::default()
        }
    }

    fn may_carry_usage(&self, raw: &[u8]) -> bool {
        USAGE.find(raw).is_some()
    }

    fn carries(&self, channel: Channel) -> bool {
        self.chat || channel == Channel::Text
    }

    fn splice_key(&self, channel: Channel, _kind: Kind) -> Option<&'static [u8]> {
        Some(match (channel, self.chat) {
            (Channel::Text, true) => b"\"content\":",
            (Channel::Text, false) => b"\"text\":",
            (Channel::Thinking, _) => b"\"reasoning\":",
            (Channel::ToolArguments, _) => return None,
        })
    }

    /// `choices[0].delta.tool_calls[].function.arguments` streamed,
    /// `choices[0].message.tool_calls[]…` whole (JSON strings).
    fn tool_arguments<'v>(&self, v: &'v mut Value, kind: Kind) -> Vec<&'v mut Value> {
        let calls = match (self.chat, kind) {
            (false, _) => return Vec::new(),
            (true, Kind::Whole) => "/choices/0/message/tool_calls",
            (true, _) => "/choices/0/delta/tool_calls",
        };
        each_at(v, calls, "/function/arguments")
    }

    /// In the first choice, created when missing (a finish chunk may lack
    /// `delta.content`; thinking released on the first text chunk lands in
    /// a new `reasoning`).
    fn place(&self, v: &mut Value, channel: Channel, kind: Kind, _had: bool, value: &str) -> bool {
        let Some(choice) = v.pointer_mut("/choices/0").and_then(Value::as_object_mut) else {
            return false;
        };
        let parent = if !self.chat {
            Some(choice)
        } else {
            let field = if kind == Kind::Whole {
                "message"
            } else {
                "delta"
            };
            choice
                .entry(field)
                .or_insert_with(|| json!({}))
                .as_object_mut()
        };
        let field = match (channel, self.chat) {
            (Channel::Text, true) => "content",
            (Channel::Text, false) => "text",
            (Channel::Thinking, _) => "reasoning",
            (Channel::ToolArguments, _) => return false,
        };
        put_string(parent, field, value)
    }

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
        let id = near
            .and_then(|v| v.get("id"))
            .cloned()
            .unwrap_or_else(|| json!("chatcmpl-kiln"));
        let mut out = Vec::new();
        for piece in pieces {
            let v = match (self.chat, channel) {
                (true, Channel::Text) => json!({
                    "id": id, "object": "chat.completion.chunk", "created": unix_now(), "model": model,
                    "choices": [{"index": 0, "delta": {"role": "assistant", "content": piece}, "finish_reason": null}],
                }),
                (true, Channel::Thinking) => json!({
                    "id": id, "object": "chat.completion.chunk", "created": unix_now(), "model": model,
                    "choices": [{"index": 0, "delta": {"role": "assistant", "content": "", "reasoning": piece}, "finish_reason": null}],
                }),
                (false, Channel::Text) => json!({
                    "id": id, "object": "text_completion", "created": unix_now(), "model": model,
                    "choices": [{"index": 0, "text": piece, "finish_reason": null}],
                }),
                (false, Channel::Thinking) | (_, Channel::ToolArguments) => return Vec::new(),
            };
            out.extend(frame(kind, &serde_json::to_vec(&v).unwrap_or_default()));
        }
        out
    }

    fn answer(&self, kind: Kind) -> Option<Box<dyn AnswerState>> {
        Some(Box::new(OpenAiAnswer {
            thinking_end: (self.chat && kind != Kind::Whole).then(|| ThinkingEnd::new(&REASONING)),
        }))
    }

    /// Ollama reports usage on streams of these routes only when asked
    /// (`stream_options.include_usage`, Ollama ≥ 0.5.2), as one extra chunk
    /// with empty `choices`. Response plugins need the counts whatever the
    /// client asked, so the proxy asks for them and hides that chunk from
    /// clients that did not. Bodies that are not JSON objects are left for
    /// Ollama to refuse.
    fn plan_request(&self, stream: bool, body: &[u8]) -> UsagePlan {
        if !stream {
            return UsagePlan::KEEP;
        }
        let Ok(Value::Object(mut obj)) = serde_json::from_slice::<Value>(body) else {
            return UsagePlan::KEEP;
        };
        let asked = obj
            .get("stream_options")
            .and_then(|o| o.get("include_usage"))
            .and_then(Value::as_bool)
            .unwrap_or(false);
        if asked {
            return UsagePlan::KEEP;
        }
        match obj.get_mut("stream_options") {
            Some(Value::Object(options)) => {
                options.insert("include_usage".into(), Value::Bool(true));
            }
            _ => {
                obj.insert("stream_options".into(), json!({"include_usage": true}));
            }
        }
        match serde_json::to_vec(&obj) {
            Ok(b) => UsagePlan {
                body: Some(Bytes::from(b)),
                hide_usage_chunk: true,
            },
            Err(_) => UsagePlan::KEEP,
        }
    }
}

/// The state of one OpenAI answer: where the thinking ends (see
/// [`ThinkingEnd`]), and the choice's `logprobs` (each names a token's
/// text), which go when a hook changed the chunk's text or thinking (see
/// `ollama` for why).
struct OpenAiAnswer {
    thinking_end: Option<ThinkingEnd>,
}

impl AnswerState for OpenAiAnswer {
    fn before_hooks(&mut self, chunk: &mut Chunk) {
        if let Some(t) = &mut self.thinking_end {
            t.mark(chunk);
        }
    }

    fn after_hooks(&mut self, chunk: &mut Chunk) {
        if chunk.own_edited() && chunk.raw_has(&LOGPROBS) {
            chunk.remove_field("/choices/0", "logprobs");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{MESSAGES, OLLAMA_CHAT, OPENAI_CHAT, OPENAI_COMPLETIONS, RESPONSES};
    use super::*;

    fn body_of(p: &UsagePlan) -> Value {
        serde_json::from_slice(p.body.as_ref().expect("a new body")).unwrap()
    }

    #[test]
    fn streamed_openai_requests_ask_for_usage_and_hide_it() {
        let p = OPENAI_CHAT.plan_request(true, br#"{"model":"m","stream":true,"messages":[]}"#);
        assert!(p.hide_usage_chunk);
        let b = body_of(&p);
        assert_eq!(b["stream_options"]["include_usage"], true);
        assert_eq!(b["model"], "m");

        // Other stream options survive; an explicit false is overridden.
        let p = OPENAI_COMPLETIONS.plan_request(
            true,
            br#"{"model":"m","stream_options":{"include_usage":false,"x":1}}"#,
        );
        assert!(p.hide_usage_chunk);
        assert_eq!(body_of(&p)["stream_options"]["x"], 1);
        assert_eq!(body_of(&p)["stream_options"]["include_usage"], true);
    }

    #[test]
    fn clients_that_asked_and_other_requests_are_left_alone() {
        let asked = br#"{"model":"m","stream":true,"stream_options":{"include_usage":true}}"#;
        assert_eq!(OPENAI_CHAT.plan_request(true, asked), UsagePlan::KEEP);
        assert_eq!(
            OPENAI_CHAT.plan_request(false, br#"{"model":"m"}"#),
            UsagePlan::KEEP
        );
        assert_eq!(
            OLLAMA_CHAT.plan_request(true, br#"{"model":"m"}"#),
            UsagePlan::KEEP
        );
        assert_eq!(OPENAI_CHAT.plan_request(true, b"[1]"), UsagePlan::KEEP);
        // The Responses and Messages APIs report usage unasked (in
        // `response.completed`, `message_start` + `message_delta`) and
        // reject fields they do not know: nothing is added.
        for codec in [RESPONSES, MESSAGES] {
            assert_eq!(
                codec.plan_request(true, br#"{"model":"m","stream":true}"#),
                UsagePlan::KEEP
            );
        }
    }
}

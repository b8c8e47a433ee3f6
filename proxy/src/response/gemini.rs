//! Gemini's answers (`generateContent`, `streamGenerateContent`), as the
//! proxy makes them from Ollama's (`gemini::answer`): each chunk a
//! `GenerateContentResponse` with one candidate whose `content.parts` hold
//! text parts, thought parts (`"thought": true`) and `functionCall` parts
//! (the call's arguments are the object `functionCall.args`); the last
//! chunk has `finishReason` and `usageMetadata`. Streamed as SSE events
//! (the JSON array without `alt=sse` is made after the hooks); whole, one
//! object.

use std::sync::LazyLock;

use memchr::memmem::Finder;
use serde::Deserialize;
use serde_json::{Value, json};

use super::codec::{AnswerState, Channel, Codec, Kind, ThinkingEnd, Usage, View};
use super::lenient::{First, List, Obj, Scalar, typed};
use super::wire::{arguments_text, each_at, frame_event};

static USAGE: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"usageMetadata\""));
static THOUGHT: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"thought\""));

pub struct Gemini;

#[derive(Deserialize, Default)]
struct Peek<'a> {
    #[serde(borrow, default)]
    candidates: First<Candidate<'a>>,
    #[serde(rename = "usageMetadata", borrow, default)]
    usage: Obj<UsageMetadata<'a>>,
}

#[derive(Deserialize, Default)]
struct Candidate<'a> {
    #[serde(borrow, default)]
    content: Obj<Content<'a>>,
    #[serde(rename = "finishReason", borrow, default)]
    finish_reason: Scalar<'a>,
}

#[derive(Deserialize, Default)]
struct Content<'a> {
    #[serde(borrow, default)]
    parts: List<Part<'a>>,
}

#[derive(Deserialize, Default)]
struct Part<'a> {
    #[serde(borrow, default)]
    text: Scalar<'a>,
    #[serde(borrow, default)]
    thought: Scalar<'a>,
    /// `{"name", "args": {…}, "id"?}`: its presence is read here (it ends
    /// the thinking, like text); the `args` through [`Codec::tool_arguments`].
    #[serde(rename = "functionCall", borrow, default)]
    function_call: Option<Scalar<'a>>,
}

/// Counts read leniently, as every other field: one out of range must not
/// hide the chunk's text from the hooks.
#[derive(Deserialize, Default)]
struct UsageMetadata<'a> {
    #[serde(rename = "promptTokenCount", borrow, default)]
    prompt: Scalar<'a>,
    #[serde(rename = "candidatesTokenCount", borrow, default)]
    candidates: Scalar<'a>,
    #[serde(rename = "thoughtsTokenCount", borrow, default)]
    thoughts: Scalar<'a>,
}

impl Codec for Gemini {
    fn name(&self) -> &'static str {
        "gemini"
    }

    fn read(&self, json: &[u8], kind: Kind) -> View {
        let Some(p) = typed::<Peek>(json) else {
            return View::default();
        };
        let mut view = View {
            usage: p.usage.0.map(|u| {
                let count = |n: Scalar| n.u64().unwrap_or(0);
                Usage {
                    prompt_tokens: count(u.prompt),
                    completion_tokens: count(u.candidates).saturating_add(count(u.thoughts)),
                }
            }),
            ..View::default()
        };
        let Some(c) = p.candidates.first else {
            return view;
        };
        for part in c.content.0.map(|c| c.parts.0).unwrap_or_default() {
            view.tool_calls |= part.function_call.is_some();
            let Some(t) = part.text.as_str() else {
                continue;
            };
            let into = if part.thought.is_true() {
                &mut view.thinking
            } else {
                &mut view.text
            };
            into.get_or_insert_with(String::new).push_str(t);
        }
        if view.tool_calls {
            view.tool_arguments = arguments_text(self, json, kind);
        }
        view.done = kind == Kind::Whole || c.finish_reason.as_str().is_some_and(|r| !r.is_empty());
        view.thinking_done = kind == Kind::Whole;
        view
    }

    fn may_carry_usage(&self, raw: &[u8]) -> bool {
        USAGE.find(raw).is_some()
    }

    /// Both channels are a part's `text`; the splice is checked by reading
    /// the result back, so a thought part's `text` is never taken for the
    /// answer's.
    fn splice_key(&self, channel: Channel, _kind: Kind) -> Option<&'static [u8]> {
        match channel {
            Channel::Text | Channel::Thinking => Some(b"\"text\":"),
            Channel::ToolArguments => None,
        }
    }

    /// `candidates[0].content.parts[].functionCall.args` (objects).
    fn tool_arguments<'v>(&self, v: &'v mut Value, _kind: Kind) -> Vec<&'v mut Value> {
        each_at(v, "/candidates/0/content/parts", "/functionCall/args")
    }

    /// The first part of the channel gets `value`, the others of that
    /// channel are emptied; without one, a part is added (thoughts first).
    fn place(&self, v: &mut Value, channel: Channel, _kind: Kind, _had: bool, value: &str) -> bool {
        if channel == Channel::ToolArguments {
            return false;
        }
        let Some(parts) = v
            .pointer_mut("/candidates/0/content/parts")
            .and_then(Value::as_array_mut)
        else {
            return false;
        };
        let thought = channel == Channel::Thinking;
        let mut placed = false;
        for part in parts.iter_mut() {
            let is_thought = part.get("thought").and_then(Value::as_bool) == Some(true);
            if is_thought != thought || part.get("text").is_none() {
                continue;
            }
            let text = if placed { "" } else { value };
            part["text"] = Value::String(text.into());
            placed = true;
        }
        if !placed {
            let part = if thought {
                json!({"text": value, "thought": true})
            } else {
                json!({"text": value})
            };
            let at = if thought { 0 } else { parts.len() };
            parts.insert(at, part);
        }
        true
    }

    /// One event per piece, naming the model the chunk near it names.
    fn synthesize(
        &self,
        near: Option<&Value>,
        kind: Kind,
        channel: Channel,
        pieces: &[String],
    ) -> Vec<u8> {
        let model = near
            .and_then(|v| v.get("modelVersion"))
            .cloned()
            .unwrap_or(Value::Null);
        let mut out = Vec::new();
        for piece in pieces {
            let part = match channel {
                Channel::Text => json!({"text": piece}),
                Channel::Thinking => json!({"text": piece, "thought": true}),
                // A call's arguments go only where the call is.
                Channel::ToolArguments => return Vec::new(),
            };
            let v = json!({
                "candidates": [{"content": {"parts": [part], "role": "model"}, "index": 0}],
                "modelVersion": model,
            });
            let json = serde_json::to_vec(&v).unwrap_or_default();
            match kind {
                Kind::Event => frame_event(&mut out, &[], &json),
                Kind::Line | Kind::Whole => out.extend(super::wire::frame(kind, &json)),
            }
        }
        out
    }

    fn answer(&self, kind: Kind) -> Option<Box<dyn AnswerState>> {
        (kind != Kind::Whole).then(|| {
            Box::new(GeminiAnswer {
                thinking_end: ThinkingEnd::new(&THOUGHT),
            }) as Box<dyn AnswerState>
        })
    }
}

/// A streamed answer's state: where the thinking ends (no chunk says so).
struct GeminiAnswer {
    thinking_end: ThinkingEnd,
}

impl AnswerState for GeminiAnswer {
    fn before_hooks(&mut self, chunk: &mut super::chunk::Chunk) {
        self.thinking_end.mark(chunk);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::response::{Chunk, GEMINI};
    use bytes::Bytes;

    fn event(json: &str) -> Chunk {
        Chunk::new(
            Bytes::from(format!("data: {json}\n\n")),
            Kind::Event,
            GEMINI,
        )
    }

    #[test]
    fn chunks_read_text_thoughts_calls_and_usage() {
        let v = Gemini.read(
            br#"{"candidates":[{"content":{"parts":[{"text":"hm","thought":true},{"text":"Hi"},{"functionCall":{"name":"f","args":{"a":1}}}],"role":"model"},"finishReason":"STOP","index":0}],"usageMetadata":{"promptTokenCount":3,"candidatesTokenCount":4,"totalTokenCount":7}}"#,
            Kind::Event,
        );
        assert_eq!(v.text.as_deref(), Some("Hi"));
        assert_eq!(v.thinking.as_deref(), Some("hm"));
        assert!(v.tool_calls && v.done);
        assert_eq!(
            v.usage,
            Some(Usage {
                prompt_tokens: 3,
                completion_tokens: 4
            })
        );
        assert_eq!(v.tool_arguments.as_deref(), Some(r#"{"a":1}"#));
        let error = Gemini.read(br#"{"error":{"code":500,"message":"x"}}"#, Kind::Event);
        assert_eq!(error, View::default());
    }

    #[test]
    fn a_count_out_of_range_does_not_hide_the_text() {
        // Found by the response_codecs fuzz target: a usage count past u64
        // failed the whole typed reading, so the hooks saw no text.
        let json = br#"{"candidates":[{"content":{"parts":[{"text":"secret"}],"role":"model"},"finishReason":"STOP","index":0}],"usageMetadata":{"promptTokenCount":3,"candidatesTokenCount":41111111111111111111111111}}"#;
        let v = Gemini.read(json, Kind::Line);
        assert_eq!(v.text.as_deref(), Some("secret"));
        assert!(v.done);
        assert_eq!(
            v.usage,
            Some(Usage {
                prompt_tokens: 3,
                completion_tokens: 0
            })
        );
        let mut c = Chunk::new(
            Bytes::from(format!("{}\n", std::str::from_utf8(json).unwrap())),
            Kind::Line,
            GEMINI,
        );
        assert!(c.set_thinking("[plan]".into()));
        let mut out = bytes::BytesMut::new();
        c.write_to(&mut out);
        let sent = Chunk::new(out.freeze(), Kind::Line, GEMINI);
        assert_eq!(sent.thinking(), Some("[plan]"));
        assert_eq!(sent.text(), Some("secret"));
    }

    #[test]
    fn text_is_rewritten_in_place_and_thoughts_are_left_alone() {
        let mut c = event(
            r#"{"candidates":[{"content":{"parts":[{"text":"think","thought":true},{"text":"secret"}],"role":"model"},"index":0}],"modelVersion":"m"}"#,
        );
        assert!(c.set_text("[redacted]".into()));
        let mut out = bytes::BytesMut::new();
        c.write_to(&mut out);
        let s = String::from_utf8(out.to_vec()).unwrap();
        assert!(s.contains(r#"{"text":"think","thought":true}"#), "{s}");
        assert!(s.contains(r#"[redacted]"#) && !s.contains("secret"), "{s}");
    }

    #[test]
    fn function_call_arguments_are_rewritten_where_the_call_is() {
        let mut c = event(
            r#"{"candidates":[{"content":{"parts":[{"functionCall":{"name":"f","args":{"card":"4111"}}}],"role":"model"},"index":0}]}"#,
        );
        assert!(c.set_tool_arguments(r#"{"card":"[REDACTED]"}"#.into()));
        let mut out = bytes::BytesMut::new();
        c.write_to(&mut out);
        let s = String::from_utf8(out.to_vec()).unwrap();
        let v: Value = serde_json::from_str(s.strip_prefix("data: ").unwrap().trim()).unwrap();
        assert_eq!(
            v["candidates"][0]["content"]["parts"][0]["functionCall"],
            json!({"name": "f", "args": {"card": "[REDACTED]"}})
        );
    }

    #[test]
    fn inserted_text_is_a_chunk_of_its_own() {
        let bytes = Gemini.synthesize(
            Some(&json!({"modelVersion": "gemma3:4b"})),
            Kind::Event,
            Channel::Text,
            &["held".into()],
        );
        let s = String::from_utf8(bytes).unwrap();
        let v: Value = serde_json::from_str(s.strip_prefix("data: ").unwrap().trim()).unwrap();
        assert_eq!(v["candidates"][0]["content"]["parts"][0]["text"], "held");
        assert_eq!(v["modelVersion"], "gemma3:4b");
    }
}

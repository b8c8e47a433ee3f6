//! Reading what the response hooks need from a chunk — its text, whether
//! generation ends with it, its usage — without building a JSON tree: a
//! borrowed, typed parse that skips every other field. A tree is built only
//! when a hook rewrites the text. This keeps a chunk that passes untouched
//! cheap, which is most chunks.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::Value;

use super::chunk::{Kind, Shape, Usage};

/// What the hooks see of a chunk.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Info {
    pub text: Option<String>,
    pub done: bool,
    pub usage: Option<Usage>,
    /// OpenAI's usage chunk: no choices, only usage.
    pub usage_only: bool,
}

#[derive(Deserialize)]
struct Peek<'a> {
    #[serde(borrow, default)]
    response: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    message: Option<Content<'a>>,
    #[serde(default)]
    done: Option<bool>,
    #[serde(default)]
    eval_count: Option<u64>,
    #[serde(default)]
    prompt_eval_count: Option<u64>,
    #[serde(borrow, default)]
    choices: Option<Vec<Choice<'a>>>,
    #[serde(default)]
    usage: Option<OpenaiUsage>,
}

#[derive(Deserialize)]
struct Content<'a> {
    #[serde(borrow, default)]
    content: Option<Cow<'a, str>>,
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
    if shape == Shape::Other {
        return Info::default();
    }
    match serde_json::from_slice::<Peek>(json) {
        Ok(p) => from_peek(p, kind, shape),
        // A field of an unexpected type (say, OpenAI content parts): read
        // the slow way, field by field, so one odd field does not hide the rest.
        Err(_) => match serde_json::from_slice::<Value>(json) {
            Ok(v) if v.is_object() => from_value(&v, kind, shape),
            _ => Info::default(),
        },
    }
}

fn from_peek(p: Peek, kind: Kind, shape: Shape) -> Info {
    let first = p.choices.as_ref().and_then(|c| c.first());
    let text = match (shape, kind) {
        (Shape::OllamaGenerate, _) => p.response,
        (Shape::OllamaChat, _) => p.message.and_then(|m| m.content),
        (Shape::OpenaiChat, Kind::Whole) => first.and_then(|c| c.message.as_ref()?.content.clone()),
        (Shape::OpenaiChat, _) => first.and_then(|c| c.delta.as_ref()?.content.clone()),
        (Shape::OpenaiCompletions, _) => first.and_then(|c| c.text.clone()),
        (Shape::Other, _) => None,
    };
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
        && p.choices.as_ref().is_some_and(Vec::is_empty);
    Info {
        text: text.map(Cow::into_owned),
        done,
        usage,
        usage_only,
    }
}

/// The same reading over a JSON tree.
pub fn from_value(v: &Value, kind: Kind, shape: Shape) -> Info {
    let pointer = match (shape, kind) {
        (Shape::OllamaGenerate, _) => "/response",
        (Shape::OllamaChat, _) => "/message/content",
        (Shape::OpenaiChat, Kind::Whole) => "/choices/0/message/content",
        (Shape::OpenaiChat, _) => "/choices/0/delta/content",
        (Shape::OpenaiCompletions, _) => "/choices/0/text",
        (Shape::Other, _) => return Info::default(),
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
        text: v
            .pointer(pointer)
            .and_then(Value::as_str)
            .map(str::to_owned),
        done,
        usage,
        usage_only,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fast and the slow reading agree, on every shape.
    #[test]
    fn typed_and_tree_readings_agree() {
        let cases: &[(&str, Kind, Shape)] = &[
            (
                r#"{"response":"a\"b","done":false}"#,
                Kind::Line,
                Shape::OllamaGenerate,
            ),
            (
                r#"{"response":"","done":true,"prompt_eval_count":3,"eval_count":4}"#,
                Kind::Line,
                Shape::OllamaGenerate,
            ),
            (
                r#"{"message":{"role":"assistant","content":"x"},"done":false}"#,
                Kind::Line,
                Shape::OllamaChat,
            ),
            (
                r#"{"done":true,"eval_count":2}"#,
                Kind::Line,
                Shape::OllamaChat,
            ),
            (r#"{"error":"boom"}"#, Kind::Line, Shape::OllamaChat),
            (
                r#"{"choices":[{"index":0,"delta":{"content":"y"},"finish_reason":null}]}"#,
                Kind::Event,
                Shape::OpenaiChat,
            ),
            (
                r#"{"choices":[{"delta":{},"finish_reason":"stop"}]}"#,
                Kind::Event,
                Shape::OpenaiChat,
            ),
            (
                r#"{"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}"#,
                Kind::Event,
                Shape::OpenaiChat,
            ),
            (
                r#"{"choices":[{"message":{"content":"all"}}],"usage":{"prompt_tokens":5,"completion_tokens":6}}"#,
                Kind::Whole,
                Shape::OpenaiChat,
            ),
            (
                r#"{"choices":[{"text":"t","finish_reason":"length"}]}"#,
                Kind::Event,
                Shape::OpenaiCompletions,
            ),
        ];
        for (json, kind, shape) in cases {
            let v: Value = serde_json::from_str(json).unwrap();
            assert_eq!(
                read(json.as_bytes(), *kind, *shape),
                from_value(&v, *kind, *shape),
                "{json}"
            );
        }
        let info = read(cases[0].0.as_bytes(), Kind::Line, Shape::OllamaGenerate);
        assert_eq!(info.text.as_deref(), Some("a\"b"), "escapes are decoded");
    }

    #[test]
    fn an_odd_field_falls_back_to_the_tree() {
        // OpenAI content parts instead of a string: no text, but the
        // finish reason and usage are still read.
        let json = br#"{"choices":[{"delta":{"content":[{"type":"text"}]},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":1}}"#;
        let info = read(json, Kind::Event, Shape::OpenaiChat);
        assert_eq!(info.text, None);
        assert!(info.done);
        assert!(info.usage.is_some());
        assert_eq!(
            read(b"[DONE]", Kind::Event, Shape::OpenaiChat),
            Info::default()
        );
        assert_eq!(read(b"[1,2]", Kind::Line, Shape::OllamaChat).text, None);
    }
}

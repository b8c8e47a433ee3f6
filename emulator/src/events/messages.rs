//! `/v1/messages` answers: the events of `StreamConverter` and the body of
//! `ToMessagesResponse` (Ollama's anthropic/anthropic.go).

use serde_json::Value;

use super::{arguments_json, event_raw, j, ordered};
use crate::format::{Totals, text, thinking_text, thinking_token, token};

/// A `/v1/messages` answer.
#[derive(Clone, Debug)]
pub struct Messages {
    pub id: String,
    /// `message_start` reports this estimate (`EstimateInputTokens`: the
    /// request's characters / 4); the final count comes in `message_delta`.
    pub estimated_input: usize,
    /// The model's tool calls, Ollama-shaped: `tool_use` blocks.
    pub calls: Vec<Value>,
}

impl Messages {
    pub fn of_request(req: &Value, next: u64) -> Messages {
        // EstimateCountTokens: system + each message's role and content, / 4.
        let len = |v: Option<&Value>| match v {
            None | Some(Value::Null) => 0,
            Some(Value::String(s)) => s.len(),
            Some(Value::Array(blocks)) => blocks
                .iter()
                .map(|b| b.get("text").and_then(Value::as_str).map_or(0, str::len))
                .sum(),
            Some(other) => other.to_string().len(),
        };
        let messages = req.get("messages").and_then(Value::as_array);
        let total = len(req.get("system"))
            + messages
                .into_iter()
                .flatten()
                .map(|m| len(m.get("role")) + len(m.get("content")))
                .sum::<usize>();
        let some = messages.is_some_and(|m| !m.is_empty()) || req.get("system").is_some();
        Messages {
            // GenerateMessageID: "msg_" and 24 hex digits.
            id: format!("msg_{:024x}", 0x5eed_0000 + next),
            estimated_input: if total / 4 == 0 && some { 1 } else { total / 4 },
            calls: Vec::new(),
        }
    }

    /// The index of the text block: after the thinking block, if any
    /// (`StreamConverter.contentIndex`).
    fn text_index(&self, think: usize) -> usize {
        usize::from(think > 0)
    }

    /// `mapStopReason`: a call sent makes it `tool_use`.
    fn stop_reason(&self, t: &Totals) -> &'static str {
        match t.done_reason {
            _ if !self.calls.is_empty() && t.answer_tokens() > 0 => "tool_use",
            "length" => "max_tokens",
            _ => "end_turn",
        }
    }

    fn stop(out: &mut String, index: usize) {
        event_raw(
            out,
            "content_block_stop",
            &format!(r#"{{"type":"content_block_stop","index":{index}}}"#),
        );
    }

    /// The events for token `i` of an answer whose first `think` tokens are
    /// thinking (`StreamConverter.Process`): the first also starts the
    /// message; thinking goes in a thinking block (index 0), one
    /// `thinking_delta` per token, closed when the text block opens.
    pub fn chunk(&self, model: &str, i: usize, think: usize) -> String {
        let mut out = String::new();
        let index = self.text_index(think);
        if i == 0 {
            self.start(&mut out, model);
        }
        if i < think {
            if i == 0 {
                event_raw(
                    &mut out,
                    "content_block_start",
                    r#"{"type":"content_block_start","index":0,"content_block":{"type":"thinking","thinking":""}}"#,
                );
            }
            event_raw(
                &mut out,
                "content_block_delta",
                &format!(
                    r#"{{"type":"content_block_delta","index":0,"delta":{{"type":"thinking_delta","thinking":{}}}}}"#,
                    j(thinking_token(i))
                ),
            );
            return out;
        }
        let a = i - think;
        if a == 0 && think > 0 {
            Self::stop(&mut out, 0);
        }
        if !self.calls.is_empty() {
            // Each call a `tool_use` block of its own, its input whole in
            // one `input_json_delta`, closed at once.
            for (k, call) in self.calls.iter().enumerate() {
                let index = index + k;
                let block = tool_use_block(call, "{}".into());
                event_raw(
                    &mut out,
                    "content_block_start",
                    &format!(
                        r#"{{"type":"content_block_start","index":{index},"content_block":{block}}}"#
                    ),
                );
                let input = arguments_json(call);
                event_raw(
                    &mut out,
                    "content_block_delta",
                    &format!(
                        r#"{{"type":"content_block_delta","index":{index},"delta":{{"type":"input_json_delta","partial_json":{}}}}}"#,
                        j(input)
                    ),
                );
                Self::stop(&mut out, index);
            }
            return out;
        }
        if a == 0 {
            event_raw(
                &mut out,
                "content_block_start",
                &format!(
                    r#"{{"type":"content_block_start","index":{index},"content_block":{{"type":"text","text":""}}}}"#
                ),
            );
        }
        event_raw(
            &mut out,
            "content_block_delta",
            &format!(
                r#"{{"type":"content_block_delta","index":{index},"delta":{{"type":"text_delta","text":{}}}}}"#,
                j(token(a))
            ),
        );
        out
    }

    fn start(&self, out: &mut String, model: &str) {
        let message = ordered(&[
            ("id", j(&self.id)),
            ("type", j("message")),
            ("role", j("assistant")),
            ("model", j(model)),
            ("content", "[]".into()),
            (
                "usage",
                format!(
                    r#"{{"input_tokens":{},"output_tokens":0}}"#,
                    self.estimated_input
                ),
            ),
        ]);
        event_raw(
            out,
            "message_start",
            &format!(r#"{{"type":"message_start","message":{message}}}"#),
        );
    }

    /// The end: the text block stops (or, with no text, the thinking
    /// block), `message_delta` has the stop reason and the final counts
    /// (input and output), then `message_stop`.
    pub fn last_chunk(&self, model: &str, t: &Totals) -> String {
        let mut out = String::new();
        if t.eval_tokens == 0 {
            self.start(&mut out, model);
        } else if t.answer_tokens() > 0 && !self.calls.is_empty() {
            // The calls' blocks closed as they went out.
        } else if t.answer_tokens() > 0 {
            Self::stop(&mut out, self.text_index(t.thinking_tokens));
        } else {
            // Only thinking: its block is still open.
            Self::stop(&mut out, 0);
        }
        event_raw(
            &mut out,
            "message_delta",
            &format!(
                r#"{{"type":"message_delta","delta":{{"stop_reason":{}}},"usage":{{"input_tokens":{},"output_tokens":{}}}}}"#,
                j(self.stop_reason(t)),
                t.prompt_tokens,
                t.eval_tokens
            ),
        );
        event_raw(&mut out, "message_stop", r#"{"type":"message_stop"}"#);
        out
    }

    /// `ToMessagesResponse`: the thinking block, then the text block; no
    /// block means a nil `content`, which Go writes as `null`.
    pub fn whole(&self, model: &str, t: &Totals) -> String {
        let n = t.answer_tokens();
        let mut blocks = Vec::new();
        let thinking = thinking_text(t.thinking_tokens);
        if !thinking.is_empty() {
            blocks.push(format!(
                r#"{{"type":"thinking","thinking":{}}}"#,
                j(thinking)
            ));
        }
        if n > 0 && self.calls.is_empty() {
            blocks.push(format!(r#"{{"type":"text","text":{}}}"#, j(text(n))));
        }
        for call in self.calls.iter().filter(|_| n > 0) {
            blocks.push(tool_use_block(call, arguments_json(call)));
        }
        let content = if blocks.is_empty() {
            "null".to_owned()
        } else {
            format!("[{}]", blocks.join(","))
        };
        let body = ordered(&[
            ("id", j(&self.id)),
            ("type", j("message")),
            ("role", j("assistant")),
            ("model", j(model)),
            ("content", content),
            ("stop_reason", j(self.stop_reason(t))),
            (
                "usage",
                format!(
                    r#"{{"input_tokens":{},"output_tokens":{}}}"#,
                    t.prompt_tokens, t.eval_tokens
                ),
            ),
        ]);
        format!("{body}\n")
    }
}

/// A `tool_use` content block (a Go struct: fields in declared order) of
/// an Ollama tool call, with `input` (JSON text).
fn tool_use_block(call: &Value, input: String) -> String {
    let name = call
        .pointer("/function/name")
        .map_or("\"\"".into(), Value::to_string);
    ordered(&[
        ("type", j("tool_use")),
        ("id", call["id"].to_string()),
        ("name", name),
        ("input", input),
    ])
}

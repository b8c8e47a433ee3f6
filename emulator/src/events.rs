//! The bytes of the two APIs Ollama serves as typed SSE events:
//! `/v1/responses` (OpenAI Responses; Ollama's openai/responses.go,
//! `ResponsesStreamConverter` and `ToResponse`, written by
//! middleware/openai.go `ResponsesWriter`) and `/v1/messages` (Anthropic
//! Messages; anthropic/anthropic.go `StreamConverter` and
//! `ToMessagesResponse`, written by middleware/anthropic.go).
//!
//! Every event is `event: NAME\ndata: JSON\n\n`. Field order is Go's: the
//! Responses events are Go maps, so their keys come sorted (as serde_json
//! writes a `Value`); the Messages events and both whole bodies are Go
//! structs, written here in their declared order. Whole bodies and the
//! errors of the middlewares' writers go through `json.Encoder`, so they
//! end with `\n`.

use serde_json::{Value, json};

use crate::format::{Totals, text, token, unix_now};

/// A `/v1/responses` answer: its ids and what the response object echoes
/// from the request.
#[derive(Clone, Debug)]
pub struct Responses {
    pub id: String,
    pub item_id: String,
    pub instructions: Option<String>,
    pub temperature: f64,
    pub top_p: f64,
    pub max_output_tokens: Option<u64>,
    pub truncation: String,
    pub background: bool,
}

/// A `/v1/messages` answer.
#[derive(Clone, Debug)]
pub struct Messages {
    pub id: String,
    /// `message_start` reports this estimate (`EstimateInputTokens`: the
    /// request's characters / 4); the final count comes in `message_delta`.
    pub estimated_input: usize,
    /// The request asked `thinking: {"type": "enabled"}`: the model thinks
    /// ([`THINKING`]) before it answers, and the answer starts with a
    /// `thinking` block. (Ollama would refuse a model without the thinking
    /// capability; the emulator's models all think when asked.)
    pub thinking: bool,
}

/// What the emulator's model thinks, when asked to: one thinking delta.
/// Not counted in the output tokens.
pub const THINKING: &str = "Rayleigh scattering, I think.";

impl Responses {
    pub fn of_request(req: &Value, next: u64) -> Responses {
        let f = |k: &str| req.get(k).and_then(Value::as_f64).unwrap_or(1.0);
        Responses {
            // Ollama: fmt.Sprintf("resp_%d", rand.Intn(999999)), "msg_%d".
            id: format!("resp_{}", 100_000 + next),
            item_id: format!("msg_{}", 200_000 + next),
            instructions: req
                .get("instructions")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_owned),
            temperature: f("temperature"),
            top_p: f("top_p"),
            max_output_tokens: req.get("max_output_tokens").and_then(Value::as_u64),
            truncation: req
                .get("truncation")
                .and_then(Value::as_str)
                .unwrap_or("disabled")
                .to_owned(),
            background: req
                .get("background")
                .and_then(Value::as_bool)
                .unwrap_or(false),
        }
    }

    /// `buildResponseObject`: the response object of the lifecycle events.
    fn object(&self, model: &str, status: &str, output: Value, usage: Value) -> Value {
        json!({
            "id": self.id, "object": "response", "created_at": unix_now(), "completed_at": null,
            "status": status, "incomplete_details": null, "model": model,
            "previous_response_id": null, "instructions": self.instructions, "output": output,
            "error": null, "tools": [], "tool_choice": "auto", "truncation": self.truncation,
            "parallel_tool_calls": true, "text": {"format": {"type": "text"}},
            "top_p": go_float(self.top_p), "presence_penalty": 0, "frequency_penalty": 0,
            "top_logprobs": 0, "temperature": go_float(self.temperature), "reasoning": null,
            "usage": usage, "max_output_tokens": self.max_output_tokens, "max_tool_calls": null,
            "store": false, "background": self.background, "service_tier": "default",
            "metadata": {}, "safety_identifier": null, "prompt_cache_key": null,
        })
    }

    fn message_item(&self, status: &str, text: &str) -> Value {
        json!({
            "id": self.item_id, "type": "message", "status": status, "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
        })
    }

    /// The events for token `i`: the first also opens the response, its
    /// message item and its text part (sequence numbers 0–3).
    pub fn chunk(&self, model: &str, i: usize) -> String {
        let mut out = String::new();
        if i == 0 {
            let empty = |seq| json!({"response": self.object(model, "in_progress", json!([]), Value::Null), "sequence_number": seq});
            event(&mut out, "response.created", empty(0));
            event(&mut out, "response.in_progress", empty(1));
            let item = json!({"id": self.item_id, "type": "message", "status": "in_progress", "role": "assistant", "content": []});
            event(
                &mut out,
                "response.output_item.added",
                json!({"output_index": 0, "item": item, "sequence_number": 2}),
            );
            let part =
                json!({"type": "output_text", "text": "", "annotations": [], "logprobs": []});
            event(
                &mut out,
                "response.content_part.added",
                json!({"item_id": self.item_id, "output_index": 0, "content_index": 0, "part": part, "sequence_number": 3}),
            );
        }
        event(
            &mut out,
            "response.output_text.delta",
            json!({
                "item_id": self.item_id, "output_index": 0, "content_index": 0,
                "delta": token(i), "logprobs": [], "sequence_number": 4 + i,
            }),
        );
        out
    }

    /// `processCompletion` after `n` tokens: the text's done events (which
    /// repeat the whole text), then `response.completed` with usage.
    pub fn last_chunk(&self, model: &str, t: &Totals) -> String {
        let n = t.eval_tokens;
        let mut out = String::new();
        let mut seq = if n == 0 { 0 } else { 4 + n };
        let mut next = || {
            seq += 1;
            seq - 1
        };
        let mut output = json!([]);
        if n == 0 {
            // The done chunk is the first write: the response opens here.
            let empty = |seq| json!({"response": self.object(model, "in_progress", json!([]), Value::Null), "sequence_number": seq});
            event(&mut out, "response.created", empty(next()));
            event(&mut out, "response.in_progress", empty(next()));
        } else {
            let all = text(n);
            let common = |seq: usize| json!({"item_id": self.item_id, "output_index": 0, "content_index": 0, "sequence_number": seq});
            let mut done = common(next());
            done["text"] = json!(all);
            done["logprobs"] = json!([]);
            event(&mut out, "response.output_text.done", done);
            let mut part = common(next());
            part["part"] =
                json!({"type": "output_text", "text": all, "annotations": [], "logprobs": []});
            event(&mut out, "response.content_part.done", part);
            let item = self.message_item("completed", &all);
            event(
                &mut out,
                "response.output_item.done",
                json!({"output_index": 0, "item": item, "sequence_number": next()}),
            );
            output = json!([item]);
        }
        let usage = json!({
            "input_tokens": t.prompt_tokens, "output_tokens": n, "total_tokens": t.prompt_tokens + n,
            "input_tokens_details": {"cached_tokens": 0}, "output_tokens_details": {"reasoning_tokens": 0},
        });
        let mut response = self.object(model, "completed", output, usage);
        response["completed_at"] = json!(unix_now());
        event(
            &mut out,
            "response.completed",
            json!({"response": response, "sequence_number": next()}),
        );
        out
    }

    /// `ToResponse`, a Go struct: fields in declared order.
    pub fn whole(&self, model: &str, n: usize, t: &Totals) -> String {
        let all = text(n);
        let item = ordered(&[
            ("id", j(&self.item_id)),
            ("type", j("message")),
            ("status", j("completed")),
            ("role", j("assistant")),
            (
                "content",
                format!(
                    "[{}]",
                    ordered(&[
                        ("type", j("output_text")),
                        ("text", j(&all)),
                        ("annotations", "[]".into()),
                        ("logprobs", "[]".into()),
                    ])
                ),
            ),
        ]);
        let usage = ordered(&[
            ("input_tokens", j(t.prompt_tokens)),
            ("output_tokens", j(n)),
            ("total_tokens", j(t.prompt_tokens + n)),
            ("input_tokens_details", r#"{"cached_tokens":0}"#.into()),
            ("output_tokens_details", r#"{"reasoning_tokens":0}"#.into()),
        ]);
        let now = unix_now();
        let body = ordered(&[
            ("id", j(&self.id)),
            ("object", j("response")),
            ("created_at", j(now)),
            ("completed_at", j(now)),
            ("status", j("completed")),
            ("incomplete_details", "null".into()),
            ("model", j(model)),
            ("previous_response_id", "null".into()),
            ("instructions", j(&self.instructions)),
            ("output", format!("[{item}]")),
            ("error", "null".into()),
            ("tools", "[]".into()),
            ("tool_choice", j("auto")),
            ("truncation", j(&self.truncation)),
            ("parallel_tool_calls", "true".into()),
            ("text", r#"{"format":{"type":"text"}}"#.into()),
            ("top_p", j(go_float(self.top_p))),
            ("presence_penalty", "0".into()),
            ("frequency_penalty", "0".into()),
            ("top_logprobs", "0".into()),
            ("temperature", j(go_float(self.temperature))),
            ("reasoning", "null".into()),
            ("usage", usage),
            ("max_output_tokens", j(self.max_output_tokens)),
            ("max_tool_calls", "null".into()),
            ("store", "false".into()),
            ("background", j(self.background)),
            ("service_tier", j("default")),
            ("metadata", "{}".into()),
            ("safety_identifier", "null".into()),
            ("prompt_cache_key", "null".into()),
        ]);
        format!("{body}\n")
    }
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
            thinking: req.pointer("/thinking/type").and_then(Value::as_str) == Some("enabled"),
        }
    }

    /// The index of the text block: after the thinking block, if any
    /// (`StreamConverter.contentIndex`).
    fn text_index(&self) -> usize {
        usize::from(self.thinking)
    }

    /// The thinking block, opened and given its one delta
    /// (`StreamConverter.Process` for a response with `Thinking`).
    fn think(&self, out: &mut String) {
        event_raw(
            out,
            "content_block_start",
            r#"{"type":"content_block_start","index":0,"content_block":{"type":"thinking","thinking":""}}"#,
        );
        event_raw(
            out,
            "content_block_delta",
            &format!(
                r#"{{"type":"content_block_delta","index":0,"delta":{{"type":"thinking_delta","thinking":{}}}}}"#,
                j(THINKING)
            ),
        );
    }

    fn stop(out: &mut String, index: usize) {
        event_raw(
            out,
            "content_block_stop",
            &format!(r#"{{"type":"content_block_stop","index":{index}}}"#),
        );
    }

    /// The events for token `i`: the first also starts the message, the
    /// thinking block (closed when the text starts) and the text block.
    pub fn chunk(&self, model: &str, i: usize) -> String {
        let mut out = String::new();
        let index = self.text_index();
        if i == 0 {
            self.start(&mut out, model);
            if self.thinking {
                self.think(&mut out);
                Self::stop(&mut out, 0);
            }
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
                j(token(i))
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
            if self.thinking {
                self.think(&mut out);
                Self::stop(&mut out, 0);
            }
        } else {
            Self::stop(&mut out, self.text_index());
        }
        event_raw(
            &mut out,
            "message_delta",
            &format!(
                r#"{{"type":"message_delta","delta":{{"stop_reason":{}}},"usage":{{"input_tokens":{},"output_tokens":{}}}}}"#,
                j(stop_reason(t)),
                t.prompt_tokens,
                t.eval_tokens
            ),
        );
        event_raw(&mut out, "message_stop", r#"{"type":"message_stop"}"#);
        out
    }

    /// `ToMessagesResponse`: the thinking block, then the text block; no
    /// block means a nil `content`, which Go writes as `null`.
    pub fn whole(&self, model: &str, n: usize, t: &Totals) -> String {
        let mut blocks = Vec::new();
        if self.thinking {
            blocks.push(format!(
                r#"{{"type":"thinking","thinking":{}}}"#,
                j(THINKING)
            ));
        }
        if n > 0 {
            blocks.push(format!(r#"{{"type":"text","text":{}}}"#, j(text(n))));
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
            ("stop_reason", j(stop_reason(t))),
            (
                "usage",
                format!(
                    r#"{{"input_tokens":{},"output_tokens":{}}}"#,
                    t.prompt_tokens, n
                ),
            ),
        ]);
        format!("{body}\n")
    }
}

/// `mapStopReason`.
fn stop_reason(t: &Totals) -> &'static str {
    match t.done_reason {
        "length" => "max_tokens",
        _ => "end_turn",
    }
}

/// `anthropic.NewError`: `{"type":"error","error":{"type":…,"message":…},"request_id":"req_…"}`.
pub fn anthropic_error_body(status: u16, message: &str, next: u64) -> String {
    let kind = match status {
        400 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        _ => "api_error",
    };
    ordered(&[
        ("type", j("error")),
        (
            "error",
            ordered(&[("type", j(kind)), ("message", j(message))]),
        ),
        ("request_id", j(format!("req_{:024x}", 0xe770_0000 + next))),
    ])
}

/// `newEvent` + `writeEvent`: the data names its event in `type`.
/// `openai.NewError` as Go writes it: `{"error":{"message","type","param","code"}}`.
pub fn openai_error_body(status: u16, message: &str) -> String {
    let kind = match status {
        400 => "invalid_request_error",
        404 => "not_found_error",
        _ => "api_error",
    };
    let error = ordered(&[
        ("message", j(message)),
        ("type", j(kind)),
        ("param", "null".into()),
        ("code", "null".into()),
    ]);
    format!("{{\"error\":{error}}}")
}

fn event(out: &mut String, name: &str, mut data: Value) {
    data["type"] = json!(name);
    event_raw(out, name, &data.to_string());
}

/// `writeSSE` / `ResponsesWriter.writeEvent`.
fn event_raw(out: &mut String, name: &str, data: &str) {
    out.push_str("event: ");
    out.push_str(name);
    out.push_str("\ndata: ");
    out.push_str(data);
    out.push_str("\n\n");
}

/// A JSON object with its keys in this order (a Go struct's).
fn ordered(fields: &[(&str, String)]) -> String {
    let mut out = String::from("{");
    for (i, (k, v)) in fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&j(k));
        out.push(':');
        out.push_str(v);
    }
    out.push('}');
    out
}

fn j(v: impl serde::Serialize) -> String {
    serde_json::to_string(&v).unwrap_or_default()
}

/// A float64 as Go writes it: `1`, not `1.0`.
fn go_float(f: f64) -> Value {
    if f.fract() == 0.0 && f.abs() < 1e15 {
        json!(f as i64)
    } else {
        json!(f)
    }
}

//! `/v1/responses` answers: the events of `ResponsesStreamConverter` and
//! the body of `ToResponse` (Ollama's openai/responses.go).

use serde_json::{Value, json};

use super::{arguments_json, event, go_float, j, ordered};
use crate::format::{Totals, text, thinking_text, thinking_token, token, unix_now};

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
    /// The streamed reasoning item's id (`rs_%d`, random in Ollama).
    pub reasoning_id: String,
    /// `reasoning.effort` and `reasoning.summary`, echoed in `reasoning`.
    pub effort: Option<String>,
    pub summary: Option<String>,
    /// The model's tool calls, Ollama-shaped (`answer::Answer::ToolCalls`):
    /// function-call items instead of a message.
    pub calls: Vec<Value>,
}

impl Responses {
    pub fn of_request(req: &Value, next: u64) -> Responses {
        let f = |k: &str| req.get(k).and_then(Value::as_f64).unwrap_or(1.0);
        let reasoning = |k: &str| {
            req.pointer(&format!("/reasoning/{k}"))
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        };
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
            reasoning_id: format!("rs_{}", 300_000 + next),
            effort: reasoning("effort"),
            summary: reasoning("summary"),
            calls: Vec::new(),
        }
    }

    /// `buildResponseObject`'s `reasoning`: null, or a map with both keys.
    fn reasoning_stream(&self) -> Value {
        if self.effort.is_none() && self.summary.is_none() {
            return Value::Null;
        }
        json!({"effort": self.effort, "summary": self.summary})
    }

    /// `ToResponse`'s `reasoning`: `*ResponsesReasoningOutput`, both fields omitempty.
    fn reasoning_whole(&self) -> String {
        if self.effort.is_none() && self.summary.is_none() {
            return "null".into();
        }
        let mut fields = Vec::new();
        if let Some(e) = &self.effort {
            fields.push(("effort", j(e)));
        }
        if let Some(s) = &self.summary {
            fields.push(("summary", j(s)));
        }
        ordered(&fields)
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
            "top_logprobs": 0, "temperature": go_float(self.temperature), "reasoning": self.reasoning_stream(),
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

    /// The reasoning item as `finishReasoning` completes it (a Go map: keys
    /// sorted); `encrypted_content` is the plain thinking.
    fn reasoning_item(&self, thinking: &str) -> Value {
        json!({
            "id": self.reasoning_id, "type": "reasoning",
            "summary": [{"type": "summary_text", "text": thinking}],
            "encrypted_content": thinking,
        })
    }

    /// Sequence number of the message item's `output_item.added`: after
    /// created and in_progress, and after the reasoning item's added,
    /// `think` deltas, summary done and item done.
    fn message_seq(think: usize) -> usize {
        if think == 0 { 2 } else { 5 + think }
    }

    /// The events for token `i` of an answer whose first `think` tokens are
    /// thinking (`ResponsesStreamConverter.Process`). The first token opens
    /// the response; thinking goes in a reasoning item (output 0,
    /// `reasoning_summary_text.delta`), which the first text token closes
    /// (`finishReasoning`) before opening the message item and its part.
    pub fn chunk(&self, model: &str, i: usize, think: usize) -> String {
        let mut out = String::new();
        if i == 0 {
            let empty = |seq| json!({"response": self.object(model, "in_progress", json!([]), Value::Null), "sequence_number": seq});
            event(&mut out, "response.created", empty(0));
            event(&mut out, "response.in_progress", empty(1));
        }
        if i < think {
            if i == 0 {
                let item = json!({"id": self.reasoning_id, "type": "reasoning", "summary": []});
                event(
                    &mut out,
                    "response.output_item.added",
                    json!({"output_index": 0, "item": item, "sequence_number": 2}),
                );
            }
            event(
                &mut out,
                "response.reasoning_summary_text.delta",
                json!({
                    "item_id": self.reasoning_id, "output_index": 0, "summary_index": 0,
                    "delta": thinking_token(i), "sequence_number": 3 + i,
                }),
            );
            return out;
        }
        let a = i - think;
        let index = usize::from(think > 0);
        let seq = Self::message_seq(think);
        if a == 0 && think > 0 {
            self.finish_reasoning(&mut out, think, seq - 2);
        }
        if !self.calls.is_empty() {
            // `processToolCalls`: the calls, whole, in place of a message.
            for (k, item) in self.call_items().into_iter().enumerate() {
                let (id, arguments) = (item["id"].clone(), item["arguments"].clone());
                let (n, seq) = (index + k, seq + 4 * k);
                let mut added = item.clone();
                added["status"] = json!("in_progress");
                added["arguments"] = json!("");
                event(
                    &mut out,
                    "response.output_item.added",
                    json!({"output_index": n, "item": added, "sequence_number": seq}),
                );
                event(
                    &mut out,
                    "response.function_call_arguments.delta",
                    json!({"item_id": id, "output_index": n, "delta": arguments, "sequence_number": seq + 1}),
                );
                event(
                    &mut out,
                    "response.function_call_arguments.done",
                    json!({"item_id": id, "output_index": n, "arguments": arguments, "sequence_number": seq + 2}),
                );
                event(
                    &mut out,
                    "response.output_item.done",
                    json!({"output_index": n, "item": item, "sequence_number": seq + 3}),
                );
            }
            return out;
        }
        if a == 0 {
            let item = json!({"id": self.item_id, "type": "message", "status": "in_progress", "role": "assistant", "content": []});
            event(
                &mut out,
                "response.output_item.added",
                json!({"output_index": index, "item": item, "sequence_number": seq}),
            );
            let part =
                json!({"type": "output_text", "text": "", "annotations": [], "logprobs": []});
            event(
                &mut out,
                "response.content_part.added",
                json!({"item_id": self.item_id, "output_index": index, "content_index": 0, "part": part, "sequence_number": seq + 1}),
            );
        }
        event(
            &mut out,
            "response.output_text.delta",
            json!({
                "item_id": self.item_id, "output_index": index, "content_index": 0,
                "delta": token(a), "logprobs": [], "sequence_number": seq + 2 + a,
            }),
        );
        out
    }

    /// The function-call items of the answer's tool calls (`ToToolCalls`:
    /// the arguments as a JSON string), completed.
    fn call_items(&self) -> Vec<Value> {
        let n = self.id.trim_start_matches("resp_");
        self.calls
            .iter()
            .enumerate()
            .map(|(k, call)| {
                let arguments = arguments_json(call);
                json!({
                    "id": format!("fc_{n}_{k}"), "type": "function_call", "status": "completed",
                    "call_id": call.get("id"), "name": call.pointer("/function/name"),
                    "arguments": arguments,
                })
            })
            .collect()
    }

    /// `finishReasoning` after `think` thinking tokens: the summary's done
    /// event and the item's, numbered `seq` and `seq + 1`.
    fn finish_reasoning(&self, out: &mut String, think: usize, seq: usize) {
        let all = thinking_text(think);
        event(
            out,
            "response.reasoning_summary_text.done",
            json!({"item_id": self.reasoning_id, "output_index": 0, "summary_index": 0, "text": all, "sequence_number": seq}),
        );
        event(
            out,
            "response.output_item.done",
            json!({"output_index": 0, "item": self.reasoning_item(&all), "sequence_number": seq + 1}),
        );
    }

    /// `processCompletion`: the reasoning item's done events if the
    /// thinking was not finished yet, the text's done events (which repeat
    /// the whole text), then `response.completed` with every item and usage
    /// (output tokens: `eval_count`, thinking included; reasoning_tokens 0,
    /// as Ollama writes it).
    pub fn last_chunk(&self, model: &str, t: &Totals) -> String {
        let (think, n) = (t.thinking_tokens, t.answer_tokens());
        let mut out = String::new();
        let calls = if n > 0 { self.call_items() } else { Vec::new() };
        let mut seq = match (t.eval_tokens, n) {
            (0, _) => 0,
            (_, 0) => 3 + think,
            _ if !calls.is_empty() => Self::message_seq(think) + 4 * calls.len(),
            _ => Self::message_seq(think) + 2 + n,
        };
        let mut output = Vec::new();
        if t.eval_tokens == 0 {
            // The done chunk is the first write: the response opens here.
            let empty = |seq| json!({"response": self.object(model, "in_progress", json!([]), Value::Null), "sequence_number": seq});
            event(&mut out, "response.created", empty(0));
            event(&mut out, "response.in_progress", empty(1));
            seq = 2;
        }
        if think > 0 {
            if n == 0 {
                self.finish_reasoning(&mut out, think, seq);
                seq += 2;
            }
            output.push(self.reasoning_item(&thinking_text(think)));
        }
        let mut next = || {
            seq += 1;
            seq - 1
        };
        output.extend(calls.iter().cloned());
        if n > 0 && calls.is_empty() {
            let all = text(n);
            let index = usize::from(think > 0);
            let common = |seq: usize| json!({"item_id": self.item_id, "output_index": index, "content_index": 0, "sequence_number": seq});
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
                json!({"output_index": index, "item": item, "sequence_number": next()}),
            );
            output.push(item);
        }
        let e = t.eval_tokens;
        let usage = json!({
            "input_tokens": t.prompt_tokens, "output_tokens": e, "total_tokens": t.prompt_tokens + e,
            "input_tokens_details": {"cached_tokens": 0}, "output_tokens_details": {"reasoning_tokens": 0},
        });
        let mut response = self.object(model, "completed", json!(output), usage);
        response["completed_at"] = json!(unix_now());
        event(
            &mut out,
            "response.completed",
            json!({"response": response, "sequence_number": next()}),
        );
        out
    }

    /// `ToResponse`, a Go struct: fields in declared order.
    pub fn whole(&self, model: &str, t: &Totals) -> String {
        let all = text(t.answer_tokens());
        let thinking = thinking_text(t.thinking_tokens);
        let mut items = Vec::new();
        if !thinking.is_empty() {
            // ResponsesOutputItem: status, role and content are omitempty.
            items.push(ordered(&[
                ("id", j(format!("rs_{}", self.id))),
                ("type", j("reasoning")),
                (
                    "summary",
                    format!(
                        "[{}]",
                        ordered(&[("type", j("summary_text")), ("text", j(&thinking))])
                    ),
                ),
                ("encrypted_content", j(&thinking)),
            ]));
        }
        let calls = if t.answer_tokens() > 0 {
            self.call_items()
        } else {
            Vec::new()
        };
        for call in &calls {
            // ResponsesOutputItem, in declared order.
            let field = |k: &str| call[k].to_string();
            items.push(ordered(&[
                ("id", field("id")),
                ("type", field("type")),
                ("status", field("status")),
                ("call_id", field("call_id")),
                ("name", field("name")),
                ("arguments", field("arguments")),
            ]));
        }
        if calls.is_empty() {
            items.push(ordered(&[
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
            ]));
        }
        let e = t.eval_tokens;
        let usage = ordered(&[
            ("input_tokens", j(t.prompt_tokens)),
            ("output_tokens", j(e)),
            ("total_tokens", j(t.prompt_tokens + e)),
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
            ("output", format!("[{}]", items.join(","))),
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
            ("reasoning", self.reasoning_whole()),
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

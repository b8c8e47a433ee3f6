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

mod messages;
mod responses;

use serde_json::{Value, json};

pub use messages::Messages;
pub use responses::Responses;

/// An Ollama tool call's arguments as JSON text.
pub(super) fn arguments_json(call: &Value) -> String {
    call.pointer("/function/arguments")
        .map_or("{}".into(), Value::to_string)
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

pub(super) fn event(out: &mut String, name: &str, mut data: Value) {
    data["type"] = json!(name);
    event_raw(out, name, &data.to_string());
}

/// `writeSSE` / `ResponsesWriter.writeEvent`.
pub(super) fn event_raw(out: &mut String, name: &str, data: &str) {
    out.push_str("event: ");
    out.push_str(name);
    out.push_str("\ndata: ");
    out.push_str(data);
    out.push_str("\n\n");
}

/// A JSON object with its keys in this order (a Go struct's).
pub(super) fn ordered(fields: &[(&str, String)]) -> String {
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

pub(super) fn j(v: impl serde::Serialize) -> String {
    serde_json::to_string(&v).unwrap_or_default()
}

/// A float64 as Go writes it: `1`, not `1.0`.
pub(super) fn go_float(f: f64) -> Value {
    if f.fract() == 0.0 && f.abs() < 1e15 {
        json!(f as i64)
    } else {
        json!(f)
    }
}

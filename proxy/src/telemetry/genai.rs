//! The GenAI semantic-convention attributes read from requests and answers
//! (https://opentelemetry.io/docs/specs/semconv/gen-ai/): the operation,
//! the sampling parameters asked for, the model and finish reasons Ollama
//! answered with. Only these named scalar fields are read; message and
//! completion text never leave the body.

use std::sync::LazyLock;

use memchr::memmem;
use opentelemetry::trace::TraceContextExt;
use opentelemetry::{Array, Context, KeyValue, StringValue, Value};
use serde::Deserialize;

use crate::response::lenient::{List, Obj};
use crate::routes::RouteKind;

/// `gen_ai.operation.name` of a route; `None` for routes that run no model.
pub fn operation(kind: RouteKind) -> Option<&'static str> {
    match kind {
        RouteKind::OllamaChat
        | RouteKind::OpenaiChat
        | RouteKind::OpenaiResponses
        | RouteKind::AnthropicMessages => Some("chat"),
        RouteKind::OllamaGenerate | RouteKind::OpenaiCompletions => Some("text_completion"),
        RouteKind::GeminiGenerate => Some("generate_content"),
        RouteKind::OllamaEmbed | RouteKind::OpenaiEmbeddings | RouteKind::GeminiEmbed => {
            Some("embeddings")
        }
        _ => None,
    }
}

/// The sampling parameters of every API's request body: top-level
/// (OpenAI, Anthropic, Responses) or in Ollama's `options`.
#[derive(Deserialize, Default)]
struct Params {
    max_tokens: Option<f64>,
    max_completion_tokens: Option<f64>,
    max_output_tokens: Option<f64>,
    num_predict: Option<f64>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    top_k: Option<f64>,
    options: Option<Box<Params>>,
    /// Gemini.
    #[serde(rename = "generationConfig")]
    generation_config: Option<GenerationConfig>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct GenerationConfig {
    max_output_tokens: Option<f64>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    top_k: Option<f64>,
}

/// `gen_ai.request.*` attributes for the parameters the body names.
pub fn request_params(body: &[u8]) -> Vec<KeyValue> {
    // A parameter of an unexpected type leaves them all out: these
    // attributes describe, they never decide.
    let mut p: Params = serde_json::from_slice(body).unwrap_or_default();
    if let Some(g) = p.generation_config.take() {
        p.max_output_tokens = p.max_output_tokens.or(g.max_output_tokens);
        p.temperature = p.temperature.or(g.temperature);
        p.top_p = p.top_p.or(g.top_p);
        p.top_k = p.top_k.or(g.top_k);
    }
    let o = p.options.as_deref();
    let pick = |top: Option<f64>, f: fn(&Params) -> Option<f64>| top.or_else(|| o.and_then(f));
    let max_tokens = p
        .max_tokens
        .or(p.max_completion_tokens)
        .or(p.max_output_tokens)
        .or_else(|| o.and_then(|o| o.num_predict));
    let mut out = Vec::new();
    if let Some(n) = max_tokens.filter(|n| *n >= 0.0) {
        out.push(KeyValue::new("gen_ai.request.max_tokens", n as i64));
    }
    if let Some(t) = pick(p.temperature, |o| o.temperature) {
        out.push(KeyValue::new("gen_ai.request.temperature", t));
    }
    if let Some(t) = pick(p.top_p, |o| o.top_p) {
        out.push(KeyValue::new("gen_ai.request.top_p", t));
    }
    if let Some(k) = pick(p.top_k, |o| o.top_k) {
        out.push(KeyValue::new("gen_ai.request.top_k", k));
    }
    out
}

/// `gen_ai.request.*` attributes of an Ollama request, from its `options`
/// as the request's view already parsed them (Ollama reads its sampling
/// parameters there only), so the body is not parsed a second time.
pub fn ollama_params(
    options: Option<&serde_json::Map<String, serde_json::Value>>,
) -> Vec<KeyValue> {
    let Some(o) = options else {
        return Vec::new();
    };
    let num = |k: &str| o.get(k).and_then(serde_json::Value::as_f64);
    let mut out = Vec::new();
    if let Some(n) = num("num_predict").filter(|n| *n >= 0.0) {
        out.push(KeyValue::new("gen_ai.request.max_tokens", n as i64));
    }
    for (key, attr) in [
        ("temperature", "gen_ai.request.temperature"),
        ("top_p", "gen_ai.request.top_p"),
        ("top_k", "gen_ai.request.top_k"),
    ] {
        if let Some(v) = num(key) {
            out.push(KeyValue::new(attr, v));
        }
    }
    out
}

/// The scalar fields of an answer's last chunk (the one with the token
/// counts) that name its model and why generation stopped, in every API.
#[derive(Deserialize, Default)]
struct Final {
    model: Option<String>,
    /// Ollama.
    done_reason: Option<String>,
    /// Anthropic's whole answer.
    stop_reason: Option<String>,
    /// OpenAI.
    #[serde(default)]
    choices: List<Choice>,
    /// Anthropic's `message_delta` (a Responses API event's `delta` is text).
    #[serde(default)]
    delta: Obj<Delta>,
    /// The Responses API's `response.completed` (Ollama's `response` is
    /// the answer's text: read only when it is an object).
    #[serde(default)]
    response: Obj<Response>,
}

#[derive(Deserialize)]
struct Choice {
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct Delta {
    stop_reason: Option<String>,
}

#[derive(Deserialize)]
struct Response {
    model: Option<String>,
    status: Option<String>,
}

/// Notes `gen_ai.response.model` and `gen_ai.response.finish_reasons` from
/// the chunk that carried an answer's token counts (its JSON, or an SSE
/// event holding it), on the current request's span.
pub fn note_final_chunk(chunk: &[u8]) {
    if !super::enabled() {
        return;
    }
    Context::map_current(|cx| {
        let span = cx.span();
        if !span.is_recording() {
            return;
        }
        let attrs = final_attributes(sse_data(chunk));
        if !attrs.is_empty() {
            span.set_attributes(attrs);
        }
    });
}

/// `gen_ai.response.model` and `gen_ai.response.finish_reasons` of an
/// answer's last chunk (its JSON).
fn final_attributes(json: &[u8]) -> Vec<KeyValue> {
    let Ok(f) = serde_json::from_slice::<Final>(json) else {
        return Vec::new();
    };
    let response = f.response.0;
    let mut out = Vec::new();
    let model = f
        .model
        .or_else(|| response.as_ref().and_then(|r| r.model.clone()));
    if let Some(m) = model {
        out.push(KeyValue::new("gen_ai.response.model", m));
    }
    let mut reasons: Vec<StringValue> = f
        .choices
        .0
        .into_iter()
        .filter_map(|c| c.finish_reason)
        .chain(f.done_reason)
        .chain(f.stop_reason)
        .chain(f.delta.0.and_then(|d| d.stop_reason))
        .chain(response.and_then(|r| r.status))
        .map(StringValue::from)
        .collect();
    reasons.dedup();
    if !reasons.is_empty() {
        out.push(KeyValue::new(
            "gen_ai.response.finish_reasons",
            Value::Array(Array::String(reasons)),
        ));
    }
    out
}

/// Whether a passing chunk may name an OpenAI finish reason, with traces
/// on: a byte search, so chunks of token text are not parsed.
pub fn may_finish(chunk: &[u8]) -> bool {
    // One searcher for the process: building one per chunk cost more than the search.
    static FINDER: LazyLock<memmem::Finder<'static>> =
        LazyLock::new(|| memmem::Finder::new(b"\"finish_reason\":\""));
    super::enabled() && FINDER.find(chunk).is_some()
}

/// The JSON of a chunk: itself, or the `data:` line of an SSE event.
fn sse_data(chunk: &[u8]) -> &[u8] {
    let trimmed = chunk.trim_ascii_start();
    if trimmed.starts_with(b"{") {
        return trimmed;
    }
    trimmed
        .split(|b| *b == b'\n')
        .find_map(|line| line.strip_prefix(b"data:"))
        .map_or(trimmed, |d| d.trim_ascii())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(body: &str) -> Vec<(String, String)> {
        request_params(body.as_bytes())
            .into_iter()
            .map(|kv| (kv.key.to_string(), kv.value.to_string()))
            .collect()
    }

    #[test]
    fn sampling_parameters_come_from_every_api() {
        let ollama = attrs(
            r#"{"model":"m","messages":[{"role":"user","content":"secret"}],"options":{"num_predict":5,"temperature":0.2}}"#,
        );
        assert_eq!(
            ollama,
            [
                ("gen_ai.request.max_tokens".into(), "5".into()),
                ("gen_ai.request.temperature".into(), "0.2".into())
            ]
        );
        let openai = attrs(r#"{"model":"m","max_tokens":7,"top_p":0.9}"#);
        assert_eq!(
            openai,
            [
                ("gen_ai.request.max_tokens".into(), "7".into()),
                ("gen_ai.request.top_p".into(), "0.9".into())
            ]
        );
        let responses = attrs(r#"{"model":"m","input":"x","max_output_tokens":3}"#);
        assert_eq!(
            responses,
            [("gen_ai.request.max_tokens".into(), "3".into())]
        );
        let gemini =
            attrs(r#"{"contents":[],"generationConfig":{"maxOutputTokens":8,"temperature":0.5}}"#);
        assert_eq!(
            gemini,
            [
                ("gen_ai.request.max_tokens".into(), "8".into()),
                ("gen_ai.request.temperature".into(), "0.5".into())
            ]
        );
        assert!(attrs(r#"{"model":"m","temperature":"hot"}"#).is_empty());
        assert!(attrs("not json").is_empty());
    }

    #[test]
    fn ollama_parameters_come_from_the_parsed_options() {
        let body = r#"{"model":"m","options":{"num_predict":5,"temperature":0.2,"top_k":"x"}}"#;
        let view = crate::request_view::parse(RouteKind::OllamaChat, body.as_bytes()).unwrap();
        let got: Vec<(String, String)> = ollama_params(view.options.as_ref())
            .into_iter()
            .map(|kv| (kv.key.to_string(), kv.value.to_string()))
            .collect();
        assert_eq!(
            got,
            [
                ("gen_ai.request.max_tokens".into(), "5".into()),
                ("gen_ai.request.temperature".into(), "0.2".into())
            ]
        );
        assert!(ollama_params(None).is_empty());
    }

    #[test]
    fn every_api_names_its_model_and_finish_reason() {
        let read = |json: &str| -> Vec<(String, String)> {
            final_attributes(json.as_bytes())
                .into_iter()
                .map(|kv| (kv.key.to_string(), kv.value.to_string()))
                .collect()
        };
        let named = |model: &str, reason: &str| {
            vec![
                ("gen_ai.response.model".to_string(), model.to_string()),
                (
                    "gen_ai.response.finish_reasons".to_string(),
                    format!("[\"{reason}\"]"),
                ),
            ]
        };
        // Ollama's /api/generate: `response` is the answer's text.
        assert_eq!(
            read(
                r#"{"model":"m","response":"Hi","done":true,"done_reason":"stop","context":[1,2],"eval_count":1}"#
            ),
            named("m", "stop")
        );
        assert_eq!(
            read(
                r#"{"model":"m","message":{"role":"assistant","content":""},"done":true,"done_reason":"length"}"#
            ),
            named("m", "length")
        );
        assert_eq!(
            read(r#"{"model":"m","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#),
            named("m", "stop")
        );
        assert_eq!(
            read(r#"{"type":"response.completed","response":{"model":"m","status":"completed"}}"#),
            named("m", "completed")
        );
        assert_eq!(
            read(r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{}}"#)[0],
            (
                "gen_ai.response.finish_reasons".to_string(),
                "[\"end_turn\"]".to_string()
            )
        );
    }

    #[test]
    fn sse_events_are_read_at_their_data_line() {
        assert_eq!(
            sse_data(b"event: message_delta\ndata: {\"a\":1}\n\n"),
            b"{\"a\":1}"
        );
        assert_eq!(sse_data(b"{\"done\":true}\n"), b"{\"done\":true}\n");
    }
}

//! `/v1/responses` and `/v1/messages` on the wire, as Ollama's Go code
//! writes them (openai/responses.go, anthropic/anthropic.go and their
//! middleware writers): typed SSE events, Go's field order, usage, errors.

mod common;

use common::{deltas, names, post, post_with_headers};
use ollama_emulator::Emulator;
use serde_json::{Value, json};

async fn start() -> (Emulator, tempfile::TempDir) {
    common::start_with(&["gemma3:4b"], |_| {}).await
}

/// The events of an SSE body: name, data; each exactly `event: N\ndata: D\n\n`.
fn events(body: &str) -> Vec<(String, Value)> {
    assert!(body.is_empty() || body.ends_with("\n\n"), "{body}");
    let ev = common::events(body);
    for (name, data) in &ev {
        assert_eq!(data["type"], name.as_str(), "the data names its event");
    }
    ev
}

/// The top-level keys of a JSON object, in the order written.
fn keys(json: &str) -> Vec<String> {
    let mut out = Vec::new();
    let (mut depth, mut in_str, mut esc, mut key_start) = (0, false, false, None);
    for (i, c) in json.char_indices() {
        if in_str {
            match (esc, c) {
                (true, _) => esc = false,
                (false, '\\') => esc = true,
                (false, '"') => {
                    in_str = false;
                    if let Some(s) = key_start.take() {
                        if json[i + 1..].starts_with(':') {
                            out.push(json[s..i].to_owned());
                        }
                    }
                }
                _ => {}
            }
            continue;
        }
        match c {
            '{' | '[' => depth += 1,
            '}' | ']' => depth -= 1,
            '"' => {
                in_str = true;
                if depth == 1 {
                    key_start = Some(i + 1);
                }
            }
            _ => {}
        }
    }
    out
}

#[tokio::test]
async fn responses_stream_as_ollamas_converter_writes_it() {
    let (emu, _dir) = start().await;
    let (status, ct, body) = post(
        &emu,
        "/v1/responses",
        json!({"model": "gemma3:4b", "input": "Why is the sky blue?", "stream": true, "max_output_tokens": 3}),
    )
    .await;
    assert_eq!((status, ct.as_str()), (200, "text/event-stream"));
    let ev = events(&body);
    assert_eq!(
        names(&ev),
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.completed",
        ]
    );
    for (i, (_, data)) in ev.iter().enumerate() {
        assert_eq!(data["sequence_number"], i, "numbered in order");
    }
    // A Go map: keys sorted.
    let item = ev[2].1["item"]["id"].as_str().unwrap().to_owned();
    let first_delta = body.split("\n\n").nth(4).unwrap();
    assert_eq!(
        first_delta,
        format!(
            "event: response.output_text.delta\ndata: {{\"content_index\":0,\"delta\":\"The \",\"item_id\":\"{item}\",\"logprobs\":[],\"output_index\":0,\"sequence_number\":4,\"type\":\"response.output_text.delta\"}}"
        )
    );
    let deltas = deltas(&ev, "response.output_text.delta");
    assert_eq!(deltas, "The sky is ");
    // The whole text, again, four times.
    assert_eq!(ev[7].1["text"], deltas);
    assert_eq!(ev[8].1["part"]["text"], deltas);
    assert_eq!(ev[9].1["item"]["content"][0]["text"], deltas);
    let done = &ev[10].1["response"];
    assert_eq!(done["output"][0]["content"][0]["text"], deltas);
    assert_eq!(done["status"], "completed");
    assert!(done["completed_at"].is_u64());
    assert_eq!(ev[0].1["response"]["usage"], Value::Null);
    let u = &done["usage"];
    assert_eq!(u["output_tokens"], 3);
    assert!(u["input_tokens"].as_u64().unwrap() > 0);
    assert_eq!(
        u["total_tokens"].as_u64(),
        Some(u["input_tokens"].as_u64().unwrap() + 3)
    );
    assert!(
        body.contains("\"temperature\":1,"),
        "a float64 1 as Go writes it"
    );
}

#[tokio::test]
async fn responses_whole_body_follows_the_struct() {
    let (emu, _dir) = start().await;
    let (status, ct, body) = post(
        &emu,
        "/v1/responses",
        json!({"model": "gemma3:4b", "input": "hi", "max_output_tokens": 2, "instructions": "be brief", "temperature": 0.5}),
    )
    .await;
    assert_eq!((status, ct.as_str()), (200, "application/json"));
    assert!(body.ends_with("}\n"), "json.Encoder ends with a newline");
    assert_eq!(
        keys(&body),
        [
            "id",
            "object",
            "created_at",
            "completed_at",
            "status",
            "incomplete_details",
            "model",
            "previous_response_id",
            "instructions",
            "output",
            "error",
            "tools",
            "tool_choice",
            "truncation",
            "parallel_tool_calls",
            "text",
            "top_p",
            "presence_penalty",
            "frequency_penalty",
            "top_logprobs",
            "temperature",
            "reasoning",
            "usage",
            "max_output_tokens",
            "max_tool_calls",
            "store",
            "background",
            "service_tier",
            "metadata",
            "safety_identifier",
            "prompt_cache_key",
        ]
    );
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["output"][0]["type"], "message");
    assert_eq!(v["output"][0]["content"][0]["text"], "The sky ");
    assert_eq!(
        (v["instructions"].as_str(), v["temperature"].as_f64()),
        (Some("be brief"), Some(0.5))
    );
    assert_eq!(v["usage"]["output_tokens"], 2);
    assert!(
        body.contains(r#""output":[{"id":"msg_"#),
        "item fields in struct order"
    );
}

#[tokio::test]
async fn messages_stream_as_ollamas_converter_writes_it() {
    let (emu, _dir) = start().await;
    let (status, ct, body) = post(
        &emu,
        "/v1/messages",
        json!({"model": "gemma3:4b", "max_tokens": 3, "stream": true, "messages": [{"role": "user", "content": "Why is the sky blue?"}]}),
    )
    .await;
    assert_eq!((status, ct.as_str()), (200, "text/event-stream"));
    let ev = events(&body);
    assert_eq!(
        names(&ev),
        [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop",
        ]
    );
    let parts: Vec<&str> = body.split("\n\n").collect();
    assert!(parts[0].starts_with(
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_"
    ));
    assert!(parts[0].ends_with("\"type\":\"message\",\"role\":\"assistant\",\"model\":\"gemma3:4b\",\"content\":[],\"usage\":{\"input_tokens\":6,\"output_tokens\":0}}}"), "{}", parts[0]);
    assert_eq!(
        parts[1],
        "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}"
    );
    assert_eq!(
        parts[2],
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"The \"}}"
    );
    assert_eq!(
        parts[5],
        "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}"
    );
    // The final counts, input included (Ollama's; Anthropic sends output only).
    let end = &ev[6].1;
    assert_eq!(end["delta"]["stop_reason"], "max_tokens");
    assert_eq!(end["usage"]["output_tokens"], 3);
    assert!(
        end["usage"]["input_tokens"].as_u64().unwrap() > 6,
        "the count, not the estimate"
    );
    assert_eq!(
        parts[7],
        "event: message_stop\ndata: {\"type\":\"message_stop\"}"
    );
}

#[tokio::test]
async fn messages_whole_body_follows_the_struct() {
    let (emu, _dir) = start().await;
    let (status, ct, body) = post(
        &emu,
        "/v1/messages",
        json!({"model": "gemma3:4b", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!((status, ct.as_str()), (200, "application/json"));
    assert!(body.ends_with("}\n"));
    assert_eq!(
        keys(&body),
        [
            "id",
            "type",
            "role",
            "model",
            "content",
            "stop_reason",
            "usage"
        ]
    );
    assert!(body.contains(r#","content":[{"type":"text","text":"The sky "}],"stop_reason":"max_tokens","usage":{"input_tokens":"#));
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["usage"]["output_tokens"], 2);
}

#[tokio::test]
async fn errors_come_in_each_apis_format() {
    let (emu, _dir) = start().await;
    let msg = |extra: Value| {
        let mut b = json!({"model": "gemma3:4b", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]});
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        b
    };
    let (status, _, body) = post(&emu, "/v1/messages", msg(json!({"max_tokens": 0}))).await;
    assert_eq!(status, 400);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert_eq!(
        v["error"]["message"],
        "max_tokens is required and must be positive"
    );
    assert!(v["request_id"].as_str().unwrap().starts_with("req_"));

    let (status, ct, body) = post(&emu, "/v1/messages", msg(json!({"model": "nope:1b"}))).await;
    assert_eq!((status, ct.as_str()), (404, "application/json"));
    assert!(body.starts_with(r#"{"type":"error","error":{"type":"not_found_error","message":"model 'nope:1b' not found"},"request_id":"req_"#), "{body}");
    assert!(body.ends_with("}\n"));

    let (status, _, body) = post(
        &emu,
        "/v1/responses",
        json!({"model": "nope:1b", "input": "x"}),
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(
        body,
        "{\"error\":{\"message\":\"model 'nope:1b' not found\",\"type\":\"not_found_error\",\"param\":null,\"code\":null}}\n"
    );
}

#[tokio::test]
async fn an_error_mid_stream_just_ends_the_events() {
    // Ollama's error line reads as an empty chat chunk to these writers:
    // nothing more is written, no end events.
    let (emu, _dir) = start().await;
    let h = [("x-emulator-error-after", "2")];
    let (status, _, body) = post_with_headers(
        &emu,
        "/v1/messages",
        &h,
        json!({"model": "gemma3:4b", "max_tokens": 5, "stream": true, "messages": [{"role": "user", "content": "x"}]}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        names(&events(&body)),
        [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_delta"
        ]
    );
    let (_, _, body) = post_with_headers(
        &emu,
        "/v1/responses",
        &h,
        json!({"model": "gemma3:4b", "input": "x", "stream": true, "max_output_tokens": 5}),
    )
    .await;
    assert_eq!(
        names(&events(&body)).last(),
        Some(&"response.output_text.delta")
    );
}

#[tokio::test]
async fn a_model_that_cannot_think_is_not_refused_but_does_not_think() {
    // middleware/anthropic.go sets `relax_thinking`: ChatHandler drops the
    // `think` a non-thinking model cannot honour instead of a 400. (A
    // thinking model's block: tests/thinking.rs.)
    let (emu, _dir) = start().await;
    let req = json!({"model": "gemma3:4b", "max_tokens": 2, "stream": true,
                     "thinking": {"type": "enabled", "budget_tokens": 1024},
                     "messages": [{"role": "user", "content": "Why is the sky blue?"}]});
    let (status, _, body) = post(&emu, "/v1/messages", req).await;
    assert_eq!(status, 200);
    assert!(!body.contains("thinking"), "{body}");
    assert_eq!(events(&body)[1].1["content_block"]["type"], "text");
}

//! Response plugins on `/v1/responses` (OpenAI Responses) and `/v1/messages`
//! (Anthropic Messages), end to end: kiln-proxy with the example plugins
//! `output-guard` and `token-budget` (built by scripts/build-plugins) in
//! front of the Ollama emulator, which writes these APIs' events as
//! Ollama's Go code does.
//!
//! The emulator's text is one word per token: "The ", "sky ", "is ",
//! "blue ", … so the pattern "sky is" is always split across two deltas.

mod example_plugins;
mod harness;
mod support;

use example_plugins::plugin;
use harness::{Stack, events, named, sequence_numbers};
use kiln_proxy::plugins::PluginSpec;
use serde_json::{Value, json};
use support::fixtures;

async fn stack(specs: Vec<PluginSpec>) -> Stack {
    Stack::with_plugins(&specs).await
}

fn guard() -> PluginSpec {
    guard_of(&["sky is"])
}

/// output-guard redacting `patterns`.
fn guard_of(patterns: &[&str]) -> PluginSpec {
    plugin("output-guard", json!({ "patterns": patterns }))
}

const REDACTED: &str = "The [REDACTED] blue because ";

/// The strings at `pointer` in the events named `name`, joined.
fn joined(ev: &[(String, Value)], name: &str, pointer: &str) -> String {
    named(ev, name)
        .iter()
        .map(|d| d.pointer(pointer).and_then(Value::as_str).unwrap())
        .collect()
}

/// The text of a /v1/messages stream's text deltas, joined (the thinking
/// block's deltas left out).
fn text_deltas(ev: &[(String, Value)]) -> String {
    ev.iter()
        .filter(|(_, v)| v["delta"]["type"] == "text_delta")
        .map(|(_, v)| v["delta"]["text"].as_str().unwrap())
        .collect()
}

/// Where the events named `name` are.
fn positions(ev: &[(String, Value)], name: &str) -> Vec<usize> {
    ev.iter()
        .enumerate()
        .filter(|(_, (n, _))| n == name)
        .map(|(i, _)| i)
        .collect()
}

fn responses(stream: bool) -> Value {
    json!({"model": "gemma3:4b", "input": "Why is the sky blue?", "stream": stream, "max_output_tokens": 5})
}

/// A /v1/messages request to the emulator's thinking model (written into
/// the stack's models directory): it thinks, in a thinking block (index 0),
/// then answers the usual 5 tokens (the limit counts the thinking too).
async fn thinking_messages(stack: &Stack, stream: bool) -> Value {
    ollama_emulator::models::write_fake_model(stack.models.path(), "qwen3:0.6b", 128)
        .expect("write the thinking model");
    let mut req = messages(stream);
    req["model"] = json!("qwen3:0.6b");
    req["max_tokens"] = json!(ollama_emulator::THINKING_TOKENS + 5);
    req
}

fn messages(stream: bool) -> Value {
    json!({"model": "gemma3:4b", "max_tokens": 5, "stream": stream,
           "messages": [{"role": "user", "content": "Why is the sky blue?"}]})
}

#[tokio::test]
async fn a_pattern_split_across_messages_deltas_is_redacted() {
    let stack = stack(vec![guard()]).await;
    let resp = stack.post("/v1/messages", &messages(true)).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let body = resp.text().await.unwrap();
    assert!(!body.contains("sky is") && !body.contains("sky "), "{body}");
    let ev = events(&body);
    for (name, data) in &ev {
        assert_eq!(&data["type"], name, "event line and data agree: {body}");
    }
    let text = joined(&ev, "content_block_delta", "/delta/text");
    assert_eq!(text, REDACTED);
    let names: Vec<&str> = ev.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.first(), Some(&"message_start"));
    assert_eq!(
        &names[names.len() - 3..],
        ["content_block_stop", "message_delta", "message_stop"]
    );
    stack.shutdown().await;
}

#[tokio::test]
async fn a_pattern_split_across_responses_deltas_is_redacted_in_every_copy() {
    let stack = stack(vec![guard()]).await;
    let resp = stack.post("/v1/responses", &responses(true)).await;
    assert_eq!(resp.status(), 200);
    let body = resp.text().await.unwrap();
    assert!(
        !body.contains("sky is") && !body.contains("sky "),
        "leaked: {body}"
    );
    let ev = events(&body);
    let deltas = joined(&ev, "response.output_text.delta", "/delta");
    assert_eq!(deltas, REDACTED);
    // Every copy of the text says what the deltas said.
    assert_eq!(named(&ev, "response.output_text.done")[0]["text"], REDACTED);
    assert_eq!(
        named(&ev, "response.content_part.done")[0]["part"]["text"],
        REDACTED
    );
    assert_eq!(
        named(&ev, "response.output_item.done")[0]["item"]["content"][0]["text"],
        REDACTED
    );
    let completed = named(&ev, "response.completed")[0];
    assert_eq!(
        completed["response"]["output"][0]["content"][0]["text"],
        REDACTED
    );
    assert_eq!(completed["response"]["usage"]["output_tokens"], 5);
    assert_eq!(
        ev.last().map(|(n, _)| n.as_str()),
        Some("response.completed")
    );
    stack.shutdown().await;
}

#[tokio::test]
async fn text_held_to_the_end_is_released_before_the_text_closes() {
    // The text ends "… blue because ": the guard holds "because " (it may
    // become "because the") until the event that closes the text, which has
    // no place for text, so the host sends it in a delta of the API's own
    // just before — and the Responses copies include it.
    let stack = stack(vec![guard_of(&["because the"])]).await;
    let all = "The sky is blue because ";

    let body = stack.post_text("/v1/responses", &responses(true)).await;
    let ev = events(&body);
    let deltas = joined(&ev, "response.output_text.delta", "/delta");
    assert_eq!(
        deltas, all,
        "nothing matched: all the text goes out, in order"
    );
    let done_at = positions(&ev, "response.output_text.done")[0];
    let (name, released) = &ev[done_at - 1];
    assert_eq!(
        (name.as_str(), released["delta"].as_str()),
        ("response.output_text.delta", Some("because "))
    );
    assert_eq!(released["item_id"], ev[done_at].1["item_id"]);
    assert_eq!(ev[done_at].1["text"], all);
    assert_eq!(
        named(&ev, "response.completed")[0]["response"]["output"][0]["content"][0]["text"],
        all
    );

    let body = stack.post_text("/v1/messages", &messages(true)).await;
    let ev = events(&body);
    let stop_at = positions(&ev, "content_block_stop")[0];
    let (name, released) = &ev[stop_at - 1];
    assert_eq!(name, "content_block_delta");
    assert_eq!(released["delta"]["text"], "because ");
    assert_eq!(released["index"], ev[stop_at].1["index"]);
    let text = joined(&ev, "content_block_delta", "/delta/text");
    assert_eq!(text, all);
    stack.shutdown().await;
}

#[tokio::test]
async fn answers_that_do_not_stream_are_redacted_whole() {
    let stack = stack(vec![guard()]).await;
    let resp = stack.post("/v1/responses", &responses(false)).await;
    assert_eq!(resp.status(), 200);
    let body = resp.text().await.unwrap();
    assert!(!body.contains("sky is"), "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["output"][0]["content"][0]["text"], REDACTED);
    assert_eq!(v["usage"]["output_tokens"], 5);
    assert!(
        body.starts_with("{\"id\":\"resp_"),
        "the body keeps Ollama's field order (the text is spliced in): {body}"
    );

    let v: Value = stack
        .post("/v1/messages", &messages(false))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["content"][0]["text"], REDACTED);
    assert_eq!(v["content"].as_array().unwrap().len(), 1);
    assert_eq!(v["usage"]["output_tokens"], 5);
    stack.shutdown().await;
}

/// The number in "used N of B tokens" of a token-budget refusal, whose body
/// must be in the client's format (both APIs keep it in `error.message`).
async fn refused_after(stack: &Stack, path: &str, caller: &str, body: &Value) -> u64 {
    let resp = stack
        .client
        .post(stack.url(path))
        .header("x-kiln-caller", caller)
        .json(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429, "{caller}: the budget is spent");
    let v: Value = resp.json().await.unwrap();
    if path == "/v1/messages" {
        assert_eq!(
            (v["type"].as_str(), v["error"]["type"].as_str()),
            (Some("error"), Some("rate_limit_error")),
            "Anthropic's format: {v}"
        );
    }
    let msg = v["error"]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("error in the client's format: {v}"));
    msg.split("used ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in {msg:?}"))
}

#[tokio::test]
async fn token_budgets_count_usage_on_both_routes() {
    // A budget of 1 token: the first request of each caller runs and its
    // usage is counted; the refusal says how much.
    let stack = stack(vec![plugin("token-budget", json!({"budget": 1}))]).await;

    // Responses, not streamed: `usage` in the body.
    let v: Value = serde_json::from_str(
        &stack
            .post_ok_as("/v1/responses", "r-whole", &responses(false))
            .await,
    )
    .unwrap();
    let want = v["usage"]["total_tokens"].as_u64().unwrap();
    assert!(want > 5);
    assert_eq!(
        refused_after(&stack, "/v1/responses", "r-whole", &responses(false)).await,
        want
    );

    // Responses, streamed: `response.completed`'s usage.
    let body = stack
        .post_ok_as("/v1/responses", "r-stream", &responses(true))
        .await;
    let ev = events(&body);
    let want = named(&ev, "response.completed")[0]["response"]["usage"]["total_tokens"]
        .as_u64()
        .unwrap();
    assert_eq!(
        refused_after(&stack, "/v1/responses", "r-stream", &responses(true)).await,
        want
    );

    // Messages, not streamed.
    let v: Value = serde_json::from_str(
        &stack
            .post_ok_as("/v1/messages", "m-whole", &messages(false))
            .await,
    )
    .unwrap();
    let want = v["usage"]["input_tokens"].as_u64().unwrap() + 5;
    assert_eq!(
        refused_after(&stack, "/v1/messages", "m-whole", &messages(false)).await,
        want
    );

    // Messages, streamed: input tokens from `message_start`, replaced by the
    // final count in `message_delta` (Ollama's; the estimate differs), plus
    // the output tokens.
    let body = stack
        .post_ok_as("/v1/messages", "m-stream", &messages(true))
        .await;
    let ev = events(&body);
    let estimate = named(&ev, "message_start")[0]["message"]["usage"]["input_tokens"]
        .as_u64()
        .unwrap();
    let end = &named(&ev, "message_delta")[0]["usage"];
    let input = end["input_tokens"].as_u64().unwrap();
    assert_ne!(
        estimate, input,
        "the emulator's estimate differs, as Ollama's does"
    );
    assert_eq!(
        refused_after(&stack, "/v1/messages", "m-stream", &messages(true)).await,
        input + end["output_tokens"].as_u64().unwrap()
    );
    stack.shutdown().await;
}

#[tokio::test]
async fn a_stream_that_breaks_ends_with_an_error_event_of_the_clients_api() {
    let stack = stack(vec![guard()]).await;
    let body = stack
        .client
        .post(stack.url("/v1/messages"))
        .header("x-emulator-fail-after", "2")
        .json(&messages(true))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let ev = events(&body);
    let (name, last) = ev.last().unwrap();
    assert_eq!(
        name, "error",
        "Anthropic clients dispatch on the event name: {body}"
    );
    assert_eq!(last["type"], "error");
    assert_eq!(last["error"]["type"], "api_error");
    assert!(
        last["error"]["message"]
            .as_str()
            .unwrap()
            .contains("broke off")
    );
    stack.shutdown().await;
}

#[tokio::test]
async fn an_inserted_responses_delta_takes_its_own_sequence_number() {
    // "because " is held to the end and released in a delta the host
    // inserts before `response.output_text.done`: it takes that event's
    // number and every later event moves up one, so the numbers still count
    // 0, 1, 2… with no number twice.
    let stack = stack(vec![guard_of(&["sky is", "because the"])]).await;
    let body = stack.post_text("/v1/responses", &responses(true)).await;
    let ev = events(&body);
    let done_at = positions(&ev, "response.output_text.done")[0];
    assert_eq!(ev[done_at - 1].1["delta"], "because ", "{body}");
    let numbers = sequence_numbers(&ev);
    assert_eq!(numbers, (0..ev.len() as u64).collect::<Vec<_>>(), "{body}");
    // The copies still say what was sent.
    assert_eq!(ev[done_at].1["text"], REDACTED);
    assert_eq!(
        named(&ev, "response.completed")[0]["response"]["output"][0]["content"][0]["text"],
        REDACTED
    );
    stack.shutdown().await;
}

#[tokio::test]
async fn held_messages_text_waits_for_the_text_blocks_stop_not_the_thinking_blocks() {
    // With `thinking`, Ollama's answer opens a thinking block (index 0) and
    // closes it before the text block (index 1). Only the text block's stop
    // ends the text: held text goes out there, in a delta of the text
    // block, and never as text in the thinking block.
    let stack = stack(vec![guard_of(&["sky is", "because the"])]).await;
    let mut req = thinking_messages(&stack, true).await;
    req["thinking"] = json!({"type": "enabled", "budget_tokens": 1024});
    let body = stack.post_text("/v1/messages", &req).await;
    assert!(!body.contains("sky is"), "{body}");
    let ev = events(&body);
    let blocks: Vec<(&str, &str)> = ev
        .iter()
        .filter_map(|(n, v)| {
            let kind = match n.as_str() {
                "content_block_start" => v["content_block"]["type"].as_str()?,
                "content_block_delta" => v["delta"]["type"].as_str()?,
                "content_block_stop" => "stop",
                _ => return None,
            };
            Some((kind, if v["index"] == 0 { "0" } else { "1" }))
        })
        .collect();
    let thinking_deltas = ollama_emulator::THINKING_TOKENS;
    assert_eq!(
        blocks[..=thinking_deltas],
        [("thinking", "0")]
            .into_iter()
            .chain(std::iter::repeat_n(
                ("thinking_delta", "0"),
                thinking_deltas
            ))
            .collect::<Vec<_>>(),
        "{body}"
    );
    assert_eq!(
        blocks[thinking_deltas + 1..],
        [
            ("stop", "0"),
            ("text", "1"),
            ("text_delta", "1"),
            ("text_delta", "1"),
            ("text_delta", "1"),
            ("text_delta", "1"),
            ("text_delta", "1"),
            ("text_delta", "1"),
            ("stop", "1"),
        ],
        "the held text released once, by the text block's stop: {body}"
    );
    let stops = positions(&ev, "content_block_stop");
    let released = &ev[stops[1] - 1].1;
    assert_eq!(
        (
            released["index"].as_u64(),
            released["delta"]["text"].as_str()
        ),
        (Some(1), Some("because "))
    );
    let text = text_deltas(&ev);
    assert_eq!(text, REDACTED);

    // Not streamed: the text block is redacted, the thinking block kept.
    let mut req = thinking_messages(&stack, false).await;
    req["thinking"] = json!({"type": "enabled"});
    let v: Value = stack.post("/v1/messages", &req).await.json().await.unwrap();
    assert_eq!(v["content"][0]["type"], "thinking");
    assert_eq!(v["content"][1]["text"], REDACTED);
    stack.shutdown().await;
}

/// A response-only plugin (world `response-filter`) in WAT that passes every
/// chunk but the first with `done`, whose text it sets to `<end>`: it shows
/// where the host says generation ends.
fn end_marker_plugin(dir: &std::path::Path) -> PluginSpec {
    // The action at 32: `pass` (0), but for the first chunk with `done`
    // (the 9th param) `rewrite-text` (2) with the string "<end>" at 64.
    let bytes = fixtures::response_filter(
        r#"(global $marked (mut i32) (i32.const 0))
  (data (i32.const 64) "<end>")"#,
        "(i32.store8 (i32.const 32) (i32.const 0))
    (if (i32.and (local.get 8) (i32.eqz (global.get $marked)))
      (then
        (global.set $marked (i32.const 1))
        (i32.store8 (i32.const 32) (i32.const 2))
        (i32.store (i32.const 36) (i32.const 64))
        (i32.store (i32.const 40) (i32.const 5))))
    (i32.const 32)",
    );
    example_plugins::spec(
        "end-marker",
        fixtures::write_bytes(dir, "end_marker", &bytes),
        Value::Null,
    )
}

#[tokio::test]
async fn a_thinking_blocks_stop_does_not_end_the_text() {
    // The first chunk a plugin is told ends generation gets its text: it
    // must be the text block's stop (index 1), not the thinking block's
    // (index 0), which has no text to end.
    let dir = tempfile::tempdir().unwrap();
    let stack = stack(vec![end_marker_plugin(dir.path())]).await;
    let mut req = thinking_messages(&stack, true).await;
    req["thinking"] = json!({"type": "enabled"});
    let body = stack.post_text("/v1/messages", &req).await;
    let ev = events(&body);
    let stops = positions(&ev, "content_block_stop");
    assert_eq!(stops.len(), 2, "{body}");
    assert_eq!(ev[stops[0]].1["index"], 0);
    assert_eq!(
        ev[stops[0] - 1].1["delta"]["type"],
        "thinking_delta",
        "nothing inserted in the thinking block: {body}"
    );
    let marker = &ev[stops[1] - 1].1;
    assert_eq!(
        (
            marker["index"].as_u64(),
            marker["delta"]["type"].as_str(),
            marker["delta"]["text"].as_str()
        ),
        (Some(1), Some("text_delta"), Some("<end>")),
        "{body}"
    );
    let text = text_deltas(&ev);
    assert_eq!(text, "The sky is blue because <end>");
    stack.shutdown().await;
}

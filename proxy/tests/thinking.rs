//! Response plugins see the model's thinking, end to end: `output-guard`
//! (built by scripts/build-plugins) in front of the Ollama emulator's
//! thinking model, on every generating route, streamed and not.
//!
//! Before this, a plugin saw only the answer text: a pattern that a thinking
//! model wrote in its thinking reached the client untouched (`thinking`,
//! `message.thinking`, `reasoning`, a Responses reasoning item, an Anthropic
//! thinking block). The emulator's model thinks one piece per chunk:
//! "Hmm", ", ", "light ", …, "Rayleigh ", "scattering ", … so the pattern
//! "Rayleigh scattering" is always split across two streamed chunks, and
//! the answer ("The sky is blue because …") does not contain it.

mod example_plugins;
mod harness;

use example_plugins::plugin;
use harness::{Stack, events, named, ndjson, sequence_numbers, sse_json};
use ollama_emulator::{THINKING_TOKENS, thinking_text, token};
use serde_json::{Value, json};

/// A model with the thinking capability (its template has thinking tags).
const THINKER: &str = "qwen3:0.6b";
const PHRASE: &str = "Rayleigh scattering";
/// Tokens the emulator answers with after thinking (its default).
const ANSWER_TOKENS: usize = 8;

/// The proxy with output-guard redacting `PHRASE`, and a thinking model
/// next to the harness's gemma3 models.
async fn stack() -> Stack {
    guarded_stack(PHRASE).await
}

/// The proxy with output-guard redacting `pattern`, and the thinking model.
async fn guarded_stack(pattern: &str) -> Stack {
    let stack =
        Stack::with_plugins(&[plugin("output-guard", json!({"patterns": [pattern]}))]).await;
    ollama_emulator::models::write_fake_model(stack.models.path(), THINKER, 128)
        .expect("write the thinking model");
    stack
}

/// What the model thinks, whole.
fn thinking() -> String {
    thinking_text(THINKING_TOKENS)
}

/// What the client must see of the thinking: the phrase redacted, nothing
/// else changed.
fn redacted_thinking() -> String {
    thinking().replace(PHRASE, "[REDACTED]")
}

fn answer() -> String {
    (0..ANSWER_TOKENS).map(token).collect()
}

fn user() -> Value {
    json!([{"role": "user", "content": "Why is the sky blue?"}])
}

/// The request each route gets; each asks for thinking its own way, or
/// (/api/generate) leaves it to the model, which thinks by default.
fn request(path: &str, stream: bool) -> Value {
    match path {
        "/api/generate" => {
            json!({"model": THINKER, "prompt": "Why is the sky blue?", "stream": stream})
        }
        "/api/chat" => {
            json!({"model": THINKER, "messages": user(), "stream": stream, "think": true})
        }
        "/v1/chat/completions" => {
            json!({"model": THINKER, "messages": user(), "stream": stream, "reasoning_effort": "high"})
        }
        "/v1/responses" => json!({"model": THINKER, "input": "Why is the sky blue?",
                                  "stream": stream, "reasoning": {"effort": "medium"}}),
        "/v1/messages" => json!({"model": THINKER, "messages": user(), "stream": stream,
                                 // The limit counts thinking tokens too.
                                 "max_tokens": THINKING_TOKENS + ANSWER_TOKENS,
                                 "thinking": {"type": "enabled", "budget_tokens": 1024}}),
        _ => unreachable!("{path}"),
    }
}

const ROUTES: [&str; 5] = [
    "/api/generate",
    "/api/chat",
    "/v1/chat/completions",
    "/v1/responses",
    "/v1/messages",
];

/// The thinking and the answer of one streamed part, in the order sent.
enum Piece {
    Thinking(String),
    Answer(String),
}

impl Piece {
    fn thinking(&self) -> Option<&str> {
        match self {
            Piece::Thinking(t) => Some(t),
            Piece::Answer(_) => None,
        }
    }

    fn answer(&self) -> Option<&str> {
        match self {
            Piece::Answer(a) => Some(a),
            Piece::Thinking(_) => None,
        }
    }
}

/// The thinking and answer pieces a client got, in order, from a streamed
/// body; for a whole body, the one thinking and the one answer.
fn pieces(path: &str, stream: bool, body: &str) -> Vec<Piece> {
    let mut out = Vec::new();
    let mut push = |t: Option<&str>, a: Option<&str>| {
        if let Some(t) = t.filter(|t| !t.is_empty()) {
            out.push(Piece::Thinking(t.to_owned()));
        }
        if let Some(a) = a.filter(|a| !a.is_empty()) {
            out.push(Piece::Answer(a.to_owned()));
        }
    };
    let s = |v: &Value, p: &str| v.pointer(p).and_then(Value::as_str).map(str::to_owned);
    match (path, stream) {
        ("/api/generate", true) => {
            for v in ndjson(body.as_bytes()) {
                push(s(&v, "/thinking").as_deref(), s(&v, "/response").as_deref());
            }
        }
        ("/api/chat", true) => {
            for v in ndjson(body.as_bytes()) {
                push(
                    s(&v, "/message/thinking").as_deref(),
                    s(&v, "/message/content").as_deref(),
                );
            }
        }
        ("/v1/chat/completions", true) => {
            for v in sse_json(body) {
                push(
                    s(&v, "/choices/0/delta/reasoning").as_deref(),
                    s(&v, "/choices/0/delta/content").as_deref(),
                );
            }
        }
        ("/v1/responses", true) => {
            for (name, v) in events(body) {
                match name.as_str() {
                    "response.reasoning_summary_text.delta" => {
                        push(s(&v, "/delta").as_deref(), None)
                    }
                    "response.output_text.delta" => push(None, s(&v, "/delta").as_deref()),
                    _ => {}
                }
            }
        }
        ("/v1/messages", true) => {
            for (name, v) in events(body) {
                if name == "content_block_delta" {
                    push(
                        s(&v, "/delta/thinking").as_deref(),
                        s(&v, "/delta/text").as_deref(),
                    );
                }
            }
        }
        (_, false) => {
            let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
            let (t, a) = match path {
                "/api/generate" => (s(&v, "/thinking"), s(&v, "/response")),
                "/api/chat" => (s(&v, "/message/thinking"), s(&v, "/message/content")),
                "/v1/chat/completions" => (
                    s(&v, "/choices/0/message/reasoning"),
                    s(&v, "/choices/0/message/content"),
                ),
                // ToResponse: the reasoning item, then the message.
                "/v1/responses" => (
                    s(&v, "/output/0/summary/0/text"),
                    s(&v, "/output/1/content/0/text"),
                ),
                // ToMessagesResponse: the thinking block, then the text.
                "/v1/messages" => (s(&v, "/content/0/thinking"), s(&v, "/content/1/text")),
                _ => unreachable!(),
            };
            push(t.as_deref(), a.as_deref());
        }
        _ => unreachable!(),
    }
    out
}

/// The checks every route shares: the phrase (or either half of it) is
/// nowhere in the body; the thinking the client got, joined, is the
/// emulator's with the phrase redacted; the answer is intact; all the
/// thinking comes before the answer.
fn check_route(path: &str, stream: bool, body: &str) {
    let what = format!("{path} stream={stream}");
    assert!(
        !body.contains("Rayleigh") && !body.contains("scattering"),
        "{what}: the phrase leaked: {body}"
    );
    check_pieces(path, stream, body, &redacted_thinking(), &answer());
}

/// The thinking the client got, joined, is `thinking`, the answer is
/// `answer`, all the thinking comes before the answer and, streamed, the
/// thinking still comes in pieces.
fn check_pieces(path: &str, stream: bool, body: &str, thinking: &str, answer: &str) {
    let what = format!("{path} stream={stream}");
    let got = pieces(path, stream, body);
    let thinking_got: String = got.iter().filter_map(Piece::thinking).collect();
    let answer_got: String = got.iter().filter_map(Piece::answer).collect();
    assert_eq!(
        thinking_got, thinking,
        "{what}: the thinking, nothing lost or repeated: {body}"
    );
    assert_eq!(answer_got, answer, "{what}: the answer intact: {body}");
    let first_answer = got.iter().position(|p| matches!(p, Piece::Answer(_)));
    let last_thinking = got.iter().rposition(|p| matches!(p, Piece::Thinking(_)));
    if first_answer.is_some() {
        assert!(
            last_thinking < first_answer,
            "{what}: all thinking before the answer: {body}"
        );
    }
    if stream {
        assert!(
            got.iter()
                .filter(|p| matches!(p, Piece::Thinking(_)))
                .count()
                > 1,
            "{what}: the thinking still streams in pieces: {body}"
        );
    }
}

async fn post_ok(stack: &Stack, path: &str, body: &Value) -> String {
    stack.post_ok_as(path, "thinking-test", body).await
}

#[tokio::test]
async fn the_emulator_splits_the_phrase_across_two_thinking_chunks() {
    // Without the proxy: the phrase is there, split, so the tests below
    // test something.
    let stack = stack().await;
    let resp = stack
        .client
        .post(stack.direct("/api/generate"))
        .json(&request("/api/generate", true))
        .send()
        .await
        .unwrap();
    let body = resp.text().await.unwrap();
    let lines = ndjson(body.as_bytes());
    let parts: Vec<&str> = lines
        .iter()
        .filter_map(|v| v["thinking"].as_str())
        .collect();
    assert_eq!(parts.concat(), thinking());
    assert!(thinking().contains(PHRASE));
    assert!(
        parts.iter().all(|p| !p.contains(PHRASE)),
        "no single chunk holds the phrase: {parts:?}"
    );
    stack.shutdown().await;
}

/// Every route, streamed or not, through output-guard: `check_route`.
async fn check_every_route(stream: bool) {
    let stack = stack().await;
    for path in ROUTES {
        let body = post_ok(&stack, path, &request(path, stream)).await;
        check_route(path, stream, &body);
    }
    stack.shutdown().await;
}

#[tokio::test]
async fn thinking_is_redacted_on_every_route_streamed() {
    check_every_route(true).await;
}

#[tokio::test]
async fn thinking_is_redacted_on_every_route_whole() {
    check_every_route(false).await;
}

#[tokio::test]
async fn every_copy_of_the_responses_reasoning_is_redacted() {
    // /v1/responses repeats the thinking: in reasoning_summary_text.done,
    // in the reasoning item of output_item.done (summary and
    // encrypted_content, which Ollama fills with the plain thinking) and in
    // response.completed. Every copy says what the deltas said.
    let stack = stack().await;
    let body = post_ok(&stack, "/v1/responses", &request("/v1/responses", true)).await;
    let ev = events(&body);
    let want = redacted_thinking();
    let done = named(&ev, "response.reasoning_summary_text.done");
    assert_eq!(done.len(), 1, "{body}");
    assert_eq!(done[0]["text"], want, "{body}");
    let items: Vec<&Value> = ev
        .iter()
        .filter(|(n, v)| n == "response.output_item.done" && v["item"]["type"] == "reasoning")
        .map(|(_, v)| &v["item"])
        .collect();
    assert_eq!(items.len(), 1, "{body}");
    assert_eq!(items[0]["summary"][0]["text"], want, "{body}");
    assert_eq!(items[0]["encrypted_content"], want, "{body}");
    let completed = &ev.last().expect("events").1;
    assert_eq!(ev.last().unwrap().0, "response.completed", "{body}");
    let output = &completed["response"]["output"];
    assert_eq!(output[0]["type"], "reasoning", "{body}");
    assert_eq!(output[0]["summary"][0]["text"], want, "{body}");
    assert_eq!(output[0]["encrypted_content"], want, "{body}");
    assert_eq!(output[1]["content"][0]["text"], answer(), "{body}");
    // The answer's copies are intact too.
    let text_done = named(&ev, "response.output_text.done");
    assert_eq!(text_done[0]["text"], answer(), "{body}");
    // The sequence numbers still count up by one from 0.
    let numbers = sequence_numbers(&ev);
    assert_eq!(numbers, (0..ev.len() as u64).collect::<Vec<_>>(), "{body}");

    // The whole body: the reasoning item's encrypted_content too.
    let body = post_ok(&stack, "/v1/responses", &request("/v1/responses", false)).await;
    assert!(!body.contains("Rayleigh"), "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["output"][0]["encrypted_content"], want, "{body}");
    stack.shutdown().await;
}

#[tokio::test]
async fn a_model_that_cannot_think_gets_ollamas_error_through_the_proxy() {
    let stack = stack().await;
    let refusal = r#""gemma3:4b" does not support thinking"#;
    let refused = async |path: &str, body: Value| {
        let resp = stack.post(path, &body).await;
        assert_eq!(resp.status(), 400);
        resp.json::<Value>().await.unwrap()
    };
    let v = refused(
        "/api/generate",
        json!({"model": "gemma3:4b", "prompt": "Hi", "think": true}),
    )
    .await;
    assert_eq!(v, json!({"error": refusal}));
    let v = refused(
        "/api/chat",
        json!({"model": "gemma3:4b", "messages": user(), "think": "high"}),
    )
    .await;
    assert_eq!(v, json!({"error": refusal}));
    let v = refused(
        "/v1/chat/completions",
        json!({"model": "gemma3:4b", "messages": user(), "reasoning_effort": "low"}),
    )
    .await;
    assert_eq!(v["error"]["message"], refusal);
    assert_eq!(v["error"]["type"], "invalid_request_error");
    stack.shutdown().await;
}

#[tokio::test]
async fn thinking_held_for_a_possible_match_is_released_where_the_thinking_ends() {
    // The pattern starts at the thinking's last words and would go on into
    // the answer: thinking and answer are two texts, so it matches neither,
    // and the held "explains it." goes out whole, before the answer.
    let stack = guarded_stack("explains it\\. The sky").await;
    for stream in [true, false] {
        for path in ROUTES {
            let body = post_ok(&stack, path, &request(path, stream)).await;
            assert!(!body.contains("[REDACTED]"), "{path}: {body}");
            check_pieces(path, stream, &body, &thinking(), &answer());
        }
    }
    stack.shutdown().await;
}

#[tokio::test]
async fn a_limit_that_stops_the_model_mid_thought_loses_no_held_thinking() {
    // Ten tokens: the thinking stops at "… Rayleigh ", which could start
    // the pattern and is held; the answer ends there, and it goes out.
    let stack = stack().await;
    for stream in [true, false] {
        for path in ROUTES {
            let mut req = request(path, stream);
            match path {
                "/api/generate" | "/api/chat" => req["options"] = json!({"num_predict": 10}),
                "/v1/responses" => req["max_output_tokens"] = json!(10),
                _ => req["max_tokens"] = json!(10),
            }
            let body = post_ok(&stack, path, &req).await;
            assert!(thinking_text(10).ends_with("Rayleigh "));
            check_pieces(path, stream, &body, &thinking_text(10), "");
        }
    }
    stack.shutdown().await;
}

//! What a redaction takes with it, end to end: `output-guard` (built by
//! scripts/build-plugins) in front of the Ollama emulator.
//!
//! Two fields of Ollama's answers describe the text it generated token by
//! token, and the plugins cannot see them: `context` on /api/generate's
//! final chunk (the token ids of prompt + answer) and `logprobs` (each
//! token's text, with `top_logprobs` alternatives). Left as Ollama wrote
//! them, they give a redacted phrase back. The host drops `context` from an
//! answer a hook changed, and `logprobs` from each chunk (or whole body) a
//! hook changed; what nothing changed keeps both. By default output-guard
//! refuses requests for logprobs outright (Ollama may send a token's
//! logprobs ahead of its text); the tests of the host's rule set
//! `allow_logprobs = true`.
//!
//! The emulator's model answers "The sky is blue because air scatters
//! short", one word per chunk, so "blue because" spans two chunks; its
//! thinking model first thinks "… Rayleigh scattering explains it.", one
//! piece per chunk too.

mod example_plugins;
mod harness;

use example_plugins::plugin;
use harness::{Stack, ndjson, sse_json};
use ollama_emulator::{THINKING_TOKENS, thinking_token, token};
use serde_json::{Value, json};

/// A model with the thinking capability.
const THINKER: &str = "qwen3:0.6b";
/// A model without it.
const PLAIN: &str = "gemma3:4b";
/// Redacted from the answer, and from the thinking.
const ANSWER_PHRASE: &str = "blue because";
const THINKING_PHRASE: &str = "Rayleigh scattering";
/// The words of both phrases: no logprob token may hold any of them.
const PIECES: [&str; 4] = ["blue", "because", "rayleigh", "scattering"];
/// Tokens the emulator answers with (its default).
const ANSWER_TOKENS: usize = 8;

async fn stack(patterns: &[&str]) -> Stack {
    guarded(json!({"patterns": patterns, "allow_logprobs": true})).await
}

async fn guarded(config: Value) -> Stack {
    let stack = Stack::with_plugins(&[plugin("output-guard", config)]).await;
    ollama_emulator::models::write_fake_model(stack.models.path(), THINKER, 128)
        .expect("write the thinking model");
    stack
}

fn user() -> Value {
    json!([{"role": "user", "content": "Why is the sky blue?"}])
}

/// The request of each route, asking for logprobs with three alternatives
/// its own way.
fn request(path: &str, model: &str, stream: bool) -> Value {
    match path {
        "/api/generate" => {
            json!({"model": model, "prompt": "Why is the sky blue?", "stream": stream,
                                  "logprobs": true, "top_logprobs": 3})
        }
        "/api/chat" | "/v1/chat/completions" => json!({"model": model, "messages": user(),
                                  "stream": stream, "logprobs": true, "top_logprobs": 3}),
        "/v1/completions" => {
            json!({"model": model, "prompt": "Why is the sky blue?", "stream": stream, "logprobs": 3})
        }
        _ => unreachable!("{path}"),
    }
}

const ROUTES: [&str; 4] = [
    "/api/generate",
    "/api/chat",
    "/v1/chat/completions",
    "/v1/completions",
];

/// The chunks of an answer: NDJSON lines, SSE events, or the one body.
fn chunks(path: &str, stream: bool, body: &str) -> Vec<Value> {
    match (stream, path.starts_with("/api/")) {
        (false, _) => vec![serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))],
        (true, true) => ndjson(body.as_bytes()),
        (true, false) => sse_json(body),
    }
}

/// A streamed chunk's own text: its thinking when it has some, else its
/// text (the emulator sends one token of either per chunk).
fn own_text(path: &str, c: &Value) -> String {
    let s = |p: &str| c.pointer(p).and_then(Value::as_str).unwrap_or("");
    let (thinking, text) = match path {
        "/api/generate" => (s("/thinking"), s("/response")),
        "/api/chat" => (s("/message/thinking"), s("/message/content")),
        "/v1/chat/completions" => (
            s("/choices/0/delta/reasoning"),
            s("/choices/0/delta/content"),
        ),
        _ => ("", s("/choices/0/text")),
    };
    if thinking.is_empty() { text } else { thinking }.to_owned()
}

/// The chunk's `logprobs` entries, where its API puts them.
fn logprobs<'a>(path: &str, c: &'a Value) -> Option<&'a Vec<Value>> {
    let at = if path.starts_with("/api/") {
        "/logprobs"
    } else {
        "/choices/0/logprobs/content"
    };
    c.pointer(at).and_then(Value::as_array)
}

/// Every `token` named in `v`, at any depth (alternatives included).
fn all_tokens(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(o) => {
            for (k, v) in o {
                match (k.as_str(), v) {
                    ("token", Value::String(t)) => out.push(t.clone()),
                    _ => all_tokens(v, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| all_tokens(v, out)),
        _ => {}
    }
}

/// No piece of a redacted phrase anywhere in the body, logprob tokens and
/// their alternatives (some upper-cased) included.
fn assert_no_piece(what: &str, body: &str) {
    let lower = body.to_lowercase();
    for piece in PIECES {
        assert!(!lower.contains(piece), "{what}: {piece:?} leaked: {body}");
    }
}

async fn post_ok(stack: &Stack, path: &str, body: &Value) -> String {
    stack.post_ok_as(path, "side-channels-test", body).await
}

#[tokio::test]
async fn output_guard_refuses_requests_for_logprobs_in_the_clients_format() {
    let stack = guarded(json!({"patterns": [ANSWER_PHRASE]})).await;
    for path in ROUTES {
        let resp = stack.post(path, &request(path, PLAIN, false)).await;
        assert_eq!(resp.status(), 400, "{path}");
        let body: Value = resp.json().await.unwrap();
        let message = if path.starts_with("/api/") {
            body["error"].as_str()
        } else {
            body["error"]["message"].as_str()
        };
        let message = message.unwrap_or_else(|| panic!("{path}: {body}"));
        assert!(message.contains("`logprobs`"), "{path}: {message}");
    }
    // Nothing reached Ollama; a request without them is answered.
    assert_eq!(stack.stats().completed, 0);
    let plain = json!({"model": PLAIN, "prompt": "Why is the sky blue?", "stream": false});
    post_ok(&stack, "/api/generate", &plain).await;
    stack.shutdown().await;
}

#[tokio::test]
async fn the_emulator_sends_what_the_tests_below_expect_to_see_dropped() {
    // Without the proxy: the phrases are there, split across chunks, and
    // the logprobs and context name them.
    let stack = stack(&[ANSWER_PHRASE]).await;
    let answer: String = (0..ANSWER_TOKENS).map(token).collect();
    assert!(answer.contains(ANSWER_PHRASE));
    assert!((0..ANSWER_TOKENS).all(|i| !token(i).contains(ANSWER_PHRASE)));
    let resp = stack
        .client
        .post(stack.direct("/api/generate"))
        .json(&request("/api/generate", THINKER, true))
        .send()
        .await
        .unwrap();
    let body = resp.text().await.unwrap();
    let lines = ndjson(body.as_bytes());
    let mut tokens = Vec::new();
    all_tokens(&Value::Array(lines.clone()), &mut tokens);
    assert!(tokens.iter().any(|t| t.contains("blue")), "{body}");
    assert!(tokens.iter().any(|t| t.contains("Rayleigh")), "{body}");
    assert!(lines.last().unwrap()["context"].is_array(), "{body}");
    stack.shutdown().await;
}

#[tokio::test]
async fn a_redacted_generate_answer_goes_without_its_context() {
    let stack = stack(&[ANSWER_PHRASE, THINKING_PHRASE]).await;
    for stream in [true, false] {
        // The text redacted; the thinking redacted (the text untouched).
        for model in [PLAIN, THINKER] {
            let what = format!("{model} stream={stream}");
            let mut req =
                json!({"model": model, "prompt": "Why is the sky blue?", "stream": stream});
            if model == THINKER {
                // One more token than the thinking: the answer ("The ")
                // holds nothing to redact.
                req["options"] = json!({"num_predict": THINKING_TOKENS + 1});
            }
            let body = post_ok(&stack, "/api/generate", &req).await;
            assert!(body.contains("[REDACTED]"), "{what}: {body}");
            assert_no_piece(&what, &body);
            let chunks = chunks("/api/generate", stream, &body);
            let last = chunks.last().unwrap();
            assert_eq!(last["done"], true, "{what}: {body}");
            assert!(
                last.get("eval_count").is_some(),
                "{what}: the rest kept: {body}"
            );
            assert!(!body.contains("\"context\""), "{what}: {body}");
        }
    }
    stack.shutdown().await;
}

#[tokio::test]
async fn an_answer_nothing_redacted_keeps_its_context_and_logprobs() {
    // The plugin runs, and finds nothing to change.
    let stack = stack(&["zzz"]).await;
    for stream in [true, false] {
        let what = format!("stream={stream}");
        let body = post_ok(
            &stack,
            "/api/generate",
            &request("/api/generate", THINKER, stream),
        )
        .await;
        let chunks = chunks("/api/generate", stream, &body);
        let context = chunks.last().unwrap()["context"].as_array();
        assert!(context.is_some_and(|c| !c.is_empty()), "{what}: {body}");
        for path in ROUTES {
            let body = post_ok(&stack, path, &request(path, THINKER, stream)).await;
            let mut tokens = Vec::new();
            for c in self::chunks(path, stream, &body) {
                if let Some(lp) = logprobs(path, &c) {
                    tokens.extend(lp.iter().map(|e| e["token"].as_str().unwrap().to_owned()));
                }
            }
            // All of them, thinking first; none on /v1/completions, whose
            // converters drop them (openai.go `ToCompleteChunk`).
            let all: Vec<String> = (0..THINKING_TOKENS)
                .map(thinking_token)
                .chain((0..ANSWER_TOKENS).map(token))
                .map(str::to_owned)
                .collect();
            let want = if path == "/v1/completions" {
                vec![]
            } else {
                all
            };
            assert_eq!(tokens, want, "{path} {what}: {body}");
        }
    }
    stack.shutdown().await;
}

#[tokio::test]
async fn redacted_chunks_lose_their_logprobs_streamed() {
    let stack = stack(&[ANSWER_PHRASE, THINKING_PHRASE]).await;
    // What output-guard changes: the chunks of both phrases (the first
    // held, the second released redacted). The others go out as they came.
    let touched = ["blue ", "because ", "Rayleigh ", "scattering "];
    let untouched: Vec<&str> = (0..THINKING_TOKENS)
        .map(thinking_token)
        .chain((0..ANSWER_TOKENS).map(token))
        .filter(|t| !touched.contains(t))
        .collect();
    for path in ROUTES {
        let body = post_ok(&stack, path, &request(path, THINKER, true)).await;
        assert!(body.contains("[REDACTED]"), "{path}: {body}");
        assert_no_piece(path, &body);
        let mut kept = Vec::new();
        for c in chunks(path, true, &body) {
            let own = own_text(path, &c);
            match logprobs(path, &c) {
                // What a chunk keeps is its own, untouched, token.
                Some(lp) => {
                    let tokens: Vec<&str> = lp.iter().filter_map(|e| e["token"].as_str()).collect();
                    assert_eq!(tokens, [own.as_str()], "{path}: {c}");
                    kept.push(own);
                }
                // (/v1/completions never has any.)
                None if path != "/v1/completions" => {
                    assert!(!untouched.contains(&own.as_str()), "{path}: lost: {c}")
                }
                None => {}
            }
        }
        let want: Vec<&str> = if path == "/v1/completions" {
            vec![]
        } else {
            untouched.clone()
        };
        assert_eq!(kept, want, "{path}: {body}");
    }
    stack.shutdown().await;
}

#[tokio::test]
async fn a_redacted_whole_answer_loses_all_its_logprobs() {
    let stack = stack(&[ANSWER_PHRASE, THINKING_PHRASE]).await;
    for path in ROUTES {
        for model in [PLAIN, THINKER] {
            let body = post_ok(&stack, path, &request(path, model, false)).await;
            let what = format!("{path} {model}");
            assert!(body.contains("[REDACTED]"), "{what}: {body}");
            assert_no_piece(&what, &body);
            assert!(!body.contains("logprobs"), "{what}: {body}");
        }
    }
    // Only the thinking redacted: the whole answer's logprobs name the
    // thinking's tokens too, so they go all the same.
    let mut req = request("/api/chat", THINKER, false);
    req["options"] = json!({"num_predict": THINKING_TOKENS + 1});
    let body = post_ok(&stack, "/api/chat", &req).await;
    assert!(!body.contains("logprobs"), "{body}");
    assert_no_piece("/api/chat thinking only", &body);
    stack.shutdown().await;
}

#[tokio::test]
async fn the_event_apis_carry_no_token_to_drop() {
    // /v1/responses writes `logprobs: []` whatever is asked (openai/
    // responses.go), /v1/messages has no such field: nothing to take out,
    // and nothing names a token.
    let stack = stack(&[ANSWER_PHRASE]).await;
    for stream in [true, false] {
        let responses = json!({"model": PLAIN, "input": "Why is the sky blue?", "stream": stream,
                               "top_logprobs": 3});
        let body = post_ok(&stack, "/v1/responses", &responses).await;
        assert!(body.contains("[REDACTED]"), "{body}");
        assert_no_piece("/v1/responses", &body);
        assert!(body.contains(r#""logprobs":[]"#), "{body}");
        assert!(!body.contains(r#""token""#), "{body}");
        let messages = json!({"model": PLAIN, "messages": user(), "stream": stream, "max_tokens": ANSWER_TOKENS});
        let body = post_ok(&stack, "/v1/messages", &messages).await;
        assert!(body.contains("[REDACTED]"), "{body}");
        assert_no_piece("/v1/messages", &body);
        assert!(!body.contains("logprobs"), "{body}");
    }
    stack.shutdown().await;
}

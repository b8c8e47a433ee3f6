//! Response plugins end to end: kiln-proxy with the example plugins
//! `output-guard` and `token-budget` (built by scripts/build-plugins) and a
//! hand-written trapping plugin, in front of the Ollama emulator.
//!
//! The emulator's text is deterministic, one word per chunk: "The ", "sky ",
//! "is ", "blue ", "because ", "air ", … so the pattern "sky is" is always
//! split across two streamed chunks.

mod example_plugins;
mod harness;
mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use example_plugins::{plugin, spec};
use harness::{Stack, ndjson, sse_data};
use kiln_proxy::plugins::{OnError, PluginSpec};
use serde_json::{Value, json};
use support::fixtures;

async fn stack(specs: Vec<PluginSpec>) -> Stack {
    Stack::with_plugins(&specs).await
}

fn guard() -> PluginSpec {
    plugin("output-guard", json!({"patterns": ["sky is"]}))
}

fn openai_text(events: &[String]) -> String {
    events
        .iter()
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|v| {
            v.pointer("/choices/0/delta/content")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .collect()
}

/// Streams `tokens` tokens from /api/generate: the NDJSON lines, and the
/// generated text they carry.
async fn generate(stack: &Stack, tokens: u32) -> (Vec<Value>, String) {
    let body = stack
        .post(
            "/api/generate",
            &json!({"model": "gemma3:4b", "prompt": "why?", "options": {"num_predict": tokens}}),
        )
        .await
        .bytes()
        .await
        .unwrap();
    let lines = ndjson(&body);
    let text = lines
        .iter()
        .filter_map(|l| l["response"].as_str())
        .collect();
    (lines, text)
}

#[tokio::test]
async fn a_pattern_split_across_ndjson_chunks_is_redacted() {
    let stack = stack(vec![guard()]).await;
    let (lines, text) = generate(&stack, 6).await;
    assert_eq!(text, "The [REDACTED] blue because air ");
    let last = lines.last().unwrap();
    assert_eq!(last["done"], true);
    assert_eq!(last["eval_count"], 6, "the final chunk keeps its metrics");
    assert!(lines.iter().all(|l| l.get("error").is_none()), "{lines:?}");

    // One call per chunk, in /metrics: "sky " held (rewritten to ""), "is "
    // rewritten, the other five passed.
    let metrics = stack.metrics().await;
    for (outcome, n) in [("pass", 5), ("rewrite", 2), ("end", 0), ("failure", 0)] {
        let line = format!(
            "kiln_plugin_response_calls_total{{plugin=\"output-guard\",outcome=\"{outcome}\"}} {n}\n"
        );
        assert!(metrics.contains(&line), "{line} not in {metrics}");
    }
    stack.shutdown().await;
}

#[tokio::test]
async fn a_pattern_split_across_sse_events_is_redacted_and_usage_stays_hidden() {
    let stack = stack(vec![guard()]).await;
    let request = json!({"model": "gemma3:4b", "stream": true, "max_tokens": 6,
                         "messages": [{"role": "user", "content": "why?"}]});
    let resp = stack.post("/v1/chat/completions", &request).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let body = resp.text().await.unwrap();
    let events = sse_data(&body);
    assert_eq!(openai_text(&events), "The [REDACTED] blue because air ");
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    // The proxy asked Ollama for usage (for the plugins); this client did not.
    assert!(
        !body.contains("\"usage\""),
        "the usage chunk must stay hidden: {body}"
    );
    let asked = r#","stream_options":{"include_usage":true}"#.len();
    assert_eq!(
        stack.stats().last_header("content-length"),
        Some((request.to_string().len() + asked).to_string().as_str()),
        "Ollama was asked for usage"
    );
    stack.shutdown().await;
}

#[tokio::test]
async fn answers_that_do_not_stream_are_redacted_whole() {
    let stack = stack(vec![guard()]).await;
    let v: Value = stack
        .post(
            "/api/chat",
            &json!({"model": "gemma3:4b", "stream": false, "options": {"num_predict": 4},
                      "messages": [{"role": "user", "content": "why?"}]}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["message"]["content"], "The [REDACTED] blue ");
    assert_eq!(v["eval_count"], 4);

    let resp = stack
        .post(
            "/v1/chat/completions",
            &json!({"model": "gemma3:4b", "max_tokens": 4,
                      "messages": [{"role": "user", "content": "why?"}]}),
        )
        .await;
    let len: usize = resp.headers()["content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let body = resp.bytes().await.unwrap();
    assert_eq!(len, body.len(), "content-length matches the rewritten body");
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "The [REDACTED] blue "
    );
    stack.shutdown().await;
}

/// The number in "used N of B tokens" of a token-budget refusal.
async fn refused_after(stack: &Stack, path: &str, caller: &str, body: Value) -> u64 {
    let resp = stack
        .client
        .post(stack.url(path))
        .header("x-kiln-caller", caller)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429, "{caller}: the budget is spent");
    let retry: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=3600).contains(&retry), "retry-after {retry}");
    let v: Value = resp.json().await.unwrap();
    let msg = v["error"]
        .as_str()
        .or_else(|| v["error"]["message"].as_str())
        .unwrap_or_else(|| panic!("error body in the client's format: {v}"))
        .to_owned();
    let used = msg
        .split("used ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok());
    used.unwrap_or_else(|| panic!("no count in {msg:?}"))
}

#[tokio::test]
async fn token_budgets_count_ollama_and_openai_usage() {
    // A budget of 1 token: the first request of each caller runs, then its
    // usage is counted, and the refusal says how much was counted.
    let stack = stack(vec![plugin("token-budget", json!({"budget": 1}))]).await;
    let chat = |stream: bool| {
        json!({"model": "gemma3:4b", "stream": stream, "options": {"num_predict": 3},
               "messages": [{"role": "user", "content": "why is the sky blue?"}]})
    };

    // Ollama, not streamed: the usage is in the body.
    let v: Value = serde_json::from_str(
        &stack
            .post_ok_as("/api/chat", "ollama-whole", &chat(false))
            .await,
    )
    .unwrap();
    let want = v["prompt_eval_count"].as_u64().unwrap() + v["eval_count"].as_u64().unwrap();
    assert_eq!(
        refused_after(&stack, "/api/chat", "ollama-whole", chat(false)).await,
        want
    );

    // Ollama, streamed: the usage is in the final chunk.
    let body = stack
        .post_ok_as("/api/chat", "ollama-stream", &chat(true))
        .await;
    let last = ndjson(body.as_bytes()).pop().unwrap();
    let want = last["prompt_eval_count"].as_u64().unwrap() + last["eval_count"].as_u64().unwrap();
    assert_eq!(
        refused_after(&stack, "/api/chat", "ollama-stream", chat(true)).await,
        want
    );

    let openai = |stream: bool, usage: bool| {
        let mut b = json!({"model": "gemma3:4b", "stream": stream, "max_tokens": 3,
                           "messages": [{"role": "user", "content": "why is the sky blue?"}]});
        if usage {
            b["stream_options"] = json!({"include_usage": true});
        }
        b
    };
    // OpenAI, not streamed.
    let v: Value = serde_json::from_str(
        &stack
            .post_ok_as(
                "/v1/chat/completions",
                "openai-whole",
                &openai(false, false),
            )
            .await,
    )
    .unwrap();
    let want = v["usage"]["total_tokens"].as_u64().unwrap();
    assert_eq!(
        refused_after(
            &stack,
            "/v1/chat/completions",
            "openai-whole",
            openai(false, false)
        )
        .await,
        want
    );
    // OpenAI, streamed, the client asked for usage: it sees the same count.
    let body = stack
        .post_ok_as("/v1/chat/completions", "openai-stream", &openai(true, true))
        .await;
    let usage: Value = sse_data(&body)
        .iter()
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .find_map(|v| v.get("usage").cloned())
        .expect("the client asked for usage and gets it");
    let want = usage["total_tokens"].as_u64().unwrap();
    assert_eq!(
        refused_after(
            &stack,
            "/v1/chat/completions",
            "openai-stream",
            openai(true, true)
        )
        .await,
        want
    );
    stack.shutdown().await;
}

#[tokio::test]
async fn streamed_openai_usage_is_counted_even_when_the_client_did_not_ask() {
    let stack = stack(vec![plugin(
        "token-budget",
        json!({"budget": 1, "count": "completion"}),
    )])
    .await;
    let body = json!({"model": "gemma3:4b", "stream": true, "max_tokens": 5,
                      "messages": [{"role": "user", "content": "hi"}]});
    let answer = stack
        .post_ok_as("/v1/chat/completions", "quiet", &body)
        .await;
    assert!(!answer.contains("\"usage\""), "hidden: {answer}");
    assert_eq!(openai_text(&sse_data(&answer)), "The sky is blue because ");
    assert_eq!(
        refused_after(&stack, "/v1/chat/completions", "quiet", body).await,
        5,
        "the 5 generated tokens were counted from the hidden usage chunk"
    );
    stack.shutdown().await;
}

/// A response-only plugin (world `response-filter`) in WAT: passes the first
/// `pass` chunks, then traps (`unreachable`) on the next one.
fn trapping_plugin(dir: &Path, pass: u32) -> PathBuf {
    let module = fixtures::response_filter(
        "(global $calls (mut i32) (i32.const 0))",
        &format!(
            "(global.set $calls (i32.add (global.get $calls) (i32.const 1)))
    (if (i32.gt_u (global.get $calls) (i32.const {pass})) (then unreachable))
    (i32.store8 (i32.const 32) (i32.const 0))
    (i32.const 32)"
        ),
    );
    fixtures::write_bytes(dir, "trap", &module)
}

#[tokio::test]
async fn a_trapping_response_plugin_ends_the_stream_with_an_error_line() {
    let dir = tempfile::tempdir().unwrap();
    let trap = spec("trap", trapping_plugin(dir.path(), 2), Value::Null);
    let stack = stack(vec![trap]).await;

    let resp = stack
        .post(
            "/api/generate",
            &json!({"model": "gemma3:4b", "prompt": "why?", "options": {"num_predict": 6}}),
        )
        .await;
    assert_eq!(
        resp.status(),
        200,
        "the status went out with the first chunk"
    );
    let body = tokio::time::timeout(Duration::from_secs(5), resp.bytes())
        .await
        .expect("the stream ends, it does not hang")
        .expect("the stream ends cleanly, not cut");
    let lines = ndjson(&body);
    assert_eq!(lines.len(), 3, "two chunks, then the error line: {lines:?}");
    assert_eq!(lines[0]["response"], "The ");
    assert_eq!(lines[1]["response"], "sky ");
    let err = lines[2]["error"].as_str().expect("an Ollama error line");
    assert!(err.contains("plugin `trap` failed"), "{err}");

    // OpenAI clients get an SSE error event, and no [DONE].
    let body = stack
        .post(
            "/v1/chat/completions",
            &json!({"model": "gemma3:4b", "stream": true, "max_tokens": 6,
                      "messages": [{"role": "user", "content": "why?"}]}),
        )
        .await
        .text()
        .await
        .unwrap();
    let events = sse_data(&body);
    assert_eq!(events.len(), 3, "{body}");
    let err: Value = serde_json::from_str(&events[2]).unwrap();
    assert!(
        err["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("plugin `trap` failed")),
        "{err}"
    );
    assert!(!body.contains("[DONE]"));

    // Only that answer was poisoned: the proxy serves the next request.
    let resp = stack
        .client
        .get(stack.url("/api/tags"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    stack.shutdown().await;
}

#[tokio::test]
async fn a_failing_response_plugin_with_on_error_allow_is_left_out() {
    let dir = tempfile::tempdir().unwrap();
    let mut trap = spec("trap", trapping_plugin(dir.path(), 1), Value::Null);
    trap.on_error = OnError::Allow;
    let stack = stack(vec![trap, guard()]).await;
    let (lines, text) = generate(&stack, 5).await;
    assert_eq!(
        text, "The [REDACTED] blue because ",
        "the answer goes on, through the other plugin"
    );
    assert_eq!(lines.last().unwrap()["done"], true);
    stack.shutdown().await;
}

#[tokio::test]
async fn without_response_plugins_answers_pass_through_untouched() {
    // A request-only plugin chain: the response stage stays out of the way.
    let stack = stack(vec![plugin("hello", Value::Null)]).await;
    let request = json!({"model": "gemma3:4b", "stream": true, "max_tokens": 3,
                         "messages": [{"role": "user", "content": "hi"}]});
    let body = stack
        .post("/v1/chat/completions", &request)
        .await
        .text()
        .await
        .unwrap();
    assert_eq!(openai_text(&sse_data(&body)), "The sky is ");
    assert!(!body.contains("usage"));
    // The request went to Ollama as sent: not asked for usage.
    assert_eq!(
        stack.stats().last_header("content-length"),
        Some(request.to_string().len().to_string().as_str())
    );
    stack.shutdown().await;
}

#[tokio::test]
async fn hanging_up_before_the_last_chunk_still_spends_the_budget() {
    // Usage comes in the last chunk; a caller that reads part of a long
    // answer and hangs up is charged the chunks generated up to then.
    let stack = Stack::with_filter(
        |e, _| e.token_delay = Duration::from_millis(20),
        kiln_proxy::plugins::load_chain(
            &[plugin(
                "token-budget",
                json!({"budget": 5, "count": "completion"}),
            )],
            &kiln_proxy::plugins::PluginOptions {
                cache_dir: PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                    .join("../target/plugin-cache-tests"),
                ..Default::default()
            },
        )
        .expect("plugins load"),
    )
    .await;
    let body = json!({"model": "gemma3:4b", "options": {"num_predict": 200},
                      "messages": [{"role": "user", "content": "why is the sky blue?"}]});
    let mut resp = stack
        .client
        .post(stack.url("/api/chat"))
        .header("x-kiln-caller", "leaver")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut lines = 0;
    let mut seen = Vec::new();
    while lines < 9 {
        let part = resp.chunk().await.unwrap().expect("more of the answer");
        seen.extend_from_slice(&part);
        lines = seen.iter().filter(|b| **b == b'\n').count();
    }
    drop(resp);
    // The proxy notices the hang-up, cancels the generation and completes
    // the answer for the plugins; then the budget is spent.
    let cancelled =
        harness::eventually(Duration::from_secs(5), || stack.stats().cancelled >= 1).await;
    assert!(cancelled, "the generation was not cancelled");
    let mut used = 0;
    for _ in 0..50 {
        let r = stack
            .client
            .post(stack.url("/api/chat"))
            .header("x-kiln-caller", "leaver")
            .json(
                &json!({"model": "gemma3:4b", "stream": false, "options": {"num_predict": 1},
                          "messages": [{"role": "user", "content": "hi"}]}),
            )
            .send()
            .await
            .unwrap();
        if r.status() == 429 {
            let v: Value = r.json().await.unwrap();
            let msg = v["error"].as_str().unwrap().to_owned();
            used = msg
                .split("used ")
                .nth(1)
                .and_then(|r| r.split(' ').next())
                .and_then(|n| n.parse().ok())
                .unwrap();
            break;
        }
        assert_eq!(r.status(), 200);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        used >= 9,
        "charged {used} tokens for at least 9 streamed chunks"
    );
    stack.shutdown().await;
}

#[tokio::test]
async fn a_stream_labelled_json_by_the_upstream_is_still_filtered() {
    // Read whole, an NDJSON stream is no answer the codec can read, so no
    // hook would see its text: the framing follows what the client asked.
    let stream = "{\"model\":\"m\",\"message\":{\"role\":\"assistant\",\"content\":\"The sky \"},\"done\":false}\n\
                  {\"model\":\"m\",\"message\":{\"role\":\"assistant\",\"content\":\"is blue\"},\"done\":false}\n\
                  {\"model\":\"m\",\"message\":{\"role\":\"assistant\",\"content\":\"\"},\"done\":true,\"done_reason\":\"stop\",\"eval_count\":2}\n";
    for content_type in ["application/json; charset=utf-8", "text/plain"] {
        let upstream = harness::canned_upstream(content_type, stream).await;
        let stage = kiln_proxy::plugins::load_chain(
            &[guard()],
            &kiln_proxy::plugins::PluginOptions {
                cache_dir: PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                    .join("../target/plugin-cache-tests"),
                ..Default::default()
            },
        )
        .expect("plugins load");
        let proxy = kiln_proxy::start(harness::proxy_config(&upstream), stage)
            .await
            .unwrap();
        let got = harness::http_client()
            .post(format!("{}/api/chat", proxy.url()))
            .json(&json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let text: String = ndjson(got.as_bytes())
            .iter()
            .filter_map(|c| c["message"]["content"].as_str().map(str::to_owned))
            .collect();
        assert!(
            !text.contains("sky is"),
            "{content_type}: unfiltered {text:?} in {got}"
        );
        assert!(
            text.contains("blue"),
            "{content_type}: the rest of the answer is kept: {got}"
        );
        proxy.shutdown().await.unwrap();
    }
}

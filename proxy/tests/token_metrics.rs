//! `kiln_tokens_total` counts the answers of every route that generates
//! text, streamed and whole, whether the answer passes through untouched or
//! through a response plugin: both paths read the counts with the route's
//! codec.

mod example_plugins;
mod harness;

use std::sync::Arc;

use example_plugins::plugin;
use harness::{Stack, canned_upstream, http_client, proxy_config};
use serde_json::{Value, json};

const N: u64 = 5;

/// A request to every generating route that asks for `N` tokens.
fn requests(stream: bool) -> Vec<(&'static str, Value)> {
    let m = "gemma3:4b";
    vec![
        (
            "/api/generate",
            json!({"model": m, "prompt": "hi", "stream": stream, "options": {"num_predict": N}}),
        ),
        (
            "/api/chat",
            json!({"model": m, "messages": [{"role": "user", "content": "hi"}], "stream": stream, "options": {"num_predict": N}}),
        ),
        (
            // Streamed, Ollama reports usage only when asked.
            "/v1/chat/completions",
            json!({"model": m, "messages": [{"role": "user", "content": "hi"}], "stream": stream, "max_tokens": N, "stream_options": {"include_usage": true}}),
        ),
        (
            "/v1/completions",
            json!({"model": m, "prompt": "hi", "stream": stream, "max_tokens": N, "stream_options": {"include_usage": true}}),
        ),
        (
            "/v1/responses",
            json!({"model": m, "input": "hi", "stream": stream, "max_output_tokens": N}),
        ),
        (
            "/v1/messages",
            json!({"model": m, "messages": [{"role": "user", "content": "hi"}], "stream": stream, "max_tokens": N}),
        ),
    ]
}

/// The value of `kiln_tokens_total{kind="KIND"}` (0 before any count).
fn tokens(metrics: &str, kind: &str) -> u64 {
    let name = format!("kiln_tokens_total{{kind=\"{kind}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&name))
        .map_or(0, |n| n.trim().parse().unwrap())
}

/// Sends every request, and checks what each adds to the token counters.
async fn every_route_is_counted(stack: &Stack) {
    for stream in [true, false] {
        for (path, body) in requests(stream) {
            if stream && path == "/v1/completions" {
                // The emulator sends no usage chunk on these streams
                // (it ignores `stream_options` there): nothing to count.
                continue;
            }
            let before = stack.metrics().await;
            let text = stack.post_text(path, &body).await;
            let after = stack.metrics().await;
            let added = |kind| tokens(&after, kind) - tokens(&before, kind);
            assert_eq!(
                added("completion"),
                N,
                "{path} stream={stream}: completion tokens\n{text}"
            );
            assert!(
                added("prompt") > 0,
                "{path} stream={stream}: prompt tokens\n{text}"
            );
        }
    }
}

#[tokio::test]
async fn passthrough_answers_of_every_generating_route_are_counted() {
    let stack = Stack::new(|_, _| {}).await;
    every_route_is_counted(&stack).await;
    stack.shutdown().await;
}

#[tokio::test]
async fn filtered_answers_of_every_generating_route_are_counted() {
    // output-guard reads every chunk of every generating route.
    let stack =
        Stack::with_plugins(&[plugin("output-guard", json!({"patterns": ["never said"]}))]).await;
    every_route_is_counted(&stack).await;
    stack.shutdown().await;
}

#[tokio::test]
async fn answers_without_prompt_eval_count_are_counted() {
    let cases = [
        (
            "application/x-ndjson",
            "{\"model\":\"m\",\"response\":\"Hi\",\"done\":false}\n{\"model\":\"m\",\"response\":\"\",\"done\":true,\"done_reason\":\"stop\",\"eval_count\":3}\n",
        ),
        (
            "application/json; charset=utf-8",
            "{\"model\":\"m\",\"response\":\"Hi\",\"done\":true,\"done_reason\":\"stop\",\"eval_count\":3}",
        ),
    ];
    for (content_type, body) in cases {
        let upstream = canned_upstream(content_type, body).await;
        let proxy = kiln_proxy::start(
            proxy_config(&upstream),
            Arc::new(kiln_proxy::filter::NoFilters),
        )
        .await
        .unwrap();
        let client = http_client();
        let got = client
            .post(format!("{}/api/generate", proxy.url()))
            .json(&json!({"model": "m", "prompt": "hi"}))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(got, body, "passed through untouched");
        let metrics = client
            .get(format!("{}/metrics", proxy.url()))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(tokens(&metrics, "completion"), 3, "{content_type}");
        assert_eq!(tokens(&metrics, "prompt"), 0, "{content_type}");
        proxy.shutdown().await.unwrap();
    }
}

//! Forwarding through kiln-proxy to the Ollama emulator: streaming, header
//! rules, models, errors in the client's format, metrics.

mod harness;

use std::time::Duration;

use harness::{Stack, chunks, ndjson};
use serde_json::{Value, json};

fn generate(prompt: &str) -> Value {
    json!({"model": "gemma3:4b", "prompt": prompt})
}

#[tokio::test]
async fn generate_streams_ndjson_chunk_by_chunk() {
    let stack = Stack::new(|e, _| e.token_delay = Duration::from_millis(60)).await;
    let resp = stack.post("/api/generate", &json!({"model": "gemma3:4b", "prompt": "Why is the sky blue?", "options": {"num_predict": 5}})).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/x-ndjson");
    let got = chunks(resp).await;
    let body: Vec<u8> = got.iter().flat_map(|(_, c)| c.to_vec()).collect();
    let lines = ndjson(&body);
    assert_eq!(lines.len(), 6, "5 tokens and the final chunk");
    let text: String = lines
        .iter()
        .filter_map(|l| l["response"].as_str())
        .collect();
    assert_eq!(text, "The sky is blue because ");
    let last = lines.last().unwrap();
    assert_eq!(last["done"], true);
    assert_eq!(last["done_reason"], "length");
    assert_eq!(last["eval_count"], 5);
    assert!(last["total_duration"].as_u64().unwrap() > 0);
    // Unbuffered: the first token arrives long before the stream ends.
    let (first, last_at) = (got.first().unwrap().0, got.last().unwrap().0);
    assert!(
        got.len() >= 5,
        "tokens must arrive as separate chunks, got {}",
        got.len()
    );
    assert!(
        last_at - first >= Duration::from_millis(200),
        "first chunk at {first:?}, last at {last_at:?}"
    );
    stack.shutdown().await;
}

#[tokio::test]
async fn stream_false_returns_one_json_object() {
    let stack = Stack::new(|_, _| {}).await;
    let resp = stack.post("/api/chat", &json!({"model": "gemma3:4b", "stream": false, "messages": [{"role": "user", "content": "hi"}]})).await;
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["done"], true);
    assert_eq!(v["message"]["role"], "assistant");
    assert!(
        v["message"]["content"]
            .as_str()
            .unwrap()
            .starts_with("The sky is blue")
    );
    stack.shutdown().await;
}

#[tokio::test]
async fn openai_chat_streams_sse_to_done() {
    let stack = Stack::new(|_, _| {}).await;
    let resp = stack
        .post(
            "/v1/chat/completions",
            &json!({"model": "gemma3:4b", "stream": true, "stream_options": {"include_usage": true},
                      "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let body = resp.text().await.unwrap();
    let events: Vec<&str> = body.split("\n\n").filter(|e| !e.is_empty()).collect();
    assert_eq!(*events.last().unwrap(), "data: [DONE]");
    let first: Value = serde_json::from_str(events[0].strip_prefix("data: ").unwrap()).unwrap();
    assert_eq!(first["object"], "chat.completion.chunk");
    assert!(body.contains("\"usage\""));
    stack.shutdown().await;
}

#[tokio::test]
async fn upstream_sees_localhost_host_header_and_only_allowed_origins() {
    let stack = Stack::new(|_, p| p.allowed_origins = vec!["https://app.example".into()]).await;
    // Straight to the emulator, a public Host is refused as Ollama does: 403, empty body.
    let direct = stack
        .client
        .get(stack.direct("/api/tags"))
        .header("host", "kiln-abc-uc.a.run.app")
        .send()
        .await
        .unwrap();
    assert_eq!(direct.status(), 403);
    assert!(direct.bytes().await.unwrap().is_empty());

    let resp = stack
        .client
        .post(stack.url("/api/generate"))
        .header("host", "kiln-abc-uc.a.run.app")
        .header("x-request-id", "trace-me-1")
        .header("connection", "keep-alive, x-hop")
        .header("x-hop", "secret")
        .json(&generate("hi"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-request-id"], "trace-me-1");
    resp.bytes().await.unwrap();
    let seen = stack.stats();
    assert_eq!(
        seen.last_header("host"),
        Some(stack.emulator.addr().to_string().as_str())
    );
    assert_eq!(seen.last_header("origin"), None);
    assert_eq!(
        seen.last_header("x-hop"),
        None,
        "headers named by Connection are hop-by-hop"
    );
    assert_eq!(seen.last_header("x-request-id"), Some("trace-me-1"));

    let resp = stack
        .client
        .get(stack.url("/api/tags"))
        .header("origin", "https://app.example")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let made = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(
        made.len(),
        32,
        "a request ID is created when the client sends none"
    );
    assert_eq!(
        stack.stats().last_header("origin"),
        Some("https://app.example")
    );
    assert_eq!(
        stack.stats().last_header("x-request-id"),
        Some(made.as_str())
    );
    stack.shutdown().await;
}

#[tokio::test]
async fn tags_ps_and_models_come_from_the_models_dir() {
    let stack = Stack::new(|_, _| {}).await;
    let tags: Value = stack.get("/api/tags").await.json().await.unwrap();
    let names: Vec<&str> = tags["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["gemma3:1b", "gemma3:4b"]);
    assert_eq!(tags["models"][1]["details"]["family"], "gemma3");

    let ps: Value = stack.get("/api/ps").await.json().await.unwrap();
    assert_eq!(ps["models"], json!([]), "nothing loaded yet");
    let load: Value = stack
        .post(
            "/api/generate",
            &json!({"model": "gemma3:4b", "keep_alive": -1}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(load["done_reason"], "load");
    let ps: Value = stack.get("/api/ps").await.json().await.unwrap();
    assert_eq!(ps["models"][0]["name"], "gemma3:4b");

    let models: Value = stack.get("/v1/models").await.json().await.unwrap();
    assert_eq!(models["data"].as_array().unwrap().len(), 2);

    let missing = stack
        .post(
            "/api/generate",
            &json!({"model": "gemma3:27b", "prompt": "x"}),
        )
        .await;
    assert_eq!(missing.status(), 404);
    assert_eq!(
        missing.json::<Value>().await.unwrap(),
        json!({"error": "model 'gemma3:27b' not found"})
    );
    stack.shutdown().await;
}

#[tokio::test]
async fn bad_requests_are_refused_in_the_clients_format() {
    let stack = Stack::new(|_, p| p.limits.max_body_bytes = 1024).await;
    let c = &stack.client;
    let before = stack.stats().requests;

    let r = c
        .post(stack.url("/api/generate"))
        .body("{\"model\":")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert!(
        v["error"].as_str().unwrap().contains("not valid JSON"),
        "{v}"
    );

    let r = c
        .post(stack.url("/v1/chat/completions"))
        .body("not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not valid JSON")
    );

    let r = c
        .post(stack.url("/api/chat"))
        .json(&json!({"messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"error": "model is required"})
    );

    // Ollama reads keys without regard to case (the last `model` wins):
    // the proxy saw gemma3, Ollama would run `other`.
    for path in ["/api/chat", "/v1/chat/completions"] {
        let r = c
            .post(stack.url(path))
            .json(&json!({"model": "gemma3:4b", "MODEL": "other", "messages": []}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{path}");
        let v: Value = r.json().await.unwrap();
        let message = v["error"]
            .as_str()
            .or(v["error"]["message"].as_str())
            .unwrap_or_else(|| panic!("{path}: {v}"));
        assert!(message.contains("`MODEL`"), "{path}: {message}");
    }

    let r = c.get(stack.url("/api/generate")).send().await.unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["allow"], "POST");
    assert!(
        r.json::<Value>().await.unwrap()["error"]
            .as_str()
            .unwrap()
            .contains("not allowed")
    );

    let r = c.get(stack.url("/admin/secrets")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert!(r.json::<Value>().await.unwrap()["error"].is_string());

    let big = json!({"model": "gemma3:4b", "prompt": "x".repeat(2000)});
    let r = c
        .post(stack.url("/api/generate"))
        .json(&big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert!(
        r.json::<Value>().await.unwrap()["error"]
            .as_str()
            .unwrap()
            .contains("max_body_bytes")
    );

    // Without Content-Length (chunked), the limit holds while reading.
    let stream =
        futures_util::stream::iter((0..20).map(|_| Ok::<_, std::io::Error>(vec![b' '; 100])));
    let r = c
        .post(stack.url("/v1/chat/completions"))
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["type"],
        "invalid_request_error"
    );

    assert_eq!(
        stack.stats().requests,
        before,
        "none of these reached Ollama"
    );
    stack.shutdown().await;
}

#[tokio::test]
async fn metrics_count_requests_tokens_and_rejections() {
    let stack = Stack::new(|_, _| {}).await;
    let c = &stack.client;
    let r = c
        .post(stack.url("/api/generate"))
        .json(&json!({"model": "gemma3:4b", "prompt": "hi", "options": {"num_predict": 7}}))
        .send()
        .await
        .unwrap();
    r.bytes().await.unwrap();
    c.post(stack.url("/api/generate"))
        .body("{")
        .send()
        .await
        .unwrap();
    let text = c
        .get(stack.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("kiln_requests_total{route=\"generate\",status=\"200\"} 1"),
        "{text}"
    );
    assert!(text.contains("kiln_requests_total{route=\"generate\",status=\"400\"} 1"));
    assert!(
        text.contains(
            "kiln_tokens_total{route=\"generate\",model=\"gemma3:4b\",kind=\"completion\"} 7"
        ),
        "{text}"
    );
    assert!(text.contains("kiln_rejections_total{reason=\"bad_request\"} 1"));
    assert!(text.contains("kiln_time_to_first_byte_seconds_count{route=\"generate\"} 1"));
    assert!(text.contains("kiln_queue_depth 0"));
    stack.shutdown().await;
}

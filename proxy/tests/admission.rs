//! Admission control and cancellation through the proxy: Ollama never sees
//! more than `max_in_flight` requests, the queue is bounded and answered with
//! 429 in the client's format, and a client that leaves frees its slot.

mod harness;

use std::time::Duration;

use harness::{Stack, eventually};
use serde_json::{Value, json};

fn slow_generate() -> Value {
    json!({"model": "gemma3:4b", "prompt": "tell me a long story", "options": {"num_predict": 10}})
}

#[tokio::test]
async fn queue_full_is_429_with_retry_after_in_the_clients_format() {
    let stack = Stack::new(|e, p| {
        e.token_delay = Duration::from_millis(50);
        p.limits.max_in_flight = 1;
        p.limits.max_queue = 1;
    })
    .await;
    // One running, one queued: both will finish.
    let mut running = Vec::new();
    for _ in 0..2 {
        let req = stack
            .client
            .post(stack.url("/api/generate"))
            .json(&slow_generate())
            .send();
        running.push(tokio::spawn(req));
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let proxy = stack.proxy().state();
    assert!(eventually(Duration::from_secs(2), || proxy.admission.queued() == 1).await);

    let r = stack.post("/api/generate", &slow_generate()).await;
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "1");
    let v: Value = r.json().await.unwrap();
    assert!(v["error"].as_str().unwrap().contains("server busy"), "{v}");

    let r = stack
        .post(
            "/v1/chat/completions",
            &json!({"model": "gemma3:4b", "messages": [{"role": "user", "content": "x"}]}),
        )
        .await;
    assert_eq!(r.status(), 429);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "rate_limit_error", "{v}");
    assert_eq!(v["error"]["code"], "rate_limit_exceeded");

    // Non-inference routes are never queued.
    let r = stack.get("/api/tags").await;
    assert_eq!(r.status(), 200);

    for r in running {
        let resp = r.await.unwrap().unwrap();
        assert_eq!(resp.status(), 200);
        let body = resp.bytes().await.unwrap();
        assert!(body.ends_with(b"}\n") && !body.windows(7).any(|w| w == b"\"error\""));
    }
    let metrics = stack.metrics().await;
    assert!(
        metrics.contains("kiln_rejections_total{reason=\"queue_full\"} 2"),
        "{metrics}"
    );
    assert_eq!(stack.stats().max_in_flight, 1);
    stack.shutdown().await;
}

#[tokio::test]
async fn ollama_never_sees_more_than_max_in_flight() {
    let stack = Stack::new(|e, p| {
        e.num_parallel = 8;
        e.token_delay = Duration::from_millis(5);
        p.limits.max_in_flight = 2;
        p.limits.max_queue = 16;
    })
    .await;
    let reqs: Vec<_> = (0..8)
        .map(|_| {
            let req = stack
                .client
                .post(stack.url("/api/generate"))
                .json(&slow_generate())
                .send();
            tokio::spawn(async move { req.await.unwrap().bytes().await.unwrap() })
        })
        .collect();
    for r in reqs {
        let body = r.await.unwrap();
        assert!(harness::ndjson(&body).last().unwrap()["done"] == true);
    }
    let s = stack.stats();
    assert_eq!(s.completed, 8);
    assert_eq!(s.max_in_flight, 2, "the proxy holds the queue, not Ollama");
    assert_eq!(s.max_waiting, 0, "nothing waited inside Ollama");
    let text = stack.metrics().await;
    assert!(text.contains("kiln_queue_wait_seconds_count 8"), "{text}");
    stack.shutdown().await;
}

#[tokio::test]
async fn client_disconnect_cancels_upstream_and_frees_the_slot() {
    let stack = Stack::new(|e, p| {
        e.token_delay = Duration::from_millis(50);
        p.limits.max_in_flight = 1;
        p.limits.max_queue = 0;
    })
    .await;
    let long = json!({"model": "gemma3:4b", "prompt": "x", "options": {"num_predict": 1000}});
    let mut resp = stack.post("/api/generate", &long).await;
    let first = resp.chunk().await.unwrap().unwrap();
    assert!(first.starts_with(b"{"));
    assert_eq!(stack.proxy().state().admission.in_flight(), 1);
    drop(resp);

    assert!(
        eventually(Duration::from_secs(2), || stack.stats().cancelled == 1).await,
        "Ollama must see the cancellation: {:?}",
        stack.stats()
    );
    let proxy = stack.proxy().state();
    assert!(eventually(Duration::from_secs(1), || proxy.admission.in_flight() == 0).await);
    assert_eq!(stack.stats().in_flight, 0, "the GPU slot is free");
    // With max_queue = 0, this is admitted only if the slot really was released.
    let r = stack.post("/api/generate", &slow_generate()).await;
    assert_eq!(r.status(), 200);
    r.bytes().await.unwrap();
    let text = stack.metrics().await;
    assert!(text.contains("kiln_client_disconnects_total 1"), "{text}");
    stack.shutdown().await;
}

#[tokio::test]
async fn disconnect_before_the_first_token_cancels_too() {
    // Ollama sends no headers until the first token: a client that gives up
    // while the model loads must still cancel the upstream request.
    let stack = Stack::new(|e, p| {
        e.load_delay = Duration::from_millis(400);
        p.limits.max_in_flight = 1;
        p.limits.max_queue = 1;
    })
    .await;
    let req = stack
        .client
        .post(stack.url("/api/generate"))
        .json(&slow_generate())
        .send();
    let r = tokio::time::timeout(Duration::from_millis(150), req).await;
    assert!(r.is_err(), "no answer while the model loads");
    assert!(
        eventually(Duration::from_secs(2), || stack.stats().cancelled == 1).await,
        "{:?}",
        stack.stats()
    );
    let proxy = stack.proxy().state();
    assert!(eventually(Duration::from_secs(1), || proxy.admission.in_flight() == 0).await);
    stack.shutdown().await;
}

#[tokio::test]
async fn a_client_leaving_the_queue_frees_its_place() {
    let stack = Stack::new(|e, p| {
        e.token_delay = Duration::from_millis(40);
        p.limits.max_in_flight = 1;
        p.limits.max_queue = 1;
    })
    .await;
    let running = tokio::spawn(
        stack
            .client
            .post(stack.url("/api/generate"))
            .json(&slow_generate())
            .send(),
    );
    let proxy = stack.proxy().state().clone();
    assert!(eventually(Duration::from_secs(1), || proxy.admission.in_flight() == 1).await);
    let queued = stack
        .client
        .post(stack.url("/api/generate"))
        .json(&slow_generate())
        .send();
    assert!(
        tokio::time::timeout(Duration::from_millis(100), queued)
            .await
            .is_err()
    );
    assert!(eventually(Duration::from_secs(1), || proxy.admission.queued() == 0).await);
    // The place is free again: this one queues instead of getting 429.
    let r = stack.post("/api/generate", &slow_generate()).await;
    assert_eq!(r.status(), 200);
    r.bytes().await.unwrap();
    running.await.unwrap().unwrap().bytes().await.unwrap();
    stack.shutdown().await;
}

//! The emulator behaves like Ollama on the wire where kiln depends on it.

mod common;

use std::time::Duration;

use common::client;
use ollama_emulator::{Config, Emulator};
use serde_json::{Value, json};

/// An emulator with gemma3:4b, 20 ms per token, the rest as `tune` sets it.
async fn start(tune: impl FnOnce(&mut Config)) -> (Emulator, tempfile::TempDir) {
    common::start_with(&["gemma3:4b"], |c| {
        c.token_delay = Duration::from_millis(20);
        tune(c);
    })
    .await
}

/// GETs `path` from the emulator and parses the JSON answer.
async fn get_json(client: &reqwest::Client, emu: &Emulator, path: &str) -> Value {
    let r = client.get(format!("{}{path}", emu.url())).send();
    r.await.unwrap().json().await.unwrap()
}

/// POSTs `body` to the emulator and parses the JSON answer.
async fn post_json(client: &reqwest::Client, emu: &Emulator, path: &str, body: Value) -> Value {
    let r = client
        .post(format!("{}{path}", emu.url()))
        .json(&body)
        .send();
    r.await.unwrap().json().await.unwrap()
}

#[tokio::test]
async fn requests_beyond_the_parallel_slots_wait_without_bound() {
    let (emu, _dir) = start(|c| c.num_parallel = 1).await;
    let client = client();
    let reqs: Vec<_> = (0..4)
        .map(|_| {
            let r = client
                .post(format!("{}/api/generate", emu.url()))
                .json(&json!({"model": "gemma3:4b", "prompt": "x", "stream": false, "options": {"num_predict": 2}}))
                .send();
            tokio::spawn(async move { r.await.unwrap().status() })
        })
        .collect();
    for r in reqs {
        assert_eq!(r.await.unwrap(), 200, "nobody is refused");
    }
    let s = emu.stats().snapshot();
    assert_eq!((s.max_in_flight, s.max_waiting, s.completed), (1, 3, 4));
}

#[tokio::test]
async fn a_dropped_stream_counts_as_cancelled_and_frees_the_slot() {
    let (emu, _dir) = start(|_| {}).await;
    let client = client();
    let mut r = client
        .post(format!("{}/api/chat", emu.url()))
        .json(&json!({"model": "gemma3:4b", "messages": [{"role": "user", "content": "x"}], "options": {"num_predict": 500}}))
        .send()
        .await
        .unwrap();
    r.chunk().await.unwrap().unwrap();
    drop(r);
    let end = tokio::time::Instant::now() + Duration::from_secs(2);
    while emu.stats().snapshot().cancelled == 0 && tokio::time::Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let s = emu.stats().snapshot();
    assert_eq!((s.cancelled, s.in_flight), (1, 0), "{s:?}");
}

#[tokio::test]
async fn errors_look_like_gin_and_ollama() {
    let (emu, _dir) = start(|_| {}).await;
    let client = client();
    let url = |path: &str| format!("{}{path}", emu.url());
    let r = client.get(url("/nope")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.text().await.unwrap(), "404 page not found");
    let r = client.get(url("/api/chat")).send().await.unwrap();
    assert_eq!(r.status(), 405);
    let r = client.post(url("/api/generate")).send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"error": "missing request body"})
    );
    let body = json!({"model": "other:1b", "input": "x"});
    let r = client.post(url("/v1/embeddings")).json(&body).send();
    let r = r.await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["type"],
        "not_found_error"
    );
}

#[tokio::test]
async fn preload_pins_and_keep_alive_zero_unloads() {
    let (emu, _dir) = start(|_| {}).await;
    let client = client();
    let generate = |body: Value| post_json(&client, &emu, "/api/generate", body);
    let v = generate(json!({"model": "gemma3:4b", "keep_alive": -1})).await;
    assert_eq!(v["done_reason"], "load");
    let ps = get_json(&client, &emu, "/api/ps").await;
    assert_eq!(ps["models"][0]["name"], "gemma3:4b");
    let v = generate(json!({"model": "gemma3:4b", "keep_alive": 0})).await;
    assert_eq!(v["done_reason"], "unload");
    let ps = get_json(&client, &emu, "/api/ps").await;
    assert_eq!(ps["models"], json!([]));
    let body = json!({"model": "gemma3:4b", "input": ["a", "b"]});
    let e = post_json(&client, &emu, "/api/embed", body).await;
    assert_eq!(e["embeddings"].as_array().unwrap().len(), 2);
}

/// routes.go EmbedHandler: vectors are unit length, and `dimensions` cuts
/// them (normalized again).
#[tokio::test]
async fn embeddings_are_normalized_and_cut_to_dimensions() {
    let (emu, _dir) = start(|_| {}).await;
    let client = client();
    let norm = |v: &Value| {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap().powi(2))
            .sum::<f64>()
    };
    let body = json!({"model": "gemma3:4b", "input": "hello"});
    let e = post_json(&client, &emu, "/api/embed", body).await;
    assert_eq!(e["embeddings"][0].as_array().unwrap().len(), 8);
    assert!((norm(&e["embeddings"][0]) - 1.0).abs() < 1e-4);
    let body = json!({"model": "gemma3:4b", "input": "hello", "dimensions": 3});
    let e = post_json(&client, &emu, "/api/embed", body).await;
    assert_eq!(e["embeddings"][0].as_array().unwrap().len(), 3);
    assert!((norm(&e["embeddings"][0]) - 1.0).abs() < 1e-4);
}

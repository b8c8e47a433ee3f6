//! Helpers the emulator's wire tests share: an emulator on a temporary
//! models directory, a POST that keeps status, content type and body, and
//! the parsing of typed SSE bodies (`event: NAME\ndata: JSON\n\n`).

#![allow(dead_code)]

use std::time::Duration;

use ollama_emulator::{Config, Emulator};
use serde_json::Value;

/// reqwest may be built with rustls and no crypto provider (workspace
/// feature unification): install ring before making a client.
pub fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

/// An emulator whose models directory holds `models`, 1 ms per token, the
/// rest of its config as `tune` leaves it.
pub async fn start_with(
    models: &[&str],
    tune: impl FnOnce(&mut Config),
) -> (Emulator, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    for model in models {
        ollama_emulator::models::write_fake_model(dir.path(), model, 64).unwrap();
    }
    let mut c = Config {
        models_dir: Some(dir.path().into()),
        token_delay: Duration::from_millis(1),
        ..Default::default()
    };
    tune(&mut c);
    (Emulator::start(c).await.unwrap(), dir)
}

/// POSTs and returns status, content type and body.
pub async fn post(emu: &Emulator, path: &str, body: Value) -> (u16, String, String) {
    post_with_headers(emu, path, &[], body).await
}

/// POSTs with extra request headers; returns status, content type and body.
pub async fn post_with_headers(
    emu: &Emulator,
    path: &str,
    headers: &[(&str, &str)],
    body: Value,
) -> (u16, String, String) {
    let mut r = client().post(format!("{}{path}", emu.url())).json(&body);
    for (n, v) in headers {
        r = r.header(*n, *v);
    }
    let r = r.send().await.unwrap();
    let ct = r
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (r.status().as_u16(), ct, r.text().await.unwrap())
}

/// Name and data of each event of a typed SSE body.
pub fn events(body: &str) -> Vec<(String, Value)> {
    body.split_terminator("\n\n")
        .map(|e| {
            let (name, data) = e.split_once('\n').unwrap();
            let name = name.strip_prefix("event: ").expect("an event line first");
            let data: Value = serde_json::from_str(data.strip_prefix("data: ").unwrap()).unwrap();
            (name.to_owned(), data)
        })
        .collect()
}

/// The events' names, in order.
pub fn names(ev: &[(String, Value)]) -> Vec<&str> {
    ev.iter().map(|(n, _)| n.as_str()).collect()
}

/// The `delta` strings of the events named `name`, joined.
pub fn deltas(ev: &[(String, Value)], name: &str) -> String {
    ev.iter()
        .filter(|(n, _)| n == name)
        .map(|(_, d)| d["delta"].as_str().unwrap())
        .collect()
}

/// POSTs and parses the JSON answer, whatever the status.
pub async fn post_json(emu: &Emulator, path: &str, body: Value) -> Value {
    let (_, _, text) = post(emu, path, body).await;
    serde_json::from_str(&text).unwrap()
}

/// The lines of an NDJSON body, parsed.
pub fn lines(body: &str) -> Vec<Value> {
    body.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The data of each `data:` line of an SSE body (`[DONE]` left out).
pub fn sse_data(body: &str) -> Vec<Value> {
    body.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect()
}

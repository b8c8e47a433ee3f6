//! Draining on shutdown: streams in flight get `shutdown_grace_s` to finish,
//! then they are cut and Ollama is told to stop generating.

mod harness;

use std::time::{Duration, Instant};

use harness::{Stack, eventually};
use serde_json::json;

#[tokio::test]
async fn streams_longer_than_the_grace_period_are_cut_and_cancelled() {
    let stack = Stack::new(|e, p| {
        e.token_delay = Duration::from_millis(50);
        p.limits.shutdown_grace_s = 1;
    })
    .await;
    let long = json!({"model": "gemma3:4b", "prompt": "x", "options": {"num_predict": 200}});
    let mut resp = stack.post("/api/generate", &long).await;
    resp.chunk().await.unwrap().unwrap();

    let Stack {
        emulator,
        proxy,
        models,
        client: _,
    } = stack;
    let started = Instant::now();
    let shutdown = tokio::spawn(proxy.unwrap().shutdown());
    // The stream keeps flowing during the grace period, then ends short of its 200 tokens.
    let mut got = 1;
    let end = loop {
        match resp.chunk().await {
            Ok(Some(_)) => got += 1,
            Ok(None) => break "ended",
            Err(_) => break "cut",
        }
    };
    assert!(
        got > 5,
        "the stream went on during the grace period ({got} chunks)"
    );
    assert!(got < 100, "the stream was not cut ({got} chunks, {end})");
    shutdown.await.unwrap().expect("shutdown");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "{took:?}"
    );
    assert!(
        eventually(Duration::from_secs(2), || emulator
            .stats()
            .snapshot()
            .cancelled
            == 1)
        .await,
        "Ollama must stop generating for the cut stream"
    );
    drop(models);
}

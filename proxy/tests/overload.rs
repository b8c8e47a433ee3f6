//! Under overload, the proxy with the quickstart's policy plugins slows
//! down and sheds load with 429; it never fails a request that a quiet
//! machine would have served (a plugin's budget is CPU time, so waiting
//! for a core does not count against it).

mod example_plugins;
mod harness;

use std::sync::Arc;
use std::time::Duration;

use example_plugins::plugin;
use harness::Stack;
use kiln_proxy::plugins::{PluginOptions, load_chain};
use serde_json::json;
use sha2::{Digest, Sha256};

const KEY: &str = "overload-test-key";
const CLIENTS: usize = 64;
const REQUESTS_PER_CLIENT: usize = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_connections_through_three_plugins_get_only_2xx_or_429() {
    let specs = [
        plugin(
            "api-key",
            json!({"keys": [{"name": "app", "sha256": hex::encode(Sha256::digest(KEY))}]}),
        ),
        plugin("model-allowlist", json!({"allow": ["gemma3:4b"]})),
        plugin("token-cap", json!({"max_tokens": 64})),
    ];
    let options = PluginOptions {
        cache_dir: std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../target/plugin-cache-tests"),
        ..Default::default()
    };
    let stage = load_chain(&specs, &options).expect("plugins load");
    let stack = Arc::new(
        Stack::with_filter(
            |e, p| {
                e.num_parallel = 4;
                p.limits.max_in_flight = 4;
                p.limits.max_queue = 16;
            },
            stage,
        )
        .await,
    );
    let body = json!({"model": "gemma3:4b", "stream": false,
        "messages": [{"role": "user", "content": "Why is the sky blue?"}]});
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..CLIENTS {
        let stack = stack.clone();
        let body = body.clone();
        tasks.spawn(async move {
            let mut statuses = Vec::new();
            for _ in 0..REQUESTS_PER_CLIENT {
                let r = stack
                    .client
                    .post(stack.url("/api/chat"))
                    .bearer_auth(KEY)
                    .json(&body)
                    .timeout(Duration::from_secs(60))
                    .send()
                    .await
                    .expect("the proxy answers");
                let status = r.status().as_u16();
                let text = r.text().await.unwrap_or_default();
                statuses.push((status, text));
            }
            statuses
        });
    }
    let mut ok = 0;
    let mut shed = 0;
    while let Some(done) = tasks.join_next().await {
        for (status, text) in done.unwrap() {
            match status {
                200 => ok += 1,
                429 => shed += 1,
                other => panic!("a request failed under load with {other}: {text}"),
            }
        }
    }
    assert_eq!(ok + shed, CLIENTS * REQUESTS_PER_CLIENT);
    assert!(ok > 0, "nothing was served");
}

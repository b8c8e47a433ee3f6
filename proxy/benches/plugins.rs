//! The plugin stage alone: a typical chat request through chains of 0, 1, 3
//! and 6 of the example plugins (built by scripts/build-plugins), plus the
//! per-call latency distribution of one plugin (p50/p99, which criterion
//! does not report).
//!
//! Run: scripts/build-plugins && cargo bench -p kiln-proxy --bench plugins

#[path = "../tests/example_plugins/mod.rs"]
mod example_plugins;

use criterion::{BenchmarkId, Criterion, Throughput};
use example_plugins::plugin;
use kiln_proxy::filter::{FilterRequest, RouteKind, Verdict};
use kiln_proxy::plugins::PluginSpec;
use kiln_proxy::plugins::{PluginOptions, load_chain};
use serde_json::json;
use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The example chain, in the order an operator would use.
fn example_chain() -> Vec<PluginSpec> {
    vec![
        plugin(
            "api-key",
            json!({"keys": [{"name": "alice", "key": "sk-alice"}, {"name": "bob", "key": "sk-bob"}]}),
        ),
        plugin(
            "model-allowlist",
            json!({"allow": ["gemma3:4b", "gemma3:1b"], "aliases": {"gemma": "gemma3:4b"}}),
        ),
        plugin("token-cap", json!({"max_tokens": 512})),
        plugin(
            "prompt-guard",
            json!({"deny": ["ignore previous instructions", "system prompt:"]}),
        ),
        plugin(
            "system-prompt",
            json!({"prompt": "You are a concise assistant."}),
        ),
        plugin(
            "rate-limit",
            json!({"requests_per_minute": 60000, "burst": 1_000_000_000u64}),
        ),
    ]
}

/// A typical chat body: a system message and a few turns, about 1.5 KB.
fn chat_request() -> FilterRequest {
    let turn = "Could you summarise the attached meeting notes in three bullet points and list any action items with their owners? ";
    let body = json!({
        "model": "gemma",
        "stream": true,
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": turn.repeat(4)},
            {"role": "assistant", "content": "Sure. Here is the summary: the team agreed to ship on Friday."},
            {"role": "user", "content": turn.repeat(3)},
        ],
        "options": {"num_predict": 2048, "temperature": 0.2}
    });
    FilterRequest {
        route: RouteKind::OllamaChat,
        method: "POST".into(),
        path: "/api/chat".into(),
        headers: vec![
            ("host".into(), "kiln.example".into()),
            ("content-type".into(), "application/json".into()),
            ("authorization".into(), "Bearer sk-alice".into()),
            ("user-agent".into(), "ollama-python/0.5".into()),
        ],
        model: Some("gemma".into()),
        body: serde_json::to_vec(&body).expect("static JSON"),
    }
}

fn options() -> PluginOptions {
    PluginOptions {
        cache_dir: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/plugin-cache-bench"),
        ..PluginOptions::default()
    }
}

fn chain_stage(c: &mut Criterion) {
    let all = example_chain();
    let request = chat_request();
    let mut group = c.benchmark_group("plugin_stage");
    group.throughput(Throughput::Elements(1));
    for n in [0usize, 1, 3, 6] {
        let stage = load_chain(&all[..n], &options()).expect("plugins load");
        let chain = stage.chain();
        // Sanity: the chain must forward, or we would be timing rejections.
        assert!(
            matches!(chain.run(request.clone()), Verdict::Forward(_)),
            "chain of {n} rejected the request"
        );
        group.bench_with_input(BenchmarkId::new("plugins", n), &n, |b, _| {
            b.iter(|| black_box(chain.run(black_box(request.clone()))))
        });
    }
    group.finish();

    // The same 6-plugin stage as the proxy calls it: from a task on a
    // multi-thread runtime, through `RequestFilter::apply`. The baseline is
    // the cost of spawning and awaiting an empty task there.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let stage = load_chain(&all, &options()).expect("plugins load");
    c.bench_function("plugin_stage_async/6", |b| {
        b.iter(|| {
            let (stage, request) = (stage.clone(), request.clone());
            rt.block_on(async move {
                tokio::spawn(async move {
                    kiln_proxy::filter::RequestFilter::apply(stage.as_ref(), request).await
                })
                .await
            })
        })
    });
    c.bench_function("plugin_stage_async/task-baseline", |b| {
        b.iter(|| rt.block_on(async { tokio::spawn(async { black_box(1) }).await }))
    });
}

/// p50/p99 of single plugin calls, measured one by one.
fn percentiles() {
    let request = chat_request();
    println!(
        "\nper-call latency, {} calls each, typical chat body ({} bytes):",
        5000,
        request.body.len()
    );
    // `hello` only sets a header (no body parsing): the floor of host and
    // SDK overhead per call.
    let floor = plugin("hello", json!({}));
    for spec in std::iter::once(floor).chain(example_chain()) {
        let name = spec.name.clone();
        let stage = load_chain(&[spec], &options()).expect("plugin loads");
        let chain = stage.chain();
        for _ in 0..200 {
            black_box(chain.run(request.clone()));
        }
        let mut samples: Vec<Duration> = (0..5000)
            .map(|_| {
                let r = request.clone();
                let t = Instant::now();
                black_box(chain.run(r));
                t.elapsed()
            })
            .collect();
        samples.sort();
        let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
        println!(
            "  {name:<16} p50 {:>7.1} µs   p99 {:>7.1} µs   max {:>8.1} µs",
            at(0.50).as_secs_f64() * 1e6,
            at(0.99).as_secs_f64() * 1e6,
            samples[samples.len() - 1].as_secs_f64() * 1e6
        );
    }
}

/// Loading the 6-plugin chain: compiling from scratch vs from the on-disk cache.
fn load_times() {
    let cold_dir = std::env::temp_dir().join(format!("kiln-bench-cache-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&cold_dir);
    let opts = PluginOptions {
        cache_dir: cold_dir.clone(),
        ..PluginOptions::default()
    };
    let t = Instant::now();
    drop(load_chain(&example_chain(), &opts).expect("plugins load"));
    let cold = t.elapsed();
    let t = Instant::now();
    drop(load_chain(&example_chain(), &opts).expect("plugins load"));
    let warm = t.elapsed();
    let _ = std::fs::remove_dir_all(&cold_dir);
    println!(
        "\nloading the 6 example plugins: {:.0} ms compiling, {:.1} ms from the artifact cache",
        cold.as_secs_f64() * 1e3,
        warm.as_secs_f64() * 1e3
    );
}

/// The whole proxy, in process: `POST /api/generate` (stream false, one
/// token) straight to the emulator, through kiln-proxy without plugins, and
/// through kiln-proxy with the 6-plugin chain, in alternating rounds so
/// machine noise hits all three. Concurrency 1.
fn proxy_end_to_end() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let emulator = ollama_emulator::Emulator::start(ollama_emulator::Config {
            num_parallel: 64,
            token_delay: Duration::ZERO,
            default_tokens: 1,
            ..Default::default()
        })
        .await
        .expect("emulator starts");
        let start = |filter: std::sync::Arc<dyn kiln_proxy::filter::RequestFilter>| {
            let config = kiln_proxy::Config {
                listen: Some("127.0.0.1:0".into()),
                upstream: emulator.url(),
                ..kiln_proxy::Config::default()
            };
            kiln_proxy::start(config, filter)
        };
        let bare = start(std::sync::Arc::new(kiln_proxy::filter::NoFilters)).await.expect("proxy starts");
        let with_plugins = start(load_chain(&example_chain(), &options()).expect("plugins load")).await.expect("proxy starts");
        let client = reqwest::Client::new();
        let body = json!({"model": "gemma", "prompt": "Summarise the meeting notes in three bullet points.", "stream": false});
        let targets = [("direct", emulator.url()), ("kiln-proxy, no plugins", bare.url()), ("kiln-proxy, 6 plugins", with_plugins.url())];
        let mut samples: Vec<Vec<Duration>> = vec![Vec::new(); targets.len()];
        for round in 0..20 {
            for (i, (_, url)) in targets.iter().enumerate() {
                for _ in 0..100 {
                    let t = Instant::now();
                    let r = client
                        .post(format!("{url}/api/generate"))
                        .bearer_auth("sk-alice")
                        .json(&body)
                        .send()
                        .await
                        .expect("request answered");
                    assert!(r.status().is_success(), "{url}: {}", r.status());
                    r.bytes().await.expect("body read");
                    if round > 0 {
                        samples[i].push(t.elapsed());
                    }
                }
            }
        }
        println!("\nend to end, POST /api/generate (stream false, 1 token), concurrency 1, {} requests each:", samples[0].len());
        for ((name, _), s) in targets.iter().zip(samples.iter_mut()) {
            s.sort();
            let at = |q: f64| s[((s.len() as f64 * q) as usize).min(s.len() - 1)].as_secs_f64() * 1e6;
            println!("  {name:<24} p50 {:>7.0} µs   p99 {:>7.0} µs", at(0.5), at(0.99));
        }
        bare.shutdown().await.expect("proxy stops");
        with_plugins.shutdown().await.expect("proxy stops");
    });
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    chain_stage(&mut c);
    c.final_summary();
    // `cargo bench -- <filter>` style runs still print the distribution; a
    // `--test` run (cargo test --benches) skips it to stay fast.
    if !std::env::args().any(|a| a == "--test" || a == "--list") {
        percentiles();
        load_times();
        proxy_end_to_end();
    }
}

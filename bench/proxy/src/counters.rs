//! `kiln-bench-counters`: what shared counters on Redis cost a request. One
//! kiln-proxy (in process) per setup, each with the `rate-limit` plugin (two
//! `counter-add` calls per request: read, then advance) and a limit no
//! request reaches, in front of the Ollama emulator (no token delay, one
//! token), in interleaved rounds of one run:
//!
//! - `local`: in-process counters (the default);
//! - `redis`: counters on a `redis-server` started here on a loopback port,
//!   with a password (as in production, AUTH on every new connection).
//!
//! Reports per-request latency (p50/p99) at concurrency 1, the p50 that
//! Redis adds, and requests (and counter-adds) per second with 64 requests
//! in flight. Needs `scripts/build-plugins` and `redis-server`.
//!
//! Usage: kiln-bench-counters [--quick]

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use kiln_proxy::counters_config::CountersConfig;
use kiln_proxy::plugins::{OnError, PluginSpec};
use kiln_proxy::plugins::{PluginOptions, load_chain};

const PASSWORD: &str = "bench-pass";

fn main() -> anyhow::Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    if std::env::var_os("RUST_LOG").is_none() {
        // SAFETY: set before any other thread exists.
        unsafe { std::env::set_var("RUST_LOG", "warn") };
    }
    kiln_proxy::logging::init();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(quick))
}

/// `redis-server` on a free loopback port; killed on drop.
struct Redis(std::process::Child, u16);

impl Redis {
    fn start() -> anyhow::Result<Redis> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args([
                "--requirepass",
                PASSWORD,
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .spawn()
            .context("starting redis-server (scripts/setup installs it)")?;
        let end = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            anyhow::ensure!(Instant::now() < end, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Redis(child, port))
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn proxy(
    upstream: &str,
    counters: CountersConfig,
) -> anyhow::Result<kiln_proxy::RunningProxy> {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/plugins/rate_limit.wasm");
    anyhow::ensure!(
        path.exists(),
        "{} is missing: run scripts/build-plugins first",
        path.display()
    );
    let spec = PluginSpec {
        name: "rate-limit".into(),
        path,
        sha256: None,
        on_error: OnError::Deny,
        routes: None,
        // Never reached: every request is admitted and counted.
        config: serde_json::json!({"requests_per_minute": 60000, "burst": 1_000_000_000u64}),
    };
    let options = PluginOptions {
        counters,
        ..PluginOptions::default()
    };
    let stage = load_chain(&[spec], &options).context("loading rate-limit")?;
    let mut config = kiln_proxy::Config {
        listen: Some("127.0.0.1:0".into()),
        upstream: upstream.into(),
        ..kiln_proxy::Config::default()
    };
    config.limits.max_in_flight = 256;
    config.limits.max_queue = 256;
    kiln_proxy::start(config, stage).await
}

async fn request(client: &reqwest::Client, url: &str, caller: &str) -> anyhow::Result<()> {
    let resp = client
        .post(format!("{url}/api/generate"))
        .header("x-kiln-caller", caller)
        .header("content-type", "application/json")
        .body(r#"{"model":"gemma3:4b","prompt":"hi","stream":false}"#)
        .send()
        .await?;
    anyhow::ensure!(resp.status() == 200, "{url}: status {}", resp.status());
    resp.bytes().await?;
    Ok(())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

async fn run(quick: bool) -> anyhow::Result<()> {
    let emulator = ollama_emulator::Emulator::start(ollama_emulator::Config {
        num_parallel: 4096,
        token_delay: Duration::ZERO,
        default_tokens: 1,
        ..Default::default()
    })
    .await?;
    let redis = Redis::start()?;
    // One connection per request in flight (the 64 below); timeout as default.
    let shared = CountersConfig {
        url: Some(format!("redis://127.0.0.1:{}", redis.1)),
        password: Some(PASSWORD.into()),
        pool_size: 64,
        ..CountersConfig::default()
    };
    let setups = [
        (
            "local",
            proxy(&emulator.url(), CountersConfig::default()).await?,
        ),
        ("redis", proxy(&emulator.url(), shared.clone()).await?),
        // At 64 in flight on two shared cores some round trips take over
        // 10 ms, and those adds count in process: the same with 50 ms.
        (
            "redis, 50 ms timeout",
            proxy(
                &emulator.url(),
                CountersConfig {
                    timeout_ms: 50,
                    ..shared
                },
            )
            .await?,
        ),
    ];
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .tcp_nodelay(true)
        .build()?;
    for (_, p) in &setups {
        for _ in 0..200 {
            request(&client, &p.url(), "warm-up").await?;
        }
    }

    // Latency at concurrency 1, interleaved rounds so both setups see the
    // same machine (it is shared).
    let (rounds, per_round) = if quick { (5, 100) } else { (20, 250) };
    let mut samples: Vec<Vec<Duration>> = vec![Vec::new(); setups.len()];
    for round in 0..rounds {
        for (i, (_, p)) in setups.iter().enumerate() {
            let url = p.url();
            for n in 0..per_round {
                let started = Instant::now();
                // A caller per round and request mix: new keys and hits.
                request(&client, &url, &format!("c{round}-{}", n % 50)).await?;
                samples[i].push(started.elapsed());
            }
        }
    }
    println!("## Shared counters\n");
    println!(
        "`cargo run --release -p kiln-bench-proxy --bin kiln-bench-counters` — kiln-proxy with `rate-limit` \
         (two `counter-add` calls per request) in front of the Ollama emulator (one token, no delay); \
         `local` counts in process, `redis` on a `redis-server` on loopback (password, a pool of 64 connections, \
         default 10 ms timeout). {} requests per setup at concurrency 1 in {rounds} interleaved rounds, then 64 \
         requests in flight.\n",
        rounds * per_round
    );
    println!(
        "| setup | p50 | p99 | p50 added by Redis | requests/s at 64 in flight | counter-adds/s |"
    );
    println!("|---|---|---|---|---|---|");
    let mut p50s = Vec::new();
    let mut lines = Vec::new();
    for (i, (name, _)) in setups.iter().enumerate() {
        let s = &mut samples[i];
        s.sort();
        p50s.push(percentile(s, 0.5));
        lines.push((name, percentile(s, 0.5), percentile(s, 0.99)));
    }

    // Throughput with 64 requests in flight, for a fixed time per setup.
    let window = Duration::from_secs(if quick { 2 } else { 5 });
    let mut throughput = Vec::new();
    for (_, p) in &setups {
        let url = Arc::new(p.url());
        let end = Instant::now() + window;
        let mut tasks = Vec::new();
        for t in 0..64 {
            let (client, url) = (client.clone(), url.clone());
            tasks.push(tokio::spawn(async move {
                let mut done = 0u64;
                while Instant::now() < end {
                    request(&client, &url, &format!("t{t}")).await?;
                    done += 1;
                }
                anyhow::Ok(done)
            }));
        }
        let mut total = 0;
        for t in tasks {
            total += t.await??;
        }
        throughput.push(total as f64 / window.as_secs_f64());
    }
    for (i, (name, p50, p99)) in lines.iter().enumerate() {
        let added = if i == 0 {
            "—".to_owned()
        } else {
            format!(
                "{:.3} ms",
                (p50.as_secs_f64() - p50s[0].as_secs_f64()) * 1e3
            )
        };
        println!(
            "| {name} | {:.3} ms | {:.3} ms | {added} | {:.0} | {:.0} |",
            p50.as_secs_f64() * 1e3,
            p99.as_secs_f64() * 1e3,
            throughput[i],
            2.0 * throughput[i]
        );
    }
    println!(
        "\nRedis throughput relative to in process: {:.2}×.",
        throughput[1] / throughput[0]
    );
    // Adds that did not reach Redis (timeout, pool exhausted) were counted in
    // process instead (fail_open): say how many, so the figures are honest.
    for (name, p) in &setups[1..] {
        let metrics = client
            .get(format!("{}/metrics", p.url()))
            .send()
            .await?
            .text()
            .await?;
        let value = |metric: &str| {
            metrics
                .lines()
                .find(|l| l.starts_with(metric))
                .and_then(|l| l.split_whitespace().nth(1))
                .unwrap_or("?")
                .to_owned()
        };
        println!(
            "`{name}`: {} adds counted in process instead of on Redis (`kiln_counter_fallbacks_total`), \
             {} backend errors.",
            value("kiln_counter_fallbacks_total "),
            value("kiln_counter_backend_errors_total ")
        );
    }
    Ok(())
}

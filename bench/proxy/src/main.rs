//! `kiln-bench-proxy`: measures kiln-proxy against a direct connection to a
//! fast upstream (the Ollama emulator with no token delay), in one run:
//! added latency (p50/p99) at concurrency 1 and 64, streamed chunks per
//! second, and proxy memory per idle stream. Prints a Markdown report.
//!
//! The proxy runs as a separate process (this binary, re-run as
//! `kiln-bench-proxy proxy-child`) so its memory can be measured alone.

mod child;
mod measure;
mod tracing_cost;

use std::sync::Arc;

use anyhow::Context;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    if args.first().map(String::as_str) == Some("proxy-child") {
        return rt.block_on(child::run_proxy());
    }
    let quick = args.iter().any(|a| a == "--quick");
    // reqwest may be built with rustls and no provider (workspace feature
    // unification); ring is the workspace's one provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    rt.block_on(async move {
        let emulator = ollama_emulator::Emulator::start(ollama_emulator::Config {
            num_parallel: 4096,
            token_delay: std::time::Duration::ZERO,
            default_tokens: 1,
            ..Default::default()
        })
        .await?;
        if args.iter().any(|a| a == "--tracing") {
            println!("{}", tracing_cost::measure(&emulator.url(), quick).await?);
            return Ok(());
        }
        let proxy = child::ProxyChild::start(&emulator.url(), "info")
            .await
            .context("starting the proxy")?;
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(4096)
            .tcp_nodelay(true)
            .build()?;
        let bench = measure::Bench {
            client,
            direct: emulator.url(),
            proxied: proxy.url(),
            quick,
        };
        let bench = Arc::new(bench);
        let mut report = measure::Report::default();
        for concurrency in [1, 64] {
            let l = measure::latency(&bench, &proxy, "", concurrency).await?;
            report.latency.push(l);
        }
        report.streaming = Some(measure::streaming(&bench).await?);
        report.idle = Some(measure::idle_streams(&bench, &proxy, 1000).await?);
        drop(proxy);
        // The same with the per-request access log off (RUST_LOG=warn), to
        // show what logging costs.
        let quiet = child::ProxyChild::start(&emulator.url(), "warn").await?;
        let bench = Arc::new(measure::Bench {
            client: bench.client.clone(),
            direct: bench.direct.clone(),
            proxied: quiet.url(),
            quick,
        });
        let l = measure::latency(&bench, &quiet, ", access log off", 64).await?;
        report.latency.push(l);
        println!("{}", report.markdown());
        Ok(())
    })
}

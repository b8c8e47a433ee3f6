//! `kiln-bench-response`: what a response plugin costs a stream. The same
//! long streamed answers (the Ollama emulator with no token delay, so the
//! proxy is the bottleneck) go through kiln-proxy set up three ways, in
//! interleaved rounds of one run:
//!
//! - `none`: no plugins (the plain passthrough path);
//! - `budget`: `token-budget` (request hook, plus a completion hook that
//!   answers `pass-rest` at the first chunk);
//! - `guard`: `output-guard` with one pattern (every chunk framed, parsed
//!   and passed through the plugin);
//! - `guard-pii`: `output-guard` with `pii = true` (most chunks rewritten:
//!   a word may be the start of an email address, so it is held until the
//!   next one).
//!
//! For each: chunks per second for NDJSON (/api/generate) and SSE
//! (/v1/chat/completions) at saturation, and the wall time each chunk
//! costs more than without plugins (1/throughput − 1/baseline).
//! Needs `scripts/build-plugins` first. Prints a Markdown report.
//!
//! Then the same setups in-process ([`hooks`]): the response stage's CPU
//! per chunk with no sockets in the way.
//!
//! Usage: kiln-bench-response [--quick] [--hooks-only]

mod hooks;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use kiln_bench_common::{example_plugin, process_cpu};
use kiln_proxy::filter::{NoFilters, RequestFilter};
use kiln_proxy::plugins::PluginSpec;
use kiln_proxy::plugins::{PluginOptions, load_chain};
use serde_json::json;

struct Setup {
    name: &'static str,
    url: String,
    _proxy: Option<kiln_proxy::RunningProxy>,
}

impl Setup {
    /// A proxy with `filter` in front of `upstream`; no filter: no proxy.
    async fn start(
        name: &'static str,
        upstream: &str,
        filter: Option<Arc<dyn RequestFilter>>,
    ) -> anyhow::Result<Setup> {
        let Some(filter) = filter else {
            return Ok(Setup {
                name,
                url: upstream.to_owned(),
                _proxy: None,
            });
        };
        let proxy = proxy(upstream, filter).await?;
        Ok(Setup {
            name,
            url: proxy.url(),
            _proxy: Some(proxy),
        })
    }
}

async fn proxy(
    upstream: &str,
    filter: Arc<dyn RequestFilter>,
) -> anyhow::Result<kiln_proxy::RunningProxy> {
    let mut config = kiln_proxy::Config {
        listen: Some("127.0.0.1:0".into()),
        upstream: upstream.into(),
        ..kiln_proxy::Config::default()
    };
    config.limits.max_in_flight = 64;
    config.limits.max_queue = 64;
    kiln_proxy::start(config, filter).await
}

/// Streams one answer of `tokens` chunks; returns the chunks received.
/// One measured load: `streams` concurrent answers of `tokens` chunks, the
/// emulator waiting `delay_ms` before each token.
#[derive(Clone, Copy)]
struct Load {
    streams: usize,
    tokens: usize,
    delay_ms: u64,
}

async fn stream_once(
    client: &reqwest::Client,
    url: &str,
    sse: bool,
    tokens: usize,
    delay_ms: u64,
) -> anyhow::Result<u64> {
    let (path, body) = if sse {
        (
            "/v1/chat/completions",
            json!({"model": "gemma3:4b", "stream": true, "max_tokens": tokens,
                   "messages": [{"role": "user", "content": "why is the sky blue?"}]}),
        )
    } else {
        (
            "/api/generate",
            json!({"model": "gemma3:4b", "prompt": "why is the sky blue?", "options": {"num_predict": tokens}}),
        )
    };
    let mut resp = client
        .post(format!("{url}{path}"))
        .header("x-emulator-delay-ms", delay_ms.to_string())
        .json(&body)
        .send()
        .await?;
    anyhow::ensure!(resp.status() == 200, "status {}", resp.status());
    let mut lines = 0u64;
    let mut last = bytes_tail::Tail::default();
    while let Some(chunk) = resp.chunk().await? {
        lines += memchr::memchr_iter(b'\n', &chunk).count() as u64;
        last.keep(&chunk);
    }
    // An SSE event ends with a blank line: two newlines per event.
    let n = if sse { lines / 2 } else { lines };
    anyhow::ensure!(
        n as usize > tokens,
        "a stream through {url} ended after {n} of {tokens} chunks, with {:?}",
        last.text()
    );
    Ok(n)
}

/// Chunks per second under `load`.
async fn throughput(
    client: &reqwest::Client,
    url: &str,
    sse: bool,
    load: Load,
) -> anyhow::Result<f64> {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..load.streams {
        let (client, url) = (client.clone(), url.to_owned());
        tasks.push(tokio::spawn(async move {
            stream_once(&client, &url, sse, load.tokens, load.delay_ms).await
        }));
    }
    let mut chunks = 0;
    for t in tasks {
        chunks += t.await??;
    }
    anyhow::ensure!(
        chunks as usize >= load.streams * load.tokens,
        "only {chunks} of {} chunks arrived through {url}",
        load.streams * load.tokens
    );
    Ok(chunks as f64 / start.elapsed().as_secs_f64())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    // reqwest may be built with rustls and no provider (workspace feature
    // unification); ring is the workspace's one provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let quick = std::env::args().any(|a| a == "--quick");
    let hooks_only = std::env::args().any(|a| a == "--hooks-only");
    // Warnings only (RUST_LOG to change): a plugin failure must not go unseen.
    if std::env::var_os("RUST_LOG").is_none() {
        // SAFETY: set before any other thread exists.
        unsafe { std::env::set_var("RUST_LOG", "warn") };
    }
    kiln_proxy::logging::init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(quick, hooks_only))
}

async fn run(quick: bool, hooks_only: bool) -> anyhow::Result<()> {
    // The deadline is wall time. With ~100 streams at once on two cores
    // shared with other work, a call can wait its turn for longer than the
    // default 50 ms (seen: over 250 ms) and fail the stream; this measures
    // throughput, not deadlines, so it allows 2 s.
    let options = PluginOptions {
        deadline: Duration::from_secs(2),
        ..PluginOptions::default()
    };
    let chain = |specs: Vec<PluginSpec>| -> anyhow::Result<Arc<dyn RequestFilter>> {
        Ok(load_chain(&specs, &options).context("loading the example plugins")?)
    };
    let guard = |config| chain(vec![example_plugin("output-guard", config)?]);
    let chains: Vec<(&'static str, Arc<dyn RequestFilter>)> = vec![
        (
            "budget",
            chain(vec![example_plugin(
                "token-budget",
                json!({"budget": u64::MAX / 2}),
            )?])?,
        ),
        ("guard", guard(json!({"patterns": ["sky is"]}))?),
        ("guard-pii", guard(json!({"pii": true}))?),
    ];
    println!("## Response plugins\n");
    if !hooks_only {
        network(quick, &chains).await?;
    }
    report_hooks(quick, &chains);
    Ok(())
}

/// The in-process figures: CPU per chunk of the response stage alone.
fn report_hooks(quick: bool, chains: &[(&'static str, Arc<dyn RequestFilter>)]) {
    let rounds = if quick { 21 } else { 101 };
    println!("### In-process: the response stage alone\n");
    println!(
        "`cargo run --release -p kiln-bench-response -- --hooks-only` — answers of 400 tokens, one \
         chunk per read (as hyper hands Ollama's body over), median of {rounds} answers, CPU time of \
         one thread, no sockets. `framing` is the host's share (cutting chunks out of the body, \
         reading each one, as the answer counts what was generated) with hooks that do nothing. The last column is a whole short \
         answer (20 tokens), where what a plugin costs per answer (a fresh instance, its start) shows.\n"
    );
    let mut setups = vec![("framing", hooks::Hooks::Framing)];
    setups.extend(
        chains
            .iter()
            .map(|(name, c)| (*name, hooks::Hooks::Plugins(c.clone()))),
    );
    let short = hooks::Api::ndjson(20);
    let apis = [hooks::Api::ndjson(400), hooks::Api::sse(400)];
    // Warm the compile caches and lazy DFAs.
    for api in apis.iter().chain([&short]) {
        for (_, h) in &setups {
            hooks::ns_per_chunk(h, api, 3);
        }
    }
    let head: Vec<String> = apis
        .iter()
        .map(|a| format!("{}, µs per chunk", a.name))
        .collect();
    println!(
        "| setup | {} | 20-token NDJSON answer, µs |",
        head.join(" | ")
    );
    println!("|---|{}---:|", "---:|".repeat(apis.len()));
    for (name, h) in &setups {
        let mut cells: Vec<String> = apis
            .iter()
            .map(|api| format!("{:.2}", hooks::ns_per_chunk(h, api, rounds) / 1000.0))
            .collect();
        let answer = hooks::ns_per_chunk(h, &short, rounds) * short.chunks() as f64 / 1000.0;
        cells.push(format!("{answer:.0}"));
        println!("| {name} | {} |", cells.join(" | "));
    }
    println!();
}

/// The streaming figures: the emulator, proxies and client over loopback.
async fn network(
    quick: bool,
    chains: &[(&'static str, Arc<dyn RequestFilter>)],
) -> anyhow::Result<()> {
    let emulator = ollama_emulator::Emulator::start(ollama_emulator::Config {
        num_parallel: 256,
        token_delay: Duration::ZERO,
        ..Default::default()
    })
    .await?;
    let up = emulator.url();
    let mut setups = vec![
        // The emulator itself: the CPU the client and emulator use per chunk.
        Setup::start("direct", &up, None).await?,
        Setup::start("none", &up, Some(Arc::new(NoFilters))).await?,
    ];
    for (name, c) in chains {
        setups.push(Setup::start(name, &up, Some(c.clone())).await?);
    }
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .tcp_nodelay(true)
        .build()?;
    let rounds = if quick { 3 } else { 9 };
    let scale = if quick { 4 } else { 1 };
    let loads = [
        (
            "Burst: no token delay, the proxy is the bottleneck (the worst case for per-chunk work)",
            Load {
                streams: 8,
                tokens: 1000 / scale,
                delay_ms: 0,
            },
        ),
        (
            "Paced: 1 ms per token and stream, one chunk per read (how Ollama streams), many streams",
            Load {
                streams: 96,
                tokens: 400 / scale,
                delay_ms: 1,
            },
        ),
    ];

    // Warm up: compile caches, connection pools, the lazy DFAs.
    let warm = Load {
        streams: 2,
        tokens: 200,
        delay_ms: 0,
    };
    for s in &setups {
        throughput(&client, &s.url, false, warm).await?;
        throughput(&client, &s.url, true, warm).await?;
    }

    println!(
        "`cargo run --release -p kiln-bench-response{}` — {rounds} interleaved rounds per setup (median); \
         the Ollama emulator, the proxies and the client in one process on this machine. \
         *Proxy CPU per chunk* is the process CPU time per chunk minus that of the same load sent \
         straight to the emulator; *proxy-bound* is the throughput ratio a proxy limited by its own \
         CPU would see (CPU of `none` / CPU of the setup), which other load on the machine skews less than wall time.\n",
        if quick { " -- --quick" } else { "" }
    );
    for (title, load) in loads {
        println!(
            "### {title}\n\n{} streams × {} chunks.\n",
            load.streams, load.tokens
        );
        for sse in [false, true] {
            report(&client, &setups, sse, load, rounds).await?;
        }
    }
    Ok(())
}

/// Measures every setup under `load` in interleaved rounds; prints a table.
async fn report(
    client: &reqwest::Client,
    setups: &[Setup],
    sse: bool,
    load: Load,
    rounds: usize,
) -> anyhow::Result<()> {
    let api = if sse {
        "SSE (/v1/chat/completions)"
    } else {
        "NDJSON (/api/generate)"
    };
    // Per setup and round: chunks per second, and CPU µs per chunk.
    let mut tput: Vec<Vec<f64>> = vec![Vec::new(); setups.len()];
    let mut cpu: Vec<Vec<f64>> = vec![Vec::new(); setups.len()];
    for _ in 0..rounds {
        for (i, s) in setups.iter().enumerate() {
            let before = process_cpu();
            let t = throughput(client, &s.url, sse, load).await?;
            let used = process_cpu().saturating_sub(before);
            tput[i].push(t);
            cpu[i].push(used.as_secs_f64() * 1e6 / (load.streams * load.tokens) as f64);
        }
    }
    let direct_cpu = median(cpu[0].clone());
    let proxy_cpu = |i: usize| median(cpu[i].clone()) - direct_cpu;
    let base_tput = median(tput[1].clone());
    println!("{api}:\n");
    println!(
        "| setup | chunks/s (wall) | vs none | proxy CPU µs per chunk | proxy-bound throughput vs none |"
    );
    println!("|---|---:|---:|---:|---:|");
    for (i, s) in setups.iter().enumerate() {
        let t = median(tput[i].clone());
        if i == 0 {
            println!(
                "| {} (no proxy) | {t:.0} | | {:.2} (client + emulator) | |",
                s.name, direct_cpu
            );
            continue;
        }
        println!(
            "| {} | {t:.0} | {:.0}% | {:.2} | {:.0}% |",
            s.name,
            100.0 * t / base_tput,
            proxy_cpu(i),
            100.0 * proxy_cpu(1) / proxy_cpu(i)
        );
    }
    println!();
    Ok(())
}

/// The last bytes of a body, to say how it ended.
mod bytes_tail {
    #[derive(Default)]
    pub struct Tail(Vec<u8>);

    impl Tail {
        pub fn keep(&mut self, chunk: &[u8]) {
            self.0.extend_from_slice(chunk);
            let cut = self.0.len().saturating_sub(300);
            self.0.drain(..cut);
        }

        pub fn text(&self) -> String {
            String::from_utf8_lossy(&self.0).into_owned()
        }
    }
}

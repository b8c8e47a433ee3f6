//! `kiln-bench-gemini`: what speaking the Gemini API costs kiln-proxy. The
//! same answers (the Ollama emulator with no token delay, so the proxy is
//! the bottleneck) are asked for through one proxy in interleaved rounds:
//!
//! - streamed: `/api/chat` (NDJSON passed through) against
//!   `:streamGenerateContent?alt=sse` (the request translated, each NDJSON
//!   line rewritten as a Gemini SSE chunk);
//! - not streamed: `/api/chat` with `"stream": false` against
//!   `:generateContent`.
//!
//! Each figure is the median of the rounds: chunks (or requests) per
//! second, and this process's CPU time per chunk (or request) — client,
//! emulator and proxy all run here, so the difference between the two is
//! the translation's. Then the translation alone, in process: one request
//! translated, one chunk rewritten. Prints a Markdown report.
//!
//! Usage: kiln-bench-gemini [--quick]

use std::sync::Arc;
use std::time::{Duration, Instant};

use kiln_bench_common::process_cpu;
use kiln_proxy::filter::NoFilters;
use kiln_proxy::gemini::{Method, answer::Plan, request};
use serde_json::json;

/// One kind of request, the Ollama and the Gemini way.
#[derive(Clone, Copy, PartialEq)]
enum Api {
    Chat,
    Gemini,
}

struct Load {
    streams: usize,
    tokens: usize,
    rounds: usize,
}

async fn one(
    client: &reqwest::Client,
    base: &str,
    api: Api,
    stream: bool,
    tokens: usize,
) -> anyhow::Result<u64> {
    let (url, body) = match api {
        Api::Chat => (
            format!("{base}/api/chat"),
            json!({"model": "gemma3:4b", "stream": stream, "options": {"num_predict": tokens},
                   "messages": [{"role": "user", "content": "why is the sky blue?"}]}),
        ),
        Api::Gemini => {
            let method = if stream {
                "streamGenerateContent?alt=sse"
            } else {
                "generateContent"
            };
            (
                format!("{base}/v1beta/models/gemma3:4b:{method}"),
                json!({"contents": [{"role": "user", "parts": [{"text": "why is the sky blue?"}]}],
                       "generationConfig": {"maxOutputTokens": tokens}}),
            )
        }
    };
    let mut resp = client.post(url).json(&body).send().await?;
    anyhow::ensure!(resp.status() == 200, "status {}", resp.status());
    let mut newlines = 0u64;
    while let Some(chunk) = resp.chunk().await? {
        newlines += memchr::memchr_iter(b'\n', &chunk).count() as u64;
    }
    if !stream {
        return Ok(1);
    }
    // An SSE event ends with a blank line: two newlines per event.
    let chunks = if api == Api::Gemini {
        newlines / 2
    } else {
        newlines
    };
    anyhow::ensure!(chunks as usize > tokens, "only {chunks} chunks");
    Ok(chunks)
}

/// Units (chunks, or requests) per second and CPU per unit, `streams` at once.
async fn measure(
    client: &reqwest::Client,
    base: &str,
    api: Api,
    stream: bool,
    load: &Load,
    per_task: usize,
) -> anyhow::Result<(f64, Duration)> {
    let (start, cpu0) = (Instant::now(), process_cpu());
    let mut tasks = Vec::new();
    for _ in 0..load.streams {
        let (client, base, tokens) = (client.clone(), base.to_owned(), load.tokens);
        tasks.push(tokio::spawn(async move {
            let mut n = 0;
            for _ in 0..per_task {
                n += one(&client, &base, api, stream, tokens).await?;
            }
            anyhow::Ok(n)
        }));
    }
    let mut units = 0;
    for t in tasks {
        units += t.await??;
    }
    let (wall, cpu) = (start.elapsed(), process_cpu() - cpu0);
    Ok((units as f64 / wall.as_secs_f64(), cpu / units as u32))
}

fn median<T: Copy + PartialOrd>(mut v: Vec<T>) -> T {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v[v.len() / 2]
}

/// Nanoseconds per call of `f`, median of 11 batches of `n`.
fn per_call(n: u32, mut f: impl FnMut()) -> f64 {
    let batches: Vec<f64> = (0..11)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..n {
                f();
            }
            start.elapsed().as_nanos() as f64 / f64::from(n)
        })
        .collect();
    median(batches)
}

fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let quick = std::env::args().any(|a| a == "--quick");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let streamed = Load {
        streams: 8,
        tokens: 400,
        rounds: if quick { 3 } else { 9 },
    };
    let whole = Load {
        streams: 8,
        tokens: 20,
        rounds: streamed.rounds,
    };
    let whole_per_task = if quick { 10 } else { 40 };
    let (stream_rows, whole_rows) = rt.block_on(async {
        let emulator = ollama_emulator::Emulator::start(ollama_emulator::Config {
            num_parallel: 64,
            token_delay: Duration::ZERO,
            ..Default::default()
        })
        .await?;
        let mut config = kiln_proxy::Config {
            listen: Some("127.0.0.1:0".into()),
            upstream: emulator.url(),
            ..kiln_proxy::Config::default()
        };
        config.limits.max_in_flight = 64;
        config.limits.max_queue = 64;
        let proxy = kiln_proxy::start(config, Arc::new(NoFilters)).await?;
        let client = reqwest::Client::new();
        let base = proxy.url();
        // Warm up both paths.
        for api in [Api::Chat, Api::Gemini] {
            one(&client, &base, api, true, 50).await?;
        }
        let mut rows = Vec::new();
        for (stream, load, per_task) in [(true, &streamed, 1), (false, &whole, whole_per_task)] {
            let mut runs: [Vec<(f64, Duration)>; 2] = [Vec::new(), Vec::new()];
            for _ in 0..load.rounds {
                for (i, api) in [Api::Chat, Api::Gemini].into_iter().enumerate() {
                    runs[i].push(measure(&client, &base, api, stream, load, per_task).await?);
                }
            }
            let summary = |r: &Vec<(f64, Duration)>| {
                (
                    median(r.iter().map(|x| x.0).collect()),
                    median(r.iter().map(|x| x.1).collect()),
                )
            };
            rows.push([summary(&runs[0]), summary(&runs[1])]);
        }
        anyhow::Ok((rows[0], rows[1]))
    })?;

    // The translation alone.
    let body = json!({"contents": [{"role": "user", "parts": [{"text": "why is the sky blue?"}]}],
        "systemInstruction": {"parts": [{"text": "Be brief."}]},
        "generationConfig": {"maxOutputTokens": 400, "temperature": 0.2}})
    .to_string();
    let translate_ns = per_call(20_000, || {
        let up = request::translate(Method::StreamGenerate, "gemma3:4b", body.as_bytes());
        std::hint::black_box(up.ok());
    });
    let plan = Plan {
        method: Method::StreamGenerate,
        sse: true,
        include_thoughts: false,
        model: "gemma3:4b".into(),
        response_id: "0123456789abcdef0123456789abcdef".into(),
    };
    let line = br#"{"model":"gemma3:4b","created_at":"2026-12-03T21:00:00.000000Z","message":{"role":"assistant","content":"sky "},"done":false}"#;
    let chunk_ns = per_call(200_000, || {
        std::hint::black_box(plan.chunk(line));
    });

    println!("## Gemini API translation (kiln-bench-gemini)\n");
    println!(
        "Same proxy, same emulator answers; medians of {} interleaved rounds.\n",
        streamed.rounds
    );
    println!("| answer | route | per second | CPU per unit | ratio to /api/chat |");
    println!("|---|---|---:|---:|---:|");
    for (name, rows, unit) in [
        (
            format!(
                "streamed, {} × {} tokens",
                streamed.streams, streamed.tokens
            ),
            stream_rows,
            "chunk",
        ),
        (
            format!(
                "not streamed, {} tokens, {} at once",
                whole.tokens, whole.streams
            ),
            whole_rows,
            "request",
        ),
    ] {
        for (route, (rate, cpu)) in ["/api/chat", "Gemini"].iter().zip(rows) {
            println!(
                "| {name} | {route} | {rate:.0} {unit}s | {:.1} µs | {:.2} |",
                cpu.as_secs_f64() * 1e6,
                rate / rows[0].0
            );
        }
    }
    println!(
        "\nIn process: translating a request {:.1} µs; rewriting one streamed chunk {:.2} µs.",
        translate_ns / 1000.0,
        chunk_ns / 1000.0
    );
    Ok(())
}

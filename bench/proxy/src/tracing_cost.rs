//! `kiln-bench-proxy --tracing`: the proxy's CPU per request with traces
//! off, on (every request sampled, exported over OTLP/HTTP to a sink on
//! loopback), and on with no request sampled (`tracing.sample_ratio = 0`);
//! with `BENCH_BASELINE_BIN`, also another build's proxy with its defaults.
//! Three proxy processes, measured in rotating rounds so machine noise hits
//! all three; the proxy's exporter thread is part of its process, so its
//! CPU (protobuf encoding, HTTP) is counted. CPU comes from the threads'
//! schedstat (nanoseconds).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::child::ProxyChild;
use crate::measure::{Bench, run};

/// An OTLP/HTTP sink: answers every request 200 and counts the bytes.
/// Hand-written (Content-Length bodies only, as the exporter sends them):
/// the bench needs no more of HTTP, and its CPU stays out of the proxy's.
async fn sink() -> anyhow::Result<(String, Arc<AtomicU64>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let bytes = Arc::new(AtomicU64::new(0));
    let count = bytes.clone();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let count = count.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 16384];
                loop {
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        match conn.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    while buf.len() < end + 4 + len {
                        match conn.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    count.fetch_add(len as u64, Ordering::Relaxed);
                    buf.drain(..end + 4 + len);
                    let reply = b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n";
                    if conn.write_all(reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Ok((url, bytes))
}

pub async fn measure(upstream: &str, quick: bool) -> anyhow::Result<String> {
    let (sink_url, exported) = sink().await?;
    let on = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", sink_url.clone()),
        ("OTEL_BSP_SCHEDULE_DELAY", "200".to_string()),
    ];
    let mut unsampled = on.to_vec();
    unsampled.push(("KILN_TRACING_SAMPLE_RATIO", "0".to_string()));
    let mut children = vec![
        ("traces off", ProxyChild::start(upstream, "info").await?),
        (
            "traces on, every request sampled",
            ProxyChild::start_with(upstream, "info", &on).await?,
        ),
        (
            "traces on, sample_ratio 0",
            ProxyChild::start_with(upstream, "info", &unsampled).await?,
        ),
    ];
    // Another build's proxy (BENCH_BASELINE_BIN: a kiln-bench-proxy built
    // from the commit before the traces), to show what the code costs when
    // off; with BENCH_BASELINE_SAMPLED=1 it runs with every request sampled
    // instead, to compare two builds' traces in one run.
    // It exports to a sink of its own, so each build's bytes are counted apart.
    let baseline_sampled = std::env::var("BENCH_BASELINE_SAMPLED").is_ok_and(|v| v == "1");
    let mut baseline_exported = None;
    if let Ok(exe) = std::env::var("BENCH_BASELINE_BIN") {
        let (label, env) = if baseline_sampled {
            let (url, bytes) = sink().await?;
            baseline_exported = Some(bytes);
            let mut env = on.to_vec();
            env[0].1 = url;
            ("baseline build, every request sampled", env)
        } else {
            ("baseline build (BENCH_BASELINE_BIN)", Vec::new())
        };
        let base = ProxyChild::start_exe(exe.as_ref(), upstream, "info", &env).await?;
        children.push((label, base));
    }
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .tcp_nodelay(true)
        .build()?;
    let bench = Arc::new(Bench {
        client,
        direct: upstream.to_string(),
        proxied: String::new(),
        quick,
    });
    let (concurrency, per_worker, rounds) = if quick { (8, 25, 3) } else { (8, 125, 15) };
    // More rounds narrow the medians on a busy machine.
    let rounds = std::env::var("BENCH_TRACING_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(rounds);
    for (_, c) in &children {
        run(&bench, &c.url(), concurrency, per_worker / 4).await?;
    }
    // Per child, the CPU per request of each round.
    let mut per_round: Vec<Vec<f64>> = vec![Vec::new(); children.len()];
    for round in 0..rounds {
        for k in 0..children.len() {
            let i = (round + k) % children.len();
            let child = &children[i].1;
            let before = child.cpu_ns()?;
            let n = run(&bench, &child.url(), concurrency, per_worker)
                .await
                .with_context(|| children[i].0)?
                .len();
            let cpu = child.cpu_ns()? - before;
            per_round[i].push(cpu.as_secs_f64() * 1e6 / n as f64);
        }
    }
    // Let the last batch leave, so the exported bytes are all counted.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    // A sampled child's requests: its rounds and its warm-up.
    let sampled = rounds * concurrency * per_worker + concurrency * (per_worker / 4);
    let mut s = format!(
        "| proxy CPU per request, {rounds} rotating rounds of {} requests each (concurrency {concurrency}) | median | added (median of round differences) |\n|---|---|---|\n",
        concurrency * per_worker
    );
    for (i, (label, _)) in children.iter().enumerate() {
        let diffs: Vec<f64> = per_round[i]
            .iter()
            .zip(&per_round[0])
            .map(|(a, b)| a - b)
            .collect();
        let added = if i == 0 {
            "—".to_string()
        } else {
            format!("{:+.1} µs", median(&diffs))
        };
        s.push_str(&format!(
            "| {label} | {:.1} µs | {added} |\n",
            median(&per_round[i])
        ));
    }
    for (who, bytes) in [
        ("", Some(&exported)),
        (" by the baseline build", baseline_exported.as_ref()),
    ] {
        if let Some(bytes) = bytes {
            let n = bytes.load(Ordering::Relaxed);
            s.push_str(&format!(
                "\nOTLP bytes exported{who}: {n} ({:.0} B per sampled request)\n",
                n as f64 / sampled as f64
            ));
        }
    }
    Ok(s)
}

//! The measurements, each taken through the proxy and straight to the
//! upstream in alternating rounds, so drift on a shared machine hits both.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::child::ProxyChild;

pub struct Bench {
    pub client: reqwest::Client,
    pub direct: String,
    pub proxied: String,
    pub quick: bool,
}

#[derive(Default)]
pub struct Report {
    pub latency: Vec<Latency>,
    pub streaming: Option<Streaming>,
    pub idle: Option<Idle>,
}

pub struct Latency {
    pub label: String,
    pub concurrency: usize,
    /// Proxy CPU (user + system) per proxied request.
    pub proxy_cpu: Duration,
    pub requests: usize,
    pub direct: (Duration, Duration),
    pub proxied: (Duration, Duration),
}

pub struct Streaming {
    pub chunks: usize,
    pub rounds: usize,
    /// Medians over the rounds.
    pub direct: f64,
    pub proxied: f64,
    /// Median of the per-round proxy/direct ratios.
    pub ratio: f64,
    /// The pair ratios' lower and upper quartiles: how far one pair strays.
    pub quartiles: (f64, f64),
}

pub struct Idle {
    pub streams: usize,
    pub rss_before: u64,
    pub rss_after: u64,
}

const SMALL: &str =
    r#"{"model":"gemma3:4b","prompt":"hi","stream":false,"options":{"num_predict":1}}"#;

async fn one(client: &reqwest::Client, base: &str) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let r = client
        .post(format!("{base}/api/generate"))
        .header("content-type", "application/json")
        .body(SMALL)
        .send()
        .await?;
    if r.status() != 200 {
        bail!("{base} answered {}", r.status());
    }
    r.bytes().await?;
    Ok(start.elapsed())
}

/// `per_worker` sequential requests from each of `concurrency` workers.
pub async fn run(
    b: &Arc<Bench>,
    base: &str,
    concurrency: usize,
    per_worker: usize,
) -> anyhow::Result<Vec<Duration>> {
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (b, base) = (b.clone(), base.to_string());
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::with_capacity(per_worker);
            for _ in 0..per_worker {
                out.push(one(&b.client, &base).await?);
            }
            anyhow::Ok(out)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    Ok(all)
}

fn percentiles(mut v: Vec<Duration>) -> (Duration, Duration) {
    v.sort();
    let at = |q: f64| v[((v.len() as f64 * q) as usize).min(v.len() - 1)];
    (at(0.50), at(0.99))
}

pub async fn latency(
    b: &Arc<Bench>,
    proxy: &ProxyChild,
    label: &str,
    concurrency: usize,
) -> anyhow::Result<Latency> {
    let per_worker = match (concurrency, b.quick) {
        (1, false) => 2000,
        (1, true) => 200,
        (_, false) => 100,
        (_, true) => 10,
    };
    let rounds = 3;
    run(b, &b.direct, concurrency, per_worker / 4 + 1).await?;
    run(b, &b.proxied, concurrency, per_worker / 4 + 1).await?;
    let (mut direct, mut proxied) = (Vec::new(), Vec::new());
    let mut cpu = Duration::ZERO;
    for _ in 0..rounds {
        direct.extend(run(b, &b.direct, concurrency, per_worker / rounds).await?);
        let before = proxy.cpu()?;
        proxied.extend(run(b, &b.proxied, concurrency, per_worker / rounds).await?);
        cpu += proxy.cpu()? - before;
    }
    Ok(Latency {
        label: label.to_string(),
        concurrency,
        proxy_cpu: cpu / proxied.len().max(1) as u32,
        requests: proxied.len(),
        direct: percentiles(direct),
        proxied: percentiles(proxied),
    })
}

/// Lines of one long NDJSON stream per second.
async fn stream_rate(b: &Bench, base: &str, chunks: usize) -> anyhow::Result<f64> {
    let body =
        format!(r#"{{"model":"gemma3:4b","prompt":"hi","options":{{"num_predict":{chunks}}}}}"#);
    let start = Instant::now();
    let mut r = b
        .client
        .post(format!("{base}/api/generate"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await?;
    let mut lines = 0;
    while let Some(c) = r.chunk().await? {
        lines += c.iter().filter(|b| **b == b'\n').count();
    }
    if lines != chunks + 1 {
        bail!("expected {} lines from {base}, got {lines}", chunks + 1);
    }
    Ok(lines as f64 / start.elapsed().as_secs_f64())
}

pub async fn streaming(b: &Arc<Bench>) -> anyhow::Result<Streaming> {
    let (chunks, rounds) = if b.quick { (2_000, 3) } else { (20_000, 41) };
    stream_rate(b, &b.direct, chunks / 10).await?;
    stream_rate(b, &b.proxied, chunks / 10).await?;
    // Many short back-to-back pairs: a burst of load from elsewhere on the
    // machine lands on one pair, and the median pair ratio ignores it.
    let (mut direct, mut proxied, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        let d = stream_rate(b, &b.direct, chunks).await?;
        let p = stream_rate(b, &b.proxied, chunks).await?;
        direct.push(d);
        proxied.push(p);
        ratios.push(p / d);
    }
    let quantile = |v: &mut Vec<f64>, q: f64| {
        v.sort_by(f64::total_cmp);
        v[((v.len() - 1) as f64 * q).round() as usize]
    };
    Ok(Streaming {
        chunks,
        rounds,
        direct: quantile(&mut direct, 0.5),
        proxied: quantile(&mut proxied, 0.5),
        ratio: quantile(&mut ratios, 0.5),
        quartiles: (quantile(&mut ratios, 0.25), quantile(&mut ratios, 0.75)),
    })
}

/// Opens `n` streams through the proxy that go silent after their first
/// token, and reads the proxy's resident memory before and after.
pub async fn idle_streams(b: &Arc<Bench>, proxy: &ProxyChild, n: usize) -> anyhow::Result<Idle> {
    // Warm the proxy's pools and allocator first, so the delta is the streams.
    run(b, &b.proxied, 64, 10).await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rss_before = proxy.rss()?;
    let mut open = Vec::with_capacity(n);
    for chunk in 0..n.div_ceil(100) {
        let mut batch = Vec::new();
        for _ in 0..100.min(n - chunk * 100) {
            let req = b
                .client
                .post(format!("{}/api/generate", b.proxied))
                .header("content-type", "application/json")
                .header("x-emulator-stall-after", "1")
                .body(r#"{"model":"gemma3:4b","prompt":"hi"}"#)
                .send();
            batch.push(tokio::spawn(async move {
                let mut r = req.await?;
                let first = r.chunk().await?.context("stream ended at once")?;
                anyhow::Ok((r, first.len()))
            }));
        }
        for t in batch {
            open.push(t.await??);
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_after = proxy.rss()?;
    drop(open);
    Ok(Idle {
        streams: n,
        rss_before,
        rss_after,
    })
}

fn us(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

fn signed_us(a: Duration, b: Duration) -> String {
    format!("{:+.0} µs", (a.as_secs_f64() - b.as_secs_f64()) * 1e6)
}

impl Report {
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        s.push_str("| small non-streaming requests | requests | direct p50 | proxy p50 | added p50 | direct p99 | proxy p99 | added p99 | proxy CPU per request |\n");
        s.push_str("|---|---|---|---|---|---|---|---|---|\n");
        for l in &self.latency {
            s.push_str(&format!(
                "| concurrency {}{} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
                l.concurrency,
                l.label,
                l.requests,
                us(l.direct.0),
                us(l.proxied.0),
                signed_us(l.proxied.0, l.direct.0),
                us(l.direct.1),
                us(l.proxied.1),
                signed_us(l.proxied.1, l.direct.1),
                us(l.proxy_cpu),
            ));
        }
        if let Some(st) = &self.streaming {
            s.push_str(&format!(
                "\n| streaming (one stream of {} NDJSON chunks, {} pairs of rounds) | direct | proxy | proxy / direct | middle half of the pairs |\n|---|---|---|---|---|\n| chunks per second (medians; ratio: median of the pairs) | {:.0} | {:.0} | {:.1} % | {:.1}–{:.1} % |\n",
                st.chunks,
                st.rounds,
                st.direct,
                st.proxied,
                100.0 * st.ratio,
                100.0 * st.quartiles.0,
                100.0 * st.quartiles.1
            ));
        }
        if let Some(i) = &self.idle {
            let delta = i.rss_after.saturating_sub(i.rss_before);
            s.push_str(&format!(
                "\n| idle streams through the proxy | proxy RSS before | proxy RSS after | per stream |\n|---|---|---|---|\n| {} | {:.1} MiB | {:.1} MiB | {:.1} KiB |\n",
                i.streams,
                i.rss_before as f64 / 1048576.0,
                i.rss_after as f64 / 1048576.0,
                delta as f64 / 1024.0 / i.streams as f64
            ));
        }
        s
    }
}

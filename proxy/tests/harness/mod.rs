//! Shared setup for the proxy's integration tests: an Ollama emulator with a
//! real OLLAMA_MODELS directory, a kiln-proxy in front of it on loopback
//! ports, and a client. Everything stops when the `Stack` is dropped.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use kiln_proxy::filter::{NoFilters, RequestFilter};
use kiln_proxy::{Config, RunningProxy};
use ollama_emulator::Emulator;

pub struct Stack {
    pub emulator: Emulator,
    pub proxy: Option<RunningProxy>,
    pub models: tempfile::TempDir,
    pub client: reqwest::Client,
}

/// An HTTP client for tests. With the whole workspace built together,
/// reqwest has rustls without a crypto provider (the packager picks ring
/// itself), and building a client would panic without one installed.
pub fn http_client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

/// A models directory with gemma3:4b and gemma3:1b in Ollama's layout.
pub fn models_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    ollama_emulator::models::write_fake_model(dir.path(), "gemma3:4b", 256).expect("write model");
    ollama_emulator::models::write_fake_model(dir.path(), "gemma3:1b", 128).expect("write model");
    dir
}

pub fn proxy_config(upstream: &str) -> Config {
    let mut c = Config {
        listen: Some("127.0.0.1:0".into()),
        upstream: upstream.into(),
        ..Config::default()
    };
    c.limits.shutdown_grace_s = 2;
    c
}

impl Stack {
    /// Emulator defaults: 1 ms per token, 4 slots; the proxy as configured by `tune`.
    pub async fn new(tune: impl FnOnce(&mut ollama_emulator::Config, &mut Config)) -> Stack {
        Stack::with_filter(tune, Arc::new(NoFilters)).await
    }

    /// The proxy with the plugin chain `specs`. The tests share one compile
    /// cache, so each plugin is compiled once, not once per test.
    pub async fn with_plugins(specs: &[kiln_proxy::plugins::PluginSpec]) -> Stack {
        let options = kiln_proxy::plugins::PluginOptions {
            cache_dir: std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../target/plugin-cache-tests"),
            ..Default::default()
        };
        let stage = kiln_proxy::plugins::load_chain(specs, &options).expect("plugins load");
        Stack::with_filter(|_, _| {}, stage).await
    }

    pub async fn with_filter(
        tune: impl FnOnce(&mut ollama_emulator::Config, &mut Config),
        filter: Arc<dyn RequestFilter>,
    ) -> Stack {
        let models = models_dir();
        let mut ec = ollama_emulator::Config {
            models_dir: Some(models.path().to_path_buf()),
            num_parallel: 4,
            token_delay: Duration::from_millis(1),
            ..Default::default()
        };
        let mut pc = proxy_config("http://127.0.0.1:1");
        tune(&mut ec, &mut pc);
        let emulator = Emulator::start(ec).await.expect("start emulator");
        pc.upstream = emulator.url();
        let proxy = kiln_proxy::start(pc, filter).await.expect("start proxy");
        // Readiness checks talk to the emulator too; let them finish so tests
        // can count the requests that are theirs.
        let ready = eventually(Duration::from_secs(5), || {
            proxy.state().readiness.status().0
        })
        .await;
        assert!(
            ready,
            "proxy not ready: {:?}",
            proxy.state().readiness.status()
        );
        Stack {
            emulator,
            proxy: Some(proxy),
            models,
            client: http_client(),
        }
    }

    pub fn proxy(&self) -> &RunningProxy {
        self.proxy.as_ref().expect("proxy running")
    }

    /// `http://127.0.0.1:PORT/path` on the proxy.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.proxy().url())
    }

    pub fn direct(&self, path: &str) -> String {
        format!("{}{path}", self.emulator.url())
    }

    /// POSTs JSON to the proxy.
    pub async fn post(&self, path: &str, body: &serde_json::Value) -> reqwest::Response {
        let req = self.client.post(self.url(path)).json(body);
        req.send().await.expect("request to the proxy")
    }

    /// POSTs `body` as caller `caller` (the `x-kiln-caller` header the
    /// example plugins tell callers apart by); the answer must be a 200:
    /// its text.
    pub async fn post_ok_as(&self, path: &str, caller: &str, body: &serde_json::Value) -> String {
        let req = self
            .client
            .post(self.url(path))
            .header("x-kiln-caller", caller);
        let resp = req.json(body).send().await.expect("request to the proxy");
        assert_eq!(resp.status(), 200, "{caller}: {path}");
        resp.text().await.expect("the answer's body")
    }

    /// POSTs JSON to the proxy and reads the answer's body, whatever its status.
    pub async fn post_text(&self, path: &str, body: &serde_json::Value) -> String {
        let resp = self.post(path, body).await;
        resp.text().await.expect("the answer's body")
    }

    /// GETs from the proxy.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        let req = self.client.get(self.url(path));
        req.send().await.expect("request to the proxy")
    }

    /// The proxy's `/metrics` text.
    pub async fn metrics(&self) -> String {
        self.get("/metrics")
            .await
            .text()
            .await
            .expect("metrics body")
    }

    pub fn stats(&self) -> ollama_emulator::StatsSnapshot {
        self.emulator.stats().snapshot()
    }

    pub async fn shutdown(mut self) {
        if let Some(p) = self.proxy.take() {
            p.shutdown().await.expect("proxy shutdown");
        }
    }
}

/// Polls `cond` every 10 ms for up to `within`.
/// Runs a Python script with `HOST` set to the proxy's URL (and `env`), for
/// at most `within`, and checks that it ran to its end: a script can also
/// stop early with exit status 0, so it must print `ok` last.
pub async fn assert_python_passes(
    stack: &Stack,
    script: &str,
    env: &[(&str, &str)],
    within: Duration,
) {
    let child = tokio::process::Command::new("python3")
        .arg("-c")
        .arg(format!("{script}\nprint(\"ok\")\n"))
        .env("HOST", stack.proxy().url())
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 not found; run scripts/setup");
    let out = tokio::time::timeout(within, child.wait_with_output())
        .await
        .expect("python client timed out")
        .expect("python client failed to run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "python client failed (missing packages? run scripts/setup):\n{stderr}"
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "ok",
        "{stderr}"
    );
}

pub async fn eventually(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < end {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cond()
}

/// Reads a streamed body chunk by chunk, with the time each arrived.
pub async fn chunks(mut resp: reqwest::Response) -> Vec<(Duration, bytes::Bytes)> {
    let start = std::time::Instant::now();
    let mut out = Vec::new();
    while let Some(c) = resp.chunk().await.expect("read chunk") {
        out.push((start.elapsed(), c));
    }
    out
}

/// The lines of an NDJSON body, parsed.
pub fn ndjson(body: &[u8]) -> Vec<serde_json::Value> {
    body.split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| {
            serde_json::from_slice(l)
                .unwrap_or_else(|e| panic!("bad NDJSON line {:?}: {e}", String::from_utf8_lossy(l)))
        })
        .collect()
}

/// The `data:` payloads of an SSE body, as sent (`[DONE]` included).
pub fn sse_data(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .map(str::to_owned)
        .collect()
}

/// The JSON payloads of an SSE body (`[DONE]` left out).
pub fn sse_json(body: &str) -> Vec<serde_json::Value> {
    body.split_terminator("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap_or_else(|e| panic!("{e}: {d}")))
        .collect()
}

/// The events of a typed SSE body (`/v1/responses`, `/v1/messages`): each
/// `event: NAME` line and its data.
pub fn events(body: &str) -> Vec<(String, serde_json::Value)> {
    body.split_terminator("\n\n")
        .map(|e| {
            let (name, data) = e.split_once('\n').expect("event: and data: lines");
            let name = name.strip_prefix("event: ").expect("the event line kept");
            let data = data.strip_prefix("data: ").expect("one data line");
            let v = serde_json::from_str(data).unwrap_or_else(|e| panic!("{e}: {data}"));
            (name.to_owned(), v)
        })
        .collect()
}

/// The data of the events named `name`, in order.
pub fn named<'a>(ev: &'a [(String, serde_json::Value)], name: &str) -> Vec<&'a serde_json::Value> {
    ev.iter()
        .filter(|(n, _)| n == name)
        .map(|(_, v)| v)
        .collect()
}

/// The `sequence_number` of every Responses event, in the order sent.
pub fn sequence_numbers(ev: &[(String, serde_json::Value)]) -> Vec<u64> {
    ev.iter()
        .map(|(n, v)| {
            v["sequence_number"]
                .as_u64()
                .unwrap_or_else(|| panic!("{n} has no sequence number: {v}"))
        })
        .collect()
}

/// A loopback upstream that answers every request with `body` of
/// `content_type`: for answers the emulator never gives (Ollama omits
/// `prompt_eval_count` when it is 0; a hostile upstream mislabels a stream).
pub async fn canned_upstream(content_type: &'static str, body: &'static str) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                // Read the head and the declared body, then answer and close.
                let mut seen = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    let Ok(n) = tokio::io::AsyncReadExt::read(&mut conn, &mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    seen.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&seen);
                    if let Some(end) = text.find("\r\n\r\n") {
                        let len = text[..end]
                            .lines()
                            .find_map(|l| {
                                let (k, v) = l.split_once(':')?;
                                k.eq_ignore_ascii_case("content-length")
                                    .then(|| v.trim().parse::<usize>().ok())?
                            })
                            .unwrap_or(0);
                        if seen.len() >= end + 4 + len {
                            break;
                        }
                    }
                }
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tokio::io::AsyncWriteExt::write_all(&mut conn, answer.as_bytes()).await;
                let _ = tokio::io::AsyncWriteExt::shutdown(&mut conn).await;
            });
        }
    });
    url
}

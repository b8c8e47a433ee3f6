//! Single-container mode: kiln-proxy starts and supervises `ollama serve`.
//!
//! This test binary is its own fake `ollama`: run as `spawn_mode serve` it
//! becomes the Ollama emulator configured from OLLAMA_HOST/OLLAMA_MODELS,
//! exactly as `ollama serve` reads them. So it has its own `main` instead of
//! the libtest harness (Cargo.toml: `harness = false`).

mod harness;

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use harness::eventually;
use kiln_proxy::RunningProxy;
use kiln_proxy::filter::NoFilters;
use serde_json::{Value, json};

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// This test binary, which is `ollama serve` when run as `spawn_mode serve`.
fn fake_ollama() -> PathBuf {
    std::env::current_exe().expect("current exe")
}

/// A proxy that runs `command serve` as its Ollama and preloads gemma3:4b;
/// returns it with the upstream URL it gave that Ollama. The models come
/// from OLLAMA_MODELS, which `main` sets for every spawned process.
async fn start_spawning(command: PathBuf) -> (RunningProxy, String) {
    let mut c = harness::proxy_config(&format!("http://127.0.0.1:{}", free_port()));
    c.ollama.spawn = true;
    c.ollama.command = command;
    c.ollama.args = vec!["serve".into()];
    c.ollama.preload = vec!["gemma3:4b".into()];
    c.ollama.startup_timeout_s = 20;
    let upstream = c.upstream.clone();
    let proxy = kiln_proxy::start(c, Arc::new(NoFilters))
        .await
        .expect("start");
    (proxy, upstream)
}

async fn get(client: &reqwest::Client, url: String) -> (u16, String) {
    match client.get(url).send().await {
        Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
        Err(e) => (0, e.to_string()),
    }
}

async fn get_json(client: &reqwest::Client, url: String) -> Value {
    let r = client.get(url).send().await.unwrap();
    r.json().await.unwrap()
}

/// Polls `{base}/healthz/ready` for up to 15 s.
async fn wait_ready(client: &reqwest::Client, base: &str) -> bool {
    let end = Instant::now() + Duration::from_secs(15);
    while Instant::now() < end {
        if get(client, format!("{base}/healthz/ready")).await.0 == 200 {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// A streamed generate at 30 ms a token, returned with its first chunk read.
async fn slow_stream(
    request: reqwest::RequestBuilder,
    body: Value,
) -> (reqwest::Response, Vec<u8>) {
    let request = request.header("x-emulator-delay-ms", "30").json(&body);
    let mut resp = request.send().await.unwrap();
    let first = resp.chunk().await.unwrap().unwrap().to_vec();
    (resp, first)
}

/// Reads a stream to its end, which it must reach although shutdown began;
/// returns all its NDJSON lines.
async fn finish_stream(mut resp: reqwest::Response, mut body: Vec<u8>) -> Vec<Value> {
    while let Some(c) = resp.chunk().await.expect("stream survives the shutdown") {
        body.extend_from_slice(&c);
    }
    harness::ndjson(&body)
}

async fn ready_only_after_preload_and_sigterm_drains_streams() {
    let (proxy, upstream) = start_spawning(fake_ollama()).await;
    let client = harness::http_client();

    let (status, body) = get(&client, format!("{}/healthz/ready", proxy.url())).await;
    assert_eq!(status, 503, "not ready before the model is loaded: {body}");
    assert_eq!(
        get(&client, format!("{}/healthz/live", proxy.url()))
            .await
            .0,
        200
    );
    assert!(
        wait_ready(&client, &proxy.url()).await,
        "never became ready"
    );

    // Ready means: /api/ps lists the preloaded model, pinned (keep_alive -1).
    let ps = get_json(&client, format!("{}/api/ps", proxy.url())).await;
    assert_eq!(ps["models"][0]["name"], "gemma3:4b", "{ps}");
    assert!(
        ps["models"][0]["expires_at"]
            .as_str()
            .unwrap()
            .starts_with("2318"),
        "{ps}"
    );

    // A stream in flight when shutdown starts runs to its end.
    let (resp, first) = slow_stream(
        client.post(format!("{}/api/generate", proxy.url())),
        json!({"model": "gemma3:4b", "prompt": "x", "options": {"num_predict": 20}}),
    )
    .await;
    let url = proxy.url();
    let shutdown = tokio::spawn(proxy.shutdown());
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        get(&client, format!("{url}/api/tags")).await.0,
        0,
        "no new connections while draining"
    );
    let lines = finish_stream(resp, first).await;
    assert_eq!(
        lines.last().unwrap()["done"],
        true,
        "the stream finished: {lines:?}"
    );
    shutdown.await.unwrap().expect("clean shutdown");
    // Ollama was stopped last.
    let port = upstream.rsplit(':').next().unwrap();
    assert!(
        std::net::TcpStream::connect(format!("127.0.0.1:{port}")).is_err(),
        "ollama serve still running"
    );
}

async fn a_dying_ollama_is_restarted() {
    let (proxy, upstream) = start_spawning(fake_ollama()).await;
    let client = harness::http_client();
    assert!(wait_ready(&client, &proxy.url()).await);

    // The process may die before its answer is out; what matters is that it dies.
    let _ = client
        .post(format!("{upstream}/emulator/crash"))
        .send()
        .await;
    let state = proxy.state().clone();
    assert!(
        eventually(Duration::from_secs(5), || !state.readiness.status().0).await,
        "readiness must drop while Ollama is down"
    );
    assert!(
        wait_ready(&client, &proxy.url()).await,
        "Ollama was not restarted and re-preloaded"
    );
    let (_, metrics) = get(&client, format!("{}/metrics", proxy.url())).await;
    assert!(
        metrics.contains("kiln_ollama_restarts_total 1"),
        "{metrics}"
    );
    let r = client
        .post(format!("{}/api/generate", proxy.url()))
        .json(&json!({"model": "gemma3:4b", "prompt": "x", "stream": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    proxy.shutdown().await.expect("clean shutdown");
}

async fn a_missing_ollama_binary_stops_the_proxy_with_a_clear_error() {
    let (proxy, _) = start_spawning("/nonexistent/ollama".into()).await;
    let r = tokio::time::timeout(
        Duration::from_secs(5),
        proxy.run_until(std::future::pending()),
    )
    .await
    .expect("the proxy must stop by itself");
    let err = format!("{:#}", r.expect_err("must fail"));
    assert!(err.contains("cannot start `/nonexistent/ollama`"), "{err}");
}

/// The real binary, flags and all: JSON logs on stderr (Ollama's lines
/// included, prompts never), and SIGTERM lets a running stream finish.
async fn the_binary_logs_json_and_drains_on_sigterm() {
    let listen = format!("127.0.0.1:{}", free_port());
    let upstream = format!("http://127.0.0.1:{}", free_port());
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_kiln-proxy"))
        .args([
            "--listen",
            &listen,
            "--upstream",
            &upstream,
            "--spawn-ollama",
            "--preload",
            "gemma3:4b",
        ])
        .arg("--ollama-command")
        .arg(fake_ollama())
        .env("GOOGLE_CLOUD_PROJECT", "proj-1")
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run kiln-proxy");
    let client = harness::http_client();
    let base = format!("http://{listen}");
    assert!(
        wait_ready(&client, &base).await,
        "kiln-proxy never became ready"
    );
    let (resp, first) = slow_stream(
        client
            .post(format!("{base}/api/generate"))
            .header("x-cloud-trace-context", "0123456789abcdef0123456789abcdef/1;o=1"),
        json!({"model": "gemma3:4b", "prompt": "SECRET-PROMPT-TEXT", "options": {"num_predict": 15}}),
    )
    .await;
    let pid = child.id().expect("pid") as libc::pid_t;
    // SAFETY: signalling a child process this test started.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
    assert_eq!(
        finish_stream(resp, first).await.last().unwrap()["done"],
        true
    );
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("exits")
        .unwrap();
    assert!(status.success(), "{status}");
    let mut stderr = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr)
        .await
        .unwrap();
    assert!(
        !stderr.contains("SECRET-PROMPT-TEXT"),
        "prompt text leaked into the log"
    );
    let lines: Vec<Value> = stderr
        .lines()
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {l}"))
        })
        .collect();
    assert!(
        lines
            .iter()
            .all(|l| l["severity"].is_string() && l["message"].is_string())
    );
    assert!(
        lines
            .iter()
            .any(|l| l["target"] == "ollama"
                && l["message"].as_str().unwrap().contains("Listening on")),
        "Ollama's own log lines are forwarded"
    );
    let access = lines
        .iter()
        .find(|l| l["httpRequest"]["requestUrl"] == "/api/generate")
        .expect("access log");
    assert_eq!(access["httpRequest"]["status"], 200);
    assert_eq!(access["outcome"], "completed");
    assert_eq!(access["completion_tokens"], 15);
    assert_eq!(
        access["logging.googleapis.com/trace"],
        "projects/proj-1/traces/0123456789abcdef0123456789abcdef"
    );
}

type Test = fn() -> Pin<Box<dyn Future<Output = ()>>>;

fn main() {
    if std::env::args().nth(1).as_deref() == Some("serve") {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        if let Err(e) = rt.block_on(ollama_emulator::serve_from_env()) {
            eprintln!("fake ollama: {e:#}");
            std::process::exit(1);
        }
        return;
    }
    let models = harness::models_dir();
    // SAFETY: set before any other thread exists; the spawned fake `ollama
    // serve` inherits these as it would from a container image.
    unsafe {
        std::env::set_var("OLLAMA_MODELS", models.path());
        std::env::set_var("EMULATOR_LOAD_DELAY_MS", "300");
        std::env::set_var("EMULATOR_TOKEN_DELAY_MS", "2");
    }
    let tests: &[(&str, Test)] = &[
        (
            "ready_only_after_preload_and_sigterm_drains_streams",
            || Box::pin(ready_only_after_preload_and_sigterm_drains_streams()),
        ),
        ("a_dying_ollama_is_restarted", || {
            Box::pin(a_dying_ollama_is_restarted())
        }),
        ("the_binary_logs_json_and_drains_on_sigterm", || {
            Box::pin(the_binary_logs_json_and_drains_on_sigterm())
        }),
        (
            "a_missing_ollama_binary_stops_the_proxy_with_a_clear_error",
            || Box::pin(a_missing_ollama_binary_stops_the_proxy_with_a_clear_error()),
        ),
    ];
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let mut failed = Vec::new();
    for (name, test) in tests {
        if filter.as_deref().is_some_and(|f| !name.contains(f)) {
            continue;
        }
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| rt.block_on(test())));
        drop(rt);
        println!(
            "test {name} ... {}",
            if result.is_ok() { "ok" } else { "FAILED" }
        );
        if result.is_err() {
            failed.push(*name);
        }
    }
    drop(models);
    if !failed.is_empty() {
        eprintln!("failed: {failed:?}");
        std::process::exit(1);
    }
}

//! Secure by default: nothing reaches Ollama that no policy saw, and no
//! policy can be switched off by the client. Each test drives a running
//! kiln-proxy in front of the Ollama emulator the way an attacker would.

mod example_plugins;
mod harness;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use example_plugins::plugin;
use harness::{Stack, eventually};
use kiln_proxy::filter::RequestFilter;
use kiln_proxy::plugins::PluginSpec;
use kiln_proxy::plugins::{PluginOptions, load_chain};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const KEY: &str = "sk-quickstart-key";

/// The README quickstart's plugin entry: `api-key` with the key's sha256,
/// no `routes` key.
fn quickstart() -> Vec<PluginSpec> {
    let digest = hex::encode(Sha256::digest(KEY.as_bytes()));
    vec![plugin(
        "api-key",
        json!({"keys": [{"name": "my-app", "sha256": digest}]}),
    )]
}

fn stage(specs: &[PluginSpec]) -> Arc<dyn RequestFilter> {
    let options = PluginOptions {
        cache_dir: std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../target/plugin-cache-tests"),
        ..Default::default()
    };
    load_chain(specs, &options).expect("plugins load")
}

/// Sends a raw HTTP/1.1 request (paths exactly as written, headers as
/// given) and reads the answer: status and body text.
async fn raw(addr: SocketAddr, request: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    read_answer(&mut s).await
}

/// Reads one answer: until its Content-Length is in, or EOF, or 10 s.
async fn read_answer(s: &mut (impl AsyncReadExt + Unpin)) -> (u16, String) {
    let mut out = Vec::new();
    let complete = |out: &[u8]| {
        let text = String::from_utf8_lossy(out);
        let Some((head, body)) = text.split_once("\r\n\r\n") else {
            return false;
        };
        head.lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().to_owned())
            })
            .and_then(|v| v.parse::<usize>().ok())
            .is_some_and(|n| body.len() >= n)
    };
    let read = async {
        let mut buf = [0u8; 8192];
        while !complete(&out) {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(10), read).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    (status, text)
}

/// Every route kiln-proxy forwards, with a method it takes and a body.
fn every_route() -> Vec<(reqwest::Method, &'static str, Value)> {
    use reqwest::Method;
    let chat = json!({"model": "gemma3:4b", "messages": [{"role": "user", "content": "hi"}], "stream": false});
    let gen_ = json!({"model": "gemma3:4b", "prompt": "hi", "stream": false});
    let embed = json!({"model": "gemma3:4b", "input": "hi"});
    vec![
        (Method::GET, "/", Value::Null),
        (Method::GET, "/api/version", Value::Null),
        (Method::GET, "/api/tags", Value::Null),
        (Method::GET, "/api/ps", Value::Null),
        (Method::POST, "/api/show", json!({"model": "gemma3:4b"})),
        (Method::GET, "/v1/models", Value::Null),
        (Method::GET, "/v1/models/gemma3:4b", Value::Null),
        (Method::POST, "/api/generate", gen_),
        (Method::POST, "/api/chat", chat.clone()),
        (Method::POST, "/api/embed", embed.clone()),
        (Method::POST, "/v1/chat/completions", chat.clone()),
        (Method::POST, "/v1/embeddings", embed),
        (
            Method::POST,
            "/v1/messages",
            json!({"model": "gemma3:4b", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}),
        ),
    ]
}

fn management_routes() -> Vec<(reqwest::Method, &'static str)> {
    use reqwest::Method;
    vec![
        (Method::POST, "/api/pull"),
        (Method::POST, "/api/push"),
        (Method::POST, "/api/create"),
        (Method::POST, "/api/copy"),
        (Method::DELETE, "/api/delete"),
        (Method::POST, "/api/blobs/sha256:0123abcd"),
    ]
}

async fn send(
    stack: &Stack,
    method: reqwest::Method,
    path: &str,
    body: &Value,
    key: Option<&str>,
) -> reqwest::Response {
    let mut req = stack.client.request(method, stack.url(path));
    if !body.is_null() {
        req = req.json(body);
    }
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    req.send().await.expect("the proxy answers")
}

#[tokio::test]
async fn management_routes_are_refused_by_default_naming_the_key() {
    let stack = Stack::new(|_, _| {}).await;
    let before = stack.stats().requests;
    for (method, path) in management_routes() {
        let r = send(&stack, method, path, &json!({"model": "gemma3:4b"}), None).await;
        assert_eq!(r.status(), 403, "{path}");
        let v: Value = r.json().await.unwrap();
        let msg = v["error"].as_str().unwrap_or_default();
        assert!(msg.contains("allow_management_routes"), "{path}: {v}");
    }
    assert_eq!(stack.stats().requests, before, "Ollama saw none of them");
    stack.shutdown().await;
}

#[tokio::test]
async fn quickstart_config_lets_nothing_through_without_the_key() {
    let stack = Stack::with_filter(|_, _| {}, stage(&quickstart())).await;
    let before = stack.stats().requests;
    for (method, path, body) in every_route() {
        let r = send(&stack, method.clone(), path, &body, None).await;
        assert_eq!(r.status(), 401, "{method} {path} without the key");
    }
    for (method, path) in management_routes() {
        let r = send(&stack, method, path, &json!({}), Some(KEY)).await;
        assert_eq!(r.status(), 403, "{path} is refused even with the key");
    }
    assert_eq!(stack.stats().requests, before, "Ollama saw nothing");
    for (method, path, body) in every_route() {
        let r = send(&stack, method.clone(), path, &body, Some(KEY)).await;
        // The emulator has no /v1/models/:model; the proxy let it through.
        let expected = if path.starts_with("/v1/models/") {
            404
        } else {
            200
        };
        assert_eq!(r.status(), expected, "{method} {path} with the key");
    }
    stack.shutdown().await;
}

#[tokio::test]
async fn enabled_management_routes_still_need_the_key() {
    let stack = Stack::with_filter(
        |_, p| p.allow_management_routes = true,
        stage(&quickstart()),
    )
    .await;
    let before = stack.stats().requests;
    let body = json!({"model": "gemma3:4b"});
    for (method, path) in management_routes() {
        let r = send(&stack, method, path, &body, None).await;
        assert_eq!(r.status(), 401, "{path}");
    }
    assert_eq!(stack.stats().requests, before);
    let r = send(
        &stack,
        reqwest::Method::DELETE,
        "/api/delete",
        &body,
        Some(KEY),
    )
    .await;
    // The emulator has no delete: what matters is that the request reached it.
    assert_ne!(r.status(), 403);
    assert_eq!(stack.stats().requests, before + 1, "forwarded with the key");
    stack.shutdown().await;
}

#[tokio::test]
async fn routes_all_means_every_route_and_inference_opts_out() {
    let mut all = quickstart();
    all[0].routes = Some(vec!["all".into()]);
    let stack = Stack::with_filter(|_, _| {}, stage(&all)).await;
    assert_eq!(stack.get("/api/tags").await.status(), 401);
    stack.shutdown().await;

    let mut inference = quickstart();
    inference[0].routes = Some(vec!["inference".into()]);
    let stack = Stack::with_filter(|_, _| {}, stage(&inference)).await;
    assert_eq!(stack.get("/api/tags").await.status(), 200);
    let r = send(
        &stack,
        reqwest::Method::POST,
        "/api/generate",
        &json!({"model": "gemma3:4b", "prompt": "x"}),
        None,
    )
    .await;
    assert_eq!(r.status(), 401);
    stack.shutdown().await;
}

#[tokio::test]
async fn every_example_policy_lets_a_keyed_caller_list_models() {
    // Plugins that judge bodies (models, prompts, caps, budgets) have nothing
    // to judge on /api/tags and must not refuse it for want of a body.
    let mut chain = quickstart();
    chain.extend([
        plugin("model-allowlist", json!({"allow": ["gemma3:4b"]})),
        plugin("token-cap", json!({"max_tokens": 64})),
        plugin("prompt-guard", json!({"deny": ["forbidden"]})),
        plugin("system-prompt", json!({"prompt": "Be brief."})),
        plugin(
            "rate-limit",
            json!({"requests_per_minute": 100, "burst": 100}),
        ),
        plugin("token-budget", json!({"budget": 100000, "window_s": 60})),
        plugin("output-guard", json!({"patterns": ["secret"]})),
    ]);
    let stack = Stack::with_filter(|_, _| {}, stage(&chain)).await;
    for path in ["/api/tags", "/api/ps", "/v1/models", "/api/version"] {
        let r = send(&stack, reqwest::Method::GET, path, &Value::Null, Some(KEY)).await;
        assert_eq!(r.status(), 200, "{path}: {}", r.text().await.unwrap());
    }
    let r = send(
        &stack,
        reqwest::Method::POST,
        "/api/show",
        &json!({"model": "gemma3:4b"}),
        Some(KEY),
    )
    .await;
    assert_eq!(r.status(), 200);
    stack.shutdown().await;
}

#[tokio::test]
async fn non_inference_requests_cannot_take_inference_slots() {
    let stack = Stack::new(|_, p| {
        p.limits.max_other_in_flight = 1;
        p.limits.max_in_flight = 1;
    })
    .await;
    // A /api/show whose body never finishes holds the one non-inference slot.
    let mut slow = TcpStream::connect(stack.proxy().addr()).await.unwrap();
    slow.write_all(
        b"POST /api/show HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"model\":",
    )
    .await
    .unwrap();
    assert!(
        eventually(Duration::from_secs(5), || stack.stats().requests >= 1).await,
        "the slow request reached Ollama"
    );
    let r = stack.get("/api/tags").await;
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "1");
    let v: Value = r.json().await.unwrap();
    assert!(
        v["error"].as_str().unwrap().contains("max_other_in_flight"),
        "{v}"
    );
    let r = stack
        .post(
            "/api/generate",
            &json!({"model": "gemma3:4b", "prompt": "hi", "stream": false}),
        )
        .await;
    assert_eq!(r.status(), 200, "inference keeps its slot");
    drop(slow);
    let mut freed = false;
    for _ in 0..50 {
        if stack.get("/api/tags").await.status() == 200 {
            freed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(freed, "the slot is freed when the slow client leaves");
    stack.shutdown().await;
}

#[tokio::test]
async fn a_trickled_body_ends_at_the_request_deadline() {
    let stack = Stack::new(|_, p| p.limits.request_timeout_s = 2).await;
    let before = stack.stats().requests;
    let s = TcpStream::connect(stack.proxy().addr()).await.unwrap();
    let (mut rx, mut tx) = s.into_split();
    tx.write_all(b"POST /api/generate HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{")
        .await
        .unwrap();
    let start = Instant::now();
    // One byte every 500 ms: never idle, never done.
    let trickle = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            if tx.write_all(b" ").await.is_err() {
                break;
            }
        }
    });
    let (status, text) = read_answer(&mut rx).await;
    trickle.abort();
    assert_eq!(status, 408, "{text}");
    assert!(text.contains("limits.request_timeout_s"), "{text}");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(stack.stats().requests, before);
    stack.shutdown().await;
}

#[tokio::test]
async fn bodies_in_memory_are_bounded_across_requests() {
    let stack = Stack::new(|_, p| {
        p.limits.max_body_bytes = 1 << 20;
        p.limits.max_buffered_bytes = 1_500_000;
    })
    .await;
    // A client that sends 900 KB of a 1 MB body and stalls.
    let mut stalled = TcpStream::connect(stack.proxy().addr()).await.unwrap();
    stalled
        .write_all(b"POST /api/generate HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n")
        .await
        .unwrap();
    stalled.write_all(&vec![b' '; 900_000]).await.unwrap();
    let budget = stack.proxy().state().body_budget.clone();
    assert!(eventually(Duration::from_secs(5), || budget.used() >= 900_000).await);

    // The next body does not fit beside it: refused before it is read.
    let (status, text) = raw(
        stack.proxy().addr(),
        "POST /api/generate HTTP/1.1\r\nHost: x\r\nContent-Length: 700000\r\n\r\n",
    )
    .await;
    assert_eq!(status, 503, "{text}");
    assert!(
        text.to_ascii_lowercase().contains("retry-after: 1"),
        "{text}"
    );
    assert!(text.contains("max_buffered_bytes"), "{text}");

    let prompt = "x".repeat(700_000);
    let body = json!({"model": "gemma3:4b", "prompt": prompt, "stream": false});

    drop(stalled);
    assert!(eventually(Duration::from_secs(5), || budget.used() == 0).await);
    assert_eq!(stack.post("/api/generate", &body).await.status(), 200);
    assert_eq!(budget.used(), 0, "given back after the forward");
    stack.shutdown().await;
}

#[tokio::test]
async fn foreign_origins_are_refused_in_the_clients_format() {
    let stack = Stack::new(|_, p| p.allowed_origins = vec!["https://app.example".into()]).await;
    let before = stack.stats().requests;
    let gen_ = json!({"model": "gemma3:4b", "prompt": "hi", "stream": false});
    // A web page's `text/plain` POST needs no preflight: it must still be refused.
    let r = stack
        .client
        .post(stack.url("/api/pull"))
        .header("origin", "https://evil.example")
        .header("content-type", "text/plain")
        .body(r#"{"model":"llama3"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = stack
        .client
        .post(stack.url("/api/generate"))
        .header("origin", "https://evil.example")
        .json(&gen_)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let v: Value = r.json().await.unwrap();
    assert!(
        v["error"].as_str().unwrap().contains("allowed_origins"),
        "{v}"
    );
    let r = stack
        .client
        .post(stack.url("/v1/chat/completions"))
        .header("origin", "null")
        .json(&json!({"model": "gemma3:4b", "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "authentication_error", "{v}");
    assert_eq!(stack.stats().requests, before, "Ollama saw none of them");

    let r = stack
        .client
        .post(stack.url("/api/generate"))
        .header("origin", "https://app.example")
        .json(&gen_)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        stack.post("/api/generate", &gen_).await.status(),
        200,
        "no Origin, no browser"
    );
    stack.shutdown().await;
}

#[tokio::test]
async fn a_client_connection_header_cannot_strip_a_plugin_header() {
    let stack = Stack::with_filter(|_, _| {}, stage(&quickstart())).await;
    let body = r#"{"model":"gemma3:4b","prompt":"hi","stream":false}"#;
    let (status, text) = raw(
        stack.proxy().addr(),
        &format!(
            "POST /api/generate HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n\
             Connection: close, x-kiln-caller\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(
        stack.stats().last_header("x-kiln-caller"),
        Some("my-app"),
        "the caller api-key named reaches Ollama"
    );
    stack.shutdown().await;
}

#[tokio::test]
async fn unnormalized_paths_never_reach_ollama() {
    let stack = Stack::new(|_, _| {}).await;
    let before = stack.stats().requests;
    let addr = stack.proxy().addr();
    for (method, path) in [
        ("GET", "/v1/models/../../api/tags"),
        ("POST", "/api/blobs/../generate"),
        ("POST", "/api/blobs/..%2Fgenerate"),
        ("GET", "/v1/models/%2e%2e/%2e%2e/api/tags"),
        ("POST", "/api//generate"),
    ] {
        let body = r#"{"model":"gemma3:4b","prompt":"hi"}"#;
        let (status, text) = raw(
            addr,
            &format!(
                "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            ),
        )
        .await;
        assert!(status == 400 || status == 404, "{path}: {text}");
    }
    assert_eq!(stack.stats().requests, before);
    stack.shutdown().await;
}

#[tokio::test]
async fn metrics_need_the_token_when_one_is_set() {
    let stack = Stack::new(|_, p| p.metrics_token = Some("scrape-me".into())).await;
    assert_eq!(stack.get("/metrics").await.status(), 401);
    let r = stack
        .client
        .get(stack.url("/metrics"))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = stack
        .client
        .get(stack.url("/metrics"))
        .bearer_auth("scrape-me")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("kiln_in_flight"));
    stack.shutdown().await;
}

fn zstd(data: &[u8]) -> Vec<u8> {
    ruzstd::encoding::compress_to_vec(data, ruzstd::encoding::CompressionLevel::Fastest)
}

fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

#[tokio::test]
async fn compressed_bodies_are_decoded_before_policy() {
    let guard = vec![plugin("prompt-guard", json!({"deny": ["forbidden words"]}))];
    let stack = Stack::with_filter(|_, p| p.limits.max_body_bytes = 1 << 20, stage(&guard)).await;
    let post = |path: &str, encoding: &str, body: Vec<u8>| {
        stack
            .client
            .post(stack.url(path))
            .header("content-type", "application/json")
            .header("content-encoding", encoding)
            .body(body)
            .send()
    };
    let chat = |text: &str| {
        json!({"model": "gemma3:4b", "stream": false, "messages": [{"role": "user", "content": text}]})
            .to_string()
            .into_bytes()
    };
    for (enc, pack) in [("zstd", zstd as fn(&[u8]) -> Vec<u8>), ("gzip", gzip)] {
        let r = post("/v1/chat/completions", enc, pack(&chat("hello")))
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{enc}");
        let v: Value = r.json().await.unwrap();
        assert!(v["choices"][0]["message"]["content"].is_string(), "{v}");
        assert_eq!(
            stack.stats().last_header("content-encoding"),
            None,
            "forwarded decoded"
        );

        let r = post(
            "/v1/chat/completions",
            enc,
            pack(&chat("say the forbidden words")),
        )
        .await
        .unwrap();
        assert_eq!(r.status(), 400, "{enc}: the policy saw the decoded prompt");
    }
    let r = post(
        "/v1/messages",
        "zstd",
        zstd(json!({"model": "gemma3:4b", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}).to_string().as_bytes()),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);

    // A bomb: 64 MiB of spaces in a few KB.
    let before = stack.stats().requests;
    let mut bomb = br#"{"model":"gemma3:4b","messages":[],"x":""#.to_vec();
    bomb.extend(std::iter::repeat_n(b' ', 64 << 20));
    let packed = zstd(&bomb);
    assert!(packed.len() < 1 << 20);
    let r = post("/v1/chat/completions", "zstd", packed).await.unwrap();
    assert_eq!(r.status(), 413);
    let v: Value = r.json().await.unwrap();
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_body_bytes"),
        "{v}"
    );

    // Ollama decodes nothing on its own /api routes: neither does the proxy.
    let r = post("/api/chat", "zstd", zstd(&chat("hi"))).await.unwrap();
    assert_eq!(r.status(), 415);
    assert_eq!(stack.stats().requests, before);
    stack.shutdown().await;
}

/// The cache entries in `dir`, by name.
fn entries(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    v.retain(|p| p.extension().is_some_and(|e| e == "cwasm"));
    v.sort();
    v
}

fn from_cache(stage: &kiln_proxy::plugins::PluginStage) -> bool {
    stage.chain().plugins().next().unwrap().info.from_cache
}

#[tokio::test]
async fn a_swapped_cache_entry_cannot_stand_in_for_a_pinned_plugin() {
    let dir = tempfile::tempdir().unwrap();
    let options = PluginOptions {
        cache_dir: dir.path().join("cache"),
        ..Default::default()
    };
    let mut key = quickstart();
    key[0].sha256 = Some(hex::encode(Sha256::digest(
        std::fs::read(&key[0].path).unwrap(),
    )));
    assert!(!from_cache(&load_chain(&key, &options).unwrap()));
    let key_entry = entries(&options.cache_dir);
    assert_eq!(key_entry.len(), 1);
    let hello = [plugin("hello", json!({}))];
    load_chain(&hello, &options).unwrap();
    let hello_entry: Vec<_> = entries(&options.cache_dir)
        .into_iter()
        .filter(|p| *p != key_entry[0])
        .collect();
    // Someone puts the allow-everything plugin's machine code under api-key's name.
    std::fs::copy(&hello_entry[0], &key_entry[0]).unwrap();

    let stage = load_chain(&key, &options).unwrap();
    assert!(!from_cache(&stage), "the swapped entry was not loaded");
    let stack = Stack::with_filter(|_, _| {}, stage).await;
    assert_eq!(
        stack.get("/api/tags").await.status(),
        401,
        "api-key still runs"
    );
    stack.shutdown().await;
    assert!(
        from_cache(&load_chain(&key, &options).unwrap()),
        "the entry was compiled again and is used from now on"
    );
}

#[test]
fn a_cache_dir_others_can_write_is_not_used() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    std::fs::create_dir(&cache).unwrap();
    std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o777)).unwrap();
    let options = PluginOptions {
        cache_dir: cache.clone(),
        ..Default::default()
    };
    let hello = [plugin("hello", json!({}))];
    load_chain(&hello, &options).unwrap();
    assert!(!from_cache(&load_chain(&hello, &options).unwrap()));
    assert!(
        entries(&cache).is_empty(),
        "nothing written where others can write"
    );

    // A fresh directory is made private.
    let fresh = dir.path().join("fresh/cache");
    let options = PluginOptions {
        cache_dir: fresh.clone(),
        ..Default::default()
    };
    load_chain(&hello, &options).unwrap();
    let mode = std::fs::metadata(&fresh).unwrap().permissions().mode();
    assert_eq!(mode & 0o077, 0, "{mode:o}");
    assert!(from_cache(&load_chain(&hello, &options).unwrap()));
}

//! Failures on either side of the proxy: Ollama down, dying or silent
//! mid-stream, requests that run too long, and clients that trickle.

mod harness;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use harness::{Stack, ndjson};
use serde_json::{Value, json};

fn generate(prompt: &str) -> Value {
    json!({"model": "gemma3:4b", "prompt": prompt})
}

#[tokio::test]
async fn upstream_down_is_502_in_the_clients_format() {
    let stack = Stack::new(|_, _| {}).await;
    let url = stack.url("");
    let Stack {
        emulator,
        proxy,
        models,
        client,
    } = stack;
    emulator.shutdown().await;
    let r = client
        .post(format!("{url}/api/generate"))
        .json(&generate("hi"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    let v: Value = r.json().await.unwrap();
    assert!(v["error"].as_str().unwrap().contains("unreachable"), "{v}");
    let r = client
        .post(format!("{url}/v1/chat/completions"))
        .json(&json!({"model": "gemma3:4b", "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["type"],
        "api_error"
    );
    proxy.unwrap().shutdown().await.unwrap();
    drop(models);
}

#[tokio::test]
async fn upstream_dying_mid_stream_ends_with_an_error_line() {
    let stack = Stack::new(|_, _| {}).await;
    let started = Instant::now();
    let r = stack
        .client
        .post(stack.url("/api/generate"))
        .header("x-emulator-fail-after", "3")
        .json(&generate("hi"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body = r
        .bytes()
        .await
        .expect("the stream ends cleanly, not with a hang or reset");
    let lines = ndjson(&body);
    assert_eq!(lines.len(), 4, "3 tokens, then the error: {lines:?}");
    assert!(
        lines[3]["error"].as_str().unwrap().contains("broke off"),
        "{:?}",
        lines[3]
    );
    assert!(started.elapsed() < Duration::from_secs(5));

    let r = stack
        .client
        .post(stack.url("/v1/chat/completions"))
        .header("x-emulator-fail-after", "2")
        .json(&json!({"model": "gemma3:4b", "stream": true, "messages": [{"role": "user", "content": "x"}]}))
        .send()
        .await
        .unwrap();
    let body = r.text().await.unwrap();
    let last = body.split("\n\n").filter(|e| !e.is_empty()).last().unwrap();
    let v: Value = serde_json::from_str(last.strip_prefix("data: ").unwrap()).unwrap();
    assert_eq!(v["error"]["type"], "api_error");

    // Ollama's own mid-stream error line passes through untouched.
    let r = stack
        .client
        .post(stack.url("/api/chat"))
        .header("x-emulator-error-after", "1")
        .json(&json!({"model": "gemma3:4b", "messages": [{"role": "user", "content": "x"}]}))
        .send()
        .await
        .unwrap();
    let lines = ndjson(&r.bytes().await.unwrap());
    assert_eq!(
        lines.last().unwrap()["error"],
        "model runner has unexpectedly stopped"
    );
    stack.shutdown().await;
}

#[tokio::test]
async fn request_timeout_ends_a_stream_that_runs_too_long() {
    let stack = Stack::new(|e, p| {
        e.token_delay = Duration::from_millis(300);
        p.limits.request_timeout_s = 1;
    })
    .await;
    let started = Instant::now();
    let r = stack.post("/api/generate", &generate("hi")).await;
    let lines = ndjson(&r.bytes().await.unwrap());
    assert!(
        lines.last().unwrap()["error"]
            .as_str()
            .unwrap()
            .contains("timed out"),
        "{lines:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(
        harness::eventually(Duration::from_secs(2), || stack.stats().cancelled == 1).await,
        "the upstream generation is cancelled"
    );
    stack.shutdown().await;
}

#[tokio::test]
async fn slow_loris_headers_are_cut_off() {
    let stack = Stack::new(|_, p| p.limits.header_timeout_s = 1).await;
    let addr = stack.proxy().addr();
    let started = Instant::now();
    let outcome = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"POST /api/generate HTTP/1.1\r\nHost: x\r\n")
            .unwrap();
        let mut buf = [0u8; 512];
        // Trickle one header byte every 200 ms; the server must give up on the whole head.
        for _ in 0..20 {
            std::thread::sleep(Duration::from_millis(200));
            if s.write_all(b"X").is_err() {
                return "closed";
            }
            s.set_nonblocking(true).unwrap();
            let r = s.read(&mut buf);
            s.set_nonblocking(false).unwrap();
            match r {
                Ok(0) => return "closed",
                Ok(_) => return "answered",
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => return "closed",
            }
        }
        "still open"
    })
    .await
    .unwrap();
    assert!(outcome == "closed" || outcome == "answered", "{outcome}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    // The proxy still serves others.
    let r = stack.get("/api/version").await;
    assert_eq!(r.status(), 200);
    stack.shutdown().await;
}

#[tokio::test]
async fn silence_from_either_side_hits_the_idle_timeout() {
    let stack = Stack::new(|_, p| p.limits.idle_timeout_s = 1).await;
    // Ollama goes quiet mid-stream: the client gets an error line, not a hang.
    let started = Instant::now();
    let r = stack
        .client
        .post(stack.url("/api/generate"))
        .header("x-emulator-stall-after", "2")
        .json(&generate("hi"))
        .send()
        .await
        .unwrap();
    let lines = ndjson(&r.bytes().await.unwrap());
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert!(
        lines[2]["error"].as_str().unwrap().contains("sent nothing"),
        "{lines:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    assert!(harness::eventually(Duration::from_secs(2), || stack.stats().cancelled == 1).await);

    // A client that stops sending its body: 408, and Ollama never hears of it.
    let addr = stack.proxy().addr();
    let answer = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(
            b"POST /api/generate HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"model\":",
        )
        .unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    })
    .await
    .unwrap();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("no body data"), "{answer}");
    stack.shutdown().await;
}

/// Opens a connection with a small receive buffer, sends a streamed
/// /api/generate, reads the first bytes of the answer and then stops reading.
async fn stop_reading_after_headers(stack: &Stack) -> tokio::net::TcpStream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = stack.proxy().addr();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut conn = socket.connect(addr).await.unwrap();
    let body = generate("Why is the sky blue?").to_string();
    let head = format!(
        "POST /api/generate HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    let mut first = [0u8; 64];
    let n = conn.read(&mut first).await.unwrap();
    assert!(
        first[..n].starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&first[..n])
    );
    conn
}

#[tokio::test]
async fn a_client_that_stops_reading_loses_its_slot_at_the_request_deadline() {
    // A long, fast answer fills the socket buffers within milliseconds;
    // then only the deadline can end the request.
    let stack = Stack::new(|e, p| {
        e.token_delay = Duration::ZERO;
        e.default_tokens = 10_000_000;
        p.limits.request_timeout_s = 3;
        p.limits.idle_timeout_s = 600;
    })
    .await;
    let started = Instant::now();
    let _held = stop_reading_after_headers(&stack).await;
    let admission = &stack.proxy().state().admission;
    assert_eq!(admission.in_flight(), 1);
    let freed = harness::eventually(Duration::from_secs(10), || admission.in_flight() == 0).await;
    assert!(
        freed,
        "the stalled client still holds its slot after 10 s (request_timeout_s = 3)"
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(2500),
        "freed before the deadline: {took:?}"
    );
    // The generation is cancelled upstream too, so Ollama's slot is free.
    let cancelled =
        harness::eventually(Duration::from_secs(5), || stack.stats().cancelled >= 1).await;
    assert!(
        cancelled,
        "Ollama's generation was not cancelled: {:?}",
        stack.stats()
    );
    stack.shutdown().await;
}

#[tokio::test]
async fn a_client_that_stops_reading_loses_its_slot_after_the_idle_timeout() {
    let stack = Stack::new(|e, p| {
        e.token_delay = Duration::ZERO;
        e.default_tokens = 10_000_000;
        p.limits.request_timeout_s = 600;
        p.limits.idle_timeout_s = 2;
    })
    .await;
    let started = Instant::now();
    let _held = stop_reading_after_headers(&stack).await;
    let admission = &stack.proxy().state().admission;
    let freed = harness::eventually(Duration::from_secs(10), || admission.in_flight() == 0).await;
    assert!(
        freed,
        "the stalled client still holds its slot after 10 s (idle_timeout_s = 2)"
    );
    assert!(started.elapsed() >= Duration::from_millis(1500));
    stack.shutdown().await;
}

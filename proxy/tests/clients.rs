//! The official clients work unchanged through the proxy: PyPI `ollama`
//! (generate, chat, streaming and not), PyPI `openai` (chat completions,
//! streaming and not), and the tutorial's `curl`.

mod harness;

use std::time::Duration;

use harness::Stack;

/// A Python script of the `openai` and `ollama` clients against the proxy.
async fn assert_python_passes(stack: &Stack, script: &str) {
    let env = [("OPENAI_API_KEY", "unused-by-ollama")];
    harness::assert_python_passes(stack, script, &env, Duration::from_secs(60)).await;
}

/// Runs `curl` as the tutorial does, plus `extra` flags, to POST `body` to
/// the proxy's /api/generate; checks that it succeeded and returns stdout.
async fn curl_generate(stack: &Stack, extra: &[&str], body: &str) -> Vec<u8> {
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--no-buffer", "--max-time", "20"])
        .args(extra)
        .arg(stack.url("/api/generate"))
        .args(["-d", body])
        .kill_on_drop(true)
        .output()
        .await
        .expect("curl not found; install curl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[tokio::test]
async fn python_ollama_client_works_through_the_proxy() {
    let stack = Stack::new(|_, _| {}).await;
    assert_python_passes(
        &stack,
        r#"
import os, ollama
c = ollama.Client(host=os.environ["HOST"])
r = c.generate(model="gemma3:4b", prompt="Why is the sky blue?")
assert r.done and r.response.startswith("The sky is blue"), r
parts = [p.response for p in c.generate(model="gemma3:4b", prompt="Why?", stream=True)]
assert len(parts) == 9 and "".join(parts).startswith("The sky"), parts
r = c.chat(model="gemma3:4b", messages=[{"role": "user", "content": "hi"}])
assert r.message.role == "assistant" and r.message.content.startswith("The sky"), r
chunks = list(c.chat(model="gemma3:4b", messages=[{"role": "user", "content": "hi"}], stream=True))
assert chunks[-1].done and chunks[-1].eval_count == 8, chunks[-1]
names = sorted(m.model for m in c.list().models)
assert names == ["gemma3:1b", "gemma3:4b"], names
try:
    c.generate(model="gemma3:27b", prompt="x")
    raise SystemExit("expected an error for a missing model")
except ollama.ResponseError as e:
    assert e.status_code == 404 and "not found" in e.error, (e.status_code, e.error)
"#,
    )
    .await;
    stack.shutdown().await;
}

#[tokio::test]
async fn python_openai_client_works_through_the_proxy() {
    let stack = Stack::new(|_, p| {
        p.limits.max_in_flight = 1;
        p.limits.max_queue = 0;
    })
    .await;
    assert_python_passes(
        &stack,
        r#"
import os, openai
c = openai.OpenAI(base_url=os.environ["HOST"] + "/v1", max_retries=0)
r = c.chat.completions.create(model="gemma3:4b", messages=[{"role": "user", "content": "hi"}])
assert r.choices[0].message.content.startswith("The sky is blue"), r
text = ""
for chunk in c.chat.completions.create(model="gemma3:4b", messages=[{"role": "user", "content": "hi"}], stream=True):
    if chunk.choices and chunk.choices[0].delta.content:
        text += chunk.choices[0].delta.content
assert text.startswith("The sky is blue"), text
try:
    c.chat.completions.create(model="nope:1b", messages=[{"role": "user", "content": "hi"}])
    raise SystemExit("expected NotFoundError")
except openai.NotFoundError as e:
    assert "not found" in e.message, e.message
"#,
    )
    .await;
    stack.shutdown().await;
}

#[tokio::test]
async fn tutorial_curl_streams_token_lines() {
    let stack = Stack::new(|e, _| e.token_delay = Duration::from_millis(20)).await;
    let out = curl_generate(
        &stack,
        &[],
        r#"{"model":"gemma3:4b","prompt":"Why is the sky blue?"}"#,
    )
    .await;
    let lines = harness::ndjson(&out);
    assert_eq!(lines.len(), 9, "8 token lines and the final chunk");
    assert!(
        lines[..8]
            .iter()
            .all(|l| l["done"] == false && l["response"].is_string())
    );
    assert_eq!(lines[8]["done"], true);
    assert_eq!(lines[8]["done_reason"], "stop");

    // A long prompt: curl asks `Expect: 100-continue` first, which the proxy
    // answers itself and does not pass on to Ollama.
    let long =
        serde_json::json!({"model": "gemma3:4b", "prompt": "why? ".repeat(1000)}).to_string();
    let out = curl_generate(&stack, &["-H", "Expect: 100-continue"], &long).await;
    assert_eq!(harness::ndjson(&out).len(), 9);
    assert_eq!(stack.stats().last_header("expect"), None);
    stack.shutdown().await;
}

//! The official `google-genai` Python SDK works unchanged against
//! kiln-proxy in front of the Ollama emulator: the proxy speaks the Gemini
//! API and translates it to Ollama's native API. Every assertion reads
//! values the SDK parsed.

mod example_plugins;
mod harness;

use std::time::Duration;

use example_plugins::plugin;
use harness::Stack;
use serde_json::json;

/// Runs a Python script with `HOST` set to the proxy's URL and a `client`
/// made for it (`key` as the API key); checks that it ran to its end.
async fn assert_genai_passes(stack: &Stack, key: &str, script: &str) {
    let prelude = r#"
import os, base64, threading, time
from google import genai
from google.genai import types, errors
def make(key, headers=None):
    return genai.Client(api_key=key, http_options=types.HttpOptions(base_url=os.environ["HOST"], api_version="v1beta", headers=headers))
client = make(os.environ["KEY"])
"#;
    let script = format!("{prelude}\n{script}");
    let env = [("KEY", key)];
    harness::assert_python_passes(stack, &script, &env, Duration::from_secs(90)).await;
}

#[tokio::test]
async fn google_genai_generates_streams_and_calls_functions() {
    let stack = Stack::new(|_, p| {
        p.gemini
            .aliases
            .insert("gemma-3-4b-it".into(), "gemma3:4b".into());
    })
    .await;
    // Gemma 3's template has no tools; Qwen 3 calls tools and thinks.
    ollama_emulator::models::write_fake_model(stack.models.path(), "qwen3:0.6b", 128).unwrap();
    assert_genai_passes(
        &stack,
        "unused",
        r#"
r = client.models.generate_content(model="gemma3:4b", contents="Why is the sky blue?")
assert r.text.startswith("The sky is blue"), r
assert r.candidates[0].finish_reason == types.FinishReason.STOP, r
u = r.usage_metadata
assert u.candidates_token_count == 8 and u.total_token_count == u.prompt_token_count + 8, u

# Streamed (alt=sse), through an alias and the models/ spelling.
chunks = list(client.models.generate_content_stream(model="models/gemma-3-4b-it", contents="Why?"))
assert len(chunks) >= 8, chunks
assert "".join(c.text or "" for c in chunks) == r.text, chunks
assert chunks[-1].candidates[0].finish_reason == types.FinishReason.STOP
assert chunks[-1].usage_metadata.candidates_token_count == 8

# A system instruction reaches the model: the prompt grows by its tokens.
long = "Answer like a pirate. " * 40
s = client.models.generate_content(model="gemma3:4b", contents="Why is the sky blue?",
    config=types.GenerateContentConfig(system_instruction=long, max_output_tokens=3))
assert s.usage_metadata.prompt_token_count > u.prompt_token_count + len(long) // 8, (s.usage_metadata, u)
assert s.usage_metadata.candidates_token_count == 3
assert s.candidates[0].finish_reason == types.FinishReason.MAX_TOKENS

# A JSON-schema answer, parsed by the SDK into the pydantic model.
from pydantic import BaseModel
class City(BaseModel):
    name: str
    population: int
j = client.models.generate_content(model="gemma3:4b", contents="Describe Paris",
    config=types.GenerateContentConfig(response_mime_type="application/json", response_schema=City))
assert isinstance(j.parsed, City), j.text
assert isinstance(j.parsed.population, int)

# A function call round trip.
weather = types.FunctionDeclaration(name="get_weather", description="Weather in a city",
    parameters=types.Schema(type="OBJECT", properties={"city": types.Schema(type="STRING")}, required=["city"]))
tools = [types.Tool(function_declarations=[weather])]
cfg = types.GenerateContentConfig(tools=tools, automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True))
ask = types.Content(role="user", parts=[types.Part(text="What is the weather in Paris?")])
c = client.models.generate_content(model="qwen3:0.6b", contents=[ask], config=cfg)
calls = c.function_calls
assert calls and calls[0].name == "get_weather" and isinstance(calls[0].args.get("city"), str), c
answer = types.Part.from_function_response(name="get_weather", response={"temperature": "18 C"})
d = client.models.generate_content(model="qwen3:0.6b", config=cfg,
    contents=[ask, c.candidates[0].content, types.Content(role="user", parts=[answer])])
assert not d.function_calls and d.text.startswith("The sky"), d
# Thoughts come back only when asked for.
assert not any(p.thought for p in d.candidates[0].content.parts), d
th = client.models.generate_content(model="qwen3:0.6b", contents="Why?",
    config=types.GenerateContentConfig(thinking_config=types.ThinkingConfig(include_thoughts=True)))
parts = th.candidates[0].content.parts
assert parts[0].thought and parts[0].text and not parts[-1].thought and parts[-1].text, parts

# An image part reaches the model as an image (Gemma 3 reads 256 tokens for one).
png = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==")
i = client.models.generate_content(model="gemma3:4b",
    contents=[types.Part.from_bytes(data=png, mime_type="image/png"), "What is in this image?"])
assert i.usage_metadata.prompt_token_count >= 256, i.usage_metadata
assert i.text.startswith("The sky"), i

# Embeddings, one and a batch.
e = client.models.embed_content(model="gemma3:4b", contents="hello")
assert len(e.embeddings) == 1 and len(e.embeddings[0].values) == 8, e
b = client.models.embed_content(model="gemma3:4b", contents=["hello", "a longer text"])
assert len(b.embeddings) == 2 and b.embeddings[0].values != b.embeddings[1].values, b
d = client.models.embed_content(model="gemma3:4b", contents="hello",
    config=types.EmbedContentConfig(output_dimensionality=4))
assert len(d.embeddings[0].values) == 4 and abs(sum(x * x for x in d.embeddings[0].values) - 1) < 1e-3, d

# countTokens: the model's own count of the prompt.
t = client.models.count_tokens(model="gemma3:4b", contents="Why is the sky blue?")
assert t.total_tokens > 0, t
t2 = client.models.count_tokens(model="gemma3:4b", contents="Why is the sky blue? " * 20)
assert t2.total_tokens > t.total_tokens, (t, t2)

# Models: Ollama's, plus the alias.
names = sorted(m.name for m in client.models.list())
assert names == ["models/gemma-3-4b-it", "models/gemma3:1b", "models/gemma3:4b", "models/qwen3:0.6b"], names
m = client.models.get(model="gemma3:1b")
assert m.name == "models/gemma3:1b" and "generateContent" in m.supported_actions, m

# An unknown model: the SDK's own error, with Google's status.
for call in (lambda: client.models.generate_content(model="gemma3:27b", contents="x"),
             lambda: client.models.get(model="gemma3:27b")):
    try:
        call()
        raise SystemExit("expected a 404")
    except errors.ClientError as e:
        assert e.code == 404 and e.status == "NOT_FOUND" and "not found" in e.message, (e.code, e.status, e.message)

# What Ollama cannot do is refused, in Google's format.
try:
    client.models.generate_content(model="gemma3:4b", contents="x", config=types.GenerateContentConfig(candidate_count=2))
    raise SystemExit("expected a 400")
except errors.ClientError as e:
    assert e.code == 400 and e.status == "INVALID_ARGUMENT" and "candidateCount" in e.message, e
"#,
    )
    .await;
    stack.shutdown().await;
}

#[tokio::test]
async fn a_full_queue_is_resource_exhausted() {
    let stack = Stack::new(|e, p| {
        e.token_delay = Duration::from_millis(200);
        p.limits.max_in_flight = 1;
        p.limits.max_queue = 0;
    })
    .await;
    assert_genai_passes(
        &stack,
        "unused",
        r#"
stream = client.models.generate_content_stream(model="gemma3:4b", contents="Why?")
first = next(stream)
assert first.text, first
try:
    client.models.generate_content(model="gemma3:4b", contents="x")
    raise SystemExit("expected a 429")
except errors.ClientError as e:
    assert e.code == 429 and e.status == "RESOURCE_EXHAUSTED", (e.code, e.status)
    assert e.response.headers.get("retry-after") == "1", dict(e.response.headers)
rest = "".join(c.text or "" for c in stream)
assert (first.text + rest).startswith("The sky is blue")
"#,
    )
    .await;
    stack.shutdown().await;
}

/// Without `alt=sse` the stream is a JSON array, element by element.
#[tokio::test]
async fn a_stream_without_alt_sse_is_a_json_array() {
    let stack = Stack::new(|_, _| {}).await;
    let body = serde_json::json!({"contents": [{"parts": [{"text": "Why?"}]}]});
    let resp = stack
        .post("/v1beta/models/gemma3:4b:streamGenerateContent", &body)
        .await;
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    let all: Vec<serde_json::Value> = resp.json().await.unwrap();
    let text: String = all
        .iter()
        .filter_map(|c| c["candidates"][0]["content"]["parts"][0]["text"].as_str())
        .collect();
    assert!(text.starts_with("The sky is blue"), "{text}");
    assert_eq!(all.last().unwrap()["candidates"][0]["finishReason"], "STOP");
    assert_eq!(completion_tokens(&stack).await, 8);
    // Not streamed: the same answer, counted too.
    let resp = stack
        .post("/v1beta/models/gemma3:4b:generateContent", &body)
        .await;
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["usageMetadata"]["candidatesTokenCount"], 8);
    assert_eq!(completion_tokens(&stack).await, 16);
    stack.shutdown().await;
}

/// `kiln_tokens_total` of kind `completion` (all routes and models), read with the Gemini codec.
async fn completion_tokens(stack: &Stack) -> u64 {
    // `kiln_tokens_total{route=…,model=…,kind="completion"}`, over every route and model.
    let metrics = stack.metrics().await;
    metrics
        .lines()
        .filter(|l| l.starts_with("kiln_tokens_total{") && l.contains("kind=\"completion\""))
        .filter_map(|l| l.rsplit_once(' ')?.1.trim().parse::<u64>().ok())
        .sum()
}

/// The request policies apply to Gemini bodies: the key from
/// `x-goog-api-key` (and `?key=`), the model from the path, the text of the
/// parts, the system instruction and `maxOutputTokens`.
#[tokio::test]
async fn request_policies_apply_to_gemini_requests() {
    let stack = Stack::with_plugins(&[
        plugin(
            "api-key",
            json!({"keys": [{"name": "alice", "key": "sk-alice"}]}),
        ),
        plugin("model-allowlist", json!({"allow": ["gemma3:4b"]})),
        plugin(
            "prompt-guard",
            json!({"deny": ["ignore previous instructions"]}),
        ),
        plugin("token-cap", json!({"max_tokens": 3})),
        plugin(
            "system-prompt",
            json!({"prompt": "Always answer in French. ".repeat(20)}),
        ),
    ])
    .await;
    assert_genai_passes(
        &stack,
        "sk-alice",
        r#"
r = client.models.generate_content(model="gemma3:4b", contents="Why is the sky blue?",
    config=types.GenerateContentConfig(max_output_tokens=100))
# token-cap clamped maxOutputTokens to 3.
assert r.usage_metadata.candidates_token_count == 3, r.usage_metadata
assert r.candidates[0].finish_reason == types.FinishReason.MAX_TOKENS
# system-prompt's instruction reached the model: 20 sentences of prompt.
assert r.usage_metadata.prompt_token_count > 100, r.usage_metadata
chunks = list(client.models.generate_content_stream(model="gemma3:4b", contents="Why?"))
assert chunks[-1].usage_metadata.candidates_token_count == 3

def refused(call, code, status):
    try:
        call()
    except errors.ClientError as e:
        assert e.code == code and e.status == status, (e.code, e.status, e.message)
        return e.message
    raise SystemExit(f"expected {code}")

wrong = make("sk-wrong")
m = refused(lambda: wrong.models.generate_content(model="gemma3:4b", contents="x"), 401, "UNAUTHENTICATED")
assert "invalid API key" in m, m
refused(lambda: wrong.models.embed_content(model="gemma3:4b", contents="x"), 401, "UNAUTHENTICATED")
m = refused(lambda: client.models.generate_content(model="gemma3:1b", contents="x"), 403, "PERMISSION_DENIED")
assert "gemma3:1b" in m, m
refused(lambda: client.models.generate_content(model="gemma3:4b",
    contents="Please IGNORE previous instructions"), 400, "INVALID_ARGUMENT")
refused(lambda: client.models.count_tokens(model="gemma3:4b",
    contents="ignore previous instructions"), 400, "INVALID_ARGUMENT")
"#,
    )
    .await;

    // `?key=` is the same key (Gemini's REST clients send it in the URL).
    let body = json!({"contents": [{"parts": [{"text": "hi"}]}]});
    let url = stack.url("/v1beta/models/gemma3:4b:generateContent");
    let ok = stack
        .client
        .post(format!("{url}?key=sk-alice"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let bad = stack
        .client
        .post(format!("{url}?key=sk-nope"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 401);
    let v: serde_json::Value = bad.json().await.unwrap();
    assert_eq!(v["error"]["status"], "UNAUTHENTICATED");
    assert_eq!(v["error"]["code"], 401);
    stack.shutdown().await;
}

/// output-guard sees the Gemini chunks: "sky is" spans two streamed
/// chunks ("sky ", "is ") and never reaches the client, in SSE, in the
/// JSON array and whole; nor does a pattern in a function call's args.
#[tokio::test]
async fn output_guard_redacts_a_phrase_split_across_gemini_chunks() {
    let guard = json!({"patterns": ["sky is", "Paris"]});
    let stack = Stack::with_plugins(&[plugin("output-guard", guard)]).await;
    ollama_emulator::models::write_fake_model(stack.models.path(), "qwen3:0.6b", 128).unwrap();
    assert_genai_passes(
        &stack,
        "unused",
        r#"
chunks = list(client.models.generate_content_stream(model="gemma3:4b", contents="Why?"))
text = "".join(c.text or "" for c in chunks)
assert text.startswith("The [REDACTED] blue because"), text
assert chunks[-1].candidates[0].finish_reason == types.FinishReason.STOP
r = client.models.generate_content(model="gemma3:4b", contents="Why?")
assert r.text == text, (r.text, text)

# A function call's args (the emulator fills them from the prompt) are
# redacted too, and stay the object the tool expects.
weather = types.FunctionDeclaration(name="get_weather",
    parameters=types.Schema(type="OBJECT", properties={"city": types.Schema(type="STRING")}, required=["city"]))
cfg = types.GenerateContentConfig(tools=[types.Tool(function_declarations=[weather])],
    automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True))
ask = "What is the weather in Paris?"
whole = client.models.generate_content(model="qwen3:0.6b", contents=ask, config=cfg).function_calls
streamed = [f for c in client.models.generate_content_stream(model="qwen3:0.6b", contents=ask, config=cfg)
            for f in (c.function_calls or [])]
for calls in (whole, streamed):
    assert len(calls) == 1 and calls[0].name == "get_weather", calls
    city = calls[0].args["city"]
    assert "[REDACTED]" in city and "Paris" not in city, city
"#,
    )
    .await;
    let body = json!({"contents": [{"parts": [{"text": "Why?"}]}]});
    let resp = stack
        .post("/v1beta/models/gemma3:4b:streamGenerateContent", &body)
        .await;
    let raw = resp.text().await.unwrap();
    assert!(!raw.contains("sky "), "{raw}");
    let all: Vec<serde_json::Value> = serde_json::from_str(&raw).unwrap();
    let text: String = all
        .iter()
        .filter_map(|c| c["candidates"][0]["content"]["parts"][0]["text"].as_str())
        .collect();
    assert!(text.starts_with("The [REDACTED] blue because"), "{text}");
    stack.shutdown().await;
}

/// token-budget charges what Gemini's `usageMetadata` says, streamed or not,
/// and refuses in Google's format once it is spent.
#[tokio::test]
async fn token_budget_charges_gemini_usage() {
    let stack = Stack::with_plugins(&[plugin("token-budget", json!({"budget": 1}))]).await;
    assert_genai_passes(
        &stack,
        "unused",
        r#"
clients = {}
for caller, stream in (("g-whole", False), ("g-stream", True)):
    c = clients[caller] = make("unused", headers={"x-kiln-caller": caller})
    if stream:
        last = list(c.models.generate_content_stream(model="gemma3:4b", contents="Why?"))[-1]
    else:
        last = c.models.generate_content(model="gemma3:4b", contents="Why?")
    total = last.usage_metadata.total_token_count
    assert total > 8, last.usage_metadata
    try:
        c.models.generate_content(model="gemma3:4b", contents="Why?")
        raise SystemExit("expected the budget to be spent")
    except errors.ClientError as e:
        assert e.code == 429 and e.status == "RESOURCE_EXHAUSTED", (e.code, e.status)
        assert f"used {total} of 1 tokens" in e.message, (total, e.message)
"#,
    )
    .await;
    stack.shutdown().await;
}

//! Tool calls, structured output and images on the chat routes, as Ollama
//! answers them: a tool call goes out whole in one chunk (routes.go
//! `toolParser.Add`), /v1/chat/completions carries it as OpenAI tool calls
//! with `finish_reason: "tool_calls"` (openai.go `ToToolCalls`), a model
//! without the tools capability gets scheduleRunner's 400, `format` makes
//! the answer a JSON document, and images are base64 as Go decodes
//! `api.ImageData`.

mod common;

use common::{lines, post, sse_data};
use ollama_emulator::Emulator;
use serde_json::{Value, json};

const QWEN: &str = "qwen3:0.6b";
const GEMMA: &str = "gemma3:4b";

async fn start() -> (Emulator, tempfile::TempDir) {
    common::start_with(&[GEMMA, QWEN], |c| c.default_tokens = 3).await
}

fn weather_tool() -> Value {
    json!([{"type": "function", "function": {
        "name": "get_weather", "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}])
}

fn ask(model: &str, stream: bool, extra: Value) -> Value {
    let mut req = json!({"model": model, "stream": stream, "think": false,
        "messages": [{"role": "user", "content": "Paris"}]});
    req.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    req
}

#[tokio::test]
async fn chat_with_tools_answers_one_whole_tool_call() {
    let (emu, _dir) = start().await;
    let (status, _, body) = post(
        &emu,
        "/api/chat",
        ask(QWEN, false, json!({"tools": weather_tool()})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["message"]["content"], "");
    let call = &v["message"]["tool_calls"][0];
    assert_eq!(call["function"]["name"], "get_weather");
    assert_eq!(call["function"]["arguments"], json!({"city": "Paris"}));
    assert_eq!(call["function"]["index"], 0);
    assert!(call["id"].as_str().unwrap().starts_with("call_"), "{call}");
    assert_eq!(v["done_reason"], "stop");

    let (_, _, body) = post(
        &emu,
        "/api/chat",
        ask(QWEN, true, json!({"tools": weather_tool()})),
    )
    .await;
    let chunks = lines(&body);
    let with_calls: Vec<&Value> = chunks
        .iter()
        .filter(|c| c["message"].get("tool_calls").is_some())
        .collect();
    assert_eq!(with_calls.len(), 1, "one chunk carries the call: {body}");
    assert_eq!(
        with_calls[0]["message"]["tool_calls"][0]["function"]["arguments"]["city"],
        "Paris"
    );
    assert_eq!(chunks.last().unwrap()["done"], true);
}

#[tokio::test]
async fn after_a_tool_result_the_model_answers_in_words() {
    let (emu, _dir) = start().await;
    let req = json!({"model": QWEN, "stream": false, "think": false, "tools": weather_tool(),
        "messages": [{"role": "user", "content": "Paris"},
            {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
            {"role": "tool", "content": "18 C"}]});
    let (status, _, body) = post(&emu, "/api/chat", req).await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert!(v["message"].get("tool_calls").is_none(), "{v}");
    assert!(
        v["message"]["content"]
            .as_str()
            .unwrap()
            .starts_with("The sky")
    );
}

#[tokio::test]
async fn a_model_without_tools_refuses_them_as_ollama_does() {
    let (emu, _dir) = start().await;
    let (status, _, body) = post(
        &emu,
        "/api/chat",
        ask(GEMMA, false, json!({"tools": weather_tool()})),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"error": "registry.ollama.ai/library/gemma3:4b does not support tools"})
    );
}

#[tokio::test]
async fn openai_chat_carries_tool_calls_with_string_arguments() {
    let (emu, _dir) = start().await;
    let mut req = ask(QWEN, false, json!({"tools": weather_tool()}));
    req.as_object_mut().unwrap().remove("think");
    let (status, _, body) = post(&emu, "/v1/chat/completions", req.clone()).await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let choice = &v["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    let call = &choice["message"]["tool_calls"][0];
    assert_eq!(call["type"], "function");
    assert_eq!(call["function"]["name"], "get_weather");
    let args: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(args, json!({"city": "Paris"}));

    req["stream"] = json!(true);
    let (_, _, body) = post(&emu, "/v1/chat/completions", req).await;
    let events = sse_data(&body);
    let calls: Vec<&Value> = events
        .iter()
        .filter_map(|e| e.pointer("/choices/0/delta/tool_calls"))
        .collect();
    assert_eq!(calls.len(), 1, "{body}");
    assert_eq!(calls[0][0]["function"]["name"], "get_weather");
    let finish: Vec<&Value> = events
        .iter()
        .filter_map(|e| e.pointer("/choices/0/finish_reason"))
        .filter(|f| !f.is_null())
        .collect();
    assert_eq!(finish, [&json!("tool_calls")]);
}

#[tokio::test]
async fn format_schema_makes_a_json_answer_streamed_in_pieces() {
    let (emu, _dir) = start().await;
    let schema = json!({"type": "object", "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
        "required": ["city", "population"]});
    let (_, _, body) = post(
        &emu,
        "/api/chat",
        ask(GEMMA, true, json!({"format": schema})),
    )
    .await;
    let chunks = lines(&body);
    let text: String = chunks
        .iter()
        .filter_map(|c| c["message"]["content"].as_str())
        .collect();
    assert!(chunks.len() > 4, "several pieces: {body}");
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap(),
        json!({"city": "Paris", "population": 42})
    );
    assert_eq!(chunks.last().unwrap()["done_reason"], "stop");

    let (_, _, body) = post(
        &emu,
        "/api/generate",
        json!({"model": GEMMA, "prompt": "x", "format": "json", "stream": false}),
    )
    .await;
    let v: Value = serde_json::from_str(&body).unwrap();
    let answer: Value = serde_json::from_str(v["response"].as_str().unwrap()).unwrap();
    assert!(answer["answer"].as_str().unwrap().starts_with("The sky"));
}

#[tokio::test]
async fn a_limit_cuts_a_json_answer_with_done_reason_length() {
    let (emu, _dir) = start().await;
    let req = ask(
        GEMMA,
        false,
        json!({"format": "json", "options": {"num_predict": 2}}),
    );
    let (_, _, body) = post(&emu, "/api/chat", req).await;
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["done_reason"], "length");
    assert_eq!(v["eval_count"], 2);
    assert!(serde_json::from_str::<Value>(v["message"]["content"].as_str().unwrap()).is_err());
}

#[tokio::test]
async fn images_count_in_the_prompt_and_bad_base64_is_a_400() {
    let (emu, _dir) = start().await;
    let png = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==";
    let plain = post(&emu, "/api/chat", ask(GEMMA, false, json!({}))).await;
    let mut with_image = ask(GEMMA, false, json!({}));
    with_image["messages"][0]["images"] = json!([png]);
    let (status, _, body) = post(&emu, "/api/chat", with_image).await;
    assert_eq!(status, 200, "{body}");
    let count = |b: &str| {
        serde_json::from_str::<Value>(b).unwrap()["prompt_eval_count"]
            .as_u64()
            .unwrap()
    };
    // 256 tokens for the image, whatever its base64 size (the field's own
    // punctuation adds a few bytes of JSON).
    let added = count(&body) - count(&plain.2);
    assert!((256..260).contains(&added), "{added}");

    let mut bad = ask(GEMMA, false, json!({}));
    bad["messages"][0]["images"] = json!(["not*base64"]);
    let (status, _, body) = post(&emu, "/api/chat", bad).await;
    assert_eq!(status, 400);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"error": "illegal base64 data at input byte 3"})
    );
}

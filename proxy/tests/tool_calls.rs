//! Tool-call arguments are the third channel response plugins see (beside
//! text and thinking), on every API that carries tool calls, streamed and
//! whole: kiln-proxy with `output-guard` (built by scripts/build-plugins)
//! in front of the Ollama emulator, whose model calls the first tool it is
//! offered with arguments filled from the user's words, and writes the
//! call as each API of Ollama's does.

mod example_plugins;
mod harness;

use example_plugins::plugin;
use harness::{Stack, events, named, ndjson, sse_json};
use serde_json::{Value, json};

/// A model of the emulator's that calls tools (and thinks first).
const CALLER: &str = "qwen3:0.6b";
const SECRET: &str = "secret-4242";

/// The four APIs' requests offering the tool `lookup(q: string)` and asking
/// for the secret, streamed or not.
fn request(path: &str, stream: bool) -> Value {
    let ask = format!("look up {SECRET} please");
    let schema =
        json!({"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]});
    let function =
        json!({"type": "function", "function": {"name": "lookup", "parameters": schema}});
    let messages = json!([{"role": "user", "content": ask}]);
    match path {
        "/api/chat" | "/v1/chat/completions" => {
            json!({"model": CALLER, "stream": stream, "messages": messages, "tools": [function]})
        }
        "/v1/responses" => json!({"model": CALLER, "stream": stream, "input": ask,
            "tools": [{"type": "function", "name": "lookup", "parameters": schema}]}),
        "/v1/messages" => {
            json!({"model": CALLER, "stream": stream, "max_tokens": 100, "messages": messages,
            "tools": [{"name": "lookup", "input_schema": schema}]})
        }
        other => panic!("no tool request for {other}"),
    }
}

const PATHS: [&str; 4] = [
    "/api/chat",
    "/v1/chat/completions",
    "/v1/responses",
    "/v1/messages",
];

/// Every copy of the call's arguments the client got, parsed: the deltas
/// and the whole call on the event APIs, which repeat them.
fn arguments(path: &str, stream: bool, body: &str) -> Vec<Value> {
    let parse = |v: &Value| match v {
        Value::String(s) => serde_json::from_str(s).expect("arguments are JSON"),
        other => other.clone(),
    };
    let at = |v: &Value, p: &str| v.pointer(p).map(parse);
    match (path, stream) {
        ("/api/chat", true) => ndjson(body.as_bytes())
            .iter()
            .filter_map(|l| at(l, "/message/tool_calls/0/function/arguments"))
            .collect(),
        ("/api/chat", false) => {
            let v: Value = serde_json::from_str(body).unwrap();
            at(&v, "/message/tool_calls/0/function/arguments")
                .into_iter()
                .collect()
        }
        ("/v1/chat/completions", true) => sse_json(body)
            .iter()
            .filter_map(|v| at(v, "/choices/0/delta/tool_calls/0/function/arguments"))
            .collect(),
        ("/v1/chat/completions", false) => {
            let v: Value = serde_json::from_str(body).unwrap();
            at(&v, "/choices/0/message/tool_calls/0/function/arguments")
                .into_iter()
                .collect()
        }
        ("/v1/responses", true) => {
            let ev = events(body);
            let mut all: Vec<Value> = Vec::new();
            for (name, pointer) in [
                ("response.function_call_arguments.delta", "/delta"),
                ("response.function_call_arguments.done", "/arguments"),
                ("response.output_item.done", "/item/arguments"),
                ("response.completed", "/response/output/1/arguments"),
            ] {
                let found: Vec<Value> = named(&ev, name)
                    .iter()
                    .filter_map(|v| at(v, pointer))
                    .collect();
                assert!(!found.is_empty(), "no {name} with {pointer}: {body}");
                all.extend(found);
            }
            all
        }
        ("/v1/responses", false) => {
            let v: Value = serde_json::from_str(body).unwrap();
            let output = v["output"].as_array().unwrap();
            output
                .iter()
                .filter(|i| i["type"] == "function_call")
                .map(|i| parse(&i["arguments"]))
                .collect()
        }
        ("/v1/messages", true) => events(body)
            .iter()
            .filter(|(_, v)| v["delta"]["type"] == "input_json_delta")
            .map(|(_, v)| parse(&v["delta"]["partial_json"]))
            .collect(),
        ("/v1/messages", false) => {
            let v: Value = serde_json::from_str(body).unwrap();
            v["content"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|b| b["type"] == "tool_use")
                .map(|b| b["input"].clone())
                .collect()
        }
        _ => unreachable!(),
    }
}

async fn call(stack: &Stack, path: &str, stream: bool) -> String {
    ollama_emulator::models::write_fake_model(stack.models.path(), CALLER, 128)
        .expect("write the tool-calling model");
    let resp = stack.post(path, &request(path, stream)).await;
    assert_eq!(resp.status(), 200, "{path} stream={stream}");
    resp.text().await.unwrap()
}

#[tokio::test]
async fn without_a_guard_the_model_puts_the_secret_in_its_call() {
    let stack = Stack::with_plugins(&[]).await;
    for path in PATHS {
        for stream in [true, false] {
            let body = call(&stack, path, stream).await;
            let args = arguments(path, stream, &body);
            assert!(
                !args.is_empty(),
                "{path} stream={stream}: no call in {body}"
            );
            for a in args {
                assert_eq!(
                    a,
                    json!({"q": format!("look up {SECRET} please")}),
                    "{path}"
                );
            }
        }
    }
    stack.shutdown().await;
}

#[tokio::test]
async fn output_guard_redacts_tool_call_arguments_on_every_api_and_every_copy() {
    let guard = plugin("output-guard", json!({"patterns": ["secret-\\d+"]}));
    let stack = Stack::with_plugins(&[guard]).await;
    for path in PATHS {
        for stream in [true, false] {
            let body = call(&stack, path, stream).await;
            assert!(
                !body.contains(SECRET),
                "{path} stream={stream} leaked: {body}"
            );
            let args = arguments(path, stream, &body);
            assert!(
                !args.is_empty(),
                "{path} stream={stream}: no call in {body}"
            );
            for a in args {
                // Still the JSON the tool expects, with the match redacted.
                assert_eq!(
                    a,
                    json!({"q": "look up [REDACTED] please"}),
                    "{path} stream={stream}"
                );
            }
        }
    }
    stack.shutdown().await;
}

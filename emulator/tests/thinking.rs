//! Thinking as Ollama writes it on every route: which models think
//! (server/routes.go: the thinking capability, `think` defaulting to true,
//! "does not support thinking"), each API's request field, and the wire
//! shapes of the thinking, streamed token by token before the answer.

mod common;

use common::{deltas, events, lines, names, post, post_json, sse_data};
use ollama_emulator::{Emulator, THINKING_TOKENS, thinking_text, token};
use serde_json::{Value, json};

const QWEN: &str = "qwen3:0.6b";

async fn start() -> (Emulator, tempfile::TempDir) {
    common::start_with(&["gemma3:4b", QWEN], |c| c.default_tokens = 3).await
}

fn all_thinking() -> String {
    thinking_text(THINKING_TOKENS)
}

fn answer(n: usize) -> String {
    (0..n).map(token).collect()
}

#[test]
fn the_thinking_has_a_phrase_split_across_two_tokens() {
    let t = all_thinking();
    assert!(t.contains("Rayleigh scattering"), "{t}");
    const { assert!(THINKING_TOKENS > 4) };
    let pieces: Vec<_> = (0..THINKING_TOKENS)
        .map(ollama_emulator::thinking_token)
        .collect();
    assert!(
        pieces.iter().all(|p| !p.contains("Rayleigh scattering")),
        "no single token holds the phrase: {pieces:?}"
    );
}

#[tokio::test]
async fn generate_streams_thinking_token_by_token_before_the_response() {
    let (emu, _dir) = start().await;
    let (status, _, body) = post(
        &emu,
        "/api/generate",
        json!({"model": QWEN, "prompt": "Why is the sky blue?"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let l = lines(&body);
    assert_eq!(l.len(), THINKING_TOKENS + 3 + 1, "{body}");
    for (i, c) in l[..THINKING_TOKENS].iter().enumerate() {
        assert_eq!(c["response"], "", "thinking chunks have an empty response");
        assert_eq!(c["thinking"], ollama_emulator::thinking_token(i));
        assert_eq!(c["done"], false);
    }
    for c in &l[THINKING_TOKENS..] {
        assert!(c.get("thinking").is_none(), "omitempty: {c}");
    }
    let response: String = l.iter().filter_map(|c| c["response"].as_str()).collect();
    assert_eq!(response, answer(3));
    let last = l.last().unwrap();
    assert_eq!(last["done"], true);
    // eval_count is the runner's: thinking tokens count too.
    assert_eq!(last["eval_count"], THINKING_TOKENS + 3);

    let v = post_json(
        &emu,
        "/api/generate",
        json!({"model": QWEN, "prompt": "Why?", "stream": false}),
    )
    .await;
    assert_eq!(v["thinking"], all_thinking());
    assert_eq!(v["response"], answer(3));
    assert_eq!(v["eval_count"], THINKING_TOKENS + 3);
}

#[tokio::test]
async fn chat_puts_thinking_in_the_message() {
    let (emu, _dir) = start().await;
    let msgs = json!([{"role": "user", "content": "Why is the sky blue?"}]);
    let (_, _, body) = post(
        &emu,
        "/api/chat",
        json!({"model": QWEN, "messages": msgs, "think": true}),
    )
    .await;
    let l = lines(&body);
    let thinking: String = l
        .iter()
        .filter_map(|c| c["message"]["thinking"].as_str())
        .collect();
    let content: String = l
        .iter()
        .filter_map(|c| c["message"]["content"].as_str())
        .collect();
    assert_eq!((thinking, content), (all_thinking(), answer(3)));
    assert_eq!(l[0]["message"]["content"], "");
    assert!(l[THINKING_TOKENS]["message"].get("thinking").is_none());

    let v = post_json(
        &emu,
        "/api/chat",
        json!({"model": QWEN, "messages": msgs, "stream": false, "think": "high"}),
    )
    .await;
    assert_eq!(v["message"]["thinking"], all_thinking());
    assert_eq!(v["message"]["content"], answer(3));

    // think: false turns it off.
    let v = post_json(
        &emu,
        "/api/chat",
        json!({"model": QWEN, "messages": msgs, "stream": false, "think": false}),
    )
    .await;
    assert!(v["message"].get("thinking").is_none(), "{v}");
    assert_eq!(v["eval_count"], 3);
}

#[tokio::test]
async fn openai_chat_sends_reasoning_in_chunks_of_its_own() {
    let (emu, _dir) = start().await;
    let req = |stream: bool| {
        json!({"model": QWEN, "stream": stream, "stream_options": {"include_usage": true},
               "messages": [{"role": "user", "content": "Why is the sky blue?"}]})
    };
    let (status, _, body) = post(&emu, "/v1/chat/completions", req(true)).await;
    assert_eq!(status, 200, "{body}");
    let chunks = sse_data(&body);
    for (i, c) in chunks[..THINKING_TOKENS].iter().enumerate() {
        let delta = &c["choices"][0]["delta"];
        assert_eq!(delta["reasoning"], ollama_emulator::thinking_token(i));
        assert_eq!(delta["content"], "", "reasoning-only: content is \"\"");
    }
    for c in &chunks[THINKING_TOKENS..] {
        assert!(
            c["choices"][0]["delta"].get("reasoning").is_none(),
            "content chunks carry no reasoning: {c}"
        );
    }
    let content: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(content, answer(3));
    let usage = &chunks.last().unwrap()["usage"];
    assert_eq!(usage["completion_tokens"], THINKING_TOKENS + 3);

    let v = post_json(&emu, "/v1/chat/completions", req(false)).await;
    let msg = &v["choices"][0]["message"];
    assert_eq!(msg["reasoning"], all_thinking());
    assert_eq!(msg["content"], answer(3));

    // reasoning_effort "none" (and reasoning.effort, which wins) turn it off.
    let mut off = req(false);
    off["reasoning_effort"] = json!("none");
    let v = post_json(&emu, "/v1/chat/completions", off.clone()).await;
    assert!(v["choices"][0]["message"].get("reasoning").is_none(), "{v}");
    off["reasoning"] = json!({"effort": "low"});
    let v = post_json(&emu, "/v1/chat/completions", off).await;
    assert_eq!(v["choices"][0]["message"]["reasoning"], all_thinking());
}

#[tokio::test]
async fn responses_stream_a_reasoning_item_before_the_message() {
    let (emu, _dir) = start().await;
    let (status, _, body) = post(
        &emu,
        "/v1/responses",
        json!({"model": QWEN, "input": "Why is the sky blue?", "stream": true,
               "reasoning": {"effort": "medium"}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let ev = events(&body);
    let mut want = vec![
        "response.created",
        "response.in_progress",
        "response.output_item.added",
    ];
    want.extend(std::iter::repeat_n(
        "response.reasoning_summary_text.delta",
        THINKING_TOKENS,
    ));
    want.extend([
        "response.reasoning_summary_text.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]);
    assert_eq!(names(&ev), want);
    for (i, (_, data)) in ev.iter().enumerate() {
        assert_eq!(data["sequence_number"], i, "numbered in order");
    }
    let rs = ev[2].1["item"]["id"].as_str().unwrap().to_owned();
    assert!(rs.starts_with("rs_"), "{rs}");
    assert_eq!(
        ev[2].1["item"],
        json!({"id": rs, "type": "reasoning", "summary": []})
    );
    // A Go map: keys sorted.
    let first = body.split("\n\n").nth(3).unwrap();
    assert_eq!(
        first,
        format!(
            "event: response.reasoning_summary_text.delta\ndata: {{\"delta\":\"Hmm\",\"item_id\":\"{rs}\",\"output_index\":0,\"sequence_number\":3,\"summary_index\":0,\"type\":\"response.reasoning_summary_text.delta\"}}"
        )
    );
    let thinking = deltas(&ev, "response.reasoning_summary_text.delta");
    assert_eq!(thinking, all_thinking());
    let t = THINKING_TOKENS;
    assert_eq!(ev[3 + t].1["text"], all_thinking());
    let item = json!({"id": rs, "type": "reasoning",
        "summary": [{"type": "summary_text", "text": all_thinking()}],
        "encrypted_content": all_thinking()});
    assert_eq!(ev[4 + t].1["item"], item);
    assert_eq!(ev[4 + t].1["output_index"], 0);
    // The message is output 1.
    for (_, d) in &ev[5 + t..ev.len() - 1] {
        assert_eq!(d["output_index"], 1, "{d}");
    }
    let done = &ev.last().unwrap().1["response"];
    assert_eq!(done["output"][0], item);
    assert_eq!(done["output"][1]["content"][0]["text"], answer(3));
    assert_eq!(done["usage"]["output_tokens"], t + 3);
    assert_eq!(
        done["reasoning"],
        json!({"effort": "medium", "summary": null})
    );

    let (_, _, body) = post(
        &emu,
        "/v1/responses",
        json!({"model": QWEN, "input": "Why?", "reasoning": {"effort": "high"}}),
    )
    .await;
    let v: Value = serde_json::from_str(&body).unwrap();
    let id = v["id"].as_str().unwrap();
    // ToResponse: the reasoning item first, its id from the response's,
    // fields in the Go struct's order.
    let output = &v["output"];
    assert_eq!(output[0]["id"], format!("rs_{id}"));
    assert_eq!(output[0]["summary"][0]["text"], all_thinking());
    assert_eq!(output[0]["encrypted_content"], all_thinking());
    assert_eq!(output[1]["content"][0]["text"], answer(3));
    assert!(
        body.contains(&format!(
            r#"{{"id":"rs_{id}","type":"reasoning","summary":[{{"type":"summary_text","text":"#
        )),
        "{body}"
    );
    assert!(body.contains(r#""reasoning":{"effort":"high"},"#), "{body}");
    assert_eq!(v["usage"]["output_tokens"], THINKING_TOKENS + 3);
}

#[tokio::test]
async fn a_limit_can_stop_the_model_mid_thought() {
    // num_predict caps every token the runner makes, thinking included.
    let (emu, _dir) = start().await;
    let v = post_json(
        &emu,
        "/api/generate",
        json!({"model": QWEN, "prompt": "Why?", "stream": false, "options": {"num_predict": 4}}),
    )
    .await;
    assert_eq!(
        (&v["thinking"], &v["response"], &v["done_reason"]),
        (&json!(thinking_text(4)), &json!(""), &json!("length"))
    );

    let (_, _, body) = post(
        &emu,
        "/v1/responses",
        json!({"model": QWEN, "input": "Why?", "stream": true, "max_output_tokens": 2}),
    )
    .await;
    let ev = events(&body);
    assert_eq!(
        names(&ev),
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.reasoning_summary_text.delta",
            "response.reasoning_summary_text.delta",
            "response.reasoning_summary_text.done",
            "response.output_item.done",
            "response.completed",
        ]
    );
    for (i, (_, data)) in ev.iter().enumerate() {
        assert_eq!(data["sequence_number"], i);
    }
    let output = &ev.last().unwrap().1["response"]["output"];
    assert_eq!(output.as_array().unwrap().len(), 1, "{output}");
    assert_eq!(output[0]["encrypted_content"], thinking_text(2));

    let (_, _, body) = post(
        &emu,
        "/v1/messages",
        json!({"model": QWEN, "max_tokens": 2, "stream": true,
               "messages": [{"role": "user", "content": "Why?"}]}),
    )
    .await;
    let ev = events(&body);
    assert_eq!(
        names(&ev),
        [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop",
        ]
    );
    assert_eq!(ev[5].1["delta"]["stop_reason"], "max_tokens");
}

#[tokio::test]
async fn messages_think_by_default_with_one_delta_per_token() {
    let (emu, _dir) = start().await;
    // No `thinking` field: the model thinks anyway (routes.go: nil think
    // becomes true for a thinking model).
    let req = |stream: bool| {
        json!({"model": QWEN, "max_tokens": 100, "stream": stream,
               "messages": [{"role": "user", "content": "Why is the sky blue?"}]})
    };
    let (_, _, body) = post(&emu, "/v1/messages", req(true)).await;
    let ev = events(&body);
    let blocks: Vec<(String, u64)> = ev
        .iter()
        .filter_map(|(n, v)| {
            let kind = match n.as_str() {
                "content_block_start" => v["content_block"]["type"].as_str()?,
                "content_block_delta" => v["delta"]["type"].as_str()?,
                "content_block_stop" => "stop",
                _ => return None,
            };
            Some((kind.to_owned(), v["index"].as_u64()?))
        })
        .collect();
    let mut want = vec![("thinking".to_owned(), 0)];
    want.extend(std::iter::repeat_n(
        ("thinking_delta".to_owned(), 0),
        THINKING_TOKENS,
    ));
    want.push(("stop".into(), 0));
    want.push(("text".into(), 1));
    // max_tokens caps thinking and text together.
    want.extend(std::iter::repeat_n(
        ("text_delta".to_owned(), 1),
        100 - THINKING_TOKENS,
    ));
    want.push(("stop".into(), 1));
    assert_eq!(blocks, want);
    let thinking: String = ev
        .iter()
        .filter_map(|(_, v)| v["delta"]["thinking"].as_str())
        .collect();
    assert_eq!(thinking, all_thinking());
    let delta = &ev.iter().find(|(n, _)| n == "message_delta").unwrap().1;
    assert_eq!(delta["usage"]["output_tokens"], 100);

    let v = post_json(&emu, "/v1/messages", req(false)).await;
    assert_eq!(
        v["content"][0],
        json!({"type": "thinking", "thinking": all_thinking()})
    );
    assert_eq!(v["content"][1]["type"], "text");
    assert_eq!(v["usage"]["output_tokens"], 100);

    let mut off = req(false);
    off["thinking"] = json!({"type": "disabled"});
    let (_, _, body) = post(&emu, "/v1/messages", off).await;
    assert!(!body.contains("thinking"), "{body}");
}

#[tokio::test]
async fn a_model_that_cannot_think_refuses_think_true() {
    let (emu, _dir) = start().await;
    let refusal = r#""gemma3:4b" does not support thinking"#;
    let msgs = json!([{"role": "user", "content": "Hi"}]);
    for (path, body) in [
        (
            "/api/generate",
            json!({"model": "gemma3:4b", "prompt": "Hi", "think": true}),
        ),
        (
            "/api/chat",
            json!({"model": "gemma3:4b", "messages": msgs, "think": "low"}),
        ),
        // The load-only request is checked too (routes.go: before the load shortcut).
        ("/api/chat", json!({"model": "gemma3:4b", "think": true})),
    ] {
        let (status, _, text) = post(&emu, path, body).await;
        assert_eq!(status, 400, "{path}");
        assert_eq!(
            serde_json::from_str::<Value>(&text).unwrap(),
            json!({"error": refusal})
        );
    }
    let (status, _, text) = post(
        &emu,
        "/v1/chat/completions",
        json!({"model": "gemma3:4b", "messages": msgs, "reasoning_effort": "high"}),
    )
    .await;
    assert_eq!(status, 400);
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["error"]["message"], refusal);
    assert_eq!(v["error"]["type"], "invalid_request_error");
    let (status, _, text) = post(
        &emu,
        "/v1/responses",
        json!({"model": "gemma3:4b", "input": "Hi", "reasoning": {"effort": "low"}}),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(
        text,
        format!(
            "{{\"error\":{{\"message\":{},\"type\":\"invalid_request_error\",\"param\":null,\"code\":null}}}}\n",
            serde_json::to_string(refusal).unwrap()
        )
    );
    // think false, or "none", is fine; no think at all is fine.
    for (path, body) in [
        (
            "/api/generate",
            json!({"model": "gemma3:4b", "prompt": "Hi", "think": false, "stream": false}),
        ),
        (
            "/v1/chat/completions",
            json!({"model": "gemma3:4b", "messages": msgs, "reasoning_effort": "none"}),
        ),
        (
            "/api/chat",
            json!({"model": "gemma3:4b", "messages": msgs, "stream": false}),
        ),
    ] {
        let (status, _, text) = post(&emu, path, body).await;
        assert_eq!(status, 200, "{path}: {text}");
        assert!(
            !text.contains("thinking") && !text.contains("reasoning\":\""),
            "{text}"
        );
    }
    // /v1/messages relaxes it (middleware/anthropic.go `relax_thinking`): 200.
    let (status, _, _) = post(
        &emu,
        "/v1/messages",
        json!({"model": "gemma3:4b", "max_tokens": 2, "messages": msgs,
               "output_config": {"effort": "high"}}),
    )
    .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn bad_think_values_are_refused() {
    let (emu, _dir) = start().await;
    let (status, _, text) = post(
        &emu,
        "/api/generate",
        json!({"model": QWEN, "prompt": "Hi", "think": "extreme"}),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap()["error"],
        r#"invalid think value: "extreme" (must be "high", "medium", "low", "max", true, or false)"#
    );
    let (status, _, text) = post(
        &emu,
        "/v1/chat/completions",
        json!({"model": QWEN, "messages": [{"role": "user", "content": "Hi"}], "reasoning_effort": "huge"}),
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        text.contains(r#"invalid reasoning value: \"huge\""#),
        "{text}"
    );
}

#[tokio::test]
async fn show_lists_the_thinking_capability() {
    let (emu, _dir) = start().await;
    let v = post_json(&emu, "/api/show", json!({"model": QWEN})).await;
    assert_eq!(v["capabilities"], json!(["completion", "thinking"]));
    let v = post_json(&emu, "/api/show", json!({"model": "gemma3:4b"})).await;
    assert_eq!(v["capabilities"], json!(["completion"]));
}

//! The two fields of an answer that describe its text token by token, as
//! Ollama writes them: `context` of /api/generate (server/routes.go: the
//! final chunk's, `r.Tokenize(prompt+sb.String())`, not with `raw: true`)
//! and `logprobs` (api/types.go `Logprob`; openai.go `ChoiceLogprobs`),
//! asked for with `logprobs: true` / `top_logprobs: n` (`logprobs: n` on
//! /v1/completions, which then drops them: `ToCompleteChunk` and
//! `ToCompletion` set no `Logprobs`).

mod common;

use common::{lines, post, sse_data};
use ollama_emulator::{Emulator, THINKING_TOKENS, thinking_token, token};
use serde_json::{Value, json};

const QWEN: &str = "qwen3:0.6b";
const GEMMA: &str = "gemma3:4b";

async fn start() -> (Emulator, tempfile::TempDir) {
    common::start_with(&[GEMMA, QWEN], |c| c.default_tokens = 3).await
}

fn user() -> Value {
    json!([{"role": "user", "content": "Why is the sky blue?"}])
}

/// The tokens of the `logprobs` entries `lp`, checking each entry's shape:
/// `bytes` are the token's, `top_logprobs` has `top` alternatives, the
/// token itself first.
fn tokens_of(lp: &Value, top: usize) -> Vec<String> {
    let entries = lp.as_array().unwrap_or_else(|| panic!("an array: {lp}"));
    entries
        .iter()
        .map(|e| {
            let tok = e["token"].as_str().expect("token").to_owned();
            let bytes: Vec<u8> = e["bytes"]
                .as_array()
                .expect("bytes")
                .iter()
                .map(|b| b.as_u64().unwrap() as u8)
                .collect();
            assert_eq!(bytes, tok.as_bytes(), "{e}");
            assert!(e["logprob"].as_f64().expect("logprob") < 0.0, "{e}");
            match top {
                0 => assert!(e.get("top_logprobs").is_none(), "omitempty: {e}"),
                n => {
                    let alts = e["top_logprobs"].as_array().expect("top_logprobs");
                    assert_eq!(alts.len(), n, "{e}");
                    assert_eq!(alts[0]["token"], tok.as_str(), "{e}");
                    assert_eq!(alts[0]["logprob"], e["logprob"], "{e}");
                }
            }
            tok
        })
        .collect()
}

#[tokio::test]
async fn generate_sends_context_on_the_final_chunk_and_body_but_not_raw() {
    let (emu, _dir) = start().await;
    let req = json!({"model": GEMMA, "prompt": "Why?"});
    let (status, _, body) = post(&emu, "/api/generate", req.clone()).await;
    assert_eq!(status, 200);
    let chunks = lines(&body);
    let (last, rest) = chunks.split_last().unwrap();
    assert!(rest.iter().all(|c| c.get("context").is_none()), "{body}");
    // One id per token of the prompt and of the answer.
    let len =
        |v: &Value| v["prompt_eval_count"].as_u64().unwrap() + v["eval_count"].as_u64().unwrap();
    let context = last["context"]
        .as_array()
        .expect("context on the final chunk");
    assert_eq!(context.len() as u64, len(last), "{body}");
    // No logprobs unless asked.
    assert!(!body.contains("logprobs"), "{body}");

    let mut whole = req.clone();
    whole["stream"] = json!(false);
    let (_, _, body) = post(&emu, "/api/generate", whole.clone()).await;
    let v: Value = serde_json::from_str(&body).unwrap();
    let context = v["context"].as_array().expect("context in the body");
    assert_eq!(context.len() as u64, len(&v), "{body}");

    for mut req in [req, whole] {
        req["raw"] = json!(true);
        let (status, _, body) = post(&emu, "/api/generate", req).await;
        assert_eq!(status, 200);
        assert!(!body.contains("context"), "raw: {body}");
    }
    // /api/chat has no context.
    let (_, _, body) = post(
        &emu,
        "/api/chat",
        json!({"model": GEMMA, "messages": user()}),
    )
    .await;
    assert!(!body.contains("context"), "{body}");
}

#[tokio::test]
async fn native_chunks_carry_their_tokens_logprobs() {
    let (emu, _dir) = start().await;
    for path in ["/api/generate", "/api/chat"] {
        for top in [0, 3] {
            let mut req = json!({"model": QWEN, "logprobs": true, "top_logprobs": top});
            match path {
                "/api/generate" => req["prompt"] = json!("Why?"),
                _ => req["messages"] = user(),
            }
            let (status, _, body) = post(&emu, path, req.clone()).await;
            assert_eq!(status, 200, "{body}");
            let chunks = lines(&body);
            let (last, tokens) = chunks.split_last().unwrap();
            assert_eq!(tokens.len(), THINKING_TOKENS + 3, "{body}");
            for (i, c) in tokens.iter().enumerate() {
                // The chunk's own text, thinking or answer.
                let want = if i < THINKING_TOKENS {
                    thinking_token(i)
                } else {
                    token(i - THINKING_TOKENS)
                };
                assert_eq!(tokens_of(&c["logprobs"], top), [want], "{path}: {c}");
            }
            assert!(last.get("logprobs").is_none(), "{path}: {last}");

            // Whole: every chunk's, thinking included, in order.
            req["stream"] = json!(false);
            let (_, _, body) = post(&emu, path, req).await;
            let v: Value = serde_json::from_str(&body).unwrap();
            let all: Vec<String> = (0..THINKING_TOKENS)
                .map(thinking_token)
                .chain((0..3).map(token))
                .map(str::to_owned)
                .collect();
            assert_eq!(tokens_of(&v["logprobs"], top), all, "{path}: {body}");
        }
    }
}

#[tokio::test]
async fn openai_chat_puts_logprobs_in_the_choice() {
    let (emu, _dir) = start().await;
    let req = json!({"model": GEMMA, "messages": user(), "stream": true,
                     "logprobs": true, "top_logprobs": 2});
    let (_, _, body) = post(&emu, "/v1/chat/completions", req.clone()).await;
    let chunks = sse_data(&body);
    // Three tokens, then the finish chunk (openai.go `FinishChunk`: none).
    assert_eq!(chunks.len(), 4, "{body}");
    for (i, c) in chunks[..3].iter().enumerate() {
        assert_eq!(
            tokens_of(&c["choices"][0]["logprobs"]["content"], 2),
            [token(i)],
            "{c}"
        );
    }
    assert!(chunks[3]["choices"][0].get("logprobs").is_none(), "{body}");

    let mut whole = req;
    whole["stream"] = json!(false);
    let (_, _, body) = post(&emu, "/v1/chat/completions", whole.clone()).await;
    let v: Value = serde_json::from_str(&body).unwrap();
    let want: Vec<&str> = (0..3).map(token).collect();
    assert_eq!(
        tokens_of(&v["choices"][0]["logprobs"]["content"], 2),
        want,
        "{body}"
    );

    // Not asked: no field at all (a nil pointer, omitempty).
    whole["logprobs"] = json!(false);
    let (_, _, body) = post(&emu, "/v1/chat/completions", whole).await;
    assert!(!body.contains("logprobs"), "{body}");
}

#[tokio::test]
async fn openai_completions_drop_the_logprobs_they_asked_for() {
    let (emu, _dir) = start().await;
    for stream in [true, false] {
        let req = json!({"model": GEMMA, "prompt": "Why?", "stream": stream, "logprobs": 2});
        let (status, _, body) = post(&emu, "/v1/completions", req).await;
        assert_eq!(status, 200, "{body}");
        assert!(!body.contains("logprobs"), "{body}");
    }
}

#[tokio::test]
async fn top_logprobs_beyond_twenty_is_a_400() {
    let (emu, _dir) = start().await;
    let (status, _, body) = post(
        &emu,
        "/api/chat",
        json!({"model": GEMMA, "messages": user(), "logprobs": true, "top_logprobs": 21}),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"error": "top_logprobs must be between 0 and 20"})
    );
}

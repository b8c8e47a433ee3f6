use super::*;

fn line(s: &str) -> Chunk {
    Chunk::new(
        Bytes::from(format!("{s}\n")),
        Kind::Line,
        Shape::OllamaGenerate,
    )
}

fn event(shape: Shape, s: &str) -> Chunk {
    Chunk::new(Bytes::from(format!("data: {s}\n\n")), Kind::Event, shape)
}

fn json_of(b: &[u8]) -> Value {
    let s = std::str::from_utf8(b).unwrap();
    let s = s.trim().strip_prefix("data: ").unwrap_or(s.trim());
    serde_json::from_str(s).unwrap()
}

#[test]
fn text_is_normalized_across_apis() {
    assert_eq!(
        line(r#"{"response":"The ","done":false}"#).text(),
        Some("The ")
    );
    let chat = Chunk::new(
        Bytes::from_static(
            b"{\"message\":{\"role\":\"assistant\",\"content\":\"sky\"},\"done\":false}\n",
        ),
        Kind::Line,
        Shape::OllamaChat,
    );
    assert_eq!(chat.text(), Some("sky"));
    let oc = event(
        Shape::OpenaiChat,
        r#"{"choices":[{"index":0,"delta":{"content":"is"},"finish_reason":null}]}"#,
    );
    assert_eq!(oc.text(), Some("is"));
    assert!(!oc.done());
    let whole = Chunk::new(
        Bytes::from_static(br#"{"choices":[{"message":{"content":"all"}}],"usage":{"prompt_tokens":3,"completion_tokens":4}}"#),
        Kind::Whole,
        Shape::OpenaiChat,
    );
    assert_eq!(whole.text(), Some("all"));
    assert!(whole.done());
    assert_eq!(
        whole.usage(),
        Some(Usage {
            prompt_tokens: 3,
            completion_tokens: 4
        })
    );
    let cmpl = event(
        Shape::OpenaiCompletions,
        r#"{"choices":[{"text":"x","finish_reason":"stop"}]}"#,
    );
    assert_eq!(cmpl.text(), Some("x"));
    assert!(cmpl.done());
    assert_eq!(event(Shape::OpenaiChat, "[DONE]").text(), None);
    assert_eq!(line(r#"{"error":"boom"}"#).text(), None);
    let other = event(Shape::Other, r#"{"type":"content_block_delta"}"#);
    assert_eq!((other.text(), other.usage()), (None, None));
}

#[test]
fn usage_comes_from_the_final_chunk_of_either_api() {
    let done = line(r#"{"response":"","done":true,"prompt_eval_count":12,"eval_count":34}"#);
    assert!(done.done());
    assert_eq!(
        done.usage(),
        Some(Usage {
            prompt_tokens: 12,
            completion_tokens: 34
        })
    );
    // Ollama omits prompt_eval_count when the prompt was cached (0).
    assert_eq!(
        line(r#"{"done":true,"eval_count":5}"#).usage(),
        Some(Usage {
            prompt_tokens: 0,
            completion_tokens: 5
        })
    );
    assert_eq!(line(r#"{"response":"a","done":false}"#).usage(), None);
    let u = event(
        Shape::OpenaiChat,
        r#"{"id":"c","choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}"#,
    );
    assert!(u.is_usage_only());
    assert_eq!(u.usage().map(|u| u.completion_tokens), Some(2));
    assert!(!event(Shape::OpenaiChat, r#"{"choices":[{"delta":{}}]}"#).is_usage_only());
}

#[test]
fn untouched_chunks_keep_their_bytes() {
    let raw = "data: {\"b\":1,\"a\":{\"choices\":[]}}\r\n\r\n";
    let c = Chunk::new(Bytes::from(raw), Kind::Event, Shape::OpenaiChat);
    assert_eq!(c.raw(), raw.as_bytes());
    let mut out = BytesMut::new();
    c.write_to(&mut out);
    assert_eq!(&out[..], raw.as_bytes());
    // Setting the same text is not a change either.
    let mut l = line(r#"{"response":"same","done":false}"#);
    assert!(l.set_text("same".into()));
    assert_eq!(
        l.raw(),
        "{\"response\":\"same\",\"done\":false}\n".as_bytes()
    );
}

#[test]
fn rewritten_text_lands_in_the_apis_own_field() {
    let mut g = line(r#"{"model":"m","response":"secret","done":false}"#);
    assert!(g.set_text("[REDACTED]".into()));
    let raw = g.raw();
    assert!(raw.ends_with(b"}\n") && raw.iter().filter(|b| **b == b'\n').count() == 1);
    assert_eq!(json_of(&raw)["response"], "[REDACTED]");
    assert_eq!(json_of(&raw)["model"], "m");

    let mut e = event(
        Shape::OpenaiChat,
        r#"{"id":"x","choices":[{"index":0,"delta":{"role":"assistant","content":"secret"},"finish_reason":null}]}"#,
    );
    e.set_text("".into());
    let raw = e.raw();
    assert!(raw.starts_with(b"data: ") && raw.ends_with(b"\n\n"));
    assert_eq!(json_of(&raw)["choices"][0]["delta"]["content"], "");
    assert_eq!(json_of(&raw)["choices"][0]["delta"]["role"], "assistant");

    // A finish chunk without delta.content gets one.
    let mut f = event(
        Shape::OpenaiChat,
        r#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#,
    );
    f.set_text("held".into());
    assert_eq!(json_of(&f.raw())["choices"][0]["delta"]["content"], "held");

    // Ollama's done chunk of /api/chat without a message gets one.
    let mut d = Chunk::new(
        Bytes::from_static(b"{\"model\":\"m\",\"done\":true,\"eval_count\":1}\n"),
        Kind::Line,
        Shape::OllamaChat,
    );
    d.set_text("tail".into());
    assert_eq!(json_of(&d.raw())["message"]["content"], "tail");

    let mut w = Chunk::new(
        Bytes::from_static(b"{\"response\":\"a secret\",\"done\":true}"),
        Kind::Whole,
        Shape::OllamaGenerate,
    );
    w.set_text("a [REDACTED]".into());
    let body = w.into_whole_body();
    assert!(!body.ends_with(b"\n"));
    assert_eq!(json_of(&body)["response"], "a [REDACTED]");
}

#[test]
fn rewrites_keep_the_bytes_around_the_text() {
    let raw = "{\"model\":\"m\",\"created_at\":\"t\",\"response\":\"se\\\"cret\",\"done\":false}\n";
    let mut g = line(raw.trim_end());
    assert!(g.set_text("a \"quoted\" [REDACTED]".into()));
    assert_eq!(
        std::str::from_utf8(&g.raw()).unwrap(),
        "{\"model\":\"m\",\"created_at\":\"t\",\"response\":\"a \\\"quoted\\\" [REDACTED]\",\"done\":false}\n",
        "key order and the other fields as they came"
    );
    assert_eq!(g.text(), Some("a \"quoted\" [REDACTED]"));
    // A look-alike key earlier in the chunk is not the text's.
    let mut c = Chunk::new(
        Bytes::from_static(
            b"{\"message\":{\"x_content\":\"no\",\"content\":\"old\"},\"done\":false}\n",
        ),
        Kind::Line,
        Shape::OllamaChat,
    );
    c.set_text("new".into());
    let v = json_of(&c.raw());
    assert_eq!(
        (
            v["message"]["content"].as_str(),
            v["message"]["x_content"].as_str()
        ),
        (Some("new"), Some("no"))
    );
    // Twice in a row (two plugins), and SSE framing kept.
    let mut e = event(
        Shape::OpenaiChat,
        r#"{"id":"x","choices":[{"index":0,"delta":{"content":"a"},"finish_reason":null}]}"#,
    );
    e.set_text("b".into());
    e.set_text("c".into());
    let raw = e.raw();
    assert!(raw.starts_with(b"data: {\"id\":\"x\"") && raw.ends_with(b"\n\n"));
    assert_eq!(e.text(), Some("c"));
}

#[test]
fn text_on_a_chunk_without_a_place_for_it_goes_before_it() {
    let mut done = event(Shape::OpenaiChat, "[DONE]");
    assert!(done.set_text("late".into()));
    let mut out = BytesMut::new();
    done.write_to(&mut out);
    let s = std::str::from_utf8(&out).unwrap();
    let (first, rest) = s.split_once("\n\n").unwrap();
    assert_eq!(rest, "data: [DONE]\n\n");
    let v = json_of(first.as_bytes());
    assert_eq!(v["choices"][0]["delta"]["content"], "late");
    assert_eq!(v["object"], "chat.completion.chunk");

    let mut err = line(r#"{"error":"boom"}"#);
    err.set_text("late".into());
    let mut out = BytesMut::new();
    err.write_to(&mut out);
    let lines: Vec<&str> = std::str::from_utf8(&out).unwrap().lines().collect();
    assert_eq!(json_of(lines[0].as_bytes())["response"], "late");
    assert_eq!(lines[1], r#"{"error":"boom"}"#);

    assert!(!event(Shape::Other, "{}").set_text("x".into()));
}

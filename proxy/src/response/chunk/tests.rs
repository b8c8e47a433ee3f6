use super::*;
use crate::response::codec::Codec;
use crate::response::{
    MESSAGES, OLLAMA_CHAT, OLLAMA_GENERATE, OPENAI_CHAT, OPENAI_COMPLETIONS, RESPONSES,
};

fn line(s: &str) -> Chunk {
    Chunk::new(Bytes::from(format!("{s}\n")), Kind::Line, OLLAMA_GENERATE)
}

fn event(shape: &'static dyn Codec, s: &str) -> Chunk {
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
        OLLAMA_CHAT,
    );
    assert_eq!(chat.text(), Some("sky"));
    let oc = event(
        OPENAI_CHAT,
        r#"{"choices":[{"index":0,"delta":{"content":"is"},"finish_reason":null}]}"#,
    );
    assert_eq!(oc.text(), Some("is"));
    assert!(!oc.done());
    let whole = Chunk::new(
        Bytes::from_static(br#"{"choices":[{"message":{"content":"all"}}],"usage":{"prompt_tokens":3,"completion_tokens":4}}"#),
        Kind::Whole,
        OPENAI_CHAT,
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
        OPENAI_COMPLETIONS,
        r#"{"choices":[{"text":"x","finish_reason":"stop"}]}"#,
    );
    assert_eq!(cmpl.text(), Some("x"));
    assert!(cmpl.done());
    assert_eq!(event(OPENAI_CHAT, "[DONE]").text(), None);
    assert_eq!(line(r#"{"error":"boom"}"#).text(), None);
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
        OPENAI_CHAT,
        r#"{"id":"c","choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}"#,
    );
    assert!(u.is_usage_only());
    assert_eq!(u.usage().map(|u| u.completion_tokens), Some(2));
    assert!(!event(OPENAI_CHAT, r#"{"choices":[{"delta":{}}]}"#).is_usage_only());
}

#[test]
fn untouched_chunks_keep_their_bytes() {
    let raw = "data: {\"b\":1,\"a\":{\"choices\":[]}}\r\n\r\n";
    let c = Chunk::new(Bytes::from(raw), Kind::Event, OPENAI_CHAT);
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
        OPENAI_CHAT,
        r#"{"id":"x","choices":[{"index":0,"delta":{"role":"assistant","content":"secret"},"finish_reason":null}]}"#,
    );
    e.set_text("".into());
    let raw = e.raw();
    assert!(raw.starts_with(b"data: ") && raw.ends_with(b"\n\n"));
    assert_eq!(json_of(&raw)["choices"][0]["delta"]["content"], "");
    assert_eq!(json_of(&raw)["choices"][0]["delta"]["role"], "assistant");

    // A finish chunk without delta.content gets one.
    let mut f = event(
        OPENAI_CHAT,
        r#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#,
    );
    f.set_text("held".into());
    assert_eq!(json_of(&f.raw())["choices"][0]["delta"]["content"], "held");

    // Ollama's done chunk of /api/chat without a message gets one.
    let mut d = Chunk::new(
        Bytes::from_static(b"{\"model\":\"m\",\"done\":true,\"eval_count\":1}\n"),
        Kind::Line,
        OLLAMA_CHAT,
    );
    d.set_text("tail".into());
    assert_eq!(json_of(&d.raw())["message"]["content"], "tail");

    let mut w = Chunk::new(
        Bytes::from_static(b"{\"response\":\"a secret\",\"done\":true}"),
        Kind::Whole,
        OLLAMA_GENERATE,
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
        OLLAMA_CHAT,
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
        OPENAI_CHAT,
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
    let mut done = event(OPENAI_CHAT, "[DONE]");
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
}

fn chat_line(json: &str) -> Chunk {
    Chunk::new(Bytes::from(format!("{json}\n")), Kind::Line, OLLAMA_CHAT)
}

fn text_of(c: &Chunk) -> String {
    let mut out = BytesMut::new();
    c.write_to(&mut out);
    String::from_utf8(out.to_vec()).unwrap()
}

#[test]
fn thinking_is_spliced_in_place_keeping_the_bytes() {
    let mut g = line(
        r#"{"model":"qwen3","created_at":"t","response":"","thinking":"my secret","done":false}"#,
    );
    assert_eq!(g.thinking(), Some("my secret"));
    assert!(g.set_thinking("my [REDACTED]".into()));
    assert_eq!(
        text_of(&g),
        "{\"model\":\"qwen3\",\"created_at\":\"t\",\"response\":\"\",\"thinking\":\"my [REDACTED]\",\"done\":false}\n"
    );
    assert!(g.thinking_edited() && !g.text_edited());
    assert_eq!((g.thinking(), g.text()), (Some("my [REDACTED]"), Some("")));

    let mut c = chat_line(
        r#"{"model":"qwen3","created_at":"t","message":{"role":"assistant","content":"","thinking":"se\"cret"},"done":false}"#,
    );
    assert!(c.set_thinking("x".into()));
    assert_eq!(
        text_of(&c),
        "{\"model\":\"qwen3\",\"created_at\":\"t\",\"message\":{\"role\":\"assistant\",\"content\":\"\",\"thinking\":\"x\"},\"done\":false}\n"
    );

    let mut o = event(
        OPENAI_CHAT,
        r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"qwen3","system_fingerprint":"fp_ollama","choices":[{"index":0,"delta":{"role":"assistant","content":"","reasoning":"secret"},"finish_reason":null}]}"#,
    );
    assert!(o.set_thinking("".into()));
    assert_eq!(
        text_of(&o),
        "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"qwen3\",\"system_fingerprint\":\"fp_ollama\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\",\"reasoning\":\"\"},\"finish_reason\":null}]}\n\n"
    );
    // Setting the same thinking is no change.
    let mut same = line(r#"{"response":"","thinking":"a","done":false}"#);
    assert!(same.set_thinking("a".into()));
    assert!(!same.thinking_edited());
    // `/v1/completions` has no thinking, nor do unknown shapes.
    assert!(!event(OPENAI_COMPLETIONS, r#"{"choices":[{"text":"x"}]}"#).set_thinking("t".into()));
}

#[test]
fn thinking_without_a_field_is_set_in_the_tree() {
    // Released on the first text chunk: it lands in that chunk.
    let mut c = chat_line(
        r#"{"model":"qwen3","created_at":"t","message":{"role":"assistant","content":"Hi"},"done":false}"#,
    );
    assert_eq!(c.thinking(), None);
    assert!(c.set_thinking("held".into()));
    let v = json_of(&c.raw());
    assert_eq!(v["message"]["thinking"], "held");
    assert_eq!(v["message"]["content"], "Hi");
    assert!(c.inserted().is_none());
    assert_eq!(c.thinking(), Some("held"));

    // Ollama's done chunk without a message gets one.
    let mut d = chat_line(r#"{"model":"qwen3","done":true,"eval_count":1}"#);
    assert!(d.set_thinking("tail".into()));
    assert_eq!(json_of(&d.raw())["message"]["thinking"], "tail");

    let mut g = line(r#"{"model":"qwen3","response":"Hi","done":false}"#);
    assert!(g.set_thinking("held".into()));
    assert_eq!(json_of(&g.raw())["thinking"], "held");

    // OpenAI: a finish chunk with an empty delta gets `reasoning`.
    let mut f = event(
        OPENAI_CHAT,
        r#"{"id":"c","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#,
    );
    assert!(f.set_thinking("held".into()));
    assert_eq!(
        json_of(&f.raw())["choices"][0]["delta"]["reasoning"],
        "held"
    );

    // A whole OpenAI answer: `message.reasoning`.
    let mut w = Chunk::new(
        Bytes::from_static(br#"{"id":"c","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"Hi"},"finish_reason":"stop"}]}"#),
        Kind::Whole,
        OPENAI_CHAT,
    );
    assert!(w.set_thinking("why".into()));
    assert_eq!(
        json_of(&w.into_whole_body())["choices"][0]["message"]["reasoning"],
        "why"
    );

    // A look-alike key first: the splice refuses, the tree does it.
    let mut l =
        chat_line(r#"{"message":{"x_thinking":"no","thinking":"old","content":""},"done":false}"#);
    assert!(l.set_thinking("new".into()));
    let v = json_of(&l.raw());
    assert_eq!(
        (
            v["message"]["thinking"].as_str(),
            v["message"]["x_thinking"].as_str()
        ),
        (Some("new"), Some("no"))
    );
}

#[test]
fn thinking_on_a_chunk_without_a_place_goes_before_it() {
    let mut done = event(OPENAI_CHAT, "[DONE]");
    assert!(done.set_thinking("late".into()));
    let s = text_of(&done);
    let (first, rest) = s.split_once("\n\n").unwrap();
    assert_eq!(rest, "data: [DONE]\n\n");
    let v = json_of(first.as_bytes());
    assert_eq!(v["choices"][0]["delta"]["reasoning"], "late");
    assert_eq!(v["choices"][0]["delta"]["content"], "");
    assert_eq!(done.inserted_thinking(), Some("late"));

    let mut err = chat_line(r#"{"error":"boom"}"#);
    assert!(err.set_thinking("late".into()));
    let s = text_of(&err);
    let lines: Vec<&str> = s.lines().collect();
    assert_eq!(json_of(lines[0].as_bytes())["message"]["thinking"], "late");
    assert_eq!(lines[1], r#"{"error":"boom"}"#);

    let mut gen_err = line(r#"{"error":"boom"}"#);
    gen_err.set_thinking("late".into());
    assert_eq!(
        json_of(text_of(&gen_err).lines().next().unwrap().as_bytes())["thinking"],
        "late"
    );
}

#[test]
fn text_and_thinking_set_on_one_chunk_both_survive() {
    let raw = r#"{"model":"qwen3","created_at":"t","message":{"role":"assistant","content":"a secret","thinking":"my secret"},"done":false}"#;
    // Text then thinking, both spliced.
    let mut a = chat_line(raw);
    assert!(a.set_text("a [R]".into()));
    assert!(a.set_thinking("my [R]".into()));
    assert_eq!(
        text_of(&a),
        "{\"model\":\"qwen3\",\"created_at\":\"t\",\"message\":{\"role\":\"assistant\",\"content\":\"a [R]\",\"thinking\":\"my [R]\"},\"done\":false}\n"
    );
    assert_eq!((a.text(), a.thinking()), (Some("a [R]"), Some("my [R]")));
    assert!(a.text_edited() && a.thinking_edited());
    // Thinking then text, twice each (two plugins): the tree takes over.
    let mut b = chat_line(raw);
    b.set_thinking("t1".into());
    b.set_text("x1".into());
    b.set_thinking("t2".into());
    b.set_text("x2".into());
    let v = json_of(&b.raw());
    assert_eq!(
        (
            v["message"]["content"].as_str(),
            v["message"]["thinking"].as_str()
        ),
        (Some("x2"), Some("t2"))
    );
    // A tree first (a created field), then a splice is not taken: both stay.
    let mut c = chat_line(
        r#"{"model":"qwen3","message":{"role":"assistant","content":"Hi"},"done":false}"#,
    );
    c.set_thinking("held".into());
    c.set_text("Hey".into());
    let v = json_of(&c.raw());
    assert_eq!(
        (
            v["message"]["content"].as_str(),
            v["message"]["thinking"].as_str()
        ),
        (Some("Hey"), Some("held"))
    );

    // Nothing has a place: thinking goes out first, whatever the order.
    for thinking_first in [true, false] {
        let mut d = event(OPENAI_CHAT, "[DONE]");
        if thinking_first {
            d.set_thinking("t".into());
            d.set_text("x".into());
        } else {
            d.set_text("x".into());
            d.set_thinking("t".into());
        }
        let s = text_of(&d);
        let events: Vec<&str> = s.split_terminator("\n\n").collect();
        assert_eq!(events.len(), 3, "{s}");
        assert_eq!(
            json_of(events[0].as_bytes())["choices"][0]["delta"]["reasoning"],
            "t"
        );
        assert_eq!(
            json_of(events[1].as_bytes())["choices"][0]["delta"]["content"],
            "x"
        );
        assert_eq!(events[2], "data: [DONE]");
        assert_eq!(
            (d.inserted_text(), d.inserted_thinking()),
            (Some("x"), Some("t"))
        );
    }
}

/// What the codec's answer state does to `c` after the hooks, when
/// `answer_changed`: a hook changed this or an earlier chunk of the answer.
fn drop_token_fields(c: &mut Chunk, answer_changed: bool) {
    let mut state = c.codec().answer(c.kind()).unwrap();
    if answer_changed {
        let mut earlier = Chunk::new(Bytes::from_static(b"[DONE]\n"), c.kind(), c.codec());
        earlier.set_text("x".into());
        state.after_hooks(&mut earlier);
    }
    state.after_hooks(c);
}

/// A `logprobs` entry as Ollama writes one (api/types.go `Logprob`).
const LP: &str = r#"[{"token":"blue ","logprob":-0.5,"bytes":[98,108,117,101,32],"top_logprobs":[{"token":"blue ","logprob":-0.5}]}]"#;

#[test]
fn a_changed_chunk_loses_its_logprobs_and_an_unchanged_one_keeps_its_bytes() {
    let raw = format!(r#"{{"model":"m","response":"blue ","logprobs":{LP},"done":false}}"#);
    // Untouched: the very bytes, not rebuilt.
    let mut c = line(&raw);
    drop_token_fields(&mut c, true);
    assert_eq!(text_of(&c), format!("{raw}\n"));

    // Edited by the splice path, then by the tree path: no logprobs either way.
    for spliced in [true, false] {
        let mut c = line(&raw);
        if !spliced {
            c.tree();
            c.tree_changed();
        }
        c.set_text("[REDACTED]".into());
        assert!(c.text_edited());
        drop_token_fields(&mut c, false);
        let v = json_of(&c.raw());
        assert_eq!(v["response"], "[REDACTED]");
        assert!(v.get("logprobs").is_none(), "{v}");
        assert!(c.raw().ends_with(b"}\n"));
    }

    // Thinking edited: the same.
    let mut c = Chunk::new(
        Bytes::from(
            format!(
                r#"{{"model":"m","message":{{"role":"assistant","content":"","thinking":"blue "}},"logprobs":{LP},"done":false}}"#
            ) + "\n",
        ),
        Kind::Line,
        OLLAMA_CHAT,
    );
    c.set_thinking("".into());
    drop_token_fields(&mut c, true);
    assert!(json_of(&c.raw()).get("logprobs").is_none());

    // OpenAI: the choice's `logprobs`, removed as Ollama omits it, the
    // event's other lines kept.
    for (shape, choice) in [
        (
            OPENAI_CHAT,
            format!(
                r#"{{"index":0,"delta":{{"content":"blue "}},"finish_reason":null,"logprobs":{{"content":{LP}}}}}"#
            ),
        ),
        (
            OPENAI_COMPLETIONS,
            format!(
                r#"{{"text":"blue ","index":0,"finish_reason":null,"logprobs":{{"content":{LP}}}}}"#
            ),
        ),
    ] {
        let raw = format!(r#"{{"id":"x","choices":[{choice}]}}"#);
        let mut kept = event(shape, &raw);
        drop_token_fields(&mut kept, true);
        assert_eq!(text_of(&kept), format!("data: {raw}\n\n"));
        let mut c = event(shape, &raw);
        c.set_text("[REDACTED]".into());
        drop_token_fields(&mut c, true);
        let v = json_of(&c.raw());
        assert!(v["choices"][0].get("logprobs").is_none(), "{v}");
        assert_eq!(v["choices"][0]["index"], 0);
    }

    // A whole OpenAI chat body.
    let mut whole = Chunk::new(
        Bytes::from(format!(
            r#"{{"choices":[{{"index":0,"message":{{"content":"blue "}},"logprobs":{{"content":{LP}}}}}]}}"#
        )),
        Kind::Whole,
        OPENAI_CHAT,
    );
    whole.set_text("[REDACTED]".into());
    let changed = whole.changed_by_hooks();
    drop_token_fields(&mut whole, changed);
    assert!(!text_of(&whole).contains("logprobs"));
}

#[test]
fn context_goes_once_the_answer_changed() {
    let done = r#"{"model":"m","response":"","done":true,"context":[1,2,3],"eval_count":3}"#;
    // Nothing changed in the answer: kept, bytes as they were.
    let mut c = line(done);
    drop_token_fields(&mut c, false);
    assert_eq!(text_of(&c), format!("{done}\n"));
    // An earlier chunk changed: gone, the rest kept.
    let mut c = line(done);
    drop_token_fields(&mut c, true);
    let v = json_of(&c.raw());
    assert!(v.get("context").is_none(), "{v}");
    assert_eq!(v["eval_count"], 3);
    // The final chunk itself changed (text released on it).
    let mut c = line(done);
    c.set_text("held".into());
    assert!(c.changed_by_hooks());
    let changed = c.changed_by_hooks();
    drop_token_fields(&mut c, changed);
    let v = json_of(&c.raw());
    assert_eq!(
        (v["response"].as_str(), v.get("context")),
        (Some("held"), None)
    );
    // Text a hook put before a chunk that has no place for it counts too.
    let mut c = event(OPENAI_CHAT, "[DONE]");
    c.set_text("x".into());
    assert!(c.changed_by_hooks());
    // Only /api/generate has a context: a chat field of that name stays.
    let chat =
        r#"{"model":"m","message":{"role":"assistant","content":""},"context":[1],"done":true}"#;
    let mut c = Chunk::new(Bytes::from(format!("{chat}\n")), Kind::Line, OLLAMA_CHAT);
    drop_token_fields(&mut c, true);
    assert_eq!(text_of(&c), format!("{chat}\n"));
}

/// The event APIs (Responses, Messages): where text and thinking go when
/// they cannot simply replace the JSON string they came from.
mod events {
    use super::*;

    fn event(shape: &'static dyn Codec, name: &str, json: &str) -> Chunk {
        Chunk::named_event(shape, name, json)
    }

    fn body(shape: &'static dyn Codec, json: &str) -> Chunk {
        Chunk::new(Bytes::from(format!("{json}\n")), Kind::Whole, shape)
    }

    fn text(c: &Chunk) -> String {
        String::from_utf8(c.raw().to_vec()).unwrap()
    }

    fn json(c: &Chunk) -> Value {
        let raw = text(c);
        let data = raw.lines().find_map(|l| l.strip_prefix("data: "));
        serde_json::from_str(data.unwrap_or(&raw)).unwrap()
    }

    #[test]
    fn deltas_are_rewritten_in_place_with_their_event_line() {
        let mut r = event(
            RESPONSES,
            "response.output_text.delta",
            r#"{"content_index":0,"delta":"secret","item_id":"msg_1","logprobs":[],"output_index":0,"sequence_number":4,"type":"response.output_text.delta"}"#,
        );
        assert_eq!(r.text(), Some("secret"));
        assert!(r.set_text("[REDACTED]".into()));
        assert_eq!(
            text(&r),
            "event: response.output_text.delta\ndata: {\"content_index\":0,\"delta\":\"[REDACTED]\",\"item_id\":\"msg_1\",\"logprobs\":[],\"output_index\":0,\"sequence_number\":4,\"type\":\"response.output_text.delta\"}\n\n"
        );
        assert!(r.text_edited());

        let mut m = event(
            MESSAGES,
            "content_block_delta",
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"secret"}}"#,
        );
        assert!(m.set_text("".into()));
        assert_eq!(
            text(&m),
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"\"}}\n\n"
        );
        // Twice (two plugins): the second goes through the tree, the event line stays.
        assert!(m.set_text("x".into()));
        assert!(m.set_text("y".into()));
        assert!(text(&m).starts_with("event: content_block_delta\ndata: {"));
        assert_eq!(json(&m)["delta"]["text"], "y");
    }

    #[test]
    fn text_released_at_a_block_end_goes_in_a_delta_of_that_block() {
        let mut stop = event(
            MESSAGES,
            "content_block_stop",
            r#"{"type":"content_block_stop","index":1}"#,
        );
        assert!(
            !stop.done(),
            "which kind of block it closes, only the answer's starts tell (see `blocks`)"
        );
        assert!(stop.set_text("held".into()));
        assert_eq!(
            std::str::from_utf8(stop.inserted().unwrap()).unwrap(),
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"text_delta\",\"text\":\"held\"}}\n\n"
        );
        assert_eq!(stop.inserted_text(), Some("held"));
        assert_eq!(
            text(&stop),
            "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":1}\n\n"
        );
        assert!(!stop.text_edited(), "its own bytes are unchanged");

        let mut done = event(
            RESPONSES,
            "response.output_text.done",
            r#"{"content_index":0,"item_id":"msg_7","logprobs":[],"output_index":2,"sequence_number":9,"text":"x","type":"response.output_text.done"}"#,
        );
        assert!(done.set_text("held".into()));
        let inserted = std::str::from_utf8(done.inserted().unwrap()).unwrap();
        assert_eq!(
            inserted,
            "event: response.output_text.delta\ndata: {\"content_index\":0,\"delta\":\"held\",\"item_id\":\"msg_7\",\"logprobs\":[],\"output_index\":2,\"sequence_number\":9,\"type\":\"response.output_text.delta\"}\n\n"
        );
    }

    #[test]
    fn whole_bodies_get_the_text_once() {
        // The reasoning summary's "text" comes first: the splice would hit
        // it, so the tree does it.
        let mut r = body(
            RESPONSES,
            r#"{"id":"resp_1","object":"response","output":[{"id":"rs_1","type":"reasoning","summary":[{"type":"summary_text","text":"secret"}]},{"id":"msg_1","type":"message","status":"completed","role":"assistant","content":[{"type":"output_text","text":"a secret","annotations":[],"logprobs":[]}]}],"usage":{"input_tokens":1,"output_tokens":2}}"#,
        );
        assert_eq!(r.text(), Some("a secret"));
        assert!(r.set_text("a [REDACTED]".into()));
        let v = json(&r);
        assert_eq!(v["output"][1]["content"][0]["text"], "a [REDACTED]");
        assert_eq!(
            v["output"][0]["summary"][0]["text"], "secret",
            "not the answer's text"
        );
        assert!(text(&r).ends_with("}\n"));

        // Text in one part: the splice keeps the bytes around it.
        let mut m = body(
            MESSAGES,
            r#"{"id":"msg_1","type":"message","role":"assistant","model":"m","content":[{"type":"text","text":"a secret"}],"stop_reason":"end_turn","usage":{"input_tokens":5,"output_tokens":9}}"#,
        );
        assert!(m.set_text("a [REDACTED]".into()));
        assert_eq!(
            text(&m),
            "{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"m\",\"content\":[{\"type\":\"text\",\"text\":\"a [REDACTED]\"}],\"stop_reason\":\"end_turn\",\"usage\":{\"input_tokens\":5,\"output_tokens\":9}}\n"
        );

        // Several parts: the first gets the text, the others none.
        let mut two = body(
            MESSAGES,
            r#"{"type":"message","content":[{"type":"text","text":"a "},{"type":"tool_use","id":"t","name":"f","input":{}},{"type":"text","text":"secret"}]}"#,
        );
        assert_eq!(two.text(), Some("a secret"));
        two.set_text("a [REDACTED]".into());
        let v = json(&two);
        assert_eq!(
            (
                v["content"][0]["text"].as_str(),
                v["content"][2]["text"].as_str()
            ),
            (Some("a [REDACTED]"), Some(""))
        );
        assert_eq!(two.text(), Some("a [REDACTED]"));

        // No text block yet: one is added.
        let mut none = body(MESSAGES, r#"{"type":"message","content":[]}"#);
        none.set_text("note".into());
        assert_eq!(json(&none)["content"][0]["text"], "note");
        // An error body has no place for text.
        let mut err = body(
            MESSAGES,
            r#"{"type":"error","error":{"type":"api_error","message":"x"}}"#,
        );
        err.set_text("note".into());
        assert_eq!(json(&err)["error"]["message"], "x");
    }

    #[test]
    fn thinking_deltas_are_rewritten_in_place() {
        let mut r = event(
            RESPONSES,
            "response.reasoning_summary_text.delta",
            r#"{"delta":"my secret","item_id":"rs_1","output_index":0,"sequence_number":3,"summary_index":0,"type":"response.reasoning_summary_text.delta"}"#,
        );
        assert_eq!((r.thinking(), r.text()), (Some("my secret"), None));
        assert!(!r.thinking_done());
        assert!(r.set_thinking("my [R]".into()));
        assert_eq!(
            text(&r),
            "event: response.reasoning_summary_text.delta\ndata: {\"delta\":\"my [R]\",\"item_id\":\"rs_1\",\"output_index\":0,\"sequence_number\":3,\"summary_index\":0,\"type\":\"response.reasoning_summary_text.delta\"}\n\n"
        );
        assert!(r.thinking_edited() && !r.text_edited());
        // Twice: the tree, the event line kept.
        assert!(r.set_thinking("a".into()));
        assert!(r.set_thinking("b".into()));
        assert!(text(&r).starts_with("event: response.reasoning_summary_text.delta\ndata: {"));
        assert_eq!(json(&r)["delta"], "b");

        let mut m = event(
            MESSAGES,
            "content_block_delta",
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"my secret"}}"#,
        );
        assert_eq!(m.thinking(), Some("my secret"));
        assert!(m.set_thinking("".into()));
        assert_eq!(
            text(&m),
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"thinking_delta\",\"thinking\":\"\"}}\n\n"
        );
        assert!(m.set_thinking("x".into()));
        assert!(m.set_thinking("y".into()));
        assert_eq!(json(&m)["delta"]["thinking"], "y");
        assert_eq!(json(&m)["delta"]["type"], "thinking_delta");
    }

    #[test]
    fn thinking_released_at_its_end_goes_in_a_delta_of_its_item_or_block() {
        let mut done = event(
            RESPONSES,
            "response.reasoning_summary_text.done",
            r#"{"item_id":"rs_7","output_index":1,"sequence_number":9,"summary_index":0,"text":"x","type":"response.reasoning_summary_text.done"}"#,
        );
        assert!(done.thinking_done() && !done.done());
        assert_eq!(done.thinking(), None, "a copy, not new thinking");
        assert!(done.set_thinking("held".into()));
        assert_eq!(
            std::str::from_utf8(done.inserted().unwrap()).unwrap(),
            "event: response.reasoning_summary_text.delta\ndata: {\"delta\":\"held\",\"item_id\":\"rs_7\",\"output_index\":1,\"sequence_number\":9,\"summary_index\":0,\"type\":\"response.reasoning_summary_text.delta\"}\n\n"
        );
        assert_eq!(done.inserted_thinking(), Some("held"));
        assert!(!done.thinking_edited(), "its own bytes are unchanged");

        // A text event names its message: the thinking's item is not it.
        let mut text_delta = event(
            RESPONSES,
            "response.output_text.delta",
            r#"{"content_index":0,"delta":"Hi","item_id":"msg_1","logprobs":[],"output_index":1,"sequence_number":7,"type":"response.output_text.delta"}"#,
        );
        assert!(text_delta.set_thinking("late".into()));
        let inserted = std::str::from_utf8(text_delta.inserted().unwrap()).unwrap();
        assert!(inserted.contains("\"item_id\":\"rs_kiln\""), "{inserted}");
        assert_eq!(text_delta.text(), Some("Hi"));

        let mut stop = event(
            MESSAGES,
            "content_block_stop",
            r#"{"type":"content_block_stop","index":0}"#,
        );
        assert!(stop.set_thinking("held".into()));
        assert_eq!(
            std::str::from_utf8(stop.inserted().unwrap()).unwrap(),
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"thinking_delta\",\"thinking\":\"held\"}}\n\n"
        );
    }

    #[test]
    fn thinking_and_text_inserted_before_one_event_go_out_thinking_first() {
        let mut stop = event(
            MESSAGES,
            "content_block_stop",
            r#"{"type":"content_block_stop","index":2}"#,
        );
        assert!(stop.set_text("x".into()));
        assert!(stop.set_thinking("t".into()));
        assert!(stop.set_text("y".into()));
        let inserted = std::str::from_utf8(stop.inserted().unwrap()).unwrap();
        let events: Vec<&str> = inserted.split_terminator("\n\n").collect();
        assert_eq!(events.len(), 2, "one event per channel: {inserted}");
        assert!(
            events[0].contains("\"thinking_delta\",\"thinking\":\"t\""),
            "{inserted}"
        );
        assert!(
            events[1].contains("\"text_delta\",\"text\":\"xy\""),
            "{inserted}"
        );
    }

    #[test]
    fn whole_bodies_get_the_thinking_once() {
        // Ollama's ToResponse: the thinking in the summary and again in
        // encrypted_content; neither may keep the original.
        let mut r = body(
            RESPONSES,
            r#"{"id":"resp_1","object":"response","output":[{"id":"rs_resp_1","type":"reasoning","summary":[{"type":"summary_text","text":"my secret"}],"encrypted_content":"my secret"},{"id":"msg_1","type":"message","status":"completed","role":"assistant","content":[{"type":"output_text","text":"a secret","annotations":[],"logprobs":[]}]}],"usage":{"input_tokens":1,"output_tokens":2}}"#,
        );
        assert_eq!(
            (r.thinking(), r.text()),
            (Some("my secret"), Some("a secret"))
        );
        assert!(r.thinking_done());
        assert!(r.set_text("a [R]".into()));
        assert!(r.set_thinking("my [R]".into()));
        let v = json(&r);
        assert_eq!(v["output"][0]["summary"][0]["text"], "my [R]");
        assert_eq!(v["output"][0]["encrypted_content"], "my [R]");
        assert_eq!(v["output"][1]["content"][0]["text"], "a [R]");
        assert!(!text(&r).contains("secret"));
        assert_eq!((r.thinking(), r.text()), (Some("my [R]"), Some("a [R]")));

        // Several parts: the first gets it, the others none.
        let mut two = body(
            RESPONSES,
            r#"{"object":"response","output":[{"id":"rs_1","type":"reasoning","summary":[{"type":"summary_text","text":"a "},{"type":"summary_text","text":"secret"}],"encrypted_content":"a secret"}]}"#,
        );
        assert_eq!(two.thinking(), Some("a secret"));
        two.set_thinking("a [R]".into());
        let v = json(&two);
        assert_eq!(
            (
                v["output"][0]["summary"][0]["text"].as_str(),
                v["output"][0]["summary"][1]["text"].as_str()
            ),
            (Some("a [R]"), Some(""))
        );
        assert_eq!(v["output"][0]["encrypted_content"], "a [R]");
        assert_eq!(two.thinking(), Some("a [R]"));

        // No reasoning item: one goes first.
        let mut none = body(
            RESPONSES,
            r#"{"object":"response","output":[{"id":"msg_1","type":"message","content":[{"type":"output_text","text":"Hi"}]}]}"#,
        );
        assert_eq!(none.thinking(), None);
        none.set_thinking("note".into());
        let v = json(&none);
        assert_eq!(v["output"][0]["type"], "reasoning");
        assert_eq!(v["output"][0]["summary"][0]["text"], "note");
        assert_eq!(v["output"][1]["content"][0]["text"], "Hi");
        assert_eq!(none.thinking(), Some("note"));

        // Messages: a single thinking block is spliced, bytes kept.
        let mut m = body(
            MESSAGES,
            r#"{"id":"msg_1","type":"message","role":"assistant","model":"qwen3","content":[{"type":"thinking","thinking":"my secret"},{"type":"text","text":"Hi"}],"stop_reason":"end_turn","usage":{"input_tokens":5,"output_tokens":9}}"#,
        );
        assert!(m.set_thinking("my [R]".into()));
        assert_eq!(
            text(&m),
            "{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"qwen3\",\"content\":[{\"type\":\"thinking\",\"thinking\":\"my [R]\"},{\"type\":\"text\",\"text\":\"Hi\"}],\"stop_reason\":\"end_turn\",\"usage\":{\"input_tokens\":5,\"output_tokens\":9}}\n"
        );
        // Several blocks: the first gets it; none: one goes first.
        let mut two = body(
            MESSAGES,
            r#"{"type":"message","content":[{"type":"thinking","thinking":"a "},{"type":"text","text":"Hi"},{"type":"thinking","thinking":"secret"}]}"#,
        );
        assert_eq!(two.thinking(), Some("a secret"));
        two.set_thinking("a [R]".into());
        let v = json(&two);
        assert_eq!(
            (
                v["content"][0]["thinking"].as_str(),
                v["content"][2]["thinking"].as_str()
            ),
            (Some("a [R]"), Some(""))
        );
        let mut none = body(
            MESSAGES,
            r#"{"type":"message","content":[{"type":"text","text":"Hi"}]}"#,
        );
        none.set_thinking("note".into());
        let v = json(&none);
        assert_eq!(
            (
                v["content"][0]["thinking"].as_str(),
                v["content"][1]["text"].as_str()
            ),
            (Some("note"), Some("Hi"))
        );
        // An error body has no place for it.
        let mut err = body(
            MESSAGES,
            r#"{"type":"error","error":{"type":"api_error","message":"x"}}"#,
        );
        err.set_thinking("note".into());
        assert_eq!(json(&err)["error"]["message"], "x");
        assert!(!text(&err).contains("note"));
    }

    #[test]
    fn anthropic_usage_adds_up_over_its_two_events() {
        let start = event(
            MESSAGES,
            "message_start",
            r#"{"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","model":"m","content":[],"usage":{"input_tokens":5,"output_tokens":0}}}"#,
        );
        let delta = event(
            MESSAGES,
            "message_delta",
            r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":9}}"#,
        );
        let mut usage = None;
        for c in [&start, &delta] {
            if let Some(u) = c.usage() {
                usage = Some(Usage::merged(usage, u));
            }
        }
        assert_eq!(
            usage,
            Some(Usage {
                prompt_tokens: 5,
                completion_tokens: 9
            })
        );
        // Ollama repeats the final input count there: it wins over the estimate.
        let ollama = Usage {
            prompt_tokens: 7,
            completion_tokens: 9,
        };
        assert_eq!(Usage::merged(start.usage(), ollama), ollama);
    }
}

/// A key twice (which Go never writes, and something posing as Ollama
/// could): the hooks read what clients read, the last one, and the client
/// gets that form, so text no hook saw cannot reach it.
#[test]
fn a_duplicated_key_reads_as_clients_read_it() {
    let raw = "{\"model\":\"m\",\"response\":\"hidden\",\"done\":false,\"response\":\"shown\"}\n";
    let c = Chunk::new(Bytes::from(raw), Kind::Line, OLLAMA_GENERATE);
    assert_eq!(c.text(), Some("shown"));
    let out = c.raw();
    assert!(!out.windows(6).any(|w| w == b"hidden"), "{out:?}");
    let mut c = Chunk::new(Bytes::from(raw), Kind::Line, OLLAMA_GENERATE);
    assert!(c.set_text("[REDACTED]".into()));
    let v: serde_json::Value = serde_json::from_slice(&c.raw()).unwrap();
    assert_eq!(v["response"], "[REDACTED]");
}

/// Found by the response_codecs fuzz target: a line whose only Ollama field
/// is `thinking` (here: not UTF-8, its other keys misspelled) is read as
/// carrying thinking, so a rewrite of it must land in it, not in a chunk
/// inserted before (the original would then reach the client too).
#[test]
fn thinking_read_from_an_odd_line_is_rewritten_in_it() {
    let raw = b"{\"moeel\":\"m\",\"thinking\":\"\xa9\xa9secret\",\"do\xb5ne\":true}\n";
    let mut c = Chunk::new(Bytes::from_static(raw), Kind::Line, OLLAMA_GENERATE);
    assert_eq!(c.thinking(), Some("\u{FFFD}\u{FFFD}secret"));
    assert!(c.set_thinking("[REDACTED]".into()));
    assert!(c.inserted().is_none());
    let out = c.raw();
    assert!(!out.windows(6).any(|w| w == b"secret"), "{out:?}");
    let sent = Chunk::new(out, Kind::Line, OLLAMA_GENERATE);
    assert_eq!(sent.thinking(), Some("[REDACTED]"));
}

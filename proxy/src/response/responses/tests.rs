use super::*;
use crate::response::RESPONSES;
use crate::response::chunk::Chunk;

fn event(name: &str, json: &str) -> Chunk {
    Chunk::named_event(RESPONSES, name, json)
}

fn delta(seq: u32, text: &str) -> Chunk {
    event(
        "response.output_text.delta",
        &format!(
            r#"{{"content_index":0,"delta":{},"item_id":"msg_1","logprobs":[],"output_index":0,"sequence_number":{seq},"type":"response.output_text.delta"}}"#,
            serde_json::to_string(text).unwrap()
        ),
    )
}

/// What the hooks do to every chunk they see: read its text.
fn hooks_read(chunks: &[Chunk]) {
    for c in chunks {
        c.text();
    }
}

fn data(c: &Chunk) -> Value {
    let raw = c.raw();
    let s = std::str::from_utf8(&raw).unwrap();
    let (head, rest) = s.split_once('\n').unwrap();
    assert!(head.starts_with("event: "), "the event line stays: {s}");
    serde_json::from_str(rest.trim().strip_prefix("data: ").unwrap()).unwrap()
}

fn the_end() -> Vec<Chunk> {
    vec![
        event(
            "response.output_text.done",
            r#"{"content_index":0,"item_id":"msg_1","logprobs":[],"output_index":0,"sequence_number":6,"text":"my secret plan","type":"response.output_text.done"}"#,
        ),
        event(
            "response.content_part.done",
            r#"{"content_index":0,"item_id":"msg_1","output_index":0,"part":{"annotations":[],"logprobs":[],"text":"my secret plan","type":"output_text"},"sequence_number":7,"type":"response.content_part.done"}"#,
        ),
        event(
            "response.output_item.done",
            r#"{"item":{"content":[{"annotations":[],"logprobs":[],"text":"my secret plan","type":"output_text"}],"id":"msg_1","role":"assistant","status":"completed","type":"message"},"output_index":0,"sequence_number":8,"type":"response.output_item.done"}"#,
        ),
        event(
            "response.completed",
            r#"{"response":{"id":"resp_1","output":[{"content":[{"annotations":[],"logprobs":[],"text":"my secret plan","type":"output_text"}],"id":"msg_1","role":"assistant","status":"completed","type":"message"}],"text":{"format":{"type":"text"}},"usage":{"input_tokens":3,"output_tokens":3}},"sequence_number":9,"type":"response.completed"}"#,
        ),
    ]
}

fn added() -> Chunk {
    event(
        "response.output_item.added",
        r#"{"item":{"content":[],"id":"msg_1","role":"assistant","status":"in_progress","type":"message"},"output_index":0,"sequence_number":2,"type":"response.output_item.added"}"#,
    )
}

#[test]
fn only_streamed_responses_answers_need_one() {
    assert!(RESPONSES.answer(Kind::Event).is_some());
    assert!(RESPONSES.answer(Kind::Whole).is_none());
}

#[test]
fn copies_of_rewritten_text_say_what_was_sent() {
    let mut t = Transcript::default();
    t.sent(&mut added());
    let mut d = [delta(3, "my "), delta(4, "secret "), delta(5, "plan")];
    hooks_read(&d);
    assert!(d[1].set_text("[REDACTED] ".into()));
    for c in &mut d {
        t.sent(c);
    }
    let mut end = the_end();
    for c in &mut end {
        t.sent(c);
    }
    let sent = "my [REDACTED] plan";
    assert_eq!(data(&end[0])["text"], sent);
    assert_eq!(data(&end[1])["part"]["text"], sent);
    assert_eq!(data(&end[2])["item"]["content"][0]["text"], sent);
    let done = data(&end[3]);
    assert_eq!(done["response"]["output"][0]["content"][0]["text"], sent);
    assert_eq!(
        done["response"]["text"]["format"]["type"], "text",
        "not a text copy"
    );
    assert_eq!(done["response"]["usage"]["output_tokens"], 3);
    for c in &end {
        assert!(!c.raw().windows(6).any(|w| w == b"secret"));
    }
}

#[test]
fn text_released_before_the_done_event_is_part_of_the_copies() {
    let mut t = Transcript::default();
    t.sent(&mut added());
    let mut d = [delta(3, "my "), delta(4, "secret "), delta(5, "plan")];
    // A hook holds "secret plan" back, then releases it redacted at the
    // done event, which has no place for text: it goes in a delta before.
    hooks_read(&d);
    d[1].set_text(String::new());
    d[2].set_text(String::new());
    for c in &mut d {
        t.sent(c);
    }
    let mut end = the_end();
    assert!(end[0].done());
    assert!(end[0].set_text("[REDACTED]".into()));
    let inserted = std::str::from_utf8(end[0].inserted().unwrap())
        .unwrap()
        .to_owned();
    assert!(inserted.starts_with("event: response.output_text.delta\ndata: {\"content_index\":0,\"delta\":\"[REDACTED]\",\"item_id\":\"msg_1\""), "{inserted}");
    for c in &mut end {
        t.sent(c);
    }
    assert_eq!(data(&end[0])["text"], "my [REDACTED]");
    assert_eq!(
        data(&end[3])["response"]["output"][0]["content"][0]["text"],
        "my [REDACTED]"
    );
}

/// The sequence numbers of what goes out for `chunks`, inserted events included.
fn numbers(chunks: &[Chunk]) -> Vec<u64> {
    let mut out = Vec::new();
    for c in chunks {
        let mut raw = c.inserted().map(<[u8]>::to_vec).unwrap_or_default();
        raw.extend_from_slice(&c.raw());
        for e in std::str::from_utf8(&raw).unwrap().split_terminator("\n\n") {
            let data = e.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
            let v: Value = serde_json::from_str(data).unwrap();
            out.push(v["sequence_number"].as_u64().unwrap());
        }
    }
    out
}

#[test]
fn an_inserted_event_takes_the_number_of_the_next_and_the_rest_move_up() {
    let mut t = Transcript::default();
    let mut chunks = vec![
        added(),
        delta(3, "my "),
        delta(4, "secret "),
        delta(5, "plan"),
    ];
    chunks.extend(the_end());
    hooks_read(&chunks);
    chunks[2].set_text(String::new());
    chunks[3].set_text(String::new());
    // Released at the text's end, by two hooks: one event carries both.
    assert!(chunks[4].set_text("[REDACTED]".into()));
    assert!(chunks[4].set_text(" ok".into()));
    for c in &mut chunks {
        t.sent(c);
    }
    assert_eq!(numbers(&chunks), (2..=10).collect::<Vec<_>>());
    let inserted = std::str::from_utf8(chunks[4].inserted().unwrap()).unwrap();
    assert_eq!(inserted.matches("event: ").count(), 1, "{inserted}");
    assert!(
        inserted.contains("\"delta\":\"[REDACTED] ok\""),
        "{inserted}"
    );
    assert_eq!(data(&chunks[4])["text"], "my [REDACTED] ok");
}

#[test]
fn events_after_an_insertion_are_renumbered_even_when_nothing_else_changes() {
    // Text put on an event early in the answer: the deltas after it,
    // which nothing else rewrites, move up too.
    let mut t = Transcript::default();
    let mut chunks = vec![
        added(),
        event(
            "response.content_part.added",
            r#"{"content_index":0,"item_id":"msg_1","output_index":0,"part":{"annotations":[],"logprobs":[],"text":"","type":"output_text"},"sequence_number":3,"type":"response.content_part.added"}"#,
        ),
        delta(4, "my "),
        delta(5, "plan"),
    ];
    hooks_read(&chunks);
    assert!(chunks[1].set_text("Note: ".into()));
    for c in &mut chunks {
        t.sent(c);
    }
    assert_eq!(numbers(&chunks), [2, 3, 4, 5, 6]);
    assert_eq!(data(&chunks[3])["delta"], "plan", "only the number changed");
    assert_eq!(t.items, vec![("msg_1".into(), "Note: my plan".into())]);
}

fn thought(seq: u32, thinking: &str) -> Chunk {
    event(
        "response.reasoning_summary_text.delta",
        &format!(
            r#"{{"delta":{},"item_id":"rs_1","output_index":0,"sequence_number":{seq},"summary_index":0,"type":"response.reasoning_summary_text.delta"}}"#,
            serde_json::to_string(thinking).unwrap()
        ),
    )
}

/// A thinking answer as `ResponsesStreamConverter` sends it: the
/// reasoning item (2..=6), then the message (7..=13).
fn thinking_answer() -> Vec<Chunk> {
    let reasoning = r#"{"encrypted_content":"my secret plan","id":"rs_1","summary":[{"text":"my secret plan","type":"summary_text"}],"type":"reasoning"}"#;
    let message = r#"{"content":[{"annotations":[],"logprobs":[],"text":"ok","type":"output_text"}],"id":"msg_1","role":"assistant","status":"completed","type":"message"}"#;
    vec![
        event(
            "response.output_item.added",
            r#"{"item":{"id":"rs_1","summary":[],"type":"reasoning"},"output_index":0,"sequence_number":2,"type":"response.output_item.added"}"#,
        ),
        thought(3, "my "),
        thought(4, "secret "),
        thought(5, "plan"),
        event(
            "response.reasoning_summary_text.done",
            r#"{"item_id":"rs_1","output_index":0,"sequence_number":6,"summary_index":0,"text":"my secret plan","type":"response.reasoning_summary_text.done"}"#,
        ),
        event(
            "response.output_item.done",
            &format!(
                r#"{{"item":{reasoning},"output_index":0,"sequence_number":7,"type":"response.output_item.done"}}"#
            ),
        ),
        event(
            "response.output_item.added",
            r#"{"item":{"content":[],"id":"msg_1","role":"assistant","status":"in_progress","type":"message"},"output_index":1,"sequence_number":8,"type":"response.output_item.added"}"#,
        ),
        event(
            "response.output_text.delta",
            r#"{"content_index":0,"delta":"ok","item_id":"msg_1","logprobs":[],"output_index":1,"sequence_number":9,"type":"response.output_text.delta"}"#,
        ),
        event(
            "response.output_text.done",
            r#"{"content_index":0,"item_id":"msg_1","logprobs":[],"output_index":1,"sequence_number":10,"text":"ok","type":"response.output_text.done"}"#,
        ),
        event(
            "response.output_item.done",
            &format!(
                r#"{{"item":{message},"output_index":1,"sequence_number":11,"type":"response.output_item.done"}}"#
            ),
        ),
        event(
            "response.completed",
            &format!(
                r#"{{"response":{{"id":"resp_1","output":[{reasoning},{message}],"usage":{{"input_tokens":3,"output_tokens":3}}}},"sequence_number":12,"type":"response.completed"}}"#
            ),
        ),
    ]
}

fn hooks_read_thinking(chunks: &[Chunk]) {
    for c in chunks {
        c.thinking();
    }
}

#[test]
fn copies_of_rewritten_thinking_say_what_was_sent() {
    let mut t = Transcript::default();
    let mut chunks = thinking_answer();
    hooks_read_thinking(&chunks);
    assert!(chunks[2].set_thinking("[REDACTED] ".into()));
    for c in &mut chunks {
        t.sent(c);
    }
    let sent = "my [REDACTED] plan";
    assert_eq!(data(&chunks[4])["text"], sent);
    let item = &data(&chunks[5])["item"];
    assert_eq!(
        (
            item["summary"][0]["text"].as_str(),
            item["encrypted_content"].as_str()
        ),
        (Some(sent), Some(sent))
    );
    let done = data(&chunks[10]);
    let output = &done["response"]["output"];
    assert_eq!(output[0]["summary"][0]["text"], sent);
    assert_eq!(output[0]["encrypted_content"], sent);
    assert_eq!(
        output[1]["content"][0]["text"], "ok",
        "the text was not changed"
    );
    assert_eq!(done["response"]["usage"]["output_tokens"], 3);
    for c in &chunks {
        assert!(!c.raw().windows(6).any(|w| w == b"secret"));
    }
    // The text's copies were left as they came.
    assert_eq!(chunks[8].raw(), thinking_answer()[8].raw());
    assert_eq!(chunks[9].raw(), thinking_answer()[9].raw());
    assert_eq!(t.thoughts, vec![("rs_1".into(), sent.into())]);
}

#[test]
fn changed_text_leaves_the_thinking_copies_alone() {
    let mut t = Transcript::default();
    let mut chunks = thinking_answer();
    hooks_read_thinking(&chunks);
    assert!(chunks[7].set_text("OK".into()));
    for c in &mut chunks {
        t.sent(c);
    }
    let output = &data(&chunks[10])["response"]["output"];
    assert_eq!(output[0]["summary"][0]["text"], "my secret plan");
    assert_eq!(output[1]["content"][0]["text"], "OK");
    assert_eq!(chunks[5].raw(), thinking_answer()[5].raw());
}

#[test]
fn thinking_released_at_its_end_is_numbered_and_part_of_the_copies() {
    let mut t = Transcript::default();
    let mut chunks = thinking_answer();
    hooks_read_thinking(&chunks);
    // Held back, then released redacted at the summary's end, and a
    // note put before the answer's end in the text, on the same event.
    chunks[2].set_thinking(String::new());
    chunks[3].set_thinking(String::new());
    assert!(chunks[4].thinking_done());
    assert!(chunks[4].set_text("note".into()));
    assert!(chunks[4].set_thinking("[REDACTED]".into()));
    for c in &mut chunks {
        t.sent(c);
    }
    assert_eq!(numbers(&chunks), (2..=14).collect::<Vec<_>>());
    let inserted = std::str::from_utf8(chunks[4].inserted().unwrap()).unwrap();
    let events: Vec<&str> = inserted.split_terminator("\n\n").collect();
    assert!(events[0].starts_with("event: response.reasoning_summary_text.delta\ndata: {\"delta\":\"[REDACTED]\",\"item_id\":\"rs_1\""), "{inserted}");
    assert!(
        events[1].starts_with("event: response.output_text.delta\n"),
        "{inserted}"
    );
    let sent = "my [REDACTED]";
    assert_eq!(data(&chunks[4])["text"], sent);
    assert_eq!(data(&chunks[5])["item"]["encrypted_content"], sent);
    assert_eq!(
        data(&chunks[10])["response"]["output"][0]["summary"][0]["text"],
        sent
    );
}

#[test]
fn thinking_released_on_an_event_of_another_item_names_the_reasoning_item() {
    // A hook that missed `thinking_done` releases at the message's
    // first delta: the event inserted names the answer's reasoning item.
    let mut t = Transcript::default();
    let mut chunks = thinking_answer();
    hooks_read_thinking(&chunks);
    chunks[3].set_thinking(String::new());
    assert!(chunks[7].set_thinking("[P]".into()));
    for c in &mut chunks {
        t.sent(c);
    }
    let inserted = std::str::from_utf8(chunks[7].inserted().unwrap()).unwrap();
    assert!(
        inserted.contains("\"item_id\":\"rs_1\",\"output_index\":0,\"sequence_number\":9,"),
        "{inserted}"
    );
    assert_eq!(numbers(&chunks), (2..=13).collect::<Vec<_>>());
    assert_eq!(t.thoughts, vec![("rs_1".into(), "my secret [P]".into())]);
    assert_eq!(
        data(&chunks[10])["response"]["output"][0]["encrypted_content"],
        "my secret [P]"
    );
}

#[test]
fn answers_whose_thinking_is_untouched_keep_their_bytes() {
    let mut t = Transcript::default();
    let mut chunks = thinking_answer();
    hooks_read_thinking(&chunks);
    for c in &mut chunks {
        let before = c.raw();
        t.sent(c);
        assert_eq!(c.raw(), before);
    }
    assert_eq!(t.thoughts, vec![("rs_1".into(), "my secret plan".into())]);
}

#[test]
fn untouched_answers_keep_their_bytes() {
    let mut t = Transcript::default();
    t.sent(&mut added());
    let mut d = [delta(3, "my "), delta(4, "plan")];
    hooks_read(&d);
    for c in &mut d {
        t.sent(c);
    }
    for c in &mut the_end() {
        let before = c.raw();
        t.sent(c);
        assert_eq!(c.raw(), before);
    }
    assert_eq!(t.items, vec![("msg_1".into(), "my plan".into())]);
}

#[test]
fn chunks_no_hook_read_are_not_parsed() {
    let mut t = Transcript::default();
    t.sent(&mut added());
    let mut d = delta(3, "my ");
    t.sent(&mut d);
    assert!(
        d.text_read().is_none(),
        "hooks that stopped looking cost nothing"
    );
    let mut end = the_end();
    let before = end[0].raw();
    t.sent(&mut end[0]);
    assert_eq!(end[0].raw(), before);
}

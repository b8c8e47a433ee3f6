use super::*;
use crate::response::MESSAGES;
use bytes::Bytes;

fn event(name: &str, json: &str) -> Chunk {
    Chunk::named_event(MESSAGES, name, json)
}

fn start(index: u64, block: &str) -> Chunk {
    event(
        "content_block_start",
        &format!(r#"{{"type":"content_block_start","index":{index},"content_block":{block}}}"#),
    )
}

fn stop(index: u64) -> Chunk {
    event(
        "content_block_stop",
        &format!(r#"{{"type":"content_block_stop","index":{index}}}"#),
    )
}

fn delta(index: u64, delta: &str) -> Chunk {
    event(
        "content_block_delta",
        &format!(r#"{{"type":"content_block_delta","index":{index},"delta":{delta}}}"#),
    )
}

/// `done` of each chunk after marking, in order.
fn marked(chunks: &mut [Chunk]) -> Vec<bool> {
    let mut b = Blocks::default();
    chunks
        .iter_mut()
        .map(|c| {
            b.mark(c);
            c.done()
        })
        .collect()
}

#[test]
fn only_the_stop_of_a_text_block_ends_the_text() {
    // Ollama's StreamConverter: thinking, then text, then a tool call
    // (which closes the text block first).
    let mut chunks = [
        start(0, r#"{"type":"thinking","thinking":""}"#),
        delta(0, r#"{"type":"thinking_delta","thinking":"hmm"}"#),
        stop(0),
        start(1, r#"{"type":"text","text":""}"#),
        delta(1, r#"{"type":"text_delta","text":"Hi"}"#),
        stop(1),
        start(
            2,
            r#"{"type":"tool_use","id":"call_1","name":"f","input":{}}"#,
        ),
        delta(2, r#"{"type":"input_json_delta","partial_json":"{}"}"#),
        stop(2),
        event(
            "message_delta",
            r#"{"type":"message_delta","delta":{"stop_reason":"tool_use"},"usage":{"input_tokens":5,"output_tokens":9}}"#,
        ),
        event("message_stop", r#"{"type":"message_stop"}"#),
    ];
    assert_eq!(
        marked(&mut chunks),
        [
            false, false, false, false, false, true, false, false, false, true, false
        ]
    );
}

#[test]
fn the_stop_of_a_thinking_block_ends_the_thinking() {
    // Thinking, text, thinking again (after a tool call), as Ollama's
    // StreamConverter opens and closes them.
    let mut chunks = [
        start(0, r#"{"type":"thinking","thinking":""}"#),
        delta(0, r#"{"type":"thinking_delta","thinking":"hmm"}"#),
        stop(0),
        start(1, r#"{"type":"text","text":""}"#),
        delta(1, r#"{"type":"text_delta","text":"Hi"}"#),
        stop(1),
        start(2, r#"{"type":"thinking","thinking":""}"#),
        stop(2),
        event(
            "message_delta",
            r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":9}}"#,
        ),
    ];
    let mut b = Blocks::default();
    let got: Vec<(bool, bool)> = chunks
        .iter_mut()
        .map(|c| {
            b.mark(c);
            (c.done(), c.thinking_done())
        })
        .collect();
    assert_eq!(
        got,
        [
            (false, false),
            (false, false),
            (false, true),
            (false, false),
            (false, false),
            (true, true),
            (false, false),
            (false, true),
            (true, true),
        ]
    );
    assert_eq!(chunks[1].thinking(), Some("hmm"));
}

#[test]
fn a_stop_without_its_start_is_not_the_end_of_the_text() {
    assert_eq!(marked(&mut [stop(0)]), [false]);
}

#[test]
fn events_without_a_name_are_read() {
    let raw = |json: &str| {
        Chunk::new(
            Bytes::from(format!("data: {json}\n\n")),
            Kind::Event,
            MESSAGES,
        )
    };
    let mut chunks = [
        raw(
            r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
        ),
        raw(r#"{"type":"content_block_stop","index":0}"#),
    ];
    assert_eq!(marked(&mut chunks), [false, true]);
}

#[test]
fn deltas_are_not_parsed() {
    let mut b = Blocks::default();
    let mut d = delta(0, r#"{"type":"text_delta","text":"Hi"}"#);
    b.mark(&mut d);
    assert!(d.text_read().is_none());
}

#[test]
fn other_answers_need_none() {
    assert!(MESSAGES.answer(Kind::Whole).is_none());
    assert!(MESSAGES.answer(Kind::Event).is_some());
}

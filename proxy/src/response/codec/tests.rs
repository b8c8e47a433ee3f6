use super::*;
use crate::response::messages::{Block, block_of};
use crate::response::{Chunk, Codec};
use crate::response::{
    MESSAGES, OLLAMA_CHAT, OLLAMA_GENERATE, OPENAI_CHAT, OPENAI_COMPLETIONS, RESPONSES,
};
use bytes::Bytes;

type Info = View;

fn read(json: &[u8], kind: Kind, codec: &'static dyn Codec) -> View {
    codec.read(json, kind)
}

/// The block a Messages event opens or closes.
fn block_event(json: &str) -> Option<Block> {
    let raw = format!("data: {json}\n\n");
    block_of(&Chunk::new(Bytes::from(raw), Kind::Event, MESSAGES))
}

/// The fast and the slow reading agree, on every shape.
#[test]
fn readings_decode_escapes() {
    let cases: &[(&str, Kind, &'static dyn Codec)] = &[
        (
            r#"{"response":"a\"b","done":false}"#,
            Kind::Line,
            OLLAMA_GENERATE,
        ),
        (
            r#"{"response":"","done":true,"prompt_eval_count":3,"eval_count":4}"#,
            Kind::Line,
            OLLAMA_GENERATE,
        ),
        (
            r#"{"message":{"role":"assistant","content":"x"},"done":false}"#,
            Kind::Line,
            OLLAMA_CHAT,
        ),
        (r#"{"done":true,"eval_count":2}"#, Kind::Line, OLLAMA_CHAT),
        (r#"{"error":"boom"}"#, Kind::Line, OLLAMA_CHAT),
        (
            r#"{"choices":[{"index":0,"delta":{"content":"y"},"finish_reason":null}]}"#,
            Kind::Event,
            OPENAI_CHAT,
        ),
        (
            r#"{"choices":[{"delta":{},"finish_reason":"stop"}]}"#,
            Kind::Event,
            OPENAI_CHAT,
        ),
        (
            r#"{"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}"#,
            Kind::Event,
            OPENAI_CHAT,
        ),
        (
            r#"{"choices":[{"message":{"content":"all"}}],"usage":{"prompt_tokens":5,"completion_tokens":6}}"#,
            Kind::Whole,
            OPENAI_CHAT,
        ),
        (
            r#"{"choices":[{"text":"t","finish_reason":"length"}]}"#,
            Kind::Event,
            OPENAI_COMPLETIONS,
        ),
        (
            r#"{"content_index":0,"delta":"Hi \"x\"","item_id":"msg_1","logprobs":[],"output_index":0,"sequence_number":4,"type":"response.output_text.delta"}"#,
            Kind::Event,
            RESPONSES,
        ),
        (
            r#"{"delta":"{\"a\":1}","item_id":"fc_1","output_index":0,"sequence_number":3,"type":"response.function_call_arguments.delta"}"#,
            Kind::Event,
            RESPONSES,
        ),
        (
            r#"{"content_index":0,"item_id":"msg_1","logprobs":[],"output_index":0,"sequence_number":6,"text":"Hi","type":"response.output_text.done"}"#,
            Kind::Event,
            RESPONSES,
        ),
        (
            r#"{"response":{"output":[],"usage":null},"sequence_number":0,"type":"response.created"}"#,
            Kind::Event,
            RESPONSES,
        ),
        (
            r#"{"response":{"output":[{"content":[{"text":"Hi","type":"output_text"}],"type":"message"}],"usage":{"input_tokens":7,"output_tokens":2,"total_tokens":9}},"sequence_number":9,"type":"response.completed"}"#,
            Kind::Event,
            RESPONSES,
        ),
        (
            r#"{"id":"resp_1","object":"response","output":[{"id":"rs_1","type":"reasoning","summary":[{"type":"summary_text","text":"hmm"}]},{"id":"msg_1","type":"message","content":[{"type":"output_text","text":"a"},{"type":"output_text","text":"b"}]}],"text":{"format":{"type":"text"}},"usage":{"input_tokens":7,"output_tokens":2}}"#,
            Kind::Whole,
            RESPONSES,
        ),
        (
            r#"{"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","model":"m","content":[],"usage":{"input_tokens":5,"output_tokens":0}}}"#,
            Kind::Event,
            MESSAGES,
        ),
        (
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi"}}"#,
            Kind::Event,
            MESSAGES,
        ),
        (
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"hmm"}}"#,
            Kind::Event,
            MESSAGES,
        ),
        (
            r#"{"type":"content_block_stop","index":0}"#,
            Kind::Event,
            MESSAGES,
        ),
        (
            r#"{"type":"content_block_start","index":1,"content_block":{"type":"text","text":""}}"#,
            Kind::Event,
            MESSAGES,
        ),
        (
            r#"{"type":"content_block_start","index":0,"content_block":{"type":"tool_use","id":"t","name":"f","input":{}}}"#,
            Kind::Event,
            MESSAGES,
        ),
        (
            r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":9}}"#,
            Kind::Event,
            MESSAGES,
        ),
        (
            r#"{"id":"msg_1","type":"message","role":"assistant","model":"m","content":[{"type":"thinking","thinking":"hmm"},{"type":"text","text":"Hi"}],"stop_reason":"end_turn","usage":{"input_tokens":5,"output_tokens":9}}"#,
            Kind::Whole,
            MESSAGES,
        ),
        (
            r#"{"type":"error","error":{"type":"api_error","message":"boom"}}"#,
            Kind::Event,
            MESSAGES,
        ),
    ];
    for (json, kind, codec) in cases {
        read(json.as_bytes(), *kind, *codec);
    }
    let info = read(cases[0].0.as_bytes(), Kind::Line, OLLAMA_GENERATE);
    assert_eq!(info.text.as_deref(), Some("a\"b"), "escapes are decoded");
}

/// Thinking chunks as Ollama writes them (field order of its Go structs;
/// Go maps, the Responses events, marshal sorted).
const THINKING: &[(&str, Kind, &'static dyn Codec)] = &[
    (
        r#"{"model":"qwen3","created_at":"2025-01-01T00:00:00Z","response":"","thinking":"Let \"me\"","done":false}"#,
        Kind::Line,
        OLLAMA_GENERATE,
    ),
    (
        r#"{"model":"qwen3","created_at":"2025-01-01T00:00:00Z","response":"Hi","thinking":"done.","done":false}"#,
        Kind::Line,
        OLLAMA_GENERATE,
    ),
    (
        r#"{"model":"qwen3","created_at":"2025-01-01T00:00:00Z","response":"","thinking":"hmm","done":true,"done_reason":"stop","eval_count":3}"#,
        Kind::Whole,
        OLLAMA_GENERATE,
    ),
    (
        r#"{"model":"qwen3","created_at":"2025-01-01T00:00:00Z","message":{"role":"assistant","content":"","thinking":"Let me"},"done":false}"#,
        Kind::Line,
        OLLAMA_CHAT,
    ),
    (
        r#"{"model":"qwen3","created_at":"2025-01-01T00:00:00Z","message":{"role":"assistant","content":"Hi","thinking":"so."},"done":false}"#,
        Kind::Line,
        OLLAMA_CHAT,
    ),
    (
        r#"{"model":"qwen3","created_at":"2025-01-01T00:00:00Z","message":{"role":"assistant","content":"","tool_calls":[{"id":"call_1","function":{"index":0,"name":"f","arguments":{}}}]},"done":false}"#,
        Kind::Line,
        OLLAMA_CHAT,
    ),
    (
        r#"{"model":"qwen3","created_at":"2025-01-01T00:00:00Z","message":{"role":"assistant","content":"","tool_calls":null},"done":false}"#,
        Kind::Line,
        OLLAMA_CHAT,
    ),
    (
        r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"qwen3","system_fingerprint":"fp_ollama","choices":[{"index":0,"delta":{"role":"assistant","content":"","reasoning":"Let me"},"finish_reason":null}]}"#,
        Kind::Event,
        OPENAI_CHAT,
    ),
    (
        r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"qwen3","system_fingerprint":"fp_ollama","choices":[{"index":0,"delta":{"content":"Hi","reasoning":"both"},"finish_reason":null}]}"#,
        Kind::Event,
        OPENAI_CHAT,
    ),
    (
        r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"qwen3","system_fingerprint":"fp_ollama","choices":[{"index":0,"delta":{"tool_calls":[{"id":"call_1","index":0,"type":"function","function":{"name":"f","arguments":"{}"}}]},"finish_reason":null}]}"#,
        Kind::Event,
        OPENAI_CHAT,
    ),
    (
        r#"{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"qwen3","system_fingerprint":"fp_ollama","choices":[{"index":0,"message":{"role":"assistant","content":"Hi","reasoning":"hmm"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}"#,
        Kind::Whole,
        OPENAI_CHAT,
    ),
    (
        r#"{"id":"cmpl-1","object":"text_completion","created":1,"model":"qwen3","system_fingerprint":"fp_ollama","choices":[{"text":"Hi","index":0,"finish_reason":null}]}"#,
        Kind::Event,
        OPENAI_COMPLETIONS,
    ),
    (
        r#"{"delta":"Let me","item_id":"rs_1","output_index":0,"sequence_number":3,"summary_index":0,"type":"response.reasoning_summary_text.delta"}"#,
        Kind::Event,
        RESPONSES,
    ),
    (
        r#"{"item_id":"rs_1","output_index":0,"sequence_number":5,"summary_index":0,"text":"Let me think","type":"response.reasoning_summary_text.done"}"#,
        Kind::Event,
        RESPONSES,
    ),
    (
        r#"{"item":{"encrypted_content":"Let me think","id":"rs_1","summary":[{"text":"Let me think","type":"summary_text"}],"type":"reasoning"},"output_index":0,"sequence_number":6,"type":"response.output_item.done"}"#,
        Kind::Event,
        RESPONSES,
    ),
    (
        r#"{"id":"resp_1","object":"response","output":[{"id":"rs_1","type":"reasoning","summary":[{"type":"summary_text","text":"a"},{"type":"summary_text","text":"b"}],"encrypted_content":"ab"},{"id":"msg_1","type":"message","status":"completed","role":"assistant","content":[{"type":"output_text","text":"Hi","annotations":[],"logprobs":[]}]}],"usage":{"input_tokens":1,"output_tokens":2}}"#,
        Kind::Whole,
        RESPONSES,
    ),
    (
        r#"{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"Let \"me\""}}"#,
        Kind::Event,
        MESSAGES,
    ),
    (
        r#"{"type":"content_block_start","index":0,"content_block":{"type":"thinking","thinking":""}}"#,
        Kind::Event,
        MESSAGES,
    ),
    (
        r#"{"id":"msg_1","type":"message","role":"assistant","model":"qwen3","content":[{"type":"thinking","thinking":"a"},{"type":"text","text":"Hi"},{"type":"thinking","thinking":"b"}],"stop_reason":"end_turn","usage":{"input_tokens":5,"output_tokens":9}}"#,
        Kind::Whole,
        MESSAGES,
    ),
];

#[test]
fn an_odd_field_does_not_hide_the_thinking() {
    // An odd field (content parts) reads as nothing; the thinking next to
    // it is still read.
    let odd = r#"{"choices":[{"delta":{"content":[{"type":"text"}],"reasoning":"hmm"},"finish_reason":null}]}"#;
    assert_eq!(
        read(odd.as_bytes(), Kind::Event, OPENAI_CHAT)
            .thinking
            .as_deref(),
        Some("hmm")
    );
}

#[test]
fn thinking_is_read_where_each_api_puts_it() {
    let got: Vec<(Option<String>, Option<String>, bool, bool)> = THINKING
        .iter()
        .map(|(json, kind, shape)| {
            let i = read(json.as_bytes(), *kind, *shape);
            (i.text, i.thinking, i.thinking_done, i.tool_calls)
        })
        .collect();
    let s = |t: &str| Some(t.to_owned());
    assert_eq!(
        got,
        [
            (s(""), s("Let \"me\""), false, false),
            (s("Hi"), s("done."), false, false),
            (s(""), s("hmm"), false, false),
            (s(""), s("Let me"), false, false),
            (s("Hi"), s("so."), false, false),
            (s(""), None, false, true),
            (s(""), None, false, false),
            (s(""), s("Let me"), false, false),
            (s("Hi"), s("both"), false, false),
            (None, None, false, true),
            (s("Hi"), s("hmm"), false, false),
            (s("Hi"), None, false, false),
            (None, s("Let me"), false, false),
            (None, None, true, false),
            (None, None, false, false),
            (s("Hi"), s("ab"), true, false),
            (None, s("Let \"me\""), false, false),
            (None, None, false, false),
            (s("Hi"), s("ab"), true, false),
        ]
    );
    // Plain chunks carry none.
    let plain = read(
        br#"{"model":"m","response":"Hi","done":false}"#,
        Kind::Line,
        OLLAMA_GENERATE,
    );
    assert_eq!(plain.thinking, None);
}

#[test]
fn the_event_apis_name_text_done_and_usage() {
    let read = |json: &str, kind, shape| read(json.as_bytes(), kind, shape);
    let r = RESPONSES;
    let d = read(
        r#"{"delta":"Hi","item_id":"m","type":"response.output_text.delta"}"#,
        Kind::Event,
        r,
    );
    assert_eq!(
        (d.text.as_deref(), d.done, d.usage),
        (Some("Hi"), false, None)
    );
    let args = read(
        r#"{"delta":"{}","type":"response.function_call_arguments.delta"}"#,
        Kind::Event,
        r,
    );
    assert_eq!(args.text, None, "tool arguments are not generated text");
    let done = read(
        r#"{"text":"Hi","type":"response.output_text.done"}"#,
        Kind::Event,
        r,
    );
    assert_eq!((done.text, done.done), (None, true), "a copy, not new text");
    let completed = read(
        r#"{"response":{"usage":{"input_tokens":7,"output_tokens":2}},"type":"response.completed"}"#,
        Kind::Event,
        r,
    );
    assert!(completed.done);
    assert_eq!(
        completed.usage,
        Some(Usage {
            prompt_tokens: 7,
            completion_tokens: 2
        })
    );
    let whole = read(
        r#"{"object":"response","output":[{"type":"reasoning","summary":[{"type":"summary_text","text":"x"}]},{"type":"message","content":[{"type":"output_text","text":"a"},{"type":"output_text","text":"b"}]}],"usage":{"input_tokens":1,"output_tokens":2}}"#,
        Kind::Whole,
        r,
    );
    assert_eq!(whole.text.as_deref(), Some("ab"));
    assert_eq!(whole.usage.map(|u| u.completion_tokens), Some(2));

    let m = MESSAGES;
    let start = read(
        r#"{"type":"message_start","message":{"content":[],"usage":{"input_tokens":5,"output_tokens":0}}}"#,
        Kind::Event,
        m,
    );
    assert_eq!(start.usage.map(|u| u.prompt_tokens), Some(5));
    let t = read(
        r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi"}}"#,
        Kind::Event,
        m,
    );
    assert_eq!((t.text.as_deref(), t.done), (Some("Hi"), false));
    let stop_json = r#"{"type":"content_block_stop","index":1}"#;
    let stop = read(stop_json, Kind::Event, m);
    assert_eq!(
        (stop.done, block_event(stop_json)),
        (false, Some(Block::Stop { index: 1 })),
        "a stop alone does not say whether it ends the text"
    );
    let opens = |block: &str| {
        let json = format!(r#"{{"type":"content_block_start","index":2,"content_block":{block}}}"#);
        block_event(&json)
    };
    assert_eq!(
        opens(r#"{"type":"text","text":""}"#),
        Some(Block::Start {
            index: 2,
            text: true,
            thinking: false
        })
    );
    assert_eq!(
        opens(r#"{"type":"thinking","thinking":""}"#),
        Some(Block::Start {
            index: 2,
            text: false,
            thinking: true
        })
    );
    assert_eq!(
        opens(r#"{"type":"tool_use","id":"t","name":"f","input":{}}"#),
        Some(Block::Start {
            index: 2,
            text: false,
            thinking: false
        })
    );
    let end = read(
        r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":9}}"#,
        Kind::Event,
        m,
    );
    assert!(end.done);
    assert_eq!(
        end.usage,
        Some(Usage {
            prompt_tokens: 0,
            completion_tokens: 9
        })
    );
    assert!(!read(r#"{"type":"message_stop"}"#, Kind::Event, m).done);
    let whole = read(
        r#"{"type":"message","content":[{"type":"tool_use","id":"t","input":{}},{"type":"text","text":"Hi"}],"usage":{"input_tokens":5,"output_tokens":9}}"#,
        Kind::Whole,
        m,
    );
    assert_eq!(whole.text.as_deref(), Some("Hi"));
    assert_eq!(whole.usage.map(|u| u.prompt_tokens), Some(5));
    let none = read(r#"{"type":"message","content":[]}"#, Kind::Whole, m);
    assert_eq!(none.text, None, "no text block, no text");
}

#[test]
fn an_odd_field_reads_as_nothing() {
    // OpenAI content parts instead of a string: no text, but the
    // finish reason and usage are still read.
    let json = br#"{"choices":[{"delta":{"content":[{"type":"text"}]},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":1}}"#;
    let info = read(json, Kind::Event, OPENAI_CHAT);
    assert_eq!(info.text, None);
    assert!(info.done);
    assert!(info.usage.is_some());
    assert_eq!(read(b"[DONE]", Kind::Event, OPENAI_CHAT), Info::default());
    assert_eq!(read(b"[1,2]", Kind::Line, OLLAMA_CHAT).text, None);
}

/// Where the thinking ends on the chat shapes (see [`ThinkingEnd`]).
mod thinking_end {
    use super::*;

    fn chat(message: &str) -> Chunk {
        let json = format!(
            r#"{{"model":"qwen3","created_at":"t","message":{{"role":"assistant",{message}}},"done":false}}"#
        );
        Chunk::new(Bytes::from(json + "\n"), Kind::Line, OLLAMA_CHAT)
    }

    fn openai(delta: &str, finish: &str) -> Chunk {
        let json = format!(
            r#"{{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"qwen3","system_fingerprint":"fp_ollama","choices":[{{"index":0,"delta":{delta},"finish_reason":{finish}}}]}}"#
        );
        Chunk::new(
            Bytes::from(format!("data: {json}\n\n")),
            Kind::Event,
            OPENAI_CHAT,
        )
    }

    /// `thinking_done` of each chunk after marking, in order.
    fn marked(shape: &'static dyn Codec, chunks: &mut [Chunk]) -> Vec<bool> {
        let mut t = shape.answer(chunks[0].kind()).unwrap();
        chunks
            .iter_mut()
            .map(|c| {
                t.before_hooks(c);
                c.thinking_done()
            })
            .collect()
    }

    #[test]
    fn the_first_text_after_thinking_ends_it() {
        let mut chunks = [
            chat(r#""content":"","thinking":"Let me""#),
            chat(r#""content":"","thinking":" think""#),
            chat(r#""content":"Hi""#),
            chat(r#""content":" there""#),
            Chunk::new(
                Bytes::from_static(b"{\"model\":\"qwen3\",\"created_at\":\"t\",\"message\":{\"role\":\"assistant\",\"content\":\"\"},\"done\":true,\"eval_count\":4}\n"),
                Kind::Line,
                OLLAMA_CHAT,
            ),
        ];
        assert_eq!(
            marked(OLLAMA_CHAT, &mut chunks),
            [false, false, true, false, true]
        );
    }

    #[test]
    fn a_chunk_with_the_last_thinking_and_the_first_text_ends_it() {
        let mut chunks = [
            chat(r#""content":"","thinking":"hmm""#),
            chat(r#""content":"Hi","thinking":" ok.""#),
            chat(r#""content":"!""#),
        ];
        assert_eq!(marked(OLLAMA_CHAT, &mut chunks), [false, true, false]);
        let mut one = [chat(r#""content":"Hi","thinking":"quick""#)];
        assert_eq!(marked(OLLAMA_CHAT, &mut one), [true]);
    }

    #[test]
    fn tool_calls_end_it_and_thinking_may_start_again() {
        let mut chunks = [
            chat(r#""content":"","thinking":"call f""#),
            chat(
                r#""content":"","tool_calls":[{"id":"call_1","function":{"index":0,"name":"f","arguments":{}}}]"#,
            ),
            chat(r#""content":"","thinking":"again""#),
            chat(r#""content":"Done""#),
        ];
        assert_eq!(marked(OLLAMA_CHAT, &mut chunks), [false, true, false, true]);
    }

    #[test]
    fn openai_reasoning_ends_at_the_content_chunk_ollama_splits_off() {
        // ToStreamChunks: the reasoning chunk (content "") and the content chunk.
        let mut chunks = [
            openai(
                r#"{"role":"assistant","content":"","reasoning":"hmm"}"#,
                "null",
            ),
            openai(r#"{"content":"","reasoning":" so"}"#, "null"),
            openai(r#"{"content":"Hi"}"#, "null"),
            openai(r#"{"content":"!"}"#, "null"),
            openai("{}", r#""stop""#),
        ];
        assert_eq!(
            marked(OPENAI_CHAT, &mut chunks),
            [false, false, true, false, true]
        );
    }

    #[test]
    fn answers_without_thinking_are_not_parsed() {
        let mut chunks = [chat(r#""content":"Hi""#), chat(r#""content":"!""#)];
        let mut t = OLLAMA_CHAT.answer(Kind::Line).unwrap();
        for c in &mut chunks {
            t.before_hooks(c);
            assert!(c.text_read().is_none(), "no thinking bytes, no parse");
            assert!(!c.thinking_done());
        }
        let g = |j: &str| Chunk::new(Bytes::from(format!("{j}\n")), Kind::Line, OLLAMA_GENERATE);
        let mut gen_chunks = [
            g(r#"{"model":"qwen3","response":"","thinking":"a","done":false}"#),
            g(r#"{"model":"qwen3","response":"b","done":false}"#),
        ];
        assert_eq!(marked(OLLAMA_GENERATE, &mut gen_chunks), [false, true]);
    }
}

/// Each API's tool calls, as Ollama writes them: the chunk and where the
/// arguments are, so the tests can read them back from what goes out.
fn tool_call_chunks() -> Vec<(&'static dyn Codec, Kind, String, &'static str)> {
    let ollama = r#"{"model":"m","message":{"role":"assistant","content":"","tool_calls":[{"id":"call_1","function":{"index":0,"name":"f","arguments":{"q":"secret-4242","n":2}}},{"id":"call_2","function":{"index":1,"name":"g","arguments":{"x":"ok"}}}]},"done":false}"#;
    let openai_delta = r#"{"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"role":"assistant","content":"","tool_calls":[{"id":"call_1","index":0,"type":"function","function":{"name":"f","arguments":"{\"q\":\"secret-4242\",\"n\":2}"}},{"id":"call_2","index":1,"type":"function","function":{"name":"g","arguments":"{\"x\":\"ok\"}"}}]},"finish_reason":null}]}"#;
    let openai_whole = r#"{"id":"c","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"","tool_calls":[{"id":"call_1","index":0,"type":"function","function":{"name":"f","arguments":"{\"q\":\"secret-4242\",\"n\":2}"}},{"id":"call_2","index":1,"type":"function","function":{"name":"g","arguments":"{\"x\":\"ok\"}"}}]},"finish_reason":"tool_calls"}],"usage":{"prompt_tokens":1,"completion_tokens":2}}"#;
    let responses_delta = r#"{"delta":"{\"q\":\"secret-4242\",\"n\":2}","item_id":"fc_1_0","output_index":0,"sequence_number":3,"type":"response.function_call_arguments.delta"}"#;
    let responses_whole = r#"{"id":"resp_1","object":"response","status":"completed","output":[{"id":"fc_1_0","type":"function_call","status":"completed","call_id":"call_1","name":"f","arguments":"{\"q\":\"secret-4242\",\"n\":2}"},{"id":"fc_1_1","type":"function_call","status":"completed","call_id":"call_2","name":"g","arguments":"{\"x\":\"ok\"}"}],"usage":{"input_tokens":1,"output_tokens":2}}"#;
    let messages_delta = r#"{"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":"{\"q\":\"secret-4242\",\"n\":2}"}}"#;
    let messages_whole = r#"{"id":"msg_1","type":"message","role":"assistant","content":[{"type":"tool_use","id":"call_1","name":"f","input":{"q":"secret-4242","n":2}},{"type":"tool_use","id":"call_2","name":"g","input":{"x":"ok"}}],"stop_reason":"tool_use","usage":{"input_tokens":1,"output_tokens":2}}"#;
    let event = |name: &str, json: &str| format!("event: {name}\ndata: {json}\n\n");
    vec![
        (
            OLLAMA_CHAT,
            Kind::Line,
            format!("{ollama}\n"),
            "/message/tool_calls/0/function/arguments",
        ),
        (
            OLLAMA_CHAT,
            Kind::Whole,
            ollama.to_owned(),
            "/message/tool_calls/0/function/arguments",
        ),
        (
            OPENAI_CHAT,
            Kind::Event,
            format!("data: {openai_delta}\n\n"),
            "/choices/0/delta/tool_calls/0/function/arguments",
        ),
        (
            OPENAI_CHAT,
            Kind::Whole,
            openai_whole.to_owned(),
            "/choices/0/message/tool_calls/0/function/arguments",
        ),
        (
            RESPONSES,
            Kind::Event,
            event("response.function_call_arguments.delta", responses_delta),
            "/delta",
        ),
        (
            RESPONSES,
            Kind::Whole,
            responses_whole.to_owned(),
            "/output/0/arguments",
        ),
        (
            MESSAGES,
            Kind::Event,
            event("content_block_delta", messages_delta),
            "/delta/partial_json",
        ),
        (
            MESSAGES,
            Kind::Whole,
            messages_whole.to_owned(),
            "/content/0/input",
        ),
    ]
}

/// The first call's arguments in a chunk as it goes out, as JSON.
fn first_arguments(out: &[u8], kind: Kind, at: &str) -> Value {
    let json = match kind {
        Kind::Event => crate::framing::sse_data(out).unwrap().into_owned(),
        _ => out.to_vec(),
    };
    let v: Value = serde_json::from_slice(&json).unwrap();
    match v.pointer(at).unwrap() {
        Value::String(s) => serde_json::from_str(s).unwrap(),
        other => other.clone(),
    }
}

#[test]
fn tool_call_arguments_are_a_channel_on_every_api() {
    for (codec, kind, raw, at) in tool_call_chunks() {
        let what = format!("{} {kind:?}", codec.name());
        let mut chunk = Chunk::new(Bytes::from(raw), kind, codec);
        let args = chunk.tool_arguments().expect(&what).to_owned();
        let first = args.lines().next().unwrap();
        assert_eq!(
            serde_json::from_str::<Value>(first).unwrap(),
            serde_json::json!({"q": "secret-4242", "n": 2}),
            "{what}: {args}"
        );
        let calls = args.lines().count();
        assert_eq!(
            calls,
            if kind == Kind::Event && codec.name() != "openai-chat" {
                1
            } else {
                2
            },
            "{what}"
        );
        // A hook's redaction lands in the call it was read from, the other
        // call untouched, and the text and thinking are still none.
        let redacted = args.replace("secret-4242", "[REDACTED]");
        assert!(chunk.set_tool_arguments(redacted.clone()), "{what}");
        assert_eq!(chunk.tool_arguments(), Some(redacted.as_str()), "{what}");
        assert!(chunk.tool_arguments_edited(), "{what}");
        let mut out = bytes::BytesMut::new();
        chunk.write_to(&mut out);
        assert!(
            chunk.inserted().is_none(),
            "{what}: arguments are never inserted"
        );
        assert!(
            !out.windows(11).any(|w| w == b"secret-4242"),
            "{what}: {out:?}"
        );
        assert_eq!(
            first_arguments(&out, kind, at),
            serde_json::json!({"q": "[REDACTED]", "n": 2}),
            "{what}"
        );
        // Read back from the bytes sent, the channel says what the hook put.
        let sent = Chunk::new(out.freeze(), kind, codec);
        assert_eq!(sent.tool_arguments(), Some(redacted.as_str()), "{what}");
    }
}

#[test]
fn arguments_that_are_not_json_go_out_as_a_string_and_chunks_without_calls_refuse_them() {
    let (codec, kind, raw, at) = tool_call_chunks().remove(0);
    let mut chunk = Chunk::new(Bytes::from(raw), kind, codec);
    // One line for two calls: the second call's arguments are emptied.
    assert!(chunk.set_tool_arguments("not json".into()));
    let mut out = bytes::BytesMut::new();
    chunk.write_to(&mut out);
    let v: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v.pointer(at).unwrap(), "not json");
    assert_eq!(
        v.pointer("/message/tool_calls/1/function/arguments")
            .unwrap(),
        ""
    );
    let mut text = Chunk::new(
        Bytes::from_static(
            b"{\"message\":{\"role\":\"assistant\",\"content\":\"hi\"},\"done\":false}\n",
        ),
        Kind::Line,
        OLLAMA_CHAT,
    );
    assert_eq!(text.tool_arguments(), None);
    assert!(!text.set_tool_arguments("{}".into()));
    assert!(text.inserted().is_none());
}

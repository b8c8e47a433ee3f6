//! Where the model's thinking ends, on the APIs whose chunks do not say.
//!
//! Ollama's `/api/generate` and `/api/chat` and OpenAI's
//! `/v1/chat/completions` stream the thinking (`thinking`,
//! `message.thinking`, `delta.reasoning`) before the text, with no event
//! closing it: the thinking has ended when a chunk after it carries text or
//! tool calls (Ollama's chunk may carry the last thinking and the first
//! text at once; OpenAI's shape splits it in two chunks, the reasoning one
//! with `"content":""`, which is not text). Thinking a hook holds back must
//! go out on that chunk at the latest ([`Chunk::thinking_done`]). A
//! [`ThinkingEnd`] follows one answer and marks that chunk before the hooks
//! see it; the model may think again later (after a tool call), and the
//! next such chunk is marked again. The event APIs say it themselves
//! (Responses) or through `blocks` (Messages); a whole answer is done.
//!
//! Until thinking is seen it parses nothing: a chunk without the bytes
//! `"thinking"` (`"reasoning"`) carries none.

use super::chunk::{Chunk, Kind, Shape};

#[derive(Debug, Default)]
pub struct ThinkingEnd {
    /// Thinking was seen, and no text or tool call since.
    thinking: bool,
}

impl ThinkingEnd {
    /// The state an answer of `shape`, cut into chunks of `kind`, needs.
    pub fn of(shape: Shape, kind: Kind) -> Option<ThinkingEnd> {
        let shapes = matches!(
            shape,
            Shape::OllamaGenerate | Shape::OllamaChat | Shape::OpenaiChat
        );
        (shapes && kind != Kind::Whole).then(ThinkingEnd::default)
    }

    /// One chunk on its way to the hooks, in order.
    pub fn mark(&mut self, chunk: &mut Chunk) {
        if !self.thinking && !chunk.may_think() {
            return;
        }
        if chunk.thinking().is_some_and(|t| !t.is_empty()) {
            self.thinking = true;
        }
        let answers = chunk.text().is_some_and(|t| !t.is_empty()) || chunk.has_tool_calls();
        if self.thinking && answers {
            chunk.set_thinking_done(true);
            self.thinking = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn chat(message: &str) -> Chunk {
        let json = format!(
            r#"{{"model":"qwen3","created_at":"t","message":{{"role":"assistant",{message}}},"done":false}}"#
        );
        Chunk::new(Bytes::from(json + "\n"), Kind::Line, Shape::OllamaChat)
    }

    fn openai(delta: &str, finish: &str) -> Chunk {
        let json = format!(
            r#"{{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"qwen3","system_fingerprint":"fp_ollama","choices":[{{"index":0,"delta":{delta},"finish_reason":{finish}}}]}}"#
        );
        Chunk::new(
            Bytes::from(format!("data: {json}\n\n")),
            Kind::Event,
            Shape::OpenaiChat,
        )
    }

    /// `thinking_done` of each chunk after marking, in order.
    fn marked(shape: Shape, chunks: &mut [Chunk]) -> Vec<bool> {
        let mut t = ThinkingEnd::of(shape, chunks[0].kind()).unwrap();
        chunks
            .iter_mut()
            .map(|c| {
                t.mark(c);
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
                Shape::OllamaChat,
            ),
        ];
        assert_eq!(
            marked(Shape::OllamaChat, &mut chunks),
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
        assert_eq!(marked(Shape::OllamaChat, &mut chunks), [false, true, false]);
        let mut one = [chat(r#""content":"Hi","thinking":"quick""#)];
        assert_eq!(marked(Shape::OllamaChat, &mut one), [true]);
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
        assert_eq!(
            marked(Shape::OllamaChat, &mut chunks),
            [false, true, false, true]
        );
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
            marked(Shape::OpenaiChat, &mut chunks),
            [false, false, true, false, true]
        );
    }

    #[test]
    fn answers_without_thinking_are_not_parsed() {
        let mut chunks = [chat(r#""content":"Hi""#), chat(r#""content":"!""#)];
        let mut t = ThinkingEnd::of(Shape::OllamaChat, Kind::Line).unwrap();
        for c in &mut chunks {
            t.mark(c);
            assert!(c.text_read().is_none(), "no thinking bytes, no parse");
            assert!(!c.thinking_done());
        }
        let g = |j: &str| {
            Chunk::new(
                Bytes::from(format!("{j}\n")),
                Kind::Line,
                Shape::OllamaGenerate,
            )
        };
        let mut gen_chunks = [
            g(r#"{"model":"qwen3","response":"","thinking":"a","done":false}"#),
            g(r#"{"model":"qwen3","response":"b","done":false}"#),
        ];
        assert_eq!(
            marked(Shape::OllamaGenerate, &mut gen_chunks),
            [false, true]
        );
    }

    #[test]
    fn other_answers_need_none() {
        assert!(ThinkingEnd::of(Shape::OllamaChat, Kind::Whole).is_none());
        assert!(ThinkingEnd::of(Shape::OpenaiCompletions, Kind::Event).is_none());
        assert!(ThinkingEnd::of(Shape::OpenaiResponses, Kind::Event).is_none());
        assert!(ThinkingEnd::of(Shape::AnthropicMessages, Kind::Event).is_none());
    }
}

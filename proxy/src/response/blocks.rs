//! Which content blocks of a streamed `/v1/messages` answer hold its text.
//!
//! Anthropic's stream closes every content block — thinking, text,
//! tool use — with the same `content_block_stop`, which names the block
//! only by `index`. Only the stop of a *text* block ends the text (held
//! text must go out before it, in a delta of that block); what a block is,
//! its `content_block_start` said earlier in the same answer. [`Blocks`]
//! keeps that per answer and marks the chunks before the hooks see them.
//!
//! It reads only block starts and stops, which it knows by their `event:`
//! line without parsing: the deltas, most of the stream, cost a comparison.

use super::chunk::{Chunk, Kind, Shape};
use super::peek::Block;

#[derive(Debug, Default)]
pub struct Blocks {
    /// The indexes of the blocks opened as text (a handful per answer).
    text: Vec<u64>,
    /// The indexes of the blocks opened as thinking.
    thinking: Vec<u64>,
}

impl Blocks {
    /// The state an answer of `shape`, cut into chunks of `kind`, needs: only
    /// streamed Messages answers (a whole body is one chunk, done anyway).
    pub fn of(shape: Shape, kind: Kind) -> Option<Blocks> {
        (shape == Shape::AnthropicMessages && kind == Kind::Event).then(Blocks::default)
    }

    /// One chunk on its way to the hooks, in order: a block start is noted,
    /// a block stop is done when its block is a text block.
    pub fn mark(&mut self, chunk: &mut Chunk) {
        // Ollama names every event; an event without a name is read.
        if !matches!(
            chunk.event_name(),
            None | Some("content_block_start" | "content_block_stop")
        ) {
            return;
        }
        match chunk.block() {
            Some(Block::Start {
                index,
                text,
                thinking,
            }) => {
                // An index opened again (not Ollama's way) is what it opens now.
                self.text.retain(|&i| i != index);
                self.thinking.retain(|&i| i != index);
                if text {
                    self.text.push(index);
                }
                if thinking {
                    self.thinking.push(index);
                }
            }
            Some(Block::Stop { index }) => {
                let text = self.text.contains(&index);
                chunk.set_done(text);
                // The stop of a thinking block ends the thinking: held
                // thinking goes out before it, in a delta of that block.
                chunk.set_thinking_done(self.thinking.contains(&index));
            }
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn event(name: &str, json: &str) -> Chunk {
        Chunk::named_event(Shape::AnthropicMessages, name, json)
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
        let mut b = Blocks::of(Shape::AnthropicMessages, Kind::Event).unwrap();
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
        let mut b = Blocks::of(Shape::AnthropicMessages, Kind::Event).unwrap();
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
                Shape::AnthropicMessages,
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
        assert!(Blocks::of(Shape::AnthropicMessages, Kind::Whole).is_none());
        assert!(Blocks::of(Shape::OpenaiResponses, Kind::Event).is_none());
    }
}

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

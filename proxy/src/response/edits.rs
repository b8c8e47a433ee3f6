//! Whether the hooks changed an answer, for the fields Ollama sends that
//! describe the text it generated token by token: `logprobs` on each chunk
//! (/api/generate, /api/chat, /v1/chat/completions, /v1/completions) and
//! `context` on /api/generate's final chunk (the token ids of the prompt
//! and of the whole answer, thinking included). Left as Ollama wrote them
//! after a hook redacted the text, they give the redacted text back to
//! anyone with the model's tokenizer. The hooks cannot see or edit them, so
//! the host takes them out (see [`Chunk::drop_token_fields`]): a chunk's
//! `logprobs` when its own text or thinking changed, `context` when any
//! chunk of the answer so far did. An answer nothing changed keeps both:
//! they match what was sent, and clients use `context` to continue.
//!
//! /v1/responses sends `logprobs: []` always and /v1/messages none: their
//! answers need no state here.

use super::chunk::{Chunk, Shape};

#[derive(Debug, Default)]
pub struct Edits {
    /// A hook changed the text or thinking of a chunk of this answer.
    changed: bool,
}

impl Edits {
    /// The state an answer of `shape` needs, if its API has these fields.
    pub fn of(shape: Shape) -> Option<Edits> {
        matches!(
            shape,
            Shape::OllamaGenerate
                | Shape::OllamaChat
                | Shape::OpenaiChat
                | Shape::OpenaiCompletions
        )
        .then(Edits::default)
    }

    /// One chunk, after the hooks, on its way out, in order.
    pub fn sent(&mut self, chunk: &mut Chunk) {
        self.changed |= chunk.changed_by_hooks();
        chunk.drop_token_fields(self.changed);
    }
}

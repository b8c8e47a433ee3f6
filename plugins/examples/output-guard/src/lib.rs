//! `output-guard`: redacts matches of regex patterns (and, with `pii = true`,
//! emails, card, phone and social security numbers) from generated text,
//! streamed or not, also when a match is split across chunks.
//!
//! Config:
//! - `patterns = ["regex", …]` — Rust `regex` syntax;
//! - `pii = false` — add the built-in PII patterns;
//! - `window = 256` — most characters held back at once while a match may
//!   be under way (a longer match can slip through; raise it if needed);
//! - `replacement = "[REDACTED]"`.
//!
//! Text that cannot start a match is sent at once; what is held is released
//! (redacted) as soon as it cannot match, and at the latest at the chunk
//! that ends generation.

pub mod guard;

use guard::{Guard, PII_PATTERNS};
use kiln_plugin::response::{Chunk, ChunkAction, ResponseContext, ResponsePlugin};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub patterns: Vec<String>,
    #[serde(default)]
    pub pii: bool,
    #[serde(default = "default_window")]
    pub window: usize,
    #[serde(default = "default_replacement")]
    pub replacement: String,
}

fn default_window() -> usize {
    256
}

fn default_replacement() -> String {
    "[REDACTED]".into()
}

impl Config {
    fn all_patterns(&self) -> Vec<String> {
        let mut all = self.patterns.clone();
        if self.pii {
            all.extend(PII_PATTERNS.iter().map(|p| p.to_string()));
        }
        all
    }

    fn guard(&self) -> Result<Guard, String> {
        Guard::new(&self.all_patterns(), self.window, &self.replacement)
    }
}

pub struct OutputGuard;

/// Per answer: the guard, or why it could not be built (the config was
/// checked at load, so this only happens if the host changed it).
pub type State = Result<Guard, String>;

impl ResponsePlugin for OutputGuard {
    type Config = Config;
    type State = State;

    fn validate(config: &Config) -> Result<(), String> {
        if config.patterns.is_empty() && !config.pii {
            return Err(
                "nothing to redact: set `patterns = [\"regex\", …]` and/or `pii = true`".into(),
            );
        }
        if config.window == 0 {
            return Err("`window` must be at least 1 character".into());
        }
        config.guard().map(|_| ())
    }

    fn start(config: &Config, _ctx: &ResponseContext) -> State {
        config.guard()
    }

    fn on_chunk(
        _config: &Config,
        state: &mut State,
        _ctx: &ResponseContext,
        chunk: &Chunk,
    ) -> ChunkAction {
        let guard = match state {
            Ok(g) => g,
            Err(e) => return ChunkAction::end(500, format!("output-guard cannot run: {e}")),
        };
        filter_chunk(guard, chunk)
    }
}

/// One chunk through the guard: text that is unchanged passes as is (the
/// host then re-encodes nothing, and nothing is allocated here).
pub fn filter_chunk(guard: &mut Guard, chunk: &Chunk) -> ChunkAction {
    let Some(text) = chunk.text.as_deref() else {
        // No text in this chunk. Held text must not outlive the stream: put
        // it before the end marker (`[DONE]`, an error line).
        if guard.held_chars() > 0 && (chunk.done || chunk.json().is_none() || is_error(chunk)) {
            return ChunkAction::Rewrite(guard.finish().to_owned());
        }
        return ChunkAction::Pass;
    };
    if !chunk.done {
        let out = guard.push(text);
        return if out == text {
            ChunkAction::Pass
        } else {
            ChunkAction::Rewrite(out.to_owned())
        };
    }
    let mut out = guard.push(text).to_owned();
    out.push_str(guard.finish());
    if out == text {
        ChunkAction::Pass
    } else {
        ChunkAction::Rewrite(out)
    }
}

fn is_error(chunk: &Chunk) -> bool {
    chunk.json().is_some_and(|v| v.get("error").is_some())
}

kiln_plugin::export_response_plugin!(OutputGuard);

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_plugin::response::parse_response_config;

    fn config(json: &str) -> Config {
        parse_response_config::<OutputGuard>(json).unwrap()
    }

    #[test]
    fn chunks_are_rewritten_only_when_something_changes() {
        let c = config(r#"{"patterns":["sky is"]}"#);
        let mut g = c.guard().unwrap();
        assert_eq!(
            filter_chunk(&mut g, &Chunk::with_text("The ")),
            ChunkAction::Pass
        );
        assert_eq!(
            filter_chunk(&mut g, &Chunk::with_text("sky ")),
            ChunkAction::Rewrite(String::new()),
            "\"sky \" could be the start of \"sky is\": held"
        );
        assert_eq!(
            filter_chunk(&mut g, &Chunk::with_text("is ")),
            ChunkAction::Rewrite("[REDACTED] ".into())
        );
        assert_eq!(filter_chunk(&mut g, &Chunk::last("")), ChunkAction::Pass);
    }

    #[test]
    fn held_text_is_flushed_at_the_end_of_generation() {
        let c = config(r#"{"patterns":["secret-\\d+"]}"#);
        let mut g = c.guard().unwrap();
        assert_eq!(
            filter_chunk(&mut g, &Chunk::with_text("the secret-12")),
            ChunkAction::Rewrite("the ".into())
        );
        assert_eq!(
            filter_chunk(&mut g, &Chunk::last("")),
            ChunkAction::Rewrite("[REDACTED]".into())
        );
        // Without a text-carrying last chunk, the end marker flushes.
        let mut g = c.guard().unwrap();
        filter_chunk(&mut g, &Chunk::with_text("so secr"));
        let done = Chunk {
            raw: b"data: [DONE]\n\n".to_vec(),
            ..Chunk::default()
        };
        assert_eq!(
            filter_chunk(&mut g, &done),
            ChunkAction::Rewrite("secr".into())
        );
    }

    #[test]
    fn configs_are_checked() {
        assert!(parse_response_config::<OutputGuard>("{}").is_err());
        assert!(parse_response_config::<OutputGuard>(r#"{"patterns":["("]}"#).is_err());
        assert!(parse_response_config::<OutputGuard>(r#"{"pii":true,"window":0}"#).is_err());
        assert!(parse_response_config::<OutputGuard>(r#"{"pii":true,"windw":3}"#).is_err());
        let c = config(r#"{"pii":true}"#);
        assert_eq!((c.window, c.replacement.as_str()), (256, "[REDACTED]"));
    }
}

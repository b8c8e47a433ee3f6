//! `output-guard`: redacts matches of regex patterns (and, with `pii = true`,
//! emails, card, phone and social security numbers) from generated text,
//! streamed or not, also when a match is split across chunks.
//!
//! Config:
//! - `patterns = ["regex", …]` — Rust `regex` syntax;
//! - `pii = false` — add the built-in PII patterns;
//! - `window = 256` — most characters held back at once while a match may
//!   be under way (a longer match can slip through; raise it if needed);
//! - `replacement = "[REDACTED]"`;
//! - `allow_logprobs = false` — see below.
//!
//! Text that cannot start a match is sent at once; what is held is released
//! (redacted) as soon as it cannot match, and at the latest at the chunk
//! that ends generation. The model's thinking, which reaches the client
//! too, gets the same treatment with a guard of its own (thinking and text
//! are two texts: a match cannot span them), released at the latest where
//! the thinking ends.
//!
//! Tool-call arguments reach the client too, and each call comes whole in
//! one chunk: every string in them (keys included, and numbers, where a
//! card number may hide) is redacted on its own, so the arguments stay the
//! JSON the client's tool expects; arguments that are not JSON are redacted
//! as plain text.
//!
//! Token log-probabilities (`logprobs`, `top_logprobs`) name every token the
//! model wrote, and Ollama sends some of them on an earlier chunk than the
//! token's text, before any plugin can know the text is to be redacted. So
//! requests asking for them are refused (400) unless `allow_logprobs = true`,
//! in which case the proxy still drops the log-probabilities of every chunk a
//! plugin changed (best effort, see docs/PLUGINS.md).

pub mod guard;

use guard::{Guard, PII_PATTERNS};
use kiln_plugin::response::{Chunk, ChunkAction, ResponseContext, ResponsePlugin};
use kiln_plugin::{Decision, Plugin, Request};
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
    #[serde(default)]
    pub allow_logprobs: bool,
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

impl Plugin for OutputGuard {
    type Config = Config;

    fn validate(config: &Config) -> Result<(), String> {
        <OutputGuard as ResponsePlugin>::validate(config)
    }

    fn on_request(config: &Config, request: &Request) -> Decision {
        if config.allow_logprobs {
            return Decision::Allow;
        }
        match logprobs_field(&request.body) {
            Some(field) => Decision::reject(
                400,
                format!(
                    "this deployment redacts generated text, and token log-probabilities would carry \
                     it unredacted: send the request without `{field}`"
                ),
            ),
            None => Decision::Allow,
        }
    }
}

/// The field of a request body that asks for token log-probabilities:
/// `logprobs` (true, or a count on /v1/completions) or `top_logprobs` (a
/// count). Keys are matched as Ollama's Go decoder matches them: escapes
/// read, case ignored (with Unicode folding, so `ſ` is an `s`).
pub fn logprobs_field(body: &[u8]) -> Option<&'static str> {
    // Most bodies cannot name them: no parse (a prompt can be long).
    let may = body.windows(7).any(|w| w.eq_ignore_ascii_case(b"logprob"))
        || body.windows(2).any(|w| w == b"\\u");
    if !may {
        return None;
    }
    // A body that names them but does not parse here may still parse in
    // Ollama (Go's decoder takes invalid UTF-8 in strings): refuse it.
    let Ok(serde_json::Value::Object(fields)) = serde_json::from_slice(body) else {
        return Some("logprobs");
    };
    let asks = |value: &serde_json::Value| match value {
        serde_json::Value::Bool(b) => *b,
        serde_json::Value::Number(n) => n.as_f64().is_some_and(|n| n > 0.0),
        _ => false,
    };
    ["logprobs", "top_logprobs"].into_iter().find(|name| {
        fields
            .iter()
            .any(|(key, value)| go_key_matches(key, name) && asks(value))
    })
}

/// Whether Go's encoding/json would set the field `name` (lower-case ASCII)
/// from the JSON key `key`: ASCII case ignored, and the two non-ASCII
/// letters that fold to ASCII ones (`ſ` → s, the Kelvin sign → k).
fn go_key_matches(key: &str, name: &str) -> bool {
    let folded = key.chars().map(|c| match c {
        '\u{17f}' => 's',
        '\u{212a}' => 'k',
        c => c.to_ascii_lowercase(),
    });
    folded.eq(name.chars())
}

/// The guards of one answer: one per text the model writes.
pub struct Guards {
    text: Guard,
    /// Made from `text` (no second compile) when the first thinking comes.
    thinking: Option<Guard>,
}

impl Guards {
    pub fn new(text: Guard) -> Guards {
        Guards {
            text,
            thinking: None,
        }
    }
}

/// Per answer: the guards, or why they could not be built (the config was
/// checked at load, so this only happens if the host changed it).
pub type State = Result<Guards, String>;

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
        config.guard().map(Guards::new)
    }

    fn on_chunk(
        _config: &Config,
        state: &mut State,
        _ctx: &ResponseContext,
        chunk: &Chunk,
    ) -> ChunkAction {
        let guards = match state {
            Ok(g) => g,
            Err(e) => return ChunkAction::end(500, format!("output-guard cannot run: {e}")),
        };
        filter_chunk(guards, chunk)
    }
}

/// One chunk through the guards: a chunk whose text and thinking are
/// unchanged passes as is (the host then re-encodes nothing, and nothing is
/// allocated here).
pub fn filter_chunk(guards: &mut Guards, chunk: &Chunk) -> ChunkAction {
    let thinking = match chunk.thinking.as_deref() {
        Some(thinking) => {
            let guard = guards.thinking.get_or_insert_with(|| guards.text.fresh());
            through(guard, thinking, chunk.thinking_done)
        }
        None => guards
            .thinking
            .as_mut()
            .and_then(|guard| flush(guard, chunk, chunk.thinking_done)),
    };
    let text = match chunk.text.as_deref() {
        Some(text) => through(&mut guards.text, text, chunk.done),
        None => flush(&mut guards.text, chunk, chunk.done),
    };
    let tool_arguments = chunk
        .tool_arguments
        .as_deref()
        .and_then(|a| redact_arguments(&guards.text, a));
    match (text, thinking, tool_arguments) {
        (None, None, None) => ChunkAction::Pass,
        (Some(text), None, None) => ChunkAction::Rewrite(text),
        (text, thinking, tool_arguments) => ChunkAction::RewriteParts {
            text,
            thinking,
            tool_arguments,
        },
    }
}

/// The tool calls' arguments (one call per line) with every match
/// redacted, or `None` when nothing matched.
fn redact_arguments(like: &Guard, arguments: &str) -> Option<String> {
    let mut changed = false;
    let lines: Vec<String> = arguments
        .split('\n')
        .map(|line| {
            let redacted = match serde_json::from_str::<serde_json::Value>(line) {
                Ok(mut v) => redact_json(like, &mut v).then(|| v.to_string()),
                Err(_) => redact_whole(like, line),
            };
            changed |= redacted.is_some();
            redacted.unwrap_or_else(|| line.to_owned())
        })
        .collect();
    changed.then(|| lines.join("\n"))
}

/// Redacts every string, key and number in `v`; true when any changed.
fn redact_json(like: &Guard, v: &mut serde_json::Value) -> bool {
    use serde_json::Value;
    match v {
        Value::String(s) => match redact_whole(like, s) {
            Some(r) => {
                *s = r;
                true
            }
            None => false,
        },
        Value::Number(n) => match redact_whole(like, &n.to_string()) {
            Some(r) => {
                *v = Value::String(r);
                true
            }
            None => false,
        },
        Value::Array(items) => items
            .iter_mut()
            .fold(false, |changed, item| redact_json(like, item) | changed),
        Value::Object(map) => {
            let entries = std::mem::take(map);
            let mut changed = false;
            for (key, mut value) in entries {
                changed |= redact_json(like, &mut value);
                let key = match redact_whole(like, &key) {
                    Some(k) => {
                        changed = true;
                        k
                    }
                    None => key,
                };
                map.insert(key, value);
            }
            changed
        }
        Value::Null | Value::Bool(_) => false,
    }
}

/// `text`, complete in itself, through a fresh guard: redacted, or `None`
/// when nothing matched.
fn redact_whole(like: &Guard, text: &str) -> Option<String> {
    let mut guard = like.fresh();
    let mut out = guard.push(text).to_owned();
    out.push_str(guard.finish());
    (out != text).then_some(out)
}

/// `piece` through `guard` (everything held released when `ends`): the
/// rewritten piece, or `None` when it goes out unchanged.
fn through(guard: &mut Guard, piece: &str, ends: bool) -> Option<String> {
    if !ends {
        let out = guard.push(piece);
        return (out != piece).then(|| out.to_owned());
    }
    let mut out = guard.push(piece).to_owned();
    out.push_str(guard.finish());
    (out != piece).then_some(out)
}

/// A chunk without this text: what `guard` holds must not outlive the text
/// (`ends`) nor the stream, so it goes out (redacted) before an end marker
/// (`[DONE]`, an error line) too.
fn flush(guard: &mut Guard, chunk: &Chunk, ends: bool) -> Option<String> {
    (guard.held_chars() > 0 && (ends || chunk.json().is_none() || is_error(chunk)))
        .then(|| guard.finish().to_owned())
}

fn is_error(chunk: &Chunk) -> bool {
    chunk.json().is_some_and(|v| v.get("error").is_some())
}

kiln_plugin::export_plugin_with_response!(OutputGuard);

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
        let mut g = Guards::new(c.guard().unwrap());
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
        let mut g = Guards::new(c.guard().unwrap());
        assert_eq!(
            filter_chunk(&mut g, &Chunk::with_text("the secret-12")),
            ChunkAction::Rewrite("the ".into())
        );
        assert_eq!(
            filter_chunk(&mut g, &Chunk::last("")),
            ChunkAction::Rewrite("[REDACTED]".into())
        );
        // Without a text-carrying last chunk, the end marker flushes.
        let mut g = Guards::new(c.guard().unwrap());
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

    fn thinking(parts: ChunkAction) -> Option<String> {
        match parts {
            ChunkAction::RewriteParts { thinking, .. } => thinking,
            other => panic!("expected a thinking rewrite, got {other:?}"),
        }
    }

    #[test]
    fn thinking_is_guarded_like_text_and_released_where_it_ends() {
        let c = config(r#"{"patterns":["secret-\\d+"]}"#);
        let mut g = Guards::new(c.guard().unwrap());
        // Split across two thinking chunks: held, then redacted.
        assert_eq!(
            thinking(filter_chunk(&mut g, &Chunk::with_thinking("my secr"))),
            Some("my ".into())
        );
        assert_eq!(
            thinking(filter_chunk(&mut g, &Chunk::with_thinking("et-42 is."))),
            Some("[REDACTED] is.".into())
        );
        assert_eq!(
            filter_chunk(&mut g, &Chunk::with_thinking(" safe")),
            ChunkAction::Pass
        );
        // Held thinking goes out on the chunk where thinking ends, even one
        // that carries only text (which passes as it is).
        thinking(filter_chunk(&mut g, &Chunk::with_thinking(" secret-7")));
        let first_text = Chunk {
            thinking_done: true,
            ..Chunk::with_text("The answer")
        };
        assert_eq!(
            filter_chunk(&mut g, &first_text),
            ChunkAction::RewriteParts {
                text: None,
                thinking: Some("[REDACTED]".into()),
                tool_arguments: None,
            }
        );
    }

    #[test]
    fn thinking_and_text_are_separate_texts() {
        let c = config(r#"{"patterns":["secret"]}"#);
        let mut g = Guards::new(c.guard().unwrap());
        // One Ollama chunk may carry the end of the thinking and the start
        // of the text: each is guarded on its own, and a match cannot span
        // them.
        let both = Chunk {
            thinking: Some("a secret, and sec".into()),
            thinking_done: true,
            ..Chunk::with_text("ret secret.")
        };
        assert_eq!(
            filter_chunk(&mut g, &both),
            ChunkAction::RewriteParts {
                text: Some("ret [REDACTED].".into()),
                thinking: Some("a [REDACTED], and sec".into()),
                tool_arguments: None,
            }
        );
    }

    #[test]
    fn requests_for_log_probabilities_are_refused_unless_allowed() {
        assert_eq!(
            logprobs_field(br#"{"model":"m","prompt":"hi","logprobs":true}"#),
            Some("logprobs")
        );
        assert_eq!(
            logprobs_field(br#"{"model":"m","prompt":"hi","logprobs":3}"#),
            Some("logprobs")
        );
        assert_eq!(
            logprobs_field(br#"{"model":"m","messages":[],"top_logprobs":2}"#),
            Some("top_logprobs")
        );
        for allowed in [
            r#"{"model":"m","prompt":"hi"}"#,
            r#"{"model":"m","prompt":"hi","logprobs":false,"top_logprobs":0}"#,
            r#"{"model":"m","prompt":"what are logprobs?"}"#,
        ] {
            assert_eq!(logprobs_field(allowed.as_bytes()), None, "{allowed}");
        }
        // Go's decoder ignores case in keys, reads escapes in them, and
        // folds `ſ` to `s`.
        for sneaky in [
            r#"{"model":"m","prompt":"hi","LogProbs":true}"#,
            r#"{"model":"m","prompt":"hi","log\u0070robs":true}"#,
            r#"{"model":"m","prompt":"hi","logprobſ":true}"#,
            r#"{"model":"m","messages":[],"TOP_LOGPROBS":5}"#,
        ] {
            assert!(logprobs_field(sneaky.as_bytes()).is_some(), "{sneaky}");
        }
        // Go reads this body (invalid UTF-8 in a string); serde does not.
        assert_eq!(
            logprobs_field(b"{\"prompt\":\"\xff\",\"logprobs\":true}"),
            Some("logprobs")
        );
        let asks = Request::new(
            kiln_plugin::Route::OllamaChat,
            "/api/chat",
            r#"{"model":"m","messages":[],"logprobs":true}"#,
        );
        let refused = <OutputGuard as Plugin>::on_request(&config(r#"{"pii":true}"#), &asks);
        let rejection = refused.as_rejection().expect("refused");
        assert_eq!(rejection.status, 400);
        assert!(
            rejection.message.contains("`logprobs`"),
            "{}",
            rejection.message
        );
        let allowed = config(r#"{"pii":true,"allow_logprobs":true}"#);
        assert_eq!(
            <OutputGuard as Plugin>::on_request(&allowed, &asks),
            Decision::Allow
        );
    }

    #[test]
    fn tool_call_arguments_are_redacted_and_stay_json() {
        let c = config(r#"{"patterns":["secret-\\d+"],"pii":true}"#);
        let mut g = Guards::new(c.guard().unwrap());
        // Two calls (one line each): a string value, a key, a number.
        let calls = concat!(
            r#"{"note":"the code is secret-4242","n":1}"#,
            "\n",
            r#"{"secret-7":true,"card":4111111111111111}"#
        );
        let ChunkAction::RewriteParts {
            text: None,
            thinking: None,
            tool_arguments: Some(out),
        } = filter_chunk(&mut g, &Chunk::with_tool_arguments(calls))
        else {
            panic!("expected an arguments rewrite");
        };
        let lines: Vec<serde_json::Value> = out
            .split('\n')
            .map(|l| serde_json::from_str(l).expect("still JSON"))
            .collect();
        assert_eq!(lines[0]["note"], "the code is [REDACTED]");
        assert_eq!(lines[0]["n"], 1);
        assert_eq!(lines[1]["[REDACTED]"], true);
        assert_eq!(lines[1]["card"], "[REDACTED]");
        // Arguments that are not JSON (a piece of a call) are plain text.
        assert_eq!(
            filter_chunk(&mut g, &Chunk::with_tool_arguments(r#"{"a":"secret-1"#)),
            ChunkAction::RewriteParts {
                text: None,
                thinking: None,
                tool_arguments: Some(r#"{"a":"[REDACTED]"#.into()),
            }
        );
        // Nothing to redact: the chunk passes untouched.
        assert_eq!(
            filter_chunk(&mut g, &Chunk::with_tool_arguments(r#"{"city":"Paris"}"#)),
            ChunkAction::Pass
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

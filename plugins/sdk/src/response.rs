//! Response plugins: hooks that see Ollama's answer on its way back.
//!
//! A response plugin implements [`ResponsePlugin`] and is exported with
//! `export_response_plugin!` (response hooks only) or, when it also has a
//! request hook ([`crate::Plugin`]), `export_plugin_with_response!`.
//!
//! One instance of the plugin serves one answer: [`ResponsePlugin::start`]
//! builds the per-answer state when the answer starts, every chunk goes through
//! [`ResponsePlugin::on_chunk`] in order, and [`ResponsePlugin::on_complete`]
//! runs once at the end. The config is parsed once per answer, not per chunk.
//!
//! ```ignore
//! use kiln_plugin::response::{Chunk, ChunkAction, ResponseContext, ResponsePlugin};
//!
//! struct Shout;
//!
//! impl ResponsePlugin for Shout {
//!     type Config = serde_json::Value;
//!     type State = ();
//!     fn start(_: &Self::Config, _: &ResponseContext) {}
//!     fn on_chunk(_: &Self::Config, _: &mut (), _: &ResponseContext, chunk: &Chunk) -> ChunkAction {
//!         match chunk.text.as_deref() {
//!             Some(t) => ChunkAction::Rewrite(t.to_uppercase()),
//!             None => ChunkAction::Pass,
//!         }
//!     }
//! }
//!
//! kiln_plugin::export_response_plugin!(Shout);
//! ```

use crate::bindings::kiln::filter::types;
use crate::response_bindings::hooks::exports::kiln::filter::response as wit;
use crate::{Rejection, Route};

/// Which request an answer belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResponseContext {
    /// The proxy's `x-request-id`.
    pub request_id: String,
    pub route: Route,
    pub path: String,
    pub model: Option<String>,
    /// True for NDJSON/SSE streams, false for one JSON body.
    pub stream: bool,
    /// Ollama's HTTP status.
    pub status: u16,
}

impl ResponseContext {
    /// A streamed answer on `route`; for tests.
    pub fn streaming(route: Route, path: &str) -> Self {
        ResponseContext {
            request_id: "test".into(),
            route,
            path: path.into(),
            model: Some("gemma3:4b".into()),
            stream: true,
            status: 200,
        }
    }
}

/// One chunk: an NDJSON line, an SSE event, or a whole JSON body.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Chunk {
    /// The generated text, the same for every API (see the WIT); `None` for
    /// chunks without text (usage chunk, `[DONE]`, error lines).
    pub text: Option<String>,
    /// The model's thinking (reasoning) in this chunk, kept apart from the
    /// text as the API keeps it (see the WIT); `None` when there is none.
    /// It reaches the client too: a filter of generated text must see it.
    pub thinking: Option<String>,
    /// The chunk as Ollama sent it.
    pub raw: Vec<u8>,
    /// Generation ends with this chunk: release anything held back now.
    pub done: bool,
    /// Thinking ends with this chunk (always when `done`): release any
    /// thinking held back now.
    pub thinking_done: bool,
    /// The arguments of the tool calls this chunk carries, as JSON text, one
    /// line per call (see the WIT); `None` when it carries none. Each call
    /// comes whole in one chunk: filter its arguments there, they cannot be
    /// held back. They reach the client too.
    pub tool_arguments: Option<String>,
}

impl Chunk {
    /// A chunk carrying `text`; for tests.
    pub fn with_text(text: &str) -> Self {
        Chunk {
            text: Some(text.into()),
            ..Chunk::default()
        }
    }

    /// A chunk carrying one tool call with `arguments`; for tests.
    pub fn with_tool_arguments(arguments: &str) -> Self {
        Chunk {
            tool_arguments: Some(arguments.into()),
            ..Chunk::default()
        }
    }

    /// A chunk carrying only `thinking`; for tests.
    pub fn with_thinking(thinking: &str) -> Self {
        Chunk {
            thinking: Some(thinking.into()),
            ..Chunk::default()
        }
    }

    /// The last chunk of generation, carrying `text`; for tests.
    pub fn last(text: &str) -> Self {
        Chunk {
            done: true,
            thinking_done: true,
            ..Chunk::with_text(text)
        }
    }

    /// The generated text, "" when the chunk carries none.
    pub fn text(&self) -> &str {
        self.text.as_deref().unwrap_or("")
    }

    /// The chunk's JSON: the line, the SSE event's `data`, or the body.
    /// `None` for `[DONE]`, comments, or anything that is not JSON.
    pub fn json(&self) -> Option<serde_json::Value> {
        let raw = std::str::from_utf8(&self.raw).ok()?;
        let data: String = if raw.starts_with("data:") || raw.contains("\ndata:") {
            raw.lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(|d| d.strip_prefix(' ').unwrap_or(d))
                .collect::<Vec<_>>()
                .join("\n")
        } else {
            raw.to_owned()
        };
        serde_json::from_str(&data).ok()
    }
}

/// What happens to a chunk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChunkAction {
    /// Send it on as it came.
    Pass,
    /// Send it and every later chunk on without calling `on_chunk` again.
    PassRest,
    /// Replace its generated text (empty to hold the text back).
    Rewrite(String),
    /// Replace its text, thinking and/or tool-call arguments (`None` leaves
    /// that part as it came; empty holds text or thinking back). Arguments
    /// go one line per call, as [`Chunk::tool_arguments`] gives them.
    RewriteParts {
        text: Option<String>,
        thinking: Option<String>,
        tool_arguments: Option<String>,
    },
    /// Stop the answer with this error (status used only when not streaming).
    End(Rejection),
}

impl ChunkAction {
    /// Stops the answer with `message`; `status` applies to answers that do not stream.
    pub fn end(status: u16, message: impl Into<String>) -> Self {
        ChunkAction::End(Rejection {
            status,
            message: message.into(),
            headers: Vec::new(),
        })
    }
}

/// Token counts Ollama reported for the answer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

impl Usage {
    pub fn total(&self) -> u64 {
        self.prompt_tokens.saturating_add(self.completion_tokens)
    }
}

/// How an answer ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Completed,
    EndedByPlugin,
    ClientGone,
    UpstreamFailed,
    TimedOut,
}

/// What `on_complete` is told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Completion {
    pub outcome: Outcome,
    pub usage: Option<Usage>,
    /// The request headers as forwarded (lower-cased names).
    pub headers: Vec<(String, String)>,
}

impl Completion {
    /// The first value of a request header (name matched case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The bearer token of the request's `Authorization`, if any.
    pub fn bearer_token(&self) -> Option<&str> {
        let (scheme, token) = self.header("authorization")?.trim().split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim())
            .filter(|t| !t.is_empty())
    }
}

/// A response filter. See the module docs for the life of an instance.
pub trait ResponsePlugin {
    /// The plugin's `[plugins.config]`; parsed once per answer.
    type Config: serde::de::DeserializeOwned + 'static;
    /// What the plugin keeps between the chunks of one answer.
    type State: 'static;

    /// Extra checks on a config that deserialized, run once at load (not
    /// per answer: answers only deserialize the config).
    fn validate(_config: &Self::Config) -> Result<(), String> {
        Ok(())
    }

    /// The state of a new answer, built before its first chunk.
    fn start(config: &Self::Config, ctx: &ResponseContext) -> Self::State;

    /// One chunk. The default passes the rest of the answer untouched (for
    /// plugins that only need `on_complete`).
    fn on_chunk(
        _config: &Self::Config,
        _state: &mut Self::State,
        _ctx: &ResponseContext,
        _chunk: &Chunk,
    ) -> ChunkAction {
        ChunkAction::PassRest
    }

    /// Once, when the answer has ended (however it ended).
    fn on_complete(
        _config: &Self::Config,
        _state: &mut Self::State,
        _ctx: &ResponseContext,
        _completion: &Completion,
    ) {
    }
}

/// Parses a response plugin's config as the exported plugin does; for tests.
pub fn parse_response_config<P: ResponsePlugin>(json: &str) -> Result<P::Config, String> {
    let config: P::Config = crate::deserialize_config(json)?;
    P::validate(&config)?;
    Ok(config)
}

impl From<wit::ResponseContext> for ResponseContext {
    fn from(c: wit::ResponseContext) -> Self {
        ResponseContext {
            request_id: c.request_id,
            route: c.route.into(),
            path: c.path,
            model: c.model,
            stream: c.stream,
            status: c.status,
        }
    }
}

impl From<wit::Chunk> for Chunk {
    fn from(c: wit::Chunk) -> Self {
        Chunk {
            text: c.text,
            thinking: c.thinking,
            raw: c.raw,
            done: c.done,
            thinking_done: c.thinking_done,
            tool_arguments: c.tool_arguments,
        }
    }
}

impl From<ChunkAction> for wit::ChunkAction {
    fn from(a: ChunkAction) -> Self {
        match a {
            ChunkAction::Pass => wit::ChunkAction::Pass,
            ChunkAction::PassRest => wit::ChunkAction::PassRest,
            ChunkAction::Rewrite(t) => wit::ChunkAction::RewriteText(t),
            ChunkAction::RewriteParts {
                text,
                thinking,
                tool_arguments,
            } => wit::ChunkAction::RewriteParts(wit::Parts {
                text,
                thinking,
                tool_arguments,
            }),
            ChunkAction::End(r) => wit::ChunkAction::End(types::Rejection {
                status: r.status,
                message: r.message,
                headers: r
                    .headers
                    .into_iter()
                    .map(|(name, value)| types::Header { name, value })
                    .collect(),
            }),
        }
    }
}

impl From<wit::Completion> for Completion {
    fn from(c: wit::Completion) -> Self {
        Completion {
            outcome: match c.outcome {
                wit::ResponseOutcome::Completed => Outcome::Completed,
                wit::ResponseOutcome::EndedByPlugin => Outcome::EndedByPlugin,
                wit::ResponseOutcome::ClientGone => Outcome::ClientGone,
                wit::ResponseOutcome::UpstreamFailed => Outcome::UpstreamFailed,
                wit::ResponseOutcome::TimedOut => Outcome::TimedOut,
            },
            usage: c.usage.map(|u| Usage {
                prompt_tokens: u.prompt_tokens,
                completion_tokens: u.completion_tokens,
            }),
            headers: c.headers.into_iter().map(|h| (h.name, h.value)).collect(),
        }
    }
}

/// Exports a [`ResponsePlugin`] as the `kiln:filter/response-filter` world
/// (response hooks only). Use it once per plugin crate.
#[macro_export]
macro_rules! export_response_plugin {
    ($plugin:ty) => {
        const _: () = {
            #[allow(dead_code)]
            struct KilnResponseExport;

            impl $crate::response_bindings::config::Guest for KilnResponseExport {
                fn validate_config() -> ::core::result::Result<(), ::std::string::String> {
                    $crate::response::glue::validate_config::<$plugin>()
                }
            }

            $crate::__kiln_response_hooks!(KilnResponseExport, $plugin);

            $crate::response_bindings::config::__export_config_check_world!(KilnResponseExport with_types_in $crate::response_bindings::config);
        };
    };
}

/// Exports a plugin with both hooks, [`crate::Plugin`] and [`ResponsePlugin`],
/// as the `kiln:filter/filter-with-response` world (e.g. a token budget that
/// refuses requests and counts usage at completion). The config is checked
/// at load with [`crate::Plugin`]'s `Config`: use the same type for both.
#[macro_export]
macro_rules! export_plugin_with_response {
    ($plugin:ty) => {
        $crate::export_plugin!($plugin);

        const _: () = {
            #[allow(dead_code)]
            struct KilnResponseExport;

            $crate::__kiln_response_hooks!(KilnResponseExport, $plugin);
        };
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __kiln_response_hooks {
    ($export:ident, $plugin:ty) => {
        impl $crate::response_bindings::hooks::exports::kiln::filter::response::Guest for $export {
            fn on_response_start(
                context: $crate::response_bindings::hooks::exports::kiln::filter::response::ResponseContext,
            ) {
                $crate::response::glue::on_start::<$plugin>(context)
            }

            fn on_response_chunk(
                chunk: $crate::response_bindings::hooks::exports::kiln::filter::response::Chunk,
            ) -> $crate::response_bindings::hooks::exports::kiln::filter::response::ChunkAction {
                $crate::response::glue::on_chunk::<$plugin>(chunk)
            }

            fn on_response_complete(
                completion: $crate::response_bindings::hooks::exports::kiln::filter::response::Completion,
            ) {
                $crate::response::glue::on_complete::<$plugin>(completion)
            }
        }

        // Wasm only: the export names (`kiln:filter/response@0.2.0#…`)
        // are not valid symbol names for a native cdylib's linker, and
        // native builds exist only to run plugin unit tests.
        #[cfg(target_arch = "wasm32")]
        $crate::response_bindings::hooks::__export_response_hooks_world!($export with_types_in $crate::response_bindings::hooks);
    };
}

/// The code behind the export macros.
#[doc(hidden)]
pub mod glue {
    use super::{ChunkAction, ResponseContext, ResponsePlugin, wit};
    use std::any::Any;
    use std::cell::RefCell;

    /// What one answer keeps from `on-response-start` on: the parsed
    /// config, the plugin's state and the context, or why they could not be
    /// made.
    type Answer<P> = Result<
        (
            <P as ResponsePlugin>::Config,
            <P as ResponsePlugin>::State,
            ResponseContext,
        ),
        String,
    >;

    std::thread_local! {
        /// The answer this instance serves. An instance serves one answer,
        /// so this is set once, by `on-response-start`.
        static ANSWER: RefCell<Option<Box<dyn Any>>> = const { RefCell::new(None) };
    }

    pub fn validate_config<P: ResponsePlugin>() -> Result<(), String> {
        super::parse_response_config::<P>(&crate::host::config()).map(|_| ())
    }

    pub fn on_start<P: ResponsePlugin>(context: wit::ResponseContext) {
        let ctx = ResponseContext::from(context);
        // Validated at load (`validate-config`): deserialized only, per answer.
        let answer: Answer<P> =
            crate::deserialize_config::<P::Config>(&crate::host::config()).map(|config| {
                let state = P::start(&config, &ctx);
                (config, state, ctx)
            });
        ANSWER.with(|slot| *slot.borrow_mut() = Some(Box::new(answer)));
    }

    fn with_answer<P: ResponsePlugin, R>(
        f: impl FnOnce(&P::Config, &mut P::State, &ResponseContext) -> R,
    ) -> Result<R, String> {
        ANSWER.with(|slot| {
            let mut slot = slot.borrow_mut();
            let answer = slot
                .as_mut()
                .and_then(|b| b.downcast_mut::<Answer<P>>())
                .ok_or("on-response-start was not called first")?;
            let (config, state, ctx) = answer.as_mut().map_err(|e| e.clone())?;
            Ok(f(config, state, ctx))
        })
    }

    pub fn on_chunk<P: ResponsePlugin>(chunk: wit::Chunk) -> wit::ChunkAction {
        let chunk = super::Chunk::from(chunk);
        with_answer::<P, _>(|config, state, ctx| P::on_chunk(config, state, ctx, &chunk))
            .unwrap_or_else(|e| {
                ChunkAction::end(500, format!("plugin config rejected at response time: {e}"))
            })
            .into()
    }

    pub fn on_complete<P: ResponsePlugin>(completion: wit::Completion) {
        let completion = super::Completion::from(completion);
        if let Err(e) = with_answer::<P, _>(|config, state, ctx| {
            P::on_complete(config, state, ctx, &completion)
        }) {
            crate::host::warn(&format!("on_complete skipped: {e}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_json_reads_lines_events_and_bodies() {
        let line = Chunk {
            raw: b"{\"response\":\"a\"}\n".to_vec(),
            ..Chunk::default()
        };
        assert_eq!(line.json().unwrap()["response"], "a");
        let event = Chunk {
            raw: b"data: {\"choices\":[]}\n\n".to_vec(),
            ..Chunk::default()
        };
        assert!(event.json().unwrap()["choices"].is_array());
        let done = Chunk {
            raw: b"data: [DONE]\n\n".to_vec(),
            ..Chunk::default()
        };
        assert_eq!(done.json(), None);
        assert_eq!(Chunk::default().text(), "");
        assert_eq!(Chunk::last("x").text(), "x");
    }

    #[test]
    fn completion_reads_the_caller() {
        let c = Completion {
            outcome: Outcome::Completed,
            usage: Some(Usage {
                prompt_tokens: 2,
                completion_tokens: 3,
            }),
            headers: vec![("authorization".into(), "Bearer k1".into())],
        };
        assert_eq!(c.bearer_token(), Some("k1"));
        assert_eq!(c.header("Authorization"), Some("Bearer k1"));
        assert_eq!(c.usage.unwrap().total(), 5);
    }
}

//! The request-filter stage: the one place where policy (the wasm plugin
//! chain) sees an inference request before it is forwarded to Ollama.
//!
//! The forwarding code only knows this trait; everything wasmtime-specific
//! lives in the plugin host module that implements it.

use std::future::Future;
use std::pin::Pin;

/// What kind of request this is, as the plugins see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RouteKind {
    OllamaGenerate,
    OllamaChat,
    OllamaEmbed,
    OpenaiChat,
    OpenaiCompletions,
    OpenaiEmbeddings,
    Other,
    /// `/v1/responses`: OpenAI Responses body (`input`, `instructions`,
    /// `max_output_tokens`).
    OpenaiResponses,
    /// `/v1/messages`: Anthropic Messages body (`messages`, top-level
    /// `system`, `max_tokens`).
    AnthropicMessages,
}

impl RouteKind {
    /// The route kind of a request path (the query, if any, is ignored).
    pub fn from_path(path: &str) -> RouteKind {
        let path = path.split('?').next().unwrap_or(path);
        match path.trim_end_matches('/') {
            "/api/generate" => RouteKind::OllamaGenerate,
            "/api/chat" => RouteKind::OllamaChat,
            "/api/embed" | "/api/embeddings" => RouteKind::OllamaEmbed,
            "/v1/chat/completions" => RouteKind::OpenaiChat,
            "/v1/completions" => RouteKind::OpenaiCompletions,
            "/v1/embeddings" => RouteKind::OpenaiEmbeddings,
            "/v1/responses" => RouteKind::OpenaiResponses,
            "/v1/messages" => RouteKind::AnthropicMessages,
            _ => RouteKind::Other,
        }
    }

    /// True for the OpenAI-compatible routes, whose errors use OpenAI's format
    /// (`/v1/messages` is not one: its errors are Anthropic's).
    pub fn is_openai(self) -> bool {
        matches!(
            self,
            RouteKind::OpenaiChat
                | RouteKind::OpenaiCompletions
                | RouteKind::OpenaiEmbeddings
                | RouteKind::OpenaiResponses
        )
    }
}

/// A request as handed to the filter stage.
#[derive(Clone, Debug)]
pub struct FilterRequest {
    pub route: RouteKind,
    pub method: String,
    pub path: String,
    /// Header names lower-cased, in arrival order.
    pub headers: Vec<(String, String)>,
    /// The JSON body as received (or as rewritten by earlier filters).
    pub body: Vec<u8>,
    /// The model named in the body, when there is one.
    pub model: Option<String>,
}

/// The outcome of the whole filter stage.
#[derive(Debug)]
pub enum Verdict {
    /// Forward this (possibly rewritten) request.
    Forward(FilterRequest),
    /// Answer the client with this status and message, rendered in the
    /// client's error format (Ollama or OpenAI) by the caller, plus these
    /// response headers (lower-cased names, e.g. `retry-after` on a 429).
    Reject {
        status: u16,
        message: String,
        headers: Vec<(String, String)>,
    },
}

pub type VerdictFuture<'a> = Pin<Box<dyn Future<Output = Verdict> + Send + 'a>>;

/// A stage that decides what happens to a request before it is forwarded.
pub trait RequestFilter: Send + Sync {
    fn apply(&self, request: FilterRequest) -> VerdictFuture<'_>;

    /// The response stage that goes with these filters (response plugins),
    /// if any. `None` keeps every response on the plain passthrough path.
    fn responses(&self) -> Option<&dyn crate::response::ResponseStage> {
        None
    }

    /// Appends the stage's own metrics (Prometheus text format) to `/metrics`.
    fn render_metrics(&self, _out: &mut String) {}
}

/// The stage when no plugins are configured: every request goes through as is.
pub struct NoFilters;

impl RequestFilter for NoFilters {
    fn apply(&self, request: FilterRequest) -> VerdictFuture<'_> {
        Box::pin(async move { Verdict::Forward(request) })
    }
}

/// One `[[plugins]]` entry of the proxy config (DESIGN.md §3).
#[derive(Clone, Debug, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct PluginSpec {
    pub name: String,
    pub path: std::path::PathBuf,
    /// Optional pin: the proxy refuses to start when the file's sha256 differs.
    #[serde(default)]
    pub sha256: Option<String>,
    #[serde(default)]
    pub on_error: OnError,
    /// Route selection (e.g. "generate", "chat", "openai", "inference", "all"); default: every route.
    #[serde(default)]
    pub routes: Option<Vec<String>>,
    /// Opaque to the host; handed to the plugin as JSON.
    #[serde(default)]
    pub config: serde_json::Value,
}

/// What happens to a request when a plugin fails (trap, deadline, bad output).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    /// Fail closed: the request is refused with a 5xx.
    #[default]
    Deny,
    /// Fail open: the request continues as if the plugin allowed it.
    Allow,
}

//! The request-filter stage: the one place where policy (the wasm plugin
//! chain) sees an inference request before it is forwarded to Ollama.
//! (Route kinds are in `routes`, plugin config entries in `plugins::spec`.)
//!
//! The forwarding code only knows this trait; everything wasmtime-specific
//! lives in the plugin host module that implements it.

use std::future::Future;
use std::pin::Pin;

pub use crate::route_kind::RouteKind;

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

    /// Whether [`apply`](Self::apply) may do anything to a request of this
    /// route. When not, the pipeline forwards the request as it came, and
    /// builds no [`FilterRequest`] (header pairs, a copy of the body) for it.
    fn filters(&self, _route: RouteKind) -> bool {
        true
    }

    /// The response stage that goes with these filters (response plugins),
    /// if any. `None` keeps every response on the plain passthrough path.
    fn responses(&self) -> Option<&dyn crate::response::ResponseStage> {
        None
    }

    /// Appends the stage's own metric families (OpenMetrics text, without
    /// the closing `# EOF`) to `/metrics`.
    fn render_metrics(&self, _out: &mut String) {}
}

/// The stage when no plugins are configured: every request goes through as is.
pub struct NoFilters;

impl RequestFilter for NoFilters {
    fn apply(&self, request: FilterRequest) -> VerdictFuture<'_> {
        Box::pin(async move { Verdict::Forward(request) })
    }

    fn filters(&self, _route: RouteKind) -> bool {
        false
    }
}

//! The response stage: Ollama's answer on its way back, seen by policy (the
//! response plugins) chunk by chunk, after Pingora's `response_filter` phase.
//!
//! The forwarding code only knows the [`ResponseStage`] trait; the wasm
//! host implements it. Without response plugins for a route the stage
//! answers `None` and the response takes the plain passthrough path: no
//! framing, no parsing, no copies.
//!
//! - `chunk`: one frame of an API's stream, its normalized text and
//!   thinking, usage and rewriting.
//! - `stream`: the streaming body (framing, hooks, errors in the client's format).
//! - `whole`: non-streaming answers, buffered (bounded) and filtered once.
//! - `transcript`, `blocks`: per-answer state of the two event APIs (the
//!   text and thinking a `/v1/responses` answer sent; which `/v1/messages`
//!   blocks are text or thinking).
//! - `thinking`: per-answer state of the chat shapes: where thinking ends.
//! - `edits`: per-answer state of Ollama's and OpenAI's shapes: whether a
//!   hook changed the answer, so `logprobs` and `context` no longer match it.
//! - `usage`: asking Ollama for usage on streamed OpenAI requests.

mod blocks;
pub mod chunk;
mod edits;
mod events;
mod peek;
pub mod stream;
mod thinking;
pub mod transcript;
pub mod usage;
pub mod whole;

pub use chunk::{Chunk, Shape, Usage};

use crate::filter::RouteKind;

/// The request a response answers, as the response hooks see it.
#[derive(Clone, Debug)]
pub struct ResponseContext {
    /// The proxy's `x-request-id`.
    pub request_id: String,
    pub route: RouteKind,
    /// Path as received (no query).
    pub path: String,
    pub model: Option<String>,
    /// Whether the response streams; set when Ollama's answer arrives.
    pub stream: bool,
    /// Ollama's status; set when its answer arrives.
    pub status: u16,
    /// The request headers as forwarded (lower-cased names).
    pub headers: Vec<(String, String)>,
}

/// How a response ended, as the completion hook is told.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResponseOutcome {
    Completed,
    EndedByPlugin,
    ClientGone,
    UpstreamFailed,
    TimedOut,
}

/// A response hook's order to stop the response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stop {
    /// Used when the response does not stream (streaming, 200 is already sent).
    pub status: u16,
    pub message: String,
    pub headers: Vec<(String, String)>,
}

/// A hook stopped the response at `chunks[sent]`: the chunks before it go
/// out, that one and the rest do not, then the stop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ended {
    pub sent: usize,
    pub stop: Stop,
}

/// The response hooks of one response: one value per response, so the
/// implementation may keep per-response state (plugin instances).
pub trait ResponseHooks: Send {
    /// The next chunks, in order — all that arrived in one read, so a hook
    /// pays its call cost per read, not per chunk. The hooks may rewrite
    /// them in place; `Err` ends the response.
    fn on_chunks(&mut self, ctx: &ResponseContext, chunks: &mut [Chunk]) -> Result<(), Ended>;

    /// Once, when the response has ended however it ended.
    fn on_complete(
        &mut self,
        ctx: &ResponseContext,
        outcome: ResponseOutcome,
        usage: Option<Usage>,
    );
}

/// The stage that decides which responses are filtered.
pub trait ResponseStage: Send + Sync {
    /// The hooks for a response to this request, or `None` when no response
    /// plugin applies (the response then passes through untouched).
    fn begin(&self, ctx: &ResponseContext) -> Option<Box<dyn ResponseHooks>>;
}

/// Whether response hooks run on a route at all: only routes that generate
/// text have chunks worth seeing (embeddings are vectors, and their bodies
/// can be large).
pub fn generates(route: RouteKind) -> bool {
    matches!(
        route,
        RouteKind::OllamaGenerate
            | RouteKind::OllamaChat
            | RouteKind::OpenaiChat
            | RouteKind::OpenaiCompletions
            | RouteKind::OpenaiResponses
            | RouteKind::AnthropicMessages
    )
}

/// A request whose answer goes through response hooks.
pub struct Armed {
    hooks: Box<dyn ResponseHooks>,
    ctx: ResponseContext,
    shape: Shape,
    hide_usage_chunk: bool,
}

/// Between the filter stage and forwarding: asks the response stage for
/// hooks for this request. With hooks, the body may change (to ask Ollama
/// for usage, see [`usage`]); without, nothing happens and nothing is
/// parsed. Returns the body to forward.
pub fn prepare(
    stage: Option<&dyn ResponseStage>,
    mut ctx: ResponseContext,
    headers: &http::HeaderMap,
    body: bytes::Bytes,
) -> (bytes::Bytes, Option<Armed>) {
    let Some(stage) = stage else {
        return (body, None);
    };
    if !generates(ctx.route) {
        return (body, None);
    }
    ctx.headers = headers
        .iter()
        .filter_map(|(n, v)| Some((n.as_str().to_owned(), v.to_str().ok()?.to_owned())))
        .collect();
    let Some(hooks) = stage.begin(&ctx) else {
        return (body, None);
    };
    let shape = Shape::of_path(&ctx.path);
    let stream = crate::request_view::parse(ctx.route, &body).is_ok_and(|v| v.stream);
    let plan = usage::plan(shape, stream, &body);
    let body = plan.body.unwrap_or(body);
    let armed = Armed {
        hooks,
        ctx,
        shape,
        hide_usage_chunk: plan.hide_usage_chunk,
    };
    (body, Some(armed))
}

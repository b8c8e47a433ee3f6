//! The response stage: Ollama's answer on its way back, seen by policy (the
//! response plugins) chunk by chunk, after Pingora's `response_filter` phase.
//!
//! The forwarding code only knows the [`ResponseStage`] trait; the wasm
//! host implements it. Without response plugins for a route the stage
//! answers `None` and the response takes the plain passthrough path: no
//! framing, no parsing, no copies.
//!
//! Split by what varies — one codec per API — and what does not:
//! - `codec`: the [`Codec`] trait every API implements, the normalized
//!   [`codec::View`] of a chunk, and what the codecs share.
//! - `ollama`, `openai`, `responses`, `messages`, `gemini`: the codecs
//!   (Ollama's generate and chat; OpenAI chat and completions; OpenAI
//!   Responses; Anthropic Messages; Gemini's generateContent, as the proxy
//!   translates it), each with its own per-answer state.
//! - `chunk`: one chunk of any API, read and rewritten through its codec.
//! - `answer`: one answer's chunks through the hooks, format-blind.
//! - `stream`: the streamed body; `respond`: building the client's
//!   response (streamed, or read whole and filtered once).

pub mod answer;
pub mod chunk;
pub mod codec;
pub mod gemini;
pub mod lenient;
pub mod messages;
pub mod ollama;
pub mod openai;
pub mod respond;
pub mod responses;
pub mod stream;
pub mod wire;

pub use chunk::Chunk;
pub use codec::{Channel, Codec, Kind, Usage};

/// The codec of each API, for the route table (`routes::classify`).
pub static OLLAMA_GENERATE: &dyn Codec = &ollama::Ollama { chat: false };
pub static OLLAMA_CHAT: &dyn Codec = &ollama::Ollama { chat: true };
pub static OPENAI_CHAT: &dyn Codec = &openai::OpenAi { chat: true };
pub static OPENAI_COMPLETIONS: &dyn Codec = &openai::OpenAi { chat: false };
pub static RESPONSES: &dyn Codec = &responses::Responses;
pub static MESSAGES: &dyn Codec = &messages::Messages;
pub static GEMINI: &dyn Codec = &gemini::Gemini;

use crate::routes::RouteKind;

/// The request a response answers, as the response hooks see it.
#[derive(Clone, Debug)]
pub struct ResponseContext {
    /// The proxy's `x-request-id`.
    pub request_id: String,
    pub route: RouteKind,
    /// Path as received (no query).
    pub path: String,
    pub model: Option<String>,
    /// Whether the response streams: as the request asked, until Ollama's
    /// answer tells.
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

/// A request whose answer goes through response hooks.
pub struct Armed {
    hooks: Box<dyn ResponseHooks>,
    ctx: ResponseContext,
    codec: &'static dyn Codec,
    hide_usage_chunk: bool,
}

/// Between the filter stage and forwarding: asks the response stage for
/// hooks for this request, whose answers `codec` reads (routes without one
/// generate no text: embeddings are vectors, and their bodies can be
/// large). With hooks, the body may change (see [`Codec::plan_request`]);
/// without, nothing happens and nothing is parsed. Returns the body to
/// forward.
pub fn prepare(
    stage: Option<&dyn ResponseStage>,
    codec: Option<&'static dyn Codec>,
    ctx: ResponseContext,
    body: bytes::Bytes,
) -> (bytes::Bytes, Option<Armed>) {
    let (Some(stage), Some(codec)) = (stage, codec) else {
        return (body, None);
    };
    let Some(hooks) = stage.begin(&ctx) else {
        return (body, None);
    };
    let plan = codec.plan_request(ctx.stream, &body);
    let armed = Armed {
        hooks,
        ctx,
        codec,
        hide_usage_chunk: plan.hide_usage_chunk,
    };
    (plan.body.unwrap_or(body), Some(armed))
}

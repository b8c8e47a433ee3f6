//! What kind of request a route serves, as the plugins see it; the route
//! table (`routes`) maps paths to kinds. Its own module so the pure
//! request-side code (and the fuzz targets that include it) need nothing else.

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
    /// Every kind: the inference kinds, then `Other`.
    pub const ALL: [RouteKind; 9] = [
        RouteKind::OllamaGenerate,
        RouteKind::OllamaChat,
        RouteKind::OllamaEmbed,
        RouteKind::OpenaiChat,
        RouteKind::OpenaiCompletions,
        RouteKind::OpenaiEmbeddings,
        RouteKind::OpenaiResponses,
        RouteKind::AnthropicMessages,
        RouteKind::Other,
    ];

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

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
    /// Gemini's `models/{model}:generateContent` and
    /// `:streamGenerateContent`: `contents`, `systemInstruction`,
    /// `generationConfig.maxOutputTokens`; the model is in the path.
    GeminiGenerate,
    /// Gemini's `:countTokens`.
    GeminiCountTokens,
    /// Gemini's `:embedContent` and `:batchEmbedContents`.
    GeminiEmbed,
}

impl RouteKind {
    /// Every kind: the inference kinds, then `Other`.
    pub const ALL: [RouteKind; 12] = [
        RouteKind::OllamaGenerate,
        RouteKind::OllamaChat,
        RouteKind::OllamaEmbed,
        RouteKind::OpenaiChat,
        RouteKind::OpenaiCompletions,
        RouteKind::OpenaiEmbeddings,
        RouteKind::OpenaiResponses,
        RouteKind::AnthropicMessages,
        RouteKind::GeminiGenerate,
        RouteKind::GeminiCountTokens,
        RouteKind::GeminiEmbed,
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

    /// True for Gemini's routes, whose model is named in the path and whose
    /// bodies the proxy translates to Ollama's after the request plugins.
    pub fn is_gemini(self) -> bool {
        matches!(
            self,
            RouteKind::GeminiGenerate | RouteKind::GeminiCountTokens | RouteKind::GeminiEmbed
        )
    }
}

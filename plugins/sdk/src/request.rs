//! The request a plugin sees.

use crate::bindings::kiln::filter::types as wit;
use crate::body::{Body, BodyError};

/// Which API the request is for (derived by the host from the path).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Route {
    OllamaGenerate,
    OllamaChat,
    OllamaEmbed,
    OpenaiChat,
    OpenaiCompletions,
    OpenaiEmbeddings,
    Other,
    /// `POST /v1/responses`: the OpenAI Responses API.
    OpenaiResponses,
    /// `POST /v1/messages`: the Anthropic Messages API.
    AnthropicMessages,
    /// `POST /v1beta/models/{model}:generateContent` and
    /// `:streamGenerateContent`: the Gemini API. The model is in the path
    /// (the host passes it as [`Request::model`]), not in the body.
    GeminiGenerate,
    /// Gemini's `:countTokens`.
    GeminiCountTokens,
    /// Gemini's `:embedContent` and `:batchEmbedContents`.
    GeminiEmbed,
}

impl Route {
    /// True for the routes that run a model and carry a JSON body; `Other`
    /// (tags, show, ps, version, model management) comes with an empty body.
    pub fn is_inference(self) -> bool {
        self != Route::Other
    }

    /// True for the OpenAI-compatible routes under `/v1/` (not
    /// `/v1/messages`, which is Anthropic's API).
    pub fn is_openai(self) -> bool {
        matches!(
            self,
            Route::OpenaiChat
                | Route::OpenaiCompletions
                | Route::OpenaiEmbeddings
                | Route::OpenaiResponses
        )
    }
}

/// One inference request, as received by the proxy or as rewritten by the
/// plugins before this one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub route: Route,
    pub method: String,
    pub path: String,
    /// Lower-cased names, arrival order; a name may repeat.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The model the request names: the body's `model` field, or on the
    /// Gemini routes the one in the path (with the proxy's aliases resolved).
    pub model: Option<String>,
}

impl Request {
    /// A POST request with a JSON body, as the host would pass it; for tests.
    pub fn new(route: Route, path: &str, body: &str) -> Self {
        let model = serde_json::from_str::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v.get("model").and_then(|m| m.as_str()).map(str::to_owned));
        Request {
            route,
            method: "POST".into(),
            path: path.into(),
            headers: Vec::new(),
            body: body.as_bytes().to_vec(),
            model,
        }
    }

    /// Adds a header (the name is lower-cased, as the host does); for tests.
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers
            .push((name.to_ascii_lowercase(), value.to_owned()));
        self
    }

    /// The first value of a header; `name` is matched case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The bearer token of `Authorization: Bearer …`, if there is one.
    pub fn bearer_token(&self) -> Option<&str> {
        let value = self.header("authorization")?.trim();
        let (scheme, token) = value.split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim())
            .filter(|t| !t.is_empty())
    }

    /// The body parsed into the typed view for this route.
    pub fn body(&self) -> Result<Body, BodyError> {
        Body::parse(self.route, &self.body)
    }
}

impl From<wit::RouteKind> for Route {
    fn from(kind: wit::RouteKind) -> Self {
        match kind {
            wit::RouteKind::OllamaGenerate => Route::OllamaGenerate,
            wit::RouteKind::OllamaChat => Route::OllamaChat,
            wit::RouteKind::OllamaEmbed => Route::OllamaEmbed,
            wit::RouteKind::OpenaiChat => Route::OpenaiChat,
            wit::RouteKind::OpenaiCompletions => Route::OpenaiCompletions,
            wit::RouteKind::OpenaiEmbeddings => Route::OpenaiEmbeddings,
            wit::RouteKind::Other => Route::Other,
            wit::RouteKind::OpenaiResponses => Route::OpenaiResponses,
            wit::RouteKind::AnthropicMessages => Route::AnthropicMessages,
            wit::RouteKind::GeminiGenerate => Route::GeminiGenerate,
            wit::RouteKind::GeminiCountTokens => Route::GeminiCountTokens,
            wit::RouteKind::GeminiEmbed => Route::GeminiEmbed,
        }
    }
}

impl From<wit::Request> for Request {
    fn from(r: wit::Request) -> Self {
        Request {
            route: r.route.into(),
            method: r.method,
            path: r.path,
            headers: r.headers.into_iter().map(|h| (h.name, h.value)).collect(),
            body: r.body,
            model: r.model,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_token_is_read_case_insensitively() {
        let r = Request::new(Route::OllamaChat, "/api/chat", "{}")
            .with_header("Authorization", "bearer  abc ");
        assert_eq!(r.bearer_token(), Some("abc"));
        let r = Request::new(Route::OllamaChat, "/api/chat", "{}")
            .with_header("authorization", "Basic abc");
        assert_eq!(r.bearer_token(), None);
        let r = Request::new(Route::OllamaChat, "/api/chat", "{}")
            .with_header("authorization", "Bearer ");
        assert_eq!(r.bearer_token(), None);
    }

    #[test]
    fn new_reads_the_model_from_the_body() {
        let r = Request::new(
            Route::OllamaGenerate,
            "/api/generate",
            r#"{"model":"gemma3:4b"}"#,
        );
        assert_eq!(r.model.as_deref(), Some("gemma3:4b"));
    }
}

//! The route table: which upstream routes exist, which methods they take,
//! which are inference (admitted, filtered, typed), in which format their
//! clients expect errors, and which codec reads their answers. A request's
//! path is looked up here once.

use http::Method;

use crate::response::{self, Codec};

pub use crate::route_kind::RouteKind;

/// The error format a client of a route understands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApiStyle {
    /// `{"error":"…"}` on `/api/*` and everything that is not `/v1/*`.
    Ollama,
    /// `{"error":{"message":…,"type":…,"param":null,"code":…}}` on `/v1/*`.
    OpenAi,
    /// `{"type":"error","error":{"type":…,"message":…}}` on `/v1/messages`
    /// (Anthropic's format, which Ollama uses there: anthropic.NewError);
    /// streamed, an `error` event.
    Anthropic,
    /// Google's `{"error":{"code":…,"message":…,"status":…}}` on the Gemini
    /// API (`/v1beta/…`, `/v1/models/…:generateContent`…).
    Gemini,
}

impl ApiStyle {
    /// The style of a path the proxy does not serve: `/v1/*` clients are
    /// OpenAI's, the rest Ollama's.
    pub fn of_unknown(path: &str) -> ApiStyle {
        if path.trim_end_matches('/') == "/v1/messages" {
            ApiStyle::Anthropic
        } else if path.starts_with("/v1beta/")
            || path.contains(':') && path.starts_with("/v1/models/")
        {
            ApiStyle::Gemini
        } else if path.starts_with("/v1/") {
            ApiStyle::OpenAi
        } else {
            ApiStyle::Ollama
        }
    }
}

/// A known route: everything the request path needs to know about it.
#[derive(Clone, Copy, Debug)]
pub struct Route {
    pub kind: RouteKind,
    /// A stable, low-cardinality label for metrics and logs.
    pub label: &'static str,
    /// Inference routes run a model: their bodies are parsed, filtered and admitted.
    pub inference: bool,
    pub methods: &'static [Method],
    /// The format its clients expect errors in.
    pub style: ApiStyle,
    /// Reads its answers (token counts, response hooks); `None` for routes
    /// that generate no text.
    pub codec: Option<&'static dyn Codec>,
}

const GET: &[Method] = &[Method::GET, Method::HEAD];
const POST: &[Method] = &[Method::POST];

/// A route that runs no model.
fn other(label: &'static str, methods: &'static [Method]) -> Route {
    Route {
        kind: RouteKind::Other,
        label,
        inference: false,
        methods,
        style: ApiStyle::Ollama,
        codec: None,
    }
}

/// An inference route (POST).
fn inference(
    label: &'static str,
    kind: RouteKind,
    style: ApiStyle,
    codec: Option<&'static dyn Codec>,
) -> Route {
    Route {
        kind,
        label,
        inference: true,
        methods: POST,
        style,
        codec,
    }
}

/// Looks up the route of a path (no query). `None` for paths Ollama does not
/// serve: the proxy answers those itself with 404, so nothing unknown reaches Ollama.
pub fn classify(path: &str) -> Option<Route> {
    use ApiStyle::{Anthropic, Gemini, Ollama, OpenAi};
    use RouteKind::*;
    let models = Route {
        style: OpenAi,
        ..other("openai_models", GET)
    };
    let r = match path {
        "/" => other("root", GET),
        "/api/version" => other("version", GET),
        "/api/generate" => inference(
            "generate",
            OllamaGenerate,
            Ollama,
            Some(response::OLLAMA_GENERATE),
        ),
        "/api/chat" => inference("chat", OllamaChat, Ollama, Some(response::OLLAMA_CHAT)),
        "/api/embed" => inference("embed", OllamaEmbed, Ollama, None),
        "/api/embeddings" => inference("embeddings", OllamaEmbed, Ollama, None),
        "/api/tags" => other("tags", GET),
        "/api/ps" => other("ps", GET),
        "/api/show" => other("show", POST),
        "/api/status" => other("status", GET),
        "/api/pull" => other("pull", POST),
        "/api/push" => other("push", POST),
        "/api/create" => other("create", POST),
        "/api/copy" => other("copy", POST),
        "/api/delete" => other("delete", &[Method::DELETE]),
        // Ollama's `:digest` and `:model` parameters are one path segment.
        p if one_segment_after(p, "/api/blobs/") => other("blobs", &[Method::POST, Method::HEAD]),
        "/v1/chat/completions" => inference(
            "openai_chat",
            OpenaiChat,
            OpenAi,
            Some(response::OPENAI_CHAT),
        ),
        "/v1/completions" => inference(
            "openai_completions",
            OpenaiCompletions,
            OpenAi,
            Some(response::OPENAI_COMPLETIONS),
        ),
        "/v1/embeddings" => inference("openai_embeddings", OpenaiEmbeddings, OpenAi, None),
        "/v1/responses" => inference(
            "openai_responses",
            OpenaiResponses,
            OpenAi,
            Some(response::RESPONSES),
        ),
        "/v1/messages" => inference(
            "anthropic_messages",
            AnthropicMessages,
            Anthropic,
            Some(response::MESSAGES),
        ),
        p if crate::gemini::call(p).is_some() => {
            use crate::gemini::Method;
            let (_, method) = crate::gemini::call(p)?;
            match method {
                Method::Generate => inference(
                    "gemini_generate",
                    GeminiGenerate,
                    Gemini,
                    Some(response::GEMINI),
                ),
                Method::StreamGenerate => inference(
                    "gemini_stream_generate",
                    GeminiGenerate,
                    Gemini,
                    Some(response::GEMINI),
                ),
                Method::CountTokens => {
                    inference("gemini_count_tokens", GeminiCountTokens, Gemini, None)
                }
                Method::Embed => inference("gemini_embed", GeminiEmbed, Gemini, None),
                Method::BatchEmbed => inference("gemini_batch_embed", GeminiEmbed, Gemini, None),
            }
        }
        p if crate::gemini::models_path(p).is_some() => Route {
            style: Gemini,
            ..other("gemini_models", GET)
        },
        "/v1/models" => models,
        p if one_segment_after(p, "/v1/models/") => models,
        _ => return None,
    };
    Some(r)
}

/// Ollama's model-management routes: they change what the instance serves
/// (pull, push, create, copy, delete, blob uploads), so they are refused
/// unless `allow_management_routes` is set.
pub fn is_management(route: &Route) -> bool {
    matches!(
        route.label,
        "pull" | "push" | "create" | "copy" | "delete" | "blobs"
    )
}

/// Why a path is not in the one spelling policy and Ollama would agree on,
/// if it is not: dot segments (`/api/blobs/../generate`), empty segments,
/// backslashes, or encoded `.`, `/`, `\`. Such a path could be classified as
/// one route here and resolved to another by a normalizing hop; it is
/// refused rather than rewritten, since no client needs to send it.
pub fn unnormalized(path: &str) -> Option<&'static str> {
    if !path.starts_with('/') {
        return Some("it does not start with /");
    }
    if path.contains('\\') {
        return Some("it contains a backslash");
    }
    let lower = path.to_ascii_lowercase();
    if ["%2e", "%2f", "%5c", "%00"]
        .iter()
        .any(|e| lower.contains(e))
    {
        return Some("it contains an encoded '.', '/', '\\' or NUL");
    }
    let segments: Vec<&str> = path[1..].split('/').collect();
    for (i, seg) in segments.iter().enumerate() {
        if *seg == "." || *seg == ".." {
            return Some("it contains a '.' or '..' segment");
        }
        // `/` alone is one empty segment; a trailing `/` is the last one.
        if seg.is_empty() && i + 1 < segments.len() {
            return Some("it contains an empty segment ('//')");
        }
    }
    None
}

/// True when `path` is `prefix` and one non-empty segment.
fn one_segment_after(path: &str, prefix: &str) -> bool {
    path.strip_prefix(prefix)
        .is_some_and(|rest| !rest.is_empty() && !rest.contains('/'))
}

/// The `Allow` header value of a route.
pub fn allow_header(route: &Route) -> String {
    route
        .methods
        .iter()
        .map(Method::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

/// An error body in the client's format.
pub fn error_body(style: ApiStyle, status: u16, message: &str) -> Vec<u8> {
    let v = match style {
        ApiStyle::Ollama => serde_json::json!({ "error": message }),
        ApiStyle::OpenAi => {
            // The `type` values Ollama's OpenAI layer uses, plus OpenAI's own for 429.
            let (kind, code) = match status {
                400 | 405 | 413 => ("invalid_request_error", serde_json::Value::Null),
                401 | 403 => ("authentication_error", serde_json::Value::Null),
                404 => ("not_found_error", serde_json::Value::Null),
                429 => ("rate_limit_error", serde_json::json!("rate_limit_exceeded")),
                _ => ("api_error", serde_json::Value::Null),
            };
            serde_json::json!({"error": {"message": message, "type": kind, "param": null, "code": code}})
        }
        ApiStyle::Anthropic => {
            let kind = match status {
                400 | 405 => "invalid_request_error",
                401 => "authentication_error",
                403 => "permission_error",
                404 => "not_found_error",
                413 => "request_too_large",
                429 => "rate_limit_error",
                503 | 529 => "overloaded_error",
                _ => "api_error",
            };
            serde_json::json!({"type": "error", "error": {"type": kind, "message": message}})
        }
        ApiStyle::Gemini => crate::gemini::error_json(status, message),
    };
    serde_json::to_vec(&v).unwrap_or_default()
}

/// An error as one more SSE event of a stream whose status is long sent:
/// `data: {…}` (OpenAI's clients raise on a data `error`), or Anthropic's
/// `event: error` (its clients dispatch on the event name and skip unnamed
/// events).
pub fn sse_error(style: ApiStyle, status: u16, message: &str) -> Vec<u8> {
    let mut out = Vec::new();
    if style == ApiStyle::Anthropic {
        out.extend_from_slice(b"event: error\n");
    }
    out.extend_from_slice(b"data: ");
    out.extend(error_body(style, status, message));
    out.extend_from_slice(b"\n\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_classify_by_path() {
        let g = classify("/api/generate").unwrap();
        assert!(g.inference && g.kind == RouteKind::OllamaGenerate && g.methods == POST);
        assert_eq!(
            classify("/v1/chat/completions").unwrap().kind,
            RouteKind::OpenaiChat
        );
        // Their bodies are not chat-completions bodies: plugins must know.
        assert_eq!(
            classify("/v1/responses").unwrap().kind,
            RouteKind::OpenaiResponses
        );
        assert_eq!(
            classify("/v1/messages").unwrap().kind,
            RouteKind::AnthropicMessages
        );
        // Routes that generate text have a codec; embeddings do not.
        assert_eq!(
            classify("/v1/messages").unwrap().codec.map(|c| c.name()),
            Some("anthropic-messages")
        );
        assert!(classify("/api/embed").unwrap().codec.is_none());
        assert!(!classify("/api/tags").unwrap().inference);
        assert_eq!(classify("/api/blobs/sha256:abc").unwrap().label, "blobs");
        assert!(classify("/admin").is_none());
        assert!(classify("/api/generate/x").is_none());
        assert!(classify("/api/blobs/sha256:abc/x").is_none());
        assert!(classify("/api/blobs/").is_none());
        assert!(is_management(&classify("/api/delete").unwrap()));
        assert!(is_management(&classify("/api/blobs/sha256:1").unwrap()));
        assert!(!is_management(&classify("/api/show").unwrap()));
        // Gemini: the method after the model; both API versions.
        let g = classify("/v1beta/models/gemma3:4b:streamGenerateContent").unwrap();
        assert_eq!(
            (g.kind, g.label),
            (RouteKind::GeminiGenerate, "gemini_stream_generate")
        );
        assert_eq!(g.codec.map(|c| c.name()), Some("gemini"));
        assert_eq!(
            classify("/v1/models/gemma3:4b:embedContent").unwrap().kind,
            RouteKind::GeminiEmbed
        );
        assert_eq!(classify("/v1beta/models").unwrap().label, "gemini_models");
        assert_eq!(
            classify("/v1beta/models/gemma3:4b").unwrap().label,
            "gemini_models"
        );
        // `/v1/models/…` without a method stays the OpenAI model route.
        assert_eq!(
            classify("/v1/models/gemma3:4b").unwrap().label,
            "openai_models"
        );
        assert!(classify("/v1beta/models/gemma3:4b:nope").is_none());
    }

    #[test]
    fn unnormalized_paths_are_named() {
        for ok in [
            "/",
            "/api/generate",
            "/v1/models/gemma3:4b",
            "/api/blobs/sha256:ab",
            "/v1/models/",
        ] {
            assert_eq!(unnormalized(ok), None, "{ok}");
        }
        for bad in [
            "/api/blobs/../generate",
            "/v1/models/../../api/tags",
            "/api/./generate",
            "/api//generate",
            "/api/blobs/%2e%2e/generate",
            "/api/blobs/..%2Fgenerate",
            "/api/blobs/..\\generate",
            "/v1/models/..",
        ] {
            assert!(unnormalized(bad).is_some(), "{bad}");
        }
    }

    #[test]
    fn errors_follow_the_client_format() {
        let o: serde_json::Value =
            serde_json::from_slice(&error_body(ApiStyle::Ollama, 429, "busy")).unwrap();
        assert_eq!(o, serde_json::json!({"error": "busy"}));
        let v: serde_json::Value =
            serde_json::from_slice(&error_body(ApiStyle::OpenAi, 429, "busy")).unwrap();
        assert_eq!(v["error"]["message"], "busy");
        assert_eq!(v["error"]["type"], "rate_limit_error");
        let style = |p: &str| classify(p).map_or(ApiStyle::of_unknown(p), |r| r.style);
        assert_eq!(style("/v1/models"), ApiStyle::OpenAi);
        assert_eq!(style("/v1/responses"), ApiStyle::OpenAi);
        assert_eq!(style("/v1/messages"), ApiStyle::Anthropic);
        let a: serde_json::Value =
            serde_json::from_slice(&error_body(ApiStyle::Anthropic, 429, "busy")).unwrap();
        assert_eq!(
            a,
            serde_json::json!({"type": "error", "error": {"type": "rate_limit_error", "message": "busy"}})
        );
        let e = sse_error(ApiStyle::Anthropic, 500, "boom");
        assert!(e.starts_with(b"event: error\ndata: {") && e.ends_with(b"}\n\n"));
        assert!(sse_error(ApiStyle::OpenAi, 500, "boom").starts_with(b"data: {\"error\""));
        assert_eq!(style("/api/chat"), ApiStyle::Ollama);
        assert_eq!(style("/v1/nope"), ApiStyle::OpenAi);
        assert_eq!(style("/v1beta/models/m:generateContent"), ApiStyle::Gemini);
        assert_eq!(style("/v1beta/nope"), ApiStyle::Gemini);
        let g: serde_json::Value =
            serde_json::from_slice(&error_body(ApiStyle::Gemini, 429, "busy")).unwrap();
        assert_eq!(
            g,
            serde_json::json!({"error": {"code": 429, "message": "busy", "status": "RESOURCE_EXHAUSTED"}})
        );
    }
}

//! The Gemini API (`google-genai` clients) in front of Ollama's native API.
//!
//! The request plugins see the Gemini body as the client sent it; after
//! them the host translates it to Ollama's `/api/chat` or `/api/embed`
//! (`request`), and Ollama's answer back into Gemini's shapes (`answer`):
//! SSE events for `:streamGenerateContent?alt=sse`, a JSON array streamed
//! element by element without `alt=sse`, one object otherwise. The response
//! plugins see the Gemini chunks through `response::gemini`, the codec.
//! `GET models` and `GET models/{m}` come from Ollama's `/api/tags`
//! (`models`). Errors are Google's `{"error":{"code","message","status"}}`
//! (`routes::ApiStyle::Gemini`).

pub mod answer;
pub mod models;
pub mod request;
pub mod stage;

use std::collections::BTreeMap;

/// What a Gemini path asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Generate,
    StreamGenerate,
    CountTokens,
    Embed,
    BatchEmbed,
}

/// `POST /{v1beta|v1}/models/{model}:{method}`: the model as written in the
/// path (`%3A` read as `:`), and the method. The model is one path segment:
/// Ollama names with a namespace (`user/m:t`) are reached by an alias.
pub fn call(path: &str) -> Option<(String, Method)> {
    let rest = path
        .strip_prefix("/v1beta/models/")
        .or_else(|| path.strip_prefix("/v1/models/"))?;
    if rest.contains('/') {
        return None;
    }
    let rest = rest.replace("%3A", ":").replace("%3a", ":");
    let (model, method) = rest.rsplit_once(':')?;
    let method = match method {
        "generateContent" => Method::Generate,
        "streamGenerateContent" => Method::StreamGenerate,
        "countTokens" => Method::CountTokens,
        "embedContent" => Method::Embed,
        "batchEmbedContents" => Method::BatchEmbed,
        _ => return None,
    };
    (!model.is_empty()).then(|| (model.to_string(), method))
}

/// `GET /v1beta/models` (`Some(None)`) and `GET /v1beta/models/{model}`
/// (`Some(Some(model))`). Only under `v1beta`: `/v1/models` is the OpenAI
/// API's model list, which Ollama serves.
pub fn models_path(path: &str) -> Option<Option<String>> {
    let rest = path.strip_prefix("/v1beta/models")?;
    match rest {
        "" | "/" => Some(None),
        r => {
            let m = r.strip_prefix('/')?.replace("%3A", ":").replace("%3a", ":");
            // `gemma3:4b` is a name; `gemma3:4b:countTokens` is a call, and
            // `gemma3:4b:nope` neither (a name has one tag at most).
            let is_call = call(&format!("/v1beta/models/{m}")).is_some();
            let name = !m.is_empty() && !m.contains('/') && m.matches(':').count() <= 1;
            (name && !is_call).then_some(Some(m))
        }
    }
}

/// The Ollama model a Gemini model name means: `models/` dropped (clients
/// send both spellings), then looked up in `[gemini] aliases`.
pub fn resolve(aliases: &BTreeMap<String, String>, name: &str) -> String {
    let name = name.strip_prefix("models/").unwrap_or(name);
    aliases
        .get(name)
        .cloned()
        .unwrap_or_else(|| name.to_string())
}

/// Google's status name for an HTTP status (google.rpc.Code).
pub fn status_name(status: u16) -> &'static str {
    match status {
        400 | 405 | 411 | 413 | 415 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        408 | 504 => "DEADLINE_EXCEEDED",
        409 => "ABORTED",
        429 => "RESOURCE_EXHAUSTED",
        499 => "CANCELLED",
        501 => "UNIMPLEMENTED",
        502 | 503 => "UNAVAILABLE",
        _ => "INTERNAL",
    }
}

/// Google's error body.
pub fn error_json(status: u16, message: &str) -> serde_json::Value {
    serde_json::json!({"error": {"code": status, "message": message, "status": status_name(status)}})
}

/// The request target with the value of a `key` query parameter (the API
/// key Gemini clients may send in the URL) replaced, for logs.
pub fn redact_key(path_and_query: &str) -> String {
    let Some((path, query)) = path_and_query.split_once('?') else {
        return path_and_query.to_string();
    };
    let query: Vec<String> = query
        .split('&')
        .map(|p| match p.split_once('=') {
            Some(("key", _)) => "key=REDACTED".to_string(),
            _ => p.to_string(),
        })
        .collect();
    format!("{path}?{}", query.join("&"))
}

/// The value of the `key` query parameter, if any.
pub fn query_key(query: Option<&str>) -> Option<String> {
    query?.split('&').find_map(|p| match p.split_once('=') {
        Some(("key", v)) if !v.is_empty() => Some(v.to_string()),
        _ => None,
    })
}

/// Whether the query asks for SSE (`alt=sse`).
pub fn wants_sse(query: Option<&str>) -> bool {
    query.is_some_and(|q| q.split('&').any(|p| p == "alt=sse"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gemini_paths_name_model_and_method() {
        assert_eq!(
            call("/v1beta/models/gemma3:4b:generateContent"),
            Some(("gemma3:4b".into(), Method::Generate))
        );
        assert_eq!(
            call("/v1/models/gemma-3-4b-it:streamGenerateContent"),
            Some(("gemma-3-4b-it".into(), Method::StreamGenerate))
        );
        assert_eq!(
            call("/v1beta/models/gemma3%3A4b:batchEmbedContents"),
            Some(("gemma3:4b".into(), Method::BatchEmbed))
        );
        assert_eq!(call("/v1beta/models/gemma3:4b:nope"), None);
        assert_eq!(call("/v1beta/models/:generateContent"), None);
        assert_eq!(call("/v1beta/models/a/b:generateContent"), None);
        assert_eq!(call("/v1/models/gemma3:4b"), None);
        assert_eq!(models_path("/v1beta/models"), Some(None));
        assert_eq!(
            models_path("/v1beta/models/gemma3:4b"),
            Some(Some("gemma3:4b".into()))
        );
        assert_eq!(models_path("/v1beta/models/gemma3:4b:countTokens"), None);
        assert_eq!(models_path("/v1beta/models/gemma3:4b:nope"), None);
        assert_eq!(models_path("/v1/models"), None);
    }

    #[test]
    fn names_resolve_through_aliases() {
        let aliases = BTreeMap::from([("gemma-3-4b-it".to_string(), "gemma3:4b".to_string())]);
        assert_eq!(resolve(&aliases, "models/gemma-3-4b-it"), "gemma3:4b");
        assert_eq!(resolve(&aliases, "gemma-3-4b-it"), "gemma3:4b");
        assert_eq!(resolve(&aliases, "models/gemma3:1b"), "gemma3:1b");
    }

    #[test]
    fn the_query_key_is_found_and_redacted() {
        assert_eq!(query_key(Some("alt=sse&key=s3cret")), Some("s3cret".into()));
        assert_eq!(query_key(Some("alt=sse")), None);
        assert_eq!(
            redact_key("/v1beta/models/m:streamGenerateContent?alt=sse&key=s3cret"),
            "/v1beta/models/m:streamGenerateContent?alt=sse&key=REDACTED"
        );
        assert_eq!(
            error_json(429, "busy")["error"]["status"],
            "RESOURCE_EXHAUSTED"
        );
    }
}

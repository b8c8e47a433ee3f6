//! The typed view of an inference request: parsed once, from the body as
//! received, and shared by the stages that need it (filters, admission,
//! metrics, logs). The body itself is forwarded byte for byte.

use serde::Deserialize;

use crate::filter::RouteKind;

/// What the proxy knows about an inference request.
#[derive(Clone, Debug, PartialEq)]
pub struct InferenceView {
    pub route: RouteKind,
    pub model: String,
    /// Whether the answer streams. Ollama's routes stream unless told
    /// `"stream": false`; OpenAI's stream only when told `"stream": true`.
    pub stream: bool,
    /// Ollama's `options` (runner and sampling parameters), when given.
    pub options: Option<serde_json::Map<String, serde_json::Value>>,
    pub keep_alive: Option<serde_json::Value>,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ViewError {
    #[error("missing request body")]
    Empty,
    #[error("request body is not valid JSON: {0}")]
    NotJson(String),
    #[error("model is required")]
    MissingModel,
}

#[derive(Deserialize)]
struct Raw {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    options: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default)]
    keep_alive: Option<serde_json::Value>,
}

/// Parses the body of an inference request. Unknown fields are ignored (and
/// forwarded untouched); only the fields the proxy acts on are read.
pub fn parse(route: RouteKind, body: &[u8]) -> Result<InferenceView, ViewError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ViewError::Empty);
    }
    let raw: Raw = serde_json::from_slice(body).map_err(|e| ViewError::NotJson(e.to_string()))?;
    let model = raw
        .model
        .filter(|m| !m.trim().is_empty())
        .ok_or(ViewError::MissingModel)?;
    let streams_by_default = matches!(route, RouteKind::OllamaGenerate | RouteKind::OllamaChat);
    Ok(InferenceView {
        route,
        model,
        stream: raw.stream.unwrap_or(streams_by_default),
        options: raw.options,
        keep_alive: raw.keep_alive,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn views_parse_from_bodies() {
        let v = parse(
            RouteKind::OllamaGenerate,
            br#"{"model":"gemma3:4b","prompt":"hi"}"#,
        )
        .unwrap();
        assert_eq!(v.model, "gemma3:4b");
        assert!(v.stream, "Ollama streams by default");

        let v = parse(RouteKind::OpenaiChat, br#"{"model":"m","messages":[]}"#).unwrap();
        assert!(!v.stream, "OpenAI does not stream by default");
        for route in [RouteKind::OpenaiResponses, RouteKind::AnthropicMessages] {
            let v = parse(route, br#"{"model":"m","input":"hi","max_tokens":8}"#).unwrap();
            assert_eq!(v.model, "m");
            assert!(!v.stream, "{route:?} does not stream by default");
            assert!(
                parse(route, br#"{"model":"m","stream":true}"#)
                    .unwrap()
                    .stream
            );
        }

        let v = parse(
            RouteKind::OllamaChat,
            br#"{"model":"m","stream":false,"options":{"num_ctx":8192},"keep_alive":-1}"#,
        )
        .unwrap();
        assert!(!v.stream);
        assert_eq!(v.options.unwrap()["num_ctx"], 8192);
        assert_eq!(v.keep_alive, Some(serde_json::json!(-1)));
    }

    #[test]
    fn bad_bodies_are_named() {
        use ViewError::*;
        assert_eq!(parse(RouteKind::OllamaChat, b"").unwrap_err(), Empty);
        assert_eq!(
            parse(RouteKind::OllamaChat, b"{}").unwrap_err(),
            MissingModel
        );
        assert_eq!(
            parse(RouteKind::OllamaChat, br#"{"model":""}"#).unwrap_err(),
            MissingModel
        );
        assert!(matches!(
            parse(RouteKind::OllamaChat, b"{\"model\":"),
            Err(NotJson(_))
        ));
        assert!(matches!(
            parse(RouteKind::OllamaChat, b"[1,2]"),
            Err(NotJson(_))
        ));
        assert!(matches!(
            parse(RouteKind::OllamaChat, br#"{"model":7}"#),
            Err(NotJson(_))
        ));
        assert!(matches!(
            parse(RouteKind::OllamaChat, br#"{"model":"m","stream":"yes"}"#),
            Err(NotJson(_))
        ));
    }
}

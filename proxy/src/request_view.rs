//! The typed view of an inference request: parsed once, from the body as
//! received, and shared by the stages that need it (filters, admission,
//! metrics, logs). The body itself is forwarded byte for byte.

use serde::Deserialize;

use crate::route_kind::RouteKind;

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
    #[error("request body must be a JSON object")]
    NotObject,
    #[error("model is required")]
    MissingModel,
    /// A key Ollama would read other than the proxy does (see [`check_keys`]).
    #[error("{0}")]
    AmbiguousKey(String),
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
    let tree: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| ViewError::NotJson(e.to_string()))?;
    // serde would read a struct from an array too (fields by position):
    // `["gemma3:4b"]` is no request Ollama serves, and must not name a model.
    if !tree.is_object() {
        return Err(ViewError::NotObject);
    }
    check_keys(&tree, true).map_err(ViewError::AmbiguousKey)?;
    let raw = Raw::deserialize(&tree).map_err(|e| ViewError::NotJson(e.to_string()))?;
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

/// Arrays whose items Ollama decodes into structs, under a struct: the
/// messages and their content blocks, tool calls, Responses input items,
/// Anthropic system blocks.
const STRUCT_ITEMS: [&str; 5] = ["messages", "content", "tool_calls", "input", "system"];

/// Go's encoding/json, which Ollama reads request bodies with, matches keys
/// to struct fields without regard to case (with Unicode folding), and the
/// last matching key wins. So `{"model": "a", "MODEL": "b"}` runs model `b`
/// while the proxy, its metrics and its plugins (which read keys exactly)
/// see `a`; a `CONTENT` next to `content` gets past a prompt policy the same
/// way. Where Ollama decodes into a struct (`strict`: the body, messages and
/// their content blocks, tool calls and their function, Responses input
/// items, Anthropic system blocks), keys must be lower-case ASCII, as every
/// field of these APIs is. Free-form maps (`options`, `format`, JSON schemas,
/// `metadata`) are left alone: Ollama does not fold their keys.
fn check_keys(v: &serde_json::Value, strict: bool) -> Result<(), String> {
    use serde_json::Value;
    match v {
        Value::Object(fields) => {
            for (key, value) in fields {
                if strict && key.chars().any(|c| c.is_ascii_uppercase() || !c.is_ascii()) {
                    return Err(format!(
                        "field name `{key}` is not lower-case: Ollama reads field names without \
                         regard to case, so it could act on a field the proxy's policies did not \
                         check; spell it `{}`",
                        key.to_lowercase()
                    ));
                }
                let child_strict = strict
                    && (STRUCT_ITEMS.contains(&key.as_str()) && value.is_array()
                        || key == "function");
                check_keys(value, child_strict)?;
            }
            Ok(())
        }
        // Items of a struct array are structs; other arrays hold values.
        Value::Array(items) => items.iter().try_for_each(|item| check_keys(item, strict)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the `request_view` fuzz target (fuzz/seeds/request_view/array-body).
    #[test]
    fn bodies_that_are_not_objects_are_refused() {
        for body in [&br#"["gemma3:4b"]"#[..], br#"["]["]"#, b"\"m\"", b"7"] {
            assert_eq!(
                parse(RouteKind::OllamaChat, body),
                Err(ViewError::NotObject),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

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
        assert_eq!(
            parse(RouteKind::OllamaChat, b"[1,2]").unwrap_err(),
            NotObject
        );
        assert!(matches!(
            parse(RouteKind::OllamaChat, br#"{"model":7}"#),
            Err(NotJson(_))
        ));
        assert!(matches!(
            parse(RouteKind::OllamaChat, br#"{"model":"m","stream":"yes"}"#),
            Err(NotJson(_))
        ));
    }

    #[test]
    fn keys_ollama_would_read_differently_are_refused() {
        let refused = |body: &str| match parse(RouteKind::OllamaChat, body.as_bytes()) {
            Err(ViewError::AmbiguousKey(m)) => m,
            other => panic!("{body}: {other:?}"),
        };
        // The proxy would see gemma3, Ollama would run `other`.
        let m = refused(r#"{"model":"gemma3:4b","MODEL":"other"}"#);
        assert!(m.contains("`MODEL`") && m.contains("`model`"), "{m}");
        for body in [
            r#"{"Model":"m"}"#,
            r#"{"model":"m","mod\u0065L":"x"}"#,
            r#"{"model":"m","ſtream":true}"#,
            r#"{"model":"m","messages":[{"role":"user","content":"ok","CONTENT":"evil"}]}"#,
            r#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","TEXT":"evil"}]}]}"#,
            r#"{"model":"m","messages":[{"role":"assistant","tool_calls":[{"function":{"Name":"f"}}]}]}"#,
            r#"{"model":"m","input":[{"role":"user","Content":"evil"}]}"#,
            r#"{"model":"m","system":[{"type":"text","Text":"evil"}]}"#,
        ] {
            refused(body);
        }
        // Free-form maps keep their keys: options, schemas, tool parameters.
        for body in [
            r#"{"model":"m","options":{"Num_Ctx":1}}"#,
            r#"{"model":"m","format":{"type":"object","properties":{"Name":{"type":"string"}}}}"#,
            r#"{"model":"m","messages":[],"tools":[{"type":"function","function":{"name":"f","parameters":{"properties":{"City":{}}}}}]}"#,
            r#"{"model":"m","messages":[{"role":"user","content":"MODEL and CONTENT are fine in text"}]}"#,
            r#"{"model":"m","metadata":{"UserId":"7"}}"#,
        ] {
            assert!(
                parse(RouteKind::OllamaChat, body.as_bytes()).is_ok(),
                "{body}"
            );
        }
    }
}

//! Token usage for streamed OpenAI-compatible requests: Ollama reports it on
//! `/v1/chat/completions` and `/v1/completions` streams only when asked
//! (`stream_options.include_usage`, Ollama ≥ 0.5.2), as one extra chunk with
//! empty `choices`. Response plugins need the counts whatever the client
//! asked, so the proxy asks for them and hides that chunk from clients that
//! did not.

use bytes::Bytes;
use serde_json::Value;

use super::Shape;

/// What the response stage changes about a request to get its usage.
#[derive(Debug, PartialEq, Eq)]
pub struct UsagePlan {
    /// The body to forward instead, when it had to be changed.
    pub body: Option<Bytes>,
    /// Drop the usage chunk on the way back: the client did not ask for it.
    pub hide_usage_chunk: bool,
}

impl UsagePlan {
    const KEEP: UsagePlan = UsagePlan {
        body: None,
        hide_usage_chunk: false,
    };
}

/// Plans the change for a request of `shape` that `stream`s, with this body.
/// Ollama's own routes always report usage in their final chunk; bodies that
/// are not JSON objects are left for Ollama to refuse.
pub fn plan(shape: Shape, stream: bool, body: &[u8]) -> UsagePlan {
    if !stream || !matches!(shape, Shape::OpenaiChat | Shape::OpenaiCompletions) {
        return UsagePlan::KEEP;
    }
    let Ok(Value::Object(mut obj)) = serde_json::from_slice::<Value>(body) else {
        return UsagePlan::KEEP;
    };
    let asked = obj
        .get("stream_options")
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    if asked {
        return UsagePlan::KEEP;
    }
    match obj.get_mut("stream_options") {
        Some(Value::Object(options)) => {
            options.insert("include_usage".into(), Value::Bool(true));
        }
        _ => {
            obj.insert(
                "stream_options".into(),
                serde_json::json!({"include_usage": true}),
            );
        }
    }
    match serde_json::to_vec(&obj) {
        Ok(b) => UsagePlan {
            body: Some(Bytes::from(b)),
            hide_usage_chunk: true,
        },
        Err(_) => UsagePlan::KEEP,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body_of(p: &UsagePlan) -> Value {
        serde_json::from_slice(p.body.as_ref().expect("a new body")).unwrap()
    }

    #[test]
    fn streamed_openai_requests_ask_for_usage_and_hide_it() {
        let p = plan(
            Shape::OpenaiChat,
            true,
            br#"{"model":"m","stream":true,"messages":[]}"#,
        );
        assert!(p.hide_usage_chunk);
        let b = body_of(&p);
        assert_eq!(b["stream_options"]["include_usage"], true);
        assert_eq!(b["model"], "m");

        // Other stream options survive; an explicit false is overridden.
        let p = plan(
            Shape::OpenaiCompletions,
            true,
            br#"{"model":"m","stream_options":{"include_usage":false,"x":1}}"#,
        );
        assert!(p.hide_usage_chunk);
        assert_eq!(body_of(&p)["stream_options"]["x"], 1);
        assert_eq!(body_of(&p)["stream_options"]["include_usage"], true);
    }

    #[test]
    fn clients_that_asked_and_other_requests_are_left_alone() {
        let asked = br#"{"model":"m","stream":true,"stream_options":{"include_usage":true}}"#;
        assert_eq!(plan(Shape::OpenaiChat, true, asked), UsagePlan::KEEP);
        assert_eq!(
            plan(Shape::OpenaiChat, false, br#"{"model":"m"}"#),
            UsagePlan::KEEP
        );
        assert_eq!(
            plan(Shape::OllamaChat, true, br#"{"model":"m"}"#),
            UsagePlan::KEEP
        );
        assert_eq!(
            plan(Shape::Other, true, br#"{"model":"m"}"#),
            UsagePlan::KEEP
        );
        assert_eq!(plan(Shape::OpenaiChat, true, b"[1]"), UsagePlan::KEEP);
        // The Responses and Messages APIs report usage unasked (in
        // `response.completed`, `message_start` + `message_delta`) and
        // reject fields they do not know: nothing is added.
        for shape in [Shape::OpenaiResponses, Shape::AnthropicMessages] {
            assert_eq!(
                plan(shape, true, br#"{"model":"m","stream":true}"#),
                UsagePlan::KEEP
            );
        }
    }
}

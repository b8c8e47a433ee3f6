//! Where the text the model reads sits inside a request body.
//!
//! Ollama renders far more of a request into the prompt than its `content`
//! fields: a message's `thinking` (`reasoning` on OpenAI chat), its tool
//! calls (name and arguments), the tool definitions (`tools`, rendered as
//! JSON), `/v1/responses` items of every type (`output` of a tool result,
//! `arguments`, a reasoning item's `encrypted_content`), Anthropic `thinking`
//! and `tool_use` blocks. A policy that saw only `content` could be walked
//! around through any of them, so messages, parts, blocks and items are
//! walked by exclusion: every string is text except under the keys in
//! [`NOT_TEXT`], which hold structure, references or media.

use super::Object;
use serde_json::Value;

/// Keys whose values Ollama does not render as text: structure (`type`,
/// `role`), references to other items (`id`, `call_id`, …), signatures, and
/// media (images, audio, files), which a text policy cannot read and whose
/// base64 would only produce false matches.
const NOT_TEXT: &[&str] = &[
    "type",
    "role",
    "id",
    "call_id",
    "tool_call_id",
    "tool_use_id",
    "signature",
    "index",
    "status",
    "images",
    "image_url",
    "source",
    "input_audio",
    "file_data",
    "file_id",
    "file_url",
    "detail",
    "cache_control",
];

/// Keys of free-form JSON inside a message: tool-call `arguments` (an object
/// on Ollama's API, a JSON string on OpenAI's) and Anthropic `tool_use`
/// `input`. Their keys reach the model as well as their values.
const FREE_FORM: &[&str] = &["arguments", "input"];

/// Visits the text of a message, content part, content block or input item
/// (or a list of them, or a plain string): every string at any depth except
/// under [`NOT_TEXT`] keys, and the keys of free-form JSON.
pub(crate) fn visit_message(value: &mut Value, f: &mut impl FnMut(&mut String)) {
    match value {
        Value::String(s) => f(s),
        Value::Array(items) => items.iter_mut().for_each(|v| visit_message(v, f)),
        Value::Object(fields) => visit_fields(fields, f),
        _ => {}
    }
}

/// [`visit_message`] on the fields of one object (e.g. the fields of a
/// message that a typed view keeps in `extra`).
pub(crate) fn visit_fields(fields: &mut Object, f: &mut impl FnMut(&mut String)) {
    for (key, v) in fields.iter_mut() {
        if NOT_TEXT.contains(&key.as_str()) {
            continue;
        }
        if FREE_FORM.contains(&key.as_str()) {
            visit_json(v, f);
        } else {
            visit_message(v, f);
        }
    }
}

/// Visits every string and every object key of free-form JSON (tool
/// definitions, tool-call arguments): Ollama renders it into the prompt as
/// JSON, so a key is as much text as a value.
pub(crate) fn visit_json(value: &mut Value, f: &mut impl FnMut(&mut String)) {
    match value {
        Value::String(s) => f(s),
        Value::Array(items) => items.iter_mut().for_each(|v| visit_json(v, f)),
        Value::Object(fields) => {
            for (mut key, mut v) in std::mem::take(fields) {
                f(&mut key);
                visit_json(&mut v, f);
                fields.insert(key, v);
            }
        }
        _ => {}
    }
}

/// Keys of Gemini bodies whose values the model does not read as text:
/// structure, media (`inlineData`'s base64, file URIs), ids and signatures,
/// and settings (`generationConfig`, safety settings, tool config…). The
/// function-call arguments and responses (`args`, `response`) and the
/// function declarations are free-form JSON: keys and values are text.
const GEMINI_NOT_TEXT: &[&str] = &[
    "role",
    "inlineData",
    "inline_data",
    "fileData",
    "file_data",
    "thought",
    "thoughtSignature",
    "thought_signature",
    "id",
    "videoMetadata",
    "generationConfig",
    "safetySettings",
    "toolConfig",
    "labels",
    "model",
    "taskType",
    "outputDimensionality",
    "cachedContent",
];

const GEMINI_FREE_FORM: &[&str] = &["args", "response", "functionDeclarations"];

/// Visits the text of a Gemini value (a content, its parts, a whole
/// countTokens or embedding body): every string at any depth except under
/// [`GEMINI_NOT_TEXT`] keys, and the keys of free-form JSON.
pub(crate) fn visit_gemini(value: &mut Value, f: &mut impl FnMut(&mut String)) {
    match value {
        Value::String(s) => f(s),
        Value::Array(items) => items.iter_mut().for_each(|v| visit_gemini(v, f)),
        Value::Object(fields) => {
            for (key, v) in fields.iter_mut() {
                if GEMINI_NOT_TEXT.contains(&key.as_str()) {
                    continue;
                }
                if GEMINI_FREE_FORM.contains(&key.as_str()) {
                    visit_json(v, f);
                } else {
                    visit_gemini(v, f);
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn message_texts(mut v: Value) -> Vec<String> {
        let mut out = Vec::new();
        visit_message(&mut v, &mut |s| out.push(s.clone()));
        out.sort();
        out
    }

    fn json_texts(mut v: Value) -> Vec<String> {
        let mut out = Vec::new();
        visit_json(&mut v, &mut |s| out.push(s.clone()));
        out.sort();
        out
    }

    #[test]
    fn structure_references_and_media_are_not_text() {
        let m = json!({"role":"user","content":[{"type":"image_url","image_url":{"url":"data:x"}},{"type":"text","text":"a"}],
            "images":["aGk="],"tool_call_id":"c1","thinking":"b"});
        assert_eq!(message_texts(m), ["a", "b"]);
    }

    #[test]
    fn free_form_keys_are_text() {
        let m = json!({"tool_calls":[{"id":"1","function":{"name":"f","arguments":{"path":"x"}}}]});
        assert_eq!(message_texts(m), ["f", "path", "x"]);
        let tools = json_texts(json!([{"type":"function","function":{"description":"d"}}]));
        assert_eq!(tools, ["d", "description", "function", "function", "type"]);
    }

    #[test]
    fn gemini_parts_are_text_but_images_and_settings_are_not() {
        let mut v = json!({"contents":[{"role":"user","parts":[{"text":"a"},
            {"inlineData":{"mimeType":"image/png","data":"iVBOR"}},
            {"functionResponse":{"name":"f","response":{"k":"v"}}}]}],
            "generationConfig":{"stopSequences":["x"]}});
        let mut out = Vec::new();
        visit_gemini(&mut v, &mut |s| out.push(s.clone()));
        out.sort();
        assert_eq!(out, ["a", "f", "k", "v"]);
    }

    #[test]
    fn keys_can_be_rewritten() {
        let mut v = json!({"secret":1,"other":{"secret":"secret"}});
        visit_json(&mut v, &mut |s| {
            if s == "secret" {
                *s = "x".into()
            }
        });
        assert_eq!(v, json!({"x":1,"other":{"x":"x"}}));
    }
}

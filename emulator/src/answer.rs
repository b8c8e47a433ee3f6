//! What a generation answers with, decided from the request the way a model
//! behind Ollama would, deterministically so tests can check it:
//!
//! - **Words** (the default): the canned sentence of [`format::token`].
//! - **Structured output**: with `format` (`"json"` or a JSON schema) on the
//!   native routes, or `response_format` on /v1/chat/completions (openai.go
//!   `FromChatRequest` turns `json_object` into `"json"` and `json_schema`
//!   into its schema), the answer is a JSON document that fits the schema,
//!   streamed in small pieces, as a grammar-constrained model writes it.
//! - **A tool call**: with `tools` on /api/chat or /v1/chat/completions and
//!   the conversation ending in a user turn, the model calls the first tool.
//!   Its arguments fill the tool's parameter schema from the last user
//!   message (strings get its text, so a test can see what it said come
//!   back as arguments). After a `tool` message it answers in words.
//!
//! Ollama's tool parser buffers the model's tokens until the call is
//! complete and sends it in one chunk (routes.go `toolParser.Add`), with an
//! id `call_` + 8 random lower-case letters and digits (`toolCallId`); here
//! the id is derived from the request counter so it is repeatable.

use serde_json::{Map, Value, json};

use crate::format;

#[derive(Clone, Debug)]
pub enum Answer {
    Words,
    /// The answer's text pieces, one per token.
    Pieces(Vec<String>),
    /// Ollama's `tool_calls` (api.ToolCall: `id`, `function.index/name/arguments`).
    ToolCalls(Vec<Value>),
}

impl Answer {
    /// The answer a chat-shaped request gets (`native`: Ollama's own field
    /// names, else OpenAI chat's). `next` numbers the request.
    pub fn of_request(req: &Value, native: bool, next: u64) -> Answer {
        if let Some(call) = tool_call(req, next) {
            return Answer::ToolCalls(vec![call]);
        }
        let format = if native {
            req.get("format").cloned()
        } else {
            openai_format(req)
        };
        match format {
            None | Some(Value::Null) => Answer::Words,
            Some(Value::String(s)) if s.is_empty() => Answer::Words,
            Some(Value::String(_)) => Answer::Pieces(pieces(
                &json!({"answer": format::text(9).trim_end()}).to_string(),
            )),
            Some(schema) => {
                Answer::Pieces(pieces(&fill(&schema, &last_user_text(req)).to_string()))
            }
        }
    }

    /// Tokens the answer takes when nothing limits it; `None` for words,
    /// which go on for the emulator's configured length.
    pub fn len(&self) -> Option<usize> {
        match self {
            Answer::Words => None,
            Answer::Pieces(p) => Some(p.len()),
            // The call's tokens are buffered by the parser and go out as one
            // chunk: one step here.
            Answer::ToolCalls(_) => Some(1),
        }
    }

    /// Text of answer token `k` (after any thinking).
    pub fn token(&self, k: usize) -> &str {
        match self {
            Answer::Words => format::token(k),
            Answer::Pieces(p) => p.get(k).map_or("", String::as_str),
            Answer::ToolCalls(_) => "",
        }
    }

    /// The first `n` answer tokens as one text.
    pub fn text(&self, n: usize) -> String {
        (0..n).map(|k| self.token(k)).collect()
    }

    /// The tool calls, once the answer's first token is out.
    pub fn tool_calls(&self) -> Option<&[Value]> {
        match self {
            Answer::ToolCalls(c) => Some(c),
            _ => None,
        }
    }
}

/// A `/v1/responses` (`messages_api: false`) or `/v1/messages` request as
/// the chat request Ollama's middleware makes of it (`FromResponsesRequest`,
/// `FromMessagesRequest`), as far as the answer depends on it: its tools as
/// `function`s and its turns' roles and texts (a function's output and a
/// `tool_result` are `tool` turns).
pub fn as_chat(req: &Value, messages_api: bool) -> Value {
    let tools: Vec<Value> = req
        .get("tools")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|t| {
            let schema = if messages_api { "input_schema" } else { "parameters" };
            json!({"type": "function", "function": {"name": t.get("name"), "parameters": t.get(schema)}})
        })
        .collect();
    let turns: Vec<Value> = if messages_api {
        let list = req.get("messages").and_then(Value::as_array);
        list.into_iter()
            .flatten()
            .map(|m| {
                let content = m.get("content");
                let answered = content.and_then(Value::as_array).is_some_and(|blocks| {
                    blocks
                        .iter()
                        .any(|b| b.get("type").and_then(Value::as_str) == Some("tool_result"))
                });
                let role = if answered {
                    "tool"
                } else {
                    m.get("role").and_then(Value::as_str).unwrap_or("user")
                };
                json!({"role": role, "content": content_text(content)})
            })
            .collect()
    } else {
        match req.get("input") {
            Some(Value::String(s)) => vec![json!({"role": "user", "content": s})],
            Some(Value::Array(items)) => items
                .iter()
                .map(|item| match item.get("type").and_then(Value::as_str) {
                    Some("function_call_output") => json!({"role": "tool", "content": item.get("output")}),
                    Some("function_call") => json!({"role": "assistant", "content": ""}),
                    _ => json!({"role": item.get("role").and_then(Value::as_str).unwrap_or("user"), "content": content_text(item.get("content"))}),
                })
                .collect(),
            _ => Vec::new(),
        }
    };
    json!({"tools": tools, "messages": turns})
}

/// `response_format` of /v1/chat/completions as the `format` Ollama runs with.
fn openai_format(req: &Value) -> Option<Value> {
    let rf = req.get("response_format")?;
    match rf.get("type").and_then(Value::as_str) {
        Some("json_object") => Some(json!("json")),
        Some("json_schema") => rf.pointer("/json_schema/schema").cloned(),
        _ => None,
    }
}

/// The call the model makes, if the request offers tools and the last turn
/// is the user's.
fn tool_call(req: &Value, next: u64) -> Option<Value> {
    let tool = req.get("tools")?.as_array()?.first()?;
    let last_role = req
        .get("messages")?
        .as_array()?
        .last()?
        .get("role")?
        .as_str()?;
    if last_role != "user" {
        return None;
    }
    let function = tool.get("function")?;
    let name = function.get("name")?.as_str()?;
    let schema = function.get("parameters").cloned().unwrap_or(json!({}));
    let arguments = fill(&schema, &last_user_text(req));
    Some(json!({
        "id": format!("call_{:08x}", 0x1a2b_3c4d_u64.wrapping_add(next)),
        "function": {"index": 0, "name": name, "arguments": arguments},
    }))
}

/// The text of the last user message (string content, or the text parts
/// of OpenAI's content array).
fn last_user_text(req: &Value) -> String {
    let Some(messages) = req.get("messages").and_then(Value::as_array) else {
        return String::new();
    };
    let Some(m) = messages
        .iter()
        .rev()
        .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
    else {
        return String::new();
    };
    content_text(m.get("content"))
}

/// A turn's text: string content, or the text parts (blocks) of a content
/// array joined.
fn content_text(content: Option<&Value>) -> String {
    match content {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

/// A value that fits `schema`: objects get every property (required ones
/// first, then the rest, in schema order), strings `text`, numbers 42,
/// booleans true, enums their first value, arrays one item.
fn fill(schema: &Value, text: &str) -> Value {
    if let Some(first) = schema
        .get("enum")
        .and_then(Value::as_array)
        .and_then(|e| e.first())
    {
        return first.clone();
    }
    let kind = match schema.get("type") {
        Some(Value::String(t)) => t.as_str(),
        // A union such as ["string", "null"]: its first type.
        Some(Value::Array(ts)) => ts.first().and_then(Value::as_str).unwrap_or("object"),
        _ if schema.get("properties").is_some() => "object",
        _ => "string",
    };
    match kind {
        "object" => {
            let mut out = Map::new();
            if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                let required: Vec<&str> = schema
                    .get("required")
                    .and_then(Value::as_array)
                    .map(|r| r.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                let order = required.iter().copied().chain(
                    props
                        .keys()
                        .map(String::as_str)
                        .filter(|k| !required.contains(k)),
                );
                for key in order {
                    if let Some(p) = props.get(key) {
                        out.insert(key.to_owned(), fill(p, text));
                    }
                }
            }
            Value::Object(out)
        }
        "array" => json!([fill(schema.get("items").unwrap_or(&json!({})), text)]),
        "integer" | "number" => json!(42),
        "boolean" => json!(true),
        "null" => Value::Null,
        _ => json!(text),
    }
}

/// Splits a text into token-sized pieces (at most 6 bytes, on char
/// boundaries), so a JSON answer streams over several chunks.
fn pieces(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for c in text.chars() {
        if cur.len() + c.len_utf8() > 6 {
            out.push(std::mem::take(&mut cur));
        }
        cur.push(c);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(extra: Value) -> Value {
        let mut req = json!({"model": "qwen3:0.6b", "messages": [{"role": "user", "content": "Paris please"}]});
        req.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        req
    }

    #[test]
    fn plain_requests_answer_in_words() {
        let a = Answer::of_request(&chat(json!({})), true, 0);
        assert!(matches!(a, Answer::Words));
        assert_eq!(a.text(4), "The sky is blue ");
    }

    #[test]
    fn a_schema_gets_a_json_answer_that_fits_it() {
        let schema = json!({"type": "object", "properties": {
            "city": {"type": "string"}, "rank": {"type": "integer"},
            "tags": {"type": "array", "items": {"type": "string"}},
            "unit": {"enum": ["C", "F"]}}, "required": ["rank"]});
        let a = Answer::of_request(&chat(json!({"format": schema})), true, 0);
        let text = a.text(a.len().unwrap());
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            v,
            json!({"rank": 42, "city": "Paris please", "tags": ["Paris please"], "unit": "C"})
        );
        assert!(a.len().unwrap() > 5, "streamed in pieces");
        let json_mode = Answer::of_request(&chat(json!({"format": "json"})), true, 0);
        let v: Value = serde_json::from_str(&json_mode.text(json_mode.len().unwrap())).unwrap();
        assert!(v["answer"].as_str().unwrap().starts_with("The sky"));
    }

    #[test]
    fn openai_response_format_is_read_as_format() {
        let rf = json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x",
            "schema": {"type": "object", "properties": {"ok": {"type": "boolean"}}}}}});
        let a = Answer::of_request(&chat(rf.clone()), false, 0);
        assert_eq!(a.text(a.len().unwrap()), r#"{"ok":true}"#);
        // The native routes have no response_format.
        assert!(matches!(
            Answer::of_request(&chat(rf), true, 0),
            Answer::Words
        ));
    }

    #[test]
    fn tools_make_the_model_call_the_first_one_until_a_tool_answered() {
        let tools = json!({"tools": [{"type": "function", "function": {"name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]});
        let a = Answer::of_request(&chat(tools.clone()), true, 7);
        let calls = a.tool_calls().unwrap();
        assert_eq!(calls[0]["function"]["name"], "get_weather");
        assert_eq!(
            calls[0]["function"]["arguments"],
            json!({"city": "Paris please"})
        );
        assert!(calls[0]["id"].as_str().unwrap().starts_with("call_"));
        let mut answered = chat(tools);
        answered["messages"]
            .as_array_mut()
            .unwrap()
            .push(json!({"role": "tool", "content": "18 C"}));
        assert!(matches!(
            Answer::of_request(&answered, true, 7),
            Answer::Words
        ));
    }
}

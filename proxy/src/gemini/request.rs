//! A Gemini request translated to Ollama's native API, after the request
//! plugins: `generateContent` and `streamGenerateContent` to `/api/chat`,
//! `countTokens` to a one-token `/api/chat` (see [`count_tokens`]),
//! `embedContent` and `batchEmbedContents` to `/api/embed`.
//!
//! What Ollama cannot honour is refused with a message naming the field
//! (400 INVALID_ARGUMENT), never dropped in silence; `safetySettings` and
//! `labels` are accepted and ignored (Ollama has no safety filters).

use serde_json::{Map, Value, json};

use super::Method;

/// The request to send Ollama instead of the client's.
#[derive(Debug, PartialEq)]
pub struct Upstream {
    pub path: &'static str,
    pub body: Vec<u8>,
    /// Thought parts go back to the client (`thinkingConfig.includeThoughts`).
    pub include_thoughts: bool,
}

type Result<T> = std::result::Result<T, String>;

/// A field by its proto JSON name, or by its proto name: Google's API
/// reads both (`mimeType`, `mime_type`), and google-genai sends nested
/// objects (an image's `inlineData`, `thinkingConfig`) in snake_case.
fn get<'a>(v: &'a Value, camel: &str) -> Option<&'a Value> {
    v.get(camel).or_else(|| v.get(snake(camel).as_str()))
}

fn snake(camel: &str) -> String {
    let mut out = String::with_capacity(camel.len() + 4);
    for c in camel.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

fn camel(snake: &str) -> String {
    let mut out = String::with_capacity(snake.len());
    let mut up = false;
    for c in snake.chars() {
        match c {
            '_' if !out.is_empty() => up = true,
            c if up => {
                out.push(c.to_ascii_uppercase());
                up = false;
            }
            c => out.push(c),
        }
    }
    out
}

/// Standard, padded base64, which Ollama reads images as (Go's
/// `[]byte`); clients may send the URL-safe alphabet (pydantic does),
/// which Google accepts too.
fn std_base64(data: &str) -> String {
    let mut out: String = data
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .map(|c| match c {
            '-' => '+',
            '_' => '/',
            c => c,
        })
        .collect();
    while out.len() % 4 != 0 {
        out.push('=');
    }
    out
}

/// Translates the client's body (a JSON object) for `method` on `model`.
pub fn translate(method: Method, model: &str, body: &[u8]) -> Result<Upstream> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| format!("Invalid JSON payload received: {e}"))?;
    let req = v
        .as_object()
        .ok_or("Invalid JSON payload received: the body must be a JSON object")?;
    let (path, body, include_thoughts) = match method {
        Method::Generate | Method::StreamGenerate => {
            let (chat, thoughts) = chat(model, req, method == Method::StreamGenerate)?;
            ("/api/chat", chat, thoughts)
        }
        Method::CountTokens => ("/api/chat", count_tokens(model, req)?, false),
        Method::Embed => ("/api/embed", embed(model, req)?, false),
        Method::BatchEmbed => ("/api/embed", batch_embed(model, req)?, false),
    };
    Ok(Upstream {
        path,
        body: serde_json::to_vec(&body).map_err(|e| e.to_string())?,
        include_thoughts,
    })
}

/// Top-level fields of a `GenerateContentRequest` this service reads or
/// knowingly ignores; any other is refused, as Google's API refuses an
/// unknown name.
const GENERATE_FIELDS: &[&str] = &[
    "contents",
    "systemInstruction",
    "generationConfig",
    "tools",
    "toolConfig",
    "safetySettings",
    "labels",
    "model",
    "cachedContent",
];

/// `/api/chat`'s body for a `GenerateContentRequest`, and whether thought
/// parts are wanted back.
fn chat(model: &str, req: &Map<String, Value>, stream: bool) -> Result<(Value, bool)> {
    for key in req.keys() {
        if !GENERATE_FIELDS.contains(&key.as_str()) {
            return Err(format!(
                "Invalid JSON payload received. Unknown name \"{key}\""
            ));
        }
    }
    if req.contains_key("cachedContent") {
        return Err(
            "cachedContent is not supported: this service keeps no context caches; send the contents"
                .into(),
        );
    }
    let mut messages = Vec::new();
    if let Some(si) = req.get("systemInstruction") {
        let text = texts_only(si, "systemInstruction")?;
        messages.push(json!({"role": "system", "content": text}));
    }
    let contents = match req.get("contents") {
        Some(Value::Array(c)) if !c.is_empty() => c,
        _ => return Err("contents is required and must be a non-empty list".into()),
    };
    for (i, content) in contents.iter().enumerate() {
        messages.extend(turn(content, i)?);
    }
    let mut body = json!({"model": model, "messages": messages, "stream": stream});
    let out = body.as_object_mut().ok_or("unreachable")?;
    let mut thoughts = false;
    if let Some(config) = req.get("generationConfig") {
        thoughts = generation_config(config, out)?;
    }
    if let Some(tools) = req.get("tools") {
        let tools = function_tools(tools)?;
        let mode = req
            .get("toolConfig")
            .and_then(|c| c.pointer("/functionCallingConfig/mode"))
            .and_then(Value::as_str)
            .unwrap_or("AUTO");
        match mode {
            "AUTO" | "MODE_UNSPECIFIED" => {
                if !tools.is_empty() {
                    out.insert("tools".into(), Value::Array(tools));
                }
            }
            "NONE" => {}
            other => {
                return Err(format!(
                    "toolConfig.functionCallingConfig.mode {other} is not supported: Ollama cannot force a \
                     function call; use AUTO or NONE"
                ));
            }
        }
    }
    Ok((body, thoughts))
}

/// One `Content` as Ollama messages: its text, images, thoughts and
/// function calls in one message; each `functionResponse` part a `tool`
/// message (Ollama's way to return a tool's result).
fn turn(content: &Value, i: usize) -> Result<Vec<Value>> {
    let role = match content.get("role").and_then(Value::as_str) {
        None | Some("user") | Some("function") | Some("tool") => "user",
        Some("model") => "assistant",
        Some(other) => {
            return Err(format!(
                "contents[{i}].role {other:?} is not valid; use \"user\" or \"model\""
            ));
        }
    };
    let parts = parts_of(content, &format!("contents[{i}]"))?;
    let (mut text, mut thinking) = (String::new(), String::new());
    let (mut images, mut calls, mut results) = (Vec::new(), Vec::new(), Vec::new());
    for (j, part) in parts.iter().enumerate() {
        let at = format!("contents[{i}].parts[{j}]");
        if let Some(t) = part.get("text") {
            let t = t.as_str().ok_or(format!("{at}.text must be a string"))?;
            if part.get("thought").and_then(Value::as_bool) == Some(true) {
                thinking.push_str(t);
            } else {
                text.push_str(t);
            }
        } else if let Some(data) = get(part, "inlineData") {
            let mime = get(data, "mimeType").and_then(Value::as_str).unwrap_or("");
            if !mime.starts_with("image/") {
                return Err(format!(
                    "{at}.inlineData.mimeType {mime:?} is not supported: the model reads images only"
                ));
            }
            let bytes = data
                .get("data")
                .and_then(Value::as_str)
                .ok_or(format!("{at}.inlineData.data must be base64 text"))?;
            images.push(Value::String(std_base64(bytes)));
        } else if let Some(call) = get(part, "functionCall") {
            let name = call
                .get("name")
                .and_then(Value::as_str)
                .ok_or(format!("{at}.functionCall.name is required"))?;
            let args = call.get("args").cloned().unwrap_or_else(|| json!({}));
            let mut c = json!({"function": {"name": name, "arguments": args}});
            if let Some(id) = call.get("id") {
                c["id"] = id.clone();
            }
            calls.push(c);
        } else if let Some(result) = get(part, "functionResponse") {
            let name = result.get("name").and_then(Value::as_str).unwrap_or("");
            let response = result.get("response").cloned().unwrap_or(Value::Null);
            results
                .push(json!({"role": "tool", "tool_name": name, "content": response.to_string()}));
        } else if get(part, "fileData").is_some() {
            return Err(format!(
                "{at}.fileData is not supported: this service cannot fetch file URIs; send the bytes as inlineData"
            ));
        } else {
            let keys: Vec<&str> = part
                .as_object()
                .map(|o| o.keys().map(String::as_str).collect())
                .unwrap_or_default();
            return Err(format!(
                "{at} ({}) is not supported: parts may be text, inlineData (images), functionCall or functionResponse",
                keys.join(", ")
            ));
        }
    }
    let mut out = results;
    if !text.is_empty() || !images.is_empty() || !calls.is_empty() || !thinking.is_empty() {
        let mut m = json!({"role": role, "content": text});
        if !images.is_empty() {
            m["images"] = Value::Array(images);
        }
        if !calls.is_empty() {
            m["tool_calls"] = Value::Array(calls);
        }
        if !thinking.is_empty() && role == "assistant" {
            m["thinking"] = Value::String(thinking);
        }
        out.push(m);
    }
    Ok(out)
}

fn parts_of<'a>(content: &'a Value, at: &str) -> Result<&'a Vec<Value>> {
    content
        .get("parts")
        .and_then(Value::as_array)
        .ok_or(format!("{at}.parts is required and must be a list"))
}

/// The text of a content that may hold text parts only (the system
/// instruction, an embedding's input).
fn texts_only(content: &Value, at: &str) -> Result<String> {
    let mut text = String::new();
    for (j, part) in parts_of(content, at)?.iter().enumerate() {
        match part.get("text").and_then(Value::as_str) {
            Some(t) => text.push_str(t),
            None => return Err(format!("{at}.parts[{j}] must be a text part")),
        }
    }
    Ok(text)
}

/// `generationConfig` into Ollama's `options`, `format` and `think`;
/// returns whether thoughts are wanted back.
fn generation_config(config: &Value, out: &mut Map<String, Value>) -> Result<bool> {
    let config = config
        .as_object()
        .ok_or("generationConfig must be an object")?;
    let mut options = Map::new();
    let mut thoughts = false;
    for (key, value) in config {
        let option = match key.as_str() {
            "temperature" => "temperature",
            "topP" => "top_p",
            "topK" => "top_k",
            "maxOutputTokens" => "num_predict",
            "stopSequences" => "stop",
            "seed" => "seed",
            "presencePenalty" => "presence_penalty",
            "frequencyPenalty" => "frequency_penalty",
            "candidateCount" => {
                if value.as_u64().unwrap_or(1) > 1 {
                    return Err(
                        "generationConfig.candidateCount above 1 is not supported: Ollama generates one candidate; \
                         send one request per candidate"
                            .into(),
                    );
                }
                continue;
            }
            "responseMimeType" => {
                match value.as_str() {
                    Some("application/json") => {
                        out.entry("format").or_insert_with(|| json!("json"));
                    }
                    Some("text/plain") | None => {}
                    Some(other) => {
                        return Err(format!(
                            "generationConfig.responseMimeType {other:?} is not supported; use text/plain or application/json"
                        ));
                    }
                }
                continue;
            }
            "responseSchema" => {
                out.insert("format".into(), json_schema(value));
                continue;
            }
            "responseJsonSchema" | "_responseJsonSchema" => {
                out.insert("format".into(), value.clone());
                continue;
            }
            "thinkingConfig" => {
                let budget = get(value, "thinkingBudget").and_then(Value::as_i64);
                let include = get(value, "includeThoughts").and_then(Value::as_bool);
                if budget == Some(0) {
                    out.insert("think".into(), json!(false));
                } else if include == Some(true) {
                    out.insert("think".into(), json!(true));
                    thoughts = true;
                }
                continue;
            }
            "responseModalities" => {
                let text_only = value
                    .as_array()
                    .is_some_and(|m| m.iter().all(|m| m.as_str() == Some("TEXT")));
                if !text_only {
                    return Err(
                        "generationConfig.responseModalities other than TEXT are not supported"
                            .into(),
                    );
                }
                continue;
            }
            // Accepted and without effect on a local model.
            "mediaResolution" | "enableEnhancedCivicAnswers" => continue,
            other => {
                return Err(format!(
                    "generationConfig.{other} is not supported by this service (Ollama has no equivalent)"
                ));
            }
        };
        options.insert(option.into(), value.clone());
    }
    if !options.is_empty() {
        out.insert("options".into(), Value::Object(options));
    }
    Ok(thoughts)
}

/// Gemini's `Schema` (an OpenAPI subset: `"type": "OBJECT"`, `nullable`,
/// `propertyOrdering`) as the JSON Schema Ollama's `format` takes.
fn json_schema(schema: &Value) -> Value {
    match schema {
        Value::Object(o) => {
            let mut out = Map::new();
            let nullable = o.get("nullable").and_then(Value::as_bool) == Some(true);
            for (k, v) in o {
                match k.as_str() {
                    "type" => {
                        let t = Value::String(v.as_str().unwrap_or("").to_ascii_lowercase());
                        out.insert("type".into(), if nullable { json!([t, "null"]) } else { t });
                    }
                    "nullable" | "propertyOrdering" | "property_ordering" => {}
                    "properties" => {
                        let props = v
                            .as_object()
                            .map(|p| p.iter().map(|(n, s)| (n.clone(), json_schema(s))).collect())
                            .unwrap_or_default();
                        out.insert(k.clone(), Value::Object(props));
                    }
                    "items" => {
                        out.insert(k.clone(), json_schema(v));
                    }
                    "anyOf" | "any_of" => {
                        let all = v.as_array().map(|a| a.iter().map(json_schema).collect());
                        out.insert("anyOf".into(), Value::Array(all.unwrap_or_default()));
                    }
                    // `max_items` (a pydantic dump) is JSON Schema's `maxItems`.
                    _ => {
                        out.insert(camel(k), v.clone());
                    }
                }
            }
            Value::Object(out)
        }
        other => other.clone(),
    }
}

/// `tools[].functionDeclarations` as Ollama's tools; other tools (Google
/// Search, code execution, URL context…) need Google's services.
fn function_tools(tools: &Value) -> Result<Vec<Value>> {
    let tools = tools.as_array().ok_or("tools must be a list")?;
    let mut out = Vec::new();
    for (i, tool) in tools.iter().enumerate() {
        let tool = tool
            .as_object()
            .ok_or(format!("tools[{i}] must be an object"))?;
        for (key, value) in tool {
            if key != "functionDeclarations" {
                return Err(format!(
                    "tools[{i}].{key} is not supported: only functionDeclarations run on this service"
                ));
            }
            for f in value.as_array().into_iter().flatten() {
                let name = f.get("name").and_then(Value::as_str).ok_or(format!(
                    "tools[{i}].functionDeclarations[].name is required"
                ))?;
                let parameters = match (get(f, "parametersJsonSchema"), f.get("parameters")) {
                    (Some(p), _) => p.clone(),
                    (None, Some(p)) => json_schema(p),
                    (None, None) => json!({"type": "object", "properties": {}}),
                };
                let mut function = json!({"name": name, "parameters": parameters});
                if let Some(d) = f.get("description") {
                    function["description"] = d.clone();
                }
                out.push(json!({"type": "function", "function": function}));
            }
        }
    }
    Ok(out)
}

/// `countTokens` as the cheapest true count Ollama offers: Ollama has no
/// tokenize route, but `/api/chat` reports `prompt_eval_count`, the prompt's
/// tokens after the chat template (llama-server's cached plus evaluated
/// tokens, so a cached prefix still counts). With `num_predict: 1` the cost
/// is one prompt evaluation (mostly cached on a repeated prefix) and one
/// decoded token. The count includes the template's tokens around each turn.
fn count_tokens(model: &str, req: &Map<String, Value>) -> Result<Value> {
    let inner = match req.get("generateContentRequest") {
        Some(Value::Object(g)) => {
            let mut g = g.clone();
            g.remove("model");
            g
        }
        Some(_) => return Err("generateContentRequest must be an object".into()),
        None => {
            let mut g = Map::new();
            for (k, v) in req {
                if k != "contents" {
                    return Err(format!(
                        "Invalid JSON payload received. Unknown name \"{k}\""
                    ));
                }
                g.insert(k.clone(), v.clone());
            }
            g
        }
    };
    let (mut body, _) = chat(model, &inner, false)?;
    match body.get_mut("options").and_then(Value::as_object_mut) {
        Some(options) => {
            options.insert("num_predict".into(), json!(1));
        }
        None => body["options"] = json!({"num_predict": 1}),
    }
    Ok(body)
}

/// `embedContent`: `{content, taskType?, title?, outputDimensionality?}`.
fn embed(model: &str, req: &Map<String, Value>) -> Result<Value> {
    let (input, dims) = embed_request(req, "")?;
    let mut body = json!({"model": model, "input": input});
    if let Some(d) = dims {
        body["dimensions"] = d;
    }
    Ok(body)
}

/// `batchEmbedContents`: `{requests: [{model, content, …}]}`, every request
/// for the path's model.
fn batch_embed(model: &str, req: &Map<String, Value>) -> Result<Value> {
    let requests = req
        .get("requests")
        .and_then(Value::as_array)
        .filter(|r| !r.is_empty())
        .ok_or("requests is required and must be a non-empty list")?;
    let mut inputs = Vec::new();
    let mut dims = None;
    for (i, r) in requests.iter().enumerate() {
        let r = r
            .as_object()
            .ok_or(format!("requests[{i}] must be an object"))?;
        let (input, d) = embed_request(r, &format!("requests[{i}]."))?;
        inputs.push(Value::String(input));
        dims = dims.or(d);
    }
    let mut body = json!({"model": model, "input": inputs});
    if let Some(d) = dims {
        body["dimensions"] = d;
    }
    Ok(body)
}

/// One embedding request's text and `outputDimensionality`. A batch
/// item's `model` is not read: the path's model (the one the plugins saw)
/// answers every item.
fn embed_request(r: &Map<String, Value>, at: &str) -> Result<(String, Option<Value>)> {
    for key in r.keys() {
        if ![
            "content",
            "taskType",
            "title",
            "outputDimensionality",
            "model",
        ]
        .contains(&key.as_str())
        {
            return Err(format!(
                "Invalid JSON payload received. Unknown name \"{at}{key}\""
            ));
        }
    }
    let content = r.get("content").ok_or(format!("{at}content is required"))?;
    let text = texts_only(content, &format!("{at}content"))?;
    Ok((text, r.get("outputDimensionality").cloned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat_of(body: Value) -> Value {
        let up = translate(
            Method::StreamGenerate,
            "gemma3:4b",
            body.to_string().as_bytes(),
        )
        .unwrap();
        assert_eq!(up.path, "/api/chat");
        serde_json::from_slice(&up.body).unwrap()
    }

    fn refused(method: Method, body: Value) -> String {
        translate(method, "m", body.to_string().as_bytes()).unwrap_err()
    }

    #[test]
    fn a_conversation_becomes_ollama_messages() {
        let out = chat_of(json!({
            "systemInstruction": {"parts": [{"text": "Be brief."}]},
            "contents": [
                {"role": "user", "parts": [{"text": "What is "}, {"text": "this?"},
                    {"inlineData": {"mimeType": "image/png", "data": "iVBORw0K"}}]},
                {"role": "model", "parts": [{"functionCall": {"name": "look", "args": {"x": 1}}}]},
                {"role": "user", "parts": [{"functionResponse": {"name": "look", "response": {"seen": "a cat"}}}]}
            ],
            "generationConfig": {"temperature": 0.2, "topP": 0.9, "topK": 40, "maxOutputTokens": 64,
                "stopSequences": ["END"], "seed": 7, "candidateCount": 1},
            "safetySettings": [{"category": "HARM_CATEGORY_HATE_SPEECH", "threshold": "BLOCK_NONE"}],
        }));
        assert_eq!(out["model"], "gemma3:4b");
        assert_eq!(out["stream"], true);
        let m = &out["messages"];
        assert_eq!(m[0], json!({"role": "system", "content": "Be brief."}));
        assert_eq!(m[1]["content"], "What is this?");
        assert_eq!(m[1]["images"], json!(["iVBORw0K"]));
        assert_eq!(m[2]["role"], "assistant");
        assert_eq!(
            m[2]["tool_calls"][0]["function"],
            json!({"name": "look", "arguments": {"x": 1}})
        );
        assert_eq!(
            m[3],
            json!({"role": "tool", "tool_name": "look", "content": "{\"seen\":\"a cat\"}"})
        );
        assert_eq!(
            out["options"],
            json!({"temperature": 0.2, "top_p": 0.9, "top_k": 40, "num_predict": 64, "stop": ["END"], "seed": 7})
        );
    }

    #[test]
    fn schemas_and_tools_become_json_schema() {
        let out = chat_of(json!({
            "contents": [{"parts": [{"text": "hi"}]}],
            "generationConfig": {"responseMimeType": "application/json", "responseSchema":
                {"type": "OBJECT", "properties": {"name": {"type": "STRING", "nullable": true}},
                 "propertyOrdering": ["name"], "required": ["name"]}},
            "tools": [{"functionDeclarations": [{"name": "get_weather", "description": "d",
                "parameters": {"type": "OBJECT", "properties": {"city": {"type": "STRING"}}}}]}],
        }));
        assert_eq!(
            out["format"],
            json!({"type": "object", "properties": {"name": {"type": ["string", "null"]}}, "required": ["name"]})
        );
        assert_eq!(
            out["tools"][0]["function"]["parameters"]["properties"]["city"]["type"],
            "string"
        );
        let json_mode = chat_of(json!({"contents": [{"parts": [{"text": "hi"}]}],
            "generationConfig": {"responseMimeType": "application/json"}}));
        assert_eq!(json_mode["format"], "json");
    }

    #[test]
    fn what_ollama_cannot_honour_is_refused() {
        let g = Method::Generate;
        let hi = json!([{"parts": [{"text": "hi"}]}]);
        for (body, names) in [
            (
                json!({"contents": hi, "generationConfig": {"candidateCount": 2}}),
                "candidateCount",
            ),
            (
                json!({"contents": hi, "cachedContent": "cachedContents/x"}),
                "cachedContent",
            ),
            (
                json!({"contents": hi, "tools": [{"googleSearch": {}}]}),
                "googleSearch",
            ),
            (
                json!({"contents": hi, "generationConfig": {"responseLogprobs": true}}),
                "responseLogprobs",
            ),
            (json!({"contents": hi, "bogus": 1}), "bogus"),
            (
                json!({"contents": [{"parts": [{"fileData": {"fileUri": "gs://x"}}]}]}),
                "fileData",
            ),
            (
                json!({"contents": [{"parts": [{"inlineData": {"mimeType": "audio/wav", "data": ""}}]}]}),
                "audio/wav",
            ),
            (json!({"contents": []}), "contents"),
        ] {
            let m = refused(g, body);
            assert!(m.contains(names), "{m}");
        }
    }

    #[test]
    fn count_tokens_asks_for_one_token() {
        let up = translate(
            Method::CountTokens,
            "m",
            br#"{"contents":[{"parts":[{"text":"hi"}]}]}"#,
        )
        .unwrap();
        let v: Value = serde_json::from_slice(&up.body).unwrap();
        assert_eq!(v["options"]["num_predict"], 1);
        assert_eq!(v["stream"], false);
    }

    #[test]
    fn embeddings_become_api_embed() {
        let up = translate(
            Method::BatchEmbed,
            "m",
            br#"{"requests":[
            {"model":"models/m","content":{"parts":[{"text":"a"}]}},
            {"model":"models/m","content":{"parts":[{"text":"b"}]},"outputDimensionality":4}]}"#,
        )
        .unwrap();
        assert_eq!(up.path, "/api/embed");
        let v: Value = serde_json::from_slice(&up.body).unwrap();
        assert_eq!(
            v,
            json!({"model": "m", "input": ["a", "b"], "dimensions": 4})
        );
        let up = translate(
            Method::Embed,
            "m",
            br#"{"content":{"parts":[{"text":"a"}]}}"#,
        )
        .unwrap();
        let v: Value = serde_json::from_slice(&up.body).unwrap();
        assert_eq!(v, json!({"model": "m", "input": "a"}));
    }
}

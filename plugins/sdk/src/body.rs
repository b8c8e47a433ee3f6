//! Typed views of the request bodies of Ollama's, OpenAI's, Anthropic's
//! and Gemini's APIs.
//!
//! Every view keeps the fields it does not name in `extra`, so parsing and
//! re-serializing a body never drops what a client sent: a plugin that only
//! clamps `num_predict` leaves `format`, `tools` or `keep_alive` alone.

use crate::request::Route;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A JSON object's fields.
pub type Object = Map<String, Value>;

/// Why a body could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyError(pub String);

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "request body is not valid for this API: {}", self.0)
    }
}

impl std::error::Error for BodyError {}

/// One chat message. `content` is a string for Ollama and usually for
/// OpenAI, but OpenAI also allows a list of parts (`{"type":"text","text":…}`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    #[serde(default)]
    pub content: Value,
    #[serde(flatten)]
    pub extra: Object,
}

impl Message {
    pub fn new(role: &str, content: &str) -> Self {
        Message {
            role: role.into(),
            content: Value::String(content.into()),
            extra: Object::new(),
        }
    }

    /// The text of the message's `content` (text parts joined by newlines).
    pub fn text(&self) -> String {
        let mut out = Vec::new();
        let mut content = self.content.clone();
        for_each_content_text_mut(&mut content, &mut |t| out.push(t.clone()));
        out.join("\n")
    }

    /// Visits every piece of text of the message that the model reads, for
    /// rewriting in place: `content` and everything else a message carries
    /// (`thinking`/`reasoning`, tool calls and their arguments, tool names),
    /// but not its role, ids or images (see the `text` module).
    pub fn for_each_text_mut(&mut self, mut f: impl FnMut(&mut String)) {
        text::visit_message(&mut self.content, &mut f);
        text::visit_fields(&mut self.extra, &mut f);
    }
}

/// `POST /api/generate`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GenerateRequest {
    pub model: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    /// Text after the insertion point (fill-in-the-middle models). With a
    /// suffix, Ollama renders only `prompt` and `suffix`: no system prompt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suffix: Option<String>,
    /// A prompt template replacing the model's; the model reads its text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    /// Runner options: `num_predict`, `num_ctx`, `temperature`, …
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<Object>,
    #[serde(flatten)]
    pub extra: Object,
}

impl GenerateRequest {
    /// `"raw": true`: Ollama applies no template, so neither `system` nor
    /// the model's own system prompt reaches the model.
    pub fn raw(&self) -> bool {
        self.extra.get("raw") == Some(&Value::Bool(true))
    }
}

/// `POST /api/chat`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatRequest {
    pub model: String,
    #[serde(default)]
    pub messages: Vec<Message>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<Object>,
    #[serde(flatten)]
    pub extra: Object,
}

/// `POST /api/embed` (`input`: string or list) and `/api/embeddings` (`prompt`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EmbedRequest {
    pub model: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<Object>,
    #[serde(flatten)]
    pub extra: Object,
}

/// `POST /v1/chat/completions`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct OpenaiChatRequest {
    pub model: String,
    #[serde(default)]
    pub messages: Vec<Message>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u64>,
    /// The newer name of `max_tokens`; Ollama reads either.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_completion_tokens: Option<u64>,
    #[serde(flatten)]
    pub extra: Object,
}

/// `POST /v1/completions` (`prompt`: string or list of strings) and
/// `POST /v1/embeddings` (`input`: string or list).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct OpenaiCompletionRequest {
    pub model: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u64>,
    #[serde(flatten)]
    pub extra: Object,
}

/// `POST /v1/responses` (OpenAI Responses API). `input` is a string or a
/// list of items (`{"role","content"}` or `{"type":"message",...}`, whose
/// `content` is a string or `input_text` parts); the system prompt is the
/// top-level `instructions`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct OpenaiResponsesRequest {
    pub model: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instructions: Option<String>,
    /// The Responses API's token cap; it has no `max_tokens`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_output_tokens: Option<u64>,
    #[serde(flatten)]
    pub extra: Object,
}

impl OpenaiResponsesRequest {
    /// Visits the text of `input`: the string itself, or all the text of
    /// each item, whatever its type: a message's `content` (a string or the
    /// `text` of its parts), the `output` a client sends back for a tool call
    /// (`function_call_output`; Ollama reads `output`, never `content`), a
    /// `function_call`'s name and arguments, a reasoning item's
    /// `encrypted_content` (Ollama hands it to the model as thinking).
    pub fn for_each_input_text_mut(&mut self, f: &mut impl FnMut(&mut String)) {
        if let Some(input) = &mut self.input {
            text::visit_message(input, f)
        }
    }
}

/// `POST /v1/messages` (Anthropic Messages API). Messages have the roles
/// `user` and `assistant` only; the system prompt is the top-level `system`
/// (a string or `{"type":"text","text"}` blocks), never a message.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AnthropicMessagesRequest {
    pub model: String,
    #[serde(default)]
    pub messages: Vec<Message>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<Value>,
    /// Required by the API; a body without it is left for Ollama to refuse.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u64>,
    #[serde(flatten)]
    pub extra: Object,
}

/// Gemini's `generateContent` and `streamGenerateContent` (the model is in
/// the path). `contents` are `{"role": "user"|"model", "parts": [...]}`
/// with text, `inlineData` (images), `functionCall` and
/// `functionResponse` parts; the system prompt is `systemInstruction`
/// (`{"parts": [{"text"}]}`), never a turn.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GeminiGenerateRequest {
    #[serde(default)]
    pub contents: Vec<Value>,
    #[serde(
        rename = "systemInstruction",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub system_instruction: Option<Value>,
    /// `maxOutputTokens`, `temperature`, `responseSchema`, …
    #[serde(
        rename = "generationConfig",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub generation_config: Option<Object>,
    #[serde(flatten)]
    pub extra: Object,
}

impl GeminiGenerateRequest {
    /// The system instruction's text (its text parts joined).
    pub fn system_text(&self) -> Option<String> {
        let parts = self.system_instruction.as_ref()?.get("parts")?.as_array()?;
        Some(
            parts
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect(),
        )
    }
}

/// A request body in the typed view of its route.
#[derive(Clone, Debug, PartialEq)]
pub enum Body {
    OllamaGenerate(GenerateRequest),
    OllamaChat(ChatRequest),
    OllamaEmbed(EmbedRequest),
    OpenaiChat(OpenaiChatRequest),
    OpenaiCompletions(OpenaiCompletionRequest),
    OpenaiEmbeddings(OpenaiCompletionRequest),
    OpenaiResponses(OpenaiResponsesRequest),
    AnthropicMessages(AnthropicMessagesRequest),
    GeminiGenerate(GeminiGenerateRequest),
    /// Gemini's `countTokens` (`contents`, or a whole
    /// `generateContentRequest`) and embeddings (`content`, or
    /// `requests[].content`), as JSON: their text is walked by
    /// [`Body::for_each_text_mut`].
    GeminiCountTokens(Value),
    GeminiEmbed(Value),
    /// A route without a typed view: the JSON as is.
    Other(Value),
}

mod text;

fn parse<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, BodyError> {
    serde_json::from_slice(bytes).map_err(|e| BodyError(e.to_string()))
}

/// Visits the text of a `content` that is a string or a list of parts/blocks
/// with a `text` each (parts without one, such as images, are skipped): what
/// [`Message::text`] shows. Policies walk more (the `text` module).
fn for_each_content_text_mut(value: &mut Value, f: &mut impl FnMut(&mut String)) {
    match value {
        Value::String(s) => f(s),
        Value::Array(parts) => {
            for part in parts {
                if let Some(Value::String(s)) = part.get_mut("text") {
                    f(s)
                } else if let Some(inner) = part.get_mut("content") {
                    // Anthropic's `tool_result` block: its own string or blocks.
                    for_each_content_text_mut(inner, f)
                }
            }
        }
        _ => {}
    }
}

/// Visits the tool definitions of a chat body: Ollama renders them, names,
/// descriptions and parameter schemas, into the prompt.
fn visit_tools(extra: &mut Object, f: &mut impl FnMut(&mut String)) {
    if let Some(tools) = extra.get_mut("tools") {
        text::visit_json(tools, f)
    }
}

/// Visits the strings of a `prompt`/`input` that may be a string or a list.
fn for_each_string_mut(value: &mut Value, f: &mut impl FnMut(&mut String)) {
    match value {
        Value::String(s) => f(s),
        Value::Array(items) => items.iter_mut().for_each(|v| for_each_string_mut(v, f)),
        _ => {}
    }
}

impl Body {
    /// Parses `bytes` as the body of `route`.
    pub fn parse(route: Route, bytes: &[u8]) -> Result<Body, BodyError> {
        Ok(match route {
            Route::OllamaGenerate => Body::OllamaGenerate(parse(bytes)?),
            Route::OllamaChat => Body::OllamaChat(parse(bytes)?),
            Route::OllamaEmbed => Body::OllamaEmbed(parse(bytes)?),
            Route::OpenaiChat => Body::OpenaiChat(parse(bytes)?),
            Route::OpenaiCompletions => Body::OpenaiCompletions(parse(bytes)?),
            Route::OpenaiEmbeddings => Body::OpenaiEmbeddings(parse(bytes)?),
            Route::OpenaiResponses => Body::OpenaiResponses(parse(bytes)?),
            Route::AnthropicMessages => Body::AnthropicMessages(parse(bytes)?),
            Route::GeminiGenerate => Body::GeminiGenerate(parse(bytes)?),
            Route::GeminiCountTokens => Body::GeminiCountTokens(parse(bytes)?),
            Route::GeminiEmbed => Body::GeminiEmbed(parse(bytes)?),
            Route::Other => Body::Other(parse(bytes)?),
        })
    }

    /// The body as JSON bytes, unknown fields included.
    pub fn to_bytes(&self) -> Vec<u8> {
        let result = match self {
            Body::OllamaGenerate(b) => serde_json::to_vec(b),
            Body::OllamaChat(b) => serde_json::to_vec(b),
            Body::OllamaEmbed(b) => serde_json::to_vec(b),
            Body::OpenaiChat(b) => serde_json::to_vec(b),
            Body::OpenaiCompletions(b) | Body::OpenaiEmbeddings(b) => serde_json::to_vec(b),
            Body::OpenaiResponses(b) => serde_json::to_vec(b),
            Body::AnthropicMessages(b) => serde_json::to_vec(b),
            Body::GeminiGenerate(b) => serde_json::to_vec(b),
            Body::GeminiCountTokens(v) | Body::GeminiEmbed(v) => serde_json::to_vec(v),
            Body::Other(v) => serde_json::to_vec(v),
        };
        // Serializing maps of JSON values with string keys cannot fail.
        result.unwrap_or_default()
    }

    /// The model the body names; `None` on the Gemini routes, whose model
    /// is in the path ([`crate::Request::model`]).
    pub fn model(&self) -> Option<&str> {
        match self {
            Body::OllamaGenerate(b) => Some(&b.model),
            Body::OllamaChat(b) => Some(&b.model),
            Body::OllamaEmbed(b) => Some(&b.model),
            Body::OpenaiChat(b) => Some(&b.model),
            Body::OpenaiCompletions(b) | Body::OpenaiEmbeddings(b) => Some(&b.model),
            Body::OpenaiResponses(b) => Some(&b.model),
            Body::AnthropicMessages(b) => Some(&b.model),
            Body::GeminiGenerate(_) | Body::GeminiCountTokens(_) | Body::GeminiEmbed(_) => None,
            Body::Other(v) => v.get("model").and_then(Value::as_str),
        }
    }

    pub fn set_model(&mut self, model: &str) {
        match self {
            Body::OllamaGenerate(b) => b.model = model.into(),
            Body::OllamaChat(b) => b.model = model.into(),
            Body::OllamaEmbed(b) => b.model = model.into(),
            Body::OpenaiChat(b) => b.model = model.into(),
            Body::OpenaiCompletions(b) | Body::OpenaiEmbeddings(b) => b.model = model.into(),
            Body::OpenaiResponses(b) => b.model = model.into(),
            Body::AnthropicMessages(b) => b.model = model.into(),
            Body::Other(Value::Object(o)) => {
                o.insert("model".into(), Value::String(model.into()));
            }
            // The model is in the path.
            Body::GeminiGenerate(_) | Body::GeminiCountTokens(_) | Body::GeminiEmbed(_) => {}
            Body::Other(_) => {}
        }
    }

    /// The chat messages of the routes where a message may carry any role,
    /// `system` included: Ollama's `/api/chat` and OpenAI's
    /// `/v1/chat/completions`.
    ///
    /// `None` for every other route, on purpose also for the two whose system
    /// prompt is not a message: `/v1/responses` (`input` may be a plain
    /// string; the system prompt is `instructions`) and `/v1/messages`
    /// (Anthropic refuses a `system` role; the prompt is the top-level
    /// `system`). A plugin that inserts a system message therefore never
    /// breaks them; to edit those bodies, match [`Body::OpenaiResponses`] or
    /// [`Body::AnthropicMessages`].
    pub fn messages_mut(&mut self) -> Option<&mut Vec<Message>> {
        match self {
            Body::OllamaChat(b) => Some(&mut b.messages),
            Body::OpenaiChat(b) => Some(&mut b.messages),
            _ => None,
        }
    }

    /// Visits every piece of text the model reads, for matching and
    /// rewriting in place: prompts, system prompts (`system`,
    /// `instructions`), `/api/generate`'s `template` and `suffix`, whole
    /// messages (content, thinking, tool calls and their arguments), every
    /// `/v1/responses` input item, Anthropic content blocks of every type,
    /// tool definitions (`tools`), the legacy completions' `suffix` and
    /// embedding inputs, Gemini's `systemInstruction`, parts (text,
    /// function calls and responses) and function declarations. Not seen:
    /// images and other media, and `/api/generate`'s `context` (token ids
    /// of an earlier answer).
    pub fn for_each_text_mut(&mut self, mut f: impl FnMut(&mut String)) {
        match self {
            Body::OllamaGenerate(b) => {
                b.system.iter_mut().for_each(&mut f);
                b.template.iter_mut().for_each(&mut f);
                b.prompt.iter_mut().for_each(&mut f);
                b.suffix.iter_mut().for_each(&mut f);
            }
            Body::OllamaChat(b) => {
                b.messages
                    .iter_mut()
                    .for_each(|m| m.for_each_text_mut(&mut f));
                visit_tools(&mut b.extra, &mut f);
            }
            Body::OpenaiChat(b) => {
                b.messages
                    .iter_mut()
                    .for_each(|m| m.for_each_text_mut(&mut f));
                visit_tools(&mut b.extra, &mut f);
            }
            Body::OllamaEmbed(b) => {
                b.input
                    .iter_mut()
                    .for_each(|v| for_each_string_mut(v, &mut f));
                b.prompt.iter_mut().for_each(&mut f);
            }
            Body::OpenaiCompletions(b) | Body::OpenaiEmbeddings(b) => {
                b.prompt
                    .iter_mut()
                    .for_each(|v| for_each_string_mut(v, &mut f));
                b.input
                    .iter_mut()
                    .for_each(|v| for_each_string_mut(v, &mut f));
                if let Some(Value::String(suffix)) = b.extra.get_mut("suffix") {
                    f(suffix)
                }
            }
            Body::OpenaiResponses(b) => {
                b.instructions.iter_mut().for_each(&mut f);
                b.for_each_input_text_mut(&mut f);
                visit_tools(&mut b.extra, &mut f);
            }
            Body::AnthropicMessages(b) => {
                b.system
                    .iter_mut()
                    .for_each(|v| text::visit_message(v, &mut f));
                b.messages
                    .iter_mut()
                    .for_each(|m| m.for_each_text_mut(&mut f));
                visit_tools(&mut b.extra, &mut f);
            }
            Body::GeminiGenerate(b) => {
                b.system_instruction
                    .iter_mut()
                    .for_each(|v| text::visit_gemini(v, &mut f));
                b.contents
                    .iter_mut()
                    .for_each(|v| text::visit_gemini(v, &mut f));
                visit_tools(&mut b.extra, &mut f);
            }
            Body::GeminiCountTokens(v) | Body::GeminiEmbed(v) => text::visit_gemini(v, &mut f),
            Body::Other(_) => {}
        }
    }

    /// All user-supplied text, for matching.
    pub fn texts(&self) -> Vec<String> {
        let mut out = Vec::new();
        self.clone().for_each_text_mut(|t| out.push(t.clone()));
        out
    }

    /// The top-level fields the typed view does not name (`stream`,
    /// `keep_alive`, `tools`, `format`, …), for reading and editing.
    pub fn extra_mut(&mut self) -> Option<&mut Object> {
        match self {
            Body::OllamaGenerate(b) => Some(&mut b.extra),
            Body::OllamaChat(b) => Some(&mut b.extra),
            Body::OllamaEmbed(b) => Some(&mut b.extra),
            Body::OpenaiChat(b) => Some(&mut b.extra),
            Body::OpenaiCompletions(b) | Body::OpenaiEmbeddings(b) => Some(&mut b.extra),
            Body::OpenaiResponses(b) => Some(&mut b.extra),
            Body::AnthropicMessages(b) => Some(&mut b.extra),
            Body::GeminiGenerate(b) => Some(&mut b.extra),
            Body::GeminiCountTokens(Value::Object(o))
            | Body::GeminiEmbed(Value::Object(o))
            | Body::Other(Value::Object(o)) => Some(o),
            Body::GeminiCountTokens(_) | Body::GeminiEmbed(_) | Body::Other(_) => None,
        }
    }

    /// Ollama's runner options (`options`), created empty when absent; `None`
    /// for OpenAI routes, which have no such object.
    pub fn options_mut(&mut self) -> Option<&mut Object> {
        let options = match self {
            Body::OllamaGenerate(b) => &mut b.options,
            Body::OllamaChat(b) => &mut b.options,
            Body::OllamaEmbed(b) => &mut b.options,
            _ => return None,
        };
        Some(options.get_or_insert_with(Object::new))
    }

    /// The cap on generated tokens the client asked for: `options.num_predict`
    /// for Ollama, `max_completion_tokens` or `max_tokens` for OpenAI chat,
    /// `max_output_tokens` for OpenAI Responses, `max_tokens` for Anthropic
    /// Messages, `generationConfig.maxOutputTokens` for Gemini. Ollama's
    /// `num_predict` of -1 (or any negative) means "no limit" and reads as `None`.
    pub fn max_tokens(&self) -> Option<u64> {
        match self {
            Body::OllamaGenerate(GenerateRequest { options, .. })
            | Body::OllamaChat(ChatRequest { options, .. }) => {
                options.as_ref()?.get("num_predict")?.as_u64()
            }
            Body::OpenaiChat(b) => b.max_completion_tokens.or(b.max_tokens),
            Body::OpenaiCompletions(b) => b.max_tokens,
            Body::OpenaiResponses(b) => b.max_output_tokens,
            Body::AnthropicMessages(b) => b.max_tokens,
            Body::GeminiGenerate(b) => b
                .generation_config
                .as_ref()?
                .get("maxOutputTokens")?
                .as_u64(),
            _ => None,
        }
    }

    /// Sets the cap on generated tokens (see [`Body::max_tokens`]); no-op for
    /// embedding routes, which generate nothing.
    pub fn set_max_tokens(&mut self, n: u64) {
        match self {
            Body::OllamaGenerate(_) | Body::OllamaChat(_) => {
                if let Some(o) = self.options_mut() {
                    o.insert("num_predict".into(), Value::from(n));
                }
            }
            Body::OpenaiChat(b) => {
                // Ollama takes max_completion_tokens over max_tokens when both
                // are present, so a clamp must hold for both names.
                if b.max_completion_tokens.is_some() {
                    b.max_completion_tokens = Some(n);
                }
                b.max_tokens = Some(n);
            }
            Body::OpenaiCompletions(b) => b.max_tokens = Some(n),
            Body::OpenaiResponses(b) => b.max_output_tokens = Some(n),
            Body::AnthropicMessages(b) => b.max_tokens = Some(n),
            Body::GeminiGenerate(b) => {
                b.generation_config
                    .get_or_insert_with(Object::new)
                    .insert("maxOutputTokens".into(), Value::from(n));
            }
            _ => {}
        }
    }

    /// Whether this route generates text (and so has a token cap).
    pub fn generates(&self) -> bool {
        matches!(
            self,
            Body::OllamaGenerate(_)
                | Body::OllamaChat(_)
                | Body::OpenaiChat(_)
                | Body::OpenaiCompletions(_)
                | Body::OpenaiResponses(_)
                | Body::AnthropicMessages(_)
                | Body::GeminiGenerate(_)
        )
    }
}

#[cfg(test)]
mod tests;

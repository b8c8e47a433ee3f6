//! The bytes Ollama writes: NDJSON chunks for `/api/*`, SSE events for `/v1/*`,
//! the final metrics chunk, and the error bodies of both styles.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde_json::{Value, json};

use crate::answer::Answer;
use crate::events::{Messages, Responses};

/// The completion text, one word per token. Deterministic, so tests can
/// compare what came through a proxy with what the emulator sent.
const WORDS: &[&str] = &[
    "The ",
    "sky ",
    "is ",
    "blue ",
    "because ",
    "air ",
    "scatters ",
    "short ",
    "wavelengths",
    ". ",
];

/// The text of token `i` of every answer.
pub fn token(i: usize) -> &'static str {
    WORDS[i % WORDS.len()]
}

pub fn text(n: usize) -> String {
    (0..n).map(token).collect()
}

/// What a thinking model thinks before every answer, one piece per token,
/// so a phrase ("Rayleigh scattering") spans two streamed chunks.
const THINKING_WORDS: &[&str] = &[
    "Hmm",
    ", ",
    "light ",
    "from ",
    "the ",
    "sun ",
    "meets ",
    "air",
    ". ",
    "Rayleigh ",
    "scattering ",
    "explains ",
    "it",
    ".",
];

/// How many tokens a thinking model thinks (unless its limit stops it first).
pub const THINKING_TOKENS: usize = THINKING_WORDS.len();

/// Thinking token `i` (`i < THINKING_TOKENS`).
pub fn thinking_token(i: usize) -> &'static str {
    THINKING_WORDS[i % THINKING_WORDS.len()]
}

/// The first `n` thinking tokens.
pub fn thinking_text(n: usize) -> String {
    (0..n.min(THINKING_TOKENS)).map(thinking_token).collect()
}

/// RFC 3339 UTC with nanoseconds, as Go's `time.Time` marshals.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, day) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_nanos()
    )
}

pub fn now() -> String {
    rfc3339(SystemTime::now())
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// Days since 1970-01-01 to (year, month, day); Howard Hinnant's algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Which API a generation answers, and so how its chunks look.
#[derive(Clone, Debug)]
pub enum Shape {
    Generate,
    Chat,
    OpenaiChat {
        id: String,
        include_usage: bool,
    },
    OpenaiCompletion {
        id: String,
    },
    /// `/v1/responses`: typed events (see `events`).
    Responses(Box<Responses>),
    /// `/v1/messages`: typed events (see `events`).
    Messages(Messages),
}

/// Numbers of the final chunk.
pub struct Totals {
    pub prompt_tokens: usize,
    /// Every generated token, thinking included: Ollama's `eval_count` is
    /// the runner's count, which knows nothing of thinking.
    pub eval_tokens: usize,
    /// How many of `eval_tokens` were thinking (the first ones).
    pub thinking_tokens: usize,
    pub elapsed: Duration,
    pub load: Duration,
    pub done_reason: &'static str,
    /// `logprobs` asked for: how many `top_logprobs` alternatives each
    /// token gets (see [`logprobs`]).
    pub logprobs: Option<usize>,
    /// `/api/generate` sends `context` (not with `raw: true`).
    pub context: bool,
    /// What the model answered (see `answer`).
    pub answer: Answer,
}

/// The text of token `i` of an answer whose first `think` tokens are thinking.
fn any_token(answer: &Answer, i: usize, think: usize) -> &str {
    if i < think {
        thinking_token(i)
    } else {
        answer.token(i - think)
    }
}

/// Ollama's `logprobs` for generated token `i` (text `tok`), as api/types.go
/// `Logprob` marshals: the token, its log probability (deterministic:
/// exact eighths), its bytes and, when asked, `top` alternatives
/// (`top_logprobs`, omitempty), the token itself first. The alternatives
/// are made of the token (`"blue "`, `"BLUE "`, `"blue 2"`…), so they name
/// nothing the chunk's own text does not.
pub fn logprob(i: usize, tok: &str, top: usize) -> Value {
    let lp = -(((i % 7) + 1) as f64) / 8.0;
    let entry = |t: &str, lp: f64| json!({"token": t, "logprob": lp, "bytes": t.as_bytes()});
    let mut v = entry(tok, lp);
    if top > 0 {
        let alts: Vec<Value> = (0..top)
            .map(|k| {
                let t = match k {
                    0 => tok.to_owned(),
                    1 => tok.to_uppercase(),
                    k => format!("{}{k}", tok.trim_end()),
                };
                entry(&t, lp - k as f64)
            })
            .collect();
        v["top_logprobs"] = json!(alts);
    }
    v
}

/// The `logprobs` of the first `n` tokens of an answer that thinks
/// `think` of them: a whole body carries them all (routes.go appends every
/// chunk's to `allLogprobs`, thinking tokens included).
fn logprobs(answer: &Answer, n: usize, think: usize, top: usize) -> Value {
    Value::Array(
        (0..n)
            .map(|i| logprob(i, any_token(answer, i, think), top))
            .collect(),
    )
}

/// `context` of `/api/generate`: the token ids of the prompt and of all it
/// generated (routes.go tokenizes `prompt + sb.String()`, thinking
/// included). Made-up ids, one per token.
fn context(t: &Totals) -> Value {
    let prompt = (0..t.prompt_tokens as u64).map(|k| 1 + k % 1000);
    let generated = (0..t.eval_tokens as u64).map(|k| 2000 + k);
    Value::Array(prompt.chain(generated).map(Value::from).collect())
}

fn ndjson(v: &Value) -> Bytes {
    let mut b = serde_json::to_vec(v).unwrap_or_default();
    b.push(b'\n');
    Bytes::from(b)
}

fn sse(v: &Value) -> String {
    format!("data: {v}\n\n")
}

fn ollama_metrics(v: &mut Value, t: &Totals) {
    let total = t.elapsed.as_nanos() as u64;
    let load = t.load.as_nanos() as u64;
    let eval = total.saturating_sub(load) * 9 / 10;
    let extra = json!({
        "done": true,
        "done_reason": t.done_reason,
        "total_duration": total,
        "load_duration": load,
        "prompt_eval_count": t.prompt_tokens,
        "prompt_eval_duration": total.saturating_sub(load).saturating_sub(eval),
        "eval_count": t.eval_tokens,
        "eval_duration": eval,
    });
    if let (Some(obj), Some(extra)) = (v.as_object_mut(), extra.as_object()) {
        obj.extend(extra.clone());
    }
}

fn openai_usage(t: &Totals) -> Value {
    json!({
        "prompt_tokens": t.prompt_tokens,
        "completion_tokens": t.eval_tokens,
        "total_tokens": t.prompt_tokens + t.eval_tokens,
    })
}

impl Totals {
    /// Tokens of the answer proper, after the thinking.
    pub fn answer_tokens(&self) -> usize {
        self.eval_tokens - self.thinking_tokens
    }
}

/// openai.go: `stop` becomes `tool_calls` when the answer called a tool.
fn openai_finish(t: &Totals) -> &'static str {
    if t.done_reason == "length" {
        "length"
    } else if t.answer.tool_calls().is_some() {
        "tool_calls"
    } else {
        "stop"
    }
}

/// Ollama's tool calls as openai.go `ToToolCalls` writes them: `type`,
/// `index` beside `id`, and the arguments as a JSON string.
fn openai_tool_calls(calls: &[Value]) -> Value {
    Value::Array(
        calls
            .iter()
            .map(|c| {
                json!({
                    "id": c["id"], "index": c["function"]["index"], "type": "function",
                    "function": {"name": c["function"]["name"], "arguments": c["function"]["arguments"].to_string()},
                })
            })
            .collect(),
    )
}

impl Shape {
    pub fn content_type(&self, stream: bool) -> &'static str {
        match (self, stream) {
            (Shape::Generate | Shape::Chat, true) => "application/x-ndjson",
            // Their middlewares set it after gin's c.JSON did.
            (Shape::Responses(_) | Shape::Messages(_), false) => "application/json",
            (_, false) => "application/json; charset=utf-8",
            (_, true) => "text/event-stream",
        }
    }

    /// Streamed token `i` of an answer whose first `think` tokens are
    /// thinking. Ollama's parser gives each chunk either thinking or
    /// content (`response`/`content` empty, `thinking` set). With
    /// `logprobs` asked (`Some(top)`), the chunk carries its token's: the
    /// native APIs in `logprobs`, OpenAI chat in `choices[0].logprobs.content`
    /// (openai.go `toChunk`); `/v1/completions` drops them
    /// (`ToCompleteChunk` sets no `Logprobs`), and the event APIs have none.
    pub fn chunk(
        &self,
        model: &str,
        answer: &Answer,
        i: usize,
        think: usize,
        logprobs: Option<usize>,
    ) -> Bytes {
        if let Shape::Responses(r) = self {
            return Bytes::from(r.chunk(model, i, think));
        }
        if let Shape::Messages(m) = self {
            return Bytes::from(m.chunk(model, i, think));
        }
        let lp = logprobs.map(|top| json!([logprob(i, any_token(answer, i, think), top)]));
        // A thinking chunk has `thinking` (`reasoning` for OpenAI chat,
        // omitempty elsewhere) and empty text: `response`/`content` are
        // always written (`ToStreamChunks` too); a completion chunk drops
        // the thinking (`ToCompleteChunk`: text only).
        let (text, thinking) = match i.checked_sub(think) {
            Some(k) => (answer.token(k), None),
            None => ("", Some(thinking_token(i))),
        };
        // A tool call goes out whole, in the first chunk after the thinking.
        let calls = answer.tool_calls().filter(|_| i == think);
        match self {
            Shape::Generate => {
                let mut v =
                    json!({"model": model, "created_at": now(), "response": text, "done": false});
                if let Some(t) = thinking {
                    v["thinking"] = json!(t);
                }
                with_logprobs(&mut v, lp);
                ndjson(&v)
            }
            Shape::Chat => {
                let mut v = json!({
                    "model": model, "created_at": now(),
                    "message": {"role": "assistant", "content": text}, "done": false,
                });
                if let Some(t) = thinking {
                    v["message"]["thinking"] = json!(t);
                }
                if let Some(calls) = calls {
                    v["message"]["tool_calls"] = json!(calls);
                }
                with_logprobs(&mut v, lp);
                ndjson(&v)
            }
            Shape::OpenaiChat { id, .. } => {
                let mut v = json!({
                    "id": id, "object": "chat.completion.chunk", "created": unix_now(), "model": model,
                    "system_fingerprint": "fp_ollama",
                    "choices": [{"index": 0, "delta": {"role": "assistant", "content": text}, "finish_reason": null}],
                });
                if let Some(t) = thinking {
                    v["choices"][0]["delta"]["reasoning"] = json!(t);
                }
                if let Some(calls) = calls {
                    v["choices"][0]["delta"]["tool_calls"] = openai_tool_calls(calls);
                }
                with_choice_logprobs(&mut v, lp);
                Bytes::from(sse(&v))
            }
            Shape::OpenaiCompletion { id } => Bytes::from(sse(&json!({
                "id": id, "object": "text_completion", "created": unix_now(), "model": model,
                "system_fingerprint": "fp_ollama",
                "choices": [{"text": text, "index": 0, "finish_reason": null}],
            }))),
            Shape::Responses(_) | Shape::Messages(_) => Bytes::new(),
        }
    }

    /// The end of a stream: Ollama's metrics chunk, or OpenAI's finish chunk,
    /// optional usage chunk and `[DONE]`.
    pub fn last_chunk(&self, model: &str, t: &Totals) -> Bytes {
        match self {
            Shape::Generate => {
                let mut v = json!({"model": model, "created_at": now(), "response": ""});
                if t.context {
                    v["context"] = context(t);
                }
                ollama_metrics(&mut v, t);
                ndjson(&v)
            }
            Shape::Chat => {
                let mut v = json!({"model": model, "created_at": now(), "message": {"role": "assistant", "content": ""}});
                ollama_metrics(&mut v, t);
                ndjson(&v)
            }
            Shape::OpenaiChat { id, include_usage } => {
                let mut out = sse(&json!({
                    "id": id, "object": "chat.completion.chunk", "created": unix_now(), "model": model,
                    "system_fingerprint": "fp_ollama",
                    "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": openai_finish(t)}],
                }));
                if *include_usage {
                    out.push_str(&sse(&json!({
                        "id": id, "object": "chat.completion.chunk", "created": unix_now(), "model": model,
                        "system_fingerprint": "fp_ollama", "choices": [], "usage": openai_usage(t),
                    })));
                }
                out.push_str("data: [DONE]\n\n");
                Bytes::from(out)
            }
            Shape::OpenaiCompletion { id } => {
                let mut out = sse(&json!({
                    "id": id, "object": "text_completion", "created": unix_now(), "model": model,
                    "system_fingerprint": "fp_ollama",
                    "choices": [{"text": "", "index": 0, "finish_reason": openai_finish(t)}],
                }));
                out.push_str("data: [DONE]\n\n");
                Bytes::from(out)
            }
            Shape::Responses(r) => Bytes::from(r.last_chunk(model, t)),
            Shape::Messages(m) => Bytes::from(m.last_chunk(model, t)),
        }
    }

    /// The whole answer of a `stream:false` request, as sent.
    pub fn whole_body(&self, model: &str, t: &Totals) -> Bytes {
        match self {
            Shape::Responses(r) => Bytes::from(r.whole(model, t)),
            Shape::Messages(m) => Bytes::from(m.whole(model, t)),
            _ => Bytes::from(self.whole(model, t).to_string()),
        }
    }

    /// The whole answer of a `stream:false` request, as a tree: the handler
    /// joins the chunks' thinking and content (routes.go, `sbThinking`).
    fn whole(&self, model: &str, t: &Totals) -> Value {
        let text = t.answer.text(t.answer_tokens());
        let thinking = thinking_text(t.thinking_tokens);
        let calls = t.answer.tool_calls().filter(|_| t.answer_tokens() > 0);
        let lp = t
            .logprobs
            .map(|top| logprobs(&t.answer, t.eval_tokens, t.thinking_tokens, top))
            .filter(|all| all.as_array().is_some_and(|a| !a.is_empty()));
        match self {
            Shape::Generate => {
                let mut v = json!({"model": model, "created_at": now(), "response": text});
                if !thinking.is_empty() {
                    v["thinking"] = json!(thinking);
                }
                // The last chunk's `context`.
                if t.context {
                    v["context"] = context(t);
                }
                with_logprobs(&mut v, lp);
                ollama_metrics(&mut v, t);
                v
            }
            Shape::Chat => {
                let mut v = json!({"model": model, "created_at": now(), "message": {"role": "assistant", "content": text}});
                if !thinking.is_empty() {
                    v["message"]["thinking"] = json!(thinking);
                }
                if let Some(calls) = calls {
                    v["message"]["tool_calls"] = json!(calls);
                }
                with_logprobs(&mut v, lp);
                ollama_metrics(&mut v, t);
                v
            }
            Shape::OpenaiChat { id, .. } => {
                let mut message = json!({"role": "assistant", "content": text});
                if !thinking.is_empty() {
                    // `Message.Reasoning`, omitempty.
                    message["reasoning"] = json!(thinking);
                }
                if let Some(calls) = calls {
                    message["tool_calls"] = openai_tool_calls(calls);
                }
                let mut v = json!({
                    "id": id, "object": "chat.completion", "created": unix_now(), "model": model,
                    "system_fingerprint": "fp_ollama",
                    "choices": [{"index": 0, "message": message, "finish_reason": openai_finish(t)}],
                    "usage": openai_usage(t),
                });
                with_choice_logprobs(&mut v, lp);
                v
            }
            Shape::OpenaiCompletion { id } => json!({
                "id": id, "object": "text_completion", "created": unix_now(), "model": model,
                "system_fingerprint": "fp_ollama",
                "choices": [{"text": text, "index": 0, "finish_reason": openai_finish(t)}],
                "usage": openai_usage(t),
            }),
            // Go structs, in their field order: see `whole_body`.
            Shape::Responses(_) | Shape::Messages(_) => Value::Null,
        }
    }

    /// Ollama's error after streaming began: one more line, status stays 200.
    pub fn stream_error(&self, message: &str) -> Bytes {
        match self {
            Shape::Generate | Shape::Chat => ndjson(&json!({"error": message})),
            // Their writers read the error line as an empty chat chunk:
            // nothing more is sent, and the stream ends without its end events.
            Shape::Responses(_) | Shape::Messages(_) => Bytes::new(),
            _ => Bytes::from(sse(&openai_error_body(500, message))),
        }
    }
}

/// Ollama's `logprobs` (omitempty: only when there are some).
fn with_logprobs(v: &mut Value, lp: Option<Value>) {
    if let Some(lp) = lp {
        v["logprobs"] = lp;
    }
}

/// OpenAI's `choices[0].logprobs` (`ChoiceLogprobs{Content}`, a pointer
/// with omitempty: only when there are some).
fn with_choice_logprobs(v: &mut Value, lp: Option<Value>) {
    if let (Some(lp), Some(choice)) = (lp, v.pointer_mut("/choices/0")) {
        choice["logprobs"] = json!({"content": lp});
    }
}

/// OpenAI's error body, with the `type` Ollama picks for each status.
pub fn openai_error_body(status: u16, message: &str) -> Value {
    let kind = match status {
        400 => "invalid_request_error",
        404 => "not_found_error",
        _ => "api_error",
    };
    json!({"error": {"message": message, "type": kind, "param": null, "code": null}})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339() {
        let t = UNIX_EPOCH + Duration::new(1_780_000_000, 5);
        assert_eq!(rfc3339(t), "2026-05-28T20:26:40.000000005Z");
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000000000Z");
    }
}

//! One generation: waiting for a parallel slot, loading the model, and
//! streaming tokens (or the whole answer) with the test controls applied.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde_json::json;
use tokio::sync::OwnedSemaphorePermit;

use crate::answer::{Answer, as_chat};
use crate::api::{
    Api, AppState, Inner, ensure_loaded, error, header_num, keep_alive_expiry, parse_request,
    writer_error,
};
use crate::events::{Messages, Responses};
use crate::format::{self, Shape, THINKING_TOKENS, Totals};
use crate::models;
use crate::stats::{Counter, Stats};

/// The life of one generation, as the stats see it. Dropping it before
/// `finish` means the client went away: that is a cancellation.
pub(crate) struct Generation {
    stats: Arc<Stats>,
    permit: Option<OwnedSemaphorePermit>,
    done: bool,
}

impl Generation {
    pub(crate) async fn admit(st: &Inner) -> Generation {
        if let Ok(permit) = st.slots.clone().try_acquire_owned() {
            st.stats.enter_in_flight();
            return Generation {
                stats: st.stats.clone(),
                permit: Some(permit),
                done: false,
            };
        }
        st.stats.enter_waiting();
        let mut g = Generation {
            stats: st.stats.clone(),
            permit: None,
            done: false,
        };
        // Ollama's runner semaphore: FIFO, and unbounded for a loaded model.
        let permit = st.slots.clone().acquire_owned().await.ok();
        st.stats.leave_waiting();
        st.stats.enter_in_flight();
        g.permit = permit;
        g
    }

    pub(crate) fn finish(&mut self, counter: Counter) {
        if !self.done {
            self.done = true;
            self.stats.bump(counter);
        }
    }
}

impl Drop for Generation {
    fn drop(&mut self) {
        if self.permit.is_some() {
            self.stats.leave_in_flight();
        } else if !self.done {
            self.stats.leave_waiting();
        }
        if !self.done {
            self.stats.bump(Counter::Cancelled);
        }
    }
}

/// Streams tokens one by one, honouring the test controls.
struct Run {
    generation: Generation,
    shape: Shape,
    answer: Answer,
    model: String,
    i: usize,
    n: usize,
    /// The first `think` of the `n` tokens are thinking.
    think: usize,
    delay: Duration,
    fail_after: Option<usize>,
    error_after: Option<usize>,
    stall_after: Option<usize>,
    started: Instant,
    load: Duration,
    prompt_tokens: usize,
    done_reason: &'static str,
    /// `logprobs` asked for, with how many alternatives (see `Totals`).
    logprobs: Option<usize>,
    context: bool,
    finished: bool,
}

impl Run {
    async fn next_chunk(&mut self) -> Option<Result<Bytes, std::io::Error>> {
        if self.finished {
            return None;
        }
        // Sleeping first also lets the server flush the previous chunk, so a
        // client sees every token sent before an emulated crash.
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        if self.fail_after == Some(self.i) {
            self.finished = true;
            self.generation.finish(Counter::Aborted);
            // An error from the body stream makes hyper cut the connection
            // without the chunked terminator, as a crashed server would.
            return Some(Err(std::io::Error::other(
                "emulated crash (x-emulator-fail-after)",
            )));
        }
        if self.stall_after == Some(self.i) {
            // An idle stream: open, headers sent, nothing more until the client leaves.
            std::future::pending::<()>().await;
        }
        if self.error_after == Some(self.i) {
            self.finished = true;
            self.generation.finish(Counter::Completed);
            return Some(Ok(self
                .shape
                .stream_error("model runner has unexpectedly stopped")));
        }
        if self.i < self.n {
            self.i += 1;
            return Some(Ok(self.shape.chunk(
                &self.model,
                &self.answer,
                self.i - 1,
                self.think,
                self.logprobs,
            )));
        }
        self.finished = true;
        self.generation.finish(Counter::Completed);
        Some(Ok(self.shape.last_chunk(&self.model, &self.totals())))
    }

    fn totals(&self) -> Totals {
        Totals {
            prompt_tokens: self.prompt_tokens,
            eval_tokens: self.i,
            thinking_tokens: self.i.min(self.think),
            elapsed: self.started.elapsed(),
            load: self.load,
            done_reason: self.done_reason,
            logprobs: self.logprobs,
            context: self.context,
            answer: self.answer.clone(),
        }
    }
}

pub(crate) async fn generate(
    State(st): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
    api: Api,
) -> Response {
    let st = &st.inner;
    let started = Instant::now();
    let (req, model) = match parse_request(st, &body) {
        Ok(v) => v,
        // A model that does not exist is the chat handler's error, which
        // the Responses and Messages writers turn into their format.
        Err((StatusCode::NOT_FOUND, msg)) => return writer_error(api, StatusCode::NOT_FOUND, &msg),
        Err((status, msg)) => return error(api, status, &msg),
    };
    if api == Api::Messages {
        // AnthropicMessagesMiddleware's own checks.
        let max_tokens = req.get("max_tokens").and_then(|v| v.as_i64()).unwrap_or(0);
        let no_messages = req
            .get("messages")
            .and_then(|m| m.as_array())
            .is_none_or(|m| m.is_empty());
        let refusal = if max_tokens <= 0 {
            Some("max_tokens is required and must be positive")
        } else if no_messages {
            Some("messages is required")
        } else {
            None
        };
        if let Some(msg) = refusal {
            return error(api, StatusCode::BAD_REQUEST, msg);
        }
    }
    let requested = match requested_think(api, &req) {
        Ok(t) => t,
        Err(msg) => return error(api, StatusCode::BAD_REQUEST, &msg),
    };
    let thinks = models::thinks(st.config.models_dir.as_deref(), &model);
    // An empty prompt (or no messages) only loads or unloads the model.
    let load_only = match api {
        Api::Generate => req
            .get("prompt")
            .and_then(|p| p.as_str())
            .unwrap_or("")
            .is_empty(),
        Api::Chat => req
            .get("messages")
            .and_then(|m| m.as_array())
            .is_none_or(|m| m.is_empty()),
        _ => false,
    };
    // routes.go: a model with the thinking capability thinks unless told
    // not to (`req.Think == nil` becomes true); asking one without it to
    // think is a 400, checked after the unload shortcut and before the
    // load one. /v1/messages relaxes it to no thinking instead
    // (middleware/anthropic.go sets `relax_thinking`).
    let unload = load_only && keep_alive_expiry(&req).is_none();
    if !thinks && requested == Some(true) && !unload && api != Api::Messages {
        let msg = format!("{model:?} does not support thinking");
        return writer_error(api, StatusCode::BAD_REQUEST, &msg);
    }
    let images = match images(api, &req) {
        Ok(i) => i,
        Err(msg) => return error(api, StatusCode::BAD_REQUEST, &msg),
    };
    let think = thinks && requested.unwrap_or(true);
    // routes.go: tools ask for the `tools` capability, which scheduleRunner
    // checks (`"%s %w"`: the model's full name, then "does not support tools").
    let tools = matches!(
        api,
        Api::Chat | Api::OpenaiChat | Api::Responses | Api::Messages
    ) && req
        .get("tools")
        .and_then(|t| t.as_array())
        .is_some_and(|t| !t.is_empty());
    if tools && !load_only && !models::calls_tools(st.config.models_dir.as_deref(), &model) {
        let msg = format!("{} does not support tools", models::full_name(&model));
        return writer_error(api, StatusCode::BAD_REQUEST, &msg);
    }
    let logprobs = match requested_logprobs(api, &req) {
        Ok(l) => l,
        Err(msg) => return writer_error(api, StatusCode::BAD_REQUEST, &msg),
    };
    if load_only {
        ensure_loaded(st, &model, &req).await;
        let reason = if keep_alive_expiry(&req).is_none() {
            "unload"
        } else {
            "load"
        };
        let mut v = json!({"model": model, "created_at": format::now(), "done": true, "done_reason": reason});
        if api == Api::Generate {
            v["response"] = json!("");
        } else {
            v["message"] = json!({"role": "assistant", "content": ""});
        }
        return axum::Json(v).into_response();
    }
    let stream = req
        .get("stream")
        .and_then(|s| s.as_bool())
        .unwrap_or(api == Api::Generate || api == Api::Chat);
    let limit = match api {
        Api::OpenaiChat | Api::OpenaiCompletion | Api::Messages => {
            req.get("max_tokens").and_then(|v| v.as_u64())
        }
        Api::Responses => req.get("max_output_tokens").and_then(|v| v.as_u64()),
        _ => req.pointer("/options/num_predict").and_then(|v| v.as_u64()),
    };
    let next = st
        .next_id
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        % 999;
    let shape = match api {
        Api::Generate => Shape::Generate,
        Api::Chat => Shape::Chat,
        Api::OpenaiChat => Shape::OpenaiChat {
            id: format!("chatcmpl-{next}"),
            include_usage: req
                .pointer("/stream_options/include_usage")
                .and_then(|v| v.as_bool())
                .unwrap_or(false),
        },
        Api::Responses => Shape::Responses(Box::new(Responses::of_request(&req, next))),
        Api::Messages => Shape::Messages(Messages::of_request(&req, next)),
        _ => Shape::OpenaiCompletion {
            id: format!("cmpl-{next}"),
        },
    };
    let answer = match api {
        Api::Chat | Api::Generate => Answer::of_request(&req, true, next),
        Api::OpenaiChat => Answer::of_request(&req, false, next),
        // Only a tool call: their text answers are words.
        Api::Responses | Api::Messages => {
            match Answer::of_request(&as_chat(&req, api == Api::Messages), true, next) {
                calls @ Answer::ToolCalls(_) => calls,
                _ => Answer::Words,
            }
        }
        _ => Answer::Words,
    };
    let mut shape = shape;
    let calls = answer.tool_calls().map(<[_]>::to_vec).unwrap_or_default();
    match &mut shape {
        Shape::Responses(r) => r.calls = calls,
        Shape::Messages(m) => m.calls = calls,
        _ => {}
    }
    let generation = Generation::admit(st).await;
    let load = ensure_loaded(st, &model, &req).await;
    let header_ms = |n| header_num(&headers, n).map(|v| v as usize);
    // A thinking model thinks THINKING_TOKENS tokens, then answers. The
    // limit (num_predict) caps every token the runner generates, thinking
    // included, so a small one can stop it mid-thought.
    let thinking = if think {
        limit.map_or(THINKING_TOKENS, |l| (l as usize).min(THINKING_TOKENS))
    } else {
        0
    };
    // Words go on for the configured length (or the limit); a scripted
    // answer (JSON, a tool call) ends where it ends, or at the limit.
    let natural = thinking + answer.len().unwrap_or(st.config.default_tokens);
    let n = match (limit, answer.len()) {
        (Some(l), Some(_)) => natural.min(l as usize),
        (Some(l), None) => l as usize,
        (None, _) => natural,
    };
    let done_reason = if n < natural || (limit.is_some() && answer.len().is_none()) {
        "length"
    } else {
        "stop"
    };
    let mut run = Run {
        generation,
        shape,
        answer,
        model,
        i: 0,
        n,
        think: thinking,
        delay: header_num(&headers, "x-emulator-delay-ms")
            .map(Duration::from_millis)
            .unwrap_or(st.config.token_delay),
        fail_after: header_ms("x-emulator-fail-after"),
        error_after: header_ms("x-emulator-error-after"),
        stall_after: header_ms("x-emulator-stall-after"),
        started,
        load,
        prompt_tokens: (body.len() - images.bytes) / 4 + 1 + images.count * IMAGE_TOKENS,
        done_reason,
        logprobs,
        // routes.go: `if !req.Raw { … res.Context = tokens }`.
        context: api == Api::Generate && !req.get("raw").and_then(|r| r.as_bool()).unwrap_or(false),
        finished: false,
    };
    let content_type = HeaderValue::from_static(run.shape.content_type(stream));
    if !stream {
        while let Some(chunk) = run.next_chunk().await {
            match chunk {
                Ok(_) => {}
                Err(_) => {
                    return writer_error(
                        api,
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "model runner has unexpectedly stopped",
                    );
                }
            }
        }
        let body = run.shape.whole_body(&run.model, &run.totals());
        return ([(header::CONTENT_TYPE, content_type)], body).into_response();
    }
    // Ollama writes headers only with the first chunk: nothing reaches the
    // client while the request waits for a slot or a model load.
    let first = run.next_chunk().await;
    let rest = futures_util::stream::unfold(run, |mut run| async move {
        run.next_chunk().await.map(|c| (c, run))
    });
    let body = futures_util::stream::iter(first).chain(rest);
    (
        [(header::CONTENT_TYPE, content_type)],
        Body::from_stream(body),
    )
        .into_response()
}

/// Tokens one image takes in the prompt: Gemma 3's vision encoder gives
/// 256 soft tokens per image.
const IMAGE_TOKENS: usize = 256;

/// The images of a request: how many, and how many bytes of base64 they took.
struct Images {
    count: usize,
    bytes: usize,
}

/// The base64 `images` of /api/generate and of /api/chat's messages, read
/// as Go's encoding/json reads `api.ImageData` (a `[]byte`: standard
/// base64, padded), so a bad one is the same 400 ShouldBindJSON gives.
fn images(api: Api, req: &serde_json::Value) -> Result<Images, String> {
    use base64::Engine;
    let lists: Vec<&serde_json::Value> = match api {
        Api::Generate => req.get("images").into_iter().collect(),
        Api::Chat => req
            .get("messages")
            .and_then(|m| m.as_array())
            .map(|m| m.iter().filter_map(|m| m.get("images")).collect())
            .unwrap_or_default(),
        _ => Vec::new(),
    };
    let mut found = Images { count: 0, bytes: 0 };
    for image in lists.into_iter().filter_map(|l| l.as_array()).flatten() {
        let Some(b64) = image.as_str() else {
            return Err("json: cannot unmarshal into Go struct field of type api.ImageData".into());
        };
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| match e {
                base64::DecodeError::InvalidByte(at, _)
                | base64::DecodeError::InvalidLastSymbol(at, _) => {
                    format!("illegal base64 data at input byte {at}")
                }
                _ => format!("illegal base64 data at input byte {}", b64.len()),
            })?;
        found.count += 1;
        found.bytes += b64.len();
    }
    Ok(found)
}

/// Whether the request asks for `logprobs`, and how many alternatives
/// (`top_logprobs`) each token gets: `logprobs: true` and `top_logprobs: n`
/// on /api/generate, /api/chat and /v1/chat/completions (api/types.go,
/// openai.go `FromChatRequest`); `logprobs: n` (n > 0) on /v1/completions
/// (openai.go `FromCompleteRequest`: it becomes `Logprobs` and
/// `TopLogprobs`). routes.go refuses a `top_logprobs` outside 0..=20.
fn requested_logprobs(api: Api, req: &serde_json::Value) -> Result<Option<usize>, String> {
    let (on, top) = match api {
        Api::Generate | Api::Chat | Api::OpenaiChat => (
            req.get("logprobs")
                .and_then(|l| l.as_bool())
                .unwrap_or(false),
            req.get("top_logprobs")
                .and_then(|t| t.as_i64())
                .unwrap_or(0),
        ),
        Api::OpenaiCompletion => {
            let n = req.get("logprobs").and_then(|l| l.as_i64()).unwrap_or(0);
            (n > 0, n.max(0))
        }
        _ => return Ok(None),
    };
    if !(0..=20).contains(&top) {
        return Err("top_logprobs must be between 0 and 20".into());
    }
    Ok(on.then_some(top as usize))
}

/// What the request asks of thinking; `None` leaves it to the model (which
/// thinks if it can). Each API has its own field:
/// - /api/generate, /api/chat: `think`, a bool or "high"/"medium"/"low"/"max"
///   (api/types.go `ThinkValue.UnmarshalJSON`; a level means true);
/// - /v1/chat/completions: `reasoning.effort`, else `reasoning_effort`;
///   /v1/responses: `reasoning.effort` (openai.go `thinkFromReasoningEffort`);
/// - /v1/messages: `thinking.type` enabled/disabled, else
///   `output_config.effort` (anthropic.go `FromMessagesRequest`).
fn requested_think(api: Api, req: &serde_json::Value) -> Result<Option<bool>, String> {
    use serde_json::Value;
    let str_at = |p: &str| req.pointer(p).and_then(Value::as_str).unwrap_or("");
    match api {
        Api::Generate | Api::Chat => match req.get("think") {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(Value::String(s)) if ["high", "medium", "low", "max"].contains(&s.as_str()) => {
                Ok(Some(true))
            }
            Some(Value::String(s)) => Err(format!(
                "invalid think value: {s:?} (must be \"high\", \"medium\", \"low\", \"max\", true, or false)"
            )),
            Some(_) => Err(
                "think must be a boolean or string (\"high\", \"medium\", \"low\", \"max\", true, or false)".into(),
            ),
        },
        Api::OpenaiChat | Api::Responses => {
            let effort = if api == Api::Responses || req.get("reasoning").is_some_and(|r| !r.is_null()) {
                str_at("/reasoning/effort")
            } else {
                str_at("/reasoning_effort")
            };
            match effort {
                "" => Ok(None),
                "none" => Ok(Some(false)),
                "minimal" | "low" | "medium" | "high" | "max" | "xhigh" | "ultra" => Ok(Some(true)),
                e => Err(format!(
                    "invalid reasoning value: {e:?} (must be \"minimal\", \"low\", \"medium\", \"high\", \"xhigh\", \"ultra\", \"max\", or \"none\")"
                )),
            }
        }
        Api::Messages => match str_at("/thinking/type") {
            "enabled" => Ok(Some(true)),
            "disabled" => Ok(Some(false)),
            _ => {
                let effort = str_at("/output_config/effort").trim().to_ascii_lowercase();
                Ok(["high", "medium", "low", "max", "xhigh"]
                    .contains(&effort.as_str())
                    .then_some(true))
            }
        },
        _ => Ok(None),
    }
}

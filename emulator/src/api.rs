//! Routes and handlers: Ollama's HTTP API as seen on the wire.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tokio::sync::Semaphore;

use crate::events;
use crate::format;
use crate::generation::{Generation, generate};
use crate::models::{self, LocalModel};
use crate::stats::{Counter, Stats};
use crate::{Config, VERSION};

#[derive(Clone)]
pub struct AppState {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) config: Config,
    pub(crate) loopback: bool,
    pub(crate) stats: Arc<Stats>,
    pub(crate) slots: Arc<Semaphore>,
    /// Loaded models and their `expires_at`.
    pub(crate) loaded: Mutex<HashMap<String, String>>,
    pub(crate) next_id: std::sync::atomic::AtomicU64,
}

impl AppState {
    pub fn new(config: Config, addr: SocketAddr, stats: Arc<Stats>) -> Self {
        let slots = Arc::new(Semaphore::new(config.num_parallel.max(1)));
        AppState {
            inner: Arc::new(Inner {
                loopback: addr.ip().is_loopback(),
                config,
                stats,
                slots,
                loaded: Mutex::new(HashMap::new()),
                next_id: Default::default(),
            }),
        }
    }
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(|| async { "Ollama is running" }))
        .route(
            "/api/version",
            get(|| async { axum::Json(json!({ "version": VERSION })) }),
        )
        .route("/api/tags", get(tags))
        .route("/api/ps", get(ps))
        .route("/api/show", post(show))
        .route(
            "/api/generate",
            post(|s, h, b| generate(s, h, b, Api::Generate)),
        )
        .route("/api/chat", post(|s, h, b| generate(s, h, b, Api::Chat)))
        .route(
            "/v1/chat/completions",
            post(|s, h, b| generate(s, h, b, Api::OpenaiChat)),
        )
        .route(
            "/v1/completions",
            post(|s, h, b| generate(s, h, b, Api::OpenaiCompletion)),
        )
        .route(
            "/v1/responses",
            post(|s, h, b| generate(s, h, b, Api::Responses)),
        )
        .route(
            "/v1/messages",
            post(|s, h, b| generate(s, h, b, Api::Messages)),
        )
        .route("/api/embed", post(|s, b| embed(s, b, Api::Embed)))
        .route("/api/embeddings", post(|s, b| embed(s, b, Api::Embeddings)))
        .route(
            "/v1/embeddings",
            post(|s, b| embed(s, b, Api::OpenaiEmbeddings)),
        )
        .route("/v1/models", get(openai_models))
        .route("/emulator/stats", get(stats))
        .route(
            "/emulator/crash",
            post(|State(st): State<AppState>| async move {
                st.inner.stats.request_crash();
                StatusCode::ACCEPTED
            }),
        )
        // gin answers unknown paths and wrong methods in plain text.
        .fallback(|| async { (StatusCode::NOT_FOUND, "404 page not found") })
        .method_not_allowed_fallback(|| async {
            (StatusCode::METHOD_NOT_ALLOWED, "405 method not allowed")
        })
        .layer(middleware::from_fn_with_state(state.clone(), host_check))
        .with_state(state)
}

/// Ollama's `allowedHostsMiddleware`: on a loopback listener, a request whose
/// Host is not local gets 403 with an empty body.
async fn host_check(State(st): State<AppState>, req: Request, next: Next) -> Response {
    if st.inner.loopback {
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        if !host.is_empty() && !is_local_host(host) {
            st.inner.stats.bump(Counter::HostRejections);
            return StatusCode::FORBIDDEN.into_response();
        }
    }
    if !req.uri().path().starts_with("/emulator/") {
        st.inner.stats.bump(Counter::Requests);
        let headers = req
            .headers()
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        st.inner.stats.record_headers(headers);
    }
    next.run(req).await
}

pub fn is_local_host(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        match host.rsplit_once(':') {
            Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h,
            _ => host,
        }
    };
    let name = name.to_ascii_lowercase();
    if name == "localhost"
        || [".localhost", ".local", ".internal"]
            .iter()
            .any(|s| name.ends_with(s))
    {
        return true;
    }
    match name.parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) => ip.is_loopback() || ip.is_private() || ip.is_unspecified(),
        Ok(IpAddr::V6(ip)) => ip.is_loopback() || ip.is_unspecified(),
        Err(_) => false,
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Api {
    Generate,
    Chat,
    OpenaiChat,
    OpenaiCompletion,
    Responses,
    Messages,
    Embed,
    Embeddings,
    OpenaiEmbeddings,
}

impl Api {
    fn openai(self) -> bool {
        matches!(
            self,
            Api::OpenaiChat | Api::OpenaiCompletion | Api::OpenaiEmbeddings | Api::Responses
        )
    }
}

pub(crate) fn error(api: Api, status: StatusCode, message: &str) -> Response {
    if api == Api::Messages {
        let body = events::anthropic_error_body(status.as_u16(), message, 0);
        let json = [(header::CONTENT_TYPE, "application/json; charset=utf-8")];
        return (status, json, body).into_response();
    }
    let body = if api.openai() {
        format::openai_error_body(status.as_u16(), message)
    } else {
        json!({ "error": message })
    };
    (status, axum::Json(body)).into_response()
}

/// An error the Responses or Messages writer turns Ollama's error into
/// (`writeError`: its API's format, `json.Encoder`, so `\n`-terminated, and
/// `application/json`). Errors their middlewares answer themselves
/// (request validation) go out as [`error`] does, as gin's `c.JSON`.
pub(crate) fn writer_error(api: Api, status: StatusCode, message: &str) -> Response {
    let body = match api {
        Api::Messages => events::anthropic_error_body(status.as_u16(), message, 1),
        Api::Responses => events::openai_error_body(status.as_u16(), message),
        _ => return error(api, status, message),
    };
    let json = [(header::CONTENT_TYPE, "application/json")];
    (status, json, format!("{body}\n")).into_response()
}

pub(crate) fn header_num(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

/// Parses the body and resolves the model, answering errors as Ollama does.
pub(crate) fn parse_request(
    st: &Inner,
    body: &Bytes,
) -> Result<(Value, String), (StatusCode, String)> {
    if body.is_empty() {
        return Err((StatusCode::BAD_REQUEST, "missing request body".into()));
    }
    let req: Value = serde_json::from_slice(body)
        .map_err(|e| (StatusCode::BAD_REQUEST, format!("invalid JSON: {e}")))?;
    if !req.is_object() {
        let msg = "request body must be a JSON object";
        return Err((StatusCode::BAD_REQUEST, msg.into()));
    }
    let model = req
        .get("model")
        .and_then(|m| m.as_str())
        .unwrap_or("")
        .to_string();
    if model.is_empty() {
        return Err((StatusCode::BAD_REQUEST, "model is required".into()));
    }
    if let Some(dir) = &st.config.models_dir {
        let want = models::normalize(&model);
        if !models::scan(dir).iter().any(|m| m.name == want) {
            return Err((StatusCode::NOT_FOUND, format!("model '{model}' not found")));
        }
    }
    Ok((req, model))
}

pub(crate) fn keep_alive_expiry(req: &Value) -> Option<String> {
    match req.get("keep_alive") {
        Some(Value::Number(n)) if n.as_f64().unwrap_or(0.0) < 0.0 => {
            Some("2318-08-23T00:00:00Z".into())
        }
        Some(Value::Number(n)) if n.as_f64() == Some(0.0) => None,
        Some(Value::String(s)) if s.starts_with('-') => Some("2318-08-23T00:00:00Z".into()),
        Some(Value::String(s)) if s == "0" || s == "0s" => None,
        _ => Some(format::rfc3339(
            std::time::SystemTime::now() + Duration::from_secs(300),
        )),
    }
}

/// Loads the model if needed; returns how long loading took.
pub(crate) async fn ensure_loaded(st: &Inner, model: &str, req: &Value) -> Duration {
    let name = models::normalize(model);
    let already = st
        .loaded
        .lock()
        .map(|l| l.contains_key(&name))
        .unwrap_or(false);
    let started = Instant::now();
    if !already && !st.config.load_delay.is_zero() {
        tokio::time::sleep(st.config.load_delay).await;
    }
    if let Ok(mut l) = st.loaded.lock() {
        match keep_alive_expiry(req) {
            Some(exp) => l.insert(name, exp),
            None => l.remove(&name),
        };
    }
    started.elapsed()
}

fn vector(seed: usize) -> Vec<f32> {
    (0..8)
        .map(|i| ((seed * 31 + i * 7) % 100) as f32 / 100.0)
        .collect()
}

/// Ollama's `normalize`: scaled to unit length.
fn normalize(v: Vec<f32>) -> Vec<f32> {
    let norm = 1.0 / v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.into_iter().map(|x| x * norm).collect()
}

async fn embed(State(st): State<AppState>, body: Bytes, api: Api) -> Response {
    let st = &st.inner;
    let (req, model) = match parse_request(st, &body) {
        Ok(v) => v,
        Err((status, msg)) => return error(api, status, &msg),
    };
    let mut generation = Generation::admit(st).await;
    let load = ensure_loaded(st, &model, &req).await;
    let inputs: Vec<String> = match req.get(if api == Api::Embeddings {
        "prompt"
    } else {
        "input"
    }) {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| v.as_str().unwrap_or("").to_string())
            .collect(),
        _ => Vec::new(),
    };
    generation.finish(Counter::Completed);
    let tokens: usize = inputs.iter().map(|s| s.len() / 4 + 1).sum();
    // routes.go EmbedHandler: every vector normalized, then cut to
    // `dimensions` (when smaller) and normalized again.
    let dimensions = req.get("dimensions").and_then(Value::as_u64).unwrap_or(0) as usize;
    let v = match api {
        Api::Embed => json!({
            "model": model,
            "embeddings": inputs.iter().map(|s| {
                let mut v = normalize(vector(s.len()));
                if dimensions > 0 && dimensions < v.len() {
                    v.truncate(dimensions);
                    v = normalize(v);
                }
                v
            }).collect::<Vec<_>>(),
            "total_duration": load.as_nanos() as u64 + 1000, "load_duration": load.as_nanos() as u64,
            "prompt_eval_count": tokens,
        }),
        Api::Embeddings => json!({"embedding": vector(inputs.first().map_or(0, |s| s.len()))}),
        _ => json!({
            "object": "list",
            "data": inputs.iter().enumerate().map(|(i, s)| json!({"object": "embedding", "embedding": vector(s.len()), "index": i})).collect::<Vec<_>>(),
            "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }),
    };
    axum::Json(v).into_response()
}

fn local_models(st: &Inner) -> Vec<LocalModel> {
    st.config
        .models_dir
        .as_deref()
        .map(models::scan)
        .unwrap_or_default()
}

fn details(m: &LocalModel) -> Value {
    json!({
        "parent_model": "", "format": "gguf", "family": m.family, "families": [m.family],
        "parameter_size": m.parameter_size, "quantization_level": m.quantization_level,
    })
}

async fn tags(State(st): State<AppState>) -> Response {
    let models: Vec<Value> = local_models(&st.inner)
        .iter()
        .map(|m| {
            json!({
                "name": m.name, "model": m.name,
                "modified_at": format::rfc3339(std::time::UNIX_EPOCH + Duration::from_secs(m.modified_unix)),
                "size": m.size, "digest": m.digest, "details": details(m),
            })
        })
        .collect();
    axum::Json(json!({ "models": models })).into_response()
}

async fn ps(State(st): State<AppState>) -> Response {
    let st = &st.inner;
    let loaded = st.loaded.lock().map(|l| l.clone()).unwrap_or_default();
    let on_disk = local_models(st);
    let mut names: Vec<_> = loaded.keys().cloned().collect();
    names.sort();
    let models: Vec<Value> = names
        .iter()
        .map(|name| {
            let disk = on_disk.iter().find(|m| &m.name == name);
            json!({
                "name": name, "model": name,
                "size": disk.map_or(0, |m| m.size), "digest": disk.map_or("", |m| m.digest.as_str()),
                "details": disk.map(details).unwrap_or_else(|| json!({})),
                "expires_at": loaded[name], "size_vram": disk.map_or(0, |m| m.size), "context_length": 4096,
            })
        })
        .collect();
    axum::Json(json!({ "models": models })).into_response()
}

async fn show(State(st): State<AppState>, body: Bytes) -> Response {
    let st = &st.inner;
    let (_, model) = match parse_request(st, &body) {
        Ok(v) => v,
        Err((status, msg)) => return error(Api::Generate, status, &msg),
    };
    let name = models::normalize(&model);
    let m = local_models(st).into_iter().find(|m| m.name == name);
    let mut capabilities = vec!["completion"];
    if models::thinks(st.config.models_dir.as_deref(), &name) {
        capabilities.push("thinking");
    }
    axum::Json(json!({
        "license": "", "modelfile": format!("FROM {name}\n"), "parameters": "temperature 1", "template": "{{ .Prompt }}",
        "details": m.as_ref().map(details).unwrap_or_else(|| json!({})),
        "model_info": {}, "capabilities": capabilities,
    }))
    .into_response()
}

async fn openai_models(State(st): State<AppState>) -> Response {
    let data: Vec<Value> = local_models(&st.inner)
        .iter()
        .map(|m| json!({"id": m.name, "object": "model", "created": m.modified_unix, "owned_by": "library"}))
        .collect();
    axum::Json(json!({"object": "list", "data": data})).into_response()
}

async fn stats(State(st): State<AppState>) -> Response {
    axum::Json(st.inner.stats.snapshot()).into_response()
}

#[cfg(test)]
mod tests {
    use super::is_local_host;

    #[test]
    fn host_check_accepts_only_local_names() {
        for ok in [
            "localhost:11434",
            "127.0.0.1:11434",
            "127.0.0.1",
            "[::1]:11434",
            "10.0.0.5",
            "box.local",
            "x.internal",
            "0.0.0.0",
        ] {
            assert!(is_local_host(ok), "{ok}");
        }
        for bad in [
            "example.com",
            "kiln-abc-uc.a.run.app",
            "8.8.8.8:11434",
            "localhost.evil.com",
        ] {
            assert!(!is_local_host(bad), "{bad}");
        }
    }
}

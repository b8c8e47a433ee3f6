//! The Gemini API's steps in a request's life (`pipeline`): the key from
//! the query, the view from the path, the translation after the plugins,
//! and the model list from `/api/tags`.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use tokio::time::Instant;

use super::answer::Plan;
use super::{Method, call, query_key, request, resolve, wants_sse};
use crate::request_view::InferenceView;
use crate::routes::RouteKind;
use crate::upstream::Upstream;

/// Gemini's API-key header (`?key=` is read as it).
pub const GOOG_API_KEY: HeaderName = HeaderName::from_static("x-goog-api-key");

/// Google reads `?key=` as `x-goog-api-key`: so do the plugins, which see
/// headers, not the query (the query is never forwarded, nor logged).
pub fn key_from_query(uri: &http::Uri, headers: &mut HeaderMap) {
    let key = query_key(uri.query()).and_then(|k| HeaderValue::from_str(&k).ok());
    if let Some(key) = key {
        headers.entry(GOOG_API_KEY).or_insert(key);
    }
}

/// A Gemini inference request: the Ollama model it names (aliases
/// resolved) and what it asks for.
#[derive(Clone, Debug)]
pub struct Call {
    pub model: String,
    pub method: Method,
}

impl Call {
    pub fn of(kind: RouteKind, path: &str, aliases: &BTreeMap<String, String>) -> Option<Call> {
        if !kind.is_gemini() {
            return None;
        }
        let (model, method) = call(path)?;
        Some(Call {
            model: resolve(aliases, &model),
            method,
        })
    }

    /// The view: the model from the path, streaming from the method; the
    /// body must be a JSON object (its fields are read when it is
    /// translated, after the plugins).
    pub fn view(&self, kind: RouteKind, body: &[u8]) -> Result<InferenceView, &'static str> {
        let object = serde_json::from_slice::<serde_json::Value>(body).map(|v| v.is_object());
        if !matches!(object, Ok(true)) {
            return Err("Invalid JSON payload received: the body must be a JSON object");
        }
        Ok(InferenceView {
            route: kind,
            model: self.model.clone(),
            stream: self.method == Method::StreamGenerate,
            options: None,
            keep_alive: None,
        })
    }

    /// The body as Ollama's, the path to send it to, and how to translate
    /// the answer back; `Err`: the 400 message.
    pub fn translate(
        &self,
        body: &[u8],
        query: Option<&str>,
        response_id: &str,
    ) -> Result<(&'static str, Bytes, Plan), String> {
        let up = request::translate(self.method, &self.model, body)?;
        let plan = Plan {
            method: self.method,
            sse: wants_sse(query),
            include_thoughts: up.include_thoughts,
            model: self.model.clone(),
            response_id: response_id.to_owned(),
        };
        Ok((up.path, Bytes::from(up.body), plan))
    }
}

/// Why Ollama's model list could not be had: status, message, reason.
pub type TagsError = (u16, String, &'static str);

/// `GET /api/tags` with `headers` (as for the upstream), read whole.
pub async fn fetch_tags(
    up: &Upstream,
    mut headers: HeaderMap,
    deadline: Instant,
    max: usize,
    idle: Duration,
) -> Result<Bytes, TagsError> {
    headers.remove(GOOG_API_KEY);
    let uri = up
        .uri("/api/tags")
        .map_err(|e| (500, e.to_string(), "bad_request"))?;
    let mut req = http::Request::new(crate::body::full(Bytes::new()));
    *req.uri_mut() = uri;
    *req.headers_mut() = headers;
    let resp = match tokio::time::timeout_at(deadline, up.send(req)).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return Err((502, e.to_string(), "upstream_unreachable")),
        Err(_) => {
            let msg = "Ollama did not answer within limits.request_timeout_s";
            return Err((504, msg.into(), "upstream_timeout"));
        }
    };
    let status = resp.status().as_u16();
    let tags = crate::body::read_limited(resp.into_body(), max, idle)
        .await
        .map_err(|e| {
            (
                502,
                format!("Ollama's model list broke off: {e}"),
                "upstream_broke",
            )
        })?;
    if status != 200 {
        let msg = format!(
            "Ollama answered {status} to its model list: {}",
            String::from_utf8_lossy(&tags)
        );
        return Err((502, msg, "upstream_error"));
    }
    Ok(tags)
}

//! The proxy's own endpoints.

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::body::{self, RespBody};
use crate::metrics::Gauges;
use crate::pipeline::AppState;

/// `/healthz/live`, `/healthz/ready` and `/metrics`: answered by the proxy,
/// never forwarded, never access-logged (probes would drown the log).
pub(crate) fn endpoint(
    state: &AppState,
    req: &Request<Incoming>,
    remote: std::net::SocketAddr,
) -> Option<Response<RespBody>> {
    let path = req.uri().path();
    if !path.starts_with("/healthz/") && path != "/metrics" {
        return None;
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return None;
    }
    let (status, content_type, body) = match path {
        "/healthz/live" => {
            let alive = state.readiness.is_alive();
            let status = if alive { 200 } else { 503 };
            (
                status,
                "application/json",
                serde_json::json!({"alive": alive}).to_string(),
            )
        }
        "/healthz/ready" => {
            let (ready, detail) = state.readiness.status();
            let status = if ready { 200 } else { 503 };
            (
                status,
                "application/json",
                serde_json::json!({"ready": ready, "detail": detail}).to_string(),
            )
        }
        "/metrics" if !metrics_allowed(state, req, remote) => {
            let msg = match state.config.metrics_token {
                Some(_) => "/metrics needs Authorization: Bearer <metrics_token>",
                None => {
                    "/metrics answers only loopback peers; set metrics_token (KILN_METRICS_TOKEN) to scrape it from elsewhere with Authorization: Bearer"
                }
            };
            let status = if state.config.metrics_token.is_some() {
                401
            } else {
                403
            };
            (
                status,
                "application/json",
                serde_json::json!({"error": msg}).to_string(),
            )
        }
        "/metrics" => {
            let a = &state.admission;
            let gauges = Gauges {
                in_flight: a.in_flight(),
                queued: a.queued(),
                max_in_flight: a.max_in_flight(),
                ready: state.readiness.status().0,
            };
            let mut text = state.metrics.render(&gauges);
            state.filter.render_metrics(&mut text);
            crate::metrics::finish(&mut text);
            (200, crate::metrics::CONTENT_TYPE, text)
        }
        _ => return None,
    };
    let mut resp = Response::new(body::full(body));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    Some(resp)
}

/// `/metrics` tells how busy the instance is and which plugins refuse what:
/// with `metrics_token` set, only a caller with that bearer token may read
/// it; without, only a peer on the loopback interface (a scraper in the
/// same instance: Cloud Run's ingress reaches the container on 0.0.0.0, not
/// over loopback).
fn metrics_allowed(
    state: &AppState,
    req: &Request<Incoming>,
    remote: std::net::SocketAddr,
) -> bool {
    let Some(token) = &state.config.metrics_token else {
        return remote.ip().to_canonical().is_loopback();
    };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    // Compare digests, so the time taken says nothing about the token.
    use sha2::{Digest, Sha256};
    let (a, b) = (
        Sha256::digest(given.as_bytes()),
        Sha256::digest(token.as_bytes()),
    );
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

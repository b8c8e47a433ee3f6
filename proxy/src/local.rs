//! The proxy's own endpoints.

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::body::{self, RespBody};
use crate::metrics::Gauges;
use crate::pipeline::AppState;

/// `/healthz/live`, `/healthz/ready` and `/metrics`: answered by the proxy,
/// never forwarded, never access-logged (probes would drown the log).
pub(crate) fn endpoint(state: &AppState, req: &Request<Incoming>) -> Option<Response<RespBody>> {
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
            (200, "text/plain; version=0.0.4", text)
        }
        _ => return None,
    };
    let mut resp = Response::new(body::full(body));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    Some(resp)
}

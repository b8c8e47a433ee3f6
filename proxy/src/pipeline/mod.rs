//! The life of one request, as named stages (after Pingora's phases):
//!
//! 1. `route`     — a normalized path (400), an allowed `Origin` (403), a
//!    known Ollama/OpenAI route and method (404/405), management routes only
//!    when enabled (403);
//! 2. `read`      — inference bodies read whole under `max_body_bytes` (413),
//!    before the request deadline (408) and within the bytes buffered across
//!    all requests (503); zstd/gzip bodies decoded where Ollama decodes them;
//! 3. `view`      — the typed [`InferenceView`] parsed once (400 on bad JSON);
//! 4. `filter`    — the [`RequestFilter`] stage (plugins) may rewrite or reject;
//! 5. `admit`     — admission control (429 when the queue is full);
//! 6. `forward`   — to Ollama with Host/Origin/hop-by-hop rules, 502/504 on failure;
//! 7. `respond`   — the answer streamed back frame by frame; the end is logged
//!    and counted when the body finishes, breaks off, or the client leaves.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use opentelemetry::context::FutureExt as _;
use tokio::time::Instant;

use crate::access::{Access, Ctx, access_log, take_ctx};
use crate::admission::Admission;
use crate::body::{self, RespBody};
use crate::config::Config;
use crate::filter::{FilterRequest, RequestFilter, Verdict};
use crate::gemini::stage as gemini;
use crate::headers;
use crate::metrics::Metrics;
use crate::passthrough::Passthrough;
use crate::readiness::Readiness;
use crate::request_body::BodyBudget;
use crate::request_view::{self, InferenceView};
use crate::response_body::{Framing, Outcome, Slot, Tracker};
use crate::routes::{self, ApiStyle, Route, RouteKind};
use crate::upstream::Upstream;

mod gemini_routes;
mod read;

use gemini_routes::{gemini_models, gemini_view};
use read::read_body;

/// What every request handler shares.
pub struct AppState {
    pub config: Config,
    pub upstream: Upstream,
    pub filter: Arc<dyn RequestFilter>,
    pub admission: Admission,
    pub metrics: Metrics,
    pub readiness: Readiness,
    /// Request-body bytes in memory across all requests (`limits.max_buffered_bytes`).
    pub body_budget: Arc<BodyBudget>,
    /// Slots for non-inference requests (`limits.max_other_in_flight`),
    /// apart from admission, so they never take an inference slot.
    pub other_slots: Arc<tokio::sync::Semaphore>,
}

/// A proxy's answer with nothing from Ollama in it.
type Early = Box<Response<RespBody>>;

pub async fn handle(
    state: Arc<AppState>,
    req: Request<Incoming>,
    remote: SocketAddr,
) -> Response<RespBody> {
    if let Some(resp) = crate::local::endpoint(&state, &req, remote) {
        return resp;
    }
    let start = Instant::now();
    let route = routes::classify(req.uri().path());
    let mut ctx = Ctx {
        start,
        deadline: start + state.config.request_timeout(),
        style: route.map_or_else(|| ApiStyle::of_unknown(req.uri().path()), |r| r.style),
        request_id: headers::request_id(req.headers()),
        trace: headers::trace_id(req.headers()),
        method: req.method().clone(),
        // Gemini clients may send their API key as `?key=`: never logged.
        path_and_query: crate::gemini::redact_key(
            req.uri().path_and_query().map_or("/", |p| p.as_str()),
        ),
        route: "unknown",
        user_agent: header_str(req.headers(), header::USER_AGENT).to_string(),
        remote,
        request_size: 0,
        model: None,
        stream: false,
        first_token: None,
        span: None,
    };
    // With traces on, the request runs under its span's context, so that
    // its stages (plugins, admission, log lines) find it as the current one.
    let traced =
        crate::telemetry::RequestTrace::start(req.headers(), req.method(), req.uri().path());
    let result = match traced {
        Some(span) => {
            let cx = span.context().clone();
            ctx.span = Some(span);
            run(&state, &mut ctx, route, req).with_context(cx).await
        }
        None => run(&state, &mut ctx, route, req).await,
    };
    match result {
        Ok(resp) => resp,
        Err(early) => *early,
    }
}

async fn run(
    state: &Arc<AppState>,
    ctx: &mut Ctx,
    route: Option<Route>,
    req: Request<Incoming>,
) -> Result<Response<RespBody>, Early> {
    // Stage: route (looked up in `handle`).
    let path = req.uri().path().to_string();
    if let Some(why) = routes::unnormalized(&path) {
        let msg = format!("{path} is not a normalized path: {why}; send the path itself");
        return Err(reject(state, ctx, 400, &msg, "unnormalized_path", &[]));
    }
    if !headers::origin_allowed(req.headers(), &state.config.allowed_origins) {
        let origin = header_str(req.headers(), header::ORIGIN);
        let msg = format!(
            "requests from the web origin {origin:?} are not allowed; add it to allowed_origins (KILN_ALLOWED_ORIGINS) to let pages there call this service"
        );
        return Err(reject(state, ctx, 403, &msg, "origin", &[]));
    }
    let Some(route) = route else {
        let msg = format!(
            "{path} is not an Ollama or OpenAI-compatible route; kiln-proxy does not forward it"
        );
        return Err(reject(state, ctx, 404, &msg, "unknown_route", &[]));
    };
    ctx.route = route.label;
    if let Some(span) = &ctx.span {
        span.route(route.label, route.kind);
    }
    if !route.methods.contains(req.method()) {
        let allow = routes::allow_header(&route);
        let msg = format!(
            "method {} is not allowed on {path}; use {allow}",
            req.method()
        );
        return Err(reject(
            state,
            ctx,
            405,
            &msg,
            "wrong_method",
            &[("allow".into(), allow)],
        ));
    }
    if routes::is_management(&route) && !state.config.allow_management_routes {
        let msg = format!(
            "{path} changes the models this instance serves, and kiln-proxy refuses model-management routes; \
             set allow_management_routes = true (KILN_ALLOW_MANAGEMENT_ROUTES=1) to forward them"
        );
        return Err(reject(state, ctx, 403, &msg, "management_route", &[]));
    }
    let limit = state.config.limits.max_body_bytes;
    let declared = header_str(req.headers(), header::CONTENT_LENGTH)
        .parse::<u64>()
        .ok();
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large(state, ctx));
    }
    ctx.request_size = declared.unwrap_or(0);
    let (mut parts, body) = req.into_parts();
    // The client's hop-by-hop headers go before any plugin runs, so that a
    // `Connection` header cannot later name (and strip) a header a plugin added.
    headers::strip_hop_by_hop(&mut parts.headers);
    if route.style == ApiStyle::Gemini {
        gemini::key_from_query(&parts.uri, &mut parts.headers);
    }
    if route.label == "gemini_models" {
        return gemini_models(state, ctx, route, parts).await;
    }
    if route.inference {
        inference(state, ctx, route, parts, body).await
    } else {
        other(state, ctx, route, parts, body).await
    }
}

async fn inference(
    state: &Arc<AppState>,
    ctx: &mut Ctx,
    route: Route,
    parts: http::request::Parts,
    body: Incoming,
) -> Result<Response<RespBody>, Early> {
    // Stage: read.
    let mut parts = parts;
    let (body, _reserved) = read_body(state, ctx, route, &mut parts.headers, body).await?;
    // Stage: view. A Gemini request names its model in the path.
    let aliases = &state.config.gemini.aliases;
    let gemini = gemini::Call::of(route.kind, parts.uri.path(), aliases);
    let view = match &gemini {
        Some(call) => gemini_view(state, ctx, call, route.kind, &body)?,
        None => parse_view(state, ctx, route.kind, &body)?,
    };
    // Stage: filter.
    let model = Some(view.model.clone());
    let (headers, pairs, rewritten) = filter(state, ctx, route.kind, &parts, &body, model).await?;
    // A filter rewrote the body: the typed view must describe what Ollama will see.
    let (view, body) = match (rewritten, &gemini) {
        (Some(b), Some(call)) => (gemini_view(state, ctx, call, route.kind, &b)?, b),
        (Some(b), None) => (parse_view(state, ctx, route.kind, &b)?, b),
        (None, _) => (view, body),
    };
    // Stage: translate. A Gemini body becomes Ollama's, after the plugins.
    let mut target = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let mut plan = None;
    let body = match &gemini {
        None => body,
        Some(call) => {
            let id = ctx.request_id.to_str().unwrap_or("");
            match call.translate(&body, parts.uri.query(), id) {
                Ok((path, body, p)) => {
                    (target, plan) = (path.to_string(), Some(p));
                    body
                }
                Err(msg) => return Err(reject(state, ctx, 400, &msg, "bad_request", &[])),
            }
        }
    };
    ctx.stream = view.stream;
    if let Some(span) = &ctx.span {
        span.request(&view, &body);
    }
    // Stage: admit.
    let span_start = crate::telemetry::span_start();
    let admitted = state.admission.admit().await;
    if let Some(t) = span_start {
        let a = &state.admission;
        crate::telemetry::admission_span(t, admitted.is_ok(), a.in_flight(), a.queued());
    }
    let (permit, waited) = match admitted {
        Ok(p) => p,
        Err(_) => {
            let a = &state.admission;
            let msg = format!(
                "server busy: {} requests running and {} waiting (limits.max_in_flight, limits.max_queue); retry shortly",
                a.in_flight(),
                a.queued()
            );
            return Err(reject(
                state,
                ctx,
                429,
                &msg,
                "queue_full",
                &[("retry-after".into(), "1".into())],
            ));
        }
    };
    state.metrics.queue_wait(waited);
    // Stage: response plan. Only with response plugins for this route: they
    // get hooks, and a streamed OpenAI request is asked for its usage.
    let (body, response) = crate::response::prepare(
        state.filter.responses(),
        route.codec,
        crate::response::ResponseContext {
            request_id: ctx.request_id.to_str().unwrap_or("").to_owned(),
            route: route.kind,
            path: parts.uri.path().to_owned(),
            model: ctx.model.clone(),
            stream: view.stream,
            status: 0,
            headers: pairs,
        },
        body,
    );
    // Stage: forward. The body length may have changed in the filter stage.
    let mut headers = headers;
    headers.remove(header::CONTENT_LENGTH);
    if gemini.is_some() {
        // Ollama never reads it: a key a plugin left in place stays here.
        headers.remove(gemini::GOOG_API_KEY);
    }
    let codec = route.codec;
    forward(
        state,
        ctx,
        &target,
        parts,
        headers,
        body::full(body),
        Some(Slot::Admitted(permit)),
        Reader {
            codec,
            response,
            gemini: plan,
        },
    )
    .await
}

fn parse_view(
    state: &Arc<AppState>,
    ctx: &mut Ctx,
    kind: RouteKind,
    body: &[u8],
) -> Result<InferenceView, Early> {
    match request_view::parse(kind, body) {
        Ok(v) => {
            ctx.model = Some(v.model.clone());
            Ok(v)
        }
        Err(e) => Err(reject(state, ctx, 400, &e.to_string(), "bad_request", &[])),
    }
}

/// Requests that run no model (tags, ps, show, version, pull…): filtered on
/// their head only (their body streams through untouched), never queued for
/// an inference slot, and at most `limits.max_other_in_flight` at once.
async fn other(
    state: &Arc<AppState>,
    ctx: &mut Ctx,
    route: Route,
    parts: http::request::Parts,
    body: Incoming,
) -> Result<Response<RespBody>, Early> {
    let Ok(slot) = state.other_slots.clone().try_acquire_owned() else {
        let msg = format!(
            "server busy: {} non-inference requests are running (limits.max_other_in_flight); retry shortly",
            state.config.limits.max_other_in_flight
        );
        let retry = [("retry-after".to_string(), "1".to_string())];
        return Err(reject(state, ctx, 429, &msg, "other_busy", &retry));
    };
    let (headers, ..) = filter(state, ctx, route.kind, &parts, &Bytes::new(), None).await?;
    let limit = state.config.limits.max_body_bytes;
    let body = http_body_util::Limited::new(body, limit).boxed_unsync();
    let reader = Reader {
        codec: None,
        response: None,
        gemini: None,
    };
    let target = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    forward(
        state,
        ctx,
        &target,
        parts,
        headers,
        body,
        Some(Slot::Other(slot)),
        reader,
    )
    .await
}

/// Stage: filter. Returns the headers to forward (also as the pairs the
/// plugins saw) and, when a filter rewrote it, the body to forward instead.
async fn filter(
    state: &Arc<AppState>,
    ctx: &mut Ctx,
    kind: RouteKind,
    parts: &http::request::Parts,
    body: &Bytes,
    model: Option<String>,
) -> Result<(HeaderMap, Vec<(String, String)>, Option<Bytes>), Early> {
    if !state.filter.filters(kind) {
        // No request plugin for this route: the headers go on as they came
        // (no round trip through strings), paired only for response plugins.
        let pairs = match state.filter.responses() {
            Some(_) => headers::to_pairs(&parts.headers),
            None => Vec::new(),
        };
        return Ok((parts.headers.clone(), pairs, None));
    }
    let request = FilterRequest {
        route: kind,
        method: parts.method.to_string(),
        path: parts.uri.path().to_string(),
        headers: headers::to_pairs(&parts.headers),
        body: body.to_vec(),
        model,
    };
    let forwarded = match state.filter.apply(request).await {
        Verdict::Forward(r) => r,
        Verdict::Reject {
            status,
            message,
            headers,
        } => {
            let status = if (400..=599).contains(&status) {
                status
            } else {
                500
            };
            return Err(reject(state, ctx, status, &message, "filter", &headers));
        }
    };
    let out = headers::from_pairs(&forwarded.headers);
    let rewritten = (kind != RouteKind::Other && forwarded.body != body[..])
        .then(|| Bytes::from(forwarded.body));
    Ok((out, forwarded.headers, rewritten))
}

/// What reads the answer: the route's codec (token counts), and the
/// response hooks when plugins look at it.
struct Reader {
    codec: Option<&'static dyn crate::response::Codec>,
    response: Option<crate::response::Armed>,
    /// A Gemini request: Ollama's answer is translated back.
    gemini: Option<crate::gemini::answer::Plan>,
}

/// Stage: forward, then respond.
#[allow(clippy::too_many_arguments)]
async fn forward(
    state: &Arc<AppState>,
    ctx: &mut Ctx,
    target: &str,
    parts: http::request::Parts,
    mut headers: HeaderMap,
    body: body::ReqBody,
    slot: Option<Slot>,
    reader: Reader,
) -> Result<Response<RespBody>, Early> {
    let up = &state.upstream;
    headers::for_upstream(
        &mut headers,
        up.authority(),
        &state.config.allowed_origins,
        &ctx.request_id,
    );
    if let Some(span) = &mut ctx.span {
        let path = target.split('?').next().unwrap_or(target);
        span.start_upstream(&parts.method, path, &mut headers);
    }
    let uri = up.uri(target).map_err(|e| {
        reject(
            state,
            ctx,
            400,
            &format!("bad request target: {e}"),
            "bad_request",
            &[],
        )
    })?;
    let mut req = Request::new(body);
    *req.method_mut() = parts.method;
    *req.uri_mut() = uri;
    *req.headers_mut() = headers;
    let resp = match tokio::time::timeout_at(ctx.deadline, up.send(req)).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            state.metrics.upstream_error("unreachable");
            return Err(reject(
                state,
                ctx,
                502,
                &e.to_string(),
                "upstream_unreachable",
                &[],
            ));
        }
        Err(_) => {
            state.metrics.upstream_error("timeout");
            let msg = format!(
                "Ollama did not answer within limits.request_timeout_s = {} s",
                state.config.limits.request_timeout_s
            );
            return Err(reject(state, ctx, 504, &msg, "upstream_timeout", &[]));
        }
    };
    state.metrics.first_byte(ctx.route, ctx.start.elapsed());
    if ctx.stream && resp.status() == StatusCode::OK {
        // Ollama sends a streamed answer's head with its first token.
        ctx.first_token = Some(Instant::now());
        let model = ctx.model.as_deref();
        state
            .metrics
            .first_token(ctx.route, model, ctx.start.elapsed());
    }
    // The answer's body runs under the request's trace context (token
    // reader, response plugins): see `telemetry::traced`.
    let cx = ctx.span.as_ref().map(|s| {
        s.upstream_answered(resp.status().as_u16());
        s.context().clone()
    });
    let (mut rparts, rbody) = resp.into_parts();
    let mut rbody: RespBody = rbody.map_err(body::BoxError::from).boxed_unsync();
    headers::strip_hop_by_hop(&mut rparts.headers);
    rparts
        .headers
        .insert(headers::REQUEST_ID, ctx.request_id.clone());
    // A JSON array (`streamGenerateContent` without `alt=sse`) is made
    // from the SSE events after every response stage.
    let mut to_array = false;
    if let Some(plan) = &reader.gemini {
        let status = rparts.status.as_u16();
        let ct = HeaderValue::from_static(plan.content_type(status));
        rparts.headers.insert(header::CONTENT_TYPE, ct);
        rparts.headers.remove(header::CONTENT_LENGTH);
        to_array =
            status == 200 && plan.method == crate::gemini::Method::StreamGenerate && !plan.sse;
        let max = state.config.limits.max_body_bytes;
        rbody = plan.translate(status, rbody, max).boxed_unsync();
    }
    let resp = respond(
        state,
        ctx,
        rparts,
        rbody,
        slot,
        reader.codec,
        reader.response,
    )
    .await;
    let resp = crate::telemetry::traced(resp, cx);
    if !to_array {
        return Ok(resp);
    }
    let (mut parts, body) = resp.into_parts();
    if parts.status == StatusCode::OK {
        let json = HeaderValue::from_static("application/json; charset=utf-8");
        parts.headers.insert(header::CONTENT_TYPE, json);
        let max = state.config.limits.max_body_bytes;
        let body = crate::gemini::answer::ToArray::new(body, max).boxed_unsync();
        return Ok(Response::from_parts(parts, body));
    }
    Ok(Response::from_parts(parts, body))
}

/// Stage: respond. Through the response hooks when they look at this
/// answer, else passed through.
async fn respond(
    state: &Arc<AppState>,
    ctx: &mut Ctx,
    rparts: http::response::Parts,
    rbody: RespBody,
    slot: Option<Slot>,
    codec: Option<&'static dyn crate::response::Codec>,
    response: Option<crate::response::Armed>,
) -> Response<RespBody> {
    if let Some(armed) = response {
        // Stage: response filter (response plugins).
        let limits = crate::response::respond::Limits {
            style: ctx.style,
            max_body: state.config.limits.max_body_bytes,
            deadline: ctx.deadline,
            idle_after: state.config.idle_timeout(),
        };
        let (state, ctx) = (state.clone(), take_ctx(ctx));
        let end = move |status| Access { state, ctx, status };
        return armed.respond(rparts, rbody, limits, slot, end).await;
    }
    let framing = Framing::of_content_type(
        rparts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok()),
    );
    let end = Access {
        state: state.clone(),
        ctx: take_ctx(ctx),
        status: rparts.status.as_u16(),
    };
    let (style, deadline) = (end.ctx.style, end.ctx.deadline);
    let tracker = Tracker::new(deadline, state.config.idle_timeout(), style, slot, end);
    let body = Passthrough::new(rbody, framing, codec, tracker);
    Response::from_parts(rparts, body.boxed_unsync())
}

/// An answer the proxy gives itself, in the client's error format.
fn reject(
    state: &AppState,
    ctx: &Ctx,
    status: u16,
    message: &str,
    reason: &'static str,
    extra: &[(String, String)],
) -> Early {
    state.metrics.rejection(reason);
    state
        .metrics
        .request(ctx.route, status, ctx.start.elapsed());
    let body = routes::error_body(ctx.style, status, message);
    access_log(ctx, status, body.len() as u64, Outcome::Completed, None);
    if let Some(span) = &ctx.span {
        span.end(status, reason, false, None);
    }
    let mut resp = Response::new(body::full(body));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    h.insert(headers::REQUEST_ID, ctx.request_id.clone());
    for (n, v) in extra {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(n.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            h.insert(n, v);
        }
    }
    Box::new(resp)
}

fn too_large(state: &AppState, ctx: &Ctx) -> Early {
    let limit = state.config.limits.max_body_bytes;
    let msg = format!("request body is larger than limits.max_body_bytes = {limit} bytes");
    reject(state, ctx, 413, &msg, "body_too_large", &[])
}

fn header_str(h: &HeaderMap, name: HeaderName) -> &str {
    h.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

//! What is known about a request for its access log line and metrics, and
//! the one place both are written when a forwarded answer ends.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use http::Method;
use http::header::HeaderValue;
use serde::{Serialize, Serializer};
use tokio::time::Instant;
use tracing::Level;

use crate::pipeline::AppState;
use crate::response_body::{OnEnd, Outcome};
use crate::routes::ApiStyle;

/// What the access log and metrics need to know about a request.
pub(crate) struct Ctx {
    pub(crate) start: Instant,
    pub(crate) deadline: Instant,
    pub(crate) style: ApiStyle,
    pub(crate) request_id: HeaderValue,
    pub(crate) trace: Option<String>,
    pub(crate) method: Method,
    pub(crate) path_and_query: String,
    pub(crate) route: &'static str,
    pub(crate) user_agent: String,
    pub(crate) remote: SocketAddr,
    pub(crate) request_size: u64,
    pub(crate) model: Option<String>,
    /// The answer streams (a generating route asked to stream).
    pub(crate) stream: bool,
    /// When a streamed answer's first token arrived (its 200 response head).
    pub(crate) first_token: Option<Instant>,
    /// The request's spans, when traces are on.
    pub(crate) span: Option<crate::telemetry::RequestTrace>,
}

pub(crate) fn take_ctx(ctx: &mut Ctx) -> Ctx {
    Ctx {
        start: ctx.start,
        deadline: ctx.deadline,
        style: ctx.style,
        request_id: ctx.request_id.clone(),
        trace: ctx.trace.take(),
        method: ctx.method.clone(),
        path_and_query: std::mem::take(&mut ctx.path_and_query),
        route: ctx.route,
        user_agent: std::mem::take(&mut ctx.user_agent),
        remote: ctx.remote,
        request_size: ctx.request_size,
        model: ctx.model.take(),
        stream: ctx.stream,
        first_token: ctx.first_token,
        span: ctx.span.take(),
    }
}

/// Counts and logs a forwarded request when its body ends.
pub(crate) struct Access {
    pub(crate) state: Arc<AppState>,
    pub(crate) ctx: Ctx,
    pub(crate) status: u16,
}

impl OnEnd for Access {
    fn on_end(&mut self, outcome: Outcome, bytes: u64, tokens: Option<(u64, u64)>) {
        let m = &self.state.metrics;
        m.request(self.ctx.route, self.status, self.ctx.start.elapsed());
        let (route, model) = (self.ctx.route, self.ctx.model.as_deref());
        if let Some((p, c)) = tokens {
            m.tokens(route, model, p, c);
            if let Some(first) = self.ctx.first_token
                && outcome == Outcome::Completed
            {
                m.generation(route, model, first.elapsed(), c);
            }
        }
        let broke = matches!(outcome, Outcome::UpstreamBroke | Outcome::TimedOut);
        if let Some(span) = &self.ctx.span {
            span.end(self.status, outcome.as_str(), broke, tokens);
        }
        match outcome {
            Outcome::ClientGone => m.client_disconnect(),
            Outcome::UpstreamBroke => m.upstream_error("broke"),
            Outcome::TimedOut => m.upstream_error("stalled"),
            Outcome::Completed => {}
        }
        access_log(&self.ctx, self.status, bytes, outcome, tokens);
    }
}

pub(crate) fn access_log(
    ctx: &Ctx,
    status: u16,
    bytes: u64,
    outcome: Outcome,
    tokens: Option<(u64, u64)>,
) {
    let warn = status >= 500 || matches!(outcome, Outcome::UpstreamBroke | Outcome::TimedOut);
    // Nothing below is built for a line the filter drops (`RUST_LOG=warn`).
    let enabled = if warn {
        tracing::enabled!(target: "kiln_proxy::access", Level::WARN)
    } else {
        tracing::enabled!(target: "kiln_proxy::access", Level::INFO)
    };
    if !enabled {
        return;
    }
    let http_request = HttpRequest {
        latency: ctx.start.elapsed(),
        protocol: "HTTP/1.1",
        remote_ip: ctx.remote.ip(),
        request_method: ctx.method.as_str(),
        request_size: ctx.request_size,
        request_url: &ctx.path_and_query,
        response_size: bytes,
        status,
        user_agent: &ctx.user_agent,
    };
    let (prompt, completion) = tokens.unwrap_or((0, 0));
    let request_id = ctx.request_id.to_str().unwrap_or("");
    // With traces on, the line names the request's span; else only the
    // client's trace ID is known.
    let ids = ctx.span.as_ref().map(|s| s.log_ids());
    let (trace, span_id, sampled) = match &ids {
        Some(ids) => (
            ids.trace(),
            ids.span(),
            if ids.sampled { "true" } else { "false" },
        ),
        None => (ctx.trace.as_deref().unwrap_or_default(), "", ""),
    };
    macro_rules! log {
        ($level:ident) => {
            tracing::$level!(
                target: "kiln_proxy::access",
                http_request = %http_request,
                trace,
                span_id,
                trace_sampled = sampled,
                request_id,
                route = ctx.route,
                model = ctx.model.as_deref().unwrap_or(""),
                outcome = outcome.as_str(),
                prompt_tokens = prompt,
                completion_tokens = completion,
                "{} {} {}", ctx.method, ctx.path_and_query, status
            )
        };
    }
    if warn {
        log!(warn);
    } else {
        log!(info);
    }
}

/// Cloud Logging's `httpRequest` object, written when the line is: its
/// fields in the order (sorted) and types (sizes as strings) of the
/// `serde_json::json!` map it replaces, so the line is unchanged, without a
/// map and a `String` per field on every request.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct HttpRequest<'a> {
    #[serde(serialize_with = "seconds")]
    latency: Duration,
    protocol: &'static str,
    remote_ip: IpAddr,
    request_method: &'a str,
    #[serde(serialize_with = "as_string")]
    request_size: u64,
    request_url: &'a str,
    #[serde(serialize_with = "as_string")]
    response_size: u64,
    status: u16,
    user_agent: &'a str,
}

impl fmt::Display for HttpRequest<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&serde_json::to_string(self).map_err(|_| fmt::Error)?)
    }
}

fn as_string<S: Serializer>(n: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(n)
}

fn seconds<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&format_args!("{:.6}s", d.as_secs_f64()))
}

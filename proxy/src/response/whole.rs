//! Ollama's answer through the response hooks, once it is known: streamed
//! answers (NDJSON, SSE) become a [`FilteredStream`]; an answer that does not
//! stream is read whole (at most `limits.max_body_bytes`), passed to the
//! hooks as one chunk, and sent rewritten or replaced by the hooks' error.

use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::time::Instant;

use super::chunk::{Chunk, Kind};
use super::stream::{FilteredStream, StreamSetup};
use super::{Armed, Ended, ResponseOutcome};
use crate::body::{self, Framing, OnEnd, Outcome, ReadError, RespBody};
use crate::framing::Format;
use crate::headers::REQUEST_ID;
use crate::routes::{ApiStyle, error_body};

/// The proxy's limits that apply to a filtered answer.
pub struct Limits {
    pub style: ApiStyle,
    pub max_body: usize,
    pub deadline: Instant,
    pub idle_after: Duration,
}

impl Armed {
    /// Builds the client's response from Ollama's `parts` and `body`.
    /// `end` makes the access-log/metrics recorder for the final status.
    pub async fn respond<E: OnEnd + Unpin + 'static>(
        self,
        mut parts: http::response::Parts,
        body: Incoming,
        limits: Limits,
        guard: Option<Box<dyn Send>>,
        end: impl FnOnce(u16) -> E,
    ) -> Response<RespBody> {
        let Armed {
            mut hooks,
            mut ctx,
            shape,
            hide_usage_chunk,
        } = self;
        let status = parts.status.as_u16();
        ctx.status = status;
        let content_type = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        let format = match Framing::of_content_type(content_type) {
            Framing::Ndjson => Some(Format::Ndjson),
            Framing::Sse => Some(Format::Sse),
            Framing::Opaque => None,
        };
        if let Some(format) = format {
            ctx.stream = true;
            // Rewritten chunks change the length.
            parts.headers.remove(header::CONTENT_LENGTH);
            let setup = StreamSetup {
                format,
                shape,
                style: limits.style,
                max_chunk: limits.max_body,
                deadline: limits.deadline,
                idle_after: limits.idle_after,
                hide_usage_chunk,
            };
            let stream = FilteredStream::new(body, setup, hooks, ctx, guard, end(status));
            return Response::from_parts(parts, stream.boxed_unsync());
        }

        ctx.stream = false;
        let read = tokio::time::timeout_at(
            limits.deadline,
            body::read_limited(body, limits.max_body, limits.idle_after),
        )
        .await;
        let bytes = match read {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => {
                let (status, outcome, message) = match e {
                    ReadError::TooLarge(n) => (
                        502,
                        ResponseOutcome::UpstreamFailed,
                        format!(
                            "Ollama's answer is larger than limits.max_body_bytes = {n} bytes, and response plugins read \
                             answers that do not stream whole; raise the limit or ask for a streamed answer"
                        ),
                    ),
                    ReadError::Idle(d) => (
                        504,
                        ResponseOutcome::TimedOut,
                        format!("Ollama sent nothing for {d:?} (limits.idle_timeout_s)"),
                    ),
                    ReadError::Broken(m) => (
                        502,
                        ResponseOutcome::UpstreamFailed,
                        format!("Ollama's answer broke off: {m}"),
                    ),
                };
                hooks.on_complete(&ctx, outcome, None);
                return error_response(&parts, limits.style, status, &message, &[], end, outcome);
            }
            Err(_) => {
                let message = "request timed out (limits.request_timeout_s)";
                hooks.on_complete(&ctx, ResponseOutcome::TimedOut, None);
                return error_response(
                    &parts,
                    limits.style,
                    504,
                    message,
                    &[],
                    end,
                    ResponseOutcome::TimedOut,
                );
            }
        };

        let mut chunk = [Chunk::new(bytes, Kind::Whole, shape)];
        let usage = chunk[0].usage();
        let tokens = usage.map(|u| (u.prompt_tokens, u.completion_tokens));
        match hooks.on_chunks(&ctx, &mut chunk) {
            Ok(()) => {
                hooks.on_complete(&ctx, ResponseOutcome::Completed, usage);
                let [mut chunk] = chunk;
                // What the hooks changed takes `logprobs` and `context` with it.
                let changed = chunk.changed_by_hooks();
                chunk.drop_token_fields(changed);
                let body = chunk.into_whole_body();
                parts
                    .headers
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
                end(status).on_end(Outcome::Completed, body.len() as u64, tokens);
                drop(guard);
                Response::from_parts(parts, body::full(body))
            }
            Err(Ended { stop, .. }) => {
                hooks.on_complete(&ctx, ResponseOutcome::EndedByPlugin, usage);
                tracing::warn!(request_id = %ctx.request_id, reason = %stop.message, "a response plugin refused the answer");
                let status = if (400..=599).contains(&stop.status) {
                    stop.status
                } else {
                    500
                };
                error_response(
                    &parts,
                    limits.style,
                    status,
                    &stop.message,
                    &stop.headers,
                    end,
                    ResponseOutcome::EndedByPlugin,
                )
            }
        }
    }
}

/// An error answer in the client's format, instead of Ollama's answer.
fn error_response<E: OnEnd>(
    upstream: &http::response::Parts,
    style: ApiStyle,
    status: u16,
    message: &str,
    extra: &[(String, String)],
    end: impl FnOnce(u16) -> E,
    outcome: ResponseOutcome,
) -> Response<RespBody> {
    let body = Bytes::from(error_body(style, status, message));
    let outcome = match outcome {
        ResponseOutcome::TimedOut => Outcome::TimedOut,
        ResponseOutcome::UpstreamFailed => Outcome::UpstreamBroke,
        _ => Outcome::Completed,
    };
    end(status).on_end(outcome, body.len() as u64, None);
    let mut resp = Response::new(body::full(body));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    if let Some(id) = upstream.headers.get(REQUEST_ID) {
        h.insert(REQUEST_ID, id.clone());
    }
    for (n, v) in extra {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(n.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            h.insert(n, v);
        }
    }
    resp
}

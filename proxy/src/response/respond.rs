//! The client's response to an armed request, once Ollama's answer is
//! known: streamed answers (NDJSON, SSE) become a [`FilteredStream`]; an
//! answer that does not stream is read whole (at most
//! `limits.max_body_bytes`), passed to the hooks as one chunk, and sent
//! rewritten or replaced by the hooks' error.

use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::BodyExt;
use tokio::time::Instant;

use super::answer::{Answer, Output};
use super::stream::FilteredStream;
use super::{Armed, ResponseOutcome};
use crate::body::{self, ReadError, RespBody};
use crate::framing::Format;
use crate::headers::REQUEST_ID;
use crate::response_body::{Framing, OnEnd, Outcome, Slot, Tracker};
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
        mut self,
        mut parts: http::response::Parts,
        body: crate::body::RespBody,
        limits: Limits,
        slot: Option<Slot>,
        end: impl FnOnce(u16) -> E,
    ) -> Response<RespBody> {
        let status = parts.status.as_u16();
        self.ctx.status = status;
        let content_type = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        // A streamed request's successful answer is framed as its API
        // streams, whatever Content-Type the upstream claims: read whole, a
        // stream is no answer the codec can read, so no hook would see its
        // text (a hostile upstream could label a stream JSON to slip past
        // the response plugins).
        let format = match Framing::of_content_type(content_type) {
            Framing::Ndjson => Some(Format::Ndjson),
            Framing::Sse => Some(Format::Sse),
            Framing::Opaque if status == 200 && self.ctx.stream => Some(self.codec.stream_format()),
            Framing::Opaque => None,
        };
        if let Some(format) = format {
            self.ctx.stream = true;
            // Rewritten chunks change the length.
            parts.headers.remove(header::CONTENT_LENGTH);
            let kind = match format {
                Format::Ndjson => super::Kind::Line,
                Format::Sse => super::Kind::Event,
            };
            let tracker = Tracker::new(
                limits.deadline,
                limits.idle_after,
                limits.style,
                slot,
                end(status),
            );
            let answer = Answer::new(self, kind);
            let stream = FilteredStream::new(body, format, limits.max_body, answer, tracker);
            return Response::from_parts(parts, stream.boxed_unsync());
        }

        self.ctx.stream = false;
        let mut answer = Answer::new(self, super::Kind::Whole);
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
                answer.complete(outcome);
                return error_response(&parts, limits.style, status, &message, &[], end, outcome);
            }
            Err(_) => {
                let message = "request timed out (limits.request_timeout_s)";
                answer.complete(ResponseOutcome::TimedOut);
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

        answer.push(bytes);
        let mut out = Output::default();
        match answer.run(&mut out) {
            Ok(()) => {
                answer.complete(ResponseOutcome::Completed);
                let body = out.freeze();
                parts
                    .headers
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
                let tokens = answer
                    .usage()
                    .map(|u| (u.prompt_tokens, u.completion_tokens));
                end(status).on_end(Outcome::Completed, body.len() as u64, tokens);
                drop(slot);
                Response::from_parts(parts, body::full(body))
            }
            Err(stop) => {
                answer.complete(ResponseOutcome::EndedByPlugin);
                tracing::warn!(request_id = %answer.ctx.request_id, reason = %stop.message, "a response plugin refused the answer");
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

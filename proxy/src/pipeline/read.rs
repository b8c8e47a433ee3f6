//! Stage: read. An inference body read whole under `limits.max_body_bytes`,
//! before the request deadline and within the bytes buffered across all
//! requests, and decoded where Ollama decodes it (zstd, gzip).

use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderMap};
use hyper::body::Incoming;

use super::{AppState, Early, header_str, reject, too_large};
use crate::access::Ctx;
use crate::request_body::{self, ReadError};
use crate::routes::Route;

/// Stage: read. The body held in memory (decoded, when it came compressed),
/// and its bytes' hold on the shared budget.
pub(super) async fn read_body(
    state: &Arc<AppState>,
    ctx: &mut Ctx,
    route: Route,
    headers: &mut HeaderMap,
    body: Incoming,
) -> Result<(Bytes, request_body::Reservation), Early> {
    let l = &state.config.limits;
    let limits = request_body::Limits {
        max_body: l.max_body_bytes,
        idle: state.config.idle_timeout(),
        deadline: ctx.deadline,
        timeout_s: l.request_timeout_s,
    };
    let declared = header_str(headers, header::CONTENT_LENGTH).parse().ok();
    let (body, mut reserved) =
        match request_body::read(body, declared, &limits, &state.body_budget).await {
            Ok(b) => b,
            Err(ReadError::TooLarge(_)) => return Err(too_large(state, ctx)),
            Err(e @ (ReadError::Idle(_) | ReadError::Deadline(_))) => {
                return Err(reject(state, ctx, 408, &e.to_string(), "slow_body", &[]));
            }
            Err(e @ ReadError::Busy(_)) => return Err(buffers_full(state, ctx, &e)),
            Err(e) => return Err(reject(state, ctx, 400, &e.to_string(), "bad_body", &[])),
        };
    ctx.request_size = body.len() as u64;
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    use crate::decompress::{self, DecodeError};
    let decoded = match decompress::decode(route.kind, encoding.as_deref(), &body, l.max_body_bytes)
    {
        Ok(None) => return Ok((body, reserved)),
        Ok(Some(decoded)) => decoded,
        Err(e @ DecodeError::TooLarge(_)) => {
            return Err(reject(
                state,
                ctx,
                413,
                &e.to_string(),
                "body_too_large",
                &[],
            ));
        }
        Err(e @ DecodeError::Unsupported(..)) => {
            return Err(reject(
                state,
                ctx,
                415,
                &e.to_string(),
                "content_encoding",
                &[],
            ));
        }
        Err(e) => return Err(reject(state, ctx, 400, &e.to_string(), "bad_body", &[])),
    };
    if !reserved.grow(decoded.len()) {
        return Err(buffers_full(
            state,
            ctx,
            &ReadError::Busy(l.max_buffered_bytes),
        ));
    }
    // Ollama gets (and plugins see) the decoded body.
    headers.remove(header::CONTENT_ENCODING);
    Ok((Bytes::from(decoded), reserved))
}

/// 503 with Retry-After: the bodies held across requests reached
/// `limits.max_buffered_bytes`.
fn buffers_full(state: &AppState, ctx: &Ctx, e: &ReadError) -> Early {
    let retry = [("retry-after".to_string(), "1".to_string())];
    reject(state, ctx, 503, &e.to_string(), "bodies_buffered", &retry)
}

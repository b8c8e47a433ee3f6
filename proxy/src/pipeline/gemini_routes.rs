//! The Gemini routes' steps that need the pipeline's context: a request's
//! view from its path and body, and the model list (`GET models`,
//! `GET models/{m}`) answered from Ollama's `/api/tags`. The translation
//! itself is `crate::gemini`.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};

use super::{AppState, Early, filter, reject};
use crate::access::{Ctx, access_log};
use crate::body::{self, RespBody};
use crate::gemini::stage as gemini;
use crate::headers;
use crate::request_view::InferenceView;
use crate::response_body::Outcome;
use crate::routes::{Route, RouteKind};

pub(super) fn gemini_view(
    state: &Arc<AppState>,
    ctx: &mut Ctx,
    call: &gemini::Call,
    kind: RouteKind,
    body: &[u8],
) -> Result<InferenceView, Early> {
    ctx.model = Some(call.model.clone());
    call.view(kind, body)
        .map_err(|msg| reject(state, ctx, 400, msg, "bad_request", &[]))
}

/// `GET models` and `GET models/{m}` of the Gemini API, from Ollama's
/// `/api/tags` (small: read whole, under `limits.max_body_bytes`), with
/// the head filtered as on every other route.
pub(super) async fn gemini_models(
    state: &Arc<AppState>,
    ctx: &mut Ctx,
    route: Route,
    parts: http::request::Parts,
) -> Result<Response<RespBody>, Early> {
    let Ok(_slot) = state.other_slots.clone().try_acquire_owned() else {
        let msg = "server busy: too many non-inference requests (limits.max_other_in_flight); retry shortly";
        let retry = [("retry-after".to_string(), "1".to_string())];
        return Err(reject(state, ctx, 429, msg, "other_busy", &retry));
    };
    let (mut headers, ..) = filter(state, ctx, route.kind, &parts, &Bytes::new(), None).await?;
    let (up, config) = (&state.upstream, &state.config);
    headers::for_upstream(
        &mut headers,
        up.authority(),
        &config.allowed_origins,
        &ctx.request_id,
    );
    let (max, idle) = (config.limits.max_body_bytes, config.idle_timeout());
    let tags = match gemini::fetch_tags(up, headers, ctx.deadline, max, idle).await {
        Ok(tags) => tags,
        Err((status, msg, reason)) => {
            if status != 500 {
                let kind = if status == 504 {
                    "timeout"
                } else {
                    "unreachable"
                };
                state.metrics.upstream_error(kind);
            }
            return Err(reject(state, ctx, status, &msg, reason, &[]));
        }
    };
    let wanted = crate::gemini::models_path(parts.uri.path()).flatten();
    let (status, out) =
        crate::gemini::models::answer(&config.gemini.aliases, wanted.as_deref(), &tags);
    state
        .metrics
        .request(ctx.route, status, ctx.start.elapsed());
    access_log(ctx, status, out.len() as u64, Outcome::Completed, None);
    if let Some(span) = &ctx.span {
        span.end(status, Outcome::Completed.as_str(), false, None);
    }
    let mut resp = Response::new(body::full(out));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    h.insert(headers::REQUEST_ID, ctx.request_id.clone());
    Ok(resp)
}

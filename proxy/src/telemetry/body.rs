//! A response body that polls under its request's trace context, so what
//! runs while the answer streams (the token reader, response plugins, log
//! lines) belongs to the request's span.

use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use bytes::Bytes;
use http::Response;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};
use opentelemetry::Context;

use crate::body::{BoxError, RespBody};

/// `resp` with its body polled under `cx`; unchanged without one.
pub fn traced(resp: Response<RespBody>, cx: Option<Context>) -> Response<RespBody> {
    match cx {
        None => resp,
        Some(cx) => resp.map(|inner| TracedBody { inner, cx }.boxed_unsync()),
    }
}

struct TracedBody {
    inner: RespBody,
    cx: Context,
}

impl Body for TracedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        task: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let _attached = this.cx.clone().attach();
        Pin::new(&mut this.inner).poll_frame(task)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

//! Body types, a body rewritten as it streams, and reading a whole body
//! under a size limit and an idle timeout (an inference request's, an
//! answer response plugins read whole).

use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::{Body, Frame};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type ReqBody = UnsyncBoxBody<Bytes, BoxError>;
pub type RespBody = UnsyncBoxBody<Bytes, BoxError>;

pub fn full(bytes: impl Into<Bytes>) -> UnsyncBoxBody<Bytes, BoxError> {
    http_body_util::Full::new(bytes.into())
        .map_err(|e| -> BoxError { match e {} })
        .boxed_unsync()
}

/// How a [`Transformed`] body rewrites its inner body: bytes out for each
/// piece of data in (empty: nothing to send yet), and what to send when the
/// inner body ends.
pub trait Transform {
    fn data(&mut self, data: Bytes) -> Result<Vec<u8>, BoxError>;
    fn end(&mut self) -> Result<Vec<u8>, BoxError>;
}

/// `inner`'s data rewritten by a [`Transform`] as it arrives, one frame out
/// per frame in that produced something. (http-body-util's `MapFrame`
/// cannot hold a frame back or add one at the end.)
pub struct Transformed<T> {
    inner: RespBody,
    transform: T,
    ended: bool,
}

impl<T: Transform> Transformed<T> {
    pub fn new(inner: RespBody, transform: T) -> Self {
        Transformed {
            inner,
            transform,
            ended: false,
        }
    }

    /// The transform, for tests that drive it by hand.
    #[cfg(test)]
    pub(crate) fn transform_mut(&mut self) -> &mut T {
        &mut self.transform
    }
}

impl<T: Transform + Unpin> Body for Transformed<T> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        while !this.ended {
            let out = match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => this.transform.data(data)?,
                    Err(_) => continue,
                },
                None => {
                    this.ended = true;
                    this.transform.end()?
                }
            };
            if !out.is_empty() {
                return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))));
            }
        }
        Poll::Ready(None)
    }

    fn is_end_stream(&self) -> bool {
        self.ended
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("request body is larger than the limit of {0} bytes")]
    TooLarge(usize),
    #[error("client sent no body data for {0:?}")]
    Idle(Duration),
    #[error("cannot read the request body: {0}")]
    Broken(String),
}

/// Reads a whole (small, inference) request body: at most `limit` bytes,
/// with at most `idle` between pieces, so a slow client cannot hold a slot.
pub async fn read_limited<B>(mut body: B, limit: usize, idle: Duration) -> Result<Bytes, ReadError>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let mut buf = BytesMut::new();
    loop {
        let frame = match tokio::time::timeout(idle, body.frame()).await {
            Err(_) => return Err(ReadError::Idle(idle)),
            Ok(None) => return Ok(buf.freeze()),
            Ok(Some(Err(e))) => return Err(ReadError::Broken(e.to_string())),
            Ok(Some(Ok(frame))) => frame,
        };
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > limit {
                return Err(ReadError::TooLarge(limit));
            }
            buf.extend_from_slice(&data);
        }
    }
}

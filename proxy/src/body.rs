//! Body types, and reading a whole body under a size limit and an idle
//! timeout (an inference request's, an answer response plugins read whole).

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type ReqBody = UnsyncBoxBody<Bytes, BoxError>;
pub type RespBody = UnsyncBoxBody<Bytes, BoxError>;

pub fn full(bytes: impl Into<Bytes>) -> UnsyncBoxBody<Bytes, BoxError> {
    http_body_util::Full::new(bytes.into())
        .map_err(|e| -> BoxError { match e {} })
        .boxed_unsync()
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

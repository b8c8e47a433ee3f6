//! Reading an inference request's body into memory, where policy can see it
//! whole: at most `limits.max_body_bytes`, at most `limits.idle_timeout_s`
//! between pieces, all of it before the request deadline (a body trickled a
//! byte at a time must not hold a connection past `request_timeout_s`), and
//! within a budget of bytes shared by every request (`limits.max_buffered_bytes`),
//! so that many stalled uploads cannot take the proxy's memory.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::time::Instant;

/// The bytes of request bodies held in memory across all requests.
pub struct BodyBudget {
    used: AtomicUsize,
    max: usize,
}

impl BodyBudget {
    pub fn new(max: usize) -> Arc<BodyBudget> {
        Arc::new(BodyBudget {
            used: AtomicUsize::new(0),
            max,
        })
    }

    pub fn used(&self) -> usize {
        self.used.load(Ordering::SeqCst)
    }

    /// An empty reservation, grown as a body arrives.
    pub fn reserve(self: &Arc<Self>) -> Reservation {
        Reservation {
            budget: self.clone(),
            bytes: 0,
        }
    }
}

/// Bytes of one request held against the [`BodyBudget`], given back when
/// the request no longer holds them (dropped after the forward).
pub struct Reservation {
    budget: Arc<BodyBudget>,
    bytes: usize,
}

impl Reservation {
    /// Takes `n` more bytes; false (and nothing taken) when the budget is spent.
    pub fn grow(&mut self, n: usize) -> bool {
        let max = self.budget.max;
        let taken = self
            .budget
            .used
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |u| {
                u.checked_add(n).filter(|t| *t <= max)
            });
        if taken.is_ok() {
            self.bytes += n;
        }
        taken.is_ok()
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Ordering::SeqCst);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("request body is larger than limits.max_body_bytes = {0} bytes")]
    TooLarge(usize),
    #[error("client sent no body data for {0:?} (limits.idle_timeout_s)")]
    Idle(Duration),
    #[error(
        "the request body did not arrive within limits.request_timeout_s = {0} s; send it faster or in one piece"
    )]
    Deadline(u64),
    #[error(
        "server busy: request bodies waiting to be checked fill limits.max_buffered_bytes = {0} bytes; retry shortly"
    )]
    Busy(usize),
    #[error("cannot read the request body: {0}")]
    Broken(String),
}

/// The limits one read runs under.
pub struct Limits {
    pub max_body: usize,
    pub idle: Duration,
    pub deadline: Instant,
    /// `limits.request_timeout_s`, for the message.
    pub timeout_s: u64,
}

/// Reads a whole request body under `limits`, holding its bytes against
/// `budget`. A declared `Content-Length` is reserved before anything is
/// read, so a body that cannot fit is refused at once, not after its upload.
pub async fn read(
    mut body: Incoming,
    declared: Option<u64>,
    limits: &Limits,
    budget: &Arc<BodyBudget>,
) -> Result<(Bytes, Reservation), ReadError> {
    let mut reserved = budget.reserve();
    let upfront = declared.map_or(0, |n| n.min(limits.max_body as u64) as usize);
    if !reserved.grow(upfront) {
        return Err(ReadError::Busy(budget.max));
    }
    let mut buf = BytesMut::new();
    let read = async {
        loop {
            let frame = match tokio::time::timeout(limits.idle, body.frame()).await {
                Err(_) => return Err(ReadError::Idle(limits.idle)),
                Ok(None) => return Ok(()),
                Ok(Some(Err(e))) => return Err(ReadError::Broken(e.to_string())),
                Ok(Some(Ok(frame))) => frame,
            };
            if let Ok(data) = frame.into_data() {
                if buf.len() + data.len() > limits.max_body {
                    return Err(ReadError::TooLarge(limits.max_body));
                }
                let beyond = (buf.len() + data.len()).saturating_sub(reserved.bytes);
                if !reserved.grow(beyond) {
                    return Err(ReadError::Busy(budget.max));
                }
                buf.extend_from_slice(&data);
            }
        }
    };
    match tokio::time::timeout_at(limits.deadline, read).await {
        Err(_) => Err(ReadError::Deadline(limits.timeout_s)),
        Ok(Err(e)) => Err(e),
        Ok(Ok(())) => Ok((buf.freeze(), reserved)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_is_shared_and_given_back() {
        let budget = BodyBudget::new(10);
        let mut a = budget.reserve();
        let mut b = budget.reserve();
        assert!(a.grow(6));
        assert!(!b.grow(5), "6 + 5 is over 10");
        assert!(b.grow(4));
        assert_eq!(budget.used(), 10);
        drop(a);
        assert_eq!(budget.used(), 4);
        assert!(b.grow(6));
        drop(b);
        assert_eq!(budget.used(), 0);
    }
}

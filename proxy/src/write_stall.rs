//! A client that stops reading must not hold its admission slot (and
//! Ollama's) forever. While the socket's send buffer is full, hyper waits in
//! `poll_write` and polls nothing else: not the response body, whose timers
//! would end the request. So the connection's stream itself gives up: a
//! write that cannot make progress fails at the earlier of
//! `idle_timeout_s` from when it started waiting and the current request's
//! deadline. hyper then closes the connection, which drops the response
//! body, frees the slot and cancels the generation upstream.
//!
//! Written by hand: tokio-io-timeout has a fixed write timeout, not one that
//! also follows each request's deadline on a keep-alive connection.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// The deadline of the request a connection is answering, shared by the
/// connection's stream and its request handler (HTTP/1 answers one request
/// at a time). Stored as milliseconds after the connection's start; 0: none.
#[derive(Clone)]
pub struct RequestDeadline {
    origin: Instant,
    at_ms: Arc<AtomicU64>,
}

impl Default for RequestDeadline {
    fn default() -> Self {
        RequestDeadline {
            origin: Instant::now(),
            at_ms: Arc::new(AtomicU64::new(0)),
        }
    }
}

impl RequestDeadline {
    /// The request now being answered must end by `at`.
    pub fn set(&self, at: Instant) {
        let ms = at.saturating_duration_since(self.origin).as_millis() as u64;
        self.at_ms.store(ms.max(1), Ordering::Relaxed);
    }

    fn get(&self) -> Option<Instant> {
        match self.at_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(self.origin + Duration::from_millis(ms)),
        }
    }
}

/// A stream whose writes give up when stalled (see the module docs).
pub struct WriteStallGuard<S> {
    inner: S,
    idle: Duration,
    deadline: RequestDeadline,
    /// Armed while a write waits for the client to read.
    stall: Option<Pin<Box<Sleep>>>,
}

impl<S> WriteStallGuard<S> {
    pub fn new(inner: S, idle: Duration, deadline: RequestDeadline) -> Self {
        WriteStallGuard {
            inner,
            idle,
            deadline,
            stall: None,
        }
    }

    /// Called when a write returned Pending: fails once the stall has lasted
    /// too long, else makes sure the task is woken when it will have.
    fn check_stall(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let stall = self.stall.get_or_insert_with(|| {
            let mut until = Instant::now() + self.idle;
            if let Some(d) = self.deadline.get() {
                until = until.min(d);
            }
            Box::pin(tokio::time::sleep_until(until))
        });
        ready!(stall.as_mut().poll(cx));
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the client stopped reading the response (idle_timeout_s or request_timeout_s)",
        )))
    }

    fn progress<T>(&mut self, r: Poll<io::Result<T>>, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        match r {
            Poll::Pending => match self.check_stall(cx) {
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                _ => Poll::Pending,
            },
            done => {
                self.stall = None;
                done
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteStallGuard<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteStallGuard<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.progress(r, cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.progress(r, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        self.progress(r, cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// A pipe whose reader never reads: writes stall once its buffer is full.
    #[tokio::test(start_paused = true)]
    async fn a_stalled_write_fails_at_the_idle_timeout() {
        let (client, _server) = tokio::io::duplex(64);
        let mut s =
            WriteStallGuard::new(client, Duration::from_secs(5), RequestDeadline::default());
        let started = Instant::now();
        let err = s.write_all(&[0u8; 1024]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn the_request_deadline_comes_first_when_it_is_earlier() {
        let (client, _server) = tokio::io::duplex(64);
        let deadline = RequestDeadline::default();
        deadline.set(Instant::now() + Duration::from_secs(2));
        let mut s = WriteStallGuard::new(client, Duration::from_secs(60), deadline);
        let started = Instant::now();
        assert!(s.write_all(&[0u8; 1024]).await.is_err());
        assert_eq!(started.elapsed(), Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_reader_that_keeps_up_is_never_cut() {
        let (client, mut server) = tokio::io::duplex(64);
        let mut s =
            WriteStallGuard::new(client, Duration::from_secs(1), RequestDeadline::default());
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 16];
            let mut total = 0;
            while total < 4096 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                total += tokio::io::AsyncReadExt::read(&mut server, &mut buf)
                    .await
                    .unwrap();
            }
        });
        // 4 KiB through a 64-byte pipe read 16 bytes per 100 ms takes ~25 s
        // in all, but no single write waits a whole second.
        s.write_all(&[0u8; 4096]).await.unwrap();
        reader.await.unwrap();
    }
}

//! The listener: HTTP/1 connections with a header timeout (slow-loris and
//! idle keep-alive) and a write-stall guard (a client that stops reading),
//! Ollama supervision beside it, and a graceful drain on
//! shutdown — stop accepting, let in-flight streams finish within
//! `shutdown_grace_s`, then stop Ollama.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::admission::Admission;
use crate::config::Config;
use crate::filter::RequestFilter;
use crate::metrics::Metrics;
use crate::pipeline::{self, AppState};
use crate::readiness::Readiness;
use crate::supervisor;
use crate::upstream::Upstream;
use crate::write_stall::{RequestDeadline, WriteStallGuard};

/// A proxy serving in the background; see [`start`].
pub struct RunningProxy {
    addr: SocketAddr,
    state: Arc<AppState>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl RunningProxy {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn state(&self) -> &Arc<AppState> {
        &self.state
    }

    /// Drains and stops; returns the server's error if it failed on its own.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        self.task.await.context("proxy task panicked")?
    }

    /// Waits until the proxy stops by itself (Ollama could not be kept running)
    /// or `signal` resolves (then drains and stops).
    pub async fn run_until(
        mut self,
        signal: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<()> {
        tokio::select! {
            r = &mut self.task => r.context("proxy task panicked")?,
            _ = signal => self.shutdown().await,
        }
    }
}

/// Binds the listener and starts serving. The filter stage is given whole,
/// so the caller decides what it is (no plugins: [`crate::filter::NoFilters`]).
pub async fn start(config: Config, filter: Arc<dyn RequestFilter>) -> anyhow::Result<RunningProxy> {
    config.validate()?;
    crate::telemetry::init(&config.tracing).await?;
    let listen = config.listen_addr(std::env::var("PORT").ok().as_deref())?;
    let upstream = Upstream::new(&config.upstream_uri()?);
    let listener = TcpListener::bind(listen).await.with_context(|| {
        format!(
            "cannot listen on {listen}; is another process using the port? (set listen / --listen)"
        )
    })?;
    let addr = listener.local_addr()?;
    let state = Arc::new(AppState {
        admission: Admission::new(config.limits.max_in_flight, config.limits.max_queue),
        body_budget: crate::request_body::BodyBudget::new(config.limits.max_buffered_bytes),
        other_slots: Arc::new(tokio::sync::Semaphore::new(
            config.limits.max_other_in_flight,
        )),
        upstream,
        filter,
        metrics: Metrics::default(),
        readiness: Readiness::default(),
        config,
    });
    let (stop, stop_rx) = watch::channel(false);
    let task = tokio::spawn(serve(listener, state.clone(), stop_rx));
    tracing::info!(%addr, upstream = %state.upstream.url(), spawn_ollama = state.config.ollama.spawn, "kiln-proxy listening");
    Ok(RunningProxy {
        addr,
        state,
        stop,
        task,
    })
}

async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let (stop_ollama, stop_ollama_rx) = watch::channel(false);
    let mut supervisor = tokio::spawn(supervisor::supervise(state.clone(), stop_ollama_rx));
    let mut supervisor_done = false;
    let graceful = GracefulShutdown::new();
    let mut conns = JoinSet::new();
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(state.config.limits.header_timeout_s))
        .keep_alive(true);

    let mut failure = None;
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, remote) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let st = state.clone();
                let deadline = RequestDeadline::default();
                let stream = WriteStallGuard::new(stream, state.config.idle_timeout(), deadline.clone());
                let service = service_fn(move |req| {
                    let st = st.clone();
                    deadline.set(tokio::time::Instant::now() + st.config.request_timeout());
                    async move { Ok::<_, Infallible>(pipeline::handle(st, req, remote).await) }
                });
                let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
                conns.spawn(async move {
                    let _ = conn.await;
                });
                while conns.try_join_next().is_some() {}
            }
            r = &mut supervisor, if !supervisor_done => {
                supervisor_done = true;
                match r {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => { failure = Some(anyhow::Error::new(e)); break; }
                    Err(e) => { failure = Some(anyhow::anyhow!("Ollama supervisor panicked: {e}")); break; }
                }
            }
            _ = stop.changed() => break,
        }
    }

    // Drain: not ready any more, no new connections, in-flight requests finish.
    state.readiness.set(false, "shutting down");
    drop(listener);
    let grace = Duration::from_secs(state.config.limits.shutdown_grace_s);
    tracing::info!(in_flight = state.admission.in_flight(), ?grace, "draining");
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            in_flight = state.admission.in_flight(),
            "grace period over; closing remaining connections"
        );
    }
    conns.abort_all();
    // Ollama goes last, so streams that were still running could finish.
    let _ = stop_ollama.send(true);
    if !supervisor_done {
        let _ = supervisor.await;
    }
    match failure {
        Some(e) => Err(e),
        None => {
            tracing::info!("kiln-proxy stopped");
            Ok(())
        }
    }
}

/// Serves until SIGTERM or Ctrl-C, then drains; the library form of `kiln-proxy`.
pub async fn run(config: Config, filter: Arc<dyn RequestFilter>) -> anyhow::Result<()> {
    let proxy = start(config, filter).await?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot install the SIGTERM handler")?;
    let result = proxy
        .run_until(async move {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = tokio::signal::ctrl_c() => tracing::info!("interrupted"),
            }
        })
        .await;
    // The exporter's last batch blocks on its own thread; not on a worker.
    let _ = tokio::task::spawn_blocking(crate::telemetry::shutdown).await;
    result
}

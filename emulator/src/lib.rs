//! An emulator of Ollama's HTTP API, for tests and benchmarks.
//!
//! It reproduces the wire behaviour kiln depends on (docs/ARCHITECTURE.md, "Facts about Ollama"): NDJSON
//! and SSE streaming (the typed events of `/v1/responses` and `/v1/messages`
//! too) with a configurable delay per token and a final metrics
//! chunk, `stream:false`, Ollama's and OpenAI's error bodies, the loopback
//! `Host` check (403 with an empty body), unbounded waiting beyond
//! `num_parallel` slots, cancellation when the client goes away, and
//! `/api/tags` / `/api/ps` built from a real `OLLAMA_MODELS` directory,
//! and thinking: a model with the thinking capability (`qwen3:…`, see
//! [`models::thinks`]) thinks [`THINKING_TOKENS`] tokens before it answers,
//! unless the request turns it off, in each API's shape; asking a model
//! without it to think is Ollama's 400.
//!
//! Tests steer single requests with headers that pass through a proxy
//! unchanged (token counts include thinking tokens): `x-emulator-delay-ms`, `x-emulator-fail-after` (abort the
//! connection after N tokens, as a crashing server would) and
//! `x-emulator-error-after` (send Ollama's mid-stream error line after N
//! tokens) and `x-emulator-stall-after` (go silent after N tokens, keeping
//! the stream open). What happened is visible in [`Stats`], in process or as JSON at
//! `GET /emulator/stats`.

mod answer;
mod api;
mod events;
mod format;
mod generation;
pub mod models;
mod stats;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use format::{THINKING_TOKENS, thinking_text, thinking_token, token};
pub use stats::{Stats, StatsSnapshot};

/// How the emulated server behaves.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where to listen; port 0 picks a free port.
    pub listen: SocketAddr,
    /// `OLLAMA_MODELS`: when set, only models with a manifest there exist.
    /// When unset, every model name is accepted and `/api/tags` is empty.
    pub models_dir: Option<PathBuf>,
    /// `OLLAMA_NUM_PARALLEL`: requests generating at once; others wait without bound.
    pub num_parallel: usize,
    /// Delay before each token (the first one included).
    pub token_delay: Duration,
    /// Time a model takes to load on its first use.
    pub load_delay: Duration,
    /// Tokens produced when the request does not set `num_predict`/`max_tokens`.
    pub default_tokens: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            models_dir: None,
            num_parallel: 1,
            token_delay: Duration::from_millis(5),
            load_delay: Duration::ZERO,
            default_tokens: 8,
        }
    }
}

/// The version `/api/version` reports.
pub const VERSION: &str = "0.12.0";

/// A running emulator; dropping it stops the server.
pub struct Emulator {
    addr: SocketAddr,
    stats: Arc<Stats>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Emulator {
    /// Binds and starts serving on the current tokio runtime.
    pub async fn start(config: Config) -> anyhow::Result<Emulator> {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|e| anyhow::anyhow!("emulator cannot listen on {}: {e}", config.listen))?;
        let addr = listener.local_addr()?;
        let stats = Arc::new(Stats::default());
        let app = api::router(api::AppState::new(config, addr, stats.clone()));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = rx.await;
                })
                .await;
        });
        Ok(Emulator {
            addr,
            stats,
            shutdown: Some(tx),
            task: Some(task),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// Stops accepting, lets running requests finish, and waits for the server task.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            // Abort rather than drain: a test that drops the emulator wants it gone,
            // including streams a client still holds open.
            task.abort();
        }
    }
}

/// Reads `OLLAMA_HOST` as Ollama does: empty means `127.0.0.1:11434`, a bare
/// host gets port 11434, `http://` and `https://` prefixes are accepted.
pub fn parse_ollama_host(value: &str) -> anyhow::Result<SocketAddr> {
    let v = value.trim().trim_matches(|c| c == '"' || c == '\'');
    let (v, scheme_port) = if let Some(rest) = v.strip_prefix("http://") {
        (rest, 80)
    } else if let Some(rest) = v.strip_prefix("https://") {
        (rest, 443)
    } else {
        (v, 11434)
    };
    let v = v.trim_end_matches('/');
    let v = if v.is_empty() { "127.0.0.1" } else { v };
    let with_port = if v.parse::<SocketAddr>().is_ok() {
        v.to_string()
    } else if v.starts_with('[') || v.parse::<std::net::Ipv6Addr>().is_ok() {
        format!(
            "[{}]:{scheme_port}",
            v.trim_matches(|c| c == '[' || c == ']')
        )
    } else if v.contains(':') {
        v.replace("localhost", "127.0.0.1")
    } else {
        format!("{}:{scheme_port}", v.replace("localhost", "127.0.0.1"))
    };
    with_port.parse().map_err(|e| {
        anyhow::anyhow!(
            "OLLAMA_HOST={value:?} is not an address this emulator can bind ({e}); use IP:PORT"
        )
    })
}

fn env_num(name: &str) -> anyhow::Result<Option<u64>> {
    match std::env::var(name) {
        Ok(v) => Ok(Some(v.trim().parse().map_err(|_| {
            anyhow::anyhow!("{name}={v:?} is not a whole number")
        })?)),
        Err(_) => Ok(None),
    }
}

fn log(msg: &str) {
    // The shape of Ollama's slog lines, so log forwarding sees realistic input.
    eprintln!(
        "time={} level=INFO source=emulator msg={msg:?}",
        format::now()
    );
}

/// `ollama serve` look-alike: configured from OLLAMA_HOST, OLLAMA_MODELS
/// (default `$HOME/.ollama/models`), OLLAMA_NUM_PARALLEL, and
/// EMULATOR_TOKEN_DELAY_MS / EMULATOR_LOAD_DELAY_MS / EMULATOR_TOKENS; serves
/// until SIGTERM or Ctrl-C. `POST /emulator/crash` exits the process at once
/// with status 3, as a crashing Ollama would.
pub async fn serve_from_env() -> anyhow::Result<()> {
    let host = std::env::var("OLLAMA_HOST").unwrap_or_default();
    let mut config = Config {
        listen: parse_ollama_host(&host)?,
        ..Default::default()
    };
    config.models_dir = match std::env::var_os("OLLAMA_MODELS") {
        Some(dir) => Some(dir.into()),
        None => std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".ollama/models")),
    };
    if let Some(n) = env_num("OLLAMA_NUM_PARALLEL")? {
        config.num_parallel = n.max(1) as usize;
    }
    if let Some(ms) = env_num("EMULATOR_TOKEN_DELAY_MS")? {
        config.token_delay = Duration::from_millis(ms);
    }
    if let Some(ms) = env_num("EMULATOR_LOAD_DELAY_MS")? {
        config.load_delay = Duration::from_millis(ms);
    }
    if let Some(n) = env_num("EMULATOR_TOKENS")? {
        config.default_tokens = n as usize;
    }
    let emulator = Emulator::start(config).await?;
    log(&format!(
        "Listening on {} (version {VERSION})",
        emulator.addr()
    ));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| anyhow::anyhow!("cannot install the SIGTERM handler: {e}"))?;
    let crash = emulator.stats().clone();
    tokio::select! {
        _ = term.recv() => log("received SIGTERM, shutting down"),
        _ = tokio::signal::ctrl_c() => log("interrupted, shutting down"),
        _ = crash.crash_requested() => {
            // Long enough for the 202 to leave, short enough to be abrupt.
            tokio::time::sleep(Duration::from_millis(50)).await;
            eprintln!("time={} level=ERROR source=emulator msg=\"emulated crash\"", format::now());
            std::process::exit(3);
        }
    }
    emulator.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_ollama_host;

    #[test]
    fn ollama_host_parses_like_ollama() {
        for (v, want) in [
            ("", "127.0.0.1:11434"),
            ("127.0.0.1:5000", "127.0.0.1:5000"),
            ("0.0.0.0", "0.0.0.0:11434"),
            ("http://127.0.0.1", "127.0.0.1:80"),
            ("localhost:7", "127.0.0.1:7"),
        ] {
            assert_eq!(parse_ollama_host(v).unwrap().to_string(), want, "{v}");
        }
        assert!(parse_ollama_host("not a host:x").is_err());
    }
}

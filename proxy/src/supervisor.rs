//! Ollama's lifecycle as the proxy sees it. In single-container mode the
//! proxy starts `ollama serve` bound to the upstream's loopback address,
//! forwards its log lines, restarts it if it dies (up to
//! `[ollama] max_restarts`), and stops it last on shutdown. In both modes it
//! drives readiness: wait for Ollama, preload, confirm with `/api/ps`.

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;

use crate::pipeline::AppState;
use crate::readiness::{self, PrepareError};

#[derive(Debug, thiserror::Error)]
pub enum SuperviseError {
    #[error(
        "cannot start `{command}`: {source}; install Ollama or point [ollama] command (KILN_OLLAMA_COMMAND) at it"
    )]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    #[error(
        "ollama serve died {restarts} times (last: {status}); giving up so the platform restarts the container"
    )]
    GaveUp { restarts: u32, status: String },
    #[error(transparent)]
    Prepare(#[from] PrepareError),
}

/// Runs until `stop` turns true (then stops Ollama, if it started it) or
/// until Ollama cannot be kept running (an error: the proxy should exit).
pub async fn supervise(
    state: Arc<AppState>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), SuperviseError> {
    let cfg = &state.config.ollama;
    let timeout = Duration::from_secs(cfg.startup_timeout_s);
    if !cfg.spawn {
        // Sidecar mode: Ollama is someone else's process; keep trying until it is ready.
        loop {
            let prep = readiness::prepare(
                &state.upstream,
                &cfg.preload,
                &state.readiness,
                &state.metrics,
                timeout,
            );
            tokio::select! {
                r = prep => match r {
                    Ok(()) => {
                        tracing::info!(models = ?cfg.preload, "Ollama is ready");
                        return Ok(());
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "Ollama is not ready; retrying");
                        state.readiness.set(false, e.to_string());
                    }
                },
                _ = stop.changed() => return Ok(()),
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }

    let mut restarts = 0;
    loop {
        let mut child = spawn(&state)?;
        let prep = readiness::prepare(
            &state.upstream,
            &cfg.preload,
            &state.readiness,
            &state.metrics,
            timeout,
        );
        tokio::pin!(prep);
        let mut prepared = false;
        let status = loop {
            tokio::select! {
                status = child.wait() => break status,
                r = &mut prep, if !prepared => {
                    prepared = true;
                    if let Err(e) = r {
                        terminate(&mut child).await;
                        state.readiness.set_alive(false);
                        return Err(e.into());
                    }
                    tracing::info!(models = ?cfg.preload, "Ollama is ready");
                }
                _ = stop.changed() => {
                    terminate(&mut child).await;
                    return Ok(());
                }
            }
        };
        let status = status.map_or_else(|e| e.to_string(), |s| s.to_string());
        tracing::error!(%status, "ollama serve exited");
        state
            .readiness
            .set(false, format!("ollama serve exited ({status}); restarting"));
        restarts += 1;
        if restarts > cfg.max_restarts {
            state.readiness.set_alive(false);
            return Err(SuperviseError::GaveUp { restarts, status });
        }
        state.metrics.ollama_restart();
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500 * u64::from(restarts))) => {}
            _ = stop.changed() => return Ok(()),
        }
    }
}

fn spawn(state: &AppState) -> Result<Child, SuperviseError> {
    let cfg = &state.config.ollama;
    let host = state
        .upstream
        .authority()
        .to_str()
        .unwrap_or("127.0.0.1:11434")
        .to_string();
    let mut cmd = Command::new(&cfg.command);
    cmd.args(&cfg.args)
        // Bound to loopback: only the proxy can reach it.
        .env("OLLAMA_HOST", &host)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|source| SuperviseError::Spawn {
        command: cfg.command.display().to_string(),
        source,
    })?;
    tracing::info!(command = %cfg.command.display(), pid = child.id(), %host, "started ollama serve");
    if let Some(out) = child.stdout.take() {
        tokio::spawn(forward_lines(out));
    }
    if let Some(err) = child.stderr.take() {
        tokio::spawn(forward_lines(err));
    }
    Ok(child)
}

/// Re-emits Ollama's log lines (Go slog text, `level=INFO …`) as our JSON
/// log lines with a matching severity.
async fn forward_lines(stream: impl AsyncRead + Unpin) {
    let mut lines = BufReader::new(stream);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match lines.read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let line = String::from_utf8_lossy(&buf);
        let line = line.trim_end();
        if line.contains("level=ERROR") {
            tracing::error!(target: "ollama", "{line}");
        } else if line.contains("level=WARN") {
            tracing::warn!(target: "ollama", "{line}");
        } else {
            tracing::info!(target: "ollama", "{line}");
        }
    }
}

/// SIGTERM, a few seconds to exit, then SIGKILL.
async fn terminate(child: &mut Child) {
    if let Some(pid) = child.id() {
        // SAFETY: kill(2) with a pid we own; no memory is involved.
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGTERM);
        }
        if tokio::time::timeout(Duration::from_secs(3), child.wait())
            .await
            .is_ok()
        {
            tracing::info!(pid, "ollama serve stopped");
            return;
        }
        tracing::warn!(pid, "ollama serve ignored SIGTERM for 3 s; killing it");
    }
    let _ = child.kill().await;
}

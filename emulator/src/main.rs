//! `ollama-emulator [serve]`: runs the emulator configured the way `ollama
//! serve` is (OLLAMA_HOST, OLLAMA_MODELS, OLLAMA_NUM_PARALLEL), so it can
//! stand in for the `ollama` binary. EMULATOR_TOKEN_DELAY_MS,
//! EMULATOR_LOAD_DELAY_MS and EMULATOR_TOKENS tune the fake generation.

use std::time::Duration;

use anyhow::{Context, bail};

fn env_num(name: &str) -> anyhow::Result<Option<u64>> {
    match std::env::var(name) {
        Ok(v) => {
            Ok(Some(v.trim().parse().with_context(|| {
                format!("{name}={v:?} is not a whole number")
            })?))
        }
        Err(_) => Ok(None),
    }
}

fn log(msg: &str) {
    // The shape of Ollama's slog lines, so log forwarding sees realistic input.
    eprintln!(
        "time={} level=INFO source=emulator msg={msg:?}",
        ollama_emulator_now()
    );
}

fn ollama_emulator_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        None | Some("serve") => {}
        Some(other) => bail!("unknown command {other:?}; usage: ollama-emulator [serve]"),
    }
    let host = std::env::var("OLLAMA_HOST").unwrap_or_default();
    let mut config = ollama_emulator::Config {
        listen: ollama_emulator::parse_ollama_host(&host)?,
        ..Default::default()
    };
    config.models_dir = match std::env::var_os("OLLAMA_MODELS") {
        Some(dir) => Some(dir.into()),
        None => {
            std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".ollama/models"))
        }
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
    let emulator = ollama_emulator::Emulator::start(config).await?;
    log(&format!(
        "Listening on {} (version {})",
        emulator.addr(),
        ollama_emulator::VERSION
    ));

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot install the SIGTERM handler")?;
    tokio::select! {
        _ = term.recv() => log("received SIGTERM, shutting down"),
        _ = tokio::signal::ctrl_c() => log("interrupted, shutting down"),
    }
    emulator.shutdown().await;
    Ok(())
}

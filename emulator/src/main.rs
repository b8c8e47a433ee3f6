//! `ollama-emulator [serve]`: runs the emulator configured the way `ollama
//! serve` is (OLLAMA_HOST, OLLAMA_MODELS, OLLAMA_NUM_PARALLEL), so it can
//! stand in for the `ollama` binary. EMULATOR_TOKEN_DELAY_MS,
//! EMULATOR_LOAD_DELAY_MS and EMULATOR_TOKENS tune the fake generation.

use anyhow::bail;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        None | Some("serve") => ollama_emulator::serve_from_env().await,
        Some(other) => bail!("unknown command {other:?}; usage: ollama-emulator [serve]"),
    }
}

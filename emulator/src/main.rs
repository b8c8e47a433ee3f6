//! `ollama-emulator [serve]`: runs the emulator configured the way `ollama
//! serve` is (OLLAMA_HOST, OLLAMA_MODELS, OLLAMA_NUM_PARALLEL), so it can
//! stand in for the `ollama` binary. EMULATOR_TOKEN_DELAY_MS,
//! EMULATOR_LOAD_DELAY_MS and EMULATOR_TOKENS tune the fake generation.

use std::process::ExitCode;

const USAGE: &str = "\
An emulator of Ollama's HTTP API, for kiln's tests and benchmarks (it generates
deterministic fake tokens; it runs no model).

Usage: ollama-emulator [serve]

Configured as `ollama serve` is, from the environment:
  OLLAMA_HOST               address to listen on (default 127.0.0.1:11434)
  OLLAMA_MODELS             models directory (default ~/.ollama/models)
  OLLAMA_NUM_PARALLEL       requests generated at once per model (default 1)
  EMULATOR_TOKEN_DELAY_MS   delay between generated tokens
  EMULATOR_LOAD_DELAY_MS    time a model takes to load
  EMULATOR_TOKENS           tokens per answer";

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        None | Some("serve") => match ollama_emulator::serve_from_env().await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("ollama-emulator: {e:#}");
                ExitCode::FAILURE
            }
        },
        Some("-h" | "--help" | "help") => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        Some(other) => {
            eprintln!("ollama-emulator: unknown command {other:?}\n\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

use clap::Parser;

/// Ollama-fronting sidecar: auth, admission control, readiness and wasm request filters.
#[derive(Parser)]
#[command(name = "kiln-proxy", version, about, long_about = None)]
struct Cli {}

fn main() {
    let _cli = Cli::parse();
}

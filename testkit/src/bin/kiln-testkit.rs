//! Runs a seeded loopback registry for demos and benchmarks, until stdin closes
//! or the process is killed.

use std::io::Read;

use anyhow::Result;
use clap::Parser;
use kiln_testkit::{Auth, ModelSpec, TestRegistry};

/// Starts Debian's docker-registry on loopback, seeded with an Ollama-format
/// model and a multi-arch base image, and prints its address.
#[derive(Parser)]
#[command(name = "kiln-testkit", version)]
struct Cli {
    /// Ollama models to seed, as REPO:TAG (e.g. library/gemma3:4b).
    #[arg(long = "model", default_value = "library/gemma3:4b")]
    models: Vec<String>,
    /// Size of each model's synthetic GGUF weights, in bytes.
    #[arg(long, default_value_t = 8 << 20)]
    weights_size: u64,
    /// Base image to seed, as REPO:TAG (linux/amd64 + linux/arm64).
    #[arg(long, default_value = "ollama/ollama:latest")]
    base: String,
    /// Require HTTP Basic credentials kiln:s3cret-pass.
    #[arg(long)]
    basic_auth: bool,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let registry = TestRegistry::start(if cli.basic_auth {
        Auth::basic()
    } else {
        Auth::Anonymous
    })?;
    for (i, model) in cli.models.iter().enumerate() {
        let (repo, tag) = model.rsplit_once(':').unwrap_or((model, "latest"));
        let spec = ModelSpec {
            weights_size: cli.weights_size,
            seed: i as u64 + 1,
            ..Default::default()
        };
        let seeded = registry.seed_ollama_model(repo, tag, &spec)?;
        eprintln!("seeded model {repo}:{tag} ({})", seeded.manifest_digest);
    }
    let (repo, tag) = cli.base.rsplit_once(':').unwrap_or((&cli.base, "latest"));
    let base = registry.seed_base_image(repo, tag)?;
    eprintln!("seeded base {repo}:{tag} ({})", base.index_digest);
    // The one line scripts read.
    println!("{}", registry.url());
    // Serve until our parent closes stdin (or kills us); the registry stops on drop.
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    Ok(())
}

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use kiln::deploy;

/// Pull Ollama models without Ollama and bake them into OCI images without Docker.
#[derive(Parser)]
#[command(name = "kiln", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Download Ollama models into the cache and, with --models-dir, an OLLAMA_MODELS tree.
    Pull(kiln::pull::cli::PullArgs),
    // Pack and inspect take their help text from their Args structs.
    Pack(Box<kiln::pack::cli::PackArgs>),
    Inspect(kiln::inspect::InspectArgs),
    /// Cloud Run deployment files for a kiln image.
    #[command(subcommand)]
    Deploy(deploy::DeployCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result: anyhow::Result<()> = match cli.command {
        Command::Pull(args) => runtime().and_then(|rt| rt.block_on(kiln::pull::cli::run(&args))),
        Command::Pack(args) => runtime().and_then(|rt| rt.block_on(kiln::pack::cli::run(&args))),
        Command::Inspect(args) => runtime().and_then(|rt| rt.block_on(kiln::inspect::run(&args))),
        Command::Deploy(deploy::DeployCommand::Render(args)) => deploy::run_render(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            // A broken Cloud Run rule is a usage error: the flags asked for it.
            if e.downcast_ref::<deploy::RuleError>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

//! `kiln-proxy`: turns flags, `KILN_*` variables and the config file into a
//! [`Config`] and runs the proxy. Subcommands are extra tools; without one,
//! the proxy runs.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use kiln_proxy::Config;
use kiln_proxy::config::Overrides;
use kiln_proxy::filter::{NoFilters, RequestFilter};

/// Ollama-fronting sidecar: auth, admission control, readiness, wasm request and response plugins, metrics and traces.
#[derive(Parser)]
#[command(name = "kiln-proxy", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Load the configuration (file, KILN_* variables, flags), check it, and print it.
    CheckConfig(RunArgs),
    /// Tools for plugin authors: check or run a wasm plugin without a proxy
    /// (the proxy's own configuration is not read).
    #[command(subcommand)]
    Plugin(kiln_proxy::plugins::tool::PluginCommand),
}

/// The proxy's flags: before any subcommand to run it, or after
/// `check-config`. Not on `plugin …`, which runs no proxy.
#[derive(Args)]
struct RunArgs {
    /// TOML config file (keys in the README; see docs/ARCHITECTURE.md) [env: KILN_CONFIG=].
    #[arg(long)]
    config: Option<PathBuf>,
    /// Address to listen on [default: 0.0.0.0:$PORT, else 0.0.0.0:8080].
    #[arg(long)]
    listen: Option<String>,
    /// Ollama's URL [default: http://127.0.0.1:11434].
    #[arg(long)]
    upstream: Option<String>,
    /// Start and supervise `ollama serve` (single-container mode).
    #[arg(long)]
    spawn_ollama: bool,
    /// Model to load and pin before reporting ready (repeatable).
    #[arg(long)]
    preload: Vec<String>,
    /// The program started by --spawn-ollama [default: ollama].
    #[arg(long)]
    ollama_command: Option<PathBuf>,
    /// Any config key, e.g. --set limits.max_queue=8 (repeatable; beats file and KILN_*).
    #[arg(long, value_name = "KEY=VALUE")]
    set: Vec<String>,
}

impl RunArgs {
    /// `kiln-proxy [FLAGS] check-config [FLAGS]`: the flags after the
    /// subcommand win, those before it still count.
    fn or(self, before: RunArgs) -> RunArgs {
        RunArgs {
            config: self.config.or(before.config),
            listen: self.listen.or(before.listen),
            upstream: self.upstream.or(before.upstream),
            spawn_ollama: self.spawn_ollama || before.spawn_ollama,
            preload: [before.preload, self.preload].concat(),
            ollama_command: self.ollama_command.or(before.ollama_command),
            set: [before.set, self.set].concat(),
        }
    }

    /// `--config`, else `KILN_CONFIG`. Read here rather than by clap (`env`),
    /// which would fill the `check-config` flags from the variable and so
    /// let it beat a `--config` given before the subcommand.
    fn with_env_config(mut self) -> RunArgs {
        self.config = self
            .config
            .or_else(|| std::env::var_os("KILN_CONFIG").map(PathBuf::from));
        self
    }
}

fn load_config(a: &RunArgs) -> anyhow::Result<Config> {
    let flags = Overrides {
        listen: a.listen.clone(),
        upstream: a.upstream.clone(),
        spawn_ollama: a.spawn_ollama,
        preload: a.preload.clone(),
        ollama_command: a.ollama_command.clone(),
        set: a.set.clone(),
    };
    Ok(Config::load(
        a.config.as_deref(),
        |k| std::env::var(k).ok(),
        &flags,
    )?)
}

/// The filter stage: none without `[[plugins]]`.
fn filter_stage(config: &Config, file: Option<PathBuf>) -> anyhow::Result<Arc<dyn RequestFilter>> {
    if config.plugins.is_empty() {
        return Ok(Arc::new(NoFilters));
    }
    let mut options = kiln_proxy::plugins::PluginOptions::from_env(|k| std::env::var(k).ok())?;
    options.max_body_bytes = config.limits.plugin_max_body_bytes;
    options.max_json_values = config.limits.plugin_max_json_values;
    options.counters = config.counters.clone();
    let stage = kiln_proxy::plugins::load_chain(&config.plugins, &options)
        .context("cannot load the [[plugins]]")?;
    // On SIGHUP the [[plugins]] entries are read again from the config file.
    let source = file.map(|path| -> kiln_proxy::plugins::SpecSource {
        Arc::new(move || {
            Config::from_file(&path)
                .map(|c| c.plugins)
                .map_err(|e| format!("{e:#}"))
        })
    });
    stage.spawn_reloader_with(source);
    Ok(stage)
}

/// Writes a tool's result to stdout. A reader that went away early
/// (`kiln-proxy check-config | head -1`) is not an error: it took what it
/// wanted. `print!` would panic there, after the work had succeeded.
fn print(text: impl std::fmt::Display) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match write!(out, "{text}").and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        result => result.context("cannot write to stdout"),
    }
}

async fn real_main(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Some(Command::CheckConfig(args)) => {
            let args = args.or(cli.run).with_env_config();
            let config = load_config(&args).context("invalid configuration")?;
            let listen = config.listen_addr(std::env::var("PORT").ok().as_deref())?;
            print(format_args!(
                "configuration OK: listen {listen}, upstream {}\n{:#?}\n",
                config.upstream,
                config.redacted()
            ))
        }
        Some(Command::Plugin(tool)) => print(tool.execute()?),
        None => {
            let args = cli.run.with_env_config();
            let config = load_config(&args).context("invalid configuration")?;
            let filter = filter_stage(&config, args.config)?;
            kiln_proxy::run(config, filter).await
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let _logs = kiln_proxy::logging::init();
    match real_main(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("kiln-proxy failed: {e:#}");
            // A configuration the proxy refuses is a usage error (2), as with bad flags.
            let usage = e.chain().any(|c| c.is::<kiln_proxy::config::ConfigError>());
            ExitCode::from(if usage { 2 } else { 1 })
        }
    }
}

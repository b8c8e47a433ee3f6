//! `kiln-proxy plugin check` and `kiln-proxy plugin run`: tools for plugin
//! authors to try a plugin without a proxy or an Ollama.

use super::chain::{Outcome, from_wit, to_wit};
use super::{PluginOptions, PluginSpec, PluginStage, Runtime};
use crate::filter::FilterRequest;
use crate::routes::{self, RouteKind};
use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// `kiln-proxy plugin …`: tools for plugin authors.
#[derive(clap::Subcommand, Debug)]
pub enum PluginCommand {
    /// Load a plugin as the proxy would (pin-free), check its config, and
    /// print its interface version, imports and exports.
    Check {
        /// The plugin: a component, or a core module built with the kiln-plugin SDK.
        file: PathBuf,
        /// The plugin's config as JSON (what `[plugins.config]` would hold).
        /// (`--config` is taken: it names the proxy's own config file.)
        #[arg(id = "plugin_config", long = "plugin-config", value_name = "JSON")]
        config: Option<String>,
    },
    /// Run a plugin once on a request and print its decision as JSON.
    Run {
        file: PathBuf,
        /// The plugin's config as JSON.
        #[arg(id = "plugin_config", long = "plugin-config", value_name = "JSON")]
        config: Option<String>,
        /// A JSON file: {"path": "/api/chat", "headers": {...}, "body": {...}}.
        #[arg(long, value_name = "FILE")]
        request: PathBuf,
    },
}

impl PluginCommand {
    /// Runs the command and returns what to print.
    pub fn execute(&self) -> Result<String> {
        let parse = |c: &Option<String>| -> Result<Option<Value>> {
            c.as_deref()
                .map(|text| serde_json::from_str(text).context("--plugin-config is not valid JSON"))
                .transpose()
        };
        match self {
            PluginCommand::Check { file, config } => check(file, parse(config)?),
            PluginCommand::Run {
                file,
                config,
                request,
            } => run(file, parse(config)?, request),
        }
    }
}

fn spec_for(path: &Path, config: Value) -> PluginSpec {
    PluginSpec {
        name: path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "plugin".into()),
        path: path.to_owned(),
        sha256: None,
        on_error: Default::default(),
        routes: Some(vec!["all".into(), "other".into()]),
        config,
    }
}

fn load(path: &Path, config: Value) -> Result<PluginStage> {
    let runtime = Runtime::new(&PluginOptions::default())?;
    Ok(PluginStage::new(runtime, &[spec_for(path, config)])?)
}

/// Loads the plugin as the proxy would, with `config` (default `{}`), and
/// describes it.
pub fn check(path: &Path, config: Option<Value>) -> Result<String> {
    let stage = load(path, config.unwrap_or_else(|| json!({})))?;
    let chain = stage.chain();
    let Some(p) = chain.plugins().next() else {
        bail!("no plugin was loaded")
    };
    let info = &p.info;
    Ok(format!(
        "{path}: ok\n  interface: {iface}\n  kind:      {kind}\n  size:      {size} bytes\n  sha256:    {sha}\n  imports:   {imports}\n  exports:   {exports}\n  config:    accepted\n",
        path = path.display(),
        iface = super::INTERFACE,
        kind = if info.componentized {
            "core module (componentized at load)"
        } else {
            "component"
        },
        size = info.file_bytes,
        sha = info.sha256,
        imports = if info.imports.is_empty() {
            "(none)".into()
        } else {
            info.imports.join(", ")
        },
        exports = info.exports.join(", "),
    ))
}

/// A request file for `plugin run`:
/// `{"path": "/api/chat", "method": "POST", "headers": {"authorization": "Bearer k"}, "body": {...}}`.
/// `method` defaults to POST; `body` may be JSON or a string holding the raw body.
pub fn parse_request_file(text: &str) -> Result<FilterRequest> {
    let v: Value = serde_json::from_str(text).context("the request file is not JSON")?;
    let path = v
        .get("path")
        .and_then(Value::as_str)
        .context("the request file needs a \"path\", e.g. \"/api/chat\"")?;
    let method = v
        .get("method")
        .and_then(Value::as_str)
        .unwrap_or("POST")
        .to_ascii_uppercase();
    let mut headers = Vec::new();
    match v.get("headers") {
        None | Some(Value::Null) => {}
        Some(Value::Object(map)) => {
            for (name, value) in map {
                let value = value
                    .as_str()
                    .with_context(|| format!("header {name:?} must be a string"))?;
                headers.push((name.to_ascii_lowercase(), value.to_owned()));
            }
        }
        Some(_) => bail!("\"headers\" must be an object of name → value"),
    }
    let body = match v.get("body") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => s.clone().into_bytes(),
        Some(other) => serde_json::to_vec(other)?,
    };
    Ok(FilterRequest {
        route: route_of(path).map_or(RouteKind::Other, |r| r.kind),
        method,
        path: path.to_owned(),
        headers,
        model: super::chain::model_of(&body),
        body,
    })
}

/// The route of a path as the proxy would see it (a trailing `/` and a
/// query ignored).
fn route_of(path: &str) -> Option<routes::Route> {
    let path = path.split('?').next().unwrap_or(path);
    routes::classify(path).or_else(|| routes::classify(path.trim_end_matches('/')))
}

/// Runs the plugin once on the request in `request_file` and returns the
/// decision as pretty JSON.
pub fn run(path: &Path, config: Option<Value>, request_file: &Path) -> Result<String> {
    let text = std::fs::read_to_string(request_file)
        .with_context(|| format!("cannot read {}", request_file.display()))?;
    let request =
        parse_request_file(&text).with_context(|| format!("in {}", request_file.display()))?;
    let stage = load(path, config.unwrap_or_else(|| json!({})))?;
    let chain = stage.chain();
    let Some(plugin) = chain.plugins().next() else {
        bail!("no plugin was loaded")
    };
    let mut req = to_wit(request);
    let started = Instant::now();
    let outcome = chain.call(plugin, &mut req);
    let micros = started.elapsed().as_micros() as u64;
    let out = match outcome {
        Err(f) => json!({"decision": "failure", "reason": f.reason, "elapsed_us": micros}),
        Ok(Outcome::Allow) => json!({"decision": "allow", "elapsed_us": micros}),
        Ok(Outcome::Reject {
            status,
            message,
            headers,
        }) => json!({
            "decision": "reject", "status": status, "message": message,
            "headers": headers.into_iter().map(|(n, v)| json!([n, v])).collect::<Vec<_>>(),
            "elapsed_us": micros,
        }),
        Ok(Outcome::Modify) => {
            let r = from_wit(req);
            let body = serde_json::from_slice::<Value>(&r.body)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&r.body).into_owned()));
            json!({
                "decision": "modify",
                "request": {
                    "method": r.method, "path": r.path, "model": r.model,
                    "headers": r.headers.into_iter().map(|(n, v)| json!([n, v])).collect::<Vec<_>>(),
                    "body": body,
                },
                "elapsed_us": micros,
            })
        }
    };
    Ok(serde_json::to_string_pretty(&out)? + "\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_files_are_read_with_defaults() {
        let r = parse_request_file(r#"{"path":"/v1/chat/completions","headers":{"X-API-Key":"k"},"body":{"model":"m","messages":[]}}"#).unwrap();
        assert_eq!(r.route, RouteKind::OpenaiChat);
        assert_eq!(r.method, "POST");
        assert_eq!(r.headers, vec![("x-api-key".to_owned(), "k".to_owned())]);
        assert_eq!(r.model.as_deref(), Some("m"));
    }

    #[test]
    fn bad_request_files_say_what_is_missing() {
        let err = parse_request_file(r#"{"body":{}}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"path\""), "{err}");
        assert!(parse_request_file(r#"{"path":"/api/chat","headers":[1]}"#).is_err());
    }
}

//! `kiln-proxy plugin check` and `kiln-proxy plugin run`: tools for plugin
//! authors to try a plugin without a proxy or an Ollama.

use super::chain::{Outcome, from_wit, to_wit};
use super::{PluginOptions, PluginSpec, PluginStage, Runtime};
use crate::filter::FilterRequest;
use crate::framing::{Format, Framer};
use crate::response::answer::{Answer, Output};
use crate::response::{Kind, ResponseContext, ResponseOutcome, ResponseStage};
use crate::response_body::SentTail;
use crate::routes::error_body;
use crate::routes::{self, RouteKind};
use anyhow::{Context, Result, bail};
use bytes::Bytes;
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
    /// Run a plugin once on a request and print its decision as JSON; or
    /// replay a recorded answer through its response hooks and print what
    /// the client would receive.
    Run {
        /// The plugin: a component, or a core module built with the kiln-plugin SDK.
        file: PathBuf,
        /// The plugin's config as JSON.
        #[arg(id = "plugin_config", long = "plugin-config", value_name = "JSON")]
        config: Option<String>,
        /// A JSON file: {"path": "/api/chat", "headers": {...}, "body": {...}}.
        #[arg(long, value_name = "FILE", required_unless_present = "answer")]
        request: Option<PathBuf>,
        /// A recorded answer of Ollama's: an NDJSON or SSE stream, or a JSON
        /// body (an answer that does not stream).
        #[arg(
            long,
            value_name = "FILE",
            conflicts_with = "request",
            requires = "path"
        )]
        answer: Option<PathBuf>,
        /// The route the answer is from, e.g. /api/chat or /v1/messages.
        #[arg(long, value_name = "PATH")]
        path: Option<String>,
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
                request: Some(request),
                ..
            } => run(file, parse(config)?, request),
            PluginCommand::Run {
                file,
                config,
                answer: Some(answer),
                path: Some(path),
                ..
            } => replay(file, parse(config)?, answer, path),
            PluginCommand::Run { .. } => bail!("give --request FILE, or --answer FILE --path PATH"),
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
        // Gemini's model is in the path (aliases are the proxy's config).
        model: super::chain::model_of(&body)
            .or_else(|| crate::gemini::call(path.split('?').next()?).map(|(m, _)| m)),
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

/// Replays the recorded answer in `answer_file`, of the route `route_path`,
/// through the plugin's response hooks, and returns what the client would
/// receive: the stream as rewritten (ended with an error chunk in the
/// client's format if a hook ends it), or the body.
pub fn replay(
    path: &Path,
    config: Option<Value>,
    answer_file: &Path,
    route_path: &str,
) -> Result<String> {
    let recorded = std::fs::read(answer_file)
        .with_context(|| format!("cannot read {}", answer_file.display()))?;
    let route = route_of(route_path)
        .with_context(|| format!("{route_path} is not a route kiln-proxy serves"))?;
    let codec = route.codec.with_context(|| {
        format!("{route_path} does not generate text: response hooks never see its answers")
    })?;
    let format = answer_format(&recorded);
    let stage = load(path, config.unwrap_or_else(|| json!({})))?;
    let ctx = ResponseContext {
        request_id: "replay".into(),
        route: route.kind,
        path: route_path.to_owned(),
        model: None,
        stream: format.is_some(),
        status: 200,
        headers: Vec::new(),
    };
    let Some(hooks) = ResponseStage::begin(&stage, &ctx) else {
        bail!("{} exports no response hooks", path.display())
    };
    let kind = match format {
        Some(Format::Ndjson) => Kind::Line,
        Some(Format::Sse) => Kind::Event,
        None => Kind::Whole,
    };
    let mut answer = Answer::of(codec, kind, hooks, ctx, false);
    let mut out = Output::default();
    let Some(format) = format else {
        answer.push(Bytes::from(recorded));
        return match answer.run(&mut out) {
            Ok(()) => {
                answer.complete(ResponseOutcome::Completed);
                Ok(String::from_utf8_lossy(&out.freeze()).into_owned())
            }
            Err(stop) => {
                answer.complete(ResponseOutcome::EndedByPlugin);
                let status = if (400..=599).contains(&stop.status) {
                    stop.status
                } else {
                    500
                };
                eprintln!("the plugin refused the answer: the client gets status {status}");
                let body = error_body(route.style, status, &stop.message);
                Ok(String::from_utf8_lossy(&body).into_owned() + "\n")
            }
        };
    };
    // One chunk per read, as when the proxy keeps pace with Ollama.
    let mut framer = Framer::new(format, recorded.len().max(1));
    framer.push_bytes(Bytes::from(recorded));
    let mut sent = Vec::new();
    let mut frames = Vec::new();
    while let Some(frame) = framer.next_frame()? {
        frames.push(frame);
    }
    frames.extend(framer.finish()?);
    for frame in frames {
        answer.push(frame);
        let mut out = Output::default();
        let result = answer.run(&mut out);
        sent.extend_from_slice(out.bytes());
        if let Err(stop) = result {
            answer.complete(ResponseOutcome::EndedByPlugin);
            let mut tail = SentTail::default();
            tail.follow(&sent);
            sent.extend(tail.error_chunk(format == Format::Sse, route.style, &stop.message));
            return Ok(String::from_utf8_lossy(&sent).into_owned());
        }
    }
    answer.complete(ResponseOutcome::Completed);
    Ok(String::from_utf8_lossy(&sent).into_owned())
}

/// How a recorded answer is framed: SSE events, NDJSON lines, or (`None`)
/// one JSON body.
fn answer_format(recorded: &[u8]) -> Option<Format> {
    let text = String::from_utf8_lossy(recorded);
    let text = text.trim_start();
    if ["data:", "event:", "id:", ":"]
        .iter()
        .any(|p| text.starts_with(p))
    {
        return Some(Format::Sse);
    }
    let lines = text.lines().filter(|l| !l.trim().is_empty()).count();
    (lines > 1).then_some(Format::Ndjson)
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

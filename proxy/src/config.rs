//! The proxy's configuration (docs/ARCHITECTURE.md, "Config"): a TOML file, then `KILN_*`
//! environment variables, then command-line flags, each overriding the last.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::counters_config::{CountersConfig, ENV_KEYS as COUNTERS_ENV_KEYS};
use crate::plugins::PluginSpec;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{key}={value:?} is not valid: {reason}")]
    Value {
        key: String,
        value: String,
        reason: String,
    },
}

pub(crate) fn bad(key: &str, value: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Value {
        key: key.into(),
        value: value.into(),
        reason: reason.into(),
    }
}

/// Everything the proxy needs to run.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where to listen. Unset: `0.0.0.0:$PORT`, else `0.0.0.0:8080` (see [`Config::listen_addr`]).
    pub listen: Option<String>,
    /// Ollama's base URL (plain HTTP; it runs beside the proxy).
    pub upstream: String,
    /// `Origin` values allowed (and passed on to Ollama); a request with any
    /// other `Origin` is refused with 403, as Ollama refuses origins it does
    /// not know, so that no web page can drive the proxy from a browser.
    pub allowed_origins: Vec<String>,
    /// Forward Ollama's model-management routes (`/api/pull`, `push`,
    /// `create`, `copy`, `delete`, `blobs`); refused with 403 when false.
    pub allow_management_routes: bool,
    /// When set, `/metrics` answers only `Authorization: Bearer <token>`;
    /// unset, it answers only loopback peers (a scraper in the same instance).
    pub metrics_token: Option<String>,
    pub ollama: OllamaConfig,
    pub limits: Limits,
    pub plugins: Vec<PluginSpec>,
    /// Where plugins' `counter-add` counts (see [`CountersConfig`]).
    pub counters: CountersConfig,
    pub gemini: GeminiConfig,
    /// OpenTelemetry traces (on when an `OTEL_EXPORTER_OTLP_*ENDPOINT` is set).
    pub tracing: TracingConfig,
}

/// Traces: the exporter itself is configured by the standard
/// `OTEL_EXPORTER_OTLP_*` variables; these are the proxy's own choices.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TracingConfig {
    /// Share of new traces recorded (0.0..=1.0) when the request carries no
    /// sampling decision; a parent's sampled flag always wins.
    pub sample_ratio: f64,
    /// The Google Cloud project the traces belong to (log lines name their
    /// trace as `projects/P/traces/T`). Unset on Cloud Run: asked of the
    /// metadata server once at start.
    pub project_id: Option<String>,
}

impl Default for TracingConfig {
    fn default() -> Self {
        TracingConfig {
            sample_ratio: 1.0,
            project_id: None,
        }
    }
}

/// The Gemini API (`/v1beta/models/…`): Gemini-style model names the
/// clients use, mapped to the Ollama models that answer them.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GeminiConfig {
    /// e.g. `{ "gemma-3-4b-it" = "gemma3:4b" }`; env
    /// `KILN_GEMINI_ALIASES="gemma-3-4b-it=gemma3:4b,…"`.
    pub aliases: std::collections::BTreeMap<String, String>,
}

/// Single-container mode: the proxy runs and supervises `ollama serve`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OllamaConfig {
    pub spawn: bool,
    /// Models loaded with `keep_alive: -1` before readiness turns green
    /// (also in sidecar mode, where Ollama runs in another container).
    pub preload: Vec<String>,
    /// The program started in spawn mode, and its arguments.
    pub command: PathBuf,
    pub args: Vec<String>,
    /// How long Ollama may take to answer and load the preloaded models.
    pub startup_timeout_s: u64,
    /// Restarts of a dying `ollama serve` before the proxy gives up and exits.
    pub max_restarts: u32,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Requests at Ollama at once; set it to OLLAMA_NUM_PARALLEL.
    pub max_in_flight: usize,
    /// Requests waiting for a slot; beyond that the answer is 429.
    pub max_queue: usize,
    pub max_body_bytes: usize,
    /// Whole-request deadline, streaming included.
    pub request_timeout_s: u64,
    /// A client must send its request head within this; it also closes idle keep-alive connections.
    pub header_timeout_s: u64,
    /// Longest silence tolerated while reading a request body or between streamed chunks.
    pub idle_timeout_s: u64,
    /// On SIGTERM, how long in-flight requests may take to finish.
    pub shutdown_grace_s: u64,
    /// Request-body bytes held in memory across all requests at once;
    /// beyond it a body is refused with 503 and Retry-After.
    pub max_buffered_bytes: usize,
    /// Non-inference requests (tags, show, ps, version, management) at
    /// Ollama at once, apart from the inference slots; beyond it 429.
    pub max_other_in_flight: usize,
    /// The largest body (bytes) handed to request plugins; a larger one is
    /// refused with 413 before any plugin runs, so that no client can pick a
    /// body a policy cannot check within its deadline.
    pub plugin_max_body_bytes: usize,
    /// The same bound in JSON values (every message, part, field value).
    pub plugin_max_json_values: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: None,
            upstream: "http://127.0.0.1:11434".into(),
            allowed_origins: Vec::new(),
            allow_management_routes: false,
            metrics_token: None,
            ollama: OllamaConfig::default(),
            limits: Limits::default(),
            plugins: Vec::new(),
            counters: CountersConfig::default(),
            gemini: GeminiConfig::default(),
            tracing: TracingConfig::default(),
        }
    }
}

impl Default for OllamaConfig {
    fn default() -> Self {
        OllamaConfig {
            spawn: false,
            preload: Vec::new(),
            command: "ollama".into(),
            args: vec!["serve".into()],
            startup_timeout_s: 600,
            max_restarts: 3,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_in_flight: 4,
            max_queue: 4,
            max_body_bytes: 10 * 1024 * 1024,
            request_timeout_s: 600,
            header_timeout_s: 10,
            idle_timeout_s: 120,
            // Cloud Run sends SIGKILL 10 s after SIGTERM.
            shutdown_grace_s: 8,
            max_buffered_bytes: 64 * 1024 * 1024,
            max_other_in_flight: 8,
            plugin_max_body_bytes: PLUGIN_MAX_BODY_BYTES,
            plugin_max_json_values: PLUGIN_MAX_JSON_VALUES,
        }
    }
}

// What the slowest example plugin reads in about 10 ms on a shared 2-core
// machine, a fifth of its 50 ms deadline (bench/plugin-body-size/run.sh).
const PLUGIN_MAX_BODY_BYTES: usize = 2 << 20;
const PLUGIN_MAX_JSON_VALUES: usize = 50_000;

fn list(v: &str) -> Vec<String> {
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

fn num<T: std::str::FromStr>(key: &str, v: &str) -> Result<T, ConfigError> {
    v.trim()
        .parse()
        .map_err(|_| bad(key, v, "expected a whole number"))
}

fn boolean(key: &str, v: &str) -> Result<bool, ConfigError> {
    match v.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" | "" => Ok(false),
        _ => Err(bad(key, v, "expected true or false")),
    }
}

/// Values from the command line; they override the file and the environment.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub listen: Option<String>,
    pub upstream: Option<String>,
    pub spawn_ollama: bool,
    pub preload: Vec<String>,
    pub ollama_command: Option<PathBuf>,
    /// `KEY=VALUE` for any key in dotted form, e.g. `limits.max_queue=8`.
    pub set: Vec<String>,
}

/// The variables [`Config::apply_env`] reads; `--set` accepts the same keys.
const ENV_KEYS: &[&str] = &[
    "KILN_LISTEN",
    "KILN_UPSTREAM",
    "KILN_ALLOWED_ORIGINS",
    "KILN_ALLOW_MANAGEMENT_ROUTES",
    "KILN_METRICS_TOKEN",
    "KILN_OLLAMA_SPAWN",
    "KILN_OLLAMA_PRELOAD",
    "KILN_OLLAMA_COMMAND",
    "KILN_OLLAMA_ARGS",
    "KILN_OLLAMA_STARTUP_TIMEOUT_S",
    "KILN_OLLAMA_MAX_RESTARTS",
    "KILN_LIMITS_MAX_IN_FLIGHT",
    "KILN_LIMITS_MAX_QUEUE",
    "KILN_LIMITS_MAX_BODY_BYTES",
    "KILN_LIMITS_REQUEST_TIMEOUT_S",
    "KILN_LIMITS_HEADER_TIMEOUT_S",
    "KILN_LIMITS_IDLE_TIMEOUT_S",
    "KILN_LIMITS_SHUTDOWN_GRACE_S",
    "KILN_LIMITS_MAX_BUFFERED_BYTES",
    "KILN_LIMITS_MAX_OTHER_IN_FLIGHT",
    "KILN_LIMITS_PLUGIN_MAX_BODY_BYTES",
    "KILN_LIMITS_PLUGIN_MAX_JSON_VALUES",
    "KILN_GEMINI_ALIASES",
    "KILN_TRACING_SAMPLE_RATIO",
    "KILN_TRACING_PROJECT_ID",
];

impl Config {
    /// The whole configuration: the file (if any), then `KILN_*` variables
    /// (looked up with `env`), then the command line; validated.
    pub fn load(
        file: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
        flags: &Overrides,
    ) -> Result<Config, ConfigError> {
        let mut c = match file {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        c.apply_env(env)?;
        let mut set = Vec::new();
        for item in &flags.set {
            let (key, value) = item
                .split_once('=')
                .ok_or_else(|| bad("--set", item, "expected KEY=VALUE, e.g. limits.max_queue=8"))?;
            let var = format!("KILN_{}", key.trim().replace('.', "_").to_ascii_uppercase());
            let known_var = |v: &str| ENV_KEYS.contains(&v) || COUNTERS_ENV_KEYS.contains(&v);
            if !known_var(&var) {
                let known: Vec<String> = ENV_KEYS
                    .iter()
                    .chain(COUNTERS_ENV_KEYS)
                    .map(|k| {
                        // `limits.*` and `ollama.*` are tables; the rest are top-level keys.
                        let key = k["KILN_".len()..].to_ascii_lowercase();
                        match key.split_once('_') {
                            Some((table @ ("limits" | "ollama" | "gemini" | "tracing"), rest)) => {
                                format!("{table}.{rest}")
                            }
                            _ => key,
                        }
                    })
                    .collect();
                return Err(bad(
                    "--set",
                    item,
                    format!("unknown key; keys: {}", known.join(", ")),
                ));
            }
            set.push((var, value.to_string()));
        }
        c.apply_env(|k| {
            set.iter()
                .rev()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.clone())
        })?;
        if let Some(l) = &flags.listen {
            c.listen = Some(l.clone());
        }
        if let Some(u) = &flags.upstream {
            c.upstream = u.clone();
        }
        c.ollama.spawn |= flags.spawn_ollama;
        if !flags.preload.is_empty() {
            c.ollama.preload = flags.preload.clone();
        }
        if let Some(cmd) = &flags.ollama_command {
            c.ollama.command = cmd.clone();
        }
        c.validate()?;
        Ok(c)
    }

    /// Reads a TOML file.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.into(),
            message: e.to_string(),
        })
    }

    /// Applies `KILN_*` overrides; `var` looks a variable up (the process
    /// environment in production, a map in tests). Lists are comma-separated.
    pub fn apply_env(&mut self, var: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        let get = |k: &str| var(k).map(|v| (k.to_string(), v));
        if let Some((_, v)) = get("KILN_LISTEN") {
            self.listen = Some(v);
        }
        if let Some((_, v)) = get("KILN_UPSTREAM") {
            self.upstream = v;
        }
        if let Some((_, v)) = get("KILN_ALLOWED_ORIGINS") {
            self.allowed_origins = list(&v);
        }
        if let Some((k, v)) = get("KILN_ALLOW_MANAGEMENT_ROUTES") {
            self.allow_management_routes = boolean(&k, &v)?;
        }
        if let Some((_, v)) = get("KILN_METRICS_TOKEN") {
            self.metrics_token = Some(v).filter(|t| !t.is_empty());
        }
        if let Some((k, v)) = get("KILN_OLLAMA_SPAWN") {
            self.ollama.spawn = boolean(&k, &v)?;
        }
        if let Some((_, v)) = get("KILN_OLLAMA_PRELOAD") {
            self.ollama.preload = list(&v);
        }
        if let Some((k, v)) = get("KILN_GEMINI_ALIASES") {
            self.gemini.aliases = list(&v)
                .iter()
                .map(|pair| match pair.split_once('=') {
                    Some((a, m)) if !a.trim().is_empty() && !m.trim().is_empty() => {
                        Ok((a.trim().to_string(), m.trim().to_string()))
                    }
                    _ => Err(bad(
                        &k,
                        &v,
                        "expected ALIAS=MODEL,… e.g. gemma-3-4b-it=gemma3:4b",
                    )),
                })
                .collect::<Result<_, _>>()?;
        }
        if let Some((_, v)) = get("KILN_OLLAMA_COMMAND") {
            self.ollama.command = v.into();
        }
        if let Some((_, v)) = get("KILN_OLLAMA_ARGS") {
            self.ollama.args = v.split_whitespace().map(String::from).collect();
        }
        if let Some((k, v)) = get("KILN_OLLAMA_STARTUP_TIMEOUT_S") {
            self.ollama.startup_timeout_s = num(&k, &v)?;
        }
        if let Some((k, v)) = get("KILN_OLLAMA_MAX_RESTARTS") {
            self.ollama.max_restarts = num(&k, &v)?;
        }
        let l = &mut self.limits;
        for (key, field) in [
            ("KILN_LIMITS_MAX_IN_FLIGHT", &mut l.max_in_flight),
            ("KILN_LIMITS_MAX_QUEUE", &mut l.max_queue),
            ("KILN_LIMITS_MAX_BODY_BYTES", &mut l.max_body_bytes),
            ("KILN_LIMITS_MAX_BUFFERED_BYTES", &mut l.max_buffered_bytes),
            (
                "KILN_LIMITS_MAX_OTHER_IN_FLIGHT",
                &mut l.max_other_in_flight,
            ),
            (
                "KILN_LIMITS_PLUGIN_MAX_BODY_BYTES",
                &mut l.plugin_max_body_bytes,
            ),
            (
                "KILN_LIMITS_PLUGIN_MAX_JSON_VALUES",
                &mut l.plugin_max_json_values,
            ),
        ] {
            if let Some((k, v)) = get(key) {
                *field = num(&k, &v)?;
            }
        }
        for (key, field) in [
            ("KILN_LIMITS_REQUEST_TIMEOUT_S", &mut l.request_timeout_s),
            ("KILN_LIMITS_HEADER_TIMEOUT_S", &mut l.header_timeout_s),
            ("KILN_LIMITS_IDLE_TIMEOUT_S", &mut l.idle_timeout_s),
            ("KILN_LIMITS_SHUTDOWN_GRACE_S", &mut l.shutdown_grace_s),
        ] {
            if let Some((k, v)) = get(key) {
                *field = num(&k, &v)?;
            }
        }
        if let Some((k, v)) = get("KILN_TRACING_SAMPLE_RATIO") {
            self.tracing.sample_ratio = v
                .trim()
                .parse()
                .map_err(|_| bad(&k, &v, "expected a number from 0.0 to 1.0"))?;
        }
        if let Some((_, v)) = get("KILN_TRACING_PROJECT_ID") {
            self.tracing.project_id = Some(v).filter(|p| !p.is_empty());
        }
        self.counters.apply_env(&var)?;
        Ok(())
    }

    /// The address to listen on: `listen`, else `0.0.0.0:$PORT` (Cloud Run), else `0.0.0.0:8080`.
    pub fn listen_addr(&self, port_env: Option<&str>) -> Result<SocketAddr, ConfigError> {
        let (key, text) = match (&self.listen, port_env) {
            (Some(l), _) => ("listen", l.clone()),
            (None, Some(p)) => ("PORT", format!("0.0.0.0:{}", p.trim())),
            (None, None) => ("listen", "0.0.0.0:8080".to_string()),
        };
        text.parse()
            .map_err(|_| bad(key, &text, "expected IP:PORT, e.g. 0.0.0.0:8080"))
    }

    /// Checks values that would only fail later, at the first request.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let up = &self.upstream;
        let uri: http::Uri = up
            .parse()
            .map_err(|_| bad("upstream", up, "expected a URL like http://127.0.0.1:11434"))?;
        if uri.scheme_str() != Some("http") || uri.authority().is_none() {
            return Err(bad(
                "upstream",
                up,
                "expected http://HOST:PORT (Ollama runs beside the proxy over plain HTTP)",
            ));
        }
        let ratio = self.tracing.sample_ratio;
        if !(0.0..=1.0).contains(&ratio) {
            return Err(bad(
                "tracing.sample_ratio",
                &ratio.to_string(),
                "expected a number from 0.0 to 1.0",
            ));
        }
        let l = &self.limits;
        // Ranges: a value outside them would fail at the first request (a
        // deadline past the clock's range panics) or make the proxy useless.
        const DAY: u64 = 24 * 3600;
        let at_least_one: [(&str, u64); 7] = [
            ("limits.max_in_flight", l.max_in_flight as u64),
            ("limits.max_body_bytes", l.max_body_bytes as u64),
            ("limits.max_other_in_flight", l.max_other_in_flight as u64),
            ("limits.header_timeout_s", l.header_timeout_s),
            ("limits.idle_timeout_s", l.idle_timeout_s),
            (
                "limits.plugin_max_body_bytes",
                l.plugin_max_body_bytes as u64,
            ),
            (
                "limits.plugin_max_json_values",
                l.plugin_max_json_values as u64,
            ),
        ];
        for (key, v) in at_least_one {
            if v == 0 {
                return Err(bad(key, &v.to_string(), "must be at least 1"));
            }
        }
        for (key, v, max) in [
            ("limits.request_timeout_s", l.request_timeout_s, 7 * DAY),
            ("limits.header_timeout_s", l.header_timeout_s, DAY),
            ("limits.idle_timeout_s", l.idle_timeout_s, 7 * DAY),
            ("limits.shutdown_grace_s", l.shutdown_grace_s, DAY),
            (
                "ollama.startup_timeout_s",
                self.ollama.startup_timeout_s,
                7 * DAY,
            ),
        ] {
            if v > max {
                return Err(bad(
                    key,
                    &v.to_string(),
                    format!("must be at most {max} seconds"),
                ));
            }
        }
        if l.request_timeout_s == 0 {
            return Err(bad("limits.request_timeout_s", "0", "must be at least 1"));
        }
        if l.max_buffered_bytes < l.max_body_bytes {
            return Err(bad(
                "limits.max_buffered_bytes",
                &l.max_buffered_bytes.to_string(),
                format!(
                    "must be at least limits.max_body_bytes ({}), or no body of the largest allowed size could be read",
                    l.max_body_bytes
                ),
            ));
        }
        self.counters.validate()?;
        Ok(())
    }

    pub fn upstream_uri(&self) -> Result<http::Uri, ConfigError> {
        self.validate()?;
        self.upstream
            .trim_end_matches('/')
            .parse()
            .map_err(|_| bad("upstream", &self.upstream, "not a URL"))
    }

    /// A copy fit to print: the metrics token and every string in the
    /// plugins' `[plugins.config]` (API keys, among others: the host cannot
    /// tell which values are secret) replaced by `"<redacted>"`.
    pub fn redacted(&self) -> Config {
        fn strings(v: &mut serde_json::Value) {
            match v {
                serde_json::Value::String(s) => *s = "<redacted>".into(),
                serde_json::Value::Array(a) => a.iter_mut().for_each(strings),
                serde_json::Value::Object(o) => o.values_mut().for_each(strings),
                _ => {}
            }
        }
        let mut c = self.clone();
        if c.metrics_token.is_some() {
            c.metrics_token = Some("<redacted>".into());
        }
        for p in &mut c.plugins {
            strings(&mut p.config);
        }
        c
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.limits.request_timeout_s)
    }

    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.limits.idle_timeout_s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn design_example_parses() {
        let text = r#"
listen = "0.0.0.0:8080"
upstream = "http://127.0.0.1:11434"
[ollama]
spawn = true
preload = ["gemma3:4b"]
[limits]
max_in_flight = 4
max_queue = 4
max_body_bytes = 10485760
request_timeout_s = 600
[[plugins]]
name = "api-key"
path = "/plugins/api_key.wasm"
on_error = "deny"
routes = ["generate", "chat", "openai"]
[plugins.config]
keys = ["k1"]
"#;
        let c: Config = toml::from_str(text).unwrap();
        assert!(c.ollama.spawn);
        assert_eq!(c.ollama.preload, ["gemma3:4b"]);
        assert_eq!(c.plugins.len(), 1);
        assert_eq!(c.plugins[0].config["keys"][0], "k1");
        c.validate().unwrap();
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = toml::from_str::<Config>("[limits]\nmax_inflight = 3\n").unwrap_err();
        assert!(err.to_string().contains("max_inflight"), "{err}");
    }

    #[test]
    fn env_overrides_file_values() {
        let mut c = Config::default();
        let env = |k: &str| match k {
            "KILN_LIMITS_MAX_QUEUE" => Some("9".to_string()),
            "KILN_OLLAMA_PRELOAD" => Some("gemma3:4b, gemma3:1b".to_string()),
            "KILN_OLLAMA_SPAWN" => Some("true".to_string()),
            _ => None,
        };
        c.apply_env(env).unwrap();
        assert_eq!(c.limits.max_queue, 9);
        assert_eq!(c.ollama.preload, ["gemma3:4b", "gemma3:1b"]);
        assert!(c.ollama.spawn);
        let err = c
            .apply_env(|k| (k == "KILN_LIMITS_MAX_IN_FLIGHT").then(|| "four".into()))
            .unwrap_err();
        assert!(
            err.to_string().contains("KILN_LIMITS_MAX_IN_FLIGHT"),
            "{err}"
        );
    }

    #[test]
    fn gemini_aliases_come_from_the_file_or_the_environment() {
        let c: Config =
            toml::from_str("[gemini]\naliases = { \"gemma-3-4b-it\" = \"gemma3:4b\" }").unwrap();
        assert_eq!(c.gemini.aliases["gemma-3-4b-it"], "gemma3:4b");
        let mut c = Config::default();
        let env = |k: &str| {
            (k == "KILN_GEMINI_ALIASES")
                .then(|| "gemma-3-4b-it=gemma3:4b, gemma-3-1b-it = gemma3:1b".into())
        };
        c.apply_env(env).unwrap();
        assert_eq!(c.gemini.aliases["gemma-3-1b-it"], "gemma3:1b");
        assert_eq!(c.gemini.aliases.len(), 2);
        let err = c
            .apply_env(|k| (k == "KILN_GEMINI_ALIASES").then(|| "gemma3:4b".into()))
            .unwrap_err();
        assert!(err.to_string().contains("ALIAS=MODEL"), "{err}");
    }

    #[test]
    fn set_takes_any_key_and_refuses_unknown_ones() {
        let flags = Overrides {
            set: vec![
                "limits.max_queue=7".into(),
                "ollama.args=serve --verbose".into(),
            ],
            preload: vec!["gemma3:4b".into()],
            ..Overrides::default()
        };
        let env = |k: &str| (k == "KILN_LIMITS_MAX_QUEUE").then(|| "3".to_string());
        let c = Config::load(None, env, &flags).unwrap();
        assert_eq!(c.limits.max_queue, 7, "--set beats the environment");
        assert_eq!(c.ollama.args, ["serve", "--verbose"]);
        assert_eq!(c.ollama.preload, ["gemma3:4b"]);
        for (bad, hint) in [
            ("limits.max_inflight=3", "limits.max_in_flight"),
            ("nokey", "KEY=VALUE"),
            ("allow_management=1", "allow_management_routes"),
        ] {
            let flags = Overrides {
                set: vec![bad.into()],
                ..Overrides::default()
            };
            let err = Config::load(None, |_| None, &flags)
                .unwrap_err()
                .to_string();
            assert!(err.contains(bad) && err.contains(hint), "{err}");
        }
    }

    #[test]
    fn listen_defaults_follow_cloud_run_port() {
        let c = Config::default();
        assert_eq!(c.listen_addr(None).unwrap().to_string(), "0.0.0.0:8080");
        assert_eq!(
            c.listen_addr(Some("9000")).unwrap().to_string(),
            "0.0.0.0:9000"
        );
        let c = Config {
            listen: Some("127.0.0.1:1".into()),
            ..Config::default()
        };
        assert_eq!(
            c.listen_addr(Some("9000")).unwrap().to_string(),
            "127.0.0.1:1"
        );
    }

    #[test]
    fn ranges_are_checked_at_load() {
        let load = |set: &str| {
            let flags = Overrides {
                set: vec![set.into()],
                ..Overrides::default()
            };
            Config::load(None, |_| None, &flags).map(|_| ())
        };
        for bad in [
            "limits.request_timeout_s=18446744073709551615",
            "limits.request_timeout_s=0",
            "limits.idle_timeout_s=0",
            "limits.max_body_bytes=0",
            "limits.max_buffered_bytes=1",
            "ollama.startup_timeout_s=99999999",
        ] {
            let key = bad.split('=').next().unwrap();
            let err = load(bad).unwrap_err().to_string();
            assert!(err.contains(key), "{bad}: {err}");
        }
        load("limits.request_timeout_s=604800").unwrap();
        load("allow_management_routes=true").unwrap();
    }

    #[test]
    fn redacted_configs_hide_plugin_values_and_the_metrics_token() {
        let c: Config = toml::from_str(
            "metrics_token = \"t\"\n[[plugins]]\nname = \"k\"\npath = \"/p.wasm\"\n[plugins.config]\nkeys = [\"sk-1\", {name = \"n\", key = \"sk-2\"}]\nn = 3\n",
        )
        .unwrap();
        let text = format!("{:?}", c.redacted());
        assert!(
            !text.contains("sk-1") && !text.contains("sk-2") && !text.contains("\"t\""),
            "{text}"
        );
        assert!(text.contains("/p.wasm") && text.contains('3'), "{text}");
    }

    #[test]
    fn upstream_must_be_plain_http() {
        for bad in ["https://x:1", "127.0.0.1:11434", "not a url"] {
            let c = Config {
                upstream: bad.into(),
                ..Config::default()
            };
            assert!(c.validate().is_err(), "{bad}");
        }
    }
}

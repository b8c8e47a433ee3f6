//! A `[[plugins]]` entry of the proxy config, as the config file and the
//! plugin host both read it.

/// One `[[plugins]]` entry of the proxy config (docs/ARCHITECTURE.md, "Config").
#[derive(Clone, Debug, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct PluginSpec {
    pub name: String,
    pub path: std::path::PathBuf,
    /// Optional pin: the proxy refuses to start when the file's sha256 differs.
    #[serde(default)]
    pub sha256: Option<String>,
    #[serde(default)]
    pub on_error: OnError,
    /// Route selection (e.g. "generate", "chat", "openai", "inference", "all"); default: every route.
    #[serde(default)]
    pub routes: Option<Vec<String>>,
    /// Opaque to the host; handed to the plugin as JSON.
    #[serde(default)]
    pub config: serde_json::Value,
}

/// What happens to a request when a plugin fails (trap, deadline, bad output).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    /// Fail closed: the request is refused with a 5xx.
    #[default]
    Deny,
    /// Fail open: the request continues as if the plugin allowed it.
    Allow,
}

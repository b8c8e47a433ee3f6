//! The `[counters]` section of the proxy config: where the plugins'
//! `counter-add` counts. In process (one count per proxy, the default), or on
//! a shared Redis (Memorystore for Redis / Valkey) so that a limit means the
//! same at any instance count. docs/PLUGINS.md, "Counters", is the user's view.

use std::path::PathBuf;

use serde::Deserialize;

use crate::config::ConfigError;

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CountersConfig {
    /// `local` or `redis`; unset means `redis` when `url` is set, else `local`.
    pub backend: Option<CounterBackend>,
    /// `redis://HOST:PORT[/DB]` or `rediss://…` (TLS). May carry
    /// `user:password@`, but `password` (from a secret) is the better place.
    pub url: Option<String>,
    /// Redis AUTH password; overrides one in `url`.
    pub password: Option<String>,
    /// PEM file of the CA that signed the server's certificate (Memorystore's
    /// in-transit encryption uses its own CA): trusted instead of the system roots.
    pub ca_file: Option<PathBuf>,
    /// Prefix of every Redis key, so services sharing one Redis never share a
    /// counter. Unset: `$K_SERVICE` (set by Cloud Run), else `kiln`.
    pub namespace: Option<String>,
    /// Longest wait for Redis per `counter-add`, connecting included. Keep it
    /// well under the plugin deadline: rate-limit makes two calls per request.
    pub timeout_ms: u64,
    /// Connections to Redis at most: one per `counter-add` in progress (a
    /// call waits for Redis on its thread), so at least the plugin calls
    /// that run at once (about Cloud Run's `--concurrency`).
    pub pool_size: u32,
    /// What `counter-add` does while Redis is unreachable or slow.
    pub on_failure: CounterFailure,
    /// In-process keys per plugin; beyond it the least recently used key is
    /// forgotten (its caller starts from 0).
    pub max_keys: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CounterBackend {
    Local,
    Redis,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CounterFailure {
    /// Count in process (per-instance limits) until Redis is back.
    #[default]
    FailOpen,
    /// The plugin's call fails: the request gets the plugin-failure status.
    FailClosed,
}

impl Default for CountersConfig {
    fn default() -> Self {
        CountersConfig {
            backend: None,
            url: None,
            password: None,
            ca_file: None,
            namespace: None,
            timeout_ms: 10,
            pool_size: 32,
            on_failure: CounterFailure::FailOpen,
            max_keys: 100_000,
        }
    }
}

/// Secrets never reach logs or `check-config`: the password and any
/// password inside the URL are shown as `***`.
impl std::fmt::Debug for CountersConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CountersConfig")
            .field("backend", &self.backend())
            .field("url", &self.url.as_deref().map(redact_url))
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("ca_file", &self.ca_file)
            .field("namespace", &self.namespace)
            .field("timeout_ms", &self.timeout_ms)
            .field("pool_size", &self.pool_size)
            .field("on_failure", &self.on_failure)
            .field("max_keys", &self.max_keys)
            .finish()
    }
}

/// `rediss://user:secret@host` → `rediss://user:***@host`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            format!("{scheme}://{user}:***@{host}")
        }
        None => url.to_owned(),
    }
}

/// The `KILN_COUNTERS_*` variables (also settable with `--set counters.KEY=…`).
pub const ENV_KEYS: &[&str] = &[
    "KILN_COUNTERS_BACKEND",
    "KILN_COUNTERS_URL",
    "KILN_COUNTERS_PASSWORD",
    "KILN_COUNTERS_CA_FILE",
    "KILN_COUNTERS_NAMESPACE",
    "KILN_COUNTERS_TIMEOUT_MS",
    "KILN_COUNTERS_POOL_SIZE",
    "KILN_COUNTERS_ON_FAILURE",
    "KILN_COUNTERS_MAX_KEYS",
];

fn bad(key: &str, value: &str, reason: &str) -> ConfigError {
    ConfigError::Value {
        key: key.into(),
        value: value.into(),
        reason: reason.into(),
    }
}

fn number<T: std::str::FromStr>(key: &str, v: &str) -> Result<T, ConfigError> {
    v.trim()
        .parse()
        .map_err(|_| bad(key, v, "expected a whole number"))
}

impl CountersConfig {
    pub fn backend(&self) -> CounterBackend {
        match (self.backend, &self.url) {
            (Some(b), _) => b,
            (None, Some(_)) => CounterBackend::Redis,
            (None, None) => CounterBackend::Local,
        }
    }

    /// The key prefix: `namespace`, else `$K_SERVICE` (via `env`), else `kiln`.
    pub fn namespace(&self, env: impl Fn(&str) -> Option<String>) -> String {
        self.namespace
            .clone()
            .or_else(|| env("K_SERVICE"))
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "kiln".into())
    }

    pub fn apply_env(&mut self, var: &impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        let get = |k: &str| var(k).map(|v| (k.to_string(), v));
        if let Some((k, v)) = get("KILN_COUNTERS_BACKEND") {
            self.backend = Some(match v.trim() {
                "local" => CounterBackend::Local,
                "redis" => CounterBackend::Redis,
                _ => return Err(bad(&k, &v, "expected local or redis")),
            });
        }
        if let Some((_, v)) = get("KILN_COUNTERS_URL") {
            self.url = Some(v.trim().to_owned()).filter(|u| !u.is_empty());
        }
        if let Some((_, v)) = get("KILN_COUNTERS_PASSWORD") {
            // Secret Manager values often end in a newline.
            self.password = Some(v.trim_end_matches(['\r', '\n']).to_owned());
        }
        if let Some((_, v)) = get("KILN_COUNTERS_CA_FILE") {
            self.ca_file = Some(PathBuf::from(v));
        }
        if let Some((_, v)) = get("KILN_COUNTERS_NAMESPACE") {
            self.namespace = Some(v);
        }
        if let Some((k, v)) = get("KILN_COUNTERS_TIMEOUT_MS") {
            self.timeout_ms = number(&k, &v)?;
        }
        if let Some((k, v)) = get("KILN_COUNTERS_POOL_SIZE") {
            self.pool_size = number(&k, &v)?;
        }
        if let Some((k, v)) = get("KILN_COUNTERS_ON_FAILURE") {
            self.on_failure = match v.trim() {
                "fail_open" => CounterFailure::FailOpen,
                "fail_closed" => CounterFailure::FailClosed,
                _ => return Err(bad(&k, &v, "expected fail_open or fail_closed")),
            };
        }
        if let Some((k, v)) = get("KILN_COUNTERS_MAX_KEYS") {
            self.max_keys = number(&k, &v)?;
        }
        Ok(())
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let range = |key: &str, v: u64, min: u64, max: u64| {
            if (min..=max).contains(&v) {
                Ok(())
            } else {
                Err(bad(
                    key,
                    &v.to_string(),
                    &format!("must be from {min} to {max}"),
                ))
            }
        };
        range("counters.timeout_ms", self.timeout_ms, 1, 1000)?;
        range("counters.pool_size", self.pool_size.into(), 1, 1024)?;
        range("counters.max_keys", self.max_keys as u64, 1, 10_000_000)?;
        if self.backend() == CounterBackend::Local {
            return Ok(());
        }
        let Some(url) = &self.url else {
            return Err(bad(
                "counters.backend",
                "redis",
                "needs a server: set [counters] url or KILN_COUNTERS_URL, e.g. rediss://10.0.0.3:6378",
            ));
        };
        let shown = redact_url(url);
        let tls = if url.starts_with("rediss://") {
            true
        } else if url.starts_with("redis://") {
            false
        } else {
            return Err(bad(
                "counters.url",
                &shown,
                "expected redis://HOST:PORT or rediss://HOST:PORT (TLS)",
            ));
        };
        if self.ca_file.is_some() && !tls {
            return Err(bad(
                "counters.ca_file",
                &shown,
                "a CA file is for TLS: use a rediss:// URL",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_alone_selects_redis_and_secrets_are_not_shown() {
        let mut c = CountersConfig::default();
        assert_eq!(c.backend(), CounterBackend::Local);
        let env = |k: &str| match k {
            "KILN_COUNTERS_URL" => Some("rediss://default:hunter2@10.0.0.3:6378".into()),
            "KILN_COUNTERS_PASSWORD" => Some("s3cret\n".into()),
            "KILN_COUNTERS_ON_FAILURE" => Some("fail_closed".into()),
            _ => None,
        };
        c.apply_env(&env).unwrap();
        assert_eq!(c.backend(), CounterBackend::Redis);
        assert_eq!(c.password.as_deref(), Some("s3cret"));
        assert_eq!(c.on_failure, CounterFailure::FailClosed);
        c.validate().unwrap();
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("s3cret"),
            "{shown}"
        );
    }

    #[test]
    fn bad_settings_are_refused_with_the_fix() {
        let redis_without_url = CountersConfig {
            backend: Some(CounterBackend::Redis),
            ..CountersConfig::default()
        };
        assert!(
            redis_without_url
                .validate()
                .unwrap_err()
                .to_string()
                .contains("KILN_COUNTERS_URL")
        );
        let ca_without_tls = CountersConfig {
            url: Some("redis://127.0.0.1:6379".into()),
            ca_file: Some("/ca.pem".into()),
            ..CountersConfig::default()
        };
        assert!(
            ca_without_tls
                .validate()
                .unwrap_err()
                .to_string()
                .contains("rediss://")
        );
        let http = CountersConfig {
            url: Some("http://x".into()),
            ..CountersConfig::default()
        };
        assert!(http.validate().is_err());
        let slow = CountersConfig {
            timeout_ms: 0,
            ..CountersConfig::default()
        };
        assert!(slow.validate().is_err());
    }

    #[test]
    fn namespace_defaults_to_the_cloud_run_service() {
        let c = CountersConfig::default();
        assert_eq!(
            c.namespace(|k| (k == "K_SERVICE").then(|| "chat".into())),
            "chat"
        );
        assert_eq!(c.namespace(|_| None), "kiln");
    }
}

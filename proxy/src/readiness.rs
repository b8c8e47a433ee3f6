//! Readiness: green only once Ollama answers and every preloaded model is
//! loaded and pinned (`keep_alive: -1`), as `/api/ps` reports — so Cloud
//! Run's startup probe holds traffic back until the first request can be
//! served from a warm model.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http::Method;

use crate::upstream::{Upstream, UpstreamError};

pub struct Readiness {
    ready: AtomicBool,
    alive: AtomicBool,
    detail: Mutex<String>,
}

impl Default for Readiness {
    fn default() -> Self {
        Readiness {
            ready: AtomicBool::new(false),
            alive: AtomicBool::new(true),
            detail: Mutex::new("starting".into()),
        }
    }
}

impl Readiness {
    pub fn set(&self, ready: bool, detail: impl Into<String>) {
        self.ready.store(ready, Ordering::SeqCst);
        if let Ok(mut d) = self.detail.lock() {
            *d = detail.into();
        }
    }

    pub fn status(&self) -> (bool, String) {
        let detail = self.detail.lock().map(|d| d.clone()).unwrap_or_default();
        (self.ready.load(Ordering::SeqCst), detail)
    }

    /// Liveness turns red only when the proxy has given up on Ollama.
    pub fn set_alive(&self, alive: bool) {
        self.alive.store(alive, Ordering::SeqCst);
    }

    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::SeqCst)
    }
}

/// The short form Ollama lists a model under: `gemma3` → `gemma3:latest`,
/// `registry.ollama.ai/library/gemma3:4b` → `gemma3:4b`.
pub fn canonical_model(name: &str) -> String {
    let name = name.trim().to_ascii_lowercase();
    let name = name.strip_prefix("registry.ollama.ai/").unwrap_or(&name);
    let name = name.strip_prefix("library/").unwrap_or(name);
    let has_tag = name
        .rsplit('/')
        .next()
        .is_some_and(|last| last.contains(':'));
    if has_tag {
        name.to_string()
    } else {
        format!("{name}:latest")
    }
}

/// Waits for Ollama, preloads `models` pinned in memory, and waits until
/// `/api/ps` lists them all. Progress goes to `readiness` detail; each
/// model's load time to `metrics`.
pub async fn prepare(
    upstream: &Upstream,
    models: &[String],
    readiness: &Readiness,
    metrics: &crate::metrics::Metrics,
    timeout: Duration,
) -> Result<(), PrepareError> {
    tokio::time::timeout(timeout, async {
        readiness.set(false, format!("waiting for Ollama at {}", upstream.url()));
        while let Err(e) = upstream.json(Method::GET, "/api/version", None).await {
            readiness.set(false, format!("waiting for Ollama: {e}"));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for model in models {
            readiness.set(false, format!("loading {model}"));
            let started = tokio::time::Instant::now();
            let body = serde_json::json!({"model": model, "keep_alive": -1, "stream": false});
            upstream
                .json(Method::POST, "/api/generate", Some(body))
                .await
                .map_err(|source| PrepareError::Preload {
                    model: model.clone(),
                    source,
                })?;
            metrics.model_load(model, started.elapsed());
        }
        let want: Vec<String> = models.iter().map(|m| canonical_model(m)).collect();
        loop {
            let ps = upstream
                .json(Method::GET, "/api/ps", None)
                .await
                .map_err(PrepareError::Ps)?;
            let loaded: Vec<String> = ps["models"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|m| m["name"].as_str().map(canonical_model))
                        .collect()
                })
                .unwrap_or_default();
            let missing: Vec<&String> = want.iter().filter(|w| !loaded.contains(w)).collect();
            if missing.is_empty() {
                break;
            }
            readiness.set(false, format!("waiting for /api/ps to list {missing:?}"));
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        readiness.set(true, "ready");
        Ok(())
    })
    .await
    .map_err(|_| PrepareError::Timeout {
        timeout,
        stage: readiness.status().1,
    })?
}

#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    #[error(
        "Ollama was not ready within {timeout:?} (still {stage}); raise [ollama] startup_timeout_s or check Ollama's log"
    )]
    Timeout { timeout: Duration, stage: String },
    #[error("preloading {model} failed: {source}; is the model in OLLAMA_MODELS (ollama list)?")]
    Preload {
        model: String,
        source: UpstreamError,
    },
    #[error("cannot read /api/ps: {0}")]
    Ps(UpstreamError),
}

#[cfg(test)]
mod tests {
    use super::canonical_model;

    #[test]
    fn model_names_compare_in_canonical_form() {
        assert_eq!(canonical_model("gemma3"), "gemma3:latest");
        assert_eq!(canonical_model("gemma3:4b"), "gemma3:4b");
        assert_eq!(
            canonical_model("registry.ollama.ai/library/gemma3:4b"),
            "gemma3:4b"
        );
        assert_eq!(canonical_model("user/m"), "user/m:latest");
        assert_eq!(
            canonical_model("localhost:5000/ns/m"),
            "localhost:5000/ns/m:latest"
        );
    }
}

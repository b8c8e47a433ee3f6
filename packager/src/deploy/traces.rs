//! Traces from Cloud Run to Cloud Trace: the Google-Built OpenTelemetry
//! Collector as a sidecar (what Google documents for Cloud Run), its config
//! from a Secret Manager secret (deploy/otel-collector.yaml is one), and
//! kiln-proxy exporting OTLP/HTTP to it on loopback. The collector holds
//! the credentials and the TLS to Google; it also scrapes `/metrics` for
//! Managed Service for Prometheus when its config says so.

use serde_json::{Value, json};

use super::DeployOptions;

/// The collector's image (Google-Built OpenTelemetry Collector).
pub const COLLECTOR_IMAGE: &str = "us-docker.pkg.dev/cloud-ops-agents-artifacts/google-cloud-opentelemetry-collector/otelcol-google:0.122.1";
pub const COLLECTOR: &str = "collector";
const CONFIG_DIR: &str = "/etc/otelcol-google/";
const CONFIG_FILE: &str = "config.yaml";
const CONFIG_VOLUME: &str = "otel-config";
/// The collector's OTLP/HTTP receiver and health check (its config's ports).
const OTLP_ENDPOINT: &str = "http://localhost:4318";
const HEALTH_PORT: u16 = 13133;
/// What the collector takes from the instance's CPU and memory.
pub const COLLECTOR_CPU: u32 = 1;
pub const COLLECTOR_GIB: u32 = 1;

/// The proxy's environment when traces are on.
pub fn proxy_env(o: &DeployOptions) -> Vec<(&'static str, String)> {
    match o.trace_collector_config {
        Some(_) => vec![("OTEL_EXPORTER_OTLP_ENDPOINT", OTLP_ENDPOINT.to_string())],
        None => Vec::new(),
    }
}

/// The collector container, when traces are on.
pub fn collector(o: &DeployOptions) -> Option<Value> {
    o.trace_collector_config.as_ref()?;
    Some(json!({
        "name": COLLECTOR,
        "image": COLLECTOR_IMAGE,
        "args": [format!("--config={CONFIG_DIR}{CONFIG_FILE}")],
        "resources": {"limits": {"cpu": COLLECTOR_CPU.to_string(), "memory": format!("{COLLECTOR_GIB}Gi")}},
        // The proxy waits for this (container-dependencies), so no early span is refused.
        "startupProbe": {
            "httpGet": {"path": "/", "port": HEALTH_PORT},
            "periodSeconds": 5,
            "timeoutSeconds": 5,
            "failureThreshold": 12,
        },
        "volumeMounts": [{"name": CONFIG_VOLUME, "mountPath": CONFIG_DIR}],
    }))
}

/// The volume holding the collector's config, from its secret.
pub fn config_volume(o: &DeployOptions) -> Option<Value> {
    let secret = o.trace_collector_config.as_ref()?;
    Some(json!({
        "name": CONFIG_VOLUME,
        "secret": {
            "secretName": secret.name,
            "items": [{"key": secret.version, "path": CONFIG_FILE}],
        },
    }))
}

/// The collector as `gcloud run deploy` flags (after the proxy's containers).
pub fn gcloud_flags(o: &DeployOptions) -> Vec<String> {
    let Some(secret) = &o.trace_collector_config else {
        return Vec::new();
    };
    vec![
        format!("--container {COLLECTOR}"),
        format!("--image {COLLECTOR_IMAGE}"),
        format!("--args=--config={CONFIG_DIR}{CONFIG_FILE}"),
        format!("--cpu {COLLECTOR_CPU} --memory {COLLECTOR_GIB}Gi"),
        format!(
            "--set-secrets {CONFIG_DIR}{CONFIG_FILE}={}:{}",
            secret.name, secret.version
        ),
    ]
}

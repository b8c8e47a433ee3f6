//! The Google Cloud project traces and log lines belong to: configured, in
//! the environment, or — on Cloud Run only (`K_SERVICE` is set) — asked of
//! the metadata server, once, with a short timeout. Off Cloud Run the
//! metadata server is never contacted.

use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// How long the start may wait for the metadata server.
const METADATA_TIMEOUT: Duration = Duration::from_secs(1);

/// `GOOGLE_CLOUD_PROJECT` or `KILN_PROJECT_ID`, when set.
pub fn from_env(var: &impl Fn(&str) -> Option<String>) -> Option<String> {
    ["GOOGLE_CLOUD_PROJECT", "KILN_PROJECT_ID"]
        .iter()
        .find_map(|k| var(k).filter(|v| !v.trim().is_empty()))
}

/// The project from the metadata server when running on Cloud Run;
/// `GCE_METADATA_HOST` names another server (as Google's client libraries allow).
pub async fn on_cloud_run(var: &impl Fn(&str) -> Option<String>) -> Option<String> {
    var("K_SERVICE")?;
    let host = var("GCE_METADATA_HOST").unwrap_or_else(|| "metadata.google.internal".into());
    let uri = format!("http://{host}/computeMetadata/v1/project/project-id");
    match tokio::time::timeout(METADATA_TIMEOUT, ask(&uri)).await {
        Ok(Ok(p)) if !p.is_empty() => Some(p),
        Ok(Ok(_)) => None,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "cannot read the project from the metadata server; set tracing.project_id (KILN_TRACING_PROJECT_ID)");
            None
        }
        Err(_) => {
            tracing::warn!(timeout = ?METADATA_TIMEOUT, "the metadata server did not answer; set tracing.project_id (KILN_TRACING_PROJECT_ID)");
            None
        }
    }
}

async fn ask(uri: &str) -> anyhow::Result<String> {
    let client = Client::builder(TokioExecutor::new())
        .build(hyper_util::client::legacy::connect::HttpConnector::new());
    let req = http::Request::get(uri)
        .header("metadata-flavor", "Google")
        .body(Empty::<bytes::Bytes>::new())?;
    let resp = client.request(req).await?;
    anyhow::ensure!(resp.status().is_success(), "status {}", resp.status());
    let body = resp.into_body().collect().await?.to_bytes();
    Ok(String::from_utf8_lossy(&body).trim().to_owned())
}

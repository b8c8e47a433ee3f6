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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A metadata server on loopback: answers `project` to a request that
    /// carries `Metadata-Flavor: Google`, or never answers when `None`.
    async fn metadata_server(project: Option<&'static str>) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let n = conn.read(&mut buf).await.unwrap_or(0);
                    let head = String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase();
                    let Some(p) = project else {
                        tokio::time::sleep(Duration::from_secs(30)).await;
                        return;
                    };
                    let ok = head.starts_with("get /computemetadata/v1/project/project-id ")
                        && head.contains("metadata-flavor: google");
                    let reply = if ok {
                        format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{p}", p.len())
                    } else {
                        "HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n".to_string()
                    };
                    let _ = conn.write_all(reply.as_bytes()).await;
                });
            }
        });
        addr
    }

    fn env(pairs: Vec<(&'static str, String)>) -> impl Fn(&str) -> Option<String> {
        move |k| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone())
    }

    #[tokio::test]
    async fn the_metadata_server_names_the_project_on_cloud_run_only() {
        let host = metadata_server(Some("my-project")).await;
        let on_run = env(vec![
            ("K_SERVICE", "svc".into()),
            ("GCE_METADATA_HOST", host.clone()),
        ]);
        assert_eq!(on_cloud_run(&on_run).await.as_deref(), Some("my-project"));
        // Off Cloud Run (no K_SERVICE) the server is not asked.
        let elsewhere = env(vec![("GCE_METADATA_HOST", host)]);
        assert_eq!(on_cloud_run(&elsewhere).await, None);
    }

    #[tokio::test]
    async fn a_silent_metadata_server_costs_at_most_the_timeout() {
        let host = metadata_server(None).await;
        let on_run = env(vec![
            ("K_SERVICE", "svc".into()),
            ("GCE_METADATA_HOST", host),
        ]);
        let started = std::time::Instant::now();
        assert_eq!(on_cloud_run(&on_run).await, None);
        assert!(started.elapsed() < METADATA_TIMEOUT + Duration::from_millis(500));
    }

    #[test]
    fn the_environment_names_the_project_first() {
        let var = env(vec![("GOOGLE_CLOUD_PROJECT", "p1".into())]);
        assert_eq!(from_env(&var).as_deref(), Some("p1"));
        assert_eq!(from_env(&env(vec![])), None);
    }
}

//! The connection to Ollama: a pooled HTTP/1 client and the small JSON calls
//! readiness needs.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::body::{BoxError, ReqBody};

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("Ollama at {url} is unreachable ({}); is `ollama serve` running there?", chain(.source.as_ref()))]
    Unreachable { url: String, source: BoxError },
    #[error("Ollama answered {path} with status {status}: {body}")]
    Status {
        path: String,
        status: u16,
        body: String,
    },
    #[error("Ollama's answer to {path} is not the JSON expected: {message}")]
    BadAnswer { path: String, message: String },
}

/// An error and its causes on one line: hyper's own message alone
/// ("client error (Connect)") does not say what went wrong.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}

#[derive(Clone)]
pub struct Upstream {
    client: Client<HttpConnector, ReqBody>,
    scheme_authority: String,
    authority: HeaderValue,
}

impl Upstream {
    /// `base` is `http://HOST:PORT` (validated by the config).
    pub fn new(base: &Uri) -> Upstream {
        let mut connector = HttpConnector::new();
        // Small streamed chunks must leave at once, not wait for Nagle.
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(256)
            .build(connector);
        let authority = base
            .authority()
            .map(|a| a.as_str())
            .unwrap_or("127.0.0.1:11434");
        Upstream {
            client,
            scheme_authority: format!("http://{authority}"),
            authority: HeaderValue::from_str(authority)
                .unwrap_or_else(|_| HeaderValue::from_static("127.0.0.1:11434")),
        }
    }

    /// The `Host` header Ollama must see: its own, local authority.
    pub fn authority(&self) -> &HeaderValue {
        &self.authority
    }

    pub fn url(&self) -> &str {
        &self.scheme_authority
    }

    pub fn uri(&self, path_and_query: &str) -> Result<Uri, http::Error> {
        Ok(format!("{}{}", self.scheme_authority, path_and_query).parse::<Uri>()?)
    }

    pub async fn send(&self, req: Request<ReqBody>) -> Result<Response<Incoming>, UpstreamError> {
        self.client
            .request(req)
            .await
            .map_err(|e| UpstreamError::Unreachable {
                url: self.scheme_authority.clone(),
                source: Box::new(e),
            })
    }

    /// A small JSON exchange (readiness checks, preloading). Bodies here are tiny.
    pub async fn json(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<serde_json::Value, UpstreamError> {
        let bytes = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        let req = Request::builder()
            .method(method)
            .uri(self.uri(path).map_err(|e| UpstreamError::BadAnswer {
                path: path.into(),
                message: e.to_string(),
            })?)
            .header(http::header::HOST, self.authority.clone())
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(
                Full::new(bytes)
                    .map_err(|e| -> BoxError { match e {} })
                    .boxed_unsync(),
            )
            .map_err(|e| UpstreamError::BadAnswer {
                path: path.into(),
                message: e.to_string(),
            })?;
        let resp = self.send(req).await?;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| UpstreamError::Unreachable {
                url: self.scheme_authority.clone(),
                source: Box::new(e),
            })?
            .to_bytes();
        if status != 200 {
            return Err(UpstreamError::Status {
                path: path.into(),
                status,
                body: String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned(),
            });
        }
        // A streamed answer (e.g. a preload without "stream": false) is NDJSON: its last line counts.
        let last = body
            .split(|b| *b == b'\n')
            .rfind(|l| !l.iter().all(u8::is_ascii_whitespace))
            .unwrap_or(&[]);
        serde_json::from_slice(last).map_err(|e| UpstreamError::BadAnswer {
            path: path.into(),
            message: e.to_string(),
        })
    }
}

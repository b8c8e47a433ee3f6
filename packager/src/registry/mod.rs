//! kiln's one OCI distribution client, written over reqwest: the calls
//! `kiln pack` and `kiln inspect` make (HEAD, GET, mount, monolithic PUT,
//! exact manifest bytes), and the raw GET `kiln pull` builds its Ollama
//! registry quirks on ([`crate::pull::ollama_registry`]: ranged parts,
//! resume, expired CDN URLs). Authentication challenges are answered here
//! ([`challenge`]) for every caller, and redirects are followed by hand so
//! that credentials only ever go to the registry's own origin (Docker Hub and
//! Ollama's registry answer blob GETs with a 307 to a presigned CDN URL).
//!
//! Why not oci-client: its token fetch swallows authentication errors (a bad
//! password surfaces later as a bare 401 with no hint), `mount_blob` treats the
//! spec's 202 "mount not possible, upload started" as an error, it has no way
//! to restart an upload from a re-openable source, and the shape kiln needs
//! (HEAD, mount, monolithic streamed PUT, exact manifest bytes) is a handful of
//! requests. Owning them gives one clear line per failure.

pub(crate) mod challenge;
mod error;

use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use reqwest::{Method, RequestBuilder, Response, StatusCode, Url, header};

use crate::credentials::Credential;
use crate::image::{AnyManifest, MANIFEST_ACCEPT, sha256_digest};

pub use challenge::Action;
pub use error::RegistryError;

pub type Result<T> = std::result::Result<T, RegistryError>;

/// Registries refuse manifests over 4 MiB; a bigger answer is not a manifest.
const MANIFEST_LIMIT: usize = 4 << 20;
/// Image configs are kilobytes; this bounds memory against a hostile registry.
const CONFIG_LIMIT: usize = 16 << 20;
const MAX_REDIRECTS: usize = 10;

/// A manifest as served: exact bytes, media type and digest.
#[derive(Clone, Debug)]
pub struct RawManifest {
    pub bytes: Bytes,
    pub media_type: String,
    pub digest: String,
}

impl RawManifest {
    pub fn parse(&self, what: &str) -> std::result::Result<AnyManifest, crate::image::ImageError> {
        AnyManifest::parse(&self.media_type, &self.bytes, what)
    }
}

/// What a mount request achieved.
pub enum Mount {
    Mounted,
    /// The registry could not mount and opened a normal upload session instead.
    Upload(String),
}

/// One registry, one credential, a cache of tokens.
pub struct RegistryClient {
    http: reqwest::Client,
    /// `host[:port]`, as users name the registry.
    host: String,
    /// `scheme://host[:port][/prefix]`, no trailing slash.
    base: String,
    /// Where credentials may go.
    origin: Url,
    credential: Credential,
    tokens: Mutex<challenge::TokenCache>,
}

impl RegistryClient {
    /// `host` is the API host (`registry-1.docker.io`, `127.0.0.1:5000`).
    pub fn new(host: &str, plain_http: bool, credential: Credential) -> Result<RegistryClient> {
        let scheme = if plain_http { "http" } else { "https" };
        let base =
            Url::parse(&format!("{scheme}://{host}")).map_err(|e| RegistryError::Protocol {
                host: host.to_string(),
                what: format!("nothing: {host} is not a usable host ({e})"),
            })?;
        RegistryClient::with_base(base, credential, Duration::from_secs(15))
    }

    /// A client for the registry at `base` (`http://127.0.0.1:5000`, maybe
    /// with a path prefix, as a mirror given to `--source-registry`).
    pub fn with_base(
        base: Url,
        credential: Credential,
        connect_timeout: Duration,
    ) -> Result<RegistryClient> {
        let host = match (base.host_str(), base.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_string(),
            _ => base.to_string(),
        };
        // reqwest is built without a default crypto provider so that the
        // workspace uses ring only; installing twice is harmless.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .user_agent(concat!("kiln/", env!("CARGO_PKG_VERSION")))
            // Redirects are followed by `exchange`, which knows where credentials may go.
            .redirect(reqwest::redirect::Policy::none())
            // Parallel transfers (ranged parts of one blob, concurrent uploads)
            // are meant as separate TCP connections, each with its own
            // congestion window; HTTP/2 would multiplex them onto one.
            .http1_only()
            .tcp_nodelay(true)
            .connect_timeout(connect_timeout)
            // No overall timeout (multi-GB bodies); a stalled read still fails.
            .read_timeout(Duration::from_secs(120))
            .build()
            .map_err(|e| RegistryError::Unreachable {
                host: host.clone(),
                detail: e.to_string(),
                hint: "check the system's TLS setup".into(),
            })?;
        Ok(RegistryClient {
            http,
            base: base.as_str().trim_end_matches('/').to_string(),
            host,
            origin: base,
            credential,
            tokens: Mutex::new(challenge::TokenCache::default()),
        })
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    /// `scheme://host[:port][/prefix]` without a trailing slash.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// `BASE/v2/REPO/manifests/REFERENCE`.
    pub fn manifest_url(&self, repo: &str, reference: &str) -> Result<Url> {
        self.url(&format!("{}/v2/{repo}/manifests/{reference}", self.base))
    }

    /// `BASE/v2/REPO/blobs/DIGEST` (the digest with its colon).
    pub fn blob_url(&self, repo: &str, digest: &str) -> Result<Url> {
        self.url(&format!("{}/v2/{repo}/blobs/{digest}", self.base))
    }

    fn url(&self, s: &str) -> Result<Url> {
        Url::parse(s).map_err(|e| RegistryError::Protocol {
            host: self.host.clone(),
            what: format!("nothing: cannot form the URL {s} ({e})"),
        })
    }

    fn same_origin(&self, url: &Url) -> bool {
        url.scheme() == self.origin.scheme()
            && url.host_str() == self.origin.host_str()
            && url.port_or_known_default() == self.origin.port_or_known_default()
    }

    /// GET a manifest (image or index) by tag or digest, keeping the exact bytes.
    pub async fn get_manifest(&self, repo: &str, reference: &str) -> Result<RawManifest> {
        let url = format!("{}/v2/{repo}/manifests/{reference}", self.base);
        let what = format!("manifest {repo}:{reference}");
        let resp = self
            .send(repo, Action::Pull, &what, || {
                Ok(self.http.get(&url).header(header::ACCEPT, MANIFEST_ACCEPT))
            })
            .await?;
        let media_type = content_type(&resp);
        let bytes = self.read_limited(resp, MANIFEST_LIMIT, &what).await?;
        let digest = sha256_digest(&bytes);
        if reference.starts_with("sha256:") && reference != digest {
            return Err(RegistryError::Protocol {
                host: self.host.clone(),
                what: format!("{what} whose bytes hash to {digest}"),
            });
        }
        Ok(RawManifest {
            bytes,
            media_type,
            digest,
        })
    }

    /// HEAD a blob: does the repository already have it?
    pub async fn blob_exists(&self, repo: &str, digest: &str) -> Result<bool> {
        let url = format!("{}/v2/{repo}/blobs/{digest}", self.base);
        match self
            .send(repo, Action::Push, &format!("blob {digest}"), || {
                Ok(self.http.head(&url))
            })
            .await
        {
            Ok(_) => Ok(true),
            Err(RegistryError::NotFound { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// GET a blob as a byte stream (redirects followed, credentials kept
    /// for the registry's origin).
    pub async fn get_blob(
        &self,
        repo: &str,
        digest: &str,
    ) -> Result<(
        Option<u64>,
        impl Stream<Item = reqwest::Result<Bytes>> + use<>,
    )> {
        let resp = self.blob_response(repo, digest).await?;
        Ok((resp.content_length(), resp.bytes_stream()))
    }

    /// The answer to `GET /v2/REPO/blobs/DIGEST`, auth and retries handled.
    async fn blob_response(&self, repo: &str, digest: &str) -> Result<reqwest::Response> {
        let url = format!("{}/v2/{repo}/blobs/{digest}", self.base);
        self.send(
            repo,
            Action::Pull,
            &format!("blob {digest} of {repo}"),
            || Ok(self.http.get(&url)),
        )
        .await
    }

    /// Small blobs (configs): fetched whole and verified.
    pub async fn get_blob_bytes(&self, repo: &str, digest: &str) -> Result<Bytes> {
        let resp = self.blob_response(repo, digest).await?;
        let bytes = self.read_limited(resp, CONFIG_LIMIT, digest).await?;
        if sha256_digest(&bytes) != digest {
            return Err(RegistryError::Protocol {
                host: self.host.clone(),
                what: format!("blob {digest} with other content"),
            });
        }
        Ok(bytes)
    }

    /// POST `?mount=&from=`: links a blob another repository of the same
    /// registry already has, with no bytes sent.
    pub async fn mount_blob(&self, repo: &str, digest: &str, from: &str) -> Result<Mount> {
        let url = format!(
            "{}/v2/{repo}/blobs/uploads/?mount={digest}&from={from}",
            self.base
        );
        let resp = self
            .send(
                repo,
                Action::PushFrom(from.to_string()),
                &format!("mounting {digest} from {from}"),
                || Ok(self.http.post(&url).header(header::CONTENT_LENGTH, 0)),
            )
            .await?;
        match resp.status() {
            StatusCode::CREATED => Ok(Mount::Mounted),
            _ => Ok(Mount::Upload(self.location(&resp)?)),
        }
    }

    /// POST: opens an upload session and returns its URL.
    pub async fn start_upload(&self, repo: &str) -> Result<String> {
        let url = format!("{}/v2/{repo}/blobs/uploads/", self.base);
        let resp = self
            .send(
                repo,
                Action::Push,
                &format!("starting an upload to {repo}"),
                || Ok(self.http.post(&url).header(header::CONTENT_LENGTH, 0)),
            )
            .await?;
        self.location(&resp)
    }

    /// The monolithic upload: one PUT carrying the whole blob, with its length
    /// and digest known up front. Artifact Registry rejects chunked uploads
    /// (several PATCHes), so kiln never sends a PATCH or a `Content-Range`.
    pub async fn put_upload(
        &self,
        repo: &str,
        location: &str,
        digest: &str,
        size: u64,
        body: reqwest::Body,
    ) -> Result<()> {
        let sep = if location.contains('?') { '&' } else { '?' };
        let url = format!("{location}{sep}digest={digest}");
        // The body is consumed by the first attempt; `send` may only retry
        // after an auth challenge, which the POST before this already settled.
        let body = Mutex::new(Some(body));
        self.send(
            repo,
            Action::Push,
            &format!("uploading {digest} ({size} bytes) to {repo}"),
            || {
                let body = body.lock().ok().and_then(|mut b| b.take()).ok_or_else(|| {
                    RegistryError::Reauthenticate {
                        host: self.host.clone(),
                        what: format!("uploading {digest}"),
                    }
                })?;
                Ok(self
                    .http
                    .put(&url)
                    .header(header::CONTENT_TYPE, "application/octet-stream")
                    .header(header::CONTENT_LENGTH, size)
                    .body(body))
            },
        )
        .await?;
        Ok(())
    }

    /// PUT a manifest's exact bytes under a tag or digest; returns its digest.
    pub async fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        bytes: Bytes,
    ) -> Result<String> {
        let url = format!("{}/v2/{repo}/manifests/{reference}", self.base);
        let digest = sha256_digest(&bytes);
        self.send(
            repo,
            Action::Push,
            &format!("pushing manifest {repo}:{reference}"),
            || {
                Ok(self
                    .http
                    .put(&url)
                    .header(header::CONTENT_TYPE, media_type)
                    .body(bytes.clone()))
            },
        )
        .await?;
        Ok(digest)
    }

    /// Sends a request built by `make` through [`RegistryClient::exchange`]
    /// and turns an unsuccessful answer into an error that says what to do.
    async fn send(
        &self,
        repo: &str,
        action: Action,
        what: &str,
        make: impl Fn() -> Result<RequestBuilder>,
    ) -> Result<Response> {
        let resp = self
            .exchange(repo, &action, |target| {
                let builder = make()?;
                let Some(target) = target else {
                    return Ok(builder);
                };
                let mut request = builder.build().map_err(|e| self.unreachable(e))?;
                *request.url_mut() = target.clone();
                Ok(RequestBuilder::from_parts(self.http.clone(), request))
            })
            .await?;
        self.check(resp, repo, &action, what).await
    }

    /// A GET as `kiln pull` needs it: `Accept` and `Range` as given, and the
    /// answer whatever its status, with the URL it finally came from (a CDN's,
    /// after a redirect).
    pub async fn get(
        &self,
        url: Url,
        repo: &str,
        accept: Option<&str>,
        range: Option<(u64, u64)>,
    ) -> Result<(Response, Url)> {
        let mut last = url.clone();
        let resp = self
            .exchange(repo, &Action::Pull, |target| {
                let target = target.cloned().unwrap_or_else(|| url.clone());
                last = target.clone();
                let mut request = self.http.get(target);
                if let Some(accept) = accept {
                    request = request.header(header::ACCEPT, accept);
                }
                if let Some((start, end)) = range {
                    request = request.header(header::RANGE, format!("bytes={start}-{end}"));
                }
                Ok(request)
            })
            .await?;
        Ok((resp, last))
    }

    /// One exchange as the protocol wants it: the request `make` builds
    /// (given `None`, or the URL a redirect led to), with the credential the
    /// registry asked for; one authentication challenge answered and the
    /// request sent again; redirects of GET and HEAD followed, credentials
    /// sent only to the registry's origin. Returns the last answer, whatever
    /// its status.
    async fn exchange(
        &self,
        repo: &str,
        action: &Action,
        mut make: impl FnMut(Option<&Url>) -> Result<RequestBuilder>,
    ) -> Result<Response> {
        let mut challenged = false;
        let mut redirected: Option<Url> = None;
        for _ in 0..=MAX_REDIRECTS {
            let request = make(redirected.as_ref())?
                .build()
                .map_err(|e| self.unreachable(e))?;
            let (method, url) = (request.method().clone(), request.url().clone());
            let mut request = RequestBuilder::from_parts(self.http.clone(), request);
            let same_origin = self.same_origin(&url);
            if same_origin && let Some(value) = self.authorization(repo, action) {
                request = request.header(header::AUTHORIZATION, value);
            }
            let resp = request.send().await.map_err(|e| self.unreachable(e))?;
            let status = resp.status();
            if status == StatusCode::UNAUTHORIZED && same_origin && !challenged {
                challenged = true;
                let challenge = resp
                    .headers()
                    .get(header::WWW_AUTHENTICATE)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                if self
                    .answer_challenge(repo, action, challenge.as_deref())
                    .await?
                {
                    continue;
                }
            }
            let follow = method == Method::GET || method == Method::HEAD;
            if follow && status.is_redirection() && status != StatusCode::NOT_MODIFIED {
                redirected = Some(redirect_target(&url, resp.headers()).ok_or_else(|| {
                    RegistryError::Protocol {
                        host: self.host.clone(),
                        what: format!(
                            "HTTP {status} from {} without a usable Location header",
                            redact(&url)
                        ),
                    }
                })?);
                continue;
            }
            return Ok(resp);
        }
        Err(RegistryError::Protocol {
            host: self.host.clone(),
            what: format!("more than {MAX_REDIRECTS} redirects"),
        })
    }

    async fn check(
        &self,
        resp: Response,
        repo: &str,
        action: &Action,
        what: &str,
    ) -> Result<Response> {
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let host = self.host.clone();
        Err(match status {
            StatusCode::UNAUTHORIZED => RegistryError::Unauthorized {
                host,
                repo: repo.to_string(),
            },
            StatusCode::FORBIDDEN => RegistryError::Denied {
                host,
                repo: repo.to_string(),
                action: action.verb(),
            },
            StatusCode::NOT_FOUND => RegistryError::NotFound {
                host,
                what: what.to_string(),
                hint: if what.starts_with("manifest") {
                    "check the name and tag"
                } else {
                    "the registry lists it but cannot serve it; push that image again or use another"
                },
            },
            _ => {
                let body = resp.text().await.unwrap_or_default();
                let mut detail = error_detail(&body);
                if status == StatusCode::TOO_MANY_REQUESTS {
                    // Docker Hub limits anonymous manifest pulls per address.
                    detail.push_str("; the registry is rate-limiting: wait, or log in (`docker login`) for a higher limit");
                }
                RegistryError::Status {
                    host,
                    what: what.to_string(),
                    status: status.as_u16(),
                    detail,
                }
            }
        })
    }

    fn location(&self, resp: &Response) -> Result<String> {
        let location = resp
            .headers()
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| RegistryError::Protocol {
                host: self.host.clone(),
                what: "an upload session without a Location".into(),
            })?;
        // The spec allows relative and absolute locations: resolve against the
        // upload URL's origin, as a browser would.
        let upload_url = resp.url().clone();
        upload_url
            .join(location)
            .map(String::from)
            .map_err(|_| RegistryError::Protocol {
                host: self.host.clone(),
                what: format!("an upload Location that is not a URL: {location:?}"),
            })
    }

    /// Reads a small body whole, refusing more than `limit` bytes.
    async fn read_limited(&self, mut resp: Response, limit: usize, what: &str) -> Result<Bytes> {
        let mut out = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| self.unreachable(e))? {
            if out.len() + chunk.len() > limit {
                return Err(RegistryError::Protocol {
                    host: self.host.clone(),
                    what: format!("more than {limit} bytes for {what}"),
                });
            }
            out.extend_from_slice(&chunk);
        }
        Ok(Bytes::from(out))
    }

    fn unreachable(&self, e: reqwest::Error) -> RegistryError {
        let detail = describe(&e);
        let hint = if self.base.starts_with("https://") {
            format!(
                "check the name and your network (a plain-HTTP registry needs --insecure-registry {})",
                self.host
            )
        } else {
            "check the name and that the registry is running".to_string()
        };
        RegistryError::Unreachable {
            host: self.host.clone(),
            detail,
            hint,
        }
    }
}

/// One line for a reqwest error: what went wrong and its chain of causes,
/// without the URL (presigned URLs carry credentials in their query).
pub fn describe(error: &reqwest::Error) -> String {
    use std::error::Error as _;
    let mut parts = Vec::new();
    let mut source: Option<&dyn std::error::Error> = error.source();
    let top = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "could not connect"
    } else if error.is_body() || error.is_decode() {
        "connection broke while reading"
    } else {
        "request failed"
    };
    parts.push(top.to_string());
    while let Some(cause) = source {
        let text = cause.to_string();
        if parts.last() != Some(&text) {
            parts.push(text);
        }
        source = cause.source();
    }
    parts.join(": ")
}

/// A URL for messages: presigned CDN URLs carry credentials in the query.
pub fn redact(url: &Url) -> String {
    let mut shown = url.clone();
    shown.set_query(None);
    shown.set_fragment(None);
    let _ = shown.set_password(None);
    shown.to_string()
}

/// Where a redirect leads, resolved against the URL it came from; only
/// `http` and `https` targets.
fn redirect_target(from: &Url, headers: &header::HeaderMap) -> Option<Url> {
    let location = headers.get(header::LOCATION)?.to_str().ok()?;
    let target = from.join(location).ok()?;
    matches!(target.scheme(), "http" | "https").then_some(target)
}

fn content_type(resp: &Response) -> String {
    resp.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

/// The registry's own error message (`{"errors":[{"code","message"}]}`), short.
fn error_detail(body: &str) -> String {
    #[derive(serde::Deserialize)]
    struct Errors {
        errors: Vec<Entry>,
    }
    #[derive(serde::Deserialize)]
    struct Entry {
        code: Option<String>,
        message: Option<String>,
    }
    if let Ok(parsed) = serde_json::from_str::<Errors>(body)
        && let Some(first) = parsed.errors.first()
    {
        return format!(
            ": {} {}",
            first.code.as_deref().unwrap_or(""),
            first.message.as_deref().unwrap_or("")
        )
        .trim_end()
        .to_string();
    }
    let line = body.lines().next().unwrap_or("").trim();
    if line.is_empty() {
        String::new()
    } else {
        format!(": {}", line.chars().take(200).collect::<String>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::{HeaderMap, HeaderValue, LOCATION};

    #[test]
    fn presigned_query_strings_are_not_shown() {
        let url = Url::parse("https://cdn.example/data?X-Amz-Signature=secret").unwrap();
        assert_eq!(redact(&url), "https://cdn.example/data");
    }

    #[test]
    fn relative_and_absolute_redirects_resolve_and_other_schemes_are_refused() {
        let from = Url::parse("http://127.0.0.1:5000/v2/x/blobs/sha256:1").unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(LOCATION, HeaderValue::from_static("/cdn/blob"));
        assert_eq!(
            redirect_target(&from, &headers).unwrap().as_str(),
            "http://127.0.0.1:5000/cdn/blob"
        );
        headers.insert(LOCATION, HeaderValue::from_static("file:///etc/passwd"));
        assert!(redirect_target(&from, &headers).is_none());
    }
}

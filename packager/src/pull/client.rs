//! HTTP to one Ollama-style registry: authentication challenges, and
//! redirects followed by hand so that credentials never leave the registry's
//! origin (the registry 307s blob requests to a presigned CDN URL).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use reqwest::header::{
    ACCEPT, AUTHORIZATION, HeaderMap, HeaderValue, LOCATION, RANGE, WWW_AUTHENTICATE,
};
use reqwest::{Response, StatusCode, Url};

use super::PullError;

/// The only manifest type Ollama's registry serves, and the only `Accept`
/// value Ollama sends (sending others can change what a mirror returns).
pub const MANIFEST_ACCEPT: &str = "application/vnd.docker.distribution.manifest.v2+json";

const MAX_REDIRECTS: usize = 10;

/// A user name and password for a registry that asks for them (Basic, or the
/// Docker token flow's realm).
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// Installs rustls' ring provider as the process default, once. The
/// workspace builds reqwest with `rustls-no-provider` so that only ring is
/// compiled; without an installed provider reqwest panics when building a client.
pub fn install_crypto_provider() {
    // An error means a provider is already installed, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A client for one registry (scheme + host + port, possibly with a path prefix).
#[derive(Clone)]
pub struct RegistryClient {
    http: reqwest::Client,
    /// `scheme://host[:port][/prefix]` without a trailing slash.
    base: Url,
    credentials: Option<Credentials>,
    /// `Authorization` values obtained per repository (scope).
    auth: Arc<Mutex<HashMap<String, HeaderValue>>>,
}

impl RegistryClient {
    pub fn new(
        base: Url,
        credentials: Option<Credentials>,
        connect_timeout: Duration,
    ) -> Result<Self, PullError> {
        install_crypto_provider();
        let http = reqwest::Client::builder()
            .user_agent(concat!("kiln/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::none())
            // Parallel parts are meant as separate TCP connections (each with
            // its own congestion window); HTTP/2 would multiplex them onto one.
            .http1_only()
            .connect_timeout(connect_timeout)
            .tcp_nodelay(true)
            .build()
            .map_err(|e| PullError::Network {
                what: format!("building an HTTP client for {base}"),
                detail: super::describe(&e),
            })?;
        Ok(RegistryClient {
            http,
            base,
            credentials,
            auth: Arc::default(),
        })
    }

    pub fn base(&self) -> &Url {
        &self.base
    }

    /// What users call this registry in messages: its host[:port].
    pub fn display_host(&self) -> String {
        match (self.base.host_str(), self.base.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_string(),
            _ => self.base.to_string(),
        }
    }

    fn endpoint(&self, path: &str) -> Result<Url, PullError> {
        let joined = format!("{}/{}", self.base.as_str().trim_end_matches('/'), path);
        Url::parse(&joined).map_err(|e| PullError::Protocol {
            registry: self.display_host(),
            detail: format!("cannot form URL {joined}: {e}"),
        })
    }

    pub fn manifest_url(&self, repository: &str, tag: &str) -> Result<Url, PullError> {
        self.endpoint(&format!("v2/{repository}/manifests/{tag}"))
    }

    pub fn blob_url(&self, repository: &str, digest: &str) -> Result<Url, PullError> {
        // Ollama's registry uses the colon form in blob URLs.
        self.endpoint(&format!("v2/{repository}/blobs/{digest}"))
    }

    fn same_origin(&self, url: &Url) -> bool {
        url.scheme() == self.base.scheme()
            && url.host_str() == self.base.host_str()
            && url.port_or_known_default() == self.base.port_or_known_default()
    }

    /// GET `url`, authenticating against the registry when challenged and
    /// following redirects. Credentials go only to the registry's origin.
    /// Returns the final response and the URL it came from.
    pub async fn get(
        &self,
        url: Url,
        repository: &str,
        accept: Option<&str>,
        range: Option<(u64, u64)>,
    ) -> Result<(Response, Url), PullError> {
        let mut url = url;
        let mut authenticated_once = false;
        for _ in 0..=MAX_REDIRECTS {
            let mut request = self.http.get(url.clone());
            if let Some(accept) = accept {
                request = request.header(ACCEPT, accept);
            }
            if let Some((start, end)) = range {
                request = request.header(RANGE, format!("bytes={start}-{end}"));
            }
            let registry_origin = self.same_origin(&url);
            if registry_origin && let Some(value) = self.auth_header(repository) {
                request = request.header(AUTHORIZATION, value);
            }
            let response = request.send().await.map_err(|e| PullError::Network {
                what: format!("GET {}", redact(&url)),
                detail: super::describe(&e),
            })?;
            let status = response.status();
            if status == StatusCode::UNAUTHORIZED && registry_origin && !authenticated_once {
                authenticated_once = true;
                self.authenticate(repository, response.headers()).await?;
                continue;
            }
            if status.is_redirection() && status != StatusCode::NOT_MODIFIED {
                url = redirect_target(&url, response.headers()).ok_or_else(|| {
                    PullError::Protocol {
                        registry: self.display_host(),
                        detail: format!(
                            "HTTP {status} from {} without a usable Location header",
                            redact(&url)
                        ),
                    }
                })?;
                continue;
            }
            return Ok((response, url));
        }
        Err(PullError::Protocol {
            registry: self.display_host(),
            detail: format!(
                "more than {MAX_REDIRECTS} redirects, last to {}",
                redact(&url)
            ),
        })
    }

    fn auth_header(&self, repository: &str) -> Option<HeaderValue> {
        self.auth.lock().ok()?.get(repository).cloned()
    }

    /// Answers a 401 challenge: Basic with the configured credentials, or the
    /// Docker token flow (GET the realm with service and scope, Basic
    /// credentials if we have them, read `token`/`access_token`).
    async fn authenticate(&self, repository: &str, headers: &HeaderMap) -> Result<(), PullError> {
        let registry = self.display_host();
        let challenge = headers
            .get(WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let (scheme, params) = parse_challenge(challenge);
        let value = if scheme.eq_ignore_ascii_case("basic") {
            let credentials = self.credentials.as_ref().ok_or_else(|| PullError::Unauthorized {
                registry: registry.clone(),
                detail: "it asks for a user name and password; set KILN_REGISTRY_USERNAME and KILN_REGISTRY_PASSWORD"
                    .into(),
            })?;
            basic(credentials)
        } else if scheme.eq_ignore_ascii_case("bearer") {
            let realm = params.get("realm").ok_or_else(|| PullError::Protocol {
                registry: registry.clone(),
                detail: format!("Bearer challenge without a realm: {challenge}"),
            })?;
            let mut token_url = Url::parse(realm).map_err(|e| PullError::Protocol {
                registry: registry.clone(),
                detail: format!("Bearer realm {realm:?} is not a URL: {e}"),
            })?;
            {
                let mut query = token_url.query_pairs_mut();
                if let Some(service) = params.get("service") {
                    query.append_pair("service", service);
                }
                let default_scope = format!("repository:{repository}:pull");
                query.append_pair(
                    "scope",
                    params
                        .get("scope")
                        .map(String::as_str)
                        .unwrap_or(&default_scope),
                );
            }
            let mut request = self.http.get(token_url.clone());
            if let Some(credentials) = &self.credentials {
                request = request.header(AUTHORIZATION, basic(credentials));
            }
            let response = request.send().await.map_err(|e| PullError::Network {
                what: format!("GET token from {}", redact(&token_url)),
                detail: super::describe(&e),
            })?;
            let status = response.status();
            if !status.is_success() {
                let hint = if self.credentials.is_some() {
                    "check KILN_REGISTRY_USERNAME and KILN_REGISTRY_PASSWORD"
                } else {
                    "set KILN_REGISTRY_USERNAME and KILN_REGISTRY_PASSWORD"
                };
                return Err(PullError::Unauthorized {
                    registry,
                    detail: format!("its token service answered HTTP {status}; {hint}"),
                });
            }
            let body = response.bytes().await.map_err(|e| PullError::Network {
                what: format!("reading token from {}", redact(&token_url)),
                detail: super::describe(&e),
            })?;
            #[derive(serde::Deserialize)]
            struct Token {
                token: Option<String>,
                access_token: Option<String>,
            }
            let token: Token = serde_json::from_slice(&body).map_err(|e| PullError::Protocol {
                registry: registry.clone(),
                detail: format!("token response is not JSON: {e}"),
            })?;
            let token = token
                .token
                .or(token.access_token)
                .filter(|t| !t.is_empty())
                .ok_or_else(|| PullError::Protocol {
                    registry: registry.clone(),
                    detail: "token response has no token".into(),
                })?;
            HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| PullError::Protocol {
                registry: registry.clone(),
                detail: "token contains characters not allowed in a header".into(),
            })?
        } else {
            return Err(PullError::Unauthorized {
                registry,
                detail: format!("unsupported authentication challenge {challenge:?}"),
            });
        };
        if let Ok(mut auth) = self.auth.lock() {
            auth.insert(repository.to_string(), value);
        }
        Ok(())
    }
}

fn basic(credentials: &Credentials) -> HeaderValue {
    let encoded = base64::engine::general_purpose::STANDARD
        .encode(format!("{}:{}", credentials.username, credentials.password));
    let mut value = HeaderValue::from_str(&format!("Basic {encoded}"))
        .unwrap_or(HeaderValue::from_static("Basic"));
    value.set_sensitive(true);
    value
}

fn redirect_target(from: &Url, headers: &HeaderMap) -> Option<Url> {
    let location = headers.get(LOCATION)?.to_str().ok()?;
    let target = from.join(location).ok()?;
    matches!(target.scheme(), "http" | "https").then_some(target)
}

/// A URL for messages: presigned CDN URLs carry credentials in the query.
pub fn redact(url: &Url) -> String {
    let mut shown = url.clone();
    shown.set_query(None);
    shown.set_fragment(None);
    let _ = shown.set_password(None);
    shown.to_string()
}

/// Parses `Bearer realm="…",service="…",scope="…"` into the scheme and its
/// parameters (quoted values may contain commas, as scopes do).
fn parse_challenge(header: &str) -> (String, HashMap<String, String>) {
    let header = header.trim();
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    (
        scheme.to_string(),
        crate::registry::challenge::parse_params(rest),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_challenge_parameters_are_parsed_including_commas_in_scope() {
        let (scheme, params) = parse_challenge(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#,
        );
        assert_eq!(scheme, "Bearer");
        assert_eq!(params["realm"], "https://auth.example/token");
        assert_eq!(params["service"], "registry.example");
        assert_eq!(params["scope"], "repository:a/b:pull,push");
        let (scheme, params) = parse_challenge(r#"Basic realm="kiln-test""#);
        assert_eq!(scheme, "Basic");
        assert_eq!(params["realm"], "kiln-test");
    }

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

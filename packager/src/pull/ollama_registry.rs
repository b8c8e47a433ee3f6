//! An Ollama-style registry (Ollama's own, `hf.co`, or a mirror) as `kiln
//! pull` sees it: the shared OCI client ([`crate::registry`]) does the
//! protocol (authentication challenges, the token flow, redirects that keep
//! credentials at the registry's origin); this layer adds what Ollama's
//! registries need on top: Ollama's exact manifest `Accept`, ranged GETs
//! whose answers [`super::download`] checks itself (resume, expired CDN URLs,
//! servers that ignore `Range`), and errors that say which environment
//! variables hold the credentials.

use std::sync::Arc;
use std::time::Duration;

use reqwest::{Response, Url};

use super::PullError;
use crate::credentials::Credential;
use crate::registry::{RegistryClient, RegistryError};

pub use crate::registry::redact;

/// The only manifest type Ollama's registry serves, and the only `Accept`
/// value Ollama sends (sending others can change what a mirror returns).
pub const MANIFEST_ACCEPT: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// A user name and password for a registry that asks for them (Basic, or the
/// Docker token flow's realm), from `KILN_REGISTRY_USERNAME`/`_PASSWORD`.
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

/// One registry models are pulled from; cheap to clone.
#[derive(Clone)]
pub struct OllamaRegistry {
    client: Arc<RegistryClient>,
    base: Url,
    has_credentials: bool,
}

impl OllamaRegistry {
    pub fn new(
        base: Url,
        credential: Credential,
        connect_timeout: Duration,
    ) -> Result<Self, PullError> {
        let has_credentials = credential != Credential::Anonymous;
        let client =
            RegistryClient::with_base(base.clone(), credential, connect_timeout).map_err(|e| {
                PullError::Network {
                    what: format!("building an HTTP client for {base}"),
                    detail: e.to_string(),
                }
            })?;
        Ok(OllamaRegistry {
            client: Arc::new(client),
            base,
            has_credentials,
        })
    }

    pub fn base(&self) -> &Url {
        &self.base
    }

    /// What users call this registry in messages: its host[:port].
    pub fn display_host(&self) -> String {
        self.client.host().to_string()
    }

    pub fn manifest_url(&self, repository: &str, tag: &str) -> Result<Url, PullError> {
        self.client
            .manifest_url(repository, tag)
            .map_err(|e| self.error(e, "forming a URL"))
    }

    pub fn blob_url(&self, repository: &str, digest: &str) -> Result<Url, PullError> {
        self.client
            .blob_url(repository, digest)
            .map_err(|e| self.error(e, "forming a URL"))
    }

    /// GET `url` through the shared client; the answer whatever its status,
    /// and the URL it came from.
    pub async fn get(
        &self,
        url: Url,
        repository: &str,
        accept: Option<&str>,
        range: Option<(u64, u64)>,
    ) -> Result<(Response, Url), PullError> {
        let what = format!("GET {}", redact(&url));
        self.client
            .get(url, repository, accept, range)
            .await
            .map_err(|e| self.error(e, &what))
    }

    /// The shared client's errors in the pull's terms (a network failure is
    /// worth retrying; refused credentials name the variables that hold them).
    fn error(&self, error: RegistryError, what: &str) -> PullError {
        let registry = self.display_host();
        match error {
            RegistryError::Unreachable { detail, .. } => PullError::Network {
                what: what.to_string(),
                detail,
            },
            RegistryError::Unauthorized { .. } | RegistryError::Denied { .. } => {
                let hint = if self.has_credentials {
                    "check KILN_REGISTRY_USERNAME and KILN_REGISTRY_PASSWORD"
                } else {
                    "set KILN_REGISTRY_USERNAME and KILN_REGISTRY_PASSWORD"
                };
                PullError::Unauthorized {
                    registry,
                    detail: format!("its token service refused access; {hint}"),
                }
            }
            RegistryError::Status { status, detail, .. } => PullError::Http {
                what: what.to_string(),
                status,
                body: detail.trim_start_matches(": ").to_string(),
            },
            other => PullError::Protocol {
                registry,
                detail: other.to_string(),
            },
        }
    }
}

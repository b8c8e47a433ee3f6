//! What can go wrong talking to a registry, each with what to do about it.

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("cannot reach registry {host}: {detail}; {hint}")]
    Unreachable {
        host: String,
        detail: String,
        hint: String,
    },
    #[error(
        "registry {host} rejected the credentials for {repo} (401); log in with `docker login {host}` or pass --username and --password-stdin"
    )]
    Unauthorized { host: String, repo: String },
    #[error(
        "registry {host} denied {action} access to {repo} (403); check that the account may {action} this repository"
    )]
    Denied {
        host: String,
        repo: String,
        action: &'static str,
    },
    #[error("{what} not found on {host}; {hint}")]
    NotFound {
        host: String,
        what: String,
        hint: &'static str,
    },
    #[error("{what} on {host} failed: HTTP {status}{detail}")]
    Status {
        host: String,
        what: String,
        status: u16,
        detail: String,
    },
    /// A token expired between opening an upload and sending it: the body
    /// is spent, so the upload restarts from the source (see `is_transient`).
    #[error("registry {host} asked for credentials again while {what}; retry")]
    Reauthenticate { host: String, what: String },
    #[error("registry {host} sent {what}; it does not follow the OCI distribution protocol")]
    Protocol { host: String, what: String },
    #[error("registry {host}: {error}")]
    Image {
        host: String,
        error: crate::image::ImageError,
    },
    #[error("reading {what} for upload to {host}: {detail}")]
    Source {
        host: String,
        what: String,
        detail: String,
    },
}

impl RegistryError {
    /// Worth retrying: the network or the registry hiccupped (5xx, 408, 429).
    pub fn is_transient(&self) -> bool {
        match self {
            RegistryError::Unreachable { .. } | RegistryError::Reauthenticate { .. } => true,
            RegistryError::Status { status, .. } => {
                *status >= 500 || *status == 408 || *status == 429
            }
            _ => false,
        }
    }
}

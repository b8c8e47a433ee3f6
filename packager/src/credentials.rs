//! Finding credentials for a registry the way the container ecosystem does:
//! explicit flags, then `~/.docker/config.json` (`credHelpers`, `credsStore`,
//! `auths`), then Google's token sources for Artifact Registry (gcloud, the
//! GCE metadata server), then anonymous. Secrets are never printed: the
//! `Debug` form of a credential hides them.

use std::fmt;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("cannot read {path}: {detail}; fix or remove the file")]
    DockerConfig { path: PathBuf, detail: String },
    #[error(
        "credential helper docker-credential-{helper} failed for {host}: {detail}; run `docker-credential-{helper} get` to see why, or log in again"
    )]
    Helper {
        helper: String,
        host: String,
        detail: String,
    },
    #[error("`gcloud auth print-access-token` failed: {0}; run `gcloud auth login`")]
    Gcloud(String),
}

/// What kiln presents to a registry.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    Anonymous,
    /// Sent as Basic, or exchanged for a token at the registry's token service.
    Basic {
        username: String,
        password: String,
    },
    /// An access token sent as `Authorization: Bearer` with no exchange (Google access tokens).
    Bearer(String),
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credential::Anonymous => write!(f, "Anonymous"),
            Credential::Basic { username, .. } => write!(f, "Basic({username}, <redacted>)"),
            Credential::Bearer(_) => write!(f, "Bearer(<redacted>)"),
        }
    }
}

/// Where credentials may come from.
#[derive(Clone, Debug, Default)]
pub struct AuthOptions {
    /// `--username` and the password read from stdin: used for the push target.
    pub explicit: Option<(String, String)>,
    /// The docker config file; `None` means `$DOCKER_CONFIG/config.json` or `~/.docker/config.json`.
    pub docker_config: Option<PathBuf>,
    /// Ask gcloud and the metadata server for `*.pkg.dev` / `gcr.io` hosts.
    pub google: bool,
    /// The gcloud program; `None` means `gcloud` on PATH.
    pub gcloud: Option<PathBuf>,
}

impl AuthOptions {
    /// The usual sources, as a CLI user expects them.
    pub fn from_environment() -> AuthOptions {
        AuthOptions {
            explicit: None,
            docker_config: None,
            google: true,
            gcloud: None,
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct DockerConfig {
    #[serde(default)]
    auths: std::collections::BTreeMap<String, DockerAuth>,
    #[serde(default)]
    cred_helpers: std::collections::BTreeMap<String, String>,
    creds_store: Option<String>,
}

#[derive(Deserialize, Default)]
struct DockerAuth {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
}

/// Resolves the credential for `registry` (as written in image references:
/// `docker.io`, `host:port`). `explicit` credentials win when given.
pub async fn credential_for(
    registry: &str,
    opts: &AuthOptions,
    explicit: bool,
) -> Result<Credential, AuthError> {
    if explicit && let Some((username, password)) = &opts.explicit {
        return Ok(Credential::Basic {
            username: username.clone(),
            password: password.clone(),
        });
    }
    let config = read_docker_config(opts)?;
    let keys = config_keys(registry);
    if let Some(helper) = keys.iter().find_map(|k| config.cred_helpers.get(k)) {
        return run_helper(helper, &keys[0]);
    }
    if let Some(entry) = keys.iter().find_map(|k| config.auths.get(k))
        && let Some(cred) = decode_auth(entry)
    {
        return Ok(cred);
    }
    if let Some(store) = &config.creds_store
        && let Ok(cred) = run_helper(store, &keys[0])
        && cred != Credential::Anonymous
    {
        return Ok(cred);
    }
    if opts.google && is_google_registry(registry) {
        let gcloud = opts
            .gcloud
            .clone()
            .unwrap_or_else(|| PathBuf::from("gcloud"));
        if let Some(token) = gcloud_token(&gcloud)? {
            return Ok(Credential::Bearer(token));
        }
        if let Some(token) = metadata_token(METADATA_TOKEN_URL).await {
            return Ok(Credential::Bearer(token));
        }
    }
    Ok(Credential::Anonymous)
}

/// Artifact Registry and Container Registry hosts, whose tokens come from Google.
pub fn is_google_registry(registry: &str) -> bool {
    let host = registry.split(':').next().unwrap_or(registry);
    host.ends_with("-docker.pkg.dev") || host == "gcr.io" || host.ends_with(".gcr.io")
}

fn read_docker_config(opts: &AuthOptions) -> Result<DockerConfig, AuthError> {
    let path = match &opts.docker_config {
        Some(p) => p.clone(),
        None => match std::env::var_os("DOCKER_CONFIG") {
            Some(dir) => PathBuf::from(dir).join("config.json"),
            None => match std::env::var_os("HOME") {
                Some(home) => PathBuf::from(home).join(".docker/config.json"),
                None => return Ok(DockerConfig::default()),
            },
        },
    };
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| AuthError::DockerConfig {
            path,
            detail: e.to_string(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(DockerConfig::default()),
        Err(e) => Err(AuthError::DockerConfig {
            path,
            detail: e.to_string(),
        }),
    }
}

/// The keys a registry may have in a docker config: Docker Hub is stored
/// under its legacy v1 URL; others as `host` or `https://host`.
fn config_keys(registry: &str) -> Vec<String> {
    if registry == "docker.io" {
        return vec![
            "https://index.docker.io/v1/".into(),
            "index.docker.io".into(),
            "docker.io".into(),
        ];
    }
    vec![
        registry.to_string(),
        format!("https://{registry}"),
        format!("http://{registry}"),
    ]
}

fn decode_auth(entry: &DockerAuth) -> Option<Credential> {
    if let (Some(username), Some(password)) = (&entry.username, &entry.password) {
        return Some(Credential::Basic {
            username: username.clone(),
            password: password.clone(),
        });
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(entry.auth.as_deref()?.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (username, password) = text.split_once(':')?;
    Some(Credential::Basic {
        username: username.to_string(),
        password: password.to_string(),
    })
}

/// Runs `docker-credential-<helper> get` with the server on stdin, as the
/// docker CLI does. A helper that does not know the server says so on stdout
/// and exits non-zero; that means "anonymous", not an error.
fn run_helper(helper: &str, server: &str) -> Result<Credential, AuthError> {
    let err = |detail: String| AuthError::Helper {
        helper: helper.into(),
        host: server.into(),
        detail,
    };
    let program = format!("docker-credential-{helper}");
    let mut child = Command::new(&program)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| err(format!("cannot run {program}: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(server.as_bytes());
    }
    let out = child.wait_with_output().map_err(|e| err(e.to_string()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        if stdout.contains("credentials not found") {
            return Ok(Credential::Anonymous);
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(err(format!("{} {}", stdout.trim(), stderr.trim())
            .trim()
            .to_string()));
    }
    #[derive(Deserialize)]
    struct HelperOut {
        #[serde(rename = "Username")]
        username: String,
        #[serde(rename = "Secret")]
        secret: String,
    }
    let parsed: HelperOut =
        serde_json::from_str(&stdout).map_err(|e| err(format!("unexpected output: {e}")))?;
    Ok(Credential::Basic {
        username: parsed.username,
        password: parsed.secret,
    })
}

/// `gcloud auth print-access-token`, when gcloud is installed.
fn gcloud_token(gcloud: &std::path::Path) -> Result<Option<String>, AuthError> {
    let out = match Command::new(gcloud)
        .args(["auth", "print-access-token"])
        .stdin(Stdio::null())
        .output()
    {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(AuthError::Gcloud(e.to_string())),
    };
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(AuthError::Gcloud(
            stderr.lines().last().unwrap_or("").trim().to_string(),
        ));
    }
    let token = String::from_utf8_lossy(&out.stdout).trim().to_string();
    Ok((!token.is_empty()).then_some(token))
}

const METADATA_TOKEN_URL: &str =
    "http://169.254.169.254/computeMetadata/v1/instance/service-accounts/default/token";

/// The default service account's token from the GCE/Cloud Run metadata
/// server, when kiln runs on Google Cloud. Off Google Cloud the address does
/// not answer; a short timeout keeps that cheap.
async fn metadata_token(url: &str) -> Option<String> {
    // reqwest is built without a default crypto provider (ring only, workspace-wide).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_millis(500))
        .timeout(Duration::from_secs(2))
        .build()
        .ok()?;
    let resp = client
        .get(url)
        .header("Metadata-Flavor", "Google")
        .send()
        .await
        .ok()?;
    if !resp.status().is_success() {
        return None;
    }
    #[derive(Deserialize)]
    struct Token {
        access_token: String,
    }
    let bytes = resp.bytes().await.ok()?;
    serde_json::from_slice::<Token>(&bytes)
        .ok()
        .map(|t| t.access_token)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(config: &serde_json::Value) -> (tempfile::TempDir, AuthOptions) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(&path, config.to_string()).unwrap();
        (
            dir,
            AuthOptions {
                explicit: None,
                docker_config: Some(path),
                google: false,
                gcloud: None,
            },
        )
    }

    #[tokio::test]
    async fn docker_config_auths_are_decoded() {
        let auth = base64::engine::general_purpose::STANDARD.encode("alice:pw:with:colons");
        let (_d, o) = opts(&serde_json::json!({"auths": {
            "https://index.docker.io/v1/": {"auth": auth},
            "127.0.0.1:5000": {"username": "bob", "password": "pw2"}}}));
        assert_eq!(
            credential_for("docker.io", &o, false).await.unwrap(),
            Credential::Basic {
                username: "alice".into(),
                password: "pw:with:colons".into()
            }
        );
        assert_eq!(
            credential_for("127.0.0.1:5000", &o, false).await.unwrap(),
            Credential::Basic {
                username: "bob".into(),
                password: "pw2".into()
            }
        );
        assert_eq!(
            credential_for("other:1", &o, false).await.unwrap(),
            Credential::Anonymous
        );
    }

    #[tokio::test]
    async fn explicit_credentials_win_only_for_the_target() {
        let (_d, mut o) = opts(&serde_json::json!({}));
        o.explicit = Some(("u".into(), "p".into()));
        assert!(matches!(
            credential_for("h:1", &o, true).await.unwrap(),
            Credential::Basic { .. }
        ));
        assert_eq!(
            credential_for("h:1", &o, false).await.unwrap(),
            Credential::Anonymous
        );
    }

    #[tokio::test]
    async fn missing_helper_is_a_clear_error() {
        let (_d, o) = opts(&serde_json::json!({"credHelpers": {"h:1": "kiln-no-such-helper"}}));
        let err = credential_for("h:1", &o, false)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("docker-credential-kiln-no-such-helper"),
            "{err}"
        );
    }

    #[test]
    fn secrets_are_not_in_debug_output() {
        let shown = format!(
            "{:?} {:?}",
            Credential::Bearer("tok123".into()),
            Credential::Basic {
                username: "u".into(),
                password: "pw123".into()
            }
        );
        assert!(
            !shown.contains("tok123") && !shown.contains("pw123"),
            "{shown}"
        );
    }

    #[test]
    fn google_hosts() {
        assert!(is_google_registry("europe-west1-docker.pkg.dev"));
        assert!(is_google_registry("gcr.io"));
        assert!(!is_google_registry("127.0.0.1:5000"));
    }

    /// A stand-in for gcloud: prints `output` and exits with `code`.
    fn fake_gcloud(dir: &std::path::Path, output: &str, code: i32) -> PathBuf {
        use std::os::unix::fs::PermissionsExt as _;
        let path = dir.join("gcloud");
        std::fs::write(&path, format!("#!/bin/sh\n[ \"$*\" = \"auth print-access-token\" ] || exit 9\necho '{output}' >&{}\nexit {code}\n", if code == 0 { 1 } else { 2 })).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    #[tokio::test]
    async fn artifact_registry_gets_the_gcloud_token_as_bearer() {
        let (dir, mut o) = opts(&serde_json::json!({}));
        o.google = true;
        o.gcloud = Some(fake_gcloud(dir.path(), "ya29.test-token", 0));
        assert_eq!(
            credential_for("europe-west1-docker.pkg.dev", &o, true)
                .await
                .unwrap(),
            Credential::Bearer("ya29.test-token".into())
        );
        // Other registries never ask gcloud.
        assert_eq!(
            credential_for("127.0.0.1:5000", &o, true).await.unwrap(),
            Credential::Anonymous
        );
    }

    #[tokio::test]
    async fn failing_gcloud_says_to_log_in() {
        let (dir, mut o) = opts(&serde_json::json!({}));
        o.google = true;
        o.gcloud = Some(fake_gcloud(
            dir.path(),
            "ERROR: (gcloud.auth.print-access-token) no credentialed accounts",
            1,
        ));
        let err = credential_for("us-docker.pkg.dev", &o, true)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no credentialed accounts") && err.contains("gcloud auth login"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn metadata_server_token_needs_the_flavor_header() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/token", listener.local_addr().unwrap());
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let mut buf = vec![0u8; 4096];
                let n = conn.read(&mut buf).await.unwrap_or(0);
                let request = String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase();
                let body = r#"{"access_token":"ya29.from-metadata","expires_in":3599}"#;
                let reply = if request.contains("metadata-flavor: google") {
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    )
                } else {
                    "HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                        .to_string()
                };
                let _ = conn.write_all(reply.as_bytes()).await;
            }
        });
        assert_eq!(
            metadata_token(&url).await.as_deref(),
            Some("ya29.from-metadata")
        );
        // Nothing listening: no token, quickly, no error.
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        assert_eq!(
            metadata_token(&format!("http://{closed}/token")).await,
            None
        );
    }
}

//! A real OCI registry on loopback: Debian's `docker-registry` (distribution
//! 2.8), started with a throwaway storage dir and stopped on drop, even when
//! the test that owns it panics.

use std::fs;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use base64::Engine as _;
use sha2::Digest as _;

/// How the registry asks clients to authenticate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Auth {
    /// No authentication at all.
    Anonymous,
    /// `auth.htpasswd`: HTTP Basic with one bcrypt-hashed user.
    Basic { user: String, password: String },
    /// The Docker token flow: the registry answers 401 with
    /// `WWW-Authenticate: Bearer realm=…,service=…,scope=…`, the client gets a
    /// token from the realm (which demands these Basic credentials) and retries.
    ///
    /// Distribution's `silly` auth only checks that *some* `Authorization`
    /// header is present, so the real check of credentials happens at the
    /// token endpoint, which records every request for tests to inspect.
    Bearer { user: String, password: String },
}

impl Auth {
    pub fn basic() -> Auth {
        Auth::Basic {
            user: "kiln".into(),
            password: "s3cret-pass".into(),
        }
    }
    pub fn bearer() -> Auth {
        Auth::Bearer {
            user: "kiln".into(),
            password: "s3cret-pass".into(),
        }
    }
    /// The user name and password a client must present, if any.
    pub fn credentials(&self) -> Option<(&str, &str)> {
        match self {
            Auth::Anonymous => None,
            Auth::Basic { user, password } | Auth::Bearer { user, password } => {
                Some((user.as_str(), password.as_str()))
            }
        }
    }
}

/// A running `docker-registry serve`, killed on drop.
pub struct TestRegistry {
    child: Child,
    addr: SocketAddr,
    auth: Auth,
    dir: tempfile::TempDir,
    token_server: Option<TokenServer>,
}

impl TestRegistry {
    /// Starts a registry on a free loopback port and waits until `/v2/` answers.
    pub fn start(auth: Auth) -> Result<TestRegistry> {
        let binary = find_binary()?;
        let dir = tempfile::Builder::new()
            .prefix("kiln-registry-")
            .tempdir()?;
        let token_server = match &auth {
            Auth::Bearer { user, password } => Some(TokenServer::start(user, password)?),
            _ => None,
        };
        let log_path = dir.path().join("registry.log");
        // A port taken between our probe and the registry's bind makes the
        // start fail fast; try a few ports before giving up.
        let mut last_error = anyhow::anyhow!("docker-registry did not start");
        for _ in 0..5 {
            let addr = free_loopback_port()?;
            let config = write_config(dir.path(), addr, &auth, token_server.as_ref())?;
            let log = fs::File::create(&log_path)?;
            let mut child = Command::new(&binary)
                .arg("serve")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .with_context(|| format!("starting {}", binary.display()))?;
            match wait_ready(&mut child, addr, Duration::from_secs(15)) {
                Ok(()) => {
                    return Ok(TestRegistry {
                        child,
                        addr,
                        auth,
                        dir,
                        token_server,
                    });
                }
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let log = fs::read_to_string(&log_path).unwrap_or_default();
                    last_error = e.context(log);
                }
            }
        }
        Err(last_error)
    }

    /// `127.0.0.1:PORT`, the host part of image references.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn auth(&self) -> &Auth {
        &self.auth
    }

    /// Where the registry keeps its blobs and repositories.
    pub fn storage_dir(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// The registry's own log, access log included (JSON lines).
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// Every request the registry logged, as `(METHOD, URI)`, in order.
    pub fn requests(&self) -> Vec<(String, String)> {
        access_log_requests(&self.log())
    }

    /// The requests the token endpoint received (Bearer mode), as query strings.
    pub fn token_requests(&self) -> Vec<String> {
        self.token_server
            .as_ref()
            .map(|t| t.requests())
            .unwrap_or_default()
    }

    /// An `Authorization` header value that the registry accepts, for seeding.
    pub fn authorization(&self) -> Option<String> {
        match &self.auth {
            Auth::Anonymous => None,
            Auth::Basic { user, password } => Some(basic_header(user, password)),
            Auth::Bearer { .. } => Some("Bearer testkit-seeding-token".into()),
        }
    }
}

fn wait_ready(child: &mut Child, addr: SocketAddr, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let agent = crate::http::agent();
    loop {
        if let Some(status) = child.try_wait()? {
            bail!("docker-registry exited with {status} during start");
        }
        if let Ok(resp) = agent.get(format!("http://{addr}/v2/")).call() {
            // 401 is ready too: the registry answers, it just wants credentials.
            if matches!(resp.status().as_u16(), 200 | 401) {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("docker-registry did not answer /v2/ within {timeout:?}");
        }
        thread::sleep(Duration::from_millis(50));
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn basic_header(user: &str, password: &str) -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {encoded}")
}

fn find_binary() -> Result<PathBuf> {
    for dir in std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
    {
        let candidate = dir.join("docker-registry");
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "docker-registry not found: the tests need a real OCI registry; \
         install it with `apt-get install -y docker-registry` (or run scripts/setup)"
    )
}

pub(crate) fn free_loopback_port() -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?)
}

fn write_config(
    dir: &Path,
    addr: SocketAddr,
    auth: &Auth,
    token_server: Option<&TokenServer>,
) -> Result<PathBuf> {
    let storage = dir.join("storage");
    fs::create_dir_all(&storage)?;
    let auth_section = match auth {
        Auth::Anonymous => String::new(),
        Auth::Basic { user, password } => {
            let hash = bcrypt::hash(password, 4)?;
            let htpasswd = dir.join("htpasswd");
            fs::write(&htpasswd, format!("{user}:{hash}\n"))?;
            format!(
                "auth:\n  htpasswd:\n    realm: kiln-test\n    path: {}\n",
                htpasswd.display()
            )
        }
        Auth::Bearer { .. } => {
            let token = token_server.context("bearer mode needs a token server")?;
            format!(
                "auth:\n  silly:\n    realm: http://{}/token\n    service: kiln-test\n",
                token.addr
            )
        }
    };
    let config = format!(
        "version: 0.1\n\
         log:\n  level: info\n  formatter: json\n  accesslog:\n    disabled: false\n\
         storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n\
         http:\n  addr: {addr}\n  secret: kiln-testkit-secret\n\
         {auth_section}",
        storage = storage.display(),
    );
    let path = dir.join("config.yml");
    fs::write(&path, config)?;
    Ok(path)
}

/// Parses distribution's access log (Apache combined format inside JSON or
/// plain lines) into `(METHOD, URI)` pairs.
fn access_log_requests(log: &str) -> Vec<(String, String)> {
    log.lines()
        .filter_map(|line| {
            // Access log lines look like: 127.0.0.1 - - [date] "GET /v2/ HTTP/1.1" 200 ...
            let start = line.find("\"GET ").or_else(|| {
                ["HEAD", "POST", "PUT", "PATCH", "DELETE"]
                    .iter()
                    .find_map(|m| line.find(&format!("\"{m} ")))
            })?;
            let rest = &line[start + 1..];
            let mut parts = rest.split(' ');
            let method = parts.next()?.to_string();
            let uri = parts.next()?.to_string();
            Some((method, uri))
        })
        .collect()
}

/// The token endpoint of the Bearer flow: demands Basic credentials and hands
/// out an opaque token, recording each request.
struct TokenServer {
    addr: SocketAddr,
    server: Arc<tiny_http::Server>,
    requests: Arc<Mutex<Vec<String>>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl TokenServer {
    fn start(user: &str, password: &str) -> Result<TokenServer> {
        let server = Arc::new(
            tiny_http::Server::http("127.0.0.1:0")
                .map_err(|e| anyhow::anyhow!("token server: {e}"))?,
        );
        let addr = server
            .server_addr()
            .to_ip()
            .context("token server has no IP address")?;
        let requests = Arc::new(Mutex::new(Vec::new()));
        let expected = basic_header(user, password);
        let thread = {
            let server = Arc::clone(&server);
            let requests = Arc::clone(&requests);
            thread::spawn(move || {
                for mut request in server.incoming_requests() {
                    let url = request.url().to_string();
                    let query = url
                        .split_once('?')
                        .map(|(_, q)| q.to_string())
                        .unwrap_or_default();
                    if let Ok(mut log) = requests.lock() {
                        log.push(query);
                    }
                    let mut sink = Vec::new();
                    let _ = request.as_reader().read_to_end(&mut sink);
                    let authorized = request
                        .headers()
                        .iter()
                        .any(|h| h.field.equiv("Authorization") && h.value.as_str() == expected);
                    let response = if authorized {
                        let token = hex::encode(sha2::Sha256::digest(url.as_bytes()));
                        tiny_http::Response::from_string(format!(
                            r#"{{"token":"{token}","access_token":"{token}","expires_in":300}}"#
                        ))
                        .with_status_code(200)
                    } else {
                        tiny_http::Response::from_string(
                            r#"{"errors":[{"code":"UNAUTHORIZED","message":"bad credentials"}]}"#,
                        )
                        .with_status_code(401)
                    };
                    let _ = request.respond(response);
                }
            })
        };
        Ok(TokenServer {
            addr,
            server,
            requests,
            thread: Some(thread),
        })
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

//! A stand-in for `registry.ollama.ai` and its CDN, in front of a
//! [`TestRegistry`]: manifests (and everything else) pass through to the
//! registry, but `GET /v2/<repo>/blobs/<digest>` answers `307` to a second
//! listener on another loopback address (`127.0.0.2`), as Ollama's registry
//! redirects to a presigned Cloudflare R2 URL. The "CDN" serves the bytes
//! (proxied from the registry, `Range` honoured), records whether any request
//! carried `Authorization`, and can be told to cut connections mid-blob, to
//! corrupt a byte, or to throttle — to test resume, digest refusal and kills.

use std::io::{self, Read};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::registry::TestRegistry;

/// One request the front (the "registry") received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrontRequest {
    pub method: String,
    pub url: String,
    /// Whether the request carried an `Authorization` header.
    pub authorization: bool,
    /// The `Accept` header, verbatim.
    pub accept: Option<String>,
}

/// One request the CDN listener received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CdnRequest {
    pub url: String,
    pub range: Option<String>,
    /// Whether the request carried an `Authorization` header (it never should).
    pub authorization: bool,
}

#[derive(Default)]
struct Faults {
    /// Cut this many upcoming CDN responses after `cut_after` body bytes.
    cuts_left: u64,
    cut_after: u64,
    /// Flip the byte at this absolute blob offset, in every response covering it.
    corrupt_at: Option<u64>,
    /// Bytes per second per response, when set.
    throttle: Option<u64>,
    /// Responses hang (send nothing, keep the connection) after this many body bytes.
    stall_after: Option<u64>,
    /// Answer range requests with 200 and the whole blob, as some servers do.
    ignore_range: bool,
    /// After letting `expire_after` more CDN requests through, refuse the next
    /// `refuse_next` with 403, as for an expired presigned URL.
    expire_after: u64,
    refuse_next: u64,
}

struct State {
    registry_url: String,
    registry_auth: Option<String>,
    cdn_addr: Mutex<Option<SocketAddr>>,
    front_requests: Mutex<Vec<FrontRequest>>,
    cdn_requests: Mutex<Vec<CdnRequest>>,
    cdn_bytes: AtomicU64,
    faults: Mutex<Faults>,
    /// Cleared to release responses hanging in a stall.
    stalling: AtomicBool,
}

/// The front and CDN listeners; both stop on drop.
pub struct CdnFront {
    front: Arc<tiny_http::Server>,
    cdn: Arc<tiny_http::Server>,
    front_addr: SocketAddr,
    state: Arc<State>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl CdnFront {
    /// Starts a front for `registry`: front on `127.0.0.1`, CDN on `127.0.0.2`.
    pub fn start(registry: &TestRegistry) -> Result<CdnFront> {
        let front = Arc::new(
            tiny_http::Server::http("127.0.0.1:0").map_err(|e| anyhow::anyhow!("front: {e}"))?,
        );
        let cdn = Arc::new(
            tiny_http::Server::http("127.0.0.2:0").map_err(|e| anyhow::anyhow!("cdn: {e}"))?,
        );
        let front_addr = front
            .server_addr()
            .to_ip()
            .context("front has no IP address")?;
        let cdn_addr = cdn.server_addr().to_ip().context("cdn has no IP address")?;
        let state = Arc::new(State {
            registry_url: registry.url(),
            registry_auth: registry.authorization(),
            cdn_addr: Mutex::new(Some(cdn_addr)),
            front_requests: Mutex::default(),
            cdn_requests: Mutex::default(),
            cdn_bytes: AtomicU64::new(0),
            faults: Mutex::default(),
            stalling: AtomicBool::new(false),
        });
        let mut threads = Vec::new();
        for (server, is_cdn) in [(Arc::clone(&front), false), (Arc::clone(&cdn), true)] {
            let state = Arc::clone(&state);
            threads.push(thread::spawn(move || {
                for request in server.incoming_requests() {
                    let state = Arc::clone(&state);
                    // One thread per request: kiln opens many parallel connections.
                    thread::spawn(move || {
                        let _ = if is_cdn {
                            serve_cdn(&state, request)
                        } else {
                            serve_front(&state, request)
                        };
                    });
                }
            }));
        }
        Ok(CdnFront {
            front,
            cdn,
            front_addr,
            state,
            threads,
        })
    }

    /// `http://127.0.0.1:PORT`, to give kiln as `--source-registry`.
    pub fn url(&self) -> String {
        format!("http://{}", self.front_addr)
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        self.front_addr.to_string()
    }

    /// Requests the front received, in order.
    pub fn front_requests(&self) -> Vec<FrontRequest> {
        self.state
            .front_requests
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default()
    }

    /// Requests the CDN received.
    pub fn cdn_requests(&self) -> Vec<CdnRequest> {
        self.state
            .cdn_requests
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default()
    }

    /// Body bytes the CDN has sent so far.
    pub fn cdn_bytes_served(&self) -> u64 {
        self.state.cdn_bytes.load(Ordering::SeqCst)
    }

    /// Cuts the next `responses` CDN responses after `after_bytes` body bytes each.
    pub fn cut_connections(&self, responses: u64, after_bytes: u64) {
        if let Ok(mut f) = self.state.faults.lock() {
            f.cuts_left = responses;
            f.cut_after = after_bytes;
        }
    }

    /// Flips the byte at `offset` of any blob the CDN serves from now on.
    pub fn corrupt_byte_at(&self, offset: u64) {
        if let Ok(mut f) = self.state.faults.lock() {
            f.corrupt_at = Some(offset);
        }
    }

    /// Makes CDN responses hang after `after_bytes` body bytes (headers sent,
    /// connection open, nothing more) until called with `None`, at most 30 s.
    pub fn stall_after(&self, after_bytes: Option<u64>) {
        self.state
            .stalling
            .store(after_bytes.is_some(), Ordering::SeqCst);
        if let Ok(mut f) = self.state.faults.lock() {
            f.stall_after = after_bytes;
        }
    }

    /// Lets `served` more CDN requests through, then refuses the next
    /// `refused` with 403, as R2 does once a presigned URL has expired.
    pub fn expire_after(&self, served: u64, refused: u64) {
        if let Ok(mut f) = self.state.faults.lock() {
            f.expire_after = served;
            f.refuse_next = refused;
        }
    }

    /// Makes the CDN ignore `Range` (HTTP 200 with the whole blob), or honour it again.
    pub fn ignore_range(&self, ignore: bool) {
        if let Ok(mut f) = self.state.faults.lock() {
            f.ignore_range = ignore;
        }
    }

    /// Limits each CDN response to about `bytes_per_second` (`None`: unlimited).
    pub fn throttle(&self, bytes_per_second: Option<u64>) {
        if let Ok(mut f) = self.state.faults.lock() {
            f.throttle = bytes_per_second;
        }
    }
}

impl Drop for CdnFront {
    fn drop(&mut self) {
        self.state.stalling.store(false, Ordering::SeqCst);
        self.front.unblock();
        self.cdn.unblock();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn header(request: &tiny_http::Request, name: &str) -> Option<String> {
    request
        .headers()
        .iter()
        .find(|h| h.field.as_str().as_str().eq_ignore_ascii_case(name))
        .map(|h| h.value.as_str().to_string())
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .build()
        .into()
}

fn serve_front(state: &State, mut request: tiny_http::Request) -> io::Result<()> {
    let method = request.method().as_str().to_string();
    let url = request.url().to_string();
    let authorization = header(&request, "Authorization");
    if let Ok(mut log) = state.front_requests.lock() {
        log.push(FrontRequest {
            method: method.clone(),
            url: url.clone(),
            authorization: authorization.is_some(),
            accept: header(&request, "Accept"),
        });
    }
    // /v2/<repo>/blobs/<digest> (GET/HEAD) -> 307 to the CDN, after the
    // registry agreed that this client may read it (as the real one checks).
    if let Some((repo, digest)) = blob_path(&url)
        && (method == "GET" || method == "HEAD")
    {
        let mut check = agent().head(format!("{}{url}", state.registry_url));
        if let Some(auth) = &authorization {
            check = check.header("Authorization", auth);
        }
        let status = check.call().map(|r| {
            (
                r.status().as_u16(),
                r.headers()
                    .get("www-authenticate")
                    .and_then(|v| v.to_str().ok())
                    .map(String::from),
            )
        });
        match status {
            Ok((200, _)) => {
                let cdn = state.cdn_addr.lock().ok().and_then(|a| *a);
                let location = match cdn {
                    Some(addr) => format!(
                        "http://{addr}/blobs/{digest}?repo={repo}&X-Amz-Signature=presigned-test"
                    ),
                    None => return request.respond(tiny_http::Response::empty(500)),
                };
                let response = tiny_http::Response::empty(307).with_header(
                    tiny_http::Header::from_bytes("Location", location)
                        .map_err(|_| io::Error::other("header"))?,
                );
                return request.respond(response);
            }
            Ok((status, challenge)) => {
                let mut response = tiny_http::Response::empty(status);
                if let Some(c) = challenge
                    && let Ok(h) = tiny_http::Header::from_bytes("WWW-Authenticate", c)
                {
                    response.add_header(h);
                }
                return request.respond(response);
            }
            Err(_) => return request.respond(tiny_http::Response::empty(502)),
        }
    }
    // Everything else passes through.
    let mut body = Vec::new();
    request.as_reader().read_to_end(&mut body)?;
    let target = format!("{}{url}", state.registry_url);
    let mut forwarded = ureq::http::Request::builder()
        .method(method.as_str())
        .uri(target.as_str());
    for name in ["Authorization", "Accept", "Range", "Content-Type"] {
        if let Some(value) = header(&request, name) {
            forwarded = forwarded.header(name, value);
        }
    }
    let forwarded = forwarded.body(body).map_err(io::Error::other)?;
    let response = match agent().run(forwarded) {
        Ok(r) => r,
        Err(_) => return request.respond(tiny_http::Response::empty(502)),
    };
    relay(request, response, None, 0, None)
}

/// Copies a registry response to the client, optionally through a fault.
fn relay(
    request: tiny_http::Request,
    response: ureq::http::Response<ureq::Body>,
    counter: Option<&AtomicU64>,
    start_offset: u64,
    faults: Option<(ResponseFaults, &AtomicBool)>,
) -> io::Result<()> {
    let status = response.status().as_u16();
    let mut headers = Vec::new();
    for name in [
        "content-type",
        "docker-content-digest",
        "www-authenticate",
        "content-range",
        "location",
        "accept-ranges",
    ] {
        if let Some(value) = response.headers().get(name).and_then(|v| v.to_str().ok())
            && let Ok(h) = tiny_http::Header::from_bytes(name, value)
        {
            headers.push(h);
        }
    }
    let length = response
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let reader = response.into_body().into_reader();
    let (faults, stalling) = match faults {
        Some((faults, stalling)) => (faults, Some(stalling)),
        None => (ResponseFaults::default(), None),
    };
    let body = FaultyReader {
        inner: reader,
        sent: 0,
        start_offset,
        faults,
        stalling,
        counter,
    };
    let response = tiny_http::Response::new(status.into(), headers, body, length, None);
    request.respond(response)
}

fn serve_cdn(state: &State, request: tiny_http::Request) -> io::Result<()> {
    let url = request.url().to_string();
    let range = header(&request, "Range");
    if let Ok(mut log) = state.cdn_requests.lock() {
        log.push(CdnRequest {
            url: url.clone(),
            range: range.clone(),
            authorization: header(&request, "Authorization").is_some(),
        });
    }
    // /blobs/<digest>?repo=<repo>&X-Amz-Signature=…
    let (path, query) = url.split_once('?').unwrap_or((&url, ""));
    let digest = path.strip_prefix("/blobs/").unwrap_or_default();
    let repo = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("repo="))
        .unwrap_or_default();
    let expired = state
        .faults
        .lock()
        .map(|mut f| {
            if f.expire_after > 0 {
                f.expire_after -= 1;
                return false;
            }
            let refuse = f.refuse_next > 0;
            f.refuse_next = f.refuse_next.saturating_sub(1);
            refuse
        })
        .unwrap_or(false);
    if expired || digest.is_empty() || repo.is_empty() || !query.contains("X-Amz-Signature=") {
        return request.respond(tiny_http::Response::empty(403));
    }
    let mut upstream = agent().get(format!("{}/v2/{repo}/blobs/{digest}", state.registry_url));
    if let Some(auth) = &state.registry_auth {
        upstream = upstream.header("Authorization", auth);
    }
    let ignore_range = state.faults.lock().map(|f| f.ignore_range).unwrap_or(false);
    let range = range.filter(|_| !ignore_range);
    if let Some(range) = &range {
        upstream = upstream.header("Range", range);
    }
    let response = match upstream.call() {
        Ok(r) => r,
        Err(_) => return request.respond(tiny_http::Response::empty(502)),
    };
    let start_offset = range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.split('-').next())
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(0);
    let faults = match state.faults.lock() {
        Ok(mut f) => {
            let cut = (f.cuts_left > 0).then(|| {
                f.cuts_left -= 1;
                f.cut_after
            });
            ResponseFaults {
                cut_after: cut,
                corrupt_at: f.corrupt_at,
                throttle: f.throttle,
                stall_after: f.stall_after,
            }
        }
        Err(_) => ResponseFaults::default(),
    };
    relay(
        request,
        response,
        Some(&state.cdn_bytes),
        start_offset,
        Some((faults, &state.stalling)),
    )
}

fn blob_path(url: &str) -> Option<(String, String)> {
    let path = url.split('?').next()?.strip_prefix("/v2/")?;
    let (repo, digest) = path.rsplit_once("/blobs/")?;
    (!repo.is_empty() && digest.starts_with("sha256:") && !digest.contains('/'))
        .then(|| (repo.to_string(), digest.to_string()))
}

/// The faults one CDN response is given when it starts.
#[derive(Clone, Copy, Default)]
struct ResponseFaults {
    cut_after: Option<u64>,
    corrupt_at: Option<u64>,
    throttle: Option<u64>,
    stall_after: Option<u64>,
}

/// The CDN's body: counts bytes, and cuts, corrupts, throttles or stalls on demand.
struct FaultyReader<'a, R> {
    inner: R,
    sent: u64,
    start_offset: u64,
    faults: ResponseFaults,
    stalling: Option<&'a AtomicBool>,
    counter: Option<&'a AtomicU64>,
}

impl<R: Read> Read for FaultyReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut limit = buf.len().min(64 << 10);
        if let Some(cut) = self.faults.cut_after {
            if self.sent >= cut {
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    "cut by the test CDN",
                ));
            }
            limit = limit.min((cut - self.sent) as usize);
        }
        if let (Some(stall), Some(stalling)) = (self.faults.stall_after, self.stalling) {
            if self.sent >= stall {
                let deadline = std::time::Instant::now() + Duration::from_secs(30);
                while stalling.load(Ordering::SeqCst) && std::time::Instant::now() < deadline {
                    thread::sleep(Duration::from_millis(20));
                }
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "stalled by the test CDN",
                ));
            }
            limit = limit.min((stall - self.sent) as usize);
        }
        let n = self.inner.read(&mut buf[..limit])?;
        if let Some(at) = self.faults.corrupt_at {
            let from = self.start_offset + self.sent;
            if at >= from && at < from + n as u64 {
                buf[(at - from) as usize] ^= 0xff;
            }
        }
        self.sent += n as u64;
        if let Some(counter) = self.counter {
            counter.fetch_add(n as u64, Ordering::SeqCst);
        }
        if let Some(rate) = self.faults.throttle.filter(|r| *r > 0) {
            thread::sleep(Duration::from_secs_f64(n as f64 / rate as f64));
        }
        Ok(n)
    }
}

//! The OTLP/HTTP (protobuf) span exporter the SDK's batch thread calls: the
//! standard `OTEL_EXPORTER_OTLP_*` variables read as the specification
//! says (the traces-specific variable over the general one), spans
//! encoded by [`otlp_wire`](super::otlp_wire), POSTed with a small
//! blocking client on that thread, retried with backoff on what the OTLP
//! specification calls retryable (429, 502, 503, 504, no connection) until
//! the export timeout.
//!
//! In place of `opentelemetry-otlp`'s exporter for the cost its span
//! conversion measured (see `otlp_wire`); spans, sampling and batching stay
//! the SDK's.

use std::io::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{SpanData, SpanExporter};

use super::otlp_wire::{self, EncodedResource};
use crate::config::{ConfigError, bad};

/// The export timeout when no `OTEL_EXPORTER_OTLP_*TIMEOUT` says (the specification's 10 s).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// The wait before the first retry; each next one doubles.
const FIRST_RETRY: Duration = Duration::from_millis(100);
/// Retries of one export at most (as `opentelemetry-otlp`'s default policy).
const RETRIES: u32 = 3;

/// Spans the collector took, and spans given up on (their export failed
/// after its retries), since the process started: `kiln_trace_spans_total`.
static EXPORTED: AtomicU64 = AtomicU64::new(0);
static FAILED: AtomicU64 = AtomicU64::new(0);

/// `(exported, failed)` spans so far.
pub fn span_counts() -> (u64, u64) {
    (
        EXPORTED.load(Ordering::Relaxed),
        FAILED.load(Ordering::Relaxed),
    )
}

/// Where and how spans are sent, from the environment.
pub struct Settings {
    /// The full URL spans are POSTed to (`…/v1/traces`).
    pub url: String,
    headers: Vec<(http::HeaderName, http::HeaderValue)>,
    timeout: Duration,
    gzip: bool,
}

impl Settings {
    /// `OTEL_EXPORTER_OTLP_TRACES_*` over `OTEL_EXPORTER_OTLP_*`; `None`
    /// when neither endpoint is set. A value kiln-proxy cannot honour is
    /// refused with what to set instead.
    pub fn from_env(
        var: &impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Settings>, ConfigError> {
        // The traces variable, else the general one: (name, value), set and not blank.
        let pick = |suffix: &str| {
            [
                format!("OTEL_EXPORTER_OTLP_TRACES_{suffix}"),
                format!("OTEL_EXPORTER_OTLP_{suffix}"),
            ]
            .into_iter()
            .find_map(|k| var(&k).filter(|v| !v.trim().is_empty()).map(|v| (k, v)))
        };
        let Some((key, endpoint)) = pick("ENDPOINT") else {
            return Ok(None);
        };
        let endpoint = endpoint.trim();
        if endpoint.starts_with("https:") {
            return Err(bad(
                &key,
                endpoint,
                "kiln-proxy exports traces over plain HTTP to a collector beside it \
                 (e.g. http://localhost:4318); let the collector hold the TLS and credentials \
                 (deploy/otel-collector.yaml)",
            ));
        }
        if !endpoint.starts_with("http://") {
            return Err(bad(
                &key,
                endpoint,
                "give the collector's URL, e.g. http://localhost:4318",
            ));
        }
        // The general endpoint is a base URL; the traces one is used as it is.
        let url = if key == "OTEL_EXPORTER_OTLP_ENDPOINT" {
            format!("{}/v1/traces", endpoint.trim_end_matches('/'))
        } else {
            endpoint.to_owned()
        };
        if let Err(e) = url.parse::<http::Uri>() {
            return Err(bad(&key, endpoint, format!("not a URL: {e}")));
        }
        if let Some((key, protocol)) = pick("PROTOCOL")
            && protocol.trim() != "http/protobuf"
        {
            return Err(bad(
                &key,
                &protocol,
                "kiln-proxy sends OTLP as http/protobuf; unset it or set http/protobuf \
                 (and point the endpoint at the collector's HTTP port, 4318)",
            ));
        }
        let timeout = match pick("TIMEOUT") {
            None => DEFAULT_TIMEOUT,
            Some((key, ms)) => match ms.trim().parse::<u64>() {
                Ok(ms) if ms > 0 => Duration::from_millis(ms),
                _ => {
                    return Err(bad(
                        &key,
                        &ms,
                        "give the export timeout in milliseconds, e.g. 10000",
                    ));
                }
            },
        };
        let gzip = match pick("COMPRESSION") {
            None => false,
            Some((key, c)) => match c.trim() {
                "gzip" => true,
                "none" => false,
                _ => {
                    return Err(bad(
                        &key,
                        &c,
                        "kiln-proxy compresses OTLP with gzip or not at all (none)",
                    ));
                }
            },
        };
        let headers = match pick("HEADERS") {
            None => Vec::new(),
            Some((key, list)) => headers(&list).map_err(|reason| ConfigError::Value {
                key,
                // Header values are often credentials: not repeated in the error.
                value: "…".into(),
                reason,
            })?,
        };
        Ok(Some(Settings {
            url,
            headers,
            timeout,
            gzip,
        }))
    }
}

/// `key=value,key2=value2`, values percent-decoded (the specification's
/// format for `OTEL_EXPORTER_OTLP_HEADERS`).
fn headers(list: &str) -> Result<Vec<(http::HeaderName, http::HeaderValue)>, String> {
    list.split(',')
        .map(str::trim)
        .filter(|pair| !pair.is_empty())
        .enumerate()
        .map(|(i, pair)| {
            let n = i + 1;
            let (name, value) = pair.split_once('=').ok_or_else(|| {
                format!("header {n} has no '=': give key=value pairs separated by commas")
            })?;
            let name = http::HeaderName::try_from(name.trim()).map_err(|_| {
                format!("header {n} has a name that is not a valid HTTP header name")
            })?;
            let value = percent_encoding::percent_decode_str(value.trim())
                .decode_utf8()
                .map_err(|_| format!("header {name}'s value is not UTF-8 once percent-decoded"))?;
            let value = http::HeaderValue::try_from(value.as_ref()).map_err(|_| {
                format!("header {name}'s value holds characters a header cannot carry")
            })?;
            Ok((name, value))
        })
        .collect()
}

/// Sends the SDK's span batches to the collector.
pub struct Exporter {
    settings: Settings,
    agent: ureq::Agent,
    resource: EncodedResource,
    /// The request body, reused from batch to batch.
    body: Mutex<Vec<u8>>,
}

impl std::fmt::Debug for Exporter {
    // Not the headers: they often hold credentials.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("otlp::Exporter")
            .field("url", &self.settings.url)
            .finish_non_exhaustive()
    }
}

impl Exporter {
    pub fn new(settings: Settings) -> Exporter {
        let agent = ureq::Agent::config_builder()
            // Statuses are read here: some are retried.
            .http_status_as_error(false)
            .user_agent(concat!("kiln-proxy/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        Exporter {
            settings,
            agent,
            resource: EncodedResource::default(),
            body: Mutex::new(Vec::new()),
        }
    }

    /// One POST of `body`, retried as the specification says, all within
    /// the export timeout.
    fn send(&self, body: &[u8]) -> OTelSdkResult {
        let deadline = Instant::now() + self.settings.timeout;
        let mut retries = 0;
        loop {
            let mut request = self
                .agent
                .post(&self.settings.url)
                .header(http::header::CONTENT_TYPE, "application/x-protobuf");
            if self.settings.gzip {
                request = request.header(http::header::CONTENT_ENCODING, "gzip");
            }
            for (name, value) in &self.settings.headers {
                request = request.header(name, value);
            }
            // Each attempt within what is left of the export's time.
            let left = deadline.saturating_duration_since(Instant::now());
            let request = request.config().timeout_global(Some(left)).build();
            let (failure, retry_after) = match request.send(body) {
                Ok(mut answer) => {
                    let status = answer.status();
                    // Read to its end (bounded), so the connection is kept.
                    let _ = answer
                        .body_mut()
                        .with_config()
                        .limit(64 * 1024)
                        .read_to_vec();
                    if status.is_success() {
                        return Ok(());
                    }
                    let failure = format!(
                        "the OTLP collector at {} answered {status}",
                        self.settings.url
                    );
                    if !matches!(status.as_u16(), 429 | 502 | 503 | 504) {
                        return Err(OTelSdkError::InternalFailure(failure));
                    }
                    let after = answer
                        .headers()
                        .get(http::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok()?.trim().parse().ok())
                        .map(Duration::from_secs);
                    (failure, after)
                }
                Err(e) => (
                    format!("cannot send spans to {}: {e}", self.settings.url),
                    None,
                ),
            };
            let pause = retry_after.unwrap_or(FIRST_RETRY * 2u32.pow(retries));
            if retries == RETRIES || Instant::now() + pause >= deadline {
                return Err(OTelSdkError::InternalFailure(failure));
            }
            std::thread::sleep(pause);
            retries += 1;
        }
    }
}

fn gzip(body: &[u8]) -> Result<Vec<u8>, OTelSdkError> {
    let mut gz = flate2::write::GzEncoder::new(
        Vec::with_capacity(body.len() / 4),
        flate2::Compression::fast(),
    );
    gz.write_all(body)
        .and_then(|()| gz.finish())
        .map_err(|e| OTelSdkError::InternalFailure(format!("cannot gzip spans: {e}")))
}

impl SpanExporter for Exporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        // The SDK calls one export at a time: the lock is never contended.
        let mut body = self.body.lock().unwrap_or_else(|e| e.into_inner());
        body.clear();
        otlp_wire::request(&self.resource, &batch, &mut body);
        let spans = batch.len() as u64;
        // The spans are freed before the wait on the network.
        drop(batch);
        let sent = if self.settings.gzip {
            gzip(&body).and_then(|zipped| self.send(&zipped))
        } else {
            self.send(&body)
        };
        let counter = if sent.is_ok() { &EXPORTED } else { &FAILED };
        counter.fetch_add(spans, Ordering::Relaxed);
        sent
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.resource = otlp_wire::resource(resource);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(vars: &[(&str, &str)]) -> Result<Option<Settings>, ConfigError> {
        Settings::from_env(&|k: &str| {
            vars.iter()
                .find(|(name, _)| *name == k)
                .map(|(_, v)| v.to_string())
        })
    }

    fn refused(vars: &[(&str, &str)]) -> String {
        match settings(vars) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("{vars:?} was taken"),
        }
    }

    #[test]
    fn the_traces_url_is_the_general_endpoint_with_its_path_or_the_traces_endpoint_as_given() {
        let url = |vars: &[(&str, &str)]| settings(vars).unwrap().map(|s| s.url);
        assert_eq!(url(&[]), None);
        assert_eq!(url(&[("OTEL_EXPORTER_OTLP_ENDPOINT", " ")]), None);
        for base in ["http://localhost:4318", "http://localhost:4318/"] {
            assert_eq!(
                url(&[("OTEL_EXPORTER_OTLP_ENDPOINT", base)]).as_deref(),
                Some("http://localhost:4318/v1/traces")
            );
        }
        assert_eq!(
            url(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://localhost:4318"),
                (
                    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                    "http://collector:4318/custom"
                ),
            ])
            .as_deref(),
            Some("http://collector:4318/custom")
        );
    }

    #[test]
    fn settings_kiln_proxy_cannot_honour_are_refused_with_what_to_set() {
        let e = refused(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "https://otlp.example:4318")]);
        assert!(
            e.contains("OTEL_EXPORTER_OTLP_ENDPOINT") && e.contains("http://localhost:4318"),
            "{e}"
        );
        let e = refused(&[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "localhost:4318")]);
        assert!(e.contains("http://localhost:4318"), "{e}");
        let base = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://localhost:4318");
        let e = refused(&[base, ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")]);
        assert!(
            e.contains("OTEL_EXPORTER_OTLP_PROTOCOL") && e.contains("http/protobuf"),
            "{e}"
        );
        let e = refused(&[base, ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "10s")]);
        assert!(
            e.contains("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT") && e.contains("milliseconds"),
            "{e}"
        );
        let e = refused(&[base, ("OTEL_EXPORTER_OTLP_COMPRESSION", "zstd")]);
        assert!(e.contains("gzip"), "{e}");
        // A header that cannot be sent names itself, not its value (a credential).
        let e = refused(&[
            base,
            (
                "OTEL_EXPORTER_OTLP_HEADERS",
                "authorization=Bearer%0Asecret",
            ),
        ]);
        assert!(e.contains("authorization") && !e.contains("secret"), "{e}");
        let e = refused(&[base, ("OTEL_EXPORTER_OTLP_HEADERS", "tokensecret")]);
        assert!(e.contains("header 1") && !e.contains("tokensecret"), "{e}");
        assert!(settings(&[base, ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")]).is_ok());
    }

    /// A collector on loopback that reads each request and answers with
    /// `answer` (or never, when `None`); counts the requests.
    fn collector(
        answer: Option<&'static str>,
    ) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        use std::io::{BufRead, BufReader, Read};
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = count.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                let seen = seen.clone();
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(conn.try_clone().unwrap());
                    loop {
                        let mut len = 0;
                        let mut line = String::new();
                        while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                            if let Some(v) =
                                line.to_ascii_lowercase().strip_prefix("content-length:")
                            {
                                len = v.trim().parse().unwrap_or(0);
                            }
                            line.clear();
                        }
                        if line != "\r\n" {
                            return;
                        }
                        let mut body = vec![0; len];
                        if reader.read_exact(&mut body).is_err() {
                            return;
                        }
                        seen.fetch_add(1, Ordering::SeqCst);
                        match answer {
                            Some(a) => {
                                if conn.write_all(a.as_bytes()).is_err() {
                                    return;
                                }
                            }
                            None => std::thread::sleep(Duration::from_secs(5)),
                        }
                    }
                });
            }
        });
        (url, count)
    }

    fn exporter_for(url: &str, timeout_ms: &str) -> Exporter {
        let vars = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", url),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", timeout_ms),
        ];
        Exporter::new(settings(&vars).unwrap().unwrap())
    }

    #[test]
    fn an_export_gives_up_within_its_timeout_retries_included() {
        use std::sync::atomic::Ordering;
        // A collector that takes the spans and never answers.
        let (url, _) = collector(None);
        let started = Instant::now();
        let result = exporter_for(&url, "300").send(b"spans");
        let took = started.elapsed();
        assert!(result.is_err());
        assert!(
            took >= Duration::from_millis(250) && took < Duration::from_secs(2),
            "{took:?}"
        );

        // One that is starting: 503 to every export. Retried (100, 200 ms
        // apart), then the error says what the collector answered.
        let (url, count) = collector(Some(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n",
        ));
        let started = Instant::now();
        let error = exporter_for(&url, "1000")
            .send(b"spans")
            .unwrap_err()
            .to_string();
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(error.contains("503"), "{error}");
        let tries = count.load(Ordering::SeqCst);
        assert!((3..=4).contains(&tries), "{tries} tries");

        // A refusal that retrying will not change is not retried.
        let (url, count) = collector(Some(
            "HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n",
        ));
        let error = exporter_for(&url, "1000")
            .send(b"spans")
            .unwrap_err()
            .to_string();
        assert!(error.contains("400"), "{error}");
        assert_eq!(count.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn headers_timeout_and_compression_come_from_the_traces_variable_over_the_general_one() {
        let s = settings(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://localhost:4318"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "x-general=1"),
            (
                "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
                "authorization=Bearer%20a%3Db, x-tenant = kiln ,",
            ),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
            ("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "gzip"),
        ])
        .unwrap()
        .unwrap();
        let headers: Vec<(String, String)> = s
            .headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_owned()))
            .collect();
        assert_eq!(
            headers,
            [
                ("authorization".to_owned(), "Bearer a=b".to_owned()),
                ("x-tenant".to_owned(), "kiln".to_owned())
            ]
        );
        assert_eq!(s.timeout, Duration::from_millis(2500));
        assert!(s.gzip);
        let s = settings(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://localhost:4318")])
            .unwrap()
            .unwrap();
        assert_eq!(
            (s.timeout, s.gzip, s.headers.len()),
            (DEFAULT_TIMEOUT, false, 0)
        );
    }
}

//! Logs as Cloud Logging's structured JSON lines: `severity`, `message`,
//! `time`, an `httpRequest` object for access logs, and
//! `logging.googleapis.com/trace` so a request's lines group under its trace.
//!
//! Events name these with fields: `http_request` (a JSON string, turned into
//! the `httpRequest` object), `trace` (a bare trace ID), `span_id` and
//! `trace_sampled`; with traces on, a line without them belongs to the
//! current request's span (`logging.googleapis.com/spanId` links it there).
//! Prompt and completion text are never put in fields.

use std::fmt;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// Installs the JSON logger on stderr; `RUST_LOG` filters (default `info`).
/// Keep the guard until the process ends: dropping it waits (briefly) until
/// queued lines are written. `None` if a logger was already installed.
pub fn init() -> Option<LogGuard> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let (writer, guard) = background_stderr();
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .event_format(CloudLogging::from_env())
        .try_init()
        .ok()
        .map(|()| guard)
}

/// Bytes of log lines waiting for the writer thread; beyond this, lines are dropped.
const QUEUE_BYTES: usize = 8 * 1024 * 1024;

/// How often the writer thread writes out what has queued up.
const WRITE_EVERY: Duration = Duration::from_millis(20);

static DROPPED: AtomicU64 = AtomicU64::new(0);

/// Lines dropped because stderr could not keep up (see [`background_stderr`]).
pub fn dropped_lines() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

struct Queue {
    lines: Mutex<Vec<u8>>,
    /// Held while writing, so batches reach stderr in order.
    writing: Mutex<()>,
}

impl Queue {
    fn write_out(&self) {
        let _order = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        let batch = std::mem::take(&mut *self.lines.lock().unwrap_or_else(|e| e.into_inner()));
        if !batch.is_empty() {
            let _ = std::io::stderr().write_all(&batch);
        }
    }
}

/// A `MakeWriter` whose lines reach stderr from a thread of its own, in
/// batches every 20 ms: a log reader that falls behind (a full pipe to the
/// platform's collector) must not stall the workers serving requests, and a
/// request must not pay for a thread wake-up per line. When 8 MiB are
/// waiting, lines are dropped (counted in `kiln_log_lines_dropped_total`)
/// rather than block.
#[derive(Clone)]
pub struct Background {
    queue: Arc<Queue>,
}

/// Writes what is still queued when dropped: keep it until the process ends.
pub struct LogGuard {
    queue: Arc<Queue>,
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        self.queue.write_out();
    }
}

pub fn background_stderr() -> (Background, LogGuard) {
    let queue = Arc::new(Queue {
        lines: Mutex::new(Vec::new()),
        writing: Mutex::new(()),
    });
    let q = Arc::downgrade(&queue);
    let spawned = std::thread::Builder::new()
        .name("kiln-log".into())
        .spawn(move || {
            while let Some(queue) = q.upgrade() {
                queue.write_out();
                drop(queue);
                std::thread::sleep(WRITE_EVERY);
            }
        });
    if spawned.is_err() {
        eprintln!("kiln-proxy: cannot start the log writer thread; logs are written at exit only");
    }
    (
        Background {
            queue: queue.clone(),
        },
        LogGuard { queue },
    )
}

/// One event's bytes, queued whole when the formatter is done with them.
pub struct LineWriter {
    buf: Vec<u8>,
    queue: Arc<Queue>,
}

impl std::io::Write for LineWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let mut lines = self.queue.lines.lock().unwrap_or_else(|e| e.into_inner());
        if lines.len() + self.buf.len() > QUEUE_BYTES {
            DROPPED.fetch_add(1, Ordering::Relaxed);
        } else {
            lines.extend_from_slice(&self.buf);
        }
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Background {
    type Writer = LineWriter;

    fn make_writer(&'a self) -> LineWriter {
        LineWriter {
            buf: Vec::new(),
            queue: self.queue.clone(),
        }
    }
}

/// The project found after the logger started (the metadata server, in
/// [`crate::telemetry::init`]).
static PROJECT: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Names the project for the trace field of later lines.
pub fn set_project(project: &str) {
    let _ = PROJECT.set(project.to_owned());
}

/// The event formatter.
pub struct CloudLogging {
    /// With a project, traces are written in the full form Cloud Logging links:
    /// `projects/P/traces/T`.
    project: Option<String>,
}

impl CloudLogging {
    pub fn from_env() -> CloudLogging {
        let project = ["GOOGLE_CLOUD_PROJECT", "KILN_PROJECT_ID"]
            .iter()
            .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()));
        CloudLogging { project }
    }

    /// One event as a JSON object.
    pub fn to_json(&self, level: &Level, target: &str, fields: Map<String, Value>) -> Value {
        let mut fields = fields;
        let mut obj = Map::new();
        let severity = match *level {
            Level::ERROR => "ERROR",
            Level::WARN => "WARNING",
            Level::INFO => "INFO",
            _ => "DEBUG",
        };
        obj.insert("severity".into(), severity.into());
        // The OpenTelemetry SDK's own events have a `name` and no message.
        let message = fields
            .remove("message")
            .or_else(|| fields.get("name").cloned())
            .unwrap_or_default();
        obj.insert("message".into(), message);
        obj.insert("time".into(), rfc3339(SystemTime::now()).into());
        obj.insert("target".into(), target.into());
        if let Some(Value::String(s)) = fields.remove("http_request") {
            let parsed = serde_json::from_str(&s).unwrap_or(Value::String(s));
            obj.insert("httpRequest".into(), parsed);
        }
        let mut trace = fields.remove("trace").filter(|t| t != "");
        let mut span = fields.remove("span_id").filter(|s| s != "");
        // A bool, or the access log's "true"/"false"/"" (unknown).
        let mut sampled = match fields.remove("trace_sampled") {
            Some(Value::String(s)) => s.parse::<bool>().ok().map(Value::Bool),
            other => other,
        };
        if trace.is_none()
            && let Some(ids) = crate::telemetry::current_log_ids()
        {
            (trace, span, sampled) = (
                Some(ids.trace().into()),
                Some(ids.span().into()),
                Some(ids.sampled.into()),
            );
        }
        if let Some(Value::String(t)) = trace {
            let full = match self.project.as_ref().or(PROJECT.get()) {
                Some(p) => format!("projects/{p}/traces/{t}"),
                None => t,
            };
            obj.insert("logging.googleapis.com/trace".into(), full.into());
            if let Some(s) = span {
                obj.insert("logging.googleapis.com/spanId".into(), s);
            }
            if let Some(on) = sampled {
                obj.insert("logging.googleapis.com/trace_sampled".into(), on);
            }
        }
        obj.extend(fields);
        Value::Object(obj)
    }
}

impl<S, N> FormatEvent<S, N> for CloudLogging
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut v = JsonFields(Map::new());
        event.record(&mut v);
        let meta = event.metadata();
        writeln!(writer, "{}", self.to_json(meta.level(), meta.target(), v.0))
    }
}

struct JsonFields(Map<String, Value>);

impl Visit for JsonFields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().into(), format!("{value:?}").into());
    }
}

/// RFC 3339 UTC with microseconds.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_micros()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_events_become_cloud_logging_json() {
        let logger = CloudLogging {
            project: Some("proj".into()),
        };
        let mut fields = Map::new();
        fields.insert("message".into(), "request finished".into());
        fields.insert(
            "http_request".into(),
            r#"{"status":200,"requestMethod":"POST"}"#.into(),
        );
        fields.insert("trace".into(), "abc123".into());
        fields.insert("span_id".into(), "00f067aa0ba902b7".into());
        fields.insert("trace_sampled".into(), true.into());
        fields.insert("request_id".into(), "r1".into());
        let v = logger.to_json(&Level::WARN, "kiln_proxy::access", fields);
        assert_eq!(v["severity"], "WARNING");
        assert_eq!(v["message"], "request finished");
        assert_eq!(v["httpRequest"]["status"], 200);
        assert_eq!(
            v["logging.googleapis.com/trace"],
            "projects/proj/traces/abc123"
        );
        assert_eq!(v["logging.googleapis.com/spanId"], "00f067aa0ba902b7");
        assert_eq!(v["logging.googleapis.com/trace_sampled"], true);
        assert_eq!(v["request_id"], "r1");
    }

    #[test]
    fn background_writer_queues_whole_lines_and_drops_when_full() {
        let queue = Arc::new(Queue {
            lines: Mutex::new(vec![b'x'; QUEUE_BYTES - 16]),
            writing: Mutex::new(()),
        });
        let make = Background {
            queue: queue.clone(),
        };
        let before = dropped_lines();
        for text in ["line one\n", "a line too long for what is left\n"] {
            let mut w = tracing_subscriber::fmt::MakeWriter::make_writer(&make);
            w.write_all(text.as_bytes()).unwrap();
        }
        let lines = queue.lines.lock().unwrap();
        assert!(
            lines.ends_with(b"xline one\n"),
            "the first line is queued whole"
        );
        assert_eq!(lines.len(), QUEUE_BYTES - 16 + 9);
        assert!(
            dropped_lines() > before,
            "the second line is counted as dropped"
        );
    }

    #[test]
    fn timestamps_are_rfc3339() {
        let t = UNIX_EPOCH + std::time::Duration::from_secs(1_780_000_000);
        assert_eq!(rfc3339(t), "2026-05-28T20:26:40.000000Z");
    }
}

//! Logs as Cloud Logging's structured JSON lines: `severity`, `message`,
//! `time`, an `httpRequest` object for access logs, and
//! `logging.googleapis.com/trace` so a request's lines group under its trace.
//!
//! Events name these with fields: `http_request` (a JSON string, turned into
//! the `httpRequest` object) and `trace` (a bare trace ID). Prompt and
//! completion text are never put in fields.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// Installs the JSON logger on stderr; `RUST_LOG` filters (default `info`).
/// Returns quietly if a logger is already installed (tests start many proxies).
pub fn init() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .event_format(CloudLogging::from_env())
        .try_init();
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
        obj.insert(
            "message".into(),
            fields.remove("message").unwrap_or_default(),
        );
        obj.insert("time".into(), rfc3339(SystemTime::now()).into());
        obj.insert("target".into(), target.into());
        if let Some(Value::String(s)) = fields.remove("http_request") {
            let parsed = serde_json::from_str(&s).unwrap_or(Value::String(s));
            obj.insert("httpRequest".into(), parsed);
        }
        if let Some(Value::String(t)) = fields.remove("trace").filter(|t| t != "") {
            let full = match &self.project {
                Some(p) => format!("projects/{p}/traces/{t}"),
                None => t,
            };
            obj.insert("logging.googleapis.com/trace".into(), full.into());
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
        fields.insert("request_id".into(), "r1".into());
        let v = logger.to_json(&Level::WARN, "kiln_proxy::access", fields);
        assert_eq!(v["severity"], "WARNING");
        assert_eq!(v["message"], "request finished");
        assert_eq!(v["httpRequest"]["status"], 200);
        assert_eq!(
            v["logging.googleapis.com/trace"],
            "projects/proj/traces/abc123"
        );
        assert_eq!(v["request_id"], "r1");
    }

    #[test]
    fn timestamps_are_rfc3339() {
        let t = UNIX_EPOCH + std::time::Duration::from_secs(1_780_000_000);
        assert_eq!(rfc3339(t), "2026-05-28T20:26:40.000000Z");
    }
}

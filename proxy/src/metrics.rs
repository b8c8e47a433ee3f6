//! Prometheus metrics at `/metrics`, in the OpenMetrics text format, with
//! the Prometheus project's `prometheus-client`: per route and model
//! (bounded: see [`Metrics::model_label`]) for what generation looks like —
//! time to first token, inter-token latency, output tokens per second,
//! tokens in and out — and for what the proxy does: requests, queue,
//! rejections, upstream errors, Ollama restarts and model loads.
//!
//! Two bucket sets: generation times in seconds, and proxy work below a
//! millisecond (plugin calls, see `plugins::stats`). Other owners (the plugin
//! stage, the counter backends) append their own families before `# EOF`.

use std::collections::HashSet;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

/// Whole requests and waits, in seconds: from a refused request (µs) to a long generation.
const REQUEST_BUCKETS: [f64; 17] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
    600.0,
];
/// Time to first token: prompt processing, model loads included.
const TTFT_BUCKETS: [f64; 14] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0,
];
/// Between two tokens: a GPU decodes one in 5–100 ms.
const INTER_TOKEN_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0,
];
const TOKENS_PER_SECOND_BUCKETS: [f64; 12] = [
    1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 50.0, 75.0, 100.0, 200.0, 500.0, 1000.0,
];
/// Proxy work: a plugin call takes tens of µs.
pub const PROXY_BUCKETS: [f64; 13] = [
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1,
];

/// Distinct model names given their own label value; later ones count as
/// `other`. Only models Ollama answered 200 for are named at all, so a
/// client cannot grow the label set with made-up names.
const MAX_MODELS: usize = 32;

/// A histogram family whose buckets are fixed per family.
pub type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteStatus {
    route: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteModel {
    route: &'static str,
    model: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Tokens {
    route: &'static str,
    model: String,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Kind {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelLabel {
    model: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Version {
    version: &'static str,
}

/// All metrics of one proxy.
pub struct Metrics {
    registry: Registry,
    requests: Family<RouteStatus, Counter>,
    duration: HistogramFamily<RouteStatus>,
    ttfb: HistogramFamily<RouteLabel>,
    ttft: HistogramFamily<RouteModel>,
    inter_token: HistogramFamily<RouteModel>,
    tokens_per_second: HistogramFamily<RouteModel>,
    tokens: Family<Tokens, Counter>,
    queue_wait: Histogram,
    rejections: Family<Reason, Counter>,
    upstream_errors: Family<Kind, Counter>,
    client_disconnects: Counter,
    ollama_restarts: Counter,
    model_load: Family<ModelLabel, Gauge<f64, AtomicU64>>,
    log_lines_dropped: Counter,
    trace_spans: Family<Outcome, Counter>,
    in_flight: Gauge,
    queue_depth: Gauge,
    max_in_flight: Gauge,
    ready: Gauge,
    models: Mutex<HashSet<String>>,
}

/// Gauges read at scrape time from their owners.
pub struct Gauges {
    pub in_flight: usize,
    pub queued: usize,
    pub max_in_flight: usize,
    pub ready: bool,
}

fn histograms<L: Clone + std::hash::Hash + Eq>(make: fn() -> Histogram) -> HistogramFamily<L> {
    Family::new_with_constructor(make)
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut r = Registry::default();
        let requests = Family::default();
        r.register(
            "kiln_requests",
            "Requests answered, by route and status.",
            requests.clone(),
        );
        let duration = histograms(|| Histogram::new(REQUEST_BUCKETS));
        r.register(
            "kiln_request_duration_seconds",
            "Time from request arrival to the end of the response body, by route and status.",
            duration.clone(),
        );
        let ttfb = histograms(|| Histogram::new(REQUEST_BUCKETS));
        r.register(
            "kiln_time_to_first_byte_seconds",
            "Time from request arrival to Ollama's response head, by route.",
            ttfb.clone(),
        );
        let ttft = histograms(|| Histogram::new(TTFT_BUCKETS));
        r.register(
            "kiln_time_to_first_token_seconds",
            "Streamed answers: time from request arrival to the first token (Ollama sends its response head with it), by route and model.",
            ttft.clone(),
        );
        let inter_token = histograms(|| Histogram::new(INTER_TOKEN_BUCKETS));
        r.register(
            "kiln_inter_token_latency_seconds",
            "Streamed answers: mean time between output tokens after the first, one observation per answer, by route and model.",
            inter_token.clone(),
        );
        let tokens_per_second = histograms(|| Histogram::new(TOKENS_PER_SECOND_BUCKETS));
        r.register(
            "kiln_output_tokens_per_second",
            "Streamed answers: output tokens per second after the first token, one observation per answer, by route and model.",
            tokens_per_second.clone(),
        );
        let tokens = Family::default();
        r.register(
            "kiln_tokens",
            "Tokens Ollama reported for answers (kind: prompt = input, completion = output), by route and model.",
            tokens.clone(),
        );
        let queue_wait = Histogram::new(REQUEST_BUCKETS);
        r.register(
            "kiln_queue_wait_seconds",
            "Time inference requests waited for an admission slot.",
            queue_wait.clone(),
        );
        let rejections = Family::default();
        r.register(
            "kiln_rejections",
            "Requests refused by the proxy, by reason (queue_full: admission).",
            rejections.clone(),
        );
        let upstream_errors = Family::default();
        r.register(
            "kiln_upstream_errors",
            "Upstream failures by kind: unreachable, timeout (no answer in time), broke (cut mid-answer), stalled (silent mid-answer past the deadline).",
            upstream_errors.clone(),
        );
        let client_disconnects = Counter::default();
        r.register(
            "kiln_client_disconnects",
            "Responses abandoned by their client before the end.",
            client_disconnects.clone(),
        );
        let ollama_restarts = Counter::default();
        r.register(
            "kiln_ollama_restarts",
            "Restarts of the supervised ollama serve.",
            ollama_restarts.clone(),
        );
        let model_load = Family::default();
        r.register(
            "kiln_model_load_seconds",
            "How long the last preload of each model took (its load into memory).",
            model_load.clone(),
        );
        let log_lines_dropped = Counter::default();
        r.register(
            "kiln_log_lines_dropped",
            "Log lines dropped because stderr could not keep up.",
            log_lines_dropped.clone(),
        );
        let trace_spans = Family::default();
        r.register(
            "kiln_trace_spans",
            "Spans sent over OTLP: exported (the collector took them) or failed (given up after retries, so lost).",
            trace_spans.clone(),
        );
        let gauge = |r: &mut Registry, name: &str, help: &str| {
            let g = Gauge::default();
            r.register(name, help, g.clone());
            g
        };
        let in_flight = gauge(
            &mut r,
            "kiln_in_flight",
            "Inference requests at Ollama now.",
        );
        let queue_depth = gauge(
            &mut r,
            "kiln_queue_depth",
            "Inference requests waiting for a slot now.",
        );
        let max_in_flight = gauge(&mut r, "kiln_max_in_flight", "Configured admission slots.");
        let ready = gauge(
            &mut r,
            "kiln_ready",
            "1 once Ollama answers and the preloaded models are loaded.",
        );
        r.register(
            "kiln_build",
            "The kiln-proxy version.",
            Info::new(Version {
                version: env!("CARGO_PKG_VERSION"),
            }),
        );
        Metrics {
            registry: r,
            requests,
            duration,
            ttfb,
            ttft,
            inter_token,
            tokens_per_second,
            tokens,
            queue_wait,
            rejections,
            upstream_errors,
            client_disconnects,
            ollama_restarts,
            model_load,
            log_lines_dropped,
            trace_spans,
            in_flight,
            queue_depth,
            max_in_flight,
            ready,
            models: Mutex::new(HashSet::new()),
        }
    }

    /// The model's label value: its name for the first [`MAX_MODELS`]
    /// names seen, else `other`.
    fn model_label(&self, model: Option<&str>) -> String {
        let Some(model) = model.filter(|m| !m.is_empty()) else {
            return "none".into();
        };
        let mut seen = self.models.lock().unwrap_or_else(|e| e.into_inner());
        if seen.contains(model) || seen.len() < MAX_MODELS && seen.insert(model.to_owned()) {
            model.to_owned()
        } else {
            "other".into()
        }
    }

    /// A finished request: its status and total duration.
    pub fn request(&self, route: &'static str, status: u16, elapsed: Duration) {
        let labels = RouteStatus { route, status };
        self.requests.get_or_create(&labels).inc();
        self.duration
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
    }

    /// Time from the request's arrival to the upstream's response head, which
    /// Ollama sends with the first token.
    pub fn first_byte(&self, route: &'static str, elapsed: Duration) {
        self.ttfb
            .get_or_create(&RouteLabel { route })
            .observe(elapsed.as_secs_f64());
    }

    /// A streamed answer's first token (its 200 response head) arrived.
    pub fn first_token(&self, route: &'static str, model: Option<&str>, elapsed: Duration) {
        let labels = RouteModel {
            route,
            model: self.model_label(model),
        };
        self.ttft
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
    }

    /// A streamed answer ended: `output` tokens, the first of them
    /// `since_first` ago.
    pub fn generation(
        &self,
        route: &'static str,
        model: Option<&str>,
        since_first: Duration,
        output: u64,
    ) {
        let secs = since_first.as_secs_f64();
        if output < 2 || secs <= 0.0 {
            return;
        }
        let labels = RouteModel {
            route,
            model: self.model_label(model),
        };
        self.inter_token
            .get_or_create(&labels)
            .observe(secs / (output - 1) as f64);
        self.tokens_per_second
            .get_or_create(&labels)
            .observe((output - 1) as f64 / secs);
    }

    pub fn queue_wait(&self, waited: Duration) {
        self.queue_wait.observe(waited.as_secs_f64());
    }

    /// A request the proxy refused itself; `reason` is a fixed label.
    pub fn rejection(&self, reason: &'static str) {
        self.rejections.get_or_create(&Reason { reason }).inc();
    }

    /// An answer's token counts, as Ollama reported them.
    pub fn tokens(&self, route: &'static str, model: Option<&str>, prompt: u64, completion: u64) {
        let model = self.model_label(model);
        for (kind, n) in [("prompt", prompt), ("completion", completion)] {
            let labels = Tokens {
                route,
                model: model.clone(),
                kind,
            };
            self.tokens.get_or_create(&labels).inc_by(n);
        }
    }

    pub fn client_disconnect(&self) {
        self.client_disconnects.inc();
    }

    /// `kind`: unreachable, timeout, broke or stalled.
    pub fn upstream_error(&self, kind: &'static str) {
        self.upstream_errors.get_or_create(&Kind { kind }).inc();
    }

    pub fn ollama_restart(&self) {
        self.ollama_restarts.inc();
    }

    /// A preload of `model` finished after `took`.
    pub fn model_load(&self, model: &str, took: Duration) {
        let labels = ModelLabel {
            model: self.model_label(Some(model)),
        };
        self.model_load
            .get_or_create(&labels)
            .set(took.as_secs_f64());
    }

    /// The proxy's families, without the closing `# EOF` (others may
    /// append theirs; see [`finish`]).
    pub fn render(&self, g: &Gauges) -> String {
        self.in_flight.set(g.in_flight as i64);
        self.queue_depth.set(g.queued as i64);
        self.max_in_flight.set(g.max_in_flight as i64);
        self.ready.set(i64::from(g.ready));
        let dropped = crate::logging::dropped_lines();
        let counted = self.log_lines_dropped.get();
        self.log_lines_dropped
            .inc_by(dropped.saturating_sub(counted));
        // Only once traces are on: a proxy without them shows no such series.
        if crate::telemetry::enabled() {
            let (exported, failed) = crate::telemetry::span_counts();
            for (outcome, total) in [("exported", exported), ("failed", failed)] {
                let c = self.trace_spans.get_or_create(&Outcome { outcome });
                c.inc_by(total.saturating_sub(c.get()));
            }
        }
        let mut out = String::with_capacity(8192);
        let _ = prometheus_client::encoding::text::encode_registry(&mut out, &self.registry);
        out
    }
}

/// Ends an OpenMetrics exposition.
pub fn finish(out: &mut String) {
    let _ = prometheus_client::encoding::text::encode_eof(out);
}

/// The content type of [`Metrics::render`] + [`finish`].
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A histogram of short waits (50 µs to 250 ms), lock-free: for calls made
/// from plugin code on the request path, such as a shared counter's round
/// trip, which the request-level buckets (from 1 ms) cannot resolve.
#[derive(Default)]
pub struct LatencyHistogram {
    counts: [AtomicU64; LATENCY_BUCKETS.len()],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

/// Upper bounds in seconds.
const LATENCY_BUCKETS: [f64; 12] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
];

impl LatencyHistogram {
    pub fn observe(&self, took: Duration) {
        let secs = took.as_secs_f64();
        if let Some(i) = LATENCY_BUCKETS.iter().position(|le| secs <= *le) {
            self.counts[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_nanos
            .fetch_add(took.as_nanos() as u64, Ordering::Relaxed);
    }

    /// Appends `name` with its HELP and TYPE lines.
    pub fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (le, c) in LATENCY_BUCKETS.iter().zip(&self.counts) {
            cumulative += c.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {count}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gauges() -> Gauges {
        Gauges {
            in_flight: 2,
            queued: 1,
            max_in_flight: 4,
            ready: true,
        }
    }

    #[test]
    fn render_has_counts_and_buckets() {
        let m = Metrics::default();
        m.request("generate", 200, Duration::from_millis(30));
        m.request("generate", 429, Duration::from_micros(50));
        m.rejection("queue_full");
        m.tokens("chat", Some("gemma3:4b"), 12, 34);
        m.upstream_error("unreachable");
        let mut text = m.render(&gauges());
        finish(&mut text);
        for line in [
            "kiln_requests_total{route=\"generate\",status=\"429\"} 1",
            "kiln_request_duration_seconds_bucket{le=\"0.05\",route=\"generate\",status=\"200\"} 1",
            "kiln_request_duration_seconds_bucket{le=\"0.001\",route=\"generate\",status=\"429\"} 1",
            "kiln_rejections_total{reason=\"queue_full\"} 1",
            "kiln_tokens_total{route=\"chat\",model=\"gemma3:4b\",kind=\"completion\"} 34",
            "kiln_upstream_errors_total{kind=\"unreachable\"} 1",
            "kiln_queue_depth 1",
            "kiln_build_info{version=",
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn generation_histograms_use_their_own_buckets() {
        let m = Metrics::default();
        m.first_token("chat", Some("gemma3:4b"), Duration::from_millis(300));
        // 11 tokens, 10 after the first in 0.5 s: 50 ms apart, 20 per second.
        m.generation("chat", Some("gemma3:4b"), Duration::from_millis(500), 11);
        let text = m.render(&gauges());
        let labels = "route=\"chat\",model=\"gemma3:4b\"";
        for line in [
            format!("kiln_time_to_first_token_seconds_bucket{{le=\"0.25\",{labels}}} 0"),
            format!("kiln_time_to_first_token_seconds_bucket{{le=\"0.5\",{labels}}} 1"),
            format!("kiln_inter_token_latency_seconds_bucket{{le=\"0.03\",{labels}}} 0"),
            format!("kiln_inter_token_latency_seconds_bucket{{le=\"0.05\",{labels}}} 1"),
            format!("kiln_output_tokens_per_second_bucket{{le=\"10.0\",{labels}}} 0"),
            format!("kiln_output_tokens_per_second_bucket{{le=\"20.0\",{labels}}} 1"),
        ] {
            assert!(text.contains(&line), "{line} in\n{text}");
        }
    }

    /// Every metric deploy/dashboard.json charts is a family `/metrics`
    /// serves once it has a sample (empty families are left out).
    #[test]
    fn the_dashboard_charts_served_families() {
        let m = Metrics::default();
        m.request("chat", 200, Duration::from_secs(1));
        m.first_byte("chat", Duration::from_millis(100));
        m.first_token("chat", Some("m"), Duration::from_millis(100));
        m.generation("chat", Some("m"), Duration::from_secs(1), 10);
        m.tokens("chat", Some("m"), 1, 2);
        m.queue_wait(Duration::from_millis(1));
        m.rejection("queue_full");
        m.upstream_error("broke");
        m.client_disconnect();
        m.ollama_restart();
        m.model_load("m", Duration::from_secs(3));
        let mut text = m.render(&gauges());
        let plugins = crate::plugins::stats::StatsStore::default();
        let stats = plugins.for_plugin("p");
        stats.record(
            crate::plugins::stats::CallOutcome::Allow,
            Duration::from_micros(20),
        );
        plugins.render(&mut text);
        let dashboard = include_str!("../../deploy/dashboard.json");
        let mut names: Vec<&str> = dashboard
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("kiln_"))
            .collect();
        names.sort();
        names.dedup();
        assert!(names.len() > 10, "{names:?}");
        for name in names {
            let family = ["_bucket", "_total", "_info"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .unwrap_or(name);
            assert!(
                text.contains(&format!("# TYPE {family} ")),
                "deploy/dashboard.json charts {name}, which /metrics does not serve:\n{text}"
            );
        }
    }

    #[test]
    fn model_labels_are_bounded() {
        let m = Metrics::default();
        for i in 0..MAX_MODELS + 5 {
            m.tokens("chat", Some(&format!("model-{i}")), 1, 1);
        }
        let text = m.render(&gauges());
        assert!(text.contains("model=\"model-0\""));
        assert!(!text.contains(&format!("model=\"model-{}\"", MAX_MODELS)));
        assert!(
            text.contains("kiln_tokens_total{route=\"chat\",model=\"other\",kind=\"prompt\"} 5"),
            "{text}"
        );
    }
}

//! Prometheus metrics, rendered in the text exposition format at `/metrics`.
//!
//! Hand-rolled on purpose: a handful of counters and histograms with
//! low-cardinality labels (route label, status code) do not justify a
//! metrics framework in the request path.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds in seconds: from sub-millisecond proxy work to long generations.
const BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
    600.0,
];

#[derive(Default)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, secs: f64) {
        if self.counts.is_empty() {
            self.counts = vec![0; BUCKETS.len()];
        }
        for (i, le) in BUCKETS.iter().enumerate() {
            if secs <= *le {
                self.counts[i] += 1;
            }
        }
        self.sum += secs;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (i, le) in BUCKETS.iter().enumerate() {
            let c = self.counts.get(i).copied().unwrap_or(0);
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {c}");
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            self.count
        );
        let braced = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braced} {}", self.sum);
        let _ = writeln!(out, "{name}_count{braced} {}", self.count);
    }
}

#[derive(Default)]
struct Tables {
    requests: BTreeMap<(&'static str, u16), u64>,
    duration: BTreeMap<(&'static str, u16), Histogram>,
    ttfb: BTreeMap<&'static str, Histogram>,
    queue_wait: Histogram,
    rejections: BTreeMap<&'static str, u64>,
}

/// All metrics of one proxy.
#[derive(Default)]
pub struct Metrics {
    tables: Mutex<Tables>,
    prompt_tokens: AtomicU64,
    completion_tokens: AtomicU64,
    client_disconnects: AtomicU64,
    upstream_errors: AtomicU64,
    ollama_restarts: AtomicU64,
}

/// Gauges read at scrape time from their owners.
pub struct Gauges {
    pub in_flight: usize,
    pub queued: usize,
    pub max_in_flight: usize,
    pub ready: bool,
}

impl Metrics {
    fn with<R>(&self, f: impl FnOnce(&mut Tables) -> R) -> R {
        // A poisoned lock only means a panic elsewhere mid-update; the
        // counters are still usable.
        let mut t = self.tables.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut t)
    }

    /// A finished request: its status and total duration.
    pub fn request(&self, route: &'static str, status: u16, elapsed: Duration) {
        self.with(|t| {
            *t.requests.entry((route, status)).or_default() += 1;
            t.duration
                .entry((route, status))
                .or_default()
                .observe(elapsed.as_secs_f64());
        });
    }

    /// Time from the request's arrival to the upstream's response head, which
    /// Ollama sends with the first token.
    pub fn first_byte(&self, route: &'static str, elapsed: Duration) {
        self.with(|t| {
            t.ttfb
                .entry(route)
                .or_default()
                .observe(elapsed.as_secs_f64())
        });
    }

    pub fn queue_wait(&self, waited: Duration) {
        self.with(|t| t.queue_wait.observe(waited.as_secs_f64()));
    }

    /// A request the proxy refused itself; `reason` is a fixed label.
    pub fn rejection(&self, reason: &'static str) {
        self.with(|t| *t.rejections.entry(reason).or_default() += 1);
    }

    pub fn tokens(&self, prompt: u64, completion: u64) {
        self.prompt_tokens.fetch_add(prompt, Ordering::Relaxed);
        self.completion_tokens
            .fetch_add(completion, Ordering::Relaxed);
    }

    pub fn client_disconnect(&self) {
        self.client_disconnects.fetch_add(1, Ordering::Relaxed);
    }

    pub fn upstream_error(&self) {
        self.upstream_errors.fetch_add(1, Ordering::Relaxed);
    }

    pub fn ollama_restart(&self) {
        self.ollama_restarts.fetch_add(1, Ordering::Relaxed);
    }

    pub fn render(&self, g: &Gauges) -> String {
        let mut out = String::with_capacity(4096);
        let w = &mut out;
        let help = |w: &mut String, name: &str, kind: &str, text: &str| {
            let _ = writeln!(w, "# HELP {name} {text}\n# TYPE {name} {kind}");
        };
        self.with(|t| {
            help(
                w,
                "kiln_requests_total",
                "counter",
                "Requests answered, by route and status.",
            );
            for ((route, status), n) in &t.requests {
                let _ = writeln!(
                    w,
                    "kiln_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
                );
            }
            help(
                w,
                "kiln_request_duration_seconds",
                "histogram",
                "Time from request arrival to the end of the response body, by route and status.",
            );
            for ((route, status), h) in &t.duration {
                let labels = format!("route=\"{route}\",status=\"{status}\"");
                h.render(w, "kiln_request_duration_seconds", &labels);
            }
            help(
                w,
                "kiln_time_to_first_byte_seconds",
                "histogram",
                "Time from request arrival to Ollama's response head (its first token).",
            );
            for (route, h) in &t.ttfb {
                h.render(
                    w,
                    "kiln_time_to_first_byte_seconds",
                    &format!("route=\"{route}\""),
                );
            }
            help(
                w,
                "kiln_queue_wait_seconds",
                "histogram",
                "Time inference requests waited for an admission slot.",
            );
            t.queue_wait.render(w, "kiln_queue_wait_seconds", "");
            help(
                w,
                "kiln_rejections_total",
                "counter",
                "Requests refused by the proxy, by reason.",
            );
            for (reason, n) in &t.rejections {
                let _ = writeln!(w, "kiln_rejections_total{{reason=\"{reason}\"}} {n}");
            }
        });
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        help(
            w,
            "kiln_tokens_total",
            "counter",
            "Tokens reported in Ollama's final chunks.",
        );
        let _ = writeln!(
            w,
            "kiln_tokens_total{{kind=\"prompt\"}} {}",
            load(&self.prompt_tokens)
        );
        let _ = writeln!(
            w,
            "kiln_tokens_total{{kind=\"completion\"}} {}",
            load(&self.completion_tokens)
        );
        help(
            w,
            "kiln_client_disconnects_total",
            "counter",
            "Responses abandoned by their client before the end.",
        );
        let _ = writeln!(
            w,
            "kiln_client_disconnects_total {}",
            load(&self.client_disconnects)
        );
        help(
            w,
            "kiln_upstream_errors_total",
            "counter",
            "Upstream failures: unreachable, timed out, or cut mid-stream.",
        );
        let _ = writeln!(
            w,
            "kiln_upstream_errors_total {}",
            load(&self.upstream_errors)
        );
        help(
            w,
            "kiln_ollama_restarts_total",
            "counter",
            "Restarts of the supervised ollama serve.",
        );
        let _ = writeln!(
            w,
            "kiln_ollama_restarts_total {}",
            load(&self.ollama_restarts)
        );
        help(
            w,
            "kiln_log_lines_dropped_total",
            "counter",
            "Log lines dropped because stderr could not keep up.",
        );
        let dropped = crate::logging::dropped_lines();
        let _ = writeln!(w, "kiln_log_lines_dropped_total {dropped}");
        help(
            w,
            "kiln_in_flight",
            "gauge",
            "Inference requests at Ollama now.",
        );
        let _ = writeln!(w, "kiln_in_flight {}", g.in_flight);
        help(
            w,
            "kiln_queue_depth",
            "gauge",
            "Inference requests waiting for a slot now.",
        );
        let _ = writeln!(w, "kiln_queue_depth {}", g.queued);
        help(
            w,
            "kiln_max_in_flight",
            "gauge",
            "Configured admission slots.",
        );
        let _ = writeln!(w, "kiln_max_in_flight {}", g.max_in_flight);
        help(
            w,
            "kiln_ready",
            "gauge",
            "1 once Ollama answers and the preloaded models are loaded.",
        );
        let _ = writeln!(w, "kiln_ready {}", u8::from(g.ready));
        out
    }
}

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

    #[test]
    fn render_has_counts_and_buckets() {
        let m = Metrics::default();
        m.request("generate", 200, Duration::from_millis(30));
        m.request("generate", 429, Duration::from_micros(50));
        m.rejection("queue_full");
        m.tokens(12, 34);
        let text = m.render(&Gauges {
            in_flight: 2,
            queued: 1,
            max_in_flight: 4,
            ready: true,
        });
        assert!(
            text.contains("kiln_requests_total{route=\"generate\",status=\"429\"} 1"),
            "{text}"
        );
        assert!(text.contains(
            "kiln_request_duration_seconds_bucket{route=\"generate\",status=\"200\",le=\"0.05\"} 1"
        ));
        assert!(text.contains(
            "kiln_request_duration_seconds_bucket{route=\"generate\",status=\"429\",le=\"0.001\"} 1"
        ));
        assert!(text.contains("kiln_rejections_total{reason=\"queue_full\"} 1"));
        assert!(text.contains("kiln_tokens_total{kind=\"completion\"} 34"));
        assert!(text.contains("kiln_queue_depth 1"));
    }
}

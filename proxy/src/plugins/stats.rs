//! Per-plugin call counts and time, rendered as OpenMetrics families (see
//! `crate::metrics`), with call durations in the proxy-work buckets.
//!
//! Kept per plugin name in the runtime (like the counters), so the figures
//! survive hot reloads.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::metrics::{HistogramFamily, PROXY_BUCKETS};

/// How a call ended, as a metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallOutcome {
    Allow,
    Modify,
    Reject,
    /// Trap, deadline, memory cap or an invalid decision.
    Failure,
}

impl CallOutcome {
    const ALL: [CallOutcome; 4] = [
        CallOutcome::Allow,
        CallOutcome::Modify,
        CallOutcome::Reject,
        CallOutcome::Failure,
    ];

    pub(crate) fn label(self) -> &'static str {
        match self {
            CallOutcome::Allow => "allow",
            CallOutcome::Modify => "modify",
            CallOutcome::Reject => "reject",
            CallOutcome::Failure => "failure",
        }
    }
}

/// What a response-hook call did, as a metric label: one per chunk call,
/// and a `failure` for a failed completion call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChunkOutcome {
    /// `pass` or `pass-rest`.
    Pass,
    Rewrite,
    /// The plugin ended the answer at this chunk.
    End,
    /// The call failed (trap, deadline, memory cap).
    Failure,
}

impl ChunkOutcome {
    const ALL: [ChunkOutcome; 4] = [
        ChunkOutcome::Pass,
        ChunkOutcome::Rewrite,
        ChunkOutcome::End,
        ChunkOutcome::Failure,
    ];

    pub(crate) fn label(self) -> &'static str {
        match self {
            ChunkOutcome::Pass => "pass",
            ChunkOutcome::Rewrite => "rewrite",
            ChunkOutcome::End => "end",
            ChunkOutcome::Failure => "failure",
        }
    }
}

pub struct PluginStats {
    calls: [AtomicU64; 4],
    /// Response-hook calls, by [`ChunkOutcome`].
    chunks: [AtomicU64; 4],
    nanos: AtomicU64,
    /// Each request-hook call.
    request_seconds: Histogram,
    /// The response hooks' time on each answer.
    response_seconds: Histogram,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginHook {
    plugin: String,
    hook: &'static str,
}

impl PluginStats {
    pub fn record(&self, outcome: CallOutcome, took: Duration) {
        self.calls[outcome as usize].fetch_add(1, Ordering::Relaxed);
        self.request_seconds.observe(took.as_secs_f64());
        self.add_time(took);
    }

    pub fn calls(&self, outcome: CallOutcome) -> u64 {
        self.calls[outcome as usize].load(Ordering::Relaxed)
    }

    /// Response-hook calls, counted by [`ChunkOutcome`] (indexes), and the
    /// time they took.
    pub fn record_response(&self, counts: [u64; 4], took: Duration) {
        for (slot, n) in self.chunks.iter().zip(counts) {
            if n > 0 {
                slot.fetch_add(n, Ordering::Relaxed);
            }
        }
        self.response_seconds.observe(took.as_secs_f64());
        self.add_time(took);
    }

    fn add_time(&self, took: Duration) {
        self.nanos.fetch_add(
            took.as_nanos().min(u64::MAX as u128) as u64,
            Ordering::Relaxed,
        );
    }

    pub fn chunks(&self, outcome: ChunkOutcome) -> u64 {
        self.chunks[outcome as usize].load(Ordering::Relaxed)
    }
}

pub struct StatsStore {
    by_plugin: Mutex<BTreeMap<String, Arc<PluginStats>>>,
    seconds: HistogramFamily<PluginHook>,
}

impl Default for StatsStore {
    fn default() -> Self {
        StatsStore {
            by_plugin: Mutex::default(),
            seconds: Family::new_with_constructor(|| Histogram::new(PROXY_BUCKETS)),
        }
    }
}

impl StatsStore {
    pub fn for_plugin(&self, name: &str) -> Arc<PluginStats> {
        let mut map = self.by_plugin.lock().unwrap_or_else(|p| p.into_inner());
        let histogram = |hook| {
            let labels = PluginHook {
                plugin: name.to_owned(),
                hook,
            };
            self.seconds.get_or_create(&labels).clone()
        };
        map.entry(name.to_owned())
            .or_insert_with(|| {
                Arc::new(PluginStats {
                    calls: Default::default(),
                    chunks: Default::default(),
                    nanos: AtomicU64::new(0),
                    request_seconds: histogram("request"),
                    response_seconds: histogram("response"),
                })
            })
            .clone()
    }

    /// Appends the metrics in Prometheus' text format. Plugin names come from
    /// the operator's config; quotes and backslashes are escaped anyway.
    pub fn render(&self, out: &mut String) {
        let map = self.by_plugin.lock().unwrap_or_else(|p| p.into_inner());
        if map.is_empty() {
            return;
        }
        let label = |name: &str| {
            name.replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n")
        };
        let _ = writeln!(
            out,
            "# HELP kiln_plugin_calls Request-hook calls, by plugin and outcome."
        );
        let _ = writeln!(out, "# TYPE kiln_plugin_calls counter");
        for (name, stats) in map.iter() {
            for outcome in CallOutcome::ALL {
                let _ = writeln!(
                    out,
                    "kiln_plugin_calls_total{{plugin=\"{}\",outcome=\"{}\"}} {}",
                    label(name),
                    outcome.label(),
                    stats.calls(outcome)
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP kiln_plugin_response_calls Response-hook calls (one per chunk, plus failed completion calls), by plugin and outcome."
        );
        let _ = writeln!(out, "# TYPE kiln_plugin_response_calls counter");
        for (name, stats) in map.iter() {
            for outcome in ChunkOutcome::ALL {
                let _ = writeln!(
                    out,
                    "kiln_plugin_response_calls_total{{plugin=\"{}\",outcome=\"{}\"}} {}",
                    label(name),
                    outcome.label(),
                    stats.chunks(outcome)
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP kiln_plugin_call_seconds Time spent in plugin calls (request and response hooks), instantiation included."
        );
        let _ = writeln!(out, "# TYPE kiln_plugin_call_seconds counter");
        for (name, stats) in map.iter() {
            let secs = stats.nanos.load(Ordering::Relaxed) as f64 / 1e9;
            let _ = writeln!(
                out,
                "kiln_plugin_call_seconds_total{{plugin=\"{}\"}} {secs}",
                label(name)
            );
        }
        let mut registry = Registry::default();
        registry.register(
            "kiln_plugin_call_duration_seconds",
            "Plugin call time by plugin and hook: each request-hook call, and the response hooks' time on each answer (instantiation included).",
            self.seconds.clone(),
        );
        let _ = prometheus_client::encoding::text::encode_registry(out, &registry);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counts_per_plugin_and_outcome() {
        let store = StatsStore::default();
        store
            .for_plugin("api-key")
            .record(CallOutcome::Reject, Duration::from_micros(30));
        store
            .for_plugin("api-key")
            .record(CallOutcome::Modify, Duration::from_micros(20));
        store
            .for_plugin("we\"ird")
            .record(CallOutcome::Failure, Duration::from_millis(50));
        store
            .for_plugin("output-guard")
            .record_response([0, 3, 0, 0], Duration::from_micros(5));
        let mut out = String::new();
        store.render(&mut out);
        assert!(
            out.contains("kiln_plugin_calls_total{plugin=\"api-key\",outcome=\"reject\"} 1"),
            "{out}"
        );
        assert!(
            out.contains("kiln_plugin_calls_total{plugin=\"api-key\",outcome=\"allow\"} 0"),
            "{out}"
        );
        assert!(
            out.contains("kiln_plugin_call_seconds_total{plugin=\"api-key\"} 0.00005"),
            "{out}"
        );
        assert!(
            out.contains("kiln_plugin_call_duration_seconds_bucket{le=\"0.000025\",plugin=\"api-key\",hook=\"request\"} 1"),
            "{out}"
        );
        assert!(
            out.contains("plugin=\"we\\\"ird\",outcome=\"failure\"} 1"),
            "{out}"
        );
        assert!(
            out.contains(
                "kiln_plugin_response_calls_total{plugin=\"output-guard\",outcome=\"rewrite\"} 3"
            ),
            "{out}"
        );
    }

    #[test]
    fn renders_nothing_without_plugins() {
        let mut out = String::new();
        StatsStore::default().render(&mut out);
        assert!(out.is_empty());
    }
}

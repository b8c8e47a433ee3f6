//! Counters that let tests observe what the emulated server went through.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Live counters, shared with the server.
#[derive(Default, Debug)]
pub struct Stats {
    requests: AtomicU64,
    in_flight: AtomicU64,
    waiting: AtomicU64,
    max_in_flight: AtomicU64,
    max_waiting: AtomicU64,
    completed: AtomicU64,
    cancelled: AtomicU64,
    aborted: AtomicU64,
    host_rejections: AtomicU64,
    last_headers: Mutex<Vec<(String, String)>>,
    crash: tokio::sync::Notify,
}

/// A copy of the counters at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StatsSnapshot {
    /// Requests that reached a handler (after the Host check).
    pub requests: u64,
    /// Generations holding a parallel slot now.
    pub in_flight: u64,
    /// Generations waiting for a slot now.
    pub waiting: u64,
    pub max_in_flight: u64,
    pub max_waiting: u64,
    /// Generations that ran to their last chunk.
    pub completed: u64,
    /// Generations stopped because the client went away (while waiting or streaming).
    pub cancelled: u64,
    /// Streams cut on purpose by `x-emulator-fail-after`.
    pub aborted: u64,
    /// Requests refused by the Host check.
    pub host_rejections: u64,
    /// Headers of the last request that passed the Host check, names lower-cased.
    pub last_headers: Vec<(String, String)>,
}

impl StatsSnapshot {
    /// The value of a header of the last request, if it was sent.
    pub fn last_header(&self, name: &str) -> Option<&str> {
        self.last_headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

pub(crate) enum Counter {
    Requests,
    Completed,
    Cancelled,
    Aborted,
    HostRejections,
}

impl Stats {
    /// Resolves once `POST /emulator/crash` was called.
    pub async fn crash_requested(&self) {
        self.crash.notified().await
    }

    pub(crate) fn request_crash(&self) {
        self.crash.notify_one();
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        let get = |a: &AtomicU64| a.load(Ordering::SeqCst);
        StatsSnapshot {
            requests: get(&self.requests),
            in_flight: get(&self.in_flight),
            waiting: get(&self.waiting),
            max_in_flight: get(&self.max_in_flight),
            max_waiting: get(&self.max_waiting),
            completed: get(&self.completed),
            cancelled: get(&self.cancelled),
            aborted: get(&self.aborted),
            host_rejections: get(&self.host_rejections),
            last_headers: self
                .last_headers
                .lock()
                .map(|h| h.clone())
                .unwrap_or_default(),
        }
    }

    pub(crate) fn bump(&self, counter: Counter) {
        let a = match counter {
            Counter::Requests => &self.requests,
            Counter::Completed => &self.completed,
            Counter::Cancelled => &self.cancelled,
            Counter::Aborted => &self.aborted,
            Counter::HostRejections => &self.host_rejections,
        };
        a.fetch_add(1, Ordering::SeqCst);
    }

    pub(crate) fn record_headers(&self, headers: Vec<(String, String)>) {
        if let Ok(mut h) = self.last_headers.lock() {
            *h = headers;
        }
    }

    pub(crate) fn enter_waiting(&self) {
        let now = self.waiting.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_waiting.fetch_max(now, Ordering::SeqCst);
    }

    pub(crate) fn leave_waiting(&self) {
        self.waiting.fetch_sub(1, Ordering::SeqCst);
    }

    pub(crate) fn enter_in_flight(&self) {
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
    }

    pub(crate) fn leave_in_flight(&self) {
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

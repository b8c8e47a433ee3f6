//! What the host offers: logging, clocks, counters and the plugin's config.
//!
//! These call into kiln-proxy, so they only work inside a loaded plugin; in a
//! native `cargo test` they panic. Write logic that needs counters against the
//! [`Counters`] trait and test it with [`MemoryCounters`].

use crate::bindings::kiln::filter::host as wit;
use std::collections::HashMap;

pub use wit::LogLevel;

/// Writes a line to the proxy's log, tagged with the plugin's name.
pub fn log(level: LogLevel, message: &str) {
    wit::log(level, message)
}

pub fn info(message: &str) {
    log(LogLevel::Info, message)
}

pub fn warn(message: &str) {
    log(LogLevel::Warn, message)
}

/// Nanoseconds on a monotonic clock (arbitrary origin).
pub fn monotonic_now_ns() -> u64 {
    wit::monotonic_now()
}

/// Milliseconds since the Unix epoch.
pub fn wall_now_ms() -> u64 {
    wit::wall_now()
}

/// The plugin's config as JSON ("{}" when there is none).
pub fn config() -> String {
    wit::config()
}

/// A fixed window's count after an addition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WindowCount {
    /// Total of the current window, this addition included.
    pub total: u64,
    /// Milliseconds until the window ends.
    pub resets_in_ms: u64,
}

/// Fixed-window counters that outlive a request.
pub trait Counters {
    /// Adds `delta` to `key`'s count in the current window of `window_ms`
    /// (aligned to the wall clock) and returns the new count.
    fn add(&mut self, key: &str, window_ms: u64, delta: u64) -> WindowCount;
}

/// The host's counters: private to the plugin, shared by all its requests.
pub struct HostCounters;

impl Counters for HostCounters {
    fn add(&mut self, key: &str, window_ms: u64, delta: u64) -> WindowCount {
        let c = wit::counter_add(key, window_ms, delta);
        WindowCount {
            total: c.total,
            resets_in_ms: c.resets_in_ms,
        }
    }
}

/// In-memory counters with a clock you move by hand, with the host's window
/// rules; for native tests of plugin logic.
#[derive(Default)]
pub struct MemoryCounters {
    /// The wall clock, in milliseconds since the epoch.
    pub now_ms: u64,
    counts: HashMap<(String, u64, u64), u64>,
}

impl Counters for MemoryCounters {
    fn add(&mut self, key: &str, window_ms: u64, delta: u64) -> WindowCount {
        let window_ms = window_ms.max(1);
        let window = self.now_ms / window_ms;
        let total = self
            .counts
            .entry((key.to_owned(), window_ms, window))
            .or_default();
        *total = total.saturating_add(delta);
        WindowCount {
            total: *total,
            resets_in_ms: (window + 1) * window_ms - self.now_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_counters_reset_at_window_boundaries() {
        let mut c = MemoryCounters {
            now_ms: 1_500,
            ..Default::default()
        };
        assert_eq!(
            c.add("k", 1_000, 1),
            WindowCount {
                total: 1,
                resets_in_ms: 500
            }
        );
        assert_eq!(c.add("k", 1_000, 2).total, 3);
        assert_eq!(c.add("other", 1_000, 1).total, 1);
        c.now_ms = 2_000;
        assert_eq!(
            c.add("k", 1_000, 0),
            WindowCount {
                total: 0,
                resets_in_ms: 1_000
            }
        );
    }
}

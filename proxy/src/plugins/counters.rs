//! The host's fixed-window counters (`counter-add` in the WIT), the state
//! that lets a rate-limit plugin remember callers across requests.
//!
//! Counters are per plugin name and live in the runtime, not in a chain, so
//! a hot reload does not hand every caller a fresh budget.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Above this many live entries, ended windows are swept on the next add.
/// Keys come from client input (caller identities), so the map must not grow
/// without bound; only windows that have not ended survive a sweep.
const SWEEP_ABOVE: usize = 50_000;

#[derive(Default)]
pub struct CounterStore {
    by_plugin: Mutex<HashMap<String, Arc<PluginCounters>>>,
}

impl CounterStore {
    /// The counters of plugin `name`, created on first use.
    pub fn for_plugin(&self, name: &str) -> Arc<PluginCounters> {
        let mut map = self.by_plugin.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(name.to_owned()).or_default().clone()
    }
}

#[derive(Default)]
pub struct PluginCounters {
    /// (key, window length) -> (window index, total)
    windows: Mutex<HashMap<(String, u64), (u64, u64)>>,
}

impl PluginCounters {
    /// Adds `delta` to `key`'s window of `window_ms` containing `now_ms`;
    /// returns (total, milliseconds until the window ends).
    pub fn add(&self, key: &str, window_ms: u64, delta: u64, now_ms: u64) -> (u64, u64) {
        let window_ms = window_ms.max(1);
        let index = now_ms / window_ms;
        let resets_in = (index + 1) * window_ms - now_ms;
        // A poisoned lock only means another call panicked mid-update of a
        // plain integer map; the data is still usable.
        let mut map = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() > SWEEP_ABOVE {
            map.retain(|(_, len), (idx, _)| *idx >= now_ms / *len);
        }
        let entry = map.entry((key.to_owned(), window_ms)).or_insert((index, 0));
        if entry.0 != index {
            *entry = (index, 0);
        }
        entry.1 = entry.1.saturating_add(delta);
        (entry.1, resets_in)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_reset_when_the_window_ends() {
        let c = PluginCounters::default();
        assert_eq!(c.add("alice", 1000, 1, 10_100), (1, 900));
        assert_eq!(c.add("alice", 1000, 1, 10_999), (2, 1));
        assert_eq!(c.add("bob", 1000, 1, 10_999), (1, 1));
        assert_eq!(c.add("alice", 1000, 1, 11_000), (1, 1000));
        assert_eq!(
            c.add("alice", 0, 0, 5),
            (0, 1),
            "a zero window is one millisecond"
        );
    }

    #[test]
    fn plugins_do_not_share_counters() {
        let store = CounterStore::default();
        store.for_plugin("a").add("k", 1000, 5, 0);
        assert_eq!(store.for_plugin("b").add("k", 1000, 0, 0).0, 0);
        assert_eq!(store.for_plugin("a").add("k", 1000, 0, 0).0, 5);
    }

    #[test]
    fn ended_windows_are_swept_when_the_map_is_large() {
        let c = PluginCounters::default();
        for i in 0..=SWEEP_ABOVE {
            c.add(&format!("caller-{i}"), 1000, 1, 0);
        }
        c.add("late", 1000, 1, 5_000);
        let len = c.windows.lock().unwrap().len();
        assert_eq!(len, 1, "only the live window survives");
    }
}

//! In-process fixed-window counters of one plugin: the default backend, and
//! the fallback while a shared backend is unreachable (`fail_open`).
//!
//! Keys come from client input (caller identities, forwarded addresses), so
//! the map is bounded: at most `max_keys` entries per plugin, the least
//! recently used one forgotten first, each key at most [`MAX_KEY_BYTES`]
//! (see [`super::bounded_key`]). An add is O(1) whatever the map holds: a
//! hash lookup and a move to the front of the recency list.

use std::num::NonZeroUsize;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use lru::LruCache;

#[cfg(doc)]
use super::MAX_KEY_BYTES;

/// (key, window length)
type WindowId = (Box<str>, u64);
/// (window index, total)
type WindowCount = (u64, u64);

pub struct LocalWindows {
    map: Mutex<LruCache<WindowId, WindowCount>>,
    max_keys: usize,
    evictions: AtomicU64,
}

impl LocalWindows {
    pub fn new(max_keys: usize) -> LocalWindows {
        LocalWindows {
            // Unbounded and trimmed by hand: `LruCache::new(cap)` would
            // allocate room for `max_keys` entries up front, per plugin.
            map: Mutex::new(LruCache::unbounded()),
            max_keys: NonZeroUsize::new(max_keys).map_or(1, NonZeroUsize::get),
            evictions: AtomicU64::new(0),
        }
    }

    /// Adds `delta` to `key`'s window number `index` of `window_ms`; returns
    /// the window's total. A key seen in an older window starts again at 0.
    pub fn add(&self, key: &str, window_ms: u64, index: u64, delta: u64) -> u64 {
        // A poisoned lock only means another call panicked mid-update of a
        // plain integer map; the data is still usable.
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let id = (Box::<str>::from(key), window_ms);
        if let Some(entry) = map.get_mut(&id) {
            if entry.0 != index {
                *entry = (index, 0);
            }
            entry.1 = entry.1.saturating_add(delta);
            return entry.1;
        }
        map.push(id, (index, delta));
        if map.len() > self.max_keys {
            map.pop_lru();
            self.evictions.fetch_add(1, Ordering::Relaxed);
        }
        delta
    }

    pub fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Bytes held by the keys (for the memory-bound test).
    #[cfg(test)]
    pub fn key_bytes(&self) -> usize {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.iter().map(|((k, _), _)| k.len()).sum()
    }

    pub fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_reset_in_a_new_window() {
        let c = LocalWindows::new(10);
        assert_eq!(c.add("alice", 1000, 10, 1), 1);
        assert_eq!(c.add("alice", 1000, 10, 1), 2);
        assert_eq!(c.add("bob", 1000, 10, 1), 1);
        assert_eq!(c.add("alice", 1000, 11, 1), 1);
        assert_eq!(
            c.add("alice", 60_000, 0, 5),
            5,
            "another window length is another counter"
        );
    }

    #[test]
    fn the_least_recently_used_key_is_forgotten_first() {
        let c = LocalWindows::new(2);
        c.add("a", 1000, 0, 1);
        c.add("b", 1000, 0, 1);
        c.add("a", 1000, 0, 1); // a is now the most recent
        c.add("c", 1000, 0, 1); // evicts b
        assert_eq!(c.len(), 2);
        assert_eq!(c.evictions(), 1);
        assert_eq!(c.add("a", 1000, 0, 0), 2, "a survived");
        assert_eq!(c.add("b", 1000, 0, 0), 0, "b was forgotten");
    }
}

//! The host's fixed-window counters (`counter-add` in the WIT), the state
//! that lets a rate-limit or token-budget plugin remember callers across
//! requests.
//!
//! Counters are per plugin name and live in the runtime, not in a chain, so
//! a hot reload does not hand every caller a fresh budget. Where they count
//! is the `[counters]` config: in process (`local`), or on a shared Redis
//! (`redis`, see [`redis`]) so that N instances share one count. With Redis
//! unreachable, `fail_open` counts in process (per-instance limits) and
//! `fail_closed` fails the plugin's call.

mod local;
mod redis;

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

use crate::counters_config::{CounterBackend, CounterFailure, CountersConfig};
use local::LocalWindows;
use redis::RedisCounters;

/// Longest key kept as given; a longer one is replaced by its SHA-256
/// (`sha256:<hex>`, 71 bytes), so a caller-controlled key (a 200 KB
/// `X-Forwarded-For`) costs the same memory as a short one and two long keys
/// still get two counters.
pub const MAX_KEY_BYTES: usize = 128;

pub fn bounded_key(key: &str) -> Cow<'_, str> {
    if key.len() <= MAX_KEY_BYTES {
        return Cow::Borrowed(key);
    }
    Cow::Owned(format!("sha256:{}", hex::encode(Sha256::digest(key))))
}

/// The counters of every plugin, and the shared backend they count on.
pub struct CounterStore {
    by_plugin: Mutex<HashMap<String, Arc<PluginCounters>>>,
    shared: Option<Arc<RedisCounters>>,
    max_keys: usize,
    /// Adds counted in process because the shared backend was unavailable.
    fallbacks: Arc<AtomicU64>,
}

impl Default for CounterStore {
    fn default() -> Self {
        CounterStore {
            by_plugin: Mutex::default(),
            shared: None,
            max_keys: CountersConfig::default().max_keys,
            fallbacks: Arc::default(),
        }
    }
}

impl CounterStore {
    /// The store `config` asks for; `namespace` prefixes every shared key.
    pub fn new(config: &CountersConfig, namespace: &str) -> Result<CounterStore, String> {
        let shared = match config.backend() {
            CounterBackend::Local => None,
            CounterBackend::Redis => Some(Arc::new(RedisCounters::new(config, namespace)?)),
        };
        Ok(CounterStore {
            shared,
            max_keys: config.max_keys,
            ..CounterStore::default()
        })
    }

    /// The counters of plugin `name`, created on first use.
    pub fn for_plugin(&self, name: &str) -> Arc<PluginCounters> {
        let mut map = self.by_plugin.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(name.to_owned())
            .or_insert_with(|| {
                Arc::new(PluginCounters {
                    name: name.to_owned(),
                    local: LocalWindows::new(self.max_keys),
                    shared: self.shared.clone(),
                    fallbacks: self.fallbacks.clone(),
                })
            })
            .clone()
    }

    /// Appends the counters' metrics in Prometheus' text format.
    pub fn render_metrics(&self, out: &mut String) {
        let map = self.by_plugin.lock().unwrap_or_else(|p| p.into_inner());
        if map.is_empty() && self.shared.is_none() {
            return;
        }
        let label = |name: &str| name.replace('\\', "\\\\").replace('"', "\\\"");
        let _ = writeln!(
            out,
            "# HELP kiln_counter_local_keys Keys held in process, by plugin (at most [counters] max_keys each).\n# TYPE kiln_counter_local_keys gauge"
        );
        for (name, c) in map.iter() {
            let _ = writeln!(
                out,
                "kiln_counter_local_keys{{plugin=\"{}\"}} {}",
                label(name),
                c.local.len()
            );
        }
        let _ = writeln!(
            out,
            "# HELP kiln_counter_local_evictions Keys forgotten in process to stay within [counters] max_keys.\n# TYPE kiln_counter_local_evictions counter"
        );
        for (name, c) in map.iter() {
            let _ = writeln!(
                out,
                "kiln_counter_local_evictions_total{{plugin=\"{}\"}} {}",
                label(name),
                c.local.evictions()
            );
        }
        let Some(shared) = &self.shared else { return };
        shared.latency.render(
            out,
            "kiln_counter_backend_seconds",
            "Round trip of one counter-add to the shared backend (Redis), timeouts included.",
        );
        let _ = writeln!(
            out,
            "# HELP kiln_counter_backend_errors Counter-adds the shared backend did not answer (unreachable, timeout, error).\n# TYPE kiln_counter_backend_errors counter\nkiln_counter_backend_errors_total {}",
            shared.errors.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP kiln_counter_fallbacks Counter-adds counted in process because the shared backend was unavailable (fail_open).\n# TYPE kiln_counter_fallbacks counter\nkiln_counter_fallbacks_total {}",
            self.fallbacks.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP kiln_counter_backend_up 1 while the shared backend answers, 0 during an outage.\n# TYPE kiln_counter_backend_up gauge\nkiln_counter_backend_up {}",
            u8::from(shared.is_up())
        );
    }
}

/// The answer to one `counter-add`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Count {
    pub total: u64,
    pub resets_in_ms: u64,
}

/// `fail_closed` and the shared backend did not answer: the plugin's call
/// fails with this message.
#[derive(Debug)]
pub struct Unavailable(pub String);

pub struct PluginCounters {
    name: String,
    local: LocalWindows,
    shared: Option<Arc<RedisCounters>>,
    fallbacks: Arc<AtomicU64>,
}

impl PluginCounters {
    /// Adds `delta` to `key`'s window of `window_ms` containing `now_ms`.
    ///
    /// `local_from_now` belongs to one plugin call (one store): once an add
    /// of that call was counted in process, the call's later adds are too. A
    /// plugin may derive a delta from what it read (rate-limit advances a
    /// timestamp by `new - stored`): a delta computed from an in-process read
    /// and added on Redis would corrupt the shared count.
    pub fn add(
        &self,
        key: &str,
        window_ms: u64,
        delta: u64,
        now_ms: u64,
        local_from_now: &mut bool,
    ) -> Result<Count, Unavailable> {
        let window_ms = window_ms.max(1);
        let index = now_ms / window_ms;
        let resets_in_ms = (index + 1) * window_ms - now_ms;
        let key = bounded_key(key);
        if let Some(shared) = &self.shared {
            let result = if *local_from_now {
                Err(redis::BackendError(
                    "an earlier add of this call was counted in process".into(),
                ))
            } else {
                shared.add(&self.name, &key, window_ms, index, delta, now_ms)
            };
            match result {
                Ok(total) => {
                    return Ok(Count {
                        total,
                        resets_in_ms,
                    });
                }
                Err(e) => match shared.policy {
                    CounterFailure::FailOpen => {
                        *local_from_now = true;
                        self.fallbacks.fetch_add(1, Ordering::Relaxed);
                    }
                    CounterFailure::FailClosed => {
                        return Err(Unavailable(format!(
                            "the shared counters are unavailable ({}) and [counters] on_failure = \"fail_closed\"",
                            e.0
                        )));
                    }
                },
            }
        }
        let total = self.local.add(&key, window_ms, index, delta);
        Ok(Count {
            total,
            resets_in_ms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn add(c: &PluginCounters, key: &str, window_ms: u64, delta: u64, now: u64) -> (u64, u64) {
        let n = c.add(key, window_ms, delta, now, &mut false).unwrap();
        (n.total, n.resets_in_ms)
    }

    #[test]
    fn counts_reset_when_the_window_ends() {
        let store = CounterStore::default();
        let c = store.for_plugin("p");
        assert_eq!(add(&c, "alice", 1000, 1, 10_100), (1, 900));
        assert_eq!(add(&c, "alice", 1000, 1, 10_999), (2, 1));
        assert_eq!(add(&c, "bob", 1000, 1, 10_999), (1, 1));
        assert_eq!(add(&c, "alice", 1000, 1, 11_000), (1, 1000));
        assert_eq!(
            add(&c, "alice", 0, 0, 5),
            (0, 1),
            "a zero window is one millisecond"
        );
    }

    #[test]
    fn plugins_do_not_share_counters() {
        let store = CounterStore::default();
        add(&store.for_plugin("a"), "k", 1000, 5, 0);
        assert_eq!(add(&store.for_plugin("b"), "k", 1000, 0, 0).0, 0);
        assert_eq!(add(&store.for_plugin("a"), "k", 1000, 0, 0).0, 5);
    }

    #[test]
    fn long_keys_are_hashed_and_stay_distinct() {
        let a = "a".repeat(10_000);
        let b = format!("{}b", "a".repeat(9_999));
        assert_eq!(bounded_key("caller:alice"), "caller:alice");
        assert_eq!(bounded_key(&a).len(), 71);
        assert_ne!(bounded_key(&a), bounded_key(&b));
        let store = CounterStore::default();
        let c = store.for_plugin("p");
        add(&c, &a, 1000, 3, 0);
        assert_eq!(add(&c, &b, 1000, 1, 0).0, 1);
        assert_eq!(add(&c, &a, 1000, 0, 0).0, 3);
    }

    /// Issue 13 item 5: 1,000 callers with unique huge keys (as forwarded
    /// addresses) in a window that never ends (rate-limit's). Memory stays
    /// within the key cap and the hashed key size.
    #[test]
    fn unique_huge_keys_do_not_grow_memory() {
        let config = CountersConfig {
            max_keys: 500,
            ..CountersConfig::default()
        };
        let store = CounterStore::new(&config, "kiln").unwrap();
        let c = store.for_plugin("rate-limit");
        // 32 KB rather than 200 KB: hashing is O(key) and slow in a debug
        // build; the map's cost does not depend on the key's length.
        let huge = "9".repeat(32 << 10);
        for i in 0..1000 {
            let key = format!("ip:{i}-{huge}");
            // rate-limit's two calls per request: read, then advance.
            add(&c, &key, FOREVER, 0, 1_000);
            add(&c, &key, FOREVER, 1_060, 1_000);
        }
        assert_eq!(c.local.len(), 500, "at most max_keys keys");
        assert!(
            c.local.key_bytes() <= 500 * 71,
            "keys are hashed: {} bytes",
            c.local.key_bytes()
        );
        assert_eq!(c.local.evictions(), 500);
        let mut out = String::new();
        store.render_metrics(&mut out);
        assert!(
            out.contains("kiln_counter_local_keys{plugin=\"rate-limit\"} 500"),
            "{out}"
        );
    }

    const FOREVER: u64 = 1 << 62;

    /// fail_open: an add that could not reach Redis counts in process, and
    /// so does every later add of the same call.
    #[test]
    fn once_a_call_counts_in_process_it_stays_there() {
        let config = CountersConfig {
            url: Some("redis://127.0.0.1:1".into()), // nothing listens on port 1
            ..CountersConfig::default()
        };
        let store = CounterStore::new(&config, "kiln").unwrap();
        let c = store.for_plugin("rate-limit");
        let mut local = false;
        assert_eq!(c.add("k", FOREVER, 5, 0, &mut local).unwrap().total, 5);
        assert!(local, "the call fell back");
        assert_eq!(c.add("k", FOREVER, 1, 0, &mut local).unwrap().total, 6);
        assert_eq!(store.fallbacks.load(Ordering::Relaxed), 2);
    }

    /// A full map (the default 100,000 keys) costs an add no more than an
    /// empty one: no sweep, no scan. (A scan of 100,000 entries per add
    /// would take over 1 s for these 2,000 adds.)
    #[test]
    fn adds_stay_fast_when_the_map_is_full() {
        let store = CounterStore::default();
        let c = store.for_plugin("rate-limit");
        for i in 0..100_000 {
            add(&c, &format!("ip:10.0.{i}"), FOREVER, 1, 0);
        }
        let started = Instant::now();
        for i in 0..1000 {
            add(&c, &format!("ip:new-{i}"), FOREVER, 1, 0); // evicts one
            add(&c, "ip:new-0", FOREVER, 1, 0); // a hit
        }
        let took = started.elapsed();
        assert_eq!(c.local.len(), 100_000);
        assert!(
            took < std::time::Duration::from_millis(500),
            "2,000 adds took {took:?}"
        );
    }
}

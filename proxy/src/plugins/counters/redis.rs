//! Fixed-window counters on a shared Redis (Memorystore for Redis / Valkey),
//! so N proxies count one window together, exactly.
//!
//! One window of one key is one Redis key; an add is one Lua script run
//! (INCRBY, then PEXPIREAT at the window's end), atomic on the server, one
//! round trip (EVALSHA). Windows are aligned to the wall clock of the
//! instance that counts, as in process; instances on NTP agree to a few ms.
//!
//! The client is redis-rs's blocking connection in an r2d2 pool, not its
//! async one: `counter-add` is a synchronous host call made from plugin code,
//! which runs on a thread that may block (the request hook runs under
//! `block_in_place`, the response hooks inside the response stream's poll),
//! so a blocking round trip bounded by `timeout_ms` is what the call site
//! can use without re-entering the tokio runtime from inside it. The pool
//! gives each concurrent call its own connection.
//!
//! Outages: a refused or dropped connection (or a failed TLS handshake or
//! AUTH), or [`FAILURES_FOR_OUTAGE`] slow calls in a row, mark the backend
//! down, log one warning and open a fresh pool (connections to a restarted
//! server are dead); while down, one call per [`RETRY_EVERY`] tries Redis
//! again and the others do not wait for it. The first success logs the
//! recovery. A single slow call fails alone (the caller's policy applies to
//! it) without declaring an outage.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use redis::{ConnectionLike, IntoConnectionInfo};

use crate::counters_config::{CounterFailure, CountersConfig, redact_url};
use crate::metrics::LatencyHistogram;

/// INCRBY + PEXPIREAT as one server-side step: no instance can read a total
/// that another's add is not part of, and no key outlives its window.
const ADD_SCRIPT: &str = r"
local total = redis.call('INCRBY', KEYS[1], ARGV[1])
redis.call('PEXPIREAT', KEYS[1], ARGV[2])
return total
";

/// While Redis is down, how often one call tries it again.
pub const RETRY_EVERY: Duration = Duration::from_millis(500);

/// Failed calls in a row that make an outage when Redis itself still
/// answers connections: one slow answer under load is not an outage (that
/// call alone is counted in process, or fails with `fail_closed`).
const FAILURES_FOR_OUTAGE: u32 = 3;

/// An outage that starts this soon after the last one ended is the same
/// outage, as far as the log is concerned: a flapping link or an overloaded
/// server logs once, not once per flap.
const SAME_OUTAGE_WITHIN: Duration = Duration::from_secs(60);

/// A key not touched for this long expires even if its window is longer
/// (rate-limit's window never ends): Redis holds only live callers.
const MAX_IDLE_MS: u64 = 31 * 24 * 3600 * 1000;

pub struct RedisCounters {
    client: redis::Client,
    pool: ArcSwap<r2d2::Pool<Manager>>,
    script: redis::Script,
    /// `kiln:<namespace>:`, escaped.
    prefix: String,
    timeout: Duration,
    pool_size: u32,
    pub policy: CounterFailure,
    /// Shown in logs: the URL without its password.
    shown_url: String,
    down: AtomicBool,
    outage: Mutex<Outage>,
    pub latency: LatencyHistogram,
    pub errors: AtomicU64,
    failures_in_a_row: AtomicU32,
}

/// How a call failed.
enum Failure {
    /// Redis refused or dropped the connection, or TLS/AUTH failed: an
    /// outage at once.
    Unreachable(String),
    /// No answer (or no free connection) within the timeout.
    Slow(String),
}

#[derive(Default)]
struct Outage {
    since: Option<Instant>,
    retry_at: Option<Instant>,
    probing: bool,
    /// When the last outage ended, and whether the current one was logged.
    ended: Option<Instant>,
    announced: bool,
}

/// Why an add did not reach Redis.
#[derive(Debug, Clone)]
pub struct BackendError(pub String);

impl RedisCounters {
    /// Checks the settings and prepares the pool; does not connect, so a
    /// proxy starts (and, with `fail_open`, serves) while Redis is down.
    pub fn new(config: &CountersConfig, namespace: &str) -> Result<RedisCounters, String> {
        let url = config.url.as_deref().unwrap_or_default();
        let shown_url = redact_url(url);
        let mut info = url
            .into_connection_info()
            .map_err(|e| format!("[counters] url {shown_url}: {e}"))?;
        if let Some(password) = &config.password {
            let settings = info.redis_settings().clone().set_password(password);
            info = info.set_redis_settings(settings);
        }
        let client = if url.starts_with("rediss://") {
            // The workspace's one rustls provider; an error only means one
            // is already installed.
            let _ = rustls::crypto::ring::default_provider().install_default();
            let root_cert = match &config.ca_file {
                Some(path) => Some(std::fs::read(path).map_err(|e| {
                    format!(
                        "[counters] ca_file {}: {e}; give the PEM file of the CA that signed the Redis server's certificate",
                        path.display()
                    )
                })?),
                None => None,
            };
            redis::Client::build_with_tls(
                info,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert,
                },
            )
        } else {
            redis::Client::open(info)
        }
        .map_err(|e| format!("[counters] url {shown_url}: {e}"))?;
        let timeout = Duration::from_millis(config.timeout_ms);
        let counters = RedisCounters {
            pool: ArcSwap::from_pointee(build_pool(&client, timeout, config.pool_size)),
            client,
            script: redis::Script::new(ADD_SCRIPT),
            prefix: format!("kiln:{}:", escape(namespace)),
            timeout,
            pool_size: config.pool_size,
            policy: config.on_failure,
            shown_url,
            down: AtomicBool::new(false),
            outage: Mutex::new(Outage::default()),
            latency: LatencyHistogram::default(),
            errors: AtomicU64::new(0),
            failures_in_a_row: AtomicU32::new(0),
        };
        Ok(counters)
    }

    pub fn is_up(&self) -> bool {
        !self.down.load(Ordering::Relaxed)
    }

    /// Adds `delta` to window `index` of `window_ms` of `plugin`'s `key`;
    /// returns the window's total across every instance.
    pub fn add(
        &self,
        plugin: &str,
        key: &str,
        window_ms: u64,
        index: u64,
        delta: u64,
        now_ms: u64,
    ) -> Result<u64, BackendError> {
        if self.down.load(Ordering::Relaxed) && !self.may_retry() {
            return Err(BackendError(format!(
                "Redis at {} is unreachable",
                self.shown_url
            )));
        }
        let redis_key = format!(
            "{}{}:{window_ms}:{index}:{key}",
            self.prefix,
            escape(plugin)
        );
        let window_end = index.saturating_add(1).saturating_mul(window_ms);
        let expire_at = window_end.min(now_ms.saturating_add(MAX_IDLE_MS));
        let started = Instant::now();
        let result = self.run(&redis_key, delta.min(i64::MAX as u64), expire_at, started);
        self.latency.observe(started.elapsed());
        match result {
            Ok(total) => {
                self.failures_in_a_row.store(0, Ordering::Relaxed);
                if self.down.load(Ordering::Relaxed) {
                    self.recovered();
                }
                Ok(total)
            }
            Err(failure) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                let in_a_row = self.failures_in_a_row.fetch_add(1, Ordering::Relaxed) + 1;
                let (e, outage) = match failure {
                    Failure::Unreachable(e) => (e, true),
                    Failure::Slow(e) => (e, in_a_row >= FAILURES_FOR_OUTAGE),
                };
                if outage || self.down.load(Ordering::Relaxed) {
                    self.failed(&e);
                }
                Err(BackendError(format!("Redis at {}: {e}", self.shown_url)))
            }
        }
    }

    /// One script run within the timeout; once more on another connection
    /// when the first one turned out to be closed (e.g. by a server restart).
    fn run(&self, key: &str, delta: u64, expire_at: u64, started: Instant) -> Result<u64, Failure> {
        let pool = self.pool.load();
        let slow = || Failure::Slow(format!("no answer within {} ms", self.timeout.as_millis()));
        let mut dropped = None;
        for _ in 0..2 {
            let left = self
                .timeout
                .checked_sub(started.elapsed())
                .filter(|d| !d.is_zero())
                .ok_or_else(slow)?;
            let mut conn = pool.get_timeout(left).map_err(|e| match &dropped {
                Some(d) => Failure::Unreachable(format!("{d}")),
                // r2d2's error carries the last connect error only as text
                // (`…: Connection refused`); without one, every connection
                // was busy for the whole wait.
                None if e.to_string().contains("connection: ") => {
                    Failure::Unreachable(e.to_string())
                }
                None => Failure::Slow(format!(
                    "no free connection within {} ms (all {} in use; raise [counters] pool_size)",
                    self.timeout.as_millis(),
                    self.pool_size
                )),
            })?;
            // The socket's timeouts are what bound a blocking read or write.
            let _ = conn.set_read_timeout(Some(left));
            let _ = conn.set_write_timeout(Some(left));
            let result: redis::RedisResult<i64> = self
                .script
                .key(key)
                .arg(delta)
                .arg(expire_at)
                .invoke(&mut *conn);
            match result {
                Ok(total) => return Ok(total.max(0) as u64),
                Err(e) if e.is_timeout() => return Err(slow()),
                Err(e) if e.is_connection_dropped() || e.is_io_error() => dropped = Some(e),
                Err(e) => return Err(Failure::Unreachable(e.to_string())),
            }
        }
        Err(Failure::Unreachable(
            dropped.map(|e| e.to_string()).unwrap_or_default(),
        ))
    }

    /// While down: whether this call is the one that tries Redis again.
    fn may_retry(&self) -> bool {
        let mut o = self.outage.lock().unwrap_or_else(|p| p.into_inner());
        let due = o.retry_at.is_none_or(|at| Instant::now() >= at);
        if due && !o.probing {
            o.probing = true;
            return true;
        }
        false
    }

    fn failed(&self, error: &str) {
        let mut o = self.outage.lock().unwrap_or_else(|p| p.into_inner());
        o.probing = false;
        o.retry_at = Some(Instant::now() + RETRY_EVERY);
        if self.down.swap(true, Ordering::Relaxed) {
            return;
        }
        o.since = Some(Instant::now());
        // Connections to a server that went away are dead: start afresh.
        self.pool.store(Arc::new(build_pool(
            &self.client,
            self.timeout,
            self.pool_size,
        )));
        o.announced = o.ended.is_none_or(|t| t.elapsed() > SAME_OUTAGE_WITHIN);
        if !o.announced {
            tracing::debug!(url = %self.shown_url, error = %error, "shared counters unavailable again");
            return;
        }
        match self.policy {
            CounterFailure::FailOpen => tracing::warn!(
                url = %self.shown_url,
                error = %error,
                "shared counters unreachable: counting in this instance only (per-instance limits) until Redis answers again ([counters] on_failure = \"fail_open\")"
            ),
            CounterFailure::FailClosed => tracing::error!(
                url = %self.shown_url,
                error = %error,
                "shared counters unreachable: plugins that count fail until Redis answers again ([counters] on_failure = \"fail_closed\")"
            ),
        }
    }

    fn recovered(&self) {
        let mut o = self.outage.lock().unwrap_or_else(|p| p.into_inner());
        o.probing = false;
        o.retry_at = None;
        if !self.down.swap(false, Ordering::Relaxed) {
            return;
        }
        o.ended = Some(Instant::now());
        let down_for = o.since.take().map(|s| s.elapsed()).unwrap_or_default();
        if !o.announced {
            return;
        }
        tracing::info!(
            url = %self.shown_url,
            down_for_ms = down_for.as_millis() as u64,
            "shared counters reachable again: counting on Redis"
        );
    }
}

/// `:` separates the parts of a Redis key: escape it (and `%`) in the names
/// so namespace `a:b` + plugin `c` and namespace `a` + plugin `b:c` differ.
fn escape(name: &str) -> String {
    name.replace('%', "%25").replace(':', "%3A")
}

fn build_pool(client: &redis::Client, timeout: Duration, size: u32) -> r2d2::Pool<Manager> {
    r2d2::Pool::builder()
        .max_size(size)
        // A few connections are opened ahead, in the pool's own threads, so
        // no call waits for a TCP + TLS handshake + AUTH (and, after an
        // outage, for reconnecting): connecting may take longer than a call may.
        .min_idle(Some(size.min(4)))
        // A PING per checkout would double the round trips; a dead
        // connection shows on use, and `run` retries once.
        .test_on_check_out(false)
        .connection_timeout(timeout)
        // Failures are logged once per outage by RedisCounters.
        .error_handler(Box::new(r2d2::NopErrorHandler))
        .build_unchecked(Manager {
            client: client.clone(),
            timeout,
        })
}

/// redis-rs's own r2d2 manager connects without a timeout; this one bounds
/// connecting (TCP, TLS, AUTH) by the call timeout.
struct Manager {
    client: redis::Client,
    timeout: Duration,
}

impl r2d2::ManageConnection for Manager {
    type Connection = redis::Connection;
    type Error = redis::RedisError;

    fn connect(&self) -> Result<redis::Connection, redis::RedisError> {
        self.client.get_connection_with_timeout(self.timeout)
    }

    fn is_valid(&self, conn: &mut redis::Connection) -> Result<(), redis::RedisError> {
        redis::cmd("PING").query::<String>(conn).map(|_| ())
    }

    fn has_broken(&self, conn: &mut redis::Connection) -> bool {
        !conn.is_open()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_cannot_collide_through_the_separator() {
        assert_ne!(
            format!("{}:{}", escape("a:b"), escape("c")),
            format!("{}:{}", escape("a"), escape("b:c"))
        );
        assert_eq!(escape("rate-limit"), "rate-limit");
    }

    #[test]
    fn a_bad_url_or_ca_file_is_refused_at_start() {
        let config = |url: &str, ca: Option<&str>| CountersConfig {
            url: Some(url.into()),
            ca_file: ca.map(Into::into),
            ..CountersConfig::default()
        };
        let err = RedisCounters::new(&config("redis://:pw@[bad", None), "kiln")
            .err()
            .unwrap();
        assert!(
            err.contains("[counters] url") && !err.contains("pw@"),
            "{err}"
        );
        let err = RedisCounters::new(
            &config("rediss://127.0.0.1:1", Some("/nonexistent/ca.pem")),
            "kiln",
        )
        .err()
        .unwrap();
        assert!(err.contains("ca_file"), "{err}");
    }
}

//! `rate-limit`: a token bucket per caller. Each caller may send `burst`
//! requests at once, then `requests_per_minute` on average; beyond that the
//! answer is 429 with `Retry-After`.
//!
//! The caller is the `x-kiln-caller` header set by the `api-key` plugin
//! (put `api-key` first in the chain), else the first address of
//! `X-Forwarded-For` (set by Cloud Run's front end), else one shared
//! "anonymous" bucket. Without `api-key` in front, a client can send its own
//! `x-kiln-caller` (or `X-Forwarded-For` prefix) and so pick its bucket: the
//! limit is then per claimed identity, not per client.
//!
//! ```toml
//! [plugins.config]
//! requests_per_minute = 60
//! burst = 10            # default: 1
//! ```
//!
//! The bucket is kept as GCRA's "theoretical arrival time" (TAT) in one host
//! counter per caller: TAT only ever moves forward, which is what a counter
//! can do. Reading and then advancing it are two host calls, so concurrent
//! requests of one caller can overshoot the bucket by at most the number of
//! requests in flight at once.
//!
//! One instance or many: the bucket lives in the host's counters. With the
//! default in-process counters each kiln-proxy has its own buckets, so N
//! instances (Cloud Run `--max-instances N`) let a caller through up to N
//! times the limit, and buckets reset when an instance restarts. With
//! `[counters] backend = "redis"` every instance reads and advances the same
//! bucket: the limit holds for the whole service, and survives restarts
//! (while Redis is down with `fail_open`, each instance counts alone again).
//! The read-then-advance overshoot above then spans the requests in flight
//! across all instances.

use kiln_plugin::host::{Counters, HostCounters};
use kiln_plugin::{Decision, Plugin, Rejection, Request};
use serde::Deserialize;

/// A window longer than any uptime: the counter never resets by itself.
const FOREVER_MS: u64 = 1 << 62;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub requests_per_minute: u64,
    #[serde(default = "one")]
    pub burst: u64,
}

fn one() -> u64 {
    1
}

/// Who the request counts against.
pub fn caller(request: &Request) -> String {
    if let Some(c) = request.header("x-kiln-caller").filter(|c| !c.is_empty()) {
        return format!("caller:{c}");
    }
    if let Some(ip) = request
        .header("x-forwarded-for")
        .and_then(|v| v.split(',').next())
        .map(str::trim)
        .filter(|ip| !ip.is_empty())
    {
        return format!("ip:{ip}");
    }
    "anonymous".into()
}

/// Milliseconds to wait before `key` may send again, or `None` when it may
/// send now (and then the request is counted).
pub fn take(config: &Config, counters: &mut dyn Counters, key: &str, now_ms: u64) -> Option<u64> {
    let interval = 60_000 / config.requests_per_minute.max(1);
    let tolerance = interval * (config.burst.max(1) - 1);
    let stored = counters.add(key, FOREVER_MS, 0).total;
    let tat = stored.max(now_ms);
    if tat > now_ms + tolerance {
        return Some(tat - tolerance - now_ms);
    }
    counters.add(key, FOREVER_MS, tat + interval - stored);
    None
}

pub struct RateLimit;

impl Plugin for RateLimit {
    type Config = Config;

    fn validate(config: &Config) -> Result<(), String> {
        if config.requests_per_minute == 0 || config.requests_per_minute > 60_000 {
            return Err("`requests_per_minute` must be between 1 and 60000".into());
        }
        if config.burst == 0 {
            return Err("`burst` must be at least 1".into());
        }
        Ok(())
    }

    fn on_request(config: &Config, request: &Request) -> Decision {
        let key = caller(request);
        let now = kiln_plugin::host::wall_now_ms();
        match take(config, &mut HostCounters, &key, now) {
            None => Decision::Allow,
            Some(wait_ms) => too_many(config, wait_ms),
        }
    }
}

fn too_many(config: &Config, wait_ms: u64) -> Decision {
    let secs = wait_ms.div_ceil(1000).max(1);
    let message = format!(
        "rate limit exceeded ({} requests per minute, burst {}); retry in {secs} s",
        config.requests_per_minute, config.burst
    );
    Rejection::new(429, message)
        .with_header("retry-after", secs.to_string())
        .into()
}

kiln_plugin::export_plugin!(RateLimit);

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_plugin::host::MemoryCounters;
    use kiln_plugin::{Route, parse_config};

    fn config(rpm: u64, burst: u64) -> Config {
        parse_config::<RateLimit>(&format!(
            r#"{{"requests_per_minute":{rpm},"burst":{burst}}}"#
        ))
        .unwrap()
    }

    #[test]
    fn burst_then_steady_rate() {
        let c = config(60, 3); // one per second, three at once
        let mut counters = MemoryCounters::default();
        let t0 = 1_700_000_000_000;
        for i in 0..3 {
            assert_eq!(
                take(&c, &mut counters, "alice", t0),
                None,
                "request {i} of the burst"
            );
        }
        assert_eq!(
            take(&c, &mut counters, "alice", t0),
            Some(1000),
            "the 4th waits one interval"
        );
        assert_eq!(take(&c, &mut counters, "alice", t0 + 999), Some(1));
        assert_eq!(
            take(&c, &mut counters, "alice", t0 + 1000),
            None,
            "a token came back"
        );
        assert!(take(&c, &mut counters, "alice", t0 + 1000).is_some());
        // After a long pause the bucket is full again, not over-full.
        let later = t0 + 3_600_000;
        for _ in 0..3 {
            assert_eq!(take(&c, &mut counters, "alice", later), None);
        }
        assert!(take(&c, &mut counters, "alice", later).is_some());
    }

    #[test]
    fn callers_have_separate_buckets() {
        let c = config(1, 1);
        let mut counters = MemoryCounters::default();
        assert_eq!(take(&c, &mut counters, "caller:a", 0), None);
        assert!(take(&c, &mut counters, "caller:a", 0).is_some());
        assert_eq!(take(&c, &mut counters, "caller:b", 0), None);
    }

    #[test]
    fn the_caller_comes_from_api_key_then_forwarded_for() {
        let r = Request::new(Route::OllamaChat, "/api/chat", "{}");
        assert_eq!(caller(&r), "anonymous");
        let r = r.with_header("x-forwarded-for", "203.0.113.7, 10.0.0.1");
        assert_eq!(caller(&r), "ip:203.0.113.7");
        let r = r.with_header("x-kiln-caller", "alice");
        assert_eq!(caller(&r), "caller:alice");
    }

    #[test]
    fn rejection_is_429_with_retry_after_in_whole_seconds() {
        let d = too_many(&config(60, 1), 1001);
        let r = d.as_rejection().unwrap();
        assert_eq!(r.status, 429);
        assert_eq!(r.headers, vec![("retry-after".into(), "2".into())]);
        assert!(parse_config::<RateLimit>(r#"{"requests_per_minute":0}"#).is_err());
    }
}

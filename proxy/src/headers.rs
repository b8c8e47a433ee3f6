//! Header rules between client and Ollama: hop-by-hop headers stay on their
//! hop, `Host` names the upstream (Ollama answers 403 with an empty body to a
//! non-local Host), `Origin` goes through only when allowed (Ollama answers
//! 403 to origins it does not know), and every request carries an `X-Request-Id`.

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// RFC 9110 §7.6.1 connection-specific fields, plus the legacy ones proxies strip.
/// Names, not strings: removing by `&str` parses and validates the name on
/// every call, nine times per request and hop.
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Removes hop-by-hop headers, including those the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    strip_fixed(headers);
}

fn strip_fixed(headers: &mut HeaderMap) {
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
}

/// True when the request carries no `Origin`, or one the config allows.
/// A browser sends `Origin` on every cross-site POST (a `text/plain` one
/// needs no preflight), so an unknown origin is refused, as Ollama does,
/// rather than dropped: dropping it would let any web page drive the proxy.
pub fn origin_allowed(headers: &HeaderMap, allowed_origins: &[String]) -> bool {
    let mut origins = headers.get_all(header::ORIGIN).iter();
    let Some(first) = origins.next() else {
        return true;
    };
    origins.next().is_none()
        && first
            .to_str()
            .is_ok_and(|o| allowed_origins.iter().any(|a| a == o || a == "*"))
}

/// Shapes the headers of a request about to go to Ollama. The client's
/// hop-by-hop headers were stripped before the filter stage (see
/// [`strip_hop_by_hop`]), so a `Connection` header of the client's can no
/// longer name, and so remove, a header a plugin added; only the fixed
/// hop-by-hop names are removed here.
pub fn for_upstream(
    headers: &mut HeaderMap,
    upstream_authority: &HeaderValue,
    allowed_origins: &[String],
    request_id: &HeaderValue,
) {
    strip_fixed(headers);
    // `Expect: 100-continue` was answered on the client's hop when the proxy
    // started reading the body; Ollama gets the body without asking.
    headers.remove(header::EXPECT);
    headers.insert(header::HOST, upstream_authority.clone());
    let origin_allowed = headers
        .get(header::ORIGIN)
        .and_then(|o| o.to_str().ok())
        .is_some_and(|o| allowed_origins.iter().any(|a| a == o || a == "*"));
    if !origin_allowed {
        headers.remove(header::ORIGIN);
    }
    headers.insert(REQUEST_ID, request_id.clone());
}

/// Headers as `(lower-cased name, value)` pairs, as plugins see them; a
/// value that is not UTF-8 is read lossily.
pub fn to_pairs(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

/// Pairs back into headers; an invalid name or value is dropped (and logged).
pub fn from_pairs(pairs: &[(String, String)]) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(pairs.len());
    for (name, value) in pairs {
        match (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            (Ok(n), Ok(v)) => {
                out.append(n, v);
            }
            _ => tracing::warn!(header = %name, "invalid header; dropped"),
        }
    }
    out
}

/// The client's request ID when it is sane (visible ASCII, at most 128
/// bytes), else a fresh random one.
pub fn request_id(headers: &HeaderMap) -> HeaderValue {
    if let Some(v) = headers.get(REQUEST_ID)
        && v.len() <= 128
        && !v.is_empty()
        && v.as_bytes().iter().all(|b| b.is_ascii_graphic())
    {
        return v.clone();
    }
    HeaderValue::from_str(&new_id()).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

/// 128 random bits as hex. `RandomState` is seeded from the OS per process;
/// hashing a counter with it gives unpredictable, unique IDs without a
/// random-number crate.
fn new_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    static SEED: std::sync::OnceLock<std::collections::hash_map::RandomState> =
        std::sync::OnceLock::new();
    let seed = SEED.get_or_init(std::collections::hash_map::RandomState::new);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut h1 = seed.build_hasher();
    h1.write_u64(n);
    let mut h2 = seed.build_hasher();
    h2.write_u64(!n);
    format!("{:016x}{:016x}", h1.finish(), h2.finish())
}

/// The trace ID from Cloud Run's `X-Cloud-Trace-Context: TRACE/SPAN;o=1`, or
/// from a W3C `traceparent: 00-TRACE-SPAN-01`.
pub fn trace_id(headers: &HeaderMap) -> Option<String> {
    let valid =
        |t: &str| !t.is_empty() && t.len() <= 32 && t.bytes().all(|b| b.is_ascii_hexdigit());
    if let Some(v) = headers
        .get("x-cloud-trace-context")
        .and_then(|v| v.to_str().ok())
    {
        let t = v.split('/').next().unwrap_or("");
        if valid(t) {
            return Some(t.to_ascii_lowercase());
        }
    }
    let v = headers.get("traceparent").and_then(|v| v.to_str().ok())?;
    let t = v.split('-').nth(1)?;
    valid(t).then(|| t.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn upstream_headers_are_rewritten() {
        let mut h = map(&[
            ("host", "kiln-abc.a.run.app"),
            ("origin", "https://evil.example"),
            ("connection", "keep-alive, x-secret-hop"),
            ("x-secret-hop", "1"),
            ("te", "trailers"),
            ("authorization", "Bearer k"),
            ("expect", "100-continue"),
        ]);
        let id = HeaderValue::from_static("req-1");
        strip_hop_by_hop(&mut h);
        for_upstream(
            &mut h,
            &HeaderValue::from_static("127.0.0.1:11434"),
            &[],
            &id,
        );
        assert_eq!(h["host"], "127.0.0.1:11434");
        assert!(h.get("origin").is_none());
        assert!(
            h.get("x-secret-hop").is_none()
                && h.get("te").is_none()
                && h.get("connection").is_none()
        );
        assert_eq!(h["authorization"], "Bearer k", "end-to-end headers pass");
        assert!(h.get("expect").is_none());
        assert_eq!(h["x-request-id"], "req-1");

        let mut h = map(&[("origin", "https://app.example")]);
        for_upstream(
            &mut h,
            &HeaderValue::from_static("u"),
            &["https://app.example".into()],
            &id,
        );
        assert_eq!(h["origin"], "https://app.example", "allowed origins pass");
    }

    #[test]
    fn plugin_headers_survive_a_client_connection_header() {
        let mut h = map(&[("connection", "x-kiln-caller")]);
        strip_hop_by_hop(&mut h);
        // A plugin adds the header after the client's hop headers are gone.
        h.insert("x-kiln-caller", HeaderValue::from_static("alice"));
        for_upstream(
            &mut h,
            &HeaderValue::from_static("u"),
            &[],
            &HeaderValue::from_static("1"),
        );
        assert_eq!(h["x-kiln-caller"], "alice");
    }

    #[test]
    fn origins_are_allowed_only_when_listed() {
        let allowed = ["https://app.example".to_string()];
        assert!(origin_allowed(&map(&[]), &[]));
        assert!(origin_allowed(
            &map(&[("origin", "https://app.example")]),
            &allowed
        ));
        assert!(!origin_allowed(
            &map(&[("origin", "https://evil.example")]),
            &allowed
        ));
        assert!(!origin_allowed(&map(&[("origin", "null")]), &allowed));
        assert!(!origin_allowed(
            &map(&[
                ("origin", "https://app.example"),
                ("origin", "https://evil.example")
            ]),
            &allowed
        ));
        assert!(origin_allowed(
            &map(&[("origin", "null")]),
            &["*".to_string()]
        ));
    }

    #[test]
    fn request_ids_are_kept_or_made() {
        assert_eq!(request_id(&map(&[("x-request-id", "abc-1")])), "abc-1");
        let made = request_id(&map(&[("x-request-id", "has space")]));
        assert_eq!(made.len(), 32);
        assert_ne!(request_id(&HeaderMap::new()), request_id(&HeaderMap::new()));
    }

    #[test]
    fn trace_ids_come_from_cloud_run_or_w3c() {
        let h = map(&[(
            "x-cloud-trace-context",
            "105445aa7843bc8bf206b12000100000/1;o=1",
        )]);
        assert_eq!(trace_id(&h).unwrap(), "105445aa7843bc8bf206b12000100000");
        let h = map(&[(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )]);
        assert_eq!(trace_id(&h).unwrap(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(trace_id(&map(&[("x-cloud-trace-context", "../etc;o=1")])).is_none());
    }
}

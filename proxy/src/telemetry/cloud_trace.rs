//! The parent of a request's span, from its headers: a W3C `traceparent`
//! (read by the SDK's propagator), else Cloud Run's
//! `X-Cloud-Trace-Context: TRACE_ID/SPAN_ID;o=1` — 32 hex digits, the
//! parent span as a decimal 64-bit number, `o=1` when sampled. No
//! maintained crate reads the Cloud Run header short of a whole Cloud Trace
//! exporter, so it is parsed here.

use http::HeaderMap;
use opentelemetry::Context;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry_http::HeaderExtractor;
use opentelemetry_sdk::propagation::TraceContextPropagator;

/// The context a request's server span continues (empty: a new trace).
pub fn extract(headers: &HeaderMap) -> Context {
    if headers.contains_key(super::TRACEPARENT) {
        let cx = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
        if cx.span().span_context().is_valid() {
            return cx;
        }
    }
    headers
        .get(super::CLOUD_TRACE)
        .and_then(|v| v.to_str().ok())
        .and_then(parse)
        .map_or_else(Context::new, |sc| {
            Context::new().with_remote_span_context(sc)
        })
}

/// `TRACE_ID/SPAN_ID;o=1` as a remote span context; `None` when malformed.
fn parse(value: &str) -> Option<SpanContext> {
    let (trace, rest) = value.trim().split_once('/')?;
    let (span, options) = match rest.split_once(';') {
        Some((s, o)) => (s, Some(o)),
        None => (rest, None),
    };
    if trace.len() != 32 || !trace.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let trace_id = TraceId::from_hex(trace).ok()?;
    let span_id = SpanId::from_bytes(span.trim().parse::<u64>().ok()?.to_be_bytes());
    if trace_id == TraceId::INVALID || span_id == SpanId::INVALID {
        return None;
    }
    let sampled = options.is_some_and(|o| o.trim() == "o=1");
    let flags = if sampled {
        TraceFlags::SAMPLED
    } else {
        TraceFlags::default()
    };
    Some(SpanContext::new(
        trace_id,
        span_id,
        flags,
        true,
        TraceState::default(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.insert(*n, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn cloud_run_header_continues_the_trace_with_its_sampling() {
        let cx = extract(&headers(&[(
            "x-cloud-trace-context",
            "105445aa7843bc8bf206b12000100000/1;o=1",
        )]));
        let sc = cx.span().span_context().clone();
        assert_eq!(
            sc.trace_id().to_string(),
            "105445aa7843bc8bf206b12000100000"
        );
        assert_eq!(sc.span_id().to_string(), "0000000000000001");
        assert!(sc.is_sampled() && sc.is_remote());
        let cx = extract(&headers(&[(
            "x-cloud-trace-context",
            "105445aa7843bc8bf206b12000100000/18446744073709551615;o=0",
        )]));
        assert!(!cx.span().span_context().is_sampled());
        assert_eq!(
            cx.span().span_context().span_id().to_string(),
            "ffffffffffffffff"
        );
    }

    #[test]
    fn traceparent_wins_over_the_cloud_run_header() {
        let cx = extract(&headers(&[
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
            (
                "x-cloud-trace-context",
                "105445aa7843bc8bf206b12000100000/1;o=1",
            ),
        ]));
        let sc = cx.span().span_context().clone();
        assert_eq!(
            sc.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(sc.span_id().to_string(), "00f067aa0ba902b7");
    }

    #[test]
    fn malformed_headers_start_a_new_trace() {
        for bad in [
            "nothex/1;o=1",
            "105445aa7843bc8bf206b12000100000/x;o=1",
            "105445aa7843bc8bf206b12000100000/0;o=1",
            "00000000000000000000000000000000/1;o=1",
            "105445aa7843bc8bf206b1200010000/1",
            "",
        ] {
            let cx = extract(&headers(&[("x-cloud-trace-context", bad)]));
            assert!(!cx.span().span_context().is_valid(), "{bad:?}");
        }
        let cx = extract(&headers(&[("traceparent", "00-zz-00f067aa0ba902b7-01")]));
        assert!(!cx.span().span_context().is_valid());
    }
}

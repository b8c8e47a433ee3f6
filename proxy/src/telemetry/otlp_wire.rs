//! The SDK's finished spans written as an OTLP `ExportTraceServiceRequest`
//! (opentelemetry-proto's `trace/v1`, `common/v1`, `resource/v1` messages),
//! straight from the spans into one reused buffer with `prost`'s wire
//! primitives.
//!
//! Written by hand for a measured cost: `opentelemetry-otlp` first converts
//! every span into `opentelemetry-proto`'s structs (a `String` per attribute
//! key and string value, a `Vec` per ID) and then encodes those, which made
//! up most of a sampled request's tracing cost (docs/BENCHMARKS.md, Traces).
//! The messages and field numbers are the proto files'; a test decodes what
//! this writes with the official crate's types and compares it with the
//! official conversion of the same spans.

use std::time::{SystemTime, UNIX_EPOCH};

use opentelemetry::trace::{SpanContext, SpanId, SpanKind, Status};
use opentelemetry::{Array, InstrumentationScope, KeyValue, Value};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SpanData;
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint};

/// `ExportTraceServiceRequest` for `spans`, after the encoded `resource`
/// (see [`resource`]), into `out`: one `ResourceSpans`, one `ScopeSpans`
/// per instrumentation scope, in the order the scopes first appear.
pub fn request(resource: &EncodedResource, spans: &[SpanData], out: &mut Vec<u8>) {
    message(out, 1, |out| {
        message(out, 1, |out| out.extend_from_slice(&resource.message));
        let mut scopes: Vec<&InstrumentationScope> = Vec::with_capacity(1);
        for span in spans {
            if !scopes.contains(&&span.instrumentation_scope) {
                scopes.push(&span.instrumentation_scope);
            }
        }
        for scope in scopes {
            message(out, 2, |out| {
                message(out, 1, |out| instrumentation_scope(scope, out));
                for span in spans.iter().filter(|s| &s.instrumentation_scope == scope) {
                    message(out, 2, |out| self::span(span, out));
                }
                string(out, 3, scope.schema_url().unwrap_or_default());
            });
        }
        string(out, 3, &resource.schema_url);
    });
}

/// A `Resource` message's bytes, written once (it is the same in every export).
#[derive(Debug, Default)]
pub struct EncodedResource {
    message: Vec<u8>,
    schema_url: String,
}

pub fn resource(resource: &Resource) -> EncodedResource {
    let mut message = Vec::new();
    for (key, value) in resource.iter() {
        self::key_value(&mut message, 1, key.as_str(), value);
    }
    EncodedResource {
        message,
        schema_url: resource.schema_url().unwrap_or_default().to_owned(),
    }
}

fn instrumentation_scope(scope: &InstrumentationScope, out: &mut Vec<u8>) {
    string(out, 1, scope.name());
    string(out, 2, scope.version().unwrap_or_default());
    for kv in scope.attributes() {
        key_value(out, 3, kv.key.as_str(), &kv.value);
    }
}

/// `trace.v1.Span`.
fn span(span: &SpanData, out: &mut Vec<u8>) {
    let sc = &span.span_context;
    bytes(out, 1, &sc.trace_id().to_bytes());
    bytes(out, 2, &sc.span_id().to_bytes());
    trace_state(out, 3, sc);
    if span.parent_span_id != SpanId::INVALID {
        bytes(out, 4, &span.parent_span_id.to_bytes());
    }
    string(out, 5, &span.name);
    uint(out, 6, kind(&span.span_kind));
    fixed64(out, 7, nanos(span.start_time));
    fixed64(out, 8, nanos(span.end_time));
    attributes(out, 9, &span.attributes);
    uint(out, 10, span.dropped_attributes_count.into());
    for event in span.events.iter() {
        message(out, 11, |out| {
            fixed64(out, 1, nanos(event.timestamp));
            string(out, 2, &event.name);
            attributes(out, 3, &event.attributes);
            uint(out, 4, event.dropped_attributes_count.into());
        });
    }
    uint(out, 12, span.events.dropped_count.into());
    for link in span.links.iter() {
        let lc = &link.span_context;
        message(out, 13, |out| {
            bytes(out, 1, &lc.trace_id().to_bytes());
            bytes(out, 2, &lc.span_id().to_bytes());
            trace_state(out, 3, lc);
            attributes(out, 4, &link.attributes);
            uint(out, 5, link.dropped_attributes_count.into());
            fixed32(out, 6, flags(lc.trace_flags().to_u8(), lc.is_remote()));
        });
    }
    uint(out, 14, span.links.dropped_count.into());
    // Always present, as the SDK's own conversion writes it.
    message(out, 15, |out| {
        let (code, text) = match &span.status {
            Status::Unset => (0, ""),
            Status::Ok => (1, ""),
            Status::Error { description } => (2, description.as_ref()),
        };
        string(out, 2, text);
        uint(out, 3, code);
    });
    fixed32(
        out,
        16,
        flags(sc.trace_flags().to_u8(), span.parent_span_is_remote),
    );
}

/// `SpanFlags`: the W3C trace flags, and whether the parent (the linked
/// span) is remote, saying that it is known.
fn flags(trace_flags: u8, remote: bool) -> u32 {
    const HAS_IS_REMOTE: u32 = 0x100;
    const IS_REMOTE: u32 = 0x200;
    u32::from(trace_flags) | HAS_IS_REMOTE | if remote { IS_REMOTE } else { 0 }
}

fn kind(kind: &SpanKind) -> u64 {
    match kind {
        SpanKind::Internal => 1,
        SpanKind::Server => 2,
        SpanKind::Client => 3,
        SpanKind::Producer => 4,
        SpanKind::Consumer => 5,
    }
}

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn trace_state(out: &mut Vec<u8>, field: u32, sc: &SpanContext) {
    let state = sc.trace_state().header();
    string(out, field, &state);
}

fn attributes(out: &mut Vec<u8>, field: u32, attributes: &[KeyValue]) {
    for kv in attributes {
        key_value(out, field, kv.key.as_str(), &kv.value);
    }
}

fn key_value(out: &mut Vec<u8>, field: u32, key: &str, value: &Value) {
    message(out, field, |out| {
        string(out, 1, key);
        message(out, 2, |out| any_value(out, value));
    });
}

/// `AnyValue`'s one field. Always written, zero or empty included: it is a
/// `oneof`, so its presence is the value.
fn any_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::String(s) => string_always(out, 1, s.as_str()),
        Value::Bool(b) => {
            encode_key(2, WireType::Varint, out);
            encode_varint(u64::from(*b), out);
        }
        Value::I64(i) => {
            encode_key(3, WireType::Varint, out);
            encode_varint(*i as u64, out);
        }
        Value::F64(f) => {
            encode_key(4, WireType::SixtyFourBit, out);
            out.extend_from_slice(&f.to_le_bytes());
        }
        Value::Array(array) => message(out, 5, |out| match array {
            Array::Bool(v) => v.iter().for_each(|b| element(out, &Value::Bool(*b))),
            Array::I64(v) => v.iter().for_each(|i| element(out, &Value::I64(*i))),
            Array::F64(v) => v.iter().for_each(|f| element(out, &Value::F64(*f))),
            Array::String(v) => v
                .iter()
                .for_each(|s| message(out, 1, |out| string_always(out, 1, s.as_str()))),
            // A kind of array this version does not know: an empty array.
            _ => {}
        }),
        // A kind of value this version does not know: an empty `AnyValue`.
        _ => {}
    }
}

/// One of an `ArrayValue`'s values.
fn element(out: &mut Vec<u8>, value: &Value) {
    message(out, 1, |out| any_value(out, value));
}

/// A length-delimited field holding a message that `body` writes. The
/// length goes before the body, so one byte is kept for it (most messages
/// here are under 128 bytes) and the body moved up when it needs more.
fn message(out: &mut Vec<u8>, field: u32, body: impl FnOnce(&mut Vec<u8>)) {
    encode_key(field, WireType::LengthDelimited, out);
    let at = out.len();
    out.push(0);
    body(out);
    let len = out.len() - at - 1;
    let width = encoded_len_varint(len as u64);
    if width > 1 {
        out.splice(at + 1..at + 1, std::iter::repeat_n(0, width - 1));
    }
    encode_varint(len as u64, &mut &mut out[at..at + width]);
}

/// A `string` field, left out when empty (proto3's default).
fn string(out: &mut Vec<u8>, field: u32, s: &str) {
    if !s.is_empty() {
        string_always(out, field, s);
    }
}

fn string_always(out: &mut Vec<u8>, field: u32, s: &str) {
    encode_key(field, WireType::LengthDelimited, out);
    encode_varint(s.len() as u64, out);
    out.extend_from_slice(s.as_bytes());
}

fn bytes(out: &mut Vec<u8>, field: u32, b: &[u8]) {
    encode_key(field, WireType::LengthDelimited, out);
    encode_varint(b.len() as u64, out);
    out.extend_from_slice(b);
}

/// A varint field (`uint32`, an enum), left out when zero.
fn uint(out: &mut Vec<u8>, field: u32, v: u64) {
    if v != 0 {
        encode_key(field, WireType::Varint, out);
        encode_varint(v, out);
    }
}

fn fixed64(out: &mut Vec<u8>, field: u32, v: u64) {
    if v != 0 {
        encode_key(field, WireType::SixtyFourBit, out);
        out.extend_from_slice(&v.to_le_bytes());
    }
}

fn fixed32(out: &mut Vec<u8>, field: u32, v: u32) {
    if v != 0 {
        encode_key(field, WireType::ThirtyTwoBit, out);
        out.extend_from_slice(&v.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;
    use std::time::Duration;

    use opentelemetry::trace::{
        Event, Link, SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
    };
    use opentelemetry::{Array, InstrumentationScope, KeyValue, StringValue, Value};
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
    use opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope;
    use opentelemetry_sdk::Resource;
    use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};
    use prost::Message;

    fn context(
        trace: u128,
        span: u64,
        flags: TraceFlags,
        remote: bool,
        state: &str,
    ) -> SpanContext {
        SpanContext::new(
            TraceId::from(trace),
            SpanId::from(span),
            flags,
            remote,
            state.parse::<TraceState>().unwrap(),
        )
    }

    fn span(name: &'static str, scope: &InstrumentationScope) -> SpanData {
        let start = std::time::UNIX_EPOCH + Duration::from_nanos(1_764_800_000_123_456_789);
        SpanData {
            span_context: context(
                0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736,
                0x00f0_67aa_0ba9_02b7,
                TraceFlags::SAMPLED,
                false,
                "",
            ),
            parent_span_id: SpanId::INVALID,
            parent_span_is_remote: false,
            span_kind: SpanKind::Internal,
            name: Cow::Borrowed(name),
            start_time: start,
            end_time: start + Duration::from_micros(1_500),
            attributes: Vec::new(),
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: Status::Unset,
            instrumentation_scope: scope.clone(),
        }
    }

    /// What this module writes, decoded with the official message types,
    /// equals the official conversion of the same spans.
    fn assert_as_official(resource: &Resource, spans: Vec<SpanData>) {
        let mut ours = Vec::new();
        super::request(&super::resource(resource), &spans, &mut ours);
        let decoded = ExportTraceServiceRequest::decode(&ours[..]).expect("decodes as OTLP");
        let official = ExportTraceServiceRequest {
            resource_spans: group_spans_by_resource_and_scope(
                spans,
                &ResourceAttributesWithSchema::from(resource),
            ),
        };
        assert_eq!(decoded, official);
        // Byte for byte too: the same fields in the same order.
        assert_eq!(ours, official.encode_to_vec());
    }

    #[test]
    fn a_request_span_tree_is_written_as_the_official_exporter_does() {
        let scope = InstrumentationScope::builder("kiln-proxy").build();
        let resource = Resource::builder_empty()
            .with_attributes([
                KeyValue::new("service.name", "ollama-gemma"),
                KeyValue::new("cloud.platform", "gcp_cloud_run"),
            ])
            .build();
        let mut server = span("chat gemma3:4b", &scope);
        server.span_kind = SpanKind::Server;
        server.parent_span_id = SpanId::from(0x1122_3344_5566_7788);
        server.parent_span_is_remote = true;
        server.attributes = vec![
            KeyValue::new("http.request.method", "POST"),
            KeyValue::new("url.path", "/api/chat".to_owned()),
            KeyValue::new("http.response.status_code", 200_i64),
            KeyValue::new("gen_ai.request.temperature", 0.7),
            KeyValue::new("gen_ai.request.top_k", 0.0),
            KeyValue::new("gen_ai.usage.input_tokens", 0_i64),
            KeyValue::new("kiln.streamed", true),
            KeyValue::new("kiln.flag", false),
            KeyValue::new("gen_ai.usage.output_tokens", -1_i64),
            KeyValue::new("kiln.empty", ""),
            KeyValue::new(
                "gen_ai.response.finish_reasons",
                Value::Array(Array::String(vec![
                    StringValue::from("stop"),
                    StringValue::from(""),
                ])),
            ),
            KeyValue::new("kiln.ints", Value::Array(Array::I64(vec![0, 1, -5]))),
            KeyValue::new("kiln.floats", Value::Array(Array::F64(vec![0.0, 2.5]))),
            KeyValue::new("kiln.bools", Value::Array(Array::Bool(vec![true, false]))),
            KeyValue::new("kiln.none", Value::Array(Array::I64(vec![]))),
            // Long enough that its message's length takes two bytes.
            KeyValue::new("kiln.long", "x".repeat(300)),
        ];
        server.dropped_attributes_count = 2;
        server.status = Status::error("503 upstream_error");
        server.events.events = vec![Event::new(
            "exception",
            std::time::UNIX_EPOCH + Duration::from_secs(1_764_800_001),
            vec![KeyValue::new("exception.message", "no answer")],
            1,
        )];
        server.events.dropped_count = 3;
        server.links.links = vec![Link::new(
            context(7, 9, TraceFlags::default(), true, "vendor=abc,other=1"),
            vec![KeyValue::new("kiln.link", 1_i64)],
            0,
        )];
        server.links.dropped_count = 1;
        server.span_context = context(
            0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736,
            0x00f0_67aa_0ba9_02b7,
            TraceFlags::SAMPLED,
            false,
            "vendor=abc",
        );
        let mut admission = span("admission", &scope);
        admission.parent_span_id = SpanId::from(0x00f0_67aa_0ba9_02b7);
        admission.attributes = vec![KeyValue::new("kiln.admission.outcome", "admitted")];
        let mut upstream = span("POST /api/chat", &scope);
        upstream.span_kind = SpanKind::Client;
        upstream.parent_span_id = SpanId::from(0x00f0_67aa_0ba9_02b7);
        upstream.status = Status::Ok;
        // A message (the server span) past 16 KiB: a three-byte length.
        server
            .attributes
            .push(KeyValue::new("kiln.longer", "y".repeat(20_000)));
        assert_as_official(&resource, vec![admission, upstream, server]);
    }

    #[test]
    fn spans_of_several_scopes_and_an_empty_batch_are_written_as_the_official_exporter_does() {
        let kiln = InstrumentationScope::builder("kiln-proxy")
            .with_version("0.1.0")
            .with_schema_url("https://opentelemetry.io/schemas/1.30.0")
            .with_attributes([KeyValue::new("scope.attr", 1_i64)])
            .build();
        let other = InstrumentationScope::builder("other").build();
        let resource = Resource::builder_empty()
            .with_schema_url(
                [KeyValue::new("service.name", "s")],
                "https://opentelemetry.io/schemas/1.30.0",
            )
            .build();
        let spans = vec![span("a", &kiln), span("b", &other), span("c", &kiln)];
        assert_as_official(&resource, spans);
        assert_as_official(&resource, Vec::new());
    }
}

//! Traces: OpenTelemetry spans for each request, exported over OTLP
//! (HTTP/protobuf) when `OTEL_EXPORTER_OTLP_ENDPOINT` or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set; everything else about the
//! exporter comes from the standard `OTEL_*` variables: headers, timeout
//! and compression read by [`otlp`], batching (`OTEL_BSP_*`) by the
//! OpenTelemetry SDK itself.
//!
//! A request's spans: one server span (named after its GenAI operation and
//! model, carrying the `gen_ai.*` attributes), and under it one span per
//! plugin hook (request and response), the admission wait, and the upstream
//! call to Ollama (whose `traceparent` names that span). An incoming W3C
//! `traceparent`, else Cloud Run's `X-Cloud-Trace-Context`, continues the
//! trace; its sampled flag decides, and `tracing.sample_ratio` decides for
//! new traces. No prompt or completion text is ever put on a span.
//!
//! The OpenTelemetry API is used directly rather than through the
//! `tracing` crate's bridge: spans are made only at the request's stages,
//! and with tracing off every hook here is one load of an empty `OnceLock`.
//! The request's [`Context`] travels with its future (`with_context`), so
//! stages below it (plugin calls, log lines) find it with `Context::current()`.

mod body;
mod cloud_trace;
mod genai;
mod otlp;
mod otlp_wire;
mod project;

use std::sync::{Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceId, Tracer,
    TracerProvider as _,
};
use opentelemetry::{Context, KeyValue, Value};
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider, Span as SdkSpan};

pub use body::traced;
pub use genai::{may_finish, note_final_chunk};
pub use otlp::span_counts;

use crate::config::TracingConfig;
use crate::routes::RouteKind;

static TRACER: OnceLock<SdkTracer> = OnceLock::new();
static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// Whether spans are being made (an OTLP endpoint was configured).
#[inline]
pub fn enabled() -> bool {
    TRACER.get().is_some()
}

/// Starts the exporter when an OTLP endpoint is configured (once per
/// process; later calls do nothing). On Cloud Run without
/// `tracing.project_id`, asks the metadata server for the project first
/// (bounded by a short timeout). Returns whether tracing is on.
pub async fn init(config: &TracingConfig) -> anyhow::Result<bool> {
    let var = |k: &str| std::env::var(k).ok();
    if enabled() {
        return Ok(true);
    }
    // A refused setting is a config error: exit 2, as for any other.
    let Some(settings) = otlp::Settings::from_env(&var)? else {
        return Ok(false);
    };
    // The metadata server is asked last, and only on Cloud Run.
    let project = match config
        .project_id
        .clone()
        .or_else(|| project::from_env(&var))
    {
        Some(p) => Some(p),
        None => project::on_cloud_run(&var).await,
    };
    if let Some(p) = &project {
        crate::logging::set_project(p);
    }
    let endpoint = settings.url.clone();
    let exporter = otlp::Exporter::new(settings);
    let mut resource = opentelemetry_sdk::Resource::builder()
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")));
    if var("OTEL_SERVICE_NAME").is_none() {
        resource =
            resource.with_service_name(var("K_SERVICE").unwrap_or_else(|| "kiln-proxy".into()));
    }
    if let Some(p) = &project {
        resource = resource.with_attributes([
            KeyValue::new("cloud.provider", "gcp"),
            KeyValue::new("cloud.account.id", p.clone()),
        ]);
    }
    if let Some(service) = var("K_SERVICE") {
        resource = resource.with_attributes([
            KeyValue::new("cloud.platform", "gcp_cloud_run"),
            KeyValue::new("faas.name", service),
            KeyValue::new("faas.version", var("K_REVISION").unwrap_or_default()),
        ]);
    }
    // The SDK's batching, OTEL_BSP_* included (512 spans an export: larger
    // batches measured no cheaper per request with this exporter).
    let processor = opentelemetry_sdk::trace::BatchSpanProcessor::builder(exporter).build();
    let provider = SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            config.sample_ratio,
        ))))
        .with_resource(resource.build())
        .build();
    let tracer = provider.tracer("kiln-proxy");
    let _ = PROVIDER.set(provider);
    let _ = TRACER.set(tracer);
    tracing::info!(
        sample_ratio = config.sample_ratio,
        project = project.as_deref().unwrap_or(""),
        endpoint,
        "OpenTelemetry traces on (OTLP http/protobuf)"
    );
    Ok(true)
}

/// Sends the spans still queued; call once when the proxy stops.
pub fn shutdown() {
    if let Some(p) = PROVIDER.get()
        && let Err(e) = p.shutdown_with_timeout(Duration::from_secs(3))
    {
        tracing::warn!(error = %e, "could not send the last spans");
    }
}

/// The current request's context, when tracing is on and it has a span.
pub fn current() -> Option<Context> {
    if !enabled() {
        return None;
    }
    let cx = Context::current();
    cx.has_active_span().then_some(cx)
}

/// The current request's context, when its span is recorded: for work
/// that makes child spans later, away from the request's future.
pub fn recording_context() -> Option<Context> {
    current().filter(|cx| cx.span().is_recording())
}

/// When a child span starts: `Some` only when tracing is on and the current
/// request's span is recorded, so unsampled requests pay for no clock read.
pub fn span_start() -> Option<SystemTime> {
    enabled()
        .then(|| Context::map_current(|cx| cx.span().is_recording()))
        .filter(|recording| *recording)
        .map(|_| SystemTime::now())
}

/// A finished plugin hook call (or, for response hooks, all of one
/// plugin's calls on one answer) as a child span of `parent` (the current
/// context when `None`).
pub fn plugin_span(
    parent: Option<&Context>,
    started: SystemTime,
    plugin: &str,
    hook: &'static str,
    decision: &'static str,
    calls: u64,
) {
    let Some(tracer) = TRACER.get() else { return };
    let mut attrs = Vec::with_capacity(4);
    attrs.extend([
        KeyValue::new("kiln.plugin.name", plugin.to_owned()),
        KeyValue::new("kiln.plugin.hook", hook),
        KeyValue::new("kiln.plugin.decision", decision),
    ]);
    if hook == "response" {
        attrs.push(KeyValue::new("kiln.plugin.calls", calls as i64));
    }
    let builder = tracer
        .span_builder(format!("plugin {hook} {plugin}"))
        .with_kind(SpanKind::Internal)
        .with_start_time(started)
        .with_attributes(attrs);
    // The SDK span itself, not a Context around it: a span that ends here
    // needs no shared, locked handle (two allocations fewer).
    let mut span = match parent {
        Some(cx) => tracer.build_with_context(builder, cx),
        None => Context::map_current(|cx| tracer.build_with_context(builder, cx)),
    };
    if decision == "failure" {
        span.set_status(Status::error("the plugin call failed"));
    }
    span.end();
}

/// The admission wait as a child span of the current request.
pub fn admission_span(started: SystemTime, admitted: bool, in_flight: usize, queued: usize) {
    let Some(tracer) = TRACER.get() else { return };
    let builder = tracer
        .span_builder("admission")
        .with_kind(SpanKind::Internal)
        .with_start_time(started)
        .with_attributes([
            KeyValue::new(
                "kiln.admission.outcome",
                if admitted { "admitted" } else { "queue_full" },
            ),
            KeyValue::new("kiln.admission.in_flight", in_flight as i64),
            KeyValue::new("kiln.admission.queued", queued as i64),
        ]);
    let mut span = Context::map_current(|cx| tracer.build_with_context(builder, cx));
    if !admitted {
        span.set_status(Status::error("queue full"));
    }
    span.end();
}

/// A span's first name, without an allocation.
fn method_name(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::HEAD => "HEAD",
        Method::DELETE => "DELETE",
        _ => "HTTP",
    }
}

/// `http.request.method`: a static string for the methods the routes take.
fn method_value(method: &Method) -> Value {
    match method_name(method) {
        "HTTP" => method.as_str().to_owned().into(),
        m => m.into(),
    }
}

/// Attributes a recorded server span ends up with (request, route, GenAI
/// request and answer, outcome): its vector is sized once.
const SERVER_ATTRIBUTES: usize = 18;

/// One request's spans: the server span, and the upstream call's once it starts.
pub struct RequestTrace {
    cx: Context,
    /// Whether the server span is recorded (known at its start; read
    /// here rather than through the span's lock at every stage).
    recording: bool,
    /// The upstream call's span, ended with the request's. Kept as the SDK
    /// span (no Context around it: nothing runs under it here).
    upstream: Mutex<Option<SdkSpan>>,
}

impl RequestTrace {
    /// The server span of a request, child of the trace its headers continue.
    /// `None` when tracing is off.
    pub fn start(headers: &HeaderMap, method: &Method, path: &str) -> Option<RequestTrace> {
        let tracer = TRACER.get()?;
        let parent = cloud_trace::extract(headers);
        // The name and the other attributes are given once the span is
        // known to be recorded: an unsampled request pays for no strings,
        // only for this vector (sized for all the span's attributes, and
        // the span's own when it is recorded) and the static method in it.
        let mut attrs = Vec::with_capacity(SERVER_ATTRIBUTES);
        attrs.push(KeyValue::new("http.request.method", method_value(method)));
        let builder = tracer
            .span_builder(method_name(method))
            .with_kind(SpanKind::Server)
            .with_attributes(attrs);
        let span = tracer.build_with_context(builder, &parent);
        let cx = parent.with_span(span);
        let span = cx.span();
        let recording = span.is_recording();
        if recording {
            span.update_name(format!("{method} {path}"));
            span.set_attribute(KeyValue::new("url.path", path.to_owned()));
        }
        Some(RequestTrace {
            cx,
            recording,
            upstream: Mutex::new(None),
        })
    }

    pub fn context(&self) -> &Context {
        &self.cx
    }

    fn recording(&self) -> bool {
        self.recording
    }

    /// The route is known: its label, and the GenAI operation it performs.
    pub fn route(&self, label: &'static str, kind: RouteKind) {
        if !self.recording() {
            return;
        }
        // One call, one turn of the span's lock.
        let route = KeyValue::new("http.route", label);
        let genai = genai::operation(kind).map(|op| {
            [
                KeyValue::new("gen_ai.operation.name", op),
                KeyValue::new("gen_ai.provider.name", "ollama"),
                KeyValue::new("gen_ai.system", "ollama"),
            ]
        });
        self.cx
            .span()
            .set_attributes(std::iter::once(route).chain(genai.into_iter().flatten()));
    }

    /// The request as Ollama will get it: the model and the sampling
    /// parameters named in the GenAI conventions (never the messages).
    pub fn request(&self, view: &crate::request_view::InferenceView, body: &[u8]) {
        if !self.recording() {
            return;
        }
        let span = self.cx.span();
        let model = &view.model;
        if let Some(op) = genai::operation(view.route) {
            span.update_name(format!("{op} {model}"));
        }
        let params = match view.route {
            RouteKind::OllamaChat | RouteKind::OllamaGenerate | RouteKind::OllamaEmbed => {
                genai::ollama_params(view.options.as_ref())
            }
            _ => genai::request_params(body),
        };
        let model = KeyValue::new("gen_ai.request.model", model.clone());
        span.set_attributes(std::iter::once(model).chain(params));
    }

    /// Starts the upstream call's span and names it in `traceparent` for Ollama.
    pub fn start_upstream(&mut self, method: &Method, path: &str, headers: &mut HeaderMap) {
        let Some(tracer) = TRACER.get() else { return };
        // Named and given its attributes up front when the parent is
        // recorded (then this span is too: the sampler follows the parent).
        let builder = if self.recording() {
            // Room for the status code Ollama answers with.
            let mut attrs = Vec::with_capacity(4);
            attrs.extend([
                KeyValue::new("http.request.method", method_value(method)),
                KeyValue::new("url.path", path.to_owned()),
                KeyValue::new("peer.service", "ollama"),
            ]);
            tracer
                .span_builder(format!("{method} {path}"))
                .with_attributes(attrs)
        } else {
            tracer.span_builder(method_name(method))
        }
        .with_kind(SpanKind::Client);
        let span = tracer.build_with_context(builder, &self.cx);
        let sc = span.span_context();
        headers.insert(
            TRACEPARENT,
            traceparent(sc.trace_id(), sc.span_id(), sc.is_sampled()),
        );
        // Cloud Run's header would name the client's span, not this one.
        headers.remove(CLOUD_TRACE);
        *self.upstream.lock().unwrap_or_else(|e| e.into_inner()) = Some(span);
    }

    /// Ollama's response head arrived.
    pub fn upstream_answered(&self, status: u16) {
        if let Some(span) = self
            .upstream
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
        {
            span.set_attribute(KeyValue::new(
                "http.response.status_code",
                i64::from(status),
            ));
        }
    }

    /// `trace id, span id, sampled` of the server span, for log lines.
    pub fn log_ids(&self) -> LogIds {
        LogIds::of(self.cx.span().span_context())
    }

    /// Ends the request's spans: its status, how the body ended, the token counts.
    /// Later calls do nothing (a span ends once).
    pub fn end(&self, status: u16, outcome: &'static str, error: bool, tokens: Option<(u64, u64)>) {
        let failed = status >= 500 || error;
        let span = self.cx.span();
        if self.recording {
            let usage = tokens.map(|(input, output)| {
                [
                    KeyValue::new("gen_ai.usage.input_tokens", input as i64),
                    KeyValue::new("gen_ai.usage.output_tokens", output as i64),
                ]
            });
            span.set_attributes(
                [
                    KeyValue::new("http.response.status_code", i64::from(status)),
                    KeyValue::new("kiln.outcome", outcome),
                ]
                .into_iter()
                .chain(usage.into_iter().flatten()),
            );
            if failed {
                span.set_status(Status::error(format!("{status} {outcome}")));
            }
        }
        if let Some(mut up) = self
            .upstream
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            if failed {
                up.set_status(Status::error(outcome));
            }
            up.end();
        }
        span.end();
    }
}

/// The trace headers, named once (no parse of the name at each use).
const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const CLOUD_TRACE: HeaderName = HeaderName::from_static("x-cloud-trace-context");

/// `traceparent` naming a span, written without the formatter.
fn traceparent(trace: TraceId, span: SpanId, sampled: bool) -> HeaderValue {
    let mut v = *b"00-00000000000000000000000000000000-0000000000000000-00";
    // Both encodings write exactly their slices' lengths: they cannot fail.
    let _ = hex::encode_to_slice(trace.to_bytes(), &mut v[3..35]);
    let _ = hex::encode_to_slice(span.to_bytes(), &mut v[36..52]);
    if sampled {
        v[54] = b'1';
    }
    HeaderValue::from_bytes(&v).expect("hex digits and dashes are a valid header value")
}

/// A span's IDs for a log line, in lower-case hex, on the stack.
pub struct LogIds {
    trace: [u8; 32],
    span: [u8; 16],
    pub sampled: bool,
}

impl LogIds {
    fn of(sc: &SpanContext) -> LogIds {
        let mut ids = LogIds {
            trace: [0; 32],
            span: [0; 16],
            sampled: sc.is_sampled(),
        };
        let _ = hex::encode_to_slice(sc.trace_id().to_bytes(), &mut ids.trace);
        let _ = hex::encode_to_slice(sc.span_id().to_bytes(), &mut ids.span);
        ids
    }

    pub fn trace(&self) -> &str {
        std::str::from_utf8(&self.trace).unwrap_or_default()
    }

    pub fn span(&self) -> &str {
        std::str::from_utf8(&self.span).unwrap_or_default()
    }
}

/// The trace a log line written now belongs to: the IDs of the current
/// request's span, when tracing is on.
pub fn current_log_ids() -> Option<LogIds> {
    if !enabled() {
        return None;
    }
    Context::map_current(|cx| {
        let sc = cx.span().span_context().clone();
        sc.is_valid().then(|| LogIds::of(&sc))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{TraceFlags, TraceState};

    #[test]
    fn ids_are_written_in_lower_case_hex() {
        let trace = TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap();
        let span = SpanId::from_hex("00f067aa0ba902b7").unwrap();
        assert_eq!(
            traceparent(trace, span, true),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
        assert_eq!(
            traceparent(trace, span, false),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"
        );
        let sc = SpanContext::new(
            trace,
            span,
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        );
        let ids = LogIds::of(&sc);
        assert_eq!(ids.trace(), trace.to_string());
        assert_eq!(ids.span(), span.to_string());
        assert!(ids.sampled);
    }
}

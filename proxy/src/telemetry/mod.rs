//! Traces: OpenTelemetry spans for each request, exported over OTLP
//! (HTTP/protobuf) when `OTEL_EXPORTER_OTLP_ENDPOINT` or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set; everything else about the
//! exporter (headers, timeout, compression, batching) comes from the
//! standard `OTEL_*` variables, read by the OpenTelemetry SDK itself.
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
mod project;

use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderValue, Method};
use opentelemetry::trace::{SpanKind, Status, TraceContextExt, Tracer, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider};

pub use body::traced;
pub use genai::{may_finish, note_final_chunk};

use crate::config::TracingConfig;
use crate::routes::RouteKind;

static TRACER: OnceLock<SdkTracer> = OnceLock::new();
static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// Whether spans are being made (an OTLP endpoint was configured).
#[inline]
pub fn enabled() -> bool {
    TRACER.get().is_some()
}

/// Whether the environment names an OTLP endpoint for traces.
fn endpoint_configured(var: &impl Fn(&str) -> Option<String>) -> bool {
    [
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ]
    .iter()
    .any(|k| var(k).is_some_and(|v| !v.trim().is_empty()))
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
    if !endpoint_configured(&var) {
        return Ok(false);
    }
    for key in [
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ] {
        if let Some(url) = var(key).filter(|u| u.trim().starts_with("https:")) {
            // A refused configuration: exit 2, as for any other.
            return Err(crate::config::ConfigError::Value {
                key: key.into(),
                value: url,
                reason: "kiln-proxy exports traces over plain HTTP to a collector beside it \
                         (e.g. http://localhost:4318); let the collector hold the TLS and credentials \
                         (deploy/otel-collector.yaml)"
                    .into(),
            }
            .into());
        }
    }
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
    // The exporter's HTTP client (reqwest) builds its TLS config even for
    // plain HTTP, and the workspace builds reqwest with rustls and no
    // provider chosen: ring is the one the proxy links already.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
        .map_err(|e| anyhow::anyhow!("cannot build the OTLP trace exporter: {e}; check OTEL_EXPORTER_OTLP_* (traces are sent as http/protobuf)"))?;
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
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
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
    let mut attrs = vec![
        KeyValue::new("kiln.plugin.name", plugin.to_owned()),
        KeyValue::new("kiln.plugin.hook", hook),
        KeyValue::new("kiln.plugin.decision", decision),
    ];
    if hook == "response" {
        attrs.push(KeyValue::new("kiln.plugin.calls", calls as i64));
    }
    let builder = tracer
        .span_builder(format!("plugin {hook} {plugin}"))
        .with_kind(SpanKind::Internal)
        .with_start_time(started)
        .with_attributes(attrs);
    let span = match parent {
        Some(cx) => tracer.build_with_context(builder, cx),
        None => Context::map_current(|cx| tracer.build_with_context(builder, cx)),
    };
    let cx = Context::new().with_span(span);
    if decision == "failure" {
        cx.span()
            .set_status(Status::error("the plugin call failed"));
    }
    cx.span().end();
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
    let span = Context::map_current(|cx| tracer.build_with_context(builder, cx));
    let cx = Context::new().with_span(span);
    if !admitted {
        cx.span().set_status(Status::error("queue full"));
    }
    cx.span().end();
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

/// One request's spans: the server span, and the upstream call's once it starts.
pub struct RequestTrace {
    cx: Context,
    upstream: Option<Context>,
}

impl RequestTrace {
    /// The server span of a request, child of the trace its headers continue.
    /// `None` when tracing is off.
    pub fn start(headers: &HeaderMap, method: &Method, path: &str) -> Option<RequestTrace> {
        let tracer = TRACER.get()?;
        let parent = cloud_trace::extract(headers);
        // Names and attributes are given once the span is known to be
        // recorded: an unsampled request pays for no strings.
        let builder = tracer
            .span_builder(method_name(method))
            .with_kind(SpanKind::Server);
        let span = tracer.build_with_context(builder, &parent);
        let cx = parent.with_span(span);
        let span = cx.span();
        if span.is_recording() {
            span.update_name(format!("{method} {path}"));
            span.set_attributes([
                KeyValue::new("http.request.method", method.as_str().to_owned()),
                KeyValue::new("url.path", path.to_owned()),
            ]);
        }
        Some(RequestTrace { cx, upstream: None })
    }

    pub fn context(&self) -> &Context {
        &self.cx
    }

    fn recording(&self) -> bool {
        self.cx.span().is_recording()
    }

    /// The route is known: its label, and the GenAI operation it performs.
    pub fn route(&self, label: &'static str, kind: RouteKind) {
        if !self.recording() {
            return;
        }
        let span = self.cx.span();
        span.set_attribute(KeyValue::new("http.route", label));
        if let Some(op) = genai::operation(kind) {
            span.set_attribute(KeyValue::new("gen_ai.operation.name", op));
            span.set_attribute(KeyValue::new("gen_ai.provider.name", "ollama"));
            span.set_attribute(KeyValue::new("gen_ai.system", "ollama"));
        }
    }

    /// The request as Ollama will get it: the model and the sampling
    /// parameters named in the GenAI conventions (never the messages).
    pub fn request(&self, kind: RouteKind, model: &str, body: &[u8]) {
        if !self.recording() {
            return;
        }
        let span = self.cx.span();
        if let Some(op) = genai::operation(kind) {
            span.update_name(format!("{op} {model}"));
        }
        span.set_attribute(KeyValue::new("gen_ai.request.model", model.to_owned()));
        span.set_attributes(genai::request_params(body));
    }

    /// Starts the upstream call's span and names it in `traceparent` for Ollama.
    pub fn start_upstream(&mut self, method: &Method, path: &str, headers: &mut HeaderMap) {
        let Some(tracer) = TRACER.get() else { return };
        let builder = tracer
            .span_builder(method_name(method))
            .with_kind(SpanKind::Client);
        let span = tracer.build_with_context(builder, &self.cx);
        let cx = self.cx.with_span(span);
        if cx.span().is_recording() {
            cx.span().update_name(format!("{method} {path}"));
            cx.span().set_attributes([
                KeyValue::new("http.request.method", method.as_str().to_owned()),
                KeyValue::new("url.path", path.to_owned()),
                KeyValue::new("peer.service", "ollama"),
            ]);
        }
        let sc = cx.span().span_context().clone();
        let flags = if sc.is_sampled() { "01" } else { "00" };
        let value = format!("00-{}-{}-{flags}", sc.trace_id(), sc.span_id());
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert("traceparent", v);
        }
        // Cloud Run's header would name the client's span, not this one.
        headers.remove("x-cloud-trace-context");
        self.upstream = Some(cx);
    }

    /// Ollama's response head arrived.
    pub fn upstream_answered(&self, status: u16) {
        if let Some(cx) = &self.upstream {
            cx.span().set_attribute(KeyValue::new(
                "http.response.status_code",
                i64::from(status),
            ));
        }
    }

    /// `trace id, span id, sampled` of the server span, for log lines.
    pub fn log_ids(&self) -> (String, String, bool) {
        let sc = self.cx.span().span_context().clone();
        (
            sc.trace_id().to_string(),
            sc.span_id().to_string(),
            sc.is_sampled(),
        )
    }

    /// Ends the request's spans: its status, how the body ended, the token counts.
    /// Later calls do nothing (a span ends once).
    pub fn end(&self, status: u16, outcome: &str, error: bool, tokens: Option<(u64, u64)>) {
        let failed = status >= 500 || error;
        let span = self.cx.span();
        if span.is_recording() {
            span.set_attribute(KeyValue::new(
                "http.response.status_code",
                i64::from(status),
            ));
            span.set_attribute(KeyValue::new("kiln.outcome", outcome.to_owned()));
            if let Some((input, output)) = tokens {
                span.set_attribute(KeyValue::new("gen_ai.usage.input_tokens", input as i64));
                span.set_attribute(KeyValue::new("gen_ai.usage.output_tokens", output as i64));
            }
            if failed {
                span.set_status(Status::error(format!("{status} {outcome}")));
            }
        }
        if let Some(up) = &self.upstream {
            if failed {
                up.span().set_status(Status::error(outcome.to_owned()));
            }
            up.span().end();
        }
        span.end();
    }
}

/// The trace a log line written now belongs to: `trace id, span id,
/// sampled` of the current request's span, when tracing is on.
pub fn current_log_ids() -> Option<(String, String, bool)> {
    if !enabled() {
        return None;
    }
    Context::map_current(|cx| {
        let sc = cx.span().span_context().clone();
        sc.is_valid().then(|| {
            (
                sc.trace_id().to_string(),
                sc.span_id().to_string(),
                sc.is_sampled(),
            )
        })
    })
}

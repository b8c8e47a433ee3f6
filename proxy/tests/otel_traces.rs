//! OpenTelemetry traces end to end: the real `kiln-proxy` binary with two
//! plugins, in front of the Ollama emulator, exporting to a real OTLP/HTTP
//! receiver on loopback (tests/support/otlp_receiver.py, which decodes the
//! protobuf with the `opentelemetry-proto` package). One streamed
//! `/api/chat` request that arrives with a W3C `traceparent` must give the
//! span tree an operator sees in Cloud Trace, continue the caller's trace,
//! hand Ollama a `traceparent` of the same trace, and carry no prompt text.

mod example_plugins;
mod harness;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";
/// Text that only the prompt holds: it must reach no span.
const PROMPT_MARKER: &str = "zebra-marmalade-4711";

/// The receiver: its port, and the spans it printed so far.
struct Receiver {
    child: tokio::process::Child,
    lines: tokio::sync::mpsc::UnboundedReceiver<Value>,
    port: u16,
}

impl Receiver {
    /// `refuse_first`: the first export is answered 503, as by a collector
    /// still starting.
    async fn start(refuse_first: bool) -> Receiver {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/otlp_receiver.py");
        let mut child = tokio::process::Command::new("python3")
            .arg(script)
            .arg(PROMPT_MARKER)
            .args(refuse_first.then_some("refuse-first"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 not found; run scripts/setup");
        let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = tokio::time::timeout(Duration::from_secs(20), out.next_line())
            .await
            .expect("the OTLP receiver did not start (is opentelemetry-proto installed? run scripts/setup)")
            .unwrap()
            .expect("the OTLP receiver exited (is opentelemetry-proto installed? run scripts/setup)");
        let port = first
            .strip_prefix("PORT ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line from the receiver: {first}"));
        let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(Some(line)) = out.next_line().await {
                if tx.send(serde_json::from_str(&line).unwrap()).is_err() {
                    break;
                }
            }
        });
        Receiver { child, lines, port }
    }

    /// Spans received until `done` says they are all there (or 15 s pass).
    async fn spans_until(&mut self, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let mut got = Vec::new();
        let end = Instant::now() + Duration::from_secs(15);
        while !done(&got) && Instant::now() < end {
            if let Ok(Some(v)) =
                tokio::time::timeout(Duration::from_millis(200), self.lines.recv()).await
            {
                got.push(v);
            }
        }
        got
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn plugin_table(name: &str, config: &str) -> String {
    let path = example_plugins::plugin(name, Value::Null).path;
    format!(
        "[[plugins]]\nname = \"{name}\"\npath = \"{}\"\n[plugins.config]\n{config}\n",
        path.display()
    )
}

/// The span `name` of the test's trace (the readiness wait made others).
fn by_name<'a>(spans: &'a [Value], name: &str) -> &'a Value {
    spans
        .iter()
        .find(|s| s["name"] == name && s["trace_id"] == TRACE_ID)
        .unwrap_or_else(|| panic!("no span named {name:?} in {spans:#?}"))
}

/// The real `kiln-proxy` with `config` (listening on `port`), exporting as
/// the `otel` variables say, once it answers: the process, its log file,
/// its base URL.
async fn start_proxy(
    dir: &tempfile::TempDir,
    config: &Path,
    port: u16,
    otel: &[(&str, String)],
) -> (tokio::process::Child, std::path::PathBuf, String) {
    let log_path = dir.path().join("stderr.log");
    let cache = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/plugin-cache-tests");
    let mut proxy = tokio::process::Command::new(env!("CARGO_BIN_EXE_kiln-proxy"))
        .arg("--config")
        .arg(config)
        .env("KILN_PLUGIN_CACHE_DIR", cache)
        .envs(otel.iter().map(|(k, v)| (k, v)))
        .env("OTEL_BSP_SCHEDULE_DELAY", "50")
        .env("KILN_TRACING_PROJECT_ID", "test-project")
        .env("RUST_LOG", "info")
        .env_remove("K_SERVICE")
        .stderr(std::fs::File::create(&log_path).unwrap())
        .kill_on_drop(true)
        .spawn()
        .expect("run kiln-proxy");
    let client = harness::http_client();
    let base = format!("http://127.0.0.1:{port}");
    // Compiling the plugins (the first time, in a debug build) takes a while.
    let end = Instant::now() + Duration::from_secs(90);
    while client
        .get(format!("{base}/api/version"))
        .send()
        .await
        .is_err()
    {
        if let Ok(Some(status)) = proxy.try_wait() {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            panic!("kiln-proxy exited ({status}):\n{log}");
        }
        assert!(Instant::now() < end, "kiln-proxy never answered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (proxy, log_path, base)
}

/// The emulator, and the real `kiln-proxy` in front of it without plugins,
/// exporting as the `otel` variables say: the emulator, the proxy's
/// directory (kept while it runs), the process, its base URL.
async fn plain_proxy(
    otel: &[(&str, String)],
) -> (
    ollama_emulator::Emulator,
    tempfile::TempDir,
    tokio::process::Child,
    String,
) {
    let emulator = ollama_emulator::Emulator::start(ollama_emulator::Config::default())
        .await
        .expect("start emulator");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("proxy.toml");
    let port = free_port();
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{port}\"\nupstream = \"{}\"\n",
            emulator.url()
        ),
    )
    .unwrap();
    let (proxy, _log, base) = start_proxy(&dir, &config, port, otel).await;
    (emulator, dir, proxy, base)
}

/// `kiln_trace_spans_total{outcome=...}` as the proxy at `base` reports it now.
async fn trace_spans(base: &str, outcome: &str) -> u64 {
    let text = harness::http_client()
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let series = format!("kiln_trace_spans_total{{outcome=\"{outcome}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&series))
        .unwrap_or_else(|| panic!("no {series}in /metrics:\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn streamed_chat_through_two_plugins_is_one_trace_with_genai_attributes() {
    let mut receiver = Receiver::start(false).await;
    let models = harness::models_dir();
    let emulator = ollama_emulator::Emulator::start(ollama_emulator::Config {
        models_dir: Some(models.path().to_path_buf()),
        num_parallel: 2,
        token_delay: Duration::from_millis(1),
        ..Default::default()
    })
    .await
    .expect("start emulator");

    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join("proxy.toml");
    let text = format!(
        "listen = \"127.0.0.1:{port}\"\nupstream = \"{}\"\n{}{}",
        emulator.url(),
        plugin_table("system-prompt", "prompt = \"Answer briefly.\""),
        plugin_table("output-guard", "patterns = [\"never-generated-word\"]"),
    );
    std::fs::write(&config, text).unwrap();
    let (mut proxy, log_path, base) = start_proxy(
        &dir,
        &config,
        port,
        &[(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://127.0.0.1:{}", receiver.port),
        )],
    )
    .await;
    let client = harness::http_client();

    let body = json!({
        "model": "gemma3:4b",
        "messages": [{"role": "user", "content": format!("Tell me about {PROMPT_MARKER}")}],
        "options": {"num_predict": 5, "temperature": 0.25}
    });
    let resp = client
        .post(format!("{base}/api/chat"))
        .header("traceparent", format!("00-{TRACE_ID}-{CALLER_SPAN}-01"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    let lines = harness::ndjson(text.as_bytes());
    assert!(lines.len() > 1, "the answer streamed: {text}");
    let last = lines.last().unwrap();
    assert_eq!(last["done"], true, "{text}");
    let (input, output) = (
        last["prompt_eval_count"].as_i64().unwrap(),
        last["eval_count"].as_i64().unwrap(),
    );
    assert_eq!(output, 5);

    // Ollama was handed a traceparent of the caller's trace.
    let upstream_traceparent = emulator
        .stats()
        .snapshot()
        .last_headers
        .into_iter()
        .find(|(n, _)| n == "traceparent")
        .map(|(_, v)| v)
        .expect("the emulator received a traceparent");

    let expected = [
        "chat gemma3:4b",
        "plugin request system-prompt",
        "plugin request output-guard",
        "plugin response output-guard",
        "admission",
        "POST /api/chat",
    ];
    let spans = receiver
        .spans_until(|got| {
            expected.iter().all(|n| {
                got.iter()
                    .any(|s| s["name"] == *n && s["trace_id"] == TRACE_ID)
            })
        })
        .await;

    let server = by_name(&spans, "chat gemma3:4b");
    let server_id = server["span_id"].as_str().unwrap();
    assert_eq!(server["trace_id"], TRACE_ID, "the caller's trace continues");
    assert_eq!(server["parent_span_id"], CALLER_SPAN);
    assert_eq!(server["kind"], 2, "SPAN_KIND_SERVER");
    assert_eq!(
        server["content_type"], "application/x-protobuf",
        "OTLP over HTTP/protobuf"
    );
    let a = &server["attributes"];
    assert_eq!(a["gen_ai.operation.name"], "chat");
    assert_eq!(a["gen_ai.provider.name"], "ollama");
    assert_eq!(a["gen_ai.system"], "ollama");
    assert_eq!(a["gen_ai.request.model"], "gemma3:4b");
    assert_eq!(a["gen_ai.request.max_tokens"], 5);
    assert_eq!(a["gen_ai.request.temperature"], 0.25);
    assert_eq!(a["gen_ai.response.model"], "gemma3:4b");
    assert_eq!(a["gen_ai.response.finish_reasons"], json!(["length"]));
    assert_eq!(a["gen_ai.usage.input_tokens"], input);
    assert_eq!(a["gen_ai.usage.output_tokens"], output);
    assert_eq!(a["http.route"], "chat");
    assert_eq!(a["http.response.status_code"], 200);
    assert_eq!(server["resource"]["service.name"], "kiln-proxy");
    assert_eq!(server["resource"]["cloud.account.id"], "test-project");

    let ours = spans.iter().filter(|s| s["trace_id"] == TRACE_ID).count();
    assert_eq!(ours, expected.len(), "one span each: {spans:#?}");
    for name in &expected[1..] {
        let s = by_name(&spans, name);
        assert_eq!(s["trace_id"], TRACE_ID, "{name}");
        assert_eq!(
            s["parent_span_id"], server_id,
            "{name} is a child of the request span"
        );
    }
    let modify = by_name(&spans, "plugin request system-prompt");
    assert_eq!(modify["attributes"]["kiln.plugin.name"], "system-prompt");
    assert_eq!(modify["attributes"]["kiln.plugin.decision"], "modify");
    let allow = by_name(&spans, "plugin request output-guard");
    assert_eq!(allow["attributes"]["kiln.plugin.decision"], "allow");
    let response = by_name(&spans, "plugin response output-guard");
    assert_eq!(response["attributes"]["kiln.plugin.hook"], "response");
    assert_eq!(response["attributes"]["kiln.plugin.decision"], "pass");
    assert!(
        response["attributes"]["kiln.plugin.calls"]
            .as_i64()
            .unwrap()
            >= 2
    );
    let admission = by_name(&spans, "admission");
    assert_eq!(
        admission["attributes"]["kiln.admission.outcome"],
        "admitted"
    );

    let upstream = by_name(&spans, "POST /api/chat");
    assert_eq!(upstream["kind"], 3, "SPAN_KIND_CLIENT");
    assert_eq!(upstream["attributes"]["http.response.status_code"], 200);
    assert_eq!(
        upstream_traceparent,
        format!("00-{TRACE_ID}-{}-01", upstream["span_id"].as_str().unwrap()),
        "Ollama's traceparent names the upstream span"
    );

    // No prompt text anywhere: not in a decoded attribute, not in the raw payloads.
    for s in &spans {
        assert!(
            !s.to_string().contains(PROMPT_MARKER),
            "prompt text in a span: {s}"
        );
        assert!(
            s.get("marker_found").is_none(),
            "prompt text in an OTLP payload"
        );
    }

    // The access log line links to the request's span in Cloud Logging.
    let end = Instant::now() + Duration::from_secs(5);
    let access = loop {
        let logs = std::fs::read_to_string(&log_path).unwrap();
        if let Some(line) = logs
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|l| l["target"] == "kiln_proxy::access" && l["route"] == "chat")
        {
            break line;
        }
        assert!(Instant::now() < end, "no access log line:\n{logs}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        access["logging.googleapis.com/trace"],
        format!("projects/test-project/traces/{TRACE_ID}")
    );
    assert_eq!(access["logging.googleapis.com/spanId"], server_id);
    assert_eq!(access["logging.googleapis.com/trace_sampled"], true);

    // Cloud Run's own header continues a trace too (its span ID is decimal).
    let cloud_trace = "105445aa7843bc8bf206b12000100000";
    let resp = client
        .post(format!("{base}/api/chat"))
        .header("x-cloud-trace-context", format!("{cloud_trace}/258;o=1"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.text().await.unwrap();
    let spans = receiver
        .spans_until(|got| {
            got.iter()
                .any(|s| s["name"] == "chat gemma3:4b" && s["trace_id"] == cloud_trace)
        })
        .await;
    let server = spans
        .iter()
        .find(|s| s["name"] == "chat gemma3:4b" && s["trace_id"] == cloud_trace)
        .unwrap_or_else(|| panic!("no span of the Cloud Run trace: {spans:#?}"));
    assert_eq!(server["parent_span_id"], "0000000000000102", "258 in hex");

    // An OpenAI stream says why it stopped before its usage chunk: both are read.
    let openai_trace = "0af7651916cd43dd8448eb211c80319c";
    let resp = client
        .post(format!("{base}/v1/chat/completions"))
        .header(
            "traceparent",
            format!("00-{openai_trace}-b7ad6b7169203331-01"),
        )
        .json(&json!({
            "model": "gemma3:4b",
            "messages": [{"role": "user", "content": format!("Tell me about {PROMPT_MARKER}")}],
            "stream": true,
            "max_tokens": 3,
            "stream_options": {"include_usage": true}
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.text().await.unwrap();
    let spans = receiver
        .spans_until(|got| {
            got.iter()
                .any(|s| s["trace_id"] == openai_trace && s["kind"] == 2)
        })
        .await;
    let server = spans
        .iter()
        .find(|s| s["trace_id"] == openai_trace && s["kind"] == 2)
        .unwrap_or_else(|| panic!("no span of the OpenAI request: {spans:#?}"));
    let a = &server["attributes"];
    assert_eq!(server["name"], "chat gemma3:4b");
    assert_eq!(a["http.route"], "openai_chat");
    assert_eq!(a["gen_ai.request.max_tokens"], 3);
    assert_eq!(
        a["gen_ai.response.finish_reasons"],
        json!(["length"]),
        "{server:#}"
    );
    assert_eq!(a["gen_ai.usage.output_tokens"], 3);
    for s in &spans {
        assert!(
            !s.to_string().contains(PROMPT_MARKER),
            "prompt text in a span: {s}"
        );
        assert!(
            s.get("marker_found").is_none(),
            "prompt text in an OTLP payload"
        );
    }

    // What reached the receiver is counted as exported; nothing was lost.
    assert!(trace_spans(&base, "exported").await >= expected.len() as u64);
    assert_eq!(trace_spans(&base, "failed").await, 0);
    let _ = proxy.kill().await;
    let _ = receiver.child.kill().await;
    emulator.shutdown().await;
}

#[tokio::test]
async fn the_exporter_follows_the_standard_otlp_variables_and_retries_a_starting_collector() {
    let mut receiver = Receiver::start(true).await;
    let (emulator, _dir, mut proxy, base) = plain_proxy(&[
        // The traces URL is taken as it is; the general one would lose.
        (
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            format!("http://127.0.0.1:{}/v1/traces", receiver.port),
        ),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9".into()),
        // Percent-encoded, as the specification writes header values.
        (
            "OTEL_EXPORTER_OTLP_HEADERS",
            "authorization=Bearer%20abc%3D%3D, x-other = 1".into(),
        ),
        ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip".into()),
    ])
    .await;
    let resp = harness::http_client()
        .post(format!("{base}/api/generate"))
        .header("traceparent", format!("00-{TRACE_ID}-{CALLER_SPAN}-01"))
        .json(&json!({"model": "gemma3:4b", "prompt": "hi", "stream": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let spans = receiver
        .spans_until(|got| {
            got.iter()
                .any(|s| s["trace_id"] == TRACE_ID && s["kind"] == 2)
        })
        .await;
    // What the first export held came again once the collector took it.
    let refused = spans
        .iter()
        .find(|s| s["refused"] == 1)
        .unwrap_or_else(|| panic!("the receiver refused no export: {spans:#?}"));
    let ids = refused["span_ids"].as_array().unwrap();
    assert!(!ids.is_empty(), "{refused}");
    let spans = receiver
        .spans_until(|got| {
            ids.iter()
                .all(|id| spans.iter().chain(got).any(|s| s["span_id"] == *id))
        })
        .await
        .into_iter()
        .chain(spans.iter().cloned())
        .collect::<Vec<_>>();
    for id in ids {
        let again = spans.iter().find(|s| s["span_id"] == *id);
        assert!(
            again.is_some_and(|s| s["post"].as_i64() > Some(1)),
            "span {id} was not sent again: {spans:#?}"
        );
    }
    let server = spans
        .iter()
        .find(|s| s["trace_id"] == TRACE_ID && s["kind"] == 2)
        .unwrap_or_else(|| panic!("no request span: {spans:#?}"));
    assert_eq!(server["name"], "text_completion gemma3:4b");
    assert_eq!(server["authorization"], "Bearer abc==");
    assert_eq!(server["content_encoding"], "gzip");
    assert_eq!(server["content_type"], "application/x-protobuf");
    let _ = proxy.kill().await;
    let _ = receiver.child.kill().await;
    emulator.shutdown().await;
}

#[tokio::test]
async fn spans_the_collector_never_takes_are_counted_as_failed() {
    // Nothing listens there: every export and its retries are refused.
    let (emulator, _dir, mut proxy, base) = plain_proxy(&[
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://127.0.0.1:{}", free_port()),
        ),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "500".into()),
    ])
    .await;
    let resp = harness::http_client()
        .post(format!("{base}/api/generate"))
        .json(&json!({"model": "gemma3:4b", "prompt": "hi", "stream": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        200,
        "a collector that is down does not fail requests"
    );
    let end = Instant::now() + Duration::from_secs(10);
    while trace_spans(&base, "failed").await < 3 {
        assert!(Instant::now() < end, "the lost spans were never counted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(trace_spans(&base, "exported").await, 0);
    let _ = proxy.kill().await;
    emulator.shutdown().await;
}

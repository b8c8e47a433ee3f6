//! `kiln_tokens_total` counts the answers of every route that generates
//! text, streamed and whole, by route and model, whether the answer passes
//! through untouched or through a response plugin: both paths read the
//! counts with the route's codec. The generation histograms (time to first
//! token, inter-token latency, tokens per second) and the plugin series are
//! there for every generating route, and `/metrics` parses as OpenMetrics
//! with the Prometheus project's own Python parser.

mod example_plugins;
mod harness;

use std::sync::Arc;

use example_plugins::plugin;
use harness::{Stack, canned_upstream, http_client, proxy_config};
use serde_json::{Value, json};

const N: u64 = 5;

/// The route label of each generating path.
fn route_label(path: &str) -> &'static str {
    match path {
        "/api/generate" => "generate",
        "/api/chat" => "chat",
        "/v1/chat/completions" => "openai_chat",
        "/v1/completions" => "openai_completions",
        "/v1/responses" => "openai_responses",
        "/v1/messages" => "anthropic_messages",
        other => panic!("no route label for {other}"),
    }
}

/// A request to every generating route that asks for `N` tokens.
fn requests(stream: bool) -> Vec<(&'static str, Value)> {
    let m = "gemma3:4b";
    vec![
        (
            "/api/generate",
            json!({"model": m, "prompt": "hi", "stream": stream, "options": {"num_predict": N}}),
        ),
        (
            "/api/chat",
            json!({"model": m, "messages": [{"role": "user", "content": "hi"}], "stream": stream, "options": {"num_predict": N}}),
        ),
        (
            // Streamed, Ollama reports usage only when asked.
            "/v1/chat/completions",
            json!({"model": m, "messages": [{"role": "user", "content": "hi"}], "stream": stream, "max_tokens": N, "stream_options": {"include_usage": true}}),
        ),
        (
            "/v1/completions",
            json!({"model": m, "prompt": "hi", "stream": stream, "max_tokens": N, "stream_options": {"include_usage": true}}),
        ),
        (
            "/v1/responses",
            json!({"model": m, "input": "hi", "stream": stream, "max_output_tokens": N}),
        ),
        (
            "/v1/messages",
            json!({"model": m, "messages": [{"role": "user", "content": "hi"}], "stream": stream, "max_tokens": N}),
        ),
    ]
}

/// The sum of the `name` series whose labels include every one of `labels`
/// (`key="value"`), 0 when there is none.
fn sum(metrics: &str, name: &str, labels: &[String]) -> f64 {
    metrics
        .lines()
        .filter_map(|l| l.strip_prefix(name)?.strip_prefix('{'))
        .filter_map(|l| l.split_once("} "))
        .filter(|(set, _)| {
            let have: Vec<&str> = set.split(',').collect();
            labels.iter().all(|want| have.contains(&want.as_str()))
        })
        .map(|(_, v)| v.trim().parse::<f64>().unwrap())
        .sum()
}

/// `kiln_tokens_total` of `kind` over every route and model.
fn tokens(metrics: &str, kind: &str) -> u64 {
    sum(metrics, "kiln_tokens_total", &[format!("kind=\"{kind}\"")]) as u64
}

/// `kiln_tokens_total` of `kind` for one route and gemma3:4b.
fn route_tokens(metrics: &str, path: &str, kind: &str) -> u64 {
    let labels = [
        format!("route=\"{}\"", route_label(path)),
        "model=\"gemma3:4b\"".to_string(),
        format!("kind=\"{kind}\""),
    ];
    sum(metrics, "kiln_tokens_total", &labels) as u64
}

/// Sends every request, and checks what each adds to the token counters.
async fn every_route_is_counted(stack: &Stack) {
    for stream in [true, false] {
        for (path, body) in requests(stream) {
            if stream && path == "/v1/completions" {
                // The emulator sends no usage chunk on these streams
                // (it ignores `stream_options` there): nothing to count.
                continue;
            }
            let before = stack.metrics().await;
            let text = stack.post_text(path, &body).await;
            let after = stack.metrics().await;
            let added = |kind| tokens(&after, kind) - tokens(&before, kind);
            assert_eq!(
                added("completion"),
                N,
                "{path} stream={stream}: completion tokens\n{text}"
            );
            assert!(
                added("prompt") > 0,
                "{path} stream={stream}: prompt tokens\n{text}"
            );
            let by_route = route_tokens(&after, path, "completion")
                - route_tokens(&before, path, "completion");
            assert_eq!(by_route, N, "{path} stream={stream}: by route and model");
        }
    }
}

#[tokio::test]
async fn passthrough_answers_of_every_generating_route_are_counted() {
    let stack = Stack::new(|_, _| {}).await;
    every_route_is_counted(&stack).await;
    stack.shutdown().await;
}

#[tokio::test]
async fn filtered_answers_of_every_generating_route_are_counted() {
    // output-guard reads every chunk of every generating route.
    let stack =
        Stack::with_plugins(&[plugin("output-guard", json!({"patterns": ["never said"]}))]).await;
    every_route_is_counted(&stack).await;
    stack.shutdown().await;
}

#[tokio::test]
async fn answers_without_prompt_eval_count_are_counted() {
    let cases = [
        (
            "application/x-ndjson",
            "{\"model\":\"m\",\"response\":\"Hi\",\"done\":false}\n{\"model\":\"m\",\"response\":\"\",\"done\":true,\"done_reason\":\"stop\",\"eval_count\":3}\n",
        ),
        (
            "application/json; charset=utf-8",
            "{\"model\":\"m\",\"response\":\"Hi\",\"done\":true,\"done_reason\":\"stop\",\"eval_count\":3}",
        ),
    ];
    for (content_type, body) in cases {
        let upstream = canned_upstream(content_type, body).await;
        let proxy = kiln_proxy::start(
            proxy_config(&upstream),
            Arc::new(kiln_proxy::filter::NoFilters),
        )
        .await
        .unwrap();
        let client = http_client();
        let got = client
            .post(format!("{}/api/generate", proxy.url()))
            .json(&json!({"model": "m", "prompt": "hi"}))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(got, body, "passed through untouched");
        let metrics = client
            .get(format!("{}/metrics", proxy.url()))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(tokens(&metrics, "completion"), 3, "{content_type}");
        assert_eq!(tokens(&metrics, "prompt"), 0, "{content_type}");
        proxy.shutdown().await.unwrap();
    }
}

/// Checks `text` with the OpenMetrics parser of the Prometheus project's
/// Python client (`prometheus_client`): what a scraper would make of it.
async fn parses_as_openmetrics(text: &str) {
    let script = "import sys\nfrom prometheus_client.openmetrics.parser import text_string_to_metric_families as p\nfamilies = list(p(sys.stdin.read()))\nprint(len(families))\n";
    let mut child = tokio::process::Command::new("python3")
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 not found; run scripts/setup");
    use tokio::io::AsyncWriteExt;
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(text.as_bytes()).await.unwrap();
    drop(stdin);
    let out = tokio::time::timeout(std::time::Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("the parser timed out")
        .unwrap();
    assert!(
        out.status.success(),
        "not valid OpenMetrics (prometheus_client installed? run scripts/setup): {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn streamed_answers_of_every_generating_route_have_generation_and_plugin_series() {
    // A token every 2 ms, so the generation histograms see real gaps.
    let options = kiln_proxy::plugins::PluginOptions {
        cache_dir: std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../target/plugin-cache-tests"),
        ..Default::default()
    };
    let stage = kiln_proxy::plugins::load_chain(
        &[plugin("output-guard", json!({"patterns": ["never said"]}))],
        &options,
    )
    .unwrap();
    // Preloaded, so the model's load time is there too.
    let stack = Stack::with_filter(
        |e, p| {
            e.token_delay = std::time::Duration::from_millis(2);
            p.ollama.preload = vec!["gemma3:4b".into()];
        },
        stage,
    )
    .await;
    let routes: Vec<_> = requests(true)
        .into_iter()
        // The emulator sends no usage on streamed /v1/completions (see above).
        .filter(|(path, _)| *path != "/v1/completions")
        .collect();
    for (path, body) in &routes {
        stack.post_text(path, body).await;
    }
    let resp = stack.get("/metrics").await;
    assert_eq!(
        resp.headers()["content-type"],
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    let metrics = resp.text().await.unwrap();
    assert!(metrics.ends_with("# EOF\n"), "{metrics}");
    parses_as_openmetrics(&metrics).await;
    for (path, _) in &routes {
        let labels = [
            format!("route=\"{}\"", route_label(path)),
            "model=\"gemma3:4b\"".to_string(),
        ];
        for name in [
            "kiln_time_to_first_token_seconds_count",
            "kiln_inter_token_latency_seconds_count",
            "kiln_output_tokens_per_second_count",
        ] {
            assert_eq!(
                sum(&metrics, name, &labels),
                1.0,
                "{name} {path}\n{metrics}"
            );
        }
        // N tokens 2 ms apart: the mean gap is at least 2 ms and far below 1 s.
        let gap = sum(&metrics, "kiln_inter_token_latency_seconds_sum", &labels);
        assert!(
            (0.002..1.0).contains(&gap),
            "{path}: {gap} s between tokens"
        );
        assert_eq!(route_tokens(&metrics, path, "completion"), N, "{path}");
        assert!(route_tokens(&metrics, path, "prompt") > 0, "{path}");
    }
    let load = sum(
        &metrics,
        "kiln_model_load_seconds",
        &["model=\"gemma3:4b\"".into()],
    );
    assert!(load > 0.0, "the preload's time\n{metrics}");
    let n = routes.len() as f64;
    let plugin = "plugin=\"output-guard\"".to_string();
    let calls = |outcome: &str| {
        sum(
            &metrics,
            "kiln_plugin_calls_total",
            &[plugin.clone(), format!("outcome=\"{outcome}\"")],
        )
    };
    assert_eq!(calls("allow"), n, "one request hook per request\n{metrics}");
    assert_eq!(calls("failure"), 0.0);
    let passed = sum(
        &metrics,
        "kiln_plugin_response_calls_total",
        &[plugin.clone(), "outcome=\"pass\"".to_string()],
    );
    assert!(
        passed >= n * N as f64,
        "a response hook per chunk: {passed}"
    );
    for hook in ["request", "response"] {
        let labels = [plugin.clone(), format!("hook=\"{hook}\"")];
        let count = sum(&metrics, "kiln_plugin_call_duration_seconds_count", &labels);
        assert_eq!(count, n, "{hook} durations\n{metrics}");
    }
    stack.shutdown().await;
}

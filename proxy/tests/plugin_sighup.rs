//! SIGHUP reloads the plugins. In its own test binary (its own process),
//! because the signal goes to the whole process.

mod example_plugins;
mod support;

use kiln_proxy::filter::{FilterRequest, RequestFilter, RouteKind, Verdict};
use kiln_proxy::plugins::{PluginOptions, load_chain};
use std::time::{Duration, Instant};
use support::fixtures::{self, Behaviour};

fn message(v: &Verdict) -> String {
    match v {
        Verdict::Reject { message, .. } => message.clone(),
        Verdict::Forward(_) => "forwarded".into(),
    }
}

#[tokio::test]
async fn sighup_reloads_the_plugins() {
    let dir = tempfile::tempdir().unwrap();
    let path = fixtures::write(dir.path(), "p", &Behaviour::Reject(403, "before"));
    let spec = example_plugins::spec("p", path.clone(), serde_json::Value::Null);
    // A watch interval longer than the test: only the signal can reload.
    let options = PluginOptions {
        cache_dir: dir.path().join("cache"),
        watch_interval: Duration::from_secs(3600),
        ..PluginOptions::default()
    };
    let stage = load_chain(&[spec], &options).unwrap();
    let reloader = stage.spawn_reloader();
    let request = || FilterRequest {
        route: RouteKind::OllamaChat,
        method: "POST".into(),
        path: "/api/chat".into(),
        headers: Vec::new(),
        body: b"{}".to_vec(),
        model: None,
    };
    assert_eq!(message(&stage.apply(request()).await), "before");
    std::fs::write(
        &path,
        fixtures::core_module(&Behaviour::Reject(403, "after"), None),
    )
    .unwrap();

    // The reloader installs its handler when it first runs; until then the
    // default action of SIGHUP would end the process.
    tokio::time::sleep(Duration::from_millis(200)).await;
    // SAFETY: kill(2) on our own pid with a signal a handler is installed for.
    assert_eq!(unsafe { libc::kill(libc::getpid(), libc::SIGHUP) }, 0);

    let deadline = Instant::now() + Duration::from_secs(10);
    while message(&stage.apply(request()).await) != "after" {
        assert!(
            Instant::now() < deadline,
            "SIGHUP did not reload the plugin within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    reloader.abort();
}

#[tokio::test]
async fn sighup_rereads_the_plugin_entries_from_their_source() {
    let dir = tempfile::tempdir().unwrap();
    let path = fixtures::write(dir.path(), "echo", &Behaviour::RejectWithConfig);
    let entry =
        move |config: serde_json::Value| example_plugins::spec("echo", path.clone(), config);
    let options = PluginOptions {
        cache_dir: dir.path().join("cache"),
        watch_interval: Duration::from_secs(3600),
        ..PluginOptions::default()
    };
    let stage = load_chain(&[entry(serde_json::json!({"v": 1}))], &options).unwrap();
    // What the operator's config file says now.
    let current = std::sync::Arc::new(std::sync::Mutex::new(serde_json::json!({"v": 1})));
    let source: kiln_proxy::plugins::SpecSource = {
        let current = current.clone();
        let entry = entry.clone();
        std::sync::Arc::new(move || Ok(vec![entry(current.lock().unwrap().clone())]))
    };
    let reloader = stage.spawn_reloader_with(Some(source));
    let request = || FilterRequest {
        route: RouteKind::OllamaChat,
        method: "POST".into(),
        path: "/api/chat".into(),
        headers: Vec::new(),
        body: b"{}".to_vec(),
        model: None,
    };
    assert_eq!(message(&stage.apply(request()).await), r#"{"v":1}"#);

    *current.lock().unwrap() = serde_json::json!({"v": 2});
    tokio::time::sleep(Duration::from_millis(200)).await;
    // SAFETY: kill(2) on our own pid with a signal a handler is installed for.
    assert_eq!(unsafe { libc::kill(libc::getpid(), libc::SIGHUP) }, 0);

    let deadline = Instant::now() + Duration::from_secs(10);
    while message(&stage.apply(request()).await) != r#"{"v":2}"# {
        assert!(
            Instant::now() < deadline,
            "SIGHUP did not apply the new plugin config within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    reloader.abort();
}

//! The `kiln-proxy` command line: config file, then KILN_* variables, then
//! flags; refused configurations exit 2 with one line saying what to fix.

use std::process::Command;

fn kiln_proxy() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kiln-proxy"));
    c.env_remove("PORT")
        .env_remove("KILN_CONFIG")
        .env("RUST_LOG", "error");
    c
}

/// The standard output of a command that must succeed (its stderr shown if not).
fn succeeded(out: std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An example plugin as `scripts/build-plugins` leaves it.
fn built_plugin(file: &str) -> std::path::PathBuf {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/plugins")
        .join(file);
    assert!(
        path.exists(),
        "{} is missing: run scripts/build-plugins first",
        path.display()
    );
    path
}

#[test]
fn flags_override_env_which_overrides_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("proxy.toml");
    std::fs::write(
        &file,
        "upstream = \"http://127.0.0.1:1111\"\n[limits]\nmax_queue = 2\nmax_in_flight = 3\n[ollama]\npreload = [\"gemma3:1b\"]\n",
    )
    .unwrap();
    let out = kiln_proxy()
        .arg("check-config")
        .arg("--config")
        .arg(&file)
        .args([
            "--upstream",
            "http://127.0.0.1:2222",
            "--preload",
            "gemma3:4b",
        ])
        .env("KILN_LIMITS_MAX_QUEUE", "9")
        .env("KILN_UPSTREAM", "http://127.0.0.1:3333")
        .env("PORT", "9000")
        .output()
        .unwrap();
    let stdout = succeeded(out);
    assert!(
        stdout.contains("listen 0.0.0.0:9000, upstream http://127.0.0.1:2222"),
        "{stdout}"
    );
    assert!(
        stdout.contains("max_queue: 9"),
        "env beats the file: {stdout}"
    );
    assert!(
        stdout.contains("max_in_flight: 3"),
        "the file beats defaults: {stdout}"
    );
    assert!(
        stdout.contains("\"gemma3:4b\""),
        "flags beat the file: {stdout}"
    );
}

#[test]
fn refused_configs_exit_2_with_the_key_to_fix() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("proxy.toml");
    std::fs::write(&file, "[limits]\nmax_inflight = 4\n").unwrap();
    let out = kiln_proxy().arg("--config").arg(&file).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("max_inflight"), "{stderr}");

    let out = kiln_proxy()
        .args(["--upstream", "https://example.com"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("upstream"));

    let out = kiln_proxy()
        .env("KILN_LIMITS_MAX_QUEUE", "lots")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("KILN_LIMITS_MAX_QUEUE"));
}

/// Where address space is limited (`ulimit -v`), guarded plugin memories
/// (6 GiB of address space each) cannot be reserved: plugins still load,
/// with bounds-checked memories, and the log says so.
#[test]
fn plugins_load_where_address_space_is_limited() {
    let plugin = built_plugin("hello.wasm");
    let out = Command::new("sh")
        .args(["-c", "ulimit -v 16000000 && exec \"$0\" \"$@\""])
        .arg(env!("CARGO_BIN_EXE_kiln-proxy"))
        .args(["plugin", "check"])
        .arg(&plugin)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("explicit bounds checks"), "{stderr}");
}

#[test]
fn out_of_range_limits_are_config_errors_not_panics() {
    for (set, key) in [
        (
            "limits.request_timeout_s=18446744073709551615",
            "limits.request_timeout_s",
        ),
        ("limits.idle_timeout_s=0", "limits.idle_timeout_s"),
        ("limits.max_buffered_bytes=10", "limits.max_buffered_bytes"),
        ("limits.max_other_in_flight=0", "limits.max_other_in_flight"),
    ] {
        let out = kiln_proxy()
            .args(["check-config", "--set", set])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{set}: {stderr}");
        assert!(
            stderr.contains(key) && !stderr.contains("panicked"),
            "{set}: {stderr}"
        );
    }
}

#[test]
fn check_config_does_not_print_plugin_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("proxy.toml");
    std::fs::write(
        &file,
        "metrics_token = \"tok-secret-1\"\n[[plugins]]\nname = \"api-key\"\npath = \"/plugins/api_key.wasm\"\n\
         [plugins.config]\nkeys = [\"sk-live-secret-2\", { name = \"ci\", key = \"sk-live-secret-3\" }]\nmax = 5\n",
    )
    .unwrap();
    let out = kiln_proxy()
        .arg("check-config")
        .arg("--config")
        .arg(&file)
        .output()
        .unwrap();
    let stdout = succeeded(out);
    for secret in ["tok-secret-1", "sk-live-secret-2", "sk-live-secret-3"] {
        assert!(!stdout.contains(secret), "{secret} printed:\n{stdout}");
    }
    assert!(
        stdout.contains("<redacted>") && stdout.contains("api-key"),
        "{stdout}"
    );
}

/// `plugin run --answer`: a recorded answer through a plugin's response
/// hooks, printed as the client would receive it, for each framing.
#[test]
fn plugin_run_replays_a_recorded_answer_through_the_response_hooks() {
    let guard = built_plugin("output_guard.wasm");
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "/api/generate",
            "answer.ndjson",
            "{\"model\":\"m\",\"response\":\"The sky is \",\"done\":false}\n{\"model\":\"m\",\"response\":\"blue.\",\"done\":false}\n{\"model\":\"m\",\"response\":\"\",\"done\":true,\"eval_count\":3}\n",
        ),
        (
            "/v1/chat/completions",
            "answer.sse",
            "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"The sky is \"},\"finish_reason\":null}]}\n\ndata: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"blue.\"},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n",
        ),
        (
            "/v1/messages",
            "answer.json",
            "{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[{\"type\":\"text\",\"text\":\"The sky is blue.\"}],\"stop_reason\":\"end_turn\",\"usage\":{\"input_tokens\":5,\"output_tokens\":4}}",
        ),
    ];
    for (route, name, recorded) in cases {
        let file = dir.path().join(name);
        std::fs::write(&file, recorded).unwrap();
        let out = kiln_proxy()
            .args(["plugin", "run"])
            .arg(&guard)
            .args(["--plugin-config", r#"{"patterns":["sky is"]}"#])
            .arg("--answer")
            .arg(&file)
            .args(["--path", route])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{route}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("[REDACTED]"), "{route}: {stdout}");
        assert!(!stdout.contains("sky is"), "{route}: {stdout}");
        assert!(stdout.contains("blue."), "{route}: {stdout}");
    }
    // A route whose answers no hook sees says so.
    let file = dir.path().join("answer.json");
    let out = kiln_proxy()
        .args(["plugin", "run"])
        .arg(&guard)
        .arg("--answer")
        .arg(&file)
        .args(["--path", "/api/embed"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("does not generate text"), "{stderr}");
}

#[test]
fn an_https_trace_endpoint_is_refused_with_what_to_do() {
    let out = kiln_proxy()
        .args([
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            "http://127.0.0.1:9",
        ])
        .env(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "https://collector.example:4318",
        )
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("OTEL_EXPORTER_OTLP_ENDPOINT") && stderr.contains("http://localhost:4318"),
        "{stderr}"
    );
}

/// The plugin tools run no proxy: a broken proxy configuration in the
/// environment does not stop them, and the proxy's flags are not theirs.
#[test]
fn plugin_tools_do_not_read_the_proxy_config() {
    let plugin = built_plugin("hello.wasm");
    let out = kiln_proxy()
        .args(["plugin", "check"])
        .arg(&plugin)
        .env("KILN_LIMITS_MAX_QUEUE", "not a number")
        .output()
        .unwrap();
    let stdout = succeeded(out);
    assert!(stdout.contains(": ok"), "{stdout}");
    let out = kiln_proxy()
        .args(["plugin", "check", "--upstream", "http://127.0.0.1:1"])
        .arg(&plugin)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--upstream"));
}

/// `kiln-proxy [FLAGS] check-config [FLAGS]`: both places count, the later wins.
#[test]
fn check_config_takes_flags_before_and_after_it() {
    let out = kiln_proxy()
        .args([
            "--set",
            "limits.max_queue=7",
            "--upstream",
            "http://127.0.0.1:1111",
        ])
        .args(["check-config", "--upstream", "http://127.0.0.1:2222"])
        .output()
        .unwrap();
    let stdout = succeeded(out);
    assert!(stdout.contains("max_queue: 7"), "{stdout}");
    assert!(
        stdout.contains("upstream http://127.0.0.1:2222"),
        "{stdout}"
    );

    // A --config before the subcommand still beats KILN_CONFIG.
    let dir = tempfile::tempdir().unwrap();
    let (from_env, from_flag) = (dir.path().join("env.toml"), dir.path().join("flag.toml"));
    std::fs::write(&from_env, "upstream = \"http://127.0.0.1:3333\"\n").unwrap();
    std::fs::write(&from_flag, "upstream = \"http://127.0.0.1:4444\"\n").unwrap();
    let out = kiln_proxy()
        .arg("--config")
        .arg(&from_flag)
        .arg("check-config")
        .env("KILN_CONFIG", &from_env)
        .output()
        .unwrap();
    let stdout = succeeded(out);
    assert!(
        stdout.contains("upstream http://127.0.0.1:4444"),
        "{stdout}"
    );
}

#[test]
fn a_reader_that_leaves_early_is_not_an_error() {
    // `kiln-proxy check-config | head -1`: the reader closed before the
    // output was written, so every write fails with EPIPE.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = kiln_proxy()
        .arg("check-config")
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
        .wait_with_output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

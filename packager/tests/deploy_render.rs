//! `kiln deploy render` writes Cloud Run YAML that follows the GPU service
//! rules; these tests parse the YAML and check each field against them.

use std::process::Command;

use kiln::deploy::{DeployOptions, Mode, render};
use serde_json::Value;

const IMAGE: &str = "us-central1-docker.pkg.dev/my-project/kiln/ollama-gemma:4b";

fn rendered(options: &DeployOptions) -> Value {
    let out = render(options).expect("valid options render");
    serde_yaml_ng::from_str(&out.yaml).expect("renderer emits valid YAML")
}

fn env_of(container: &Value) -> Vec<(String, String)> {
    container["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap().to_string(),
                e["value"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn env_value(container: &Value, name: &str) -> Option<String> {
    env_of(container)
        .into_iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v)
}

/// Every startup probe fits Cloud Run's strictest published limits: each
/// field ≤ 240 s, timeout ≤ period, and period × threshold ≤ 600 s.
fn assert_probe_within_limits(probe: &Value) {
    let period = probe["periodSeconds"].as_u64().unwrap();
    let timeout = probe["timeoutSeconds"].as_u64().unwrap();
    let threshold = probe["failureThreshold"].as_u64().unwrap();
    let delay = probe["initialDelaySeconds"].as_u64().unwrap_or(0);
    assert!(
        (1..=240).contains(&period) && (1..=240).contains(&timeout) && delay <= 240,
        "{probe}"
    );
    assert!(timeout <= period, "{probe}");
    assert!(period * threshold <= 600, "{probe}");
    assert!(
        period * threshold >= 300,
        "model loads need minutes: {probe}"
    );
}

#[test]
fn single_container_service_has_gpu_probes_and_tutorial_concurrency() {
    let options = DeployOptions {
        preload: vec!["gemma3:4b".into()],
        ..DeployOptions::new(IMAGE)
    };
    let doc = rendered(&options);
    assert_eq!(doc["apiVersion"], "serving.knative.dev/v1");
    assert_eq!(doc["kind"], "Service");
    assert_eq!(doc["metadata"]["name"], "ollama-gemma");
    let template = &doc["spec"]["template"];
    let annotations = &template["metadata"]["annotations"];
    assert_eq!(annotations["run.googleapis.com/cpu-throttling"], "false");
    assert_eq!(
        annotations["run.googleapis.com/gpu-zonal-redundancy-disabled"],
        "true"
    );
    assert_eq!(annotations["autoscaling.knative.dev/maxScale"], "1");
    assert!(
        annotations
            .get("run.googleapis.com/container-dependencies")
            .is_none()
    );
    let spec = &template["spec"];
    // The node selector is a pod-spec field, a sibling of containers.
    assert_eq!(
        spec["nodeSelector"]["run.googleapis.com/accelerator"],
        "nvidia-l4"
    );
    assert_eq!(spec["containerConcurrency"], 4);
    assert_eq!(spec["timeoutSeconds"], 600);
    let containers = spec["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1);
    let kiln = &containers[0];
    assert_eq!(kiln["image"], IMAGE);
    assert_eq!(kiln["ports"][0]["containerPort"], 8080);
    let limits = &kiln["resources"]["limits"];
    assert_eq!(limits["nvidia.com/gpu"], "1");
    assert_eq!(limits["cpu"], "8");
    assert_eq!(limits["memory"], "32Gi");
    assert_eq!(env_value(kiln, "OLLAMA_NUM_PARALLEL").as_deref(), Some("4"));
    assert_eq!(
        env_value(kiln, "KILN_OLLAMA_PRELOAD").as_deref(),
        Some("gemma3:4b")
    );
    assert_eq!(kiln["startupProbe"]["httpGet"]["path"], "/healthz/ready");
    assert_eq!(kiln["startupProbe"]["httpGet"]["port"], 8080);
    assert_probe_within_limits(&kiln["startupProbe"]);
    assert_eq!(kiln["livenessProbe"]["httpGet"]["path"], "/healthz/live");
}

#[test]
fn sidecar_service_puts_gpu_on_ollama_and_orders_startup() {
    let options = DeployOptions {
        mode: Mode::Sidecar,
        num_parallel: 2,
        concurrency: Some(3),
        ..DeployOptions::new(IMAGE)
    };
    let doc = rendered(&options);
    let template = &doc["spec"]["template"];
    let deps: Value = serde_json::from_str(
        template["metadata"]["annotations"]["run.googleapis.com/container-dependencies"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(deps, serde_json::json!({"proxy": ["ollama"]}));
    assert_eq!(template["spec"]["containerConcurrency"], 3);
    let containers = template["spec"]["containers"].as_array().unwrap();
    let proxy = containers.iter().find(|c| c["name"] == "proxy").unwrap();
    let ollama = containers.iter().find(|c| c["name"] == "ollama").unwrap();
    // Exactly one container exposes a port: the ingress.
    assert!(proxy["ports"].is_array());
    assert!(ollama.get("ports").is_none());
    // Exactly one container has the GPU: Ollama.
    assert!(proxy["resources"]["limits"].get("nvidia.com/gpu").is_none());
    assert_eq!(ollama["resources"]["limits"]["nvidia.com/gpu"], "1");
    // Together they stay within the instance size asked for.
    assert_eq!(ollama["resources"]["limits"]["cpu"], "7");
    assert_eq!(ollama["resources"]["limits"]["memory"], "31Gi");
    assert_eq!(
        env_value(ollama, "OLLAMA_HOST").as_deref(),
        Some("127.0.0.1:11434")
    );
    assert_eq!(
        env_value(ollama, "OLLAMA_NUM_PARALLEL").as_deref(),
        Some("2")
    );
    assert_eq!(
        env_value(proxy, "KILN_UPSTREAM").as_deref(),
        Some("http://127.0.0.1:11434")
    );
    assert_eq!(
        env_value(proxy, "OLLAMA_NUM_PARALLEL").as_deref(),
        Some("2")
    );
    // container-dependencies waits only on containers with a startup probe.
    assert_probe_within_limits(&ollama["startupProbe"]);
    assert_probe_within_limits(&proxy["startupProbe"]);
}

fn kiln(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn cli_prints_yaml_on_stdout_and_gcloud_command_on_stderr() {
    let out = kiln(&["deploy", "render", "--image", IMAGE, "--max-instances", "3"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: Value = serde_yaml_ng::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["kind"], "Service");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("gcloud run deploy ollama-gemma"),
        "{stderr}"
    );
    for flag in [
        "--gpu 1",
        "--gpu-type nvidia-l4",
        "--no-cpu-throttling",
        "--concurrency 4",
        "--no-allow-unauthenticated",
    ] {
        assert!(stderr.contains(flag), "missing {flag}: {stderr}");
    }
    assert!(!stderr.contains("warning"), "{stderr}");
}

#[test]
fn a_reader_that_leaves_early_is_not_an_error() {
    // `kiln deploy render … | head -3`: the reader closed before the YAML
    // was written, so every write fails with EPIPE.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["deploy", "render", "--image", IMAGE])
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

#[test]
fn cli_warns_above_num_parallel_and_refuses_above_twice() {
    let warn = kiln(&[
        "deploy",
        "render",
        "--image",
        IMAGE,
        "--concurrency",
        "6",
        "--max-instances",
        "3",
    ]);
    assert!(warn.status.success());
    assert!(
        String::from_utf8_lossy(&warn.stderr)
            .contains("warning: --concurrency 6 is above --num-parallel 4")
    );

    let refused = kiln(&["deploy", "render", "--image", IMAGE, "--concurrency", "9"]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(refused.stdout.is_empty(), "no YAML on refusal");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("more than twice --num-parallel 4") && stderr.contains("at most 8"),
        "{stderr}"
    );
}

#[test]
fn cli_writes_output_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("service.yaml");
    let out = kiln(&[
        "deploy",
        "render",
        "--image",
        IMAGE,
        "--mode",
        "sidecar",
        "-o",
        path.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    assert!(out.stdout.is_empty());
    let doc: Value = serde_yaml_ng::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(
        doc["spec"]["template"]["spec"]["containers"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
}

/// The example files in deploy/ are exactly what the documented command renders.
#[test]
fn deploy_examples_match_the_renderer() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for (file, mode, extra) in [
        ("service.yaml", "single", &[][..]),
        ("service-sidecar.yaml", "sidecar", &[]),
        (
            "service-traced.yaml",
            "single",
            &["--trace-collector-config", "kiln-otel-config"],
        ),
    ] {
        let mut args = vec![
            "deploy",
            "render",
            "--image",
            "us-central1-docker.pkg.dev/PROJECT/kiln/ollama-gemma:4b",
            "--preload",
            "gemma3:4b",
            "--max-instances",
            "3",
            "--mode",
            mode,
        ];
        args.extend_from_slice(extra);
        let out = kiln(&args);
        assert!(out.status.success());
        let committed = std::fs::read_to_string(root.join("deploy").join(file)).unwrap();
        assert_eq!(
            String::from_utf8(out.stdout).unwrap(),
            committed,
            "deploy/{file} is stale; regenerate it with: kiln deploy render --image \
             us-central1-docker.pkg.dev/PROJECT/kiln/ollama-gemma:4b --preload gemma3:4b --max-instances 3 \
             --mode {mode} {} -o deploy/{file}",
            extra.join(" ")
        );
    }
}

/// Shared counters on Memorystore: Direct VPC egress annotations, the Redis
/// URL and password as secret references (never values), the CA mounted
/// from a secret, and the same in the gcloud command.
#[test]
fn shared_counters_come_from_secrets_over_direct_vpc_egress() {
    for mode in [Mode::Single, Mode::Sidecar] {
        let mut o = DeployOptions::new(IMAGE);
        o.mode = mode;
        o.max_instances = 3;
        o.network = Some("default".into());
        o.subnet = Some("run-subnet".into());
        o.counters_url_secret = Some("kiln-redis-url".parse().unwrap());
        o.counters_password_secret = Some("kiln-redis-auth:2".parse().unwrap());
        o.counters_ca_secret = Some("kiln-redis-ca".parse().unwrap());
        let out = render(&o).unwrap();
        assert!(
            out.warnings.iter().all(|w| !w.contains("count")),
            "{:?}",
            out.warnings
        );
        let doc: Value = serde_yaml_ng::from_str(&out.yaml).unwrap();
        let template = &doc["spec"]["template"];
        let annotations = &template["metadata"]["annotations"];
        let interfaces: Value = serde_json::from_str(
            annotations["run.googleapis.com/network-interfaces"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(
            interfaces,
            serde_json::json!([{"network": "default", "subnetwork": "run-subnet"}])
        );
        assert_eq!(
            annotations["run.googleapis.com/vpc-access-egress"],
            "private-ranges-only"
        );
        let proxy = &template["spec"]["containers"][0];
        let env = proxy["env"].as_array().unwrap();
        let by_name = |n: &str| {
            env.iter()
                .find(|e| e["name"] == n)
                .unwrap_or_else(|| panic!("no {n}"))
        };
        assert_eq!(
            by_name("KILN_COUNTERS_URL")["valueFrom"]["secretKeyRef"],
            serde_json::json!({"name": "kiln-redis-url", "key": "latest"})
        );
        assert_eq!(
            by_name("KILN_COUNTERS_PASSWORD")["valueFrom"]["secretKeyRef"],
            serde_json::json!({"name": "kiln-redis-auth", "key": "2"})
        );
        assert!(
            by_name("KILN_COUNTERS_URL").get("value").is_none(),
            "never a literal"
        );
        let ca_file = by_name("KILN_COUNTERS_CA_FILE")["value"].as_str().unwrap();
        let mount = proxy["volumeMounts"][0]["mountPath"].as_str().unwrap();
        assert!(ca_file.starts_with(mount), "{ca_file} under {mount}");
        let volume = &template["spec"]["volumes"][0];
        assert_eq!(volume["name"], proxy["volumeMounts"][0]["name"]);
        assert_eq!(volume["secret"]["secretName"], "kiln-redis-ca");
        for flag in [
            "--network default",
            "--subnet run-subnet",
            "--vpc-egress private-ranges-only",
            "--set-secrets KILN_COUNTERS_URL=kiln-redis-url:latest,KILN_COUNTERS_PASSWORD=kiln-redis-auth:2",
        ] {
            assert!(
                out.gcloud.contains(flag),
                "{mode:?}: missing {flag}: {}",
                out.gcloud
            );
        }
    }
}

#[test]
fn several_instances_counting_alone_are_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("proxy.toml");
    std::fs::write(
        &config,
        "[[plugins]]\nname = \"rate-limit\"\npath = \"/plugins/rate_limit.wasm\"\n[plugins.config]\nrequests_per_minute = 10\n",
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let base = [
        "deploy",
        "render",
        "--image",
        IMAGE,
        "--proxy-config",
        config,
    ];
    let warned = |extra: &[&str]| {
        let out = kiln(&[&base[..], extra].concat());
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stderr).contains("each instance counts alone")
    };
    assert!(
        warned(&["--max-instances", "3"]),
        "3 instances, rate-limit, no shared counters"
    );
    assert!(
        !warned(&["--max-instances", "1"]),
        "one instance counts for all"
    );
    assert!(!warned(&[
        "--max-instances",
        "3",
        "--network",
        "default",
        "--counters-url-secret",
        "kiln-redis-url",
    ]));
    let refused = kiln(
        &[
            &base[..],
            &["--counters-url-secret", "rediss://10.0.0.3:6378"],
        ]
        .concat(),
    );
    assert_eq!(
        refused.status.code(),
        Some(2),
        "a URL where a secret name belongs"
    );
}

/// Traces on: the collector runs beside the GPU container with its config
/// from the secret, takes its CPU and memory from the instance's, starts
/// first, and kiln-proxy exports to it; in both modes.
#[test]
fn traces_add_the_collector_sidecar_from_its_secret() {
    for (mode, proxy, gpu) in [(Mode::Single, "kiln", 0), (Mode::Sidecar, "proxy", 1)] {
        let mut o = DeployOptions::new(IMAGE);
        o.mode = mode;
        o.trace_collector_config = Some("kiln-otel-config:3".parse().unwrap());
        let out = render(&o).unwrap();
        let doc: Value = serde_yaml_ng::from_str(&out.yaml).unwrap();
        let template = &doc["spec"]["template"];
        let containers = template["spec"]["containers"].as_array().unwrap();
        let collector = containers
            .iter()
            .find(|c| c["name"] == "collector")
            .expect("a collector");
        assert_eq!(
            collector["volumeMounts"][0]["mountPath"],
            "/etc/otelcol-google/"
        );
        let volume = &template["spec"]["volumes"][0];
        assert_eq!(volume["secret"]["secretName"], "kiln-otel-config");
        assert_eq!(volume["secret"]["items"][0]["key"], "3");
        let deps: Value = serde_json::from_str(
            template["metadata"]["annotations"]["run.googleapis.com/container-dependencies"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
        assert!(
            deps[proxy]
                .as_array()
                .unwrap()
                .iter()
                .any(|d| d == "collector"),
            "{deps}"
        );
        let proxy_c = containers.iter().find(|c| c["name"] == proxy).unwrap();
        let env = proxy_c["env"].as_array().unwrap();
        assert!(
            env.iter()
                .any(|e| e["name"] == "OTEL_EXPORTER_OTLP_ENDPOINT"
                    && e["value"] == "http://localhost:4318")
        );
        // The GPU container gives the collector 1 vCPU and 1Gi of the instance's 8 and 32Gi.
        let limits = &containers[gpu]["resources"]["limits"];
        let (cpu, memory) = if mode == Mode::Single {
            ("7", "31Gi")
        } else {
            ("6", "30Gi")
        };
        assert_eq!(
            (limits["cpu"].as_str(), limits["memory"].as_str()),
            (Some(cpu), Some(memory))
        );
        assert!(
            out.gcloud
                .contains("--set-secrets /etc/otelcol-google/config.yaml=kiln-otel-config:3"),
            "{}",
            out.gcloud
        );
        assert!(out.gcloud.contains("collector"), "{}", out.gcloud);
    }
}

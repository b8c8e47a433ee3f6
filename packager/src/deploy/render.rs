//! Renders the Cloud Run service (Knative v1 YAML, what
//! `gcloud run services replace` takes) and the equivalent `gcloud run deploy`.

use serde_json::{Value, json};

use super::counters;
use super::rules::{self, RuleError};
use super::traces;
use super::{DeployOptions, Mode};
use crate::pack::layer_plan::PROXY_BIN;

/// Port kiln-proxy listens on: Cloud Run's default `$PORT`.
const PROXY_PORT: u16 = 8080;
/// Ollama's address behind the proxy; loopback, so only the proxy reaches it.
const OLLAMA_ADDR: &str = "127.0.0.1:11434";
/// Startup probe: each field stays ≤ 240 s (the strictest limit published for
/// Cloud Run), and the length comes from `failureThreshold`: 5 s × 120 = 10
/// minutes for the image to start and the model to reach VRAM.
const PROBE_PERIOD_S: u32 = 5;
const PROBE_FAILURES: u32 = 120;

/// The service YAML, the equivalent gcloud command, and warnings for the user.
#[derive(Debug)]
pub struct Rendered {
    pub yaml: String,
    pub gcloud: String,
    pub warnings: Vec<String>,
}

pub fn render(options: &DeployOptions) -> Result<Rendered, RuleError> {
    let mut warnings = rules::check(options)?;
    warnings.extend(counters::warnings(options));
    let service = service(options);
    let yaml = serde_yaml_ng::to_string(&service).expect("a JSON value always serializes to YAML");
    Ok(Rendered {
        yaml,
        gcloud: gcloud_command(options),
        warnings,
    })
}

fn service(o: &DeployOptions) -> Value {
    let mut template_annotations = json!({
        "autoscaling.knative.dev/maxScale": o.max_instances.to_string(),
        // GPU instances need instance-based billing: CPU always allocated.
        "run.googleapis.com/cpu-throttling": "false",
        "run.googleapis.com/gpu-zonal-redundancy-disabled": "true",
        "run.googleapis.com/startup-cpu-boost": "true",
    });
    counters::vpc_annotations(o, &mut template_annotations);
    let (mut containers, proxy, mut waits_for) = match o.mode {
        Mode::Single => (vec![single_container(o)], "kiln", vec![]),
        // The proxy starts only once Ollama's startup probe passed.
        Mode::Sidecar => (
            vec![sidecar_proxy(o), sidecar_ollama(o)],
            "proxy",
            vec!["ollama"],
        ),
    };
    if let Some(collector) = traces::collector(o) {
        containers.push(collector);
        waits_for.push(traces::COLLECTOR);
    }
    if !waits_for.is_empty() {
        template_annotations["run.googleapis.com/container-dependencies"] =
            json!(json!({ proxy: waits_for }).to_string());
    }
    let mut spec = json!({
        "containerConcurrency": o.concurrency(),
        "timeoutSeconds": o.timeout_s,
        "nodeSelector": {"run.googleapis.com/accelerator": o.gpu_type},
        "containers": containers,
    });
    if let Some(account) = &o.service_account {
        spec["serviceAccountName"] = json!(account);
    }
    let volumes: Vec<Value> = counters::ca_volume(o)
        .map(|(volume, _)| volume)
        .into_iter()
        .chain(traces::config_volume(o))
        .collect();
    if !volumes.is_empty() {
        spec["volumes"] = json!(volumes);
    }
    json!({
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": {
            "name": o.service,
            "labels": {"cloud.googleapis.com/location": o.region},
            "annotations": {"run.googleapis.com/ingress": "all"},
        },
        "spec": {
            "template": {
                "metadata": {"annotations": template_annotations},
                "spec": spec,
            },
        },
    })
}

/// One container: kiln-proxy (the image's entrypoint) supervises `ollama serve`.
fn single_container(o: &DeployOptions) -> Value {
    let (gpu_cpu, gpu_memory) = less_collector(o, o.cpu, o.memory.clone());
    with_counters(
        o,
        json!({
            "name": "kiln",
            "image": o.image,
            "ports": [{"name": "http1", "containerPort": PROXY_PORT}],
            "env": env_list(&proxy_env(o)),
            "resources": {"limits": gpu_limits(gpu_cpu, &gpu_memory)},
            "startupProbe": proxy_startup_probe(),
            "livenessProbe": proxy_liveness_probe(),
        }),
    )
}

/// The shared counters' secrets (env from secret references) and CA mount
/// on the kiln-proxy container.
fn with_counters(o: &DeployOptions, mut container: Value) -> Value {
    if let Some(env) = container["env"].as_array_mut() {
        env.extend(counters::secret_env(o));
    }
    if let Some((_, mount)) = counters::ca_volume(o) {
        container["volumeMounts"] = json!([mount]);
    }
    container
}

/// Ingress container in sidecar mode: kiln-proxy only, forwarding to the sidecar.
fn sidecar_proxy(o: &DeployOptions) -> Value {
    with_counters(
        o,
        json!({
            "name": "proxy",
            "image": o.proxy_image.as_deref().unwrap_or(&o.image),
            "command": [PROXY_BIN],
            "ports": [{"name": "http1", "containerPort": PROXY_PORT}],
            "env": env_list(&proxy_env(o)),
            "resources": {"limits": {"cpu": "1", "memory": "1Gi"}},
            "startupProbe": proxy_startup_probe(),
            "livenessProbe": proxy_liveness_probe(),
        }),
    )
}

/// GPU sidecar in sidecar mode: `ollama serve` on loopback, no ports exposed.
fn sidecar_ollama(o: &DeployOptions) -> Value {
    let (cpu, memory) = sidecar_ollama_resources(o);
    json!({
        "name": "ollama",
        "image": o.image,
        "command": ["/bin/ollama"],
        "args": ["serve"],
        "env": env_list(&ollama_sidecar_env(o)),
        "resources": {"limits": gpu_limits(cpu, &memory)},
        // Ollama answers `GET /` once it serves; container-dependencies waits on this probe.
        "startupProbe": {
            "httpGet": {"path": "/", "port": 11434},
            "periodSeconds": PROBE_PERIOD_S,
            "timeoutSeconds": PROBE_PERIOD_S,
            "failureThreshold": PROBE_FAILURES,
        },
    })
}

/// The proxy container takes one CPU and 1 GiB (and the collector as much,
/// when traces are on); the rest of the instance is Ollama's.
fn sidecar_ollama_resources(o: &DeployOptions) -> (u32, String) {
    let (cpu, memory) = less(o.cpu, &o.memory, 1, 1);
    less_collector(o, cpu, memory)
}

/// `cpu` and `memory` less what the trace collector takes, when it runs.
fn less_collector(o: &DeployOptions, cpu: u32, memory: String) -> (u32, String) {
    match o.trace_collector_config {
        Some(_) => less(cpu, &memory, traces::COLLECTOR_CPU, traces::COLLECTOR_GIB),
        None => (cpu, memory),
    }
}

/// `cpu` less `cpus`, and `memory` (in Gi; checked by the rules) less `gib`.
fn less(cpu: u32, memory: &str, cpus: u32, gib: u32) -> (u32, String) {
    let memory = match memory
        .strip_suffix("Gi")
        .and_then(|g| g.parse::<u32>().ok())
    {
        Some(total) => format!("{}Gi", total - gib),
        None => memory.to_string(),
    };
    (cpu - cpus, memory)
}

fn gpu_limits(cpu: u32, memory: &str) -> Value {
    json!({"cpu": cpu.to_string(), "memory": memory, "nvidia.com/gpu": "1"})
}

/// Ready only once the preloaded models are in VRAM, so Cloud Run sends no
/// request to an instance that would make it wait for a model load.
fn proxy_startup_probe() -> Value {
    json!({
        "httpGet": {"path": "/healthz/ready", "port": PROXY_PORT},
        "initialDelaySeconds": 0,
        "periodSeconds": PROBE_PERIOD_S,
        "timeoutSeconds": PROBE_PERIOD_S,
        "failureThreshold": PROBE_FAILURES,
    })
}

fn proxy_liveness_probe() -> Value {
    json!({
        "httpGet": {"path": "/healthz/live", "port": PROXY_PORT},
        "periodSeconds": 30,
        "timeoutSeconds": 5,
        "failureThreshold": 3,
    })
}

/// Environment of the kiln-proxy container.
fn proxy_env(o: &DeployOptions) -> Vec<(&'static str, String)> {
    let mut env = match o.mode {
        Mode::Single => vec![("KILN_OLLAMA_SPAWN", "true".to_string())],
        Mode::Sidecar => vec![
            ("KILN_UPSTREAM", format!("http://{OLLAMA_ADDR}")),
            ("KILN_OLLAMA_SPAWN", "false".to_string()),
        ],
    };
    // kiln-proxy admits as many requests as Ollama serves in parallel; Cloud
    // Run never sends more than `concurrency`, so a queue that size never
    // refuses a request Cloud Run routed here (only races around a release).
    env.push(("OLLAMA_NUM_PARALLEL", o.num_parallel.to_string()));
    env.push(("KILN_LIMITS_MAX_IN_FLIGHT", o.num_parallel.to_string()));
    env.push(("KILN_LIMITS_MAX_QUEUE", o.concurrency().to_string()));
    if !o.preload.is_empty() {
        env.push(("KILN_OLLAMA_PRELOAD", o.preload.join(",")));
    }
    env.extend(counters::ca_file_env(o));
    env.extend(traces::proxy_env(o));
    env
}

/// Environment of the Ollama sidecar container.
fn ollama_sidecar_env(o: &DeployOptions) -> Vec<(&'static str, String)> {
    vec![
        ("OLLAMA_HOST", OLLAMA_ADDR.to_string()),
        ("OLLAMA_NUM_PARALLEL", o.num_parallel.to_string()),
        ("OLLAMA_KEEP_ALIVE", "-1".to_string()),
    ]
}

fn env_list(env: &[(&str, String)]) -> Value {
    env.iter()
        .map(|(name, value)| json!({"name": name, "value": value}))
        .collect()
}

/// `--set-env-vars` for gcloud; `^;^` switches its list separator when a value
/// has commas, and single quotes keep the shell away from the `;`.
fn env_flag(env: &[(&str, String)]) -> String {
    let pairs: Vec<String> = env
        .iter()
        .map(|(name, value)| format!("{name}={value}"))
        .collect();
    if env.iter().any(|(_, value)| value.contains(',')) {
        format!("--set-env-vars '^;^{}'", pairs.join(";"))
    } else {
        format!("--set-env-vars {}", pairs.join(","))
    }
}

/// The same service as flags, for people who prefer `gcloud run deploy`.
fn gcloud_command(o: &DeployOptions) -> String {
    let mut args: Vec<String> = vec![
        format!("gcloud run deploy {}", o.service),
        format!("--region {}", o.region),
        format!("--concurrency {}", o.concurrency()),
        format!("--max-instances {}", o.max_instances),
        format!("--timeout {}", o.timeout_s),
        "--no-cpu-throttling".into(),
        "--no-allow-unauthenticated".into(),
    ];
    if let Some(account) = &o.service_account {
        args.push(format!("--service-account {account}"));
    }
    args.extend(counters::gcloud_service_flags(o));
    let probe = format!(
        "httpGet.path=/healthz/ready,httpGet.port={PROXY_PORT},periodSeconds={PROBE_PERIOD_S},\
         timeoutSeconds={PROBE_PERIOD_S},failureThreshold={PROBE_FAILURES}"
    );
    let gpu = format!(
        "--gpu 1 --gpu-type {} --no-gpu-zonal-redundancy",
        o.gpu_type
    );
    match o.mode {
        Mode::Single => {
            let (cpu, memory) = less_collector(o, o.cpu, o.memory.clone());
            // With a collector beside it, the proxy's flags name their container.
            if o.trace_collector_config.is_some() {
                args.push("--container kiln".into());
            }
            args.extend([
                format!("--image {}", o.image),
                format!("--port {PROXY_PORT}"),
                format!("--cpu {cpu} --memory {memory}"),
                gpu,
                env_flag(&proxy_env(o)),
            ]);
            args.extend(counters::gcloud_proxy_flags(o));
            if o.trace_collector_config.is_some() {
                args.push(format!("--depends-on {}", traces::COLLECTOR));
            }
            args.push(format!("--startup-probe {probe}"));
        }
        Mode::Sidecar => {
            args.extend([
                "--container proxy".into(),
                format!("--image {}", o.proxy_image.as_deref().unwrap_or(&o.image)),
                format!("--command {PROXY_BIN}"),
                format!("--port {PROXY_PORT}"),
                "--cpu 1 --memory 1Gi".into(),
                env_flag(&proxy_env(o)),
            ]);
            args.extend(counters::gcloud_proxy_flags(o));
            let (cpu, memory) = sidecar_ollama_resources(o);
            let waits = match o.trace_collector_config {
                Some(_) => format!("--depends-on ollama,{}", traces::COLLECTOR),
                None => "--depends-on ollama".into(),
            };
            args.extend([
                waits,
                format!("--startup-probe {probe}"),
                "--container ollama".into(),
                format!("--image {}", o.image),
                "--command /bin/ollama --args serve".into(),
                format!("--cpu {cpu} --memory {memory}"),
                gpu,
                env_flag(&ollama_sidecar_env(o)),
            ]);
        }
    }
    args.extend(traces::gcloud_flags(o));
    args.join(" \\\n  ")
}

//! The test registry is real: independent tools (skopeo) read what we seed,
//! in every auth mode.

use std::process::Command;

use kiln_testkit::{Auth, ModelSpec, TestRegistry, require_tool};
use serde_json::Value;

fn skopeo_inspect(registry: &TestRegistry, reference: &str, extra: &[&str]) -> Value {
    let skopeo = require_tool("skopeo", "skopeo").unwrap();
    let mut cmd = Command::new(skopeo);
    cmd.args(["inspect", "--tls-verify=false"]);
    if let Some((user, password)) = registry.auth().credentials() {
        cmd.arg(format!("--creds={user}:{password}"));
    }
    cmd.args(extra)
        .arg(format!("docker://{}/{reference}", registry.host()));
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "skopeo inspect failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn skopeo_reads_seeded_ollama_model() {
    let registry = TestRegistry::start(Auth::Anonymous).unwrap();
    let model = registry
        .seed_ollama_model(
            "library/gemma3",
            "4b",
            &ModelSpec {
                weights_size: 3 << 20,
                ..Default::default()
            },
        )
        .unwrap();
    let raw = skopeo_inspect(&registry, "library/gemma3:4b", &["--raw"]);
    // The registry serves the manifest bytes exactly as seeded.
    let (media_type, bytes) = registry.get_manifest("library/gemma3", "4b").unwrap();
    assert_eq!(media_type, kiln_testkit::seed::DOCKER_MANIFEST);
    assert_eq!(bytes, model.manifest);
    let layers = raw["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 4);
    assert_eq!(layers[0]["mediaType"], "application/vnd.ollama.image.model");
    assert_eq!(layers[0]["size"], 3 << 20);
    assert_eq!(layers[0]["digest"], model.layers[0].digest.as_str());
    // And the weights blob has the advertised digest.
    let weights = registry
        .get_blob("library/gemma3", &model.layers[0].digest)
        .unwrap();
    assert_eq!(kiln_testkit::digest_of(&weights), model.layers[0].digest);
    assert!(weights.starts_with(b"GGUF"));
    // The access log is readable, so tests can assert on request sequences.
    let requests = registry.requests();
    assert!(
        requests.contains(&(
            "PUT".to_string(),
            "/v2/library/gemma3/manifests/4b".to_string()
        )),
        "manifest PUT missing from the access log: {requests:?}"
    );
}

#[test]
fn skopeo_resolves_each_platform_of_seeded_base() {
    let registry = TestRegistry::start(Auth::Anonymous).unwrap();
    let base = registry.seed_base_image("ollama/ollama", "latest").unwrap();
    for arch in ["amd64", "arm64"] {
        let info = skopeo_inspect(
            &registry,
            "ollama/ollama:latest",
            &["--override-os=linux", &format!("--override-arch={arch}")],
        );
        let platform = base.platform(arch).unwrap();
        assert_eq!(info["Architecture"], arch);
        // skopeo reports the digest the tag points at: the manifest list.
        assert_eq!(info["Digest"], base.index_digest.as_str());
        let layers: Vec<&str> = info["Layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l.as_str().unwrap())
            .collect();
        let expected: Vec<&str> = platform.layers.iter().map(|l| l.digest.as_str()).collect();
        assert_eq!(layers, expected);
    }
}

#[test]
fn basic_auth_registry_refuses_anonymous_and_accepts_credentials() {
    let registry = TestRegistry::start(Auth::basic()).unwrap();
    let anonymous = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!("{}/v2/", registry.url()))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&anonymous.stdout), "401");
    registry
        .seed_ollama_model("library/gemma3", "1b", &ModelSpec::default())
        .unwrap();
    let raw = skopeo_inspect(&registry, "library/gemma3:1b", &["--raw"]);
    assert_eq!(raw["mediaType"], kiln_testkit::seed::DOCKER_MANIFEST);
}

#[test]
fn bearer_registry_sends_clients_to_the_token_endpoint() {
    let registry = TestRegistry::start(Auth::bearer()).unwrap();
    registry
        .seed_ollama_model("library/gemma3", "1b", &ModelSpec::default())
        .unwrap();
    let raw = skopeo_inspect(&registry, "library/gemma3:1b", &["--raw"]);
    assert_eq!(raw["schemaVersion"], 2);
    let token_requests = registry.token_requests();
    assert!(
        token_requests.iter().any(|q| q.contains("scope=repository")
            && q.contains("library%2Fgemma3")
            || q.contains("library/gemma3")),
        "skopeo should have asked for a token scoped to the repository: {token_requests:?}"
    );
}

#[test]
fn registry_stops_when_dropped() {
    let registry = TestRegistry::start(Auth::Anonymous).unwrap();
    let addr = registry.addr();
    drop(registry);
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "registry still listening after drop"
    );
}

//! Credentials found the way the container ecosystem stores them: the docker
//! config's `credHelpers` (a `docker-credential-<name>` program) for the push
//! target, and its `auths` for the base image's registry.

mod pack_support;

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::process::{Command, Stdio};

use base64::Engine as _;
use kiln_testkit::{Auth, ModelSpec, TestRegistry};

#[test]
fn pack_uses_cred_helpers_and_auths_from_docker_config() {
    // Model and base behind Basic auth; the target behind a Bearer token flow.
    let source = TestRegistry::start(Auth::basic()).expect("source");
    let spec = ModelSpec {
        weights_size: 1 << 20,
        ..ModelSpec::default()
    };
    source
        .seed_ollama_model("library/gemma3", "4b", &spec)
        .expect("model");
    source
        .seed_base_image("ollama/ollama", "latest")
        .expect("base");
    let target = TestRegistry::start(Auth::bearer()).expect("target");
    let (source_user, source_pass) = source.auth().credentials().expect("basic creds");
    let (target_user, target_pass) = target.auth().credentials().expect("bearer creds");

    let home = tempfile::tempdir().expect("home");
    let bin = home.path().join("bin");
    fs::create_dir_all(&bin).expect("bin");
    // A credential helper as docker runs it: `get`, server on stdin, JSON out.
    let helper = bin.join("docker-credential-kilntest");
    fs::write(
        &helper,
        format!(
            "#!/bin/sh\n[ \"$1\" = get ] || exit 1\nread server\necho \"$server\" >> \"$(dirname \"$0\")/asked\"\n\
             printf '{{\"ServerURL\":\"%s\",\"Username\":\"{target_user}\",\"Secret\":\"{target_pass}\"}}' \"$server\"\n"
        ),
    )
    .expect("helper");
    fs::set_permissions(&helper, fs::Permissions::from_mode(0o755)).expect("chmod");
    let auth =
        base64::engine::general_purpose::STANDARD.encode(format!("{source_user}:{source_pass}"));
    let docker = home.path().join(".docker");
    fs::create_dir_all(&docker).expect("docker dir");
    let config = serde_json::json!({
        "auths": {source.host(): {"auth": auth}},
        "credHelpers": {target.host(): "kilntest"},
    });
    fs::write(docker.join("config.json"), config.to_string()).expect("config");

    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let image = format!("{}/kiln/gemma:4b", target.host());
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args([
            "pack",
            "gemma3:4b",
            "--source-registry",
            &source.url(),
            "--progress",
            "quiet",
        ])
        .args([
            "--base",
            &format!("{}/ollama/ollama:latest", source.host()),
            "--push",
            &image,
        ])
        .env("HOME", home.path())
        .env("PATH", path)
        .env("DOCKER_CONFIG", &docker)
        .env("XDG_CACHE_HOME", home.path().join("cache"))
        // The model pull takes its credentials from the environment.
        .env("KILN_REGISTRY_USERNAME", source_user)
        .env("KILN_REGISTRY_PASSWORD", source_pass)
        .stdin(Stdio::null())
        .output()
        .expect("kiln");
    let printed = pack_support::ok(&out);
    assert!(
        printed.starts_with(&format!("{image}@sha256:")),
        "{printed}"
    );
    let asked = fs::read_to_string(bin.join("asked")).expect("the helper was run");
    assert!(
        asked.lines().all(|l| l == target.host()),
        "helper asked only for the target: {asked}"
    );
    // The token endpoint saw the helper's credentials and a push scope.
    assert!(
        target.token_requests().iter().any(|q| q.contains("push")),
        "no push-scoped token request: {:?}",
        target.token_requests()
    );
    assert!(target.get_manifest("kiln/gemma", "4b").is_ok());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains(target_pass) && !stderr.contains(source_pass),
        "secrets printed: {stderr}"
    );
}

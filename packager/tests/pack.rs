//! `kiln pack` end to end, as a user runs it: the `kiln` binary against a real
//! `docker-registry` on loopback (anonymous, Basic, Bearer), checked with
//! independent tools (skopeo, umoci) and the registry's own access log.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use kiln_testkit::{Auth, ModelSpec, SeededBase, SeededModel, TestRegistry, require_tool};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

const MIB: u64 = 1 << 20;

/// A loopback registry seeded with `library/gemma3:4b` and a two-platform `ollama/ollama:latest`.
struct World {
    registry: TestRegistry,
    model: SeededModel,
    base: SeededBase,
    home: tempfile::TempDir,
}

impl World {
    fn start(auth: Auth) -> World {
        let registry = TestRegistry::start(auth).expect("registry");
        let spec = ModelSpec {
            weights_size: 3 * MIB,
            seed: 7,
            ..ModelSpec::default()
        };
        let model = registry
            .seed_ollama_model("library/gemma3", "4b", &spec)
            .expect("seed model");
        let base = registry
            .seed_base_image("ollama/ollama", "latest")
            .expect("seed base");
        let home = tempfile::tempdir().expect("home");
        World {
            registry,
            model,
            base,
            home,
        }
    }

    fn host(&self) -> String {
        self.registry.host()
    }

    /// Runs `kiln pack gemma3:4b` from this registry with extra args; Basic and
    /// Bearer registries get credentials the way users pass them.
    fn pack(&self, extra: &[&str]) -> Output {
        let base = format!("{}/ollama/ollama:latest", self.host());
        let mut args = vec![
            "pack".to_string(),
            "gemma3:4b".into(),
            "--source-registry".into(),
            self.registry.url(),
            "--base".into(),
            base,
            "--progress".into(),
            "quiet".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let creds = self.registry.auth().credentials();
        if creds.is_some() && extra.contains(&"--push") {
            args.extend([
                "--username".into(),
                creds.map(|c| c.0.to_string()).unwrap_or_default(),
                "--password-stdin".into(),
            ]);
        }
        kiln(&args, self.home.path(), creds, creds.map(|c| c.1))
    }

    fn skopeo(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(require_tool("skopeo", "skopeo").expect("skopeo"));
        cmd.args(args);
        if let Some((user, password)) = self.registry.auth().credentials() {
            let flag = if args[0] == "copy" {
                "--src-creds"
            } else {
                "--creds"
            };
            cmd.arg(format!("{flag}={user}:{password}"));
        }
        cmd.output().expect("running skopeo")
    }

    /// Blob uploads in the access log: (POST to uploads, PUT, PATCH) counts.
    fn uploads(&self) -> (usize, usize, usize) {
        let requests = self.registry.requests();
        let count = |m: &str, part: &str| {
            requests
                .iter()
                .filter(|(method, uri)| method == m && uri.contains(part))
                .count()
        };
        (
            count("POST", "/blobs/uploads/"),
            count("PUT", "/blobs/uploads/"),
            count("PATCH", ""),
        )
    }
}

/// Runs the kiln binary with a private HOME/cache/docker config.
fn kiln(args: &[String], home: &Path, creds: Option<(&str, &str)>, stdin: Option<&str>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kiln"));
    cmd.args(args)
        .env("HOME", home)
        .env("DOCKER_CONFIG", home.join(".docker"))
        .env("XDG_CACHE_HOME", home.join("cache"))
        .env_remove("KILN_CACHE_DIR")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // The model pull reads registry credentials from the environment.
    if let Some((user, password)) = creds {
        cmd.env("KILN_REGISTRY_USERNAME", user)
            .env("KILN_REGISTRY_PASSWORD", password);
    }
    let mut child = cmd.spawn().expect("running kiln");
    if let Some(mut pipe) = child.stdin.take() {
        let _ = pipe.write_all(stdin.unwrap_or("").as_bytes());
    }
    child.wait_with_output().expect("kiln output")
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "kiln failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The single error line of a failed run, checked for exit code 1.
fn failure(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(
        out.status.code(),
        Some(1),
        "expected a runtime failure, got {}: {stderr}",
        out.status
    );
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "one error line expected: {stderr}");
    errors[0].to_string()
}

fn sha256_file(path: &Path) -> String {
    let mut hasher = Sha256::new();
    let mut file = fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    std::io::copy(&mut file, &mut hasher).expect("hashing");
    format!("sha256:{}", hex::encode(hasher.finalize()))
}

/// `skopeo copy` the pushed image to an OCI layout, `umoci unpack` it, return the bundle.
fn unpack_pushed(world: &World, reference: &str, work: &Path) -> PathBuf {
    let layout = work.join("layout");
    let out = world.skopeo(&[
        "copy",
        "--src-tls-verify=false",
        "--preserve-digests",
        &format!("docker://{reference}"),
        &format!("oci:{}:img", layout.display()),
    ]);
    assert!(
        out.status.success(),
        "skopeo copy: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    unpack_layout(&layout, "img", work)
}

fn unpack_layout(layout: &Path, tag: &str, work: &Path) -> PathBuf {
    let bundle = work.join("bundle");
    let out = Command::new(require_tool("umoci", "umoci").expect("umoci"))
        .args(["unpack", "--rootless", "--image"])
        .arg(format!("{}:{tag}", layout.display()))
        .arg(&bundle)
        .output()
        .expect("umoci");
    assert!(
        out.status.success(),
        "umoci unpack: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    bundle
}

/// The rootfs has the base (in order: the arch file comes from layer 1, the
/// binary from layer 2) and the model exactly as Ollama lays it out.
fn assert_model_tree(world: &World, rootfs: &Path) {
    assert_eq!(
        fs::read_to_string(rootfs.join("etc/kiln-base-arch")).expect("base layer 1"),
        "amd64"
    );
    assert!(rootfs.join("bin/ollama").is_file(), "base layer 2 missing");
    let manifest = rootfs.join("models/manifests/registry.ollama.ai/library/gemma3/4b");
    assert_eq!(
        fs::read(&manifest).expect("model manifest"),
        world.model.manifest,
        "manifest must be byte-identical"
    );
    for blob in world.model.layers.iter().chain([&world.model.config]) {
        let path = rootfs.join(format!(
            "models/blobs/sha256-{}",
            blob.digest.trim_start_matches("sha256:")
        ));
        assert_eq!(sha256_file(&path), blob.digest, "{}", path.display());
    }
}

fn env_of(config: &Value) -> Vec<String> {
    config["config"]["Env"]
        .as_array()
        .expect("Env")
        .iter()
        .map(|v| v.as_str().unwrap_or("").to_string())
        .collect()
}

fn push_and_verify(auth: Auth) {
    let world = World::start(auth);
    let target = format!("{}/kiln/gemma:4b", world.host());
    let printed = ok(&world.pack(&["--push", &target]));
    let (name, digest) = printed.split_once('@').expect("REF@sha256:… on stdout");
    assert_eq!(name, target);
    assert!(
        digest.starts_with("sha256:") && digest.len() == 71,
        "{printed}"
    );

    // skopeo sees an OCI image: base layers first, in order, then kiln's.
    let inspect = world.skopeo(&[
        "inspect",
        "--tls-verify=false",
        "--raw",
        &format!("docker://{target}"),
    ]);
    assert!(
        inspect.status.success(),
        "{}",
        String::from_utf8_lossy(&inspect.stderr)
    );
    let manifest: Value = serde_json::from_slice(&inspect.stdout).expect("manifest json");
    assert_eq!(
        kiln_testkit::digest_of(&inspect.stdout),
        digest,
        "printed digest is the manifest's"
    );
    assert_eq!(
        manifest["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    let layers = manifest["layers"].as_array().expect("layers");
    let amd64 = world.base.platform("amd64").expect("amd64");
    assert_eq!(
        layers.len(),
        amd64.layers.len() + 2,
        "base layers + weights + manifests layer"
    );
    for (i, base_layer) in amd64.layers.iter().enumerate() {
        assert_eq!(
            layers[i]["digest"],
            base_layer.digest.as_str(),
            "base layer {i} out of order"
        );
        assert_eq!(
            layers[i]["mediaType"],
            "application/vnd.oci.image.layer.v1.tar+gzip"
        );
    }
    assert_eq!(
        layers[2]["mediaType"],
        "application/vnd.oci.image.layer.v1.tar"
    );

    let config = world.skopeo(&[
        "inspect",
        "--tls-verify=false",
        "--config",
        &format!("docker://{target}"),
    ]);
    let config: Value = serde_json::from_slice(&config.stdout).expect("config json");
    let env = env_of(&config);
    for want in [
        "OLLAMA_MODELS=/models",
        "OLLAMA_KEEP_ALIVE=-1",
        "OLLAMA_NOPRUNE=1",
        "OLLAMA_NO_CLOUD=1",
        "OLLAMA_HOST=0.0.0.0:8080",
    ] {
        assert!(
            env.contains(&want.to_string()),
            "{want} missing from {env:?}"
        );
    }
    assert!(
        env.iter().any(|e| e.starts_with("PATH=")),
        "base env kept: {env:?}"
    );
    assert_eq!(
        config["config"]["Entrypoint"],
        serde_json::json!(["/bin/ollama"])
    );
    assert_eq!(config["config"]["Cmd"], serde_json::json!(["serve"]));
    assert_eq!(
        config["rootfs"]["diff_ids"].as_array().map(Vec::len),
        Some(4)
    );
    assert_eq!(config["history"].as_array().map(Vec::len), Some(4));
    let models: Value = serde_json::from_str(
        config["config"]["Labels"]["dev.kiln.models"]
            .as_str()
            .expect("models label"),
    )
    .expect("label json");
    assert_eq!(models[0]["name"], "registry.ollama.ai/library/gemma3:4b");
    assert_eq!(models[0]["digest"], world.model.manifest_digest.as_str());

    let work = tempfile::tempdir().expect("work");
    let bundle = unpack_pushed(&world, &target, work.path());
    assert_model_tree(&world, &bundle.join("rootfs"));

    // Again: same digest, and only HEADs for blobs (nothing uploaded twice).
    let uploads_before = world.uploads();
    let again = ok(&world.pack(&["--push", &target]));
    assert_eq!(
        again, printed,
        "packing the same inputs twice must give the same digest"
    );
    assert_eq!(
        world.uploads(),
        uploads_before,
        "the second push must upload no blob"
    );

    // Monolithic only: every upload is finished by one PUT carrying the digest
    // (and so the whole body); never a PATCH, which is how chunks (and
    // Content-Range) travel. Base layers were mounted, not copied.
    let requests = world.registry.requests();
    assert!(
        !requests.iter().any(|(m, _)| m == "PATCH"),
        "chunked upload (PATCH) seen: {requests:?}"
    );
    let puts: Vec<&String> = requests
        .iter()
        .filter(|(m, u)| m == "PUT" && u.contains("/blobs/uploads/"))
        .map(|(_, u)| u)
        .collect();
    assert!(
        puts.iter().all(|u| u.contains("digest=sha256")),
        "upload PUT without digest: {puts:?}"
    );
    let mounts = requests
        .iter()
        .filter(|(m, u)| m == "POST" && u.starts_with("/v2/kiln/gemma/") && u.contains("mount="))
        .count();
    assert!(
        mounts >= amd64.layers.len(),
        "base layers should be mounted within the registry: {requests:?}"
    );
}

#[test]
fn pack_pushes_a_runnable_image_anonymously() {
    push_and_verify(Auth::Anonymous);
}

#[test]
fn pack_pushes_with_basic_auth() {
    push_and_verify(Auth::basic());
}

#[test]
fn pack_pushes_with_bearer_token_flow() {
    push_and_verify(Auth::bearer());
}

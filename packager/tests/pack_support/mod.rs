//! Shared by the `kiln pack` and `kiln inspect` tests: a seeded loopback
//! registry, the `kiln` binary run as a user runs it, and checks made with
//! independent tools (skopeo, umoci).
#![allow(dead_code)] // Each test crate uses a different part.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use kiln_testkit::{Auth, ModelSpec, SeededBase, SeededModel, TestRegistry, require_tool};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

pub const MIB: u64 = 1 << 20;

/// A loopback registry seeded with `library/gemma3:4b` and a two-platform `ollama/ollama:latest`.
pub struct World {
    pub registry: TestRegistry,
    pub model: SeededModel,
    pub base: SeededBase,
    pub home: tempfile::TempDir,
}

impl World {
    pub fn start(auth: Auth) -> World {
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

    pub fn host(&self) -> String {
        self.registry.host()
    }

    /// Runs `kiln pack gemma3:4b` from this registry with extra args; Basic and
    /// Bearer registries get credentials the way users pass them.
    pub fn pack(&self, extra: &[&str]) -> Output {
        let base = format!("{}/ollama/ollama:latest", self.host());
        let mut args = vec![
            "pack".to_string(),
            "gemma3:4b".into(),
            "--source-registry".into(),
            self.registry.url(),
            "--progress".into(),
            "quiet".into(),
        ];
        if !extra.contains(&"--base") {
            args.extend(["--base".to_string(), base]);
        }
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

    pub fn skopeo(&self, args: &[&str]) -> Output {
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
    pub fn uploads(&self) -> (usize, usize, usize) {
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
pub fn kiln(
    args: &[String],
    home: &Path,
    creds: Option<(&str, &str)>,
    stdin: Option<&str>,
) -> Output {
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

pub fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "kiln failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The single error line of a failed run, checked for exit code 1.
pub fn failure(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(
        out.status.code(),
        Some(1),
        "expected a runtime failure, got {}: {stderr}",
        out.status
    );
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "one error line expected: {stderr}");
    eprintln!("kiln said: {}", errors[0]);
    errors[0].to_string()
}

pub fn sha256_file(path: &Path) -> String {
    let mut hasher = Sha256::new();
    let mut file = fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    std::io::copy(&mut file, &mut hasher).expect("hashing");
    format!("sha256:{}", hex::encode(hasher.finalize()))
}

/// `skopeo copy` the pushed image to an OCI layout, `umoci unpack` it, return the bundle.
pub fn unpack_pushed(world: &World, reference: &str, work: &Path) -> PathBuf {
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

pub fn unpack_layout(layout: &Path, tag: &str, work: &Path) -> PathBuf {
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
pub fn assert_model_tree(world: &World, rootfs: &Path) {
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

pub fn env_of(config: &Value) -> Vec<String> {
    config["config"]["Env"]
        .as_array()
        .expect("Env")
        .iter()
        .map(|v| v.as_str().unwrap_or("").to_string())
        .collect()
}

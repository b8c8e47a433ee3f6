//! `kiln pull` against a real `docker-registry` on loopback, directly or
//! behind the testkit's redirecting front (307 to a "CDN" on another host).

use std::collections::BTreeMap;
use std::fs;
use std::io::Read as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kiln::model_ref::ModelRef;
use kiln::progress::ProgressMode;
use kiln::pull::{Credentials, PullError, PullOptions, pull_models};
use kiln_testkit::cdn_front::CdnFront;
use kiln_testkit::{Auth, ModelSpec, SeededModel, TestRegistry, digest_of};

const MIB: u64 = 1 << 20;

fn options(cache: &Path, source: &str) -> PullOptions {
    let mut options = PullOptions::new(cache);
    options.source_registry = Some(source.parse().expect("source URL"));
    options.progress = ProgressMode::Quiet;
    options.retry_base_delay = Duration::from_millis(10);
    options.stall_timeout = Duration::from_secs(5);
    options
}

fn gemma() -> ModelRef {
    ModelRef::parse("gemma3:4b").expect("reference")
}

fn seed(registry: &TestRegistry, tag: &str, weights_size: u64, seed: u64) -> SeededModel {
    let spec = ModelSpec {
        weights_size,
        seed,
        ..ModelSpec::default()
    };
    registry
        .seed_ollama_model("library/gemma3", tag, &spec)
        .expect("seeding")
}

/// Every file and directory under `dir`: relative path -> (mode, contents for files).
fn tree(dir: &Path) -> BTreeMap<PathBuf, (u32, Option<Vec<u8>>)> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, (u32, Option<Vec<u8>>)>) {
        for entry in fs::read_dir(dir).expect("read_dir") {
            let path = entry.expect("entry").path();
            let meta = fs::metadata(&path).expect("metadata");
            let rel = path.strip_prefix(root).expect("prefix").to_path_buf();
            let mode = meta.permissions().mode() & 0o7777;
            if meta.is_dir() {
                out.insert(rel, (mode, None));
                walk(root, &path, out);
            } else {
                out.insert(rel, (mode, Some(fs::read(&path).expect("read"))));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// The tree the layout rules require for these models, built independently.
fn expected_tree(
    registry: &TestRegistry,
    models: &[(&str, &SeededModel)],
) -> BTreeMap<PathBuf, (u32, Option<Vec<u8>>)> {
    let mut out = BTreeMap::new();
    let dir = |p: &str| (PathBuf::from(p), (0o755, None));
    out.extend(
        [
            "blobs",
            "manifests",
            "manifests/registry.ollama.ai",
            "manifests/registry.ollama.ai/library",
        ]
        .map(dir),
    );
    for (tag, model) in models {
        out.insert(
            PathBuf::from("manifests/registry.ollama.ai/library/gemma3"),
            (0o755, None),
        );
        out.insert(
            PathBuf::from(format!("manifests/registry.ollama.ai/library/gemma3/{tag}")),
            (0o644, Some(model.manifest.clone())),
        );
        for blob in std::iter::once(&model.config).chain(&model.layers) {
            let mut bytes = Vec::new();
            model
                .blob_reader(registry, &blob.digest)
                .expect("blob")
                .read_to_end(&mut bytes)
                .expect("read");
            assert_eq!(digest_of(&bytes), blob.digest);
            let name = format!("blobs/{}", blob.digest.replace(':', "-"));
            out.insert(PathBuf::from(name), (0o644, Some(bytes)));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_writes_an_exact_ollama_models_tree_and_models_share_blobs() {
    let registry = TestRegistry::start(Auth::Anonymous).expect("registry");
    let four = seed(&registry, "4b", 3 * MIB + 17, 1);
    let one = seed(&registry, "1b", 2 * MIB, 2);
    let work = tempfile::tempdir().expect("tempdir");
    let models_dir = work.path().join("models");
    let mut options = options(&work.path().join("cache"), &registry.url());
    options.part_size = Some(MIB);
    options.parallel = Some(4);

    let pulled = pull_models(&options, &[gemma()]).await.expect("pull 4b");
    assert_eq!(
        pulled[0].manifest, four.manifest,
        "manifest bytes as served"
    );
    assert_eq!(pulled[0].manifest_digest, four.manifest_digest);
    assert_eq!(
        pulled[0].reference.to_string(),
        "registry.ollama.ai/library/gemma3:4b"
    );
    kiln::models_dir::write_models_dir(&models_dir, &pulled).expect("write 4b");
    assert_eq!(
        tree(&models_dir),
        expected_tree(&registry, &[("4b", &four)])
    );

    // A second model in the same directory: the small layers are shared.
    let pulled = pull_models(&options, &[ModelRef::parse("gemma3:1b").expect("ref")])
        .await
        .expect("pull 1b");
    kiln::models_dir::write_models_dir(&models_dir, &pulled).expect("write 1b");
    let expected = expected_tree(&registry, &[("4b", &four), ("1b", &one)]);
    assert_eq!(tree(&models_dir), expected);
    let blob_count = expected
        .iter()
        .filter(|(p, (_, contents))| p.starts_with("blobs") && contents.is_some())
        .count();
    assert_eq!(
        blob_count,
        2 + 2 + 3,
        "two weights, two configs, three shared small layers"
    );

    // The weights came in 1 MiB ranged parts, each byte once.
    let weight_gets = registry
        .requests()
        .iter()
        .filter(|(m, uri)| m == "GET" && uri.ends_with(&four.layers[0].digest))
        .count();
    assert_eq!(weight_gets, 4, "3 MiB + 17 bytes in 1 MiB parts");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blobs_follow_the_cdn_redirect_and_credentials_stay_with_the_registry() {
    for auth in [Auth::bearer(), Auth::basic()] {
        let registry = TestRegistry::start(auth.clone()).expect("registry");
        let model = seed(&registry, "4b", 3 * MIB, 3);
        let front = CdnFront::start(&registry).expect("front");
        let work = tempfile::tempdir().expect("tempdir");
        let mut options = options(&work.path().join("cache"), &front.url());
        let (user, password) = auth.credentials().expect("credentials");
        options.credentials = Some(Credentials {
            username: user.into(),
            password: password.into(),
        });
        options.part_size = Some(MIB);
        options.parallel = Some(4);

        let pulled = pull_models(&options, &[gemma()])
            .await
            .expect("pull through the CDN");
        assert_eq!(
            fs::read(&pulled[0].layers[0].path)
                .map(|b| digest_of(&b))
                .expect("weights"),
            model.layers[0].digest
        );

        let cdn = front.cdn_requests();
        assert!(
            cdn.len() >= 3,
            "weights fetched from the CDN in parts: {cdn:?}"
        );
        assert!(
            cdn.iter().all(|r| !r.authorization),
            "{auth:?}: credentials reached the CDN: {cdn:?}"
        );
        let front_requests = front.front_requests();
        assert!(
            front_requests
                .iter()
                .any(|r| r.url.contains("/blobs/") && r.authorization),
            "the registry itself got credentials"
        );
        let manifest_gets: Vec<_> = front_requests
            .iter()
            .filter(|r| r.url == "/v2/library/gemma3/manifests/4b")
            .collect();
        assert!(!manifest_gets.is_empty());
        for get in manifest_gets {
            assert_eq!(
                get.accept.as_deref(),
                Some("application/vnd.docker.distribution.manifest.v2+json"),
                "Ollama's exact Accept header"
            );
        }
        if matches!(auth, Auth::Bearer { .. }) {
            assert!(
                registry
                    .token_requests()
                    .iter()
                    .any(|q| q.contains("scope=repository%3Alibrary%2Fgemma3%3Apull")),
                "{:?}",
                registry.token_requests()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_credentials_fail_with_the_variables_to_set() {
    let registry = TestRegistry::start(Auth::basic()).expect("registry");
    seed(&registry, "4b", MIB, 4);
    let work = tempfile::tempdir().expect("tempdir");
    let err = pull_models(&options(work.path(), &registry.url()), &[gemma()])
        .await
        .expect_err("no credentials");
    assert!(matches!(err, PullError::Unauthorized { .. }), "{err:?}");
    assert!(err.to_string().contains("KILN_REGISTRY_USERNAME"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_connections_are_retried_and_an_interrupted_pull_fetches_only_missing_bytes() {
    let registry = TestRegistry::start(Auth::Anonymous).expect("registry");
    let size = 4 * MIB;
    let model = seed(&registry, "4b", size, 5);
    let front = CdnFront::start(&registry).expect("front");
    let work = tempfile::tempdir().expect("tempdir");
    let cache = work.path().join("cache");
    let mut options = options(&cache, &front.url());
    options.part_size = Some(MIB);
    options.parallel = Some(2);

    // Within one run: cut connections are retried from where they stopped.
    front.cut_connections(3, 300_000);
    let pulled = pull_models(&options, &[gemma()])
        .await
        .expect("pull despite cuts");
    assert_eq!(
        fs::read(&pulled[0].layers[0].path)
            .map(|b| digest_of(&b))
            .expect("weights"),
        model.layers[0].digest
    );

    // Connections that die before delivering anything exhaust the retries,
    // with a message that says how to go on.
    front.cut_connections(u64::MAX, 0);
    options.cache_dir = work.path().join("cache2");
    options.max_retries = 1;
    let err = pull_models(&options, &[gemma()])
        .await
        .expect_err("every connection is cut");
    let message = err.to_string();
    assert!(message.contains("failed 2 times in a row"), "{message}");
    assert!(
        message.contains("run the same command again to resume"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_connections_are_restarted() {
    let registry = TestRegistry::start(Auth::Anonymous).expect("registry");
    let model = seed(&registry, "4b", 2 * MIB, 11);
    let front = CdnFront::start(&registry).expect("front");
    let work = tempfile::tempdir().expect("tempdir");
    let mut options = options(&work.path().join("cache"), &front.url());
    options.stall_timeout = Duration::from_millis(300);

    // A CDN that keeps connections open but sends nothing: every attempt
    // stalls, then the pull gives up.
    front.stall_after(Some(0));
    options.max_retries = 1;
    let err = pull_models(&options, &[gemma()])
        .await
        .expect_err("stalled");
    assert!(err.to_string().contains("no data for 0.3s"), "{err}");

    // The CDN recovers while kiln is retrying: the pull completes.
    options.max_retries = 6;
    options.cache_dir = work.path().join("cache2");
    let recover = async {
        tokio::time::sleep(Duration::from_millis(800)).await;
        front.stall_after(None);
    };
    let models = [gemma()];
    let (pulled, ()) = tokio::join!(pull_models(&options, &models), recover);
    let pulled = pulled.expect("pull after the stall");
    assert_eq!(
        fs::read(&pulled[0].layers[0].path)
            .map(|b| digest_of(&b))
            .expect("weights"),
        model.layers[0].digest
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_ignores_range_still_gets_one_plain_get() {
    let registry = TestRegistry::start(Auth::Anonymous).expect("registry");
    let model = seed(&registry, "4b", 3 * MIB, 12);
    let front = CdnFront::start(&registry).expect("front");
    front.ignore_range(true);
    let work = tempfile::tempdir().expect("tempdir");
    let mut options = options(&work.path().join("cache"), &front.url());
    options.part_size = Some(MIB);
    options.parallel = Some(4);
    let pulled = pull_models(&options, &[gemma()]).await.expect("pull");
    assert_eq!(
        fs::read(&pulled[0].layers[0].path)
            .map(|b| digest_of(&b))
            .expect("weights"),
        model.layers[0].digest
    );
    let weights: Vec<_> = front
        .cdn_requests()
        .into_iter()
        .filter(|r| r.url.contains(&model.layers[0].digest))
        .collect();
    assert_eq!(
        weights.len(),
        2,
        "one ranged try, then one plain GET: {weights:?}"
    );
    assert!(
        weights[0].range.is_some() && weights[1].range.is_none(),
        "{weights:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_cdn_url_is_renewed_through_the_registry() {
    let registry = TestRegistry::start(Auth::Anonymous).expect("registry");
    let model = seed(&registry, "4b", 4 * MIB, 13);
    let front = CdnFront::start(&registry).expect("front");
    let work = tempfile::tempdir().expect("tempdir");
    let mut options = options(&work.path().join("cache"), &front.url());
    options.part_size = Some(MIB);
    options.parallel = Some(2);
    // The config and the first part come through the registry's redirect;
    // the second connection, reusing the weights URL, is refused as expired.
    front.expire_after(2, 1);
    let pulled = pull_models(&options, &[gemma()]).await;
    let pulled = pulled.expect("pull despite the expired URL");
    assert_eq!(
        fs::read(&pulled[0].layers[0].path)
            .map(|b| digest_of(&b))
            .expect("weights"),
        model.layers[0].digest
    );
    // Small blobs download concurrently with the weights, so which URL the
    // CDN refuses depends on timing; whichever it was, kiln must have asked
    // the registry again for that blob.
    let blob_gets = front
        .front_requests()
        .iter()
        .filter(|r| r.url.contains("/blobs/"))
        .fold(
            std::collections::BTreeMap::<String, usize>::new(),
            |mut counts, r| {
                *counts.entry(r.url.clone()).or_default() += 1;
                counts
            },
        );
    assert!(
        blob_gets.values().any(|&n| n >= 2),
        "kiln never went back to the registry for a fresh URL: {blob_gets:?}"
    );
}

/// Sums a partial download's state file: bytes known to be on disk.
fn kept_bytes(state_file: &Path) -> u64 {
    let Ok(bytes) = fs::read(state_file) else {
        return 0;
    };
    let state: serde_json::Value = serde_json::from_slice(&bytes).expect("state is JSON");
    state["done"]
        .as_array()
        .expect("done")
        .iter()
        .filter_map(|d| d.as_u64())
        .sum()
}

#[test]
fn killed_pull_resumes_and_fetches_only_the_missing_bytes() {
    let registry = TestRegistry::start(Auth::Anonymous).expect("registry");
    let size = 6 * MIB;
    let model = seed(&registry, "4b", size, 9);
    let front = CdnFront::start(&registry).expect("front");
    let work = tempfile::tempdir().expect("tempdir");
    let cache = work.path().join("cache");
    let models_dir = work.path().join("models");
    let hex = model.layers[0]
        .digest
        .trim_start_matches("sha256:")
        .to_string();
    let state_file = cache.join(format!("blobs/sha256/{hex}.partial.json"));
    let kiln = |extra: &[&str]| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"));
        command
            .args([
                "pull",
                "gemma3:4b",
                "--source-registry",
                &front.url(),
                "--parallel",
                "2",
            ])
            .args(["--part-size", &MIB.to_string(), "--progress", "plain"])
            .arg("--cache-dir")
            .arg(&cache)
            .args(extra)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        command
    };

    // About 2 MiB/s in total: three seconds for the whole blob, killed after ~1.5 MiB.
    front.throttle(Some(MIB));
    let mut child = kiln(&[]).spawn().expect("spawn kiln");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while kept_bytes(&state_file) < MIB + MIB / 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "no progress: {:?}",
            child.try_wait()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().expect("kill");
    child.wait().expect("wait");
    // Let the CDN notice the dead connections before counting again.
    let mut served = front.cdn_bytes_served();
    loop {
        std::thread::sleep(Duration::from_millis(400));
        let now = front.cdn_bytes_served();
        if now == served {
            break;
        }
        served = now;
    }
    let kept = kept_bytes(&state_file);
    assert!(kept >= MIB + MIB / 2 && kept < size, "kept {kept}");

    front.throttle(None);
    let output = kiln(&["--models-dir", models_dir.to_str().expect("utf-8 path")])
        .output()
        .expect("rerun");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("resuming at"), "{stderr}");
    // The config came in the first run; the small layers come after the weights.
    let small_layers: u64 = model.layers[1..].iter().map(|l| l.size).sum();
    assert_eq!(
        front.cdn_bytes_served() - served,
        size - kept + small_layers,
        "only the missing bytes are fetched"
    );
    let weights = fs::read(models_dir.join(format!("blobs/sha256-{hex}")))
        .expect("weights in the models dir");
    assert_eq!(digest_of(&weights), model.layers[0].digest);
    assert!(!state_file.exists() && !cache.join(format!("blobs/sha256/{hex}.partial")).exists());
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.starts_with("gemma3:4b  id "), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_bytes_are_refused_deleted_and_named() {
    let registry = TestRegistry::start(Auth::Anonymous).expect("registry");
    let model = seed(&registry, "4b", 2 * MIB, 6);
    let front = CdnFront::start(&registry).expect("front");
    let work = tempfile::tempdir().expect("tempdir");
    let cache = work.path().join("cache");
    let options = options(&cache, &front.url());

    front.corrupt_byte_at(MIB + 5);
    let err = pull_models(&options, &[gemma()])
        .await
        .expect_err("corrupted weights");
    let message = err.to_string();
    let weights = &model.layers[0].digest;
    assert!(
        message.contains(&format!("expected {weights}, got sha256:")),
        "{message}"
    );
    let hex = weights.trim_start_matches("sha256:");
    let leftovers: Vec<_> = fs::read_dir(cache.join("blobs/sha256"))
        .expect("cache dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with(hex) && !name.ends_with(".lock"))
        .collect();
    assert!(leftovers.is_empty(), "bad bytes left behind: {leftovers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pulls_of_the_same_model_share_one_download() {
    let registry = TestRegistry::start(Auth::Anonymous).expect("registry");
    let model = seed(&registry, "4b", 4 * MIB, 7);
    let work = tempfile::tempdir().expect("tempdir");
    let mut options = options(work.path(), &registry.url());
    options.part_size = Some(MIB);
    options.parallel = Some(4);
    let models = [gemma()];
    let (a, b) = tokio::join!(
        pull_models(&options, &models),
        pull_models(&options, &models)
    );
    let (a, b) = (a.expect("first"), b.expect("second"));
    assert_eq!(a[0].layers[0].path, b[0].layers[0].path);
    assert_eq!(
        fs::read(&a[0].layers[0].path)
            .map(|b| digest_of(&b))
            .expect("weights"),
        model.layers[0].digest
    );
    let weight_gets = registry
        .requests()
        .iter()
        .filter(|(m, uri)| m == "GET" && uri.ends_with(&model.layers[0].digest))
        .count();
    assert_eq!(
        weight_gets, 4,
        "one download of 4 parts, the other pull waited for it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloud_models_and_unknown_or_nameless_tensor_layers_are_refused_before_downloading_weights()
{
    let registry = TestRegistry::start(Auth::Anonymous).expect("registry");
    let cloud = ModelSpec {
        cloud: true,
        ..ModelSpec::default()
    };
    let seeded = registry
        .seed_ollama_model("library/gemma3", "remote", &cloud)
        .expect("seed cloud");
    // All three models share these default weights.
    let weights = seeded.layers[0].digest.clone();
    for (tag, layer) in [
        ("tensor", "application/vnd.ollama.image.tensor"),
        ("odd", "application/x-surprise"),
    ] {
        let spec = ModelSpec {
            extra_layers: vec![(layer.into(), b"x".to_vec())],
            ..ModelSpec::default()
        };
        registry
            .seed_ollama_model("library/gemma3", tag, &spec)
            .expect("seed");
    }
    let work = tempfile::tempdir().expect("tempdir");
    let options = options(work.path(), &registry.url());
    for (name, expected) in [
        ("gemma3:remote", "cloud model"),
        ("gemma3:120b-cloud", "cloud model"),
        ("gemma3:tensor", "safetensors"),
        ("gemma3:odd", "application/x-surprise"),
    ] {
        let err = pull_models(&options, &[ModelRef::parse(name).expect("ref")])
            .await
            .expect_err(name);
        assert!(err.to_string().contains(expected), "{name}: {err}");
    }
    let weights_fetched = registry
        .requests()
        .iter()
        .any(|(m, uri)| m == "GET" && uri.ends_with(&weights));
    assert!(
        !weights_fetched,
        "weights were downloaded for a refused model"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_ollama_dir_imports_a_local_store_without_the_network() {
    let registry = TestRegistry::start(Auth::Anonymous).expect("registry");
    let model = seed(&registry, "4b", 2 * MIB, 8);
    let work = tempfile::tempdir().expect("tempdir");
    let store = work.path().join("ollama-models");
    let pulled = pull_models(
        &options(&work.path().join("c1"), &registry.url()),
        &[gemma()],
    )
    .await
    .expect("pull");
    kiln::models_dir::write_models_dir(&store, &pulled).expect("store");

    // A fresh cache and a registry that is gone: everything comes from the store.
    let dead = "http://127.0.0.1:9";
    let mut options = options(&work.path().join("c2"), dead);
    options.from_ollama_dir = Some(store.clone());
    options.max_retries = 0;
    let imported = pull_models(&options, &[gemma()]).await.expect("import");
    assert_eq!(imported[0].manifest, model.manifest);
    assert!(
        imported[0].layers[0]
            .path
            .starts_with(work.path().join("c2"))
    );

    // A tampered store is refused like a tampered registry.
    let weights = store.join(format!(
        "blobs/{}",
        model.layers[0].digest.replace(':', "-")
    ));
    let mut bytes = fs::read(&weights).expect("weights");
    bytes[100] ^= 1;
    fs::write(&weights, bytes).expect("tamper");
    options.cache_dir = work.path().join("c3");
    let err = pull_models(&options, &[gemma()])
        .await
        .expect_err("tampered");
    assert!(
        err.to_string()
            .contains(&format!("expected {}", model.layers[0].digest)),
        "{err}"
    );
}

/// The layer digests in a cache's layer-digest cache.
fn cached_layer_digests(cache: &Path) -> Vec<String> {
    let Ok(entries) = fs::read_dir(cache.join("layers")) else {
        return Vec::new();
    };
    entries
        .map(|e| fs::read_to_string(e.expect("entry").path()).expect("entry"))
        .map(|text| text.split_whitespace().next().unwrap_or("").to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_and_imports_record_the_digest_of_the_weights_layer_pack_builds() {
    let registry = TestRegistry::start(Auth::Anonymous).expect("registry");
    let model = seed(&registry, "4b", 3 * MIB + 5, 14);
    let work = tempfile::tempdir().expect("tempdir");
    let mut options = options(&work.path().join("c1"), &registry.url());
    options.part_size = Some(MIB);
    options.parallel = Some(3);
    let pulled = pull_models(&options, &[gemma()]).await.expect("pull");

    // The layer as `kiln pack` builds it, hashed here with no cache at all.
    let weights = &pulled[0].layers[0];
    assert_eq!(weights.digest, model.layers[0].digest);
    let spec = kiln::pack::layer_plan::own_layer(
        "/models",
        &weights.digest,
        weights.size,
        &weights.path,
        "weights".into(),
    )
    .expect("spec");
    let layer = kiln::layers::Layer::build(
        spec,
        &kiln::layers::LayerCache::new(None),
        kiln::layers::Compression::None,
    )
    .await
    .expect("hash");
    assert_eq!(
        cached_layer_digests(&work.path().join("c1")),
        vec![layer.digest.clone()]
    );

    // An import from a local Ollama store records it too.
    let store = work.path().join("ollama-models");
    kiln::models_dir::write_models_dir(&store, &pulled).expect("store");
    options.cache_dir = work.path().join("c2");
    options.from_ollama_dir = Some(store);
    pull_models(&options, &[gemma()]).await.expect("import");
    assert_eq!(
        cached_layer_digests(&work.path().join("c2")),
        vec![layer.digest.clone()]
    );

    // Without a models path (blobs only), nothing is recorded.
    options.cache_dir = work.path().join("c3");
    options.from_ollama_dir = None;
    options.layer_models_path = None;
    pull_models(&options, &[gemma()]).await.expect("pull");
    assert!(cached_layer_digests(&work.path().join("c3")).is_empty());
}

fn kiln_cli(args: &[&str], cache: &Path) -> (Option<i32>, String, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .arg("pull")
        .args(args)
        .arg("--cache-dir")
        .arg(cache)
        .output()
        .expect("run kiln");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn cli_failures_are_one_line_with_exit_code_one_for_runtime_and_two_for_usage() {
    let registry = TestRegistry::start(Auth::Anonymous).expect("registry");
    seed(&registry, "4b", MIB, 10);
    let work = tempfile::tempdir().expect("tempdir");
    let url = registry.url();

    let (code, _, stderr) = kiln_cli(&["gemma3:5b", "--source-registry", &url], work.path());
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(
        stderr.trim_end(),
        format!(
            r#"error: model "gemma3:5b" not found in {}; see https://ollama.com/library/gemma3/tags"#,
            registry.host()
        )
    );

    let (code, _, stderr) = kiln_cli(
        &[
            "gemma3:4b",
            "--source-registry",
            "http://127.0.0.1:9",
            "--retries",
            "0",
        ],
        work.path(),
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("could not connect") && stderr.contains("then run again"),
        "{stderr}"
    );

    let (code, _, stderr) = kiln_cli(&["../../etc/passwd"], work.path());
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("e.g. gemma3:4b"), "{stderr}");

    let (code, stdout, _) = kiln_cli(&["--help"], work.path());
    assert_eq!(code, Some(0));
    for taught in [
        "--models-dir",
        "--source-registry",
        "--parallel",
        "OLLAMA_MODELS=./models ollama serve",
        "resumes",
    ] {
        assert!(stdout.contains(taught), "--help lacks {taught}: {stdout}");
    }
}

#[test]
fn pull_takes_credentials_from_the_docker_config_as_push_does() {
    use base64::Engine as _;
    let registry = TestRegistry::start(Auth::bearer()).expect("registry");
    let model = seed(&registry, "4b", MIB, 15);
    let (user, password) = registry.auth().credentials().expect("credentials");
    let work = tempfile::tempdir().expect("tempdir");
    let docker = work.path().join("docker");
    let url = registry.url();
    let pull = |cache: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args(["pull", "gemma3:4b", "--source-registry", &url])
            .args(["--progress", "quiet", "--cache-dir"])
            .arg(work.path().join(cache))
            .env("DOCKER_CONFIG", &docker)
            .env("HOME", work.path())
            .env_remove("KILN_REGISTRY_USERNAME")
            .env_remove("KILN_REGISTRY_PASSWORD")
            .output()
            .expect("run kiln")
    };

    // No credentials anywhere: refused, naming where they can come from.
    let refused = pull("c1");
    assert_eq!(refused.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("KILN_REGISTRY_USERNAME"), "{stderr}");

    // `docker login` wrote them: the pull finds them.
    fs::create_dir_all(&docker).expect("docker dir");
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    fs::write(
        docker.join("config.json"),
        serde_json::json!({"auths": {registry.host(): {"auth": auth}}}).to_string(),
    )
    .expect("docker config");
    let pulled = pull("c2");
    assert!(
        pulled.status.success(),
        "{}",
        String::from_utf8_lossy(&pulled.stderr)
    );
    let hex = model.layers[0].digest.trim_start_matches("sha256:");
    let weights = fs::read(work.path().join(format!("c2/blobs/sha256/{hex}"))).expect("weights");
    assert_eq!(digest_of(&weights), model.layers[0].digest);
}

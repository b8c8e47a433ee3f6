//! Every model format Ollama's registries serve, through the `kiln` binary:
//! safetensors models (one `application/vnd.ollama.image.tensor` layer per
//! tensor, JSON files as `application/vnd.ollama.image.json` layers, a config
//! without `rootfs`), and `hf.co/{user}/{repo}:{quant}` references, served
//! here by a seeded loopback registry that stands in for the host.

mod pack_support;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use kiln_testkit::{Auth, ModelSpec, SeededModel, TensorModelSpec, TensorSpec, TestRegistry};
use pack_support::*;
use serde_json::Value;

/// Every regular file under `dir`, relative path -> bytes.
fn files(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for entry in fs::read_dir(dir).expect("read_dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                let rel = path.strip_prefix(root).expect("prefix").to_path_buf();
                out.insert(rel, fs::read(&path).expect("read"));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// The `OLLAMA_MODELS` files Ollama itself would write for these models:
/// each manifest as served, each distinct blob once as `blobs/sha256-<hex>`.
fn expected_files(
    registry: &TestRegistry,
    models: &[(&str, &SeededModel)],
) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    for (manifest_path, model) in models {
        out.insert(PathBuf::from(manifest_path), model.manifest.clone());
        for blob in std::iter::once(&model.config).chain(&model.layers) {
            let bytes = registry.get_blob(&model.repo, &blob.digest).expect("blob");
            out.insert(
                PathBuf::from(format!("blobs/{}", blob.digest.replace(':', "-"))),
                bytes,
            );
        }
    }
    out
}

/// Runs `kiln ARGS` with the private home of `home`, expecting success.
fn kiln_ok(home: &Path, args: &[&str]) -> String {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    ok(&kiln(&args, home, None, None))
}

/// A small transformer with one 32 MiB tensor (`lm_head.weight`, large
/// enough for a layer of its own in the image) and one tensor listed twice.
fn tensor_model(seed: u64) -> TensorModelSpec {
    let mut spec = TensorModelSpec::transformer(12, 4096, seed);
    spec.tensors.push(TensorSpec {
        name: "lm_head.weight".into(),
        elements: 16 << 20,
        seed: 100,
    });
    let repeated = spec.tensors[2].clone();
    spec.tensors.push(repeated);
    spec
}

#[test]
fn safetensors_models_pull_to_an_exact_models_tree_and_pack_into_an_image() {
    let registry = TestRegistry::start(Auth::Anonymous).expect("registry");
    registry
        .seed_base_image("ollama/ollama", "latest")
        .expect("base");
    let v1 = registry
        .seed_tensor_model("library/qwen3-st", "v1", &tensor_model(1))
        .expect("seed v1");
    // The next version: one block retrained, everything else the same bytes.
    let mut v2_spec = tensor_model(1);
    for tensor in v2_spec
        .tensors
        .iter_mut()
        .filter(|t| t.name.starts_with("model.layers.3."))
    {
        tensor.seed += 1000;
    }
    let v2 = registry
        .seed_tensor_model("library/qwen3-st", "v2", &v2_spec)
        .expect("seed v2");
    assert!(v1.layers.len() > 50, "many layers: {}", v1.layers.len());
    let manifest: Value = serde_json::from_slice(&v1.manifest).expect("manifest");
    assert_eq!(
        manifest["layers"][1]["name"],
        "model.layers.0.input_layernorm.weight"
    );

    let home = tempfile::tempdir().expect("home");
    let models_dir = home.path().join("ollama-models");
    let url = registry.url();
    let out = kiln_ok(
        home.path(),
        &[
            "pull",
            "qwen3-st:v1",
            "qwen3-st:v2",
            "--source-registry",
            &url,
            "--models-dir",
            models_dir.to_str().expect("utf-8"),
            "--progress",
            "quiet",
        ],
    );
    assert!(out.contains("qwen3-st:v1"), "{out}");
    let requests = registry.requests();

    // Exactly what Ollama writes: manifests as served, shared tensors once.
    let expected = expected_files(
        &registry,
        &[
            ("manifests/registry.ollama.ai/library/qwen3-st/v1", &v1),
            ("manifests/registry.ollama.ai/library/qwen3-st/v2", &v2),
        ],
    );
    assert_eq!(
        files(&models_dir).keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>()
    );
    assert!(files(&models_dir) == expected, "file contents differ");
    let distinct: BTreeSet<&str> = v1
        .layers
        .iter()
        .chain(&v2.layers)
        .chain([&v1.config, &v2.config])
        .map(|b| b.digest.as_str())
        .collect();
    assert_eq!(
        expected.len(),
        distinct.len() + 2,
        "two manifests, blobs once"
    );
    assert!(
        distinct.len() < v1.layers.len() + v2.layers.len(),
        "the versions share tensors"
    );

    // Each small blob was downloaded once, even the one listed twice.
    let lm_head = &v1.layers[v1.layers.len() - 5];
    assert_eq!(
        manifest["layers"][v1.layers.len() - 5]["name"],
        "lm_head.weight"
    );
    assert!(lm_head.size > 32 << 20, "{lm_head:?}");
    for digest in distinct.iter().filter(|d| **d != lm_head.digest) {
        let gets = requests
            .iter()
            .filter(|(m, uri)| m == "GET" && uri.ends_with(*digest))
            .count();
        assert_eq!(gets, 1, "{digest} fetched {gets} times");
    }

    // The pull hashed lm_head's layer while downloading it.
    let layer_cache = home.path().join("cache/kiln/layers");
    let cached_digests: BTreeSet<String> = fs::read_dir(&layer_cache)
        .expect("the pull wrote layer digests")
        .map(|e| fs::read_to_string(e.expect("entry").path()).expect("entry"))
        .map(|text| text.split_whitespace().next().unwrap_or("").to_string())
        .collect();
    assert_eq!(cached_digests.len(), 1, "{cached_digests:?}");

    // Packed, the image holds the same tree; umoci checks every digest.
    let layout = home.path().join("layout");
    let base = format!("{}/ollama/ollama:latest", registry.host());
    let output = format!("oci:{}:img", layout.display());
    kiln_ok(
        home.path(),
        &[
            "pack",
            "qwen3-st:v1",
            "qwen3-st:v2",
            "--source-registry",
            &url,
            "--base",
            &base,
            "--output",
            &output,
            "--progress",
            "quiet",
        ],
    );
    let bundle = unpack_layout(&layout, "img", home.path());
    let rootfs = bundle.join("rootfs/models");
    assert!(
        files(&rootfs) == expected,
        "the image's models tree differs"
    );

    // lm_head has a layer of its own, whose digest the pull computed;
    // everything else shares one layer.
    let added = added_layers(&layout, "img");
    assert_eq!(added.len(), 2, "{added:?}");
    assert!(added[0].1.contains(&lm_head.digest), "{added:?}");
    assert!(
        cached_digests.contains(&added[0].0),
        "{added:?} vs {cached_digests:?}"
    );

    // v2 alone: its unchanged large tensor is the same layer, so a registry
    // that has v1's image is not sent it again.
    kiln_ok(
        home.path(),
        &[
            "pack",
            "qwen3-st:v2",
            "--source-registry",
            &url,
            "--base",
            &base,
            "--output",
            &format!("oci:{}:v2", layout.display()),
            "--progress",
            "quiet",
        ],
    );
    let added_v2 = added_layers(&layout, "v2");
    assert_eq!(added_v2[0].0, added[0].0, "{added_v2:?}");
    assert_ne!(
        added_v2[1].0, added[1].0,
        "the small layer holds other manifests"
    );
}

/// `(digest, content annotation)` of the layers kiln added (after the
/// seeded base's two) to the image tagged `tag` in an OCI layout.
fn added_layers(layout: &Path, tag: &str) -> Vec<(String, String)> {
    let read = |rel: &str| -> Value {
        serde_json::from_slice(&fs::read(layout.join(rel)).expect("layout file")).expect("json")
    };
    let index = read("index.json");
    let entry = index["manifests"]
        .as_array()
        .expect("manifests")
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .expect("tagged image");
    let digest = entry["digest"].as_str().expect("digest");
    let manifest = read(&format!(
        "blobs/sha256/{}",
        digest.trim_start_matches("sha256:")
    ));
    manifest["layers"]
        .as_array()
        .expect("layers")
        .iter()
        .skip(2)
        .map(|l| {
            (
                l["digest"].as_str().unwrap_or("").to_string(),
                l["annotations"]["dev.kiln.layer.content"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
            )
        })
        .collect()
}

#[test]
fn hf_co_references_are_pulled_through_the_registry_protocol() {
    let registry = TestRegistry::start(Auth::Anonymous).expect("registry");
    // Hugging Face's configs carry no rootfs.diff_ids, like newer Ollama's.
    let spec = ModelSpec {
        weights_size: 2 << 20,
        seed: 21,
        family: "llama".into(),
        diff_ids: false,
        ..ModelSpec::default()
    };
    let model = registry
        .seed_ollama_model("bartowski/llama-3.2-1b-instruct-gguf", "Q4_K_M", &spec)
        .expect("seed");
    let config = registry
        .get_blob(&model.repo, &model.config.digest)
        .expect("config");
    assert!(!String::from_utf8_lossy(&config).contains("rootfs"));

    let home = tempfile::tempdir().expect("home");
    let models_dir = home.path().join("ollama-models");
    let out = kiln_ok(
        home.path(),
        &[
            "pull",
            "hf.co/bartowski/llama-3.2-1b-instruct-gguf:Q4_K_M",
            "--source-registry",
            &registry.url(),
            "--models-dir",
            models_dir.to_str().expect("utf-8"),
            "--progress",
            "quiet",
        ],
    );
    assert!(
        out.starts_with("hf.co/bartowski/llama-3.2-1b-instruct-gguf:Q4_K_M"),
        "{out}"
    );
    let expected = expected_files(
        &registry,
        &[(
            "manifests/hf.co/bartowski/llama-3.2-1b-instruct-gguf/Q4_K_M",
            &model,
        )],
    );
    assert!(
        files(&models_dir) == expected,
        "{:?}",
        files(&models_dir).keys()
    );
    assert!(
        registry.requests().iter().any(|(m, uri)| m == "GET"
            && uri == "/v2/bartowski/llama-3.2-1b-instruct-gguf/manifests/Q4_K_M"),
        "{:?}",
        registry.requests()
    );
}

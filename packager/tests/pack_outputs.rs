//! `kiln pack` to local outputs (OCI layout, docker archive), with the proxy
//! layer, and with several models sharing blobs.

mod pack_support;

use std::fs;
use std::os::unix::fs::PermissionsExt as _;

use kiln_testkit::{Auth, ModelSpec};
use pack_support::*;
use serde_json::Value;

/// The OCI runtime config umoci derived from the image config.
fn runtime_config(bundle: &std::path::Path) -> Value {
    serde_json::from_slice(&fs::read(bundle.join("config.json")).expect("bundle config"))
        .expect("json")
}

/// The strings of a JSON array such as `process.args` or `Env`.
fn strings<'a>(array: &'a Value, what: &str) -> Vec<&'a str> {
    let items = array.as_array();
    let items = items.unwrap_or_else(|| panic!("{what} is not an array: {array}"));
    items.iter().filter_map(Value::as_str).collect()
}

/// Runs skopeo, checks that it succeeded and returns its stdout.
fn skopeo_ok(world: &World, args: &[&str]) -> Vec<u8> {
    let out = world.skopeo(args);
    assert!(
        out.status.success(),
        "skopeo {}: {}",
        args[0],
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[test]
fn pack_to_oci_layout_with_proxy_layer() {
    let world = World::start(Auth::Anonymous);
    let files = tempfile::tempdir().expect("files");
    let proxy_bin = files.path().join("kiln-proxy");
    fs::write(&proxy_bin, b"#!/bin/sh\necho fake proxy\n").expect("proxy");
    let plugin = files.path().join("api_key.wasm");
    fs::write(&plugin, b"\0asm\x01\0\0\0").expect("plugin");
    let proxy_config = files.path().join("proxy.toml");
    fs::write(&proxy_config, b"[limits]\nmax_in_flight = 4\n").expect("config");
    let out_dir = files.path().join("out");
    let output = format!("oci:{}:v1", out_dir.display());
    let args = [
        "--proxy-bin",
        proxy_bin.to_str().unwrap_or_default(),
        "--plugin",
        plugin.to_str().unwrap_or_default(),
        "--proxy-config",
        proxy_config.to_str().unwrap_or_default(),
        "--output",
        &output,
    ];
    let digest = ok(&world.pack(&args));
    assert!(digest.starts_with("sha256:"), "{digest}");

    let work = tempfile::tempdir().expect("work");
    let bundle = unpack_layout(&out_dir, "v1", work.path());
    let rootfs = bundle.join("rootfs");
    assert_model_tree(&world, &rootfs);
    let bin = rootfs.join("usr/local/bin/kiln-proxy");
    assert_eq!(
        fs::read(&bin).expect("proxy in image"),
        fs::read(&proxy_bin).expect("proxy")
    );
    assert_eq!(
        fs::metadata(&bin).expect("meta").permissions().mode() & 0o777,
        0o755
    );
    assert_eq!(
        fs::read(rootfs.join("plugins/api_key.wasm")).expect("plugin"),
        b"\0asm\x01\0\0\0"
    );
    assert_eq!(
        fs::read(rootfs.join("etc/kiln/proxy.toml")).expect("config"),
        b"[limits]\nmax_in_flight = 4\n"
    );

    let config = runtime_config(&bundle);
    let process_args = strings(&config["process"]["args"], "args");
    assert_eq!(
        process_args,
        [
            "/usr/local/bin/kiln-proxy",
            "--spawn-ollama",
            "--ollama-command",
            "/bin/ollama"
        ],
        "the base's `serve` must not leak into the proxy's args"
    );
    let env = strings(&config["process"]["env"], "env");
    assert!(env.contains(&"OLLAMA_HOST=127.0.0.1:11434"), "{env:?}");
    assert!(env.contains(&"KILN_CONFIG=/etc/kiln/proxy.toml"), "{env:?}");

    // Re-packing into the same directory replaces it and gives the same digest.
    assert_eq!(ok(&world.pack(&args)), digest);
    let leftovers: Vec<_> = fs::read_dir(files.path())
        .expect("list")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".kiln-"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "temporary files left behind: {leftovers:?}"
    );
}

#[test]
fn pack_to_docker_archive_reads_back_with_skopeo() {
    let world = World::start(Auth::Anonymous);
    let dir = tempfile::tempdir().expect("dir");
    let archive = dir.path().join("gemma.tar");
    ok(&world.pack(&["--output", &format!("docker-archive:{}", archive.display())]));

    let inspect = skopeo_ok(
        &world,
        &["inspect", &format!("docker-archive:{}", archive.display())],
    );
    let info: Value = serde_json::from_slice(&inspect).expect("json");
    assert_eq!(info["Layers"].as_array().map(Vec::len), Some(4));
    let env = strings(&info["Env"], "Env");
    assert!(env.contains(&"OLLAMA_MODELS=/models"), "{env:?}");

    // docker load reads the same file skopeo does: copy it out and unpack it.
    let layout = dir.path().join("layout");
    skopeo_ok(
        &world,
        &[
            "copy",
            &format!("docker-archive:{}", archive.display()),
            &format!("oci:{}:img", layout.display()),
        ],
    );
    let bundle = unpack_layout(&layout, "img", dir.path());
    assert_model_tree(&world, &bundle.join("rootfs"));
}

#[test]
fn several_models_share_blobs_in_one_image() {
    let world = World::start(Auth::Anonymous);
    let small = ModelSpec {
        weights_size: MIB,
        seed: 99,
        ..ModelSpec::default()
    };
    let other = world
        .registry
        .seed_ollama_model("library/gemma3", "1b", &small)
        .expect("seed 1b");
    let dir = tempfile::tempdir().expect("dir");
    let layout = dir.path().join("out");
    ok(&world.pack(&[
        "gemma3:1b",
        "--output",
        &format!("oci:{}", layout.display()),
    ]));

    let index: Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).expect("index")).expect("json");
    let manifest_hex = index["manifests"][0]["digest"]
        .as_str()
        .expect("digest")
        .trim_start_matches("sha256:")
        .to_string();
    let manifest: Value = serde_json::from_slice(
        &fs::read(layout.join("blobs/sha256").join(manifest_hex)).expect("manifest"),
    )
    .expect("json");
    // 2 base + 2 weights + 1 manifests-and-small-blobs layer.
    assert_eq!(manifest["layers"].as_array().map(Vec::len), Some(5));

    let bundle = unpack_layout(&layout, "latest", dir.path());
    let rootfs = bundle.join("rootfs");
    assert_model_tree(&world, &rootfs);
    assert_eq!(
        fs::read(rootfs.join("models/manifests/registry.ollama.ai/library/gemma3/1b")).expect("1b"),
        other.manifest
    );
    // Template, license and params are the same bytes in both models: one file each.
    let blobs = fs::read_dir(rootfs.join("models/blobs"))
        .expect("blobs")
        .count();
    let distinct: std::collections::BTreeSet<&str> = world
        .model
        .layers
        .iter()
        .chain(&other.layers)
        .chain([&world.model.config, &other.config])
        .map(|b| b.digest.as_str())
        .collect();
    assert_eq!(blobs, distinct.len());
    let config = runtime_config(&bundle);
    let labels = &config["annotations"];
    let models: Value =
        serde_json::from_str(labels["dev.kiln.models"].as_str().expect("label")).expect("json");
    assert_eq!(models.as_array().map(Vec::len), Some(2), "{models}");
}

#[test]
fn gzip_layers_push_unpack_and_repack_identically() {
    let world = World::start(Auth::Anonymous);
    let target = format!("{}/kiln/gemma-gz:4b", world.host());
    let printed = ok(&world.pack(&["--compression", "gzip", "--push", &target]));
    let inspect = skopeo_ok(
        &world,
        &[
            "inspect",
            "--tls-verify=false",
            "--raw",
            &format!("docker://{target}"),
        ],
    );
    let manifest: Value = serde_json::from_slice(&inspect).expect("manifest");
    let types: Vec<&str> = manifest["layers"]
        .as_array()
        .expect("layers")
        .iter()
        .filter_map(|l| l["mediaType"].as_str())
        .collect();
    assert!(
        types
            .iter()
            .all(|t| *t == "application/vnd.oci.image.layer.v1.tar+gzip"),
        "{types:?}"
    );

    let work = tempfile::tempdir().expect("work");
    let bundle = unpack_pushed(&world, &target, work.path());
    assert_model_tree(&world, &bundle.join("rootfs"));

    // The cached digests must match the bytes produced again: the registry
    // would reject a mismatch, and nothing is uploaded twice.
    let uploads = world.uploads();
    assert_eq!(
        ok(&world.pack(&["--compression", "gzip", "--push", &target])),
        printed
    );
    assert_eq!(world.uploads(), uploads);
    // Uncompressed is a different image.
    assert_ne!(ok(&world.pack(&["--push", &target])), printed);
}

#[test]
fn models_path_moves_the_tree_and_the_env() {
    let world = World::start(Auth::Anonymous);
    let dir = tempfile::tempdir().expect("dir");
    let layout = dir.path().join("out");
    ok(&world.pack(&[
        "--models-path",
        "/srv/ollama/models",
        "--output",
        &format!("oci:{}", layout.display()),
    ]));
    let bundle = unpack_layout(&layout, "latest", dir.path());
    let rootfs = bundle.join("rootfs");
    let manifest = rootfs.join("srv/ollama/models/manifests/registry.ollama.ai/library/gemma3/4b");
    assert_eq!(
        fs::read(manifest).expect("manifest under --models-path"),
        world.model.manifest
    );
    assert!(
        !rootfs.join("models").exists(),
        "nothing under the default path"
    );
    let config = runtime_config(&bundle);
    let env = strings(&config["process"]["env"], "env");
    assert!(env.contains(&"OLLAMA_MODELS=/srv/ollama/models"), "{env:?}");
    assert_eq!(
        config["annotations"]["dev.kiln.models-path"],
        "/srv/ollama/models"
    );
}

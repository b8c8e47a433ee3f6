//! `kiln pack` end to end, as a user runs it: the `kiln` binary against a real
//! `docker-registry` on loopback (anonymous, Basic, Bearer), checked with
//! independent tools (skopeo, umoci) and the registry's own access log.

mod pack_support;

use kiln_testkit::Auth;
use pack_support::*;
use serde_json::Value;

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

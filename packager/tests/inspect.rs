//! `kiln inspect` shows what a packed image holds, from a registry or an OCI layout.

mod pack_support;

use kiln_testkit::Auth;
use pack_support::*;

fn inspect(world: &World, image: &str, extra: &[&str]) -> String {
    let mut args = vec!["inspect".to_string(), image.to_string()];
    args.extend(extra.iter().map(|s| s.to_string()));
    ok(&kiln(&args, world.home.path(), None, None))
}

#[test]
fn inspect_shows_platform_env_models_and_layers() {
    let world = World::start(Auth::Anonymous);
    let target = format!("{}/kiln/gemma:4b", world.host());
    let pushed = ok(&world.pack(&["--push", &target]));
    let digest = pushed.split_once('@').map(|(_, d)| d).unwrap_or_default();

    let shown = inspect(&world, &target, &[]);
    for want in [
        format!("Digest:     {digest}"),
        "Platform:   linux/amd64".to_string(),
        "Entrypoint: [\"/bin/ollama\"]".to_string(),
        "  OLLAMA_MODELS=/models".to_string(),
        "  OLLAMA_HOST=0.0.0.0:8080".to_string(),
        "Models (in /models):".to_string(),
        format!(
            "  registry.ollama.ai/library/gemma3:4b  {}",
            world.model.manifest_digest
        ),
        "Layers (4,".to_string(),
        format!(
            "weights: registry.ollama.ai/library/gemma3:4b {}",
            world.model.layers[0].digest
        ),
        "ADD os files".to_string(),
    ] {
        assert!(shown.contains(&want), "{want:?} missing from:\n{shown}");
    }

    // The same image from an OCI layout, and as JSON.
    let dir = tempfile::tempdir().expect("dir");
    let layout = dir.path().join("out");
    ok(&world.pack(&["--output", &format!("oci:{}:4b", layout.display())]));
    let local = inspect(&world, &format!("oci:{}:4b", layout.display()), &[]);
    assert!(
        local.contains(&format!("Digest:     {digest}")),
        "same inputs, same digest:\n{local}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&inspect(&world, &target, &["--json"])).expect("json");
    assert_eq!(json["digest"], digest);
    assert_eq!(json["manifest"]["layers"].as_array().map(Vec::len), Some(4));
}

#[test]
fn inspect_of_a_missing_image_is_one_line() {
    let world = World::start(Auth::Anonymous);
    let args = vec![
        "inspect".to_string(),
        format!("{}/kiln/none:1", world.host()),
    ];
    let line = failure(&kiln(&args, world.home.path(), None, None));
    assert!(line.contains("kiln/none:1 not found"), "{line}");
}

//! The Dockerfile and `kiln pack` must give the same runtime: same files at
//! the same paths, same environment, same entrypoint. No Docker engine runs
//! here, so the Dockerfile is parsed (which also guards its syntax) and its
//! final stage compared with what `kiln pack` writes, as umoci unpacks it.

mod pack_support;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use dockerfile_parser::{Dockerfile, Instruction};
use kiln_testkit::Auth;
use pack_support::*;
use serde_json::Value;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// What the Dockerfile's final stage sets up.
struct FinalStage {
    env: BTreeMap<String, String>,
    entrypoint: Vec<String>,
    cmd: Vec<String>,
    exposed: Vec<String>,
    /// COPY destinations, in order.
    copies: Vec<String>,
    /// `ARG NAME=default` values seen in the final stage.
    args: BTreeMap<String, String>,
}

fn parse_dockerfile() -> (Dockerfile, FinalStage) {
    let text = fs::read_to_string(repo_root().join("Dockerfile")).expect("Dockerfile");
    let dockerfile =
        Dockerfile::parse(&text).unwrap_or_else(|e| panic!("Dockerfile does not parse: {e}"));
    let stages = dockerfile.stages();
    let last = stages.iter().last().expect("a final stage");
    let mut stage = FinalStage {
        env: BTreeMap::new(),
        entrypoint: Vec::new(),
        cmd: Vec::new(),
        exposed: Vec::new(),
        copies: Vec::new(),
        args: BTreeMap::new(),
    };
    for instruction in &last.instructions {
        match instruction {
            Instruction::Arg(arg) => {
                let value = arg
                    .value
                    .as_ref()
                    .map(|v| v.content.clone())
                    .unwrap_or_default();
                stage.args.insert(arg.name.content.clone(), value);
            }
            Instruction::Env(env) => {
                for var in &env.vars {
                    let value = substitute(&var.value.to_string(), &stage.args);
                    stage.env.insert(var.key.content.clone(), value);
                }
            }
            Instruction::Entrypoint(e) => {
                let exec = e.expr.as_exec().expect("ENTRYPOINT in exec form");
                stage.entrypoint = exec.as_str_vec().iter().map(|s| s.to_string()).collect();
            }
            Instruction::Cmd(c) => {
                let exec = c.expr.as_exec().expect("CMD in exec form");
                stage.cmd = exec.as_str_vec().iter().map(|s| s.to_string()).collect();
            }
            Instruction::Copy(copy) => stage.copies.push(copy.destination.content.clone()),
            Instruction::Misc(misc) if misc.instruction.content.eq_ignore_ascii_case("expose") => {
                stage
                    .exposed
                    .extend(misc.arguments.to_string().split_whitespace().map(|p| {
                        if p.contains('/') {
                            p.to_string()
                        } else {
                            format!("{p}/tcp")
                        }
                    }));
            }
            _ => {}
        }
    }
    drop(stages);
    (dockerfile, stage)
}

/// `${NAME}` and `$NAME` from the stage's ARG defaults (what `docker build` does without --build-arg).
fn substitute(value: &str, args: &BTreeMap<String, String>) -> String {
    let mut out = value.trim().to_string();
    for (name, default) in args {
        out = out
            .replace(&format!("${{{name}}}"), default)
            .replace(&format!("${name}"), default);
    }
    out
}

/// The image kiln pack builds with the same inputs as the Dockerfile, unpacked by umoci.
fn packed_bundle(world: &World, work: &Path) -> PathBuf {
    let files = work.join("inputs");
    fs::create_dir_all(&files).unwrap();
    let proxy_bin = files.join("kiln-proxy");
    fs::write(&proxy_bin, b"#!/bin/sh\n").unwrap();
    let plugin = files.join("api_key.wasm");
    fs::write(&plugin, b"\0asm\x01\0\0\0").unwrap();
    let config = repo_root().join("deploy/kiln-proxy.toml");
    let layout = work.join("layout");
    ok(&world.pack(&[
        "--proxy-bin",
        proxy_bin.to_str().unwrap(),
        "--plugin",
        plugin.to_str().unwrap(),
        "--proxy-config",
        config.to_str().unwrap(),
        "--output",
        &format!("oci:{}:v1", layout.display()),
    ]));
    unpack_layout(&layout, "v1", work)
}

#[test]
fn dockerfile_parses_and_builds_in_stages() {
    let (dockerfile, stage) = parse_dockerfile();
    let names: Vec<Option<String>> = dockerfile.stages().iter().map(|s| s.name.clone()).collect();
    assert_eq!(
        names,
        [
            Some("build".into()),
            Some("models".into()),
            Some("plugins".into()),
            None
        ]
    );
    // The model comes from `kiln pull`, never from `ollama serve & sleep`.
    let text = fs::read_to_string(repo_root().join("Dockerfile")).unwrap();
    assert!(text.contains("kiln pull $MODEL --models-dir /models"));
    for instruction in &dockerfile.instructions {
        if let Instruction::Run(run) = instruction {
            let command = format!("{:?}", run.expr);
            assert!(
                !command.contains("ollama serve"),
                "no server needed to pull: {command}"
            );
        }
    }
    assert_eq!(
        stage.copies,
        [
            "/models",
            "/usr/local/bin/kiln-proxy",
            "/plugins",
            "/etc/kiln/proxy.toml"
        ]
    );
}

#[test]
fn dockerfile_and_pack_give_the_same_runtime() {
    let (_, stage) = parse_dockerfile();
    let world = World::start(Auth::Anonymous);
    let work = tempfile::tempdir().unwrap();
    let bundle = packed_bundle(&world, work.path());
    let runtime: Value =
        serde_json::from_slice(&fs::read(bundle.join("config.json")).unwrap()).unwrap();
    let rootfs = bundle.join("rootfs");

    // Same entrypoint and arguments.
    let args: Vec<String> = runtime["process"]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    let mut expected = stage.entrypoint.clone();
    expected.extend(stage.cmd.clone());
    assert_eq!(args, expected, "entrypoint + cmd differ");

    // Every variable the Dockerfile sets, the packed image sets to the same value.
    let packed_env: BTreeMap<String, String> = runtime["process"]["env"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| {
            e.as_str()?
                .split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect();
    for (key, value) in &stage.env {
        assert_eq!(
            packed_env.get(key),
            Some(value),
            "{key} differs between Dockerfile and kiln pack"
        );
    }

    // Same files in the same places.
    assert_model_tree(&world, &rootfs);
    assert!(rootfs.join("usr/local/bin/kiln-proxy").is_file());
    assert!(rootfs.join("plugins/api_key.wasm").is_file());
    assert_eq!(
        fs::read(rootfs.join("etc/kiln/proxy.toml")).unwrap(),
        fs::read(repo_root().join("deploy/kiln-proxy.toml")).unwrap()
    );
    let image_config_ports = exposed_ports(&bundle);
    for port in &stage.exposed {
        assert!(
            image_config_ports.contains(port),
            "EXPOSE {port} missing from kiln pack's config"
        );
    }

    // The Dockerfile's models stage runs `kiln pull --models-dir`: it must
    // write exactly the tree kiln pack bakes.
    let models = work.path().join("models");
    let out = kiln(
        &[
            "pull".into(),
            "gemma3:4b".into(),
            "--source-registry".into(),
            world.registry.url(),
            "--models-dir".into(),
            models.to_str().unwrap().into(),
            "--progress".into(),
            "quiet".into(),
        ],
        world.home.path(),
        None,
        None,
    );
    ok(&out);
    assert_eq!(
        tree(&models),
        tree(&rootfs.join("models")),
        "kiln pull and kiln pack lay out /models differently"
    );
}

/// Exposed ports from the image config umoci kept next to the bundle.
fn exposed_ports(bundle: &Path) -> Vec<String> {
    // umoci records the image config's annotations in the runtime spec.
    let runtime: Value =
        serde_json::from_slice(&fs::read(bundle.join("config.json")).unwrap()).unwrap();
    runtime["annotations"]["org.opencontainers.image.exposedPorts"]
        .as_str()
        .unwrap_or_default()
        .split(',')
        .map(str::to_string)
        .collect()
}

/// Relative path → (mode, sha256) of every file and dir under `root`.
fn tree(root: &Path) -> BTreeMap<String, (u32, String)> {
    use std::os::unix::fs::PermissionsExt as _;
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            let meta = fs::metadata(&path).unwrap();
            let mode = meta.permissions().mode() & 0o777;
            if meta.is_dir() {
                out.insert(rel, (mode, String::new()));
                stack.push(path);
            } else {
                out.insert(rel, (mode, sha256_file(&path)));
            }
        }
    }
    out
}

//! `kiln pack` with bad input: each failure is one clear line with exit code
//! 1 (2 for usage errors), and nothing half-written is left behind.

mod pack_support;

use std::fs;
use std::path::Path;
use std::process::Command;

use kiln_testkit::{Auth, TestRegistry};
use pack_support::*;

fn oci_out(dir: &Path) -> String {
    format!("oci:{}", dir.join("out").display())
}

#[test]
fn unknown_base_image_is_one_clear_line() {
    let world = World::start(Auth::Anonymous);
    let dir = tempfile::tempdir().expect("dir");
    let base = format!("{}/nobody/nothing:1.0", world.host());
    let line = failure(&world.pack(&["--base", &base, "--output", &oci_out(dir.path())]));
    assert!(
        line.contains("nobody/nothing") && line.contains("not found"),
        "{line}"
    );
    assert!(!dir.path().join("out").exists(), "nothing may be written");
}

#[test]
fn missing_platform_names_the_ones_available() {
    let world = World::start(Auth::Anonymous);
    let dir = tempfile::tempdir().expect("dir");
    let line = failure(&world.pack(&[
        "--platform",
        "linux/s390x",
        "--output",
        &oci_out(dir.path()),
    ]));
    assert!(
        line.contains("no linux/s390x image") && line.contains("linux/amd64, linux/arm64"),
        "{line}"
    );
}

#[test]
fn unreachable_registry_is_named() {
    let world = World::start(Auth::Anonymous);
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let target = format!("127.0.0.1:{port}/kiln/gemma:4b");
    let line = failure(&world.pack(&["--push", &target]));
    assert!(
        line.contains(&format!("cannot reach registry 127.0.0.1:{port}")),
        "{line}"
    );
}

/// Model and base on an open registry, target behind auth, wrong password.
fn wrong_password(auth: Auth) {
    let world = World::start(Auth::Anonymous);
    let target_registry = TestRegistry::start(auth).expect("target registry");
    let target = format!("{}/kiln/gemma:4b", target_registry.host());
    let args: Vec<String> = [
        "pack",
        "gemma3:4b",
        "--source-registry",
        &world.registry.url(),
        "--base",
        &format!("{}/ollama/ollama:latest", world.host()),
        "--push",
        &target,
        "--username",
        "kiln",
        "--password-stdin",
        "--progress",
        "quiet",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let out = kiln(&args, world.home.path(), None, Some("not-the-password\n"));
    let line = failure(&out);
    assert!(
        line.contains("rejected the credentials") && line.contains("--password-stdin"),
        "{line}"
    );
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("not-the-password"),
        "secrets must not be printed"
    );
    // The probe runs before the pull: no weights were fetched.
    let weights = &world.model.layers[0].digest;
    assert!(
        !world
            .registry
            .requests()
            .iter()
            .any(|(m, u)| m == "GET" && u.ends_with(weights.as_str())),
        "weights were pulled before the credential check"
    );
}

#[test]
fn wrong_password_basic_is_401_line() {
    wrong_password(Auth::basic());
}

#[test]
fn wrong_password_bearer_is_401_line() {
    wrong_password(Auth::bearer());
}

#[test]
fn failed_push_leaves_no_tag() {
    // Base on one registry, target on another: base layers are streamed across.
    let world = World::start(Auth::Anonymous);
    let target_registry = TestRegistry::start(Auth::Anonymous).expect("target");
    // Lose a base layer's bytes in the source registry after seeding.
    let lost = &world.base.platform("amd64").expect("amd64").layers[1].digest;
    let hex = lost.trim_start_matches("sha256:");
    let data = world.registry.storage_dir().join(format!(
        "docker/registry/v2/blobs/sha256/{}/{hex}/data",
        &hex[..2]
    ));
    fs::remove_file(&data).unwrap_or_else(|e| panic!("{}: {e}", data.display()));

    let target = format!("{}/kiln/gemma:4b", target_registry.host());
    let line = failure(&world.pack(&["--push", &target]));
    assert!(line.contains(&target), "{line}");
    assert!(
        target_registry.get_manifest("kiln/gemma", "4b").is_err(),
        "a failed push must not leave a tag"
    );
    assert!(
        !target_registry
            .requests()
            .iter()
            .any(|(m, u)| m == "PUT" && u.contains("/manifests/")),
        "manifest pushed despite a failed blob"
    );
}

/// A 1 MiB tmpfs (when this user may mount one) or a file-size limit: the
/// output fails part way and must leave no partial layout.
#[test]
fn full_disk_leaves_no_partial_layout() {
    let world = World::start(Auth::Anonymous);
    let dir = tempfile::tempdir().expect("dir");
    // KILN_TEST_NO_TMPFS=1 forces the file-size-limit variant.
    let mounted = std::env::var_os("KILN_TEST_NO_TMPFS").is_none()
        && Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
            .arg(dir.path())
            .output()
            .is_ok_and(|o| o.status.success());
    struct Unmount<'a>(&'a Path, bool);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            if self.1 {
                let _ = Command::new("umount").arg(self.0).status();
            }
        }
    }
    let _guard = Unmount(dir.path(), mounted);
    let out_dir = dir.path().join("out");
    let out = if mounted {
        world.pack(&["--output", &format!("oci:{}", out_dir.display())])
    } else {
        // No mount permission: limit file sizes instead (SIGXFSZ ignored, so
        // the write fails with EFBIG, and kiln takes the same error path).
        // The model is pulled first, without the limit, so the limit hits the output.
        ok(&world.pack(&[
            "--output",
            &format!("oci:{}", world.home.path().join("warm").display()),
        ]));
        let script = format!(
            "trap '' XFSZ; ulimit -f 1024; exec \"$0\" pack gemma3:4b --source-registry {} --base {}/ollama/ollama:latest --progress quiet --output oci:{}",
            world.registry.url(),
            world.host(),
            out_dir.display()
        );
        let home = world.home.path();
        Command::new("sh")
            .args(["-c", &script, env!("CARGO_BIN_EXE_kiln")])
            .env("HOME", home)
            .env("DOCKER_CONFIG", home.join(".docker"))
            .env("XDG_CACHE_HOME", home.join("cache"))
            .output()
            .expect("sh")
    };
    let line = failure(&out);
    let expected = if mounted {
        "no space left on device"
    } else {
        "the file is too large"
    };
    assert!(
        line.contains(&format!("{}: {expected}", out_dir.display())),
        "{line}"
    );
    let left: Vec<String> = fs::read_dir(dir.path())
        .expect("list")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(left.is_empty(), "partial output left behind: {left:?}");
}

#[test]
fn usage_errors_exit_2() {
    let home = tempfile::tempdir().expect("home");
    for args in [
        vec!["pack"],
        vec!["pack", "gemma3:4b", "--output", "tarball:x.tar"],
        vec!["pack", "gemma3:4b", "--plugin", "x.wasm"],
        vec!["pack", "gemma3:4b", "--platform", "amd64"],
        vec!["pack", "gemma3:4b", "--base", "Not A Ref"],
        vec![
            "pack",
            "gemma3:4b",
            "--push",
            "r.example/x:y",
            "--output",
            "oci:x",
        ],
    ] {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let out = kiln(&args, home.path(), None, None);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn output_never_replaces_a_directory_that_is_not_a_layout() {
    let world = World::start(Auth::Anonymous);
    let dir = tempfile::tempdir().expect("dir");
    let out = dir.path().join("out");
    fs::create_dir(&out).expect("mkdir");
    fs::write(out.join("precious.txt"), b"keep me").expect("write");
    let line = failure(&world.pack(&["--output", &oci_out(dir.path())]));
    assert!(line.contains("is not an OCI layout"), "{line}");
    assert_eq!(
        fs::read(out.join("precious.txt")).expect("still there"),
        b"keep me"
    );
}

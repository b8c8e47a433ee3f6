//! Registry manifests, indexes and image configs (packager/src/image): what
//! a registry serves for the base image is read by `AnyManifest::parse`,
//! and its config by `diff_ids` and `edit_config`. Never a panic, whatever
//! the registry sends; an edited config is JSON that reads back.
#![no_main]
#![allow(dead_code, unused_imports)]

/// The packager's image model (see build.rs).
mod image {
    include!(concat!(env!("OUT_DIR"), "/image.rs"));
}

use image::AnyManifest;
use image::config::{ConfigEdit, diff_ids, edit_config};
use libfuzzer_sys::fuzz_target;

const CONTENT_TYPES: [&str; 6] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json; charset=utf-8",
    "application/json",
    "",
];

fuzz_target!(|data: &[u8]| {
    let Some((&pick, bytes)) = data.split_first() else {
        return;
    };
    let content_type = CONTENT_TYPES[pick as usize % CONTENT_TYPES.len()];
    if let Ok(AnyManifest::Image(manifest)) = AnyManifest::parse(content_type, bytes, "fuzz") {
        let _ = manifest.to_bytes();
        for layer in &manifest.layers {
            let _ = layer.annotation("org.opencontainers.image.title");
        }
    }
    let _ = diff_ids(bytes);
    let edit = ConfigEdit {
        env: vec![("OLLAMA_HOST".into(), "127.0.0.1:11434".into())],
        cmd: Some(Vec::new()),
        exposed_ports: vec!["8080/tcp".into()],
        created: "2026-01-01T00:00:00Z".into(),
        ..ConfigEdit::default()
    };
    if let Ok(edited) = edit_config(bytes, &edit) {
        diff_ids(&edited).expect("an edited config reads back");
    }
});

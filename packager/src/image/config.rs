//! The new image config: the base config kept as it is (unknown fields
//! included), with kiln's env, entrypoint, ports, labels, and a `history` entry
//! and `rootfs.diff_ids` entry for every added layer.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use super::ImageError;

/// One layer kiln adds on top of the base.
#[derive(Clone, Debug)]
pub struct AddedLayer {
    /// sha256 of the uncompressed tar (equal to the layer digest: kiln's layers are uncompressed).
    pub diff_id: String,
    /// What made it, shown by `docker history` and `kiln inspect`.
    pub created_by: String,
}

/// What changes between the base config and the new one.
#[derive(Clone, Debug, Default)]
pub struct ConfigEdit {
    /// Set or replace `KEY=VALUE` entries; other base entries (PATH…) stay.
    pub env: Vec<(String, String)>,
    /// Replaces the entrypoint when set.
    pub entrypoint: Option<Vec<String>>,
    /// Replaces the command when set; an empty list removes it (the base's
    /// `serve` must not become arguments of a different entrypoint).
    pub cmd: Option<Vec<String>>,
    /// Added to the base's exposed ports, e.g. `8080/tcp`.
    pub exposed_ports: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub layers: Vec<AddedLayer>,
    /// RFC 3339 time for the config and the new history entries. Fixed (not
    /// "now") so packing the same inputs twice gives the same digest.
    pub created: String,
}

/// Applies `edit` to the base config bytes and returns the new config bytes.
pub fn edit_config(base: &[u8], edit: &ConfigEdit) -> Result<Vec<u8>, ImageError> {
    let json_err = |source| ImageError::Json {
        what: "the base image config".into(),
        kind: "config",
        source,
    };
    let mut root: Map<String, Value> = serde_json::from_slice(base).map_err(json_err)?;

    let config = object_entry(&mut root, "config");
    if !edit.env.is_empty() {
        let mut env: Vec<String> = string_list(config.get("Env"));
        for (key, value) in &edit.env {
            let entry = format!("{key}={value}");
            let prefix = format!("{key}=");
            match env.iter_mut().find(|e| e.starts_with(&prefix) || *e == key) {
                Some(existing) => *existing = entry,
                None => env.push(entry),
            }
        }
        config.insert("Env".into(), json!(env));
    }
    if let Some(entrypoint) = &edit.entrypoint {
        config.insert("Entrypoint".into(), json!(entrypoint));
    }
    match &edit.cmd {
        Some(cmd) if cmd.is_empty() => {
            config.remove("Cmd");
        }
        Some(cmd) => {
            config.insert("Cmd".into(), json!(cmd));
        }
        None => {}
    }
    if !edit.exposed_ports.is_empty() {
        let ports = object_entry(config, "ExposedPorts");
        for port in &edit.exposed_ports {
            ports.insert(port.clone(), json!({}));
        }
    }
    if !edit.labels.is_empty() {
        let labels = object_entry(config, "Labels");
        for (k, v) in &edit.labels {
            labels.insert(k.clone(), json!(v));
        }
    }

    let rootfs = object_entry(&mut root, "rootfs");
    rootfs.insert("type".into(), json!("layers"));
    let mut diff_ids = string_list(rootfs.get("diff_ids"));
    diff_ids.extend(edit.layers.iter().map(|l| l.diff_id.clone()));
    rootfs.insert("diff_ids".into(), json!(diff_ids));

    let mut history = match root.remove("history") {
        Some(Value::Array(h)) => h,
        _ => Vec::new(),
    };
    for layer in &edit.layers {
        history.push(json!({"created": edit.created, "created_by": layer.created_by, "comment": "kiln pack"}));
    }
    root.insert("history".into(), Value::Array(history));
    root.insert("created".into(), json!(edit.created));
    Ok(serde_json::to_vec(&Value::Object(root)).unwrap_or_default())
}

/// The `rootfs.diff_ids` of a config (to check a base config against its manifest).
pub fn diff_ids(config: &[u8]) -> Result<Vec<String>, ImageError> {
    let value: Value = serde_json::from_slice(config).map_err(|source| ImageError::Json {
        what: "the image config".into(),
        kind: "config",
        source,
    })?;
    Ok(string_list(value.pointer("/rootfs/diff_ids")))
}

fn object_entry<'a>(map: &'a mut Map<String, Value>, key: &str) -> &'a mut Map<String, Value> {
    let slot = map
        .entry(key.to_string())
        .or_insert_with(|| Value::Object(Map::new()));
    if !slot.is_object() {
        // `null` (Docker writes "Labels": null) becomes an empty object.
        *slot = Value::Object(Map::new());
    }
    match slot {
        Value::Object(m) => m,
        _ => unreachable!("slot was just made an object"),
    }
}

fn string_list(value: Option<&Value>) -> Vec<String> {
    match value {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Vec<u8> {
        serde_json::to_vec(&json!({
            "architecture": "amd64", "os": "linux", "created": "2025-01-01T00:00:00Z",
            "config": {"Env": ["PATH=/bin", "OLLAMA_HOST=0.0.0.0:11434"], "Entrypoint": ["/bin/ollama"],
                       "Cmd": ["serve"], "ExposedPorts": {"11434/tcp": {}}, "Labels": null},
            "rootfs": {"type": "layers", "diff_ids": ["sha256:aa"]},
            "history": [{"created_by": "base"}],
            "unknown_field": 7
        }))
        .unwrap()
    }

    #[test]
    fn edit_keeps_base_and_adds_kiln_settings() {
        let edit = ConfigEdit {
            env: vec![
                ("OLLAMA_HOST".into(), "127.0.0.1:11434".into()),
                ("OLLAMA_MODELS".into(), "/models".into()),
            ],
            entrypoint: Some(vec!["/usr/local/bin/kiln-proxy".into()]),
            cmd: Some(vec![]),
            exposed_ports: vec!["8080/tcp".into()],
            labels: BTreeMap::from([("dev.kiln.models".into(), "[]".into())]),
            layers: vec![AddedLayer {
                diff_id: "sha256:bb".into(),
                created_by: "weights".into(),
            }],
            created: "1970-01-01T00:00:00Z".into(),
        };
        let out: Value = serde_json::from_slice(&edit_config(&base(), &edit).unwrap()).unwrap();
        assert_eq!(
            out["config"]["Env"],
            json!([
                "PATH=/bin",
                "OLLAMA_HOST=127.0.0.1:11434",
                "OLLAMA_MODELS=/models"
            ])
        );
        assert_eq!(
            out["config"]["Entrypoint"],
            json!(["/usr/local/bin/kiln-proxy"])
        );
        assert!(
            out["config"].get("Cmd").is_none(),
            "base Cmd must not become proxy arguments"
        );
        assert_eq!(
            out["config"]["ExposedPorts"],
            json!({"11434/tcp": {}, "8080/tcp": {}})
        );
        assert_eq!(out["config"]["Labels"]["dev.kiln.models"], json!("[]"));
        assert_eq!(out["rootfs"]["diff_ids"], json!(["sha256:aa", "sha256:bb"]));
        assert_eq!(out["history"].as_array().unwrap().len(), 2);
        assert_eq!(out["unknown_field"], json!(7));
        assert_eq!(
            diff_ids(&serde_json::to_vec(&out).unwrap()).unwrap(),
            vec!["sha256:aa", "sha256:bb"]
        );
    }

    #[test]
    fn edit_is_deterministic() {
        let edit = ConfigEdit {
            created: "1970-01-01T00:00:00Z".into(),
            ..Default::default()
        };
        assert_eq!(
            edit_config(&base(), &edit).unwrap(),
            edit_config(&base(), &edit).unwrap()
        );
    }
}

//! The models an `OLLAMA_MODELS` directory holds, read the way Ollama reads
//! it: manifests at `manifests/<host>/<namespace>/<model>/<tag>` (raw bytes,
//! whose sha256 is the model ID) and blobs at `blobs/sha256-<hex>`.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

const DEFAULT_HOST: &str = "registry.ollama.ai";
const DEFAULT_NAMESPACE: &str = "library";

/// One model found on disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalModel {
    /// The short name Ollama shows, e.g. `gemma3:4b`, `user/m:t`, `host/ns/m:t`.
    pub name: String,
    /// sha256 hex of the manifest bytes.
    pub digest: String,
    /// Sum of the layer sizes.
    pub size: u64,
    pub modified_unix: u64,
    pub family: String,
    pub parameter_size: String,
    pub quantization_level: String,
    /// Ollama's `thinking` capability (server/images.go `Capabilities`): the
    /// template has thinking tags. Here: the template blob has `<think>`.
    pub thinking: bool,
    /// Ollama's `tools` capability: the template uses `.Tools`.
    pub tools: bool,
}

/// Whether a model of this name thinks, for an emulator without a models
/// directory (every name exists) and for [`write_fake_model`]: the
/// families Ollama ships with thinking templates. gemma3 does not think.
pub fn thinks_by_name(name: &str) -> bool {
    let short = normalize(name);
    let base = short.rsplit('/').next().unwrap_or(&short);
    ["qwen3", "deepseek-r1", "gpt-oss", "magistral"]
        .iter()
        .any(|f| base.starts_with(f))
}

/// Whether `name` can think: from its template on disk when there is a
/// models directory, else by name.
pub fn thinks(root: Option<&Path>, name: &str) -> bool {
    match root {
        Some(root) => {
            let want = normalize(name);
            scan(root).iter().any(|m| m.name == want && m.thinking)
        }
        None => thinks_by_name(name),
    }
}

/// Whether a model of this name calls tools (its template renders
/// `.Tools`), for an emulator without a models directory and for
/// [`write_fake_model`]. gemma3's template in Ollama's library has no tools
/// section, so Ollama refuses tools for it.
pub fn tools_by_name(name: &str) -> bool {
    let short = normalize(name);
    let base = short.rsplit('/').next().unwrap_or(&short);
    [
        "qwen3", "qwen2.5", "llama3.1", "llama3.2", "llama3.3", "mistral", "gpt-oss",
    ]
    .iter()
    .any(|f| base.starts_with(f))
}

/// Whether `name` calls tools: from its template on disk when there is a
/// models directory, else by name.
pub fn calls_tools(root: Option<&Path>, name: &str) -> bool {
    match root {
        Some(root) => {
            let want = normalize(name);
            scan(root).iter().any(|m| m.name == want && m.tools)
        }
        None => tools_by_name(name),
    }
}

/// Ollama's full name of a model, as its capability errors print it
/// (`registry.ollama.ai/library/gemma3:4b`).
pub fn full_name(name: &str) -> String {
    let short = normalize(name);
    match short.matches('/').count() {
        0 => format!("{DEFAULT_HOST}/{DEFAULT_NAMESPACE}/{short}"),
        1 => format!("{DEFAULT_HOST}/{short}"),
        _ => short,
    }
}

/// The template of a thinking model (qwen3's, shortened): the thinking
/// tags Ollama infers the capability from.
const THINKING_TEMPLATE: &[u8] =
    b"{{ if .Thinking }}<think>{{ .Thinking }}</think>{{ end }}{{ .Prompt }}";

/// The tools section of a tool-calling model's template (shortened): the
/// `.Tools` Ollama infers the capability from.
const TOOLS_TEMPLATE: &[u8] =
    b"{{ if .Tools }}<tools>{{ range .Tools }}{{ . }}{{ end }}</tools>{{ end }}";

/// Canonical short form of a model name as a client writes it:
/// `gemma3` → `gemma3:latest`, `registry.ollama.ai/library/gemma3:4b` → `gemma3:4b`.
pub fn normalize(name: &str) -> String {
    let (path, tag) = match name.rfind(':') {
        Some(i) if !name[i..].contains('/') => (&name[..i], &name[i + 1..]),
        _ => (name, "latest"),
    };
    let parts: Vec<&str> = path.split('/').collect();
    let (host, ns, model) = match parts.as_slice() {
        [m] => (DEFAULT_HOST, DEFAULT_NAMESPACE, *m),
        [ns, m] => (DEFAULT_HOST, *ns, *m),
        [host, ns, m] => (*host, *ns, *m),
        _ => return name.to_ascii_lowercase(),
    };
    short_name(host, ns, model, tag).to_ascii_lowercase()
}

fn short_name(host: &str, ns: &str, model: &str, tag: &str) -> String {
    match (host, ns) {
        (DEFAULT_HOST, DEFAULT_NAMESPACE) => format!("{model}:{tag}"),
        (DEFAULT_HOST, _) => format!("{ns}/{model}:{tag}"),
        _ => format!("{host}/{ns}/{model}:{tag}"),
    }
}

/// Lists the models under `root` (the `OLLAMA_MODELS` directory), sorted by
/// name. Entries that are not valid manifests are skipped, as Ollama does.
pub fn scan(root: &Path) -> Vec<LocalModel> {
    let mut found = Vec::new();
    let manifests = root.join("manifests");
    for host in dir_entries(&manifests) {
        for ns in dir_entries(&host) {
            for model in dir_entries(&ns) {
                for tag in dir_entries(&model) {
                    if let Some(m) = read_model(root, &host, &ns, &model, &tag) {
                        found.push(m);
                    }
                }
            }
        }
    }
    found.sort_by(|a, b| a.name.cmp(&b.name));
    found
}

fn dir_entries(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok().map(|e| e.path())).collect()
}

fn file_name(p: &Path) -> &str {
    p.file_name().and_then(|n| n.to_str()).unwrap_or("")
}

fn read_model(root: &Path, host: &Path, ns: &Path, model: &Path, tag: &Path) -> Option<LocalModel> {
    let bytes = std::fs::read(tag).ok()?;
    let manifest: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let layers = manifest.get("layers")?.as_array()?;
    let size = layers
        .iter()
        .filter_map(|l| l.get("size").and_then(|s| s.as_u64()))
        .sum();
    let modified_unix = std::fs::metadata(tag)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let template = layers
        .iter()
        .find(|l| {
            l.get("mediaType").and_then(|t| t.as_str())
                == Some("application/vnd.ollama.image.template")
        })
        .and_then(|l| l.get("digest").and_then(|d| d.as_str()))
        .and_then(|d| std::fs::read(root.join("blobs").join(d.replace(':', "-"))).ok())
        .unwrap_or_default();
    // The config blob carries the details `/api/tags` shows; a model whose
    // config is missing is still listed, with empty details.
    let config: serde_json::Value = manifest
        .pointer("/config/digest")
        .and_then(|d| d.as_str())
        .and_then(|d| std::fs::read(root.join("blobs").join(d.replace(':', "-"))).ok())
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let text = |k: &str| {
        config
            .get(k)
            .and_then(|v| v.as_str())
            .unwrap_or("")
            .to_string()
    };
    Some(LocalModel {
        name: short_name(
            file_name(host),
            file_name(ns),
            file_name(model),
            file_name(tag),
        ),
        digest: hex::encode(Sha256::digest(&bytes)),
        size,
        modified_unix,
        family: text("model_family"),
        parameter_size: text("model_type"),
        quantization_level: text("file_type"),
        thinking: contains(&template, b"<think>"),
        tools: contains(&template, b".Tools"),
    })
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Writes a small but well-formed model into an `OLLAMA_MODELS` directory:
/// config, weights (`weights_len` bytes), template and params blobs, and the
/// manifest, with the layout and permissions Ollama uses. For tests.
/// A name [`thinks_by_name`] gets its family and a thinking template
/// (e.g. `qwen3:0.6b`); any other name is a gemma3.
pub fn write_fake_model(
    root: &Path,
    name: &str,
    weights_len: usize,
) -> std::io::Result<LocalModel> {
    let short = normalize(name);
    let (path, tag) = short.rsplit_once(':').unwrap_or((short.as_str(), "latest"));
    let parts: Vec<&str> = path.split('/').collect();
    let (host, ns, model) = match parts.as_slice() {
        [m] => (DEFAULT_HOST, DEFAULT_NAMESPACE, *m),
        [ns, m] => (DEFAULT_HOST, *ns, *m),
        [h, ns, m] => (*h, *ns, *m),
        _ => {
            return Err(std::io::Error::other(format!(
                "cannot parse model name {name:?}"
            )));
        }
    };
    let blobs = root.join("blobs");
    std::fs::create_dir_all(&blobs)?;
    let put = |bytes: &[u8], media_type: &str| -> std::io::Result<serde_json::Value> {
        let hex = hex::encode(Sha256::digest(bytes));
        std::fs::write(blobs.join(format!("sha256-{hex}")), bytes)?;
        Ok(
            serde_json::json!({"mediaType": media_type, "digest": format!("sha256:{hex}"), "size": bytes.len()}),
        )
    };
    let thinking = thinks_by_name(&short);
    let family = if thinking {
        model.split(['-', '.']).next().unwrap_or(model)
    } else {
        "gemma3"
    };
    let config = serde_json::json!({
        "model_format": "gguf", "model_family": family, "model_families": [family],
        "model_type": if thinking { "751.63M" } else { "4.3B" }, "file_type": "Q4_K_M",
        "architecture": "amd64", "os": "linux",
    });
    let config = put(
        &serde_json::to_vec(&config).map_err(std::io::Error::other)?,
        "application/vnd.docker.container.image.v1+json",
    )?;
    let mut weights = b"GGUF".to_vec();
    weights.resize(weights_len.max(4), 0);
    let layers = vec![
        put(&weights, "application/vnd.ollama.image.model")?,
        put(
            &[
                if tools_by_name(&short) {
                    TOOLS_TEMPLATE
                } else {
                    b""
                },
                if thinking {
                    THINKING_TEMPLATE
                } else {
                    b"{{ .Prompt }}"
                },
            ]
            .concat(),
            "application/vnd.ollama.image.template",
        )?,
        put(
            br#"{"temperature":1,"top_k":64,"top_p":0.95}"#,
            "application/vnd.ollama.image.params",
        )?,
    ];
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": config,
        "layers": layers,
    });
    let dir = root.join("manifests").join(host).join(ns).join(model);
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join(tag),
        serde_json::to_vec(&manifest).map_err(std::io::Error::other)?,
    )?;
    scan(root)
        .into_iter()
        .find(|m| m.name == short)
        .ok_or_else(|| std::io::Error::other(format!("wrote {short} but cannot read it back")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_normalize_like_ollama() {
        for (input, want) in [
            ("gemma3", "gemma3:latest"),
            ("gemma3:4b", "gemma3:4b"),
            ("Gemma3:4B", "gemma3:4b"),
            ("registry.ollama.ai/library/gemma3:4b", "gemma3:4b"),
            ("user/m:t", "user/m:t"),
            ("localhost:5000/ns/m", "localhost:5000/ns/m:latest"),
        ] {
            assert_eq!(normalize(input), want, "{input}");
        }
    }

    #[test]
    fn scan_finds_written_models_and_skips_junk() {
        let dir = tempfile::tempdir().unwrap();
        let m = write_fake_model(dir.path(), "gemma3:4b", 64).unwrap();
        write_fake_model(dir.path(), "user/tiny", 8).unwrap();
        let junk = dir
            .path()
            .join("manifests/registry.ollama.ai/library/broken");
        std::fs::create_dir_all(&junk).unwrap();
        std::fs::write(junk.join("latest"), b"not json").unwrap();

        let found = scan(dir.path());
        let names: Vec<_> = found.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["gemma3:4b", "user/tiny:latest"]);
        assert_eq!(m.family, "gemma3");
        assert!(!m.thinking);
        assert!(m.size > 64);
        let q = write_fake_model(dir.path(), "qwen3:0.6b", 8).unwrap();
        assert_eq!((q.family.as_str(), q.thinking), ("qwen3", true));
        assert!(thinks(Some(dir.path()), "qwen3:0.6b"));
        assert!(!thinks(Some(dir.path()), "gemma3:4b"));
        assert!(!thinks(Some(dir.path()), "qwen3:8b"), "not on disk");
        assert_eq!(m.digest.len(), 64);
    }
}

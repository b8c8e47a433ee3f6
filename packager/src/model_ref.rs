//! Ollama model references: `gemma3:4b`, `user/model:tag`,
//! `HOST[:PORT]/NAMESPACE/MODEL:TAG`, parsed the way Ollama parses them
//! (`types/model/name.go`), as pure functions.
//!
//! Every part ends up as a directory or file name under `OLLAMA_MODELS`
//! (`manifests/<host>/<ns>/<model>/<tag>`), so the grammar is also the path
//! traversal defence: no part may start with `.`, contain `/` or `\`, or
//! exceed Ollama's length limits.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// Ollama's default registry, namespace and tag.
pub const DEFAULT_HOST: &str = "registry.ollama.ai";
pub const DEFAULT_NAMESPACE: &str = "library";
pub const DEFAULT_TAG: &str = "latest";

const ACCEPTED_FORMS: &str = "expected MODEL[:TAG], NAMESPACE/MODEL[:TAG] or HOST[:PORT]/NAMESPACE/MODEL[:TAG], e.g. gemma3:4b";

/// A fully qualified model name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ModelRef {
    /// Registry host, with a port when one was given (`127.0.0.1:5000`).
    pub host: String,
    pub namespace: String,
    pub model: String,
    pub tag: String,
}

/// Why a model reference was refused; the message shows the accepted form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid model reference {input:?}: {reason}; {ACCEPTED_FORMS}")]
pub struct ReferenceError {
    pub input: String,
    pub reason: String,
}

impl ModelRef {
    /// Parses a reference, filling in Ollama's defaults.
    pub fn parse(input: &str) -> Result<ModelRef, ReferenceError> {
        let fail = |reason: String| ReferenceError {
            input: input.to_string(),
            reason,
        };
        if input.is_empty() {
            return Err(fail("it is empty".into()));
        }
        if input.contains("://") {
            return Err(fail(
                "a URL scheme is not part of a model name (plain HTTP is automatic for loopback \
                 registries and for hosts given to --insecure-registry)"
                    .into(),
            ));
        }
        if input.contains('@') {
            return Err(fail(
                "pinning by digest (@sha256:…) is not supported; name a tag".into(),
            ));
        }
        // A ':' after the last '/' starts the tag, so `host:port/ns/m` keeps its port.
        let last_slash = input.rfind('/');
        let (path, tag) = match input.rfind(':') {
            Some(colon) if last_slash.is_none_or(|slash| colon > slash) => {
                (&input[..colon], Some(&input[colon + 1..]))
            }
            _ => (input, None),
        };
        let parts: Vec<&str> = path.split('/').collect();
        let (host, namespace, model) = match parts.as_slice() {
            [model] => (DEFAULT_HOST, DEFAULT_NAMESPACE, *model),
            [namespace, model] => (DEFAULT_HOST, *namespace, *model),
            [host, namespace, model] => (*host, *namespace, *model),
            _ => {
                return Err(fail(format!(
                    "it has {} '/'-separated parts, at most 3 are allowed",
                    parts.len()
                )));
            }
        };
        let tag = tag.unwrap_or(DEFAULT_TAG);
        check_part("host", host, 350, |c| {
            c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-')
        })
        .map_err(fail)?;
        check_part("namespace", namespace, 80, |c| {
            c.is_ascii_alphanumeric() || matches!(c, '_' | '-')
        })
        .map_err(fail)?;
        check_part("model", model, 80, |c| {
            c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')
        })
        .map_err(fail)?;
        check_part("tag", tag, 80, |c| {
            c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')
        })
        .map_err(fail)?;
        Ok(ModelRef {
            host: host.into(),
            namespace: namespace.into(),
            model: model.into(),
            tag: tag.into(),
        })
    }

    /// `<ns>/<model>`, the repository in registry URLs.
    pub fn repository(&self) -> String {
        format!("{}/{}", self.namespace, self.model)
    }

    /// Where Ollama keeps the manifest, relative to `OLLAMA_MODELS`.
    pub fn manifest_path(&self) -> PathBuf {
        [
            "manifests",
            &self.host,
            &self.namespace,
            &self.model,
            &self.tag,
        ]
        .iter()
        .collect()
    }

    /// The shortest name Ollama accepts for this model (`gemma3:4b`), as users type it.
    pub fn short(&self) -> String {
        match (
            self.host == DEFAULT_HOST,
            self.namespace == DEFAULT_NAMESPACE,
        ) {
            (true, true) => format!("{}:{}", self.model, self.tag),
            (true, false) => format!("{}/{}:{}", self.namespace, self.model, self.tag),
            _ => self.to_string(),
        }
    }

    /// Ollama's cloud tags (`gpt-oss:120b-cloud`) point at a remote service
    /// and carry no weights.
    pub fn is_cloud_tag(&self) -> bool {
        self.tag == "cloud" || self.tag.ends_with("-cloud")
    }

    /// The model's tag list on ollama.com, for "not found" hints; only for
    /// Ollama's own registry.
    pub fn tags_page(&self) -> Option<String> {
        (self.host == DEFAULT_HOST)
            .then(|| format!("https://ollama.com/{}/{}/tags", self.namespace, self.model))
    }
}

fn check_part(
    what: &str,
    value: &str,
    max: usize,
    allowed: impl Fn(char) -> bool,
) -> Result<(), String> {
    let Some(first) = value.chars().next() else {
        return Err(format!("the {what} is empty"));
    };
    if value.len() > max {
        return Err(format!(
            "the {what} is {} characters long, the limit is {max}",
            value.len()
        ));
    }
    // The first character may not be '.', '-' or ':': that keeps `.`, `..`
    // and option-like names out of the on-disk path.
    if !(first.is_ascii_alphanumeric() || first == '_') {
        return Err(format!(
            "the {what} {value:?} must start with a letter, digit or '_'"
        ));
    }
    if let Some(bad) = value.chars().find(|c| !allowed(*c)) {
        return Err(format!(
            "the {what} {value:?} contains {bad:?}, which is not allowed"
        ));
    }
    Ok(())
}

impl fmt::Display for ModelRef {
    /// The canonical form, `registry.ollama.ai/library/gemma3:4b`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}/{}:{}",
            self.host, self.namespace, self.model, self.tag
        )
    }
}

impl FromStr for ModelRef {
    type Err = ReferenceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ModelRef::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted_references_expand_to_ollama_defaults() {
        let cases = [
            (
                "gemma3",
                "registry.ollama.ai",
                "library",
                "gemma3",
                "latest",
            ),
            ("gemma3:4b", "registry.ollama.ai", "library", "gemma3", "4b"),
            (
                "library/gemma3:4b",
                "registry.ollama.ai",
                "library",
                "gemma3",
                "4b",
            ),
            (
                "user/my-model:v1.2_q4",
                "registry.ollama.ai",
                "user",
                "my-model",
                "v1.2_q4",
            ),
            (
                "127.0.0.1:5000/library/gemma3:4b",
                "127.0.0.1:5000",
                "library",
                "gemma3",
                "4b",
            ),
            (
                "127.0.0.1:5000/library/gemma3",
                "127.0.0.1:5000",
                "library",
                "gemma3",
                "latest",
            ),
            (
                "hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M",
                "hf.co",
                "bartowski",
                "Llama-3.2-1B-Instruct-GGUF",
                "Q4_K_M",
            ),
            (
                "registry.ollama.ai/library/gemma3:270m",
                "registry.ollama.ai",
                "library",
                "gemma3",
                "270m",
            ),
            (
                "gemma3:a..b",
                "registry.ollama.ai",
                "library",
                "gemma3",
                "a..b",
            ),
        ];
        for (input, host, namespace, model, tag) in cases {
            let parsed = ModelRef::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(
                (
                    parsed.host.as_str(),
                    parsed.namespace.as_str(),
                    parsed.model.as_str(),
                    parsed.tag.as_str()
                ),
                (host, namespace, model, tag),
                "{input}"
            );
        }
    }

    #[test]
    fn hostile_or_malformed_references_are_refused_with_the_accepted_form() {
        let long = "a".repeat(81);
        let long_host = format!("{}/library/m:t", "h".repeat(351));
        let cases: Vec<(&str, &str)> = vec![
            ("", "empty"),
            ("..", "must start with"),
            ("../../etc/passwd", "parts"),
            ("library/..:latest", "must start with"),
            ("gemma3:..", "must start with"),
            ("gemma3:.hidden", "must start with"),
            ("/etc/passwd", "empty"),
            ("/abs/olute/path", "4 '/'-separated parts"),
            ("a/b/c/d:t", "4 '/'-separated parts"),
            ("host/ns/m/../../x", "parts"),
            ("gemma3:", "tag is empty"),
            ("gemma3:4b/evil", "':'"),
            ("ns//m", "namespace is empty"),
            ("gem ma3", "' '"),
            ("gemma3:4b\0", "'\\0'"),
            ("gemma3\\..\\x", "'\\\\'"),
            ("gemmä3", "'ä'"),
            ("-rf", "must start with"),
            ("ns.dot/m", "'.'"),
            ("https://registry.ollama.ai/library/gemma3:4b", "URL scheme"),
            ("gemma3@sha256:abcd", "digest"),
            (long.as_str(), "limit is 80"),
            (long_host.as_str(), "limit is 350"),
        ];
        for (input, why) in cases {
            let err = ModelRef::parse(input).expect_err(input);
            let message = err.to_string();
            assert!(message.contains(why), "{input:?}: {message}");
            assert!(message.contains("e.g. gemma3:4b"), "{input:?}: {message}");
        }
    }

    #[test]
    fn manifest_path_and_names() {
        let r = ModelRef::parse("gemma3:4b").unwrap();
        assert_eq!(
            r.manifest_path(),
            PathBuf::from("manifests/registry.ollama.ai/library/gemma3/4b")
        );
        assert_eq!(r.to_string(), "registry.ollama.ai/library/gemma3:4b");
        assert_eq!(r.short(), "gemma3:4b");
        assert_eq!(r.repository(), "library/gemma3");
        assert_eq!(
            r.tags_page().as_deref(),
            Some("https://ollama.com/library/gemma3/tags")
        );
        let local = ModelRef::parse("127.0.0.1:5000/me/m:t").unwrap();
        assert_eq!(local.short(), "127.0.0.1:5000/me/m:t");
        assert_eq!(local.tags_page(), None);
        assert!(
            ModelRef::parse("gpt-oss:120b-cloud")
                .unwrap()
                .is_cloud_tag()
        );
        assert!(!r.is_cloud_tag());
    }
}

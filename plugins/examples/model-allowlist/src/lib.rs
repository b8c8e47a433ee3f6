//! `model-allowlist`: only the listed models are served; aliases are
//! rewritten to real model names before Ollama sees the request.
//!
//! Names follow Ollama's rules: a name without a tag means `:latest`, so
//! `gemma3` and `gemma3:latest` are the same model.
//!
//! ```toml
//! [plugins.config]
//! allow = ["gemma3:4b", "gemma3:1b"]
//! aliases = { gemma = "gemma3:4b", small = "gemma3:1b" }
//! ```
//! An alias must point at an allowed model.

use kiln_plugin::{Decision, Plugin, Request};
use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub allow: Vec<String>,
    #[serde(default)]
    pub aliases: BTreeMap<String, String>,
}

/// `gemma3` → `gemma3:latest`; a tag is the part after the last `:` of the
/// last path segment (a registry host may carry a `:port`).
pub fn normalize(name: &str) -> String {
    let name = name.trim();
    let last = name.rsplit('/').next().unwrap_or(name);
    if last.contains(':') {
        name.to_owned()
    } else {
        format!("{name}:latest")
    }
}

pub struct ModelAllowlist;

impl Plugin for ModelAllowlist {
    type Config = Config;

    fn validate(config: &Config) -> Result<(), String> {
        if config.allow.is_empty() {
            return Err(
                "`allow` is empty, so every request would be refused; list at least one model"
                    .into(),
            );
        }
        let allowed: Vec<String> = config.allow.iter().map(|m| normalize(m)).collect();
        for (alias, target) in &config.aliases {
            if !allowed.contains(&normalize(target)) {
                return Err(format!(
                    "alias `{alias}` points at `{target}`, which is not in `allow`"
                ));
            }
        }
        Ok(())
    }

    fn on_request(config: &Config, request: &Request) -> Decision {
        // Non-inference routes (tags, show, ps, model management) come with
        // an empty body: no model in a body to check.
        if !request.route.is_inference() {
            return Decision::Allow;
        }
        let mut body = match request.body() {
            Ok(b) => b,
            Err(e) => return Decision::reject(400, e.to_string()),
        };
        // Gemini's routes name the model in the path: the host passes it.
        let in_path = body.model().is_none();
        let Some(asked) = body.model().or(request.model.as_deref()).map(str::to_owned) else {
            return Decision::reject(400, "the request names no model");
        };
        let target = resolve(config, &asked);
        if !config
            .allow
            .iter()
            .any(|m| normalize(m) == normalize(&target))
        {
            return Decision::reject(
                403,
                format!(
                    "model `{asked}` is not served here; available: {}",
                    config.allow.join(", ")
                ),
            );
        }
        if target == asked {
            return Decision::Allow;
        }
        if in_path {
            return Decision::reject(
                403,
                format!(
                    "model `{asked}` is an alias of this plugin, which cannot rewrite a model named in the path; \
                     call `{target}`, or map the name in the proxy's [gemini] aliases"
                ),
            );
        }
        body.set_model(&target);
        Decision::rewrite(&body)
    }
}

/// The model an alias stands for (aliases match exactly or by normalized name).
fn resolve(config: &Config, asked: &str) -> String {
    config
        .aliases
        .get(asked)
        .or_else(|| {
            config
                .aliases
                .iter()
                .find(|(a, _)| normalize(a) == normalize(asked))
                .map(|(_, t)| t)
        })
        .cloned()
        .unwrap_or_else(|| asked.to_owned())
}

kiln_plugin::export_plugin!(ModelAllowlist);

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_plugin::{Route, parse_config};

    #[test]
    fn non_inference_routes_pass() {
        let r = Request::new(Route::Other, "/api/tags", "");
        assert_eq!(ModelAllowlist::on_request(&config(), &r), Decision::Allow);
    }

    fn config() -> Config {
        parse_config::<ModelAllowlist>(
            r#"{"allow":["gemma3:4b","qwen3"],"aliases":{"gemma":"gemma3:4b"}}"#,
        )
        .unwrap()
    }

    #[test]
    fn gemini_models_are_read_from_the_path() {
        let c = config();
        let mut r = Request::new(
            Route::GeminiGenerate,
            "/v1beta/models/gemma3:4b:generateContent",
            r#"{"contents":[]}"#,
        );
        r.model = Some("gemma3:4b".into());
        assert_eq!(ModelAllowlist::on_request(&c, &r), Decision::Allow);
        r.model = Some("llama3:8b".into());
        assert_eq!(
            ModelAllowlist::on_request(&c, &r)
                .as_rejection()
                .map(|r| r.status),
            Some(403)
        );
    }

    #[test]
    fn allowed_models_pass_unchanged() {
        let c = config();
        let r = Request::new(
            Route::OllamaChat,
            "/api/chat",
            r#"{"model":"gemma3:4b","messages":[]}"#,
        );
        assert_eq!(ModelAllowlist::on_request(&c, &r), Decision::Allow);
        let r = Request::new(
            Route::OpenaiChat,
            "/v1/chat/completions",
            r#"{"model":"qwen3:latest","messages":[]}"#,
        );
        assert_eq!(
            ModelAllowlist::on_request(&c, &r),
            Decision::Allow,
            "qwen3 means qwen3:latest"
        );
    }

    #[test]
    fn alias_is_rewritten_and_other_fields_kept() {
        let r = Request::new(
            Route::OllamaGenerate,
            "/api/generate",
            r#"{"model":"gemma","prompt":"hi","stream":false}"#,
        );
        let v = ModelAllowlist::on_request(&config(), &r)
            .rewritten_json()
            .expect("rewritten");
        assert_eq!(
            v,
            serde_json::json!({"model":"gemma3:4b","prompt":"hi","stream":false})
        );
    }

    #[test]
    fn responses_and_messages_routes_are_checked_and_aliased() {
        let body = r#"{"model":"gemma","max_tokens":9,"system":[{"type":"text","text":"s"}],"messages":[{"role":"user","content":"hi"}]}"#;
        let r = Request::new(Route::AnthropicMessages, "/v1/messages", body);
        let mut want: serde_json::Value = serde_json::from_str(body).unwrap();
        want["model"] = "gemma3:4b".into();
        assert_eq!(
            ModelAllowlist::on_request(&config(), &r).rewritten_json(),
            Some(want)
        );
        let r = Request::new(
            Route::OpenaiResponses,
            "/v1/responses",
            r#"{"model":"llama3:70b","input":"hi"}"#,
        );
        assert_eq!(
            ModelAllowlist::on_request(&config(), &r)
                .as_rejection()
                .map(|r| r.status),
            Some(403)
        );
    }

    #[test]
    fn other_models_are_refused_with_the_list() {
        let r = Request::new(
            Route::OllamaChat,
            "/api/chat",
            r#"{"model":"llama3:70b","messages":[]}"#,
        );
        let d = ModelAllowlist::on_request(&config(), &r);
        let rej = d.as_rejection().expect("refused");
        assert_eq!(rej.status, 403);
        assert!(
            rej.message.contains("llama3:70b") && rej.message.contains("gemma3:4b"),
            "{}",
            rej.message
        );
    }

    #[test]
    fn missing_model_and_bad_json_are_400() {
        let r = Request::new(Route::OllamaChat, "/api/chat", "{oops");
        assert_eq!(
            ModelAllowlist::on_request(&config(), &r)
                .as_rejection()
                .map(|r| r.status),
            Some(400)
        );
    }

    #[test]
    fn names_normalize_like_ollama() {
        assert_eq!(normalize("gemma3"), "gemma3:latest");
        assert_eq!(normalize("gemma3:4b"), "gemma3:4b");
        assert_eq!(
            normalize("localhost:5000/ns/m"),
            "localhost:5000/ns/m:latest"
        );
    }

    #[test]
    fn aliases_must_point_at_allowed_models() {
        let err = parse_config::<ModelAllowlist>(r#"{"allow":["a"],"aliases":{"b":"c"}}"#)
            .err()
            .unwrap();
        assert!(err.contains("`b`") && err.contains("`c`"), "{err}");
        assert!(parse_config::<ModelAllowlist>(r#"{"allow":[]}"#).is_err());
    }
}

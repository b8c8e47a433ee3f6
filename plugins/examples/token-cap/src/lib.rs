//! `token-cap`: bounds how much a request can generate, and removes runner
//! options that would make Ollama reload the model.
//!
//! - The cap is `options.num_predict` on Ollama routes, `max_tokens` /
//!   `max_completion_tokens` on OpenAI chat and completions,
//!   `max_output_tokens` on `/v1/responses` and `max_tokens` on
//!   `/v1/messages`. A larger (or missing, or unlimited `-1`) request is set
//!   to `max_tokens`.
//! - A request whose runner options differ from the loaded model's forces
//!   a reload (seconds of GPU time, and every other caller waits): Ollama
//!   compares `num_ctx`, `num_batch`, `num_gpu`, `main_gpu`, `use_mmap`,
//!   `num_thread` and `draft_num_predict` (its `api.Runner` options), and the
//!   top-level `shift` (context-shift mode). All of them are stripped by
//!   default, so Ollama uses the values the model was loaded with.
//! - `keep_alive` decides how long the model stays loaded after the request:
//!   `0` unloads the baked model (the next caller pays the load), a long or
//!   negative value pins a model in memory. It is stripped by default, so
//!   the server's setting (`OLLAMA_KEEP_ALIVE`) applies.
//!
//! Passing any of these through is the operator's opt-in:
//!
//! ```toml
//! [plugins.config]
//! max_tokens = 1024
//! strip_options = ["num_ctx", "num_batch", "num_gpu", "main_gpu", "use_mmap",
//!                  "num_thread", "draft_num_predict"]   # the default; [] passes all
//! shift = "strip"        # the default; "pass" lets clients choose
//! keep_alive = "strip"   # the default; "pass" lets clients choose
//! ```

use kiln_plugin::{Decision, Plugin, Request};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub max_tokens: u64,
    #[serde(default = "default_strip")]
    pub strip_options: Vec<String>,
    #[serde(default)]
    pub shift: Policy,
    #[serde(default)]
    pub keep_alive: Policy,
}

/// What happens to a top-level field the client sets.
#[derive(Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// Removed, so the server's own setting applies.
    #[default]
    Strip,
    /// Forwarded as sent.
    Pass,
}

/// Ollama's `api.Runner` options: a request whose values differ from the
/// loaded model's makes the scheduler reload it.
fn default_strip() -> Vec<String> {
    [
        "num_ctx",
        "num_batch",
        "num_gpu",
        "main_gpu",
        "use_mmap",
        "num_thread",
        "draft_num_predict",
    ]
    .map(String::from)
    .to_vec()
}

pub struct TokenCap;

impl Plugin for TokenCap {
    type Config = Config;

    fn validate(config: &Config) -> Result<(), String> {
        if config.max_tokens == 0 {
            return Err(
                "`max_tokens` is 0, so nothing could be generated; set it to at least 1".into(),
            );
        }
        Ok(())
    }

    fn on_request(config: &Config, request: &Request) -> Decision {
        // Non-inference routes (tags, show, ps, model management) come with
        // an empty body: nothing generated to cap.
        if !request.route.is_inference() {
            return Decision::Allow;
        }
        let mut body = match request.body() {
            Ok(b) => b,
            Err(e) => return Decision::reject(400, e.to_string()),
        };
        let mut changed = false;
        if body.generates() && body.max_tokens().is_none_or(|n| n > config.max_tokens) {
            body.set_max_tokens(config.max_tokens);
            changed = true;
        }
        if let Some(options) = body.options_mut() {
            for key in &config.strip_options {
                changed |= options.remove(key).is_some();
            }
        }
        if let Some(fields) = body.extra_mut() {
            for (key, policy) in [("shift", config.shift), ("keep_alive", config.keep_alive)] {
                if policy == Policy::Strip {
                    changed |= fields.remove(key).is_some();
                }
            }
        }
        if changed {
            Decision::rewrite(&body)
        } else {
            Decision::Allow
        }
    }
}

kiln_plugin::export_plugin!(TokenCap);

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_plugin::{Route, parse_config};
    use serde_json::json;

    #[test]
    fn non_inference_routes_pass() {
        let r = Request::new(Route::Other, "/api/tags", "");
        assert_eq!(TokenCap::on_request(&cap(), &r), Decision::Allow);
    }

    fn cap() -> Config {
        parse_config::<TokenCap>(r#"{"max_tokens":256}"#).unwrap()
    }

    fn run(route: Route, body: serde_json::Value) -> Decision {
        TokenCap::on_request(&cap(), &Request::new(route, "/", &body.to_string()))
    }

    #[test]
    fn large_num_predict_is_clamped() {
        let v = run(
            Route::OllamaChat,
            json!({"model":"m","messages":[],"options":{"num_predict":4096,"temperature":0.2}}),
        )
        .rewritten_json()
        .unwrap();
        assert_eq!(v["options"], json!({"num_predict":256,"temperature":0.2}));
    }

    #[test]
    fn missing_or_unlimited_num_predict_gets_the_cap() {
        let v = run(Route::OllamaGenerate, json!({"model":"m","prompt":"p"}))
            .rewritten_json()
            .unwrap();
        assert_eq!(v["options"]["num_predict"], 256);
        let v = run(
            Route::OllamaGenerate,
            json!({"model":"m","prompt":"p","options":{"num_predict":-1}}),
        )
        .rewritten_json()
        .unwrap();
        assert_eq!(v["options"]["num_predict"], 256);
    }

    #[test]
    fn small_requests_pass_unchanged() {
        assert_eq!(
            run(
                Route::OllamaChat,
                json!({"model":"m","messages":[],"options":{"num_predict":10}})
            ),
            Decision::Allow
        );
        assert_eq!(
            run(
                Route::OpenaiChat,
                json!({"model":"m","messages":[],"max_tokens":10})
            ),
            Decision::Allow
        );
    }

    #[test]
    fn openai_max_tokens_is_clamped_under_both_names() {
        let v = run(
            Route::OpenaiChat,
            json!({"model":"m","messages":[],"max_completion_tokens":9000}),
        )
        .rewritten_json()
        .unwrap();
        assert_eq!(
            (
                v["max_tokens"].as_u64(),
                v["max_completion_tokens"].as_u64()
            ),
            (Some(256), Some(256))
        );
        let v = run(Route::OpenaiCompletions, json!({"model":"m","prompt":"p"}))
            .rewritten_json()
            .unwrap();
        assert_eq!(v["max_tokens"], 256);
    }

    #[test]
    fn responses_cap_max_output_tokens() {
        let v = run(
            Route::OpenaiResponses,
            json!({"model":"m","input":"p","max_output_tokens":9000}),
        )
        .rewritten_json()
        .unwrap();
        assert_eq!(v["max_output_tokens"], 256);
        assert!(
            v.get("max_tokens").is_none(),
            "the Responses API ignores max_tokens"
        );
        let v = run(Route::OpenaiResponses, json!({"model":"m","input":"p"}))
            .rewritten_json()
            .unwrap();
        assert_eq!(v["max_output_tokens"], 256);
        assert_eq!(
            run(
                Route::OpenaiResponses,
                json!({"model":"m","input":"p","max_output_tokens":10})
            ),
            Decision::Allow
        );
    }

    #[test]
    fn anthropic_messages_cap_max_tokens() {
        let v = run(
            Route::AnthropicMessages,
            json!({"model":"m","messages":[],"max_tokens":4096,"system":"s"}),
        )
        .rewritten_json()
        .unwrap();
        assert_eq!(v["max_tokens"], 256);
        assert_eq!(v["system"], "s");
        assert_eq!(
            run(
                Route::AnthropicMessages,
                json!({"model":"m","messages":[],"max_tokens":10})
            ),
            Decision::Allow
        );
    }

    #[test]
    fn reload_forcing_options_are_stripped() {
        let v = run(Route::OllamaChat, json!({"model":"m","messages":[],"options":{"num_predict":5,"num_ctx":131072,"num_gpu":0,"seed":7}}))
            .rewritten_json()
            .unwrap();
        assert_eq!(v["options"], json!({"num_predict":5,"seed":7}));
    }

    #[test]
    fn embeddings_are_left_alone() {
        assert_eq!(
            run(Route::OllamaEmbed, json!({"model":"m","input":"x"})),
            Decision::Allow
        );
        assert_eq!(
            run(Route::OpenaiEmbeddings, json!({"model":"m","input":"x"})),
            Decision::Allow
        );
    }

    #[test]
    fn every_runner_option_and_shift_are_stripped_by_default() {
        let v = run(
            Route::OllamaGenerate,
            json!({"model":"m","prompt":"p","shift":false,"options":{"num_predict":5,"main_gpu":1,
                "use_mmap":false,"num_thread":3,"draft_num_predict":4,"num_batch":8,"top_k":3}}),
        )
        .rewritten_json()
        .unwrap();
        assert_eq!(v["options"], json!({"num_predict":5,"top_k":3}));
        assert!(v.get("shift").is_none());
    }

    #[test]
    fn keep_alive_is_stripped_unless_passed() {
        for keep_alive in [json!(0), json!("0s"), json!(-1), json!("9999h")] {
            let v = run(
                Route::OllamaChat,
                json!({"model":"m","messages":[],"keep_alive":keep_alive,"options":{"num_predict":5}}),
            )
            .rewritten_json()
            .unwrap();
            assert!(v.get("keep_alive").is_none(), "{v}");
        }
        let pass = parse_config::<TokenCap>(
            r#"{"max_tokens":256,"keep_alive":"pass","shift":"pass","strip_options":[]}"#,
        )
        .unwrap();
        let body = json!({"model":"m","prompt":"","keep_alive":0,"shift":false,
            "options":{"num_predict":5,"num_ctx":8192}});
        assert_eq!(
            TokenCap::on_request(
                &pass,
                &Request::new(Route::OllamaGenerate, "/", &body.to_string())
            ),
            Decision::Allow,
            "pass-through is the operator's opt-in"
        );
        assert!(parse_config::<TokenCap>(r#"{"max_tokens":1,"keep_alive":"keep"}"#).is_err());
    }
}

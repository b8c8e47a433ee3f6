//! `token-cap`: bounds how much a request can generate, and removes runner
//! options that would make Ollama reload the model.
//!
//! - The cap is `options.num_predict` on Ollama routes, `max_tokens` /
//!   `max_completion_tokens` on OpenAI chat and completions,
//!   `max_output_tokens` on `/v1/responses` and `max_tokens` on
//!   `/v1/messages`. A larger (or missing, or unlimited `-1`) request is set
//!   to `max_tokens`.
//! - A request whose `num_ctx`, `num_gpu` or `num_batch` differs from the
//!   loaded model's forces a reload (seconds of GPU time for every other
//!   caller), so these are stripped by default.
//!
//! ```toml
//! [plugins.config]
//! max_tokens = 1024
//! strip_options = ["num_ctx", "num_gpu", "num_batch"]   # the default
//! ```

use kiln_plugin::{Decision, Plugin, Request};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub max_tokens: u64,
    #[serde(default = "default_strip")]
    pub strip_options: Vec<String>,
}

fn default_strip() -> Vec<String> {
    ["num_ctx", "num_gpu", "num_batch"]
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
}

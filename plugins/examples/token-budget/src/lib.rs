//! `token-budget`: each caller may spend `budget` tokens per window; once
//! spent, new requests get 429 with `Retry-After` until the window ends.
//!
//! Tokens are what Ollama reports at completion (`prompt_eval_count` +
//! `eval_count` on /api/*, `usage` on /v1/*; kiln-proxy asks Ollama for
//! usage on streamed OpenAI requests), so a budget holds whatever the
//! client claims. A caller that hangs up before the last chunk is charged
//! the output generated until then (the host counts the streamed chunks). It needs both hooks: `on-request` refuses callers whose
//! budget is spent, `on-response-complete` adds each answer's tokens.
//!
//! The caller is the `x-kiln-caller` header (set by the `api-key` plugin:
//! put it first in the chain), else the first address of `X-Forwarded-For`,
//! else one shared "anonymous" budget — the same rule as `rate-limit`.
//!
//! ```toml
//! [plugins.config]
//! budget = 100000       # tokens per caller per window
//! window_s = 3600       # default: one hour
//! count = "total"       # or "prompt" / "completion"
//! ```
//!
//! A request that starts with budget left runs to its end, so a caller can
//! overshoot by what its in-flight requests generate; windows are aligned to
//! the wall clock.
//!
//! One instance or many: with the default in-process counters each
//! kiln-proxy keeps its own budgets, so N instances let a caller spend up to
//! N budgets per window, and counts reset when an instance restarts. With
//! `[counters] backend = "redis"` all instances add to one count per caller
//! and window: the budget holds for the whole service (while Redis is down
//! with `fail_open`, each instance counts alone again).

use kiln_plugin::host::{Counters, HostCounters};
use kiln_plugin::response::{Completion, ResponseContext, ResponsePlugin, Usage};
use kiln_plugin::{Decision, Plugin, Rejection, Request};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub budget: u64,
    #[serde(default = "hour")]
    pub window_s: u64,
    #[serde(default)]
    pub count: Count,
}

fn hour() -> u64 {
    3600
}

/// Which tokens count against the budget.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Count {
    #[default]
    Total,
    Prompt,
    Completion,
}

impl Count {
    pub fn of(self, u: &Usage) -> u64 {
        match self {
            Count::Total => u.total(),
            Count::Prompt => u.prompt_tokens,
            Count::Completion => u.completion_tokens,
        }
    }
}

impl Config {
    fn window_ms(&self) -> u64 {
        self.window_s.saturating_mul(1000)
    }
}

/// Who the tokens count against, from a header lookup.
pub fn caller<'a>(header: impl Fn(&str) -> Option<&'a str>) -> String {
    if let Some(c) = header("x-kiln-caller").filter(|c| !c.is_empty()) {
        return format!("caller:{c}");
    }
    if let Some(ip) = header("x-forwarded-for")
        .and_then(|v| v.split(',').next())
        .map(str::trim)
        .filter(|ip| !ip.is_empty())
    {
        return format!("ip:{ip}");
    }
    "anonymous".into()
}

/// The request hook: a 429 when `key` has spent its budget in this window.
pub fn check(config: &Config, counters: &mut dyn Counters, key: &str) -> Option<Rejection> {
    let spent = counters.add(key, config.window_ms(), 0);
    if spent.total < config.budget {
        return None;
    }
    let retry_s = spent.resets_in_ms.div_ceil(1000).max(1);
    let Decision::Reject(r) = Decision::reject(
        429,
        format!(
            "token budget spent: {key} used {} of {} tokens in this {}-second window; retry in {retry_s} s",
            spent.total, config.budget, config.window_s
        ),
    ) else {
        return None;
    };
    Some(r.with_header("retry-after", retry_s.to_string()))
}

/// The completion hook: adds the answer's tokens to `key`'s window.
pub fn spend(config: &Config, counters: &mut dyn Counters, key: &str, usage: Option<Usage>) -> u64 {
    let tokens = usage.map_or(0, |u| config.count.of(&u));
    counters.add(key, config.window_ms(), tokens).total
}

pub struct TokenBudget;

impl Plugin for TokenBudget {
    type Config = Config;

    fn validate(config: &Config) -> Result<(), String> {
        if config.budget == 0 {
            return Err("`budget` must be at least 1 token".into());
        }
        if config.window_s == 0 {
            return Err("`window_s` must be at least 1 second".into());
        }
        Ok(())
    }

    fn on_request(config: &Config, request: &Request) -> Decision {
        // Non-inference routes (tags, show, ps, model management) come with
        // an empty body: no tokens spent.
        if !request.route.is_inference() {
            return Decision::Allow;
        }
        let key = caller(|n| request.header(n));
        match check(config, &mut HostCounters, &key) {
            Some(r) => r.into(),
            None => Decision::Allow,
        }
    }
}

impl ResponsePlugin for TokenBudget {
    type Config = Config;
    type State = ();

    fn validate(config: &Config) -> Result<(), String> {
        <TokenBudget as Plugin>::validate(config)
    }

    fn start(_config: &Config, _ctx: &ResponseContext) {}

    // on_chunk: the default passes the whole answer on after one call.

    fn on_complete(
        config: &Config,
        _state: &mut (),
        _ctx: &ResponseContext,
        completion: &Completion,
    ) {
        let key = caller(|n| completion.header(n));
        spend(config, &mut HostCounters, &key, completion.usage);
    }
}

kiln_plugin::export_plugin_with_response!(TokenBudget);

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_plugin::host::MemoryCounters;
    use kiln_plugin::{Route, parse_config};

    fn usage(p: u64, c: u64) -> Option<Usage> {
        Some(Usage {
            prompt_tokens: p,
            completion_tokens: c,
        })
    }

    #[test]
    fn requests_are_refused_once_the_budget_is_spent() {
        let config = parse_config::<TokenBudget>(r#"{"budget":100,"window_s":60}"#).unwrap();
        let mut c = MemoryCounters::default();
        c.now_ms = 30_000;
        assert!(check(&config, &mut c, "caller:a").is_none());
        assert_eq!(spend(&config, &mut c, "caller:a", usage(40, 59)), 99);
        assert!(check(&config, &mut c, "caller:a").is_none(), "1 token left");
        assert_eq!(spend(&config, &mut c, "caller:a", usage(1, 0)), 100);
        let r = check(&config, &mut c, "caller:a").expect("spent");
        assert_eq!(r.status, 429);
        assert!(r.message.contains("used 100 of 100"), "{}", r.message);
        assert_eq!(r.headers, vec![("retry-after".into(), "30".into())]);
        assert!(
            check(&config, &mut c, "caller:b").is_none(),
            "budgets are per caller"
        );
        c.now_ms = 60_000;
        assert!(check(&config, &mut c, "caller:a").is_none(), "a new window");
    }

    #[test]
    fn what_counts_is_configurable_and_missing_usage_counts_nothing() {
        let config = parse_config::<TokenBudget>(r#"{"budget":10,"count":"completion"}"#).unwrap();
        let mut c = MemoryCounters::default();
        assert_eq!(spend(&config, &mut c, "k", usage(1000, 3)), 3);
        assert_eq!(spend(&config, &mut c, "k", None), 3);
        assert_eq!(Count::Prompt.of(&usage(4, 5).unwrap()), 4);
        assert_eq!(config.window_s, 3600);
    }

    #[test]
    fn the_caller_is_read_like_rate_limit() {
        let r = Request::new(Route::OllamaChat, "/api/chat", "{}")
            .with_header("X-Forwarded-For", "203.0.113.9, 10.0.0.1");
        assert_eq!(caller(|n| r.header(n)), "ip:203.0.113.9");
        let r = r.with_header("x-kiln-caller", "team-a");
        assert_eq!(caller(|n| r.header(n)), "caller:team-a");
        let r = Request::new(Route::OllamaChat, "/api/chat", "{}");
        assert_eq!(caller(|n| r.header(n)), "anonymous");
    }

    #[test]
    fn configs_are_checked() {
        assert!(parse_config::<TokenBudget>(r#"{"budget":0}"#).is_err());
        assert!(parse_config::<TokenBudget>(r#"{"budget":5,"window_s":0}"#).is_err());
        assert!(parse_config::<TokenBudget>(r#"{"budget":5,"count":"all"}"#).is_err());
    }
}

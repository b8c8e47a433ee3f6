//! Running a request through the plugins, in order: each call gets a fresh
//! instance in a fresh store (so a trap poisons nothing that outlives the
//! call), and each decision is applied before the next plugin sees the request.

use super::OnError;
use super::loader::LoadedPlugin;
use super::pace::Pace;
use super::runtime::{CallState, Runtime, wit};
use super::stats::CallOutcome;
use crate::filter::{FilterRequest, Verdict};
use crate::routes::RouteKind;
use std::sync::Arc;
use std::time::Instant;
use wasmtime::{Store, Trap};

/// An ordered list of loaded plugins. Immutable: a reload builds a new one.
pub struct Chain {
    pub(super) runtime: Arc<Runtime>,
    pub(super) plugins: Vec<LoadedPlugin>,
    /// How quick its recent runs were (see `pace`).
    pub(super) pace: Pace,
}

/// The decision of one plugin, as the host understood it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Allow,
    Modify,
    Reject {
        status: u16,
        message: String,
        headers: Vec<(String, String)>,
    },
}

/// Why a plugin call did not produce a usable decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub plugin: String,
    pub reason: String,
}

impl Chain {
    pub fn len(&self) -> usize {
        self.plugins.len()
    }

    pub fn is_empty(&self) -> bool {
        self.plugins.is_empty()
    }

    pub fn plugins(&self) -> impl Iterator<Item = &LoadedPlugin> {
        self.plugins.iter()
    }

    /// Whether a plugin with a request hook is configured for this route.
    pub fn filters(&self, route: RouteKind) -> bool {
        self.plugins
            .iter()
            .any(|p| p.pre.is_some() && p.routes.contains(route))
    }

    /// Runs every plugin whose routes match, in order, on this thread. Each
    /// call is bounded by the deadline, so this blocks for at most
    /// (plugins × deadline).
    pub fn run(&self, request: FilterRequest) -> Verdict {
        let mut req = to_wit(request);
        for plugin in &self.plugins {
            if plugin.pre.is_none() || !plugin.routes.contains(route_kind(req.route)) {
                continue;
            }
            match self.call(plugin, &mut req) {
                Ok(Outcome::Reject {
                    status,
                    message,
                    headers,
                }) => {
                    tracing::debug!(plugin = %plugin.name, status, "plugin rejected the request");
                    return Verdict::Reject {
                        status,
                        message,
                        headers,
                    };
                }
                Ok(Outcome::Allow | Outcome::Modify) => {}
                Err(failure) => match plugin.on_error {
                    OnError::Allow => {
                        tracing::warn!(plugin = %failure.plugin, reason = %failure.reason, "plugin failed; request continues (on_error = \"allow\")");
                    }
                    OnError::Deny => {
                        tracing::error!(plugin = %failure.plugin, reason = %failure.reason, "plugin failed; request refused (on_error = \"deny\")");
                        return Verdict::Reject {
                            status: 500,
                            message: format!(
                                "request refused because the policy plugin `{}` failed; the proxy log has the details",
                                failure.plugin
                            ),
                            headers: Vec::new(),
                        };
                    }
                },
            }
        }
        Verdict::Forward(from_wit(req))
    }

    /// One call of one plugin; applies a modification to `req` in place.
    /// Counted in the plugin's metrics.
    pub fn call(&self, plugin: &LoadedPlugin, req: &mut wit::Request) -> Result<Outcome, Failure> {
        if plugin.pre.is_none() {
            return Ok(Outcome::Allow);
        }
        let span_start = crate::telemetry::span_start();
        let started = Instant::now();
        let result = self.decide(plugin, req);
        let outcome = match &result {
            Ok(Outcome::Allow) => CallOutcome::Allow,
            Ok(Outcome::Modify) => CallOutcome::Modify,
            Ok(Outcome::Reject { .. }) => CallOutcome::Reject,
            Err(_) => CallOutcome::Failure,
        };
        plugin.stats.record(outcome, started.elapsed());
        if let Some(t) = span_start {
            crate::telemetry::plugin_span(None, t, &plugin.name, "request", outcome.label(), 1);
        }
        result
    }

    fn decide(&self, plugin: &LoadedPlugin, req: &mut wit::Request) -> Result<Outcome, Failure> {
        let fail = |reason: String| Failure {
            plugin: plugin.name.clone(),
            reason,
        };
        // A response-only plugin has no request hook: nothing to decide.
        let Some(pre) = &plugin.pre else {
            return Ok(Outcome::Allow);
        };
        let mut store = self.runtime.store(plugin.context.clone());
        let decision = pre
            .instantiate(&mut store)
            .and_then(|filter| filter.call_on_request(&mut store, req))
            .map_err(|e| fail(describe_failure(&e, &store)))?;
        // The store, with whatever state a trap left, is dropped here.
        drop(store);
        match decision {
            wit::Decision::Allow => Ok(Outcome::Allow),
            wit::Decision::Reject(r) => {
                if !(400..=599).contains(&r.status) {
                    return Err(fail(format!(
                        "it rejected with status {}, which is not an HTTP error (400..=599)",
                        r.status
                    )));
                }
                let headers = r
                    .headers
                    .into_iter()
                    .map(|h| (h.name.to_ascii_lowercase(), h.value))
                    .collect::<Vec<_>>();
                for (name, value) in &headers {
                    check_header(name, value).map_err(fail)?;
                }
                Ok(Outcome::Reject {
                    status: r.status,
                    message: r.message,
                    headers,
                })
            }
            wit::Decision::Modify(m) => {
                apply_modification(req, m).map_err(fail)?;
                Ok(Outcome::Modify)
            }
        }
    }
}

/// Headers the proxy itself sets or frames the body with: a plugin editing
/// them would corrupt the forwarded request.
const MANAGED_HEADERS: &[&str] = &["host", "content-length", "transfer-encoding", "connection"];

fn check_header(name: &str, value: &str) -> Result<(), String> {
    let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if name.is_empty() || !name.chars().all(token) {
        return Err(format!("it set an invalid header name {name:?}"));
    }
    if value.chars().any(|c| c == '\r' || c == '\n' || c == '\0') {
        return Err(format!(
            "it set header `{name}` to a value with a line break or NUL"
        ));
    }
    Ok(())
}

fn apply_modification(req: &mut wit::Request, m: wit::Modification) -> Result<(), String> {
    for edit in m.header_edits {
        let name = match &edit {
            wit::HeaderEdit::Set(h) => h.name.to_ascii_lowercase(),
            wit::HeaderEdit::Remove(n) => n.to_ascii_lowercase(),
        };
        if MANAGED_HEADERS.contains(&name.as_str()) {
            return Err(format!(
                "it edited the `{name}` header, which the proxy manages"
            ));
        }
        req.headers.retain(|h| h.name != name);
        if let wit::HeaderEdit::Set(h) = edit {
            check_header(&name, &h.value)?;
            req.headers.push(wit::Header {
                name,
                value: h.value,
            });
        }
    }
    if let Some(body) = m.body {
        req.model = model_of(&body);
        req.body = body;
    }
    Ok(())
}

/// The `model` field of a JSON body, read without parsing the rest into values.
pub fn model_of(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct ModelOnly {
        model: Option<String>,
    }
    serde_json::from_slice::<ModelOnly>(body).ok()?.model
}

/// A one-line explanation of a failed call, for the log and the operator.
pub fn describe_failure(e: &wasmtime::Error, store: &Store<CallState>) -> String {
    if store.data().memory_exceeded {
        return format!("it tried to use more memory than the cap: {e}");
    }
    match e.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => "it ran past its deadline and was stopped".to_owned(),
        Some(Trap::UnreachableCodeReached) => {
            format!("it trapped (a Rust plugin panicked or aborted): {e:#}")
        }
        Some(trap) => format!("it trapped: {trap}"),
        None => format!("{e:#}"),
    }
}

fn route_kind(r: wit::RouteKind) -> RouteKind {
    match r {
        wit::RouteKind::OllamaGenerate => RouteKind::OllamaGenerate,
        wit::RouteKind::OllamaChat => RouteKind::OllamaChat,
        wit::RouteKind::OllamaEmbed => RouteKind::OllamaEmbed,
        wit::RouteKind::OpenaiChat => RouteKind::OpenaiChat,
        wit::RouteKind::OpenaiCompletions => RouteKind::OpenaiCompletions,
        wit::RouteKind::OpenaiEmbeddings => RouteKind::OpenaiEmbeddings,
        wit::RouteKind::Other => RouteKind::Other,
        wit::RouteKind::OpenaiResponses => RouteKind::OpenaiResponses,
        wit::RouteKind::AnthropicMessages => RouteKind::AnthropicMessages,
        wit::RouteKind::GeminiGenerate => RouteKind::GeminiGenerate,
        wit::RouteKind::GeminiCountTokens => RouteKind::GeminiCountTokens,
        wit::RouteKind::GeminiEmbed => RouteKind::GeminiEmbed,
    }
}

pub(super) fn wit_route(r: RouteKind) -> wit::RouteKind {
    match r {
        RouteKind::OllamaGenerate => wit::RouteKind::OllamaGenerate,
        RouteKind::OllamaChat => wit::RouteKind::OllamaChat,
        RouteKind::OllamaEmbed => wit::RouteKind::OllamaEmbed,
        RouteKind::OpenaiChat => wit::RouteKind::OpenaiChat,
        RouteKind::OpenaiCompletions => wit::RouteKind::OpenaiCompletions,
        RouteKind::OpenaiEmbeddings => wit::RouteKind::OpenaiEmbeddings,
        RouteKind::Other => wit::RouteKind::Other,
        RouteKind::OpenaiResponses => wit::RouteKind::OpenaiResponses,
        RouteKind::AnthropicMessages => wit::RouteKind::AnthropicMessages,
        RouteKind::GeminiGenerate => wit::RouteKind::GeminiGenerate,
        RouteKind::GeminiCountTokens => wit::RouteKind::GeminiCountTokens,
        RouteKind::GeminiEmbed => wit::RouteKind::GeminiEmbed,
    }
}

pub fn to_wit(r: FilterRequest) -> wit::Request {
    wit::Request {
        route: wit_route(r.route),
        method: r.method,
        path: r.path,
        headers: r
            .headers
            .into_iter()
            .map(|(name, value)| wit::Header {
                name: name.to_ascii_lowercase(),
                value,
            })
            .collect(),
        body: r.body,
        model: r.model,
    }
}

pub fn from_wit(r: wit::Request) -> FilterRequest {
    FilterRequest {
        route: route_kind(r.route),
        method: r.method,
        path: r.path,
        headers: r.headers.into_iter().map(|h| (h.name, h.value)).collect(),
        body: r.body,
        model: r.model,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req() -> wit::Request {
        wit::Request {
            route: wit::RouteKind::OllamaChat,
            method: "POST".into(),
            path: "/api/chat".into(),
            headers: vec![
                wit::Header {
                    name: "x-a".into(),
                    value: "1".into(),
                },
                wit::Header {
                    name: "x-a".into(),
                    value: "2".into(),
                },
            ],
            body: br#"{"model":"gemma"}"#.to_vec(),
            model: Some("gemma".into()),
        }
    }

    #[test]
    fn modifications_replace_headers_and_reread_the_model() {
        let mut r = req();
        let m = wit::Modification {
            body: Some(br#"{"model":"gemma3:4b","messages":[]}"#.to_vec()),
            header_edits: vec![
                wit::HeaderEdit::Set(wit::Header {
                    name: "X-A".into(),
                    value: "3".into(),
                }),
                wit::HeaderEdit::Set(wit::Header {
                    name: "x-b".into(),
                    value: "4".into(),
                }),
                wit::HeaderEdit::Remove("x-b".into()),
            ],
        };
        apply_modification(&mut r, m).unwrap();
        let headers: Vec<_> = r
            .headers
            .iter()
            .map(|h| (h.name.as_str(), h.value.as_str()))
            .collect();
        assert_eq!(headers, vec![("x-a", "3")]);
        assert_eq!(r.model.as_deref(), Some("gemma3:4b"));
    }

    #[test]
    fn managed_and_malformed_headers_are_refused() {
        for (name, value) in [
            ("content-length", "1"),
            ("Host", "evil"),
            ("bad name", "x"),
            ("x-ok", "a\r\nx-injected: 1"),
        ] {
            let m = wit::Modification {
                body: None,
                header_edits: vec![wit::HeaderEdit::Set(wit::Header {
                    name: name.into(),
                    value: value.into(),
                })],
            };
            assert!(
                apply_modification(&mut req(), m).is_err(),
                "{name}: {value:?} must be refused"
            );
        }
    }
}

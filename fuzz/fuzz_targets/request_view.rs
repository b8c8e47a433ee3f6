//! The proxy's request view and key check (proxy/src/request_view.rs) on
//! any body, for any route: never a panic, and a body it accepts has only
//! lower-case ASCII keys at the top level (Ollama matches keys without
//! regard to case; the check exists so policies and Ollama read the same
//! fields) and a non-blank model.
#![no_main]
#![allow(dead_code)]

#[path = "../../proxy/src/filter.rs"]
mod filter;
#[path = "../../proxy/src/route_kind.rs"]
mod route_kind;
#[path = "../../proxy/src/request_view.rs"]
mod request_view;

/// `filter.rs` names the response stage's trait in a signature; nothing
/// here calls it.
mod response {
    pub trait ResponseStage {}
}

use filter::RouteKind;
use libfuzzer_sys::fuzz_target;

const ROUTES: [RouteKind; 12] = RouteKind::ALL;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let route = ROUTES[pick as usize % ROUTES.len()];
    let Ok(view) = request_view::parse(route, body) else {
        return;
    };
    assert!(!view.model.trim().is_empty());
    let tree: serde_json::Value = serde_json::from_slice(body).expect("accepted bodies are JSON");
    let fields = tree.as_object().expect("accepted bodies are objects");
    for key in fields.keys() {
        assert!(
            !key.chars().any(|c| c.is_ascii_uppercase() || !c.is_ascii()),
            "accepted a top-level key Ollama could fold: {key:?}"
        );
    }
    assert_eq!(
        fields.get("model").and_then(|m| m.as_str()),
        Some(view.model.as_str())
    );
});

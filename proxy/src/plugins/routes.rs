//! Per-plugin route selection: the `routes = [...]` key of `[[plugins]]`.

use crate::routes::RouteKind;

/// Every name `routes` accepts, and the route kinds it selects.
const NAMES: &[(&str, &[RouteKind])] = &[
    ("generate", &[RouteKind::OllamaGenerate]),
    ("chat", &[RouteKind::OllamaChat]),
    ("embed", &[RouteKind::OllamaEmbed]),
    (
        "openai",
        &[
            RouteKind::OpenaiChat,
            RouteKind::OpenaiCompletions,
            RouteKind::OpenaiEmbeddings,
            RouteKind::OpenaiResponses,
        ],
    ),
    ("openai-chat", &[RouteKind::OpenaiChat]),
    ("openai-completions", &[RouteKind::OpenaiCompletions]),
    ("openai-embeddings", &[RouteKind::OpenaiEmbeddings]),
    ("openai-responses", &[RouteKind::OpenaiResponses]),
    ("anthropic-messages", &[RouteKind::AnthropicMessages]),
    (
        "gemini",
        &[
            RouteKind::GeminiGenerate,
            RouteKind::GeminiCountTokens,
            RouteKind::GeminiEmbed,
        ],
    ),
    ("gemini-generate", &[RouteKind::GeminiGenerate]),
    ("gemini-count-tokens", &[RouteKind::GeminiCountTokens]),
    ("gemini-embed", &[RouteKind::GeminiEmbed]),
    ("other", &[RouteKind::Other]),
];

/// Every route kind: what a plugin sees when its config names no routes,
/// so that a policy (an authentication plugin above all) guards everything
/// that reaches Ollama unless its entry narrows it.
const ALL: &[RouteKind] = &RouteKind::ALL;

/// The routes that run a model: every kind but `Other`, which `ALL` lists last.
const INFERENCE: &[RouteKind] = match RouteKind::ALL.split_last() {
    Some((RouteKind::Other, inference)) => inference,
    _ => panic!("RouteKind::ALL lists the inference kinds, then Other"),
};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteSet(Vec<RouteKind>);

impl RouteSet {
    /// Parses the `routes` key; `None` selects every route.
    pub fn parse(names: Option<&[String]>) -> Result<RouteSet, String> {
        let Some(names) = names else {
            return Ok(RouteSet(ALL.to_vec()));
        };
        let mut kinds = Vec::new();
        for name in names {
            let selected = match name.as_str() {
                "all" => ALL,
                "inference" => INFERENCE,
                other => NAMES
                    .iter()
                    .find(|(n, _)| *n == other)
                    .map(|(_, kinds)| *kinds)
                    .ok_or_else(|| {
                        format!(
                            "unknown route `{other}` in `routes`; use any of: all, inference, {}",
                            Self::names()
                        )
                    })?,
            };
            for kind in selected {
                if !kinds.contains(kind) {
                    kinds.push(*kind);
                }
            }
        }
        if kinds.is_empty() {
            return Err("`routes` is empty, so the plugin would never run; remove the key to select every route".into());
        }
        Ok(RouteSet(kinds))
    }

    fn names() -> String {
        NAMES.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
    }

    pub fn contains(&self, kind: RouteKind) -> bool {
        self.0.contains(&kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(names: &[&str]) -> Result<RouteSet, String> {
        RouteSet::parse(Some(
            &names.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        ))
    }

    #[test]
    fn route_names_select_route_kinds() {
        let default = RouteSet::parse(None).unwrap();
        assert!(
            default.contains(RouteKind::OllamaChat)
                && default.contains(RouteKind::OpenaiEmbeddings)
        );
        assert!(
            default.contains(RouteKind::Other),
            "plugins see every route by default"
        );
        assert_eq!(parse(&["all"]).unwrap(), default);
        assert!(!parse(&["inference"]).unwrap().contains(RouteKind::Other));

        let s = parse(&["chat", "openai"]).unwrap();
        assert!(s.contains(RouteKind::OllamaChat) && s.contains(RouteKind::OpenaiCompletions));
        assert!(!s.contains(RouteKind::OllamaGenerate));

        assert!(parse(&["other"]).unwrap().contains(RouteKind::Other));
        assert!(default.contains(RouteKind::OpenaiResponses));
        assert!(default.contains(RouteKind::AnthropicMessages));
        let s = parse(&["openai-responses", "anthropic-messages"]).unwrap();
        assert!(s.contains(RouteKind::OpenaiResponses) && s.contains(RouteKind::AnthropicMessages));
        assert!(!s.contains(RouteKind::OpenaiChat));
        let openai = parse(&["openai"]).unwrap();
        assert!(openai.contains(RouteKind::OpenaiResponses));
        assert!(!openai.contains(RouteKind::AnthropicMessages));
        assert!(
            parse(&["inference"])
                .unwrap()
                .contains(RouteKind::AnthropicMessages)
        );
    }

    #[test]
    fn bad_route_names_are_refused_with_the_valid_ones() {
        let err = parse(&["chats"]).unwrap_err();
        assert!(
            err.contains("`chats`") && err.contains("openai-chat"),
            "{err}"
        );
        assert!(parse(&[]).is_err());
    }
}

//! Answering a registry's authentication challenge: Basic credentials sent
//! as they are, or the Docker token flow (`WWW-Authenticate: Bearer realm=…,
//! service=…, scope=…` → GET realm with Basic credentials → token).

use std::collections::HashMap;

use base64::Engine as _;
use reqwest::{StatusCode, header};

use super::{RegistryClient, RegistryError, Result};
use crate::credentials::Credential;

/// What a request needs the registry to allow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Pull,
    Push,
    /// Push here and read another repository of the same registry (mount).
    PushFrom(String),
}

impl Action {
    pub(super) fn verb(&self) -> &'static str {
        match self {
            Action::Pull => "pull",
            Action::Push | Action::PushFrom(_) => "push",
        }
    }

    fn scopes(&self, repo: &str) -> Vec<String> {
        match self {
            Action::Pull => vec![format!("repository:{repo}:pull")],
            Action::Push => vec![format!("repository:{repo}:pull,push")],
            Action::PushFrom(from) => vec![
                format!("repository:{repo}:pull,push"),
                format!("repository:{from}:pull"),
            ],
        }
    }
}

#[derive(Default)]
pub(super) struct TokenCache {
    /// Token per scope set (space-joined scopes).
    tokens: HashMap<String, String>,
    /// The registry answered with a Basic challenge: send Basic up front.
    basic: bool,
}

impl RegistryClient {
    /// The `Authorization` value for a request, if kiln has one yet.
    pub(super) fn authorization(&self, repo: &str, action: &Action) -> Option<String> {
        if let Credential::Bearer(token) = &self.credential {
            return Some(format!("Bearer {token}"));
        }
        let cache = self.tokens.lock().ok()?;
        let key = action.scopes(repo).join(" ");
        if let Some(token) = cache.tokens.get(&key) {
            return Some(format!("Bearer {token}"));
        }
        // A push token also allows pulls of the same repository.
        if *action == Action::Pull
            && let Some(token) = cache.tokens.get(&Action::Push.scopes(repo).join(" "))
        {
            return Some(format!("Bearer {token}"));
        }
        match (&self.credential, cache.basic) {
            (Credential::Basic { username, password }, true) => Some(basic(username, password)),
            _ => None,
        }
    }

    /// Handles a 401: returns whether the request is worth sending again.
    pub(super) async fn answer_challenge(
        &self,
        repo: &str,
        action: &Action,
        challenge: Option<&str>,
    ) -> Result<bool> {
        let Some(challenge) = challenge else {
            return Ok(false);
        };
        let (scheme, params) = parse_challenge(challenge);
        if scheme.eq_ignore_ascii_case("basic") {
            let mut cache = self.tokens.lock().map_err(|_| self.poisoned())?;
            cache.basic = true;
            // Parallel requests may all be challenged at once: each retries
            // (once, `exchange` sees to that) with the credentials now attached.
            return Ok(matches!(self.credential, Credential::Basic { .. }));
        }
        if !scheme.eq_ignore_ascii_case("bearer")
            || matches!(self.credential, Credential::Bearer(_))
        {
            // A Bearer credential was already sent and refused.
            return Ok(false);
        }
        let realm = params.get("realm").ok_or_else(|| RegistryError::Protocol {
            host: self.host.clone(),
            what: "a Bearer challenge without a realm".into(),
        })?;
        let mut query: Vec<(&str, String)> = Vec::new();
        if let Some(service) = params.get("service") {
            query.push(("service", service.clone()));
        }
        let mut scopes = action.scopes(repo);
        if let Some(extra) = params.get("scope") {
            for s in extra.split(' ') {
                if !scopes.iter().any(|have| have == s) {
                    scopes.push(s.to_string());
                }
            }
        }
        query.extend(scopes.iter().map(|s| ("scope", s.clone())));
        let url = reqwest::Url::parse_with_params(realm, &query).map_err(|_| {
            RegistryError::Protocol {
                host: self.host.clone(),
                what: format!("a Bearer challenge with an invalid realm {realm:?}"),
            }
        })?;
        let mut req = self.http.get(url);
        if let Credential::Basic { username, password } = &self.credential {
            req = req.header(header::AUTHORIZATION, basic(username, password));
        }
        let resp = req.send().await.map_err(|e| self.unreachable(e))?;
        match resp.status() {
            s if s.is_success() => {}
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                return Err(RegistryError::Unauthorized {
                    host: self.host.clone(),
                    repo: repo.to_string(),
                });
            }
            s => {
                return Err(RegistryError::Status {
                    host: self.host.clone(),
                    what: format!("getting a token from {realm}"),
                    status: s.as_u16(),
                    detail: String::new(),
                });
            }
        }
        #[derive(serde::Deserialize)]
        struct TokenResponse {
            token: Option<String>,
            access_token: Option<String>,
        }
        let bytes = resp.bytes().await.map_err(|e| self.unreachable(e))?;
        let body: TokenResponse =
            serde_json::from_slice(&bytes).map_err(|_| RegistryError::Protocol {
                host: self.host.clone(),
                what: format!("a token response from {realm} that is not JSON"),
            })?;
        let token = body
            .token
            .or(body.access_token)
            .ok_or_else(|| RegistryError::Protocol {
                host: self.host.clone(),
                what: format!("a token response from {realm} without a token"),
            })?;
        let mut cache = self.tokens.lock().map_err(|_| self.poisoned())?;
        cache.tokens.insert(action.scopes(repo).join(" "), token);
        Ok(true)
    }

    fn poisoned(&self) -> RegistryError {
        RegistryError::Protocol {
            host: self.host.clone(),
            what: "nothing (internal: token cache poisoned)".into(),
        }
    }
}

fn basic(username: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"))
    )
}

/// Parses `Bearer realm="…",service="…",scope="…"` into the scheme and its
/// parameters (quoted values may contain commas, as scopes do).
fn parse_challenge(header: &str) -> (String, HashMap<String, String>) {
    let header = header.trim();
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    (scheme.to_string(), parse_params(rest))
}

/// `realm="https://a/token",service="s",scope="repository:x:pull,push"` → map.
/// Values may be quoted and contain commas.
pub(crate) fn parse_params(s: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        let Some((key, after)) = rest.split_once('=') else {
            break;
        };
        let key = key
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        let after = after.trim_start();
        let (value, remaining) = if let Some(quoted) = after.strip_prefix('"') {
            match quoted.find('"') {
                Some(end) => (&quoted[..end], &quoted[end + 1..]),
                None => (quoted, ""),
            }
        } else {
            match after.find(',') {
                Some(end) => (&after[..end], &after[end..]),
                None => (after, ""),
            }
        };
        out.insert(key, value.to_string());
        rest = remaining.trim_start_matches(',').trim();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenge_params_with_commas_in_quotes() {
        let p = parse_params(
            r#"realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#,
        );
        assert_eq!(p["realm"], "https://auth.example/token");
        assert_eq!(p["service"], "registry.example");
        assert_eq!(p["scope"], "repository:a/b:pull,push");
        let p = parse_params("realm=http://x/t, service=s");
        assert_eq!(
            (p["realm"].as_str(), p["service"].as_str()),
            ("http://x/t", "s")
        );
    }

    #[test]
    fn bearer_challenge_parameters_are_parsed_including_commas_in_scope() {
        let (scheme, params) = parse_challenge(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#,
        );
        assert_eq!(scheme, "Bearer");
        assert_eq!(params["realm"], "https://auth.example/token");
        assert_eq!(params["service"], "registry.example");
        assert_eq!(params["scope"], "repository:a/b:pull,push");
        let (scheme, params) = parse_challenge(r#"Basic realm="kiln-test""#);
        assert_eq!(scheme, "Basic");
        assert_eq!(params["realm"], "kiln-test");
    }
}

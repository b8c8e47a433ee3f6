//! `api-key`: only callers with a known API key get through.
//!
//! The key is read from `Authorization: Bearer KEY`, `X-API-Key: KEY` or
//! (Gemini clients) `x-goog-api-key: KEY`; a Gemini client's `?key=KEY` is
//! handed over as `x-goog-api-key` by the proxy, which never forwards or
//! logs the query's key. On
//! Cloud Run with IAM on, clients put their Google ID token in
//! `X-Serverless-Authorization` (Cloud Run checks that one and passes
//! `Authorization` through), so both layers work together.
//!
//! On success the plugin sets `x-kiln-caller: NAME` for later plugins (e.g.
//! `rate-limit`) and removes the key headers, so Ollama never sees a secret.
//! A client-supplied `x-kiln-caller` is always replaced.
//!
//! ```toml
//! [plugins.config]
//! keys = [
//!   { name = "alice", key = "sk-alice-…" },
//!   { name = "ci", sha256 = "9f86d081884c7d65…" },   # sha256 hex of the key
//!   "sk-plain-…",                                    # caller name "key-3"
//!   "sha256:2c26b46b68ffc68f…",                      # hashed, caller name "key-4"
//! ]
//! ```
//! Prefer `sha256` entries: the config then holds no usable secret.

use kiln_plugin::{Decision, Modification, Plugin, Rejection, Request};
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// The header naming the caller for later plugins.
pub const CALLER_HEADER: &str = "x-kiln-caller";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub keys: Vec<KeyEntry>,
}

#[derive(Deserialize)]
#[serde(untagged)]
pub enum KeyEntry {
    Plain(String),
    Named { name: String, key: String },
    Hashed { name: String, sha256: String },
}

/// A configured key reduced to what the check needs.
struct Known {
    name: String,
    digest: [u8; 32],
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

fn known_keys(config: &Config) -> Result<Vec<Known>, String> {
    config
        .keys
        .iter()
        .enumerate()
        .map(|(i, entry)| match entry {
            KeyEntry::Plain(key) => {
                let name = format!("key-{}", i + 1);
                match key.strip_prefix("sha256:") {
                    Some(hex) => decode_hex(hex.trim())
                        .map(|digest| Known { name, digest })
                        .ok_or_else(|| format!("keys[{i}]: after `sha256:` come 64 hex digits")),
                    None => Ok(Known {
                        name,
                        digest: digest(key),
                    }),
                }
            }
            KeyEntry::Named { name, key } => Ok(Known {
                name: name.clone(),
                digest: digest(key),
            }),
            KeyEntry::Hashed { name, sha256 } => {
                let bytes = decode_hex(sha256.trim())
                    .ok_or_else(|| format!("keys[{i}] ({name}): sha256 must be 64 hex digits"))?;
                Ok(Known {
                    name: name.clone(),
                    digest: bytes,
                })
            }
        })
        .collect()
}

fn decode_hex(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, chunk) in s.as_bytes().chunks(2).enumerate() {
        let pair = std::str::from_utf8(chunk).ok()?;
        out[i] = u8::from_str_radix(pair, 16).ok()?;
    }
    Some(out)
}

/// Equal without an early exit, so timing does not reveal how much of a
/// guessed key's digest matched.
fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The key the client sent, if any.
fn presented_key(request: &Request) -> Option<&str> {
    let header = |name| {
        request
            .header(name)
            .map(str::trim)
            .filter(|k| !k.is_empty())
    };
    request
        .bearer_token()
        .or_else(|| header("x-api-key"))
        .or_else(|| header("x-goog-api-key"))
}

pub struct ApiKey;

impl Plugin for ApiKey {
    type Config = Config;

    fn validate(config: &Config) -> Result<(), String> {
        if config.keys.is_empty() {
            return Err(
                "`keys` is empty, so every request would be refused; add at least one key".into(),
            );
        }
        known_keys(config).map(|_| ())
    }

    fn on_request(config: &Config, request: &Request) -> Decision {
        let Some(key) = presented_key(request) else {
            return unauthorized(
                "missing API key: send `Authorization: Bearer <key>`, `X-API-Key: <key>` or `x-goog-api-key: <key>`",
            );
        };
        let known = match known_keys(config) {
            Ok(k) => k,
            Err(e) => return Decision::reject(500, e),
        };
        let presented = digest(key);
        // Check every key (no early return) to keep the timing independent of
        // which entry matched.
        let mut caller = None;
        for k in &known {
            if constant_time_eq(&k.digest, &presented) && caller.is_none() {
                caller = Some(k.name.as_str());
            }
        }
        match caller {
            Some(name) => Modification::default()
                .remove_header("authorization")
                .remove_header("x-api-key")
                .remove_header("x-goog-api-key")
                .set_header(CALLER_HEADER, name)
                .into(),
            None => unauthorized("invalid API key"),
        }
    }
}

fn unauthorized(message: &str) -> Decision {
    Rejection::new(401, message)
        .with_header("www-authenticate", "Bearer")
        .into()
}

kiln_plugin::export_plugin!(ApiKey);

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_plugin::{HeaderEdit, Route, parse_config};

    fn config() -> Config {
        let hashed = hex(&digest("sk-ci"));
        let plain_hashed = hex(&digest("sk-hashed"));
        parse_config::<ApiKey>(&format!(
            r#"{{"keys":[{{"name":"alice","key":"sk-alice"}},{{"name":"ci","sha256":"{hashed}"}},"sk-plain","sha256:{plain_hashed}"]}}"#
        ))
        .unwrap()
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn chat() -> Request {
        Request::new(
            Route::OllamaChat,
            "/api/chat",
            r#"{"model":"m","messages":[]}"#,
        )
    }

    fn caller(d: &Decision) -> Option<String> {
        let Decision::Modify(m) = d else { return None };
        m.header_edits.iter().find_map(|e| match e {
            HeaderEdit::Set(n, v) if n == CALLER_HEADER => Some(v.clone()),
            _ => None,
        })
    }

    #[test]
    fn no_key_is_401_with_a_hint() {
        let d = ApiKey::on_request(&config(), &chat());
        let r = d.as_rejection().expect("rejected");
        assert_eq!(r.status, 401);
        assert!(r.message.contains("X-API-Key"));
        assert_eq!(
            r.headers,
            vec![("www-authenticate".into(), "Bearer".into())]
        );
    }

    #[test]
    fn gemini_clients_send_x_goog_api_key() {
        let r = Request::new(
            Route::GeminiGenerate,
            "/v1beta/models/gemma3:4b:generateContent",
            r#"{"contents":[]}"#,
        );
        let d = ApiKey::on_request(
            &config(),
            &r.clone().with_header("x-goog-api-key", "sk-alice"),
        );
        assert_eq!(caller(&d).as_deref(), Some("alice"));
        let Decision::Modify(m) = d else { panic!() };
        assert!(
            m.header_edits
                .contains(&HeaderEdit::Remove("x-goog-api-key".into()))
        );
        let d = ApiKey::on_request(&config(), &r.with_header("x-goog-api-key", "sk-nope"));
        assert_eq!(d.as_rejection().map(|r| r.status), Some(401));
    }

    #[test]
    fn wrong_key_is_401() {
        let d = ApiKey::on_request(
            &config(),
            &chat().with_header("authorization", "Bearer sk-alicf"),
        );
        assert_eq!(d.as_rejection().map(|r| r.status), Some(401));
    }

    #[test]
    fn each_key_form_names_its_caller() {
        let c = config();
        let d = ApiKey::on_request(&c, &chat().with_header("Authorization", "Bearer sk-alice"));
        assert_eq!(caller(&d).as_deref(), Some("alice"));
        let d = ApiKey::on_request(&c, &chat().with_header("X-API-Key", "sk-ci"));
        assert_eq!(caller(&d).as_deref(), Some("ci"));
        let d = ApiKey::on_request(&c, &chat().with_header("x-api-key", "sk-plain"));
        assert_eq!(caller(&d).as_deref(), Some("key-3"));
        let d = ApiKey::on_request(&c, &chat().with_header("x-api-key", "sk-hashed"));
        assert_eq!(caller(&d).as_deref(), Some("key-4"));
    }

    #[test]
    fn the_key_is_not_forwarded_and_a_spoofed_caller_is_replaced() {
        let req = chat()
            .with_header("authorization", "Bearer sk-alice")
            .with_header(CALLER_HEADER, "admin");
        let Decision::Modify(m) = ApiKey::on_request(&config(), &req) else {
            panic!("expected a modification")
        };
        assert!(
            m.header_edits
                .contains(&HeaderEdit::Remove("authorization".into()))
        );
        assert!(
            m.header_edits
                .contains(&HeaderEdit::Remove("x-api-key".into()))
        );
        assert_eq!(
            m.header_edits.last(),
            Some(&HeaderEdit::Set(CALLER_HEADER.into(), "alice".into()))
        );
    }

    #[test]
    fn bad_configs_are_refused() {
        assert!(parse_config::<ApiKey>(r#"{"keys":[]}"#).is_err());
        assert!(parse_config::<ApiKey>(r#"{"keys":[{"name":"x","sha256":"abc"}]}"#).is_err());
        assert!(parse_config::<ApiKey>(r#"{}"#).is_err());
        assert!(parse_config::<ApiKey>(r#"{"keys":["sha256:xyz"]}"#).is_err());
    }
}

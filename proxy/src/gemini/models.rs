//! `GET models` and `GET models/{model}` in Gemini's `Model` shape, from
//! Ollama's `/api/tags` (the models this instance has on disk). An alias
//! of `[gemini] aliases` is listed as well, under its own name, when the
//! model it names is there.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::{error_json, resolve};

/// What a Gemini client can call on every model.
const METHODS: [&str; 5] = [
    "generateContent",
    "streamGenerateContent",
    "countTokens",
    "embedContent",
    "batchEmbedContents",
];

fn model(name: &str, ollama: &Value) -> Value {
    let details = &ollama["details"];
    let family = details["family"].as_str().unwrap_or("");
    let size = details["parameter_size"].as_str().unwrap_or("");
    let served = ollama["name"].as_str().unwrap_or(name);
    json!({
        "name": format!("models/{name}"),
        "baseModelId": served,
        "version": served.rsplit_once(':').map_or("latest", |(_, t)| t),
        "displayName": served,
        "description": format!("{served} served by Ollama ({family} {size})").replace(" ( )", ""),
        "supportedGenerationMethods": METHODS,
    })
}

/// The answer to `GET models` (`wanted: None`) or `GET models/{m}`, from
/// `/api/tags`'s body: status and body.
pub fn answer(
    aliases: &BTreeMap<String, String>,
    wanted: Option<&str>,
    tags: &[u8],
) -> (u16, Vec<u8>) {
    let v: Value = serde_json::from_slice(tags).unwrap_or(Value::Null);
    let list = v["models"].as_array().cloned().unwrap_or_default();
    let by_name = |n: &str| {
        list.iter()
            .find(|m| m["name"].as_str() == Some(n) || m["model"].as_str() == Some(n))
    };
    let mut all: Vec<Value> = list
        .iter()
        .map(|m| model(m["name"].as_str().unwrap_or(""), m))
        .collect();
    for (alias, target) in aliases {
        if let Some(m) = by_name(target) {
            all.push(model(alias, m));
        }
    }
    let body = match wanted {
        None => json!({"models": all}),
        Some(w) => {
            let name = w.strip_prefix("models/").unwrap_or(w);
            let target = resolve(aliases, name);
            match by_name(&target).or_else(|| by_name(&format!("{target}:latest"))) {
                Some(m) => model(name, m),
                None => {
                    let msg = format!(
                        "model 'models/{name}' is not found on this service; GET models lists those it serves"
                    );
                    return (
                        404,
                        serde_json::to_vec(&error_json(404, &msg)).unwrap_or_default(),
                    );
                }
            }
        }
    };
    (200, serde_json::to_vec(&body).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_become_gemini_models() {
        let tags = br#"{"models":[{"name":"gemma3:4b","model":"gemma3:4b","details":{"family":"gemma3","parameter_size":"4.3B"}}]}"#;
        let aliases = BTreeMap::from([("gemma-3-4b-it".to_string(), "gemma3:4b".to_string())]);
        let (status, b) = answer(&aliases, None, tags);
        let v: Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(status, 200);
        let names: Vec<&str> = v["models"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["models/gemma3:4b", "models/gemma-3-4b-it"]);
        let (status, b) = answer(&aliases, Some("gemma-3-4b-it"), tags);
        assert_eq!(status, 200);
        assert_eq!(
            serde_json::from_slice::<Value>(&b).unwrap()["baseModelId"],
            "gemma3:4b"
        );
        let (status, b) = answer(&aliases, Some("nope:1b"), tags);
        assert_eq!(status, 404);
        assert_eq!(
            serde_json::from_slice::<Value>(&b).unwrap()["error"]["status"],
            "NOT_FOUND"
        );
    }
}

//! What a service needs for kiln-proxy's shared counters on Cloud Run:
//! Direct VPC egress to reach Memorystore, the Redis URL, password and CA
//! from Secret Manager (never literals in the YAML), and the facts of the
//! proxy config that decide whether several instances count alone.

use std::str::FromStr;

use serde_json::{Value, json};

use super::DeployOptions;

/// Where the Redis CA file is mounted in the kiln-proxy container.
pub const CA_MOUNT_DIR: &str = "/etc/kiln/redis-ca";
const CA_FILE_NAME: &str = "ca.pem";
const CA_VOLUME: &str = "kiln-redis-ca";

/// Direct VPC egress setting (`run.googleapis.com/vpc-access-egress`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum VpcEgress {
    /// Only private addresses (Memorystore's) go through the VPC.
    PrivateRangesOnly,
    /// Everything goes through the VPC.
    AllTraffic,
}

impl VpcEgress {
    pub fn as_str(self) -> &'static str {
        match self {
            VpcEgress::PrivateRangesOnly => "private-ranges-only",
            VpcEgress::AllTraffic => "all-traffic",
        }
    }
}

/// A Secret Manager secret and version: `NAME` or `NAME:VERSION`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretRef {
    pub name: String,
    pub version: String,
}

impl FromStr for SecretRef {
    type Err = String;

    fn from_str(s: &str) -> Result<SecretRef, String> {
        let (name, version) = s.split_once(':').unwrap_or((s, "latest"));
        // Secret IDs: letters, digits, `-` and `_`, at most 255.
        let valid_name = !name.is_empty()
            && name.len() <= 255
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        let valid_version = version == "latest"
            || (!version.is_empty() && version.chars().all(|c| c.is_ascii_digit()));
        if !valid_name || !valid_version {
            return Err(format!(
                "{s:?} is not a secret reference: expected SECRET or SECRET:VERSION (a number or latest), \
                 naming a Secret Manager secret, not its value"
            ));
        }
        Ok(SecretRef {
            name: name.into(),
            version: version.into(),
        })
    }
}

/// What the image's kiln-proxy config says about counting.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProxyConfigFacts {
    /// `[[plugins]]` entries that keep counts (rate-limit, token-budget).
    pub counting_plugins: Vec<String>,
    /// `[counters]` names a shared backend (Redis) itself.
    pub shared_counters: bool,
}

/// Plugins that count per caller across requests, by name or file name.
const COUNTING_PLUGINS: &[&str] = &["rate-limit", "rate_limit", "token-budget", "token_budget"];

impl ProxyConfigFacts {
    pub fn parse(text: &str) -> Result<ProxyConfigFacts, String> {
        let table: toml::Table = text.parse().map_err(|e| format!("not valid TOML: {e}"))?;
        let counting_plugins = table
            .get("plugins")
            .and_then(|p| p.as_array())
            .into_iter()
            .flatten()
            .filter_map(|p| {
                let name = p.get("name")?.as_str()?;
                let path = p.get("path").and_then(|v| v.as_str()).unwrap_or_default();
                COUNTING_PLUGINS
                    .iter()
                    .any(|c| name.contains(c) || path.contains(c))
                    .then(|| name.to_owned())
            })
            .collect();
        let counters = table.get("counters");
        let shared_counters = counters.and_then(|c| c.get("url")).is_some()
            || counters
                .and_then(|c| c.get("backend"))
                .and_then(|b| b.as_str())
                == Some("redis");
        Ok(ProxyConfigFacts {
            counting_plugins,
            shared_counters,
        })
    }
}

/// Warnings about counting on this service.
pub fn warnings(o: &DeployOptions) -> Vec<String> {
    let mut warnings = Vec::new();
    let shared = o.counters_url_secret.is_some()
        || o.proxy_config.as_ref().is_some_and(|f| f.shared_counters);
    if let Some(facts) = &o.proxy_config
        && o.max_instances > 1
        && !facts.counting_plugins.is_empty()
        && !shared
    {
        warnings.push(format!(
            "--max-instances {} with plugins that count ({}) and no shared counters: each instance counts alone, \
             so a limit of L lets up to {}×L through; give a Redis (Memorystore) with --counters-url-secret \
             and --network/--subnet",
            o.max_instances,
            facts.counting_plugins.join(", "),
            o.max_instances
        ));
    }
    if o.counters_url_secret.is_some() && o.network.is_none() && o.subnet.is_none() {
        warnings.push(
            "--counters-url-secret without --network/--subnet: Memorystore has only private addresses, \
             reached through Direct VPC egress"
                .into(),
        );
    }
    warnings
}

/// Template annotations for Direct VPC egress.
pub fn vpc_annotations(o: &DeployOptions, annotations: &mut Value) {
    if o.network.is_none() && o.subnet.is_none() {
        return;
    }
    let mut interface = serde_json::Map::new();
    if let Some(n) = &o.network {
        interface.insert("network".into(), json!(n));
    }
    if let Some(s) = &o.subnet {
        interface.insert("subnetwork".into(), json!(s));
    }
    annotations["run.googleapis.com/network-interfaces"] =
        json!(Value::Array(vec![Value::Object(interface)]).to_string());
    annotations["run.googleapis.com/vpc-access-egress"] = json!(o.vpc_egress.as_str());
}

/// Where kiln-proxy finds the mounted CA (a plain env value), if mounted.
pub fn ca_file_env(o: &DeployOptions) -> Option<(&'static str, String)> {
    o.counters_ca_secret.as_ref().map(|_| {
        (
            "KILN_COUNTERS_CA_FILE",
            format!("{CA_MOUNT_DIR}/{CA_FILE_NAME}"),
        )
    })
}

/// kiln-proxy's env entries that come from secrets (`valueFrom.secretKeyRef`).
pub fn secret_env(o: &DeployOptions) -> Vec<Value> {
    let secret = |name: &str, r: &SecretRef| json!({"name": name, "valueFrom": {"secretKeyRef": {"name": r.name, "key": r.version}}});
    let mut env = Vec::new();
    if let Some(r) = &o.counters_url_secret {
        env.push(secret("KILN_COUNTERS_URL", r));
    }
    if let Some(r) = &o.counters_password_secret {
        env.push(secret("KILN_COUNTERS_PASSWORD", r));
    }
    env
}

/// The CA secret as a volume of the revision and a mount of the proxy container.
pub fn ca_volume(o: &DeployOptions) -> Option<(Value, Value)> {
    let r = o.counters_ca_secret.as_ref()?;
    let volume = json!({
        "name": CA_VOLUME,
        "secret": {"secretName": r.name, "items": [{"key": r.version, "path": CA_FILE_NAME}]},
    });
    let mount = json!({"name": CA_VOLUME, "mountPath": CA_MOUNT_DIR, "readOnly": true});
    Some((volume, mount))
}

/// gcloud flags of the service (network) and of the proxy container (secrets).
pub fn gcloud_service_flags(o: &DeployOptions) -> Vec<String> {
    let mut flags = Vec::new();
    if let Some(n) = &o.network {
        flags.push(format!("--network {n}"));
    }
    if let Some(s) = &o.subnet {
        flags.push(format!("--subnet {s}"));
    }
    if o.network.is_some() || o.subnet.is_some() {
        flags.push(format!("--vpc-egress {}", o.vpc_egress.as_str()));
    }
    flags
}

pub fn gcloud_proxy_flags(o: &DeployOptions) -> Vec<String> {
    let mut secrets = Vec::new();
    let r = |r: &SecretRef| format!("{}:{}", r.name, r.version);
    if let Some(s) = &o.counters_url_secret {
        secrets.push(format!("KILN_COUNTERS_URL={}", r(s)));
    }
    if let Some(s) = &o.counters_password_secret {
        secrets.push(format!("KILN_COUNTERS_PASSWORD={}", r(s)));
    }
    if let Some(s) = &o.counters_ca_secret {
        secrets.push(format!("{CA_MOUNT_DIR}/{CA_FILE_NAME}={}", r(s)));
    }
    if secrets.is_empty() {
        return Vec::new();
    }
    vec![format!("--set-secrets {}", secrets.join(","))]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_refs_name_secrets_not_values() {
        assert_eq!(
            "redis-url".parse::<SecretRef>().unwrap(),
            SecretRef {
                name: "redis-url".into(),
                version: "latest".into()
            }
        );
        assert_eq!("redis-pass:3".parse::<SecretRef>().unwrap().version, "3");
        for bad in ["", "rediss://10.0.0.3:6378", "pass word", "x:v1"] {
            assert!(bad.parse::<SecretRef>().is_err(), "{bad}");
        }
    }

    #[test]
    fn proxy_config_facts_find_counting_plugins_and_shared_counters() {
        let facts = ProxyConfigFacts::parse(
            r#"
[[plugins]]
name = "api-key"
path = "/plugins/api_key.wasm"
[[plugins]]
name = "limits"
path = "/plugins/rate_limit.wasm"
[[plugins]]
name = "token-budget"
path = "/plugins/token_budget.wasm"
"#,
        )
        .unwrap();
        assert_eq!(facts.counting_plugins, ["limits", "token-budget"]);
        assert!(!facts.shared_counters);
        let shared = ProxyConfigFacts::parse("[counters]\nbackend = \"redis\"\n").unwrap();
        assert!(shared.shared_counters);
        assert!(ProxyConfigFacts::parse("[[plugins]\n").is_err());
    }
}

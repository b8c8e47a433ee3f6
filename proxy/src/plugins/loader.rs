//! Turning a `[[plugins]]` entry into a ready-to-instantiate plugin: read the
//! file, check the sha256 pin, componentize a core module, compile (or load
//! the cached artifact), link against the host, and let the plugin check its
//! config.

use super::OnError;
use super::cache::{ArtifactCache, Origin};
use super::response_world::ResponseFilterPre;
use super::routes::RouteSet;
use super::runtime::{FilterPre, PluginContext, Runtime};
use super::{PluginError, PluginSpec};
use sha2::{Digest, Sha256};
use std::sync::Arc;

/// The WIT package a plugin must be built against.
pub const INTERFACE: &str = "kiln:filter@0.2.0";

/// The export name of the response hooks (`response-filter` and
/// `filter-with-response` worlds).
pub const RESPONSE_INTERFACE: &str = "kiln:filter/response@0.2.0";

/// A plugin ready to serve: one `FilterPre` per plugin, shared by every call.
pub struct LoadedPlugin {
    pub name: String,
    pub on_error: OnError,
    pub routes: RouteSet,
    /// The request hook; `None` for a response-only plugin.
    pub pre: Option<FilterPre<super::runtime::CallState>>,
    /// The response hooks; `None` for a request-only plugin.
    pub response: Option<ResponseFilterPre<super::runtime::CallState>>,
    pub context: Arc<PluginContext>,
    pub info: PluginInfo,
    pub(super) stats: Arc<super::stats::PluginStats>,
}

/// Facts about a loaded plugin, for `plugin check` and the startup log.
#[derive(Clone, Debug)]
pub struct PluginInfo {
    pub sha256: String,
    pub file_bytes: usize,
    /// True when the file was a core module turned into a component at load.
    pub componentized: bool,
    pub from_cache: bool,
    pub imports: Vec<String>,
    pub exports: Vec<String>,
}

/// What kind of wasm binary a file holds, from its 8-byte preamble: the
/// magic `\0asm`, then version 1 for core modules, or version 0xd with
/// layer 1 for components.
fn wasm_kind(bytes: &[u8]) -> Option<bool> {
    match bytes.get(..8)? {
        [0, b'a', b's', b'm', 1, 0, 0, 0] => Some(false),
        [0, b'a', b's', b'm', _, 0, 1, 0] => Some(true),
        _ => None,
    }
}

/// True when a core module carries a WIT world in a `component-type`
/// custom section, as wit-bindgen (and so the SDK) embeds it.
fn has_world(module: &[u8]) -> bool {
    wasmparser::Parser::new(0).parse_all(module).any(|payload| {
        matches!(payload, Ok(wasmparser::Payload::CustomSection(c)) if c.name().starts_with("component-type"))
    })
}

/// The WIT this proxy was built with: the `filter` world is embedded into
/// core modules that carry none.
const WIT: &str = include_str!("../../../plugins/wit/filter.wit");

fn embed_filter_world(module: &[u8]) -> Result<Vec<u8>, String> {
    let mut resolve = wit_parser::Resolve::default();
    let world = resolve
        .push_str("filter.wit", WIT)
        .and_then(|pkg| resolve.select_world(&[pkg], Some("filter")))
        .map_err(|e| format!("the proxy's own WIT does not parse: {e:#}"))?;
    let mut out = module.to_vec();
    wit_component::embed_component_metadata(
        &mut out,
        &resolve,
        world,
        wit_component::StringEncoding::UTF8,
        false,
    )
    .map_err(|e| format!("could not attach the kiln:filter world to this core module: {e:#}"))?;
    Ok(out)
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Checks an optional pin: hex, any case, optionally prefixed `sha256:`.
fn check_pin(spec: &PluginSpec, actual: &str) -> Result<(), PluginError> {
    let Some(pin) = &spec.sha256 else {
        return Ok(());
    };
    let expected = pin
        .trim()
        .trim_start_matches("sha256:")
        .to_ascii_lowercase();
    if expected != actual {
        return Err(PluginError::PinMismatch {
            name: spec.name.clone(),
            path: spec.path.clone(),
            expected,
            actual: actual.to_owned(),
        });
    }
    Ok(())
}

pub fn load(runtime: &Runtime, spec: &PluginSpec) -> Result<LoadedPlugin, PluginError> {
    let fail = |reason: String| PluginError::Invalid {
        name: spec.name.clone(),
        path: spec.path.clone(),
        reason,
    };
    let routes = RouteSet::parse(spec.routes.as_deref()).map_err(&fail)?;
    let bytes = std::fs::read(&spec.path).map_err(|source| PluginError::Read {
        name: spec.name.clone(),
        path: spec.path.clone(),
        source,
    })?;
    let sha256 = sha256_hex(&bytes);
    check_pin(spec, &sha256)?;

    let (component_bytes, componentized) = match wasm_kind(&bytes) {
        Some(true) => (bytes.clone(), false),
        Some(false) => {
            // A module without an embedded world (plain C, Zig, hand-written)
            // is taken to implement `filter` by its canonical-ABI export names.
            let module = if has_world(&bytes) {
                bytes.clone()
            } else {
                embed_filter_world(&bytes).map_err(&fail)?
            };
            let encoded = wit_component::ComponentEncoder::default()
                .module(&module)
                .and_then(|e| e.validate(true).encode())
                .map_err(|e| {
                    fail(format!(
                        "it is a core wasm module that could not be made into a component ({e:#}); \
                         build it with the kiln-plugin SDK (or wit-bindgen against plugins/wit), or export \
                         the `filter` world's functions under their canonical-ABI names"
                    ))
                })?;
            (encoded, true)
        }
        None => return Err(fail("not a WebAssembly file (no `\\0asm` header)".into())),
    };

    let cache = ArtifactCache::new(runtime.options.cache_dir.clone());
    let (component, origin) = cache
        .load_or_compile(
            &runtime.engine,
            &component_bytes,
            &sha256_hex(&component_bytes),
        )
        .map_err(|e| fail(format!("it does not compile: {e:#}")))?;

    let ty = component.component_type();
    let imports: Vec<String> = ty
        .imports(&runtime.engine)
        .map(|(name, _)| name.to_owned())
        .collect();
    let exports: Vec<String> = ty
        .exports(&runtime.engine)
        .map(|(name, _)| name.to_owned())
        .collect();

    // A plugin built against another version of the WIT package names it
    // in every import: say so before the linker's type mismatch does.
    let version = INTERFACE.rsplit_once('@').map_or("", |(_, v)| v);
    let other = imports.iter().chain(&exports).find_map(|name| {
        let (_, v) = name.strip_prefix("kiln:filter")?.rsplit_once('@')?;
        (v != version).then_some(v)
    });
    if let Some(other) = other {
        return Err(fail(format!(
            "it was built against kiln:filter@{other}, and this kiln-proxy speaks {INTERFACE}: \
             rebuild it with the kiln-plugin SDK (or the WIT in plugins/wit) of this release"
        )));
    }
    let instance_pre = runtime.linker.instantiate_pre(&component).map_err(|e| {
        fail(format!(
            "its imports do not match what kiln offers ({INTERFACE}): {e:#}; it imports [{}]",
            imports.join(", ")
        ))
    })?;
    // A plugin exports the request hook, the response hooks, or both.
    let has_request = exports.iter().any(|e| e == "on-request");
    let has_response = exports.iter().any(|e| e == RESPONSE_INTERFACE);
    if !has_request && !has_response {
        return Err(fail(format!(
            "it exports neither `on-request` (the `filter` world of {INTERFACE}) nor \
             `{RESPONSE_INTERFACE}` (the `response-filter` world); it exports [{}]",
            exports.join(", ")
        )));
    }
    let pre = match has_request {
        true => Some(FilterPre::new(instance_pre.clone()).map_err(|e| {
            fail(format!(
                "it does not export the `filter` world of {INTERFACE}: {e:#}; it exports [{}]",
                exports.join(", ")
            ))
        })?),
        false => None,
    };
    let response = match has_response {
        true => Some(ResponseFilterPre::new(instance_pre).map_err(|e| {
            fail(format!(
                "it does not export the `response-filter` world of {INTERFACE}: {e:#}; it exports [{}]",
                exports.join(", ")
            ))
        })?),
        false => None,
    };

    let config_json = if spec.config.is_null() {
        "{}".to_owned()
    } else {
        spec.config.to_string()
    };
    let context = Arc::new(PluginContext {
        name: spec.name.clone(),
        config_json,
        counters: runtime.counters.for_plugin(&spec.name),
    });

    // Config errors belong at start, not on the first request.
    let mut store = runtime.store(context.clone());
    let verdict = match (&pre, &response) {
        (Some(pre), _) => pre
            .instantiate(&mut store)
            .and_then(|filter| filter.call_validate_config(&mut store)),
        (None, Some(response)) => response
            .instantiate(&mut store)
            .and_then(|filter| filter.call_validate_config(&mut store)),
        (None, None) => return Err(fail("it exports no hook".into())),
    }
    .map_err(|e| {
        fail(format!(
            "it failed while checking its config: {}",
            super::chain::describe_failure(&e, &store)
        ))
    })?;
    if let Err(message) = verdict {
        return Err(PluginError::Config {
            name: spec.name.clone(),
            message,
        });
    }

    Ok(LoadedPlugin {
        name: spec.name.clone(),
        on_error: spec.on_error,
        routes,
        pre,
        response,
        context,
        stats: runtime.stats.for_plugin(&spec.name),
        info: PluginInfo {
            sha256,
            file_bytes: bytes.len(),
            componentized,
            from_cache: origin == Origin::Cached,
            imports,
            exports,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wasm_kind_reads_the_preamble() {
        assert_eq!(wasm_kind(b"\0asm\x01\0\0\0rest"), Some(false));
        assert_eq!(wasm_kind(b"\0asm\x0d\0\x01\0rest"), Some(true));
        assert_eq!(wasm_kind(b"\x7fELF\x02\x01\x01\0"), None);
        assert_eq!(wasm_kind(b"\0as"), None);
    }

    #[test]
    fn pins_accept_a_prefix_and_any_case() {
        let mut spec: PluginSpec =
            serde_json::from_value(serde_json::json!({"name":"p","path":"/x"})).unwrap();
        assert!(check_pin(&spec, "ab").is_ok(), "no pin, no check");
        spec.sha256 = Some("sha256:AB".into());
        assert!(check_pin(&spec, "ab").is_ok());
        spec.sha256 = Some("cd".into());
        let err = check_pin(&spec, "ab").unwrap_err().to_string();
        assert!(
            err.contains("pins cd") && err.contains("has sha256 ab"),
            "{err}"
        );
    }
}

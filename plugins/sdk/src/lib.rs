//! kiln-plugin: the Rust guest SDK for kiln request-filter plugins.
//!
//! A plugin is a type implementing [`Plugin`] plus one `export_plugin!` line:
//!
//! ```ignore
//! use kiln_plugin::{Decision, Plugin, Request};
//!
//! #[derive(serde::Deserialize)]
//! struct Config { blocked_model: String }
//!
//! struct NoBigModel;
//!
//! impl Plugin for NoBigModel {
//!     type Config = Config;
//!     fn on_request(config: &Config, request: &Request) -> Decision {
//!         if request.model.as_deref() == Some(config.blocked_model.as_str()) {
//!             return Decision::reject(403, "that model is not served here");
//!         }
//!         Decision::Allow
//!     }
//! }
//!
//! kiln_plugin::export_plugin!(NoBigModel);
//! ```
//!
//! Build it for `wasm32-unknown-unknown` as a `cdylib`; kiln-proxy loads the
//! core module (it carries its interface in a custom section) or a component
//! made from it. Keep the decision logic in plain functions over [`Request`]
//! and [`Body`] so it can be unit-tested natively with `cargo test`.

pub mod arena;
#[doc(hidden)]
pub mod bindings;
pub mod body;
pub mod decision;
pub mod host;
pub mod request;
pub mod response;
#[doc(hidden)]
pub mod response_bindings;

pub use body::{Body, BodyError, Message};
pub use decision::{Decision, HeaderEdit, Modification, Rejection};
pub use request::{Request, Route};

/// Every SDK plugin allocates from an arena in its initial memory (see
/// [`arena`]); a plugin crate must not declare another global allocator.
#[cfg(target_arch = "wasm32")]
#[global_allocator]
static ALLOCATOR: arena::Arena<{ arena::ARENA_BYTES }> = arena::Arena::new();

/// A request filter. One instance of the plugin's wasm module serves one
/// request, so there is no `&self`: state that must outlive a request goes
/// through the host's counters ([`host::Counters`]).
pub trait Plugin {
    /// The plugin's `[plugins.config]` table. Checked once when the proxy
    /// loads the plugin: a config that does not deserialize refuses to start
    /// the proxy with serde's message. Use `#[serde(default)]` for optional
    /// keys and `#[serde(deny_unknown_fields)]` to catch typos.
    type Config: serde::de::DeserializeOwned;

    /// Extra checks on a config that deserialized (e.g. "keys must not be
    /// empty"). The error is shown to the operator. Run once, when the proxy
    /// loads the plugin; calls only deserialize the config.
    fn validate(_config: &Self::Config) -> Result<(), String> {
        Ok(())
    }

    /// Decides what happens to one request.
    fn on_request(config: &Self::Config, request: &Request) -> Decision;
}

/// Parses a plugin config from the JSON the host hands over, the way the
/// exported plugin does at load time. Useful in native tests.
pub fn parse_config<P: Plugin>(json: &str) -> Result<P::Config, String> {
    let config: P::Config = deserialize_config(json)?;
    P::validate(&config)?;
    Ok(config)
}

/// The config as every call reads it: deserialized only. `validate` ran
/// once, when the host loaded the plugin (`validate-config`), and may be
/// costly (`output-guard` compiles its patterns there): not again per call.
#[doc(hidden)]
pub fn deserialize_config<C: serde::de::DeserializeOwned>(json: &str) -> Result<C, String> {
    serde_json::from_str(json).map_err(|e| format!("invalid plugin config: {e}"))
}

/// Exports a [`Plugin`] implementation as the `kiln:filter/filter` world.
/// Use it once per plugin crate.
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        const _: () = {
            struct KilnPluginExport;

            impl $crate::bindings::Guest for KilnPluginExport {
                fn validate_config() -> ::core::result::Result<(), ::std::string::String> {
                    $crate::glue::validate_config::<$plugin>()
                }

                fn on_request(
                    request: $crate::bindings::kiln::filter::types::Request,
                ) -> $crate::bindings::kiln::filter::types::Decision {
                    $crate::glue::on_request::<$plugin>(request)
                }
            }

            $crate::bindings::__export_filter_world!(KilnPluginExport with_types_in $crate::bindings);
        };
    };
}

/// The code behind `export_plugin!`: converts between the generated binding
/// types and the SDK's types.
#[doc(hidden)]
pub mod glue {
    use crate::{Decision, Plugin, Request, bindings};

    pub fn validate_config<P: Plugin>() -> Result<(), String> {
        crate::parse_config::<P>(&crate::host::config()).map(|_| ())
    }

    pub fn on_request<P: Plugin>(
        request: bindings::kiln::filter::types::Request,
    ) -> bindings::kiln::filter::types::Decision {
        // The host checked the config at load with `validate_config`, so a
        // failure here means the host changed it underneath: refuse loudly
        // rather than run with a half-understood policy.
        let decision = match crate::deserialize_config::<P::Config>(&crate::host::config()) {
            Ok(config) => P::on_request(&config, &Request::from(request)),
            Err(e) => Decision::reject(500, format!("plugin config rejected at request time: {e}")),
        };
        decision.into()
    }
}

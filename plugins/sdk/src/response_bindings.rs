//! Generated guest bindings for the response hooks.
//!
//! A wasm module may carry several world descriptions; the component encoder
//! (in kiln-proxy at load, or `wasm-tools component new`) merges them. The
//! SDK uses that to compose the published worlds from small pieces, because
//! two generated bindings may not both export the same interface in one
//! crate:
//! - `response-filter`      = [`config`] + [`hooks`]
//! - `filter-with-response` = [`crate::bindings`] (`filter`) + [`hooks`]
//!
//! The pieces share the `types` and `host` bindings of [`crate::bindings`].
//! Plugin code should not need these: `export_response_plugin!` and
//! `export_plugin_with_response!` use them.

#![allow(clippy::too_many_arguments)]

/// Exports `kiln:filter/response@0.2.0` only.
pub mod hooks {
    wit_bindgen::generate!({
        inline: "
            package kiln:sdk;
            world response-hooks {
                import kiln:filter/host@0.2.0;
                export kiln:filter/response@0.2.0;
            }
        ",
        path: "../wit",
        world: "kiln:sdk/response-hooks",
        with: {
            "kiln:filter/types@0.2.0": crate::bindings::kiln::filter::types,
            "kiln:filter/host@0.2.0": crate::bindings::kiln::filter::host,
        },
        pub_export_macro: true,
        export_macro_name: "__export_response_hooks_world",
        default_bindings_module: "kiln_plugin::response_bindings::hooks",
    });
}

/// Exports `validate-config` only (for plugins without `on-request`).
pub mod config {
    wit_bindgen::generate!({
        inline: "
            package kiln:sdk;
            world config-check {
                import kiln:filter/host@0.2.0;
                export validate-config: func() -> result<_, string>;
            }
        ",
        path: "../wit",
        world: "kiln:sdk/config-check",
        with: {
            "kiln:filter/host@0.2.0": crate::bindings::kiln::filter::host,
        },
        pub_export_macro: true,
        export_macro_name: "__export_config_check_world",
        default_bindings_module: "kiln_plugin::response_bindings::config",
    });
}

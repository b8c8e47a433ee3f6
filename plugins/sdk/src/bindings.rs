//! Generated guest bindings for `kiln:filter/filter`. Plugin code should not
//! need these: the SDK's own types wrap them.

// Generated code: the canonical ABI passes a flattened request record as
// many scalar arguments.
#![allow(clippy::too_many_arguments)]

wit_bindgen::generate!({
    path: "../wit",
    world: "filter",
    // The export macro is used from plugin crates through `export_plugin!`.
    pub_export_macro: true,
    export_macro_name: "__export_filter_world",
    default_bindings_module: "kiln_plugin::bindings",
});

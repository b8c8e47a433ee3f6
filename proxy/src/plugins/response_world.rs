//! Host bindings of the `response-filter` world (`kiln:filter@0.2.0`): the
//! `response` interface a plugin exports to see answers. The `types` and
//! `host` interfaces are shared with the `filter` world's bindings, so one
//! linker serves both kinds of plugin.

wasmtime::component::bindgen!({
    path: "../plugins/wit",
    world: "response-filter",
    // What the host passes in (a chunk's text and bytes) is lowered straight
    // from where it lies: no owned copy per chunk first.
    ownership: Borrowing { duplicate_if_necessary: false },
    with: {
        "kiln:filter/types": super::runtime::kiln::filter::types,
        "kiln:filter/host": super::runtime::kiln::filter::host,
    },
});

pub use exports::kiln::filter::response as wit;

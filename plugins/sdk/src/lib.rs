//! kiln-plugin: the Rust guest SDK for kiln request-filter plugins.

//! kiln-proxy: the sidecar that fronts a local Ollama on Cloud Run.
pub mod filter;

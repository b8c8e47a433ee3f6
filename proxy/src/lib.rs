//! kiln-proxy: the sidecar that fronts a local Ollama on Cloud Run.
//!
//! Library first, so tests and benchmarks run it in process: build a
//! [`Config`], pick the filter stage, and call [`start`] (or [`run`], which
//! also waits for SIGTERM and drains).

pub mod access;
pub mod admission;
pub mod body;
pub mod config;
pub mod counters_config;
pub mod decompress;
pub mod filter;
pub mod framing;
pub mod gemini;
pub mod headers;
pub mod local;
pub mod logging;
pub mod metrics;
pub mod passthrough;
pub mod pipeline;
pub mod plugins;
pub mod readiness;
pub mod request_body;
pub mod request_view;
pub mod response;
pub mod response_body;
pub mod route_kind;
pub mod routes;
pub mod server;
pub mod supervisor;
pub mod telemetry;
pub mod upstream;
pub mod write_stall;

pub use config::Config;
pub use server::{RunningProxy, run, start};

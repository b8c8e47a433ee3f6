//! kiln: pull Ollama models straight from the Ollama registry and bake them
//! into OCI images, with no Ollama and no Docker daemon.
pub mod cache;
pub mod deploy;
pub mod image;
pub mod layers;
pub mod models_dir;
pub mod progress;
pub mod pull;
pub mod reference;
pub mod auth;
pub mod registry;
pub mod base;
pub mod sinks;
pub mod inspect;
pub mod pack;

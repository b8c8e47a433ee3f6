//! kiln: pull Ollama models straight from the Ollama registry and bake them
//! into OCI images, with no Ollama and no Docker daemon.
pub mod auth;
pub mod base;
pub mod cache;
pub mod deploy;
pub mod image;
pub mod inspect;
pub mod layers;
pub mod models_dir;
pub mod pack;
pub mod progress;
pub mod pull;
pub mod reference;
pub mod registry;
pub mod sinks;

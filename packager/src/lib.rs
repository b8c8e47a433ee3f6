//! kiln: pull Ollama models straight from the Ollama registry and bake them
//! into OCI images, with no Ollama and no Docker daemon.
//!
//! Where things are: `pull` downloads models into the `blob_cache`;
//! `models_dir` lays them out as `OLLAMA_MODELS`; `pack` plans an image
//! (`pack::layer_plan`: which file goes into which layer) and builds it (its
//! tar layers in `layers`, config and manifests in `image`), then hands it to
//! one of the `sinks` (registry push, OCI layout, docker archive); `registry`
//! speaks the OCI distribution protocol, with credentials from
//! `credentials`; `model_ref` and `image::reference` parse names.
pub mod blob_cache;
pub mod credentials;
pub mod deploy;
pub mod image;
pub mod inspect;
pub mod layers;
pub mod model_ref;
pub mod models_dir;
pub mod pack;
pub mod progress;
pub mod pull;
pub mod registry;
pub mod sinks;
pub mod stdout;

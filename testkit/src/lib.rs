//! Test support shared by kiln's integration tests and benchmarks: a real OCI
//! registry on loopback (Debian's `docker-registry`) in three auth modes, and
//! seeding with the images kiln reads in production.

pub mod cdn_front;
mod http;
pub mod registry;
pub mod seed;

pub use http::digest_of;
pub use registry::{Auth, TestRegistry};
pub use seed::{
    Blob, ModelSpec, SeededBase, SeededModel, SyntheticBytes, TensorModelSpec, TensorSpec,
};

/// Fails with an install hint when an external tool the tests use is missing.
pub fn require_tool(name: &str, package: &str) -> anyhow::Result<std::path::PathBuf> {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
        .ok_or_else(|| {
            anyhow::anyhow!("{name} not found; install it with `apt-get install -y {package}` (or run scripts/setup)")
        })
}

//! Test support shared by kiln's integration tests and benchmarks.

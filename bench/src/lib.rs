//! Shared helpers for Lethe's benchmarks and measurement tools.

pub mod sphinx_setup;

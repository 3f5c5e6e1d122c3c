//! Shared helpers for Lethe's benchmarks and measurement tools.

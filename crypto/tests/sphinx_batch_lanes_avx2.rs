//! `sphinx_batch_lanes` with `LETHE_SIMD=avx2` (own binary: the level is cached per process).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod batch_lanes_common;
mod counting_alloc;
mod sphinx_common;

#[test]
fn lane_filling_batches_match_the_reference_at_every_hop_and_do_not_allocate() {
    use lethe_crypto::simd::{level, Level};
    if !Level::Avx2.is_supported() {
        // Said, not passed silently: running would test another path under this name.
        eprintln!("SKIPPED: symmetric path avx2 (this CPU lacks AVX2)");
        return;
    }
    std::env::set_var("LETHE_SIMD", "avx2");
    // The forced path must be the one that runs: a fallback would be a silent pass.
    assert_eq!(level(), Level::Avx2);
    batch_lanes_common::matches_the_reference_at_every_hop();
    batch_lanes_common::does_not_allocate();
    println!("ran on symmetric path: avx2");
}

//! `sphinx_batch_lanes` with `LETHE_SIMD=portable` (own binary: the level is cached per
//! process).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod batch_lanes_common;
mod counting_alloc;
mod sphinx_common;

#[test]
fn lane_filling_batches_match_the_reference_at_every_hop_and_do_not_allocate() {
    use lethe_crypto::simd::{level, Level};
    std::env::set_var("LETHE_SIMD", "portable");
    // Every CPU runs the portable path: anything else here is a silent fallback.
    assert_eq!(level(), Level::Portable);
    batch_lanes_common::matches_the_reference_at_every_hop();
    batch_lanes_common::does_not_allocate();
    println!("ran on symmetric path: portable");
}

//! Batches whose packets fill the multi-buffer lanes (equal payload lengths, one route):
//! every hop of a 4-hop route processed batch-wise equals `sphinx-packet` packet by packet
//! and Lethe's serial processing, bad packets in the middle of lane runs included, for batch
//! sizes that are not multiples of the lane counts; and no allocation.
//! (Best SIMD level of this CPU; `sphinx_batch_lanes_{avx2,portable}` force the others.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod batch_lanes_common;
mod counting_alloc;
mod sphinx_common;

#[test]
fn lane_filling_batches_match_the_reference_at_every_hop_and_do_not_allocate() {
    batch_lanes_common::matches_the_reference_at_every_hop();
    batch_lanes_common::does_not_allocate();
    println!("symmetric path: {}", lethe_crypto::simd::path_name());
}

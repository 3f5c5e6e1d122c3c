//! `replay-probe`: the cost of one replay check against a filter sized like a busy node's
//! (50M items at 1e-5, ~485 MiB; a day at 10k packets/s would be ~17x that), checked one tag
//! at a time and in batches of 64 prefetched first (what the engine does since the Sphinx
//! batch announces its tags before checking them). Alternating rounds; prints one JSON line.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::Instant;

use lethe_engine::replay::{ReplayFilter, ReplayParams, ReplayTag};

const ITEMS: u64 = 50_000_000;
const BATCH: usize = 64;
const ROUNDS: usize = 20_000;
/// Tags inserted before measuring, so every page of the filter is resident and partly full.
const WARM_TAGS: usize = 2_000_000;

fn main() {
    let params = ReplayParams::for_items(ITEMS, 1e-5, 1).unwrap();
    let filter = ReplayFilter::new(1, params);
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut tag = move || -> ReplayTag {
        let mut tag = [0u8; 32];
        for chunk in tag.chunks_exact_mut(8) {
            // SplitMix64: uniform tags, as HKDF outputs are.
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            chunk.copy_from_slice(&(z ^ (z >> 31)).to_le_bytes());
        }
        tag
    };
    for _ in 0..WARM_TAGS {
        filter.check_and_insert(&tag());
    }
    let mut tags = vec![[0u8; 32]; BATCH];
    let (mut single_s, mut prefetched_s) = (0.0, 0.0);
    for round in 0..ROUNDS {
        tags.iter_mut().for_each(|t| *t = tag());
        let start = Instant::now();
        if round % 2 == 0 {
            for t in &tags {
                black_box(filter.check_and_insert(t));
            }
            single_s += start.elapsed().as_secs_f64();
        } else {
            for t in &tags {
                filter.prefetch(t);
            }
            for t in &tags {
                black_box(filter.check_and_insert(t));
            }
            prefetched_s += start.elapsed().as_secs_f64();
        }
    }
    let ns = |s: f64| s * 1e9 / ((ROUNDS / 2) * BATCH) as f64;
    println!(
        "{{\"filter_mib\":{},\"check_ns\":{:.0},\"check_prefetched_batch_ns\":{:.0},\"batch\":{BATCH}}}",
        (params.block_count * u64::from(params.block_words) * 8) >> 20,
        ns(single_s),
        ns(prefetched_s)
    );
}

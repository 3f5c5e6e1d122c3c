//! Zero heap allocations per packet through the core in steady state: ingress copy, batch
//! Sphinx processing, replay check, timer wheel, actions and release. A counting global
//! allocator (per thread, so the harness's threads do not interfere) proves it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../../crypto/tests/counting_alloc/mod.rs"]
mod counting_alloc;

use counting_alloc::allocations;

mod core_common;

use core_common::*;
use lethe_crypto::framing::KeyRotation;
use lethe_engine::core::Action;

#[test]
fn steady_state_does_not_allocate_per_packet() {
    let mut r = rng(42);
    let (this, next) = (secret(&mut r), secret(&mut r));
    let route = [(public(&this), 1), (public(&next), 2)];
    let packets: Vec<Vec<u8>> = (0..300)
        .map(|i| packet(&mut r, &route, &[(i % 7) * 1_000_000, 0]))
        .collect();
    let mut bad = packets[0].clone();
    bad[60] ^= 0xff;
    let mut core = core_with(config(), one_key(this, 2), &[2]);
    let mut now_us = 0u64;
    let mut forwarded = 0u32;
    let mut run = |core: &mut lethe_engine::core::Core, batch: &[Vec<u8>], now_us: &mut u64| {
        for bytes in batch {
            let _ = core.handle_packet(*now_us, KeyRotation::Unknown, bytes);
            *now_us += 10;
        }
        let _ = core.handle_packet(*now_us, KeyRotation::Unknown, &bad);
        let _ = core.handle_packet(*now_us, KeyRotation::Unknown, &batch[0]); // replay
        core.flush_batch(*now_us);
        *now_us += 10_000_000; // every delay is due
                               // Each call fires a bounded number; `poll_timeout` says when more are due.
        for _ in 0..1_000 {
            core.handle_timeout(*now_us);
            while let Some(action) = core.poll_action() {
                if let Action::Forward { buffer, .. } = action {
                    assert_eq!(core.packet(&buffer).len(), batch[0].len());
                    forwarded += 1;
                    core.release(buffer);
                }
            }
            if core.poll_timeout().is_none_or(|t| t > *now_us) {
                break;
            }
        }
    };
    run(&mut core, &packets[..50], &mut now_us); // warm-up: lazily initialised statics
    let before = allocations();
    run(&mut core, &packets[50..], &mut now_us);
    let after = allocations();
    assert_eq!(forwarded, 300);
    assert_eq!(after - before, 0, "allocations in steady state");
    assert_eq!(core.buffers_in_use(), 0);
}

/// The decoded-hop entry (the simulator's cost model) allocates nothing per packet either.
#[test]
fn decoded_hops_do_not_allocate_per_packet() {
    use lethe_crypto::framing::PacketSize;
    use lethe_crypto::sphinx::address;
    use lethe_engine::core::DecodedHop;
    let mut r = rng(43);
    let mut core = core_with(config(), one_key(secret(&mut r), 2), &[2]);
    let bytes = vec![0u8; PacketSize::Regular.packet_len()];
    let next_hop = address::encode(&addr(2));
    // Replay tags as Sphinx's are: uniform bytes (the filter takes its bit positions from them).
    let tags: Vec<[u8; 32]> = (0..350)
        .map(|_| {
            let mut tag = [0u8; 32];
            rand_core::Rng::fill_bytes(&mut r, &mut tag);
            tag
        })
        .collect();
    let mut forwarded = 0u32;
    let mut run = |core: &mut lethe_engine::core::Core, from: u32, to: u32| {
        let mut now_us = u64::from(from) * 1_000;
        for i in from..to {
            // 0..50 in the warm-up, 50..350 after: each tag once.
            let tag = tags[if i >= 50_000 { i - 50_000 + 50 } else { i } as usize];
            let hop = DecodedHop::Forward {
                next_hop,
                delay_ns: u64::from(i % 7) * 100_000,
            };
            let _ = core.handle_decoded(now_us, &bytes, hop, &tag, u64::from(i));
            let _ = core.handle_decoded(now_us, &bytes, hop, &tag, 0); // replay
            now_us += 1_000;
            core.handle_timeout(now_us);
            while let Some(action) = core.poll_action() {
                if let Action::Forward { buffer, .. } = action {
                    forwarded += 1;
                    core.release(buffer);
                }
            }
        }
        now_us += 10_000_000;
        for _ in 0..1_000 {
            core.handle_timeout(now_us);
            while let Some(action) = core.poll_action() {
                if let Action::Forward { buffer, .. } = action {
                    forwarded += 1;
                    core.release(buffer);
                }
            }
            if core.poll_timeout().is_none_or(|t| t > now_us) {
                break;
            }
        }
    };
    run(&mut core, 0, 50); // warm-up
    let before = allocations();
    run(&mut core, 50_000, 50_300);
    let after = allocations();
    assert_eq!(forwarded, 350);
    assert_eq!(after - before, 0, "allocations in steady state");
    assert_eq!(core.buffers_in_use(), 0);
}

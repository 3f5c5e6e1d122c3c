//! The I/O-free core under simulated time: delays, replay, malformed input, final hop, key
//! rotation, overload, clamping and shutdown.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod core_common;

use core_common::*;
use lethe_crypto::framing::{KeyRotation, PacketSize};
use lethe_crypto::sphinx::{self, Hop, Packet};
use lethe_engine::core::{Action, Admitted, BatchRan, Core, NodeKeys, SphinxKey};
use lethe_engine::metrics::{CoreMetrics, DropReason, Stage};
use lethe_engine::BufId;

fn drain(core: &mut Core) -> Vec<Action> {
    let mut out = Vec::new();
    for _ in 0..10_000 {
        match core.poll_action() {
            Some(action) => out.push(action),
            None => return out,
        }
    }
    panic!("action queue did not drain");
}

fn forwards(core: &mut Core) -> Vec<(std::net::SocketAddr, u64, Vec<u8>)> {
    forwards_with_rotation(core)
        .into_iter()
        .map(|(hop, at_us, bytes, _)| (hop, at_us, bytes))
        .collect()
}

fn forwards_with_rotation(
    core: &mut Core,
) -> Vec<(std::net::SocketAddr, u64, Vec<u8>, KeyRotation)> {
    let mut out = Vec::new();
    for action in drain(core) {
        if let Action::Forward {
            next_hop,
            at_us,
            buffer,
            rotation,
        } = action
        {
            out.push((next_hop, at_us, core.packet(&buffer).to_vec(), rotation));
            core.release(buffer);
        }
    }
    out
}

/// `handle_packet`, asserting the packet was not dropped.
fn admit(core: &mut Core, now_us: u64, rotation: KeyRotation, bytes: &[u8]) -> Admitted {
    let admitted = core.handle_packet(now_us, rotation, bytes);
    assert!(!matches!(admitted, Admitted::Dropped(_)), "{admitted:?}");
    admitted
}

fn dropped(core: &Core, reason: DropReason) -> u64 {
    core.metrics().dropped_count(reason)
}

#[test]
fn forwards_after_exact_delay_and_next_hop_can_process() {
    let mut r = rng(1);
    let (this, next) = (secret(&mut r), secret(&mut r));
    let bytes = packet(
        &mut r,
        &[(public(&this), 1), (public(&next), 2)],
        &[5_000_000, 0],
    );
    let mut core = core_with(config(), one_key(this, 2), &[2]);
    admit(&mut core, 0, KeyRotation::Unknown, &bytes);
    assert_eq!(core.batched_count(), 1);
    assert_eq!(core.poll_timeout(), Some(100)); // batch flush
    core.handle_timeout(100);
    assert!(forwards(&mut core).is_empty());
    assert_eq!(core.delayed_count(), 1);
    // The delay runs from arrival (t = 0). `poll_timeout` may wake early (a coarse wheel
    // slot's start) but never late; follow it and check nothing leaves before 5000 µs.
    let mut out = Vec::new();
    for _ in 0..100 {
        let wake = core.poll_timeout().unwrap();
        assert!(wake <= 5_000);
        core.handle_timeout(wake);
        out = forwards(&mut core);
        if !out.is_empty() {
            assert_eq!(wake, 5_000);
            break;
        }
    }
    assert_eq!(out.len(), 1);
    let (hop, at_us, mut forwarded) = out.into_iter().next().unwrap();
    assert_eq!(hop, addr(2));
    assert_eq!(at_us, 5_000);
    assert_eq!(forwarded.len(), bytes.len());
    let processed = sphinx::process(&mut Packet::new_checked(&mut forwarded[..]).unwrap(), &next);
    assert!(
        matches!(processed.unwrap().hop, Hop::Final { destination, .. } if destination == [7; 32])
    );
    assert_eq!(core.buffers_in_use(), 0);
    assert_eq!(CoreMetrics::get(&core.metrics().packets_forwarded), 1);
}

#[test]
fn full_batch_is_processed_at_once_and_zero_delay_leaves_next_tick() {
    let mut r = rng(2);
    let (this, next) = (secret(&mut r), secret(&mut r));
    let mut core = core_with(config(), one_key(this.clone(), 2), &[2]);
    for i in 0..4u64 {
        let bytes = packet(&mut r, &[(public(&this), 1), (public(&next), 2)], &[0, 0]);
        let admitted = admit(&mut core, i * 10, KeyRotation::Unknown, &bytes);
        // The core says what happened: the fourth push filled the batch, which ran.
        let expected = match i {
            3 => Admitted::BatchRan(BatchRan { packets: 4 }),
            _ => Admitted::Queued,
        };
        assert_eq!(admitted, expected);
    }
    assert_eq!(core.batched_count(), 0);
    assert_eq!(forwards(&mut core).len(), 4);
    assert_eq!(core.metrics().batch_packets.count(), 1);
}

#[test]
fn replay_is_refused_across_and_within_batches() {
    let mut r = rng(3);
    let (this, next) = (secret(&mut r), secret(&mut r));
    let bytes = packet(&mut r, &[(public(&this), 1), (public(&next), 2)], &[0, 0]);
    let mut core = core_with(config(), one_key(this, 2), &[2]);
    admit(&mut core, 0, KeyRotation::Unknown, &bytes);
    core.flush_batch(0);
    assert_eq!(forwards(&mut core).len(), 1);
    // Later batch.
    admit(&mut core, 10, KeyRotation::Unknown, &bytes);
    assert_eq!(core.flush_batch(10), Some(BatchRan { packets: 1 }));
    // Dropped: counted under its reason, and no action (no buffer to hand back).
    assert_eq!(drain(&mut core), vec![]);
    assert_eq!(dropped(&core, DropReason::Replayed), 1);
    // Same batch, twice more.
    admit(&mut core, 20, KeyRotation::Unknown, &bytes);
    admit(&mut core, 20, KeyRotation::Unknown, &bytes);
    core.flush_batch(20);
    assert!(forwards(&mut core).is_empty());
    assert_eq!(dropped(&core, DropReason::Replayed), 3);
    assert_eq!(core.buffers_in_use(), 0);
}

#[test]
fn malformed_packets_are_counted_while_the_batch_goes_through() {
    let mut r = rng(4);
    let (this, next) = (secret(&mut r), secret(&mut r));
    let good = |r: &mut _| packet(r, &[(public(&this), 1), (public(&next), 2)], &[0, 0]);
    let (a, b) = (good(&mut r), good(&mut r));
    let mut forged = a.clone();
    forged[100] ^= 1; // inside beta: the MAC fails
    let mut core = core_with(config(), one_key(this.clone(), 2), &[2]);
    admit(&mut core, 0, KeyRotation::Unknown, &forged);
    admit(&mut core, 0, KeyRotation::Unknown, &a);
    // Truncated: no Sphinx size has that length.
    assert_eq!(
        core.handle_packet(0, KeyRotation::Unknown, &[0u8; 10]),
        Admitted::Dropped(DropReason::Malformed)
    );
    admit(&mut core, 0, KeyRotation::Unknown, &b);
    core.flush_batch(0); // three packets batched: the batch (of four) is not full
    let out = forwards(&mut core);
    assert_eq!(out.len(), 2);
    assert_eq!(dropped(&core, DropReason::Malformed), 2);
    // The forged copy did not poison the filter: the genuine packet was fresh.
    assert_eq!(dropped(&core, DropReason::Replayed), 0);
    core.handle_skipped_frame();
    assert_eq!(dropped(&core, DropReason::Malformed), 3);
    let oversize = vec![0u8; 4_000];
    assert_eq!(
        core.handle_packet(0, KeyRotation::Unknown, &oversize),
        Admitted::Dropped(DropReason::Malformed)
    );
    // A Nym size this core does not accept: its own reason, not malformed.
    let ext8 = vec![0u8; PacketSize::Extended8.packet_len()];
    assert_eq!(
        core.handle_packet(0, KeyRotation::Unknown, &ext8),
        Admitted::Dropped(DropReason::PacketSizeDisabled)
    );
    assert_eq!(dropped(&core, DropReason::Malformed), 4);
    assert_eq!(dropped(&core, DropReason::PacketSizeDisabled), 1);
    assert_eq!(core.buffers_in_use(), 0);
}

#[test]
fn final_hop_is_delivered_with_its_payload() {
    let mut r = rng(5);
    let this = secret(&mut r);
    let bytes = packet(&mut r, &[(public(&this), 1)], &[0]);
    let mut core = core_with(config(), one_key(this, 2), &[2]);
    admit(&mut core, 0, KeyRotation::Unknown, &bytes);
    core.flush_batch(0);
    let actions = drain(&mut core);
    assert_eq!(actions.len(), 1);
    let Some(Action::Deliver {
        destination,
        identifier,
        buffer,
    }) = actions.into_iter().next()
    else {
        panic!("expected a delivery");
    };
    assert_eq!(destination, [7; 32]);
    assert_eq!(identifier, [9; 16]);
    let payload = &core.packet(&buffer)[sphinx::constants::HEADER_SIZE..];
    assert_eq!(sphinx::recover_plaintext(payload).unwrap().len(), 4);
    core.release(buffer);
    assert_eq!(CoreMetrics::get(&core.metrics().packets_delivered), 1);
}

fn rotation_keys(r: &mut rand_chacha::ChaCha20Rng) -> (NodeKeys, [u8; 32], [u8; 32]) {
    let (even, odd) = (secret(r), secret(r));
    let (even_pub, odd_pub) = (public(&even), public(&odd));
    let keys = NodeKeys::new(SphinxKey::new(2, even), Some(SphinxKey::new(1, odd)));
    (keys, even_pub, odd_pub)
}

#[test]
fn key_rotation_byte_picks_the_key_and_v7_tries_both() {
    let mut r = rng(6);
    let (keys, even_pub, odd_pub) = rotation_keys(&mut r);
    let next = public(&secret(&mut r));
    let mut core = core_with(config(), keys, &[1, 2]);
    let for_odd = |r: &mut _| packet(r, &[(odd_pub, 1), (next, 2)], &[0, 0]);
    let for_even = |r: &mut _| packet(r, &[(even_pub, 1), (next, 2)], &[0, 0]);
    // (packet, frame byte, leaves with): a forwarded packet names the rotation of the key that
    // opened it (its route was built with that rotation's keys), whatever byte it came with.
    let cases = [
        // primary fails, secondary verifies
        (
            for_odd(&mut r),
            KeyRotation::Unknown,
            Some(KeyRotation::Odd),
        ),
        (for_odd(&mut r), KeyRotation::Odd, Some(KeyRotation::Odd)),
        (for_odd(&mut r), KeyRotation::Even, None), // the even key's MAC fails
        (for_even(&mut r), KeyRotation::Even, Some(KeyRotation::Even)),
        (
            for_even(&mut r),
            KeyRotation::Unknown,
            Some(KeyRotation::Even),
        ),
    ];
    for (index, (bytes, rotation, leaves)) in cases.iter().enumerate() {
        let now_us = index as u64 * 10; // tick-aligned, so zero delays fire at once
        admit(&mut core, now_us, *rotation, bytes);
        core.flush_batch(now_us);
        let out: Vec<KeyRotation> = forwards_with_rotation(&mut core)
            .into_iter()
            .map(|(_, _, _, rotation)| rotation)
            .collect();
        assert_eq!(
            out,
            leaves.iter().copied().collect::<Vec<_>>(),
            "case {index}"
        );
    }
    assert_eq!(dropped(&core, DropReason::Malformed), 1);
    // The replay filter is per rotation: the odd key's packet replayed under v8 is refused.
    admit(&mut core, 100, KeyRotation::Odd, &cases[0].0);
    core.flush_batch(100);
    assert_eq!(dropped(&core, DropReason::Replayed), 1);
}

#[test]
fn unknown_rotation_or_missing_filter_is_unknown_key() {
    let mut r = rng(7);
    let this = secret(&mut r);
    let this_pub = public(&this);
    let next = public(&secret(&mut r));
    // Only an even key: an odd rotation byte names no key.
    let mut core = core_with(config(), one_key(this.clone(), 2), &[2]);
    let bytes = packet(&mut r, &[(this_pub, 1), (next, 2)], &[0, 0]);
    admit(&mut core, 0, KeyRotation::Odd, &bytes);
    core.flush_batch(0);
    assert_eq!(dropped(&core, DropReason::UnknownKey), 1);
    // A key without a replay filter is refused rather than processed unprotected.
    let mut core = core_with(config(), one_key(this, 2), &[4]);
    admit(&mut core, 0, KeyRotation::Unknown, &bytes);
    core.flush_batch(0);
    assert_eq!(dropped(&core, DropReason::UnknownKey), 1);
    assert_eq!(core.buffers_in_use(), 0);
}

#[test]
fn overload_is_dropped_and_counted() {
    let mut r = rng(8);
    let (this, next) = (secret(&mut r), secret(&mut r));
    let mut small = config();
    small.pool_buffers_count = 6;
    small.timer_entries_max = 3;
    let mut core = core_with(small, one_key(this.clone(), 2), &[2]);
    let mut held: Vec<BufId> = Vec::new();
    for i in 0..8u64 {
        let bytes = packet(
            &mut r,
            &[(public(&this), 1), (public(&next), 2)],
            &[1_000_000, 0],
        );
        let _ = core.handle_packet(i, KeyRotation::Unknown, &bytes);
    }
    core.flush_batch(10);
    // 6 buffers: 2 refused at ingress; wheel of 3: 3 more refused after processing.
    assert_eq!(dropped(&core, DropReason::Overload), 2 + 3);
    assert_eq!(core.delayed_count(), 3);
    core.handle_timeout(1_000_010);
    for action in drain(&mut core) {
        if let Action::Forward { buffer, .. } = action {
            held.push(buffer);
        }
    }
    assert_eq!(held.len(), 3);
    for id in held {
        core.release(id);
    }
    assert_eq!(core.buffers_in_use(), 0);
}

#[test]
fn excessive_delay_is_clamped_and_counted() {
    let mut r = rng(9);
    let (this, next) = (secret(&mut r), secret(&mut r));
    let bytes = packet(
        &mut r,
        &[(public(&this), 1), (public(&next), 2)],
        &[60_000_000_000, 0],
    );
    let mut core = core_with(config(), one_key(this, 2), &[2]);
    admit(&mut core, 0, KeyRotation::Unknown, &bytes);
    core.flush_batch(0);
    core.handle_timeout(9_999_999);
    assert!(forwards(&mut core).is_empty());
    core.handle_timeout(10_000_000);
    assert_eq!(forwards(&mut core).len(), 1);
    assert_eq!(CoreMetrics::get(&core.metrics().packets_delay_clamped), 1);
}

#[test]
fn shutdown_abandons_pending_packets() {
    let mut r = rng(10);
    let (this, next) = (secret(&mut r), secret(&mut r));
    let mut core = core_with(config(), one_key(this.clone(), 2), &[2]);
    for i in 0..3u64 {
        let bytes = packet(
            &mut r,
            &[(public(&this), 1), (public(&next), 2)],
            &[1_000_000, 0],
        );
        admit(&mut core, i, KeyRotation::Unknown, &bytes);
        if i == 1 {
            core.flush_batch(i);
        }
    }
    assert_eq!(core.delayed_count(), 2);
    assert_eq!(core.batched_count(), 1);
    assert_eq!(core.abandon_pending(), 3);
    assert_eq!(dropped(&core, DropReason::Shutdown), 3);
    assert_eq!(core.buffers_in_use(), 0);
}

#[test]
fn set_keys_rotates_and_retires_the_old_key() {
    let mut r = rng(13);
    let (old, new) = (secret(&mut r), secret(&mut r));
    let (old_pub, new_pub) = (public(&old), public(&new));
    let next = public(&secret(&mut r));
    let mut core = core_with(config(), one_key(old.clone(), 1), &[1]);
    let for_old = packet(&mut r, &[(old_pub, 1), (next, 2)], &[0, 0]);
    let for_new = packet(&mut r, &[(new_pub, 1), (next, 2)], &[0, 0]);
    // Overlap: new key primary (rotation 2), old key secondary (rotation 1), both filters live.
    let overlap = NodeKeys::new(SphinxKey::new(2, new.clone()), Some(SphinxKey::new(1, old)));
    core.set_keys(overlap, filters(&[1, 2]));
    for (index, bytes) in [&for_old, &for_new].into_iter().enumerate() {
        let now_us = index as u64 * 10;
        admit(&mut core, now_us, KeyRotation::Unknown, bytes);
        core.flush_batch(now_us);
        assert_eq!(
            forwards(&mut core).len(),
            1,
            "packet {index} during the overlap"
        );
    }
    // After the overlap the old key is gone: its packets no longer verify.
    core.set_keys(one_key(new, 2), filters(&[2]));
    let late = packet(&mut r, &[(old_pub, 1), (next, 2)], &[0, 0]);
    admit(&mut core, 100, KeyRotation::Unknown, &late);
    core.flush_batch(100);
    assert!(forwards(&mut core).is_empty());
    assert_eq!(dropped(&core, DropReason::Malformed), 1);
}

#[test]
fn zero_delay_leaves_with_its_batch_between_ticks() {
    let mut r = rng(11);
    let (this, next) = (secret(&mut r), secret(&mut r));
    let bytes = packet(&mut r, &[(public(&this), 1), (public(&next), 2)], &[0, 0]);
    // 1 ms ticks and an arrival mid-tick: a due deadline must not wait for the next tick.
    let config = lethe_engine::EngineConfig {
        timer_tick_us: 1_000,
        ..config()
    };
    let mut core = core_with(config, one_key(this, 2), &[2]);
    admit(&mut core, 1_234, KeyRotation::Unknown, &bytes);
    core.flush_batch(1_250);
    let sent = forwards(&mut core);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].1, 1_234); // its deadline: arrival + 0
    assert_eq!(core.delayed_count(), 0);
    assert_eq!(core.poll_timeout(), None);
}

#[test]
fn drained_flush_releases_whole_lane_groups_and_the_rest_at_its_deadline() {
    let mut r = rng(12);
    let (this, next) = (secret(&mut r), secret(&mut r));
    let config = lethe_engine::EngineConfig {
        batch_packets_max: 16,
        batch_align_packets: 4,
        ..config()
    };
    let mut core = core_with(config, one_key(this.clone(), 2), &[2]);
    let mut sent_bytes = Vec::new();
    for i in 0..6u64 {
        let bytes = packet(&mut r, &[(public(&this), 1), (public(&next), 2)], &[0, 0]);
        admit(&mut core, 1_000 + i, KeyRotation::Unknown, &bytes);
        sent_bytes.push(bytes);
    }
    // Six pending, groups of four: the four oldest go, the two newest wait.
    core.flush_drained(1_010);
    let first = forwards(&mut core);
    assert_eq!(first.len(), 4);
    assert_eq!(core.batched_count(), 2);
    assert_eq!(core.metrics().batch_packets.count(), 1);
    // Their flush clock runs from the older kept arrival (t = 1_004), flush_us = 100.
    assert_eq!(core.poll_timeout(), Some(1_104));
    core.handle_timeout(1_103);
    assert!(forwards(&mut core).is_empty());
    core.handle_timeout(1_104);
    let rest = forwards(&mut core);
    assert_eq!(rest.len(), 2);
    assert_eq!(core.batched_count(), 0);
    // Order kept: the forwarded packets leave in arrival order (their delays are all zero).
    let at: Vec<u64> = first.iter().chain(rest.iter()).map(|f| f.1).collect();
    assert_eq!(at, vec![1_000, 1_001, 1_002, 1_003, 1_004, 1_005]);
    // Fewer than a group: all of it at once (light load waits for nothing).
    for i in 0..3u64 {
        let bytes = packet(&mut r, &[(public(&this), 1), (public(&next), 2)], &[0, 0]);
        admit(&mut core, 2_000 + i, KeyRotation::Unknown, &bytes);
    }
    core.flush_drained(2_003);
    assert_eq!(forwards(&mut core).len(), 3);
    assert_eq!(core.batched_count(), 0);
    assert_eq!(core.buffers_in_use(), 0);
    assert_eq!(
        CoreMetrics::get(&core.metrics().packets_forwarded),
        9,
        "no packet lost"
    );
}

#[test]
fn alignment_beyond_the_batch_is_refused() {
    let config = lethe_engine::EngineConfig {
        batch_packets_max: 8,
        batch_align_packets: 9,
        ..config()
    };
    assert!(config.validate().is_err());
}

/// What every batch of a [`Fed`] core costs, as its runtime would report it.
const BATCH_NS: u64 = 100_000;

/// A core with lane groups of 4 whose batches all take 100 µs, fed one packet per drained
/// read, as the runtime does under a paced load.
struct Fed {
    core: Core,
    r: rand_chacha::ChaCha20Rng,
    this: x25519_dalek::StaticSecret,
    next: x25519_dalek::StaticSecret,
}

impl Fed {
    fn new(seed: u64, flush_us: u64, hold_us: u64) -> Fed {
        let mut r = rng(seed);
        let (this, next) = (secret(&mut r), secret(&mut r));
        let config = lethe_engine::EngineConfig {
            batch_packets_max: 16,
            batch_align_packets: 4,
            batch_flush_us: flush_us,
            batch_hold_us: hold_us,
            ..config()
        };
        let core = core_with(config, one_key(this.clone(), 2), &[2]);
        Fed {
            core,
            r,
            this,
            next,
        }
    }

    /// One packet arrives at `t_us` and the socket is drained; returns the packets forwarded.
    fn arrive(&mut self, t_us: u64) -> usize {
        let route = [(public(&self.this), 1), (public(&self.next), 2)];
        let bytes = packet(&mut self.r, &route, &[0, 0]);
        if let Admitted::BatchRan(ran) = admit(&mut self.core, t_us, KeyRotation::Unknown, &bytes) {
            self.core.record_batch_cost(ran, BATCH_NS);
        }
        let ran = self.core.flush_drained(t_us);
        self.ran(ran);
        forwards(&mut self.core).len()
    }

    /// The core's timeout at `t_us`, its batch (if one ran) reported as the runtime does.
    fn timeout(&mut self, t_us: u64) {
        let ran = self.core.handle_timeout(t_us);
        self.ran(ran);
    }

    /// Reports a batch's cost as the runtime does: every batch takes [`BATCH_NS`].
    fn ran(&mut self, ran: Option<BatchRan>) {
        if let Some(ran) = ran {
            self.core.record_batch_cost(ran, BATCH_NS);
        }
    }

    /// `count` arrivals `gap_us` apart after `t_us`, then whatever is left at its deadline;
    /// returns the time it ends (last arrival or that deadline) and the packets forwarded.
    fn stream(&mut self, mut t_us: u64, gap_us: u64, count: usize) -> (u64, usize) {
        let mut forwarded = 0;
        for _ in 0..count {
            t_us += gap_us;
            forwarded += self.arrive(t_us);
        }
        if let Some(due) = self.core.poll_timeout() {
            self.timeout(due);
            forwarded += forwards(&mut self.core).len();
            t_us = t_us.max(due);
        }
        assert_eq!(self.core.batched_count(), 0);
        (t_us, forwarded)
    }
}

#[test]
fn a_partial_lane_group_is_held_only_while_the_arrival_rate_fills_it() {
    let mut fed = Fed::new(13, 100, 100);
    // A fresh core assumes light load: a lone packet goes at once.
    assert_eq!(fed.arrive(0), 1);
    // A steady stream, 10 µs apart: singles until the rate shows, then whole groups of 4.
    let (t, forwarded) = fed.stream(0, 10, 96);
    assert_eq!(forwarded, 96);
    let batches_before = fed.core.metrics().batch_packets.count();
    let (t, forwarded) = fed.stream(t, 10, 64);
    assert_eq!(forwarded, 64);
    let batches = fed.core.metrics().batch_packets.count() - batches_before;
    assert!(batches <= 17, "{batches}");
    assert!(
        fed.core.arrival_gap_us() <= 11,
        "{}",
        fed.core.arrival_gap_us()
    );
    assert_eq!(fed.core.partial_batch_us(), 100);
    // A fresh group: held until it is full, never past the hold deadline.
    let t0 = t + 10;
    for i in 0..3 {
        assert_eq!(fed.arrive(t0 + 10 * i), 0, "held for its group");
        assert_eq!(fed.core.poll_timeout(), Some(t0 + 100));
    }
    assert_eq!(fed.arrive(t0 + 30), 4, "the full group goes");
    // The rest of a group that does not come: released at the hold deadline.
    let t1 = t0 + 40;
    assert_eq!(fed.arrive(t1), 0);
    fed.timeout(t1 + 99);
    assert!(forwards(&mut fed.core).is_empty());
    fed.timeout(t1 + 100);
    assert_eq!(forwards(&mut fed.core).len(), 1);
    // After a pause the rate says light load: nothing waits.
    assert_eq!(fed.arrive(t1 + 5_000), 1);
    assert_eq!(fed.core.buffers_in_use(), 0);
    assert_eq!(
        CoreMetrics::get(&fed.core.metrics().packets_forwarded),
        1 + 96 + 64 + 4 + 1 + 1
    );
}

#[test]
fn a_partial_lane_group_that_keeps_up_is_not_held() {
    let mut fed = Fed::new(14, 1_000, 1_000);
    // Arrivals 40 µs apart until the averages settle, ending as a batch goes (no pause).
    let mut t = 0;
    let mut forwarded = 0;
    for i in 0..200 {
        t += 40;
        forwarded += fed.arrive(t);
        if i >= 160 && fed.core.batched_count() == 0 {
            break;
        }
    }
    assert_eq!(fed.core.batched_count(), 0);
    assert_eq!(forwarded as u64, t / 40);
    assert!(
        (39..=41).contains(&fed.core.arrival_gap_us()),
        "{}",
        fed.core.arrival_gap_us()
    );
    assert_eq!(fed.core.partial_batch_us(), 100);
    // One or two pending came faster than a 100 µs batch would clear them: held (the group
    // would fill in time). Three took 120 µs: a batch of three keeps up, so it goes without
    // waiting for the fourth.
    assert_eq!(fed.arrive(t + 40), 0, "held");
    assert_eq!(fed.arrive(t + 80), 0, "held");
    assert_eq!(fed.arrive(t + 120), 3, "kept up: not held");
    assert_eq!(fed.core.batched_count(), 0);
    assert_eq!(fed.core.buffers_in_use(), 0);
}

#[test]
fn crypto_per_packet_keeps_the_fraction_of_a_microsecond() {
    // Batches of 4 taking 31.6 µs: 7.9 µs a packet. Rounding each batch down recorded 7 µs
    // (31 / 4): 11 % under; the carried remainder makes the sum exact to within 1 µs.
    let mut r = rng(41);
    let (this, next) = (secret(&mut r), secret(&mut r));
    let mut core = core_with(config(), one_key(this.clone(), 2), &[2]);
    let route = [(public(&this), 1), (public(&next), 2)];
    for batch in 0..10u64 {
        let mut ran = None;
        for _ in 0..4 {
            let bytes = packet(&mut r, &route, &[0, 0]);
            if let Admitted::BatchRan(batch) =
                admit(&mut core, batch * 1_000, KeyRotation::Unknown, &bytes)
            {
                ran = Some(batch);
            }
        }
        // A full batch of 4 runs at once; the runtime reports it took 31.6 µs.
        assert_eq!(ran, Some(BatchRan { packets: 4 }));
        core.record_batch_cost(BatchRan { packets: 4 }, 31_600);
        forwards(&mut core);
    }
    let crypto = core.metrics().stage(Stage::CryptoPerPacket);
    assert_eq!(crypto.count(), 10);
    assert_eq!(crypto.sum(), 79, "10 batches × 7.9 µs, not 10 × 7");
}

#[test]
fn delay_lateness_ends_at_the_hand_off_after_the_crypto() {
    // A zero-delay packet is due at its arrival (t = 0). Its batch runs at the flush (t = 100),
    // with that clock reading; the runtime hands it off after the batch's crypto, at t = 800.
    // Lateness is 800 µs, not the 100 µs the pre-crypto reading says.
    let mut r = rng(42);
    let (this, next) = (secret(&mut r), secret(&mut r));
    let mut core = core_with(config(), one_key(this.clone(), 2), &[2]);
    let bytes = packet(&mut r, &[(public(&this), 1), (public(&next), 2)], &[0, 0]);
    admit(&mut core, 0, KeyRotation::Unknown, &bytes);
    core.handle_timeout(100);
    let mut handed = 0;
    for action in drain(&mut core) {
        if let Action::Forward { buffer, at_us, .. } = action {
            assert_eq!(at_us, 0);
            core.record_hand_off(&buffer, at_us, 800);
            core.release(buffer);
            handed += 1;
        }
    }
    assert_eq!(handed, 1);
    let lateness = core.metrics().stage(Stage::DelayLateness);
    assert_eq!((lateness.count(), lateness.sum()), (1, 800));
    let residence = core.metrics().stage(Stage::ProcessingResidence);
    assert_eq!((residence.count(), residence.sum()), (1, 800));
}

/// The decoded-hop entry (the simulator's cost model) shares the Sphinx path after the
/// unwrap: the delay in the wheel from arrival, the replay filter on the tag, the final hop,
/// the size check, the batch accounting.
#[test]
fn decoded_hops_delay_replay_and_deliver_like_sphinx_ones() {
    use lethe_crypto::sphinx::address;
    use lethe_engine::core::DecodedHop;
    let mut r = rng(9);
    let mut core = core_with(config(), one_key(secret(&mut r), 2), &[2]);
    let bytes = vec![7u8; PacketSize::Regular.packet_len()];
    let forward = DecodedHop::Forward {
        next_hop: address::encode(&addr(2)),
        delay_ns: 5_000_000,
    };
    let mut tags = [[0u8; 32]; 3];
    for tag in &mut tags {
        rand_core::Rng::fill_bytes(&mut r, tag);
    }
    let tag = tags[0];
    let admitted = core.handle_decoded(10, &bytes, forward, &tag, 77);
    assert_eq!(admitted, Admitted::BatchRan(BatchRan { packets: 1 }));
    assert_eq!(core.delayed_count(), 1);
    assert!(forwards(&mut core).is_empty());
    // The same tag again is a replay, dropped as the Sphinx path drops one.
    core.handle_decoded(20, &bytes, forward, &tag, 78);
    assert_eq!(dropped(&core, DropReason::Replayed), 1);
    let mut out = Vec::new();
    for _ in 0..1_000 {
        let Some(due) = core.poll_timeout() else {
            break;
        };
        core.handle_timeout(due);
        out.extend(forwards(&mut core));
    }
    assert_eq!(out.len(), 1);
    let (next_hop, at_us, sent) = &out[0];
    assert_eq!(*next_hop, addr(2));
    assert_eq!(*at_us, 5_010);
    assert_eq!(sent, &bytes);
    // A final hop comes out at once as a delivery, with its buffer's tag.
    let final_hop = DecodedHop::Final {
        destination: [3; 32],
        identifier: [4; 16],
    };
    core.handle_decoded(6_000, &bytes, final_hop, &tags[1], 79);
    let actions = drain(&mut core);
    assert_eq!(actions.len(), 1);
    match &actions[0] {
        Action::Deliver {
            destination,
            identifier,
            buffer,
        } => {
            assert_eq!((*destination, *identifier), ([3; 32], [4; 16]));
            assert_eq!(core.tag(buffer), 79);
        }
        other => panic!("{other:?}"),
    }
    // A length no Sphinx size has is malformed here too.
    let short = core.handle_decoded(6_001, &bytes[..100], forward, &tags[2], 80);
    assert_eq!(short, Admitted::Dropped(DropReason::Malformed));
    assert_eq!(core.metrics().batch_packets.count(), 3);
}

//! Batched node processing: many packets, one node key set (or, through [`PacketBatch`], key
//! candidates and an admission check per packet: the node engine's seam), the two X25519
//! multiplications
//! of every packet done as two lane-parallel batches through the `dh` seam, and the
//! symmetric work done across the batch too (`crate::simd`).
//!
//! Per chunk of at most `capacity` packets:
//! 1. gather alphas → one `x25519_batch` with the node key → shared secrets;
//! 2. one multi-lane HKDF over all shared secrets ([`expand_many`]), then per packet the
//!    all-zero check and MAC; MAC failures retry in one batch with the secondary key; then
//!    the caller's replay check on the tag (replayed packets stop here, before the costly
//!    blinding, as Nym's partial unwrap does); admitted packets get their 360-byte routing
//!    keystream (AES-128-CTR, all admitted packets together), computed once for the
//!    flag/version peek and the unwrap;
//! 3. gather blinding factors + alphas of forward hops → second `x25519_batch`;
//! 4. per packet: routing information in place (as [`unwrap_header_in_place`], with the
//!    keystream of step 2);
//! 5. v259/v260 payload keys in one multi-lane HKDF ([`derive_payload_keys`]);
//! 6. payloads decrypted by [`lioness::decrypt_many`], runs of equal-length payloads
//!    sharing the multi-buffer BLAKE2b passes (8 lanes with AVX-512);
//! 7. `on_result` in packet order.
//!
//! Outcomes and bytes equal [`process_with_keys`](super::process_with_keys) packet by
//! packet, errors included; a bad packet never affects the others (failed packets take no
//! part in steps 4-6 and are left unchanged). Nothing is allocated after
//! [`BatchProcessor::new`]; secrets are wiped at the end of each chunk.
//!
//! Why the symmetric work is batched too: once X25519 runs 8 or 16 lanes at a time, the
//! per-packet HKDF, HMAC, Lioness and AES passes dominate a hop unless they run across the
//! batch as well; every packet of a batch hashes messages of the same shape, so the lanes stay
//! in lock step. Secrets and lane buffers are wiped with [`crate::simd::wipe`] (64-byte
//! volatile stores, far cheaper than byte-wise zeroing). The HMAC key states of the two
//! constant salts are compressed at compile time. Costs per component against the reference
//! crates, and their history: `bench/README.md`.
//!
//! [`expand_many`]: super::keys::expand_many
//! [`derive_payload_keys`]: super::keys::derive_payload_keys
//! [`unwrap_header_in_place`]: super::process::unwrap_header_in_place

use subtle::ConstantTimeEq;
use x25519_dalek::StaticSecret;
use zeroize::Zeroize;

use super::constants::{
    ALPHA_SIZE, EXPANDED_SECRET_SIZE, HEADER_SIZE, KEYSTREAM_SIZE, MAC_KEY_SIZE, MAC_SIZE,
    STREAM_KEY_SIZE, VERSION_SIZE,
};
use super::dh;
use super::error::SphinxError;
use super::keys::{derive_payload_keys, expand_many, ExpandedSecret, PayloadKey, PayloadKeySeed};
use super::packet::Packet;
use super::process::{
    check_dh_output, unwrap_header_in_place_with_stream, HopKind, KeyChoice, Processed,
};
use super::version::Version;
use crate::lioness;
use crate::simd::aes::ctr_keystreams;
use crate::simd::hkdf::{hmac_many, MANY_LANES};
use crate::simd::wipe as wipe_bytes;

/// One packet's result, as [`process_with_keys`](super::process_with_keys) returns it.
pub type ProcessResult = Result<(Processed, KeyChoice), SphinxError>;

/// The node's secret keys for a batch (borrowed): the current one and, during key rotation,
/// the previous/next one.
#[derive(Clone, Copy)]
pub struct NodeSecrets<'a> {
    pub primary: &'a StaticSecret,
    pub secondary: Option<&'a StaticSecret>,
}

/// A batch of packet buffers addressed by index, each with its own key candidates and a
/// caller-side admission (replay) check: what [`BatchProcessor::process_batch`] works on.
pub trait PacketBatch {
    /// Number of packets.
    fn count(&self) -> usize;
    fn packet(&self, index: usize) -> &[u8];
    fn packet_mut(&mut self, index: usize) -> &mut [u8];
    /// Calls `f` with the buffers at `indices` (distinct, increasing, at most
    /// [`lioness::LANES`]), in that order: once with all of them, or once per buffer.
    fn with_packets_mut(&mut self, indices: &[usize], f: &mut dyn FnMut(&mut [&mut [u8]]));
    /// The key to try for packet `index` first (`Primary`) or after a MAC failure
    /// (`Secondary`). No first key: [`SphinxError::UnknownKey`]; no second key: the MAC
    /// failure stands.
    fn key(&self, index: usize, choice: KeyChoice) -> Option<&StaticSecret>;
    /// Called in index order for each packet whose MAC verified under `choice`, before the
    /// packet is changed; `false` stops it as [`SphinxError::Replayed`], left unchanged.
    fn admit(&mut self, index: usize, choice: KeyChoice, replay_tag: &[u8; 32]) -> bool;
    /// Called for every packet [`admit`](Self::admit) will see, before the first `admit` of
    /// the batch: a chance to start fetching what the check reads (a replay filter much
    /// larger than the caches costs one memory miss per packet, overlapped this way).
    fn prepare_admit(&self, index: usize, choice: KeyChoice, replay_tag: &[u8; 32]) {
        let _ = (index, choice, replay_tag);
    }
}

/// A slice of packets sharing one key set, with a replay hook.
struct SliceBatch<'a, T, R> {
    packets: &'a mut [T],
    keys: NodeSecrets<'a>,
    is_replayed: R,
}

impl<T, R> PacketBatch for SliceBatch<'_, T, R>
where
    T: AsRef<[u8]> + AsMut<[u8]>,
    R: FnMut(&[u8; 32]) -> bool,
{
    fn count(&self) -> usize {
        self.packets.len()
    }

    fn packet(&self, index: usize) -> &[u8] {
        self.packets.get(index).map_or(&[], AsRef::as_ref)
    }

    fn packet_mut(&mut self, index: usize) -> &mut [u8] {
        self.packets.get_mut(index).map_or(&mut [], AsMut::as_mut)
    }

    fn with_packets_mut(&mut self, indices: &[usize], f: &mut dyn FnMut(&mut [&mut [u8]])) {
        with_slice_packets(self.packets, indices, f);
    }

    fn key(&self, _: usize, choice: KeyChoice) -> Option<&StaticSecret> {
        match choice {
            KeyChoice::Primary => Some(self.keys.primary),
            KeyChoice::Secondary => self.keys.secondary,
        }
    }

    fn admit(&mut self, _: usize, _: KeyChoice, replay_tag: &[u8; 32]) -> bool {
        !(self.is_replayed)(replay_tag)
    }
}

/// [`PacketBatch::with_packets_mut`] for a slice of buffers.
pub fn with_slice_packets<T: AsMut<[u8]>>(
    packets: &mut [T],
    indices: &[usize],
    f: &mut dyn FnMut(&mut [&mut [u8]]),
) {
    let mut blocks: [&mut [u8]; lioness::LANES] = Default::default();
    let mut lanes = 0;
    let mut wanted = indices.iter().copied().peekable();
    let first = indices.first().copied().unwrap_or(0);
    for (index, packet) in packets.iter_mut().enumerate().skip(first) {
        if lanes == blocks.len() {
            break;
        }
        if wanted.peek() == Some(&index) {
            blocks[lanes] = packet.as_mut();
            lanes += 1;
            wanted.next();
        }
    }
    f(&mut blocks[..lanes]);
}

/// Packets `base..base + len` of a larger batch.
struct Window<'a, P> {
    inner: &'a mut P,
    base: usize,
    len: usize,
}

impl<P: PacketBatch> PacketBatch for Window<'_, P> {
    fn count(&self) -> usize {
        self.len
    }

    fn packet(&self, index: usize) -> &[u8] {
        self.inner.packet(self.base + index)
    }

    fn packet_mut(&mut self, index: usize) -> &mut [u8] {
        self.inner.packet_mut(self.base + index)
    }

    fn with_packets_mut(&mut self, indices: &[usize], f: &mut dyn FnMut(&mut [&mut [u8]])) {
        let mut shifted = [0usize; lioness::LANES];
        let lanes = indices.len().min(shifted.len());
        for (out, index) in shifted.iter_mut().zip(indices) {
            *out = self.base + index;
        }
        self.inner.with_packets_mut(&shifted[..lanes], f);
    }

    fn key(&self, index: usize, choice: KeyChoice) -> Option<&StaticSecret> {
        self.inner.key(self.base + index, choice)
    }

    fn admit(&mut self, index: usize, choice: KeyChoice, replay_tag: &[u8; 32]) -> bool {
        self.inner.admit(self.base + index, choice, replay_tag)
    }

    fn prepare_admit(&self, index: usize, choice: KeyChoice, replay_tag: &[u8; 32]) {
        self.inner
            .prepare_admit(self.base + index, choice, replay_tag);
    }
}

/// Name of the X25519 implementation behind the batches (e.g. for benchmark reports).
pub fn dh_path_name() -> &'static str {
    dh::path_name()
}

#[derive(Clone, Copy)]
enum State {
    Failed(SphinxError),
    /// Length checked; awaiting the DH with `KeyChoice`.
    Pending(KeyChoice),
    Verified(KeyChoice),
    Ready(HopKind, KeyChoice),
}

/// Scratch for processing up to `capacity` packets per chunk, allocated once.
pub struct BatchProcessor {
    capacity: usize,
    state: Vec<State>,
    expanded: Vec<ExpandedSecret>,
    blinded: Vec<[u8; 32]>,
    // Routing keystream of every classified packet: computed once for the flag/version
    // peek and reused to unwrap the header.
    streams: Vec<[u8; KEYSTREAM_SIZE]>,
    stream_keys: Vec<[u8; STREAM_KEY_SIZE]>,
    // Lane buffers for the DH seam; `lane_packet[lane]` = packet index in the chunk.
    scalars: Vec<[u8; 32]>,
    points: Vec<[u8; 32]>,
    dh_out: Vec<[u8; 32]>,
    lane_packet: Vec<usize>,
    // Symmetric stages across the batch: expanded secrets of a DH batch, payload keys and
    // seeds, outcomes held until every payload is decrypted.
    okm: Vec<[u8; EXPANDED_SECRET_SIZE]>,
    macs: Vec<[u8; 32]>,
    seeds: Vec<PayloadKeySeed>,
    derived: Vec<PayloadKey>,
    payload_keys: Vec<PayloadKey>,
    outcomes: Vec<ProcessResult>,
}

impl BatchProcessor {
    /// Scratch for `capacity` packets per DH batch (at least 1); larger inputs are processed
    /// in chunks of this size.
    pub fn new(capacity: usize) -> BatchProcessor {
        let capacity = capacity.max(1);
        BatchProcessor {
            capacity,
            state: vec![State::Failed(SphinxError::WrongMac); capacity],
            expanded: vec![ExpandedSecret::from_bytes(&[0; 288]); capacity],
            blinded: vec![[0; 32]; capacity],
            streams: vec![[0; KEYSTREAM_SIZE]; capacity],
            stream_keys: vec![[0; STREAM_KEY_SIZE]; capacity],
            scalars: vec![[0; 32]; capacity],
            points: vec![[0; 32]; capacity],
            dh_out: vec![[0; 32]; capacity],
            lane_packet: vec![0; capacity],
            okm: vec![[0; EXPANDED_SECRET_SIZE]; capacity],
            macs: vec![[0; 32]; capacity],
            seeds: vec![[0; 16]; capacity],
            derived: vec![[0; 192]; capacity],
            payload_keys: vec![[0; 192]; capacity],
            outcomes: vec![Err(SphinxError::WrongMac); capacity],
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Processes every packet in place; `on_result(index, outcome)` is called once per
    /// packet, in index order.
    pub fn process<T, F>(&mut self, packets: &mut [T], keys: NodeSecrets<'_>, on_result: F)
    where
        T: AsRef<[u8]> + AsMut<[u8]>,
        F: FnMut(usize, ProcessResult),
    {
        self.process_checking_replay(packets, keys, |_| false, on_result);
    }

    /// As [`process`](Self::process), calling `is_replayed(replay_tag)` for each packet whose
    /// MAC verified; `true` yields [`SphinxError::Replayed`] and leaves the packet unchanged
    /// without the blinding multiplication or any decryption.
    pub fn process_checking_replay<T, R, F>(
        &mut self,
        packets: &mut [T],
        keys: NodeSecrets<'_>,
        is_replayed: R,
        on_result: F,
    ) where
        T: AsRef<[u8]> + AsMut<[u8]>,
        R: FnMut(&[u8; 32]) -> bool,
        F: FnMut(usize, ProcessResult),
    {
        let mut batch = SliceBatch {
            packets,
            keys,
            is_replayed,
        };
        self.process_batch(&mut batch, on_result);
    }

    /// The general form: every packet of `batch` with its own key candidates and admission
    /// check, in chunks of at most `capacity`; `on_result(index, outcome)` once per packet,
    /// in index order. A packet without a first key is [`SphinxError::UnknownKey`].
    pub fn process_batch<P, F>(&mut self, batch: &mut P, mut on_result: F)
    where
        P: PacketBatch,
        F: FnMut(usize, ProcessResult),
    {
        let total = batch.count();
        let mut base = 0;
        while base < total {
            let len = (total - base).min(self.capacity);
            let mut window = Window {
                inner: &mut *batch,
                base,
                len,
            };
            self.chunk(&mut window, |index, outcome| {
                on_result(base.saturating_add(index), outcome)
            });
            base += len;
        }
    }

    fn chunk<P, F>(&mut self, packets: &mut P, mut on_result: F)
    where
        P: PacketBatch,
        F: FnMut(usize, ProcessResult),
    {
        let count = packets.count().min(self.capacity);
        for (index, state) in self.state.iter_mut().enumerate().take(count) {
            *state = match Packet::new_unchecked(packets.packet(index)).check_len() {
                Ok(()) => State::Pending(KeyChoice::Primary),
                Err(error) => State::Failed(error),
            };
        }
        self.key_exchange(packets, count, KeyChoice::Primary);
        self.key_exchange(packets, count, KeyChoice::Secondary);
        self.classify(packets, count);
        self.blind(packets, count);
        self.unwrap_headers(packets, count);
        self.derive_payload_keys(count);
        self.decrypt_payloads(packets, count);
        for (index, outcome) in self.outcomes.iter_mut().enumerate().take(count) {
            on_result(
                index,
                core::mem::replace(outcome, Err(SphinxError::WrongMac)),
            );
        }
        for secret in &mut self.expanded[..count] {
            secret.zeroize();
        }
        wipe(&mut self.blinded[..count]);
        wipe_bytes(self.streams[..count].as_flattened_mut());
        wipe_bytes(self.payload_keys[..count].as_flattened_mut());
    }

    /// Routing information of every ready packet (the payload is left for
    /// [`decrypt_payloads`](Self::decrypt_payloads)); every packet gets its outcome.
    fn unwrap_headers<P: PacketBatch>(&mut self, packets: &mut P, count: usize) {
        for index in 0..count {
            self.outcomes[index] = match self.state[index] {
                State::Failed(error) => Err(error),
                State::Ready(_, choice) => {
                    let mut packet = Packet::new_unchecked(packets.packet_mut(index));
                    unwrap_header_in_place_with_stream(
                        &mut packet,
                        &self.expanded[index],
                        &self.streams[index],
                        &self.blinded[index],
                    )
                    .map(|processed| (processed, choice))
                }
                // Unreachable: every packet ends Failed or Ready.
                State::Pending(_) | State::Verified(_) => Err(SphinxError::WrongMac),
            };
        }
    }

    /// Lioness keys of the unwrapped packets: v259/v260 seeds expanded in one multi-lane
    /// HKDF batch, older versions' keys copied.
    fn derive_payload_keys(&mut self, count: usize) {
        let mut lanes = 0;
        for index in 0..count {
            let Ok((processed, _)) = &self.outcomes[index] else {
                continue;
            };
            let expanded = &self.expanded[index];
            if processed.version.uses_full_payload_keys() {
                self.payload_keys[index] = *expanded.legacy_payload_key();
            } else {
                self.seeds[lanes] = expanded.payload_key_seed();
                self.lane_packet[lanes] = index;
                lanes += 1;
            }
        }
        if lanes == 0 {
            return;
        }
        derive_payload_keys(&self.seeds[..lanes], &mut self.derived[..lanes]);
        for lane in 0..lanes {
            self.payload_keys[self.lane_packet[lane]] = self.derived[lane];
        }
        wipe_bytes(self.seeds[..lanes].as_flattened_mut());
        wipe_bytes(self.derived[..lanes].as_flattened_mut());
    }

    /// Removes the Lioness layer of every unwrapped packet, runs of equal-length payloads
    /// (all of them, for one packet size) sharing the multi-buffer passes.
    fn decrypt_payloads<P: PacketBatch>(&mut self, packets: &mut P, count: usize) {
        let mut keys: [&PayloadKey; lioness::LANES] = [&NO_PAYLOAD_KEY; lioness::LANES];
        let mut indices = [0usize; lioness::LANES];
        let mut run_len = 0;
        let mut lanes = 0;
        for index in 0..count {
            if self.outcomes[index].is_err() {
                continue;
            }
            let len = packets.packet(index).len();
            if lanes == lioness::LANES || (lanes > 0 && run_len != len) {
                decrypt_lanes(packets, &indices[..lanes], &keys[..lanes]);
                lanes = 0;
            }
            run_len = len;
            keys[lanes] = &self.payload_keys[index];
            indices[lanes] = index;
            lanes += 1;
        }
        decrypt_lanes(packets, &indices[..lanes], &keys[..lanes]);
    }

    /// One DH batch for the packets pending with `choice`; MAC failures with the primary key
    /// become pending for the secondary batch (or `WrongMac` in `classify` if none runs).
    fn key_exchange<P: PacketBatch>(&mut self, packets: &P, count: usize, choice: KeyChoice) {
        let mut lanes = 0;
        for index in 0..count {
            if matches!(self.state[index], State::Pending(pending) if pending == choice) {
                let Some(key) = packets.key(index, choice) else {
                    self.state[index] = State::Failed(match choice {
                        KeyChoice::Primary => SphinxError::UnknownKey,
                        KeyChoice::Secondary => SphinxError::WrongMac,
                    });
                    continue;
                };
                let packet = Packet::new_unchecked(packets.packet(index));
                self.scalars[lanes] = key.to_bytes();
                self.points[lanes] = *packet.alpha();
                self.lane_packet[lanes] = index;
                lanes += 1;
            }
        }
        if lanes == 0 {
            return;
        }
        self.multiply(lanes);
        expand_many(&self.dh_out[..lanes], &mut self.okm[..lanes]);
        self.header_macs(packets, lanes);
        for lane in 0..lanes {
            let index = self.lane_packet[lane];
            let packet = Packet::new_unchecked(packets.packet(index));
            self.state[index] = match check_dh_output(&self.dh_out[lane]) {
                Err(error) => State::Failed(error),
                Ok(()) => {
                    self.expanded[index] = ExpandedSecret::from_bytes(&self.okm[lane]);
                    // As `verify_mac`: constant-time comparison of the truncated MAC.
                    let mac_ok: bool = self.macs[lane][..MAC_SIZE].ct_eq(packet.mac()).into();
                    match (mac_ok, choice) {
                        (true, _) => State::Verified(choice),
                        // Retried in the secondary batch, or reported as is if none comes.
                        (false, KeyChoice::Primary) => State::Pending(KeyChoice::Secondary),
                        (false, KeyChoice::Secondary) => State::Failed(SphinxError::WrongMac),
                    }
                }
            };
        }
        wipe(&mut self.dh_out[..lanes]);
        wipe_bytes(self.okm[..lanes].as_flattened_mut());
        wipe(&mut self.macs[..lanes]);
    }

    /// HMAC-SHA256(MAC key, beta) of every lane, from the expanded bytes in `okm`, 16 lanes
    /// per multi-buffer pass.
    fn header_macs<P: PacketBatch>(&mut self, packets: &P, lanes: usize) {
        const MAC_KEY: core::ops::Range<usize> = STREAM_KEY_SIZE..STREAM_KEY_SIZE + MAC_KEY_SIZE;
        const BETA: core::ops::Range<usize> = ALPHA_SIZE + MAC_SIZE..HEADER_SIZE;
        let mut start = 0;
        while start < lanes {
            let end = lanes.min(start + MANY_LANES);
            let mut keys: [&[u8]; MANY_LANES] = [&[]; MANY_LANES];
            let mut betas: [&[u8]; MANY_LANES] = [&[]; MANY_LANES];
            for lane in start..end {
                keys[lane - start] = &self.okm[lane][MAC_KEY];
                // Present: pending packets passed `check_len`.
                let packet = packets.packet(self.lane_packet[lane]);
                betas[lane - start] = packet.get(BETA).unwrap_or(&[]);
            }
            let n = end - start;
            // Cannot fail: MAC keys are 16 bytes.
            let computed = hmac_many(&keys[..n], &betas[..n], &mut self.macs[start..end]);
            debug_assert!(computed);
            start = end;
        }
    }

    /// Replay check, then flag and version from the first decrypted bytes of the slot, so
    /// only valid forward hops take the blinding multiplication. The admitted packets'
    /// keystreams are computed together (`simd::aes`: four keys per vector) after every
    /// replay check, which still runs in index order.
    fn classify<P: PacketBatch>(&mut self, packets: &mut P, count: usize) {
        for index in 0..count {
            if let State::Verified(choice) = self.state[index] {
                packets.prepare_admit(index, choice, self.expanded[index].replay_tag());
            }
        }
        let mut lanes = 0;
        for index in 0..count {
            self.state[index] = match self.state[index] {
                // No secondary key: the primary's MAC failure stands.
                State::Pending(_) => State::Failed(SphinxError::WrongMac),
                State::Verified(choice) => {
                    let expanded = &self.expanded[index];
                    if packets.admit(index, choice, expanded.replay_tag()) {
                        self.stream_keys[lanes] = *expanded.stream_key();
                        self.lane_packet[lanes] = index;
                        lanes += 1;
                        State::Verified(choice)
                    } else {
                        State::Failed(SphinxError::Replayed)
                    }
                }
                other => other,
            };
        }
        ctr_keystreams(&self.stream_keys[..lanes], &mut self.streams[..lanes]);
        wipe_bytes(self.stream_keys[..lanes].as_flattened_mut());
        // Lane order to packet order: lane <= its packet's index, so moving from the last
        // lane down never overwrites a stream not yet moved.
        for lane in (0..lanes).rev() {
            let index = self.lane_packet[lane];
            if index != lane {
                self.streams[index] = self.streams[lane];
            }
            if let State::Verified(choice) = self.state[index] {
                let packet = Packet::new_unchecked(packets.packet(index));
                self.state[index] = match peek_slot(&packet, &self.streams[index]) {
                    Ok(kind) => State::Ready(kind, choice),
                    Err(error) => State::Failed(error),
                };
            }
        }
    }

    /// Second DH batch: blinded alpha = X25519(blinding factor, alpha) for forward hops.
    fn blind<P: PacketBatch>(&mut self, packets: &P, count: usize) {
        let mut lanes = 0;
        for index in 0..count {
            if let State::Ready(HopKind::Forward, _) = self.state[index] {
                self.scalars[lanes] = *self.expanded[index].blinding_factor();
                self.points[lanes] = *Packet::new_unchecked(packets.packet(index)).alpha();
                self.lane_packet[lanes] = index;
                lanes += 1;
            }
        }
        if lanes == 0 {
            return;
        }
        self.multiply(lanes);
        for lane in 0..lanes {
            self.blinded[self.lane_packet[lane]] = self.dh_out[lane];
        }
    }

    /// One X25519 pass over the gathered lanes; the scalars (node key copies, blinding
    /// factors) are wiped as soon as they are used.
    fn multiply(&mut self, lanes: usize) {
        dh::x25519_batch(
            &self.scalars[..lanes],
            &self.points[..lanes],
            &mut self.dh_out[..lanes],
        );
        wipe(&mut self.scalars[..lanes]);
    }
}

static NO_PAYLOAD_KEY: PayloadKey = [0; 192];

/// Decrypts the payloads of the packets at `indices` (equal lengths) in one multi-buffer call.
fn decrypt_lanes<P: PacketBatch>(packets: &mut P, indices: &[usize], keys: &[&PayloadKey]) {
    if indices.is_empty() {
        return;
    }
    // The lanes done so far: `f` runs once, or once per packet.
    let mut done = 0;
    packets.with_packets_mut(indices, &mut |blocks| {
        let keys = keys.get(done..).unwrap_or_default();
        let mut payloads: [&mut [u8]; lioness::LANES] = Default::default();
        let mut lanes = 0;
        for (payload, block) in payloads.iter_mut().zip(blocks.iter_mut()) {
            // Present: a ready packet passed `check_len`.
            *payload = block.get_mut(HEADER_SIZE..).unwrap_or_default();
            lanes += 1;
        }
        let lanes = lanes.min(keys.len());
        // Cannot fail: every payload passed `check_len` (at least one Lioness block).
        let decrypted = lioness::decrypt_many(&keys[..lanes], &mut payloads[..lanes]);
        debug_assert!(decrypted.is_ok());
        done += lanes;
    });
}

fn wipe(lanes: &mut [[u8; 32]]) {
    wipe_bytes(lanes.as_flattened_mut());
}

// Flag and version of the routing slot, as `unwrap_in_place` will read them, from the hop's
// keystream.
fn peek_slot<T: AsRef<[u8]>>(
    packet: &Packet<T>,
    stream: &[u8; KEYSTREAM_SIZE],
) -> Result<HopKind, SphinxError> {
    let mut head = [0u8; 1 + VERSION_SIZE];
    for ((out, byte), key) in head.iter_mut().zip(packet.beta()).zip(stream) {
        *out = byte ^ key;
    }
    let kind = match head[0] {
        super::constants::FLAG_FORWARD_HOP => HopKind::Forward,
        super::constants::FLAG_FINAL_HOP => HopKind::Final,
        flag => return Err(SphinxError::BadFlag(flag)),
    };
    let mut version = [0u8; VERSION_SIZE];
    version.copy_from_slice(&head[1..]);
    Version::from_wire(&version)?;
    Ok(kind)
}

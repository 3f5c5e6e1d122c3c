//! The one place the engine calls Sphinx processing.
//!
//! [`process_batch`] takes a batch of packet buffers, the key set and a replay-check hook, and
//! writes one [`Outcome`] per packet, identical to processing the packets one by one. The two
//! X25519 steps of a hop run across the whole batch on the multi-lane ladder
//! (`lethe_crypto::x25519`: 8 lanes on AVX-512 IFMA, 4 on AVX2): first the node key times every
//! alpha (a second pass with the other key for packets whose MAC failed under the first), then,
//! after the replay check, every forward hop's blinding factor times its alpha. The symmetric
//! work (HKDF, MAC, AES-CTR, Lioness) stays per packet.
//!
//! The replay check runs *after* the MAC verified and *before* the buffer is rewritten, so a
//! replayed packet costs one DH and is left untouched, and a forged MAC never pollutes the
//! filter. Replay checks are made in packet order, so duplicates inside one batch behave as
//! they would one by one.

use lethe_crypto::framing::KeyRotation;
use lethe_crypto::sphinx::{
    blinding_input, check_dh_output, expand, hop_kind, unwrap_in_place, verify_mac, ExpandedSecret,
    Hop, HopKind, Packet, SphinxError,
};
use lethe_crypto::x25519::x25519_batch;
use zeroize::Zeroize;

use super::keys::NodeKeys;
use crate::replay::{ReplayTag, RotationId};

/// What the replay hook says about a tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplayVerdict {
    Fresh,
    Replayed,
    /// No filter for that rotation: the key is unknown or retired.
    NoFilter,
}

/// The batch's packets, addressed by index (implemented over the core's buffer pool).
pub trait PacketSlots {
    fn count(&self) -> u32;
    fn rotation(&self, index: u32) -> KeyRotation;
    fn packet_mut(&mut self, index: u32) -> &mut [u8];
}

/// The result for one packet. On anything but `Forward`/`Final` the buffer is unchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Forward {
        next_hop: [u8; 32],
        delay_ns: u64,
        rotation_id: RotationId,
    },
    Final {
        destination: [u8; 32],
        identifier: [u8; 16],
        rotation_id: RotationId,
    },
    Malformed(SphinxError),
    Replayed,
    UnknownKey,
}

/// Per-batch working memory, allocated once for the largest batch: lanes of X25519 inputs and
/// outputs, and each packet's state between the passes.
pub struct BatchScratch {
    scalars: Vec<[u8; 32]>,
    points: Vec<[u8; 32]>,
    products: Vec<[u8; 32]>,
    /// Packet index of each lane.
    lane_packet: Vec<u32>,
    alpha: Vec<[u8; 32]>,
    blinded: Vec<[u8; 32]>,
    expanded: Vec<Option<ExpandedSecret>>,
    rotation_id: Vec<RotationId>,
    decided: Vec<bool>,
}

impl BatchScratch {
    /// Working memory for batches of up to `packets_max` packets.
    pub fn new(packets_max: usize) -> BatchScratch {
        BatchScratch {
            scalars: vec![[0; 32]; packets_max],
            points: vec![[0; 32]; packets_max],
            products: vec![[0; 32]; packets_max],
            lane_packet: vec![0; packets_max],
            alpha: vec![[0; 32]; packets_max],
            blinded: vec![[0; 32]; packets_max],
            expanded: (0..packets_max).map(|_| None).collect(),
            rotation_id: vec![0; packets_max],
            decided: vec![false; packets_max],
        }
    }

    fn capacity(&self) -> usize {
        self.decided.len()
    }

    /// One X25519 pass over the first `lanes` lanes.
    fn multiply(&mut self, lanes: usize) {
        x25519_batch(
            &self.scalars[..lanes],
            &self.points[..lanes],
            &mut self.products[..lanes],
        );
        // The scalars are node secrets and blinding factors.
        wipe(&mut self.scalars[..lanes]);
    }
}

/// Processes every packet of `slots` in place, writing one outcome per packet to `outcomes`
/// (cleared first; it and `scratch` must hold the batch, so this never allocates).
pub fn process_batch<S, F>(
    slots: &mut S,
    keys: &NodeKeys,
    mut replay_check: F,
    scratch: &mut BatchScratch,
    outcomes: &mut Vec<Outcome>,
) where
    S: PacketSlots,
    F: FnMut(RotationId, &ReplayTag) -> ReplayVerdict,
{
    let count = slots.count() as usize;
    assert!(outcomes.capacity() >= count && scratch.capacity() >= count);
    outcomes.clear();
    outcomes.resize(count, Outcome::UnknownKey);
    scratch.decided[..count].fill(false);
    let mut decide = |scratch: &mut BatchScratch, index: usize, outcome: Outcome| {
        scratch.decided[index] = true;
        scratch.expanded[index] = None;
        outcomes[index] = outcome;
    };

    // Pass 1: the first candidate key times every well-formed packet's alpha.
    let mut lanes = 0;
    for index in 0..count {
        let rotation = slots.rotation(index as u32);
        let packet = match Packet::new_checked(slots.packet_mut(index as u32)) {
            Ok(packet) => packet,
            Err(error) => {
                decide(scratch, index, Outcome::Malformed(error));
                continue;
            }
        };
        let Some(key) = keys.candidates(rotation)[0] else {
            decide(scratch, index, Outcome::UnknownKey);
            continue;
        };
        scratch.alpha[index] = *packet.alpha();
        scratch.scalars[lanes] = key.secret.to_bytes();
        scratch.points[lanes] = scratch.alpha[index];
        scratch.lane_packet[lanes] = index as u32;
        lanes += 1;
    }
    scratch.multiply(lanes);

    // Expand and check MACs; packets whose MAC failed and that have a second candidate key
    // go to pass 2.
    let mut retries = 0;
    for lane in 0..lanes {
        let index = scratch.lane_packet[lane] as usize;
        let candidates = keys.candidates(slots.rotation(index as u32));
        let shared = scratch.products[lane];
        match unlock_with(slots, index, &shared) {
            Ok(expanded) => {
                scratch.rotation_id[index] = candidates[0].map_or(0, |key| key.rotation_id);
                scratch.expanded[index] = Some(expanded);
            }
            // A small-order alpha fails with every key.
            Err(error @ SphinxError::InvalidPoint) => {
                decide(scratch, index, Outcome::Malformed(error))
            }
            Err(error) => match candidates[1] {
                Some(key) => {
                    scratch.scalars[retries] = key.secret.to_bytes();
                    scratch.points[retries] = scratch.alpha[index];
                    scratch.lane_packet[retries] = index as u32;
                    retries += 1;
                }
                None => decide(scratch, index, Outcome::Malformed(error)),
            },
        }
    }
    // Pass 2 reuses the lanes: entries below `retries` were rewritten above, after being read.
    scratch.multiply(retries);
    for lane in 0..retries {
        let index = scratch.lane_packet[lane] as usize;
        let shared = scratch.products[lane];
        match unlock_with(slots, index, &shared) {
            Ok(expanded) => {
                let candidates = keys.candidates(slots.rotation(index as u32));
                scratch.rotation_id[index] = candidates[1].map_or(0, |key| key.rotation_id);
                scratch.expanded[index] = Some(expanded);
            }
            Err(error) => decide(scratch, index, Outcome::Malformed(error)),
        }
    }

    // Replay checks in packet order; forward hops queue their blinding multiplication.
    let mut lanes = 0;
    for index in 0..count {
        let Some(expanded) = scratch.expanded[index].as_ref() else {
            continue;
        };
        match replay_check(scratch.rotation_id[index], expanded.replay_tag()) {
            ReplayVerdict::Fresh => {}
            ReplayVerdict::Replayed => {
                decide(scratch, index, Outcome::Replayed);
                continue;
            }
            ReplayVerdict::NoFilter => {
                decide(scratch, index, Outcome::UnknownKey);
                continue;
            }
        }
        let packet = Packet::new_unchecked(slots.packet_mut(index as u32));
        match hop_kind(&packet, expanded) {
            Ok(HopKind::Forward) => {
                scratch.scalars[lanes] = *blinding_input(expanded);
                scratch.points[lanes] = scratch.alpha[index];
                scratch.lane_packet[lanes] = index as u32;
                lanes += 1;
            }
            Ok(HopKind::Final) => scratch.blinded[index] = [0; 32],
            Err(error) => decide(scratch, index, Outcome::Malformed(error)),
        }
    }
    scratch.multiply(lanes);
    for lane in 0..lanes {
        let index = scratch.lane_packet[lane] as usize;
        scratch.blinded[index] = scratch.products[lane];
    }

    // Unwrap in place.
    for (index, outcome) in outcomes.iter_mut().enumerate() {
        let Some(expanded) = scratch.expanded[index].take() else {
            debug_assert!(scratch.decided[index]);
            continue;
        };
        let mut packet = Packet::new_unchecked(slots.packet_mut(index as u32));
        let rotation_id = scratch.rotation_id[index];
        *outcome = match unwrap_in_place(&mut packet, &expanded, &scratch.blinded[index]) {
            Ok(processed) => {
                debug_assert_eq!(&processed.replay_tag, expanded.replay_tag());
                match processed.hop {
                    Hop::Forward { next_hop, delay_ns } => Outcome::Forward {
                        next_hop,
                        delay_ns,
                        rotation_id,
                    },
                    Hop::Final {
                        destination,
                        identifier,
                    } => Outcome::Final {
                        destination,
                        identifier,
                        rotation_id,
                    },
                }
            }
            Err(error) => Outcome::Malformed(error),
        };
    }
    wipe(&mut scratch.products[..count]);
    wipe(&mut scratch.blinded[..count]);
}

/// Checks the DH output, expands it and verifies the packet's MAC with it.
fn unlock_with<S: PacketSlots>(
    slots: &mut S,
    index: usize,
    shared: &[u8; 32],
) -> Result<ExpandedSecret, SphinxError> {
    check_dh_output(shared)?;
    let expanded = expand(shared);
    let packet = Packet::new_unchecked(slots.packet_mut(index as u32));
    verify_mac(&packet, &expanded)?;
    Ok(expanded)
}

/// Zeroes secret lanes (shared secrets, blinding factors, node-key copies).
fn wipe(lanes: &mut [[u8; 32]]) {
    lanes.iter_mut().for_each(Zeroize::zeroize);
}

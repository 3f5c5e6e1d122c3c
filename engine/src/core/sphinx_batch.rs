//! The one place the engine calls Sphinx processing.
//!
//! [`process_batch`] takes a batch of packet buffers, the key set and a replay-check hook, and
//! writes one [`Outcome`] per packet. Today it loops over the serial staged API (DH + expand,
//! MAC, replay check, blinding, in-place unwrap); a batched processor (several X25519
//! multiplications per SIMD pass) replaces the body of this one function, with results
//! identical to the serial path.
//!
//! The replay check runs *after* the MAC verified and *before* the buffer is rewritten, so a
//! replayed packet costs one DH and is left untouched, and a forged MAC never pollutes the
//! filter.

use lethe_crypto::framing::KeyRotation;
use lethe_crypto::sphinx::keys::blind_alpha;
use lethe_crypto::sphinx::{
    derive_expanded_secret, hop_kind, unwrap_in_place, verify_mac, ExpandedSecret, Hop, HopKind,
    Packet, SphinxError,
};

use super::keys::{NodeKeys, SphinxKey};
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

/// Processes every packet of `slots` in place, pushing one outcome per packet to `outcomes`
/// (cleared first; its capacity must hold the batch, so this never allocates).
pub fn process_batch<S, F>(
    slots: &mut S,
    keys: &NodeKeys,
    mut replay_check: F,
    outcomes: &mut Vec<Outcome>,
) where
    S: PacketSlots,
    F: FnMut(RotationId, &ReplayTag) -> ReplayVerdict,
{
    outcomes.clear();
    let count = slots.count();
    assert!(outcomes.capacity() >= count as usize);
    for index in 0..count {
        let rotation = slots.rotation(index);
        let outcome = process_one(slots.packet_mut(index), rotation, keys, &mut replay_check);
        outcomes.push(outcome);
    }
    assert_eq!(outcomes.len(), count as usize);
}

fn process_one<F>(
    buffer: &mut [u8],
    rotation: KeyRotation,
    keys: &NodeKeys,
    replay_check: &mut F,
) -> Outcome
where
    F: FnMut(RotationId, &ReplayTag) -> ReplayVerdict,
{
    let mut packet = match Packet::new_checked(buffer) {
        Ok(packet) => packet,
        Err(error) => return Outcome::Malformed(error),
    };
    let (key, expanded) = match unlock(&packet, rotation, keys) {
        Ok(found) => found,
        Err(outcome) => return outcome,
    };
    match replay_check(key.rotation_id, expanded.replay_tag()) {
        ReplayVerdict::Fresh => {}
        ReplayVerdict::Replayed => return Outcome::Replayed,
        ReplayVerdict::NoFilter => return Outcome::UnknownKey,
    }
    let blinded = match hop_kind(&packet, &expanded) {
        Ok(HopKind::Forward) => blind_alpha(&expanded, packet.alpha()),
        Ok(HopKind::Final) => [0u8; 32],
        Err(error) => return Outcome::Malformed(error),
    };
    let processed = match unwrap_in_place(&mut packet, &expanded, &blinded) {
        Ok(processed) => processed,
        Err(error) => return Outcome::Malformed(error),
    };
    debug_assert_eq!(&processed.replay_tag, expanded.replay_tag());
    match processed.hop {
        Hop::Forward { next_hop, delay_ns } => Outcome::Forward {
            next_hop,
            delay_ns,
            rotation_id: key.rotation_id,
        },
        Hop::Final {
            destination,
            identifier,
        } => Outcome::Final {
            destination,
            identifier,
            rotation_id: key.rotation_id,
        },
    }
}

/// Finds the key whose MAC verifies: the rotation byte's key, or primary then secondary.
fn unlock<'k>(
    packet: &Packet<&mut [u8]>,
    rotation: KeyRotation,
    keys: &'k NodeKeys,
) -> Result<(&'k SphinxKey, ExpandedSecret), Outcome> {
    let candidates = keys.candidates(rotation);
    if candidates[0].is_none() {
        return Err(Outcome::UnknownKey);
    }
    let mut last_error = SphinxError::WrongMac;
    for key in candidates.into_iter().flatten() {
        match derive_expanded_secret(packet, &key.secret) {
            Ok(expanded) => match verify_mac(packet, &expanded) {
                Ok(()) => return Ok((key, expanded)),
                Err(error) => last_error = error,
            },
            // A small-order alpha fails with every key.
            Err(error) => return Err(Outcome::Malformed(error)),
        }
    }
    Err(Outcome::Malformed(last_error))
}

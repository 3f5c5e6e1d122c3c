//! The one place the engine calls Sphinx processing.
//!
//! [`process_batch`] takes a batch of packet buffers, the key set and a replay-check hook, and
//! writes one [`Outcome`] per packet, identical to processing the packets one by one. It runs
//! on the crypto crate's one batched implementation, [`BatchProcessor`], through the
//! [`PacketBatch`] adapter below: per packet key candidates (v7 frames: primary, then
//! secondary on a MAC failure; v8 frames: the key their rotation byte names), both X25519
//! steps on the multi-lane ladder and the symmetric work (HKDF, HMAC, Lioness) on the
//! multi-buffer paths.
//!
//! The replay check runs *after* the MAC verified and *before* the buffer is rewritten, so a
//! replayed packet costs one DH and is left untouched, and a forged MAC never pollutes the
//! filter. Replay checks are made in packet order, so duplicates inside one batch behave as
//! they would one by one.

use lethe_crypto::framing::KeyRotation;
use lethe_crypto::sphinx::{
    BatchProcessor, Hop, KeyChoice, Outcome as SphinxOutcome, PacketBatch, SphinxError,
};
use x25519_dalek::StaticSecret;

use super::keys::NodeKeys;
use crate::replay::{ReplayFilterSet, ReplayTag, RotationId};

/// What the replay hook says about a tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplayVerdict {
    Fresh,
    Replayed,
    /// No filter for that rotation: the key is unknown or retired.
    NoFilter,
}

/// The replay check `process_batch` runs on each packet whose MAC verified. Any
/// `FnMut(RotationId, &ReplayTag) -> ReplayVerdict` is one; [`FilterGate`] also prefetches.
pub trait ReplayGate {
    fn check(&mut self, rotation_id: RotationId, tag: &ReplayTag) -> ReplayVerdict;
    /// Called for every tag of the batch before the first `check` (see
    /// [`PacketBatch::prepare_admit`]).
    fn prefetch(&self, rotation_id: RotationId, tag: &ReplayTag) {
        let _ = (rotation_id, tag);
    }
}

impl<F: FnMut(RotationId, &ReplayTag) -> ReplayVerdict> ReplayGate for F {
    fn check(&mut self, rotation_id: RotationId, tag: &ReplayTag) -> ReplayVerdict {
        self(rotation_id, tag)
    }
}

/// The core's gate: a live filter set, with the batch's filter lines prefetched.
pub struct FilterGate<'a>(pub &'a ReplayFilterSet);

impl ReplayGate for FilterGate<'_> {
    fn check(&mut self, rotation_id: RotationId, tag: &ReplayTag) -> ReplayVerdict {
        match self.0.check_and_insert(rotation_id, tag) {
            Some(false) => ReplayVerdict::Fresh,
            Some(true) => ReplayVerdict::Replayed,
            None => ReplayVerdict::NoFilter,
        }
    }

    fn prefetch(&self, rotation_id: RotationId, tag: &ReplayTag) {
        self.0.prefetch(rotation_id, tag);
    }
}

/// The batch's packets, addressed by index (implemented over the core's buffer pool).
pub trait PacketSlots {
    fn count(&self) -> u32;
    fn rotation(&self, index: u32) -> KeyRotation;
    fn packet(&self, index: u32) -> &[u8];
    fn packet_mut(&mut self, index: u32) -> &mut [u8];
    /// Calls `f` with the buffers at `indices` (distinct, increasing, at most
    /// [`lethe_crypto::lioness::LANES`]), in that order: once with all of them, or once per
    /// buffer.
    fn with_packets_mut(&mut self, indices: &[usize], f: &mut dyn FnMut(&mut [&mut [u8]]));
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

/// Per-batch working memory, allocated once for the largest batch: the batched processor's
/// scratch and each packet's replay verdict.
pub struct BatchScratch {
    processor: BatchProcessor,
    verdicts: Vec<ReplayVerdict>,
    /// The key candidate each unwrapped packet used.
    choices: Vec<KeyChoice>,
}

impl BatchScratch {
    /// Working memory for batches of up to `packets_max` packets.
    pub fn new(packets_max: usize) -> BatchScratch {
        BatchScratch {
            processor: BatchProcessor::new(packets_max),
            verdicts: vec![ReplayVerdict::Fresh; packets_max],
            choices: vec![KeyChoice::Primary; packets_max],
        }
    }

    fn capacity(&self) -> usize {
        self.verdicts.len().min(self.choices.len())
    }
}

/// The engine's view of a batch as the crypto crate's [`PacketBatch`].
struct Adapter<'a, S, F> {
    slots: &'a mut S,
    keys: &'a NodeKeys,
    replay_check: F,
    verdicts: &'a mut [ReplayVerdict],
}

impl<S, F> Adapter<'_, S, F>
where
    S: PacketSlots,
{
    fn candidate(&self, index: usize, choice: KeyChoice) -> Option<&super::keys::SphinxKey> {
        let candidates = self.keys.candidates(self.slots.rotation(index as u32));
        match choice {
            KeyChoice::Primary => candidates[0],
            KeyChoice::Secondary => candidates[1],
        }
    }
}

impl<S, F> PacketBatch for Adapter<'_, S, F>
where
    S: PacketSlots,
    F: ReplayGate,
{
    fn count(&self) -> usize {
        self.slots.count() as usize
    }

    fn packet(&self, index: usize) -> &[u8] {
        self.slots.packet(index as u32)
    }

    fn packet_mut(&mut self, index: usize) -> &mut [u8] {
        self.slots.packet_mut(index as u32)
    }

    fn with_packets_mut(&mut self, indices: &[usize], f: &mut dyn FnMut(&mut [&mut [u8]])) {
        self.slots.with_packets_mut(indices, f);
    }

    fn key(&self, index: usize, choice: KeyChoice) -> Option<&StaticSecret> {
        self.candidate(index, choice).map(|key| &key.secret)
    }

    fn admit(&mut self, index: usize, choice: KeyChoice, replay_tag: &[u8; 32]) -> bool {
        let rotation_id = self
            .candidate(index, choice)
            .map_or(0, |key| key.rotation_id);
        let verdict = self.replay_check.check(rotation_id, replay_tag);
        if let Some(slot) = self.verdicts.get_mut(index) {
            *slot = verdict;
        }
        verdict == ReplayVerdict::Fresh
    }

    fn prepare_admit(&self, index: usize, choice: KeyChoice, replay_tag: &[u8; 32]) {
        if let Some(key) = self.candidate(index, choice) {
            self.replay_check.prefetch(key.rotation_id, replay_tag);
        }
    }
}

/// Processes every packet of `slots` in place, writing one outcome per packet to `outcomes`
/// (cleared first; it and `scratch` must hold the batch, so this never allocates).
pub fn process_batch<S, F>(
    slots: &mut S,
    keys: &NodeKeys,
    replay_check: F,
    scratch: &mut BatchScratch,
    outcomes: &mut Vec<Outcome>,
) where
    S: PacketSlots,
    F: ReplayGate,
{
    let count = slots.count() as usize;
    assert!(outcomes.capacity() >= count && scratch.capacity() >= count);
    outcomes.clear();
    outcomes.resize(count, Outcome::UnknownKey);
    scratch.verdicts[..count].fill(ReplayVerdict::Fresh);
    let mut adapter = Adapter {
        slots,
        keys,
        replay_check,
        verdicts: &mut scratch.verdicts[..count],
    };
    let results = &mut outcomes[..];
    let choices = &mut scratch.choices[..count];
    scratch
        .processor
        .process_batch(&mut adapter, |index, outcome: SphinxOutcome| {
            let (Some(slot), Some(used)) = (results.get_mut(index), choices.get_mut(index)) else {
                return;
            };
            *slot = match outcome {
                Ok((processed, choice)) => {
                    *used = choice;
                    // The rotation id is filled in below, when the slots are free again.
                    let rotation_id = 0;
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
                Err(SphinxError::UnknownKey) => Outcome::UnknownKey,
                // Stopped by `admit`: the verdict is applied below.
                Err(SphinxError::Replayed) => Outcome::Replayed,
                Err(error) => Outcome::Malformed(error),
            };
        });
    let Adapter {
        slots, verdicts, ..
    } = adapter;
    for (index, outcome) in outcomes.iter_mut().enumerate() {
        match outcome {
            Outcome::Forward { rotation_id, .. } | Outcome::Final { rotation_id, .. } => {
                let candidates = keys.candidates(slots.rotation(index as u32));
                let key = match scratch.choices[index] {
                    KeyChoice::Primary => candidates[0],
                    KeyChoice::Secondary => candidates[1],
                };
                *rotation_id = key.map_or(0, |key| key.rotation_id);
            }
            Outcome::Replayed => {
                if verdicts.get(index) == Some(&ReplayVerdict::NoFilter) {
                    *outcome = Outcome::UnknownKey;
                }
            }
            Outcome::Malformed(_) | Outcome::UnknownKey => {}
        }
    }
}

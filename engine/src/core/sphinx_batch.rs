//! The one place the engine calls Sphinx processing.
//!
//! [`process_batch`] takes a batch of pool buffers, the key set and a replay-check hook, and
//! writes one [`Outcome`] per packet, identical to processing the packets one by one. It runs
//! on the crypto crate's one batched implementation, [`BatchProcessor`], through one adapter
//! ([`PoolBatch`]) that implements [`PacketBatch`] on the pool's buffers: each packet's key
//! candidates are resolved once, from its frame's rotation byte (v7 frames: primary, then
//! secondary on a MAC failure; v8 frames: the key that byte names), both X25519 steps run on
//! the multi-lane ladder and the symmetric work (HKDF, HMAC, Lioness) on the multi-buffer
//! paths.
//!
//! The replay check runs *after* the MAC verified and *before* the buffer is rewritten, so a
//! replayed packet costs one DH and is left untouched, and a forged MAC never pollutes the
//! filter. Replay checks are made in packet order, so duplicates inside one batch behave as
//! they would one by one. The rotation id of the key that verified is recorded when the
//! packet is admitted: the outcome carries that one, not one derived again afterwards.

use lethe_crypto::framing::KeyRotation;
use lethe_crypto::sphinx::{
    BatchProcessor, Hop, KeyChoice, PacketBatch, ProcessResult, SphinxError,
};
use x25519_dalek::StaticSecret;

use super::keys::{LiveKey, NodeKeys, SphinxKey};
use crate::pool::{BufId, BufferPool};
use crate::replay::{ReplayFilterSet, ReplayTag, RotationId};

/// One batched packet: its pool buffer, its length and its frame's rotation byte.
#[derive(Debug)]
pub struct Batched {
    pub buffer: BufId,
    pub len: u32,
    pub rotation: KeyRotation,
}

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

/// What admission recorded for one packet: the replay verdict, and the rotation id of the key
/// whose MAC verified.
#[derive(Clone, Copy)]
struct Admission {
    verdict: ReplayVerdict,
    rotation_id: RotationId,
}

const ADMISSION_NONE: Admission = Admission {
    verdict: ReplayVerdict::Fresh,
    rotation_id: 0,
};

/// Per-batch working memory, allocated once for the largest batch: the batched processor's
/// scratch, each packet's resolved key candidates and what its admission recorded.
pub struct BatchScratch {
    processor: BatchProcessor,
    candidates: Vec<[Option<LiveKey>; 2]>,
    admissions: Vec<Admission>,
}

impl BatchScratch {
    /// Working memory for batches of up to `packets_max` packets.
    pub fn new(packets_max: usize) -> BatchScratch {
        BatchScratch {
            processor: BatchProcessor::new(packets_max),
            candidates: vec![[None; 2]; packets_max],
            admissions: vec![ADMISSION_NONE; packets_max],
        }
    }

    fn capacity(&self) -> usize {
        self.candidates.len().min(self.admissions.len())
    }
}

/// The batch as the crypto crate's [`PacketBatch`]: the pool's buffers, each packet's key
/// candidates (resolved once) and the replay gate.
struct PoolBatch<'a, G> {
    pool: &'a mut BufferPool,
    batch: &'a [Batched],
    keys: &'a NodeKeys,
    candidates: &'a [[Option<LiveKey>; 2]],
    gate: G,
    admissions: &'a mut [Admission],
}

impl<G> PoolBatch<'_, G> {
    fn candidate(&self, index: usize, choice: KeyChoice) -> Option<&SphinxKey> {
        let candidates = self.candidates.get(index)?;
        let which = match choice {
            KeyChoice::Primary => candidates[0],
            KeyChoice::Secondary => candidates[1],
        };
        self.keys.get(which?)
    }
}

impl<G: ReplayGate> PacketBatch for PoolBatch<'_, G> {
    fn count(&self) -> usize {
        self.batch.len()
    }

    fn packet(&self, index: usize) -> &[u8] {
        match self.batch.get(index) {
            Some(packet) => &self.pool.get(&packet.buffer)[..packet.len as usize],
            None => &[],
        }
    }

    fn packet_mut(&mut self, index: usize) -> &mut [u8] {
        match self.batch.get(index) {
            Some(packet) => &mut self.pool.get_mut(&packet.buffer)[..packet.len as usize],
            None => &mut [],
        }
    }

    fn with_packets_mut(&mut self, indices: &[usize], f: &mut dyn FnMut(&mut [&mut [u8]])) {
        let mut buffers = [None; lethe_crypto::lioness::LANES];
        let lanes = indices.len().min(lethe_crypto::lioness::LANES);
        for (buffer, &index) in buffers.iter_mut().zip(indices) {
            *buffer = self
                .batch
                .get(index)
                .map(|packet| (&packet.buffer, packet.len as usize));
        }
        // Distinct batch entries hold distinct buffers; were one named twice, the lanes go
        // one at a time.
        match self.pool.get_disjoint_mut(buffers) {
            Some(mut blocks) => f(&mut blocks[..lanes]),
            None => {
                for &index in &indices[..lanes] {
                    f(&mut [self.packet_mut(index)]);
                }
            }
        }
    }

    fn key(&self, index: usize, choice: KeyChoice) -> Option<&StaticSecret> {
        self.candidate(index, choice).map(|key| &key.secret)
    }

    fn admit(&mut self, index: usize, choice: KeyChoice, replay_tag: &[u8; 32]) -> bool {
        let rotation_id = self
            .candidate(index, choice)
            .map_or(0, |key| key.rotation_id);
        let verdict = self.gate.check(rotation_id, replay_tag);
        if let Some(admission) = self.admissions.get_mut(index) {
            *admission = Admission {
                verdict,
                rotation_id,
            };
        }
        verdict == ReplayVerdict::Fresh
    }

    fn prepare_admit(&self, index: usize, choice: KeyChoice, replay_tag: &[u8; 32]) {
        if let Some(key) = self.candidate(index, choice) {
            self.gate.prefetch(key.rotation_id, replay_tag);
        }
    }
}

/// Processes every packet of `batch` in place in `pool`, writing one outcome per packet to
/// `outcomes` (cleared first; it and `scratch` must hold the batch, so this never allocates).
pub fn process_batch<G: ReplayGate>(
    pool: &mut BufferPool,
    batch: &[Batched],
    keys: &NodeKeys,
    gate: G,
    scratch: &mut BatchScratch,
    outcomes: &mut Vec<Outcome>,
) {
    let count = batch.len();
    assert!(outcomes.capacity() >= count && scratch.capacity() >= count);
    outcomes.clear();
    outcomes.resize(count, Outcome::UnknownKey);
    // The one key lookup per packet.
    for (candidates, packet) in scratch.candidates.iter_mut().zip(batch) {
        *candidates = keys.candidates(packet.rotation);
    }
    scratch.admissions[..count].fill(ADMISSION_NONE);
    let mut adapter = PoolBatch {
        pool,
        batch,
        keys,
        candidates: &scratch.candidates[..count],
        gate,
        admissions: &mut scratch.admissions[..count],
    };
    let results = &mut outcomes[..];
    scratch
        .processor
        .process_batch(&mut adapter, |index, result: ProcessResult| {
            let Some(slot) = results.get_mut(index) else {
                return;
            };
            *slot = match result {
                // The rotation id is the one admission recorded, filled in below (the
                // admissions are the adapter's until the batch is done).
                Ok((processed, _)) => match processed.hop {
                    Hop::Forward { next_hop, delay_ns } => Outcome::Forward {
                        next_hop,
                        delay_ns,
                        rotation_id: 0,
                    },
                    Hop::Final {
                        destination,
                        identifier,
                    } => Outcome::Final {
                        destination,
                        identifier,
                        rotation_id: 0,
                    },
                },
                Err(SphinxError::UnknownKey) => Outcome::UnknownKey,
                // Stopped by `admit`: the verdict is applied below.
                Err(SphinxError::Replayed) => Outcome::Replayed,
                Err(error) => Outcome::Malformed(error),
            };
        });
    for (outcome, admission) in outcomes.iter_mut().zip(adapter.admissions.iter()) {
        match outcome {
            Outcome::Forward { rotation_id, .. } | Outcome::Final { rotation_id, .. } => {
                *rotation_id = admission.rotation_id;
            }
            Outcome::Replayed if admission.verdict == ReplayVerdict::NoFilter => {
                *outcome = Outcome::UnknownKey;
            }
            Outcome::Replayed | Outcome::Malformed(_) | Outcome::UnknownKey => {}
        }
    }
}

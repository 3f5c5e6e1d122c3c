//! The I/O-free mixnode engine core: one per CPU core, fed `(now, packet)` and timeouts,
//! returning [`Action`]s. No sockets, no clock, no locks, no allocation after construction.
//!
//! Pipeline: `handle_packet` copies a packet into a pool buffer and queues it in the batcher;
//! a full batch (or one whose oldest packet waited `batch_flush_us`) goes through
//! [`sphinx_batch::process_batch`] (the one Sphinx seam), whose replay hook checks the shared
//! replay filter of the key that verified; forward packets wait their (capped) delay in the
//! timer wheel, then come out of `poll_action` as [`Action::Forward`].
//!
//! Driving order, after quinn-proto: after any input call `poll_action` until `None`, then
//! `poll_timeout` for the next instant `handle_timeout` has work. The caller hands every
//! buffer of a `Forward`/`Deliver` back with `release` once it has copied the bytes out.
//!
//! The contract with the runtime: `handle_packet` says what happened to the packet
//! ([`Admitted`]), and every call that may run a batch returns the [`BatchRan`]; the core reads
//! no clock, so the runtime times those calls and reports the cost with
//! [`Core::record_batch_cost`]. Drops are counted in one place, [`CoreMetrics::dropped`], under
//! their [`DropReason`]; none is queued as an action.

pub mod keys;
pub mod sphinx_batch;

use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;

use lethe_crypto::framing::{KeyRotation, PacketSize};
use lethe_crypto::sphinx::address;

use crate::batcher::Batcher;
use crate::limits::EngineConfig;
use crate::metrics::{CoreMetrics, DropReason, Stage};
use crate::pool::{BufId, BufferPool};
use crate::replay::{ReplayFilterSet, ReplayTag};
use crate::timer_wheel::{TickClock, TimerWheel};

pub use keys::{LiveKey, NodeKeys, SphinxKey};
pub use sphinx_batch::{
    process_batch, BatchScratch, Batched, FilterGate, Outcome, ReplayGate, ReplayVerdict,
};

/// What [`Core::handle_packet`] did with a packet: the runtime acts on this, not on counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admitted {
    /// Waiting in the batcher for its batch.
    Queued,
    /// It completed (or was late for) a batch, which ran: its cost is the runtime's to report
    /// ([`Core::record_batch_cost`]), and its actions are waiting in `poll_action`.
    BatchRan(BatchRan),
    /// Refused before any crypto, counted under its reason (the one drop count,
    /// [`CoreMetrics::dropped`]).
    Dropped(DropReason),
}

/// A Sphinx batch a call ran. The core reads no clock: the runtime times the call and hands
/// the cost back with [`Core::record_batch_cost`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchRan {
    pub packets: u32,
}

/// What the core asks its runtime to do.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// Send `buffer` (a Sphinx packet of `packet_len(&buffer)` bytes) to `next_hop`; its delay
    /// ended at `at_us`. Then `release` the buffer.
    Forward {
        next_hop: SocketAddr,
        at_us: u64,
        buffer: BufId,
        /// The rotation of the key that opened the packet: a route is built with one rotation's
        /// keys, so this is the next hop's key too (the v8 frame's rotation byte).
        rotation: KeyRotation,
    },
    /// Final hop: `buffer` holds the processed packet (payload decrypted). Then `release` it.
    Deliver {
        destination: [u8; 32],
        identifier: [u8; 16],
        buffer: BufId,
    },
}

/// What the unwrap of a packet said, for [`Core::handle_decoded`]: what the Sphinx seam's
/// [`Outcome`] says of a packet that verified.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodedHop {
    Forward {
        next_hop: [u8; 32],
        delay_ns: u64,
    },
    Final {
        destination: [u8; 32],
        identifier: [u8; 16],
    },
}

/// Per-buffer state, indexed by `BufId::index` (parallel to the pool, allocated once).
#[derive(Clone, Copy)]
struct BufferMeta {
    len: u32,
    rotation: KeyRotation,
    arrived_us: u64,
    deadline_us: u64,
    next_hop: SocketAddr,
    /// The caller's tag for the packet (the runtime's trace id of the arrival; 0 untraced).
    tag: u64,
}

/// Gaps between arrivals count at most this much (µs) in the arrival-rate average: 10 ms
/// says "light load" to the hold decision (which holds for gaps of tens of µs) as well as an
/// idle hour, and a load that starts after a pause shows within ~100 packets.
const ARRIVAL_GAP_US_MAX: u64 = 10_000;

const META_EMPTY: BufferMeta = BufferMeta {
    len: 0,
    rotation: KeyRotation::Unknown,
    arrived_us: 0,
    deadline_us: 0,
    next_hop: SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)),
    tag: 0,
};

pub struct Core {
    config: EngineConfig,
    clock: TickClock,
    pool: BufferPool,
    meta: Box<[BufferMeta]>,
    batcher: Batcher<Batched>,
    /// Lane group of early (drained-socket) releases: `batch_align_packets`, 0 resolved.
    batch_align_packets: u32,
    /// `batch_hold_us`, capped by `batch_flush_us`.
    batch_hold_us: u64,
    /// Mean gap between arrivals (µs), an exponential average over ~16 packets, times 16.
    arrival_gap_us_x16: u64,
    last_arrival_us: u64,
    /// Mean time (µs) a batch of less than one lane group took, an exponential average over
    /// ~8 such batches, times 8; 0 until one is timed.
    partial_batch_us_x8: u64,
    /// The batch being processed (scratch, capacity `batch_packets_max`).
    batch: Vec<Batched>,
    outcomes: Vec<Outcome>,
    sphinx_scratch: BatchScratch,
    wheel: TimerWheel<BufId>,
    fired: Vec<BufId>,
    actions: VecDeque<Action>,
    keys: NodeKeys,
    replay: ReplayFilterSet,
    metrics: Arc<CoreMetrics>,
    /// What `crypto_per_packet` has not recorded yet (ns, < 1 µs): the histogram is in whole
    /// µs, and dropping each batch's fraction would under-report a cost of a few µs by up to a
    /// whole µs per packet.
    crypto_remainder_ns: u64,
}

impl Core {
    /// Allocates everything now. `config` must have passed `validate()`.
    pub fn new(
        config: EngineConfig,
        keys: NodeKeys,
        replay: ReplayFilterSet,
        metrics: Arc<CoreMetrics>,
        now_us: u64,
    ) -> Core {
        assert_eq!(config.validate(), Ok(()));
        let clock = TickClock::new(config.timer_tick_us);
        let batch_max = config.batch_packets_max as usize;
        let buffers = config.pool_buffers_count;
        let wheel = TimerWheel::new(
            config.timer_entries_max,
            config.timer_delay_ticks_max(),
            clock.now_tick(now_us),
        );
        // Every action carries a pool buffer (drops are counted, not queued).
        let actions_max = buffers as usize;
        let core = Core {
            pool: BufferPool::new(buffers, config.pool_buffer_bytes),
            meta: vec![META_EMPTY; buffers as usize].into_boxed_slice(),
            batcher: Batcher::new(config.batch_packets_max, config.batch_flush_us),
            batch_align_packets: match config.batch_align_packets {
                0 => lethe_crypto::x25519::simd_path().lanes() as u32,
                n => n,
            },
            batch_hold_us: config.batch_hold_us.min(config.batch_flush_us),
            // Starts as an idle node's: nothing is held until a load shows in the arrivals.
            arrival_gap_us_x16: ARRIVAL_GAP_US_MAX * 16,
            last_arrival_us: now_us,
            partial_batch_us_x8: 0,
            batch: Vec::with_capacity(batch_max),
            outcomes: Vec::with_capacity(batch_max),
            sphinx_scratch: BatchScratch::new(batch_max),
            wheel,
            // Timers fired per call: bounded work per loop turn, as large as a send batch.
            fired: Vec::with_capacity(crate::limits::BATCH_PACKETS_MAX as usize),
            actions: VecDeque::with_capacity(actions_max),
            keys,
            replay,
            metrics,
            crypto_remainder_ns: 0,
            clock,
            config,
        };
        assert!(core.actions.capacity() >= actions_max);
        assert_eq!(core.meta.len(), core.pool.capacity() as usize);
        core
    }

    /// The runtime's measure of a batch a call ran (`cost_ns`: the call's duration): feeds the
    /// `crypto_per_packet` histogram, and the cost of a partial lane group that decides whether
    /// one is held (until a partial group is reported none is).
    pub fn record_batch_cost(&mut self, ran: BatchRan, cost_ns: u64) {
        let packets = u64::from(ran.packets.max(1));
        let cost_us = cost_ns / 1_000;
        if packets < u64::from(self.batch_align_packets) {
            let avg_x8 = self.partial_batch_us_x8;
            // avg += (batch - avg) / 8, kept times 8; the first one sets it.
            self.partial_batch_us_x8 = match avg_x8 {
                0 => cost_us.saturating_mul(8),
                _ => (avg_x8 - avg_x8 / 8).saturating_add(cost_us),
            };
        }
        // In ns, the fraction of a µs carried to the next batch: the recorded sum stays within
        // 1 µs of the true total (the mean is exact), not 1 µs short per batch.
        let per_packet_ns = (cost_ns / packets).saturating_add(self.crypto_remainder_ns);
        self.crypto_remainder_ns = per_packet_ns % 1_000;
        self.metrics
            .stage(Stage::CryptoPerPacket)
            .record(per_packet_ns / 1_000);
    }

    /// Installs new keys and their replay filters (rotation). Packets already queued are
    /// processed with the new set.
    pub fn set_keys(&mut self, keys: NodeKeys, replay: ReplayFilterSet) {
        self.keys = keys;
        self.replay = replay;
    }

    pub fn keys(&self) -> &NodeKeys {
        &self.keys
    }

    pub fn metrics(&self) -> &Arc<CoreMetrics> {
        &self.metrics
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Packets waiting for their delay.
    pub fn delayed_count(&self) -> u32 {
        self.wheel.len()
    }

    /// Packets waiting for their batch.
    pub fn batched_count(&self) -> u32 {
        self.batcher.len()
    }

    /// Buffers in use (queued, delayed, or handed out and not yet released).
    pub fn buffers_in_use(&self) -> u32 {
        self.pool.capacity() - self.pool.available()
    }

    /// A received Sphinx packet (the frame's packet bytes) and the frame's rotation byte.
    /// Copies it into a pool buffer; processes the batch if that filled it (or its oldest
    /// packet's flush deadline had passed).
    pub fn handle_packet(&mut self, now_us: u64, rotation: KeyRotation, packet: &[u8]) -> Admitted {
        self.handle_packet_tagged(now_us, rotation, packet, 0)
    }

    /// [`Core::handle_packet`] with a tag the packet's buffer keeps until it is released
    /// ([`Core::tag`]): the runtime's tracing names a departure's or delivery's input with it.
    pub fn handle_packet_tagged(
        &mut self,
        now_us: u64,
        rotation: KeyRotation,
        packet: &[u8],
        tag: u64,
    ) -> Admitted {
        let id = match self.admit(now_us, packet, tag) {
            Ok(id) => id,
            Err(reason) => return Admitted::Dropped(reason),
        };
        assert!(self.batch.is_empty());
        let batched = Batched {
            buffer: id,
            len: packet.len() as u32,
            rotation,
        };
        if let Some(drain) = self.batcher.push(now_us, batched) {
            self.batch.extend(drain);
        }
        match self.run_batch(now_us) {
            Some(ran) => Admitted::BatchRan(ran),
            None => Admitted::Queued,
        }
    }

    /// A packet whose unwrap the caller did: `packet` holds the bytes as they leave this hop
    /// and `hop` what the unwrap said. This is the simulator's cost model (packets carried in
    /// the clear, no crypto); everything after the unwrap is the Sphinx path's own: the size
    /// check, a pool buffer, the primary key's replay filter (keyed by `replay_tag`), the delay
    /// in the timer wheel, every drop under its reason, the batch accounting. The packet is a
    /// batch of one and waits in no batcher: the caller models the processing time.
    pub fn handle_decoded(
        &mut self,
        now_us: u64,
        packet: &[u8],
        hop: DecodedHop,
        replay_tag: &ReplayTag,
        tag: u64,
    ) -> Admitted {
        let id = match self.admit(now_us, packet, tag) {
            Ok(id) => id,
            Err(reason) => return Admitted::Dropped(reason),
        };
        // The wheel's clamp is relative to its own time: bring it to now first (as a batch does).
        self.fire_timers(now_us);
        self.metrics.batch_packets.record(1);
        self.metrics.stage(Stage::BatchWait).record(0);
        let rotation_id = self.keys.primary.rotation_id;
        let outcome = match (self.replay.check_and_insert(rotation_id, replay_tag), hop) {
            (None, _) => Outcome::UnknownKey,
            (Some(true), _) => Outcome::Replayed,
            (Some(false), DecodedHop::Forward { next_hop, delay_ns }) => Outcome::Forward {
                next_hop,
                delay_ns,
                rotation_id,
            },
            (
                Some(false),
                DecodedHop::Final {
                    destination,
                    identifier,
                },
            ) => Outcome::Final {
                destination,
                identifier,
                rotation_id,
            },
        };
        self.route_outcome(now_us, id, outcome);
        self.fire_timers(now_us);
        Admitted::BatchRan(BatchRan { packets: 1 })
    }

    /// Counts a packet in and copies it into a pool buffer tagged `tag`, or says why not.
    fn admit(&mut self, now_us: u64, packet: &[u8], tag: u64) -> Result<BufId, DropReason> {
        CoreMetrics::add(&self.metrics.packets_received, 1);
        self.note_arrival(now_us);
        let Some(size) = PacketSize::from_sphinx_packet_len(packet.len()) else {
            return Err(self.drop_packet(DropReason::Malformed));
        };
        if !self.config.packet_sizes.contains(size) {
            return Err(self.drop_packet(DropReason::PacketSizeDisabled));
        }
        // `validate` checked every enabled size fits a buffer.
        assert!(packet.len() <= self.pool.buffer_bytes() as usize);
        let Some(id) = self.pool.alloc() else {
            return Err(self.drop_packet(DropReason::Overload));
        };
        self.pool.get_mut(&id)[..packet.len()].copy_from_slice(packet);
        let meta = &mut self.meta[id.index() as usize];
        meta.len = packet.len() as u32;
        meta.arrived_us = now_us;
        meta.tag = tag;
        Ok(id)
    }

    /// A frame the decoder skipped (unknown packet type, bad rotation byte): counted only.
    pub fn handle_skipped_frame(&mut self) {
        CoreMetrics::add(&self.metrics.packets_received, 1);
        self.drop_packet(DropReason::Malformed);
    }

    /// Flushes a due batch and fires due timers.
    pub fn handle_timeout(&mut self, now_us: u64) -> Option<BatchRan> {
        assert!(self.batch.is_empty());
        if let Some(drain) = self.batcher.poll(now_us) {
            self.batch.extend(drain);
        }
        let ran = self.run_batch(now_us);
        self.fire_timers(now_us);
        ran
    }

    /// The runtime has nothing more to read now: processes the batched packets in whole lane
    /// groups (`EngineConfig::batch_align_packets`), all of them if fewer than one group. The
    /// rest (the newest, fewer than a group) join the next batch or go at their flush
    /// deadline: past a whole group a packet costs about as much as the next full group, and a
    /// node at a steady moderate load that paid for them would run close to saturation.
    ///
    /// Less than a group pending is held for the rest of it (`EngineConfig::batch_hold_us`)
    /// when it arrived faster than a partial group takes to process (so small batches would
    /// fall behind) and the recent arrival rate says the rest comes in time; otherwise it goes.
    pub fn flush_drained(&mut self, now_us: u64) -> Option<BatchRan> {
        assert!(self.batch.is_empty());
        let pending = self.batcher.len();
        let lanes = self.batch_align_packets;
        if let (true, Some(oldest_us)) = (pending < lanes, self.batcher.oldest_us()) {
            let until_us = oldest_us.saturating_add(self.batch_hold_us);
            let gap_us = self.arrival_gap_us();
            let fill_us = u64::from(lanes - pending) * gap_us;
            // Held only if running these now could not keep up: they arrived faster than a
            // partial group takes to process, so the core would fall behind in small batches.
            let outpaced = u64::from(pending) * gap_us < self.partial_batch_us();
            if outpaced && now_us.saturating_add(fill_us) <= until_us && now_us < until_us {
                self.batcher.hold(until_us);
                return None;
            }
        }
        self.batch.extend(self.batcher.flush_aligned(lanes));
        self.run_batch(now_us)
    }

    /// Mean time a batch of less than one lane group took recently, µs (0: none timed yet).
    pub fn partial_batch_us(&self) -> u64 {
        self.partial_batch_us_x8 / 8
    }

    /// Mean gap between recent arrivals, µs.
    pub fn arrival_gap_us(&self) -> u64 {
        self.arrival_gap_us_x16 / 16
    }

    fn note_arrival(&mut self, now_us: u64) {
        let gap_us = now_us
            .saturating_sub(self.last_arrival_us)
            .min(ARRIVAL_GAP_US_MAX);
        self.last_arrival_us = self.last_arrival_us.max(now_us);
        // avg += (gap - avg) / 16, kept times 16 (bounded: gap <= ARRIVAL_GAP_US_MAX).
        self.arrival_gap_us_x16 = self.arrival_gap_us_x16 - self.arrival_gap_us_x16 / 16 + gap_us;
    }

    /// Processes whatever is batched now (shutdown, or the caller wants everything out).
    pub fn flush_batch(&mut self, now_us: u64) -> Option<BatchRan> {
        assert!(self.batch.is_empty());
        self.batch.extend(self.batcher.flush());
        self.run_batch(now_us)
    }

    /// The next instant `handle_timeout` has work, if any.
    pub fn poll_timeout(&self) -> Option<u64> {
        let batch = self.batcher.next_flush_deadline_us();
        let timer = self
            .wheel
            .next_deadline()
            .map(|tick| self.clock.tick_start_us(tick));
        match (batch, timer) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub fn poll_action(&mut self) -> Option<Action> {
        let action = self.actions.pop_front();
        if self.actions.is_empty() {
            // Back to the ring's start (`clear` resets it): a drained queue keeps reusing the
            // same few warm pages instead of walking its whole capacity, which the first time
            // round faults in a fresh page every ~60 actions.
            self.actions.clear();
        }
        action
    }

    /// The packet bytes of a buffer handed out in an action.
    pub fn packet(&self, id: &BufId) -> &[u8] {
        let len = self.meta[id.index() as usize].len as usize;
        &self.pool.get(id)[..len]
    }

    /// When the packet in `id` arrived (for residence-time metrics).
    pub fn arrived_us(&self, id: &BufId) -> u64 {
        self.meta[id.index() as usize].arrived_us
    }

    /// The tag the packet in `id` arrived with ([`Core::handle_packet_tagged`]).
    pub fn tag(&self, id: &BufId) -> u64 {
        self.meta[id.index() as usize].tag
    }

    /// The runtime hands a `Forward`'s buffer to egress at `handed_off_us`, its own clock read
    /// at the hand-off: records the packet's residence (arrival to hand-off) and its delay
    /// lateness (deadline `at_us` to hand-off). Both end here, not at the `now_us` of the call
    /// that fired the timer: that reading predates the batch's crypto, which a packet fired in
    /// or before the batch waits out too (and the core reads no clock of its own).
    pub fn record_hand_off(&self, id: &BufId, at_us: u64, handed_off_us: u64) {
        let residence_us = handed_off_us.saturating_sub(self.arrived_us(id));
        self.metrics
            .stage(Stage::ProcessingResidence)
            .record(residence_us);
        let lateness_us = handed_off_us.saturating_sub(at_us);
        self.metrics.stage(Stage::DelayLateness).record(lateness_us);
    }

    pub fn release(&mut self, id: BufId) {
        self.pool.free(id);
    }

    /// Shutdown: drops every packet still batched or delayed, counting them; returns how many.
    pub fn abandon_pending(&mut self) -> u32 {
        assert!(self.batch.is_empty());
        self.batch.extend(self.batcher.flush());
        let batched = self.batch.len() as u32;
        for packet in self.batch.drain(..) {
            self.pool.free(packet.buffer);
        }
        let pool = &mut self.pool;
        let delayed = self.wheel.advance(u64::MAX, u32::MAX, |id| pool.free(id));
        assert!(self.wheel.is_empty());
        let total = batched + delayed;
        self.metrics.dropped(DropReason::Shutdown, u64::from(total));
        CoreMetrics::set(&self.metrics.timer_wheel_packets, 0);
        total
    }

    /// Every packet the core drops is counted here, under its reason.
    fn drop_packet(&mut self, reason: DropReason) -> DropReason {
        self.metrics.dropped(reason, 1);
        reason
    }

    /// Runs the Sphinx seam over `self.batch`, if it holds any packet, and routes each
    /// outcome.
    fn run_batch(&mut self, now_us: u64) -> Option<BatchRan> {
        let count = self.batch.len();
        if count == 0 {
            return None;
        }
        assert!(count <= self.config.batch_packets_max as usize);
        // The wheel's clamp is relative to its own time: bring it to now first.
        self.fire_timers(now_us);
        self.metrics.batch_packets.record(count as u64);
        process_batch(
            &mut self.pool,
            &self.batch,
            &self.keys,
            FilterGate(&self.replay),
            &mut self.sphinx_scratch,
            &mut self.outcomes,
        );
        assert_eq!(self.outcomes.len(), count);
        let mut batch = std::mem::take(&mut self.batch);
        for (index, Batched { buffer: id, .. }) in batch.drain(..).enumerate() {
            let outcome = self.outcomes[index];
            let waited_us = now_us.saturating_sub(self.meta[id.index() as usize].arrived_us);
            self.metrics.stage(Stage::BatchWait).record(waited_us);
            self.route_outcome(now_us, id, outcome);
        }
        self.batch = batch;
        self.outcomes.clear();
        self.fire_timers(now_us);
        Some(BatchRan {
            packets: count as u32,
        })
    }

    fn route_outcome(&mut self, now_us: u64, id: BufId, outcome: Outcome) {
        let reason = match outcome {
            Outcome::Forward {
                next_hop,
                delay_ns,
                rotation_id,
            } => match address::decode(&next_hop) {
                Ok(next_hop) => {
                    // The rotation the packet leaves with: its route was built with one
                    // rotation's keys, the one whose key opened it here.
                    self.meta[id.index() as usize].rotation =
                        KeyRotation::for_rotation_id(rotation_id);
                    return self.schedule(now_us, id, next_hop, delay_ns);
                }
                Err(_) => DropReason::UnknownNextHop,
            },
            Outcome::Final {
                destination,
                identifier,
                ..
            } => {
                CoreMetrics::add(&self.metrics.packets_delivered, 1);
                let deliver = Action::Deliver {
                    destination,
                    identifier,
                    buffer: id,
                };
                return self.push_action(deliver);
            }
            Outcome::Malformed(_) => DropReason::Malformed,
            Outcome::Replayed => DropReason::Replayed,
            Outcome::UnknownKey => DropReason::UnknownKey,
        };
        self.pool.free(id);
        self.drop_packet(reason);
    }

    fn schedule(&mut self, now_us: u64, id: BufId, next_hop: SocketAddr, delay_ns: u64) {
        let delay_us_max = self.config.timer_delay_ms_max * 1_000;
        let mut delay_us = delay_ns.div_ceil(1_000);
        if delay_us > delay_us_max {
            CoreMetrics::add(&self.metrics.packets_delay_clamped, 1);
            delay_us = delay_us_max;
        }
        // The delay runs from arrival, so batching does not stretch the mixing delay (the
        // packet still never leaves before it has been processed).
        let meta = &mut self.meta[id.index() as usize];
        let deadline_us = meta.arrived_us.saturating_add(delay_us);
        debug_assert!(meta.arrived_us <= now_us);
        meta.next_hop = next_hop;
        meta.deadline_us = deadline_us;
        // A deadline already passed (zero delay, or the delay ran out while batched) is due
        // now: the current tick, not the next one (`deadline_tick` rounds up), so it fires in
        // this turn's `fire_timers` instead of waiting up to a tick for the timer loop.
        let tick = if deadline_us <= now_us {
            self.clock.now_tick(now_us)
        } else {
            self.clock.deadline_tick(deadline_us)
        };
        match self.wheel.insert(tick, id) {
            Ok(_) => CoreMetrics::set(&self.metrics.timer_wheel_packets, self.wheel.len().into()),
            Err(full) => {
                self.pool.free(full.0);
                self.drop_packet(DropReason::Overload);
            }
        }
    }

    /// Moves due packets out of the wheel into `Forward` actions, bounded by the free room in
    /// the action queue (the rest stay due and fire on the next call).
    fn fire_timers(&mut self, now_us: u64) {
        let room = self.actions.capacity() - self.actions.len();
        let limit = room.min(self.fired.capacity()) as u32;
        let now_tick = self.clock.now_tick(now_us);
        let fired = &mut self.fired;
        assert!(fired.is_empty());
        self.wheel.advance(now_tick, limit, |id| fired.push(id));
        let mut fired = std::mem::take(&mut self.fired);
        for id in fired.drain(..) {
            let meta = self.meta[id.index() as usize];
            // Lateness is recorded at the hand-off (`record_hand_off`), not here: `now_us`
            // may predate the crypto of the batch this call follows.
            CoreMetrics::add(&self.metrics.packets_forwarded, 1);
            self.push_action(Action::Forward {
                next_hop: meta.next_hop,
                at_us: meta.deadline_us,
                buffer: id,
                rotation: meta.rotation,
            });
        }
        self.fired = fired;
        CoreMetrics::set(&self.metrics.timer_wheel_packets, self.wheel.len().into());
    }

    fn push_action(&mut self, action: Action) {
        // Every action holds a pool buffer, and the queue has room for the whole pool, so this
        // never grows the queue.
        assert!(self.actions.len() < self.actions.capacity());
        self.actions.push_back(action);
    }
}

//! The client's state machine, I/O-free: what to send next, what a delivery means. The
//! runtime ([`super::runtime`]) feeds it time (ms since start), gateway deliveries and
//! commands, and sends what it returns.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use lethe_crypto::framing::PacketSize;
use lethe_crypto::sphinx::{Surb, SurbRecovery};
use rand::rngs::StdRng;
use rand::{Rng, RngExt};
use tokio::sync::watch;
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

use super::ack::AckKey;
use super::address::Recipient;
use super::config::LoopixParams;
use super::message::{
    self, decode_body, encode_body, forward_fragment_capacity, open_forward, open_reply,
    reply_fragment_capacity, seal_forward, seal_reply, AttachedSurb, Fragment, FragmentHeader,
    Reassembler, ReassemblyLimits, FLAG_IS_REPLY, FLAG_LOOP_COVER, REPLY_KEY_BYTES,
};
use super::packets::{reply_packet, BuildError, Builder, Built, Delays, SelfRoute};
use super::retransmit::{AckOutcome, AckWait, Due, FragmentKey, Tracker};
use crate::proto::DeliveryKind;
use crate::topology::Topology;
use lethe_proto::loopix::schedule::{Schedule, ScheduleParams, Tick};

/// Counters, shared with handles (all monotonic except `queued` and `bandwidth_remaining`).
#[derive(Debug, Default)]
pub struct Stats {
    pub real_sent: AtomicU64,
    pub replies_sent: AtomicU64,
    pub drop_cover_sent: AtomicU64,
    pub loop_cover_sent: AtomicU64,
    pub acks_received: AtomicU64,
    pub fragments_acked: AtomicU64,
    pub stray_acks: AtomicU64,
    pub forged_acks: AtomicU64,
    pub retransmitted: AtomicU64,
    pub fragments_given_up: AtomicU64,
    pub messages_received: AtomicU64,
    pub replies_received: AtomicU64,
    pub loop_cover_received: AtomicU64,
    pub undecryptable: AtomicU64,
    pub fragments_refused: AtomicU64,
    pub duplicates: AtomicU64,
    pub build_failures: AtomicU64,
    pub outgoing_overflow: AtomicU64,
    pub application_overflow: AtomicU64,
    pub confirm_overflow: AtomicU64,
    pub surbs_evicted: AtomicU64,
    pub reconnects: AtomicU64,
    pub queued: AtomicU64,
    pub bandwidth_remaining: AtomicU64,
    /// The gateway refused forwards for lack of bandwidth (or reported a zero balance) and no
    /// credential was there to spend.
    pub no_bandwidth: AtomicU64,
    /// Credentials the gateway credited.
    pub credentials_spent: AtomicU64,
}

/// A copy of [`Stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct StatsSnapshot {
    pub real_sent: u64,
    pub replies_sent: u64,
    pub drop_cover_sent: u64,
    pub loop_cover_sent: u64,
    pub acks_received: u64,
    pub fragments_acked: u64,
    pub stray_acks: u64,
    pub forged_acks: u64,
    pub retransmitted: u64,
    pub fragments_given_up: u64,
    pub messages_received: u64,
    pub replies_received: u64,
    pub loop_cover_received: u64,
    pub undecryptable: u64,
    pub fragments_refused: u64,
    pub duplicates: u64,
    pub build_failures: u64,
    pub outgoing_overflow: u64,
    pub application_overflow: u64,
    pub confirm_overflow: u64,
    pub surbs_evicted: u64,
    pub reconnects: u64,
    pub queued: u64,
    pub bandwidth_remaining: u64,
    pub no_bandwidth: u64,
    pub credentials_spent: u64,
}

impl Stats {
    pub fn snapshot(&self) -> StatsSnapshot {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StatsSnapshot {
            real_sent: l(&self.real_sent),
            replies_sent: l(&self.replies_sent),
            drop_cover_sent: l(&self.drop_cover_sent),
            loop_cover_sent: l(&self.loop_cover_sent),
            acks_received: l(&self.acks_received),
            fragments_acked: l(&self.fragments_acked),
            stray_acks: l(&self.stray_acks),
            forged_acks: l(&self.forged_acks),
            retransmitted: l(&self.retransmitted),
            fragments_given_up: l(&self.fragments_given_up),
            messages_received: l(&self.messages_received),
            replies_received: l(&self.replies_received),
            loop_cover_received: l(&self.loop_cover_received),
            undecryptable: l(&self.undecryptable),
            fragments_refused: l(&self.fragments_refused),
            duplicates: l(&self.duplicates),
            build_failures: l(&self.build_failures),
            outgoing_overflow: l(&self.outgoing_overflow),
            application_overflow: l(&self.application_overflow),
            confirm_overflow: l(&self.confirm_overflow),
            surbs_evicted: l(&self.surbs_evicted),
            reconnects: l(&self.reconnects),
            queued: l(&self.queued),
            bandwidth_remaining: l(&self.bandwidth_remaining),
            no_bandwidth: l(&self.no_bandwidth),
            credentials_spent: l(&self.credentials_spent),
        }
    }
}

pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Where an outgoing message stands. Replies (through SURBs) are not acknowledged: only
/// `sent` moves for them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SendProgress {
    pub fragments: usize,
    /// Fragments sent at least once.
    pub sent: usize,
    pub acked: usize,
    /// Fragments given up on after the maximum of retransmissions.
    pub failed: usize,
}

impl SendProgress {
    /// Every fragment was acknowledged.
    pub fn delivered(&self) -> bool {
        self.acked == self.fragments
    }

    /// Every fragment is settled (acknowledged or given up).
    pub fn finished(&self) -> bool {
        self.acked + self.failed == self.fragments
    }
}

/// Returned by a send: the message id (what the recipient sees) and its progress.
#[derive(Debug, Clone)]
pub struct MessageTicket {
    pub message_id: u64,
    pub progress: watch::Receiver<SendProgress>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error("message: {0}")]
    Message(#[from] message::MessageError),
    #[error("cannot build packets: {0}")]
    Build(String),
    #[error("no topology yet")]
    NoTopology,
    #[error("unknown SURB bundle {0}")]
    UnknownBundle(u64),
    #[error("the reply needs {needed} SURBs, {available} left in the bundle")]
    NotEnoughSurbs { needed: usize, available: usize },
    #[error("too many reply SURBs requested ({0}, at most {max})", max = message::SURBS_PER_MESSAGE_MAX)]
    TooManySurbs(usize),
    #[error("the client has stopped")]
    Stopped,
}

impl From<BuildError> for SendError {
    fn from(e: BuildError) -> SendError {
        SendError::Build(e.to_string())
    }
}

/// A complete message for the application, not yet confirmed to the gateway.
#[derive(Debug)]
pub struct Received {
    pub message_id: u64,
    pub data: Vec<u8>,
    /// Reply SURBs the sender attached (use [`Received::surb_bundle`] with `reply`).
    pub reply_surbs: usize,
    pub surb_bundle: Option<u64>,
    /// For a reply: the id of our message whose SURBs carried it.
    pub in_reply_to: Option<u64>,
    pub delivery_ids: Vec<u64>,
}

/// What a delivery asks the runtime to do.
#[derive(Debug, Default)]
pub struct DeliveryOutcome {
    /// Delivery ids to confirm now (ACKs, cover, garbage, duplicates of finished messages).
    pub confirm: Vec<u64>,
    pub message: Option<Received>,
}

/// Bounds of the core's stores.
#[derive(Debug, Clone, Copy)]
pub struct CoreLimits {
    pub reassembly: ReassemblyLimits,
    /// Fragments waiting for the Poisson stream before commands are no longer read.
    pub queue_high_water: usize,
    /// Fragments not yet acknowledged (queued or in flight) before commands are no longer
    /// read.
    pub unacked_high_water: usize,
    /// Reply-SURB recovery records kept (oldest evicted first).
    pub surb_records_max: usize,
    /// Received reply SURBs kept (oldest bundle evicted first).
    pub received_surbs_max: usize,
}

impl Default for CoreLimits {
    fn default() -> Self {
        CoreLimits {
            reassembly: ReassemblyLimits::default(),
            queue_high_water: 4096,
            unacked_high_water: 65_536,
            surb_records_max: 100_000,
            received_surbs_max: 20_000,
        }
    }
}

/// Where one fragment of an outgoing message stands. `progress` is counted from these
/// transitions alone, each at most once per fragment, so its counts cannot exceed the number
/// of fragments whatever the network repeats or reorders.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FragmentState {
    Queued,
    /// At least one transmission left.
    Sent,
    Acked,
    GivenUp,
}

struct Outgoing {
    recipient: Recipient,
    fragments: Vec<Fragment>,
    states: Vec<FragmentState>,
    progress: SendProgress,
    watch: watch::Sender<SendProgress>,
}

struct SurbRecord {
    recovery: SurbRecovery,
    reply_key: Zeroizing<[u8; REPLY_KEY_BYTES]>,
    message_id: u64,
    created_ms: u64,
}

struct Bundle {
    surbs: VecDeque<AttachedSurb>,
    created_ms: u64,
}

enum Queued {
    Fragment(FragmentKey),
    /// A reply packet, ready; its message's progress (`sent` only: replies are not acked).
    Reply(Box<Built>, Arc<watch::Sender<SendProgress>>),
}

pub struct Core {
    own: SelfRoute,
    encryption: StaticSecret,
    encryption_key: [u8; 32],
    ack_key: AckKey,
    params: LoopixParams,
    size: PacketSize,
    limits: CoreLimits,
    rng: StdRng,
    topology: Option<Arc<Topology>>,
    tracker: Tracker,
    reassembler: Reassembler,
    outgoing: HashMap<u64, Outgoing>,
    queue: VecDeque<Queued>,
    records: HashMap<[u8; 16], SurbRecord>,
    records_order: VecDeque<[u8; 16]>,
    bundles: HashMap<u64, Bundle>,
    bundles_order: VecDeque<u64>,
    received_surbs: usize,
    next_bundle: u64,
    build_failed: bool,
    stats: Arc<Stats>,
    /// The real/drop-cover and loop-cover streams.
    schedule: Schedule,
}

impl Core {
    pub fn new(
        identity_seed: &[u8; 32],
        encryption_secret: &[u8; 32],
        gateway: [u8; 32],
        params: LoopixParams,
        limits: CoreLimits,
        stats: Arc<Stats>,
    ) -> Core {
        let mut rng: StdRng = rand::make_rng();
        let encryption = StaticSecret::from(*encryption_secret);
        let encryption_key = PublicKey::from(&encryption).to_bytes();
        let ack_key = AckKey::random(&mut rng);
        let first_ack_id = rng.random::<u64>();
        let schedule = Schedule::new(
            ScheduleParams {
                real_mean_us: params.message_sending_average_delay_ms * 1000.0,
                loop_mean_us: params.loop_cover_average_delay_ms * 1000.0,
                disable_drop_cover: params.disable_drop_cover,
                disable_loop_cover: params.disable_loop_cover,
            },
            0,
            &mut rng,
        );
        Core {
            own: SelfRoute {
                identity: crate::keyfile::ed25519_public(identity_seed),
                gateway,
            },
            encryption,
            encryption_key,
            ack_key,
            params,
            size: PacketSize::Regular,
            limits,
            rng,
            topology: None,
            tracker: Tracker::new(
                AckWait {
                    multiplier: params.ack_wait_multiplier,
                    addition_ms: params.ack_wait_addition_ms,
                },
                params.max_retransmissions,
                first_ack_id,
            ),
            reassembler: Reassembler::new(limits.reassembly),
            outgoing: HashMap::new(),
            queue: VecDeque::new(),
            records: HashMap::new(),
            records_order: VecDeque::new(),
            bundles: HashMap::new(),
            bundles_order: VecDeque::new(),
            received_surbs: 0,
            next_bundle: 1,
            build_failed: false,
            stats,
            schedule,
        }
    }

    pub fn address(&self) -> Recipient {
        Recipient {
            identity: self.own.identity,
            encryption_key: self.encryption_key,
            gateway: self.own.gateway,
        }
    }

    pub fn set_topology(&mut self, topology: Arc<Topology>) {
        self.topology = Some(topology);
    }

    pub fn topology(&self) -> Option<&Arc<Topology>> {
        self.topology.as_ref()
    }

    pub fn queue_len(&self) -> usize {
        self.queue.len()
    }

    /// Whether new commands may be accepted (the queue and the unacknowledged fragments are
    /// below their high-water marks; one message may overshoot them).
    pub fn accepting(&self) -> bool {
        self.queue.len() < self.limits.queue_high_water
            && self.tracker.pending() < self.limits.unacked_high_water
    }

    pub fn has_real(&self) -> bool {
        !self.queue.is_empty()
    }

    fn sync_queued(&self) {
        self.stats
            .queued
            .store(self.queue.len() as u64, Ordering::Relaxed);
    }

    fn builder<'a>(&self, topology: &'a Topology) -> Builder<'a> {
        Builder {
            topology,
            own: self.own,
            delays: Delays {
                packet_ms: self.params.average_packet_delay_ms,
                ack_ms: self.params.average_ack_delay_ms,
            },
            size: self.size,
        }
    }

    /// Queues a message to `recipient` with `reply_surbs` reply SURBs attached.
    pub fn send(
        &mut self,
        recipient: Recipient,
        data: &[u8],
        reply_surbs: usize,
        now_ms: u64,
    ) -> Result<MessageTicket, SendError> {
        if reply_surbs > message::SURBS_PER_MESSAGE_MAX {
            return Err(SendError::TooManySurbs(reply_surbs));
        }
        let topology = self.topology.clone().ok_or(SendError::NoTopology)?;
        // Fail now, not at send time, if the recipient's gateway is unknown.
        topology.gateway(&recipient.gateway).ok_or_else(|| {
            SendError::Build(format!(
                "recipient gateway {} is not in the topology",
                crate::keyfile::hex(&recipient.gateway)
            ))
        })?;
        let message_id = self.rng.random::<u64>();
        let mut surbs = Vec::with_capacity(reply_surbs);
        let mut identifiers = Vec::with_capacity(reply_surbs);
        for _ in 0..reply_surbs {
            let mut identifier = [0u8; 16];
            while identifier == [0u8; 16] || self.records.contains_key(&identifier) {
                self.rng.fill_bytes(&mut identifier);
            }
            let (surb, recovery) = self
                .builder(&topology)
                .reply_surb(&mut self.rng, identifier)?;
            let mut reply_key = Zeroizing::new([0u8; REPLY_KEY_BYTES]);
            self.rng.fill_bytes(&mut reply_key[..]);
            surbs.push(AttachedSurb {
                reply_key: reply_key.clone(),
                surb: surb.to_bytes(),
            });
            identifiers.push((identifier, recovery, reply_key));
        }
        let (flags, body) = encode_body(&surbs, data)?;
        let fragments = message::split(
            message_id,
            flags,
            &body,
            forward_fragment_capacity(self.size),
            self.limits.reassembly.max_message_bytes,
        )?;
        for (identifier, recovery, reply_key) in identifiers {
            self.remember_record(
                identifier,
                SurbRecord {
                    recovery,
                    reply_key,
                    message_id,
                    created_ms: now_ms,
                },
            );
        }
        let progress = SendProgress {
            fragments: fragments.len(),
            ..SendProgress::default()
        };
        let (watch, receiver) = watch::channel(progress);
        for index in 0..fragments.len() {
            let key = FragmentKey {
                message: message_id,
                index: index as u32,
            };
            // Tracked from now until settled: only a tracked fragment is ever transmitted.
            self.tracker.track(key);
            self.queue.push_back(Queued::Fragment(key));
        }
        let count = fragments.len();
        self.outgoing.insert(
            message_id,
            Outgoing {
                recipient,
                fragments,
                states: vec![FragmentState::Queued; count],
                progress,
                watch,
            },
        );
        self.sync_queued();
        Ok(MessageTicket {
            message_id,
            progress: receiver,
        })
    }

    fn remember_record(&mut self, identifier: [u8; 16], record: SurbRecord) {
        while self.records.len() >= self.limits.surb_records_max {
            match self.records_order.pop_front() {
                Some(old) => {
                    if self.records.remove(&old).is_some() {
                        bump(&self.stats.surbs_evicted);
                    }
                }
                None => break,
            }
        }
        self.records.insert(identifier, record);
        self.records_order.push_back(identifier);
    }

    /// Queues a reply through the SURBs of `bundle` (replies are not acknowledged: the
    /// recipient's gateway cannot read a SURB-ACK in them).
    pub fn reply(&mut self, bundle: u64, data: &[u8]) -> Result<MessageTicket, SendError> {
        let capacity = reply_fragment_capacity(self.size);
        let message_id = self.rng.random::<u64>();
        let fragments = message::split(
            message_id,
            FLAG_IS_REPLY,
            data,
            capacity,
            self.limits.reassembly.max_message_bytes,
        )?;
        let available = self.bundles.get(&bundle).map(|b| b.surbs.len());
        let Some(available) = available else {
            return Err(SendError::UnknownBundle(bundle));
        };
        if available < fragments.len() {
            return Err(SendError::NotEnoughSurbs {
                needed: fragments.len(),
                available,
            });
        }
        let mut built = Vec::with_capacity(fragments.len());
        {
            let Some(entry) = self.bundles.get_mut(&bundle) else {
                return Err(SendError::UnknownBundle(bundle));
            };
            for fragment in &fragments {
                let Some(attached) = entry.surbs.pop_front() else {
                    return Err(SendError::NotEnoughSurbs {
                        needed: fragments.len(),
                        available,
                    });
                };
                let surb = Surb::from_bytes(&attached.surb)
                    .map_err(|e| SendError::Build(format!("bad SURB: {e}")))?;
                let content = seal_reply(&attached.reply_key, fragment, self.size)?;
                built.push(reply_packet(&surb, &content, self.size)?);
            }
        }
        self.received_surbs = self.received_surbs.saturating_sub(fragments.len());
        if self
            .bundles
            .get(&bundle)
            .is_some_and(|b| b.surbs.is_empty())
        {
            self.bundles.remove(&bundle);
            self.bundles_order.retain(|b| *b != bundle);
        }
        let progress = SendProgress {
            fragments: fragments.len(),
            ..SendProgress::default()
        };
        let (watch, receiver) = watch::channel(progress);
        let watch = Arc::new(watch);
        for packet in built {
            self.queue
                .push_back(Queued::Reply(Box::new(packet), watch.clone()));
        }
        self.sync_queued();
        Ok(MessageTicket {
            message_id,
            progress: receiver,
        })
    }

    /// SURBs left in a received bundle.
    pub fn surbs_left(&self, bundle: u64) -> usize {
        self.bundles.get(&bundle).map_or(0, |b| b.surbs.len())
    }

    /// The next real packet of the queue (a fragment transmission or a reply), if any.
    pub fn next_real(&mut self, now_ms: u64) -> Option<Built> {
        while let Some(item) = self.queue.pop_front() {
            self.sync_queued();
            match item {
                Queued::Reply(built, progress) => {
                    bump(&self.stats.replies_sent);
                    progress.send_modify(|p| p.sent += 1);
                    return Some(*built);
                }
                Queued::Fragment(key) => {
                    if let Some(built) = self.transmit(key, now_ms) {
                        bump(&self.stats.real_sent);
                        return Some(built);
                    }
                }
            }
        }
        None
    }

    fn transmit(&mut self, key: FragmentKey, now_ms: u64) -> Option<Built> {
        let topology = self.topology.clone()?;
        let outgoing = self.outgoing.get(&key.message)?;
        let fragment = outgoing.fragments.get(key.index as usize)?.clone();
        let recipient = outgoing.recipient;
        // `None`: settled (acknowledged or given up) since it was queued; it must not leave
        // again, or its ACK would count a second time.
        let ack_id = self.tracker.transmission(key)?;
        let ack = self.ack_key.seal(ack_id);
        let result = seal_forward(
            &mut self.rng,
            &recipient.encryption_key,
            &fragment,
            self.size,
        )
        .map_err(|e| e.to_string())
        .and_then(|content| {
            self.builder(&topology)
                .to_recipient(&mut self.rng, &recipient, &content, Some(&ack))
                .map_err(|e| e.to_string())
        });
        match result {
            Ok(built) => {
                self.tracker.sent(key, now_ms, built.expected_rtt_ns);
                if let Some(outgoing) = self.outgoing.get_mut(&key.message) {
                    match outgoing.states.get_mut(key.index as usize) {
                        Some(state @ FragmentState::Queued) => {
                            *state = FragmentState::Sent;
                            outgoing.progress.sent += 1;
                            outgoing.watch.send_replace(outgoing.progress);
                        }
                        // Counted when it actually leaves, not when its timer fires: an ACK
                        // may still settle it before that.
                        Some(FragmentState::Sent) => bump(&self.stats.retransmitted),
                        _ => {}
                    }
                }
                Some(built)
            }
            Err(_) => {
                self.build_failure();
                // Try again later (a new topology may have a route).
                self.tracker.not_sent(key, now_ms.saturating_add(1000));
                None
            }
        }
    }

    /// A drop-cover packet.
    pub fn drop_cover(&mut self) -> Option<Built> {
        let topology = self.topology.clone()?;
        match self.builder(&topology).drop_cover(&mut self.rng) {
            Ok(built) => {
                bump(&self.stats.drop_cover_sent);
                Some(built)
            }
            Err(_) => {
                self.build_failure();
                None
            }
        }
    }

    /// A loop-cover packet: to ourselves, with a SURB-ACK (as real packets), dropped on arrival.
    pub fn loop_cover(&mut self) -> Option<Built> {
        let topology = self.topology.clone()?;
        let fragment = Fragment {
            header: FragmentHeader {
                message_id: self.rng.random::<u64>(),
                index: 0,
                count: 1,
                flags: FLAG_LOOP_COVER,
                len: 0,
            },
            data: Vec::new(),
        };
        let ack = self.ack_key.seal(self.tracker.fresh_id());
        let own = self.address();
        let result = seal_forward(&mut self.rng, &self.encryption_key, &fragment, self.size)
            .map_err(|e| e.to_string())
            .and_then(|content| {
                self.builder(&topology)
                    .to_recipient(&mut self.rng, &own, &content, Some(&ack))
                    .map_err(|e| e.to_string())
            });
        match result {
            Ok(built) => {
                bump(&self.stats.loop_cover_sent);
                Some(built)
            }
            Err(_) => {
                self.build_failure();
                None
            }
        }
    }

    /// Handles one gateway delivery.
    pub fn deliver(
        &mut self,
        delivery_id: u64,
        kind: DeliveryKind,
        identifier: [u8; 16],
        bytes: &mut [u8],
        now_ms: u64,
    ) -> DeliveryOutcome {
        let mut outcome = DeliveryOutcome::default();
        match kind {
            DeliveryKind::Ack => {
                outcome.confirm.push(delivery_id);
                bump(&self.stats.acks_received);
                match self.ack_key.open(bytes) {
                    None => bump(&self.stats.forged_acks),
                    Some(ack_id) => match self.tracker.on_ack(ack_id) {
                        AckOutcome::Acked(key) => {
                            bump(&self.stats.fragments_acked);
                            self.settle(key, true);
                        }
                        AckOutcome::Unknown => bump(&self.stats.stray_acks),
                    },
                }
            }
            DeliveryKind::Message => match open_forward(&self.encryption, bytes) {
                Err(_) => {
                    bump(&self.stats.undecryptable);
                    outcome.confirm.push(delivery_id);
                }
                Ok(fragment) => {
                    let flags = fragment.header.flags;
                    if flags & FLAG_LOOP_COVER != 0 {
                        bump(&self.stats.loop_cover_received);
                        outcome.confirm.push(delivery_id);
                    } else if flags & FLAG_IS_REPLY != 0 {
                        // Replies only come through SURBs.
                        bump(&self.stats.fragments_refused);
                        outcome.confirm.push(delivery_id);
                    } else {
                        self.reassemble(fragment, delivery_id, None, now_ms, &mut outcome);
                    }
                }
            },
            DeliveryKind::Reply => {
                let opened = self.records.get(&identifier).and_then(|record| {
                    let plaintext = record.recovery.recover_plaintext(bytes).ok()?;
                    let fragment = open_reply(&record.reply_key, plaintext).ok()?;
                    Some((fragment, record.message_id))
                });
                match opened {
                    Some((fragment, in_reply_to)) if fragment.header.flags == FLAG_IS_REPLY => {
                        self.reassemble(
                            fragment,
                            delivery_id,
                            Some(in_reply_to),
                            now_ms,
                            &mut outcome,
                        );
                    }
                    _ => {
                        bump(&self.stats.undecryptable);
                        outcome.confirm.push(delivery_id);
                    }
                }
            }
        }
        outcome
    }

    fn reassemble(
        &mut self,
        fragment: Fragment,
        delivery_id: u64,
        in_reply_to: Option<u64>,
        now_ms: u64,
        outcome: &mut DeliveryOutcome,
    ) {
        match self.reassembler.insert(fragment, Some(delivery_id), now_ms) {
            Err(_) => {
                bump(&self.stats.fragments_refused);
                outcome.confirm.push(delivery_id);
            }
            Ok(Err(message::Accepted::AlreadyComplete)) => {
                bump(&self.stats.duplicates);
                outcome.confirm.push(delivery_id);
            }
            Ok(Err(message::Accepted::Duplicate)) => bump(&self.stats.duplicates),
            Ok(Err(message::Accepted::Incomplete)) => {}
            Ok(Ok(complete)) => {
                let (surbs, data) = match decode_body(complete.flags, &complete.body) {
                    Ok((surbs, data)) => (surbs, data.to_vec()),
                    Err(_) => {
                        bump(&self.stats.fragments_refused);
                        outcome.confirm.extend(complete.delivery_ids);
                        return;
                    }
                };
                let reply_surbs = surbs.len();
                let surb_bundle = (reply_surbs > 0).then(|| self.store_bundle(surbs, now_ms));
                if in_reply_to.is_some() {
                    bump(&self.stats.replies_received);
                } else {
                    bump(&self.stats.messages_received);
                }
                outcome.message = Some(Received {
                    message_id: complete.message_id,
                    data,
                    reply_surbs,
                    surb_bundle,
                    in_reply_to,
                    delivery_ids: complete.delivery_ids,
                });
            }
        }
    }

    fn store_bundle(&mut self, surbs: Vec<AttachedSurb>, now_ms: u64) -> u64 {
        let count = surbs.len();
        while self.received_surbs + count > self.limits.received_surbs_max {
            let Some(old) = self.bundles_order.pop_front() else {
                break;
            };
            if let Some(bundle) = self.bundles.remove(&old) {
                self.received_surbs = self.received_surbs.saturating_sub(bundle.surbs.len());
                self.stats
                    .surbs_evicted
                    .fetch_add(bundle.surbs.len() as u64, Ordering::Relaxed);
            }
        }
        let id = self.next_bundle;
        self.next_bundle += 1;
        self.received_surbs += count;
        self.bundles.insert(
            id,
            Bundle {
                surbs: surbs.into(),
                created_ms: now_ms,
            },
        );
        self.bundles_order.push_back(id);
        id
    }

    /// The application could not take a message: forget it so a redelivery counts again.
    pub fn undeliverable(&mut self, message: &Received) {
        self.reassembler.forget_completed(message.message_id);
        if let Some(bundle) = message.surb_bundle {
            if let Some(b) = self.bundles.remove(&bundle) {
                self.received_surbs = self.received_surbs.saturating_sub(b.surbs.len());
            }
            self.bundles_order.retain(|b| *b != bundle);
        }
        bump(&self.stats.application_overflow);
    }

    fn settle(&mut self, key: FragmentKey, acked: bool) {
        let Some(outgoing) = self.outgoing.get_mut(&key.message) else {
            return;
        };
        let Some(state) = outgoing.states.get_mut(key.index as usize) else {
            return;
        };
        match (*state, acked) {
            // Settled already: a second outcome for one fragment must not count (the tracker
            // gives one; this keeps `acked + failed <= fragments` whatever it does).
            (FragmentState::Acked | FragmentState::GivenUp, _) => return,
            (FragmentState::Queued, true) => {
                // Only a packet that left carries an ACK we can open; should a first
                // transmission ever be acknowledged before it is counted, count it as sent.
                outgoing.progress.sent += 1;
                *state = FragmentState::Acked;
                outgoing.progress.acked += 1;
            }
            (FragmentState::Sent, true) => {
                *state = FragmentState::Acked;
                outgoing.progress.acked += 1;
            }
            (_, false) => {
                *state = FragmentState::GivenUp;
                outgoing.progress.failed += 1;
            }
        }
        outgoing.watch.send_replace(outgoing.progress);
        if outgoing.progress.finished() {
            self.outgoing.remove(&key.message);
        }
    }

    fn build_failure(&mut self) {
        bump(&self.stats.build_failures);
        self.build_failed = true;
    }

    /// Whether building a packet failed since the last call (a topology refresh may help).
    pub fn take_build_failure(&mut self) -> bool {
        std::mem::take(&mut self.build_failed)
    }

    /// The earliest timer (retransmission) in ms.
    pub fn next_timer(&self) -> Option<u64> {
        self.tracker.next_deadline()
    }

    /// Fires timers: retransmissions are queued at the front; returns delivery ids of expired
    /// incomplete messages to confirm (give up on them).
    pub fn on_timers(&mut self, now_ms: u64) -> Vec<u64> {
        for due in self.tracker.due(now_ms) {
            match due {
                Due::Retransmit(key) => {
                    if self.outgoing.contains_key(&key.message) {
                        // `retransmitted` is counted in `transmit`, if it still leaves.
                        self.queue.push_front(Queued::Fragment(key));
                    } else {
                        self.tracker.settle(key);
                    }
                }
                Due::GiveUp(key) => {
                    bump(&self.stats.fragments_given_up);
                    self.settle(key, false);
                }
            }
        }
        self.sync_queued();
        let lifetime_ms = self.params.reply_surb_lifetime_s.saturating_mul(1000);
        while let Some(id) = self.records_order.front() {
            match self.records.get(id) {
                Some(r) if now_ms.saturating_sub(r.created_ms) <= lifetime_ms => break,
                _ => {
                    if let Some(id) = self.records_order.pop_front() {
                        self.records.remove(&id);
                    }
                }
            }
        }
        while let Some(id) = self.bundles_order.front() {
            match self.bundles.get(id) {
                Some(b) if now_ms.saturating_sub(b.created_ms) <= lifetime_ms => break,
                _ => {
                    if let Some(id) = self.bundles_order.pop_front() {
                        if let Some(b) = self.bundles.remove(&id) {
                            self.received_surbs = self.received_surbs.saturating_sub(b.surbs.len());
                        }
                    }
                }
            }
        }
        self.reassembler.expire(now_ms)
    }

    /// Whether real packets wait for ticks of the Poisson stream (otherwise they leave as soon
    /// as the connection takes them).
    pub fn paced(&self) -> bool {
        self.schedule.paced()
    }

    /// When the next tick of either stream is due, in ms since the core started (rounded up).
    pub fn next_tick_ms(&self) -> Option<u64> {
        self.schedule.poll_timeout().map(|us| us.div_ceil(1000))
    }

    /// The packets of every tick due at `now_ms`: a real packet or drop cover per tick of the
    /// real stream, loop cover per tick of the loop stream. Disconnected, ticks pass unsent
    /// (the streams keep their rate; nothing piles up for the reconnect).
    pub fn on_ticks(&mut self, now_ms: u64, connected: bool) -> Vec<Built> {
        let mut out = Vec::new();
        while let Some(tick) = self
            .schedule
            .poll_due(now_ms.saturating_mul(1000), &mut self.rng)
        {
            if !connected {
                continue;
            }
            let built = match tick {
                Tick::Real { drop_cover } => match self.next_real(now_ms) {
                    Some(built) => Some(built),
                    None if drop_cover => self.drop_cover(),
                    None => None,
                },
                Tick::Loop => self.loop_cover(),
            };
            out.extend(built);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::net::SocketAddr;

    use lethe_crypto::sphinx::{self, address, Hop, Packet};

    use super::*;
    use crate::proto::payload::{split_forward, DROP_COVER_DESTINATION};
    use crate::topology::{Descriptor, Role};

    struct Net {
        topology: Arc<Topology>,
        secrets: HashMap<[u8; 32], StaticSecret>,
        gateway: [u8; 32],
    }

    fn net() -> Net {
        let mut secrets = HashMap::new();
        let mut node = |seed: u8, role| {
            let secret = StaticSecret::from([seed; 32]);
            let d = Descriptor {
                identity: crate::keyfile::hex(&crate::keyfile::ed25519_public(&[seed; 32])),
                sphinx_key: crate::keyfile::hex(PublicKey::from(&secret).as_bytes()),
                rotation_id: 1,
                mix_address: SocketAddr::from(([10, 0, 0, seed], 1789)),
                role,
                client_url: Some("ws://unused".into()),
                metrics_url: None,
                issued_at_s: 1,
            };
            secrets.insert(address::encode(&d.mix_address), secret);
            d
        };
        let layers = [
            vec![node(1, Role::Mixnode)],
            vec![node(2, Role::Mixnode)],
            vec![node(3, Role::Mixnode)],
        ];
        let gateway = node(4, Role::Gateway);
        let identity = gateway.identity_key().unwrap();
        Net {
            topology: Arc::new(Topology {
                epoch: 1,
                issued_at_s: 1,
                valid_until_s: u64::MAX,
                layers,
                gateways: vec![gateway],
            }),
            secrets,
            gateway: identity,
        }
    }

    type Delivery = ([u8; 32], DeliveryKind, [u8; 16], Vec<u8>);

    /// Carries a packet through the four hops and does the destination gateway's work.
    fn gateway(net: &Net, first_hop: [u8; 32], packet: Vec<u8>) -> Vec<Delivery> {
        let ack_size = packet.len() == PacketSize::Ack.packet_len();
        let mut packet = Packet::new_checked(packet).unwrap();
        let mut at = first_hop;
        let (destination, identifier) = loop {
            let processed = sphinx::process(&mut packet, &net.secrets[&at]).unwrap();
            match processed.hop {
                Hop::Forward { next_hop, .. } => at = next_hop,
                Hop::Final {
                    destination,
                    identifier,
                } => break (destination, identifier),
            }
        };
        if destination == DROP_COVER_DESTINATION {
            return Vec::new();
        }
        if identifier != [0u8; 16] {
            let payload = packet.payload().to_vec();
            return vec![(destination, DeliveryKind::Reply, identifier, payload)];
        }
        let plaintext = sphinx::recover_plaintext(packet.payload()).unwrap();
        if ack_size {
            return vec![(
                destination,
                DeliveryKind::Ack,
                identifier,
                plaintext.to_vec(),
            )];
        }
        let split = split_forward(plaintext).unwrap();
        let mut out = vec![(
            destination,
            DeliveryKind::Message,
            identifier,
            split.content.to_vec(),
        )];
        if let Some((hop, ack)) = split.ack {
            out.extend(gateway(net, *hop, ack.to_vec()));
        }
        out
    }

    fn core(seed: u8, net: &Net) -> Core {
        let params = LoopixParams {
            average_packet_delay_ms: 10.0,
            average_ack_delay_ms: 10.0,
            max_retransmissions: Some(1),
            ..LoopixParams::default()
        };
        let mut core = Core::new(
            &[seed; 32],
            &[seed + 100; 32],
            net.gateway,
            params,
            CoreLimits::default(),
            Arc::new(Stats::default()),
        );
        core.set_topology(net.topology.clone());
        core
    }

    /// Feeds deliveries to whichever core they are for; returns completed messages.
    fn feed(
        cores: &mut [&mut Core],
        deliveries: Vec<Delivery>,
        now_ms: u64,
    ) -> (Vec<Received>, Vec<u64>) {
        let mut received = Vec::new();
        let mut confirmed = Vec::new();
        for (id, (to, kind, identifier, mut bytes)) in deliveries.into_iter().enumerate() {
            let core = cores
                .iter_mut()
                .find(|c| c.address().identity == to)
                .unwrap();
            let outcome = core.deliver(id as u64, kind, identifier, &mut bytes, now_ms);
            confirmed.extend(outcome.confirm);
            received.extend(outcome.message);
        }
        (received, confirmed)
    }

    #[test]
    fn retransmission_with_a_simulated_clock() {
        let net = net();
        let mut a = core(1, &net);
        let mut b = core(2, &net);
        let data: Vec<u8> = (0..3000u32).map(|i| i as u8).collect();
        let ticket = a.send(b.address(), &data, 0, 0).unwrap();
        let first = a.next_real(0).unwrap();
        let second = a.next_real(0).unwrap();
        assert!(a.next_real(0).is_none());
        assert_eq!(ticket.progress.borrow().sent, 2);
        // Deadlines: RTT × 1.5 + 1.5 s after sending.
        let deadline = a.next_timer().unwrap();
        assert!(deadline >= 1500, "{deadline}");
        assert!(a.on_timers(deadline - 1).is_empty());
        assert_eq!(a.queue_len(), 0);

        // The first arrives and is acked; the second is lost.
        let (received, _) = feed(
            &mut [&mut a, &mut b],
            gateway(&net, first.first_hop, first.packet),
            10,
        );
        assert!(received.is_empty());
        assert_eq!(ticket.progress.borrow().acked, 1);
        drop(second);
        // Its timer fires: queued again at the front, sent on a fresh route.
        let mut now = 0;
        while a.queue_len() == 0 {
            now = a.next_timer().unwrap();
            a.on_timers(now);
        }
        assert_eq!(a.stats.retransmitted.load(Ordering::Relaxed), 0);
        let again = a.next_real(now).unwrap();
        assert_eq!(a.stats.retransmitted.load(Ordering::Relaxed), 1);
        let (received, confirmed) = feed(
            &mut [&mut a, &mut b],
            gateway(&net, again.first_hop, again.packet),
            now,
        );
        assert_eq!(received.len(), 1);
        assert_eq!(received[0].data, data);
        assert_eq!(received[0].message_id, ticket.message_id);
        assert_eq!(received[0].delivery_ids.len(), 2);
        assert!(
            !confirmed.is_empty(),
            "the ACK delivery is confirmed at once"
        );
        let progress = *ticket.progress.borrow();
        assert!(progress.delivered() && progress.finished());
        assert!(a.next_timer().is_none());

        // With one retransmission allowed, a fragment lost twice is given up.
        let lost = a.send(b.address(), b"x", 0, now).unwrap();
        assert!(a.next_real(now).is_some());
        let mut rounds = 0;
        while !lost.progress.borrow().finished() {
            now = a.next_timer().unwrap();
            a.on_timers(now);
            let _ = a.next_real(now);
            rounds += 1;
            assert!(rounds < 5);
        }
        assert_eq!(lost.progress.borrow().failed, 1);
        assert_eq!(a.stats.fragments_given_up.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn loop_cover_duplicates_and_forged_acks() {
        let net = net();
        let mut a = core(1, &net);
        let cover = a.loop_cover().unwrap();
        let deliveries = gateway(&net, cover.first_hop, cover.packet);
        assert_eq!(deliveries.len(), 2, "the content and its ACK come back");
        let (received, confirmed) = feed(&mut [&mut a], deliveries, 0);
        assert!(received.is_empty());
        assert_eq!(confirmed.len(), 2);
        assert_eq!(a.stats.loop_cover_received.load(Ordering::Relaxed), 1);
        assert_eq!(a.stats.stray_acks.load(Ordering::Relaxed), 1);
        // A forged ACK and garbage content are confirmed and counted.
        let outcome = a.deliver(7, DeliveryKind::Ack, [0; 16], &mut [1u8; 21], 0);
        assert_eq!(outcome.confirm, vec![7]);
        assert_eq!(a.stats.forged_acks.load(Ordering::Relaxed), 1);
        let outcome = a.deliver(8, DeliveryKind::Message, [0; 16], &mut [1u8; 1630], 0);
        assert_eq!(outcome.confirm, vec![8]);
        assert_eq!(a.stats.undecryptable.load(Ordering::Relaxed), 1);
        let outcome = a.deliver(9, DeliveryKind::Reply, [5; 16], &mut [1u8; 2065], 0);
        assert_eq!(outcome.confirm, vec![9]);

        // A message delivered twice (at-least-once) is handed over once.
        let mut b = core(2, &net);
        a.send(b.address(), b"once", 0, 0).unwrap();
        let packet = a.next_real(0).unwrap();
        let deliveries = gateway(&net, packet.first_hop, packet.packet);
        let (received, _) = feed(&mut [&mut a, &mut b], deliveries.clone(), 0);
        assert_eq!(received.len(), 1);
        let (received, confirmed) = feed(&mut [&mut a, &mut b], deliveries, 0);
        assert!(received.is_empty());
        assert_eq!(
            confirmed.len(),
            2,
            "duplicate content and ACK confirmed at once"
        );
        assert_eq!(b.stats.duplicates.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn replies_through_attached_surbs() {
        let net = net();
        let mut a = core(1, &net);
        let mut b = core(2, &net);
        let ticket = a.send(b.address(), b"question", 2, 0).unwrap();
        let packet = a.next_real(0).unwrap();
        let (received, _) = feed(
            &mut [&mut a, &mut b],
            gateway(&net, packet.first_hop, packet.packet),
            0,
        );
        let question = &received[0];
        assert_eq!(question.data, b"question");
        assert_eq!(question.reply_surbs, 2);
        let bundle = question.surb_bundle.unwrap();
        assert!(matches!(
            b.reply(bundle, &[0u8; 5000]),
            Err(SendError::NotEnoughSurbs {
                needed: 3,
                available: 2
            })
        ));
        let reply_ticket = b.reply(bundle, b"answer").unwrap();
        assert_eq!(b.surbs_left(bundle), 1);
        let packet = b.next_real(0).unwrap();
        assert_eq!(reply_ticket.progress.borrow().sent, 1);
        let (received, _) = feed(
            &mut [&mut a, &mut b],
            gateway(&net, packet.first_hop, packet.packet),
            0,
        );
        assert_eq!(received[0].data, b"answer");
        assert_eq!(received[0].in_reply_to, Some(ticket.message_id));
        assert_eq!(a.stats.replies_received.load(Ordering::Relaxed), 1);
        assert!(matches!(
            b.reply(999, b"x"),
            Err(SendError::UnknownBundle(999))
        ));
    }

    /// A deterministic xorshift for the interleavings (the test must not depend on luck).
    struct Dice(u64);

    impl Dice {
        fn roll(&mut self, sides: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % sides
        }
    }

    /// Splits a transmission's journey into its content (for the recipient) and its SURB-ACK
    /// (for the sender), both as the gateways would deliver them.
    fn journey(net: &Net, built: Built) -> (Vec<Delivery>, Vec<Delivery>) {
        gateway(net, built.first_hop, built.packet)
            .into_iter()
            .partition(|d| d.1 != DeliveryKind::Ack)
    }

    /// An ACK arriving while a retransmission of its fragment is queued, duplicate ACKs, and
    /// ACKs after the fragment was settled must count once. Were the queued retransmission to
    /// re-create the tracker entry, it would go out again and its ACK count a second time:
    /// `acked` would pass `fragments`, the message would look finished with fragments never
    /// sent, and the recipient could never complete it.
    #[test]
    fn an_ack_counts_once_whatever_arrives_when() {
        let net = net();
        let mut dice = Dice(0x9e37_79b9_7f4a_7c15);
        for round in 0..40u64 {
            let mut a = core(1, &net);
            a.params.max_retransmissions = None;
            a.tracker = Tracker::new(AckWait::default(), None, dice.roll(1 << 40));
            let mut b = core(2, &net);
            let data: Vec<u8> = (0..12_000u32).map(|i| (i ^ round as u32) as u8).collect();
            let ticket = a.send(b.address(), &data, 0, 0).unwrap();
            let fragments = ticket.progress.borrow().fragments;
            assert!(fragments >= 6, "{fragments}");
            // Every transmission that left, with its ACK kept back to play it later.
            let mut acks: Vec<Delivery> = Vec::new();
            let mut contents: Vec<Delivery> = Vec::new();
            let mut now = 0u64;
            let mut steps = 0;
            while !ticket.progress.borrow().finished() {
                steps += 1;
                assert!(steps < 10_000, "round {round}: no progress");
                match dice.roll(6) {
                    // A packet leaves (a first transmission or a queued retransmission).
                    0 | 1 => {
                        if let Some(built) = a.next_real(now) {
                            let (content, ack) = journey(&net, built);
                            contents.extend(content);
                            acks.extend(ack);
                        }
                    }
                    // Time passes: timers fire and queue retransmissions at the front.
                    2 => {
                        now += 400 + dice.roll(1200);
                        a.on_timers(now);
                    }
                    // An ACK arrives, maybe twice, maybe again later (a duplicate).
                    _ => {
                        if !acks.is_empty() {
                            let i = dice.roll(acks.len() as u64) as usize;
                            let (to, kind, identifier, bytes) = acks[i].clone();
                            if dice.roll(3) == 0 {
                                acks.swap_remove(i);
                            }
                            feed(&mut [&mut a], vec![(to, kind, identifier, bytes)], now);
                        }
                    }
                }
                let p = *ticket.progress.borrow();
                assert!(p.acked <= p.sent, "round {round}: {p:?}");
                assert!(p.sent <= p.fragments, "round {round}: {p:?}");
            }
            let p = *ticket.progress.borrow();
            assert_eq!(
                (p.acked, p.sent, p.failed),
                (fragments, fragments, 0),
                "round {round}"
            );
            // Every ACK again, and anything still queued goes (it must not, it is settled).
            while let Some(built) = a.next_real(now) {
                let (content, ack) = journey(&net, built);
                contents.extend(content);
                acks.extend(ack);
            }
            feed(&mut [&mut a], acks.clone(), now);
            feed(&mut [&mut a], acks, now);
            assert_eq!(*ticket.progress.borrow(), p, "round {round}");
            assert_eq!(
                a.stats.fragments_acked.load(Ordering::Relaxed),
                fragments as u64,
                "round {round}"
            );
            assert_eq!(a.tracker.pending(), 0);
            assert!(a.next_timer().is_none());
            // The recipient has every fragment: the message completes.
            let (received, _) = feed(&mut [&mut b], contents, now);
            assert_eq!(received.len(), 1, "round {round}");
            assert_eq!(received[0].data, data);
        }
    }

    /// The reported sequence, step by step: every fragment's timer fires (retransmissions
    /// queued), then the first transmissions' ACKs arrive, twice, all but one. Only the
    /// unacknowledged fragment goes again, and nothing counts twice.
    #[test]
    fn acks_while_retransmissions_are_queued() {
        let net = net();
        let mut a = core(1, &net);
        let b = core(2, &net);
        let ticket = a.send(b.address(), &[7u8; 8000], 0, 0).unwrap();
        let fragments = ticket.progress.borrow().fragments;
        let mut acks = Vec::new();
        while let Some(built) = a.next_real(0) {
            acks.extend(journey(&net, built).1);
        }
        assert_eq!(acks.len(), fragments);
        let mut now = 0;
        while a.queue_len() < fragments {
            now = a.next_timer().unwrap();
            a.on_timers(now);
        }
        // One fragment's ACK is late; the others arrive while their retransmissions wait.
        let late = acks.pop().unwrap();
        feed(&mut [&mut a], acks.clone(), now);
        feed(&mut [&mut a], acks, now);
        let p = *ticket.progress.borrow();
        assert_eq!((p.sent, p.acked, p.failed), (fragments, fragments - 1, 0));
        let again = a
            .next_real(now)
            .expect("the unacknowledged fragment goes again");
        assert!(a.next_real(now).is_none(), "a settled fragment went again");
        assert_eq!(a.stats.retransmitted.load(Ordering::Relaxed), 1);
        feed(&mut [&mut a], journey(&net, again).1, now);
        feed(&mut [&mut a], vec![late], now);
        let p = *ticket.progress.borrow();
        assert_eq!((p.sent, p.acked, p.failed), (fragments, fragments, 0));
        assert_eq!(
            a.stats.fragments_acked.load(Ordering::Relaxed),
            fragments as u64
        );
        // The duplicates and the late ACK of the first transmission.
        assert_eq!(a.stats.stray_acks.load(Ordering::Relaxed), fragments as u64);
        assert!(a.next_timer().is_none());
    }
}

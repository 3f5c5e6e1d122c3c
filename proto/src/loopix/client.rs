//! The Loopix client, I/O-free: what to send next and what a delivery means. A driver (the
//! nodes' tokio runtime, or a simulator) feeds it time (µs on its own clock), gateway deliveries
//! and the application's sends; it takes out transmits ([`LoopixClient::poll_transmit`]),
//! events ([`LoopixClient::poll_event`]) and the next deadline
//! ([`LoopixClient::poll_timeout`], then [`LoopixClient::handle_timeout`]). Randomness comes
//! from the RNG the driver hands over at construction, so a seed replays a run exactly.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use ed25519_dalek::SigningKey;
use lethe_crypto::framing::PacketSize;
use lethe_crypto::sphinx::{Surb, SurbRecovery};
use rand::rngs::StdRng;
use rand::{Rng, RngExt};
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

use super::ack::AckKey;
use super::address::Recipient;
use super::clear::{self, PacketFormat};
use super::message::{
    self, decode_body, encode_body, forward_fragment_capacity, open_forward, open_reply,
    reply_fragment_capacity, seal_forward, seal_reply, AttachedSurb, Fragment, FragmentHeader,
    Reassembler, Reassembly, ReassemblyLimits, FLAG_IS_REPLY, FLAG_LOOP_COVER, REPLY_KEY_BYTES,
};
use super::packets::{reply_packet, BuildError, Builder, Built, Delays, PacketKind, SelfRoute};
use super::params::LoopixParams;
use super::retransmit::{AckOutcome, AckWait, Due, FragmentKey, Tracker};
use super::schedule::{Schedule, ScheduleParams, Tick};
use crate::limits::{
    CLIENT_BUILD_RETRY_US, CLIENT_EVENTS_MAX, CLIENT_HOUSEKEEPING_US, CLIENT_QUEUE_HIGH_WATER,
    CLIENT_RECEIVED_SURBS_MAX, CLIENT_SURB_RECORDS_MAX, CLIENT_TRANSMITS_MAX,
    CLIENT_UNACKED_HIGH_WATER,
};
use crate::topology::Topology;
use crate::wire::payload::ACK_CONTENT_BYTES;
use crate::wire::DeliveryKind;

/// What the client counted (all monotonic except `queued`). A plain copy: the driver
/// publishes it where its users look.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counters {
    pub real_sent: u64,
    /// Reply SURBs attached to our messages, and their bytes as they travel (key and SURB
    /// with its length prefix): what anonymous replies cost the sender.
    pub surbs_attached: u64,
    pub surb_bytes_attached: u64,
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
    /// Complete messages the application could not take ([`LoopixClient::undeliverable`]).
    pub application_overflow: u64,
    pub surbs_evicted: u64,
    /// Ticks of either stream that passed unsent because the driver had not taken the
    /// client's output (its transmit or event queue at its cap): a real fragment stays queued
    /// and leaves with a later tick (its timer starts then), cover is simply not sent.
    pub ticks_deferred: u64,
    /// Gateway deliveries not taken for the same reason: left unconfirmed, the gateway keeps
    /// them and delivers them again.
    pub deliveries_deferred: u64,
    /// Housekeeping rounds skipped for the same reason (run at the next period).
    pub housekeeping_deferred: u64,
    /// Progress events dropped at the event cap when no event of the same message was
    /// queued to carry the newer state (a queued one is updated in place, not counted).
    pub events_dropped: u64,
    /// Real packets waiting for the Poisson stream.
    pub queued: u64,
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

/// A message the client accepted: its id (what the recipient sees) and its progress so far.
/// Later progress comes as [`LoopixEvent::Progress`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepted {
    pub message_id: u64,
    pub progress: SendProgress,
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
    /// What to confirm to the gateway once the application has durably handled it.
    pub delivery_ids: Vec<u64>,
}

/// What the driver sends to the gateway, in this order.
#[derive(Debug)]
pub enum LoopixTransmit {
    /// A Sphinx packet for `ClientMessage::Forward`.
    Packet(Built),
    /// Delivery ids to confirm (ACKs, cover, garbage, duplicates of finished messages,
    /// reassemblies given up); the driver chunks them into `ClientMessage::Confirm`s.
    Confirm(Vec<u64>),
}

/// What the client tells its driver.
#[derive(Debug)]
pub enum LoopixEvent {
    /// An outgoing message moved; `done`: it will not move again.
    Progress {
        message_id: u64,
        progress: SendProgress,
        done: bool,
    },
    /// A complete message for the application.
    Received(Received),
}

/// Bounds of the client's stores (defaults in [`crate::limits`]).
#[derive(Debug, Clone, Copy)]
pub struct ClientLimits {
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
    /// Transmits held for the driver ([`LoopixClient::poll_transmit`]).
    pub transmits_max: usize,
    /// Events held for the driver ([`LoopixClient::poll_event`]).
    pub events_max: usize,
}

impl Default for ClientLimits {
    fn default() -> Self {
        ClientLimits {
            reassembly: ReassemblyLimits::default(),
            queue_high_water: CLIENT_QUEUE_HIGH_WATER,
            unacked_high_water: CLIENT_UNACKED_HIGH_WATER,
            surb_records_max: CLIENT_SURB_RECORDS_MAX,
            received_surbs_max: CLIENT_RECEIVED_SURBS_MAX,
            transmits_max: CLIENT_TRANSMITS_MAX,
            events_max: CLIENT_EVENTS_MAX,
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
}

struct SurbRecord {
    recovery: SurbRecovery,
    reply_key: Zeroizing<[u8; REPLY_KEY_BYTES]>,
    message_id: u64,
    created_us: u64,
}

struct Bundle {
    surbs: VecDeque<AttachedSurb>,
    created_us: u64,
}

enum Queued {
    Fragment(FragmentKey),
    /// A reply packet, ready, and the reply's id (its progress counts `sent` only).
    Reply(Box<Built>, u64),
}

pub struct LoopixClient {
    own: SelfRoute,
    encryption: StaticSecret,
    encryption_key: [u8; 32],
    ack_key: AckKey,
    params: LoopixParams,
    size: PacketSize,
    format: PacketFormat,
    limits: ClientLimits,
    rng: StdRng,
    topology: Option<Arc<Topology>>,
    tracker: Tracker,
    reassembler: Reassembler,
    outgoing: HashMap<u64, Outgoing>,
    /// Replies not yet all sent: their progress.
    replies: HashMap<u64, SendProgress>,
    queue: VecDeque<Queued>,
    records: HashMap<[u8; 16], SurbRecord>,
    records_order: VecDeque<[u8; 16]>,
    bundles: HashMap<u64, Bundle>,
    bundles_order: VecDeque<u64>,
    received_surbs: usize,
    next_bundle: u64,
    build_failed: bool,
    counters: Counters,
    /// The real/drop-cover and loop-cover streams.
    schedule: Schedule,
    /// Ticks while disconnected pass unsent.
    connected: bool,
    next_housekeeping_us: u64,
    transmits: VecDeque<LoopixTransmit>,
    events: VecDeque<LoopixEvent>,
    /// The (message id, index) of the fragment the last delivery carried, if it opened.
    last_fragment: Option<(u64, u32)>,
    /// Keep each loop's route secrets in its [`Built`] ([`LoopixClient::keep_loop_secrets`]).
    keep_loop_secrets: bool,
}

impl LoopixClient {
    /// A client with identity `identity_seed` (ed25519) and end-to-end key
    /// `encryption_secret` (x25519), registered at `gateway`, starting at `now_us`. `rng` is
    /// every random choice it makes (keys, routes, delays, gaps): seed it from the OS in a
    /// deployment, from a fixed seed in a test or simulation.
    pub fn new(
        identity_seed: &[u8; 32],
        encryption_secret: &[u8; 32],
        gateway: [u8; 32],
        params: LoopixParams,
        limits: ClientLimits,
        now_us: u64,
        mut rng: StdRng,
    ) -> LoopixClient {
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
            now_us,
            &mut rng,
        );
        LoopixClient {
            own: SelfRoute {
                identity: SigningKey::from_bytes(identity_seed)
                    .verifying_key()
                    .to_bytes(),
                gateway,
            },
            encryption,
            encryption_key,
            ack_key,
            params,
            size: PacketSize::Regular,
            format: PacketFormat::Sphinx,
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
            replies: HashMap::new(),
            queue: VecDeque::new(),
            records: HashMap::new(),
            records_order: VecDeque::new(),
            bundles: HashMap::new(),
            bundles_order: VecDeque::new(),
            received_surbs: 0,
            next_bundle: 1,
            build_failed: false,
            counters: Counters::default(),
            schedule,
            connected: false,
            next_housekeeping_us: now_us.saturating_add(CLIENT_HOUSEKEEPING_US),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            last_fragment: None,
            keep_loop_secrets: false,
        }
    }

    pub fn address(&self) -> Recipient {
        Recipient {
            identity: self.own.identity,
            encryption_key: self.encryption_key,
            gateway: self.own.gateway,
        }
    }

    /// Clear packets and content instead of Sphinx and sealed content: a simulator's cost
    /// model ([`super::clear`]); never for a client on a network. A clear client sends no
    /// reply SURBs.
    pub fn set_packet_format(&mut self, format: PacketFormat) {
        self.format = format;
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

    /// Whether the driver's connection to the gateway is up: while it is down, ticks of the
    /// streams pass unsent (they keep their rate; nothing piles up for the reconnect).
    pub fn set_connected(&mut self, connected: bool) {
        self.connected = connected;
    }

    /// The message id and index of the fragment the last [`LoopixClient::handle_delivery`]
    /// opened (a message's, a reply's or a loop's; `None`: an ACK, or it did not open). A
    /// driver that traces its deliveries names them by it, as the sender names the
    /// fragment it sent ([`PacketKind::Real`]).
    pub fn last_fragment(&self) -> Option<(u64, u32)> {
        self.last_fragment
    }

    /// Keeps each loop-cover packet's route secrets in its [`Built::route_secrets`], for a
    /// driver that traces its loops (a copy of the secrets per loop: off by default).
    pub fn keep_loop_secrets(&mut self, keep: bool) {
        self.keep_loop_secrets = keep;
    }

    /// What the client counted so far.
    pub fn counters(&self) -> Counters {
        Counters {
            queued: self.queue.len() as u64,
            ..self.counters
        }
    }

    /// The next message for the gateway, in order.
    pub fn poll_transmit(&mut self) -> Option<LoopixTransmit> {
        self.transmits.pop_front()
    }

    /// The next event for the driver.
    pub fn poll_event(&mut self) -> Option<LoopixEvent> {
        self.events.pop_front()
    }

    /// Callers check [`Self::output_room`] first: every path that confirms does.
    fn confirm(&mut self, ids: Vec<u64>) {
        if !ids.is_empty() {
            self.transmits.push_back(LoopixTransmit::Confirm(ids));
        }
    }

    /// Whether the driver took enough of the client's output for one more step (a tick, a
    /// delivery or housekeeping: each adds at most one transmit and one event). A driver that
    /// drains after every call always has room; one that stops draining finds the queues at
    /// their caps and the client deferring what would add to them, counted in [`Counters`].
    fn output_room(&self) -> bool {
        self.transmits.len() < self.limits.transmits_max
            && self.events.len() < self.limits.events_max
    }

    /// Queues a progress event. At the cap, a queued event of the same message takes the
    /// newer state (progress only grows and `done` is final, so nothing is lost); without
    /// one the event is dropped and counted.
    fn push_progress(&mut self, message_id: u64, progress: SendProgress, done: bool) {
        if self.events.len() < self.limits.events_max {
            self.events.push_back(LoopixEvent::Progress {
                message_id,
                progress,
                done,
            });
            return;
        }
        let queued = self.events.iter_mut().rev().find_map(|e| match e {
            LoopixEvent::Progress {
                message_id: id,
                progress,
                done,
            } if *id == message_id => Some((progress, done)),
            _ => None,
        });
        match queued {
            Some((queued_progress, queued_done)) => {
                *queued_progress = progress;
                *queued_done |= done;
            }
            None => self.counters.events_dropped += 1,
        }
    }

    /// One fragment sealed end to end for `recipient` and wrapped in a forward packet that
    /// carries the SURB-ACK `ack` (real fragments and loop cover alike).
    fn seal_and_build(
        &mut self,
        topology: &Topology,
        recipient: &Recipient,
        fragment: &Fragment,
        ack: &[u8; ACK_CONTENT_BYTES],
        keep_secrets: bool,
    ) -> Result<Built, String> {
        let content = match self.format {
            PacketFormat::Sphinx => seal_forward(
                &mut self.rng,
                &recipient.encryption_key,
                fragment,
                self.size,
            ),
            PacketFormat::Clear => clear::seal_content(fragment, self.size),
        }
        .map_err(|e| e.to_string())?;
        let builder = Builder {
            keep_secrets,
            ..self.builder(topology)
        };
        builder
            .to_recipient(&mut self.rng, recipient, &content, Some(ack))
            .map_err(|e| e.to_string())
    }

    /// Forward content for us: sealed, or clear for a clear client.
    fn open_content(&self, content: &[u8]) -> Result<Fragment, message::MessageError> {
        match self.format {
            PacketFormat::Sphinx => open_forward(&self.encryption, content),
            PacketFormat::Clear => clear::open_content(content),
        }
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
            format: self.format,
            keep_secrets: false,
        }
    }

    /// Queues a message to `recipient` with `reply_surbs` reply SURBs attached.
    pub fn send(
        &mut self,
        recipient: Recipient,
        data: &[u8],
        reply_surbs: usize,
        now_us: u64,
    ) -> Result<Accepted, SendError> {
        if reply_surbs > message::SURBS_PER_MESSAGE_MAX {
            return Err(SendError::TooManySurbs(reply_surbs));
        }
        let topology = self.topology.clone().ok_or(SendError::NoTopology)?;
        // Fail now, not at send time, if the recipient's gateway is unknown.
        topology.gateway(&recipient.gateway).ok_or_else(|| {
            SendError::Build(format!(
                "recipient gateway {} is not in the topology",
                crate::hex::encode(&recipient.gateway)
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
        self.counters.surbs_attached += surbs.len() as u64;
        self.counters.surb_bytes_attached += surbs
            .iter()
            .map(|s| (2 + REPLY_KEY_BYTES + s.surb.len()) as u64)
            .sum::<u64>();
        for (identifier, recovery, reply_key) in identifiers {
            self.remember_record(
                identifier,
                SurbRecord {
                    recovery,
                    reply_key,
                    message_id,
                    created_us: now_us,
                },
            );
        }
        let progress = SendProgress {
            fragments: fragments.len(),
            ..SendProgress::default()
        };
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
            },
        );
        Ok(Accepted {
            message_id,
            progress,
        })
    }

    fn remember_record(&mut self, identifier: [u8; 16], record: SurbRecord) {
        while self.records.len() >= self.limits.surb_records_max {
            match self.records_order.pop_front() {
                Some(old) => {
                    if self.records.remove(&old).is_some() {
                        self.counters.surbs_evicted += 1;
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
    pub fn reply(&mut self, bundle: u64, data: &[u8]) -> Result<Accepted, SendError> {
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
        self.replies.insert(message_id, progress);
        for packet in built {
            self.queue
                .push_back(Queued::Reply(Box::new(packet), message_id));
        }
        Ok(Accepted {
            message_id,
            progress,
        })
    }

    /// SURBs left in a received bundle.
    pub fn surbs_left(&self, bundle: u64) -> usize {
        self.bundles.get(&bundle).map_or(0, |b| b.surbs.len())
    }

    /// Forgets a received bundle its holder will not use (a service provider refusing SURBs
    /// past its bounds, or done with a conversation): they count against our total no more.
    pub fn discard_bundle(&mut self, bundle: u64) {
        if let Some(b) = self.bundles.remove(&bundle) {
            self.received_surbs = self.received_surbs.saturating_sub(b.surbs.len());
            self.bundles_order.retain(|b| *b != bundle);
        }
    }

    /// The next real packet of the queue (a fragment transmission or a reply), if any, sent
    /// at `now_us`: a fragment's retransmission timer starts here, when it leaves, not when
    /// it was queued. For a driver of an unpaced client ([`Self::paced`] false), which takes
    /// real packets as fast as its connection does; a paced client's leave with the ticks of
    /// [`Self::handle_timeout`].
    pub fn next_real(&mut self, now_us: u64) -> Option<Built> {
        while let Some(item) = self.queue.pop_front() {
            match item {
                Queued::Reply(mut built, reply_id) => {
                    built.kind = PacketKind::Reply {
                        message_id: reply_id,
                    };
                    self.counters.replies_sent += 1;
                    if let Some(progress) = self.replies.get_mut(&reply_id) {
                        progress.sent += 1;
                        let progress = *progress;
                        let done = progress.sent >= progress.fragments;
                        if done {
                            self.replies.remove(&reply_id);
                        }
                        self.push_progress(reply_id, progress, done);
                    }
                    return Some(*built);
                }
                Queued::Fragment(key) => {
                    if let Some(built) = self.transmit(key, now_us) {
                        self.counters.real_sent += 1;
                        return Some(built);
                    }
                }
            }
        }
        None
    }

    fn transmit(&mut self, key: FragmentKey, now_us: u64) -> Option<Built> {
        let topology = self.topology.clone()?;
        let outgoing = self.outgoing.get(&key.message)?;
        let fragment = outgoing.fragments.get(key.index as usize)?.clone();
        let recipient = outgoing.recipient;
        // `None`: settled (acknowledged or given up) since it was queued; it must not leave
        // again, or its ACK would count a second time.
        let ack_id = self.tracker.transmission(key)?;
        let ack = self.ack_key.seal(ack_id);
        let result = self.seal_and_build(&topology, &recipient, &fragment, &ack, false);
        match result {
            Ok(mut built) => {
                built.kind = PacketKind::Real {
                    message_id: key.message,
                    fragment: key.index,
                };
                self.tracker.sent(key, now_us, built.expected_rtt_ns);
                if let Some(outgoing) = self.outgoing.get_mut(&key.message) {
                    match outgoing.states.get_mut(key.index as usize) {
                        Some(state @ FragmentState::Queued) => {
                            *state = FragmentState::Sent;
                            outgoing.progress.sent += 1;
                            let progress = outgoing.progress;
                            self.push_progress(key.message, progress, false);
                        }
                        // Counted when it actually leaves, not when its timer fires: an ACK
                        // may still settle it before that.
                        Some(FragmentState::Sent) => self.counters.retransmitted += 1,
                        _ => {}
                    }
                }
                Some(built)
            }
            Err(_) => {
                self.build_failure();
                // Try again later (a new topology may have a route).
                self.tracker
                    .not_sent(key, now_us.saturating_add(CLIENT_BUILD_RETRY_US));
                None
            }
        }
    }

    /// A drop-cover packet.
    pub fn drop_cover(&mut self) -> Option<Built> {
        let topology = self.topology.clone()?;
        match self.builder(&topology).drop_cover(&mut self.rng) {
            Ok(built) => {
                self.counters.drop_cover_sent += 1;
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
        let keep = self.keep_loop_secrets;
        let result = self.seal_and_build(&topology, &own, &fragment, &ack, keep);
        match result {
            Ok(mut built) => {
                built.kind = PacketKind::LoopCover {
                    message_id: fragment.header.message_id,
                };
                self.counters.loop_cover_sent += 1;
                Some(built)
            }
            Err(_) => {
                self.build_failure();
                None
            }
        }
    }

    /// Handles one gateway delivery (decrypted in place): what it settles comes out as
    /// events, what to confirm at once as a transmit.
    pub fn handle_delivery(
        &mut self,
        now_us: u64,
        delivery_id: u64,
        kind: DeliveryKind,
        identifier: [u8; 16],
        bytes: &mut [u8],
    ) {
        self.last_fragment = None;
        if !self.output_room() {
            self.counters.deliveries_deferred += 1;
            return;
        }
        let outcome = self.delivery(now_us, delivery_id, kind, identifier, bytes);
        self.confirm(outcome.confirm);
        if let Some(message) = outcome.message {
            self.events.push_back(LoopixEvent::Received(message));
        }
    }

    fn delivery(
        &mut self,
        now_us: u64,
        delivery_id: u64,
        kind: DeliveryKind,
        identifier: [u8; 16],
        bytes: &mut [u8],
    ) -> DeliveryOutcome {
        let mut outcome = DeliveryOutcome::default();
        match kind {
            DeliveryKind::Ack => {
                outcome.confirm.push(delivery_id);
                self.counters.acks_received += 1;
                match self.ack_key.open(bytes) {
                    None => self.counters.forged_acks += 1,
                    Some(ack_id) => match self.tracker.on_ack(ack_id) {
                        AckOutcome::Acked(key) => {
                            self.counters.fragments_acked += 1;
                            self.settle(key, true);
                        }
                        AckOutcome::Unknown => self.counters.stray_acks += 1,
                    },
                }
            }
            DeliveryKind::Message => match self.open_content(bytes) {
                Err(_) => {
                    self.counters.undecryptable += 1;
                    outcome.confirm.push(delivery_id);
                }
                Ok(fragment) => {
                    let flags = fragment.header.flags;
                    self.last_fragment = Some((fragment.header.message_id, fragment.header.index));
                    if flags & FLAG_LOOP_COVER != 0 {
                        self.counters.loop_cover_received += 1;
                        outcome.confirm.push(delivery_id);
                    } else if flags & FLAG_IS_REPLY != 0 {
                        // Replies only come through SURBs.
                        self.counters.fragments_refused += 1;
                        outcome.confirm.push(delivery_id);
                    } else {
                        self.reassemble(fragment, delivery_id, None, now_us, &mut outcome);
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
                        self.last_fragment =
                            Some((fragment.header.message_id, fragment.header.index));
                        self.reassemble(
                            fragment,
                            delivery_id,
                            Some(in_reply_to),
                            now_us,
                            &mut outcome,
                        );
                    }
                    _ => {
                        self.counters.undecryptable += 1;
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
        now_us: u64,
        outcome: &mut DeliveryOutcome,
    ) {
        match self.reassembler.insert(fragment, Some(delivery_id), now_us) {
            Reassembly::Refused(_) => {
                self.counters.fragments_refused += 1;
                outcome.confirm.push(delivery_id);
            }
            Reassembly::AlreadyComplete => {
                self.counters.duplicates += 1;
                outcome.confirm.push(delivery_id);
            }
            Reassembly::Duplicate => self.counters.duplicates += 1,
            Reassembly::Incomplete => {}
            Reassembly::Complete(complete) => {
                let (surbs, data) = match decode_body(complete.flags, &complete.body) {
                    Ok((surbs, data)) => (surbs, data.to_vec()),
                    Err(_) => {
                        self.counters.fragments_refused += 1;
                        outcome.confirm.extend(complete.delivery_ids);
                        return;
                    }
                };
                let reply_surbs = surbs.len();
                let surb_bundle = (reply_surbs > 0).then(|| self.store_bundle(surbs, now_us));
                if in_reply_to.is_some() {
                    self.counters.replies_received += 1;
                } else {
                    self.counters.messages_received += 1;
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

    fn store_bundle(&mut self, surbs: Vec<AttachedSurb>, now_us: u64) -> u64 {
        let count = surbs.len();
        while self.received_surbs + count > self.limits.received_surbs_max {
            let Some(old) = self.bundles_order.pop_front() else {
                break;
            };
            if let Some(bundle) = self.bundles.remove(&old) {
                self.received_surbs = self.received_surbs.saturating_sub(bundle.surbs.len());
                self.counters.surbs_evicted += bundle.surbs.len() as u64;
            }
        }
        let id = self.next_bundle;
        self.next_bundle += 1;
        self.received_surbs += count;
        self.bundles.insert(
            id,
            Bundle {
                surbs: surbs.into(),
                created_us: now_us,
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
        self.counters.application_overflow += 1;
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
        let progress = outgoing.progress;
        let done = progress.finished();
        if done {
            self.outgoing.remove(&key.message);
        }
        self.push_progress(key.message, progress, done);
    }

    fn build_failure(&mut self) {
        self.counters.build_failures += 1;
        self.build_failed = true;
    }

    /// Whether building a packet failed since the last call (a topology refresh may help).
    pub fn take_build_failure(&mut self) -> bool {
        std::mem::take(&mut self.build_failed)
    }

    /// The next deadline (µs): a retransmission timer, a tick of either stream, or
    /// housekeeping. Call [`Self::handle_timeout`] when it passes.
    pub fn poll_timeout(&self) -> Option<u64> {
        [
            self.tracker.next_deadline(),
            self.schedule.poll_timeout(),
            Some(self.next_housekeeping_us),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Whether real packets wait for ticks of the Poisson stream (otherwise the driver takes
    /// them with [`Self::next_real`] as soon as its connection can).
    pub fn paced(&self) -> bool {
        self.schedule.paced()
    }

    /// Fires what is due at `now_us`: retransmissions are queued at the front of the real
    /// queue; each tick of the real stream sends the next real packet (or drop cover), each
    /// tick of the loop stream loop cover; housekeeping expires old SURBs and gives up stale
    /// reassemblies (their deliveries are confirmed). The packets come out of
    /// [`Self::poll_transmit`].
    pub fn handle_timeout(&mut self, now_us: u64) {
        for due in self.tracker.due(now_us) {
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
                    self.counters.fragments_given_up += 1;
                    self.settle(key, false);
                }
            }
        }
        while let Some(tick) = self.schedule.poll_due(now_us, &mut self.rng) {
            if !self.connected {
                continue;
            }
            if !self.output_room() {
                self.counters.ticks_deferred += 1;
                continue;
            }
            let built = match tick {
                Tick::Real { drop_cover } => match self.next_real(now_us) {
                    Some(built) => Some(built),
                    None if drop_cover => self.drop_cover(),
                    None => None,
                },
                Tick::Loop => self.loop_cover(),
            };
            if let Some(built) = built {
                self.transmits.push_back(LoopixTransmit::Packet(built));
            }
        }
        if now_us >= self.next_housekeeping_us {
            self.next_housekeeping_us = now_us.saturating_add(CLIENT_HOUSEKEEPING_US);
            if self.output_room() {
                let expired = self.housekeeping(now_us);
                self.confirm(expired);
            } else {
                self.counters.housekeeping_deferred += 1;
            }
        }
    }

    /// Expires SURB records and bundles past their lifetime and stale reassemblies; returns
    /// the delivery ids of the reassemblies given up.
    fn housekeeping(&mut self, now_us: u64) -> Vec<u64> {
        let lifetime_us = self.params.reply_surb_lifetime_s.saturating_mul(1_000_000);
        while let Some(id) = self.records_order.front() {
            match self.records.get(id) {
                Some(r) if now_us.saturating_sub(r.created_us) <= lifetime_us => break,
                _ => {
                    if let Some(id) = self.records_order.pop_front() {
                        self.records.remove(&id);
                    }
                }
            }
        }
        while let Some(id) = self.bundles_order.front() {
            match self.bundles.get(id) {
                Some(b) if now_us.saturating_sub(b.created_us) <= lifetime_us => break,
                _ => {
                    if let Some(id) = self.bundles_order.pop_front() {
                        if let Some(b) = self.bundles.remove(&id) {
                            self.received_surbs = self.received_surbs.saturating_sub(b.surbs.len());
                        }
                    }
                }
            }
        }
        self.reassembler.expire(now_us)
    }
}

/// What one delivery asks for.
#[derive(Debug, Default)]
struct DeliveryOutcome {
    /// Delivery ids to confirm now (ACKs, cover, garbage, duplicates of finished messages).
    confirm: Vec<u64>,
    message: Option<Received>,
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use std::cell::RefCell;

    use rand::SeedableRng;

    use super::*;
    use crate::final_hop::{self, FinalHopOutcome, Room};
    use crate::testing::TestMixnet;

    thread_local! {
        /// What the clients of this test reported: progress by message id (ids are random
        /// u64s, distinct across clients), completed messages, confirmed deliveries.
        static BOOK: RefCell<HashMap<u64, SendProgress>> = RefCell::new(HashMap::new());
        static RECEIVED: RefCell<Vec<Received>> = const { RefCell::new(Vec::new()) };
        static CONFIRMED: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
    }

    /// Drains a client's events and confirmations into the book.
    fn pump(c: &mut LoopixClient) {
        while let Some(event) = c.poll_event() {
            match event {
                LoopixEvent::Progress {
                    message_id,
                    progress,
                    ..
                } => BOOK.with(|b| {
                    b.borrow_mut().insert(message_id, progress);
                }),
                LoopixEvent::Received(message) => RECEIVED.with(|r| r.borrow_mut().push(message)),
            }
        }
        while let Some(transmit) = c.poll_transmit() {
            match transmit {
                LoopixTransmit::Confirm(ids) => CONFIRMED.with(|c| c.borrow_mut().extend(ids)),
                LoopixTransmit::Packet(_) => panic!("packets only leave through next_real here"),
            }
        }
    }

    fn progress(c: &mut LoopixClient, id: u64) -> SendProgress {
        pump(c);
        BOOK.with(|b| b.borrow().get(&id).copied().unwrap())
    }

    /// A delivery, as the old `deliver` returned it: (to confirm, completed message).
    fn deliver(
        c: &mut LoopixClient,
        id: u64,
        kind: DeliveryKind,
        identifier: [u8; 16],
        bytes: &mut [u8],
        now_ms: u64,
    ) -> (Vec<u64>, Option<Received>) {
        c.handle_delivery(now_ms * 1000, id, kind, identifier, bytes);
        pump(c);
        let confirm = CONFIRMED.with(|c| std::mem::take(&mut *c.borrow_mut()));
        let mut received = RECEIVED.with(|r| std::mem::take(&mut *r.borrow_mut()));
        assert!(received.len() <= 1);
        (confirm, received.pop())
    }

    /// Fires what is due at `now_ms` (the client is not connected: no ticks are sent).
    fn fire(c: &mut LoopixClient, now_ms: u64) {
        c.handle_timeout(now_ms * 1000);
        pump(c);
    }

    /// Records an accepted message's first progress.
    fn book(accepted: Accepted) -> Accepted {
        BOOK.with(|b| {
            b.borrow_mut()
                .insert(accepted.message_id, accepted.progress)
        });
        accepted
    }

    /// The next retransmission deadline in ms (rounded up: firing then fires it).
    fn next_timer(c: &LoopixClient) -> Option<u64> {
        c.tracker.next_deadline().map(|us| us.div_ceil(1000))
    }

    struct Net {
        topology: Arc<Topology>,
        mixnet: TestMixnet,
        gateway: [u8; 32],
    }

    /// One mixnode per layer and the gateway.
    fn net() -> Net {
        let mixnet = TestMixnet::new(1, &[4; 32]);
        Net {
            topology: Arc::new(mixnet.topology.clone()),
            gateway: mixnet.gateway_identity,
            mixnet,
        }
    }

    type Delivery = ([u8; 32], DeliveryKind, [u8; 16], Vec<u8>);

    /// Carries a packet through the four hops and does the destination gateway's work.
    fn gateway(net: &Net, first_hop: [u8; 32], packet: Vec<u8>) -> Vec<Delivery> {
        let (destination, identifier, packet, _) =
            net.mixnet.unwrap_all(first_hop, packet).unwrap();
        let packet = packet.into_inner();
        let everyone = |_: &[u8; 32]| Room::Available;
        let mail = match final_hop::decide(&destination, &identifier, &packet, &everyone) {
            FinalHopOutcome::DropCover => return Vec::new(),
            FinalHopOutcome::Refused(refusal) => panic!("{refusal:?}"),
            FinalHopOutcome::Deliver(mail) => mail,
        };
        let mut out = vec![(
            mail.recipient,
            mail.kind,
            mail.identifier,
            mail.bytes.to_vec(),
        )];
        if let Some(ack) = mail.ack {
            out.extend(gateway(net, *ack.first_hop, ack.packet.to_vec()));
        }
        out
    }

    fn core(seed: u8, net: &Net) -> LoopixClient {
        let params = LoopixParams {
            average_packet_delay_ms: 10.0,
            average_ack_delay_ms: 10.0,
            max_retransmissions: Some(1),
            ..LoopixParams::default()
        };
        let mut core = LoopixClient::new(
            &[seed; 32],
            &[seed + 100; 32],
            net.gateway,
            params,
            ClientLimits::default(),
            0,
            StdRng::seed_from_u64(u64::from(seed)),
        );
        core.set_topology(net.topology.clone());
        core
    }

    /// Feeds deliveries to whichever core they are for; returns completed messages.
    fn feed(
        cores: &mut [&mut LoopixClient],
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
            let (confirm, message) = deliver(core, id as u64, kind, identifier, &mut bytes, now_ms);
            confirmed.extend(confirm);
            received.extend(message);
        }
        (received, confirmed)
    }

    #[test]
    fn retransmission_with_a_simulated_clock() {
        let net = net();
        let mut a = core(1, &net);
        let mut b = core(2, &net);
        let data: Vec<u8> = (0..3000u32).map(|i| i as u8).collect();
        let ticket = book(a.send(b.address(), &data, 0, 0).unwrap());
        let first = a.next_real(0).unwrap();
        let second = a.next_real(0).unwrap();
        assert!(a.next_real(0).is_none());
        assert_eq!(progress(&mut a, ticket.message_id).sent, 2);
        // Deadlines: RTT × 1.5 + 1.5 s after sending.
        let deadline = next_timer(&a).unwrap();
        assert!(deadline >= 1500, "{deadline}");
        fire(&mut a, deadline - 1);
        assert_eq!(a.queue_len(), 0);

        // The first arrives and is acked; the second is lost.
        let (received, _) = feed(
            &mut [&mut a, &mut b],
            gateway(&net, first.first_hop, first.packet),
            10,
        );
        assert!(received.is_empty());
        assert_eq!(progress(&mut a, ticket.message_id).acked, 1);
        drop(second);
        // Its timer fires: queued again at the front, sent on a fresh route.
        let mut now = 0;
        while a.queue_len() == 0 {
            now = next_timer(&a).unwrap();
            fire(&mut a, now);
        }
        assert_eq!(a.counters().retransmitted, 0);
        let again = a.next_real(now * 1000).unwrap();
        assert_eq!(a.counters().retransmitted, 1);
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
        let p = progress(&mut a, ticket.message_id);
        assert!(p.delivered() && p.finished());
        assert!(next_timer(&a).is_none());

        // With one retransmission allowed, a fragment lost twice is given up.
        let lost = book(a.send(b.address(), b"x", 0, now * 1000).unwrap());
        assert!(a.next_real(now * 1000).is_some());
        let mut rounds = 0;
        while !progress(&mut a, lost.message_id).finished() {
            now = next_timer(&a).unwrap();
            fire(&mut a, now);
            let _ = a.next_real(now * 1000);
            rounds += 1;
            assert!(rounds < 5);
        }
        assert_eq!(progress(&mut a, lost.message_id).failed, 1);
        assert_eq!(a.counters().fragments_given_up, 1);
    }

    /// A recipient's delivery names the fragment as its sender's packet did; an ACK none.
    #[test]
    fn a_delivery_names_its_fragment_as_the_sender_did() {
        let net = net();
        let mut a = core(1, &net);
        let mut b = core(2, &net);
        let ticket = book(a.send(b.address(), b"hi", 0, 0).unwrap());
        let built = a.next_real(0).unwrap();
        assert_eq!(
            built.kind,
            PacketKind::Real {
                message_id: ticket.message_id,
                fragment: 0
            }
        );
        let mut deliveries = gateway(&net, built.first_hop, built.packet).into_iter();
        let (_, kind, identifier, mut bytes) = deliveries.next().unwrap();
        let _ = deliver(&mut b, 0, kind, identifier, &mut bytes, 0);
        assert_eq!(b.last_fragment(), Some((ticket.message_id, 0)));
        let (_, kind, identifier, mut bytes) = deliveries.next().unwrap();
        assert_eq!(kind, DeliveryKind::Ack);
        let _ = deliver(&mut a, 1, kind, identifier, &mut bytes, 0);
        assert_eq!(a.last_fragment(), None);

        // A loop comes back under the id its packet named, with its route secrets if asked.
        assert!(a.loop_cover().unwrap().route_secrets.is_none());
        a.keep_loop_secrets(true);
        let cover = a.loop_cover().unwrap();
        let PacketKind::LoopCover { message_id } = cover.kind else {
            panic!("{:?}", cover.kind)
        };
        assert!(cover.route_secrets.is_some());
        let mut back = gateway(&net, cover.first_hop, cover.packet).into_iter();
        let (_, kind, identifier, mut bytes) = back.next().unwrap();
        let _ = deliver(&mut a, 2, kind, identifier, &mut bytes, 0);
        assert_eq!(a.last_fragment(), Some((message_id, 0)));
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
        assert_eq!(a.counters().loop_cover_received, 1);
        assert_eq!(a.counters().stray_acks, 1);
        // A forged ACK and garbage content are confirmed and counted.
        let outcome = deliver(&mut a, 7, DeliveryKind::Ack, [0; 16], &mut [1u8; 21], 0);
        assert_eq!(outcome.0, vec![7]);
        assert_eq!(a.counters().forged_acks, 1);
        let outcome = deliver(
            &mut a,
            8,
            DeliveryKind::Message,
            [0; 16],
            &mut [1u8; 1630],
            0,
        );
        assert_eq!(outcome.0, vec![8]);
        assert_eq!(a.counters().undecryptable, 1);
        let outcome = deliver(&mut a, 9, DeliveryKind::Reply, [5; 16], &mut [1u8; 2065], 0);
        assert_eq!(outcome.0, vec![9]);

        // A message delivered twice (at-least-once) is handed over once.
        let mut b = core(2, &net);
        book(a.send(b.address(), b"once", 0, 0).unwrap());
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
        assert_eq!(b.counters().duplicates, 1);
    }

    #[test]
    fn built_packets_name_what_they_carry() {
        let net = net();
        let mut a = core(1, &net);
        let mut b = core(2, &net);
        let data: Vec<u8> = (0..3000u32).map(|i| i as u8).collect();
        let ticket = book(a.send(b.address(), &data, 0, 0).unwrap());
        let kind = |fragment| PacketKind::Real {
            message_id: ticket.message_id,
            fragment,
        };
        assert_eq!(a.next_real(0).unwrap().kind, kind(0));
        assert_eq!(a.next_real(0).unwrap().kind, kind(1));
        assert_eq!(a.drop_cover().unwrap().kind, PacketKind::DropCover);
        assert!(matches!(
            a.loop_cover().unwrap().kind,
            PacketKind::LoopCover { .. }
        ));
        // Both are lost: a retransmission is the same fragment again.
        let deadline = next_timer(&a).unwrap();
        fire(&mut a, deadline);
        let again = a.next_real(deadline * 1000).unwrap();
        assert!(again.kind == kind(0) || again.kind == kind(1), "{again:?}");
        // A reply on an attached SURB names the reply.
        let question = book(a.send(b.address(), b"question", 1, 0).unwrap());
        let mut packet = a.next_real(0).unwrap();
        while packet.kind == kind(0) || packet.kind == kind(1) {
            packet = a.next_real(0).unwrap();
        }
        assert!(
            matches!(packet.kind, PacketKind::Real { message_id, .. } if message_id == question.message_id)
        );
        let (received, _) = feed(
            &mut [&mut a, &mut b],
            gateway(&net, packet.first_hop, packet.packet),
            0,
        );
        let bundle = received[0].surb_bundle.unwrap();
        let reply = book(b.reply(bundle, b"answer").unwrap());
        assert_eq!(
            b.next_real(0).unwrap().kind,
            PacketKind::Reply {
                message_id: reply.message_id
            }
        );
    }

    #[test]
    fn replies_through_attached_surbs() {
        let net = net();
        let mut a = core(1, &net);
        let mut b = core(2, &net);
        let ticket = book(a.send(b.address(), b"question", 2, 0).unwrap());
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
        let reply_ticket = book(b.reply(bundle, b"answer").unwrap());
        assert_eq!(b.surbs_left(bundle), 1);
        let packet = b.next_real(0).unwrap();
        assert_eq!(progress(&mut b, reply_ticket.message_id).sent, 1);
        let (received, _) = feed(
            &mut [&mut a, &mut b],
            gateway(&net, packet.first_hop, packet.packet),
            0,
        );
        assert_eq!(received[0].data, b"answer");
        assert_eq!(received[0].in_reply_to, Some(ticket.message_id));
        assert_eq!(a.counters().replies_received, 1);
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
            let ticket = book(a.send(b.address(), &data, 0, 0).unwrap());
            let fragments = progress(&mut a, ticket.message_id).fragments;
            assert!(fragments >= 6, "{fragments}");
            // Every transmission that left, with its ACK kept back to play it later.
            let mut acks: Vec<Delivery> = Vec::new();
            let mut contents: Vec<Delivery> = Vec::new();
            let mut now = 0u64;
            let mut steps = 0;
            while !progress(&mut a, ticket.message_id).finished() {
                steps += 1;
                assert!(steps < 10_000, "round {round}: no progress");
                match dice.roll(6) {
                    // A packet leaves (a first transmission or a queued retransmission).
                    0 | 1 => {
                        if let Some(built) = a.next_real(now * 1000) {
                            let (content, ack) = journey(&net, built);
                            contents.extend(content);
                            acks.extend(ack);
                        }
                    }
                    // Time passes: timers fire and queue retransmissions at the front.
                    2 => {
                        now += 400 + dice.roll(1200);
                        fire(&mut a, now);
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
                let p = progress(&mut a, ticket.message_id);
                assert!(p.acked <= p.sent, "round {round}: {p:?}");
                assert!(p.sent <= p.fragments, "round {round}: {p:?}");
            }
            let p = progress(&mut a, ticket.message_id);
            assert_eq!(
                (p.acked, p.sent, p.failed),
                (fragments, fragments, 0),
                "round {round}"
            );
            // Every ACK again, and anything still queued goes (it must not, it is settled).
            while let Some(built) = a.next_real(now * 1000) {
                let (content, ack) = journey(&net, built);
                contents.extend(content);
                acks.extend(ack);
            }
            feed(&mut [&mut a], acks.clone(), now);
            feed(&mut [&mut a], acks, now);
            assert_eq!(progress(&mut a, ticket.message_id), p, "round {round}");
            assert_eq!(
                a.counters().fragments_acked,
                fragments as u64,
                "round {round}"
            );
            assert_eq!(a.tracker.pending(), 0);
            assert!(next_timer(&a).is_none());
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
        let ticket = book(a.send(b.address(), &[7u8; 8000], 0, 0).unwrap());
        let fragments = progress(&mut a, ticket.message_id).fragments;
        let mut acks = Vec::new();
        while let Some(built) = a.next_real(0) {
            acks.extend(journey(&net, built).1);
        }
        assert_eq!(acks.len(), fragments);
        let mut now = 0;
        while a.queue_len() < fragments {
            now = next_timer(&a).unwrap();
            fire(&mut a, now);
        }
        // One fragment's ACK is late; the others arrive while their retransmissions wait.
        let late = acks.pop().unwrap();
        feed(&mut [&mut a], acks.clone(), now);
        feed(&mut [&mut a], acks, now);
        let p = progress(&mut a, ticket.message_id);
        assert_eq!((p.sent, p.acked, p.failed), (fragments, fragments - 1, 0));
        let again = a
            .next_real(now * 1000)
            .expect("the unacknowledged fragment goes again");
        assert!(
            a.next_real(now * 1000).is_none(),
            "a settled fragment went again"
        );
        assert_eq!(a.counters().retransmitted, 1);
        feed(&mut [&mut a], journey(&net, again).1, now);
        feed(&mut [&mut a], vec![late], now);
        let p = progress(&mut a, ticket.message_id);
        assert_eq!((p.sent, p.acked, p.failed), (fragments, fragments, 0));
        assert_eq!(a.counters().fragments_acked, fragments as u64);
        // The duplicates and the late ACK of the first transmission.
        assert_eq!(a.counters().stray_acks, fragments as u64);
        assert!(next_timer(&a).is_none());
    }
}

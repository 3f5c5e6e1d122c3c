//! A deterministic discrete-event simulator. Mixes and gateways are the real engine core
//! ([`lethe_engine::core::Core`], I/O-free: fed time and packet bytes, returning actions), so
//! the Sphinx processing, delays and drops are the nodes' own, not a model of them. Clients
//! are the real client core: lethe-proto's [`LoopixClient`] behind a [`ClientSession`], whose
//! bytes cross the simulated client-gateway link to the gateway's [`GatewaySession`]. The
//! client's schedule, routes, delays, fragments, SURB-ACKs and retransmissions are therefore
//! the client's own; the simulator only carries bytes, keeps the gateway's mailbox and sends a
//! delivered packet's SURB-ACK on, as the gateway does.
//!
//! Determinism: one seeded ChaCha20 stream draws keys, link jitter, workload timings and the
//! seeds of the clients' own generators, in event order; events at the same instant run in the
//! order they were scheduled (a sequence number breaks ties). Virtual time is in ns; the
//! engine, the client core and the sessions are fed µs.
//!
//! Matching an engine output to its input: each packet is fed with its id as the core's tag,
//! which its buffer keeps (`Core::tag`), so a mix's departures carry the right ground truth
//! (class, message, lab link). The engine runs one packet per batch (`batch_packets_max = 1`):
//! a drop counted while a packet is fed is that packet's.
//!
//! Sphinx real or a cost model ([`SphinxMode`]): with the cost model, clients build clear
//! packets (`lethe_proto::loopix::clear`: same routes, delays, payloads and sizes), each node
//! unwraps a hop itself and hands the engine core the decoded hop (`Core::handle_decoded`),
//! which from there on is the Sphinx path (replay filter, timer wheel, drops), and the
//! client-gateway sessions are in-order messages on the link. A mix's processing time is
//! `mix_capacity_pps` in both modes.

mod buffers;
pub mod config;
mod links;
mod queue;
mod slab;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::Path;
use std::sync::Arc;

use lethe_crypto::framing::{KeyRotation, PacketSize};
use lethe_crypto::sphinx::{self, address, Destination, PacketSpec, RouteHop, Version};
use lethe_engine::core::{Action, Admitted, Core, DecodedHop, NodeKeys, SphinxKey};
use lethe_engine::limits::{PacketSizes, DELAY_MS_MAX};
use lethe_engine::metrics::{CoreMetrics, DropReason};
use lethe_engine::runtime::FinalHop;
use lethe_engine::{EngineConfig, ReplayFilter, ReplayFilterSet, ReplayParams};
use lethe_proto::final_hop::{self, FinalHopOutcome, Room};
use lethe_proto::gateway_session::{FirstHops, GatewayConfig, Transmit};
use lethe_proto::loopix::clear::{self, ClearHop};
use lethe_proto::loopix::{
    ClientLimits, LoopixClient, LoopixEvent, LoopixParams, LoopixTransmit, PacketFormat, PacketKind,
};
use lethe_proto::topology::{sample_delays_ns, Descriptor, Role as TopologyRole, Topology};
use lethe_proto::wire::handshake::identity_public;
use lethe_proto::wire::payload::SurbAck;
use lethe_proto::wire::{ClientMessage, DeliveryKind};
use lethe_proto::{ClientEvent, ClientSession, GatewayEvent, GatewaySession};
use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};
use sha2::{Digest, Sha256};
use x25519_dalek::StaticSecret;

use crate::trace::{
    Class, Kind, LabFields, NodeInfo, Role, TraceError, TraceEvent, TraceMeta, TraceWriter,
};
use buffers::Buffers;
pub use config::{CoverRates, LinkModel, NodeFailure, SimConfig, SphinxMode};
use links::Links;
use queue::Queue;
use slab::Slab;

/// Engine buffers (and timer entries) per simulated node: packets a node can hold at once.
pub const ENGINE_BUFFERS_PER_NODE: u32 = 4_096;
/// Packets a node's core holds, and the one being fed to it.
const PENDING_PER_NODE_MAX: u32 = ENGINE_BUFFERS_PER_NODE + 1;
/// Engine timer tick: the delay cap (`DELAY_MS_MAX`) must fit the wheel's span in ticks.
const ENGINE_TIMER_TICK_US: u64 = 50;
/// Replay filter sizing per node (packets per key lifetime) and its false-positive rate.
/// Packets per key lifetime a node's filter is sized for at the least, and at the most (the
/// run's own estimate, `replay_items`, lies between).
const REPLAY_ITEMS_MIN: u64 = 200_000;
const REPLAY_ITEMS_MAX: u64 = 100_000_000;
const REPLAY_FP_RATE: f64 = 1e-9;
/// 512-bit blocks: about 10 bytes a packet at 1e-9, where one-word blocks take over 100 (a
/// filter is zeroed at start, and 40 nodes of those took most of a large run's setup).
const REPLAY_BLOCK_WORDS: u32 = 8;
const ROTATION_ID: u32 = 1;
const NS_PER_US: u64 = 1_000;
const NS_PER_MS: u64 = 1_000_000;
/// A workload message: the simulator's message id, padded (one fragment).
const MESSAGE_BYTES: usize = 64;
/// The sessions' handshake must complete within this (µs); the simulated link never loses
/// bytes, so only a link slower than this fails it.
const HANDSHAKE_TIMEOUT_US: u64 = 30_000_000;
/// Turns of one node's flush loop: each turn moves at least one item between the client
/// core and the session ends, whose queues are bounded, so this is never reached in practice.
const FLUSH_TURNS_MAX: usize = 100_000;

const _: () = assert!(
    DELAY_MS_MAX * 1_000 / ENGINE_TIMER_TICK_US <= lethe_engine::limits::TIMER_DELAY_TICKS_LIMIT
);
const _: () = assert!(MESSAGE_BYTES >= 8);

#[derive(Debug)]
pub enum SimError {
    Config(String),
    Trace(TraceError),
    /// Building a Sphinx packet failed (a bug: the routes are built here).
    Sphinx(String),
    EventsExhausted,
    /// More events pending at once than the queue holds.
    EventsPending,
    /// A real-time run fell behind the wall clock at this virtual time.
    BehindRealTime {
        at_ns: u64,
    },
}

impl std::fmt::Display for SimError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SimError::Config(what) => write!(f, "config: {what}"),
            SimError::Trace(e) => write!(f, "{e}"),
            SimError::Sphinx(what) => write!(f, "sphinx: {what}"),
            SimError::EventsExhausted => {
                write!(f, "more than {} events: run stopped", config::EVENTS_MAX)
            }
            SimError::EventsPending => write!(
                f,
                "more than {} events pending: run stopped",
                queue::EVENTS_PENDING_MAX
            ),
            SimError::BehindRealTime { at_ns } => {
                write!(
                    f,
                    "behind real time at {:.3} simulated s",
                    *at_ns as f64 / 1e9
                )
            }
        }
    }
}

impl std::error::Error for SimError {}

impl From<queue::QueueFull> for SimError {
    fn from(_: queue::QueueFull) -> Self {
        SimError::EventsPending
    }
}

impl From<TraceError> for SimError {
    fn from(e: TraceError) -> Self {
        SimError::Trace(e)
    }
}

/// What a run did.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct RunSummary {
    pub events_count: u64,
    /// When the last event happened (virtual time).
    pub end_ns: u64,
    pub trace_rows_count: u64,
    /// Real packets that left a client, retransmissions included.
    pub real_sent_count: u64,
    /// Real packets the exit gateway delivered to a mailbox (a retransmission of a packet
    /// whose ACK was lost is delivered again).
    pub real_delivered_count: u64,
    /// Real packets lost on the way (a failed node).
    pub real_dropped_count: u64,
    /// Every packet lost, whatever its class.
    pub dropped_count: u64,
    /// Workload messages the clients accepted.
    pub messages_count: u64,
    /// Messages whose every fragment was acknowledged (the sender's progress: delivered).
    pub messages_acked_count: u64,
    /// Messages the recipients' client cores handed to their application.
    pub messages_received_count: u64,
    /// Fragments the client cores sent again after their ACK timer.
    pub retransmitted_count: u64,
    /// Fragments given up after the last retransmission.
    pub given_up_count: u64,
    pub acks_received_count: u64,
}

/// What a packet is, carried beside its bytes (the simulator's ground truth).
#[derive(Clone, Copy, Debug)]
struct PacketInfo {
    class: Class,
    message_id: u64,
    fragment_id: u32,
    /// The node that sent it (a client, the gateway sending a SURB-ACK on, a mix's loop).
    source: u32,
    /// The recipient client (none for drop cover, whose gateway is random).
    destination: Option<u32>,
    size_bytes: u32,
}

#[derive(Debug)]
struct WirePacket {
    id: u64,
    bytes: Vec<u8>,
    info: PacketInfo,
}

#[derive(Clone, Copy, Debug)]
enum Stream {
    /// A new real message (the workload, not a Loopix stream).
    Message,
    /// Loopix's separate drop-cover stream (the Lethe client has none: rate 0 there); its
    /// packets are the client core's own drop cover.
    Drop,
    MixLoop,
}

/// One side of a client's session on the client-gateway link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    ToGateway,
    ToClient,
}

#[derive(Debug)]
enum Event {
    Stream {
        node: u32,
        stream: Stream,
    },
    Arrive {
        node: u32,
        packet: WirePacket,
    },
    Wake {
        node: u32,
    },
    /// A packet that waited for a mix's processing (its capacity) reaches the engine core.
    Admit {
        node: u32,
        packet: WirePacket,
        arrive_ns: u64,
    },
    /// Session bytes of client `client` arrive at the other end.
    Session {
        client: u32,
        side: Side,
        transmit: Transmit,
    },
    /// Cost model: a client's packet reaches its gateway (the session's crypto left out).
    Relay {
        client: u32,
        first_hop: [u8; 32],
        packet: Vec<u8>,
    },
    /// Cost model: a gateway's delivery reaches its client.
    Delivery {
        client: u32,
        kind: DeliveryKind,
        identifier: [u8; 16],
        bytes: Vec<u8>,
    },
}

/// A packet fed to an engine core, waiting to come out.
struct Pending {
    packet_id: u64,
    arrive_ns: u64,
    info: PacketInfo,
}

struct EngineNode {
    core: Core,
    /// The packets fed to the core; a packet's slot is the tag the core keeps with its buffer.
    pending: Slab<Pending>,
    wake_ns: Option<u64>,
    /// With a mix capacity: when the packets already waiting will have been processed.
    busy_until_ns: u64,
}

/// One stored delivery in the gateway's mailbox for a client.
struct Stored {
    kind: DeliveryKind,
    identifier: [u8; 16],
    bytes: Vec<u8>,
}

/// A simulated client: the real client core and session, and the gateway's end of that
/// session with its mailbox for the client (the gateway's engine core is its own node).
struct ClientNode {
    gateway: u32,
    recipient: u32,
    core: LoopixClient,
    session: ClientSession,
    gateway_session: GatewaySession,
    mailbox: BTreeMap<u64, Stored>,
    next_delivery_id: u64,
    /// Packets handed to the session, in order, not yet out of the gateway's end.
    in_flight: VecDeque<(u64, PacketInfo)>,
    /// The simulator's id of each of the core's outgoing messages, until it is done.
    messages: HashMap<u64, u64>,
    wake_ns: Option<u64>,
    /// Real Sphinx: the packets go through the session. Cost model: they leave here, in
    /// order, for the gateway (first hop and packet), and deliveries come straight in.
    sessions: bool,
    relays: VecDeque<([u8; 32], Vec<u8>)>,
    next_delivery_id_in: u64,
}

impl ClientNode {
    /// Hands the core's output to the session; `sent` gets each packet that left.
    fn core_transmit(&mut self, transmit: LoopixTransmit, sent: &mut Vec<(PacketKind, u32)>) {
        match transmit {
            LoopixTransmit::Packet(built) if !self.sessions => {
                sent.push((built.kind, built.packet.len() as u32));
                self.relays.push_back((built.first_hop, built.packet));
            }
            // The cost model keeps no mailbox: nothing to confirm.
            LoopixTransmit::Confirm(_) if !self.sessions => {}
            LoopixTransmit::Packet(built) => {
                let (kind, size_bytes) = (built.kind, built.packet.len() as u32);
                let message = ClientMessage::Forward {
                    first_hop: built.first_hop,
                    packet: built.packet,
                };
                // Refused only without a session: the core is told it is disconnected
                // then, and such a packet is lost as on a broken connection.
                if self.session.send(&message).is_ok() {
                    sent.push((kind, size_bytes));
                }
            }
            LoopixTransmit::Confirm(ids) => {
                for id in ids {
                    self.session.confirm(id);
                }
            }
        }
    }
}

/// What a turn of a client's sessions hands the simulator: bytes for either end of the link,
/// and packets the gateway's end relays (with their ground truth).
#[derive(Default)]
struct SessionOut {
    to_gateway: Vec<Transmit>,
    to_client: Vec<Transmit>,
    #[allow(clippy::type_complexity)]
    forwards: Vec<(SocketAddr, Vec<u8>, Option<(u64, PacketInfo)>)>,
}

impl ClientNode {
    /// One turn of both ends of the client's session and the gateway's mailbox for it;
    /// whether anything moved.
    fn pump_sessions(&mut self, now_us: u64, layer1: &Layer1, out: &mut SessionOut) -> bool {
        let mut moved = false;
        while let Some(transmit) = self.session.poll_transmit() {
            out.to_gateway.push(transmit);
            moved = true;
        }
        while let Some(event) = self.session.poll_event() {
            moved = true;
            match event {
                ClientEvent::Welcome { .. } => self.core.set_connected(true),
                ClientEvent::Deliver {
                    id,
                    kind,
                    identifier,
                    mut bytes,
                } => self
                    .core
                    .handle_delivery(now_us, id, kind, identifier, &mut bytes),
                ClientEvent::Closed { .. } => self.core.set_connected(false),
                // Unmetered: no balance, and refusals only end the session.
                ClientEvent::Error { .. } | ClientEvent::Bandwidth { .. } => {}
            }
        }
        // The gateway's end: what the client's bytes asked for.
        while let Some(event) = self.gateway_session.poll_event() {
            moved = true;
            match event {
                GatewayEvent::Authenticated { .. } => {
                    let stored = self.mailbox.len() as u32;
                    self.gateway_session.open(stored, None, layer1);
                }
                GatewayEvent::Forward { next_hop, packet } => {
                    let ground = self.in_flight.pop_front();
                    out.forwards.push((next_hop, packet, ground));
                }
                GatewayEvent::Confirm { ids } => {
                    for id in ids {
                        self.mailbox.remove(&id);
                    }
                }
                _ => {}
            }
        }
        // The mailbox after what the session sent already.
        if self.gateway_session.is_established() {
            let cursor = self.gateway_session.cursor();
            let waiting: Vec<u64> = self
                .mailbox
                .range(cursor + 1..)
                .map(|(id, _)| *id)
                .collect();
            for id in waiting {
                let Some(stored) = self.mailbox.get(&id) else {
                    continue;
                };
                let delivered = self.gateway_session.deliver(
                    id,
                    stored.kind,
                    stored.identifier,
                    stored.bytes.clone(),
                );
                if delivered == lethe_proto::gateway_session::Delivered::Full {
                    break;
                }
                moved = true;
            }
        }
        while let Some(transmit) = self.gateway_session.poll_transmit() {
            out.to_client.push(transmit);
            moved = true;
        }
        moved
    }
}

enum NodeState {
    Client(Box<ClientNode>),
    Engine(Box<EngineNode>),
}

/// The gateways' view of the topology: a client's first hop must be a layer-1 mix.
struct Layer1(HashMap<[u8; 32], SocketAddr>);

impl FirstHops for Layer1 {
    fn check(&self, first_hop: &[u8; 32]) -> Result<SocketAddr, &'static str> {
        self.0
            .get(first_hop)
            .copied()
            .ok_or("first hop is not a layer-1 mixnode")
    }
}

struct World<'a> {
    config: &'a SimConfig,
    rng: ChaCha20Rng,
    queue: Queue<Event>,
    nodes: Vec<NodeState>,
    info: Vec<NodeInfo>,
    public_keys: Vec<[u8; 32]>,
    /// Client index by identity (the final hop's destination).
    identities: HashMap<[u8; 32], u32>,
    layer1: Layer1,
    /// Mix node indices per layer (layer 1 first).
    layers: Vec<Vec<u32>>,
    links: Links,
    buffers: Buffers,
    failures: Vec<(u32, u64, u64)>,
    /// The size of the mixes' own loop packets.
    packet_size: PacketSize,
    writer: TraceWriter,
    next_packet_id: u64,
    next_message_id: u64,
    end_ns: u64,
    summary: RunSummary,
    /// A mix's processing time per packet (1 / `mix_capacity_pps`), if modelled.
    service_ns: Option<u64>,
    /// The cost model: clear packets, decoded hops, no sessions.
    clear: bool,
}

/// SHA-256 of the config's JSON, hex.
pub fn config_hash(config: &SimConfig) -> String {
    let json = serde_json::to_string(config).unwrap_or_default();
    let digest = Sha256::digest(json.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Every simulated node listens on this port of its own address (10.x.y.z: its index).
const NODE_PORT: u16 = 1789;

fn node_address(index: u32) -> SocketAddr {
    let [_, a, b, c] = index.to_be_bytes();
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(10, a, b, c), NODE_PORT))
}

/// Runs `config` and writes the trace to `trace_path` (and its sidecar).
pub fn run(config: &SimConfig, trace_path: &Path, commit: &str) -> Result<RunSummary, SimError> {
    run_to(config, Some(trace_path), commit, None)
}

/// Runs `config` and only counts the trace's rows (a benchmark of the simulation alone).
pub fn run_untraced(config: &SimConfig, commit: &str) -> Result<RunSummary, SimError> {
    run_to(config, None, commit, None)
}

/// [`run_untraced`], given up (`SimError::BehindRealTime`) as soon as `elapsed_ns` (the
/// caller's clock: wall time, or the thread's CPU time on a shared machine), counted from
/// the first event, runs more than `REAL_TIME_SLACK_NS` ahead of the virtual time: whether a
/// configuration simulates as fast as real time, without waiting for one that does not.
pub fn run_untraced_real_time(
    config: &SimConfig,
    commit: &str,
    elapsed_ns: &dyn Fn() -> u64,
) -> Result<RunSummary, SimError> {
    run_to(config, None, commit, Some(elapsed_ns))
}

/// Events between two looks at the wall clock in [`run_untraced_real_time`].
const REAL_TIME_CHECK_EVENTS: u64 = 4_096;
/// How far the wall clock may run ahead of the virtual time before a real-time run gives up.
pub const REAL_TIME_SLACK_NS: u64 = 1_000_000_000;

fn run_to(
    config: &SimConfig,
    trace_path: Option<&Path>,
    commit: &str,
    real_time: Option<&dyn Fn() -> u64>,
) -> Result<RunSummary, SimError> {
    config.validate().map_err(SimError::Config)?;
    let mut world = World::new(config, trace_path, commit)?;
    world.start()?;
    // Real time is measured from the first event: the setup (keys, cores) is not the run.
    let setup_ns = real_time.map_or(0, |elapsed_ns| elapsed_ns());
    let mut events = 0u64;
    let mut end_ns = 0;
    while let Some((t_ns, event)) = world.queue.pop() {
        events += 1;
        if events > config::EVENTS_MAX {
            return Err(SimError::EventsExhausted);
        }
        end_ns = t_ns;
        if let (Some(elapsed_ns), 0) = (real_time, events % REAL_TIME_CHECK_EVENTS) {
            let run_ns = elapsed_ns().saturating_sub(setup_ns);
            if run_ns > end_ns.saturating_add(REAL_TIME_SLACK_NS) {
                return Err(SimError::BehindRealTime { at_ns: end_ns });
            }
        }
        world.handle(t_ns, event)?;
    }
    world.summary.events_count = events;
    world.summary.end_ns = end_ns;
    world.summary.trace_rows_count = world.writer.events_count();
    for node in &world.nodes {
        if let NodeState::Client(client) = node {
            let counters = client.core.counters();
            world.summary.retransmitted_count += counters.retransmitted;
            world.summary.given_up_count += counters.fragments_given_up;
            world.summary.acks_received_count += counters.acks_received;
        }
    }
    let summary = world.summary.clone();
    world.writer.finish()?;
    Ok(summary)
}

fn engine_config(sizes: PacketSizes) -> EngineConfig {
    EngineConfig {
        timer_tick_us: ENGINE_TIMER_TICK_US,
        timer_delay_ms_max: DELAY_MS_MAX,
        timer_entries_max: ENGINE_BUFFERS_PER_NODE,
        pool_buffers_count: ENGINE_BUFFERS_PER_NODE,
        pool_buffer_bytes: sizes.buffer_bytes(),
        packet_sizes: sizes,
        batch_packets_max: 1,
        batch_flush_us: 0,
        batch_align_packets: 1,
        batch_hold_us: 0,
        ..EngineConfig::default()
    }
}

/// Packets one engine node may see in a run, with a margin: every packet's hops (its mix
/// layers and the exit gateway, plus the gateway relaying a client's packet) spread over the
/// engine nodes, for the sending time and the drain after it.
fn replay_items(config: &SimConfig) -> u64 {
    let cover = config.cover.as_ref();
    let per_client = config.message_rate_per_s * 2.0
        + cover.map_or(0.0, |c| c.payload_rate_per_s + 2.0 * c.loop_rate_per_s);
    let mixes = f64::from(config.layers * config.mixes_per_layer);
    let per_s = f64::from(config.clients) * per_client + mixes * config.mix_loop_rate_per_s;
    let hops = f64::from(config.layers + 2);
    let nodes = mixes + f64::from(config.gateways);
    let seconds = config.duration_ms as f64 / 1e3 + 60.0;
    let items = per_s * hops / nodes.max(1.0) * seconds * 2.0;
    (items as u64).clamp(REPLAY_ITEMS_MIN, REPLAY_ITEMS_MAX)
}

fn engine_core(
    config: &EngineConfig,
    secret: StaticSecret,
    replay_items: u64,
) -> Result<Core, SimError> {
    let params = ReplayParams::for_items(replay_items, REPLAY_FP_RATE, REPLAY_BLOCK_WORDS)
        .map_err(|e| SimError::Config(format!("replay filter: {e:?}")))?;
    let mut filters = ReplayFilterSet::default();
    filters
        .insert(Arc::new(ReplayFilter::new(ROTATION_ID, params)))
        .map_err(|e| SimError::Config(format!("replay filter: {e:?}")))?;
    let keys = NodeKeys::new(SphinxKey::new(ROTATION_ID, secret), None);
    let metrics = Arc::new(CoreMetrics::default());
    Ok(Core::new(config.clone(), keys, filters, metrics, 0))
}

/// The real client's parameters for this configuration: the mixing delay for packets and
/// ACKs alike; with cover, the payload and loop streams' rates; without, no cover and real
/// packets leave as soon as they are queued.
fn loopix_params(config: &SimConfig) -> LoopixParams {
    let mean_ms = |rate: f64| if rate > 0.0 { 1e3 / rate } else { 0.0 };
    let base = LoopixParams {
        average_packet_delay_ms: config.delay_ms_mean,
        average_ack_delay_ms: config.delay_ms_mean,
        ..LoopixParams::default()
    };
    match &config.cover {
        Some(cover) => LoopixParams {
            message_sending_average_delay_ms: mean_ms(cover.payload_rate_per_s),
            loop_cover_average_delay_ms: mean_ms(cover.loop_rate_per_s),
            disable_loop_cover: cover.loop_rate_per_s <= 0.0,
            ..base
        },
        None => LoopixParams {
            message_sending_average_delay_ms: 0.0,
            ..base.without_cover()
        },
    }
}

impl<'a> World<'a> {
    fn new(
        config: &'a SimConfig,
        trace_path: Option<&Path>,
        commit: &str,
    ) -> Result<World<'a>, SimError> {
        let mut rng = ChaCha20Rng::seed_from_u64(config.seed);
        let packet_size = match config.packet_size.as_str() {
            "regular" => PacketSize::Regular,
            _ => PacketSize::Ack,
        };
        // Clients send regular packets and ack-size SURB-ACKs; mix loops take the config's.
        let engine = engine_config(PacketSizes::of(&[PacketSize::Regular, PacketSize::Ack]));
        engine
            .validate()
            .map_err(|e| SimError::Config(format!("engine: {e}")))?;
        let Nodes {
            info,
            nodes,
            public_keys,
            layers,
            identities,
        } = topology(config, &engine, &mut rng)?;
        let failures = failures_ns(config, &info)?;
        let mut meta = TraceMeta::new("sim", config.seed, config_hash(config), commit.into());
        meta.lab = config.lab;
        meta.nodes = info.clone();
        meta.layers = config.layers;
        meta.delay_mean_ns = (config.delay_ms_mean * NS_PER_MS as f64) as u64;
        meta.link_latency_ns_mean = link_latency_ns_mean(config);
        let writer = match trace_path {
            Some(path) => TraceWriter::create(path, meta)?,
            None => TraceWriter::counting(meta)?,
        };
        let layer1 = Layer1(
            layers[0]
                .iter()
                .map(|&m| (address::encode(&node_address(m)), node_address(m)))
                .collect(),
        );
        Ok(World {
            config,
            rng,
            queue: Queue::new(),
            links: Links::new(config),
            buffers: Buffers::default(),
            nodes,
            info,
            public_keys,
            identities,
            layer1,
            layers,
            failures,
            packet_size,
            writer,
            next_packet_id: 1,
            next_message_id: 1,
            end_ns: config.duration_ms * NS_PER_MS,
            summary: RunSummary::default(),
            // Validated positive; at least 1 ns so a huge capacity still orders packets.
            service_ns: config
                .mix_capacity_pps
                .map(|pps| ((1e9 / pps).round() as u64).max(1)),
            clear: config.sphinx == SphinxMode::CostModel,
        })
    }

    fn schedule(&mut self, t_ns: u64, event: Event) -> Result<(), SimError> {
        Ok(self.queue.push(t_ns, event)?)
    }

    /// The node a mix address names (the inverse of [`node_address`]), if it is one of ours.
    fn node_at(&self, address: &SocketAddr) -> Option<u32> {
        let SocketAddr::V4(v4) = address else {
            return None;
        };
        let [ten, a, b, c] = v4.ip().octets();
        let index = u32::from_be_bytes([0, a, b, c]);
        let ours = ten == 10 && v4.port() == NODE_PORT && (index as usize) < self.nodes.len();
        ours.then_some(index)
    }

    /// A uniform draw in [0, 1).
    fn uniform(&mut self) -> f64 {
        (self.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// An exponential draw of the given mean (ns).
    fn exponential_ns(&mut self, mean_ns: f64) -> u64 {
        if mean_ns <= 0.0 {
            return 0;
        }
        (-(1.0 - self.uniform()).ln() * mean_ns) as u64
    }

    fn pick(&mut self, count: usize) -> usize {
        (self.rng.next_u64() % count.max(1) as u64) as usize
    }

    fn stream_rate_per_s(&self, stream: Stream) -> f64 {
        let cover = self.config.cover.as_ref();
        match stream {
            Stream::Message => self.config.message_rate_per_s,
            Stream::Drop => cover.map(|c| c.drop_rate_per_s).unwrap_or(0.0),
            Stream::MixLoop => self.config.mix_loop_rate_per_s,
        }
    }

    /// Schedules the stream's next tick after `t_ns`, if it falls inside the sending time.
    fn next_tick(&mut self, node: u32, stream: Stream, t_ns: u64) -> Result<(), SimError> {
        let rate = self.stream_rate_per_s(stream);
        if rate <= 0.0 {
            return Ok(());
        }
        let next = t_ns.saturating_add(self.exponential_ns(1e9 / rate));
        if next < self.end_ns {
            self.schedule(next, Event::Stream { node, stream })?;
        }
        Ok(())
    }

    fn start(&mut self) -> Result<(), SimError> {
        for c in 0..self.config.clients {
            for stream in [Stream::Message, Stream::Drop] {
                self.next_tick(c, stream, 0)?;
            }
            // The session's first bytes (the client's handshake) leave at once; the cost
            // model has no handshake.
            if let Some(client) = self.client_mut(c).filter(|c| !c.sessions) {
                client.core.set_connected(true);
            }
            self.client_flush(c, 0)?;
        }
        let mixes: Vec<u32> = self.layers.iter().flatten().copied().collect();
        for mix in mixes {
            self.next_tick(mix, Stream::MixLoop, 0)?;
        }
        Ok(())
    }

    fn is_down(&self, node: u32, t_ns: u64) -> bool {
        let down =
            |(n, from, until): &(u32, u64, u64)| *n == node && (*from..*until).contains(&t_ns);
        self.failures.iter().any(down)
    }

    fn handle(&mut self, t: u64, event: Event) -> Result<(), SimError> {
        match event {
            Event::Stream { node, stream } => {
                self.next_tick(node, stream, t)?;
                self.stream_tick(node, stream, t)
            }
            Event::Arrive { node, packet } => self.arrive(node, packet, t),
            Event::Wake { node } => self.wake(node, t),
            Event::Admit {
                node,
                packet,
                arrive_ns,
            } => self.admit(node, packet, t, arrive_ns),
            Event::Session {
                client,
                side,
                transmit,
            } => self.session_arrive(client, side, transmit, t),
            Event::Relay {
                client,
                first_hop,
                packet,
            } => self.relay_arrive(client, first_hop, packet, t),
            Event::Delivery {
                client,
                kind,
                identifier,
                mut bytes,
            } => {
                if let Some(c) = self.client_mut(client) {
                    let id = c.next_delivery_id_in;
                    c.next_delivery_id_in += 1;
                    c.core
                        .handle_delivery(t / NS_PER_US, id, kind, identifier, &mut bytes);
                }
                self.buffers.give_back(bytes);
                self.client_flush(client, t)
            }
        }
    }

    fn client_mut(&mut self, node: u32) -> Option<&mut ClientNode> {
        match self.nodes.get_mut(node as usize) {
            Some(NodeState::Client(client)) => Some(client),
            _ => None,
        }
    }

    fn stream_tick(&mut self, node: u32, stream: Stream, t: u64) -> Result<(), SimError> {
        let now_us = t / NS_PER_US;
        match stream {
            Stream::MixLoop => return self.send_mix_loop(node, t),
            Stream::Message => {
                let id = self.new_message_id();
                let Some(recipient) = self.client_mut(node).map(|c| c.recipient) else {
                    return Ok(());
                };
                let address = match &self.nodes[recipient as usize] {
                    NodeState::Client(r) => r.core.address(),
                    NodeState::Engine(_) => return Ok(()),
                };
                let mut data = [0u8; MESSAGE_BYTES];
                data[..8].copy_from_slice(&id.to_le_bytes());
                let Some(client) = self.client_mut(node) else {
                    return Ok(());
                };
                // Refused only when the core's queue is full: the workload outran it.
                if let Ok(accepted) = client.core.send(address, &data, 0, now_us) {
                    client.messages.insert(accepted.message_id, id);
                    self.summary.messages_count += 1;
                }
            }
            Stream::Drop => {
                if let Some(client) = self.client_mut(node) {
                    let mut sent = Vec::new();
                    if let Some(built) = client.core.drop_cover() {
                        client.core_transmit(LoopixTransmit::Packet(built), &mut sent);
                    }
                    for (kind, size_bytes) in sent {
                        self.client_sent(node, kind, size_bytes, t)?;
                    }
                }
            }
        }
        self.client_flush(node, t)
    }

    /// Writes the `send` row of a packet the client handed its session and queues its
    /// ground truth behind the packets before it.
    fn client_sent(
        &mut self,
        node: u32,
        kind: PacketKind,
        size_bytes: u32,
        t: u64,
    ) -> Result<(), SimError> {
        let Some(client) = self.client_mut(node) else {
            return Ok(());
        };
        let (gateway, recipient) = (client.gateway, client.recipient);
        let (class, message_id, fragment_id, destination) = match kind {
            PacketKind::Real {
                message_id,
                fragment,
            } => {
                let id = client.messages.get(&message_id).copied().unwrap_or(0);
                (Class::Real, id, fragment, Some(recipient))
            }
            PacketKind::Reply { .. } => (Class::Reply, 0, 0, None),
            PacketKind::DropCover => (Class::DropCover, 0, 0, None),
            PacketKind::LoopCover { .. } => (Class::LoopCover, 0, 0, Some(node)),
        };
        let message_id = if message_id == 0 {
            self.new_message_id()
        } else {
            message_id
        };
        let info = PacketInfo {
            class,
            message_id,
            fragment_id,
            source: node,
            destination,
            size_bytes,
        };
        let id = self.new_packet_id();
        if class == Class::Real {
            self.summary.real_sent_count += 1;
        }
        if let Some(client) = self.client_mut(node) {
            client.in_flight.push_back((id, info));
        }
        let mut row = self.row(t, node, Kind::Send, id, &info);
        row.next_hop = Some(gateway);
        self.write(row)
    }

    /// Moves everything between a client's core and both ends of its session until nothing
    /// moves, then schedules the client's next deadline.
    fn client_flush(&mut self, node: u32, t: u64) -> Result<(), SimError> {
        let now_us = t / NS_PER_US;
        for _ in 0..FLUSH_TURNS_MAX {
            let mut moved = false;
            let mut sent = Vec::new();
            let mut out = SessionOut::default();
            let mut relays = Vec::new();
            let mut received = 0u64;
            let mut acked = 0u64;
            {
                let World { nodes, layer1, .. } = &mut *self;
                let Some(NodeState::Client(client)) = nodes.get_mut(node as usize) else {
                    return Ok(());
                };
                // An unpaced client's real packets leave as soon as the session is up.
                let up = !client.sessions || client.session.is_established();
                if !client.core.paced() && up {
                    while let Some(built) = client.core.next_real(now_us) {
                        client.core_transmit(LoopixTransmit::Packet(built), &mut sent);
                        moved = true;
                    }
                }
                while let Some(transmit) = client.core.poll_transmit() {
                    client.core_transmit(transmit, &mut sent);
                    moved = true;
                }
                while let Some(event) = client.core.poll_event() {
                    moved = true;
                    match event {
                        LoopixEvent::Progress {
                            message_id,
                            progress,
                            done,
                        } => {
                            if done {
                                client.messages.remove(&message_id);
                                if progress.delivered() {
                                    acked += 1;
                                }
                            }
                        }
                        LoopixEvent::Received(message) => {
                            if client.sessions {
                                for id in &message.delivery_ids {
                                    client.session.confirm(*id);
                                }
                            }
                            received += 1;
                        }
                    }
                }
                relays.extend(client.relays.drain(..));
                if client.sessions {
                    moved |= client.pump_sessions(now_us, layer1, &mut out);
                }
            }
            self.summary.messages_received_count += received;
            self.summary.messages_acked_count += acked;
            for (kind, size) in sent {
                self.client_sent(node, kind, size, t)?;
            }
            for transmit in out.to_gateway {
                self.session_link(node, Side::ToGateway, transmit, t)?;
            }
            for transmit in out.to_client {
                self.session_link(node, Side::ToClient, transmit, t)?;
            }
            for (next_hop, packet, ground) in out.forwards {
                self.gateway_forward(node, next_hop, packet, ground, t)?;
            }
            for (first_hop, packet) in relays {
                let Some(gateway) = self.client_mut(node).map(|c| c.gateway) else {
                    break;
                };
                let at = self.link_at(node, gateway, t);
                let relay = Event::Relay {
                    client: node,
                    first_hop,
                    packet,
                };
                self.schedule(at, relay)?;
            }
            if !moved {
                return self.client_wake(node, t);
            }
        }
        Ok(())
    }

    /// Schedules the client's next deadline: during the sending time always, after it only
    /// while a message is still unacknowledged (its retransmissions need the timers).
    fn client_wake(&mut self, node: u32, t: u64) -> Result<(), SimError> {
        let end_ns = self.end_ns;
        let Some(client) = self.client_mut(node) else {
            return Ok(());
        };
        let Some(due_us) = client.core.poll_timeout() else {
            return Ok(());
        };
        let due_ns = due_us.saturating_mul(NS_PER_US).max(t);
        if due_ns >= end_ns && client.messages.is_empty() {
            return Ok(());
        }
        if client.wake_ns.is_none_or(|w| due_ns < w || w < t) {
            client.wake_ns = Some(due_ns);
            self.schedule(due_ns, Event::Wake { node })?;
        }
        Ok(())
    }

    /// Session bytes of `client` onto the client-gateway link, in order behind the link's
    /// previous bytes.
    fn session_link(
        &mut self,
        client: u32,
        side: Side,
        transmit: Transmit,
        t: u64,
    ) -> Result<(), SimError> {
        let Some(gateway) = self.client_mut(client).map(|c| c.gateway) else {
            return Ok(());
        };
        let (from, to) = match side {
            Side::ToGateway => (client, gateway),
            Side::ToClient => (gateway, client),
        };
        let at = self.link_at(from, to, t);
        self.schedule(
            at,
            Event::Session {
                client,
                side,
                transmit,
            },
        )
    }

    fn session_arrive(
        &mut self,
        node: u32,
        side: Side,
        transmit: Transmit,
        t: u64,
    ) -> Result<(), SimError> {
        let now_us = t / NS_PER_US;
        {
            let World {
                nodes, rng, layer1, ..
            } = self;
            let Some(NodeState::Client(client)) = nodes.get_mut(node as usize) else {
                return Ok(());
            };
            match (side, transmit) {
                (Side::ToGateway, Transmit::Message(bytes)) => client
                    .gateway_session
                    .handle_message(now_us, &bytes, rng, &*layer1),
                (Side::ToGateway, Transmit::Close(..)) => {
                    client.gateway_session.handle_transport_closed()
                }
                (Side::ToClient, Transmit::Message(bytes)) => {
                    client.session.handle_message(now_us, &bytes)
                }
                (Side::ToClient, Transmit::Close(..)) => client.session.handle_transport_closed(),
            }
        }
        self.client_flush(node, t)
    }

    /// Cost model: a client's packet at its gateway, which checks the first hop as the
    /// gateway's session does and relays it.
    fn relay_arrive(
        &mut self,
        client: u32,
        first_hop: [u8; 32],
        packet: Vec<u8>,
        t: u64,
    ) -> Result<(), SimError> {
        let ground = self
            .client_mut(client)
            .and_then(|c| c.in_flight.pop_front());
        // Never refused for the client core's own routes; a refused one is lost at the
        // gateway as an unknown next hop.
        let next_hop = self
            .layer1
            .check(&first_hop)
            .unwrap_or(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)));
        self.gateway_forward(client, next_hop, packet, ground, t)
    }

    /// The gateway relays a client's packet to its first mix (the session checked the hop).
    fn gateway_forward(
        &mut self,
        client: u32,
        next_hop: SocketAddr,
        packet: Vec<u8>,
        ground: Option<(u64, PacketInfo)>,
        t: u64,
    ) -> Result<(), SimError> {
        let Some(gateway) = self.client_mut(client).map(|c| c.gateway) else {
            return Ok(());
        };
        let (id, info) = match ground {
            Some(ground) => ground,
            None => {
                // Not one the client core sent (it cannot happen: every forward is recorded).
                let info = PacketInfo {
                    class: Class::Real,
                    message_id: 0,
                    fragment_id: 0,
                    source: client,
                    destination: None,
                    size_bytes: packet.len() as u32,
                };
                (self.new_packet_id(), info)
            }
        };
        let arrive = self.row(t, gateway, Kind::Arrive, id, &info);
        self.write(arrive)?;
        if self.is_down(gateway, t) {
            return self.drop_row(t, gateway, id, &info, "node_down");
        }
        let Some(next) = self.node_at(&next_hop) else {
            return self.drop_row(t, gateway, id, &info, "unknown_next_hop");
        };
        let mut depart = self.row(t, gateway, Kind::Depart, id, &info);
        depart.next_hop = Some(next);
        self.write(depart)?;
        let packet = WirePacket {
            id,
            bytes: packet,
            info,
        };
        self.link(gateway, next, packet, t)
    }

    fn new_message_id(&mut self) -> u64 {
        let id = self.next_message_id;
        self.next_message_id += 1;
        id
    }

    fn new_packet_id(&mut self) -> u64 {
        let id = self.next_packet_id;
        self.next_packet_id += 1;
        id
    }

    /// Builds a mix's loop packet over `route` (node indices) with a delay drawn per mix hop
    /// as the client draws them; the final hop (the mix itself) does not delay.
    fn build(&mut self, route: &[u32], info: &PacketInfo) -> Result<Vec<u8>, SimError> {
        let mut hops = Vec::with_capacity(route.len());
        for &node in route {
            hops.push(RouteHop {
                address: address::encode(&node_address(node)),
                public_key: self.public_keys[node as usize],
            });
        }
        let mut delays_ns = vec![0; route.len()];
        sample_delays_ns(&mut self.rng, self.config.delay_ms_mean, &mut delays_ns);
        if let Some(last) = delays_ns.last_mut() {
            *last = 0;
        }
        let mut destination = Destination {
            address: [0; 32],
            identifier: [0; 16],
        };
        destination.address[..4].copy_from_slice(&info.source.to_le_bytes());
        destination.identifier[..8].copy_from_slice(&info.message_id.to_le_bytes());
        let spec = PacketSpec {
            route: &hops,
            delays_ns: &delays_ns,
            destination: &destination,
            version: Version::CURRENT,
        };
        let message = info.message_id.to_le_bytes();
        let created = if self.clear {
            let nonce = self.rng.next_u64();
            clear::create(
                nonce,
                self.packet_size,
                &message,
                &hops,
                &delays_ns,
                &destination,
            )
        } else {
            let payload_len = self.packet_size.payload_len();
            sphinx::create(&message, payload_len, &spec, None, &mut self.rng)
        };
        created.map_err(|e| SimError::Sphinx(format!("{e:?}")))
    }

    /// A mix's loop: through every other layer, in order, and back to the mix.
    fn send_mix_loop(&mut self, mix: u32, t: u64) -> Result<(), SimError> {
        let Some(layer) = self.info[mix as usize].layer else {
            return Ok(());
        };
        let layers = self.layers.len();
        let mut route = vec![mix];
        for step in 1..layers {
            let other = (layer as usize - 1 + step) % layers;
            let pick = self.pick(self.layers[other].len());
            route.push(self.layers[other][pick]);
        }
        route.push(mix);
        let mut info = PacketInfo {
            class: Class::LoopCover,
            message_id: self.new_message_id(),
            fragment_id: 0,
            source: mix,
            destination: Some(mix),
            size_bytes: self.packet_size.packet_len() as u32,
        };
        let bytes = self.build(&route, &info)?;
        info.size_bytes = bytes.len() as u32;
        let id = self.new_packet_id();
        let mut row = self.row(t, mix, Kind::Send, id, &info);
        row.next_hop = Some(mix);
        self.write(row)?;
        let packet = WirePacket { id, bytes, info };
        self.arrive(mix, packet, t)
    }

    fn link_latency_ns(&mut self, from: u32, to: u32) -> u64 {
        let link = &self.config.link;
        let base_us = match &link.latency_us_matrix {
            Some(matrix) => matrix[from as usize][to as usize],
            None => link.latency_us,
        };
        let jitter_us = link.jitter_us;
        let jitter_ns = (self.uniform() * (jitter_us * NS_PER_US) as f64) as u64;
        base_us * NS_PER_US + jitter_ns
    }

    /// When something put on the link `from -> to` at `t` arrives: in order behind the
    /// link's previous packet.
    fn link_at(&mut self, from: u32, to: u32, t: u64) -> u64 {
        let latency = self.link_latency_ns(from, to);
        let free = self.links.free_ns(from, to);
        let at = t.saturating_add(latency).max(*free);
        *free = at;
        at
    }

    /// Puts a packet on the link `from -> to`, in order behind the link's previous packet.
    fn link(&mut self, from: u32, to: u32, packet: WirePacket, t: u64) -> Result<(), SimError> {
        let at = self.link_at(from, to, t);
        self.schedule(at, Event::Arrive { node: to, packet })
    }

    fn write(&mut self, event: TraceEvent) -> Result<(), SimError> {
        Ok(self.writer.write(&event)?)
    }

    /// A row about `packet` at `node` (message id only at endpoints unless lab).
    fn row(&self, t: u64, node: u32, kind: Kind, id: u64, info: &PacketInfo) -> TraceEvent {
        let endpoint = matches!(kind, Kind::Send | Kind::Deliver);
        let known = endpoint || self.config.lab;
        TraceEvent {
            t_ns: t,
            node,
            kind,
            class: info.class,
            size_bytes: info.size_bytes,
            packet_id: id,
            next_hop: None,
            message_id: known.then_some(info.message_id),
            fragment_id: known.then_some(info.fragment_id),
            destination: if endpoint { info.destination } else { None },
            drop_reason: None,
            lab: LabFields::default(),
        }
    }

    fn drop_row(
        &mut self,
        t: u64,
        node: u32,
        id: u64,
        info: &PacketInfo,
        reason: &str,
    ) -> Result<(), SimError> {
        let mut row = self.row(t, node, Kind::Drop, id, info);
        row.drop_reason = Some(reason.to_string());
        self.summary.dropped_count += 1;
        if info.class == Class::Real {
            self.summary.real_dropped_count += 1;
        }
        self.write(row)
    }

    fn arrive(&mut self, node: u32, packet: WirePacket, t: u64) -> Result<(), SimError> {
        // The arrival is written even at a node that is down (the packet did reach it): a
        // drop row always follows its packet's arrival at that node, so a metric counting a
        // node's packets can take every drop as one leaving.
        let arrive = self.row(t, node, Kind::Arrive, packet.id, &packet.info);
        self.write(arrive)?;
        if self.is_down(node, t) {
            return self.drop_row(t, node, packet.id, &packet.info, "node_down");
        }
        let is_mix = self.info.get(node as usize).map(|i| i.role) == Some(Role::Mix);
        if let (true, Some(service_ns)) = (is_mix, self.service_ns) {
            let NodeState::Engine(engine) = &mut self.nodes[node as usize] else {
                return self.drop_row(t, node, packet.id, &packet.info, "not_a_node");
            };
            // Arrival order, one packet at a time: this one starts once those ahead are done.
            let start_ns = engine.busy_until_ns.max(t);
            if (start_ns - t) / service_ns >= u64::from(ENGINE_BUFFERS_PER_NODE) {
                return self.drop_row(t, node, packet.id, &packet.info, "overload");
            }
            engine.busy_until_ns = start_ns + service_ns;
            let event = Event::Admit {
                node,
                packet,
                arrive_ns: t,
            };
            return self.schedule(start_ns + service_ns, event);
        }
        self.admit(node, packet, t, t)
    }

    /// Feeds a packet that arrived at `arrive_ns` to `node`'s engine core at `t`.
    fn admit(
        &mut self,
        node: u32,
        packet: WirePacket,
        t: u64,
        arrive_ns: u64,
    ) -> Result<(), SimError> {
        if self.is_down(node, t) {
            return self.drop_row(t, node, packet.id, &packet.info, "node_down");
        }
        let now_us = t / NS_PER_US;
        let WirePacket {
            id,
            mut bytes,
            info,
        } = packet;
        // The cost model's unwrap, before the engine core: what the Sphinx seam would say.
        let decoded = if self.clear {
            match clear::unwrap(&mut bytes) {
                Ok(ClearHop::Forward {
                    next_hop,
                    delay_ns,
                    replay_tag,
                }) => Some((DecodedHop::Forward { next_hop, delay_ns }, replay_tag)),
                Ok(ClearHop::Final {
                    destination,
                    identifier,
                    replay_tag,
                }) => Some((
                    DecodedHop::Final {
                        destination,
                        identifier,
                    },
                    replay_tag,
                )),
                Err(_) => return self.drop_row(t, node, id, &info, "malformed"),
            }
        } else {
            None
        };
        let NodeState::Engine(engine) = &mut self.nodes[node as usize] else {
            return self.drop_row(t, node, id, &info, "not_a_node");
        };
        let pending = Pending {
            packet_id: id,
            arrive_ns,
            info,
        };
        // More than the core's buffers and this one: the core would refuse it as overloaded.
        let Some(slot) = engine.pending.insert(pending) else {
            return self.drop_row(t, node, id, &info, DropReason::Overload.label());
        };
        let tag = u64::from(slot);
        let before = drop_counts(&engine.core);
        let admitted = match decoded {
            Some((hop, replay_tag)) => {
                engine
                    .core
                    .handle_decoded(now_us, &bytes, hop, &replay_tag, tag)
            }
            None => {
                let rotation = KeyRotation::Unknown;
                engine
                    .core
                    .handle_packet_tagged(now_us, rotation, &bytes, tag)
            }
        };
        // The core copied the bytes into its own buffer.
        self.buffers.give_back(bytes);
        // One packet per batch: a drop counted during this call (refused at once, or by the
        // batch it ran: replayed, malformed, no room for its timer) is this packet's.
        let reason = match admitted {
            Admitted::Dropped(reason) => Some(reason),
            Admitted::Queued | Admitted::BatchRan(_) => {
                let after = drop_counts(&engine.core);
                let grew = DropReason::ALL
                    .into_iter()
                    .zip(before.iter().zip(after.iter()));
                grew.filter(|(_, (b, a))| a > b)
                    .map(|(reason, _)| reason)
                    .next()
            }
        };
        if let Some(reason) = reason {
            if let Some(p) = engine.pending.take(slot) {
                self.drop_row(t, node, p.packet_id, &p.info, reason.label())?;
            }
        }
        self.drain(node, t)
    }

    fn wake(&mut self, node: u32, t: u64) -> Result<(), SimError> {
        if let Some(client) = self.client_mut(node) {
            if client.wake_ns == Some(t) {
                client.wake_ns = None;
            }
            if client
                .core
                .poll_timeout()
                .is_some_and(|due| due <= t / NS_PER_US)
            {
                client.core.handle_timeout(t / NS_PER_US);
            }
            return self.client_flush(node, t);
        }
        let NodeState::Engine(engine) = &mut self.nodes[node as usize] else {
            return Ok(());
        };
        if engine.wake_ns == Some(t) {
            engine.wake_ns = None;
        }
        // Batches run in `handle_packet` (one packet each): nothing runs here but timers.
        let _ = engine.core.handle_timeout(t / NS_PER_US);
        self.drain(node, t)
    }

    /// Takes every action out of `node`'s core, then schedules its next timeout.
    fn drain(&mut self, node: u32, t: u64) -> Result<(), SimError> {
        loop {
            let NodeState::Engine(engine) = &mut self.nodes[node as usize] else {
                return Ok(());
            };
            let Some(action) = engine.core.poll_action() else {
                break;
            };
            match action {
                Action::Forward {
                    next_hop,
                    at_us,
                    buffer,
                    ..
                } => {
                    let arrived_us = engine.core.arrived_us(&buffer);
                    let bytes = self.buffers.copy_of(engine.core.packet(&buffer));
                    let pending = take_pending(engine, &buffer);
                    engine.core.release(buffer);
                    let next = self.node_at(&next_hop);
                    self.forwarded(node, t, pending, next, bytes, at_us, arrived_us)?;
                }
                Action::Deliver {
                    destination,
                    identifier,
                    buffer,
                } => {
                    let packet = self.buffers.copy_of(engine.core.packet(&buffer));
                    let pending = take_pending(engine, &buffer);
                    engine.core.release(buffer);
                    let hop = FinalHop {
                        destination,
                        identifier,
                        packet,
                    };
                    let delivered = self.delivered(node, t, pending, &hop);
                    self.buffers.give_back(hop.packet);
                    delivered?;
                }
            }
        }
        let NodeState::Engine(engine) = &mut self.nodes[node as usize] else {
            return Ok(());
        };
        if let Some(due_us) = engine.core.poll_timeout() {
            let due_ns = (due_us * NS_PER_US).max(t);
            if engine.wake_ns.is_none_or(|w| due_ns < w) {
                engine.wake_ns = Some(due_ns);
                self.schedule(due_ns, Event::Wake { node })?;
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn forwarded(
        &mut self,
        node: u32,
        t: u64,
        pending: Option<Pending>,
        next: Option<u32>,
        bytes: Vec<u8>,
        at_us: u64,
        arrived_us: u64,
    ) -> Result<(), SimError> {
        let Some(pending) = pending else {
            return Ok(());
        };
        let (Some(next), false) = (next, self.is_down(node, t)) else {
            let reason = if next.is_none() {
                "unknown_next_hop"
            } else {
                "node_down"
            };
            return self.drop_row(t, node, pending.packet_id, &pending.info, reason);
        };
        let id = self.new_packet_id();
        let info = pending.info;
        let mut row = self.row(t, node, Kind::Depart, id, &info);
        row.next_hop = Some(next);
        if self.config.lab {
            row.lab = LabFields {
                in_packet_id: Some(pending.packet_id),
                delay_drawn_ns: Some(at_us.saturating_sub(arrived_us) * NS_PER_US),
                residence_ns: Some(t.saturating_sub(pending.arrive_ns)),
            };
        }
        self.write(row)?;
        let packet = WirePacket { id, bytes, info };
        self.link(node, next, packet, t)
    }

    /// The exit gateway's work on a final-hop packet, decided by the real gateway's rules
    /// ([`final_hop::decide`]): drop cover is discarded; mail is stored for its recipient and
    /// a forward packet's SURB-ACK sent on.
    fn delivered(
        &mut self,
        node: u32,
        t: u64,
        pending: Option<Pending>,
        hop: &FinalHop,
    ) -> Result<(), SimError> {
        let Some(pending) = pending else {
            return Ok(());
        };
        let info = pending.info;
        let identities = &self.identities;
        let mailboxes = |recipient: &[u8; 32]| {
            if identities.contains_key(recipient) {
                Room::Available
            } else {
                Room::Unknown
            }
        };
        let mail =
            match final_hop::decide(&hop.destination, &hop.identifier, &hop.packet, &mailboxes) {
                FinalHopOutcome::Deliver(mail) => mail,
                // Drop cover ends at the gateway: nothing reaches a client.
                FinalHopOutcome::DropCover => {
                    return self.drop_row(t, node, pending.packet_id, &info, "cover_discarded")
                }
                FinalHopOutcome::Refused(_) => {
                    return self.drop_row(t, node, pending.packet_id, &info, "undeliverable")
                }
            };
        let Some(recipient) = self.identities.get(&mail.recipient).copied() else {
            return self.drop_row(t, node, pending.packet_id, &info, "undeliverable");
        };
        if info.class == Class::Real {
            self.summary.real_delivered_count += 1;
        }
        let row = self.row(t, node, Kind::Deliver, pending.packet_id, &info);
        self.write(row)?;
        if let Some(ack) = mail.ack {
            self.send_ack(node, ack, &info, t)?;
        }
        if self.clear {
            // No session: the delivery crosses the link to the recipient's client core.
            let delivery = Event::Delivery {
                client: recipient,
                kind: mail.kind,
                identifier: mail.identifier,
                bytes: self.buffers.copy_of(mail.bytes),
            };
            let at = self.link_at(node, recipient, t);
            return self.schedule(at, delivery);
        }
        let stored = Stored {
            kind: mail.kind,
            identifier: mail.identifier,
            bytes: mail.bytes.to_vec(),
        };
        let Some(client) = self.client_mut(recipient) else {
            return Ok(());
        };
        let id = client.next_delivery_id;
        client.next_delivery_id += 1;
        client.mailbox.insert(id, stored);
        self.client_flush(recipient, t)
    }

    /// The gateway sends a stored packet's SURB-ACK on to its first hop.
    fn send_ack(
        &mut self,
        gateway: u32,
        ack: SurbAck<'_>,
        acked: &PacketInfo,
        t: u64,
    ) -> Result<(), SimError> {
        let next = ack.next_hop().and_then(|a| self.node_at(&a));
        let Some(next) = next else {
            return Ok(());
        };
        let bytes = self.buffers.copy_of(ack.packet);
        let info = PacketInfo {
            class: Class::Ack,
            message_id: acked.message_id,
            fragment_id: acked.fragment_id,
            source: gateway,
            destination: Some(acked.source),
            size_bytes: bytes.len() as u32,
        };
        let id = self.new_packet_id();
        let mut row = self.row(t, gateway, Kind::Send, id, &info);
        row.next_hop = Some(next);
        self.write(row)?;
        if self.is_down(gateway, t) {
            return self.drop_row(t, gateway, id, &info, "node_down");
        }
        let packet = WirePacket { id, bytes, info };
        self.link(gateway, next, packet, t)
    }
}

/// The nodes, in index order: clients, gateways, then mixes layer by layer.
struct Nodes {
    info: Vec<NodeInfo>,
    nodes: Vec<NodeState>,
    public_keys: Vec<[u8; 32]>,
    /// Mix node indices per layer (layer 1 first).
    layers: Vec<Vec<u32>>,
    identities: HashMap<[u8; 32], u32>,
}

fn descriptor(
    index: u32,
    identity: [u8; 32],
    sphinx_key: [u8; 32],
    role: TopologyRole,
) -> Descriptor {
    Descriptor {
        identity: lethe_proto::hex::encode(&identity),
        sphinx_key: lethe_proto::hex::encode(&sphinx_key),
        rotation_id: ROTATION_ID,
        mix_address: node_address(index),
        role,
        client_url: None,
        metrics_url: None,
        family: None,
        issued_at_s: 0,
    }
}

fn topology(
    config: &SimConfig,
    engine: &EngineConfig,
    rng: &mut ChaCha20Rng,
) -> Result<Nodes, SimError> {
    let mut topology = Nodes {
        info: Vec::new(),
        nodes: Vec::new(),
        public_keys: vec![[0; 32]; config.clients as usize],
        layers: vec![Vec::new(); config.layers as usize],
        identities: HashMap::new(),
    };
    for c in 0..config.clients {
        topology.info.push(NodeInfo {
            name: format!("c{c}"),
            role: Role::Client,
            layer: None,
            corrupt: false,
        });
    }
    let engine_roles = (0..config.gateways).map(|g| (format!("g{g}"), Role::Gateway, 0));
    let mix_roles = (1..=config.layers).flat_map(|layer| {
        (0..config.mixes_per_layer).map(move |m| (format!("m{layer}.{m}"), Role::Mix, layer))
    });
    let mut engines = Vec::new();
    let replay_items = replay_items(config);
    let mut gateway_seeds = Vec::new();
    let mut directory_layers: Vec<Vec<Descriptor>> = vec![Vec::new(); config.layers as usize];
    let mut directory_gateways = Vec::new();
    for (name, role, layer) in engine_roles.chain(mix_roles) {
        let index = topology.info.len() as u32;
        let secret = StaticSecret::random_from_rng(&mut *rng);
        let public_key = x25519_dalek::PublicKey::from(&secret).to_bytes();
        let mut seed = [0u8; 32];
        rng.fill_bytes(&mut seed);
        let identity = identity_public(&seed);
        if role == Role::Mix {
            topology.layers[layer as usize - 1].push(index);
            let d = descriptor(index, identity, public_key, TopologyRole::Mixnode);
            directory_layers[layer as usize - 1].push(d);
        } else {
            gateway_seeds.push((seed, identity));
            let d = descriptor(index, identity, public_key, TopologyRole::Gateway);
            directory_gateways.push(d);
        }
        topology.public_keys.push(public_key);
        engines.push(NodeState::Engine(Box::new(EngineNode {
            core: engine_core(engine, secret, replay_items)?,
            pending: Slab::new(PENDING_PER_NODE_MAX),
            wake_ns: None,
            busy_until_ns: 0,
        })));
        let corrupt = config.corrupt.contains(&name);
        topology.info.push(NodeInfo {
            name,
            role,
            layer: Some(layer),
            corrupt,
        });
    }
    let directory = Arc::new(Topology {
        epoch: 1,
        issued_at_s: 0,
        valid_until_s: u64::MAX,
        layers: directory_layers,
        gateways: directory_gateways,
        shared_random: None,
        layer_period: None,
        nodes_per_ip_max: None,
        admission: None,
    });
    let params = loopix_params(config);
    for c in 0..config.clients {
        let g = c % config.gateways;
        let (gateway_seed, gateway_identity) = gateway_seeds[g as usize];
        let mut identity_seed = [0u8; 32];
        rng.fill_bytes(&mut identity_seed);
        let mut encryption_secret = [0u8; 32];
        rng.fill_bytes(&mut encryption_secret);
        let core_rng = rand::rngs::StdRng::seed_from_u64(rng.next_u64());
        let mut core = LoopixClient::new(
            &identity_seed,
            &encryption_secret,
            gateway_identity,
            params,
            ClientLimits::default(),
            0,
            core_rng,
        );
        core.set_topology(directory.clone());
        let cost_model = config.sphinx == SphinxMode::CostModel;
        if cost_model {
            core.set_packet_format(PacketFormat::Clear);
        }
        topology
            .identities
            .insert(identity_public(&identity_seed), c);
        let session = ClientSession::new(
            0,
            HANDSHAKE_TIMEOUT_US,
            &identity_seed,
            gateway_identity,
            &mut *rng,
        );
        let gateway_config = GatewayConfig {
            handshake_timeout_us: HANDSHAKE_TIMEOUT_US,
            idle_timeout_us: lethe_proto::limits::SESSION_IDLE_TIMEOUT_S_DEFAULT * 1_000_000,
            metered: false,
        };
        topology.nodes.push(NodeState::Client(Box::new(ClientNode {
            gateway: config.clients + g,
            recipient: (c + 1) % config.clients,
            core,
            session,
            gateway_session: GatewaySession::new(0, gateway_config, gateway_seed),
            mailbox: BTreeMap::new(),
            next_delivery_id: 1,
            in_flight: VecDeque::new(),
            messages: HashMap::new(),
            wake_ns: None,
            sessions: !cost_model,
            relays: VecDeque::new(),
            next_delivery_id_in: 1,
        })));
    }
    topology.nodes.extend(engines);
    for name in &config.corrupt {
        if !topology.info.iter().any(|n| &n.name == name) {
            return Err(SimError::Config(format!(
                "corrupt node {name:?} does not exist"
            )));
        }
    }
    Ok(topology)
}

/// `(node, from_ns, until_ns)` of each configured failure.
fn failures_ns(config: &SimConfig, info: &[NodeInfo]) -> Result<Vec<(u32, u64, u64)>, SimError> {
    let mut failures = Vec::new();
    for failure in &config.failures {
        let node = info.iter().position(|n| n.name == failure.node);
        let node = node.ok_or_else(|| {
            SimError::Config(format!("failed node {:?} does not exist", failure.node))
        })?;
        let (from_ns, until_ns) = (failure.from_ms * NS_PER_MS, failure.until_ms * NS_PER_MS);
        failures.push((node as u32, from_ns, until_ns));
    }
    Ok(failures)
}

/// The packet in a buffer the core hands out: its tag names its slot.
fn take_pending(engine: &mut EngineNode, buffer: &lethe_engine::pool::BufId) -> Option<Pending> {
    let slot = u32::try_from(engine.core.tag(buffer)).ok()?;
    engine.pending.take(slot)
}

fn drop_counts(core: &Core) -> [u64; DropReason::COUNT] {
    DropReason::ALL.map(|reason| core.metrics().dropped_count(reason))
}

fn link_latency_ns_mean(config: &SimConfig) -> u64 {
    let jitter_ns = config.link.jitter_us * NS_PER_US / 2;
    let base_ns = match &config.link.latency_us_matrix {
        Some(matrix) => {
            let cells = matrix.iter().flatten();
            let count = (matrix.len() * matrix.len()).max(1) as u64;
            cells.sum::<u64>() / count * NS_PER_US
        }
        None => config.link.latency_us * NS_PER_US,
    };
    base_ns + jitter_ns
}

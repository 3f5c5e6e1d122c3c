//! A deterministic discrete-event simulator. Mixes and gateways are the real engine core
//! ([`lethe_engine::core::Core`], I/O-free: fed time and packet bytes, returning actions), so
//! the Sphinx processing, delays and drops are the nodes' own, not a model of them. Clients
//! send on the real client's Loopix schedule (`lethe_proto::loopix::schedule`) and draw per-hop
//! delays as it does (`lethe_proto::topology::sample_delays_ns`), building real Sphinx packets
//! with `lethe_crypto::sphinx::create`; the rest of the client core (ACKs, retransmission,
//! sessions) joins once it lives in lethe-proto.
//!
//! Determinism: one seeded ChaCha20 stream draws keys, routes, delays, timings and Sphinx
//! randomness in event order; events at the same instant run in the order they were scheduled
//! (a sequence number breaks ties). Virtual time is in ns; the engine is fed µs.
//!
//! Matching an engine output to its input: the core hands out a buffer whose arrival time
//! (`Core::arrived_us`) and delay deadline (`at_us`) the simulator matches against the packets
//! it fed, so a mix's departures carry the right ground truth (class, message, lab link).
//! The engine runs one packet per batch (`batch_packets_max = 1`): a drop counted while a
//! packet is fed is that packet's.

pub mod config;

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::Path;
use std::sync::Arc;

use lethe_crypto::framing::{KeyRotation, PacketSize};
use lethe_crypto::sphinx::{self, address, Destination, PacketSpec, RouteHop, Version};
use lethe_engine::core::{Action, Admitted, Core, NodeKeys, SphinxKey};
use lethe_engine::limits::{PacketSizes, DELAY_MS_MAX};
use lethe_engine::metrics::{CoreMetrics, DropReason};
use lethe_engine::{EngineConfig, ReplayFilter, ReplayFilterSet, ReplayParams};
use lethe_proto::loopix::schedule::{Schedule, ScheduleParams, Tick};
use lethe_proto::topology::sample_delays_ns;
use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};
use sha2::{Digest, Sha256};
use x25519_dalek::StaticSecret;

use crate::trace::{
    Class, Kind, LabFields, NodeInfo, Role, TraceError, TraceEvent, TraceMeta, TraceWriter,
};
pub use config::{CoverRates, LinkModel, NodeFailure, SimConfig};

/// Engine buffers (and timer entries) per simulated node: packets a node can hold at once.
pub const ENGINE_BUFFERS_PER_NODE: u32 = 4_096;
/// Engine timer tick: the delay cap (`DELAY_MS_MAX`) must fit the wheel's span in ticks.
const ENGINE_TIMER_TICK_US: u64 = 50;
/// Replay filter sizing per node (packets per key lifetime) and its false-positive rate.
const REPLAY_ITEMS: u64 = 200_000;
const REPLAY_FP_RATE: f64 = 1e-9;
const ROTATION_ID: u32 = 1;
const NS_PER_US: u64 = 1_000;
const NS_PER_MS: u64 = 1_000_000;

const _: () = assert!(
    DELAY_MS_MAX * 1_000 / ENGINE_TIMER_TICK_US <= lethe_engine::limits::TIMER_DELAY_TICKS_LIMIT
);

#[derive(Debug)]
pub enum SimError {
    Config(String),
    Trace(TraceError),
    /// Building a Sphinx packet failed (a bug: the routes are built here).
    Sphinx(String),
    EventsExhausted,
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
        }
    }
}

impl std::error::Error for SimError {}

impl From<TraceError> for SimError {
    fn from(e: TraceError) -> Self {
        SimError::Trace(e)
    }
}

/// What a run did.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct RunSummary {
    pub events_count: u64,
    pub trace_rows_count: u64,
    pub real_sent_count: u64,
    pub real_delivered_count: u64,
    pub dropped_count: u64,
}

/// What a packet is, carried beside its bytes (the simulator's ground truth).
#[derive(Clone, Debug)]
struct PacketInfo {
    class: Class,
    message_id: u64,
    destination: u32,
    /// The drawn delay (ns) of each Sphinx hop, and the hop the packet is going to.
    delays_ns: Vec<u64>,
    hop: usize,
}

#[derive(Debug)]
struct WirePacket {
    id: u64,
    bytes: Vec<u8>,
    info: PacketInfo,
    /// Set while a client's packet goes to its gateway: the first mix, which the gateway
    /// forwards the unchanged packet to.
    first_hop: Option<u32>,
}

#[derive(Clone, Copy, Debug)]
enum Stream {
    /// A new real message (the workload, not a Loopix stream).
    Message,
    /// The client's Loopix schedule (lethe-proto: real/drop-cover and loop streams) is due.
    Schedule,
    /// Loopix's separate drop-cover stream (the Lethe client has none: rate 0 there).
    Drop,
    MixLoop,
}

#[derive(Debug)]
enum Event {
    Stream { node: u32, stream: Stream },
    Arrive { node: u32, packet: Box<WirePacket> },
    Wake { node: u32 },
}

struct Scheduled {
    t_ns: u64,
    seq: u64,
    event: Event,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.t_ns, self.seq) == (other.t_ns, other.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    /// Reversed: the heap pops the earliest, and among equals the first scheduled.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.t_ns, other.seq).cmp(&(self.t_ns, self.seq))
    }
}

/// A packet fed to an engine core, waiting to come out.
struct Pending {
    packet_id: u64,
    arrive_ns: u64,
    info: PacketInfo,
    /// The deadline the core will report (`at_us`): arrival plus the hop's delay, rounded up.
    at_us: u64,
}

struct EngineNode {
    core: Core,
    /// By arrival µs.
    pending: HashMap<u64, VecDeque<Pending>>,
    wake_ns: Option<u64>,
}

struct ClientNode {
    gateway: u32,
    recipient: u32,
    waiting: VecDeque<u64>,
    /// With cover: the real client's schedule, which paces real packets and cover.
    schedule: Option<Schedule>,
}

enum NodeState {
    Client(ClientNode),
    Engine(Box<EngineNode>),
}

struct World<'a> {
    config: &'a SimConfig,
    rng: ChaCha20Rng,
    queue: BinaryHeap<Scheduled>,
    seq: u64,
    nodes: Vec<NodeState>,
    info: Vec<NodeInfo>,
    public_keys: Vec<[u8; 32]>,
    addresses: HashMap<SocketAddr, u32>,
    /// Mix node indices per layer (layer 1 first).
    layers: Vec<Vec<u32>>,
    link_free_ns: HashMap<(u32, u32), u64>,
    failures: Vec<(u32, u64, u64)>,
    packet_size: PacketSize,
    writer: TraceWriter,
    next_packet_id: u64,
    next_message_id: u64,
    summary: RunSummary,
}

/// SHA-256 of the config's JSON, hex.
pub fn config_hash(config: &SimConfig) -> String {
    let json = serde_json::to_string(config).unwrap_or_default();
    let digest = Sha256::digest(json.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

fn node_address(index: u32) -> SocketAddr {
    let [_, a, b, c] = index.to_be_bytes();
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(10, a, b, c), 1789))
}

/// Runs `config` and writes the trace to `trace_path` (and its sidecar).
pub fn run(config: &SimConfig, trace_path: &Path, commit: &str) -> Result<RunSummary, SimError> {
    config.validate().map_err(SimError::Config)?;
    let mut world = World::new(config, trace_path, commit)?;
    world.start();
    let mut events = 0u64;
    while let Some(scheduled) = world.queue.pop() {
        events += 1;
        if events > config::EVENTS_MAX {
            return Err(SimError::EventsExhausted);
        }
        world.handle(scheduled)?;
    }
    world.summary.events_count = events;
    world.summary.trace_rows_count = world.writer.events_count();
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

fn engine_core(config: &EngineConfig, secret: StaticSecret) -> Result<Core, SimError> {
    let params = ReplayParams::for_items(REPLAY_ITEMS, REPLAY_FP_RATE, 1)
        .map_err(|e| SimError::Config(format!("replay filter: {e:?}")))?;
    let mut filters = ReplayFilterSet::default();
    filters
        .insert(Arc::new(ReplayFilter::new(ROTATION_ID, params)))
        .map_err(|e| SimError::Config(format!("replay filter: {e:?}")))?;
    let keys = NodeKeys::new(SphinxKey::new(ROTATION_ID, secret), None);
    let metrics = Arc::new(CoreMetrics::default());
    Ok(Core::new(config.clone(), keys, filters, metrics, 0))
}

impl<'a> World<'a> {
    fn new(config: &'a SimConfig, trace_path: &Path, commit: &str) -> Result<World<'a>, SimError> {
        let mut rng = ChaCha20Rng::seed_from_u64(config.seed);
        let packet_size = match config.packet_size.as_str() {
            "regular" => PacketSize::Regular,
            _ => PacketSize::Ack,
        };
        let engine = engine_config(PacketSizes::of(&[packet_size]));
        engine
            .validate()
            .map_err(|e| SimError::Config(format!("engine: {e}")))?;
        let Topology {
            info,
            nodes,
            public_keys,
            layers,
        } = topology(config, &engine, &mut rng)?;
        let failures = failures_ns(config, &info)?;
        let mut meta = TraceMeta::new("sim", config.seed, config_hash(config), commit.into());
        meta.lab = config.lab;
        meta.nodes = info.clone();
        meta.layers = config.layers;
        meta.delay_mean_ns = (config.delay_ms_mean * NS_PER_MS as f64) as u64;
        meta.link_latency_ns_mean = link_latency_ns_mean(config);
        let writer = TraceWriter::create(trace_path, meta)?;
        let addresses = (0..info.len() as u32)
            .map(|i| (node_address(i), i))
            .collect();
        Ok(World {
            config,
            rng,
            queue: BinaryHeap::new(),
            seq: 0,
            nodes,
            info,
            public_keys,
            addresses,
            layers,
            link_free_ns: HashMap::new(),
            failures,
            packet_size,
            writer,
            next_packet_id: 1,
            next_message_id: 1,
            summary: RunSummary::default(),
        })
    }

    fn schedule(&mut self, t_ns: u64, event: Event) {
        self.seq += 1;
        self.queue.push(Scheduled {
            t_ns,
            seq: self.seq,
            event,
        });
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
            Stream::Schedule => 0.0,
            Stream::Drop => cover.map(|c| c.drop_rate_per_s).unwrap_or(0.0),
            Stream::MixLoop => self.config.mix_loop_rate_per_s,
        }
    }

    /// Schedules the stream's next tick after `t_ns`, if it falls inside the sending time.
    fn next_tick(&mut self, node: u32, stream: Stream, t_ns: u64) {
        let rate = self.stream_rate_per_s(stream);
        if rate <= 0.0 {
            return;
        }
        let next = t_ns.saturating_add(self.exponential_ns(1e9 / rate));
        if next < self.config.duration_ms * NS_PER_MS {
            self.schedule(next, Event::Stream { node, stream });
        }
    }

    fn start(&mut self) {
        for c in 0..self.config.clients {
            for stream in [Stream::Message, Stream::Drop] {
                self.next_tick(c, stream, 0);
            }
            self.start_schedule(c);
        }
        let mixes: Vec<u32> = self.layers.iter().flatten().copied().collect();
        for mix in mixes {
            self.next_tick(mix, Stream::MixLoop, 0);
        }
    }

    fn is_down(&self, node: u32, t_ns: u64) -> bool {
        let down =
            |(n, from, until): &(u32, u64, u64)| *n == node && (*from..*until).contains(&t_ns);
        self.failures.iter().any(down)
    }

    fn handle(&mut self, scheduled: Scheduled) -> Result<(), SimError> {
        let t = scheduled.t_ns;
        match scheduled.event {
            Event::Stream { node, stream } => {
                self.next_tick(node, stream, t);
                self.stream_tick(node, stream, t)
            }
            Event::Arrive { node, packet } => self.arrive(node, *packet, t),
            Event::Wake { node } => self.wake(node, t),
        }
    }

    fn stream_tick(&mut self, node: u32, stream: Stream, t: u64) -> Result<(), SimError> {
        let recipient = match &self.nodes[node as usize] {
            NodeState::Client(client) => client.recipient,
            NodeState::Engine(_) => return self.send_mix_loop(node, t),
        };
        let id = self.new_message_id();
        match stream {
            Stream::Message if self.config.cover.is_some() => {
                if let NodeState::Client(client) = &mut self.nodes[node as usize] {
                    client.waiting.push_back(id);
                }
                Ok(())
            }
            Stream::Message => self.send(node, Class::Real, recipient, id, t),
            Stream::Schedule => self.schedule_due(node, t),
            Stream::Drop => {
                let to = self.random_other_client(node);
                self.send(node, Class::DropCover, to, id, t)
            }
            Stream::MixLoop => Ok(()),
        }
    }

    /// With cover, a client sends on lethe-proto's Loopix schedule (the real client's).
    fn start_schedule(&mut self, client: u32) {
        let Some(cover) = &self.config.cover else {
            return;
        };
        let mean_us = |rate: f64| if rate > 0.0 { 1e6 / rate } else { 0.0 };
        let params = ScheduleParams {
            real_mean_us: mean_us(cover.payload_rate_per_s),
            loop_mean_us: mean_us(cover.loop_rate_per_s),
            disable_drop_cover: false,
            disable_loop_cover: cover.loop_rate_per_s <= 0.0,
        };
        let schedule = Schedule::new(params, 0, &mut self.rng);
        let due_us = schedule.poll_timeout();
        if let NodeState::Client(node) = &mut self.nodes[client as usize] {
            node.schedule = Some(schedule);
        }
        self.schedule_wake(client, due_us);
    }

    fn schedule_wake(&mut self, client: u32, due_us: Option<u64>) {
        let Some(due_ns) = due_us.map(|us| us.saturating_mul(NS_PER_US)) else {
            return;
        };
        if due_ns < self.config.duration_ms * NS_PER_MS {
            let stream = Stream::Schedule;
            self.schedule(
                due_ns,
                Event::Stream {
                    node: client,
                    stream,
                },
            );
        }
    }

    /// Answers every due tick of a client's schedule: the next real packet, else drop cover;
    /// or a loop.
    fn schedule_due(&mut self, client: u32, t: u64) -> Result<(), SimError> {
        let NodeState::Client(node) = &mut self.nodes[client as usize] else {
            return Ok(());
        };
        let Some(schedule) = node.schedule.as_mut() else {
            return Ok(());
        };
        let mut ticks = Vec::new();
        // Bounded: the schedule moves each stream past `now` as it answers.
        while let Some(tick) = schedule.poll_due(t / NS_PER_US, &mut self.rng) {
            ticks.push(tick);
        }
        let due_us = schedule.poll_timeout();
        let recipient = node.recipient;
        for tick in ticks {
            let waiting = match (&tick, &mut self.nodes[client as usize]) {
                (Tick::Real { .. }, NodeState::Client(node)) => node.waiting.pop_front(),
                _ => None,
            };
            let id = self.new_message_id();
            match (tick, waiting) {
                (Tick::Real { .. }, Some(real)) => {
                    self.send(client, Class::Real, recipient, real, t)?
                }
                (Tick::Real { drop_cover: true }, None) => {
                    let to = self.random_other_client(client);
                    self.send(client, Class::DropCover, to, id, t)?
                }
                (Tick::Real { drop_cover: false }, None) => {}
                (Tick::Loop, _) => self.send(client, Class::LoopCover, client, id, t)?,
            }
        }
        self.schedule_wake(client, due_us);
        Ok(())
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

    fn random_other_client(&mut self, client: u32) -> u32 {
        let others = self.config.clients - 1;
        let pick = self.pick(others as usize) as u32;
        if pick >= client {
            pick + 1
        } else {
            pick
        }
    }

    fn gateway_of(&self, client: u32) -> u32 {
        match &self.nodes[client as usize] {
            NodeState::Client(c) => c.gateway,
            NodeState::Engine(_) => client,
        }
    }

    /// Builds a Sphinx packet over `route` (node indices) with a delay drawn per mix hop.
    fn build(&mut self, route: &[u32], info: &mut PacketInfo) -> Result<Vec<u8>, SimError> {
        let mut hops = Vec::with_capacity(route.len());
        for &node in route {
            hops.push(RouteHop {
                address: address::encode(&node_address(node)),
                public_key: self.public_keys[node as usize],
            });
        }
        // Drawn as the real client draws them (lethe-proto).
        info.delays_ns = vec![0; route.len()];
        sample_delays_ns(
            &mut self.rng,
            self.config.delay_ms_mean,
            &mut info.delays_ns,
        );
        // The final hop delivers at once: the exit gateway (or a mix closing its loop) does
        // not mix.
        if let Some(last) = info.delays_ns.last_mut() {
            *last = 0;
        }
        let mut destination = Destination {
            address: [0; 32],
            identifier: [0; 16],
        };
        destination.address[..4].copy_from_slice(&info.destination.to_le_bytes());
        destination.identifier[..8].copy_from_slice(&info.message_id.to_le_bytes());
        let spec = PacketSpec {
            route: &hops,
            delays_ns: &info.delays_ns,
            destination: &destination,
            version: Version::CURRENT,
        };
        let message = info.message_id.to_le_bytes();
        let payload_len = self.packet_size.payload_len();
        sphinx::create(&message, payload_len, &spec, None, &mut self.rng)
            .map_err(|e| SimError::Sphinx(format!("{e:?}")))
    }

    fn send(
        &mut self,
        client: u32,
        class: Class,
        destination: u32,
        message_id: u64,
        t: u64,
    ) -> Result<(), SimError> {
        let mut route = Vec::with_capacity(self.layers.len() + 1);
        for layer in 0..self.layers.len() {
            let pick = self.pick(self.layers[layer].len());
            route.push(self.layers[layer][pick]);
        }
        route.push(self.gateway_of(destination));
        let mut info = PacketInfo {
            class,
            message_id,
            destination,
            delays_ns: Vec::new(),
            hop: 0,
        };
        let bytes = self.build(&route, &mut info)?;
        let gateway = self.gateway_of(client);
        let id = self.new_packet_id();
        if class == Class::Real {
            self.summary.real_sent_count += 1;
        }
        self.write(TraceEvent {
            t_ns: t,
            node: client,
            kind: Kind::Send,
            class,
            size_bytes: bytes.len() as u32,
            packet_id: id,
            next_hop: Some(gateway),
            message_id: Some(message_id),
            fragment_id: Some(0),
            destination: Some(destination),
            drop_reason: None,
            lab: LabFields::default(),
        })?;
        let packet = WirePacket {
            id,
            bytes,
            info,
            first_hop: route.first().copied(),
        };
        self.link(client, gateway, packet, t);
        Ok(())
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
            destination: mix,
            delays_ns: Vec::new(),
            hop: 0,
        };
        let bytes = self.build(&route, &mut info)?;
        let id = self.new_packet_id();
        self.write(TraceEvent {
            t_ns: t,
            node: mix,
            kind: Kind::Send,
            class: Class::LoopCover,
            size_bytes: bytes.len() as u32,
            packet_id: id,
            next_hop: Some(mix),
            message_id: Some(info.message_id),
            fragment_id: Some(0),
            destination: Some(mix),
            drop_reason: None,
            lab: LabFields::default(),
        })?;
        let packet = WirePacket {
            id,
            bytes,
            info,
            first_hop: None,
        };
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

    /// Puts a packet on the link `from -> to`, in order behind the link's previous packet.
    fn link(&mut self, from: u32, to: u32, packet: WirePacket, t: u64) {
        let latency = self.link_latency_ns(from, to);
        let free = self.link_free_ns.entry((from, to)).or_insert(0);
        let at = t.saturating_add(latency).max(*free);
        *free = at;
        self.schedule(
            at,
            Event::Arrive {
                node: to,
                packet: Box::new(packet),
            },
        );
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
            size_bytes: self.packet_size.packet_len() as u32,
            packet_id: id,
            next_hop: None,
            message_id: known.then_some(info.message_id),
            fragment_id: known.then_some(0),
            destination: endpoint.then_some(info.destination),
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
        if let Some(first_hop) = packet.first_hop {
            // The entry gateway relays the client's packet unchanged.
            let mut depart = self.row(t, node, Kind::Depart, packet.id, &packet.info);
            depart.next_hop = Some(first_hop);
            self.write(depart)?;
            let relayed = WirePacket {
                first_hop: None,
                ..packet
            };
            self.link(node, first_hop, relayed, t);
            return Ok(());
        }
        let now_us = t / NS_PER_US;
        let delay_us = packet
            .info
            .delays_ns
            .get(packet.info.hop)
            .copied()
            .unwrap_or(0);
        let delay_us = delay_us.div_ceil(NS_PER_US).min(DELAY_MS_MAX * 1_000);
        let NodeState::Engine(engine) = &mut self.nodes[node as usize] else {
            return self.drop_row(t, node, packet.id, &packet.info, "not_a_node");
        };
        engine
            .pending
            .entry(now_us)
            .or_default()
            .push_back(Pending {
                packet_id: packet.id,
                arrive_ns: t,
                info: packet.info,
                at_us: now_us + delay_us,
            });
        let before = drop_counts(&engine.core);
        let admitted = engine
            .core
            .handle_packet(now_us, KeyRotation::Unknown, &packet.bytes);
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
            if let Some(p) = take_pending_last(engine, now_us) {
                self.drop_row(t, node, p.packet_id, &p.info, reason.label())?;
            }
        }
        self.drain(node, t)
    }

    fn wake(&mut self, node: u32, t: u64) -> Result<(), SimError> {
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
                    let bytes = engine.core.packet(&buffer).to_vec();
                    engine.core.release(buffer);
                    let pending = take_pending(engine, arrived_us, Some(at_us));
                    let next = self.addresses.get(&next_hop).copied();
                    self.forwarded(node, t, pending, next, bytes, at_us, arrived_us)?;
                }
                Action::Deliver { buffer, .. } => {
                    let arrived_us = engine.core.arrived_us(&buffer);
                    engine.core.release(buffer);
                    let pending = take_pending(engine, arrived_us, None);
                    self.delivered(node, t, pending)?;
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
                self.schedule(due_ns, Event::Wake { node });
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
        let mut info = pending.info;
        info.hop += 1;
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
        let packet = WirePacket {
            id,
            bytes,
            info,
            first_hop: None,
        };
        self.link(node, next, packet, t);
        Ok(())
    }

    fn delivered(&mut self, node: u32, t: u64, pending: Option<Pending>) -> Result<(), SimError> {
        let Some(pending) = pending else {
            return Ok(());
        };
        if pending.info.class == Class::DropCover {
            // Drop cover ends at the gateway: nothing reaches a client.
            return self.drop_row(t, node, pending.packet_id, &pending.info, "cover_discarded");
        }
        if pending.info.class == Class::Real {
            self.summary.real_delivered_count += 1;
        }
        let row = self.row(t, node, Kind::Deliver, pending.packet_id, &pending.info);
        self.write(row)
    }
}

/// The nodes, in index order: clients, gateways, then mixes layer by layer.
struct Topology {
    info: Vec<NodeInfo>,
    nodes: Vec<NodeState>,
    public_keys: Vec<[u8; 32]>,
    /// Mix node indices per layer (layer 1 first).
    layers: Vec<Vec<u32>>,
}

fn topology(
    config: &SimConfig,
    engine: &EngineConfig,
    rng: &mut ChaCha20Rng,
) -> Result<Topology, SimError> {
    let mut topology = Topology {
        info: Vec::new(),
        nodes: Vec::new(),
        public_keys: Vec::new(),
        layers: vec![Vec::new(); config.layers as usize],
    };
    for c in 0..config.clients {
        topology.info.push(NodeInfo {
            name: format!("c{c}"),
            role: Role::Client,
            layer: None,
            corrupt: false,
        });
        topology.nodes.push(NodeState::Client(ClientNode {
            gateway: config.clients + c % config.gateways,
            recipient: (c + 1) % config.clients,
            waiting: VecDeque::new(),
            schedule: None,
        }));
        topology.public_keys.push([0; 32]);
    }
    let engine_roles = (0..config.gateways).map(|g| (format!("g{g}"), Role::Gateway, 0));
    let mix_roles = (1..=config.layers).flat_map(|layer| {
        (0..config.mixes_per_layer).map(move |m| (format!("m{layer}.{m}"), Role::Mix, layer))
    });
    for (name, role, layer) in engine_roles.chain(mix_roles) {
        let index = topology.info.len() as u32;
        if role == Role::Mix {
            topology.layers[layer as usize - 1].push(index);
        }
        let secret = StaticSecret::random_from_rng(&mut *rng);
        let public_key = x25519_dalek::PublicKey::from(&secret).to_bytes();
        topology.public_keys.push(public_key);
        topology.nodes.push(NodeState::Engine(Box::new(EngineNode {
            core: engine_core(engine, secret)?,
            pending: HashMap::new(),
            wake_ns: None,
        })));
        let corrupt = config.corrupt.contains(&name);
        topology.info.push(NodeInfo {
            name,
            role,
            layer: Some(layer),
            corrupt,
        });
    }
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

/// The fed packet an output buffer came from: same arrival µs, and the same deadline when
/// there is one (two packets fed in one µs with one delay are indistinguishable anyway).
fn take_pending(engine: &mut EngineNode, arrived_us: u64, at_us: Option<u64>) -> Option<Pending> {
    let queue = engine.pending.get_mut(&arrived_us)?;
    let position = match at_us {
        Some(at) => queue.iter().position(|p| p.at_us == at).unwrap_or(0),
        None => 0,
    };
    let pending = queue.remove(position);
    if queue.is_empty() {
        engine.pending.remove(&arrived_us);
    }
    pending
}

fn drop_counts(core: &Core) -> [u64; DropReason::COUNT] {
    DropReason::ALL.map(|reason| core.metrics().dropped_count(reason))
}

fn take_pending_last(engine: &mut EngineNode, arrived_us: u64) -> Option<Pending> {
    let queue = engine.pending.get_mut(&arrived_us)?;
    let pending = queue.pop_back();
    if queue.is_empty() {
        engine.pending.remove(&arrived_us);
    }
    pending
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

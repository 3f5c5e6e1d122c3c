//! `--trace FILE` of `lethe mixnode run` and `lethe gateway run`: the node's part of a run's
//! trace (format v1, `lethe_sim::trace`), written by one thread that drains the engine's
//! packet-event hook (`lethe_engine::runtime::trace`) off the data plane.
//!
//! The node is the part's first node, named by its listen address; each next hop is added as
//! a peer, named by its address, when the node first sends to it. `lethe_sim::merge` combines
//! the parts of a run (`lethe testnet up --trace DIR` puts them in `DIR/parts/`). Rows carry
//! class `unknown`: a node cannot tell a packet's class.
//!
//! A gateway also traces its client side, which the engine does not see ([`ClientSideTrace`]):
//! a client's packet read from its session (`arrive`) and handed to the first hop (`depart`,
//! under the same id: the gateway relays the packet unchanged), a final-hop packet handed to
//! a recipient's mailbox (`deliver`, naming the recipient as [`client_name`] does) or refused
//! (`drop`), and a delivered packet's SURB-ACK sent on (`send`). Its part then carries these
//! deliveries instead of the engine's, which name no recipient.
//!
//! Lab ground truth (`--trace-lab`) needs a build with `--features lab`; without it the flag is
//! refused before the node starts.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use lethe_crypto::sphinx::keys::blind_alpha;
use lethe_crypto::sphinx::process::unwrap_header_in_place;
use lethe_crypto::sphinx::{hop_alphas, ExpandedSecret, Packet, RouteSecrets};
use lethe_engine::runtime::trace::{
    packet_id, trace_clock_ns, PacketEvent, PacketEventKind, TraceEvents, TraceHook,
};
use lethe_engine::runtime::Runtime;
use lethe_sim::trace::{
    Class, Kind, LabFields, NodeInfo, Role, TraceEvent, TraceMeta, TraceWriter,
};
use sha2::{Digest, Sha256};

/// How long the writer waits for an event before it looks at its stop flag.
const TRACE_POLL_MS: u64 = 100;
/// Client-side events a gateway's channel holds before new ones are counted as dropped (the
/// engine's channel has its own bound, `TRACE_CHANNEL_EVENTS`).
pub const CLIENT_SIDE_CHANNEL_EVENTS: usize = 1 << 16;
/// Bytes of a client's identity its trace name shows: 64 bits tell a run's clients apart.
pub const CLIENT_NAME_BYTES: usize = 8;

/// A client's name in a trace: `client-` and the first [`CLIENT_NAME_BYTES`] of its identity
/// (the ed25519 key it authenticates with, which a forward packet's final hop names as its
/// destination address), in hex. Gateways and client recorders (loadgen) name clients alike,
/// so their parts merge into one node per client.
pub fn client_name(identity: &[u8; 32]) -> String {
    let mut name = String::with_capacity(7 + 2 * CLIENT_NAME_BYTES);
    name.push_str("client-");
    for byte in &identity[..CLIENT_NAME_BYTES] {
        let _ = write!(name, "{byte:02x}");
    }
    name
}

/// The id (`packet_id`) a packet its sender built carries on the link into hop `hop` of its
/// route (0: the first hop, as sent). The sender knows every hop's secrets, so it unwraps the
/// header as those hops will, one X25519 per hop ([`hop_packet_ids`] is the cheap batch).
/// `None` if `hop` is past the route or the packet does not unwrap. A recipient gets only the
/// payload; this is how its recorder names the packet the last mix sent.
pub fn hop_packet_id(packet: &[u8], secrets: &RouteSecrets, hop: usize) -> Option<u64> {
    if hop >= secrets.len() {
        return None;
    }
    if hop == 0 {
        return Some(packet_id(packet));
    }
    let header = unwrapped_header(packet, secrets, hop, blind_alpha)?;
    Some(packet_id(&header))
}

/// [`hop_packet_id`] of many packets (`ids[j]` of `packets[j]`, built with `secrets[j]`),
/// without its X25519 per hop: the link's MAC comes from unwrapping the routing information
/// (keystreams only), its group element from `hop_alphas` (one multiplication per packet, the
/// packets through one lane-parallel ladder). loadgen's generator names each packet's last
/// link with it as it builds the packets (`--trace`).
pub fn hop_packet_ids(
    packets: &[&[u8]],
    secrets: &[&RouteSecrets],
    hop: usize,
) -> Vec<Option<u64>> {
    let count = packets.len().min(secrets.len());
    let mut alphas = vec![None; count];
    hop_alphas(&secrets[..count], hop, &mut alphas);
    packets
        .iter()
        .zip(secrets)
        .zip(alphas)
        .map(|((packet, secrets), alpha)| {
            let alpha = alpha?;
            // The alpha each unwrap writes is not needed: the one hop `hop` gets is known.
            let mut header = unwrapped_header(packet, secrets, hop, |_, _| [0; 32])?;
            header.get_mut(..alpha.len())?.copy_from_slice(&alpha);
            Some(packet_id(&header))
        })
        .collect()
}

/// A copy of the packet with its header as it arrives at hop `hop`: unwrapped by hops
/// `0..hop` (the payload is left alone: the id covers the header's group element and MAC
/// only), each writing `blind(hop's secret, alpha)` as the next alpha.
fn unwrapped_header(
    packet: &[u8],
    secrets: &RouteSecrets,
    hop: usize,
    blind: impl Fn(&ExpandedSecret, &[u8; 32]) -> [u8; 32],
) -> Option<Vec<u8>> {
    let mut copy = packet.to_vec();
    for index in 0..hop {
        let expanded = &secrets.hop(index)?.expanded;
        let mut view = Packet::new_checked(&mut copy[..]).ok()?;
        let blinded = blind(expanded, view.alpha());
        unwrap_header_in_place(&mut view, expanded, &blinded).ok()?;
    }
    Some(copy)
}

/// The sidecar of a real run's part before its nodes: source `testnet`, the commit, 3 layers,
/// and a SHA-256 of `config` (anything that identifies the process's configuration).
pub fn part_meta(config: &str) -> TraceMeta {
    let digest = Sha256::digest(config.as_bytes());
    let config_hash = digest.iter().map(|b| format!("{b:02x}")).collect();
    let mut meta = TraceMeta::new(
        "testnet",
        0,
        config_hash,
        lethe_sim::trace::current_commit(),
    );
    meta.layers = 3;
    meta
}

/// What a gateway's client side did with a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientSideKind {
    /// A client's packet was read from its session.
    Arrive,
    /// It was handed to egress towards its first hop.
    Depart,
    /// A final-hop packet was handed to its recipient's mailbox.
    Deliver,
    /// The gateway sent a packet of its own (a delivered packet's SURB-ACK).
    Send,
    /// The packet went no further.
    Drop,
}

/// One client-side event (what the writer turns into a row).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientSideEvent {
    /// CLOCK_MONOTONIC, ns.
    pub t_ns: u64,
    pub kind: ClientSideKind,
    pub packet_id: u64,
    pub size_bytes: u32,
    /// `Depart`, `Send`.
    pub next_hop: Option<SocketAddr>,
    /// `Deliver`: the recipient's identity.
    pub recipient: Option<[u8; 32]>,
    /// `Drop`.
    pub drop_reason: Option<&'static str>,
}

/// A gateway's client-side hook (cheap to clone: sessions and the mailbox each hold one).
/// Never blocks: a full channel counts the event as dropped.
#[derive(Clone, Debug)]
pub struct ClientSideTrace {
    sender: Sender<ClientSideEvent>,
    dropped: Arc<AtomicU64>,
}

impl ClientSideTrace {
    fn record(&self, event: ClientSideEvent) {
        if self.sender.try_send(event).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn event(kind: ClientSideKind, packet: &[u8]) -> ClientSideEvent {
        ClientSideEvent {
            t_ns: trace_clock_ns(),
            kind,
            packet_id: packet_id(packet),
            size_bytes: packet.len() as u32,
            next_hop: None,
            recipient: None,
            drop_reason: None,
        }
    }

    /// A client's packet arrived and was handed to egress towards `next_hop` (`Ok`), or egress
    /// refused it (`Err(reason)`): an arrival, then a departure or a drop, same instant.
    pub fn relayed(&self, packet: &[u8], next_hop: SocketAddr, outcome: Result<(), &'static str>) {
        let arrive = Self::event(ClientSideKind::Arrive, packet);
        self.record(arrive);
        self.record(match outcome {
            Ok(()) => ClientSideEvent {
                kind: ClientSideKind::Depart,
                next_hop: Some(next_hop),
                ..arrive
            },
            Err(reason) => ClientSideEvent {
                kind: ClientSideKind::Drop,
                drop_reason: Some(reason),
                ..arrive
            },
        });
    }

    /// A final-hop packet (as the engine hands it over: its header's group element and MAC
    /// are still the ones it arrived with, so its id is the arrival's) went to `recipient`'s
    /// mailbox.
    pub fn delivered(&self, packet: &[u8], recipient: [u8; 32]) {
        self.record(ClientSideEvent {
            recipient: Some(recipient),
            ..Self::event(ClientSideKind::Deliver, packet)
        });
    }

    /// A final-hop packet went no further (`reason`: cover, or a refusal).
    pub fn refused(&self, packet: &[u8], reason: &'static str) {
        self.record(ClientSideEvent {
            drop_reason: Some(reason),
            ..Self::event(ClientSideKind::Drop, packet)
        });
    }

    /// The gateway sent `packet` (a SURB-ACK) towards `next_hop`.
    pub fn sent(&self, packet: &[u8], next_hop: SocketAddr) {
        self.record(ClientSideEvent {
            next_hop: Some(next_hop),
            ..Self::event(ClientSideKind::Send, packet)
        });
    }
}

/// The trace flags of `mixnode run` and `gateway run`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct TraceArgs {
    /// Write this node's packet events to FILE (trace format v1, with FILE's `.meta.json`
    /// sidecar): arrivals, departures, deliveries and drops, CLOCK_MONOTONIC ns.
    #[arg(long, env = "LETHE_TRACE", value_name = "FILE")]
    pub trace: Option<PathBuf>,
    /// Also record the lab ground truth (which input left as which output, drawn delay and
    /// residence). Only a build with `--features lab` accepts it.
    #[arg(long, requires = "trace")]
    pub trace_lab: bool,
}

/// The hook to give the runtime, and the node's end, before the runtime starts.
pub struct TraceSetup {
    pub hook: TraceHook,
    events: TraceEvents,
    path: PathBuf,
    lab: bool,
    client_side: Option<(ClientSideTrace, Receiver<ClientSideEvent>)>,
}

impl TraceArgs {
    /// `None` when tracing is off; an error for a lab trace in a build without `lab`.
    pub fn setup(&self) -> Result<Option<TraceSetup>, String> {
        let Some(path) = &self.trace else {
            return Ok(None);
        };
        let (hook, events) = TraceHook::new(self.trace_lab).map_err(|e| e.to_string())?;
        Ok(Some(TraceSetup {
            hook,
            events,
            path: path.clone(),
            lab: self.trace_lab,
            client_side: None,
        }))
    }
}

/// The running writer; [`NodeTrace::finish`] once the runtime has ended.
pub struct NodeTrace {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Result<Written, String>>,
}

/// What the writer wrote and lost.
#[derive(Debug, Clone, Copy)]
pub struct Written {
    pub rows: u64,
    /// Events the engine could not queue (the writer fell behind).
    pub dropped: u64,
}

impl TraceSetup {
    /// The client-side hook of a gateway (made on the first call); its events go to the same
    /// part, and the engine's deliveries are left out of it.
    pub fn client_side(&mut self) -> ClientSideTrace {
        let (trace, _) = self.client_side.get_or_insert_with(|| {
            let (sender, receiver) = crossbeam_channel::bounded(CLIENT_SIDE_CHANNEL_EVENTS);
            let trace = ClientSideTrace {
                sender,
                dropped: Arc::new(AtomicU64::new(0)),
            };
            (trace, receiver)
        });
        trace.clone()
    }

    /// Opens the part (refusing a path it cannot write) and starts its writer. `local` is the
    /// node's listen address (its name in the trace); `config` anything that identifies the
    /// node's configuration (hashed into the sidecar).
    pub fn start(self, role: Role, local: SocketAddr, config: &str) -> Result<NodeTrace, String> {
        let mut meta = part_meta(config);
        meta.lab = self.lab;
        meta.nodes.push(NodeInfo {
            name: local.to_string(),
            role,
            layer: (role == Role::Gateway).then_some(0),
            corrupt: false,
        });
        if let Some(parent) = self.path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        }
        let writer = TraceWriter::create(&self.path, meta)
            .map_err(|e| format!("--trace {}: {e}", self.path.display()))?;
        let stop = Arc::new(AtomicBool::new(false));
        let sources = Sources {
            engine: self.events,
            client_side: self
                .client_side
                .map(|(trace, receiver)| (receiver, trace.dropped)),
        };
        let path = self.path;
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("lethe-trace".into())
                .spawn(move || write_events(writer, sources, &stop, &path))
                .map_err(|e| format!("trace writer: {e}"))?
        };
        Ok(NodeTrace { stop, thread })
    }
}

impl NodeTrace {
    /// Writes what is left and closes the part (call after the runtime has been joined).
    pub fn finish(self) -> Result<Written, String> {
        self.stop.store(true, Ordering::SeqCst);
        match self.thread.join() {
            Ok(result) => result,
            Err(_) => Err("the trace writer panicked".into()),
        }
    }
}

/// What the writer drains: the engine's events, and a gateway's client side.
struct Sources {
    engine: TraceEvents,
    client_side: Option<(Receiver<ClientSideEvent>, Arc<AtomicU64>)>,
}

/// The part's nodes beyond its own: next hops by address, recipients by identity.
struct Names {
    peers: HashMap<SocketAddr, u32>,
    clients: HashMap<[u8; 32], u32>,
}

impl Names {
    fn peer(
        &mut self,
        writer: &mut TraceWriter,
        addr: SocketAddr,
    ) -> Result<u32, lethe_sim::trace::TraceError> {
        if let Some(&index) = self.peers.get(&addr) {
            return Ok(index);
        }
        let index = writer.add_node(NodeInfo {
            name: addr.to_string(),
            // Unknown here: the merge takes the role from the peer's own part.
            role: Role::Mix,
            layer: None,
            corrupt: false,
        })?;
        self.peers.insert(addr, index);
        Ok(index)
    }

    fn client(
        &mut self,
        writer: &mut TraceWriter,
        identity: [u8; 32],
    ) -> Result<u32, lethe_sim::trace::TraceError> {
        if let Some(&index) = self.clients.get(&identity) {
            return Ok(index);
        }
        let index = writer.add_node(NodeInfo {
            name: client_name(&identity),
            role: Role::Client,
            layer: None,
            corrupt: false,
        })?;
        self.clients.insert(identity, index);
        Ok(index)
    }
}

fn write_events(
    mut writer: TraceWriter,
    sources: Sources,
    stop: &AtomicBool,
    path: &Path,
) -> Result<Written, String> {
    let fail = |e: lethe_sim::trace::TraceError| format!("trace {}: {e}", path.display());
    let mut names = Names {
        peers: HashMap::new(),
        clients: HashMap::new(),
    };
    let events = &sources.engine;
    // A gateway's deliveries come from its client side, which names the recipient.
    let engine_deliveries = sources.client_side.is_none();
    let poll = Duration::from_millis(TRACE_POLL_MS);
    // After the stop flag, at most one channel's worth is left: the runtime has ended.
    let mut left_after_stop = lethe_engine::runtime::trace::TRACE_CHANNEL_EVENTS;
    loop {
        if let Some((receiver, _)) = &sources.client_side {
            drain_client_side(&mut writer, &mut names, receiver).map_err(fail)?;
        }
        let stopping = stop.load(Ordering::SeqCst);
        let wait = if stopping { Duration::ZERO } else { poll };
        let event = match events.next(wait) {
            Ok(Some(event)) => event,
            Ok(None) if stopping => break,
            Ok(None) => continue,
            Err(_closed) if stopping || sources.client_side.is_none() => break,
            // The runtime ended first: the client side may still have events until the stop.
            Err(_closed) => {
                std::thread::sleep(poll);
                continue;
            }
        };
        if stopping {
            if left_after_stop == 0 {
                break;
            }
            left_after_stop -= 1;
        }
        if event.kind == PacketEventKind::Deliver && !engine_deliveries {
            continue;
        }
        let next_hop = match event.next_hop {
            None => None,
            Some(addr) => Some(names.peer(&mut writer, addr).map_err(fail)?),
        };
        writer.write(&row(&event, next_hop)).map_err(fail)?;
    }
    let mut dropped = events.dropped();
    if let Some((receiver, lost)) = &sources.client_side {
        drain_client_side(&mut writer, &mut names, receiver).map_err(fail)?;
        dropped += lost.load(Ordering::Relaxed);
    }
    let rows = writer.events_count();
    writer.finish().map_err(fail)?;
    Ok(Written { rows, dropped })
}

/// Writes what the client side has queued (at most one channel's worth: bounded).
fn drain_client_side(
    writer: &mut TraceWriter,
    names: &mut Names,
    receiver: &Receiver<ClientSideEvent>,
) -> Result<(), lethe_sim::trace::TraceError> {
    for _ in 0..CLIENT_SIDE_CHANNEL_EVENTS {
        let Ok(event) = receiver.try_recv() else {
            break;
        };
        let next_hop = match event.next_hop {
            Some(addr) => Some(names.peer(writer, addr)?),
            None => None,
        };
        let destination = match event.recipient {
            Some(identity) => Some(names.client(writer, identity)?),
            None => None,
        };
        let kind = match event.kind {
            ClientSideKind::Arrive => Kind::Arrive,
            ClientSideKind::Depart => Kind::Depart,
            ClientSideKind::Deliver => Kind::Deliver,
            ClientSideKind::Send => Kind::Send,
            ClientSideKind::Drop => Kind::Drop,
        };
        writer.write(&TraceEvent {
            next_hop,
            destination,
            drop_reason: event.drop_reason.map(str::to_string),
            ..node_row(event.t_ns, kind, event.packet_id, event.size_bytes)
        })?;
    }
    Ok(())
}

fn row(event: &PacketEvent, next_hop: Option<u32>) -> TraceEvent {
    let kind = match event.kind {
        PacketEventKind::Arrive => Kind::Arrive,
        PacketEventKind::Depart => Kind::Depart,
        PacketEventKind::Deliver => Kind::Deliver,
        PacketEventKind::Drop => Kind::Drop,
    };
    let lab = event.lab.map_or(LabFields::default(), |link| LabFields {
        in_packet_id: Some(link.in_packet_id),
        delay_drawn_ns: Some(link.delay_drawn_ns),
        residence_ns: Some(link.residence_ns),
    });
    TraceEvent {
        next_hop,
        drop_reason: event.drop_reason.map(|r| r.label().to_string()),
        lab,
        ..node_row(event.t_ns, kind, event.packet_id, event.size_bytes)
    }
}

/// A row of this node (the part's node 0) about a packet whose class it cannot tell.
fn node_row(t_ns: u64, kind: Kind, packet_id: u64, size_bytes: u32) -> TraceEvent {
    TraceEvent {
        t_ns,
        node: 0,
        kind,
        class: Class::Unknown,
        size_bytes,
        packet_id,
        next_hop: None,
        message_id: None,
        fragment_id: None,
        destination: None,
        drop_reason: None,
        lab: LabFields::default(),
    }
}

/// Starts the node's trace writer once its runtime listens (its address names it); if the
/// part cannot be opened, stops the runtime and fails, so a node never runs untraced when
/// asked to trace.
pub fn start(
    setup: Option<TraceSetup>,
    runtime: Runtime,
    role: Role,
    config: &str,
) -> Result<(Runtime, Option<NodeTrace>), String> {
    let Some(setup) = setup else {
        return Ok((runtime, None));
    };
    match setup.start(role, runtime.local_addr(), config) {
        Ok(trace) => Ok((runtime, Some(trace))),
        Err(e) => {
            runtime.shutdown();
            let _ = runtime.join();
            Err(e)
        }
    }
}

/// Ends a node's trace after its runtime was joined, logging what was written (a trace that
/// fails does not fail the node's shutdown).
pub fn finish(trace: Option<NodeTrace>) {
    match trace.map(NodeTrace::finish) {
        None => {}
        Some(Ok(written)) => tracing::info!(
            rows = written.rows,
            dropped = written.dropped,
            "trace written"
        ),
        Some(Err(e)) => tracing::error!(error = %e, "trace"),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use lethe_crypto::framing::PacketSize;
    use lethe_crypto::sphinx::{self, Destination, PacketSpec, RouteHop, Version};
    use x25519_dalek::{PublicKey, StaticSecret};

    /// The sender works out the id of every link of its packet's route (what each hop's
    /// arrival row carries), and a final hop's processing keeps the id it arrived with (the
    /// gateway's mailbox names a delivery by it).
    /// A packet over the first `hops` of `keys` (hop i's address is `[i + 1; 32]`).
    fn built(keys: &[StaticSecret], hops: usize) -> (Vec<u8>, RouteSecrets) {
        let route: Vec<RouteHop> = keys
            .iter()
            .zip(1u8..)
            .take(hops)
            .map(|(key, tag)| RouteHop {
                address: [tag; 32],
                public_key: PublicKey::from(key).to_bytes(),
            })
            .collect();
        let destination = Destination {
            address: [7; 32],
            identifier: [0; 16],
        };
        let delays_ns: Vec<u64> = (1..=hops as u64).map(|hop| hop * 1_000).collect();
        let spec = PacketSpec {
            route: &route,
            delays_ns: &delays_ns,
            destination: &destination,
            version: Version::CURRENT,
        };
        let mut packet = vec![0u8; PacketSize::Regular.packet_len()];
        let secrets =
            sphinx::create_into(&mut packet, b"hello", &spec, None, &mut rand::rng()).unwrap();
        (packet, secrets)
    }

    fn keys() -> Vec<StaticSecret> {
        (1..=5u8).map(|t| StaticSecret::from([t; 32])).collect()
    }

    #[test]
    fn a_sender_knows_every_links_id_and_a_final_hop_keeps_its_own() {
        let keys = keys();
        let keys = &keys[..4];
        let (original, secrets) = built(keys, 4);
        let mut packet = original.clone();
        let mut seen = Vec::new();
        for (hop, key) in keys.iter().enumerate() {
            let arriving = packet_id(&packet);
            assert_eq!(
                hop_packet_id(&original, &secrets, hop),
                Some(arriving),
                "hop {hop}"
            );
            seen.push(arriving);
            let mut view = Packet::new_checked(&mut packet[..]).unwrap();
            sphinx::process(&mut view, key).unwrap();
        }
        assert_eq!(
            packet_id(&packet),
            seen[3],
            "the final hop keeps its arrival id"
        );
        seen.dedup();
        assert_eq!(seen.len(), 4, "a new id on every link");
        assert_eq!(hop_packet_id(&original, &secrets, 4), None);
        assert_eq!(client_name(&[0xab; 32]), "client-abababababababab");
    }

    /// The batch without an X25519 per hop names every link as the hop-by-hop unwrap does:
    /// 60 packets (routes of 1 to 5 hops; more than one lane chunk), every hop, and past the
    /// route.
    #[test]
    fn batched_link_ids_equal_the_hop_by_hop_ones() {
        let keys = keys();
        let packets: Vec<(Vec<u8>, RouteSecrets)> =
            (0..60).map(|index| built(&keys, 1 + index % 5)).collect();
        let bytes: Vec<&[u8]> = packets.iter().map(|(packet, _)| &packet[..]).collect();
        let secrets: Vec<&RouteSecrets> = packets.iter().map(|(_, secrets)| secrets).collect();
        let mut named = 0;
        for hop in 0..=5 {
            let ids = hop_packet_ids(&bytes, &secrets, hop);
            assert_eq!(ids.len(), packets.len());
            for (index, ((packet, route), id)) in packets.iter().zip(&ids).enumerate() {
                assert_eq!(
                    *id,
                    hop_packet_id(packet, route, hop),
                    "packet {index} hop {hop}"
                );
                assert_eq!(id.is_some(), hop < route.len(), "packet {index} hop {hop}");
                named += usize::from(id.is_some());
            }
        }
        // Each route of h hops has h links: 12 routes of each length 1..=5.
        assert_eq!(named, 12 * (1 + 2 + 3 + 4 + 5));
    }
}

//! `--trace DIR`: loadgen's own part of the run's trace (format v1, `lethe_sim::trace`),
//! `DIR/parts/loadgen.csv`, beside the testnet nodes' parts, so that `lethe-sim metrics` has
//! the endpoints the nodes cannot see: a `send` row per packet a sender handed to its gateway
//! session and a `deliver` row per packet a receiver got, both class `real`, with the packet's
//! sequence number as its message id (fragment 0) and the recipient as its destination.
//!
//! Rows are stamped with CLOCK_MONOTONIC ns, the nodes' clock: the run's start is read on both
//! clocks once and every row is offset from it, so the hot paths read no extra clock.
//!
//! Packet ids are the nodes' per-link ids (`lethe_engine::runtime::trace::packet_id`). A send
//! carries the id of the packet as built, which the entry gateway relays unchanged to the
//! first mix. A recipient gets only the payload, so its delivery carries the id the packet
//! had on its last link (from the last mix to the exit gateway), which the generator works
//! out when it builds the packets (`lethe_nodes::trace::hop_packet_ids`, a chunk at a time):
//! the merge then links the recipient's row to the last mix's departure and the exit
//! gateway's delivery.
//!
//! Memory is bounded: at most [`TRACE_PACKETS_MAX`] packets of each kind (built, sent,
//! delivered) are kept; beyond, they are counted as dropped. The part is written once, after
//! the run, while the network is still up.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use lethe_engine::runtime::trace::trace_clock_ns;
use lethe_nodes::trace::client_name;
use lethe_sim::trace::{
    Class, Kind, LabFields, NodeInfo, Role, TraceEvent, TraceMeta, TraceWriter,
};
use sha2::{Digest, Sha256};

use crate::limits::TRACE_PACKETS_MAX;

/// loadgen's part in `DIR/parts/`.
pub const TRACE_PART: &str = "loadgen.csv";

/// What the generator knows of one packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BuiltIds {
    pub seq: u64,
    /// The id on the sender's link into its gateway (and the gateway's to the first mix).
    pub first_id: u64,
    /// The id on the last mix's link into the exit gateway.
    pub exit_id: u64,
    /// The recipient's identity (its destination address).
    pub recipient: [u8; 32],
    pub size_bytes: u32,
}

/// One sender of the run: its identity and the gateway it enters by (its mix address, which
/// names it in the nodes' parts).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceSender {
    pub identity: [u8; 32],
    pub gateway: SocketAddr,
}

/// Who the run's clients are, for the part's node list (from the driver).
#[derive(Clone, Debug, Default)]
pub struct TraceClients {
    /// By sender index.
    pub senders: Vec<TraceSender>,
    /// Every gateway's mix address.
    pub gateways: Vec<SocketAddr>,
}

#[derive(Debug, Default)]
struct Rows {
    /// By packet, in build order.
    built: Vec<(u64, u64, u64, u32, u32)>,
    /// (seq, ns after the start).
    sent: Vec<(u64, u64)>,
    /// (seq, recipient, ns after the start).
    delivered: Vec<(u64, u32, u64)>,
    /// Recipients by index (`built` and `delivered` refer to them).
    recipients: Vec<[u8; 32]>,
    recipient_index: HashMap<[u8; 32], u32>,
    dropped: u64,
}

impl Rows {
    fn recipient(&mut self, identity: [u8; 32]) -> u32 {
        if let Some(&index) = self.recipient_index.get(&identity) {
            return index;
        }
        let index = self.recipients.len() as u32;
        self.recipients.push(identity);
        self.recipient_index.insert(identity, index);
        index
    }
}

/// The rows of one run, filled by the generator, the senders and the receivers.
#[derive(Debug)]
pub struct PacketTrace {
    dir: PathBuf,
    /// CLOCK_MONOTONIC at the run's start (its `Instant`), ns.
    start_ns: Mutex<Option<u64>>,
    rows: Mutex<Rows>,
}

/// What was written.
#[derive(Clone, Debug)]
pub struct TraceWritten {
    pub path: PathBuf,
    pub rows: u64,
    /// Packets whose rows were not kept ([`TRACE_PACKETS_MAX`]) or could not be linked.
    pub dropped: u64,
}

impl PacketTrace {
    /// loadgen's rows for `DIR/parts/` (the testnet creates it; a part already there is
    /// refused when writing).
    pub fn new(dir: &Path) -> PacketTrace {
        PacketTrace {
            dir: dir.to_path_buf(),
            start_ns: Mutex::new(None),
            rows: Mutex::new(Rows::default()),
        }
    }

    /// The run starts now (call right before taking its `Instant`).
    pub fn started(&self) {
        if let Ok(mut slot) = self.start_ns.lock() {
            *slot = Some(trace_clock_ns());
        }
    }

    /// The generator built these packets.
    pub fn built(&self, ids: &[BuiltIds]) {
        let Ok(mut rows) = self.rows.lock() else {
            return;
        };
        for id in ids {
            if rows.built.len() >= TRACE_PACKETS_MAX {
                rows.dropped += 1;
                continue;
            }
            let recipient = rows.recipient(id.recipient);
            rows.built
                .push((id.seq, id.first_id, id.exit_id, recipient, id.size_bytes));
        }
    }

    /// A sender handed these packets to its session `at_ns` after the start.
    pub fn sent(&self, seqs: &[u64], at_ns: u64) {
        let Ok(mut rows) = self.rows.lock() else {
            return;
        };
        for &seq in seqs {
            if rows.sent.len() >= TRACE_PACKETS_MAX {
                rows.dropped += 1;
                continue;
            }
            rows.sent.push((seq, at_ns));
        }
    }

    /// `recipient` got packet `seq` `at_ns` after the start.
    pub fn delivered(&self, seq: u64, recipient: [u8; 32], at_ns: u64) {
        let Ok(mut rows) = self.rows.lock() else {
            return;
        };
        if rows.delivered.len() >= TRACE_PACKETS_MAX {
            rows.dropped += 1;
            return;
        }
        let recipient = rows.recipient(recipient);
        rows.delivered.push((seq, recipient, at_ns));
    }

    /// Writes `DIR/parts/loadgen.csv` (refusing one already there: the directory holds another
    /// run). `layers` and `delay_ns_mean` go into its sidecar (the nodes do not know the mixing
    /// delay; the metrics need it).
    pub fn write(
        &self,
        clients: &TraceClients,
        layers: u32,
        delay_ns_mean: f64,
    ) -> Result<TraceWritten, String> {
        let parts = self.dir.join(lethe_sim::merge::PARTS_DIR);
        std::fs::create_dir_all(&parts).map_err(|e| format!("{}: {e}", parts.display()))?;
        let path = parts.join(TRACE_PART);
        if path.exists() {
            return Err(format!(
                "{} exists: --trace needs a directory of its own per run",
                path.display()
            ));
        }
        let start_ns = self
            .start_ns
            .lock()
            .ok()
            .and_then(|slot| *slot)
            .ok_or("the trace's run never started")?;
        let rows = self
            .rows
            .lock()
            .map_err(|_| "trace rows lock poisoned".to_string())?;
        let (meta, nodes) = part_meta(clients, &rows.recipients, layers, delay_ns_mean);
        let mut writer =
            TraceWriter::create(&path, meta).map_err(|e| format!("{}: {e}", path.display()))?;
        let fail = |e: lethe_sim::trace::TraceError| format!("{}: {e}", path.display());
        let built: HashMap<u64, (u64, u64, u32, u32)> = rows
            .built
            .iter()
            .map(|&(seq, first, exit, recipient, size)| (seq, (first, exit, recipient, size)))
            .collect();
        let senders = clients.senders.len().max(1) as u64;
        let sends = rows.sent.iter().map(|&(seq, at_ns)| {
            let (first_id, _, recipient, size_bytes) = *built.get(&seq)?;
            let sender = (seq % senders) as usize;
            Some(TraceEvent {
                next_hop: Some(*nodes.gateways.get(sender)?),
                ..row(
                    (start_ns + at_ns, *nodes.senders.get(sender)?, Kind::Send),
                    (first_id, size_bytes),
                    seq,
                    nodes.recipients.get(recipient as usize).copied(),
                )
            })
        });
        let deliveries = rows.delivered.iter().map(|&(seq, recipient, at_ns)| {
            let (_, exit_id, _, size_bytes) = *built.get(&seq)?;
            let node = *nodes.recipients.get(recipient as usize)?;
            let at = (start_ns + at_ns, node, Kind::Deliver);
            Some(row(at, (exit_id, size_bytes), seq, Some(node)))
        });
        // A row whose packet was not kept when built cannot be linked: counted, not written.
        let mut dropped = rows.dropped;
        for event in sends.chain(deliveries) {
            match event {
                Some(event) => writer.write(&event).map_err(fail)?,
                None => dropped += 1,
            }
        }
        let written = writer.events_count();
        writer.finish().map_err(fail)?;
        Ok(TraceWritten {
            path,
            rows: written,
            dropped,
        })
    }
}

/// The part's node indices: each sender, each sender's entry gateway, each recipient.
struct PartNodes {
    senders: Vec<u32>,
    gateways: Vec<u32>,
    recipients: Vec<u32>,
}

fn part_meta(
    clients: &TraceClients,
    recipients: &[[u8; 32]],
    layers: u32,
    delay_ns_mean: f64,
) -> (TraceMeta, PartNodes) {
    let mut hasher = Sha256::new();
    hasher.update(format!("loadgen layers={layers} delay_ns_mean={delay_ns_mean}").as_bytes());
    for sender in &clients.senders {
        hasher.update(sender.identity);
    }
    let config_hash = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let mut meta = TraceMeta::new(
        "testnet",
        0,
        config_hash,
        lethe_sim::trace::current_commit(),
    );
    meta.layers = layers;
    meta.delay_mean_ns = delay_ns_mean.max(0.0) as u64;
    let mut index: HashMap<String, u32> = HashMap::new();
    let mut node = |meta: &mut TraceMeta, name: String, role: Role| -> u32 {
        if let Some(&i) = index.get(&name) {
            return i;
        }
        let i = meta.nodes.len() as u32;
        index.insert(name.clone(), i);
        meta.nodes.push(NodeInfo {
            name,
            role,
            layer: (role == Role::Gateway).then_some(0),
            corrupt: false,
        });
        i
    };
    // Senders first, in order: the merge keeps a part's order, so `lethe-sim metrics` takes
    // senders 0 and 1 as its default labelled pair.
    let senders: Vec<u32> = clients
        .senders
        .iter()
        .map(|s| node(&mut meta, client_name(&s.identity), Role::Client))
        .collect();
    for gateway in &clients.gateways {
        node(&mut meta, gateway.to_string(), Role::Gateway);
    }
    let gateways = clients
        .senders
        .iter()
        .map(|s| node(&mut meta, s.gateway.to_string(), Role::Gateway))
        .collect();
    let recipients = recipients
        .iter()
        .map(|r| node(&mut meta, client_name(r), Role::Client))
        .collect();
    (
        meta,
        PartNodes {
            senders,
            gateways,
            recipients,
        },
    )
}

/// A row of a real packet `seq`: `(id, size)` on the link it names.
fn row(
    (t_ns, node, kind): (u64, u32, Kind),
    (packet_id, size_bytes): (u64, u32),
    seq: u64,
    destination: Option<u32>,
) -> TraceEvent {
    TraceEvent {
        t_ns,
        node,
        kind,
        class: Class::Real,
        size_bytes,
        packet_id,
        next_hop: None,
        message_id: Some(seq),
        fragment_id: Some(0),
        destination,
        drop_reason: None,
        lab: LabFields::default(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use lethe_sim::trace::TraceReader;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "loadgen-trace-{name}-{}-{}",
            std::process::id(),
            trace_clock_ns()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Sends and deliveries become rows that name the sender, its gateway and the recipient,
    /// with the first-link and last-link ids; a second write into the same directory is
    /// refused, and rows beyond what was built are counted, not invented.
    #[test]
    fn rows_link_sends_and_deliveries_by_their_link_ids() {
        let dir = scratch("rows");
        let trace = PacketTrace::new(&dir);
        trace.started();
        let recipient = [7u8; 32];
        let ids: Vec<BuiltIds> = (0..4)
            .map(|seq| BuiltIds {
                seq,
                first_id: 100 + seq,
                exit_id: 200 + seq,
                recipient,
                size_bytes: 2413,
            })
            .collect();
        trace.built(&ids);
        trace.sent(&[0, 1, 2, 3, 9], 1_000);
        trace.delivered(2, recipient, 5_000);
        let gateway: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let clients = TraceClients {
            senders: vec![
                TraceSender {
                    identity: [1; 32],
                    gateway,
                },
                TraceSender {
                    identity: [2; 32],
                    gateway,
                },
            ],
            gateways: vec![gateway],
        };
        let written = trace.write(&clients, 3, 50e6).unwrap();
        assert_eq!((written.rows, written.dropped), (5, 1));
        let mut reader = TraceReader::open(&written.path).unwrap();
        let meta = reader.meta().clone();
        assert_eq!(meta.delay_mean_ns, 50_000_000);
        assert_eq!(meta.nodes[0].name, client_name(&[1; 32]));
        assert_eq!(meta.nodes[1].name, client_name(&[2; 32]));
        let mut events = Vec::new();
        while let Some(event) = reader.next_event().unwrap() {
            events.push(event);
        }
        let deliver = events.iter().find(|e| e.kind == Kind::Deliver).unwrap();
        assert_eq!((deliver.packet_id, deliver.message_id), (202, Some(2)));
        let recipient_node = meta.node(deliver.node).unwrap();
        assert_eq!(recipient_node.name, client_name(&recipient));
        assert_eq!(recipient_node.role, Role::Client);
        let send = events.iter().find(|e| e.message_id == Some(3)).unwrap();
        assert_eq!((send.kind, send.packet_id, send.node), (Kind::Send, 103, 1));
        assert_eq!(
            meta.node(send.next_hop.unwrap()).unwrap().role,
            Role::Gateway
        );
        assert_eq!(send.destination, Some(deliver.node));
        assert!(deliver.t_ns > send.t_ns);
        assert!(trace.write(&clients, 3, 50e6).is_err(), "a second part");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

//! `--trace DIR` of the client commands (`client send | receive | socks5`, `provider run`):
//! the client's part of a run's trace (format v1, `lethe_sim::trace`),
//! `DIR/parts/client-<identity>.csv`, named as gateways and loadgen name clients
//! ([`crate::trace::client_name`]) so that the merge makes one node of the three.
//!
//! The client knows what the nodes cannot: each packet's class. It writes a `send` row for
//! every packet its core hands to the session (real, reply, drop cover, loop cover; a real
//! fragment with its message and fragment id), whose id is the packet's as sent (the entry
//! gateway relays it unchanged, so the merge links the gateway's rows to it), and a `deliver`
//! row for every packet its gateway hands it (real fragments, replies, ACKs, its own loops).
//! A delivery carries only the payload, and names the fragment it carried (message id and
//! index, as the sender's `send` row does), so a traced sender's and recipient's rows give the
//! end-to-end latency. The id its packet had on its last link needs the route secrets of
//! whoever built it: for its own loops the client has them (the core keeps them when traced),
//! works that id out as it sends the loop (`crate::trace::hop_packet_id`, two X25519 per loop)
//! and keeps it until the loop is back (at most [`LOOPS_KEPT_MAX`]), so a loop's delivery
//! links to the exit gateway's; any other delivery's `packet_id` is 0 (unknown).
//!
//! Rows are stamped with CLOCK_MONOTONIC ns, the nodes' clock. The core task records an event
//! into a bounded channel (never blocking: a full channel counts it as dropped); one thread
//! writes the rows. Tracing off, the core task holds no [`ClientTrace`] and does no work per
//! packet.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use lethe_engine::runtime::trace::{packet_id, trace_clock_ns};
use lethe_proto::loopix::packets::{Built, KeptSecrets, PacketKind};
use lethe_proto::wire::DeliveryKind;
use lethe_sim::trace::{Class, Kind, LabFields, NodeInfo, Role, TraceEvent, TraceWriter};

use crate::trace::{client_name, hop_packet_id, part_meta, CLIENT_SIDE_CHANNEL_EVENTS};

/// How long the writer waits for an event before it looks at its stop flag.
const CLIENT_TRACE_POLL_MS: u64 = 100;
/// Loops whose last-link id waits for the loop to come back; beyond, the oldest is forgotten
/// (its delivery then carries id 0).
pub const LOOPS_KEPT_MAX: usize = 4_096;
/// The client's node index in its part; its gateway's.
const SELF_NODE: u32 = 0;
const GATEWAY_NODE: u32 = 1;

/// The trace flag of the client commands.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ClientTraceArgs {
    /// Write this client's packet events (trace format v1) to
    /// DIR/parts/client-<identity>.csv: a `send` row per packet handed to the gateway, with
    /// its class (real, reply, drop cover, loop cover), and a `deliver` row per packet
    /// received. DIR is a run's trace directory (`lethe testnet up --trace DIR`); a part
    /// already there is refused.
    #[arg(long, value_name = "DIR")]
    pub trace: Option<PathBuf>,
}

impl ClientTraceArgs {
    /// The config of the client in `files`, traced as these flags say.
    pub fn config(&self, files: &super::config::ClientFiles) -> super::runtime::ClientConfig {
        super::runtime::ClientConfig {
            trace_dir: self.trace.clone(),
            ..super::runtime::ClientConfig::from_files(files)
        }
    }
}

/// What the client did with a packet (what the writer turns into a row).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ClientEvent {
    t_ns: u64,
    kind: Kind,
    class: Class,
    packet_id: u64,
    size_bytes: u32,
    message_id: Option<u64>,
    fragment_id: Option<u32>,
}

/// The core task's end of the trace: records events, and ends the writer.
#[derive(Debug)]
pub struct ClientTrace {
    sender: Sender<ClientEvent>,
    dropped: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<u64, String>>>,
    path: PathBuf,
    /// Loops in flight: message id -> the id of the link they come back on.
    loops: HashMap<u64, u64>,
    loops_order: VecDeque<u64>,
}

/// The part's path for a client of identity `identity` in run directory `dir`.
pub fn part_path(dir: &Path, identity: &[u8; 32]) -> PathBuf {
    dir.join(lethe_sim::merge::PARTS_DIR)
        .join(format!("{}.csv", client_name(identity)))
}

impl ClientTrace {
    /// Opens the part of the client `identity` entering by the gateway whose mix address is
    /// `gateway` (its name in the gateway's own part), refusing one already there, and starts
    /// its writer.
    pub fn start(
        dir: &Path,
        identity: &[u8; 32],
        gateway: std::net::SocketAddr,
    ) -> Result<ClientTrace, String> {
        let path = part_path(dir, identity);
        if path.exists() {
            return Err(format!(
                "--trace: {} exists: each client writes one part per run",
                path.display()
            ));
        }
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        }
        let name = client_name(identity);
        let mut meta = part_meta(&name);
        meta.nodes.push(NodeInfo {
            name,
            role: Role::Client,
            layer: None,
            corrupt: false,
        });
        meta.nodes.push(NodeInfo {
            name: gateway.to_string(),
            role: Role::Gateway,
            layer: Some(0),
            corrupt: false,
        });
        let writer = TraceWriter::create(&path, meta)
            .map_err(|e| format!("--trace {}: {e}", path.display()))?;
        let (sender, receiver) = crossbeam_channel::bounded(CLIENT_SIDE_CHANNEL_EVENTS);
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            let path = path.clone();
            std::thread::Builder::new()
                .name("lethe-client-trace".into())
                .spawn(move || write_events(writer, &receiver, &stop, &path))
                .map_err(|e| format!("trace writer: {e}"))?
        };
        Ok(ClientTrace {
            sender,
            dropped: Arc::new(AtomicU64::new(0)),
            stop,
            thread: Some(thread),
            path,
            loops: HashMap::new(),
            loops_order: VecDeque::new(),
        })
    }

    fn record(&self, event: ClientEvent) {
        if self.sender.try_send(event).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Keeps the id a loop will come back on (the link into its last hop).
    fn keep_loop(&mut self, message_id: u64, built: &Built) {
        let Some(KeptSecrets(secrets)) = &built.route_secrets else {
            return;
        };
        let last = secrets.len().saturating_sub(1);
        let Some(id) = hop_packet_id(&built.packet, secrets, last) else {
            return;
        };
        if self.loops_order.len() >= LOOPS_KEPT_MAX {
            if let Some(old) = self.loops_order.pop_front() {
                self.loops.remove(&old);
            }
        }
        self.loops.insert(message_id, id);
        self.loops_order.push_back(message_id);
    }

    /// The core handed `built` to the session.
    pub fn sent(&mut self, built: &Built) {
        let (class, message_id, fragment_id) = match built.kind {
            PacketKind::Real {
                message_id,
                fragment,
            } => (Class::Real, Some(message_id), Some(fragment)),
            PacketKind::Reply { message_id } => (Class::Reply, Some(message_id), None),
            PacketKind::DropCover => (Class::DropCover, None, None),
            PacketKind::LoopCover { message_id } => {
                self.keep_loop(message_id, built);
                (Class::LoopCover, Some(message_id), None)
            }
        };
        self.record(ClientEvent {
            t_ns: trace_clock_ns(),
            kind: Kind::Send,
            class,
            packet_id: packet_id(&built.packet),
            size_bytes: built.packet.len() as u32,
            message_id,
            fragment_id,
        });
    }

    /// The gateway handed us a packet's payload of `size_bytes` (`loop_cover`: the core
    /// recognised one of our loops; `fragment`: the message id and index it carried, as its
    /// sender's `send` row names them).
    pub fn delivered(
        &mut self,
        kind: DeliveryKind,
        loop_cover: bool,
        fragment: Option<(u64, u32)>,
        size_bytes: usize,
    ) {
        let class = match kind {
            DeliveryKind::Ack => Class::Ack,
            DeliveryKind::Reply => Class::Reply,
            DeliveryKind::Message if loop_cover => Class::LoopCover,
            DeliveryKind::Message => Class::Real,
        };
        let packet_id = match (class, fragment) {
            (Class::LoopCover, Some((message_id, _))) => self.loops.remove(&message_id),
            _ => None,
        };
        self.record(ClientEvent {
            t_ns: trace_clock_ns(),
            kind: Kind::Deliver,
            class,
            packet_id: packet_id.unwrap_or(0),
            size_bytes: u32::try_from(size_bytes).unwrap_or(u32::MAX),
            message_id: fragment.map(|(message, _)| message),
            fragment_id: fragment.map(|(_, index)| index),
        });
    }

    /// Writes what is queued and closes the part (blocks on the writer: call off the
    /// runtime's workers).
    pub fn finish(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let Some(thread) = self.thread.take() else {
            return;
        };
        let dropped = self.dropped.load(Ordering::Relaxed);
        match thread.join() {
            Ok(Ok(rows)) => tracing::info!(
                part = %self.path.display(),
                rows,
                dropped,
                "trace written"
            ),
            Ok(Err(e)) => tracing::error!(error = %e, "trace"),
            Err(_) => tracing::error!("the trace writer panicked"),
        }
    }
}

impl Drop for ClientTrace {
    /// A client dropped without [`ClientTrace::finish`] still stops its writer (which then
    /// flushes the part on its own).
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn write_events(
    mut writer: TraceWriter,
    receiver: &Receiver<ClientEvent>,
    stop: &AtomicBool,
    path: &Path,
) -> Result<u64, String> {
    let fail = |e: lethe_sim::trace::TraceError| format!("trace {}: {e}", path.display());
    let poll = Duration::from_millis(CLIENT_TRACE_POLL_MS);
    // After the stop flag, at most one channel's worth is left: bounded.
    let mut left_after_stop = CLIENT_SIDE_CHANNEL_EVENTS;
    loop {
        let stopping = stop.load(Ordering::SeqCst);
        let event = if stopping {
            if left_after_stop == 0 {
                break;
            }
            left_after_stop -= 1;
            match receiver.try_recv() {
                Ok(event) => event,
                Err(_) => break,
            }
        } else {
            match receiver.recv_timeout(poll) {
                Ok(event) => event,
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => continue,
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
            }
        };
        writer.write(&row(&event)).map_err(fail)?;
    }
    let rows = writer.events_count();
    writer.finish().map_err(fail)?;
    Ok(rows)
}

fn row(event: &ClientEvent) -> TraceEvent {
    let (next_hop, destination) = match (event.kind, event.class) {
        (Kind::Send, Class::LoopCover) => (Some(GATEWAY_NODE), Some(SELF_NODE)),
        (Kind::Send, _) => (Some(GATEWAY_NODE), None),
        _ => (None, Some(SELF_NODE)),
    };
    TraceEvent {
        t_ns: event.t_ns,
        node: SELF_NODE,
        kind: event.kind,
        class: event.class,
        size_bytes: event.size_bytes,
        packet_id: event.packet_id,
        next_hop,
        message_id: event.message_id,
        fragment_id: event.fragment_id,
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

    /// Sends carry their class, first-link id and next hop; deliveries their class; a second
    /// part for the same client in the same run is refused.
    #[test]
    fn a_client_part_holds_its_classes_and_is_written_once() {
        let dir = std::env::temp_dir().join(format!("lethe-client-trace-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let identity = [0xab; 32];
        let gateway: std::net::SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let mut trace = ClientTrace::start(&dir, &identity, gateway).unwrap();
        let packet = vec![7u8; 64];
        let built = |kind| Built {
            first_hop: [1; 32],
            packet: packet.clone(),
            expected_rtt_ns: 0,
            kind,
            route_secrets: None,
        };
        trace.sent(&built(PacketKind::Real {
            message_id: 9,
            fragment: 2,
        }));
        trace.sent(&built(PacketKind::DropCover));
        trace.sent(&built(PacketKind::LoopCover { message_id: 5 }));
        trace.delivered(DeliveryKind::Message, true, Some((5, 0)), 100);
        trace.delivered(DeliveryKind::Ack, false, None, 30);
        trace.finish();
        assert!(ClientTrace::start(&dir, &identity, gateway).is_err());

        let path = part_path(&dir, &identity);
        assert!(path.ends_with("parts/client-abababababababab.csv"));
        let reader = TraceReader::open(&path).unwrap();
        assert_eq!(reader.meta().nodes[1].name, "127.0.0.1:4000");
        let rows: Vec<TraceEvent> = reader.map(Result::unwrap).collect();
        let summary: Vec<_> = rows.iter().map(|r| (r.kind, r.class)).collect();
        assert_eq!(
            summary,
            [
                (Kind::Send, Class::Real),
                (Kind::Send, Class::DropCover),
                (Kind::Send, Class::LoopCover),
                (Kind::Deliver, Class::LoopCover),
                (Kind::Deliver, Class::Ack),
            ]
        );
        assert_eq!(rows[0].packet_id, packet_id(&packet));
        assert_eq!(rows[0].next_hop, Some(GATEWAY_NODE));
        assert_eq!(
            (rows[0].message_id, rows[0].fragment_id),
            (Some(9), Some(2))
        );
        assert_eq!(rows[1].message_id, None);
        assert_eq!(
            (rows[3].message_id, rows[3].fragment_id),
            (Some(5), Some(0))
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}

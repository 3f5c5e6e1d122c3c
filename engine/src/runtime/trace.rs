//! The runtime's packet-event hook: what a node records for a trace (the trace format itself
//! lives in lethe-sim, which depends on this crate, so the engine only emits events).
//!
//! Off, it costs the data plane one branch per packet (`Option::None`). On, each core pushes a
//! small fixed-size [`PacketEvent`] into one bounded channel with `try_send`; a writer thread
//! of the node drains it off the hot path. A full channel never blocks a core: the event is
//! counted in [`TraceEvents::dropped`] instead, and the writer reports the count.
//!
//! Times are CLOCK_MONOTONIC ns, which is one clock for every process on a host: the traces of
//! a local testnet's nodes and clients merge without any offset.
//!
//! A packet's identity on a link is [`packet_id`]: a hash of its Sphinx header's group element
//! and MAC, which every hop replaces. The departure at one node and the arrival at the next
//! carry the same bytes, so they get the same id, as in the simulator's traces.
//!
//! Lab ground truth (which input left as which output, drawn delay vs residence) is filled only
//! in a build with the `lab` feature and a hook opened with `lab = true` ([`TraceHook::new`]
//! refuses that otherwise): an operator build cannot record it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use lethe_crypto::sphinx::constants::{ALPHA_SIZE, MAC_SIZE};

use crate::metrics::DropReason;

/// Events the channel holds before new ones are counted as dropped: about a second of a busy
/// core's arrivals and departures, so a writer that stalls briefly (a disk flush) loses none.
pub const TRACE_CHANNEL_EVENTS: usize = 1 << 18;
/// True when this build can record lab ground truth.
pub const LAB_BUILT: bool = cfg!(feature = "lab");

/// Bytes of a Sphinx packet [`packet_id`] hashes: the header's group element and MAC.
const PACKET_ID_BYTES: usize = ALPHA_SIZE + MAC_SIZE;

/// What happened to a packet at this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PacketEventKind {
    /// A Sphinx packet was read from an ingress connection.
    Arrive,
    /// A packet was handed to egress towards `next_hop` (after its delay).
    Depart,
    /// A final-hop packet was handed to the node's final-hop consumer (gateways) or counted.
    Deliver,
    /// The core refused the packet before any crypto (`drop_reason`).
    Drop,
}

/// Lab only: the link between a departing packet and the packet that arrived as it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LabLink {
    pub in_packet_id: u64,
    pub delay_drawn_ns: u64,
    pub residence_ns: u64,
}

/// One packet event, as the runtime saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PacketEvent {
    /// CLOCK_MONOTONIC, ns.
    pub t_ns: u64,
    pub kind: PacketEventKind,
    /// [`packet_id`] of the bytes on the link (arrival: as read; departure: as sent). A
    /// delivery carries the id the packet arrived with.
    pub packet_id: u64,
    pub size_bytes: u32,
    pub next_hop: Option<SocketAddr>,
    pub drop_reason: Option<DropReason>,
    /// Filled only in a lab build with a lab hook.
    pub lab: Option<LabLink>,
}

/// What a core holds: one branch when `None` (tracing off).
#[derive(Clone, Debug)]
pub struct TraceHook {
    sender: Sender<PacketEvent>,
    dropped: Arc<AtomicU64>,
    lab: bool,
}

/// The node's end: the events of every core, and how many were lost to a full channel.
#[derive(Debug)]
pub struct TraceEvents {
    receiver: Receiver<PacketEvent>,
    dropped: Arc<AtomicU64>,
}

/// A lab hook asked for in a build without the `lab` feature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LabNotBuilt;

impl std::fmt::Display for LabNotBuilt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "lab traces (input -> output links) need a build with `--features lab`"
        )
    }
}

impl std::error::Error for LabNotBuilt {}

impl TraceHook {
    /// A hook for the runtime and the node's end of it. `lab` needs the `lab` feature.
    pub fn new(lab: bool) -> Result<(TraceHook, TraceEvents), LabNotBuilt> {
        if lab && !LAB_BUILT {
            return Err(LabNotBuilt);
        }
        let (sender, receiver) = crossbeam_channel::bounded(TRACE_CHANNEL_EVENTS);
        let dropped = Arc::new(AtomicU64::new(0));
        let hook = TraceHook {
            sender,
            dropped: dropped.clone(),
            lab,
        };
        Ok((hook, TraceEvents { receiver, dropped }))
    }

    /// True when departures should carry [`LabLink`]s (always false without the feature).
    pub fn lab(&self) -> bool {
        LAB_BUILT && self.lab
    }

    /// Never blocks: a full channel counts the event as dropped.
    pub fn record(&self, event: PacketEvent) {
        if self.sender.try_send(event).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl TraceEvents {
    /// The next event, waiting at most `timeout` (`Ok(None)` when none came);
    /// `Err(TraceClosed)` once every [`TraceHook`] is gone (the runtime ended) and the channel
    /// is empty.
    pub fn next(&self, timeout: Duration) -> Result<Option<PacketEvent>, TraceClosed> {
        match self.receiver.recv_timeout(timeout) {
            Ok(event) => Ok(Some(event)),
            Err(RecvTimeoutError::Timeout) => Ok(None),
            Err(RecvTimeoutError::Disconnected) => Err(TraceClosed),
        }
    }

    /// Events lost because the channel was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// Every hook is gone and every event was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceClosed;

/// A packet's identity on one link: FNV-1a over its header's group element and MAC (both
/// replaced at every hop, so each link sees a fresh id; equal bytes give equal ids). Shorter
/// packets hash whatever they have (a malformed packet still gets an id for its drop row).
pub fn packet_id(packet: &[u8]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let bytes = &packet[..packet.len().min(PACKET_ID_BYTES)];
    bytes
        .iter()
        .fold(OFFSET, |hash, &b| (hash ^ u64::from(b)).wrapping_mul(PRIME))
}

/// CLOCK_MONOTONIC in ns: one clock for all processes on a host (see the module doc).
pub fn trace_clock_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    if rc != 0 {
        return 0;
    }
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn packet_id_depends_on_the_header_only() {
        let mut a = vec![7u8; 100];
        let b = a.clone();
        assert_eq!(packet_id(&a), packet_id(&b));
        a[PACKET_ID_BYTES] ^= 1; // past the hashed bytes
        assert_eq!(packet_id(&a), packet_id(&b));
        a[0] ^= 1;
        assert_ne!(packet_id(&a), packet_id(&b));
    }

    #[test]
    fn a_full_channel_counts_instead_of_blocking() {
        let (hook, events) = TraceHook::new(false).unwrap();
        let event = PacketEvent {
            t_ns: 1,
            kind: PacketEventKind::Arrive,
            packet_id: 2,
            size_bytes: 3,
            next_hop: None,
            drop_reason: None,
            lab: None,
        };
        for _ in 0..TRACE_CHANNEL_EVENTS + 5 {
            hook.record(event);
        }
        assert_eq!(events.dropped(), 5);
        assert_eq!(events.next(Duration::ZERO), Ok(Some(event)));
        drop(hook);
        for _ in 1..TRACE_CHANNEL_EVENTS {
            assert_eq!(events.next(Duration::ZERO), Ok(Some(event)));
        }
        assert_eq!(events.next(Duration::ZERO), Err(TraceClosed));
    }

    #[test]
    fn lab_needs_the_feature() {
        assert_eq!(TraceHook::new(true).is_ok(), LAB_BUILT);
    }
}

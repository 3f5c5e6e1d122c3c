//! What an adversary sees of a trace. Neither view carries a class, a message id or a lab
//! column: those are the ground truth the metrics score the adversary against.
//!
//! - **Link level** (global passive): every packet on every link, with its time at both ends,
//!   its size and the link's endpoints. The bytes change at every Sphinx hop, so a packet is
//!   one `packet_id` per link; a gateway relays a client's packet unchanged (same id).
//! - **Gateway level** (entry and exit timings, as MixMatch assumes): when each client hands
//!   a packet to its gateway, and when each gateway hands a packet to its recipient. On a real
//!   run the entries are the client recorder's `send` rows (loadgen's) and the exits the exit
//!   gateway's `deliver` rows, which name the recipient (its mailbox's hand-off).

use crate::trace::{Kind, Role, TraceEvent, TraceMeta};

/// Which end of a link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkEnd {
    /// The packet left `node` towards `peer`.
    Depart,
    /// The packet reached `node`.
    Arrive,
}

/// One packet seen at one end of a link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkObservation {
    pub t_ns: u64,
    pub end: LinkEnd,
    pub node: u32,
    /// The other end, where the trace names it (departures).
    pub peer: Option<u32>,
    pub packet_id: u64,
    pub size_bytes: u32,
}

/// Entry: a client hands a packet to its gateway. Exit: a gateway hands one to a client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GatewayDirection {
    Entry,
    Exit,
}

/// One packet at a gateway's client side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GatewayObservation {
    pub t_ns: u64,
    pub direction: GatewayDirection,
    /// The client: the sender (entry) or the recipient (exit).
    pub client: u32,
    pub gateway: u32,
    pub size_bytes: u32,
}

/// The link-level view of one event, if it shows on a link. A client's `send` is the packet
/// leaving the client, so it is a departure too.
pub fn link_view(event: &TraceEvent) -> Option<LinkObservation> {
    let end = match event.kind {
        Kind::Send | Kind::Depart => LinkEnd::Depart,
        Kind::Arrive => LinkEnd::Arrive,
        Kind::Unwrap | Kind::Delay | Kind::Deliver | Kind::Drop => return None,
    };
    Some(LinkObservation {
        t_ns: event.t_ns,
        end,
        node: event.node,
        peer: event.next_hop,
        packet_id: event.packet_id,
        size_bytes: event.size_bytes,
    })
}

/// The gateway-level view of one event, if it happens at a gateway's client side.
pub fn gateway_view(meta: &TraceMeta, event: &TraceEvent) -> Option<GatewayObservation> {
    let role = meta.node(event.node)?.role;
    match (event.kind, role) {
        (Kind::Send, Role::Client) => Some(GatewayObservation {
            t_ns: event.t_ns,
            direction: GatewayDirection::Entry,
            client: event.node,
            gateway: event.next_hop?,
            size_bytes: event.size_bytes,
        }),
        (Kind::Deliver, Role::Gateway) => Some(GatewayObservation {
            t_ns: event.t_ns,
            direction: GatewayDirection::Exit,
            client: event.destination?,
            gateway: event.node,
            size_bytes: event.size_bytes,
        }),
        _ => None,
    }
}

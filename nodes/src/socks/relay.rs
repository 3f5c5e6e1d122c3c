//! What the proxy and the provider share: the mixnet as two channels. [`Outgoing`] commands
//! send to an address (with reply SURBs attached), reply through received SURBs, or discard
//! them; [`Incoming`] messages are what the client library reassembled, with the SURBs that
//! came along. The client library's adapter (`cli::bridge`) pumps both; tests use an
//! in-memory mixnet that reorders.

use lethe_proto::service::KeyEpochs;
use tokio::sync::{mpsc, oneshot, watch};

/// One command to the mixnet client.
#[derive(Debug)]
pub enum Outgoing {
    /// A message to a client address (`identity.encryption@gateway`), with `reply_surbs`
    /// reply SURBs attached.
    Send {
        to: String,
        bytes: Vec<u8>,
        reply_surbs: usize,
    },
    /// A reply through one SURB of a received bundle (`bytes` fit one reply fragment).
    Reply {
        bundle: u64,
        bytes: Vec<u8>,
        sent: oneshot::Sender<ReplyOutcome>,
    },
    /// The bundle's SURBs will not be used.
    Discard { bundle: u64 },
}

/// What became of an [`Outgoing::Reply`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyOutcome {
    Queued,
    /// The client no longer holds the bundle's SURBs (expired or evicted): use others.
    NoSurbs,
    /// The client has stopped.
    Failed,
}

/// One message received from the mixnet.
#[derive(Debug)]
pub struct Incoming {
    pub data: Vec<u8>,
    /// The reply SURBs that came with it, if any: the client's bundle id and how many.
    pub surb_bundle: Option<u64>,
    pub reply_surbs: usize,
}

/// The mixnet as the relays see it.
pub struct MixnetPort {
    pub outgoing: mpsc::Sender<Outgoing>,
    pub incoming: mpsc::Receiver<Incoming>,
    /// This endpoint's own address (sent only when the user chooses to reveal it).
    pub own_address: String,
    /// The mixnode key rotations of the client's topology, as it refreshes: which SURBs are
    /// current (see [`lethe_proto::service`]).
    pub key_epochs: watch::Receiver<KeyEpochs>,
}

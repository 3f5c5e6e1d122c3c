//! What the proxy and the provider share: the mixnet as two channels. `Outgoing` messages go
//! to a client address; incoming messages are the contents the client library reassembled.
//! The client library's adapter pumps both; tests use an in-memory mixnet that reorders.

use tokio::sync::mpsc;

/// One message to send through the mixnet.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// Recipient address (`identity.key@gateway`).
    pub to: String,
    pub bytes: Vec<u8>,
}

/// The mixnet as the relays see it.
pub struct MixnetPort {
    pub outgoing: mpsc::Sender<Outgoing>,
    pub incoming: mpsc::Receiver<Vec<u8>>,
    /// This endpoint's own address (what replies are sent to).
    pub own_address: String,
}

/// Bytes read from a socket into one Data message: large enough for throughput, small enough
/// that a message is a handful of Sphinx packets.
pub const READ_CHUNK_BYTES: usize = 16 * 1024;
/// Per-connection reorder buffer bound.
pub const REORDER_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Chunks queued towards one local socket.
pub const SOCKET_QUEUE_CHUNKS: usize = 256;
/// Relayed connections alive at once, per proxy or provider.
pub const CONNECTIONS_MAX: usize = 1024;

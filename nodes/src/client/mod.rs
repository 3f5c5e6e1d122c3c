//! The Loopix client: identity and address, end-to-end encrypted fragmented messages with
//! SURB-ACKs and retransmission, reply SURBs, Poisson real/drop-cover and loop-cover streams,
//! and the WebSocket session to its gateway.
//!
//! Library use (the SOCKS5 proxy and loadgen):
//! ```ignore
//! let files = lethe_nodes::client::config::load(dir)?;
//! let (handle, mut received) = client::connect(ClientConfig::from_files(&files)).await?;
//! let ticket = handle.send(&recipient, bytes, 5).await?;      // 5 reply SURBs attached
//! while let Some(mut message) = received.recv().await {
//!     /* handle message.data durably */
//!     message.confirm();
//!     if let Some(bundle) = message.surb_bundle { handle.reply(bundle, answer).await?; }
//! }
//! ```
//! Layout: [`address`] (Nym's Recipient shape), [`config`] (files), [`message`]
//! (fragments, e2e encryption, reassembly), [`ack`] (SURB-ACK plaintexts), [`retransmit`]
//! (timers), [`packets`] (Sphinx building): all in `lethe_proto::loopix`, with the state
//! machine over them (`lethe_proto::loopix::LoopixClient`); here [`runtime`] (the tokio tasks
//! driving it), [`stats`] (what handles read), [`cli`].

pub use lethe_proto::loopix::{ack, address, message, packets, retransmit};
pub mod cli;
pub mod config;
pub mod credential;
pub mod refusals;
pub mod runtime;
pub mod stats;

pub use address::Recipient;
pub use config::LoopixParams;
pub use lethe_proto::loopix::{ClientLimits, SendError, SendProgress};
pub use runtime::{
    connect, ClientConfig, ClientError, ClientHandle, ConnectionState, DirectorySource,
    MessageTicket, ReceivedMessage, StaticTopology, TopologySource,
};
pub use stats::StatsSnapshot;

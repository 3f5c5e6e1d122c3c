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
//! (timers), [`packets`] (Sphinx building), [`core`] (the state machine), [`runtime`] (tokio
//! tasks), [`cli`].

pub use lethe_proto::loopix::{ack, address, message, retransmit};
pub mod cli;
pub mod config;
pub mod core;
pub mod credential;
pub mod packets;
pub mod refusals;
pub mod runtime;

pub use address::Recipient;
pub use config::LoopixParams;
pub use core::{CoreLimits, MessageTicket, SendError, SendProgress, StatsSnapshot};
pub use runtime::{
    connect, ClientConfig, ClientError, ClientHandle, ConnectionState, DirectorySource,
    ReceivedMessage, StaticTopology, TopologySource,
};

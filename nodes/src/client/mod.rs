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
//! Layout: the protocol is `lethe_proto::loopix` (addresses, fragments and e2e encryption,
//! SURB-ACKs, retransmission timers, Sphinx building, and the state machine over them,
//! `LoopixClient`; [`address`], [`message`], [`ack`] and [`packets`] are re-exported for the
//! tests and tools that import them from here). Here: [`config`] (files), [`runtime`] (the
//! tokio tasks driving the state machine), [`stats`] (what handles read), [`trace`] (`--trace DIR`: the
//! client's part of a run's trace), [`cli`].

pub use lethe_proto::loopix::{ack, address, message, packets};
pub mod cli;
pub mod config;
pub mod credential;
pub mod refusals;
pub mod runtime;
pub mod stats;
pub mod trace;

pub use address::Recipient;
pub use config::LoopixParams;
pub use lethe_proto::loopix::{ClientLimits, SendError, SendProgress};
pub use runtime::{
    connect, ClientConfig, ClientError, ClientHandle, ConnectionState, DirectorySource,
    MessageTicket, ReceivedMessage, StaticTopology, TopologySource,
};
pub use stats::StatsSnapshot;

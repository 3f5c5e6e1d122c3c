//! The client ↔ gateway protocol (WebSocket binary messages) and the layout of the Sphinx
//! payloads gateways look into.
//!
//! A connection: the three handshake messages ([`handshake`]), then every WebSocket binary
//! message is one [`session::Session`]-sealed [`messages`] message. Text messages are refused.

pub mod admission;
pub mod handshake;
pub mod issuance;
pub mod messages;
pub mod payload;
pub mod session;

pub use handshake::{ClientHandshake, GatewayHandshake};
pub use messages::{
    ClientMessage, ClientMessageView, ConfirmView, DeliverView, DeliveryKind, ForwardView,
    GatewayMessage, GatewayMessageView,
};
pub use session::Session;

pub use crate::limits::WS_MESSAGE_BYTES_MAX;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    #[error("handshake failed: {0}")]
    Handshake(&'static str),
    #[error("message does not decrypt (tampered, replayed or out of order)")]
    Open,
    #[error("cannot seal message")]
    Seal,
    #[error("session message counter exhausted")]
    SessionExhausted,
    #[error("malformed message: {0}")]
    Malformed(&'static str),
}

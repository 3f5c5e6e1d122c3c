//! The Loopix client core: addresses, end-to-end encrypted fragments and their reassembly,
//! SURB-ACKs and the retransmission tracker, the Poisson schedule of the real/drop-cover and
//! loop-cover streams, Sphinx packet building, and the client state machine over them all.

pub mod ack;
pub mod address;
pub mod clear;
pub mod client;
pub mod message;
pub mod packets;
pub mod params;
pub mod payer;
pub mod retransmit;
pub mod schedule;

pub use clear::PacketFormat;
pub use client::{
    Accepted, ClientLimits, Counters, LoopixClient, LoopixEvent, LoopixTransmit, Received,
    SendError, SendProgress,
};
pub use packets::{Built, PacketKind};
pub use params::LoopixParams;

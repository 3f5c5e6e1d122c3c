//! The Loopix client core: addresses, end-to-end encrypted fragments and their reassembly,
//! SURB-ACKs and the retransmission tracker, and the Poisson schedule of the real/drop-cover
//! and loop-cover streams.

pub mod ack;
pub mod address;
pub mod message;
pub mod payer;
pub mod retransmit;
pub mod schedule;

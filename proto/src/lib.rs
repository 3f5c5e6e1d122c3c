//! Lethe's protocol cores above the engine, free of I/O: no sockets, no clock reads, no OS
//! randomness. Drivers feed time (µs on their own monotonic clock) and bytes in, and take
//! transmits, timers and events out; randomness comes from an RNG the driver injects, so a
//! simulator can run the very same code in simulated time from a seed.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod client_session;
pub mod final_hop;
pub mod gateway_session;
pub mod hex;
pub mod limits;
pub mod loopix;
pub mod service;
#[cfg(any(test, feature = "test-fixtures"))]
pub mod testing;
pub mod topology;
pub mod wire;

pub use client_session::{ClientEvent, ClientSession};
pub use gateway_session::{GatewayEvent, GatewaySession};

/// A duration in the µs the cores count time in (saturating: a core never sees a wrapped clock).
pub fn duration_us(duration: std::time::Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

//! Lethe's cryptography and wire formats.
//!
//! Everything here is I/O free: byte buffers in, byte buffers (rewritten in place) out.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]
pub mod coconut;
pub mod framing;
pub mod lioness;
pub mod simd;
pub mod sphinx;
pub mod x25519;

//! The I/O-free engine core (batcher, timer wheel, replay filter, routing decisions) and the
//! per-core runtime around it.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

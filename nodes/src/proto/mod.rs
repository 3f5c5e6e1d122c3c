//! The client ↔ gateway protocol lives in `lethe-proto`; this module keeps the paths the
//! gateway, the client and loadgen import it by.

pub use lethe_proto::wire::*;

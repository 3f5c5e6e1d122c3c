//! Lethe's research toolkit.
//!
//! - [`trace`]: the versioned per-packet trace format (CSV + sidecar), its streaming writer and
//!   reader, and the lab-mode ground truth that only a `lab` build may write.
//! - [`merge`]: one trace out of a real run's per-process parts (`lethe testnet up --trace`).
//! - [`views`]: what a global passive adversary and a gateway-level adversary see of a trace.
//! - [`metrics`]: per-mix and end-to-end entropy, epsilon/delta, latency, queue occupancy,
//!   cover overhead and a flow-matching attacker, with intervals across seeds.
//! - [`sim`]: a deterministic discrete-event simulator whose mixes and gateways are the real
//!   engine core (`lethe_engine::core::Core`) fed real Sphinx packets, and whose clients are
//!   the real client core (`lethe_proto::loopix::LoopixClient` and the sessions).
//! - [`sweep`] and [`figure`]: a figure from a sweep file, each point an independent `run`
//!   process, collected into CSV, PNG and a JSON sidecar.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod figure;
pub mod merge;
pub mod metrics;
pub mod sim;
pub mod stats;
pub mod sweep;
pub mod trace;
pub mod views;

//! The I/O-free engine core: per-core timer wheel, batcher and buffer pool, and the replay
//! filter shared by all cores. Nothing here reads a clock, opens a socket or takes a lock:
//! time comes in as an argument (`now_us`, ticks), after quinn-proto's no-I/O split, and all
//! memory is allocated at construction, after TigerBeetle's static allocation.
//!
//! - **Why a wheel** ([`timer_wheel`]): every forwarded packet waits an exponential delay
//!   (Nym caps it at 10 s). With 10^5–10^6 packets pending per core, a heap costs O(log n) per
//!   insert and per expiry; a hierarchical wheel is O(1) amortised and expires whole slots at
//!   once, which feeds batched sends. One wheel per core, no lock (tokio's sharded-wheel lock
//!   was reverted for contention).
//! - **Why an atomic blocked Bloom filter** ([`replay`]): Nym guards one filter with a global
//!   mutex. Here all cores `fetch_or` into shared `AtomicU64` words; a tag's bits live in one
//!   block (one word by default, so the race between duplicates is exact, or one cache line),
//!   so a check costs one or two cache misses.
//! - **FP math**: block loads are Poisson(λ = n/blocks); a fresh tag is a false positive iff its
//!   k bits are set, `FP = Σ_j Pois(j; λ)(1 − (1 − 1/B)^{kj})^k` for B-bit blocks. At Nym's
//!   1e-5 this needs ~24 bits/item for a classic filter, ~30 for 512-bit blocks and ~81 for
//!   64-bit blocks; sizing is `pps × key lifetime` items ([`replay::ReplayParams`]).
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod batcher;
pub mod core;
pub mod limits;
pub mod metrics;
pub mod pool;
pub mod replay;
pub mod runtime;
pub mod timer_wheel;

pub use batcher::Batcher;
pub use limits::{ConfigError, EngineConfig, PacketSizes, ReplayConfig};
pub use pool::{BufId, BufferPool};
pub use replay::{
    snapshot_path, ReplayFilter, ReplayFilterSet, ReplayParams, ReplayTag, RotationId,
};
pub use timer_wheel::{Full, Tick, TickClock, TimerWheel};

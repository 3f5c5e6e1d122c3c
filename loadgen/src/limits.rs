//! The load generator's bounds in one place (queue and byte caps, connection caps, what one
//! run may hold), with the relations between them checked at compile time.
//!
//! Names put units and qualifiers last (`queued_bytes_max`), following TigerBeetle's style.

/// Frames coalesced into one write at most.
pub const SENDER_BATCH_FRAMES_MAX: usize = 64;
/// Runs merged at most (each is read whole into memory).
pub const MERGE_SOURCES_MAX: usize = 256;
/// Distinct error texts kept from the sources' gateway clients.
pub const MERGE_ERRORS_MAX: usize = 8;
/// Most credentials one sender may need: a run needing more is refused before it starts.
pub const CREDENTIALS_PER_SENDER_MAX: u64 = 64;
/// Credentials being obtained at once (each asks every issuer).
pub const OBTAIN_CONCURRENCY: usize = 8;
/// Largest response read (a node's /metrics is a few KiB).
pub const SCRAPE_RESPONSE_BYTES_MAX: u64 = 4 * 1024 * 1024;
/// Latencies are recorded in microseconds, 1 µs to 1 h, 3 significant digits.
pub const LATENCY_US_MAX: u64 = 3_600_000_000;
/// Seconds kept in the per-second series; later arrivals count in `series_overflow`.
pub const SERIES_SECONDS_MAX: usize = 3_600;
/// Largest run the bitmap tracks (16 MiB of bits).
pub const PACKETS_MAX: u64 = 1 << 27;
/// Memory the pre-built frames may hold at once, all queues together.
pub const QUEUED_BYTES_MAX: usize = 512 * 1024 * 1024;
/// Connections served at once; more are refused and counted.
pub const RECEIVER_CONNECTIONS_MAX: u64 = 64;
pub const RECEIVER_READ_BUFFER_BYTES: usize = 256 * 1024;
/// Most windows in one run (each keeps a latency histogram of ~25 KiB).
pub const WINDOWS_MAX: usize = 1_000;
/// Bytes of a node's log scanned for panics at the end of a run.
pub const LOG_SCAN_BYTES_MAX: u64 = 256 * 1024 * 1024;

const _: () = assert!(SENDER_BATCH_FRAMES_MAX > 0 && RECEIVER_CONNECTIONS_MAX > 0);
const _: () = assert!(OBTAIN_CONCURRENCY > 0 && MERGE_SOURCES_MAX > 0);
// A packet as late as the whole per-second series is long is still recordable.
const _: () = assert!(LATENCY_US_MAX >= SERIES_SECONDS_MAX as u64 * 1_000_000);

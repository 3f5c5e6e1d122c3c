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

// --- Gateway clients (`gateway`) ---

/// Connect + handshake + welcome, per session.
pub const GATEWAY_SESSION_TIMEOUT_MS: u64 = 10_000;
/// A gateway with admission on reports the balance right after `Welcome`; one that says
/// nothing for this long has open admission.
pub const GATEWAY_BALANCE_WAIT_MS: u64 = 2_000;
/// How long a spent credential may wait for the gateway's answer (it may queue for a
/// verification slot for `lethe_nodes::limits::ADMISSION_VERIFY_WAIT_MS`).
pub const GATEWAY_CREDIT_WAIT_MS: u64 = 20_000;
/// Distinct error texts kept for the report.
pub const GATEWAY_ERRORS_MAX: usize = 8;
/// A sender waits at most this long for room in its session's queue.
pub const SENDER_QUEUE_WAIT_MS_MAX: u64 = 10_000;
/// Batches (of up to [`SENDER_BATCH_FRAMES_MAX`] packets) queued per sender session.
pub const SENDER_QUEUE_BATCHES: usize = 32;
/// Receivers confirm when this many ids are pending, or every
/// [`RECEIVER_CONFIRM_INTERVAL_MS`].
pub const RECEIVER_CONFIRM_BATCH_IDS: usize = 256;
pub const RECEIVER_CONFIRM_INTERVAL_MS: u64 = 50;
/// How long `GatewayNetwork::warm_up` waits for every entry gateway to accept every
/// layer-1 node (gateways refresh their topology every 30 s once it has a layer 1).
pub const WARM_UP_MS_MAX: u64 = 45_000;
/// How long one warm-up round waits for its probes.
pub const PROBE_WAIT_MS: u64 = 2_000;

// A credential waiting its whole verification slot still gets its answer.
const _: () = assert!(GATEWAY_CREDIT_WAIT_MS > lethe_nodes::limits::ADMISSION_VERIFY_WAIT_MS);
// The report merges the sources' error texts: every one a source keeps fits.
const _: () = assert!(GATEWAY_ERRORS_MAX <= MERGE_ERRORS_MAX);
// A confirm batch fits in one `Confirm` message.
const _: () = assert!(RECEIVER_CONFIRM_BATCH_IDS <= lethe_proto::limits::CONFIRM_IDS_MAX);
// Warm-up outlasts a gateway's topology refresh and runs several probe rounds.
const _: () = assert!(WARM_UP_MS_MAX > 30_000 && PROBE_WAIT_MS < WARM_UP_MS_MAX);
const _: () = assert!(SENDER_QUEUE_BATCHES > 0 && RECEIVER_CONFIRM_INTERVAL_MS > 0);

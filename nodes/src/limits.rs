//! The bounds of the node front-ends in one place (connection and queue caps, byte limits,
//! timeouts that bound what a peer can hold), with the relations between them checked at
//! compile time. The engine's own limits are in `lethe_engine::limits`, the protocol's in
//! `lethe_proto::limits`.
//!
//! Names put units and qualifiers last (`request_bytes_max`), following TigerBeetle's style.

use lethe_engine::runtime::egress::UNREACHABLE_DROP_MS_DEFAULT;

// --- Egress to mixnodes (the gateway's tokio egress and both nodes' engine egress) ---

/// Frames written with one `write_all` by the gateway's egress.
pub const EGRESS_WRITE_BATCH_FRAMES: usize = 64;
pub const EGRESS_CONNECT_TIMEOUT_MS: u64 = 1_500;
pub const EGRESS_BACKOFF_MS_INITIAL: u64 = 100;
/// Short enough that a restarted next hop is reached again within one drop bound.
pub const EGRESS_BACKOFF_MS_MAX: u64 = 2_000;
/// io_uring submission queue entries per engine core.
pub const ENGINE_RING_DEPTH: usize = 128;

const _: () = assert!(EGRESS_BACKOFF_MS_INITIAL > 0);
const _: () = assert!(EGRESS_BACKOFF_MS_INITIAL <= EGRESS_BACKOFF_MS_MAX);
// A hop that comes back is retried before the frames waiting for it are dropped.
const _: () = assert!(EGRESS_BACKOFF_MS_MAX <= UNREACHABLE_DROP_MS_DEFAULT);
const _: () = assert!(EGRESS_CONNECT_TIMEOUT_MS <= UNREACHABLE_DROP_MS_DEFAULT);
const _: () = assert!(EGRESS_WRITE_BATCH_FRAMES > 0);

// --- Gateway ---

/// Confirms and registrations waiting for the mailbox writer (overflow counted).
pub const GATEWAY_COMMANDS_MAX: usize = 65_536;
/// Defaults of the `[gateway]` keys older configs lack (the template spells out the same
/// values). Handshaking connections: about 10 KiB each while they last, 10 MiB at the cap. At
/// the cap the oldest is closed, so an attacker has to open connections faster than an honest
/// handshake completes (a few round trips) to keep honest clients out, not merely hold slots
/// until the deadline.
pub const PENDING_CONNECTIONS_MAX_DEFAULT: u32 = 1024;
/// Enough for a few clients behind one NAT handshaking at the same moment.
pub const PENDING_CONNECTIONS_PER_IP_MAX_DEFAULT: u32 = 8;
/// About 50 bytes each in memory and on disk: 25 MB each at the cap.
pub const CLIENTS_MAX_DEFAULT: u32 = 500_000;
/// A month: a client offline for longer re-registers on its next connection; mail sent to it
/// meanwhile (while it has no record) is refused without an ACK, so senders retransmit.
pub const CLIENT_IDLE_DAYS_DEFAULT: u32 = 30;

const _: () = assert!(PENDING_CONNECTIONS_PER_IP_MAX_DEFAULT > 0);
const _: () = assert!(PENDING_CONNECTIONS_PER_IP_MAX_DEFAULT <= PENDING_CONNECTIONS_MAX_DEFAULT);
const _: () = assert!(CLIENT_IDLE_DAYS_DEFAULT > 0);

/// Credential verifications running at once (each takes milliseconds of CPU).
pub const ADMISSION_VERIFY_CONCURRENCY: usize = 2;
/// How long a credential waits for a verification slot before it is refused as overloaded.
pub const ADMISSION_VERIFY_WAIT_MS: u64 = 10_000;

const _: () = assert!(ADMISSION_VERIFY_CONCURRENCY > 0);

// --- Issuer ---

/// How long a stopping issuer waits for in-flight requests.
pub const ISSUER_SHUTDOWN_DEADLINE_MS: u64 = 10_000;
/// Source networks the issuer's rate limiter tracks at once (each entry is a few dozen bytes).
pub const RATE_LIMIT_SOURCES_MAX: usize = 65_536;
/// Issuer key files larger than this are not ours (keys are a few KiB).
pub const ISSUER_KEY_FILE_BYTES_MAX: u64 = 1 << 20;
/// The longest `Retry-After` an issuer client honours: a hostile issuer cannot park it longer.
pub const ISSUER_RETRY_AFTER_S_MAX: u64 = 300;
/// An issuer response read at most (a blind signature or a key set is a few KiB).
pub const ISSUER_RESPONSE_BYTES_MAX: usize = 64 * 1024;

const _: () = assert!(RATE_LIMIT_SOURCES_MAX > 0);

// --- Metrics and health endpoint (`http.rs`) ---

pub const HTTP_REQUEST_BYTES_MAX: usize = 8 * 1024;
/// Requests served at once; more are closed unanswered (counted nowhere: scrapers retry).
pub const HTTP_CONNECTIONS_MAX: usize = 16;
/// The whole request must arrive within this: a client that sends one byte a second holds one
/// slot for at most this long.
pub const HTTP_REQUEST_MS_MAX: u64 = 2_000;

const _: () = assert!(HTTP_CONNECTIONS_MAX > 0);

// --- Operator tools (`ops`) ---

/// Lines of `/proc/locks` or `/proc/net/tcp*` read at most: a bound on a file we do not control.
pub const PROC_LINES_MAX: usize = 1 << 20;
/// Descriptors of one process examined at most.
pub const PROC_FDS_MAX: usize = 1 << 20;
/// Live replay filters at most: a mixnode's two keys during a rotation's overlap; a gateway's
/// one. A rewrite adds a temporary copy of one filter.
pub const MIXNODE_REPLAY_FILTERS_MAX: u64 = 2;
pub const GATEWAY_REPLAY_FILTERS_MAX: u64 = 1;

const _: () = assert!(GATEWAY_REPLAY_FILTERS_MAX <= MIXNODE_REPLAY_FILTERS_MAX);

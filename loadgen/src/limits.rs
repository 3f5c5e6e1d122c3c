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
/// Seconds kept in the per-second series (a 24-byte summary each, allocated at the start);
/// later arrivals count in `series_overflow`.
pub const SERIES_SECONDS_MAX: usize = 3_600;
/// Seconds of arrival time with a latency histogram (13 KiB each) at once: receiver threads
/// record a moment out of arrival order, never seconds.
pub const SERIES_OPEN_SECONDS: usize = 4;
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
/// Reads of a node's RSS until the memory it states was the same before and after one (a key
/// rotation in between changes it; two in a row are hours apart).
pub const MEMORY_SAMPLE_TRIES: usize = 3;
const _: () = assert!(MEMORY_SAMPLE_TRIES > 0);

/// Packets per X25519 batch of the stand-in receiver.
pub const RECEIVER_BATCH_PACKETS: usize = 64;
/// How often an idle receiver connection looks again for bytes and for the end of the run.
pub const RECEIVER_POLL_MS: u64 = 20;
/// Least frames a sender's queue holds, whatever the rate (a queue smaller than one batch
/// would starve the sender).
pub const QUEUE_FRAMES_MIN: usize = 64;

/// Packets whose trace rows (`--trace`) loadgen keeps, of each kind (built, sent,
/// delivered): about 40 bytes each, so at most about 250 MiB in all; later ones are counted as
/// dropped.
pub const TRACE_PACKETS_MAX: usize = 1 << 21;

const _: () = assert!(SENDER_BATCH_FRAMES_MAX > 0 && RECEIVER_CONNECTIONS_MAX > 0);
const _: () = assert!(RECEIVER_BATCH_PACKETS > 0 && RECEIVER_POLL_MS > 0);
const _: () = assert!(QUEUE_FRAMES_MIN >= SENDER_BATCH_FRAMES_MAX);

// --- Command line (`cli`, `ramp`) ---

/// Sender threads (clients) of one run.
pub const CLIENTS_MAX: u32 = 256;
/// Mixnodes per layer and gateways of an embedded or spawned network.
pub const NODES_PER_LAYER_MAX: u32 = 8;
pub const GATEWAYS_MAX: u32 = 8;
/// The largest mean per-hop delay (`--mu`): the engine clamps each delay to 10 s anyway.
pub const MU_MS_MAX: f64 = 10_000.0;
/// Trials of one ramp step at most.
pub const RAMP_TRIALS_MAX: u32 = 15;
/// Pause between two ramp trials, so that the stragglers of one do not count in the next.
pub const RAMP_TRIAL_PAUSE_MS: u64 = 500;
/// How long the generator's throughput is measured before a run.
pub const CALIBRATE_MS: u64 = 300;

const _: () = assert!(CLIENTS_MAX > 0 && NODES_PER_LAYER_MAX > 0 && GATEWAYS_MAX > 0);
const _: () = assert!(RAMP_TRIALS_MAX > 0 && CALIBRATE_MS > 0);

// --- Runs (`run`, `driver`, `scrape`, `credentials`) ---

/// How long the generator may take to fill the queues before the clock starts.
pub const PREFILL_TIMEOUT_MS: u64 = 120_000;
/// How often the prefill and the drain look at their progress.
pub const PREFILL_POLL_MS: u64 = 5;
pub const DRAIN_POLL_MS: u64 = 10;
/// Frames not handed to the kernel this long after the last due time are abandoned.
pub const GIVE_UP_AFTER_END_MS: u64 = 2_000;
/// Period of the progress line, the live view and waits for the start time.
pub const PROGRESS_TICK_MS: u64 = 100;
/// With `--start-at`, the senders connect and the queues fill this long before the start:
/// earlier, the connections could sit idle long enough for the nodes to close them (a
/// mixnode closes an idle ingress connection after 5 minutes); later, the prefill could
/// overrun the start.
pub const START_PREPARE_MS: u64 = 60_000;
/// How long a spawned node may take to print its addresses, and to accept a connection.
pub const NODE_START_TIMEOUT_MS: u64 = 30_000;
/// A write to a node that blocks this long fails the run.
pub const NODE_WRITE_TIMEOUT_MS: u64 = 10_000;
/// Lines of a spawned node's output queued for the driver (it reads them at once).
pub const NODE_OUTPUT_LINES_QUEUED: usize = 16;
/// Connect, request and answer of one metrics scrape.
pub const SCRAPE_TIMEOUT_MS: u64 = 5_000;
/// Per-request timeout towards an issuer.
pub const ISSUER_REQUEST_TIMEOUT_MS: u64 = 10_000;
/// Attempts per credential (an issuer may rate-limit a burst: 429), with pauses doubling from
/// the first.
pub const OBTAIN_ATTEMPTS: u32 = 3;
pub const OBTAIN_RETRY_PAUSE_MS_INITIAL: u64 = 500;

const _: () = assert!(PREFILL_POLL_MS > 0 && DRAIN_POLL_MS > 0 && PROGRESS_TICK_MS > 0);
// The senders are ready before the start: the prefill fits in the preparation time.
const _: () = assert!(PREFILL_TIMEOUT_MS >= START_PREPARE_MS);
const _: () = assert!(OBTAIN_ATTEMPTS > 0 && OBTAIN_RETRY_PAUSE_MS_INITIAL > 0);
const _: () = assert!(OBTAIN_CONCURRENCY > 0 && MERGE_SOURCES_MAX > 0);
const _: () = assert!(SERIES_OPEN_SECONDS >= 2 && SERIES_OPEN_SECONDS <= SERIES_SECONDS_MAX);
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
/// How long one warm-up round waits for its probes...
pub const PROBE_WAIT_MS: u64 = 2_000;
/// ...looking this often whether they all arrived...
pub const PROBE_POLL_MS: u64 = 10;
/// ...and the pause before the next round.
pub const WARM_UP_ROUND_PAUSE_MS: u64 = 500;
/// A sender whose session queue is full looks again this soon.
pub const SENDER_QUEUE_POLL_US: u64 = 200;
/// At the end of a run, how many confirm intervals to wait for the receivers' last
/// confirmations, and how often to look.
pub const CONFIRM_WAIT_INTERVALS: u32 = 10;
pub const CONFIRM_POLL_MS: u64 = 5;

// A credential waiting its whole verification slot still gets its answer.
const _: () = assert!(GATEWAY_CREDIT_WAIT_MS > lethe_nodes::limits::ADMISSION_VERIFY_WAIT_MS);
// The report merges the sources' error texts: every one a source keeps fits.
const _: () = assert!(GATEWAY_ERRORS_MAX <= MERGE_ERRORS_MAX);
// A confirm batch fits in one `Confirm` message.
const _: () = assert!(RECEIVER_CONFIRM_BATCH_IDS <= lethe_proto::limits::CONFIRM_IDS_MAX);
// Warm-up outlasts a gateway's topology refresh and runs several probe rounds.
const _: () = assert!(WARM_UP_MS_MAX > 30_000 && PROBE_WAIT_MS < WARM_UP_MS_MAX);
const _: () = assert!(SENDER_QUEUE_BATCHES > 0 && RECEIVER_CONFIRM_INTERVAL_MS > 0);
const _: () = assert!(PROBE_POLL_MS > 0 && PROBE_POLL_MS < PROBE_WAIT_MS);
const _: () =
    assert!(SENDER_QUEUE_POLL_US > 0 && SENDER_QUEUE_POLL_US < SENDER_QUEUE_WAIT_MS_MAX * 1_000);
// The last confirmations get at least one full interval, looked at several times in it.
const _: () = assert!(CONFIRM_WAIT_INTERVALS > 1);
const _: () = assert!(CONFIRM_POLL_MS > 0 && CONFIRM_POLL_MS < RECEIVER_CONFIRM_INTERVAL_MS);

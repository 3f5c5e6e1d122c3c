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

// --- Every node process ---

/// How often a node's background threads (the main loop waiting for a signal, key rotation,
/// replay snapshots) look at their stop flag: the delay a shutdown may wait for each.
pub const STOP_POLL_MS: u64 = 100;
/// How long a stopping node gives its tokio runtime's remaining tasks.
pub const TOKIO_SHUTDOWN_MS: u64 = 1_000;
/// How long an SQLite statement waits for another connection's lock (mailbox writer and
/// readers, credential store, directory store) before it fails.
pub const SQLITE_BUSY_TIMEOUT_MS: u64 = 5_000;
/// Pause after a failed `accept` (out of descriptors, say) before the next one: the listener
/// does not spin while the condition lasts.
pub const ACCEPT_RETRY_MS: u64 = 10;
/// Read buffer of `lethe sink`'s connections (one large read holds many frames).
pub const SINK_READ_BUFFER_BYTES: usize = 64 * 1024;

/// A node whose engine core has not turned for this long exits (status 70) for its supervisor
/// to restart it: a stalled core holds its connections and reads nothing, and heartbeats
/// paused for this long have taken the node out of the network anyway.
pub const ENGINE_STALL_EXIT_MS: u64 = 60_000;
/// Threads listed in the snapshot logged when a core stalls (a node runs a few dozen).
pub const STALL_SNAPSHOT_THREADS_MAX: usize = 128;
// Well past the engine's own stall threshold and the directory's heartbeat timeout.
const _: () =
    assert!(ENGINE_STALL_EXIT_MS >= 10 * lethe_engine::runtime::liveness::STALL_US / 1_000);
const _: () = assert!(STOP_POLL_MS > 0 && ACCEPT_RETRY_MS > 0);
// A stop flag is looked at several times within a runtime's shutdown allowance.
const _: () = assert!(STOP_POLL_MS < TOKIO_SHUTDOWN_MS);
const _: () = assert!(SINK_READ_BUFFER_BYTES >= lethe_engine::limits::PACKET_BYTES_MAX as usize);

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

/// Issuers one `lethe issuer keygen` may create.
pub const ISSUERS_MAX: usize = 1_000;
/// Pauses between two requests to one issuer without `Retry-After`: the first, doubling up
/// to the max.
pub const ISSUER_RETRY_PAUSE_MS_INITIAL: u64 = 500;
pub const ISSUER_RETRY_PAUSE_MS_MAX: u64 = 8_000;
/// One issuer request (connect, send, answer) when obtaining a credential at `client init`.
pub const ISSUER_REQUEST_TIMEOUT_MS: u64 = 10_000;
/// Bytes of an issuer's error body quoted in our error text.
pub const ISSUER_ERROR_TEXT_BYTES_MAX: usize = 200;
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

const _: () = assert!(RATE_LIMIT_SOURCES_MAX > 0 && ISSUERS_MAX > 0);
const _: () = assert!(ISSUER_RETRY_PAUSE_MS_INITIAL > 0);
const _: () = assert!(ISSUER_RETRY_PAUSE_MS_INITIAL <= ISSUER_RETRY_PAUSE_MS_MAX);
// No pause of ours outlasts the longest `Retry-After` we honour from an issuer.
const _: () = assert!(ISSUER_RETRY_PAUSE_MS_MAX <= ISSUER_RETRY_AFTER_S_MAX * 1_000);

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

// --- Gateway sessions (`gateway::sessions`, `gateway::registration`) ---

/// Live deliveries queued per session before the session falls back to the mailbox (a
/// delivery is at most one ext32 payload: 64 × 32 KiB = 2 MiB per session at worst).
pub const GATEWAY_SESSION_QUEUE_MAX: usize = 64;
/// How long a new session waits for the mailbox writer to take its registration.
pub const GATEWAY_REGISTER_TIMEOUT_MS: u64 = 10_000;
/// The most bytes of HTTP upgrade request a client may send (tungstenite alone would buffer
/// 64 KiB): tungstenite's client sends about 250, browsers under 2 KiB.
pub const GATEWAY_UPGRADE_REQUEST_BYTES_MAX: usize = 4096;
/// The largest WebSocket frame payload accepted before auth: just above the client hello
/// (85 bytes) and auth (65); control frames are at most 125 bytes anyway.
pub const GATEWAY_PENDING_FRAME_BYTES_MAX: u64 = 128;
/// Frame bytes (headers included) accepted before auth: the two handshake messages take 162;
/// the rest leaves room for a few pings or a fragmented hello.
pub const GATEWAY_PENDING_FRAMES_BYTES_MAX: usize = 1024;
/// tungstenite's read buffer per connection, allocated at the upgrade and touched by the
/// first read. Its default, 128 KiB, would make every silent WebSocket cost that much; 4 KiB
/// still reads a regular sealed packet (about 2.1 KiB) in one call, and larger frames grow the
/// buffer as they arrive (an authenticated client's frames up to
/// [`WS_MESSAGE_BYTES_MAX`](crate::proto::WS_MESSAGE_BYTES_MAX)).
pub const GATEWAY_WS_READ_BUFFER_BYTES: usize = 4096;
/// Freed memory is handed back to the OS (`malloc_trim`) once at least this many pending
/// connections were open at once and three quarters of them have closed...
pub const GATEWAY_TRIM_PENDING_MIN: usize = 256;
/// ...at most this often.
pub const GATEWAY_TRIM_INTERVAL_MS: u64 = 1_000;
/// Topology retry while the topology is missing or has no layer 1 (a network still forming).
pub const GATEWAY_TOPOLOGY_RETRY_MS: u64 = 1_000;
/// A fetch asked for by a client's unknown first hop comes at least this long after the last
/// fetch: clients cannot make the gateway hammer its authorities.
pub const GATEWAY_TOPOLOGY_REFETCH_MS_MIN: u64 = 1_000;
const _: () = assert!(
    GATEWAY_TOPOLOGY_REFETCH_MS_MIN >= 100
        && GATEWAY_TOPOLOGY_REFETCH_MS_MIN
            < crate::gateway::registration::TOPOLOGY_REFRESH.as_millis() as u64
);

const _: () = assert!(
    crate::proto::handshake::CLIENT_HELLO_LEN as u64 <= GATEWAY_PENDING_FRAME_BYTES_MAX
        && crate::proto::handshake::CLIENT_AUTH_LEN as u64 <= GATEWAY_PENDING_FRAME_BYTES_MAX
);
// Both handshake messages (with their frame headers) fit the pre-auth byte budget.
const _: () = assert!(
    2 * (GATEWAY_PENDING_FRAME_BYTES_MAX as usize + 14) <= GATEWAY_PENDING_FRAMES_BYTES_MAX
);
// The upgrade request is read into the first read buffer.
const _: () = assert!(GATEWAY_UPGRADE_REQUEST_BYTES_MAX <= GATEWAY_WS_READ_BUFFER_BYTES);
const _: () = assert!(GATEWAY_SESSION_QUEUE_MAX > 0 && GATEWAY_TRIM_INTERVAL_MS > 0);

// --- Gateway mailbox (`gateway::mailbox`) ---

/// The mailbox writer's longest wait for work while nothing is pending (then it looks at
/// its stop flag and the cleaning schedule).
pub const MAILBOX_IDLE_WAIT_MS: u64 = 50;
/// Pause of the mailbox writer once a sender side has gone (shutdown in progress), so that
/// it does not spin on the closed channel while draining the other.
pub const MAILBOX_CLOSED_PAUSE_MS: u64 = 1;
/// A batch is committed when it is this old...
pub const MAILBOX_FLUSH_MS: u64 = 3;
/// ...or this large.
pub const MAILBOX_FLUSH_ROWS: usize = 256;
/// Mailbox rows one client may hold; deliveries beyond are dropped (counted, no ACK sent).
pub const MAILBOX_ROWS_PER_CLIENT_MAX: u32 = 20_000;
/// The most rows one backlog read returns (Nym: 100).
pub const MAILBOX_FETCH_ROWS_MAX: u32 = 100;
/// How often expired rows are deleted (also at start).
pub const MAILBOX_CLEAN_INTERVAL_S: u64 = 3_600;
/// Read connections for sessions.
pub const MAILBOX_READERS: usize = 4;
/// Clients known from a handshake but without a durable record, kept in memory (the newest;
/// about 100 bytes each).
pub const MAILBOX_RECENT_CLIENTS_MAX: usize = 65_536;
/// A durable client's `seen_at` is rewritten at most this often (it only has to be accurate
/// to within a fraction of `client_idle_days`).
pub const MAILBOX_SEEN_RESOLUTION_S: i64 = 86_400;

const _: () = assert!(MAILBOX_FLUSH_ROWS > 0 && MAILBOX_READERS > 0);
const _: () =
    assert!(MAILBOX_CLOSED_PAUSE_MS > 0 && MAILBOX_CLOSED_PAUSE_MS <= MAILBOX_IDLE_WAIT_MS);
// One backlog read fits in a session's live queue's worth of rows and below a client's cap.
const _: () =
    assert!(MAILBOX_FETCH_ROWS_MAX > 0 && MAILBOX_FETCH_ROWS_MAX <= MAILBOX_ROWS_PER_CLIENT_MAX);
// `seen_at` stays accurate to a fraction of the shortest idle expiry.
const _: () = assert!(MAILBOX_SEEN_RESOLUTION_S < CLIENT_IDLE_DAYS_DEFAULT as i64 * 86_400);

// --- Client runtime (`client::runtime`) ---

/// Commands from the handle (send, reply, stop) waiting for the runtime: a caller that sends
/// faster waits for room.
pub const CLIENT_COMMAND_CAPACITY: usize = 64;
/// Sealed messages waiting for the gateway connection.
pub const CLIENT_OUTGOING_CAPACITY: usize = 1024;
/// Unpaced mode: most packets in the outgoing channel at once (the rest leaves room for
/// confirmations, and keeps ACK timers from starting long before the packet leaves).
pub const CLIENT_UNPACED_WINDOW: usize = 64;
/// Received messages and delivery reports waiting for the application.
pub const CLIENT_EVENT_CAPACITY: usize = 1024;
/// Delivery ids waiting to be confirmed to the gateway.
pub const CLIENT_CONFIRM_CAPACITY: usize = 1024;
/// Connect, handshake and welcome with the gateway.
pub const CLIENT_CONNECT_TIMEOUT_MS: u64 = 10_000;
/// Reconnect backoff: first delay, doubling up to the max (a restarted gateway is found
/// within half a minute, without hammering one that is down).
pub const CLIENT_BACKOFF_MS_MIN: u64 = 200;
pub const CLIENT_BACKOFF_MS_MAX: u64 = 30_000;
/// Least time between two topology fetches.
pub const CLIENT_TOPOLOGY_RETRY_MS: u64 = 10_000;
/// Received messages waiting for the application (the default of `ClientConfig`).
pub const CLIENT_RECEIVED_CAPACITY: usize = 64;
/// Unpaced mode: most packets moved to the connection in one turn of the runtime's loop
/// before it looks at its other inputs again.
pub const CLIENT_UNPACED_BURST_PACKETS: usize = 256;
/// How long `client init` waits for its first session (it registers the client with the
/// gateway so that mail is kept while the client is offline).
pub const CLIENT_REGISTER_WAIT_MS: u64 = 15_000;
/// How long a command-line client (send, receive, socks5, provider) gives its client library
/// to stop: write out what is queued and close the session cleanly.
pub const CLIENT_SHUTDOWN_MS: u64 = 2_000;
/// `client receive` waits this long after its last message before stopping, so that its
/// confirmations reach the gateway (an unconfirmed message is delivered again).
pub const CLIENT_CONFIRM_LINGER_MS: u64 = 100;
/// How often the runtime lets the core expire its records (the core's own period is
/// `lethe_proto::limits::CLIENT_HOUSEKEEPING_US`).
pub const CLIENT_HOUSEKEEPING_MS: u64 = 1_000;

const _: () = assert!(CLIENT_UNPACED_WINDOW < CLIENT_OUTGOING_CAPACITY);
const _: () = assert!(CLIENT_BACKOFF_MS_MIN > 0 && CLIENT_BACKOFF_MS_MIN <= CLIENT_BACKOFF_MS_MAX);
const _: () = assert!(CLIENT_COMMAND_CAPACITY > 0 && CLIENT_EVENT_CAPACITY > 0);
const _: () = assert!(CLIENT_CONFIRM_CAPACITY > 0 && CLIENT_HOUSEKEEPING_MS > 0);
const _: () = assert!(CLIENT_RECEIVED_CAPACITY > 0 && CLIENT_UNPACED_BURST_PACKETS > 0);
// The first session includes the connect, handshake and welcome.
const _: () = assert!(CLIENT_CONNECT_TIMEOUT_MS <= CLIENT_REGISTER_WAIT_MS);
const _: () = assert!(CLIENT_CONFIRM_LINGER_MS < CLIENT_SHUTDOWN_MS);
const _: () =
    assert!(CLIENT_HOUSEKEEPING_MS * 1_000 == lethe_proto::limits::CLIENT_HOUSEKEEPING_US);

// --- SOCKS5 proxy and provider (`socks`) ---

/// Messages queued between a relay and the client library, each way.
pub const SOCKS_PORT_QUEUE_MESSAGES: usize = 1024;
/// How long `lethe socks5` waits for its client library to connect to the gateway.
pub const SOCKS_CLIENT_CONNECT_TIMEOUT_MS: u64 = 30_000;
/// Longest target (`host:port`) in a Connect: a DNS name is at most 255 bytes.
pub const SOCKS_TARGET_BYTES_MAX: usize = 300;
/// Most bytes of one Data message (what one read from a socket may put in a message).
pub const SOCKS_DATA_BYTES_MAX: usize = 64 * 1024;
/// How long the provider waits for the target's TCP connect.
pub const SOCKS_PROVIDER_CONNECT_TIMEOUT_MS: u64 = 10_000;
/// How long the provider has to answer a Connect (mixnet round trip plus its connect).
pub const SOCKS_PROXY_CONNECT_TIMEOUT_MS: u64 = 60_000;
/// Bytes read from a socket into one Data message: large enough for throughput, small enough
/// that a message is a handful of Sphinx packets.
pub const SOCKS_READ_CHUNK_BYTES: usize = 16 * 1024;
/// Per-connection reorder buffer bound.
pub const SOCKS_REORDER_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Chunks queued towards one local socket.
pub const SOCKS_SOCKET_QUEUE_CHUNKS: usize = 256;
/// Relayed connections alive at once, per proxy or provider.
pub const SOCKS_CONNECTIONS_MAX: usize = 1024;
/// Reply SURBs a Connect carries: the provider asks for more as it replies.
pub const SOCKS_SURBS_WITH_CONNECT: usize = 32;
/// Bytes the provider reads from a target into one Data response: what one SURB carries.
pub const SOCKS_PROVIDER_READ_BYTES: usize =
    crate::service::RESPONSE_BODY_BYTES_MAX - crate::socks::protocol::CHUNK_HEADER_BYTES;
/// The first relay protocol's Connect carried the proxy's address; read at most this much of
/// it, only to tell an old proxy to upgrade.
pub const SOCKS_LEGACY_REPLY_TO_BYTES_MAX: usize = 300;

// A chunk read from a socket fits one Data message, and the reorder buffer holds many.
const _: () = assert!(SOCKS_READ_CHUNK_BYTES <= SOCKS_DATA_BYTES_MAX);
const _: () = assert!(SOCKS_REORDER_BYTES_MAX >= 16 * SOCKS_DATA_BYTES_MAX);
// The proxy waits longer than the provider's own connect takes.
const _: () = assert!(SOCKS_PROVIDER_CONNECT_TIMEOUT_MS < SOCKS_PROXY_CONNECT_TIMEOUT_MS);
const _: () = assert!(SOCKS_SOCKET_QUEUE_CHUNKS > 0 && SOCKS_CONNECTIONS_MAX > 0);
// A Connect's SURBs are within what the provider keeps for one tag, and one ask's worth
// arrives before the Connect's run out.
const _: () = assert!(SOCKS_SURBS_WITH_CONNECT > 0);
const _: () = assert!(SOCKS_SURBS_WITH_CONNECT <= lethe_proto::limits::SERVICE_TAG_SURBS_MAX);
// A read from the target leaves room in the Data message and fits one SURB's response.
const _: () = assert!(SOCKS_PROVIDER_READ_BYTES > 0);
const _: () = assert!(SOCKS_PROVIDER_READ_BYTES <= SOCKS_DATA_BYTES_MAX);
// The old Connect's address is read within the same bound the envelope puts on it.
const _: () =
    assert!(SOCKS_LEGACY_REPLY_TO_BYTES_MAX <= lethe_proto::limits::SERVICE_REPLY_TO_BYTES_MAX);

/// After the topology shows every mixnode on a newer key rotation, how long the proxy waits
/// before labelling SURBs with it and sending replacements: its client core takes the new
/// topology from the same watch meanwhile, so no SURB built with old keys gets the new label.
pub const SOCKS_KEY_EPOCH_SETTLE_MS: u64 = 1_000;
/// The longest a relayed download pauses waiting for reply SURBs (a liveness bound, checked
/// by `nodes/tests/socks_download.rs`): the provider asks for a window of SURBs in
/// proportion to its reply rate before it runs out, a lost ask (or answer) is repeated after
/// at most `SERVICE_ASK_RETRY_US_MAX`, and its answer takes one more round trip; SURBs of a
/// rotated-out key are replaced while the nodes still hold the old key (the overlap).
pub const SOCKS_SURB_STALL_MS_MAX: u64 = 30_000;

const _: () =
    assert!(SOCKS_SURB_STALL_MS_MAX >= 2 * lethe_proto::limits::SERVICE_ASK_RETRY_US_MAX / 1_000);
const _: () = assert!(SOCKS_KEY_EPOCH_SETTLE_MS < SOCKS_SURB_STALL_MS_MAX);

// --- Service providers (`service`) ---

/// How long a response waits for its tag's SURBs before it is given up (counted stalled): a
/// few ask retries (`lethe_proto::limits::SERVICE_ASK_RETRY_US_MAX`) and their mixnet round
/// trips, and longer than the longest stall.
pub const SERVICE_SURB_WAIT_MS: u64 = 60_000;
/// While waiting for SURBs, how often to look again whether to repeat an ask.
pub const SERVICE_SURB_WAIT_TICK_MS: u64 = 1_000;

const _: () = assert!(SERVICE_SURB_WAIT_TICK_MS > 0);
const _: () = assert!(SERVICE_SURB_WAIT_TICK_MS < SERVICE_SURB_WAIT_MS);
// At least one repeated ask happens before a response is given up.
const _: () = assert!(SERVICE_SURB_WAIT_MS * 1_000 > lethe_proto::limits::SERVICE_ASK_RETRY_US_MAX);
const _: () = assert!(SERVICE_SURB_WAIT_MS > SOCKS_SURB_STALL_MS_MAX);
// The tick is finer than the ask retry, so a retry is not late by more than a tick.
const _: () =
    assert!(SERVICE_SURB_WAIT_TICK_MS * 1_000 <= lethe_proto::limits::SERVICE_ASK_RETRY_US_MIN);
/// How often a provider looks for lost responses to resend (overtaken ones are due at once:
/// the tick only adds to the time a resend takes).
pub const SERVICE_RESEND_TICK_MS: u64 = 100;
/// How often the SOCKS proxy looks whether an acknowledgement is due.
pub const SOCKS_ACK_TICK_MS: u64 = 50;

// Both ticks are fine against what they serve: the resend timeout, the acknowledgement delay.
const _: () = assert!(SERVICE_RESEND_TICK_MS > 0 && SOCKS_ACK_TICK_MS > 0);
const _: () =
    assert!(SERVICE_RESEND_TICK_MS * 1_000 * 10 <= lethe_proto::limits::SERVICE_RESEND_AFTER_US);
const _: () = assert!(SOCKS_ACK_TICK_MS * 1_000 * 2 <= lethe_proto::limits::SERVICE_ACK_DELAY_US);

// --- Directory: registration of nodes (`directory::announce`) ---

/// First retry delay after a failed registration; doubles up to the max.
pub const ANNOUNCE_BACKOFF_MS_INITIAL: u64 = 250;
pub const ANNOUNCE_BACKOFF_MS_MAX: u64 = 30_000;
/// Heartbeat interval nodes use by default (the directory drops a node after 30 s).
pub const HEARTBEAT_INTERVAL_MS_DEFAULT: u64 = 10_000;
/// Shortest heartbeat interval a node uses, whatever it is configured with (tests shorten
/// it; a directory is not to be hammered).
pub const HEARTBEAT_INTERVAL_MS_MIN: u64 = 100;
/// The directory's heartbeat timeout assumed when its registration answer does not name one
/// (directories before `heartbeat_timeout_s` was in the answer): its default.
pub const HEARTBEAT_TIMEOUT_S_ASSUMED: u64 = 30;
/// Longest a stopping node waits for the directory to confirm its deregistration: a
/// directory that does not answer must not hold the shutdown up (it drops the node after its
/// heartbeat timeout anyway).
pub const DEREGISTER_TIMEOUT_MS: u64 = 2_000;

const _: () = assert!(ANNOUNCE_BACKOFF_MS_INITIAL > 0);
const _: () = assert!(ANNOUNCE_BACKOFF_MS_INITIAL <= ANNOUNCE_BACKOFF_MS_MAX);
const _: () = assert!(HEARTBEAT_INTERVAL_MS_MIN > 0);
const _: () = assert!(HEARTBEAT_INTERVAL_MS_MIN <= HEARTBEAT_INTERVAL_MS_DEFAULT);
// At least two heartbeats fit in the directory's timeout: one lost heartbeat is not a departure.
const _: () = assert!(2 * HEARTBEAT_INTERVAL_MS_DEFAULT < HEARTBEAT_TIMEOUT_S_ASSUMED * 1_000);

// --- Directory: client and server (`directory::{client, registry, server}`) ---

/// Largest response body read from a directory.
pub const DIRECTORY_RESPONSE_BYTES_MAX: usize = crate::topology::SIGNED_BODY_BYTES_MAX + 4096;
/// Per-request timeout.
pub const DIRECTORY_REQUEST_TIMEOUT_MS: u64 = 5_000;
/// Bytes of a directory's error body quoted in our error text.
pub const DIRECTORY_ERROR_TEXT_BYTES_MAX: usize = 512;
/// The directory looks for silent nodes four times per heartbeat timeout, within these
/// bounds.
pub const DIRECTORY_SWEEP_MS_MIN: u64 = 100;
pub const DIRECTORY_SWEEP_MS_MAX: u64 = 1_000;
/// Most nodes (mixnodes and gateways) the directory keeps.
pub const DIRECTORY_NODES_MAX: usize = 1024;
/// Most deregistrations remembered (see `Registry::deregister`); beyond it the oldest is
/// forgotten first. Each needs a registered node's signature, so only as many as nodes
/// can leave within the clock skew.
pub const DIRECTORY_DEPARTURES_MAX: usize = DIRECTORY_NODES_MAX;
/// Longest URL accepted in a descriptor (bounds the topology: see `DIRECTORY_NODES_MAX`).
pub const DIRECTORY_URL_BYTES_MAX: usize = 200;
/// Largest request body accepted (a descriptor is under 1 KiB).
pub const DIRECTORY_REQUEST_BODY_BYTES_MAX: usize = 16 * 1024;
/// Least time between two publications triggered by membership changes.
pub const DIRECTORY_PUBLISH_INTERVAL_MS_MIN: u64 = 1_000;
/// A topology stays valid for this many epoch lengths.
pub const DIRECTORY_VALIDITY_EPOCHS: u64 = 3;
/// Voting authorities keep the layers this long between full redraws, by default
/// (`--layer-period-s`, stated in each vote in whole epochs rounded up; the consensus takes
/// the median). Nym reassigns layers each 1-h epoch; with the testnet's 5-s epochs it is
/// 720 epochs, so a test's transfer does not see a reshuffle.
pub const LAYER_PERIOD_S_DEFAULT: u64 = 3600;
/// The longest layer period an authority accepts (`--layer-period-s`): a day.
pub const LAYER_PERIOD_S_MAX: u64 = 86_400;
/// How long a stopping directory waits for in-flight requests.
pub const DIRECTORY_SHUTDOWN_DEADLINE_MS: u64 = 10_000;
/// POST rate limits: per source IP (a local testnet registers every node from one IP) and
/// overall.
pub const DIRECTORY_POSTS_PER_S_PER_IP: f64 = 100.0;
pub const DIRECTORY_POSTS_BURST_PER_IP: f64 = 2048.0;
pub const DIRECTORY_POSTS_PER_S: f64 = 1000.0;
pub const DIRECTORY_POSTS_BURST: f64 = 4096.0;

// A full topology (every node with two URLs of the longest kind) fits the signed body.
const _: () = assert!(
    DIRECTORY_NODES_MAX * (2 * DIRECTORY_URL_BYTES_MAX + 600)
        <= crate::topology::SIGNED_BODY_BYTES_MAX
);
// Every node of a local testnet can register at once.
const _: () = assert!(DIRECTORY_POSTS_BURST_PER_IP >= DIRECTORY_NODES_MAX as f64);
const _: () = assert!(DIRECTORY_POSTS_PER_S_PER_IP <= DIRECTORY_POSTS_PER_S);
const _: () = assert!(DIRECTORY_VALIDITY_EPOCHS >= 2 && DIRECTORY_PUBLISH_INTERVAL_MS_MIN > 0);
const _: () = assert!(LAYER_PERIOD_S_DEFAULT >= 1 && LAYER_PERIOD_S_DEFAULT <= LAYER_PERIOD_S_MAX);
const _: () =
    assert!(DIRECTORY_SWEEP_MS_MIN > 0 && DIRECTORY_SWEEP_MS_MIN <= DIRECTORY_SWEEP_MS_MAX);

// --- Directory authorities as verifiers pin them (`topology::AuthoritySet`) ---

/// Most authorities a verifier pins (n = 3f+1 with f = 4). Bounds the signature checks one
/// document costs: each pinned key is tried at most once.
pub const AUTHORITIES_MAX: usize = 13;
/// Bytes one authority's signature entry takes in a consensus document, at most (64-hex key,
/// 128-hex signature, field names).
pub const AUTHORITY_SIGNATURE_BYTES_MAX: usize = 256;

/// How long a verifier keeps using its last valid document after it expired, when no new
/// one verifies (authorities down, or not enough of them agreeing): the network keeps
/// carrying traffic through an outage of the authorities this long (Tor: 24 h past expiry;
/// an hour here, as departed nodes stay in a held document). Said in logs and metrics.
pub const CONSENSUS_GRACE_S: u64 = 3_600;

/// When consumers fetch the next document, after it is due, in thousandths of the epoch
/// (`topology::refetch_in`): gateways first, since they check their clients' first hops
/// against theirs; clients and loadgen later. Gateways hold their previous document too, so
/// a client behind its gateway loses nothing.
pub const CONSENSUS_FETCH_LAG_GATEWAY_PERMILLE: u64 = 100;
pub const CONSENSUS_FETCH_LAG_CLIENT_PERMILLE: u64 = 400;
/// Least time between two fetches of a document that is late.
pub const CONSENSUS_REFETCH_MS_MIN: u64 = 100;

const _: () = assert!(AUTHORITIES_MAX >= 1);
const _: () = assert!(CONSENSUS_GRACE_S > 0);
const _: () = assert!(
    CONSENSUS_FETCH_LAG_GATEWAY_PERMILLE < CONSENSUS_FETCH_LAG_CLIENT_PERMILLE
        && CONSENSUS_FETCH_LAG_CLIENT_PERMILLE < 500
        && CONSENSUS_REFETCH_MS_MIN > 0
);
// Every pinned authority's signature fits the response beside the largest body.
const _: () = assert!(
    AUTHORITIES_MAX * AUTHORITY_SIGNATURE_BYTES_MAX
        <= DIRECTORY_RESPONSE_BYTES_MAX - crate::topology::SIGNED_BODY_BYTES_MAX
);
// --- Voting authorities (`authority::{exchange, round, vote}`) ---

/// Largest vote body (JSON text): every node's descriptor, as a full topology, the
/// authority's allow-list, and the vote's own fields.
pub const AUTHORITY_VOTE_BYTES_MAX: usize = crate::topology::SIGNED_BODY_BYTES_MAX
    + DIRECTORY_ALLOWED_NODES_MAX * DIRECTORY_ALLOWED_NODE_BYTES
    + 4096;
/// Largest vote or signature request (the body travels as a JSON string, escaped).
pub const AUTHORITY_REQUEST_BYTES_MAX: usize = 2 * AUTHORITY_VOTE_BYTES_MAX + 4096;
/// Largest `GET /v1/votes` response read from a peer: every authority's vote, twice for
/// equivocators.
pub const AUTHORITY_VOTES_RESPONSE_BYTES_MAX: usize =
    2 * AUTHORITIES_MAX * AUTHORITY_REQUEST_BYTES_MAX;
/// Bounds of the exchange's tick (an epoch's twentieth otherwise): how often votes and
/// signatures are pushed until acknowledged and votes pulled.
pub const AUTHORITY_TICK_MS_MIN: u64 = 50;
pub const AUTHORITY_TICK_MS_MAX: u64 = 500;

const _: () = assert!(AUTHORITY_VOTE_BYTES_MAX > crate::topology::SIGNED_BODY_BYTES_MAX);
const _: () = assert!(AUTHORITY_REQUEST_BYTES_MAX > 2 * AUTHORITY_VOTE_BYTES_MAX);
const _: () = assert!(AUTHORITY_TICK_MS_MIN > 0 && AUTHORITY_TICK_MS_MIN <= AUTHORITY_TICK_MS_MAX);
// A tick leaves several rounds of pushes within the vote half of the shortest epoch (1 s).
const _: () = assert!(AUTHORITY_TICK_MS_MIN * 4 <= 500);

// --- Directory admission (`directory::admission`) ---

/// Nodes whose mix address has one IP, by default (Tor: 2 relays per IP). A testnet on
/// loopback raises it.
pub const DIRECTORY_NODES_PER_IP_MAX_DEFAULT: usize = 2;
/// Nodes registered from one source IP, by default: an operator's few nodes behind one NAT,
/// far below the directory's total, so one address cannot fill it.
pub const DIRECTORY_NODES_PER_SOURCE_MAX_DEFAULT: usize = 8;
/// Longest operator family name in a descriptor.
pub const DIRECTORY_FAMILY_BYTES_MAX: usize = 64;
/// Most identities on an allow-list (`--allowed-nodes`): an authority's vote carries its
/// whole list, so that every authority checks nodes against the list the votes agree on.
/// Room for operators to list more nodes than run at once.
pub const DIRECTORY_ALLOWED_NODES_MAX: usize = 4 * DIRECTORY_NODES_MAX;
/// Bytes one allow-list entry takes in a vote's JSON (64 hex digits, quotes, a comma).
pub const DIRECTORY_ALLOWED_NODE_BYTES: usize = 67;

const _: () = assert!(DIRECTORY_NODES_PER_IP_MAX_DEFAULT > 0);
const _: () = assert!(DIRECTORY_NODES_PER_SOURCE_MAX_DEFAULT > 0);
// A flood from one source never fills the directory: honest nodes keep room.
const _: () = assert!(DIRECTORY_NODES_PER_SOURCE_MAX_DEFAULT * 4 <= DIRECTORY_NODES_MAX);
const _: () = assert!(DIRECTORY_FAMILY_BYTES_MAX > 0);
// An allow-list can name every node the directory holds.
const _: () = assert!(DIRECTORY_ALLOWED_NODES_MAX >= DIRECTORY_NODES_MAX);

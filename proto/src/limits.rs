//! Every bound of the protocol cores in one place, checked against each other at compile time.

use lethe_crypto::framing::PacketSize;

/// The largest WebSocket message either side accepts (an ext32 packet plus headers).
pub const WS_MESSAGE_BYTES_MAX: usize = 64 * 1024;
/// Most delivery ids one `Confirm` carries.
pub const CONFIRM_IDS_MAX: usize = 1024;
/// Sealed messages a session holds for its driver before it refuses more: the driver drains
/// them after every call, so only a peer that stops reading fills them.
pub const SESSION_TRANSMITS_MAX: usize = 256;
/// Events a session holds for its driver (one per incoming message at most, so a driver that
/// drains after every call never sees more than a few).
pub const SESSION_EVENTS_MAX: usize = 256;
/// Messages a client may pipeline after its auth, before the gateway opened its session.
pub const EARLY_MESSAGES_MAX: usize = 16;
/// A metered session writes its charges through after this many bytes (and when it ends), so
/// a crash loses at most this much metering per session.
pub const FLUSH_EVERY_BYTES: u64 = 1 << 20;
/// The longest `Error` text a session sends; longer texts are cut (at a UTF-8 boundary).
pub const ERROR_TEXT_BYTES_MAX: usize = 256;
/// An established gateway session that neither heard from its client nor delivered anything
/// to it for this long is closed (the default of the gateway's `session_idle_timeout_s`): a
/// silent authenticated session holds a slot of `sessions_max` and its memory for nothing.
/// As long as a mixnode's idle ingress timeout (5 minutes).
pub const SESSION_IDLE_TIMEOUT_S_DEFAULT: u64 = 300;
/// The shortest idle timeout a gateway accepts (tests shorten it; below about
/// 2 × [`CLIENT_KEEPALIVE_US`], clients with their cover traffic off would be closed).
pub const SESSION_IDLE_TIMEOUT_S_MIN: u64 = 1;
/// A client session that sent nothing for this long sends a keep-alive (an empty `Confirm`,
/// which every gateway accepts and which deletes nothing). A Loopix client's cover traffic
/// keeps its session busy anyway; this is for clients with both cover streams off.
pub const CLIENT_KEEPALIVE_US: u64 = 60_000_000;

/// Sealing adds the AEAD tag; the message kind and forward header come on top of the packet.
const FORWARD_OVERHEAD_BYTES: usize = 1 + 32 + crate::wire::session::TAG_LEN;
const _: () =
    assert!(PacketSize::Extended32.packet_len() + FORWARD_OVERHEAD_BYTES <= WS_MESSAGE_BYTES_MAX);
const _: () =
    assert!(3 + 8 * CONFIRM_IDS_MAX + crate::wire::session::TAG_LEN <= WS_MESSAGE_BYTES_MAX);
const _: () = assert!(CONFIRM_IDS_MAX <= u16::MAX as usize);
const _: () = assert!(SESSION_TRANSMITS_MAX >= 2 && SESSION_EVENTS_MAX >= 2);
// Opening handles the early messages in one call: their events must fit.
const _: () = assert!(3 * EARLY_MESSAGES_MAX + 2 < SESSION_EVENTS_MAX);
const _: () = assert!(SESSION_IDLE_TIMEOUT_S_MIN > 0);
const _: () = assert!(SESSION_IDLE_TIMEOUT_S_MIN <= SESSION_IDLE_TIMEOUT_S_DEFAULT);
// A silent client's keep-alives (at most two periods apart: the period is checked on a
// timer) reach the gateway well within its default idle timeout.
const _: () = assert!(2 * CLIENT_KEEPALIVE_US < SESSION_IDLE_TIMEOUT_S_DEFAULT * 1_000_000);

/// Fragments waiting for the client's Poisson stream before it reads no more commands.
pub const CLIENT_QUEUE_HIGH_WATER: usize = 4096;
/// Fragments not yet acknowledged (queued or in flight) before the client reads no more
/// commands.
pub const CLIENT_UNACKED_HIGH_WATER: usize = 65_536;
/// Reply-SURB recovery records a client keeps (oldest evicted first).
pub const CLIENT_SURB_RECORDS_MAX: usize = 100_000;
/// Reply SURBs received from others a client keeps (oldest bundle evicted first).
pub const CLIENT_RECEIVED_SURBS_MAX: usize = 20_000;
/// How often the client expires SURB records, SURB bundles and stale reassemblies: scanning
/// them on every timer would cost more than it frees.
pub const CLIENT_HOUSEKEEPING_US: u64 = 1_000_000;
/// A fragment whose packet could not be built (no route in this topology) is tried again
/// after this long (a fresher topology may have one).
pub const CLIENT_BUILD_RETRY_US: u64 = 1_000_000;

// Everything in flight was queued first: the queue mark must not exceed the in-flight one.
const _: () = assert!(CLIENT_QUEUE_HIGH_WATER <= CLIENT_UNACKED_HIGH_WATER);
const _: () = assert!(CLIENT_BUILD_RETRY_US >= 1000 && CLIENT_HOUSEKEEPING_US >= 1000);

/// Transmits and events a client core holds for its driver ([`crate::loopix::LoopixClient`]).
/// A driver drains both after every call, so they hold a few at a time; the caps bound what a
/// driver that stops draining lets pile up (about 2 KiB a transmit): at the cap the core defers
/// ticks, deliveries and housekeeping (counted) instead of growing.
pub const CLIENT_TRANSMITS_MAX: usize = 1024;
pub const CLIENT_EVENTS_MAX: usize = 1024;

// One step (a tick, a delivery, housekeeping) adds at most one of each: a cap of one would
// still make progress, two leaves room for a step while the driver holds the previous one.
const _: () = assert!(CLIENT_TRANSMITS_MAX >= 2 && CLIENT_EVENTS_MAX >= 2);

/// Reply SURBs a service provider holds for one sender tag (one conversation).
pub const SERVICE_TAG_SURBS_MAX: usize = 1024;
/// Reply SURBs a service provider holds in total (its client core keeps them).
pub const SERVICE_SURBS_MAX: usize = 16_384;
/// A provider's SURB window per tag (what it asks for at a time, and the level it asks
/// at): twice the SURBs the tag used over the last ask's round trip, so an ask's answer
/// arrives before the tag runs dry at the rate it is replying, kept within these bounds.
pub const SERVICE_SURBS_WINDOW_MIN: usize = 64;
/// The window before a round trip was measured.
pub const SERVICE_SURBS_WINDOW_INITIAL: usize = 192;
/// The largest window, and the most SURBs a user grants per ask.
pub const SERVICE_SURBS_WINDOW_MAX: usize = 512;
/// SURBs a user sends per message when it grants an ask: smaller messages arrive sooner
/// (fewer fragments behind its Poisson stream), so the provider is fed while the rest follow.
pub const SERVICE_SURBS_PER_MESSAGE_MAX: usize = 128;
/// SURBs of a tag replies leave alone, so the provider can still ask for more.
pub const SERVICE_SURBS_RESERVED: usize = 4;
/// An ask not answered within four of its tag's measured round trips, bounded by these, is
/// sent again (it or its answer got lost). The upper bound is what a lost ask can stall a
/// conversation by.
pub const SERVICE_ASK_RETRY_US_MIN: u64 = 2_000_000;
pub const SERVICE_ASK_RETRY_US_MAX: u64 = 10_000_000;
/// After the provider's topology shows mixnodes on a newer Sphinx key rotation, SURBs built
/// for an older one are still usable (nodes keep the old key for the rotation overlap, Nym:
/// 1 h) until the user's replacements arrive, but never longer than this: longer than a
/// user's topology refresh (5 min) plus a round trip, shorter than any overlap a network
/// runs.
pub const SERVICE_SURBS_RETIRING_US_MAX: u64 = 600_000_000;
/// Longest user address a request may carry (when the user reveals it).
pub const SERVICE_REPLY_TO_BYTES_MAX: usize = 300;

/// Unacknowledged responses a provider keeps for one tag, to resend them (its window: a
/// response waits for acknowledgements beyond it); also how far past its next expected
/// response a user accepts one.
pub const SERVICE_REPLY_TAG_PENDING_MAX: usize = 256;
/// Bytes of unacknowledged responses a provider keeps for one tag.
pub const SERVICE_REPLY_TAG_BYTES_MAX: usize = 512 * 1024;
/// Bytes of unacknowledged responses a provider keeps in total.
pub const SERVICE_REPLY_BYTES_MAX: usize = 32 * 1024 * 1024;
/// Conversations whose response numbering a provider keeps (idle ones are forgotten first).
pub const SERVICE_REPLY_TAGS_MAX: usize = 4096;
/// A response overtaken by this many later ones of its tag (acknowledged before it) is taken
/// as lost and resent. Responses leave a provider in order, one packet each, and mix delays
/// reorder them by far fewer.
pub const SERVICE_REORDER_RESPONSES: u64 = 32;
/// A tag's unacknowledged responses are all resent when no acknowledgement released any of
/// them (and nothing new was sent) for this long: what overtaking cannot show (the last
/// responses lost, or all of them). Longer than the provider's own queue takes to drain a
/// full window at the default sending rate, plus the round trip.
pub const SERVICE_RESEND_AFTER_US: u64 = 8_000_000;
/// Resends of one response before its conversation is given up (counted). Generous: while a
/// dead mixnode is still in the topology (until the directory drops it and the user's fresh
/// SURBs avoid it), each resend through an old SURB may die with it.
pub const SERVICE_RESENDS_MAX: u32 = 12;
/// A resent response is not taken as overtaken again sooner than this after its resend.
pub const SERVICE_RESEND_SPACING_US: u64 = 2_000_000;
/// A user acknowledges after this many new responses...
pub const SERVICE_ACK_EVERY: usize = 32;
/// ...or this long after the first one it has not acknowledged yet.
pub const SERVICE_ACK_DELAY_US: u64 = 300_000;
/// Ranges of responses received above the next expected one an acknowledgement names.
pub const SERVICE_ACK_RANGES_MAX: usize = 32;
/// A user gives a conversation up (an error to its application, not a silent truncation)
/// when a missing response has not come for this long: past every resend of the provider.
pub const SERVICE_GAP_GIVE_UP_US: u64 = 120_000_000;

const _: () = assert!(SERVICE_SURBS_MAX <= CLIENT_RECEIVED_SURBS_MAX);
const _: () = assert!(SERVICE_TAG_SURBS_MAX <= SERVICE_SURBS_MAX);
const _: () = assert!(SERVICE_SURBS_RESERVED < SERVICE_SURBS_WINDOW_MIN);
const _: () = assert!(
    SERVICE_SURBS_WINDOW_MIN <= SERVICE_SURBS_WINDOW_INITIAL
        && SERVICE_SURBS_WINDOW_INITIAL <= SERVICE_SURBS_WINDOW_MAX
);
// A tag holds its window, a full ask on top, and what it asked before.
const _: () = assert!(2 * SERVICE_SURBS_WINDOW_MAX <= SERVICE_TAG_SURBS_MAX);
const _: () = assert!(SERVICE_SURBS_WINDOW_MAX <= u16::MAX as usize);
const _: () = assert!(
    SERVICE_SURBS_PER_MESSAGE_MAX > 0
        && SERVICE_SURBS_PER_MESSAGE_MAX <= crate::loopix::message::SURBS_PER_MESSAGE_MAX
);
const _: () =
    assert!(SERVICE_ASK_RETRY_US_MIN > 0 && SERVICE_ASK_RETRY_US_MIN <= SERVICE_ASK_RETRY_US_MAX);
const _: () = assert!(SERVICE_REPLY_TO_BYTES_MAX <= u16::MAX as usize);
// Acknowledgements come several times per window, so a flowing conversation never waits
// for one; overtaking can show a loss within a window.
const _: () = assert!(2 * SERVICE_ACK_EVERY <= SERVICE_REPLY_TAG_PENDING_MAX);
const _: () = assert!(2 * SERVICE_REORDER_RESPONSES as usize <= SERVICE_REPLY_TAG_PENDING_MAX);
const _: () = assert!(
    SERVICE_REPLY_TAG_BYTES_MAX
        >= 2 * SERVICE_ACK_EVERY
            * crate::loopix::message::reply_fragment_capacity(PacketSize::Regular)
);
const _: () = assert!(SERVICE_REPLY_TAG_BYTES_MAX <= SERVICE_REPLY_BYTES_MAX);
const _: () = assert!(SERVICE_ACK_DELAY_US < SERVICE_RESEND_AFTER_US);
const _: () = assert!(SERVICE_RESEND_SPACING_US < SERVICE_RESEND_AFTER_US);
const _: () = assert!(SERVICE_ACK_RANGES_MAX <= u8::MAX as usize);
// The user waits out every resend before it gives up.
const _: () =
    assert!(SERVICE_GAP_GIVE_UP_US > SERVICE_RESEND_AFTER_US * (SERVICE_RESENDS_MAX as u64 + 2));

//! Service providers that answer users without learning who they are.
//!
//! A user's requests to a provider carry reply SURBs (attached by the client core, see
//! [`crate::loopix::LoopixClient::send`]) and a random [`SenderTag`] the user picks per
//! conversation; never the user's address. The provider keeps the SURBs it received per tag
//! ([`SurbStore`], bounded per tag and in total) and answers through them only. Before a tag's
//! SURBs run out it asks for more ([`FromService::MoreSurbs`], itself sent through one of the
//! tag's SURBs: the store keeps a few back for that), and the user answers with a
//! [`ToService::Surbs`] message carrying fresh ones.
//!
//! Reply SURBs die with the mixnode keys they were built for (a node drops a rotation's key
//! after the rotation overlap). Each message carrying SURBs names their key epoch
//! ([`KeyEpochs::oldest`] of the topology the user built them with: the oldest rotation among
//! the mixnodes). A provider whose topology shows a newer rotation uses older SURBs only
//! until the user's replacements arrive (at most [`SERVICE_SURBS_RETIRING_US_MAX`]); a bundle
//! of a newer epoch replaces the tag's older ones. Users send replacements to their open tags
//! when their own topology moves on.
//!
//! The envelope is the same for every service; what a request or response body means is the
//! service's business (SOCKS5 relaying in `lethe-nodes`, an echo in `examples/`).
//!
//! ```text
//! user → provider:  VERSION ‖ 0x01 ‖ tag(16) ‖ key_epoch(u32) ‖ reply_to_len(u16) ‖ reply_to ‖ body
//!                   VERSION ‖ 0x02 ‖ tag(16) ‖ key_epoch(u32)                      (SURBs only)
//!                   VERSION ‖ 0x03 ‖ tag(16) ‖ next(u64) ‖ n(u8) ‖ n × (start(u64) ‖ end(u64))
//!                                                                          (acknowledgement)
//! provider → user:  VERSION ‖ 0x81 ‖ tag(16) ‖ seq(u64) ‖ body                       (response)
//!                   VERSION ‖ 0x82 ‖ tag(16) ‖ wanted(u16)                           (more SURBs)
//! ```
//! Responses are numbered per tag (`seq`) and acknowledged, so those lost on the way are
//! resent ([`replies`]).
//! `reply_to` is empty unless the user chose to reveal its address (then the provider answers
//! to it as an ordinary message, without SURBs). The first byte of the first SOCKS relay
//! protocol was a message kind (1 or 2): [`VERSION`] differs from both, so a provider tells an
//! old proxy apart ([`EnvelopeError::Version`]) instead of misreading its bytes.

use std::collections::{HashMap, VecDeque};

pub mod replies;

use lethe_crypto::framing::PacketSize;
use rand::Rng;

use crate::limits::{
    SERVICE_ACK_RANGES_MAX, SERVICE_ASK_RETRY_US_MAX, SERVICE_ASK_RETRY_US_MIN,
    SERVICE_REPLY_TO_BYTES_MAX, SERVICE_SURBS_MAX, SERVICE_SURBS_RESERVED,
    SERVICE_SURBS_RETIRING_US_MAX, SERVICE_SURBS_WINDOW_INITIAL, SERVICE_SURBS_WINDOW_MAX,
    SERVICE_SURBS_WINDOW_MIN, SERVICE_TAG_SURBS_MAX,
};
use crate::loopix::message::reply_fragment_capacity;
use crate::topology::Topology;

/// The envelope's version byte (the first byte of every message). 4: messages carrying
/// SURBs name their key epoch; 5: responses are numbered and acknowledged.
pub const VERSION: u8 = 5;
pub const SENDER_TAG_BYTES: usize = 16;

/// Envelope bytes in front of a response body.
pub const RESPONSE_HEADER_BYTES: usize = 2 + SENDER_TAG_BYTES + 8;
/// The largest response body one SURB carries (one reply fragment): a provider that keeps
/// its responses this small needs one SURB per response, from whichever bundle it holds.
pub const RESPONSE_BODY_BYTES_MAX: usize =
    reply_fragment_capacity(PacketSize::Regular) - RESPONSE_HEADER_BYTES;

const REQUEST: u8 = 0x01;
const SURBS: u8 = 0x02;
const ACK: u8 = 0x03;
const RESPONSE: u8 = 0x81;
const MORE_SURBS: u8 = 0x82;

/// Random per conversation: lets a provider group a user's SURBs without knowing the user.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SenderTag(pub [u8; SENDER_TAG_BYTES]);

impl SenderTag {
    pub fn random<R: Rng + ?Sized>(rng: &mut R) -> SenderTag {
        let mut tag = [0u8; SENDER_TAG_BYTES];
        rng.fill_bytes(&mut tag);
        SenderTag(tag)
    }
}

impl std::fmt::Debug for SenderTag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SenderTag({})", crate::hex::encode(&self.0))
    }
}

/// The Sphinx key rotations of a topology's mixnodes (network-wide ids: unix time / the
/// rotation interval). Gateways do not rotate and are left out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct KeyEpochs {
    /// The oldest rotation: the key epoch of SURBs built with this topology (their keys
    /// retire no earlier than this rotation's).
    pub oldest: u32,
    /// The newest rotation: SURBs of an older key epoch are retiring.
    pub newest: u32,
}

impl KeyEpochs {
    pub fn of(topology: &Topology) -> KeyEpochs {
        let ids = || topology.layers.iter().flatten().map(|d| d.rotation_id);
        KeyEpochs {
            oldest: ids().min().unwrap_or(0),
            newest: ids().max().unwrap_or(0),
        }
    }
}

/// A message from a user to a provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToService {
    Request {
        tag: SenderTag,
        /// The key epoch of the SURBs attached ([`KeyEpochs::oldest`]).
        key_epoch: u32,
        /// The user's address, only if it chose to reveal it.
        reply_to: Option<String>,
        body: Vec<u8>,
    },
    /// Carries nothing but the SURBs attached to the mixnet message (an answer to
    /// [`FromService::MoreSurbs`], or replacements after a key rotation).
    Surbs { tag: SenderTag, key_epoch: u32 },
    /// The responses of `tag` the user received.
    Ack { tag: SenderTag, ack: replies::Ack },
}

/// A message from a provider to a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FromService {
    /// `seq` numbers the tag's responses from 0 (see [`replies`]).
    Response {
        tag: SenderTag,
        seq: u64,
        body: Vec<u8>,
    },
    MoreSurbs {
        tag: SenderTag,
        wanted: u16,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("service protocol version {0}, this side speaks {VERSION}: upgrade the older side")]
    Version(u8),
    #[error("malformed service message: {0}")]
    Malformed(&'static str),
}

fn header(bytes: &[u8]) -> Result<(u8, SenderTag, &[u8]), EnvelopeError> {
    let (&version, rest) = bytes
        .split_first()
        .ok_or(EnvelopeError::Malformed("empty"))?;
    if version != VERSION {
        return Err(EnvelopeError::Version(version));
    }
    let (&kind, rest) = rest
        .split_first()
        .ok_or(EnvelopeError::Malformed("truncated"))?;
    let (tag, rest) = rest
        .split_first_chunk::<SENDER_TAG_BYTES>()
        .ok_or(EnvelopeError::Malformed("truncated"))?;
    Ok((kind, SenderTag(*tag), rest))
}

fn start(kind: u8, tag: &SenderTag, extra: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + SENDER_TAG_BYTES + extra);
    out.push(VERSION);
    out.push(kind);
    out.extend_from_slice(&tag.0);
    out
}

impl ToService {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            ToService::Request {
                tag,
                key_epoch,
                reply_to,
                body,
            } => {
                let reply_to = reply_to.as_deref().unwrap_or("").as_bytes();
                let reply_to = &reply_to[..reply_to.len().min(SERVICE_REPLY_TO_BYTES_MAX)];
                let mut out = start(REQUEST, tag, 6 + reply_to.len() + body.len());
                out.extend_from_slice(&key_epoch.to_be_bytes());
                // In range: SERVICE_REPLY_TO_BYTES_MAX fits a u16 (checked in limits).
                out.extend_from_slice(&(reply_to.len() as u16).to_be_bytes());
                out.extend_from_slice(reply_to);
                out.extend_from_slice(body);
                out
            }
            ToService::Surbs { tag, key_epoch } => {
                let mut out = start(SURBS, tag, 4);
                out.extend_from_slice(&key_epoch.to_be_bytes());
                out
            }
            ToService::Ack { tag, ack } => {
                let ranges = &ack.ranges[..ack.ranges.len().min(SERVICE_ACK_RANGES_MAX)];
                let mut out = start(ACK, tag, 9 + 16 * ranges.len());
                out.extend_from_slice(&ack.next.to_be_bytes());
                // In range: SERVICE_ACK_RANGES_MAX fits a u8 (checked in limits).
                out.push(ranges.len() as u8);
                for (start, end) in ranges {
                    out.extend_from_slice(&start.to_be_bytes());
                    out.extend_from_slice(&end.to_be_bytes());
                }
                out
            }
        }
    }

    pub fn decode(bytes: &[u8]) -> Result<ToService, EnvelopeError> {
        let (kind, tag, rest) = header(bytes)?;
        if kind == ACK {
            // Carries no SURBs: no key epoch.
            let ack = decode_ack(rest)?;
            return Ok(ToService::Ack { tag, ack });
        }
        let (key_epoch, rest) = rest
            .split_first_chunk::<4>()
            .ok_or(EnvelopeError::Malformed("truncated"))?;
        let key_epoch = u32::from_be_bytes(*key_epoch);
        match kind {
            REQUEST => {
                let (len, rest) = rest
                    .split_first_chunk::<2>()
                    .ok_or(EnvelopeError::Malformed("truncated"))?;
                let len = usize::from(u16::from_be_bytes(*len));
                if len > SERVICE_REPLY_TO_BYTES_MAX {
                    return Err(EnvelopeError::Malformed("reply address too long"));
                }
                let (reply_to, body) = rest
                    .split_at_checked(len)
                    .ok_or(EnvelopeError::Malformed("truncated"))?;
                let reply_to = match reply_to {
                    [] => None,
                    text => Some(
                        String::from_utf8(text.to_vec())
                            .map_err(|_| EnvelopeError::Malformed("reply address not UTF-8"))?,
                    ),
                };
                Ok(ToService::Request {
                    tag,
                    key_epoch,
                    reply_to,
                    body: body.to_vec(),
                })
            }
            SURBS if rest.is_empty() => Ok(ToService::Surbs { tag, key_epoch }),
            SURBS => Err(EnvelopeError::Malformed("trailing bytes")),
            _ => Err(EnvelopeError::Malformed("unknown kind")),
        }
    }
}

impl FromService {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            FromService::Response { tag, seq, body } => {
                let mut out = start(RESPONSE, tag, 8 + body.len());
                out.extend_from_slice(&seq.to_be_bytes());
                out.extend_from_slice(body);
                out
            }
            FromService::MoreSurbs { tag, wanted } => {
                let mut out = start(MORE_SURBS, tag, 2);
                out.extend_from_slice(&wanted.to_be_bytes());
                out
            }
        }
    }

    pub fn decode(bytes: &[u8]) -> Result<FromService, EnvelopeError> {
        let (kind, tag, rest) = header(bytes)?;
        match kind {
            RESPONSE => {
                let (seq, body) = rest
                    .split_first_chunk::<8>()
                    .ok_or(EnvelopeError::Malformed("truncated"))?;
                Ok(FromService::Response {
                    tag,
                    seq: u64::from_be_bytes(*seq),
                    body: body.to_vec(),
                })
            }
            MORE_SURBS => match rest {
                [a, b] => Ok(FromService::MoreSurbs {
                    tag,
                    wanted: u16::from_be_bytes([*a, *b]),
                }),
                _ => Err(EnvelopeError::Malformed("more-SURBs length")),
            },
            _ => Err(EnvelopeError::Malformed("unknown kind")),
        }
    }
}

fn decode_ack(bytes: &[u8]) -> Result<replies::Ack, EnvelopeError> {
    let (next, rest) = bytes
        .split_first_chunk::<8>()
        .ok_or(EnvelopeError::Malformed("truncated"))?;
    let (&count, mut rest) = rest
        .split_first()
        .ok_or(EnvelopeError::Malformed("truncated"))?;
    let count = usize::from(count);
    if count > SERVICE_ACK_RANGES_MAX || rest.len() != 16 * count {
        return Err(EnvelopeError::Malformed("acknowledgement length"));
    }
    let mut ranges = Vec::with_capacity(count);
    while let Some((range, tail)) = rest.split_first_chunk::<16>() {
        let (start, end) = range.split_at(8);
        let mut s = [0u8; 8];
        let mut e = [0u8; 8];
        s.copy_from_slice(start);
        e.copy_from_slice(end);
        ranges.push((u64::from_be_bytes(s), u64::from_be_bytes(e)));
        rest = tail;
    }
    let ack = replies::Ack {
        next: u64::from_be_bytes(*next),
        ranges,
    };
    if !ack.well_formed() {
        return Err(EnvelopeError::Malformed("acknowledgement ranges"));
    }
    Ok(ack)
}

/// Why [`SurbStore::add`] refused a bundle (the caller discards it in the client core).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SurbsRefused {
    #[error("the tag holds as many SURBs as it may")]
    TagFull,
    #[error("the provider holds as many SURBs as it may")]
    StoreFull,
    #[error("the SURBs were built for mixnode keys that have been replaced")]
    Expired,
}

/// What [`SurbStore::take`] is asked for: a reply's SURB may not use the last
/// [`SERVICE_SURBS_RESERVED`] of a tag; an ask for more may.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Use {
    Reply,
    Ask,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SurbCounters {
    pub stored: u64,
    pub used: u64,
    pub refused_tag_full: u64,
    pub refused_store_full: u64,
    /// Bundles the client core no longer had (expired or evicted) when a reply needed them.
    pub vanished: u64,
    pub asks: u64,
    /// Asks sent again: the first (or its answer) was not answered in time.
    pub asks_repeated: u64,
    /// SURBs discarded unused because their mixnode keys rotated out: replaced by a newer
    /// epoch's, past [`SERVICE_SURBS_RETIRING_US_MAX`], or arriving already replaced.
    pub expired: u64,
    /// SURBs used while retiring (the provider's topology already showed newer keys; the
    /// nodes still hold the old ones for the rotation overlap).
    pub used_retiring: u64,
}

#[derive(Debug)]
struct Bundle {
    id: u64,
    left: usize,
    key_epoch: u32,
    arrived_us: u64,
}

/// An ask in flight.
#[derive(Debug, Clone, Copy)]
struct Ask {
    at_us: u64,
    /// The tag's `used` when it left: what the tag used over the round trip is measured.
    used: u64,
    /// SURBs asked for and not arrived yet.
    pending: usize,
    /// Whether its answer measured the round trip yet.
    measured: bool,
}

#[derive(Debug)]
struct TagSurbs {
    /// Oldest first (used first: they expire first).
    bundles: VecDeque<Bundle>,
    surbs: usize,
    /// SURBs used under the tag so far.
    used: u64,
    asked: Option<Ask>,
    /// What to ask for, and the level to ask at (see [`SERVICE_SURBS_WINDOW_MIN`]).
    window: usize,
    /// The last ask's round trip.
    rtt_us: Option<u64>,
    /// The newest key epoch of the tag's bundles.
    key_epoch: u32,
    /// The network epoch its retiring SURBs were last asked to be replaced in.
    replacement_asked: u32,
}

impl Default for TagSurbs {
    fn default() -> Self {
        TagSurbs {
            bundles: VecDeque::new(),
            surbs: 0,
            used: 0,
            asked: None,
            window: SERVICE_SURBS_WINDOW_INITIAL,
            rtt_us: None,
            key_epoch: 0,
            replacement_asked: 0,
        }
    }
}

impl TagSurbs {
    fn retry_us(&self) -> u64 {
        self.rtt_us.map_or(SERVICE_ASK_RETRY_US_MAX, |rtt| {
            rtt.saturating_mul(4)
                .clamp(SERVICE_ASK_RETRY_US_MIN, SERVICE_ASK_RETRY_US_MAX)
        })
    }
}

/// The SURBs a provider holds, per sender tag. It tracks the client core's bundle ids (the
/// SURBs themselves stay in the core, which builds the reply packets); one SURB carries one
/// reply fragment. I/O-free: the driver passes the time, and the newest key rotation its
/// topology shows ([`Self::set_key_epochs`]). Bundles it drops (expired, replaced) wait in
/// [`Self::take_dropped`] for the driver to discard in the core.
#[derive(Debug)]
pub struct SurbStore {
    tags: HashMap<SenderTag, TagSurbs>,
    surbs: usize,
    counters: SurbCounters,
    /// The newest mixnode key rotation in the provider's topology, and since when.
    network_epoch: u32,
    network_epoch_since_us: u64,
    dropped: Vec<u64>,
}

impl Default for SurbStore {
    fn default() -> Self {
        SurbStore::new()
    }
}

impl SurbStore {
    pub fn new() -> SurbStore {
        SurbStore {
            tags: HashMap::new(),
            surbs: 0,
            counters: SurbCounters::default(),
            network_epoch: 0,
            network_epoch_since_us: 0,
            dropped: Vec::new(),
        }
    }

    pub fn counters(&self) -> SurbCounters {
        self.counters
    }

    /// SURBs held for `tag`.
    pub fn surbs(&self, tag: &SenderTag) -> usize {
        self.tags.get(tag).map_or(0, |t| t.surbs)
    }

    /// SURBs held in total.
    pub fn total(&self) -> usize {
        self.surbs
    }

    /// `tag`'s current window (what it asks for at a time).
    pub fn window(&self, tag: &SenderTag) -> Option<usize> {
        self.tags.get(tag).map(|t| t.window)
    }

    /// Bundles dropped since the last call, for the caller to discard in the client core.
    pub fn take_dropped(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.dropped)
    }

    /// The provider's topology shows mixnode key rotations up to `epochs.newest`: SURBs of
    /// older key epochs are retiring from now on (the nodes keep the old keys for the overlap).
    pub fn set_key_epochs(&mut self, epochs: KeyEpochs, now_us: u64) {
        if epochs.newest > self.network_epoch {
            self.network_epoch = epochs.newest;
            self.network_epoch_since_us = now_us;
        }
    }

    /// Takes `count` SURBs of the client core's `bundle` for `tag`, built for mixnode keys of
    /// `key_epoch`, or refuses them whole. A newer epoch than the tag's replaces its bundles
    /// (the user moved on to newer keys); an older one is refused.
    pub fn add(
        &mut self,
        tag: SenderTag,
        bundle: u64,
        count: usize,
        key_epoch: u32,
        now_us: u64,
    ) -> Result<(), SurbsRefused> {
        if count == 0 {
            return Ok(());
        }
        if let Some(entry) = self.tags.get_mut(&tag) {
            if key_epoch < entry.key_epoch {
                self.counters.expired += count as u64;
                return Err(SurbsRefused::Expired);
            }
            if key_epoch > entry.key_epoch {
                let gone =
                    Self::drop_bundles(entry, &mut self.dropped, |b| b.key_epoch < key_epoch);
                self.surbs -= gone;
                self.counters.expired += gone as u64;
            }
        }
        if self.surbs(&tag) + count > SERVICE_TAG_SURBS_MAX {
            self.counters.refused_tag_full += 1;
            return Err(SurbsRefused::TagFull);
        }
        if self.surbs + count > SERVICE_SURBS_MAX {
            self.counters.refused_store_full += 1;
            return Err(SurbsRefused::StoreFull);
        }
        let entry = self.tags.entry(tag).or_default();
        entry.bundles.push_back(Bundle {
            id: bundle,
            left: count,
            key_epoch,
            arrived_us: now_us,
        });
        entry.surbs += count;
        entry.key_epoch = entry.key_epoch.max(key_epoch);
        if let Some(ask) = &mut entry.asked {
            if !ask.measured {
                // The ask's first answer: the round trip, and what the tag used over it (the
                // window follows the tag's reply rate).
                ask.measured = true;
                entry.rtt_us = Some(now_us.saturating_sub(ask.at_us));
                let used = entry.used.saturating_sub(ask.used);
                let window = usize::try_from(used.saturating_mul(2)).unwrap_or(usize::MAX);
                entry.window = window.clamp(SERVICE_SURBS_WINDOW_MIN, SERVICE_SURBS_WINDOW_MAX);
            }
            ask.pending = ask.pending.saturating_sub(count);
            if ask.pending == 0 {
                entry.asked = None;
            }
        }
        self.surbs += count;
        self.counters.stored += count as u64;
        Ok(())
    }

    /// Removes `entry`'s bundles matching `gone`: their SURB count (the caller fixes the total).
    fn drop_bundles(
        entry: &mut TagSurbs,
        dropped: &mut Vec<u64>,
        gone: impl Fn(&Bundle) -> bool,
    ) -> usize {
        let mut count = 0;
        entry.bundles.retain(|b| {
            if gone(b) {
                count += b.left;
                dropped.push(b.id);
                return false;
            }
            true
        });
        entry.surbs -= count;
        count
    }

    /// Drops `tag`'s bundles retiring for longer than [`SERVICE_SURBS_RETIRING_US_MAX`]
    /// (counted from the later of their arrival and the rotation the topology showed: in a
    /// network where some node never rotates, fresh SURBs still serve that long).
    fn expire(&mut self, tag: &SenderTag, now_us: u64) {
        let (network_epoch, since_us) = (self.network_epoch, self.network_epoch_since_us);
        let Some(entry) = self.tags.get_mut(tag) else {
            return;
        };
        let gone = Self::drop_bundles(entry, &mut self.dropped, |b| {
            b.key_epoch < network_epoch
                && now_us.saturating_sub(b.arrived_us.max(since_us))
                    >= SERVICE_SURBS_RETIRING_US_MAX
        });
        self.surbs -= gone;
        self.counters.expired += gone as u64;
    }

    /// One SURB of `tag` for one reply fragment: the bundle to reply through.
    pub fn take(&mut self, tag: &SenderTag, purpose: Use, now_us: u64) -> Option<u64> {
        self.expire(tag, now_us);
        let network_epoch = self.network_epoch;
        let entry = self.tags.get_mut(tag)?;
        let floor = match purpose {
            Use::Reply => SERVICE_SURBS_RESERVED,
            Use::Ask => 0,
        };
        if entry.surbs <= floor {
            return None;
        }
        let front = entry.bundles.front_mut()?;
        let bundle = front.id;
        if front.key_epoch < network_epoch {
            self.counters.used_retiring += 1;
        }
        front.left -= 1;
        if front.left == 0 {
            entry.bundles.pop_front();
        }
        entry.surbs -= 1;
        entry.used += 1;
        self.surbs -= 1;
        self.counters.used += 1;
        Some(bundle)
    }

    /// One SURB of `tag` from its newest bundle, to resend a lost response through (the
    /// newest SURBs were built with the freshest topology: a route that lost the response
    /// may be gone from it), leaving the reserve like [`Use::Reply`].
    pub fn take_newest(&mut self, tag: &SenderTag, now_us: u64) -> Option<u64> {
        self.expire(tag, now_us);
        let network_epoch = self.network_epoch;
        let entry = self.tags.get_mut(tag)?;
        if entry.surbs <= SERVICE_SURBS_RESERVED {
            return None;
        }
        let back = entry.bundles.back_mut()?;
        let bundle = back.id;
        if back.key_epoch < network_epoch {
            self.counters.used_retiring += 1;
        }
        back.left -= 1;
        if back.left == 0 {
            entry.bundles.pop_back();
        }
        entry.surbs -= 1;
        entry.used += 1;
        self.surbs -= 1;
        self.counters.used += 1;
        Some(bundle)
    }

    /// The client core no longer has `bundle` (expired, evicted): forget its SURBs.
    pub fn vanished(&mut self, tag: &SenderTag, bundle: u64) {
        let Some(entry) = self.tags.get_mut(tag) else {
            return;
        };
        let mut gone = 0;
        entry.bundles.retain(|b| {
            if b.id == bundle {
                gone += b.left;
            }
            b.id != bundle
        });
        entry.surbs -= gone;
        self.surbs -= gone;
        self.counters.vanished += 1;
    }

    /// How many SURBs to ask `tag`'s user for now, if it is time to: when what it holds and
    /// has asked for is down to its window, or when its SURBs are retiring and it has asked
    /// for none since; an ask unanswered for four round trips is repeated. The caller sends
    /// the ask through [`Self::take`] with [`Use::Ask`].
    pub fn wants_more(&mut self, tag: &SenderTag, now_us: u64) -> Option<u16> {
        let network_epoch = self.network_epoch;
        let entry = self.tags.get_mut(tag)?;
        if entry.surbs == 0 {
            return None;
        }
        let retry_us = entry.retry_us();
        let repeat = match entry.asked {
            Some(ask) if now_us.saturating_sub(ask.at_us) < retry_us => return None,
            Some(_) => true,
            None => false,
        };
        let replace = entry.key_epoch < network_epoch && entry.replacement_asked < network_epoch;
        if entry.surbs > entry.window && !replace {
            return None;
        }
        let wanted = entry
            .window
            .min(SERVICE_TAG_SURBS_MAX.saturating_sub(entry.surbs));
        if wanted == 0 {
            return None;
        }
        if replace {
            entry.replacement_asked = network_epoch;
        }
        entry.asked = Some(Ask {
            at_us: now_us,
            used: entry.used,
            pending: wanted,
            measured: false,
        });
        self.counters.asks += 1;
        if repeat {
            self.counters.asks_repeated += 1;
        }
        // In range: the window fits a u16 (checked in limits).
        Some(u16::try_from(wanted).unwrap_or(u16::MAX))
    }

    /// The conversation is over: its bundles, for the caller to discard in the client core.
    pub fn forget(&mut self, tag: &SenderTag) -> Vec<u64> {
        let Some(entry) = self.tags.remove(tag) else {
            return Vec::new();
        };
        self.surbs -= entry.surbs;
        entry.bundles.into_iter().map(|b| b.id).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tag(n: u8) -> SenderTag {
        SenderTag([n; SENDER_TAG_BYTES])
    }

    #[test]
    fn envelopes_round_trip() {
        for m in [
            ToService::Request {
                tag: tag(1),
                key_epoch: 7,
                reply_to: None,
                body: b"GET".to_vec(),
            },
            ToService::Request {
                tag: tag(2),
                key_epoch: 0,
                reply_to: Some("a.b@c".into()),
                body: Vec::new(),
            },
            ToService::Surbs {
                tag: tag(3),
                key_epoch: u32::MAX,
            },
            ToService::Ack {
                tag: tag(6),
                ack: replies::Ack {
                    next: 7,
                    ranges: vec![(9, 12), (20, 21)],
                },
            },
        ] {
            assert_eq!(ToService::decode(&m.encode()).unwrap(), m);
        }
        for m in [
            FromService::Response {
                tag: tag(4),
                seq: 77,
                body: b"200".to_vec(),
            },
            FromService::MoreSurbs {
                tag: tag(5),
                wanted: 300,
            },
        ] {
            assert_eq!(FromService::decode(&m.encode()).unwrap(), m);
        }
    }

    #[test]
    fn old_and_bad_envelopes_are_errors() {
        // The first SOCKS relay protocol's Connect and Data began with their kind.
        assert_eq!(
            ToService::decode(&[0x01, 0, 0]),
            Err(EnvelopeError::Version(1))
        );
        assert_eq!(ToService::decode(&[0x02]), Err(EnvelopeError::Version(2)));
        // Version 3 had no key epoch.
        assert_eq!(
            ToService::decode(&[3, SURBS]),
            Err(EnvelopeError::Version(3))
        );
        assert!(ToService::decode(&[]).is_err());
        assert!(ToService::decode(&[VERSION, REQUEST, 1, 2]).is_err());
        assert!(ToService::decode(&start(0x7f, &tag(1), 0)).is_err());
        let mut long = start(REQUEST, &tag(1), 0);
        long.extend_from_slice(&0u32.to_be_bytes());
        long.extend_from_slice(&u16::MAX.to_be_bytes());
        assert!(ToService::decode(&long).is_err());
        let surbs = ToService::Surbs {
            tag: tag(1),
            key_epoch: 1,
        }
        .encode();
        assert!(ToService::decode(&surbs[..surbs.len() - 1]).is_err());
        let mut trailing = surbs;
        trailing.push(0);
        assert!(ToService::decode(&trailing).is_err());
        let mut more = FromService::MoreSurbs {
            tag: tag(1),
            wanted: 1,
        }
        .encode();
        more.push(0);
        assert!(FromService::decode(&more).is_err());
        // Acknowledgements: ranges below `next`, overlapping, or too many; a short response.
        for ranges in [
            vec![(3, 4)],
            vec![(9, 12), (11, 14)],
            vec![(9, 9)],
            (0..=SERVICE_ACK_RANGES_MAX as u64)
                .map(|i| (10 + 2 * i, 11 + 2 * i))
                .collect(),
        ] {
            let mut bytes = start(ACK, &tag(1), 0);
            bytes.extend_from_slice(&5u64.to_be_bytes());
            bytes.push(ranges.len() as u8);
            for (s, e) in ranges {
                bytes.extend_from_slice(&s.to_be_bytes());
                bytes.extend_from_slice(&e.to_be_bytes());
            }
            assert!(ToService::decode(&bytes).is_err());
        }
        assert!(FromService::decode(&start(RESPONSE, &tag(1), 0)).is_err());
    }

    #[test]
    fn store_bounds_reserve_and_asks() {
        let mut s = SurbStore::new();
        assert_eq!(s.take(&tag(1), Use::Ask, 0), None);
        s.add(tag(1), 10, SERVICE_SURBS_WINDOW_INITIAL + 2, 1, 0)
            .unwrap();
        assert_eq!(
            s.add(tag(1), 11, SERVICE_TAG_SURBS_MAX, 1, 0),
            Err(SurbsRefused::TagFull)
        );
        assert_eq!(s.counters().refused_tag_full, 1);
        // Above the window: no ask.
        assert_eq!(s.wants_more(&tag(1), 0), None);
        assert_eq!(s.take(&tag(1), Use::Reply, 0), Some(10));
        assert_eq!(s.take(&tag(1), Use::Reply, 0), Some(10));
        let wanted = s.wants_more(&tag(1), 0).unwrap();
        assert_eq!(usize::from(wanted), SERVICE_SURBS_WINDOW_INITIAL);
        // Asked already: not again until the retry time (no round trip measured: the most).
        assert_eq!(s.wants_more(&tag(1), 1), None);
        assert!(s.wants_more(&tag(1), SERVICE_ASK_RETRY_US_MAX).is_some());
        assert_eq!(s.counters().asks_repeated, 1);
        // Replies leave the reserve for asks.
        let mut replies = 0;
        while s.take(&tag(1), Use::Reply, 0).is_some() {
            replies += 1;
            assert!(replies <= SERVICE_SURBS_WINDOW_INITIAL);
        }
        assert_eq!(s.surbs(&tag(1)), SERVICE_SURBS_RESERVED);
        assert_eq!(s.take(&tag(1), Use::Ask, 0), Some(10));
        // A fresh bundle; the old one vanished in the core.
        s.add(tag(1), 12, 5, 1, 0).unwrap();
        s.vanished(&tag(1), 10);
        assert_eq!(s.surbs(&tag(1)), 5);
        assert_eq!(s.total(), 5);
        assert_eq!(s.forget(&tag(1)), vec![12]);
        assert_eq!(s.total(), 0);
    }

    #[test]
    fn window_follows_the_reply_rate() {
        let mut s = SurbStore::new();
        let t = tag(1);
        s.add(t, 1, SERVICE_TAG_SURBS_MAX / 2, 1, 0).unwrap();
        while s.surbs(&t) > SERVICE_SURBS_WINDOW_INITIAL {
            s.take(&t, Use::Reply, 0).unwrap();
        }
        let wanted = usize::from(s.wants_more(&t, 0).unwrap());
        // 150 replies during the round trip of 1 s: the window doubles that (bounded).
        for _ in 0..150 {
            s.take(&t, Use::Reply, 500_000).unwrap();
        }
        s.add(t, 2, 100, 1, 1_000_000).unwrap();
        assert_eq!(s.window(&t), Some(300));
        // The rest of the answer is still due: no second ask yet.
        assert_eq!(s.wants_more(&t, 1_100_000), None);
        s.add(t, 3, wanted - 100, 1, 1_200_000).unwrap();
        // Repeats wait four round trips (at least the minimum).
        while s.surbs(&t) > 300 {
            s.take(&t, Use::Reply, 1_300_000).unwrap();
        }
        assert_eq!(s.wants_more(&t, 1_300_000), Some(300));
        assert_eq!(s.wants_more(&t, 1_300_000 + 3_999_999), None);
        assert!(s.wants_more(&t, 1_300_000 + 4_000_000).is_some());
        // A slow tag keeps the smallest window.
        s.add(t, 4, 10, 1, 6_000_000).unwrap();
        assert_eq!(s.window(&t), Some(SERVICE_SURBS_WINDOW_MIN));
    }

    #[test]
    fn rotated_keys_retire_and_are_replaced() {
        let mut s = SurbStore::new();
        let t = tag(1);
        s.set_key_epochs(
            KeyEpochs {
                oldest: 5,
                newest: 5,
            },
            0,
        );
        s.add(t, 1, 500, 5, 0).unwrap();
        assert_eq!(s.wants_more(&t, 0), None);
        // The topology shows a newer rotation: the old SURBs are still used (the nodes keep
        // the old keys for the overlap), counted, and replacements are asked for once.
        s.set_key_epochs(
            KeyEpochs {
                oldest: 5,
                newest: 6,
            },
            1_000,
        );
        assert_eq!(s.take(&t, Use::Reply, 1_000), Some(1));
        assert_eq!(s.counters().used_retiring, 1);
        assert!(s.wants_more(&t, 1_000).is_some());
        // The user moved on: a bundle of the newer epoch replaces the old ones.
        s.add(t, 2, 50, 6, 2_000).unwrap();
        assert_eq!(s.surbs(&t), 50);
        assert_eq!(s.take_dropped(), vec![1]);
        assert_eq!(s.counters().expired, 499);
        // A late bundle of the old epoch is refused.
        assert_eq!(s.add(t, 3, 20, 5, 3_000), Err(SurbsRefused::Expired));
        assert_eq!(s.counters().expired, 519);
        assert_eq!(s.take(&t, Use::Reply, 3_000), Some(2));
        assert_eq!(s.counters().used_retiring, 1);
        assert_eq!(s.wants_more(&t, 3_000), None);

        // No replacement ever comes: retiring SURBs are dropped after the bound.
        let u = tag(2);
        s.add(u, 4, 30, 6, 3_000).unwrap();
        s.set_key_epochs(
            KeyEpochs {
                oldest: 6,
                newest: 7,
            },
            10_000,
        );
        assert_eq!(s.take(&u, Use::Reply, 10_000), Some(4));
        let late = 10_000 + SERVICE_SURBS_RETIRING_US_MAX;
        assert_eq!(s.take(&u, Use::Ask, late), None);
        assert_eq!(s.surbs(&u), 0);
        assert!(s.take_dropped().contains(&4));
    }

    #[test]
    fn key_epochs_of_a_topology() {
        let mut net = crate::testing::TestMixnet::new(2, &[1; 32]);
        // Gateways do not rotate: theirs is left out.
        net.topology.gateways[0].rotation_id = 1;
        for (i, d) in net.topology.layers.iter_mut().flatten().enumerate() {
            d.rotation_id = 40 + u32::from(i % 3 == 0);
        }
        assert_eq!(
            KeyEpochs::of(&net.topology),
            KeyEpochs {
                oldest: 40,
                newest: 41
            }
        );
    }

    #[test]
    fn resends_take_the_newest_surbs() {
        let mut s = SurbStore::new();
        s.add(tag(1), 10, SERVICE_SURBS_RESERVED, 1, 0).unwrap();
        s.add(tag(1), 11, 1, 1, 0).unwrap();
        assert_eq!(s.take_newest(&tag(1), 0), Some(11));
        // The reserve stays for asks.
        assert_eq!(s.take_newest(&tag(1), 0), None);
        assert_eq!(s.surbs(&tag(1)), SERVICE_SURBS_RESERVED);
        assert_eq!(s.total(), SERVICE_SURBS_RESERVED);
    }

    #[test]
    fn store_total_bound() {
        let mut s = SurbStore::new();
        let mut n = 0u8;
        while s.total() + SERVICE_TAG_SURBS_MAX <= SERVICE_SURBS_MAX {
            s.add(tag(n), u64::from(n), SERVICE_TAG_SURBS_MAX, 0, 0)
                .unwrap();
            n += 1;
        }
        assert_eq!(
            s.add(tag(n), 99, SERVICE_TAG_SURBS_MAX, 0, 0),
            Err(SurbsRefused::StoreFull)
        );
        assert_eq!(s.counters().refused_store_full, 1);
    }
}

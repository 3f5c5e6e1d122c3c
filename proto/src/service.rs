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
//! The envelope is the same for every service; what a request or response body means is the
//! service's business (SOCKS5 relaying in `lethe-nodes`, an echo in `examples/`).
//!
//! ```text
//! user → provider:  VERSION ‖ 0x01 ‖ tag(16) ‖ reply_to_len(u16) ‖ reply_to ‖ body    (request)
//!                   VERSION ‖ 0x02 ‖ tag(16)                                         (SURBs only)
//! provider → user:  VERSION ‖ 0x81 ‖ tag(16) ‖ body                                  (response)
//!                   VERSION ‖ 0x82 ‖ tag(16) ‖ wanted(u16)                           (more SURBs)
//! ```
//! `reply_to` is empty unless the user chose to reveal its address (then the provider answers
//! to it as an ordinary message, without SURBs). The first byte of the first SOCKS relay
//! protocol was a message kind (1 or 2): [`VERSION`] differs from both, so a provider tells an
//! old proxy apart ([`EnvelopeError::Version`]) instead of misreading its bytes.

use std::collections::{HashMap, VecDeque};

use lethe_crypto::framing::PacketSize;
use rand::Rng;

use crate::limits::{
    SERVICE_ASK_RETRY_US, SERVICE_REPLY_TO_BYTES_MAX, SERVICE_SURBS_ASK, SERVICE_SURBS_LOW_WATER,
    SERVICE_SURBS_MAX, SERVICE_SURBS_RESERVED, SERVICE_TAG_SURBS_MAX,
};
use crate::loopix::message::reply_fragment_capacity;

/// The envelope's version byte (the first byte of every message).
pub const VERSION: u8 = 3;
pub const SENDER_TAG_BYTES: usize = 16;

/// Envelope bytes in front of a response body.
pub const RESPONSE_HEADER_BYTES: usize = 2 + SENDER_TAG_BYTES;
/// The largest response body one SURB carries (one reply fragment): a provider that keeps
/// its responses this small needs one SURB per response, from whichever bundle it holds.
pub const RESPONSE_BODY_BYTES_MAX: usize =
    reply_fragment_capacity(PacketSize::Regular) - RESPONSE_HEADER_BYTES;

const REQUEST: u8 = 0x01;
const SURBS: u8 = 0x02;
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

/// A message from a user to a provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToService {
    Request {
        tag: SenderTag,
        /// The user's address, only if it chose to reveal it.
        reply_to: Option<String>,
        body: Vec<u8>,
    },
    /// Carries nothing but the SURBs attached to the mixnet message (an answer to
    /// [`FromService::MoreSurbs`]).
    Surbs { tag: SenderTag },
}

/// A message from a provider to a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FromService {
    Response { tag: SenderTag, body: Vec<u8> },
    MoreSurbs { tag: SenderTag, wanted: u16 },
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
                reply_to,
                body,
            } => {
                let reply_to = reply_to.as_deref().unwrap_or("").as_bytes();
                let reply_to = &reply_to[..reply_to.len().min(SERVICE_REPLY_TO_BYTES_MAX)];
                let mut out = start(REQUEST, tag, 2 + reply_to.len() + body.len());
                // In range: SERVICE_REPLY_TO_BYTES_MAX fits a u16 (checked in limits).
                out.extend_from_slice(&(reply_to.len() as u16).to_be_bytes());
                out.extend_from_slice(reply_to);
                out.extend_from_slice(body);
                out
            }
            ToService::Surbs { tag } => start(SURBS, tag, 0),
        }
    }

    pub fn decode(bytes: &[u8]) -> Result<ToService, EnvelopeError> {
        let (kind, tag, rest) = header(bytes)?;
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
                    reply_to,
                    body: body.to_vec(),
                })
            }
            SURBS if rest.is_empty() => Ok(ToService::Surbs { tag }),
            SURBS => Err(EnvelopeError::Malformed("trailing bytes")),
            _ => Err(EnvelopeError::Malformed("unknown kind")),
        }
    }
}

impl FromService {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            FromService::Response { tag, body } => {
                let mut out = start(RESPONSE, tag, body.len());
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
            RESPONSE => Ok(FromService::Response {
                tag,
                body: rest.to_vec(),
            }),
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

/// Why [`SurbStore::add`] refused a bundle (the caller discards it in the client core).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SurbsRefused {
    #[error("the tag holds as many SURBs as it may")]
    TagFull,
    #[error("the provider holds as many SURBs as it may")]
    StoreFull,
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
}

#[derive(Debug, Default)]
struct TagSurbs {
    /// `(bundle, SURBs left in it)`, oldest first (used first: they expire first).
    bundles: VecDeque<(u64, usize)>,
    surbs: usize,
    /// When we last asked for more and got none since.
    asked_at_us: Option<u64>,
}

/// The SURBs a provider holds, per sender tag. It tracks the client core's bundle ids (the
/// SURBs themselves stay in the core, which builds the reply packets); one SURB carries one
/// reply fragment. I/O-free: the driver passes the time.
#[derive(Debug)]
pub struct SurbStore {
    tags: HashMap<SenderTag, TagSurbs>,
    surbs: usize,
    counters: SurbCounters,
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

    /// Takes `count` SURBs of the client core's `bundle` for `tag`, or refuses them whole.
    pub fn add(&mut self, tag: SenderTag, bundle: u64, count: usize) -> Result<(), SurbsRefused> {
        if count == 0 {
            return Ok(());
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
        entry.bundles.push_back((bundle, count));
        entry.surbs += count;
        entry.asked_at_us = None;
        self.surbs += count;
        self.counters.stored += count as u64;
        Ok(())
    }

    /// One SURB of `tag` for one reply fragment: the bundle to reply through.
    pub fn take(&mut self, tag: &SenderTag, purpose: Use) -> Option<u64> {
        let entry = self.tags.get_mut(tag)?;
        let floor = match purpose {
            Use::Reply => SERVICE_SURBS_RESERVED,
            Use::Ask => 0,
        };
        if entry.surbs <= floor {
            return None;
        }
        let (bundle, left) = entry.bundles.front_mut()?;
        let bundle = *bundle;
        *left -= 1;
        if *left == 0 {
            entry.bundles.pop_front();
        }
        entry.surbs -= 1;
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
        entry.bundles.retain(|&(b, left)| {
            if b == bundle {
                gone += left;
            }
            b != bundle
        });
        entry.surbs -= gone;
        self.surbs -= gone;
        self.counters.vanished += 1;
    }

    /// How many SURBs to ask `tag`'s user for now, if it is time to: below the low-water
    /// mark, with none asked for since [`SERVICE_ASK_RETRY_US`] (an ask or its answer may be
    /// lost). The caller sends the ask through [`Self::take`] with [`Use::Ask`].
    pub fn wants_more(&mut self, tag: &SenderTag, now_us: u64) -> Option<u16> {
        let entry = self.tags.get_mut(tag)?;
        if entry.surbs > SERVICE_SURBS_LOW_WATER || entry.surbs == 0 {
            return None;
        }
        if entry
            .asked_at_us
            .is_some_and(|at| now_us.saturating_sub(at) < SERVICE_ASK_RETRY_US)
        {
            return None;
        }
        entry.asked_at_us = Some(now_us);
        self.counters.asks += 1;
        // In range: SERVICE_SURBS_ASK fits a u16 (checked in limits).
        Some(SERVICE_SURBS_ASK as u16)
    }

    /// The conversation is over: its bundles, for the caller to discard in the client core.
    pub fn forget(&mut self, tag: &SenderTag) -> Vec<u64> {
        let Some(entry) = self.tags.remove(tag) else {
            return Vec::new();
        };
        self.surbs -= entry.surbs;
        entry.bundles.into_iter().map(|(b, _)| b).collect()
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
                reply_to: None,
                body: b"GET".to_vec(),
            },
            ToService::Request {
                tag: tag(2),
                reply_to: Some("a.b@c".into()),
                body: Vec::new(),
            },
            ToService::Surbs { tag: tag(3) },
        ] {
            assert_eq!(ToService::decode(&m.encode()).unwrap(), m);
        }
        for m in [
            FromService::Response {
                tag: tag(4),
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
        assert!(ToService::decode(&[]).is_err());
        assert!(ToService::decode(&[VERSION, REQUEST, 1, 2]).is_err());
        assert!(ToService::decode(&start(0x7f, &tag(1), 0)).is_err());
        let mut long = start(REQUEST, &tag(1), 0);
        long.extend_from_slice(&u16::MAX.to_be_bytes());
        assert!(ToService::decode(&long).is_err());
        let mut surbs = ToService::Surbs { tag: tag(1) }.encode();
        surbs.push(0);
        assert!(ToService::decode(&surbs).is_err());
        let mut more = FromService::MoreSurbs {
            tag: tag(1),
            wanted: 1,
        }
        .encode();
        more.push(0);
        assert!(FromService::decode(&more).is_err());
    }

    #[test]
    fn store_bounds_reserve_and_asks() {
        let mut s = SurbStore::new();
        assert_eq!(s.take(&tag(1), Use::Ask), None);
        s.add(tag(1), 10, SERVICE_SURBS_LOW_WATER + 2).unwrap();
        assert_eq!(
            s.add(tag(1), 11, SERVICE_TAG_SURBS_MAX),
            Err(SurbsRefused::TagFull)
        );
        assert_eq!(s.counters().refused_tag_full, 1);
        // Above the low-water mark: no ask.
        assert_eq!(s.wants_more(&tag(1), 0), None);
        assert_eq!(s.take(&tag(1), Use::Reply), Some(10));
        assert_eq!(s.take(&tag(1), Use::Reply), Some(10));
        assert_eq!(s.wants_more(&tag(1), 0), Some(SERVICE_SURBS_ASK as u16));
        // Asked already: not again until the retry time.
        assert_eq!(s.wants_more(&tag(1), 1), None);
        assert!(s.wants_more(&tag(1), SERVICE_ASK_RETRY_US).is_some());
        // Replies leave the reserve for asks.
        let mut replies = 0;
        while s.take(&tag(1), Use::Reply).is_some() {
            replies += 1;
            assert!(replies <= SERVICE_SURBS_LOW_WATER);
        }
        assert_eq!(s.surbs(&tag(1)), SERVICE_SURBS_RESERVED);
        assert_eq!(s.take(&tag(1), Use::Ask), Some(10));
        // A fresh bundle; the old one vanished in the core.
        s.add(tag(1), 12, 5).unwrap();
        s.vanished(&tag(1), 10);
        assert_eq!(s.surbs(&tag(1)), 5);
        assert_eq!(s.total(), 5);
        assert_eq!(s.forget(&tag(1)), vec![12]);
        assert_eq!(s.total(), 0);
    }

    #[test]
    fn store_total_bound() {
        let mut s = SurbStore::new();
        let mut n = 0u8;
        while s.total() + SERVICE_TAG_SURBS_MAX <= SERVICE_SURBS_MAX {
            s.add(tag(n), u64::from(n), SERVICE_TAG_SURBS_MAX).unwrap();
            n += 1;
        }
        assert_eq!(
            s.add(tag(n), 99, SERVICE_TAG_SURBS_MAX),
            Err(SurbsRefused::StoreFull)
        );
        assert_eq!(s.counters().refused_store_full, 1);
    }
}

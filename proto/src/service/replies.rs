//! Reliable responses through SURBs: acknowledged at the service layer, resent by the
//! provider.
//!
//! A reply through a SURB cannot carry a SURB-ACK (the user's gateway cannot read inside
//! it), so the client core never learns whether it arrived. Here each response of a tag
//! carries a sequence number; the user acknowledges what it received ([`Ack`]: everything
//! below `next`, and ranges above it) in ordinary forward messages, which the client core
//! itself acknowledges and retransmits. The provider keeps each response until it is
//! acknowledged ([`ReplyBuffer`], bounded per tag and in total: its window) and resends it
//! through another SURB when
//! - [`SERVICE_REORDER_RESPONSES`] later responses of the tag were acknowledged before it
//!   (responses leave in order, one packet each; mix delays reorder them by far fewer; a
//!   resent one not again within [`SERVICE_RESEND_SPACING_US`]), or
//! - no acknowledgement released anything, and nothing new was sent, for
//!   [`SERVICE_RESEND_AFTER_US`] (the last responses were lost, or all of them).
//!
//! A response resent [`SERVICE_RESENDS_MAX`] times gives its conversation up (counted); the
//! user ([`ReplyTracker`]) gives up when a missing response has not come for
//! [`SERVICE_GAP_GIVE_UP_US`], so its application gets an error, not a truncated stream.
//! Everything here lives in memory for the conversation, is bounded, and is dropped when the
//! conversation ends or is given up. I/O-free: drivers pass the time (µs).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::SenderTag;
use crate::limits::{
    SERVICE_ACK_DELAY_US, SERVICE_ACK_EVERY, SERVICE_ACK_RANGES_MAX, SERVICE_GAP_GIVE_UP_US,
    SERVICE_REORDER_RESPONSES, SERVICE_REPLY_BYTES_MAX, SERVICE_REPLY_TAGS_MAX,
    SERVICE_REPLY_TAG_BYTES_MAX, SERVICE_REPLY_TAG_PENDING_MAX, SERVICE_RESENDS_MAX,
    SERVICE_RESEND_AFTER_US, SERVICE_RESEND_SPACING_US,
};

/// What a user received of a tag's responses: every one numbered below `next`, and the
/// ranges `[start, end)` above it (ascending, disjoint, at most [`SERVICE_ACK_RANGES_MAX`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ack {
    pub next: u64,
    pub ranges: Vec<(u64, u64)>,
}

impl Ack {
    fn covers(&self, seq: u64) -> bool {
        seq < self.next || self.ranges.iter().any(|&(s, e)| s <= seq && seq < e)
    }

    /// The highest response it acknowledges.
    fn highest(&self) -> Option<u64> {
        match self.ranges.last() {
            Some(&(_, end)) => end.checked_sub(1),
            None => self.next.checked_sub(1),
        }
    }

    /// Whether the ranges are what [`ReplyTracker`] sends: above `next`, ascending, apart.
    pub fn well_formed(&self) -> bool {
        let mut floor = self.next;
        for &(start, end) in &self.ranges {
            if start <= floor || end <= start {
                return false;
            }
            floor = end;
        }
        self.ranges.len() <= SERVICE_ACK_RANGES_MAX
    }
}

/// What a provider counted of its responses (monotonic).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReplyCounters {
    /// Responses numbered and kept until acknowledged.
    pub kept: u64,
    pub acked: u64,
    pub resent: u64,
    /// Responses taken as lost because later ones were acknowledged first.
    pub overtaken: u64,
    /// Rounds of resending a tag's responses after no acknowledgement came.
    pub timeouts: u64,
    /// Conversations given up: a response was resent [`SERVICE_RESENDS_MAX`] times.
    pub given_up: u64,
    /// Responses that had to wait: the tag's window or the provider's buffer was full.
    pub window_waits: u64,
    /// Conversations refused: [`SERVICE_REPLY_TAGS_MAX`] busy ones already.
    pub tags_refused: u64,
    /// Acknowledgements for no conversation we have.
    pub stray_acks: u64,
}

/// Why [`ReplyBuffer::keep`] did not take a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NotKept {
    #[error("the conversation's window is full: wait for acknowledgements")]
    Window,
    #[error("the provider's reply buffer is full: wait for acknowledgements")]
    Full,
    #[error("too many conversations")]
    Tags,
    #[error("the conversation was given up")]
    GivenUp,
}

#[derive(Debug)]
struct Pending {
    bytes: Vec<u8>,
    /// The tag's next number when this copy was queued: responses numbered from here on
    /// leave after it, so their acknowledgement shows it overtaken.
    after_seq: u64,
    sent_us: u64,
    resends: u32,
    /// Taken as lost; waits for a SURB to be resent through.
    due: bool,
}

#[derive(Debug, Default)]
struct TagReplies {
    next_seq: u64,
    pending: BTreeMap<u64, Pending>,
    bytes: usize,
    /// When an acknowledgement last released something or a response was last kept.
    progress_us: u64,
    used_us: u64,
    given_up: bool,
}

/// What [`ReplyBuffer::due`] found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Due {
    /// Responses to resend, oldest first per tag: take a SURB, then [`ReplyBuffer::resend`].
    pub resend: Vec<(SenderTag, u64)>,
    /// Conversations given up just now (their responses are dropped).
    pub given_up: Vec<SenderTag>,
}

/// A provider's unacknowledged responses, per tag.
#[derive(Default)]
pub struct ReplyBuffer {
    tags: HashMap<SenderTag, TagReplies>,
    bytes: usize,
    counters: ReplyCounters,
}

/// Counts only: the responses' bytes are the users' data.
impl std::fmt::Debug for ReplyBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pending: usize = self.tags.values().map(|t| t.pending.len()).sum();
        f.debug_struct("ReplyBuffer")
            .field("tags", &self.tags.len())
            .field("pending", &pending)
            .field("bytes", &self.bytes)
            .field("counters", &self.counters)
            .finish()
    }
}

impl ReplyBuffer {
    pub fn new() -> ReplyBuffer {
        ReplyBuffer::default()
    }

    pub fn counters(&self) -> ReplyCounters {
        self.counters
    }

    /// Unacknowledged responses of `tag`.
    pub fn pending(&self, tag: &SenderTag) -> usize {
        self.tags.get(tag).map_or(0, |t| t.pending.len())
    }

    /// Bytes kept in total.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn given_up(&self, tag: &SenderTag) -> bool {
        self.tags.get(tag).is_some_and(|t| t.given_up)
    }

    /// The tag's state, made room for at [`SERVICE_REPLY_TAGS_MAX`] by forgetting the
    /// least recently used conversation with nothing pending.
    fn entry(&mut self, tag: &SenderTag, now_us: u64) -> Result<&mut TagReplies, NotKept> {
        if !self.tags.contains_key(tag) && self.tags.len() >= SERVICE_REPLY_TAGS_MAX {
            let idle = self
                .tags
                .iter()
                .filter(|(_, t)| t.pending.is_empty())
                .min_by_key(|(_, t)| t.used_us)
                .map(|(k, _)| *k);
            match idle {
                Some(idle) => {
                    self.tags.remove(&idle);
                }
                None => {
                    self.counters.tags_refused += 1;
                    return Err(NotKept::Tags);
                }
            }
        }
        let entry = self.tags.entry(*tag).or_default();
        entry.used_us = now_us;
        if entry.given_up {
            return Err(NotKept::GivenUp);
        }
        Ok(entry)
    }

    /// The next number of `tag`, for a response not kept (to a user who revealed its address:
    /// the client core acknowledges and resends those itself).
    pub fn number(&mut self, tag: &SenderTag, now_us: u64) -> Result<u64, NotKept> {
        let entry = self.entry(tag, now_us)?;
        let seq = entry.next_seq;
        entry.next_seq += 1;
        Ok(seq)
    }

    /// Numbers the response `encode(seq)` of `tag` and keeps it until acknowledged; returns
    /// the number and the bytes to send. Refused while the tag's window or the buffer is full
    /// (the caller waits for acknowledgements, [`Self::ack`]).
    pub fn keep(
        &mut self,
        tag: &SenderTag,
        now_us: u64,
        encode: impl FnOnce(u64) -> Vec<u8>,
    ) -> Result<(u64, Vec<u8>), NotKept> {
        let total = self.bytes;
        let entry = self.entry(tag, now_us)?;
        let seq = entry.next_seq;
        let bytes = encode(seq);
        let refused = if entry.pending.len() >= SERVICE_REPLY_TAG_PENDING_MAX
            || entry.bytes + bytes.len() > SERVICE_REPLY_TAG_BYTES_MAX
        {
            Some(NotKept::Window)
        } else if total + bytes.len() > SERVICE_REPLY_BYTES_MAX {
            Some(NotKept::Full)
        } else {
            None
        };
        if let Some(refused) = refused {
            self.counters.window_waits += 1;
            return Err(refused);
        }
        entry.next_seq += 1;
        entry.bytes += bytes.len();
        entry.progress_us = now_us;
        entry.pending.insert(
            seq,
            Pending {
                bytes: bytes.clone(),
                after_seq: seq + 1,
                sent_us: now_us,
                resends: 0,
                due: false,
            },
        );
        self.bytes += bytes.len();
        self.counters.kept += 1;
        Ok((seq, bytes))
    }

    /// The user's acknowledgement for `tag`: what it covers is released; what it shows
    /// overtaken becomes due. Returns how many responses it released.
    pub fn ack(&mut self, tag: &SenderTag, ack: &Ack, now_us: u64) -> usize {
        let Some(entry) = self.tags.get_mut(tag) else {
            self.counters.stray_acks += 1;
            return 0;
        };
        let before = entry.pending.len();
        let mut freed = 0;
        entry.pending.retain(|&seq, p| {
            let keep = !ack.covers(seq);
            if !keep {
                freed += p.bytes.len();
            }
            keep
        });
        let released = before - entry.pending.len();
        entry.bytes -= freed;
        self.bytes -= freed;
        if released > 0 {
            entry.progress_us = now_us;
            entry.used_us = now_us;
            self.counters.acked += released as u64;
        }
        if let Some(highest) = ack.highest() {
            for p in entry.pending.range_mut(..highest).map(|(_, p)| p) {
                let spaced =
                    p.resends == 0 || now_us >= p.sent_us.saturating_add(SERVICE_RESEND_SPACING_US);
                if !p.due && spaced && highest >= p.after_seq + SERVICE_REORDER_RESPONSES - 1 {
                    p.due = true;
                    self.counters.overtaken += 1;
                }
            }
        }
        released
    }

    /// What is due at `now_us`: overtaken responses, a tag's whole window after
    /// [`SERVICE_RESEND_AFTER_US`] without progress, and conversations to give up.
    pub fn due(&mut self, now_us: u64) -> Due {
        let mut due = Due::default();
        for (tag, entry) in &mut self.tags {
            if entry.given_up || entry.pending.is_empty() {
                continue;
            }
            if now_us >= entry.progress_us.saturating_add(SERVICE_RESEND_AFTER_US) {
                entry.progress_us = now_us;
                self.counters.timeouts += 1;
                for p in entry.pending.values_mut() {
                    p.due = true;
                }
            }
            let exhausted = entry
                .pending
                .values()
                .any(|p| p.due && p.resends >= SERVICE_RESENDS_MAX);
            if exhausted {
                entry.given_up = true;
                self.bytes -= entry.bytes;
                entry.bytes = 0;
                entry.pending.clear();
                self.counters.given_up += 1;
                due.given_up.push(*tag);
                continue;
            }
            due.resend.extend(
                entry
                    .pending
                    .iter()
                    .filter(|(_, p)| p.due)
                    .map(|(seq, _)| (*tag, *seq)),
            );
        }
        due
    }

    /// A SURB was found for due response `seq` of `tag`: its bytes to send again (`None` if
    /// it was acknowledged meanwhile).
    pub fn resend(&mut self, tag: &SenderTag, seq: u64, now_us: u64) -> Option<Vec<u8>> {
        let entry = self.tags.get_mut(tag)?;
        let next_seq = entry.next_seq;
        let p = entry.pending.get_mut(&seq)?;
        p.due = false;
        p.resends += 1;
        p.after_seq = next_seq;
        p.sent_us = now_us;
        self.counters.resent += 1;
        Some(p.bytes.clone())
    }

    /// The conversation is over: its responses are dropped.
    pub fn forget(&mut self, tag: &SenderTag) {
        if let Some(entry) = self.tags.remove(tag) {
            self.bytes -= entry.bytes;
        }
    }
}

/// What became of a response at the user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// New: hand it to the application.
    Fresh,
    /// Received before (a resend whose original arrived late).
    Duplicate,
    /// Further ahead than any provider's window: not ours, or garbage.
    OutOfWindow,
}

/// What the user's side asks its driver to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserAction {
    /// Send this acknowledgement (an ordinary message to the provider).
    Ack(Ack),
    /// A missing response has not come within [`SERVICE_GAP_GIVE_UP_US`]: end the
    /// conversation with an error.
    GiveUp,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TrackerCounters {
    pub fresh: u64,
    pub duplicates: u64,
    pub out_of_window: u64,
    pub acks: u64,
}

/// A user's view of one conversation's responses: which arrived, when to acknowledge, when
/// to give up.
#[derive(Debug, Default)]
pub struct ReplyTracker {
    next: u64,
    /// Received above `next` (fewer than [`SERVICE_REPLY_TAG_PENDING_MAX`]).
    above: BTreeSet<u64>,
    /// Arrivals not acknowledged yet, and when the first of them came.
    unacked: usize,
    first_unacked_us: Option<u64>,
    /// Since when a missing response holds up `next`.
    stuck_since_us: Option<u64>,
    gave_up: bool,
    counters: TrackerCounters,
}

impl ReplyTracker {
    pub fn new() -> ReplyTracker {
        ReplyTracker::default()
    }

    pub fn counters(&self) -> TrackerCounters {
        self.counters
    }

    /// Response `seq` arrived at `now_us`.
    pub fn on_response(&mut self, seq: u64, now_us: u64) -> Arrival {
        if seq < self.next || self.above.contains(&seq) {
            self.counters.duplicates += 1;
            // The provider resends what we have: it may be waiting for an acknowledgement.
            self.first_unacked_us.get_or_insert(now_us);
            return Arrival::Duplicate;
        }
        if seq - self.next >= SERVICE_REPLY_TAG_PENDING_MAX as u64 {
            self.counters.out_of_window += 1;
            return Arrival::OutOfWindow;
        }
        let next_before = self.next;
        self.above.insert(seq);
        while self.above.remove(&self.next) {
            self.next += 1;
        }
        self.stuck_since_us = if self.above.is_empty() {
            None
        } else if self.next != next_before {
            Some(now_us)
        } else {
            Some(self.stuck_since_us.unwrap_or(now_us))
        };
        self.unacked += 1;
        self.first_unacked_us.get_or_insert(now_us);
        self.counters.fresh += 1;
        Arrival::Fresh
    }

    /// What to do at `now_us`, if anything.
    pub fn poll(&mut self, now_us: u64) -> Option<UserAction> {
        if self.gave_up {
            return None;
        }
        if self
            .stuck_since_us
            .is_some_and(|since| now_us >= since.saturating_add(SERVICE_GAP_GIVE_UP_US))
        {
            self.gave_up = true;
            return Some(UserAction::GiveUp);
        }
        let ack_due = self.unacked >= SERVICE_ACK_EVERY
            || self
                .first_unacked_us
                .is_some_and(|first| now_us >= first.saturating_add(SERVICE_ACK_DELAY_US));
        if !ack_due {
            return None;
        }
        self.unacked = 0;
        self.first_unacked_us = None;
        self.counters.acks += 1;
        Some(UserAction::Ack(self.ack()))
    }

    /// When [`Self::poll`] may next have something to do.
    pub fn poll_timeout(&self) -> Option<u64> {
        if self.gave_up {
            return None;
        }
        [
            self.first_unacked_us
                .map(|t| t.saturating_add(SERVICE_ACK_DELAY_US)),
            self.stuck_since_us
                .map(|t| t.saturating_add(SERVICE_GAP_GIVE_UP_US)),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// What we received, as an acknowledgement.
    pub fn ack(&self) -> Ack {
        let mut ranges: Vec<(u64, u64)> = Vec::new();
        for &seq in &self.above {
            match ranges.last_mut() {
                Some((_, end)) if *end == seq => *end += 1,
                _ => {
                    if ranges.len() == SERVICE_ACK_RANGES_MAX {
                        break;
                    }
                    ranges.push((seq, seq + 1));
                }
            }
        }
        Ack {
            next: self.next,
            ranges,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tag(n: u8) -> SenderTag {
        SenderTag([n; super::super::SENDER_TAG_BYTES])
    }

    fn body(seq: u64) -> Vec<u8> {
        seq.to_be_bytes().repeat(100)
    }

    /// A provider and a user in simulated time over a channel that loses the responses
    /// `lost` picks (by number and copy) and delivers the others after `delay_us` in the
    /// order sent. The user acknowledges as its tracker says (acknowledgements are ordinary
    /// messages: the client core delivers them). Runs until the user has `count` responses or
    /// the provider gives up; returns the user's responses in order of arrival, the
    /// provider's counters and whether anyone gave up.
    fn run(
        count: u64,
        lost: impl Fn(u64, u32) -> bool,
        delay_us: u64,
    ) -> (Vec<u64>, ReplyCounters, TrackerCounters, bool) {
        let t = tag(1);
        let mut provider = ReplyBuffer::new();
        let mut user = ReplyTracker::new();
        let mut copies: HashMap<u64, u32> = HashMap::new();
        // (arrival time, seq) in flight to the user; acks in flight to the provider.
        let mut to_user: Vec<(u64, u64)> = Vec::new();
        let mut to_provider: Vec<(u64, Ack)> = Vec::new();
        let mut received = Vec::new();
        let mut next = 0u64;
        let mut gave_up = false;
        let step_us = 10_000;
        let mut send = |seq: u64, now: u64, to_user: &mut Vec<(u64, u64)>| {
            let copy = copies.entry(seq).or_insert(0);
            if !lost(seq, *copy) {
                to_user.push((now + delay_us, seq));
            }
            *copy += 1;
        };
        // Bounded: ten simulated minutes.
        for now in (0..600_000_000u64).step_by(step_us as usize) {
            while next < count {
                match provider.keep(&t, now, body) {
                    Ok((seq, bytes)) => {
                        assert_eq!(bytes, body(seq));
                        send(seq, now, &mut to_user);
                        next += 1;
                    }
                    Err(NotKept::Window) => break,
                    Err(e) => panic!("{e}"),
                }
            }
            let due = provider.due(now);
            if !due.given_up.is_empty() {
                gave_up = true;
            }
            for (tg, seq) in due.resend {
                assert_eq!(provider.resend(&tg, seq, now), Some(body(seq)));
                send(seq, now, &mut to_user);
            }
            to_user.sort_by_key(|(at, _)| *at);
            while to_user.first().is_some_and(|(at, _)| *at <= now) {
                let (_, seq) = to_user.remove(0);
                if user.on_response(seq, now) == Arrival::Fresh {
                    received.push(seq);
                }
            }
            match user.poll(now) {
                Some(UserAction::Ack(ack)) => {
                    assert!(ack.well_formed(), "{ack:?}");
                    to_provider.push((now + delay_us, ack));
                }
                Some(UserAction::GiveUp) => gave_up = true,
                None => {}
            }
            while to_provider.first().is_some_and(|(at, _)| *at <= now) {
                let (_, ack) = to_provider.remove(0);
                provider.ack(&t, &ack, now);
            }
            if gave_up || (received.len() as u64 == count && provider.pending(&t) == 0) {
                break;
            }
        }
        (received, provider.counters(), user.counters(), gave_up)
    }

    #[test]
    fn lost_responses_are_resent_and_arrive_once() {
        // Response 3 lost once (overtaken by later ones), 40 twice, and the last one, which
        // nothing overtakes, lost once (found by the timeout).
        let count = 200;
        let (received, provider, user, gave_up) = run(
            count,
            |seq, copy| {
                (seq == 3 && copy == 0) || (seq == 40 && copy < 2) || (seq == 199 && copy == 0)
            },
            50_000,
        );
        assert!(!gave_up);
        let mut sorted = received.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..count).collect::<Vec<_>>(), "each exactly once");
        assert!(provider.resent >= 4, "{provider:?}");
        assert!(provider.overtaken >= 2, "{provider:?}");
        assert!(provider.timeouts >= 1, "{provider:?}");
        assert_eq!(provider.acked, count);
        assert_eq!(provider.given_up, 0);
        assert!(user.acks >= 2, "{user:?}");
    }

    #[test]
    fn resends_are_bounded_and_the_conversation_given_up() {
        // Response 5 never arrives: resent SERVICE_RESENDS_MAX times, then given up.
        let (received, provider, _, gave_up) = run(50, |seq, _| seq == 5, 50_000);
        assert!(gave_up);
        assert!(!received.contains(&5));
        assert_eq!(provider.given_up, 1);
        assert_eq!(provider.resent, u64::from(SERVICE_RESENDS_MAX));
    }

    #[test]
    fn the_user_gives_up_on_a_gap() {
        let mut user = ReplyTracker::new();
        assert_eq!(user.on_response(1, 0), Arrival::Fresh);
        assert_eq!(user.on_response(1, 0), Arrival::Duplicate);
        assert_eq!(
            user.on_response(SERVICE_REPLY_TAG_PENDING_MAX as u64 + 5, 0),
            Arrival::OutOfWindow
        );
        let Some(UserAction::Ack(ack)) = user.poll(SERVICE_ACK_DELAY_US) else {
            panic!("an ack is due");
        };
        assert_eq!(
            ack,
            Ack {
                next: 0,
                ranges: vec![(1, 2)]
            }
        );
        assert_eq!(user.poll(SERVICE_GAP_GIVE_UP_US - 1), None);
        assert_eq!(user.poll(SERVICE_GAP_GIVE_UP_US), Some(UserAction::GiveUp));
        assert_eq!(user.poll(SERVICE_GAP_GIVE_UP_US * 2), None);
    }

    #[test]
    fn windows_and_totals_are_bounded() {
        let mut b = ReplyBuffer::new();
        let t = tag(2);
        for _ in 0..SERVICE_REPLY_TAG_PENDING_MAX {
            b.keep(&t, 0, |_| vec![0; 10]).unwrap();
        }
        assert_eq!(b.keep(&t, 0, |_| vec![0; 10]), Err(NotKept::Window));
        assert_eq!(b.counters().window_waits, 1);
        // An acknowledgement opens the window; a stray one counts.
        let released = b.ack(
            &t,
            &Ack {
                next: 10,
                ranges: vec![(20, 30)],
            },
            1,
        );
        assert_eq!(released, 20);
        assert!(b.keep(&t, 1, |_| vec![0; 10]).is_ok());
        b.ack(&tag(3), &Ack::default(), 1);
        assert_eq!(b.counters().stray_acks, 1);
        // Bytes per tag.
        let big = tag(4);
        let piece = SERVICE_REPLY_TAG_BYTES_MAX / 4;
        for _ in 0..4 {
            b.keep(&big, 0, |_| vec![0; piece]).unwrap();
        }
        assert_eq!(b.keep(&big, 0, |_| vec![0; 1]), Err(NotKept::Window));
        b.forget(&big);
        b.forget(&t);
        assert_eq!(b.bytes(), 0);
        // Conversations: idle ones make room, busy ones do not.
        for n in 0..SERVICE_REPLY_TAGS_MAX {
            let t = SenderTag((n as u128).to_be_bytes());
            b.number(&t, n as u64).unwrap();
        }
        assert!(b.keep(&tag(5), 0, |_| vec![1]).is_ok());
        assert!(b.number(&tag(6), 0).is_ok());
        let mut busy = ReplyBuffer::new();
        for n in 0..SERVICE_REPLY_TAGS_MAX {
            let t = SenderTag((n as u128).to_be_bytes());
            busy.keep(&t, 0, |_| vec![1]).unwrap();
        }
        assert_eq!(busy.number(&tag(6), 0), Err(NotKept::Tags));
        assert_eq!(busy.counters().tags_refused, 1);
    }

    #[test]
    fn acks_name_bounded_ranges() {
        let mut user = ReplyTracker::new();
        for seq in (1..200).step_by(2) {
            user.on_response(seq, 0);
        }
        let ack = user.ack();
        assert_eq!(ack.next, 0);
        assert_eq!(ack.ranges.len(), SERVICE_ACK_RANGES_MAX);
        assert_eq!(ack.ranges[0], (1, 2));
        assert!(ack.well_formed());
        assert!(!Ack {
            next: 5,
            ranges: vec![(3, 4)]
        }
        .well_formed());
        assert!(!Ack {
            next: 0,
            ranges: vec![(3, 6), (6, 7)]
        }
        .well_formed());
    }
}

//! ACK bookkeeping and retransmission scheduling, I/O-free (time is passed in, in µs).
//!
//! Every transmission of a fragment gets a fresh 40-bit ack id (its SURB-ACK names it). When
//! the transmission leaves, a timer is armed at `expected RTT × multiplier + addition` (Nym's
//! `ack_wait_multiplier` 1.5 and `ack_wait_addition` 1.5 s, the RTT being the sum of the
//! packet's and its ACK's sampled mix delays). An ACK for any transmission of the fragment
//! settles it. A timer firing asks for a retransmission (a fresh route and packet), up to
//! `max_retransmissions`, then gives up.
//!
//! A fragment is tracked from [`Tracker::track`] (its message was queued) until it is settled
//! (acknowledged or given up), and only then: a transmission of an untracked fragment is
//! refused, so a retransmission still queued when its fragment's ACK arrives never re-creates
//! the entry, never leaves, and can never be acknowledged a second time. Each tracked fragment
//! yields [`AckOutcome::Acked`] at most once.

use std::collections::{BTreeSet, HashMap};

use super::ack::ACK_ID_MAX;

/// One fragment of one outgoing message (the message's local sequence number and index).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FragmentKey {
    pub message: u64,
    pub index: u32,
}

#[derive(Debug, Clone, Copy)]
pub struct AckWait {
    pub multiplier: f64,
    pub addition_ms: u64,
}

impl Default for AckWait {
    fn default() -> Self {
        AckWait {
            multiplier: 1.5,
            addition_ms: 1500,
        }
    }
}

impl AckWait {
    pub fn timeout_us(&self, expected_rtt_ns: u64) -> u64 {
        let rtt_us = expected_rtt_ns as f64 / 1e3;
        let wait = (rtt_us * self.multiplier.max(0.0)).min(u64::MAX as f64 / 2.0) as u64;
        wait.saturating_add(self.addition_ms.saturating_mul(1000))
    }
}

struct Pending {
    /// Transmissions so far.
    sent: u32,
    deadline_us: Option<u64>,
    ack_ids: Vec<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckOutcome {
    /// The first ACK for this fragment.
    Acked(FragmentKey),
    /// An ACK for a fragment already settled, or for an id we do not track (loop cover's).
    Unknown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    Retransmit(FragmentKey),
    GiveUp(FragmentKey),
}

pub struct Tracker {
    wait: AckWait,
    max_retransmissions: Option<u32>,
    next_ack_id: u64,
    acks: HashMap<u64, FragmentKey>,
    pending: HashMap<FragmentKey, Pending>,
    timers: BTreeSet<(u64, FragmentKey)>,
}

impl Tracker {
    pub fn new(wait: AckWait, max_retransmissions: Option<u32>, first_ack_id: u64) -> Tracker {
        Tracker {
            wait,
            max_retransmissions,
            next_ack_id: first_ack_id & ACK_ID_MAX,
            acks: HashMap::new(),
            pending: HashMap::new(),
            timers: BTreeSet::new(),
        }
    }

    /// Fragments tracked and not yet settled (queued for a first transmission or in flight).
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    pub fn is_pending(&self, key: &FragmentKey) -> bool {
        self.pending.contains_key(key)
    }

    /// A fresh ack id for an untracked packet (loop cover): never matches a fragment.
    pub fn fresh_id(&mut self) -> u64 {
        let id = self.next_ack_id;
        self.next_ack_id = (self.next_ack_id + 1) & ACK_ID_MAX;
        id
    }

    /// Starts tracking `key` (its message was queued); `false` if it is tracked already.
    pub fn track(&mut self, key: FragmentKey) -> bool {
        if self.pending.contains_key(&key) {
            return false;
        }
        self.pending.insert(
            key,
            Pending {
                sent: 0,
                deadline_us: None,
                ack_ids: Vec::new(),
            },
        );
        true
    }

    /// A new transmission of `key` is being built: its ack id, or `None` if `key` is not
    /// tracked (settled: acknowledged or given up), when nothing must be sent. Never creates
    /// an entry: that is what let a late retransmission be acknowledged twice.
    pub fn transmission(&mut self, key: FragmentKey) -> Option<u64> {
        if !self.pending.contains_key(&key) {
            return None;
        }
        let id = self.fresh_id();
        // A stale mapping (after 2^40 ids) is overwritten.
        if let Some(stale) = self.acks.insert(id, key) {
            if stale != key {
                if let Some(other) = self.pending.get_mut(&stale) {
                    other.ack_ids.retain(|&old| old != id);
                }
            }
        }
        let pending = self.pending.get_mut(&key)?;
        pending.ack_ids.push(id);
        Some(id)
    }

    /// The transmission left at `now_us`; its route's expected round trip is given.
    pub fn sent(&mut self, key: FragmentKey, now_us: u64, expected_rtt_ns: u64) {
        let deadline = now_us.saturating_add(self.wait.timeout_us(expected_rtt_ns));
        if let Some(pending) = self.pending.get_mut(&key) {
            pending.sent = pending.sent.saturating_add(1);
            if let Some(old) = pending.deadline_us.replace(deadline) {
                self.timers.remove(&(old, key));
            }
            self.timers.insert((deadline, key));
        }
    }

    /// A transmission could not be sent (no connection, no route): try again at `retry_us`
    /// without counting it.
    pub fn not_sent(&mut self, key: FragmentKey, retry_us: u64) {
        if let Some(pending) = self.pending.get_mut(&key) {
            if let Some(old) = pending.deadline_us.replace(retry_us) {
                self.timers.remove(&(old, key));
            }
            self.timers.insert((retry_us, key));
        }
    }

    pub fn on_ack(&mut self, ack_id: u64) -> AckOutcome {
        let Some(key) = self.acks.get(&ack_id).copied() else {
            return AckOutcome::Unknown;
        };
        match self.settle(key) {
            true => AckOutcome::Acked(key),
            false => AckOutcome::Unknown,
        }
    }

    /// Stops tracking `key`; returns whether it was tracked.
    pub fn settle(&mut self, key: FragmentKey) -> bool {
        let Some(pending) = self.pending.remove(&key) else {
            return false;
        };
        for id in pending.ack_ids {
            // Only our own mappings (an id reused after 2^40 may name another fragment now).
            if self.acks.get(&id) == Some(&key) {
                self.acks.remove(&id);
            }
        }
        if let Some(deadline) = pending.deadline_us {
            self.timers.remove(&(deadline, key));
        }
        true
    }

    pub fn next_deadline(&self) -> Option<u64> {
        self.timers.first().map(|(deadline, _)| *deadline)
    }

    /// Timers that fired by `now_us`. A retransmission stays tracked (call
    /// [`Self::transmission`] and [`Self::sent`] again); a give-up is settled.
    pub fn due(&mut self, now_us: u64) -> Vec<Due> {
        let mut out = Vec::new();
        while let Some(&(deadline, key)) = self.timers.first() {
            if deadline > now_us {
                break;
            }
            self.timers.remove(&(deadline, key));
            let Some(pending) = self.pending.get_mut(&key) else {
                continue;
            };
            pending.deadline_us = None;
            let retransmissions = pending.sent.saturating_sub(1);
            let exhausted = self
                .max_retransmissions
                .is_some_and(|max| pending.sent > 0 && retransmissions >= max);
            if exhausted {
                self.settle(key);
                out.push(Due::GiveUp(key));
            } else {
                out.push(Due::Retransmit(key));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u32) -> FragmentKey {
        FragmentKey {
            message: 1,
            index: i,
        }
    }

    #[test]
    fn timeout_is_rtt_times_multiplier_plus_addition() {
        let wait = AckWait::default();
        assert_eq!(wait.timeout_us(0), 1_500_000);
        assert_eq!(wait.timeout_us(100_000_000), 1_650_000);
    }

    #[test]
    fn acked_fragments_are_not_retransmitted() {
        let mut t = Tracker::new(AckWait::default(), Some(2), 0);
        assert!(t.track(key(0)) && t.track(key(1)));
        assert!(!t.track(key(0)), "tracked once");
        let a = t.transmission(key(0)).unwrap();
        let _b = t.transmission(key(1)).unwrap();
        t.sent(key(0), 0, 100_000_000);
        t.sent(key(1), 0, 100_000_000);
        assert_eq!(t.next_deadline(), Some(1_650_000));
        assert_eq!(t.on_ack(a), AckOutcome::Acked(key(0)));
        assert_eq!(t.on_ack(a), AckOutcome::Unknown);
        assert!(t.due(1_649_999).is_empty());
        assert_eq!(t.due(1_650_000), vec![Due::Retransmit(key(1))]);
        assert_eq!(t.pending(), 1);
    }

    #[test]
    fn retransmits_up_to_the_maximum_then_gives_up() {
        let mut t = Tracker::new(AckWait::default(), Some(2), 0);
        let mut now = 0;
        let mut transmissions = 0;
        t.track(key(0));
        loop {
            t.transmission(key(0)).unwrap();
            t.sent(key(0), now, 0);
            transmissions += 1;
            now += 1_500_000;
            match t.due(now).as_slice() {
                [Due::Retransmit(k)] => assert_eq!(*k, key(0)),
                [Due::GiveUp(k)] => {
                    assert_eq!(*k, key(0));
                    break;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        // One transmission and two retransmissions.
        assert_eq!(transmissions, 3);
        assert_eq!(t.pending(), 0);
        assert!(t.next_deadline().is_none());
    }

    #[test]
    fn a_late_ack_of_an_earlier_transmission_settles() {
        let mut t = Tracker::new(AckWait::default(), None, ACK_ID_MAX);
        t.track(key(3));
        let first = t.transmission(key(3)).unwrap();
        assert_eq!(first, ACK_ID_MAX);
        t.sent(key(3), 0, 0);
        assert_eq!(t.due(1_500_000), vec![Due::Retransmit(key(3))]);
        let second = t.transmission(key(3)).unwrap();
        assert_eq!(second, 0, "ids wrap at 40 bits");
        t.sent(key(3), 1_500_000, 0);
        assert_eq!(t.on_ack(first), AckOutcome::Acked(key(3)));
        assert_eq!(t.on_ack(second), AckOutcome::Unknown);
        assert!(t.due(10_000_000).is_empty());
    }

    #[test]
    fn unlimited_retransmissions_never_give_up() {
        let mut t = Tracker::new(AckWait::default(), None, 0);
        t.track(key(0));
        for round in 0..50u64 {
            t.transmission(key(0)).unwrap();
            t.sent(key(0), round * 2_000_000, 0);
            assert_eq!(
                t.due(round * 2_000_000 + 1_500_000),
                vec![Due::Retransmit(key(0))]
            );
        }
    }

    #[test]
    fn not_sent_retries_without_counting() {
        let mut t = Tracker::new(AckWait::default(), Some(0), 0);
        t.track(key(0));
        t.transmission(key(0)).unwrap();
        t.not_sent(key(0), 100_000);
        assert_eq!(t.due(100_000), vec![Due::Retransmit(key(0))]);
        t.transmission(key(0)).unwrap();
        t.sent(key(0), 200_000, 0);
        assert_eq!(t.due(1_700_000), vec![Due::GiveUp(key(0))]);
    }

    /// A settled fragment is never transmitted or acknowledged again, whatever arrives
    /// when: the ACK while a retransmission is queued, a duplicate ACK, an ACK of an
    /// earlier transmission, an ACK after a give-up, a transmission after the settle.
    #[test]
    fn a_settled_fragment_stays_settled() {
        let mut t = Tracker::new(AckWait::default(), Some(3), 0);
        t.track(key(0));
        let first = t.transmission(key(0)).unwrap();
        t.sent(key(0), 0, 0);
        // The timer fires: the runtime queues a retransmission...
        assert_eq!(t.due(1_500_000), vec![Due::Retransmit(key(0))]);
        // ...and the ACK of the first transmission arrives before it leaves.
        assert_eq!(t.on_ack(first), AckOutcome::Acked(key(0)));
        // The queued retransmission is refused: no entry is re-created.
        assert_eq!(t.transmission(key(0)), None);
        t.sent(key(0), 1_600_000, 0);
        t.not_sent(key(0), 1_700_000);
        assert_eq!(t.pending(), 0);
        assert!(t.next_deadline().is_none());
        assert!(t.due(u64::MAX).is_empty());
        assert_eq!(t.on_ack(first), AckOutcome::Unknown, "duplicate ACK");

        // An ACK after a give-up counts nothing either.
        let mut t = Tracker::new(AckWait::default(), Some(0), 0);
        t.track(key(1));
        let only = t.transmission(key(1)).unwrap();
        t.sent(key(1), 0, 0);
        assert_eq!(t.due(1_500_000), vec![Due::GiveUp(key(1))]);
        assert_eq!(t.on_ack(only), AckOutcome::Unknown);
        assert_eq!(t.transmission(key(1)), None);
        assert!(!t.settle(key(1)));
    }

    /// Random interleavings of transmissions, timers and (duplicate, late, stale) ACKs against
    /// a model: every fragment is acknowledged at most once, only while tracked, and a
    /// settled fragment never gets another transmission.
    #[test]
    fn random_interleavings_ack_each_fragment_at_most_once() {
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut roll = move |sides: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % sides
        };
        for round in 0..200u64 {
            let fragments = 1 + roll(12) as u32;
            let max = [None, Some(0), Some(2), Some(5)][roll(4) as usize];
            let mut t = Tracker::new(AckWait::default(), max, roll(1 << 40));
            let mut acked = vec![0u32; fragments as usize];
            let mut given_up = vec![false; fragments as usize];
            let mut queued: Vec<FragmentKey> = (0..fragments).map(key).collect();
            for k in &queued {
                assert!(t.track(*k));
            }
            // Every ack id handed out (ACKs may come back any number of times).
            let mut ids: Vec<u64> = Vec::new();
            let mut now = 0u64;
            for _ in 0..2_000 {
                match roll(5) {
                    0 if !queued.is_empty() => {
                        let k = queued.remove(roll(queued.len() as u64) as usize);
                        let settled = acked[k.index as usize] > 0 || given_up[k.index as usize];
                        match t.transmission(k) {
                            Some(id) => {
                                assert!(!settled, "round {round}: settled {k:?} went again");
                                ids.push(id);
                                if roll(10) == 0 {
                                    t.not_sent(k, now + 100_000);
                                } else {
                                    t.sent(k, now, roll(50_000_000));
                                }
                            }
                            None => assert!(settled, "round {round}: live {k:?} refused"),
                        }
                    }
                    1 => {
                        now += roll(2_000_000);
                        for due in t.due(now) {
                            match due {
                                Due::Retransmit(k) => queued.push(k),
                                Due::GiveUp(k) => {
                                    assert!(!given_up[k.index as usize]);
                                    assert_eq!(acked[k.index as usize], 0);
                                    given_up[k.index as usize] = true;
                                }
                            }
                        }
                    }
                    _ if !ids.is_empty() => {
                        let id = ids[roll(ids.len() as u64) as usize];
                        if let AckOutcome::Acked(k) = t.on_ack(id) {
                            assert!(!given_up[k.index as usize], "round {round}");
                            acked[k.index as usize] += 1;
                        }
                    }
                    _ => {}
                }
                assert!(acked.iter().all(|&n| n <= 1), "round {round}: {acked:?}");
                let settled = (0..fragments as usize)
                    .filter(|&i| acked[i] > 0 || given_up[i])
                    .count();
                assert_eq!(t.pending(), fragments as usize - settled, "round {round}");
            }
        }
    }
}

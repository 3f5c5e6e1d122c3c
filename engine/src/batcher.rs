//! Collects items (packet handles) into batches, released when `batch_packets_max` are in or
//! when the oldest has waited `flush_us`. Time is an input (`now_us`); the batcher never
//! reads a clock.
//!
//! Driving order: `push` each arrival; after a turn of the loop call `poll(now_us)`; sleep no
//! longer than `next_flush_deadline_us()`. A released batch is a `Drain`: the items must be
//! consumed (a dropped `Drain` drops the rest, which for buffer handles means a leak).
//!
//! `flush_aligned(lanes)` is the early release for a caller with nothing more to read: it
//! releases a whole number of SIMD lane groups and keeps the rest (the newest) for the next
//! batch, because a batch one item past a lane group costs about as much as the next full
//! group (the X25519 ladder runs whole lane groups; figures: `bench/README.md`).

use std::vec::Drain;

pub struct Batcher<T> {
    items: Vec<T>,
    /// Arrival time of each pending item; the first (the oldest) starts the flush clock.
    arrivals_us: Vec<u64>,
    batch_packets_max: u32,
    flush_us: u64,
    /// A partial batch held for a fuller lane group is due at this instant (`hold`), if
    /// earlier than its flush deadline.
    hold_until_us: Option<u64>,
}

impl<T> Batcher<T> {
    /// Allocates room for one full batch now; pushing never allocates.
    pub fn new(batch_packets_max: u32, flush_us: u64) -> Self {
        assert!(batch_packets_max > 0);
        assert!(batch_packets_max <= crate::limits::BATCH_PACKETS_MAX);
        let items = Vec::with_capacity(batch_packets_max as usize);
        let arrivals_us = Vec::with_capacity(batch_packets_max as usize);
        assert!(items.capacity() >= batch_packets_max as usize);
        assert!(arrivals_us.capacity() >= batch_packets_max as usize);
        Batcher {
            items,
            arrivals_us,
            batch_packets_max,
            flush_us,
            hold_until_us: None,
        }
    }

    pub fn len(&self) -> u32 {
        self.items.len() as u32
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Adds an item; returns the batch if it is now full or its oldest item is due.
    /// The batch is released before it could outgrow its capacity, so a push always fits.
    pub fn push(&mut self, now_us: u64, item: T) -> Option<Drain<'_, T>> {
        debug_assert!(self.items.len() < self.batch_packets_max as usize);
        self.items.push(item);
        self.arrivals_us.push(now_us);
        debug_assert!(self.items.len() <= self.items.capacity());
        debug_assert_eq!(self.items.len(), self.arrivals_us.len());
        if self.is_due(now_us) {
            return Some(self.drain_all());
        }
        None
    }

    /// Releases the pending batch if its oldest item has waited `flush_us` (or it is full).
    pub fn poll(&mut self, now_us: u64) -> Option<Drain<'_, T>> {
        if self.is_due(now_us) {
            return Some(self.drain_all());
        }
        None
    }

    /// Releases whatever is pending (shutdown, or the caller has its own reason to send now).
    pub fn flush(&mut self) -> Drain<'_, T> {
        self.drain_all()
    }

    /// Releases the oldest `lanes * k` items for the largest such k, or everything if fewer
    /// than `lanes` are pending (a light load waits for nothing); the rest stay, their flush
    /// clock starting at the oldest of them (their arrival times stay with them). `lanes` 0
    /// or 1 releases everything.
    pub fn flush_aligned(&mut self, lanes: u32) -> Drain<'_, T> {
        let pending = self.items.len();
        let lanes = lanes.max(1) as usize;
        let count = if pending < lanes {
            pending
        } else {
            pending - pending % lanes
        };
        self.hold_until_us = None;
        self.arrivals_us.drain(..count);
        self.items.drain(..count)
    }

    /// Keeps the pending items for a fuller batch until `until_us` at the latest (or their
    /// flush deadline, if earlier); `poll` releases them then. No effect when empty.
    pub fn hold(&mut self, until_us: u64) {
        if !self.items.is_empty() {
            self.hold_until_us = Some(self.hold_until_us.map_or(until_us, |t| t.min(until_us)));
        }
    }

    /// Arrival time of the oldest pending item.
    pub fn oldest_us(&self) -> Option<u64> {
        self.arrivals_us.first().copied()
    }

    fn drain_all(&mut self) -> Drain<'_, T> {
        self.arrivals_us.clear();
        self.hold_until_us = None;
        self.items.drain(..)
    }

    /// When `poll` will next release a batch; `None` if nothing is pending.
    pub fn next_flush_deadline_us(&self) -> Option<u64> {
        let flush_us = self.oldest_us()?.saturating_add(self.flush_us);
        Some(self.hold_until_us.map_or(flush_us, |t| t.min(flush_us)))
    }

    fn is_due(&self, now_us: u64) -> bool {
        let Some(oldest_us) = self.oldest_us() else {
            return false;
        };
        if self.items.len() >= self.batch_packets_max as usize {
            return true;
        }
        if self.hold_until_us.is_some_and(|t| now_us >= t) {
            return true;
        }
        // A clock that went back counts as no time passed.
        now_us.saturating_sub(oldest_us) >= self.flush_us
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_when_full() {
        let mut batcher = Batcher::new(3, 1_000);
        assert!(batcher.push(0, 1).is_none());
        assert!(batcher.push(1, 2).is_none());
        let batch: Vec<u32> = batcher.push(2, 3).unwrap().collect();
        assert_eq!(batch, vec![1, 2, 3]);
        assert!(batcher.is_empty());
        assert_eq!(batcher.next_flush_deadline_us(), None);
    }

    #[test]
    fn releases_when_oldest_waited() {
        let mut batcher = Batcher::new(64, 100);
        assert!(batcher.push(1_000, 1).is_none());
        assert!(batcher.push(1_050, 2).is_none());
        assert_eq!(batcher.next_flush_deadline_us(), Some(1_100));
        assert!(batcher.poll(1_099).is_none());
        let batch: Vec<u32> = batcher.poll(1_100).unwrap().collect();
        assert_eq!(batch, vec![1, 2]);
        // The next batch's clock starts at its own first item.
        assert!(batcher.push(1_150, 3).is_none());
        assert_eq!(batcher.next_flush_deadline_us(), Some(1_250));
        assert!(batcher.poll(900).is_none()); // time going back releases nothing
    }

    #[test]
    fn aligned_flush_keeps_the_newest_partial_group() {
        let mut batcher = Batcher::new(64, 100);
        for (t, item) in (1_000..1_010).zip(1..=10) {
            assert!(batcher.push(t, item).is_none());
        }
        let batch: Vec<u32> = batcher.flush_aligned(8).collect();
        assert_eq!(batch, (1..=8).collect::<Vec<_>>());
        assert_eq!(batcher.len(), 2);
        // The kept items' clock starts at the older of them (item 9, at 1_008).
        assert_eq!(batcher.next_flush_deadline_us(), Some(1_108));
        assert!(batcher.poll(1_107).is_none());
        let rest: Vec<u32> = batcher.poll(1_108).unwrap().collect();
        assert_eq!(rest, vec![9, 10]);
        assert!(batcher.is_empty());
    }

    #[test]
    fn aligned_flush_releases_whole_groups_and_small_batches() {
        let mut batcher = Batcher::new(64, 100);
        for item in 0..16u32 {
            assert!(batcher.push(5, item).is_none());
        }
        assert_eq!(batcher.flush_aligned(8).count(), 16);
        assert_eq!(batcher.next_flush_deadline_us(), None);
        // Fewer than one group: all of it (light load does not wait).
        for item in 0..5u32 {
            assert!(batcher.push(7, item).is_none());
        }
        assert_eq!(batcher.flush_aligned(8).count(), 5);
        assert!(batcher.is_empty());
        // No alignment: everything.
        for item in 0..11u32 {
            assert!(batcher.push(9, item).is_none());
        }
        assert_eq!(batcher.flush_aligned(1).count(), 11);
        assert_eq!(batcher.flush_aligned(0).count(), 0);
        // A later push after a partial release still fills to capacity and releases it all.
        let mut small = Batcher::new(4, 1_000);
        for item in 0..3u32 {
            assert!(small.push(1, item).is_none());
        }
        assert_eq!(small.flush_aligned(2).count(), 2);
        assert!(small.push(2, 3).is_none());
        assert!(small.push(3, 4).is_none());
        assert_eq!(
            small.push(4, 5).unwrap().collect::<Vec<_>>(),
            vec![2, 3, 4, 5]
        );
    }

    #[test]
    fn a_hold_releases_at_its_deadline_or_when_full() {
        let mut batcher = Batcher::new(4, 1_000);
        batcher.hold(50); // empty: no effect
        assert!(batcher.push(100, 1).is_none());
        assert_eq!(batcher.oldest_us(), Some(100));
        batcher.hold(250);
        batcher.hold(300); // a later hold does not extend an earlier one
        assert_eq!(batcher.next_flush_deadline_us(), Some(250));
        assert!(batcher.poll(249).is_none());
        assert_eq!(batcher.poll(250).unwrap().count(), 1);
        assert_eq!(batcher.oldest_us(), None);
        // Released, the hold is gone: the next batch runs on its flush deadline.
        assert!(batcher.push(400, 2).is_none());
        assert_eq!(batcher.next_flush_deadline_us(), Some(1_400));
        // A held batch still goes as soon as it is full.
        batcher.hold(450);
        assert!(batcher.push(410, 3).is_none());
        assert!(batcher.push(420, 4).is_none());
        assert_eq!(batcher.push(430, 5).unwrap().count(), 4);
        assert_eq!(batcher.next_flush_deadline_us(), None);
    }

    #[test]
    fn zero_flush_releases_every_push() {
        let mut batcher = Batcher::new(8, 0);
        assert_eq!(batcher.push(5, 1).unwrap().count(), 1);
        assert!(batcher.poll(5).is_none());
    }
}

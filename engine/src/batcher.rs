//! Collects items (packet handles) into batches, released when `batch_packets_max` are in or
//! when the oldest has waited `flush_us`. Time is an input (`now_us`); the batcher never
//! reads a clock.
//!
//! Driving order: `push` each arrival; after a turn of the loop call `poll(now_us)`; sleep no
//! longer than `next_flush_deadline_us()`. A released batch is a `Drain`: the items must be
//! consumed (a dropped `Drain` drops the rest, which for buffer handles means a leak).

use std::vec::Drain;

pub struct Batcher<T> {
    items: Vec<T>,
    batch_packets_max: u32,
    flush_us: u64,
    /// Arrival time of the oldest pending item (meaningful only when `items` is non-empty).
    oldest_us: u64,
}

impl<T> Batcher<T> {
    /// Allocates room for one full batch now; pushing never allocates.
    pub fn new(batch_packets_max: u32, flush_us: u64) -> Self {
        assert!(batch_packets_max > 0);
        assert!(batch_packets_max <= crate::limits::BATCH_PACKETS_MAX);
        let items = Vec::with_capacity(batch_packets_max as usize);
        assert!(items.capacity() >= batch_packets_max as usize);
        Batcher {
            items,
            batch_packets_max,
            flush_us,
            oldest_us: 0,
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
        if self.items.is_empty() {
            self.oldest_us = now_us;
        }
        self.items.push(item);
        debug_assert!(self.items.len() <= self.items.capacity());
        if self.is_due(now_us) {
            return Some(self.items.drain(..));
        }
        None
    }

    /// Releases the pending batch if its oldest item has waited `flush_us` (or it is full).
    pub fn poll(&mut self, now_us: u64) -> Option<Drain<'_, T>> {
        if self.is_due(now_us) {
            return Some(self.items.drain(..));
        }
        None
    }

    /// Releases whatever is pending (shutdown, or the caller has its own reason to send now).
    pub fn flush(&mut self) -> Drain<'_, T> {
        self.items.drain(..)
    }

    /// When `poll` will next release a batch; `None` if nothing is pending.
    pub fn next_flush_deadline_us(&self) -> Option<u64> {
        if self.items.is_empty() {
            return None;
        }
        Some(self.oldest_us.saturating_add(self.flush_us))
    }

    fn is_due(&self, now_us: u64) -> bool {
        if self.items.is_empty() {
            return false;
        }
        if self.items.len() >= self.batch_packets_max as usize {
            return true;
        }
        // A clock that went back counts as no time passed.
        now_us.saturating_sub(self.oldest_us) >= self.flush_us
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
    fn zero_flush_releases_every_push() {
        let mut batcher = Batcher::new(8, 0);
        assert_eq!(batcher.push(5, 1).unwrap().count(), 1);
        assert!(batcher.poll(5).is_none());
    }
}

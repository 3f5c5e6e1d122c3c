//! The simulator's event queue: a binary heap of 16-byte keys (time, then the order events
//! were scheduled in) over a slab that holds the events themselves. A heap moves its entries
//! at every push and pop (about log2 of its length each); with the events inside the entries
//! that was most of a large run's memory traffic, so the heap moves keys only and an event is
//! written once into its slot and read once out of it.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use super::config::EVENTS_MAX;
use super::slab::Slab;

/// Bits of a key's order word that name the event's slot; the bits above them hold the
/// sequence number, so comparing order words compares sequence numbers.
const SLOT_BITS: u32 = 24;
const SLOT_MASK: u64 = (1 << SLOT_BITS) - 1;
/// Events pending at once (scheduled, not yet run).
pub const EVENTS_PENDING_MAX: u32 = 1 << SLOT_BITS;
/// Sequence numbers a run may use: every event scheduled was either run (at most
/// `EVENTS_MAX` + 1 before the run stops) or is still pending.
const SEQ_MAX: u64 = (1 << (64 - SLOT_BITS)) - 1;
const _: () = assert!(EVENTS_MAX + 1 + EVENTS_PENDING_MAX as u64 <= SEQ_MAX);

/// Earliest first; among events at the same instant, the first scheduled first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    t_ns: u64,
    /// `seq << SLOT_BITS | slot`.
    order: u64,
}

const _: () = assert!(std::mem::size_of::<Key>() == 16);

/// More events pending than [`EVENTS_PENDING_MAX`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueFull;

pub struct Queue<E> {
    heap: BinaryHeap<Reverse<Key>>,
    events: Slab<E>,
    seq: u64,
}

impl<E> Queue<E> {
    pub fn new() -> Queue<E> {
        Queue {
            heap: BinaryHeap::new(),
            events: Slab::new(EVENTS_PENDING_MAX),
            seq: 0,
        }
    }

    pub fn push(&mut self, t_ns: u64, event: E) -> Result<(), QueueFull> {
        let slot = self.events.insert(event).ok_or(QueueFull)?;
        // Bounded by SEQ_MAX (see there): the run stops before it could overflow.
        self.seq += 1;
        let order = self.seq << SLOT_BITS | u64::from(slot);
        self.heap.push(Reverse(Key { t_ns, order }));
        Ok(())
    }

    /// The earliest event and its time.
    pub fn pop(&mut self) -> Option<(u64, E)> {
        // Every key names a filled slot: one turn. A key without one is skipped, not trusted.
        for _ in 0..=self.heap.len() {
            let Reverse(key) = self.heap.pop()?;
            if let Some(event) = self.events.take((key.order & SLOT_MASK) as u32) {
                return Some((key.t_ns, event));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pops_by_time_then_in_scheduling_order_and_reuses_slots() {
        let mut queue = Queue::new();
        for (t, what) in [(5, 'a'), (1, 'b'), (5, 'c'), (0, 'd'), (1, 'e')] {
            queue.push(t, what).unwrap();
        }
        let mut out = Vec::new();
        while let Some(popped) = queue.pop() {
            out.push(popped);
        }
        assert_eq!(out, [(0, 'd'), (1, 'b'), (1, 'e'), (5, 'a'), (5, 'c')]);
        // Five slots freed: the next five pushes take them, not new ones.
        for t in 0..5 {
            queue.push(t, 'x').unwrap();
        }
        assert_eq!(queue.events.slots_count(), 5);
        assert_eq!(queue.heap.len(), 5);
    }
}

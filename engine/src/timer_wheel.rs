//! Hierarchical timer wheel: one per core, no locks, no allocation after construction.
//!
//! Time is in *ticks* (`u64`), supplied by the caller; [`TickClock`] converts microseconds.
//! `TIMER_LEVELS` levels of 64 slots: level `i` slots are `64^i` ticks wide. An entry sits at the
//! level of the highest 6-bit digit in which its deadline differs from the wheel's current tick
//! (`elapsed`), so lower levels always expire first and the next expiring slot is found from
//! one occupancy bitmap per level. When a higher-level slot comes due its entries move down
//! (cascade); each entry moves at most `TIMER_LEVELS - 1` times, so insert and expiry are O(1)
//! amortised, whatever the jump in time.
//!
//! Entries live in a slab fixed at construction, linked by `u32` indices (per-slot singly-linked
//! lists and an intrusive free list).
//!
//! Guarantees: an item fires in the first `advance(now)` with `now >= deadline` (never early,
//! never lost). Order: items fired by one call come out in non-decreasing deadline order, except
//! items inserted already due, which join the ready queue at its tail; within a tick the order is
//! unspecified (not FIFO).
//!
//! Deadlines later than `elapsed + delay_ticks_max` are **clamped** to it, as Nym clamps forward
//! delays to 10 s: a corrupt or hostile delay must not pin a buffer for longer, and dropping the
//! packet instead would turn a clamp into a loss. `insert` returns the effective deadline.

use crate::limits::{TIMER_DELAY_TICKS_LIMIT, TIMER_LEVELS, TIMER_SLOTS, TIMER_SLOT_BITS};

pub type Tick = u64;

const NIL: u32 = u32::MAX;
const LEVELS: usize = TIMER_LEVELS as usize;
const SLOTS: usize = TIMER_SLOTS as usize;
const SLOT_MASK: u64 = TIMER_SLOTS as u64 - 1;

/// The wheel is full; the item is handed back (the caller counts an overload drop).
#[derive(Debug, PartialEq, Eq)]
pub struct Full<T>(pub T);

/// Intrusive singly-linked list with O(1) push at both ends.
#[derive(Clone, Copy)]
struct List {
    head: u32,
    tail: u32,
}

impl List {
    const EMPTY: List = List {
        head: NIL,
        tail: NIL,
    };

    fn is_empty(&self) -> bool {
        self.head == NIL
    }
}

pub struct TimerWheel<T> {
    // Entries as parallel arrays: list walks (cascades) touch only the small `links` and
    // `deadlines`, and items are read once, when they fire.
    links: Box<[u32]>,
    deadlines: Box<[Tick]>,
    items: Box<[Option<T>]>,
    free_head: u32,
    len: u32,
    /// Every deadline `<= elapsed` has been moved to `ready` (or fired).
    elapsed: Tick,
    delay_ticks_max: u64,
    slots: [[List; SLOTS]; LEVELS],
    occupied: [u64; LEVELS],
    /// Due entries not yet handed out (the `fired_max` budget ran out, or inserted already due).
    ready: List,
}

fn level_for(elapsed: Tick, deadline: Tick) -> usize {
    debug_assert!(deadline > elapsed);
    let masked = (elapsed ^ deadline) | SLOT_MASK;
    let significant = u64::BITS - 1 - masked.leading_zeros();
    // Crossing a top-level boundary lands in the (cyclic) top level.
    ((significant / TIMER_SLOT_BITS) as usize).min(LEVELS - 1)
}

fn slot_for(deadline: Tick, level: usize) -> usize {
    ((deadline >> (level as u32 * TIMER_SLOT_BITS)) & SLOT_MASK) as usize
}

impl<T> TimerWheel<T> {
    /// `capacity` entries, all allocated now. `start` is the current tick.
    pub fn new(capacity: u32, delay_ticks_max: u64, start: Tick) -> Self {
        assert!(capacity > 0);
        assert!(capacity < NIL);
        assert!(delay_ticks_max > 0);
        assert!(delay_ticks_max <= TIMER_DELAY_TICKS_LIMIT);
        let links: Box<[u32]> = (0..capacity)
            .map(|i| if i + 1 < capacity { i + 1 } else { NIL })
            .collect();
        let deadlines = vec![0; capacity as usize].into_boxed_slice();
        let items: Box<[Option<T>]> = (0..capacity).map(|_| None).collect();
        assert_eq!(links.len(), capacity as usize);
        assert_eq!(items.len(), capacity as usize);
        TimerWheel {
            links,
            deadlines,
            items,
            free_head: 0,
            len: 0,
            elapsed: start,
            delay_ticks_max,
            slots: [[List::EMPTY; SLOTS]; LEVELS],
            occupied: [0; LEVELS],
            ready: List::EMPTY,
        }
    }

    pub fn len(&self) -> u32 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn capacity(&self) -> u32 {
        self.links.len() as u32
    }

    /// The wheel's current tick: the `now` of the latest `advance` (or `start`).
    pub fn elapsed(&self) -> Tick {
        self.elapsed
    }

    pub fn delay_ticks_max(&self) -> u64 {
        self.delay_ticks_max
    }

    /// Schedules `item` at `deadline` (clamped to `elapsed + delay_ticks_max`); a deadline
    /// `<= elapsed` fires on the next `advance`. Returns the effective deadline.
    pub fn insert(&mut self, deadline: Tick, item: T) -> Result<Tick, Full<T>> {
        let index = self.free_head;
        if index == NIL {
            debug_assert_eq!(self.len, self.capacity());
            return Err(Full(item));
        }
        let deadline = deadline.min(self.elapsed.saturating_add(self.delay_ticks_max));
        let i = index as usize;
        debug_assert!(self.items[i].is_none());
        self.free_head = self.links[i];
        self.deadlines[i] = deadline;
        self.items[i] = Some(item);
        self.len += 1;
        self.schedule(index);
        Ok(deadline)
    }

    /// Advances to `now` (a `now` behind `elapsed` is treated as `elapsed`: time never goes
    /// back) and hands at most `fired_max` due items to `on_expired`. Returns how many fired;
    /// if that equals `fired_max`, more may be due: `next_deadline()` then returns `<= now`.
    pub fn advance(&mut self, now: Tick, fired_max: u32, mut on_expired: impl FnMut(T)) -> u32 {
        self.collect_due(now);
        let mut fired = 0;
        while fired < fired_max {
            let index = self.ready.head;
            if index == NIL {
                break;
            }
            self.ready.head = self.links[index as usize];
            if self.ready.head == NIL {
                self.ready.tail = NIL;
            }
            let item = self.release(index);
            fired += 1;
            on_expired(item);
        }
        fired
    }

    /// Like `advance`, pushing into `out` but never beyond its spare capacity, so it never
    /// allocates.
    pub fn advance_into(&mut self, now: Tick, out: &mut Vec<T>) -> u32 {
        let spare = out.capacity() - out.len();
        let fired_max = u32::try_from(spare).unwrap_or(u32::MAX);
        let fired = self.advance(now, fired_max, |item| out.push(item));
        debug_assert!(out.len() <= out.capacity());
        fired
    }

    /// The earliest tick at which `advance` has work: `elapsed` if items are already due,
    /// otherwise the start of the next occupied slot (a lower bound on the earliest deadline,
    /// exact when that slot is on level 0). `None` if the wheel is empty.
    pub fn next_deadline(&self) -> Option<Tick> {
        if !self.ready.is_empty() {
            return Some(self.elapsed);
        }
        let next = (0..LEVELS)
            .find_map(|level| self.next_slot(level))
            .map(|(_, _, start)| start);
        debug_assert_eq!(next.is_none(), self.len == 0);
        next
    }

    /// Moves every entry with `deadline <= now` to `ready`, cascading higher slots on the way.
    fn collect_due(&mut self, now: Tick) {
        while let Some((level, slot, start)) = (0..LEVELS).find_map(|l| self.next_slot(l)) {
            if start > now {
                break;
            }
            debug_assert!(start >= self.elapsed);
            self.elapsed = start;
            let list = std::mem::replace(&mut self.slots[level][slot], List::EMPTY);
            self.occupied[level] &= !(1u64 << slot);
            if level == 0 {
                self.splice_ready(list);
            } else {
                self.cascade(list, level);
            }
        }
        self.elapsed = self.elapsed.max(now);
    }

    /// A level-0 slot is one tick wide: all of it is due at once, so it joins `ready` in O(1).
    fn splice_ready(&mut self, list: List) {
        debug_assert!(!list.is_empty());
        debug_assert_eq!(self.deadlines[list.head as usize], self.elapsed);
        debug_assert_eq!(self.links[list.tail as usize], NIL);
        if self.ready.tail == NIL {
            self.ready.head = list.head;
        } else {
            self.links[self.ready.tail as usize] = list.head;
        }
        self.ready.tail = list.tail;
    }

    fn cascade(&mut self, list: List, level: usize) {
        let mut index = list.head;
        while index != NIL {
            let next = self.links[index as usize];
            // Entries of a slot share every digit from `level` up with `elapsed`, so they either
            // are due or go strictly lower.
            debug_assert!(
                self.deadlines[index as usize] <= self.elapsed
                    || level_for(self.elapsed, self.deadlines[index as usize]) < level
            );
            self.schedule(index);
            index = next;
        }
    }

    /// Links `index` into `ready` (if due) or into its slot.
    fn schedule(&mut self, index: u32) {
        let deadline = self.deadlines[index as usize];
        if deadline <= self.elapsed {
            self.links[index as usize] = NIL;
            if self.ready.tail == NIL {
                self.ready.head = index;
            } else {
                self.links[self.ready.tail as usize] = index;
            }
            self.ready.tail = index;
            return;
        }
        debug_assert!(deadline - self.elapsed <= self.delay_ticks_max);
        let level = level_for(self.elapsed, deadline);
        let slot = slot_for(deadline, level);
        let list = &mut self.slots[level][slot];
        self.links[index as usize] = list.head;
        if list.head == NIL {
            list.tail = index;
        }
        list.head = index;
        self.occupied[level] |= 1u64 << slot;
    }

    /// First occupied slot of `level` at or after the current one (cyclically), and its start.
    fn next_slot(&self, level: usize) -> Option<(usize, usize, Tick)> {
        let occupied = self.occupied[level];
        if occupied == 0 {
            return None;
        }
        let shift = level as u32 * TIMER_SLOT_BITS;
        let current = (self.elapsed >> shift) & SLOT_MASK;
        let distance = u64::from(occupied.rotate_right(current as u32).trailing_zeros());
        let slot = ((current + distance) & SLOT_MASK) as usize;
        let level_range_mask = (1u64 << (shift + TIMER_SLOT_BITS)) - 1;
        let base = self.elapsed & !level_range_mask;
        let start = base.wrapping_add((current + distance) << shift);
        Some((level, slot, start))
    }

    fn release(&mut self, index: u32) -> T {
        let i = index as usize;
        debug_assert!(self.deadlines[i] <= self.elapsed);
        let item = self.items[i].take();
        self.links[i] = self.free_head;
        self.free_head = index;
        debug_assert!(self.len > 0);
        self.len -= 1;
        match item {
            Some(item) => item,
            // A linked entry always holds an item: a broken slab is a bug, not an input.
            None => unreachable!("timer entry {index} linked without an item"),
        }
    }
}

/// Converts microseconds to ticks: deadlines round up, `now` rounds down, so nothing fires
/// early and the tick adds at most one tick of lateness.
#[derive(Clone, Copy, Debug)]
pub struct TickClock {
    tick_us: u64,
}

impl TickClock {
    pub fn new(tick_us: u64) -> Self {
        assert!(tick_us > 0);
        TickClock { tick_us }
    }

    pub fn tick_us(&self) -> u64 {
        self.tick_us
    }

    pub fn deadline_tick(&self, deadline_us: u64) -> Tick {
        deadline_us.div_ceil(self.tick_us)
    }

    pub fn now_tick(&self, now_us: u64) -> Tick {
        now_us / self.tick_us
    }

    pub fn tick_start_us(&self, tick: Tick) -> u64 {
        tick.saturating_mul(self.tick_us)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(wheel: &mut TimerWheel<u32>, now: Tick) -> Vec<u32> {
        let mut out = Vec::new();
        wheel.advance(now, u32::MAX, |i| out.push(i));
        out
    }

    #[test]
    fn fires_at_deadline_not_before() {
        let mut wheel = TimerWheel::new(16, 10_000, 0);
        assert_eq!(wheel.insert(5, 1), Ok(5));
        assert_eq!(wheel.insert(64, 2), Ok(64));
        assert_eq!(wheel.insert(4_097, 3), Ok(4_097));
        assert_eq!(wheel.next_deadline(), Some(5));
        assert!(drain(&mut wheel, 4).is_empty());
        assert_eq!(drain(&mut wheel, 5), vec![1]);
        assert_eq!(wheel.next_deadline(), Some(64));
        assert!(drain(&mut wheel, 63).is_empty());
        assert_eq!(drain(&mut wheel, 64), vec![2]);
        assert!(drain(&mut wheel, 4_096).is_empty());
        assert_eq!(drain(&mut wheel, 4_097), vec![3]);
        assert!(wheel.is_empty());
        assert_eq!(wheel.next_deadline(), None);
    }

    #[test]
    fn past_deadline_fires_next_advance_and_clamp_applies() {
        let mut wheel = TimerWheel::new(4, 100, 1_000);
        assert_eq!(wheel.insert(10, 7), Ok(10));
        assert_eq!(wheel.next_deadline(), Some(1_000));
        assert_eq!(wheel.insert(u64::MAX, 8), Ok(1_100));
        assert_eq!(drain(&mut wheel, 1_000), vec![7]);
        assert!(drain(&mut wheel, 1_099).is_empty());
        assert_eq!(drain(&mut wheel, 1_100), vec![8]);
    }

    #[test]
    fn full_returns_item_and_budget_limits_firing() {
        let mut wheel = TimerWheel::new(2, 100, 0);
        assert_eq!(wheel.insert(1, 1), Ok(1));
        assert_eq!(wheel.insert(1, 2), Ok(1));
        assert_eq!(wheel.insert(1, 3), Err(Full(3)));
        let mut out = Vec::with_capacity(1);
        assert_eq!(wheel.advance_into(50, &mut out), 1);
        assert_eq!(wheel.next_deadline(), Some(50));
        out.clear();
        assert_eq!(wheel.advance_into(50, &mut out), 1);
        assert!(wheel.is_empty());
    }

    #[test]
    fn crossing_the_top_level_boundary() {
        let top = 1u64 << (TIMER_SLOT_BITS * TIMER_LEVELS);
        let mut wheel = TimerWheel::new(4, TIMER_DELAY_TICKS_LIMIT, top - 3);
        assert_eq!(wheel.insert(top + 5, 1), Ok(top + 5));
        assert_eq!(
            wheel
                .insert(top - 3 + TIMER_DELAY_TICKS_LIMIT, 2)
                .map(|_| ()),
            Ok(())
        );
        assert!(drain(&mut wheel, top + 4).is_empty());
        assert_eq!(drain(&mut wheel, top + 5), vec![1]);
        assert!(drain(&mut wheel, top - 4 + TIMER_DELAY_TICKS_LIMIT).is_empty());
        assert_eq!(
            drain(&mut wheel, top - 3 + TIMER_DELAY_TICKS_LIMIT),
            vec![2]
        );
    }

    #[test]
    fn tick_clock_rounds_safely() {
        let clock = TickClock::new(1_000);
        assert_eq!(clock.deadline_tick(1_001), 2);
        assert_eq!(clock.deadline_tick(1_000), 1);
        assert_eq!(clock.now_tick(1_999), 1);
    }
}

//! A slab: values in reusable slots named by a `u32`, the last freed slot reused first (so
//! the slots in use stay few and warm in cache). The event queue keeps its events in one, and
//! each engine node the packets it holds (a slot is the tag the engine core keeps with the
//! packet's buffer).

pub struct Slab<T> {
    slots: Vec<Option<T>>,
    free: Vec<u32>,
    /// Slots at most.
    slots_max: usize,
}

impl<T> Slab<T> {
    pub fn new(slots_max: u32) -> Slab<T> {
        Slab {
            slots: Vec::new(),
            free: Vec::new(),
            slots_max: slots_max as usize,
        }
    }

    /// Stores `value` and names its slot; `None` if every slot is taken.
    pub fn insert(&mut self, value: T) -> Option<u32> {
        if let Some(slot) = self.free.pop() {
            self.slots[slot as usize] = Some(value);
            return Some(slot);
        }
        if self.slots.len() >= self.slots_max {
            return None;
        }
        self.slots.push(Some(value));
        Some((self.slots.len() - 1) as u32)
    }

    /// Takes the value out of `slot` (which is then free), if it holds one.
    pub fn take(&mut self, slot: u32) -> Option<T> {
        let value = self.slots.get_mut(slot as usize)?.take()?;
        self.free.push(slot);
        Some(value)
    }

    /// Slots ever used (taken or free).
    #[cfg(test)]
    pub fn slots_count(&self) -> usize {
        self.slots.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuses_the_last_freed_slot_and_refuses_past_its_limit() {
        let mut slab = Slab::new(2);
        let a = slab.insert('a').unwrap();
        let b = slab.insert('b').unwrap();
        assert_eq!(slab.insert('c'), None);
        assert_eq!(slab.take(a), Some('a'));
        assert_eq!(slab.take(a), None);
        assert_eq!(slab.insert('d'), Some(a));
        assert_eq!(slab.take(b), Some('b'));
        assert_eq!(slab.take(7), None);
        assert_eq!(slab.slots_count(), 2);
    }
}

//! Reordering one direction of a relayed connection: chunks arrive in any order (independent
//! mixnet routes and delays) and leave in `seq` order. Bounded: a chunk that would push the
//! buffered bytes past the limit is refused (the connection is then closed by the caller).

use std::collections::BTreeMap;

#[derive(Debug)]
pub struct Ordered {
    next_seq: u64,
    pending: BTreeMap<u64, (Vec<u8>, bool)>,
    buffered_bytes: usize,
    buffered_bytes_max: usize,
    finished: bool,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum OrderedError {
    #[error("reorder buffer full")]
    Full,
}

impl Ordered {
    pub fn new(buffered_bytes_max: usize) -> Ordered {
        Ordered {
            next_seq: 0,
            pending: BTreeMap::new(),
            buffered_bytes: 0,
            buffered_bytes_max,
            finished: false,
        }
    }

    /// Adds a chunk; duplicates and chunks already delivered are ignored.
    pub fn push(&mut self, seq: u64, bytes: Vec<u8>, closed: bool) -> Result<(), OrderedError> {
        if seq < self.next_seq || self.pending.contains_key(&seq) || self.finished {
            return Ok(());
        }
        if self.buffered_bytes + bytes.len() > self.buffered_bytes_max {
            return Err(OrderedError::Full);
        }
        self.buffered_bytes += bytes.len();
        self.pending.insert(seq, (bytes, closed));
        Ok(())
    }

    /// The next in-order chunk, if it has arrived: `(bytes, closed)`.
    pub fn pop(&mut self) -> Option<(Vec<u8>, bool)> {
        let (bytes, closed) = self.pending.remove(&self.next_seq)?;
        self.next_seq += 1;
        self.buffered_bytes -= bytes.len();
        if closed {
            self.finished = true;
            self.pending.clear();
            self.buffered_bytes = 0;
        }
        Some((bytes, closed))
    }

    pub fn is_finished(&self) -> bool {
        self.finished
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reorders_and_deduplicates() {
        let mut o = Ordered::new(1000);
        o.push(2, b"c".to_vec(), true).unwrap();
        o.push(1, b"b".to_vec(), false).unwrap();
        assert_eq!(o.pop(), None);
        o.push(0, b"a".to_vec(), false).unwrap();
        o.push(0, b"a".to_vec(), false).unwrap();
        let mut out = Vec::new();
        while let Some((b, closed)) = o.pop() {
            out.extend(b);
            if closed {
                break;
            }
        }
        assert_eq!(out, b"abc");
        assert!(o.is_finished());
        o.push(3, b"late".to_vec(), false).unwrap();
        assert_eq!(o.pop(), None);
    }

    #[test]
    fn bounded() {
        let mut o = Ordered::new(10);
        o.push(1, vec![0; 8], false).unwrap();
        assert_eq!(o.push(2, vec![0; 8], false), Err(OrderedError::Full));
    }
}

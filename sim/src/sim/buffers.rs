//! Spare packet buffers. Every hop copies a packet into its engine core's pool and, when the
//! core hands it out again, back out into bytes for the link; a fresh allocation for each of
//! those (a few kB, too large for the allocator's fast per-thread caches) and its free at the
//! next hop were a steady cost of every hop. Buffers done with come back here and the next
//! copy reuses one.

/// Spare buffers kept at most: more than a run has in flight at once is never reused.
pub const SPARE_BUFFERS_MAX: usize = 4_096;

#[derive(Default)]
pub struct Buffers {
    spare: Vec<Vec<u8>>,
}

impl Buffers {
    /// `bytes`, copied into a spare buffer if there is one.
    pub fn copy_of(&mut self, bytes: &[u8]) -> Vec<u8> {
        match self.spare.pop() {
            Some(mut buffer) => {
                buffer.clear();
                buffer.extend_from_slice(bytes);
                buffer
            }
            None => bytes.to_vec(),
        }
    }

    /// A buffer whose bytes are no longer needed.
    pub fn give_back(&mut self, buffer: Vec<u8>) {
        if self.spare.len() < SPARE_BUFFERS_MAX && buffer.capacity() > 0 {
            self.spare.push(buffer);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_given_back_is_reused_with_the_new_bytes() {
        let mut buffers = Buffers::default();
        let first = buffers.copy_of(&[1, 2, 3, 4]);
        let address = first.as_ptr();
        buffers.give_back(first);
        let second = buffers.copy_of(&[9, 8]);
        assert_eq!(second, [9, 8]);
        assert_eq!(second.as_ptr(), address);
    }
}

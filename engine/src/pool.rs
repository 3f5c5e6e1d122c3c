//! Per-core packet-buffer pool: `count` buffers of `buffer_bytes` each, allocated once at
//! construction and handed out as [`BufId`] indices. No locks (`&mut self`, one per core) and
//! no allocation after construction.
//!
//! `BufId` is neither `Copy` nor `Clone`: ownership makes a double free a compile error in
//! ordinary code. `from_raw` exists for handles that must round-trip through a `u64` (io_uring
//! user data); freeing a handle twice through it trips an `assert!` (a bug, not an input).

use crate::limits::{BUFFER_ALIGN_BYTES, POOL_BUFFERS_MAX};

#[derive(Debug, PartialEq, Eq, Hash)]
pub struct BufId(u32);

impl BufId {
    pub fn index(&self) -> u32 {
        self.0
    }

    pub fn into_raw(self) -> u32 {
        self.0
    }

    /// Rebuilds a handle from `into_raw`. The caller must own that buffer.
    pub fn from_raw(raw: u32) -> Self {
        BufId(raw)
    }
}

pub struct BufferPool {
    bytes: Box<[u8]>,
    /// Offset of buffer 0 in `bytes`, so every buffer starts on a cache line.
    base: usize,
    stride: usize,
    buffer_bytes: u32,
    count: u32,
    /// Stack of free indices (LIFO keeps recently used, cache-warm buffers in play).
    free: Vec<u32>,
    in_use: Vec<u64>,
}

impl BufferPool {
    pub fn new(count: u32, buffer_bytes: u32) -> Self {
        assert!(count > 0);
        assert!(count <= POOL_BUFFERS_MAX);
        assert!(buffer_bytes > 0);
        let align = BUFFER_ALIGN_BYTES as usize;
        let stride = (buffer_bytes as usize).next_multiple_of(align);
        let total = stride * count as usize + align;
        let bytes = vec![0u8; total].into_boxed_slice();
        let base = (align - (bytes.as_ptr() as usize % align)) % align;
        assert!(base + stride * count as usize <= bytes.len());
        // Pop order 0, 1, 2…: reversed stack.
        let free: Vec<u32> = (0..count).rev().collect();
        let in_use = vec![0u64; (count as usize).div_ceil(64)];
        BufferPool {
            bytes,
            base,
            stride,
            buffer_bytes,
            count,
            free,
            in_use,
        }
    }

    pub fn capacity(&self) -> u32 {
        self.count
    }

    pub fn available(&self) -> u32 {
        self.free.len() as u32
    }

    pub fn buffer_bytes(&self) -> u32 {
        self.buffer_bytes
    }

    /// `None` when exhausted: the caller drops the packet and counts it.
    pub fn alloc(&mut self) -> Option<BufId> {
        let index = self.free.pop()?;
        let (word, bit) = (index as usize / 64, index % 64);
        debug_assert!(self.in_use[word] & (1 << bit) == 0);
        self.in_use[word] |= 1 << bit;
        Some(BufId(index))
    }

    pub fn free(&mut self, id: BufId) {
        let index = id.0;
        assert!(index < self.count);
        let (word, bit) = (index as usize / 64, index % 64);
        assert!(
            self.in_use[word] & (1 << bit) != 0,
            "buffer {index} freed twice"
        );
        self.in_use[word] &= !(1 << bit);
        debug_assert!(self.free.len() < self.free.capacity());
        self.free.push(index);
    }

    pub fn get(&self, id: &BufId) -> &[u8] {
        let start = self.offset(id);
        &self.bytes[start..start + self.buffer_bytes as usize]
    }

    pub fn get_mut(&mut self, id: &BufId) -> &mut [u8] {
        let start = self.offset(id);
        &mut self.bytes[start..start + self.buffer_bytes as usize]
    }

    /// The first `len` bytes of each given buffer at once (`None` entries give empty slices);
    /// `None` if a buffer is named twice.
    pub fn get_disjoint_mut<const N: usize>(
        &mut self,
        buffers: [Option<(&BufId, usize)>; N],
    ) -> Option<[&mut [u8]; N]> {
        let ranges = buffers.map(|buffer| match buffer {
            Some((id, len)) => {
                let start = self.offset(id);
                start..start + len.min(self.buffer_bytes as usize)
            }
            None => 0..0,
        });
        self.bytes.get_disjoint_mut(ranges).ok()
    }

    fn offset(&self, id: &BufId) -> usize {
        debug_assert!(self.in_use[id.0 as usize / 64] & (1 << (id.0 % 64)) != 0);
        self.base + id.0 as usize * self.stride
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alloc_until_exhausted_then_reuse() {
        let mut pool = BufferPool::new(3, 100);
        assert_eq!(pool.capacity(), 3);
        let a = pool.alloc().unwrap();
        let b = pool.alloc().unwrap();
        let c = pool.alloc().unwrap();
        assert!(pool.alloc().is_none());
        assert_eq!(pool.available(), 0);
        pool.get_mut(&b).fill(7);
        assert!(pool.get(&a).iter().all(|&x| x == 0));
        assert!(pool.get(&c).iter().all(|&x| x == 0));
        assert_eq!(pool.get(&b).len(), 100);
        assert_eq!(pool.get(&b).as_ptr() as usize % 64, 0);
        pool.free(b);
        let d = pool.alloc().unwrap();
        assert_eq!(d.index(), 1);
        assert!(pool.get(&d).iter().all(|&x| x == 7)); // buffers are not cleared on reuse
        pool.free(a);
        pool.free(c);
        pool.free(d);
        assert_eq!(pool.available(), 3);
    }

    #[test]
    #[should_panic(expected = "freed twice")]
    fn double_free_through_raw_is_caught() {
        let mut pool = BufferPool::new(2, 8);
        let a = pool.alloc().unwrap();
        let raw = a.index();
        pool.free(a);
        pool.free(BufId::from_raw(raw));
    }
}

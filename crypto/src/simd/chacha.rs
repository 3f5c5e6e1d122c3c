//! IETF ChaCha20 (RFC 8439: 32-bit block counter from 0, 96-bit nonce) with a zero nonce, as
//! Lioness uses it: `data ^= keystream(key)`.
//!
//! With AVX-512 the keystream is made 16 blocks (1 KiB) at a time, one block per 32-bit lane
//! of 16 zmm registers, then transposed; with AVX2, 8 blocks (512 B) at a time in ymm
//! registers the same way (the `chacha20` crate's AVX2 backend makes 4 blocks a step, with
//! twice the shuffling per byte). Otherwise the `chacha20` crate (SSE2/soft) does it.

use chacha20::cipher::{KeyIvInit, StreamCipher};
use chacha20::ChaCha20;
use zeroize::Zeroize;

use super::Level;

/// Key size.
pub const KEY_SIZE: usize = 32;

/// Below this many bytes the crate's AVX2 path is at least as fast (it makes 4 blocks a step).
const WIDE_MIN: usize = 512;
/// Below this many bytes the 8-block AVX2 step would mostly compute unused blocks.
const AVX2_MIN: usize = 256;

/// `data ^= ChaCha20(key, nonce = 0)` from block 0.
pub fn xor_keystream(key: &[u8; KEY_SIZE], data: &mut [u8]) {
    xor_keystream_at(super::level(), key, data);
}

/// As [`xor_keystream`] on a chosen path (falls back when the CPU lacks it).
pub fn xor_keystream_at(level: Level, key: &[u8; KEY_SIZE], data: &mut [u8]) {
    #[cfg(target_arch = "x86_64")]
    if level == Level::Avx512 && data.len() >= WIDE_MIN && Level::Avx512.is_supported() {
        // SAFETY: the CPU has AVX-512F (checked just above).
        unsafe { avx512::xor(key, data) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if level == Level::Avx2 && data.len() >= AVX2_MIN && Level::Avx2.is_supported() {
        // SAFETY: the CPU has AVX2 (checked just above).
        unsafe { avx2::xor(key, data) };
        return;
    }
    let _ = level;
    portable(key, data);
}

/// The reference: the `chacha20` crate.
pub fn portable(key: &[u8; KEY_SIZE], data: &mut [u8]) {
    let mut cipher = ChaCha20::new(key.into(), &[0u8; 12].into());
    cipher.apply_keystream(data);
}

const SIGMA: [u32; 4] = [0x6170_7865, 0x3320_646e, 0x7962_2d32, 0x6b20_6574];

/// The state of block 0 as words: constants, key, counter 0, zero nonce (every vector path
/// splats them and then sets word 12 to each lane's counter).
#[cfg(target_arch = "x86_64")]
fn initial_words(key: &[u8; KEY_SIZE]) -> [u32; 16] {
    let mut words = [0u32; 16];
    words[..4].copy_from_slice(&SIGMA);
    for (word, bytes) in words[4..12].iter_mut().zip(key.as_chunks::<4>().0) {
        *word = u32::from_le_bytes(*bytes);
    }
    words
}

#[cfg(target_arch = "x86_64")]
pub(super) mod avx512 {
    use core::arch::x86_64::*;

    use super::*;

    const STEP: usize = 16 * 64;

    /// # Safety
    /// The CPU must support AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn xor(key: &[u8; KEY_SIZE], data: &mut [u8]) {
        let mut words = initial_words(key);
        let mut init = words.map(|word| _mm512_set1_epi32(word as i32));
        words.zeroize();
        let lanes = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
        let mut counter = 0u32;
        let mut tail = [0u8; 64];
        for chunk in data.chunks_mut(STEP) {
            init[12] = _mm512_add_epi32(_mm512_set1_epi32(counter as i32), lanes);
            let blocks = keystream(&init);
            // Whole 64-byte blocks in place; a last partial block through `tail`.
            let mut blocks_iter = blocks.iter();
            let mut whole = chunk.chunks_exact_mut(64);
            for (block, stream) in whole.by_ref().zip(blocks_iter.by_ref()) {
                // SAFETY: 64-byte unaligned load/store within the block.
                unsafe {
                    let p = block.as_mut_ptr().cast::<__m512i>();
                    _mm512_storeu_si512(p, _mm512_xor_si512(_mm512_loadu_si512(p), *stream));
                }
            }
            let rest = whole.into_remainder();
            if let (false, Some(stream)) = (rest.is_empty(), blocks_iter.next()) {
                // SAFETY: 64-byte store into a 64-byte array.
                unsafe { _mm512_storeu_si512(tail.as_mut_ptr().cast(), *stream) };
                for (byte, stream) in rest.iter_mut().zip(tail.iter()) {
                    *byte ^= stream;
                }
            }
            counter = counter.wrapping_add(16);
        }
        crate::simd::wipe(&mut tail);
    }

    /// 16 keystream blocks, block j in element j (words in order).
    #[target_feature(enable = "avx512f")]
    fn keystream(init: &[__m512i; 16]) -> [__m512i; 16] {
        let mut x = *init;
        for _ in 0..10 {
            quarter(&mut x, 0, 4, 8, 12);
            quarter(&mut x, 1, 5, 9, 13);
            quarter(&mut x, 2, 6, 10, 14);
            quarter(&mut x, 3, 7, 11, 15);
            quarter(&mut x, 0, 5, 10, 15);
            quarter(&mut x, 1, 6, 11, 12);
            quarter(&mut x, 2, 7, 8, 13);
            quarter(&mut x, 3, 4, 9, 14);
        }
        for (word, start) in x.iter_mut().zip(init.iter()) {
            *word = _mm512_add_epi32(*word, *start);
        }
        transpose16(&x)
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    fn quarter(x: &mut [__m512i; 16], a: usize, b: usize, c: usize, d: usize) {
        x[a] = _mm512_add_epi32(x[a], x[b]);
        x[d] = _mm512_rol_epi32::<16>(_mm512_xor_si512(x[d], x[a]));
        x[c] = _mm512_add_epi32(x[c], x[d]);
        x[b] = _mm512_rol_epi32::<12>(_mm512_xor_si512(x[b], x[c]));
        x[a] = _mm512_add_epi32(x[a], x[b]);
        x[d] = _mm512_rol_epi32::<8>(_mm512_xor_si512(x[d], x[a]));
        x[c] = _mm512_add_epi32(x[c], x[d]);
        x[b] = _mm512_rol_epi32::<7>(_mm512_xor_si512(x[b], x[c]));
    }

    /// x[i] element j = word i of block j  →  out[j] = block j (a 16×16 transpose of 32-bit
    /// words, its own inverse).
    #[target_feature(enable = "avx512f")]
    pub(in crate::simd) fn transpose16(x: &[__m512i; 16]) -> [__m512i; 16] {
        // c[g][r]: 128-bit lane k holds words 4g..4g+3 of block 4k + r.
        let mut c = [[_mm512_setzero_si512(); 4]; 4];
        for (g, c) in c.iter_mut().enumerate() {
            let w = 4 * g;
            let a0 = _mm512_unpacklo_epi32(x[w], x[w + 1]);
            let a1 = _mm512_unpackhi_epi32(x[w], x[w + 1]);
            let a2 = _mm512_unpacklo_epi32(x[w + 2], x[w + 3]);
            let a3 = _mm512_unpackhi_epi32(x[w + 2], x[w + 3]);
            c[0] = _mm512_unpacklo_epi64(a0, a2);
            c[1] = _mm512_unpackhi_epi64(a0, a2);
            c[2] = _mm512_unpacklo_epi64(a1, a3);
            c[3] = _mm512_unpackhi_epi64(a1, a3);
        }
        let mut out = [_mm512_setzero_si512(); 16];
        for r in 0..4 {
            let d0 = _mm512_shuffle_i32x4::<0x44>(c[0][r], c[1][r]);
            let d1 = _mm512_shuffle_i32x4::<0xee>(c[0][r], c[1][r]);
            let d2 = _mm512_shuffle_i32x4::<0x44>(c[2][r], c[3][r]);
            let d3 = _mm512_shuffle_i32x4::<0xee>(c[2][r], c[3][r]);
            out[r] = _mm512_shuffle_i32x4::<0x88>(d0, d2);
            out[4 + r] = _mm512_shuffle_i32x4::<0xdd>(d0, d2);
            out[8 + r] = _mm512_shuffle_i32x4::<0x88>(d1, d3);
            out[12 + r] = _mm512_shuffle_i32x4::<0xdd>(d1, d3);
        }
        out
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use core::arch::x86_64::*;

    use super::*;

    type V = __m256i;

    const STEP: usize = 8 * 64;

    /// # Safety
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn xor(key: &[u8; KEY_SIZE], data: &mut [u8]) {
        let mut words = initial_words(key);
        let mut init = words.map(|word| _mm256_set1_epi32(word as i32));
        words.zeroize();
        let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        let mut counter = 0u32;
        let mut tail = [0u8; 64];
        for chunk in data.chunks_mut(STEP) {
            init[12] = _mm256_add_epi32(_mm256_set1_epi32(counter as i32), lanes);
            // Block j is halves[j] (words 0..8) ‖ halves[8 + j] (words 8..16).
            let halves = keystream(&init);
            for (j, block) in chunk.chunks_mut(64).enumerate() {
                let (low, high) = (halves[j & 7], halves[8 + (j & 7)]);
                if let Some(block) = block.first_chunk_mut::<64>() {
                    // SAFETY: two 32-byte unaligned loads/stores within the 64-byte block.
                    unsafe {
                        let p = block.as_mut_ptr().cast::<V>();
                        _mm256_storeu_si256(p, _mm256_xor_si256(_mm256_loadu_si256(p), low));
                        let q = p.add(1);
                        _mm256_storeu_si256(q, _mm256_xor_si256(_mm256_loadu_si256(q), high));
                    }
                } else {
                    // The last, partial block.
                    // SAFETY: two 32-byte stores into a 64-byte array.
                    unsafe {
                        let p = tail.as_mut_ptr().cast::<V>();
                        _mm256_storeu_si256(p, low);
                        _mm256_storeu_si256(p.add(1), high);
                    }
                    for (byte, stream) in block.iter_mut().zip(tail.iter()) {
                        *byte ^= stream;
                    }
                }
            }
            counter = counter.wrapping_add(8);
        }
        crate::simd::wipe(&mut tail);
    }

    /// 8 keystream blocks, block j from lane j of `init` (its counter): `out[j]` holds words
    /// 0..8 of block j, `out[8 + j]` words 8..16.
    #[target_feature(enable = "avx2")]
    fn keystream(init: &[V; 16]) -> [V; 16] {
        // Rotations by 16 and 8 are byte shuffles (one instruction instead of three).
        let rot16 = _mm256_setr_epi8(
            2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13, 2, 3, 0, 1, 6, 7, 4, 5, 10, 11,
            8, 9, 14, 15, 12, 13,
        );
        let rot8 = _mm256_setr_epi8(
            3, 0, 1, 2, 7, 4, 5, 6, 11, 8, 9, 10, 15, 12, 13, 14, 3, 0, 1, 2, 7, 4, 5, 6, 11, 8, 9,
            10, 15, 12, 13, 14,
        );
        let mut x = *init;
        for _ in 0..10 {
            double_round(&mut x, rot16, rot8);
        }
        for (word, start) in x.iter_mut().zip(init.iter()) {
            *word = _mm256_add_epi32(*word, *start);
        }
        let low = transpose8(&[x[0], x[1], x[2], x[3], x[4], x[5], x[6], x[7]]);
        let high = transpose8(&[x[8], x[9], x[10], x[11], x[12], x[13], x[14], x[15]]);
        [
            low[0], low[1], low[2], low[3], low[4], low[5], low[6], low[7], high[0], high[1],
            high[2], high[3], high[4], high[5], high[6], high[7],
        ]
    }

    /// A column round then a diagonal round, each as four interleaved quarter rounds.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn double_round(x: &mut [V; 16], rot16: V, rot8: V) {
        quarter4(
            x,
            [0, 1, 2, 3],
            [4, 5, 6, 7],
            [8, 9, 10, 11],
            [12, 13, 14, 15],
            rot16,
            rot8,
        );
        quarter4(
            x,
            [0, 1, 2, 3],
            [5, 6, 7, 4],
            [10, 11, 8, 9],
            [15, 12, 13, 14],
            rot16,
            rot8,
        );
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    fn rotl<const L: i32, const R: i32>(v: V) -> V {
        _mm256_or_si256(_mm256_slli_epi32::<L>(v), _mm256_srli_epi32::<R>(v))
    }

    /// Four quarter rounds (a[k], b[k], c[k], d[k]) side by side, step by step.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn quarter4(
        x: &mut [V; 16],
        a: [usize; 4],
        b: [usize; 4],
        c: [usize; 4],
        d: [usize; 4],
        rot16: V,
        rot8: V,
    ) {
        for k in 0..4 {
            x[a[k]] = _mm256_add_epi32(x[a[k]], x[b[k]]);
        }
        for k in 0..4 {
            x[d[k]] = _mm256_shuffle_epi8(_mm256_xor_si256(x[d[k]], x[a[k]]), rot16);
        }
        for k in 0..4 {
            x[c[k]] = _mm256_add_epi32(x[c[k]], x[d[k]]);
        }
        for k in 0..4 {
            x[b[k]] = rotl::<12, 20>(_mm256_xor_si256(x[b[k]], x[c[k]]));
        }
        for k in 0..4 {
            x[a[k]] = _mm256_add_epi32(x[a[k]], x[b[k]]);
        }
        for k in 0..4 {
            x[d[k]] = _mm256_shuffle_epi8(_mm256_xor_si256(x[d[k]], x[a[k]]), rot8);
        }
        for k in 0..4 {
            x[c[k]] = _mm256_add_epi32(x[c[k]], x[d[k]]);
        }
        for k in 0..4 {
            x[b[k]] = rotl::<7, 25>(_mm256_xor_si256(x[b[k]], x[c[k]]));
        }
    }

    /// 8×8 transpose of 32-bit words: element j of `x[i]` goes to element i of `out[j]`.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn transpose8(x: &[V; 8]) -> [V; 8] {
        // a: pairs of rows interleaved by word; b: four rows interleaved, per 128-bit half
        // (b[g][r] holds word r of rows 4g..4g+4 in its low half, word 4 + r in its high one).
        let a = [
            _mm256_unpacklo_epi32(x[0], x[1]),
            _mm256_unpackhi_epi32(x[0], x[1]),
            _mm256_unpacklo_epi32(x[2], x[3]),
            _mm256_unpackhi_epi32(x[2], x[3]),
            _mm256_unpacklo_epi32(x[4], x[5]),
            _mm256_unpackhi_epi32(x[4], x[5]),
            _mm256_unpacklo_epi32(x[6], x[7]),
            _mm256_unpackhi_epi32(x[6], x[7]),
        ];
        let b = [
            [
                _mm256_unpacklo_epi64(a[0], a[2]),
                _mm256_unpackhi_epi64(a[0], a[2]),
                _mm256_unpacklo_epi64(a[1], a[3]),
                _mm256_unpackhi_epi64(a[1], a[3]),
            ],
            [
                _mm256_unpacklo_epi64(a[4], a[6]),
                _mm256_unpackhi_epi64(a[4], a[6]),
                _mm256_unpacklo_epi64(a[5], a[7]),
                _mm256_unpackhi_epi64(a[5], a[7]),
            ],
        ];
        [
            _mm256_permute2x128_si256::<0x20>(b[0][0], b[1][0]),
            _mm256_permute2x128_si256::<0x20>(b[0][1], b[1][1]),
            _mm256_permute2x128_si256::<0x20>(b[0][2], b[1][2]),
            _mm256_permute2x128_si256::<0x20>(b[0][3], b[1][3]),
            _mm256_permute2x128_si256::<0x31>(b[0][0], b[1][0]),
            _mm256_permute2x128_si256::<0x31>(b[0][1], b[1][1]),
            _mm256_permute2x128_si256::<0x31>(b[0][2], b[1][2]),
            _mm256_permute2x128_si256::<0x31>(b[0][3], b[1][3]),
        ]
    }
}

//! Keyed BLAKE2b-256 (64-byte key, `blake2::Blake2bMac<U32>` semantics) over several
//! messages at once.
//!
//! Lioness hashes the right half of every payload of a batch with a different key; those
//! halves have equal length, so up to 8 of them advance in lock step: one AVX-512 register
//! per state word, one 64-bit lane per message (4 lanes with AVX2). Messages of different
//! lengths, a single lane, or a CPU without the vector units take the `blake2` crate.

use blake2::digest::{KeyInit, Mac};
use blake2::Blake2bMac;
use zeroize::Zeroize;

use super::Level;

/// Key size (the full BLAKE2b key).
pub const KEY_SIZE: usize = 64;
/// Output size.
pub const OUT_SIZE: usize = 32;
/// Most lanes one vector pass hashes.
pub const MAX_LANES: usize = 8;
const BLOCK: usize = 128;

const IV: [u64; 8] = [
    0x6a09_e667_f3bc_c908,
    0xbb67_ae85_84ca_a73b,
    0x3c6e_f372_fe94_f82b,
    0xa54f_f53a_5f1d_36f1,
    0x510e_527f_ade6_82d1,
    0x9b05_688c_2b3e_6c1f,
    0x1f83_d9ab_fb41_bd6b,
    0x5be0_cd19_137e_2179,
];

const SIGMA: [[usize; 16]; 12] = [
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15],
    [14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3],
    [11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4],
    [7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8],
    [9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13],
    [2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9],
    [12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11],
    [13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10],
    [6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5],
    [10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0],
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15],
    [14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3],
];

/// Parameter block word 0 for a 32-byte digest with a 64-byte key, fanout = depth = 1.
const PARAM0: u64 = 0x0101_0000 | ((KEY_SIZE as u64) << 8) | OUT_SIZE as u64;

/// `out[j] = BLAKE2b-256(key = keys[j], msgs[j])` for every lane
/// `j < min(keys.len(), msgs.len(), out.len())`.
pub fn keyed256_many(keys: &[&[u8; KEY_SIZE]], msgs: &[&[u8]], out: &mut [[u8; OUT_SIZE]]) {
    keyed256_many_at(super::level(), keys, msgs, out);
}

/// As [`keyed256_many`] on a chosen path (tests compare paths; an unsupported level falls
/// back to the next one the CPU has).
pub fn keyed256_many_at(
    level: Level,
    keys: &[&[u8; KEY_SIZE]],
    msgs: &[&[u8]],
    out: &mut [[u8; OUT_SIZE]],
) {
    let lanes = keys.len().min(msgs.len()).min(out.len());
    let level = supported(level);
    let width = match level {
        Level::Avx512 => 8,
        Level::Avx2 => 4,
        Level::Portable => 1,
    };
    let mut start = 0;
    while start < lanes {
        let end = lanes.min(start + width);
        let (keys, msgs, out) = (&keys[start..end], &msgs[start..end], &mut out[start..end]);
        let equal = msgs.iter().all(|msg| msg.len() == msgs[0].len());
        if end - start < 2 || !equal {
            portable(keys, msgs, out);
        } else {
            match level {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: `supported` returned Avx512 only if the CPU has AVX-512F.
                Level::Avx512 => unsafe { avx512::hash(keys, msgs, out) },
                #[cfg(target_arch = "x86_64")]
                // SAFETY: `supported` returned Avx2 only if the CPU has AVX2.
                Level::Avx2 => unsafe { avx2::hash(keys, msgs, out) },
                _ => portable(keys, msgs, out),
            }
        }
        start = end;
    }
}

/// `level`, or the best level below it that the CPU runs.
fn supported(level: Level) -> Level {
    match level {
        Level::Avx512 if level.is_supported() => Level::Avx512,
        Level::Avx512 | Level::Avx2 if Level::Avx2.is_supported() => Level::Avx2,
        _ => Level::Portable,
    }
}

/// The reference: `blake2`'s `Blake2bMac<U32>`, one lane at a time.
pub fn portable(keys: &[&[u8; KEY_SIZE]], msgs: &[&[u8]], out: &mut [[u8; OUT_SIZE]]) {
    for ((key, msg), out) in keys.iter().zip(msgs).zip(out.iter_mut()) {
        let mut mac = <Blake2bMac<blake2::digest::consts::U32> as KeyInit>::new((*key).into());
        mac.update(msg);
        out.copy_from_slice(&mac.finalize().into_bytes());
    }
}

/// Block schedule shared by the vector paths: `(offset, counter, last)` of each message
/// block after the key block; a final partial block is zero padded.
fn blocks(len: usize) -> impl Iterator<Item = (usize, u64, bool)> {
    let count = len.div_ceil(BLOCK);
    (0..count).map(move |index| {
        let offset = index * BLOCK;
        let end = len.min(offset + BLOCK);
        (offset, (BLOCK + end) as u64, index + 1 == count)
    })
}

/// The lanes' 128-byte blocks at `offset`, padded copies in `scratch` for a short tail.
fn lane_blocks<'a, const N: usize>(
    msgs: &[&'a [u8]],
    offset: usize,
    scratch: &'a mut [[u8; BLOCK]; N],
) -> [&'a [u8; BLOCK]; N] {
    let full = msgs.first().is_some_and(|msg| msg.len() >= offset + BLOCK);
    if full {
        let mut rows: [&[u8; BLOCK]; N] = [&ZERO_BLOCK; N];
        for (lane, row) in rows.iter_mut().enumerate() {
            // Unused lanes repeat lane 0 (their results are dropped).
            let msg = msgs.get(lane).or(msgs.first()).copied().unwrap_or(&[]);
            if let Some(block) = msg
                .get(offset..offset + BLOCK)
                .and_then(|b| b.try_into().ok())
            {
                *row = block;
            }
        }
        rows
    } else {
        for (lane, block) in scratch.iter_mut().enumerate() {
            block.fill(0);
            let msg = msgs.get(lane).or(msgs.first()).copied().unwrap_or(&[]);
            let tail = msg.get(offset..).unwrap_or(&[]);
            block[..tail.len().min(BLOCK)].copy_from_slice(&tail[..tail.len().min(BLOCK)]);
        }
        let scratch: &'a [[u8; BLOCK]; N] = scratch;
        core::array::from_fn(|lane| &scratch[lane])
    }
}

static ZERO_BLOCK: [u8; BLOCK] = [0; BLOCK];

/// The lanes' keys padded to a block (BLAKE2b's first block for keyed hashing).
fn key_blocks<const N: usize>(keys: &[&[u8; KEY_SIZE]], scratch: &mut [[u8; BLOCK]; N]) {
    for (lane, block) in scratch.iter_mut().enumerate() {
        block.fill(0);
        if let Some(key) = keys.get(lane).or(keys.first()) {
            block[..KEY_SIZE].copy_from_slice(*key);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use core::arch::x86_64::*;

    use super::*;

    type State = [__m512i; 8];

    /// # Safety
    /// The CPU must support AVX-512F. 2..=8 lanes of equal message length.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn hash(
        keys: &[&[u8; KEY_SIZE]],
        msgs: &[&[u8]],
        out: &mut [[u8; OUT_SIZE]],
    ) {
        let len = msgs.first().map_or(0, |msg| msg.len());
        let mut h: State = [_mm512_setzero_si512(); 8];
        for (h, iv) in h.iter_mut().zip(IV) {
            *h = _mm512_set1_epi64(iv as i64);
        }
        h[0] = _mm512_set1_epi64((IV[0] ^ PARAM0) as i64);
        let mut scratch = [[0u8; BLOCK]; 8];
        key_blocks(keys, &mut scratch);
        {
            let rows: [&[u8; BLOCK]; 8] = core::array::from_fn(|lane| &scratch[lane]);
            let m = load(&rows);
            compress(&mut h, &m, BLOCK as u64, len == 0);
        }
        crate::simd::wipe(scratch.as_flattened_mut());
        for (offset, counter, last) in blocks(len) {
            let rows = lane_blocks::<8>(msgs, offset, &mut scratch);
            let m = load(&rows);
            compress(&mut h, &m, counter, last);
        }
        let mut words = [[0u64; 8]; 4];
        for (word, vector) in words.iter_mut().zip(h.iter()) {
            // SAFETY: 64-byte store into a [u64; 8].
            unsafe { _mm512_storeu_si512(word.as_mut_ptr().cast(), *vector) };
        }
        for (lane, out) in out.iter_mut().enumerate().take(MAX_LANES) {
            for (chunk, word) in out.chunks_exact_mut(8).zip(words.iter()) {
                chunk.copy_from_slice(&word[lane].to_le_bytes());
            }
        }
        words.zeroize();
    }

    /// 16 message-word vectors (word i of every lane) from 8 lane blocks: two 8×8 transposes.
    #[target_feature(enable = "avx512f")]
    fn load(rows: &[&[u8; BLOCK]; 8]) -> [__m512i; 16] {
        let mut m = [_mm512_setzero_si512(); 16];
        for half in 0..2 {
            let mut r = [_mm512_setzero_si512(); 8];
            for (r, row) in r.iter_mut().zip(rows) {
                // SAFETY: 64 bytes inside a 128-byte block.
                *r = unsafe { _mm512_loadu_si512(row[half * 64..].as_ptr().cast()) };
            }
            let t = transpose8(r);
            m[half * 8..half * 8 + 8].copy_from_slice(&t);
        }
        m
    }

    #[target_feature(enable = "avx512f")]
    fn transpose8(r: [__m512i; 8]) -> [__m512i; 8] {
        // t0 = r0[0] r1[0] r0[2] r1[2] …; t1 = r0[1] r1[1] …
        let t0 = _mm512_unpacklo_epi64(r[0], r[1]);
        let t1 = _mm512_unpackhi_epi64(r[0], r[1]);
        let t2 = _mm512_unpacklo_epi64(r[2], r[3]);
        let t3 = _mm512_unpackhi_epi64(r[2], r[3]);
        let t4 = _mm512_unpacklo_epi64(r[4], r[5]);
        let t5 = _mm512_unpackhi_epi64(r[4], r[5]);
        let t6 = _mm512_unpacklo_epi64(r[6], r[7]);
        let t7 = _mm512_unpackhi_epi64(r[6], r[7]);
        let even = _mm512_set_epi64(13, 12, 5, 4, 9, 8, 1, 0);
        let odd = _mm512_set_epi64(15, 14, 7, 6, 11, 10, 3, 2);
        // u0 = words 0|4 of lanes 0-3, u1 = words 2|6, u2 = 1|5, u3 = 3|7; u4.. lanes 4-7.
        let u0 = _mm512_permutex2var_epi64(t0, even, t2);
        let u1 = _mm512_permutex2var_epi64(t0, odd, t2);
        let u2 = _mm512_permutex2var_epi64(t1, even, t3);
        let u3 = _mm512_permutex2var_epi64(t1, odd, t3);
        let u4 = _mm512_permutex2var_epi64(t4, even, t6);
        let u5 = _mm512_permutex2var_epi64(t4, odd, t6);
        let u6 = _mm512_permutex2var_epi64(t5, even, t7);
        let u7 = _mm512_permutex2var_epi64(t5, odd, t7);
        let low = _mm512_set_epi64(11, 10, 9, 8, 3, 2, 1, 0);
        let high = _mm512_set_epi64(15, 14, 13, 12, 7, 6, 5, 4);
        [
            _mm512_permutex2var_epi64(u0, low, u4),
            _mm512_permutex2var_epi64(u2, low, u6),
            _mm512_permutex2var_epi64(u1, low, u5),
            _mm512_permutex2var_epi64(u3, low, u7),
            _mm512_permutex2var_epi64(u0, high, u4),
            _mm512_permutex2var_epi64(u2, high, u6),
            _mm512_permutex2var_epi64(u1, high, u5),
            _mm512_permutex2var_epi64(u3, high, u7),
        ]
    }

    #[target_feature(enable = "avx512f")]
    fn compress(h: &mut State, m: &[__m512i; 16], counter: u64, last: bool) {
        let mut v = [_mm512_setzero_si512(); 16];
        v[..8].copy_from_slice(h);
        for i in 0..8 {
            v[8 + i] = _mm512_set1_epi64(IV[i] as i64);
        }
        v[12] = _mm512_set1_epi64((IV[4] ^ counter) as i64);
        if last {
            v[14] = _mm512_set1_epi64(!IV[6] as i64);
        }
        // Unrolled: the message permutation of every round is a constant.
        round::<0>(&mut v, m);
        round::<1>(&mut v, m);
        round::<2>(&mut v, m);
        round::<3>(&mut v, m);
        round::<4>(&mut v, m);
        round::<5>(&mut v, m);
        round::<6>(&mut v, m);
        round::<7>(&mut v, m);
        round::<8>(&mut v, m);
        round::<9>(&mut v, m);
        round::<10>(&mut v, m);
        round::<11>(&mut v, m);
        for i in 0..8 {
            h[i] = _mm512_xor_si512(h[i], _mm512_xor_si512(v[i], v[i + 8]));
        }
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    fn round<const R: usize>(v: &mut [__m512i; 16], m: &[__m512i; 16]) {
        let s = &SIGMA[R];
        g(v, 0, 4, 8, 12, m[s[0]], m[s[1]]);
        g(v, 1, 5, 9, 13, m[s[2]], m[s[3]]);
        g(v, 2, 6, 10, 14, m[s[4]], m[s[5]]);
        g(v, 3, 7, 11, 15, m[s[6]], m[s[7]]);
        g(v, 0, 5, 10, 15, m[s[8]], m[s[9]]);
        g(v, 1, 6, 11, 12, m[s[10]], m[s[11]]);
        g(v, 2, 7, 8, 13, m[s[12]], m[s[13]]);
        g(v, 3, 4, 9, 14, m[s[14]], m[s[15]]);
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    fn g(v: &mut [__m512i; 16], a: usize, b: usize, c: usize, d: usize, x: __m512i, y: __m512i) {
        v[a] = _mm512_add_epi64(_mm512_add_epi64(v[a], v[b]), x);
        v[d] = _mm512_ror_epi64::<32>(_mm512_xor_si512(v[d], v[a]));
        v[c] = _mm512_add_epi64(v[c], v[d]);
        v[b] = _mm512_ror_epi64::<24>(_mm512_xor_si512(v[b], v[c]));
        v[a] = _mm512_add_epi64(_mm512_add_epi64(v[a], v[b]), y);
        v[d] = _mm512_ror_epi64::<16>(_mm512_xor_si512(v[d], v[a]));
        v[c] = _mm512_add_epi64(v[c], v[d]);
        v[b] = _mm512_ror_epi64::<63>(_mm512_xor_si512(v[b], v[c]));
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use core::arch::x86_64::*;

    use super::*;

    type State = [__m256i; 8];

    /// # Safety
    /// The CPU must support AVX2. 2..=4 lanes of equal message length.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn hash(
        keys: &[&[u8; KEY_SIZE]],
        msgs: &[&[u8]],
        out: &mut [[u8; OUT_SIZE]],
    ) {
        let len = msgs.first().map_or(0, |msg| msg.len());
        let mut h: State = [_mm256_setzero_si256(); 8];
        for (h, iv) in h.iter_mut().zip(IV) {
            *h = _mm256_set1_epi64x(iv as i64);
        }
        h[0] = _mm256_set1_epi64x((IV[0] ^ PARAM0) as i64);
        let mut scratch = [[0u8; BLOCK]; 4];
        key_blocks(keys, &mut scratch);
        {
            let rows: [&[u8; BLOCK]; 4] = core::array::from_fn(|lane| &scratch[lane]);
            let m = load(&rows);
            compress(&mut h, &m, BLOCK as u64, len == 0);
        }
        crate::simd::wipe(scratch.as_flattened_mut());
        for (offset, counter, last) in blocks(len) {
            let rows = lane_blocks::<4>(msgs, offset, &mut scratch);
            let m = load(&rows);
            compress(&mut h, &m, counter, last);
        }
        let mut words = [[0u64; 4]; 4];
        for (word, vector) in words.iter_mut().zip(h.iter()) {
            // SAFETY: 32-byte store into a [u64; 4].
            unsafe { _mm256_storeu_si256(word.as_mut_ptr().cast(), *vector) };
        }
        for (lane, out) in out.iter_mut().enumerate().take(4) {
            for (chunk, word) in out.chunks_exact_mut(8).zip(words.iter()) {
                chunk.copy_from_slice(&word[lane].to_le_bytes());
            }
        }
        words.zeroize();
    }

    /// 16 message-word vectors from 4 lane blocks: four 4×4 transposes.
    #[target_feature(enable = "avx2")]
    fn load(rows: &[&[u8; BLOCK]; 4]) -> [__m256i; 16] {
        let mut m = [_mm256_setzero_si256(); 16];
        for quarter in 0..4 {
            let mut r = [_mm256_setzero_si256(); 4];
            for (r, row) in r.iter_mut().zip(rows) {
                // SAFETY: 32 bytes inside a 128-byte block.
                *r = unsafe { _mm256_loadu_si256(row[quarter * 32..].as_ptr().cast()) };
            }
            let t0 = _mm256_unpacklo_epi64(r[0], r[1]); // r0[0] r1[0] r0[2] r1[2]
            let t1 = _mm256_unpackhi_epi64(r[0], r[1]); // r0[1] r1[1] r0[3] r1[3]
            let t2 = _mm256_unpacklo_epi64(r[2], r[3]);
            let t3 = _mm256_unpackhi_epi64(r[2], r[3]);
            m[quarter * 4] = _mm256_permute2x128_si256::<0x20>(t0, t2);
            m[quarter * 4 + 1] = _mm256_permute2x128_si256::<0x20>(t1, t3);
            m[quarter * 4 + 2] = _mm256_permute2x128_si256::<0x31>(t0, t2);
            m[quarter * 4 + 3] = _mm256_permute2x128_si256::<0x31>(t1, t3);
        }
        m
    }

    #[target_feature(enable = "avx2")]
    fn compress(h: &mut State, m: &[__m256i; 16], counter: u64, last: bool) {
        let mut v = [_mm256_setzero_si256(); 16];
        v[..8].copy_from_slice(h);
        for i in 0..8 {
            v[8 + i] = _mm256_set1_epi64x(IV[i] as i64);
        }
        v[12] = _mm256_set1_epi64x((IV[4] ^ counter) as i64);
        if last {
            v[14] = _mm256_set1_epi64x(!IV[6] as i64);
        }
        let rot24 = _mm256_setr_epi8(
            3, 4, 5, 6, 7, 0, 1, 2, 11, 12, 13, 14, 15, 8, 9, 10, 3, 4, 5, 6, 7, 0, 1, 2, 11, 12,
            13, 14, 15, 8, 9, 10,
        );
        let rot16 = _mm256_setr_epi8(
            2, 3, 4, 5, 6, 7, 0, 1, 10, 11, 12, 13, 14, 15, 8, 9, 2, 3, 4, 5, 6, 7, 0, 1, 10, 11,
            12, 13, 14, 15, 8, 9,
        );
        // Unrolled: the message permutation of every round is a constant, so the message
        // words are plain (register or memory) operands with no index arithmetic.
        round::<0>(&mut v, m, rot24, rot16);
        round::<1>(&mut v, m, rot24, rot16);
        round::<2>(&mut v, m, rot24, rot16);
        round::<3>(&mut v, m, rot24, rot16);
        round::<4>(&mut v, m, rot24, rot16);
        round::<5>(&mut v, m, rot24, rot16);
        round::<6>(&mut v, m, rot24, rot16);
        round::<7>(&mut v, m, rot24, rot16);
        round::<8>(&mut v, m, rot24, rot16);
        round::<9>(&mut v, m, rot24, rot16);
        round::<10>(&mut v, m, rot24, rot16);
        round::<11>(&mut v, m, rot24, rot16);
        for i in 0..8 {
            h[i] = _mm256_xor_si256(h[i], _mm256_xor_si256(v[i], v[i + 8]));
        }
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    fn round<const R: usize>(
        v: &mut [__m256i; 16],
        m: &[__m256i; 16],
        rot24: __m256i,
        rot16: __m256i,
    ) {
        let s = &SIGMA[R];
        g(v, [0, 4, 8, 12], m[s[0]], m[s[1]], rot24, rot16);
        g(v, [1, 5, 9, 13], m[s[2]], m[s[3]], rot24, rot16);
        g(v, [2, 6, 10, 14], m[s[4]], m[s[5]], rot24, rot16);
        g(v, [3, 7, 11, 15], m[s[6]], m[s[7]], rot24, rot16);
        g(v, [0, 5, 10, 15], m[s[8]], m[s[9]], rot24, rot16);
        g(v, [1, 6, 11, 12], m[s[10]], m[s[11]], rot24, rot16);
        g(v, [2, 7, 8, 13], m[s[12]], m[s[13]], rot24, rot16);
        g(v, [3, 4, 9, 14], m[s[14]], m[s[15]], rot24, rot16);
    }

    /// BLAKE2b's G: rotations by 32 as a dword shuffle, by 24 and 16 as byte shuffles, by 63
    /// as add + shift + or (AVX2 has no 64-bit rotate).
    #[inline]
    #[target_feature(enable = "avx2")]
    fn g(
        v: &mut [__m256i; 16],
        [a, b, c, d]: [usize; 4],
        x: __m256i,
        y: __m256i,
        rot24: __m256i,
        rot16: __m256i,
    ) {
        v[a] = _mm256_add_epi64(_mm256_add_epi64(v[a], v[b]), x);
        v[d] = _mm256_shuffle_epi32::<0b10_11_00_01>(_mm256_xor_si256(v[d], v[a]));
        v[c] = _mm256_add_epi64(v[c], v[d]);
        v[b] = _mm256_shuffle_epi8(_mm256_xor_si256(v[b], v[c]), rot24);
        v[a] = _mm256_add_epi64(_mm256_add_epi64(v[a], v[b]), y);
        v[d] = _mm256_shuffle_epi8(_mm256_xor_si256(v[d], v[a]), rot16);
        v[c] = _mm256_add_epi64(v[c], v[d]);
        let t = _mm256_xor_si256(v[b], v[c]);
        v[b] = _mm256_or_si256(_mm256_srli_epi64::<63>(t), _mm256_add_epi64(t, t));
    }
}

//! AES-128-CTR keystreams (64-bit big-endian counter, zero IV: Sphinx's routing cipher) for
//! many keys at once, byte-identical to `ctr::Ctr64BE<aes::Aes128>` over zeros.
//!
//! With VAES and AVX-512 each zmm register carries block j of four packets, one key per
//! 128-bit lane (VAES takes a round key per lane), so a 360-byte keystream costs ~6 vector
//! rounds per block instead of the reference crates' per-packet set-up: the `aes`/`ctr`
//! pair spends most of its time per 360-byte Sphinx keystream on its key schedule and
//! dispatch, not on the 23 blocks. On the AVX2 path with VAES (AMD Zen 3, Intel Alder Lake
//! and later without AVX-512) the same on ymm registers, two keys per register. The key
//! schedules themselves run on AES-NI, the keys interleaved. Elsewhere, one key at a time
//! through the reference crates.

use ctr::cipher::{KeyIvInit, StreamCipher};

/// AES-128 key size.
pub const KEY_SIZE: usize = 16;

type Aes128Ctr64Be = ctr::Ctr64BE<aes::Aes128>;

/// `out[j]` = the first `N` bytes of the AES-128-CTR keystream of `keys[j]` (counter from
/// zero), for `j < min(keys.len(), out.len())`.
pub fn ctr_keystreams<const N: usize>(keys: &[[u8; KEY_SIZE]], out: &mut [[u8; N]]) {
    ctr_keystreams_at(super::level(), keys, out);
}

/// As [`ctr_keystreams`] on a chosen path (the reference crates when the CPU lacks VAES).
pub fn ctr_keystreams_at<const N: usize>(
    level: super::Level,
    keys: &[[u8; KEY_SIZE]],
    out: &mut [[u8; N]],
) {
    let count = keys.len().min(out.len());
    let (keys, out) = (&keys[..count], &mut out[..count]);
    #[cfg(target_arch = "x86_64")]
    if level == super::Level::Avx512 && vaes::is_supported() {
        // SAFETY: AVX-512F, VAES and AES-NI were detected just above.
        unsafe { vaes::keystreams(keys, out) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if matches!(level, super::Level::Avx2 | super::Level::Avx512) && vaes::ymm_is_supported() {
        // SAFETY: AVX2, VAES and AES-NI were detected just above.
        unsafe { vaes::keystreams_ymm(keys, out) };
        return;
    }
    let _ = level;
    for (key, stream) in keys.iter().zip(out.iter_mut()) {
        one(key, stream);
    }
}

/// XORs the keystream of `key` (from counter 0) into `data`, through the reference crates.
pub fn xor_keystream(key: &[u8; KEY_SIZE], data: &mut [u8]) {
    let mut cipher = Aes128Ctr64Be::new(key.into(), &[0u8; 16].into());
    cipher.apply_keystream(data);
}

/// One keystream through the reference crates.
fn one(key: &[u8; KEY_SIZE], stream: &mut [u8]) {
    stream.fill(0);
    xor_keystream(key, stream);
}

#[cfg(target_arch = "x86_64")]
mod vaes {
    use core::arch::x86_64::*;

    use super::KEY_SIZE;

    /// Keys per zmm register (one per 128-bit lane).
    const LANES: usize = 4;
    const ROUNDS: usize = 10;

    pub(super) fn is_supported() -> bool {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("vaes")
            && std::arch::is_x86_feature_detected!("aes")
    }

    /// VAES on ymm registers (no AVX-512 needed).
    pub(super) fn ymm_is_supported() -> bool {
        std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("vaes")
            && std::arch::is_x86_feature_detected!("aes")
    }

    /// One AES-128 key-schedule step: the previous round key and its `aeskeygenassist`.
    #[inline]
    #[target_feature(enable = "aes,sse2")]
    fn next_round_key(key: __m128i, assist: __m128i) -> __m128i {
        let assist = _mm_shuffle_epi32::<0xff>(assist);
        let mut key = key;
        key = _mm_xor_si128(key, _mm_slli_si128::<4>(key));
        key = _mm_xor_si128(key, _mm_slli_si128::<4>(key));
        key = _mm_xor_si128(key, _mm_slli_si128::<4>(key));
        _mm_xor_si128(key, assist)
    }

    /// The eleven round keys of up to `L` keys, `rk[r][l]` holding key l's round key r
    /// (missing keys repeat the first: their lanes are computed and discarded).
    #[inline]
    #[target_feature(enable = "aes,sse2")]
    fn schedules<const L: usize>(keys: &[[u8; KEY_SIZE]]) -> [[__m128i; L]; ROUNDS + 1] {
        let mut k: [__m128i; L] = core::array::from_fn(|lane| {
            let key = keys
                .get(lane)
                .or(keys.first())
                .copied()
                .unwrap_or([0; KEY_SIZE]);
            // SAFETY: 16-byte unaligned load from a 16-byte array.
            unsafe { _mm_loadu_si128(key.as_ptr().cast()) }
        });
        let mut all = [[_mm_setzero_si128(); L]; ROUNDS + 1];
        all[0] = k;
        macro_rules! step {
            ($round:literal, $rcon:literal) => {
                for key in k.iter_mut() {
                    *key = next_round_key(*key, _mm_aeskeygenassist_si128::<$rcon>(*key));
                }
                all[$round] = k;
            };
        }
        step!(1, 0x01);
        step!(2, 0x02);
        step!(3, 0x04);
        step!(4, 0x08);
        step!(5, 0x10);
        step!(6, 0x20);
        step!(7, 0x40);
        step!(8, 0x80);
        step!(9, 0x1b);
        step!(10, 0x36);
        all
    }

    /// Round keys of four keys, key l's in 128-bit lane l of a zmm register.
    #[inline]
    #[target_feature(enable = "avx512f,aes,sse2")]
    fn schedules_zmm(keys: &[[u8; KEY_SIZE]]) -> [__m512i; ROUNDS + 1] {
        schedules::<LANES>(keys).map(|r| {
            let v = _mm512_castsi128_si512(r[0]);
            let v = _mm512_inserti32x4::<1>(v, r[1]);
            let v = _mm512_inserti32x4::<2>(v, r[2]);
            _mm512_inserti32x4::<3>(v, r[3])
        })
    }

    /// Stores block `at` (a byte offset) of each lane's keystream: `lanes[l]` into `out[l]`;
    /// a last, partial block is cut.
    #[inline]
    #[target_feature(enable = "sse2")]
    fn store_lanes<const N: usize>(out: &mut [[u8; N]], at: usize, lanes: &[__m128i]) {
        for (stream, lane) in out.iter_mut().zip(lanes) {
            match stream.get_mut(at..at + 16) {
                // SAFETY: 16-byte unaligned store into a 16-byte slice.
                Some(dst) => unsafe { _mm_storeu_si128(dst.as_mut_ptr().cast(), *lane) },
                None => {
                    let mut bytes = [0u8; 16];
                    // SAFETY: 16-byte store into a 16-byte array.
                    unsafe { _mm_storeu_si128(bytes.as_mut_ptr().cast(), *lane) };
                    let rest = stream.get_mut(at..).unwrap_or(&mut []);
                    let len = rest.len();
                    rest.copy_from_slice(&bytes[..len]);
                    crate::simd::wipe(&mut bytes);
                }
            }
        }
    }

    /// Counter block `index` (zero IV, 64-bit big-endian counter in bytes 8..16).
    #[inline]
    #[target_feature(enable = "sse2")]
    fn counter_block(index: usize) -> __m128i {
        _mm_set_epi64x((index as u64).swap_bytes() as i64, 0)
    }

    /// Blocks encrypted side by side (VAES latency is several cycles, throughput one or two
    /// per cycle).
    const INTERLEAVE: usize = 8;

    /// # Safety
    /// The CPU must support AVX-512F, VAES and AES-NI. `keys.len() == out.len()`.
    #[target_feature(enable = "avx512f,vaes,aes,sse2")]
    pub(super) unsafe fn keystreams<const N: usize>(keys: &[[u8; KEY_SIZE]], out: &mut [[u8; N]]) {
        let blocks = N.div_ceil(16);
        for (keys, out) in keys.chunks(LANES).zip(out.chunks_mut(LANES)) {
            let mut rk = schedules_zmm(keys);
            let mut block = 0;
            while block < blocks {
                let group = (blocks - block).min(INTERLEAVE);
                // Counter block j (zero IV, 64-bit big-endian counter in bytes 8..16), the
                // same in every lane, whitened with each lane's first round key.
                let mut state: [__m512i; INTERLEAVE] = core::array::from_fn(|i| {
                    _mm512_xor_si512(_mm512_broadcast_i32x4(counter_block(block + i)), rk[0])
                });
                for key in &rk[1..ROUNDS] {
                    for s in state.iter_mut().take(group) {
                        *s = _mm512_aesenc_epi128(*s, *key);
                    }
                }
                for s in state.iter_mut().take(group) {
                    *s = _mm512_aesenclast_epi128(*s, rk[ROUNDS]);
                }
                for (i, s) in state.iter().enumerate().take(group) {
                    let lanes = [
                        _mm512_castsi512_si128(*s),
                        _mm512_extracti32x4_epi32::<1>(*s),
                        _mm512_extracti32x4_epi32::<2>(*s),
                        _mm512_extracti32x4_epi32::<3>(*s),
                    ];
                    store_lanes(out, 16 * (block + i), &lanes);
                }
                block += group;
            }
            for key in rk.iter_mut() {
                *key = _mm512_setzero_si512();
            }
            core::hint::black_box(&mut rk);
        }
    }

    /// Keys per ymm register on the AVX2 path.
    const YMM_LANES: usize = 2;

    /// [`keystreams`] on ymm registers: two keys per register.
    ///
    /// # Safety
    /// The CPU must support AVX2, VAES and AES-NI. `keys.len() == out.len()`.
    #[target_feature(enable = "avx2,vaes,aes,sse2")]
    pub(super) unsafe fn keystreams_ymm<const N: usize>(
        keys: &[[u8; KEY_SIZE]],
        out: &mut [[u8; N]],
    ) {
        let blocks = N.div_ceil(16);
        for (keys, out) in keys.chunks(YMM_LANES).zip(out.chunks_mut(YMM_LANES)) {
            let mut rk = schedules::<YMM_LANES>(keys).map(|r| _mm256_set_m128i(r[1], r[0]));
            let mut block = 0;
            while block < blocks {
                let group = (blocks - block).min(INTERLEAVE);
                let mut state: [__m256i; INTERLEAVE] = core::array::from_fn(|i| {
                    _mm256_xor_si256(_mm256_broadcastsi128_si256(counter_block(block + i)), rk[0])
                });
                for key in &rk[1..ROUNDS] {
                    for s in state.iter_mut().take(group) {
                        *s = _mm256_aesenc_epi128(*s, *key);
                    }
                }
                for s in state.iter_mut().take(group) {
                    *s = _mm256_aesenclast_epi128(*s, rk[ROUNDS]);
                }
                for (i, s) in state.iter().enumerate().take(group) {
                    let lanes = [
                        _mm256_castsi256_si128(*s),
                        _mm256_extracti128_si256::<1>(*s),
                    ];
                    store_lanes(out, 16 * (block + i), &lanes);
                }
                block += group;
            }
            for key in rk.iter_mut() {
                *key = _mm256_setzero_si256();
            }
            core::hint::black_box(&mut rk);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(count: usize, seed: u8) -> Vec<[u8; KEY_SIZE]> {
        (0..count)
            .map(|j| core::array::from_fn(|i| (i as u8).wrapping_mul(37) ^ (j as u8) ^ seed))
            .collect()
    }

    fn check<const N: usize>(count: usize) {
        let keys = keys(count, N as u8);
        for level in [
            crate::simd::Level::Avx512,
            crate::simd::Level::Avx2,
            crate::simd::Level::Portable,
        ] {
            let mut got = vec![[0xaau8; N]; count];
            ctr_keystreams_at(level, &keys, &mut got);
            for (key, stream) in keys.iter().zip(&got) {
                let mut want = [0u8; N];
                one(key, &mut want);
                assert_eq!(
                    stream[..],
                    want[..],
                    "level {level:?}, {count} keys, {N} bytes"
                );
            }
        }
    }

    #[test]
    fn matches_the_reference_crates() {
        for count in [0, 1, 2, 3, 4, 5, 7, 8, 9, 16, 17, 64] {
            check::<360>(count);
        }
        for count in [1, 4, 6] {
            check::<1>(count);
            check::<15>(count);
            check::<16>(count);
            check::<17>(count);
            check::<128>(count);
            check::<129>(count);
            check::<200>(count);
        }
    }

    /// NIST SP 800-38A F.5.1 (CTR-AES128) uses a 128-bit counter from f0f1..feff; with a zero
    /// IV and a 64-bit counter the first block is simply AES_k(0): FIPS-197 C.1's key with an
    /// all-zero block, from the `aes` crate, pins the byte order of the counter.
    #[test]
    fn first_block_is_aes_of_zero_and_second_of_one() {
        use aes::cipher::{BlockCipherEncrypt, KeyInit};
        let key: [u8; 16] = core::array::from_fn(|i| i as u8);
        let cipher = aes::Aes128::new(&key.into());
        let mut zero = [0u8; 16].into();
        cipher.encrypt_block(&mut zero);
        let mut one_block = [0u8; 16];
        one_block[15] = 1;
        let mut one_block = one_block.into();
        cipher.encrypt_block(&mut one_block);
        let mut out = [[0u8; 32]; 1];
        ctr_keystreams(&[key], &mut out);
        assert_eq!(out[0][..16], zero[..]);
        assert_eq!(out[0][16..], one_block[..]);
    }
}

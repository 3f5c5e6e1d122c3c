//! HKDF and HMAC over two inputs at once on SHA-NI, for CPUs without AVX-512 (the AVX2 path).
//!
//! One `sha256rnds2` takes several cycles and every round depends on the last, so a lone
//! message leaves the SHA unit idle most of the time: two messages in lock step, their rounds
//! interleaved, fill it. Everything stays in SHA-NI's register order between compressions
//! (no state conversion per block as `sha2::compress256` does), digests feed the next
//! compression as message words without a trip through bytes, and blocks whose words are the
//! same in both lanes run on their precomputed schedule ([`PlanStep::wk`]).

use core::arch::x86_64::*;

use super::{HmacKey, PlanStep, BLOCK, H0, INFO_MAX, K, OUT, STEP_BLOCKS};

/// Lanes in lock step.
pub(super) const LANES: usize = 2;

/// Whether the CPU has SHA-NI and the SSE levels its code uses.
pub(super) fn is_supported() -> bool {
    std::arch::is_x86_feature_detected!("sha")
        && std::arch::is_x86_feature_detected!("sse4.1")
        && std::arch::is_x86_feature_detected!("ssse3")
}

/// A SHA-256 state in SHA-NI's register order.
#[derive(Clone, Copy)]
struct State {
    abef: __m128i,
    cdgh: __m128i,
}

/// A block's sixteen message words, four per register (word 4i in lane 0 of `w[i]`).
type Words = [__m128i; 4];

#[inline]
#[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
fn load_state(words: &[u32; 8]) -> State {
    // SAFETY: two 16-byte unaligned loads from a 32-byte array.
    let (abcd, efgh) = unsafe {
        (
            _mm_loadu_si128(words.as_ptr().cast()),
            _mm_loadu_si128(words.as_ptr().add(4).cast()),
        )
    };
    let cdab = _mm_shuffle_epi32::<0xb1>(abcd);
    let efgh = _mm_shuffle_epi32::<0x1b>(efgh);
    State {
        abef: _mm_alignr_epi8::<8>(cdab, efgh),
        cdgh: _mm_blend_epi16::<0xf0>(efgh, cdab),
    }
}

/// The state's eight words (a..h), as message words 0..8 of the next block.
#[inline]
#[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
fn digest_words(s: &State) -> [__m128i; 2] {
    let feba = _mm_shuffle_epi32::<0x1b>(s.abef);
    let dchg = _mm_shuffle_epi32::<0xb1>(s.cdgh);
    [
        _mm_blend_epi16::<0xf0>(feba, dchg),
        _mm_alignr_epi8::<8>(dchg, feba),
    ]
}

/// The digest as bytes (big-endian words).
#[inline]
#[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
fn digest_bytes(s: &State) -> [u8; OUT] {
    let [low, high] = digest_words(s);
    let swap = byte_swap();
    let mut out = [0u8; OUT];
    // SAFETY: two 16-byte unaligned stores into a 32-byte array.
    unsafe {
        _mm_storeu_si128(out.as_mut_ptr().cast(), _mm_shuffle_epi8(low, swap));
        _mm_storeu_si128(
            out.as_mut_ptr().add(16).cast(),
            _mm_shuffle_epi8(high, swap),
        );
    }
    out
}

/// Byte order of each 32-bit word reversed (`pshufb` mask).
#[inline]
#[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
fn byte_swap() -> __m128i {
    _mm_set_epi64x(0x0c0d_0e0f_0809_0a0b, 0x0405_0607_0001_0203)
}

/// Message words of a 64-byte block.
#[inline]
#[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
fn block_words(block: &[u8; BLOCK]) -> Words {
    let swap = byte_swap();
    core::array::from_fn(|i| {
        // SAFETY: 16-byte unaligned load at offset 16 i < 64 of a 64-byte array.
        let v = unsafe { _mm_loadu_si128(block.as_ptr().add(16 * i).cast()) };
        _mm_shuffle_epi8(v, swap)
    })
}

/// Constant words (the same in both lanes).
#[inline]
#[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
fn const_words(words: &[u32; 16]) -> Words {
    // SAFETY: 16-byte unaligned loads at offsets 16 i < 64 of a 64-byte array.
    core::array::from_fn(|i| unsafe { _mm_loadu_si128(words.as_ptr().add(4 * i).cast()) })
}

/// Four rounds with `wk` = W + K of rounds 4g..4g+4.
#[inline]
#[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
fn rounds4(s: &mut State, wk: __m128i) {
    s.cdgh = _mm_sha256rnds2_epu32(s.cdgh, s.abef, wk);
    // After two rounds the new ABEF is in `cdgh` and the new CDGH is the old ABEF.
    s.abef = _mm_sha256rnds2_epu32(s.abef, s.cdgh, _mm_shuffle_epi32::<0x0e>(wk));
}

/// W[4g..4g+4] from the last sixteen words (`w[g % 4]` holds W[4g-16..], and so on).
#[inline]
#[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
fn schedule(w0: __m128i, w1: __m128i, w2: __m128i, w3: __m128i) -> __m128i {
    let t = _mm_add_epi32(_mm_sha256msg1_epu32(w0, w1), _mm_alignr_epi8::<4>(w3, w2));
    _mm_sha256msg2_epu32(t, w3)
}

/// K[4g..4g+4].
#[inline]
#[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
fn k4(g: usize) -> __m128i {
    let k: &[u32; 4] = K[4 * g..].first_chunk().unwrap_or(&[0; 4]);
    // SAFETY: 16-byte unaligned load from a 16-byte array.
    unsafe { _mm_loadu_si128(k.as_ptr().cast()) }
}

/// One compression in each lane, the lanes' rounds interleaved.
#[inline(never)]
#[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
fn compress2(s: &mut [State; LANES], mut w: [Words; LANES]) {
    let start = *s;
    macro_rules! group {
        ($g:literal) => {{
            let k = k4($g);
            for (state, w) in s.iter_mut().zip(w.iter_mut()) {
                if $g >= 4 {
                    w[$g % 4] =
                        schedule(w[$g % 4], w[($g + 1) % 4], w[($g + 2) % 4], w[($g + 3) % 4]);
                }
                rounds4(state, _mm_add_epi32(w[$g % 4], k));
            }
        }};
    }
    group!(0);
    group!(1);
    group!(2);
    group!(3);
    group!(4);
    group!(5);
    group!(6);
    group!(7);
    group!(8);
    group!(9);
    group!(10);
    group!(11);
    group!(12);
    group!(13);
    group!(14);
    group!(15);
    for (state, start) in s.iter_mut().zip(start) {
        state.abef = _mm_add_epi32(state.abef, start.abef);
        state.cdgh = _mm_add_epi32(state.cdgh, start.cdgh);
    }
}

/// One compression in each lane of a block whose words are the same in both, from its
/// schedule with the round constants added (`wk[t] = W[t] + K[t]`).
#[inline(never)]
#[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
fn compress2_wk(s: &mut [State; LANES], wk: &[u32; 64]) {
    let start = *s;
    for chunk in wk.chunks_exact(4) {
        // SAFETY: 16-byte unaligned load from a 4-word chunk.
        let wk = unsafe { _mm_loadu_si128(chunk.as_ptr().cast()) };
        for state in s.iter_mut() {
            rounds4(state, wk);
        }
    }
    for (state, start) in s.iter_mut().zip(start) {
        state.abef = _mm_add_epi32(state.abef, start.abef);
        state.cdgh = _mm_add_epi32(state.cdgh, start.cdgh);
    }
}

/// The words of HMAC's outer block: a 32-byte inner digest, then padding for 96 bytes.
#[inline]
#[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
fn outer_block(inner: &State) -> Words {
    let [low, high] = digest_words(inner);
    [
        low,
        high,
        _mm_set_epi32(0, 0, 0, 0x8000_0000u32 as i32),
        _mm_set_epi32(((BLOCK + OUT) * 8) as i32, 0, 0, 0),
    ]
}

/// HMAC key states of both lanes.
struct Keys {
    inner: [State; LANES],
    outer: [State; LANES],
}

impl Keys {
    /// The same key in both lanes.
    #[inline]
    #[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
    fn broadcast(key: &HmacKey) -> Keys {
        let (inner, outer) = (load_state(&key.inner), load_state(&key.outer));
        Keys {
            inner: [inner; LANES],
            outer: [outer; LANES],
        }
    }

    /// Keys given as message words 0..8 (a 32-byte key, zero padded to a block).
    #[inline]
    #[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
    fn from_key_words(keys: &[[__m128i; 2]; LANES]) -> Keys {
        let h0 = load_state(&H0);
        let mut out = Keys {
            inner: [h0; LANES],
            outer: [h0; LANES],
        };
        for (pad, states) in [
            (0x3636_3636u32, &mut out.inner),
            (0x5c5c_5c5c, &mut out.outer),
        ] {
            let fill = _mm_set1_epi32(pad as i32);
            let w: [Words; LANES] = core::array::from_fn(|l| {
                [
                    _mm_xor_si128(keys[l][0], fill),
                    _mm_xor_si128(keys[l][1], fill),
                    fill,
                    fill,
                ]
            });
            compress2(states, w);
        }
        out
    }

    /// Keys of at most 64 bytes (HMAC zero-pads them to a block).
    #[inline]
    #[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
    fn from_keys(keys: [&[u8]; LANES]) -> Keys {
        let h0 = load_state(&H0);
        let mut out = Keys {
            inner: [h0; LANES],
            outer: [h0; LANES],
        };
        let mut pads = [[0u8; BLOCK]; LANES];
        for (pad, states) in [(0x36u8, &mut out.inner), (0x5c, &mut out.outer)] {
            for (block, key) in pads.iter_mut().zip(keys) {
                block.fill(pad);
                for (byte, key_byte) in block.iter_mut().zip(key) {
                    *byte ^= key_byte;
                }
            }
            compress2(states, core::array::from_fn(|l| block_words(&pads[l])));
        }
        crate::simd::wipe(pads.as_flattened_mut());
        out
    }

    /// HMAC's outer hash over each lane's inner state.
    #[inline]
    #[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
    fn finish(&self, inner: &[State; LANES]) -> [State; LANES] {
        let mut state = self.outer;
        compress2(&mut state, core::array::from_fn(|l| outer_block(&inner[l])));
        state
    }
}

/// HMAC(key, T ‖ tail) in both lanes, where T is the 32-byte per-lane `prefix` (none in the
/// first expansion step) and `tail` is the same in both lanes.
#[inline]
#[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
fn mac_tail(keys: &Keys, prefix: Option<&[[__m128i; 2]; LANES]>, tail: &[u8]) -> [State; LANES] {
    let mut buf = [0u8; STEP_BLOCKS * BLOCK];
    let start = if prefix.is_some() { OUT } else { 0 };
    let len = start + tail.len();
    let blocks = (len + 9).div_ceil(BLOCK);
    let mut state = keys.inner;
    if let Some(body) = buf.get_mut(start..len) {
        body.copy_from_slice(tail);
    }
    if let Some(end) = buf.get_mut(len) {
        *end = 0x80;
    }
    let bits = ((BLOCK + len) as u64) * 8;
    if let Some(length) = buf.get_mut(blocks * BLOCK - 8..blocks * BLOCK) {
        length.copy_from_slice(&bits.to_be_bytes());
    }
    for (index, block) in buf.as_chunks::<BLOCK>().0.iter().take(blocks).enumerate() {
        let words = block_words(block);
        let w: [Words; LANES] = core::array::from_fn(|l| match (index, prefix) {
            (0, Some(prefix)) => [prefix[l][0], prefix[l][1], words[2], words[3]],
            _ => words,
        });
        compress2(&mut state, w);
    }
    keys.finish(&state)
}

/// `mac_tail` for one planned expansion step.
#[inline]
#[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
fn mac_planned(
    keys: &Keys,
    prefix: Option<&[[__m128i; 2]; LANES]>,
    step: &PlanStep,
) -> [State; LANES] {
    let mut state = keys.inner;
    for block in 0..step.blocks.min(STEP_BLOCKS) {
        match (block, prefix) {
            (0, Some(prefix)) => {
                let first = const_words(&step.first);
                compress2(
                    &mut state,
                    core::array::from_fn(|l| [prefix[l][0], prefix[l][1], first[2], first[3]]),
                );
            }
            _ => compress2_wk(&mut state, &step.wk[block]),
        }
    }
    keys.finish(&state)
}

/// `okms[l] = HKDF(salt, ikms[l], info)` for both lanes (as `hkdf()`).
///
/// # Safety
/// The CPU must support SHA-NI, SSSE3 and SSE4.1 ([`is_supported`]). `IKM + 9 <= 64`,
/// `info.len() <= INFO_MAX`, `OKM <= 255 * 32`.
#[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
pub(super) unsafe fn hkdf2<const IKM: usize, const OKM: usize>(
    salt: &HmacKey,
    info: &[u8],
    plan: Option<&[PlanStep]>,
    ikms: [&[u8; IKM]; LANES],
    okms: [&mut [u8; OKM]; LANES],
) {
    // Extract: PRK = HMAC(salt, ikm), one padded block per lane.
    let salt = Keys::broadcast(salt);
    let mut rows = [[0u8; BLOCK]; LANES];
    for (row, ikm) in rows.iter_mut().zip(ikms) {
        if let Some(body) = row.get_mut(..IKM) {
            body.copy_from_slice(ikm);
        }
        if let Some(end) = row.get_mut(IKM) {
            *end = 0x80;
        }
        row[BLOCK - 8..].copy_from_slice(&(((BLOCK + IKM) as u64) * 8).to_be_bytes());
    }
    let mut inner = salt.inner;
    compress2(&mut inner, core::array::from_fn(|l| block_words(&rows[l])));
    crate::simd::wipe(rows.as_flattened_mut());
    let prk = salt.finish(&inner);
    let keys = Keys::from_key_words(&core::array::from_fn(|l| digest_words(&prk[l])));
    // Expand: T(i) = HMAC(prk, T(i-1) ‖ info ‖ i).
    let mut tail = [0u8; INFO_MAX + 1];
    let info_len = info.len().min(INFO_MAX);
    tail[..info_len].copy_from_slice(&info[..info_len]);
    let mut t: Option<[[__m128i; 2]; LANES]> = None;
    let [okm0, okm1] = okms;
    for (index, (chunk0, chunk1)) in okm0.chunks_mut(OUT).zip(okm1.chunks_mut(OUT)).enumerate() {
        tail[info_len] = (index as u8).wrapping_add(1);
        let next = match plan.and_then(|plan| plan.get(index)) {
            Some(step) => mac_planned(&keys, t.as_ref(), step),
            None => mac_tail(&keys, t.as_ref(), &tail[..info_len + 1]),
        };
        for (chunk, state) in [chunk0, chunk1].into_iter().zip(next.iter()) {
            let mut digest = digest_bytes(state);
            let n = chunk.len();
            chunk.copy_from_slice(&digest[..n]);
            crate::simd::wipe(&mut digest);
        }
        t = Some(core::array::from_fn(|l| digest_words(&next[l])));
    }
}

/// `out[l] = HMAC-SHA256(keys[l], msgs[l])` for both lanes (as `HmacKey::mac`).
///
/// # Safety
/// The CPU must support SHA-NI, SSSE3 and SSE4.1 ([`is_supported`]). Keys of at most 64
/// bytes, messages of equal length.
#[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
pub(super) unsafe fn hmac2(
    keys: [&[u8]; LANES],
    msgs: [&[u8]; LANES],
    out: [&mut [u8; OUT]; LANES],
) {
    let keys = Keys::from_keys(keys);
    let len = msgs[0].len();
    let mut state = keys.inner;
    let full = len / BLOCK;
    for block in 0..full {
        let w: [Words; LANES] = core::array::from_fn(|l| {
            let row = msgs[l]
                .get(block * BLOCK..)
                .and_then(|rest| rest.first_chunk::<BLOCK>())
                .unwrap_or(&[0u8; BLOCK]);
            block_words(row)
        });
        compress2(&mut state, w);
    }
    let rest = len - full * BLOCK;
    let tail_blocks = if rest + 9 <= BLOCK { 1 } else { 2 };
    let bits = ((BLOCK + len) as u64) * 8;
    let mut tails = [[[0u8; BLOCK]; 2]; LANES];
    for (tail, msg) in tails.iter_mut().zip(msgs) {
        let flat = tail.as_flattened_mut();
        let bytes = msg.get(full * BLOCK..).unwrap_or(&[]);
        flat[..bytes.len()].copy_from_slice(bytes);
        flat[bytes.len()] = 0x80;
        flat[tail_blocks * BLOCK - 8..tail_blocks * BLOCK].copy_from_slice(&bits.to_be_bytes());
    }
    let [tails0, tails1] = &tails;
    for (block0, block1) in tails0.iter().zip(tails1).take(tail_blocks) {
        compress2(&mut state, [block_words(block0), block_words(block1)]);
    }
    crate::simd::wipe(tails.as_flattened_mut().as_flattened_mut());
    let digest = keys.finish(&state);
    for (out, state) in out.into_iter().zip(digest.iter()) {
        *out = digest_bytes(state);
    }
}

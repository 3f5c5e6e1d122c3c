//! HKDF-SHA256 (RFC 5869, byte-identical to the `hkdf` crate) on the raw SHA-256 compression
//! function (`sha2::block_api::compress256`, SHA-NI when the CPU has it).
//!
//! HMAC's key blocks are compressed once per key: for a constant salt (Sphinx's two HKDFs
//! both have one) at compile time, for the pseudo-random key once per derivation instead of
//! once per output block as `hkdf`/`hmac` do. Messages are hashed straight from stack
//! buffers with their padding, with no streaming-buffer bookkeeping.
//!
//! In an expansion step only T(i-1), the first 32 bytes of the message, differs between
//! lanes: with an [`ExpandPlan`] (built at compile time for Sphinx's two infos) the other
//! blocks skip the message schedule in the 16-lane pass (W + K precomputed: 16 instead of
//! ~25 vector operations per round).
//!
//! On the AVX2 path (CPUs without AVX-512) inputs go in pairs through SHA-NI with their
//! rounds interleaved ([`ni`]: one message at a time leaves the SHA unit waiting on each
//! round's latency), planned blocks there too on their precomputed W + K.

use sha2::block_api::compress256;
use zeroize::Zeroize;

const BLOCK: usize = 64;
const OUT: usize = 32;
/// Longest `info` the fast expansion takes (Sphinx's are 98 and 44 bytes).
pub const INFO_MAX: usize = 128;

const H0: [u32; 8] = [
    0x6a09_e667,
    0xbb67_ae85,
    0x3c6e_f372,
    0xa54f_f53a,
    0x510e_527f,
    0x9b05_688c,
    0x1f83_d9ab,
    0x5be0_cd19,
];

const K: [u32; 64] = [
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
];

/// SHA-256 compression usable in constants (for key blocks known at compile time).
const fn compress_const(state: [u32; 8], block: &[u8; BLOCK]) -> [u32; 8] {
    let mut w = [0u32; 64];
    let mut i = 0;
    while i < 16 {
        w[i] = u32::from_be_bytes([
            block[4 * i],
            block[4 * i + 1],
            block[4 * i + 2],
            block[4 * i + 3],
        ]);
        i += 1;
    }
    while i < 64 {
        let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
        let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16]
            .wrapping_add(s0)
            .wrapping_add(w[i - 7])
            .wrapping_add(s1);
        i += 1;
    }
    let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut h] = state;
    i = 0;
    while i < 64 {
        let s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
        let ch = (e & f) ^ (!e & g);
        let t1 = h
            .wrapping_add(s1)
            .wrapping_add(ch)
            .wrapping_add(K[i])
            .wrapping_add(w[i]);
        let s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
        let maj = (a & b) ^ (a & c) ^ (b & c);
        let t2 = s0.wrapping_add(maj);
        h = g;
        g = f;
        f = e;
        e = d.wrapping_add(t1);
        d = c;
        c = b;
        b = a;
        a = t1.wrapping_add(t2);
        i += 1;
    }
    [
        state[0].wrapping_add(a),
        state[1].wrapping_add(b),
        state[2].wrapping_add(c),
        state[3].wrapping_add(d),
        state[4].wrapping_add(e),
        state[5].wrapping_add(f),
        state[6].wrapping_add(g),
        state[7].wrapping_add(h),
    ]
}

/// SHA-256 of `msg`, usable in constants.
const fn sha256_const(msg: &[u8]) -> [u8; OUT] {
    let mut state = H0;
    let total = (msg.len() + 9).div_ceil(BLOCK);
    let mut index = 0;
    while index < total {
        let mut block = [0u8; BLOCK];
        let mut i = 0;
        while i < BLOCK {
            let at = index * BLOCK + i;
            if at < msg.len() {
                block[i] = msg[at];
            } else if at == msg.len() {
                block[i] = 0x80;
            }
            i += 1;
        }
        if index + 1 == total {
            let bits = (msg.len() as u64).wrapping_mul(8).to_be_bytes();
            let mut j = 0;
            while j < 8 {
                block[BLOCK - 8 + j] = bits[j];
                j += 1;
            }
        }
        state = compress_const(state, &block);
        index += 1;
    }
    let mut out = [0u8; OUT];
    let mut k = 0;
    while k < 8 {
        let bytes = state[k].to_be_bytes();
        out[4 * k] = bytes[0];
        out[4 * k + 1] = bytes[1];
        out[4 * k + 2] = bytes[2];
        out[4 * k + 3] = bytes[3];
        k += 1;
    }
    out
}

/// HMAC-SHA256 with its key blocks already compressed: the states after `key ⊕ ipad` and
/// `key ⊕ opad`.
#[derive(Clone, Zeroize)]
pub struct HmacKey {
    inner: [u32; 8],
    outer: [u32; 8],
}

impl HmacKey {
    /// For a key known at compile time (any length: as HMAC does, a key longer than a block
    /// is replaced by its SHA-256 digest).
    pub const fn new_const(key: &[u8]) -> HmacKey {
        let mut block = [0u8; BLOCK];
        if key.len() <= BLOCK {
            let mut i = 0;
            while i < key.len() {
                block[i] = key[i];
                i += 1;
            }
        } else {
            let digest = sha256_const(key);
            let mut i = 0;
            while i < OUT {
                block[i] = digest[i];
                i += 1;
            }
        }
        let mut ipad = [0x36u8; BLOCK];
        let mut opad = [0x5cu8; BLOCK];
        let mut i = 0;
        while i < BLOCK {
            ipad[i] ^= block[i];
            opad[i] ^= block[i];
            i += 1;
        }
        HmacKey {
            inner: compress_const(H0, &ipad),
            outer: compress_const(H0, &opad),
        }
    }

    /// For a 32-byte key (HKDF's pseudo-random key).
    pub fn new(key: &[u8; OUT]) -> HmacKey {
        Self::new_short(key)
    }

    /// For a key of at most 64 bytes (HMAC zero-pads it to a block); longer keys would be
    /// hashed first, which this does not do: it uses their first 64 bytes.
    fn new_short(key: &[u8]) -> HmacKey {
        let mut pads = [[0x36u8; BLOCK], [0x5cu8; BLOCK]];
        for (index, byte) in key.iter().enumerate() {
            pads[0][index] ^= byte;
            pads[1][index] ^= byte;
        }
        let mut hmac = HmacKey {
            inner: H0,
            outer: H0,
        };
        compress256(&mut hmac.inner, &pads[..1]);
        compress256(&mut hmac.outer, &pads[1..]);
        crate::simd::wipe(pads.as_flattened_mut());
        hmac
    }

    /// HMAC(key, msg).
    pub fn mac(&self, msg: &[u8]) -> [u8; OUT] {
        let mut state = self.inner;
        finish(&mut state, BLOCK, msg);
        let mut inner = digest(&state);
        state = self.outer;
        finish(&mut state, BLOCK, &inner);
        inner.zeroize();
        let out = digest(&state);
        state.zeroize();
        out
    }
}

/// Hashes `msg` and SHA-256 padding into `state`, `prefix` bytes having been hashed before.
fn finish(state: &mut [u32; 8], prefix: usize, msg: &[u8]) {
    let (blocks, rest) = msg.as_chunks::<BLOCK>();
    if !blocks.is_empty() {
        compress256(state, blocks);
    }
    let mut pad = [[0u8; BLOCK]; 2];
    let used = if rest.len() + 9 <= BLOCK { 1 } else { 2 };
    let bits = ((prefix + msg.len()) as u64).wrapping_mul(8);
    {
        let flat = pad.as_flattened_mut();
        flat[..rest.len()].copy_from_slice(rest);
        flat[rest.len()] = 0x80;
        flat[used * BLOCK - 8..used * BLOCK].copy_from_slice(&bits.to_be_bytes());
    }
    compress256(state, &pad[..used]);
    crate::simd::wipe(pad.as_flattened_mut());
}

fn digest(state: &[u32; 8]) -> [u8; OUT] {
    let mut out = [0u8; OUT];
    for (chunk, word) in out.chunks_exact_mut(4).zip(state) {
        chunk.copy_from_slice(&word.to_be_bytes());
    }
    out
}

/// HKDF-SHA256 with the salt's HMAC key `salt`: extract from `ikm`, then expand `info` to
/// fill `okm` (at most 255 × 32 bytes; `info` at most [`INFO_MAX`]). Returns `false` (okm
/// untouched) if those limits are exceeded.
pub fn hkdf(salt: &HmacKey, ikm: &[u8], info: &[u8], okm: &mut [u8]) -> bool {
    if info.len() > INFO_MAX || okm.len() > 255 * OUT {
        return false;
    }
    let mut prk = salt.mac(ikm);
    let key = HmacKey::new(&prk);
    prk.zeroize();
    // T(i) = HMAC(prk, T(i-1) ‖ info ‖ i); the message is built in place behind T(i-1).
    let mut msg = [0u8; OUT + INFO_MAX + 1];
    msg[OUT..OUT + info.len()].copy_from_slice(info);
    let mut start = OUT; // T(0) is empty
    for (index, chunk) in okm.chunks_mut(OUT).enumerate() {
        msg[OUT + info.len()] = (index as u8).wrapping_add(1);
        let mut block = key.mac(&msg[start..OUT + info.len() + 1]);
        chunk.copy_from_slice(&block[..chunk.len()]);
        msg[..OUT].copy_from_slice(&block);
        block.zeroize();
        start = 0;
    }
    crate::simd::wipe(&mut msg);
    let mut key = key;
    key.zeroize();
    true
}

/// Message words of a 64-byte block (big-endian), usable in constants.
const fn block_words(bytes: &[u8], at: usize) -> [u32; 16] {
    let mut w = [0u32; 16];
    let mut i = 0;
    while i < 16 {
        let b = at + 4 * i;
        w[i] = u32::from_be_bytes([bytes[b], bytes[b + 1], bytes[b + 2], bytes[b + 3]]);
        i += 1;
    }
    w
}

/// W[t] + K[t] for t < 64: the message schedule of a block with the round constants folded
/// in, usable in constants.
const fn schedule_plus_k(words: &[u32; 16]) -> [u32; 64] {
    let mut w = [0u32; 64];
    let mut i = 0;
    while i < 16 {
        w[i] = words[i];
        i += 1;
    }
    while i < 64 {
        let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
        let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16]
            .wrapping_add(s0)
            .wrapping_add(w[i - 7])
            .wrapping_add(s1);
        i += 1;
    }
    i = 0;
    while i < 64 {
        w[i] = w[i].wrapping_add(K[i]);
        i += 1;
    }
    w
}

/// Most inner-hash blocks of one expansion step: 64 (key) + 32 + [`INFO_MAX`] + 1 + 9 bytes.
const STEP_BLOCKS: usize = 3;

/// One expansion step T(i) = HMAC(prk, T(i-1) ‖ info ‖ i) as lane-independent data.
#[derive(Clone, Copy)]
struct PlanStep {
    /// Inner-hash message blocks after the key block.
    blocks: usize,
    /// Words of the first block (for steps after the first, words 0..8 are T(i-1) and
    /// these are not used).
    first: [u32; 16],
    /// W + K of every block whose words are the same in all lanes: all blocks of the first
    /// step, every block but the first of the others.
    wk: [[u32; 64]; STEP_BLOCKS],
}

/// HKDF expansion of one `info` into `STEPS` output blocks (`STEPS` = okm length / 32,
/// rounded up), with the message schedules of its lane-independent blocks computed ahead
/// (at compile time for a `const`): only T(i-1), the first 32 bytes of each step's message,
/// differs between lanes, so all blocks of the first step and all but the first block of
/// the others skip the schedule in [`hkdf_many_planned`]. Same output as [`hkdf()`].
pub struct ExpandPlan<const STEPS: usize> {
    info: &'static [u8],
    steps: [PlanStep; STEPS],
}

impl<const STEPS: usize> ExpandPlan<STEPS> {
    /// The plan for `info`; `None` if `info` is longer than [`INFO_MAX`] or `STEPS` is
    /// not in 1..=255.
    pub const fn new(info: &'static [u8]) -> Option<ExpandPlan<STEPS>> {
        if info.len() > INFO_MAX || STEPS == 0 || STEPS > 255 {
            return None;
        }
        let empty = PlanStep {
            blocks: 0,
            first: [0; 16],
            wk: [[0; 64]; STEP_BLOCKS],
        };
        let mut steps = [empty; STEPS];
        let mut index = 0;
        while index < STEPS {
            // As `avx512::mac` lays it out: T(i-1) (none in the first step) ‖ info ‖ i,
            // then SHA-256 padding for a message after the 64-byte key block.
            let mut buf = [0u8; STEP_BLOCKS * BLOCK];
            let start = if index == 0 { 0 } else { OUT };
            let mut i = 0;
            while i < info.len() {
                buf[start + i] = info[i];
                i += 1;
            }
            let len = start + info.len() + 1;
            buf[len - 1] = (index as u8).wrapping_add(1);
            buf[len] = 0x80;
            let blocks = (len + 9).div_ceil(BLOCK);
            let bits = ((BLOCK + len) as u64 * 8).to_be_bytes();
            i = 0;
            while i < 8 {
                buf[blocks * BLOCK - 8 + i] = bits[i];
                i += 1;
            }
            let step = &mut steps[index];
            step.blocks = blocks;
            step.first = block_words(&buf, 0);
            let mut block = if index == 0 { 0 } else { 1 };
            while block < blocks {
                step.wk[block] = schedule_plus_k(&block_words(&buf, block * BLOCK));
                block += 1;
            }
            index += 1;
        }
        Some(ExpandPlan { info, steps })
    }

    /// The `info` the plan was made for.
    pub fn info(&self) -> &'static [u8] {
        self.info
    }
}

/// [`hkdf_many`] with the expansion planned ahead ([`ExpandPlan`]). Returns `false` (okms
/// untouched) if `STEPS` is not `OKM / 32` rounded up.
pub fn hkdf_many_planned<const IKM: usize, const OKM: usize, const STEPS: usize>(
    salt: &HmacKey,
    plan: &ExpandPlan<STEPS>,
    ikms: &[[u8; IKM]],
    okms: &mut [[u8; OKM]],
) -> bool {
    hkdf_many_planned_at(super::level(), salt, plan, ikms, okms)
}

/// As [`hkdf_many_planned`] on a chosen path (falls back when the CPU lacks it).
pub fn hkdf_many_planned_at<const IKM: usize, const OKM: usize, const STEPS: usize>(
    level: super::Level,
    salt: &HmacKey,
    plan: &ExpandPlan<STEPS>,
    ikms: &[[u8; IKM]],
    okms: &mut [[u8; OKM]],
) -> bool {
    if STEPS != OKM.div_ceil(OUT) {
        return false;
    }
    hkdf_many_with(level, salt, plan.info, Some(&plan.steps), ikms, okms)
}

/// Fewest lanes for which the 16-lane AVX-512 pass beats SHA-NI one message at a time.
pub const MANY_MIN_LANES: usize = 6;
/// Lanes of one AVX-512 pass.
pub const MANY_LANES: usize = 16;

/// [`hkdf()`] for many inputs of one length: `okms[j] = HKDF(salt, ikms[j], info)` for every
/// `j < min(ikms.len(), okms.len())`. With AVX-512, groups of up to 16 inputs run in lock
/// step (one 32-bit lane each); on the AVX2 path pairs on SHA-NI; otherwise, or for an `ikm`
/// longer than 55 bytes, one at a time. Returns `false` (okms untouched) if `info` or `OKM` exceed [`hkdf()`]'s limits.
pub fn hkdf_many<const IKM: usize, const OKM: usize>(
    salt: &HmacKey,
    info: &[u8],
    ikms: &[[u8; IKM]],
    okms: &mut [[u8; OKM]],
) -> bool {
    hkdf_many_at(super::level(), salt, info, ikms, okms)
}

/// As [`hkdf_many`] on a chosen path (falls back when the CPU lacks it).
pub fn hkdf_many_at<const IKM: usize, const OKM: usize>(
    level: super::Level,
    salt: &HmacKey,
    info: &[u8],
    ikms: &[[u8; IKM]],
    okms: &mut [[u8; OKM]],
) -> bool {
    hkdf_many_with(level, salt, info, None, ikms, okms)
}

fn hkdf_many_with<const IKM: usize, const OKM: usize>(
    level: super::Level,
    salt: &HmacKey,
    info: &[u8],
    plan: Option<&[PlanStep]>,
    ikms: &[[u8; IKM]],
    okms: &mut [[u8; OKM]],
) -> bool {
    if info.len() > INFO_MAX || OKM > 255 * OUT {
        return false;
    }
    let lanes = ikms.len().min(okms.len());
    #[cfg(target_arch = "x86_64")]
    if level == super::Level::Avx2 && IKM + 9 <= BLOCK && ni::is_supported() {
        let (ikms, okms) = (&ikms[..lanes], &mut okms[..lanes]);
        let (ikm_pairs, ikm_rest) = ikms.as_chunks::<{ ni::LANES }>();
        let (okm_pairs, okm_rest) = okms.as_chunks_mut::<{ ni::LANES }>();
        for (ikm, okm) in ikm_pairs.iter().zip(okm_pairs.iter_mut()) {
            let [okm0, okm1] = okm;
            // SAFETY: SHA-NI, SSSE3 and SSE4.1 were detected above; IKM + 9 <= 64 and the
            // info and OKM limits were checked on entry.
            unsafe { ni::hkdf2(salt, info, plan, [&ikm[0], &ikm[1]], [okm0, okm1]) };
        }
        for (ikm, okm) in ikm_rest.iter().zip(okm_rest.iter_mut()) {
            hkdf(salt, ikm, info, okm);
        }
        return true;
    }
    let wide = level == super::Level::Avx512 && level.is_supported() && IKM + 9 <= BLOCK;
    let mut start = 0;
    while start < lanes {
        let end = lanes.min(start + MANY_LANES);
        if wide && end - start >= MANY_MIN_LANES {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the CPU has AVX-512F (checked above).
            unsafe {
                avx512::hkdf16(salt, info, plan, &ikms[start..end], &mut okms[start..end])
            };
        } else {
            for (ikm, okm) in ikms[start..end].iter().zip(okms[start..end].iter_mut()) {
                hkdf(salt, ikm, info, okm);
            }
        }
        start = end;
    }
    true
}

/// `out[j] = HMAC-SHA256(keys[j], msgs[j])` for `j < min(keys.len(), msgs.len(),
/// out.len())`: 16 lanes at a time with AVX-512 when the messages have equal length, pairs
/// of equal length on SHA-NI on the AVX2 path, otherwise one at a time (SHA-NI). Returns `false` (out untouched) if a key is longer
/// than 64 bytes.
pub fn hmac_many(keys: &[&[u8]], msgs: &[&[u8]], out: &mut [[u8; OUT]]) -> bool {
    hmac_many_at(super::level(), keys, msgs, out)
}

/// As [`hmac_many`] on a chosen path (falls back when the CPU lacks it).
pub fn hmac_many_at(
    level: super::Level,
    keys: &[&[u8]],
    msgs: &[&[u8]],
    out: &mut [[u8; OUT]],
) -> bool {
    if keys.iter().any(|key| key.len() > BLOCK) {
        return false;
    }
    let lanes = keys.len().min(msgs.len()).min(out.len());
    #[cfg(target_arch = "x86_64")]
    if level == super::Level::Avx2 && ni::is_supported() {
        let mut start = 0;
        while start < lanes {
            let pair = start + 1 < lanes && msgs[start].len() == msgs[start + 1].len();
            if let (true, [out0, out1, ..]) = (pair, &mut out[start..]) {
                // SAFETY: SHA-NI, SSSE3 and SSE4.1 were detected above; keys of at most 64
                // bytes were checked on entry, the two messages have equal length.
                unsafe {
                    ni::hmac2(
                        [keys[start], keys[start + 1]],
                        [msgs[start], msgs[start + 1]],
                        [out0, out1],
                    )
                };
                start += ni::LANES;
            } else {
                let mut hmac = HmacKey::new_short(keys[start]);
                out[start] = hmac.mac(msgs[start]);
                hmac.zeroize();
                start += 1;
            }
        }
        return true;
    }
    let wide = level == super::Level::Avx512 && level.is_supported();
    let mut start = 0;
    while start < lanes {
        let end = lanes.min(start + MANY_LANES);
        let group = &msgs[start..end];
        let equal = group.iter().all(|msg| msg.len() == group[0].len());
        if wide && equal && end - start >= MANY_MIN_LANES {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the CPU has AVX-512F (checked above).
            unsafe {
                avx512::hmac16(&keys[start..end], group, &mut out[start..end])
            };
        } else {
            for ((key, msg), out) in keys[start..end].iter().zip(group).zip(&mut out[start..end]) {
                let mut hmac = HmacKey::new_short(key);
                *out = hmac.mac(msg);
                hmac.zeroize();
            }
        }
        start = end;
    }
    true
}

#[cfg(target_arch = "x86_64")]
#[path = "hkdf_ni.rs"]
mod ni;

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use core::arch::x86_64::*;

    use super::super::chacha::avx512::transpose16;
    use super::*;

    type V = __m512i;

    /// # Safety
    /// The CPU must support AVX-512F. 1..=16 lanes, keys of at most 64 bytes, messages of
    /// equal length.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn hmac16(keys: &[&[u8]], msgs: &[&[u8]], out: &mut [[u8; OUT]]) {
        let len = msgs.first().map_or(0, |msg| msg.len());
        let mut rows = [[0u8; BLOCK]; 16];
        let mut key = Lanes {
            inner: h0(),
            outer: h0(),
        };
        for (pad, state) in [(0x36u8, &mut key.inner), (0x5c, &mut key.outer)] {
            for (lane, row) in rows.iter_mut().enumerate() {
                row.fill(pad);
                let lane_key = keys.get(lane).or(keys.first()).copied().unwrap_or(&[]);
                for (byte, key_byte) in row.iter_mut().zip(lane_key) {
                    *byte ^= key_byte;
                }
            }
            compress(state, &mut load_rows(&rows));
        }
        // Inner hash: the full blocks straight from the messages, then the padded tail.
        let mut state = key.inner;
        let full = len / BLOCK;
        for block in 0..full {
            let mut loaded = [_mm512_setzero_si512(); 16];
            for (lane, vector) in loaded.iter_mut().enumerate() {
                let msg = msgs.get(lane).or(msgs.first()).copied().unwrap_or(&[]);
                let row = msg
                    .get(block * BLOCK..(block + 1) * BLOCK)
                    .unwrap_or(&[0u8; BLOCK][..]);
                // SAFETY: `row` is 64 bytes (a full block, or the zero block if absent).
                *vector = unsafe { _mm512_loadu_si512(row.as_ptr().cast()) };
            }
            let mut w = transpose_be(&loaded);
            compress(&mut state, &mut w);
        }
        let rest = len - full * BLOCK;
        let tail_blocks = if rest + 9 <= BLOCK { 1 } else { 2 };
        let bits = ((BLOCK + len) as u64) * 8;
        let mut tails = [[[0u8; BLOCK]; 2]; 16];
        for (lane, tail) in tails.iter_mut().enumerate() {
            let msg = msgs.get(lane).or(msgs.first()).copied().unwrap_or(&[]);
            let flat = tail.as_flattened_mut();
            let bytes = msg.get(full * BLOCK..).unwrap_or(&[]);
            flat[..bytes.len()].copy_from_slice(bytes);
            flat[bytes.len()] = 0x80;
            flat[tail_blocks * BLOCK - 8..tail_blocks * BLOCK].copy_from_slice(&bits.to_be_bytes());
        }
        for block in 0..tail_blocks {
            let mut loaded = [_mm512_setzero_si512(); 16];
            for (vector, tail) in loaded.iter_mut().zip(tails.iter()) {
                // SAFETY: 64-byte load from a 64-byte array.
                *vector = unsafe { _mm512_loadu_si512(tail[block].as_ptr().cast()) };
            }
            compress(&mut state, &mut transpose_be(&loaded));
        }
        let digest = outer(&key, &state);
        let mut macs = digests(&digest);
        for (out, mac) in out.iter_mut().zip(macs.iter()) {
            *out = *mac;
        }
        crate::simd::wipe(macs.as_flattened_mut());
        crate::simd::wipe(rows.as_flattened_mut());
        crate::simd::wipe(tails.as_flattened_mut().as_flattened_mut());
    }

    /// Message words (big-endian) of 16 lane blocks.
    #[target_feature(enable = "avx512f")]
    fn load_rows(rows: &[[u8; BLOCK]; 16]) -> [V; 16] {
        let mut loaded = [_mm512_setzero_si512(); 16];
        for (vector, row) in loaded.iter_mut().zip(rows) {
            // SAFETY: 64-byte load from a 64-byte array.
            *vector = unsafe { _mm512_loadu_si512(row.as_ptr().cast()) };
        }
        transpose_be(&loaded)
    }

    /// Row j = lane j's block as loaded (little-endian words) → word k of every lane, as
    /// big-endian values.
    #[target_feature(enable = "avx512f")]
    fn transpose_be(rows: &[V; 16]) -> [V; 16] {
        let mask = _mm512_set1_epi32(0xff00_ff00u32 as i32);
        let mut words = transpose16(rows);
        for x in words.iter_mut() {
            *x = _mm512_ternarylogic_epi32::<0xca>(
                mask,
                _mm512_ror_epi32::<8>(*x),
                _mm512_rol_epi32::<8>(*x),
            );
        }
        words
    }

    /// HMAC key states of 16 lanes.
    struct Lanes {
        inner: [V; 8],
        outer: [V; 8],
    }

    /// # Safety
    /// The CPU must support AVX-512F. 1..=16 lanes, `IKM + 9 ≤ 64`, `info ≤ INFO_MAX`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn hkdf16<const IKM: usize, const OKM: usize>(
        salt: &HmacKey,
        info: &[u8],
        plan: Option<&[PlanStep]>,
        ikms: &[[u8; IKM]],
        okms: &mut [[u8; OKM]],
    ) {
        // Extract: PRK = HMAC(salt, ikm), one padded block per lane.
        let mut rows = [[0u8; BLOCK]; 16];
        for (lane, block) in rows.iter_mut().enumerate() {
            let Some(ikm) = ikms.get(lane).or(ikms.first()) else {
                return;
            };
            block[..IKM].copy_from_slice(ikm);
            block[IKM] = 0x80;
            block[BLOCK - 8..].copy_from_slice(&(((BLOCK + IKM) as u64) * 8).to_be_bytes());
        }
        let mut w = load_rows(&rows);
        crate::simd::wipe(rows.as_flattened_mut());
        let salt_lanes = Lanes {
            inner: broadcast(&salt.inner),
            outer: broadcast(&salt.outer),
        };
        let mut inner = salt_lanes.inner;
        compress(&mut inner, &mut w);
        let prk = outer(&salt_lanes, &inner);
        // HMAC key states of the PRK.
        let mut key = Lanes {
            inner: h0(),
            outer: h0(),
        };
        for (byte, state) in [(0x36u32, &mut key.inner), (0x5c, &mut key.outer)] {
            let fill = _mm512_set1_epi32((byte * 0x0101_0101) as i32);
            let mut w = [fill; 16];
            for (w, word) in w.iter_mut().zip(prk.iter()) {
                *w = _mm512_xor_si512(*word, fill);
            }
            compress(state, &mut w);
        }
        // Expand: T(i) = HMAC(prk, T(i-1) ‖ info ‖ i).
        let mut tail = [0u8; INFO_MAX + 1];
        tail[..info.len()].copy_from_slice(info);
        let mut t: Option<[V; 8]> = None;
        for index in 0..OKM.div_ceil(OUT) {
            tail[info.len()] = (index as u8).wrapping_add(1);
            let next = match plan.and_then(|plan| plan.get(index)) {
                Some(step) => mac_planned(&key, t.as_ref(), step),
                None => mac(&key, t.as_ref(), &tail[..info.len() + 1]),
            };
            let mut out = digests(&next);
            for (okm, digest) in okms.iter_mut().zip(out.iter()) {
                let chunk = okm.get_mut(index * OUT..).unwrap_or(&mut []);
                let n = chunk.len().min(OUT);
                chunk[..n].copy_from_slice(&digest[..n]);
            }
            crate::simd::wipe(out.as_flattened_mut());
            t = Some(next);
        }
    }

    /// The 16 lanes' digests as bytes (big-endian words), by one transpose.
    #[target_feature(enable = "avx512f")]
    fn digests(state: &[V; 8]) -> [[u8; OUT]; 16] {
        let mut words = [_mm512_setzero_si512(); 16];
        words[..8].copy_from_slice(state);
        // Byte-swapped words transposed: row j = lane j's digest, as bytes, then zeros.
        let rows = transpose_be(&words);
        let mut out = [[0u8; OUT]; 16];
        let mut row = [0u8; 2 * OUT];
        for (out, vector) in out.iter_mut().zip(rows.iter()) {
            // SAFETY: 64-byte store into a 64-byte array.
            unsafe { _mm512_storeu_si512(row.as_mut_ptr().cast(), *vector) };
            out.copy_from_slice(&row[..OUT]);
        }
        crate::simd::wipe(&mut row);
        out
    }

    #[target_feature(enable = "avx512f")]
    fn h0() -> [V; 8] {
        broadcast(&H0)
    }

    #[target_feature(enable = "avx512f")]
    fn broadcast(words: &[u32; 8]) -> [V; 8] {
        let mut out = [_mm512_setzero_si512(); 8];
        for (out, word) in out.iter_mut().zip(words) {
            *out = _mm512_set1_epi32(*word as i32);
        }
        out
    }

    /// HMAC's outer hash over the 32-byte inner digest held in `inner`.
    #[target_feature(enable = "avx512f")]
    fn outer(key: &Lanes, inner: &[V; 8]) -> [V; 8] {
        let mut w = [_mm512_setzero_si512(); 16];
        w[..8].copy_from_slice(inner);
        w[8] = _mm512_set1_epi32(0x8000_0000u32 as i32);
        w[15] = _mm512_set1_epi32(((BLOCK + OUT) * 8) as i32);
        let mut state = key.outer;
        compress(&mut state, &mut w);
        state
    }

    /// HMAC(key, prefix ‖ tail) where the 32-byte `prefix` differs per lane and `tail` does not.
    #[target_feature(enable = "avx512f")]
    fn mac(key: &Lanes, prefix: Option<&[V; 8]>, tail: &[u8]) -> [V; 8] {
        let mut buf = [0u8; 4 * BLOCK];
        let start = if prefix.is_some() { OUT } else { 0 };
        let len = start + tail.len();
        buf[start..len].copy_from_slice(tail);
        buf[len] = 0x80;
        let blocks = (len + 9).div_ceil(BLOCK);
        let bits = ((BLOCK + len) as u64) * 8;
        buf[blocks * BLOCK - 8..blocks * BLOCK].copy_from_slice(&bits.to_be_bytes());
        let mut state = key.inner;
        for block in 0..blocks {
            let mut w = [_mm512_setzero_si512(); 16];
            for (w, bytes) in w.iter_mut().zip(buf[block * BLOCK..].chunks_exact(4)) {
                let word = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
                *w = _mm512_set1_epi32(word as i32);
            }
            if let (0, Some(prefix)) = (block, prefix) {
                w[..8].copy_from_slice(prefix);
            }
            compress(&mut state, &mut w);
        }
        outer(key, &state)
    }

    /// `mac` for one planned expansion step: the lane-independent blocks run on their
    /// precomputed schedules.
    #[target_feature(enable = "avx512f")]
    fn mac_planned(key: &Lanes, prefix: Option<&[V; 8]>, step: &PlanStep) -> [V; 8] {
        let mut state = key.inner;
        for block in 0..step.blocks.min(STEP_BLOCKS) {
            match (block, prefix) {
                (0, Some(prefix)) => {
                    let mut w = [_mm512_setzero_si512(); 16];
                    for (w, word) in w.iter_mut().zip(step.first.iter()) {
                        *w = _mm512_set1_epi32(*word as i32);
                    }
                    w[..8].copy_from_slice(prefix);
                    compress(&mut state, &mut w);
                }
                _ => compress_wk(&mut state, &step.wk[block]),
            }
        }
        outer(key, &state)
    }

    /// One SHA-256 round over 16 lanes, round `$j` of a group of 8 (a literal): the eight
    /// working variables stay in place in `$s` and each round renames them (`a` of round j is
    /// `$s[(8 - j) % 8]`), so only `d` and `h` are written instead of all eight moving
    /// along. `$wk` is the round's message word
    /// plus its constant. A macro, not a function: it runs inside `#[target_feature]`
    /// functions and must inline, with constant indices.
    macro_rules! sha256_round {
        ($s:ident, $j:literal, $wk:expr) => {{
            let a = $s[(8 - $j) % 8];
            let b = $s[(9 - $j) % 8];
            let c = $s[(10 - $j) % 8];
            let e = $s[(12 - $j) % 8];
            let f = $s[(13 - $j) % 8];
            let g = $s[(14 - $j) % 8];
            let h = $s[(15 - $j) % 8];
            let s1 = _mm512_ternarylogic_epi32::<0x96>(
                _mm512_ror_epi32::<6>(e),
                _mm512_ror_epi32::<11>(e),
                _mm512_ror_epi32::<25>(e),
            );
            let ch = _mm512_ternarylogic_epi32::<0xca>(e, f, g);
            let t1 = _mm512_add_epi32(_mm512_add_epi32(h, s1), _mm512_add_epi32(ch, $wk));
            let s0 = _mm512_ternarylogic_epi32::<0x96>(
                _mm512_ror_epi32::<2>(a),
                _mm512_ror_epi32::<13>(a),
                _mm512_ror_epi32::<22>(a),
            );
            let maj = _mm512_ternarylogic_epi32::<0xe8>(a, b, c);
            $s[(11 - $j) % 8] = _mm512_add_epi32($s[(11 - $j) % 8], t1);
            $s[(15 - $j) % 8] = _mm512_add_epi32(t1, _mm512_add_epi32(s0, maj));
        }};
    }

    /// Eight rounds: `$wk!(j)` gives round j's W + K (j = 0..8, a literal); after eight
    /// renamings the variables are back in place.
    macro_rules! sha256_rounds8 {
        ($s:ident, $wk:ident) => {{
            sha256_round!($s, 0, $wk!(0));
            sha256_round!($s, 1, $wk!(1));
            sha256_round!($s, 2, $wk!(2));
            sha256_round!($s, 3, $wk!(3));
            sha256_round!($s, 4, $wk!(4));
            sha256_round!($s, 5, $wk!(5));
            sha256_round!($s, 6, $wk!(6));
            sha256_round!($s, 7, $wk!(7));
        }};
    }

    /// One SHA-256 compression in each of 16 lanes of a block whose words are the same in
    /// every lane, from its schedule with the round constants added (`wk[t] = W[t] + K[t]`).
    #[target_feature(enable = "avx512f")]
    fn compress_wk(state: &mut [V; 8], wk: &[u32; 64]) {
        let mut s = *state;
        for group in wk.chunks_exact(8) {
            macro_rules! wk_at {
                ($j:literal) => {
                    _mm512_set1_epi32(group[$j] as i32)
                };
            }
            sha256_rounds8!(s, wk_at);
        }
        for (word, new) in state.iter_mut().zip(s) {
            *word = _mm512_add_epi32(*word, new);
        }
    }

    /// W[t] for t = 16.. in place of W[t - 16] (`w[i]` holds W[t] for t = i mod 16).
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn schedule(w: &mut [V; 16], i: usize) {
        let w15 = w[(i + 1) & 15];
        let w2 = w[(i + 14) & 15];
        let s0 = _mm512_ternarylogic_epi32::<0x96>(
            _mm512_ror_epi32::<7>(w15),
            _mm512_ror_epi32::<18>(w15),
            _mm512_srli_epi32::<3>(w15),
        );
        let s1 = _mm512_ternarylogic_epi32::<0x96>(
            _mm512_ror_epi32::<17>(w2),
            _mm512_ror_epi32::<19>(w2),
            _mm512_srli_epi32::<10>(w2),
        );
        w[i] = _mm512_add_epi32(
            _mm512_add_epi32(w[i], s0),
            _mm512_add_epi32(w[(i + 9) & 15], s1),
        );
    }

    /// One SHA-256 compression in each of 16 lanes; `w` (the block's words) is clobbered.
    #[target_feature(enable = "avx512f")]
    fn compress(state: &mut [V; 8], w: &mut [V; 16]) {
        let mut s = *state;
        // Rounds 0..16 on the block's words, then three times 16 on the schedule, which
        // replaces w[i] in place (round t uses w[t mod 16]); i is constant in each round.
        for quarter in 0..4 {
            let k = &K[16 * quarter..16 * quarter + 16];
            for half in 0..2 {
                macro_rules! wk_at {
                    ($j:literal) => {{
                        let i = 8 * half + $j;
                        if quarter > 0 {
                            schedule(w, i);
                        }
                        _mm512_add_epi32(w[i], _mm512_set1_epi32(k[i] as i32))
                    }};
                }
                sha256_rounds8!(s, wk_at);
            }
        }
        for (word, new) in state.iter_mut().zip(s) {
            *word = _mm512_add_epi32(*word, new);
        }
    }
}

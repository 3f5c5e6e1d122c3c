//! 8-lane (zmm) and 4-lane (ymm) X25519 with AVX-512 IFMA: each 64-bit lane of a
//! vector register holds one limb of one lane's field element. The arithmetic and
//! the ladder are written once (`ifma_lanes.rs`) and compiled for both widths. The
//! 4-lane form is for small batches: 256-bit additions and shifts issue on three
//! ports against two for 512-bit ones (IFMA on two either way), so a 4-lane pass
//! costs well under an 8-lane one (figures: `bench/README.md`).
//!
//! Radix 2^52, five limbs, matching the 52-bit inputs and the 2^52 split of
//! `vpmadd52luq/huq`: the low and high halves of a_i * b_j land in columns
//! i + j and i + j + 1 with the same weight, so a product is 50 multiply-adds
//! into ten accumulators and nothing else. Reduction uses 2^260 = 608 and
//! 2^255 = 19 (mod p), also as multiply-adds.
//!
//! Forms (the multiplier reads only the low 52 bits of each factor):
//! * "valid": limbs 0..3 < 2^52, limb 4 < 2^47 + 2^16. Multiplication
//!   inputs must be valid in their low 52 bits: `carry_for_mul` leaves the
//!   bits it carried out of limbs 0..3 in place (the multiplier ignores
//!   them), `carry` also masks them (positional, for `is_zero`/output).
//! * "wide": limbs 0..3 < 2^55.1, limb 4 < 2^55.4: what `reduce` returns
//!   (no fold of limb 4's bits >= 255: the carry that follows does it).
//! * "biased": wide + 512p, limbs 0..3 < 2^61.1, limb 4 < 2^56.7. Products
//!   that are later the left side of a subtraction start their accumulators
//!   at 512p (free), so the subtraction is a plain `vpsubq` and never goes
//!   below zero: 512p has limbs >= 2^61 - 2^14 on 0..3 and ~2^56 on 4, above
//!   any wide limb.
//! * `carry` / `carry_for_mul` accept limbs < 2^62 (sums of a biased and a
//!   wide value) and return valid limbs.
//!
//! The ladder keeps its four coordinates wide or biased between steps, swaps
//! lazily (only the doubling input is selected, since the differential
//! addition is symmetric in its two points) and carries exactly the values
//! that feed a multiplication.

/// The vector operations `ifma_lanes.rs` is written in, for one register width, then the
/// arithmetic itself: `$v` is the vector type, `$lanes` its 64-bit lanes, `$all` the mask
/// of all of them, `$count` the type of its shift intrinsic's count (`u32` for zmm, `i32`
/// for ymm), and the rest name that width's intrinsics.
macro_rules! lanes_module {
    (
        $v:ty, $lanes:literal, $all:literal, shift_count: $count:ty,
        set1: $set1:ident, madd52lo: $madd52lo:ident, madd52hi: $madd52hi:ident,
        zero: $zero:ident, srli: $srli:ident, and: $and:ident, or: $or:ident,
        add: $add:ident, sub: $sub:ident, blend: $blend:ident, test: $test:ident,
        cmpeq: $cmpeq:ident, loadu: $loadu:ident, storeu: $storeu:ident
    ) => {
        use core::arch::x86_64::*;

        type V = $v;
        type Mask = __mmask8;
        const LANES: usize = $lanes;
        /// The mask with every lane set.
        const ALL_LANES: Mask = $all;

        // These wrappers carry no `target_feature` of their own so that they inline exactly
        // like the intrinsics (with the attribute the zmm ladder spills more registers). They
        // are private to this module and every function that calls them
        // (all of `ifma_lanes.rs`) enables AVX-512F, IFMA and VL, which `batch`'s caller
        // checks at run time.
        #[inline(always)]
        fn v_splat(x: u64) -> V {
            // SAFETY: see the note on these wrappers: every caller enables the features.
            unsafe { $set1(x as i64) }
        }
        #[inline(always)]
        fn v_madd52lo(acc: V, a: V, b: V) -> V {
            // SAFETY: see the note on these wrappers: every caller enables the features.
            unsafe { $madd52lo(acc, a, b) }
        }
        #[inline(always)]
        fn v_madd52hi(acc: V, a: V, b: V) -> V {
            // SAFETY: see the note on these wrappers: every caller enables the features.
            unsafe { $madd52hi(acc, a, b) }
        }
        #[inline(always)]
        fn v_zero() -> V {
            // SAFETY: see the note on these wrappers: every caller enables the features.
            unsafe { $zero() }
        }
        #[inline(always)]
        fn v_srli<const N: $count>(a: V) -> V {
            // SAFETY: see the note on these wrappers: every caller enables the features.
            unsafe { $srli::<N>(a) }
        }
        #[inline(always)]
        fn v_and(a: V, b: V) -> V {
            // SAFETY: see the note on these wrappers: every caller enables the features.
            unsafe { $and(a, b) }
        }
        #[inline(always)]
        fn v_or(a: V, b: V) -> V {
            // SAFETY: see the note on these wrappers: every caller enables the features.
            unsafe { $or(a, b) }
        }
        #[inline(always)]
        fn v_add(a: V, b: V) -> V {
            // SAFETY: see the note on these wrappers: every caller enables the features.
            unsafe { $add(a, b) }
        }
        #[inline(always)]
        fn v_sub(a: V, b: V) -> V {
            // SAFETY: see the note on these wrappers: every caller enables the features.
            unsafe { $sub(a, b) }
        }
        /// Per lane, `m ? b : a`.
        #[inline(always)]
        fn v_blend(m: Mask, a: V, b: V) -> V {
            // SAFETY: see the note on these wrappers: every caller enables the features.
            unsafe { $blend(m, a, b) }
        }
        /// Lanes where `a & b` is nonzero.
        #[inline(always)]
        fn v_test(a: V, b: V) -> Mask {
            // SAFETY: see the note on these wrappers: every caller enables the features.
            unsafe { $test(a, b) }
        }
        #[inline(always)]
        fn v_cmpeq(a: V, b: V) -> Mask {
            // SAFETY: see the note on these wrappers: every caller enables the features.
            unsafe { $cmpeq(a, b) }
        }
        #[inline(always)]
        fn v_load(words: &[u64; LANES]) -> V {
            // SAFETY: `words` is exactly one vector of readable bytes; loadu needs no alignment.
            unsafe { $loadu(words.as_ptr().cast()) }
        }
        #[inline(always)]
        fn v_store(words: &mut [u64; LANES], v: V) {
            // SAFETY: `words` is exactly one vector of writable bytes; storeu needs no alignment.
            unsafe { $storeu(words.as_mut_ptr().cast(), v) }
        }

        include!("ifma_lanes.rs");
    };
}

/// 8 lanes in zmm registers.
pub(super) mod zmm {
    lanes_module!(
        __m512i, 8, 0xff, shift_count: u32,
        set1: _mm512_set1_epi64, madd52lo: _mm512_madd52lo_epu64,
        madd52hi: _mm512_madd52hi_epu64, zero: _mm512_setzero_si512, srli: _mm512_srli_epi64,
        and: _mm512_and_si512, or: _mm512_or_si512, add: _mm512_add_epi64, sub: _mm512_sub_epi64,
        blend: _mm512_mask_blend_epi64, test: _mm512_test_epi64_mask,
        cmpeq: _mm512_cmpeq_epi64_mask, loadu: _mm512_loadu_si512, storeu: _mm512_storeu_si512
    );

    #[cfg(test)]
    mod tests {
        //! Limb-bound checks: extreme and random valid inputs against the
        //! portable field, plus the bounds the lazy reduction relies on.
        use super::super::super::field51::{self, Fe};
        use super::*;

        fn lanes_of(a: &FV) -> [[u64; 5]; 8] {
            // SAFETY (caller): only called after IFMA was detected.
            let limbs = unsafe { store(a) };
            core::array::from_fn(|l| core::array::from_fn(|j| limbs[j][l]))
        }

        fn from_lanes(v: &[[u64; 5]; 8]) -> FV {
            let limbs: [[u64; 8]; 5] = core::array::from_fn(|j| core::array::from_fn(|l| v[l][j]));
            // SAFETY (caller): only called after IFMA was detected.
            unsafe { load(&limbs) }
        }

        /// Value of arbitrary limbs (< 2^63) as a portable element:
        /// sum l_j * 2^(52 j), with 2^(52 j) = limb j of radix 2^51 set to 2^j.
        fn value(l: &[u64; 5]) -> Fe {
            let mut acc = Fe::ZERO;
            for (j, &lj) in l.iter().enumerate() {
                let x = Fe([lj & ((1 << 51) - 1), lj >> 51, 0, 0, 0]);
                let mut w = [0u64; 5];
                w[j] = 1 << j;
                acc = field51::add(&acc, &field51::mul(&x, &Fe(w)));
                acc = field51::carry(acc);
            }
            acc
        }

        fn max_limbs(a: &FV) -> [u64; 5] {
            let mut m = [0u64; 5];
            for lane in lanes_of(a) {
                for j in 0..5 {
                    m[j] = m[j].max(lane[j]);
                }
            }
            m
        }

        fn is_valid(a: &FV) -> bool {
            let m = max_limbs(a);
            m[..4].iter().all(|&x| x < 1 << 52) && m[4] < (1 << 47) + (1 << 16)
        }

        fn is_wide(a: &FV) -> bool {
            let m = max_limbs(a);
            m[..4].iter().all(|&x| x < (1 << 55) + (1 << 52)) && m[4] < (1 << 55) + (1 << 54)
        }

        fn is_biased(a: &FV) -> bool {
            let m = max_limbs(a);
            m[..4].iter().all(|&x| x < BIAS[0] + (1 << 55) + (1 << 52))
                && m[4] < BIAS[4] + (1 << 55) + (1 << 54)
        }

        #[test]
        fn extreme_limbs_match_portable() {
            if !(std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512ifma"))
            {
                eprintln!("note: skipping IFMA limb test: CPU lacks AVX-512 IFMA");
                return;
            }
            let top = (1u64 << 52) - 1;
            let top4 = (1u64 << 47) + (1 << 16) - 1;
            let mut seed = 0x1234_5678_9abc_def0u64;
            let mut next = move || {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed
            };
            for round in 0..400 {
                // Lane 0: every limb at its valid maximum; lane 1: limbs 0..3 at
                // the maximum, limb 4 random; others random valid.
                let mk = |next: &mut dyn FnMut() -> u64| -> [[u64; 5]; 8] {
                    core::array::from_fn(|l| {
                        core::array::from_fn(|j| {
                            let m = if j == 4 { top4 } else { top };
                            if l == 0 || round == 0 || (l == 1 && j < 4) {
                                m
                            } else {
                                (next() & top) % (m + 1)
                            }
                        })
                    })
                };
                let av = mk(&mut next);
                let bv = mk(&mut next);
                let (a, b) = (from_lanes(&av), from_lanes(&bv));
                // SAFETY: IFMA detected above.
                let (pw, sw, pb, sb, c, s, n, a24) = unsafe {
                    let pw = mul_wide(&a, &b);
                    let sw = square_wide(&a);
                    let pb = mul_biased(&a, &b);
                    let sb = square_biased(&a);
                    let c = carry(&sub(&pb, &sw));
                    let s = carry(&add(&pb, &sw));
                    let n = carry(&pw);
                    // Multiplier-only forms, masked to their low 52 bits.
                    let m = |x: FV| {
                        FV(core::array::from_fn(|i| {
                            _mm512_and_si512(x.0[i], splat(if i < 4 { M52 } else { u64::MAX }))
                        }))
                    };
                    let a24 = m(add_a24(&sb, &b));
                    let cm = m(carry_for_mul(&sub(&pb, &sw)));
                    assert!(lanes_of(&cm) == lanes_of(&c));
                    // Inversion-chain forms: valid, same values.
                    let (sl, ml) = (m(square_lat(&a)), m(mul_lat(&a, &b)));
                    assert!(is_valid(&sl) && is_valid(&ml), "lat bound");
                    for (x, y) in lanes_of(&sl).iter().zip(lanes_of(&sw).iter()) {
                        assert_eq!(value(x).to_bytes(), value(y).to_bytes());
                    }
                    for (x, y) in lanes_of(&ml).iter().zip(lanes_of(&n).iter()) {
                        assert_eq!(value(x).to_bytes(), value(y).to_bytes());
                    }
                    (pw, sw, pb, sb, c, s, n, a24)
                };
                assert!(is_wide(&pw) && is_wide(&sw), "wide bound");
                assert!(is_biased(&pb) && is_biased(&sb), "biased bound");
                assert!(is_valid(&c) && is_valid(&s) && is_valid(&n), "carry bound");
                assert!(is_valid(&a24), "a24 bound");
                let (pbl, sbl) = (lanes_of(&pb), lanes_of(&sb));
                let (pl, sl, cl, ql, nl, al) = (
                    lanes_of(&pw),
                    lanes_of(&sw),
                    lanes_of(&c),
                    lanes_of(&s),
                    lanes_of(&n),
                    lanes_of(&a24),
                );
                for l in 0..8 {
                    let (fa, fb) = (value(&av[l]), value(&bv[l]));
                    let want_p = field51::mul(&fa, &fb);
                    let want_s = field51::square(&fa);
                    let want_a24 = field51::add(&want_s, &field51::mul_small(&fb, A24));
                    assert_eq!(value(&pbl[l]).to_bytes(), want_p.to_bytes());
                    assert_eq!(value(&sbl[l]).to_bytes(), want_s.to_bytes());
                    assert_eq!(value(&pl[l]).to_bytes(), want_p.to_bytes());
                    assert_eq!(value(&sl[l]).to_bytes(), want_s.to_bytes());
                    assert_eq!(value(&nl[l]).to_bytes(), want_p.to_bytes());
                    assert_eq!(fe_from_limbs(&nl[l]).to_bytes(), want_p.to_bytes());
                    assert_eq!(
                        value(&cl[l]).to_bytes(),
                        field51::sub(&want_p, &want_s).to_bytes()
                    );
                    assert_eq!(
                        value(&ql[l]).to_bytes(),
                        field51::add(&want_p, &want_s).to_bytes()
                    );
                    assert_eq!(value(&al[l]).to_bytes(), want_a24.to_bytes());
                }
            }
        }

        #[test]
        fn zero_test_and_byte_conversion() {
            if !(std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512ifma"))
            {
                return;
            }
            let p = P52;
            let zero = [0u64; 5];
            let one = [1u64, 0, 0, 0, 0];
            let p_plus_1 = [p[0] + 1, p[1], p[2], p[3], p[4]];
            let lanes = [zero, p, one, p_plus_1, zero, p, [M52; 5], zero];
            // SAFETY: IFMA detected above.
            let m = unsafe { is_zero(&from_lanes(&lanes)) };
            assert_eq!(m, 0b1011_0011);
            let mut b = [0xffu8; 32];
            b[31] = 0x7f;
            assert_eq!(
                fe_from_limbs(&limbs_from_bytes(&b)).to_bytes(),
                Fe::from_bytes(&b).to_bytes()
            );
        }
    }
}

/// 4 lanes in ymm registers (AVX-512VL forms of the same instructions).
pub(super) mod ymm {
    lanes_module!(
        __m256i, 4, 0x0f, shift_count: i32,
        set1: _mm256_set1_epi64x, madd52lo: _mm256_madd52lo_epu64,
        madd52hi: _mm256_madd52hi_epu64, zero: _mm256_setzero_si256, srli: _mm256_srli_epi64,
        and: _mm256_and_si256, or: _mm256_or_si256, add: _mm256_add_epi64, sub: _mm256_sub_epi64,
        blend: _mm256_mask_blend_epi64, test: _mm256_test_epi64_mask,
        cmpeq: _mm256_cmpeq_epi64_mask, loadu: _mm256_loadu_si256, storeu: _mm256_storeu_si256
    );
}

//! 8-lane X25519 with AVX-512 IFMA: each 64-bit lane of a zmm register holds
//! one limb of one lane's field element.
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

use core::arch::x86_64::*;

use super::field51::Fe;
use super::field51::A24;
use super::{Scalars, INV_GROUP};

type V = __m512i;

/// Eight field elements, limb-sliced.
#[derive(Clone, Copy)]
struct F8([V; 5]);

const M52: u64 = (1 << 52) - 1;
const M47: u64 = (1 << 47) - 1;

/// 512p in radix 2^52 (limb 4 holds bits 208..254 of p: 47 ones).
const BIAS: [u64; 5] = [
    512 * ((1 << 52) - 19),
    512 * M52,
    512 * M52,
    512 * M52,
    512 * M47,
];

/// p in radix 2^52, for the zero test.
const P52: [u64; 5] = [(1 << 52) - 19, M52, M52, M52, M47];

#[inline]
#[target_feature(enable = "avx512f")]
fn splat(x: u64) -> V {
    _mm512_set1_epi64(x as i64)
}

#[inline]
#[target_feature(enable = "avx512f,avx512ifma")]
fn madd_lo(acc: V, a: V, b: V) -> V {
    _mm512_madd52lo_epu64(acc, a, b)
}

#[inline]
#[target_feature(enable = "avx512f,avx512ifma")]
fn madd_hi(acc: V, a: V, b: V) -> V {
    _mm512_madd52hi_epu64(acc, a, b)
}

#[inline]
#[target_feature(enable = "avx512f")]
fn zero8() -> F8 {
    F8([_mm512_setzero_si512(); 5])
}

#[inline]
#[target_feature(enable = "avx512f")]
fn one8() -> F8 {
    let z = _mm512_setzero_si512();
    F8([splat(1), z, z, z, z])
}

#[inline]
#[target_feature(enable = "avx512f")]
fn bias8() -> [V; 5] {
    core::array::from_fn(|i| splat(BIAS[i]))
}

/// Folds limb 4's bits >= 2^255 into limb 0 (times 19), then carries
/// 0 -> 4 sequentially, leaving limbs 0..3 unmasked: `carry_for_mul`.
/// Limbs < 2^62 in.
#[inline]
#[target_feature(enable = "avx512f,avx512ifma")]
fn carry_for_mul(a: &F8) -> F8 {
    let mut r = a.0;
    let t = _mm512_srli_epi64::<47>(r[4]);
    r[4] = _mm512_and_si512(r[4], splat(M47));
    // t < 2^15: 19 t fits the low 52 bits; r0 + 19 t < 2^63.
    r[0] = madd_lo(r[0], t, splat(19));
    // Each carry out is < 2^11, so limb 4 ends < 2^47 + 2^11.
    for k in 0..4 {
        r[k + 1] = _mm512_add_epi64(r[k + 1], _mm512_srli_epi64::<52>(r[k]));
    }
    F8(r)
}

/// `carry_for_mul` with limbs 0..3 masked: valid and positional.
#[inline]
#[target_feature(enable = "avx512f,avx512ifma")]
fn carry(a: &F8) -> F8 {
    let m = splat(M52);
    let mut r = carry_for_mul(a).0;
    for rk in r.iter_mut().take(4) {
        *rk = _mm512_and_si512(*rk, m);
    }
    F8(r)
}

#[inline]
#[target_feature(enable = "avx512f")]
fn add(a: &F8, b: &F8) -> F8 {
    F8(core::array::from_fn(|i| _mm512_add_epi64(a.0[i], b.0[i])))
}

/// a - b; a biased, b wide.
#[inline]
#[target_feature(enable = "avx512f")]
fn sub(a: &F8, b: &F8) -> F8 {
    F8(core::array::from_fn(|i| _mm512_sub_epi64(a.0[i], b.0[i])))
}

/// Reduces the ten product columns c[k] (weight 2^(52k)) mod p without
/// carrying: wide output (biased if c[0..5] started at 512p).
///
/// Column bounds for valid factors, in units of 2^52 (lo/hi terms per
/// column; terms with limb 4 have high halves < 2^47.01): c0 < 1, c1 < 3,
/// c2 < 5, c3 < 7, c4 < 9, c5 < 7.1, c6 < 7, c7 < 5, c8 < 1.07, and
/// c9 < 2^42.02 (a high half of limb4 * limb4).
#[inline]
#[target_feature(enable = "avx512f,avx512ifma")]
fn reduce(c: [V; 10]) -> F8 {
    let k608 = splat(608);
    // c9 * 2^468 = 608 c9 * 2^208; 608 c9 < 2^51.3 stays in the low half.
    let mut r = [c[0], c[1], c[2], c[3], madd_lo(c[4], c[9], k608)];
    // c[k+5] * 2^260 * 2^(52k) = 608 c[k+5] * 2^(52k): the multiplier sees only
    // the low 52 bits of c[k+5]; its bits >= 52 (< 9) go one column up.
    for k in 0..4 {
        let h = c[k + 5];
        r[k] = madd_lo(r[k], h, k608);
        r[k + 1] = madd_hi(r[k + 1], h, k608);
        r[k + 1] = madd_lo(r[k + 1], _mm512_srli_epi64::<52>(h), k608);
    }
    // r0 < 2^53, r1 < 2^54.01, r2 < 2^54.6, r3 < 2^55.01,
    // r4 < 9 * 2^52 + 2^51.3 + 2^11 < 2^55.4 (plus 512p if biased).
    F8(r)
}

/// The ten columns of a * b (a, b valid), columns 0..4 starting at `init`.
#[inline]
#[target_feature(enable = "avx512f,avx512ifma")]
fn mul_cols(a: &F8, b: &F8, init: [V; 5]) -> [V; 10] {
    let (a, b) = (a.0, b.0);
    let z = _mm512_setzero_si512();
    let mut c = [init[0], init[1], init[2], init[3], init[4], z, z, z, z, z];
    for i in (0..5).rev() {
        for j in (0..5).rev() {
            c[i + j] = madd_lo(c[i + j], a[i], b[j]);
            c[i + j + 1] = madd_hi(c[i + j + 1], a[i], b[j]);
        }
    }
    c
}

/// The ten columns of a^2 (a valid): cross products once, doubled, plus the
/// diagonal; columns 0..4 start at 512p if `BIASED` (the cross accumulators
/// at 256p, which the doubling turns into 512p). Same bounds as `mul_cols`.
/// 30 multiply-adds and 7 additions (one fewer than doubling columns 1..8).
#[inline]
#[target_feature(enable = "avx512f,avx512ifma")]
fn square_cols<const BIASED: bool>(a: &F8) -> [V; 10] {
    let a = a.0;
    let z = _mm512_setzero_si512();
    let mut c = [z; 10];
    if BIASED {
        c[0] = splat(BIAS[0]);
        for k in 1..5 {
            c[k] = splat(BIAS[k] / 2);
        }
    }
    // Cross products without limb 4 land in columns 1..=6, which are then
    // doubled; those with limb 4 take 2 a4 as the factor instead (valid:
    // a4 < 2^47 + 2^16, so 2 a4 < 2^52 is read whole by the multiplier), so
    // columns 7 and 8 need no doubling. Each column holds the same sum of
    // weighted products as with doubled columns, and no column is larger by
    // more than one per term (lo(2x) <= 2 lo(x), hi(2x) <= 2 hi(x) + 1), so
    // `reduce`'s bounds hold.
    for i in 0..4 {
        for j in i + 1..4 {
            c[i + j] = madd_lo(c[i + j], a[i], a[j]);
            c[i + j + 1] = madd_hi(c[i + j + 1], a[i], a[j]);
        }
    }
    for ck in c.iter_mut().take(7).skip(1) {
        *ck = _mm512_add_epi64(*ck, *ck);
    }
    let a4x2 = _mm512_add_epi64(a[4], a[4]);
    for i in 0..4 {
        c[i + 4] = madd_lo(c[i + 4], a[i], a4x2);
        c[i + 5] = madd_hi(c[i + 5], a[i], a4x2);
    }
    for i in 0..5 {
        c[2 * i] = madd_lo(c[2 * i], a[i], a[i]);
        c[2 * i + 1] = madd_hi(c[2 * i + 1], a[i], a[i]);
    }
    c
}

/// a * b; a and b valid, result wide.
#[inline]
#[target_feature(enable = "avx512f,avx512ifma")]
fn mul_wide(a: &F8, b: &F8) -> F8 {
    reduce(mul_cols(a, b, zero8().0))
}

/// a * b + 512p; a and b valid, result biased.
#[inline]
#[target_feature(enable = "avx512f,avx512ifma")]
fn mul_biased(a: &F8, b: &F8) -> F8 {
    reduce(mul_cols(a, b, bias8()))
}

/// a^2; a valid, result wide.
#[inline]
#[target_feature(enable = "avx512f,avx512ifma")]
fn square_wide(a: &F8) -> F8 {
    reduce(square_cols::<false>(a))
}

/// a^2 + 512p; a valid, result biased.
#[inline]
#[target_feature(enable = "avx512f,avx512ifma")]
fn square_biased(a: &F8) -> F8 {
    reduce(square_cols::<true>(a))
}

/// a * b; a and b valid, result valid (positional).
#[inline]
#[target_feature(enable = "avx512f,avx512ifma")]
fn mul(a: &F8, b: &F8) -> F8 {
    carry(&mul_wide(a, b))
}

/// `reduce` then `carry_for_mul`, ordered for latency (the inversion chain
/// is one long dependency chain): limb 4's bits >= 255 are folded before the
/// small high-half terms from column 8 are added, so the fold does not wait
/// for them (they keep limb 4 < 2^47 + 2^12: still valid).
#[inline]
#[target_feature(enable = "avx512f,avx512ifma")]
fn reduce_carry_lat(c: [V; 10]) -> F8 {
    let k608 = splat(608);
    let r4 = madd_lo(c[4], c[9], k608); // < 2^55.4
    let t = _mm512_srli_epi64::<47>(r4);
    let s: [V; 4] = core::array::from_fn(|k| _mm512_srli_epi64::<52>(c[k + 5]));
    // Two independent partial sums per limb, joined once.
    let u = [
        madd_lo(c[0], c[5], k608),
        madd_lo(c[1], c[6], k608),
        madd_lo(c[2], c[7], k608),
        madd_lo(c[3], c[8], k608),
        _mm512_and_si512(r4, splat(M47)),
    ];
    let z = _mm512_setzero_si512();
    let w = [
        madd_lo(z, t, splat(19)),
        madd_lo(madd_hi(z, c[5], k608), s[0], k608),
        madd_lo(madd_hi(z, c[6], k608), s[1], k608),
        madd_lo(madd_hi(z, c[7], k608), s[2], k608),
        madd_lo(madd_hi(z, c[8], k608), s[3], k608),
    ];
    let mut r: [V; 5] = core::array::from_fn(|k| _mm512_add_epi64(u[k], w[k]));
    for k in 0..4 {
        r[k + 1] = _mm512_add_epi64(r[k + 1], _mm512_srli_epi64::<52>(r[k]));
    }
    F8(r)
}

/// `square_cols::<false>` with each column's cross terms split over two
/// accumulators (low and high halves), halving the dependency depth.
#[inline]
#[target_feature(enable = "avx512f,avx512ifma")]
fn square_cols_lat(a: &F8) -> [V; 10] {
    let a = a.0;
    let z = _mm512_setzero_si512();
    let mut lo = [z; 10];
    let mut hi = [z; 10];
    for i in 0..5 {
        for j in i + 1..5 {
            lo[i + j] = madd_lo(lo[i + j], a[i], a[j]);
            hi[i + j + 1] = madd_hi(hi[i + j + 1], a[i], a[j]);
        }
    }
    let mut c: [V; 10] = core::array::from_fn(|k| {
        let x = _mm512_add_epi64(lo[k], hi[k]);
        _mm512_add_epi64(x, x)
    });
    for i in 0..5 {
        c[2 * i] = madd_lo(c[2 * i], a[i], a[i]);
        c[2 * i + 1] = madd_hi(c[2 * i + 1], a[i], a[i]);
    }
    c
}

/// a^2 for the inversion chain: a valid (or `carry_for_mul`), result
/// `carry_for_mul`.
#[inline]
#[target_feature(enable = "avx512f,avx512ifma")]
fn square_lat(a: &F8) -> F8 {
    reduce_carry_lat(square_cols_lat(a))
}

/// a * b for the inversion chain, `carry_for_mul` result.
#[inline]
#[target_feature(enable = "avx512f,avx512ifma")]
fn mul_lat(a: &F8, b: &F8) -> F8 {
    reduce_carry_lat(mul_cols(a, b, zero8().0))
}

/// a^(2^n), n >= 1, for the inversion chain.
#[inline]
#[target_feature(enable = "avx512f,avx512ifma")]
fn square_n_lat(a: &F8, n: usize) -> F8 {
    let mut y = square_lat(a);
    for _ in 1..n {
        y = square_lat(&y);
    }
    y
}

/// z^(p-2), `carry_for_mul` form (it only feeds multiplications).
#[inline(never)]
#[target_feature(enable = "avx512f,avx512ifma")]
fn invert(z: &F8) -> F8 {
    invert_chain!(square_lat, square_n_lat, mul_lat, z)
}

/// aa + A24 * e, for multiplier inputs only (`carry_for_mul`); aa biased or
/// wide, e valid.
#[inline]
#[target_feature(enable = "avx512f,avx512ifma")]
fn add_a24(aa: &F8, e: &F8) -> F8 {
    let k = splat(A24);
    let e = e.0;
    // e_i * A24 < 2^69: low half stays in limb i, high half goes to limb i + 1;
    // from limb 4 (e_4 < 2^47.01, high half < 2^12) it has weight 2^260 = 608.
    let mut r: [V; 5] = core::array::from_fn(|i| madd_lo(aa.0[i], e[i], k));
    for i in 0..4 {
        r[i + 1] = madd_hi(r[i + 1], e[i], k);
    }
    let top = madd_hi(_mm512_setzero_si512(), e[4], k);
    r[0] = madd_lo(r[0], top, splat(608));
    // Limbs < 2^61.1 + 2^52 + 2^22.
    carry_for_mul(&F8(r))
}

/// Per-lane `s ? b : a`.
#[inline]
#[target_feature(enable = "avx512f")]
fn select(s: __mmask8, a: &F8, b: &F8) -> F8 {
    F8(core::array::from_fn(|i| {
        _mm512_mask_blend_epi64(s, a.0[i], b.0[i])
    }))
}

/// Per-lane Montgomery ladder. `k[w]` holds word w of each lane's scalar; x1
/// is valid. Returns projective (X, Z) of R0, X biased, Z wide.
///
/// Without `CLAMPED` it runs over all 256 bits. With `CLAMPED` (every lane's
/// scalar is clamped: bit 255 = 0, bits 2..0 = 0; public structure, not
/// secret) it skips the step of bit 255 and runs the last three steps as
/// doublings only: bit 255 = 0 leaves R0 = O = (1 : 0) as it is and only
/// rescales R1 = P by 4 x1 (a nonzero factor unless x1 = 0 mod p), and a
/// projective rescaling of the ladder state does not change X/Z; for
/// x1 = 0 mod p (the point of order 2) both ways end at X = 0 or Z = 0 since
/// the scalar is even, so the output is 0 either way. For a zero bit the new
/// R0 is the doubling of the old R0 alone, with the same coordinates as in
/// the full step, and R1 is not needed after bit 0.
///
/// Lazy swap: (x2, z2) always holds the last doubling and (x3, z3) the last
/// sum; the real pair (R0, R1) is that order when the previous bit was 0 and
/// swapped when it was 1. The sum R0 + R1 does not care about the order, and
/// the doubling input R_bit is picked with one masked select.
#[inline(never)]
#[target_feature(enable = "avx512f,avx512ifma")]
fn ladder<const CLAMPED: bool>(k: &[V; 4], x1: &F8) -> (F8, F8) {
    // X coordinates are biased (left sides of subtractions), Z wide.
    let bias = F8(bias8());
    let mut x2 = add(&one8(), &bias);
    let mut z2 = zero8();
    let mut x3 = add(x1, &bias);
    let mut z3 = one8();
    let mut prev: __mmask8 = 0;
    let (top, bottom) = if CLAMPED { (255, 3) } else { (256, 0) };
    for t in (bottom..top).rev() {
        // Public position t; the lanes' secret bits only become a mask.
        let bit = _mm512_test_epi64_mask(k[t / 64], splat(1u64 << (t % 64)));
        let s = bit ^ prev;
        prev = bit;

        // Everything carried here only feeds the multiplier.
        let a = carry_for_mul(&add(&x2, &z2));
        let b = carry_for_mul(&sub(&x2, &z2));
        let c = carry_for_mul(&add(&x3, &z3));
        let d = carry_for_mul(&sub(&x3, &z3));
        let da = mul_biased(&d, &a);
        let cb = mul_wide(&c, &b);
        // Doubling input: (a, b) of the point R_bit.
        let aa_b = square_biased(&select(s, &a, &c));
        let bb_w = square_wide(&select(s, &b, &d));
        x3 = square_biased(&carry_for_mul(&add(&da, &cb)));
        let t = carry_for_mul(&square_wide(&carry_for_mul(&sub(&da, &cb))));
        z3 = mul_wide(x1, &t);
        // As `double_tail` (written out: a call here would not be inlined).
        let e = carry_for_mul(&sub(&aa_b, &bb_w));
        x2 = mul_biased(&carry_for_mul(&aa_b), &carry_for_mul(&bb_w));
        z2 = mul_wide(&e, &add_a24(&aa_b, &e));
    }
    if CLAMPED {
        // Bits 2..0 are zero: R0 <- 2 R0 three times. R0 is (x3, z3) if the
        // last bit was 1, else (x2, z2).
        let x = select(prev, &x2, &x3);
        let z = select(prev, &z2, &z3);
        (x2, z2) = double(&x, &z);
        for _ in 0..2 {
            (x2, z2) = double(&x2, &z2);
        }
        return (x2, z2);
    }
    // R0 = prev ? (x3, z3) : (x2, z2).
    (select(prev, &x2, &x3), select(prev, &z2, &z3))
}

/// The doubling of the ladder step from AA (biased) and BB (wide): X biased,
/// Z wide, exactly as the full step computes them.
#[inline]
#[target_feature(enable = "avx512f,avx512ifma")]
fn double_tail(aa_b: &F8, bb_w: &F8) -> (F8, F8) {
    let e = carry_for_mul(&sub(aa_b, bb_w));
    let x = mul_biased(&carry_for_mul(aa_b), &carry_for_mul(bb_w));
    let z = mul_wide(&e, &add_a24(aa_b, &e));
    (x, z)
}

/// 2 (x : z) as the ladder step computes it; x biased, z wide.
#[inline]
#[target_feature(enable = "avx512f,avx512ifma")]
fn double(x: &F8, z: &F8) -> (F8, F8) {
    let a = carry_for_mul(&add(x, z));
    let b = carry_for_mul(&sub(x, z));
    double_tail(&square_biased(&a), &square_wide(&b))
}

/// Lanes whose value is 0 mod p (a valid: value < 2^255 + 2^223 < 2p, and
/// the limbs are positional, so it is 0 mod p iff its limbs are those of 0
/// or of p).
#[inline]
#[target_feature(enable = "avx512f")]
fn is_zero(a: &F8) -> __mmask8 {
    let l = a.0;
    let or = _mm512_or_si512(
        _mm512_or_si512(l[0], l[1]),
        _mm512_or_si512(_mm512_or_si512(l[2], l[3]), l[4]),
    );
    let zero = _mm512_cmpeq_epi64_mask(or, _mm512_setzero_si512());
    let mut is_p: __mmask8 = 0xff;
    for (li, pi) in l.iter().zip(P52.iter()) {
        is_p &= _mm512_cmpeq_epi64_mask(*li, splat(*pi));
    }
    zero | is_p
}

/// Radix-2^52 limbs of 32 little-endian bytes, bit 255 ignored (valid:
/// limb 4 < 2^47).
fn limbs_from_bytes(b: &[u8; 32]) -> [u64; 5] {
    let w = |i: usize| {
        let mut t = [0u8; 8];
        t.copy_from_slice(&b[8 * i..8 * i + 8]);
        u64::from_le_bytes(t)
    };
    let (w0, w1, w2, w3) = (w(0), w(1), w(2), w(3));
    [
        w0 & M52,
        ((w0 >> 52) | (w1 << 12)) & M52,
        ((w1 >> 40) | (w2 << 24)) & M52,
        ((w2 >> 28) | (w3 << 36)) & M52,
        (w3 >> 16) & M47,
    ]
}

/// The portable element with the value of valid radix-2^52 limbs (limbs
/// 0..3 < 2^52, limb 4 < 2^48): same integer, radix 2^51 (limb 4 up to 2^52,
/// which `Fe::to_bytes` accepts).
fn fe_from_limbs(l: &[u64; 5]) -> Fe {
    let w0 = l[0] | (l[1] << 52);
    let w1 = (l[1] >> 12) | (l[2] << 40);
    let w2 = (l[2] >> 24) | (l[3] << 28);
    let w3 = (l[3] >> 36) | (l[4] << 16);
    const M51: u64 = (1 << 51) - 1;
    Fe([
        w0 & M51,
        ((w0 >> 51) | (w1 << 13)) & M51,
        ((w1 >> 38) | (w2 << 26)) & M51,
        ((w2 >> 25) | (w3 << 39)) & M51,
        w3 >> 12,
    ])
}

#[inline]
#[target_feature(enable = "avx512f")]
fn load(limbs: &[[u64; 8]; 5]) -> F8 {
    // SAFETY: each [u64; 8] is 64 readable bytes; loadu has no alignment need.
    F8(core::array::from_fn(|i| unsafe {
        _mm512_loadu_si512(limbs[i].as_ptr().cast())
    }))
}

#[inline]
#[target_feature(enable = "avx512f")]
fn store(a: &F8) -> [[u64; 8]; 5] {
    let mut out = [[0u64; 8]; 5];
    for (o, v) in out.iter_mut().zip(a.0.iter()) {
        // SAFETY: o is 64 writable bytes; storeu has no alignment need.
        unsafe { _mm512_storeu_si512(o.as_mut_ptr().cast(), *v) };
    }
    out
}

/// Runs the batch in groups of up to INV_GROUP vectors (64 lanes) that share
/// one inversion. Lanes past the end are padded with scalar 0 (result Z = 0,
/// handled like any low-order lane) and discarded.
#[target_feature(enable = "avx512f,avx512ifma")]
pub(super) fn batch(
    scalars: Scalars<'_>,
    clamped: bool,
    points: &[[u8; 32]],
    out: &mut [[u8; 32]],
) {
    let n = points.len();
    let mut base = 0;
    while base < n {
        let lanes = (n - base).min(8 * INV_GROUP);
        let nvec = lanes.div_ceil(8);
        let mut xs = [zero8(); INV_GROUP];
        let mut zs = [zero8(); INV_GROUP];
        for v in 0..nvec {
            let mut kw = [[0u64; 8]; 4];
            let mut x1 = [[0u64; 8]; 5];
            for l in 0..8 {
                let i = base + 8 * v + l;
                if i < n {
                    let k = scalars.get(i, clamped);
                    for (w, kw_w) in kw.iter_mut().enumerate() {
                        let mut b = [0u8; 8];
                        b.copy_from_slice(&k[8 * w..8 * w + 8]);
                        kw_w[l] = u64::from_le_bytes(b);
                    }
                    let x = limbs_from_bytes(&points[i]);
                    for (j, x1_j) in x1.iter_mut().enumerate() {
                        x1_j[l] = x[j];
                    }
                }
            }
            // SAFETY: each [u64; 8] is 64 readable bytes.
            let kv: [V; 4] =
                core::array::from_fn(|w| unsafe { _mm512_loadu_si512(kw[w].as_ptr().cast()) });
            let (x, z) = if clamped {
                ladder::<true>(&kv, &load(&x1))
            } else {
                ladder::<false>(&kv, &load(&x1))
            };
            xs[v] = carry(&x);
            zs[v] = carry(&z);
        }
        let zero_lanes = invert_group(&mut zs[..nvec]);
        for v in 0..nvec {
            let r = mul(&xs[v], &zs[v]);
            let r = F8(core::array::from_fn(|i| {
                _mm512_mask_blend_epi64(zero_lanes[v], r.0[i], _mm512_setzero_si512())
            }));
            let limbs = store(&r);
            for (l, o) in out[base + 8 * v..].iter_mut().take(8).enumerate() {
                *o = fe_from_limbs(&core::array::from_fn(|j| limbs[j][l])).to_bytes();
            }
        }
        base += lanes;
    }
}

/// Replaces each z by 1/z with one inversion for the whole group
/// (Montgomery's trick). Lanes with z = 0 are set to 1 first so they cannot
/// zero the shared product; their masks are returned so the caller forces
/// those outputs to 0 (matching 0^(p-2) = 0). Inputs valid, outputs valid.
#[inline(never)]
#[target_feature(enable = "avx512f,avx512ifma")]
fn invert_group(zs: &mut [F8]) -> [__mmask8; INV_GROUP] {
    let mut masks = [0 as __mmask8; INV_GROUP];
    let one = one8();
    for (z, m) in zs.iter_mut().zip(masks.iter_mut()) {
        *m = is_zero(z);
        *z = select(*m, z, &one);
    }
    // prefix[i] = z_0 * ... * z_i
    let mut prefix = [zero8(); INV_GROUP];
    let mut acc = one;
    for (p, z) in prefix.iter_mut().zip(zs.iter()) {
        acc = mul(&acc, z);
        *p = acc;
    }
    let mut inv = invert(&acc);
    for i in (1..zs.len()).rev() {
        let zi_inv = mul(&inv, &prefix[i - 1]);
        inv = mul(&inv, &zs[i]);
        zs[i] = zi_inv;
    }
    if let Some(z0) = zs.first_mut() {
        *z0 = inv;
    }
    masks
}

#[cfg(test)]
mod tests {
    //! Limb-bound checks: extreme and random valid inputs against the
    //! portable field, plus the bounds the lazy reduction relies on.
    use super::super::field51::{self, Fe};
    use super::*;

    fn lanes_of(a: &F8) -> [[u64; 5]; 8] {
        // SAFETY (caller): only called after IFMA was detected.
        let limbs = unsafe { store(a) };
        core::array::from_fn(|l| core::array::from_fn(|j| limbs[j][l]))
    }

    fn from_lanes(v: &[[u64; 5]; 8]) -> F8 {
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

    fn max_limbs(a: &F8) -> [u64; 5] {
        let mut m = [0u64; 5];
        for lane in lanes_of(a) {
            for j in 0..5 {
                m[j] = m[j].max(lane[j]);
            }
        }
        m
    }

    fn is_valid(a: &F8) -> bool {
        let m = max_limbs(a);
        m[..4].iter().all(|&x| x < 1 << 52) && m[4] < (1 << 47) + (1 << 16)
    }

    fn is_wide(a: &F8) -> bool {
        let m = max_limbs(a);
        m[..4].iter().all(|&x| x < (1 << 55) + (1 << 52)) && m[4] < (1 << 55) + (1 << 54)
    }

    fn is_biased(a: &F8) -> bool {
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
                let m = |x: F8| {
                    F8(core::array::from_fn(|i| {
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

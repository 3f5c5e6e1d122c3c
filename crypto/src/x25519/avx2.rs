//! 4-lane X25519 with AVX2: each 64-bit lane of a ymm register holds one limb
//! of one lane's field element; products by `vpmuludq` (32 x 32 -> 64 bits).
//!
//! Radix 2^25.5: ten limbs, even ones of 26 bits, odd ones of 25 bits, so
//! limb 2i sits at 2^(51 i) and converts to/from the 5 x 51-bit [`Fe`] by a
//! split at bit 26. All arithmetic is unsigned (subtraction adds 2p first).
//!
//! Bounds ("reduced" = what `carry` returns: every limb within its radix
//! except limb 1 (< 2^25 + 2^17) and limb 5 (< 2^25 + 2^12), all < 1.01 radix):
//! * `add`/`sub` of reduced values: limbs < 3 * radix (3 * 2^26 even,
//!   3 * 2^25 odd);
//! * `mul`/`square` accept limbs < 3 * radix: every scaled factor
//!   (19 g_j, 38 g_odd) stays < 57 * 2^26 < 2^32, as `vpmuludq` needs, and
//!   every column sum < 10 * 2^59.4 < 2^63.
//!
//! `mul` and `square` are the hand-scheduled kernels of `avx2_kernels.rs` (its doc says
//! why); the ladder around them, the additions and the conversions are intrinsics.

use core::arch::x86_64::*;

use core::mem::MaybeUninit;

use super::avx2_kernels::{self as kernels, Limbs};
use super::field51::{Fe, A24};
use super::Scalars;

type V = __m256i;

/// Four field elements, limb-sliced.
#[derive(Clone, Copy)]
struct F4(Limbs);

/// Vectors whose inversions are merged (16 x 4 = 64 lanes).
const GROUP: usize = 16;

const M26: u64 = (1 << 26) - 1;
const M25: u64 = (1 << 25) - 1;

/// 2p in radix 2^25.5: limb 0 is 2 (2^26 - 19), then 2 (2^25 - 1), 2 (2^26 - 1), ...
const TWO_P: [u64; 10] = {
    let mut t = [0u64; 10];
    let mut i = 0;
    while i < 10 {
        t[i] = if i % 2 == 0 { 2 * M26 } else { 2 * M25 };
        i += 1;
    }
    t[0] = 2 * ((1 << 26) - 19);
    t
};

#[inline]
#[target_feature(enable = "avx2")]
fn splat(x: u64) -> V {
    _mm256_set1_epi64x(x as i64)
}

#[inline]
#[target_feature(enable = "avx2")]
fn zero4() -> F4 {
    F4([_mm256_setzero_si256(); 10])
}

#[inline]
#[target_feature(enable = "avx2")]
fn one4() -> F4 {
    let mut r = zero4();
    r.0[0] = splat(1);
    r
}

#[inline]
#[target_feature(enable = "avx2")]
fn add(a: &F4, b: &F4) -> F4 {
    F4(core::array::from_fn(|i| _mm256_add_epi64(a.0[i], b.0[i])))
}

/// a + 2p - b; b reduced.
#[inline]
#[target_feature(enable = "avx2")]
fn sub(a: &F4, b: &F4) -> F4 {
    F4(core::array::from_fn(|i| {
        _mm256_sub_epi64(_mm256_add_epi64(a.0[i], splat(TWO_P[i])), b.0[i])
    }))
}

/// Carry limb $i of the array `$h` into limb $i + 1 (limb 9 wraps into
/// limb 0 times 19: 19 c = 16 c + 2 c + c, with c < 2^39 so 19 c < 2^44).
/// A macro, not a function: LLVM kept out-of-line copies of a function here,
/// passing the ten limbs through memory on every call.
macro_rules! carry_step {
    ($h:ident, $i:literal) => {{
        let c = if $i % 2 == 0 {
            _mm256_srli_epi64::<26>($h[$i])
        } else {
            _mm256_srli_epi64::<25>($h[$i])
        };
        $h[$i] = _mm256_and_si256($h[$i], splat(if $i % 2 == 0 { M26 } else { M25 }));
        if $i == 9 {
            let c19 = _mm256_add_epi64(
                _mm256_add_epi64(_mm256_slli_epi64::<4>(c), _mm256_add_epi64(c, c)),
                c,
            );
            $h[0] = _mm256_add_epi64($h[0], c19);
        } else {
            $h[($i + 1) % 10] = _mm256_add_epi64($h[($i + 1) % 10], c);
        }
    }};
}

/// Carry chain for column sums < 2^63, in place on `$h: [V; 10]`: two
/// interleaved chains (0..4, 4..9) for latency, then the wrap and a last
/// 0 -> 1 step. Output: limbs within radix except limb 1 (+ < 2^17) and
/// limb 5 (+ < 2^12).
macro_rules! carry {
    ($h:ident) => {{
        carry_step!($h, 0);
        carry_step!($h, 4);
        carry_step!($h, 1);
        carry_step!($h, 5);
        carry_step!($h, 2);
        carry_step!($h, 6);
        carry_step!($h, 3);
        carry_step!($h, 7);
        carry_step!($h, 4);
        carry_step!($h, 8);
        carry_step!($h, 9);
        carry_step!($h, 0);
        F4($h)
    }};
}

/// 19 b for [`mul_pre`] (limbs 1..10; see [`kernels::times19`]).
#[inline]
#[target_feature(enable = "avx2")]
fn times19(b: &F4) -> MaybeUninit<Limbs> {
    let mut b19 = MaybeUninit::uninit();
    kernels::times19(&b.0, &mut b19);
    b19
}

/// a * b; limbs < 3 * radix; result reduced.
#[inline]
#[target_feature(enable = "avx2")]
fn mul(a: &F4, b: &F4) -> F4 {
    mul_pre(a, b, &times19(b))
}

/// a * b with 19 b precomputed by [`times19`] (a ladder's fixed x1).
#[inline]
#[target_feature(enable = "avx2")]
fn mul_pre(a: &F4, b: &F4, b19: &MaybeUninit<Limbs>) -> F4 {
    let mut out = MaybeUninit::uninit();
    kernels::mul(&a.0, &b.0, b19, &mut out);
    // SAFETY: `kernels::mul` writes all ten limbs.
    F4(unsafe { out.assume_init() })
}

/// a^2; limbs < 3 * radix; result reduced.
#[inline]
#[target_feature(enable = "avx2")]
fn square(a: &F4) -> F4 {
    let mut scratch = MaybeUninit::uninit();
    let mut out = MaybeUninit::uninit();
    kernels::square(&a.0, &mut scratch, &mut out);
    // SAFETY: `kernels::square` writes all ten limbs.
    F4(unsafe { out.assume_init() })
}

#[inline]
#[target_feature(enable = "avx2")]
fn square_n(a: &F4, n: usize) -> F4 {
    let mut y = square(a);
    for _ in 1..n {
        y = square(&y);
    }
    y
}

#[inline(never)]
#[target_feature(enable = "avx2")]
fn invert(z: &F4) -> F4 {
    invert_chain!(square, square_n, mul, z)
}

/// aa + A24 * e; e < 3 * radix so each product < 2^45; result reduced.
#[inline]
#[target_feature(enable = "avx2")]
fn add_a24(aa: &F4, e: &F4) -> F4 {
    let k = splat(A24);
    let mut h: [V; 10] =
        core::array::from_fn(|i| _mm256_add_epi64(aa.0[i], _mm256_mul_epu32(e.0[i], k)));
    carry!(h)
}

/// Per lane, `b` where `mask` is all ones, else `a`.
#[inline]
#[target_feature(enable = "avx2")]
fn select(mask: V, a: &F4, b: &F4) -> F4 {
    F4(core::array::from_fn(|i| {
        _mm256_blendv_epi8(a.0[i], b.0[i], mask)
    }))
}

/// The doubling of the ladder step from (A, B) = (X + Z, X - Z): (AA BB, E (AA + a24 E))
/// with E = AA - BB.
#[inline]
#[target_feature(enable = "avx2")]
fn double_ab(a: &F4, b: &F4) -> (F4, F4) {
    let aa = square(a);
    let bb = square(b);
    let e = sub(&aa, &bb);
    (mul(&aa, &bb), mul(&e, &add_a24(&aa, &e)))
}

/// Per-lane Montgomery ladder; `k[w]` holds word w of each lane's scalar, x1 reduced.
/// Returns projective (X, Z) of R0, reduced.
///
/// Without `CLAMPED` it runs over all 256 bits. With `CLAMPED` (every lane's scalar is
/// clamped: bit 255 = 0, bits 2..0 = 0; public structure, not secret) it skips the step of
/// bit 255 and runs the last three steps as doublings only, as the IFMA ladder does (its
/// doc says why the output is the same, x1 = 0 included).
///
/// Lazy swap, as the IFMA ladder: (x2, z2) always holds the last doubling and (x3, z3) the
/// last sum; the real pair (R0, R1) is in that order when the previous bit was 0 and swapped
/// when it was 1. The sum does not care about the order, and the doubling's input R_bit is
/// picked with one select of (A, B) instead of two conditional swaps of all four
/// coordinates.
#[inline(never)]
#[target_feature(enable = "avx2")]
fn ladder<const CLAMPED: bool>(k: &[V; 4], x1: &F4) -> (F4, F4) {
    let x1_19 = times19(x1);
    let mut x2 = one4();
    let mut z2 = zero4();
    let mut x3 = *x1;
    let mut z3 = one4();
    let mut prev = _mm256_setzero_si256();
    let (top, bottom) = if CLAMPED { (255, 3) } else { (256, 0) };
    for t in (bottom..top).rev() {
        // Public position t; the lanes' secret bits only become masks.
        let sel = splat(1u64 << (t % 64));
        let bit = _mm256_cmpeq_epi64(_mm256_and_si256(k[t / 64], sel), sel);
        let s = _mm256_xor_si256(bit, prev);
        prev = bit;

        let a = add(&x2, &z2);
        let b = sub(&x2, &z2);
        let c = add(&x3, &z3);
        let d = sub(&x3, &z3);
        let da = mul(&d, &a);
        let cb = mul(&c, &b);
        x3 = square(&add(&da, &cb));
        z3 = mul_pre(&square(&sub(&da, &cb)), x1, &x1_19);
        (x2, z2) = double_ab(&select(s, &a, &c), &select(s, &b, &d));
    }
    let x = select(prev, &x2, &x3);
    let z = select(prev, &z2, &z3);
    if !CLAMPED {
        return (x, z);
    }
    // Bits 2..0 are zero: R0 <- 2 R0 three times.
    let (mut x, mut z) = (x, z);
    for _ in 0..3 {
        (x, z) = double_ab(&add(&x, &z), &sub(&x, &z));
    }
    (x, z)
}

#[inline]
#[target_feature(enable = "avx2")]
fn load(limbs: &[[u64; 4]; 10]) -> F4 {
    // SAFETY: each [u64; 4] is 32 readable bytes; loadu has no alignment need.
    F4(core::array::from_fn(|i| unsafe {
        _mm256_loadu_si256(limbs[i].as_ptr().cast())
    }))
}

#[inline]
#[target_feature(enable = "avx2")]
fn store(a: &F4) -> [[u64; 4]; 10] {
    let mut out = [[0u64; 4]; 10];
    for (o, v) in out.iter_mut().zip(a.0.iter()) {
        // SAFETY: o is 32 writable bytes; storeu has no alignment need.
        unsafe { _mm256_storeu_si256(o.as_mut_ptr().cast(), *v) };
    }
    out
}

/// Lane `l` of `a` as a portable element (limbs may exceed 2^51; to_bytes copes).
fn lane(limbs: &[[u64; 4]; 10], l: usize) -> Fe {
    Fe(core::array::from_fn(|i| {
        limbs[2 * i][l] + (limbs[2 * i + 1][l] << 26)
    }))
}

/// All-ones in the lanes whose value is 0 mod p, in constant time.
#[inline]
#[target_feature(enable = "avx2")]
fn zero_mask(a: &F4) -> V {
    let limbs = store(a);
    let m: [u64; 4] = core::array::from_fn(|l| {
        let bytes = lane(&limbs, l).to_bytes();
        let or = bytes.iter().fold(0u8, |acc, b| acc | b);
        // 0 -> all ones, nonzero -> 0, without a branch.
        ((u64::from(or)).wrapping_sub(1) >> 63).wrapping_neg()
    });
    load_u64x4(&m)
}

#[inline]
#[target_feature(enable = "avx2")]
fn load_u64x4(m: &[u64; 4]) -> V {
    // SAFETY: 32 readable bytes; loadu has no alignment need.
    unsafe { _mm256_loadu_si256(m.as_ptr().cast()) }
}

/// Replaces each z by 1/z with one inversion per group (Montgomery's trick);
/// z = 0 lanes are set to 1 first and reported so the caller zeroes them.
#[inline(never)]
#[target_feature(enable = "avx2")]
fn invert_group(zs: &mut [F4]) -> [V; GROUP] {
    let mut masks = [_mm256_setzero_si256(); GROUP];
    let one = one4();
    for (z, m) in zs.iter_mut().zip(masks.iter_mut()) {
        *m = zero_mask(z);
        *z = select(*m, z, &one);
    }
    let mut prefix = [zero4(); GROUP];
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

/// Batch driver: groups of up to 16 vectors (64 lanes) share one inversion;
/// lanes past the end run scalar 0 and are discarded.
#[target_feature(enable = "avx2")]
pub(super) fn batch(
    scalars: Scalars<'_>,
    clamped: bool,
    points: &[[u8; 32]],
    out: &mut [[u8; 32]],
) {
    let n = points.len();
    let mut base = 0;
    while base < n {
        let lanes = (n - base).min(4 * GROUP);
        let nvec = lanes.div_ceil(4);
        let mut xs = [zero4(); GROUP];
        let mut zs = [zero4(); GROUP];
        for v in 0..nvec {
            let mut kw = [[0u64; 4]; 4];
            let mut x1 = [[0u64; 4]; 10];
            for l in 0..4 {
                let i = base + 4 * v + l;
                if i < n {
                    let k = scalars.get(i, clamped);
                    for (w, kw_w) in kw.iter_mut().enumerate() {
                        let mut b = [0u8; 8];
                        b.copy_from_slice(&k[8 * w..8 * w + 8]);
                        kw_w[l] = u64::from_le_bytes(b);
                    }
                    let x = Fe::from_bytes(&points[i]);
                    for j in 0..5 {
                        x1[2 * j][l] = x.0[j] & M26;
                        x1[2 * j + 1][l] = x.0[j] >> 26;
                    }
                }
            }
            let kv: [V; 4] = core::array::from_fn(|w| load_u64x4(&kw[w]));
            let (x, z) = if clamped {
                ladder::<true>(&kv, &load(&x1))
            } else {
                ladder::<false>(&kv, &load(&x1))
            };
            xs[v] = x;
            zs[v] = z;
        }
        let zero_lanes = invert_group(&mut zs[..nvec]);
        for v in 0..nvec {
            let r = select(zero_lanes[v], &mul(&xs[v], &zs[v]), &zero4());
            let limbs = store(&r);
            for (l, o) in out[base + 4 * v..].iter_mut().take(4).enumerate() {
                *o = lane(&limbs, l).to_bytes();
            }
        }
        base += lanes;
    }
}

#[cfg(test)]
mod tests {
    //! Limb-bound checks: inputs at the documented maximum (3 * radix) and
    //! random ones, against the portable field.
    use super::super::field51;
    use super::*;

    fn from_lanes(v: &[[u64; 10]; 4]) -> F4 {
        let limbs: [[u64; 4]; 10] = core::array::from_fn(|j| core::array::from_fn(|l| v[l][j]));
        // SAFETY (caller): only called after AVX2 was detected.
        unsafe { load(&limbs) }
    }

    #[test]
    fn extreme_limbs_match_portable() {
        if !std::arch::is_x86_feature_detected!("avx2") {
            eprintln!("note: skipping AVX2 limb test: CPU lacks AVX2");
            return;
        }
        let cap = |j: usize| if j.is_multiple_of(2) { 3 << 26 } else { 3 << 25 } - 1u64;
        let mut seed = 0x0fed_cba9_8765_4321u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for round in 0..200 {
            let mut mk = || -> [[u64; 10]; 4] {
                core::array::from_fn(|l| {
                    core::array::from_fn(|j| {
                        if l == 0 || round == 0 {
                            cap(j)
                        } else {
                            next() % (cap(j) + 1)
                        }
                    })
                })
            };
            let (av, bv) = (mk(), mk());
            let (a, b) = (from_lanes(&av), from_lanes(&bv));
            // SAFETY: AVX2 detected above.
            let (p, s, e) = unsafe {
                let p = mul(&a, &b);
                let s = square(&a);
                (p, s, add_a24(&p, &sub(&p, &s)))
            };
            // SAFETY: AVX2 detected above.
            let (pl, sl, el) = unsafe { (store(&p), store(&s), store(&e)) };
            for l in 0..4 {
                let fe =
                    |v: &[u64; 10]| Fe(core::array::from_fn(|i| v[2 * i] + (v[2 * i + 1] << 26)));
                let (fa, fb) = (fe(&av[l]), fe(&bv[l]));
                let want_p = field51::mul(&fa, &fb);
                let want_s = field51::square(&fa);
                let d = field51::sub(&want_p, &want_s);
                let want_e = field51::add(&want_p, &field51::mul_small(&d, A24));
                assert_eq!(lane(&pl, l).to_bytes(), want_p.to_bytes());
                assert_eq!(lane(&sl, l).to_bytes(), want_s.to_bytes());
                assert_eq!(lane(&el, l).to_bytes(), want_e.to_bytes());
            }
        }
    }
}

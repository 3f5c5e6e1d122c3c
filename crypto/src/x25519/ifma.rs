//! 8-lane X25519 with AVX-512 IFMA: each 64-bit lane of a zmm register holds
//! one limb of one lane's field element.
//!
//! Radix 2^51 inside 52-bit multiplier inputs. `vpmadd52luq/huq` read only
//! the low 52 bits of each factor, so every multiplication input must have
//! limbs < 2^52. Radix 2^51 leaves one bit of headroom, which lets a single
//! *parallel* carry pass (no sequential chain) bring any sum or difference
//! back under 2^52; with radix 2^52 a parallel pass can leave 2^52 + small.
//! The price: the high half of a 52x52 product has weight 2^52 = 2 * 2^51, so
//! high accumulators are doubled once per column.
//!
//! Bounds used below ("valid" = every limb < 2^52, "wide" = < 2^60.3):
//! * `mul`/`square` take valid inputs and return valid (carried) outputs;
//!   `mul_wide`/`square_wide` skip the final carry and return wide limbs.
//!   The ladder keeps every value that only feeds an add/sub wide, since the
//!   add/sub must be carried before the next product anyway: 6 of the 9
//!   products per ladder step skip their carry.
//! * `add` of two wide values, or `sub` (bias 1024p >= any wide limb), stays
//!   < 2^62, and `carry` of limbs < 2^62 gives limbs < 2^51 + 2^16 (valid).

use core::arch::x86_64::*;

use super::field51::{Fe, A24};
use super::{Scalars, INV_GROUP};

type V = __m512i;

/// Eight field elements, limb-sliced.
#[derive(Clone, Copy)]
struct F8([V; 5]);

const MASK51: u64 = (1 << 51) - 1;

/// 1024p in radix 2^51: limbs >= 2^61 - 2^15 > any wide limb, and
/// wide + 1024p < 2^62.
const BIAS_P: [u64; 5] = [
    1024 * ((1 << 51) - 19),
    1024 * MASK51,
    1024 * MASK51,
    1024 * MASK51,
    1024 * MASK51,
];

#[inline]
#[target_feature(enable = "avx512f")]
fn splat(x: u64) -> V {
    _mm512_set1_epi64(x as i64)
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

/// Parallel carry; input limbs < 2^62, output limbs < 2^51 + 2^16 (valid).
#[inline]
#[target_feature(enable = "avx512f,avx512ifma")]
fn carry(a: &F8) -> F8 {
    let a = a.0;
    let m = splat(MASK51);
    let c: [V; 5] = core::array::from_fn(|i| _mm512_srli_epi64::<51>(a[i]));
    let l: [V; 5] = core::array::from_fn(|i| _mm512_and_si512(a[i], m));
    F8([
        // c[4] < 2^11, so the low 52 bits of 19 * c[4] are all of it.
        _mm512_madd52lo_epu64(l[0], c[4], splat(19)),
        _mm512_add_epi64(l[1], c[0]),
        _mm512_add_epi64(l[2], c[1]),
        _mm512_add_epi64(l[3], c[2]),
        _mm512_add_epi64(l[4], c[3]),
    ])
}

#[inline]
#[target_feature(enable = "avx512f")]
fn add(a: &F8, b: &F8) -> F8 {
    F8(core::array::from_fn(|i| _mm512_add_epi64(a.0[i], b.0[i])))
}

/// a + 1024p - b; a and b wide (or valid).
#[inline]
#[target_feature(enable = "avx512f")]
fn sub(a: &F8, b: &F8) -> F8 {
    F8(core::array::from_fn(|i| {
        _mm512_sub_epi64(_mm512_add_epi64(a.0[i], splat(BIAS_P[i])), b.0[i])
    }))
}

/// Folds the ten columns s[k] (weight 2^(51k), each < 16 * 2^52) mod p
/// without carrying: wide output.
#[inline]
#[target_feature(enable = "avx512f,avx512ifma")]
fn fold(s: [V; 10]) -> F8 {
    // 2^255 = 19: r[c] = s[c] + 19 s[c+5] < 20 * 16 * 2^52 < 2^60.3.
    let r: [V; 5] = core::array::from_fn(|c| {
        let h = s[c + 5];
        let h3 = _mm512_add_epi64(_mm512_add_epi64(h, h), h);
        _mm512_add_epi64(_mm512_add_epi64(s[c], h3), _mm512_slli_epi64::<4>(h))
    });
    F8(r)
}

/// a * b; a and b valid, result valid.
#[inline]
#[target_feature(enable = "avx512f,avx512ifma")]
fn mul(a: &F8, b: &F8) -> F8 {
    carry(&mul_wide(a, b))
}

/// a^2; a valid, result valid.
#[inline]
#[target_feature(enable = "avx512f,avx512ifma")]
fn square(a: &F8) -> F8 {
    carry(&square_wide(a))
}

/// a * b; a and b valid, result wide.
#[inline]
#[target_feature(enable = "avx512f,avx512ifma")]
fn mul_wide(a: &F8, b: &F8) -> F8 {
    let (a, b) = (a.0, b.0);
    let z = _mm512_setzero_si512();
    // lo[k]: low halves of a_i b_j with i + j = k (weight 2^(51k));
    // hi[k]: high halves with i + j = k - 1 (weight 2^(51(k-1)+52) = 2 * 2^(51k)).
    // At most five 52-bit terms each, so both stay < 5 * 2^52.
    let mut lo = [z; 10];
    let mut hi = [z; 10];
    for i in 0..5 {
        for j in 0..5 {
            lo[i + j] = _mm512_madd52lo_epu64(lo[i + j], a[i], b[j]);
            hi[i + j + 1] = _mm512_madd52hi_epu64(hi[i + j + 1], a[i], b[j]);
        }
    }
    // s[k] = lo[k] + 2 hi[k] < 15 * 2^52 < 2^56.
    let s: [V; 10] =
        core::array::from_fn(|k| _mm512_add_epi64(lo[k], _mm512_add_epi64(hi[k], hi[k])));
    fold(s)
}

/// a^2; a valid, result wide.
#[inline]
#[target_feature(enable = "avx512f,avx512ifma")]
fn square_wide(a: &F8) -> F8 {
    let a = a.0;
    let z = _mm512_setzero_si512();
    // Column k = one[k] + 2 two[k] + 4 four[k]:
    // diagonal low halves count once, diagonal high halves and cross low
    // halves twice (high weight 2, or cross symmetry), cross high halves four
    // times. Column sums stay < 15 * 2^52 (column 5: 2 * 3 + 4 * 2 terms + ...).
    let mut one = [z; 10];
    let mut two = [z; 10];
    let mut four = [z; 10];
    for i in 0..5 {
        one[2 * i] = _mm512_madd52lo_epu64(one[2 * i], a[i], a[i]);
        two[2 * i + 1] = _mm512_madd52hi_epu64(two[2 * i + 1], a[i], a[i]);
        for j in i + 1..5 {
            two[i + j] = _mm512_madd52lo_epu64(two[i + j], a[i], a[j]);
            four[i + j + 1] = _mm512_madd52hi_epu64(four[i + j + 1], a[i], a[j]);
        }
    }
    let s: [V; 10] = core::array::from_fn(|k| {
        let t = _mm512_add_epi64(two[k], _mm512_add_epi64(four[k], four[k]));
        _mm512_add_epi64(one[k], _mm512_add_epi64(t, t))
    });
    fold(s)
}

/// a^(2^n), n >= 1.
#[inline]
#[target_feature(enable = "avx512f,avx512ifma")]
fn square_n(a: &F8, n: usize) -> F8 {
    let mut y = square(a);
    for _ in 1..n {
        y = square(&y);
    }
    y
}

#[inline(never)]
#[target_feature(enable = "avx512f,avx512ifma")]
fn invert(z: &F8) -> F8 {
    invert_chain!(square, square_n, mul, z)
}

/// carry(aa + A24 * e); aa and e valid.
#[inline]
#[target_feature(enable = "avx512f,avx512ifma")]
fn add_a24(aa: &F8, e: &F8) -> F8 {
    let k = splat(A24);
    let z = _mm512_setzero_si512();
    // e_i * A24 < 2^69: low 52 bits stay in limb i, high part (< 2^17) has
    // weight 2^52 = 2 * 2^51 in limb i + 1; from limb 4 it wraps as 2 * 19.
    let mut t: [V; 5] = core::array::from_fn(|i| _mm512_madd52lo_epu64(aa.0[i], e.0[i], k));
    let h: [V; 5] = core::array::from_fn(|i| _mm512_madd52hi_epu64(z, e.0[i], k));
    for i in 0..4 {
        t[i + 1] = _mm512_add_epi64(t[i + 1], _mm512_add_epi64(h[i], h[i]));
    }
    t[0] = _mm512_madd52lo_epu64(t[0], h[4], splat(38));
    // Limbs < 2^52 + 2^52 + 2^18 < 2^54.
    carry(&F8(t))
}

/// Swaps a and b in the lanes whose bit of `k` is set.
#[inline]
#[target_feature(enable = "avx512f")]
fn cswap(k: __mmask8, a: &mut F8, b: &mut F8) {
    for i in 0..5 {
        let (x, y) = (a.0[i], b.0[i]);
        a.0[i] = _mm512_mask_blend_epi64(k, x, y);
        b.0[i] = _mm512_mask_blend_epi64(k, y, x);
    }
}

/// Per-lane Montgomery ladder over all 256 bits. `k[w]` holds word w of each
/// lane's scalar; x1 is valid. Returns projective (X, Z), wide.
#[inline(never)]
#[target_feature(enable = "avx512f,avx512ifma")]
fn ladder(k: &[V; 4], x1: &F8) -> (F8, F8) {
    let mut x2 = one8();
    let mut z2 = zero8();
    let mut x3 = *x1;
    let mut z3 = one8();
    let mut swap: __mmask8 = 0;
    for t in (0..256usize).rev() {
        // Public position t; the lanes' secret bits only become a mask.
        let bit = _mm512_test_epi64_mask(k[t / 64], splat(1u64 << (t % 64)));
        swap ^= bit;
        cswap(swap, &mut x2, &mut x3);
        cswap(swap, &mut z2, &mut z3);
        swap = bit;

        let a = carry(&add(&x2, &z2));
        let b = carry(&sub(&x2, &z2));
        let c = carry(&add(&x3, &z3));
        let d = carry(&sub(&x3, &z3));
        let aa = square(&a);
        let bb = square(&b);
        let da = mul_wide(&d, &a);
        let cb = mul_wide(&c, &b);
        let e = carry(&sub(&aa, &bb));
        x3 = square_wide(&carry(&add(&da, &cb)));
        z3 = mul_wide(x1, &square(&carry(&sub(&da, &cb))));
        x2 = mul_wide(&aa, &bb);
        z2 = mul_wide(&e, &add_a24(&aa, &e));
    }
    cswap(swap, &mut x2, &mut x3);
    cswap(swap, &mut z2, &mut z3);
    (x2, z2)
}

/// Lanes whose value is 0 mod p (a valid).
#[inline]
#[target_feature(enable = "avx512f,avx512ifma")]
fn is_zero(a: &F8) -> __mmask8 {
    // After two carries the value is < 2^255 + 2^16 < 2p, so it is 0 mod p
    // iff it is 0 or p. Fully reduce (like Fe::to_bytes) and test for 0.
    let m = splat(MASK51);
    let mut l = carry(&carry(a)).0;
    let mut q = _mm512_srli_epi64::<51>(_mm512_add_epi64(l[0], splat(19)));
    for limb in &l[1..] {
        q = _mm512_srli_epi64::<51>(_mm512_add_epi64(*limb, q));
    }
    l[0] = _mm512_madd52lo_epu64(l[0], q, splat(19));
    for i in 0..4 {
        l[i + 1] = _mm512_add_epi64(l[i + 1], _mm512_srli_epi64::<51>(l[i]));
        l[i] = _mm512_and_si512(l[i], m);
    }
    l[4] = _mm512_and_si512(l[4], m);
    let or = _mm512_or_si512(
        _mm512_or_si512(l[0], l[1]),
        _mm512_or_si512(_mm512_or_si512(l[2], l[3]), l[4]),
    );
    _mm512_cmpeq_epi64_mask(or, _mm512_setzero_si512())
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
                    let x = Fe::from_bytes(&points[i]);
                    for (j, x1_j) in x1.iter_mut().enumerate() {
                        x1_j[l] = x.0[j];
                    }
                }
            }
            // SAFETY: each [u64; 8] is 64 readable bytes.
            let kv: [V; 4] =
                core::array::from_fn(|w| unsafe { _mm512_loadu_si512(kw[w].as_ptr().cast()) });
            let (x, z) = ladder(&kv, &load(&x1));
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
                *o = Fe(core::array::from_fn(|j| limbs[j][l])).to_bytes();
            }
        }
        base += lanes;
    }
}

/// Replaces each z by 1/z with one inversion for the whole group
/// (Montgomery's trick). Lanes with z = 0 are set to 1 first so they cannot
/// zero the shared product; their masks are returned so the caller forces
/// those outputs to 0 (matching 0^(p-2) = 0).
#[inline(never)]
#[target_feature(enable = "avx512f,avx512ifma")]
fn invert_group(zs: &mut [F8]) -> [__mmask8; INV_GROUP] {
    let mut masks = [0 as __mmask8; INV_GROUP];
    let one = one8();
    for (z, m) in zs.iter_mut().zip(masks.iter_mut()) {
        *m = is_zero(z);
        *z = F8(core::array::from_fn(|i| {
            _mm512_mask_blend_epi64(*m, z.0[i], one.0[i])
        }));
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

    fn lanes_of(a: &F8) -> [Fe; 8] {
        // SAFETY (caller): only called after IFMA was detected.
        let limbs = unsafe { store(a) };
        core::array::from_fn(|l| Fe(core::array::from_fn(|j| limbs[j][l])))
    }

    fn from_lanes(v: &[[u64; 5]; 8]) -> F8 {
        let limbs: [[u64; 8]; 5] = core::array::from_fn(|j| core::array::from_fn(|l| v[l][j]));
        // SAFETY (caller): only called after IFMA was detected.
        unsafe { load(&limbs) }
    }

    fn max_limb(a: &F8) -> u64 {
        lanes_of(a).iter().flat_map(|f| f.0).max().unwrap_or(0)
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
        let mut seed = 0x1234_5678_9abc_def0u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for round in 0..200 {
            // Lane 0: all limbs at the IFMA maximum; others random valid.
            let mk = |next: &mut dyn FnMut() -> u64| -> [[u64; 5]; 8] {
                core::array::from_fn(|l| {
                    core::array::from_fn(|_| {
                        if l == 0 || round == 0 {
                            top
                        } else {
                            next() & top
                        }
                    })
                })
            };
            let av = mk(&mut next);
            let bv = mk(&mut next);
            let (a, b) = (from_lanes(&av), from_lanes(&bv));
            // SAFETY: IFMA detected above.
            let (pw, sw, c) = unsafe {
                let pw = mul_wide(&a, &b);
                let sw = square_wide(&a);
                (pw, sw, carry(&sub(&pw, &sw)))
            };
            assert!(
                max_limb(&pw) < 1 << 61 && max_limb(&sw) < 1 << 61,
                "wide bound"
            );
            assert!(max_limb(&c) < (1 << 51) + (1 << 16), "carry bound");
            let (pl, sl, cl) = (lanes_of(&pw), lanes_of(&sw), lanes_of(&c));
            for l in 0..8 {
                let (fa, fb) = (Fe(av[l]), Fe(bv[l]));
                let want_p = field51::mul(&fa, &fb);
                let want_s = field51::square(&fa);
                assert_eq!(pl[l].to_bytes(), want_p.to_bytes());
                assert_eq!(sl[l].to_bytes(), want_s.to_bytes());
                assert_eq!(cl[l].to_bytes(), field51::sub(&want_p, &want_s).to_bytes());
            }
        }
    }
}

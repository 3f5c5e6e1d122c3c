// The IFMA field arithmetic and ladder, written once over `V` (a vector of `LANES` 64-bit
// lanes) and the `v_*` operations on it; `ifma.rs` includes it twice, for zmm (8 lanes) and
// ymm (4 lanes). (Included with `include!`, so no inner doc comments here.)

use super::super::field51::Fe;
use super::super::field51::A24;
use super::super::{Scalars, INV_GROUP};

/// Eight field elements, limb-sliced.
#[derive(Clone, Copy)]
struct FV([V; 5]);

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
#[target_feature(enable = "avx512f,avx512ifma,avx512vl")]
fn splat(x: u64) -> V {
    v_splat(x)
}

#[inline]
#[target_feature(enable = "avx512f,avx512ifma,avx512vl")]
fn madd_lo(acc: V, a: V, b: V) -> V {
    v_madd52lo(acc, a, b)
}

#[inline]
#[target_feature(enable = "avx512f,avx512ifma,avx512vl")]
fn madd_hi(acc: V, a: V, b: V) -> V {
    v_madd52hi(acc, a, b)
}

#[inline]
#[target_feature(enable = "avx512f,avx512ifma,avx512vl")]
fn zero8() -> FV {
    FV([v_zero(); 5])
}

#[inline]
#[target_feature(enable = "avx512f,avx512ifma,avx512vl")]
fn one8() -> FV {
    let z = v_zero();
    FV([splat(1), z, z, z, z])
}

#[inline]
#[target_feature(enable = "avx512f,avx512ifma,avx512vl")]
fn bias8() -> [V; 5] {
    core::array::from_fn(|i| splat(BIAS[i]))
}

/// Folds limb 4's bits >= 2^255 into limb 0 (times 19), then carries
/// 0 -> 4 sequentially, leaving limbs 0..3 unmasked: `carry_for_mul`.
/// Limbs < 2^62 in.
#[inline]
#[target_feature(enable = "avx512f,avx512ifma,avx512vl")]
fn carry_for_mul(a: &FV) -> FV {
    let mut r = a.0;
    let t = v_srli::<47>(r[4]);
    r[4] = v_and(r[4], splat(M47));
    // t < 2^15: 19 t fits the low 52 bits; r0 + 19 t < 2^63.
    r[0] = madd_lo(r[0], t, splat(19));
    // Each carry out is < 2^11, so limb 4 ends < 2^47 + 2^11.
    for k in 0..4 {
        r[k + 1] = v_add(r[k + 1], v_srli::<52>(r[k]));
    }
    FV(r)
}

/// `carry_for_mul` with limbs 0..3 masked: valid and positional.
#[inline]
#[target_feature(enable = "avx512f,avx512ifma,avx512vl")]
fn carry(a: &FV) -> FV {
    let m = splat(M52);
    let mut r = carry_for_mul(a).0;
    for rk in r.iter_mut().take(4) {
        *rk = v_and(*rk, m);
    }
    FV(r)
}

#[inline]
#[target_feature(enable = "avx512f,avx512ifma,avx512vl")]
fn add(a: &FV, b: &FV) -> FV {
    FV(core::array::from_fn(|i| v_add(a.0[i], b.0[i])))
}

/// a - b; a biased, b wide.
#[inline]
#[target_feature(enable = "avx512f,avx512ifma,avx512vl")]
fn sub(a: &FV, b: &FV) -> FV {
    FV(core::array::from_fn(|i| v_sub(a.0[i], b.0[i])))
}

/// Reduces the ten product columns c[k] (weight 2^(52k)) mod p without
/// carrying: wide output (biased if c[0..5] started at 512p).
///
/// Column bounds for valid factors, in units of 2^52 (lo/hi terms per
/// column; terms with limb 4 have high halves < 2^47.01): c0 < 1, c1 < 3,
/// c2 < 5, c3 < 7, c4 < 9, c5 < 7.1, c6 < 7, c7 < 5, c8 < 1.07, and
/// c9 < 2^42.02 (a high half of limb4 * limb4).
#[inline]
#[target_feature(enable = "avx512f,avx512ifma,avx512vl")]
fn reduce(c: [V; 10]) -> FV {
    let k608 = splat(608);
    // c9 * 2^468 = 608 c9 * 2^208; 608 c9 < 2^51.3 stays in the low half.
    let mut r = [c[0], c[1], c[2], c[3], madd_lo(c[4], c[9], k608)];
    // c[k+5] * 2^260 * 2^(52k) = 608 c[k+5] * 2^(52k): the multiplier sees only
    // the low 52 bits of c[k+5]; its bits >= 52 (< 9) go one column up.
    for k in 0..4 {
        let h = c[k + 5];
        r[k] = madd_lo(r[k], h, k608);
        r[k + 1] = madd_hi(r[k + 1], h, k608);
        r[k + 1] = madd_lo(r[k + 1], v_srli::<52>(h), k608);
    }
    // r0 < 2^53, r1 < 2^54.01, r2 < 2^54.6, r3 < 2^55.01,
    // r4 < 9 * 2^52 + 2^51.3 + 2^11 < 2^55.4 (plus 512p if biased).
    FV(r)
}

/// The ten columns of a * b (a, b valid), columns 0..4 starting at `init`.
#[inline]
#[target_feature(enable = "avx512f,avx512ifma,avx512vl")]
fn mul_cols(a: &FV, b: &FV, init: [V; 5]) -> [V; 10] {
    let (a, b) = (a.0, b.0);
    let z = v_zero();
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
#[target_feature(enable = "avx512f,avx512ifma,avx512vl")]
fn square_cols<const BIASED: bool>(a: &FV) -> [V; 10] {
    let a = a.0;
    let z = v_zero();
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
        *ck = v_add(*ck, *ck);
    }
    let a4x2 = v_add(a[4], a[4]);
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
#[target_feature(enable = "avx512f,avx512ifma,avx512vl")]
fn mul_wide(a: &FV, b: &FV) -> FV {
    reduce(mul_cols(a, b, zero8().0))
}

/// a * b + 512p; a and b valid, result biased.
#[inline]
#[target_feature(enable = "avx512f,avx512ifma,avx512vl")]
fn mul_biased(a: &FV, b: &FV) -> FV {
    reduce(mul_cols(a, b, bias8()))
}

/// a^2; a valid, result wide.
#[inline]
#[target_feature(enable = "avx512f,avx512ifma,avx512vl")]
fn square_wide(a: &FV) -> FV {
    reduce(square_cols::<false>(a))
}

/// a^2 + 512p; a valid, result biased.
#[inline]
#[target_feature(enable = "avx512f,avx512ifma,avx512vl")]
fn square_biased(a: &FV) -> FV {
    reduce(square_cols::<true>(a))
}

/// a * b; a and b valid, result valid (positional).
#[inline]
#[target_feature(enable = "avx512f,avx512ifma,avx512vl")]
fn mul(a: &FV, b: &FV) -> FV {
    carry(&mul_wide(a, b))
}

/// `reduce` then `carry_for_mul`, ordered for latency (the inversion chain
/// is one long dependency chain): limb 4's bits >= 255 are folded before the
/// small high-half terms from column 8 are added, so the fold does not wait
/// for them (they keep limb 4 < 2^47 + 2^12: still valid).
#[inline]
#[target_feature(enable = "avx512f,avx512ifma,avx512vl")]
fn reduce_carry_lat(c: [V; 10]) -> FV {
    let k608 = splat(608);
    let r4 = madd_lo(c[4], c[9], k608); // < 2^55.4
    let t = v_srli::<47>(r4);
    let s: [V; 4] = core::array::from_fn(|k| v_srli::<52>(c[k + 5]));
    // Two independent partial sums per limb, joined once.
    let u = [
        madd_lo(c[0], c[5], k608),
        madd_lo(c[1], c[6], k608),
        madd_lo(c[2], c[7], k608),
        madd_lo(c[3], c[8], k608),
        v_and(r4, splat(M47)),
    ];
    let z = v_zero();
    let w = [
        madd_lo(z, t, splat(19)),
        madd_lo(madd_hi(z, c[5], k608), s[0], k608),
        madd_lo(madd_hi(z, c[6], k608), s[1], k608),
        madd_lo(madd_hi(z, c[7], k608), s[2], k608),
        madd_lo(madd_hi(z, c[8], k608), s[3], k608),
    ];
    let mut r: [V; 5] = core::array::from_fn(|k| v_add(u[k], w[k]));
    for k in 0..4 {
        r[k + 1] = v_add(r[k + 1], v_srli::<52>(r[k]));
    }
    FV(r)
}

/// `square_cols::<false>` with each column's cross terms split over two
/// accumulators (low and high halves), halving the dependency depth.
#[inline]
#[target_feature(enable = "avx512f,avx512ifma,avx512vl")]
fn square_cols_lat(a: &FV) -> [V; 10] {
    let a = a.0;
    let z = v_zero();
    let mut lo = [z; 10];
    let mut hi = [z; 10];
    for i in 0..5 {
        for j in i + 1..5 {
            lo[i + j] = madd_lo(lo[i + j], a[i], a[j]);
            hi[i + j + 1] = madd_hi(hi[i + j + 1], a[i], a[j]);
        }
    }
    let mut c: [V; 10] = core::array::from_fn(|k| {
        let x = v_add(lo[k], hi[k]);
        v_add(x, x)
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
#[target_feature(enable = "avx512f,avx512ifma,avx512vl")]
fn square_lat(a: &FV) -> FV {
    reduce_carry_lat(square_cols_lat(a))
}

/// a * b for the inversion chain, `carry_for_mul` result.
#[inline]
#[target_feature(enable = "avx512f,avx512ifma,avx512vl")]
fn mul_lat(a: &FV, b: &FV) -> FV {
    reduce_carry_lat(mul_cols(a, b, zero8().0))
}

/// a^(2^n), n >= 1, for the inversion chain.
#[inline]
#[target_feature(enable = "avx512f,avx512ifma,avx512vl")]
fn square_n_lat(a: &FV, n: usize) -> FV {
    let mut y = square_lat(a);
    for _ in 1..n {
        y = square_lat(&y);
    }
    y
}

/// z^(p-2), `carry_for_mul` form (it only feeds multiplications).
#[inline(never)]
#[target_feature(enable = "avx512f,avx512ifma,avx512vl")]
fn invert(z: &FV) -> FV {
    invert_chain!(square_lat, square_n_lat, mul_lat, z)
}

/// aa + A24 * e, for multiplier inputs only (`carry_for_mul`); aa biased or
/// wide, e valid.
#[inline]
#[target_feature(enable = "avx512f,avx512ifma,avx512vl")]
fn add_a24(aa: &FV, e: &FV) -> FV {
    let k = splat(A24);
    let e = e.0;
    // e_i * A24 < 2^69: low half stays in limb i, high half goes to limb i + 1;
    // from limb 4 (e_4 < 2^47.01, high half < 2^12) it has weight 2^260 = 608.
    let mut r: [V; 5] = core::array::from_fn(|i| madd_lo(aa.0[i], e[i], k));
    for i in 0..4 {
        r[i + 1] = madd_hi(r[i + 1], e[i], k);
    }
    let top = madd_hi(v_zero(), e[4], k);
    r[0] = madd_lo(r[0], top, splat(608));
    // Limbs < 2^61.1 + 2^52 + 2^22.
    carry_for_mul(&FV(r))
}

/// Per-lane `s ? b : a`.
#[inline]
#[target_feature(enable = "avx512f,avx512ifma,avx512vl")]
fn select(s: Mask, a: &FV, b: &FV) -> FV {
    FV(core::array::from_fn(|i| {
        v_blend(s, a.0[i], b.0[i])
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
#[target_feature(enable = "avx512f,avx512ifma,avx512vl")]
fn ladder<const CLAMPED: bool>(k: &[V; 4], x1: &FV) -> (FV, FV) {
    // X coordinates are biased (left sides of subtractions), Z wide.
    let bias = FV(bias8());
    let mut x2 = add(&one8(), &bias);
    let mut z2 = zero8();
    let mut x3 = add(x1, &bias);
    let mut z3 = one8();
    let mut prev: Mask = 0;
    let (top, bottom) = if CLAMPED { (255, 3) } else { (256, 0) };
    for t in (bottom..top).rev() {
        // Public position t; the lanes' secret bits only become a mask.
        let bit = v_test(k[t / 64], splat(1u64 << (t % 64)));
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
#[target_feature(enable = "avx512f,avx512ifma,avx512vl")]
fn double_tail(aa_b: &FV, bb_w: &FV) -> (FV, FV) {
    let e = carry_for_mul(&sub(aa_b, bb_w));
    let x = mul_biased(&carry_for_mul(aa_b), &carry_for_mul(bb_w));
    let z = mul_wide(&e, &add_a24(aa_b, &e));
    (x, z)
}

/// 2 (x : z) as the ladder step computes it; x biased, z wide.
#[inline]
#[target_feature(enable = "avx512f,avx512ifma,avx512vl")]
fn double(x: &FV, z: &FV) -> (FV, FV) {
    let a = carry_for_mul(&add(x, z));
    let b = carry_for_mul(&sub(x, z));
    double_tail(&square_biased(&a), &square_wide(&b))
}

/// Lanes whose value is 0 mod p (a valid: value < 2^255 + 2^223 < 2p, and
/// the limbs are positional, so it is 0 mod p iff its limbs are those of 0
/// or of p).
#[inline]
#[target_feature(enable = "avx512f,avx512ifma,avx512vl")]
fn is_zero(a: &FV) -> Mask {
    let l = a.0;
    let or = v_or(
        v_or(l[0], l[1]),
        v_or(v_or(l[2], l[3]), l[4]),
    );
    let zero = v_cmpeq(or, v_zero());
    let mut is_p: Mask = ALL_LANES;
    for (li, pi) in l.iter().zip(P52.iter()) {
        is_p &= v_cmpeq(*li, splat(*pi));
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
#[target_feature(enable = "avx512f,avx512ifma,avx512vl")]
fn load(limbs: &[[u64; LANES]; 5]) -> FV {
    FV(core::array::from_fn(|i| v_load(&limbs[i])))
}

#[inline]
#[target_feature(enable = "avx512f,avx512ifma,avx512vl")]
fn store(a: &FV) -> [[u64; LANES]; 5] {
    let mut out = [[0u64; LANES]; 5];
    for (o, v) in out.iter_mut().zip(a.0.iter()) {
        v_store(o, *v);
    }
    out
}

/// Runs the batch in groups of up to INV_GROUP vectors (INV_GROUP x LANES lanes) that share
/// one inversion. Lanes past the end are padded with scalar 0 (result Z = 0,
/// handled like any low-order lane) and discarded.
#[target_feature(enable = "avx512f,avx512ifma,avx512vl")]
pub(in super::super) fn batch(
    scalars: Scalars<'_>,
    clamped: bool,
    points: &[[u8; 32]],
    out: &mut [[u8; 32]],
) {
    let n = points.len();
    let mut base = 0;
    while base < n {
        let lanes = (n - base).min(LANES * INV_GROUP);
        let nvec = lanes.div_ceil(LANES);
        let mut xs = [zero8(); INV_GROUP];
        let mut zs = [zero8(); INV_GROUP];
        for v in 0..nvec {
            let mut kw = [[0u64; LANES]; 4];
            let mut x1 = [[0u64; LANES]; 5];
            for l in 0..LANES {
                let i = base + LANES * v + l;
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
            let kv: [V; 4] = core::array::from_fn(|w| v_load(&kw[w]));
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
            let r = FV(core::array::from_fn(|i| {
                v_blend(zero_lanes[v], r.0[i], v_zero())
            }));
            let limbs = store(&r);
            for (l, o) in out[base + LANES * v..].iter_mut().take(LANES).enumerate() {
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
#[target_feature(enable = "avx512f,avx512ifma,avx512vl")]
fn invert_group(zs: &mut [FV]) -> [Mask; INV_GROUP] {
    let mut masks = [0 as Mask; INV_GROUP];
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


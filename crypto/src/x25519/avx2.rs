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
//!   (19 or 38 times a limb) stays < 57 * 2^26 < 2^32, as `vpmuludq` needs, and
//!   every column sum < 10 * 2^59.4 < 2^63.
//!
//! The ladder step (nine kernels with the step's additions and selects fused in), `mul`
//! and `square` are the hand-scheduled assembly of `avx2_kernels.rs` (its doc says why);
//! the ladder's set-up, the last doublings and the conversions are intrinsics.

use core::arch::x86_64::*;

use core::mem::MaybeUninit;

use super::avx2_kernels::{self as kernels, Limbs, Step};
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

/// 19 b for [`kernels::step_z3`] (limbs 1..10; see [`kernels::times19`]).
#[inline]
#[target_feature(enable = "avx2")]
fn times19(b: &F4) -> Limbs {
    let mut b19 = zero4().0;
    kernels::times19(&b.0, &mut b19);
    b19
}

// The generic kernels are called, not inlined: each is ~1.5 KB of code, used by the
// inversion chain and the last doublings, where a call's few cycles do not count.

/// out = a * b; limbs < 3 * radix; result reduced.
#[inline(never)]
#[target_feature(enable = "avx2")]
fn mul_into(a: &F4, b: &F4, out: &mut F4) {
    kernels::mul(&a.0, &b.0, &mut out.0);
}

/// out = a^2; limbs < 3 * radix; result reduced.
#[inline(never)]
#[target_feature(enable = "avx2")]
fn square_into(a: &F4, out: &mut F4) {
    let mut scratch = MaybeUninit::uninit();
    kernels::square(&a.0, &mut scratch, &mut out.0);
}

/// a * b; limbs < 3 * radix; result reduced.
#[inline]
#[target_feature(enable = "avx2")]
fn mul(a: &F4, b: &F4) -> F4 {
    let mut out = zero4();
    mul_into(a, b, &mut out);
    out
}

/// a^2; limbs < 3 * radix; result reduced.
#[inline]
#[target_feature(enable = "avx2")]
fn square(a: &F4) -> F4 {
    let mut out = zero4();
    square_into(a, &mut out);
    out
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

/// A ladder's [`Step`] with (x2, z2, x3, z3) = `xz`, the point x1 and 19 x1; the step
/// inputs are still to be set ([`step_inputs`]).
#[inline]
#[target_feature(enable = "avx2")]
fn new_step(xz: [&F4; 4], x1: &F4) -> Step {
    let zero = zero4().0;
    Step {
        a: zero,
        b: zero,
        c: zero,
        d: zero,
        p: zero,
        q: zero,
        da: zero,
        aa: zero,
        sum: zero,
        dif: zero,
        bb: zero,
        e: zero,
        u: zero,
        t: zero,
        x2: xz[0].0,
        z2: xz[1].0,
        x3: xz[2].0,
        z3: xz[3].0,
        x1: x1.0,
        x1_19: times19(x1),
        sq19: zero,
        sq38: zero,
        s: _mm256_setzero_si256(),
    }
}

/// Sets the step inputs a, b, c, d of `w` from its x2, z2, x3, z3 and (p, q) by the mask
/// `w.s` (what the step kernels' epilogues do from the second step on).
#[inline]
#[target_feature(enable = "avx2")]
fn step_inputs(w: &mut Step) {
    let (x2, z2, x3, z3) = (F4(w.x2), F4(w.z2), F4(w.x3), F4(w.z3));
    let (a, b, c, d) = (add(&x2, &z2), sub(&x2, &z2), add(&x3, &z3), sub(&x3, &z3));
    w.p = select(w.s, &a, &c).0;
    w.q = select(w.s, &b, &d).0;
    (w.a, w.b, w.c, w.d) = (a.0, b.0, c.0, d.0);
}

/// `L` independent per-lane Montgomery ladders run together (4 L lanes); `k[j][w]` holds
/// word w of each lane's scalar of ladder j, x1 reduced. Returns projective (X, Z) of R0 of
/// each ladder, reduced.
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
///
/// A step is the nine `kernels::step_*` kernels, each ending with the additions and selects
/// its result feeds (their doc). Order: a kernel ends with a serial carry chain of ~30
/// cycles, and one kernel fills most of the core's reorder window, so a kernel that needs
/// the result of the one just before it waits for that chain. Each kernel of a step runs
/// for every ladder before the next kernel (with `L = 2` consecutive kernels never depend on
/// each other), and within a step the kernels are ordered so that none reads the result of
/// the one right before it (only the step's first reads the previous step's last).
#[inline(never)]
#[target_feature(enable = "avx2")]
fn ladder<const CLAMPED: bool, const L: usize>(k: &[[V; 4]; L], x1: &[F4; L]) -> [(F4, F4); L] {
    let mut ws: [Step; L] =
        core::array::from_fn(|j| new_step([&one4(), &zero4(), &x1[j], &one4()], &x1[j]));
    let (top, bottom) = if CLAMPED { (255, 3) } else { (256, 0) };
    // The lanes' secret bits only become masks; bit positions are public.
    let bit = |k: &[V; 4], t: usize| {
        let sel = splat(1u64 << (t % 64));
        _mm256_cmpeq_epi64(_mm256_and_si256(k[t / 64], sel), sel)
    };
    for (w, k) in ws.iter_mut().zip(k) {
        // The first step's mask: its bit against a previous bit of 0.
        w.s = bit(k, top - 1);
        step_inputs(w);
    }
    for t in (bottom..top).rev() {
        // Each step's last kernel selects the next step's doubling input: by the mask of
        // bit t - 1 against bit t (none after the last step).
        for (w, k) in ws.iter_mut().zip(k) {
            w.s = if t > bottom {
                _mm256_xor_si256(bit(k, t - 1), bit(k, t))
            } else {
                _mm256_setzero_si256()
            };
        }
        // Kernel by kernel, each for every ladder in turn.
        macro_rules! each_ladder {
            ($($kernel:ident),*) => {$(
                for w in ws.iter_mut() {
                    kernels::$kernel(w);
                }
            )*};
        }
        each_ladder!(
            step_da, step_aa, step_cb, step_bb, step_t, step_x2, step_z3, step_z2, step_x3
        );
    }
    let mut r = [(zero4(), zero4()); L];
    for ((r, w), k) in r.iter_mut().zip(ws.iter()).zip(k) {
        // The last step's bit tells whether (R0, R1) is (x2, x3) or swapped.
        let last = bit(k, bottom);
        let (mut x, mut z) = (
            select(last, &F4(w.x2), &F4(w.x3)),
            select(last, &F4(w.z2), &F4(w.z3)),
        );
        if CLAMPED {
            // Bits 2..0 are zero: R0 <- 2 R0 three times.
            for _ in 0..3 {
                (x, z) = double_ab(&add(&x, &z), &sub(&x, &z));
            }
        }
        *r = (x, z);
    }
    r
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

/// The ladders of the `L` vectors whose first lane is item `first` (lanes past the end of
/// `points` run scalar 0 on u = 0), into `xs[..L]` and `zs[..L]`.
#[inline]
#[target_feature(enable = "avx2")]
fn ladders<const L: usize>(
    scalars: Scalars<'_>,
    clamped: bool,
    points: &[[u8; 32]],
    first: usize,
    xs: &mut [F4],
    zs: &mut [F4],
) {
    let mut kv = [[_mm256_setzero_si256(); 4]; L];
    let mut x1s = [zero4(); L];
    for (j, (kv, x1v)) in kv.iter_mut().zip(x1s.iter_mut()).enumerate() {
        let mut kw = [[0u64; 4]; 4];
        let mut x1 = [[0u64; 4]; 10];
        for l in 0..4 {
            let i = first + 4 * j + l;
            if i < points.len() {
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
        *kv = core::array::from_fn(|w| load_u64x4(&kw[w]));
        *x1v = load(&x1);
    }
    let r = if clamped {
        ladder::<true, L>(&kv, &x1s)
    } else {
        ladder::<false, L>(&kv, &x1s)
    };
    for ((x, z), r) in xs.iter_mut().zip(zs.iter_mut()).zip(r) {
        (*x, *z) = r;
    }
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
        // Vectors in pairs (two interleaved ladders, see `ladder`), an odd last one alone.
        let mut v = 0;
        while v < nvec {
            let width = if v + 1 < nvec { 2 } else { 1 };
            let first = base + 4 * v;
            let (x, z) = (&mut xs[v..v + width], &mut zs[v..v + width]);
            if width == 2 {
                ladders::<2>(scalars, clamped, points, first, x, z);
            } else {
                ladders::<1>(scalars, clamped, points, first, x, z);
            }
            v += width;
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

    /// The nine step kernels with their fused additions and selects, against the step
    /// written with the generic kernels and intrinsics: two steps, random reduced inputs,
    /// a random select mask per lane.
    #[test]
    fn step_kernels_match_generic_step() {
        if !std::arch::is_x86_feature_detected!("avx2") {
            eprintln!("note: skipping AVX2 step test: CPU lacks AVX2");
            return;
        }
        let mut seed = 0x1234_5678_9abc_def1u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let bytes_of = |f: &F4| {
            // SAFETY: AVX2 detected above.
            let limbs = unsafe { store(f) };
            core::array::from_fn::<_, 4, _>(|l| lane(&limbs, l).to_bytes())
        };
        for _ in 0..50 {
            let mut rand_fe = || -> F4 {
                let limbs: [[u64; 4]; 10] = core::array::from_fn(|j| {
                    core::array::from_fn(|_| next() & if j % 2 == 0 { M26 } else { M25 })
                });
                // SAFETY: AVX2 detected above.
                unsafe { load(&limbs) }
            };
            let (x2, z2, x3, z3, x1) = (rand_fe(), rand_fe(), rand_fe(), rand_fe(), rand_fe());
            let mut mask = || -> V {
                let m: [u64; 4] = core::array::from_fn(|_| (next() & 1).wrapping_neg());
                // SAFETY: AVX2 detected above.
                unsafe { load_u64x4(&m) }
            };
            let (s0, s1) = (mask(), mask());
            // SAFETY: AVX2 detected above (every function below needs only AVX2).
            unsafe {
                let mut w = new_step([&x2, &z2, &x3, &z3], &x1);
                w.s = s0;
                step_inputs(&mut w);
                let (mut r2, mut rz2, mut r3, mut rz3) = (x2, z2, x3, z3);
                for s_next in [s1, s0] {
                    let s = w.s;
                    w.s = s_next;
                    kernels::step_da(&mut w);
                    kernels::step_aa(&mut w);
                    kernels::step_cb(&mut w);
                    kernels::step_bb(&mut w);
                    kernels::step_t(&mut w);
                    kernels::step_x2(&mut w);
                    kernels::step_z3(&mut w);
                    kernels::step_z2(&mut w);
                    kernels::step_x3(&mut w);
                    let (a, b) = (add(&r2, &rz2), sub(&r2, &rz2));
                    let (c, d) = (add(&r3, &rz3), sub(&r3, &rz3));
                    let (da, cb) = (mul(&d, &a), mul(&c, &b));
                    let (aa, bb) = (square(&select(s, &a, &c)), square(&select(s, &b, &d)));
                    let e = sub(&aa, &bb);
                    r3 = square(&add(&da, &cb));
                    rz3 = mul(&square(&sub(&da, &cb)), &x1);
                    r2 = mul(&aa, &bb);
                    rz2 = mul(&e, &add_a24(&aa, &e));
                    for (got, want) in [(&w.x2, &r2), (&w.z2, &rz2), (&w.x3, &r3), (&w.z3, &rz3)] {
                        assert_eq!(bytes_of(&F4(*got)), bytes_of(want));
                    }
                    let (a, b) = (add(&r2, &rz2), sub(&r2, &rz2));
                    let (c, d) = (add(&r3, &rz3), sub(&r3, &rz3));
                    let (p, q) = (select(s_next, &a, &c), select(s_next, &b, &d));
                    for (got, want) in [
                        (&w.a, &a),
                        (&w.b, &b),
                        (&w.c, &c),
                        (&w.d, &d),
                        (&w.p, &p),
                        (&w.q, &q),
                    ] {
                        assert_eq!(bytes_of(&F4(*got)), bytes_of(want));
                    }
                }
            }
        }
    }
}

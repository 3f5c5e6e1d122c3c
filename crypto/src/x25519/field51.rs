//! Portable arithmetic in GF(2^255 - 19): five 51-bit limbs, u128 products.
//!
//! The canonical encoding lives only here: the AVX2 path converts to and
//! from [`Fe`] limb for limb, the IFMA path (radix 2^52) through the 256-bit
//! integer.
//!
//! Limb bounds ("reduced" = every limb < 2^51 + 2^18, which is what `mul`,
//! `square` and `carry` return): `mul`/`square` accept limbs up to 2^54,
//! `sub` accepts a subtrahend with limbs < 2^53.

const MASK51: u64 = (1 << 51) - 1;

/// A field element, value = sum(l[i] * 2^(51 i)), not necessarily canonical.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Fe(pub(crate) [u64; 5]);

/// 4p in radix 2^51: every limb >= 2^53 - 76, so `a + 4p - b` never underflows
/// for b limbs < 2^53.
const FOUR_P: [u64; 5] = [
    4 * ((1 << 51) - 19),
    4 * MASK51,
    4 * MASK51,
    4 * MASK51,
    4 * MASK51,
];

impl Fe {
    pub(crate) const ZERO: Fe = Fe([0; 5]);
    pub(crate) const ONE: Fe = Fe([1, 0, 0, 0, 0]);

    /// Loads 32 little-endian bytes, ignoring bit 255 (RFC 7748 §5). Values
    /// in [p, 2^255) are accepted as is: arithmetic is mod p anyway.
    #[inline]
    pub(crate) fn from_bytes(b: &[u8; 32]) -> Fe {
        let w = |i: usize| {
            let mut t = [0u8; 8];
            t.copy_from_slice(&b[8 * i..8 * i + 8]);
            u64::from_le_bytes(t)
        };
        let (w0, w1, w2, w3) = (w(0), w(1), w(2), w(3));
        Fe([
            w0 & MASK51,
            ((w0 >> 51) | (w1 << 13)) & MASK51,
            ((w1 >> 38) | (w2 << 26)) & MASK51,
            ((w2 >> 25) | (w3 << 39)) & MASK51,
            (w3 >> 12) & MASK51, // bits 204..254: bit 255 dropped here
        ])
    }

    /// Canonical little-endian encoding (value fully reduced mod p).
    /// Accepts limbs up to 2^63.
    #[inline]
    pub(crate) fn to_bytes(self) -> [u8; 32] {
        // Two carry passes: limbs < 2^51 + 2^14, so value < 2^255 + 2^14 < 2p.
        let mut l = carry(carry(self)).0;
        // q = floor((v + 19) / 2^255) is 1 exactly when v >= p (v < 2p).
        let mut q = (l[0] + 19) >> 51;
        q = (l[1] + q) >> 51;
        q = (l[2] + q) >> 51;
        q = (l[3] + q) >> 51;
        q = (l[4] + q) >> 51;
        // v - q p = v + 19 q - q 2^255: add 19q, propagate, drop bit 255.
        l[0] += 19 * q;
        l[1] += l[0] >> 51;
        l[0] &= MASK51;
        l[2] += l[1] >> 51;
        l[1] &= MASK51;
        l[3] += l[2] >> 51;
        l[2] &= MASK51;
        l[4] += l[3] >> 51;
        l[3] &= MASK51;
        l[4] &= MASK51;
        let w0 = l[0] | (l[1] << 51);
        let w1 = (l[1] >> 13) | (l[2] << 38);
        let w2 = (l[2] >> 26) | (l[3] << 25);
        let w3 = (l[3] >> 39) | (l[4] << 12);
        let mut out = [0u8; 32];
        out[0..8].copy_from_slice(&w0.to_le_bytes());
        out[8..16].copy_from_slice(&w1.to_le_bytes());
        out[16..24].copy_from_slice(&w2.to_le_bytes());
        out[24..32].copy_from_slice(&w3.to_le_bytes());
        out
    }
}

/// One parallel carry pass. Input limbs < 2^64 - 2^51*19; output limbs
/// < 2^51 + 2^13 (limb 0: < 2^51 + 19 * 2^13).
#[inline(always)]
pub(crate) fn carry(a: Fe) -> Fe {
    let l = a.0;
    let c = [l[0] >> 51, l[1] >> 51, l[2] >> 51, l[3] >> 51, l[4] >> 51];
    Fe([
        (l[0] & MASK51) + 19 * c[4],
        (l[1] & MASK51) + c[0],
        (l[2] & MASK51) + c[1],
        (l[3] & MASK51) + c[2],
        (l[4] & MASK51) + c[3],
    ])
}

#[inline(always)]
pub(crate) fn add(a: &Fe, b: &Fe) -> Fe {
    let (a, b) = (a.0, b.0);
    Fe([
        a[0] + b[0],
        a[1] + b[1],
        a[2] + b[2],
        a[3] + b[3],
        a[4] + b[4],
    ])
}

/// a - b + 4p; b limbs must be < 2^53 (true for anything reduced or a sum of two).
#[inline(always)]
pub(crate) fn sub(a: &Fe, b: &Fe) -> Fe {
    let (a, b) = (a.0, b.0);
    Fe([
        a[0] + FOUR_P[0] - b[0],
        a[1] + FOUR_P[1] - b[1],
        a[2] + FOUR_P[2] - b[2],
        a[3] + FOUR_P[3] - b[3],
        a[4] + FOUR_P[4] - b[4],
    ])
}

#[inline(always)]
fn m(a: u64, b: u64) -> u128 {
    (a as u128) * (b as u128)
}

/// Reduces the five 128-bit column sums (already folded mod p) to a reduced Fe.
#[inline(always)]
fn reduce_wide(c: [u128; 5]) -> Fe {
    let mut c = c;
    // Each c[i] < 2^115 (see callers), so carries fit easily.
    c[1] += c[0] >> 51;
    c[2] += c[1] >> 51;
    c[3] += c[2] >> 51;
    c[4] += c[3] >> 51;
    // c[4] >> 51 < 2^64, so 19 times it is formed in u128.
    let t0 = u128::from((c[0] as u64) & MASK51) + 19 * (c[4] >> 51);
    Fe([
        (t0 as u64) & MASK51,
        ((c[1] as u64) & MASK51) + (t0 >> 51) as u64,
        (c[2] as u64) & MASK51,
        (c[3] as u64) & MASK51,
        (c[4] as u64) & MASK51,
    ])
}

/// Product. Limbs of a and b < 2^54: every column < 5 * 19 * 2^108 < 2^115.
#[inline(always)]
pub(crate) fn mul(a: &Fe, b: &Fe) -> Fe {
    let (a, b) = (a.0, b.0);
    // 2^255 = 19 mod p: terms with i + j >= 5 wrap around times 19.
    let b19 = [0, b[1] * 19, b[2] * 19, b[3] * 19, b[4] * 19];
    reduce_wide([
        m(a[0], b[0]) + m(a[1], b19[4]) + m(a[2], b19[3]) + m(a[3], b19[2]) + m(a[4], b19[1]),
        m(a[0], b[1]) + m(a[1], b[0]) + m(a[2], b19[4]) + m(a[3], b19[3]) + m(a[4], b19[2]),
        m(a[0], b[2]) + m(a[1], b[1]) + m(a[2], b[0]) + m(a[3], b19[4]) + m(a[4], b19[3]),
        m(a[0], b[3]) + m(a[1], b[2]) + m(a[2], b[1]) + m(a[3], b[0]) + m(a[4], b19[4]),
        m(a[0], b[4]) + m(a[1], b[3]) + m(a[2], b[2]) + m(a[3], b[1]) + m(a[4], b[0]),
    ])
}

/// Square. Limbs < 2^54.
#[inline(always)]
pub(crate) fn square(a: &Fe) -> Fe {
    let a = a.0;
    let d0 = 2 * a[0];
    let d1 = 2 * a[1];
    let a3_19 = 19 * a[3];
    let a4_19 = 19 * a[4];
    reduce_wide([
        m(a[0], a[0]) + m(2 * a[1], a4_19) + m(2 * a[2], a3_19),
        m(d0, a[1]) + m(2 * a[2], a4_19) + m(a[3], a3_19),
        m(d0, a[2]) + m(a[1], a[1]) + m(2 * a[3], a4_19),
        m(d0, a[3]) + m(d1, a[2]) + m(a[4], a4_19),
        m(d0, a[4]) + m(d1, a[3]) + m(a[2], a[2]),
    ])
}

/// a * k for a small constant k < 2^20; limbs of a < 2^54.
#[inline(always)]
pub(crate) fn mul_small(a: &Fe, k: u64) -> Fe {
    let a = a.0;
    reduce_wide([m(a[0], k), m(a[1], k), m(a[2], k), m(a[3], k), m(a[4], k)])
}

/// Constant-time conditional swap: swaps when `mask` is all ones, not when zero.
#[inline(always)]
pub(crate) fn cswap(a: &mut Fe, b: &mut Fe, mask: u64) {
    for i in 0..5 {
        let t = (a.0[i] ^ b.0[i]) & mask;
        a.0[i] ^= t;
        b.0[i] ^= t;
    }
}

/// a^(p-2) (= 1/a, and 0 for a = 0) via the fixed addition chain
/// 2^255 - 21 = (2^250 - 1) * 2^5 + 11.
#[inline(never)]
pub(crate) fn invert(z: &Fe) -> Fe {
    invert_chain!(square, square_n, mul, z)
}

/// a^(2^n), n >= 1.
#[inline(always)]
fn square_n(a: &Fe, n: usize) -> Fe {
    let mut y = square(a);
    for _ in 1..n {
        y = square(&y);
    }
    y
}

/// RFC 7748 constant (A - 2) / 4.
pub(crate) const A24: u64 = 121_665;

/// Montgomery ladder over all 256 bits of `k` (no clamping), returns u([k]P)
/// as projective (X, Z).
pub(crate) fn ladder(k: &[u8; 32], x1: &Fe) -> (Fe, Fe) {
    let mut x2 = Fe::ONE;
    let mut z2 = Fe::ZERO;
    let mut x3 = *x1;
    let mut z3 = Fe::ONE;
    let mut swap = 0u64;
    for t in (0..256).rev() {
        // Public index t; secret bit only flows into masks.
        let bit = u64::from((k[t >> 3] >> (t & 7)) & 1);
        swap ^= bit;
        let mask = swap.wrapping_neg();
        cswap(&mut x2, &mut x3, mask);
        cswap(&mut z2, &mut z3, mask);
        swap = bit;

        let a = add(&x2, &z2);
        let aa = square(&a);
        let b = sub(&x2, &z2);
        let bb = square(&b);
        let e = sub(&aa, &bb);
        let c = add(&x3, &z3);
        let d = sub(&x3, &z3);
        let da = mul(&d, &a);
        let cb = mul(&c, &b);
        x3 = square(&add(&da, &cb));
        z3 = mul(x1, &square(&sub(&da, &cb)));
        x2 = mul(&aa, &bb);
        z2 = mul(&e, &add(&aa, &mul_small(&e, A24)));
    }
    let mask = swap.wrapping_neg();
    cswap(&mut x2, &mut x3, mask);
    cswap(&mut z2, &mut z3, mask);
    (x2, z2)
}

/// Serial scalar multiplication: u([k]P) for the 256-bit integer k.
pub(crate) fn scalarmult(k: &[u8; 32], u: &[u8; 32]) -> [u8; 32] {
    let x1 = Fe::from_bytes(u);
    let (x, z) = ladder(k, &x1);
    mul(&x, &invert(&z)).to_bytes()
}

//! The one seam between Sphinx and X25519: every scalar multiplication Sphinx does goes
//! through here, so the multi-lane SIMD ladder (`crate::x25519`) replaces this file alone.
//!
//! This version is serial (curve25519-dalek's Montgomery ladder, one lane after another).
//! Lane counts are whatever the caller passes; extra output slots are left untouched.
//! To swap in the SIMD ladder: forward `x25519_batch`, `scalarmult_raw(_batch)` to
//! `crate::x25519`, and derive `path_name` from `crate::x25519::simd_path()` (which honours
//! `LETHE_SIMD`); `x25519_base` may stay on dalek's fixed-base tables.

use curve25519_dalek::edwards::EdwardsPoint;
use curve25519_dalek::montgomery::MontgomeryPoint;

/// Which implementation multiplies: reported by benchmarks (`simd_path` in sphinx-ratio).
pub(crate) fn path_name() -> &'static str {
    "dalek-serial"
}

/// X25519 (clamped scalar) per lane: `out[i] = X25519(scalars[i], points[i])`.
pub(crate) fn x25519_batch(scalars: &[[u8; 32]], points: &[[u8; 32]], out: &mut [[u8; 32]]) {
    for ((scalar, point), out) in scalars.iter().zip(points).zip(out.iter_mut()) {
        *out = MontgomeryPoint(*point).mul_clamped(*scalar).to_bytes();
    }
}

/// Unclamped multiplication: Montgomery ladder over all 256 bits of `scalar` (little-endian
/// bytes), for scalars that are products of clamped scalars reduced mod 8·l.
pub(crate) fn scalarmult_raw(scalar: &[u8; 32], u: &[u8; 32]) -> [u8; 32] {
    // Bit extraction is branch-free; the ladder itself is constant time in the bit count.
    let bits = (0..256usize)
        .rev()
        .map(|i| (scalar[i >> 3] >> (i & 7)) & 1 == 1);
    MontgomeryPoint(*u).mul_bits_be(bits).to_bytes()
}

/// [`scalarmult_raw`] per lane.
pub(crate) fn scalarmult_raw_batch(
    scalars: &[[u8; 32]],
    points: &[[u8; 32]],
    out: &mut [[u8; 32]],
) {
    for ((scalar, point), out) in scalars.iter().zip(points).zip(out.iter_mut()) {
        *out = scalarmult_raw(scalar, point);
    }
}

/// X25519(scalar, 9) by fixed-base multiplication (precomputed Edwards tables, several
/// times faster than a ladder; the base point has order l, so the result is bit-identical).
pub(crate) fn x25519_base(scalar: &[u8; 32]) -> [u8; 32] {
    EdwardsPoint::mul_base_clamped(*scalar)
        .to_montgomery()
        .to_bytes()
}

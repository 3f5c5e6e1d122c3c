//! The one seam between Sphinx and X25519: every scalar multiplication Sphinx does goes
//! through here.
//!
//! Variable-base multiplications run on the multi-lane ladder of [`crate::x25519`] (AVX-512
//! IFMA 8 lanes, AVX2 4 lanes or portable, chosen at run time; `LETHE_SIMD` forces one).
//! Lane counts are whatever the caller passes; extra output slots are left untouched.
//! The fixed-base multiplication stays on curve25519-dalek's precomputed Edwards tables.

use curve25519_dalek::edwards::EdwardsPoint;

use crate::x25519::{self, SimdPath};

/// Which implementation multiplies: reported by benchmarks (`simd_path` in sphinx-ratio).
pub(crate) fn path_name() -> &'static str {
    match x25519::simd_path() {
        SimdPath::Ifma => "ifma",
        SimdPath::Avx2 => "avx2",
        SimdPath::Portable => "portable",
    }
}

/// Lanes the three slices have in common.
fn lanes(scalars: &[[u8; 32]], points: &[[u8; 32]], out: &[[u8; 32]]) -> usize {
    scalars.len().min(points.len()).min(out.len())
}

/// X25519 (clamped scalar) per lane: `out[i] = X25519(scalars[i], points[i])`.
pub(crate) fn x25519_batch(scalars: &[[u8; 32]], points: &[[u8; 32]], out: &mut [[u8; 32]]) {
    let n = lanes(scalars, points, out);
    x25519::x25519_batch(&scalars[..n], &points[..n], &mut out[..n]);
}

/// Unclamped multiplication per lane: Montgomery ladder over all 256 bits of each scalar
/// (little-endian bytes), for scalars that are products of clamped scalars reduced mod 8·l.
pub(crate) fn scalarmult_raw_batch(
    scalars: &[[u8; 32]],
    points: &[[u8; 32]],
    out: &mut [[u8; 32]],
) {
    let n = lanes(scalars, points, out);
    x25519::scalarmult_raw_batch(&scalars[..n], &points[..n], &mut out[..n]);
}

/// X25519(scalar, 9) by fixed-base multiplication (precomputed Edwards tables, several
/// times faster than a ladder; the base point has order l, so the result is bit-identical).
pub(crate) fn x25519_base(scalar: &[u8; 32]) -> [u8; 32] {
    EdwardsPoint::mul_base_clamped(*scalar)
        .to_montgomery()
        .to_bytes()
}

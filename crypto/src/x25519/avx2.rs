//! 4-lane X25519 with AVX2 (placeholder: serial until the vector code lands).

use super::field51;
use super::Scalars;

#[target_feature(enable = "avx2")]
pub(super) fn batch(scalars: Scalars<'_>, clamped: bool, points: &[[u8; 32]], out: &mut [[u8; 32]]) {
    for (i, (p, o)) in points.iter().zip(out.iter_mut()).enumerate() {
        *o = field51::scalarmult(&scalars.get(i, clamped), p);
    }
}

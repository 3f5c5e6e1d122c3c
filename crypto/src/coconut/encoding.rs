//! Checked wire encoding: fixed-size big-endian integers, compressed points, little-endian
//! scalars.
//!
//! Every decoder refuses wrong lengths, trailing bytes, non-canonical scalars (≥ r), points
//! that are off the curve or outside the prime-order subgroup, non-canonical point encodings
//! (checked by re-encoding) and identity points: no honest party ever sends the identity, and
//! an identity makes pairing terms vanish (nym-compact-ecash 2.0 forgery class 3).

use blstrs::{G1Affine, G2Affine, Scalar};
use group::prime::PrimeCurveAffine;

use super::error::CoconutError;

pub(crate) const G1_LEN: usize = 48;
pub(crate) const G2_LEN: usize = 96;
pub(crate) const SCALAR_LEN: usize = 32;

/// Appends encodings to a byte vector.
#[derive(Default)]
pub(crate) struct Writer {
    pub(crate) bytes: Vec<u8>,
}

impl Writer {
    pub(crate) fn u32(&mut self, v: u32) {
        self.bytes.extend_from_slice(&v.to_be_bytes());
    }

    pub(crate) fn u64(&mut self, v: u64) {
        self.bytes.extend_from_slice(&v.to_be_bytes());
    }

    pub(crate) fn g1(&mut self, p: &G1Affine) {
        self.bytes.extend_from_slice(&p.to_compressed());
    }

    pub(crate) fn g2(&mut self, p: &G2Affine) {
        self.bytes.extend_from_slice(&p.to_compressed());
    }

    pub(crate) fn scalar(&mut self, s: &Scalar) {
        self.bytes.extend_from_slice(&s.to_bytes_le());
    }

    /// A vector whose length fits a byte (attribute counts are small, see MAX_ATTRIBUTES).
    pub(crate) fn count(&mut self, n: usize) {
        // Invariant: callers only encode vectors of at most MAX_ATTRIBUTES (< 256) entries.
        self.bytes.push(u8::try_from(n).unwrap_or(u8::MAX));
    }
}

/// Consumes a byte slice front to back; `finish` refuses trailing bytes.
pub(crate) struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Self { rest: bytes }
    }

    fn take<const N: usize>(&mut self) -> Result<[u8; N], CoconutError> {
        if self.rest.len() < N {
            return Err(CoconutError::Decoding);
        }
        let (head, tail) = self.rest.split_at(N);
        self.rest = tail;
        let mut out = [0u8; N];
        out.copy_from_slice(head);
        Ok(out)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, CoconutError> {
        Ok(self.take::<1>()?[0])
    }

    pub(crate) fn u32(&mut self) -> Result<u32, CoconutError> {
        Ok(u32::from_be_bytes(self.take()?))
    }

    pub(crate) fn u64(&mut self) -> Result<u64, CoconutError> {
        Ok(u64::from_be_bytes(self.take()?))
    }

    /// A vector length, bounded so that a hostile count cannot make us allocate much.
    pub(crate) fn count(&mut self, max: usize) -> Result<usize, CoconutError> {
        let n = usize::from(self.u8()?);
        if n > max {
            return Err(CoconutError::Decoding);
        }
        Ok(n)
    }

    pub(crate) fn g1(&mut self) -> Result<G1Affine, CoconutError> {
        decode_g1(&self.take()?)
    }

    pub(crate) fn g2(&mut self) -> Result<G2Affine, CoconutError> {
        decode_g2(&self.take()?)
    }

    pub(crate) fn scalar(&mut self) -> Result<Scalar, CoconutError> {
        decode_scalar(&self.take()?)
    }

    pub(crate) fn scalars(&mut self, n: usize) -> Result<Vec<Scalar>, CoconutError> {
        (0..n).map(|_| self.scalar()).collect()
    }

    pub(crate) fn finish(self) -> Result<(), CoconutError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(CoconutError::Decoding)
        }
    }
}

/// Decodes a compressed G1 point in the prime-order subgroup, refusing the identity.
pub(crate) fn decode_g1(bytes: &[u8; G1_LEN]) -> Result<G1Affine, CoconutError> {
    let p: Option<G1Affine> = G1Affine::from_compressed(bytes).into();
    let p = p.ok_or(CoconutError::Decoding)?;
    if bool::from(p.is_identity()) || p.to_compressed() != *bytes {
        return Err(CoconutError::Decoding);
    }
    Ok(p)
}

/// Decodes a compressed G2 point in the prime-order subgroup, refusing the identity.
pub(crate) fn decode_g2(bytes: &[u8; G2_LEN]) -> Result<G2Affine, CoconutError> {
    let p: Option<G2Affine> = G2Affine::from_compressed(bytes).into();
    let p = p.ok_or(CoconutError::Decoding)?;
    if bool::from(p.is_identity()) || p.to_compressed() != *bytes {
        return Err(CoconutError::Decoding);
    }
    Ok(p)
}

/// Decodes a canonical (< r) little-endian scalar.
pub(crate) fn decode_scalar(bytes: &[u8; SCALAR_LEN]) -> Result<Scalar, CoconutError> {
    Option::from(Scalar::from_bytes_le(bytes)).ok_or(CoconutError::Decoding)
}

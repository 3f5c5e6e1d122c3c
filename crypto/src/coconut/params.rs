//! Public parameters, hashing to the curve, the Fiat–Shamir transcript and the random weights
//! of batched checks (shared by verification and key generation, which import this, not each
//! other).

use blstrs::{G1Affine, G1Projective, G2Affine, G2Prepared, Scalar};
use ff::Field;
use group::{prime::PrimeCurveAffine, Curve};
use rand_core_06::{OsRng, RngCore};
use sha2::{Digest, Sha512};

use super::error::CoconutError;

/// Most attributes a credential may carry; keeps wire counts in one byte and keys small.
pub const MAX_ATTRIBUTES: usize = 16;

/// RFC 9380 suite for every hash to G1 in this scheme; the message carries a role label.
const H2C_DST: &[u8] = b"LETHE-COCONUT-V1-CS01-with-BLS12381G1_XMD:SHA-256_SSWU_RO_";

/// Public parameters for credentials with `q` attributes.
///
/// Deterministic in `q`: every issuer, client and verifier derives the same generators, and
/// nobody knows discrete logarithms between them (hash to curve, RFC 9380 SSWU).
#[derive(Clone, Debug)]
pub struct Parameters {
    pub(crate) g1: G1Affine,
    pub(crate) g2: G2Affine,
    pub(crate) g2_prepared: G2Prepared,
    /// Pedersen bases h_1..h_q for the issuance commitment.
    pub(crate) hs: Vec<G1Affine>,
    /// Base of the spend tag ζ = serial·δ.
    pub(crate) delta: G1Affine,
}

impl Parameters {
    /// Derives parameters for `q` attributes, 1 ≤ q ≤ [`MAX_ATTRIBUTES`].
    pub fn new(q: usize) -> Result<Self, CoconutError> {
        if q == 0 || q > MAX_ATTRIBUTES {
            return Err(CoconutError::AttributeCount);
        }
        let hs = (0..q)
            .map(|i| hash_to_g1(b"h", &(i as u64).to_be_bytes()).to_affine())
            .collect();
        let g2 = G2Affine::generator();
        Ok(Self {
            g1: G1Affine::generator(),
            g2,
            g2_prepared: G2Prepared::from(g2),
            hs,
            delta: hash_to_g1(b"spend-tag-base", &[]).to_affine(),
        })
    }

    /// The spend-tag base δ (public; lets tools recompute ζ = serial·δ).
    pub fn tag_base(&self) -> G1Affine {
        self.delta
    }

    /// Number of attributes a credential under these parameters carries.
    pub fn attributes(&self) -> usize {
        self.hs.len()
    }
}

/// Hash to G1 with a role label, so different uses never collide.
pub(crate) fn hash_to_g1(label: &[u8], msg: &[u8]) -> G1Projective {
    let mut input = Vec::with_capacity(label.len() + msg.len() + 8);
    input.extend_from_slice(&(label.len() as u64).to_be_bytes());
    input.extend_from_slice(label);
    input.extend_from_slice(msg);
    G1Projective::hash_to_curve(&input, H2C_DST, &[])
}

/// Maps 62 uniformly random bytes to a scalar with bias below 2^-240.
pub(crate) fn scalar_from_wide(bytes: &[u8; 64]) -> Scalar {
    let mut lo = [0u8; 32];
    let mut hi = [0u8; 32];
    lo[..31].copy_from_slice(&bytes[..31]);
    hi[..31].copy_from_slice(&bytes[31..62]);
    // Both halves are below 2^248 < r, so decoding cannot fail; ZERO is unreachable.
    let lo: Scalar = Option::from(Scalar::from_bytes_le(&lo)).unwrap_or(Scalar::ZERO);
    let hi: Scalar = Option::from(Scalar::from_bytes_le(&hi)).unwrap_or(Scalar::ZERO);
    lo + hi * Scalar::from(1u64).shl(248)
}

/// Fiat–Shamir transcript: SHA-512 over a protocol label and length-prefixed, labelled fields,
/// so no two different statements hash the same bytes.
pub(crate) struct Transcript {
    hash: Sha512,
}

impl Transcript {
    pub(crate) fn new(protocol: &[u8]) -> Self {
        let mut t = Self {
            hash: Sha512::new(),
        };
        t.bytes(b"lethe/coconut/v1", protocol);
        t
    }

    pub(crate) fn bytes(&mut self, label: &[u8], data: &[u8]) {
        self.hash.update((label.len() as u64).to_be_bytes());
        self.hash.update(label);
        self.hash.update((data.len() as u64).to_be_bytes());
        self.hash.update(data);
    }

    pub(crate) fn g1(&mut self, label: &[u8], p: &G1Affine) {
        self.bytes(label, &p.to_compressed());
    }

    pub(crate) fn g2(&mut self, label: &[u8], p: &G2Affine) {
        self.bytes(label, &p.to_compressed());
    }

    pub(crate) fn scalars(&mut self, label: &[u8], s: &[Scalar]) {
        let mut buf = Vec::with_capacity(32 * s.len());
        for v in s {
            buf.extend_from_slice(&v.to_bytes_le());
        }
        self.bytes(label, &buf);
    }

    pub(crate) fn challenge(self) -> Scalar {
        let out: [u8; 64] = self.hash.finalize().into();
        scalar_from_wide(&out)
    }
}

/// A uniformly random 128-bit weight (never zero) from the OS generator: the weights of
/// batched checks (verification, key-share consistency).
pub(crate) fn random_weight() -> Scalar {
    let mut b = [0u8; 16];
    OsRng.fill_bytes(&mut b);
    weight_from(u128::from_le_bytes(b))
}

/// `n` weights as [`random_weight`] draws them, from one read of the OS generator.
pub(crate) fn random_weights(n: usize) -> Vec<Scalar> {
    let mut buf = vec![0u8; 16 * n];
    OsRng.fill_bytes(&mut buf);
    buf.chunks_exact(16)
        .map(|c| {
            let mut b = [0u8; 16];
            b.copy_from_slice(c);
            weight_from(u128::from_le_bytes(b))
        })
        .collect()
}

/// The weight 128 random bits stand for: zero maps to one.
pub(crate) fn weight_from(v: u128) -> Scalar {
    let v = v.max(1);
    Scalar::from((v >> 64) as u64).shl(64) + Scalar::from(v as u64)
}

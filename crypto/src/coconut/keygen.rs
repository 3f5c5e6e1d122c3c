//! Keys: trusted-dealer Shamir key generation (t of n), Lagrange aggregation, key checks.
//!
//! sk = (x, y_1..y_q); vk = (α = x·g2, β_j = y_j·g2, β'_j = y_j·g1). The G1 images β'_j let a
//! client unblind Pedersen-committed attributes (Nym's variant of Coconut issuance).

use blstrs::{G1Affine, G1Projective, G2Affine, G2Projective, Scalar};
use ff::Field;
use group::{prime::PrimeCurveAffine, Curve, Group};
use pairing::{MillerLoopResult, MultiMillerLoop};
use rand_core_06::{CryptoRng, RngCore};
use sha2::{Digest, Sha512};
use zeroize::Zeroizing;

use super::encoding::{Reader, Writer};
use super::error::CoconutError;
use super::params::{random_weight, Parameters, MAX_ATTRIBUTES};

/// A signing key (or one signer's Shamir share of it). Zeroed on drop.
#[derive(Clone)]
pub struct SecretKey {
    pub(crate) x: Scalar,
    pub(crate) ys: Vec<Scalar>,
}

/// A verification key: the master key, or one signer's share.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerificationKey {
    pub(crate) alpha: G2Affine,
    pub(crate) beta_g1: Vec<G1Affine>,
    pub(crate) beta_g2: Vec<G2Affine>,
}

/// One signer's key share with its Shamir index (1-based: index 0 is the master secret).
#[derive(Clone)]
pub struct KeyShare {
    /// Evaluation point of this share.
    pub index: u64,
    /// Secret share; zeroed on drop.
    pub secret: SecretKey,
    /// Verification key share.
    pub verification: VerificationKey,
}

/// Trusted-dealer key generation: random degree t−1 polynomials, shares at 1..=n.
///
/// The dealer never returns the master secret; the caller gets only shares (a DKG replaces this
/// in production, credentials.md §2.5).
pub fn ttp_keygen(
    params: &Parameters,
    threshold: usize,
    signers: usize,
    rng: &mut (impl RngCore + CryptoRng),
) -> Result<Vec<KeyShare>, CoconutError> {
    if threshold == 0 || threshold > signers {
        return Err(CoconutError::Indices);
    }
    let q = params.attributes();
    // polys[0] is v (for x), polys[1 + j] is w_j (for y_j); coefficient 0 is the master secret.
    let mut polys: Vec<Vec<Scalar>> = (0..=q)
        .map(|_| (0..threshold).map(|_| Scalar::random(&mut *rng)).collect())
        .collect();
    let mut shares = Vec::with_capacity(signers);
    for index in 1..=signers as u64 {
        let at = Scalar::from(index);
        let mut values = polys.iter().map(|p| evaluate(p, &at));
        let x = values.next().unwrap_or(Scalar::ZERO);
        let secret = SecretKey {
            x,
            ys: values.collect(),
        };
        let verification = secret.verification_key(params);
        shares.push(KeyShare {
            index,
            secret,
            verification,
        });
    }
    for p in &mut polys {
        wipe(p);
    }
    Ok(shares)
}

impl SecretKey {
    /// A fresh random key for `params` (a single, non-threshold signer).
    pub fn random(params: &Parameters, rng: &mut (impl RngCore + CryptoRng)) -> Self {
        Self {
            x: Scalar::random(&mut *rng),
            ys: (0..params.attributes())
                .map(|_| Scalar::random(&mut *rng))
                .collect(),
        }
    }

    /// The matching verification key.
    pub fn verification_key(&self, params: &Parameters) -> VerificationKey {
        let g1 = G1Projective::from(params.g1);
        let g2 = G2Projective::from(params.g2);
        VerificationKey {
            alpha: (g2 * self.x).to_affine(),
            beta_g1: self.ys.iter().map(|y| (g1 * y).to_affine()).collect(),
            beta_g2: self.ys.iter().map(|y| (g2 * y).to_affine()).collect(),
        }
    }

    /// Serialises the key for the signer's own storage; the buffer is zeroed on drop.
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        let mut w = Writer::default();
        w.scalar(&self.x);
        w.count(self.ys.len());
        self.ys.iter().for_each(|y| w.scalar(y));
        Zeroizing::new(w.bytes)
    }

    /// Parses [`SecretKey::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CoconutError> {
        let mut r = Reader::new(bytes);
        let x = r.scalar()?;
        let n = r.count(MAX_ATTRIBUTES)?;
        let ys = r.scalars(n)?;
        r.finish()?;
        Ok(Self { x, ys })
    }
}

impl Drop for SecretKey {
    fn drop(&mut self) {
        self.x = Scalar::ZERO;
        std::hint::black_box(&mut self.x);
        wipe(&mut self.ys);
    }
}

impl core::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("SecretKey(..)")
    }
}

/// Overwrites secret scalars; `black_box` keeps the compiler from dropping the dead stores.
pub(crate) fn wipe(scalars: &mut [Scalar]) {
    for s in scalars.iter_mut() {
        *s = Scalar::ZERO;
    }
    std::hint::black_box(scalars);
}

impl VerificationKey {
    /// Checks the key's shape and consistency against `params`.
    ///
    /// Exactly q betas (an upper bound matters: a longer key lets a prover hide an extra
    /// attribute, nym-compact-ecash 2.0 forgery class 5), no identity points, and each β'_j is
    /// the G1 image of β_j: e(β'_j, g2) = e(g1, β_j), checked for all j at once with random
    /// weights.
    pub fn check(&self, params: &Parameters) -> Result<(), CoconutError> {
        let q = params.attributes();
        if self.beta_g1.len() != q || self.beta_g2.len() != q {
            return Err(CoconutError::VerificationKey);
        }
        let any_identity = bool::from(self.alpha.is_identity())
            || self.beta_g1.iter().any(|b| bool::from(b.is_identity()))
            || self.beta_g2.iter().any(|b| bool::from(b.is_identity()));
        if any_identity {
            return Err(CoconutError::VerificationKey);
        }
        let weights: Vec<Scalar> = (0..q).map(|_| random_weight()).collect();
        let b1: Vec<G1Projective> = self.beta_g1.iter().map(G1Projective::from).collect();
        let b2: Vec<G2Projective> = self.beta_g2.iter().map(G2Projective::from).collect();
        let lhs = G1Projective::multi_exp(&b1, &weights).to_affine();
        let rhs = G2Projective::multi_exp(&b2, &weights).to_affine();
        let neg_g1 = -params.g1;
        let rhs = blstrs::G2Prepared::from(rhs);
        let ok = blstrs::Bls12::multi_miller_loop(&[(&lhs, &params.g2_prepared), (&neg_g1, &rhs)])
            .final_exponentiation()
            .is_identity();
        if bool::from(ok) {
            Ok(())
        } else {
            Err(CoconutError::VerificationKey)
        }
    }

    /// Number of attributes this key signs.
    pub fn attributes(&self) -> usize {
        self.beta_g2.len()
    }

    /// Wire encoding: α ‖ count ‖ β'_1..β'_q ‖ β_1..β_q.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer::default();
        self.write(&mut w);
        w.bytes
    }

    /// Parses [`VerificationKey::to_bytes`]; run [`VerificationKey::check`] before use.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CoconutError> {
        let mut r = Reader::new(bytes);
        let alpha = r.g2()?;
        let n = r.count(MAX_ATTRIBUTES)?;
        let beta_g1 = (0..n).map(|_| r.g1()).collect::<Result<_, _>>()?;
        let beta_g2 = (0..n).map(|_| r.g2()).collect::<Result<_, _>>()?;
        r.finish()?;
        Ok(Self {
            alpha,
            beta_g1,
            beta_g2,
        })
    }

    pub(crate) fn write(&self, w: &mut Writer) {
        w.g2(&self.alpha);
        w.count(self.beta_g1.len());
        self.beta_g1.iter().for_each(|b| w.g1(b));
        self.beta_g2.iter().for_each(|b| w.g2(b));
    }

    /// Digest of the whole key, bound into every Fiat–Shamir challenge.
    pub fn digest(&self) -> [u8; 64] {
        let mut h = Sha512::new();
        h.update(b"lethe/coconut/v1/verification-key");
        h.update(self.to_bytes());
        h.finalize().into()
    }
}

/// Aggregates t verification-key shares into the master key (Lagrange interpolation at 0).
pub fn aggregate_verification_keys(
    shares: &[(u64, &VerificationKey)],
) -> Result<VerificationKey, CoconutError> {
    let first = shares.first().ok_or(CoconutError::NotEnoughShares)?.1;
    let q = first.attributes();
    if shares
        .iter()
        .any(|(_, k)| k.attributes() != q || k.beta_g1.len() != q)
    {
        return Err(CoconutError::VerificationKey);
    }
    let indices: Vec<u64> = shares.iter().map(|(i, _)| *i).collect();
    let l = lagrange_at_zero(&indices)?;
    let g2_sum = |pick: &dyn Fn(&VerificationKey) -> G2Affine| {
        let pts: Vec<G2Projective> = shares.iter().map(|(_, k)| pick(k).into()).collect();
        G2Projective::multi_exp(&pts, &l).to_affine()
    };
    let alpha = g2_sum(&|k| k.alpha);
    let beta_g2 = (0..q).map(|j| g2_sum(&|k| k.beta_g2[j])).collect();
    let beta_g1 = (0..q)
        .map(|j| {
            let pts: Vec<G1Projective> = shares.iter().map(|(_, k)| k.beta_g1[j].into()).collect();
            G1Projective::multi_exp(&pts, &l).to_affine()
        })
        .collect();
    Ok(VerificationKey {
        alpha,
        beta_g1,
        beta_g2,
    })
}

/// Lagrange coefficients at 0 for distinct, non-zero evaluation points.
pub(crate) fn lagrange_at_zero(indices: &[u64]) -> Result<Vec<Scalar>, CoconutError> {
    for (k, i) in indices.iter().enumerate() {
        if *i == 0 || indices[..k].contains(i) {
            return Err(CoconutError::Indices);
        }
    }
    let xs: Vec<Scalar> = indices.iter().map(|i| Scalar::from(*i)).collect();
    let mut out = Vec::with_capacity(xs.len());
    for (k, xk) in xs.iter().enumerate() {
        let mut num = Scalar::ONE;
        let mut den = Scalar::ONE;
        for (m, xm) in xs.iter().enumerate() {
            if m != k {
                num *= xm;
                den *= xm - xk;
            }
        }
        // den ≠ 0 because indices are distinct.
        let inv: Option<Scalar> = den.invert().into();
        out.push(num * inv.ok_or(CoconutError::Indices)?);
    }
    Ok(out)
}

fn evaluate(coefficients: &[Scalar], at: &Scalar) -> Scalar {
    coefficients
        .iter()
        .rev()
        .fold(Scalar::ZERO, |acc, c| acc * at + c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lagrange_recovers_constant_term() {
        let mut rng = rand_core_06::OsRng;
        let poly: Vec<Scalar> = (0..3).map(|_| Scalar::random(&mut rng)).collect();
        let idx = [2u64, 5, 9];
        let l = lagrange_at_zero(&idx).unwrap();
        let v: Scalar = idx
            .iter()
            .zip(&l)
            .map(|(i, c)| evaluate(&poly, &Scalar::from(*i)) * c)
            .sum();
        assert_eq!(v, poly[0]);
        assert!(lagrange_at_zero(&[1, 1]).is_err());
        assert!(lagrange_at_zero(&[0, 1]).is_err());
    }
}

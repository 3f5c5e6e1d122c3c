//! Blind issuance (Coconut with Pedersen commitments, as in Nym's later variant).
//!
//! The first p attributes are private (committed), the remaining q − p public.
//! Client: cm = o·g1 + Σ_private m_j·h_j, h = H(cm, public), com_j = o_j·g1 + m_j·h, plus a NIZK.
//! Signer i: c̃ = (x_i + Σ_public y_ij·m_j)·h + Σ_private y_ij·com_j.
//! Client: s_i = c̃ − Σ o_j·β'_ij = (x_i + Σ y_ij·m_j)·h, then Lagrange-combines t shares.

use blstrs::{Bls12, G1Affine, G1Projective, G2Prepared, G2Projective, Scalar};
use ff::Field;
use group::{prime::PrimeCurveAffine, Curve, Group};
use pairing::{MillerLoopResult, MultiMillerLoop};
use rand_core_06::{CryptoRng, RngCore};

use super::encoding::{Reader, Writer};
use super::error::CoconutError;
use super::keygen::{lagrange_at_zero, wipe, SecretKey, VerificationKey};
use super::params::{hash_to_g1, Parameters, MAX_ATTRIBUTES};
use super::proofs::{RequestProof, RequestStatement, RequestWitness};

/// What a client sends every signer to get a credential on hidden attributes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlindSignRequest {
    cm: G1Affine,
    commitments: Vec<G1Affine>,
    proof: RequestProof,
}

/// The client's secrets for one request; needed to unblind and aggregate. Zeroed on drop.
pub struct RequestSecrets {
    h: G1Affine,
    openings: Vec<Scalar>,
    private: Vec<Scalar>,
    public: Vec<Scalar>,
}

/// A signer's blinded partial signature (h, c̃).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlindedSignature {
    h: G1Affine,
    c: G1Affine,
}

/// A Pointcheval–Sanders signature σ = (h, s) with s = (x + Σ y_j·m_j)·h.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Signature {
    pub(crate) h: G1Affine,
    pub(crate) s: G1Affine,
}

/// An unblinded signature share from the signer with Shamir index `index`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PartialSignature {
    /// The signer's Shamir index.
    pub index: u64,
    /// The share, a PS signature under that signer's verification-key share.
    pub signature: Signature,
}

/// Client: commits to the private attributes and proves the commitments well formed.
///
/// `vk` is the issuers' master verification key (bound into the proof).
pub fn prepare_blind_sign(
    params: &Parameters,
    vk: &VerificationKey,
    private: &[Scalar],
    public: &[Scalar],
    rng: &mut (impl RngCore + CryptoRng),
) -> Result<(RequestSecrets, BlindSignRequest), CoconutError> {
    if private.len() + public.len() != params.attributes() {
        return Err(CoconutError::AttributeCount);
    }
    let mut o = Scalar::random(&mut *rng);
    let mut cm = G1Projective::from(params.g1) * o;
    for (m, h) in private.iter().zip(&params.hs) {
        cm += G1Projective::from(h) * m;
    }
    let cm = cm.to_affine();
    let h = commitment_hash(&cm, public);
    let openings: Vec<Scalar> = private.iter().map(|_| Scalar::random(&mut *rng)).collect();
    let hp = G1Projective::from(h);
    let commitments: Vec<G1Affine> = openings
        .iter()
        .zip(private)
        .map(|(oj, m)| (G1Projective::from(params.g1) * oj + hp * m).to_affine())
        .collect();
    let st = RequestStatement {
        vk,
        cm: &cm,
        h: &h,
        commitments: &commitments,
        public,
    };
    let w = RequestWitness {
        o: &o,
        openings: &openings,
        private,
    };
    let proof = RequestProof::prove(params, &st, &w, rng);
    o = Scalar::ZERO;
    std::hint::black_box(&mut o);
    let secrets = RequestSecrets {
        h,
        openings,
        private: private.to_vec(),
        public: public.to_vec(),
    };
    Ok((
        secrets,
        BlindSignRequest {
            cm,
            commitments,
            proof,
        },
    ))
}

/// Signer: verifies the request's proof and signs blindly with its key share.
///
/// The signer must decide `public` itself (e.g. from a paid deposit), never take it from the
/// client unchecked; the proof and h bind it.
pub fn blind_sign(
    params: &Parameters,
    vk: &VerificationKey,
    sk: &SecretKey,
    request: &BlindSignRequest,
    public: &[Scalar],
) -> Result<BlindedSignature, CoconutError> {
    let p = request.commitments.len();
    let q = params.attributes();
    if p + public.len() != q || sk.ys.len() != q {
        return Err(CoconutError::AttributeCount);
    }
    let h = commitment_hash(&request.cm, public);
    let st = RequestStatement {
        vk,
        cm: &request.cm,
        h: &h,
        commitments: &request.commitments,
        public,
    };
    request.proof.verify(params, &st)?;
    // Key material is secret: constant-time multiplications only.
    let mut e = sk.x;
    for (y, m) in sk.ys[p..].iter().zip(public) {
        e += y * m;
    }
    let mut c = G1Projective::from(h) * e;
    e = Scalar::ZERO;
    std::hint::black_box(&mut e);
    for (y, com) in sk.ys.iter().zip(&request.commitments) {
        c += G1Projective::from(com) * y;
    }
    Ok(BlindedSignature {
        h,
        c: c.to_affine(),
    })
}

impl BlindedSignature {
    /// Client: removes the commitment openings using the signer's β'_j (G1 images).
    ///
    /// Does not check the result; see [`PartialSignature::verify`] and
    /// [`aggregate_signatures`], which checks the aggregate.
    pub fn unblind(
        &self,
        vk_share: &VerificationKey,
        secrets: &RequestSecrets,
    ) -> Result<Signature, CoconutError> {
        if self.h != secrets.h || vk_share.beta_g1.len() < secrets.openings.len() {
            return Err(CoconutError::Signature);
        }
        let mut s = G1Projective::from(self.c);
        for (o, b) in secrets.openings.iter().zip(&vk_share.beta_g1) {
            s -= G1Projective::from(b) * o;
        }
        let s = s.to_affine();
        if bool::from(s.is_identity()) {
            return Err(CoconutError::Signature);
        }
        Ok(Signature { h: self.h, s })
    }

    /// Wire encoding: h ‖ c̃ (96 bytes).
    pub fn to_bytes(&self) -> [u8; 96] {
        pair_bytes(&self.h, &self.c)
    }

    /// Parses [`BlindedSignature::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CoconutError> {
        let (h, c) = read_pair(bytes)?;
        Ok(Self { h, c })
    }
}

impl Signature {
    /// Checks e(h, α + Σ m_j·β_j) = e(s, g2) for all attributes in order (private first).
    pub fn verify(
        &self,
        params: &Parameters,
        vk: &VerificationKey,
        attributes: &[Scalar],
    ) -> Result<(), CoconutError> {
        let q = params.attributes();
        if attributes.len() != q || vk.beta_g2.len() != q {
            return Err(CoconutError::AttributeCount);
        }
        if bool::from(self.h.is_identity() | self.s.is_identity()) {
            return Err(CoconutError::Signature);
        }
        // Attributes may be secret (the client's serial): constant-time multiplications.
        let mut k = G2Projective::from(vk.alpha);
        for (b, m) in vk.beta_g2.iter().zip(attributes) {
            k += G2Projective::from(b) * m;
        }
        let k = G2Prepared::from(k.to_affine());
        let neg_s = -self.s;
        let ok = Bls12::multi_miller_loop(&[(&self.h, &k), (&neg_s, &params.g2_prepared)])
            .final_exponentiation()
            .is_identity();
        if bool::from(ok) {
            Ok(())
        } else {
            Err(CoconutError::Signature)
        }
    }

    /// Wire encoding: h ‖ s (96 bytes).
    pub fn to_bytes(&self) -> [u8; 96] {
        pair_bytes(&self.h, &self.s)
    }

    /// Parses [`Signature::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CoconutError> {
        let (h, s) = read_pair(bytes)?;
        Ok(Self { h, s })
    }
}

impl PartialSignature {
    /// Checks the share against the signer's verification-key share.
    pub fn verify(
        &self,
        params: &Parameters,
        vk_share: &VerificationKey,
        secrets: &RequestSecrets,
    ) -> Result<(), CoconutError> {
        self.signature
            .verify(params, vk_share, &secrets.attributes())
    }

    /// Wire encoding: index (8 bytes, big endian) ‖ h ‖ s.
    pub fn to_bytes(&self) -> [u8; 104] {
        let mut out = [0u8; 104];
        out[..8].copy_from_slice(&self.index.to_be_bytes());
        out[8..].copy_from_slice(&self.signature.to_bytes());
        out
    }

    /// Parses [`PartialSignature::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CoconutError> {
        let mut r = Reader::new(bytes);
        let index = r.u64()?;
        let h = r.g1()?;
        let s = r.g1()?;
        r.finish()?;
        if index == 0 {
            return Err(CoconutError::Decoding);
        }
        Ok(Self {
            index,
            signature: Signature { h, s },
        })
    }
}

/// Client: Lagrange-combines t unblinded shares and checks the result under the master key.
///
/// On [`CoconutError::Signature`], check the shares one by one with
/// [`PartialSignature::verify`] to find the faulty signer.
pub fn aggregate_signatures(
    params: &Parameters,
    vk: &VerificationKey,
    shares: &[PartialSignature],
    secrets: &RequestSecrets,
) -> Result<Signature, CoconutError> {
    let first = shares.first().ok_or(CoconutError::NotEnoughShares)?;
    if shares.iter().any(|p| p.signature.h != first.signature.h) || first.signature.h != secrets.h {
        return Err(CoconutError::Signature);
    }
    let indices: Vec<u64> = shares.iter().map(|p| p.index).collect();
    let l = lagrange_at_zero(&indices)?;
    let pts: Vec<G1Projective> = shares.iter().map(|p| p.signature.s.into()).collect();
    // Public scalars (Lagrange coefficients): a variable-time MSM leaks nothing secret.
    let s = G1Projective::multi_exp(&pts, &l);
    if bool::from(s.is_identity()) {
        return Err(CoconutError::Signature);
    }
    let sig = Signature {
        h: secrets.h,
        s: s.to_affine(),
    };
    sig.verify(params, vk, &secrets.attributes())?;
    Ok(sig)
}

impl RequestSecrets {
    /// All attributes, private first, in signing order.
    pub fn attributes(&self) -> Vec<Scalar> {
        self.private.iter().chain(&self.public).copied().collect()
    }

    /// The private attributes.
    pub fn private(&self) -> &[Scalar] {
        &self.private
    }
}

impl Drop for RequestSecrets {
    fn drop(&mut self) {
        wipe(&mut self.openings);
        wipe(&mut self.private);
    }
}

impl BlindSignRequest {
    /// Number of private (committed) attributes.
    pub fn private_count(&self) -> usize {
        self.commitments.len()
    }

    /// Wire encoding: cm ‖ p ‖ com_1..com_p ‖ c ‖ r_o ‖ r_o1..r_op ‖ r_m1..r_mp.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.g1(&self.cm);
        w.count(self.commitments.len());
        self.commitments.iter().for_each(|c| w.g1(c));
        self.proof.write(&mut w);
        w.bytes
    }

    /// Parses [`BlindSignRequest::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CoconutError> {
        let mut r = Reader::new(bytes);
        let cm = r.g1()?;
        let p = r.count(MAX_ATTRIBUTES)?;
        let commitments = (0..p).map(|_| r.g1()).collect::<Result<_, _>>()?;
        let proof = RequestProof::read(&mut r, p)?;
        r.finish()?;
        Ok(Self {
            cm,
            commitments,
            proof,
        })
    }
}

/// h = H(cm ‖ public attributes): fresh per request, with unknown discrete logarithm.
fn commitment_hash(cm: &G1Affine, public: &[Scalar]) -> G1Affine {
    let mut msg = cm.to_compressed().to_vec();
    msg.extend_from_slice(&(public.len() as u64).to_be_bytes());
    for m in public {
        msg.extend_from_slice(&m.to_bytes_le());
    }
    hash_to_g1(b"commitment-hash", &msg).to_affine()
}

fn pair_bytes(a: &G1Affine, b: &G1Affine) -> [u8; 96] {
    let mut out = [0u8; 96];
    out[..48].copy_from_slice(&a.to_compressed());
    out[48..].copy_from_slice(&b.to_compressed());
    out
}

fn read_pair(bytes: &[u8]) -> Result<(G1Affine, G1Affine), CoconutError> {
    let mut r = Reader::new(bytes);
    let a = r.g1()?;
    let b = r.g1()?;
    r.finish()?;
    Ok((a, b))
}

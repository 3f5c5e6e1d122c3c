//! Showing a credential: re-randomise σ, blind the attributes into κ, reveal the spend tag
//! ζ = m_0·δ, and prove it all consistent in zero knowledge, bound to a verifier context.

use blstrs::{G1Affine, G1Projective, G2Affine, G2Projective, Scalar};
use ff::Field;
use group::{Curve, Group};
use rand_core_06::{CryptoRng, RngCore};

use super::encoding::{Reader, Writer};
use super::error::CoconutError;
use super::issuance::Signature;
use super::keygen::{wipe, VerificationKey};
use super::params::{Parameters, MAX_ATTRIBUTES};
use super::proofs::{show_challenge, ShowProof, ShowStatement};

/// A credential presentation ("theta"): σ' = (h', s'), κ, spend tag ζ and the proof.
///
/// Wire size for p private attributes: 48 + 48 + 96 + 48 + 96 + 48 + 32 + 1 + 32·p bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Theta {
    pub(crate) h: G1Affine,
    pub(crate) s: G1Affine,
    pub(crate) kappa: G2Affine,
    pub(crate) zeta: G1Affine,
    pub(crate) proof: ShowProof,
}

/// Client: shows a credential on `private` (first p attributes; `private[0]` is the serial that
/// the spend tag is derived from) and `public` (the rest), bound to the verifier's `context`.
pub fn prove_credential(
    params: &Parameters,
    vk: &VerificationKey,
    signature: &Signature,
    private: &[Scalar],
    public: &[Scalar],
    context: &[u8],
    rng: &mut (impl RngCore + CryptoRng),
) -> Result<Theta, CoconutError> {
    // Fresh r' and r make every show unlinkable to issuance and to other shows (the tag aside).
    let r_prime = Scalar::random(&mut *rng);
    let mut r = Scalar::random(&mut *rng);
    let h = (G1Projective::from(signature.h) * r_prime).to_affine();
    let s = (G1Projective::from(signature.s) * r_prime + G1Projective::from(h) * r).to_affine();
    let theta = prove_randomised(params, vk, &h, &s, &r, private, public, context, rng);
    r = Scalar::ZERO;
    std::hint::black_box(&mut r);
    theta
}

/// Builds κ, ζ and the proof for an already randomised (h', s') with blinding `r`.
///
/// Exposed (hidden) so forgery regression tests can build presentations from chosen parts.
#[doc(hidden)]
#[allow(clippy::too_many_arguments)]
pub fn prove_randomised(
    params: &Parameters,
    vk: &VerificationKey,
    h: &G1Affine,
    s: &G1Affine,
    r: &Scalar,
    private: &[Scalar],
    public: &[Scalar],
    context: &[u8],
    rng: &mut (impl RngCore + CryptoRng),
) -> Result<Theta, CoconutError> {
    let q = params.attributes();
    let p = private.len();
    if p == 0 || p + public.len() != q || vk.beta_g2.len() != q {
        return Err(CoconutError::AttributeCount);
    }
    let g2 = G2Projective::from(params.g2);
    // Constant-time multiplications for everything that involves private attributes or r.
    let mut kappa = G2Projective::from(vk.alpha) + g2 * r;
    for (b, m) in vk.beta_g2.iter().zip(private.iter().chain(public)) {
        kappa += G2Projective::from(b) * m;
    }
    let kappa = kappa.to_affine();
    let zeta = (G1Projective::from(params.delta) * private[0]).to_affine();

    let k_r = Scalar::random(&mut *rng);
    let mut k: Vec<Scalar> = (0..p).map(|_| Scalar::random(&mut *rng)).collect();
    let mut t_kappa = g2 * k_r;
    for (b, kj) in vk.beta_g2.iter().zip(&k) {
        t_kappa += G2Projective::from(b) * kj;
    }
    let t_kappa = t_kappa.to_affine();
    let t_zeta = (G1Projective::from(params.delta) * k[0]).to_affine();

    let vk_digest = vk.digest();
    let st = ShowStatement {
        vk_digest: &vk_digest,
        q,
        public,
        context,
        h,
        s,
        kappa: &kappa,
        zeta: &zeta,
        private_count: p,
    };
    let c = show_challenge(&st, &t_kappa, &t_zeta);
    let proof = ShowProof {
        t_kappa,
        t_zeta,
        z_r: k_r - c * r,
        z_private: k.iter().zip(private).map(|(kj, m)| kj - c * m).collect(),
    };
    wipe(&mut k);
    Ok(Theta {
        h: *h,
        s: *s,
        kappa,
        zeta,
        proof,
    })
}

/// Recomputes the Fiat–Shamir challenge of a presentation (tests build forgeries with it).
#[doc(hidden)]
pub fn challenge_of(
    params: &Parameters,
    vk: &VerificationKey,
    theta: &Theta,
    public: &[Scalar],
    context: &[u8],
) -> Scalar {
    theta.challenge(params.attributes(), &vk.digest(), public, context)
}

impl Theta {
    /// The revealed spend tag point ζ = serial·δ (compressed).
    pub fn zeta_bytes(&self) -> [u8; 48] {
        self.zeta.to_compressed()
    }

    /// Number of hidden attributes this presentation claims.
    pub fn private_count(&self) -> usize {
        self.proof.z_private.len()
    }

    /// Wire encoding: h' ‖ s' ‖ κ ‖ ζ ‖ T_κ ‖ T_ζ ‖ z_r ‖ p ‖ z_1..z_p.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.g1(&self.h);
        w.g1(&self.s);
        w.g2(&self.kappa);
        w.g1(&self.zeta);
        w.g2(&self.proof.t_kappa);
        w.g1(&self.proof.t_zeta);
        w.scalar(&self.proof.z_r);
        w.count(self.proof.z_private.len());
        self.proof.z_private.iter().for_each(|z| w.scalar(z));
        w.bytes
    }

    /// Parses [`Theta::to_bytes`] (points checked, identities and non-canonical bytes refused).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CoconutError> {
        let mut r = Reader::new(bytes);
        let h = r.g1()?;
        let s = r.g1()?;
        let kappa = r.g2()?;
        let zeta = r.g1()?;
        let t_kappa = r.g2()?;
        let t_zeta = r.g1()?;
        let z_r = r.scalar()?;
        let p = r.count(MAX_ATTRIBUTES)?;
        if p == 0 {
            return Err(CoconutError::Decoding);
        }
        let z_private = r.scalars(p)?;
        r.finish()?;
        Ok(Self {
            h,
            s,
            kappa,
            zeta,
            proof: ShowProof {
                t_kappa,
                t_zeta,
                z_r,
                z_private,
            },
        })
    }

    pub(crate) fn challenge(
        &self,
        q: usize,
        vk_digest: &[u8; 64],
        public: &[Scalar],
        context: &[u8],
    ) -> Scalar {
        let st = ShowStatement {
            vk_digest,
            q,
            public,
            context,
            h: &self.h,
            s: &self.s,
            kappa: &self.kappa,
            zeta: &self.zeta,
            private_count: self.proof.z_private.len(),
        };
        show_challenge(&st, &self.proof.t_kappa, &self.proof.t_zeta)
    }

    /// True if any carried point is the identity (never the case for an honest show).
    pub(crate) fn has_identity(&self) -> bool {
        bool::from(
            G1Projective::from(self.h).is_identity()
                | G1Projective::from(self.s).is_identity()
                | G2Projective::from(self.kappa).is_identity()
                | G1Projective::from(self.zeta).is_identity()
                | G2Projective::from(self.proof.t_kappa).is_identity()
                | G1Projective::from(self.proof.t_zeta).is_identity(),
        )
    }
}

//! Schnorr-style NIZKs (Fiat–Shamir). Each challenge binds the protocol label, the parameters'
//! size, the full verification key, every statement element and every prover commitment, so
//! no value a verifier relies on can be chosen after the challenge (nym-compact-ecash 2.0
//! forgery classes 1 and 4).

use blstrs::{G1Affine, G1Projective, G2Affine, Scalar};
use ff::Field;
use group::Curve;
use rand_core_06::{CryptoRng, RngCore};

use super::encoding::{Reader, Writer};
use super::error::CoconutError;
use super::keygen::{wipe, VerificationKey};
use super::params::{Parameters, Transcript, MAX_ATTRIBUTES};

/// Proof that a blind-sign request is well formed: knowledge of (o, m_j, o_j) with
/// cm = o·g1 + Σ m_j·h_j and com_j = o_j·g1 + m_j·h for every private attribute j.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestProof {
    pub(crate) challenge: Scalar,
    pub(crate) r_o: Scalar,
    pub(crate) r_openings: Vec<Scalar>,
    pub(crate) r_attributes: Vec<Scalar>,
}

/// The public statement of a [`RequestProof`].
pub(crate) struct RequestStatement<'a> {
    pub(crate) vk: &'a VerificationKey,
    pub(crate) cm: &'a G1Affine,
    pub(crate) h: &'a G1Affine,
    pub(crate) commitments: &'a [G1Affine],
    pub(crate) public: &'a [Scalar],
}

/// The witness of a [`RequestProof`].
pub(crate) struct RequestWitness<'a> {
    pub(crate) o: &'a Scalar,
    pub(crate) openings: &'a [Scalar],
    pub(crate) private: &'a [Scalar],
}

impl RequestProof {
    pub(crate) fn prove(
        params: &Parameters,
        st: &RequestStatement<'_>,
        w: &RequestWitness<'_>,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Self {
        let p = w.private.len();
        let k_o = Scalar::random(&mut *rng);
        let mut k_open: Vec<Scalar> = (0..p).map(|_| Scalar::random(&mut *rng)).collect();
        let mut k_attr: Vec<Scalar> = (0..p).map(|_| Scalar::random(&mut *rng)).collect();
        // Secret nonces: constant-time single multiplications, not a (variable-time) MSM.
        let mut w_cm = G1Projective::from(params.g1) * k_o;
        for (k, h) in k_attr.iter().zip(&params.hs) {
            w_cm += G1Projective::from(h) * k;
        }
        let hp = G1Projective::from(st.h);
        let w_coms: Vec<G1Affine> = k_open
            .iter()
            .zip(&k_attr)
            .map(|(ko, km)| (G1Projective::from(params.g1) * ko + hp * km).to_affine())
            .collect();
        let c = request_challenge(params, st, &w_cm.to_affine(), &w_coms);
        let proof = Self {
            challenge: c,
            r_o: k_o - c * w.o,
            r_openings: k_open
                .iter()
                .zip(w.openings)
                .map(|(k, o)| k - c * o)
                .collect(),
            r_attributes: k_attr
                .iter()
                .zip(w.private)
                .map(|(k, m)| k - c * m)
                .collect(),
        };
        wipe(&mut k_open);
        wipe(&mut k_attr);
        proof
    }

    /// Recomputes the prover's commitments from the responses and compares challenges.
    /// Everything here is public, so variable-time multi-exponentiation is fine.
    pub(crate) fn verify(
        &self,
        params: &Parameters,
        st: &RequestStatement<'_>,
    ) -> Result<(), CoconutError> {
        let p = st.commitments.len();
        if self.r_openings.len() != p || self.r_attributes.len() != p || p > params.hs.len() {
            return Err(CoconutError::Proof);
        }
        let c = self.challenge;
        let mut pts = vec![G1Projective::from(params.g1), G1Projective::from(st.cm)];
        let mut sc = vec![self.r_o, c];
        for (h, r) in params.hs.iter().zip(&self.r_attributes) {
            pts.push(h.into());
            sc.push(*r);
        }
        let w_cm = G1Projective::multi_exp(&pts, &sc).to_affine();
        let g1 = G1Projective::from(params.g1);
        let hp = G1Projective::from(st.h);
        let w_coms: Vec<G1Affine> = st
            .commitments
            .iter()
            .zip(self.r_openings.iter().zip(&self.r_attributes))
            .map(|(com, (ro, rm))| {
                G1Projective::multi_exp(&[g1, hp, com.into()], &[*ro, *rm, c]).to_affine()
            })
            .collect();
        if request_challenge(params, st, &w_cm, &w_coms) == c {
            Ok(())
        } else {
            Err(CoconutError::Proof)
        }
    }

    pub(crate) fn write(&self, w: &mut Writer) {
        w.scalar(&self.challenge);
        w.scalar(&self.r_o);
        self.r_openings.iter().for_each(|s| w.scalar(s));
        self.r_attributes.iter().for_each(|s| w.scalar(s));
    }

    pub(crate) fn read(r: &mut Reader<'_>, p: usize) -> Result<Self, CoconutError> {
        if p > MAX_ATTRIBUTES {
            return Err(CoconutError::Decoding);
        }
        Ok(Self {
            challenge: r.scalar()?,
            r_o: r.scalar()?,
            r_openings: r.scalars(p)?,
            r_attributes: r.scalars(p)?,
        })
    }
}

fn request_challenge(
    params: &Parameters,
    st: &RequestStatement<'_>,
    w_cm: &G1Affine,
    w_coms: &[G1Affine],
) -> Scalar {
    let mut t = Transcript::new(b"blind-sign-request");
    t.bytes(b"q", &(params.attributes() as u64).to_be_bytes());
    t.bytes(b"vk-digest", &st.vk.digest());
    t.scalars(b"public", st.public);
    t.g1(b"cm", st.cm);
    t.g1(b"h", st.h);
    t.bytes(
        b"private-count",
        &(st.commitments.len() as u64).to_be_bytes(),
    );
    st.commitments.iter().for_each(|c| t.g1(b"com", c));
    t.g1(b"w-cm", w_cm);
    w_coms.iter().for_each(|c| t.g1(b"w-com", c));
    t.challenge()
}

/// The proof part of a credential show, in commitment form (T_κ, T_ζ, responses) rather than
/// (challenge, responses): the verifier recomputes the challenge from T and checks linear
/// equations, which lets a batch fold all items into one multi-exponentiation per group.
///
/// Relation: κ − α − Σ_public m_j·β_j = r·g2 + Σ_private m_j·β_j and ζ = m_0·δ, with the same
/// m_0 in both (that is what ties the spend tag to the signed serial).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShowProof {
    pub(crate) t_kappa: G2Affine,
    pub(crate) t_zeta: G1Affine,
    pub(crate) z_r: Scalar,
    pub(crate) z_private: Vec<Scalar>,
}

/// Public values of a show, everything the challenge binds besides the proof commitments.
pub(crate) struct ShowStatement<'a> {
    pub(crate) vk_digest: &'a [u8; 64],
    pub(crate) q: usize,
    pub(crate) public: &'a [Scalar],
    pub(crate) context: &'a [u8],
    pub(crate) h: &'a G1Affine,
    pub(crate) s: &'a G1Affine,
    pub(crate) kappa: &'a G2Affine,
    pub(crate) zeta: &'a G1Affine,
    pub(crate) private_count: usize,
}

pub(crate) fn show_challenge(
    st: &ShowStatement<'_>,
    t_kappa: &G2Affine,
    t_zeta: &G1Affine,
) -> Scalar {
    let mut t = Transcript::new(b"show");
    t.bytes(b"q", &(st.q as u64).to_be_bytes());
    t.bytes(b"vk-digest", st.vk_digest);
    t.bytes(b"private-count", &(st.private_count as u64).to_be_bytes());
    t.scalars(b"public", st.public);
    t.bytes(b"context", st.context);
    t.g1(b"h", st.h);
    t.g1(b"s", st.s);
    t.g2(b"kappa", st.kappa);
    t.g1(b"zeta", st.zeta);
    t.g2(b"t-kappa", t_kappa);
    t.g1(b"t-zeta", t_zeta);
    t.challenge()
}

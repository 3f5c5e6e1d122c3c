//! Coconut: threshold, blind, re-randomisable credentials over BLS12-381, and Lethe's
//! single-spend bandwidth credentials on top.
//!
//! Scheme: Pointcheval–Sanders signatures made threshold and blind (Sonnino et al., NDSS 2019),
//! with Pedersen-commitment issuance and ν-free showing as in Nym's later variant.
//!
//! Choices, and why:
//! - Library: `blstrs` (blst). It is faster than zkcrypto `bls12_381` (`bench/README.md`) and
//!   has Pippenger multi-exponentiation in G1 and G2, which the batch verifier is built around;
//!   blst also gives a real multi-Miller loop. It builds from crates.io with a C compiler only.
//!   blst's MSM thread pool is off (`no-threads`): it costs more than it saves at these sizes.
//! - Hash to curve: RFC 9380 SSWU (`BLS12381G1_XMD:SHA-256_SSWU_RO_`) with a Lethe DST for the
//!   generators h_j, the tag base δ and the per-request h = H(cm, public attributes).
//! - Show proof in commitment form (T_κ, T_ζ, responses), so a batch folds every item's
//!   Schnorr equations into one MSM per group and every pairing check into one multi-pairing,
//!   each with independent 128-bit random weights; [`find_invalid`] bisects on failure.
//! - Spend tag ζ = serial·δ, proven in the same proof as κ with one shared response, so it is
//!   deterministic per credential and unlinkable to issuance (see [`bandwidth`]).
//! - Secrets are multiplied with constant-time single multiplications only; variable-time MSMs
//!   and short-weight multiplications only ever see public values.
//!
//! Flow: [`Parameters::new`] → [`ttp_keygen`] → [`prepare_blind_sign`] → [`blind_sign`] (each
//! signer) → [`BlindedSignature::unblind`] → [`aggregate_signatures`] → [`prove_credential`]
//! → [`verify_credential`] / [`verify_batch`] (+ [`find_invalid`]). See [`bandwidth`] for the
//! spend-tag layer that gateways use.

pub mod bandwidth;
mod encoding;
mod error;
mod issuance;
mod keygen;
mod params;
mod proofs;
mod show;
mod verify;

pub use error::CoconutError;
pub use issuance::{
    aggregate_signatures, blind_sign, prepare_blind_sign, BlindSignRequest, BlindedSignature,
    PartialSignature, RequestSecrets, Signature,
};
pub use keygen::{aggregate_verification_keys, ttp_keygen, KeyShare, SecretKey, VerificationKey};
pub use params::{Parameters, MAX_ATTRIBUTES};
pub use proofs::{RequestProof, ShowProof};
pub use show::{prove_credential, Theta};
pub use verify::{find_invalid, verify_batch, verify_credential, ShowItem};

/// Building blocks for forgery regression tests and benchmarks. Not a stable API.
#[doc(hidden)]
pub mod hazmat {
    pub use super::show::{challenge_of, prove_randomised};
}

/// The scalar field element type attributes are expressed in.
pub use blstrs::Scalar;

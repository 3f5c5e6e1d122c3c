//! Errors of the Coconut credential scheme.

use core::fmt;

/// Why a Coconut operation was refused.
///
/// Verification failures are deliberately coarse: a verifier must not tell a prover which
/// equation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CoconutError {
    /// Too few or too many attributes for the parameters, or a vector of the wrong length.
    AttributeCount,
    /// A byte string had the wrong length, trailing bytes, a non-canonical scalar or point, a
    /// point off the curve or outside the prime-order subgroup, or an identity point.
    Decoding,
    /// The same spend tag was presented before.
    DoubleSpend,
    /// The credential's expiry date is in the past.
    Expired,
    /// Threshold or signer indices are unusable (t = 0, t > n, duplicate or zero index).
    Indices,
    /// Fewer partial signatures or key shares than needed.
    NotEnoughShares,
    /// A zero-knowledge proof did not verify.
    Proof,
    /// A signature, partial signature or credential did not verify.
    Signature,
    /// The spent-tag store failed; the spend was not accepted.
    Storage,
    /// A verification key is malformed (wrong length, identity points, G1 and G2 parts differ).
    VerificationKey,
}

impl fmt::Display for CoconutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            Self::AttributeCount => "wrong number of attributes",
            Self::Decoding => "malformed encoding",
            Self::DoubleSpend => "credential already spent",
            Self::Expired => "credential expired",
            Self::Indices => "bad threshold or signer indices",
            Self::NotEnoughShares => "not enough shares",
            Self::Proof => "zero-knowledge proof rejected",
            Self::Signature => "signature rejected",
            Self::Storage => "spent-tag store failed",
            Self::VerificationKey => "malformed verification key",
        };
        f.write_str(text)
    }
}

impl std::error::Error for CoconutError {}

//! An authority's vote for one epoch: the nodes it sees alive with their descriptors, its
//! admission policy, the numbers it proposes (validity, layer period, nodes per IP), its
//! commitment for the shared random value and its reveal of the previous commitment. Signed by the authority's key under
//! [`DOMAIN_VOTE`].

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::keyfile;
use crate::limits;
use crate::topology::{Descriptor, Signed, TopologyError};

/// Domain of a vote signature (signed by an authority's key).
pub const DOMAIN_VOTE: &[u8] = b"lethe-vote-v1\0";
/// Domain of a commitment: SHA-256(DOMAIN_COMMIT || authority key || epoch || reveal).
pub const DOMAIN_COMMIT: &[u8] = b"lethe-srv-commit-v1\0";
/// Domain of the reveal an authority derives from its secret key for an epoch.
pub const DOMAIN_REVEAL: &[u8] = b"lethe-srv-reveal-v1\0";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vote {
    /// The epoch voted for (Unix time / epoch length: every authority's clock agrees on it).
    pub epoch: u64,
    /// The voting authority's ed25519 key, hex (the vote's signer).
    pub authority: String,
    /// Proposed start and end of the document's validity (the consensus takes the medians).
    pub issued_at_s: u64,
    pub valid_until_s: u64,
    /// The nodes this authority admitted and heard from within the heartbeat timeout.
    pub nodes: Vec<Descriptor>,
    /// The admission policy this authority applies (`--allowed-nodes`): `None`, open to any
    /// node; else its whole allow-list, identities as lowercase hex in ascending order, so
    /// that every authority can check nodes against the list the votes agree on.
    pub allowed: Option<Vec<String>>,
    /// The layer period this authority proposes, in epochs (at least 1; the consensus takes
    /// the median): layers are kept that long between full redraws.
    pub layer_period_epochs: u64,
    /// The most nodes with a mix address on one IP this authority admits (at least 1; the
    /// consensus takes the median and holds the document to it).
    pub nodes_per_ip_max: u64,
    /// Commitment (hex) to the reveal this authority publishes in its next epoch's vote.
    pub commit: String,
    /// Its reveal (hex) for the commitment of the previous epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reveal: Option<String>,
}

/// Why a vote (or a consensus signature) is refused; `reason()` labels the metric.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("malformed: {0}")]
    Malformed(&'static str),
    #[error("too large")]
    TooLarge,
    #[error("signed by a key that is not a pinned authority")]
    UnknownSigner,
    #[error("bad signature")]
    BadSignature,
    #[error("for epoch {epoch}, this authority is at epoch {current}")]
    StaleEpoch { epoch: u64, current: u64 },
    #[error("for epoch {epoch}, ahead of this authority's epoch {current}")]
    FutureEpoch { epoch: u64, current: u64 },
    #[error("equivocation: this authority already holds a different one from the same key for this epoch (evidence kept; neither is used)")]
    Equivocation,
    #[error("too many different documents for this epoch")]
    TooManyDocuments,
}

impl Refusal {
    /// Every `reason()` label, for metrics with a fixed label set.
    pub const REASONS: [&'static str; 8] = [
        "malformed",
        "too_large",
        "unknown_signer",
        "bad_signature",
        "stale_epoch",
        "future_epoch",
        "equivocation",
        "too_many_documents",
    ];

    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::Malformed(_) => "malformed",
            Refusal::TooLarge => "too_large",
            Refusal::UnknownSigner => "unknown_signer",
            Refusal::BadSignature => "bad_signature",
            Refusal::StaleEpoch { .. } => "stale_epoch",
            Refusal::FutureEpoch { .. } => "future_epoch",
            Refusal::Equivocation => "equivocation",
            Refusal::TooManyDocuments => "too_many_documents",
        }
    }
}

/// The reveal of `epoch`: derived from the authority's secret seed, so nothing needs storing
/// and nobody without the seed can predict it.
pub fn reveal_for(seed: &[u8; 32], epoch: u64) -> [u8; 32] {
    let mut hash = Sha256::new();
    hash.update(DOMAIN_REVEAL);
    hash.update(seed);
    hash.update(epoch.to_be_bytes());
    hash.finalize().into()
}

/// The commitment to `reveal`, bound to its authority and epoch.
pub fn commit_of(authority: &[u8; 32], epoch: u64, reveal: &[u8; 32]) -> [u8; 32] {
    let mut hash = Sha256::new();
    hash.update(DOMAIN_COMMIT);
    hash.update(authority);
    hash.update(epoch.to_be_bytes());
    hash.update(reveal);
    hash.finalize().into()
}

/// Opens a signed vote: within the size bound, signed by the authority it names, which
/// `pinned` accepts, with well-formed fields. Returns the signer's key and the vote.
pub fn open_vote(
    signed: &Signed,
    pinned: impl Fn(&[u8; 32]) -> bool,
) -> Result<([u8; 32], Vote), Refusal> {
    if signed.body.len() > limits::AUTHORITY_VOTE_BYTES_MAX {
        return Err(Refusal::TooLarge);
    }
    let signer = keyfile::unhex_32(&signed.signer).ok_or(Refusal::Malformed("signer key"))?;
    if !pinned(&signer) {
        return Err(Refusal::UnknownSigner);
    }
    let (signer, vote): (_, Vote) =
        signed
            .open(DOMAIN_VOTE, Some(&signer))
            .map_err(|e| match e {
                TopologyError::BadSignature | TopologyError::WrongSigner => Refusal::BadSignature,
                TopologyError::TooLarge(_) => Refusal::TooLarge,
                _ => Refusal::Malformed("vote body"),
            })?;
    if keyfile::unhex_32(&vote.authority) != Some(signer) {
        return Err(Refusal::Malformed("vote names another authority"));
    }
    if vote.nodes.len() > limits::DIRECTORY_NODES_MAX {
        return Err(Refusal::TooLarge);
    }
    if let Some(allowed) = &vote.allowed {
        if allowed.len() > limits::DIRECTORY_ALLOWED_NODES_MAX {
            return Err(Refusal::TooLarge);
        }
        // One spelling per list, so equal lists have equal digests.
        let canonical = allowed
            .iter()
            .all(|id| keyfile::unhex_32(id).is_some_and(|key| keyfile::hex(&key) == *id))
            && allowed.windows(2).all(|pair| pair[0] < pair[1]);
        if !canonical {
            return Err(Refusal::Malformed("allow-list"));
        }
    }
    if vote.layer_period_epochs == 0 || vote.nodes_per_ip_max == 0 {
        return Err(Refusal::Malformed("layer period or nodes per IP of 0"));
    }
    if keyfile::unhex_32(&vote.commit).is_none()
        || vote
            .reveal
            .as_deref()
            .is_some_and(|r| keyfile::unhex_32(r).is_none())
    {
        return Err(Refusal::Malformed("commit or reveal"));
    }
    Ok((signer, vote))
}

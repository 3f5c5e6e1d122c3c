//! Single-spend bandwidth credentials: private (serial, binding secret), public (bandwidth in
//! bytes, expiry day).
//!
//! Spending reveals the tag ζ = serial·δ (δ = hash to G1): deterministic per credential, so a
//! gateway refuses a second spend, yet unlinkable to issuance, where the serial is only inside
//! perfectly hiding Pedersen commitments (and to anything else under DDH in G1). The show proof
//! ties ζ to the signed serial and binds the verifier's context (gateway identity and a fresh
//! nonce), so a captured proof cannot be replayed elsewhere.

use std::collections::HashSet;

use blstrs::Scalar;
use ff::Field;
use rand_core_06::{CryptoRng, RngCore};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::encoding::{Reader, Writer};
use super::error::CoconutError;
use super::issuance::{
    aggregate_signatures, blind_sign, prepare_blind_sign, BlindSignRequest, BlindedSignature,
    PartialSignature, RequestSecrets, Signature,
};
use super::keygen::{SecretKey, VerificationKey};
use super::params::Parameters;
use super::show::{prove_credential, Theta};
use super::verify::{find_invalid, verify_batch, ShowItem};

/// Attributes of a bandwidth credential: serial, binding secret, bandwidth, expiry.
pub const BANDWIDTH_ATTRIBUTES: usize = 4;
const PRIVATE: usize = 2;
/// Presentations verified per batch in [`verify_spends`].
pub const BATCH_CHUNK: usize = 64;

/// A spend tag: fixed-size key for the spent-credential store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpendTag(pub [u8; 32]);

/// Store of spent tags (a gateway's database).
pub trait SpentTags {
    /// Storage failure.
    type Error;

    /// Atomically records `tag`; `Ok(false)` if it was already recorded (a double spend).
    /// One check-and-insert (e.g. `INSERT OR IGNORE`) avoids a race between two spends.
    fn mark_spent(&mut self, tag: &SpendTag) -> Result<bool, Self::Error>;
}

/// In-memory [`SpentTags`], for tests and single-process use.
#[derive(Clone, Debug, Default)]
pub struct MemorySpentTags {
    tags: HashSet<SpendTag>,
}

impl SpentTags for MemorySpentTags {
    type Error = core::convert::Infallible;

    fn mark_spent(&mut self, tag: &SpendTag) -> Result<bool, Self::Error> {
        Ok(self.tags.insert(*tag))
    }
}

/// Client state between requesting and holding a credential.
pub struct PendingCredential {
    secrets: RequestSecrets,
    bandwidth: u64,
    expiry: u32,
}

/// An issued bandwidth credential (client storage). Secrets are zeroed on drop.
pub struct BandwidthCredential {
    signature: Signature,
    serial: Scalar,
    binding: Scalar,
    bandwidth: u64,
    expiry: u32,
}

/// What a client sends a gateway to spend a credential.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BandwidthSpend {
    theta: Theta,
    bandwidth: u64,
    expiry: u32,
}

/// Parameters for bandwidth credentials.
pub fn bandwidth_parameters() -> Result<Parameters, CoconutError> {
    Parameters::new(BANDWIDTH_ATTRIBUTES)
}

/// Client: picks a fresh serial and binding secret and builds the blind-sign request.
pub fn request_bandwidth(
    params: &Parameters,
    vk: &VerificationKey,
    bandwidth: u64,
    expiry: u32,
    rng: &mut (impl RngCore + CryptoRng),
) -> Result<(PendingCredential, BlindSignRequest), CoconutError> {
    check_shape(params)?;
    let private = [Scalar::random(&mut *rng), Scalar::random(&mut *rng)];
    let (secrets, request) = prepare_blind_sign(
        params,
        vk,
        &private,
        &public_attributes(bandwidth, expiry),
        rng,
    )?;
    Ok((
        PendingCredential {
            secrets,
            bandwidth,
            expiry,
        },
        request,
    ))
}

/// Signer: issues its share for the bandwidth and expiry it has itself established (paid).
pub fn issue_bandwidth(
    params: &Parameters,
    vk: &VerificationKey,
    sk: &SecretKey,
    request: &BlindSignRequest,
    bandwidth: u64,
    expiry: u32,
) -> Result<BlindedSignature, CoconutError> {
    check_shape(params)?;
    if request.private_count() != PRIVATE {
        return Err(CoconutError::AttributeCount);
    }
    blind_sign(
        params,
        vk,
        sk,
        request,
        &public_attributes(bandwidth, expiry),
    )
}

impl PendingCredential {
    /// Unblinds signer `index`'s share with that signer's verification-key share.
    pub fn unblind(
        &self,
        index: u64,
        vk_share: &VerificationKey,
        blinded: &BlindedSignature,
    ) -> Result<PartialSignature, CoconutError> {
        let signature = blinded.unblind(vk_share, &self.secrets)?;
        Ok(PartialSignature { index, signature })
    }

    /// Checks one unblinded share (to single out a faulty signer).
    pub fn verify_share(
        &self,
        params: &Parameters,
        vk_share: &VerificationKey,
        share: &PartialSignature,
    ) -> Result<(), CoconutError> {
        share.verify(params, vk_share, &self.secrets)
    }

    /// Aggregates t shares into the credential, checked under the master key.
    pub fn aggregate(
        self,
        params: &Parameters,
        vk: &VerificationKey,
        shares: &[PartialSignature],
    ) -> Result<BandwidthCredential, CoconutError> {
        let signature = aggregate_signatures(params, vk, shares, &self.secrets)?;
        let private = self.secrets.private();
        Ok(BandwidthCredential {
            signature,
            serial: private[0],
            binding: private[1],
            bandwidth: self.bandwidth,
            expiry: self.expiry,
        })
    }
}

impl BandwidthCredential {
    /// Bandwidth in bytes this credential buys.
    pub fn bandwidth(&self) -> u64 {
        self.bandwidth
    }

    /// Expiry (days since the Unix epoch, inclusive).
    pub fn expiry(&self) -> u32 {
        self.expiry
    }

    /// Builds a spend for a verifier `context` (its identity and a fresh nonce).
    pub fn spend(
        &self,
        params: &Parameters,
        vk: &VerificationKey,
        context: &[u8],
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<BandwidthSpend, CoconutError> {
        let theta = prove_credential(
            params,
            vk,
            &self.signature,
            &[self.serial, self.binding],
            &public_attributes(self.bandwidth, self.expiry),
            context,
            rng,
        )?;
        Ok(BandwidthSpend {
            theta,
            bandwidth: self.bandwidth,
            expiry: self.expiry,
        })
    }

    /// Client storage encoding: σ ‖ serial ‖ binding ‖ bandwidth ‖ expiry (secret; the buffer
    /// is zeroed on drop).
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        let mut w = Writer::default();
        w.bytes.extend_from_slice(&self.signature.to_bytes());
        w.scalar(&self.serial);
        w.scalar(&self.binding);
        w.u64(self.bandwidth);
        w.u32(self.expiry);
        Zeroizing::new(w.bytes)
    }

    /// Parses [`BandwidthCredential::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CoconutError> {
        let mut r = Reader::new(bytes);
        let h = r.g1()?;
        let s = r.g1()?;
        let serial = r.scalar()?;
        let binding = r.scalar()?;
        let bandwidth = r.u64()?;
        let expiry = r.u32()?;
        r.finish()?;
        Ok(Self {
            signature: Signature { h, s },
            serial,
            binding,
            bandwidth,
            expiry,
        })
    }
}

impl Drop for BandwidthCredential {
    fn drop(&mut self) {
        self.serial = Scalar::ZERO;
        self.binding = Scalar::ZERO;
        std::hint::black_box((&mut self.serial, &mut self.binding));
    }
}

impl BandwidthSpend {
    /// The spend tag a gateway stores: SHA-256 over a label and ζ.
    pub fn tag(&self) -> SpendTag {
        let mut h = Sha256::new();
        h.update(b"lethe/coconut/v1/spend-tag");
        h.update(self.theta.zeta_bytes());
        SpendTag(h.finalize().into())
    }

    /// Claimed bandwidth in bytes (only trustworthy after verification).
    pub fn bandwidth(&self) -> u64 {
        self.bandwidth
    }

    /// Claimed expiry day.
    pub fn expiry(&self) -> u32 {
        self.expiry
    }

    /// The presentation inside.
    pub fn theta(&self) -> &Theta {
        &self.theta
    }

    /// Wire encoding: bandwidth (8) ‖ expiry (4) ‖ theta.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.u64(self.bandwidth);
        w.u32(self.expiry);
        w.bytes.extend_from_slice(&self.theta.to_bytes());
        w.bytes
    }

    /// Parses [`BandwidthSpend::to_bytes`]; refuses anything but two hidden attributes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CoconutError> {
        let mut r = Reader::new(bytes);
        let bandwidth = r.u64()?;
        let expiry = r.u32()?;
        let theta = Theta::from_bytes(bytes.get(12..).ok_or(CoconutError::Decoding)?)?;
        if theta.private_count() != PRIVATE {
            return Err(CoconutError::Decoding);
        }
        Ok(Self {
            theta,
            bandwidth,
            expiry,
        })
    }

    /// Assembles a spend from parts (tests and tools; verification checks everything).
    pub fn from_parts(theta: Theta, bandwidth: u64, expiry: u32) -> Self {
        Self {
            theta,
            bandwidth,
            expiry,
        }
    }

    fn item<'a>(&'a self, public: &'a [Scalar; 2], context: &'a [u8]) -> ShowItem<'a> {
        ShowItem {
            theta: &self.theta,
            public,
            context,
        }
    }
}

/// Gateway: verifies a spend for `context` on day `today` and records its tag.
///
/// Returns the credited bandwidth. The tag is recorded only after the proof verifies, so
/// nobody can burn another user's tag with a bogus spend.
pub fn verify_spend<S: SpentTags>(
    params: &Parameters,
    vk: &VerificationKey,
    spend: &BandwidthSpend,
    context: &[u8],
    today: u32,
    spent: &mut S,
) -> Result<u64, CoconutError> {
    let mut results = verify_spends(params, vk, &[(spend, context)], today, spent);
    results.pop().unwrap_or(Err(CoconutError::Proof))
}

/// Gateway: verifies many spends in one batch (bisection on failure) and records their tags.
///
/// Result i belongs to spend i. A tag seen twice in the same batch is credited once.
pub fn verify_spends<S: SpentTags>(
    params: &Parameters,
    vk: &VerificationKey,
    spends: &[(&BandwidthSpend, &[u8])],
    today: u32,
    spent: &mut S,
) -> Vec<Result<u64, CoconutError>> {
    let mut results: Vec<Result<u64, CoconutError>> = vec![Ok(0); spends.len()];
    if let Err(e) = check_shape(params) {
        return vec![Err(e); spends.len()];
    }
    let publics: Vec<[Scalar; 2]> = spends
        .iter()
        .map(|(s, _)| public_attributes(s.bandwidth, s.expiry))
        .collect();
    let mut live = Vec::new(); // indices still in the running
    for (i, (s, _)) in spends.iter().enumerate() {
        if s.expiry < today {
            results[i] = Err(CoconutError::Expired);
        } else if s.theta.private_count() != PRIVATE {
            results[i] = Err(CoconutError::AttributeCount);
        } else {
            live.push(i);
        }
    }
    // Chunks keep the prepared G2 lines (~20 KB per item) within L2.
    for chunk in live.chunks(BATCH_CHUNK) {
        let items: Vec<ShowItem<'_>> = chunk
            .iter()
            .map(|&i| spends[i].0.item(&publics[i], spends[i].1))
            .collect();
        if verify_batch(params, vk, &items).is_err() {
            for k in find_invalid(params, vk, &items) {
                results[chunk[k]] = Err(CoconutError::Proof);
            }
        }
    }
    for &i in &live {
        if results[i].is_ok() {
            results[i] = match spent.mark_spent(&spends[i].0.tag()) {
                Ok(true) => Ok(spends[i].0.bandwidth),
                Ok(false) => Err(CoconutError::DoubleSpend),
                Err(_) => Err(CoconutError::Storage),
            };
        }
    }
    results
}

/// Public attributes in signing order: bandwidth, then expiry.
pub fn public_attributes(bandwidth: u64, expiry: u32) -> [Scalar; 2] {
    [Scalar::from(bandwidth), Scalar::from(u64::from(expiry))]
}

fn check_shape(params: &Parameters) -> Result<(), CoconutError> {
    if params.attributes() == BANDWIDTH_ATTRIBUTES {
        Ok(())
    } else {
        Err(CoconutError::AttributeCount)
    }
}

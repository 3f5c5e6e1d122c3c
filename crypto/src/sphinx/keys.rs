//! Key schedule: HKDF expansion of a hop's DH output, payload keys per version, and the
//! sender's per-hop secret derivation.

use hkdf::Hkdf;
use sha2::Sha256;
use x25519_dalek::{x25519, PublicKey, StaticSecret, X25519_BASEPOINT_BYTES};
use zeroize::{Zeroize, ZeroizeOnDrop};

use super::constants::{
    BLINDING_FACTOR_SIZE, EXPANDED_SECRET_HKDF_INFO, EXPANDED_SECRET_HKDF_SALT,
    EXPANDED_SECRET_SIZE, MAC_KEY_SIZE, MAX_PATH_LENGTH, PAYLOAD_KEY_HKDF_INFO,
    PAYLOAD_KEY_HKDF_SALT, PAYLOAD_KEY_SEED_SIZE, PAYLOAD_KEY_SIZE, REPLAY_TAG_SIZE,
    STREAM_KEY_SIZE,
};
use super::error::SphinxError;
use super::version::Version;
use crate::simd::hkdf::{hkdf_many_planned, ExpandPlan, HmacKey};

/// A 192-byte Lioness payload key.
pub type PayloadKey = [u8; PAYLOAD_KEY_SIZE];
/// A 16-byte payload key seed (v259/v260).
pub type PayloadKeySeed = [u8; PAYLOAD_KEY_SEED_SIZE];

/// The 288-byte HKDF output of one hop's shared secret. Order is fixed by the wire format:
/// stream key ‖ MAC key ‖ legacy payload key (its first 16 bytes are the v259+ seed) ‖
/// blinding factor ‖ replay tag.
#[derive(Clone, PartialEq, Eq)]
pub struct ExpandedSecret {
    stream_key: [u8; STREAM_KEY_SIZE],
    mac_key: [u8; MAC_KEY_SIZE],
    legacy_payload_key: PayloadKey,
    blinding_factor: [u8; BLINDING_FACTOR_SIZE],
    replay_tag: [u8; REPLAY_TAG_SIZE],
}

// Wiped with wide volatile stores (`simd::wipe`): batches wipe one per packet, twice.
impl Zeroize for ExpandedSecret {
    fn zeroize(&mut self) {
        crate::simd::wipe(&mut self.stream_key);
        crate::simd::wipe(&mut self.mac_key);
        crate::simd::wipe(&mut self.legacy_payload_key);
        crate::simd::wipe(&mut self.blinding_factor);
        crate::simd::wipe(&mut self.replay_tag);
    }
}

impl Drop for ExpandedSecret {
    fn drop(&mut self) {
        self.zeroize();
    }
}

impl ZeroizeOnDrop for ExpandedSecret {}

impl core::fmt::Debug for ExpandedSecret {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("ExpandedSecret(<redacted>)")
    }
}

impl ExpandedSecret {
    /// Splits 288 expanded bytes into their roles.
    pub fn from_bytes(bytes: &[u8; EXPANDED_SECRET_SIZE]) -> ExpandedSecret {
        let mut secret = ExpandedSecret {
            stream_key: [0; STREAM_KEY_SIZE],
            mac_key: [0; MAC_KEY_SIZE],
            legacy_payload_key: [0; PAYLOAD_KEY_SIZE],
            blinding_factor: [0; BLINDING_FACTOR_SIZE],
            replay_tag: [0; REPLAY_TAG_SIZE],
        };
        let (stream_key, rest) = bytes.split_at(STREAM_KEY_SIZE);
        let (mac_key, rest) = rest.split_at(MAC_KEY_SIZE);
        let (payload_key, rest) = rest.split_at(PAYLOAD_KEY_SIZE);
        let (blinding_factor, replay_tag) = rest.split_at(BLINDING_FACTOR_SIZE);
        secret.stream_key.copy_from_slice(stream_key);
        secret.mac_key.copy_from_slice(mac_key);
        secret.legacy_payload_key.copy_from_slice(payload_key);
        secret.blinding_factor.copy_from_slice(blinding_factor);
        secret.replay_tag.copy_from_slice(replay_tag);
        secret
    }

    /// AES-128-CTR key for beta (h_rho).
    pub fn stream_key(&self) -> &[u8; STREAM_KEY_SIZE] {
        &self.stream_key
    }

    /// HMAC-SHA256 key for the header MAC (h_mu).
    pub fn mac_key(&self) -> &[u8; MAC_KEY_SIZE] {
        &self.mac_key
    }

    /// Payload key of versions ≤ 258.
    pub fn legacy_payload_key(&self) -> &PayloadKey {
        &self.legacy_payload_key
    }

    /// Payload key seed of versions 259/260: the first 16 bytes of the legacy key.
    pub fn payload_key_seed(&self) -> PayloadKeySeed {
        let mut seed = [0u8; PAYLOAD_KEY_SEED_SIZE];
        seed.copy_from_slice(&self.legacy_payload_key[..PAYLOAD_KEY_SEED_SIZE]);
        seed
    }

    /// Scalar the node multiplies alpha by (clamped by X25519) to get the next alpha (h_b).
    pub fn blinding_factor(&self) -> &[u8; BLINDING_FACTOR_SIZE] {
        &self.blinding_factor
    }

    /// Replay-detection tag (h_tau).
    pub fn replay_tag(&self) -> &[u8; REPLAY_TAG_SIZE] {
        &self.replay_tag
    }

    /// The Lioness key a hop uses for `version`.
    pub fn payload_key(&self, version: Version) -> PayloadKey {
        if version.uses_full_payload_keys() {
            self.legacy_payload_key
        } else {
            derive_payload_key(&self.payload_key_seed())
        }
    }
}

/// HKDF-SHA256(salt = "", ikm = shared secret, info = legacy string) → 288 bytes.
pub fn expand(shared_secret: &[u8; 32]) -> ExpandedSecret {
    let hkdf = Hkdf::<Sha256>::new(Some(EXPANDED_SECRET_HKDF_SALT), shared_secret);
    let mut okm = [0u8; EXPANDED_SECRET_SIZE];
    // Cannot fail: 288 ≤ 255·32 is asserted in `constants`.
    let expanded = hkdf.expand(EXPANDED_SECRET_HKDF_INFO, &mut okm);
    debug_assert!(expanded.is_ok());
    let secret = ExpandedSecret::from_bytes(&okm);
    okm.zeroize();
    secret
}

/// v259/v260 payload key: HKDF-SHA256(salt, ikm = seed, info) → 192 bytes.
pub fn derive_payload_key(seed: &PayloadKeySeed) -> PayloadKey {
    let hkdf = Hkdf::<Sha256>::new(Some(PAYLOAD_KEY_HKDF_SALT), seed);
    let mut key = [0u8; PAYLOAD_KEY_SIZE];
    // Cannot fail: 192 ≤ 255·32 is asserted in `constants`.
    let expanded = hkdf.expand(PAYLOAD_KEY_HKDF_INFO, &mut key);
    debug_assert!(expanded.is_ok());
    key
}

// HMAC key states of the two constant HKDF salts, compressed at compile time.
const EXPANDED_SECRET_SALT_KEY: HmacKey = HmacKey::new_const(EXPANDED_SECRET_HKDF_SALT);
const PAYLOAD_KEY_SALT_KEY: HmacKey = HmacKey::new_const(PAYLOAD_KEY_HKDF_SALT);

// Message schedules of the two expansions' lane-independent blocks, computed at compile
// time (the `None` arm is a compile error: both infos fit `INFO_MAX`).
const EXPANDED_SECRET_STEPS: usize = EXPANDED_SECRET_SIZE.div_ceil(32);
const PAYLOAD_KEY_STEPS: usize = PAYLOAD_KEY_SIZE.div_ceil(32);
static EXPANDED_SECRET_PLAN: ExpandPlan<EXPANDED_SECRET_STEPS> =
    match ExpandPlan::new(EXPANDED_SECRET_HKDF_INFO) {
        Some(plan) => plan,
        None => panic!("HKDF info longer than INFO_MAX"),
    };
static PAYLOAD_KEY_PLAN: ExpandPlan<PAYLOAD_KEY_STEPS> =
    match ExpandPlan::new(PAYLOAD_KEY_HKDF_INFO) {
        Some(plan) => plan,
        None => panic!("HKDF info longer than INFO_MAX"),
    };

/// [`expand`] for many shared secrets: `okm[j]` = the 288 expanded bytes of
/// `shared_secrets[j]` (feed them to [`ExpandedSecret::from_bytes`]), across SIMD lanes
/// where the CPU allows (`crate::simd::hkdf`). The caller wipes `okm`.
pub fn expand_many(shared_secrets: &[[u8; 32]], okm: &mut [[u8; EXPANDED_SECRET_SIZE]]) {
    // Cannot fail: the info string and output size are within HKDF's limits.
    let expanded = hkdf_many_planned(
        &EXPANDED_SECRET_SALT_KEY,
        &EXPANDED_SECRET_PLAN,
        shared_secrets,
        okm,
    );
    debug_assert!(expanded);
}

/// [`derive_payload_key`] for many seeds: `keys[j]` from `seeds[j]`, across SIMD lanes.
pub fn derive_payload_keys(seeds: &[PayloadKeySeed], keys: &mut [PayloadKey]) {
    // Cannot fail: the info string and output size are within HKDF's limits.
    let derived = hkdf_many_planned(&PAYLOAD_KEY_SALT_KEY, &PAYLOAD_KEY_PLAN, seeds, keys);
    debug_assert!(derived);
}

/// What the sender knows about one hop.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct HopSecrets {
    /// X25519 output shared with this hop.
    pub shared_secret: [u8; 32],
    pub expanded: ExpandedSecret,
}

/// Per-hop secrets for a route of 1..=5 hops, plus the alpha the first hop receives.
#[derive(Clone)]
pub struct RouteSecrets {
    /// alpha_0 = x·G.
    pub alpha: [u8; 32],
    pub(crate) hops: [Option<HopSecrets>; MAX_PATH_LENGTH],
    pub(crate) len: usize,
}

impl RouteSecrets {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Hop `index`'s secrets, route order.
    pub fn hop(&self, index: usize) -> Option<&HopSecrets> {
        self.hops.get(index).and_then(Option::as_ref)
    }

    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &HopSecrets> {
        self.hops.iter().take(self.len).flatten()
    }
}

/// Derives every hop's shared secret the way `sphinx-packet` does (`KeyMaterial::derive`):
/// hop i's secret is `X25519(b_{i-1}, … X25519(b_0, X25519(x, PK_i)))`, chained, so O(n²)
/// scalar multiplications. The chain of clamped X25519 calls is what fixes the bytes; any
/// faster derivation must reproduce it exactly.
pub fn derive_hop_secrets(
    initial_secret: &StaticSecret,
    route_public_keys: &[[u8; 32]],
) -> Result<RouteSecrets, SphinxError> {
    let hops_count = route_public_keys.len();
    if hops_count == 0 || hops_count > MAX_PATH_LENGTH {
        return Err(SphinxError::InvalidRoute {
            hops: hops_count,
            delays: hops_count,
        });
    }
    let mut secrets = RouteSecrets {
        alpha: PublicKey::from(initial_secret).to_bytes(),
        hops: Default::default(),
        len: hops_count,
    };
    let mut blinding = [[0u8; BLINDING_FACTOR_SIZE]; MAX_PATH_LENGTH];
    for (index, public_key) in route_public_keys.iter().enumerate() {
        let mut accumulator = initial_secret
            .diffie_hellman(&PublicKey::from(*public_key))
            .to_bytes();
        for factor in blinding.iter().take(index) {
            accumulator = x25519(*factor, accumulator);
        }
        let expanded = expand(&accumulator);
        if let Some(slot) = blinding.get_mut(index) {
            *slot = *expanded.blinding_factor();
        }
        if let Some(slot) = secrets.hops.get_mut(index) {
            *slot = Some(HopSecrets {
                shared_secret: accumulator,
                expanded,
            });
        }
        accumulator.zeroize();
    }
    blinding.zeroize();
    Ok(secrets)
}

/// alpha' = X25519(blinding factor, alpha): what a forward hop writes into the next header.
pub fn blind_alpha(expanded: &ExpandedSecret, alpha: &[u8; 32]) -> [u8; 32] {
    x25519(*expanded.blinding_factor(), *alpha)
}

/// alpha_0 = X25519(x, 9).
pub fn initial_alpha(initial_secret: &[u8; 32]) -> [u8; 32] {
    x25519(*initial_secret, X25519_BASEPOINT_BYTES)
}

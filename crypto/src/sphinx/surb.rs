//! Single-use reply blocks. Wire format: `header (348) ‖ first hop (32) ‖ keys`, where keys
//! are 16-byte seeds (v259: one per hop; v260: the last hop's only) or, for v258 SURBs made
//! by `sphinx-packet` 0.6-era clients, full 192-byte payload keys per hop. The two are told
//! apart by length, as 0.6 does: at least 192 bytes means full keys.

use rand_core::CryptoRng;
use x25519_dalek::StaticSecret;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use super::constants::{
    HEADER_SIZE, IDENTIFIER_SIZE, MAX_PATH_LENGTH, NODE_ADDRESS_SIZE, PAYLOAD_KEY_SEED_SIZE,
    PAYLOAD_KEY_SIZE,
};
use super::create::{build_header, route_secrets, PacketSpec};
use super::error::SphinxError;
use super::keys::{derive_payload_key, PayloadKey, PayloadKeySeed};
use super::packet::check_packet_len;
use super::payload::{decrypt_layer, encrypt_layer, frame};
use super::process::recover_plaintext;
use super::version::Version;

/// The payload keys a SURB hands to the reply's sender, route order.
// Fixed capacity on purpose: a SURB is one stack value, no heap.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub enum SurbKeys {
    /// v259 (every hop) or v260 (last hop only).
    Seeds {
        seeds: [PayloadKeySeed; MAX_PATH_LENGTH],
        count: usize,
    },
    /// v258: full Lioness keys per hop.
    Full {
        keys: [PayloadKey; MAX_PATH_LENGTH],
        count: usize,
    },
}

impl SurbKeys {
    pub fn count(&self) -> usize {
        match self {
            SurbKeys::Seeds { count, .. } | SurbKeys::Full { count, .. } => *count,
        }
    }

    fn encoded_len(&self) -> usize {
        match self {
            SurbKeys::Seeds { count, .. } => count * PAYLOAD_KEY_SEED_SIZE,
            SurbKeys::Full { count, .. } => count * PAYLOAD_KEY_SIZE,
        }
    }

    fn key(&self, index: usize) -> Option<Zeroizing<PayloadKey>> {
        match self {
            SurbKeys::Seeds { seeds, count } if index < *count => seeds
                .get(index)
                .map(|seed| Zeroizing::new(derive_payload_key(seed))),
            SurbKeys::Full { keys, count } if index < *count => {
                keys.get(index).map(|key| Zeroizing::new(*key))
            }
            _ => None,
        }
    }
}

impl core::fmt::Debug for SurbKeys {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "SurbKeys(<{} redacted>)", self.count())
    }
}

/// A reply block: precomputed header, first hop and the payload keys.
#[derive(Clone, Debug)]
pub struct Surb {
    header: [u8; HEADER_SIZE],
    first_hop: [u8; NODE_ADDRESS_SIZE],
    keys: SurbKeys,
}

/// What the creator of a v260 SURB keeps to read the reply: every hop's seed.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct SurbRecovery {
    identifier: [u8; IDENTIFIER_SIZE],
    seeds: [PayloadKeySeed; MAX_PATH_LENGTH],
    count: usize,
}

impl core::fmt::Debug for SurbRecovery {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "SurbRecovery({:?}, <{} seeds redacted>)",
            self.identifier, self.count
        )
    }
}

/// Builds a SURB for `spec` (its destination is the SURB creator). Version decides the kind:
/// 258 → full keys per hop; 259 → a seed per hop; 260 → last seed only, plus the
/// [`SurbRecovery`] the creator must keep (needs a non-zero identifier to look it up by).
pub fn build_surb<R: CryptoRng + ?Sized>(
    spec: &PacketSpec<'_>,
    initial_secret: Option<&StaticSecret>,
    rng: &mut R,
) -> Result<(Surb, Option<SurbRecovery>), SphinxError> {
    let version = spec.version;
    let single_seed = version == Version::SINGLE_SEED_SURB;
    if single_seed && spec.destination.identifier == [0u8; IDENTIFIER_SIZE] {
        return Err(SphinxError::BadSurb(
            "v260 SURBs need a non-zero identifier",
        ));
    }
    if version != Version::EXPLICIT_PAYLOAD_KEYS
        && version != Version::PAYLOAD_KEY_SEEDS
        && !single_seed
    {
        return Err(SphinxError::BadSurb(
            "SURBs are built for versions 258, 259 and 260",
        ));
    }
    let Some(first) = spec.route.first() else {
        return Err(SphinxError::InvalidRoute {
            hops: 0,
            delays: spec.delays_ns.len(),
        });
    };
    let secrets = route_secrets(spec, initial_secret, rng)?;
    let mut header = [0u8; HEADER_SIZE];
    build_header(&mut header, &secrets, spec, rng)?;

    let mut seeds = [[0u8; PAYLOAD_KEY_SEED_SIZE]; MAX_PATH_LENGTH];
    for (seed, hop) in seeds.iter_mut().zip(secrets.iter()) {
        *seed = hop.expanded.payload_key_seed();
    }
    let count = secrets.len();
    let (keys, recovery) = if version == Version::EXPLICIT_PAYLOAD_KEYS {
        let mut keys = [[0u8; PAYLOAD_KEY_SIZE]; MAX_PATH_LENGTH];
        for (key, hop) in keys.iter_mut().zip(secrets.iter()) {
            *key = *hop.expanded.legacy_payload_key();
        }
        (SurbKeys::Full { keys, count }, None)
    } else if single_seed {
        let mut last = [[0u8; PAYLOAD_KEY_SEED_SIZE]; MAX_PATH_LENGTH];
        last[0] = seeds[count - 1];
        let recovery = SurbRecovery {
            identifier: spec.destination.identifier,
            seeds,
            count,
        };
        (
            SurbKeys::Seeds {
                seeds: last,
                count: 1,
            },
            Some(recovery),
        )
    } else {
        (SurbKeys::Seeds { seeds, count }, None)
    };
    seeds.zeroize();
    Ok((
        Surb {
            header,
            first_hop: first.address,
            keys,
        },
        recovery,
    ))
}

impl Surb {
    /// Parses untrusted SURB bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Surb, SphinxError> {
        let prefix = HEADER_SIZE + NODE_ADDRESS_SIZE;
        if bytes.len() < prefix + PAYLOAD_KEY_SEED_SIZE {
            return Err(SphinxError::BadSurb("too short"));
        }
        let (header_bytes, rest) = bytes.split_at(HEADER_SIZE);
        let (first_hop_bytes, key_bytes) = rest.split_at(NODE_ADDRESS_SIZE);
        let mut header = [0u8; HEADER_SIZE];
        header.copy_from_slice(header_bytes);
        let mut first_hop = [0u8; NODE_ADDRESS_SIZE];
        first_hop.copy_from_slice(first_hop_bytes);
        let keys = if key_bytes.len() >= PAYLOAD_KEY_SIZE {
            let mut keys = [[0u8; PAYLOAD_KEY_SIZE]; MAX_PATH_LENGTH];
            let count = parse_chunks(key_bytes, &mut keys)?;
            SurbKeys::Full { keys, count }
        } else {
            let mut seeds = [[0u8; PAYLOAD_KEY_SEED_SIZE]; MAX_PATH_LENGTH];
            let count = parse_chunks(key_bytes, &mut seeds)?;
            SurbKeys::Seeds { seeds, count }
        };
        Ok(Surb {
            header,
            first_hop,
            keys,
        })
    }

    /// Bytes of `header ‖ first hop ‖ keys`.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(self.encoded_len());
        bytes.extend_from_slice(&self.header);
        bytes.extend_from_slice(&self.first_hop);
        for index in 0..self.keys.count() {
            match &self.keys {
                SurbKeys::Seeds { seeds, .. } => {
                    bytes.extend_from_slice(seeds.get(index).map_or(&[][..], |s| &s[..]));
                }
                SurbKeys::Full { keys, .. } => {
                    bytes.extend_from_slice(keys.get(index).map_or(&[][..], |k| &k[..]));
                }
            }
        }
        bytes
    }

    pub fn encoded_len(&self) -> usize {
        HEADER_SIZE + NODE_ADDRESS_SIZE + self.keys.encoded_len()
    }

    pub fn header(&self) -> &[u8; HEADER_SIZE] {
        &self.header
    }

    pub fn first_hop(&self) -> &[u8; NODE_ADDRESS_SIZE] {
        &self.first_hop
    }

    pub fn keys(&self) -> &SurbKeys {
        &self.keys
    }

    /// Writes the reply packet into `out` (payload size = `out.len() - 348`) and returns
    /// the first hop to send it to.
    pub fn use_into(
        &self,
        message: &[u8],
        out: &mut [u8],
    ) -> Result<[u8; NODE_ADDRESS_SIZE], SphinxError> {
        check_packet_len(out.len())?;
        let (header, payload) = out.split_at_mut(HEADER_SIZE);
        frame(payload, message)?;
        for index in (0..self.keys.count()).rev() {
            let Some(key) = self.keys.key(index) else {
                return Err(SphinxError::BadSurb("missing key"));
            };
            encrypt_layer(payload, &key)?;
        }
        header.copy_from_slice(&self.header);
        Ok(self.first_hop)
    }

    /// [`Self::use_into`] into a fresh `Vec`.
    pub fn use_surb(
        &self,
        message: &[u8],
        payload_size: usize,
    ) -> Result<(Vec<u8>, [u8; NODE_ADDRESS_SIZE]), SphinxError> {
        let mut out = vec![0u8; HEADER_SIZE.saturating_add(payload_size)];
        let first_hop = self.use_into(message, &mut out)?;
        Ok((out, first_hop))
    }
}

impl SurbRecovery {
    pub fn identifier(&self) -> &[u8; IDENTIFIER_SIZE] {
        &self.identifier
    }

    pub fn hops(&self) -> usize {
        self.count
    }

    /// `identifier ‖ seeds`, route order (as `sphinx-packet`'s `SurbReplyRecovery`).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(IDENTIFIER_SIZE + self.count * PAYLOAD_KEY_SEED_SIZE);
        bytes.extend_from_slice(&self.identifier);
        for seed in self.seeds.iter().take(self.count) {
            bytes.extend_from_slice(seed);
        }
        bytes
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<SurbRecovery, SphinxError> {
        if bytes.len() < IDENTIFIER_SIZE + PAYLOAD_KEY_SEED_SIZE {
            return Err(SphinxError::BadSurb("recovery data too short"));
        }
        let (identifier_bytes, seed_bytes) = bytes.split_at(IDENTIFIER_SIZE);
        let mut identifier = [0u8; IDENTIFIER_SIZE];
        identifier.copy_from_slice(identifier_bytes);
        let mut seeds = [[0u8; PAYLOAD_KEY_SEED_SIZE]; MAX_PATH_LENGTH];
        let count = parse_chunks(seed_bytes, &mut seeds)?;
        Ok(SurbRecovery {
            identifier,
            seeds,
            count,
        })
    }

    /// Undoes the reply's transit in place: every hop removed a layer with its own key, so
    /// re-add them last hop first, then remove the sender's layer (last hop's key).
    pub fn unseal_in_place(&self, payload: &mut [u8]) -> Result<(), SphinxError> {
        let mut last = None;
        for seed in self.seeds.iter().take(self.count).rev() {
            let key = Zeroizing::new(derive_payload_key(seed));
            encrypt_layer(payload, &key)?;
            if last.is_none() {
                last = Some(key);
            }
        }
        let Some(last) = last else {
            return Err(SphinxError::BadSurb("recovery data without seeds"));
        };
        decrypt_layer(payload, &last)
    }

    /// [`Self::unseal_in_place`] then [`recover_plaintext`]; the padding check detects a
    /// wrong recovery record.
    pub fn recover_plaintext<'a>(&self, payload: &'a mut [u8]) -> Result<&'a [u8], SphinxError> {
        self.unseal_in_place(payload)?;
        recover_plaintext(payload)
    }
}

// Splits `bytes` into 1..=5 chunks of N bytes.
fn parse_chunks<const N: usize>(
    bytes: &[u8],
    out: &mut [[u8; N]; MAX_PATH_LENGTH],
) -> Result<usize, SphinxError> {
    if bytes.is_empty() || !bytes.len().is_multiple_of(N) {
        return Err(SphinxError::BadSurb(
            "key material is not a whole number of keys",
        ));
    }
    let count = bytes.len() / N;
    if count > MAX_PATH_LENGTH {
        return Err(SphinxError::BadSurb("more keys than hops"));
    }
    for (slot, chunk) in out.iter_mut().zip(bytes.chunks_exact(N)) {
        slot.copy_from_slice(chunk);
    }
    Ok(count)
}

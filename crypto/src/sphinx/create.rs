//! Sender side: building headers and packets for 1..=5 hops, byte-compatible with
//! `sphinx-packet` 0.8's `SphinxPacketBuilder`.
//!
//! Randomness enters in two places, both drawn from the caller's RNG: the initial secret x
//! (unless supplied) and the final hop's random padding (one draw of
//! `300 - 60·(n-1) - 52` bytes, after x).

use rand_core::CryptoRng;
use x25519_dalek::StaticSecret;
use zeroize::Zeroizing;

use super::constants::{
    ALPHA_SIZE, DESTINATION_SIZE, FINAL_META_INFO_SIZE, FLAG_FINAL_HOP, FLAG_FORWARD_HOP,
    HEADER_SIZE, IDENTIFIER_SIZE, MAC_SIZE, MAX_PATH_LENGTH, NODE_ADDRESS_SIZE, ROUTING_INFO_SIZE,
    SLOT_SIZE, STREAM_KEY_SIZE, TRUNCATED_ROUTING_INFO_SIZE, VERSION_SIZE,
};
use super::error::SphinxError;
use super::fast_keys::derive_hop_secrets_fast;
use super::keys::{PayloadKey, RouteSecrets};
use super::packet::check_packet_len;
use super::payload::{encrypt_for_route, frame};
use super::routing::{compute_mac, filler, xor_keystream};
use super::version::Version;

/// One hop of a route: where it listens (32-byte Nym node address) and its X25519 key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteHop {
    pub address: [u8; NODE_ADDRESS_SIZE],
    pub public_key: [u8; 32],
}

/// The final recipient as written into the last routing slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Destination {
    pub address: [u8; DESTINATION_SIZE],
    /// SURB identifier (all zeros for forward packets in Nym).
    pub identifier: [u8; IDENTIFIER_SIZE],
}

/// What a header encodes. Delays are per hop in nanoseconds; the last one is not encoded.
#[derive(Debug, Clone, Copy)]
pub struct PacketSpec<'a> {
    pub route: &'a [RouteHop],
    pub delays_ns: &'a [u64],
    pub destination: &'a Destination,
    pub version: Version,
}

impl PacketSpec<'_> {
    fn validate(&self) -> Result<(), SphinxError> {
        let hops = self.route.len();
        let delays = self.delays_ns.len();
        if hops == 0 || hops > MAX_PATH_LENGTH || delays != hops {
            return Err(SphinxError::InvalidRoute { hops, delays });
        }
        Ok(())
    }
}

/// Builds a packet into `out` (header ‖ payload; payload size = `out.len() - 348`).
/// Returns the route's secrets (e.g. for a SURB creator or tests).
pub fn create_into<R: CryptoRng + ?Sized>(
    out: &mut [u8],
    message: &[u8],
    spec: &PacketSpec<'_>,
    initial_secret: Option<&StaticSecret>,
    rng: &mut R,
) -> Result<RouteSecrets, SphinxError> {
    check_packet_len(out.len())?;
    spec.validate()?;
    let (header, payload) = out.split_at_mut(HEADER_SIZE);
    frame(payload, message)?;
    let secrets = route_secrets(spec, initial_secret, rng)?;
    build_header(header_array(header)?, &secrets, spec, rng)?;
    encrypt_for_route(payload, payload_keys(&secrets, spec.version))?;
    Ok(secrets)
}

/// [`create_into`] into a fresh `Vec` of `HEADER_SIZE + payload_size` bytes.
pub fn create<R: CryptoRng + ?Sized>(
    message: &[u8],
    payload_size: usize,
    spec: &PacketSpec<'_>,
    initial_secret: Option<&StaticSecret>,
    rng: &mut R,
) -> Result<Vec<u8>, SphinxError> {
    let mut out = vec![0u8; HEADER_SIZE.saturating_add(payload_size)];
    create_into(&mut out, message, spec, initial_secret, rng)?;
    Ok(out)
}

/// Draws x (unless given) and derives every hop's secrets.
pub(crate) fn route_secrets<R: CryptoRng + ?Sized>(
    spec: &PacketSpec<'_>,
    initial_secret: Option<&StaticSecret>,
    rng: &mut R,
) -> Result<RouteSecrets, SphinxError> {
    spec.validate()?;
    let mut public_keys = [[0u8; 32]; MAX_PATH_LENGTH];
    for (slot, hop) in public_keys.iter_mut().zip(spec.route) {
        *slot = hop.public_key;
    }
    let keys = &public_keys[..spec.route.len()];
    match initial_secret {
        // O(n) derivation; `derive_hop_secrets` (the crate's chain) stays as the reference.
        Some(secret) => derive_hop_secrets_fast(secret, keys),
        None => {
            let mut bytes = Zeroizing::new([0u8; 32]);
            rng.fill_bytes(bytes.as_mut());
            derive_hop_secrets_fast(&StaticSecret::from(*bytes), keys)
        }
    }
}

/// Each hop's payload key for `version`, route order.
pub(crate) fn payload_keys(
    secrets: &RouteSecrets,
    version: Version,
) -> impl DoubleEndedIterator<Item = Zeroizing<PayloadKey>> + '_ {
    secrets
        .iter()
        .map(move |hop| Zeroizing::new(hop.expanded.payload_key(version)))
}

pub(crate) fn header_array(header: &mut [u8]) -> Result<&mut [u8; HEADER_SIZE], SphinxError> {
    let len = header.len();
    header.try_into().map_err(|_| SphinxError::Truncated {
        len,
        min: HEADER_SIZE,
    })
}

/// Writes alpha_0 ‖ MAC_0 ‖ beta_0, building beta from the inside out in place.
pub(crate) fn build_header<R: CryptoRng + ?Sized>(
    header: &mut [u8; HEADER_SIZE],
    secrets: &RouteSecrets,
    spec: &PacketSpec<'_>,
    rng: &mut R,
) -> Result<(), SphinxError> {
    spec.validate()?;
    let hops = spec.route.len();
    if secrets.len() != hops {
        return Err(SphinxError::InvalidRoute {
            hops,
            delays: secrets.len(),
        });
    }
    let (alpha, rest) = header.split_at_mut(ALPHA_SIZE);
    let (mac_out, beta) = rest.split_at_mut(MAC_SIZE);
    let beta: &mut [u8; ROUTING_INFO_SIZE] =
        beta.try_into().map_err(|_| SphinxError::Truncated {
            len: 0,
            min: HEADER_SIZE,
        })?;
    alpha.copy_from_slice(&secrets.alpha);

    let mut mac = write_final_routing(beta, secrets, spec, rng)?;
    let version = spec.version.to_wire();
    // Hop i's slot names hop i+1 and carries hop i's delay and hop i+1's MAC.
    for index in (0..hops - 1).rev() {
        let (Some(hop), Some(next)) = (secrets.hop(index), spec.route.get(index + 1)) else {
            return Err(SphinxError::InvalidRoute {
                hops,
                delays: spec.delays_ns.len(),
            });
        };
        let delay = spec.delays_ns.get(index).copied().unwrap_or_default();
        beta.copy_within(..TRUNCATED_ROUTING_INFO_SIZE, SLOT_SIZE);
        let slot = &mut beta[..SLOT_SIZE];
        slot[0] = FLAG_FORWARD_HOP;
        slot[1..1 + VERSION_SIZE].copy_from_slice(&version);
        slot[4..4 + NODE_ADDRESS_SIZE].copy_from_slice(&next.address);
        slot[36..44].copy_from_slice(&delay.to_be_bytes());
        slot[44..SLOT_SIZE].copy_from_slice(&mac);
        xor_keystream(hop.expanded.stream_key(), beta);
        mac = compute_mac(hop.expanded.mac_key(), beta);
    }
    mac_out.copy_from_slice(&mac);
    Ok(())
}

// Final slot: (flag ‖ version ‖ destination ‖ identifier ‖ random padding) ⊕ keystream,
// followed by the filler; returns its MAC.
fn write_final_routing<R: CryptoRng + ?Sized>(
    beta: &mut [u8; ROUTING_INFO_SIZE],
    secrets: &RouteSecrets,
    spec: &PacketSpec<'_>,
    rng: &mut R,
) -> Result<[u8; MAC_SIZE], SphinxError> {
    let hops = secrets.len();
    let Some(last) = secrets.hop(hops.wrapping_sub(1)) else {
        return Err(SphinxError::InvalidRoute {
            hops,
            delays: spec.delays_ns.len(),
        });
    };
    let mut stream_keys = [[0u8; STREAM_KEY_SIZE]; MAX_PATH_LENGTH];
    for (slot, hop) in stream_keys.iter_mut().zip(secrets.iter()) {
        *slot = *hop.expanded.stream_key();
    }
    let (filler_bytes, filler_len) = filler(&stream_keys[..hops - 1]);
    let final_len = ROUTING_INFO_SIZE - filler_len;

    let destination = spec.destination;
    beta[0] = FLAG_FINAL_HOP;
    beta[1..1 + VERSION_SIZE].copy_from_slice(&spec.version.to_wire());
    beta[4..4 + DESTINATION_SIZE].copy_from_slice(&destination.address);
    beta[36..36 + IDENTIFIER_SIZE].copy_from_slice(&destination.identifier);
    // Random, not zero, padding (Kuhn et al.'s attack on Sphinx), as sphinx-packet does.
    rng.fill_bytes(&mut beta[FINAL_META_INFO_SIZE..final_len]);
    xor_keystream(last.expanded.stream_key(), &mut beta[..final_len]);
    beta[final_len..].copy_from_slice(&filler_bytes[..filler_len]);
    Ok(compute_mac(last.expanded.mac_key(), beta))
}

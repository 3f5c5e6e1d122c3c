//! Node-side processing, in place and without heap allocation, split into stages so a batched
//! caller can do the two X25519 multiplications per packet itself (across SIMD lanes):
//!
//! 1. [`dh_input`]: alpha, the point to multiply by the node key;
//! 2. [`check_dh_output`] + [`expand`](super::keys::expand): shared secret → [`ExpandedSecret`];
//! 3. [`verify_mac`] (constant time); then a replay check on [`ExpandedSecret::replay_tag`];
//! 4. [`hop_kind`] tells whether the second multiplication is needed, and [`blinding_input`]
//!    gives its scalar: `blinded alpha = X25519(blinding factor, alpha)`;
//! 5. [`unwrap_in_place`]: rewrites the buffer into the next hop's packet (or the final
//!    payload) and returns the small [`Processed`] value.
//!
//! [`process`] and [`process_with_keys`] compose the stages with `x25519-dalek`.

use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

use subtle::ConstantTimeEq;

use super::constants::{
    DELAY_SIZE, DESTINATION_SIZE, FLAG_FINAL_HOP, FLAG_FORWARD_HOP, IDENTIFIER_SIZE,
    KEYSTREAM_SIZE, MAC_SIZE, NODE_ADDRESS_SIZE, PAYLOAD_OVERHEAD_SIZE, REPLAY_TAG_SIZE,
    ROUTING_INFO_SIZE, SECURITY_PARAMETER, SLOT_SIZE, TRUNCATED_ROUTING_INFO_SIZE, VERSION_SIZE,
};
use super::error::SphinxError;
use super::keys::{blind_alpha, expand, ExpandedSecret};
use super::packet::Packet;
use super::routing::{keystream, mac_matches};
use super::version::Version;
use crate::lioness::Lioness;

/// What processing a packet yielded. The buffer holds the rest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Processed {
    pub version: Version,
    /// h_tau: feed it to the replay filter.
    pub replay_tag: [u8; REPLAY_TAG_SIZE],
    pub hop: Hop,
}

/// Where the packet goes next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hop {
    /// The buffer now holds the next hop's packet; send it to `next_hop` after `delay_ns`.
    Forward {
        next_hop: [u8; NODE_ADDRESS_SIZE],
        delay_ns: u64,
    },
    /// We are the last hop: the payload region holds the decrypted payload (see
    /// [`recover_plaintext`]); beta holds the decrypted routing information.
    Final {
        destination: [u8; DESTINATION_SIZE],
        identifier: [u8; IDENTIFIER_SIZE],
    },
}

/// Forward or final, as read from the first byte of the decrypted routing slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HopKind {
    Forward,
    Final,
}

/// Which of two node keys verified the MAC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyChoice {
    Primary,
    Secondary,
}

/// Stage 1: the point the node key multiplies. Any 32 bytes are a valid X25519 input; bad
/// points are caught on the output by [`check_dh_output`].
pub fn dh_input<T: AsRef<[u8]>>(packet: &Packet<T>) -> &[u8; 32] {
    packet.alpha()
}

/// Stage 2a: rejects an all-zero X25519 output (alpha of small order), in constant time.
///
/// `sphinx-packet` does not check this: it expands the zero secret, so anyone could forge a
/// packet a node accepts. Honest alphas are multiples of the base point by clamped scalars,
/// never of small order, so rejecting these loses no honest traffic.
pub fn check_dh_output(shared_secret: &[u8; 32]) -> Result<(), SphinxError> {
    // OR of the four words, then one constant-time comparison (`subtle`'s slice comparison
    // takes one optimisation barrier per byte); no branch depends on the secret before the
    // (public) verdict.
    let (words, _) = shared_secret.as_chunks::<8>();
    let any = words
        .iter()
        .fold(0u64, |acc, word| acc | u64::from_le_bytes(*word));
    if bool::from(any.ct_eq(&0)) {
        return Err(SphinxError::InvalidPoint);
    }
    Ok(())
}

/// Stages 1-2 with `x25519-dalek`: X25519(node key, alpha), checked and expanded.
pub fn derive_expanded_secret<T: AsRef<[u8]>>(
    packet: &Packet<T>,
    node_secret: &StaticSecret,
) -> Result<ExpandedSecret, SphinxError> {
    let shared = node_secret.diffie_hellman(&PublicKey::from(*dh_input(packet)));
    check_dh_output(shared.as_bytes())?;
    Ok(expand(shared.as_bytes()))
}

/// Stage 3: constant-time check of the header MAC over beta.
pub fn verify_mac<T: AsRef<[u8]>>(
    packet: &Packet<T>,
    expanded: &ExpandedSecret,
) -> Result<(), SphinxError> {
    if mac_matches(expanded.mac_key(), packet.beta(), packet.mac()) {
        Ok(())
    } else {
        Err(SphinxError::WrongMac)
    }
}

/// Stage 4a: decrypts only the flag to tell whether a blinded alpha will be needed.
pub fn hop_kind<T: AsRef<[u8]>>(
    packet: &Packet<T>,
    expanded: &ExpandedSecret,
) -> Result<HopKind, SphinxError> {
    let mut head = [packet.beta()[0]];
    super::routing::xor_keystream(expanded.stream_key(), &mut head);
    match head[0] {
        FLAG_FORWARD_HOP => Ok(HopKind::Forward),
        FLAG_FINAL_HOP => Ok(HopKind::Final),
        flag => Err(SphinxError::BadFlag(flag)),
    }
}

/// Stage 4b: the scalar for the blinding multiplication (`X25519(this, alpha)`, clamped).
pub fn blinding_input(expanded: &ExpandedSecret) -> &[u8; 32] {
    expanded.blinding_factor()
}

/// Stage 5: unwraps one layer in place, after [`verify_mac`] succeeded.
///
/// `blinded_alpha` is written as the next hop's alpha; it is ignored for a final hop (pass
/// anything). On error the buffer is unchanged.
pub fn unwrap_in_place<T: AsRef<[u8]> + AsMut<[u8]>>(
    packet: &mut Packet<T>,
    expanded: &ExpandedSecret,
    blinded_alpha: &[u8; 32],
) -> Result<Processed, SphinxError> {
    unwrap_with(packet, expanded, |_| *blinded_alpha)
}

/// Stage 5 without the payload, for batched callers that decrypt payloads together: as
/// [`unwrap_in_place`], except that the payload region is left as received. The caller must
/// then remove one Lioness layer from it with `expanded.payload_key(processed.version)`
/// (e.g. [`crate::lioness::decrypt_many`]) to get the bytes `unwrap_in_place` produces.
pub fn unwrap_header_in_place<T: AsRef<[u8]> + AsMut<[u8]>>(
    packet: &mut Packet<T>,
    expanded: &ExpandedSecret,
    blinded_alpha: &[u8; 32],
) -> Result<Processed, SphinxError> {
    unwrap_header_with(packet, expanded, |_| *blinded_alpha)
}

/// Whole processing with one node key (two X25519 multiplications for a forward hop).
pub fn process<T: AsRef<[u8]> + AsMut<[u8]>>(
    packet: &mut Packet<T>,
    node_secret: &StaticSecret,
) -> Result<Processed, SphinxError> {
    packet.check_len()?;
    let expanded = derive_expanded_secret(packet, node_secret)?;
    verify_mac(packet, &expanded)?;
    unwrap_with(packet, &expanded, |alpha| blind_alpha(&expanded, alpha))
}

/// Processing with a primary and optional secondary key (key rotation with an unknown
/// rotation byte): a MAC failure with the primary key falls back to the secondary.
pub fn process_with_keys<T: AsRef<[u8]> + AsMut<[u8]>>(
    packet: &mut Packet<T>,
    primary: &StaticSecret,
    secondary: Option<&StaticSecret>,
) -> Result<(Processed, KeyChoice), SphinxError> {
    packet.check_len()?;
    let mut choice = KeyChoice::Primary;
    let mut expanded = derive_expanded_secret(packet, primary)?;
    if verify_mac(packet, &expanded).is_err() {
        let Some(secondary) = secondary else {
            return Err(SphinxError::WrongMac);
        };
        expanded = derive_expanded_secret(packet, secondary)?;
        verify_mac(packet, &expanded)?;
        choice = KeyChoice::Secondary;
    }
    let processed = unwrap_with(packet, &expanded, |alpha| blind_alpha(&expanded, alpha))?;
    Ok((processed, choice))
}

/// Strips the framing of a fully decrypted payload: 16 zero bytes ‖ message ‖ 0x01 ‖ 0x00….
///
/// Stricter than `sphinx-packet` (which takes the last 0x01 and ignores what follows): the
/// bytes after the marker must be zero, as every honest sender writes them.
pub fn recover_plaintext(payload: &[u8]) -> Result<&[u8], SphinxError> {
    if payload.len() < PAYLOAD_OVERHEAD_SIZE {
        return Err(SphinxError::BadPayloadPadding);
    }
    let (zeros, padded) = payload.split_at(SECURITY_PARAMETER);
    if zeros.iter().any(|&byte| byte != 0) {
        return Err(SphinxError::BadPayloadPadding);
    }
    let Some(marker) = padded.iter().rposition(|&byte| byte != 0) else {
        return Err(SphinxError::BadPayloadPadding);
    };
    if padded[marker] != 1 {
        return Err(SphinxError::BadPayloadPadding);
    }
    Ok(&padded[..marker])
}

fn unwrap_with<T, F>(
    packet: &mut Packet<T>,
    expanded: &ExpandedSecret,
    blind: F,
) -> Result<Processed, SphinxError>
where
    T: AsRef<[u8]> + AsMut<[u8]>,
    F: FnOnce(&[u8; 32]) -> [u8; 32],
{
    let processed = unwrap_header_with(packet, expanded, blind)?;
    let payload_key = Zeroizing::new(expanded.payload_key(processed.version));
    // Cannot fail: `check_len` guaranteed a payload of at least one Lioness block.
    let decrypted = Lioness::new(&payload_key).decrypt(packet.payload_mut());
    debug_assert!(decrypted.is_ok());
    Ok(processed)
}

// Everything of stage 5 but the payload.
fn unwrap_header_with<T, F>(
    packet: &mut Packet<T>,
    expanded: &ExpandedSecret,
    blind: F,
) -> Result<Processed, SphinxError>
where
    T: AsRef<[u8]> + AsMut<[u8]>,
    F: FnOnce(&[u8; 32]) -> [u8; 32],
{
    // Everything that can fail is checked before the first write.
    packet.check_len()?;
    let stream = Zeroizing::new(keystream(expanded.stream_key()));
    unwrap_header_with_stream(packet, expanded, &stream, blind)
}

/// [`unwrap_header_in_place`] with the hop's keystream (`keystream(expanded.stream_key())`)
/// already computed, for batched callers that computed it to classify the packet.
pub(crate) fn unwrap_header_in_place_with_stream<T: AsRef<[u8]> + AsMut<[u8]>>(
    packet: &mut Packet<T>,
    expanded: &ExpandedSecret,
    stream: &[u8; KEYSTREAM_SIZE],
    blinded_alpha: &[u8; 32],
) -> Result<Processed, SphinxError> {
    unwrap_header_with_stream(packet, expanded, stream, |_| *blinded_alpha)
}

fn unwrap_header_with_stream<T, F>(
    packet: &mut Packet<T>,
    expanded: &ExpandedSecret,
    stream: &[u8; KEYSTREAM_SIZE],
    blind: F,
) -> Result<Processed, SphinxError>
where
    T: AsRef<[u8]> + AsMut<[u8]>,
    F: FnOnce(&[u8; 32]) -> [u8; 32],
{
    packet.check_len()?;
    let mut slot = Zeroizing::new([0u8; SLOT_SIZE]);
    for ((out, byte), key) in slot.iter_mut().zip(packet.beta()).zip(stream.iter()) {
        *out = byte ^ key;
    }
    let flag = slot[0];
    if flag != FLAG_FORWARD_HOP && flag != FLAG_FINAL_HOP {
        return Err(SphinxError::BadFlag(flag));
    }
    let mut version_bytes = [0u8; VERSION_SIZE];
    version_bytes.copy_from_slice(&slot[1..1 + VERSION_SIZE]);
    let version = Version::from_wire(&version_bytes)?;

    let hop = if flag == FLAG_FORWARD_HOP {
        let next_alpha = blind(packet.alpha());
        forward_in_place(packet, &slot, stream, &next_alpha)
    } else {
        final_in_place(packet, &slot, stream)
    };
    Ok(Processed {
        version,
        replay_tag: *expanded.replay_tag(),
        hop,
    })
}

const ADDRESS_AT: usize = 1 + VERSION_SIZE;
const DELAY_AT: usize = ADDRESS_AT + NODE_ADDRESS_SIZE;
const NEXT_MAC_AT: usize = DELAY_AT + DELAY_SIZE;
const IDENTIFIER_AT: usize = ADDRESS_AT + DESTINATION_SIZE;
const _: () = assert!(NEXT_MAC_AT + MAC_SIZE == SLOT_SIZE);

// beta' = (beta[60..] ‖ 0^60) ⊕ keystream[60..360]; MAC' and alpha' from the slot / blinding.
fn forward_in_place<T: AsRef<[u8]> + AsMut<[u8]>>(
    packet: &mut Packet<T>,
    slot: &[u8; SLOT_SIZE],
    stream: &[u8; KEYSTREAM_SIZE],
    next_alpha: &[u8; 32],
) -> Hop {
    let mut next_hop = [0u8; NODE_ADDRESS_SIZE];
    next_hop.copy_from_slice(&slot[ADDRESS_AT..DELAY_AT]);
    let mut delay = [0u8; DELAY_SIZE];
    delay.copy_from_slice(&slot[DELAY_AT..NEXT_MAC_AT]);

    let beta = packet.beta_mut();
    beta.copy_within(SLOT_SIZE.., 0);
    for (byte, key) in beta[..TRUNCATED_ROUTING_INFO_SIZE]
        .iter_mut()
        .zip(&stream[SLOT_SIZE..])
    {
        *byte ^= key;
    }
    beta[TRUNCATED_ROUTING_INFO_SIZE..].copy_from_slice(&stream[ROUTING_INFO_SIZE..]);
    packet.mac_mut().copy_from_slice(&slot[NEXT_MAC_AT..]);
    packet.alpha_mut().copy_from_slice(next_alpha);
    Hop::Forward {
        next_hop,
        delay_ns: u64::from_be_bytes(delay),
    }
}

fn final_in_place<T: AsRef<[u8]> + AsMut<[u8]>>(
    packet: &mut Packet<T>,
    slot: &[u8; SLOT_SIZE],
    stream: &[u8; KEYSTREAM_SIZE],
) -> Hop {
    let mut destination = [0u8; DESTINATION_SIZE];
    destination.copy_from_slice(&slot[ADDRESS_AT..IDENTIFIER_AT]);
    let mut identifier = [0u8; IDENTIFIER_SIZE];
    identifier.copy_from_slice(&slot[IDENTIFIER_AT..IDENTIFIER_AT + IDENTIFIER_SIZE]);
    for (byte, key) in packet.beta_mut().iter_mut().zip(stream.iter()) {
        *byte ^= key;
    }
    Hop::Final {
        destination,
        identifier,
    }
}

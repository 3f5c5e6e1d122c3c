//! Packets in the clear, for a simulator's cost model: the same route, per-hop delays,
//! destination and payload as a Sphinx packet, at the same size and the same payload offset,
//! but with no X25519, AES or ChaCha anywhere. A simulation whose question is the mixing, not
//! the cryptography, builds these (a client core set to [`PacketFormat::Clear`]) and unwraps
//! them with [`unwrap`] instead of the Sphinx seam; the time a hop's crypto takes is the
//! simulator's to model. Never a wire format: nothing in it hides anything.
//!
//! ```text
//! header (HEADER_SIZE bytes): nonce (8) ‖ hop index (1) ‖ hop count (1)
//!                             ‖ ROUTE_HOPS_MAX × (address (32) ‖ delay_ns (8, LE))
//!                             ‖ destination (32) ‖ identifier (16) ‖ zeros
//! payload: the Sphinx payload's plaintext framing (0^16 ‖ message ‖ 0x01 ‖ 0^*)
//! ```
//! Unwrapping hop `i` reads its slot and moves the index on, in place: the packet that leaves
//! is the bytes that came in with one byte changed. At the last hop the payload is already the
//! framed plaintext a Sphinx final hop decrypts to, so the gateway's payload rules
//! ([`crate::final_hop::decide`]) read both alike.

use lethe_crypto::framing::PacketSize;
use lethe_crypto::sphinx::constants::HEADER_SIZE;
use lethe_crypto::sphinx::{payload, Destination, RouteHop, SphinxError};

use super::message::{forward_content_len, Fragment, MessageError, EPHEMERAL_BYTES, TAG_BYTES};
use crate::topology::ROUTE_HOPS_MAX;

/// How a client core makes its packets and end-to-end content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PacketFormat {
    /// Sphinx and sealed content: what every deployed client sends.
    #[default]
    Sphinx,
    /// This module's clear packets and content (a simulator's cost model); no reply SURBs.
    Clear,
}

const NONCE_BYTES: usize = 8;
const ADDRESS_BYTES: usize = 32;
const DELAY_BYTES: usize = 8;
const SLOT_BYTES: usize = ADDRESS_BYTES + DELAY_BYTES;
const INDEX_AT: usize = NONCE_BYTES;
const COUNT_AT: usize = INDEX_AT + 1;
const SLOTS_AT: usize = COUNT_AT + 1;
const DESTINATION_AT: usize = SLOTS_AT + ROUTE_HOPS_MAX * SLOT_BYTES;
const IDENTIFIER_AT: usize = DESTINATION_AT + 32;
const HEADER_USED: usize = IDENTIFIER_AT + 16;
const _: () = assert!(HEADER_USED <= HEADER_SIZE);
const _: () = assert!(ROUTE_HOPS_MAX < u8::MAX as usize);

/// What unwrapping one hop of a clear packet says: the Sphinx seam's outcome of a packet that
/// verified, and the tag a replay filter keys on (distinct per packet and hop, as Sphinx's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClearHop {
    Forward {
        next_hop: [u8; 32],
        delay_ns: u64,
        replay_tag: [u8; 32],
    },
    Final {
        destination: [u8; 32],
        identifier: [u8; 16],
        replay_tag: [u8; 32],
    },
}

/// A clear packet of `size` over `route` (delays per hop, the last one unused) to
/// `destination`, carrying `message` in its payload; `nonce` makes its replay tags its own.
pub fn create(
    nonce: u64,
    size: PacketSize,
    message: &[u8],
    route: &[RouteHop],
    delays_ns: &[u64],
    destination: &Destination,
) -> Result<Vec<u8>, SphinxError> {
    if route.is_empty() || route.len() > ROUTE_HOPS_MAX || delays_ns.len() != route.len() {
        return Err(SphinxError::InvalidRoute {
            hops: route.len(),
            delays: delays_ns.len(),
        });
    }
    let mut packet = vec![0u8; size.packet_len()];
    let (header, body) = packet.split_at_mut(HEADER_SIZE);
    header[..NONCE_BYTES].copy_from_slice(&nonce.to_le_bytes());
    header[COUNT_AT] = route.len() as u8;
    for (i, (hop, delay_ns)) in route.iter().zip(delays_ns).enumerate() {
        let slot = &mut header[SLOTS_AT + i * SLOT_BYTES..][..SLOT_BYTES];
        slot[..ADDRESS_BYTES].copy_from_slice(&hop.address);
        slot[ADDRESS_BYTES..].copy_from_slice(&delay_ns.to_le_bytes());
    }
    header[DESTINATION_AT..IDENTIFIER_AT].copy_from_slice(&destination.address);
    header[IDENTIFIER_AT..HEADER_USED].copy_from_slice(&destination.identifier);
    payload::frame(body, message)?;
    Ok(packet)
}

/// Unwraps the hop whose turn it is, in place (the index moves on): a forward hop names the
/// next hop's address and this hop's delay; the last names the destination.
pub fn unwrap(packet: &mut [u8]) -> Result<ClearHop, SphinxError> {
    if PacketSize::from_sphinx_packet_len(packet.len()).is_none() {
        return Err(SphinxError::Truncated {
            len: packet.len(),
            min: PacketSize::Ack.packet_len(),
        });
    }
    let (index, count) = (usize::from(packet[INDEX_AT]), usize::from(packet[COUNT_AT]));
    if count == 0 || count > ROUTE_HOPS_MAX || index >= count {
        // No hop left to unwrap: as a Sphinx packet with a bad routing flag.
        return Err(SphinxError::BadFlag(packet[INDEX_AT]));
    }
    let mut nonce = [0u8; NONCE_BYTES];
    nonce.copy_from_slice(&packet[..NONCE_BYTES]);
    let replay_tag = replay_tag(u64::from_le_bytes(nonce), index as u8);
    packet[INDEX_AT] = (index + 1) as u8;
    if index + 1 == count {
        let mut destination = [0u8; 32];
        destination.copy_from_slice(&packet[DESTINATION_AT..IDENTIFIER_AT]);
        let mut identifier = [0u8; 16];
        identifier.copy_from_slice(&packet[IDENTIFIER_AT..HEADER_USED]);
        return Ok(ClearHop::Final {
            destination,
            identifier,
            replay_tag,
        });
    }
    let slot = |i: usize| &packet[SLOTS_AT + i * SLOT_BYTES..][..SLOT_BYTES];
    let mut next_hop = [0u8; 32];
    next_hop.copy_from_slice(&slot(index + 1)[..ADDRESS_BYTES]);
    let mut delay = [0u8; DELAY_BYTES];
    delay.copy_from_slice(&slot(index)[ADDRESS_BYTES..]);
    Ok(ClearHop::Forward {
        next_hop,
        delay_ns: u64::from_le_bytes(delay),
        replay_tag,
    })
}

/// The replay tag of hop `index` of the packet with `nonce`: spread over all 32 bytes
/// (splitmix64), because a replay filter takes its bit positions from the tag's bytes and
/// expects them uniform, as Sphinx's are.
fn replay_tag(nonce: u64, index: u8) -> [u8; 32] {
    let mut state = nonce ^ u64::from(index).wrapping_mul(0xd1b5_4a32_d192_ed03);
    let mut tag = [0u8; 32];
    for word in tag.chunks_exact_mut(8) {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        word.copy_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    tag
}

/// A forward fragment as clear content of [`forward_content_len`] bytes: where the sealed
/// content has its ephemeral key and tag, zeros.
pub fn seal_content(fragment: &Fragment, size: PacketSize) -> Result<Vec<u8>, MessageError> {
    let len = forward_content_len(size);
    let plaintext = fragment.encode(len - EPHEMERAL_BYTES - TAG_BYTES)?;
    let mut out = vec![0u8; len];
    out[EPHEMERAL_BYTES..len - TAG_BYTES].copy_from_slice(&plaintext);
    Ok(out)
}

/// The fragment of clear content.
pub fn open_content(content: &[u8]) -> Result<Fragment, MessageError> {
    let end = content
        .len()
        .checked_sub(TAG_BYTES)
        .filter(|&end| end >= EPHEMERAL_BYTES)
        .ok_or(MessageError::Malformed("short content"))?;
    Fragment::decode(&content[EPHEMERAL_BYTES..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loopix::message::FragmentHeader;
    use lethe_crypto::sphinx::recover_plaintext;

    #[test]
    fn hops_unwrap_in_order_and_the_final_payload_is_sphinx_framed() {
        let route: Vec<RouteHop> = (1..=4u8)
            .map(|i| RouteHop {
                address: [i; 32],
                public_key: [0; 32],
            })
            .collect();
        let destination = Destination {
            address: [9; 32],
            identifier: [8; 16],
        };
        let mut packet = create(
            5,
            PacketSize::Regular,
            b"hello",
            &route,
            &[10, 20, 30, 0],
            &destination,
        )
        .unwrap();
        let mut tags = Vec::new();
        for (i, delay_ns) in [10, 20, 30].into_iter().enumerate() {
            match unwrap(&mut packet).unwrap() {
                ClearHop::Forward {
                    next_hop,
                    delay_ns: d,
                    replay_tag,
                } => {
                    assert_eq!(next_hop, [i as u8 + 2; 32]);
                    assert_eq!(d, delay_ns);
                    tags.push(replay_tag);
                }
                other => panic!("{other:?}"),
            }
        }
        match unwrap(&mut packet).unwrap() {
            ClearHop::Final {
                destination: d,
                identifier,
                replay_tag,
            } => {
                assert_eq!((d, identifier), ([9; 32], [8; 16]));
                tags.push(replay_tag);
            }
            other => panic!("{other:?}"),
        }
        tags.sort();
        tags.dedup();
        assert_eq!(tags.len(), 4);
        assert!(unwrap(&mut packet).is_err());
        let plaintext = recover_plaintext(&packet[HEADER_SIZE..]).unwrap();
        assert_eq!(plaintext, b"hello");
        assert!(unwrap(&mut packet[..100]).is_err());
    }

    #[test]
    fn content_round_trips_at_the_sealed_size() {
        let fragment = Fragment {
            header: FragmentHeader {
                message_id: 7,
                index: 0,
                count: 1,
                flags: 0,
                len: 3,
            },
            data: vec![1, 2, 3],
        };
        let content = seal_content(&fragment, PacketSize::Regular).unwrap();
        assert_eq!(content.len(), forward_content_len(PacketSize::Regular));
        assert_eq!(open_content(&content).unwrap(), fragment);
        assert!(open_content(&content[..10]).is_err());
    }
}

//! What a gateway sees in a final-hop Sphinx payload, and what it hands to the client.
//!
//! Forward packets (identifier all zero) of every size but `Ack` carry, at the start of the
//! recovered plaintext, a SURB-ACK the recipient's gateway sends on at once (as in Nym):
//! ```text
//! first_hop (32, Nym node address; all zero = no ACK) ‖ ack packet (386, an Ack-size Sphinx
//! packet routed back to the sender) ‖ content (opaque to the gateway, end-to-end encrypted)
//! ```
//! `Ack`-size packets carry a 21-byte plaintext the sender's client recognises. Reply packets
//! (built from a SURB: identifier = the SURB id, not all zero) are not plaintext at the final
//! hop (v260 SURBs: the SURB's creator removes the last layers), so the gateway hands the raw
//! payload over with the identifier. Destination all zero = drop cover: counted and dropped.

use lethe_crypto::framing::PacketSize;

pub const SURB_ACK_ADDRESS_BYTES: usize = 32;
pub const ACK_PACKET_BYTES: usize = PacketSize::Ack.packet_len();
pub const SURB_ACK_BYTES: usize = SURB_ACK_ADDRESS_BYTES + ACK_PACKET_BYTES;
/// Plaintext of an ACK packet.
pub const ACK_CONTENT_BYTES: usize = PacketSize::Ack.plaintext_len();
/// The destination address of drop-cover packets.
pub const DROP_COVER_DESTINATION: [u8; 32] = [0u8; 32];

const _: () = assert!(ACK_PACKET_BYTES == 386);
const _: () = assert!(SURB_ACK_BYTES < PacketSize::Regular.plaintext_len());

/// Content bytes available to a client in a forward packet of `size` (after the SURB-ACK).
pub const fn content_bytes(size: PacketSize) -> usize {
    size.plaintext_len() - SURB_ACK_BYTES
}

/// A forward packet's recovered plaintext, split.
pub struct ForwardPlaintext<'a> {
    /// `None` when the sender asked for no ACK (first-hop address all zero).
    pub ack: Option<(&'a [u8; SURB_ACK_ADDRESS_BYTES], &'a [u8])>,
    pub content: &'a [u8],
}

/// Splits a recovered forward plaintext; `None` if it is too short to hold a SURB-ACK.
pub fn split_forward(plaintext: &[u8]) -> Option<ForwardPlaintext<'_>> {
    let (address, rest) = plaintext.split_first_chunk::<SURB_ACK_ADDRESS_BYTES>()?;
    let (ack_packet, content) = rest.split_at_checked(ACK_PACKET_BYTES)?;
    let ack = if address.iter().all(|&b| b == 0) {
        None
    } else {
        Some((address, ack_packet))
    };
    Some(ForwardPlaintext { ack, content })
}

/// Writes the SURB-ACK prefix into `out` (at least [`SURB_ACK_BYTES`] long); `None` writes zeros.
pub fn write_surb_ack(
    out: &mut [u8],
    ack: Option<(&[u8; SURB_ACK_ADDRESS_BYTES], &[u8])>,
) -> Option<()> {
    let prefix = out.get_mut(..SURB_ACK_BYTES)?;
    match ack {
        None => prefix.fill(0),
        Some((address, packet)) => {
            if packet.len() != ACK_PACKET_BYTES {
                return None;
            }
            prefix[..SURB_ACK_ADDRESS_BYTES].copy_from_slice(address);
            prefix[SURB_ACK_ADDRESS_BYTES..].copy_from_slice(packet);
        }
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_round_trip() {
        let mut plaintext = vec![0u8; PacketSize::Regular.plaintext_len()];
        let address = [4u8; 32];
        let ack = [7u8; ACK_PACKET_BYTES];
        write_surb_ack(&mut plaintext, Some((&address, &ack))).unwrap();
        plaintext[SURB_ACK_BYTES] = 9;
        let split = split_forward(&plaintext).unwrap();
        let (a, p) = split.ack.unwrap();
        assert_eq!((a, p), (&address, &ack[..]));
        assert_eq!(split.content[0], 9);
        assert_eq!(split.content.len(), content_bytes(PacketSize::Regular));
        write_surb_ack(&mut plaintext, None).unwrap();
        assert!(split_forward(&plaintext).unwrap().ack.is_none());
        assert!(split_forward(&plaintext[..SURB_ACK_BYTES - 1]).is_none());
    }
}

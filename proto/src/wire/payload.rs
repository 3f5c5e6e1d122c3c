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

use std::net::SocketAddr;

use lethe_crypto::framing::PacketSize;
use lethe_crypto::sphinx::address;

use super::ProtoError;

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

/// A forward packet's SURB-ACK: the layer-1 mixnode to send it to and the ACK packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SurbAck<'a> {
    /// The Nym address of the first hop.
    pub first_hop: &'a [u8; SURB_ACK_ADDRESS_BYTES],
    /// An `Ack`-size Sphinx packet ([`ACK_PACKET_BYTES`]).
    pub packet: &'a [u8],
}

impl SurbAck<'_> {
    /// The first hop as a socket address; `None` if it does not decode (the ACK cannot go).
    pub fn next_hop(&self) -> Option<SocketAddr> {
        address::decode(self.first_hop).ok()
    }
}

/// A forward packet's recovered plaintext over its bytes, checked to hold a SURB-ACK:
/// `first_hop (32) ‖ ack packet (386) ‖ content`.
#[derive(Debug, Clone, Copy)]
pub struct ForwardPlaintextView<'a> {
    bytes: &'a [u8],
}

impl<'a> ForwardPlaintextView<'a> {
    pub fn new_checked(plaintext: &'a [u8]) -> Result<Self, ProtoError> {
        if plaintext.len() < SURB_ACK_BYTES {
            return Err(ProtoError::Malformed(
                "forward plaintext shorter than a SURB-ACK",
            ));
        }
        Ok(ForwardPlaintextView { bytes: plaintext })
    }

    /// `None` when the sender asked for no ACK (first-hop address all zero).
    pub fn surb_ack(&self) -> Option<SurbAck<'a>> {
        let (first_hop, rest) = self.bytes.split_first_chunk::<SURB_ACK_ADDRESS_BYTES>()?;
        if first_hop.iter().all(|&b| b == 0) {
            return None;
        }
        Some(SurbAck {
            first_hop,
            packet: rest.get(..ACK_PACKET_BYTES)?,
        })
    }

    /// The client's bytes (end-to-end encrypted), after the SURB-ACK.
    pub fn content(&self) -> &'a [u8] {
        self.bytes.get(SURB_ACK_BYTES..).unwrap_or_default()
    }
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
        let view = ForwardPlaintextView::new_checked(&plaintext).unwrap();
        let surb_ack = view.surb_ack().unwrap();
        assert_eq!((surb_ack.first_hop, surb_ack.packet), (&address, &ack[..]));
        assert_eq!(view.content()[0], 9);
        assert_eq!(view.content().len(), content_bytes(PacketSize::Regular));
        write_surb_ack(&mut plaintext, None).unwrap();
        assert!(ForwardPlaintextView::new_checked(&plaintext)
            .unwrap()
            .surb_ack()
            .is_none());
        // Exactly a SURB-ACK: no content; one byte less: refused.
        let bare = ForwardPlaintextView::new_checked(&plaintext[..SURB_ACK_BYTES]).unwrap();
        assert!(bare.content().is_empty());
        assert!(ForwardPlaintextView::new_checked(&plaintext[..SURB_ACK_BYTES - 1]).is_err());
    }
}

//! The destination gateway's decision on a packet at its final hop, free of I/O.
//!
//! The engine hands the gateway a final-hop packet (destination, identifier, header ‖
//! decrypted payload); [`decide`] reads it by the payload rules of [`crate::wire::payload`]
//! and says what becomes of it: drop cover is discarded, a payload that does not parse or a
//! recipient without a mailbox (or with a full one) is refused, anything else is mail for its
//! recipient, with the SURB-ACK to send on if the sender asked for one. The gateway's driver
//! (SQLite mailbox, live sessions), the in-memory gateways of the tests and the simulator all
//! decide here, so they cannot drift apart; what each does with the mail is its own.
//!
//! The SURB-ACK is part of the mail, not a transmit of its own: a driver that stores mail
//! durably sends the ACK only once the mail is stored, because an ACK tells the sender it need
//! not send again.

use lethe_crypto::framing::PacketSize;
use lethe_crypto::sphinx::{recover_plaintext, Packet};

use crate::wire::payload::{ForwardPlaintextView, SurbAck, DROP_COVER_DESTINATION};
use crate::wire::DeliveryKind;

/// Whether a recipient can take mail, as the driver's mailboxes know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Room {
    Available,
    /// No mailbox for this identity (it never completed a handshake with this gateway).
    Unknown,
    /// Its mailbox holds as many rows as it may.
    Full,
}

/// The driver's mailboxes, asked once per packet that parses.
pub trait Mailboxes {
    fn room(&self, recipient: &[u8; 32]) -> Room;
}

impl<F: Fn(&[u8; 32]) -> Room> Mailboxes for F {
    fn room(&self, recipient: &[u8; 32]) -> Room {
        self(recipient)
    }
}

/// What becomes of a final-hop packet.
#[derive(Debug, PartialEq, Eq)]
pub enum FinalHopOutcome<'a> {
    /// Drop cover (destination all zero): discard it.
    DropCover,
    Refused(Refusal),
    /// Store this for its recipient (or hand it to its live session).
    Deliver(Mail<'a>),
}

/// Why a final-hop packet is not delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The payload does not parse (not a Sphinx packet, or no SURB-ACK prefix).
    Malformed,
    UnknownRecipient,
    MailboxFull,
}

/// A delivery for a recipient, borrowing the packet's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mail<'a> {
    pub recipient: [u8; 32],
    pub kind: DeliveryKind,
    /// The SURB id of a reply; all zero otherwise.
    pub identifier: [u8; 16],
    pub bytes: &'a [u8],
    /// A forward packet's SURB-ACK, to send on once the mail is stored.
    pub ack: Option<SurbAck<'a>>,
}

/// Decides what becomes of the final-hop packet `packet` (header ‖ decrypted payload) for
/// `destination`, carrying `identifier`.
pub fn decide<'a, M: Mailboxes + ?Sized>(
    destination: &[u8; 32],
    identifier: &[u8; 16],
    packet: &'a [u8],
    mailboxes: &M,
) -> FinalHopOutcome<'a> {
    if *destination == DROP_COVER_DESTINATION {
        return FinalHopOutcome::DropCover;
    }
    let Some((kind, bytes, ack)) = open(identifier, packet) else {
        return FinalHopOutcome::Refused(Refusal::Malformed);
    };
    match mailboxes.room(destination) {
        Room::Unknown => FinalHopOutcome::Refused(Refusal::UnknownRecipient),
        Room::Full => FinalHopOutcome::Refused(Refusal::MailboxFull),
        Room::Available => FinalHopOutcome::Deliver(Mail {
            recipient: *destination,
            kind,
            identifier: *identifier,
            bytes,
            ack,
        }),
    }
}

/// The payload rules: an ACK-size packet's plaintext is an ACK; a packet with an identifier
/// is a reply, handed over raw (its creator removes the last layers); anything else is a
/// forward packet's plaintext, a SURB-ACK and content.
fn open<'a>(
    identifier: &[u8; 16],
    packet: &'a [u8],
) -> Option<(DeliveryKind, &'a [u8], Option<SurbAck<'a>>)> {
    let payload_len = Packet::new_checked(packet).ok()?.payload().len();
    let payload = packet.get(packet.len().checked_sub(payload_len)?..)?;
    if packet.len() == PacketSize::Ack.packet_len() {
        let plaintext = recover_plaintext(payload).ok()?;
        return Some((DeliveryKind::Ack, plaintext, None));
    }
    if *identifier != [0u8; 16] {
        return Some((DeliveryKind::Reply, payload, None));
    }
    let forward = ForwardPlaintextView::new_checked(recover_plaintext(payload).ok()?).ok()?;
    Some((DeliveryKind::Message, forward.content(), forward.surb_ack()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::payload::{write_surb_ack, SURB_ACK_BYTES};
    use lethe_crypto::sphinx::{self, address, Destination, Hop, PacketSpec, RouteHop, Version};
    use x25519_dalek::{PublicKey, StaticSecret};

    /// A one-hop packet to a gateway key, unwrapped as the engine would: (destination,
    /// identifier, header ‖ decrypted payload).
    fn final_hop(
        size: PacketSize,
        destination: [u8; 32],
        identifier: [u8; 16],
        message: &[u8],
    ) -> ([u8; 32], [u8; 16], Vec<u8>) {
        let secret = StaticSecret::from([7u8; 32]);
        let route = [RouteHop {
            address: address::encode(&"127.0.0.1:1789".parse().unwrap()),
            public_key: PublicKey::from(&secret).to_bytes(),
        }];
        let destination = Destination {
            address: destination,
            identifier,
        };
        let spec = PacketSpec {
            route: &route,
            delays_ns: &[0],
            destination: &destination,
            version: Version::CURRENT,
        };
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(3);
        let mut bytes = sphinx::create(message, size.payload_len(), &spec, None, &mut rng).unwrap();
        let mut packet = Packet::new_checked(&mut bytes[..]).unwrap();
        let processed = sphinx::process(&mut packet, &secret).unwrap();
        let Hop::Final {
            destination,
            identifier,
        } = processed.hop
        else {
            panic!("not a final hop");
        };
        (destination, identifier, bytes)
    }

    fn everyone(_: &[u8; 32]) -> Room {
        Room::Available
    }

    fn decide_hop<'a>(hop: &'a ([u8; 32], [u8; 16], Vec<u8>), room: Room) -> FinalHopOutcome<'a> {
        decide(&hop.0, &hop.1, &hop.2, &|_: &[u8; 32]| room)
    }

    #[test]
    fn decides_by_the_payload_rules() {
        let client = [5u8; 32];
        let cover = final_hop(PacketSize::Regular, [0; 32], [0; 16], &[0; SURB_ACK_BYTES]);
        assert_eq!(
            decide(&cover.0, &cover.1, &cover.2, &everyone),
            FinalHopOutcome::DropCover
        );

        let ack = final_hop(PacketSize::Ack, client, [0; 16], &[9; 21]);
        assert_eq!(
            decide_hop(&ack, Room::Available),
            FinalHopOutcome::Deliver(Mail {
                recipient: client,
                kind: DeliveryKind::Ack,
                identifier: [0; 16],
                bytes: &[9; 21],
                ack: None
            })
        );

        let reply = final_hop(PacketSize::Regular, client, [1; 16], b"opaque");
        match decide_hop(&reply, Room::Available) {
            FinalHopOutcome::Deliver(mail) => {
                assert_eq!(mail.kind, DeliveryKind::Reply);
                assert_eq!(mail.identifier, [1; 16]);
                assert_eq!(mail.bytes.len(), PacketSize::Regular.payload_len());
                assert!(mail.ack.is_none());
            }
            other => panic!("{other:?}"),
        }

        let first_hop = address::encode(&"127.0.0.1:4000".parse().unwrap());
        let ack_packet = vec![3u8; PacketSize::Ack.packet_len()];
        let mut message = vec![0u8; SURB_ACK_BYTES + 5];
        write_surb_ack(&mut message, Some((&first_hop, &ack_packet))).unwrap();
        message[SURB_ACK_BYTES..].copy_from_slice(b"hello");
        let forward = final_hop(PacketSize::Regular, client, [0; 16], &message);
        let FinalHopOutcome::Deliver(mail) = decide_hop(&forward, Room::Available) else {
            panic!("not delivered");
        };
        assert_eq!(
            (mail.kind, mail.bytes),
            (DeliveryKind::Message, &b"hello"[..])
        );
        let surb_ack = mail.ack.unwrap();
        assert_eq!(
            (surb_ack.first_hop, surb_ack.packet),
            (&first_hop, &ack_packet[..])
        );
        assert_eq!(surb_ack.next_hop(), Some("127.0.0.1:4000".parse().unwrap()));

        // The recipient's mailbox decides only once the packet parses.
        for (room, refusal) in [
            (Room::Unknown, Refusal::UnknownRecipient),
            (Room::Full, Refusal::MailboxFull),
        ] {
            assert_eq!(
                decide_hop(&forward, room),
                FinalHopOutcome::Refused(refusal)
            );
            assert_eq!(decide_hop(&cover, room), FinalHopOutcome::DropCover);
        }

        // Too short to hold a SURB-ACK, and garbage bytes.
        let short = final_hop(PacketSize::Regular, client, [0; 16], b"short");
        let garbage = (client, [0; 16], vec![1; 20]);
        for malformed in [&short, &garbage] {
            assert_eq!(
                decide_hop(malformed, Room::Unknown),
                FinalHopOutcome::Refused(Refusal::Malformed)
            );
        }
    }
}

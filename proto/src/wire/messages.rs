//! Messages inside an established session (the plaintext of one sealed WebSocket message).
//!
//! ```text
//! client → gateway
//!   0x10 Forward     first_hop(32, Nym node address) ‖ Sphinx packet (a Nym packet size)
//!   0x11 Confirm     count(u16 BE) ‖ count × delivery id (u64 BE)   — "handled, delete it"
//!   0x12 Credential  credential bytes (bandwidth credential; see the issuer)
//! gateway → client
//!   0x20 Welcome     stored(u32 BE): messages waiting in the mailbox
//!   0x21 Deliver     id(u64 BE) ‖ kind(u8) ‖ identifier(16) ‖ bytes
//!   0x22 Error       code(u8) ‖ UTF-8 text
//!   0x23 Bandwidth   remaining bytes (u64 BE)
//! ```

use lethe_crypto::framing::PacketSize;

use super::ProtoError;

const FORWARD: u8 = 0x10;
const CONFIRM: u8 = 0x11;
const CREDENTIAL: u8 = 0x12;
const WELCOME: u8 = 0x20;
const DELIVER: u8 = 0x21;
const ERROR: u8 = 0x22;
const BANDWIDTH: u8 = 0x23;
pub use crate::limits::CONFIRM_IDS_MAX;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientMessage {
    /// Send `packet` to the layer-1 mixnode at `first_hop` (the gateway does not unwrap it).
    Forward {
        first_hop: [u8; 32],
        packet: Vec<u8>,
    },
    /// The client has durably handled these deliveries: the gateway may delete them.
    Confirm {
        ids: Vec<u64>,
    },
    Credential {
        bytes: Vec<u8>,
    },
}

/// What a delivered payload is (see [`super::payload`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum DeliveryKind {
    /// Content of a forward packet (SURB-ACK removed).
    Message = 0,
    /// The plaintext of an ACK packet.
    Ack = 1,
    /// The raw payload of a SURB reply; `identifier` names the SURB.
    Reply = 2,
}

impl DeliveryKind {
    pub fn from_byte(byte: u8) -> Option<DeliveryKind> {
        match byte {
            0 => Some(DeliveryKind::Message),
            1 => Some(DeliveryKind::Ack),
            2 => Some(DeliveryKind::Reply),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GatewayMessage {
    Welcome {
        stored: u32,
    },
    Deliver {
        id: u64,
        kind: DeliveryKind,
        identifier: [u8; 16],
        bytes: Vec<u8>,
    },
    Error {
        code: u8,
        text: String,
    },
    Bandwidth {
        remaining_bytes: u64,
    },
}

/// Error codes of [`GatewayMessage::Error`].
pub mod error_code {
    pub const MALFORMED: u8 = 1;
    pub const NOT_LAYER1: u8 = 2;
    pub const OVERLOADED: u8 = 3;
    pub const NO_BANDWIDTH: u8 = 4;
    pub const BAD_CREDENTIAL: u8 = 5;
}

impl ClientMessage {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            ClientMessage::Forward { first_hop, packet } => {
                let mut out = Vec::with_capacity(1 + 32 + packet.len());
                out.push(FORWARD);
                out.extend_from_slice(first_hop);
                out.extend_from_slice(packet);
                out
            }
            ClientMessage::Confirm { ids } => {
                let ids = &ids[..ids.len().min(CONFIRM_IDS_MAX)];
                let mut out = Vec::with_capacity(3 + 8 * ids.len());
                out.push(CONFIRM);
                out.extend_from_slice(&(ids.len() as u16).to_be_bytes());
                for id in ids {
                    out.extend_from_slice(&id.to_be_bytes());
                }
                out
            }
            ClientMessage::Credential { bytes } => {
                let mut out = Vec::with_capacity(1 + bytes.len());
                out.push(CREDENTIAL);
                out.extend_from_slice(bytes);
                out
            }
        }
    }

    /// An owned copy of a message checked by [`ClientMessageView::new_checked`].
    pub fn decode(bytes: &[u8]) -> Result<ClientMessage, ProtoError> {
        Ok(match ClientMessageView::new_checked(bytes)? {
            ClientMessageView::Forward(forward) => ClientMessage::Forward {
                first_hop: *forward.first_hop(),
                packet: forward.packet().to_vec(),
            },
            ClientMessageView::Confirm(confirm) => ClientMessage::Confirm {
                ids: confirm.ids().collect(),
            },
            ClientMessageView::Credential(bytes) => ClientMessage::Credential {
                bytes: bytes.to_vec(),
            },
        })
    }
}

impl GatewayMessage {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            GatewayMessage::Welcome { stored } => {
                let mut out = vec![WELCOME];
                out.extend_from_slice(&stored.to_be_bytes());
                out
            }
            GatewayMessage::Deliver {
                id,
                kind,
                identifier,
                bytes,
            } => {
                let mut out = Vec::with_capacity(1 + 8 + 1 + 16 + bytes.len());
                out.push(DELIVER);
                out.extend_from_slice(&id.to_be_bytes());
                out.push(*kind as u8);
                out.extend_from_slice(identifier);
                out.extend_from_slice(bytes);
                out
            }
            GatewayMessage::Error { code, text } => {
                let mut out = vec![ERROR, *code];
                out.extend_from_slice(text.as_bytes());
                out
            }
            GatewayMessage::Bandwidth { remaining_bytes } => {
                let mut out = vec![BANDWIDTH];
                out.extend_from_slice(&remaining_bytes.to_be_bytes());
                out
            }
        }
    }

    /// An owned copy of a message checked by [`GatewayMessageView::new_checked`].
    pub fn decode(bytes: &[u8]) -> Result<GatewayMessage, ProtoError> {
        Ok(match GatewayMessageView::new_checked(bytes)? {
            GatewayMessageView::Welcome { stored } => GatewayMessage::Welcome { stored },
            GatewayMessageView::Deliver(deliver) => GatewayMessage::Deliver {
                id: deliver.id(),
                kind: deliver.kind(),
                identifier: *deliver.identifier(),
                bytes: deliver.bytes().to_vec(),
            },
            GatewayMessageView::Error { code, text } => GatewayMessage::Error {
                code,
                text: String::from_utf8_lossy(text).into_owned(),
            },
            GatewayMessageView::Bandwidth { remaining_bytes } => {
                GatewayMessage::Bandwidth { remaining_bytes }
            }
        })
    }
}

/// A client message over its bytes, checked: the kind known, every length right.
#[derive(Debug, Clone, Copy)]
pub enum ClientMessageView<'a> {
    Forward(ForwardView<'a>),
    Confirm(ConfirmView<'a>),
    /// The credential's bytes (parsed by the admission code).
    Credential(&'a [u8]),
}

impl<'a> ClientMessageView<'a> {
    pub fn new_checked(bytes: &'a [u8]) -> Result<Self, ProtoError> {
        match bytes.first() {
            None => Err(ProtoError::Malformed("empty message")),
            Some(&FORWARD) => ForwardView::new_checked(bytes).map(ClientMessageView::Forward),
            Some(&CONFIRM) => ConfirmView::new_checked(bytes).map(ClientMessageView::Confirm),
            Some(&CREDENTIAL) => Ok(ClientMessageView::Credential(&bytes[1..])),
            Some(_) => Err(ProtoError::Malformed("unknown client message kind")),
        }
    }
}

/// `Forward`: `0x10 ‖ first_hop (32) ‖ Sphinx packet` of a Nym packet size.
#[derive(Debug, Clone, Copy)]
pub struct ForwardView<'a> {
    first_hop: &'a [u8; 32],
    packet: &'a [u8],
    size: PacketSize,
}

impl<'a> ForwardView<'a> {
    pub fn new_checked(bytes: &'a [u8]) -> Result<Self, ProtoError> {
        let body = strip_kind(bytes, FORWARD, "not a forward")?;
        let (first_hop, packet) = body
            .split_first_chunk::<32>()
            .ok_or(ProtoError::Malformed("short forward"))?;
        let size = PacketSize::from_sphinx_packet_len(packet.len())
            .ok_or(ProtoError::Malformed("not a Sphinx packet size"))?;
        Ok(ForwardView {
            first_hop,
            packet,
            size,
        })
    }

    /// The Nym address of the layer-1 mixnode to send the packet to.
    pub fn first_hop(&self) -> &'a [u8; 32] {
        self.first_hop
    }

    pub fn packet(&self) -> &'a [u8] {
        self.packet
    }

    pub fn packet_size(&self) -> PacketSize {
        self.size
    }
}

/// `Confirm`: `0x11 ‖ count (u16 BE) ‖ count × delivery id (u64 BE)`, at most
/// [`CONFIRM_IDS_MAX`] ids.
#[derive(Debug, Clone, Copy)]
pub struct ConfirmView<'a> {
    ids: &'a [u8],
}

impl<'a> ConfirmView<'a> {
    pub fn new_checked(bytes: &'a [u8]) -> Result<Self, ProtoError> {
        let body = strip_kind(bytes, CONFIRM, "not a confirm")?;
        let (count, ids) = body
            .split_first_chunk::<2>()
            .ok_or(ProtoError::Malformed("short confirm"))?;
        let count = usize::from(u16::from_be_bytes(*count));
        if count > CONFIRM_IDS_MAX || ids.len() != count * 8 {
            return Err(ProtoError::Malformed("confirm length"));
        }
        Ok(ConfirmView { ids })
    }

    pub fn len(&self) -> usize {
        self.ids.len() / 8
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The delivery ids, in the order sent.
    pub fn ids(&self) -> impl Iterator<Item = u64> + 'a {
        self.ids
            .chunks_exact(8)
            .filter_map(|c| <[u8; 8]>::try_from(c).ok())
            .map(u64::from_be_bytes)
    }
}

/// A gateway message over its bytes, checked: the kind known, every length right.
#[derive(Debug, Clone, Copy)]
pub enum GatewayMessageView<'a> {
    Welcome {
        stored: u32,
    },
    Deliver(DeliverView<'a>),
    /// `text` is what the gateway sent (UTF-8 unless it misbehaves).
    Error {
        code: u8,
        text: &'a [u8],
    },
    Bandwidth {
        remaining_bytes: u64,
    },
}

impl<'a> GatewayMessageView<'a> {
    pub fn new_checked(bytes: &'a [u8]) -> Result<Self, ProtoError> {
        let (&kind, body) = bytes
            .split_first()
            .ok_or(ProtoError::Malformed("empty message"))?;
        match kind {
            WELCOME => {
                let stored = <[u8; 4]>::try_from(body)
                    .map_err(|_| ProtoError::Malformed("welcome length"))?;
                Ok(GatewayMessageView::Welcome {
                    stored: u32::from_be_bytes(stored),
                })
            }
            DELIVER => DeliverView::new_checked(bytes).map(GatewayMessageView::Deliver),
            ERROR => {
                let (&code, text) = body
                    .split_first()
                    .ok_or(ProtoError::Malformed("short error"))?;
                Ok(GatewayMessageView::Error { code, text })
            }
            BANDWIDTH => {
                let remaining = <[u8; 8]>::try_from(body)
                    .map_err(|_| ProtoError::Malformed("bandwidth length"))?;
                Ok(GatewayMessageView::Bandwidth {
                    remaining_bytes: u64::from_be_bytes(remaining),
                })
            }
            _ => Err(ProtoError::Malformed("unknown gateway message kind")),
        }
    }
}

/// `Deliver`: `0x21 ‖ id (u64 BE) ‖ kind (u8) ‖ identifier (16) ‖ bytes`.
#[derive(Debug, Clone, Copy)]
pub struct DeliverView<'a> {
    id: &'a [u8; 8],
    kind: DeliveryKind,
    identifier: &'a [u8; 16],
    bytes: &'a [u8],
}

impl<'a> DeliverView<'a> {
    pub fn new_checked(bytes: &'a [u8]) -> Result<Self, ProtoError> {
        const SHORT: ProtoError = ProtoError::Malformed("short deliver");
        let body = strip_kind(bytes, DELIVER, "not a deliver")?;
        let (id, rest) = body.split_first_chunk::<8>().ok_or(SHORT)?;
        let (&kind, rest) = rest.split_first().ok_or(SHORT)?;
        let (identifier, bytes) = rest.split_first_chunk::<16>().ok_or(SHORT)?;
        let kind = DeliveryKind::from_byte(kind).ok_or(ProtoError::Malformed("delivery kind"))?;
        Ok(DeliverView {
            id,
            kind,
            identifier,
            bytes,
        })
    }

    /// The mailbox id the client confirms.
    pub fn id(&self) -> u64 {
        u64::from_be_bytes(*self.id)
    }

    pub fn kind(&self) -> DeliveryKind {
        self.kind
    }

    /// The SURB id of a reply; zero otherwise.
    pub fn identifier(&self) -> &'a [u8; 16] {
        self.identifier
    }

    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }
}

/// The body after the kind byte, if the kind is `kind`.
fn strip_kind<'a>(bytes: &'a [u8], kind: u8, wrong: &'static str) -> Result<&'a [u8], ProtoError> {
    match bytes.split_first() {
        None => Err(ProtoError::Malformed("empty message")),
        Some((&k, body)) if k == kind => Ok(body),
        Some(_) => Err(ProtoError::Malformed(wrong)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_messages_round_trip() {
        let messages = [
            ClientMessage::Forward {
                first_hop: [3; 32],
                packet: vec![1; PacketSize::Regular.packet_len()],
            },
            ClientMessage::Confirm {
                ids: vec![1, u64::MAX, 7],
            },
            ClientMessage::Credential { bytes: vec![5; 40] },
        ];
        for m in messages {
            assert_eq!(ClientMessage::decode(&m.encode()).unwrap(), m);
        }
    }

    #[test]
    fn gateway_messages_round_trip() {
        let messages = [
            GatewayMessage::Welcome { stored: 12 },
            GatewayMessage::Deliver {
                id: 99,
                kind: DeliveryKind::Reply,
                identifier: [8; 16],
                bytes: vec![4; 100],
            },
            GatewayMessage::Error {
                code: error_code::NOT_LAYER1,
                text: "no".into(),
            },
            GatewayMessage::Bandwidth {
                remaining_bytes: 1 << 40,
            },
        ];
        for m in messages {
            assert_eq!(GatewayMessage::decode(&m.encode()).unwrap(), m);
        }
    }

    #[test]
    fn malformed_messages_are_errors() {
        for bytes in [
            &[][..],
            &[0xff],
            &[FORWARD, 1, 2],
            &[CONFIRM, 0, 2, 0],
            &[DELIVER, 0],
            &[WELCOME, 0, 0],
        ] {
            assert!(
                ClientMessage::decode(bytes).is_err() || GatewayMessage::decode(bytes).is_err()
            );
        }
        // A forward whose packet is not a Nym size.
        let mut forward = vec![FORWARD];
        forward.extend_from_slice(&[0u8; 32 + 100]);
        assert!(ClientMessage::decode(&forward).is_err());
    }

    #[test]
    fn forward_view_too_short_wrong_tag_exact_length() {
        let packet_len = PacketSize::Regular.packet_len();
        let message = ClientMessage::Forward {
            first_hop: [3; 32],
            packet: vec![1; packet_len],
        }
        .encode();
        let view = ForwardView::new_checked(&message).unwrap();
        assert_eq!(view.first_hop(), &[3; 32]);
        assert_eq!(view.packet().len(), packet_len);
        assert_eq!(view.packet_size(), PacketSize::Regular);
        // One byte short or long is not a Sphinx size; the header alone is too short.
        assert!(ForwardView::new_checked(&message[..message.len() - 1]).is_err());
        let mut long = message.clone();
        long.push(0);
        assert!(ForwardView::new_checked(&long).is_err());
        assert!(ForwardView::new_checked(&message[..1 + 31]).is_err());
        assert!(ForwardView::new_checked(&[]).is_err());
        let mut wrong = message.clone();
        wrong[0] = CONFIRM;
        assert!(ForwardView::new_checked(&wrong).is_err());
    }

    #[test]
    fn confirm_view_counts_and_bounds() {
        let message = ClientMessage::Confirm { ids: vec![5, 6] }.encode();
        let view = ConfirmView::new_checked(&message).unwrap();
        assert_eq!(
            (view.len(), view.ids().collect::<Vec<_>>()),
            (2, vec![5, 6])
        );
        assert!(ConfirmView::new_checked(&message[..message.len() - 1]).is_err());
        assert!(ConfirmView::new_checked(&[CONFIRM, 0]).is_err());
        assert!(ConfirmView::new_checked(&[CONFIRM, 0, 0])
            .unwrap()
            .is_empty());
        assert!(ConfirmView::new_checked(&[FORWARD, 0, 0]).is_err());
        // More ids than a confirm may carry, even with the bytes for them.
        let count = CONFIRM_IDS_MAX as u16 + 1;
        let mut over = vec![CONFIRM];
        over.extend_from_slice(&count.to_be_bytes());
        over.resize(3 + 8 * usize::from(count), 0);
        assert!(ConfirmView::new_checked(&over).is_err());
    }

    #[test]
    fn deliver_view_too_short_wrong_tag_exact_length() {
        let message = GatewayMessage::Deliver {
            id: 42,
            kind: DeliveryKind::Ack,
            identifier: [9; 16],
            bytes: Vec::new(),
        }
        .encode();
        assert_eq!(message.len(), 1 + 8 + 1 + 16);
        let view = DeliverView::new_checked(&message).unwrap();
        assert_eq!(
            (view.id(), view.kind(), view.identifier(), view.bytes()),
            (42, DeliveryKind::Ack, &[9; 16], &[][..])
        );
        assert!(DeliverView::new_checked(&message[..message.len() - 1]).is_err());
        let mut wrong = message.clone();
        wrong[0] = WELCOME;
        assert!(DeliverView::new_checked(&wrong).is_err());
        let mut kind = message.clone();
        kind[9] = 3;
        assert!(DeliverView::new_checked(&kind).is_err());
    }

    #[test]
    fn views_and_owned_decoding_agree_on_random_bytes() {
        // Bounded: a fixed seed, a fixed number of messages, each of bounded length.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let kinds = [
            FORWARD, CONFIRM, CREDENTIAL, WELCOME, DELIVER, ERROR, BANDWIDTH, 0xff,
        ];
        for _ in 0..20_000 {
            let len = (next() % 64) as usize;
            let mut bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if let Some(first) = bytes.first_mut() {
                *first = kinds[(next() % kinds.len() as u64) as usize];
            }
            let client = ClientMessageView::new_checked(&bytes);
            assert_eq!(client.is_ok(), ClientMessage::decode(&bytes).is_ok());
            if let Ok(message) = ClientMessage::decode(&bytes) {
                assert_eq!(message.encode(), bytes);
            }
            if let Ok(message) = GatewayMessage::decode(&bytes) {
                if !matches!(message, GatewayMessage::Error { .. }) {
                    assert_eq!(message.encode(), bytes);
                }
            }
        }
    }
}

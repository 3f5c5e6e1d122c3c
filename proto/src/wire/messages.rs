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

    pub fn decode(bytes: &[u8]) -> Result<ClientMessage, ProtoError> {
        let (&kind, body) = bytes
            .split_first()
            .ok_or(ProtoError::Malformed("empty message"))?;
        match kind {
            FORWARD => {
                let (first_hop, packet) = body
                    .split_first_chunk::<32>()
                    .ok_or(ProtoError::Malformed("short forward"))?;
                if PacketSize::from_sphinx_packet_len(packet.len()).is_none() {
                    return Err(ProtoError::Malformed("not a Sphinx packet size"));
                }
                Ok(ClientMessage::Forward {
                    first_hop: *first_hop,
                    packet: packet.to_vec(),
                })
            }
            CONFIRM => {
                let (count, rest) = body
                    .split_first_chunk::<2>()
                    .ok_or(ProtoError::Malformed("short confirm"))?;
                let count = usize::from(u16::from_be_bytes(*count));
                if count > CONFIRM_IDS_MAX || rest.len() != count * 8 {
                    return Err(ProtoError::Malformed("confirm length"));
                }
                let ids = rest
                    .chunks_exact(8)
                    .map(|c| {
                        let mut id = [0u8; 8];
                        id.copy_from_slice(c);
                        u64::from_be_bytes(id)
                    })
                    .collect();
                Ok(ClientMessage::Confirm { ids })
            }
            CREDENTIAL => Ok(ClientMessage::Credential {
                bytes: body.to_vec(),
            }),
            _ => Err(ProtoError::Malformed("unknown client message kind")),
        }
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

    pub fn decode(bytes: &[u8]) -> Result<GatewayMessage, ProtoError> {
        let (&kind, body) = bytes
            .split_first()
            .ok_or(ProtoError::Malformed("empty message"))?;
        match kind {
            WELCOME => {
                let stored: [u8; 4] = body
                    .try_into()
                    .map_err(|_| ProtoError::Malformed("welcome length"))?;
                Ok(GatewayMessage::Welcome {
                    stored: u32::from_be_bytes(stored),
                })
            }
            DELIVER => {
                let (id, rest) = body
                    .split_first_chunk::<8>()
                    .ok_or(ProtoError::Malformed("short deliver"))?;
                let (&kind, rest) = rest
                    .split_first()
                    .ok_or(ProtoError::Malformed("short deliver"))?;
                let (identifier, bytes) = rest
                    .split_first_chunk::<16>()
                    .ok_or(ProtoError::Malformed("short deliver"))?;
                Ok(GatewayMessage::Deliver {
                    id: u64::from_be_bytes(*id),
                    kind: DeliveryKind::from_byte(kind)
                        .ok_or(ProtoError::Malformed("delivery kind"))?,
                    identifier: *identifier,
                    bytes: bytes.to_vec(),
                })
            }
            ERROR => {
                let (&code, text) = body
                    .split_first()
                    .ok_or(ProtoError::Malformed("short error"))?;
                Ok(GatewayMessage::Error {
                    code,
                    text: String::from_utf8_lossy(text).into_owned(),
                })
            }
            BANDWIDTH => {
                let remaining: [u8; 8] = body
                    .try_into()
                    .map_err(|_| ProtoError::Malformed("bandwidth length"))?;
                Ok(GatewayMessage::Bandwidth {
                    remaining_bytes: u64::from_be_bytes(remaining),
                })
            }
            _ => Err(ProtoError::Malformed("unknown gateway message kind")),
        }
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
}

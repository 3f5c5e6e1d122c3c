//! Sizes and protocol constants of Nym's Sphinx (`sphinx-packet` 0.8), with their relations
//! checked at compile time. Nothing here depends on the framing: the framing's `PacketSize`
//! is built on these sizes and checks it agrees with them.

/// k: the security parameter in bytes.
pub const SECURITY_PARAMETER: usize = 16;
/// r: maximum number of hops.
pub const MAX_PATH_LENGTH: usize = 5;

pub const ALPHA_SIZE: usize = 32;
pub const MAC_SIZE: usize = SECURITY_PARAMETER;
pub const NODE_ADDRESS_SIZE: usize = 2 * SECURITY_PARAMETER;
pub const DESTINATION_SIZE: usize = 2 * SECURITY_PARAMETER;
pub const IDENTIFIER_SIZE: usize = SECURITY_PARAMETER;
pub const DELAY_SIZE: usize = 8;
pub const VERSION_SIZE: usize = 3;
pub const FLAG_SIZE: usize = 1;

pub const FLAG_FORWARD_HOP: u8 = 1;
pub const FLAG_FINAL_HOP: u8 = 2;

/// flag ‖ version ‖ address ‖ delay.
pub const NODE_META_INFO_SIZE: usize = FLAG_SIZE + VERSION_SIZE + NODE_ADDRESS_SIZE + DELAY_SIZE;
/// flag ‖ version ‖ destination ‖ identifier.
pub const FINAL_META_INFO_SIZE: usize =
    FLAG_SIZE + VERSION_SIZE + DESTINATION_SIZE + IDENTIFIER_SIZE;
/// One hop's share of beta: meta info ‖ next hop's MAC.
pub const SLOT_SIZE: usize = NODE_META_INFO_SIZE + MAC_SIZE;
/// beta.
pub const ROUTING_INFO_SIZE: usize = SLOT_SIZE * MAX_PATH_LENGTH;
/// What the part of beta passed on to the next hop keeps of the current beta.
pub const TRUNCATED_ROUTING_INFO_SIZE: usize = ROUTING_INFO_SIZE - SLOT_SIZE;
/// Keystream per hop: beta plus one slot of padding.
pub const KEYSTREAM_SIZE: usize = ROUTING_INFO_SIZE + SLOT_SIZE;

/// alpha ‖ MAC ‖ beta.
pub const HEADER_SIZE: usize = ALPHA_SIZE + MAC_SIZE + ROUTING_INFO_SIZE;

pub const STREAM_KEY_SIZE: usize = 16;
pub const MAC_KEY_SIZE: usize = SECURITY_PARAMETER;
pub const PAYLOAD_KEY_SIZE: usize = crate::lioness::KEY_SIZE;
pub const PAYLOAD_KEY_SEED_SIZE: usize = SECURITY_PARAMETER;
pub const BLINDING_FACTOR_SIZE: usize = 2 * SECURITY_PARAMETER;
pub const REPLAY_TAG_SIZE: usize = 2 * SECURITY_PARAMETER;
/// HKDF output split as stream key ‖ MAC key ‖ legacy payload key ‖ blinding ‖ replay tag.
pub const EXPANDED_SECRET_SIZE: usize =
    STREAM_KEY_SIZE + MAC_KEY_SIZE + PAYLOAD_KEY_SIZE + BLINDING_FACTOR_SIZE + REPLAY_TAG_SIZE;

/// 16 leading zero bytes and the `0x01` end-of-message marker.
pub const PAYLOAD_OVERHEAD_SIZE: usize = SECURITY_PARAMETER + 1;
/// Smallest payload we accept: Lioness needs a non-empty right half, which is stricter than
/// the framing overhead (`sphinx-packet` accepts 17..=32 bytes but then fails to process them).
pub const PAYLOAD_SIZE_MIN: usize = crate::lioness::BLOCK_SIZE_MIN;
/// Largest packet we accept: Nym's ExtendedPacket32.
pub const PACKET_SIZE_MAX: usize = PACKET_SIZE_EXTENDED32;

/// Nym's packet sizes (header + payload): its plaintext sizes plus the Sphinx overhead.
pub const PACKET_SIZE_REGULAR: usize = HEADER_SIZE + PAYLOAD_OVERHEAD_SIZE + 2048;
pub const PACKET_SIZE_ACK: usize = HEADER_SIZE + PAYLOAD_OVERHEAD_SIZE + 16 + 5;
pub const PACKET_SIZE_EXTENDED8: usize = HEADER_SIZE + PAYLOAD_OVERHEAD_SIZE + 8 * 1024;
pub const PACKET_SIZE_EXTENDED16: usize = HEADER_SIZE + PAYLOAD_OVERHEAD_SIZE + 16 * 1024;
pub const PACKET_SIZE_EXTENDED32: usize = HEADER_SIZE + PAYLOAD_OVERHEAD_SIZE + 32 * 1024;

pub const EXPANDED_SECRET_HKDF_SALT: &[u8] = b"";
pub const EXPANDED_SECRET_HKDF_INFO: &[u8] =
    b"Dwste mou enan moxlo arketa makru kai ena upomoxlio gia na ton topothetisw kai tha kinisw thn gh.";
pub const PAYLOAD_KEY_HKDF_SALT: &[u8] = b"sphinx-payload-key-V01-CS01-HKDF:SHA256-SALT";
pub const PAYLOAD_KEY_HKDF_INFO: &[u8] = b"sphinx-payload-key-V01-CS01-HKDF:SHA256-INFO";

const _: () = assert!(NODE_META_INFO_SIZE == 44);
const _: () = assert!(SLOT_SIZE == 60);
const _: () = assert!(ROUTING_INFO_SIZE == 300);
const _: () = assert!(KEYSTREAM_SIZE == 360);
const _: () = assert!(HEADER_SIZE == 348);
const _: () = assert!(EXPANDED_SECRET_SIZE == 288);
const _: () = assert!(EXPANDED_SECRET_SIZE <= 255 * 32); // HKDF-SHA256 output limit
const _: () = assert!(PAYLOAD_KEY_SIZE <= 255 * 32);
const _: () = assert!(FINAL_META_INFO_SIZE == 52);
// A 5-hop final slot still fits: 300 - 60·4 = 60 ≥ 52.
const _: () =
    assert!(ROUTING_INFO_SIZE - SLOT_SIZE * (MAX_PATH_LENGTH - 1) >= FINAL_META_INFO_SIZE);
const _: () = assert!(PAYLOAD_SIZE_MIN >= PAYLOAD_OVERHEAD_SIZE);
const _: () = assert!(PACKET_SIZE_ACK - HEADER_SIZE >= PAYLOAD_SIZE_MIN);
const _: () = assert!(PACKET_SIZE_REGULAR == HEADER_SIZE + PAYLOAD_OVERHEAD_SIZE + 2048);
const _: () = assert!(PACKET_SIZE_EXTENDED32 == HEADER_SIZE + PAYLOAD_OVERHEAD_SIZE + 32768);

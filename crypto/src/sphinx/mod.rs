//! Nym-compatible Sphinx, byte for byte with `sphinx-packet` 0.8 (versions 258/259/260, and
//! the legacy 1/257 on the full-payload-key path).
//!
//! Layout: zero-copy [`Packet`] view (`packet`), constants (`constants`), key schedule
//! (`keys`), routing-info primitives (`routing`), node processing in stages (`process`),
//! packet creation (`create`, O(n) key derivation in `fast_keys`), payload framing
//! (`payload`), reply blocks (`surb`) and Nym node addresses (`address`). `batch` and
//! `create_batch` process and build many packets at once, with every X25519 going through
//! one lane-parallel seam (`dh`). Processing allocates nothing; creation allocates only in the
//! `Vec`-returning conveniences.
//!
//! Where Lethe deliberately differs from `sphinx-packet` (only input no honest sender makes):
//! - an all-zero X25519 output (small-order alpha) is [`SphinxError::InvalidPoint`]; the crate
//!   expands the zero secret, which lets anyone forge accepted packets;
//! - versions other than 1/257/258/259/260, or a non-zero first version byte, are
//!   [`SphinxError::UnknownVersion`]; the crate would process them on the seed path;
//! - payloads shorter than one Lioness block (33 bytes) are truncated packets; the crate
//!   parses 17..=32-byte payloads and then fails to process them;
//! - [`recover_plaintext`] requires zeros after the 0x01 marker; the crate ignores them;
//! - [`address::decode`] requires zero padding ([`address::decode_ignoring_padding`] does not).
//!
//! On any processing error the buffer is left unchanged. After a final hop, beta holds the
//! decrypted routing information (destination, identifier, the sender's random padding).

pub mod address;
pub mod batch;
pub mod constants;
pub mod create;
pub mod create_batch;
mod dh;
pub mod error;
pub mod fast_keys;
pub mod keys;
pub mod packet;
pub mod payload;
pub mod process;
pub mod routing;
pub mod surb;
pub mod version;

pub use batch::{with_slice_packets, BatchProcessor, NodeSecrets, PacketBatch, ProcessResult};
pub use create::{create, create_into, Destination, PacketSpec, RouteHop};
pub use create_batch::{create_batch, CreateJob};
pub use error::SphinxError;
pub use fast_keys::{derive_hop_secrets_fast, hop_alphas};
pub use keys::{derive_hop_secrets, expand, ExpandedSecret, HopSecrets, RouteSecrets};
pub use packet::Packet;
pub use process::{
    blinding_input, check_dh_output, derive_expanded_secret, dh_input, hop_kind, process,
    process_with_keys, recover_plaintext, unwrap_in_place, verify_mac, Hop, HopKind, KeyChoice,
    Processed,
};
pub use surb::{build_surb, Surb, SurbKeys, SurbRecovery};
pub use version::Version;

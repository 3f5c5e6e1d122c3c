//! Nym-compatible Sphinx, byte for byte with `sphinx-packet` 0.8 (versions 258/259/260, and
//! the legacy 1/257 on the full-payload-key path).
//!
//! Layout: zero-copy [`Packet`] view (`packet`), constants (`constants`), key schedule
//! (`keys`), routing-info primitives (`routing`), node processing in stages (`process`),
//! packet creation (`create`), payload framing (`payload`), reply blocks (`surb`) and Nym
//! node addresses (`address`). Processing allocates nothing; creation allocates only in the
//! `Vec`-returning conveniences.

pub mod address;
pub mod constants;
pub mod create;
pub mod error;
pub mod keys;
pub mod packet;
pub mod payload;
pub mod process;
pub mod routing;
pub mod surb;
pub mod version;

pub use create::{create, create_into, Destination, PacketSpec, RouteHop};
pub use error::SphinxError;
pub use keys::{derive_hop_secrets, expand, ExpandedSecret, HopSecrets, RouteSecrets};
pub use packet::Packet;
pub use process::{
    blinding_input, check_dh_output, derive_expanded_secret, dh_input, hop_kind, process,
    process_with_keys, recover_plaintext, unwrap_in_place, verify_mac, Hop, HopKind, KeyChoice,
    Processed,
};
pub use surb::{build_surb, Surb, SurbKeys, SurbRecovery};
pub use version::Version;

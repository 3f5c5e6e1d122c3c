//! The directory: nodes register signed descriptors and send heartbeats; it assigns mixnodes
//! to layers and publishes a signed topology per epoch. `client` is what nodes and clients use
//! to talk to it; `announce` is the node side (register, then heartbeat); `server` is
//! `lethe directory` (its API is documented there).

pub mod admission;
pub mod announce;
pub mod client;
pub mod metrics;
pub mod registry;
pub mod server;
pub mod store;

pub use announce::{spawn_announcer, Announcer};
pub use server::DirectoryRunArgs;

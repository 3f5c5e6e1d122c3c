//! The directory: nodes register signed descriptors and send heartbeats; it assigns mixnodes
//! to layers and publishes a signed topology per epoch. `client` is what nodes and clients use
//! to talk to it.

pub mod client;

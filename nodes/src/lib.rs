//! Lethe's node front-ends. Each is a thin layer over `lethe-engine`.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod authority;
pub mod client;
pub mod credential_files;
pub mod credential_store;
pub mod directory;
pub mod gateway;
pub mod http;
pub mod issuance;
pub mod issuer;
pub mod keyfile;
pub mod limits;
pub mod lock;
pub mod logging;
pub mod mixnode;
pub mod node;
pub mod ops;
pub mod prometheus;
pub mod proto;
pub mod service;
pub mod sink;
pub mod socks;
pub mod supervise;
pub mod testnet;
pub mod topology;
pub mod trace;
pub mod ws;

//! Credential issuer (threshold blind bandwidth credentials) and its client.
//!
//! - [`keygen`]: trusted-dealer key shares for t-of-n issuers.
//! - [`server`]: one issuer's HTTP service (`issuer run`); the API is documented there.
//! - [`client`]: obtaining a credential from t of n issuers (`credential obtain`, `show`).

pub mod client;
pub mod files;
pub mod keygen;
pub mod metrics;
pub mod ratelimit;
pub mod server;

pub use client::{run_obtain, run_show, ObtainArgs, ShowArgs};
pub use keygen::KeygenArgs;
pub use server::IssuerRunArgs;

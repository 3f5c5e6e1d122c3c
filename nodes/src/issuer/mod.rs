//! Credential issuer (threshold blind bandwidth credentials). Obtaining a credential from t of
//! n issuers is `crate::issuance`; the key and verification-key files are
//! `crate::credential_files`.
//!
//! - [`keygen`]: trusted-dealer key shares for t-of-n issuers.
//! - [`server`]: one issuer's HTTP service (`issuer run`); the API is documented there.

pub mod keygen;
pub mod metrics;
pub mod ratelimit;
pub mod server;

pub use keygen::KeygenArgs;
pub use server::IssuerRunArgs;

//! Admission and bandwidth metering (enabled by `--verification-key` / `verification_key`).
//!
//! A client spends a Coconut bandwidth credential with `Credential{bytes}`: a
//! [`BandwidthSpend`] whose context is `lethe_proto::wire::admission::admission_context(gateway
//! identity, client identity)`, so a
//! spend captured on the way cannot be credited to anybody else nor at another gateway. The
//! proof is checked off the async workers (`spawn_blocking`, at most [`ADMISSION_VERIFY_CONCURRENCY`](crate::limits::ADMISSION_VERIFY_CONCURRENCY) at
//! once); then, in one SQLite transaction of the credentials database, its tag is recorded
//! and the bandwidth credited to the client identity (a double spend credits nothing).
//!
//! Sessions meter in memory and write charges through every [`FLUSH_EVERY_BYTES`] and at the
//! end of the session (a crash forgets at most that much per session, in the client's favour);
//! the balance is persistent, so it survives reconnects and restarts.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lethe_crypto::coconut::bandwidth::{
    bandwidth_parameters, verify_spend, BandwidthSpend, SpendTag, SpentTags,
};
use lethe_crypto::coconut::{CoconutError, Parameters, VerificationKey};
use tokio::sync::Semaphore;

use crate::credential_store::SqliteSpentTags;
use lethe_proto::wire::admission::admission_context;

use crate::limits::{ADMISSION_VERIFY_CONCURRENCY, ADMISSION_VERIFY_WAIT_MS};

use crate::credential_files::{read_verification_key, today};

pub use lethe_proto::limits::FLUSH_EVERY_BYTES;

/// Why a credential was not credited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Malformed, invalid proof, expired, or already spent: `BAD_CREDENTIAL`.
    Bad(String),
    /// No verification slot in time, or a storage failure: `OVERLOADED` (try again).
    Unavailable(&'static str),
}

/// The gateway's admission state, shared by the session tasks.
pub struct Admission {
    params: Parameters,
    vk: VerificationKey,
    gateway: [u8; 32],
    store: Mutex<SqliteSpentTags>,
    verifiers: Semaphore,
}

/// Collects the tag `verify_spend` would record, so the tag is recorded together with the
/// credit in one transaction.
#[derive(Default)]
struct TagOf(Option<SpendTag>);

impl SpentTags for TagOf {
    type Error = core::convert::Infallible;

    fn mark_spent(&mut self, tag: &SpendTag) -> Result<bool, Self::Error> {
        self.0 = Some(*tag);
        Ok(true)
    }
}

impl Admission {
    /// Loads the verification key and opens (creating) the credentials database.
    pub fn open(
        database: &Path,
        verification_key: &Path,
        gateway: [u8; 32],
    ) -> Result<Admission, String> {
        let params = bandwidth_parameters().map_err(|e| format!("coconut parameters: {e}"))?;
        let vk = read_verification_key(verification_key, &params).map_err(|e| format!("{e:#}"))?;
        let store =
            SqliteSpentTags::open(database).map_err(|e| format!("{}: {e}", database.display()))?;
        Ok(Admission {
            params,
            vk,
            gateway,
            store: Mutex::new(store),
            verifiers: Semaphore::new(ADMISSION_VERIFY_CONCURRENCY),
        })
    }

    fn with_store<T>(
        &self,
        f: impl FnOnce(&mut SqliteSpentTags) -> rusqlite::Result<T>,
    ) -> Result<T, ()> {
        let mut store = self.store.lock().map_err(|_| ())?;
        f(&mut store).map_err(|_| ())
    }

    /// The client's balance in the database.
    pub async fn balance(self: &Arc<Self>, client: [u8; 32]) -> Result<u64, ()> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.with_store(|s| s.balance(&client)))
            .await
            .map_err(|_| ())?
    }

    /// Writes a charge through; returns the new balance.
    pub async fn charge(self: &Arc<Self>, client: [u8; 32], bytes: u64) -> Result<u64, ()> {
        if bytes == 0 {
            return self.balance(client).await;
        }
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.with_store(|s| s.charge(&client, bytes)))
            .await
            .map_err(|_| ())?
    }

    /// Verifies a spend by `client` and credits it; returns the new balance.
    pub async fn credit(
        self: &Arc<Self>,
        client: [u8; 32],
        bytes: Vec<u8>,
    ) -> Result<u64, Refusal> {
        let permit = tokio::time::timeout(
            Duration::from_millis(ADMISSION_VERIFY_WAIT_MS),
            self.verifiers.acquire(),
        )
        .await
        .map_err(|_| Refusal::Unavailable("gateway busy verifying credentials: try again"))?
        .map_err(|_| Refusal::Unavailable("gateway stopping"))?;
        let this = self.clone();
        let result = tokio::task::spawn_blocking(move || this.verify_and_credit(&client, &bytes))
            .await
            .unwrap_or(Err(Refusal::Unavailable("credential verification failed")));
        drop(permit);
        result
    }

    fn verify_and_credit(&self, client: &[u8; 32], bytes: &[u8]) -> Result<u64, Refusal> {
        let spend = BandwidthSpend::from_bytes(bytes)
            .map_err(|e| Refusal::Bad(format!("malformed credential: {e}")))?;
        let context = admission_context(&self.gateway, client);
        let mut tag = TagOf::default();
        let credited = verify_spend(&self.params, &self.vk, &spend, &context, today(), &mut tag)
            .map_err(|e| match e {
                CoconutError::Expired => Refusal::Bad("credential expired".into()),
                e => Refusal::Bad(format!("credential refused: {e}")),
            })?;
        let tag = tag
            .0
            .ok_or(Refusal::Unavailable("credential verification failed"))?;
        match self.with_store(|s| s.spend_and_credit(&tag, client, credited)) {
            Ok(Some(balance)) => Ok(balance),
            Ok(None) => Err(Refusal::Bad("credential already spent".into())),
            Err(()) => Err(Refusal::Unavailable(
                "credential database unavailable: try again",
            )),
        }
    }
}

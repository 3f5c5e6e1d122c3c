//! The client's bandwidth credential ("wallet"): at most one unspent credential in the client
//! directory, spent at our gateway when the gateway asks for bandwidth.
//!
//! ```text
//! DIR/credential          unspent credential (`lethe credential obtain` output, 0600)
//! DIR/verification.key    the issuers' aggregated verification key (to build spends)
//! DIR/credential.spent    the last credential the gateway credited
//! DIR/credential.refused  the last credential the gateway refused (invalid, expired, spent)
//! ```
//!
//! When it is spent: a gateway with admission on sends `Bandwidth{remaining}` right after
//! `Welcome`; the client spends its credential when that balance (or any later report) is
//! below [`LOW_WATER_BYTES`], or when a forward is refused with `NO_BANDWIDTH`. A gateway with
//! open admission never reports a balance, so the credential is kept for one that needs it.
//! The file is moved aside only once the gateway answers (credited or refused): a spend lost
//! with a dropped connection is sent again on the next session (and if it had been credited
//! after all, the gateway refuses the repeat and the balance is there anyway).
//! To top up, put a new credential in `DIR/credential`
//! (`lethe credential obtain ... --out DIR/credential`).
//!
//! A wallet can also hold credentials in memory ([`Wallet::from_credentials`]: loadgen's
//! senders), spent in order; spent and refused ones are simply dropped.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};

use lethe_crypto::coconut::bandwidth::{bandwidth_parameters, BandwidthCredential};
use lethe_crypto::coconut::{Parameters, VerificationKey};
use lethe_proto::wire::admission::admission_context;
use zeroize::Zeroizing;

use crate::credential_files::{iso_date, read_small, read_verification_key};

pub const CREDENTIAL_FILE: &str = "credential";
pub const VERIFICATION_KEY_FILE: &str = "verification.key";
pub const SPENT_FILE: &str = "credential.spent";
pub const REFUSED_FILE: &str = "credential.refused";
pub use lethe_proto::loopix::payer::LOW_WATER_BYTES;

/// The credential of a client directory (or credentials held in memory).
pub struct Wallet {
    store: Store,
    params: Parameters,
    vk: VerificationKey,
    /// The credential to spend next: loaded lazily from `DIR/credential` (so a new one can be
    /// dropped in at any time), or the front of the in-memory queue.
    credential: Option<BandwidthCredential>,
}

/// Where a wallet's unspent credentials are.
enum Store {
    Dir(PathBuf),
    Memory(VecDeque<BandwidthCredential>),
}

impl Wallet {
    /// The wallet of `dir`, if it has a verification key (credentials are read when needed).
    pub fn open(dir: &Path) -> Result<Option<Wallet>, String> {
        let vk_path = dir.join(VERIFICATION_KEY_FILE);
        if !vk_path.exists() {
            return Ok(None);
        }
        let params = bandwidth_parameters().map_err(|e| format!("coconut parameters: {e}"))?;
        let vk = read_verification_key(&vk_path, &params).map_err(|e| format!("{e:#}"))?;
        Ok(Some(Wallet {
            store: Store::Dir(dir.to_path_buf()),
            params,
            vk,
            credential: None,
        }))
    }

    /// A wallet of `credentials` (spent in order) under the issuers' key `vk`; no files.
    pub fn from_credentials(
        vk: VerificationKey,
        credentials: Vec<BandwidthCredential>,
    ) -> Result<Wallet, String> {
        let params = bandwidth_parameters().map_err(|e| format!("coconut parameters: {e}"))?;
        Ok(Wallet {
            store: Store::Memory(credentials.into()),
            params,
            vk,
            credential: None,
        })
    }

    fn load(&mut self) -> Result<Option<&BandwidthCredential>, String> {
        if self.credential.is_none() {
            self.credential = match &mut self.store {
                Store::Dir(dir) => read_credential(&dir.join(CREDENTIAL_FILE))?,
                Store::Memory(queue) => queue.pop_front(),
            };
        }
        Ok(self.credential.as_ref())
    }

    /// Whether an unspent credential is available.
    pub fn has_credential(&mut self) -> bool {
        matches!(self.load(), Ok(Some(_)))
    }

    /// A spend of the unspent credential by `client` at `gateway` (`Ok(None)`: none left).
    /// Takes milliseconds of CPU: call it off the async workers.
    pub fn spend(
        &mut self,
        gateway: &[u8; 32],
        client: &[u8; 32],
    ) -> Result<Option<Vec<u8>>, String> {
        let context = admission_context(gateway, client);
        self.load()?;
        let Some(credential) = &self.credential else {
            return Ok(None);
        };
        let spend = credential
            .spend(&self.params, &self.vk, &context, &mut rand_core_06::OsRng)
            .map_err(|e| format!("spending the credential: {e}"))?;
        Ok(Some(spend.to_bytes()))
    }

    /// The gateway credited the credential: moved to `credential.spent`.
    pub fn mark_spent(&mut self) {
        self.retire(SPENT_FILE);
    }

    /// The gateway refused the credential: moved to `credential.refused`.
    pub fn mark_refused(&mut self) {
        self.retire(REFUSED_FILE);
    }

    fn retire(&mut self, to: &str) {
        self.credential = None;
        let Store::Dir(dir) = &self.store else {
            return; // in memory: the spent credential was taken off the queue when loaded
        };
        let from = dir.join(CREDENTIAL_FILE);
        if let Err(e) = std::fs::rename(&from, dir.join(to)) {
            tracing::error!(
                file = %from.display(),
                error = %e,
                "moving the credential aside failed"
            );
        }
    }
}

/// The credential in `path`, if the file exists.
fn read_credential(path: &Path) -> Result<Option<BandwidthCredential>, String> {
    if !path.exists() {
        return Ok(None);
    }
    let bytes = Zeroizing::new(read_small(path).map_err(|e| format!("{e:#}"))?);
    let credential = BandwidthCredential::from_bytes(&bytes)
        .map_err(|e| format!("{}: malformed credential: {e}", path.display()))?;
    Ok(Some(credential))
}

/// Installs a credential and the verification key in a client directory (both checked).
pub fn install(dir: &Path, credential: &[u8], verification_key: &Path) -> Result<(), String> {
    let params = bandwidth_parameters().map_err(|e| format!("coconut parameters: {e}"))?;
    let vk = read_verification_key(verification_key, &params).map_err(|e| format!("{e:#}"))?;
    let parsed = BandwidthCredential::from_bytes(credential)
        .map_err(|e| format!("malformed credential: {e}"))?;
    let vk_path = dir.join(VERIFICATION_KEY_FILE);
    if !vk_path.exists() {
        crate::keyfile::write_new(&vk_path, &vk.to_bytes(), 0o644)?;
    }
    crate::keyfile::write_new(&dir.join(CREDENTIAL_FILE), credential, 0o600)?;
    println!(
        "credential={} bandwidth_bytes={} expiry_day={} expiry_date={}",
        dir.join(CREDENTIAL_FILE).display(),
        parsed.bandwidth(),
        parsed.expiry(),
        iso_date(parsed.expiry())
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use lethe_crypto::coconut::bandwidth::{issue_bandwidth, request_bandwidth, verify_spend};
    use lethe_crypto::coconut::bandwidth::{BandwidthSpend, MemorySpentTags};
    use lethe_crypto::coconut::{aggregate_verification_keys, ttp_keygen};

    /// A 1-of-1 credential and its verification key.
    fn credential(params: &Parameters) -> (BandwidthCredential, VerificationKey) {
        let rng = &mut rand_core_06::OsRng;
        let shares = ttp_keygen(params, 1, 1, rng).unwrap();
        let vk =
            aggregate_verification_keys(&[(shares[0].index, &shares[0].verification)]).unwrap();
        let expiry = crate::credential_files::today() + 1;
        let (pending, request) = request_bandwidth(params, &vk, 5000, expiry, rng).unwrap();
        let blinded =
            issue_bandwidth(params, &vk, &shares[0].secret, &request, 5000, expiry).unwrap();
        let share = pending
            .unblind(shares[0].index, &shares[0].verification, &blinded)
            .unwrap();
        (pending.aggregate(params, &vk, &[share]).unwrap(), vk)
    }

    #[test]
    fn install_spend_and_retire() {
        let dir = std::env::temp_dir().join(format!("lethe-wallet-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let params = bandwidth_parameters().unwrap();
        let (cred, vk) = credential(&params);
        let vk_path = dir.join("issuers.vk");
        std::fs::write(&vk_path, vk.to_bytes()).unwrap();
        assert!(
            Wallet::open(&dir).unwrap().is_none(),
            "no verification key yet"
        );
        assert!(install(&dir, b"not a credential", &vk_path).is_err());
        install(&dir, &cred.to_bytes(), &vk_path).unwrap();
        let mut wallet = Wallet::open(&dir).unwrap().unwrap();
        assert!(wallet.has_credential());
        let (gateway, client) = ([1u8; 32], [2u8; 32]);
        let bytes = wallet.spend(&gateway, &client).unwrap().unwrap();
        let spend = BandwidthSpend::from_bytes(&bytes).unwrap();
        let today = crate::credential_files::today();
        let mut tags = MemorySpentTags::default();
        let ctx = admission_context(&gateway, &client);
        assert_eq!(
            verify_spend(&params, &vk, &spend, &ctx, today, &mut tags).unwrap(),
            5000
        );
        // Bound to the client: another client's context does not verify.
        let other = admission_context(&gateway, &[3u8; 32]);
        let bytes = wallet.spend(&gateway, &client).unwrap().unwrap();
        let spend = BandwidthSpend::from_bytes(&bytes).unwrap();
        assert!(verify_spend(&params, &vk, &spend, &other, today, &mut tags).is_err());
        wallet.mark_spent();
        assert!(!wallet.has_credential());
        assert!(wallet.spend(&gateway, &client).unwrap().is_none());
        assert!(dir.join(SPENT_FILE).exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn in_memory_wallet_spends_in_order_then_runs_dry() {
        let params = bandwidth_parameters().unwrap();
        let (first, vk) = credential(&params);
        let mut wallet = Wallet::from_credentials(vk.clone(), vec![first]).unwrap();
        let (gateway, client) = ([1u8; 32], [2u8; 32]);
        assert!(wallet.has_credential());
        let bytes = wallet.spend(&gateway, &client).unwrap().unwrap();
        let spend = BandwidthSpend::from_bytes(&bytes).unwrap();
        let mut tags = MemorySpentTags::default();
        let ctx = admission_context(&gateway, &client);
        let today = crate::credential_files::today();
        assert_eq!(
            verify_spend(&params, &vk, &spend, &ctx, today, &mut tags).unwrap(),
            5000
        );
        wallet.mark_spent();
        assert!(!wallet.has_credential());
        assert!(wallet.spend(&gateway, &client).unwrap().is_none());
        wallet.mark_refused(); // nothing to retire: no file is touched
    }
}

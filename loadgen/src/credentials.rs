//! Bandwidth credentials for loadgen's senders: obtained from the issuers before the run (the
//! nodes crate's `issuance::obtain`, every sender's in parallel) and held in one
//! in-memory [`Wallet`] per sender identity; the gateway driver spends them when a session
//! opens (see `gateway::prepay`).
//!
//! How many: a credential buys what the issuers grant (`lethe issuer run --bandwidth`, 1 GiB
//! by default); every sender gets enough to cover its share of the whole run
//! ([`budget_bytes`]), so no packet waits for a top-up (loadgen does not retransmit).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::limits::{
    CREDENTIALS_PER_SENDER_MAX, ISSUER_REQUEST_TIMEOUT_MS, OBTAIN_ATTEMPTS, OBTAIN_CONCURRENCY,
    OBTAIN_RETRY_PAUSE_MS_INITIAL,
};
use lethe_crypto::coconut::bandwidth::{bandwidth_parameters, BandwidthCredential};
use lethe_crypto::coconut::{Parameters, VerificationKey};
use lethe_nodes::client::credential::Wallet;
use lethe_nodes::credential_files::read_verification_key;
use lethe_nodes::issuance::{obtain, ObtainConfig};
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// Budget head-room over the estimated bytes (warm-up probes, rounding).
const BUDGET_SLACK: f64 = 1.1;

/// Where the credentials come from (`lethe testnet up`'s issuers, or --issuers ...).
#[derive(Clone, Debug)]
pub struct IssuerConfig {
    pub issuers: Vec<String>,
    pub threshold: usize,
    pub verification_key: PathBuf,
}

/// The report's `credentials`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CredentialInfo {
    /// Issuer URLs asked, and the shares a credential needs.
    pub issuers: u64,
    pub threshold: u64,
    /// Credentials obtained (all senders), and the wall time that took.
    pub obtained: u64,
    pub obtain_ms: f64,
    /// Bytes each credential grants.
    pub bandwidth_bytes_each: u64,
    /// Bytes the run was estimated to need per sender (what each sender's credentials cover).
    pub budget_bytes_per_sender: u64,
    /// Credentials the gateways credited, and refused (`BAD_CREDENTIAL`).
    pub spent: u64,
    pub refused: u64,
}

/// Every sender's wallet (index = sender), and what it took.
pub struct Obtained {
    pub wallets: Vec<Wallet>,
    pub info: CredentialInfo,
}

/// Bytes a sender forwards in a run of `packets_total` packets shared by `senders`, each
/// charged `charge_bytes` by its gateway, with [`BUDGET_SLACK`].
pub fn budget_bytes(packets_total: f64, senders: u32, charge_bytes: usize) -> u64 {
    let per_sender = (packets_total / f64::from(senders.max(1))).ceil() + 1.0;
    (per_sender * charge_bytes as f64 * BUDGET_SLACK).ceil() as u64
}

/// Obtains, for each of `senders`, credentials covering `budget_bytes` (at least one).
pub fn obtain_all(
    config: &IssuerConfig,
    senders: u32,
    budget_bytes: u64,
) -> Result<Obtained, String> {
    let started = Instant::now();
    let params = Arc::new(bandwidth_parameters().map_err(|e| format!("coconut parameters: {e}"))?);
    let master = read_verification_key(&config.verification_key, &params).map_err(|e| {
        format!(
            "verification key {}: {e:#}",
            config.verification_key.display()
        )
    })?;
    let obtain_config = Arc::new(ObtainConfig {
        issuers: config.issuers.clone(),
        threshold: config.threshold,
        master: master.clone(),
        timeout: Duration::from_millis(ISSUER_REQUEST_TIMEOUT_MS),
        trusted_shares: None,
    });
    // Its own runtime: the proofs and pairings take CPU, spread over both workers.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("credentials")
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    let senders = senders as usize;
    let mut credentials = runtime.block_on(obtain_many(&params, &obtain_config, senders))?;
    let bandwidth_each = credentials
        .first()
        .map(BandwidthCredential::bandwidth)
        .unwrap_or(0);
    let per_sender = credentials_needed(budget_bytes, bandwidth_each)?;
    let extra = senders * (per_sender as usize - 1);
    if extra > 0 {
        credentials.extend(runtime.block_on(obtain_many(&params, &obtain_config, extra))?);
    }
    let obtained = credentials.len() as u64;
    let wallets = deal(credentials, senders, &master)?;
    Ok(Obtained {
        wallets,
        info: CredentialInfo {
            issuers: config.issuers.len() as u64,
            threshold: config.threshold as u64,
            obtained,
            obtain_ms: started.elapsed().as_secs_f64() * 1e3,
            bandwidth_bytes_each: bandwidth_each,
            budget_bytes_per_sender: budget_bytes,
            spent: 0,
            refused: 0,
        },
    })
}

/// Credentials one sender needs to cover `budget_bytes` at `bandwidth_each` bytes each.
fn credentials_needed(budget_bytes: u64, bandwidth_each: u64) -> Result<u64, String> {
    if bandwidth_each == 0 {
        return Err("the issuers grant credentials of 0 bytes".into());
    }
    let needed = budget_bytes.div_ceil(bandwidth_each).max(1);
    if needed > CREDENTIALS_PER_SENDER_MAX {
        return Err(format!(
            "each sender would forward about {budget_bytes} bytes, and a credential grants \
             {bandwidth_each}: that is {needed} credentials per sender (at most \
             {CREDENTIALS_PER_SENDER_MAX}); lower --rate or --duration, or add --clients"
        ));
    }
    Ok(needed)
}

/// Credential `i` goes to sender `i % senders`.
fn deal(
    credentials: Vec<BandwidthCredential>,
    senders: usize,
    vk: &VerificationKey,
) -> Result<Vec<Wallet>, String> {
    let mut hands: Vec<Vec<BandwidthCredential>> = (0..senders).map(|_| Vec::new()).collect();
    for (index, credential) in credentials.into_iter().enumerate() {
        if let Some(hand) = hands.get_mut(index % senders.max(1)) {
            hand.push(credential);
        }
    }
    hands
        .into_iter()
        .map(|hand| Wallet::from_credentials(vk.clone(), hand))
        .collect()
}

/// `count` credentials, [`OBTAIN_CONCURRENCY`] at a time.
async fn obtain_many(
    params: &Arc<Parameters>,
    config: &Arc<ObtainConfig>,
    count: usize,
) -> Result<Vec<BandwidthCredential>, String> {
    let slots = Arc::new(Semaphore::new(OBTAIN_CONCURRENCY));
    let mut tasks = JoinSet::new();
    for _ in 0..count {
        let (params, config, slots) = (Arc::clone(params), Arc::clone(config), Arc::clone(&slots));
        tasks.spawn(async move {
            let _slot = slots.acquire().await.map_err(|e| e.to_string())?;
            obtain_one(&params, &config).await
        });
    }
    let mut credentials = Vec::with_capacity(count);
    while let Some(joined) = tasks.join_next().await {
        let credential = joined.map_err(|e| format!("obtaining a credential: {e}"))??;
        credentials.push(credential);
    }
    Ok(credentials)
}

/// One credential, tried [`OBTAIN_ATTEMPTS`] times.
async fn obtain_one(
    params: &Parameters,
    config: &ObtainConfig,
) -> Result<BandwidthCredential, String> {
    let mut pause = Duration::from_millis(OBTAIN_RETRY_PAUSE_MS_INITIAL);
    let mut attempt = 1;
    loop {
        match obtain(params, config).await {
            Ok(credential) => return Ok(credential),
            Err(e) if attempt >= OBTAIN_ATTEMPTS => {
                return Err(format!(
                    "obtaining a bandwidth credential from {} ({} of them needed): {e:#}",
                    config.issuers.join(","),
                    config.threshold
                ))
            }
            Err(_) => {
                tokio::time::sleep(pause).await;
                pause *= 2;
                attempt += 1;
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn budgets_cover_the_run_and_bound_the_credentials() {
        // 5000 packets over 2 senders, 2 KB each: 2501 x 2000 x 1.1.
        assert_eq!(budget_bytes(5000.0, 2, 2000), 5_502_200);
        assert_eq!(credentials_needed(5_502_200, 1 << 30).unwrap(), 1);
        assert_eq!(credentials_needed(3 << 30, 1 << 30).unwrap(), 3);
        assert_eq!(credentials_needed((3 << 30) + 1, 1 << 30).unwrap(), 4);
        assert!(credentials_needed(1 << 40, 1 << 30).is_err());
        assert!(credentials_needed(1, 0).is_err());
    }
}

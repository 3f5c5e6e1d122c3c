//! Coconut credential costs, and verification speed against nym-compact-ecash 2.0, in one run.
//!
//! Prints one JSON line; times are medians in microseconds. `verify_speedup` = Nym's
//! `Payment::spend_verify` (one ticket) / Lethe's per-credential time in a batch of 64. Both
//! sides verify in-memory values; `*_decode_us` report wire decoding separately. Rounds
//! alternate between the two so that noise from other processes hits both alike.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Instant;

use lethe_crypto::coconut::bandwidth::{
    bandwidth_parameters, issue_bandwidth, public_attributes, request_bandwidth,
    BandwidthCredential, BandwidthSpend,
};
use lethe_crypto::coconut::{
    aggregate_verification_keys, ttp_keygen, verify_batch, verify_credential, KeyShare, Parameters,
    PartialSignature, ShowItem, VerificationKey,
};
use nym_compact_ecash::scheme::{Payment, Wallet};
use nym_compact_ecash::tests::helpers::{
    generate_coin_indices_signatures, generate_expiration_date_signatures,
};
use nym_compact_ecash::{
    aggregate_verification_keys as nym_aggregate_vk, aggregate_wallets, generate_keypair_user,
    issue, issue_verify, ttp_keygen as nym_ttp_keygen, withdrawal_request, PartialWallet, PayInfo,
    SecretKeyAuth, VerificationKeyAuth,
};
use rand_core_06::OsRng;
use serde_json::json;

const T: usize = 7;
const N: usize = 10;
const BATCH: usize = 64;
const ROUNDS: usize = 11;
const BW: u64 = 200 * 1024 * 1024;
const EXPIRY: u32 = 20_000;
const CTX: &[u8] = b"gateway-identity|nonce-0001";

fn main() {
    let started = Instant::now();
    let lethe = Lethe::new();
    let nym = Nym::new();

    let mut m = Medians::default();
    let creds: Vec<BandwidthCredential> = (0..BATCH).map(|_| lethe.issue()).collect();
    let spends: Vec<BandwidthSpend> = creds
        .iter()
        .map(|c| c.spend(&lethe.params, &lethe.vk, CTX, &mut OsRng).unwrap())
        .collect();
    let public = public_attributes(BW, EXPIRY);
    let items: Vec<ShowItem<'_>> = spends
        .iter()
        .map(|s| ShowItem {
            theta: s.theta(),
            public: &public,
            context: CTX,
        })
        .collect();
    let wire: Vec<Vec<u8>> = spends.iter().map(BandwidthSpend::to_bytes).collect();
    let nym_wire = nym.payment.to_bytes();

    for round in 0..ROUNDS {
        // Alternate the order of the two contenders between rounds.
        let nym_first = round % 2 == 0;
        if nym_first {
            m.time("nym_verify", || nym.verify());
        }
        m.time_n("verify_batch64", BATCH, || {
            verify_batch(&lethe.params, &lethe.vk, &items).unwrap();
        });
        if !nym_first {
            m.time("nym_verify", || nym.verify());
        }
        m.time("nym_decode", || {
            Payment::try_from(&nym_wire[..]).unwrap();
        });
        // Short operations: 8 back-to-back calls per sample, so one preemption skews less.
        let some = (round * 8 % BATCH..).take(8).map(|i| i % BATCH);
        let some: Vec<usize> = some.collect();
        m.time_n("verify_one", some.len(), || {
            for &i in &some {
                verify_credential(&lethe.params, &lethe.vk, spends[i].theta(), &public, CTX)
                    .unwrap();
            }
        });
        m.time_n("decode", some.len(), || {
            for &i in &some {
                BandwidthSpend::from_bytes(&wire[i]).unwrap();
            }
        });
        m.time_n("show", some.len(), || {
            for &i in &some {
                creds[i]
                    .spend(&lethe.params, &lethe.vk, CTX, &mut OsRng)
                    .unwrap();
            }
        });
        let (pending, req) = m.time("request", || {
            request_bandwidth(&lethe.params, &lethe.vk, BW, EXPIRY, &mut OsRng).unwrap()
        });
        let k = &lethe.keys[round % N];
        m.time("issue_per_signer", || {
            issue_bandwidth(&lethe.params, &lethe.vk, &k.secret, &req, BW, EXPIRY).unwrap();
        });
        let blinded: Vec<_> = lethe.keys[..T]
            .iter()
            .map(|k| {
                issue_bandwidth(&lethe.params, &lethe.vk, &k.secret, &req, BW, EXPIRY).unwrap()
            })
            .collect();
        m.time("aggregate_t7", || {
            let shares: Vec<PartialSignature> = lethe.keys[..T]
                .iter()
                .zip(&blinded)
                .map(|(k, b)| pending.unblind(k.index, &k.verification, b).unwrap())
                .collect();
            pending
                .aggregate(&lethe.params, &lethe.vk, &shares)
                .unwrap()
        });
    }

    let per_cred = m.get("verify_batch64");
    let nym_verify = m.get("nym_verify");
    let line = json!({
        "bench": "credential-ratio",
        "library": "blstrs 0.7 (blst)",
        "threshold": format!("{T}-of-{N}"),
        "batch": BATCH,
        "rounds": ROUNDS,
        "request_us": m.get("request"),
        "issue_per_signer_us": m.get("issue_per_signer"),
        "aggregate_t7_us": m.get("aggregate_t7"),
        "show_us": m.get("show"),
        "verify_one_us": m.get("verify_one"),
        "verify_batch64_per_credential_us": per_cred,
        "spend_decode_us": m.get("decode"),
        "spend_bytes": wire[0].len(),
        "nym_ecash_verify_one_ticket_us": nym_verify,
        "nym_ecash_payment_decode_us": m.get("nym_decode"),
        "nym_ecash_payment_bytes": nym_wire.len(),
        "verify_speedup": round2(nym_verify / per_cred),
        "verify_speedup_single": round2(nym_verify / m.get("verify_one")),
        "verify_speedup_incl_decode": round2(
            (nym_verify + m.get("nym_decode")) / (per_cred + m.get("decode"))
        ),
        "wall_s": round2(started.elapsed().as_secs_f64()),
    });
    println!("{line}");
}

struct Lethe {
    params: Parameters,
    keys: Vec<KeyShare>,
    vk: VerificationKey,
}

impl Lethe {
    fn new() -> Self {
        let params = bandwidth_parameters().unwrap();
        let keys = ttp_keygen(&params, T, N, &mut OsRng).unwrap();
        // Any t shares give the master key; use the last t to exercise interpolation.
        let shares: Vec<(u64, &VerificationKey)> = keys[N - T..]
            .iter()
            .map(|k| (k.index, &k.verification))
            .collect();
        let vk = aggregate_verification_keys(&shares).unwrap();
        vk.check(&params).unwrap();
        Self { params, keys, vk }
    }

    fn issue(&self) -> BandwidthCredential {
        let (pending, req) =
            request_bandwidth(&self.params, &self.vk, BW, EXPIRY, &mut OsRng).unwrap();
        let shares: Vec<PartialSignature> = self.keys[..T]
            .iter()
            .map(|k| {
                let b =
                    issue_bandwidth(&self.params, &self.vk, &k.secret, &req, BW, EXPIRY).unwrap();
                pending.unblind(k.index, &k.verification, &b).unwrap()
            })
            .collect();
        pending.aggregate(&self.params, &self.vk, &shares).unwrap()
    }
}

/// One Nym zk-nym ticket (L = 50 ticketbook), set up as in the crate's own e2e test.
/// Issuer count does not affect spend verification, so 2-of-3 keeps setup short.
struct Nym {
    vk: VerificationKeyAuth,
    payment: Payment,
    pay_info: PayInfo,
    spend_date: u32,
}

impl Nym {
    fn new() -> Self {
        let params = nym_compact_ecash::setup::Parameters::new(50);
        let spend_date = 1_701_907_200; // 00:00 UTC, as the crate requires
        let expiration_date = 1_702_166_400;
        let t_type = 1;
        let user = generate_keypair_user();
        let auth = nym_ttp_keygen(2, 3).unwrap();
        let indices = [1u64, 2, 3];
        let sks: Vec<&SecretKeyAuth> = auth.iter().map(|k| k.secret_key()).collect();
        let vks: Vec<VerificationKeyAuth> = auth.iter().map(|k| k.verification_key()).collect();
        let vk = nym_aggregate_vk(&vks, Some(&indices)).unwrap();
        let dates = generate_expiration_date_signatures(expiration_date, &sks, &vks, &vk, &indices)
            .unwrap();
        let coins = generate_coin_indices_signatures(&params, &sks, &vks, &vk, &indices).unwrap();
        let (req, info) = withdrawal_request(user.secret_key(), expiration_date, t_type).unwrap();
        let partial: Vec<PartialWallet> = auth
            .iter()
            .zip(&vks)
            .enumerate()
            .map(|(i, (k, v))| {
                let b = issue(
                    k.secret_key(),
                    user.public_key(),
                    &req,
                    expiration_date,
                    t_type,
                )
                .unwrap();
                issue_verify(v, user.secret_key(), &b, &info, i as u64 + 1).unwrap()
            })
            .collect();
        let mut wallet: Wallet =
            aggregate_wallets(&vk, user.secret_key(), &partial, &info).unwrap();
        let pay_info = PayInfo {
            pay_info_bytes: [6u8; 72],
        };
        let payment = wallet
            .spend(
                &params,
                &vk,
                user.secret_key(),
                &pay_info,
                1,
                &dates,
                &coins,
                spend_date,
            )
            .unwrap();
        let nym = Self {
            vk,
            payment,
            pay_info,
            spend_date,
        };
        nym.verify();
        nym
    }

    fn verify(&self) {
        self.payment
            .spend_verify(&self.vk, &self.pay_info, self.spend_date)
            .unwrap();
    }
}

#[derive(Default)]
struct Medians {
    samples: std::collections::BTreeMap<&'static str, Vec<f64>>,
}

impl Medians {
    fn time<R>(&mut self, name: &'static str, f: impl FnOnce() -> R) -> R {
        self.time_n(name, 1, f)
    }

    /// Records the time of `f` divided by `per` (items per call).
    fn time_n<R>(&mut self, name: &'static str, per: usize, f: impl FnOnce() -> R) -> R {
        let t = Instant::now();
        let r = f();
        let us = t.elapsed().as_secs_f64() * 1e6 / per as f64;
        self.samples.entry(name).or_default().push(us);
        r
    }

    fn get(&self, name: &str) -> f64 {
        let mut v = self.samples.get(name).cloned().unwrap_or_default();
        if v.is_empty() {
            return f64::NAN;
        }
        v.sort_by(f64::total_cmp);
        round2(v[v.len() / 2])
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

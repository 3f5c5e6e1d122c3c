//! The directory's counters, published at its `/metrics` (same port as its API) with the
//! series every role shares ([`crate::prometheus::render_process`]).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::authority::exchange::Status;
use crate::authority::round::Accepted;
use crate::authority::vote::Refusal;
use crate::prometheus::{self, family, sample, Kind, RequestCounts};
use crate::topology::LAYERS;

/// The API's routes, the only `endpoint` label values besides `other`.
pub const ENDPOINTS: &[&str] = &[
    "/v1/key",
    "/v1/topology",
    "/v1/consensus",
    "/v1/votes",
    "/v1/vote",
    "/v1/signature",
    "/v1/register",
    "/v1/heartbeat",
    "/v1/deregister",
    "/health",
    "/metrics",
];

#[derive(Debug, Default)]
pub struct Counters {
    pub registrations_new: AtomicU64,
    pub registrations_updated: AtomicU64,
    pub registrations_refreshed: AtomicU64,
    pub heartbeats_fresh: AtomicU64,
    pub heartbeats_repeat: AtomicU64,
    pub deregistrations: AtomicU64,
    pub nodes_expired: AtomicU64,
    pub rate_limited: AtomicU64,
    /// Refusals by endpoint and reason: fixed labels (`RegistryError::reason` and the
    /// signature/encoding ones), so the map stays small.
    rejected: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
}

/// What the metrics need of the registry, read under its lock by the caller.
pub struct Membership {
    pub layers: [usize; LAYERS],
    pub gateways: usize,
    pub epoch: u64,
}

pub fn add(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

fn get(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

impl Counters {
    /// Counts a refused request: `kind` is `registration`, `heartbeat` or `deregistration`.
    pub fn reject(&self, kind: &'static str, reason: &'static str) {
        let mut rejected = self.rejected.lock().unwrap_or_else(|e| e.into_inner());
        let count = rejected.entry((kind, reason)).or_insert(0);
        *count = count.saturating_add(1);
    }

    fn rejected(&self, kind: &str) -> Vec<(&'static str, u64)> {
        let rejected = self.rejected.lock().unwrap_or_else(|e| e.into_inner());
        rejected
            .iter()
            .filter(|((k, _), _)| *k == kind)
            .map(|((_, reason), count)| (*reason, *count))
            .collect()
    }

    pub fn render(&self, membership: &Membership, requests: &RequestCounts, out: &mut String) {
        prometheus::render_process(out, "directory");
        let name = "lethe_directory_nodes";
        family(
            out,
            name,
            Kind::Gauge,
            "Registered nodes, by role and mix layer (1-based).",
        );
        for (index, count) in membership.layers.iter().enumerate() {
            let layer = (index + 1).to_string();
            let labels = [("role", "mixnode"), ("layer", layer.as_str())];
            sample(out, name, &labels, *count as u64);
        }
        let labels = [("role", "gateway"), ("layer", "")];
        sample(out, name, &labels, membership.gateways as u64);
        prometheus::gauge(
            out,
            "lethe_directory_topology_epoch",
            "Epoch of the latest published topology.",
            membership.epoch,
        );
        let name = "lethe_directory_registrations_total";
        family(
            out,
            name,
            Kind::Counter,
            "Registrations accepted, by outcome.",
        );
        for (outcome, counter) in [
            ("new", &self.registrations_new),
            ("updated", &self.registrations_updated),
            ("refreshed", &self.registrations_refreshed),
        ] {
            sample(out, name, &[("outcome", outcome)], get(counter));
        }
        let name = "lethe_directory_heartbeats_received_total";
        family(
            out,
            name,
            Kind::Counter,
            "Heartbeats accepted (repeat: same timestamp again).",
        );
        for (outcome, counter) in [
            ("fresh", &self.heartbeats_fresh),
            ("repeat", &self.heartbeats_repeat),
        ] {
            sample(out, name, &[("outcome", outcome)], get(counter));
        }
        for (kind, name, help) in [
            (
                "registration",
                "lethe_directory_registrations_rejected_total",
                "Registrations refused, by reason.",
            ),
            (
                "heartbeat",
                "lethe_directory_heartbeats_rejected_total",
                "Heartbeats refused, by reason (unknown: the node must register again).",
            ),
            (
                "deregistration",
                "lethe_directory_deregistrations_rejected_total",
                "Deregistrations refused, by reason (forged, stale, replayed, unknown node).",
            ),
        ] {
            family(out, name, Kind::Counter, help);
            for (reason, count) in self.rejected(kind) {
                sample(out, name, &[("reason", reason)], count);
            }
        }
        for (name, help, counter) in [
            (
                "lethe_directory_deregistrations_total",
                "Nodes removed at their own signed request.",
                &self.deregistrations,
            ),
            (
                "lethe_directory_nodes_expired_total",
                "Nodes dropped for silence (no heartbeat within the timeout).",
                &self.nodes_expired,
            ),
            (
                "lethe_directory_rate_limited_total",
                "POST requests refused by the rate limit (429).",
                &self.rate_limited,
            ),
        ] {
            prometheus::counter(out, name, help, get(counter));
        }
        requests.render(out);
    }
}

/// A voting authority's counters (`lethe_authority_*`), beside the directory's.
#[derive(Debug, Default)]
pub struct AuthorityCounters {
    /// Per kind (`vote`, `signature`): accepted new, repeats, refusals by reason
    /// ([`Refusal::REASONS`] order).
    votes: MessageCounts,
    signatures: MessageCounts,
    vote_equivocations: AtomicU64,
    signature_equivocations: AtomicU64,
    certified: AtomicU64,
    failed_votes: AtomicU64,
    failed_signatures: AtomicU64,
    admission_disagreements: AtomicU64,
    admission_unagreed: AtomicU64,
}

#[derive(Debug, Default)]
struct MessageCounts {
    accepted: AtomicU64,
    repeat: AtomicU64,
    refused: [AtomicU64; Refusal::REASONS.len()],
}

impl AuthorityCounters {
    /// Counts a vote or signature (`kind`) outcome.
    pub fn count(&self, kind: &str, outcome: &Result<Accepted, Refusal>) {
        let counts = if kind == "vote" {
            &self.votes
        } else {
            &self.signatures
        };
        match outcome {
            Ok(Accepted::New) => add(&counts.accepted),
            Ok(Accepted::Repeat) => add(&counts.repeat),
            Err(refusal) => {
                let reason = refusal.reason();
                if let Some(index) = Refusal::REASONS.iter().position(|r| *r == reason) {
                    add(&counts.refused[index]);
                }
            }
        }
    }

    pub fn equivocation(&self, kind: &str) {
        add(if kind == "vote" {
            &self.vote_equivocations
        } else {
            &self.signature_equivocations
        });
    }

    pub fn certified(&self) {
        add(&self.certified);
    }

    /// A vote stating another admission policy than the agreed one.
    pub fn admission_disagreement(&self) {
        add(&self.admission_disagreements);
    }

    /// An epoch computed without an agreed admission policy.
    pub fn admission_unagreed(&self) {
        add(&self.admission_unagreed);
    }

    /// An epoch not certified: `too_few_votes` (no consensus computed) or
    /// `too_few_signatures`.
    pub fn failed(&self, reason: &str) {
        add(if reason == "too_few_votes" {
            &self.failed_votes
        } else {
            &self.failed_signatures
        });
    }

    pub fn render(&self, status: &Status, alive: usize, out: &mut String) {
        for (counts, kind) in [(&self.votes, "votes"), (&self.signatures, "signatures")] {
            let name = format!("lethe_authority_{kind}_received_total");
            family(
                out,
                &name,
                Kind::Counter,
                "Peer messages taken (repeat: already held), pushed or pulled.",
            );
            sample(
                out,
                &name,
                &[("outcome", "accepted")],
                get(&counts.accepted),
            );
            sample(out, &name, &[("outcome", "repeat")], get(&counts.repeat));
            let name = format!("lethe_authority_{kind}_refused_total");
            family(
                out,
                &name,
                Kind::Counter,
                "Peer messages refused, by reason (stale_epoch: a replay of another epoch's).",
            );
            for (reason, count) in Refusal::REASONS.iter().zip(&counts.refused) {
                sample(out, &name, &[("reason", reason)], get(count));
            }
        }
        let name = "lethe_authority_equivocations_total";
        family(
            out,
            name,
            Kind::Counter,
            "Authorities caught signing two different votes or documents for one epoch (evidence stored).",
        );
        sample(
            out,
            name,
            &[("kind", "vote")],
            get(&self.vote_equivocations),
        );
        sample(
            out,
            name,
            &[("kind", "signature")],
            get(&self.signature_equivocations),
        );
        prometheus::counter(
            out,
            "lethe_authority_admission_disagreements_total",
            "Votes stating another admission policy (open or an allow-list) than the one the threshold of votes agreed on.",
            get(&self.admission_disagreements),
        );
        prometheus::counter(
            out,
            "lethe_authority_admission_unagreed_total",
            "Epochs whose votes agreed on no admission policy (nodes were in on the count of votes alone).",
            get(&self.admission_unagreed),
        );
        prometheus::counter(
            out,
            "lethe_authority_consensus_certified_total",
            "Epochs whose consensus gathered the threshold of signatures here.",
            get(&self.certified),
        );
        let name = "lethe_authority_consensus_failed_total";
        family(
            out,
            name,
            Kind::Counter,
            "Epochs without a certified consensus (the previous document stays served).",
        );
        sample(
            out,
            name,
            &[("reason", "too_few_votes")],
            get(&self.failed_votes),
        );
        sample(
            out,
            name,
            &[("reason", "too_few_signatures")],
            get(&self.failed_signatures),
        );
        for (name, help, value) in [
            (
                "lethe_authority_epoch",
                "The current epoch (clock time / epoch length).",
                status.epoch,
            ),
            (
                "lethe_authority_authorities",
                "Authorities pinned, this one included (n).",
                status.authorities as u64,
            ),
            (
                "lethe_authority_threshold",
                "Signatures a document needs (2f+1).",
                status.threshold as u64,
            ),
            (
                "lethe_authority_votes_held",
                "Authorities whose vote for the current epoch is held (equivocators included).",
                status.voters as u64,
            ),
            (
                "lethe_authority_own_signatures",
                "Signatures gathered on this authority's own consensus of the current epoch.",
                status.own_signatures as u64,
            ),
            (
                "lethe_authority_consensus_epoch",
                "Epoch of the certified document served.",
                status.served_epoch,
            ),
            (
                "lethe_authority_consensus_signatures",
                "Signatures on the certified document served.",
                status.served_signatures as u64,
            ),
            (
                "lethe_authority_consensus_current",
                "1 if the document served is the current epoch's, 0 while an older one is served.",
                u64::from(status.certified_current),
            ),
        ] {
            prometheus::gauge(out, name, help, value);
        }
        let name = "lethe_authority_nodes";
        family(
            out,
            name,
            Kind::Gauge,
            "Nodes by state: alive (admitted here and heard from), consensus (in the document served).",
        );
        sample(out, name, &[("state", "alive")], alive as u64);
        sample(
            out,
            name,
            &[("state", "consensus")],
            status.served_nodes as u64,
        );
    }
}

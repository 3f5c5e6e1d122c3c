//! The directory's counters, published at its `/metrics` (same port as its API) with the
//! series every role shares ([`crate::prometheus::render_process`]).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::prometheus::{self, family, sample, Kind, RequestCounts};
use crate::topology::LAYERS;

/// The API's routes, the only `endpoint` label values besides `other`.
pub const ENDPOINTS: &[&str] = &[
    "/v1/key",
    "/v1/topology",
    "/v1/consensus",
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

//! The issuer's counters, published at its `/metrics` (same port as its API) with the series
//! every role shares ([`crate::prometheus::render_process`]).

use std::sync::atomic::{AtomicU64, Ordering};

use crate::prometheus::{self, family, sample, Kind, RequestCounts};

/// The API's routes, the only `endpoint` label values besides `other`.
pub const ENDPOINTS: &[&str] = &[
    "/v1/blind-sign",
    "/v1/verification-key",
    "/v1/terms",
    "/health",
    "/metrics",
];

/// Why a blind-sign request was refused (the `reason` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// Body too short or the request does not decode (400).
    Malformed,
    /// Bandwidth or expiry differ from the issuer's terms (422).
    Terms,
    /// The request's proof or attributes were refused (400).
    Proof,
    /// The signing task failed (500).
    Internal,
}

impl Rejection {
    const ALL: [Rejection; 4] = [
        Rejection::Malformed,
        Rejection::Terms,
        Rejection::Proof,
        Rejection::Internal,
    ];

    fn label(self) -> &'static str {
        match self {
            Rejection::Malformed => "malformed",
            Rejection::Terms => "terms",
            Rejection::Proof => "proof",
            Rejection::Internal => "internal",
        }
    }
}

#[derive(Debug, Default)]
pub struct Counters {
    credentials_issued: AtomicU64,
    rejected: [AtomicU64; Rejection::ALL.len()],
    rate_limited: AtomicU64,
}

impl Counters {
    pub fn issued(&self) {
        self.credentials_issued.fetch_add(1, Ordering::Relaxed);
    }

    pub fn reject(&self, why: Rejection) {
        self.rejected[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn rate_limited(&self) {
        self.rate_limited.fetch_add(1, Ordering::Relaxed);
    }

    pub fn render(&self, requests: &RequestCounts, out: &mut String) {
        prometheus::render_process(out, "issuer");
        prometheus::counter(
            out,
            "lethe_issuer_credentials_issued_total",
            "Blind signatures (credential shares) issued.",
            self.credentials_issued.load(Ordering::Relaxed),
        );
        let name = "lethe_issuer_requests_rejected_total";
        family(
            out,
            name,
            Kind::Counter,
            "Blind-sign requests refused, by reason.",
        );
        for why in Rejection::ALL {
            let count = self.rejected[why as usize].load(Ordering::Relaxed);
            sample(out, name, &[("reason", why.label())], count);
        }
        prometheus::counter(
            out,
            "lethe_issuer_rate_limited_total",
            "Requests refused by the per-network or global rate limit (429).",
            self.rate_limited.load(Ordering::Relaxed),
        );
        requests.render(out);
    }
}

//! What loadgen's gateway clients saw, as the report shows it (the gateway driver counts it,
//! [`crate::driver::Driver::client_stats`] hands it to the run and the report).

use std::collections::BTreeMap;

use lethe_nodes::proto::messages::error_code;
use serde::Serialize;

/// The name of a gateway `Error` code, as the report shows it.
pub fn error_name(code: u8) -> &'static str {
    match code {
        error_code::MALFORMED => "malformed",
        error_code::NOT_LAYER1 => "not_layer1",
        error_code::OVERLOADED => "overloaded",
        error_code::NO_BANDWIDTH => "no_bandwidth",
        error_code::BAD_CREDENTIAL => "bad_credential",
        _ => "other",
    }
}

/// What the gateway clients saw (the report's `gateway_clients`).
#[derive(Clone, Debug, Default, Serialize)]
pub struct ClientStats {
    pub senders: u64,
    pub receivers: u64,
    /// Sessions established (handshake done, `Welcome` received).
    pub sessions: u64,
    /// Sessions that ended with an error.
    pub session_failures: u64,
    /// `Forward` messages written to sender sessions.
    pub forwards: u64,
    /// Times a sender found its session's queue full and waited.
    pub queue_full_waits: u64,
    /// `Error` replies from the gateways, by code (`no_bandwidth`, `not_layer1`, ...).
    pub gateway_errors: BTreeMap<String, u64>,
    /// `Deliver` messages the receivers got (all kinds).
    pub deliveries: u64,
    /// Delivery ids confirmed back to the gateways, and in how many `Confirm` messages.
    pub confirmed: u64,
    pub confirm_messages: u64,
    /// The first distinct error texts (gateway errors, session failures).
    pub errors: Vec<String>,
}

impl ClientStats {
    /// `self - before`, counter by counter (the error texts are kept whole).
    pub fn since(&self, before: &ClientStats) -> ClientStats {
        let mut gateway_errors = self.gateway_errors.clone();
        for (code, count) in &mut gateway_errors {
            *count = count.saturating_sub(before.gateway_errors.get(code).copied().unwrap_or(0));
        }
        gateway_errors.retain(|_, count| *count > 0);
        ClientStats {
            senders: self.senders.saturating_sub(before.senders),
            receivers: self.receivers,
            sessions: self.sessions.saturating_sub(before.sessions),
            session_failures: self
                .session_failures
                .saturating_sub(before.session_failures),
            forwards: self.forwards.saturating_sub(before.forwards),
            queue_full_waits: self
                .queue_full_waits
                .saturating_sub(before.queue_full_waits),
            gateway_errors,
            deliveries: self.deliveries.saturating_sub(before.deliveries),
            confirmed: self.confirmed.saturating_sub(before.confirmed),
            confirm_messages: self
                .confirm_messages
                .saturating_sub(before.confirm_messages),
            // Texts only grow (up to ERRORS_KEPT): the ones after `before`'s are this run's.
            errors: self
                .errors
                .get(before.errors.len()..)
                .unwrap_or(&[])
                .to_vec(),
        }
    }
}

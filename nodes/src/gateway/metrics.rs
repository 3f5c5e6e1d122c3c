//! Gateway counters, appended to the engine's Prometheus text at `/metrics`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct GatewayMetrics {
    pub sessions_active: AtomicU64,
    pub sessions_started: AtomicU64,
    pub sessions_refused: AtomicU64,
    pub handshakes_failed: AtomicU64,
    pub session_errors: AtomicU64,
    pub forwarded_from_clients: AtomicU64,
    pub forward_refused: AtomicU64,
    pub egress_dropped: AtomicU64,
    pub egress_sent: AtomicU64,
    pub final_hop_received: AtomicU64,
    pub final_hop_stored: AtomicU64,
    pub final_hop_delivered_live: AtomicU64,
    pub final_hop_malformed: AtomicU64,
    pub live_queue_full: AtomicU64,
    pub acks_forwarded: AtomicU64,
    pub cover_dropped: AtomicU64,
    pub unknown_destination_dropped: AtomicU64,
    pub mailbox_full_dropped: AtomicU64,
    pub mailbox_rows: AtomicU64,
    pub mailbox_expired: AtomicU64,
    pub stored_delivered: AtomicU64,
    pub confirms: AtomicU64,
    pub commands_dropped: AtomicU64,
    pub clients_registered: AtomicU64,
    pub database_errors: AtomicU64,
    pub credentials_accepted: AtomicU64,
    pub credentials_refused: AtomicU64,
    pub bandwidth_charged_bytes: AtomicU64,
    pub forwards_refused_bandwidth: AtomicU64,
    pub pending_connections: AtomicU64,
    pub pending_refused_per_ip: AtomicU64,
    pub pending_evicted: AtomicU64,
    pub pending_oversize: AtomicU64,
    pub handshakes_timed_out: AtomicU64,
    pub sessions_idle_closed: AtomicU64,
    pub clients_durable: AtomicU64,
    pub clients_table_full: AtomicU64,
    pub clients_expired: AtomicU64,
    pub clients_forgotten: AtomicU64,
    /// Epoch of the consensus document in use (0: none yet).
    pub consensus_epoch: AtomicU64,
    /// 1 while the document in use has expired and no newer one verified (the grace).
    pub consensus_in_grace: AtomicU64,
    pub consensus_fetch_failures: AtomicU64,
}

impl GatewayMetrics {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// Appends the gateway's metrics in Prometheus text format.
    pub fn render(&self, out: &mut String) {
        let counters: [(&str, &str, &AtomicU64); 36] = [
            (
                "consensus_fetch_failures_total",
                "Consensus fetches where no authority served a document that verified",
                &self.consensus_fetch_failures,
            ),
            (
                "sessions_started_total",
                "Client sessions established",
                &self.sessions_started,
            ),
            (
                "sessions_refused_total",
                "Authenticated clients refused: sessions_max sessions open",
                &self.sessions_refused,
            ),
            (
                "handshakes_failed_total",
                "Client upgrades or handshakes that failed or timed out",
                &self.handshakes_failed,
            ),
            (
                "handshakes_timed_out_total",
                "Unauthenticated connections closed at the handshake deadline",
                &self.handshakes_timed_out,
            ),
            (
                "sessions_idle_closed_total",
                "Authenticated sessions closed after session_idle_timeout_s silent both ways",
                &self.sessions_idle_closed,
            ),
            (
                "pending_refused_per_ip_total",
                "Connections closed at accept: their source had \
                 pending_connections_per_ip_max unauthenticated connections",
                &self.pending_refused_per_ip,
            ),
            (
                "pending_evicted_total",
                "Oldest unauthenticated connections closed to make room \
                 (pending_connections_max)",
                &self.pending_evicted,
            ),
            (
                "pending_oversize_total",
                "Unauthenticated connections closed for sending more than a handshake needs",
                &self.pending_oversize,
            ),
            (
                "session_errors_total",
                "Sessions closed for a malformed or undecryptable message",
                &self.session_errors,
            ),
            (
                "forwarded_from_clients_total",
                "Client packets queued to a layer-1 mixnode",
                &self.forwarded_from_clients,
            ),
            (
                "forward_refused_total",
                "Client packets refused (first hop not layer 1)",
                &self.forward_refused,
            ),
            (
                "egress_dropped_total",
                "Packets to mixnodes dropped (queue full or write failed)",
                &self.egress_dropped,
            ),
            (
                "egress_sent_total",
                "Packets written to mixnodes",
                &self.egress_sent,
            ),
            (
                "final_hop_received_total",
                "Final-hop packets handed over by the engine",
                &self.final_hop_received,
            ),
            (
                "final_hop_stored_total",
                "Final-hop deliveries stored in the mailbox",
                &self.final_hop_stored,
            ),
            (
                "final_hop_delivered_live_total",
                "Stored deliveries pushed at once to a connected client",
                &self.final_hop_delivered_live,
            ),
            (
                "final_hop_malformed_total",
                "Final-hop packets whose payload does not parse",
                &self.final_hop_malformed,
            ),
            (
                "live_queue_full_total",
                "Live pushes deferred to the mailbox (session queue full)",
                &self.live_queue_full,
            ),
            (
                "acks_forwarded_total",
                "SURB-ACK packets sent on to their first hop",
                &self.acks_forwarded,
            ),
            (
                "cover_dropped_total",
                "Drop-cover packets (destination all zero)",
                &self.cover_dropped,
            ),
            (
                "unknown_destination_dropped_total",
                "Final-hop packets for clients never registered here",
                &self.unknown_destination_dropped,
            ),
            (
                "mailbox_full_dropped_total",
                "Deliveries dropped: the client's mailbox is full",
                &self.mailbox_full_dropped,
            ),
            (
                "mailbox_expired_total",
                "Mailbox rows deleted by retention",
                &self.mailbox_expired,
            ),
            (
                "stored_delivered_total",
                "Stored deliveries sent to a client from the mailbox",
                &self.stored_delivered,
            ),
            (
                "confirms_total",
                "Mailbox rows deleted on the client's confirmation",
                &self.confirms,
            ),
            (
                "commands_dropped_total",
                "Confirms/registrations dropped (mailbox writer queue full)",
                &self.commands_dropped,
            ),
            (
                "clients_registered_total",
                "Clients recorded durably (clients table)",
                &self.clients_registered,
            ),
            (
                "clients_table_full_total",
                "Clients kept in memory only: the clients table held clients_max",
                &self.clients_table_full,
            ),
            (
                "clients_expired_total",
                "Client records deleted: idle for client_idle_days with no mail",
                &self.clients_expired,
            ),
            (
                "clients_forgotten_total",
                "Handshaken clients without a record dropped from memory (oldest first)",
                &self.clients_forgotten,
            ),
            (
                "database_errors_total",
                "Mailbox and credential database errors",
                &self.database_errors,
            ),
            (
                "credentials_accepted_total",
                "Bandwidth credentials verified and credited",
                &self.credentials_accepted,
            ),
            (
                "credentials_refused_total",
                "Bandwidth credentials refused (invalid, expired, spent, or overloaded)",
                &self.credentials_refused,
            ),
            (
                "bandwidth_charged_bytes_total",
                "Bytes of client forwards charged to client balances",
                &self.bandwidth_charged_bytes,
            ),
            (
                "forwards_refused_bandwidth_total",
                "Client forwards refused for lack of bandwidth (NO_BANDWIDTH)",
                &self.forwards_refused_bandwidth,
            ),
        ];
        for (name, help, counter) in counters {
            let _ = writeln!(out, "# HELP lethe_gateway_{name} {help}");
            let _ = writeln!(out, "# TYPE lethe_gateway_{name} counter");
            let _ = writeln!(out, "lethe_gateway_{name} {}", Self::get(counter));
        }
        let gauges: [(&str, &str, &AtomicU64); 6] = [
            (
                "consensus_epoch",
                "Epoch of the consensus document in use (0: none yet)",
                &self.consensus_epoch,
            ),
            (
                "consensus_in_grace",
                "1 while the document in use has expired and no newer one verified",
                &self.consensus_in_grace,
            ),
            (
                "sessions_active",
                "Client sessions open now",
                &self.sessions_active,
            ),
            (
                "pending_connections",
                "Unauthenticated client connections open now",
                &self.pending_connections,
            ),
            (
                "clients_durable",
                "Client records in the clients table",
                &self.clients_durable,
            ),
            (
                "mailbox_rows",
                "Deliveries held in the mailbox",
                &self.mailbox_rows,
            ),
        ];
        for (name, help, gauge) in gauges {
            let _ = writeln!(out, "# HELP lethe_gateway_{name} {help}");
            let _ = writeln!(out, "# TYPE lethe_gateway_{name} gauge");
            let _ = writeln!(out, "lethe_gateway_{name} {}", Self::get(gauge));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_counter() {
        let metrics = GatewayMetrics::default();
        GatewayMetrics::add(&metrics.confirms, 3);
        let mut out = String::new();
        metrics.render(&mut out);
        assert!(out.contains("lethe_gateway_confirms_total 3\n"));
        assert!(out.contains("lethe_gateway_mailbox_rows 0\n"));
    }
}

//! What the running client counted, as its handles read it: the runtime's own counters
//! (connection, channels, bandwidth) as atomics its tasks bump, and the latest copy of the
//! core's [`Counters`], which the core task publishes after every turn.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use lethe_proto::loopix::Counters;

/// Shared by the runtime's tasks and the handles.
#[derive(Debug, Default)]
pub struct Stats {
    pub outgoing_overflow: AtomicU64,
    pub confirm_overflow: AtomicU64,
    pub reconnects: AtomicU64,
    /// The balance the gateway last reported (a gauge).
    pub bandwidth_remaining: AtomicU64,
    /// The gateway refused forwards for lack of bandwidth (or reported a zero balance) and no
    /// credential was there to spend.
    pub no_bandwidth: AtomicU64,
    /// Credentials the gateway credited.
    pub credentials_spent: AtomicU64,
    core: Mutex<Counters>,
}

/// Everything a client counted (all monotonic except `queued` and `bandwidth_remaining`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct StatsSnapshot {
    pub real_sent: u64,
    pub replies_sent: u64,
    pub drop_cover_sent: u64,
    pub loop_cover_sent: u64,
    pub acks_received: u64,
    pub fragments_acked: u64,
    pub stray_acks: u64,
    pub forged_acks: u64,
    pub retransmitted: u64,
    pub fragments_given_up: u64,
    pub messages_received: u64,
    pub replies_received: u64,
    pub loop_cover_received: u64,
    pub undecryptable: u64,
    pub fragments_refused: u64,
    pub duplicates: u64,
    pub build_failures: u64,
    pub outgoing_overflow: u64,
    pub application_overflow: u64,
    pub confirm_overflow: u64,
    pub surbs_evicted: u64,
    pub reconnects: u64,
    pub queued: u64,
    pub bandwidth_remaining: u64,
    pub no_bandwidth: u64,
    pub credentials_spent: u64,
}

impl Stats {
    /// The core's counters as of now (the core task calls this after every turn).
    pub fn publish(&self, counters: Counters) {
        // A poisoned lock only means a reader panicked: the copy inside is still whole.
        let mut core = self.core.lock().unwrap_or_else(|e| e.into_inner());
        *core = counters;
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        let c = *self.core.lock().unwrap_or_else(|e| e.into_inner());
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StatsSnapshot {
            real_sent: c.real_sent,
            replies_sent: c.replies_sent,
            drop_cover_sent: c.drop_cover_sent,
            loop_cover_sent: c.loop_cover_sent,
            acks_received: c.acks_received,
            fragments_acked: c.fragments_acked,
            stray_acks: c.stray_acks,
            forged_acks: c.forged_acks,
            retransmitted: c.retransmitted,
            fragments_given_up: c.fragments_given_up,
            messages_received: c.messages_received,
            replies_received: c.replies_received,
            loop_cover_received: c.loop_cover_received,
            undecryptable: c.undecryptable,
            fragments_refused: c.fragments_refused,
            duplicates: c.duplicates,
            build_failures: c.build_failures,
            outgoing_overflow: l(&self.outgoing_overflow),
            application_overflow: c.application_overflow,
            confirm_overflow: l(&self.confirm_overflow),
            surbs_evicted: c.surbs_evicted,
            reconnects: l(&self.reconnects),
            queued: c.queued,
            bandwidth_remaining: l(&self.bandwidth_remaining),
            no_bandwidth: l(&self.no_bandwidth),
            credentials_spent: l(&self.credentials_spent),
        }
    }
}

pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

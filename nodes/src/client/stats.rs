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
    /// Topology refreshes where no authority served a document that verified.
    pub topology_fetch_failures: AtomicU64,
    /// 1 while the topology in use has expired and no newer one verified (its grace).
    pub topology_in_grace: AtomicU64,
    core: Mutex<Counters>,
}

/// Everything a client counted (all monotonic except `core.queued` and
/// `bandwidth_remaining`): the core's counters as last published, and the runtime's own.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct StatsSnapshot {
    #[serde(flatten)]
    pub core: Counters,
    pub outgoing_overflow: u64,
    pub confirm_overflow: u64,
    pub reconnects: u64,
    pub bandwidth_remaining: u64,
    pub no_bandwidth: u64,
    pub credentials_spent: u64,
    pub topology_fetch_failures: u64,
    pub topology_in_grace: u64,
}

impl Stats {
    /// The core's counters as of now (the core task calls this after every turn).
    pub fn publish(&self, counters: Counters) {
        // A poisoned lock only means a reader panicked: the copy inside is still whole.
        let mut core = self.core.lock().unwrap_or_else(|e| e.into_inner());
        *core = counters;
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        let core = *self.core.lock().unwrap_or_else(|e| e.into_inner());
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StatsSnapshot {
            core,
            outgoing_overflow: l(&self.outgoing_overflow),
            confirm_overflow: l(&self.confirm_overflow),
            reconnects: l(&self.reconnects),
            bandwidth_remaining: l(&self.bandwidth_remaining),
            no_bandwidth: l(&self.no_bandwidth),
            credentials_spent: l(&self.credentials_spent),
            topology_fetch_failures: l(&self.topology_fetch_failures),
            topology_in_grace: l(&self.topology_in_grace),
        }
    }
}

pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

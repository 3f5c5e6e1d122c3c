//! The open-loop schedule and the clock it runs on.
//!
//! Packet `seq` (0-based, across all senders) is due `seq / rate` seconds after the run's start,
//! whatever happened to earlier packets: a sender that stalls does not push its schedule back
//! (wrk2's correction for coordinated omission). Latency is measured from this due time.

use std::time::{Duration, Instant};

/// Packets due at a fixed rate from time 0.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Schedule {
    /// Packets per second, all senders together. Positive and finite.
    pub rate_per_s: f64,
    /// Packets in the run.
    pub total: u64,
    /// Senders; packet `seq` belongs to sender `seq % clients`.
    pub clients: u32,
}

impl Schedule {
    /// A schedule of `rate_per_s` for `duration_s`; `None` for a rate or duration that is not
    /// positive and finite, no clients, or fewer than one packet.
    pub fn new(rate_per_s: f64, duration_s: f64, clients: u32) -> Option<Schedule> {
        if !(rate_per_s.is_finite() && rate_per_s > 0.0) {
            return None;
        }
        if !(duration_s.is_finite() && duration_s > 0.0) || clients == 0 {
            return None;
        }
        let total = (rate_per_s * duration_s).floor();
        if !(1.0..=1e12).contains(&total) {
            return None;
        }
        Some(Schedule {
            rate_per_s,
            total: total as u64,
            clients,
        })
    }

    /// When packet `seq` is due, in ns after the start.
    pub fn due_ns(&self, seq: u64) -> u64 {
        (seq as f64 * 1e9 / self.rate_per_s) as u64
    }

    /// The sender of packet `seq`.
    pub fn client_of(&self, seq: u64) -> u32 {
        (seq % u64::from(self.clients)) as u32
    }

    /// Packets of sender `client`.
    #[cfg(test)]
    pub fn client_total(&self, client: u32) -> u64 {
        let clients = u64::from(self.clients);
        let client = u64::from(client);
        if client >= clients {
            return 0;
        }
        self.total / clients + u64::from(client < self.total % clients)
    }

    /// When the last packet is due, in ns.
    pub fn end_ns(&self) -> u64 {
        self.due_ns(self.total.saturating_sub(1))
    }

    /// Packets due in second `second` (`[second, second + 1)` s after the start).
    pub fn due_in_second(&self, second: u64) -> u64 {
        self.due_between(
            second.saturating_mul(1_000_000_000),
            second.saturating_add(1).saturating_mul(1_000_000_000),
        )
    }

    /// Packets due in `[start_ns, end_ns)`.
    pub fn due_between(&self, start_ns: u64, end_ns: u64) -> u64 {
        self.first_due_at_or_after(end_ns)
            .saturating_sub(self.first_due_at_or_after(start_ns))
    }

    // Smallest seq (capped at total) whose due time is >= ns.
    fn first_due_at_or_after(&self, ns: u64) -> u64 {
        let mut seq = ((ns as f64) * self.rate_per_s / 1e9).floor() as u64;
        seq = seq.min(self.total);
        while seq > 0 && self.due_ns(seq - 1) >= ns {
            seq -= 1;
        }
        while seq < self.total && self.due_ns(seq) < ns {
            seq += 1;
        }
        seq
    }
}

/// Time since the run's start, and waiting for it. A simulated clock in tests.
pub trait Clock {
    fn now_ns(&self) -> u64;
    fn sleep_until_ns(&self, ns: u64);
}

/// The real clock: monotonic time since `start`.
#[derive(Clone, Copy, Debug)]
pub struct RealClock {
    pub start: Instant,
}

impl Clock for RealClock {
    fn now_ns(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn sleep_until_ns(&self, ns: u64) {
        // Bounded: each turn sleeps at least until the target or returns.
        for _ in 0..1_000 {
            let now = self.now_ns();
            if now >= ns {
                return;
            }
            std::thread::sleep(Duration::from_nanos(ns - now));
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn due_times_and_shares() {
        let s = Schedule::new(1000.0, 2.0, 3).unwrap();
        assert_eq!(s.total, 2000);
        assert_eq!(s.due_ns(0), 0);
        assert_eq!(s.due_ns(1), 1_000_000);
        assert_eq!(s.due_ns(1500), 1_500_000_000);
        assert_eq!(s.client_of(4), 1);
        let shares: u64 = (0..3).map(|c| s.client_total(c)).sum();
        assert_eq!(shares, 2000);
        assert_eq!(s.client_total(0), 667);
        assert_eq!(s.due_in_second(0), 1000);
        assert_eq!(s.due_in_second(1), 1000);
        assert_eq!(s.due_in_second(2), 0);
        assert_eq!(s.due_between(500_000_000, 1_700_000_000), 1200);
        let odd = Schedule::new(3.0, 1.0, 1).unwrap();
        assert_eq!(odd.due_in_second(0), 3);
        assert!(Schedule::new(0.0, 1.0, 1).is_none());
        assert!(Schedule::new(10.0, 0.05, 1).is_none());
        assert!(Schedule::new(10.0, 1.0, 0).is_none());
    }
}

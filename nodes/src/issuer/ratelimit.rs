//! Token buckets: one per source IP and one global, so neither a single client nor a crowd can
//! keep an issuer busy verifying request proofs.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

/// Per-IP tables beyond this size are pruned of idle (full) buckets.
const MAX_TRACKED_IPS: usize = 10_000;

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// Refill rate (tokens per second) and capacity of a bucket.
#[derive(Clone, Copy, Debug)]
pub struct Rate {
    /// Tokens added per second.
    pub per_sec: f64,
    /// Capacity (largest burst).
    pub burst: f64,
}

impl Bucket {
    fn full(rate: Rate, now: Instant) -> Self {
        Self {
            tokens: rate.burst,
            last: now,
        }
    }

    fn refill(&mut self, rate: Rate, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * rate.per_sec).min(rate.burst);
        self.last = now;
    }

    fn take(&mut self, rate: Rate, now: Instant) -> bool {
        self.refill(rate, now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Per-IP and global token buckets.
#[derive(Debug)]
pub struct RateLimiter {
    per_ip: Rate,
    global: Rate,
    state: Mutex<(Bucket, HashMap<IpAddr, Bucket>)>,
}

impl RateLimiter {
    /// A limiter with both buckets full.
    pub fn new(per_ip: Rate, global: Rate) -> Self {
        let now = Instant::now();
        Self {
            per_ip,
            global,
            state: Mutex::new((Bucket::full(global, now), HashMap::new())),
        }
    }

    /// Takes one token from `ip`'s bucket and the global one; false means "429".
    pub fn allow(&self, ip: IpAddr) -> bool {
        self.allow_at(ip, Instant::now())
    }

    fn allow_at(&self, ip: IpAddr, now: Instant) -> bool {
        // A poisoned lock only means another request panicked mid-update; the buckets are
        // still plain numbers, so carry on.
        let mut guard = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (global, ips) = &mut *guard;
        if ips.len() >= MAX_TRACKED_IPS && !ips.contains_key(&ip) {
            let rate = self.per_ip;
            ips.retain(|_, b| {
                b.refill(rate, now);
                b.tokens < rate.burst
            });
            if ips.len() >= MAX_TRACKED_IPS {
                return false; // still full of active clients: shed the newcomer
            }
        }
        let bucket = ips
            .entry(ip)
            .or_insert_with(|| Bucket::full(self.per_ip, now));
        // Check the per-IP bucket first so one noisy client cannot drain the global one.
        bucket.take(self.per_ip, now) && global.take(self.global, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn per_ip_then_global() {
        let l = RateLimiter::new(
            Rate {
                per_sec: 1.0,
                burst: 2.0,
            },
            Rate {
                per_sec: 1.0,
                burst: 3.0,
            },
        );
        let t0 = Instant::now();
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        assert!(l.allow_at(a, t0) && l.allow_at(a, t0));
        assert!(!l.allow_at(a, t0), "per-IP burst exhausted");
        assert!(l.allow_at(b, t0));
        assert!(!l.allow_at(b, t0), "global burst exhausted");
        assert!(l.allow_at(a, t0 + Duration::from_secs(1)), "refilled");
    }
}

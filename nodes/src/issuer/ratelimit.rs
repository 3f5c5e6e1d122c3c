//! Token buckets: one per source network and one global, so neither one network nor a crowd
//! can keep a service busy (an issuer verifying request proofs, the directory checking
//! signatures) while honest clients are refused.
//!
//! - **Sources are networks, not addresses.** An IPv4 source counts as its /24, an IPv6 source
//!   as its /64 (an IPv4-mapped IPv6 address as its IPv4 /24): whoever holds a block of
//!   addresses, which is cheap (a /64 is one host's usual allocation), gets one bucket for it,
//!   so a hundred addresses of one network cannot take a hundred shares.
//! - **The source's bucket is checked first**: a network past its own share never touches the
//!   global bucket. Every request the network makes costs it a token, also one the global
//!   bucket then refuses, so its bucket measures how hard it asks, not how much it got.
//! - **Headroom in the global bucket.** A quarter of the global burst ([`RESERVE_FRACTION`]) is
//!   kept for *quiet* networks, those that made at most [`QUIET_REQUESTS`] requests lately
//!   (their bucket is that close to full, or at least half full): an honest client makes three
//!   per issuer and credential. Networks that have been sending harder may use the global
//!   bucket only above that reserve, and refills go to the reserve first (busy networks wait
//!   until it is full again), so a sustained flood from many networks, each at its full
//!   share, still leaves room for honest clients. What no rate limit tells apart is a flood
//!   spread so thin over so many networks that each looks quiet: the global limit then
//!   still caps the work done, and everyone shares it.
//! - **The per-network table is bounded** ([`RATE_LIMIT_SOURCES_MAX`], a few MB). When it is full,
//!   idle networks (full buckets, nothing to remember) are pruned, at most once per
//!   [`PRUNE_INTERVAL`] so a stream of new networks cannot make every request scan the table;
//!   newcomers that still find no room share one overflow bucket of a single network's rate.
//!
//! A refusal says when to retry ([`RateLimiter::check`]), which the services send as
//! `Retry-After`.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::limits::RATE_LIMIT_SOURCES_MAX;

/// Least time between two prunings of the source table.
pub const PRUNE_INTERVAL: Duration = Duration::from_secs(1);
/// Part of the global burst kept for quiet networks.
pub const RESERVE_FRACTION: f64 = 0.25;
/// A network is quiet while it has made at most this many requests beyond its refill...
pub const QUIET_REQUESTS: f64 = 4.0;
/// ...or its bucket is at least this full (small bursts).
const QUIET_FRACTION: f64 = 0.5;

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

    /// How long until the bucket holds `level` tokens (zero if it does).
    fn wait_for(&self, level: f64, rate: Rate) -> Duration {
        let missing = level - self.tokens;
        if missing <= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(missing / rate.per_sec.max(f64::MIN_POSITIVE))
        }
    }
}

/// The network a source address counts as: its /24 (IPv4) or /64 (IPv6).
pub fn source_network(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            IpAddr::V4(Ipv4Addr::new(a, b, c, 0))
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
    }
}

#[derive(Debug)]
struct State {
    global: Bucket,
    sources: HashMap<IpAddr, Bucket>,
    /// Shared by new networks while the table is full of active ones.
    overflow: Bucket,
    last_prune: Option<Instant>,
}

/// Per-network and global token buckets.
#[derive(Debug)]
pub struct RateLimiter {
    per_source: Rate,
    global: Rate,
    state: Mutex<State>,
}

impl RateLimiter {
    /// A limiter with every bucket full; `per_source` applies to each /24 or /64.
    pub fn new(per_source: Rate, global: Rate) -> Self {
        let now = Instant::now();
        Self {
            per_source,
            global,
            state: Mutex::new(State {
                global: Bucket::full(global, now),
                sources: HashMap::new(),
                overflow: Bucket::full(per_source, now),
                last_prune: None,
            }),
        }
    }

    /// Takes a token for `ip`; false means "429".
    pub fn allow(&self, ip: IpAddr) -> bool {
        self.check(ip).is_ok()
    }

    /// Takes a token for `ip`, or says how long to wait before trying again (at least 1 s,
    /// `Retry-After` being whole seconds).
    pub fn check(&self, ip: IpAddr) -> Result<(), Duration> {
        self.check_at(ip, Instant::now())
    }

    fn check_at(&self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        // A poisoned lock only means another request panicked mid-update; the buckets are
        // still plain numbers, so carry on.
        let mut guard = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let state = &mut *guard;
        let network = source_network(ip);
        if state.sources.len() >= RATE_LIMIT_SOURCES_MAX && !state.sources.contains_key(&network) {
            let due = state
                .last_prune
                .is_none_or(|t| now.saturating_duration_since(t) >= PRUNE_INTERVAL);
            if due {
                let rate = self.per_source;
                state.sources.retain(|_, b| {
                    b.refill(rate, now);
                    b.tokens < rate.burst
                });
                state.last_prune = Some(now);
            }
        }
        let source = if state.sources.len() < RATE_LIMIT_SOURCES_MAX {
            state
                .sources
                .entry(network)
                .or_insert_with(|| Bucket::full(self.per_source, now))
        } else {
            match state.sources.get_mut(&network) {
                Some(bucket) => bucket,
                None => &mut state.overflow,
            }
        };
        source.refill(self.per_source, now);
        if source.tokens < 1.0 {
            return Err(retry_after(source.wait_for(1.0, self.per_source)));
        }
        let burst = self.per_source.burst;
        let quiet = source.tokens >= (burst - QUIET_REQUESTS).max(burst * QUIET_FRACTION);
        source.tokens -= 1.0;
        let floor = if quiet {
            1.0
        } else {
            // Never above the burst itself, or a busy network could never be served.
            (self.global.burst * RESERVE_FRACTION + 1.0).min(self.global.burst)
        };
        state.global.refill(self.global, now);
        if state.global.tokens < floor {
            return Err(retry_after(state.global.wait_for(floor, self.global)));
        }
        state.global.tokens -= 1.0;
        Ok(())
    }
}

fn retry_after(wait: Duration) -> Duration {
    Duration::from_secs(wait.as_secs_f64().ceil().clamp(1.0, 3600.0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(per_sec: f64, burst: f64) -> Rate {
        Rate { per_sec, burst }
    }

    #[test]
    fn per_network_then_global() {
        let l = RateLimiter::new(rate(1.0, 2.0), rate(1.0, 3.0));
        let t0 = Instant::now();
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 1, 2].into();
        assert!(l.check_at(a, t0).is_ok() && l.check_at(a, t0).is_ok());
        assert_eq!(
            l.check_at(a, t0),
            Err(Duration::from_secs(1)),
            "own burst used"
        );
        assert!(l.check_at(b, t0).is_ok());
        assert!(l.check_at(b, t0).is_err(), "global burst used");
        assert!(
            l.check_at(a, t0 + Duration::from_secs(2)).is_ok(),
            "refilled"
        );
    }

    #[test]
    fn addresses_of_one_network_share_a_bucket() {
        let l = RateLimiter::new(rate(0.001, 5.0), rate(1000.0, 1000.0));
        let t0 = Instant::now();
        let allowed = (1..=100u8)
            .filter(|n| l.check_at([192, 0, 2, *n].into(), t0).is_ok())
            .count();
        assert_eq!(allowed, 5, "a /24 gets one share");
        let v6 = |last: u16| IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 2, 3, 4, 5, last));
        let allowed = (0..100).filter(|n| l.check_at(v6(*n), t0).is_ok()).count();
        assert_eq!(allowed, 5, "a /64 gets one share");
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert!(
            l.check_at(mapped, t0).is_err(),
            "IPv4-mapped counts as IPv4"
        );
        assert!(l.check_at([192, 0, 3, 1].into(), t0).is_ok(), "another /24");
    }

    #[test]
    fn busy_networks_leave_the_reserve_to_quiet_ones() {
        // Global: burst 40, 10 of it kept for quiet networks, 10 tokens a second. Each
        // network: burst 4, 1 token a second, quiet while it holds at least 2.
        let l = RateLimiter::new(rate(1.0, 4.0), rate(10.0, 40.0));
        let t0 = Instant::now();
        let flood = |t: Instant| {
            let mut served = 0;
            for net in 0..100u8 {
                for _ in 0..4 {
                    served += usize::from(l.check_at([10, net, 0, 1].into(), t).is_ok());
                }
            }
            served
        };
        assert_eq!(
            flood(t0),
            40,
            "a first burst of new networks takes the global burst"
        );
        // A second later the flooders are busy (their buckets hold 1): the 10 tokens refilled
        // are below the reserve, kept for quiet networks.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(flood(t1), 0);
        let honest: IpAddr = [198, 51, 100, 7].into();
        for _ in 0..3 {
            assert!(l.check_at(honest, t1).is_ok(), "quiet network served");
        }
    }

    #[test]
    fn full_table_prunes_idle_networks_then_shares_overflow() {
        let l = RateLimiter::new(rate(1.0, 2.0), rate(1e9, 1e9));
        let t0 = Instant::now();
        for n in 0..RATE_LIMIT_SOURCES_MAX as u32 {
            let ip = Ipv4Addr::from(n << 8);
            assert!(l.check_at(ip.into(), t0).is_ok());
        }
        let newcomer: IpAddr = [250, 0, 0, 1].into();
        // All active: newcomers share the overflow bucket (burst 2).
        assert!(l.check_at(newcomer, t0).is_ok());
        assert!(l.check_at([251, 0, 0, 1].into(), t0).is_ok());
        assert!(l.check_at([252, 0, 0, 1].into(), t0).is_err());
        // A second later every bucket has refilled: the table is pruned, newcomers tracked.
        let t1 = t0 + PRUNE_INTERVAL;
        assert!(l.check_at([252, 0, 0, 1].into(), t1).is_ok());
        let state = l.state.lock().unwrap();
        assert!(state.sources.len() < 10, "{}", state.sources.len());
    }
}

//! The client's two Poisson streams (Loopix): the real/drop-cover stream, where each tick
//! sends the next real packet or, with none queued, a drop-cover packet, so an observer sees
//! one rate whatever the client sends; and the loop-cover stream, ticks of its own, so real
//! traffic never delays or replaces loop cover.
//!
//! Gaps are exponential with the configured means and counted from the previous *deadline*,
//! not from when the driver got round to it, so a late driver does not lower the rate. A
//! driver more than [`CATCH_UP_US_MAX`] behind (a suspended laptop) does not burst the missed
//! ticks: they are skipped, counted, and the stream restarts from now.

use rand::Rng;

/// How far behind its deadline a stream may fall before missed ticks are skipped.
pub const CATCH_UP_US_MAX: u64 = 1_000_000;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScheduleParams {
    /// Mean gap of the real/drop-cover stream (1/lambda), µs; 0: no stream (real packets
    /// leave as soon as they are queued, no drop cover).
    pub real_mean_us: f64,
    /// Mean gap of the loop-cover stream, µs; 0: no loop cover.
    pub loop_mean_us: f64,
    /// Real ticks with nothing queued send nothing (instead of drop cover).
    pub disable_drop_cover: bool,
    pub disable_loop_cover: bool,
}

/// A tick that is due; the core answers it with a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tick {
    /// Send the next real packet, or drop cover if none is queued and drop cover is on.
    Real {
        drop_cover: bool,
    },
    Loop,
}

#[derive(Debug, Clone)]
pub struct Schedule {
    params: ScheduleParams,
    next_real_us: Option<u64>,
    next_loop_us: Option<u64>,
    skipped: u64,
}

impl Schedule {
    /// Both streams start at `now_us` (the first tick one gap later).
    pub fn new<R: Rng + ?Sized>(params: ScheduleParams, now_us: u64, rng: &mut R) -> Schedule {
        let real_on = params.real_mean_us > 0.0;
        let loop_on = !params.disable_loop_cover && params.loop_mean_us > 0.0;
        Schedule {
            params,
            next_real_us: real_on.then(|| now_us + exponential_us(rng, params.real_mean_us)),
            next_loop_us: loop_on.then(|| now_us + exponential_us(rng, params.loop_mean_us)),
            skipped: 0,
        }
    }

    /// Whether real packets are paced by the stream (otherwise they leave when queued).
    pub fn paced(&self) -> bool {
        self.next_real_us.is_some()
    }

    /// The next deadline of either stream.
    pub fn poll_timeout(&self) -> Option<u64> {
        match (self.next_real_us, self.next_loop_us) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Ticks skipped because the driver fell too far behind.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// One due tick (the earlier stream first), its stream moved on; `None` when nothing is
    /// due at `now_us`. Call until `None`.
    pub fn poll_due<R: Rng + ?Sized>(&mut self, now_us: u64, rng: &mut R) -> Option<Tick> {
        let real_due = self.next_real_us.filter(|&t| t <= now_us);
        let loop_due = self.next_loop_us.filter(|&t| t <= now_us);
        let real_first = match (real_due, loop_due) {
            (Some(r), Some(l)) => r <= l,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => return None,
        };
        if real_first {
            let (next, skipped) = advance(real_due?, now_us, self.params.real_mean_us, rng);
            self.next_real_us = Some(next);
            self.skipped += skipped;
            Some(Tick::Real {
                drop_cover: !self.params.disable_drop_cover,
            })
        } else {
            let (next, skipped) = advance(loop_due?, now_us, self.params.loop_mean_us, rng);
            self.next_loop_us = Some(next);
            self.skipped += skipped;
            Some(Tick::Loop)
        }
    }
}

/// The deadline after `deadline_us`, and how many ticks were skipped to get near `now_us`.
fn advance<R: Rng + ?Sized>(
    deadline_us: u64,
    now_us: u64,
    mean_us: f64,
    rng: &mut R,
) -> (u64, u64) {
    let next = deadline_us + exponential_us(rng, mean_us);
    if now_us.saturating_sub(next) <= CATCH_UP_US_MAX {
        return (next, 0);
    }
    // Far behind: estimate the ticks missed at the mean rate, restart from now.
    let missed = (now_us - next) as f64 / mean_us.max(1.0);
    (now_us + exponential_us(rng, mean_us), 1 + missed as u64)
}

/// An exponential sample with mean `mean_us`, rounded to whole µs (capped at an hour).
pub fn exponential_us<R: Rng + ?Sized>(rng: &mut R, mean_us: f64) -> u64 {
    if mean_us <= 0.0 {
        return 0;
    }
    // 53 random bits: u in (0, 1], so ln(u) is finite.
    let u = ((rng.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64;
    let sample = -mean_us * u.ln();
    sample.min(3.6e9).round() as u64
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    use super::*;

    fn params(real_ms: f64, loop_ms: f64) -> ScheduleParams {
        ScheduleParams {
            real_mean_us: real_ms * 1000.0,
            loop_mean_us: loop_ms * 1000.0,
            disable_drop_cover: false,
            disable_loop_cover: false,
        }
    }

    /// Runs the schedule in simulated time, always on its deadline, for `span_us`; returns
    /// the tick times of each stream.
    fn run(params: ScheduleParams, span_us: u64, seed: u64) -> (Vec<u64>, Vec<u64>) {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let mut schedule = Schedule::new(params, 0, &mut rng);
        let (mut real, mut looped) = (Vec::new(), Vec::new());
        while let Some(now) = schedule.poll_timeout().filter(|&t| t < span_us) {
            while let Some(tick) = schedule.poll_due(now, &mut rng) {
                match tick {
                    Tick::Real { .. } => real.push(now),
                    Tick::Loop => looped.push(now),
                }
            }
        }
        assert_eq!(schedule.skipped(), 0);
        (real, looped)
    }

    fn gaps(times: &[u64]) -> Vec<f64> {
        times.windows(2).map(|w| (w[1] - w[0]) as f64).collect()
    }

    /// Kolmogorov-Smirnov distance between the gaps and Exp(mean).
    fn ks_exponential(mut gaps: Vec<f64>, mean: f64) -> f64 {
        gaps.sort_by(f64::total_cmp);
        let n = gaps.len() as f64;
        let mut d: f64 = 0.0;
        for (i, gap) in gaps.iter().enumerate() {
            let cdf = 1.0 - (-gap / mean).exp();
            d = d
                .max((cdf - i as f64 / n).abs())
                .max(((i + 1) as f64 / n - cdf).abs());
        }
        d
    }

    #[test]
    fn both_streams_are_poisson_at_their_rates() {
        // 20 ms and 200 ms means over 1,000 s: ~50,000 and ~5,000 ticks.
        let (real, looped) = run(params(20.0, 200.0), 1_000_000_000, 1);
        let real_rate = real.len() as f64 / 1000.0;
        let loop_rate = looped.len() as f64 / 1000.0;
        assert!(
            (real_rate - 50.0).abs() < 50.0 * 0.02,
            "real rate {real_rate}/s"
        );
        assert!(
            (loop_rate - 5.0).abs() < 5.0 * 0.05,
            "loop rate {loop_rate}/s"
        );
        // KS at the 1 % level: 1.63 / sqrt(n). A fixed seed: deterministic.
        let real_gaps = gaps(&real);
        let critical = 1.63 / (real_gaps.len() as f64).sqrt();
        let d = ks_exponential(real_gaps, 20_000.0);
        assert!(d < critical, "real gaps KS {d} >= {critical}");
        let loop_gaps = gaps(&looped);
        let critical = 1.63 / (loop_gaps.len() as f64).sqrt();
        let d = ks_exponential(loop_gaps, 200_000.0);
        assert!(d < critical, "loop gaps KS {d} >= {critical}");
    }

    #[test]
    fn the_ks_check_rejects_constant_gaps() {
        // The test above can fail: evenly spaced ticks are far from exponential.
        let even: Vec<f64> = vec![20_000.0; 5_000];
        assert!(ks_exponential(even, 20_000.0) > 0.3);
    }

    #[test]
    fn a_late_driver_keeps_the_rate_and_a_suspended_one_skips() {
        let mut rng = ChaCha20Rng::seed_from_u64(2);
        let mut schedule = Schedule::new(params(10.0, 0.0), 0, &mut rng);
        // Woken every 50 ms (late for most ticks): every tick still fires, none skipped.
        let mut ticks = 0u64;
        let mut now = 0;
        while now < 10_000_000 {
            now += 50_000;
            while schedule.poll_due(now, &mut rng).is_some() {
                ticks += 1;
            }
        }
        assert!(
            (ticks as f64 - 1000.0).abs() < 100.0,
            "{ticks} ticks in 10 s at 100/s"
        );
        assert_eq!(schedule.skipped(), 0);
        // Suspended for 60 s: at most a tick or two fire, the rest are counted as skipped.
        now += 60_000_000;
        let mut burst = 0;
        while schedule.poll_due(now, &mut rng).is_some() {
            burst += 1;
        }
        assert!(burst <= 2, "{burst} ticks after a suspend");
        assert!(schedule.skipped() > 5000, "skipped {}", schedule.skipped());
    }

    #[test]
    fn no_stream_when_disabled() {
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        let mut p = params(0.0, 100.0);
        p.disable_loop_cover = true;
        let schedule = Schedule::new(p, 0, &mut rng);
        assert!(!schedule.paced());
        assert_eq!(schedule.poll_timeout(), None);
        let mut p = params(20.0, 100.0);
        p.disable_drop_cover = true;
        let mut schedule = Schedule::new(p, 0, &mut rng);
        let mut real = 0;
        let mut now = 0;
        while real == 0 {
            now = schedule.poll_timeout().unwrap_or(now);
            if let Some(Tick::Real { drop_cover }) = schedule.poll_due(now, &mut rng) {
                assert!(!drop_cover);
                real += 1;
            }
        }
    }

    #[test]
    fn loop_cover_keeps_its_rate_beside_a_busy_real_stream() {
        // The real stream ten times faster than the loop stream: loop ticks are not delayed.
        let (real, looped) = run(params(1.0, 10.0), 100_000_000, 4);
        assert!(real.len() > 9 * looped.len());
        let loop_rate = looped.len() as f64 / 100.0;
        assert!(
            (loop_rate - 100.0).abs() < 100.0 * 0.05,
            "loop rate {loop_rate}/s"
        );
    }
}

//! Each mix's queue occupancy against Loopix Lemma 1: a Poisson mix is an M/M/inf queue, so
//! the number of packets inside follows Pois(lambda / mu) (lambda: the arrival rate measured
//! in the window; 1/mu: the mean mixing delay from the trace's metadata). Occupancy is
//! time-weighted over the window, from arrivals and departures (and drops) at the mix.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::stats::poisson_pmf;
use crate::trace::{Kind, Role, TraceEvent, TraceMeta};

/// The distance to Poisson sums occupancies up to this (a bound on the loop whatever the
/// trace's metadata says; Pois(lambda/mu) beyond it is counted as one remainder).
const OCCUPANCY_SCAN_MAX: u64 = 10_000_000;

#[derive(Clone, Debug, Default, Serialize)]
pub struct MixOccupancy {
    pub node: String,
    pub mean: f64,
    pub variance: f64,
    /// lambda / mu.
    pub expected: f64,
    /// Total variation distance between the time-weighted occupancy and Pois(expected).
    pub poisson_tv_distance: f64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct QueueReport {
    pub mixes: Vec<MixOccupancy>,
    /// Means over the mixes of mean / expected and variance / expected (both 1 for Pois).
    pub mean_ratio: f64,
    pub variance_ratio: f64,
}

impl QueueReport {
    /// lambda / mu averaged over the mixes (Loopix's expected pool size); NaN without mixes.
    pub fn lambda_over_mu_mean(&self) -> f64 {
        if self.mixes.is_empty() {
            return f64::NAN;
        }
        self.mixes.iter().map(|m| m.expected).sum::<f64>() / self.mixes.len() as f64
    }
}

#[derive(Debug, Default, Clone)]
struct Occupancy {
    inside: u64,
    changed_ns: u64,
    arrivals_in_window: u64,
    /// Occupancy -> time spent at it inside the window (ns).
    time_at_ns: BTreeMap<u64, u64>,
}

#[derive(Debug)]
pub struct Queue {
    window_ns: (u64, u64),
    delay_mean_ns: u64,
    mixes: Vec<Option<Occupancy>>,
    names: Vec<String>,
}

impl Queue {
    pub fn new(meta: &TraceMeta, window_ns: (u64, u64)) -> Queue {
        let is_mix = |role| role == Role::Mix;
        let mixes = meta
            .nodes
            .iter()
            .map(|n| is_mix(n.role).then(Occupancy::default));
        Queue {
            window_ns,
            delay_mean_ns: meta.delay_mean_ns,
            mixes: mixes.collect(),
            names: meta.nodes.iter().map(|n| n.name.clone()).collect(),
        }
    }

    pub fn observe(&mut self, event: &TraceEvent) {
        let window = self.window_ns;
        let Some(Some(mix)) = self.mixes.get_mut(event.node as usize) else {
            return;
        };
        let change: i64 = match event.kind {
            Kind::Arrive => 1,
            Kind::Depart | Kind::Drop => -1,
            _ => return,
        };
        advance(mix, window, event.t_ns);
        if change > 0 {
            mix.inside += 1;
            if (window.0..=window.1).contains(&event.t_ns) {
                mix.arrivals_in_window += 1;
            }
        } else {
            mix.inside = mix.inside.saturating_sub(1);
        }
    }

    pub fn report(&self) -> QueueReport {
        let (start, end) = self.window_ns;
        let window_s = end.saturating_sub(start) as f64 / 1e9;
        let mut mixes = Vec::new();
        for (index, mix) in self.mixes.iter().enumerate() {
            let Some(mix) = mix else { continue };
            let mut mix = mix.clone();
            advance(&mut mix, self.window_ns, end);
            let total_ns: u64 = mix.time_at_ns.values().sum();
            if total_ns == 0 || window_s <= 0.0 {
                continue;
            }
            let weight = |ns: u64| ns as f64 / total_ns as f64;
            let mean: f64 = mix
                .time_at_ns
                .iter()
                .map(|(&k, &t)| k as f64 * weight(t))
                .sum();
            let variance: f64 = mix
                .time_at_ns
                .iter()
                .map(|(&k, &t)| (k as f64 - mean).powi(2) * weight(t))
                .sum();
            let lambda_per_s = mix.arrivals_in_window as f64 / window_s;
            let expected = lambda_per_s * self.delay_mean_ns as f64 / 1e9;
            let top = mix.time_at_ns.keys().next_back().copied().unwrap_or(0);
            let mut tv = 0.0;
            let mut covered = 0.0;
            let scan_top = top
                .max((expected * 4.0) as u64 + 20)
                .min(OCCUPANCY_SCAN_MAX);
            for k in 0..=scan_top {
                let observed = mix.time_at_ns.get(&k).map(|&t| weight(t)).unwrap_or(0.0);
                let model = poisson_pmf(k, expected);
                covered += model;
                tv += (observed - model).abs();
            }
            tv += (1.0 - covered).max(0.0);
            mixes.push(MixOccupancy {
                node: self.names.get(index).cloned().unwrap_or_default(),
                mean,
                variance,
                expected,
                poisson_tv_distance: tv / 2.0,
            });
        }
        let ratio = |f: &dyn Fn(&MixOccupancy) -> f64| {
            let valid: Vec<f64> = mixes.iter().filter(|m| m.expected > 0.0).map(f).collect();
            match valid.len() {
                0 => f64::NAN,
                n => valid.iter().sum::<f64>() / n as f64,
            }
        };
        QueueReport {
            mean_ratio: ratio(&|m| m.mean / m.expected),
            variance_ratio: ratio(&|m| m.variance / m.expected),
            mixes,
        }
    }
}

/// Credits the time since the last change (clipped to the window) to the current occupancy.
fn advance(mix: &mut Occupancy, window_ns: (u64, u64), now_ns: u64) {
    let from = mix.changed_ns.max(window_ns.0);
    let to = now_ns.min(window_ns.1);
    if to > from {
        *mix.time_at_ns.entry(mix.inside).or_default() += to - from;
    }
    mix.changed_ns = mix.changed_ns.max(now_ns);
}

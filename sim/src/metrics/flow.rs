//! A statistical flow-matching attacker at the gateways (after MixMatch's statistical
//! classifier), over the gateway-level view: for every (sender, recipient) pair it scores how
//! likely the recipient's exit times are given the sender's entry times and the public delay
//! distribution, then ranks the pairs. The truth (who sent real messages to whom) comes from
//! the senders' `send` rows and is used only to score the ranking: ROC, AUC, TPR at FPR 0.01.
//!
//! Delay model from entry to exit: the links' mean latency times the links crossed (client to
//! gateway, gateway to the first mix, ..., the last mix to the exit gateway: layers + 2), plus
//! the mixing delay, a sum of `layers` exponentials of mean `delay_mean_ns` (Gamma(layers,
//! delay_mean)); without mixing delay, Gaussian noise of [`FLOW_NOISE_NS`].
//!
//! Score of a pair: the mean over the recipient's exits y of ln(floor + LR(y)), where
//! LR(y) = (T / n_s) * sum_i f(y - x_i) compares "y follows one of the sender's n_s entries
//! x_i" with "y falls anywhere in the window of length T".

use std::collections::{HashMap, HashSet};

use serde::Serialize;

use crate::stats::GammaFit;
use crate::trace::{Class, Kind, TraceEvent, TraceMeta};
use crate::views::{GatewayDirection, GatewayObservation};

/// Standard deviation of the network noise the attacker assumes around the mean latency, ns.
pub const FLOW_NOISE_NS: f64 = 1e6;
/// Likelihood ratios below this count as this (one unexplained exit does not zero a pair).
const LIKELIHOOD_RATIO_FLOOR: f64 = 1e-6;
/// Entries further back than this many mixing-delay means (past the shift) are not summed.
const DELAY_MEANS_SPAN: f64 = 12.0;
/// Entries further than this many noise deviations are not summed.
const NOISE_DEVIATIONS_SPAN: f64 = 8.0;
/// ROC points kept in a report (the curve is resampled at even FPR steps).
const ROC_POINTS_MAX: usize = 101;
/// The false-positive rate at which the TPR is reported.
pub const FPR_TARGET: f64 = 0.01;

#[derive(Clone, Debug, Default, Serialize)]
pub struct FlowReport {
    pub pairs_count: u64,
    pub positives_count: u64,
    pub auc: f64,
    pub tpr_at_fpr_0_01: f64,
    /// (FPR, TPR), FPR ascending.
    pub roc: Vec<(f64, f64)>,
}

#[derive(Debug)]
pub struct FlowMatcher {
    window_ns: (u64, u64),
    shift_ns: f64,
    mixing: Option<GammaFit>,
    entries: HashMap<u32, Vec<u64>>,
    exits: HashMap<u32, Vec<u64>>,
    truth: HashSet<(u32, u32)>,
}

impl FlowMatcher {
    pub fn new(meta: &TraceMeta, window_ns: (u64, u64)) -> FlowMatcher {
        let links = f64::from(meta.layers + 2);
        let mixing = (meta.delay_mean_ns > 0 && meta.layers > 0).then(|| GammaFit {
            shape: f64::from(meta.layers),
            scale: meta.delay_mean_ns as f64,
        });
        FlowMatcher {
            window_ns,
            shift_ns: meta.link_latency_ns_mean as f64 * links,
            mixing,
            entries: HashMap::new(),
            exits: HashMap::new(),
            truth: HashSet::new(),
        }
    }

    /// Ground truth: a real message from `event.node` to `event.destination`.
    pub fn observe_truth(&mut self, event: &TraceEvent) {
        if let (Kind::Send, Class::Real, Some(to)) = (event.kind, event.class, event.destination) {
            self.truth.insert((event.node, to));
        }
    }

    pub fn observe(&mut self, observation: &GatewayObservation) {
        if !(self.window_ns.0..=self.window_ns.1).contains(&observation.t_ns) {
            return;
        }
        let times = match observation.direction {
            GatewayDirection::Entry => self.entries.entry(observation.client),
            GatewayDirection::Exit => self.exits.entry(observation.client),
        };
        times.or_default().push(observation.t_ns);
    }

    fn density(&self, z_ns: f64) -> f64 {
        match &self.mixing {
            Some(gamma) => gamma.pdf(z_ns),
            None => {
                let u = z_ns / FLOW_NOISE_NS;
                (-0.5 * u * u).exp() / (FLOW_NOISE_NS * (2.0 * std::f64::consts::PI).sqrt())
            }
        }
    }

    /// How far back (ns, past the shift) an entry can explain an exit, and how far forward.
    fn span_ns(&self) -> (f64, f64) {
        let noise = NOISE_DEVIATIONS_SPAN * FLOW_NOISE_NS;
        match &self.mixing {
            Some(g) => (g.shape * g.scale * DELAY_MEANS_SPAN + noise, 0.0),
            None => (noise, noise),
        }
    }

    fn score(&self, entries: &[u64], exits: &[u64]) -> f64 {
        let window_ns = self.window_ns.1.saturating_sub(self.window_ns.0).max(1) as f64;
        let (back_ns, ahead_ns) = self.span_ns();
        let scale = window_ns / entries.len().max(1) as f64;
        let mut total = 0.0;
        for &y in exits {
            let y = y as f64 - self.shift_ns;
            let low = (y - back_ns).max(0.0) as u64;
            let high = (y + ahead_ns).max(0.0) as u64;
            let from = entries.partition_point(|&x| x < low);
            let to = entries.partition_point(|&x| x <= high);
            let sum: f64 = entries[from..to]
                .iter()
                .map(|&x| self.density(y - x as f64))
                .sum();
            total += (LIKELIHOOD_RATIO_FLOOR + scale * sum).ln();
        }
        total / exits.len().max(1) as f64
    }

    pub fn report(&mut self) -> FlowReport {
        for times in self.entries.values_mut().chain(self.exits.values_mut()) {
            times.sort_unstable();
        }
        let mut senders: Vec<u32> = self.entries.keys().copied().collect();
        let mut recipients: Vec<u32> = self.exits.keys().copied().collect();
        senders.sort_unstable();
        recipients.sort_unstable();
        let mut scored: Vec<(f64, bool)> = Vec::new();
        for &s in &senders {
            for &r in &recipients {
                if s == r {
                    continue;
                }
                let (Some(entries), Some(exits)) = (self.entries.get(&s), self.exits.get(&r))
                else {
                    continue;
                };
                let positive = self.truth.contains(&(s, r));
                scored.push((self.score(entries, exits), positive));
            }
        }
        roc(scored)
    }
}

/// ROC of scored pairs (higher score = "linked"); ties move together.
pub fn roc(mut scored: Vec<(f64, bool)>) -> FlowReport {
    scored.sort_by(|a, b| b.0.total_cmp(&a.0));
    let positives = scored.iter().filter(|(_, p)| *p).count();
    let negatives = scored.len() - positives;
    let mut report = FlowReport {
        pairs_count: scored.len() as u64,
        positives_count: positives as u64,
        ..FlowReport::default()
    };
    if positives == 0 || negatives == 0 {
        report.auc = f64::NAN;
        report.tpr_at_fpr_0_01 = f64::NAN;
        return report;
    }
    let mut points = vec![(0.0, 0.0)];
    let (mut tp, mut fp) = (0usize, 0usize);
    let mut index = 0;
    while index < scored.len() {
        let score = scored[index].0;
        while index < scored.len() && scored[index].0.total_cmp(&score).is_eq() {
            if scored[index].1 {
                tp += 1;
            } else {
                fp += 1;
            }
            index += 1;
        }
        points.push((fp as f64 / negatives as f64, tp as f64 / positives as f64));
    }
    let mut auc = 0.0;
    for pair in points.windows(2) {
        auc += (pair[1].0 - pair[0].0) * (pair[1].1 + pair[0].1) / 2.0;
    }
    report.auc = auc;
    report.tpr_at_fpr_0_01 = points
        .iter()
        .filter(|(fpr, _)| *fpr <= FPR_TARGET)
        .map(|(_, tpr)| *tpr)
        .fold(0.0, f64::max);
    report.roc = resample(&points);
    report
}

/// The curve's TPR at even FPR steps (step function: the best TPR at or below each FPR).
fn resample(points: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let steps = ROC_POINTS_MAX - 1;
    (0..=steps)
        .map(|i| {
            let fpr = i as f64 / steps as f64;
            let tpr = points
                .iter()
                .filter(|(f, _)| *f <= fpr + 1e-12)
                .map(|(_, t)| *t)
                .fold(0.0, f64::max);
            (fpr, tpr)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roc_of_a_perfect_and_a_useless_ranking() {
        let perfect = roc(vec![(3.0, true), (2.0, true), (1.0, false), (0.0, false)]);
        assert_eq!(perfect.auc, 1.0);
        assert_eq!(perfect.tpr_at_fpr_0_01, 1.0);
        let inverted = roc(vec![(3.0, false), (2.0, false), (1.0, true), (0.0, true)]);
        assert_eq!(inverted.auc, 0.0);
        assert_eq!(inverted.tpr_at_fpr_0_01, 0.0);
        // All tied: one step from (0,0) to (1,1).
        let tied = roc(vec![(1.0, true), (1.0, false)]);
        assert!((tied.auc - 0.5).abs() < 1e-12);
    }
}

//! Per-hop and end-to-end latency. End to end: a real message's `send` at its client to its
//! `deliver` at the exit gateway (endpoint events, in every trace). Per hop: a mix's residence
//! and drawn delay, which are lab columns (they link a departure to its arrival).

use std::collections::HashMap;

use serde::Serialize;

use crate::stats::{GammaFit, Summary};
use crate::trace::{Class, Kind, Role, TraceEvent, TraceMeta};

const NS_PER_MS: f64 = 1e6;
/// The end-to-end latency's empirical CDF is kept as this many quantiles (0 %, 1 %, .. 100 %).
pub const QUANTILES_COUNT: usize = 101;

#[derive(Clone, Debug, Default, Serialize)]
pub struct LatencyReport {
    pub end_to_end_ms: Summary,
    pub end_to_end_gamma: Option<GammaFit>,
    /// Quantiles 0 %, 1 %, .. 100 % of the end-to-end latency (ms): its empirical CDF. Empty
    /// without deliveries.
    pub end_to_end_quantiles_ms: Vec<f64>,
    /// Lab traces only (empty otherwise).
    pub hop_residence_ms: Summary,
    pub hop_delay_drawn_ms: Summary,
    pub hop_gamma: Option<GammaFit>,
}

#[derive(Debug)]
pub struct Latency {
    roles: Vec<Role>,
    /// (message, fragment) -> send time, for real messages sent inside the window.
    sent: HashMap<(u64, u32), u64>,
    end_to_end_ms: Vec<f64>,
    residence_ms: Vec<f64>,
    drawn_ms: Vec<f64>,
}

impl Latency {
    pub fn new(meta: &TraceMeta) -> Latency {
        Latency {
            roles: meta.nodes.iter().map(|n| n.role).collect(),
            sent: HashMap::new(),
            end_to_end_ms: Vec::new(),
            residence_ms: Vec::new(),
            drawn_ms: Vec::new(),
        }
    }

    pub fn observe(&mut self, event: &TraceEvent, in_window: bool) {
        let key = event
            .message_id
            .map(|m| (m, event.fragment_id.unwrap_or(0)));
        match event.kind {
            Kind::Send if event.class == Class::Real && in_window => {
                if let Some(key) = key {
                    self.sent.insert(key, event.t_ns);
                }
            }
            Kind::Deliver if event.class == Class::Real => {
                let sent = key.and_then(|k| self.sent.remove(&k));
                if let Some(sent_ns) = sent {
                    let ms = event.t_ns.saturating_sub(sent_ns) as f64 / NS_PER_MS;
                    self.end_to_end_ms.push(ms);
                }
            }
            Kind::Depart if in_window => {
                let at_mix = self.roles.get(event.node as usize) == Some(&Role::Mix);
                if let (true, Some(residence)) = (at_mix, event.lab.residence_ns) {
                    self.residence_ms.push(residence as f64 / NS_PER_MS);
                }
                if let (true, Some(drawn)) = (at_mix, event.lab.delay_drawn_ns) {
                    self.drawn_ms.push(drawn as f64 / NS_PER_MS);
                }
            }
            _ => {}
        }
    }

    pub fn report(&self) -> LatencyReport {
        let mut sorted = self.end_to_end_ms.clone();
        sorted.sort_by(f64::total_cmp);
        let end_to_end_quantiles_ms = quantiles(&sorted);
        let end_to_end_ms = Summary::of(&mut sorted);
        let hop_residence_ms = Summary::of(&mut self.residence_ms.clone());
        LatencyReport {
            end_to_end_gamma: GammaFit::of(&end_to_end_ms),
            end_to_end_ms,
            end_to_end_quantiles_ms,
            hop_gamma: GammaFit::of(&hop_residence_ms),
            hop_residence_ms,
            hop_delay_drawn_ms: Summary::of(&mut self.drawn_ms.clone()),
        }
    }
}

/// [`QUANTILES_COUNT`] evenly spaced quantiles of `sorted` (nearest rank), none if empty.
fn quantiles(sorted: &[f64]) -> Vec<f64> {
    let Some(last) = sorted.len().checked_sub(1) else {
        return Vec::new();
    };
    (0..QUANTILES_COUNT)
        .map(|i| {
            let rank = (i as f64 / (QUANTILES_COUNT - 1) as f64 * last as f64).round() as usize;
            sorted[rank.min(last)]
        })
        .collect()
}

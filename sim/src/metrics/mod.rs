//! Metrics over traces (from the simulator or real nodes), each computed in one streaming pass
//! after a first pass finds the trace's time span: warm-up and drain are cut off its ends.
//! Across seeds, every scalar gets a 95 % Student-t interval over the per-seed values.

pub mod flow;
pub mod latency;
pub mod mix_entropy;
pub mod overhead;
pub mod queue;
pub mod sender_entropy;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::Serialize;

use crate::stats::{Interval, Summary};
use crate::trace::{Class, Kind, Role, TraceError, TraceMeta, TraceReader};
use crate::views::{gateway_view, link_view};

pub use flow::FlowReport;
pub use latency::LatencyReport;
pub use overhead::OverheadReport;
pub use queue::QueueReport;
pub use sender_entropy::{LabelledSenders, SenderEntropyReport};

#[derive(Clone, Debug, Default)]
pub struct MetricsOptions {
    pub warmup_ns: u64,
    pub drain_ns: u64,
    /// Node names of the two labelled senders; when not given, the first two clients (in the
    /// trace's node order) that send a real message.
    pub labelled: Option<(String, String)>,
}

/// Every metric of one trace.
#[derive(Clone, Debug, Serialize)]
pub struct TraceMetrics {
    pub seed: u64,
    pub source: String,
    pub lab: bool,
    /// The measurement window [start, end] (ns, both ends included).
    pub window_ns: (u64, u64),
    /// Per mix: Loopix Eq. 5 entropy of its outputs (bits).
    pub mix_entropy_bits: BTreeMap<String, Summary>,
    pub mix_entropy_bits_mean: f64,
    pub sender: SenderEntropyReport,
    pub latency: LatencyReport,
    pub queue: QueueReport,
    pub overhead: OverheadReport,
    pub flow: FlowReport,
}

impl TraceMetrics {
    /// The scalars intervals are computed for, by name.
    pub fn scalars(&self) -> Vec<(&'static str, f64)> {
        vec![
            ("mix_entropy_bits_mean", self.mix_entropy_bits_mean),
            ("sender_entropy_bits_mean", self.sender.entropy_bits.mean),
            (
                "sender_entropy_bits_median",
                self.sender.entropy_bits.median,
            ),
            ("effective_senders_mean", self.sender.effective_senders_mean),
            (
                "degree_of_anonymity_mean",
                self.sender.degree_of_anonymity_mean,
            ),
            ("epsilon_mean", self.sender.epsilon.mean),
            ("delta", self.sender.delta),
            (
                "latency_end_to_end_ms_mean",
                self.latency.end_to_end_ms.mean,
            ),
            ("latency_end_to_end_ms_p99", self.latency.end_to_end_ms.p99),
            ("latency_hop_ms_mean", self.latency.hop_residence_ms.mean),
            ("queue_mean_ratio", self.queue.mean_ratio),
            ("lambda_over_mu_mean", self.queue.lambda_over_mu_mean()),
            ("queue_variance_ratio", self.queue.variance_ratio),
            ("cover_per_real", self.overhead.cover_per_real),
            ("flow_auc", self.flow.auc),
            ("flow_tpr_at_fpr_0_01", self.flow.tpr_at_fpr_0_01),
        ]
    }
}

/// What the first pass finds: the trace's time span, and the nodes that send real messages.
struct FirstPass {
    span_ns: (u64, u64),
    real_senders: BTreeSet<u32>,
}

fn first_pass(path: &Path) -> Result<FirstPass, TraceError> {
    let mut span: Option<(u64, u64)> = None;
    let mut real_senders = BTreeSet::new();
    for event in TraceReader::open(path)? {
        let event = event?;
        let t = event.t_ns;
        span = Some(match span {
            None => (t, t),
            Some((a, b)) => (a.min(t), b.max(t)),
        });
        if event.kind == Kind::Send && event.class == Class::Real {
            real_senders.insert(event.node);
        }
    }
    let span_ns = span.ok_or_else(|| TraceError::Meta(format!("{}: no events", path.display())))?;
    Ok(FirstPass {
        span_ns,
        real_senders,
    })
}

fn labelled_senders(
    meta: &TraceMeta,
    names: &Option<(String, String)>,
    real_senders: &BTreeSet<u32>,
) -> Result<Option<LabelledSenders>, TraceError> {
    let index = meta.node_index();
    match names {
        Some((a, b)) => {
            let find = |name: &str| {
                index
                    .get(name)
                    .copied()
                    .ok_or_else(|| TraceError::Meta(format!("labelled sender {name:?} unknown")))
            };
            Ok(Some(LabelledSenders {
                sender0: find(a)?,
                sender1: find(b)?,
            }))
        }
        None => {
            let mut clients = meta
                .nodes
                .iter()
                .enumerate()
                .filter(|(i, n)| n.role == Role::Client && real_senders.contains(&(*i as u32)));
            match (clients.next(), clients.next()) {
                (Some((a, _)), Some((b, _))) => Ok(Some(LabelledSenders {
                    sender0: a as u32,
                    sender1: b as u32,
                })),
                _ => Ok(None),
            }
        }
    }
}

/// Computes every metric of one trace.
pub fn compute(path: &Path, options: &MetricsOptions) -> Result<TraceMetrics, TraceError> {
    let first = first_pass(path)?;
    let (first_ns, last_ns) = first.span_ns;
    let window_ns = (
        first_ns.saturating_add(options.warmup_ns),
        last_ns.saturating_sub(options.drain_ns),
    );
    if window_ns.0 >= window_ns.1 {
        return Err(TraceError::Meta(format!(
            "{}: warm-up and drain leave no window in a {} ms trace",
            path.display(),
            (last_ns - first_ns) / 1_000_000
        )));
    }
    let mut reader = TraceReader::open(path)?;
    let meta = reader.meta().clone();
    let lab = reader.is_lab();
    let roles: Vec<Role> = meta.nodes.iter().map(|n| n.role).collect();
    let mut mix_entropy = mix_entropy::MixEntropy::default();
    let labelled = labelled_senders(&meta, &options.labelled, &first.real_senders)?;
    let mut sender = sender_entropy::SenderEntropy::new(&meta, labelled);
    let mut latency = latency::Latency::new(&meta);
    let mut queue = queue::Queue::new(&meta, window_ns);
    let mut overhead = overhead::Overhead::default();
    let mut flow = flow::FlowMatcher::new(&meta, window_ns);
    while let Some(event) = reader.next_event()? {
        let in_window = (window_ns.0..=window_ns.1).contains(&event.t_ns);
        let at_mix = roles.get(event.node as usize) == Some(&Role::Mix);
        if at_mix {
            match link_view(&event) {
                Some(link) => mix_entropy.observe(&link, in_window),
                None if event.kind == crate::trace::Kind::Drop => {
                    mix_entropy.observe_loss(event.node)
                }
                None => {}
            }
        }
        sender.observe(&event, in_window);
        latency.observe(&event, in_window);
        queue.observe(&event);
        overhead.observe(&event, in_window);
        flow.observe_truth(&event);
        if let Some(observation) = gateway_view(&meta, &event) {
            flow.observe(&observation);
        }
    }
    if sender.missing_lab_link {
        return Err(TraceError::Meta(
            "the trace has corrupt mixes but no lab column: sender entropy needs in_packet_id \
             for them (record it with `--lab`)"
                .into(),
        ));
    }
    let per_mix = mix_entropy.per_mix();
    let means: Vec<f64> = per_mix.iter().map(|(_, s)| s.mean).collect();
    let name = |node: u32| meta.node(node).map(|n| n.name.clone()).unwrap_or_default();
    Ok(TraceMetrics {
        seed: meta.seed,
        source: meta.source.clone(),
        lab,
        window_ns,
        mix_entropy_bits_mean: mean(&means),
        mix_entropy_bits: per_mix.into_iter().map(|(n, s)| (name(n), s)).collect(),
        sender: sender.report(),
        latency: latency.report(),
        queue: queue.report(),
        overhead: overhead.report(),
        flow: flow.report(),
    })
}

fn mean(values: &[f64]) -> f64 {
    match values.len() {
        0 => f64::NAN,
        n => values.iter().sum::<f64>() / n as f64,
    }
}

/// Metrics of several seeds: intervals of the scalars and every seed's full report.
#[derive(Clone, Debug, Serialize)]
pub struct SeedsReport {
    pub seeds: Vec<u64>,
    pub intervals: BTreeMap<&'static str, Interval>,
    pub per_seed: Vec<TraceMetrics>,
}

pub fn over_seeds(per_seed: Vec<TraceMetrics>) -> SeedsReport {
    let mut columns: BTreeMap<&'static str, Vec<f64>> = BTreeMap::new();
    for metrics in &per_seed {
        for (name, value) in metrics.scalars() {
            columns.entry(name).or_default().push(value);
        }
    }
    SeedsReport {
        seeds: per_seed.iter().map(|m| m.seed).collect(),
        intervals: columns
            .into_iter()
            .map(|(name, values)| (name, Interval::over_seeds(values)))
            .collect(),
        per_seed,
    }
}

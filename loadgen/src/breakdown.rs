//! Where the end-to-end time goes: per-stage figures whose *means* add up to the end-to-end
//! mean (means add; percentiles do not, so the p99s are shown beside, never summed).
//!
//! A packet's path is sender → entry gateway → mix layer 1 → 2 → 3 → exit gateway → receiver.
//! The stages and how each is measured:
//! - `sender`: scheduled send time → frame handed to the kernel, by loadgen's own clock (the
//!   send lateness histogram: every sent packet, exact).
//! - `mix layer N`: the layer's nodes' `processing_residence` (arrival → hand-off for
//!   sending: batching, Sphinx processing, the encoded Sphinx delay, queueing before the
//!   egress queue), from their metrics over the run. A packet crosses one node per layer, so
//!   the layer's mean is the count-weighted mean of its nodes' (sum over sum); the p99 is
//!   only known to lie between the smallest lower bound and the largest upper bound of its
//!   nodes' p99 intervals (power-of-two buckets). Nodes are grouped by their layer in the
//!   document in force at the run's start: exact while the authorities keep the layers
//!   (a layer period, an hour by default); a node that moved layer during the run (a
//!   redraw) is named, its figures counting in the layer it started in (its metrics are
//!   one delta over the run, which cannot be split at the change).
//! - `exit gateway`: the gateways' `batch_wait` + `crypto_per_packet` (the final hop's
//!   batching and Sphinx processing; a gateway's engine sees only final-hop packets, client
//!   forwards bypass it). Mailbox and WebSocket delivery are not timed by the gateway.
//! - `unattributed / network`: the end-to-end mean minus the measured stages' means: the
//!   links between hops (TCP, WebSocket), the entry gateway's forwarding, the exit gateway's
//!   mailbox and delivery, loadgen's receiver, and every stage that could not be measured.
//!   Negative when the measured means exceed the end-to-end mean (the nodes' figures include
//!   other traffic than loadgen's, or the nodes' and loadgen's counts differ): said so.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::driver::NodeInfo;
use crate::report::quantile_n_min;
use crate::scrape::NodeDelta;

/// The node stage a mix layer's time is read from.
const RESIDENCE_STAGE: &str = "processing_residence";
/// The node stages a gateway's final-hop processing is read from (their means add).
const GATEWAY_STAGES: [&str; 2] = ["batch_wait", "crypto_per_packet"];
/// Share of the end-to-end mean below which a negative remainder is rounding, not a
/// contradiction.
const NEGATIVE_TOLERANCE_RATIO: f64 = 0.01;

/// One stage of the breakdown.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Stage {
    pub stage: String,
    /// How the figures were measured.
    pub measured_by: String,
    /// `false`: no figure (the reason is in `measured_by`); its time is in the unattributed
    /// remainder.
    pub measured: bool,
    /// Values the figures are over (packets, or node stage samples).
    pub count: u64,
    pub mean_ms: Option<f64>,
    /// The p99 lies in `[p99_ms_lower, p99_ms_upper]` (equal when exact; upper `null` when
    /// beyond the nodes' buckets; both `null` for the exit gateway, a sum of two stages).
    pub p99_ms_lower: Option<f64>,
    pub p99_ms_upper: Option<f64>,
    /// Fewer values than a p99 needs (`crate::report::quantile_n_min`): it is close to the
    /// maximum and says little.
    pub p99_n_too_small: bool,
}

/// The report's `result.breakdown`.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Breakdown {
    pub end_to_end_mean_ms: Option<f64>,
    pub end_to_end_p99_ms: Option<f64>,
    /// In path order; the unattributed remainder is not among them.
    pub stages: Vec<Stage>,
    /// Sum of the measured stages' means.
    pub measured_mean_ms: f64,
    /// `end_to_end_mean_ms - measured_mean_ms`: links, unmeasured stages (see the module
    /// text). `null` when nothing was delivered.
    pub unattributed_mean_ms: Option<f64>,
    /// Set when the remainder is negative beyond rounding, with the likely reason.
    pub unattributed_note: Option<String>,
    /// Stages that could not be measured (their time is in the remainder).
    pub not_measured: Vec<String>,
}

fn us_ms(us: f64) -> f64 {
    us / 1e3
}

/// The sender stage from loadgen's send lateness histogram (µs).
fn sender_stage(lateness_us: &Histogram<u64>) -> Stage {
    let measured = !lateness_us.is_empty();
    let p99 = measured.then(|| us_ms(lateness_us.value_at_quantile(0.99) as f64));
    Stage {
        stage: "sender".into(),
        measured_by: "loadgen: scheduled send time to frame handed to the kernel (send \
                      lateness, every sent packet)"
            .into(),
        measured,
        count: lateness_us.len(),
        mean_ms: measured.then(|| us_ms(lateness_us.mean())),
        p99_ms_lower: p99,
        p99_ms_upper: p99,
        p99_n_too_small: lateness_us.len() < quantile_n_min(0.99),
    }
}

/// Nodes of one group (a layer, the gateways): the count-weighted mean of `stages`' means
/// added, and the p99 interval of the first stage across nodes. `None` figures when no node
/// of the group could be read.
struct Group<'a> {
    nodes: Vec<&'a Result<NodeDelta, String>>,
}

impl Group<'_> {
    fn stage(&self, name: &str, stages: &[&str], measured_by: &str) -> Stage {
        let read: Vec<&NodeDelta> = self.nodes.iter().filter_map(|d| d.as_ref().ok()).collect();
        let total = self.nodes.len();
        let mut mean_ms = 0.0;
        let mut count = 0u64;
        let mut any = false;
        for stage in stages {
            let (sum, n) = read
                .iter()
                .filter_map(|d| d.stages.get(*stage))
                .filter(|s| s.count > 0)
                .fold((0.0, 0u64), |(sum, n), s| {
                    (sum + s.mean_ms.unwrap_or(0.0) * s.count as f64, n + s.count)
                });
            if n > 0 {
                any = true;
                mean_ms += sum / n as f64;
                count = count.max(n);
            }
        }
        // A p99 only for a single stage: the p99 of a sum is not the sum of p99s.
        let single = match stages {
            [one] => Some(*one),
            _ => None,
        };
        let intervals: Vec<&crate::scrape::StageDelta> = read
            .iter()
            .filter_map(|d| single.and_then(|stage| d.stages.get(stage)))
            .filter(|s| s.count > 0)
            .collect();
        let p99_lower = intervals
            .iter()
            .filter_map(|s| s.p99_ms_lower)
            .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.min(v))));
        // One node beyond the buckets makes the upper bound unknown.
        let p99_upper = intervals
            .iter()
            .map(|s| s.p99_ms_upper)
            .try_fold(None, |m: Option<f64>, v| {
                v.map(|v| Some(m.map_or(v, |m: f64| m.max(v))))
            })
            .flatten();
        let mut how = measured_by.to_string();
        if read.len() < total {
            let _ = write!(
                how,
                "; {} of {total} node(s) could be read (their metrics: no endpoint or \
                 unreachable), the figures are theirs",
                read.len()
            );
        }
        Stage {
            stage: name.into(),
            measured_by: how,
            measured: any,
            count,
            mean_ms: any.then_some(mean_ms),
            p99_ms_lower: if any { p99_lower } else { None },
            p99_ms_upper: if any && !intervals.is_empty() {
                p99_upper
            } else {
                None
            },
            p99_n_too_small: single.is_some() && count < quantile_n_min(0.99),
        }
    }
}

/// The breakdown of one run: `nodes` with their metrics deltas over the run (mixnodes by
/// their layer at the start), loadgen's send lateness and end-to-end latency histograms
/// (µs), and the mixnodes that moved layer during the run (`name (layer)`, from the
/// topology refresh).
pub fn breakdown(
    nodes: &[(NodeInfo, Result<NodeDelta, String>)],
    lateness_us: &Histogram<u64>,
    latency_us: &Histogram<u64>,
    moved: &[String],
) -> Breakdown {
    let mut stages = vec![sender_stage(lateness_us)];
    let gateways: Vec<&Result<NodeDelta, String>> = nodes
        .iter()
        .filter(|(info, _)| info.role == "gateway")
        .map(|(_, d)| d)
        .collect();
    let mut not_measured = Vec::new();
    if !gateways.is_empty() {
        not_measured.push(
            "entry gateway (client session to layer 1: the gateway does not time forwards)"
                .to_string(),
        );
    }
    let mut layers: BTreeMap<&str, Group<'_>> = BTreeMap::new();
    for (info, delta) in nodes {
        if info.role.starts_with("mixnode") {
            layers
                .entry(info.role.as_str())
                .or_insert(Group { nodes: Vec::new() })
                .nodes
                .push(delta);
        }
    }
    for (role, group) in &layers {
        // `mixnode layer N` → `mix layer N`; `node` mode's one node keeps its role's name.
        let name = match role.strip_prefix("mixnode layer ") {
            Some(layer) => format!("mix layer {layer}"),
            None => role.to_string(),
        };
        let mut how = "node metrics: processing_residence (arrival to hand-off for sending: \
                       batching, Sphinx processing, the Sphinx delay, queueing), count-weighted \
                       over the layer's nodes at the run's start"
            .to_string();
        if !moved.is_empty() {
            let _ = write!(
                how,
                "; layers changed during the run, {} mixnode(s) moved and count in the layer \
                 they started in: {}",
                moved.len(),
                moved.join(", ")
            );
        }
        let stage = group.stage(&name, &[RESIDENCE_STAGE], &how);
        stages.push(stage);
    }
    if gateways.is_empty() {
        not_measured.push(
            "final hop (loadgen's own receiver: its Sphinx processing is not timed apart)".into(),
        );
    } else {
        stages.push(Group { nodes: gateways }.stage(
            "exit gateway",
            &GATEWAY_STAGES,
            "node metrics: batch_wait + crypto_per_packet of the gateways (the final hop's \
             batching and Sphinx processing); mailbox and WebSocket delivery not timed",
        ));
        not_measured.push(
            "exit gateway mailbox and delivery to the receiver (not timed by the gateway)".into(),
        );
    }
    for stage in stages.iter().filter(|s| !s.measured) {
        not_measured.push(format!("{} ({})", stage.stage, stage.measured_by));
    }
    not_measured.push("links between hops (TCP, WebSocket): no clock on the wire".into());
    let measured_mean_ms: f64 = stages.iter().filter_map(|s| s.mean_ms).sum();
    let delivered = !latency_us.is_empty();
    let end_to_end_mean_ms = delivered.then(|| us_ms(latency_us.mean()));
    let unattributed_mean_ms = end_to_end_mean_ms.map(|e2e| e2e - measured_mean_ms);
    let unattributed_note = end_to_end_mean_ms
        .zip(unattributed_mean_ms)
        .filter(|(e2e, rest)| *rest < -NEGATIVE_TOLERANCE_RATIO * e2e)
        .map(|_| {
            "negative: the measured stages add up to more than the end-to-end mean; the nodes' \
             figures cover all their traffic (cover, other clients, packets that were then \
             lost), not only loadgen's delivered packets"
                .to_string()
        });
    Breakdown {
        end_to_end_mean_ms,
        end_to_end_p99_ms: delivered.then(|| us_ms(latency_us.value_at_quantile(0.99) as f64)),
        stages,
        measured_mean_ms,
        unattributed_mean_ms,
        unattributed_note,
        not_measured,
    }
}

fn ms(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.3}"))
}

/// The text block: one line per stage, the remainder, and the end-to-end mean they add to.
pub fn render(out: &mut String, b: &Breakdown) {
    let _ = writeln!(
        out,
        "  where the time goes (means add up to the end-to-end mean; p99s do not add):"
    );
    let mut said: Vec<&str> = Vec::new();
    for s in &b.stages {
        let p99 = match (s.p99_ms_lower, s.p99_ms_upper) {
            _ if s.p99_n_too_small && s.measured => format!("p99 n too small (n={})", s.count),
            (Some(l), Some(u)) if (l - u).abs() < 1e-9 => format!("p99 {l:.3}"),
            (l, Some(u)) => format!("p99 in [{}, {u:.3}]", ms(l)),
            (Some(l), None) => format!("p99 > {l:.3}"),
            _ => "p99 -".into(),
        };
        // How a stage is measured is said once: the layers share it.
        let how = if said.contains(&s.measured_by.as_str()) {
            "as above".to_string()
        } else {
            said.push(&s.measured_by);
            s.measured_by.clone()
        };
        let p99 = if p99.ends_with('-') || p99.ends_with(')') {
            p99
        } else {
            format!("{p99} ms")
        };
        let _ = writeln!(
            out,
            "    {:<24} mean {:>9} ms  {p99:<28} ({how})",
            s.stage,
            if s.measured {
                ms(s.mean_ms)
            } else {
                "not measured".into()
            },
        );
    }
    let _ = writeln!(
        out,
        "    {:<24} mean {:>9} ms  (end-to-end mean minus the stages above){}",
        "unattributed / network",
        ms(b.unattributed_mean_ms),
        b.unattributed_note
            .as_ref()
            .map(|n| format!(" {n}"))
            .unwrap_or_default()
    );
    let _ = writeln!(
        out,
        "    {:<24} mean {:>9} ms  p99 {} ms",
        "= end to end",
        ms(b.end_to_end_mean_ms),
        ms(b.end_to_end_p99_ms)
    );
    if !b.not_measured.is_empty() {
        let _ = writeln!(
            out,
            "    not measured (in the remainder): {}",
            b.not_measured.join("; ")
        );
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::scrape::{delta, parse};

    fn node(name: &str, role: &str) -> NodeInfo {
        NodeInfo {
            name: name.into(),
            role: role.into(),
            listen: "127.0.0.1:1".parse().unwrap(),
            metrics: None,
        }
    }

    /// A node whose `stage` saw `count` values summing to `sum_s`, all in the bucket `le`.
    fn metrics(stages: &[(&str, u64, f64, &str)]) -> NodeDelta {
        let mut text = String::new();
        for (stage, count, sum_s, le) in stages {
            text += &format!(
                "lethe_stage_seconds_bucket{{stage=\"{stage}\",le=\"{le}\"}} {count}\n\
                 lethe_stage_seconds_bucket{{stage=\"{stage}\",le=\"+Inf\"}} {count}\n\
                 lethe_stage_seconds_sum{{stage=\"{stage}\"}} {sum_s}\n\
                 lethe_stage_seconds_count{{stage=\"{stage}\"}} {count}\n"
            );
        }
        delta(&parse(""), &parse(&text))
    }

    fn histogram(values_us: &[u64]) -> Histogram<u64> {
        let mut h = crate::tracker::latency_histogram().unwrap();
        for v in values_us {
            h.record(*v).unwrap();
        }
        h
    }

    #[test]
    fn stage_means_and_the_remainder_add_up_to_the_end_to_end_mean() {
        let nodes = vec![
            // Layer 1 has two nodes: 100 values at 1 ms and 300 at 2 ms: mean 1.75 ms.
            (
                node("a", "mixnode layer 1"),
                Ok(metrics(&[("processing_residence", 100, 0.1, "0.001024")])),
            ),
            (
                node("b", "mixnode layer 1"),
                Ok(metrics(&[("processing_residence", 300, 0.6, "0.002048")])),
            ),
            (
                node("c", "mixnode layer 2"),
                Ok(metrics(&[("processing_residence", 400, 0.4, "0.001024")])),
            ),
            (node("d", "mixnode layer 3"), Err("no metrics".into())),
            (
                node("gw", "gateway"),
                Ok(metrics(&[
                    ("batch_wait", 400, 0.04, "0.000128"),
                    ("crypto_per_packet", 400, 0.02, "0.000064"),
                ])),
            ),
        ];
        let lateness = histogram(&[100; 400]);
        let latency = histogram(&[5_000; 400]);
        let b = breakdown(&nodes, &lateness, &latency, &[]);
        let names: Vec<&str> = b.stages.iter().map(|s| s.stage.as_str()).collect();
        assert_eq!(
            names,
            [
                "sender",
                "mix layer 1",
                "mix layer 2",
                "mix layer 3",
                "exit gateway"
            ]
        );
        let mean = |i: usize| b.stages[i].mean_ms.unwrap();
        assert!((mean(0) - 0.1).abs() < 0.001, "{b:#?}");
        assert!((mean(1) - 1.75).abs() < 1e-9, "{b:#?}");
        assert!((mean(2) - 1.0).abs() < 1e-9);
        assert!(!b.stages[3].measured && b.stages[3].mean_ms.is_none());
        assert!(
            (mean(4) - 0.15).abs() < 1e-9,
            "batch wait 0.1 + crypto 0.05"
        );
        // Layer 1's p99: between the nodes' intervals, up to the larger bucket's edge.
        assert_eq!(b.stages[1].p99_ms_upper, Some(2.048));
        let e2e = b.end_to_end_mean_ms.unwrap();
        let rest = b.unattributed_mean_ms.unwrap();
        assert!((b.measured_mean_ms + rest - e2e).abs() < 1e-9);
        assert!(rest > 0.0 && b.unattributed_note.is_none());
        assert!(
            b.not_measured.iter().any(|n| n.starts_with("mix layer 3")),
            "{:?}",
            b.not_measured
        );
        let mut text = String::new();
        render(&mut text, &b);
        assert!(text.contains("unattributed / network"), "{text}");
        assert!(text.contains("not measured"), "{text}");
        // A redraw during the run is said in the layers' stages.
        assert!(!b.stages[1].measured_by.contains("moved"));
        let moved = ["mix3 (layer 2)".to_string()];
        let b = breakdown(&nodes, &lateness, &latency, &moved);
        assert!(b.stages[1]
            .measured_by
            .ends_with("moved and count in the layer they started in: mix3 (layer 2)"));
    }

    #[test]
    fn a_negative_remainder_is_said_and_nothing_delivered_has_none() {
        let nodes = vec![(
            node("a", "mixnode layer 1"),
            Ok(metrics(&[("processing_residence", 10, 0.1, "0.016384")])),
        )];
        let b = breakdown(&nodes, &histogram(&[10; 10]), &histogram(&[1_000; 10]), &[]);
        assert!(b.unattributed_mean_ms.unwrap() < 0.0);
        assert!(b
            .unattributed_note
            .as_deref()
            .unwrap()
            .starts_with("negative"));
        let b = breakdown(&nodes, &histogram(&[]), &histogram(&[]), &[]);
        assert_eq!(b.unattributed_mean_ms, None);
        assert!(!b.stages[0].measured);
    }
}

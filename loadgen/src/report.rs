//! The report: one serialisable document (schema `schema/report.schema.json`, version
//! [`SCHEMA_VERSION`]) and its text rendering.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::driver::NodeInfo;
use crate::receiver::ReceiverStats;
use crate::run::RunOutcome;
use crate::scrape::NodeDelta;
use crate::tracker::Second;

pub const SCHEMA_VERSION: u32 = 1;
/// Warn when the achieved rate is above this share of the generator's capacity.
pub const CAPACITY_WARN_RATIO: f64 = 0.8;
/// Warn about late packets only when they can distort the figures: more than this share of
/// the sent ones late (at 1 % they reach the p99 by themselves: a late packet's latency
/// carries its lateness) ...
pub const LATE_WARN_RATIO: f64 = 0.01;
/// ... and the senders' lateness p99 above this share of the end-to-end p99 (below it, the
/// p99 is overstated by less than that share). A few late wake-ups on a busy machine are
/// normal, and a warning on every run would stop being read.
pub const LATE_WARN_OF_P99: f64 = 0.1;
/// Warn when the nodes carried more than this share of other traffic beside loadgen's.
pub const OTHER_TRAFFIC_WARN_RATIO: f64 = 0.01;

/// Values a quantile `q` needs before it means more than the largest few: 10 values at or
/// above it, `10 / (1 - q)` in all (p50: 20, p99: 1,000, p99.9: 10,000, p99.99: 100,000).
/// Below that, p99.99 of 5,000 values is simply the maximum. Rounded: `1 - 0.9999` is not
/// exact in binary.
pub fn quantile_n_min(q: f64) -> u64 {
    (10.0 / (1.0 - q)).round() as u64
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub schema_version: u32,
    pub loadgen_version: &'static str,
    /// Where, when and with what code and command the run was made.
    pub environment: crate::env::Environment,
    /// `run`, `node` or `sweep`.
    pub mode: String,
    pub driver: String,
    pub nodes: Vec<NodeInfo>,
    /// The directory the topology came from (drivers `testnet` and `target`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub directory: Option<crate::gateway::DirectoryInfo>,
    /// The senders' bandwidth credentials (gateway drivers, when the network has issuers).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credentials: Option<crate::credentials::CredentialInfo>,
    pub config: Config,
    /// The run (for `node`/`sweep`: the highest sustained step, else the first step).
    pub result: RunReport,
    pub ramp: Option<Ramp>,
    pub warnings: Vec<String>,
    /// Pass or fail against the thresholds (`run` only; absent for ramps).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verdict: Option<crate::verdict::Verdict>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Config {
    pub rate_per_s: f64,
    pub duration_s: f64,
    pub clients: u32,
    pub packet_size: String,
    pub packet_bytes: usize,
    pub frame_bytes: usize,
    pub hops: usize,
    pub delay_ms_mean: f64,
    pub late_bound_ms: f64,
    pub drain_margin_s: f64,
    pub lookahead_s: f64,
    pub window_s: f64,
    /// How often the topology was re-read from the directory; `null` when it was not.
    pub topology_refresh_s: Option<f64>,
}

/// Percentiles in ms; `null` when nothing was measured.
#[derive(Clone, Debug, Serialize)]
pub struct Ladder {
    pub count: u64,
    pub min: Option<f64>,
    pub mean: Option<f64>,
    pub p50: Option<f64>,
    pub p90: Option<f64>,
    pub p99: Option<f64>,
    pub p999: Option<f64>,
    pub p9999: Option<f64>,
    pub max: Option<f64>,
    /// The percentiles (`p50` .. `p9999`) with fewer values than `quantile_n_min` asks: their
    /// figure is close to the maximum, not an estimate of the percentile.
    pub n_too_small: Vec<String>,
}

/// The ladder's percentiles: field name, quantile, text label.
pub const LADDER_QUANTILES: [(&str, f64, &str); 5] = [
    ("p50", 0.5, "p50"),
    ("p90", 0.9, "p90"),
    ("p99", 0.99, "p99"),
    ("p999", 0.999, "p99.9"),
    ("p9999", 0.9999, "p99.99"),
];

/// The names of the ladder's percentiles `count` values are too few for.
pub fn n_too_small(count: u64) -> Vec<String> {
    LADDER_QUANTILES
        .iter()
        .filter(|(_, q, _)| count > 0 && count < quantile_n_min(*q))
        .map(|(name, _, _)| name.to_string())
        .collect()
}

impl Ladder {
    /// From a histogram in µs.
    pub fn from_us(h: &Histogram<u64>) -> Ladder {
        let count = h.len();
        let some = |v: f64| (count > 0).then_some(v);
        let q = |quantile: f64| some(h.value_at_quantile(quantile) as f64 / 1e3);
        Ladder {
            count,
            min: some(h.min() as f64 / 1e3),
            mean: some(h.mean() / 1e3),
            p50: q(0.5),
            p90: q(0.9),
            p99: q(0.99),
            p999: q(0.999),
            p9999: q(0.9999),
            max: some(h.max() as f64 / 1e3),
            n_too_small: n_too_small(count),
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct RunReport {
    pub run_id: u32,
    /// Stopped early by SIGINT/SIGTERM: the figures cover what was sent until then.
    pub interrupted: bool,
    pub offered: Offered,
    pub sent: Sent,
    pub delivered: Delivered,
    /// End to end, from each packet's scheduled send time (coordinated omission corrected).
    pub latency_ms: Ladder,
    pub dropped_by_nodes: DroppedByNodes,
    pub nodes: Vec<NodeReport>,
    pub generator: Generator,
    pub receiver: Receiver,
    /// What loadgen's gateway clients saw (drivers `testnet` and `target`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway_clients: Option<crate::client_stats::ClientStats>,
    pub timeseries: Vec<SecondReport>,
    pub times: Times,
    /// Why the run stopped early: part of the network died (a node exited, a receiver
    /// session ended). Absent when it did not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network_failure: Option<String>,
    /// The run cut into windows of scheduled send time (`--window`).
    pub windows: Vec<WindowReport>,
    /// Memory of every local node process and of loadgen over the run.
    pub processes: Vec<crate::windows::ProcessReport>,
    /// Routes refreshed from the directory during the run (drivers testnet and target).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topology: Option<TopologyReport>,
    /// When the run's clock started, and how that met `--start-at`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start: Option<StartReport>,
    /// Per mix layer: what its nodes received against what loadgen sent, so that traffic
    /// loadgen did not send (cover traffic, other clients) is seen in the per-node figures.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub node_traffic: Vec<LayerTraffic>,
    /// Where the time goes: per-stage means adding up to the end-to-end mean
    /// (`crate::breakdown`); absent in a merge (no node figures are merged).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub breakdown: Option<crate::breakdown::Breakdown>,
}

/// When a run started.
#[derive(Clone, Debug, Serialize)]
pub struct StartReport {
    /// When the schedule's time 0 was (RFC 3339, UTC; and unix seconds).
    pub at: String,
    pub at_unix_s: f64,
    /// `--start-at`, if given.
    pub requested: Option<String>,
    /// How long after the requested time the run started (the setup overran it, or the
    /// wake-up was late); `null` without `--start-at`.
    pub late_ms: Option<f64>,
}

/// One mix layer's packets over the run. A packet of loadgen's crosses each layer at most once,
/// so `received - loadgen_sent` is a lower bound on what reached the layer from elsewhere.
#[derive(Clone, Debug, Serialize)]
pub struct LayerTraffic {
    /// The nodes' role, e.g. `mixnode layer 1`.
    pub layer: String,
    pub nodes: usize,
    /// Received by the layer's nodes together (all traffic).
    pub received: u64,
    /// Packets loadgen sent (each could enter the layer once).
    pub loadgen_sent: u64,
    /// At least this many of `received` were not loadgen's.
    pub other_at_least: u64,
}

/// One window of scheduled send time: the packets due in it and what became of them.
#[derive(Clone, Debug, Serialize)]
pub struct WindowReport {
    pub index: usize,
    pub start_s: f64,
    pub end_s: f64,
    pub offered: u64,
    pub sent: u64,
    pub delivered: u64,
    /// Sent but not delivered.
    pub lost: u64,
    pub loss_ratio: f64,
    /// Of the packets due in the window (2 significant digits); `null` if none arrived.
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// RSS of every watched process at the window's end, KiB (`null`: not running, or the
    /// run stopped before the window ended).
    pub rss_kib: BTreeMap<String, Option<u64>>,
}

#[derive(Clone, Debug, Serialize)]
pub struct TopologyReport {
    pub refresh_s: Option<f64>,
    /// Topologies fetched and verified during the run, and fetches that failed (the last
    /// usable topology stayed in use).
    pub fetches: u64,
    pub fetch_failures: u64,
    /// The routes in use at the start (generation 0 of the run's first entry), then every
    /// change.
    pub changes: Vec<crate::refresh::TopologyChange>,
    pub changes_not_kept: u64,
    /// Packets by the routes they were built over.
    pub generations: Vec<GenerationReport>,
}

#[derive(Clone, Debug, Serialize)]
pub struct GenerationReport {
    pub generation: u64,
    pub epoch: Option<u64>,
    /// Sequence numbers `first_seq .. first_seq + packets` were built over these routes.
    pub first_seq: u64,
    pub packets: u64,
    pub delivered: u64,
    /// Built but not delivered: lost, or never sent.
    pub undelivered: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Offered {
    pub packets: u64,
    pub rate_per_s: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Sent {
    pub packets: u64,
    /// Achieved: packets sent / send window.
    pub rate_per_s: f64,
    /// Handed to the kernel more than `late_bound_ms` after their scheduled time.
    pub late: u64,
    /// `late / packets`; warned about above [`LATE_WARN_RATIO`].
    pub late_ratio: f64,
    /// Never sent: the generator or sender fell too far behind, or the run stopped.
    pub not_sent: u64,
    /// In a write that failed (connection lost).
    pub failed: u64,
    /// How late packets left, ms.
    pub lateness_ms: Ladder,
}

#[derive(Clone, Debug, Serialize)]
pub struct Delivered {
    pub packets: u64,
    pub rate_per_s: f64,
    /// Sent but not received by the end of the drain.
    pub lost: u64,
    pub loss_ratio: f64,
    pub duplicates: u64,
    /// Frames that reached the receiver but were not a valid packet of this run.
    pub rejected_at_receiver: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct DroppedByNodes {
    pub total: u64,
    pub by_reason: BTreeMap<String, u64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct NodeReport {
    pub name: String,
    /// Why the node's metrics could not be read; the counters below are then absent.
    pub error: Option<String>,
    #[serde(flatten)]
    pub delta: Option<NodeDelta>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Generator {
    /// Packets per second one generator thread builds (measured before the run).
    pub capacity_per_s: f64,
    /// Achieved send rate / capacity (warning above 0.8).
    pub achieved_over_capacity: f64,
    pub created: u64,
    /// Packets built before the clock started (all of them: creation cannot limit the run).
    pub prebuilt: u64,
    pub errors: u64,
    /// Time building packets / send window.
    pub busy_ratio: f64,
    /// Time spent waiting for queue room (ahead of schedule), s.
    pub ahead_wait_s: f64,
    /// Time the senders spent writing / (send window x senders).
    pub sender_busy_ratio: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Receiver {
    #[serde(flatten)]
    pub stats: ReceiverStats,
    /// Time processing / (send window + drain).
    pub busy_ratio: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct SecondReport {
    pub second: u64,
    pub offered: u64,
    pub sent: u64,
    pub delivered: u64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Times {
    /// Mean total mix delay of a packet (hops x mu).
    pub expected_mix_delay_ms: f64,
    pub send_window_s: f64,
    pub drain_s: f64,
    pub wall_s: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Ramp {
    pub loss_ratio_max: f64,
    pub p99_ms_max: f64,
    pub step_duration_s: f64,
    /// Trials per step (`--trials`), and the rule a step passes by.
    pub trials: u32,
    pub rule: String,
    pub steps: Vec<Step>,
    /// Highest offered rate that met both bounds; `null` if none did.
    pub highest_sustained_rate_per_s: Option<f64>,
    pub stop_reason: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct Step {
    pub rate_per_s: f64,
    /// The medians over the step's trials (a single trial's figure with `--trials 1`).
    pub sent_rate_per_s: f64,
    pub delivered_rate_per_s: f64,
    pub loss_ratio: f64,
    /// Summed over the trials.
    pub late: u64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// Summed over the trials.
    pub dropped_by_nodes: u64,
    pub sustained: bool,
    /// Every trial's loss ratio and p99 (`null`: nothing delivered), in the order run.
    pub trial_loss_ratios: Vec<f64>,
    pub trial_p99_ms: Vec<Option<f64>>,
    /// Every trial's p50 and delivered rate, in the order run (the sweep plot's ranges).
    pub trial_p50_ms: Vec<Option<f64>>,
    pub trial_delivered_rates_per_s: Vec<f64>,
    /// Fewer deliveries in a trial than a p99 needs (`quantile_n_min(0.99)`): its p99 is
    /// close to that trial's maximum.
    pub p99_n_too_small: bool,
}

pub fn config(outcome: &RunOutcome) -> Config {
    let p = &outcome.params;
    Config {
        rate_per_s: p.rate_per_s,
        duration_s: p.duration_s,
        clients: p.clients,
        packet_size: crate::cli::size_name(p.size).to_string(),
        packet_bytes: p.size.packet_len(),
        frame_bytes: outcome.frame_bytes,
        hops: outcome.hops,
        delay_ms_mean: p.delay_ms_mean,
        late_bound_ms: p.late_bound_ms,
        drain_margin_s: p.drain_margin_s,
        lookahead_s: p.lookahead_s,
        window_s: p.window_s,
        topology_refresh_s: outcome.topology_refresh_s,
    }
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        0.0
    }
}

pub fn run_report(outcome: &RunOutcome, capacity_per_s: f64) -> RunReport {
    // An interrupted run is rated over the time it actually sent.
    let window = if outcome.interrupted {
        outcome.send_window_s
    } else {
        outcome.send_window_s.max(outcome.params.duration_s)
    };
    let sent = outcome.sender.sent;
    let delivered = outcome.tracker.delivered;
    let lost = outcome.lost();
    let mut by_reason = BTreeMap::new();
    let nodes = outcome
        .nodes
        .iter()
        .map(|(info, delta)| match delta {
            Ok(d) => {
                for (reason, count) in &d.dropped {
                    *by_reason.entry(reason.clone()).or_insert(0) += count;
                }
                NodeReport {
                    name: info.name.clone(),
                    error: None,
                    delta: Some(d.clone()),
                }
            }
            Err(e) => NodeReport {
                name: info.name.clone(),
                error: Some(e.clone()),
                delta: None,
            },
        })
        .collect();
    let achieved = ratio(sent as f64, window);
    RunReport {
        run_id: outcome.params.run_id,
        interrupted: outcome.interrupted,
        offered: Offered {
            packets: outcome.schedule.total,
            rate_per_s: outcome.params.rate_per_s,
        },
        sent: Sent {
            packets: sent,
            rate_per_s: achieved,
            late: outcome.sender.late,
            late_ratio: ratio(outcome.sender.late as f64, sent as f64),
            not_sent: outcome.not_sent(),
            failed: outcome.sender.failed,
            lateness_ms: Ladder::from_us(&outcome.sender.lateness_us),
        },
        delivered: Delivered {
            packets: delivered,
            rate_per_s: ratio(delivered as f64, window),
            lost,
            loss_ratio: ratio(lost as f64, sent as f64),
            duplicates: outcome.tracker.duplicates,
            rejected_at_receiver: outcome.receiver.rejected() + outcome.tracker.out_of_range,
        },
        latency_ms: Ladder::from_us(&outcome.tracker.latency_us),
        dropped_by_nodes: DroppedByNodes {
            total: by_reason.values().sum(),
            by_reason,
        },
        nodes,
        generator: Generator {
            capacity_per_s,
            achieved_over_capacity: ratio(achieved, capacity_per_s),
            created: outcome.generator.created,
            prebuilt: outcome.prebuilt,
            errors: outcome.generator.errors,
            busy_ratio: ratio(outcome.generator.busy_ns as f64 / 1e9, window),
            ahead_wait_s: outcome.generator.blocked_ns as f64 / 1e9,
            sender_busy_ratio: ratio(
                outcome.sender.busy_ns as f64 / 1e9,
                window * f64::from(outcome.params.clients),
            ),
        },
        receiver: Receiver {
            stats: outcome.receiver,
            busy_ratio: ratio(outcome.receiver.busy_ns as f64 / 1e9, outcome.wall_s),
        },
        gateway_clients: outcome.clients.clone(),
        timeseries: timeseries(outcome),
        times: Times {
            expected_mix_delay_ms: outcome.expected_delay_ms,
            send_window_s: outcome.send_window_s,
            drain_s: outcome.drain_s,
            wall_s: outcome.wall_s,
        },
        network_failure: outcome.network_failure.clone(),
        windows: windows(outcome),
        processes: outcome.processes.clone(),
        topology: outcome.topology.as_ref().map(|feed| TopologyReport {
            refresh_s: outcome.topology_refresh_s,
            fetches: feed.fetches,
            fetch_failures: feed.fetch_failures,
            changes: feed.changes.clone(),
            changes_not_kept: feed.changes_not_kept,
            generations: outcome
                .generations
                .iter()
                .map(|g| GenerationReport {
                    generation: g.generation,
                    epoch: g.epoch,
                    first_seq: g.first_seq,
                    packets: g.packets,
                    delivered: g.delivered,
                    undelivered: g.packets.saturating_sub(g.delivered),
                })
                .collect(),
        }),
        start: Some(StartReport {
            at: crate::env::rfc3339(outcome.started_at),
            at_unix_s: crate::env::unix_s(outcome.started_at),
            requested: outcome.params.start_at.map(crate::env::rfc3339),
            late_ms: outcome.params.start_at.map(|requested| {
                outcome
                    .started_at
                    .duration_since(requested)
                    .map_or(0.0, |late| late.as_secs_f64() * 1e3)
            }),
        }),
        node_traffic: node_traffic(&outcome.nodes, sent),
        breakdown: Some(crate::breakdown::breakdown(
            &outcome.nodes,
            &outcome.sender.lateness_us,
            &outcome.tracker.latency_us,
            &moved_during_run(outcome.topology.as_ref()),
        )),
    }
}

/// Mixnodes that moved layer after the run started (the first change is the routes in use
/// at the start).
fn moved_during_run(feed: Option<&crate::refresh::FeedStats>) -> Vec<String> {
    feed.map(|feed| {
        feed.changes
            .iter()
            .skip(1)
            .flat_map(|change| change.moved.iter().cloned())
            .collect()
    })
    .unwrap_or_default()
}

/// Per mix layer (nodes whose role names a layer, all of them scraped), received against
/// what loadgen sent. Gateways are left out: what they count as received depends on the role
/// a packet has there (a client's forward, a final hop).
pub fn node_traffic(
    nodes: &[(crate::driver::NodeInfo, Result<NodeDelta, String>)],
    loadgen_sent: u64,
) -> Vec<LayerTraffic> {
    let mut layers: BTreeMap<&str, Option<(usize, u64)>> = BTreeMap::new();
    for (info, delta) in nodes {
        if !info.role.starts_with("mixnode layer") {
            continue;
        }
        let entry = layers.entry(info.role.as_str()).or_insert(Some((0, 0)));
        // A layer with a node that could not be read has no total.
        *entry = match (*entry, delta) {
            (Some((n, received)), Ok(d)) => Some((n + 1, received + d.received)),
            _ => None,
        };
    }
    layers
        .into_iter()
        .filter_map(|(layer, total)| {
            let (nodes, received) = total?;
            Some(LayerTraffic {
                layer: layer.to_string(),
                nodes,
                received,
                loadgen_sent,
                other_at_least: received.saturating_sub(loadgen_sent),
            })
        })
        .collect()
}

fn windows(outcome: &RunOutcome) -> Vec<WindowReport> {
    let window_ns = (outcome.params.window_s * 1e9) as u64;
    let run_ns = (outcome.params.duration_s * 1e9) as u64;
    (0..crate::windows::count(window_ns, run_ns))
        .map(|index| {
            let (start_ns, end_ns) = crate::windows::bounds_ns(index, window_ns, run_ns);
            let latency = outcome.tracker.windows.get(index).and_then(Option::as_ref);
            let delivered = latency.map_or(0, Histogram::len);
            let sent = outcome
                .sender
                .sent_per_window
                .get(index)
                .copied()
                .unwrap_or(0);
            let q = |quantile: f64| {
                latency
                    .filter(|h| !h.is_empty())
                    .map(|h| h.value_at_quantile(quantile) as f64 / 1e3)
            };
            let lost = sent.saturating_sub(delivered);
            let samples = outcome.rss_windows.get(index);
            WindowReport {
                index,
                start_s: start_ns as f64 / 1e9,
                end_s: end_ns as f64 / 1e9,
                offered: outcome.schedule.due_between(start_ns, end_ns),
                sent,
                delivered,
                lost,
                loss_ratio: ratio(lost as f64, sent as f64),
                p50_ms: q(0.5),
                p99_ms: q(0.99),
                rss_kib: outcome
                    .watched
                    .iter()
                    .enumerate()
                    .map(|(i, p)| {
                        let kib = samples.and_then(|s| s.get(i).copied().flatten());
                        let kib = kib.map(|sample| sample.rss_kib);
                        (p.name.clone(), kib)
                    })
                    .collect(),
            }
        })
        .collect()
}

fn timeseries(outcome: &RunOutcome) -> Vec<SecondReport> {
    let seconds = outcome
        .tracker
        .series
        .len()
        .max(outcome.sender.sent_per_second.len())
        .max(outcome.params.duration_s.ceil() as usize);
    (0..seconds)
        .map(|second| {
            let arrivals = outcome.tracker.series.get(second).and_then(Option::as_ref);
            let ms = |us: fn(&Second) -> u64| {
                arrivals
                    .filter(|s| s.delivered > 0)
                    .map(|s| us(s) as f64 / 1e3)
            };
            SecondReport {
                second: second as u64,
                offered: outcome.schedule.due_in_second(second as u64),
                sent: outcome
                    .sender
                    .sent_per_second
                    .get(second)
                    .copied()
                    .unwrap_or(0),
                delivered: arrivals.map_or(0, |s| s.delivered),
                p50_ms: ms(|s| s.p50_us),
                p99_ms: ms(|s| s.p99_us),
            }
        })
        .collect()
}

/// Whether the late packets can distort the latency figures (see [`LATE_WARN_RATIO`]).
pub fn late_matters(run: &RunReport) -> bool {
    let lateness_p99 = run.sent.lateness_ms.p99.unwrap_or(0.0);
    run.sent.late_ratio > LATE_WARN_RATIO
        && run
            .latency_ms
            .p99
            .is_none_or(|p99| lateness_p99 > LATE_WARN_OF_P99 * p99)
}

/// The warning for `count` packets a gateway answered with error `code` (its report name).
pub fn gateway_error_warning(code: &str, count: u64) -> String {
    let why = match code {
        "no_bandwidth" => {
            "NO_BANDWIDTH: the gateway admits packets only against bandwidth credentials and \
             the sender had no bandwidth there (with --target: obtain credentials with \
             --issuers, --threshold and --verification-key)"
        }
        "bad_credential" => "BAD_CREDENTIAL: the gateway refused a credential",
        "not_layer1" => {
            "NOT_LAYER1: the first hop is not a layer-1 mixnode in the gateway's topology (its \
             view may be older than the directory's)"
        }
        "overloaded" => "OVERLOADED: the gateway could not queue the packet",
        "malformed" => "MALFORMED: the gateway could not parse a message",
        _ => "an unknown error code",
    };
    format!("the gateways answered {count} packets with {why}")
}

/// Warnings a reader must not miss. The pair: arrivals after the per-second series' end, and
/// arrivals recorded after their second's histogram was reused (counted, not in its quantiles).
pub fn warnings(
    run: &RunReport,
    late_bound_ms: f64,
    (series_overflow, series_unsorted): (u64, u64),
) -> Vec<String> {
    let mut out = Vec::new();
    if run.interrupted {
        out.push(format!(
            "interrupted after {:.1} s: the figures cover the packets sent until then; the rest \
             count as not sent",
            run.times.send_window_s
        ));
    }
    let g = &run.generator;
    if g.achieved_over_capacity > CAPACITY_WARN_RATIO && g.prebuilt < run.offered.packets {
        out.push(format!(
            "the generator may be the bottleneck: achieved {:.0} packets/s is {:.0}% of its \
             measured creation capacity ({:.0} packets/s); lower --rate",
            run.sent.rate_per_s,
            g.achieved_over_capacity * 100.0,
            g.capacity_per_s
        ));
    }
    if late_matters(run) {
        out.push(format!(
            "{} packets ({:.1}% of those sent) left more than {late_bound_ms} ms after their \
             scheduled time, and the senders' lateness p99 ({} ms) is more than {:.0}% of the \
             end-to-end p99 ({} ms): loadgen's senders woke or wrote late (a busy CPU, or a \
             full gateway queue), and as latency counts from the scheduled time, the network \
             is charged for it",
            run.sent.late,
            run.sent.late_ratio * 100.0,
            ms(run.sent.lateness_ms.p99),
            LATE_WARN_OF_P99 * 100.0,
            ms(run.latency_ms.p99)
        ));
    }
    for layer in &run.node_traffic {
        if layer.other_at_least as f64 > OTHER_TRAFFIC_WARN_RATIO * layer.loadgen_sent.max(1) as f64
        {
            out.push(format!(
                "{} received at least {} packets loadgen did not send (cover traffic, other \
                 clients) beside its {}: the per-node figures (received, drops, stage times) \
                 include them",
                layer.layer, layer.other_at_least, layer.loadgen_sent
            ));
        }
    }
    if run.sent.not_sent > 0 || run.sent.failed > 0 {
        out.push(format!(
            "{} packets were never sent and {} were in failed writes",
            run.sent.not_sent, run.sent.failed
        ));
    }
    if run.delivered.lost > 0 {
        let reasons: Vec<String> = run
            .dropped_by_nodes
            .by_reason
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(reason, n)| format!("{reason} {n}"))
            .collect();
        out.push(format!(
            "{} of {} sent packets were lost ({:.3}%); nodes dropped {}{}",
            run.delivered.lost,
            run.sent.packets,
            run.delivered.loss_ratio * 100.0,
            run.dropped_by_nodes.total,
            if reasons.is_empty() {
                String::new()
            } else {
                format!(" ({})", reasons.join(", "))
            }
        ));
    }
    if let Some(clients) = &run.gateway_clients {
        for (code, count) in &clients.gateway_errors {
            out.push(gateway_error_warning(code, *count));
        }
        if clients.session_failures > 0 {
            out.push(format!(
                "{} gateway client sessions failed: {}",
                clients.session_failures,
                clients.errors.join("; ")
            ));
        }
    }
    if run.receiver.busy_ratio > CAPACITY_WARN_RATIO {
        out.push(format!(
            "loadgen's receiver was busy {:.0}% of the time: it may be the bottleneck",
            run.receiver.busy_ratio * 100.0
        ));
    }
    if run.delivered.rejected_at_receiver > 0 {
        out.push(format!(
            "{} frames reached the receiver but were not valid packets of this run",
            run.delivered.rejected_at_receiver
        ));
    }
    if series_overflow > 0 {
        out.push(format!(
            "{series_overflow} arrivals after second {} are not in the time series",
            crate::limits::SERIES_SECONDS_MAX
        ));
    }
    if series_unsorted > 0 {
        out.push(format!(
            "{series_unsorted} arrivals were recorded more than {} s out of arrival order: \
             counted in their second, not in its p50/p99",
            crate::limits::SERIES_OPEN_SECONDS
        ));
    }
    for node in &run.nodes {
        if let Some(e) = &node.error {
            out.push(format!("{}: metrics unavailable: {e}", node.name));
        }
    }
    if let Some(failure) = &run.network_failure {
        out.push(format!(
            "the run stopped early: {}",
            failure.lines().next().unwrap_or("the network failed")
        ));
    }
    for process in &run.processes {
        if process.panics_logged > 0 {
            out.push(format!(
                "{} logged {} panic(s)",
                process.name, process.panics_logged
            ));
        }
    }
    if let Some(topology) = &run.topology {
        if topology.fetch_failures > 0 {
            out.push(format!(
                "{} topology refreshes failed (the directory did not answer, or served a \
                 topology loadgen could not use); the last usable one stayed in use",
                topology.fetch_failures
            ));
        }
    }
    out
}

fn ms(v: Option<f64>) -> String {
    match v {
        Some(v) if v >= 100.0 => format!("{v:.0}"),
        Some(v) if v >= 10.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.2}"),
        None => "-".into(),
    }
}

/// Three significant digits, for figures that may be microseconds (a node's stage times):
/// `ms` would print 1 µs as 0.00.
fn ms3(v: Option<f64>) -> String {
    match v {
        Some(0.0) => "0".into(),
        Some(v) if v >= 100.0 => format!("{v:.0}"),
        Some(v) => {
            let decimals = (2 - v.abs().log10().floor() as i32).clamp(0, 6) as usize;
            format!("{v:.decimals$}")
        }
        None => "-".into(),
    }
}

/// `p50 6.36  p90 7.26 ...` for the ladder; a percentile the count is too small for is shown
/// as such rather than as a figure that is really the maximum.
pub fn ladder_text(l: &Ladder, names: &[&str]) -> String {
    let mut parts = Vec::new();
    for (field, _, label) in LADDER_QUANTILES {
        if !names.contains(&field) {
            continue;
        }
        let value = match field {
            "p50" => l.p50,
            "p90" => l.p90,
            "p99" => l.p99,
            "p999" => l.p999,
            _ => l.p9999,
        };
        if l.n_too_small.iter().any(|n| n == field) {
            parts.push(format!("{label} n too small"));
        } else {
            parts.push(format!("{label} {}", ms(value)));
        }
    }
    parts.push(format!("max {}", ms(l.max)));
    parts.join("  ")
}

/// A node stage: `mean M p99 in [L, U] max<= X ms`, with "n too small" when it is.
fn stage_text(s: Option<&crate::scrape::StageDelta>) -> String {
    let Some(s) = s.filter(|s| s.count > 0) else {
        return "-".into();
    };
    let p99 = if s.n_too_small.iter().any(|n| n == "p99") {
        format!("p99 n too small (n={})", s.count)
    } else {
        match s.p99_ms_upper {
            Some(upper) => format!("p99 in [{}, {}]", ms3(s.p99_ms_lower), ms3(Some(upper))),
            None => format!("p99 > {}", ms3(s.p99_ms_lower)),
        }
    };
    let max = match s.max_ms_upper {
        Some(max) => format!("max<= {}", ms3(Some(max))),
        None => "max beyond the buckets".into(),
    };
    format!("mean {} {p99} {max} ms", ms3(s.mean_ms))
}

fn render_environment(out: &mut String, e: &crate::env::Environment) {
    let _ = writeln!(
        out,
        "  at {} on {} ({}, {} CPUs: {}); loadgen commit {}, SIMD x25519 {} symmetric {}",
        e.started_at,
        e.host,
        e.os,
        e.cpus,
        e.cpu_model,
        e.git_commit,
        e.simd.x25519,
        e.simd.symmetric
    );
    let nodes: Vec<String> = e
        .nodes_simd
        .iter()
        .map(|n| {
            if n.x25519 == n.symmetric {
                format!("{} {}", n.name, n.x25519)
            } else {
                format!("{} {}/{}", n.name, n.x25519, n.symmetric)
            }
        })
        .collect();
    if !nodes.is_empty() {
        let _ = writeln!(
            out,
            "  nodes' SIMD {}{}",
            nodes.join(", "),
            e.nodes_simd_note
                .as_ref()
                .map_or(String::new(), |n| format!(" ({n})"))
        );
    }
    let _ = writeln!(out, "  command: {}", e.command_line.join(" "));
}

/// The human-readable report.
pub fn render_text(report: &Report) -> String {
    let mut out = String::new();
    let c = &report.config;
    let r = &report.result;
    let _ = writeln!(
        out,
        "loadgen {} - {} ({}): {} nodes, {}-hop routes, {} packets ({} B), mean delay {} ms/hop",
        report.loadgen_version,
        report.mode,
        report.driver,
        report.nodes.len(),
        c.hops,
        c.packet_size,
        c.packet_bytes,
        c.delay_ms_mean
    );
    render_environment(&mut out, &report.environment);
    if let Some(start) = &r.start {
        if let (Some(requested), Some(late_ms)) = (&start.requested, start.late_ms) {
            let _ = writeln!(
                out,
                "  started {} (--start-at {requested}; {late_ms:.1} ms after it)",
                start.at
            );
        }
    }
    if let Some(d) = &report.directory {
        let _ = writeln!(
            out,
            "  directory {} epoch {} key {}{}",
            d.url,
            d.epoch,
            d.key,
            if d.key_pinned {
                ""
            } else {
                " (trust on first use)"
            }
        );
    }
    if let Some(c) = &report.credentials {
        let _ = writeln!(
            out,
            "  credentials {} obtained in {:.0} ms ({} of {} issuers, {} bytes each); spent {}, \
             refused {}",
            c.obtained,
            c.obtain_ms,
            c.threshold,
            c.issuers,
            c.bandwidth_bytes_each,
            c.spent,
            c.refused
        );
    }
    if let Some(ramp) = &report.ramp {
        render_ramp(&mut out, ramp);
        let _ = writeln!(out, "\nDetail of step at {:.0} packets/s:", c.rate_per_s);
    }
    let _ = writeln!(
        out,
        "  offered   {:>9} packets  {:>9.1}/s  ({} s, {} senders)",
        r.offered.packets, r.offered.rate_per_s, c.duration_s, c.clients
    );
    let _ = writeln!(
        out,
        "  sent      {:>9} packets  {:>9.1}/s  late(>{} ms) {} ({:.2}%)  not sent {}  failed {}",
        r.sent.packets,
        r.sent.rate_per_s,
        c.late_bound_ms,
        r.sent.late,
        r.sent.late_ratio * 100.0,
        r.sent.not_sent,
        r.sent.failed
    );
    let _ = writeln!(
        out,
        "  delivered {:>9} packets  {:>9.1}/s  lost {} ({:.3}%)  duplicates {}  rejected {}",
        r.delivered.packets,
        r.delivered.rate_per_s,
        r.delivered.lost,
        r.delivered.loss_ratio * 100.0,
        r.delivered.duplicates,
        r.delivered.rejected_at_receiver
    );
    let _ = writeln!(
        out,
        "  latency ms (from scheduled send)  {}  (n={})",
        ladder_text(&r.latency_ms, &["p50", "p90", "p99", "p999", "p9999"]),
        r.latency_ms.count
    );
    let _ = writeln!(
        out,
        "  send lateness ms                  {}",
        ladder_text(&r.sent.lateness_ms, &["p50", "p99"])
    );
    if let Some(gc) = &r.gateway_clients {
        let errors: Vec<String> = gc
            .gateway_errors
            .iter()
            .map(|(code, n)| format!("{code} {n}"))
            .collect();
        let _ = writeln!(
            out,
            "  gateway clients   {} senders, {} receivers; forwards {}  deliveries {}  confirmed {}  \
             gateway errors {}  failed sessions {}",
            gc.senders,
            gc.receivers,
            gc.forwards,
            gc.deliveries,
            gc.confirmed,
            if errors.is_empty() {
                "0".to_string()
            } else {
                errors.join(", ")
            },
            gc.session_failures
        );
    }
    render_nodes(&mut out, r);
    if let Some(breakdown) = &r.breakdown {
        crate::breakdown::render(&mut out, breakdown);
    }
    let g = &r.generator;
    let _ = writeln!(
        out,
        "  generator capacity {:.0} packets/s/thread; achieved {:.0}/s = {:.0}% of it{}; \
         building {:.0}% of the time, senders writing {:.0}%, receiver busy {:.0}%",
        g.capacity_per_s,
        r.sent.rate_per_s,
        g.achieved_over_capacity * 100.0,
        if g.prebuilt >= r.offered.packets {
            " (all packets built before the start)"
        } else {
            ""
        },
        g.busy_ratio * 100.0,
        g.sender_busy_ratio * 100.0,
        r.receiver.busy_ratio * 100.0
    );
    render_windows(&mut out, r);
    render_topology(&mut out, r);
    for warning in &report.warnings {
        let _ = writeln!(out, "  WARNING: {warning}");
    }
    if let Some(verdict) = &report.verdict {
        crate::verdict::render(&mut out, verdict);
    }
    out
}

fn kib(v: Option<u64>) -> String {
    v.map_or("-".into(), |v| format!("{:.1}", v as f64 / 1024.0))
}

fn render_windows(out: &mut String, r: &RunReport) {
    // A single window repeats the totals: shown only when the run has several.
    if r.windows.len() >= 2 {
        let _ = writeln!(
            out,
            "  windows (by scheduled send time)\n    {:<13} {:>9} {:>9} {:>9} {:>7} {:>8} {:>8} {:>8}",
            "window s", "offered", "sent", "delivered", "lost", "loss%", "p50 ms", "p99 ms"
        );
        for w in &r.windows {
            let _ = writeln!(
                out,
                "    {:<13} {:>9} {:>9} {:>9} {:>7} {:>8.3} {:>8} {:>8}",
                format!("{:.0}-{:.0}", w.start_s, w.end_s),
                w.offered,
                w.sent,
                w.delivered,
                w.lost,
                w.loss_ratio * 100.0,
                ms(w.p50_ms),
                ms(w.p99_ms)
            );
        }
    }
    if r.processes.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "  memory (RSS MiB)\n    {:<10} {:>8} {:>8} {:>8}  growth after window 1",
        "process", "start", "window 1", "end"
    );
    for p in &r.processes {
        let mut growth = growth_text(p.rss_growth_after_warmup_kib, p.rss_growth_after_warmup_pct);
        if p.rss_growth_unaccounted_kib != p.rss_growth_after_warmup_kib {
            // A key rotation's replay filter came or went: what the verdict judges.
            let _ = write!(
                growth,
                ", {} beyond its replay filters",
                growth_text(p.rss_growth_unaccounted_kib, p.rss_growth_unaccounted_pct)
            );
        }
        if let Some(max) = p.memory_kib_max_stated {
            let _ = write!(growth, " (states at most {:.1} MiB)", max as f64 / 1024.0);
        }
        let _ = writeln!(
            out,
            "    {:<10} {:>8} {:>8} {:>8}  {}{}{}",
            p.name,
            kib(p.rss_kib_start),
            kib(p.rss_kib_first_window_end),
            kib(p.rss_kib_end),
            growth,
            if p.running_at_end {
                ""
            } else {
                "  NOT RUNNING"
            },
            if p.panics_logged > 0 {
                format!("  {} panics logged", p.panics_logged)
            } else {
                String::new()
            }
        );
    }
}

/// `+1.5 MiB (+2.0%)`, or `-` when not measured.
fn growth_text(kib: Option<i64>, pct: Option<f64>) -> String {
    match (kib, pct) {
        (Some(k), Some(pct)) => format!("{:+.1} MiB ({pct:+.1}%)", k as f64 / 1024.0),
        (Some(k), None) => format!("{:+.1} MiB", k as f64 / 1024.0),
        _ => "-".into(),
    }
}

fn render_topology(out: &mut String, r: &RunReport) {
    let Some(t) = &r.topology else {
        return;
    };
    let _ = writeln!(
        out,
        "  topology refreshed every {} s: {} fetches, {} failed, {} changes",
        t.refresh_s.map_or("-".into(), |s| format!("{s}")),
        t.fetches,
        t.fetch_failures,
        t.changes.len().saturating_sub(1)
    );
    for change in t.changes.iter().skip(1) {
        let packets = t
            .generations
            .iter()
            .find(|g| g.generation == change.generation);
        let _ = writeln!(
            out,
            "    at {:.1} s epoch {}: {}; packets built over it {}, undelivered {}",
            change.at_s,
            change.epoch,
            crate::refresh::describe(change),
            packets.map_or(0, |g| g.packets),
            packets.map_or(0, |g| g.undelivered)
        );
    }
}

fn render_nodes(out: &mut String, r: &RunReport) {
    let d = &r.dropped_by_nodes;
    let reasons: Vec<String> = d
        .by_reason
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    let _ = writeln!(
        out,
        "  dropped by nodes {}{}",
        d.total,
        if reasons.is_empty() {
            String::new()
        } else {
            format!(" ({})", reasons.join(", "))
        }
    );
    if !r.nodes.is_empty() {
        // Said every time: the nodes count everything they carry, not only loadgen's packets.
        let others: Vec<String> = r
            .node_traffic
            .iter()
            .map(|l| {
                format!(
                    "{} received {} (other >= {})",
                    l.layer, l.received, l.other_at_least
                )
            })
            .collect();
        let _ = writeln!(
            out,
            "  per node: all traffic through the node, not only loadgen's {} sent{}; stage \
             times from power-of-two buckets, as intervals",
            r.sent.packets,
            if others.is_empty() {
                String::new()
            } else {
                format!(" ({})", others.join(", "))
            }
        );
    }
    for node in &r.nodes {
        match (&node.delta, &node.error) {
            (Some(n), _) => {
                let stage = |name: &str| n.stages.get(name);
                let crypto = stage("crypto_per_packet");
                let _ = writeln!(
                    out,
                    "    {:<8} received {:>8} forwarded {:>8} dropped {:>5}  crypto/packet mean {} ms  \
                     residence (arrival to hand-off) {}",
                    node.name,
                    n.received,
                    n.forwarded,
                    n.dropped_total,
                    ms3(crypto.and_then(|s| s.mean_ms)),
                    stage_text(stage("processing_residence")),
                );
            }
            (None, error) => {
                let _ = writeln!(
                    out,
                    "    {:<8} metrics unavailable: {}",
                    node.name,
                    error.as_deref().unwrap_or("unknown")
                );
            }
        }
    }
}

fn render_ramp(out: &mut String, ramp: &Ramp) {
    let _ = writeln!(
        out,
        "Ramp ({} s steps, {} trials each; {}):",
        ramp.step_duration_s, ramp.trials, ramp.rule
    );
    let _ = writeln!(
        out,
        "  {:>10} {:>10} {:>10} {:>8} {:>7} {:>9} {:>9} {:>8}  {:<9} trials: p99 ms range, loss% range",
        "offered/s", "sent/s", "deliv/s", "loss%", "late", "p50 ms", "p99 ms", "dropped", "sustained"
    );
    for s in &ramp.steps {
        let p99s: Vec<f64> = s.trial_p99_ms.iter().flatten().copied().collect();
        let range = |values: &[f64], scale: f64| -> String {
            let low = values.iter().copied().fold(f64::INFINITY, f64::min);
            let high = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            if values.is_empty() {
                "-".into()
            } else {
                format!("{}..{}", ms3(Some(low * scale)), ms3(Some(high * scale)))
            }
        };
        let _ = writeln!(
            out,
            "  {:>10.0} {:>10.0} {:>10.0} {:>8.3} {:>7} {:>9} {:>9} {:>8}  {:<9} {}{}, {}",
            s.rate_per_s,
            s.sent_rate_per_s,
            s.delivered_rate_per_s,
            s.loss_ratio * 100.0,
            s.late,
            ms(s.p50_ms),
            ms(s.p99_ms),
            s.dropped_by_nodes,
            if s.sustained { "yes" } else { "no" },
            range(&p99s, 1.0),
            if s.p99_n_too_small {
                " (n too small)"
            } else {
                ""
            },
            range(&s.trial_loss_ratios, 100.0),
        );
    }
    match ramp.highest_sustained_rate_per_s {
        Some(rate) => {
            let _ = writeln!(
                out,
                "Highest sustained rate: {rate:.0} packets/s ({})",
                ramp.stop_reason
            );
        }
        None => {
            let _ = writeln!(out, "No step was sustained ({})", ramp.stop_reason);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::driver::NodeInfo;

    #[test]
    fn a_percentile_needs_ten_values_above_it() {
        assert_eq!(quantile_n_min(0.5), 20);
        assert_eq!(quantile_n_min(0.99), 1_000);
        assert_eq!(quantile_n_min(0.9999), 100_000);
        assert!(n_too_small(0).is_empty(), "no values: nothing to mark");
        assert_eq!(n_too_small(5_000), vec!["p999", "p9999"]);
        assert_eq!(n_too_small(100_000), Vec::<String>::new());
        let mut h = crate::tracker::latency_histogram().unwrap();
        for v in 1..=5_000u64 {
            h.record(v).unwrap();
        }
        let ladder = Ladder::from_us(&h);
        let text = ladder_text(&ladder, &["p50", "p99", "p999", "p9999"]);
        assert!(text.contains("p99 4.95"), "{text}");
        assert!(text.contains("p99.99 n too small"), "{text}");
        assert!(text.ends_with("max 5.00"), "{text}");
    }

    #[test]
    fn stage_figures_keep_three_significant_digits() {
        assert_eq!(ms3(Some(0.001)), "0.00100");
        assert_eq!(ms3(Some(2.048)), "2.05");
        assert_eq!(ms3(Some(0.0)), "0");
        assert_eq!(ms3(Some(4096.0)), "4096");
        assert_eq!(ms3(None), "-");
    }

    #[test]
    fn other_traffic_per_layer_is_a_lower_bound() {
        let node = |name: &str, layer: u32, received: Result<u64, String>| {
            let info = NodeInfo {
                name: name.into(),
                role: format!("mixnode layer {layer}"),
                listen: "127.0.0.1:1".parse().unwrap(),
                metrics: None,
            };
            let delta = received.map(|received| NodeDelta {
                received,
                forwarded: 0,
                sent: 0,
                dropped_total: 0,
                dropped: BTreeMap::new(),
                stages: BTreeMap::new(),
                simd: None,
            });
            (info, delta)
        };
        let nodes = vec![
            node("mix1", 1, Ok(600)),
            node("mix2", 1, Ok(700)),
            node("mix3", 2, Ok(1000)),
            node("mix4", 3, Ok(900)),
            node("mix5", 3, Err("down".into())),
        ];
        let layers = node_traffic(&nodes, 1000);
        // Layer 3 has an unreadable node: no total.
        assert_eq!(layers.len(), 2);
        assert_eq!(layers[0].layer, "mixnode layer 1");
        assert_eq!((layers[0].received, layers[0].other_at_least), (1300, 300));
        assert_eq!((layers[1].received, layers[1].other_at_least), (1000, 0));
    }
}

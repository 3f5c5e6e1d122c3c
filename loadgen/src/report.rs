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

pub const SCHEMA_VERSION: u32 = 1;
/// Warn when the achieved rate is above this share of the generator's capacity.
pub const CAPACITY_WARN_RATIO: f64 = 0.8;

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub schema_version: u32,
    pub loadgen_version: &'static str,
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
    pub gateway_clients: Option<crate::gateway::ClientStats>,
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
    pub steps: Vec<Step>,
    /// Highest offered rate that met both bounds; `null` if none did.
    pub highest_sustained_rate_per_s: Option<f64>,
    pub stop_reason: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct Step {
    pub rate_per_s: f64,
    pub sent_rate_per_s: f64,
    pub delivered_rate_per_s: f64,
    pub loss_ratio: f64,
    pub late: u64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub dropped_by_nodes: u64,
    pub sustained: bool,
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
    }
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
            let q = |quantile: f64| {
                arrivals
                    .filter(|s| s.delivered > 0)
                    .map(|s| s.latency_us.value_at_quantile(quantile) as f64 / 1e3)
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
                p50_ms: q(0.5),
                p99_ms: q(0.99),
            }
        })
        .collect()
}

/// Warnings a reader must not miss.
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

pub fn warnings(run: &RunReport, late_bound_ms: f64, series_overflow: u64) -> Vec<String> {
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
    if run.sent.late > 0 {
        out.push(format!(
            "{} packets left more than {late_bound_ms} ms after their scheduled time (their \
             latency counts from the scheduled time)",
            run.sent.late
        ));
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
            crate::tracker::SERIES_SECONDS_MAX
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
        "  sent      {:>9} packets  {:>9.1}/s  late(>{} ms) {}  not sent {}  failed {}",
        r.sent.packets,
        r.sent.rate_per_s,
        c.late_bound_ms,
        r.sent.late,
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
    let l = &r.latency_ms;
    let _ =
        writeln!(
        out,
        "  latency ms (from scheduled send)  p50 {}  p90 {}  p99 {}  p99.9 {}  p99.99 {}  max {}",
        ms(l.p50), ms(l.p90), ms(l.p99), ms(l.p999), ms(l.p9999), ms(l.max)
    );
    let s = &r.sent.lateness_ms;
    let _ = writeln!(
        out,
        "  send lateness ms                  p50 {}  p99 {}  max {}",
        ms(s.p50),
        ms(s.p99),
        ms(s.max)
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
        let growth = match (p.rss_growth_after_warmup_kib, p.rss_growth_after_warmup_pct) {
            (Some(k), Some(pct)) => format!("{:+.1} MiB ({pct:+.1}%)", k as f64 / 1024.0),
            (Some(k), None) => format!("{:+.1} MiB", k as f64 / 1024.0),
            _ => "-".into(),
        };
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
    for node in &r.nodes {
        match (&node.delta, &node.error) {
            (Some(n), _) => {
                let stage = |name: &str| n.stages.get(name);
                let crypto = stage("crypto_per_packet");
                let residence = stage("processing_residence");
                let _ = writeln!(
                    out,
                    "    {:<8} received {:>8} forwarded {:>8} dropped {:>5}  crypto/packet mean {} ms  \
                     residence (arrival to send) mean {} p99<= {} ms",
                    node.name,
                    n.received,
                    n.forwarded,
                    n.dropped_total,
                    ms(crypto.and_then(|s| s.mean_ms)),
                    ms(residence.and_then(|s| s.mean_ms)),
                    ms(residence.and_then(|s| s.p99_ms_upper)),
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
        "Ramp ({} s steps; sustained = loss <= {:.3}% and p99 <= {} ms):",
        ramp.step_duration_s,
        ramp.loss_ratio_max * 100.0,
        ramp.p99_ms_max
    );
    let _ = writeln!(
        out,
        "  {:>10} {:>10} {:>10} {:>8} {:>7} {:>9} {:>9} {:>8}  sustained",
        "offered/s", "sent/s", "deliv/s", "loss%", "late", "p50 ms", "p99 ms", "dropped"
    );
    for s in &ramp.steps {
        let _ = writeln!(
            out,
            "  {:>10.0} {:>10.0} {:>10.0} {:>8.3} {:>7} {:>9} {:>9} {:>8}  {}",
            s.rate_per_s,
            s.sent_rate_per_s,
            s.delivered_rate_per_s,
            s.loss_ratio * 100.0,
            s.late,
            ms(s.p50_ms),
            ms(s.p99_ms),
            s.dropped_by_nodes,
            if s.sustained { "yes" } else { "no" }
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

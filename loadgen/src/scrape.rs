//! Scraping a node's Prometheus text endpoint, and the per-node deltas the report shows.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde::Serialize;

const TIMEOUT: Duration = Duration::from_secs(5);
/// Largest response read (a node's /metrics is a few KiB).
const RESPONSE_BYTES_MAX: u64 = 4 * 1024 * 1024;

/// Every sample of one scrape: series (name with labels, as printed) → value.
pub type Samples = BTreeMap<String, f64>;

/// GET http://ADDR/metrics.
pub fn scrape(address: SocketAddr) -> Result<Samples, String> {
    let mut stream = TcpStream::connect_timeout(&address, TIMEOUT)
        .map_err(|e| format!("metrics {address}: {e}"))?;
    stream
        .set_read_timeout(Some(TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(TIMEOUT)))
        .map_err(|e| format!("metrics {address}: {e}"))?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: lethe\r\nConnection: close\r\n\r\n")
        .map_err(|e| format!("metrics {address}: {e}"))?;
    let mut body = String::new();
    stream
        .take(RESPONSE_BYTES_MAX)
        .read_to_string(&mut body)
        .map_err(|e| format!("metrics {address}: {e}"))?;
    if !body.starts_with("HTTP/1.1 200") && !body.starts_with("HTTP/1.0 200") {
        let status = body.lines().next().unwrap_or("no response");
        return Err(format!("metrics {address}: {status}"));
    }
    Ok(parse(&body))
}

/// Parses Prometheus text lines `series value`; comments and unparsable lines are skipped.
pub fn parse(text: &str) -> Samples {
    let mut samples = Samples::new();
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        if !series.starts_with("lethe_") {
            continue;
        }
        if let Ok(value) = value.trim().parse::<f64>() {
            samples.insert(series.trim().to_string(), value);
        }
    }
    samples
}

/// One stage histogram's change over the run.
#[derive(Clone, Debug, Serialize)]
pub struct StageDelta {
    pub count: u64,
    pub mean_ms: Option<f64>,
    /// Upper bounds of the power-of-two buckets holding the quantile (the node's resolution).
    pub p50_ms_upper: Option<f64>,
    pub p99_ms_upper: Option<f64>,
}

/// What one node did during the run.
#[derive(Clone, Debug, Serialize)]
pub struct NodeDelta {
    pub received: u64,
    pub forwarded: u64,
    pub sent: u64,
    pub dropped_total: u64,
    pub dropped: BTreeMap<String, u64>,
    pub stages: BTreeMap<String, StageDelta>,
}

fn counter(before: &Samples, after: &Samples, series: &str) -> u64 {
    let a = after.get(series).copied().unwrap_or(0.0);
    let b = before.get(series).copied().unwrap_or(0.0);
    (a - b).max(0.0).round() as u64
}

/// The label value of `key` in a series like `name{a="x",key="y"}`.
fn label<'a>(series: &'a str, key: &str) -> Option<&'a str> {
    let start = series.find('{')?;
    let inner = series.get(start + 1..series.len().checked_sub(1)?)?;
    inner.split(',').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == key).then(|| v.trim_matches('"'))
    })
}

/// Gateway counters (`lethe_gateway_<name>_total`) that count packets a gateway refused or
/// dropped; the report lists them as drop reasons `gateway_<name>`.
const GATEWAY_DROPS: [&str; 7] = [
    "forward_refused",
    "egress_dropped",
    "final_hop_malformed",
    "unknown_destination_dropped",
    "mailbox_full_dropped",
    "mailbox_expired",
    "commands_dropped",
];

pub fn delta(before: &Samples, after: &Samples) -> NodeDelta {
    let mut dropped = BTreeMap::new();
    for name in GATEWAY_DROPS {
        let series = format!("lethe_gateway_{name}_total");
        if after.contains_key(&series) {
            dropped.insert(format!("gateway_{name}"), counter(before, after, &series));
        }
    }
    let mut stage_buckets: BTreeMap<String, Vec<(f64, u64)>> = BTreeMap::new();
    for series in after.keys() {
        if series.starts_with("lethe_packets_dropped_total{") {
            if let Some(reason) = label(series, "reason") {
                dropped.insert(reason.to_string(), counter(before, after, series));
            }
        } else if series.starts_with("lethe_stage_seconds_bucket{") {
            let (Some(stage), Some(le)) = (label(series, "stage"), label(series, "le")) else {
                continue;
            };
            let bound = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap_or(f64::INFINITY)
            };
            stage_buckets
                .entry(stage.to_string())
                .or_default()
                .push((bound, counter(before, after, series)));
        }
    }
    let stages = stage_buckets
        .into_iter()
        .map(|(stage, mut buckets)| {
            buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
            let sum_series = format!("lethe_stage_seconds_sum{{stage=\"{stage}\"}}");
            let count_series = format!("lethe_stage_seconds_count{{stage=\"{stage}\"}}");
            let count = counter(before, after, &count_series);
            let sum_s = after.get(&sum_series).copied().unwrap_or(0.0)
                - before.get(&sum_series).copied().unwrap_or(0.0);
            let mean_ms = (count > 0).then(|| sum_s * 1e3 / count as f64);
            let stage_delta = StageDelta {
                count,
                mean_ms,
                p50_ms_upper: quantile_upper(&buckets, count, 0.5),
                p99_ms_upper: quantile_upper(&buckets, count, 0.99),
            };
            (stage, stage_delta)
        })
        .collect();
    NodeDelta {
        received: counter(before, after, "lethe_packets_received_total"),
        forwarded: counter(before, after, "lethe_packets_forwarded_total"),
        sent: counter(before, after, "lethe_packets_sent_total"),
        dropped_total: dropped.values().sum(),
        dropped,
        stages,
    }
}

/// Cumulative buckets (bound s, count) → the bound in ms holding quantile `q`.
fn quantile_upper(buckets: &[(f64, u64)], count: u64, q: f64) -> Option<f64> {
    if count == 0 {
        return None;
    }
    let target = ((count as f64) * q).ceil().max(1.0) as u64;
    buckets
        .iter()
        .find(|(_, cumulative)| *cumulative >= target)
        .map(|(bound, _)| bound * 1e3)
        .filter(|ms| ms.is_finite())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    const BEFORE: &str = "# TYPE x counter\nlethe_packets_received_total 10\n\
lethe_packets_dropped_total{reason=\"replayed\"} 1\n\
lethe_stage_seconds_bucket{stage=\"crypto_per_packet\",le=\"0.000032\"} 0\n\
lethe_stage_seconds_bucket{stage=\"crypto_per_packet\",le=\"0.000064\"} 0\n\
lethe_stage_seconds_bucket{stage=\"crypto_per_packet\",le=\"+Inf\"} 0\n\
lethe_stage_seconds_sum{stage=\"crypto_per_packet\"} 0\n\
lethe_stage_seconds_count{stage=\"crypto_per_packet\"} 0\n";

    const AFTER: &str = "lethe_packets_received_total 110\n\
lethe_packets_dropped_total{reason=\"replayed\"} 3\n\
lethe_packets_dropped_total{reason=\"overload\"} 0\n\
lethe_stage_seconds_bucket{stage=\"crypto_per_packet\",le=\"0.000032\"} 90\n\
lethe_stage_seconds_bucket{stage=\"crypto_per_packet\",le=\"0.000064\"} 100\n\
lethe_stage_seconds_bucket{stage=\"crypto_per_packet\",le=\"+Inf\"} 100\n\
lethe_stage_seconds_sum{stage=\"crypto_per_packet\"} 0.003\n\
lethe_stage_seconds_count{stage=\"crypto_per_packet\"} 100\n";

    #[test]
    fn gateway_drops_are_reasons() {
        let before = parse("lethe_gateway_forward_refused_total 1\n");
        let after = parse(
            "lethe_gateway_forward_refused_total 4\nlethe_gateway_mailbox_full_dropped_total 2\n\
             lethe_gateway_confirms_total 9\n",
        );
        let d = delta(&before, &after);
        assert_eq!(d.dropped["gateway_forward_refused"], 3);
        assert_eq!(d.dropped["gateway_mailbox_full_dropped"], 2);
        assert_eq!(d.dropped_total, 5);
    }

    #[test]
    fn deltas_by_reason_and_stage() {
        let d = delta(&parse(BEFORE), &parse(AFTER));
        assert_eq!(d.received, 100);
        assert_eq!(d.dropped["replayed"], 2);
        assert_eq!(d.dropped_total, 2);
        let stage = &d.stages["crypto_per_packet"];
        assert_eq!(stage.count, 100);
        assert!((stage.mean_ms.unwrap() - 0.03).abs() < 1e-9);
        assert!((stage.p50_ms_upper.unwrap() - 0.032).abs() < 1e-9);
        assert!((stage.p99_ms_upper.unwrap() - 0.064).abs() < 1e-9);
    }
}

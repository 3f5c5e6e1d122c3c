//! Scraping a node's Prometheus text endpoint, and the per-node deltas the report shows.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::limits::{SCRAPE_RESPONSE_BYTES_MAX, SCRAPE_TIMEOUT_MS};
use serde::Serialize;

const TIMEOUT: Duration = Duration::from_millis(SCRAPE_TIMEOUT_MS);

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
        .take(SCRAPE_RESPONSE_BYTES_MAX)
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
///
/// The node's buckets are powers of two (bucket `i` holds values in `(2^(i-1), 2^i]` µs), so a
/// quantile is known only as an interval: it lies in `[lower, upper]`, `upper` the edge of
/// the bucket that holds it. `lower` is that bucket's lower edge, raised to what the mean
/// implies: with `n` values, `k = ceil(q n)` of them at most the quantile and the rest at most
/// `max_ms_upper`, `sum <= k x quantile + (n - k) x max`, so `quantile >= (sum - (n - k) x max)
/// / k`. A mean above a quantile's upper bound is then no contradiction: the values above the
/// quantile carry the mean, and `max_ms_upper` shows how far they reach.
#[derive(Clone, Debug, Serialize)]
pub struct StageDelta {
    pub count: u64,
    pub mean_ms: Option<f64>,
    /// Upper bounds of the power-of-two buckets holding the quantile (the node's resolution);
    /// `null` also when the quantile lies in the `+Inf` bucket (then above `_lower`).
    pub p50_ms_upper: Option<f64>,
    pub p99_ms_upper: Option<f64>,
    /// Lower bounds of the quantiles (see above).
    pub p50_ms_lower: Option<f64>,
    pub p99_ms_lower: Option<f64>,
    /// Upper edge of the highest bucket holding a value (`null`: the `+Inf` bucket, or none).
    pub max_ms_upper: Option<f64>,
    /// Quantiles with fewer than 10 values above them (`crate::report::quantile_n_min`): the
    /// bucket holding them says little.
    pub n_too_small: Vec<String>,
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
    /// The SIMD paths the node says it uses (`lethe_simd_info`), if it publishes them: shown in
    /// the report's `environment.nodes_simd`.
    #[serde(skip)]
    pub simd: Option<crate::env::SimdPaths>,
}

/// The series a node publishes its SIMD paths in, as labels:
/// `lethe_simd_info{x25519="avx2",symmetric="avx2"} 1`. Nodes that do not publish it (none did
/// when this was written) are reported as "unknown".
pub const SIMD_INFO_SERIES: &str = "lethe_simd_info";

/// The node's SIMD paths from a scrape, if it publishes them.
pub fn simd_of(samples: &Samples) -> Option<crate::env::SimdPaths> {
    let prefix = format!("{SIMD_INFO_SERIES}{{");
    samples
        .keys()
        .find(|s| s.starts_with(&prefix))
        .map(|series| {
            let get = |key: &str| {
                label(series, key)
                    .unwrap_or(crate::env::UNKNOWN)
                    .to_string()
            };
            crate::env::SimdPaths {
                x25519: get("x25519"),
                symmetric: get("symmetric"),
            }
        })
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
            let sum_s = (after.get(&sum_series).copied().unwrap_or(0.0)
                - before.get(&sum_series).copied().unwrap_or(0.0))
            .max(0.0);
            (stage, stage_delta(&buckets, count, sum_s))
        })
        .collect();
    NodeDelta {
        received: counter(before, after, "lethe_packets_received_total"),
        forwarded: counter(before, after, "lethe_packets_forwarded_total"),
        sent: counter(before, after, "lethe_packets_sent_total"),
        dropped_total: dropped.values().sum(),
        dropped,
        stages,
        simd: simd_of(after),
    }
}

/// Cumulative buckets (bound s, count), sorted by bound; `count` values summing to `sum_s`.
fn stage_delta(buckets: &[(f64, u64)], count: u64, sum_s: f64) -> StageDelta {
    let mean_ms = (count > 0).then(|| sum_s * 1e3 / count as f64);
    // The highest bucket that gained a value: the first whose cumulative count is the total.
    let max_ms_upper = (count > 0)
        .then(|| buckets.iter().find(|(_, cumulative)| *cumulative >= count))
        .flatten()
        .map(|(bound, _)| bound * 1e3)
        .filter(|ms| ms.is_finite());
    let bounds = |q: f64| -> (Option<f64>, Option<f64>) {
        let Some((lower_edge, upper)) = quantile_bucket(buckets, count, q) else {
            return (None, None);
        };
        // What the mean implies (see `StageDelta`); nothing when the maximum is unbounded.
        let target = ((count as f64) * q).ceil().max(1.0);
        let implied = max_ms_upper
            .map(|max| (sum_s * 1e3 - (count as f64 - target) * max) / target)
            .unwrap_or(0.0);
        let mut lower = lower_edge.max(implied);
        if let Some(upper) = upper {
            // A scrape races the node's recording (the sum may hold a value the buckets do
            // not yet): never past the bucket's own edge.
            lower = lower.min(upper);
        }
        (Some(lower), upper)
    };
    let (p50_ms_lower, p50_ms_upper) = bounds(0.5);
    let (p99_ms_lower, p99_ms_upper) = bounds(0.99);
    let n_too_small = [("p50", 0.5), ("p99", 0.99)]
        .into_iter()
        .filter(|(_, q)| count > 0 && count < crate::report::quantile_n_min(*q))
        .map(|(name, _)| name.to_string())
        .collect();
    StageDelta {
        count,
        mean_ms,
        p50_ms_upper,
        p99_ms_upper,
        p50_ms_lower,
        p99_ms_lower,
        max_ms_upper,
        n_too_small,
    }
}

/// Cumulative buckets (bound s, count) → the edges in ms of the bucket holding quantile `q`:
/// (lower edge, upper edge), the upper `None` for the `+Inf` bucket; `None` without values.
fn quantile_bucket(buckets: &[(f64, u64)], count: u64, q: f64) -> Option<(f64, Option<f64>)> {
    if count == 0 {
        return None;
    }
    let target = ((count as f64) * q).ceil().max(1.0) as u64;
    let index = buckets
        .iter()
        .position(|(_, cumulative)| *cumulative >= target)?;
    let lower = index
        .checked_sub(1)
        .and_then(|i| buckets.get(i))
        .map_or(0.0, |(bound, _)| bound * 1e3);
    let upper = buckets
        .get(index)
        .map(|(bound, _)| bound * 1e3)
        .filter(|ms| ms.is_finite());
    Some((lower, upper))
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
        assert_eq!(stage.p50_ms_lower.unwrap(), 0.0);
        assert!((stage.p99_ms_lower.unwrap() - 0.032).abs() < 1e-9);
        assert!((stage.max_ms_upper.unwrap() - 0.064).abs() < 1e-9);
        // 100 values: enough for p50 (20), not for p99 (1000).
        assert_eq!(stage.n_too_small, vec!["p99".to_string()]);
        assert!(d.simd.is_none());
    }

    /// A residence histogram with 99.5 % of the values in the first bucket (<= 1 µs), a few
    /// at 4 ms. The mean (20 µs) is above the p99's upper edge (1 µs) honestly: the
    /// maximum shows the tail that carries it, and the bounds never cross.
    #[test]
    fn a_mean_above_p99_is_explained_by_the_tail() {
        let buckets = [
            (0.000001, 995u64),
            (0.000002, 995),
            (0.002048, 995),
            (0.004096, 1000),
            (f64::INFINITY, 1000),
        ];
        let stage = stage_delta(&buckets, 1000, 5.0 * 0.004);
        assert!((stage.mean_ms.unwrap() - 0.02).abs() < 1e-9);
        assert!((stage.p99_ms_upper.unwrap() - 0.001).abs() < 1e-12);
        assert_eq!(stage.p99_ms_lower.unwrap(), 0.0);
        assert!((stage.max_ms_upper.unwrap() - 4.096).abs() < 1e-9);
        assert!(stage.n_too_small.is_empty());
    }

    /// Every value in one bucket: the mean pins the quantiles' lower bound above the edge.
    #[test]
    fn the_mean_raises_the_lower_bound() {
        let buckets = [(0.001, 0u64), (0.002, 2000), (f64::INFINITY, 2000)];
        // All 2000 values at 1.9 ms.
        let stage = stage_delta(&buckets, 2000, 2000.0 * 0.0019);
        let lower = stage.p99_ms_lower.unwrap();
        // p99 >= (sum - 20 x 2 ms) / 1980 = 1.899 ms (above the bucket's edge, 1 ms).
        assert!(lower > 1.89 && lower <= 2.0, "{lower}");
        assert!((stage.p99_ms_upper.unwrap() - 2.0).abs() < 1e-9);
        // A value in the +Inf bucket: no upper bound, the lower is the last finite edge.
        let buckets = [(0.001, 0u64), (0.002, 0), (f64::INFINITY, 1)];
        let stage = stage_delta(&buckets, 1, 30.0);
        assert_eq!(stage.p99_ms_upper, None);
        assert_eq!(stage.max_ms_upper, None);
        assert!((stage.p99_ms_lower.unwrap() - 2.0).abs() < 1e-9);
        assert_eq!(
            stage.n_too_small,
            vec!["p50".to_string(), "p99".to_string()]
        );
    }

    #[test]
    fn simd_paths_when_published() {
        let samples =
            parse("lethe_simd_info{x25519=\"avx2\",symmetric=\"avx512\"} 1\nlethe_cores 1\n");
        let simd = simd_of(&samples).unwrap();
        assert_eq!(
            (simd.x25519.as_str(), simd.symmetric.as_str()),
            ("avx2", "avx512")
        );
        assert!(simd_of(&parse("lethe_cores 1\n")).is_none());
    }
}

//! `--out DIR`: summary.json (the report), timeseries.csv, the end-to-end latency histogram
//! (`latency.hgrm` percentile text and `latency.hdr.b64`, HdrHistogram V2 + deflate, base64),
//! the send lateness histogram (`lateness.hdr.b64`), ramp.csv for ramps, and two PNG plots.
//! The two `.hdr.b64` histograms are what `loadgen merge` adds up.

use std::fmt::Write as _;
use std::path::Path;

use base64::Engine as _;
use hdrhistogram::serialization::{Serializer, V2DeflateSerializer};
use hdrhistogram::Histogram;
use plotters::style::RGBColor;

use crate::plot::{line_chart, nice_step, ticks, Axes, Line};
use crate::report::Report;
use crate::run::RunOutcome;

pub fn write_all(dir: &Path, report: &Report, outcome: &RunOutcome) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let write = |name: &str, bytes: &[u8]| {
        let path = dir.join(name);
        std::fs::write(&path, bytes).map_err(|e| format!("{}: {e}", path.display()))
    };
    let json = serde_json::to_string_pretty(report).map_err(|e| e.to_string())?;
    write("summary.json", json.as_bytes())?;
    write("timeseries.csv", timeseries_csv(report).as_bytes())?;
    write("windows.csv", windows_csv(report).as_bytes())?;
    let histogram = &outcome.tracker.latency_us;
    write("latency.hgrm", percentile_text(histogram).as_bytes())?;
    write("latency.hdr.b64", serialized(histogram)?.as_bytes())?;
    write(
        "lateness.hdr.b64",
        serialized(&outcome.sender.lateness_us)?.as_bytes(),
    )?;
    if let Some(ramp) = &report.ramp {
        let mut csv = String::from("rate_per_s,sent_per_s,delivered_per_s,loss_ratio,late,p50_ms,p99_ms,dropped_by_nodes,sustained\n");
        for s in &ramp.steps {
            let _ = writeln!(
                csv,
                "{},{},{},{},{},{},{},{},{}",
                s.rate_per_s,
                s.sent_rate_per_s,
                s.delivered_rate_per_s,
                s.loss_ratio,
                s.late,
                opt(s.p50_ms),
                opt(s.p99_ms),
                s.dropped_by_nodes,
                s.sustained
            );
        }
        write("ramp.csv", csv.as_bytes())?;
    }
    plot_over_time(&dir.join("latency_over_time.png"), report)?;
    plot_cdf(&dir.join("latency_cdf.png"), histogram)?;
    Ok(())
}

fn opt(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.3}")).unwrap_or_default()
}

fn timeseries_csv(report: &Report) -> String {
    let mut csv = String::from("second,offered,sent,delivered,p50_ms,p99_ms\n");
    for s in &report.result.timeseries {
        let _ = writeln!(
            csv,
            "{},{},{},{},{},{}",
            s.second,
            s.offered,
            s.sent,
            s.delivered,
            opt(s.p50_ms),
            opt(s.p99_ms)
        );
    }
    csv
}

/// One line per window; then one RSS column (KiB) per watched process, by name.
fn windows_csv(report: &Report) -> String {
    let names: Vec<&String> = report
        .result
        .windows
        .first()
        .map(|w| w.rss_kib.keys().collect())
        .unwrap_or_default();
    let mut csv =
        String::from("index,start_s,end_s,offered,sent,delivered,lost,loss_ratio,p50_ms,p99_ms");
    for name in &names {
        let _ = write!(csv, ",rss_kib_{name}");
    }
    csv.push('\n');
    for w in &report.result.windows {
        let _ = write!(
            csv,
            "{},{},{},{},{},{},{},{},{},{}",
            w.index,
            w.start_s,
            w.end_s,
            w.offered,
            w.sent,
            w.delivered,
            w.lost,
            w.loss_ratio,
            opt(w.p50_ms),
            opt(w.p99_ms)
        );
        for name in &names {
            let kib = w.rss_kib.get(*name).copied().flatten();
            let _ = write!(csv, ",{}", kib.map(|k| k.to_string()).unwrap_or_default());
        }
        csv.push('\n');
    }
    csv
}

/// HdrHistogram's percentile distribution text (values in ms), as wrk2 and the HdrHistogram
/// plotter read it.
pub fn percentile_text(h: &Histogram<u64>) -> String {
    let mut out = String::from("       Value     Percentile TotalCount 1/(1-Percentile)\n\n");
    if h.is_empty() {
        return out;
    }
    for v in h.iter_quantiles(5) {
        let q = v.quantile_iterated_to();
        let inverse = if q < 1.0 {
            format!("{:14.2}", 1.0 / (1.0 - q))
        } else {
            format!("{:>14}", "inf")
        };
        let _ = writeln!(
            out,
            "{:12.3} {:14.12} {:10} {}",
            v.value_iterated_to() as f64 / 1e3,
            q,
            v.count_since_last_iteration(),
            inverse
        );
    }
    let _ = writeln!(
        out,
        "#[Mean    = {:12.3}, StdDeviation   = {:12.3}]",
        h.mean() / 1e3,
        h.stdev() / 1e3
    );
    let _ = writeln!(
        out,
        "#[Max     = {:12.3}, Total count    = {:12}]",
        h.max() as f64 / 1e3,
        h.len()
    );
    out
}

pub fn serialized(h: &Histogram<u64>) -> Result<String, String> {
    let mut bytes = Vec::new();
    V2DeflateSerializer::new()
        .serialize(h, &mut bytes)
        .map_err(|e| format!("histogram serialisation: {e:?}"))?;
    let mut text = base64::engine::general_purpose::STANDARD.encode(bytes);
    text.push('\n');
    Ok(text)
}

const BLUE: RGBColor = RGBColor(31, 119, 180);
const RED: RGBColor = RGBColor(214, 39, 40);

fn plot_over_time(path: &Path, report: &Report) -> Result<(), String> {
    let series = &report.result.timeseries;
    let points = |pick: fn(&crate::report::SecondReport) -> Option<f64>| -> Vec<(f64, f64)> {
        series
            .iter()
            .filter_map(|s| pick(s).map(|v| (s.second as f64 + 0.5, v)))
            .collect()
    };
    let p50 = points(|s| s.p50_ms);
    let p99 = points(|s| s.p99_ms);
    let x_max = (series.len() as f64).max(1.0);
    let y_top = p99.iter().chain(&p50).map(|p| p.1).fold(0.0, f64::max);
    let y_step = nice_step(y_top.max(0.1), 5.0);
    let y_max = (y_top / y_step).ceil().max(1.0) * y_step;
    let x_step = nice_step(x_max, 10.0).max(1.0);
    let axes = Axes {
        title: "end-to-end latency per second (from scheduled send)",
        x_label: "time s",
        y_label: "latency ms",
        x_range: (0.0, x_max),
        y_range: (0.0, y_max),
        x_ticks: ticks(x_max, x_step),
        y_ticks: ticks(y_max, y_step),
    };
    let lines = [
        Line {
            label: "p50",
            color: BLUE,
            points: p50,
        },
        Line {
            label: "p99",
            color: RED,
            points: p99,
        },
    ];
    line_chart(path, &axes, &lines)
}

/// Latency by percentile, x in "nines" (0 = p0, 1 = p90, 2 = p99, ...), as HdrHistogram plots.
pub fn plot_cdf(path: &Path, h: &Histogram<u64>) -> Result<(), String> {
    const NINES_MAX: f64 = 4.0;
    let mut points = Vec::new();
    if !h.is_empty() {
        for i in 0..=400 {
            let nines = f64::from(i) * NINES_MAX / 400.0;
            let q = 1.0 - 10f64.powf(-nines);
            points.push((nines, h.value_at_quantile(q) as f64 / 1e3));
        }
        points.push((NINES_MAX, h.max() as f64 / 1e3));
    }
    let y_top = points.iter().map(|p| p.1).fold(0.0, f64::max);
    let y_step = nice_step(y_top.max(0.1), 5.0);
    let y_max = (y_top / y_step).ceil().max(1.0) * y_step;
    let x_ticks = ["0", "90", "99", "99.9", "99.99"]
        .iter()
        .enumerate()
        .map(|(i, label)| (i as f64, format!("p{label}")))
        .collect();
    let axes = Axes {
        title: "end-to-end latency by percentile (from scheduled send)",
        x_label: "percentile",
        y_label: "latency ms",
        x_range: (0.0, NINES_MAX),
        y_range: (0.0, y_max),
        x_ticks,
        y_ticks: ticks(y_max, y_step),
    };
    let lines = [Line {
        label: "latency",
        color: BLUE,
        points,
    }];
    line_chart(path, &axes, &lines)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use hdrhistogram::serialization::Deserializer;

    #[test]
    fn histogram_files_round_trip() {
        let mut h = crate::tracker::latency_histogram().unwrap();
        for v in [900u64, 1_000, 1_100, 25_000, 3_000_000] {
            h.record(v).unwrap();
        }
        let text = serialized(&h).unwrap();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .unwrap();
        let back: Histogram<u64> = Deserializer::new()
            .deserialize(&mut std::io::Cursor::new(bytes))
            .unwrap();
        assert_eq!(crate::merge::deserialize(&text).unwrap(), back);
        assert_eq!(back.len(), 5);
        assert_eq!(back.max(), h.max());
        let hgrm = percentile_text(&h);
        assert!(hgrm.starts_with("       Value     Percentile TotalCount 1/(1-Percentile)"));
        assert!(hgrm.contains("Total count    =            5]"), "{hgrm}");
    }
}

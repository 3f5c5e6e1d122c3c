//! `--out DIR`: summary.json (the report), timeseries.csv, the end-to-end latency histogram
//! (`latency.hgrm` percentile text and `latency.hdr.b64`, HdrHistogram V2 + deflate, base64),
//! the send lateness histogram (`lateness.hdr.b64`), ramp.csv for ramps, and PNG plots:
//! latency over time and by percentile, and for ramps delivered vs offered rate and latency vs
//! offered rate over every step.
//! The two `.hdr.b64` histograms are what `loadgen merge` adds up.

use std::fmt::Write as _;
use std::path::Path;

use base64::Engine as _;
use hdrhistogram::serialization::{Serializer, V2DeflateSerializer};
use hdrhistogram::Histogram;
use lethe_plot::RGBColor;

use crate::report::{Ramp, Report, Step};
use crate::run::RunOutcome;
use lethe_plot::{line_chart, y_max, Axes, Line, X_LABELS};

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
    plot_cdf(
        &dir.join("latency_cdf.png"),
        histogram,
        &rate_title(report),
        subtitle(report),
    )?;
    if let Some(ramp) = &report.ramp {
        plot_sweep(dir, report, ramp)?;
    }
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
const GREEN: RGBColor = RGBColor(44, 160, 44);
const GREY: RGBColor = RGBColor(120, 120, 120);

/// The header line under every plot's title: what ran, at what rate, with what config.
pub fn subtitle(report: &Report) -> String {
    let c = &report.config;
    let commit: String = report.environment.git_commit.chars().take(10).collect();
    let rate = match &report.ramp {
        Some(ramp) => format!(
            "{} steps of {} s x {} trial(s)",
            ramp.steps.len(),
            ramp.step_duration_s,
            ramp.trials
        ),
        None => format!(
            "{:.0} packets/s offered for {} s",
            c.rate_per_s, c.duration_s
        ),
    };
    format!(
        "{} ({}): {rate}; {} clients, {} packets ({} B), {}-hop routes, mu {} ms/hop; {} nodes; \
         {}, {} cpus; git {commit}",
        report.mode,
        report.driver,
        c.clients,
        c.packet_size,
        c.packet_bytes,
        c.hops,
        c.delay_ms_mean,
        report.nodes.len(),
        report.environment.cpu_model,
        report.environment.cpus,
    )
}

/// The run's rate, for titles (ramps: the step shown in detail).
fn rate_title(report: &Report) -> String {
    let rate = report.result.offered.rate_per_s;
    match &report.ramp {
        Some(_) => format!("at {rate:.0} packets/s (the step shown in detail)"),
        None => format!("at {rate:.0} packets/s"),
    }
}

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
    let axes = Axes {
        title: format!(
            "End-to-end latency per second {} (from scheduled send)",
            rate_title(report)
        ),
        subtitle: subtitle(report),
        x_label: "time since the start, s",
        y_label: "latency, ms",
        x_range: (0.0, x_max),
        y_range: (0.0, y_max(y_top, 0.1)),
        x_format: None,
        x_labels: X_LABELS,
    };
    let lines = [Line::new("p50", BLUE, p50), Line::new("p99", RED, p99)];
    line_chart(path, &axes, &lines)
}

fn nines_label(x: &f64) -> String {
    if (x - x.round()).abs() > 1e-6 {
        return String::new();
    }
    match x.round() as i64 {
        0 => "p0".into(),
        1 => "p90".into(),
        2 => "p99".into(),
        3 => "p99.9".into(),
        4 => "p99.99".into(),
        _ => String::new(),
    }
}

/// Latency by percentile, x in "nines" (0 = p0, 1 = p90, 2 = p99, ...), as HdrHistogram plots.
/// `rate`: how the title names the rate ("at 500 packets/s"); `subtitle`: [`subtitle`].
pub fn plot_cdf(
    path: &Path,
    h: &Histogram<u64>,
    rate: &str,
    subtitle: String,
) -> Result<(), String> {
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
    let axes = Axes {
        title: format!("End-to-end latency by percentile {rate} (from scheduled send)"),
        subtitle,
        x_label: "percentile",
        y_label: "latency, ms",
        x_range: (0.0, NINES_MAX),
        y_range: (0.0, y_max(y_top, 0.1)),
        x_format: Some(nines_label),
        // One label per nine: 0, 1, 2, 3, 4.
        x_labels: NINES_MAX as usize + 1,
    };
    let lines = [Line::new("latency", BLUE, points)];
    line_chart(path, &axes, &lines)
}

/// Min and max of a step's trial values (finite ones), with the median where there are none.
fn range(values: impl Iterator<Item = Option<f64>>, median: f64) -> (f64, f64) {
    let finite: Vec<f64> = values.flatten().filter(|v| v.is_finite()).collect();
    let low = finite.iter().copied().fold(f64::INFINITY, f64::min);
    let high = finite.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if finite.is_empty() {
        (median, median)
    } else {
        (low, high)
    }
}

/// Sweeps: the curves benchmarkers look for first, over every step (offered rate on x):
/// delivered vs offered with the y = x reference, and p50/p99 vs offered; the lines are the
/// steps' medians, the bands the range (min to max) over the step's trials.
pub fn plot_sweep(dir: &Path, report: &Report, ramp: &Ramp) -> Result<(), String> {
    let mut steps: Vec<&Step> = ramp.steps.iter().collect();
    steps.sort_by(|a, b| a.rate_per_s.total_cmp(&b.rate_per_s));
    let x_top = steps.iter().map(|s| s.rate_per_s).fold(0.0, f64::max);
    let x_max = y_max(x_top, 1.0);
    let title_tail = format!(
        "({} steps x {} trial(s): line median, band min-max)",
        steps.len(),
        ramp.trials
    );
    let delivered: Vec<(f64, f64)> = steps
        .iter()
        .map(|s| (s.rate_per_s, s.delivered_rate_per_s))
        .collect();
    let delivered_band = steps
        .iter()
        .map(|s| {
            let (lo, hi) = range(
                s.trial_delivered_rates_per_s.iter().map(|v| Some(*v)),
                s.delivered_rate_per_s,
            );
            (s.rate_per_s, lo, hi)
        })
        .collect();
    let y_top = delivered.iter().map(|p| p.1).fold(x_top, f64::max);
    let axes = Axes {
        title: format!("Delivered vs offered rate {title_tail}"),
        subtitle: subtitle(report),
        x_label: "offered rate, packets/s",
        y_label: "delivered rate, packets/s",
        x_range: (0.0, x_max),
        y_range: (0.0, y_max(y_top, 1.0)),
        x_format: None,
        x_labels: X_LABELS,
    };
    let mut delivered_line = Line::new("delivered", BLUE, delivered);
    delivered_line.band = delivered_band;
    let mut reference = Line::new(
        "y = x (all delivered)",
        GREY,
        vec![(0.0, 0.0), (x_max, x_max)],
    );
    reference.reference = true;
    line_chart(
        &dir.join(SWEEP_RATE_PNG),
        &axes,
        &[delivered_line, reference],
    )?;

    let quantile_line = |label: &'static str,
                         color: RGBColor,
                         median: fn(&Step) -> Option<f64>,
                         trials: fn(&Step) -> &Vec<Option<f64>>| {
        let mut line = Line::new(
            label,
            color,
            steps
                .iter()
                .filter_map(|s| median(s).map(|v| (s.rate_per_s, v)))
                .collect(),
        );
        line.band = steps
            .iter()
            .filter_map(|s| {
                let m = median(s)?;
                let (lo, hi) = range(trials(s).iter().copied(), m);
                Some((s.rate_per_s, lo, hi))
            })
            .collect();
        line
    };
    let p50 = quantile_line("p50", BLUE, |s| s.p50_ms, |s| &s.trial_p50_ms);
    let p99 = quantile_line("p99", RED, |s| s.p99_ms, |s| &s.trial_p99_ms);
    let y_top = p99
        .band
        .iter()
        .map(|b| b.2)
        .chain(p50.band.iter().map(|b| b.2))
        .fold(0.0, f64::max);
    // The p99 bound is drawn when it is near the curves; far above, it would flatten them
    // to the floor, and the title gives it instead.
    let bound_ms = ramp.p99_ms_max;
    let bound_drawn = bound_ms.is_finite() && bound_ms <= BOUND_DRAWN_WITHIN * y_top;
    let mut lines = vec![p50, p99];
    let mut bound_label = String::new();
    if bound_drawn {
        let mut bound = Line::new("p99 bound", GREEN, vec![(0.0, bound_ms), (x_max, bound_ms)]);
        bound.reference = true;
        lines.push(bound);
    } else {
        bound_label = format!(" (p99 bound {bound_ms} ms: off the scale)");
    }
    let axes = Axes {
        title: format!("Latency vs offered rate {title_tail}"),
        subtitle: subtitle(report),
        x_label: "offered rate, packets/s",
        y_label: &format!("end-to-end latency, ms{bound_label}"),
        x_range: (0.0, x_max),
        y_range: (
            0.0,
            y_max(
                if bound_drawn {
                    y_top.max(bound_ms)
                } else {
                    y_top
                },
                0.1,
            ),
        ),
        x_format: None,
        x_labels: X_LABELS,
    };
    line_chart(&dir.join(SWEEP_LATENCY_PNG), &axes, &lines)
}

/// The p99 bound line is drawn when it is at most this many times the highest latency shown.
const BOUND_DRAWN_WITHIN: f64 = 2.0;

/// The sweep plots' file names.
pub const SWEEP_RATE_PNG: &str = "sweep_delivered_vs_offered.png";
pub const SWEEP_LATENCY_PNG: &str = "sweep_latency_vs_offered.png";

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

//! A sweep's figure: the metrics of each point's traces (every seed), written as CSV (a `#`
//! comment line naming the commit, the sweep's hash and the seeds, then a header), as a PNG
//! (`lethe_plot`, shared with loadgen) and as a JSON sidecar (the same identity, each point's
//! config hash, seeds and intervals).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use lethe_plot::{line_chart, y_max, Axes, Line, RGBColor, PALETTE, X_LABELS};
use serde::Serialize;

use crate::metrics::{self, MetricsOptions, SeedsReport};
use crate::stats::{GammaFit, Interval};
use crate::sweep::{load_plan, FigureKind, Plan, PlannedPoint};
use crate::trace::find_traces;

pub const FORMAT: &str = "lethe-figure";
pub const VERSION: u32 = 1;
const GREY: RGBColor = RGBColor(120, 120, 120);
/// Points of a Gamma fit's CDF curve.
const GAMMA_CURVE_POINTS: usize = 200;

/// One point's results in the sidecar.
#[derive(Debug, Serialize)]
pub struct PointResult {
    pub label: String,
    pub x: Option<f64>,
    pub config_hash: String,
    pub seeds: Vec<u64>,
    pub intervals: BTreeMap<&'static str, Interval>,
}

#[derive(Debug, Serialize)]
pub struct FigureMeta {
    pub format: &'static str,
    pub version: u32,
    pub name: String,
    pub title: String,
    pub kind: FigureKind,
    pub commit: String,
    pub sweep_hash: String,
    pub points: Vec<PointResult>,
}

/// The files `collect` wrote.
#[derive(Debug)]
pub struct Written {
    pub csv: PathBuf,
    pub png: PathBuf,
    pub meta: PathBuf,
}

fn io(path: &Path, e: impl std::fmt::Display) -> String {
    format!("{}: {e}", path.display())
}

fn point_report(out: &Path, plan: &Plan, point: &PlannedPoint) -> Result<SeedsReport, String> {
    let options = MetricsOptions {
        warmup_ns: seconds_ns(plan.spec.warmup_s)?,
        drain_ns: seconds_ns(plan.spec.drain_s)?,
        labelled: None,
    };
    let dir = out.join(&point.dir);
    let traces = find_traces(&dir).map_err(|e| format!("point {}: {e}", point.index))?;
    let mut per_seed = Vec::new();
    for trace in &traces {
        per_seed.push(metrics::compute(trace, &options).map_err(|e| io(trace, e))?);
    }
    Ok(metrics::over_seeds(per_seed))
}

fn seconds_ns(seconds: f64) -> Result<u64, String> {
    if !(0.0..=1e6).contains(&seconds) {
        return Err(format!(
            "warm-up and drain must be in [0, 1e6] s, not {seconds}"
        ));
    }
    Ok((seconds * 1e9) as u64)
}

fn interval<'r>(report: &'r SeedsReport, name: &str) -> Result<&'r Interval, String> {
    report
        .intervals
        .get(name)
        .ok_or_else(|| format!("no metric {name:?}"))
}

/// Reads every point's traces under `out` and writes `<name>.csv`, `.png` and `.meta.json`.
pub fn collect(out: &Path) -> Result<Written, String> {
    let plan = load_plan(out)?;
    let mut reports = Vec::new();
    for point in &plan.points {
        reports.push(point_report(out, &plan, point)?);
    }
    let seeds: Vec<u64> = reports.first().map(|r| r.seeds.clone()).unwrap_or_default();
    let seeds_text: Vec<String> = seeds.iter().map(u64::to_string).collect();
    let mut csv = format!(
        "# {FORMAT} v{VERSION} name={} kind={:?} commit={} sweep_hash={} seeds={}\n",
        plan.spec.name,
        plan.spec.kind,
        plan.commit,
        plan.sweep_hash,
        seeds_text.join(";")
    );
    let written = Written {
        csv: out.join(format!("{}.csv", plan.spec.name)),
        png: out.join(format!("{}.png", plan.spec.name)),
        meta: out.join(format!("{}.meta.json", plan.spec.name)),
    };
    let (frame, lines) = match plan.spec.kind {
        FigureKind::Lines => lines_figure(&plan, &reports, &mut csv)?,
        FigureKind::Roc => roc_figure(&plan, &reports, &mut csv),
        FigureKind::LatencyCdf => cdf_figure(&plan, &reports, &mut csv),
    };
    std::fs::write(&written.csv, csv).map_err(|e| io(&written.csv, e))?;
    let axes = Axes {
        title: plan.spec.title.clone(),
        subtitle: subtitle(&plan),
        x_label: &frame.x_label,
        y_label: &frame.y_label,
        x_range: frame.x_range,
        y_range: frame.y_range,
        x_format: None,
        x_labels: X_LABELS,
    };
    let lines: Vec<Line<'_>> = lines
        .iter()
        .map(|l| Line {
            label: &l.label,
            color: l.color,
            points: l.points.clone(),
            band: l.band.clone(),
            reference: l.reference,
        })
        .collect();
    line_chart(&written.png, &axes, &lines)?;
    let meta = FigureMeta {
        format: FORMAT,
        version: VERSION,
        name: plan.spec.name.clone(),
        title: plan.spec.title.clone(),
        kind: plan.spec.kind,
        commit: plan.commit.clone(),
        sweep_hash: plan.sweep_hash.clone(),
        points: plan
            .points
            .iter()
            .zip(reports)
            .map(|(p, r)| PointResult {
                label: p.label.clone(),
                x: p.x,
                config_hash: p.config_hash.clone(),
                seeds: r.seeds,
                intervals: r.intervals,
            })
            .collect(),
    };
    let text = serde_json::to_string_pretty(&meta).map_err(|e| e.to_string())?;
    std::fs::write(&written.meta, text).map_err(|e| io(&written.meta, e))?;
    Ok(written)
}

/// What the axes say, owned until the chart borrows it.
struct Frame {
    x_label: String,
    y_label: String,
    x_range: (f64, f64),
    y_range: (f64, f64),
}

/// A line before it borrows its label.
struct OwnedLine {
    label: String,
    color: RGBColor,
    points: Vec<(f64, f64)>,
    band: Vec<(f64, f64, f64)>,
    reference: bool,
}

/// A series label as one CSV field: quoted, so a comma in it does not split the row.
fn quoted(label: &str) -> String {
    format!("\"{}\"", label.replace('"', "\"\""))
}

fn color(index: usize) -> RGBColor {
    PALETTE[index % PALETTE.len()]
}

fn subtitle(plan: &Plan) -> String {
    let base = &plan.spec.base;
    let short: String = plan.commit.chars().take(10).collect();
    format!(
        "base: {} clients, {} layers x {} mixes, {} ms/hop, {} msg/s per client, cover {}; \
         {} seeds per point; commit {short}",
        base.clients,
        base.layers,
        base.mixes_per_layer,
        base.delay_ms_mean,
        base.message_rate_per_s,
        if base.cover.is_some() { "on" } else { "off" },
        plan.spec.seeds,
    )
}

fn range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (mut low, mut high) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in values.filter(|v| v.is_finite()) {
        low = low.min(v);
        high = high.max(v);
    }
    if !low.is_finite() {
        return (0.0, 1.0);
    }
    if high - low < 1e-12 {
        return (low - 1.0, high + 1.0);
    }
    (low, high)
}

fn lines_figure(
    plan: &Plan,
    reports: &[SeedsReport],
    csv: &mut String,
) -> Result<(Frame, Vec<OwnedLine>), String> {
    let spec = &plan.spec;
    let x_param = spec.x.as_ref().map(|x| x.param.as_str()).unwrap_or("x");
    let mut header = format!("series,{x_param}");
    let mut columns: Vec<&str> = spec.x_metric.iter().map(String::as_str).collect();
    columns.extend(spec.y.iter().map(String::as_str));
    for name in &columns {
        let _ = write!(header, ",{name}_mean,{name}_ci95");
    }
    csv.push_str(&header);
    csv.push('\n');
    // (series, metric) -> points.
    let mut lines: BTreeMap<(usize, usize), OwnedLine> = BTreeMap::new();
    for (point, report) in plan.points.iter().zip(reports) {
        let x_value = point.x.unwrap_or(f64::NAN);
        let _ = write!(csv, "{},{x_value}", quoted(&point.label));
        for name in &columns {
            let i = interval(report, name)?;
            let _ = write!(csv, ",{},{}", i.mean, i.ci95_half_width);
        }
        csv.push('\n');
        let x = match &spec.x_metric {
            Some(name) => interval(report, name)?.mean,
            None => x_value,
        };
        for (m, name) in spec.y.iter().enumerate() {
            let i = interval(report, name)?;
            let label = if spec.y.len() > 1 {
                format!("{} {name}", point.label)
            } else {
                point.label.clone()
            };
            let line = lines.entry((point.series, m)).or_insert(OwnedLine {
                label,
                color: color(point.series * spec.y.len() + m),
                points: Vec::new(),
                band: Vec::new(),
                reference: false,
            });
            if x.is_finite() && i.mean.is_finite() {
                line.points.push((x, i.mean));
                let half = if i.ci95_half_width.is_finite() {
                    i.ci95_half_width
                } else {
                    0.0
                };
                line.band.push((x, i.mean - half, i.mean + half));
            }
        }
    }
    let mut lines: Vec<OwnedLine> = lines.into_values().collect();
    for line in &mut lines {
        line.points.sort_by(|a, b| a.0.total_cmp(&b.0));
        line.band.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    let x_range = range(lines.iter().flat_map(|l| l.points.iter().map(|p| p.0)));
    let top = lines
        .iter()
        .flat_map(|l| l.band.iter().map(|b| b.2))
        .fold(f64::NEG_INFINITY, f64::max);
    let x_label = spec
        .x_label
        .clone()
        .or_else(|| spec.x_metric.clone())
        .unwrap_or_else(|| x_param.to_string());
    let y_label = spec.y_label.clone().unwrap_or_else(|| spec.y.join(", "));
    let frame = Frame {
        x_label,
        y_label,
        x_range,
        y_range: (0.0, y_max(top, 1.0)),
    };
    Ok((frame, lines))
}

fn roc_figure(plan: &Plan, reports: &[SeedsReport], csv: &mut String) -> (Frame, Vec<OwnedLine>) {
    csv.push_str("series,fpr,tpr,auc_mean,tpr_at_fpr_0_01_mean\n");
    let mut lines = Vec::new();
    for (point, report) in plan.points.iter().zip(reports) {
        let curves: Vec<&Vec<(f64, f64)>> = report
            .per_seed
            .iter()
            .map(|m| &m.flow.roc)
            .filter(|r| !r.is_empty())
            .collect();
        let length = curves.iter().map(|c| c.len()).min().unwrap_or(0);
        let mut points = Vec::with_capacity(length);
        for i in 0..length {
            let fpr = curves.iter().map(|c| c[i].0).sum::<f64>() / curves.len() as f64;
            let tpr = curves.iter().map(|c| c[i].1).sum::<f64>() / curves.len() as f64;
            points.push((fpr, tpr));
        }
        let auc = report
            .intervals
            .get("flow_auc")
            .map_or(f64::NAN, |i| i.mean);
        let tpr_1 = report
            .intervals
            .get("flow_tpr_at_fpr_0_01")
            .map_or(f64::NAN, |i| i.mean);
        for (fpr, tpr) in &points {
            let _ = writeln!(csv, "{},{fpr},{tpr},{auc},{tpr_1}", quoted(&point.label));
        }
        lines.push(OwnedLine {
            label: format!("{} (AUC {auc:.2}, TPR@1% {tpr_1:.2})", point.label),
            color: color(point.series),
            points,
            band: Vec::new(),
            reference: false,
        });
    }
    lines.push(OwnedLine {
        label: "chance".into(),
        color: GREY,
        points: vec![(0.0, 0.0), (1.0, 1.0)],
        band: Vec::new(),
        reference: true,
    });
    let frame = Frame {
        x_label: "false-positive rate".into(),
        y_label: "true-positive rate".into(),
        x_range: (0.0, 1.0),
        y_range: (0.0, 1.0),
    };
    (frame, lines)
}

fn cdf_figure(plan: &Plan, reports: &[SeedsReport], csv: &mut String) -> (Frame, Vec<OwnedLine>) {
    csv.push_str("series,latency_ms,cdf_empirical,cdf_gamma_fit,gamma_shape,gamma_scale_ms\n");
    let mut lines = Vec::new();
    let mut x_high: f64 = 0.0;
    for (point, report) in plan.points.iter().zip(reports) {
        let quantiles: Vec<&Vec<f64>> = report
            .per_seed
            .iter()
            .map(|m| &m.latency.end_to_end_quantiles_ms)
            .filter(|q| !q.is_empty())
            .collect();
        let length = quantiles.iter().map(|q| q.len()).min().unwrap_or(0);
        // The fit of the pooled moments: the seeds' means and variances averaged.
        let seeds = report.per_seed.len().max(1) as f64;
        let mean = report
            .per_seed
            .iter()
            .map(|m| m.latency.end_to_end_ms.mean)
            .sum::<f64>()
            / seeds;
        let variance = report
            .per_seed
            .iter()
            .map(|m| m.latency.end_to_end_ms.variance)
            .sum::<f64>()
            / seeds;
        let fit = (mean > 0.0 && variance > 0.0).then(|| GammaFit {
            shape: mean * mean / variance,
            scale: variance / mean,
        });
        let mut empirical = Vec::with_capacity(length);
        for i in 0..length {
            let ms = quantiles.iter().map(|q| q[i]).sum::<f64>() / quantiles.len() as f64;
            let p = i as f64 / (length.max(2) - 1) as f64;
            empirical.push((ms, p));
            let gamma = fit.as_ref().map_or(f64::NAN, |f| f.cdf(ms));
            let (shape, scale) = fit
                .as_ref()
                .map_or((f64::NAN, f64::NAN), |f| (f.shape, f.scale));
            let _ = writeln!(
                csv,
                "{},{ms},{p},{gamma},{shape},{scale}",
                quoted(&point.label)
            );
        }
        let high = empirical.last().map_or(0.0, |p| p.0);
        x_high = x_high.max(high);
        let c = color(point.series);
        lines.push(OwnedLine {
            label: point.label.clone(),
            color: c,
            points: empirical,
            band: Vec::new(),
            reference: false,
        });
        if let Some(fit) = fit {
            let curve = (0..=GAMMA_CURVE_POINTS)
                .map(|i| {
                    let ms = high * i as f64 / GAMMA_CURVE_POINTS as f64;
                    (ms, fit.cdf(ms))
                })
                .collect();
            lines.push(OwnedLine {
                label: format!(
                    "Gamma fit (shape {:.2}, scale {:.1} ms)",
                    fit.shape, fit.scale
                ),
                color: c,
                points: curve,
                band: Vec::new(),
                reference: true,
            });
        }
    }
    let frame = Frame {
        x_label: "end-to-end latency (ms)".into(),
        y_label: "P(latency <= x)".into(),
        x_range: (0.0, y_max(x_high, 1.0)),
        y_range: (0.0, 1.0),
    };
    (frame, lines)
}

//! `loadgen merge DIR...`: several runs written with `--out` (e.g. generators on several
//! machines started together with `--start-at`) as one report of the same schema.
//!
//! What is merged, and how:
//! - counts (offered, sent, late, not sent, failed, delivered, lost, duplicates, generator,
//!   receiver and gateway-client counters, per-second and per-window counts) are summed
//!   exactly; rates are summed (the generators ran side by side) and ratios recomputed from
//!   the sums;
//! - the end-to-end latency and send lateness ladders come from the sum of the runs' full
//!   HdrHistograms (`latency.hdr.b64`, `lateness.hdr.b64`), never from averaging
//!   percentiles;
//! - percentiles per second and per window need histograms the files do not hold: they are
//!   `null` in the merged report;
//! - node metrics are not summed: every generator scraped the same nodes over overlapping
//!   times, so their deltas overlap. `result.nodes` is empty and `dropped_by_nodes` holds, per
//!   reason, the largest count any one run saw (a lower bound for the network);
//! - busy ratios are the busiest source's, times the longest.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use hdrhistogram::serialization::Deserializer;
use hdrhistogram::Histogram;
use serde_json::{json, Map, Value};

use crate::cli::OutputArgs;
use crate::env::Environment;
use crate::limits::{MERGE_ERRORS_MAX, MERGE_SOURCES_MAX};
use crate::report::{Ladder, SCHEMA_VERSION};

/// Files a source directory must hold.
const SUMMARY: &str = "summary.json";
const LATENCY: &str = "latency.hdr.b64";
const LATENESS: &str = "lateness.hdr.b64";
/// Sources whose starts lie further apart than this are said not to have run together.
const START_SPREAD_WARN_MS: f64 = 1_000.0;

/// One run read back from its `--out` directory.
#[derive(Debug)]
pub struct Source {
    pub dir: PathBuf,
    pub summary: Value,
    pub latency_us: Histogram<u64>,
    pub lateness_us: Histogram<u64>,
}

/// A histogram from `.hdr.b64` text (HdrHistogram V2 + deflate, base64).
pub fn deserialize(text: &str) -> Result<Histogram<u64>, String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|e| format!("not base64: {e}"))?;
    Deserializer::new()
        .deserialize(&mut std::io::Cursor::new(bytes))
        .map_err(|e| format!("not an HdrHistogram: {e:?}"))
}

fn read(dir: &Path, name: &str) -> Result<String, String> {
    let path = dir.join(name);
    std::fs::read_to_string(&path).map_err(|e| {
        format!(
            "{}: {e} (merge reads the files loadgen --out writes: {SUMMARY}, {LATENCY}, \
             {LATENESS})",
            path.display()
        )
    })
}

/// Reads and checks one source: a `run` of this schema whose histograms match its summary.
pub fn load(dir: &Path) -> Result<Source, String> {
    let summary: Value = serde_json::from_str(&read(dir, SUMMARY)?)
        .map_err(|e| format!("{}: {e}", dir.join(SUMMARY).display()))?;
    let name = dir.display();
    if summary["schema_version"].as_u64() != Some(u64::from(SCHEMA_VERSION)) {
        return Err(format!(
            "{name}: schema_version {} (this loadgen merges version {SCHEMA_VERSION})",
            summary["schema_version"]
        ));
    }
    if summary["mode"] != "run" {
        return Err(format!(
            "{name}: a {} report; merge takes runs (a ramp's steps are not one load)",
            summary["mode"]
        ));
    }
    let latency_us =
        deserialize(&read(dir, LATENCY)?).map_err(|e| format!("{name}/{LATENCY}: {e}"))?;
    let lateness_us =
        deserialize(&read(dir, LATENESS)?).map_err(|e| format!("{name}/{LATENESS}: {e}"))?;
    // The histograms must be this summary's: same counts (a file from another run would
    // silently skew the merged percentiles).
    let result = &summary["result"];
    let expect = |h: &Histogram<u64>, ladder: &Value, file: &str| {
        let count = ladder["count"].as_u64().unwrap_or(u64::MAX);
        if h.len() == count {
            Ok(())
        } else {
            Err(format!(
                "{name}/{file} holds {} values but {SUMMARY} counts {count}: not the same run",
                h.len()
            ))
        }
    };
    expect(&latency_us, &result["latency_ms"], LATENCY)?;
    expect(&lateness_us, &result["sent"]["lateness_ms"], LATENESS)?;
    Ok(Source {
        dir: dir.to_path_buf(),
        summary,
        latency_us,
        lateness_us,
    })
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(0.0)
}

fn ratio(a: u64, b: u64) -> f64 {
    if b > 0 {
        a as f64 / b as f64
    } else {
        0.0
    }
}

/// Two JSON values of the same shape as one: unsigned integers (counters) summed, other
/// numbers the larger (ratios, times), objects key by key, arrays joined, the rest the first.
fn sum_leaves(a: &Value, b: &Value) -> Value {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_u64(), y.as_u64()) {
            (Some(x), Some(y)) => json!(x.saturating_add(y)),
            _ => json!(f(a).max(f(b))),
        },
        (Value::Object(x), Value::Object(y)) => {
            let mut out = x.clone();
            for (key, value) in y {
                let merged = match x.get(key) {
                    Some(mine) => sum_leaves(mine, value),
                    None => value.clone(),
                };
                out.insert(key.clone(), merged);
            }
            Value::Object(out)
        }
        (Value::Array(x), Value::Array(y)) => Value::Array(x.iter().chain(y).cloned().collect()),
        (Value::Null, other) => other.clone(),
        (first, _) => first.clone(),
    }
}

/// Sums `pick(result)` over the sources' results.
fn total(sources: &[Source], pick: impl Fn(&Value) -> &Value) -> u64 {
    sources.iter().map(|s| u(pick(&s.summary["result"]))).sum()
}

fn total_f(sources: &[Source], pick: impl Fn(&Value) -> &Value) -> f64 {
    sources.iter().map(|s| f(pick(&s.summary["result"]))).sum()
}

fn largest(sources: &[Source], pick: impl Fn(&Value) -> &Value) -> f64 {
    sources
        .iter()
        .map(|s| f(pick(&s.summary["result"])))
        .fold(0.0, f64::max)
}

/// Per index, the sum of the counters `fields` of the sources' `key` arrays (timeseries,
/// windows); percentiles `null`; `extra` adds the rest of an entry.
fn merge_series(
    sources: &[Source],
    key: &str,
    fields: &[&str],
    extra: impl Fn(&Value, &Map<String, Value>) -> Map<String, Value>,
) -> Vec<Value> {
    let len = sources
        .iter()
        .map(|s| s.summary["result"][key].as_array().map_or(0, Vec::len))
        .max()
        .unwrap_or(0);
    (0..len)
        .map(|index| {
            let entries: Vec<&Value> = sources
                .iter()
                .filter_map(|s| s.summary["result"][key].get(index))
                .collect();
            let mut out = Map::new();
            for field in fields {
                out.insert(
                    field.to_string(),
                    json!(entries.iter().map(|e| u(&e[*field])).sum::<u64>()),
                );
            }
            out.insert("p50_ms".into(), Value::Null);
            out.insert("p99_ms".into(), Value::Null);
            let first = entries.first().copied().unwrap_or(&Value::Null);
            let more = extra(first, &out);
            out.extend(more);
            Value::Object(out)
        })
        .collect()
}

/// The merged report, and the merged latency and lateness histograms.
pub fn merge(
    sources: &[Source],
    mut environment: Environment,
) -> Result<(Value, Histogram<u64>, Histogram<u64>), String> {
    let first = sources.first().ok_or("merge needs at least one run")?;
    let mut warnings: Vec<String> = Vec::new();
    let mut latency_us = crate::tracker::latency_histogram()?;
    let mut lateness_us = crate::tracker::latency_histogram()?;
    for s in sources {
        latency_us
            .add(&s.latency_us)
            .map_err(|e| format!("{}/{LATENCY}: {e:?}", s.dir.display()))?;
        lateness_us
            .add(&s.lateness_us)
            .map_err(|e| format!("{}/{LATENESS}: {e:?}", s.dir.display()))?;
    }
    let driver = &first.summary["driver"];
    if let Some(other) = sources.iter().find(|s| &s.summary["driver"] != driver) {
        return Err(format!(
            "{} used driver {} and {} driver {}: not one load on one network",
            first.dir.display(),
            driver,
            other.dir.display(),
            other.summary["driver"]
        ));
    }
    let late_bound = &first.summary["config"]["late_bound_ms"];
    if sources
        .iter()
        .any(|s| &s.summary["config"]["late_bound_ms"] != late_bound)
    {
        warnings.push(
            "the runs counted late packets against different --late-bound-ms: sent.late mixes \
             them (the lateness ladder does not)"
                .into(),
        );
    }

    let sent = total(sources, |r| &r["sent"]["packets"]);
    let late = total(sources, |r| &r["sent"]["late"]);
    let lost = total(sources, |r| &r["delivered"]["lost"]);
    let latency = Ladder::from_us(&latency_us);
    let lateness = Ladder::from_us(&lateness_us);
    let mut by_reason: BTreeMap<String, u64> = BTreeMap::new();
    for s in sources {
        if let Some(reasons) = s.summary["result"]["dropped_by_nodes"]["by_reason"].as_object() {
            for (reason, count) in reasons {
                let entry = by_reason.entry(reason.clone()).or_insert(0);
                *entry = (*entry).max(u(count));
            }
        }
    }
    let receiver = sources
        .iter()
        .skip(1)
        .fold(first.summary["result"]["receiver"].clone(), |acc, s| {
            sum_leaves(&acc, &s.summary["result"]["receiver"])
        });
    let gateway_clients = if sources
        .iter()
        .all(|s| s.summary["result"]["gateway_clients"].is_object())
    {
        let mut merged = sources.iter().skip(1).fold(
            first.summary["result"]["gateway_clients"].clone(),
            |acc, s| sum_leaves(&acc, &s.summary["result"]["gateway_clients"]),
        );
        if let Some(errors) = merged.get_mut("errors").and_then(Value::as_array_mut) {
            let mut seen = Vec::new();
            errors.retain(|e| {
                let keep = !seen.contains(e) && seen.len() < MERGE_ERRORS_MAX;
                if keep {
                    seen.push(e.clone());
                }
                keep
            });
        }
        Some(merged)
    } else {
        None
    };
    let timeseries = merge_series(
        sources,
        "timeseries",
        &["offered", "sent", "delivered"],
        |first, _| {
            let mut m = Map::new();
            m.insert("second".into(), first["second"].clone());
            m
        },
    );
    let windows = merge_series(
        sources,
        "windows",
        &["offered", "sent", "delivered", "lost"],
        |first, sums| {
            let mut m = Map::new();
            for key in ["index", "start_s", "end_s"] {
                m.insert(key.into(), first[key].clone());
            }
            let (lost, sent) = (u(&sums["lost"]), u(&sums["sent"]));
            m.insert("loss_ratio".into(), json!(ratio(lost, sent)));
            // Each source watched its own processes: their RSS is in `processes`.
            m.insert("rss_kib".into(), json!({}));
            m
        },
    );
    let processes: Vec<Value> = sources
        .iter()
        .enumerate()
        .flat_map(|(i, s)| {
            s.summary["result"]["processes"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(move |mut p| {
                    // Names are unique per run only ("loadgen" in every one).
                    let name = format!("{}:{}", i + 1, p["name"].as_str().unwrap_or("?"));
                    if let Some(fields) = p.as_object_mut() {
                        fields.insert("name".into(), json!(name));
                    }
                    p
                })
        })
        .collect();
    let failures: Vec<String> = sources
        .iter()
        .filter_map(|s| {
            s.summary["result"]["network_failure"]
                .as_str()
                .map(|f| format!("{}: {f}", s.dir.display()))
        })
        .collect();
    // Start times: the merged run starts with the earliest; the spread says whether the
    // generators really ran together.
    let starts: Vec<f64> = sources
        .iter()
        .filter_map(|s| s.summary["result"]["start"]["at_unix_s"].as_f64())
        .collect();
    let start_spread_ms = if starts.len() == sources.len() {
        let low = starts.iter().copied().fold(f64::INFINITY, f64::min);
        let high = starts.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        Some((high - low) * 1e3)
    } else {
        warnings.push(
            "some runs do not say when they started (older loadgen): the per-second series \
             are aligned by each run's own start"
                .into(),
        );
        None
    };
    if let Some(spread) = start_spread_ms.filter(|s| *s > START_SPREAD_WARN_MS) {
        warnings.push(format!(
            "the runs started {:.1} s apart: they did not all load the network at once, and \
             the per-second series are aligned by each run's own start (use --start-at)",
            spread / 1e3
        ));
    }
    let earliest = sources
        .iter()
        .filter(|s| s.summary["result"]["start"].is_object())
        .min_by(|a, b| {
            f(&a.summary["result"]["start"]["at_unix_s"])
                .total_cmp(&f(&b.summary["result"]["start"]["at_unix_s"]))
        });
    let start = earliest.map(|s| {
        let late_ms = sources
            .iter()
            .filter_map(|s| s.summary["result"]["start"]["late_ms"].as_f64())
            .fold(None, |acc: Option<f64>, v| {
                Some(acc.map_or(v, |a| a.max(v)))
            });
        json!({
            "at": s.summary["result"]["start"]["at"],
            "at_unix_s": s.summary["result"]["start"]["at_unix_s"],
            "requested": s.summary["result"]["start"]["requested"],
            "late_ms": late_ms,
        })
    });

    let mut result = json!({
        "run_id": 1,
        "interrupted": sources.iter().any(|s| s.summary["result"]["interrupted"] == true),
        "offered": {
            "packets": total(sources, |r| &r["offered"]["packets"]),
            "rate_per_s": total_f(sources, |r| &r["offered"]["rate_per_s"]),
        },
        "sent": {
            "packets": sent,
            "rate_per_s": total_f(sources, |r| &r["sent"]["rate_per_s"]),
            "late": late,
            "late_ratio": ratio(late, sent),
            "not_sent": total(sources, |r| &r["sent"]["not_sent"]),
            "failed": total(sources, |r| &r["sent"]["failed"]),
            "lateness_ms": serde_json::to_value(&lateness).map_err(|e| e.to_string())?,
        },
        "delivered": {
            "packets": total(sources, |r| &r["delivered"]["packets"]),
            "rate_per_s": total_f(sources, |r| &r["delivered"]["rate_per_s"]),
            "lost": lost,
            "loss_ratio": ratio(lost, sent),
            "duplicates": total(sources, |r| &r["delivered"]["duplicates"]),
            "rejected_at_receiver": total(sources, |r| &r["delivered"]["rejected_at_receiver"]),
        },
        "latency_ms": serde_json::to_value(&latency).map_err(|e| e.to_string())?,
        "dropped_by_nodes": {
            "total": by_reason.values().sum::<u64>(),
            "by_reason": by_reason,
        },
        "nodes": [],
        "generator": {
            "capacity_per_s": total_f(sources, |r| &r["generator"]["capacity_per_s"]),
            "achieved_over_capacity": largest(sources, |r| &r["generator"]["achieved_over_capacity"]),
            "created": total(sources, |r| &r["generator"]["created"]),
            "prebuilt": total(sources, |r| &r["generator"]["prebuilt"]),
            "errors": total(sources, |r| &r["generator"]["errors"]),
            "busy_ratio": largest(sources, |r| &r["generator"]["busy_ratio"]),
            "ahead_wait_s": total_f(sources, |r| &r["generator"]["ahead_wait_s"]),
            "sender_busy_ratio": largest(sources, |r| &r["generator"]["sender_busy_ratio"]),
        },
        "receiver": receiver,
        "timeseries": timeseries,
        "times": {
            "expected_mix_delay_ms": largest(sources, |r| &r["times"]["expected_mix_delay_ms"]),
            "send_window_s": largest(sources, |r| &r["times"]["send_window_s"]),
            "drain_s": largest(sources, |r| &r["times"]["drain_s"]),
            "wall_s": largest(sources, |r| &r["times"]["wall_s"]),
        },
        "windows": windows,
        "processes": processes,
    });
    if let Some(gateway_clients) = gateway_clients {
        result["gateway_clients"] = gateway_clients;
    }
    if !failures.is_empty() {
        result["network_failure"] = json!(failures.join("\n"));
    }
    if let Some(start) = start {
        result["start"] = start;
    }

    // The sources' own environments and figures, so that each run can be traced.
    let source_list: Vec<Value> = sources
        .iter()
        .map(|s| {
            let r = &s.summary["result"];
            json!({
                "dir": s.dir.display().to_string(),
                "started_at": r["start"]["at"],
                "environment": s.summary.get("environment").cloned().unwrap_or(Value::Null),
                "offered": r["offered"]["packets"],
                "sent": r["sent"]["packets"],
                "delivered": r["delivered"]["packets"],
                "latency_count": s.latency_us.len(),
            })
        })
        .collect();
    let mut nodes: Vec<Value> = Vec::new();
    let mut nodes_simd: Vec<Value> = Vec::new();
    for s in sources {
        for node in s.summary["nodes"].as_array().into_iter().flatten() {
            if !nodes.iter().any(|n| n["name"] == node["name"]) {
                nodes.push(node.clone());
            }
        }
        let simd = s.summary["environment"]["nodes_simd"].as_array();
        for node in simd.into_iter().flatten() {
            if !nodes_simd.iter().any(|n| n["name"] == node["name"]) {
                nodes_simd.push(node.clone());
            }
        }
    }
    environment.nodes_simd = serde_json::from_value(Value::Array(nodes_simd)).unwrap_or_default();
    environment.nodes_simd_note = Some(
        "as the merged runs reported them; each run's own environment is in merged.sources".into(),
    );
    let mut config = first.summary["config"].clone();
    let fields = config
        .as_object_mut()
        .ok_or_else(|| format!("{}: {SUMMARY} has no config", first.dir.display()))?;
    fields.insert(
        "rate_per_s".into(),
        json!(sources
            .iter()
            .map(|s| f(&s.summary["config"]["rate_per_s"]))
            .sum::<f64>()),
    );
    fields.insert(
        "clients".into(),
        json!(sources
            .iter()
            .map(|s| u(&s.summary["config"]["clients"]))
            .sum::<u64>()),
    );
    fields.insert(
        "duration_s".into(),
        json!(sources
            .iter()
            .map(|s| f(&s.summary["config"]["duration_s"]))
            .fold(0.0, f64::max)),
    );
    warnings.insert(
        0,
        "merged: node metrics are not summed (every run scraped the same nodes); \
         dropped_by_nodes is the largest count any one run saw, per reason; per-second and \
         per-window percentiles are not merged (null)"
            .into(),
    );
    for s in sources {
        for w in s.summary["warnings"].as_array().into_iter().flatten() {
            if let Some(w) = w.as_str() {
                warnings.push(format!("{}: {w}", s.dir.display()));
            }
        }
    }
    let mut report = json!({
        "schema_version": SCHEMA_VERSION,
        "loadgen_version": env!("CARGO_PKG_VERSION"),
        "environment": serde_json::to_value(&environment).map_err(|e| e.to_string())?,
        "mode": "run",
        "driver": driver,
        "nodes": nodes,
        "config": config,
        "result": result,
        "ramp": Value::Null,
        "warnings": warnings,
        "merged": {
            "sources": source_list,
            "start_spread_ms": start_spread_ms,
        },
    });
    let url = &first.summary["directory"]["url"];
    if url.is_string()
        && sources
            .iter()
            .all(|s| &s.summary["directory"]["url"] == url)
    {
        report["directory"] = first.summary["directory"].clone();
    }
    Ok((report, latency_us, lateness_us))
}

/// `loadgen merge DIR...`: prints the merged report (text, or `--json`), and with `--out`
/// writes summary.json, the merged histograms and the latency percentiles and CDF plot.
pub fn merge_command(
    dirs: &[PathBuf],
    output: &OutputArgs,
    environment: Environment,
) -> Result<(), String> {
    if dirs.len() > MERGE_SOURCES_MAX {
        return Err(format!("merge takes at most {MERGE_SOURCES_MAX} runs"));
    }
    let sources = dirs
        .iter()
        .map(|dir| load(dir))
        .collect::<Result<Vec<_>, _>>()?;
    let (report, latency_us, lateness_us) = merge(&sources, environment)?;
    let text = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
    if let Some(dir) = &output.out {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let write = |name: &str, bytes: &[u8]| {
            let path = dir.join(name);
            std::fs::write(&path, bytes).map_err(|e| format!("{}: {e}", path.display()))
        };
        write(SUMMARY, text.as_bytes())?;
        write(LATENCY, crate::output::serialized(&latency_us)?.as_bytes())?;
        write(
            LATENESS,
            crate::output::serialized(&lateness_us)?.as_bytes(),
        )?;
        write(
            "latency.hgrm",
            crate::output::percentile_text(&latency_us).as_bytes(),
        )?;
        let rate = report["result"]["offered"]["rate_per_s"]
            .as_f64()
            .unwrap_or(0.0);
        crate::output::plot_cdf(
            &dir.join("latency_cdf.png"),
            &latency_us,
            &format!("at {rate:.0} packets/s, all generators"),
            format!(
                "merge of {} runs (counts summed, percentiles from the pooled histograms); git {}",
                sources.len(),
                report["environment"]["git_commit"]
                    .as_str()
                    .unwrap_or("unknown")
            ),
        )?;
    }
    if output.json {
        println!("{text}");
    } else {
        print!("{}", render_text(&report, &latency_us, &lateness_us));
        if let Some(dir) = &output.out {
            println!("  files written to {}", dir.display());
        }
    }
    Ok(())
}

fn render_text(
    report: &Value,
    latency_us: &Histogram<u64>,
    lateness_us: &Histogram<u64>,
) -> String {
    let mut out = String::new();
    let r = &report["result"];
    let sources = report["merged"]["sources"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "loadgen {} - merge of {} runs ({}), counts summed, percentiles from the merged histograms",
        report["loadgen_version"].as_str().unwrap_or("?"),
        sources.len(),
        report["driver"].as_str().unwrap_or("?"),
    );
    for s in &sources {
        let _ = writeln!(
            out,
            "  {}: started {} on {} (commit {}), offered {} sent {} delivered {}",
            s["dir"].as_str().unwrap_or("?"),
            s["started_at"].as_str().unwrap_or("?"),
            s["environment"]["host"].as_str().unwrap_or("?"),
            s["environment"]["git_commit"].as_str().unwrap_or("?"),
            s["offered"],
            s["sent"],
            s["delivered"]
        );
    }
    if let Some(spread) = report["merged"]["start_spread_ms"].as_f64() {
        let _ = writeln!(out, "  starts spread over {spread:.1} ms");
    }
    let _ = writeln!(
        out,
        "  offered   {:>9} packets  {:>9.1}/s",
        r["offered"]["packets"],
        f(&r["offered"]["rate_per_s"])
    );
    let _ = writeln!(
        out,
        "  sent      {:>9} packets  {:>9.1}/s  late {} ({:.2}%)  not sent {}  failed {}",
        r["sent"]["packets"],
        f(&r["sent"]["rate_per_s"]),
        r["sent"]["late"],
        f(&r["sent"]["late_ratio"]) * 100.0,
        r["sent"]["not_sent"],
        r["sent"]["failed"]
    );
    let _ = writeln!(
        out,
        "  delivered {:>9} packets  {:>9.1}/s  lost {} ({:.3}%)  duplicates {}",
        r["delivered"]["packets"],
        f(&r["delivered"]["rate_per_s"]),
        r["delivered"]["lost"],
        f(&r["delivered"]["loss_ratio"]) * 100.0,
        r["delivered"]["duplicates"]
    );
    let _ = writeln!(
        out,
        "  latency ms (from scheduled send)  {}  (n={})",
        crate::report::ladder_text(
            &Ladder::from_us(latency_us),
            &["p50", "p90", "p99", "p999", "p9999"]
        ),
        latency_us.len()
    );
    let _ = writeln!(
        out,
        "  send lateness ms                  {}",
        crate::report::ladder_text(&Ladder::from_us(lateness_us), &["p50", "p99"])
    );
    for w in report["warnings"].as_array().into_iter().flatten() {
        let _ = writeln!(out, "  WARNING: {}", w.as_str().unwrap_or("?"));
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn leaves_sum_counters_and_keep_the_largest_ratio() {
        let a =
            json!({"frames": 3, "busy_ratio": 0.25, "gateway_errors": {"x": 1}, "errors": ["e"]});
        let b = json!({"frames": 4, "busy_ratio": 0.5, "gateway_errors": {"x": 2, "y": 5}, "errors": ["f"]});
        let m = sum_leaves(&a, &b);
        assert_eq!(m["frames"], 7);
        assert_eq!(m["busy_ratio"], 0.5);
        assert_eq!(m["gateway_errors"], json!({"x": 3, "y": 5}));
        assert_eq!(m["errors"], json!(["e", "f"]));
    }

    fn histogram(values: &[u64]) -> Histogram<u64> {
        let mut h = crate::tracker::latency_histogram().unwrap();
        for v in values {
            h.record(*v).unwrap();
        }
        h
    }

    fn source(name: &str, latency: &[u64], delivered_offset: u64) -> Source {
        let latency_us = histogram(latency);
        let lateness_us = histogram(&vec![5; latency.len()]);
        let n = latency.len() as u64;
        let ladder = serde_json::to_value(Ladder::from_us(&latency_us)).unwrap();
        let lateness = serde_json::to_value(Ladder::from_us(&lateness_us)).unwrap();
        Source {
            dir: PathBuf::from(name),
            summary: json!({
                "schema_version": 1,
                "mode": "run",
                "driver": "target",
                "nodes": [],
                "config": {"rate_per_s": 100.0, "clients": 2, "duration_s": 1.0, "late_bound_ms": 1.0},
                "warnings": [],
                "result": {
                    "interrupted": false,
                    "offered": {"packets": n + delivered_offset, "rate_per_s": 100.0},
                    "sent": {"packets": n + delivered_offset, "rate_per_s": 100.0, "late": 1,
                             "not_sent": 0, "failed": 0, "lateness_ms": lateness},
                    "delivered": {"packets": n, "rate_per_s": 99.0, "lost": delivered_offset,
                                  "duplicates": 0, "rejected_at_receiver": 0},
                    "latency_ms": ladder,
                    "dropped_by_nodes": {"total": 2, "by_reason": {"overload": 2}},
                    "generator": {"capacity_per_s": 1000.0, "busy_ratio": 0.1},
                    "receiver": {"frames": n, "busy_ratio": 0.2},
                    "timeseries": [{"second": 0, "offered": n, "sent": n, "delivered": n}],
                    "times": {"wall_s": 3.0},
                    "windows": [],
                    "processes": [{"name": "loadgen"}],
                    "start": {"at": "x", "at_unix_s": 100.0, "requested": null, "late_ms": null},
                }
            }),
            latency_us,
            lateness_us,
        }
    }

    /// The merged ladder is the merged histogram's, not an average of the runs' percentiles:
    /// one run fast, one slow, and the merged p50 sits where the pooled values put it.
    #[test]
    fn counts_add_up_and_percentiles_come_from_the_pooled_histogram() {
        let fast: Vec<u64> = (1..=90).map(|v| v * 10).collect();
        let slow: Vec<u64> = (1..=10).map(|v| v * 100_000).collect();
        let sources = vec![source("a", &fast, 1), source("b", &slow, 0)];
        let (report, latency, _) = merge(&sources, crate::env::collect()).unwrap();
        let r = &report["result"];
        assert_eq!(r["offered"]["packets"], 101);
        assert_eq!(r["delivered"]["packets"], 100);
        assert_eq!(r["delivered"]["lost"], 1);
        assert_eq!(r["sent"]["late"], 2);
        assert_eq!(r["latency_ms"]["count"], 100);
        assert_eq!(latency.len(), 100);
        // Pooled p50 is the 50th of 100 values: 500 µs (a fast one), whereas the mean of the
        // runs' p50s would be about 25 ms.
        let p50 = r["latency_ms"]["p50"].as_f64().unwrap();
        assert!((p50 - 0.5).abs() < 0.01, "{p50}");
        assert_eq!(r["receiver"]["frames"], 100);
        assert_eq!(
            r["dropped_by_nodes"]["total"], 2,
            "the largest, not the sum"
        );
        assert_eq!(r["timeseries"][0]["delivered"], 100);
        assert_eq!(r["timeseries"][0]["p99_ms"], Value::Null);
        assert_eq!(r["processes"][1]["name"], "2:loadgen");
        assert_eq!(report["merged"]["start_spread_ms"], 0.0);
        assert_eq!(report["config"]["rate_per_s"], 200.0);
    }

    #[test]
    fn a_ramp_or_a_mismatched_histogram_is_refused() {
        let dir = std::env::temp_dir().join(format!("loadgen-merge-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let s = source("x", &[10, 20], 0);
        let write = |summary: &Value| {
            std::fs::write(dir.join(SUMMARY), summary.to_string()).unwrap();
            std::fs::write(
                dir.join(LATENCY),
                crate::output::serialized(&s.latency_us).unwrap(),
            )
            .unwrap();
            std::fs::write(
                dir.join(LATENESS),
                crate::output::serialized(&s.lateness_us).unwrap(),
            )
            .unwrap();
        };
        write(&s.summary);
        assert!(load(&dir).is_ok());
        let mut ramp = s.summary.clone();
        ramp["mode"] = json!("sweep");
        write(&ramp);
        assert!(load(&dir).unwrap_err().contains("merge takes runs"));
        let mut other = s.summary.clone();
        other["result"]["latency_ms"]["count"] = json!(3);
        write(&other);
        assert!(load(&dir).unwrap_err().contains("not the same run"));
        std::fs::remove_file(dir.join(LATENESS)).unwrap();
        assert!(load(&dir).unwrap_err().contains(LATENESS));
        let _ = std::fs::remove_dir_all(&dir);
    }
}

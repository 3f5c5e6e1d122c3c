//! Sweeps: one figure is one sweep file, a base [`SimConfig`] and the parameters that vary.
//! Planning writes one config per point; each point is then an independent
//! `lethe-sim run` process (so any batch scheduler can spread them, and a local driver runs a
//! few at a time); [`crate::figure::collect`] reads their traces back into CSV, PNG and a
//! JSON sidecar.
//!
//! Points are the series (each a set of parameters, with a label) times the x values (one
//! parameter). A parameter is a field of the config (`delay_ms_mean`, `cover.loop_rate_per_s`)
//! or a derived one, applied after the fields:
//! - `latency_budget_ms`: the mean per-hop delay is the budget divided by the layers, so the
//!   mixing delays of a route add up to the budget whatever the layer count;
//! - `corrupt_share`: that share of the mixes (rounded), layer by layer from the first mix of
//!   each, is corrupt;
//! - `mix_capacity_pps` with `utilisation`: see [`capacity_load`].

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::sim::{config_hash, SimConfig};

/// Points of one sweep (series x values).
pub const POINTS_MAX: usize = 400;
/// Seeds per point.
pub const SEEDS_MAX: u64 = 100;
/// Concurrent `run` processes of the local driver.
pub const JOBS_MAX: usize = 64;
/// How often the local driver looks at its children (ms).
const POLL_MS: u64 = 20;

/// The figure a sweep draws.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FigureKind {
    /// Metrics (`y`) against the x parameter or a metric (`x_metric`), one line per series
    /// and metric, with 95 % intervals over the seeds as bands.
    Lines,
    /// The gateway flow matcher's ROC curve per series (TPR averaged over the seeds at each
    /// FPR), with the diagonal.
    Roc,
    /// The end-to-end latency's empirical CDF per series (quantiles averaged over the seeds)
    /// with the CDF of its Gamma fit, dashed.
    LatencyCdf,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct XAxis {
    pub param: String,
    pub values: Vec<f64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Series {
    pub label: String,
    /// Parameters (config fields or derived ones) and their values for this series.
    #[serde(default)]
    pub set: Map<String, Value>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SweepSpec {
    /// File names: `<name>.csv`, `<name>.png`, `<name>.meta.json`.
    pub name: String,
    pub title: String,
    pub kind: FigureKind,
    pub base: SimConfig,
    /// `lines` only.
    #[serde(default)]
    pub x: Option<XAxis>,
    /// None: one series, the base.
    #[serde(default)]
    pub series: Vec<Series>,
    /// Seeds per point: base.seed, base.seed + 1, ...
    pub seeds: u64,
    #[serde(default)]
    pub warmup_s: f64,
    #[serde(default)]
    pub drain_s: f64,
    /// `lines`: plot against this metric's mean instead of the x parameter.
    #[serde(default)]
    pub x_metric: Option<String>,
    /// `lines`: the metrics drawn (names of `TraceMetrics::scalars`).
    #[serde(default)]
    pub y: Vec<String>,
    #[serde(default)]
    pub x_label: Option<String>,
    #[serde(default)]
    pub y_label: Option<String>,
}

/// One point of a sweep: a config and where its traces go.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlannedPoint {
    pub index: usize,
    pub series: usize,
    pub label: String,
    pub x: Option<f64>,
    pub config_hash: String,
    /// Relative to the sweep's directory.
    pub dir: String,
}

/// What `plan` wrote: the sweep's identity and its points.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub spec: SweepSpec,
    /// SHA-256 of the sweep file's bytes.
    pub sweep_hash: String,
    pub commit: String,
    pub points: Vec<PlannedPoint>,
}

pub const PLAN_FILE: &str = "plan.json";
pub const DONE_FILE: &str = "done";
pub const CONFIG_FILE: &str = "config.json";

fn io(path: &Path, e: impl std::fmt::Display) -> String {
    format!("{}: {e}", path.display())
}

pub fn load_spec(path: &Path) -> Result<(SweepSpec, String), String> {
    let bytes = std::fs::read(path).map_err(|e| io(path, e))?;
    let spec: SweepSpec = serde_json::from_slice(&bytes).map_err(|e| io(path, e))?;
    let hash = hex(&Sha256::digest(&bytes));
    Ok((spec, hash))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Per-client message rate that loads each mix to `utilisation` of `capacity_pps`: a mix
/// of a layer sees its share of the messages and of their SURB-ACKs (both cross every
/// layer), plus the clients' cover (each cover packet crosses every layer too).
pub fn capacity_load(config: &SimConfig, capacity_pps: f64, utilisation: f64) -> f64 {
    let per_mix_pps = capacity_pps * utilisation;
    let layer_pps = per_mix_pps * f64::from(config.mixes_per_layer);
    let cover_pps = config
        .cover
        .as_ref()
        .map(|c| c.payload_rate_per_s + c.loop_rate_per_s + c.drop_rate_per_s)
        .unwrap_or(0.0)
        * f64::from(config.clients);
    // A message is two packets at every layer (itself and its ACK); with cover, real
    // messages ride the payload stream, whose rate is already counted.
    if config.cover.is_some() {
        return (layer_pps - cover_pps).max(0.0) / f64::from(config.clients) / 2.0;
    }
    layer_pps / 2.0 / f64::from(config.clients)
}

/// The base with `sets` applied in order (fields first, then the derived parameters).
pub fn configure(base: &SimConfig, sets: &[(String, Value)]) -> Result<SimConfig, String> {
    let mut value = serde_json::to_value(base).map_err(|e| e.to_string())?;
    let mut derived: Vec<(&str, f64)> = Vec::new();
    for (param, set) in sets {
        match param.as_str() {
            "latency_budget_ms" | "corrupt_share" | "mix_capacity_pps" | "utilisation" => {
                let number = set
                    .as_f64()
                    .ok_or_else(|| format!("{param}: a number, not {set}"))?;
                derived.push((param.as_str(), number));
            }
            _ => set_path(&mut value, param, set.clone())?,
        }
    }
    let mut config: SimConfig =
        serde_json::from_value(value).map_err(|e| format!("the point's config: {e}"))?;
    let mut capacity = None;
    let mut utilisation = None;
    for (param, number) in derived {
        match param {
            "latency_budget_ms" => {
                config.delay_ms_mean = number / f64::from(config.layers.max(1));
            }
            "corrupt_share" => config.corrupt = corrupt_mixes(&config, number),
            "mix_capacity_pps" => capacity = Some(number),
            _ => utilisation = Some(number),
        }
    }
    if let Some(capacity) = capacity {
        let utilisation = utilisation.unwrap_or(0.5);
        config.message_rate_per_s = capacity_load(&config, capacity, utilisation);
        config.mix_capacity_pps = Some(capacity);
    }
    config.validate()?;
    Ok(config)
}

/// A whole number as a JSON integer (so it sets an integer field such as `layers`), else
/// a float.
fn number(x: f64) -> Value {
    const EXACT_MAX: f64 = 9_007_199_254_740_992.0; // 2^53
    if x.fract() == 0.0 && x.abs() <= EXACT_MAX {
        Value::from(x as i64)
    } else {
        Value::from(x)
    }
}

/// `share` of the mixes (rounded), taken layer by layer: m1.0, m2.0, .., m1.1, ..
fn corrupt_mixes(config: &SimConfig, share: f64) -> Vec<String> {
    let total = config.layers * config.mixes_per_layer;
    let count = (share.clamp(0.0, 1.0) * f64::from(total)).round() as u32;
    (0..count)
        .map(|i| {
            let layer = i % config.layers + 1;
            let mix = i / config.layers;
            format!("m{layer}.{mix}")
        })
        .collect()
}

fn set_path(value: &mut Value, path: &str, set: Value) -> Result<(), String> {
    let mut at = value;
    let mut parts = path.split('.').peekable();
    while let Some(part) = parts.next() {
        let object = at
            .as_object_mut()
            .ok_or_else(|| format!("{path}: {part} is inside a value that is not an object"))?;
        if parts.peek().is_none() {
            object.insert(part.to_string(), set);
            return Ok(());
        }
        at = object
            .get_mut(part)
            .ok_or_else(|| format!("{path}: the base has no {part}"))?;
    }
    Err(format!("{path}: an empty parameter"))
}

/// The sweep's points, in series-major order.
pub fn points(spec: &SweepSpec) -> Result<Vec<(PlannedPoint, SimConfig)>, String> {
    if spec.seeds == 0 || spec.seeds > SEEDS_MAX {
        return Err(format!("seeds must be in [1, {SEEDS_MAX}]"));
    }
    let base_series = [Series {
        label: spec.name.clone(),
        set: Map::new(),
    }];
    let series: &[Series] = if spec.series.is_empty() {
        &base_series
    } else {
        &spec.series
    };
    let xs: Vec<Option<f64>> = match (&spec.x, spec.kind) {
        (Some(x), FigureKind::Lines) if !x.values.is_empty() => {
            x.values.iter().copied().map(Some).collect()
        }
        (None, FigureKind::Lines) => return Err("a lines figure needs x".into()),
        (Some(_), FigureKind::Lines) => return Err("x has no values".into()),
        (Some(_), _) => return Err("only a lines figure has an x axis".into()),
        (None, _) => vec![None],
    };
    if series.len() * xs.len() > POINTS_MAX {
        return Err(format!("more than {POINTS_MAX} points"));
    }
    let mut out = Vec::new();
    for (s, one) in series.iter().enumerate() {
        for x in &xs {
            let mut sets: Vec<(String, Value)> = one
                .set
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            if let (Some(axis), Some(x)) = (&spec.x, x) {
                sets.push((axis.param.clone(), number(*x)));
            }
            let config = configure(&spec.base, &sets)
                .map_err(|e| format!("point {:?} x={x:?}: {e}", one.label))?;
            let index = out.len();
            out.push((
                PlannedPoint {
                    index,
                    series: s,
                    label: one.label.clone(),
                    x: *x,
                    config_hash: config_hash(&config),
                    dir: format!("points/p{index:03}"),
                },
                config,
            ));
        }
    }
    Ok(out)
}

/// Writes the plan, each point's config, and `commands.txt` (one `run` per point, for a
/// batch scheduler), under `out`.
pub fn plan(spec_path: &Path, out: &Path, exe: &str, commit: &str) -> Result<Plan, String> {
    let (spec, sweep_hash) = load_spec(spec_path)?;
    let points = points(&spec)?;
    let mut commands = String::new();
    for (point, config) in &points {
        let dir = out.join(&point.dir);
        std::fs::create_dir_all(&dir).map_err(|e| io(&dir, e))?;
        let text = serde_json::to_string_pretty(config).map_err(|e| e.to_string())?;
        let path = dir.join(CONFIG_FILE);
        std::fs::write(&path, text).map_err(|e| io(&path, e))?;
        commands.push_str(&format!(
            "{exe} run --config {} --out {} --seeds {}\n",
            path.display(),
            dir.display(),
            spec.seeds
        ));
    }
    let plan = Plan {
        spec,
        sweep_hash,
        commit: commit.to_string(),
        points: points.into_iter().map(|(p, _)| p).collect(),
    };
    let path = out.join(PLAN_FILE);
    let text = serde_json::to_string_pretty(&plan).map_err(|e| e.to_string())?;
    std::fs::write(&path, text).map_err(|e| io(&path, e))?;
    let path = out.join("commands.txt");
    std::fs::write(&path, commands).map_err(|e| io(&path, e))?;
    Ok(plan)
}

pub fn load_plan(out: &Path) -> Result<Plan, String> {
    let path = out.join(PLAN_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| io(&path, e))?;
    serde_json::from_str(&text).map_err(|e| io(&path, e))
}

fn spawn(exe: &Path, plan: &Plan, out: &Path, point: &PlannedPoint) -> Result<Child, String> {
    let dir = out.join(&point.dir);
    let log = dir.join("run.log");
    let log = std::fs::File::create(&log).map_err(|e| io(&log, e))?;
    Command::new(exe)
        .arg("run")
        .arg("--config")
        .arg(dir.join(CONFIG_FILE))
        .arg("--out")
        .arg(&dir)
        .arg("--seeds")
        .arg(plan.spec.seeds.to_string())
        .env("LETHE_COMMIT", &plan.commit)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| io(exe, e))
}

/// Runs every point not yet done as its own `exe run` process, `jobs` at a time; a point is
/// done once its process exited successfully (a rerun skips it).
pub fn run_points(exe: &Path, plan: &Plan, out: &Path, jobs: usize) -> Result<(), String> {
    if jobs == 0 || jobs > JOBS_MAX {
        return Err(format!("--jobs must be in [1, {JOBS_MAX}]"));
    }
    let mut waiting: Vec<&PlannedPoint> = plan
        .points
        .iter()
        .filter(|p| !out.join(&p.dir).join(DONE_FILE).exists())
        .rev()
        .collect();
    let mut running: Vec<(Child, &PlannedPoint)> = Vec::new();
    let mut failed: Vec<String> = Vec::new();
    while !waiting.is_empty() || !running.is_empty() {
        while running.len() < jobs {
            let Some(point) = waiting.pop() else { break };
            running.push((spawn(exe, plan, out, point)?, point));
        }
        let mut still = Vec::new();
        for (mut child, point) in running {
            match child.try_wait().map_err(|e| e.to_string())? {
                None => still.push((child, point)),
                Some(status) if status.success() => {
                    let done = out.join(&point.dir).join(DONE_FILE);
                    std::fs::write(&done, "").map_err(|e| io(&done, e))?;
                    println!(
                        "point {} ({} x={:?}) done",
                        point.index, point.label, point.x
                    );
                }
                Some(status) => failed.push(format!("point {} ({status})", point.index)),
            }
        }
        running = still;
        if !running.is_empty() {
            std::thread::sleep(std::time::Duration::from_millis(POLL_MS));
        }
    }
    if !failed.is_empty() {
        return Err(format!("failed: {}", failed.join(", ")));
    }
    Ok(())
}

/// The default sweep file of a named figure, relative to the crate's configs.
pub fn figure_config(name: &str) -> PathBuf {
    PathBuf::from("sim/configs/figures").join(format!("{name}.json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_set_fields_and_derived_values() {
        let base = SimConfig::small(1);
        let config = configure(
            &base,
            &[
                ("layers".into(), Value::from(2)),
                ("latency_budget_ms".into(), Value::from(100.0)),
                ("link.latency_us".into(), Value::from(7)),
                ("corrupt_share".into(), Value::from(0.5)),
            ],
        )
        .unwrap();
        assert_eq!(config.layers, 2);
        assert_eq!(config.delay_ms_mean, 50.0);
        assert_eq!(config.link.latency_us, 7);
        assert_eq!(config.corrupt, ["m1.0", "m2.0"]);
        assert!(configure(&base, &[("cover.loop_rate_per_s".into(), Value::from(1))]).is_err());
        assert!(configure(&base, &[("layers".into(), Value::from(9))]).is_err());
        let loaded = configure(
            &base,
            &[
                ("mix_capacity_pps".into(), Value::from(600.0)),
                ("utilisation".into(), Value::from(0.5)),
            ],
        )
        .unwrap();
        // 300 packets/s per mix, 2 mixes per layer, half of them ACKs, over 6 clients.
        assert_eq!(loaded.message_rate_per_s, 50.0);
        assert_eq!(loaded.mix_capacity_pps, Some(600.0));
    }
}

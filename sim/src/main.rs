//! `lethe-sim`: run the simulator, compute metrics over traces.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use lethe_sim::metrics::{self, MetricsOptions, SeedsReport};
use lethe_sim::sim::{self, SimConfig};
use lethe_sim::trace::find_traces;
use lethe_sim::{figure, sweep};

/// Seeds one `run` may go through.
const SEEDS_MAX: u64 = 1_000;

#[derive(Parser)]
#[command(
    name = "lethe-sim",
    about = "Lethe's research toolkit: simulator and metrics"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Simulate a config (JSON) and write one trace per seed: OUT/seed-<seed>/trace.csv.
    Run {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// Seeds config.seed, config.seed + 1, ...
        #[arg(long, default_value_t = 1)]
        seeds: u64,
        /// Record the input -> output links (needs a build with `--features lab`).
        #[arg(long)]
        lab: bool,
    },
    /// Metrics over a trace, a directory holding trace.csv, or one holding seed directories.
    Metrics {
        #[arg(long)]
        trace: PathBuf,
        /// Seconds cut from the trace's start.
        #[arg(long, default_value_t = 0.0)]
        warmup_s: f64,
        /// Seconds cut from the trace's end.
        #[arg(long, default_value_t = 0.0)]
        drain_s: f64,
        /// The two labelled senders for epsilon/delta (node names); default: the first two clients.
        #[arg(long, num_args = 2, value_names = ["SENDER0", "SENDER1"])]
        labelled: Option<Vec<String>>,
        /// Everything as JSON (per-seed reports included).
        #[arg(long)]
        json: bool,
    },
    /// Merges a real run's per-process traces (DIR/parts/*.csv, from `lethe testnet up
    /// --trace DIR`) into DIR/trace.csv, in time order. `metrics --trace DIR` does this itself
    /// when DIR/trace.csv is missing.
    Merge { dir: PathBuf },
    /// Prints a small example config.
    ExampleConfig,
    /// Plans a sweep (one config per point under OUT/points, OUT/commands.txt with one `run`
    /// per point for a batch scheduler), runs the points not yet done as separate
    /// processes, JOBS at a time, then collects the figure (OUT/<name>.csv, .png, .meta.json).
    Sweep {
        file: PathBuf,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 2)]
        jobs: usize,
        /// Only write the plan and commands.txt (run them elsewhere, then `collect`).
        #[arg(long)]
        plan_only: bool,
    },
    /// The figure of a sweep whose points have run: OUT/<name>.csv, .png and .meta.json.
    Collect {
        #[arg(long)]
        out: PathBuf,
    },
    /// A named figure: `sweep` of sim/configs/figures/NAME.json (or --config) into runs/NAME.
    Figure {
        name: String,
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long, default_value_t = 2)]
        jobs: usize,
    },
    /// A benchmark, not a test: simulates CONFIG once (one thread) and prints simulated
    /// events per second of wall time, with the CPU's name. The trace goes to OUT.
    Bench {
        #[arg(long)]
        config: PathBuf,
        /// Where the trace goes; without it, rows are only counted.
        #[arg(long)]
        out: Option<PathBuf>,
        #[command(flatten)]
        set: Overrides,
    },
    /// A benchmark: the largest client count (bisected in [2, --clients-max]) whose run of
    /// CONFIG simulates as fast as real time on one core, untraced, by the thread's CPU time
    /// (the wall clock counts other work on a shared machine). A run is given up once its
    /// CPU time is 1 s ahead of the virtual time.
    RealTime {
        #[arg(long)]
        config: PathBuf,
        #[arg(long, default_value_t = 10_000)]
        clients_max: u32,
        /// Stop when the bracket is narrower than this share of its lower end.
        #[arg(long, default_value_t = 0.05)]
        precision: f64,
        #[command(flatten)]
        set: Overrides,
    },
}

/// Fields of a config a benchmark may set on the command line.
#[derive(clap::Args)]
struct Overrides {
    /// Sphinx real or the cost model (`real`, `cost_model`).
    #[arg(long)]
    sphinx: Option<String>,
    #[arg(long)]
    clients: Option<u32>,
    #[arg(long)]
    duration_ms: Option<u64>,
}

impl Overrides {
    fn apply(&self, config: &mut SimConfig) -> Result<(), String> {
        if let Some(mode) = &self.sphinx {
            config.sphinx = serde_json::from_value(serde_json::Value::String(mode.clone()))
                .map_err(|_| format!("--sphinx {mode}: real or cost_model"))?;
        }
        if let Some(clients) = self.clients {
            config.clients = clients;
        }
        if let Some(duration_ms) = self.duration_ms {
            config.duration_ms = duration_ms;
        }
        Ok(())
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run {
            config,
            out,
            seeds,
            lab,
        } => run(&config, &out, seeds, lab),
        Command::Metrics {
            trace,
            warmup_s,
            drain_s,
            labelled,
            json,
        } => {
            let labelled = labelled.and_then(|v| match v.as_slice() {
                [a, b] => Some((a.clone(), b.clone())),
                _ => None,
            });
            metrics_command(&trace, warmup_s, drain_s, labelled, json)
        }
        Command::Bench { config, out, set } => bench(&config, out.as_deref(), &set),
        Command::RealTime {
            config,
            clients_max,
            precision,
            set,
        } => real_time(&config, clients_max, precision, &set),
        Command::Merge { dir } => lethe_sim::merge::merge_parts(&dir)
            .map(|path| println!("{}", path.display()))
            .map_err(|e| e.to_string()),
        Command::Sweep {
            file,
            out,
            jobs,
            plan_only,
        } => sweep_command(&file, &out, jobs, plan_only),
        Command::Collect { out } => collect_command(&out),
        Command::Figure {
            name,
            config,
            out,
            jobs,
        } => {
            let file = config.unwrap_or_else(|| sweep::figure_config(&name));
            let out = out.unwrap_or_else(|| PathBuf::from("runs").join(&name));
            sweep_command(&file, &out, jobs, false)
        }
        Command::ExampleConfig => serde_json::to_string_pretty(&SimConfig::small(1))
            .map(|text| println!("{text}"))
            .map_err(|e| e.to_string()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("lethe-sim: {message}");
            ExitCode::FAILURE
        }
    }
}

/// The commit the traces come from: `LETHE_COMMIT`, else `git rev-parse HEAD`, else unknown.
fn commit() -> String {
    lethe_sim::trace::current_commit()
}

fn run(config_path: &Path, out: &Path, seeds: u64, lab: bool) -> Result<(), String> {
    if seeds == 0 || seeds > SEEDS_MAX {
        return Err(format!("--seeds must be in [1, {SEEDS_MAX}]"));
    }
    let text = std::fs::read_to_string(config_path)
        .map_err(|e| format!("{}: {e}", config_path.display()))?;
    let mut config: SimConfig =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", config_path.display()))?;
    config.lab |= lab;
    let commit = commit();
    let first_seed = config.seed;
    for offset in 0..seeds {
        config.seed = first_seed.wrapping_add(offset);
        let dir = out.join(format!("seed-{}", config.seed));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let summary =
            sim::run(&config, &dir.join("trace.csv"), &commit).map_err(|e| e.to_string())?;
        println!(
            "seed {}: {} events, {} rows, real {} sent / {} delivered, {} dropped -> {}",
            config.seed,
            summary.events_count,
            summary.trace_rows_count,
            summary.real_sent_count,
            summary.real_delivered_count,
            summary.dropped_count,
            dir.display()
        );
    }
    Ok(())
}

fn load_config(path: &Path, set: &Overrides) -> Result<SimConfig, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut config: SimConfig =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    set.apply(&mut config)?;
    config.validate()?;
    Ok(config)
}

fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".to_string())
}

/// This thread's CPU time (ns), from /proc/self/schedstat (0 where there is none): on a
/// machine shared with other work, the time the simulation itself took.
fn cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn bench(config_path: &Path, out: Option<&Path>, set: &Overrides) -> Result<(), String> {
    let config = load_config(config_path, set)?;
    let started = std::time::Instant::now();
    let cpu_started_ns = cpu_ns();
    let summary = match out {
        Some(out) => {
            std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
            sim::run(&config, &out.join("trace.csv"), &commit())
        }
        None => sim::run_untraced(&config, &commit()),
    }
    .map_err(|e| e.to_string())?;
    let wall_s = started.elapsed().as_secs_f64().max(1e-9);
    let cpu_s = (cpu_ns().saturating_sub(cpu_started_ns) as f64 / 1e9).max(1e-9);
    println!(
        "{} ({} clients, sphinx {:?}, trace {}): {} events, {} trace rows, {:.1} simulated s \
         ({} s of sending) in {wall_s:.2} s wall ({cpu_s:.2} s of CPU) on one core of {}: \
         {:.0} events/s, {:.0} rows/s of wall time, {:.0} events per CPU s; \
         real packets {} sent / {} delivered, messages {} / {} acknowledged",
        config_path.display(),
        config.clients,
        config.sphinx,
        if out.is_some() { "written" } else { "counted" },
        summary.events_count,
        summary.trace_rows_count,
        summary.end_ns as f64 / 1e9,
        config.duration_ms as f64 / 1e3,
        cpu_name(),
        summary.events_count as f64 / wall_s,
        summary.trace_rows_count as f64 / wall_s,
        summary.events_count as f64 / cpu_s,
        summary.real_sent_count,
        summary.real_delivered_count,
        summary.messages_count,
        summary.messages_acked_count,
    );
    Ok(())
}

/// Bisection steps at most (2^20 > CLIENTS_MAX).
const REAL_TIME_STEPS_MAX: u32 = 20;

fn real_time(
    config_path: &Path,
    clients_max: u32,
    precision: f64,
    set: &Overrides,
) -> Result<(), String> {
    let base = load_config(config_path, set)?;
    let fits = |clients: u32| -> Result<bool, String> {
        let config = SimConfig {
            clients,
            ..base.clone()
        };
        config.validate()?;
        // CPU time, not wall time: on a shared machine the wall clock counts other work.
        let cpu_started_ns = cpu_ns();
        let elapsed_ns = || cpu_ns().saturating_sub(cpu_started_ns);
        let result = sim::run_untraced_real_time(&config, &commit(), &elapsed_ns);
        let cpu_s = elapsed_ns() as f64 / 1e9;
        match result {
            Ok(summary) => {
                // It never fell more than the slack behind (setup not counted).
                println!(
                    "{clients} clients: {:.1} simulated s in {cpu_s:.1} s of CPU (setup \
                     included), {} events ({:.0}/s): real time",
                    summary.end_ns as f64 / 1e9,
                    summary.events_count,
                    summary.events_count as f64 / cpu_s.max(1e-9),
                );
                Ok(true)
            }
            Err(sim::SimError::BehindRealTime { at_ns }) => {
                println!(
                    "{clients} clients: behind real time at {:.1} simulated s ({cpu_s:.1} s of CPU)",
                    at_ns as f64 / 1e9
                );
                Ok(false)
            }
            Err(e) => Err(e.to_string()),
        }
    };
    let (mut low, mut high) = (2u32, clients_max.max(2));
    if !fits(low)? {
        println!("not even {low} clients run in real time");
        return Ok(());
    }
    if fits(high)? {
        low = high;
    }
    for _ in 0..REAL_TIME_STEPS_MAX {
        if high - low <= ((f64::from(low) * precision) as u32).max(1) {
            break;
        }
        let middle = low + (high - low) / 2;
        if fits(middle)? {
            low = middle;
        } else {
            high = middle;
        }
    }
    println!(
        "{}: at most {low} clients in real time (bracket [{low}, {high}]) on one core of {}, \
         sphinx {:?}, {} s of sending",
        config_path.display(),
        cpu_name(),
        base.sphinx,
        base.duration_ms as f64 / 1e3
    );
    Ok(())
}

fn sweep_command(file: &Path, out: &Path, jobs: usize, plan_only: bool) -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| format!("this program's path: {e}"))?;
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let plan = sweep::plan(file, out, &exe.display().to_string(), &commit())?;
    println!(
        "{}: {} points x {} seeds; commands in {}",
        plan.spec.name,
        plan.points.len(),
        plan.spec.seeds,
        out.join("commands.txt").display()
    );
    if plan_only {
        return Ok(());
    }
    sweep::run_points(&exe, &plan, out, jobs)?;
    collect_command(out)
}

fn collect_command(out: &Path) -> Result<(), String> {
    let written = figure::collect(out)?;
    println!(
        "{} {} {}",
        written.csv.display(),
        written.png.display(),
        written.meta.display()
    );
    Ok(())
}

fn seconds_ns(seconds: f64, name: &str) -> Result<u64, String> {
    if !(0.0..=1e6).contains(&seconds) {
        return Err(format!("--{name} must be in [0, 1e6] s"));
    }
    Ok((seconds * 1e9) as u64)
}

fn metrics_command(
    trace: &Path,
    warmup_s: f64,
    drain_s: f64,
    labelled: Option<(String, String)>,
    json: bool,
) -> Result<(), String> {
    let options = MetricsOptions {
        warmup_ns: seconds_ns(warmup_s, "warmup-s")?,
        drain_ns: seconds_ns(drain_s, "drain-s")?,
        labelled,
    };
    let paths = find_traces(trace).map_err(|e| e.to_string())?;
    let mut per_seed = Vec::new();
    for path in &paths {
        per_seed.push(metrics::compute(path, &options).map_err(|e| e.to_string())?);
    }
    let report = metrics::over_seeds(per_seed);
    if json {
        let text = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
        println!("{text}");
    } else {
        print_table(&report);
    }
    Ok(())
}

fn print_table(report: &SeedsReport) {
    println!("seeds: {:?}", report.seeds);
    println!("{:<32} {:>14} {:>14}", "metric", "mean", "95% CI +/-");
    for (name, interval) in &report.intervals {
        println!(
            "{name:<32} {:>14.4} {:>14.4}",
            interval.mean, interval.ci95_half_width
        );
    }
}

//! `loadgen`: drives a Lethe network with an open-loop packet schedule and reports delivery,
//! loss and coordinated-omission-corrected latency. See loadgen/README.md.

mod cli;
mod driver;
mod generator;
mod output;
mod plot;
mod ramp;
mod receiver;
mod report;
mod run;
mod schedule;
mod scrape;
mod sender;
mod stamp;
mod tracker;

use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Command};
use driver::{Driver, EmbeddedMixnet, EmbeddedOptions, SingleNode};
use report::Report;
use run::{LoadParams, RunOutcome};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match real_main(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loadgen: {e}");
            ExitCode::from(2)
        }
    }
}

fn real_main(cli: &Cli) -> Result<(), String> {
    cli.load.validate()?;
    run::install_interrupt()?;
    if let Some(url) = &cli.target {
        driver::directory_driver(url)?;
    }
    let base = LoadParams {
        rate_per_s: cli.load.rate,
        duration_s: cli.load.duration,
        clients: cli.load.clients,
        size: cli.load.packet_size.size(),
        delay_ms_mean: cli.load.delay_ms_mean(),
        late_bound_ms: cli.load.late_bound_ms,
        drain_margin_s: cli.load.drain_margin_s,
        lookahead_s: cli.load.lookahead_s,
        run_id: 1,
        progress: !cli.load.quiet,
        label: "loadgen".into(),
    };
    let mut driver: Box<dyn Driver> = match &cli.command {
        Some(Command::Node {
            addr,
            node_key,
            node_metrics,
            ..
        }) => {
            let key = driver::parse_key_hex(node_key).map_err(|e| format!("--node-key: {e}"))?;
            Box::new(SingleNode::new(*addr, key, *node_metrics)?)
        }
        _ => {
            let lethe = driver::find_lethe(cli.lethe.as_deref())?;
            status(
                cli,
                &format!(
                    "starting the embedded network ({} mixnodes + receiver)",
                    3 * cli.load.nodes_per_layer
                ),
            );
            Box::new(EmbeddedMixnet::start(&EmbeddedOptions {
                lethe,
                layers: 3,
                nodes_per_layer: cli.load.nodes_per_layer,
                extra_args: Vec::new(),
            })?)
        }
    };
    let plan = run::plan(driver.as_ref(), &base)?;
    let capacity = generator::calibrate(&plan, 300)?;
    status(
        cli,
        &format!("generator capacity {capacity:.0} packets/s per thread; running"),
    );
    let (mode, detail, ramp) = match &cli.command {
        Some(Command::Node { ramp: args, .. }) | Some(Command::Sweep { ramp: args }) => {
            let mode = if matches!(cli.command, Some(Command::Node { .. })) {
                "node"
            } else {
                "sweep"
            };
            let result = ramp::ramp(driver.as_mut(), &base, args, capacity)?;
            (mode, result.detail, Some(result.ramp))
        }
        Some(Command::Run) | None => ("run", run::run_load(driver.as_mut(), &base)?, None),
    };
    let report = build_report(mode, driver.as_ref(), &detail, ramp, capacity);
    if let Some(dir) = &cli.output.out {
        output::write_all(dir, &report, &detail)?;
    }
    if cli.output.json {
        let text = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
        println!("{text}");
    } else {
        print!("{}", report::render_text(&report));
        if let Some(dir) = &cli.output.out {
            println!("  files written to {}", dir.display());
        }
    }
    Ok(())
}

fn status(cli: &Cli, message: &str) {
    if !cli.load.quiet {
        eprintln!("loadgen: {message}");
    }
}

fn build_report(
    mode: &str,
    driver: &dyn Driver,
    detail: &RunOutcome,
    ramp: Option<report::Ramp>,
    capacity: f64,
) -> Report {
    let result = report::run_report(detail, capacity);
    let mut warnings = report::warnings(
        &result,
        detail.params.late_bound_ms,
        detail.tracker.series_overflow,
    );
    if let Some(ramp) = &ramp {
        if ramp.highest_sustained_rate_per_s.is_none() {
            warnings.push(format!(
                "no step was sustained; try a lower --rate-start ({})",
                ramp.stop_reason
            ));
        }
    }
    Report {
        schema_version: report::SCHEMA_VERSION,
        loadgen_version: env!("CARGO_PKG_VERSION"),
        mode: mode.to_string(),
        driver: driver.kind().to_string(),
        nodes: driver.nodes().to_vec(),
        config: report::config(detail),
        result,
        ramp,
        warnings,
    }
}

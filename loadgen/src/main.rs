//! `loadgen`: drives a Lethe network with an open-loop packet schedule and reports delivery,
//! loss and coordinated-omission-corrected latency. See loadgen/README.md.

mod admission;
mod breakdown;
mod cli;
mod client_stats;
mod credentials;
mod driver;
mod env;
mod gateway;
mod generator;
mod limits;
mod live;
mod merge;
mod output;
mod ramp;
mod receiver;
mod refresh;
mod report;
mod run;
mod schedule;
mod scrape;
mod sender;
mod stamp;
mod testnet;
mod trace;
mod tracker;
mod verdict;
mod windows;

use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Command, Network, RampArgs};
use credentials::IssuerConfig;
use driver::{Driver, EmbeddedMixnet, EmbeddedOptions, SingleNode};
use gateway::{DirectoryInfo, GatewayNetwork};
use report::Report;
use run::{LoadParams, RunOutcome};
use testnet::{Testnet, TestnetOptions};

/// Exit codes: 0 the run passed (ramps: they completed), 1 the run's verdict failed (the report
/// is printed first), 2 an error stopped loadgen (no report), among them a `--target` gateway
/// that requires bandwidth credentials when none were given (stopped before the run).
fn main() -> ExitCode {
    let cli = Cli::parse();
    // The nodes library's warnings (issuers asked again, a credential that cannot be stored)
    // reach stderr; its info lines only with RUST_LOG.
    let text = lethe_nodes::logging::LogFormat::Text;
    if let Err(e) = lethe_nodes::logging::init_with_default(text, "warn") {
        eprintln!("loadgen: {e}");
        return ExitCode::from(2);
    }
    match real_main(&cli) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("loadgen: {e}");
            ExitCode::from(2)
        }
    }
}

/// `Ok(false)`: the run's verdict failed.
fn real_main(cli: &Cli) -> Result<bool, String> {
    // The environment is read first: `started_at` is when loadgen was started.
    let environment = env::collect();
    if let Some(Command::Merge { dirs }) = &cli.command {
        merge::merge_command(dirs, &cli.output, environment)?;
        return Ok(true);
    }
    if let Some(at) = cli.start_at {
        // Refused before any set-up: a synchronised start that has passed cannot be met.
        env::check_start_at(at, std::time::SystemTime::now())?;
    }
    cli.load.validate()?;
    cli.thresholds.validate()?;
    if cli.thresholds.any()
        && matches!(
            cli.command,
            Some(Command::Node { .. } | Command::Sweep { .. })
        )
    {
        return Err(
            "--max-loss, --max-p99-ms and --max-rss-growth-pct judge a run; ramps have their \
             own bounds (--loss-max, --p99-bound-ms)"
                .into(),
        );
    }
    run::install_interrupt()?;
    let base = LoadParams {
        rate_per_s: cli.load.rate,
        duration_s: cli.load.duration,
        clients: cli.load.clients,
        size: cli.load.packet_size.size(),
        delay_ms_mean: cli.load.delay_ms_mean(),
        late_bound_ms: cli.load.late_bound_ms,
        drain_margin_s: cli.load.drain_margin_s,
        lookahead_s: cli.load.lookahead_s,
        window_s: cli.load.window,
        run_id: 1,
        progress: !cli.load.quiet,
        live: live::enabled(cli.load.quiet, cli.load.no_live, cli.output.json),
        label: "loadgen".into(),
        start_at: cli.start_at,
        // A single run writes loadgen's part; ramps leave it to the nodes.
        trace: match (&cli.command, &cli.load.trace) {
            (Some(Command::Run) | None, Some(dir)) => {
                Some(std::sync::Arc::new(trace::PacketTrace::new(dir)))
            }
            _ => None,
        },
    };
    let say = |message: &str| status(cli, message);
    let gateway_clients = !matches!(
        cli.command,
        Some(Command::Node { .. } | Command::Merge { .. })
    ) && (cli.target.is_some() || cli.network == Network::Testnet);
    if gateway_clients && base.size == lethe_crypto::framing::PacketSize::Ack {
        return Err(
            "--packet-size ack: gateway clients send forward packets, which need room \
                    for the SURB-ACK prefix; use regular or an extended size (ack-size packets \
                    work with --network mixnet and `node`)"
                .into(),
        );
    }
    let mut directory: Option<DirectoryInfo> = None;
    let mut driver: Box<dyn Driver> = match (&cli.command, &cli.target) {
        (Some(Command::Merge { .. }), _) => return Err("merge starts no network".into()),
        (Some(Command::Node { .. }), Some(_)) => {
            return Err("`node` drives one mixnode directly: it takes no --target".into())
        }
        (
            Some(Command::Node {
                addr,
                node_key,
                node_metrics,
                ..
            }),
            None,
        ) => {
            let key = driver::parse_key_hex(node_key).map_err(|e| format!("--node-key: {e}"))?;
            Box::new(SingleNode::new(*addr, key, *node_metrics)?)
        }
        (_, Some(url)) => {
            let keys = cli
                .directory_key
                .iter()
                .map(|hex| driver::parse_key_hex(hex).map_err(|e| format!("--directory-key: {e}")))
                .collect::<Result<Vec<_>, _>>()?;
            say(&format!("reading the topology from {url}"));
            let mut network = GatewayNetwork::start(
                "target",
                url,
                keys,
                base.size,
                base.clients,
                None,
                cli.load.quiet,
            )?;
            match target_issuers(cli) {
                Some(issuers) => obtain_credentials(&mut network, &issuers, cli, &base, &say)?,
                None if !cli.without_credentials => {
                    // Before the run: without credentials such a gateway refuses every packet.
                    let requiring = network.gateways_requiring_credentials();
                    if !requiring.is_empty() {
                        let args: Vec<String> = std::env::args().collect();
                        return Err(admission::credentials_required_error(
                            &requiring, url, &args,
                        ));
                    }
                }
                None => {}
            }
            network.start_refresh(cli.load.topology_refresh_s);
            network.warm_up(&say)?;
            directory = Some(network.directory.clone());
            Box::new(network)
        }
        (_, None) if cli.network == Network::Mixnet => {
            let lethe = driver::find_lethe(cli.lethe.as_deref())?;
            let nodes_per_layer = cli.load.nodes_per_layer.unwrap_or(1);
            say(&format!(
                "starting the embedded mixnet ({} mixnodes + receiver)",
                3 * nodes_per_layer
            ));
            Box::new(EmbeddedMixnet::start(&EmbeddedOptions {
                lethe,
                layers: 3,
                nodes_per_layer,
                extra_args: Vec::new(),
            })?)
        }
        (_, None) => {
            let lethe = driver::find_lethe(cli.lethe.as_deref())?;
            let options = TestnetOptions {
                lethe,
                mixnodes_per_layer: cli.load.nodes_per_layer.unwrap_or(2),
                gateways: cli.load.gateways,
                trace: cli.load.trace.clone(),
                logs_to: cli.output.out.clone(),
            };
            say(&format!(
                "starting a local testnet (lethe testnet up: directory, {} mixnodes, {} gateways)",
                3 * options.mixnodes_per_layer,
                options.gateways
            ));
            let testnet = Testnet::up(&options)?;
            if run::interrupted() {
                return Err("interrupted while the testnet started (it has been stopped)".into());
            }
            let url = testnet.directory_url.clone();
            let keys = testnet
                .directory_key
                .split(',')
                .map(|hex| {
                    driver::parse_key_hex(hex).map_err(|e| format!("testnet directory key: {e}"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            say(&format!(
                "testnet up (directory {url}, state in {}); connecting gateway clients",
                testnet.dir().display()
            ));
            let issuers = testnet.issuers.clone();
            let mut network = GatewayNetwork::start(
                "testnet",
                &url,
                keys,
                base.size,
                base.clients,
                Some(testnet),
                cli.load.quiet,
            )?;
            if let Some(issuers) = &issuers {
                obtain_credentials(&mut network, issuers, cli, &base, &say)?;
            }
            network.start_refresh(cli.load.topology_refresh_s);
            network.warm_up(&say)?;
            directory = Some(network.directory.clone());
            Box::new(network)
        }
    };
    let plan = run::plan(driver.as_ref(), &base)?;
    let capacity = generator::calibrate(&plan, limits::CALIBRATE_MS)?;
    status(
        cli,
        &format!("generator capacity {capacity:.0} packets/s per thread; running"),
    );
    if let Some(at) = cli.start_at {
        status(
            cli,
            &format!(
                "the run starts at {} (--start-at; in {:.1} s)",
                env::rfc3339(at),
                at.duration_since(std::time::SystemTime::now())
                    .map_or(0.0, |d| d.as_secs_f64())
            ),
        );
    }
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
        Some(Command::Run) | None => {
            let outcome = run::run_load(driver.as_mut(), &base)?;
            if let Some(written) = &outcome.trace {
                status(
                    cli,
                    &format!(
                        "loadgen's trace part: {} ({} rows, {} packets not traced)",
                        written.path.display(),
                        written.rows,
                        written.dropped
                    ),
                );
            }
            ("run", outcome, None)
        }
        Some(Command::Merge { .. }) => return Err("merge runs nothing".into()),
    };
    let mut report = build_report(mode, driver.as_ref(), &detail, ramp, capacity, environment);
    report.directory = directory;
    if mode == "run" {
        let verdict = verdict::judge(
            &report.result,
            verdict::Thresholds::from_args(&cli.thresholds),
        );
        if cli.output.json {
            // Said on stderr too: stdout holds only the JSON document.
            for failure in &verdict.failures {
                eprintln!("loadgen: FAIL: {failure}");
            }
        }
        report.verdict = Some(verdict);
    }
    let passed = report.verdict.as_ref().is_none_or(|v| v.passed);
    // Stop the network (testnet down) before printing: the report is the last word.
    drop(driver);
    if let Some(dir) = &cli.output.out {
        output::write_all(dir, &report, &detail)?;
    }
    if let Some(late_ms) = report
        .result
        .start
        .as_ref()
        .and_then(|s| s.late_ms)
        .filter(|late_ms| *late_ms > START_LATE_WARN_MS)
    {
        // Also on stderr: a merge of runs that did not start together is not one load.
        eprintln!(
            "loadgen: the run started {late_ms:.0} ms after --start-at (the set-up took longer)"
        );
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
    Ok(passed)
}

/// --issuers, --threshold and --verification-key (clap makes them come together).
fn target_issuers(cli: &Cli) -> Option<IssuerConfig> {
    Some(IssuerConfig {
        issuers: cli.issuers.clone()?,
        threshold: cli.threshold?,
        verification_key: cli.verification_key.clone()?,
    })
}

/// Every sender's credentials, covering its share of the packets this invocation may send.
fn obtain_credentials(
    network: &mut GatewayNetwork,
    issuers: &IssuerConfig,
    cli: &Cli,
    base: &LoadParams,
    say: &dyn Fn(&str),
) -> Result<(), String> {
    let budget_bytes =
        credentials::budget_bytes(packets_planned(cli), base.clients, base.size.packet_len());
    say(&format!(
        "obtaining bandwidth credentials for {} senders ({} of {} issuers)",
        network.senders(),
        issuers.threshold,
        issuers.issuers.len()
    ));
    let info = network.add_credentials(issuers, budget_bytes)?;
    say(&format!(
        "{} credentials obtained in {:.0} ms ({} bytes each; each sender needs about {} bytes)",
        info.obtained, info.obtain_ms, info.bandwidth_bytes_each, budget_bytes
    ));
    Ok(())
}

/// The most packets all senders together send: the run, or every step a ramp may take.
fn packets_planned(cli: &Cli) -> f64 {
    match &cli.command {
        Some(Command::Sweep { ramp }) | Some(Command::Node { ramp, .. }) => ramp_packets_max(ramp),
        Some(Command::Run) | None => cli.load.rate * cli.load.duration,
        Some(Command::Merge { .. }) => 0.0,
    }
}

/// Rising steps at rate_start x factor^k, then the refining steps (each below the top rate).
fn ramp_packets_max(ramp: &RampArgs) -> f64 {
    let rates: Vec<f64> = (0..ramp.steps_max)
        .map(|k| ramp.rate_start * ramp.rate_factor.powi(k as i32))
        .collect();
    let top = rates.iter().copied().fold(0.0, f64::max);
    let rising: f64 = rates.iter().sum();
    (rising + f64::from(ramp.refine_steps) * top)
        * ramp.step_duration
        * f64::from(ramp.trials.max(1))
}

/// A start later than this after `--start-at` is warned about (the generators were apart).
const START_LATE_WARN_MS: f64 = 100.0;

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
    mut environment: env::Environment,
) -> Report {
    let result = report::run_report(detail, capacity);
    // The nodes' SIMD paths, from their last scrape; "unknown" where they do not say.
    let mut unpublished = 0;
    environment.nodes_simd = detail
        .nodes
        .iter()
        .map(|(info, delta)| {
            let simd = delta.as_ref().ok().and_then(|d| d.simd.clone());
            let simd = simd.unwrap_or_else(|| {
                unpublished += 1;
                env::SimdPaths {
                    x25519: env::UNKNOWN.into(),
                    symmetric: env::UNKNOWN.into(),
                }
            });
            env::NodeSimd {
                name: info.name.clone(),
                x25519: simd.x25519,
                symmetric: simd.symmetric,
            }
        })
        .collect();
    if unpublished > 0 {
        environment.nodes_simd_note = Some(format!(
            "{unpublished} node(s) do not publish their SIMD path (no {} series in their \
             metrics, or unreadable metrics): unknown",
            scrape::SIMD_INFO_SERIES
        ));
    }
    let mut warnings = report::warnings(
        &result,
        detail.params.late_bound_ms,
        (
            detail.tracker.series_overflow,
            detail.tracker.series_unsorted,
        ),
    );
    if let Some(late_ms) = result
        .start
        .as_ref()
        .and_then(|s| s.late_ms)
        .filter(|late_ms| *late_ms > START_LATE_WARN_MS)
    {
        warnings.push(format!(
            "the run started {late_ms:.0} ms after --start-at (the set-up took longer): \
             generators started together with it were not together"
        ));
    }
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
        environment,
        mode: mode.to_string(),
        driver: driver.kind().to_string(),
        nodes: driver.nodes().to_vec(),
        directory: None,
        credentials: driver.credentials(),
        config: report::config(detail),
        result,
        ramp,
        warnings,
        verdict: None,
    }
}

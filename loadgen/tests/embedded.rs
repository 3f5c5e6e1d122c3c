//! Real processes on loopback: bare `loadgen` starts a testnet (`lethe testnet up`) and drives
//! it through gateway clients; `--network mixnet` starts 3 `lethe mixnode` processes and its
//! own receiver; `--target` drives a testnet a test started. Both testnets require bandwidth
//! credentials at their gateways. Outcomes are checked, never speed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Command;

use common::{
    assert_valid, check_plot, check_success, lethe, loadgen, testnet_processes, TestnetGuard,
    LOADGEN,
};

#[test]
fn default_run_drives_a_testnet_through_gateway_clients_and_stops_it() {
    // `--trace` refuses a directory that holds another run's parts.
    let trace_dir = std::env::temp_dir().join(format!("loadgen-test-trace-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&trace_dir);
    let trace_arg = trace_dir.to_str().unwrap();
    let output = loadgen(&[
        "--json",
        "--duration",
        "2",
        "--rate",
        "100",
        "--trace",
        trace_arg,
    ]);
    check_success(&output);
    let stdout = String::from_utf8(output.stdout).unwrap();
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_valid(&report);
    assert_eq!(report["schema_version"], 1);
    assert_eq!(report["mode"], "run");
    assert_eq!(report["driver"], "testnet");
    assert_eq!(report["directory"]["key_pinned"], true);
    let result = &report["result"];
    assert_eq!(result["offered"]["packets"], 200);
    assert!(
        result["delivered"]["packets"].as_u64().unwrap() > 0,
        "{result:#}"
    );
    // 6 mixnodes and 2 gateways, every one scraped.
    let nodes = result["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 8);
    for node in nodes {
        assert!(node["error"].is_null(), "{node:#}");
    }
    let clients = &result["gateway_clients"];
    assert_eq!(clients["senders"], 2);
    assert_eq!(clients["receivers"], 2);
    assert_eq!(clients["forwards"], result["sent"]["packets"]);
    // The testnet's gateways require credentials: each of the 2 senders obtained one from the
    // testnet's issuers and spent it (unspent, every forward would be refused NO_BANDWIDTH).
    let credentials = &report["credentials"];
    assert_eq!(credentials["obtained"], 2, "{credentials:#}");
    assert_eq!(credentials["spent"], 2, "{credentials:#}");
    assert_eq!(credentials["refused"], 0, "{credentials:#}");
    assert_eq!(credentials["threshold"], 2);
    assert_eq!(credentials["issuers"], 3);
    assert_eq!(
        clients["gateway_errors"],
        serde_json::json!({}),
        "{clients:#}"
    );
    // Every delivery was confirmed (the gateways' mailboxes do not fill up).
    assert_eq!(clients["confirmed"], clients["deliveries"], "{clients:#}");
    // Passed by the default rule; every testnet process and loadgen watched, all alive.
    assert_eq!(report["verdict"]["passed"], true, "{:#}", report["verdict"]);
    let processes = result["processes"].as_array().unwrap();
    let names: Vec<&str> = processes
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    for name in [
        "authority1",
        "authority4",
        "mix1",
        "mix6",
        "gateway1",
        "gateway2",
        "loadgen",
    ] {
        assert!(names.contains(&name), "{name} not watched: {names:?}");
    }
    for process in processes {
        assert_eq!(process["running_at_end"], true, "{process:#}");
        assert!(process["rss_kib_end"].as_u64().unwrap() > 0, "{process:#}");
        assert_eq!(process["panics_logged"], 0, "{process:#}");
    }
    // The routes came from the directory; every packet is in a generation.
    let topology = &result["topology"];
    assert_eq!(report["config"]["topology_refresh_s"], 10.0);
    let built: u64 = topology["generations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["packets"].as_u64().unwrap())
        .sum();
    assert_eq!(built, 200, "{topology:#}");
    // The testnet was stopped: no node of it is left.
    let stderr = String::from_utf8_lossy(&output.stderr);
    let dir = stderr
        .lines()
        .find_map(|l| l.split("state in ").nth(1))
        .and_then(|rest| rest.split(')').next())
        .unwrap_or_else(|| panic!("no state dir in stderr:\n{stderr}"));
    assert!(
        testnet_processes(dir).is_empty(),
        "testnet {dir} still running"
    );
    assert!(!std::path::Path::new(dir).exists(), "{dir} not removed");
    check_trace(
        &trace_dir,
        result["sent"]["packets"].as_u64().unwrap(),
        result["delivered"]["packets"].as_u64().unwrap(),
    );
    let _ = std::fs::remove_dir_all(&trace_dir);
}

/// `--trace`: loadgen's part links to the nodes' parts. Each of its sends arrives at the entry
/// gateway and a first mix under its id; each of its deliveries carries the id under which the
/// last mix sent the packet and the exit gateway delivered it to the same recipient; the
/// metrics score every delivered message (end-to-end latency, sender entropy, the labelled
/// pair of senders 0 and 1, the flow matcher's pairs).
fn check_trace(dir: &std::path::Path, sent: u64, delivered: u64) {
    use lethe_sim::trace::{Class, Kind, Role, TraceReader};
    use std::collections::{HashMap, HashSet};
    let parts = lethe_sim::merge::find_parts(dir).unwrap();
    // loadgen, 2 gateways, 6 mixnodes.
    assert_eq!(parts.len(), 9, "{parts:?}");
    let path = lethe_sim::merge::merge_parts(dir).unwrap();
    let mut reader = TraceReader::open(&path).unwrap();
    let meta = reader.meta().clone();
    let role = |node: u32| meta.node(node).unwrap().role;
    // Packet ids that arrived at a gateway, and at a mix.
    let mut arrivals: [HashSet<u64>; 2] = [HashSet::new(), HashSet::new()];
    let mut mix_departures: HashSet<u64> = HashSet::new();
    let mut exits: HashMap<u64, Option<u32>> = HashMap::new();
    let (mut sends, mut deliveries) = (Vec::new(), Vec::new());
    while let Some(event) = reader.next_event().unwrap() {
        match (event.kind, role(event.node), event.class) {
            (Kind::Send, Role::Client, Class::Real) => sends.push(event),
            (Kind::Deliver, Role::Client, Class::Real) => deliveries.push(event),
            (Kind::Deliver, Role::Gateway, _) => {
                exits.insert(event.packet_id, event.destination);
            }
            (Kind::Arrive, Role::Gateway, _) => {
                arrivals[0].insert(event.packet_id);
            }
            (Kind::Arrive, Role::Mix, _) => {
                arrivals[1].insert(event.packet_id);
            }
            (Kind::Depart, Role::Mix, _) => {
                mix_departures.insert(event.packet_id);
            }
            _ => {}
        }
    }
    assert_eq!(sends.len() as u64, sent);
    assert_eq!(deliveries.len() as u64, delivered);
    // Not vacuous: the loops below link every one of them, or fail.
    assert!(!sends.is_empty() && !deliveries.is_empty());
    for send in &sends {
        assert_eq!(role(send.next_hop.unwrap()), Role::Gateway);
        assert!(arrivals[0].contains(&send.packet_id), "{send:?}");
        assert!(arrivals[1].contains(&send.packet_id), "{send:?}");
    }
    for delivery in &deliveries {
        assert!(mix_departures.contains(&delivery.packet_id), "{delivery:?}");
        assert_eq!(
            exits.get(&delivery.packet_id),
            Some(&Some(delivery.node)),
            "the exit gateway delivered it to the same recipient: {delivery:?}"
        );
    }
    let metrics =
        lethe_sim::metrics::compute(&path, &lethe_sim::metrics::MetricsOptions::default()).unwrap();
    assert_eq!(metrics.latency.end_to_end_ms.count, delivered);
    assert_eq!(metrics.sender.entropy_bits.count, delivered);
    assert_eq!(metrics.sender.senders_count, 4, "2 senders and 2 receivers");
    assert_eq!(metrics.sender.labelled_messages_count, delivered);
    assert!(metrics.flow.pairs_count > 0);
}

#[test]
fn target_drives_an_existing_network_with_or_without_a_pinned_key() {
    let net = TestnetGuard::up("target");
    let (report, stderr, code) = net.target_report("50", true);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(report["verdict"]["passed"], true, "{:#}", report["verdict"]);
    assert_eq!(report["driver"], "target");
    assert_eq!(report["directory"]["key"], net.key.as_str());
    assert_eq!(report["directory"]["key_pinned"], true);
    assert!(report["result"]["delivered"]["packets"].as_u64().unwrap() > 0);
    // The gateway credited the senders' credentials and refused nothing.
    let clients = &report["result"]["gateway_clients"];
    assert_eq!(
        clients["gateway_errors"],
        serde_json::json!({}),
        "{clients:#}"
    );
    assert_eq!(
        report["credentials"]["spent"], 2,
        "{:#}",
        report["credentials"]
    );
    assert_eq!(
        net.gateway_metric("lethe_gateway_credentials_accepted_total"),
        2
    );
    assert_eq!(
        net.gateway_metric("lethe_gateway_forwards_refused_bandwidth_total"),
        0
    );

    // Trust on first use, said on stderr.
    let mut args = vec![
        "--target",
        &net.url,
        "--duration",
        "1",
        "--rate",
        "20",
        "--quiet",
    ];
    args.extend(net.credential_args());
    let output = loadgen(&args);
    check_success(&output);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("trust on first use"), "{stderr}");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("(trust on first use)"), "{text}");

    // A wrong key is refused.
    let wrong = "11".repeat(32);
    let output = loadgen(&[
        "--target",
        &net.url,
        "--directory-key",
        &wrong,
        "--duration",
        "1",
    ]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("topology refused"));
    // The network is still up (loadgen stops only what it started).
    assert!(!testnet_processes(net.dir.to_str().unwrap()).is_empty());
}

#[test]
fn without_credentials_a_gateway_that_requires_them_stops_loadgen_before_the_run() {
    let net = TestnetGuard::up("nocred");
    // As a user would write it: no --issuers. loadgen asks the gateway first and stops (exit
    // 2, no report) with the command to run instead; with the testnet's state directory
    // known (LETHE_TESTNET_DIR), the flags carry its real values.
    let output = Command::new(LOADGEN)
        .args(["--target", &net.url, "--directory-key", &net.key])
        .args(["--duration", "1", "--rate", "20", "--quiet"])
        .env("LETHE_BIN", lethe())
        .env("LETHE_TESTNET_DIR", &net.dir)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(output.stdout.is_empty(), "no report");
    assert!(
        stderr.contains("require bandwidth credentials and none were given"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("--target {} --directory-key {}", net.url, net.key)),
        "the user's command: {stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "--issuers {} --threshold {}",
            net.issuers, net.threshold
        )),
        "the testnet's issuers: {stderr}"
    );
    assert!(stderr.contains("--without-credentials"), "{stderr}");
    // Nothing was sent: the gateway refused no forward.
    assert_eq!(
        net.gateway_metric("lethe_gateway_forwards_refused_bandwidth_total"),
        0
    );

    // --without-credentials runs anyway, to measure the refusals.
    let (report, stderr, code) = net.target_report("20", false);
    // Nothing delivered fails the run even without thresholds: exit 1, after the report, and
    // a line on stderr naming the rule.
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(report["verdict"]["passed"], false);
    assert_eq!(
        report["verdict"]["thresholds"]["max_loss_pct_default"],
        true
    );
    assert!(
        stderr.contains("FAIL: loss: nothing was delivered"),
        "{stderr}"
    );
    assert!(
        report["credentials"].is_null(),
        "no --issuers: none obtained"
    );
    assert_eq!(report["result"]["delivered"]["packets"], 0);
    let clients = &report["result"]["gateway_clients"];
    let refused = clients["gateway_errors"]["no_bandwidth"]
        .as_u64()
        .unwrap_or(0);
    assert!(refused > 0, "{clients:#}");
    let warnings = report["warnings"].as_array().unwrap();
    assert!(
        warnings
            .iter()
            .any(|w| w.as_str().unwrap().contains("NO_BANDWIDTH")),
        "{warnings:#?}"
    );
    assert!(net.gateway_metric("lethe_gateway_forwards_refused_bandwidth_total") > 0);
    // Said while it runs, not only in the report.
    assert!(stderr.contains("refuse loadgen's packets"), "{stderr}");
}

#[test]
fn mixnet_json_report_validates_against_the_schema_and_loses_nothing_at_a_low_rate() {
    let output = loadgen(&[
        "--network",
        "mixnet",
        "--json",
        "--duration",
        "2",
        "--rate",
        "200",
        "--drain-margin-s",
        "5",
    ]);
    check_success(&output);
    let stdout = String::from_utf8(output.stdout).unwrap();
    // Exactly one JSON document and nothing else on stdout.
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_valid(&report);
    assert_eq!(report["schema_version"], 1);
    assert_eq!(report["mode"], "run");
    assert_eq!(report["driver"], "embedded-mixnet");
    assert!(report.get("directory").is_none());
    let result = &report["result"];
    assert!(result.get("gateway_clients").is_none());
    assert_eq!(result["offered"]["packets"], 400);
    assert_eq!(result["sent"]["packets"], 400);
    assert!(result["delivered"]["packets"].as_u64().unwrap() > 0);
    assert_eq!(result["delivered"]["lost"], 0, "{result:#}");
    assert_eq!(result["delivered"]["duplicates"], 0);
    assert_eq!(result["dropped_by_nodes"]["total"], 0);
    assert_eq!(result["nodes"].as_array().unwrap().len(), 3);
    for node in result["nodes"].as_array().unwrap() {
        assert!(node["error"].is_null(), "{node:#}");
        assert_eq!(node["received"], 400);
    }
    assert!(result["latency_ms"]["p50"].as_f64().unwrap() > 0.0);
    assert!(result["generator"]["capacity_per_s"].as_f64().unwrap() > 0.0);
    // 400 values: too few for p99.9 and p99.99, which are marked rather than passed off.
    assert_eq!(
        result["latency_ms"]["n_too_small"],
        serde_json::json!(["p99", "p999", "p9999"])
    );
    // Only loadgen's packets crossed the embedded mixnet: every layer received exactly them.
    let traffic = result["node_traffic"].as_array().unwrap();
    assert_eq!(traffic.len(), 3, "{traffic:#?}");
    for layer in traffic {
        assert_eq!(layer["received"], 400, "{layer:#}");
        assert_eq!(layer["other_at_least"], 0, "{layer:#}");
    }
    // Where the time goes: the sender and every layer measured, and the means add up.
    let breakdown = &result["breakdown"];
    let stages: Vec<&str> = breakdown["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["stage"].as_str().unwrap())
        .collect();
    assert_eq!(
        stages,
        ["sender", "mix layer 1", "mix layer 2", "mix layer 3"],
        "{breakdown:#}"
    );
    let mut sum = 0.0;
    for stage in breakdown["stages"].as_array().unwrap() {
        assert_eq!(stage["measured"], true, "{stage:#}");
        sum += stage["mean_ms"].as_f64().unwrap();
    }
    let e2e = breakdown["end_to_end_mean_ms"].as_f64().unwrap();
    let rest = breakdown["unattributed_mean_ms"].as_f64().unwrap();
    assert!((sum + rest - e2e).abs() < 1e-6, "{breakdown:#}");
    assert!(
        (e2e - result["latency_ms"]["mean"].as_f64().unwrap()).abs() < 0.01,
        "{breakdown:#}"
    );
    // loadgen's own final hop is not timed apart: said, not hidden.
    assert!(
        breakdown["not_measured"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n.as_str().unwrap().starts_with("final hop")),
        "{breakdown:#}"
    );
    // Stage quantiles are intervals whose bounds never cross.
    for node in result["nodes"].as_array().unwrap() {
        for (name, stage) in node["stages"].as_object().unwrap() {
            for q in ["p50", "p99"] {
                if let (Some(lower), Some(upper)) = (
                    stage[format!("{q}_ms_lower")].as_f64(),
                    stage[format!("{q}_ms_upper")].as_f64(),
                ) {
                    assert!(lower <= upper, "{name} {q}: {stage:#}");
                }
            }
        }
    }
    // Where and with what it ran.
    let env = &report["environment"];
    assert!(!env["host"].as_str().unwrap().is_empty());
    assert!(env["cpus"].as_u64().unwrap() >= 1);
    assert_eq!(env["command_line"][1], "--network");
    assert_eq!(env["nodes_simd"].as_array().unwrap().len(), 3);
}

#[test]
fn out_dir_gets_every_file_and_the_plots_are_pngs() {
    let dir = std::env::temp_dir().join(format!("loadgen-test-out-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let output = loadgen(&[
        "--duration",
        "1",
        "--rate",
        "100",
        "--mu",
        "2",
        "--out",
        dir.to_str().unwrap(),
    ]);
    check_success(&output);
    let text = String::from_utf8(output.stdout.clone()).unwrap();
    assert!(text.contains("latency ms"), "{text}");
    for name in [
        "summary.json",
        "timeseries.csv",
        "windows.csv",
        "latency.hgrm",
        "latency.hdr.b64",
        "lateness.hdr.b64",
        "latency_over_time.png",
        "latency_cdf.png",
    ] {
        let path = dir.join(name);
        let meta = std::fs::metadata(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(meta.len() > 0, "{name} is empty");
    }
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap();
    assert_valid(&summary);
    let csv = std::fs::read_to_string(dir.join("timeseries.csv")).unwrap();
    assert!(csv.starts_with("second,offered,sent,delivered,p50_ms,p99_ms\n"));
    assert!(csv.lines().count() >= 2);
    let windows = std::fs::read_to_string(dir.join("windows.csv")).unwrap();
    assert!(
        windows.starts_with(
            "index,start_s,end_s,offered,sent,delivered,lost,loss_ratio,p50_ms,p99_ms,rss_kib_"
        ),
        "{windows}"
    );
    assert_eq!(windows.lines().count(), 2, "one window: {windows}");
    for name in ["latency_over_time.png", "latency_cdf.png"] {
        check_plot(&dir.join(name));
    }
    // Where the time goes, in the text report: the stages and the remainder.
    assert!(text.contains("where the time goes"), "{text}");
    assert!(text.contains("unattributed / network"), "{text}");
    assert!(text.contains("exit gateway"), "{text}");
    // Run piped and without --quiet: no live view (it is for a terminal only).
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("in flight"), "{stderr}");
    assert!(
        !stderr.contains('\r') && !stderr.contains('\u{1b}'),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn clear_errors_for_a_missing_lethe_and_an_unreachable_directory() {
    let output = Command::new(LOADGEN)
        .args(["--lethe", "/nonexistent/lethe", "--duration", "1"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("cargo build --release -p lethe-nodes --bin lethe"),
        "{stderr}"
    );

    let output = Command::new(LOADGEN)
        .args(["--target", "http://127.0.0.1:1", "--quiet"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("http://127.0.0.1:1"), "{stderr}");
    assert!(output.stdout.is_empty());
    let _ = lethe();
}

//! The ramp modes on loopback, with tiny steps: the JSON is valid and the accounting adds up.
//! Never asserts a rate was sustained (that would be a speed assertion).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{assert_valid, check_plot, check_success, loadgen, Mixnode};

fn check_ramp(report: &serde_json::Value, steps_max: usize) {
    assert_valid(report);
    let ramp = &report["ramp"];
    let steps = ramp["steps"].as_array().unwrap();
    assert!(!steps.is_empty() && steps.len() <= steps_max, "{ramp:#}");
    assert!(!ramp["stop_reason"].as_str().unwrap().is_empty());
    if let Some(highest) = ramp["highest_sustained_rate_per_s"].as_f64() {
        assert!(steps
            .iter()
            .any(|s| s["sustained"] == true && s["rate_per_s"] == highest));
    }
    let result = &report["result"];
    let sent = result["sent"]["packets"].as_u64().unwrap();
    let delivered = result["delivered"]["packets"].as_u64().unwrap();
    let lost = result["delivered"]["lost"].as_u64().unwrap();
    assert_eq!(delivered + lost, sent, "{result:#}");
}

#[test]
fn sweep_reports_its_steps_and_plots_the_curves() {
    let dir = std::env::temp_dir().join(format!("loadgen-test-sweep-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let output = loadgen(&[
        "sweep",
        "--json",
        "--quiet",
        "--rate-start",
        "100",
        "--steps-max",
        "2",
        "--refine-steps",
        "0",
        "--step-duration",
        "1",
        "--trials",
        "2",
        "--out",
        dir.to_str().unwrap(),
    ]);
    check_success(&output);
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["mode"], "sweep");
    assert_eq!(report["driver"], "testnet");
    check_ramp(&report, 2);
    // Every step keeps its trials' figures: the plots' ranges.
    for step in report["ramp"]["steps"].as_array().unwrap() {
        assert_eq!(
            step["trial_p50_ms"].as_array().unwrap().len(),
            2,
            "{step:#}"
        );
        assert_eq!(
            step["trial_delivered_rates_per_s"]
                .as_array()
                .unwrap()
                .len(),
            2,
            "{step:#}"
        );
    }
    for name in [
        "sweep_delivered_vs_offered.png",
        "sweep_latency_vs_offered.png",
        "latency_over_time.png",
        "latency_cdf.png",
    ] {
        check_plot(&dir.join(name));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn node_mode_drives_one_mixnode_with_two_hop_routes() {
    let node = Mixnode::start("node-mode");
    let output = loadgen(&[
        "node",
        &node.listen,
        "--node-key",
        &node.key,
        "--node-metrics",
        &node.metrics,
        "--json",
        "--quiet",
        "--rate-start",
        "100",
        "--steps-max",
        "1",
        "--refine-steps",
        "0",
        "--step-duration",
        "1",
    ]);
    check_success(&output);
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["mode"], "node");
    assert_eq!(report["driver"], "single-node");
    assert_eq!(report["config"]["hops"], 2);
    check_ramp(&report, 1);
    let result = &report["result"];
    assert!(
        result["delivered"]["packets"].as_u64().unwrap() > 0,
        "{result:#}"
    );
    let node_report = &result["nodes"][0];
    assert!(node_report["error"].is_null(), "{node_report:#}");
    assert_eq!(node_report["received"], result["sent"]["packets"]);
    // The breakdown names the node under test and says loadgen's final hop is not timed.
    let breakdown = &result["breakdown"];
    let stages: Vec<&str> = breakdown["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["stage"].as_str().unwrap())
        .collect();
    assert_eq!(stages, ["sender", "mixnode under test"], "{breakdown:#}");

    let bad_key = loadgen(&["node", &node.listen, "--node-key", "abc"]);
    assert_eq!(bad_key.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad_key.stderr).contains("--node-key"));
}

//! Long-run behaviour on loopback with real processes, asserted on counts only: the report's
//! windows and per-process memory, pass/fail thresholds, a node dying mid-run, and the topology
//! refresh routing new packets around a mixnode the directory dropped.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::{assert_valid, kill_9, loadgen, Background, TestnetGuard};

fn sum(items: &[serde_json::Value], key: &str) -> u64 {
    items.iter().map(|w| w[key].as_u64().unwrap()).sum()
}

/// Pids of the `lethe mixnode` processes loadgen `loadgen_pid` started for the embedded
/// mixnet (their state is in its temp dir, `loadgen-<pid>-...`), with their command lines.
fn embedded_mixnodes(loadgen_pid: u32) -> Vec<(u32, String)> {
    let marker = format!("loadgen-{loadgen_pid}-");
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(&marker) && cmdline.contains("mixnode run") {
            found.push((pid, cmdline));
        }
    }
    found
}

#[test]
fn windows_report_counts_and_memory_and_a_breached_threshold_exits_1() {
    // 4 s in 2-s windows, with a p99 bound no network of processes can meet (1 µs).
    let output = loadgen(&[
        "--network",
        "mixnet",
        "--json",
        "--quiet",
        "--duration",
        "4s",
        "--window",
        "2s",
        "--rate",
        "100",
        "--drain-margin-s",
        "5",
        "--max-p99-ms",
        "0.001",
        "--max-rss-growth-pct",
        "1000000",
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_valid(&report);
    assert_eq!(report["config"]["window_s"], 2.0);
    let result = &report["result"];
    let windows = result["windows"].as_array().unwrap();
    assert_eq!(windows.len(), 2, "{windows:#?}");
    // The windows partition the run.
    assert_eq!(sum(windows, "offered"), 400);
    assert_eq!(
        sum(windows, "sent"),
        result["sent"]["packets"].as_u64().unwrap()
    );
    assert_eq!(
        sum(windows, "delivered"),
        result["delivered"]["packets"].as_u64().unwrap()
    );
    assert_eq!(
        sum(windows, "lost"),
        result["delivered"]["lost"].as_u64().unwrap()
    );
    for window in windows {
        assert_eq!(window["offered"], 200, "{window:#}");
        // Three mixnodes and loadgen, each sampled at the window's end.
        let rss = window["rss_kib"].as_object().unwrap();
        assert_eq!(rss.len(), 4, "{window:#}");
        for (name, kib) in rss {
            assert!(kib.as_u64().unwrap() > 0, "{name}: {window:#}");
        }
    }
    let processes = result["processes"].as_array().unwrap();
    assert_eq!(processes.len(), 4);
    for process in processes {
        assert_eq!(process["running_at_end"], true, "{process:#}");
        assert!(process["rss_kib_start"].as_u64().unwrap() > 0);
        // Two windows: growth after the first is measured.
        assert!(
            process["rss_growth_after_warmup_kib"].is_i64(),
            "{process:#}"
        );
        assert!(
            process["rss_growth_unaccounted_kib"].is_i64(),
            "{process:#}"
        );
        // A mixnode states the replay filter it holds and its most (with room for a second
        // filter); loadgen states nothing.
        if process["name"] == "loadgen" {
            assert!(process["memory_kib_max_stated"].is_null(), "{process:#}");
        } else {
            let filters = process["replay_filters_kib_end"].as_u64().unwrap();
            let max = process["memory_kib_max_stated"].as_u64().unwrap();
            assert!(filters > 0 && max >= 2 * filters, "{process:#}");
        }
    }
    // Only the p99 bound failed, and the line says so with the figure.
    let verdict = &report["verdict"];
    assert_eq!(verdict["passed"], false);
    assert_eq!(verdict["thresholds"]["max_p99_ms"], 0.001);
    let failures = verdict["failures"].as_array().unwrap();
    assert_eq!(failures.len(), 1, "{verdict:#}");
    let failure = failures[0].as_str().unwrap();
    assert!(
        failure.starts_with("p99: ") && failure.contains("--max-p99-ms 0.001"),
        "{failure}"
    );
    assert!(stderr.contains("FAIL: p99: "), "{stderr}");
}

#[test]
fn a_node_that_dies_mid_run_stops_the_run_and_fails_it() {
    let run = Background::start(&[
        "--network",
        "mixnet",
        "--json",
        "--duration",
        "60s",
        "--rate",
        "50",
    ]);
    run.wait_for("running", Duration::from_secs(60));
    let nodes = embedded_mixnodes(run.pid());
    assert_eq!(nodes.len(), 3, "{nodes:?}");
    let (pid, _) = nodes
        .iter()
        .find(|(_, cmdline)| cmdline.contains("mix-l2"))
        .unwrap();
    kill_9(*pid);
    // The run stops at the death, well before its 60 s: the guard only catches a hang.
    let (code, stdout, stderr) = run.finish(Duration::from_secs(90));
    assert_eq!(code, Some(1), "{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&stdout).unwrap();
    assert_valid(&report);
    let result = &report["result"];
    let failure = result["network_failure"].as_str().unwrap();
    assert!(failure.contains("mix-l2"), "{failure}");
    assert_eq!(result["offered"]["packets"], 3000);
    // Stopped at the death: the rest of the schedule was never sent.
    assert!(
        result["sent"]["not_sent"].as_u64().unwrap() > 0,
        "{:#}",
        result["sent"]
    );
    let dead = result["processes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "mix-l2")
        .unwrap();
    assert_eq!(dead["running_at_end"], false, "{dead:#}");
    let failures = report["verdict"]["failures"].as_array().unwrap();
    assert!(
        failures
            .iter()
            .any(|f| f.as_str().unwrap().starts_with("node failure: mix-l2")),
        "{failures:#?}"
    );
    assert!(stderr.contains("FAIL: node failure"), "{stderr}");
}

#[test]
fn after_the_directory_drops_a_killed_mixnode_new_packets_avoid_it() {
    // Two mixnodes per layer, so layer 2 keeps one when the other dies (and nothing moves).
    let net = TestnetGuard::up_with("refresh", 2);
    let mut args = vec![
        "--json",
        "--target",
        &net.url,
        "--directory-key",
        &net.key,
        "--duration",
        "45s",
        "--rate",
        "50",
        "--topology-refresh-s",
        "1",
        // The loss before the refresh is expected: the verdict is not what this test checks.
        "--max-loss",
        "100",
    ];
    args.extend(net.credential_args());
    let run = Background::start(&args);
    run.wait_for("running", Duration::from_secs(90));
    let topology = net.topology();
    let victim = topology["layers"][1][0]["mix_address"]
        .as_str()
        .unwrap()
        .to_string();
    let (pid, _) = net.node_at(&victim);
    kill_9(pid);
    let (code, stdout, stderr) = run.finish(Duration::from_secs(150));
    assert_eq!(code, Some(0), "{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&stdout).unwrap();
    assert_valid(&report);
    let result = &report["result"];
    let delivered = result["delivered"]["packets"].as_u64().unwrap();
    let topology = &result["topology"];
    // The directory dropped the node (its heartbeats stopped) and loadgen adopted the topology
    // without it: the change names it (by mix address: loadgen did not start this network).
    let removed_in = format!("{victim} (layer 2)");
    let change = topology["changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| {
            c["removed"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r == removed_in.as_str())
        })
        .unwrap_or_else(|| {
            panic!("no topology change removed {removed_in} during the run: {topology:#}")
        });
    let dropped_at = change["generation"].as_u64().unwrap();
    let generations = topology["generations"].as_array().unwrap();
    assert_eq!(sum(generations, "packets"), 2250, "{topology:#}");
    assert_eq!(sum(generations, "delivered"), delivered);
    let (before, after): (Vec<_>, Vec<_>) = generations
        .iter()
        .cloned()
        .partition(|g| g["generation"].as_u64().unwrap() < dropped_at);
    // Loss stopped growing: every packet built over a topology without the node arrived...
    assert!(sum(&after, "packets") > 0, "{topology:#}");
    assert_eq!(sum(&after, "undelivered"), 0, "{topology:#}");
    // ...while the packets routed through it before the refresh were lost.
    assert!(sum(&before, "undelivered") > 0, "{topology:#}");
    assert!(
        stderr.contains(&format!("removed {removed_in}")),
        "the change is said on stderr: {stderr}"
    );
}

#[test]
fn a_directory_that_stops_answering_is_said_once_and_the_last_topology_stays() {
    let net = TestnetGuard::up("nodirectory");
    let mut args = vec![
        "--json",
        "--target",
        &net.url,
        "--directory-key",
        &net.key,
        "--duration",
        "8s",
        "--rate",
        "50",
        "--topology-refresh-s",
        "1",
    ];
    args.extend(net.credential_args());
    let run = Background::start(&args);
    run.wait_for("running", Duration::from_secs(90));
    let authority = net.url.trim_start_matches("http://").to_string();
    let (pid, _) = net.node_at_role("authority");
    kill_9(pid);
    let (code, stdout, stderr) = run.finish(Duration::from_secs(90));
    let report: serde_json::Value = serde_json::from_slice(&stdout)
        .unwrap_or_else(|e| panic!("no report ({e}); stderr:\n{stderr}"));
    assert_valid(&report);
    assert_eq!(code, Some(0), "{stderr}");
    let topology = &report["result"]["topology"];
    assert!(
        topology["fetch_failures"].as_u64().unwrap() >= 2,
        "{topology:#}"
    );
    // Said once, however many refreshes failed.
    assert_eq!(
        stderr.matches("topology refresh failed").count(),
        1,
        "{stderr}"
    );
    assert!(
        stderr.contains(&authority),
        "the warning names the directory: {stderr}"
    );
    // The routes in use at the start stayed in use.
    assert_eq!(topology["generations"].as_array().unwrap().len(), 1);
    assert!(report["result"]["delivered"]["packets"].as_u64().unwrap() > 0);
    let warnings = report["warnings"].as_array().unwrap();
    assert!(
        warnings
            .iter()
            .any(|w| w.as_str().unwrap().contains("topology refreshes failed")),
        "{warnings:#?}"
    );
}

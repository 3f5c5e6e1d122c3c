//! Real processes on loopback: `loadgen` starts its embedded network (3 `lethe mixnode`
//! processes and its own receiver) at a low rate. Outcomes are checked, never speed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Command;

use common::{assert_valid, check_success, loadgen, LOADGEN};

#[test]
fn json_report_validates_against_the_schema_and_loses_nothing_at_a_low_rate() {
    let output = loadgen(&[
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
    let result = &report["result"];
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
}

#[test]
fn out_dir_gets_every_file_and_the_plots_are_pngs() {
    let dir = std::env::temp_dir().join(format!("loadgen-test-out-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let output = loadgen(&[
        "--quiet",
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
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(text.contains("latency ms"), "{text}");
    for name in [
        "summary.json",
        "timeseries.csv",
        "latency.hgrm",
        "latency.hdr.b64",
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
    for name in ["latency_over_time.png", "latency_cdf.png"] {
        let file = std::fs::File::open(dir.join(name)).unwrap();
        let mut reader = png::Decoder::new(std::io::BufReader::new(file))
            .read_info()
            .unwrap();
        let mut pixels = vec![0; reader.output_buffer_size()];
        let info = reader.next_frame(&mut pixels).unwrap();
        assert!(info.width >= 300 && info.height >= 200, "{name}");
        // Not blank: something other than white was drawn.
        assert!(pixels.iter().any(|&b| b != 0xff), "{name} is blank");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn clear_errors_for_a_missing_lethe_and_the_directory_target() {
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
        .args(["--target", "http://127.0.0.1:1/directory"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("not available until the directory"),
        "{stderr}"
    );
    assert!(output.stdout.is_empty());
}

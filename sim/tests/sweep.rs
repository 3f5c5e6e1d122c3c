//! Sweeps and figures: every committed sweep file plans, and a small sweep runs end to end
//! through the CLI (each point its own process), giving CSV, PNG and sidecar that name the
//! commit, the sweep's hash and the seeds.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Command;

use common::temp_dir;
use lethe_sim::sim::SimConfig;
use lethe_sim::sweep::{load_spec, points};

#[test]
fn every_committed_figure_sweep_plans() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/configs/figures");
    let mut count = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let (spec, hash) = load_spec(&path).unwrap();
        assert_eq!(hash.len(), 64);
        let planned = points(&spec).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(!planned.is_empty());
        assert_eq!(
            path.file_stem().unwrap().to_str().unwrap(),
            spec.name,
            "file named for its figure"
        );
        count += 1;
    }
    assert!(count >= 8, "{count} figures");
}

#[test]
fn a_sweep_runs_each_point_as_a_process_and_collects_csv_png_and_sidecar() {
    let dir = temp_dir("sweep");
    let base = SimConfig {
        duration_ms: 2_000,
        ..SimConfig::small(21)
    };
    let spec = serde_json::json!({
        "name": "tiny",
        "title": "tiny sweep",
        "kind": "lines",
        "base": base,
        "x": {"param": "delay_ms_mean", "values": [0.0, 50.0]},
        "series": [
            {"label": "3 layers, base", "set": {}},
            {"label": "2 layers", "set": {"layers": 2}}
        ],
        "seeds": 1,
        "warmup_s": 0.2,
        "drain_s": 0.5,
        "y": ["sender_entropy_bits_mean"]
    });
    let file = dir.join("tiny.json");
    std::fs::write(&file, serde_json::to_string_pretty(&spec).unwrap()).unwrap();
    let out = dir.join("out");
    let binary = env!("CARGO_BIN_EXE_lethe-sim");
    let run = Command::new(binary)
        .arg("sweep")
        .arg(&file)
        .arg("--out")
        .arg(&out)
        .args(["--jobs", "2"])
        .env("LETHE_COMMIT", "cafe")
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let commands = std::fs::read_to_string(out.join("commands.txt")).unwrap();
    assert_eq!(commands.lines().count(), 4);
    assert!(commands.lines().all(|l| l.contains(" run --config ")));
    let csv = std::fs::read_to_string(out.join("tiny.csv")).unwrap();
    let mut lines = csv.lines();
    let comment = lines.next().unwrap();
    assert!(
        comment.starts_with("# lethe-figure v1 name=tiny"),
        "{comment}"
    );
    assert!(comment.contains("commit=cafe"), "{comment}");
    assert!(comment.contains("seeds=21"), "{comment}");
    assert_eq!(
        lines.next().unwrap(),
        "series,delay_ms_mean,sender_entropy_bits_mean_mean,sender_entropy_bits_mean_ci95"
    );
    // The label is one quoted field, its comma kept inside.
    let rows: Vec<Vec<&str>> = lines
        .map(|l| {
            let rest = l
                .strip_prefix("\"3 layers, base\",")
                .or(l.strip_prefix("\"2 layers\","));
            rest.unwrap_or_else(|| panic!("{l}")).split(',').collect()
        })
        .collect();
    assert_eq!(rows.len(), 4);
    // No delay, nothing mixes: the sender is known (0 bits). With 50 ms per hop, it is not.
    for row in &rows {
        let entropy: f64 = row[1].parse().unwrap();
        if row[0] == "0" {
            assert!(entropy < 0.01, "{row:?}");
        } else {
            assert!(entropy > 1.0, "{row:?}");
        }
    }
    let png = std::fs::read(out.join("tiny.png")).unwrap();
    assert_eq!(&png[1..4], b"PNG");
    assert!(png.len() > 10_000, "{} bytes", png.len());
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("tiny.meta.json")).unwrap()).unwrap();
    assert_eq!(meta["commit"], "cafe");
    assert_eq!(meta["sweep_hash"].as_str().unwrap().len(), 64);
    assert_eq!(meta["points"].as_array().unwrap().len(), 4);
    assert_eq!(meta["points"][0]["seeds"], serde_json::json!([21]));
    // A second sweep finds every point done and only collects.
    let again = Command::new(binary)
        .arg("sweep")
        .arg(&file)
        .arg("--out")
        .arg(&out)
        .env("LETHE_COMMIT", "cafe")
        .output()
        .unwrap();
    assert!(again.status.success());
    assert!(!String::from_utf8_lossy(&again.stdout).contains("done\n"));
}

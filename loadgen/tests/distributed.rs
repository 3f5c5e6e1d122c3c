//! Beyond one generator: two loadgens started together with `--start-at` against one
//! `lethe testnet` on loopback, then `loadgen merge` of their `--out` directories. The merged
//! counts must be the sums of the runs' counts, and the merged percentiles those of the
//! summed histograms. No assertion on timing: a start later than requested is reported, not
//! failed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use common::{assert_valid, check_success, loadgen, TestnetGuard};
use hdrhistogram::serialization::Deserializer;
use hdrhistogram::Histogram;

fn histogram(path: &Path) -> Histogram<u64> {
    let text = std::fs::read_to_string(path).unwrap();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .unwrap();
    Deserializer::new()
        .deserialize(&mut std::io::Cursor::new(bytes))
        .unwrap()
}

fn summary(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap()
}

fn count(report: &serde_json::Value, path: &[&str]) -> u64 {
    let mut v = &report["result"];
    for key in path {
        v = &v[*key];
    }
    v.as_u64()
        .unwrap_or_else(|| panic!("result.{} is not a count: {v}", path.join(".")))
}

#[test]
fn two_generators_started_together_merge_into_one_report() {
    let net = TestnetGuard::up("merge");
    let base = std::env::temp_dir().join(format!("loadgen-merge-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let dirs: Vec<PathBuf> = (1..=2).map(|i| base.join(format!("gen{i}"))).collect();
    // Far enough ahead for both to set up (credentials, warm-up) on a busy machine; if they
    // take longer, they start at once and the report says how late: nothing here depends
    // on it.
    let start_at = SystemTime::now() + Duration::from_secs(20);
    let start_at = start_at
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .to_string();

    // A time in the past is refused before anything starts.
    let output = loadgen(&["--target", &net.url, "--start-at", "1000000000", "--quiet"]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("in the past"), "{stderr}");

    let generators: Vec<_> = dirs
        .iter()
        .map(|dir| {
            let mut args: Vec<String> = [
                "--json",
                "--quiet",
                "--target",
                net.url.as_str(),
                "--directory-key",
                net.key.as_str(),
                "--duration",
                "2",
                "--rate",
                "50",
                "--start-at",
                start_at.as_str(),
                "--out",
                dir.to_str().unwrap(),
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            args.extend(net.credential_args().iter().map(|s| s.to_string()));
            std::thread::spawn(move || {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                loadgen(&args)
            })
        })
        .collect();
    for generator in generators {
        let output = generator.join().unwrap();
        check_success(&output);
        let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_valid(&report);
        let start = &report["result"]["start"];
        assert!(start["requested"].is_string(), "{start:#}");
        assert!(start["late_ms"].as_f64().unwrap() >= 0.0, "{start:#}");
        let env = &report["environment"];
        assert!(!env["git_commit"].as_str().unwrap().is_empty());
        assert!(!env["simd"]["x25519"].as_str().unwrap().is_empty());
        // The testnet's nodes do not publish their SIMD path (yet): said, not guessed.
        assert!(!env["nodes_simd"].as_array().unwrap().is_empty());
    }

    let merged_dir = base.join("merged");
    let mut args = vec!["merge", "--json", "--out", merged_dir.to_str().unwrap()];
    args.extend(dirs.iter().map(|d| d.to_str().unwrap()));
    let output = loadgen(&args);
    check_success(&output);
    let merged: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_valid(&merged);
    assert_eq!(merged, summary(&merged_dir), "--out holds the same report");
    assert_eq!(merged["mode"], "run");
    assert_eq!(merged["merged"]["sources"].as_array().unwrap().len(), 2);

    // Counts: exactly the sums.
    let runs: Vec<serde_json::Value> = dirs.iter().map(|d| summary(d)).collect();
    let paths: [&[&str]; 12] = [
        &["offered", "packets"],
        &["sent", "packets"],
        &["sent", "late"],
        &["sent", "not_sent"],
        &["sent", "failed"],
        &["delivered", "packets"],
        &["delivered", "lost"],
        &["delivered", "duplicates"],
        &["latency_ms", "count"],
        &["sent", "lateness_ms", "count"],
        &["generator", "created"],
        &["receiver", "frames"],
    ];
    for path in paths {
        let sum: u64 = runs.iter().map(|r| count(r, path)).sum();
        assert_eq!(count(&merged, path), sum, "result.{}", path.join("."));
    }
    let delivered = count(&merged, &["delivered", "packets"]);
    assert!(delivered > 0);

    // Percentiles: those of the summed histograms (not an average of the runs' figures).
    let mut pooled = histogram(&dirs[0].join("latency.hdr.b64"));
    pooled
        .add(histogram(&dirs[1].join("latency.hdr.b64")))
        .unwrap();
    assert_eq!(pooled.len(), delivered);
    let latency = &merged["result"]["latency_ms"];
    for (field, q) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99)] {
        let expected = pooled.value_at_quantile(q) as f64 / 1e3;
        assert_eq!(latency[field].as_f64().unwrap(), expected, "{field}");
    }
    assert_eq!(latency["max"].as_f64().unwrap(), pooled.max() as f64 / 1e3);
    // 200 values are too few for p99 and above: marked, not passed off as percentiles.
    let too_small: Vec<&str> = latency["n_too_small"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(too_small.contains(&"p9999"), "{too_small:?}");
    // The merged histogram file is the pooled one.
    let written = histogram(&merged_dir.join("latency.hdr.b64"));
    assert_eq!(written.len(), pooled.len());
    assert_eq!(written.max(), pooled.max());
    assert_eq!(
        written.value_at_quantile(0.5),
        pooled.value_at_quantile(0.5)
    );

    // The text form says what it merged.
    let mut args = vec!["merge"];
    args.extend(dirs.iter().map(|d| d.to_str().unwrap()));
    let output = loadgen(&args);
    check_success(&output);
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("merge of 2 runs"), "{text}");
    let _ = std::fs::remove_dir_all(&base);
}

//! A mix node as operators and attackers meet it: a second node on its port is refused at start,
//! `/health` answers while a client trickles a request one byte at a time, and it reports the
//! engine's liveness. Real `lethe` processes on loopback.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn run_args(dir: &std::path::Path, listen: &str) -> Vec<String> {
    [
        "mixnode",
        "run",
        "--dir",
        dir.to_str().unwrap(),
        "--listen",
        listen,
        "--metrics-listen",
        "127.0.0.1:0",
        "--cores",
        "1",
        "--replay-packets-per-s",
        "200",
        "--replay-key-lifetime-s",
        "3600",
        "--shutdown-grace-ms",
        "200",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn start(dir: &std::path::Path, listen: &str) -> Process {
    let args = run_args(dir, listen);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Process::start(&args, &["listen", "metrics"])
}

#[test]
fn a_second_node_on_a_served_port_is_refused_with_the_reason() {
    let (first_dir, second_dir) = (temp_dir("first"), temp_dir("second"));
    init("mixnode", &first_dir);
    init("mixnode", &second_dir);
    let first = start(&first_dir, "127.0.0.1:0");
    let listen = first.get("listen").to_string();
    let output = Command::new(LETHE)
        .args(run_args(&second_dir, &listen))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        !output.status.success(),
        "a second node started on {listen}"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("already served"), "{stderr}");
    // The first one still serves, and its port is its own.
    let health = http_get(first.addr("metrics"), "/health");
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    first.terminate();
    let _ = std::fs::remove_dir_all(first_dir);
    let _ = std::fs::remove_dir_all(second_dir);
}

#[test]
fn health_answers_while_slow_clients_trickle_requests() {
    let dir = temp_dir("slow");
    init("mixnode", &dir);
    let node = start(&dir, "127.0.0.1:0");
    let metrics = node.addr("metrics");
    // Eight clients each send one byte and then nothing (a request never completes).
    let trickles: Vec<TcpStream> = (0..8)
        .map(|_| {
            let mut stream = TcpStream::connect(metrics).unwrap();
            stream.write_all(b"G").unwrap();
            stream
        })
        .collect();
    for _ in 0..6 {
        let asked = Instant::now();
        let health = http_get(metrics, "/health");
        assert!(health.starts_with("HTTP/1.1 200"), "{health}");
        assert!(health.contains("\"status\":\"up\""), "{health}");
        // Not a timing claim: a server blocked behind the trickles would take their whole
        // 2 s request deadline for each of them in turn (16 s).
        assert!(
            asked.elapsed() < Duration::from_secs(8),
            "health blocked behind slow clients"
        );
    }
    drop(trickles);
    node.terminate();
    let _ = std::fs::remove_dir_all(dir);
}

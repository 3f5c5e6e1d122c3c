//! Issue 15: a sender is never told a file arrived when it did not. Real processes on loopback
//! (`lethe testnet up`, `lethe client send|receive`): the sender's gateway, then the
//! recipient's gateway, is killed with SIGKILL mid-transfer and restarted on the same
//! addresses, twice per transfer. Each time the recipient gets the file byte for byte, and the sender's
//! `--wait-acks` report is truthful (every fragment sent and acknowledged exactly once, never
//! more acknowledged than there are fragments). Last, a recipient whose gateway stays down:
//! `--wait-acks` exits non-zero and says how many fragments were not acknowledged.
//!
//! Checks outcomes, never speed: every wait is bounded and generous. "Mid-transfer" is made
//! sure by events, not by sleeping: the kill comes once the gateway has counted part of the
//! file, and afterwards the restarted gateway must have counted fragments too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::testnet::Testnet;
use common::{metric, only_file, random_bytes, Process, LETHE, WAIT_MAX};

/// The CLI's own give-up time for a send or a receive.
const CLI_TIMEOUT_S: u64 = 90;
/// 240 KB: about 150 fragments, enough for a kill to land well inside the transfer.
const FILE_BYTES: usize = 240_000;
/// Each kill comes once this many of the file's packets went through the gateway (since it
/// last started)...
const KILL_AFTER_PACKETS: u64 = 35;
/// ...this many times per transfer, so the gateway dies early and late in it.
const KILLS: u64 = 2;

/// `lethe client send --wait-acks` without cover traffic (so the gateways' counters count the
/// file alone), paced so the transfer lasts a while, with a generous retransmission budget.
fn send(from: &Path, to: &str, file: &Path, max_retransmissions: u32, timeout_s: u64) -> Child {
    Command::new(LETHE)
        .args([
            "client",
            "send",
            "--dir",
            from.to_str().unwrap(),
            "--to",
            to,
            "--file",
            file.to_str().unwrap(),
            "--wait-acks",
            "--timeout-s",
            &timeout_s.to_string(),
            "--no-cover",
            "--send-delay-ms",
            "8",
            "--hop-delay-ms",
            "5",
            "--max-retransmissions",
            &max_retransmissions.to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn receive(dir: &Path, out: &Path) -> Child {
    Command::new(LETHE)
        .args([
            "client",
            "receive",
            "--dir",
            dir.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--count",
            "1",
            "--timeout-s",
            &CLI_TIMEOUT_S.to_string(),
            "--no-cover",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits for a CLI process; returns (success, stdout, stderr).
fn finish(child: Child) -> (bool, String, String) {
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The `key=value` fields of the sender's report line.
fn report(stdout: &str) -> std::collections::HashMap<String, u64> {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("message_id="))
        .unwrap_or_else(|| panic!("no report line in {stdout:?}"));
    line.split_whitespace()
        .filter_map(|field| field.split_once('='))
        .filter(|(k, _)| *k != "message_id")
        .map(|(k, v)| (k.to_string(), v.parse().unwrap()))
        .collect()
}

/// Waits until the counter `name` at `metrics` reaches `value` (bounded).
fn wait_at_least(metrics: SocketAddr, name: &str, value: u64) {
    let deadline = Instant::now() + WAIT_MAX;
    loop {
        let now = metric(metrics, name);
        if now >= value {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} stayed at {now} < {value}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Whether process `pid` has exited with all its threads (reaped, or a lone zombie).
fn gone(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return true;
    };
    let threads = std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |d| d.count());
    stat.contains(") Z ") && threads <= 1
}

/// A gateway of the testnet, killable and restartable on the same addresses (clients and
/// mixnodes know it by them, from the directory).
struct Gateway {
    /// `gateway run ...` as first started, with the addresses it ended up on.
    args: Vec<String>,
    metrics: SocketAddr,
    /// The testnet's process (`None` once killed), or ours after a restart.
    pid: Option<u32>,
    restarted: Option<Process>,
}

impl Gateway {
    fn of(net: &Testnet, name: &str) -> Gateway {
        let pid = net.node(name)["pid"].as_u64().unwrap() as u32;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
        let mut args: Vec<String> = cmdline
            .split(|&b| b == 0)
            .filter(|a| !a.is_empty())
            .skip(1)
            .map(|a| String::from_utf8(a.to_vec()).unwrap())
            .collect();
        // The testnet asked for ephemeral ports: pin the ones it got.
        let client = net.info(name, "client_url");
        let pinned = [
            ("--listen", net.info(name, "listen")),
            (
                "--client-listen",
                client.trim_start_matches("ws://").to_string(),
            ),
            ("--metrics-listen", net.info(name, "metrics")),
        ];
        for (flag, value) in pinned {
            let at = args.iter().position(|a| a == flag).unwrap();
            args[at + 1] = value;
        }
        Gateway {
            args,
            metrics: net.info(name, "metrics").parse().unwrap(),
            pid: Some(pid),
            restarted: None,
        }
    }

    fn counter(&self, name: &str) -> u64 {
        metric(self.metrics, name)
    }

    /// SIGKILL: no chance to flush, commit or say goodbye.
    fn kill(&mut self) {
        if let Some(mut process) = self.restarted.take() {
            process.signal(libc::SIGKILL);
            let _ = process.child.wait();
        }
        if let Some(pid) = self.pid.take() {
            // SAFETY: SIGKILL to a gateway of the testnet this test started.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            // Not our child (the testnet's, re-parented): wait until it is gone, so its ports
            // and its directory lock are free. Its main thread turns zombie before the others
            // have exited (they still hold its files): wait for every thread.
            let deadline = Instant::now() + WAIT_MAX;
            while !gone(pid) {
                assert!(Instant::now() < deadline, "gateway {pid} did not die");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

    fn restart(&mut self) {
        assert!(self.pid.is_none() && self.restarted.is_none());
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        let process = Process::start(&args, &["listen", "client_url", "metrics", "identity"]);
        assert_eq!(process.addr("metrics"), self.metrics);
        self.restarted = Some(process);
    }
}

/// Sends `data` from Alice to Bob while `victim` is killed mid-transfer and restarted;
/// `counter` (at the victim) counts the file's packets going through it.
#[allow(clippy::too_many_arguments)]
fn transfer_across_a_kill(
    root: &Path,
    phase: &str,
    alice: &Path,
    bob: &Path,
    bob_address: &str,
    victim: &mut Gateway,
    counter: &str,
    seed: u64,
) {
    let data = random_bytes(FILE_BYTES, seed);
    let file = root.join(format!("{phase}.bin"));
    std::fs::write(&file, &data).unwrap();
    let inbox = root.join(format!("{phase}-inbox"));
    let receiver = receive(bob, &inbox);
    let sender = send(alice, bob_address, &file, 40, CLI_TIMEOUT_S);
    for _ in 0..KILLS {
        // Read after the (re)start: a restarted gateway counts from zero.
        let before = victim.counter(counter);
        wait_at_least(victim.metrics, counter, before + KILL_AFTER_PACKETS);
        victim.kill();
        victim.restart();
    }

    let (ok, stdout, stderr) = finish(sender);
    assert!(ok, "{phase}: send failed: {stdout}\n{stderr}");
    eprintln!("{phase}: {}", stdout.trim());
    let r = report(&stdout);
    // Truthful: every fragment sent and acknowledged once, none given up.
    assert!(
        r["fragments"] > KILLS * KILL_AFTER_PACKETS,
        "{phase}: {r:?}"
    );
    assert_eq!(r["sent"], r["fragments"], "{phase}: {r:?}");
    assert_eq!(r["acked"], r["fragments"], "{phase}: {r:?}");
    assert_eq!(r["failed"], 0, "{phase}: {r:?}");
    // The rest of the file went through the restarted gateway: the kill was mid-transfer.
    assert!(
        victim.counter(counter) > 0,
        "{phase}: nothing went through the restarted gateway"
    );

    let (ok, stdout, stderr) = finish(receiver);
    assert!(ok, "{phase}: receive failed: {stdout}\n{stderr}");
    assert!(
        only_file(&inbox) == data,
        "{phase}: the file arrived altered"
    );
}

#[test]
fn gateways_killed_mid_transfer_cost_retransmissions_never_the_file() {
    let root = std::env::temp_dir().join(format!("lethe-gw-restart-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    // One mixnode per layer, no issuers, no provider: fewer processes on a small machine;
    // what is tested here is the two gateways.
    let net = Testnet::up(
        &root.join("testnet"),
        &[
            "--mixnodes-per-layer",
            "1",
            "--credentials",
            "false",
            "--provider",
            "false",
        ],
    );
    let gateway1 = net.info("gateway1", "identity");
    let gateway2 = net.info("gateway2", "identity");
    // Alice on gateway 1, Bob on gateway 2 (both registered by `init`).
    let alice = root.join("alice");
    let bob = root.join("bob");
    let _ = net.init_client(&alice, &["--gateway", &gateway1]);
    let bob_address = net.init_client(&bob, &["--gateway", &gateway2]);
    let mut sender_gateway = Gateway::of(&net, "gateway1");
    let mut recipient_gateway = Gateway::of(&net, "gateway2");

    // 1. The sender's gateway dies mid-transfer: packets on their way out and ACKs on their
    //    way back are lost with it.
    transfer_across_a_kill(
        &root,
        "sender-gateway",
        &alice,
        &bob,
        &bob_address,
        &mut sender_gateway,
        "lethe_gateway_forwarded_from_clients_total",
        51,
    );

    // 2. The recipient's gateway dies mid-transfer: fragments arriving, being committed or
    //    being ACKed are lost with it; what it acknowledged, it had committed.
    transfer_across_a_kill(
        &root,
        "recipient-gateway",
        &alice,
        &bob,
        &bob_address,
        &mut recipient_gateway,
        "lethe_gateway_final_hop_stored_total",
        52,
    );

    // 3. The recipient's gateway stays down: nothing can be acknowledged, and the sender says
    //    so (no retransmission: it gives up after one ACK wait).
    recipient_gateway.kill();
    let file = root.join("unacknowledged.bin");
    std::fs::write(&file, random_bytes(5_000, 53)).unwrap();
    let (ok, stdout, stderr) = finish(send(&alice, &bob_address, &file, 0, CLI_TIMEOUT_S));
    assert!(!ok, "a send to a dead gateway succeeded: {stdout}");
    let r = report(&stdout);
    assert_eq!(r["acked"], 0, "{r:?}");
    let expected = format!(
        "{} of {} fragments were not acknowledged",
        r["fragments"], r["fragments"]
    );
    assert!(stderr.contains(&expected), "{stderr}");

    if let Some(process) = sender_gateway.restarted.take() {
        process.terminate();
    }
    drop(net);
    let _ = std::fs::remove_dir_all(&root);
}

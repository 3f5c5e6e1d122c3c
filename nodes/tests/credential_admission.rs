//! Multi-process: `lethe keygen`, three `lethe issuer run`, `lethe credential obtain`, and a
//! `lethe gateway run --verification-key` forwarding to a `lethe sink`, on loopback, driven by
//! the tests' client (`common::client`). Outcomes are checked, never speed: bounded, generous waits.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::client::TestClient;
use common::gateway::run_gateway_with;
use common::*;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use lethe_crypto::coconut::bandwidth::{bandwidth_parameters, BandwidthCredential};
use lethe_crypto::framing::PacketSize;
use lethe_crypto::sphinx::address;
use lethe_nodes::credential_files::read_verification_key;
use lethe_nodes::keyfile;
use lethe_nodes::proto::messages::error_code;
use lethe_nodes::proto::ClientMessage;

/// Bandwidth each credential buys: a few regular packets.
const CREDENTIAL_BYTES: u64 = 10_000;

fn lethe(args: &[&str]) {
    let out = Command::new(LETHE).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "lethe {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn run_gateway(dir: &Path, vk: &Path) -> Process {
    run_gateway_with(
        dir,
        &[
            "--pool-buffers",
            "4096",
            "--allow-any-first-hop",
            "--verification-key",
            vk.to_str().unwrap(),
        ],
    )
}

/// Connects, authenticates, reads Welcome and the Bandwidth that follows it.
async fn connect(url: &str, seed: [u8; 32], gateway: [u8; 32]) -> (TestClient, u64) {
    let (mut client, _) = TestClient::connect(url, seed, gateway).await;
    let remaining = client.expect_bandwidth().await;
    (client, remaining)
}

async fn forward(client: &mut TestClient, sink: SocketAddr, packet: &[u8]) {
    let message = ClientMessage::Forward {
        first_hop: address::encode(&sink),
        packet: packet.to_vec(),
    };
    client.send(&message).await;
}

/// A spend of the credential in `path` by `client` at `gateway`.
fn spend(path: &Path, vk_path: &Path, gateway: &[u8; 32], client: &[u8; 32]) -> Vec<u8> {
    let params = bandwidth_parameters().unwrap();
    let vk = read_verification_key(vk_path, &params).unwrap();
    let credential = BandwidthCredential::from_bytes(&std::fs::read(path).unwrap()).unwrap();
    let context = lethe_proto::wire::admission::admission_context(gateway, client);
    credential
        .spend(&params, &vk, &context, &mut rand_core_06::OsRng)
        .unwrap()
        .to_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_admits_meters_and_refuses_double_spends() {
    let base = temp_dir("admission");
    let keys = base.join("keys");
    let gw_dir = base.join("gateway");
    std::fs::create_dir_all(&base).unwrap();
    keygen(&keys, 2, 3);
    let vk = keys.join("verification.key");
    let bandwidth = CREDENTIAL_BYTES.to_string();
    let (issuers, urls): (Vec<Process>, Vec<String>) = (1..=3)
        .map(|i| {
            run_issuer(
                &keys.join(format!("issuer-{i}.key")),
                &["--bandwidth", &bandwidth],
            )
        })
        .unzip();
    let urls = urls.join(",");
    let credential = |name: &str| {
        let out = base.join(name);
        lethe(&[
            "credential",
            "obtain",
            "--issuers",
            &urls,
            "--threshold",
            "2",
            "--verification-key",
            vk.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]);
        out
    };
    let (cred_a, cred_b, cred_c) = (credential("a"), credential("b"), credential("c"));
    drop(issuers);

    lethe(&["gateway", "init", "--dir", gw_dir.to_str().unwrap()]);
    let sink_out = base.join("sink.txt");
    let sink = common::gateway::run_sink(&sink_out);
    let sink_addr = sink.addr("listen");
    let gateway = run_gateway(&gw_dir, &vk);
    let metrics = gateway.addr("metrics");
    let gw_id = keyfile::unhex_32(&gateway.lines["identity"]).unwrap();
    let url = gateway.lines["client_url"].clone();
    let packet = sink_packet(sink_addr, PacketSize::Regular, b"metered");
    let len = packet.len() as u64;
    let fits = CREDENTIAL_BYTES / len;
    assert!(fits >= 2, "a credential must cover a few packets");

    // No credential: Bandwidth{0}, then a forward is refused with NO_BANDWIDTH.
    let (mut x, remaining) = connect(&url, [1; 32], gw_id).await;
    assert_eq!(remaining, 0);
    forward(&mut x, sink_addr, &packet).await;
    x.expect_error(error_code::NO_BANDWIDTH).await;
    wait_gauge(metrics, "lethe_gateway_forwards_refused_bandwidth_total", 1);

    // A spend bound to another client is refused, and does not burn the credential.
    let y_seed = [2u8; 32];
    let y_id = keyfile::ed25519_public(&y_seed);
    let for_y = spend(&cred_c, &vk, &gw_id, &y_id);
    x.send(&ClientMessage::Credential { bytes: for_y }).await;
    x.expect_error(error_code::BAD_CREDENTIAL).await;
    // Garbage is refused; the session stays open.
    x.send(&ClientMessage::Credential {
        bytes: vec![0xab; 100],
    })
    .await;
    x.expect_error(error_code::BAD_CREDENTIAL).await;

    // A valid credential is credited; forwards go through.
    let a_x = spend(&cred_a, &vk, &gw_id, &x.identity);
    x.send(&ClientMessage::Credential { bytes: a_x.clone() })
        .await;
    assert_eq!(x.expect_bandwidth().await, CREDENTIAL_BYTES);
    forward(&mut x, sink_addr, &packet).await;
    x.expect_quiet(Duration::from_millis(300)).await;
    wait_gauge(metrics, "lethe_gateway_forwarded_from_clients_total", 1);
    wait_gauge(metrics, "lethe_gateway_bandwidth_charged_bytes_total", len);

    // The same spend again, and a fresh spend of the same credential: refused.
    x.send(&ClientMessage::Credential { bytes: a_x }).await;
    x.expect_error(error_code::BAD_CREDENTIAL).await;
    let a_x2 = spend(&cred_a, &vk, &gw_id, &x.identity);
    x.send(&ClientMessage::Credential { bytes: a_x2 }).await;
    x.expect_error(error_code::BAD_CREDENTIAL).await;

    // Another client, another session: spending the same credential is refused.
    let (mut y, remaining) = connect(&url, y_seed, gw_id).await;
    assert_eq!(remaining, 0);
    let a_y = spend(&cred_a, &vk, &gw_id, &y_id);
    y.send(&ClientMessage::Credential { bytes: a_y }).await;
    y.expect_error(error_code::BAD_CREDENTIAL).await;
    // The credential refused above (bound to y, sent by x) is still good for y.
    let c_y = spend(&cred_c, &vk, &gw_id, &y_id);
    y.send(&ClientMessage::Credential { bytes: c_y }).await;
    assert_eq!(y.expect_bandwidth().await, CREDENTIAL_BYTES);
    y.close().await;

    // Run x's credential out: `fits` forwards in all are paid for (one went above), the next
    // one is refused.
    for _ in 0..fits {
        forward(&mut x, sink_addr, &packet).await;
    }
    x.expect_error(error_code::NO_BANDWIDTH).await;
    wait_gauge(metrics, "lethe_gateway_forwarded_from_clients_total", fits);
    wait_gauge(metrics, "lethe_gateway_forwards_refused_bandwidth_total", 2);
    wait_gauge(metrics, "lethe_gateway_credentials_accepted_total", 2);
    wait_gauge(metrics, "lethe_gateway_credentials_refused_total", 5);
    let left = CREDENTIAL_BYTES - fits * len;
    // The session's charges are written through when it ends.
    x.close().await;
    wait_gauge(metrics, "lethe_gateway_sessions_active", 0);

    // Restart: the balance and the spent tags survive.
    gateway.terminate();
    let gateway = run_gateway(&gw_dir, &vk);
    let metrics = gateway.addr("metrics");
    let url = gateway.lines["client_url"].clone();
    let (mut x, remaining) = connect(&url, [1; 32], gw_id).await;
    assert_eq!(remaining, left);
    forward(&mut x, sink_addr, &packet).await;
    x.expect_error(error_code::NO_BANDWIDTH).await;
    let a_x3 = spend(&cred_a, &vk, &gw_id, &x.identity);
    x.send(&ClientMessage::Credential { bytes: a_x3 }).await;
    x.expect_error(error_code::BAD_CREDENTIAL).await;
    let b_x = spend(&cred_b, &vk, &gw_id, &x.identity);
    x.send(&ClientMessage::Credential { bytes: b_x }).await;
    assert_eq!(x.expect_bandwidth().await, left + CREDENTIAL_BYTES);
    forward(&mut x, sink_addr, &packet).await;
    wait_gauge(metrics, "lethe_gateway_forwarded_from_clients_total", 1);
    x.close().await;
    gateway.terminate();
    drop(sink);
    let _ = std::fs::remove_dir_all(&base);
}

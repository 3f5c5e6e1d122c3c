//! Multi-process: a `lethe gateway` whose idle timeout is shortened to 2 s
//! (`session_idle_timeout_s`) closes authenticated sessions that went silent (raw sessions
//! from the tests' client that never run their timers), counted in
//! `lethe_gateway_sessions_idle_closed_total`, while real clients (the client runtime over a
//! topology naming this gateway) keep theirs past it: one through its cover traffic, one with
//! cover off through its session's keep-alive. A silent session opened after the real clients
//! connected must be closed before the test looks at them, so at least one idle timeout
//! passed with them connected. Outcomes only: every wait is bounded, no duration is asserted.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::client::TestClient;
use common::gateway::{configure, run_gateway};
use common::*;

use std::sync::Arc;
use std::time::Instant;

use lethe_nodes::client::{
    connect, ClientConfig, ClientHandle, ClientLimits, ConnectionState, LoopixParams,
    ReceivedMessage, StaticTopology,
};
use lethe_nodes::keyfile;
use lethe_proto::testing::TestMixnet;
use tokio::sync::mpsc;
use zeroize::Zeroizing;

/// The gateway's idle timeout in this test.
const IDLE_TIMEOUT_S: &str = "2";
/// The cover-less client's keep-alive period: well within the idle timeout.
const KEEPALIVE_US: u64 = 300_000;

/// A real client of `gateway` (identity and client URL) over a static topology.
async fn real_client(
    gateway: [u8; 32],
    url: &str,
    seed: u8,
    loopix: LoopixParams,
    keepalive_us: u64,
) -> (ClientHandle, mpsc::Receiver<ReceivedMessage>) {
    let mut net = TestMixnet::new(2, &[seed.wrapping_add(100); 32]);
    net.topology.gateways[0].identity = keyfile::hex(&gateway);
    net.topology.gateways[0].client_url = Some(url.to_string());
    let config = ClientConfig {
        identity_seed: Zeroizing::new([seed; 32]),
        encryption_secret: Zeroizing::new([seed.wrapping_add(1); 32]),
        gateway,
        loopix,
        limits: ClientLimits::default(),
        topology: Arc::new(StaticTopology(net.topology)),
        received_capacity: 16,
        wallet: None,
        keepalive_us,
        trace_dir: None,
    };
    let (handle, received) = connect(config).await.unwrap();
    handle.wait_connected(WAIT_MAX).await.unwrap();
    (handle, received)
}

/// Waits (bounded) until the gateway ends `client`'s session.
async fn wait_closed(client: &mut TestClient) {
    let deadline = Instant::now() + WAIT_MAX;
    while client.recv().await.is_some() {
        assert!(Instant::now() < deadline, "the session was never closed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_sessions_are_closed_at_the_idle_timeout_and_real_clients_stay() {
    let dir = temp_dir("gateway-idle");
    init("gateway", &dir);
    configure(&dir, &[("session_idle_timeout_s", IDLE_TIMEOUT_S)]);
    let gateway = run_gateway(&dir);
    let url = gateway.get("client_url").to_string();
    let identity = keyfile::unhex_32(gateway.get("identity")).unwrap();
    let metrics = gateway.addr("metrics");

    // A raw session that goes silent at once.
    let (mut first_silent, _) = TestClient::connect(&url, [1; 32], identity).await;
    // Real clients: default cover traffic; cover off with a short keep-alive.
    let (covered, _covered_received) = real_client(
        identity,
        &url,
        20,
        LoopixParams::default(),
        lethe_proto::limits::CLIENT_KEEPALIVE_US,
    )
    .await;
    let (quiet, _quiet_received) = real_client(
        identity,
        &url,
        30,
        LoopixParams::default().without_cover(),
        KEEPALIVE_US,
    )
    .await;
    // A second silent session, opened with both real clients connected: once it is closed,
    // at least one idle timeout has passed with them connected.
    let (mut second_silent, _) = TestClient::connect(&url, [2; 32], identity).await;

    wait_closed(&mut first_silent).await;
    wait_closed(&mut second_silent).await;
    let closed = tokio::task::spawn_blocking(move || {
        wait_metric(metrics, "lethe_gateway_sessions_idle_closed_total", 2);
        wait_gauge(metrics, "lethe_gateway_sessions_active", 2);
        (
            metric(metrics, "lethe_gateway_sessions_started_total"),
            metric(metrics, "lethe_gateway_sessions_idle_closed_total"),
        )
    })
    .await
    .unwrap();
    // Four sessions in all (no real client had to reconnect), the two silent ones closed.
    assert_eq!(closed, (4, 2));
    for (name, client) in [("covered", &covered), ("quiet", &quiet)] {
        assert_eq!(
            client.connection_state(),
            ConnectionState::Connected,
            "{name}"
        );
        assert_eq!(client.stats().reconnects, 0, "{name}");
    }
    // The cover-less client sent nothing but keep-alives, and they kept its session.
    assert_eq!(quiet.stats().core.drop_cover_sent, 0);
    assert_eq!(quiet.stats().core.loop_cover_sent, 0);
    assert!(covered.stats().core.drop_cover_sent + covered.stats().core.loop_cover_sent > 0);

    covered.shutdown(std::time::Duration::from_secs(2)).await;
    quiet.shutdown(std::time::Duration::from_secs(2)).await;
    gateway.terminate();
}

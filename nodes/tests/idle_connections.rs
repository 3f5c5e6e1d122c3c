//! Multi-process: a `lethe gateway` holding many idle client connections (issue 17's long-run
//! requirement) keeps serving an active client, holds bounded memory, and sheds what exceeds
//! its configured caps with a counted refusal. Half the idle connections complete the
//! handshake and then stay silent (authenticated sessions); the other half upgrade to a
//! WebSocket and never send a hello (pending connections, from many loopback source
//! addresses, within the per-address cap). The gateway's caps are set to exactly what the
//! test holds, then a few more of each kind arrive: the extra sessions are refused
//! (`OVERLOADED`, counted), the extra pending connections evict the oldest (counted).
//!
//! `LETHE_IDLE_CONNECTIONS` sets the scale (default 200, the suite's run);
//! `bench/idle_connections.sh` runs it at 10,000 and prints the figures. Every wait is a
//! bounded failure guard; the bound is on memory and on what is served, never on time.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::client::TestClient;
use common::gateway::*;
use common::*;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use lethe_crypto::framing::PacketSize;
use lethe_crypto::sphinx::address;
use lethe_nodes::proto::ClientMessage;

/// Idle connections of the suite's run (half authenticated, half pending).
const IDLE_CONNECTIONS_DEFAULT: usize = 200;
/// Connections of each kind beyond the gateway's caps.
const EXTRA_MIN: usize = 8;
/// Handshakes in flight at once from the test (within the per-address pending cap, 8).
const HANDSHAKES_CONCURRENT: usize = 4;
/// Packets the active client forwards while the gateway holds the idle connections.
const ACTIVE_PACKETS: usize = 20;
/// What one idle connection may cost the gateway at most (resident memory, averaged): a
/// task, a 4 KiB read buffer, the session's state. Far below tungstenite's default 128 KiB
/// read buffer, which alone would exceed it.
const IDLE_BYTES_MAX: u64 = 48 * 1024;
/// Descriptors the test and the gateway need besides the connections (binaries, logs,
/// the database, metrics scrapes).
const FDS_SPARE: u64 = 256;
/// Long enough that no pending connection times out while the test builds up the rest.
const HANDSHAKE_TIMEOUT_MS: u64 = 600_000;

/// The `i`th pending connection's source address: 8 per address (the per-address cap), from
/// 127.1.0.1 on (never 127.0.0.1, where the sessions come from).
fn pending_source(i: usize) -> Ipv4Addr {
    let n = i / 8;
    Ipv4Addr::new(
        127,
        1 + (n / 62_500) as u8,
        (n / 250 % 250) as u8,
        1 + (n % 250) as u8,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_with_many_idle_connections_serves_an_active_client_in_bounded_memory() {
    let idle: usize = std::env::var("LETHE_IDLE_CONNECTIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(IDLE_CONNECTIONS_DEFAULT);
    let sessions = idle / 2;
    let pending = idle - sessions;
    let extra = (idle / 50).max(EXTRA_MIN);
    let fds = raise_fd_limit();
    let needed = (idle + 2 * extra) as u64 + FDS_SPARE;
    assert!(
        fds >= needed,
        "the open-files limit is {fds} (hard limit, `ulimit -Hn`); {idle} idle connections need \
         {needed} in this process and in the gateway: raise the hard limit or lower \
         LETHE_IDLE_CONNECTIONS"
    );

    let dir = temp_dir("gateway");
    init("gateway", &dir);
    // Caps at exactly what the test holds, plus one session for the active client and one
    // pending slot for the handshakes that follow (the active client's, the refused ones').
    configure(
        &dir,
        &[
            ("sessions_max", &(sessions + 1).to_string()),
            ("pending_connections_max", &(pending + 1).to_string()),
            ("handshake_timeout_ms", &HANDSHAKE_TIMEOUT_MS.to_string()),
        ],
    );
    let sink_out = temp_dir("sink.txt");
    let sink = run_sink(&sink_out);
    let gateway = run_gateway(&dir);
    let metrics = gateway.addr("metrics");
    let url = gateway.lines["client_url"].clone();
    let identity = gateway_identity(&gateway);
    let to = client_addr(&gateway);
    let rss_before = gateway.memory_bytes("VmRSS");
    let started = Instant::now();

    // Authenticated, then silent.
    let mut held = Vec::with_capacity(sessions);
    for batch in (0..sessions)
        .collect::<Vec<_>>()
        .chunks(HANDSHAKES_CONCURRENT)
    {
        let opens: Vec<_> = batch
            .iter()
            .map(|&i| {
                let url = url.clone();
                tokio::spawn(async move { TestClient::connect(&url, idle_seed(i), identity).await })
            })
            .collect();
        for open in opens {
            held.push(open.await.unwrap().0);
        }
    }
    wait_gauge(metrics, "lethe_gateway_sessions_active", sessions as u64);

    // Upgraded, never a hello.
    let mut silent = Vec::with_capacity(pending);
    for batch in (0..pending).collect::<Vec<_>>().chunks(64) {
        let upgrades: Vec<_> = batch
            .iter()
            .map(|&i| {
                let url = url.clone();
                tokio::spawn(async move {
                    let tcp = connect_from(pending_source(i), to).await;
                    tokio_tungstenite::client_async(url, tcp).await.ok()
                })
            })
            .collect();
        for upgrade in upgrades {
            silent.extend(upgrade.await.unwrap().map(|(ws, _)| ws));
        }
    }
    assert_eq!(
        silent.len(),
        pending,
        "every pending connection was upgraded"
    );
    wait_gauge(metrics, "lethe_gateway_pending_connections", pending as u64);
    let built_s = started.elapsed().as_secs_f64();
    let rss_idle = gateway.memory_bytes("VmRSS");

    // The active client gets the one session left and is served.
    let (mut active, _) = TestClient::connect(&url, [0xac; 32], identity).await;
    let first_hop = address::encode(&sink.addr("listen"));
    let before = sink_packets(&sink_out).len();
    for i in 0..ACTIVE_PACKETS {
        let packet = sink_packet(sink.addr("listen"), PacketSize::Regular, &[i as u8; 8]);
        active
            .send(&ClientMessage::Forward { first_hop, packet })
            .await;
    }
    let deadline = Instant::now() + WAIT_MAX;
    while sink_packets(&sink_out).len() < before + ACTIVE_PACKETS {
        assert!(
            Instant::now() < deadline,
            "the active client's packets did not all reach the sink: {} of {ACTIVE_PACKETS}",
            sink_packets(&sink_out).len() - before
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Beyond the caps: sessions refused with OVERLOADED, pending connections evict the oldest.
    for i in 0..extra {
        match TestClient::try_connect(&url, idle_seed(sessions + i), identity).await {
            Err(lethe_nodes::ws::OpenError::Refused { code, text }) => {
                assert_eq!(
                    code,
                    lethe_nodes::proto::messages::error_code::OVERLOADED,
                    "{text}"
                );
                assert!(text.contains("full"), "{text}");
            }
            Err(other) => panic!("session {i} beyond the cap failed instead of a refusal: {other}"),
            Ok(_) => panic!("session {i} beyond sessions_max was accepted"),
        }
    }
    wait_metric(
        metrics,
        "lethe_gateway_sessions_refused_total",
        extra as u64,
    );
    // The first takes the free slot, each further one evicts the oldest.
    let mut late = Vec::with_capacity(extra + 1);
    for i in 0..=extra {
        let tcp = connect_from(pending_source(pending + i), to).await;
        late.extend(tokio_tungstenite::client_async(url.clone(), tcp).await.ok());
    }
    wait_metric(metrics, "lethe_gateway_pending_evicted_total", extra as u64);
    wait_gauge(
        metrics,
        "lethe_gateway_pending_connections",
        pending as u64 + 1,
    );
    wait_gauge(
        metrics,
        "lethe_gateway_sessions_active",
        sessions as u64 + 1,
    );

    // Still serving, and the idle sessions are still there.
    let packet = sink_packet(sink.addr("listen"), PacketSize::Regular, b"after");
    let before = sink_packets(&sink_out).len();
    active
        .send(&ClientMessage::Forward { first_hop, packet })
        .await;
    let deadline = Instant::now() + WAIT_MAX;
    while sink_packets(&sink_out).len() == before {
        assert!(
            Instant::now() < deadline,
            "the last packet never reached the sink"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rss_end = gateway.memory_bytes("VmRSS");

    let grown = rss_idle.saturating_sub(rss_before);
    let per_connection = grown / idle as u64;
    eprintln!(
        "idle_connections: {idle} idle ({sessions} authenticated, {pending} pending) built in \
         {built_s:.1} s; gateway RSS before {} KiB, idle {} KiB, end {} KiB; {per_connection} B \
         per idle connection; {extra} sessions refused, {extra} pending evicted; active client: \
         {} packets delivered",
        rss_before / 1024,
        rss_idle / 1024,
        rss_end / 1024,
        ACTIVE_PACKETS + 1,
    );
    assert!(
        per_connection <= IDLE_BYTES_MAX,
        "{idle} idle connections grew the gateway by {grown} bytes ({per_connection} each)"
    );
    drop((held, silent, late));
    gateway.terminate();
}

/// The identity seed of the `i`th idle session.
fn idle_seed(i: usize) -> [u8; 32] {
    let mut seed = [0x1d; 32];
    seed[..8].copy_from_slice(&(i as u64).to_le_bytes());
    seed
}

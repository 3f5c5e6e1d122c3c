//! Multi-process: `lethe gateway` with a `lethe mixnode` in front of it and a `lethe sink` for
//! SURB-ACKs, on loopback, with the tests' client (`common::client`: `lethe_proto`'s client
//! session over `lethe_nodes::ws`), raw sockets only where a test misbehaves on purpose.
//! Outcomes are checked, never speed: generous timeouts.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::*;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use common::client::{next_raw, TestClient};
use common::gateway::run_sink;
use futures_util::SinkExt;
use lethe_crypto::framing::{encode_frame_to_vec, FrameHeader, KeyRotation, PacketSize};
use lethe_crypto::sphinx::{self, address, Destination, PacketSpec, RouteHop, Version};
use lethe_nodes::keyfile;
use lethe_nodes::proto::messages::error_code;
use lethe_nodes::proto::payload::{write_surb_ack, SURB_ACK_BYTES};
use lethe_nodes::proto::{ClientHandshake, ClientMessage, DeliveryKind};
use lethe_proto::ClientEvent;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

const TIMEOUT: Duration = Duration::from_secs(60);

fn run_mixnode(dir: &Path) -> Process {
    let mut args = vec!["mixnode", "run", "--dir", dir.to_str().unwrap()];
    args.extend(SMALL_NODE);
    args.extend(["--shutdown-grace-ms", "1000"]);
    Process::start(&args, &["listen", "metrics"])
}

fn run_gateway(dir: &Path, allow_any_first_hop: bool) -> Process {
    let mut args = vec!["gateway", "run", "--dir", dir.to_str().unwrap()];
    args.extend(SMALL_NODE);
    args.extend([
        "--client-listen",
        "127.0.0.1:0",
        "--shutdown-grace-ms",
        "1000",
    ]);
    if allow_any_first_hop {
        args.push("--allow-any-first-hop");
    }
    Process::start(
        &args,
        &["listen", "client_url", "metrics", "identity", "sphinx_key"],
    )
}

fn sphinx_key(dir: &Path) -> [u8; 32] {
    keyfile::read_public(&dir.join("keys/x25519_sphinx_primary.pub")).unwrap()
}

fn hop(addr: SocketAddr, public_key: [u8; 32]) -> RouteHop {
    RouteHop {
        address: address::encode(&addr),
        public_key,
    }
}

/// Packets the sink recorded.
fn sink_packets(path: &Path) -> Vec<Vec<u8>> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|line| line.split(' ').nth(2))
        .map(|hex| {
            (0..hex.len() / 2)
                .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
                .collect()
        })
        .collect()
}

/// A forward packet through `route` to `client`, carrying a SURB-ACK (`ack`) and `content`.
fn forward_packet(
    route: &[RouteHop],
    client: [u8; 32],
    ack: Option<(SocketAddr, &[u8])>,
    content: &[u8],
) -> Vec<u8> {
    let mut message = vec![0u8; SURB_ACK_BYTES + content.len()];
    let address = ack.map(|(addr, _)| address::encode(&addr));
    let surb_ack = match (&address, ack) {
        (Some(address), Some((_, packet))) => Some((address, packet)),
        _ => None,
    };
    write_surb_ack(&mut message, surb_ack).unwrap();
    message[SURB_ACK_BYTES..].copy_from_slice(content);
    let delays = vec![0u64; route.len()];
    let destination = Destination {
        address: client,
        identifier: [0; 16],
    };
    let spec = PacketSpec {
        route,
        delays_ns: &delays,
        destination: &destination,
        version: Version::CURRENT,
    };
    sphinx::create(
        &message,
        PacketSize::Regular.payload_len(),
        &spec,
        None,
        &mut rand::rng(),
    )
    .unwrap()
}

fn send_frame(to: SocketAddr, packet: &[u8]) {
    let size = PacketSize::from_sphinx_packet_len(packet.len()).unwrap();
    send_frame_with(to, packet, FrameHeader::v7(size));
}

fn send_frame_with(to: SocketAddr, packet: &[u8], header: FrameHeader) {
    let mut frame = Vec::new();
    encode_frame_to_vec(&header, packet, &mut frame).unwrap();
    let mut stream = TcpStream::connect(to).unwrap();
    stream.write_all(&frame).unwrap();
    stream.flush().unwrap();
}

type Ws = WebSocketStream<tokio::net::TcpStream>;

async fn ws_connect(url: &str) -> Ws {
    let host = url.trim_start_matches("ws://");
    let tcp = tokio::net::TcpStream::connect(host).await.unwrap();
    let (ws, _) = tokio_tungstenite::client_async(url, tcp).await.unwrap();
    ws
}

fn gateway_identity(gateway: &Process) -> [u8; 32] {
    keyfile::unhex_32(&gateway.lines["identity"]).unwrap()
}

async fn expect_deliver(client: &mut TestClient) -> (u64, DeliveryKind, Vec<u8>) {
    match client.recv().await {
        Some(ClientEvent::Deliver {
            id, kind, bytes, ..
        }) => (id, kind, bytes),
        other => panic!("expected Deliver, got {other:?}"),
    }
}

/// (a) mixnode → gateway → connected client, the SURB-ACK reaches the sink; a client Forward
/// goes out through the mixnode and comes back to the same client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn final_hop_reaches_connected_client_and_ack_reaches_sink() {
    let (mix_dir, gw_dir) = (temp_dir("a-mix"), temp_dir("a-gw"));
    let sink_out = temp_dir("a-sink.txt");
    init("mixnode", &mix_dir);
    init("gateway", &gw_dir);
    let sink = run_sink(&sink_out);
    let mixnode = run_mixnode(&mix_dir);
    let gateway = run_gateway(&gw_dir, true);
    let route = [
        hop(mixnode.addr("listen"), sphinx_key(&mix_dir)),
        hop(gateway.addr("listen"), sphinx_key(&gw_dir)),
    ];
    let seed = [11u8; 32];
    let client_id = keyfile::ed25519_public(&seed);
    let url = gateway.lines["client_url"].clone();
    let (mut client, stored) = TestClient::connect(&url, seed, gateway_identity(&gateway)).await;
    assert_eq!(stored, 0);

    let ack = sink_packet(
        sink.addr("listen"),
        PacketSize::Ack,
        b"ack-fragment-id-12345",
    );
    let packet = forward_packet(
        &route,
        client_id,
        Some((sink.addr("listen"), &ack)),
        b"hello",
    );
    send_frame(mixnode.addr("listen"), &packet);
    let (id, kind, bytes) = expect_deliver(&mut client).await;
    assert_eq!(kind, DeliveryKind::Message);
    assert_eq!(bytes, b"hello");
    client.send(&ClientMessage::Confirm { ids: vec![id] }).await;
    let deadline = Instant::now() + TIMEOUT;
    while sink_packets(&sink_out).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the SURB-ACK never reached the sink"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(sink_packets(&sink_out), vec![ack]);

    // Through the gateway's client side: Forward to the mixnode, back to this client.
    let packet = forward_packet(&route, client_id, None, b"round trip");
    let first_hop = address::encode(&mixnode.addr("listen"));
    client
        .send(&ClientMessage::Forward { first_hop, packet })
        .await;
    let (next_id, kind, bytes) = expect_deliver(&mut client).await;
    assert!(next_id > id);
    assert_eq!(
        (kind, bytes.as_slice()),
        (DeliveryKind::Message, &b"round trip"[..])
    );
    client
        .send(&ClientMessage::Confirm { ids: vec![next_id] })
        .await;

    // A gateway keeps one Sphinx key: v8 frames of either rotation parity reach it (the byte
    // senders write follows the mixnodes' network-wide rotation, not the gateway's key id).
    let mut last_id = next_id;
    for (rotation, content) in [
        (KeyRotation::Odd, &b"v8 odd"[..]),
        (KeyRotation::Even, &b"v8 even"[..]),
    ] {
        let packet = forward_packet(&route[1..], client_id, None, content);
        let size = PacketSize::from_sphinx_packet_len(packet.len()).unwrap();
        send_frame_with(
            gateway.addr("listen"),
            &packet,
            FrameHeader::v8(size, rotation),
        );
        let (id, kind, bytes) = expect_deliver(&mut client).await;
        assert!(id > last_id);
        assert_eq!((kind, bytes.as_slice()), (DeliveryKind::Message, content));
        client.send(&ClientMessage::Confirm { ids: vec![id] }).await;
        last_id = id;
    }

    // Drop cover and an unknown destination are counted, not delivered.
    send_frame(
        mixnode.addr("listen"),
        &forward_packet(&route, [0; 32], None, b"cover"),
    );
    send_frame(
        mixnode.addr("listen"),
        &forward_packet(&route, [3; 32], None, b"nobody"),
    );
    let metrics = gateway.addr("metrics");
    wait_metric(metrics, "lethe_gateway_cover_dropped_total", 1);
    wait_metric(
        metrics,
        "lethe_gateway_unknown_destination_dropped_total",
        1,
    );
    wait_metric(metrics, "lethe_gateway_acks_forwarded_total", 1);
    wait_metric(metrics, "lethe_gateway_confirms_total", 4);
    wait_gauge(metrics, "lethe_gateway_mailbox_rows", 0);
    client.expect_quiet(Duration::from_millis(300)).await;
    client.close().await;
    gateway.terminate();
    mixnode.terminate();
    drop(sink);
}

/// (b) Stored while offline, survives SIGKILL, delivered on connect; confirmed ones are not
/// redelivered, unconfirmed ones are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mailbox_survives_sigkill_and_redelivers_until_confirmed() {
    let (mix_dir, gw_dir) = (temp_dir("b-mix"), temp_dir("b-gw"));
    init("mixnode", &mix_dir);
    init("gateway", &gw_dir);
    let mixnode = run_mixnode(&mix_dir);
    let gateway = run_gateway(&gw_dir, false);
    let identity = gateway_identity(&gateway);
    let route = [
        hop(mixnode.addr("listen"), sphinx_key(&mix_dir)),
        hop(gateway.addr("listen"), sphinx_key(&gw_dir)),
    ];
    let seed = [12u8; 32];
    let client_id = keyfile::ed25519_public(&seed);
    // Register (first handshake), then go offline.
    let (client, stored) = TestClient::connect(&gateway.lines["client_url"], seed, identity).await;
    assert_eq!(stored, 0);
    client.close().await;
    wait_gauge(gateway.addr("metrics"), "lethe_gateway_sessions_active", 0);

    for content in [&b"first"[..], b"second"] {
        send_frame(
            mixnode.addr("listen"),
            &forward_packet(&route, client_id, None, content),
        );
    }
    wait_metric(
        gateway.addr("metrics"),
        "lethe_gateway_final_hop_stored_total",
        2,
    );
    gateway.kill();

    let gateway = run_gateway(&gw_dir, false);
    let url = gateway.lines["client_url"].clone();
    let (mut client, stored) = TestClient::connect(&url, seed, identity).await;
    assert_eq!(stored, 2);
    // Stored in arrival order (the mixnode may reorder the two): delivered in id order.
    let (first, _, first_bytes) = expect_deliver(&mut client).await;
    let (second, _, second_bytes) = expect_deliver(&mut client).await;
    assert!(second > first);
    let mut contents = [first_bytes, second_bytes.clone()];
    contents.sort();
    assert_eq!(contents, [b"first".to_vec(), b"second".to_vec()]);
    client
        .send(&ClientMessage::Confirm { ids: vec![first] })
        .await;
    wait_metric(gateway.addr("metrics"), "lethe_gateway_confirms_total", 1);
    client.close().await;

    let (mut client, stored) = TestClient::connect(&url, seed, identity).await;
    assert_eq!(stored, 1);
    let (id, _, bytes) = expect_deliver(&mut client).await;
    assert_eq!((id, bytes), (second, second_bytes));
    client.expect_quiet(Duration::from_millis(300)).await;
    client
        .send(&ClientMessage::Confirm { ids: vec![second] })
        .await;
    wait_gauge(gateway.addr("metrics"), "lethe_gateway_mailbox_rows", 0);
    client.close().await;
    gateway.terminate();
    mixnode.terminate();
}

/// (c) Refused forwards keep the session; garbage closes only its session; bad handshakes are
/// refused; a second session of an identity replaces the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_per_session() {
    let gw_dir = temp_dir("c-gw");
    init("gateway", &gw_dir);
    let gateway = run_gateway(&gw_dir, false);
    let identity = gateway_identity(&gateway);
    let url = gateway.lines["client_url"].clone();
    let (mut good, _) = TestClient::connect(&url, [21; 32], identity).await;
    let forward = ClientMessage::Forward {
        first_hop: address::encode(&"127.0.0.1:9".parse().unwrap()),
        packet: vec![0; PacketSize::Regular.packet_len()],
    };
    for _ in 0..2 {
        good.send(&forward).await;
        match good.recv().await {
            Some(ClientEvent::Error { code, .. }) => assert_eq!(code, error_code::NOT_LAYER1),
            other => panic!("expected NOT_LAYER1, got {other:?}"),
        }
    }

    // Garbage after the handshake: Error, then this session closes.
    let (mut bad, _) = TestClient::connect(&url, [22; 32], identity).await;
    bad.connection()
        .socket()
        .send(Message::Binary(vec![1, 2, 3].into()))
        .await
        .unwrap();
    match bad.recv().await {
        Some(ClientEvent::Error { code, .. }) => assert_eq!(code, error_code::MALFORMED),
        other => panic!("expected MALFORMED, got {other:?}"),
    }
    assert!(bad.recv().await.is_none(), "the bad session stays open");

    // Bad handshakes: a garbage hello, and a hello for the wrong gateway key's auth.
    let mut ws = ws_connect(&url).await;
    ws.send(Message::Binary(vec![0u8; 10].into()))
        .await
        .unwrap();
    assert!(next_raw(&mut ws).await.is_none());
    let mut ws = ws_connect(&url).await;
    let (_, hello) = ClientHandshake::start(&[23; 32], identity, &mut rand::rng());
    ws.send(Message::Binary(hello.into())).await.unwrap();
    assert!(next_raw(&mut ws).await.is_some()); // the gateway hello
    ws.send(Message::Binary(vec![3u8; 65].into()))
        .await
        .unwrap();
    assert!(next_raw(&mut ws).await.is_none());

    // The good session is untouched.
    good.send(&forward).await;
    assert!(matches!(good.recv().await, Some(ClientEvent::Error { .. })));

    // A new session of the same identity replaces the old one.
    let (mut newer, _) = TestClient::connect(&url, [21; 32], identity).await;
    assert!(
        good.recv().await.is_none(),
        "the replaced session stays open"
    );
    newer.send(&forward).await;
    assert!(matches!(
        newer.recv().await,
        Some(ClientEvent::Error { .. })
    ));
    let metrics = gateway.addr("metrics");
    wait_metric(metrics, "lethe_gateway_handshakes_failed_total", 2);
    wait_metric(metrics, "lethe_gateway_session_errors_total", 1);
    newer.close().await;
    gateway.terminate();
}

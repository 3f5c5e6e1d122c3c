//! Multi-process: three `lethe mixnode` processes in a chain on loopback, a `lethe sink` as the
//! gateway stand-in, packets built with `sphinx-packet` 0.8 and sent with Nym framing.
//! Outcomes are checked, never speed: generous timeouts, delays checked as lower bounds.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::*;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use lethe_crypto::framing::{encode_frame_to_vec, FrameHeader, KeyRotation, PacketSize};
use lethe_crypto::sphinx::{self, address, Hop, Packet};
use sphinx_packet::crypto::PublicKey;
use sphinx_packet::header::delays::Delay;
use sphinx_packet::route::{Destination, DestinationAddressBytes, Node, NodeAddressBytes};
use sphinx_packet::SphinxPacketBuilder;
use x25519_dalek::StaticSecret;

const TIMEOUT: Duration = Duration::from_secs(60);
const DELAYS_MS: [u64; 3] = [60, 40, 20];

fn run_node(dir: &Path) -> Process {
    run_node_with(dir, &[])
}

fn run_node_with(dir: &Path, extra: &[&str]) -> Process {
    let mut args = vec![
        "--pool-buffers",
        "4096",
        "--timer-entries-max",
        "4096",
        "--shutdown-grace-ms",
        "3000",
    ];
    args.extend_from_slice(extra);
    run_mixnode_with(dir, &args)
}

fn public_key(dir: &Path) -> [u8; 32] {
    lethe_nodes::keyfile::read_public(&dir.join("keys/x25519_sphinx_primary.pub")).unwrap()
}

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis()
}

struct Route {
    nodes: Vec<Node>,
    gateway: StaticSecret,
}

impl Route {
    fn packet(&self, message: &[u8]) -> Vec<u8> {
        let destination = Destination::new(DestinationAddressBytes::from_bytes([5; 32]), [6; 16]);
        let mut delays: Vec<Delay> = DELAYS_MS
            .iter()
            .map(|ms| Delay::new_from_nanos(ms * 1_000_000))
            .collect();
        delays.push(Delay::new_from_nanos(0));
        SphinxPacketBuilder::new()
            .with_payload_size(PacketSize::Regular.payload_len())
            .build_packet(message, &self.nodes, &destination, &delays)
            .unwrap()
            .to_bytes()
    }
}

impl Route {
    /// A packet of `size` with 5 ms per mix hop.
    fn packet_sized(&self, message: &[u8], size: PacketSize) -> Vec<u8> {
        let destination = Destination::new(DestinationAddressBytes::from_bytes([5; 32]), [6; 16]);
        let mut delays = vec![Delay::new_from_nanos(5_000_000); self.nodes.len() - 1];
        delays.push(Delay::new_from_nanos(0));
        let bytes = SphinxPacketBuilder::new()
            .with_payload_size(size.payload_len())
            .build_packet(message, &self.nodes, &destination, &delays)
            .unwrap()
            .to_bytes();
        assert_eq!(bytes.len(), size.packet_len());
        bytes
    }
}

fn frame_sized(packet: &[u8], size: PacketSize) -> Vec<u8> {
    let mut out = Vec::new();
    encode_frame_to_vec(&FrameHeader::v7(size), packet, &mut out).unwrap();
    out
}

fn node(addr: SocketAddr, key: [u8; 32]) -> Node {
    Node::new(
        NodeAddressBytes::from_bytes(address::encode(&addr)),
        PublicKey::from(key),
    )
}

fn frame_v7(packet: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_frame_to_vec(&FrameHeader::v7(PacketSize::Regular), packet, &mut out).unwrap();
    out
}

fn frame_v8(packet: &[u8], rotation: KeyRotation) -> Vec<u8> {
    let mut out = Vec::new();
    encode_frame_to_vec(
        &FrameHeader::v8(PacketSize::Regular, rotation),
        packet,
        &mut out,
    )
    .unwrap();
    out
}

fn send(to: SocketAddr, bytes: &[u8]) {
    let mut stream = TcpStream::connect(to).unwrap();
    stream.write_all(bytes).unwrap();
    stream.flush().unwrap();
}

/// The sink file's records: (arrival ms, packet bytes).
fn sink_records(path: &Path) -> Vec<(u128, Vec<u8>)> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter(|l| l.ends_with(|c: char| c.is_ascii_hexdigit()))
        .map(|line| {
            let mut parts = line.split(' ');
            let ms = parts.next().unwrap().parse().unwrap();
            let _version = parts.next().unwrap();
            let hex = parts.next().unwrap();
            let bytes = (0..hex.len() / 2)
                .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
                .collect();
            (ms, bytes)
        })
        .collect()
}

fn wait_sink(path: &Path, count: usize) -> Vec<(u128, Vec<u8>)> {
    let deadline = Instant::now() + TIMEOUT;
    while Instant::now() < deadline {
        let records = sink_records(path);
        if records.len() >= count {
            return records;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!(
        "sink got {} packets, expected {count}",
        sink_records(path).len()
    );
}

/// Opens a delivered packet with the gateway key and returns its message.
fn open(gateway: &StaticSecret, mut bytes: Vec<u8>) -> Vec<u8> {
    let mut packet = Packet::new_checked(&mut bytes[..]).unwrap();
    let processed = sphinx::process(&mut packet, gateway).unwrap();
    assert!(matches!(processed.hop, Hop::Final { destination, .. } if destination == [5; 32]));
    sphinx::recover_plaintext(&bytes[sphinx::constants::HEADER_SIZE..])
        .unwrap()
        .to_vec()
}

#[test]
fn chain_of_three_forwards_refuses_replays_drops_garbage_and_survives_restart() {
    let (sink, sink_file, dirs, mut nodes, route) = chain("main", 3, &[]);
    let entry = nodes[0].addr("listen");
    let entry_metrics = nodes[0].addr("metrics");

    // 1. Ten packets, v7 and v8 (the parity of the network-wide rotation id of the day, which
    // all three nodes share), arrive after their delays.
    let (rotation_id, _) = rotation_state(&dirs[0]);
    let day = now_ms() / 1_000 / 86_400;
    assert!(
        (day..=day + 1).contains(&u128::from(rotation_id)),
        "{rotation_id}"
    );
    let parity = KeyRotation::for_rotation_id(rotation_id);
    let messages: Vec<Vec<u8>> = (0..10u8).map(|i| vec![i; 32]).collect();
    let packets: Vec<Vec<u8>> = messages.iter().map(|m| route.packet(m)).collect();
    let mut bytes = Vec::new();
    for (i, p) in packets.iter().enumerate() {
        bytes.extend(if i % 2 == 0 {
            frame_v7(p)
        } else {
            frame_v8(p, parity)
        });
    }
    let sent_ms = now_ms();
    send(entry, &bytes);
    let records = wait_sink(&sink_file, 10);
    let delay_total_ms: u64 = DELAYS_MS.iter().sum();
    let mut opened: Vec<Vec<u8>> = Vec::new();
    for (arrived_ms, packet) in records {
        assert!(
            arrived_ms >= sent_ms + u128::from(delay_total_ms),
            "arrived before its delays"
        );
        opened.push(open(&route.gateway, packet));
    }
    opened.sort();
    assert_eq!(opened, messages);
    wait_metric(entry_metrics, "lethe_packets_sent_total", 10);

    let mut health = TcpStream::connect(entry_metrics).unwrap();
    health
        .write_all(b"GET /health HTTP/1.1\r\nHost: lethe\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    health.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200") && response.contains("\"status\":\"up\""));

    // 2. A replay is refused and counted; nothing more reaches the sink.
    send(entry, &frame_v7(&packets[0]));
    wait_metric(
        entry_metrics,
        "lethe_packets_dropped_total{reason=\"replayed\"}",
        1,
    );

    // 3. Garbage on a connection is dropped and counted; its good packets go through.
    let fresh: Vec<Vec<u8>> = (0..2u8).map(|i| route.packet(&[100 + i; 8])).collect();
    let mut forged = fresh[0].clone();
    forged[200] ^= 0xff; // beta: the MAC fails
    let mut bytes = frame_v7(&fresh[0]);
    bytes.extend(frame_v7(&forged));
    bytes.extend([7u8, 1, 9]); // unknown packet type: the frame is skipped whole
    bytes.extend(vec![0xaau8; PacketSize::Regular.packet_len()]);
    bytes.extend(frame_v7(&fresh[1]));
    send(entry, &bytes);
    wait_sink(&sink_file, 12);
    wait_metric(
        entry_metrics,
        "lethe_packets_dropped_total{reason=\"malformed\"}",
        2,
    );

    // 4. After SIGTERM and a restart, the persisted filter still refuses an old packet.
    let first = nodes.remove(0);
    first.terminate();
    assert!(dirs[0]
        .join(format!("data/replay-rot-{rotation_id}.bin"))
        .exists());
    let restarted = run_node(&dirs[0]);
    send(restarted.addr("listen"), &frame_v7(&packets[1]));
    wait_metric(
        restarted.addr("metrics"),
        "lethe_packets_dropped_total{reason=\"replayed\"}",
        1,
    );
    // and still forwards fresh packets (its new port is only the entry; the chain is unchanged)
    send(
        restarted.addr("listen"),
        &frame_v7(&route.packet(b"after restart")),
    );
    let records = wait_sink(&sink_file, 13);
    assert_eq!(records.len(), 13);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        sink_records(&sink_file).len(),
        13,
        "a replay or garbage got through"
    );

    restarted.terminate();
    teardown(nodes, sink, &dirs, &sink_file);
}

/// The sink, and `count` mixnodes chained in front of it, run with `extra` flags.
fn chain(
    name: &str,
    count: usize,
    extra: &[&str],
) -> (Process, PathBuf, Vec<PathBuf>, Vec<Process>, Route) {
    chain_started_apart(name, count, extra, Duration::ZERO)
}

/// Stops the chain's nodes and sink and removes their files.
fn teardown(nodes: Vec<Process>, sink: Process, dirs: &[PathBuf], sink_file: &Path) {
    for node in nodes {
        node.terminate();
    }
    drop(sink);
    for dir in dirs {
        let _ = std::fs::remove_dir_all(dir);
    }
    let _ = std::fs::remove_file(sink_file);
}

/// `chain`, each node started `gap` after the previous one.
fn chain_started_apart(
    name: &str,
    count: usize,
    extra: &[&str],
    gap: Duration,
) -> (Process, PathBuf, Vec<PathBuf>, Vec<Process>, Route) {
    let sink_file = temp_dir(&format!("{name}-sink.log"));
    let sink = common::gateway::run_sink(&sink_file);
    let dirs: Vec<PathBuf> = (1..=count)
        .map(|i| temp_dir(&format!("{name}-m{i}")))
        .collect();
    for dir in &dirs {
        init("mixnode", dir);
    }
    let nodes: Vec<Process> = dirs
        .iter()
        .enumerate()
        .map(|(i, d)| {
            if i > 0 {
                std::thread::sleep(gap);
            }
            run_node_with(d, extra)
        })
        .collect();
    let gateway = StaticSecret::from([43u8; 32]);
    let mut hops: Vec<Node> = dirs
        .iter()
        .zip(&nodes)
        .map(|(d, p)| node(p.addr("listen"), public_key(d)))
        .collect();
    hops.push(node(
        sink.addr("listen"),
        x25519_dalek::PublicKey::from(&gateway).to_bytes(),
    ));
    let route = Route {
        nodes: hops,
        gateway,
    };
    (sink, sink_file, dirs, nodes, route)
}

#[test]
fn extended_sizes_cross_the_chain_and_disabled_sizes_are_dropped_on_a_live_connection() {
    let (sink, sink_file, dirs, nodes, route) =
        chain("sizes", 2, &["--packet-sizes", "regular,ack,ext8,ext32"]);
    let entry = nodes[0].addr("listen");
    let entry_metrics = nodes[0].addr("metrics");
    // One connection: regular, ext16 (not enabled), ext8, ext32, regular.
    let sent = [
        (PacketSize::Regular, b"regular one".to_vec()),
        (PacketSize::Extended16, b"ext16: dropped".to_vec()),
        (PacketSize::Extended8, vec![8u8; 6_000]),
        (PacketSize::Extended32, vec![32u8; 30_000]),
        (PacketSize::Regular, b"regular two".to_vec()),
    ];
    let mut bytes = Vec::new();
    for (size, message) in &sent {
        bytes.extend(frame_sized(&route.packet_sized(message, *size), *size));
    }
    send(entry, &bytes);
    let records = wait_sink(&sink_file, 4);
    let mut lengths: Vec<usize> = records.iter().map(|(_, p)| p.len()).collect();
    lengths.sort();
    let mut expected_lengths = [
        PacketSize::Regular.packet_len(),
        PacketSize::Regular.packet_len(),
        PacketSize::Extended8.packet_len(),
        PacketSize::Extended32.packet_len(),
    ];
    expected_lengths.sort();
    assert_eq!(lengths, expected_lengths);
    let mut opened: Vec<Vec<u8>> = records
        .into_iter()
        .map(|(_, p)| open(&route.gateway, p))
        .collect();
    opened.sort();
    let mut expected: Vec<Vec<u8>> = sent
        .iter()
        .filter(|(size, _)| *size != PacketSize::Extended16)
        .map(|(_, m)| m.clone())
        .collect();
    expected.sort();
    assert_eq!(opened, expected);
    wait_metric(
        entry_metrics,
        "lethe_packets_dropped_total{reason=\"packet_size_disabled\"}",
        1,
    );
    assert_eq!(
        metric(
            entry_metrics,
            "lethe_packets_dropped_total{reason=\"malformed\"}"
        ),
        0
    );
    // The connection was not closed by the disabled frame: more packets on a new one pass too,
    // and the second node never saw the ext16 frame.
    send(
        entry,
        &frame_v7(&route.packet_sized(b"after", PacketSize::Regular)),
    );
    wait_sink(&sink_file, 5);
    assert_eq!(
        metric(
            nodes[1].addr("metrics"),
            "lethe_packets_dropped_total{reason=\"packet_size_disabled\"}"
        ),
        0
    );
    teardown(nodes, sink, &dirs, &sink_file);
}

/// `(primary rotation id, secondary live)` from the node's rotation state file.
fn rotation_state(dir: &Path) -> (u32, bool) {
    let text = std::fs::read_to_string(dir.join("keys/sphinx_rotation.toml")).unwrap_or_default();
    let value = |key: &str| {
        text.lines().find_map(|l| l.strip_prefix(key)).map(|v| {
            v.trim_start_matches([' ', '='])
                .trim()
                .parse::<u64>()
                .unwrap()
        })
    };
    let primary = value("primary_rotation_id").unwrap_or(0) as u32;
    (primary, value("secondary_rotation_id").is_some())
}

fn wait_rotation_state(dir: &Path, expected: (u32, bool)) {
    let deadline = Instant::now() + TIMEOUT;
    while Instant::now() < deadline {
        if rotation_state(dir) == expected {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!(
        "rotation state stayed {:?}, expected {expected:?}",
        rotation_state(dir)
    );
}

/// The network-wide rotation id now: unix time / interval.
fn epoch_now(interval_s: u64) -> u32 {
    u32::try_from(now_ms() / 1_000 / u128::from(interval_s)).unwrap()
}

/// Sleeps until the clock is at least `after_ms` past a rotation boundary and at least
/// `before_ms` before the next one (bounded: within two intervals).
fn wait_inside_epoch(interval_s: u64, after_ms: u64, before_ms: u64) {
    let interval_ms = u128::from(interval_s) * 1_000;
    assert!(u128::from(after_ms + before_ms) < interval_ms);
    let deadline = Instant::now() + Duration::from_secs(2 * interval_s + 1);
    while Instant::now() < deadline {
        let into = now_ms() % interval_ms;
        if into >= u128::from(after_ms) && into + u128::from(before_ms) <= interval_ms {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("the clock never reached the window");
}

/// Waits until the node's primary rotation id is at least `id`; returns it.
fn wait_primary_at_least(dir: &Path, id: u32) -> u32 {
    let deadline = Instant::now() + TIMEOUT;
    while Instant::now() < deadline {
        let (primary, _) = rotation_state(dir);
        if primary >= id {
            return primary;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!(
        "primary rotation stayed {}, expected >= {id}",
        rotation_state(dir).0
    );
}

#[test]
fn scheduled_key_rotation_overlaps_survives_restart_and_then_drops_the_old_key() {
    use std::os::unix::fs::PermissionsExt;
    // Interval 8 s, overlap 5 s, on the wall clock: rotation id = unix time / 8. The node
    // starts with the init key as the current epoch's (id0); at the next multiple of 8 s it
    // rotates to id0 + 1, drops key id0 5 s later, and rotates again 3 s after that. Every
    // step below waits for the state file, not for a time.
    let interval_s = 8;
    let rotation_args = ["--rotation-interval-s", "8", "--rotation-overlap-s", "5"];
    // Start well before a boundary, so step 1 runs under the init key.
    wait_inside_epoch(interval_s, 0, 3_000);
    let epoch_before = epoch_now(interval_s);
    let (sink, sink_file, dirs, mut nodes, route) = chain("rot", 1, &rotation_args);
    let dir = &dirs[0];
    let (id0, overlapping) = rotation_state(dir);
    assert!(!overlapping);
    assert!(
        (epoch_before..=epoch_now(interval_s)).contains(&id0),
        "rotation id {id0} is not the clock's epoch"
    );
    let id1 = id0 + 1;
    let old_route = Route {
        nodes: route.nodes.clone(),
        gateway: route.gateway.clone(),
    };
    let old: Vec<Vec<u8>> = (0..5u8)
        .map(|i| old_route.packet_sized(&[i; 16], PacketSize::Regular))
        .collect();
    // 1. Before the rotation: the init-key packet goes through.
    send(nodes[0].addr("listen"), &frame_v7(&old[0]));
    wait_sink(&sink_file, 1);

    // 2. The rotation: a new 0600 key and a fresh persisted filter; both keys accepted.
    wait_rotation_state(dir, (id1, true));
    let key_path = dir.join(format!("keys/x25519_sphinx_rot-{id1}"));
    let mode = std::fs::metadata(&key_path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(dir.join(format!("data/replay-rot-{id1}.bin")).exists());
    let new_key = lethe_nodes::keyfile::read_public(&key_path.with_extension("pub")).unwrap();
    assert_ne!(new_key, public_key(dir));
    let mut new_route = Route {
        nodes: route.nodes.clone(),
        gateway: route.gateway.clone(),
    };
    new_route.nodes[0] = Node::new(route.nodes[0].address, PublicKey::from(new_key));
    let new: Vec<Vec<u8>> = (0..2u8)
        .map(|i| new_route.packet_sized(&[100 + i; 16], PacketSize::Regular))
        .collect();
    let (old_parity, new_parity) = (
        KeyRotation::for_rotation_id(id0),
        KeyRotation::for_rotation_id(id1),
    );
    assert_ne!(old_parity, new_parity);
    std::thread::sleep(Duration::from_millis(300)); // the cores pick keys up within 50 ms
    let entry = nodes[0].addr("listen");
    let mut bytes = frame_v7(&old[1]); // v7: primary fails, the secondary verifies
    bytes.extend(frame_v8(&new[0], new_parity));
    send(entry, &bytes);
    wait_sink(&sink_file, 3);

    // 3. A restart mid-overlap restores both keys and both filters.
    nodes.remove(0).terminate();
    assert_eq!(
        rotation_state(dir),
        (id1, true),
        "the overlap ended during the restart"
    );
    let restarted = run_node_with(dir, &rotation_args);
    let (entry, metrics) = (restarted.addr("listen"), restarted.addr("metrics"));
    send(entry, &frame_v8(&new[0], new_parity)); // replay under the new key
    wait_metric(
        metrics,
        "lethe_packets_dropped_total{reason=\"replayed\"}",
        1,
    );
    send(entry, &frame_v7(&old[1])); // replay under the old key
    wait_metric(
        metrics,
        "lethe_packets_dropped_total{reason=\"replayed\"}",
        2,
    );
    send(entry, &frame_v7(&old[2])); // the old key still works
    wait_sink(&sink_file, 4);

    // 4. After the overlap the old key, its filter and their files are gone.
    wait_rotation_state(dir, (id1, false));
    std::thread::sleep(Duration::from_millis(300));
    assert!(!dir.join(format!("data/replay-rot-{id0}.bin")).exists());
    assert!(!dir.join("keys/x25519_sphinx_primary").exists());
    assert!(dir.join(format!("data/replay-rot-{id1}.bin")).exists());
    send(entry, &frame_v7(&old[3])); // v7: no live key verifies it
    wait_metric(
        metrics,
        "lethe_packets_dropped_total{reason=\"malformed\"}",
        1,
    );
    send(entry, &frame_v8(&old[4], old_parity)); // v8: no live key of that parity
    wait_metric(
        metrics,
        "lethe_packets_dropped_total{reason=\"unknown_key\"}",
        1,
    );
    send(entry, &frame_v8(&new[1], new_parity));
    wait_sink(&sink_file, 5);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        sink_records(&sink_file).len(),
        5,
        "a refused packet got through"
    );

    restarted.terminate();
    drop(sink);
    let _ = std::fs::remove_dir_all(dir);
    let _ = std::fs::remove_file(&sink_file);
}

/// The framing version of each sink record.
fn sink_versions(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|l| l.split(' ').nth(1).map(str::to_string))
        .collect()
}

#[test]
fn mixnodes_started_apart_share_rotation_ids_and_v8_frames_cross_them() {
    // Same interval (6 s, overlap 3 s), v8 egress, the second node started 3 s after the
    // first. Per-node ids (counted from each node's start) would have them rotate at
    // different moments, so the first node's v8 byte would name a key the second lacks.
    let interval_s = 6;
    let args = [
        "--rotation-interval-s",
        "6",
        "--rotation-overlap-s",
        "3",
        "--egress-framing",
        "8",
    ];
    let (sink, sink_file, dirs, nodes, route) =
        chain_started_apart("apart", 2, &args, Duration::from_secs(3));
    let initial: Vec<u32> = dirs.iter().map(|d| rotation_state(d).0).collect();
    // Both rotate at least once.
    for (dir, id) in dirs.iter().zip(&initial) {
        wait_primary_at_least(dir, id + 1);
    }
    let mut delivered = false;
    for _attempt in 0..3 {
        // Inside an epoch, clear of its boundaries: built, sent and forwarded under one id.
        wait_inside_epoch(interval_s, 500, 2_500);
        let epoch = epoch_now(interval_s);
        let ids: Vec<u32> = dirs
            .iter()
            .map(|d| wait_primary_at_least(d, epoch))
            .collect();
        assert_eq!(ids[0], ids[1], "the two nodes hold different rotation ids");
        assert_eq!(ids[0], epoch, "the rotation id is not the clock's epoch");
        let mut hops = route.nodes.clone();
        for (hop, dir) in hops.iter_mut().zip(&dirs) {
            let key = lethe_nodes::keyfile::read_public(
                &dir.join(format!("keys/x25519_sphinx_rot-{epoch}.pub")),
            )
            .unwrap();
            *hop = Node::new(hop.address, PublicKey::from(key));
        }
        let current = Route {
            nodes: hops,
            gateway: route.gateway.clone(),
        };
        let message = format!("epoch {epoch}").into_bytes();
        let packet = current.packet_sized(&message, PacketSize::Regular);
        send(
            nodes[0].addr("listen"),
            &frame_v8(&packet, KeyRotation::for_rotation_id(epoch)),
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline && sink_records(&sink_file).is_empty() {
            std::thread::sleep(Duration::from_millis(25));
        }
        if let Some((_, bytes)) = sink_records(&sink_file).into_iter().next() {
            assert_eq!(open(&route.gateway, bytes), message);
            delivered = true;
            break;
        }
        // Lost only if a boundary passed while it was in flight (not what is tested here):
        // then try again in the next epoch; otherwise the packet was wrongly dropped.
        assert_ne!(
            epoch_now(interval_s),
            epoch,
            "the v8 packet was dropped inside one epoch"
        );
    }
    assert!(delivered, "no attempt crossed both nodes");
    // The last hop was framed v8 too, and no node saw a v8 byte it had no key for.
    assert_eq!(sink_versions(&sink_file), ["8"]);
    for node in &nodes {
        assert_eq!(
            metric(
                node.addr("metrics"),
                "lethe_packets_dropped_total{reason=\"unknown_key\"}"
            ),
            0
        );
    }
    teardown(nodes, sink, &dirs, &sink_file);
}

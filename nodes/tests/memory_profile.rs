//! Memory and disk of the small profile (issue 16): `init --profile small` prints the memory
//! it implies; a small mixnode, fed packets, stays resident within that bound; it snapshots
//! its replay filter at stop only because packets were accepted, in a file of the filter's
//! size. Bounded in packets and waits; the bound is on memory, not time.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::*;

use std::collections::HashMap;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lethe_crypto::framing::{encode_frame_to_vec, FrameHeader, PacketSize};
use lethe_crypto::sphinx::address;
use sphinx_packet::crypto::PublicKey;
use sphinx_packet::header::delays::Delay;
use sphinx_packet::route::{Destination, DestinationAddressBytes, Node, NodeAddressBytes};
use sphinx_packet::SphinxPacketBuilder;

/// Packets fed to the node: enough to go through every stage (pool, crypto, replay filter,
/// timers, egress) many times over, few enough to build in a second.
const PACKETS: usize = 2_000;
/// What a node process holds besides the configured structures: the binary and its
/// libraries (~10 MB), the allocator's arenas, glommio's reactor and io_uring rings, the
/// metrics thread, a few thread stacks. Measured at ~12 MB on the small profile (see the
/// README's "Memory and disk"); 32 MiB leaves room for another machine's allocator and
/// kernel accounting, and is still far below what a wrong sizing would add (the default
/// profile's filter alone is 1.8 GB).
const PROCESS_OVERHEAD_BYTES: u64 = 32 << 20;

/// `lethe ROLE init --dir DIR --profile PROFILE`; its `key=value` stdout lines.
fn init_profile(role: &str, dir: &Path, profile: &str) -> HashMap<String, String> {
    let output = Command::new(LETHE)
        .args([
            role,
            "init",
            "--dir",
            dir.to_str().unwrap(),
            "--profile",
            profile,
        ])
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(&format!("profile {profile}:")), "{stderr}");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn node(addr: SocketAddr, key: [u8; 32]) -> Node {
    Node::new(
        NodeAddressBytes::from_bytes(address::encode(&addr)),
        PublicKey::from(key),
    )
}

/// Regular frames through the node to a next hop that is not listening (egress drops them
/// after its unreachable bound): each is unwrapped, checked against the replay filter and
/// timed like any other.
fn frames(entry: SocketAddr, key: [u8; 32]) -> Vec<u8> {
    let nowhere: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let route = [node(entry, key), node(nowhere, [3; 32])];
    let destination = Destination::new(DestinationAddressBytes::from_bytes([5; 32]), [6; 16]);
    let delays = [Delay::new_from_nanos(0), Delay::new_from_nanos(0)];
    let mut out = Vec::new();
    for i in 0..PACKETS {
        let packet = SphinxPacketBuilder::new()
            .with_payload_size(PacketSize::Regular.payload_len())
            .build_packet((i as u64).to_be_bytes(), &route, &destination, &delays)
            .unwrap()
            .to_bytes();
        encode_frame_to_vec(&FrameHeader::v7(PacketSize::Regular), &packet, &mut out).unwrap();
    }
    out
}

fn snapshots(data: &Path) -> Vec<(String, u64)> {
    std::fs::read_dir(data)
        .unwrap()
        .map(|e| e.unwrap())
        .map(|e| {
            let len = e.metadata().unwrap().len();
            (e.file_name().to_string_lossy().into_owned(), len)
        })
        .filter(|(name, _)| name.starts_with("replay-rot-"))
        .collect()
}

#[test]
fn a_small_profile_mixnode_stays_within_the_memory_init_printed() {
    let dir = temp_dir("small-mixnode");
    let printed = init_profile("mixnode", &dir, "small");
    assert_eq!(printed["profile"], "small");
    let filter_bytes: u64 = printed["replay_filter_bytes"].parse().unwrap();
    let memory_max: u64 = printed["memory_bytes_max"].parse().unwrap();
    // Tens of MB, as the profile promises (the default is 1.8 GB per filter).
    assert!(filter_bytes < 48 << 20, "{filter_bytes}");
    assert!(memory_max < 128 << 20, "{memory_max}");

    let args = [
        "mixnode",
        "run",
        "--dir",
        dir.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "127.0.0.1:0",
        "--shutdown-grace-ms",
        "500",
    ];
    let mixnode = Process::start(&args, &["listen", "metrics"]);
    let (entry, metrics) = (mixnode.addr("listen"), mixnode.addr("metrics"));
    let key =
        lethe_nodes::keyfile::read_public(&dir.join("keys/x25519_sphinx_primary.pub")).unwrap();
    let rss_start = mixnode.memory_bytes("VmRSS:");
    // The filter is zeroed (touched) when allocated: the measure sees it.
    assert!(
        rss_start >= filter_bytes,
        "VmRSS {rss_start} < filter {filter_bytes}"
    );

    let mut stream = TcpStream::connect(entry).unwrap();
    stream.write_all(&frames(entry, key)).unwrap();
    let deadline = Instant::now() + WAIT_MAX;
    let mut rss_max = rss_start;
    loop {
        rss_max = rss_max.max(mixnode.memory_bytes("VmRSS:"));
        if metric(metrics, "lethe_packets_received_total") >= PACKETS as u64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the node did not take the packets"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    wait_metric(metrics, "lethe_packets_forwarded_total", PACKETS as u64);
    rss_max = rss_max.max(mixnode.memory_bytes("VmRSS:"));
    let peak = mixnode.memory_bytes("VmHWM:");
    let bound = memory_max + PROCESS_OVERHEAD_BYTES;
    eprintln!(
        "small mixnode: VmRSS {} KiB at start, {} KiB at most while sampled, VmHWM {} KiB; \
         bound {} KiB",
        rss_start >> 10,
        rss_max >> 10,
        peak >> 10,
        bound >> 10
    );
    assert!(peak < bound, "VmHWM {peak} over {bound}");
    drop(stream);
    mixnode.terminate();

    // Packets were accepted: the filter was saved at stop, one file of its size (header,
    // lines, checksum).
    let files = snapshots(&dir.join("data"));
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(
        files[0].1 >= filter_bytes && files[0].1 <= filter_bytes + 64,
        "{files:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_idle_small_node_writes_no_snapshot() {
    let dir = temp_dir("idle-gateway");
    let printed = init_profile("gateway", &dir, "small");
    assert_eq!(printed["profile"], "small");
    let args = [
        "gateway",
        "run",
        "--dir",
        dir.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--client-listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "127.0.0.1:0",
    ];
    let gateway = Process::start(&args, &["listen", "metrics"]);
    let rss = gateway.memory_bytes("VmRSS:");
    let memory_max: u64 = printed["memory_bytes_max"].parse().unwrap();
    assert!(rss < memory_max + PROCESS_OVERHEAD_BYTES, "VmRSS {rss}");
    gateway.terminate();
    // One key, one filter, nothing accepted: nothing to write (it was 2 x 1.8 GB at every stop).
    assert_eq!(snapshots(&dir.join("data")), []);
    let _ = std::fs::remove_dir_all(&dir);
}

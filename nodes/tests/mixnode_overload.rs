//! Multi-process overload: a `lethe mixnode` whose next hop accepts but does not read, fed as
//! fast as possible with many more unique packets than its pool and queues hold. Its memory
//! stays within what its configuration bounds, the excess is dropped and counted by reason,
//! `/health` keeps answering, and it forwards again once the next hop reads.
//! Bounded in packets and time; no speed is asserted.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::*;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lethe_crypto::framing::{encode_frame_to_vec, FrameDecoder, FrameHeader, PacketSize};
use lethe_crypto::sphinx::{self, address, Packet};
use sphinx_packet::crypto::PublicKey;
use sphinx_packet::header::delays::Delay;
use sphinx_packet::route::{Destination, DestinationAddressBytes, Node, NodeAddressBytes};
use sphinx_packet::SphinxPacketBuilder;
use x25519_dalek::StaticSecret;

const TIMEOUT: Duration = Duration::from_secs(120);
/// Unique packets offered: ~29 MB of regular frames, far beyond the pool and egress queue.
const PACKETS: usize = 12_000;
const POOL_BUFFERS: u32 = 256;
const EGRESS_QUEUE_PACKETS: u32 = 256;
const TIMER_ENTRIES: u32 = 1_024;
/// The first packets leave at once: they fill the stalled next hop's socket and egress queue,
/// so the queue overflows (egress_full drops) whatever the rates, and they never pile up in
/// the pool. The rest wait 2 s each: reading more than the pool's 256 of them takes far less,
/// so the pool overflows (overload drops).
const UNDELAYED_PACKETS: usize = 9_000;
const DELAY_MS: u64 = 2_000;
/// Allocator, glommio and kernel-accounting noise on top of the configured memory.
const RSS_SLACK_BYTES: u64 = 16 << 20;

fn dropped(metrics: SocketAddr, reason: &str) -> u64 {
    metric(
        metrics,
        &format!("lethe_packets_dropped_total{{reason=\"{reason}\"}}"),
    )
}

/// Polls `done` every 50 ms until it holds; after `TIMEOUT`, fails with `what` and the node's
/// metrics.
fn wait_until(metrics: SocketAddr, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "{what}; node metrics:\n{}",
            http_get(metrics, "/metrics")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A next hop that accepts connections but reads nothing until `reading` is set; then it
/// decodes frames and keeps their packets.
struct StalledSink {
    addr: SocketAddr,
    reading: Arc<AtomicBool>,
    packets: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl StalledSink {
    fn start() -> StalledSink {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        // A small receive buffer (inherited by accepted sockets): the stall shows up at the
        // node's egress after a few MB, not after the kernel's autotuned maximum.
        let size: libc::c_int = 4096;
        // SAFETY: setsockopt on a socket we own, with a valid pointer and length.
        let rc = unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&listener),
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0);
        let sink = StalledSink {
            addr: listener.local_addr().unwrap(),
            reading: Arc::new(AtomicBool::new(false)),
            packets: Arc::new(Mutex::new(Vec::new())),
        };
        let (reading, packets) = (sink.reading.clone(), sink.packets.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let (reading, packets) = (reading.clone(), packets.clone());
                std::thread::spawn(move || Self::serve(stream, &reading, &packets));
            }
        });
        sink
    }

    fn serve(mut stream: TcpStream, reading: &AtomicBool, packets: &Mutex<Vec<Vec<u8>>>) {
        while !reading.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut decoder = FrameDecoder::new();
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            let n = match stream.read(&mut buffer) {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let mut received = Vec::new();
            let result = decoder.feed(&buffer[..n], |frame| {
                if let Ok(frame) = frame {
                    received.push(frame.packet.to_vec());
                }
            });
            packets.lock().unwrap().extend(received);
            if result.is_err() {
                return;
            }
        }
    }
}

fn node(addr: SocketAddr, key: [u8; 32]) -> Node {
    Node::new(
        NodeAddressBytes::from_bytes(address::encode(&addr)),
        PublicKey::from(key),
    )
}

/// Regular frames for `route`, message = the index, built on two threads.
fn frames(route: &[Node], range: std::ops::Range<usize>, delay_ms: u64) -> Vec<u8> {
    let build = |range: std::ops::Range<usize>| {
        let destination = Destination::new(DestinationAddressBytes::from_bytes([5; 32]), [6; 16]);
        let mut out = Vec::new();
        for i in range {
            let delays = [
                Delay::new_from_nanos(delay_ms * 1_000_000),
                Delay::new_from_nanos(0),
            ];
            let packet = SphinxPacketBuilder::new()
                .with_payload_size(PacketSize::Regular.payload_len())
                .build_packet((i as u64).to_be_bytes(), route, &destination, &delays)
                .unwrap()
                .to_bytes();
            encode_frame_to_vec(&FrameHeader::v7(PacketSize::Regular), &packet, &mut out).unwrap();
        }
        out
    };
    let middle = range.start + range.len() / 2;
    let (first, second) = std::thread::scope(|s| {
        let first = s.spawn(|| build(range.start..middle));
        let second = s.spawn(|| build(middle..range.end));
        (first.join().unwrap(), second.join().unwrap())
    });
    [first, second].concat()
}

/// The message (index) of a packet delivered to the sink, opened with the final hop's key.
fn open(gateway: &StaticSecret, mut bytes: Vec<u8>) -> u64 {
    let mut packet = Packet::new_checked(&mut bytes[..]).unwrap();
    sphinx::process(&mut packet, gateway).unwrap();
    let message = sphinx::recover_plaintext(&bytes[sphinx::constants::HEADER_SIZE..]).unwrap();
    u64::from_be_bytes(message.try_into().unwrap())
}

#[test]
fn overload_drops_by_reason_within_a_memory_bound_and_recovers() {
    let dir = temp_dir("m1");
    init("mixnode", &dir);
    let sink = StalledSink::start();
    let timer_entries = TIMER_ENTRIES.to_string();
    let pool = POOL_BUFFERS.to_string();
    let queue = EGRESS_QUEUE_PACKETS.to_string();
    let args = [
        "--packet-sizes",
        "regular,ack",
        "--pool-buffers",
        &pool,
        "--timer-entries-max",
        &timer_entries,
        "--egress-queue-packets-max",
        &queue,
        "--shutdown-grace-ms",
        "1000",
    ];
    let mixnode = run_mixnode_with(&dir, &args);
    let (entry, metrics) = (mixnode.addr("listen"), mixnode.addr("metrics"));
    let gateway = StaticSecret::from([44u8; 32]);
    let route = [
        node(
            entry,
            lethe_nodes::keyfile::read_public(&dir.join("keys/x25519_sphinx_primary.pub")).unwrap(),
        ),
        node(
            sink.addr,
            x25519_dalek::PublicKey::from(&gateway).to_bytes(),
        ),
    ];
    let offered = [
        frames(&route, 0..UNDELAYED_PACKETS, 0),
        frames(&route, UNDELAYED_PACKETS..PACKETS, DELAY_MS),
    ]
    .concat();
    let fresh = frames(&route, PACKETS..PACKETS + 5, 0);
    std::thread::sleep(Duration::from_millis(200));
    let rss_idle = mixnode.memory_bytes("VmRSS:");

    // What the configuration lets the node hold beyond its idle footprint: every pool buffer,
    // the egress queue and its spare (one frame budget each), one ingress connection's read and
    // reassembly buffers.
    let buffer_bytes = PacketSize::Regular.packet_len().next_multiple_of(64) as u64;
    // The egress queue's byte budget per frame (see `egress_frame_bytes`).
    let frame_bytes = u64::from(lethe_engine::limits::PACKET_BYTES_DEFAULT);
    let configured = u64::from(POOL_BUFFERS) * buffer_bytes
        + 2 * u64::from(EGRESS_QUEUE_PACKETS) * frame_bytes
        + 64 * 1024
        + lethe_crypto::framing::FRAME_MAX_LEN as u64;
    let bound = rss_idle + configured + RSS_SLACK_BYTES;
    assert!(
        (offered.len() as u64) > configured + RSS_SLACK_BYTES,
        "the load must dwarf the bound"
    );

    // Feed everything on one connection, as fast as the node reads, sampling RSS meanwhile.
    let feeder = std::thread::spawn(move || {
        let mut stream = TcpStream::connect(entry).unwrap();
        stream.write_all(&offered).unwrap();
        stream
    });
    let mut rss_max = 0;
    wait_until(metrics, "feeding did not finish", || {
        if feeder.is_finished() {
            return true;
        }
        rss_max = rss_max.max(mixnode.memory_bytes("VmRSS:"));
        assert!(http_get(metrics, "/health").starts_with("HTTP/1.1 200"));
        false
    });
    let _connection = feeder.join().unwrap();
    // Everything offered was read and either queued or dropped.
    wait_until(metrics, "the node did not read everything", || {
        metric(metrics, "lethe_packets_received_total") >= PACKETS as u64
    });
    std::thread::sleep(Duration::from_millis(2 * DELAY_MS)); // the delayed ones reach egress
    let peak = mixnode.memory_bytes("VmHWM:");
    eprintln!(
        "overload: rss idle {} MiB, max sampled {} MiB, peak {} MiB, bound {} MiB",
        rss_idle >> 20,
        rss_max >> 20,
        peak >> 20,
        bound >> 20
    );
    assert!(peak <= bound, "peak RSS {peak} B above the bound {bound} B");
    let overload = dropped(metrics, "overload");
    let egress_full = dropped(metrics, "egress_full");
    eprintln!("overload: dropped overload {overload}, egress_full {egress_full}");
    assert!(overload > 0, "the pool never overflowed");
    assert!(egress_full > 0, "the egress queue never overflowed");
    assert!(http_get(metrics, "/health").starts_with("HTTP/1.1 200"));

    // The next hop reads again: the node forwards its backlog (every packet it forwarded is
    // then sent or counted as an egress_full drop, or as next_hop_unreachable when the hop
    // took nothing for the unreachable bound and the node gave that batch up: the queue is
    // empty), then fresh packets.
    // Fresh packets sent before the backlog drained could meet a still-full queue and be
    // dropped, rightly: so they go after it.
    sink.reading.store(true, Ordering::Relaxed);
    wait_until(metrics, "the backlog was not forwarded", || {
        let forwarded = metric(metrics, "lethe_packets_forwarded_total");
        metric(metrics, "lethe_packets_sent_total")
            + dropped(metrics, "egress_full")
            + dropped(metrics, "next_hop_unreachable")
            >= forwarded
    });
    let mut fresh_stream = TcpStream::connect(entry).unwrap();
    fresh_stream.write_all(&fresh).unwrap();
    let wanted: Vec<u64> = (PACKETS as u64..PACKETS as u64 + 5).collect();
    let mut opened: Vec<u64> = Vec::new();
    wait_until(metrics, "fresh packets were not forwarded", || {
        let packets: Vec<Vec<u8>> = std::mem::take(&mut *sink.packets.lock().unwrap());
        opened.extend(packets.into_iter().map(|p| open(&gateway, p)));
        wanted.iter().all(|w| opened.contains(w))
    });
    assert!(opened.len() > wanted.len(), "the backlog was not forwarded");
    mixnode.terminate();
    let _ = std::fs::remove_dir_all(&dir);
}

//! Multi-process overload: a `lethe mixnode` whose next hop accepts but does not read, fed as
//! fast as possible with many more unique packets than its pool and queues hold. Its memory
//! stays within what its configuration bounds, the excess is dropped and counted by reason,
//! `/health` keeps answering, and it forwards again once the next hop reads.
//! Bounded in packets and time; no speed is asserted.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
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

const LETHE: &str = env!("CARGO_BIN_EXE_lethe");
const TIMEOUT: Duration = Duration::from_secs(120);
/// Unique packets offered: ~29 MB of regular frames, far beyond the pool and egress queue.
const PACKETS: usize = 12_000;
const POOL_BUFFERS: u32 = 256;
const EGRESS_QUEUE_PACKETS: u32 = 256;
const TIMER_ENTRIES: u32 = 1_024;
/// Every fourth packet waits 1 s: more in flight than the pool holds at any rate above
/// 1024 packets/s, so the pool overflows (overload drops); the others go straight to the
/// stalled egress queue, which overflows too (egress_full drops).
const DELAY_MS: u64 = 1_000;
const DELAYED_EVERY: usize = 4;
/// Allocator, glommio and kernel-accounting noise on top of the configured memory.
const RSS_SLACK_BYTES: u64 = 16 << 20;

struct Process {
    child: Child,
    lines: std::collections::HashMap<String, String>,
}

impl Process {
    fn start(args: &[&str], keys: &[&str]) -> Process {
        let mut child = Command::new(LETHE)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut reader = BufReader::new(child.stdout.take().unwrap());
        let mut lines = std::collections::HashMap::new();
        for _ in 0..16 {
            if keys.iter().all(|k| lines.contains_key(*k)) {
                break;
            }
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap() == 0 {
                panic!("lethe {args:?} exited before printing {keys:?}");
            }
            if let Some((k, v)) = line.trim().split_once('=') {
                lines.insert(k.to_string(), v.to_string());
            }
        }
        Process { child, lines }
    }

    fn addr(&self, key: &str) -> SocketAddr {
        self.lines[key].parse().unwrap()
    }

    /// `VmRSS` or `VmHWM` (peak) of the process, in bytes.
    fn memory_bytes(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = status
            .lines()
            .find(|l| l.starts_with(field))
            .unwrap_or_else(|| panic!("no {field}"));
        let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        kb * 1024
    }

    fn terminate(mut self) {
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + TIMEOUT;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "node exited with {status}");
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("node did not stop after SIGTERM");
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lethe-overload-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn init(dir: &Path) {
    let status = Command::new(LETHE)
        .args(["mixnode", "init", "--dir", dir.to_str().unwrap()])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
}

fn read_public(path: &Path) -> [u8; 32] {
    let text = std::fs::read_to_string(path).unwrap();
    let text = text.trim();
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).unwrap();
    }
    out
}

fn http_get(metrics: SocketAddr, path: &str) -> String {
    let mut stream = TcpStream::connect(metrics).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: lethe\r\n\r\n").unwrap();
    let mut body = String::new();
    stream.read_to_string(&mut body).unwrap();
    body
}

fn metric(metrics: SocketAddr, name: &str) -> u64 {
    let body = http_get(metrics, "/metrics");
    let line = body
        .lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .unwrap_or_else(|| panic!("no metric {name}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

fn dropped(metrics: SocketAddr, reason: &str) -> u64 {
    metric(
        metrics,
        &format!("lethe_packets_dropped_total{{reason=\"{reason}\"}}"),
    )
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
            let first_ms = if i % DELAYED_EVERY == 0 { delay_ms } else { 0 };
            let delays = [
                Delay::new_from_nanos(first_ms * 1_000_000),
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
    init(&dir);
    let sink = StalledSink::start();
    let timer_entries = TIMER_ENTRIES.to_string();
    let pool = POOL_BUFFERS.to_string();
    let queue = EGRESS_QUEUE_PACKETS.to_string();
    let args = [
        "mixnode",
        "run",
        "--dir",
        dir.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "127.0.0.1:0",
        "--cores",
        "1",
        "--replay-packets-per-s",
        "200",
        "--replay-key-lifetime-s",
        "3600",
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
    let mixnode = Process::start(&args, &["listen", "metrics"]);
    let (entry, metrics) = (mixnode.addr("listen"), mixnode.addr("metrics"));
    let gateway = StaticSecret::from([44u8; 32]);
    let route = [
        node(
            entry,
            read_public(&dir.join("keys/x25519_sphinx_primary.pub")),
        ),
        node(
            sink.addr,
            x25519_dalek::PublicKey::from(&gateway).to_bytes(),
        ),
    ];
    let offered = frames(&route, 0..PACKETS, DELAY_MS);
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
    let deadline = Instant::now() + TIMEOUT;
    while !feeder.is_finished() {
        assert!(Instant::now() < deadline, "feeding did not finish");
        rss_max = rss_max.max(mixnode.memory_bytes("VmRSS:"));
        assert!(http_get(metrics, "/health").starts_with("HTTP/1.1 200"));
        std::thread::sleep(Duration::from_millis(50));
    }
    let _connection = feeder.join().unwrap();
    // Everything offered was read and either queued or dropped.
    let deadline = Instant::now() + TIMEOUT;
    while metric(metrics, "lethe_packets_received_total") < PACKETS as u64 {
        assert!(
            Instant::now() < deadline,
            "the node did not read everything"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
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

    // The next hop reads again: the node forwards its backlog, then fresh packets.
    sink.reading.store(true, Ordering::Relaxed);
    let mut fresh_stream = TcpStream::connect(entry).unwrap();
    fresh_stream.write_all(&fresh).unwrap();
    let wanted: Vec<u64> = (PACKETS as u64..PACKETS as u64 + 5).collect();
    let deadline = Instant::now() + TIMEOUT;
    let mut opened: Vec<u64> = Vec::new();
    loop {
        let packets: Vec<Vec<u8>> = std::mem::take(&mut *sink.packets.lock().unwrap());
        opened.extend(packets.into_iter().map(|p| open(&gateway, p)));
        if wanted.iter().all(|w| opened.contains(w)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "fresh packets were not forwarded"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(opened.len() > wanted.len(), "the backlog was not forwarded");
    mixnode.terminate();
    let _ = std::fs::remove_dir_all(&dir);
}

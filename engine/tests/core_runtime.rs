//! The glommio runtime on loopback: frames in over TCP, processed, forwarded after their delay
//! to a sink over TCP; replays and garbage counted; shutdown ends every core.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod core_common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use core_common::*;
use lethe_crypto::framing::{
    encode_frame_to_vec, FrameDecoder, FrameHeader, FramingVersion, PacketSize,
};
use lethe_engine::metrics::{CoreMetrics, DropReason};
use lethe_engine::runtime::{final_hop_channel, EgressConfig, Runtime, RuntimeConfig};

fn runtime_config(cores: u32) -> RuntimeConfig {
    RuntimeConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        cores,
        cpus: Vec::new(),
        engine: config(),
        egress: EgressConfig {
            framing: FramingVersion::V7,
            queue_packets_max: 256,
            frame_bytes_max: 2_560,
            backoff_ms_initial: 50,
            backoff_ms_max: 1_000,
            connect_timeout_ms: 1_000,
        },
        shutdown_grace_ms: 2_000,
        io_memory_bytes: 128 * 1024,
        ring_depth: 128,
        deliver_final_hops: false,
        ignore_rotation_byte: false,
        spin_before_park_us: lethe_engine::runtime::SPIN_BEFORE_PARK_US_DEFAULT,
    }
}

/// Accepts connections and sends every decoded packet (bytes) to the channel.
fn sink() -> (SocketAddr, mpsc::Receiver<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(16) {
            let Ok(mut stream) = stream else { return };
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut decoder = FrameDecoder::new();
                let mut buf = vec![0u8; 65_536];
                stream
                    .set_read_timeout(Some(Duration::from_secs(30)))
                    .unwrap();
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 {
                        return;
                    }
                    let _ = decoder.feed(&buf[..n], |frame| {
                        if let Ok(frame) = frame {
                            let _ = tx.send(frame.packet.to_vec());
                        }
                    });
                }
            });
        }
    });
    (addr, rx)
}

fn frame(packet: &[u8]) -> Vec<u8> {
    let size = PacketSize::from_sphinx_packet_len(packet.len()).unwrap();
    let mut out = Vec::new();
    encode_frame_to_vec(&FrameHeader::v7(size), packet, &mut out).unwrap();
    out
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if done() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("timed out waiting for {what}");
}

#[test]
fn forwards_over_loopback_and_counts_drops() {
    let mut r = rng(11);
    let (this, next) = (secret(&mut r), secret(&mut r));
    let (sink_addr, received) = sink();
    let route = [(public(&this), 1), (public(&next), sink_addr.port())];
    let packets: Vec<Vec<u8>> = (0..20)
        .map(|_| packet(&mut r, &route, &[30_000_000, 0]))
        .collect();
    let runtime = Runtime::start(runtime_config(1), one_key(this, 2), filters(&[2])).unwrap();
    let sent_at = Instant::now();
    let mut stream = TcpStream::connect(runtime.local_addr()).unwrap();
    let mut bytes = Vec::new();
    for p in &packets {
        bytes.extend(frame(p));
    }
    bytes.extend(frame(&packets[0])); // replay
    let mut garbage = packets[1].clone();
    garbage[70] ^= 0x55;
    bytes.extend(frame(&garbage)); // MAC fails
    bytes.extend([7u8, 1, 9]); // unknown packet type: frame skipped
    bytes.extend(vec![0u8; PacketSize::Regular.packet_len()]);
    bytes.extend(frame(&packets[2])); // replay after the skipped frame: framing held
    stream.write_all(&bytes).unwrap();
    let mut got = Vec::new();
    for _ in 0..20 {
        got.push(received.recv_timeout(Duration::from_secs(20)).unwrap());
    }
    assert!(
        sent_at.elapsed() >= Duration::from_millis(30),
        "left before its delay"
    );
    assert!(received.recv_timeout(Duration::from_millis(300)).is_err());
    let m = runtime.metrics()[0].clone();
    wait_for("drop counters", || {
        m.dropped_count(DropReason::Replayed) == 2
    });
    assert_eq!(m.dropped_count(DropReason::Malformed), 2);
    assert_eq!(CoreMetrics::get(&m.packets_sent), 20);
    runtime.shutdown();
    runtime.join().unwrap();
    assert!(got.iter().all(|p| p.len() == packets[0].len()));
}

#[test]
fn final_hops_go_to_the_gateway_hand_off_and_overflow_is_counted() {
    let mut r = rng(14);
    let this = secret(&mut r);
    let packets: Vec<Vec<u8>> = (0..4)
        .map(|_| packet(&mut r, &[(public(&this), 1)], &[0]))
        .collect();
    let mut config = runtime_config(1);
    config.deliver_final_hops = true;
    let (sender, final_hops) = final_hop_channel(2);
    let runtime =
        Runtime::start_with_final_hops(config, one_key(this, 2), filters(&[2]), Some(sender))
            .unwrap();
    let mut stream = TcpStream::connect(runtime.local_addr()).unwrap();
    let bytes: Vec<u8> = packets.iter().flat_map(|p| frame(p)).collect();
    stream.write_all(&bytes).unwrap();
    let m = runtime.metrics()[0].clone();
    wait_for("the hand-off to fill", || {
        m.dropped_count(DropReason::FinalHopQueueFull) == 2
    });
    assert_eq!(m.dropped_count(DropReason::FinalHopAtMixnode), 0);
    for _ in 0..2 {
        let hop = final_hops.recv_timeout(Duration::from_secs(20)).unwrap();
        assert_eq!((hop.destination, hop.identifier), ([7; 32], [9; 16]));
        assert_eq!(hop.packet.len(), packets[0].len());
    }
    runtime.shutdown();
    runtime.join().unwrap();
}

#[test]
fn two_cores_share_the_port_and_stop() {
    let mut r = rng(12);
    let this = secret(&mut r);
    let runtime = Runtime::start(runtime_config(2), one_key(this, 2), filters(&[2])).unwrap();
    assert_ne!(runtime.local_addr().port(), 0);
    for _ in 0..4 {
        TcpStream::connect(runtime.local_addr()).unwrap();
    }
    runtime.shutdown();
    runtime.join().unwrap();
}

#[test]
fn installed_keys_take_effect_without_restart() {
    let mut r = rng(13);
    let (old, new) = (secret(&mut r), secret(&mut r));
    let (sink_addr, received) = sink();
    let route_new = [
        (public(&new), 1),
        (public(&secret(&mut r)), sink_addr.port()),
    ];
    let runtime =
        Runtime::start(runtime_config(1), one_key(old.clone(), 1), filters(&[1])).unwrap();
    let overlap = lethe_engine::core::NodeKeys::new(
        lethe_engine::core::SphinxKey::new(2, new),
        Some(lethe_engine::core::SphinxKey::new(1, old)),
    );
    runtime.install_keys(&overlap, &filters(&[1, 2]));
    wait_for("keys applied", || runtime.keys_applied());
    let mut stream = TcpStream::connect(runtime.local_addr()).unwrap();
    stream
        .write_all(&frame(&packet(&mut r, &route_new, &[0, 0])))
        .unwrap();
    received.recv_timeout(Duration::from_secs(20)).unwrap();
    runtime.shutdown();
    runtime.join().unwrap();
}

/// A next hop that accepts and never reads, with a tiny receive buffer set before `listen` (so
/// the accepted socket has it, and the kernel does not autotune it): the node's writer is soon
/// stuck mid-batch on a full socket.
fn stalled_sink() -> (SocketAddr, mpsc::Receiver<TcpStream>) {
    use std::os::fd::FromRawFd;
    // SAFETY: plain socket calls on a descriptor created here and owned by the listener after
    // `from_raw_fd`; every pointer refers to a live local of the size passed.
    let listener = unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0);
        let size: libc::c_int = 4096;
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            std::ptr::from_ref(&size).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
        let mut sa: libc::sockaddr_in = std::mem::zeroed();
        sa.sin_family = libc::AF_INET as libc::sa_family_t;
        sa.sin_addr.s_addr = u32::from_ne_bytes([127, 0, 0, 1]);
        let bound = libc::bind(
            fd,
            std::ptr::from_ref(&sa).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        );
        assert_eq!(bound, 0);
        assert_eq!(libc::listen(fd, 16), 0);
        TcpListener::from_raw_fd(fd)
    };
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        if let Ok((stream, _)) = listener.accept() {
            let _ = tx.send(stream); // held open, never read
        }
    });
    (addr, rx)
}

#[test]
fn shutdown_counts_every_forwarded_packet_as_sent_or_dropped_even_mid_write() {
    // ~6 MB of small frames: more than the node's send buffer absorbs (it autotunes up to
    // tcp_wmem's 4 MiB maximum), so the writer is left mid-batch on the full socket.
    const PACKETS: u64 = 16_000;
    let mut r = rng(23);
    let (this, next) = (secret(&mut r), secret(&mut r));
    let (sink_addr, held) = stalled_sink();
    let route = [(public(&this), 1), (public(&next), sink_addr.port())];
    let mut bytes = Vec::new();
    for _ in 0..PACKETS {
        bytes.extend(frame(&packet(&mut r, &route, &[0, 0])));
    }
    let mut config = runtime_config(1);
    config.shutdown_grace_ms = 200;
    let runtime = Runtime::start(config, one_key(this, 2), filters(&[2])).unwrap();
    let m = runtime.metrics()[0].clone();
    let mut stream = TcpStream::connect(runtime.local_addr()).unwrap();
    stream.write_all(&bytes).unwrap();
    let _held = held.recv_timeout(Duration::from_secs(20)).unwrap();
    wait_for("every frame read", || {
        CoreMetrics::get(&m.frames_received) == PACKETS
    });
    // The writer has a batch in flight on the full socket (nothing reads it) when we stop.
    runtime.shutdown();
    runtime.join().unwrap();
    let forwarded = CoreMetrics::get(&m.packets_forwarded);
    let sent = CoreMetrics::get(&m.packets_sent);
    let full = m.dropped_count(DropReason::EgressFull);
    let shutdown = m.dropped_count(DropReason::Shutdown);
    assert!(forwarded > 0);
    assert!(
        shutdown > 0,
        "the stalled batch must be counted at shutdown"
    );
    assert_eq!(
        forwarded,
        sent + full + shutdown,
        "forwarded {forwarded} = sent {sent} + egress_full {full} + shutdown {shutdown}"
    );
}

#[test]
fn a_polling_time_above_the_maximum_is_a_configuration_error() {
    let mut r = rng(29);
    let mut config = runtime_config(1);
    config.spin_before_park_us = lethe_engine::runtime::SPIN_BEFORE_PARK_US_MAX + 1;
    match Runtime::start(config, one_key(secret(&mut r), 2), filters(&[2])) {
        Err(e) => assert!(e.to_string().contains("spin_before_park_us"), "{e}"),
        Ok(_) => panic!("a polling time above the maximum was accepted"),
    }
}

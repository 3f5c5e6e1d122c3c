//! Helpers for the core tests: keys, replay filters, packets built with `sphinx::create`.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use lethe_crypto::framing::{
    encode_frame_to_vec, FrameDecoder, FrameHeader, FramingVersion, PacketSize,
};
use lethe_crypto::sphinx::{self, address, Destination, PacketSpec, RouteHop, Version};
use lethe_engine::core::{Core, NodeKeys, SphinxKey};
use lethe_engine::metrics::CoreMetrics;
use lethe_engine::runtime::{EgressConfig, RuntimeConfig};
use lethe_engine::{EngineConfig, ReplayFilter, ReplayFilterSet, ReplayParams};
use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};
use x25519_dalek::{PublicKey, StaticSecret};

pub const PAYLOAD: usize = PacketSize::Ack.payload_len();
/// Upper bound of any wait for the node: generous, so a loaded machine is slow, never wrong.
/// Two cores shared by several test binaries, each test's core threads spinning before they
/// park, stretch 16,000 packets of Sphinx work past 20 s (a run under load 17 timed out there).
pub const WAIT_MAX: Duration = Duration::from_secs(120);

pub fn rng(seed: u64) -> ChaCha20Rng {
    ChaCha20Rng::seed_from_u64(seed)
}

pub fn secret(rng: &mut ChaCha20Rng) -> StaticSecret {
    StaticSecret::random_from_rng(rng)
}

pub fn public(secret: &StaticSecret) -> [u8; 32] {
    PublicKey::from(secret).to_bytes()
}

pub fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

pub fn config() -> EngineConfig {
    EngineConfig {
        timer_tick_us: 10,
        timer_entries_max: 1_024,
        pool_buffers_count: 1_024,
        pool_buffer_bytes: 2_560,
        batch_packets_max: 4,
        batch_flush_us: 100,
        ..EngineConfig::default()
    }
}

pub fn filters(rotation_ids: &[u32]) -> ReplayFilterSet {
    let mut set = ReplayFilterSet::default();
    for &id in rotation_ids {
        let params = ReplayParams::for_items(100_000, 1e-6, 1).unwrap();
        set.insert(Arc::new(ReplayFilter::new(id, params))).unwrap();
    }
    set
}

pub fn core_with(config: EngineConfig, keys: NodeKeys, rotation_ids: &[u32]) -> Core {
    let metrics = Arc::new(CoreMetrics::default());
    Core::new(config, keys, filters(rotation_ids), metrics, 0)
}

pub fn one_key(secret: StaticSecret, rotation_id: u32) -> NodeKeys {
    NodeKeys::new(SphinxKey::new(rotation_id, secret), None)
}

/// A packet through `hops` (public key, port) with per-hop delays, to a fixed destination.
pub fn packet(rng: &mut ChaCha20Rng, hops: &[([u8; 32], u16)], delays_ns: &[u64]) -> Vec<u8> {
    let route: Vec<RouteHop> = hops
        .iter()
        .map(|(key, port)| RouteHop {
            address: address::encode(&addr(*port)),
            public_key: *key,
        })
        .collect();
    let destination = Destination {
        address: [7; 32],
        identifier: [9; 16],
    };
    let spec = PacketSpec {
        route: &route,
        delays_ns,
        destination: &destination,
        version: Version::CURRENT,
    };
    let mut message = [0u8; 4];
    rng.fill_bytes(&mut message);
    sphinx::create(&message, PAYLOAD, &spec, None, rng).unwrap()
}

// ---- the glommio runtime on loopback ----

pub fn runtime_config(cores: u32) -> RuntimeConfig {
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
            unreachable_drop_ms: lethe_engine::runtime::egress::UNREACHABLE_DROP_MS_DEFAULT,
        },
        ingress: lethe_engine::runtime::IngressLimits::DEFAULT,
        shutdown_grace_ms: 2_000,
        io_memory_bytes: 128 * 1024,
        ring_depth: 128,
        deliver_final_hops: false,
        ignore_rotation_byte: false,
        spin_before_park_us: lethe_engine::runtime::SPIN_BEFORE_PARK_US_DEFAULT,
    }
}

/// Accepts connections and sends every decoded packet (bytes) to the channel.
pub fn sink() -> (SocketAddr, mpsc::Receiver<Vec<u8>>) {
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
                stream.set_read_timeout(Some(WAIT_MAX)).unwrap();
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

pub fn frame(packet: &[u8]) -> Vec<u8> {
    let size = PacketSize::from_sphinx_packet_len(packet.len()).unwrap();
    let mut out = Vec::new();
    encode_frame_to_vec(&FrameHeader::v7(size), packet, &mut out).unwrap();
    out
}

/// Waits until `done`, at most [`WAIT_MAX`].
pub fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT_MAX;
    while Instant::now() < deadline {
        if done() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("timed out waiting for {what}");
}

//! `node-efficiency`: how close one engine core gets to the Sphinx crypto's own rate.
//!
//! 1. crypto alone: the engine's Sphinx seam (`core::process_batch`) over unique packets, one
//!    thread: `crypto_pps_per_core`;
//! 2. the node: a one-core glommio runtime fed over loopback TCP with a pre-built corpus of
//!    unique packets (2 hops, zero delay) forwarding to a sink; `node_pps_per_core` = packets
//!    at the sink / time from first byte sent to last packet received;
//! 3. latency: a fresh corpus paced at 70% of that rate; per packet, sink arrival minus send
//!    time (the sink recognises packets by their next-hop alpha, computed at build time).
//!
//! Prints one JSON line. Bounded: every phase has a packet budget and a 20 s timeout.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use lethe_crypto::framing::{
    encode_frame_to_vec, FrameDecoder, FrameHeader, FramingVersion, KeyRotation, PacketSize,
};
use lethe_crypto::sphinx::keys::blind_alpha;
use lethe_crypto::sphinx::{self, address, Destination, PacketSpec, RouteHop, Version};
use lethe_engine::core::{
    process_batch, BatchScratch, NodeKeys, Outcome, PacketSlots, ReplayVerdict, SphinxKey,
};
use lethe_engine::runtime::{EgressConfig, Runtime, RuntimeConfig};
use lethe_engine::{EngineConfig, ReplayFilter, ReplayFilterSet, ReplayParams};
use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};
use x25519_dalek::{PublicKey, StaticSecret};

const PHASE_TIMEOUT: Duration = Duration::from_secs(20);
const SIZE: PacketSize = PacketSize::Regular;

struct Corpus {
    frames: Vec<Vec<u8>>,
    packets: Vec<Vec<u8>>,
    /// The alpha each packet carries after the node: how the sink recognises it.
    next_alphas: Vec<[u8; 32]>,
}

fn corpus(rng: &mut ChaCha20Rng, count: usize, node: &[u8; 32], sink: SocketAddr) -> Corpus {
    let route = [
        RouteHop {
            address: address::encode(&"127.0.0.1:1".parse().unwrap()),
            public_key: *node,
        },
        RouteHop {
            address: address::encode(&sink),
            public_key: PublicKey::from(&StaticSecret::from([3u8; 32])).to_bytes(),
        },
    ];
    let destination = Destination {
        address: [1; 32],
        identifier: [0; 16],
    };
    let spec = PacketSpec {
        route: &route,
        delays_ns: &[0, 0],
        destination: &destination,
        version: Version::CURRENT,
    };
    let mut out = Corpus {
        frames: Vec::with_capacity(count),
        packets: Vec::with_capacity(count),
        next_alphas: Vec::with_capacity(count),
    };
    let mut packet = vec![0u8; SIZE.packet_len()];
    for _ in 0..count {
        let mut message = [0u8; 16];
        rng.fill_bytes(&mut message);
        let secrets = sphinx::create_into(&mut packet, &message, &spec, None, rng).unwrap();
        let first = secrets.hop(0).unwrap();
        out.next_alphas
            .push(blind_alpha(&first.expanded, &secrets.alpha));
        let mut frame = Vec::new();
        encode_frame_to_vec(&FrameHeader::v7(SIZE), &packet, &mut frame).unwrap();
        out.frames.push(frame);
        out.packets.push(packet.clone());
    }
    out
}

fn filters(items: u64) -> ReplayFilterSet {
    let mut set = ReplayFilterSet::default();
    let params = ReplayParams::for_items(items.max(10_000), 1e-6, 1).unwrap();
    set.insert(Arc::new(ReplayFilter::new(2, params))).unwrap();
    set
}

struct Slots<'a> {
    packets: &'a mut [Vec<u8>],
}

impl PacketSlots for Slots<'_> {
    fn count(&self) -> u32 {
        self.packets.len() as u32
    }
    fn rotation(&self, _: u32) -> KeyRotation {
        KeyRotation::Unknown
    }
    fn packet_mut(&mut self, index: u32) -> &mut [u8] {
        &mut self.packets[index as usize]
    }
    fn packet(&self, index: u32) -> &[u8] {
        &self.packets[index as usize]
    }
    fn with_packets_mut(&mut self, indices: &[usize], f: &mut dyn FnMut(&mut [&mut [u8]])) {
        sphinx::with_slice_packets(self.packets, indices, f);
    }
}

/// Packets per second of the Sphinx seam alone, in batches of 64.
fn crypto_pps(keys: &NodeKeys, mut packets: Vec<Vec<u8>>) -> f64 {
    let replay = filters(packets.len() as u64);
    let mut outcomes = Vec::with_capacity(64);
    let mut scratch = BatchScratch::new(64);
    let started = Instant::now();
    for chunk in packets.chunks_mut(64) {
        let check = |id, tag: &_| match replay.check_and_insert(id, tag) {
            Some(false) => ReplayVerdict::Fresh,
            Some(true) => ReplayVerdict::Replayed,
            None => ReplayVerdict::NoFilter,
        };
        process_batch(
            &mut Slots { packets: chunk },
            keys,
            check,
            &mut scratch,
            &mut outcomes,
        );
        assert!(outcomes
            .iter()
            .all(|o| matches!(o, Outcome::Forward { .. })));
    }
    packets.len() as f64 / started.elapsed().as_secs_f64()
}

/// A sink that reports (next-hop alpha, arrival) for every packet, until `expected` arrived.
fn sink(listener: TcpListener, expected: usize) -> mpsc::Receiver<Vec<([u8; 32], Instant)>> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        stream.set_read_timeout(Some(PHASE_TIMEOUT)).unwrap();
        let mut decoder = FrameDecoder::new();
        let mut buffer = vec![0u8; 256 * 1024];
        let mut seen = Vec::with_capacity(expected);
        while seen.len() < expected {
            let Ok(n) = stream.read(&mut buffer) else {
                break;
            };
            if n == 0 {
                break;
            }
            let now = Instant::now();
            let _ = decoder.feed(&buffer[..n], |frame| {
                if let Ok(frame) = frame {
                    seen.push((frame.packet[..32].try_into().unwrap(), now));
                }
            });
        }
        let _ = tx.send(seen);
    });
    rx
}

fn runtime_config() -> RuntimeConfig {
    let cpus = if std::thread::available_parallelism().map_or(1, |n| n.get()) > 1 {
        vec![1] // leave CPU 0 to the feeder, the sink and interrupts
    } else {
        Vec::new()
    };
    RuntimeConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        cores: 1,
        cpus,
        engine: EngineConfig {
            pool_buffers_count: 1 << 16,
            timer_entries_max: 1 << 16,
            ..EngineConfig::default()
        },
        egress: EgressConfig {
            framing: FramingVersion::V7,
            key_rotation: KeyRotation::Unknown,
            // Holds the whole corpus: the saturation phase offers it all at once, faster than the
            // sink drains; this measures the node, not the egress bound.
            queue_packets_max: 1 << 16,
            frame_bytes_max: 2_560,
            backoff_ms_initial: 10,
            backoff_ms_max: 1_000,
            connect_timeout_ms: 1_000,
        },
        shutdown_grace_ms: 1_000,
        io_memory_bytes: 128 * 1024,
        ring_depth: 128,
        deliver_final_hops: false,
    }
}

/// Sends `corpus` (paced at `rate_pps` if given) and returns per-packet latencies in µs and
/// the achieved rate.
fn run_node(
    keys: &NodeKeys,
    listener: TcpListener,
    corpus: &Corpus,
    rate_pps: Option<f64>,
) -> (Vec<u64>, f64) {
    let received = sink(listener, corpus.frames.len());
    let replay = filters(corpus.frames.len() as u64);
    let runtime = Runtime::start(runtime_config(), keys.clone(), replay).unwrap();
    let mut stream = TcpStream::connect(runtime.local_addr()).unwrap();
    stream.set_nodelay(true).unwrap();
    let started = Instant::now();
    let mut sent_at = Vec::with_capacity(corpus.frames.len());
    match rate_pps {
        None => {
            let mut all = Vec::with_capacity(corpus.frames.len() * SIZE.packet_len() + 1);
            for frame in &corpus.frames {
                all.extend_from_slice(frame);
            }
            sent_at.resize(corpus.frames.len(), started);
            stream.write_all(&all).unwrap();
        }
        Some(rate) => {
            // Sleeps until the next frame is due, then writes every frame due by then in one
            // write (never spins: on a 2-CPU box a spinning feeder starves the sink, whose
            // arrival times are the measurement). Latency runs from the actual write.
            let interval = Duration::from_secs_f64(1.0 / rate);
            let mut burst = Vec::with_capacity(64 * (SIZE.packet_len() + 64));
            let mut next = 0;
            while next < corpus.frames.len() {
                let due = started + interval * next as u32;
                let now = Instant::now();
                if now < due {
                    std::thread::sleep(due - now);
                    continue;
                }
                burst.clear();
                let at = Instant::now();
                while next < corpus.frames.len()
                    && started + interval * next as u32 <= at
                    && burst.len() < burst.capacity() - SIZE.packet_len() - 64
                {
                    burst.extend_from_slice(&corpus.frames[next]);
                    sent_at.push(at);
                    next += 1;
                }
                stream.write_all(&burst).unwrap();
            }
        }
    }
    let seen = received.recv_timeout(PHASE_TIMEOUT * 2).unwrap();
    let finished = seen.last().map_or(started, |(_, at)| *at);
    runtime.shutdown();
    runtime.join().unwrap();
    let rate = seen.len() as f64 / finished.duration_since(started).as_secs_f64();
    let index: HashMap<[u8; 32], usize> = corpus
        .next_alphas
        .iter()
        .enumerate()
        .map(|(i, a)| (*a, i))
        .collect();
    let mut latencies: Vec<u64> = seen
        .iter()
        .filter_map(|(alpha, at)| {
            index
                .get(alpha)
                .map(|&i| (*at - sent_at[i]).as_micros() as u64)
        })
        .collect();
    latencies.sort_unstable();
    assert_eq!(latencies.len(), corpus.frames.len(), "packets lost");
    (latencies, rate)
}

fn percentile(sorted: &[u64], q: f64) -> u64 {
    let index = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn main() {
    let mut rng = ChaCha20Rng::seed_from_u64(7);
    let node_secret = StaticSecret::from([9u8; 32]);
    let node_public = PublicKey::from(&node_secret).to_bytes();
    let keys = NodeKeys::new(SphinxKey::new(2, node_secret), None);
    let probe = corpus(
        &mut rng,
        2_000,
        &node_public,
        "127.0.0.1:9".parse().unwrap(),
    );
    let crypto = crypto_pps(&keys, probe.packets);

    // The sink listens before the corpus is built: its address is inside every packet.
    let count = ((crypto * 3.0) as usize).clamp(2_000, 40_000);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let saturation = corpus(
        &mut rng,
        count,
        &node_public,
        listener.local_addr().unwrap(),
    );
    let (_, node_pps) = run_node(&keys, listener, &saturation, None);

    // 70% of saturation by default; NODE_EFFICIENCY_LOAD=0.2 (say) to look at the floor.
    let load = std::env::var("NODE_EFFICIENCY_LOAD")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|v| *v > 0.0 && *v <= 1.0)
        .unwrap_or(0.7);
    let paced = load * node_pps;
    let count = ((paced * 3.0) as usize).clamp(1_000, 30_000);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let latency_corpus = corpus(
        &mut rng,
        count,
        &node_public,
        listener.local_addr().unwrap(),
    );
    let (latencies, _) = run_node(&keys, listener, &latency_corpus, Some(paced));
    println!(
        "{{\"node_pps_per_core\":{:.0},\"crypto_pps_per_core\":{:.0},\"efficiency\":{:.3},\
         \"p50_us\":{},\"p99_us\":{},\"latency_load\":{load},\"latency_rate_pps\":{:.0},\"packets_saturation\":{},\
         \"packets_latency\":{},\"packet_bytes\":{},\"batch_packets_max\":{},\"cores\":1,\
         \"cpus_machine\":{}}}",
        node_pps,
        crypto,
        node_pps / crypto,
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        paced,
        saturation.frames.len(),
        latency_corpus.frames.len(),
        SIZE.packet_len(),
        EngineConfig::default().batch_packets_max,
        std::thread::available_parallelism().map_or(1, |n| n.get()),
    );
}

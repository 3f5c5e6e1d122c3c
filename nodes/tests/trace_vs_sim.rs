//! Multi-process: the simulator against real nodes (issue 18's last check). A loopback network
//! of 3 layers x 2 `lethe mixnode` processes run with `--trace`, in front of the test's own
//! final hop (a listener standing in for the exit gateway), carries Poisson traffic with
//! exponential per-hop delays (mean `DELAY_MS_MEAN`); `lethe_sim` simulates a config with the
//! same per-mix arrival rate and delay. `lethe_sim::metrics` over both traces must agree on the
//! per-hop delay, per-mix entropy, queue occupancy, end-to-end latency and sender entropy
//! within `TOLERANCE`.
//!
//! The real side's per-hop delay comes from Little's law (mean occupancy / arrival rate): a
//! trace without lab columns has no per-packet residence. The test's part holds the endpoints,
//! as loadgen's does on a testnet: a `send` row per packet, and a `deliver` row per packet its
//! final hop read, named by the id the packet had on its last link, which the sender worked
//! out when it built the packet (`lethe_nodes::trace::hop_packet_id`; the test fails if a
//! delivery's id is not one of them). Each simulated message's SURB-ACK crosses the mixes too:
//! half of the real run's packets are labelled as ACKs sent by a gateway (not by a client), so
//! that the pools mix the same share of client packets.
//!
//! Full size: `LETHE_TRACE_VS_SIM_S=60 cargo test --release -p lethe-nodes --test trace_vs_sim
//! -- --nocapture` (default 20 s of traffic).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::*;

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lethe_crypto::framing::{encode_frame_to_vec, FrameDecoder, FrameHeader, PacketSize};
use lethe_crypto::sphinx::{self, address, Destination, PacketSpec, RouteHop, Version};
use lethe_engine::runtime::trace::{packet_id, trace_clock_ns};
use lethe_sim::metrics::{self, MetricsOptions, TraceMetrics};
use lethe_sim::sim::{LinkModel, SimConfig};
use lethe_sim::trace::{
    Class, Kind, NodeInfo, Role, TraceEvent, TraceMeta, TraceReader, TraceWriter,
};
use rand::RngExt;

const LAYERS: usize = 3;
const MIXES_PER_LAYER: usize = 2;
/// Mean of the exponential delay per mix hop: large enough that processing and scheduling noise
/// on a loaded 2-core machine (well under a ms per hop) stays a few % of it.
const DELAY_MS_MEAN: f64 = 50.0;
/// Packets per second into each mix: lambda/mu = 3 packets in each pool.
const MIX_ARRIVALS_PER_S: f64 = 60.0;
/// Simulated clients; each sends MIX_ARRIVALS_PER_S / SIM_CLIENTS messages/s, and each message's
/// SURB-ACK crosses the mixes too, so each mix sees 2 x clients x rate / 2 mixes per layer.
const SIM_CLIENTS: u32 = 6;
const SEND_S_DEFAULT: u64 = 20;
/// The simulation runs this many times the real run's length: simulated time is cheap, and a
/// longer run takes the simulator's own sampling noise out of the comparison.
const SIM_DURATION_FACTOR: u64 = 5;
const WARMUP_S: f64 = 2.0;
const DRAIN_S: f64 = 1.5;
/// Relative agreement asked of each compared metric.
const TOLERANCE: f64 = 0.10;

fn send_s() -> u64 {
    std::env::var("LETHE_TRACE_VS_SIM_S")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|&s| (5..=3_600).contains(&s))
        .unwrap_or(SEND_S_DEFAULT)
}

fn options() -> MetricsOptions {
    MetricsOptions {
        warmup_ns: (WARMUP_S * 1e9) as u64,
        drain_ns: (DRAIN_S * 1e9) as u64,
        labelled: None,
    }
}

/// The compared figures of one trace.
#[derive(Debug)]
struct Compared {
    hop_delay_ms_mean: f64,
    mix_entropy_bits_mean: f64,
    occupancy_mean: f64,
    end_to_end_ms_mean: f64,
    sender_entropy_bits_mean: f64,
}

fn compared(m: &TraceMetrics) -> Compared {
    let mixes = &m.queue.mixes;
    let occupancy_mean = mixes.iter().map(|x| x.mean).sum::<f64>() / mixes.len() as f64;
    Compared {
        // Little's law: mean residence = mean occupancy / arrival rate = ratio x 1/mu.
        hop_delay_ms_mean: m.queue.mean_ratio * DELAY_MS_MEAN,
        mix_entropy_bits_mean: m.mix_entropy_bits_mean,
        occupancy_mean,
        end_to_end_ms_mean: m.latency.end_to_end_ms.mean,
        sender_entropy_bits_mean: m.sender.entropy_bits.mean,
    }
}

/// The test's final hop: reads frames from the last layer's mixes and notes when each packet
/// (by its id on that link) arrived, until `stop`.
struct FinalHop {
    addr: SocketAddr,
    arrivals: Arc<Mutex<Vec<(u64, u64)>>>,
    stop: Arc<AtomicBool>,
}

impl FinalHop {
    fn start() -> FinalHop {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let arrivals = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (held, stopping) = (arrivals.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stopping.load(Ordering::Relaxed) {
                let Ok((stream, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                let (held, stopping) = (held.clone(), stopping.clone());
                std::thread::spawn(move || read_frames(stream, &held, &stopping));
            }
        });
        FinalHop {
            addr,
            arrivals,
            stop,
        }
    }

    fn arrived(&self) -> Vec<(u64, u64)> {
        self.arrivals.lock().unwrap().clone()
    }
}

impl Drop for FinalHop {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn read_frames(mut stream: TcpStream, arrivals: &Mutex<Vec<(u64, u64)>>, stop: &AtomicBool) {
    stream.set_nonblocking(false).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut decoder = FrameDecoder::new();
    let mut buffer = vec![0u8; 64 * 1024];
    lethe_nodes::sink::read_until_stopped(&mut stream, &mut buffer, stop, |bytes| {
        let t_ns = trace_clock_ns();
        let mut read = Vec::new();
        decoder
            .feed(bytes, |frame| {
                read.push((t_ns, packet_id(frame.unwrap().packet)))
            })
            .unwrap();
        arrivals.lock().unwrap().extend(read);
        std::ops::ControlFlow::Continue(())
    });
}

/// What the sender built: the packet, when it is due, where it enters, who sent it (a client
/// index, or `None` for an ACK from the gateway) and its id on the last link.
struct Planned {
    at_ns: u64,
    first: usize,
    packet: Vec<u8>,
    client: Option<u32>,
    exit_id: u64,
}

fn simulate(dir: &Path, send_s: u64) -> TraceMetrics {
    let mut config = SimConfig::small(7);
    config.duration_ms = send_s * 1_000 * SIM_DURATION_FACTOR;
    config.layers = LAYERS as u32;
    config.mixes_per_layer = MIXES_PER_LAYER as u32;
    config.clients = SIM_CLIENTS;
    config.delay_ms_mean = DELAY_MS_MEAN;
    config.message_rate_per_s =
        MIX_ARRIVALS_PER_S * MIXES_PER_LAYER as f64 / (2.0 * f64::from(SIM_CLIENTS));
    config.link = LinkModel {
        latency_us: 100,
        jitter_us: 0,
        latency_us_matrix: None,
    };
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("trace.csv");
    lethe_sim::sim::run(&config, &path, "test").unwrap();
    metrics::compute(&path, &options()).unwrap()
}

struct Mix {
    process: Process,
    addr: SocketAddr,
    key: [u8; 32],
    layer: usize,
}

fn start_mix(root: &Path, index: usize, layer: usize) -> Mix {
    let dir = root.join(format!("mix{index}"));
    init("mixnode", &dir);
    let part = root.join("run/parts").join(format!("mix{index}.csv"));
    let mut args = vec!["mixnode", "run", "--dir", dir.to_str().unwrap()];
    args.extend_from_slice(&SMALL_NODE);
    args.extend_from_slice(&["--shutdown-grace-ms", "3000", "--trace"]);
    args.push(part.to_str().unwrap());
    let process = Process::start(&args, &["listen", "metrics"]);
    let key =
        lethe_nodes::keyfile::read_public(&dir.join("keys/x25519_sphinx_primary.pub")).unwrap();
    let addr = process.addr("listen");
    Mix {
        process,
        addr,
        key,
        layer,
    }
}

fn exponential_ns(rng: &mut impl rand::Rng, mean_ms: f64) -> u64 {
    let u: f64 = rng.random::<f64>().max(1e-12);
    (-u.ln() * mean_ms * 1e6) as u64
}

/// The real run: returns the run directory (parts merged into `trace.csv`).
fn real_run(root: &Path, send_s: u64) -> std::path::PathBuf {
    std::fs::create_dir_all(root.join("run/parts")).unwrap();
    let final_hop = FinalHop::start();
    let sink_addr = final_hop.addr;
    let mixes: Vec<Mix> = (0..LAYERS * MIXES_PER_LAYER)
        .map(|i| start_mix(root, i + 1, i / MIXES_PER_LAYER + 1))
        .collect();

    // The sender's part: its sends, and the topology it routes through (roles for the merge).
    let mut meta = TraceMeta::new("testnet", 0, "trace_vs_sim".into(), "test".into());
    meta.layers = LAYERS as u32;
    meta.delay_mean_ns = (DELAY_MS_MEAN * 1e6) as u64;
    for client in 0..SIM_CLIENTS {
        meta.nodes.push(NodeInfo {
            name: format!("c{client}"),
            role: Role::Client,
            layer: None,
            corrupt: false,
        });
    }
    // Sends the ACK-labelled packets: not a client, so it is no candidate sender.
    let ack_sender = meta.nodes.len() as u32;
    meta.nodes.push(NodeInfo {
        name: "g-acks".into(),
        role: Role::Gateway,
        layer: Some(0),
        corrupt: false,
    });
    let first_mix = meta.nodes.len() as u32;
    for mix in &mixes {
        meta.nodes.push(NodeInfo {
            name: mix.addr.to_string(),
            role: Role::Mix,
            layer: Some(mix.layer as u32),
            corrupt: false,
        });
    }
    let exit_node = meta.nodes.len() as u32;
    meta.nodes.push(NodeInfo {
        name: sink_addr.to_string(),
        role: Role::Gateway,
        layer: Some(0),
        corrupt: false,
    });
    let mut writer = TraceWriter::create(&root.join("run/parts/c0.csv"), meta).unwrap();

    // Poisson sends into the first layer, routes uniform per layer: built before sending.
    let mut rng = rand::rng();
    let total_per_s = MIX_ARRIVALS_PER_S * MIXES_PER_LAYER as f64;
    let mut schedule = Vec::new();
    let mut at_ns = 0u64;
    let destination = Destination {
        address: [7; 32],
        identifier: [0; 16],
    };
    let sink_hop = RouteHop {
        address: address::encode(&sink_addr),
        public_key: [9; 32],
    };
    loop {
        at_ns += exponential_ns(&mut rng, 1e3 / total_per_s);
        if at_ns >= send_s * 1_000_000_000 {
            break;
        }
        let picks: Vec<usize> = (0..LAYERS)
            .map(|l| l * MIXES_PER_LAYER + rng.random_range(0..MIXES_PER_LAYER))
            .collect();
        let mut route: Vec<RouteHop> = picks
            .iter()
            .map(|&m| RouteHop {
                address: address::encode(&mixes[m].addr),
                public_key: mixes[m].key,
            })
            .collect();
        route.push(sink_hop);
        let mut delays_ns: Vec<u64> = (0..LAYERS)
            .map(|_| exponential_ns(&mut rng, DELAY_MS_MEAN))
            .collect();
        delays_ns.push(0);
        let spec = PacketSpec {
            route: &route,
            delays_ns: &delays_ns,
            destination: &destination,
            version: Version::CURRENT,
        };
        let message = (schedule.len() as u64).to_le_bytes();
        let mut packet = vec![0u8; PacketSize::Regular.packet_len()];
        let secrets = sphinx::create_into(&mut packet, &message, &spec, None, &mut rng).unwrap();
        let exit_id = lethe_nodes::trace::hop_packet_id(&packet, &secrets, LAYERS).unwrap();
        // Half real messages from a uniform client, half ACKs (as in the simulation).
        let client = rng
            .random_bool(0.5)
            .then(|| rng.random_range(0..SIM_CLIENTS));
        schedule.push(Planned {
            at_ns,
            first: picks[0],
            packet,
            client,
            exit_id,
        });
    }
    let mut links: HashMap<usize, TcpStream> = mixes[..MIXES_PER_LAYER]
        .iter()
        .enumerate()
        .map(|(m, mix)| (m, TcpStream::connect(mix.addr).unwrap()))
        .collect();
    let started = Instant::now();
    let mut frame = Vec::new();
    for (index, planned) in schedule.iter().enumerate() {
        let Planned {
            at_ns,
            first,
            packet,
            client,
            ..
        } = planned;
        let due = Duration::from_nanos(*at_ns);
        if let Some(wait) = due.checked_sub(started.elapsed()) {
            std::thread::sleep(wait);
        }
        frame.clear();
        encode_frame_to_vec(&FrameHeader::v7(PacketSize::Regular), packet, &mut frame).unwrap();
        writer
            .write(&TraceEvent {
                next_hop: Some(first_mix + *first as u32),
                ..endpoint_row(
                    (trace_clock_ns(), client.unwrap_or(ack_sender), Kind::Send),
                    planned,
                    packet_id(packet),
                    index,
                )
            })
            .unwrap();
        links.get_mut(first).unwrap().write_all(&frame).unwrap();
    }
    let sent = schedule.len() as u64;
    // Every packet crossed the three layers (bounded wait), then the nodes flush their parts.
    let deadline = Instant::now() + WAIT_MAX;
    loop {
        let forwarded: u64 = mixes
            .iter()
            .map(|m| metric(m.process.addr("metrics"), "lethe_packets_forwarded_total"))
            .sum();
        if forwarded >= LAYERS as u64 * sent {
            assert_eq!(forwarded, LAYERS as u64 * sent, "forwarded more than sent");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {forwarded} of {} hops forwarded",
            LAYERS as u64 * sent
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // ... and reached the final hop, which names each by its last link's id.
    let deadline = Instant::now() + WAIT_MAX;
    let arrived = loop {
        let arrived = final_hop.arrived();
        if arrived.len() as u64 >= sent {
            break arrived;
        }
        assert!(
            Instant::now() < deadline,
            "only {} of {sent} packets reached the final hop",
            arrived.len()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    drop(final_hop);
    let by_exit_id: HashMap<u64, usize> = schedule
        .iter()
        .enumerate()
        .map(|(index, planned)| (planned.exit_id, index))
        .collect();
    for (t_ns, id) in arrived {
        let Some(&index) = by_exit_id.get(&id) else {
            panic!("a delivery whose last-link id the sender did not work out");
        };
        let planned = &schedule[index];
        let row = endpoint_row((t_ns, exit_node, Kind::Deliver), planned, id, index);
        writer.write(&row).unwrap();
    }
    writer.finish().unwrap();
    drop(links);
    for mix in mixes {
        mix.process.terminate();
    }
    let run = root.join("run");
    lethe_sim::merge::merge_parts(&run).unwrap();
    check_links(&run.join("trace.csv"), sent);
    run
}

/// A `send` or `deliver` row of packet `index` (real, or an ACK), under `packet_id` on its link.
fn endpoint_row(
    (t_ns, node, kind): (u64, u32, Kind),
    planned: &Planned,
    packet_id: u64,
    index: usize,
) -> TraceEvent {
    TraceEvent {
        t_ns,
        node,
        kind,
        class: planned.client.map_or(Class::Ack, |_| Class::Real),
        size_bytes: planned.packet.len() as u32,
        packet_id,
        next_hop: None,
        message_id: Some(index as u64),
        fragment_id: Some(0),
        destination: None,
        drop_reason: None,
        lab: Default::default(),
    }
}

/// Every departure (a send or a mix's depart) arrives at its next hop under the same id, and
/// the real trace lost nothing.
fn check_links(trace: &Path, sent: u64) {
    let mut reader = TraceReader::open(trace).unwrap();
    let meta = reader.meta().clone();
    let mut arrived: HashSet<(u32, u64)> = HashSet::new();
    let mut departed: Vec<(u32, u64)> = Vec::new();
    let mut counts: HashMap<Kind, u64> = HashMap::new();
    while let Some(event) = reader.next_event().unwrap() {
        *counts.entry(event.kind).or_default() += 1;
        match event.kind {
            Kind::Arrive => {
                arrived.insert((event.node, event.packet_id));
            }
            Kind::Send | Kind::Depart => {
                let next = event.next_hop.unwrap();
                if meta.node(next).unwrap().role == Role::Mix {
                    departed.push((next, event.packet_id));
                }
            }
            _ => {}
        }
    }
    assert_eq!(counts.get(&Kind::Send), Some(&sent));
    assert_eq!(counts.get(&Kind::Deliver), Some(&sent));
    assert_eq!(counts.get(&Kind::Arrive), Some(&(LAYERS as u64 * sent)));
    assert_eq!(counts.get(&Kind::Depart), Some(&(LAYERS as u64 * sent)));
    assert_eq!(counts.get(&Kind::Drop), None);
    let unmatched = departed.iter().filter(|d| !arrived.contains(d)).count();
    assert_eq!(unmatched, 0, "departures with no arrival at the next hop");
    let mixes = meta.nodes.iter().filter(|n| n.role == Role::Mix).count();
    assert_eq!(mixes, LAYERS * MIXES_PER_LAYER, "{:?}", meta.nodes);
}

fn agree(name: &str, real: f64, simulated: f64) -> Option<String> {
    let relative = (real - simulated).abs() / simulated.abs().max(1e-9);
    println!(
        "{name:<24} real {real:>9.3}  sim {simulated:>9.3}  diff {:>5.1} % (tolerance {:.0} %)",
        relative * 100.0,
        TOLERANCE * 100.0
    );
    // A NaN fails too.
    let agrees = relative <= TOLERANCE;
    (!agrees).then(|| format!("{name}: real {real} vs sim {simulated}"))
}

#[test]
fn simulator_and_loopback_mixnodes_agree() {
    let send_s = send_s();
    let root = temp_dir("run");
    let simulated = simulate(&root.join("sim"), send_s);
    let run = real_run(&root, send_s);
    let real = metrics::compute(&run.join("trace.csv"), &options()).unwrap();
    let (r, s) = (compared(&real), compared(&simulated));
    let rate = |m: &TraceMetrics| {
        let mixes = &m.queue.mixes;
        mixes.iter().map(|x| x.expected).sum::<f64>() / mixes.len() as f64 * 1_000.0 / DELAY_MS_MEAN
    };
    println!(
        "arrivals per mix per s: real {:.1}, sim {:.1}",
        rate(&real),
        rate(&simulated)
    );
    println!("{send_s} s of traffic, {MIX_ARRIVALS_PER_S} packets/s into each mix, mean delay {DELAY_MS_MEAN} ms");
    let failures: Vec<String> = [
        agree(
            "hop delay ms (Little)",
            r.hop_delay_ms_mean,
            s.hop_delay_ms_mean,
        ),
        agree(
            "mix entropy bits",
            r.mix_entropy_bits_mean,
            s.mix_entropy_bits_mean,
        ),
        agree("queue occupancy", r.occupancy_mean, s.occupancy_mean),
        agree(
            "end-to-end latency ms",
            r.end_to_end_ms_mean,
            s.end_to_end_ms_mean,
        ),
        agree(
            "sender entropy bits",
            r.sender_entropy_bits_mean,
            s.sender_entropy_bits_mean,
        ),
    ]
    .into_iter()
    .flatten()
    .collect();
    println!(
        "epsilon (c0 vs c1, not compared: its per-message spread is wide): real {:.3}, sim {:.3}",
        real.sender.epsilon.mean, simulated.sender.epsilon.mean
    );
    assert!(failures.is_empty(), "{failures:?}");
    let _ = std::fs::remove_dir_all(&root);
}

/// An operator build (no `lab` feature) refuses to record the ground truth, before starting.
#[cfg(not(feature = "lab"))]
#[test]
fn trace_lab_is_refused_without_the_lab_feature() {
    let root = temp_dir("lab-refused");
    let dir = root.join("mix");
    init("mixnode", &dir);
    let part = root.join("part.csv");
    let mut args = vec!["mixnode", "run", "--dir", dir.to_str().unwrap()];
    args.extend_from_slice(&SMALL_NODE);
    args.extend_from_slice(&["--trace", part.to_str().unwrap(), "--trace-lab"]);
    let output = std::process::Command::new(LETHE)
        .args(&args)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--features lab"), "{stderr}");
    assert!(!part.exists(), "nothing recorded");
    let _ = std::fs::remove_dir_all(&root);
}

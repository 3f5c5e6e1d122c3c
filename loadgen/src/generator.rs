//! Packet pre-generation: a thread builds the frames ahead of their due times with
//! `create_batch` (all packets of a chunk advance through the X25519 steps together, one SIMD
//! lane per packet) and hands them to each sender over a bounded queue. When the queues are
//! full the generator waits: it is never more than the lookahead ahead of the schedule.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::Arc;
use std::time::Instant;

use lethe_crypto::framing::{FrameHeader, PacketSize, HEADER_MAX_LEN};
use lethe_crypto::sphinx::{
    constants::MAX_PATH_LENGTH, create_batch, CreateJob, Destination, PacketSpec, RouteHop,
    RouteSecrets, Version,
};
use lethe_nodes::proto::payload::{write_surb_ack, SURB_ACK_BYTES};
use lethe_nodes::proto::ClientMessage;
use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};

use crate::schedule::Schedule;
use crate::sender::OutPacket;
use crate::stamp::{Stamp, STAMP_LEN};
use crate::trace::{BuiltIds, PacketTrace};

/// `ClientMessage::Forward` bytes around the packet: kind (1) and first hop (32).
pub const FORWARD_OVERHEAD: usize = 1 + 32;

/// Packets built per `create_batch` call.
pub const CHUNK_PACKETS: usize = 64;

/// The delivering hop of a route and the destination the packet is addressed to there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exit {
    pub hop: RouteHop,
    pub destination: Destination,
}

/// Where packets go. Each packet takes one node of every mix layer, then one of `exits`
/// (drawn per packet). With `entry_per_client` a sender's first-layer node is fixed (its TCP
/// connection goes there: node `client % layer size`); otherwise (gateway clients: the entry
/// gateway forwards to any layer-1 node) it is drawn per packet like the other layers, as
/// `Topology::random_route` of the directory's topology does.
#[derive(Clone, Debug)]
pub struct Topology {
    pub layers: Vec<Vec<RouteHop>>,
    pub exits: Vec<Exit>,
    pub entry_per_client: bool,
}

impl Topology {
    /// Hops of every route, the delivering one included.
    pub fn hops(&self) -> usize {
        self.layers.len() + 1
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.hops() > MAX_PATH_LENGTH {
            return Err(format!(
                "{} hops: Sphinx routes have at most {MAX_PATH_LENGTH}",
                self.hops()
            ));
        }
        if self.layers.iter().any(Vec::is_empty) {
            return Err("a mix layer has no nodes".into());
        }
        if self.exits.is_empty() {
            return Err("no delivering hop".into());
        }
        Ok(())
    }

    /// The route of a packet of sender `client`: `[entry, random per layer..., exit]`, and
    /// the exit's destination.
    fn route(
        &self,
        client: u32,
        rng: &mut ChaCha20Rng,
    ) -> Option<([RouteHop; MAX_PATH_LENGTH], Destination)> {
        let exit_count = self.exits.len() as u64;
        let exit = if exit_count <= 1 {
            self.exits.first()?
        } else {
            self.exits.get((rng.next_u64() % exit_count) as usize)?
        };
        let mut route = [exit.hop; MAX_PATH_LENGTH];
        for (index, layer) in self.layers.iter().enumerate().take(MAX_PATH_LENGTH - 1) {
            let count = layer.len().max(1) as u64;
            let pick = if index == 0 && self.entry_per_client {
                u64::from(client) % count
            } else {
                rng.next_u64() % count
            };
            if let Some(hop) = layer.get(pick as usize) {
                route[index] = *hop;
            }
        }
        Some((route, exit.destination))
    }
}

/// How a built packet is put on the wire.
#[derive(Clone, Copy, Debug)]
pub enum Wire {
    /// A Nym frame (header + Sphinx packet) over TCP to a mixnode; the payload is the stamp.
    Frame(FrameHeader),
    /// A gateway client's `ClientMessage::Forward { first_hop, packet }` (sealed by the
    /// session later); the payload is an empty SURB-ACK prefix (no ACK) and the stamp.
    GatewayForward,
}

/// What every packet of a run looks like.
#[derive(Clone, Debug)]
pub struct PacketPlan {
    pub topology: Topology,
    /// Senders (for the first-layer choice).
    pub clients: u32,
    pub size: PacketSize,
    pub wire: Wire,
    /// Mean of the exponential per-hop delay, ns (0: no delay).
    pub delay_ns_mean: f64,
    /// `--trace`: work out each packet's link ids as it is built (its id on the last link
    /// costs the sender one more lane of a batched X25519).
    pub trace: bool,
}

impl PacketPlan {
    /// Bytes of one built packet as the sender hands it on.
    pub fn frame_len(&self) -> usize {
        match self.wire {
            Wire::Frame(header) => header.frame_len(),
            Wire::GatewayForward => FORWARD_OVERHEAD + self.size.packet_len(),
        }
    }

    /// The Sphinx message of `stamp`.
    fn message(&self, stamp: &Stamp) -> Vec<u8> {
        match self.wire {
            Wire::Frame(_) => stamp.encode().to_vec(),
            Wire::GatewayForward => {
                let mut message = vec![0u8; SURB_ACK_BYTES + STAMP_LEN];
                // Cannot fail: the buffer is longer than the prefix.
                let _ = write_surb_ack(&mut message, None);
                message[SURB_ACK_BYTES..].copy_from_slice(&stamp.encode());
                message
            }
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        self.topology.validate()?;
        if let Wire::GatewayForward = self.wire {
            if self.size == PacketSize::Ack
                || self.size.plaintext_len() < SURB_ACK_BYTES + STAMP_LEN
            {
                return Err(format!(
                    "--packet-size {}: gateway clients send forward packets, which need room for \
                     the SURB-ACK prefix; use regular or an extended size",
                    crate::cli::size_name(self.size)
                ));
            }
        }
        Ok(())
    }

    /// Mean total delay the packet's mix hops add (the last hop's delay is not encoded).
    pub fn expected_delay_ns(&self) -> f64 {
        self.delay_ns_mean * self.topology.layers.len() as f64
    }
}

/// What the generator did.
#[derive(Clone, Copy, Debug, Default)]
pub struct GeneratorStats {
    pub created: u64,
    pub errors: u64,
    /// Time spent building packets.
    pub busy_ns: u64,
    /// Time spent waiting for room in the queues (it was ahead).
    pub blocked_ns: u64,
}

/// Live count of packets built.
#[derive(Debug, Default)]
pub struct GeneratorLive {
    pub created: AtomicU64,
}

/// A seeded RNG from the OS.
pub fn os_rng() -> Result<ChaCha20Rng, String> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| format!("random seed: {e}"))?;
    Ok(ChaCha20Rng::from_seed(seed))
}

/// Exponential with the given mean (as Nym's `generate_from_average_duration`), ns.
fn exponential_ns(rng: &mut ChaCha20Rng, mean_ns: f64) -> u64 {
    if mean_ns <= 0.0 {
        return 0;
    }
    let unit = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
    let sample = -mean_ns * (1.0 - unit).ln();
    if sample.is_finite() {
        sample.round() as u64
    } else {
        0
    }
}

/// Builds the frames for `stamps` into `frames` (cleared first). Failed packets are left out
/// and counted in the return value. With `plan.trace`, each built packet's link ids go into
/// `ids` (cleared first).
pub fn build_chunk(
    plan: &PacketPlan,
    stamps: &[Stamp],
    rng: &mut ChaCha20Rng,
    frames: &mut Vec<(Stamp, Vec<u8>)>,
    ids: &mut Vec<BuiltIds>,
) -> u64 {
    frames.clear();
    ids.clear();
    let hops = plan.topology.hops().min(MAX_PATH_LENGTH);
    let clients = u64::from(plan.clients.max(1));
    let mut routes = Vec::with_capacity(stamps.len());
    let mut destinations = Vec::with_capacity(stamps.len());
    let mut errors = 0;
    let mut stamps_ok = Vec::with_capacity(stamps.len());
    for stamp in stamps {
        match plan.topology.route((stamp.seq % clients) as u32, rng) {
            Some((route, destination)) => {
                routes.push(route);
                destinations.push(destination);
                stamps_ok.push(*stamp);
            }
            None => errors += 1,
        }
    }
    let stamps = &stamps_ok[..];
    let mut head = [0u8; HEADER_MAX_LEN];
    let head_len = match plan.wire {
        Wire::Frame(header) => header.encode(&mut head),
        Wire::GatewayForward => 0,
    };
    let messages: Vec<Vec<u8>> = stamps.iter().map(|stamp| plan.message(stamp)).collect();
    let delays: Vec<[u64; MAX_PATH_LENGTH]> = stamps
        .iter()
        .map(|_| std::array::from_fn(|_| exponential_ns(rng, plan.delay_ns_mean)))
        .collect();
    let packet_len = head_len + plan.size.packet_len();
    let mut buffers: Vec<Vec<u8>> = stamps
        .iter()
        .map(|_| {
            let mut frame = vec![0u8; packet_len];
            frame[..head_len].copy_from_slice(&head[..head_len]);
            frame
        })
        .collect();
    let mut ok = vec![false; stamps.len()];
    let mut secrets: Vec<Option<RouteSecrets>> = Vec::new();
    if plan.trace {
        secrets.resize(stamps.len(), None);
    }
    {
        let mut jobs: Vec<CreateJob<'_>> = buffers
            .iter_mut()
            .zip(
                messages
                    .iter()
                    .zip(delays.iter().zip(routes.iter().zip(&destinations))),
            )
            .map(
                |(frame, (message, (delays, (route, destination))))| CreateJob {
                    out: &mut frame[head_len..],
                    message,
                    spec: PacketSpec {
                        route: &route[..hops],
                        delays_ns: &delays[..hops],
                        destination,
                        version: Version::CURRENT,
                    },
                    initial_secret: None,
                },
            )
            .collect();
        create_batch(&mut jobs, rng, |index, result| {
            if let Some(slot) = ok.get_mut(index) {
                *slot = result.is_ok();
            }
            if let (Some(slot), Ok(route_secrets)) = (secrets.get_mut(index), result) {
                *slot = Some(route_secrets);
            }
        });
    }
    let exit_ids = if plan.trace {
        exit_ids(&buffers, &ok, &secrets, head_len, hops)
    } else {
        Vec::new()
    };
    for (index, (((stamp, frame), ok), route)) in
        stamps.iter().zip(buffers).zip(ok).zip(&routes).enumerate()
    {
        if !ok {
            errors += 1;
            continue;
        }
        if let (Some(Some(exit_id)), Some(destination)) =
            (exit_ids.get(index), destinations.get(index))
        {
            let packet = &frame[head_len..];
            ids.push(BuiltIds {
                seq: stamp.seq,
                first_id: lethe_engine::runtime::trace::packet_id(packet),
                exit_id: *exit_id,
                recipient: destination.address,
                size_bytes: packet.len() as u32,
            });
        }
        let frame = match plan.wire {
            Wire::Frame(_) => frame,
            Wire::GatewayForward => ClientMessage::Forward {
                first_hop: route[0].address,
                packet: frame,
            }
            .encode(),
        };
        frames.push((*stamp, frame));
    }
    errors
}

/// `--trace`: each built packet's id on its last link (into hop `hops - 1`), by index; `None`
/// for a packet not built. All of a chunk's packets at once: `hop_packet_ids` takes one
/// lane of a batched X25519 per packet, where unwrapping each packet hop by hop took one
/// unbatched X25519 per mix.
fn exit_ids(
    buffers: &[Vec<u8>],
    ok: &[bool],
    secrets: &[Option<RouteSecrets>],
    head_len: usize,
    hops: usize,
) -> Vec<Option<u64>> {
    let built: Vec<(usize, &[u8], &RouteSecrets)> = buffers
        .iter()
        .zip(ok)
        .zip(secrets)
        .enumerate()
        .filter_map(|(index, ((frame, ok), secrets))| match (ok, secrets) {
            (true, Some(secrets)) => Some((index, frame.get(head_len..)?, secrets)),
            _ => None,
        })
        .collect();
    let packets: Vec<&[u8]> = built.iter().map(|&(_, packet, _)| packet).collect();
    let routes: Vec<&RouteSecrets> = built.iter().map(|&(_, _, secrets)| secrets).collect();
    let ids = lethe_nodes::trace::hop_packet_ids(&packets, &routes, hops.saturating_sub(1));
    let mut by_index = vec![None; buffers.len()];
    for (&(index, _, _), id) in built.iter().zip(ids) {
        if let Some(slot) = by_index.get_mut(index) {
            *slot = id;
        }
    }
    by_index
}

/// Packets per second one thread builds, measured for about `budget_ms` (at least two chunks).
pub fn calibrate(plan: &PacketPlan, budget_ms: u64) -> Result<f64, String> {
    let mut rng = os_rng()?;
    let stamps: Vec<Stamp> = (0..CHUNK_PACKETS as u64)
        .map(|seq| Stamp {
            run_id: 0,
            seq,
            scheduled_ns: 0,
        })
        .collect();
    let mut frames = Vec::new();
    let mut ids = Vec::new();
    let started = Instant::now();
    let mut built = 0u64;
    for round in 0..10_000 {
        let errors = build_chunk(plan, &stamps, &mut rng, &mut frames, &mut ids);
        if errors > 0 {
            return Err(format!(
                "packet creation failed for {errors} of {CHUNK_PACKETS} packets (bad route?)"
            ));
        }
        built += frames.len() as u64;
        if round >= 1 && started.elapsed().as_millis() >= u128::from(budget_ms) {
            break;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    if seconds <= 0.0 {
        return Err("calibration took no time".into());
    }
    Ok(built as f64 / seconds)
}

/// Everything a generator thread needs.
pub struct GeneratorJob {
    pub plan: PacketPlan,
    pub schedule: Schedule,
    pub run_id: u32,
    /// One bounded queue per sender.
    pub queues: Vec<SyncSender<OutPacket>>,
    pub stop: Arc<AtomicBool>,
    pub live: Arc<GeneratorLive>,
    /// Where refreshed routes come from (gateway drivers); `None`: `plan`'s for the whole run.
    pub feed: Option<Arc<crate::refresh::TopologyFeed>>,
    /// `--trace`: where each packet's link ids go.
    pub trace: Option<Arc<PacketTrace>>,
}

/// Packets `first_seq..end_seq` were built over the routes of topology `generation`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GenerationUse {
    pub generation: u64,
    pub epoch: Option<u64>,
    pub first_seq: u64,
    pub end_seq: u64,
}

/// Generations recorded per run at most (a change per refresh; later ones extend the last).
const GENERATIONS_KEPT: usize = 1024;

/// What the generator did, and which routes each packet took.
#[derive(Clone, Debug, Default)]
pub struct Generated {
    pub stats: GeneratorStats,
    pub generations: Vec<GenerationUse>,
}

/// Builds every packet of the schedule, in order, into the senders' queues. With a feed, each
/// chunk is built over the routes current when it starts.
pub fn generate(job: GeneratorJob) -> Result<Generated, String> {
    let mut rng = os_rng()?;
    let mut stats = GeneratorStats::default();
    let mut generations: Vec<GenerationUse> = Vec::new();
    let mut plan = job.plan;
    let mut generation = None;
    let mut epoch = None;
    let mut frames = Vec::with_capacity(CHUNK_PACKETS);
    let mut ids = Vec::with_capacity(if plan.trace { CHUNK_PACKETS } else { 0 });
    let mut stamps = Vec::with_capacity(CHUNK_PACKETS);
    let mut seq = 0u64;
    while seq < job.schedule.total && !job.stop.load(Ordering::Relaxed) {
        if let Some(feed) = &job.feed {
            if generation != Some(feed.generation()) {
                if let Some((current, routes)) = feed.current() {
                    plan.topology = routes.topology.clone();
                    generation = Some(current);
                    epoch = Some(routes.epoch);
                }
            }
        }
        let count = (job.schedule.total - seq).min(CHUNK_PACKETS as u64);
        // Without a feed every packet takes the plan's routes: generation 0.
        let current = generation.unwrap_or(0);
        let kept = generations.len();
        match generations.last_mut() {
            Some(last) if last.generation == current || kept >= GENERATIONS_KEPT => {
                last.end_seq = seq + count;
            }
            _ => generations.push(GenerationUse {
                generation: current,
                epoch,
                first_seq: seq,
                end_seq: seq + count,
            }),
        }
        stamps.clear();
        stamps.extend((seq..seq + count).map(|s| Stamp {
            run_id: job.run_id,
            seq: s,
            scheduled_ns: job.schedule.due_ns(s),
        }));
        let started = Instant::now();
        stats.errors += build_chunk(&plan, &stamps, &mut rng, &mut frames, &mut ids);
        stats.busy_ns += elapsed_ns(started);
        if let Some(trace) = &job.trace {
            trace.built(&ids);
        }
        let blocked = Instant::now();
        for (stamp, frame) in frames.drain(..) {
            let client = job.schedule.client_of(stamp.seq) as usize;
            let Some(queue) = job.queues.get(client) else {
                stats.errors += 1;
                continue;
            };
            let packet = OutPacket {
                due_ns: stamp.scheduled_ns,
                seq: stamp.seq,
                frame,
            };
            if queue.send(packet).is_err() {
                // The sender is gone (write failure or give-up): its packets count as not sent.
                continue;
            }
            stats.created += 1;
            job.live.created.fetch_add(1, Ordering::Relaxed);
        }
        stats.blocked_ns += elapsed_ns(blocked);
        seq += count;
    }
    Ok(Generated { stats, generations })
}

fn elapsed_ns(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use lethe_crypto::framing::PacketSize;
    use lethe_crypto::sphinx::{self, constants::HEADER_SIZE, Hop, Packet};
    use x25519_dalek::{PublicKey, StaticSecret};

    fn node(tag: u8) -> (StaticSecret, RouteHop) {
        let secret = StaticSecret::from([tag; 32]);
        let hop = RouteHop {
            address: [tag; 32],
            public_key: PublicKey::from(&secret).to_bytes(),
        };
        (secret, hop)
    }

    #[test]
    fn packets_open_hop_by_hop_to_their_stamp() {
        let (entry_a, hop_a) = node(1);
        let (_, hop_b) = node(2);
        let (last_secret, last) = node(9);
        let plan = PacketPlan {
            topology: Topology {
                layers: vec![vec![hop_a, hop_b]],
                exits: vec![Exit {
                    hop: last,
                    destination: Destination {
                        address: [5; 32],
                        identifier: [0; 16],
                    },
                }],
                entry_per_client: true,
            },
            clients: 2,
            size: PacketSize::Ack,
            wire: Wire::Frame(FrameHeader::v7(PacketSize::Ack)),
            delay_ns_mean: 1e6,
            trace: false,
        };
        let stamps: Vec<Stamp> = (0..20)
            .map(|seq| Stamp {
                run_id: 3,
                seq,
                scheduled_ns: seq * 1000,
            })
            .collect();
        let mut rng = os_rng().unwrap();
        let mut frames = Vec::new();
        assert_eq!(
            build_chunk(&plan, &stamps, &mut rng, &mut frames, &mut Vec::new()),
            0
        );
        assert_eq!(frames.len(), 20);
        // Sender 0 (even seq) enters at node 1; packets for node 2 fail its MAC.
        let (stamp, frame) = &frames[4];
        assert_eq!(frame.len(), 3 + PacketSize::Ack.packet_len());
        let mut bytes = frame[3..].to_vec();
        let mut packet = Packet::new_checked(&mut bytes[..]).unwrap();
        let processed = sphinx::process(&mut packet, &entry_a).unwrap();
        let Hop::Forward { next_hop, .. } = processed.hop else {
            panic!("not a forward hop");
        };
        assert_eq!(next_hop, [9; 32]);
        let mut packet = Packet::new_checked(&mut bytes[..]).unwrap();
        let processed = sphinx::process(&mut packet, &last_secret).unwrap();
        assert!(matches!(processed.hop, Hop::Final { destination, .. } if destination == [5; 32]));
        let plaintext = sphinx::recover_plaintext(&bytes[HEADER_SIZE..]).unwrap();
        assert_eq!(Stamp::decode(plaintext), Some(*stamp));
        let mut odd = frames[5].1[3..].to_vec();
        let mut packet = Packet::new_checked(&mut odd[..]).unwrap();
        assert!(sphinx::process(&mut packet, &entry_a).is_err());
    }

    /// With `trace`, each packet's first-link id is that of the bytes sent, and its last-link
    /// id is that of the bytes the last mix sends on (after 3 mix hops; 20 packets, more than
    /// one lane chunk of the batched ids).
    #[test]
    fn traced_packets_carry_their_first_and_last_link_ids() {
        let mixes: Vec<(StaticSecret, RouteHop)> = (1..=3).map(node).collect();
        let (_, last) = node(9);
        let plan = PacketPlan {
            topology: Topology {
                layers: mixes.iter().map(|(_, hop)| vec![*hop]).collect(),
                exits: vec![Exit {
                    hop: last,
                    destination: Destination {
                        address: [5; 32],
                        identifier: [0; 16],
                    },
                }],
                entry_per_client: false,
            },
            clients: 1,
            size: PacketSize::Regular,
            wire: Wire::Frame(FrameHeader::v7(PacketSize::Regular)),
            delay_ns_mean: 1e6,
            trace: true,
        };
        let stamps: Vec<Stamp> = (0..20)
            .map(|seq| Stamp {
                run_id: 1,
                seq,
                scheduled_ns: 0,
            })
            .collect();
        let mut rng = os_rng().unwrap();
        let (mut frames, mut ids) = (Vec::new(), Vec::new());
        assert_eq!(
            build_chunk(&plan, &stamps, &mut rng, &mut frames, &mut ids),
            0
        );
        assert_eq!(ids.len(), 20);
        for ((stamp, frame), id) in frames.iter().zip(&ids) {
            assert_eq!(id.seq, stamp.seq);
            assert_eq!(id.recipient, [5; 32]);
            let mut bytes = frame[3..].to_vec();
            let sent = lethe_engine::runtime::trace::packet_id(&bytes);
            assert_eq!(id.first_id, sent);
            for (secret, _) in &mixes {
                let mut packet = Packet::new_checked(&mut bytes[..]).unwrap();
                sphinx::process(&mut packet, secret).unwrap();
            }
            assert_eq!(id.exit_id, lethe_engine::runtime::trace::packet_id(&bytes));
            assert_ne!(id.exit_id, id.first_id);
        }
    }

    /// A measurement, not a test (`cargo test --release -p lethe-loadgen --lib trace_cost --
    /// --ignored --nocapture`): packets/s one thread builds for the testnet's shape (gateway
    /// forwards, regular packets, 3 layers of 2 mixes, 2 exits), without and with `--trace`,
    /// alternating, medians of 7 rounds of 1 s; and an exit id's cost, hop by hop
    /// (`hop_packet_id`, one X25519 per mix) against the batch (`hop_packet_ids`).
    #[test]
    #[ignore]
    fn trace_cost() {
        let exit = |tag| Exit {
            hop: node(tag).1,
            destination: Destination {
                address: [tag; 32],
                identifier: [0; 16],
            },
        };
        let mut plan = PacketPlan {
            topology: Topology {
                layers: (0..3u8)
                    .map(|layer| vec![node(10 + 2 * layer).1, node(11 + 2 * layer).1])
                    .collect(),
                exits: vec![exit(20), exit(21)],
                entry_per_client: false,
            },
            clients: 2,
            size: PacketSize::Regular,
            wire: Wire::GatewayForward,
            delay_ns_mean: 50e6,
            trace: false,
        };
        let median = |mut values: Vec<f64>| {
            values.sort_by(f64::total_cmp);
            values[values.len() / 2]
        };
        let (mut plain, mut traced) = (Vec::new(), Vec::new());
        for _ in 0..7 {
            plan.trace = false;
            plain.push(calibrate(&plan, 1_000).unwrap());
            plan.trace = true;
            traced.push(calibrate(&plan, 1_000).unwrap());
        }
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|info| {
                let line = info.lines().find(|l| l.starts_with("model name"))?;
                Some(line.split(':').nth(1)?.trim().to_string())
            })
            .unwrap_or_default();
        println!(
            "cpu {cpu}: packets/s per thread without --trace {:.0} (rounds {plain:.0?}), with {:.0} (rounds {traced:.0?})",
            median(plain.clone()),
            median(traced.clone())
        );
        // The exit id alone, both ways, on the same packets.
        let (mut stamps, mut ids) = (Vec::new(), Vec::new());
        let mut rng = os_rng().unwrap();
        let packets = 640usize;
        stamps.extend((0..packets as u64).map(|seq| Stamp {
            run_id: 0,
            seq,
            scheduled_ns: 0,
        }));
        let mut built: Vec<(Vec<u8>, RouteSecrets)> = Vec::new();
        for (index, chunk) in stamps.chunks(CHUNK_PACKETS).enumerate() {
            let route = plan.topology.route(index as u32, &mut rng).unwrap().0;
            let hops: Vec<RouteHop> = route[..4].to_vec();
            for stamp in chunk {
                let mut packet = vec![0u8; PacketSize::Regular.packet_len()];
                let spec = PacketSpec {
                    route: &hops,
                    delays_ns: &[1, 2, 3, 0],
                    destination: &plan.topology.exits[0].destination,
                    version: Version::CURRENT,
                };
                let secrets =
                    sphinx::create_into(&mut packet, &stamp.encode(), &spec, None, &mut rng)
                        .unwrap();
                built.push((packet, secrets));
            }
        }
        let started = Instant::now();
        let one_by_one: Vec<Option<u64>> = built
            .iter()
            .map(|(packet, secrets)| lethe_nodes::trace::hop_packet_id(packet, secrets, 3))
            .collect();
        let hop_by_hop_us = started.elapsed().as_secs_f64() * 1e6 / packets as f64;
        let started = Instant::now();
        for chunk in built.chunks(CHUNK_PACKETS) {
            let bytes: Vec<&[u8]> = chunk.iter().map(|(packet, _)| &packet[..]).collect();
            let secrets: Vec<&RouteSecrets> = chunk.iter().map(|(_, secrets)| secrets).collect();
            ids.extend(lethe_nodes::trace::hop_packet_ids(&bytes, &secrets, 3));
        }
        let batched_us = started.elapsed().as_secs_f64() * 1e6 / packets as f64;
        assert_eq!(ids, one_by_one);
        println!(
            "exit id per packet: hop by hop {hop_by_hop_us:.1} us, batched {batched_us:.1} us"
        );
    }

    #[test]
    fn later_layers_are_drawn_per_packet() {
        let hops: Vec<RouteHop> = (1..=4).map(|t| node(t).1).collect();
        let topology = Topology {
            layers: vec![vec![hops[0]], vec![hops[1], hops[2], hops[3]]],
            exits: vec![Exit {
                hop: node(9).1,
                destination: Destination {
                    address: [0; 32],
                    identifier: [0; 16],
                },
            }],
            entry_per_client: true,
        };
        topology.validate().unwrap();
        let mut rng = os_rng().unwrap();
        let mut seen = [0u32; 3];
        for _ in 0..300 {
            let (route, _) = topology.route(0, &mut rng).unwrap();
            assert_eq!(route[0], hops[0]);
            assert_eq!(route[2], topology.exits[0].hop);
            let index = hops[1..].iter().position(|h| *h == route[1]).unwrap();
            seen[index] += 1;
        }
        assert!(seen.iter().all(|&n| n > 0), "{seen:?}");
        let too_long = Topology {
            layers: vec![vec![hops[0]]; 5],
            ..topology.clone()
        };
        assert!(too_long.validate().is_err());
    }

    #[test]
    fn gateway_forwards_carry_the_first_hop_and_an_ack_less_payload() {
        let (entry, hop_a) = node(1);
        let (last_secret, last) = node(9);
        let exit = |address: u8| Exit {
            hop: last,
            destination: Destination {
                address: [address; 32],
                identifier: [0; 16],
            },
        };
        let plan = PacketPlan {
            topology: Topology {
                layers: vec![vec![hop_a]],
                exits: vec![exit(5), exit(6)],
                entry_per_client: false,
            },
            clients: 1,
            size: PacketSize::Regular,
            wire: Wire::GatewayForward,
            delay_ns_mean: 0.0,
            trace: false,
        };
        plan.validate().unwrap();
        let stamps: Vec<Stamp> = (0..40)
            .map(|seq| Stamp {
                run_id: 2,
                seq,
                scheduled_ns: seq,
            })
            .collect();
        let mut rng = os_rng().unwrap();
        let mut frames = Vec::new();
        assert_eq!(
            build_chunk(&plan, &stamps, &mut rng, &mut frames, &mut Vec::new()),
            0
        );
        let mut seen = std::collections::BTreeSet::new();
        for (stamp, frame) in &frames {
            assert_eq!(frame.len(), plan.frame_len());
            let ClientMessage::Forward { first_hop, packet } =
                ClientMessage::decode(frame).unwrap()
            else {
                panic!("not a forward");
            };
            assert_eq!(first_hop, hop_a.address);
            let mut bytes = packet;
            let mut packet = Packet::new_checked(&mut bytes[..]).unwrap();
            sphinx::process(&mut packet, &entry).unwrap();
            let mut packet = Packet::new_checked(&mut bytes[..]).unwrap();
            let processed = sphinx::process(&mut packet, &last_secret).unwrap();
            let Hop::Final { destination, .. } = processed.hop else {
                panic!("not final");
            };
            seen.insert(destination[0]);
            let plaintext = sphinx::recover_plaintext(&bytes[HEADER_SIZE..]).unwrap();
            let forward =
                lethe_nodes::proto::payload::ForwardPlaintextView::new_checked(plaintext).unwrap();
            assert!(forward.surb_ack().is_none());
            assert_eq!(Stamp::decode(forward.content()), Some(*stamp));
        }
        assert_eq!(seen.len(), 2, "both exits are used");
        let ack = PacketPlan {
            size: PacketSize::Ack,
            ..plan
        };
        assert!(ack.validate().is_err());
    }
}

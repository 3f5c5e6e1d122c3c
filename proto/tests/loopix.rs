//! The Loopix client core end to end, in simulated time with seeded RNGs: `LoopixClient`s
//! behind `ClientSession` ↔ `GatewaySession` pairs, and an in-memory mix network that unwraps
//! every packet with lethe-crypto's Sphinx at each hop (real keys of a generated topology) and
//! does the destination gateway's work (mailbox, SURB-ACK forwarding, drop cover discarded).
//! No sockets, no clock, no OS randomness: a run is a function of its seeds.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;

use lethe_crypto::sphinx::address;
use lethe_proto::final_hop::{self, FinalHopOutcome, Refusal, Room};
use lethe_proto::gateway_session::{FirstHops, GatewayConfig, Transmit};
use lethe_proto::loopix::{
    ClientLimits, LoopixClient, LoopixEvent, LoopixParams, LoopixTransmit, PacketKind, Received,
    SendProgress,
};
use lethe_proto::testing::TestMixnet;
use lethe_proto::wire::handshake::identity_public;
use lethe_proto::wire::{ClientMessage, DeliveryKind};
use lethe_proto::{ClientEvent, ClientSession, GatewayEvent, GatewaySession};
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

const GATEWAY_SEED: [u8; 32] = [200; 32];
const HANDSHAKE_TIMEOUT_US: u64 = 5_000_000;
/// Every simulation loop stops after this many turns (a test must end).
const TURNS_MAX: usize = 2_000_000;

/// Where a packet ended, as the destination gateway saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Arrival {
    DropCover,
    /// To this identity (a message, a loop-cover packet, a reply).
    Content([u8; 32]),
    Ack([u8; 32]),
}

struct Link {
    client: ClientSession,
    gateway: GatewaySession,
}

struct Party {
    identity: [u8; 32],
    identity_seed: [u8; 32],
    core: LoopixClient,
    link: Option<Link>,
    /// The gateway's mailbox for this party: unconfirmed deliveries by id.
    mailbox: BTreeMap<u64, (DeliveryKind, [u8; 16], Vec<u8>)>,
    next_delivery: u64,
    /// The application confirms what it receives at once.
    confirms: bool,
    received: Vec<Received>,
    progress: HashMap<u64, (SendProgress, bool)>,
    /// Forwards of this party the network loses next.
    drops: usize,
    /// When this party's packets entered the mix network, and where each ended.
    departures: Vec<(u64, Option<Arrival>)>,
    /// The driver takes the core's transmits and events (a driver that stops leaves them).
    drains: bool,
}

struct Layer1(Vec<SocketAddr>);

impl FirstHops for Layer1 {
    fn check(&self, first_hop: &[u8; 32]) -> Result<SocketAddr, &'static str> {
        self.0
            .iter()
            .find(|a| address::encode(a) == *first_hop)
            .copied()
            .ok_or("first hop is not a layer-1 mixnode")
    }
}

struct World {
    now_us: u64,
    rng: ChaCha20Rng,
    /// The mix network's topology and Sphinx secrets.
    net: TestMixnet,
    layer1: Layer1,
    gateway: [u8; 32],
    parties: Vec<Party>,
}

fn params() -> LoopixParams {
    LoopixParams {
        average_packet_delay_ms: 10.0,
        average_ack_delay_ms: 10.0,
        message_sending_average_delay_ms: 20.0,
        loop_cover_average_delay_ms: 100.0,
        ..LoopixParams::default()
    }
}

impl World {
    /// Two mixnodes per layer, one gateway, and one party per entry of `params` (seeded from
    /// `seed`), none connected yet.
    fn new(seed: u64, params: &[LoopixParams]) -> World {
        World::with_limits(seed, params, ClientLimits::default())
    }

    fn with_limits(seed: u64, params: &[LoopixParams], limits: ClientLimits) -> World {
        let net = TestMixnet::new(2, &GATEWAY_SEED);
        let gateway = net.gateway_identity;
        let layer1 = Layer1(
            net.topology.layers[0]
                .iter()
                .map(|d| d.mix_address)
                .collect(),
        );
        let topology = Arc::new(net.topology.clone());
        let parties = params
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let identity_seed = [i as u8 + 1; 32];
                let mut core = LoopixClient::new(
                    &identity_seed,
                    &[i as u8 + 101; 32],
                    gateway,
                    *p,
                    limits,
                    0,
                    StdRng::seed_from_u64(seed.wrapping_add(i as u64)),
                );
                core.set_topology(topology.clone());
                Party {
                    identity: identity_public(&identity_seed),
                    identity_seed,
                    core,
                    link: None,
                    mailbox: BTreeMap::new(),
                    next_delivery: 1,
                    confirms: true,
                    received: Vec::new(),
                    progress: HashMap::new(),
                    drops: 0,
                    departures: Vec::new(),
                    drains: true,
                }
            })
            .collect();
        World {
            now_us: 0,
            rng: ChaCha20Rng::seed_from_u64(seed ^ 0x5eed),
            net,
            layer1,
            gateway,
            parties,
        }
    }

    fn connect(&mut self, p: usize) {
        let now = self.now_us;
        let party = &mut self.parties[p];
        let config = GatewayConfig {
            handshake_timeout_us: HANDSHAKE_TIMEOUT_US,
            idle_timeout_us: lethe_proto::limits::SESSION_IDLE_TIMEOUT_S_DEFAULT * 1_000_000,
            metered: false,
        };
        party.link = Some(Link {
            client: ClientSession::new(
                now,
                HANDSHAKE_TIMEOUT_US,
                &party.identity_seed,
                self.gateway,
                &mut self.rng,
            ),
            gateway: GatewaySession::new(now, config, GATEWAY_SEED),
        });
        self.settle();
        assert!(self.parties[p]
            .link
            .as_ref()
            .unwrap()
            .client
            .is_established());
    }

    /// The transport breaks: both sessions end, what was in flight on it is lost.
    fn disconnect(&mut self, p: usize) {
        let party = &mut self.parties[p];
        party.link = None;
        party.core.set_connected(false);
    }

    fn send(&mut self, from: usize, to: usize, data: &[u8]) -> u64 {
        let recipient = self.parties[to].core.address();
        let now = self.now_us;
        let party = &mut self.parties[from];
        let accepted = party.core.send(recipient, data, 0, now).unwrap();
        party
            .progress
            .insert(accepted.message_id, (accepted.progress, false));
        self.settle();
        accepted.message_id
    }

    fn progress(&self, p: usize, message_id: u64) -> (SendProgress, bool) {
        self.parties[p].progress[&message_id]
    }

    /// Carries a packet from the gateway through the mix layers to its destination gateway,
    /// which stores it in a mailbox (or discards drop cover) and sends a SURB-ACK on.
    fn mixnet(&mut self, first_hop: [u8; 32], packet: Vec<u8>) -> Option<Arrival> {
        let (destination, identifier, packet, _) = self.net.unwrap_all(first_hop, packet).unwrap();
        let packet = packet.into_inner();
        let parties = &self.parties;
        let mailboxes = |recipient: &[u8; 32]| {
            if parties.iter().any(|p| p.identity == *recipient) {
                Room::Available
            } else {
                Room::Unknown
            }
        };
        let mail = match final_hop::decide(&destination, &identifier, &packet, &mailboxes) {
            FinalHopOutcome::DropCover => return Some(Arrival::DropCover),
            FinalHopOutcome::Refused(Refusal::UnknownRecipient) => return None,
            FinalHopOutcome::Refused(refusal) => panic!("{refusal:?}"),
            FinalHopOutcome::Deliver(mail) => mail,
        };
        let arrival = match mail.kind {
            DeliveryKind::Ack => Arrival::Ack(destination),
            DeliveryKind::Message | DeliveryKind::Reply => Arrival::Content(destination),
        };
        let (kind, bytes, ack) = (mail.kind, mail.bytes.to_vec(), mail.ack);
        // The gateway stored the content: it sends the SURB-ACK on.
        if let Some(ack) = ack {
            self.mixnet(*ack.first_hop, ack.packet.to_vec());
        }
        let party = self
            .parties
            .iter_mut()
            .find(|p| p.identity == destination)?;
        let id = party.next_delivery;
        party.next_delivery += 1;
        party.mailbox.insert(id, (kind, identifier, bytes));
        Some(arrival)
    }

    /// Moves everything between the cores, the sessions, the gateway and the network until
    /// nothing moves (time stands still meanwhile).
    fn settle(&mut self) {
        for _ in 0..TURNS_MAX {
            let mut moved = false;
            for p in 0..self.parties.len() {
                moved |= self.turn(p);
            }
            if !moved {
                return;
            }
        }
        panic!("the world did not settle");
    }

    fn turn(&mut self, p: usize) -> bool {
        let now = self.now_us;
        let mut moved = false;
        let mut forwards = Vec::new();
        {
            let party = &mut self.parties[p];
            // The core's output onto the session (lost if there is no connection).
            while let Some(transmit) = party.drains.then(|| party.core.poll_transmit()).flatten() {
                moved = true;
                let Some(link) = party.link.as_mut() else {
                    continue;
                };
                match transmit {
                    LoopixTransmit::Packet(built) => {
                        let message = ClientMessage::Forward {
                            first_hop: built.first_hop,
                            packet: built.packet,
                        };
                        link.client.send(&message).unwrap();
                        pump(link, now, &mut self.rng, &self.layer1);
                    }
                    LoopixTransmit::Confirm(ids) => {
                        for id in ids {
                            link.client.confirm(id);
                        }
                    }
                }
            }
            while let Some(event) = party.drains.then(|| party.core.poll_event()).flatten() {
                moved = true;
                match event {
                    LoopixEvent::Progress {
                        message_id,
                        progress,
                        done,
                    } => {
                        let entry = party.progress.entry(message_id).or_default();
                        assert!(!entry.1, "progress after done: {progress:?}");
                        *entry = (progress, done);
                    }
                    LoopixEvent::Received(message) => {
                        if party.confirms {
                            if let Some(link) = party.link.as_mut() {
                                for id in &message.delivery_ids {
                                    link.client.confirm(*id);
                                }
                            }
                        }
                        party.received.push(message);
                    }
                }
            }
            let Some(link) = party.link.as_mut() else {
                return moved;
            };
            moved |= pump(link, now, &mut self.rng, &self.layer1);
            while let Some(event) = link.gateway.poll_event() {
                moved = true;
                match event {
                    GatewayEvent::Authenticated { .. } => {
                        let stored = party.mailbox.len() as u32;
                        link.gateway.open(stored, None, &self.layer1);
                    }
                    GatewayEvent::Forward { next_hop, packet } => {
                        if party.drops > 0 {
                            party.drops -= 1;
                            party.departures.push((now, None));
                        } else {
                            forwards.push((address::encode(&next_hop), packet));
                        }
                    }
                    GatewayEvent::Confirm { ids } => {
                        for id in ids {
                            party.mailbox.remove(&id);
                        }
                    }
                    // Admission is recorded by a real gateway; nothing to keep here.
                    GatewayEvent::Closed { .. } | GatewayEvent::Admit { .. } => {}
                    other => panic!("unmetered gateway: {other:?}"),
                }
            }
            while let Some(event) = link.client.poll_event() {
                moved = true;
                match event {
                    ClientEvent::Welcome { .. } => party.core.set_connected(true),
                    ClientEvent::Deliver {
                        id,
                        kind,
                        identifier,
                        mut bytes,
                    } => party
                        .core
                        .handle_delivery(now, id, kind, identifier, &mut bytes),
                    ClientEvent::Closed { .. } => party.core.set_connected(false),
                    other => panic!("unexpected {other:?}"),
                }
            }
            // The mailbox after what this session sent already (a new session: all of it).
            if link.gateway.is_established() {
                let cursor = link.gateway.cursor();
                let pending: Vec<_> = party
                    .mailbox
                    .range(cursor + 1..)
                    .map(|(id, d)| (*id, d.clone()))
                    .collect();
                for (id, (kind, identifier, bytes)) in pending {
                    moved = true;
                    link.gateway.deliver(id, kind, identifier, bytes);
                    pump(link, now, &mut self.rng, &self.layer1);
                }
            }
        }
        for (first_hop, packet) in forwards {
            let arrival = self.mixnet(first_hop, packet);
            self.parties[p].departures.push((now, arrival));
        }
        moved
    }

    /// Runs until `end_us`, firing every deadline of every core on time.
    fn run_until(&mut self, end_us: u64) {
        for _ in 0..TURNS_MAX {
            self.settle();
            let next = self
                .parties
                .iter()
                .filter_map(|p| p.core.poll_timeout())
                .min();
            match next {
                Some(next) if next <= end_us => {
                    self.now_us = self.now_us.max(next);
                    let now = self.now_us;
                    for party in &mut self.parties {
                        if party.core.poll_timeout().is_some_and(|t| t <= now) {
                            party.core.handle_timeout(now);
                        }
                    }
                }
                _ => {
                    self.now_us = end_us;
                    self.settle();
                    return;
                }
            }
        }
        panic!("run_until did not reach {end_us}");
    }

    /// Runs until `done` holds, at most until `end_us`.
    fn run_while(&mut self, end_us: u64, mut waiting: impl FnMut(&World) -> bool) {
        let mut step = self.now_us;
        while waiting(self) {
            assert!(step < end_us, "still waiting at {end_us} µs");
            step += 10_000;
            self.run_until(step);
        }
    }
}

/// Moves messages between a client session and its gateway session until both are quiet.
fn pump(link: &mut Link, now: u64, rng: &mut ChaCha20Rng, layer1: &Layer1) -> bool {
    let mut moved = false;
    for _ in 0..10_000 {
        let mut any = false;
        while let Some(t) = link.client.poll_transmit() {
            any = true;
            match t {
                Transmit::Message(bytes) => link.gateway.handle_message(now, &bytes, rng, layer1),
                Transmit::Close(..) => link.gateway.handle_transport_closed(),
            }
        }
        while let Some(t) = link.gateway.poll_transmit() {
            any = true;
            match t {
                Transmit::Message(bytes) => link.client.handle_message(now, &bytes),
                Transmit::Close(..) => link.client.handle_transport_closed(),
            }
        }
        if !any {
            return moved;
        }
        moved = true;
    }
    panic!("the sessions did not settle");
}

fn without_cover() -> LoopixParams {
    params().without_cover()
}

fn data(len: usize, salt: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ salt)
        .collect()
}

#[test]
fn a_message_is_delivered_and_acknowledged() {
    let mut world = World::new(1, &[params(), params()]);
    world.connect(0);
    world.connect(1);
    let message = data(5000, 1);
    let id = world.send(0, 1, &message);
    world.run_while(30_000_000, |w| !w.progress(0, id).1);
    let (progress, done) = world.progress(0, id);
    assert!(done && progress.delivered(), "{progress:?}");
    assert_eq!(progress.sent, progress.fragments);
    assert!(progress.fragments >= 3, "{progress:?}");
    let b = &world.parties[1];
    assert_eq!(b.received.len(), 1);
    assert_eq!(b.received[0].data, message);
    assert_eq!(b.received[0].message_id, id);
    let a = world.parties[0].core.counters();
    assert_eq!(a.fragments_acked, progress.fragments as u64);
    assert_eq!(a.retransmitted, 0);
    // Everything was confirmed: the mailboxes empty once the last confirmations went.
    world.run_until(world.now_us + 1_000_000);
    assert!(world.parties[1].mailbox.is_empty());
}

#[test]
fn a_lost_packet_goes_again_after_its_timer_and_is_acknowledged() {
    let mut world = World::new(2, &[without_cover(), params()]);
    world.connect(0);
    world.connect(1);
    world.parties[0].drops = 1;
    let id = world.send(0, 1, b"once more");
    world.run_while(30_000_000, |w| !w.progress(0, id).1);
    let (progress, _) = world.progress(0, id);
    assert!(progress.delivered(), "{progress:?}");
    let a = &world.parties[0];
    assert_eq!(a.core.counters().retransmitted, 1);
    // Without cover every departure is the fragment: the lost one, then the retransmission
    // no earlier than the ack wait (RTT × 1.5 + 1.5 s) after it.
    assert_eq!(a.departures.len(), 2, "{:?}", a.departures);
    assert_eq!(a.departures[0].1, None);
    assert_eq!(
        a.departures[1].1,
        Some(Arrival::Content(world.parties[1].identity))
    );
    assert!(a.departures[1].0 - a.departures[0].0 >= 1_500_000);
    assert_eq!(world.parties[1].received.len(), 1);
    assert_eq!(world.parties[1].received[0].data, b"once more");
}

#[test]
fn the_retransmission_timer_starts_when_the_packet_leaves() {
    // Queued while disconnected: the stream's ticks pass unsent, nothing leaves for 5 s,
    // longer than the ack wait. No timer may run meanwhile, and once the packet leaves and is
    // acknowledged, nothing goes again.
    let mut world = World::new(3, &[without_cover(), params()]);
    world.connect(1);
    let id = world.send(0, 1, b"queued");
    world.run_until(5_000_000);
    assert!(world.parties[0].departures.is_empty());
    assert_eq!(world.progress(0, id).0.sent, 0);
    world.connect(0);
    world.run_while(30_000_000, |w| !w.progress(0, id).1);
    let a = &world.parties[0];
    assert!(world.progress(0, id).0.delivered());
    assert_eq!(a.core.counters().retransmitted, 0);
    assert_eq!(a.departures.len(), 1);
    assert!(a.departures[0].0 >= 5_000_000);
    // Lost this time: the retransmission comes an ack wait after the packet left, not after
    // it was queued.
    world.disconnect(0);
    let id = world.send(0, 1, b"queued and lost");
    world.run_until(10_000_000);
    world.parties[0].drops = 1;
    world.connect(0);
    world.run_while(40_000_000, |w| !w.progress(0, id).1);
    let a = &world.parties[0];
    assert!(world.progress(0, id).0.delivered());
    assert_eq!(a.core.counters().retransmitted, 1);
    let [_, lost, again] = a.departures[..] else {
        panic!("{:?}", a.departures);
    };
    assert!(lost.0 >= 10_000_000 && lost.1.is_none());
    assert!(again.0 - lost.0 >= 1_500_000, "{lost:?} {again:?}");
}

#[test]
fn a_fragment_given_up_is_reported_failed_never_delivered() {
    let lossy = LoopixParams {
        max_retransmissions: Some(2),
        ..without_cover()
    };
    let mut world = World::new(4, &[lossy, params()]);
    world.connect(0);
    world.connect(1);
    world.parties[0].drops = usize::MAX;
    let id = world.send(0, 1, &data(3000, 4));
    world.run_while(60_000_000, |w| !w.progress(0, id).1);
    let (progress, done) = world.progress(0, id);
    assert!(done && progress.finished());
    assert_eq!(progress.failed, progress.fragments, "{progress:?}");
    assert_eq!(progress.acked, 0);
    assert!(!progress.delivered());
    let a = world.parties[0].core.counters();
    assert_eq!(a.fragments_given_up, progress.fragments as u64);
    // The first transmission and two retransmissions of each fragment, then nothing.
    assert_eq!(a.real_sent, 3 * progress.fragments as u64);
    assert_eq!(a.retransmitted, 2 * progress.fragments as u64);
    world.run_until(world.now_us + 20_000_000);
    assert_eq!(world.parties[0].core.counters().real_sent, a.real_sent);
    assert!(world.parties[1].received.is_empty());
}

#[test]
fn reconnects_redeliver_what_was_not_confirmed() {
    let mut world = World::new(5, &[params(), params()]);
    world.connect(0);
    world.connect(1);
    // B's application takes the message but the transport breaks before it confirms: the
    // gateway keeps the fragments and the next session delivers them again; the core knows
    // the message and confirms them without handing it over twice.
    world.parties[1].confirms = false;
    let first = world.send(0, 1, &data(4000, 5));
    world.run_while(30_000_000, |w| w.parties[1].received.is_empty());
    let fragments = world.progress(0, first).0.fragments;
    assert_eq!(world.parties[1].mailbox.len(), fragments);
    world.disconnect(1);
    world.parties[1].confirms = true;
    // Meanwhile a second message arrives at the gateway only.
    let second = world.send(0, 1, b"while away");
    world.run_while(30_000_000, |w| !w.progress(0, second).1);
    assert!(
        world.progress(0, second).0.delivered(),
        "acked by the gateway"
    );
    assert_eq!(world.parties[1].received.len(), 1);
    world.connect(1);
    world.run_until(world.now_us + 2_000_000);
    let b = &world.parties[1];
    assert_eq!(b.received.len(), 2, "the first once, then the second");
    assert_eq!(b.received[1].data, b"while away");
    assert_eq!(b.core.counters().duplicates, fragments as u64);
    assert!(b.mailbox.is_empty(), "{:?}", b.mailbox.keys());
}

/// Kolmogorov-Smirnov distance between the gaps and Exp(mean).
fn ks_exponential(mut gaps: Vec<f64>, mean: f64) -> f64 {
    gaps.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = gaps.len() as f64;
    let mut d: f64 = 0.0;
    for (i, gap) in gaps.iter().enumerate() {
        let cdf = 1.0 - (-gap / mean).exp();
        d = d.max((cdf - i as f64 / n).abs().max((i as f64 + 1.0) / n - cdf));
    }
    d
}

fn gaps(times: &[u64]) -> Vec<f64> {
    times.windows(2).map(|w| (w[1] - w[0]) as f64).collect()
}

/// The departures of party `p` by what they were: (drop cover, loop cover, real to others).
fn streams(world: &World, p: usize) -> (Vec<u64>, Vec<u64>, Vec<u64>) {
    let own = world.parties[p].identity;
    let (mut drop, mut loops, mut real) = (Vec::new(), Vec::new(), Vec::new());
    for &(at, arrival) in &world.parties[p].departures {
        match arrival {
            Some(Arrival::DropCover) => drop.push(at),
            Some(Arrival::Content(to)) if to == own => loops.push(at),
            Some(Arrival::Content(_)) => real.push(at),
            other => panic!("{other:?}"),
        }
    }
    (drop, loops, real)
}

#[test]
fn idle_client_streams_are_poisson_at_their_rates_on_the_wire() {
    // What leaves the client (seen at its gateway), not the schedule alone: the real stream
    // is all drop cover when idle, and both streams are Poisson at their configured rates.
    let mut world = World::new(6, &[params()]);
    world.connect(0);
    let span_us = 60_000_000;
    world.run_until(span_us);
    let (drop, loops, real) = streams(&world, 0);
    assert!(real.is_empty());
    // 3000 and 600 expected: within 5 standard deviations.
    assert!((2725..3275).contains(&drop.len()), "{}", drop.len());
    assert!((480..720).contains(&loops.len()), "{}", loops.len());
    let counters = world.parties[0].core.counters();
    assert_eq!(counters.drop_cover_sent, drop.len() as u64);
    assert_eq!(counters.loop_cover_sent, loops.len() as u64);
    // KS at the 1 % level: 1.63 / sqrt(n).
    let d = ks_exponential(gaps(&drop), 20_000.0);
    assert!(d < 1.63 / (drop.len() as f64).sqrt(), "drop cover KS {d}");
    let d = ks_exponential(gaps(&loops), 100_000.0);
    assert!(d < 1.63 / (loops.len() as f64).sqrt(), "loop cover KS {d}");
    // The check can fail: constant gaps are rejected.
    let constant: Vec<u64> = (0..600).map(|i| i * 100_000).collect();
    assert!(ks_exponential(gaps(&constant), 100_000.0) > 1.63 / 600f64.sqrt());
    // Every loop-cover packet came back to the client, with its ACK.
    assert_eq!(counters.loop_cover_received, loops.len() as u64);
}

#[test]
fn loop_cover_keeps_its_rate_behind_a_long_real_queue() {
    let slow = LoopixParams {
        message_sending_average_delay_ms: 50.0,
        ..params()
    };
    let mut world = World::new(7, &[slow, params()]);
    world.connect(0);
    world.connect(1);
    // Far more fragments than the real stream sends in the window: the queue never empties.
    let id = world.send(0, 1, &data(2_000_000, 7));
    let fragments = world.progress(0, id).0.fragments;
    let span_us = 20_000_000;
    assert!(fragments as u64 > 2 * span_us / 50_000, "{fragments}");
    world.run_until(span_us);
    assert!(world.parties[0].core.has_real());
    let (drop, loops, real) = streams(&world, 0);
    // Real packets take every tick of the real stream: no drop cover while they wait...
    assert!(drop.is_empty(), "{} drop cover", drop.len());
    assert!((310..490).contains(&real.len()), "{}", real.len());
    // ...and loop cover goes at its own rate all the same (200 expected).
    assert!((130..270).contains(&loops.len()), "{}", loops.len());
    let d = ks_exponential(gaps(&loops), 100_000.0);
    assert!(d < 1.63 / (loops.len() as f64).sqrt(), "loop cover KS {d}");
}

#[test]
fn a_driver_that_stops_draining_finds_the_queues_at_their_caps_and_nothing_lost() {
    let small = ClientLimits {
        transmits_max: 4,
        events_max: 4,
        ..ClientLimits::default()
    };
    let mut world = World::with_limits(7, &[params(), params()], small);
    world.connect(0);
    world.connect(1);
    // A's driver stops taking its output while a long message waits in its queue.
    world.parties[0].drains = false;
    let message = data(20_000, 7);
    let id = world.send(0, 1, &message);
    let fragments = world.progress(0, id).0.fragments;
    assert!(fragments > 4, "{fragments}");
    world.run_until(world.now_us + 5_000_000);
    let a = &mut world.parties[0].core;
    let stalled = a.counters();
    // Five seconds of both streams' ticks found the queues full: counted, not queued.
    assert!(stalled.ticks_deferred > 10, "{stalled:?}");
    let mut transmits = Vec::new();
    while let Some(t) = a.poll_transmit() {
        transmits.push(t);
    }
    let mut events = Vec::new();
    while let Some(e) = a.poll_event() {
        events.push(e);
    }
    assert_eq!(transmits.len(), 4, "the transmit queue stays at its cap");
    assert!(events.len() <= 4, "{events:?}");
    // Only what the core handed out counts as sent; the rest of the message is still queued.
    let real = transmits
        .iter()
        .filter(
            |t| matches!(t, LoopixTransmit::Packet(b) if matches!(b.kind, PacketKind::Real { .. })),
        )
        .count() as u64;
    assert_eq!(stalled.real_sent, real);
    // Every fragment is still queued or was handed out (a handed-out one whose timer ran
    // out is queued again: it never left as far as the core can tell).
    assert!(stalled.queued + real >= fragments as u64, "{stalled:?}");
    assert!(stalled.queued <= fragments as u64, "{stalled:?}");
    let sent = events
        .iter()
        .filter_map(|e| match e {
            LoopixEvent::Progress { progress, .. } => Some(progress.sent),
            LoopixEvent::Received(_) => None,
        })
        .max()
        .unwrap_or(0);
    assert_eq!(sent as u64, real);
    assert_eq!(
        stalled.events_dropped, 0,
        "progress events coalesce per message"
    );
    // What the driver took and dropped (as a lost connection would) goes again after its
    // timer; the message arrives whole once the driver drains again.
    world.parties[0].drains = true;
    world.run_while(world.now_us + 60_000_000, |w| !w.progress(0, id).1);
    let (progress, _) = world.progress(0, id);
    assert!(progress.delivered(), "{progress:?}");
    assert!(world.parties[0].core.counters().retransmitted >= real);
    assert_eq!(world.parties[1].received.len(), 1);
    assert_eq!(world.parties[1].received[0].data, message);
}

#[test]
fn deliveries_to_a_core_whose_driver_stopped_draining_stay_at_the_gateway() {
    let small = ClientLimits {
        transmits_max: 2,
        events_max: 2,
        ..ClientLimits::default()
    };
    let mut world = World::with_limits(8, &[without_cover(), without_cover()], small);
    world.connect(0);
    world.connect(1);
    world.parties[1].drains = false;
    // Three messages: the first two fill B's queues (a Received event and a Confirm each),
    // the third finds them full.
    let messages: Vec<Vec<u8>> = (0..3).map(|i| data(3000, 80 + i)).collect();
    let ids: Vec<u64> = messages.iter().map(|m| world.send(0, 1, m)).collect();
    // The sender's packets reach B's gateway (acknowledged there), but B takes nothing.
    world.run_while(60_000_000, |w| ids.iter().any(|id| !w.progress(0, *id).1));
    for id in &ids {
        assert!(world.progress(0, *id).0.delivered());
    }
    let b = world.parties[1].core.counters();
    assert!(b.deliveries_deferred > 0, "{b:?}");
    assert!(world.parties[1].received.is_empty());
    assert!(!world.parties[1].mailbox.is_empty(), "unconfirmed: kept");
    // B's driver drains again and reconnects: the gateway delivers what it kept.
    world.parties[1].drains = true;
    world.settle();
    world.disconnect(1);
    world.connect(1);
    world.run_while(world.now_us + 10_000_000, |w| {
        w.parties[1].received.len() < 3
    });
    let mut received: Vec<Vec<u8>> = world.parties[1]
        .received
        .iter()
        .map(|r| r.data.clone())
        .collect();
    received.sort();
    let mut sent = messages.clone();
    sent.sort();
    assert_eq!(received, sent, "each message once, none lost");
    world.run_until(world.now_us + 1_000_000);
    assert!(world.parties[1].mailbox.is_empty());
}

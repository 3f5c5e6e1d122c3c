//! Lethe's Sphinx vs `sphinx-packet` 0.8 in the same run: process one hop and create a packet,
//! 2413-byte packets, 4 hops, version 260.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use lethe_crypto::sphinx::{self, Destination, Packet, PacketSpec, RouteHop, Version};
use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};
use sphinx_packet::crypto::PublicKey;
use sphinx_packet::header::delays::Delay;
use sphinx_packet::route::{DestinationAddressBytes, Node, NodeAddressBytes};
use sphinx_packet::{SphinxPacket, SphinxPacketBuilder};
use x25519_dalek::StaticSecret;

const HOPS: usize = 4;
const PACKET_SIZE: usize = sphinx::constants::PACKET_SIZE_REGULAR;
const PAYLOAD_SIZE: usize = PACKET_SIZE - sphinx::constants::HEADER_SIZE;

struct Setup {
    secrets: Vec<StaticSecret>,
    hops: Vec<RouteHop>,
    delays_ns: Vec<u64>,
    destination: Destination,
    message: Vec<u8>,
}

impl Setup {
    fn new() -> Setup {
        let mut rng = ChaCha20Rng::seed_from_u64(42);
        let secrets: Vec<StaticSecret> = (0..HOPS)
            .map(|_| StaticSecret::random_from_rng(&mut rng))
            .collect();
        let hops = secrets
            .iter()
            .enumerate()
            .map(|(i, s)| RouteHop {
                address: [i as u8 + 1; 32],
                public_key: PublicKey::from(s).to_bytes(),
            })
            .collect();
        let mut message = vec![0u8; 1600];
        rng.fill_bytes(&mut message);
        Setup {
            secrets,
            hops,
            delays_ns: vec![15_000_000; HOPS],
            destination: Destination {
                address: [9; 32],
                identifier: [0; 16],
            },
            message,
        }
    }

    fn spec(&self) -> PacketSpec<'_> {
        PacketSpec {
            route: &self.hops,
            delays_ns: &self.delays_ns,
            destination: &self.destination,
            version: Version::SINGLE_SEED_SURB,
        }
    }

    fn nodes(&self) -> Vec<Node> {
        self.hops
            .iter()
            .map(|h| {
                Node::new(
                    NodeAddressBytes::from_bytes(h.address),
                    PublicKey::from(h.public_key),
                )
            })
            .collect()
    }

    fn ref_destination(&self) -> sphinx_packet::route::Destination {
        sphinx_packet::route::Destination::new(
            DestinationAddressBytes::from_bytes(self.destination.address),
            self.destination.identifier,
        )
    }

    fn delays(&self) -> Vec<Delay> {
        self.delays_ns
            .iter()
            .map(|&ns| Delay::new_from_nanos(ns))
            .collect()
    }
}

fn process(c: &mut Criterion) {
    let setup = Setup::new();
    let mut rng = ChaCha20Rng::seed_from_u64(7);
    let bytes =
        sphinx::create(&setup.message, PAYLOAD_SIZE, &setup.spec(), None, &mut rng).unwrap();
    let mut group = c.benchmark_group("sphinx_process_2413B_v260_first_of_4_hops");
    group.bench_function("lethe", |b| {
        let mut buffer = bytes.clone();
        b.iter(|| {
            buffer.copy_from_slice(&bytes);
            let mut packet = Packet::new_checked(&mut buffer[..]).unwrap();
            black_box(sphinx::process(&mut packet, &setup.secrets[0]).unwrap());
        })
    });
    group.bench_function("sphinx-packet", |b| {
        b.iter_batched(
            || SphinxPacket::from_bytes(&bytes).unwrap(),
            |packet| black_box(packet.process(&setup.secrets[0]).unwrap()),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

fn create(c: &mut Criterion) {
    let setup = Setup::new();
    let mut group = c.benchmark_group("sphinx_create_2413B_v260_4_hops");
    let mut rng = ChaCha20Rng::seed_from_u64(8);
    let mut buffer = vec![0u8; PACKET_SIZE];
    group.bench_function("lethe", |b| {
        b.iter(|| {
            black_box(
                sphinx::create_into(&mut buffer, &setup.message, &setup.spec(), None, &mut rng)
                    .unwrap(),
            );
        })
    });
    let nodes = setup.nodes();
    let destination = setup.ref_destination();
    let delays = setup.delays();
    let builder = SphinxPacketBuilder::new()
        .with_payload_size(PAYLOAD_SIZE)
        .with_version(sphinx_packet::version::Version::new(260));
    group.bench_function("sphinx-packet", |b| {
        b.iter(|| {
            black_box(
                builder
                    .build_packet(&setup.message, &nodes, &destination, &delays)
                    .unwrap(),
            )
        })
    });
    group.finish();
}

criterion_group!(benches, process, create);
criterion_main!(benches);

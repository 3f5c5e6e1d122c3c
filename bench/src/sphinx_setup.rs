//! One Sphinx benchmark scenario in both crates' types: 4 hops, 2413-byte packets, v260.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use lethe_crypto::sphinx::{self, CreateJob, Destination, PacketSpec, RouteHop, Version};
use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};
use sphinx_packet::crypto::PublicKey;
use sphinx_packet::header::delays::Delay;
use sphinx_packet::route::{DestinationAddressBytes, Node, NodeAddressBytes};
use sphinx_packet::SphinxPacketBuilder;
use x25519_dalek::StaticSecret;

pub const HOPS: usize = 4;
pub const PACKET_SIZE: usize = sphinx::constants::PACKET_SIZE_REGULAR;
pub const PAYLOAD_SIZE: usize = PACKET_SIZE - sphinx::constants::HEADER_SIZE;

pub struct Setup {
    pub secrets: Vec<StaticSecret>,
    pub hops: Vec<RouteHop>,
    pub delays_ns: Vec<u64>,
    pub destination: Destination,
    pub message: Vec<u8>,
}

impl Setup {
    pub fn new() -> Setup {
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

    /// One creation job per output buffer, all for this scenario's message and route.
    pub fn create_jobs<'a>(&'a self, outs: &'a mut [Vec<u8>]) -> Vec<CreateJob<'a>> {
        outs.iter_mut()
            .map(|out| CreateJob {
                out,
                message: &self.message,
                spec: self.spec(),
                initial_secret: None,
            })
            .collect()
    }

    pub fn spec(&self) -> PacketSpec<'_> {
        PacketSpec {
            route: &self.hops,
            delays_ns: &self.delays_ns,
            destination: &self.destination,
            version: Version::SINGLE_SEED_SURB,
        }
    }

    /// `sphinx-packet`'s view of the route.
    pub fn reference(&self) -> Reference {
        let nodes = self
            .hops
            .iter()
            .map(|h| {
                Node::new(
                    NodeAddressBytes::from_bytes(h.address),
                    PublicKey::from(h.public_key),
                )
            })
            .collect();
        Reference {
            nodes,
            destination: sphinx_packet::route::Destination::new(
                DestinationAddressBytes::from_bytes(self.destination.address),
                self.destination.identifier,
            ),
            delays: self
                .delays_ns
                .iter()
                .map(|&ns| Delay::new_from_nanos(ns))
                .collect(),
            builder: SphinxPacketBuilder::new()
                .with_payload_size(PAYLOAD_SIZE)
                .with_version(sphinx_packet::version::Version::new(260)),
        }
    }

    /// `count` distinct packets (fresh x each) for processing at the first hop.
    pub fn corpus(&self, count: usize, seed: u64) -> Vec<Vec<u8>> {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        (0..count)
            .map(|_| {
                sphinx::create(&self.message, PAYLOAD_SIZE, &self.spec(), None, &mut rng).unwrap()
            })
            .collect()
    }
}

impl Default for Setup {
    fn default() -> Setup {
        Setup::new()
    }
}

pub struct Reference {
    pub nodes: Vec<Node>,
    pub destination: sphinx_packet::route::Destination,
    pub delays: Vec<Delay>,
    pub builder: SphinxPacketBuilder<'static>,
}

impl Reference {
    pub fn create(&self, message: &[u8]) -> sphinx_packet::SphinxPacket {
        self.builder
            .build_packet(message, &self.nodes, &self.destination, &self.delays)
            .unwrap()
    }
}

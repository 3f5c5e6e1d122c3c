//! Shared helpers for the Sphinx integration tests: seeded networks, the reference crate's
//! side of each operation, and hop-by-hop comparison.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::convert::Infallible;

use lethe_crypto::sphinx::{self, Destination, Hop, Packet, PacketSpec, RouteHop, Version};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use sphinx_packet::crypto::{PrivateKey, PublicKey};
use sphinx_packet::header::delays::Delay;
use sphinx_packet::route::{DestinationAddressBytes, Node, NodeAddressBytes};
use sphinx_packet::{ProcessedPacketData, SphinxPacket};
use x25519_dalek::StaticSecret;

pub const SIZES: [usize; 5] = [
    sphinx::constants::PACKET_SIZE_REGULAR,
    sphinx::constants::PACKET_SIZE_ACK,
    sphinx::constants::PACKET_SIZE_EXTENDED8,
    sphinx::constants::PACKET_SIZE_EXTENDED16,
    sphinx::constants::PACKET_SIZE_EXTENDED32,
];
pub const VERSIONS: [Version; 3] = [
    Version::EXPLICIT_PAYLOAD_KEYS,
    Version::PAYLOAD_KEY_SEEDS,
    Version::SINGLE_SEED_SURB,
];

pub fn rng(seed: u64) -> ChaCha20Rng {
    ChaCha20Rng::seed_from_u64(seed)
}

/// A route of `hops` nodes with their secret keys, in both crates' types.
pub struct Net {
    pub secrets: Vec<StaticSecret>,
    pub hops: Vec<RouteHop>,
    pub delays_ns: Vec<u64>,
    pub destination: Destination,
}

impl Net {
    pub fn new(rng: &mut ChaCha20Rng, hops: usize) -> Net {
        use rand_core::Rng;
        let mut secrets = Vec::new();
        let mut route = Vec::new();
        let mut delays_ns = Vec::new();
        for _ in 0..hops {
            let secret = StaticSecret::random_from_rng(rng);
            let mut address = [0u8; 32];
            rng.fill_bytes(&mut address);
            route.push(RouteHop {
                address,
                public_key: PublicKey::from(&secret).to_bytes(),
            });
            secrets.push(secret);
            delays_ns.push(rng.next_u64() >> 20);
        }
        let mut destination = Destination {
            address: [0; 32],
            identifier: [0; 16],
        };
        rng.fill_bytes(&mut destination.address);
        rng.fill_bytes(&mut destination.identifier);
        Net {
            secrets,
            hops: route,
            delays_ns,
            destination,
        }
    }

    pub fn spec(&self, version: Version) -> PacketSpec<'_> {
        PacketSpec {
            route: &self.hops,
            delays_ns: &self.delays_ns,
            destination: &self.destination,
            version,
        }
    }

    pub fn nodes(&self) -> Vec<Node> {
        self.hops
            .iter()
            .map(|hop| {
                Node::new(
                    NodeAddressBytes::from_bytes(hop.address),
                    PublicKey::from(hop.public_key),
                )
            })
            .collect()
    }

    pub fn delays(&self) -> Vec<Delay> {
        self.delays_ns
            .iter()
            .map(|&ns| Delay::new_from_nanos(ns))
            .collect()
    }

    pub fn ref_destination(&self) -> sphinx_packet::route::Destination {
        sphinx_packet::route::Destination::new(
            DestinationAddressBytes::from_bytes(self.destination.address),
            self.destination.identifier,
        )
    }

    /// A packet built by `sphinx-packet` with initial secret `x`.
    pub fn ref_packet(&self, x: &PrivateKey, version: Version, size: usize, msg: &[u8]) -> Vec<u8> {
        sphinx_packet::SphinxPacketBuilder::new()
            .with_version(sphinx_packet::version::Version::new(version.value()))
            .with_payload_size(size - sphinx::constants::HEADER_SIZE)
            .with_initial_secret(x)
            .build_packet(msg, &self.nodes(), &self.ref_destination(), &self.delays())
            .unwrap()
            .to_bytes()
    }
}

/// Result of walking a packet through its route with both implementations.
pub struct Walk {
    /// Lethe's buffer after the final hop.
    pub final_buffer: Vec<u8>,
    /// `sphinx-packet`'s final payload.
    pub ref_payload: Vec<u8>,
    pub destination: [u8; 32],
    pub identifier: [u8; 16],
}

impl Walk {
    /// The message `sphinx-packet` recovers from its final payload.
    pub fn ref_plaintext(&self) -> Vec<u8> {
        sphinx_packet::payload::Payload::from_bytes(&self.ref_payload)
            .unwrap()
            .recover_plaintext()
            .unwrap()
    }
}

/// Processes `bytes` hop by hop with both crates, asserting identical results at every hop.
pub fn walk(net: &Net, bytes: &[u8], version: Version) -> Walk {
    let mut lethe = bytes.to_vec();
    let mut reference = bytes.to_vec();
    let hops = net.secrets.len();
    for (index, secret) in net.secrets.iter().enumerate() {
        assert_eq!(lethe, reference, "packets diverged before hop {index}");
        let ref_packet = SphinxPacket::from_bytes(&reference).unwrap();
        let ref_tag = *ref_packet
            .header
            .compute_expanded_shared_secret(secret)
            .replay_tag();
        let ref_processed = ref_packet.process(secret).unwrap();
        let mut packet = Packet::new_checked(&mut lethe[..]).unwrap();
        let processed = sphinx::process(&mut packet, secret).unwrap();
        assert_eq!(processed.replay_tag, ref_tag, "replay tag at hop {index}");
        assert_eq!(processed.version.value(), ref_processed.version.value());
        assert_eq!(processed.version, version);
        match (processed.hop, ref_processed.data) {
            (
                Hop::Forward { next_hop, delay_ns },
                ProcessedPacketData::ForwardHop {
                    next_hop_packet,
                    next_hop_address,
                    delay,
                },
            ) => {
                assert!(index + 1 < hops, "forward at the last hop");
                assert_eq!(next_hop, next_hop_address.to_bytes());
                assert_eq!(next_hop, net.hops[index + 1].address);
                assert_eq!(delay_ns, delay.to_nanos());
                assert_eq!(delay_ns, net.delays_ns[index]);
                reference = next_hop_packet.to_bytes();
            }
            (
                Hop::Final {
                    destination,
                    identifier,
                },
                ProcessedPacketData::FinalHop {
                    destination: d,
                    identifier: i,
                    payload,
                },
            ) => {
                assert_eq!(index + 1, hops, "final before the last hop");
                assert_eq!(destination, d.as_bytes());
                assert_eq!(identifier, i);
                assert_eq!(&lethe[sphinx::constants::HEADER_SIZE..], payload.as_bytes());
                return Walk {
                    ref_payload: payload.as_bytes().to_vec(),
                    final_buffer: lethe,
                    destination,
                    identifier,
                };
            }
            _ => panic!("hop kinds differ at hop {index}"),
        }
    }
    panic!("route ended without a final hop")
}

/// The final hop's random padding, read back from Lethe's decrypted beta.
pub fn final_padding(final_buffer: &[u8], hops: usize) -> Vec<u8> {
    let beta = &final_buffer[48..348];
    let end = 300 - 60 * (hops - 1);
    beta[52..end].to_vec()
}

/// An RNG that replays fixed bytes (to feed the reference crate's padding back into Lethe).
pub struct Replay {
    bytes: Vec<u8>,
    at: usize,
}

impl Replay {
    pub fn new(bytes: Vec<u8>) -> Replay {
        Replay { bytes, at: 0 }
    }

    pub fn exhausted(&self) -> bool {
        self.at == self.bytes.len()
    }
}

impl rand_core::TryRng for Replay {
    type Error = Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        let mut b = [0u8; 4];
        self.try_fill_bytes(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        let mut b = [0u8; 8];
        self.try_fill_bytes(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        let end = self.at + dst.len();
        dst.copy_from_slice(&self.bytes[self.at..end]);
        self.at = end;
        Ok(())
    }
}

impl rand_core::TryCryptoRng for Replay {}

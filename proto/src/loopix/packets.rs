//! Building the client's Sphinx packets from a topology, I/O-free: forward packets with a
//! SURB-ACK, ACK packets, loop and drop cover, reply SURBs and replies.
//!
//! Every route is one random mixnode per layer of the topology (Nym's three, or 1 to
//! `LAYERS_MAX`), then a gateway: `[L1, L2, L3, gateway]`; packets to us and our
//! ACKs and SURBs end at our own gateway with destination = our ed25519 identity.

use lethe_crypto::framing::PacketSize;
use lethe_crypto::sphinx::{
    self, build_surb, Destination, PacketSpec, RouteSecrets, Surb, SurbRecovery, Version,
};
use rand::CryptoRng;

use super::address::Recipient;
use super::clear::{self, PacketFormat};
use super::message::{forward_content_len, reply_content_len};
use crate::topology::{self, Descriptor, Route, Topology, ROUTE_HOPS_MAX};
use crate::wire::payload::{
    write_surb_ack, ACK_CONTENT_BYTES, DROP_COVER_DESTINATION, SURB_ACK_ADDRESS_BYTES,
    SURB_ACK_BYTES,
};

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("gateway {0} is not in the topology")]
    UnknownGateway(String),
    #[error("no route: {0}")]
    Route(#[from] topology::TopologyError),
    #[error("sphinx: {0}")]
    Sphinx(#[from] sphinx::SphinxError),
    #[error("content of {len} bytes does not fit ({max})")]
    ContentLength { len: usize, max: usize },
    #[error("the payload prefix cannot be written")]
    Prefix,
}

/// Loopix parameters the builder needs.
#[derive(Debug, Clone, Copy)]
pub struct Delays {
    /// Mean per-hop delay of forward packets (ms).
    pub packet_ms: f64,
    /// Mean per-hop delay of ACK packets and reply SURBs (ms).
    pub ack_ms: f64,
}

/// A packet ready for `ClientMessage::Forward`.
#[derive(Debug)]
pub struct Built {
    pub first_hop: [u8; SURB_ACK_ADDRESS_BYTES],
    pub packet: Vec<u8>,
    /// Sum of the sampled mix delays of the packet and of its ACK (ns).
    pub expected_rtt_ns: u64,
    /// What the packet carries. Never on the wire: for a driver that accounts for its
    /// traffic (a simulator's ground truth, metrics).
    pub kind: PacketKind,
    /// The route's secrets, only when the builder was asked to keep them
    /// ([`Builder::keep_secrets`]): with them a tracing driver names the link its own loop
    /// comes back on. Never on the wire.
    pub route_secrets: Option<KeptSecrets>,
}

/// A built packet's route secrets (whoever holds them can unwrap its header as each hop
/// does); `Debug` shows none of them.
#[derive(Clone)]
pub struct KeptSecrets(pub Box<RouteSecrets>);

impl std::fmt::Debug for KeptSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeptSecrets(..)")
    }
}

/// What a [`Built`] packet carries, as its sender knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketKind {
    /// Fragment `fragment` of outgoing message `message_id` (a retransmission too).
    Real {
        message_id: u64,
        fragment: u32,
    },
    /// A fragment of reply `message_id`, on a SURB.
    Reply {
        message_id: u64,
    },
    DropCover,
    /// A loop to ourselves; `message_id` is the one its fragment carries (what
    /// [`super::LoopixClient::last_fragment`] names when it comes back).
    LoopCover {
        message_id: u64,
    },
}

/// Who we are, for routes back to us.
#[derive(Debug, Clone, Copy)]
pub struct SelfRoute {
    pub identity: [u8; 32],
    pub gateway: [u8; 32],
}

pub struct Builder<'a> {
    pub topology: &'a Topology,
    pub own: SelfRoute,
    pub delays: Delays,
    pub size: PacketSize,
    /// Sphinx, or clear packets for a simulator's cost model.
    pub format: PacketFormat,
    /// Keep a forward packet's route secrets in [`Built::route_secrets`] (Sphinx only).
    pub keep_secrets: bool,
}

impl Builder<'_> {
    fn gateway(&self, identity: &[u8; 32]) -> Result<&Descriptor, BuildError> {
        self.topology
            .gateway(identity)
            .ok_or_else(|| BuildError::UnknownGateway(crate::hex::encode(identity)))
    }

    fn route<R: CryptoRng + ?Sized>(
        &self,
        rng: &mut R,
        gateway: &[u8; 32],
    ) -> Result<Route, BuildError> {
        let gateway = self.gateway(gateway)?;
        Ok(self.topology.random_route(rng, gateway)?)
    }

    /// Delays for a route of `hops` hops: the first `hops` entries of the array.
    fn delays<R: CryptoRng + ?Sized>(
        rng: &mut R,
        mean_ms: f64,
        hops: usize,
    ) -> ([u64; ROUTE_HOPS_MAX], u64) {
        let mut delays = [0u64; ROUTE_HOPS_MAX];
        let hops = hops.clamp(1, ROUTE_HOPS_MAX);
        // The last hop (the gateway) does not delay: its delay is not encoded.
        topology::sample_delays_ns(rng, mean_ms, &mut delays[..hops - 1]);
        let total = delays.iter().fold(0u64, |a, d| a.saturating_add(*d));
        (delays, total)
    }

    fn sphinx<R: CryptoRng + ?Sized>(
        &self,
        rng: &mut R,
        size: PacketSize,
        message: &[u8],
        route: &Route,
        delays: &[u64; ROUTE_HOPS_MAX],
        destination: &Destination,
    ) -> Result<(Vec<u8>, Option<KeptSecrets>), BuildError> {
        let route = route.hops();
        if self.format == PacketFormat::Clear {
            let delays_ns = &delays[..route.len()];
            let nonce = rng.next_u64();
            let packet = clear::create(nonce, size, message, route, delays_ns, destination)?;
            return Ok((packet, None));
        }
        let spec = PacketSpec {
            route,
            delays_ns: &delays[..route.len()],
            destination,
            version: Version::CURRENT,
        };
        if self.keep_secrets {
            let mut packet =
                vec![0u8; sphinx::constants::HEADER_SIZE.saturating_add(size.payload_len())];
            let secrets = sphinx::create_into(&mut packet, message, &spec, None, rng)?;
            return Ok((packet, Some(KeptSecrets(Box::new(secrets)))));
        }
        let packet = sphinx::create(message, size.payload_len(), &spec, None, rng)?;
        Ok((packet, None))
    }

    /// An ACK packet (Ack size) carrying `ack_plaintext`, routed back to us.
    pub fn ack_packet<R: CryptoRng + ?Sized>(
        &self,
        rng: &mut R,
        ack_plaintext: &[u8; ACK_CONTENT_BYTES],
    ) -> Result<([u8; 32], Vec<u8>, u64), BuildError> {
        let route = self.route(rng, &self.own.gateway)?;
        let (delays, total) = Self::delays(rng, self.delays.ack_ms, route.hops().len());
        let destination = Destination {
            address: self.own.identity,
            identifier: [0u8; 16],
        };
        let (packet, _) = self.sphinx(
            rng,
            PacketSize::Ack,
            ack_plaintext,
            &route,
            &delays,
            &destination,
        )?;
        Ok((route.first().address, packet, total))
    }

    /// A forward packet to `(destination identity, gateway)` whose payload is
    /// `SURB-ACK ‖ content` (`content` exactly [`forward_content_len`] bytes); `ack` = None
    /// writes an all-zero SURB-ACK (no ACK wanted).
    pub fn forward<R: CryptoRng + ?Sized>(
        &self,
        rng: &mut R,
        destination: &[u8; 32],
        gateway: &[u8; 32],
        content: &[u8],
        ack: Option<&[u8; ACK_CONTENT_BYTES]>,
    ) -> Result<Built, BuildError> {
        let max = forward_content_len(self.size);
        if content.len() != max {
            return Err(BuildError::ContentLength {
                len: content.len(),
                max,
            });
        }
        let mut plaintext = vec![0u8; SURB_ACK_BYTES + content.len()];
        let mut ack_rtt = 0;
        match ack {
            Some(ack_plaintext) => {
                let (first_hop, packet, total) = self.ack_packet(rng, ack_plaintext)?;
                ack_rtt = total;
                write_surb_ack(&mut plaintext, Some((&first_hop, &packet)))
                    .ok_or(BuildError::Prefix)?;
            }
            None => write_surb_ack(&mut plaintext, None).ok_or(BuildError::Prefix)?,
        }
        plaintext[SURB_ACK_BYTES..].copy_from_slice(content);
        let route = self.route(rng, gateway)?;
        let (delays, total) = Self::delays(rng, self.delays.packet_ms, route.hops().len());
        let destination = Destination {
            address: *destination,
            identifier: [0u8; 16],
        };
        let (packet, route_secrets) =
            self.sphinx(rng, self.size, &plaintext, &route, &delays, &destination)?;
        Ok(Built {
            first_hop: route.first().address,
            packet,
            expected_rtt_ns: total.saturating_add(ack_rtt),
            // The caller names what it built (the builder only knows drop cover apart).
            kind: if destination.address == DROP_COVER_DESTINATION {
                PacketKind::DropCover
            } else {
                PacketKind::Real {
                    message_id: 0,
                    fragment: 0,
                }
            },
            route_secrets,
        })
    }

    /// A forward packet to a recipient address.
    pub fn to_recipient<R: CryptoRng + ?Sized>(
        &self,
        rng: &mut R,
        recipient: &Recipient,
        content: &[u8],
        ack: Option<&[u8; ACK_CONTENT_BYTES]>,
    ) -> Result<Built, BuildError> {
        self.forward(rng, &recipient.identity, &recipient.gateway, content, ack)
    }

    /// A drop-cover packet: to [`DROP_COVER_DESTINATION`] at a random gateway, random content.
    pub fn drop_cover<R: CryptoRng + ?Sized>(&self, rng: &mut R) -> Result<Built, BuildError> {
        use rand::seq::IndexedRandom;
        let gateway = self
            .topology
            .gateways
            .choose(rng)
            .ok_or(BuildError::Route(topology::TopologyError::NoRoute(
                "no gateways",
            )))?
            .identity_key()?;
        let mut content = vec![0u8; forward_content_len(self.size)];
        rng.fill_bytes(&mut content);
        self.forward(rng, &DROP_COVER_DESTINATION, &gateway, &content, None)
    }

    /// A reply SURB for a route back to us (v260: we keep the recovery record).
    pub fn reply_surb<R: CryptoRng + ?Sized>(
        &self,
        rng: &mut R,
        identifier: [u8; 16],
    ) -> Result<(Surb, SurbRecovery), BuildError> {
        if self.format == PacketFormat::Clear {
            return Err(BuildError::Sphinx(sphinx::SphinxError::BadSurb(
                "clear packets have no SURBs",
            )));
        }
        let route = self.route(rng, &self.own.gateway)?;
        let (delays, _) = Self::delays(rng, self.delays.ack_ms, route.hops().len());
        let destination = Destination {
            address: self.own.identity,
            identifier,
        };
        let spec = PacketSpec {
            route: route.hops(),
            delays_ns: &delays[..route.hops().len()],
            destination: &destination,
            version: Version::SINGLE_SEED_SURB,
        };
        let (surb, recovery) = build_surb(&spec, None, rng)?;
        let recovery = recovery.ok_or(BuildError::Sphinx(sphinx::SphinxError::BadSurb(
            "no recovery record for a v260 SURB",
        )))?;
        Ok((surb, recovery))
    }
}

/// A reply through a SURB someone gave us: `content` is exactly [`reply_content_len`] bytes.
pub fn reply_packet(surb: &Surb, content: &[u8], size: PacketSize) -> Result<Built, BuildError> {
    let max = reply_content_len(size);
    if content.len() != max {
        return Err(BuildError::ContentLength {
            len: content.len(),
            max,
        });
    }
    let (packet, first_hop) = surb.use_surb(content, size.payload_len())?;
    Ok(Built {
        first_hop,
        packet,
        expected_rtt_ns: 0,
        kind: PacketKind::Reply { message_id: 0 },
        route_secrets: None,
    })
}

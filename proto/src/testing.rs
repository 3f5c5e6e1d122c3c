//! Fixtures for the tests of the cores and of their drivers (feature `test-fixtures`): a
//! topology whose nodes have real Sphinx keys, and a mix network in memory that unwraps a
//! packet hop by hop with them, as the mixnodes and the destination gateway's engine would.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::net::SocketAddr;

use lethe_crypto::sphinx::{self, address, Hop, Packet};
use x25519_dalek::{PublicKey, StaticSecret};

use crate::hex;
use crate::topology::{Descriptor, Role, Topology};
use crate::wire::handshake::identity_public;

/// The gateway's Sphinx key seed (its identity comes from the seed the test gives).
const GATEWAY_SPHINX_SEED: [u8; 32] = [98; 32];
/// A route is 3 mixnodes and the gateway; a packet still moving after this many is looping.
const HOPS_MAX: usize = 5;

/// A node of the test topology: identity from `identity_seed`, Sphinx key from
/// `sphinx_seed`, at `127.0.0.1:port`.
pub fn descriptor(
    identity_seed: &[u8; 32],
    sphinx_seed: [u8; 32],
    port: u16,
    role: Role,
) -> Descriptor {
    Descriptor {
        identity: hex::encode(&identity_public(identity_seed)),
        sphinx_key: hex::encode(PublicKey::from(&StaticSecret::from(sphinx_seed)).as_bytes()),
        rotation_id: 1,
        mix_address: SocketAddr::from(([127, 0, 0, 1], port)),
        role,
        client_url: None,
        metrics_url: None,
        family: None,
        issued_at_s: 1,
    }
}

/// A final hop reached: destination, identifier, the packet with its payload decrypted by
/// the last hop, and the number of hops it took.
pub type Unwrapped = ([u8; 32], [u8; 16], Packet<Vec<u8>>, usize);

/// Three layers of `mixes_per_layer` mixnodes and one gateway, with every node's Sphinx
/// secret.
pub struct TestMixnet {
    /// Valid from 1 s to the end of time, epoch 1.
    pub topology: Topology,
    /// Sphinx secret by node address.
    pub secrets: HashMap<[u8; 32], StaticSecret>,
    /// The gateway's identity key (from the seed given to [`TestMixnet::new`]).
    pub gateway_identity: [u8; 32],
}

impl TestMixnet {
    /// Mixnode `i` of layer `l` (from 0) has seed `10 × (l + 1) + i` for its identity and
    /// Sphinx key and listens on port `20000 + seed`; the gateway's identity comes from
    /// `gateway_seed`, its port is 29999.
    pub fn new(mixes_per_layer: u8, gateway_seed: &[u8; 32]) -> TestMixnet {
        let mut secrets = HashMap::new();
        let mut layers: [Vec<Descriptor>; 3] = Default::default();
        for (layer, nodes) in (1u8..).zip(layers.iter_mut()) {
            for i in 0..mixes_per_layer {
                let seed = 10 * layer + i;
                let d = descriptor(
                    &[seed; 32],
                    [seed; 32],
                    20_000 + u16::from(seed),
                    Role::Mixnode,
                );
                secrets.insert(
                    address::encode(&d.mix_address),
                    StaticSecret::from([seed; 32]),
                );
                nodes.push(d);
            }
        }
        let gateway = descriptor(gateway_seed, GATEWAY_SPHINX_SEED, 29_999, Role::Gateway);
        secrets.insert(
            address::encode(&gateway.mix_address),
            StaticSecret::from(GATEWAY_SPHINX_SEED),
        );
        TestMixnet {
            topology: Topology {
                epoch: 1,
                issued_at_s: 1,
                valid_until_s: u64::MAX,
                layers: layers.into(),
                gateways: vec![gateway],
                shared_random: None,
                layer_period: None,
                nodes_per_ip_max: None,
                admission: None,
            },
            secrets,
            gateway_identity: identity_public(gateway_seed),
        }
    }

    /// Processes `packet` from `first_hop` through every hop to its final hop.
    pub fn unwrap_all(&self, first_hop: [u8; 32], packet: Vec<u8>) -> Result<Unwrapped, String> {
        let mut at = first_hop;
        let mut packet = Packet::new_checked(packet).map_err(|e| e.to_string())?;
        for hops in 1..=HOPS_MAX {
            let secret = self
                .secrets
                .get(&at)
                .ok_or_else(|| "packet routed to an unknown node".to_string())?;
            let processed = sphinx::process(&mut packet, secret).map_err(|e| e.to_string())?;
            match processed.hop {
                Hop::Forward { next_hop, .. } => at = next_hop,
                Hop::Final {
                    destination,
                    identifier,
                } => return Ok((destination, identifier, packet, hops)),
            }
        }
        Err(format!("route longer than {HOPS_MAX} hops"))
    }
}

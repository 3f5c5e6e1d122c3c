//! Signed node descriptors and signed topologies: what the directory publishes and what
//! nodes and clients verify before using.
//!
//! Signing: a signed document is `{ "body": <JSON text>, "signer": <hex ed25519 key>,
//! "signature": <hex> }`. The signature covers `DOMAIN || body` where the domain names the
//! document kind, so a descriptor signature can never pass as a topology signature. The body is
//! kept as the exact text that was signed (no re-serialisation before verification).

use std::net::SocketAddr;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use lethe_crypto::sphinx::{address, RouteHop};
use rand::seq::IndexedRandom;
use rand::{Rng, RngExt};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::keyfile;

/// Domain of a node descriptor signature (signed by the node's identity key).
pub const DOMAIN_DESCRIPTOR: &[u8] = b"lethe-descriptor-v1\0";
/// Domain of a heartbeat signature (signed by the node's identity key).
pub const DOMAIN_HEARTBEAT: &[u8] = b"lethe-heartbeat-v1\0";
/// Domain of a deregistration signature (signed by the node's identity key): a different
/// domain from the heartbeat's, so a captured heartbeat cannot be replayed as one.
pub const DOMAIN_DEREGISTER: &[u8] = b"lethe-deregister-v1\0";
/// Domain of a topology signature (signed by the directory's key).
pub const DOMAIN_TOPOLOGY: &[u8] = b"lethe-topology-v1\0";
/// Mix layers of the stratified topology.
pub const LAYERS: usize = 3;
/// Largest signed document accepted (bytes of body): bounds parsing work on untrusted input.
pub const SIGNED_BODY_BYTES_MAX: usize = 1 << 20;
/// How far a signed timestamp may be ahead of the verifier's clock.
pub const CLOCK_SKEW_S_MAX: u64 = 120;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Mixnode,
    Gateway,
}

/// As in the JSON (`mixnode`, `gateway`): logs show the same word.
impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Mixnode => "mixnode",
            Role::Gateway => "gateway",
        })
    }
}

/// What a node says about itself; signed by its identity key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Descriptor {
    /// ed25519 identity public key, hex.
    pub identity: String,
    /// x25519 Sphinx public key (the key packets should be built for), hex.
    pub sphinx_key: String,
    /// Rotation id of that key (its parity is the v8 frame's rotation byte).
    pub rotation_id: u32,
    /// Where the node accepts Nym-framed Sphinx packets over TCP.
    pub mix_address: SocketAddr,
    pub role: Role,
    /// Gateways: the client WebSocket URL (`ws://host:port`).
    #[serde(default)]
    pub client_url: Option<String>,
    /// Prometheus endpoint, for operators and loadgen (`http://host:port/metrics`).
    #[serde(default)]
    pub metrics_url: Option<String>,
    /// Seconds since the Unix epoch when the descriptor was signed (newer replaces older).
    pub issued_at_s: u64,
}

impl Descriptor {
    pub fn identity_key(&self) -> Result<[u8; 32], TopologyError> {
        keyfile::unhex_32(&self.identity).ok_or(TopologyError::Malformed("identity key"))
    }

    pub fn sphinx_public_key(&self) -> Result<[u8; 32], TopologyError> {
        keyfile::unhex_32(&self.sphinx_key).ok_or(TopologyError::Malformed("sphinx key"))
    }

    /// This node as a Sphinx route hop.
    pub fn route_hop(&self) -> Result<RouteHop, TopologyError> {
        Ok(RouteHop {
            address: address::encode(&self.mix_address),
            public_key: self.sphinx_public_key()?,
        })
    }
}

/// A liveness signal: node identity and time, signed by the node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    pub identity: String,
    pub sent_at_s: u64,
}

/// A node leaving the network at once: its identity and the time, signed by the node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Deregistration {
    pub identity: String,
    pub sent_at_s: u64,
}

/// One epoch's network: mixnodes by layer (index 0 = layer 1) and gateways.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    /// Increases with every publication; a verifier refuses an epoch older than one it used.
    pub epoch: u64,
    pub issued_at_s: u64,
    /// After this, the topology is stale and refused.
    pub valid_until_s: u64,
    pub layers: [Vec<Descriptor>; LAYERS],
    pub gateways: Vec<Descriptor>,
}

/// A signed document as it travels: the exact signed text, the signer, the signature.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signed {
    pub body: String,
    pub signer: String,
    pub signature: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopologyError {
    #[error("malformed document: {0}")]
    Malformed(&'static str),
    #[error("document too large ({0} bytes)")]
    TooLarge(usize),
    #[error("bad signature")]
    BadSignature,
    #[error("signed by an unexpected key")]
    WrongSigner,
    #[error("stale: valid until {valid_until_s}, now {now_s}")]
    Stale { valid_until_s: u64, now_s: u64 },
    #[error("issued in the future ({issued_at_s} > now {now_s})")]
    FromTheFuture { issued_at_s: u64, now_s: u64 },
    #[error("epoch {epoch} is older than epoch {seen} already in use")]
    EpochRegressed { epoch: u64, seen: u64 },
    #[error("no usable route: {0}")]
    NoRoute(&'static str),
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub fn hex_64(bytes: &[u8; 64]) -> String {
    keyfile::hex(bytes)
}

pub fn unhex_64(text: &str) -> Option<[u8; 64]> {
    let text = text.trim();
    if text.len() != 128 || !text.is_ascii() {
        return None;
    }
    let mut out = [0u8; 64];
    for (index, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[index * 2..index * 2 + 2], 16).ok()?;
    }
    Some(out)
}

/// Signs `value` as JSON under `domain` with the ed25519 key of `seed`.
pub fn sign<T: Serialize>(
    value: &T,
    domain: &[u8],
    seed: &[u8; 32],
) -> Result<Signed, TopologyError> {
    let body = serde_json::to_string(value).map_err(|_| TopologyError::Malformed("serialise"))?;
    let key = SigningKey::from_bytes(seed);
    let signature = key.sign(&domain_message(domain, body.as_bytes()));
    Ok(Signed {
        signer: keyfile::hex(key.verifying_key().as_bytes()),
        signature: hex_64(&signature.to_bytes()),
        body,
    })
}

impl Signed {
    /// Checks the signature under `domain` and, if given, that the signer is `expected`;
    /// then parses the body. Returns the signer's key with the value.
    pub fn open<T: DeserializeOwned>(
        &self,
        domain: &[u8],
        expected: Option<&[u8; 32]>,
    ) -> Result<([u8; 32], T), TopologyError> {
        if self.body.len() > SIGNED_BODY_BYTES_MAX {
            return Err(TopologyError::TooLarge(self.body.len()));
        }
        let signer =
            keyfile::unhex_32(&self.signer).ok_or(TopologyError::Malformed("signer key"))?;
        if expected.is_some_and(|e| e != &signer) {
            return Err(TopologyError::WrongSigner);
        }
        let signature =
            unhex_64(&self.signature).ok_or(TopologyError::Malformed("signature encoding"))?;
        let key = VerifyingKey::from_bytes(&signer).map_err(|_| TopologyError::BadSignature)?;
        key.verify_strict(
            &domain_message(domain, self.body.as_bytes()),
            &Signature::from_bytes(&signature),
        )
        .map_err(|_| TopologyError::BadSignature)?;
        let value =
            serde_json::from_str(&self.body).map_err(|_| TopologyError::Malformed("body"))?;
        Ok((signer, value))
    }
}

fn domain_message(domain: &[u8], body: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(domain.len() + body.len());
    message.extend_from_slice(domain);
    message.extend_from_slice(body);
    message
}

/// Opens a descriptor signed by the identity it names.
pub fn open_descriptor(signed: &Signed) -> Result<Descriptor, TopologyError> {
    let (signer, descriptor): (_, Descriptor) = signed.open(DOMAIN_DESCRIPTOR, None)?;
    if descriptor.identity_key()? != signer {
        return Err(TopologyError::WrongSigner);
    }
    descriptor.sphinx_public_key()?;
    Ok(descriptor)
}

/// Opens a heartbeat signed by the identity it names.
pub fn open_heartbeat(signed: &Signed) -> Result<Heartbeat, TopologyError> {
    let (signer, heartbeat): (_, Heartbeat) = signed.open(DOMAIN_HEARTBEAT, None)?;
    if keyfile::unhex_32(&heartbeat.identity) != Some(signer) {
        return Err(TopologyError::WrongSigner);
    }
    Ok(heartbeat)
}

/// Opens a deregistration signed by the identity it names.
pub fn open_deregistration(signed: &Signed) -> Result<Deregistration, TopologyError> {
    let (signer, deregistration): (_, Deregistration) = signed.open(DOMAIN_DEREGISTER, None)?;
    if keyfile::unhex_32(&deregistration.identity) != Some(signer) {
        return Err(TopologyError::WrongSigner);
    }
    Ok(deregistration)
}

/// What a client or node accepts: signed by the pinned directory key, not stale, not from the
/// future, and not older than the epoch it already uses (`seen_epoch`).
pub fn verify_topology(
    signed: &Signed,
    directory_key: &[u8; 32],
    now_s: u64,
    seen_epoch: Option<u64>,
) -> Result<Topology, TopologyError> {
    let (_, topology): (_, Topology) = signed.open(DOMAIN_TOPOLOGY, Some(directory_key))?;
    if now_s > topology.valid_until_s {
        return Err(TopologyError::Stale {
            valid_until_s: topology.valid_until_s,
            now_s,
        });
    }
    if topology.issued_at_s > now_s.saturating_add(CLOCK_SKEW_S_MAX) {
        return Err(TopologyError::FromTheFuture {
            issued_at_s: topology.issued_at_s,
            now_s,
        });
    }
    if let Some(seen) = seen_epoch {
        if topology.epoch < seen {
            return Err(TopologyError::EpochRegressed {
                epoch: topology.epoch,
                seen,
            });
        }
    }
    for node in topology.layers.iter().flatten().chain(&topology.gateways) {
        node.identity_key()?;
        node.sphinx_public_key()?;
    }
    Ok(topology)
}

impl Topology {
    pub fn gateway(&self, identity: &[u8; 32]) -> Option<&Descriptor> {
        self.gateways
            .iter()
            .find(|g| g.identity_key().ok().as_ref() == Some(identity))
    }

    /// Is `address` (a mix address) a layer-1 mixnode? Entry gateways forward only to these.
    pub fn is_layer1(&self, address: &SocketAddr) -> bool {
        self.layers[0].iter().any(|m| &m.mix_address == address)
    }

    /// A Loopix route: one random mixnode per layer, then the destination gateway.
    pub fn random_route<R: Rng + ?Sized>(
        &self,
        rng: &mut R,
        gateway: &Descriptor,
    ) -> Result<[RouteHop; LAYERS + 1], TopologyError> {
        let mut hops = [RouteHop {
            address: [0; 32],
            public_key: [0; 32],
        }; LAYERS + 1];
        for (hop, layer) in hops.iter_mut().zip(&self.layers) {
            *hop = layer
                .choose(rng)
                .ok_or(TopologyError::NoRoute("a mix layer is empty"))?
                .route_hop()?;
        }
        hops[LAYERS] = gateway.route_hop()?;
        Ok(hops)
    }
}

/// Exponential per-hop delays with mean `delay_ms_mean` (Loopix; Nym samples the same way), in
/// nanoseconds. Zero mean gives zero delays.
pub fn sample_delays_ns<R: Rng + ?Sized>(rng: &mut R, delay_ms_mean: f64, out: &mut [u64]) {
    for delay in out.iter_mut() {
        *delay = if delay_ms_mean <= 0.0 {
            0
        } else {
            // Inverse CDF; 1 - u lies in (0, 1], so the log is finite.
            let u: f64 = rng.random();
            let sample_ms = -(1.0 - u).ln() * delay_ms_mean;
            (sample_ms * 1e6).min(u64::MAX as f64) as u64
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn descriptor(seed: &[u8; 32], role: Role, port: u16) -> Descriptor {
        Descriptor {
            identity: keyfile::hex(&keyfile::ed25519_public(seed)),
            sphinx_key: keyfile::hex(&[9u8; 32]),
            rotation_id: 1,
            mix_address: SocketAddr::from(([127, 0, 0, 1], port)),
            role,
            client_url: None,
            metrics_url: None,
            issued_at_s: 100,
        }
    }

    fn topology(epoch: u64, valid_until_s: u64) -> Topology {
        let layers =
            [1u8, 2, 3].map(|i| vec![descriptor(&[i; 32], Role::Mixnode, 1000 + i as u16)]);
        Topology {
            epoch,
            issued_at_s: 100,
            valid_until_s,
            layers,
            gateways: vec![descriptor(&[7; 32], Role::Gateway, 2000)],
        }
    }

    #[test]
    fn keyfile_ed25519_matches_dalek() {
        let seed = [42u8; 32];
        let key = SigningKey::from_bytes(&seed);
        assert_eq!(
            key.verifying_key().to_bytes(),
            keyfile::ed25519_public(&seed)
        );
    }

    #[test]
    fn descriptor_round_trip_and_forgery() {
        let seed = [5u8; 32];
        let d = descriptor(&seed, Role::Mixnode, 1789);
        let signed = sign(&d, DOMAIN_DESCRIPTOR, &seed).unwrap();
        assert_eq!(open_descriptor(&signed).unwrap(), d);
        // Someone else's key signing a descriptor naming `seed`'s identity.
        let forged = sign(&d, DOMAIN_DESCRIPTOR, &[6u8; 32]).unwrap();
        assert_eq!(open_descriptor(&forged), Err(TopologyError::WrongSigner));
        // A tampered body.
        let mut tampered = signed.clone();
        tampered.body = tampered.body.replace("1789", "1790");
        assert_eq!(open_descriptor(&tampered), Err(TopologyError::BadSignature));
        // A descriptor signature is not a heartbeat signature.
        assert!(open_heartbeat(&signed).is_err());
    }

    #[test]
    fn topology_checks() {
        let dir = [11u8; 32];
        let dir_pub = keyfile::ed25519_public(&dir);
        let signed = sign(&topology(5, 1000), DOMAIN_TOPOLOGY, &dir).unwrap();
        assert!(verify_topology(&signed, &dir_pub, 500, Some(5)).is_ok());
        assert!(matches!(
            verify_topology(&signed, &dir_pub, 1001, None),
            Err(TopologyError::Stale { .. })
        ));
        assert!(matches!(
            verify_topology(&signed, &dir_pub, 500, Some(6)),
            Err(TopologyError::EpochRegressed { .. })
        ));
        let forged = sign(&topology(9, 1000), DOMAIN_TOPOLOGY, &[12u8; 32]).unwrap();
        assert_eq!(
            verify_topology(&forged, &dir_pub, 500, None),
            Err(TopologyError::WrongSigner)
        );
        let mut relabelled = forged;
        relabelled.signer = keyfile::hex(&dir_pub);
        assert_eq!(
            verify_topology(&relabelled, &dir_pub, 500, None),
            Err(TopologyError::BadSignature)
        );
    }

    #[test]
    fn route_has_one_node_per_layer_then_gateway() {
        let t = topology(1, 1000);
        let mut rng = rand::rng();
        let route = t.random_route(&mut rng, &t.gateways[0]).unwrap();
        for (hop, layer) in route.iter().zip(&t.layers) {
            assert_eq!(hop, &layer[0].route_hop().unwrap());
        }
        assert_eq!(route[3], t.gateways[0].route_hop().unwrap());
        let mut empty = t.clone();
        empty.layers[1].clear();
        assert!(empty.random_route(&mut rng, &t.gateways[0]).is_err());
    }

    #[test]
    fn delays_have_the_requested_mean() {
        let mut rng = rand::rng();
        let mut delays = vec![0u64; 20_000];
        sample_delays_ns(&mut rng, 15.0, &mut delays);
        let mean_ms = delays.iter().sum::<u64>() as f64 / delays.len() as f64 / 1e6;
        assert!((13.5..16.5).contains(&mean_ms), "mean {mean_ms}");
        sample_delays_ns(&mut rng, 0.0, &mut delays);
        assert!(delays.iter().all(|&d| d == 0));
    }
}

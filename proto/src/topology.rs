//! The network as clients and nodes see it: node descriptors, the stratified topology of one
//! epoch, the published layer assignment, and Loopix route and delay sampling. Signing and
//! verifying the authorities' documents is the nodes' business (`lethe_nodes::topology`);
//! these are the types they carry.

use std::net::SocketAddr;

use lethe_crypto::sphinx::constants::MAX_PATH_LENGTH;
use lethe_crypto::sphinx::{address, RouteHop};
use rand::seq::IndexedRandom;
use rand::{Rng, RngExt};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

use crate::hex;

/// Mix layers of the stratified topology the directory publishes (Nym's default).
pub const LAYERS: usize = 3;
/// Most mix layers a topology may have: a route is the layers and the exit gateway, and
/// Sphinx carries at most `MAX_PATH_LENGTH` hops. A simulator runs 1 to this many.
pub const LAYERS_MAX: usize = MAX_PATH_LENGTH - 1;
/// Hops of the longest route (every layer, then the gateway).
pub const ROUTE_HOPS_MAX: usize = LAYERS_MAX + 1;

const _: () = assert!(LAYERS >= 1 && LAYERS <= LAYERS_MAX);

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
    /// Operator family (Tor's MyFamily): nodes run by one operator name the same family, and
    /// a route never holds two nodes of one family. `None`: a family of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family: Option<String>,
    /// Seconds since the Unix epoch when the descriptor was signed (newer replaces older).
    pub issued_at_s: u64,
}

impl Descriptor {
    pub fn identity_key(&self) -> Result<[u8; 32], TopologyError> {
        hex::decode_32(&self.identity).ok_or(TopologyError::Malformed("identity key"))
    }

    pub fn sphinx_public_key(&self) -> Result<[u8; 32], TopologyError> {
        hex::decode_32(&self.sphinx_key).ok_or(TopologyError::Malformed("sphinx key"))
    }

    /// This node as a Sphinx route hop.
    pub fn route_hop(&self) -> Result<RouteHop, TopologyError> {
        Ok(RouteHop {
            address: address::encode(&self.mix_address),
            public_key: self.sphinx_public_key()?,
        })
    }
}

/// One epoch's network: mixnodes by layer (index 0 = layer 1) and gateways. The layer count
/// is the document's: 1 to [`LAYERS_MAX`] (a document with another count is refused).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    /// Increases with every publication; a verifier refuses an epoch older than one it used.
    pub epoch: u64,
    pub issued_at_s: u64,
    /// After this, the topology is stale and refused.
    pub valid_until_s: u64,
    #[serde(deserialize_with = "layers_checked")]
    pub layers: Vec<Vec<Descriptor>>,
    pub gateways: Vec<Descriptor>,
    /// Voting authorities' documents: the epoch's shared random value, from which anyone
    /// recomputes the layer assignment ([`assign_layers`], [`layers_for`]). `None` in a
    /// single directory's document (its layers are its own choice).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared_random: Option<SharedRandom>,
    /// Voting authorities' documents: how long layers are kept and when they were last
    /// redrawn ([`layers_for`]). `None`: the layers are [`assign_layers`] of this epoch's
    /// value alone (a document from before layer periods).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer_period: Option<LayerPeriod>,
    /// Voting authorities' documents: the most nodes (mixnodes and gateways) with a mix
    /// address on one IP: the median of the caps the votes state, applied by the consensus
    /// (Tor: 2 relays per IP). `None`: no cap in the document (a single directory caps at
    /// registration).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes_per_ip_max: Option<u64>,
    /// The admission policy its nodes were admitted under: the one at least 2f+1 of the
    /// authorities' votes stated (a single directory: its own). `None`: the votes agreed on
    /// none this epoch (or a document from before policies were stated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admission: Option<AdmissionPolicy>,
}

/// Who may be in the network, as an authority states it in its vote and a document records
/// the agreed one: any node that passes the authorities' checks, or only the identities of
/// an allow-list, named by its digest ([`AdmissionPolicy::allow_list`]).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum AdmissionPolicy {
    Open,
    AllowList {
        /// SHA-256 (hex) of the list's identities as lowercase hex, ascending, each followed
        /// by a newline: the `sha256sum` of such a file, which an operator can recompute.
        sha256: String,
    },
}

impl AdmissionPolicy {
    /// The policy of an allow-list of ed25519 identities (the set's order is the canonical one).
    pub fn allow_list(identities: &std::collections::BTreeSet<[u8; 32]>) -> AdmissionPolicy {
        let mut hash = Sha256::new();
        for identity in identities {
            hash.update(hex::encode(identity).as_bytes());
            hash.update(b"\n");
        }
        AdmissionPolicy::AllowList {
            sha256: hex::encode(&hash.finalize()),
        }
    }
}

/// As logs show it: `open` or `allow-list sha256=<hex>`.
impl std::fmt::Display for AdmissionPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AdmissionPolicy::Open => f.write_str("open"),
            AdmissionPolicy::AllowList { sha256 } => write!(f, "allow-list sha256={sha256}"),
        }
    }
}

/// Domain of the sort key of [`assign_layers`].
pub const DOMAIN_LAYER: &[u8] = b"lethe-layer-v1\0";
/// Kept layers may differ in size by this share of the largest (and by one node in any
/// case); beyond, departures have unbalanced them and [`layers_for`] redraws. With a quarter,
/// a node of the smallest layer carries at most a third more traffic than one of the
/// largest, and a large network rides out many departures without a reshuffle.
pub const LAYER_SPREAD_PERCENT_MAX: usize = 25;

const _: () = assert!(LAYER_SPREAD_PERCENT_MAX > 0 && LAYER_SPREAD_PERCENT_MAX < 100);

/// How a voting authorities' document assigned its layers: kept for `epochs` epochs from
/// the document that redrew them (`drawn_epoch`; this document's own epoch when it redrew).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayerPeriod {
    /// The layer period in epochs, as the votes agreed (the median of theirs), at least 1.
    pub epochs: u64,
    /// The epoch of the last full redraw ([`assign_layers`]).
    pub drawn_epoch: u64,
}

/// An epoch's shared random value (commit-reveal, as Tor's SRV) and the authorities'
/// commitments to the reveals of the next epoch, as the consensus recorded them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SharedRandom {
    /// The value, hex (32 bytes).
    pub value: String,
    /// How many authorities' reveals (each matching its commitment) made it.
    pub reveals: u32,
    /// Authority key (hex) → its commitment (hex) to the reveal it will publish next epoch.
    pub commits: BTreeMap<String, String>,
}

/// The published layer assignment of the voting authorities: mixnodes in the order of
/// SHA-256(DOMAIN_LAYER || shared random value || identity text), dealt to the layers in
/// turn (layer 1 first), so layers differ in size by at most one and nobody, the authorities
/// included, picks a node's layer once the value is fixed. Every input is in the document:
/// a verifier recomputes it ([`Topology::check_layers`]). Voting authorities redraw with it at
/// the start of each layer period ([`layers_for`]).
pub fn assign_layers(
    shared_random: &[u8; 32],
    mixnodes: Vec<Descriptor>,
    layers: usize,
) -> Vec<Vec<Descriptor>> {
    let layers = layers.clamp(1, LAYERS_MAX);
    let mut out = vec![Vec::new(); layers];
    for (index, (_, node)) in keyed(shared_random, mixnodes).into_iter().enumerate() {
        out[index % layers].push(node);
    }
    out
}

/// A mixnode's place in the order of the shared random value: SHA-256(DOMAIN_LAYER ||
/// value || identity text).
fn layer_key(shared_random: &[u8; 32], node: &Descriptor) -> [u8; 32] {
    let mut hash = Sha256::new();
    hash.update(DOMAIN_LAYER);
    hash.update(shared_random);
    hash.update(node.identity.as_bytes());
    hash.finalize().into()
}

/// `mixnodes` in the order of the shared random value. Ties (the same identity twice) fall
/// back to the whole descriptor's order: nothing depends on the input order.
fn keyed(shared_random: &[u8; 32], mixnodes: Vec<Descriptor>) -> Vec<([u8; 32], Descriptor)> {
    let mut keyed: Vec<([u8; 32], Descriptor)> = mixnodes
        .into_iter()
        .map(|node| (layer_key(shared_random, &node), node))
        .collect();
    keyed.sort_by(|(a, d), (b, e)| a.cmp(b).then_with(|| descriptor_order(d, e)));
    keyed
}

/// Whether layers of these sizes are balanced enough to keep: the smallest holds at most
/// `max(1, LAYER_SPREAD_PERCENT_MAX % of the largest)` fewer nodes than the largest.
fn balanced(layers: &[Vec<Descriptor>]) -> bool {
    let largest = layers.iter().map(Vec::len).max().unwrap_or(0);
    let smallest = layers.iter().map(Vec::len).min().unwrap_or(0);
    largest - smallest <= (largest * LAYER_SPREAD_PERCENT_MAX / 100).max(1)
}

/// The layers of `previous` kept for `mixnodes`: each node listed there keeps its layer
/// (matched by identity); the others, in the order of the shared random value, each go to
/// the lightest layer (the first of equals), so they fill the holes departed nodes left.
/// Each layer in the order of the value, as [`assign_layers`] leaves them. `None` when the
/// layer counts differ or the result is not [`balanced`]: then the caller redraws.
pub fn keep_layers(
    shared_random: &[u8; 32],
    previous: &[Vec<Descriptor>],
    mixnodes: Vec<Descriptor>,
    layers: usize,
) -> Option<Vec<Vec<Descriptor>>> {
    if previous.len() != layers.clamp(1, LAYERS_MAX) {
        return None;
    }
    let was: BTreeMap<&str, usize> = previous
        .iter()
        .enumerate()
        .flat_map(|(index, layer)| layer.iter().map(move |d| (d.identity.as_str(), index)))
        .collect();
    let mut out: Vec<Vec<([u8; 32], Descriptor)>> = vec![Vec::new(); previous.len()];
    let mut newcomers = Vec::new();
    for (key, node) in keyed(shared_random, mixnodes) {
        match was.get(node.identity.as_str()) {
            Some(&index) => out[index].push((key, node)),
            None => newcomers.push((key, node)),
        }
    }
    for newcomer in newcomers {
        // The first of the lightest layers (min_by_key keeps the first of equals).
        let lightest = (0..out.len()).min_by_key(|&index| out[index].len())?;
        out[lightest].push(newcomer);
    }
    let out: Vec<Vec<Descriptor>> = out
        .into_iter()
        .map(|mut layer| {
            layer.sort_by(|(a, d), (b, e)| a.cmp(b).then_with(|| descriptor_order(d, e)));
            layer.into_iter().map(|(_, node)| node).collect()
        })
        .collect();
    balanced(&out).then_some(out)
}

/// The voting authorities' layer rule for `epoch`'s document, a published deterministic
/// function of the document chain: the layers of `previous` (the epoch before's certified
/// document) are kept ([`keep_layers`]) while the period it started has not run out
/// (`period_epochs` since its `drawn_epoch`); they are redrawn ([`assign_layers`]) at the
/// end of a period, when kept layers would be unbalanced, and without a previous document
/// of the epoch before that states its period (the first epoch, an authority that missed
/// it). Returns the layers and the document's [`LayerPeriod`].
pub fn layers_for(
    epoch: u64,
    shared_random: &[u8; 32],
    period_epochs: u64,
    previous: Option<&Topology>,
    mixnodes: Vec<Descriptor>,
    layers: usize,
) -> (Vec<Vec<Descriptor>>, LayerPeriod) {
    let epochs = period_epochs.max(1);
    let kept = previous
        .filter(|p| p.epoch.checked_add(1) == Some(epoch))
        .and_then(|p| Some((p, p.layer_period?)))
        .filter(|(_, period)| {
            epoch
                .checked_sub(period.drawn_epoch)
                .is_some_and(|age| age < epochs)
        })
        .and_then(|(p, period)| {
            let kept = keep_layers(shared_random, &p.layers, mixnodes.clone(), layers)?;
            Some((kept, period.drawn_epoch))
        });
    let (layers, drawn_epoch) =
        kept.unwrap_or_else(|| (assign_layers(shared_random, mixnodes, layers), epoch));
    (
        layers,
        LayerPeriod {
            epochs,
            drawn_epoch,
        },
    )
}

/// What [`Topology::check_layers`] could check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayersChecked {
    /// The layers were recomputed from the document (a redraw, or kept from the previous
    /// document the verifier gave) and match; or the document has no shared random value
    /// (a single directory's: its layers are its own choice).
    Recomputed,
    /// Kept layers without the epoch before's document: only their order, their balance and
    /// the period's age were checked, not which node was in which layer before.
    WithoutPrevious,
}

fn descriptor_order(a: &Descriptor, b: &Descriptor) -> std::cmp::Ordering {
    (&a.identity, &a.sphinx_key, a.mix_address, a.issued_at_s).cmp(&(
        &b.identity,
        &b.sphinx_key,
        b.mix_address,
        b.issued_at_s,
    ))
}

/// Why a document or a route is refused. The signature variants are the directory
/// documents' (checked in `lethe_nodes::topology`); one error type for both keeps callers simple.
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
    #[error("{valid} valid authority signatures, {needed} needed")]
    TooFewSignatures { valid: usize, needed: usize },
    #[error("the layers are not the assignment the shared random value gives")]
    LayersNotAssigned,
}

/// The layers of a document, refused unless there are 1 to [`LAYERS_MAX`] of them.
fn layers_checked<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<Vec<Descriptor>>, D::Error> {
    let layers = Vec::<Vec<Descriptor>>::deserialize(deserializer)?;
    if layers.is_empty() || layers.len() > LAYERS_MAX {
        return Err(serde::de::Error::invalid_length(
            layers.len(),
            &"1 to LAYERS_MAX mix layers",
        ));
    }
    Ok(layers)
}

/// A Loopix route: one mixnode per layer, then the destination gateway. Fixed capacity, so
/// building one allocates nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    hops: [RouteHop; ROUTE_HOPS_MAX],
    len: usize,
}

impl Route {
    pub fn hops(&self) -> &[RouteHop] {
        &self.hops[..self.len]
    }

    /// The first mix's hop (the entry gateway forwards there).
    pub fn first(&self) -> &RouteHop {
        &self.hops[0]
    }
}

impl Topology {
    /// For a voting authorities' document: its layers follow the layer rule ([`layers_for`]).
    /// A redraw is recomputed from the document alone; kept layers from `previous`, the
    /// certified document of the epoch before, when given; without it only what the document
    /// shows is checked (each layer in the value's order, balanced, the period not run out).
    /// A document without a shared random value (a single directory's) passes.
    pub fn check_layers(
        &self,
        previous: Option<&Topology>,
    ) -> Result<LayersChecked, TopologyError> {
        let Some(shared) = &self.shared_random else {
            return Ok(LayersChecked::Recomputed);
        };
        let value =
            hex::decode_32(&shared.value).ok_or(TopologyError::Malformed("shared random value"))?;
        let mixnodes: Vec<Descriptor> = self.layers.iter().flatten().cloned().collect();
        let count = self.layers.len();
        let follows = |ok: bool, how| {
            if ok {
                Ok(how)
            } else {
                Err(TopologyError::LayersNotAssigned)
            }
        };
        let Some(period) = self.layer_period else {
            return follows(
                assign_layers(&value, mixnodes, count) == self.layers,
                LayersChecked::Recomputed,
            );
        };
        if period.drawn_epoch == self.epoch {
            return follows(
                period.epochs >= 1 && assign_layers(&value, mixnodes, count) == self.layers,
                LayersChecked::Recomputed,
            );
        }
        if let Some(previous) = previous.filter(|p| p.epoch.checked_add(1) == Some(self.epoch)) {
            let computed = layers_for(
                self.epoch,
                &value,
                period.epochs,
                Some(previous),
                mixnodes,
                count,
            );
            return follows(
                computed == (self.layers.clone(), period),
                LayersChecked::Recomputed,
            );
        }
        let in_order = self.layers.iter().all(|layer| {
            layer
                .windows(2)
                .all(|pair| layer_key(&value, &pair[0]) <= layer_key(&value, &pair[1]))
        });
        let age_ok = self
            .epoch
            .checked_sub(period.drawn_epoch)
            .is_some_and(|age| age < period.epochs);
        follows(
            in_order && age_ok && balanced(&self.layers),
            LayersChecked::WithoutPrevious,
        )
    }

    pub fn gateway(&self, identity: &[u8; 32]) -> Option<&Descriptor> {
        self.gateways
            .iter()
            .find(|g| hex::is_hex_of(&g.identity, identity))
    }

    /// Is `address` (a mix address) a mixnode of any layer? Entry gateways forward only to
    /// these: the layers are redrawn at the end of each layer period (or when departures
    /// unbalance them), so a route or a reply block built before may start at a node that
    /// has moved to another layer since, and every mixnode forwards by address whatever its
    /// layer.
    pub fn is_mixnode(&self, address: &SocketAddr) -> bool {
        self.layers
            .iter()
            .flatten()
            .any(|m| &m.mix_address == address)
    }

    /// Is `address` (a mix address) a layer-1 mixnode?
    pub fn is_layer1(&self, address: &SocketAddr) -> bool {
        self.layers
            .first()
            .is_some_and(|layer| layer.iter().any(|m| &m.mix_address == address))
    }

    /// A Loopix route: one random mixnode per layer, then the destination gateway; never two
    /// nodes of one operator family (one operator would see two hops of the route).
    pub fn random_route<R: Rng + ?Sized>(
        &self,
        rng: &mut R,
        gateway: &Descriptor,
    ) -> Result<Route, TopologyError> {
        let layers = self.layers.len();
        if layers == 0 || layers > LAYERS_MAX {
            return Err(TopologyError::NoRoute("layer count out of range"));
        }
        let mut route = Route {
            hops: [RouteHop {
                address: [0; 32],
                public_key: [0; 32],
            }; ROUTE_HOPS_MAX],
            len: layers + 1,
        };
        let mut families: [Option<&str>; ROUTE_HOPS_MAX] = [None; ROUTE_HOPS_MAX];
        families[layers] = gateway.family.as_deref();
        for (index, (hop, layer)) in route.hops.iter_mut().zip(&self.layers).enumerate() {
            let node = match layer.choose(rng) {
                None => return Err(TopologyError::NoRoute("a mix layer is empty")),
                Some(node) if !on_route(&families, node) => node,
                // Its family is on the route already: draw among the others (uniform over
                // them, as the first draw was; no allocation when there is no clash).
                Some(_) => {
                    let outside: Vec<&Descriptor> =
                        layer.iter().filter(|n| !on_route(&families, n)).collect();
                    *outside.choose(rng).ok_or(TopologyError::NoRoute(
                        "every node of a layer is of a family already on the route",
                    ))?
                }
            };
            *hop = node.route_hop()?;
            families[index] = node.family.as_deref();
        }
        route.hops[layers] = gateway.route_hop()?;
        Ok(route)
    }
}

/// Whether `node` belongs to a family one of the route's nodes (`families`) belongs to.
fn on_route(families: &[Option<&str>], node: &Descriptor) -> bool {
    node.family
        .as_deref()
        .is_some_and(|family| families.contains(&Some(family)))
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
    use crate::testing::{descriptor, TestMixnet};
    use crate::wire::handshake::identity_public;
    use rand::SeedableRng;

    fn topology() -> Topology {
        TestMixnet::new(1, &[7; 32]).topology
    }

    #[test]
    fn route_has_one_node_per_layer_then_gateway() {
        let t = topology();
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let route = t.random_route(&mut rng, &t.gateways[0]).unwrap();
        assert_eq!(route.hops().len(), 4);
        for (hop, layer) in route.hops().iter().zip(&t.layers) {
            assert_eq!(hop, &layer[0].route_hop().unwrap());
        }
        assert_eq!(route.hops()[3], t.gateways[0].route_hop().unwrap());
        assert_eq!(t.gateway(&identity_public(&[7; 32])), Some(&t.gateways[0]));
        assert!(t.is_layer1(&t.layers[0][0].mix_address));
        assert!(!t.is_layer1(&t.gateways[0].mix_address));
        let mut empty = t.clone();
        empty.layers[1].clear();
        assert!(empty.random_route(&mut rng, &t.gateways[0]).is_err());
    }

    #[test]
    fn one_to_layers_max_layers_route_and_others_are_refused() {
        let t = topology();
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        for count in 1..=LAYERS_MAX {
            let mut layered = t.clone();
            layered.layers = (0..count)
                .map(|i| {
                    let seed = [10 + i as u8; 32];
                    vec![descriptor(&seed, seed, 3000 + i as u16, Role::Mixnode)]
                })
                .collect();
            let route = layered.random_route(&mut rng, &t.gateways[0]).unwrap();
            assert_eq!(route.hops().len(), count + 1);
            assert_eq!(route.first(), &layered.layers[0][0].route_hop().unwrap());
            // A document with this many layers reads back.
            let json = serde_json::to_string(&layered).unwrap();
            assert_eq!(serde_json::from_str::<Topology>(&json).unwrap(), layered);
        }
        for count in [0, LAYERS_MAX + 1] {
            let mut layered = t.clone();
            layered.layers = vec![vec![descriptor(&[1; 32], [1; 32], 1000, Role::Mixnode)]; count];
            assert!(layered.random_route(&mut rng, &t.gateways[0]).is_err());
            if count == 0 {
                assert!(!layered.is_layer1(&t.layers[0][0].mix_address));
            }
            let json = serde_json::to_string(&layered).unwrap();
            assert!(
                serde_json::from_str::<Topology>(&json).is_err(),
                "{count} layers"
            );
        }
    }

    #[test]
    fn a_route_never_holds_one_family_twice() {
        let mut t = topology();
        // Layer 2 has a node of the gateway's family and one of its own; layer 3 one of the
        // first layer's family and one of another.
        let family = |d: &mut Descriptor, f: &str| d.family = Some(f.to_string());
        family(&mut t.gateways[0], "op-a");
        family(&mut t.layers[0][0], "op-b");
        family(&mut t.layers[1][0], "op-a");
        t.layers[1].push(descriptor(&[4; 32], [4; 32], 1004, Role::Mixnode));
        family(&mut t.layers[2][0], "op-b");
        let mut other = descriptor(&[5; 32], [5; 32], 1005, Role::Mixnode);
        family(&mut other, "op-c");
        t.layers[2].push(other);
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        for _ in 0..200 {
            let route = t.random_route(&mut rng, &t.gateways[0]).unwrap();
            assert_eq!(route.hops()[1], t.layers[1][1].route_hop().unwrap());
            assert_eq!(route.hops()[2], t.layers[2][1].route_hop().unwrap());
        }
        // No node outside the route's families: no route rather than a shared one.
        t.layers[2].pop();
        assert_eq!(
            t.random_route(&mut rng, &t.gateways[0]),
            Err(TopologyError::NoRoute(
                "every node of a layer is of a family already on the route"
            ))
        );
    }

    #[test]
    fn layer_assignment_is_balanced_order_free_and_recomputable() {
        let nodes: Vec<Descriptor> = (1..=10u8)
            .map(|i| descriptor(&[i; 32], [i; 32], 4000 + u16::from(i), Role::Mixnode))
            .collect();
        let value = [3u8; 32];
        let layers = assign_layers(&value, nodes.clone(), LAYERS);
        assert_eq!(layers.iter().map(Vec::len).collect::<Vec<_>>(), [4, 3, 3]);
        // The input order does not matter.
        let mut reversed = nodes.clone();
        reversed.reverse();
        assert_eq!(assign_layers(&value, reversed, LAYERS), layers);
        // Another value gives another assignment (of the same nodes).
        let other = assign_layers(&[4u8; 32], nodes, LAYERS);
        assert_ne!(other, layers);
        let mut all: Vec<_> = other.iter().flatten().map(|d| d.identity.clone()).collect();
        let mut before: Vec<_> = layers
            .iter()
            .flatten()
            .map(|d| d.identity.clone())
            .collect();
        all.sort();
        before.sort();
        assert_eq!(all, before);
        // A verifier recomputes it; a swapped node is caught.
        let mut t = topology();
        t.layers = layers;
        t.shared_random = Some(SharedRandom {
            value: crate::hex::encode(&value),
            reveals: 0,
            commits: BTreeMap::new(),
        });
        assert_eq!(t.check_layers(None), Ok(LayersChecked::Recomputed));
        let moved = t.layers[0].pop().unwrap();
        t.layers[1].push(moved);
        assert_eq!(t.check_layers(None), Err(TopologyError::LayersNotAssigned));
        // The document carries it through JSON; without it, the field is absent.
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(serde_json::from_str::<Topology>(&json).unwrap(), t);
        t.shared_random = None;
        assert!(!serde_json::to_string(&t).unwrap().contains("shared_random"));
    }

    #[test]
    fn kept_layers_are_checked_with_or_without_the_previous_document() {
        let node = |i: u8| descriptor(&[i; 32], [i; 32], 4000 + u16::from(i), Role::Mixnode);
        let doc = |epoch: u64, value: u8, previous: Option<&Topology>, nodes: Vec<Descriptor>| {
            let value = [value; 32];
            let (layers, period) = layers_for(epoch, &value, 4, previous, nodes, LAYERS);
            let mut t = topology();
            t.epoch = epoch;
            t.layers = layers;
            t.layer_period = Some(period);
            t.shared_random = Some(SharedRandom {
                value: crate::hex::encode(&value),
                reveals: 0,
                commits: BTreeMap::new(),
            });
            t
        };
        let nodes: Vec<Descriptor> = (1..=9).map(node).collect();
        let first = doc(10, 1, None, nodes.clone());
        let drawn = |t: &Topology| t.layer_period.map(|p| (p.epochs, p.drawn_epoch));
        assert_eq!(drawn(&first), Some((4, 10)));
        assert_eq!(first.check_layers(None), Ok(LayersChecked::Recomputed));
        // Another value, node 1 gone, node 20 new: kept, node 20 where node 1 was.
        let mut changed = nodes[1..].to_vec();
        changed.push(node(20));
        let second = doc(11, 2, Some(&first), changed.clone());
        assert_eq!(drawn(&second), Some((4, 10)));
        let layer_of = |t: &Topology, i: u8| {
            t.layers
                .iter()
                .position(|l| l.iter().any(|d| d.identity == node(i).identity))
        };
        assert_eq!(layer_of(&second, 20), layer_of(&first, 1));
        for i in 2..=9 {
            assert_eq!(layer_of(&second, i), layer_of(&first, i));
        }
        assert_eq!(
            second.check_layers(Some(&first)),
            Ok(LayersChecked::Recomputed)
        );
        assert_eq!(
            second.check_layers(None),
            Ok(LayersChecked::WithoutPrevious)
        );
        // Two nodes swapped between layers: the previous document shows it.
        let mut swapped = second.clone();
        let (a, b) = (swapped.layers[0].remove(0), swapped.layers[1].remove(0));
        swapped.layers[0].insert(0, b);
        swapped.layers[1].insert(0, a);
        assert_eq!(
            swapped.check_layers(Some(&first)),
            Err(TopologyError::LayersNotAssigned)
        );
        // Kept past the period: refused even without the previous document.
        let mut stale = second.clone();
        stale.epoch = 14;
        assert_eq!(
            stale.check_layers(None),
            Err(TopologyError::LayersNotAssigned)
        );
        // The period runs out at epoch 14: redrawn there.
        let third = doc(12, 3, Some(&second), changed.clone());
        let fourth = doc(13, 4, Some(&third), changed.clone());
        let fifth = doc(14, 5, Some(&fourth), changed.clone());
        assert_eq!(drawn(&fourth), Some((4, 10)));
        for i in (2..=9).chain([20]) {
            assert_eq!(layer_of(&fourth, i), layer_of(&second, i));
        }
        assert_eq!(drawn(&fifth), Some((4, 14)));
        assert_eq!(fifth.layers, assign_layers(&[5; 32], changed, LAYERS));
        assert_eq!(fifth.check_layers(None), Ok(LayersChecked::Recomputed));
        // JSON carries the period; a document without one leaves the field out.
        let json = serde_json::to_string(&fifth).unwrap();
        assert_eq!(serde_json::from_str::<Topology>(&json).unwrap(), fifth);
        assert!(!serde_json::to_string(&topology())
            .unwrap()
            .contains("layer_period"));
    }

    #[test]
    fn allow_list_digest_is_sha256sum_of_the_sorted_list() {
        let ids: std::collections::BTreeSet<[u8; 32]> = [[0xab; 32], [0x01; 32]].into();
        // printf '0101...01\nabab...ab\n' | sha256sum
        let mut file = String::new();
        for id in &ids {
            file += &crate::hex::encode(id);
            file.push('\n');
        }
        assert!(file.starts_with("0101"));
        let expected = crate::hex::encode(&Sha256::digest(file.as_bytes()));
        assert_eq!(
            AdmissionPolicy::allow_list(&ids),
            AdmissionPolicy::AllowList { sha256: expected }
        );
        assert_ne!(
            AdmissionPolicy::allow_list(&ids),
            AdmissionPolicy::allow_list(&Default::default())
        );
        // The document's JSON names it plainly; "open" is a bare word.
        let json = serde_json::to_string(&AdmissionPolicy::allow_list(&ids)).unwrap();
        assert!(json.starts_with("{\"allow_list\":{\"sha256\":\""), "{json}");
        assert_eq!(
            serde_json::to_string(&AdmissionPolicy::Open).unwrap(),
            "\"open\""
        );
    }

    #[test]
    fn malformed_keys_are_refused() {
        let mut d = descriptor(&[1; 32], [1; 32], 1, Role::Mixnode);
        d.sphinx_key = "zz".into();
        assert_eq!(d.route_hop(), Err(TopologyError::Malformed("sphinx key")));
        d.identity = "+1".repeat(32);
        assert_eq!(
            d.identity_key(),
            Err(TopologyError::Malformed("identity key"))
        );
    }

    #[test]
    fn delays_have_the_requested_mean() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        let mut delays = vec![0u64; 20_000];
        sample_delays_ns(&mut rng, 15.0, &mut delays);
        let mean_ms = delays.iter().sum::<u64>() as f64 / delays.len() as f64 / 1e6;
        assert!((13.5..16.5).contains(&mean_ms), "mean {mean_ms}");
        sample_delays_ns(&mut rng, 0.0, &mut delays);
        assert!(delays.iter().all(|&d| d == 0));
    }
}

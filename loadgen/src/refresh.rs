//! Topology refresh for the gateway drivers, as real clients refresh theirs: each epoch's
//! document soon after it is due, and at least every `--topology-refresh-s`, the topology is
//! fetched and verified again, and when the routes it gives differ from the ones in use,
//! the generator builds every later packet over the new ones. Packets already built (at most the lookahead's worth) keep their routes: they
//! are in flight as far as loadgen is concerned.
//!
//! Without this a node that dies mid-run keeps being drawn into routes until the end of the
//! run, long after the directory dropped it (its heartbeats stop, and the directory republishes
//! within a second of dropping it): loss that is loadgen's, not the network's.
//!
//! A directory that does not answer (or serves a topology loadgen cannot use) is said once on
//! stderr and the last usable topology stays in use; the report counts the failed fetches.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lethe_crypto::sphinx::{Destination, RouteHop};
use lethe_nodes::directory::client::{fetch_consensus, http_client, Authorities};
use lethe_nodes::topology::{now_ms, refetch_in, Consumer, Topology as DirectoryTopology};
use serde::Serialize;

use crate::generator::{Exit, Topology};

/// Changes kept for the report; later ones are counted only.
const CHANGES_KEPT: usize = 256;

/// A receiver: the gateway it is connected to and the destination packets address there.
#[derive(Clone, Debug)]
pub struct ReceiverExit {
    pub gateway_identity: [u8; 32],
    pub destination: Destination,
}

/// What loadgen routes over, made from a verified directory topology.
#[derive(Clone, Debug)]
pub struct Routes {
    pub epoch: u64,
    pub topology: Topology,
    /// Every mixnode's mix address and 1-based layer.
    pub placement: BTreeMap<SocketAddr, usize>,
}

/// The routes of `directory` for loadgen's receivers: every layer must have a mixnode and at
/// least one receiver's gateway must still be listed (packets are addressed to receivers).
pub fn routes_of(
    directory: &DirectoryTopology,
    receivers: &[ReceiverExit],
) -> Result<Routes, String> {
    let mut layers = Vec::new();
    let mut placement = BTreeMap::new();
    for (index, layer) in directory.layers.iter().enumerate() {
        if layer.is_empty() {
            return Err(format!(
                "the topology of epoch {} has no mixnode in layer {}",
                directory.epoch,
                index + 1
            ));
        }
        let mut hops = Vec::new();
        for descriptor in layer {
            hops.push(descriptor.route_hop().map_err(|e| e.to_string())?);
            placement.insert(descriptor.mix_address, index + 1);
        }
        layers.push(hops);
    }
    let mut exits = Vec::new();
    for receiver in receivers {
        if let Some(gateway) = directory.gateway(&receiver.gateway_identity) {
            exits.push(Exit {
                hop: gateway.route_hop().map_err(|e| e.to_string())?,
                destination: receiver.destination,
            });
        }
    }
    if exits.is_empty() {
        return Err(format!(
            "the topology of epoch {} lists none of the gateways loadgen's receivers are \
             connected to",
            directory.epoch
        ));
    }
    Ok(Routes {
        epoch: directory.epoch,
        topology: Topology {
            layers,
            exits,
            entry_per_client: false,
        },
        placement,
    })
}

/// One change of the routes in use (the report's `result.topology.changes[]`).
#[derive(Clone, Debug, Serialize)]
pub struct TopologyChange {
    /// Routes of this generation were used from the change on (generation 0: the start).
    pub generation: u64,
    pub epoch: u64,
    /// When loadgen adopted it, s after the run's start (negative: before the run).
    pub at_s: f64,
    pub mixnodes_per_layer: Vec<usize>,
    /// Mixnodes no longer listed, those newly listed, and those now in another layer
    /// (`name (layer)`; names as `lethe testnet` gave them, else the mix address).
    pub removed: Vec<String>,
    pub added: Vec<String>,
    pub moved: Vec<String>,
    /// Receivers whose gateway is listed: packets are addressed only to these.
    pub exits: usize,
    #[serde(skip)]
    pub at: Option<Instant>,
}

/// Counters of the refresh, for one run (`since`).
#[derive(Clone, Debug, Default)]
pub struct FeedStats {
    pub fetches: u64,
    pub fetch_failures: u64,
    pub changes: Vec<TopologyChange>,
    pub changes_not_kept: u64,
    pub generation: u64,
}

impl FeedStats {
    pub fn since(&self, before: &FeedStats) -> FeedStats {
        FeedStats {
            fetches: self.fetches.saturating_sub(before.fetches),
            fetch_failures: self.fetch_failures.saturating_sub(before.fetch_failures),
            changes: self
                .changes
                .iter()
                // The routes in use at the start are the first entry.
                .filter(|c| c.generation >= before.generation)
                .cloned()
                .collect(),
            changes_not_kept: self
                .changes_not_kept
                .saturating_sub(before.changes_not_kept),
            generation: self.generation,
        }
    }
}

struct FeedState {
    routes: Arc<Routes>,
    changes: Vec<TopologyChange>,
    changes_not_kept: u64,
    fetches: u64,
    fetch_failures: u64,
    /// In a streak of failed fetches (said once, at its start).
    failing: bool,
}

/// The routes in use, shared by the refresh task (writer) and the generator (reader).
pub struct TopologyFeed {
    /// Bumped on every change: the generator compares it before each chunk of packets.
    generation: AtomicU64,
    state: Mutex<FeedState>,
    names: HashMap<String, String>,
    quiet: bool,
}

impl TopologyFeed {
    /// `names`: node names by mix address (testnet), for the messages and the report.
    pub fn new(initial: Routes, names: HashMap<String, String>, quiet: bool) -> TopologyFeed {
        let first = TopologyChange {
            generation: 0,
            epoch: initial.epoch,
            at_s: 0.0,
            mixnodes_per_layer: initial.topology.layers.iter().map(Vec::len).collect(),
            removed: Vec::new(),
            added: Vec::new(),
            moved: Vec::new(),
            exits: initial.topology.exits.len(),
            at: Some(Instant::now()),
        };
        TopologyFeed {
            generation: AtomicU64::new(0),
            state: Mutex::new(FeedState {
                routes: Arc::new(initial),
                changes: vec![first],
                changes_not_kept: 0,
                fetches: 1,
                fetch_failures: 0,
                failing: false,
            }),
            names,
            quiet,
        }
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The routes in use and their generation.
    pub fn current(&self) -> Option<(u64, Arc<Routes>)> {
        let state = self.state.lock().ok()?;
        Some((self.generation(), Arc::clone(&state.routes)))
    }

    pub fn epoch(&self) -> Option<u64> {
        self.state.lock().ok().map(|s| s.routes.epoch)
    }

    pub fn stats(&self) -> FeedStats {
        match self.state.lock() {
            Ok(state) => FeedStats {
                fetches: state.fetches,
                fetch_failures: state.fetch_failures,
                changes: state.changes.clone(),
                changes_not_kept: state.changes_not_kept,
                generation: self.generation(),
            },
            Err(_) => FeedStats::default(),
        }
    }

    fn name(&self, address: &SocketAddr) -> String {
        self.names
            .get(&address.to_string())
            .cloned()
            .unwrap_or_else(|| address.to_string())
    }

    /// Takes the outcome of one fetch: new routes are adopted when they differ from the ones
    /// in use; a failure keeps them (said once per streak of failures).
    pub fn apply(&self, fetched: Result<Routes, String>) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        let routes = match fetched {
            Ok(routes) => routes,
            Err(e) => {
                state.fetch_failures += 1;
                if !state.failing {
                    state.failing = true;
                    // Said even with --quiet (once): routes may now include dead nodes.
                    eprintln!(
                        "loadgen: warning: topology refresh failed ({e}); keeping the topology \
                         of epoch {} until the directory serves a usable one",
                        state.routes.epoch
                    );
                }
                return;
            }
        };
        state.fetches += 1;
        if state.failing {
            state.failing = false;
            eprintln!(
                "loadgen: the directory serves a usable topology again (epoch {})",
                routes.epoch
            );
        }
        let old = Arc::clone(&state.routes);
        if same_routes(&old.topology, &routes.topology) {
            if routes.epoch != old.epoch {
                // Same routes, newer epoch: kept so later fetches refuse older epochs.
                state.routes = Arc::new(routes);
            }
            return;
        }
        let named =
            |address: &SocketAddr, layer: usize| format!("{} (layer {layer})", self.name(address));
        let removed: Vec<String> = old
            .placement
            .iter()
            .filter(|(address, _)| !routes.placement.contains_key(address))
            .map(|(address, layer)| named(address, *layer))
            .collect();
        let added: Vec<String> = routes
            .placement
            .iter()
            .filter(|(address, _)| !old.placement.contains_key(address))
            .map(|(address, layer)| named(address, *layer))
            .collect();
        let moved: Vec<String> = routes
            .placement
            .iter()
            .filter(|(address, layer)| old.placement.get(address).is_some_and(|l| l != *layer))
            .map(|(address, layer)| named(address, *layer))
            .collect();
        let generation = self.generation() + 1;
        let change = TopologyChange {
            generation,
            epoch: routes.epoch,
            at_s: 0.0,
            mixnodes_per_layer: routes.topology.layers.iter().map(Vec::len).collect(),
            removed,
            added,
            moved,
            exits: routes.topology.exits.len(),
            at: Some(Instant::now()),
        };
        if !self.quiet {
            eprintln!(
                "loadgen: topology epoch {}: {}; new packets are routed over it",
                change.epoch,
                describe(&change)
            );
        }
        if state.changes.len() < CHANGES_KEPT {
            state.changes.push(change);
        } else {
            state.changes_not_kept += 1;
        }
        state.routes = Arc::new(routes);
        self.generation.store(generation, Ordering::Release);
    }
}

/// Whether two topologies give the same routes: each layer the same hops, in any order (a
/// document may list a kept layer's nodes in another order each epoch), and the same exits.
fn same_routes(a: &Topology, b: &Topology) -> bool {
    let hops = |layer: &[RouteHop]| {
        let mut hops: Vec<_> = layer
            .iter()
            .map(|hop| (hop.address, hop.public_key))
            .collect();
        hops.sort_unstable();
        hops
    };
    a.exits == b.exits
        && a.layers.len() == b.layers.len()
        && a.layers
            .iter()
            .zip(&b.layers)
            .all(|(x, y)| hops(x) == hops(y))
}

/// `removed mix3 (layer 2); added ...` (or `routes changed`).
pub fn describe(change: &TopologyChange) -> String {
    let mut parts = Vec::new();
    for (what, list) in [
        ("removed", &change.removed),
        ("added", &change.added),
        ("moved", &change.moved),
    ] {
        if !list.is_empty() {
            parts.push(format!("{what} {}", list.join(", ")));
        }
    }
    if parts.is_empty() {
        parts.push("routes changed (keys or gateways)".into());
    }
    parts.join("; ")
}

/// Fetches the topology each epoch soon after the next is due (nodes join and leave each
/// epoch, and a gateway refuses first hops its current and previous documents do not list),
/// and at least every `every`, until the runtime it runs on is dropped.
pub async fn refresh_loop(
    feed: Arc<TopologyFeed>,
    authorities: Authorities,
    every: Duration,
    receivers: Vec<ReceiverExit>,
) {
    let http = http_client();
    // The first fetch at once: the topology in use was fetched just before, but its
    // schedule is learnt here.
    let mut wait = Duration::ZERO;
    loop {
        tokio::time::sleep(wait).await;
        let seen = feed.epoch();
        let fetched = fetch_consensus(&http, &authorities, seen)
            .await
            .map_err(|e| e.to_string());
        wait = match &fetched {
            Ok(topology) => refetch_in(topology, now_ms(), every, Consumer::Client),
            Err(_) => every,
        };
        feed.apply(fetched.and_then(|topology| routes_of(&topology, &receivers)));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn hop(tag: u8) -> RouteHop {
        RouteHop {
            address: [tag; 32],
            public_key: [tag; 32],
        }
    }

    fn routes(epoch: u64, layers: &[&[u8]]) -> Routes {
        let mut placement = BTreeMap::new();
        for (index, layer) in layers.iter().enumerate() {
            for tag in *layer {
                placement.insert(
                    SocketAddr::from(([127, 0, 0, 1], 1000 + u16::from(*tag))),
                    index + 1,
                );
            }
        }
        Routes {
            epoch,
            topology: Topology {
                layers: layers
                    .iter()
                    .map(|l| l.iter().map(|t| hop(*t)).collect())
                    .collect(),
                exits: vec![Exit {
                    hop: hop(99),
                    destination: Destination {
                        address: [7; 32],
                        identifier: [0; 16],
                    },
                }],
                entry_per_client: false,
            },
            placement,
        }
    }

    #[test]
    fn a_changed_topology_is_adopted_and_a_failed_fetch_keeps_the_last() {
        let names = HashMap::from([("127.0.0.1:1003".to_string(), "mix3".to_string())]);
        let feed = TopologyFeed::new(routes(5, &[&[1, 2], &[3, 4], &[5, 6]]), names, true);
        assert_eq!(feed.generation(), 0);
        // Same routes in a newer epoch: no new generation, but the epoch advances.
        feed.apply(Ok(routes(6, &[&[1, 2], &[3, 4], &[5, 6]])));
        assert_eq!((feed.generation(), feed.epoch()), (0, Some(6)));
        // The same layers listed in another order (kept layers, a new epoch): no change.
        feed.apply(Ok(routes(6, &[&[2, 1], &[4, 3], &[5, 6]])));
        assert_eq!((feed.generation(), feed.epoch()), (0, Some(6)));
        let before = feed.stats();
        // mix3 (layer 2) dropped.
        feed.apply(Ok(routes(7, &[&[1, 2], &[4], &[5, 6]])));
        assert_eq!(feed.generation(), 1);
        let (generation, current) = feed.current().unwrap();
        assert_eq!(generation, 1);
        assert_eq!(current.topology.layers[1], vec![hop(4)]);
        // The directory goes away: the last routes stay.
        feed.apply(Err("connection refused".into()));
        feed.apply(Err("connection refused".into()));
        assert_eq!(feed.generation(), 1);
        assert_eq!(feed.current().unwrap().1.epoch, 7);
        let run = feed.stats().since(&before);
        assert_eq!(run.fetch_failures, 2);
        assert_eq!(run.fetches, 1);
        assert_eq!(run.changes.len(), 2);
        assert_eq!(run.changes[0].generation, 0);
        assert_eq!(run.changes[1].removed, vec!["mix3 (layer 2)".to_string()]);
        assert_eq!(run.changes[1].mixnodes_per_layer, vec![2, 1, 2]);
        // A node moving layers is a change too.
        feed.apply(Ok(routes(8, &[&[1, 2], &[4, 6], &[5]])));
        let last = feed.stats().changes.pop().unwrap();
        assert_eq!(last.moved, vec!["127.0.0.1:1006 (layer 2)".to_string()]);
        assert_eq!(describe(&last), "moved 127.0.0.1:1006 (layer 2)");
    }
}

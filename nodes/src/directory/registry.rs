//! The directory's membership logic, free of I/O: registered nodes, liveness, layer
//! assignment, and the topology they make. The server persists what it changes.
//!
//! Layers: a new mixnode goes to the least populated layer (lowest index on ties); existing
//! assignments never move except to restore balance after a node leaves: while the fullest
//! and emptiest layers differ by more than one, the newest node of the fullest layer moves to
//! the emptiest.
//!
//! Admission ([`Admission`]): before a descriptor is counted it must name a routable mix
//! address and a usable Sphinx key, come from an allowed identity, fit the caps per mix IP
//! and per source IP, and not take a mix address another identity holds (a node's address
//! stays its own until it has been silent for the heartbeat timeout, even after it
//! deregisters, so a stranger cannot grab it while the node restarts). Replays are refused:
//! a registration must be signed within the registration window and after anything the node
//! signed before, and a node dropped or gone cannot be brought back with its old messages.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use super::admission::{address_problem, family_ok, weak_sphinx_key, Admission};
use crate::limits;
use crate::topology::{
    Deregistration, Descriptor, Heartbeat, Role, Topology, CLOCK_SKEW_S_MAX, LAYERS,
};

/// One registered node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub descriptor: Descriptor,
    /// The signed descriptor exactly as received (JSON text).
    pub signed_json: String,
    /// Mix layer (0-based) for mixnodes; `None` for gateways.
    pub layer: Option<usize>,
    /// Order of joining (or of the last layer assignment): larger is newer.
    pub seq: u64,
    /// Directory clock (ms since the Unix epoch) of the last registration or heartbeat.
    pub last_seen_ms: u64,
    /// `sent_at_s` of the newest heartbeat accepted (or the descriptor's `issued_at_s`).
    pub last_heartbeat_s: u64,
    /// IP the registration came from (for the per-source cap); `None` if not known.
    pub source: Option<IpAddr>,
}

/// What a registration did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Registered {
    /// A node not known before.
    New,
    /// A known node whose descriptor changed (the topology changes).
    Updated,
    /// A known node re-sent an equivalent descriptor (only liveness changes).
    Refreshed,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    #[error("descriptor issued at {issued_at_s} is older than the registered one ({stored_s})")]
    Older { issued_at_s: u64, stored_s: u64 },
    #[error("descriptor issued at {issued_at_s}, directory clock {now_s}: outside the registration window of {window_s} s")]
    Window {
        issued_at_s: u64,
        now_s: u64,
        window_s: u64,
    },
    #[error("mix address {0} is held by another node (until it has been silent for the heartbeat timeout)")]
    AddressTaken(SocketAddr),
    #[error("unusable mix address {address}: {why}")]
    BadAddress {
        address: SocketAddr,
        why: &'static str,
    },
    #[error("unusable Sphinx key: a point of small order")]
    WeakKey,
    #[error(
        "family must be 1 to {} printable ASCII characters without quotes or backslashes",
        crate::limits::DIRECTORY_FAMILY_BYTES_MAX
    )]
    BadFamily,
    #[error("identity not on this directory's allow-list")]
    NotAllowed,
    #[error("{max} nodes already have mix addresses on {ip}")]
    IpFull { ip: IpAddr, max: usize },
    #[error("{max} nodes already registered from {source_ip}")]
    SourceFull { source_ip: IpAddr, max: usize },
    #[error("registration issued at {issued_at_s} is a replay: the node signed {last_s} already")]
    Replay { issued_at_s: u64, last_s: u64 },
    #[error("a gateway descriptor needs a client_url")]
    NoClientUrl,
    #[error("field {0} must be an http(s) or ws(s) URL of printable ASCII, at most {max} bytes", max = limits::DIRECTORY_URL_BYTES_MAX)]
    BadUrl(&'static str),
    #[error("directory full ({max} nodes)", max = limits::DIRECTORY_NODES_MAX)]
    Full,
    #[error("unknown node: register first")]
    Unknown,
    #[error("heartbeat sent at {sent_at_s}, directory clock {now_s}: outside the allowed skew of {CLOCK_SKEW_S_MAX} s")]
    HeartbeatClock { sent_at_s: u64, now_s: u64 },
    #[error("heartbeat sent at {sent_at_s} is older than one already accepted ({last_s})")]
    HeartbeatOlder { sent_at_s: u64, last_s: u64 },
    #[error("deregistration sent at {sent_at_s}, directory clock {now_s}: outside the allowed skew of {CLOCK_SKEW_S_MAX} s")]
    DeregisterClock { sent_at_s: u64, now_s: u64 },
    #[error("deregistration sent at {sent_at_s} is older than the node's last registration or heartbeat ({last_s})")]
    DeregisterOlder { sent_at_s: u64, last_s: u64 },
    #[error("this node deregistered at {left_s}: register with a descriptor issued after it")]
    Deregistered { left_s: u64 },
}

impl RegistryError {
    /// A short fixed label for metrics (`reason="..."`).
    pub fn reason(&self) -> &'static str {
        match self {
            RegistryError::Window { .. }
            | RegistryError::HeartbeatClock { .. }
            | RegistryError::DeregisterClock { .. } => "clock",
            RegistryError::Older { .. }
            | RegistryError::HeartbeatOlder { .. }
            | RegistryError::DeregisterOlder { .. } => "older",
            RegistryError::AddressTaken(_) => "address_taken",
            RegistryError::BadAddress { .. } => "bad_address",
            RegistryError::WeakKey => "weak_key",
            RegistryError::BadFamily => "bad_family",
            RegistryError::NotAllowed => "not_allowed",
            RegistryError::IpFull { .. } => "ip_full",
            RegistryError::SourceFull { .. } => "source_full",
            RegistryError::Replay { .. } => "replay",
            RegistryError::NoClientUrl => "no_client_url",
            RegistryError::BadUrl(_) => "bad_url",
            RegistryError::Full => "full",
            RegistryError::Unknown => "unknown",
            RegistryError::Deregistered { .. } => "deregistered",
        }
    }
}

/// A URL a topology can carry without JSON escaping: printable ASCII, no quote or backslash.
fn url_ok(url: &str) -> bool {
    url.len() <= limits::DIRECTORY_URL_BYTES_MAX
        && ["http://", "https://", "ws://", "wss://"]
            .iter()
            .any(|scheme| url.starts_with(scheme))
        && url
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
}

/// How a node left the registry (for refusing its replayed registrations).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Left {
    /// At its own signed request.
    Deregistered,
    /// Dropped for silence.
    Expired,
}

/// A mix address kept for the identity that deregistered from it, until it has been silent
/// for the heartbeat timeout.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Hold {
    identity: String,
    until_ms: u64,
}

/// Registered nodes by identity (hex).
#[derive(Clone, Debug)]
pub struct Registry {
    admission: Admission,
    nodes: BTreeMap<String, Entry>,
    next_seq: u64,
    /// Identities that left (deregistered or dropped) and the newest time they signed (s),
    /// for the clock skew after: a registration issued no later than that is a replay and is
    /// refused, so a captured registration cannot bring back a node that left. In memory
    /// only: a directory restart forgets them.
    departures: BTreeMap<String, (u64, Left)>,
    /// Mix addresses of deregistered nodes, kept for them (see [`Hold`]).
    holds: BTreeMap<SocketAddr, Hold>,
}

fn within_skew(t_s: u64, now_s: u64) -> bool {
    t_s <= now_s.saturating_add(CLOCK_SKEW_S_MAX) && t_s.saturating_add(CLOCK_SKEW_S_MAX) >= now_s
}

impl Registry {
    pub fn new(admission: Admission) -> Registry {
        Registry {
            admission,
            nodes: BTreeMap::new(),
            next_seq: 0,
            departures: BTreeMap::new(),
            holds: BTreeMap::new(),
        }
    }

    /// Rebuilds a registry from stored entries (assignments as stored; then balanced).
    /// Entries the admission policy refuses now (it may have changed) are left out, with why.
    /// Returns the registry, the identities whose record changed and the refused ones.
    pub fn from_entries(
        admission: Admission,
        entries: impl IntoIterator<Item = Entry>,
    ) -> (Registry, Vec<String>, Vec<(String, RegistryError)>) {
        let mut registry = Registry::new(admission);
        let mut refused = Vec::new();
        for entry in entries {
            if let Err(e) = registry.admissible(&entry.descriptor) {
                refused.push((entry.descriptor.identity.clone(), e));
                continue;
            }
            registry.next_seq = registry.next_seq.max(entry.seq.saturating_add(1));
            registry
                .nodes
                .insert(entry.descriptor.identity.clone(), entry);
        }
        // Repair anything inconsistent (a mixnode without a layer, a layer out of range).
        let mut changed = Vec::new();
        let identities: Vec<String> = registry.nodes.keys().cloned().collect();
        for identity in identities {
            let needs =
                registry
                    .nodes
                    .get(&identity)
                    .is_some_and(|e| match (e.descriptor.role, e.layer) {
                        (Role::Mixnode, Some(l)) => l >= LAYERS,
                        (Role::Mixnode, None) => true,
                        (Role::Gateway, l) => l.is_some(),
                    });
            if needs {
                registry.assign(&identity);
                changed.push(identity);
            }
        }
        changed.extend(registry.rebalance());
        changed.extend(refused.iter().map(|(identity, _)| identity.clone()));
        changed.sort();
        changed.dedup();
        (registry, changed, refused)
    }

    pub fn admission(&self) -> &Admission {
        &self.admission
    }

    /// How far (s) a registration's signing time may be from the directory clock: no wider
    /// than the heartbeat timeout, so a captured registration is useless once its node would
    /// have been dropped anyway.
    pub fn window_s(&self) -> u64 {
        CLOCK_SKEW_S_MAX.min((self.admission.heartbeat_timeout_ms / 1000).max(1))
    }

    /// The checks on the descriptor alone: allow-list, address, key, URLs, family.
    fn admissible(&self, descriptor: &Descriptor) -> Result<(), RegistryError> {
        if let Some(allowed) = &self.admission.allowed {
            if !allowed.contains(&descriptor.identity) {
                return Err(RegistryError::NotAllowed);
            }
        }
        let address = descriptor.mix_address;
        if address.port() == 0 {
            return Err(RegistryError::BadAddress {
                address,
                why: "port 0",
            });
        }
        if let Some(why) = address_problem(address.ip(), self.admission.private_addresses) {
            return Err(RegistryError::BadAddress { address, why });
        }
        match descriptor.sphinx_public_key() {
            Ok(key) if !weak_sphinx_key(&key) => {}
            _ => return Err(RegistryError::WeakKey),
        }
        for (field, value) in [
            ("client_url", &descriptor.client_url),
            ("metrics_url", &descriptor.metrics_url),
        ] {
            if value.as_ref().is_some_and(|v| !url_ok(v)) {
                return Err(RegistryError::BadUrl(field));
            }
        }
        if descriptor.role == Role::Gateway && descriptor.client_url.is_none() {
            return Err(RegistryError::NoClientUrl);
        }
        if descriptor.family.as_deref().is_some_and(|f| !family_ok(f)) {
            return Err(RegistryError::BadFamily);
        }
        Ok(())
    }

    /// Whether `identity` may use `address`, registered from `source`: the address is not
    /// another's (registered, or held after a deregistration), and the caps per mix IP and
    /// per source leave room. A node that keeps its IP and source is never refused a cap it
    /// already counts in.
    fn room_for(
        &self,
        identity: &str,
        address: SocketAddr,
        source: Option<IpAddr>,
        now_ms: u64,
    ) -> Result<(), RegistryError> {
        let others = || {
            self.nodes
                .values()
                .filter(|e| e.descriptor.identity != identity)
        };
        if others().any(|e| e.descriptor.mix_address == address) {
            return Err(RegistryError::AddressTaken(address));
        }
        if let Some(hold) = self.holds.get(&address) {
            if hold.identity != identity && now_ms <= hold.until_ms {
                return Err(RegistryError::AddressTaken(address));
            }
        }
        let current = self.nodes.get(identity);
        let ip = address.ip();
        let max = self.admission.nodes_per_ip_max;
        if current.is_none_or(|e| e.descriptor.mix_address.ip() != ip)
            && others()
                .filter(|e| e.descriptor.mix_address.ip() == ip)
                .count()
                >= max
        {
            return Err(RegistryError::IpFull { ip, max });
        }
        if let Some(source_ip) = source {
            let max = self.admission.nodes_per_source_max;
            if current.is_none_or(|e| e.source != Some(source_ip))
                && others().filter(|e| e.source == Some(source_ip)).count() >= max
            {
                return Err(RegistryError::SourceFull { source_ip, max });
            }
        }
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn get(&self, identity: &str) -> Option<&Entry> {
        self.nodes.get(identity)
    }

    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.nodes.values()
    }

    /// Mixnodes per layer.
    pub fn layer_sizes(&self) -> [usize; LAYERS] {
        let mut sizes = [0; LAYERS];
        for layer in self.nodes.values().filter_map(|e| e.layer) {
            if let Some(size) = sizes.get_mut(layer) {
                *size += 1;
            }
        }
        sizes
    }

    /// Gives every node a fresh liveness deadline (after a directory restart: nodes could not
    /// reach it while it was down).
    pub fn touch_all(&mut self, now_ms: u64) {
        for entry in self.nodes.values_mut() {
            entry.last_seen_ms = entry.last_seen_ms.max(now_ms);
        }
    }

    /// Registers or updates a descriptor already verified as signed by its identity, sent from
    /// `source`. Returns what happened and the identities whose stored record changed.
    pub fn register(
        &mut self,
        descriptor: Descriptor,
        signed_json: String,
        source: Option<IpAddr>,
        now_ms: u64,
    ) -> Result<(Registered, Vec<String>), RegistryError> {
        let now_s = now_ms / 1000;
        let window_s = self.window_s();
        let issued_at_s = descriptor.issued_at_s;
        if issued_at_s > now_s.saturating_add(window_s)
            || issued_at_s.saturating_add(window_s) < now_s
        {
            return Err(RegistryError::Window {
                issued_at_s,
                now_s,
                window_s,
            });
        }
        self.admissible(&descriptor)?;
        self.forget_departures(now_s, now_ms);
        match self.departures.get(&descriptor.identity) {
            Some((left_s, Left::Deregistered)) if issued_at_s <= *left_s => {
                return Err(RegistryError::Deregistered { left_s: *left_s });
            }
            Some((last_s, Left::Expired)) if issued_at_s <= *last_s => {
                return Err(RegistryError::Replay {
                    issued_at_s,
                    last_s: *last_s,
                });
            }
            _ => {}
        }
        let identity = descriptor.identity.clone();
        if let Some(entry) = self.nodes.get(&identity) {
            if issued_at_s < entry.descriptor.issued_at_s {
                return Err(RegistryError::Older {
                    issued_at_s,
                    stored_s: entry.descriptor.issued_at_s,
                });
            }
            // The stored registration again: a replay (or a retry whose answer was lost).
            // It says nothing new, so it must not extend the node's life.
            if entry.signed_json == signed_json && entry.descriptor == descriptor {
                return Ok((Registered::Refreshed, Vec::new()));
            }
            // Signed before a heartbeat already accepted: a replay of an older registration.
            if issued_at_s < entry.last_heartbeat_s {
                return Err(RegistryError::Replay {
                    issued_at_s,
                    last_s: entry.last_heartbeat_s,
                });
            }
        }
        self.room_for(&identity, descriptor.mix_address, source, now_ms)?;
        if let Some(entry) = self.nodes.get_mut(&identity) {
            let mut unchanged_old = entry.descriptor.clone();
            unchanged_old.issued_at_s = issued_at_s;
            let same = unchanged_old == descriptor;
            let role_changed = entry.descriptor.role != descriptor.role;
            entry.last_seen_ms = entry.last_seen_ms.max(now_ms);
            entry.last_heartbeat_s = entry.last_heartbeat_s.max(issued_at_s);
            entry.descriptor = descriptor;
            entry.signed_json = signed_json;
            if source.is_some() {
                entry.source = source;
            }
            let mut changed = vec![identity.clone()];
            if role_changed {
                self.assign(&identity);
                changed.extend(self.rebalance());
            }
            let what = if same {
                Registered::Refreshed
            } else {
                Registered::Updated
            };
            return Ok((what, changed));
        }
        if self.nodes.len() >= limits::DIRECTORY_NODES_MAX {
            return Err(RegistryError::Full);
        }
        self.holds.remove(&descriptor.mix_address);
        self.nodes.insert(
            identity.clone(),
            Entry {
                descriptor,
                signed_json,
                layer: None,
                seq: 0,
                last_seen_ms: now_ms,
                last_heartbeat_s: issued_at_s,
                source,
            },
        );
        self.assign(&identity);
        Ok((Registered::New, vec![identity]))
    }

    /// Records a heartbeat verified as signed by its identity. `Ok(true)` if it refreshed the
    /// node's liveness, `Ok(false)` for a repeat of the newest heartbeat (no effect).
    pub fn heartbeat(&mut self, heartbeat: &Heartbeat, now_ms: u64) -> Result<bool, RegistryError> {
        let now_s = now_ms / 1000;
        let entry = self
            .nodes
            .get_mut(&heartbeat.identity)
            .ok_or(RegistryError::Unknown)?;
        if !within_skew(heartbeat.sent_at_s, now_s) {
            return Err(RegistryError::HeartbeatClock {
                sent_at_s: heartbeat.sent_at_s,
                now_s,
            });
        }
        // Strictly newer heartbeats only: a replayed one cannot extend a dead node's life.
        if heartbeat.sent_at_s < entry.last_heartbeat_s {
            return Err(RegistryError::HeartbeatOlder {
                sent_at_s: heartbeat.sent_at_s,
                last_s: entry.last_heartbeat_s,
            });
        }
        if heartbeat.sent_at_s == entry.last_heartbeat_s {
            return Ok(false);
        }
        entry.last_heartbeat_s = heartbeat.sent_at_s;
        entry.last_seen_ms = entry.last_seen_ms.max(now_ms);
        Ok(true)
    }

    /// Drops nodes not seen for longer than the heartbeat timeout, then rebalances. Returns
    /// the dropped identities and those whose layer moved.
    pub fn expire(&mut self, now_ms: u64) -> (Vec<String>, Vec<String>) {
        let timeout_ms = self.admission.heartbeat_timeout_ms;
        let dropped: Vec<String> = self
            .nodes
            .iter()
            .filter(|(_, e)| now_ms.saturating_sub(e.last_seen_ms) > timeout_ms)
            .map(|(id, _)| id.clone())
            .collect();
        for identity in &dropped {
            if let Some(entry) = self.nodes.remove(identity) {
                // Its registrations and heartbeats, replayed, must not bring it back.
                self.depart(identity, entry.last_heartbeat_s, Left::Expired, now_ms);
            }
        }
        let moved = if dropped.is_empty() {
            Vec::new()
        } else {
            self.rebalance()
        };
        (dropped, moved)
    }

    /// Removes a node on its own signed request (verified by the caller), at once. Refused
    /// when it is outside the clock skew or older than the node's last registration or
    /// heartbeat: a captured deregistration replayed after the node registered again removes
    /// nothing. Returns the identities whose stored record changed (the node, moved ones).
    pub fn deregister(
        &mut self,
        deregistration: &Deregistration,
        now_ms: u64,
    ) -> Result<Vec<String>, RegistryError> {
        let now_s = now_ms / 1000;
        let entry = self
            .nodes
            .get(&deregistration.identity)
            .ok_or(RegistryError::Unknown)?;
        if !within_skew(deregistration.sent_at_s, now_s) {
            return Err(RegistryError::DeregisterClock {
                sent_at_s: deregistration.sent_at_s,
                now_s,
            });
        }
        if deregistration.sent_at_s < entry.last_heartbeat_s {
            return Err(RegistryError::DeregisterOlder {
                sent_at_s: deregistration.sent_at_s,
                last_s: entry.last_heartbeat_s,
            });
        }
        let identity = deregistration.identity.clone();
        let address = entry.descriptor.mix_address;
        let until_ms = entry
            .last_seen_ms
            .saturating_add(self.admission.heartbeat_timeout_ms);
        let mut changed = self.remove(&identity).unwrap_or_default();
        self.depart(
            &identity,
            deregistration.sent_at_s,
            Left::Deregistered,
            now_ms,
        );
        // The address stays the node's for as long as it would have stayed listed: a node
        // restarting (it deregisters on the way down) finds its address free for it.
        if self.holds.len() >= limits::DIRECTORY_DEPARTURES_MAX {
            let soonest = self
                .holds
                .iter()
                .min_by_key(|(_, hold)| hold.until_ms)
                .map(|(address, _)| *address);
            if let Some(soonest) = soonest {
                self.holds.remove(&soonest);
            }
        }
        self.holds.insert(
            address,
            Hold {
                identity: identity.clone(),
                until_ms,
            },
        );
        changed.push(identity);
        Ok(changed)
    }

    /// Remembers that `identity` left, having signed `last_s` last.
    fn depart(&mut self, identity: &str, last_s: u64, how: Left, now_ms: u64) {
        self.forget_departures(now_ms / 1000, now_ms);
        if self.departures.len() >= limits::DIRECTORY_DEPARTURES_MAX {
            let oldest = self
                .departures
                .iter()
                .min_by_key(|(_, (left_s, _))| *left_s)
                .map(|(id, _)| id.clone());
            if let Some(oldest) = oldest {
                self.departures.remove(&oldest);
            }
        }
        self.departures.insert(identity.to_string(), (last_s, how));
    }

    /// Forgets departures no registration within the clock skew could predate, and holds
    /// that have run out.
    fn forget_departures(&mut self, now_s: u64, now_ms: u64) {
        let horizon_s = now_s.saturating_sub(CLOCK_SKEW_S_MAX);
        self.departures
            .retain(|_, (left_s, _)| *left_s >= horizon_s);
        self.holds.retain(|_, hold| hold.until_ms >= now_ms);
    }

    /// Removes one node (tests, operators); rebalances. Returns the moved identities.
    pub fn remove(&mut self, identity: &str) -> Option<Vec<String>> {
        self.nodes.remove(identity)?;
        Some(self.rebalance())
    }

    /// (Re)assigns `identity`'s layer by its role: least populated layer for a mixnode.
    fn assign(&mut self, identity: &str) {
        let role = match self.nodes.get_mut(identity) {
            Some(entry) => {
                entry.layer = None;
                entry.descriptor.role
            }
            None => return,
        };
        let layer = match role {
            Role::Gateway => None,
            Role::Mixnode => Some(least_populated(&self.layer_sizes())),
        };
        let seq = self.next_seq;
        self.next_seq = self.next_seq.saturating_add(1);
        if let Some(entry) = self.nodes.get_mut(identity) {
            entry.layer = layer;
            entry.seq = seq;
        }
    }

    /// Moves the newest node of the fullest layer to the emptiest while they differ by more
    /// than one. Returns the moved identities.
    fn rebalance(&mut self) -> Vec<String> {
        let mut moved = Vec::new();
        // Each move narrows the gap; the bound only guards against a logic error.
        for _ in 0..=limits::DIRECTORY_NODES_MAX {
            let sizes = self.layer_sizes();
            let emptiest = least_populated(&sizes);
            let fullest = most_populated(&sizes);
            if sizes[fullest] <= sizes[emptiest] + 1 {
                break;
            }
            let newest = self
                .nodes
                .iter()
                .filter(|(_, e)| e.layer == Some(fullest))
                .max_by_key(|(_, e)| e.seq)
                .map(|(id, _)| id.clone());
            let Some(identity) = newest else { break };
            if let Some(entry) = self.nodes.get_mut(&identity) {
                entry.layer = Some(emptiest);
            }
            moved.push(identity);
        }
        moved
    }

    /// The topology these nodes make (layers in joining order, gateways likewise).
    pub fn topology(&self, epoch: u64, issued_at_s: u64, valid_until_s: u64) -> Topology {
        let mut ordered: Vec<&Entry> = self.nodes.values().collect();
        ordered.sort_by_key(|e| e.seq);
        let mut layers: [Vec<Descriptor>; LAYERS] = Default::default();
        let mut gateways = Vec::new();
        for entry in ordered {
            match (entry.descriptor.role, entry.layer) {
                (Role::Mixnode, Some(layer)) => {
                    if let Some(nodes) = layers.get_mut(layer) {
                        nodes.push(entry.descriptor.clone());
                    }
                }
                (Role::Gateway, _) => gateways.push(entry.descriptor.clone()),
                (Role::Mixnode, None) => {}
            }
        }
        Topology {
            epoch,
            issued_at_s,
            valid_until_s,
            layers: layers.into(),
            gateways,
            shared_random: None,
            layer_period: None,
            nodes_per_ip_max: None,
            admission: Some(self.admission.policy()),
        }
    }
}

fn least_populated(sizes: &[usize; LAYERS]) -> usize {
    let mut best = 0;
    for (index, size) in sizes.iter().enumerate() {
        if *size < sizes[best] {
            best = index;
        }
    }
    best
}

fn most_populated(sizes: &[usize; LAYERS]) -> usize {
    let mut best = 0;
    for (index, size) in sizes.iter().enumerate() {
        if *size > sizes[best] {
            best = index;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keyfile;

    const NOW_MS: u64 = 1_000_000_000;
    const TIMEOUT_MS: u64 = 3_000;
    const SOURCE: Option<IpAddr> = Some(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));

    /// A private network without caps (the tests that need caps set them).
    fn admission() -> Admission {
        Admission {
            private_addresses: true,
            nodes_per_ip_max: limits::DIRECTORY_NODES_MAX,
            nodes_per_source_max: limits::DIRECTORY_NODES_MAX,
            heartbeat_timeout_ms: TIMEOUT_MS,
            allowed: None,
        }
    }

    fn registry() -> Registry {
        Registry::new(admission())
    }

    fn descriptor(i: u16, role: Role) -> Descriptor {
        Descriptor {
            identity: keyfile::hex(&[i as u8; 32]),
            sphinx_key: keyfile::hex(&[9u8; 32]),
            rotation_id: 1,
            mix_address: SocketAddr::from(([127, 0, 0, 1], 1000 + i)),
            role,
            client_url: (role == Role::Gateway).then(|| "ws://127.0.0.1:9000".to_string()),
            metrics_url: None,
            family: None,
            issued_at_s: NOW_MS / 1000,
        }
    }

    fn add(r: &mut Registry, i: u16) -> Registered {
        r.register(descriptor(i, Role::Mixnode), String::new(), SOURCE, NOW_MS)
            .unwrap()
            .0
    }

    #[test]
    fn balanced_and_stable() {
        let mut r = registry();
        for i in 1..=4 {
            assert_eq!(add(&mut r, i), Registered::New);
        }
        assert_eq!(r.layer_sizes(), [2, 1, 1]);
        let layer_of = |r: &Registry, i: u16| r.get(&keyfile::hex(&[i as u8; 32])).unwrap().layer;
        assert_eq!(layer_of(&r, 1), Some(0));
        assert_eq!(layer_of(&r, 2), Some(1));
        assert_eq!(layer_of(&r, 3), Some(2));
        assert_eq!(layer_of(&r, 4), Some(0));
        // Re-registration keeps the layer.
        assert_eq!(add(&mut r, 2), Registered::Refreshed);
        assert_eq!(layer_of(&r, 2), Some(1));
        // Dropping node 2 leaves [2, 0, 1]: the newest of layer 0 (node 4) moves to layer 1.
        let moved = r.remove(&keyfile::hex(&[2u8; 32])).unwrap();
        assert_eq!(moved, vec![keyfile::hex(&[4u8; 32])]);
        assert_eq!(r.layer_sizes(), [1, 1, 1]);
        // Dropping node 3 leaves [1, 1, 0]: balanced enough, nothing moves.
        assert!(r.remove(&keyfile::hex(&[3u8; 32])).unwrap().is_empty());
        assert_eq!(r.layer_sizes(), [1, 1, 0]);
    }

    #[test]
    fn gateways_apart_and_topology() {
        let mut r = registry();
        for i in 1..=3 {
            add(&mut r, i);
        }
        r.register(descriptor(7, Role::Gateway), String::new(), SOURCE, NOW_MS)
            .unwrap();
        let t = r.topology(3, 10, 20);
        assert_eq!(t.layers.iter().map(Vec::len).collect::<Vec<_>>(), [1, 1, 1]);
        assert_eq!(t.gateways.len(), 1);
        assert_eq!(t.epoch, 3);
        // A gateway without a client URL is refused.
        let mut g = descriptor(8, Role::Gateway);
        g.client_url = None;
        assert_eq!(
            r.register(g, String::new(), SOURCE, NOW_MS),
            Err(RegistryError::NoClientUrl)
        );
    }

    #[test]
    fn rotated_sphinx_key_from_the_same_identity_is_an_update() {
        let mut r = registry();
        add(&mut r, 1);
        let layer = r.get(&descriptor(1, Role::Mixnode).identity).unwrap().layer;
        let mut rotated = descriptor(1, Role::Mixnode);
        rotated.sphinx_key = keyfile::hex(&[10u8; 32]);
        rotated.rotation_id = 2;
        rotated.issued_at_s += 1;
        let (what, changed) = r
            .register(rotated.clone(), String::new(), SOURCE, NOW_MS + 1_000)
            .unwrap();
        assert_eq!(what, Registered::Updated); // the server marks the topology dirty
        assert_eq!(changed, vec![rotated.identity.clone()]);
        let entry = r.get(&rotated.identity).unwrap();
        assert_eq!(entry.descriptor.sphinx_key, rotated.sphinx_key);
        assert_eq!(entry.descriptor.rotation_id, 2);
        assert_eq!(entry.layer, layer); // same node, same layer
    }

    #[test]
    fn refusals() {
        let mut r = registry();
        add(&mut r, 1);
        let mut old = descriptor(1, Role::Mixnode);
        old.issued_at_s -= 1;
        assert!(matches!(
            r.register(old, String::new(), SOURCE, NOW_MS),
            Err(RegistryError::Older { .. })
        ));
        let mut future = descriptor(2, Role::Mixnode);
        future.issued_at_s += CLOCK_SKEW_S_MAX + 1;
        assert!(matches!(
            r.register(future, String::new(), SOURCE, NOW_MS),
            Err(RegistryError::Window { .. })
        ));
        let mut stale = descriptor(2, Role::Mixnode);
        stale.issued_at_s -= CLOCK_SKEW_S_MAX + 1;
        assert!(matches!(
            r.register(stale, String::new(), SOURCE, NOW_MS),
            Err(RegistryError::Window { .. })
        ));
        let mut squatter = descriptor(2, Role::Mixnode);
        squatter.mix_address = descriptor(1, Role::Mixnode).mix_address;
        assert!(matches!(
            r.register(squatter, String::new(), SOURCE, NOW_MS),
            Err(RegistryError::AddressTaken(_))
        ));
        let mut anywhere = descriptor(2, Role::Mixnode);
        anywhere.mix_address = "0.0.0.0:1789".parse().unwrap();
        assert!(matches!(
            r.register(anywhere, String::new(), SOURCE, NOW_MS),
            Err(RegistryError::BadAddress { .. })
        ));
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn heartbeats_and_expiry() {
        let mut r = registry();
        add(&mut r, 1);
        add(&mut r, 2);
        let hb = |i: u8, sent_at_s: u64| Heartbeat {
            identity: keyfile::hex(&[i; 32]),
            sent_at_s,
        };
        let t = NOW_MS / 1000;
        assert_eq!(r.heartbeat(&hb(1, t), NOW_MS + 2000), Ok(false));
        assert_eq!(r.heartbeat(&hb(1, t + 2), NOW_MS + 2000), Ok(true));
        assert!(matches!(
            r.heartbeat(&hb(1, t + 1), NOW_MS + 2000),
            Err(RegistryError::HeartbeatOlder { .. })
        ));
        assert_eq!(
            r.heartbeat(&hb(3, t + 2), NOW_MS),
            Err(RegistryError::Unknown)
        );
        let (dropped, _) = r.expire(NOW_MS + 4000);
        assert_eq!(dropped, vec![keyfile::hex(&[2u8; 32])]);
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn full() {
        let mut r = registry();
        for i in 0..limits::DIRECTORY_NODES_MAX as u16 {
            let mut d = descriptor(0, Role::Mixnode);
            d.identity = format!("{i:064x}");
            d.mix_address = SocketAddr::from(([127, 0, 0, 1], 10_000 + i));
            r.register(d, String::new(), SOURCE, NOW_MS).unwrap();
        }
        assert_eq!(
            r.layer_sizes().iter().sum::<usize>(),
            limits::DIRECTORY_NODES_MAX
        );
        let mut d = descriptor(5, Role::Mixnode);
        d.mix_address = SocketAddr::from(([127, 0, 0, 2], 1));
        let elsewhere = Some(IpAddr::from([127, 0, 0, 2]));
        assert_eq!(
            r.register(d, String::new(), elsewhere, NOW_MS),
            Err(RegistryError::Full)
        );
    }

    #[test]
    fn restore_repairs() {
        let mut r = registry();
        for i in 1..=4 {
            add(&mut r, i);
        }
        let mut entries: Vec<Entry> = r.entries().cloned().collect();
        entries[0].layer = None;
        let (restored, changed, refused) = Registry::from_entries(admission(), entries);
        assert_eq!(changed.len(), 1);
        assert!(refused.is_empty());
        assert_eq!(restored.layer_sizes(), [2, 1, 1]);
    }

    #[test]
    fn deregistration_removes_at_once_and_replays_do_nothing() {
        let mut r = registry();
        add(&mut r, 1);
        add(&mut r, 2);
        let now_s = NOW_MS / 1000;
        let leave = |sent_at_s| Deregistration {
            identity: keyfile::hex(&[1u8; 32]),
            sent_at_s,
        };
        // Stale (outside the skew) and older than the registration: refused, node kept.
        assert!(matches!(
            r.deregister(&leave(now_s - CLOCK_SKEW_S_MAX - 1), NOW_MS),
            Err(RegistryError::DeregisterClock { .. })
        ));
        assert!(matches!(
            r.deregister(&leave(now_s - 1), NOW_MS),
            Err(RegistryError::DeregisterOlder { .. })
        ));
        assert!(r.get(&keyfile::hex(&[1u8; 32])).is_some());
        let changed = r.deregister(&leave(now_s), NOW_MS).unwrap();
        assert!(changed.contains(&keyfile::hex(&[1u8; 32])));
        assert!(r.get(&keyfile::hex(&[1u8; 32])).is_none());
        // Replayed: the node is gone.
        assert_eq!(
            r.deregister(&leave(now_s), NOW_MS),
            Err(RegistryError::Unknown)
        );
        // A registration issued no later than the leaving (a replay) is refused; a later one
        // is accepted, and the old deregistration replayed then removes nothing.
        assert_eq!(
            r.register(descriptor(1, Role::Mixnode), String::new(), SOURCE, NOW_MS),
            Err(RegistryError::Deregistered { left_s: now_s })
        );
        let mut again = descriptor(1, Role::Mixnode);
        again.issued_at_s = now_s + 1;
        r.register(again, String::new(), SOURCE, NOW_MS + 1000)
            .unwrap();
        assert!(matches!(
            r.deregister(&leave(now_s), NOW_MS + 1000),
            Err(RegistryError::DeregisterOlder { .. })
        ));
        assert!(r.get(&keyfile::hex(&[1u8; 32])).is_some());
    }

    fn node(i: u16, ip: [u8; 4]) -> Descriptor {
        let mut d = descriptor(i, Role::Mixnode);
        d.mix_address = SocketAddr::from((ip, 1000 + i));
        d
    }

    #[test]
    fn a_deregistered_address_stays_its_nodes_for_the_timeout() {
        let mut r = registry();
        add(&mut r, 1);
        let now_s = NOW_MS / 1000;
        let leave = Deregistration {
            identity: keyfile::hex(&[1u8; 32]),
            sent_at_s: now_s,
        };
        r.deregister(&leave, NOW_MS).unwrap();
        // A stranger with the address, while the node restarts: refused.
        let mut stranger = descriptor(2, Role::Mixnode);
        stranger.mix_address = descriptor(1, Role::Mixnode).mix_address;
        assert!(matches!(
            r.register(stranger.clone(), String::new(), SOURCE, NOW_MS + TIMEOUT_MS),
            Err(RegistryError::AddressTaken(_))
        ));
        // The node itself, back with a newer descriptor: accepted.
        let mut back = descriptor(1, Role::Mixnode);
        back.issued_at_s = now_s + 1;
        let (what, _) = r
            .register(back, String::new(), SOURCE, NOW_MS + 1_000)
            .unwrap();
        assert_eq!(what, Registered::New);
        // Had it not come back, the address is free once the timeout has passed.
        let mut r = registry();
        add(&mut r, 1);
        r.deregister(&leave, NOW_MS).unwrap();
        stranger.issued_at_s = now_s + 4;
        assert!(r
            .register(stranger, String::new(), SOURCE, NOW_MS + TIMEOUT_MS + 1_000)
            .is_ok());
    }

    #[test]
    fn replayed_registrations_do_not_keep_a_node_alive() {
        let mut r = registry();
        let d = descriptor(1, Role::Mixnode);
        let json = "signed-1".to_string();
        r.register(d.clone(), json.clone(), SOURCE, NOW_MS).unwrap();
        let t = NOW_MS / 1000;
        let hb = Heartbeat {
            identity: d.identity.clone(),
            sent_at_s: t + 1,
        };
        assert_eq!(r.heartbeat(&hb, NOW_MS + 1_000), Ok(true));
        // The same registration again changes nothing, liveness included.
        let (what, changed) = r
            .register(d.clone(), json.clone(), SOURCE, NOW_MS + 2_000)
            .unwrap();
        assert_eq!((what, changed.len()), (Registered::Refreshed, 0));
        assert_eq!(r.get(&d.identity).unwrap().last_seen_ms, NOW_MS + 1_000);
        // Another registration signed before the heartbeat: a replay.
        assert!(matches!(
            r.register(d.clone(), "signed-2".into(), SOURCE, NOW_MS + 2_000),
            Err(RegistryError::Replay { .. })
        ));
        // Dropped for silence, the captured registration cannot bring it back.
        let (dropped, _) = r.expire(NOW_MS + 1_000 + TIMEOUT_MS + 1);
        assert_eq!(dropped, vec![d.identity.clone()]);
        assert!(matches!(
            r.register(d.clone(), json, SOURCE, NOW_MS + 2_000),
            Err(RegistryError::Replay { .. })
        ));
        // Outside the window (the heartbeat timeout here, not the clock skew): refused.
        let mut fresh = d.clone();
        fresh.identity = keyfile::hex(&[2u8; 32]);
        fresh.mix_address = SocketAddr::from(([127, 0, 0, 1], 2002));
        assert_eq!(r.window_s(), TIMEOUT_MS / 1000);
        assert!(matches!(
            r.register(fresh, String::new(), SOURCE, NOW_MS + TIMEOUT_MS + 1_000),
            Err(RegistryError::Window { .. })
        ));
    }

    #[test]
    fn caps_per_ip_and_per_source_spare_the_nodes_already_in() {
        let mut r = Registry::new(Admission {
            nodes_per_ip_max: 2,
            nodes_per_source_max: 3,
            ..admission()
        });
        let register = |r: &mut Registry, d: Descriptor, source: [u8; 4]| {
            r.register(d, String::new(), Some(source.into()), NOW_MS)
        };
        register(&mut r, node(1, [10, 0, 0, 1]), [1, 1, 1, 1]).unwrap();
        register(&mut r, node(2, [10, 0, 0, 1]), [1, 1, 1, 1]).unwrap();
        assert!(matches!(
            register(&mut r, node(3, [10, 0, 0, 1]), [2, 2, 2, 2]),
            Err(RegistryError::IpFull { max: 2, .. })
        ));
        register(&mut r, node(3, [10, 0, 0, 2]), [1, 1, 1, 1]).unwrap();
        assert!(matches!(
            register(&mut r, node(4, [10, 0, 0, 3]), [1, 1, 1, 1]),
            Err(RegistryError::SourceFull { max: 3, .. })
        ));
        // Another source is not affected; the nodes in may re-register.
        register(&mut r, node(4, [10, 0, 0, 3]), [2, 2, 2, 2]).unwrap();
        let mut again = node(1, [10, 0, 0, 1]);
        again.issued_at_s += 1;
        assert_eq!(
            register(&mut r, again, [1, 1, 1, 1]).unwrap().0,
            Registered::Refreshed
        );
        // Moving to a full source is refused like joining it.
        let mut moved = node(4, [10, 0, 0, 3]);
        moved.issued_at_s += 1;
        assert!(matches!(
            register(&mut r, moved, [1, 1, 1, 1]),
            Err(RegistryError::SourceFull { .. })
        ));
        assert_eq!(r.len(), 4);
    }

    #[test]
    fn admission_refuses_addresses_keys_strangers() {
        let mut allowed = std::collections::BTreeSet::new();
        allowed.insert(descriptor(1, Role::Mixnode).identity);
        allowed.insert(descriptor(2, Role::Mixnode).identity);
        let mut r = Registry::new(Admission {
            private_addresses: false,
            allowed: Some(allowed),
            ..admission()
        });
        assert_eq!(
            r.register(node(3, [8, 8, 8, 8]), String::new(), SOURCE, NOW_MS),
            Err(RegistryError::NotAllowed)
        );
        for ip in [
            [127, 0, 0, 1],
            [192, 168, 1, 1],
            [169, 254, 169, 254],
            [224, 0, 0, 1],
        ] {
            assert!(matches!(
                r.register(node(1, ip), String::new(), SOURCE, NOW_MS),
                Err(RegistryError::BadAddress { .. })
            ));
        }
        let mut weak = node(1, [8, 8, 8, 8]);
        weak.sphinx_key = keyfile::hex(&[0u8; 32]);
        assert_eq!(
            r.register(weak, String::new(), SOURCE, NOW_MS),
            Err(RegistryError::WeakKey)
        );
        let mut family = node(1, [8, 8, 8, 8]);
        family.family = Some("two words".into());
        assert_eq!(
            r.register(family, String::new(), SOURCE, NOW_MS),
            Err(RegistryError::BadFamily)
        );
        assert!(r
            .register(node(1, [8, 8, 8, 8]), String::new(), SOURCE, NOW_MS)
            .is_ok());
        // Stored nodes the policy refuses now are left out on restore.
        let entries: Vec<Entry> = r.entries().cloned().collect();
        let strict = Admission {
            allowed: Some(Default::default()),
            ..admission()
        };
        let (restored, changed, refused) = Registry::from_entries(strict, entries);
        assert!(restored.is_empty());
        assert_eq!(changed.len(), 1);
        assert_eq!(refused.len(), 1);
    }
}

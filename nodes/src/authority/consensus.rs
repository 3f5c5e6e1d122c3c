//! The consensus: a pure, deterministic function of the votes an authority holds and the
//! document of the epoch before, so every authority holding the same votes and the same
//! previous document computes the same document byte for byte and their signatures add up.
//! No I/O, no clock: the epoch, the votes and the previous document are the whole input.
//!
//! Rules (Tor dir-spec 3.8, with a 2f+1 threshold instead of a majority):
//! - an authority with two different votes for the epoch equivocated: neither counts;
//! - a node is in only if at least `threshold` (2f+1) votes list its identity. Its
//!   descriptor is the one most of them hold (signing times aside: the node signs once per
//!   authority, seconds apart), ties to the newest (the later median signing time), and only
//!   among descriptors at least f+1 votes hold: votes carry descriptors without the node's
//!   signature, so one held by f liars alone may be invented. A node that re-registers (key
//!   rotation, restart) just before the votes, held with its old descriptor by some and its
//!   new one by others, so stays in. Its `issued_at_s` is the median of the chosen ones';
//! - numbers take the median of the votes (`issued_at_s`, `valid_until_s`, the layer period,
//!   the nodes per IP), so f liars cannot move them outside the honest values;
//! - the admission policy is the one at least `threshold` votes state (open, or one
//!   allow-list, compared by digest); under an agreed allow-list a node is in only if the list
//!   holds it, however many votes list it, so an authority with another list cannot add a
//!   node, and neither can authorities that admit more than the agreed list. With no policy
//!   agreed, the document says so and the count alone decides (each honest vote lists only
//!   nodes its own policy admits, so at least f+1 honest policies admit each node in);
//! - two nodes agreed on with one mix address are both left out (no honest authority admits
//!   that);
//! - at most `nodes_per_ip_max` nodes (mixnodes and gateways) with a mix address on one IP,
//!   the median of the caps the votes state, which the document records: each authority caps
//!   at registration too, but honest ones that saw the nodes of one IP register in another
//!   order hold different subsets, which a liar's vote for all of them would lift over the
//!   threshold together. Per IP the nodes listed by the most votes stay, then those of the
//!   previous certified document (newcomers do not push incumbents out), then by identity;
//! - the shared random value hashes the reveals that match their commitments in the previous
//!   epoch's consensus (Tor's SRV, each epoch standing alone), and the layers are the
//!   published rule [`layers_for`]: kept from the previous certified document for the agreed
//!   layer period (newcomers to the lightest layer), redrawn by [`assign_layers`] of the
//!   value at the period's end or when departures unbalance them.
//!
//! [`assign_layers`]: lethe_proto::topology::assign_layers
//!
//! The previous document counts for the layers and the incumbents only when certified
//! ([`Previous::Certified`]). An authority without it (the first epoch, one that was down or
//! missed the signatures) redraws the layers: its document then differs from the others',
//! so its signature does not count that epoch, as with a shared random value it computed
//! without the commitments; after an epoch certified nowhere, every authority redraws. Were its own uncertified computation kept instead, authorities
//! that once computed different documents would keep different layers for a whole period;
//! redrawn, they agree again as soon as they hold the same votes.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use sha2::{Digest, Sha256};

use super::vote::{commit_of, Vote};
use crate::keyfile;
use crate::topology::{Descriptor, Role, Topology, LAYERS};
use lethe_proto::topology::{layers_for, AdmissionPolicy, SharedRandom};

/// Domain of the shared random value: SHA-256(DOMAIN_SRV || epoch || reveal count || for each
/// revealing authority in key order: key || reveal).
pub const DOMAIN_SRV: &[u8] = b"lethe-srv-v1\0";

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConsensusError {
    #[error("{usable} usable votes, {needed} needed")]
    TooFewVotes { usable: usize, needed: usize },
    #[error("encoding the document: {0}")]
    Encoding(String),
}

/// The document of the epoch before, as an authority holds it when it computes the next.
#[derive(Clone, Copy, Debug)]
pub enum Previous<'a> {
    /// None: the first epoch, or an authority that missed it.
    None,
    /// Certified (threshold signatures): its commitments count, its layers are kept, its
    /// nodes are incumbents.
    Certified(&'a Topology),
    /// This authority's own computation, not certified here: only its commitments count.
    Computed(&'a Topology),
}

impl<'a> Previous<'a> {
    fn any(self) -> Option<&'a Topology> {
        match self {
            Previous::None => None,
            Previous::Certified(t) | Previous::Computed(t) => Some(t),
        }
    }

    fn certified(self) -> Option<&'a Topology> {
        match self {
            Previous::Certified(t) => Some(t),
            _ => None,
        }
    }
}

/// The lower median (of a non-empty list; 0 for an empty one).
fn median(mut values: Vec<u64>) -> u64 {
    values.sort_unstable();
    values
        .get(values.len().saturating_sub(1) / 2)
        .copied()
        .unwrap_or(0)
}

/// The votes that count: for `epoch`, one per authority, equivocators left out.
fn usable_votes(epoch: u64, votes: &[Vote]) -> BTreeMap<[u8; 32], &Vote> {
    let mut by_authority: BTreeMap<[u8; 32], Vec<&Vote>> = BTreeMap::new();
    for vote in votes.iter().filter(|v| v.epoch == epoch) {
        if let Some(key) = keyfile::unhex_32(&vote.authority) {
            let held = by_authority.entry(key).or_default();
            if !held.contains(&vote) {
                held.push(vote);
            }
        }
    }
    by_authority
        .into_iter()
        .filter_map(|(key, held)| match held.as_slice() {
            [one] => Some((key, *one)),
            _ => None,
        })
        .collect()
}

/// An admission policy and its allow-list (`None`: open).
type Stated = (AdmissionPolicy, Option<BTreeSet<[u8; 32]>>);

/// The policy a vote states and its allow-list. Entries that are not keys count for nothing
/// (`open_vote` refuses them).
fn stated_admission(vote: &Vote) -> Stated {
    match &vote.allowed {
        None => (AdmissionPolicy::Open, None),
        Some(list) => {
            let allowed: BTreeSet<[u8; 32]> =
                list.iter().filter_map(|id| keyfile::unhex_32(id)).collect();
            (AdmissionPolicy::allow_list(&allowed), Some(allowed))
        }
    }
}

/// The admission policy at least `threshold` votes state, with its allow-list.
fn agreed_admission(votes: &BTreeMap<[u8; 32], &Vote>, threshold: usize) -> Option<Stated> {
    // Policy → how many votes state it, and one of them (all with one list).
    let mut stated: BTreeMap<AdmissionPolicy, (usize, Stated)> = BTreeMap::new();
    for vote in votes.values() {
        let one = stated_admission(vote);
        stated.entry(one.0.clone()).or_insert((0, one)).0 += 1;
    }
    // With threshold > n/2 at most one policy can reach it.
    stated
        .into_values()
        .find(|(count, _)| *count >= threshold)
        .map(|(_, one)| one)
}

/// One descriptor of a node (signing time aside) and the signing times the votes listing it
/// gave.
type Listings = (Descriptor, Vec<u64>);

/// A node's listings across the votes: how many votes list its identity, and its
/// descriptors by their JSON without the signing time.
#[derive(Default)]
struct Seen {
    votes: usize,
    descriptors: BTreeMap<String, Listings>,
}

/// A node the votes agree on, with how many votes list its identity.
struct Agreed {
    descriptor: Descriptor,
    votes: usize,
}

/// What decides who is in besides the votes' listings.
struct Admit<'a> {
    /// Votes needed to be in (2f+1).
    threshold: usize,
    /// The agreed allow-list (`None`: any).
    allowed: Option<&'a BTreeSet<[u8; 32]>>,
    nodes_per_ip_max: usize,
    /// Identities of the previous certified document.
    incumbents: BTreeSet<&'a str>,
}

/// The nodes the votes agree on (see the module doc), in identity order.
fn agreed_nodes(votes: &BTreeMap<[u8; 32], &Vote>, admit: &Admit<'_>) -> Vec<Descriptor> {
    let mut seen: BTreeMap<[u8; 32], Seen> = BTreeMap::new();
    for vote in votes.values() {
        let mut listed: BTreeMap<[u8; 32], Vec<&Descriptor>> = BTreeMap::new();
        for node in &vote.nodes {
            if let (Ok(identity), Ok(_)) = (node.identity_key(), node.sphinx_public_key()) {
                listed.entry(identity).or_default().push(node);
            }
        }
        for (identity, nodes) in listed {
            // A vote listing one identity twice says nothing clear about it.
            let [node] = nodes.as_slice() else { continue };
            let mut content = (*node).clone();
            content.issued_at_s = 0;
            let Ok(key) = serde_json::to_string(&content) else {
                continue;
            };
            let seen = seen.entry(identity).or_default();
            seen.votes += 1;
            seen.descriptors
                .entry(key)
                .or_insert_with(|| (content, Vec::new()))
                .1
                .push(node.issued_at_s);
        }
    }
    // f+1 of 2f+1: at least one honest authority holds the chosen descriptor.
    let vouched = admit.threshold.div_ceil(2);
    let mut agreed: Vec<Agreed> = Vec::new();
    for (identity, seen) in seen {
        if seen.votes < admit.threshold
            || admit
                .allowed
                .is_some_and(|allowed| !allowed.contains(&identity))
        {
            continue;
        }
        let chosen = seen
            .descriptors
            .into_iter()
            .filter(|(_, (_, times))| times.len() >= vouched)
            .map(|(key, (descriptor, times))| (times.len(), median(times), key, descriptor))
            .max_by(|a, b| (a.0, a.1, &a.2).cmp(&(b.0, b.1, &b.2)));
        if let Some((_, issued_at_s, _, descriptor)) = chosen {
            agreed.push(Agreed {
                descriptor: Descriptor {
                    issued_at_s,
                    ..descriptor
                },
                votes: seen.votes,
            });
        }
    }
    let mut per_address: BTreeMap<SocketAddr, usize> = BTreeMap::new();
    for node in &agreed {
        *per_address.entry(node.descriptor.mix_address).or_default() += 1;
    }
    agreed.retain(|node| per_address.get(&node.descriptor.mix_address) == Some(&1));
    capped_per_ip(agreed, admit)
}

/// At most `nodes_per_ip_max` nodes per IP: by votes, then incumbents, then identity.
fn capped_per_ip(agreed: Vec<Agreed>, admit: &Admit<'_>) -> Vec<Descriptor> {
    let mut per_ip: BTreeMap<IpAddr, Vec<Agreed>> = BTreeMap::new();
    for node in agreed {
        per_ip
            .entry(node.descriptor.mix_address.ip())
            .or_default()
            .push(node);
    }
    let mut out: Vec<Descriptor> = Vec::new();
    for mut nodes in per_ip.into_values() {
        nodes.sort_by(|a, b| {
            let incumbent = |n: &Agreed| admit.incumbents.contains(n.descriptor.identity.as_str());
            b.votes
                .cmp(&a.votes)
                .then_with(|| incumbent(b).cmp(&incumbent(a)))
                .then_with(|| a.descriptor.identity.cmp(&b.descriptor.identity))
        });
        out.extend(
            nodes
                .into_iter()
                .take(admit.nodes_per_ip_max)
                .map(|n| n.descriptor),
        );
    }
    out.sort_by(|a, b| a.identity.cmp(&b.identity));
    out
}

/// The shared random value of `epoch` and how many reveals made it: reveals count only if
/// they match the commitment the previous epoch's consensus recorded for their authority.
fn shared_random_value(
    epoch: u64,
    votes: &BTreeMap<[u8; 32], &Vote>,
    previous: Option<&Topology>,
) -> ([u8; 32], u32) {
    let commits = previous
        .filter(|p| p.epoch.checked_add(1) == Some(epoch))
        .and_then(|p| p.shared_random.as_ref())
        .map(|s| &s.commits);
    let mut reveals: Vec<([u8; 32], [u8; 32])> = Vec::new();
    if let (Some(commits), Some(previous_epoch)) = (commits, epoch.checked_sub(1)) {
        for (key, vote) in votes {
            let Some(reveal) = vote.reveal.as_deref().and_then(keyfile::unhex_32) else {
                continue;
            };
            let committed = commits
                .get(&keyfile::hex(key))
                .and_then(|c| keyfile::unhex_32(c));
            if committed == Some(commit_of(key, previous_epoch, &reveal)) {
                reveals.push((*key, reveal));
            }
        }
    }
    let count = u32::try_from(reveals.len()).unwrap_or(u32::MAX);
    let mut hash = Sha256::new();
    hash.update(DOMAIN_SRV);
    hash.update(epoch.to_be_bytes());
    hash.update(count.to_be_bytes());
    for (key, reveal) in &reveals {
        hash.update(key);
        hash.update(reveal);
    }
    (hash.finalize().into(), count)
}

/// The consensus of `epoch` from `votes` (any order, any epochs, duplicates and
/// equivocations included: they are sorted out here), needing `threshold` usable votes.
/// `previous`: the document of the epoch before, for its commitments, and when certified
/// for its layers and incumbents.
pub fn consensus(
    epoch: u64,
    threshold: usize,
    votes: &[Vote],
    previous: Previous<'_>,
) -> Result<Topology, ConsensusError> {
    let threshold = threshold.max(1);
    let usable = usable_votes(epoch, votes);
    if usable.len() < threshold {
        return Err(ConsensusError::TooFewVotes {
            usable: usable.len(),
            needed: threshold,
        });
    }
    let agreed_number = |of: fn(&Vote) -> u64| median(usable.values().map(|v| of(v)).collect());
    let issued_at_s = agreed_number(|v| v.issued_at_s);
    let valid_until_s = agreed_number(|v| v.valid_until_s);
    let layer_period_epochs = agreed_number(|v| v.layer_period_epochs).max(1);
    let nodes_per_ip_max = agreed_number(|v| v.nodes_per_ip_max).max(1);
    let admission = agreed_admission(&usable, threshold);
    let certified = previous.certified();
    let admit = Admit {
        threshold,
        allowed: admission.as_ref().and_then(|(_, allowed)| allowed.as_ref()),
        nodes_per_ip_max: usize::try_from(nodes_per_ip_max).unwrap_or(usize::MAX),
        incumbents: certified
            .iter()
            .flat_map(|t| t.layers.iter().flatten().chain(&t.gateways))
            .map(|d| d.identity.as_str())
            .collect(),
    };
    let (mixnodes, gateways): (Vec<Descriptor>, Vec<Descriptor>) = agreed_nodes(&usable, &admit)
        .into_iter()
        .partition(|d| d.role == Role::Mixnode);
    let (value, reveals) = shared_random_value(epoch, &usable, previous.any());
    let (layers, layer_period) = layers_for(
        epoch,
        &value,
        layer_period_epochs,
        certified,
        mixnodes,
        LAYERS,
    );
    let commits = usable
        .iter()
        .map(|(key, vote)| (keyfile::hex(key), vote.commit.to_ascii_lowercase()))
        .collect();
    Ok(Topology {
        epoch,
        issued_at_s,
        valid_until_s,
        layers,
        gateways,
        shared_random: Some(SharedRandom {
            value: keyfile::hex(&value),
            reveals,
            commits,
        }),
        admission: admission.map(|(policy, _)| policy),
        layer_period: Some(layer_period),
        nodes_per_ip_max: Some(nodes_per_ip_max),
    })
}

/// The authorities whose vote for `epoch` counts and states another admission policy than
/// `agreed` (the document's; `None`: none was agreed, so every vote), with the policy each
/// states.
pub fn admission_dissenters(
    epoch: u64,
    votes: &[Vote],
    agreed: Option<&AdmissionPolicy>,
) -> Vec<([u8; 32], AdmissionPolicy)> {
    usable_votes(epoch, votes)
        .into_iter()
        .map(|(key, vote)| (key, stated_admission(vote).0))
        .filter(|(_, policy)| Some(policy) != agreed)
        .collect()
}

/// The authorities whose votes for `epoch` conflict (two different votes, one key).
pub fn equivocators(epoch: u64, votes: &[Vote]) -> BTreeSet<[u8; 32]> {
    let mut first: BTreeMap<[u8; 32], &Vote> = BTreeMap::new();
    let mut out = BTreeSet::new();
    for vote in votes.iter().filter(|v| v.epoch == epoch) {
        if let Some(key) = keyfile::unhex_32(&vote.authority) {
            match first.get(&key) {
                Some(held) if *held != vote => {
                    out.insert(key);
                }
                Some(_) => {}
                None => {
                    first.insert(key, vote);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authority::vote::reveal_for;
    use lethe_proto::topology::{assign_layers, LayersChecked};

    const EPOCH: u64 = 100;

    fn node(i: u8, role: Role) -> Descriptor {
        let mut d = lethe_proto::testing::descriptor(&[i; 32], [i; 32], 5000 + u16::from(i), role);
        d.issued_at_s = 1_000 + u64::from(i);
        d
    }

    fn nodes() -> Vec<Descriptor> {
        let mut out: Vec<Descriptor> = (1..=6).map(|i| node(i, Role::Mixnode)).collect();
        out.push(node(7, Role::Gateway));
        out
    }

    fn authority(a: u8) -> [u8; 32] {
        keyfile::ed25519_public(&[100 + a; 32])
    }

    fn vote(a: u8, epoch: u64, nodes: Vec<Descriptor>) -> Vote {
        let key = authority(a);
        let seed = [100 + a; 32];
        Vote {
            epoch,
            authority: keyfile::hex(&key),
            issued_at_s: epoch * 10,
            valid_until_s: epoch * 10 + 30,
            nodes,
            allowed: None,
            layer_period_epochs: 12,
            nodes_per_ip_max: 100,
            commit: keyfile::hex(&commit_of(&key, epoch, &reveal_for(&seed, epoch))),
            reveal: Some(keyfile::hex(&reveal_for(&seed, epoch - 1))),
        }
    }

    /// An allow-list of nodes `ids`, as a vote states it.
    fn allow_list(ids: impl IntoIterator<Item = u8>) -> Option<Vec<String>> {
        let keys: BTreeSet<[u8; 32]> = ids
            .into_iter()
            .map(|i| node(i, Role::Mixnode).identity_key().unwrap())
            .collect();
        Some(keys.iter().map(|k| keyfile::hex(k)).collect())
    }

    fn policy_of(allowed: &Option<Vec<String>>) -> AdmissionPolicy {
        let keys: BTreeSet<[u8; 32]> = allowed
            .iter()
            .flatten()
            .map(|id| keyfile::unhex_32(id).unwrap())
            .collect();
        AdmissionPolicy::allow_list(&keys)
    }

    #[test]
    fn the_agreed_allow_list_decides_who_is_in() {
        // Three authorities agree on nodes 1-5 and 7; all four vote every node, 6 included
        // (as authorities admitting more than the list would): 6 stays out.
        let list = allow_list([1, 2, 3, 4, 5, 7]);
        let mut votes: Vec<Vote> = (0..4).map(|a| vote(a, EPOCH, nodes())).collect();
        for v in &mut votes[..3] {
            v.allowed = list.clone();
        }
        // The fourth states another list, which holds a node of its own (40), that it alone
        // votes: neither its list nor its vote gets 40 in.
        votes[3].allowed = allow_list(1..=40);
        votes[3].nodes.push(node(40, Role::Mixnode));
        let t = consensus(EPOCH, 3, &votes, Previous::None).unwrap();
        let ids = identities(&t);
        assert_eq!(t.admission, Some(policy_of(&list)));
        assert!(!ids.contains(&node(6, Role::Mixnode).identity));
        assert!(!ids.contains(&node(40, Role::Mixnode).identity));
        assert_eq!(ids.len(), 6);
        assert_eq!(t.check_layers(None), Ok(LayersChecked::Recomputed));
        // The dissenter is named, with its policy; the list's order in a vote does not
        // matter for the digest.
        assert_eq!(
            admission_dissenters(EPOCH, &votes, t.admission.as_ref()),
            vec![(authority(3), policy_of(&votes[3].allowed))]
        );
        let mut reversed = votes.clone();
        reversed[0].allowed.as_mut().unwrap().reverse();
        assert_eq!(consensus(EPOCH, 3, &reversed, Previous::None), Ok(t));
        // Even if the other three vote node 40 too, the agreed list keeps it out.
        for v in &mut votes[..3] {
            v.nodes.push(node(40, Role::Mixnode));
        }
        let t = consensus(EPOCH, 3, &votes, Previous::None).unwrap();
        assert!(!identities(&t).contains(&node(40, Role::Mixnode).identity));
    }

    #[test]
    fn open_agreed_and_no_policy_agreed() {
        // Three open, one with a list: open is agreed, every node the votes agree on is in.
        let mut votes: Vec<Vote> = (0..4).map(|a| vote(a, EPOCH, nodes())).collect();
        votes[0].allowed = allow_list([1, 2]);
        votes[0].nodes.retain(|d| {
            [1, 2]
                .map(|i| node(i, Role::Mixnode).identity)
                .contains(&d.identity)
        });
        let t = consensus(EPOCH, 3, &votes, Previous::None).unwrap();
        assert_eq!(t.admission, Some(AdmissionPolicy::Open));
        assert_eq!(identities(&t).len(), 7);
        assert_eq!(
            admission_dissenters(EPOCH, &votes, t.admission.as_ref()),
            vec![(authority(0), policy_of(&votes[0].allowed))]
        );
        // Two open, two with different lists: no policy agreed. The document says so, and
        // the count decides as ever: nodes 3 to 7, outside the first list, are in on the
        // votes of the two open authorities and of the second list's.
        votes[1].allowed = allow_list([1, 2, 3, 4, 5, 6, 7]);
        let t = consensus(EPOCH, 3, &votes, Previous::None).unwrap();
        assert_eq!(t.admission, None);
        assert_eq!(identities(&t).len(), 7);
        assert_eq!(admission_dissenters(EPOCH, &votes, None).len(), 4);
        // The policy JSON is absent then; present otherwise.
        assert!(!serde_json::to_string(&t).unwrap().contains("admission"));
    }

    fn identities(t: &Topology) -> BTreeSet<String> {
        t.layers
            .iter()
            .flatten()
            .chain(&t.gateways)
            .map(|d| d.identity.clone())
            .collect()
    }

    #[test]
    fn same_votes_in_any_order_give_the_same_bytes() {
        let votes: Vec<Vote> = (0..4).map(|a| vote(a, EPOCH, nodes())).collect();
        let t = consensus(EPOCH, 3, &votes, Previous::None).unwrap();
        let mut reversed = votes.clone();
        reversed.reverse();
        // A repeated vote changes nothing either.
        reversed.push(votes[0].clone());
        let again = consensus(EPOCH, 3, &reversed, Previous::None).unwrap();
        assert_eq!(
            serde_json::to_string(&t).unwrap(),
            serde_json::to_string(&again).unwrap()
        );
        assert_eq!(identities(&t).len(), 7);
        assert_eq!(t.layers.iter().map(Vec::len).collect::<Vec<_>>(), [2, 2, 2]);
        assert_eq!(t.check_layers(None), Ok(LayersChecked::Recomputed));
        assert_eq!(
            (t.issued_at_s, t.valid_until_s),
            (EPOCH * 10, EPOCH * 10 + 30)
        );
        assert_eq!(t.shared_random.as_ref().unwrap().commits.len(), 4);
    }

    fn of(v: &mut Vote, i: u8) -> &mut Descriptor {
        let identity = node(i, Role::Mixnode).identity;
        v.nodes.iter_mut().find(|d| d.identity == identity).unwrap()
    }

    #[test]
    fn a_node_needs_threshold_votes_with_one_descriptor() {
        let fake = node(40, Role::Mixnode);
        let mut votes: Vec<Vote> = (0..4).map(|a| vote(a, EPOCH, nodes())).collect();
        // One authority votes a fake node: not in.
        votes[3].nodes.push(fake.clone());
        // Node 1 seen by only two authorities: not in.
        votes[0]
            .nodes
            .retain(|d| d.identity != node(1, Role::Mixnode).identity);
        votes[1]
            .nodes
            .retain(|d| d.identity != node(1, Role::Mixnode).identity);
        // Node 2 with another address in one vote: three still agree, it is in, as they say.
        of(&mut votes[2], 2).mix_address = "127.0.0.1:9".parse().unwrap();
        // Signing times differ (seconds apart): the median is taken.
        of(&mut votes[0], 3).issued_at_s += 2;
        of(&mut votes[1], 3).issued_at_s += 1;
        of(&mut votes[2], 3).issued_at_s += 1;
        let t = consensus(EPOCH, 3, &votes, Previous::None).unwrap();
        let ids = identities(&t);
        assert!(!ids.contains(&fake.identity));
        assert!(!ids.contains(&node(1, Role::Mixnode).identity));
        let two = t
            .layers
            .iter()
            .flatten()
            .find(|d| d.identity == node(2, Role::Mixnode).identity);
        assert_eq!(two.unwrap().mix_address, node(2, Role::Mixnode).mix_address);
        let three = t
            .layers
            .iter()
            .flatten()
            .find(|d| d.identity == node(3, Role::Mixnode).identity);
        assert_eq!(
            three.unwrap().issued_at_s,
            node(3, Role::Mixnode).issued_at_s + 1
        );
        assert_eq!(ids.len(), 6);
    }

    #[test]
    fn an_equivocator_counts_for_nothing_and_too_few_votes_fail() {
        let mut votes: Vec<Vote> = (0..4).map(|a| vote(a, EPOCH, nodes())).collect();
        let mut second = votes[3].clone();
        second.nodes.push(node(41, Role::Mixnode));
        votes.push(second);
        assert_eq!(equivocators(EPOCH, &votes), BTreeSet::from([authority(3)]));
        let t = consensus(EPOCH, 3, &votes, Previous::None).unwrap();
        assert!(!t
            .shared_random
            .as_ref()
            .unwrap()
            .commits
            .contains_key(&keyfile::hex(&authority(3))));
        assert!(!identities(&t).contains(&node(41, Role::Mixnode).identity));
        // Two honest votes left after another authority's is missing: no consensus.
        votes.remove(2);
        assert_eq!(
            consensus(EPOCH, 3, &votes, Previous::None),
            Err(ConsensusError::TooFewVotes {
                usable: 2,
                needed: 3
            })
        );
        // Votes of another epoch do not count for this one.
        let old: Vec<Vote> = (0..4).map(|a| vote(a, EPOCH - 1, nodes())).collect();
        assert!(consensus(EPOCH, 3, &old, Previous::None).is_err());
    }

    #[test]
    fn medians_hold_against_a_liar() {
        let mut votes: Vec<Vote> = (0..4).map(|a| vote(a, EPOCH, nodes())).collect();
        votes[3].valid_until_s = u64::MAX;
        votes[3].issued_at_s = 0;
        let t = consensus(EPOCH, 3, &votes, Previous::None).unwrap();
        assert_eq!(
            (t.issued_at_s, t.valid_until_s),
            (EPOCH * 10, EPOCH * 10 + 30)
        );
    }

    #[test]
    fn shared_random_counts_reveals_matching_the_previous_commits() {
        let previous_votes: Vec<Vote> = (0..4).map(|a| vote(a, EPOCH - 1, nodes())).collect();
        let previous = consensus(EPOCH - 1, 3, &previous_votes, Previous::None).unwrap();
        let mut votes: Vec<Vote> = (0..4).map(|a| vote(a, EPOCH, nodes())).collect();
        let t = consensus(EPOCH, 3, &votes, Previous::Certified(&previous)).unwrap();
        assert_eq!(t.shared_random.as_ref().unwrap().reveals, 4);
        // A reveal that does not match its commitment is left out, and the value changes.
        votes[1].reveal = Some(keyfile::hex(&[9u8; 32]));
        let wrong = consensus(EPOCH, 3, &votes, Previous::Certified(&previous)).unwrap();
        assert_eq!(wrong.shared_random.as_ref().unwrap().reveals, 3);
        assert_ne!(wrong.shared_random, t.shared_random);
        // Commitments of an epoch that is not the previous one count for nothing.
        let none = consensus(EPOCH + 1, 3, &votes, Previous::Certified(&previous));
        assert!(none.is_err()); // the votes are for EPOCH
        let unrelated = consensus(EPOCH, 3, &votes, Previous::None).unwrap();
        assert_eq!(unrelated.shared_random.as_ref().unwrap().reveals, 0);
    }

    #[test]
    fn one_mix_address_for_two_agreed_nodes_leaves_both_out() {
        let mut list = nodes();
        list[1].mix_address = list[0].mix_address;
        let votes: Vec<Vote> = (0..4).map(|a| vote(a, EPOCH, list.clone())).collect();
        let t = consensus(EPOCH, 3, &votes, Previous::None).unwrap();
        assert_eq!(identities(&t).len(), 5);
    }

    /// The documents of `epochs` epochs from EPOCH on, each computed from the votes of
    /// `nodes_at(epoch)` and the one before as certified.
    fn chain(epochs: u64, nodes_at: impl Fn(u64) -> Vec<Descriptor>) -> Vec<Topology> {
        let mut out: Vec<Topology> = Vec::new();
        for epoch in EPOCH..EPOCH + epochs {
            let votes: Vec<Vote> = (0..4).map(|a| vote(a, epoch, nodes_at(epoch))).collect();
            let previous = out.last().map_or(Previous::None, Previous::Certified);
            let t = consensus(epoch, 3, &votes, previous).unwrap();
            let checked = t.check_layers(out.last());
            assert_eq!(checked, Ok(LayersChecked::Recomputed), "epoch {epoch}");
            out.push(t);
        }
        out
    }

    /// Each mixnode's layer (index), by identity.
    fn layer_of(t: &Topology) -> BTreeMap<String, usize> {
        t.layers
            .iter()
            .enumerate()
            .flat_map(|(index, l)| l.iter().map(move |d| (d.identity.clone(), index)))
            .collect()
    }

    fn drawn_epoch(t: &Topology) -> u64 {
        t.layer_period.unwrap().drawn_epoch
    }

    #[test]
    fn layers_are_kept_for_the_layer_period_then_redrawn() {
        // The votes agree on a period of 12 epochs; the shared random value changes every
        // epoch (commitments recorded, then revealed), the layers do not, until epoch 12.
        let docs = chain(14, |_| nodes());
        let values: BTreeSet<&str> = docs
            .iter()
            .map(|t| t.shared_random.as_ref().unwrap().value.as_str())
            .collect();
        assert_eq!(values.len(), 14);
        for t in &docs[..12] {
            assert_eq!(t.layer_period.unwrap().epochs, 12);
            assert_eq!(drawn_epoch(t), EPOCH);
            assert_eq!(layer_of(t), layer_of(&docs[0]));
        }
        let redrawn = &docs[12];
        assert_eq!(drawn_epoch(redrawn), EPOCH + 12);
        let value = keyfile::unhex_32(&redrawn.shared_random.as_ref().unwrap().value).unwrap();
        let mixnodes: Vec<Descriptor> = redrawn.layers.iter().flatten().cloned().collect();
        assert_eq!(redrawn.layers, assign_layers(&value, mixnodes, LAYERS));
        assert_eq!(drawn_epoch(&docs[13]), EPOCH + 12);
        assert_eq!(layer_of(&docs[13]), layer_of(redrawn));
        // The median period counts: one liar stating 1 epoch changes nothing.
        let mut votes: Vec<Vote> = (0..4).map(|a| vote(a, EPOCH + 1, nodes())).collect();
        votes[3].layer_period_epochs = 1;
        let t = consensus(EPOCH + 1, 3, &votes, Previous::Certified(&docs[0])).unwrap();
        assert_eq!(t.layer_period.unwrap().epochs, 12);
        assert_eq!(drawn_epoch(&t), EPOCH);
    }

    #[test]
    fn newcomers_go_to_the_lightest_layer_and_fill_departed_nodes_holes() {
        let first = chain(1, |_| nodes()).remove(0);
        assert_eq!(
            first.layers.iter().map(Vec::len).collect::<Vec<_>>(),
            [2, 2, 2]
        );
        let before = layer_of(&first);
        // A node of the second layer leaves: 2/1/2 is kept.
        let gone = first.layers[1][0].identity.clone();
        let without = |epoch: u64| {
            let mut list = nodes();
            list.retain(|d| d.identity != gone);
            if epoch >= EPOCH + 2 {
                list.push(node(8, Role::Mixnode));
            }
            if epoch >= EPOCH + 3 {
                list.push(node(9, Role::Mixnode));
            }
            list
        };
        let mut docs = vec![first];
        for epoch in EPOCH + 1..EPOCH + 4 {
            let votes: Vec<Vote> = (0..4).map(|a| vote(a, epoch, without(epoch))).collect();
            let previous = Previous::Certified(docs.last().unwrap());
            docs.push(consensus(epoch, 3, &votes, previous).unwrap());
        }
        let sizes = |t: &Topology| t.layers.iter().map(Vec::len).collect::<Vec<_>>();
        assert_eq!(sizes(&docs[1]), [2, 1, 2]);
        // Node 8 fills the hole in layer 2; node 9 then goes to the first of the lightest.
        assert_eq!(sizes(&docs[2]), [2, 2, 2]);
        assert_eq!(layer_of(&docs[2])[&node(8, Role::Mixnode).identity], 1);
        assert_eq!(sizes(&docs[3]), [3, 2, 2]);
        assert_eq!(layer_of(&docs[3])[&node(9, Role::Mixnode).identity], 0);
        for doc in &docs[1..] {
            assert_eq!(drawn_epoch(doc), EPOCH);
            for (identity, layer) in layer_of(doc) {
                if let Some(was) = before.get(&identity) {
                    assert_eq!(layer, *was);
                }
            }
        }
    }

    #[test]
    fn unbalanced_kept_layers_are_redrawn() {
        // Nine mixnodes, 3/3/3; two of one layer leave: 3/1/3 is beyond the bound.
        let nine = || (1..=9).map(|i| node(i, Role::Mixnode)).collect::<Vec<_>>();
        let first = chain(1, |_| nine()).remove(0);
        let gone: Vec<String> = first.layers[0][..2]
            .iter()
            .map(|d| d.identity.clone())
            .collect();
        let mut rest = nine();
        rest.retain(|d| !gone.contains(&d.identity));
        let votes: Vec<Vote> = (0..4).map(|a| vote(a, EPOCH + 1, rest.clone())).collect();
        let t = consensus(EPOCH + 1, 3, &votes, Previous::Certified(&first)).unwrap();
        assert_eq!(drawn_epoch(&t), EPOCH + 1);
        assert_eq!(t.layers.iter().map(Vec::len).collect::<Vec<_>>(), [3, 2, 2]);
        assert_eq!(t.check_layers(None), Ok(LayersChecked::Recomputed));
    }

    #[test]
    fn the_same_votes_and_previous_document_give_the_same_bytes() {
        let first = chain(1, |_| nodes()).remove(0);
        let votes: Vec<Vote> = (0..4).map(|a| vote(a, EPOCH + 1, nodes())).collect();
        let mut reversed = votes.clone();
        reversed.reverse();
        let json = |votes: &[Vote], previous| {
            serde_json::to_string(&consensus(EPOCH + 1, 3, votes, previous).unwrap()).unwrap()
        };
        let kept = json(&votes, Previous::Certified(&first));
        assert_eq!(kept, json(&reversed, Previous::Certified(&first)));
        // An authority that holds only its own computation of the epoch before redraws: a
        // document of its own, whose signature does not count this epoch.
        let alone: Topology =
            serde_json::from_str(&json(&votes, Previous::Computed(&first))).unwrap();
        assert_eq!(drawn_epoch(&alone), EPOCH + 1);
        assert_ne!(json(&votes, Previous::Computed(&first)), kept);
        // Its commitments still count, as without the layer rule.
        assert_eq!(alone.shared_random.as_ref().unwrap().reveals, 4);
    }

    /// Node `i` as a mixnode on `ip`.
    fn on_ip(i: u8, ip: [u8; 4]) -> Descriptor {
        let mut d = node(i, Role::Mixnode);
        d.mix_address = SocketAddr::from((ip, 5000 + u16::from(i)));
        d
    }

    #[test]
    fn at_most_the_agreed_nodes_per_ip_are_in_whoever_votes_them() {
        // Three mixnodes on one IP, a cap of 2: the three honest authorities each hold a
        // different two (the order they registered in), the liar votes all three and states
        // a cap of 1,000. Each node has three votes: two are in, the lowest identities.
        let ip = [10, 0, 0, 1];
        let others = || (4..=6).map(|i| on_ip(i, [10, 0, 0, i])).collect::<Vec<_>>();
        let holding = |held: &[u8]| {
            let mut list: Vec<Descriptor> = held.iter().map(|&i| on_ip(i, ip)).collect();
            list.extend(others());
            list
        };
        let mut votes = vec![
            vote(0, EPOCH, holding(&[1, 2])),
            vote(1, EPOCH, holding(&[2, 3])),
            vote(2, EPOCH, holding(&[1, 3])),
            vote(3, EPOCH, holding(&[1, 2, 3])),
        ];
        for v in &mut votes {
            v.nodes_per_ip_max = 2;
        }
        votes[3].nodes_per_ip_max = 1_000;
        let on_the_ip = |t: &Topology| {
            let mut ids: Vec<String> = t
                .layers
                .iter()
                .flatten()
                .filter(|d| d.mix_address.ip() == std::net::IpAddr::from(ip))
                .map(|d| d.identity.clone())
                .collect();
            ids.sort();
            ids
        };
        let mut three: Vec<String> = [1, 2, 3].map(|i| on_ip(i, ip).identity).to_vec();
        three.sort();
        let t = consensus(EPOCH, 3, &votes, Previous::None).unwrap();
        assert_eq!(t.nodes_per_ip_max, Some(2));
        assert_eq!(on_the_ip(&t), three[..2].to_vec());
        assert_eq!(identities(&t).len(), 5);
        // A node of the previous certified document keeps its place against an equal
        // newcomer: there, the highest identity was in and the middle one was not.
        let mut previous = t.clone();
        for layer in &mut previous.layers {
            layer.retain(|d| d.identity != three[1]);
        }
        let highest = [1, 2, 3].map(|i| on_ip(i, ip));
        let highest = highest.iter().find(|d| d.identity == three[2]).unwrap();
        previous.layers[0].push(highest.clone());
        let mut later = votes.clone();
        for v in &mut later {
            v.epoch = EPOCH + 1;
        }
        let t = consensus(EPOCH + 1, 3, &later, Previous::Certified(&previous)).unwrap();
        assert_eq!(on_the_ip(&t), vec![three[0].clone(), three[2].clone()]);
        // More votes come first: with a fourth vote, node 3 stays whatever its identity.
        later[0].nodes.push(on_ip(3, ip));
        let t = consensus(EPOCH + 1, 3, &later, Previous::None).unwrap();
        assert!(on_the_ip(&t).contains(&on_ip(3, ip).identity));
        assert_eq!(on_the_ip(&t).len(), 2);
    }

    #[test]
    fn a_node_re_registering_across_the_vote_stays_in_with_its_newest_descriptor() {
        // Node 1 rotates its key just before the votes: two authorities hold its old
        // descriptor, two its new one. It is in, with the new one.
        let old = node(1, Role::Mixnode);
        let mut new = old.clone();
        new.sphinx_key = keyfile::hex(&keyfile::ed25519_public(&[51; 32]));
        new.rotation_id += 1;
        new.issued_at_s += 30;
        let with = |d: &Descriptor| {
            let mut list = nodes();
            list.retain(|n| n.identity != old.identity);
            list.push(d.clone());
            list
        };
        // The descriptor of node 1 in the consensus of votes holding `held` (one each).
        let chosen = |held: [&Descriptor; 4]| {
            let votes: Vec<Vote> = (0..4u8)
                .map(|a| vote(a, EPOCH, with(held[usize::from(a)])))
                .collect();
            let t = consensus(EPOCH, 3, &votes, Previous::None).unwrap();
            t.layers
                .iter()
                .flatten()
                .find(|d| d.identity == old.identity)
                .cloned()
        };
        assert_eq!(chosen([&old, &old, &new, &new]), Some(new.clone()));
        // A liar holding the stale one beside a lagging honest authority: a tie, the newer
        // wins; three against the liar's: the three.
        assert_eq!(chosen([&new, &new, &old, &old]), Some(new.clone()));
        assert_eq!(chosen([&new, &new, &new, &old]), Some(new.clone()));
        // A descriptor only the liar holds (votes carry no node signature, so it may be
        // invented) never wins, however new: it needs f+1 votes.
        let mut forged = new.clone();
        forged.mix_address = "127.0.0.1:9".parse().unwrap();
        forged.issued_at_s += 1_000;
        assert_eq!(chosen([&old, &old, &old, &forged]), Some(old.clone()));
        assert_eq!(chosen([&old, &new, &new, &forged]), Some(new));
    }
}

//! The consensus: a pure, deterministic function of the votes an authority holds, so every
//! authority holding the same votes computes the same document byte for byte and their
//! signatures add up. No I/O, no clock: the epoch and the votes are the whole input.
//!
//! Rules (Tor dir-spec 3.8, with a 2f+1 threshold instead of a majority):
//! - an authority with two different votes for the epoch equivocated: neither counts;
//! - a node is in only if at least `threshold` votes list it with the same descriptor
//!   (signing times aside: the node signs once per authority, seconds apart); its
//!   `issued_at_s` is the median of theirs;
//! - numbers take the median of the votes (`issued_at_s`, `valid_until_s`), so f liars
//!   cannot move them outside the honest values;
//! - the admission policy is the one at least `threshold` votes state (open, or one
//!   allow-list, compared by digest); under an agreed allow-list a node is in only if the list
//!   holds it, however many votes list it, so an authority with another list cannot add a
//!   node, and neither can authorities that admit more than the agreed list. With no policy
//!   agreed, the document says so and the count alone decides (each honest vote lists only
//!   nodes its own policy admits, so at least f+1 honest policies admit each node in);
//! - two nodes agreed on with one mix address are both left out (no honest authority admits
//!   that);
//! - the shared random value hashes the reveals that match their commitments in the previous
//!   epoch's consensus (Tor's SRV, each epoch standing alone), and the layers are its
//!   published function [`assign_layers`].

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use sha2::{Digest, Sha256};

use super::vote::{commit_of, Vote};
use crate::keyfile;
use crate::topology::{Descriptor, Role, Topology, LAYERS};
use lethe_proto::topology::{assign_layers, AdmissionPolicy, SharedRandom};

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

/// The nodes at least `threshold` votes agree on, by identity, and `allowed` holds (`None`:
/// any).
fn agreed_nodes(
    votes: &BTreeMap<[u8; 32], &Vote>,
    threshold: usize,
    allowed: Option<&BTreeSet<[u8; 32]>>,
) -> Vec<Descriptor> {
    // identity → descriptor without its signing time (JSON) → (descriptor, signing times).
    let mut seen: BTreeMap<[u8; 32], BTreeMap<String, Listings>> = BTreeMap::new();
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
            let group = seen
                .entry(identity)
                .or_default()
                .entry(key)
                .or_insert_with(|| (content, Vec::new()));
            group.1.push(node.issued_at_s);
        }
    }
    let mut agreed: Vec<Descriptor> = Vec::new();
    for (identity, groups) in seen {
        if allowed.is_some_and(|allowed| !allowed.contains(&identity)) {
            continue;
        }
        // With threshold > n/2 at most one descriptor of a node can reach it.
        if let Some((descriptor, times)) = groups
            .into_values()
            .find(|(_, times)| times.len() >= threshold)
        {
            agreed.push(Descriptor {
                issued_at_s: median(times),
                ..descriptor
            });
        }
    }
    let mut per_address: BTreeMap<SocketAddr, usize> = BTreeMap::new();
    for node in &agreed {
        *per_address.entry(node.mix_address).or_default() += 1;
    }
    agreed.retain(|node| per_address.get(&node.mix_address) == Some(&1));
    agreed
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
/// `previous`: the consensus of the epoch before, for its commitments.
pub fn consensus(
    epoch: u64,
    threshold: usize,
    votes: &[Vote],
    previous: Option<&Topology>,
) -> Result<Topology, ConsensusError> {
    let threshold = threshold.max(1);
    let usable = usable_votes(epoch, votes);
    if usable.len() < threshold {
        return Err(ConsensusError::TooFewVotes {
            usable: usable.len(),
            needed: threshold,
        });
    }
    let issued_at_s = median(usable.values().map(|v| v.issued_at_s).collect());
    let valid_until_s = median(usable.values().map(|v| v.valid_until_s).collect());
    let admission = agreed_admission(&usable, threshold);
    let allowed = admission.as_ref().and_then(|(_, allowed)| allowed.as_ref());
    let (mixnodes, mut gateways): (Vec<Descriptor>, Vec<Descriptor>) =
        agreed_nodes(&usable, threshold, allowed)
            .into_iter()
            .partition(|d| d.role == Role::Mixnode);
    gateways.sort_by(|a, b| a.identity.cmp(&b.identity));
    let (value, reveals) = shared_random_value(epoch, &usable, previous);
    let commits = usable
        .iter()
        .map(|(key, vote)| (keyfile::hex(key), vote.commit.to_ascii_lowercase()))
        .collect();
    Ok(Topology {
        epoch,
        issued_at_s,
        valid_until_s,
        layers: assign_layers(&value, mixnodes, LAYERS),
        gateways,
        shared_random: Some(SharedRandom {
            value: keyfile::hex(&value),
            reveals,
            commits,
        }),
        admission: admission.map(|(policy, _)| policy),
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
        let t = consensus(EPOCH, 3, &votes, None).unwrap();
        let ids = identities(&t);
        assert_eq!(t.admission, Some(policy_of(&list)));
        assert!(!ids.contains(&node(6, Role::Mixnode).identity));
        assert!(!ids.contains(&node(40, Role::Mixnode).identity));
        assert_eq!(ids.len(), 6);
        assert_eq!(t.layers_follow_shared_random(), Ok(()));
        // The dissenter is named, with its policy; the list's order in a vote does not
        // matter for the digest.
        assert_eq!(
            admission_dissenters(EPOCH, &votes, t.admission.as_ref()),
            vec![(authority(3), policy_of(&votes[3].allowed))]
        );
        let mut reversed = votes.clone();
        reversed[0].allowed.as_mut().unwrap().reverse();
        assert_eq!(consensus(EPOCH, 3, &reversed, None), Ok(t));
        // Even if the other three vote node 40 too, the agreed list keeps it out.
        for v in &mut votes[..3] {
            v.nodes.push(node(40, Role::Mixnode));
        }
        let t = consensus(EPOCH, 3, &votes, None).unwrap();
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
        let t = consensus(EPOCH, 3, &votes, None).unwrap();
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
        let t = consensus(EPOCH, 3, &votes, None).unwrap();
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
        let t = consensus(EPOCH, 3, &votes, None).unwrap();
        let mut reversed = votes.clone();
        reversed.reverse();
        // A repeated vote changes nothing either.
        reversed.push(votes[0].clone());
        let again = consensus(EPOCH, 3, &reversed, None).unwrap();
        assert_eq!(
            serde_json::to_string(&t).unwrap(),
            serde_json::to_string(&again).unwrap()
        );
        assert_eq!(identities(&t).len(), 7);
        assert_eq!(t.layers.iter().map(Vec::len).collect::<Vec<_>>(), [2, 2, 2]);
        assert_eq!(t.layers_follow_shared_random(), Ok(()));
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
        let t = consensus(EPOCH, 3, &votes, None).unwrap();
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
        let t = consensus(EPOCH, 3, &votes, None).unwrap();
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
            consensus(EPOCH, 3, &votes, None),
            Err(ConsensusError::TooFewVotes {
                usable: 2,
                needed: 3
            })
        );
        // Votes of another epoch do not count for this one.
        let old: Vec<Vote> = (0..4).map(|a| vote(a, EPOCH - 1, nodes())).collect();
        assert!(consensus(EPOCH, 3, &old, None).is_err());
    }

    #[test]
    fn medians_hold_against_a_liar() {
        let mut votes: Vec<Vote> = (0..4).map(|a| vote(a, EPOCH, nodes())).collect();
        votes[3].valid_until_s = u64::MAX;
        votes[3].issued_at_s = 0;
        let t = consensus(EPOCH, 3, &votes, None).unwrap();
        assert_eq!(
            (t.issued_at_s, t.valid_until_s),
            (EPOCH * 10, EPOCH * 10 + 30)
        );
    }

    #[test]
    fn shared_random_counts_reveals_matching_the_previous_commits() {
        let previous_votes: Vec<Vote> = (0..4).map(|a| vote(a, EPOCH - 1, nodes())).collect();
        let previous = consensus(EPOCH - 1, 3, &previous_votes, None).unwrap();
        let mut votes: Vec<Vote> = (0..4).map(|a| vote(a, EPOCH, nodes())).collect();
        let t = consensus(EPOCH, 3, &votes, Some(&previous)).unwrap();
        assert_eq!(t.shared_random.as_ref().unwrap().reveals, 4);
        // A reveal that does not match its commitment is left out, and the value changes.
        votes[1].reveal = Some(keyfile::hex(&[9u8; 32]));
        let wrong = consensus(EPOCH, 3, &votes, Some(&previous)).unwrap();
        assert_eq!(wrong.shared_random.as_ref().unwrap().reveals, 3);
        assert_ne!(wrong.shared_random, t.shared_random);
        // Commitments of an epoch that is not the previous one count for nothing.
        let none = consensus(EPOCH + 1, 3, &votes, Some(&previous));
        assert!(none.is_err()); // the votes are for EPOCH
        let unrelated = consensus(EPOCH, 3, &votes, None).unwrap();
        assert_eq!(unrelated.shared_random.as_ref().unwrap().reveals, 0);
    }

    #[test]
    fn one_mix_address_for_two_agreed_nodes_leaves_both_out() {
        let mut list = nodes();
        list[1].mix_address = list[0].mix_address;
        let votes: Vec<Vote> = (0..4).map(|a| vote(a, EPOCH, list.clone())).collect();
        let t = consensus(EPOCH, 3, &votes, None).unwrap();
        assert_eq!(identities(&t).len(), 5);
    }
}

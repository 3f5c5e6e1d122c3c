//! Multi-process: voting authorities (`lethe authority run --peer URL=KEY ...`) on loopback,
//! n = 4 pinned, f = 1, so a document needs 3 signatures. One authority down: epochs are
//! still certified. The fourth authority as an adversary, played by this test with its own
//! pinned key (no build of `lethe` can misbehave): a fake node only it votes for, under an
//! allow-list only it states, stays out and its list counts as a disagreement;
//! two different votes, or two documents signed, count for nothing and are counted as
//! equivocation; its old vote and an old signature replayed are refused and counted.
//! Outcomes are polled with generous bounded deadlines, never timed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::http::{get, post};
use common::*;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use lethe_nodes::authority::vote::{commit_of, reveal_for, Vote, DOMAIN_VOTE};
use lethe_nodes::keyfile;
use lethe_nodes::topology::{
    now_s, sign, sign_consensus, verify_consensus, AuthoritySet, Descriptor, MultiSigned, Role,
    Signed, Topology, DOMAIN_DESCRIPTOR,
};
use lethe_proto::topology::AdmissionPolicy;

/// Short epochs (vote in the first half, sign in the second): a few epochs per test.
const EPOCH_S: u64 = 6;
/// Epochs a step of the adversary's is tried in before the test gives up.
const EPOCH_TRIES: usize = 5;
/// The adversary's seed (its public key is pinned by the honest authorities).
const ADVERSARY: [u8; 32] = [77; 32];

struct Authorities {
    /// The running ones (the first `processes.len()` of `urls`/`keys`).
    processes: Vec<Process>,
    urls: Vec<String>,
    set: AuthoritySet,
}

impl Authorities {
    /// `running` authorities of `lethe`, and `outsiders` keys pinned beside theirs (at URLs
    /// where nothing listens); with `allowed`, each admits only those nodes.
    fn start(
        name: &str,
        running: usize,
        outsiders: &[[u8; 32]],
        allowed: Option<&Path>,
    ) -> Authorities {
        let dirs: Vec<PathBuf> = (0..running)
            .map(|i| temp_dir(&format!("{name}-{i}")))
            .collect();
        let mut keys: Vec<[u8; 32]> = dirs
            .iter()
            .map(|dir| {
                let out = Command::new(LETHE)
                    .args(["authority", "init", "--dir", dir.to_str().unwrap()])
                    .output()
                    .unwrap();
                assert!(out.status.success());
                let text = String::from_utf8(out.stdout).unwrap();
                keyfile::unhex_32(text.lines().find_map(|l| l.strip_prefix("key=")).unwrap())
                    .unwrap()
            })
            .collect();
        keys.extend(outsiders);
        let urls: Vec<String> = keys
            .iter()
            .map(|_| format!("http://127.0.0.1:{}", free_port()))
            .collect();
        let processes = (0..running)
            .map(|i| {
                let listen = urls[i].trim_start_matches("http://").to_string();
                let epoch = EPOCH_S.to_string();
                let mut args: Vec<String> = [
                    "authority",
                    "run",
                    "--dir",
                    dirs[i].to_str().unwrap(),
                    "--listen",
                    &listen,
                    "--epoch-s",
                    &epoch,
                    "--heartbeat-timeout-s",
                    "600",
                    "--private-network",
                ]
                .iter()
                .map(|s| s.to_string())
                .collect();
                if let Some(path) = allowed {
                    args.push("--allowed-nodes".into());
                    args.push(path.to_str().unwrap().into());
                }
                for j in (0..keys.len()).filter(|j| *j != i) {
                    args.push("--peer".into());
                    args.push(format!("{}={}", urls[j], keyfile::hex(&keys[j])));
                }
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                Process::start(&args, &["listen", "key"])
            })
            .collect();
        let set = AuthoritySet::new(keys.clone()).unwrap();
        assert_eq!(set.threshold(), 3);
        Authorities {
            processes,
            urls,
            set,
        }
    }

    fn metrics(&self, i: usize) -> SocketAddr {
        self.processes[i].addr("listen")
    }

    /// The consensus authority `i` serves, verified against the four pinned keys.
    fn consensus(&self, i: usize) -> Option<(MultiSigned, Topology)> {
        let (status, body) = get(&self.urls[i], "/v1/consensus");
        if status != 200 {
            return None;
        }
        let doc: MultiSigned = serde_json::from_str(&body).unwrap();
        let topology = verify_consensus(&doc, &self.set, now_s(), None).unwrap();
        Some((doc, topology))
    }

    /// Waits until authority `i` serves a consensus for which `done` holds.
    fn wait_consensus(
        &self,
        i: usize,
        what: &str,
        done: impl Fn(&MultiSigned, &Topology) -> bool,
    ) -> (MultiSigned, Topology) {
        let deadline = Instant::now() + WAIT_MAX;
        let mut last = None;
        while Instant::now() < deadline {
            if let Some((doc, topology)) = self.consensus(i) {
                if done(&doc, &topology) {
                    return (doc, topology);
                }
                last = Some(topology.epoch);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("authority {i}: timed out waiting for {what}; last epoch served {last:?}");
    }
}

/// Four nodes (three mixnodes, a gateway), signed descriptors, registered at every URL.
fn register_nodes(urls: &[String]) -> Vec<Descriptor> {
    let mut out = Vec::new();
    for (i, role) in [
        (1u8, Role::Mixnode),
        (2, Role::Mixnode),
        (3, Role::Mixnode),
        (4, Role::Gateway),
    ] {
        let seed = [i; 32];
        let mut d = lethe_proto::testing::descriptor(&seed, [i; 32], 7000 + u16::from(i), role);
        d.issued_at_s = now_s();
        if role == Role::Gateway {
            d.client_url = Some("ws://127.0.0.1:9".into());
        }
        let body = serde_json::to_vec(&sign(&d, DOMAIN_DESCRIPTOR, &seed).unwrap()).unwrap();
        for url in urls {
            let (status, text) = post(url, "/v1/register", body.clone());
            assert_eq!(status, 200, "{text}");
        }
        out.push(d);
    }
    out
}

fn identities(t: &Topology) -> Vec<String> {
    let mut ids: Vec<String> = t
        .layers
        .iter()
        .flatten()
        .chain(&t.gateways)
        .map(|d| d.identity.clone())
        .collect();
    ids.sort();
    ids
}

/// Whether the epoch's shared random value recorded `authority`'s commitment.
fn committed(t: &Topology, authority: &str) -> bool {
    t.shared_random
        .as_ref()
        .unwrap()
        .commits
        .contains_key(authority)
}

fn signers(doc: &MultiSigned) -> Vec<String> {
    let mut out: Vec<String> = doc.signatures.iter().map(|s| s.signer.clone()).collect();
    out.sort();
    out
}

/// The epoch the clock is in, and ms into it.
fn clock_epoch() -> (u64, u64) {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    (now_ms / (EPOCH_S * 1000), now_ms % (EPOCH_S * 1000))
}

/// Waits until the next epoch is a sixth in (every authority has moved to it: they tick
/// every 300 ms) with most of its vote half left; returns it.
fn next_vote_phase() -> u64 {
    let deadline = Instant::now() + WAIT_MAX;
    let (start, _) = clock_epoch();
    while Instant::now() < deadline {
        let (epoch, into_ms) = clock_epoch();
        if epoch > start && (EPOCH_S * 1000 / 6..EPOCH_S * 1000 / 3).contains(&into_ms) {
            return epoch;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("the clock did not reach a new epoch");
}

/// Runs `send` in the vote phase of an epoch (it says whether every authority took what it
/// sent) until an epoch it ran in is certified: an epoch missed on a loaded machine is retried
/// in a later one, at most [`EPOCH_TRIES`] times. That epoch and its certified document.
fn in_a_certified_epoch(
    authorities: &Authorities,
    what: &str,
    mut send: impl FnMut(u64) -> bool,
) -> (u64, MultiSigned, Topology) {
    for _ in 0..EPOCH_TRIES {
        let epoch = next_vote_phase();
        if send(epoch) {
            let (doc, t) =
                authorities
                    .wait_consensus(0, &format!("the epoch of {what}"), |_, t| t.epoch >= epoch);
            if t.epoch == epoch {
                return (epoch, doc, t);
            }
        }
    }
    panic!("no epoch with {what} was certified");
}

fn adversary_key() -> [u8; 32] {
    keyfile::ed25519_public(&ADVERSARY)
}

/// The adversary's vote for `epoch` listing `nodes`, stating the allow-list `allowed`
/// (`None`: open, as the honest ones).
fn adversary_vote(
    epoch: u64,
    nodes: Vec<Descriptor>,
    allowed: Option<Vec<String>>,
) -> (Vote, Vec<u8>) {
    let key = adversary_key();
    let issued_at_s = epoch * EPOCH_S;
    let vote = Vote {
        epoch,
        authority: keyfile::hex(&key),
        issued_at_s,
        valid_until_s: issued_at_s + 3 * EPOCH_S,
        nodes,
        allowed,
        layer_period_epochs: 720,
        nodes_per_ip_max: 1_000,
        commit: keyfile::hex(&commit_of(&key, epoch, &reveal_for(&ADVERSARY, epoch))),
        reveal: Some(keyfile::hex(&reveal_for(&ADVERSARY, epoch - 1))),
    };
    let body = serde_json::to_vec(&sign(&vote, DOMAIN_VOTE, &ADVERSARY).unwrap()).unwrap();
    (vote, body)
}

/// A node only the adversary knows of.
fn fake_node() -> Descriptor {
    let mut d = lethe_proto::testing::descriptor(&[66; 32], [66; 32], 7066, Role::Mixnode);
    d.issued_at_s = now_s();
    d
}

/// A counter line of authority `i`'s metrics (`name{labels}`).
fn counter(authorities: &Authorities, i: usize, name: &str) -> u64 {
    metric(authorities.metrics(i), name)
}

fn wait_counter_at_least(authorities: &Authorities, i: usize, name: &str, value: u64) {
    let deadline = Instant::now() + WAIT_MAX;
    let mut last = 0;
    while Instant::now() < deadline {
        last = counter(authorities, i, name);
        if last >= value {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("authority {i}: {name} stayed at {last}, expected at least {value}");
}

#[test]
fn with_one_authority_down_every_epoch_is_still_certified() {
    // Three of four pinned authorities run: exactly the threshold. Each admits the four
    // nodes by one allow-list, which the document names as the agreed policy.
    let down = keyfile::ed25519_public(&[5; 32]);
    let identities_allowed: std::collections::BTreeSet<[u8; 32]> = (1..=4u8)
        .map(|i| keyfile::ed25519_public(&[i; 32]))
        .collect();
    let allowed = temp_dir("down-allowed");
    let list: String = identities_allowed
        .iter()
        .map(|k| format!("{}\n", keyfile::hex(k)))
        .collect();
    std::fs::write(&allowed, list).unwrap();
    let authorities = Authorities::start("down", 3, &[down], Some(&allowed));
    let nodes = register_nodes(&authorities.urls[..3]);
    let mut expected: Vec<String> = nodes.iter().map(|d| d.identity.clone()).collect();
    expected.sort();
    let (first, topology) = authorities.wait_consensus(0, "a document with every node", |_, t| {
        identities(t) == expected
    });
    assert_eq!(first.signatures.len(), 3);
    assert!(!signers(&first).contains(&keyfile::hex(&down)));
    assert_eq!(
        topology.admission,
        Some(AdmissionPolicy::allow_list(&identities_allowed))
    );
    // Redrawn, or kept from the epoch before (newcomers dealt to the lightest layer): which
    // node was where before is checked in the consensus unit tests.
    assert!(topology.check_layers(None).is_ok());
    assert_eq!(
        topology.layers.iter().map(Vec::len).collect::<Vec<_>>(),
        [1, 1, 1]
    );
    // Later epochs too, every authority serving the same document for one epoch, and the
    // shared random value made of the three reveals once commitments were recorded.
    let epoch = topology.epoch;
    let (later, t) =
        authorities.wait_consensus(0, "two more epochs certified", |_, t| t.epoch >= epoch + 2);
    assert_eq!(identities(&t), expected);
    assert_eq!(t.shared_random.as_ref().unwrap().reveals, 3);
    assert_eq!(t.shared_random.as_ref().unwrap().commits.len(), 3);
    for i in 1..3 {
        let (doc, _) =
            authorities.wait_consensus(i, "the same epoch", |_, other| other.epoch >= t.epoch);
        let other: Topology = serde_json::from_str(&doc.body).unwrap();
        if other.epoch == t.epoch {
            assert_eq!(
                doc.body, later.body,
                "authority {i} served another document"
            );
        }
    }
    let m = authorities.metrics(0);
    assert!(metric(m, "lethe_authority_consensus_certified_total") >= 3);
    assert_eq!(metric(m, "lethe_authority_authorities"), 4);
    assert_eq!(metric(m, "lethe_authority_threshold"), 3);
    assert_eq!(metric(m, "lethe_authority_nodes{state=\"alive\"}"), 4);
    assert_eq!(
        metric(m, "lethe_authority_equivocations_total{kind=\"vote\"}"),
        0
    );
    assert_eq!(
        metric(m, "lethe_authority_admission_disagreements_total"),
        0
    );
    wait_gauge(m, "lethe_authority_consensus_signatures", 3);
}

#[test]
fn a_lying_authority_gets_no_fake_node_in_and_no_second_document_certified() {
    let authorities = Authorities::start("liar", 3, &[adversary_key()], None);
    let adversary = keyfile::hex(&adversary_key());
    let nodes = register_nodes(&authorities.urls[..3]);
    let mut expected: Vec<String> = nodes.iter().map(|d| d.identity.clone()).collect();
    expected.sort();
    authorities.wait_consensus(0, "a first document", |_, t| identities(t) == expected);

    // 1. A fake node in the adversary's (single, consistent) vote, which states an
    // allow-list of its own holding it: its vote counts (its commitment is recorded), the
    // node does not get in, the honest authorities' open policy is the agreed one and the
    // adversary's is counted as a disagreement.
    let mut with_fake = nodes.clone();
    with_fake.push(fake_node());
    let mut with_fake_list: Vec<String> = with_fake.iter().map(|d| d.identity.clone()).collect();
    with_fake_list.sort();
    let (fake_epoch, doc, t) = in_a_certified_epoch(&authorities, "the fake vote", |epoch| {
        let (_, body) = adversary_vote(epoch, with_fake.clone(), Some(with_fake_list.clone()));
        let answers: Vec<(u16, String)> = (0..3)
            .map(|i| post(&authorities.urls[i], "/v1/vote", body.clone()))
            .collect();
        eprintln!("fake vote for epoch {epoch}: {answers:?}");
        answers.iter().all(|(status, _)| *status == 200)
    });
    assert_eq!(identities(&t), expected, "the fake node got in");
    assert!(committed(&t, &adversary));
    assert_eq!(t.admission, Some(AdmissionPolicy::Open));
    for i in 0..3 {
        wait_counter_at_least(
            &authorities,
            i,
            "lethe_authority_admission_disagreements_total",
            1,
        );
    }
    assert_eq!(doc.signatures.len(), 3);

    // 2. Two different votes for one epoch, shown to different authorities: pulled votes
    // reveal the conflict everywhere; neither counts, the epoch is certified without it.
    let (_, doc, t) = in_a_certified_epoch(&authorities, "the two votes", |epoch| {
        let (_, honest_looking) = adversary_vote(epoch, nodes.clone(), None);
        let (_, other) = adversary_vote(epoch, with_fake.clone(), None);
        let a = post(&authorities.urls[0], "/v1/vote", honest_looking).0;
        let b = post(&authorities.urls[1], "/v1/vote", other.clone()).0;
        let c = post(&authorities.urls[2], "/v1/vote", other).0;
        eprintln!("two votes for epoch {epoch}: {:?}", [a, b, c]);
        // 409: the conflict was already pulled from a peer.
        [a, b, c].iter().all(|s| *s == 200 || *s == 409)
    });
    for i in 0..3 {
        wait_counter_at_least(
            &authorities,
            i,
            "lethe_authority_equivocations_total{kind=\"vote\"}",
            1,
        );
    }
    assert_eq!(identities(&t), expected);
    assert!(!committed(&t, &adversary));
    assert_eq!(doc.signatures.len(), 3);

    // 3. The adversary signs the certified document and a forged one of the same epoch:
    // the forged one never gets a second signature, and the adversary's signature is
    // dropped from the real one.
    let mut signed_epoch = None;
    let mut forged_body = String::new();
    for _ in 0..EPOCH_TRIES {
        let (doc, t) =
            authorities.wait_consensus(0, "a current document", |_, t| t.epoch == clock_epoch().0);
        if clock_epoch().1 > EPOCH_S * 1000 * 3 / 4 {
            // Too close to the next epoch to finish this one: wait for the next.
            std::thread::sleep(Duration::from_millis(EPOCH_S * 1000 / 2));
            continue;
        }
        let mut forged = t.clone();
        forged.layers[0].push(fake_node());
        forged_body = serde_json::to_string(&forged).unwrap();
        let real = MultiSigned {
            body: doc.body.clone(),
            signatures: vec![sign_consensus(&doc.body, &ADVERSARY)],
        };
        let fake = MultiSigned {
            body: forged_body.clone(),
            signatures: vec![sign_consensus(&forged_body, &ADVERSARY)],
        };
        let real = serde_json::to_vec(&real).unwrap();
        let fake = serde_json::to_vec(&fake).unwrap();
        let mut ok = true;
        for url in &authorities.urls[..3] {
            ok &= post(url, "/v1/signature", real.clone()).0 == 200;
            ok &= post(url, "/v1/signature", fake.clone()).0 == 409;
        }
        if ok {
            signed_epoch = Some(t.epoch);
            break;
        }
    }
    let epoch = signed_epoch.expect("the two signatures were never sent within one epoch");
    for i in 0..3 {
        wait_counter_at_least(
            &authorities,
            i,
            "lethe_authority_equivocations_total{kind=\"signature\"}",
            1,
        );
        let (doc, t) = authorities.wait_consensus(i, "the signed epoch", |_, t| t.epoch >= epoch);
        if t.epoch == epoch {
            assert_ne!(doc.body, forged_body);
            assert!(!signers(&doc).contains(&adversary), "authority {i}");
            assert_eq!(doc.signatures.len(), 3);
        }
    }
    let forged = MultiSigned {
        body: forged_body.clone(),
        signatures: vec![sign_consensus(&forged_body, &ADVERSARY)],
    };
    assert!(verify_consensus(&forged, &authorities.set, now_s(), None).is_err());

    // 4. Replays: the adversary's vote of an earlier epoch and an honest authority's
    // certified document of an earlier epoch are refused as stale and counted.
    let (_, old_vote) = adversary_vote(fake_epoch, with_fake, None);
    let (old_doc, old) = authorities.wait_consensus(1, "any document", |_, _| true);
    // Authority 2 serving a later epoch is past the old one's.
    authorities.wait_consensus(2, "an epoch after it", |_, t| t.epoch > old.epoch);
    let stale_votes = "lethe_authority_votes_refused_total{reason=\"stale_epoch\"}";
    let stale_signatures = "lethe_authority_signatures_refused_total{reason=\"stale_epoch\"}";
    let votes_before = counter(&authorities, 2, stale_votes);
    let signatures_before = counter(&authorities, 2, stale_signatures);
    let (status, text) = post(&authorities.urls[2], "/v1/vote", old_vote);
    assert_eq!(status, 409, "{text}");
    let (status, text) = post(
        &authorities.urls[2],
        "/v1/signature",
        serde_json::to_vec(&old_doc).unwrap(),
    );
    assert_eq!(status, 409, "{text}");
    assert_eq!(counter(&authorities, 2, stale_votes), votes_before + 1);
    assert_eq!(
        counter(&authorities, 2, stale_signatures),
        signatures_before + 1
    );
    // A vote signed by a key nobody pinned: refused as such.
    let stranger: Signed = sign(
        &adversary_vote(clock_epoch().0, nodes, None).0,
        DOMAIN_VOTE,
        &[88; 32],
    )
    .unwrap();
    let (status, _) = post(
        &authorities.urls[2],
        "/v1/vote",
        serde_json::to_vec(&stranger).unwrap(),
    );
    assert_eq!(status, 403);
    assert_eq!(
        counter(
            &authorities,
            2,
            "lethe_authority_votes_refused_total{reason=\"unknown_signer\"}"
        ),
        1
    );
}

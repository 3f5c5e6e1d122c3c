//! Signed node descriptors and signed topologies: what the directory publishes and what
//! nodes and clients verify before using.
//!
//! Signing: a signed document is `{ "body": <JSON text>, "signer": <hex ed25519 key>,
//! "signature": <hex> }`. The signature covers `DOMAIN || body` where the domain names the
//! document kind, so a descriptor signature can never pass as a topology signature. The body is
//! kept as the exact text that was signed (no re-serialisation before verification).
//!
//! Consensus documents: several authorities sign the same body (`{ "body": <JSON text>,
//! "signatures": [{ "signer", "signature" }, ...] }`, each over `DOMAIN_CONSENSUS || body`); a
//! verifier pins the authorities' keys ([`AuthoritySet`]) and accepts a document only with
//! 2f+1 valid signatures of distinct pinned keys, so f lying authorities can neither forge a
//! document nor get two different ones accepted for the same round.
//!
//! The documents' types (descriptors, topologies) and route sampling live in
//! `lethe_proto::topology`, where the client core uses them; they are re-exported here.

use std::time::Duration;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::keyfile;
use crate::limits;
pub use lethe_proto::topology::{
    sample_delays_ns, Descriptor, Role, Topology, TopologyError, LAYERS,
};

/// Domain of a node descriptor signature (signed by the node's identity key).
pub const DOMAIN_DESCRIPTOR: &[u8] = b"lethe-descriptor-v1\0";
/// Domain of a heartbeat signature (signed by the node's identity key).
pub const DOMAIN_HEARTBEAT: &[u8] = b"lethe-heartbeat-v1\0";
/// Domain of a deregistration signature (signed by the node's identity key): a different
/// domain from the heartbeat's, so a captured heartbeat cannot be replayed as one.
pub const DOMAIN_DEREGISTER: &[u8] = b"lethe-deregister-v1\0";
/// Domain of a topology signature (signed by the directory's key).
pub const DOMAIN_TOPOLOGY: &[u8] = b"lethe-topology-v1\0";
/// Domain of a consensus document signature (each authority signs the same body).
pub const DOMAIN_CONSENSUS: &[u8] = b"lethe-consensus-v1\0";
/// Largest signed document accepted (bytes of body): bounds parsing work on untrusted input.
pub const SIGNED_BODY_BYTES_MAX: usize = 1 << 20;
/// How far a signed timestamp may be ahead of the verifier's clock.
pub const CLOCK_SKEW_S_MAX: u64 = 120;

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

/// A signed document as it travels: the exact signed text, the signer, the signature.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signed {
    pub body: String,
    pub signer: String,
    pub signature: String,
}

/// A document several authorities signed: the exact body text (a [`Topology`]'s JSON), and
/// one signature per authority.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MultiSigned {
    pub body: String,
    pub signatures: Vec<AuthoritySignature>,
}

/// One authority's signature over `DOMAIN_CONSENSUS || body`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthoritySignature {
    /// The authority's ed25519 public key, hex.
    pub signer: String,
    /// Hex.
    pub signature: String,
}

/// The authorities' keys a verifier pins (from its configuration): 1 to
/// [`AUTHORITIES_MAX`](limits::AUTHORITIES_MAX) distinct keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthoritySet {
    keys: Vec<[u8; 32]>,
}

impl AuthoritySet {
    /// The set of `keys` (duplicates removed, order kept); refused when empty or larger than
    /// [`AUTHORITIES_MAX`](limits::AUTHORITIES_MAX).
    pub fn new(keys: Vec<[u8; 32]>) -> Result<Self, TopologyError> {
        let mut distinct: Vec<[u8; 32]> = Vec::with_capacity(keys.len());
        for key in keys {
            if !distinct.contains(&key) {
                distinct.push(key);
            }
        }
        if distinct.is_empty() {
            return Err(TopologyError::Malformed("no authority key pinned"));
        }
        if distinct.len() > limits::AUTHORITIES_MAX {
            return Err(TopologyError::Malformed(
                "more authority keys than AUTHORITIES_MAX",
            ));
        }
        Ok(Self { keys: distinct })
    }

    /// Signatures a document needs: 2f+1 of n, with f = (n-1)/3 the most authorities that
    /// may lie (n = 1 -> 1, n = 4 -> 3, n = 7 -> 5). Any two sets of 2f+1 share f+1
    /// authorities, at least one honest, so two conflicting documents cannot both pass.
    pub fn threshold(&self) -> usize {
        let faulty = (self.keys.len() - 1) / 3;
        2 * faulty + 1
    }

    pub fn contains(&self, key: &[u8; 32]) -> bool {
        self.keys.contains(key)
    }

    /// The pinned keys, in configuration order.
    pub fn keys(&self) -> &[[u8; 32]] {
        &self.keys
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Never true (a set holds at least one key); for clippy's `len_without_is_empty`.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// One authority's signature over a consensus body.
pub fn sign_consensus(body: &str, seed: &[u8; 32]) -> AuthoritySignature {
    let key = SigningKey::from_bytes(seed);
    let signature = key.sign(&domain_message(DOMAIN_CONSENSUS, body.as_bytes()));
    AuthoritySignature {
        signer: keyfile::hex(key.verifying_key().as_bytes()),
        signature: hex_64(&signature.to_bytes()),
    }
}

impl AuthoritySignature {
    /// The signer's key if this is a valid signature of it over `body`.
    fn verify(&self, body: &[u8]) -> Option<[u8; 32]> {
        let signer = keyfile::unhex_32(&self.signer)?;
        let signature = unhex_64(&self.signature)?;
        let key = VerifyingKey::from_bytes(&signer).ok()?;
        key.verify_strict(
            &domain_message(DOMAIN_CONSENSUS, body),
            &Signature::from_bytes(&signature),
        )
        .ok()?;
        Some(signer)
    }
}

/// Distinct pinned keys with a valid signature over the body. Each pinned key's first entry
/// is the only one tried, so a document costs at most `set.len()` verifications however many
/// entries it carries; unknown signers and repeated entries count for nothing.
pub fn valid_signers(doc: &MultiSigned, set: &AuthoritySet) -> Vec<[u8; 32]> {
    let mut tried: Vec<[u8; 32]> = Vec::with_capacity(set.len());
    let mut valid = Vec::with_capacity(set.len());
    for entry in &doc.signatures {
        let Some(signer) = keyfile::unhex_32(&entry.signer) else {
            continue;
        };
        if !set.contains(&signer) || tried.contains(&signer) {
            continue;
        }
        tried.push(signer);
        if entry.verify(doc.body.as_bytes()).is_some() {
            valid.push(signer);
        }
    }
    valid
}

/// What a client or node accepts: at least `set.threshold()` valid signatures by distinct
/// pinned keys, then not stale, not from the future, not older than the epoch it already
/// uses (`seen_epoch`), and every node key well-formed.
pub fn verify_consensus(
    doc: &MultiSigned,
    set: &AuthoritySet,
    now_s: u64,
    seen_epoch: Option<u64>,
) -> Result<Topology, TopologyError> {
    if doc.body.len() > SIGNED_BODY_BYTES_MAX {
        return Err(TopologyError::TooLarge(doc.body.len()));
    }
    let valid = valid_signers(doc, set).len();
    let needed = set.threshold();
    if valid < needed {
        return Err(TopologyError::TooFewSignatures { valid, needed });
    }
    let topology: Topology =
        serde_json::from_str(&doc.body).map_err(|_| TopologyError::Malformed("body"))?;
    check_topology(topology, now_s, seen_epoch)
}

/// Where a document a verifier holds stands at a given time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Freshness {
    /// Within its validity.
    Fresh,
    /// Past its validity by at most [`CONSENSUS_GRACE_S`](limits::CONSENSUS_GRACE_S): still
    /// used (no newer one verified), and said so.
    Grace { expired_s: u64 },
    /// Past the grace: not used.
    Expired { expired_s: u64 },
}

/// How `topology` stands at `now_s`.
pub fn freshness(topology: &Topology, now_s: u64) -> Freshness {
    match now_s.checked_sub(topology.valid_until_s) {
        None | Some(0) => Freshness::Fresh,
        Some(expired_s) if expired_s <= limits::CONSENSUS_GRACE_S => Freshness::Grace { expired_s },
        Some(expired_s) => Freshness::Expired { expired_s },
    }
}

/// Who fetches documents, for [`refetch_in`]: a gateway checks its clients' first hops
/// against the document it holds, so it takes each new one first; clients and loadgen a
/// little later, so they seldom route on layers their gateway does not know yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Consumer {
    Gateway,
    Client,
}

/// How long a consumer holding `held` waits, at `now_ms`, before fetching again: until the
/// next document is due plus the consumer's lag, and at most `every`. Voting authorities
/// certify epoch E+1's document in the middle of E+1 (epochs are aligned to the clock, E's
/// starting at its `issued_at_s`, and a document is valid for
/// [`DIRECTORY_VALIDITY_EPOCHS`](limits::DIRECTORY_VALIDITY_EPOCHS)), and nodes join and
/// leave with each one: a consumer on a shorter epoch than its `every` must not wait
/// longer, or its gateway (which keeps only its previous document besides the current one)
/// refuses the first hops it picks that left since. A lone directory publishes at least once an epoch. Once the next
/// document is late, again a tenth of an epoch later.
pub fn refetch_in(held: &Topology, now_ms: u64, every: Duration, consumer: Consumer) -> Duration {
    let epoch_ms = held
        .valid_until_s
        .saturating_sub(held.issued_at_s)
        .saturating_mul(1000)
        / limits::DIRECTORY_VALIDITY_EPOCHS;
    if epoch_ms == 0 {
        return every;
    }
    let certified_ms = if held.shared_random.is_some() {
        epoch_ms / 2
    } else {
        0
    };
    let lag_permille = match consumer {
        Consumer::Gateway => limits::CONSENSUS_FETCH_LAG_GATEWAY_PERMILLE,
        Consumer::Client => limits::CONSENSUS_FETCH_LAG_CLIENT_PERMILLE,
    };
    let due_ms = held
        .issued_at_s
        .saturating_mul(1000)
        .saturating_add(epoch_ms)
        .saturating_add(certified_ms)
        .saturating_add(epoch_ms.saturating_mul(lag_permille) / 1000);
    let wait_ms = match due_ms.checked_sub(now_ms) {
        Some(wait_ms) if wait_ms > 0 => wait_ms,
        _ => (epoch_ms / 10).max(limits::CONSENSUS_REFETCH_MS_MIN),
    };
    every.min(Duration::from_millis(wait_ms))
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
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
    check_topology(topology, now_s, seen_epoch)
}

/// The checks after the signatures: fresh, not from the future, epoch not regressed, node
/// keys well-formed.
fn check_topology(
    topology: Topology,
    now_s: u64,
    seen_epoch: Option<u64>,
) -> Result<Topology, TopologyError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn descriptor(seed: &[u8; 32], role: Role, port: u16) -> Descriptor {
        lethe_proto::testing::descriptor(seed, [9; 32], port, role)
    }

    fn topology(epoch: u64, valid_until_s: u64) -> Topology {
        Topology {
            epoch,
            valid_until_s,
            ..lethe_proto::testing::TestMixnet::new(1, &[7; 32]).topology
        }
    }

    #[test]
    fn consumers_fetch_each_epochs_document_gateways_first() {
        let every = Duration::from_secs(300);
        // A voting authorities' document of epoch 100 of 5 s: the next is certified at
        // 507.5 s; gateways fetch at +0.5 s, clients at +2 s.
        let mut voting = topology(100, 500 + 15);
        voting.issued_at_s = 500;
        voting.shared_random = Some(lethe_proto::topology::SharedRandom {
            value: "00".repeat(32),
            reveals: 0,
            commits: Default::default(),
        });
        let at = |now_ms: u64, consumer| refetch_in(&voting, now_ms, every, consumer);
        assert_eq!(at(501_000, Consumer::Gateway), Duration::from_millis(7_000));
        assert_eq!(at(501_000, Consumer::Client), Duration::from_millis(8_500));
        // Late: again a tenth of an epoch on.
        assert_eq!(at(509_500, Consumer::Client), Duration::from_millis(500));
        // Never longer than `every`; a long epoch changes nothing.
        assert_eq!(
            refetch_in(&voting, 501_000, Duration::from_secs(2), Consumer::Client),
            Duration::from_secs(2)
        );
        let mut long = voting.clone();
        long.valid_until_s = 500 + 3 * 3600;
        assert_eq!(refetch_in(&long, 501_000, every, Consumer::Client), every);
        // A lone directory's: the next at the end of its epoch.
        let mut lone = voting.clone();
        lone.shared_random = None;
        assert_eq!(
            refetch_in(&lone, 501_000, every, Consumer::Gateway),
            Duration::from_millis(4_500)
        );
        // No validity to go by: `every`.
        lone.valid_until_s = lone.issued_at_s;
        assert_eq!(refetch_in(&lone, 501_000, every, Consumer::Client), every);
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

    fn authorities(n: u8) -> (Vec<[u8; 32]>, AuthoritySet) {
        let seeds: Vec<[u8; 32]> = (0..n).map(|i| [100 + i; 32]).collect();
        let set = AuthoritySet::new(seeds.iter().map(keyfile::ed25519_public).collect()).unwrap();
        (seeds, set)
    }

    fn consensus(topology: &Topology, seeds: &[[u8; 32]]) -> MultiSigned {
        let body = serde_json::to_string(topology).unwrap();
        MultiSigned {
            signatures: seeds.iter().map(|s| sign_consensus(&body, s)).collect(),
            body,
        }
    }

    #[test]
    fn threshold_is_two_f_plus_one() {
        let expected = [(1, 1), (2, 1), (3, 1), (4, 3), (5, 3), (6, 3), (7, 5)];
        for (n, needed) in expected {
            assert_eq!(authorities(n).1.threshold(), needed, "n = {n}");
        }
        let key = keyfile::ed25519_public(&[1; 32]);
        let set = AuthoritySet::new(vec![key, key, key, key]).unwrap();
        assert_eq!(
            (set.len(), set.threshold()),
            (1, 1),
            "duplicates pinned once"
        );
        assert!(AuthoritySet::new(Vec::new()).is_err());
        let too_many = (0..=limits::AUTHORITIES_MAX as u8)
            .map(|i| [i; 32])
            .collect();
        assert!(AuthoritySet::new(too_many).is_err());
    }

    #[test]
    fn consensus_needs_threshold_of_pinned_signatures() {
        let (seeds, set) = authorities(4);
        let t = topology(5, 1000);
        assert_eq!(
            verify_consensus(&consensus(&t, &seeds[..3]), &set, 500, Some(5)),
            Ok(t.clone())
        );
        assert_eq!(
            verify_consensus(&consensus(&t, &seeds[1..]), &set, 500, None),
            Ok(t.clone())
        );
        let too_few = consensus(&t, &seeds[..2]);
        assert_eq!(
            verify_consensus(&too_few, &set, 500, None),
            Err(TopologyError::TooFewSignatures {
                valid: 2,
                needed: 3
            })
        );
        // The same signature three times counts once.
        let mut duplicated = too_few.clone();
        duplicated.signatures = vec![too_few.signatures[0].clone(); 3];
        assert!(matches!(
            verify_consensus(&duplicated, &set, 500, None),
            Err(TopologyError::TooFewSignatures { valid: 1, .. })
        ));
        // Signers nobody pinned count for nothing.
        let mut strangers = too_few.clone();
        strangers.signatures.extend(
            [[1u8; 32], [2u8; 32]]
                .iter()
                .map(|s| sign_consensus(&too_few.body, s)),
        );
        assert!(matches!(
            verify_consensus(&strangers, &set, 500, None),
            Err(TopologyError::TooFewSignatures { valid: 2, .. })
        ));
        // A forged entry naming a pinned key: a signature by another key, a signature over
        // another body, and garbage.
        let mut forged = too_few.clone();
        let mut by_other = sign_consensus(&too_few.body, &[1u8; 32]);
        by_other.signer = keyfile::hex(&set.keys()[2]);
        let mut other_body = sign_consensus("{}", &seeds[3]);
        other_body.signer = keyfile::hex(&set.keys()[3]);
        forged.signatures.extend([by_other, other_body]);
        assert!(matches!(
            verify_consensus(&forged, &set, 500, None),
            Err(TopologyError::TooFewSignatures { valid: 2, .. })
        ));
        // A body changed after signing has no valid signature left.
        let mut tampered = consensus(&t, &seeds);
        tampered.body = tampered.body.replacen("\"epoch\":5", "\"epoch\":6", 1);
        assert!(matches!(
            verify_consensus(&tampered, &set, 500, None),
            Err(TopologyError::TooFewSignatures { valid: 0, .. })
        ));
        // A topology signature (another domain) is not a consensus signature.
        let signed = sign(&t, DOMAIN_TOPOLOGY, &seeds[0]).unwrap();
        let relabelled = MultiSigned {
            body: signed.body.clone(),
            signatures: vec![AuthoritySignature {
                signer: signed.signer,
                signature: signed.signature,
            }],
        };
        assert!(matches!(
            verify_consensus(&relabelled, &authorities(1).1, 500, None),
            Err(TopologyError::TooFewSignatures { valid: 0, .. })
        ));
    }

    #[test]
    fn held_documents_have_a_bounded_grace() {
        let t = topology(5, 1000);
        assert_eq!(freshness(&t, 999), Freshness::Fresh);
        assert_eq!(freshness(&t, 1000), Freshness::Fresh);
        assert_eq!(freshness(&t, 1001), Freshness::Grace { expired_s: 1 });
        let last = 1000 + limits::CONSENSUS_GRACE_S;
        assert!(matches!(freshness(&t, last), Freshness::Grace { .. }));
        assert!(matches!(freshness(&t, last + 1), Freshness::Expired { .. }));
    }

    #[test]
    fn consensus_checks_after_signatures() {
        let (seeds, set) = authorities(1);
        let fresh = consensus(&topology(5, 1000), &seeds);
        assert!(verify_consensus(&fresh, &set, 500, Some(4)).is_ok());
        assert!(matches!(
            verify_consensus(&fresh, &set, 1001, None),
            Err(TopologyError::Stale { .. })
        ));
        assert!(matches!(
            verify_consensus(&fresh, &set, 500, Some(6)),
            Err(TopologyError::EpochRegressed { epoch: 5, seen: 6 })
        ));
        let future = Topology {
            issued_at_s: 500 + CLOCK_SKEW_S_MAX + 1,
            ..topology(5, 10_000)
        };
        assert!(matches!(
            verify_consensus(&consensus(&future, &seeds), &set, 500, None),
            Err(TopologyError::FromTheFuture { .. })
        ));
        let mut bad_key = topology(5, 1000);
        bad_key.gateways[0].sphinx_key = "zz".into();
        assert!(matches!(
            verify_consensus(&consensus(&bad_key, &seeds), &set, 500, None),
            Err(TopologyError::Malformed(_))
        ));
        let mut huge = fresh;
        huge.body = " ".repeat(SIGNED_BODY_BYTES_MAX + 1);
        assert!(matches!(
            verify_consensus(&huge, &set, 500, None),
            Err(TopologyError::TooLarge(_))
        ));
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
}

//! One epoch of an authority's exchange, free of I/O: the votes it holds (its own and its
//! peers'), the consensus it computed and signed, and the signatures it gathered. The
//! exchange loop feeds it what arrives and asks it what to serve.
//!
//! One vote and one signed document per authority per epoch: a second, different one from
//! the same key is equivocation. Both are kept as evidence, and neither counts (the
//! consensus leaves the equivocator's votes out; its signatures are dropped).

use std::collections::{BTreeMap, BTreeSet};

use sha2::{Digest, Sha256};

use super::consensus::{admission_dissenters, consensus, equivocators, ConsensusError, Previous};
use super::vote::{Refusal, Vote};
use crate::keyfile;
use crate::limits;
use crate::topology::{
    valid_signers, AuthoritySet, AuthoritySignature, MultiSigned, Signed, Topology,
    SIGNED_BODY_BYTES_MAX,
};
use lethe_proto::topology::AdmissionPolicy;

/// What an accepted message did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accepted {
    New,
    /// Already held: nothing changed.
    Repeat,
}

/// Two conflicting messages signed by one authority for one epoch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Evidence {
    pub epoch: u64,
    /// `vote` or `signature`.
    pub kind: &'static str,
    pub authority: String,
    /// The two messages as JSON (for signatures: the two document bodies' SHA-256, hex, and
    /// the signatures).
    pub first: String,
    pub second: String,
}

#[derive(Clone, Debug)]
struct HeldSignature {
    body_hash: [u8; 32],
    signature: AuthoritySignature,
}

/// An epoch's state.
#[derive(Debug)]
pub struct Round {
    epoch: u64,
    /// Per authority: its vote, and a second, different one if it equivocated.
    votes: BTreeMap<[u8; 32], Vec<(Vote, Signed)>>,
    /// The consensus this authority computed and its body (`None` until computed).
    computed: Option<(Topology, String)>,
    /// Documents with at least one valid signature, by SHA-256 of the body.
    bodies: BTreeMap<[u8; 32], String>,
    signatures: BTreeMap<[u8; 32], HeldSignature>,
    /// Authorities that signed two different documents this epoch.
    signature_equivocators: BTreeSet<[u8; 32]>,
    /// Evidence not yet taken by the caller (to store and log).
    evidence: Vec<Evidence>,
}

type BodyHash = [u8; 32];
/// The authorities that signed one body, with their signatures.
type Signers<'a> = Vec<(&'a [u8; 32], &'a HeldSignature)>;

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

impl Round {
    pub fn new(epoch: u64) -> Round {
        Round {
            epoch,
            votes: BTreeMap::new(),
            computed: None,
            bodies: BTreeMap::new(),
            signatures: BTreeMap::new(),
            signature_equivocators: BTreeSet::new(),
            evidence: Vec::new(),
        }
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    fn epoch_check(&self, epoch: u64) -> Result<(), Refusal> {
        let current = self.epoch;
        if epoch < current {
            Err(Refusal::StaleEpoch { epoch, current })
        } else if epoch > current {
            Err(Refusal::FutureEpoch { epoch, current })
        } else {
            Ok(())
        }
    }

    /// A vote opened and checked ([`super::vote::open_vote`]) from `signer`.
    pub fn add_vote(
        &mut self,
        signer: [u8; 32],
        vote: Vote,
        signed: Signed,
    ) -> Result<Accepted, Refusal> {
        self.epoch_check(vote.epoch)?;
        let held = self.votes.entry(signer).or_default();
        if held.iter().any(|(v, _)| v == &vote) {
            return if held.len() > 1 {
                Err(Refusal::Equivocation)
            } else {
                Ok(Accepted::Repeat)
            };
        }
        if let [(_, first)] = held.as_slice() {
            self.evidence.push(Evidence {
                epoch: self.epoch,
                kind: "vote",
                authority: keyfile::hex(&signer),
                first: serde_json::to_string(first).unwrap_or_default(),
                second: serde_json::to_string(&signed).unwrap_or_default(),
            });
            held.push((vote, signed));
            return Err(Refusal::Equivocation);
        }
        if !held.is_empty() {
            // A third one: the evidence is in already; keep nothing more (bounded).
            return Err(Refusal::Equivocation);
        }
        held.push((vote, signed));
        Ok(Accepted::New)
    }

    /// Every vote held, the conflicting ones included (for peers pulling them: they learn of
    /// an equivocation they were not shown).
    pub fn signed_votes(&self) -> Vec<Signed> {
        self.votes
            .values()
            .flatten()
            .map(|(_, signed)| signed.clone())
            .collect()
    }

    /// Whether this exact signed vote is held (same signer, body and signature).
    pub fn holds(&self, signed: &Signed) -> bool {
        self.votes
            .values()
            .flatten()
            .any(|(_, held)| held == signed)
    }

    /// Authorities with a vote held, equivocators included.
    pub fn voters(&self) -> usize {
        self.votes.len()
    }

    /// Every vote held, both of an equivocator's included (the consensus sorts them out).
    fn held_votes(&self) -> Vec<Vote> {
        self.votes
            .values()
            .flatten()
            .map(|(v, _)| v.clone())
            .collect()
    }

    /// Authorities whose votes conflict.
    pub fn vote_equivocators(&self) -> BTreeSet<[u8; 32]> {
        equivocators(self.epoch, &self.held_votes())
    }

    pub fn computed(&self) -> Option<&Topology> {
        self.computed.as_ref().map(|(t, _)| t)
    }

    /// Once computed: the authorities whose vote states another admission policy than the
    /// consensus agreed on (every voter when none was agreed), with the policy each states.
    pub fn admission_dissenters(&self) -> Vec<([u8; 32], AdmissionPolicy)> {
        match self.computed() {
            Some(topology) => {
                admission_dissenters(self.epoch, &self.held_votes(), topology.admission.as_ref())
            }
            None => Vec::new(),
        }
    }

    /// Computes the consensus from the votes held and signs it with `seed` (once per epoch:
    /// a second call returns the first result). Returns the document with this authority's
    /// signature, to send to its peers.
    pub fn compute(
        &mut self,
        set: &AuthoritySet,
        seed: &[u8; 32],
        previous: Previous<'_>,
    ) -> Result<MultiSigned, ConsensusError> {
        let body = match &self.computed {
            Some((_, body)) => body.clone(),
            None => {
                let topology =
                    consensus(self.epoch, set.threshold(), &self.held_votes(), previous)?;
                // Never an empty body: that would be signed as this epoch's document.
                let body = serde_json::to_string(&topology)
                    .map_err(|e| ConsensusError::Encoding(e.to_string()))?;
                self.computed = Some((topology, body.clone()));
                body
            }
        };
        let signature = crate::topology::sign_consensus(&body, seed);
        let own = keyfile::ed25519_public(seed);
        let hash = sha256(body.as_bytes());
        self.bodies.entry(hash).or_insert_with(|| body.clone());
        self.signatures.entry(own).or_insert(HeldSignature {
            body_hash: hash,
            signature: signature.clone(),
        });
        Ok(MultiSigned {
            body,
            signatures: vec![signature],
        })
    }

    /// A document with signatures from peers: each valid signature of a pinned authority over
    /// a body of this epoch is kept; one authority signing two bodies is an equivocator.
    /// Returns the outcome per signature entry.
    pub fn add_signatures(
        &mut self,
        doc: &MultiSigned,
        set: &AuthoritySet,
    ) -> Vec<Result<Accepted, Refusal>> {
        if doc.body.len() > SIGNED_BODY_BYTES_MAX {
            return vec![Err(Refusal::TooLarge)];
        }
        if doc.signatures.len() > limits::AUTHORITIES_MAX {
            return vec![Err(Refusal::TooLarge)];
        }
        let epoch = match serde_json::from_str::<Topology>(&doc.body) {
            Ok(topology) => topology.epoch,
            Err(_) => return vec![Err(Refusal::Malformed("consensus body"))],
        };
        if let Err(refusal) = self.epoch_check(epoch) {
            return vec![Err(refusal)];
        }
        let hash = sha256(doc.body.as_bytes());
        doc.signatures
            .iter()
            .map(|entry| self.add_signature(&doc.body, hash, entry, set))
            .collect()
    }

    fn add_signature(
        &mut self,
        body: &str,
        hash: [u8; 32],
        entry: &AuthoritySignature,
        set: &AuthoritySet,
    ) -> Result<Accepted, Refusal> {
        let signer = keyfile::unhex_32(&entry.signer).ok_or(Refusal::Malformed("signer key"))?;
        if !set.contains(&signer) {
            return Err(Refusal::UnknownSigner);
        }
        let single = MultiSigned {
            body: body.to_string(),
            signatures: vec![entry.clone()],
        };
        if valid_signers(&single, set).is_empty() {
            return Err(Refusal::BadSignature);
        }
        if self.signature_equivocators.contains(&signer) {
            return Err(Refusal::Equivocation);
        }
        match self.signatures.get(&signer) {
            Some(held) if held.body_hash == hash => Ok(Accepted::Repeat),
            Some(held) => {
                self.evidence.push(Evidence {
                    epoch: self.epoch,
                    kind: "signature",
                    authority: keyfile::hex(&signer),
                    first: format!(
                        "{} {}",
                        keyfile::hex(&held.body_hash),
                        held.signature.signature
                    ),
                    second: format!("{} {}", keyfile::hex(&hash), entry.signature),
                });
                self.signatures.remove(&signer);
                self.signature_equivocators.insert(signer);
                Err(Refusal::Equivocation)
            }
            None => {
                if !self.bodies.contains_key(&hash) {
                    if self.bodies.len() >= limits::AUTHORITIES_MAX {
                        return Err(Refusal::TooManyDocuments);
                    }
                    self.bodies.insert(hash, body.to_string());
                }
                self.signatures.insert(
                    signer,
                    HeldSignature {
                        body_hash: hash,
                        signature: entry.clone(),
                    },
                );
                Ok(Accepted::New)
            }
        }
    }

    /// The document of this epoch with at least `set.threshold()` signatures of authorities
    /// that signed nothing else, all of them attached (this authority's own computation
    /// first if two could qualify, which 2f+1 of 3f+1 rules out). `None`: not certified.
    pub fn certified(&self, set: &AuthoritySet) -> Option<MultiSigned> {
        let mut by_body: BTreeMap<[u8; 32], Vec<(&[u8; 32], &HeldSignature)>> = BTreeMap::new();
        for (signer, held) in &self.signatures {
            if set.contains(signer) && !self.signature_equivocators.contains(signer) {
                by_body
                    .entry(held.body_hash)
                    .or_default()
                    .push((signer, held));
            }
        }
        let own_hash = self.computed.as_ref().map(|(_, b)| sha256(b.as_bytes()));
        let mut qualified: Vec<(BodyHash, Signers<'_>)> = by_body
            .into_iter()
            .filter(|(_, signers)| signers.len() >= set.threshold())
            .collect();
        qualified.sort_by_key(|(hash, _)| Some(*hash) != own_hash);
        let (hash, signers) = qualified.into_iter().next()?;
        let body = self.bodies.get(&hash)?.clone();
        Some(MultiSigned {
            body,
            signatures: signers
                .into_iter()
                .map(|(_, h)| h.signature.clone())
                .collect(),
        })
    }

    /// Signatures gathered on this authority's own computation.
    pub fn own_signatures(&self) -> usize {
        let Some(hash) = self.computed.as_ref().map(|(_, b)| sha256(b.as_bytes())) else {
            return 0;
        };
        self.signatures
            .iter()
            .filter(|(signer, held)| {
                held.body_hash == hash && !self.signature_equivocators.contains(*signer)
            })
            .count()
    }

    /// Evidence gathered since the last call.
    pub fn take_evidence(&mut self) -> Vec<Evidence> {
        std::mem::take(&mut self.evidence)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authority::vote::{commit_of, open_vote, reveal_for, DOMAIN_VOTE};
    use crate::topology::{sign, sign_consensus, Role};

    const EPOCH: u64 = 50;

    fn seed(a: u8) -> [u8; 32] {
        [60 + a; 32]
    }

    fn set() -> AuthoritySet {
        AuthoritySet::new((0..4).map(|a| keyfile::ed25519_public(&seed(a))).collect()).unwrap()
    }

    fn signed_vote(a: u8, epoch: u64, extra: Option<u8>) -> ([u8; 32], Vote, Signed) {
        let key = keyfile::ed25519_public(&seed(a));
        let mut nodes: Vec<_> = (1..=4u8)
            .map(|i| {
                lethe_proto::testing::descriptor(
                    &[i; 32],
                    [i; 32],
                    6000 + u16::from(i),
                    Role::Mixnode,
                )
            })
            .collect();
        if let Some(i) = extra {
            nodes.push(lethe_proto::testing::descriptor(
                &[i; 32],
                [i; 32],
                6000 + u16::from(i),
                Role::Mixnode,
            ));
        }
        let vote = Vote {
            epoch,
            authority: keyfile::hex(&key),
            issued_at_s: 10,
            valid_until_s: 40,
            nodes,
            allowed: None,
            layer_period_epochs: 12,
            nodes_per_ip_max: 100,
            commit: keyfile::hex(&commit_of(&key, epoch, &reveal_for(&seed(a), epoch))),
            reveal: None,
        };
        let signed = sign(&vote, DOMAIN_VOTE, &seed(a)).unwrap();
        let set = set();
        let (signer, opened) = open_vote(&signed, |k| set.contains(k)).unwrap();
        assert_eq!(opened, vote);
        (signer, vote, signed)
    }

    fn add(round: &mut Round, a: u8, extra: Option<u8>) -> Result<Accepted, Refusal> {
        let (signer, vote, signed) = signed_vote(a, EPOCH, extra);
        round.add_vote(signer, vote, signed)
    }

    #[test]
    fn votes_once_per_authority_and_epoch() {
        let mut round = Round::new(EPOCH);
        assert_eq!(add(&mut round, 0, None), Ok(Accepted::New));
        assert_eq!(add(&mut round, 0, None), Ok(Accepted::Repeat));
        let (signer, vote, signed) = signed_vote(1, EPOCH - 1, None);
        assert!(matches!(
            round.add_vote(signer, vote, signed),
            Err(Refusal::StaleEpoch { .. })
        ));
        let (signer, vote, signed) = signed_vote(1, EPOCH + 1, None);
        assert!(matches!(
            round.add_vote(signer, vote, signed),
            Err(Refusal::FutureEpoch { .. })
        ));
        // A second, different vote: evidence, and both are out.
        assert_eq!(add(&mut round, 3, None), Ok(Accepted::New));
        assert_eq!(add(&mut round, 3, Some(9)), Err(Refusal::Equivocation));
        assert_eq!(add(&mut round, 3, Some(10)), Err(Refusal::Equivocation));
        assert_eq!(add(&mut round, 3, None), Err(Refusal::Equivocation));
        let evidence = round.take_evidence();
        assert_eq!(evidence.len(), 1);
        assert_eq!(evidence[0].kind, "vote");
        assert_eq!(round.signed_votes().len(), 3);
        let equivocators = round.vote_equivocators();
        assert!(equivocators.contains(&keyfile::ed25519_public(&seed(3))));
        // Open refuses a stranger's vote.
        let stranger = sign(&signed_vote(0, EPOCH, None).1, DOMAIN_VOTE, &[1; 32]).unwrap();
        let set = set();
        assert_eq!(
            open_vote(&stranger, |k| set.contains(k)).map(|_| ()),
            Err(Refusal::UnknownSigner)
        );
    }

    #[test]
    fn a_vote_states_its_allow_list_in_one_spelling() {
        let set = set();
        let (_, mut vote, _) = signed_vote(0, EPOCH, None);
        let open = |vote: &Vote| {
            let signed = sign(vote, DOMAIN_VOTE, &seed(0)).unwrap();
            open_vote(&signed, |k| set.contains(k)).map(|(_, v)| v)
        };
        let (a, b) = (keyfile::hex(&[0xab; 32]), keyfile::hex(&[0xcd; 32]));
        vote.allowed = Some(vec![a.clone(), b.clone()]);
        assert_eq!(open(&vote).unwrap().allowed, vote.allowed);
        for bad in [
            vec![b.clone(), a.clone()],
            vec![a.clone(), a.clone()],
            vec![a.to_uppercase()],
            vec!["zz".to_string()],
        ] {
            vote.allowed = Some(bad);
            assert_eq!(open(&vote), Err(Refusal::Malformed("allow-list")));
        }
        vote.allowed = Some(
            (0..=limits::DIRECTORY_ALLOWED_NODES_MAX as u32)
                .map(|i| {
                    let mut key = [0u8; 32];
                    key[..4].copy_from_slice(&i.to_be_bytes());
                    keyfile::hex(&key)
                })
                .collect(),
        );
        assert_eq!(open(&vote), Err(Refusal::TooLarge));
    }

    /// An authority that computed another document (here it missed a vote; after a restart, it
    /// lacks the previous document) still certifies the one its peers signed, from their
    /// pushed signatures: it serves that document and keeps from it the next epoch.
    #[test]
    fn a_lagging_authority_certifies_the_document_its_peers_signed() {
        let set = set();
        let mut rounds: Vec<Round> = (0..4).map(|_| Round::new(EPOCH)).collect();
        for (index, round) in rounds.iter_mut().enumerate() {
            let voters = if index == 0 { 0..3 } else { 0..4 };
            for a in voters {
                let (key, vote, signed) = signed_vote(a, EPOCH, None);
                round.add_vote(key, vote, signed).unwrap();
            }
        }
        let docs: Vec<MultiSigned> = (0..4)
            .map(|a| {
                rounds[a]
                    .compute(&set, &seed(a as u8), Previous::None)
                    .unwrap()
            })
            .collect();
        assert_ne!(
            docs[0].body, docs[1].body,
            "the lagging computation differs"
        );
        assert!(docs[1..].windows(2).all(|w| w[0].body == w[1].body));
        for doc in &docs[1..] {
            assert_eq!(rounds[0].add_signatures(doc, &set), vec![Ok(Accepted::New)]);
        }
        let certified = rounds[0].certified(&set).unwrap();
        assert_eq!(certified.body, docs[1].body);
        assert_eq!(certified.signatures.len(), 3);
        assert!(crate::topology::verify_consensus(&certified, &set, 20, None).is_ok());
    }

    #[test]
    fn certified_with_threshold_signatures_and_never_two_documents() {
        let set = set();
        let mut rounds: Vec<Round> = (0..4).map(|_| Round::new(EPOCH)).collect();
        for round in &mut rounds {
            for a in 0..3 {
                round
                    .add_vote(
                        signed_vote(a, EPOCH, None).0,
                        signed_vote(a, EPOCH, None).1,
                        signed_vote(a, EPOCH, None).2,
                    )
                    .unwrap();
            }
        }
        let docs: Vec<MultiSigned> = (0..3)
            .map(|a| {
                rounds[a]
                    .compute(&set, &seed(a as u8), Previous::None)
                    .unwrap()
            })
            .collect();
        assert!(docs.windows(2).all(|w| w[0].body == w[1].body));
        assert!(rounds[0].certified(&set).is_none());
        assert_eq!(
            rounds[0].add_signatures(&docs[1], &set),
            vec![Ok(Accepted::New)]
        );
        assert_eq!(
            rounds[0].add_signatures(&docs[1], &set),
            vec![Ok(Accepted::Repeat)]
        );
        assert!(rounds[0].certified(&set).is_none());
        rounds[0].add_signatures(&docs[2], &set);
        let certified = rounds[0].certified(&set).unwrap();
        assert_eq!(certified.signatures.len(), 3);
        assert_eq!(rounds[0].own_signatures(), 3);
        let now = 20;
        assert!(crate::topology::verify_consensus(&certified, &set, now, None).is_ok());
        // Authority 3 signs the real document and a forged one: both its signatures go, the
        // forged document never gets a second signature, the real one stays certified.
        let mut forged: Topology = serde_json::from_str(&docs[0].body).unwrap();
        forged.gateways.clear();
        forged.layers[0].clear();
        let forged_body = serde_json::to_string(&forged).unwrap();
        let real_by_3 = MultiSigned {
            body: docs[0].body.clone(),
            signatures: vec![sign_consensus(&docs[0].body, &seed(3))],
        };
        let forged_by_3 = MultiSigned {
            body: forged_body.clone(),
            signatures: vec![sign_consensus(&forged_body, &seed(3))],
        };
        assert_eq!(
            rounds[0].add_signatures(&real_by_3, &set),
            vec![Ok(Accepted::New)]
        );
        assert_eq!(rounds[0].certified(&set).unwrap().signatures.len(), 4);
        assert_eq!(
            rounds[0].add_signatures(&forged_by_3, &set),
            vec![Err(Refusal::Equivocation)]
        );
        assert_eq!(rounds[0].certified(&set).unwrap().signatures.len(), 3);
        assert_eq!(rounds[0].take_evidence().len(), 1);
        // A stranger's and a broken signature count for nothing.
        let stranger = MultiSigned {
            body: forged_body.clone(),
            signatures: vec![sign_consensus(&forged_body, &[1; 32])],
        };
        assert_eq!(
            rounds[0].add_signatures(&stranger, &set),
            vec![Err(Refusal::UnknownSigner)]
        );
        let mut broken = docs[1].clone();
        broken.body = forged_body;
        assert_eq!(
            rounds[0].add_signatures(&broken, &set),
            vec![Err(Refusal::BadSignature)]
        );
        // A signature of another epoch's document: refused as stale.
        let mut later = Round::new(EPOCH + 1);
        assert!(matches!(
            later.add_signatures(&certified, &set)[0],
            Err(Refusal::StaleEpoch { .. })
        ));
    }
}

//! A voting authority at run time: each epoch (aligned to the clock, so every authority
//! agrees on its number) it votes (its admission policy included), sends its vote to its
//! peers and pulls theirs, computes the consensus halfway through the epoch, signs it, sends
//! its signature, and serves the document once `threshold` authorities signed it. Until
//! then, and whenever an epoch fails, it keeps serving the last certified document and says
//! so (log and metric).
//!
//! Phases of epoch E (length T, from E x T): votes during the first half (pushed until each
//! peer acknowledged, pulled every tick, so a vote shown to one authority reaches all, and
//! so does an equivocation); the consensus at T/2 from the votes held; signatures in the
//! second half (pushed until acknowledged).
//!
//! Peer API (JSON; served by `directory::server`):
//! - `POST /v1/vote`: a [`Signed`] vote (domain [`DOMAIN_VOTE`]) of a pinned authority for the
//!   current epoch. 200 `{"status": "accepted"|"repeat"}`; 400 malformed; 403 not a pinned
//!   key or a bad signature; 409 another epoch, or a second different vote from that key
//!   (equivocation: both kept as evidence, neither used); 413 too large.
//! - `GET /v1/votes`: the votes this authority holds for the current epoch (its own, its
//!   peers', both of an equivocator's), a JSON array of [`Signed`].
//! - `POST /v1/signature`: a [`MultiSigned`] consensus of the current epoch; each signature of a
//!   pinned authority is kept (a second document signed by one key: equivocation). 200
//!   `{"accepted": N, "refused": ["reason", ...]}` if any was kept, else the first refusal's
//!   status as for votes.
//! - `GET /v1/consensus`: the latest certified document with every signature gathered.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use axum::body::Bytes;
use zeroize::Zeroizing;

use super::consensus::Previous;
use super::round::{Accepted, Evidence, Round};
use super::vote::{commit_of, open_vote, reveal_for, Refusal, Vote, DOMAIN_VOTE};
use crate::directory::admission::Admission;
use crate::directory::metrics::AuthorityCounters;
use crate::directory::store::Store;
use crate::keyfile;
use crate::limits;
use crate::topology::{
    sign, AuthoritySet, Descriptor, MultiSigned, Signed, Topology, TopologyError,
};

/// File (in the authority's data dir) listing its peers, `URL=KEY` per line, `#` comments.
pub const PEERS_FILE: &str = "peers";

/// Another authority: where to reach it and the key it signs with (pinned).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub url: String,
    pub key: [u8; 32],
}

/// Parses `URL=KEY` (an http(s) base URL, a hex ed25519 key).
pub fn parse_peer(text: &str) -> Result<Peer, String> {
    let text = text.trim();
    let (url, key) = text
        .rsplit_once('=')
        .ok_or_else(|| format!("peer {text:?}: expected URL=KEY"))?;
    if !(url.starts_with("http://") || url.starts_with("https://"))
        || url.len() > limits::DIRECTORY_URL_BYTES_MAX
    {
        return Err(format!(
            "peer {text:?}: the URL must be http(s)://host:port"
        ));
    }
    let key = keyfile::unhex_32(key)
        .ok_or_else(|| format!("peer {text:?}: the key must be 64 hex digits"))?;
    Ok(Peer {
        url: url.trim_end_matches('/').to_string(),
        key,
    })
}

/// The peers of `--peer` flags and of `DIR/peers` (if present), checked: at most
/// `AUTHORITIES_MAX - 1`, distinct keys, not this authority's own.
pub fn peers(flags: &[String], dir: &Path, own: &[u8; 32]) -> Result<Vec<Peer>, String> {
    let mut out: Vec<Peer> = Vec::new();
    let path = dir.join(PEERS_FILE);
    let file = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(format!("reading {}: {e}", path.display())),
    };
    let lines = file
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty());
    for text in flags.iter().map(String::as_str).chain(lines) {
        let peer = parse_peer(text)?;
        if &peer.key == own {
            return Err(format!("peer {text:?} is this authority's own key"));
        }
        if out.iter().any(|p| p.key == peer.key) {
            return Err(format!("peer key of {text:?} given twice"));
        }
        out.push(peer);
    }
    if out.len() >= limits::AUTHORITIES_MAX {
        return Err(format!(
            "{} peers: at most {} authorities in all",
            out.len(),
            limits::AUTHORITIES_MAX
        ));
    }
    Ok(out)
}

/// The document being served.
#[derive(Clone, Debug)]
pub struct Served {
    pub epoch: u64,
    pub signatures: usize,
    pub nodes: usize,
    pub json: Bytes,
}

/// What the metrics and `/health` show.
#[derive(Clone, Debug, Default)]
pub struct Status {
    pub epoch: u64,
    pub authorities: usize,
    pub threshold: usize,
    pub voters: usize,
    pub own_signatures: usize,
    pub served_epoch: u64,
    pub served_signatures: usize,
    pub served_nodes: usize,
    pub certified_current: bool,
}

struct State {
    round: Round,
    /// The consensus of the epoch before `round`'s (certified, else this authority's own)
    /// and whether it was certified (only then are its layers kept).
    previous: Option<(Topology, bool)>,
    served: Option<Served>,
    own_vote: Option<Bytes>,
    own_signature: Option<Bytes>,
    vote_acked: Vec<bool>,
    signature_acked: Vec<bool>,
    /// This epoch's outcome has been counted and logged.
    reported: bool,
    compute_failed: bool,
    /// This epoch's admission disagreements have been counted and logged.
    admission_reported: bool,
}

pub struct Authority {
    seed: Zeroizing<[u8; 32]>,
    key: [u8; 32],
    set: AuthoritySet,
    peers: Vec<Peer>,
    epoch_s: u64,
    /// The allow-list this authority's votes state (`None`: open).
    allowed: Option<Vec<String>>,
    /// The layer period and the cap of nodes per IP its votes state.
    layer_period_epochs: u64,
    nodes_per_ip_max: u64,
    state: Mutex<State>,
    store: Mutex<Store>,
    pub counters: AuthorityCounters,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Authority {
    /// An authority with `peers`, its SQLite `store` (evidence, the last certified
    /// document), and what its votes state: the allow-list and the cap of nodes per IP it
    /// admits nodes by (`admission`), the layer period it proposes (`layer_period_s`, in
    /// whole epochs rounded up).
    pub fn new(
        seed: Zeroizing<[u8; 32]>,
        peers: Vec<Peer>,
        epoch_s: u64,
        layer_period_s: u64,
        admission: &Admission,
        store: Store,
    ) -> anyhow::Result<Authority> {
        let key = keyfile::ed25519_public(&seed);
        let set = AuthoritySet::new(
            std::iter::once(key)
                .chain(peers.iter().map(|p| p.key))
                .collect(),
        )
        .map_err(|e| anyhow::anyhow!("authority set: {e}"))?;
        let served = store.load_consensus()?.and_then(|json| {
            let doc: MultiSigned = serde_json::from_str(&json).ok()?;
            let topology: Topology = serde_json::from_str(&doc.body).ok()?;
            Some(Served {
                epoch: topology.epoch,
                signatures: doc.signatures.len(),
                nodes: node_count(&topology),
                json: Bytes::from(json),
            })
        });
        let previous = served
            .as_ref()
            .and_then(|s| serde_json::from_slice::<MultiSigned>(&s.json).ok())
            .and_then(|doc| serde_json::from_str::<Topology>(&doc.body).ok())
            .map(|t| (t, true));
        let peer_count = peers.len();
        Ok(Authority {
            seed,
            key,
            set,
            peers,
            epoch_s,
            allowed: admission
                .allowed
                .as_ref()
                .map(|list| list.iter().cloned().collect()),
            layer_period_epochs: layer_period_s.div_ceil(epoch_s.max(1)).max(1),
            nodes_per_ip_max: u64::try_from(admission.nodes_per_ip_max)
                .unwrap_or(u64::MAX)
                .max(1),
            state: Mutex::new(State {
                round: Round::new(0),
                previous,
                served,
                own_vote: None,
                own_signature: None,
                vote_acked: vec![false; peer_count],
                signature_acked: vec![false; peer_count],
                reported: true,
                compute_failed: false,
                admission_reported: true,
            }),
            store: Mutex::new(store),
            counters: AuthorityCounters::default(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Plain data every mutation leaves consistent: carry on after a panic elsewhere.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn key(&self) -> [u8; 32] {
        self.key
    }

    pub fn set(&self) -> &AuthoritySet {
        &self.set
    }

    pub fn served(&self) -> Option<Served> {
        self.lock().served.clone()
    }

    pub fn status(&self) -> Status {
        let state = self.lock();
        let served = state.served.as_ref();
        Status {
            epoch: state.round.epoch(),
            authorities: self.set.len(),
            threshold: self.set.threshold(),
            voters: state.round.voters(),
            own_signatures: state.round.own_signatures(),
            served_epoch: served.map_or(0, |s| s.epoch),
            served_signatures: served.map_or(0, |s| s.signatures),
            served_nodes: served.map_or(0, |s| s.nodes),
            certified_current: served.is_some_and(|s| s.epoch == state.round.epoch()),
        }
    }

    /// The votes held for the current epoch (`GET /v1/votes`).
    pub fn signed_votes(&self) -> Vec<Signed> {
        self.lock().round.signed_votes()
    }

    /// A vote pushed by a peer; counted.
    pub fn accept_vote(&self, signed: &Signed) -> Result<Accepted, Refusal> {
        let outcome = self.take_vote(signed);
        self.counters.count("vote", &outcome);
        outcome
    }

    /// A vote from a peer, pushed or pulled (not counted).
    fn take_vote(&self, signed: &Signed) -> Result<Accepted, Refusal> {
        // Pulled votes are mostly ones held already: no signature check for those.
        if self.lock().round.holds(signed) {
            return Ok(Accepted::Repeat);
        }
        let (signer, vote) = open_vote(signed, |k| self.set.contains(k))?;
        let mut state = self.lock();
        let outcome = state.round.add_vote(signer, vote, signed.clone());
        let evidence = state.round.take_evidence();
        drop(state);
        self.keep_evidence(evidence);
        outcome
    }

    /// Signatures from a peer; counted. Serves the document once certified.
    pub fn accept_signatures(&self, doc: &MultiSigned) -> Vec<Result<Accepted, Refusal>> {
        let mut state = self.lock();
        let outcomes = state.round.add_signatures(doc, &self.set);
        let evidence = state.round.take_evidence();
        self.refresh_served(&mut state);
        drop(state);
        self.keep_evidence(evidence);
        for outcome in &outcomes {
            self.counters.count("signature", outcome);
        }
        outcomes
    }

    fn keep_evidence(&self, evidence: Vec<Evidence>) {
        for e in evidence {
            let what = if e.kind == "vote" {
                "votes"
            } else {
                "documents"
            };
            tracing::warn!(
                authority = %e.authority,
                epoch = e.epoch,
                kind = e.kind,
                "equivocation: two different {what} signed by one authority for one epoch (kept as evidence; neither is used)"
            );
            self.counters.equivocation(e.kind);
            let store = self.store.lock().unwrap_or_else(|e| e.into_inner());
            if let Err(error) = store.save_evidence(&e) {
                tracing::error!(%error, "storing equivocation evidence failed");
            }
        }
    }

    /// Serves the current round's document if it is certified (and better than the one served).
    fn refresh_served(&self, state: &mut State) {
        let Some(doc) = state.round.certified(&self.set) else {
            return;
        };
        let epoch = state.round.epoch();
        let served = state.served.as_ref();
        if served.is_some_and(|s| {
            s.epoch > epoch || (s.epoch == epoch && s.signatures == doc.signatures.len())
        }) {
            return;
        }
        let first = served.is_none_or(|s| s.epoch < epoch);
        let Ok(json) = serde_json::to_string(&doc) else {
            return;
        };
        let nodes = serde_json::from_str::<Topology>(&doc.body).map_or(0, |t| node_count(&t));
        if first {
            self.counters.certified();
            tracing::info!(
                epoch,
                signatures = doc.signatures.len(),
                threshold = self.set.threshold(),
                nodes,
                "consensus certified"
            );
            state.reported = true;
        }
        {
            let store = self.store.lock().unwrap_or_else(|e| e.into_inner());
            if let Err(error) = store.save_consensus(&json) {
                tracing::error!(%error, "storing the consensus failed");
            }
        }
        state.served = Some(Served {
            epoch,
            signatures: doc.signatures.len(),
            nodes,
            json: Bytes::from(json),
        });
    }

    /// Moves to `epoch`: reports the last one's failure if it was not certified, keeps its
    /// consensus for the commitments, and votes.
    fn roll(&self, state: &mut State, epoch: u64, alive: Vec<Descriptor>) {
        let old = state.round.epoch();
        if !state.reported {
            let reason = if state.round.computed().is_none() {
                "too_few_votes"
            } else {
                "too_few_signatures"
            };
            self.counters.failed(reason);
            let served = state.served.as_ref().map_or(0, |s| s.epoch);
            tracing::warn!(
                epoch = old,
                reason,
                voters = state.round.voters(),
                signatures = state.round.own_signatures(),
                threshold = self.set.threshold(),
                serving_epoch = served,
                "consensus not certified; serving the previous document"
            );
        }
        let certified = state
            .served
            .as_ref()
            .filter(|s| s.epoch == old)
            .and_then(|s| serde_json::from_slice::<MultiSigned>(&s.json).ok())
            .and_then(|doc| serde_json::from_str::<Topology>(&doc.body).ok());
        if old.checked_add(1) == Some(epoch) {
            state.previous = certified
                .map(|t| (t, true))
                .or_else(|| state.round.computed().cloned().map(|t| (t, false)));
        } else if state
            .previous
            .as_ref()
            .and_then(|(p, _)| p.epoch.checked_add(1))
            != Some(epoch)
        {
            state.previous = None;
        }
        state.round = Round::new(epoch);
        state.reported = false;
        state.compute_failed = false;
        state.admission_reported = false;
        state.own_signature = None;
        state.vote_acked.iter_mut().for_each(|a| *a = false);
        state.signature_acked.iter_mut().for_each(|a| *a = false);
        let issued_at_s = epoch.saturating_mul(self.epoch_s);
        let vote = Vote {
            epoch,
            authority: keyfile::hex(&self.key),
            issued_at_s,
            valid_until_s: issued_at_s.saturating_add(
                self.epoch_s
                    .saturating_mul(limits::DIRECTORY_VALIDITY_EPOCHS),
            ),
            nodes: alive,
            allowed: self.allowed.clone(),
            layer_period_epochs: self.layer_period_epochs,
            nodes_per_ip_max: self.nodes_per_ip_max,
            commit: keyfile::hex(&commit_of(&self.key, epoch, &reveal_for(&self.seed, epoch))),
            reveal: epoch
                .checked_sub(1)
                .map(|previous| keyfile::hex(&reveal_for(&self.seed, previous))),
        };
        let signed = sign(&vote, DOMAIN_VOTE, &self.seed).and_then(|signed| {
            serde_json::to_string(&signed)
                .map(|json| (signed, json))
                .map_err(|_| TopologyError::Malformed("vote encoding"))
        });
        state.own_vote = match signed {
            Ok((signed, json)) => {
                if let Err(e) = state.round.add_vote(self.key, vote, signed) {
                    tracing::error!(error = %e, "own vote refused");
                }
                Some(Bytes::from(json))
            }
            Err(e) => {
                // No vote this epoch rather than an empty one pushed to the peers.
                tracing::error!(error = %e, "signing the vote failed");
                None
            }
        };
    }

    /// Computes and signs the consensus (once it can).
    fn compute(&self, state: &mut State) {
        if state.own_signature.is_some() {
            return;
        }
        let previous = state.previous.clone();
        let previous = match &previous {
            None => Previous::None,
            Some((t, true)) => Previous::Certified(t),
            Some((t, false)) => Previous::Computed(t),
        };
        match state.round.compute(&self.set, &self.seed, previous) {
            Ok(doc) => {
                state.own_signature = serde_json::to_string(&doc).ok().map(Bytes::from);
                if !state.admission_reported {
                    state.admission_reported = true;
                    self.report_admission(&state.round);
                }
                self.refresh_served(state);
            }
            Err(e) => {
                if !state.compute_failed {
                    tracing::warn!(epoch = state.round.epoch(), error = %e, "no consensus computed");
                    state.compute_failed = true;
                }
            }
        }
    }

    /// Counts and logs the votes whose admission policy differs from the agreed one, or that
    /// none was agreed: operators then compare their `--allowed-nodes` lists.
    fn report_admission(&self, round: &Round) {
        let epoch = round.epoch();
        let agreed = round.computed().and_then(|t| t.admission.clone());
        let dissenters = round.admission_dissenters();
        match &agreed {
            Some(agreed) => {
                for (authority, policy) in &dissenters {
                    self.counters.admission_disagreement();
                    let own = *authority == self.key;
                    tracing::warn!(
                        epoch,
                        authority = %keyfile::hex(authority),
                        stated = %policy,
                        %agreed,
                        own,
                        "admission policy disagreement: this vote's policy is not the one the \
                         others agreed on (its nodes count only if the agreed policy admits them)"
                    );
                }
            }
            None => {
                self.counters.admission_unagreed();
                let stated: Vec<String> = dissenters
                    .iter()
                    .map(|(authority, policy)| format!("{}: {policy}", keyfile::hex(authority)))
                    .collect();
                tracing::warn!(
                    epoch,
                    threshold = self.set.threshold(),
                    stated = %stated.join(", "),
                    "no admission policy agreed by the threshold of votes; nodes are in on the \
                     count of votes alone this epoch"
                );
            }
        }
    }

    /// The exchange, forever: `alive` lists the nodes this authority admitted and heard from.
    pub async fn run(self: std::sync::Arc<Self>, alive: impl Fn() -> Vec<Descriptor>) {
        let epoch_ms = self.epoch_s.saturating_mul(1000).max(1);
        let tick = Duration::from_millis(
            (epoch_ms / 20).clamp(limits::AUTHORITY_TICK_MS_MIN, limits::AUTHORITY_TICK_MS_MAX),
        );
        let timeout = Duration::from_millis((epoch_ms / 4).clamp(
            limits::AUTHORITY_TICK_MS_MIN,
            limits::DIRECTORY_REQUEST_TIMEOUT_MS,
        ));
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        loop {
            let now = now_ms();
            let epoch = now / epoch_ms;
            let voting = now % epoch_ms < epoch_ms / 2;
            // The registry's lock is taken outside this state's.
            let nodes = (self.lock().round.epoch() < epoch).then(&alive);
            let (pushes, path) = {
                let mut state = self.lock();
                if let Some(nodes) = nodes.filter(|_| epoch > state.round.epoch()) {
                    self.roll(&mut state, epoch, nodes);
                }
                if !voting {
                    self.compute(&mut state);
                }
                let (body, acked, path) = if voting {
                    (&state.own_vote, &state.vote_acked, "/v1/vote")
                } else {
                    (
                        &state.own_signature,
                        &state.signature_acked,
                        "/v1/signature",
                    )
                };
                let pushes: Vec<(usize, Bytes)> = match body {
                    Some(body) => acked
                        .iter()
                        .enumerate()
                        .filter(|(_, acked)| !**acked)
                        .map(|(index, _)| (index, body.clone()))
                        .collect(),
                    None => Vec::new(),
                };
                (pushes, path)
            };
            let sent = futures_util::future::join_all(pushes.into_iter().map(|(index, body)| {
                let url = format!("{}{path}", self.peers[index].url);
                let http = &http;
                async move {
                    let ok = http
                        .post(&url)
                        .header("content-type", "application/json")
                        .body(body)
                        .send()
                        .await
                        .is_ok_and(|r| r.status().is_success());
                    (index, ok)
                }
            }))
            .await;
            {
                let mut state = self.lock();
                if state.round.epoch() == epoch {
                    let acked = if voting {
                        &mut state.vote_acked
                    } else {
                        &mut state.signature_acked
                    };
                    for (index, ok) in sent {
                        if let Some(a) = acked.get_mut(index) {
                            *a |= ok;
                        }
                    }
                }
            }
            if voting {
                self.pull_votes(&http).await;
            }
            tokio::time::sleep(tick).await;
        }
    }

    /// Fetches every peer's held votes and takes the ones it lacks (repeats are not counted).
    async fn pull_votes(&self, http: &reqwest::Client) {
        let fetched =
            futures_util::future::join_all(
                self.peers.iter().map(|peer| {
                    let url = format!("{}/v1/votes", peer.url);
                    async move {
                        get_bounded(http, &url, limits::AUTHORITY_VOTES_RESPONSE_BYTES_MAX).await
                    }
                }),
            )
            .await;
        for body in fetched.into_iter().flatten() {
            let Ok(votes) = serde_json::from_slice::<Vec<Signed>>(&body) else {
                continue;
            };
            for signed in votes.iter().take(2 * limits::AUTHORITIES_MAX) {
                let outcome = self.take_vote(signed);
                if outcome != Ok(Accepted::Repeat) {
                    self.counters.count("vote", &outcome);
                }
            }
        }
    }
}

fn node_count(topology: &Topology) -> usize {
    topology.layers.iter().map(Vec::len).sum::<usize>() + topology.gateways.len()
}

/// A GET whose body is read up to `max` bytes; `None` on any failure.
async fn get_bounded(http: &reqwest::Client, url: &str, max: usize) -> Option<Vec<u8>> {
    let mut response = http.get(url).send().await.ok()?;
    if !response.status().is_success() {
        return None;
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.ok()? {
        if body.len() + chunk.len() > max {
            return None;
        }
        body.extend_from_slice(&chunk);
    }
    Some(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_parse_and_refusals() {
        let key = keyfile::hex(&[1u8; 32]);
        let own = [2u8; 32];
        let dir = std::env::temp_dir().join(format!("lethe-peers-{}", std::process::id()));
        let ok = peers(&[format!("http://127.0.0.1:1/={key}")], &dir, &own).unwrap();
        assert_eq!(
            ok,
            vec![Peer {
                url: "http://127.0.0.1:1".into(),
                key: [1u8; 32]
            }]
        );
        for bad in [
            "127.0.0.1:1=00".to_string(),
            format!("ftp://x={key}"),
            "http://x".to_string(),
            format!("http://x={}", keyfile::hex(&own)),
        ] {
            assert!(
                peers(std::slice::from_ref(&bad), &dir, &own).is_err(),
                "{bad}"
            );
        }
        let twice = vec![format!("http://a={key}"), format!("http://b={key}")];
        assert!(peers(&twice, &dir, &own).is_err());
    }
}

//! `lethe authority init|run` (also `lethe directory ...`): the directory service, alone
//! (n = 1: it signs what it publishes) or one of n voting authorities (`--peer URL=KEY` or the
//! `peers` file: it votes, and serves the consensus 2f+1 of them signed; see
//! `crate::authority::exchange`, whose peer endpoints `/v1/vote`, `/v1/votes` and
//! `/v1/signature` it serves).
//!
//! API (JSON bodies; errors are `{"error": "<one line>"}` with a 4xx/5xx status):
//! - `GET  /v1/key`: 200 `{"key": "<hex ed25519 public key>"}`.
//! - `GET  /v1/topology`: 200, the latest signed topology ([`Signed`], domain
//!   `DOMAIN_TOPOLOGY`), exactly as published.
//! - `POST /v1/register`: body a [`Signed`] descriptor (domain `DOMAIN_DESCRIPTOR`), signed by
//!   the identity it names. 200 `{"status": "registered"|"updated"|"refreshed", "layer":
//!   0|1|2|null, "epoch": N, "heartbeat_timeout_s": T}` (`layer` is 0-based; null for
//!   gateways; `epoch` is the latest published one, the node appears in a later one; a node
//!   not heard from for `T` s is dropped).
//!   400 malformed JSON or descriptor; 403 bad signature, signer not the named identity, or
//!   identity not on the allow-list (`--allowed-nodes`); 409 older than the registered
//!   descriptor, a replay (signed before something the node already sent, or after it left),
//!   mix address held by another node (registered, or deregistered less than the heartbeat
//!   timeout ago), the per-IP or per-source cap reached; 413 body over
//!   [`limits::DIRECTORY_REQUEST_BODY_BYTES_MAX`]; 422 `issued_at_s` outside the registration window (the
//!   clock skew, narrowed to the heartbeat timeout), unusable mix address (port 0, or not
//!   globally routable without `--private-network`), a Sphinx key of small order, a bad
//!   family, gateway without `client_url`, over-long URL; 429 rate limited; 503 directory
//!   full ([`DIRECTORY_NODES_MAX`](limits::DIRECTORY_NODES_MAX)).
//! - `POST /v1/heartbeat`: body a [`Signed`] heartbeat (domain `DOMAIN_HEARTBEAT`). 200
//!   `{"status": "ok"|"repeat"}`; 404 unknown identity (register again); 409 older than one
//!   already accepted; 422 `sent_at_s` outside the clock skew; 400/403/413/429 as above.
//! - `POST /v1/deregister`: body a [`Signed`] deregistration (domain `DOMAIN_DEREGISTER`,
//!   `{"identity", "sent_at_s"}`, signed by that identity): the node leaves at once (the next
//!   topology, published within [`limits::DIRECTORY_PUBLISH_INTERVAL_MS_MIN`], no longer lists it). 200
//!   `{"status": "deregistered", "epoch": N}`; 404 unknown identity (nothing is created for
//!   it); 409 older than the node's last registration or heartbeat (a replay); 422
//!   `sent_at_s` outside the clock skew; 400/403/413/429 as above. A registration issued no
//!   later than an accepted deregistration is refused with 409 for the clock skew after it,
//!   so a captured registration cannot bring the node back.
//! - `GET  /v1/consensus`: 200, the consensus document (`topology::MultiSigned`, domain
//!   `DOMAIN_CONSENSUS`): alone, the latest topology with this directory's one signature; as
//!   one of n authorities, the latest document at least 2f+1 of them signed, with every
//!   signature gathered (an older one while the current epoch is not certified); 503 before
//!   the first.
//! - `GET  /metrics`: Prometheus text (registrations, heartbeats, refusals by reason, nodes by
//!   layer, topology epoch, requests by endpoint and status, build and process series).
//! - `GET  /health`: 200 `{"status": "ok", "epoch", "nodes", "layers": [n1, n2, n3],
//!   "gateways", "uptime_secs"}`.
//!
//! Publication (alone): a new epoch at every epoch boundary (`--epoch-s` after the previous
//! publication) and, within [`limits::DIRECTORY_PUBLISH_INTERVAL_MS_MIN`] of it, whenever membership changes (a
//! join, a changed descriptor, a drop). Each topology is valid for three epoch lengths. As one
//! of n authorities: one consensus per clock-aligned epoch, its layers a function of the
//! shared random value; `/v1/topology` is then this authority's own view, kept only for
//! consumers that do not verify consensus documents yet.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use zeroize::Zeroizing;

use super::admission::{read_allow_list, Admission};
use super::metrics::{self, Counters, Membership, ENDPOINTS};
use super::registry::{Registered, Registry, RegistryError};
use super::store::{Store, StoredTopology, DB_FILE};
use crate::authority::exchange::{self, Authority, PEERS_FILE};
use crate::authority::vote::Refusal;
use crate::issuer::ratelimit::{Rate, RateLimiter};
use crate::keyfile;
use crate::limits::{
    self, DIRECTORY_NODES_PER_IP_MAX_DEFAULT, DIRECTORY_NODES_PER_SOURCE_MAX_DEFAULT,
};
use crate::topology::{
    now_s, open_deregistration, open_descriptor, open_heartbeat, sign, sign_consensus, MultiSigned,
    Signed, Topology, TopologyError, DOMAIN_TOPOLOGY, SIGNED_BODY_BYTES_MAX,
};

/// File (in the directory's data dir) holding the ed25519 identity seed; `.pub` beside it.
pub const IDENTITY_FILE: &str = "ed25519_identity";

/// Run the directory.
#[derive(clap::Args, Debug, Clone)]
pub struct DirectoryRunArgs {
    /// Data dir written by `directory init` (identity key; the SQLite state goes there too).
    #[arg(long, env = "LETHE_DIR")]
    pub dir: PathBuf,
    /// Address to listen on; port 0 picks a free one. Printed as `listen=ADDR` on stdout.
    #[arg(long, env = "LETHE_DIRECTORY_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Epoch length in seconds: a topology is re-published at least this often and is valid
    /// for three epochs (Nym: 3600). Membership changes publish sooner.
    #[arg(long, env = "LETHE_EPOCH_S", default_value_t = 3600,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub epoch_s: u64,
    /// Nodes not heard from (registration or heartbeat) for this long are dropped from the
    /// next topology. Nodes heartbeat every 10 s.
    #[arg(long, env = "LETHE_HEARTBEAT_TIMEOUT_S", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub heartbeat_timeout_s: u64,
    /// A test or private network: accept loopback, private (RFC 1918), link-local and
    /// unique-local mix addresses, and lift the per-IP and per-source caps unless they are
    /// given. Without it only globally routable addresses are admitted.
    #[arg(long, env = "LETHE_DIRECTORY_PRIVATE_NETWORK")]
    pub private_network: bool,
    /// Most nodes with mix addresses on one IP (default 2; unlimited on a private network).
    #[arg(long, env = "LETHE_DIRECTORY_NODES_PER_IP_MAX",
          value_parser = clap::value_parser!(u64).range(1..=limits::DIRECTORY_NODES_MAX as u64))]
    pub nodes_per_ip_max: Option<u64>,
    /// Most nodes registered from one source IP (default 8; unlimited on a private network).
    #[arg(long, env = "LETHE_DIRECTORY_NODES_PER_SOURCE_MAX",
          value_parser = clap::value_parser!(u64).range(1..=limits::DIRECTORY_NODES_MAX as u64))]
    pub nodes_per_source_max: Option<u64>,
    /// File of node identities (hex ed25519 keys, one per line, `#` comments) allowed to
    /// register; without it the directory is open to any node. Voting authorities state it
    /// in their votes, and a node is in the consensus only under the policy 2f+1 of them
    /// state: give every authority the same file.
    #[arg(long, env = "LETHE_DIRECTORY_ALLOWED_NODES")]
    pub allowed_nodes: Option<PathBuf>,
    /// A peer authority, `URL=KEY` (its base URL and its pinned ed25519 key, hex);
    /// repeatable, and read from the `peers` file in --dir too. With none, this directory
    /// is the only authority (n = 1). Every authority must list all the others, with one
    /// --epoch-s.
    #[arg(long = "peer", env = "LETHE_AUTHORITY_PEERS", value_delimiter = ',')]
    pub peers: Vec<String>,
    /// Voting authorities: how long the layers are kept between full redraws, seconds
    /// (stated in the votes in whole epochs; the consensus takes the median: give every
    /// authority the same value). Nodes that leave free their place for newcomers meanwhile.
    #[arg(long, env = "LETHE_LAYER_PERIOD_S", default_value_t = limits::LAYER_PERIOD_S_DEFAULT,
          value_parser = clap::value_parser!(u64).range(1..=limits::LAYER_PERIOD_S_MAX))]
    pub layer_period_s: u64,
}

impl DirectoryRunArgs {
    /// The admission policy these flags describe (reads the allow-list).
    pub fn admission(&self) -> Result<Admission, String> {
        let cap = |given: Option<u64>, default: usize| match given {
            Some(max) => usize::try_from(max).unwrap_or(limits::DIRECTORY_NODES_MAX),
            None if self.private_network => limits::DIRECTORY_NODES_MAX,
            None => default,
        };
        Ok(Admission {
            private_addresses: self.private_network,
            nodes_per_ip_max: cap(self.nodes_per_ip_max, DIRECTORY_NODES_PER_IP_MAX_DEFAULT),
            nodes_per_source_max: cap(
                self.nodes_per_source_max,
                DIRECTORY_NODES_PER_SOURCE_MAX_DEFAULT,
            ),
            heartbeat_timeout_ms: self.heartbeat_timeout_s.saturating_mul(1000),
            allowed: self
                .allowed_nodes
                .as_deref()
                .map(read_allow_list)
                .transpose()?,
        })
    }
}

/// `lethe authority init` (or `directory init`): writes the identity seed (0600) in a 0700
/// dir, and a `peers` file to list the other authorities in; prints `key=HEX`.
pub fn init(dir: &Path) -> Result<(), String> {
    keyfile::create_private_dir(dir)?;
    let seed = keyfile::random_32()?;
    let public = keyfile::ed25519_public(&seed);
    keyfile::write_key_pair(&dir.join(IDENTITY_FILE), &seed, &public)?;
    keyfile::write_new(
        &dir.join(PEERS_FILE),
        b"# The other authorities, one per line: URL=KEY (http://host:port=<64 hex digits>).\n\
          # None: this directory is the only authority.\n",
        0o644,
    )?;
    println!("key={}", keyfile::hex(&public));
    Ok(())
}

/// The latest publication, ready to serve.
#[derive(Clone)]
struct Published {
    epoch: u64,
    issued_at_s: u64,
    json: Bytes,
}

struct Inner {
    registry: Registry,
    store: Store,
    /// Membership changed since the last publication.
    dirty: bool,
}

struct Directory {
    seed: Zeroizing<[u8; 32]>,
    key_hex: String,
    epoch_s: u64,
    timeout_ms: u64,
    inner: Mutex<Inner>,
    published: RwLock<Published>,
    changed: tokio::sync::Notify,
    limiter: RateLimiter,
    started: Instant,
    counters: Counters,
    requests: crate::prometheus::RequestCounts,
    /// One of n voting authorities (`None`: alone).
    authority: Option<Arc<Authority>>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Directory {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A poisoned lock means a request panicked mid-update; the state is plain data that
        // every mutation leaves consistent, so carry on.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn published(&self) -> Published {
        self.published
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Signs and stores a new epoch from the current membership.
    fn publish(&self, inner: &mut Inner) -> anyhow::Result<Published> {
        let previous = self.published();
        let epoch = previous.epoch.saturating_add(1);
        let issued_at_s = now_s();
        let valid_until_s = issued_at_s.saturating_add(
            self.epoch_s
                .saturating_mul(limits::DIRECTORY_VALIDITY_EPOCHS),
        );
        let topology = inner.registry.topology(epoch, issued_at_s, valid_until_s);
        let signed = sign(&topology, DOMAIN_TOPOLOGY, &self.seed)?;
        anyhow::ensure!(
            signed.body.len() <= SIGNED_BODY_BYTES_MAX,
            "topology of {} bytes exceeds the {SIGNED_BODY_BYTES_MAX}-byte limit",
            signed.body.len()
        );
        let json = serde_json::to_string(&signed)?;
        inner.store.save_topology(&StoredTopology {
            epoch,
            issued_at_s,
            signed_json: json.clone(),
        })?;
        inner.dirty = false;
        let published = Published {
            epoch,
            issued_at_s,
            json: Bytes::from(json),
        };
        *self.published.write().unwrap_or_else(|e| e.into_inner()) = published.clone();
        // Mixnodes per layer, layer 1 first: `2/2/2`.
        let layers = topology
            .layers
            .iter()
            .map(|l| l.len().to_string())
            .collect::<Vec<_>>()
            .join("/");
        tracing::info!(
            epoch,
            layers = %layers,
            gateways = topology.gateways.len(),
            valid_until_s,
            "published topology"
        );
        Ok(published)
    }

    /// Drops silent nodes; persists the change.
    fn sweep(&self, inner: &mut Inner) {
        let (dropped, moved) = inner.registry.expire(now_ms());
        if dropped.is_empty() {
            return;
        }
        for identity in &dropped {
            tracing::info!(%identity, "dropped node: no heartbeat");
        }
        for identity in &moved {
            tracing::info!(%identity, "moved node to rebalance layers");
        }
        for _ in &dropped {
            metrics::add(&self.counters.nodes_expired);
        }
        let changed: Vec<String> = dropped.into_iter().chain(moved).collect();
        if let Err(e) = inner.store.save_nodes(&inner.registry, &changed) {
            tracing::error!(error = %e, "storing dropped and moved nodes failed");
        }
        inner.dirty = true;
    }
}

/// `lethe directory run`, until SIGINT or SIGTERM.
pub fn run(args: &DirectoryRunArgs) -> anyhow::Result<()> {
    // Before anything is read or written: a second directory process on this data dir stops
    // here. Held until `run` returns, i.e. for the process's life.
    crate::prometheus::mark_start();
    let _dir_lock =
        crate::lock::NodeLocks::claim(&args.dir, "directory").map_err(anyhow::Error::msg)?;
    let seed = keyfile::read_private(&args.dir.join(IDENTITY_FILE))
        .map_err(|e| anyhow::anyhow!("{e} (run `lethe directory init` first)"))?;
    let public = keyfile::ed25519_public(&seed);
    let db = args.dir.join(DB_FILE);
    let store = Store::open(&db).with_context(|| format!("opening {}", db.display()))?;
    let (entries, skipped, stored) = store
        .load()
        .with_context(|| format!("reading {}", db.display()))?;
    for problem in &skipped {
        tracing::warn!("ignoring stored node {problem}");
    }
    let admission = args.admission().map_err(anyhow::Error::msg)?;
    let peers = exchange::peers(&args.peers, &args.dir, &public).map_err(anyhow::Error::msg)?;
    let authority = if peers.is_empty() {
        None
    } else {
        let own = Store::open(&db).with_context(|| format!("opening {}", db.display()))?;
        Some(Arc::new(Authority::new(
            seed.clone(),
            peers,
            args.epoch_s,
            args.layer_period_s,
            &admission,
            own,
        )?))
    };
    // Operators of several authorities compare this line: their votes must agree on it.
    tracing::info!(admission = %admission.policy(), "admission policy");
    let (mut registry, repaired, refused) = Registry::from_entries(admission, entries);
    for (identity, e) in &refused {
        tracing::warn!(%identity, error = %e, "dropping stored node: no longer admitted");
    }
    // Nodes could not heartbeat while the directory was down: give each a full timeout.
    registry.touch_all(now_ms());
    let mut store = store;
    let all: Vec<String> = registry
        .entries()
        .map(|e| e.descriptor.identity.clone())
        .chain(refused.iter().map(|(identity, _)| identity.clone()))
        .collect();
    store.save_nodes(&registry, &all)?;
    let published = match &stored {
        Some(s) => Published {
            epoch: s.epoch,
            issued_at_s: s.issued_at_s,
            json: Bytes::from(s.signed_json.clone()),
        },
        None => Published {
            epoch: 0,
            issued_at_s: 0,
            json: Bytes::new(),
        },
    };
    // Republish at once unless the stored topology is current and matches the membership.
    let matches = stored.as_ref().is_some_and(|s| {
        serde_json::from_str::<Signed>(&s.signed_json)
            .ok()
            .and_then(|signed| signed.open::<Topology>(DOMAIN_TOPOLOGY, Some(&public)).ok())
            .is_some_and(|(_, t)| {
                let now = registry.topology(t.epoch, t.issued_at_s, t.valid_until_s);
                t == now && now_s() < t.issued_at_s.saturating_add(args.epoch_s)
            })
    });
    let dirty = !matches || !repaired.is_empty() || !skipped.is_empty() || !refused.is_empty();
    let directory = Arc::new(Directory {
        seed,
        key_hex: keyfile::hex(&public),
        epoch_s: args.epoch_s,
        timeout_ms: args.heartbeat_timeout_s.saturating_mul(1000),
        inner: Mutex::new(Inner {
            registry,
            store,
            dirty,
        }),
        published: RwLock::new(published),
        changed: tokio::sync::Notify::new(),
        limiter: RateLimiter::new(
            Rate {
                per_sec: limits::DIRECTORY_POSTS_PER_S_PER_IP,
                burst: limits::DIRECTORY_POSTS_BURST_PER_IP,
            },
            Rate {
                per_sec: limits::DIRECTORY_POSTS_PER_S,
                burst: limits::DIRECTORY_POSTS_BURST,
            },
        ),
        started: Instant::now(),
        counters: Counters::default(),
        requests: crate::prometheus::RequestCounts::new(ENDPOINTS),
        authority,
    });
    if dirty {
        let mut inner = directory.lock();
        directory.publish(&mut inner)?;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(serve(directory, args.listen))
}

async fn serve(directory: Arc<Directory>, listen: SocketAddr) -> anyhow::Result<()> {
    let posts = Router::new()
        .route("/v1/register", post(register))
        .route("/v1/heartbeat", post(heartbeat))
        .route("/v1/deregister", post(deregister))
        .route_layer(middleware::from_fn_with_state(
            directory.clone(),
            rate_limit,
        ));
    // Votes and signatures are larger than registrations; only pinned keys' count.
    let peer_posts = Router::new()
        .route("/v1/vote", post(vote))
        .route("/v1/signature", post(signature))
        .route_layer(middleware::from_fn_with_state(
            directory.clone(),
            rate_limit,
        ))
        .layer(DefaultBodyLimit::max(limits::AUTHORITY_REQUEST_BYTES_MAX));
    let app = Router::new()
        .route("/v1/key", get(key))
        .route("/v1/topology", get(topology))
        .route("/v1/consensus", get(consensus))
        .route("/v1/votes", get(votes))
        .route("/health", get(health))
        .route("/metrics", get(metrics_text))
        .merge(posts)
        .merge(peer_posts)
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such endpoint") })
        .layer(DefaultBodyLimit::max(
            limits::DIRECTORY_REQUEST_BODY_BYTES_MAX,
        ))
        .layer(middleware::from_fn_with_state(
            directory.clone(),
            count_requests,
        ))
        .with_state(directory.clone());
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    let bound = listener.local_addr()?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listen={bound}")?;
        writeln!(out, "key={}", directory.key_hex)?;
        writeln!(out, "epoch={}", directory.published().epoch)?;
        out.flush()?;
    }
    tracing::info!(
        listen = %bound,
        epoch_s = directory.epoch_s,
        heartbeat_timeout_s = directory.timeout_ms / 1000,
        "directory serving"
    );
    let publisher = tokio::spawn(publisher(directory.clone()));
    let voting = directory.authority.clone().map(|authority| {
        tracing::info!(
            authorities = authority.set().len(),
            threshold = authority.set().threshold(),
            "voting with peer authorities"
        );
        let registry = directory.clone();
        tokio::spawn(authority.run(move || {
            registry
                .lock()
                .registry
                .entries()
                .map(|e| e.descriptor.clone())
                .collect()
        }))
    });
    let (stopping, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        shutdown_signal().await;
        let _ = stopping.send(());
    });
    let deadline = async {
        if stopped.await.is_ok() {
            tokio::time::sleep(Duration::from_millis(
                limits::DIRECTORY_SHUTDOWN_DEADLINE_MS,
            ))
            .await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    let result = tokio::select! {
        served = server => served.context("serving"),
        () = deadline => {
            tracing::warn!("shutdown deadline passed; dropping open connections");
            Ok(())
        }
    };
    publisher.abort();
    if let Some(voting) = voting {
        voting.abort();
    }
    result
}

/// Drops silent nodes and publishes: at epoch boundaries, and promptly (rate-limited) after
/// membership changes.
async fn publisher(directory: Arc<Directory>) {
    let sweep_every = Duration::from_millis((directory.timeout_ms / 4).clamp(
        crate::limits::DIRECTORY_SWEEP_MS_MIN,
        crate::limits::DIRECTORY_SWEEP_MS_MAX,
    ));
    let mut last_publish = Instant::now();
    loop {
        let mut wait = sweep_every;
        {
            let mut inner = directory.lock();
            directory.sweep(&mut inner);
            let published = directory.published();
            let epoch_due = now_s() >= published.issued_at_s.saturating_add(directory.epoch_s);
            let since = last_publish.elapsed();
            if epoch_due
                || (inner.dirty
                    && since >= Duration::from_millis(limits::DIRECTORY_PUBLISH_INTERVAL_MS_MIN))
            {
                match directory.publish(&mut inner) {
                    Ok(_) => last_publish = Instant::now(),
                    Err(e) => tracing::error!("publication failed: {e:#}"),
                }
            } else if inner.dirty {
                wait = wait.min(
                    Duration::from_millis(limits::DIRECTORY_PUBLISH_INTERVAL_MS_MIN)
                        .saturating_sub(since),
                );
            }
        }
        tokio::select! {
            () = directory.changed.notified() => {}
            () = tokio::time::sleep(wait) => {}
        }
    }
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
}

fn error(status: StatusCode, message: impl std::fmt::Display) -> Response {
    (status, Json(json!({ "error": message.to_string() }))).into_response()
}

async fn rate_limit(
    State(directory): State<Arc<Directory>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
    next: Next,
) -> Response {
    if directory.limiter.allow(peer.ip()) {
        next.run(req).await
    } else {
        metrics::add(&directory.counters.rate_limited);
        error(
            StatusCode::TOO_MANY_REQUESTS,
            "rate limit exceeded, retry later",
        )
    }
}

/// Counts every answered request by route and status (a path outside the API is `other`).
async fn count_requests(
    State(directory): State<Arc<Directory>>,
    req: Request,
    next: Next,
) -> Response {
    let path = req.uri().path().to_string();
    let response = next.run(req).await;
    directory.requests.record(&path, response.status().as_u16());
    response
}

async fn metrics_text(State(directory): State<Arc<Directory>>) -> Response {
    let membership = {
        let inner = directory.lock();
        let layers = inner.registry.layer_sizes();
        let gateways = inner.registry.len() - layers.iter().sum::<usize>();
        Membership {
            layers,
            gateways,
            epoch: directory.published().epoch,
        }
    };
    let alive = membership.layers.iter().sum::<usize>() + membership.gateways;
    let mut out = String::with_capacity(8 * 1024);
    directory
        .counters
        .render(&membership, &directory.requests, &mut out);
    if let Some(authority) = &directory.authority {
        authority
            .counters
            .render(&authority.status(), alive, &mut out);
    }
    (
        [(header::CONTENT_TYPE, crate::prometheus::CONTENT_TYPE)],
        out,
    )
        .into_response()
}

async fn key(State(directory): State<Arc<Directory>>) -> Response {
    Json(json!({ "key": directory.key_hex })).into_response()
}

async fn topology(State(directory): State<Arc<Directory>>) -> Response {
    let published = directory.published();
    if published.json.is_empty() {
        return error(StatusCode::SERVICE_UNAVAILABLE, "no topology published yet");
    }
    ([(header::CONTENT_TYPE, "application/json")], published.json).into_response()
}

/// The consensus document: alone, the published topology's body with this directory's
/// signature (signed per request: one ed25519 signature, cheaper than keeping a second copy
/// in step); as one of n authorities, the latest certified document.
async fn consensus(State(directory): State<Arc<Directory>>) -> Response {
    if let Some(authority) = &directory.authority {
        return match authority.served() {
            Some(served) => {
                ([(header::CONTENT_TYPE, "application/json")], served.json).into_response()
            }
            None => error(
                StatusCode::SERVICE_UNAVAILABLE,
                "no consensus certified yet",
            ),
        };
    }
    let published = directory.published();
    let Ok(signed) = serde_json::from_slice::<Signed>(&published.json) else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "no topology published yet");
    };
    let signatures = vec![sign_consensus(&signed.body, &directory.seed)];
    Json(MultiSigned {
        body: signed.body,
        signatures,
    })
    .into_response()
}

/// The votes held for the current epoch (peers pull them).
async fn votes(State(directory): State<Arc<Directory>>) -> Response {
    match &directory.authority {
        Some(authority) => Json(authority.signed_votes()).into_response(),
        None => error(StatusCode::NOT_FOUND, "not a voting authority (no peers)"),
    }
}

fn refusal_status(refusal: &Refusal) -> StatusCode {
    match refusal {
        Refusal::Malformed(_) => StatusCode::BAD_REQUEST,
        Refusal::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        Refusal::UnknownSigner | Refusal::BadSignature => StatusCode::FORBIDDEN,
        Refusal::StaleEpoch { .. }
        | Refusal::FutureEpoch { .. }
        | Refusal::Equivocation
        | Refusal::TooManyDocuments => StatusCode::CONFLICT,
    }
}

/// Parses a JSON request body, refusing it as `kind` (counted) if it does not parse.
fn peer_body<T: serde::de::DeserializeOwned>(
    authority: &Authority,
    kind: &str,
    body: Result<Bytes, BytesRejection>,
) -> Result<T, Box<Response>> {
    let refused = |refusal: Refusal| {
        authority.counters.count(kind, &Err(refusal.clone()));
        Box::new(error(refusal_status(&refusal), refusal))
    };
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            refused(Refusal::TooLarge)
        } else {
            Box::new(error(rejection.status(), rejection.body_text()))
        }
    })?;
    serde_json::from_slice(&body).map_err(|_| refused(Refusal::Malformed("JSON")))
}

async fn vote(
    State(directory): State<Arc<Directory>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let Some(authority) = directory.authority.clone() else {
        return error(StatusCode::NOT_FOUND, "not a voting authority (no peers)");
    };
    let signed: Signed = match peer_body(&authority, "vote", body) {
        Ok(signed) => signed,
        Err(response) => return *response,
    };
    // Signature checks and the evidence store: off the reactor.
    let outcome = tokio::task::spawn_blocking(move || authority.accept_vote(&signed)).await;
    match outcome {
        Ok(Ok(accepted)) => {
            let status = match accepted {
                crate::authority::round::Accepted::New => "accepted",
                crate::authority::round::Accepted::Repeat => "repeat",
            };
            Json(json!({ "status": status })).into_response()
        }
        Ok(Err(refusal)) => error(refusal_status(&refusal), refusal),
        Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "vote task failed"),
    }
}

async fn signature(
    State(directory): State<Arc<Directory>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let Some(authority) = directory.authority.clone() else {
        return error(StatusCode::NOT_FOUND, "not a voting authority (no peers)");
    };
    let doc: MultiSigned = match peer_body(&authority, "signature", body) {
        Ok(doc) => doc,
        Err(response) => return *response,
    };
    let outcomes =
        match tokio::task::spawn_blocking(move || authority.accept_signatures(&doc)).await {
            Ok(outcomes) => outcomes,
            Err(_) => return error(StatusCode::INTERNAL_SERVER_ERROR, "signature task failed"),
        };
    let accepted = outcomes.iter().filter(|o| o.is_ok()).count();
    let refused: Vec<&'static str> = outcomes
        .iter()
        .filter_map(|o| o.as_ref().err().map(Refusal::reason))
        .collect();
    match outcomes.iter().find_map(|o| o.as_ref().err()) {
        Some(refusal) if accepted == 0 => error(refusal_status(refusal), refusal),
        _ => Json(json!({ "accepted": accepted, "refused": refused })).into_response(),
    }
}

async fn health(State(directory): State<Arc<Directory>>) -> Response {
    let (nodes, layers, gateways) = {
        let inner = directory.lock();
        let layers = inner.registry.layer_sizes();
        let nodes = inner.registry.len();
        (nodes, layers, nodes - layers.iter().sum::<usize>())
    };
    Json(json!({
        "status": "ok",
        "epoch": directory.published().epoch,
        "nodes": nodes,
        "layers": layers,
        "gateways": gateways,
        "uptime_secs": directory.started.elapsed().as_secs(),
    }))
    .into_response()
}

/// A fixed label for a refused signed document (metrics).
fn topology_reason(e: &TopologyError) -> &'static str {
    match e {
        TopologyError::BadSignature => "bad_signature",
        TopologyError::WrongSigner => "wrong_signer",
        TopologyError::TooLarge(_) => "too_large",
        _ => "malformed",
    }
}

/// Opens a signed body with `open`, counting a refusal under `kind`.
fn open_body<T>(
    directory: &Directory,
    kind: &'static str,
    body: Result<Bytes, BytesRejection>,
    open: fn(&Signed) -> Result<T, TopologyError>,
) -> Result<T, Box<Response>> {
    let signed = signed_body(body).inspect_err(|response| {
        let reason = if response.status() == StatusCode::PAYLOAD_TOO_LARGE {
            "too_large"
        } else {
            "malformed"
        };
        directory.counters.reject(kind, reason);
    })?;
    open(&signed).map_err(|e| {
        directory.counters.reject(kind, topology_reason(&e));
        Box::new(topology_error(&e))
    })
}

fn topology_error(e: &TopologyError) -> Response {
    match e {
        TopologyError::BadSignature | TopologyError::WrongSigner => error(StatusCode::FORBIDDEN, e),
        TopologyError::TooLarge(_) => error(StatusCode::PAYLOAD_TOO_LARGE, e),
        _ => error(StatusCode::BAD_REQUEST, e),
    }
}

fn registry_error(e: &RegistryError) -> Response {
    let status = match e {
        RegistryError::Unknown => StatusCode::NOT_FOUND,
        RegistryError::NotAllowed => StatusCode::FORBIDDEN,
        RegistryError::Older { .. }
        | RegistryError::Replay { .. }
        | RegistryError::IpFull { .. }
        | RegistryError::SourceFull { .. }
        | RegistryError::AddressTaken(_)
        | RegistryError::HeartbeatOlder { .. }
        | RegistryError::DeregisterOlder { .. }
        | RegistryError::Deregistered { .. } => StatusCode::CONFLICT,
        RegistryError::Window { .. }
        | RegistryError::HeartbeatClock { .. }
        | RegistryError::DeregisterClock { .. }
        | RegistryError::BadAddress { .. }
        | RegistryError::WeakKey
        | RegistryError::BadFamily
        | RegistryError::NoClientUrl
        | RegistryError::BadUrl(_) => StatusCode::UNPROCESSABLE_ENTITY,
        RegistryError::Full => StatusCode::SERVICE_UNAVAILABLE,
    };
    error(status, e)
}

/// Parses a signed document from a request body.
fn signed_body(body: Result<Bytes, BytesRejection>) -> Result<Signed, Box<Response>> {
    let body =
        body.map_err(|rejection| Box::new(error(rejection.status(), rejection.body_text())))?;
    serde_json::from_slice::<Signed>(&body).map_err(|e| {
        Box::new(error(
            StatusCode::BAD_REQUEST,
            format!("malformed JSON: {e}"),
        ))
    })
}

async fn register(
    State(directory): State<Arc<Directory>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let signed = match signed_body(body) {
        Ok(signed) => signed,
        Err(response) => {
            directory.counters.reject("registration", "malformed");
            return *response;
        }
    };
    let descriptor = match open_descriptor(&signed) {
        Ok(descriptor) => descriptor,
        Err(e) => {
            directory
                .counters
                .reject("registration", topology_reason(&e));
            return topology_error(&e);
        }
    };
    let signed_json = match serde_json::to_string(&signed) {
        Ok(json) => json,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let worker = directory.clone();
    // SQLite writes: off the reactor.
    let outcome = tokio::task::spawn_blocking(move || {
        let mut guard = worker.lock();
        let inner = &mut *guard;
        let identity = descriptor.identity.clone();
        let (what, changed) =
            inner
                .registry
                .register(descriptor, signed_json, Some(peer.ip()), now_ms())?;
        if let Err(e) = inner.store.save_nodes(&inner.registry, &changed) {
            tracing::error!(%identity, error = %e, "storing a registration failed");
        }
        if what != Registered::Refreshed {
            inner.dirty = true;
            if let Some(entry) = inner.registry.get(&identity) {
                let d = &entry.descriptor;
                let what = if what == Registered::New {
                    "registered"
                } else {
                    "updated"
                };
                // Layers counted from 1 as operators say them (layer 1: first hop);
                // gateways have none.
                match entry.layer {
                    Some(layer) => tracing::info!(
                        role = %d.role,
                        %identity,
                        mix_address = %d.mix_address,
                        layer = layer + 1,
                        "{what} node"
                    ),
                    None => tracing::info!(
                        role = %d.role,
                        %identity,
                        mix_address = %d.mix_address,
                        "{what} node"
                    ),
                }
            }
        }
        let layer = inner.registry.get(&identity).and_then(|e| e.layer);
        Ok::<_, RegistryError>((what, layer))
    })
    .await;
    match outcome {
        Ok(Ok((what, layer))) => {
            if what != Registered::Refreshed {
                directory.changed.notify_one();
            }
            let counter = match what {
                Registered::New => &directory.counters.registrations_new,
                Registered::Updated => &directory.counters.registrations_updated,
                Registered::Refreshed => &directory.counters.registrations_refreshed,
            };
            metrics::add(counter);
            let status = match what {
                Registered::New => "registered",
                Registered::Updated => "updated",
                Registered::Refreshed => "refreshed",
            };
            Json(json!({
                "status": status,
                "layer": layer,
                "epoch": directory.published().epoch,
                "heartbeat_timeout_s": directory.timeout_ms / 1000,
            }))
            .into_response()
        }
        Ok(Err(e)) => {
            directory.counters.reject("registration", e.reason());
            registry_error(&e)
        }
        Err(_) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "registration task failed",
        ),
    }
}

async fn heartbeat(
    State(directory): State<Arc<Directory>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let heartbeat = match open_body(&directory, "heartbeat", body, open_heartbeat) {
        Ok(heartbeat) => heartbeat,
        Err(response) => return *response,
    };
    let worker = directory.clone();
    let outcome = tokio::task::spawn_blocking(move || {
        let mut inner = worker.lock();
        let fresh = inner.registry.heartbeat(&heartbeat, now_ms())?;
        if fresh {
            if let Some(entry) = inner.registry.get(&heartbeat.identity) {
                if let Err(e) = inner.store.save_liveness(entry) {
                    tracing::error!(error = %e, "storing a heartbeat failed");
                }
            }
        }
        Ok::<_, RegistryError>(fresh)
    })
    .await;
    match outcome {
        Ok(Ok(fresh)) => {
            let (status, counter) = if fresh {
                ("ok", &directory.counters.heartbeats_fresh)
            } else {
                ("repeat", &directory.counters.heartbeats_repeat)
            };
            metrics::add(counter);
            Json(json!({ "status": status })).into_response()
        }
        Ok(Err(e)) => {
            directory.counters.reject("heartbeat", e.reason());
            registry_error(&e)
        }
        Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "heartbeat task failed"),
    }
}

/// A node leaving: removed at once, the next topology published within
/// [`limits::DIRECTORY_PUBLISH_INTERVAL_MS_MIN`]. Only a request signed by the node's own identity, newer than
/// its last registration or heartbeat and within the clock skew, removes it; anything else
/// changes nothing (an unknown identity creates no state).
async fn deregister(
    State(directory): State<Arc<Directory>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let kind = "deregistration";
    let deregistration = match open_body(&directory, kind, body, open_deregistration) {
        Ok(deregistration) => deregistration,
        Err(response) => return *response,
    };
    let worker = directory.clone();
    let outcome = tokio::task::spawn_blocking(move || {
        let mut guard = worker.lock();
        let inner = &mut *guard;
        let changed = inner.registry.deregister(&deregistration, now_ms())?;
        if let Err(e) = inner.store.save_nodes(&inner.registry, &changed) {
            tracing::error!(error = %e, "storing a deregistration failed");
        }
        inner.dirty = true;
        tracing::info!(identity = %deregistration.identity, "deregistered node");
        Ok::<_, RegistryError>(())
    })
    .await;
    match outcome {
        Ok(Ok(())) => {
            metrics::add(&directory.counters.deregistrations);
            directory.changed.notify_one();
            Json(json!({
                "status": "deregistered",
                "epoch": directory.published().epoch,
            }))
            .into_response()
        }
        Ok(Err(e)) => {
            directory.counters.reject(kind, e.reason());
            registry_error(&e)
        }
        Err(_) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "deregistration task failed",
        ),
    }
}

//! The gateway driver: a real Lethe network read from its directory. loadgen's senders and
//! receivers are gateway clients (ed25519 identities made in memory, the client ↔ gateway
//! WebSocket protocol of `lethe_nodes::proto`):
//!
//! - one receiver per gateway, connected before the run (a destination must have completed a
//!   handshake with its gateway to get deliveries); it reads `Deliver` messages, records the
//!   stamp's latency and confirms the ids in batches so the gateway's mailbox stays empty;
//! - sender `i` connects to gateway `i % gateways` and sends `ClientMessage::Forward`s; each
//!   packet's route is `[L1, L2, L3, receiver's gateway]`, drawn per packet from the verified
//!   topology, addressed to that receiver's identity.
//!
//! The sessions run on a small tokio runtime; the sender threads hand their batches over a
//! bounded queue (a full queue makes the sender wait, so a slow gateway shows as lateness).
//!
//! Sender `i` keeps one identity for the whole process (warm-up, run, every ramp step), so the
//! bandwidth a gateway credited it stays with it. With credentials ([`GatewayNetwork::
//! add_credentials`]) a sender session, once the gateway has reported the balance after
//! `Welcome`, spends credentials (`Credential{spend}`, the real client's message, bound to the
//! gateway and the sender's identity) until the balance covers the sender's share of the run,
//! and waits for the credit before it sends: loadgen does not retransmit, so it pays up front
//! rather than when a forward is refused. Later sessions top up below the real client's
//! `LOW_WATER_BYTES`. A gateway that reports no balance has open admission: nothing is spent.

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lethe_crypto::framing::PacketSize;
use lethe_crypto::sphinx::Destination;
use lethe_nodes::client::cli::{gateway_requires_credentials, PROBE_TIMEOUT};
use lethe_nodes::client::credential::{Wallet, LOW_WATER_BYTES};
use lethe_nodes::directory::client::{fetch_consensus, fetch_key, http_client, Authorities};
use lethe_nodes::keyfile;
use lethe_nodes::proto::messages::{error_code, CONFIRM_IDS_MAX};
use lethe_nodes::proto::{ClientMessage, DeliveryKind};
use lethe_nodes::topology::Descriptor;
use lethe_nodes::ws::{Connection, OpenError};
use lethe_proto::client_session::{ClientEvent, SendRefused};
use serde::Serialize;
use tokio::sync::mpsc;

use crate::client_stats::{error_name, ClientStats};
use crate::credentials::{CredentialInfo, IssuerConfig};
use crate::driver::{Driver, Injector, NodeInfo};
use crate::generator::{Topology, Wire, FORWARD_OVERHEAD};
use crate::limits;
use crate::receiver::{ActiveRun, ReceiverCounters, ReceiverStats};
use crate::refresh::{routes_of, ReceiverExit, TopologyFeed};
use crate::stamp::Stamp;
use crate::testnet::Testnet;
use crate::trace::{TraceClients, TraceSender};
use crate::tracker::Arrival;
use crate::windows::WatchedProcess;

#[derive(Default)]
struct Counters {
    senders: AtomicU64,
    receivers: AtomicU64,
    sessions: AtomicU64,
    session_failures: AtomicU64,
    forwards: AtomicU64,
    queue_full_waits: AtomicU64,
    /// Indexed by code; the last slot counts unknown codes.
    gateway_errors: [AtomicU64; 8],
    deliveries: AtomicU64,
    confirmed: AtomicU64,
    confirm_messages: AtomicU64,
    errors: Mutex<Vec<String>>,
    /// Credentials the gateways credited, and refused.
    credentials_spent: AtomicU64,
    credentials_refused: AtomicU64,
}

impl Counters {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    fn note(&self, text: String) {
        if let Ok(mut errors) = self.errors.lock() {
            if errors.len() < limits::GATEWAY_ERRORS_MAX && !errors.contains(&text) {
                errors.push(text);
            }
        }
    }

    fn gateway_error(&self, code: u8, text: &str) {
        let slot = usize::from(code).min(self.gateway_errors.len() - 1);
        if let Some(counter) = self.gateway_errors.get(slot) {
            Self::add(counter, 1);
        }
        self.note(format!(
            "gateway error {} ({code}): {text}",
            error_name(code)
        ));
    }

    fn snapshot(&self) -> ClientStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut gateway_errors = BTreeMap::new();
        for (code, counter) in self.gateway_errors.iter().enumerate() {
            let count = get(counter);
            if count > 0 {
                *gateway_errors
                    .entry(error_name(code as u8).to_string())
                    .or_insert(0) += count;
            }
        }
        ClientStats {
            senders: get(&self.senders),
            receivers: get(&self.receivers),
            sessions: get(&self.sessions),
            session_failures: get(&self.session_failures),
            forwards: get(&self.forwards),
            queue_full_waits: get(&self.queue_full_waits),
            gateway_errors,
            deliveries: get(&self.deliveries),
            confirmed: get(&self.confirmed),
            confirm_messages: get(&self.confirm_messages),
            errors: self.errors.lock().map(|e| e.clone()).unwrap_or_default(),
        }
    }
}

struct Shared {
    run: Mutex<Option<ActiveRun>>,
    receiver: ReceiverCounters,
    counters: Counters,
    /// Why a receiver session ended (the run can no longer count its deliveries).
    receiver_failure: Mutex<Option<String>>,
}

/// A gateway clients connect to.
#[derive(Clone, Debug)]
struct GatewayEntry {
    name: String,
    url: String,
    identity: [u8; 32],
    /// Its mixnet address (its name in the nodes' trace parts).
    mix_address: SocketAddr,
    /// It reported no balance after `Welcome`: open admission (sessions stop waiting for one).
    open_admission: Arc<AtomicBool>,
}

/// Sender `i`'s identity and credentials, the same for every session it opens.
struct SenderIdentity {
    seed: [u8; 32],
    wallet: Option<Arc<Mutex<Wallet>>>,
    /// The first session with a balance report paid the whole budget.
    prepaid: AtomicBool,
}

impl SenderIdentity {
    fn new() -> Result<SenderIdentity, String> {
        Ok(SenderIdentity {
            seed: random_seed()?,
            wallet: None,
            prepaid: AtomicBool::new(false),
        })
    }
}

/// What the directory said, for the report.
#[derive(Clone, Debug, Serialize)]
pub struct DirectoryInfo {
    /// The authorities' URLs, comma-separated.
    pub url: String,
    /// The authorities' ed25519 keys the documents were verified with, comma-separated.
    pub key: String,
    /// `false`: no --directory-key was given and the key was fetched from the directory
    /// itself (trust on first use).
    pub key_pinned: bool,
    pub epoch: u64,
}

/// A network driven through its gateways.
pub struct GatewayNetwork {
    kind: &'static str,
    // Field order matters: the runtime (and every session) stops before the testnet goes down.
    runtime: tokio::runtime::Runtime,
    nodes: Vec<NodeInfo>,
    /// The routes in use, refreshed from the directory ([`GatewayNetwork::start_refresh`]).
    feed: Arc<TopologyFeed>,
    /// One per gateway receiver: where packets are addressed.
    receivers: Vec<ReceiverExit>,
    authorities: Authorities,
    /// `--topology-refresh-s` once the refresh runs.
    refresh_s: Option<f64>,
    gateways: Vec<GatewayEntry>,
    packet_size: PacketSize,
    shared: Arc<Shared>,
    /// By sender index (senders beyond get a fresh identity per session, without credentials).
    senders: Vec<SenderIdentity>,
    /// Bytes the first paid session of each sender covers.
    budget_bytes: u64,
    credentials: Option<CredentialInfo>,
    pub directory: DirectoryInfo,
    testnet: Option<Testnet>,
}

/// `http://host:port/metrics` → the socket address to scrape.
fn metrics_address(url: &str) -> Option<SocketAddr> {
    let rest = url.strip_prefix("http://")?;
    let authority = rest.split('/').next()?;
    authority.to_socket_addrs().ok()?.next()
}

fn random_seed() -> Result<[u8; 32], String> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| format!("random identity: {e}"))?;
    Ok(seed)
}

impl GatewayNetwork {
    /// Reads and verifies the consensus from the authorities at `url` (comma-separated, tried
    /// in turn) and connects one receiver per gateway. `keys`: the pinned authority keys;
    /// none fetches the one directory's (trust on first use, always said on stderr). `clients`: the run's senders (identities are made for at least one per
    /// gateway, which the warm-up uses). A testnet given here is stopped when the driver is
    /// dropped. `quiet`: topology changes are not said on stderr.
    pub fn start(
        kind: &'static str,
        url: &str,
        keys: Vec<[u8; 32]>,
        packet_size: PacketSize,
        clients: u32,
        testnet: Option<Testnet>,
        quiet: bool,
    ) -> Result<GatewayNetwork, String> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("gateway-clients")
            .enable_all()
            .build()
            .map_err(|e| format!("tokio runtime: {e}"))?;
        let urls: Vec<String> = url.split(',').map(str::to_string).collect();
        let (authorities, key_pinned, topology) = runtime.block_on(async {
            let http = http_client();
            let (keys, pinned) = match (keys.is_empty(), urls.as_slice()) {
                (false, _) => (keys, true),
                (true, [one]) => {
                    let key = fetch_key(&http, one).await.map_err(|e| e.to_string())?;
                    // Said even with --quiet: the topology is only as trustworthy as this key.
                    eprintln!(
                        "loadgen: no --directory-key given: trusting the key {one} serves \
                         (trust on first use): {}",
                        keyfile::hex(&key)
                    );
                    (vec![key], false)
                }
                (true, _) => {
                    return Err("several authorities: pin their keys with --directory-key \
                                (trust on first use is for one directory only)"
                        .to_string())
                }
            };
            let authorities = Authorities::new(urls.clone(), keys)?;
            let topology = fetch_consensus(&http, &authorities, None)
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>((authorities, pinned, topology))
        })?;
        let names = testnet.as_ref().map(Testnet::names).unwrap_or_default();
        let name_of = |d: &Descriptor, fallback: String| {
            names
                .get(&d.mix_address.to_string())
                .cloned()
                .unwrap_or(fallback)
        };
        let mut nodes = Vec::new();
        for (index, layer) in topology.layers.iter().enumerate() {
            if layer.is_empty() {
                return Err(format!(
                    "{url}: the topology (epoch {}) has no mixnode in layer {}",
                    topology.epoch,
                    index + 1
                ));
            }
            for (n, descriptor) in layer.iter().enumerate() {
                nodes.push(NodeInfo {
                    name: name_of(descriptor, format!("mix-l{}-{}", index + 1, n + 1)),
                    role: format!("mixnode layer {}", index + 1),
                    listen: descriptor.mix_address,
                    metrics: descriptor.metrics_url.as_deref().and_then(metrics_address),
                });
            }
        }
        let mut gateways = Vec::new();
        for (n, descriptor) in topology.gateways.iter().enumerate() {
            let name = name_of(descriptor, format!("gateway-{}", n + 1));
            nodes.push(NodeInfo {
                name: name.clone(),
                role: "gateway".into(),
                listen: descriptor.mix_address,
                metrics: descriptor.metrics_url.as_deref().and_then(metrics_address),
            });
            let Some(client_url) = descriptor.client_url.clone() else {
                continue;
            };
            gateways.push(GatewayEntry {
                name,
                url: client_url,
                identity: descriptor.identity_key().map_err(|e| e.to_string())?,
                mix_address: descriptor.mix_address,
                open_admission: Arc::new(AtomicBool::new(false)),
            });
        }
        if gateways.is_empty() {
            return Err(format!(
                "{url}: the topology (epoch {}) has no gateway with a client URL",
                topology.epoch
            ));
        }
        let shared = Arc::new(Shared {
            run: Mutex::new(None),
            receiver: ReceiverCounters::default(),
            counters: Counters::default(),
            receiver_failure: Mutex::new(None),
        });
        let mut receivers = Vec::new();
        for gateway in &gateways {
            let seed = random_seed()?;
            let identity = keyfile::ed25519_public(&seed);
            let connection = runtime
                .block_on(open_session(&gateway.url, &seed, gateway.identity))
                .map_err(|e| format!("receiver at {}: {e}", gateway.name))?;
            Counters::add(&shared.counters.sessions, 1);
            Counters::add(&shared.counters.receivers, 1);
            shared.receiver.connections.fetch_add(1, Ordering::Relaxed);
            let task_shared = Arc::clone(&shared);
            let name = gateway.name.clone();
            runtime.spawn(async move {
                let reason = receive_loop(connection, &task_shared, identity).await;
                Counters::add(&task_shared.counters.session_failures, 1);
                task_shared
                    .counters
                    .note(format!("receiver at {name}: {reason}"));
                if let Ok(mut slot) = task_shared.receiver_failure.lock() {
                    slot.get_or_insert(format!("the receiver session at {name} ended: {reason}"));
                }
            });
            receivers.push(ReceiverExit {
                gateway_identity: gateway.identity,
                destination: Destination {
                    address: identity,
                    identifier: [0; 16],
                },
            });
        }
        let routes = routes_of(&topology, &receivers).map_err(|e| format!("{url}: {e}"))?;
        let feed = Arc::new(TopologyFeed::new(routes, names.clone(), quiet));
        let senders = (0..clients.max(gateways.len() as u32))
            .map(|_| SenderIdentity::new())
            .collect::<Result<Vec<_>, String>>()?;
        Ok(GatewayNetwork {
            kind,
            runtime,
            nodes,
            feed,
            receivers,
            directory: DirectoryInfo {
                url: authorities.urls().join(","),
                key: authorities.keys_hex().join(","),
                key_pinned,
                epoch: topology.epoch,
            },
            authorities,
            refresh_s: None,
            gateways,
            packet_size,
            shared,
            senders,
            budget_bytes: 0,
            credentials: None,
            testnet,
        })
    }
}

impl GatewayNetwork {
    /// Obtains credentials for every sender from `issuers`, each sender's covering
    /// `budget_bytes`; returns the report's summary (also kept for [`Driver::credentials`]).
    pub fn add_credentials(
        &mut self,
        issuers: &IssuerConfig,
        budget_bytes: u64,
    ) -> Result<CredentialInfo, String> {
        let obtained =
            crate::credentials::obtain_all(issuers, self.senders.len() as u32, budget_bytes)?;
        for (sender, wallet) in self.senders.iter_mut().zip(obtained.wallets) {
            sender.wallet = Some(Arc::new(Mutex::new(wallet)));
        }
        self.budget_bytes = budget_bytes;
        self.credentials = Some(obtained.info.clone());
        Ok(obtained.info)
    }

    /// Senders this network has identities (and possibly credentials) for.
    pub fn senders(&self) -> usize {
        self.senders.len()
    }

    /// The gateways (name, client URL) that require bandwidth credentials, asked with `lethe
    /// client init`'s probe (`client::cli::gateway_requires_credentials`: a throwaway
    /// handshake, no packet sent into the mixnet), all at once. A gateway that cannot be
    /// asked, or does not answer in time, is said on stderr and counted as not requiring
    /// them: the run's report then shows what it refused.
    pub fn gateways_requiring_credentials(&self) -> Vec<(String, String)> {
        let probes = self.gateways.iter().map(|gateway| async move {
            let probe = gateway_requires_credentials(&gateway.url, gateway.identity);
            let answer = tokio::time::timeout(PROBE_TIMEOUT, probe).await;
            (gateway, answer)
        });
        let answers = self
            .runtime
            .block_on(futures_util::future::join_all(probes));
        let mut requiring = Vec::new();
        for (gateway, answer) in answers {
            match answer {
                Ok(Ok(true)) => requiring.push((gateway.name.clone(), gateway.url.clone())),
                Ok(Ok(false)) => {}
                Ok(Err(e)) => eprintln!(
                    "loadgen: could not ask gateway {} whether it requires credentials ({e}); \
                     going on",
                    gateway.name
                ),
                Err(_) => eprintln!(
                    "loadgen: gateway {} did not say within {}s whether it requires \
                     credentials; going on",
                    gateway.name,
                    PROBE_TIMEOUT.as_secs()
                ),
            }
        }
        requiring
    }

    /// Re-reads the topology every `every_s` seconds from now on (0: never), for as long as
    /// the driver lives.
    pub fn start_refresh(&mut self, every_s: f64) {
        if !(every_s.is_finite() && every_s > 0.0) {
            return;
        }
        self.refresh_s = Some(every_s);
        self.runtime.spawn(crate::refresh::refresh_loop(
            Arc::clone(&self.feed),
            self.authorities.clone(),
            Duration::from_secs_f64(every_s),
            self.receivers.clone(),
        ));
    }
}

impl GatewayNetwork {
    /// Sends one probe packet from every gateway through every layer-1 node, in rounds, until
    /// a round is delivered whole: a gateway whose topology is older than the directory's
    /// refuses first hops it does not know (NOT_LAYER1), which would count as loss. Gives up
    /// (with a note) after [`limits::WARM_UP_MS_MAX`]; the run then reports what the gateways refuse.
    pub fn warm_up(&mut self, say: &dyn Fn(&str)) -> Result<(), String> {
        let started = Instant::now();
        let entries = self.gateways.len() as u32;
        let layer1 = self.topology().layers.first().cloned().unwrap_or_default();
        let probes = u64::from(entries) * layer1.len() as u64;
        let mut rng = crate::generator::os_rng()?;
        let mut frames = Vec::new();
        crate::generator::PacketPlan {
            topology: self.topology(),
            clients: 1,
            size: self.packet_size,
            wire: Wire::GatewayForward,
            delay_ns_mean: 0.0,
            trace: false,
        }
        .validate()?;
        for round in 0u32.. {
            let run_id = u32::MAX - round;
            let tracker = Arc::new(crate::tracker::Tracker::new(run_id, probes, 0)?);
            self.set_run(Some(ActiveRun {
                tracker: Arc::clone(&tracker),
                start: Instant::now(),
                trace: None,
            }));
            let mut seq = 0u64;
            let mut injectors = Vec::new();
            for client in 0..entries {
                let mut injector = self.connect(client)?;
                for hop in &layer1 {
                    let mut topology = self.topology();
                    topology.layers[0] = vec![*hop];
                    let plan = crate::generator::PacketPlan {
                        topology,
                        clients: 1,
                        size: self.packet_size,
                        wire: Wire::GatewayForward,
                        delay_ns_mean: 0.0,
                        trace: false,
                    };
                    let stamp = Stamp {
                        run_id,
                        seq,
                        scheduled_ns: 0,
                    };
                    seq += 1;
                    let mut ids = Vec::new();
                    crate::generator::build_chunk(&plan, &[stamp], &mut rng, &mut frames, &mut ids);
                    for (_, frame) in frames.drain(..) {
                        injector.send(&frame).map_err(|e| format!("warm-up: {e}"))?;
                    }
                }
                injectors.push(injector);
            }
            let waited = Instant::now();
            while tracker.delivered() < probes
                && waited.elapsed() < Duration::from_millis(limits::PROBE_WAIT_MS)
            {
                std::thread::sleep(Duration::from_millis(limits::PROBE_POLL_MS));
            }
            drop(injectors);
            self.set_run(None);
            if tracker.delivered() >= probes {
                return Ok(());
            }
            self.check()?;
            if crate::run::interrupted() {
                return Err("interrupted during the warm-up".into());
            }
            if let Some(refusals) = self.admission_refusals() {
                // Said even with --quiet: nothing this run sends will be delivered.
                eprintln!(
                    "loadgen: warm-up: the gateways refuse loadgen's packets ({refusals}): they admit \
                     packets only against bandwidth credentials{}; running anyway, the report \
                     counts the refusals",
                    if self.credentials.is_none() {
                        " and loadgen has none (with --target: --issuers, --threshold, \
                         --verification-key)"
                    } else {
                        ""
                    }
                );
                return Ok(());
            }
            if started.elapsed() > Duration::from_millis(limits::WARM_UP_MS_MAX) {
                say(&format!(
                    "warm-up: {} of {probes} probes still not delivered after {}s; running \
                     anyway (see gateway_clients in the report)",
                    probes.saturating_sub(tracker.delivered()),
                    Duration::from_millis(limits::WARM_UP_MS_MAX).as_secs()
                ));
                return Ok(());
            }
            if round == 0 {
                let errors = self.shared.counters.snapshot().errors;
                say(&format!(
                    "waiting for the gateways to route through every layer-1 node ({} of \
                     {probes} probes delivered{})",
                    tracker.delivered(),
                    errors.last().map(|e| format!("; {e}")).unwrap_or_default()
                ));
            }
            std::thread::sleep(Duration::from_millis(limits::WARM_UP_ROUND_PAUSE_MS));
        }
        Ok(())
    }
}

impl GatewayNetwork {
    /// `no_bandwidth N, bad_credential M` when the gateways refused admission so far.
    fn admission_refusals(&self) -> Option<String> {
        let errors = self.shared.counters.snapshot().gateway_errors;
        let refusals: Vec<String> = ["no_bandwidth", "bad_credential"]
            .iter()
            .filter_map(|code| errors.get(*code).map(|n| format!("{code} {n}")))
            .collect();
        (!refusals.is_empty()).then(|| refusals.join(", "))
    }
}

/// Connects, runs the handshake with the pinned gateway identity and waits for `Welcome`.
async fn open_session(url: &str, seed: &[u8; 32], gateway: [u8; 32]) -> Result<Connection, String> {
    match Connection::open(
        url,
        seed,
        gateway,
        Duration::from_millis(limits::GATEWAY_SESSION_TIMEOUT_MS),
    )
    .await
    {
        Ok((connection, _stored)) => Ok(connection),
        Err(OpenError::Refused { code, text }) => Err(format!(
            "{url}: the gateway refused the session: {} ({code}): {text}",
            error_name(code)
        )),
        Err(OpenError::Failed(text)) => Err(text),
    }
}

/// Pays for a sender session (see the module documentation): spends `sender`'s credentials
/// until the gateway's balance covers `target_bytes`. Nothing with open admission.
async fn prepay(
    connection: &mut Connection,
    gateway: &GatewayEntry,
    wallet: &Arc<Mutex<Wallet>>,
    client: [u8; 32],
    target_bytes: u64,
    counters: &Counters,
) -> Result<(), String> {
    if gateway.open_admission.load(Ordering::Relaxed) {
        return Ok(());
    }
    let Some(mut remaining) = first_balance(connection, counters).await? else {
        gateway.open_admission.store(true, Ordering::Relaxed);
        return Ok(());
    };
    while remaining < target_bytes {
        let Some(bytes) = spend_next(wallet, gateway.identity, client).await? else {
            counters.note(format!(
                "{}: {remaining} bytes of bandwidth left and no credential to spend",
                gateway.name
            ));
            return Ok(());
        };
        connection
            .send(&ClientMessage::Credential { bytes })
            .await?;
        remaining = credit(connection, wallet, counters).await?;
    }
    Ok(())
}

/// The balance the gateway reports after `Welcome`; `None`: no report within
/// [`limits::GATEWAY_BALANCE_WAIT_MS`] (open admission).
async fn first_balance(
    connection: &mut Connection,
    counters: &Counters,
) -> Result<Option<u64>, String> {
    let waiting = async {
        loop {
            match next_event(connection).await? {
                ClientEvent::Bandwidth { remaining_bytes } => return Ok(remaining_bytes),
                ClientEvent::Error { code, text } => counters.gateway_error(code, &text),
                _ => {}
            }
        }
    };
    match tokio::time::timeout(
        Duration::from_millis(limits::GATEWAY_BALANCE_WAIT_MS),
        waiting,
    )
    .await
    {
        Ok(balance) => balance.map(Some),
        Err(_) => Ok(None),
    }
}

/// A spend of the wallet's next credential (`None`: none left), off the async workers.
async fn spend_next(
    wallet: &Arc<Mutex<Wallet>>,
    gateway: [u8; 32],
    client: [u8; 32],
) -> Result<Option<Vec<u8>>, String> {
    let wallet = Arc::clone(wallet);
    tokio::task::spawn_blocking(move || {
        let mut wallet = wallet
            .lock()
            .map_err(|_| "wallet lock poisoned".to_string())?;
        wallet.spend(&gateway, &client)
    })
    .await
    .map_err(|e| format!("spending a credential: {e}"))?
}

/// The gateway's answer to a spent credential: the credited balance, or why it was refused.
async fn credit(
    connection: &mut Connection,
    wallet: &Arc<Mutex<Wallet>>,
    counters: &Counters,
) -> Result<u64, String> {
    let retire = |spent: bool| {
        if let Ok(mut wallet) = wallet.lock() {
            if spent {
                wallet.mark_spent();
            } else {
                wallet.mark_refused();
            }
        }
    };
    let waiting = async {
        loop {
            match next_event(connection).await? {
                ClientEvent::Bandwidth { remaining_bytes } => {
                    retire(true);
                    Counters::add(&counters.credentials_spent, 1);
                    return Ok(remaining_bytes);
                }
                ClientEvent::Error { code, text } => {
                    counters.gateway_error(code, &text);
                    if code == error_code::BAD_CREDENTIAL {
                        retire(false);
                        Counters::add(&counters.credentials_refused, 1);
                        return Err(format!("the gateway refused loadgen's credential: {text}"));
                    }
                    if code == error_code::OVERLOADED {
                        return Err(format!(
                            "the gateway could not verify loadgen's credential now: {text}"
                        ));
                    }
                }
                _ => {}
            }
        }
    };
    tokio::time::timeout(
        Duration::from_millis(limits::GATEWAY_CREDIT_WAIT_MS),
        waiting,
    )
    .await
    .map_err(|_| {
        format!(
            "the gateway did not answer a spent credential within {}s",
            Duration::from_millis(limits::GATEWAY_CREDIT_WAIT_MS).as_secs()
        )
    })?
}

/// The session's next event; its end is an error (with why).
async fn next_event(connection: &mut Connection) -> Result<ClientEvent, String> {
    match connection.next_event().await? {
        ClientEvent::Closed { reason } => Err(format!("the session closed ({reason:?})")),
        event => Ok(event),
    }
}

/// Confirms `pending` (the session packs at most [`CONFIRM_IDS_MAX`] per message) and clears it.
async fn confirm(
    connection: &mut Connection,
    pending: &mut Vec<u64>,
    counters: &Counters,
) -> Result<(), String> {
    for &id in pending.iter() {
        connection.session().confirm(id);
    }
    connection.flush().await?;
    Counters::add(&counters.confirmed, pending.len() as u64);
    Counters::add(
        &counters.confirm_messages,
        pending.len().div_ceil(CONFIRM_IDS_MAX) as u64,
    );
    pending.clear();
    Ok(())
}

/// Reads deliveries for the receiver `identity` until the session fails; returns why.
async fn receive_loop(mut connection: Connection, shared: &Shared, identity: [u8; 32]) -> String {
    let mut pending: Vec<u64> = Vec::with_capacity(limits::RECEIVER_CONFIRM_BATCH_IDS);
    let mut tick =
        tokio::time::interval(Duration::from_millis(limits::RECEIVER_CONFIRM_INTERVAL_MS));
    loop {
        tokio::select! {
            incoming = connection.receive() => {
                if let Err(e) = incoming {
                    return e.to_string();
                }
                while let Some(event) = connection.session().poll_event() {
                    match event {
                        ClientEvent::Deliver { id, kind, bytes, .. } => {
                            Counters::add(&shared.counters.deliveries, 1);
                            deliver(shared, kind, &bytes, identity);
                            pending.push(id);
                        }
                        ClientEvent::Error { code, text } => {
                            shared.counters.gateway_error(code, &text);
                        }
                        ClientEvent::Closed { reason } => {
                            return format!("the session closed ({reason:?})");
                        }
                        ClientEvent::Welcome { .. } | ClientEvent::Bandwidth { .. } => {}
                    }
                }
                if pending.len() >= limits::RECEIVER_CONFIRM_BATCH_IDS {
                    if let Err(e) = confirm(&mut connection, &mut pending, &shared.counters).await {
                        return e;
                    }
                }
            }
            _ = tick.tick() => {
                // The session's keep-alive (a receiver may wait long between runs).
                connection.handle_timeout();
                if let Err(e) = confirm(&mut connection, &mut pending, &shared.counters).await {
                    return e;
                }
            }
        }
    }
}

/// Counts one delivery to `recipient` against the current run.
fn deliver(shared: &Shared, kind: DeliveryKind, bytes: &[u8], recipient: [u8; 32]) {
    let counters = &shared.receiver;
    counters.frames.fetch_add(1, Ordering::Relaxed);
    if kind != DeliveryKind::Message {
        counters.frames_skipped.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let Some(stamp) = Stamp::decode(bytes) else {
        counters.bad_payload.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let run = shared.run.lock().ok().and_then(|slot| slot.clone());
    let Some(run) = run.filter(|run| run.tracker.run_id == stamp.run_id) else {
        counters.other_run.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let arrival_ns = u64::try_from(run.start.elapsed().as_nanos()).unwrap_or(u64::MAX);
    match run.tracker.record(&stamp, arrival_ns) {
        Arrival::OutOfRange => {
            counters.bad_payload.fetch_add(1, Ordering::Relaxed);
        }
        Arrival::Delivered => {
            if let Some(trace) = &run.trace {
                trace.delivered(stamp.seq, recipient, arrival_ns);
            }
        }
        Arrival::Duplicate => {}
    }
}

/// Writes a sender's batches to its session; reads the gateway's replies (errors are counted).
/// The batches hold encoded `Forward`s, sealed as they are (no decode, no re-encode).
async fn send_loop(
    mut connection: Connection,
    mut batches: mpsc::Receiver<Vec<u8>>,
    message_len: usize,
    shared: &Shared,
) -> Result<(), String> {
    loop {
        let due = connection.timeout();
        tokio::select! {
            // The session's keep-alive (a sender is silent between runs).
            () = tokio::time::sleep_until(due.unwrap_or_else(tokio::time::Instant::now)), if due.is_some() => {
                connection.handle_timeout();
                connection.flush().await?;
            }
            batch = batches.recv() => {
                let Some(batch) = batch else {
                    connection.close().await;
                    return Ok(());
                };
                for message in batch.chunks(message_len) {
                    let mut queued = connection.session().send_encoded(message);
                    if queued == Err(SendRefused::Full) {
                        connection.flush().await?;
                        queued = connection.session().send_encoded(message);
                    }
                    queued.map_err(|e| format!("session: {e:?}"))?;
                    Counters::add(&shared.counters.forwards, 1);
                }
                connection.flush().await?;
            }
            incoming = connection.receive() => {
                incoming?;
                while let Some(event) = connection.session().poll_event() {
                    match event {
                        ClientEvent::Error { code, text } => {
                            shared.counters.gateway_error(code, &text);
                        }
                        ClientEvent::Closed { reason } => {
                            return Err(format!("the session closed ({reason:?})"));
                        }
                        _ => {}
                    }
                }
            }
        }
    }
}

/// A sender's handle on its session task.
struct GatewayInjector {
    batches: mpsc::Sender<Vec<u8>>,
    failure: Arc<Mutex<Option<String>>>,
    shared: Arc<Shared>,
}

impl Injector for GatewayInjector {
    fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let mut batch = bytes.to_vec();
        let mut waited: Option<Instant> = None;
        loop {
            match self.batches.try_send(batch) {
                Ok(()) => return Ok(()),
                Err(mpsc::error::TrySendError::Full(back)) => {
                    let since = *waited.get_or_insert_with(|| {
                        Counters::add(&self.shared.counters.queue_full_waits, 1);
                        Instant::now()
                    });
                    if since.elapsed() > Duration::from_millis(limits::SENDER_QUEUE_WAIT_MS_MAX) {
                        return Err(std::io::Error::other(format!(
                            "the gateway session took no packets for {}s",
                            Duration::from_millis(limits::SENDER_QUEUE_WAIT_MS_MAX).as_secs()
                        )));
                    }
                    batch = back;
                    std::thread::sleep(Duration::from_micros(limits::SENDER_QUEUE_POLL_US));
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    let reason = self
                        .failure
                        .lock()
                        .ok()
                        .and_then(|slot| slot.clone())
                        .unwrap_or_else(|| "the gateway session ended".into());
                    return Err(std::io::Error::other(reason));
                }
            }
        }
    }
}

impl GatewayNetwork {
    /// A session of sender `client` at `gateway`, paid for when it has credentials.
    async fn open_sender_session(
        &self,
        client: u32,
        gateway: &GatewayEntry,
    ) -> Result<Connection, String> {
        let Some(sender) = self.senders.get(client as usize) else {
            return open_session(&gateway.url, &random_seed()?, gateway.identity).await;
        };
        let mut connection = open_session(&gateway.url, &sender.seed, gateway.identity).await?;
        if let Some(wallet) = &sender.wallet {
            let target_bytes = if sender.prepaid.load(Ordering::Relaxed) {
                LOW_WATER_BYTES
            } else {
                self.budget_bytes.max(LOW_WATER_BYTES)
            };
            let identity = keyfile::ed25519_public(&sender.seed);
            let counters = &self.shared.counters;
            prepay(
                &mut connection,
                gateway,
                wallet,
                identity,
                target_bytes,
                counters,
            )
            .await?;
            sender.prepaid.store(true, Ordering::Relaxed);
        }
        Ok(connection)
    }
}

impl Driver for GatewayNetwork {
    fn kind(&self) -> &'static str {
        self.kind
    }

    fn nodes(&self) -> &[NodeInfo] {
        &self.nodes
    }

    fn topology(&self) -> Topology {
        match self.feed.current() {
            Some((_, routes)) => routes.topology.clone(),
            // Only a poisoned lock: a plan over no route fails validation with a clear error.
            None => Topology {
                layers: Vec::new(),
                exits: Vec::new(),
                entry_per_client: false,
            },
        }
    }

    fn topology_feed(&self) -> Option<Arc<TopologyFeed>> {
        Some(Arc::clone(&self.feed))
    }

    fn topology_refresh_s(&self) -> Option<f64> {
        self.refresh_s
    }

    fn processes(&self) -> Vec<WatchedProcess> {
        self.testnet
            .as_ref()
            .map(Testnet::processes)
            .unwrap_or_default()
    }

    fn connect(&self, client: u32) -> Result<Box<dyn Injector>, String> {
        let count = self.gateways.len().max(1);
        let gateway = self
            .gateways
            .get(client as usize % count)
            .ok_or("no gateway")?;
        let connection = self
            .runtime
            .block_on(self.open_sender_session(client, gateway))
            .map_err(|e| format!("sender {client} at {}: {e}", gateway.name))?;
        Counters::add(&self.shared.counters.sessions, 1);
        Counters::add(&self.shared.counters.senders, 1);
        let (tx, rx) = mpsc::channel(limits::SENDER_QUEUE_BATCHES);
        let failure = Arc::new(Mutex::new(None));
        let task_failure = Arc::clone(&failure);
        let shared = Arc::clone(&self.shared);
        // Every packet has the same size: the batch splits into equal messages.
        let message_len = FORWARD_OVERHEAD + self.packet_size.packet_len();
        let name = gateway.name.clone();
        self.runtime.spawn(async move {
            if let Err(e) = send_loop(connection, rx, message_len, &shared).await {
                Counters::add(&shared.counters.session_failures, 1);
                shared
                    .counters
                    .note(format!("sender {client} at {name}: {e}"));
                if let Ok(mut slot) = task_failure.lock() {
                    *slot = Some(format!("sender session at {name}: {e}"));
                }
            }
        });
        Ok(Box::new(GatewayInjector {
            batches: tx,
            failure,
            shared: Arc::clone(&self.shared),
        }))
    }

    fn set_run(&self, run: Option<ActiveRun>) {
        let ending = run.is_none();
        if let Ok(mut slot) = self.shared.run.lock() {
            *slot = run;
        }
        if ending {
            // Let the receivers confirm what they got (they do every [`limits::RECEIVER_CONFIRM_INTERVAL_MS`]), so
            // the report's counts are final and the gateways' mailboxes are empty.
            let counters = &self.shared.counters;
            let deadline = Instant::now()
                + Duration::from_millis(limits::RECEIVER_CONFIRM_INTERVAL_MS)
                    * limits::CONFIRM_WAIT_INTERVALS;
            while counters.confirmed.load(Ordering::Relaxed)
                < counters.deliveries.load(Ordering::Relaxed)
                && Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(limits::CONFIRM_POLL_MS));
            }
        }
    }

    fn receiver_stats(&self) -> ReceiverStats {
        self.shared.receiver.snapshot()
    }

    fn check(&mut self) -> Result<(), String> {
        if let Some(reason) = self
            .shared
            .receiver_failure
            .lock()
            .ok()
            .and_then(|slot| slot.clone())
        {
            return Err(reason);
        }
        if let Some(testnet) = &self.testnet {
            testnet.check()?;
        }
        Ok(())
    }

    fn wire(&self, _size: PacketSize) -> Wire {
        Wire::GatewayForward
    }

    fn client_stats(&self) -> Option<ClientStats> {
        Some(self.shared.counters.snapshot())
    }

    fn trace_clients(&self, clients: u32) -> Option<TraceClients> {
        let count = self.gateways.len().max(1);
        let senders = (0..clients as usize)
            .map(|client| {
                let sender = self.senders.get(client)?;
                let gateway = self.gateways.get(client % count)?;
                Some(TraceSender {
                    identity: keyfile::ed25519_public(&sender.seed),
                    gateway: gateway.mix_address,
                })
            })
            .collect::<Option<Vec<_>>>()?;
        Some(TraceClients {
            senders,
            gateways: self.gateways.iter().map(|g| g.mix_address).collect(),
        })
    }

    fn credentials(&self) -> Option<CredentialInfo> {
        let counters = &self.shared.counters;
        self.credentials.clone().map(|info| CredentialInfo {
            spent: counters.credentials_spent.load(Ordering::Relaxed),
            refused: counters.credentials_refused.load(Ordering::Relaxed),
            ..info
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_are_named_and_counted_per_run() {
        let counters = Counters::default();
        counters.gateway_error(error_code::NOT_LAYER1, "warm-up");
        let before = counters.snapshot();
        counters.gateway_error(error_code::NO_BANDWIDTH, "no bandwidth left");
        counters.gateway_error(error_code::NO_BANDWIDTH, "no bandwidth left");
        counters.gateway_error(200, "?");
        let run = counters.snapshot().since(&before);
        assert_eq!(run.gateway_errors.get("no_bandwidth"), Some(&2));
        assert_eq!(run.gateway_errors.get("other"), Some(&1));
        assert!(!run.gateway_errors.contains_key("not_layer1"));
        // Only this run's texts, each once.
        assert_eq!(run.errors.len(), 2, "{:?}", run.errors);
        assert!(run.errors[0].contains("no_bandwidth (4)"));
        let warning = crate::report::gateway_error_warning("no_bandwidth", 2);
        assert!(warning.contains("NO_BANDWIDTH") && warning.contains("credentials"));
    }

    #[test]
    fn metrics_urls_become_addresses() {
        assert_eq!(
            metrics_address("http://127.0.0.1:9100/metrics"),
            Some("127.0.0.1:9100".parse().unwrap())
        );
        assert_eq!(metrics_address("https://x/metrics"), None);
        assert_eq!(metrics_address("http://127.0.0.1/metrics"), None);
    }
}

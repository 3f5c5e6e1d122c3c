//! Client sessions over WebSocket, on the gateway's tokio runtime (separate from the engine
//! cores). The protocol (handshake and its deadline, sealing, first-hop policy, metering,
//! delivery order) is `lethe_proto::GatewaySession`; this module is its driver: the socket,
//! the pending-connection bounds, the mailbox, balances and egress.
//!
//! Until its handshake completes a connection is *pending*: it holds one of
//! `pending_connections_max` slots (at the cap the oldest pending connection is closed to make
//! room) and one of `pending_connections_per_ip_max` for its source (beyond, it is closed at
//! once), and must finish the WebSocket upgrade, hello and auth before one deadline
//! (`handshake_timeout_ms`). Its bytes pass a [`Gate`] that refuses an upgrade request over
//! [`limits::GATEWAY_UPGRADE_REQUEST_BYTES_MAX`] and any frame over [`limits::GATEWAY_PENDING_FRAME_BYTES_MAX`] before auth,
//! so an unauthenticated peer costs a few KiB (a small read buffer, [`limits::GATEWAY_WS_READ_BUFFER_BYTES`])
//! and makes tungstenite reserve nothing larger. Only authenticated sessions count against
//! `sessions_max`.
//!
//! After the handshake the client is registered in the mailbox writer's memory (a durable
//! record in the `clients` table follows only once it uses the gateway: see
//! [`super::mailbox`]), becomes the identity's only live session (a new one replaces the old),
//! and receives `Welcome{stored}`, then its stored deliveries in id order (reads of at most
//! [`limits::MAILBOX_FETCH_ROWS_MAX`]), then live ones. Live deliveries come from the mailbox writer through a
//! bounded per-session queue; when it is full the writer marks the session lagged and the
//! session re-reads the mailbox from its cursor, so nothing is skipped and nothing is sent
//! twice in one session (ids only grow).
//!
//! A malformed or undecryptable message gets an `Error` and closes that session only; a
//! refused forward (first hop not in layer 1) gets an `Error` and the session goes on.
//!
//! An authenticated session silent both ways (no client message, nothing delivered) for
//! `session_idle_timeout_s` is closed by its core's timer and counted
//! (`sessions_idle_closed_total`): otherwise only `sessions_max` would bound silent sessions.
//! Clients keep theirs busy with cover traffic, or the client session's keep-alive.
//!
//! With admission on (see [`super::admission`]), the session sends `Bandwidth{remaining}`
//! right after `Welcome`; each `Forward` is charged its packet length, and refused with
//! `Error{NO_BANDWIDTH}` when the balance does not cover it; `Credential{bytes}` is verified
//! and credited (`Bandwidth{remaining}`) or refused (`Error{BAD_CREDENTIAL}`), and the session
//! goes on either way. `Bandwidth` is also sent after every `FLUSH_EVERY_BYTES` charged (1 MiB).

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use lethe_crypto::sphinx::address;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::WebSocketStream;
use zeroize::Zeroizing;

use lethe_proto::duration_us;
use lethe_proto::gateway_session::{CloseReason, GatewayConfig, GatewayEvent, Refusals};
use lethe_proto::GatewaySession;

use super::admission::{Admission, Refusal};
use super::egress::Egress;
use super::live::{Delivery, LiveSessions};
use super::mailbox::{Command, Reader};
use super::metrics::GatewayMetrics;
use crate::limits;
use crate::proto::handshake::{CLIENT_AUTH_LEN, CLIENT_HELLO_LEN};
use crate::proto::messages::error_code;
use crate::topology::{freshness, Freshness, Topology};
use crate::ws::{self, ReadError};

/// The messages of the handshake a client sends: hello, then auth.
const HANDSHAKE_MESSAGES: u8 = 2;
const _: () = assert!(
    CLIENT_HELLO_LEN as u64 <= limits::GATEWAY_PENDING_FRAME_BYTES_MAX
        && CLIENT_AUTH_LEN as u64 <= limits::GATEWAY_PENDING_FRAME_BYTES_MAX
);

type Ws = WebSocketStream<Gate<TcpStream>>;

/// Which first hops clients may forward to.
///
/// A client and its gateway fetch documents on their own schedules, so around a new epoch one of
/// them holds the newer document: a first hop of the previous document (still valid) is
/// accepted, and a first hop the gateway does not know asks the refresh task for a fetch now
/// (`stale`), instead of refusing the client's packets until the next scheduled fetch.
pub struct FirstHops {
    allow_any: bool,
    held: RwLock<Held>,
    /// Woken when a client named a first hop the held documents do not list.
    pub stale: Notify,
}

/// The document in use and the one before it (a different epoch).
#[derive(Default)]
struct Held {
    current: Option<Topology>,
    previous: Option<Topology>,
}

impl FirstHops {
    pub fn new(allow_any: bool) -> FirstHops {
        FirstHops {
            allow_any,
            held: RwLock::new(Held::default()),
            stale: Notify::new(),
        }
    }

    pub fn set_topology(&self, topology: Topology) {
        if let Ok(mut held) = self.held.write() {
            let replaced = held.current.replace(topology);
            let new_epoch = held.current.as_ref().map(|t| t.epoch);
            if let Some(old) = replaced.filter(|old| Some(old.epoch) != new_epoch) {
                held.previous = Some(old);
            }
        }
    }

    pub fn epoch(&self) -> Option<u64> {
        self.held.read().ok()?.current.as_ref().map(|t| t.epoch)
    }

    /// The socket address to forward to, or why not.
    pub fn check(&self, first_hop: &[u8; 32]) -> Result<SocketAddr, &'static str> {
        let addr = address::decode(first_hop).map_err(|_| "first hop is not a node address")?;
        if self.allow_any {
            return Ok(addr);
        }
        let held = self.held.read().map_err(|_| "topology unavailable")?;
        let now_s = crate::topology::now_s();
        let verdict = match held.current.as_ref() {
            // Within the grace the last valid document still routes (authorities may be
            // down); after it, nothing vouches for the first hops.
            Some(t) if matches!(freshness(t, now_s), Freshness::Expired { .. }) => {
                Err("the topology has expired beyond its grace: forwarding is refused")
            }
            Some(t) if t.is_mixnode(&addr) => Ok(addr),
            // A client still on the previous document (its refresh comes later than ours).
            Some(_)
                if held
                    .previous
                    .as_ref()
                    .is_some_and(|p| now_s <= p.valid_until_s && p.is_mixnode(&addr)) =>
            {
                Ok(addr)
            }
            Some(_) => Err("first hop is not a mixnode of the current topology"),
            None => Err("no verified topology: forwarding is refused"),
        };
        if verdict.is_err() {
            // Perhaps the client's document is newer than ours: fetch now (rate-limited by
            // the refresh task).
            self.stale.notify_one();
        }
        verdict
    }
}

pub struct SessionSettings {
    /// Authenticated sessions at once.
    pub sessions_max: u32,
    /// The deadline of a connection's whole unauthenticated phase (upgrade, hello, auth).
    pub handshake_timeout: Duration,
    /// An authenticated session silent both ways for this long is closed.
    pub idle_timeout: Duration,
}

/// Everything session tasks share.
pub struct Shared {
    pub identity_seed: Zeroizing<[u8; 32]>,
    pub live: Arc<LiveSessions>,
    pub reader: Arc<Reader>,
    pub commands: crossbeam_channel::Sender<Command>,
    pub egress: Arc<Egress>,
    pub first_hops: Arc<FirstHops>,
    pub metrics: Arc<GatewayMetrics>,
    pub settings: SessionSettings,
    /// Authenticated sessions open now (against `sessions_max`).
    pub connections: AtomicU32,
    /// Unauthenticated connections open now.
    pub pending: Arc<PendingConnections>,
    /// Admission and metering; `None`: open admission.
    pub admission: Option<Arc<Admission>>,
    /// `--trace`: the client side's packet events.
    pub trace: Option<crate::trace::ClientSideTrace>,
}

/// Accepts clients until the runtime shuts down.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    // Runs for the life of the runtime; a failed accept is retried after a pause.
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(limits::ACCEPT_RETRY_MS)).await;
                continue;
            }
        };
        let Some(slot) = shared.pending.admit(peer.ip()) else {
            GatewayMetrics::add(&shared.metrics.pending_refused_per_ip, 1);
            continue; // dropped: closes the connection
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            connection(stream, slot, &shared).await;
        });
    }
}

fn ws_config() -> WebSocketConfig {
    ws::config().read_buffer_size(limits::GATEWAY_WS_READ_BUFFER_BYTES)
}

/// Why a pending connection's step did not finish.
enum Cut {
    /// Closed to make room for a newer pending connection.
    Evicted,
    /// The handshake deadline passed.
    TimedOut,
}

/// Runs one step of the pending phase until it ends, the deadline passes, or the connection
/// is evicted.
async fn pending_step<F: Future>(
    slot: &PendingSlot,
    deadline: Instant,
    step: F,
) -> Result<F::Output, Cut> {
    tokio::select! {
        biased;
        () = slot.evicted() => Err(Cut::Evicted),
        done = tokio::time::timeout_at(deadline, step) => done.map_err(|_| Cut::TimedOut),
    }
}

async fn connection(stream: TcpStream, slot: PendingSlot, shared: &Shared) {
    let _ = stream.set_nodelay(true);
    let metrics = &shared.metrics;
    let deadline = Instant::now() + shared.settings.handshake_timeout;
    let gate = Gate::new(stream, shared.metrics.clone());
    let upgrade = tokio_tungstenite::accept_async_with_config(gate, Some(ws_config()));
    let mut ws = match pending_step(&slot, deadline, upgrade).await {
        Ok(Ok(ws)) => ws,
        // Evictions are counted when they are decided.
        Err(Cut::Evicted) => return,
        Err(Cut::TimedOut) => {
            GatewayMetrics::add(&metrics.handshakes_timed_out, 1);
            GatewayMetrics::add(&metrics.handshakes_failed, 1);
            return;
        }
        Ok(Err(_)) => {
            GatewayMetrics::add(&metrics.handshakes_failed, 1);
            return;
        }
    };
    let config = GatewayConfig {
        handshake_timeout_us: duration_us(shared.settings.handshake_timeout),
        idle_timeout_us: duration_us(shared.settings.idle_timeout),
        metered: shared.admission.is_some(),
    };
    let mut link = Link {
        core: GatewaySession::new(now_us(), config, *shared.identity_seed),
        shared,
        counted: Refusals::default(),
    };
    let client = match pending_step(&slot, deadline, link.handshake(&mut ws)).await {
        Ok(Some(client)) => client,
        Ok(None) => {
            GatewayMetrics::add(&metrics.handshakes_failed, 1);
            link.transmit(&mut ws).await;
            return;
        }
        Err(Cut::Evicted) => return,
        // Closed without a close frame: a peer that stalls may not read one either.
        Err(Cut::TimedOut) => {
            GatewayMetrics::add(&metrics.handshakes_timed_out, 1);
            GatewayMetrics::add(&metrics.handshakes_failed, 1);
            return;
        }
    };
    drop(slot);
    // A client that has a session already replaces it rather than adding one.
    let open = shared.connections.fetch_add(1, Ordering::AcqRel);
    if open >= shared.settings.sessions_max && !shared.live.is_live(&client) {
        shared.connections.fetch_sub(1, Ordering::AcqRel);
        GatewayMetrics::add(&metrics.sessions_refused, 1);
        let text = "gateway full: try again later";
        link.core
            .refuse(error_code::OVERLOADED, text, CloseReason::Again);
        link.transmit(&mut ws).await;
        return;
    }
    link.established(&mut ws, client).await;
    shared.connections.fetch_sub(1, Ordering::AcqRel);
}

/// The sessions' clock: µs since the first session began (monotonic).
fn now_us() -> u64 {
    duration_us(clock_start().elapsed())
}

/// The instant a time of the sessions' clock stands for (a core's timer).
fn instant_at(us: u64) -> Instant {
    Instant::from_std(clock_start() + Duration::from_micros(us))
}

fn clock_start() -> std::time::Instant {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    *START.get_or_init(std::time::Instant::now)
}

/// One connection: the protocol core ([`GatewaySession`]) and what it needs from the gateway
/// (mailbox, balances, egress, metrics).
struct Link<'a> {
    core: GatewaySession,
    shared: &'a Shared,
    /// The core's refusals already added to the metrics.
    counted: Refusals,
}

/// How the established phase of a session goes on after one step.
enum Next {
    Continue,
    Close,
}

impl Link<'_> {
    /// Feeds the handshake messages to the core until it authenticated the client (`Some`) or
    /// refused it (`None`, its close queued); the caller bounds it with the deadline.
    async fn handshake(&mut self, ws: &mut Ws) -> Option<[u8; 32]> {
        loop {
            if !self.transmit(ws).await {
                return None;
            }
            while let Some(event) = self.core.poll_event() {
                match event {
                    GatewayEvent::Authenticated { client } => return Some(client),
                    GatewayEvent::Closed { .. } => return None,
                    _ => {}
                }
            }
            let message = ws::next_binary(ws).await;
            let now_us = now_us();
            match message {
                Ok(bytes) => {
                    let first_hops = self.shared.first_hops.as_ref();
                    self.core
                        .handle_message(now_us, &bytes, &mut rand::rng(), first_hops);
                }
                Err(e) => self.core.handle_violation(e.violation()),
            }
        }
    }

    /// Sends what the core queued; `false` once the connection is closed or broken.
    async fn transmit(&mut self, ws: &mut Ws) -> bool {
        ws::write_transmits(ws, &mut self.core).await.is_ok()
    }

    async fn established(&mut self, ws: &mut Ws, client: [u8; 32]) {
        let shared = self.shared;
        if let Err(text) = self.register(client).await {
            self.core
                .refuse(error_code::OVERLOADED, text, CloseReason::Again);
            self.transmit(ws).await;
            return;
        }
        let (queue, outbound) = mpsc::channel(limits::GATEWAY_SESSION_QUEUE_MAX);
        let lagged = Arc::new(AtomicBool::new(false));
        let replaced = Arc::new(Notify::new());
        let generation = shared
            .live
            .insert(client, queue, lagged.clone(), replaced.clone());
        GatewayMetrics::add(&shared.metrics.sessions_started, 1);
        GatewayMetrics::add(&shared.metrics.sessions_active, 1);
        if self.open(client).await {
            self.run(ws, client, outbound, &lagged, &replaced).await;
        }
        // The charges the session made and did not write yet (its last flush).
        let unwritten = self.core.close(CloseReason::Normal, "session ends");
        if let (Some(admission), true) = (shared.admission.clone(), unwritten > 0) {
            if admission.charge(client, unwritten).await.is_err() {
                GatewayMetrics::add(&shared.metrics.database_errors, 1);
            }
        }
        shared.live.remove(&client, generation);
        shared
            .metrics
            .sessions_active
            .fetch_sub(1, Ordering::Relaxed);
    }

    /// Makes the mailbox writer store mail for this client (in memory: a bare handshake proves
    /// only that a key was generated, so it creates no durable state) before anything is
    /// delivered.
    async fn register(&self, client: [u8; 32]) -> Result<(), &'static str> {
        let (done, committed) = oneshot::channel();
        let command = Command::Register { client, done };
        if self.shared.commands.try_send(command).is_err() {
            GatewayMetrics::add(&self.shared.metrics.commands_dropped, 1);
            return Err("gateway overloaded: try again");
        }
        match tokio::time::timeout(
            Duration::from_millis(limits::GATEWAY_REGISTER_TIMEOUT_MS),
            committed,
        )
        .await
        {
            Ok(Ok(())) => Ok(()),
            _ => Err("gateway cannot register the client now: try again"),
        }
    }

    /// Welcomes the client with its stored count (and balance); `false` if that failed.
    async fn open(&mut self, client: [u8; 32]) -> bool {
        let reader = self.shared.reader.clone();
        let stored = tokio::task::spawn_blocking(move || reader.count(&client)).await;
        let Ok(Ok(stored)) = stored else {
            GatewayMetrics::add(&self.shared.metrics.database_errors, 1);
            return false;
        };
        let balance = match self.shared.admission.clone() {
            None => None,
            Some(admission) => match admission.balance(client).await {
                Ok(balance) => Some(balance),
                Err(()) => {
                    GatewayMetrics::add(&self.shared.metrics.database_errors, 1);
                    return false;
                }
            },
        };
        self.core
            .open(stored, balance, self.shared.first_hops.as_ref());
        // Messages the client pipelined before its welcome are handled by now.
        matches!(self.step(client).await, Next::Continue)
    }

    /// Answers the core's events and sends what it queued.
    async fn step(&mut self, client: [u8; 32]) -> Next {
        let shared = self.shared;
        let metrics = &shared.metrics;
        while let Some(event) = self.core.poll_event() {
            match event {
                GatewayEvent::Forward { next_hop, packet } => {
                    if shared.admission.is_some() {
                        let bytes = packet.len() as u64;
                        GatewayMetrics::add(&metrics.bandwidth_charged_bytes, bytes);
                    }
                    let sent = shared.egress.send(next_hop, &packet);
                    if let Some(trace) = &shared.trace {
                        let outcome = sent.as_ref().map(|_| ()).map_err(|_| "overloaded");
                        trace.relayed(&packet, next_hop, outcome);
                    }
                    match sent {
                        Ok(()) => GatewayMetrics::add(&metrics.forwarded_from_clients, 1),
                        // Paid for: like a packet lost on the way.
                        Err(e) => self
                            .core
                            .refuse_forward(error_code::OVERLOADED, &e.to_string()),
                    }
                }
                GatewayEvent::Confirm { ids } => {
                    let command = Command::Confirm { client, ids };
                    if shared.commands.try_send(command).is_err() {
                        // Not deleted: the rows are delivered again on the next connection.
                        GatewayMetrics::add(&metrics.commands_dropped, 1);
                    }
                }
                GatewayEvent::Admit { client } => {
                    // A full queue: counted; the client is recorded at its next session.
                    if shared.commands.try_send(Command::Admit { client }).is_err() {
                        GatewayMetrics::add(&metrics.commands_dropped, 1);
                    }
                }
                GatewayEvent::Credential { bytes } => {
                    let Some(admission) = shared.admission.clone() else {
                        continue;
                    };
                    let answer = match admission.credit(client, bytes).await {
                        Ok(stored) => {
                            GatewayMetrics::add(&metrics.credentials_accepted, 1);
                            Ok(stored)
                        }
                        Err(Refusal::Bad(text)) => {
                            GatewayMetrics::add(&metrics.credentials_refused, 1);
                            Err((error_code::BAD_CREDENTIAL, text))
                        }
                        Err(Refusal::Unavailable(text)) => {
                            GatewayMetrics::add(&metrics.credentials_refused, 1);
                            Err((error_code::OVERLOADED, text.to_string()))
                        }
                    };
                    self.core.credited(answer);
                }
                GatewayEvent::Charge { bytes } => {
                    let Some(admission) = shared.admission.clone() else {
                        continue;
                    };
                    match admission.charge(client, bytes).await {
                        Ok(stored) => self.core.balance(stored),
                        // Kept in memory: written with the next charge.
                        Err(()) => {
                            GatewayMetrics::add(&metrics.database_errors, 1);
                            self.core.charge_failed();
                        }
                    }
                }
                GatewayEvent::Closed {
                    reason: CloseReason::Idle,
                } => GatewayMetrics::add(&metrics.sessions_idle_closed, 1),
                GatewayEvent::Authenticated { .. } | GatewayEvent::Closed { .. } => {}
            }
        }
        let (now, counted) = (self.core.refusals(), self.counted);
        GatewayMetrics::add(
            &metrics.forward_refused,
            now.not_layer1 - counted.not_layer1,
        );
        GatewayMetrics::add(
            &metrics.forwards_refused_bandwidth,
            now.no_bandwidth - counted.no_bandwidth,
        );
        GatewayMetrics::add(&metrics.session_errors, now.malformed - counted.malformed);
        self.counted = now;
        Next::Continue
    }

    /// Sends what the core queued, then answers its events; `Close` when the session ended.
    async fn flush(&mut self, ws: &mut Ws, client: [u8; 32]) -> Next {
        if let Next::Close = self.step(client).await {
            return Next::Close;
        }
        if self.transmit(ws).await {
            Next::Continue
        } else {
            Next::Close
        }
    }

    /// Sends the next mailbox rows after the cursor; `Ok(true)` if there may be more.
    async fn send_backlog(&mut self, ws: &mut Ws, client: [u8; 32]) -> Result<bool, ()> {
        let reader = self.shared.reader.clone();
        let after = self.core.cursor();
        let rows = tokio::task::spawn_blocking(move || {
            reader.fetch(&client, after, limits::MAILBOX_FETCH_ROWS_MAX)
        })
        .await
        .map_err(|_| ())?;
        let Ok(rows) = rows else {
            GatewayMetrics::add(&self.shared.metrics.database_errors, 1);
            return Err(());
        };
        let more = rows.len() as u32 >= limits::MAILBOX_FETCH_ROWS_MAX;
        for delivery in rows {
            GatewayMetrics::add(&self.shared.metrics.stored_delivered, 1);
            self.deliver(ws, delivery).await?;
        }
        Ok(more)
    }

    async fn deliver(&mut self, ws: &mut Ws, delivery: Delivery) -> Result<(), ()> {
        let Delivery {
            id,
            kind,
            identifier,
            bytes,
        } = delivery;
        // `Full` cannot happen: queued messages are sent before the next delivery.
        let _ = self.core.deliver(id, kind, identifier, bytes);
        if self.transmit(ws).await {
            Ok(())
        } else {
            Err(())
        }
    }

    async fn run(
        &mut self,
        ws: &mut Ws,
        client: [u8; 32],
        mut outbound: mpsc::Receiver<Delivery>,
        lagged: &AtomicBool,
        replaced: &Notify,
    ) {
        if !self.transmit(ws).await {
            return;
        }
        let mut backlog = true;
        // The core's idle timer; reset only when its deadline moves.
        let timer = tokio::time::sleep_until(Instant::now());
        tokio::pin!(timer);
        // Runs until the client leaves, errs, or is replaced; every turn does bounded work.
        loop {
            if backlog {
                lagged.store(false, Ordering::Release);
                match self.send_backlog(ws, client).await {
                    Ok(more) => backlog = more,
                    Err(()) => return,
                }
            }
            let due = self.core.poll_timeout().map(instant_at);
            if let Some(due) = due.filter(|&due| due != timer.deadline()) {
                timer.as_mut().reset(due);
            }
            tokio::select! {
                biased;
                () = replaced.notified() => {
                    let text = "replaced by a newer session of this identity";
                    self.core.close(CloseReason::Normal, text);
                    self.transmit(ws).await;
                    return;
                }
                incoming = ws::next_binary(ws) => {
                    match incoming {
                        Ok(bytes) => {
                            let first_hops = self.shared.first_hops.as_ref();
                            self.core.handle_message(now_us(), &bytes, &mut rand::rng(), first_hops);
                        }
                        Err(e @ ReadError::Text) => self.core.handle_violation(e.violation()),
                        Err(ReadError::Closed { .. } | ReadError::Socket(_)) => {
                            self.core.handle_transport_closed();
                        }
                    }
                    if let Next::Close = self.flush(ws, client).await {
                        return;
                    }
                }
                delivery = outbound.recv(), if !backlog => {
                    let Some(delivery) = delivery else { return };
                    if self.deliver(ws, delivery).await.is_err() {
                        return;
                    }
                    if lagged.load(Ordering::Acquire) {
                        backlog = true;
                    }
                }
                () = &mut timer, if due.is_some() => {
                    self.core.handle_timeout(now_us());
                    if let Next::Close = self.flush(ws, client).await {
                        return;
                    }
                }
                () = std::future::ready(()), if backlog => {}
            }
        }
    }
}

impl lethe_proto::gateway_session::FirstHops for FirstHops {
    fn check(&self, first_hop: &[u8; 32]) -> Result<SocketAddr, &'static str> {
        FirstHops::check(self, first_hop)
    }
}

/// The unauthenticated connections: a cap on all of them and one per source.
pub struct PendingConnections {
    table: Mutex<PendingTable>,
    max: usize,
    per_source_max: u32,
    metrics: Arc<GatewayMetrics>,
}

#[derive(Default)]
struct PendingTable {
    next_id: u64,
    /// The most pending connections at once since memory was last handed back.
    peak: usize,
    last_trim: Option<Instant>,
    /// Oldest first (ids only grow): the source and the eviction signal of each connection.
    by_age: BTreeMap<u64, (IpAddr, Arc<Notify>)>,
    /// Pending connections per source; a source with none has no entry.
    per_source: HashMap<IpAddr, u32>,
}

impl PendingTable {
    fn remove(&mut self, id: u64) -> Option<Arc<Notify>> {
        let (source, evict) = self.by_age.remove(&id)?;
        if let Some(count) = self.per_source.get_mut(&source) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.per_source.remove(&source);
            }
        }
        Some(evict)
    }
}

/// What a source is counted as: an IPv4 address, or an IPv6 /64 (one host's usual share).
fn source_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let [a, b, c, d, ..] = v6.segments();
                IpAddr::V6(Ipv6Addr::new(a, b, c, d, 0, 0, 0, 0))
            }
        },
    }
}

impl PendingConnections {
    pub fn new(max: u32, per_source_max: u32, metrics: Arc<GatewayMetrics>) -> Arc<Self> {
        Arc::new(PendingConnections {
            table: Mutex::new(PendingTable::default()),
            max: max.max(1) as usize,
            per_source_max: per_source_max.max(1),
            metrics,
        })
    }

    fn table(&self) -> std::sync::MutexGuard<'_, PendingTable> {
        // Nothing panics while the lock is held; a poisoned table is still consistent.
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A slot for a new connection from `ip`, or `None` if its source has its share. At the
    /// global cap the oldest pending connection is told to close (counted), and its slot is
    /// taken now.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<PendingSlot> {
        let source = source_of(ip);
        let mut table = self.table();
        if table.per_source.get(&source).copied().unwrap_or(0) >= self.per_source_max {
            return None;
        }
        while table.by_age.len() >= self.max {
            let Some((&oldest, _)) = table.by_age.first_key_value() else {
                break;
            };
            if let Some(evict) = table.remove(oldest) {
                // Stored as a permit if the connection is not waiting yet.
                evict.notify_one();
                GatewayMetrics::add(&self.metrics.pending_evicted, 1);
            }
        }
        let id = table.next_id;
        table.next_id += 1;
        let evicted = Arc::new(Notify::new());
        table.by_age.insert(id, (source, evicted.clone()));
        *table.per_source.entry(source).or_insert(0) += 1;
        table.peak = table.peak.max(table.by_age.len());
        self.publish(&table);
        Some(PendingSlot {
            connections: self.clone(),
            id,
            evicted,
        })
    }

    fn release(&self, id: u64) {
        let mut table = self.table();
        table.remove(id);
        self.publish(&table);
        let open = table.by_age.len();
        let drained = table.peak >= limits::GATEWAY_TRIM_PENDING_MIN && open <= table.peak / 4;
        let due = table.last_trim.is_none_or(|at| {
            at.elapsed() >= Duration::from_millis(limits::GATEWAY_TRIM_INTERVAL_MS)
        });
        if drained && due {
            table.peak = open;
            table.last_trim = Some(Instant::now());
            drop(table);
            hand_back_memory();
        }
    }

    fn publish(&self, table: &PendingTable) {
        self.metrics
            .pending_connections
            .store(table.by_age.len() as u64, Ordering::Relaxed);
    }
}

/// Returns free heap memory to the OS. glibc's `free` gives back only the top of an arena;
/// the small buffers of thousands of closed connections sit between live allocations and
/// would stay resident: after a burst of silent WebSockets closes, almost none of their memory
/// comes back without a trim, most of it with one. `malloc_trim` releases every free page; it
/// walks the arenas, so it runs off the async workers.
fn hand_back_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let trim = || {
            // SAFETY: malloc_trim only inspects and releases the allocator's free memory.
            unsafe { libc::malloc_trim(0) };
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(trim)),
            Err(_) => trim(),
        }
    }
}

/// A pending connection's place; dropping it (the handshake ended, however) frees it.
pub struct PendingSlot {
    connections: Arc<PendingConnections>,
    id: u64,
    evicted: Arc<Notify>,
}

impl PendingSlot {
    /// Resolves once the connection was evicted to make room for a newer one.
    async fn evicted(&self) {
        self.evicted.notified().await;
    }
}

impl Drop for PendingSlot {
    fn drop(&mut self) {
        self.connections.release(self.id);
    }
}

/// A client connection's byte stream, checked while the peer is unauthenticated: the HTTP
/// upgrade request may be at most [`limits::GATEWAY_UPGRADE_REQUEST_BYTES_MAX`], then, until the handshake's
/// two messages (hello, auth) are complete, every frame at most [`limits::GATEWAY_PENDING_FRAME_BYTES_MAX`]
/// and all of them [`limits::GATEWAY_PENDING_FRAMES_BYTES_MAX`]. A violation is a read error (the bytes never
/// reach tungstenite, which would otherwise reserve a buffer of the length a frame header
/// declares). After the auth message bytes pass unchecked: tungstenite's own limits
/// ([`WS_MESSAGE_BYTES_MAX`](crate::proto::WS_MESSAGE_BYTES_MAX)) apply, and the session code reads the next frame only once the
/// auth verified. tokio-tungstenite cannot change a stream's limits after the handshake, and
/// swapping streams would lose what a client pipelines after its auth (the client library
/// does), hence the check beneath it.
pub struct Gate<S> {
    inner: S,
    scan: Scan,
    metrics: Arc<GatewayMetrics>,
}

impl<S> Gate<S> {
    pub fn new(inner: S, metrics: Arc<GatewayMetrics>) -> Gate<S> {
        Gate {
            inner,
            scan: Scan::Request {
                bytes: 0,
                matched: 0,
            },
            metrics,
        }
    }
}

/// Where a [`Gate`] is in the client's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Scan {
    /// The HTTP request: bytes so far, and how much of its end (`\r\n\r\n`) was just seen.
    Request { bytes: usize, matched: u8 },
    /// WebSocket frames before auth.
    Frames(Frames),
    /// Past the handshake messages: unchecked.
    Open,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Frames {
    /// Frame bytes so far.
    bytes: usize,
    /// The current frame header (at most 2 + 8 + 4 bytes), `have` bytes of it so far.
    header: [u8; 14],
    have: usize,
    /// Payload bytes of the current frame still to come.
    payload_left: u64,
    /// The current frame ends a data message (FIN on a data or continuation frame).
    ends_message: bool,
    /// Data messages complete so far.
    messages: u8,
}

impl Frames {
    /// Takes the bytes at the start of `input` that belong to the handshake messages; returns
    /// how many, and whether the last one completed the handshake messages.
    fn feed(&mut self, input: &[u8]) -> Result<(usize, bool), &'static str> {
        let mut used = 0;
        while used < input.len() {
            if self.payload_left > 0 {
                let rest = (input.len() - used) as u64;
                let take = self.payload_left.min(rest) as usize;
                self.count(take)?;
                used += take;
                self.payload_left -= take as u64;
                if self.payload_left == 0 && self.end_frame() {
                    return Ok((used, true));
                }
                continue;
            }
            let Some(&byte) = input.get(used) else { break };
            used += 1;
            self.count(1)?;
            if let Some(slot) = self.header.get_mut(self.have) {
                *slot = byte;
            }
            self.have += 1;
            let Some(length) = self.header_length() else {
                continue;
            };
            if length > limits::GATEWAY_PENDING_FRAME_BYTES_MAX {
                return Err("frame too large before authentication");
            }
            self.have = 0;
            self.payload_left = length;
            self.ends_message = self.header[0] & 0x80 != 0 && self.header[0] & 0x0f < 8;
            if length == 0 && self.end_frame() {
                return Ok((used, true));
            }
        }
        Ok((used, false))
    }

    fn count(&mut self, n: usize) -> Result<(), &'static str> {
        self.bytes += n;
        if self.bytes > limits::GATEWAY_PENDING_FRAMES_BYTES_MAX {
            return Err("too many bytes before authentication");
        }
        Ok(())
    }

    /// The payload length once the header is complete.
    fn header_length(&self) -> Option<u64> {
        if self.have < 2 {
            return None;
        }
        let [_, second, rest @ ..] = self.header;
        let extended = match second & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let mask = if second & 0x80 != 0 { 4 } else { 0 };
        if self.have < 2 + extended + mask {
            return None;
        }
        Some(match second & 0x7f {
            126 => u64::from(u16::from_be_bytes([rest[0], rest[1]])),
            127 => u64::from_be_bytes([
                rest[0], rest[1], rest[2], rest[3], rest[4], rest[5], rest[6], rest[7],
            ]),
            short => u64::from(short),
        })
    }

    /// A frame's payload is complete; `true` if that completed the handshake messages.
    fn end_frame(&mut self) -> bool {
        if self.ends_message {
            self.messages += 1;
        }
        self.messages >= HANDSHAKE_MESSAGES
    }
}

impl Scan {
    /// Checks bytes read from the client, in order.
    fn feed(&mut self, mut input: &[u8]) -> Result<(), &'static str> {
        while !input.is_empty() {
            match self {
                Scan::Open => return Ok(()),
                Scan::Request { bytes, matched } => {
                    let Some((&byte, rest)) = input.split_first() else {
                        break;
                    };
                    input = rest;
                    *bytes += 1;
                    if *bytes > limits::GATEWAY_UPGRADE_REQUEST_BYTES_MAX {
                        return Err("upgrade request too long");
                    }
                    *matched = match (*matched, byte) {
                        (0 | 2, b'\r') | (1 | 3, b'\n') => *matched + 1,
                        (_, b'\r') => 1,
                        _ => 0,
                    };
                    if *matched == 4 {
                        *self = Scan::Frames(Frames::default());
                    }
                }
                Scan::Frames(frames) => {
                    let (used, done) = frames.feed(input)?;
                    input = input.get(used..).unwrap_or_default();
                    if done {
                        *self = Scan::Open;
                    }
                }
            }
        }
        Ok(())
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Gate<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {}
            other => return other,
        }
        if this.scan == Scan::Open {
            return Poll::Ready(Ok(()));
        }
        let fresh = buf.filled().get(before..).unwrap_or_default();
        if let Err(reason) = this.scan.feed(fresh) {
            GatewayMetrics::add(&this.metrics.pending_oversize, 1);
            // Not handed on: the caller sees an error instead of these bytes.
            buf.set_filled(before);
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, reason)));
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Gate<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_hops_refuse_without_topology() {
        let hop = address::encode(&"127.0.0.1:1789".parse().unwrap());
        assert!(FirstHops::new(false).check(&hop).is_err());
        assert_eq!(
            FirstHops::new(true).check(&hop),
            Ok("127.0.0.1:1789".parse().unwrap())
        );
        assert!(FirstHops::new(true).check(&[0xff; 32]).is_err());
    }

    #[test]
    fn first_hops_follow_the_topology() {
        let mix = |port: u16, role| crate::topology::Descriptor {
            identity: String::new(),
            sphinx_key: String::new(),
            rotation_id: 1,
            mix_address: SocketAddr::from(([127, 0, 0, 1], port)),
            role,
            client_url: None,
            metrics_url: None,
            family: None,
            issued_at_s: 0,
        };
        let now = crate::topology::now_s();
        let mut topology = Topology {
            epoch: 1,
            issued_at_s: now,
            valid_until_s: now + 600,
            layers: vec![
                vec![mix(1, crate::topology::Role::Mixnode)],
                vec![mix(2, crate::topology::Role::Mixnode)],
                vec![],
            ],
            gateways: vec![mix(3, crate::topology::Role::Gateway)],
            shared_random: None,
            layer_period: None,
            nodes_per_ip_max: None,
            admission: None,
        };
        let first_hops = FirstHops::new(false);
        first_hops.set_topology(topology.clone());
        let hop = |port: u16| address::encode(&SocketAddr::from(([127, 0, 0, 1], port)));
        assert!(first_hops.check(&hop(1)).is_ok());
        assert!(
            first_hops.check(&hop(2)).is_ok(),
            "a mixnode of any layer is a first hop (layers are redrawn at each layer period)"
        );
        assert!(
            first_hops.check(&hop(3)).is_err(),
            "a gateway is not a first hop"
        );
        assert_eq!(first_hops.epoch(), Some(1));
        topology.valid_until_s = now.saturating_sub(1);
        first_hops.set_topology(topology.clone());
        assert!(
            first_hops.check(&hop(1)).is_ok(),
            "an expired topology still routes within the grace"
        );
        topology.valid_until_s = now.saturating_sub(limits::CONSENSUS_GRACE_S + 5);
        first_hops.set_topology(topology.clone());
        assert!(
            first_hops.check(&hop(1)).is_err(),
            "a topology expired beyond the grace is refused"
        );

        // Epochs 1 -> 2 take mix 1 out and put mixes 4 and 5 in: a client still on epoch 1
        // keeps its first hop for as long as epoch 1 is valid; epoch 3 retires epoch 1.
        let first_hops = FirstHops::new(false);
        let mut epoch = |n: u64, layer1: u16, layer2: u16, valid_until_s: u64| {
            topology.epoch = n;
            topology.valid_until_s = valid_until_s;
            topology.layers[0] = vec![mix(layer1, crate::topology::Role::Mixnode)];
            topology.layers[1] = vec![mix(layer2, crate::topology::Role::Mixnode)];
            first_hops.set_topology(topology.clone());
        };
        epoch(1, 1, 2, now + 600);
        epoch(2, 4, 5, now + 600);
        assert!(first_hops.check(&hop(4)).is_ok());
        assert!(
            first_hops.check(&hop(1)).is_ok(),
            "a first hop of the previous document is accepted while that one is valid"
        );
        epoch(2, 4, 5, now + 600);
        assert!(
            first_hops.check(&hop(1)).is_ok(),
            "the same epoch again does not retire the previous document"
        );
        epoch(3, 4, 5, now + 600);
        assert!(
            first_hops.check(&hop(1)).is_err(),
            "two epochs later the old first hop is refused"
        );
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        let woken = runtime.block_on(async {
            tokio::time::timeout(Duration::from_secs(10), first_hops.stale.notified()).await
        });
        assert!(woken.is_ok(), "a refused first hop asks for a fetch now");
        // A previous document past its validity is not used.
        let first_hops = FirstHops::new(false);
        let mut epoch = |n: u64, layer1: u16, valid_until_s: u64| {
            topology.epoch = n;
            topology.valid_until_s = valid_until_s;
            topology.layers[0] = vec![mix(layer1, crate::topology::Role::Mixnode)];
            topology.layers[1] = vec![mix(5, crate::topology::Role::Mixnode)];
            first_hops.set_topology(topology.clone());
        };
        epoch(7, 1, now.saturating_sub(1));
        epoch(8, 4, now + 600);
        assert!(first_hops.check(&hop(1)).is_err());
    }

    /// A masked client frame (as a client sends it).
    fn frame(opcode_fin: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![opcode_fin];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= 0xffff => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&[1, 2, 3, 4]); // the mask; the payload is not masked here
        out.extend_from_slice(payload);
        out
    }

    const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n";

    /// Feeds `bytes` in chunks of `chunk` (a chunk boundary anywhere must not matter).
    fn scan(bytes: &[u8], chunk: usize) -> Result<Scan, &'static str> {
        let mut scan = Scan::Request {
            bytes: 0,
            matched: 0,
        };
        for piece in bytes.chunks(chunk) {
            scan.feed(piece)?;
        }
        Ok(scan)
    }

    #[test]
    fn gate_opens_after_hello_and_auth_and_lets_pipelined_frames_through() {
        let mut bytes = REQUEST.to_vec();
        bytes.extend(frame(0x89, b"ping")); // a control frame does not count
        bytes.extend(frame(0x82, &[0; CLIENT_HELLO_LEN]));
        bytes.extend(frame(0x82, &[0; CLIENT_AUTH_LEN]));
        // Pipelined after auth: a frame no pending peer may send.
        bytes.extend(frame(0x82, &[0; 40_000]));
        for chunk in [1, 2, 7, 64, bytes.len()] {
            assert_eq!(scan(&bytes, chunk), Ok(Scan::Open), "chunk {chunk}");
        }
        // A hello in two fragments is one message.
        let mut fragmented = REQUEST.to_vec();
        fragmented.extend(frame(0x02, &[0; 40]));
        fragmented.extend(frame(0x80, &[0; 45]));
        let pending = scan(&fragmented, 3).unwrap();
        assert!(matches!(pending, Scan::Frames(Frames { messages: 1, .. })));
    }

    #[test]
    fn gate_refuses_what_a_handshake_does_not_need() {
        // A large frame before auth, even one only declared (16- and 64-bit lengths).
        for length in [limits::GATEWAY_PENDING_FRAME_BYTES_MAX as usize + 1, 70_000] {
            let mut bytes = REQUEST.to_vec();
            let header = frame(0x82, &vec![0; length]);
            bytes.extend(&header[..14.min(header.len())]);
            assert!(scan(&bytes, 5).is_err(), "length {length}");
        }
        // After the hello, before the auth.
        let mut bytes = REQUEST.to_vec();
        bytes.extend(frame(0x82, &[0; CLIENT_HELLO_LEN]));
        bytes.extend(frame(0x82, &[0; 1000]));
        assert!(scan(&bytes, 50).is_err());
        // Endless small frames, and an endless request.
        let mut bytes = REQUEST.to_vec();
        for _ in 0..200 {
            bytes.extend(frame(0x89, b"ping"));
        }
        assert!(scan(&bytes, 100).is_err());
        let long = vec![b'a'; limits::GATEWAY_UPGRADE_REQUEST_BYTES_MAX + 1];
        assert!(scan(&long, 1000).is_err());
        // "\r\r\n\r\n" ends a request too.
        let odd = b"GET / HTTP/1.1\r\r\n\r\n";
        assert_eq!(scan(odd, 1), Ok(Scan::Frames(Frames::default())));
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn pending_connections_cap_each_source_and_evict_the_oldest() {
        let metrics = Arc::new(GatewayMetrics::default());
        let pending = PendingConnections::new(4, 2, metrics.clone());
        let a1 = pending.admit(ip("10.0.0.1")).unwrap();
        let a2 = pending.admit(ip("10.0.0.1")).unwrap();
        assert!(pending.admit(ip("10.0.0.1")).is_none(), "per-source cap");
        assert!(
            pending.admit(ip("::ffff:10.0.0.1")).is_none(),
            "IPv4-mapped is IPv4"
        );
        let b1 = pending.admit(ip("2001:db8::1")).unwrap();
        let _b2 = pending.admit(ip("2001:db8::2")).unwrap();
        assert!(pending.admit(ip("2001:db8::ffff:3")).is_none(), "one /64");
        assert_eq!(GatewayMetrics::get(&metrics.pending_connections), 4);

        // Full: the oldest (a1) is evicted and told so; its source has room again.
        let c1 = pending.admit(ip("10.0.0.9")).unwrap();
        assert_eq!(GatewayMetrics::get(&metrics.pending_evicted), 1);
        assert_eq!(GatewayMetrics::get(&metrics.pending_connections), 4);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(5), a1.evicted())
                .await
                .unwrap();
        });
        drop(a1); // its slot is gone already: nothing else is freed
        assert_eq!(GatewayMetrics::get(&metrics.pending_connections), 4);
        let a3 = pending.admit(ip("10.0.0.1")).unwrap(); // evicts a2
        assert_eq!(GatewayMetrics::get(&metrics.pending_evicted), 2);
        drop((a2, a3, b1, c1));
        assert_eq!(GatewayMetrics::get(&metrics.pending_connections), 1);
        let table = pending.table();
        assert_eq!(table.by_age.len(), 1);
        assert_eq!(table.per_source.len(), 1, "sources with none are forgotten");
    }
}

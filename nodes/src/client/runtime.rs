//! The running client: three tokio tasks around the I/O-free [`LoopixClient`].
//!
//! - core task: owns the client and drives it: sleeps until its next deadline (a tick of the
//!   Poisson real/drop-cover and loop-cover streams, a retransmission timer, housekeeping);
//!   handles
//!   commands from [`ClientHandle`]s (read only while the outgoing queue is below its
//!   high-water mark: back-pressure) and gateway deliveries;
//! - connection task: WebSocket to our gateway driving `lethe_proto::ClientSession`, credential
//!   spends as `lethe_proto::loopix::payer` decides, reconnection with exponential backoff
//!   (200 ms doubling to 30 s);
//! - topology task: refresh each epoch's document once due and at least every
//!   `topology_refresh_s` (and soon after a failure), keeping the epoch seen so an older
//!   topology is refused.
//!
//! The core's RNG is seeded from the OS here. Every channel is bounded; overflow is counted in
//! [`Stats`].

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio::time::Instant;
use zeroize::Zeroizing;

use super::address::Recipient;
use super::config::{ClientFiles, LoopixParams};
use super::stats::{bump, Stats, StatsSnapshot};
use crate::limits;
use lethe_proto::client_session::ClientEvent;
use lethe_proto::duration_us;
use lethe_proto::loopix::payer::{Decision, Payer, Shortfall};
use lethe_proto::loopix::{
    ClientLimits, LoopixClient, LoopixEvent, LoopixTransmit, Received, SendError, SendProgress,
};

use super::credential::Wallet;
use super::refusals::{Refusal, Refusals};
use super::trace::ClientTrace;
use crate::proto::{messages::error_code, ClientMessage};
use crate::topology::Topology;
use crate::ws::{Connection, OpenError};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where the client gets its topology (injectable: tests serve one from memory).
pub trait TopologySource: Send + Sync + 'static {
    /// A verified topology not older than `seen_epoch`.
    fn fetch(&self, seen_epoch: Option<u64>) -> BoxFuture<'_, Result<Topology, String>>;
}

/// The directory authorities over HTTP (any of them, in turn), verified against the pinned
/// keys.
pub struct DirectorySource {
    pub http: reqwest::Client,
    pub authorities: crate::directory::client::Authorities,
}

impl TopologySource for DirectorySource {
    fn fetch(&self, seen_epoch: Option<u64>) -> BoxFuture<'_, Result<Topology, String>> {
        Box::pin(async move {
            crate::directory::client::fetch_consensus(&self.http, &self.authorities, seen_epoch)
                .await
                .map_err(|e| e.to_string())
        })
    }
}

/// A fixed topology (tests, or a caller that manages topologies itself).
pub struct StaticTopology(pub Topology);

impl TopologySource for StaticTopology {
    fn fetch(&self, _seen_epoch: Option<u64>) -> BoxFuture<'_, Result<Topology, String>> {
        let topology = self.0.clone();
        Box::pin(async move { Ok(topology) })
    }
}

pub struct ClientConfig {
    pub identity_seed: Zeroizing<[u8; 32]>,
    pub encryption_secret: Zeroizing<[u8; 32]>,
    /// Our gateway's identity.
    pub gateway: [u8; 32],
    pub loopix: LoopixParams,
    pub limits: ClientLimits,
    pub topology: Arc<dyn TopologySource>,
    /// Capacity of the channel of received messages.
    pub received_capacity: usize,
    /// The bandwidth credential to spend when the gateway asks for bandwidth (see
    /// [`super::credential`]); `None`: never spend one.
    pub wallet: Option<Arc<std::sync::Mutex<Wallet>>>,
    /// A session that sent nothing for this long sends a keep-alive, so that the gateway
    /// does not close it as idle (cover traffic usually makes it unnecessary).
    pub keepalive_us: u64,
    /// `--trace DIR`: the run directory whose `parts/` gets this client's trace part
    /// ([`super::trace`]); `None`: no trace, and no work per packet for one.
    pub trace_dir: Option<std::path::PathBuf>,
}

impl ClientConfig {
    /// A config from a client directory, fetching topologies from its directory.
    pub fn from_files(files: &ClientFiles) -> ClientConfig {
        ClientConfig {
            identity_seed: files.identity_seed.clone(),
            encryption_secret: files.encryption_secret.clone(),
            gateway: files.gateway,
            loopix: files.loopix,
            limits: ClientLimits::default(),
            topology: Arc::new(DirectorySource {
                http: crate::directory::client::http_client(),
                authorities: files.authorities.clone(),
            }),
            received_capacity: limits::CLIENT_RECEIVED_CAPACITY,
            keepalive_us: lethe_proto::limits::CLIENT_KEEPALIVE_US,
            trace_dir: None,
            wallet: match Wallet::open(&files.dir) {
                Ok(wallet) => wallet.map(|w| Arc::new(std::sync::Mutex::new(w))),
                Err(e) => {
                    tracing::warn!(error = %e, "no credential will be spent");
                    None
                }
            },
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("topology: {0}")]
    Topology(String),
    #[error("our gateway {0} is not in the topology")]
    GatewayNotInTopology(String),
    #[error("gateway {0} announces no client URL")]
    NoClientUrl(String),
    #[error("{0}")]
    Send(#[from] SendError),
    #[error("not connected to the gateway within {secs} s: {1}", secs = .0.as_secs_f64())]
    NotConnected(Duration, String),
    #[error("{0}")]
    Trace(String),
}

/// Returned by a send: the message id (what the recipient sees) and its progress.
#[derive(Debug, Clone)]
pub struct MessageTicket {
    pub message_id: u64,
    pub progress: watch::Receiver<SendProgress>,
}

/// Connection to the gateway, as the handle sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectionState {
    Connecting,
    Connected,
    /// The last attempt failed (the task keeps retrying).
    Failed(String),
    /// Shut down: queued messages were written out and the WebSocket closed.
    Closed,
}

/// A complete received message. Call [`ReceivedMessage::confirm`] once it is durably handled:
/// the gateway then deletes its fragments. Unconfirmed fragments stay in the gateway's
/// mailbox and are delivered again (after a reconnect); duplicates of a message this client
/// already completed are recognised by message id and confirmed without a second delivery.
pub struct ReceivedMessage {
    pub message_id: u64,
    pub data: Vec<u8>,
    /// How many reply SURBs the sender attached.
    pub reply_surbs: usize,
    /// Pass to [`ClientHandle::reply`] to answer anonymously.
    pub surb_bundle: Option<u64>,
    /// For a reply to one of our messages: that message's id.
    pub in_reply_to: Option<u64>,
    delivery_ids: Vec<u64>,
    confirm: mpsc::Sender<Vec<u64>>,
    stats: Arc<Stats>,
}

impl std::fmt::Debug for ReceivedMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReceivedMessage")
            .field("message_id", &self.message_id)
            .field("bytes", &self.data.len())
            .field("reply_surbs", &self.reply_surbs)
            .field("surb_bundle", &self.surb_bundle)
            .field("in_reply_to", &self.in_reply_to)
            .finish()
    }
}

impl ReceivedMessage {
    /// Tells the gateway it may delete the message's fragments.
    pub fn confirm(&mut self) {
        let ids = std::mem::take(&mut self.delivery_ids);
        if !ids.is_empty() && self.confirm.try_send(ids).is_err() {
            bump(&self.stats.confirm_overflow);
        }
    }
}

enum Command {
    Send {
        recipient: Recipient,
        data: Vec<u8>,
        reply_surbs: usize,
        reply: oneshot::Sender<Result<MessageTicket, SendError>>,
    },
    Reply {
        bundle: u64,
        data: Vec<u8>,
        reply: oneshot::Sender<Result<MessageTicket, SendError>>,
    },
    SurbsLeft {
        bundle: u64,
        reply: oneshot::Sender<usize>,
    },
    DiscardSurbs {
        bundle: u64,
    },
    Shutdown,
}

/// Cheap to clone; the client stops when every handle is dropped.
#[derive(Clone)]
pub struct ClientHandle {
    commands: mpsc::Sender<Command>,
    stats: Arc<Stats>,
    address: Recipient,
    connection: watch::Receiver<ConnectionState>,
    topology: watch::Receiver<Arc<Topology>>,
}

impl ClientHandle {
    /// The topology the client routes with, as it refreshes (a service provider and its
    /// users follow the mixnodes' key rotations with it).
    pub fn topology(&self) -> watch::Receiver<Arc<Topology>> {
        self.topology.clone()
    }

    /// Our address (`identity.encryption@gateway`).
    pub fn address(&self) -> Recipient {
        self.address
    }

    pub fn stats(&self) -> StatsSnapshot {
        self.stats.snapshot()
    }

    pub fn connection_state(&self) -> ConnectionState {
        self.connection.borrow().clone()
    }

    /// Waits until the gateway session is up.
    pub async fn wait_connected(&self, timeout: Duration) -> Result<(), ClientError> {
        let mut rx = self.connection.clone();
        let connected = tokio::time::timeout(timeout, async {
            rx.wait_for(|s| *s == ConnectionState::Connected)
                .await
                .is_ok()
        })
        .await;
        match connected {
            Ok(true) => Ok(()),
            _ => {
                let state = match self.connection_state() {
                    ConnectionState::Failed(e) => e,
                    ConnectionState::Connecting => "still connecting".to_string(),
                    ConnectionState::Connected => "connected just now".to_string(),
                    ConnectionState::Closed => "the client was shut down".to_string(),
                };
                Err(ClientError::NotConnected(timeout, state))
            }
        }
    }

    async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, SendError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(make(tx))
            .await
            .map_err(|_| SendError::Stopped)?;
        rx.await.map_err(|_| SendError::Stopped)
    }

    /// Queues `data` for `recipient` through the Poisson stream, with `reply_surbs` reply SURBs
    /// attached. Waits while the outgoing queue is full.
    pub async fn send(
        &self,
        recipient: &Recipient,
        data: Vec<u8>,
        reply_surbs: usize,
    ) -> Result<MessageTicket, SendError> {
        let recipient = *recipient;
        self.call(|reply| Command::Send {
            recipient,
            data,
            reply_surbs,
            reply,
        })
        .await?
    }

    /// Answers through the reply SURBs of a received message (one SURB per fragment).
    pub async fn reply(&self, surb_bundle: u64, data: Vec<u8>) -> Result<MessageTicket, SendError> {
        self.call(|reply| Command::Reply {
            bundle: surb_bundle,
            data,
            reply,
        })
        .await?
    }

    /// Stops the client: what is already handed to the connection is written out, the
    /// WebSocket is closed (waits at most `timeout`). Queued fragments not yet sent by the
    /// Poisson stream are dropped.
    pub async fn shutdown(&self, timeout: Duration) {
        if self.commands.send(Command::Shutdown).await.is_err() {
            return;
        }
        let mut rx = self.connection.clone();
        let _ = tokio::time::timeout(timeout, async {
            let _ = rx.wait_for(|s| *s == ConnectionState::Closed).await;
        })
        .await;
    }

    /// Forgets a bundle of received reply SURBs that will not be used.
    pub async fn discard_surbs(&self, surb_bundle: u64) -> Result<(), SendError> {
        self.commands
            .send(Command::DiscardSurbs {
                bundle: surb_bundle,
            })
            .await
            .map_err(|_| SendError::Stopped)
    }

    /// Reply SURBs left in a bundle.
    pub async fn surbs_left(&self, surb_bundle: u64) -> Result<usize, SendError> {
        self.call(|reply| Command::SurbsLeft {
            bundle: surb_bundle,
            reply,
        })
        .await
    }
}

enum Event {
    Up,
    Down,
    Gateway(ClientEvent),
}

/// Starts a client: fetches the topology, then runs in the background. Returns the handle
/// and the channel of received messages.
pub async fn connect(
    config: ClientConfig,
) -> Result<(ClientHandle, mpsc::Receiver<ReceivedMessage>), ClientError> {
    let topology = config
        .topology
        .fetch(None)
        .await
        .map_err(ClientError::Topology)?;
    let gateway_hex = crate::keyfile::hex(&config.gateway);
    let descriptor = topology
        .gateway(&config.gateway)
        .ok_or_else(|| ClientError::GatewayNotInTopology(gateway_hex.clone()))?;
    if descriptor.client_url.is_none() {
        return Err(ClientError::NoClientUrl(gateway_hex));
    }
    let gateway_mix_address = descriptor.mix_address;
    let topology = Arc::new(topology);
    let stats = Arc::new(Stats::default());
    let start = Instant::now();
    let mut core = LoopixClient::new(
        &config.identity_seed,
        &config.encryption_secret,
        config.gateway,
        config.loopix,
        config.limits,
        0,
        rand::make_rng(),
    );
    core.set_topology(topology.clone());
    let address = core.address();
    let trace = match &config.trace_dir {
        None => None,
        Some(dir) => {
            // Its loops' route secrets name the link each loop comes back on.
            core.keep_loop_secrets(true);
            Some(
                ClientTrace::start(dir, &address.identity, gateway_mix_address)
                    .map_err(ClientError::Trace)?,
            )
        }
    };

    let (topology_tx, topology_rx) = watch::channel(topology.clone());
    let topology_rx_handle = topology_rx.clone();
    let refresh = Arc::new(Notify::new());
    let (command_tx, command_rx) = mpsc::channel(limits::CLIENT_COMMAND_CAPACITY);
    let (outgoing_tx, outgoing_rx) = mpsc::channel(limits::CLIENT_OUTGOING_CAPACITY);
    let (event_tx, event_rx) = mpsc::channel(limits::CLIENT_EVENT_CAPACITY);
    let (confirm_tx, confirm_rx) = mpsc::channel(limits::CLIENT_CONFIRM_CAPACITY);
    let (received_tx, received_rx) = mpsc::channel(config.received_capacity.max(1));
    let (state_tx, state_rx) = watch::channel(ConnectionState::Connecting);

    tokio::spawn(topology_task(
        config.topology.clone(),
        topology.epoch,
        Duration::from_secs(config.loopix.topology_refresh_s.max(1)),
        topology_tx,
        refresh.clone(),
        stats.clone(),
    ));
    tokio::spawn(connection_task(
        config.identity_seed.clone(),
        config.gateway,
        config.wallet.clone(),
        topology_rx.clone(),
        outgoing_rx,
        event_tx,
        state_tx,
        stats.clone(),
        refresh.clone(),
        config.keepalive_us,
    ));
    let runner = CoreTask {
        core,
        stats: stats.clone(),
        outgoing: outgoing_tx,
        received: received_tx,
        confirm_tx,
        refresh,
        connected: false,
        start,
        refusals: Refusals::default(),
        tickets: HashMap::new(),
        trace,
    };
    tokio::spawn(runner.run(command_rx, event_rx, confirm_rx, topology_rx));
    Ok((
        ClientHandle {
            commands: command_tx,
            stats,
            address,
            connection: state_rx,
            topology: topology_rx_handle,
        },
        received_rx,
    ))
}

/// What the core task hands the connection task, for its session to seal.
enum Outgoing {
    Message(ClientMessage),
    /// Delivery ids handled durably: the session batches them into `Confirm`s
    /// ([`lethe_proto::ClientSession::confirm`]).
    Confirm(Vec<u64>),
}

struct CoreTask {
    core: LoopixClient,
    stats: Arc<Stats>,
    outgoing: mpsc::Sender<Outgoing>,
    received: mpsc::Sender<ReceivedMessage>,
    confirm_tx: mpsc::Sender<Vec<u64>>,
    refresh: Arc<Notify>,
    connected: bool,
    start: Instant,
    /// The gateway's refusals of our packets, logged once per episode (see [`Refusals`]).
    refusals: Refusals,
    /// Progress of the messages still moving, for their tickets.
    tickets: HashMap<u64, watch::Sender<SendProgress>>,
    /// `--trace`: this client's part.
    trace: Option<ClientTrace>,
}

impl CoreTask {
    /// µs since the client started: the core's clock.
    fn now_us(&self) -> u64 {
        duration_us(self.start.elapsed())
    }

    /// Takes out what the core produced: packets and confirmations for the connection,
    /// progress for tickets, messages for the application; then publishes its counters.
    fn drain(&mut self) {
        while let Some(transmit) = self.core.poll_transmit() {
            match transmit {
                LoopixTransmit::Packet(built) => self.push_packet(built),
                LoopixTransmit::Confirm(ids) => self.push_confirm(ids),
            }
        }
        while let Some(event) = self.core.poll_event() {
            match event {
                LoopixEvent::Progress {
                    message_id,
                    progress,
                    done,
                } => {
                    if let Some(ticket) = self.tickets.get(&message_id) {
                        ticket.send_replace(progress);
                    }
                    if done {
                        self.tickets.remove(&message_id);
                    }
                }
                LoopixEvent::Received(message) => self.hand_over(message),
            }
        }
        self.stats.publish(self.core.counters());
    }

    /// A ticket for a message the core accepted.
    fn ticket(&mut self, accepted: lethe_proto::loopix::Accepted) -> MessageTicket {
        let (tx, progress) = watch::channel(accepted.progress);
        self.tickets.insert(accepted.message_id, tx);
        MessageTicket {
            message_id: accepted.message_id,
            progress,
        }
    }

    fn push(&self, message: Outgoing) {
        if self.outgoing.try_send(message).is_err() {
            bump(&self.stats.outgoing_overflow);
        }
    }

    fn push_packet(&mut self, built: lethe_proto::loopix::packets::Built) {
        if let Some(trace) = &mut self.trace {
            trace.sent(&built);
        }
        self.push(Outgoing::Message(ClientMessage::Forward {
            first_hop: built.first_hop,
            packet: built.packet,
        }));
    }

    fn push_confirm(&self, ids: Vec<u64>) {
        if !ids.is_empty() {
            self.push(Outgoing::Confirm(ids));
        }
    }

    async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        mut events: mpsc::Receiver<Event>,
        mut confirms: mpsc::Receiver<Vec<u64>>,
        mut topology: watch::Receiver<Arc<Topology>>,
    ) {
        let mut next_housekeeping =
            Instant::now() + Duration::from_millis(limits::CLIENT_HOUSEKEEPING_MS);
        loop {
            self.drain();
            // Unpaced mode (zero mean): real packets leave as soon as they are queued.
            if !self.core.paced() && self.connected {
                let now = self.now_us();
                let mut budget = limits::CLIENT_UNPACED_BURST_PACKETS;
                // At most limits::CLIENT_UNPACED_WINDOW packets waiting for the connection: what does not
                // fit waits here (and ACK timers start close to the real send time).
                while budget > 0
                    && limits::CLIENT_OUTGOING_CAPACITY - self.outgoing.capacity()
                        < limits::CLIENT_UNPACED_WINDOW
                {
                    match self.core.next_real(now) {
                        Some(built) => self.push_packet(built),
                        None => break,
                    }
                    budget -= 1;
                }
            }
            let timer = self
                .core
                .poll_timeout()
                .map(|us| self.start + Duration::from_micros(us))
                .unwrap_or(next_housekeeping)
                .min(next_housekeeping);
            let accepting = self.core.accepting();
            let backlog = !self.core.paced() && self.connected && self.core.has_real();
            tokio::select! {
                command = commands.recv(), if accepting => {
                    let Some(command) = command else { break };
                    if matches!(command, Command::Shutdown) {
                        break;
                    }
                    self.command(command);
                }
                event = events.recv() => {
                    let Some(event) = event else { break };
                    self.event(event);
                }
                Some(ids) = confirms.recv() => self.push_confirm(ids),
                _ = tokio::time::sleep(Duration::from_millis(1)), if backlog => {}
                _ = tokio::time::sleep_until(timer) => {
                    let now = self.now_us();
                    self.core.handle_timeout(now);
                    if Instant::now() >= next_housekeeping {
                        next_housekeeping = Instant::now() + Duration::from_millis(limits::CLIENT_HOUSEKEEPING_MS);
                        if let Some(ended) = self.refusals.quiet(Instant::now().into_std()) {
                            log_refusals_ended(&ended);
                        }
                    }
                    if self.core.take_build_failure() {
                        // Routes failed: a fresher topology may help (the task rate-limits).
                        self.refresh.notify_one();
                    }
                }
                changed = topology.changed() => {
                    if changed.is_err() { break; }
                    let fresh = topology.borrow_and_update().clone();
                    self.core.set_topology(fresh);
                }
            }
        }
        // Before the connection closes (it does once `self.outgoing` is dropped), so that a
        // client's shutdown returns with its part complete.
        if let Some(trace) = self.trace.take() {
            let _ = tokio::task::spawn_blocking(move || trace.finish()).await;
        }
    }

    fn command(&mut self, command: Command) {
        let now = self.now_us();
        match command {
            Command::Send {
                recipient,
                data,
                reply_surbs,
                reply,
            } => {
                let sent = self.core.send(recipient, &data, reply_surbs, now);
                let _ = reply.send(sent.map(|accepted| self.ticket(accepted)));
            }
            Command::Reply {
                bundle,
                data,
                reply,
            } => {
                let sent = self.core.reply(bundle, &data);
                let _ = reply.send(sent.map(|accepted| self.ticket(accepted)));
            }
            Command::SurbsLeft { bundle, reply } => {
                let _ = reply.send(self.core.surbs_left(bundle));
            }
            Command::DiscardSurbs { bundle } => self.core.discard_bundle(bundle),
            Command::Shutdown => {}
        }
    }

    fn event(&mut self, event: Event) {
        match event {
            Event::Up => {
                self.connected = true;
                self.core.set_connected(true);
            }
            Event::Down => {
                self.connected = false;
                self.core.set_connected(false);
            }
            Event::Gateway(ClientEvent::Deliver {
                id,
                kind,
                identifier,
                mut bytes,
            }) => {
                let now = self.now_us();
                // Traced: what the core made of it (a loop of ours, or deferred) decides the row.
                let before = self.trace.as_ref().map(|_| self.core.counters());
                self.core
                    .handle_delivery(now, id, kind, identifier, &mut bytes);
                if let (Some(trace), Some(before)) = (&mut self.trace, before) {
                    let after = self.core.counters();
                    if after.deliveries_deferred == before.deliveries_deferred {
                        let looped = after.loop_cover_received > before.loop_cover_received;
                        let fragment = self.core.last_fragment();
                        trace.delivered(kind, looped, fragment, bytes.len());
                    }
                }
            }
            Event::Gateway(ClientEvent::Bandwidth { remaining_bytes }) => {
                self.stats
                    .bandwidth_remaining
                    .store(remaining_bytes, Ordering::Relaxed);
            }
            // The session's end comes as `Down` from the connection task.
            Event::Gateway(ClientEvent::Welcome { .. } | ClientEvent::Closed { .. }) => {}
            // Reported by the connection task (once, not per refused packet).
            Event::Gateway(ClientEvent::Error {
                code: error_code::NO_BANDWIDTH | error_code::BAD_CREDENTIAL,
                ..
            }) => {}
            Event::Gateway(ClientEvent::Error { code, text }) => {
                let (refusal, ended) = self.refusals.refused(code, Instant::now().into_std());
                if let Some(ended) = ended {
                    log_refusals_ended(&ended);
                }
                match refusal {
                    Refusal::New => tracing::warn!(
                        code,
                        "the gateway refuses our packets: {text} (repeats logged at debug level)"
                    ),
                    Refusal::Repeat { count } => {
                        tracing::debug!(code, count, "the gateway refused a packet: {text}")
                    }
                }
            }
        }
    }

    fn hand_over(&mut self, message: Received) {
        let received = ReceivedMessage {
            message_id: message.message_id,
            data: message.data,
            reply_surbs: message.reply_surbs,
            surb_bundle: message.surb_bundle,
            in_reply_to: message.in_reply_to,
            delivery_ids: message.delivery_ids,
            confirm: self.confirm_tx.clone(),
            stats: self.stats.clone(),
        };
        if let Err(error) = self.received.try_send(received) {
            let received = match error {
                mpsc::error::TrySendError::Full(r) | mpsc::error::TrySendError::Closed(r) => r,
            };
            // Not confirmed: the gateway keeps it and delivers it again on a reconnect.
            self.core.undeliverable(&Received {
                message_id: received.message_id,
                data: Vec::new(),
                reply_surbs: received.reply_surbs,
                surb_bundle: received.surb_bundle,
                in_reply_to: received.in_reply_to,
                delivery_ids: Vec::new(),
            });
        }
    }
}

/// The line closing an episode of refusals that [`CoreTask::event`] opened with a warning.
fn log_refusals_ended(ended: &super::refusals::Ended) {
    tracing::info!(
        code = ended.code,
        refused = ended.count,
        quiet_s = super::refusals::QUIET.as_secs(),
        "the gateway stopped refusing our packets"
    );
}

async fn topology_task(
    source: Arc<dyn TopologySource>,
    mut seen_epoch: u64,
    every: Duration,
    tx: watch::Sender<Arc<Topology>>,
    refresh: Arc<Notify>,
    stats: Arc<Stats>,
) {
    // Each epoch's document soon after it is due (voting authorities redraw the layers every
    // epoch), and at least every `every`.
    let next = |held: &Topology| {
        crate::topology::refetch_in(
            held,
            crate::topology::now_ms(),
            every,
            crate::topology::Consumer::Client,
        )
    };
    let mut wait = next(&tx.borrow());
    let mut last_fetch = Instant::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = refresh.notified() => {
                // On demand, but not more often than the retry interval.
                let earliest = last_fetch + Duration::from_millis(limits::CLIENT_TOPOLOGY_RETRY_MS);
                tokio::time::sleep_until(earliest).await;
            }
            _ = tx.closed() => return,
        }
        last_fetch = Instant::now();
        match source.fetch(Some(seen_epoch)).await {
            Ok(topology) => {
                seen_epoch = seen_epoch.max(topology.epoch);
                if stats.topology_in_grace.swap(0, Ordering::Relaxed) != 0 {
                    tracing::info!(epoch = topology.epoch, "a fresh topology verified");
                }
                wait = next(&topology);
                if tx.send(Arc::new(topology)).is_err() {
                    return;
                }
            }
            Err(error) => {
                bump(&stats.topology_fetch_failures);
                tracing::warn!(
                    %error,
                    retry_in_s = Duration::from_millis(limits::CLIENT_TOPOLOGY_RETRY_MS).as_secs(),
                    "topology refresh failed"
                );
                let held = tx.borrow().clone();
                say_grace(&held, &stats);
                wait = Duration::from_millis(limits::CLIENT_TOPOLOGY_RETRY_MS);
            }
        }
    }
}

/// Says (log, `topology_in_grace`) how the held topology stands when no new one verified:
/// within its grace the client keeps routing over it; past it the gateway refuses forwards.
fn say_grace(held: &Topology, stats: &Stats) {
    match crate::topology::freshness(held, crate::topology::now_s()) {
        crate::topology::Freshness::Fresh => {}
        crate::topology::Freshness::Grace { expired_s } => {
            stats.topology_in_grace.store(1, Ordering::Relaxed);
            tracing::warn!(
                epoch = held.epoch,
                expired_s,
                grace_s = limits::CONSENSUS_GRACE_S,
                "no new topology verified: routing on the last valid one, expired, within its grace"
            );
        }
        crate::topology::Freshness::Expired { expired_s } => {
            stats.topology_in_grace.store(0, Ordering::Relaxed);
            tracing::error!(
                epoch = held.epoch,
                expired_s,
                "no valid topology: the last one expired beyond its grace"
            );
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn connection_task(
    seed: Zeroizing<[u8; 32]>,
    gateway: [u8; 32],
    wallet: Option<Arc<std::sync::Mutex<Wallet>>>,
    topology: watch::Receiver<Arc<Topology>>,
    mut outgoing: mpsc::Receiver<Outgoing>,
    events: mpsc::Sender<Event>,
    state: watch::Sender<ConnectionState>,
    stats: Arc<Stats>,
    refresh: Arc<Notify>,
    keepalive_us: u64,
) {
    let mut backoff = Duration::from_millis(limits::CLIENT_BACKOFF_MS_MIN);
    loop {
        let url = topology
            .borrow()
            .gateway(&gateway)
            .and_then(|g| g.client_url.clone());
        let started = Instant::now();
        let end = match url {
            None => SessionEnd::Failed("our gateway is missing from the topology".into()),
            Some(url) => {
                let links = SessionLinks {
                    outgoing: &mut outgoing,
                    events: &events,
                    state: &state,
                    stats: &stats,
                    wallet: wallet.as_ref(),
                    keepalive_us,
                };
                session(&url, &seed, gateway, links).await
            }
        };
        let _ = events.send(Event::Down).await;
        match end {
            SessionEnd::Stop => {
                state.send_replace(ConnectionState::Closed);
                return;
            }
            SessionEnd::Failed(reason) => {
                if events.is_closed() {
                    state.send_replace(ConnectionState::Closed);
                    return;
                }
                tracing::warn!(%reason, "gateway connection failed; retrying");
                state.send_replace(ConnectionState::Failed(reason));
                refresh.notify_one();
            }
        }
        bump(&stats.reconnects);
        if started.elapsed() > Duration::from_millis(limits::CLIENT_BACKOFF_MS_MAX) {
            backoff = Duration::from_millis(limits::CLIENT_BACKOFF_MS_MIN);
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = events.closed() => {
                state.send_replace(ConnectionState::Closed);
                return;
            }
        }
        backoff = (backoff * 2).min(Duration::from_millis(limits::CLIENT_BACKOFF_MS_MAX));
    }
}

enum SessionEnd {
    Stop,
    Failed(String),
}

struct SessionLinks<'a> {
    outgoing: &'a mut mpsc::Receiver<Outgoing>,
    events: &'a mpsc::Sender<Event>,
    state: &'a watch::Sender<ConnectionState>,
    stats: &'a Stats,
    wallet: Option<&'a Arc<std::sync::Mutex<Wallet>>>,
    keepalive_us: u64,
}

/// Spends the wallet's credential when proto's [`Payer`] decides so; `Some(bytes)` to send.
async fn pay(
    decision: Decision,
    payer: &mut Payer,
    wallet: Option<&Arc<std::sync::Mutex<Wallet>>>,
    (gateway, identity): ([u8; 32], [u8; 32]),
    stats: &Stats,
) -> Option<Vec<u8>> {
    let mark = |f: fn(&mut Wallet)| {
        if let Some(Ok(mut w)) = wallet.map(|w| w.lock()) {
            f(&mut w);
        }
    };
    let refused = match decision {
        Decision::Nothing | Decision::Deferred => return None,
        Decision::Credited { remaining_bytes } => {
            bump(&stats.credentials_spent);
            mark(Wallet::mark_spent);
            tracing::info!(remaining_bytes, "credential spent: the gateway credited it");
            return None;
        }
        Decision::CredentialRefused { text } => {
            mark(Wallet::mark_refused);
            tracing::warn!("the gateway refused our credential: {text}");
            return None;
        }
        Decision::Spend { refused } => refused,
    };
    let spent = match wallet.cloned() {
        None => Ok(None),
        Some(wallet) => tokio::task::spawn_blocking(move || {
            let mut wallet = wallet.lock().map_err(|_| "wallet poisoned".to_string())?;
            wallet.spend(&gateway, &identity)
        })
        .await
        .unwrap_or_else(|_| Err("spending the credential failed".into())),
    };
    let error = match spent {
        Ok(Some(bytes)) => {
            payer.spending();
            return Some(bytes);
        }
        Ok(None) => None,
        Err(e) => Some(e),
    };
    if refused {
        bump(&stats.no_bandwidth);
    }
    match (payer.unavailable(refused), error) {
        (Shortfall::Quiet, None) => {
            tracing::debug!("bandwidth balance low and no credential to spend");
        }
        (Shortfall::Quiet, Some(e)) => tracing::debug!(error = %e, "the credential is unusable"),
        (Shortfall::Warn, None) => tracing::warn!(
            "the gateway refuses our packets for lack of bandwidth and there is no credential \
             to spend: obtain one with `lethe credential obtain ... --out DIR/credential` (and \
             DIR/verification.key), or `lethe client init --credential`"
        ),
        (Shortfall::Warn, Some(e)) => tracing::warn!(
            error = %e,
            "the gateway refuses our packets for lack of bandwidth, and the credential is unusable"
        ),
    }
    None
}

async fn session(
    url: &str,
    seed: &[u8; 32],
    gateway: [u8; 32],
    links: SessionLinks<'_>,
) -> SessionEnd {
    let SessionLinks {
        outgoing,
        events,
        state,
        stats,
        wallet,
        keepalive_us,
    } = links;
    let identity = crate::keyfile::ed25519_public(seed);
    let mut payer = Payer::new();
    let mut connection = match Connection::open(
        url,
        seed,
        gateway,
        Duration::from_millis(limits::CLIENT_CONNECT_TIMEOUT_MS),
    )
    .await
    {
        Ok((connection, stored)) => {
            let welcome = Event::Gateway(ClientEvent::Welcome { stored });
            if events.send(welcome).await.is_err() {
                return SessionEnd::Stop;
            }
            connection
        }
        // Whatever the gateway said when it refused us.
        Err(OpenError::Refused { text, .. }) => {
            return SessionEnd::Failed(format!("{url}: handshake: {text}"))
        }
        Err(OpenError::Failed(text)) => return SessionEnd::Failed(text),
    };
    connection.session().set_keepalive_us(keepalive_us);
    state.send_replace(ConnectionState::Connected);
    if events.send(Event::Up).await.is_err() {
        return SessionEnd::Stop;
    }
    loop {
        // What the welcome came with (a balance) is handled like what follows.
        while let Some(event) = connection.session().poll_event() {
            let decision = payer.on_event(&event);
            if let Some(bytes) = pay(decision, &mut payer, wallet, (gateway, identity), stats).await
            {
                // Refused only if the session is closing: the next turn ends it.
                let _ = connection
                    .session()
                    .send(&ClientMessage::Credential { bytes });
            }
            if let ClientEvent::Closed { .. } = event {
                continue;
            }
            if events.send(Event::Gateway(event)).await.is_err() {
                return SessionEnd::Stop;
            }
        }
        if let Err(e) = connection.flush().await {
            return SessionEnd::Failed(e);
        }
        // The session's keep-alive: the gateway closes a session silent for its idle timeout
        // (cover traffic usually keeps it busy; not when both cover streams are off).
        let due = connection.timeout();
        tokio::select! {
            () = tokio::time::sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() => {
                connection.handle_timeout();
            }
            message = outgoing.recv() => match message {
                None => {
                    connection.close().await;
                    return SessionEnd::Stop;
                }
                // The queue was drained above: only a closed session refuses.
                Some(Outgoing::Message(message)) => {
                    if connection.session().send(&message).is_err() {
                        return SessionEnd::Failed("session closed".into());
                    }
                }
                Some(Outgoing::Confirm(ids)) => {
                    for id in ids {
                        connection.session().confirm(id);
                    }
                }
            },
            incoming = connection.receive() => {
                if let Err(e) = incoming {
                    return SessionEnd::Failed(e.to_string());
                }
            }
        }
    }
}

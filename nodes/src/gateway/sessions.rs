//! Client sessions over WebSocket, on the gateway's tokio runtime (separate from the engine
//! cores): the [`GatewayHandshake`] within a timeout, then sealed [`ClientMessage`]s in and
//! [`GatewayMessage`]s out.
//!
//! After the handshake the client is registered (durably, in the mailbox's `clients` table),
//! becomes the identity's only live session (a new one replaces the old), and receives
//! `Welcome{stored}`, then its stored deliveries in id order (reads of at most
//! [`FETCH_ROWS_MAX`]), then live ones. Live deliveries come from the mailbox writer through a
//! bounded per-session queue; when it is full the writer marks the session lagged and the
//! session re-reads the mailbox from its cursor, so nothing is skipped and nothing is sent
//! twice in one session (ids only grow).
//!
//! A malformed or undecryptable message gets an `Error` and closes that session only; a
//! refused forward (first hop not in layer 1) gets an `Error` and the session goes on.
//!
//! With admission on (see [`super::admission`]), the session sends `Bandwidth{remaining}`
//! right after `Welcome`; each `Forward` is charged its packet length, and refused with
//! `Error{NO_BANDWIDTH}` when the balance does not cover it; `Credential{bytes}` is verified
//! and credited (`Bandwidth{remaining}`) or refused (`Error{BAD_CREDENTIAL}`), and the session
//! goes on either way. `Bandwidth` is also sent after every [`FLUSH_EVERY_BYTES`] charged.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use lethe_crypto::sphinx::address;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use zeroize::Zeroizing;

use super::admission::{Admission, Refusal, FLUSH_EVERY_BYTES};
use super::egress::Egress;
use super::mailbox::{Command, Delivery, Reader, FETCH_ROWS_MAX};
use super::metrics::GatewayMetrics;
use crate::proto::messages::error_code;
use crate::proto::{
    ClientMessage, GatewayHandshake, GatewayMessage, Session, WS_MESSAGE_BYTES_MAX,
};
use crate::topology::Topology;

/// Live deliveries queued per session before the session falls back to the mailbox (a
/// delivery is at most one ext32 payload: 64 × 32 KiB = 2 MiB per session at worst).
pub const SESSION_QUEUE_MAX: usize = 64;
/// How long a new session waits for its registration to commit.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(10);
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

type Ws = WebSocketStream<TcpStream>;

/// One live session per client identity.
struct LiveSession {
    generation: u64,
    queue: mpsc::Sender<Delivery>,
    lagged: Arc<AtomicBool>,
    replaced: Arc<Notify>,
}

/// The live sessions, shared by the session tasks and the mailbox writer.
#[derive(Default)]
pub struct Registry {
    sessions: Mutex<HashMap<[u8; 32], LiveSession>>,
    generations: AtomicU64,
}

impl Registry {
    /// Pushes a committed delivery to the client's session, if it has one; `true` if queued.
    /// A full queue marks the session lagged (it re-reads the mailbox).
    pub fn push(&self, client: &[u8; 32], delivery: Delivery) -> bool {
        let Ok(sessions) = self.sessions.lock() else {
            return false;
        };
        let Some(session) = sessions.get(client) else {
            return false;
        };
        match session.queue.try_send(delivery) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                session.lagged.store(true, Ordering::Release);
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Makes this the client's live session; the previous one (if any) is told to end.
    fn insert(
        &self,
        client: [u8; 32],
        queue: mpsc::Sender<Delivery>,
        lagged: Arc<AtomicBool>,
        replaced: Arc<Notify>,
    ) -> u64 {
        let generation = self.generations.fetch_add(1, Ordering::Relaxed) + 1;
        let session = LiveSession {
            generation,
            queue,
            lagged,
            replaced,
        };
        if let Ok(mut sessions) = self.sessions.lock() {
            if let Some(old) = sessions.insert(client, session) {
                old.replaced.notify_one();
            }
        }
        generation
    }

    fn remove(&self, client: &[u8; 32], generation: u64) {
        if let Ok(mut sessions) = self.sessions.lock() {
            if sessions
                .get(client)
                .is_some_and(|s| s.generation == generation)
            {
                sessions.remove(client);
            }
        }
    }
}

/// Which first hops clients may forward to.
pub struct FirstHops {
    allow_any: bool,
    topology: RwLock<Option<Topology>>,
}

impl FirstHops {
    pub fn new(allow_any: bool) -> FirstHops {
        FirstHops {
            allow_any,
            topology: RwLock::new(None),
        }
    }

    pub fn set_topology(&self, topology: Topology) {
        if let Ok(mut slot) = self.topology.write() {
            *slot = Some(topology);
        }
    }

    pub fn epoch(&self) -> Option<u64> {
        self.topology.read().ok()?.as_ref().map(|t| t.epoch)
    }

    /// The socket address to forward to, or why not.
    pub fn check(&self, first_hop: &[u8; 32]) -> Result<SocketAddr, &'static str> {
        let addr = address::decode(first_hop).map_err(|_| "first hop is not a node address")?;
        if self.allow_any {
            return Ok(addr);
        }
        let topology = self.topology.read().map_err(|_| "topology unavailable")?;
        match topology.as_ref() {
            Some(t) if t.valid_until_s < crate::topology::now_s() => {
                Err("the topology has expired: forwarding is refused")
            }
            Some(t) if t.is_layer1(&addr) => Ok(addr),
            Some(_) => Err("first hop is not a layer-1 mixnode of the current topology"),
            None => Err("no verified topology: forwarding is refused"),
        }
    }
}

pub struct SessionSettings {
    pub sessions_max: u32,
    pub handshake_timeout: Duration,
}

/// Everything session tasks share.
pub struct Shared {
    pub identity_seed: Zeroizing<[u8; 32]>,
    pub registry: Arc<Registry>,
    pub reader: Arc<Reader>,
    pub commands: crossbeam_channel::Sender<Command>,
    pub egress: Arc<Egress>,
    pub first_hops: Arc<FirstHops>,
    pub metrics: Arc<GatewayMetrics>,
    pub settings: SessionSettings,
    pub connections: AtomicU32,
    /// Admission and metering; `None`: open admission.
    pub admission: Option<Arc<Admission>>,
}

/// Accepts clients until the runtime shuts down.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    // Runs for the life of the runtime; a failed accept is retried after a pause.
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if shared.connections.load(Ordering::Relaxed) >= shared.settings.sessions_max {
            GatewayMetrics::add(&shared.metrics.sessions_refused, 1);
            continue; // dropped: closes the connection
        }
        shared.connections.fetch_add(1, Ordering::Relaxed);
        let shared = shared.clone();
        tokio::spawn(async move {
            connection(stream, &shared).await;
            shared.connections.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(WS_MESSAGE_BYTES_MAX))
        .max_frame_size(Some(WS_MESSAGE_BYTES_MAX))
}

async fn connection(stream: TcpStream, shared: &Shared) {
    let _ = stream.set_nodelay(true);
    let timeout = shared.settings.handshake_timeout;
    let accepted = tokio::time::timeout(
        timeout,
        tokio_tungstenite::accept_async_with_config(stream, Some(ws_config())),
    )
    .await;
    let Ok(Ok(mut ws)) = accepted else {
        GatewayMetrics::add(&shared.metrics.handshakes_failed, 1);
        return;
    };
    let handshake = tokio::time::timeout(timeout, handshake(&mut ws, &shared.identity_seed)).await;
    let (client, session) = match handshake {
        Ok(Ok(done)) => done,
        Ok(Err(reason)) => {
            GatewayMetrics::add(&shared.metrics.handshakes_failed, 1);
            close(&mut ws, CloseCode::Policy, reason).await;
            return;
        }
        Err(_) => {
            GatewayMetrics::add(&shared.metrics.handshakes_failed, 1);
            close(&mut ws, CloseCode::Policy, "handshake timed out").await;
            return;
        }
    };
    established(ws, client, session, shared).await;
}

async fn next_binary(ws: &mut Ws) -> Result<Vec<u8>, &'static str> {
    // Bounded: the caller's timeout ends the wait; control frames are skipped.
    loop {
        match ws.next().await {
            Some(Ok(Message::Binary(bytes))) => return Ok(bytes.to_vec()),
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
            Some(Ok(Message::Text(_))) => return Err("text messages are not accepted"),
            Some(Ok(Message::Close(_))) | None => return Err("connection closed"),
            Some(Err(_)) => return Err("websocket error"),
        }
    }
}

async fn handshake(ws: &mut Ws, seed: &[u8; 32]) -> Result<([u8; 32], Session), &'static str> {
    let hello = next_binary(ws).await?;
    let (state, reply) = GatewayHandshake::respond(&hello, seed, &mut rand::rng())
        .map_err(|_| "bad client hello")?;
    ws.send(Message::Binary(reply.into()))
        .await
        .map_err(|_| "websocket error")?;
    let auth = next_binary(ws).await?;
    state.finish(&auth).map_err(|_| "bad client auth")
}

async fn close(ws: &mut Ws, code: CloseCode, reason: &str) {
    let frame = CloseFrame {
        code,
        reason: reason.to_string().into(),
    };
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, ws.close(Some(frame))).await;
}

/// Seals and sends one message; `Err` ends the session.
async fn send(ws: &mut Ws, session: &mut Session, message: &GatewayMessage) -> Result<(), ()> {
    let sealed = session.seal(&message.encode()).map_err(|_| ())?;
    ws.send(Message::Binary(sealed.into()))
        .await
        .map_err(|_| ())
}

async fn send_error(ws: &mut Ws, session: &mut Session, code: u8, text: &str) -> Result<(), ()> {
    let message = GatewayMessage::Error {
        code,
        text: text.to_string(),
    };
    send(ws, session, &message).await
}

/// What to do after an incoming message.
enum Next {
    Continue,
    Close,
}

struct Live<'a> {
    ws: Ws,
    session: Session,
    client: [u8; 32],
    shared: &'a Shared,
    /// The highest delivery id sent in this session.
    cursor: u64,
    lagged: Arc<AtomicBool>,
    /// With admission on: the metered balance.
    account: Option<Account>,
}

/// A session's view of its client's balance: the database value at the last read or write,
/// minus what was charged since (`unflushed`, written through every [`FLUSH_EVERY_BYTES`]).
#[derive(Debug, Clone, Copy, Default)]
struct Account {
    remaining: u64,
    unflushed: u64,
}

async fn established(ws: Ws, client: [u8; 32], session: Session, shared: &Shared) {
    let mut live = Live {
        ws,
        session,
        client,
        shared,
        cursor: 0,
        lagged: Arc::new(AtomicBool::new(false)),
        account: None,
    };
    if let Err(text) = live.register().await {
        let _ = send_error(
            &mut live.ws,
            &mut live.session,
            error_code::OVERLOADED,
            text,
        )
        .await;
        close(&mut live.ws, CloseCode::Again, text).await;
        return;
    }
    let (queue, outbound) = mpsc::channel(SESSION_QUEUE_MAX);
    let replaced = Arc::new(Notify::new());
    let generation = shared
        .registry
        .insert(client, queue, live.lagged.clone(), replaced.clone());
    GatewayMetrics::add(&shared.metrics.sessions_started, 1);
    GatewayMetrics::add(&shared.metrics.sessions_active, 1);
    live.run(outbound, &replaced).await;
    live.flush().await;
    shared.registry.remove(&client, generation);
    shared
        .metrics
        .sessions_active
        .fetch_sub(1, Ordering::Relaxed);
}

impl Live<'_> {
    /// Records the client in the mailbox (durably) before anything is delivered.
    async fn register(&self) -> Result<(), &'static str> {
        let (done, committed) = oneshot::channel();
        let command = Command::Register {
            client: self.client,
            done,
        };
        if self.shared.commands.try_send(command).is_err() {
            GatewayMetrics::add(&self.shared.metrics.commands_dropped, 1);
            return Err("gateway overloaded: try again");
        }
        match tokio::time::timeout(REGISTER_TIMEOUT, committed).await {
            Ok(Ok(())) => Ok(()),
            _ => Err("gateway cannot register the client now: try again"),
        }
    }

    async fn stored_count(&self) -> Option<u32> {
        let reader = self.shared.reader.clone();
        let client = self.client;
        tokio::task::spawn_blocking(move || reader.count(&client))
            .await
            .ok()?
            .ok()
    }

    /// Sends the next mailbox rows after the cursor; `Ok(true)` if there may be more.
    async fn send_backlog(&mut self) -> Result<bool, ()> {
        let reader = self.shared.reader.clone();
        let (client, after) = (self.client, self.cursor);
        let rows =
            tokio::task::spawn_blocking(move || reader.fetch(&client, after, FETCH_ROWS_MAX))
                .await
                .map_err(|_| ())?;
        let Ok(rows) = rows else {
            GatewayMetrics::add(&self.shared.metrics.database_errors, 1);
            return Err(());
        };
        let more = rows.len() as u32 >= FETCH_ROWS_MAX;
        for delivery in rows {
            GatewayMetrics::add(&self.shared.metrics.stored_delivered, 1);
            self.deliver(delivery).await?;
        }
        Ok(more)
    }

    async fn deliver(&mut self, delivery: Delivery) -> Result<(), ()> {
        if delivery.id <= self.cursor {
            return Ok(()); // already sent in this session
        }
        self.cursor = delivery.id;
        let message = GatewayMessage::Deliver {
            id: delivery.id,
            kind: delivery.kind,
            identifier: delivery.identifier,
            bytes: delivery.bytes,
        };
        send(&mut self.ws, &mut self.session, &message).await
    }

    async fn run(&mut self, mut outbound: mpsc::Receiver<Delivery>, replaced: &Notify) {
        let Some(stored) = self.stored_count().await else {
            GatewayMetrics::add(&self.shared.metrics.database_errors, 1);
            return;
        };
        if send(
            &mut self.ws,
            &mut self.session,
            &GatewayMessage::Welcome { stored },
        )
        .await
        .is_err()
        {
            return;
        }
        if let Some(admission) = self.shared.admission.clone() {
            let Ok(remaining) = admission.balance(self.client).await else {
                GatewayMetrics::add(&self.shared.metrics.database_errors, 1);
                return;
            };
            self.account = Some(Account {
                remaining,
                unflushed: 0,
            });
            if self.report(remaining).await.is_err() {
                return;
            }
        }
        let mut backlog = true;
        // Runs until the client leaves, errs, or is replaced; every turn does bounded work.
        loop {
            if backlog {
                self.lagged.store(false, Ordering::Release);
                match self.send_backlog().await {
                    Ok(more) => backlog = more,
                    Err(()) => return,
                }
            }
            tokio::select! {
                biased;
                () = replaced.notified() => {
                    let text = "replaced by a newer session of this identity";
                    close(&mut self.ws, CloseCode::Normal, text).await;
                    return;
                }
                incoming = self.ws.next() => {
                    if let Next::Close = self.incoming(incoming).await {
                        return;
                    }
                }
                delivery = outbound.recv(), if !backlog => {
                    let Some(delivery) = delivery else { return };
                    if self.deliver(delivery).await.is_err() {
                        return;
                    }
                    if self.lagged.load(Ordering::Acquire) {
                        backlog = true;
                    }
                }
                () = std::future::ready(()), if backlog => {}
            }
        }
    }

    async fn incoming(
        &mut self,
        incoming: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
    ) -> Next {
        match incoming {
            Some(Ok(Message::Binary(bytes))) => self.on_binary(&bytes).await,
            Some(Ok(Message::Text(_))) => self.fail("text messages are not accepted").await,
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => Next::Continue,
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => Next::Close,
        }
    }

    /// Error to the client, then close this session.
    async fn fail(&mut self, text: &str) -> Next {
        GatewayMetrics::add(&self.shared.metrics.session_errors, 1);
        let _ = send_error(&mut self.ws, &mut self.session, error_code::MALFORMED, text).await;
        close(&mut self.ws, CloseCode::Protocol, text).await;
        Next::Close
    }

    async fn on_binary(&mut self, sealed: &[u8]) -> Next {
        let Ok(plaintext) = self.session.open(sealed) else {
            return self.fail("message does not decrypt").await;
        };
        let message = match ClientMessage::decode(&plaintext) {
            Ok(message) => message,
            Err(_) => return self.fail("malformed message").await,
        };
        let shared = self.shared;
        match message {
            ClientMessage::Forward { first_hop, packet } => {
                let refusal = match shared.first_hops.check(&first_hop) {
                    Err(text) => {
                        GatewayMetrics::add(&shared.metrics.forward_refused, 1);
                        (error_code::NOT_LAYER1, text.to_string())
                    }
                    // Charged before it is queued: a packet dropped by a full egress queue
                    // is paid for, like one lost on the way.
                    Ok(next_hop) => match self.meter(packet.len() as u64).await {
                        Err(refusal) => refusal,
                        Ok(()) => match shared.egress.send(next_hop, &packet) {
                            Ok(()) => {
                                GatewayMetrics::add(&shared.metrics.forwarded_from_clients, 1);
                                return Next::Continue;
                            }
                            Err(e) => (error_code::OVERLOADED, e.to_string()),
                        },
                    },
                };
                match send_error(&mut self.ws, &mut self.session, refusal.0, &refusal.1).await {
                    Ok(()) => Next::Continue,
                    Err(()) => Next::Close,
                }
            }
            ClientMessage::Confirm { ids } => {
                let command = Command::Confirm {
                    client: self.client,
                    ids,
                };
                if shared.commands.try_send(command).is_err() {
                    // Not deleted: the rows are delivered again on the next connection.
                    GatewayMetrics::add(&shared.metrics.commands_dropped, 1);
                }
                Next::Continue
            }
            ClientMessage::Credential { bytes } => self.on_credential(bytes).await,
        }
    }

    /// Sends `Bandwidth{remaining}`.
    async fn report(&mut self, remaining: u64) -> Result<(), ()> {
        let message = GatewayMessage::Bandwidth {
            remaining_bytes: remaining,
        };
        send(&mut self.ws, &mut self.session, &message).await
    }

    /// Charges a forward of `bytes` (admission on), or says why it is refused.
    async fn meter(&mut self, bytes: u64) -> Result<(), (u8, String)> {
        let Some(account) = self.account.as_mut() else {
            return Ok(()); // open admission
        };
        let metrics = &self.shared.metrics;
        if account.remaining < bytes {
            GatewayMetrics::add(&metrics.forwards_refused_bandwidth, 1);
            return Err((
                error_code::NO_BANDWIDTH,
                format!(
                    "no bandwidth: {} bytes left, {bytes} needed; spend a credential",
                    account.remaining
                ),
            ));
        }
        account.remaining -= bytes;
        account.unflushed += bytes;
        GatewayMetrics::add(&metrics.bandwidth_charged_bytes, bytes);
        if account.unflushed >= FLUSH_EVERY_BYTES {
            self.flush().await;
            if let Some(remaining) = self.account.map(|a| a.remaining) {
                // A failed send ends the session at the next read or write.
                let _ = self.report(remaining).await;
            }
        }
        Ok(())
    }

    /// Writes the unflushed charges through and refreshes the balance from the database.
    async fn flush(&mut self) {
        let (Some(admission), Some(account)) = (self.shared.admission.clone(), self.account) else {
            return;
        };
        match admission.charge(self.client, account.unflushed).await {
            Ok(remaining) => {
                self.account = Some(Account {
                    remaining,
                    unflushed: 0,
                });
            }
            // Kept in memory: retried at the next flush.
            Err(()) => GatewayMetrics::add(&self.shared.metrics.database_errors, 1),
        }
    }

    async fn on_credential(&mut self, bytes: Vec<u8>) -> Next {
        let Some(admission) = self.shared.admission.clone() else {
            // Open admission: nothing to pay for; the credential is not spent.
            return Next::Continue;
        };
        let metrics = &self.shared.metrics;
        let answer = match admission.credit(self.client, bytes).await {
            Ok(_) => {
                GatewayMetrics::add(&metrics.credentials_accepted, 1);
                // Charges of this session first, then the credited balance.
                self.flush().await;
                match self.account.map(|a| a.remaining) {
                    Some(remaining) => self.report(remaining).await,
                    None => Ok(()),
                }
            }
            Err(Refusal::Bad(text)) => {
                GatewayMetrics::add(&metrics.credentials_refused, 1);
                send_error(
                    &mut self.ws,
                    &mut self.session,
                    error_code::BAD_CREDENTIAL,
                    &text,
                )
                .await
            }
            Err(Refusal::Unavailable(text)) => {
                GatewayMetrics::add(&metrics.credentials_refused, 1);
                send_error(
                    &mut self.ws,
                    &mut self.session,
                    error_code::OVERLOADED,
                    text,
                )
                .await
            }
        };
        match answer {
            Ok(()) => Next::Continue,
            Err(()) => Next::Close,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::DeliveryKind;

    fn delivery(id: u64) -> Delivery {
        Delivery {
            id,
            kind: DeliveryKind::Message,
            identifier: [0; 16],
            bytes: vec![1],
        }
    }

    #[test]
    fn full_session_queue_marks_lagged_and_replacement_notifies() {
        let registry = Registry::default();
        let client = [1u8; 32];
        assert!(!registry.push(&client, delivery(1)), "no session yet");
        let (queue, mut outbound) = mpsc::channel(1);
        let lagged = Arc::new(AtomicBool::new(false));
        let replaced = Arc::new(Notify::new());
        let first = registry.insert(client, queue, lagged.clone(), replaced.clone());
        assert!(registry.push(&client, delivery(1)));
        assert!(!registry.push(&client, delivery(2)));
        assert!(lagged.load(Ordering::Acquire));
        assert_eq!(outbound.try_recv().unwrap().id, 1);

        let (queue, _outbound) = mpsc::channel(1);
        let second = registry.insert(client, queue, Arc::default(), Arc::new(Notify::new()));
        assert_ne!(first, second);
        // The old session was told; its removal does not remove the new one.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(5), replaced.notified())
                .await
                .unwrap();
        });
        registry.remove(&client, first);
        assert!(registry.push(&client, delivery(3)));
    }

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
            issued_at_s: 0,
        };
        let now = crate::topology::now_s();
        let mut topology = Topology {
            epoch: 1,
            issued_at_s: now,
            valid_until_s: now + 600,
            layers: [
                vec![mix(1, crate::topology::Role::Mixnode)],
                vec![mix(2, crate::topology::Role::Mixnode)],
                vec![],
            ],
            gateways: vec![mix(3, crate::topology::Role::Gateway)],
        };
        let first_hops = FirstHops::new(false);
        first_hops.set_topology(topology.clone());
        let hop = |port: u16| address::encode(&SocketAddr::from(([127, 0, 0, 1], port)));
        assert!(first_hops.check(&hop(1)).is_ok());
        assert!(
            first_hops.check(&hop(2)).is_err(),
            "layer 2 is not a first hop"
        );
        assert!(
            first_hops.check(&hop(3)).is_err(),
            "a gateway is not a first hop"
        );
        assert_eq!(first_hops.epoch(), Some(1));
        topology.valid_until_s = now.saturating_sub(1);
        first_hops.set_topology(topology);
        assert!(
            first_hops.check(&hop(1)).is_err(),
            "an expired topology is refused"
        );
    }
}

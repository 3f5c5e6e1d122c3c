//! The service provider: opens TCP connections for proxy clients (if the allow-list permits)
//! and relays bytes both ways as mixnet messages. It answers through the reply SURBs each
//! proxy connection sends under its random sender tag ([`lethe_proto::service`]), never to an
//! address, unless the proxy chose to reveal its own.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lethe_proto::service::{
    EnvelopeError, FromService, SenderTag, SurbStore, ToService, Use, RESPONSE_BODY_BYTES_MAX,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, Notify};

use super::ordered::Ordered;
use super::protocol::{error_code, legacy_connect_refusal, Chunk, Request, Response};
use super::relay::{Incoming, MixnetPort, Outgoing, ReplyOutcome};
use super::socks5::AllowList;
use crate::limits;

/// Bytes read from a target into one Data response: what one SURB carries.
pub const PROVIDER_READ_BYTES: usize =
    RESPONSE_BODY_BYTES_MAX - super::protocol::CHUNK_HEADER_BYTES;
/// How long a response waits for its conversation's SURBs before the connection is given up.
pub const SURB_WAIT: Duration = Duration::from_secs(60);
/// While waiting for SURBs, how often to look again whether to repeat an ask.
const SURB_WAIT_TICK: Duration = Duration::from_secs(1);

#[derive(Default, Debug)]
pub struct ProviderStats {
    pub connects: AtomicU64,
    pub refused_not_allowed: AtomicU64,
    pub connect_failed: AtomicU64,
    pub malformed: AtomicU64,
    pub overflow: AtomicU64,
    /// Requests in the first relay protocol (a proxy to upgrade).
    pub old_protocol: AtomicU64,
    /// SURB bundles refused: a tag's or the provider's bound was reached.
    pub surbs_refused: AtomicU64,
    /// Connections given up because their SURBs ran out and none came.
    pub surbs_stalled: AtomicU64,
}

/// Where a connection's responses go.
#[derive(Debug, Clone)]
enum Route {
    /// Through the SURBs sent under this tag (the default).
    Surbs(SenderTag),
    /// To the address the proxy chose to reveal.
    Address(SenderTag, String),
}

#[derive(Debug)]
struct Conn {
    ordered: Ordered,
    /// Set once the TCP connection is open; chunks wait in `ordered` until then.
    to_socket: Option<mpsc::Sender<Vec<u8>>>,
}

/// Everything the provider holds about its users (what `--state-dump` writes).
#[derive(Debug, Default)]
struct State {
    conns: HashMap<u64, Conn>,
    surbs: SurbStore,
}

type Shared = Arc<Mutex<State>>;

/// Sends responses: through a tag's SURBs (asking for more at the low-water mark) or to a
/// revealed address.
#[derive(Clone)]
struct Replier {
    outgoing: mpsc::Sender<Outgoing>,
    state: Shared,
    /// Woken whenever SURBs arrive.
    arrived: Arc<Notify>,
    started: Instant,
    stats: Arc<ProviderStats>,
}

impl Replier {
    fn now_us(&self) -> u64 {
        lethe_proto::duration_us(self.started.elapsed())
    }

    /// Queues `response`; false if it cannot be (SURBs ran out, the client stopped).
    async fn respond(&self, route: &Route, response: &Response) -> bool {
        match route {
            Route::Address(tag, to) => {
                let bytes = FromService::Response {
                    tag: *tag,
                    body: response.encode(),
                }
                .encode();
                self.outgoing
                    .send(Outgoing::Send {
                        to: to.clone(),
                        bytes,
                        reply_surbs: 0,
                    })
                    .await
                    .is_ok()
            }
            Route::Surbs(tag) => {
                let bytes = FromService::Response {
                    tag: *tag,
                    body: response.encode(),
                }
                .encode();
                self.through_surbs(tag, bytes).await
            }
        }
    }

    async fn through_surbs(&self, tag: &SenderTag, bytes: Vec<u8>) -> bool {
        let deadline = tokio::time::Instant::now() + SURB_WAIT;
        loop {
            let arrived = self.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            let now_us = self.now_us();
            let (bundle, ask) = match self.state.lock() {
                Ok(mut s) => {
                    let ask = s
                        .surbs
                        .wants_more(tag, now_us)
                        .and_then(|wanted| Some((s.surbs.take(tag, Use::Ask)?, wanted)));
                    (s.surbs.take(tag, Use::Reply), ask)
                }
                Err(_) => return false,
            };
            if let Some((ask_bundle, wanted)) = ask {
                let more = FromService::MoreSurbs { tag: *tag, wanted }.encode();
                if self.reply_through(tag, ask_bundle, more).await == ReplyOutcome::Failed {
                    return false;
                }
            }
            if let Some(bundle) = bundle {
                match self.reply_through(tag, bundle, bytes.clone()).await {
                    ReplyOutcome::Queued => return true,
                    ReplyOutcome::NoSurbs => continue,
                    ReplyOutcome::Failed => return false,
                }
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                self.stats.surbs_stalled.fetch_add(1, Ordering::Relaxed);
                return false;
            }
            let _ = tokio::time::timeout_at(deadline.min(now + SURB_WAIT_TICK), arrived).await;
        }
    }

    async fn reply_through(&self, tag: &SenderTag, bundle: u64, bytes: Vec<u8>) -> ReplyOutcome {
        let (sent, outcome) = oneshot::channel();
        let command = Outgoing::Reply {
            bundle,
            bytes,
            sent,
        };
        if self.outgoing.send(command).await.is_err() {
            return ReplyOutcome::Failed;
        }
        let outcome = outcome.await.unwrap_or(ReplyOutcome::Failed);
        if outcome == ReplyOutcome::NoSurbs {
            if let Ok(mut s) = self.state.lock() {
                s.surbs.vanished(tag, bundle);
            }
        }
        outcome
    }

    /// The conversation is over: its SURBs are discarded.
    fn forget(&self, conn_id: u64, route: &Route) {
        let bundles = match self.state.lock() {
            Ok(mut s) => {
                s.conns.remove(&conn_id);
                match route {
                    Route::Surbs(tag) | Route::Address(tag, _) => s.surbs.forget(tag),
                }
            }
            Err(_) => return,
        };
        for bundle in bundles {
            let _ = self.outgoing.try_send(Outgoing::Discard { bundle });
        }
    }

    fn discard(&self, bundle: Option<u64>) {
        if let Some(bundle) = bundle {
            let _ = self.outgoing.try_send(Outgoing::Discard { bundle });
        }
    }
}

/// Serves relay requests from the mixnet until it closes. With `state_dump`, writes a debug
/// dump of everything it holds about its users there after each message (for tests and
/// audits: it must name no user).
pub async fn run(
    port: MixnetPort,
    allow: AllowList,
    stats: Arc<ProviderStats>,
    state_dump: Option<PathBuf>,
) {
    let MixnetPort {
        outgoing,
        mut incoming,
        ..
    } = port;
    let replier = Replier {
        outgoing,
        state: Arc::new(Mutex::new(State::default())),
        arrived: Arc::new(Notify::new()),
        started: Instant::now(),
        stats: stats.clone(),
    };
    let allow = Arc::new(allow);
    while let Some(message) = incoming.recv().await {
        handle(&replier, message, &allow, &stats);
        if let Some(path) = &state_dump {
            write_dump(&replier.state, path);
        }
    }
}

fn handle(replier: &Replier, message: Incoming, allow: &Arc<AllowList>, stats: &ProviderStats) {
    let envelope = match ToService::decode(&message.data) {
        Ok(e) => e,
        Err(error @ EnvelopeError::Version(_)) => {
            stats.old_protocol.fetch_add(1, Ordering::Relaxed);
            if let Some((to, refusal)) = legacy_connect_refusal(&message.data, &error.to_string()) {
                let _ = replier.outgoing.try_send(Outgoing::Send {
                    to,
                    bytes: refusal,
                    reply_surbs: 0,
                });
            }
            replier.discard(message.surb_bundle);
            return;
        }
        Err(EnvelopeError::Malformed(_)) => {
            stats.malformed.fetch_add(1, Ordering::Relaxed);
            replier.discard(message.surb_bundle);
            return;
        }
    };
    let tag = match &envelope {
        ToService::Request { tag, .. } | ToService::Surbs { tag } => *tag,
    };
    if let Some(bundle) = message.surb_bundle {
        let added = replier
            .state
            .lock()
            .map(|mut s| s.surbs.add(tag, bundle, message.reply_surbs).is_ok());
        if added.unwrap_or(false) {
            replier.arrived.notify_waiters();
        } else {
            stats.surbs_refused.fetch_add(1, Ordering::Relaxed);
            replier.discard(Some(bundle));
        }
    }
    let ToService::Request { reply_to, body, .. } = envelope else {
        return;
    };
    let request = match Request::decode(&body) {
        Ok(r) => r,
        Err(_) => {
            stats.malformed.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    match request {
        Request::Connect { conn_id, target } => {
            let route = match reply_to {
                Some(address) => Route::Address(tag, address),
                None => Route::Surbs(tag),
            };
            let admitted = replier.state.lock().map(|mut s| {
                if s.conns.len() >= limits::SOCKS_CONNECTIONS_MAX && !s.conns.contains_key(&conn_id)
                {
                    return false;
                }
                s.conns.entry(conn_id).or_insert_with(|| Conn {
                    ordered: Ordered::new(limits::SOCKS_REORDER_BYTES_MAX),
                    to_socket: None,
                });
                true
            });
            let replier = replier.clone();
            if !admitted.unwrap_or(false) {
                stats.overflow.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(async move {
                    let busy = Response::ConnectError {
                        conn_id,
                        code: error_code::OVERLOADED,
                        text: "provider busy".into(),
                    };
                    replier.respond(&route, &busy).await;
                    replier.forget(conn_id, &route);
                });
                return;
            }
            tokio::spawn(open(conn_id, route, target, replier, allow.clone()));
        }
        Request::Data(chunk) => accept_chunk(&replier.state, chunk, stats),
    }
}

fn write_dump(state: &Shared, path: &std::path::Path) {
    let Ok(text) = state.lock().map(|s| format!("{s:#?}\n")) else {
        return;
    };
    let tmp = path.with_extension("tmp");
    if let Err(e) = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, path)) {
        tracing::warn!(error = %e, path = %path.display(), "state dump not written");
    }
}

fn accept_chunk(state: &Shared, chunk: Chunk, stats: &ProviderStats) {
    let Ok(mut s) = state.lock() else { return };
    let c = &mut s.conns;
    let len = c.len();
    let conn = match c.get_mut(&chunk.conn_id) {
        Some(conn) => conn,
        // Data overtook its Connect on another route: hold it (bounded).
        None if len < limits::SOCKS_CONNECTIONS_MAX => {
            c.entry(chunk.conn_id).or_insert_with(|| Conn {
                ordered: Ordered::new(limits::SOCKS_REORDER_BYTES_MAX),
                to_socket: None,
            })
        }
        None => {
            stats.overflow.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    if conn
        .ordered
        .push(chunk.seq, chunk.bytes, chunk.closed)
        .is_err()
    {
        stats.overflow.fetch_add(1, Ordering::Relaxed);
        c.remove(&chunk.conn_id);
        return;
    }
    flush(c, chunk.conn_id);
}

/// Moves in-order chunks to the socket writer, if the socket is open.
fn flush(c: &mut HashMap<u64, Conn>, conn_id: u64) {
    let Some(conn) = c.get_mut(&conn_id) else {
        return;
    };
    let Some(to_socket) = conn.to_socket.clone() else {
        return;
    };
    while let Some((bytes, closed)) = conn.ordered.pop() {
        if to_socket.try_send(bytes).is_err() {
            c.remove(&conn_id);
            return;
        }
        if closed {
            let _ = to_socket.try_send(Vec::new());
            return;
        }
    }
}

async fn open(conn_id: u64, route: Route, target: String, replier: Replier, allow: Arc<AllowList>) {
    let stats = replier.stats.clone();
    let refuse = |code: u8, text: String| Response::ConnectError {
        conn_id,
        code,
        text,
    };
    let refusal = if !allow.allows(&target) {
        stats.refused_not_allowed.fetch_add(1, Ordering::Relaxed);
        Err(refuse(
            error_code::NOT_ALLOWED,
            format!("{target} is not on the allow-list"),
        ))
    } else {
        match tokio::time::timeout(
            Duration::from_millis(limits::SOCKS_PROVIDER_CONNECT_TIMEOUT_MS),
            TcpStream::connect(&target),
        )
        .await
        {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) => {
                stats.connect_failed.fetch_add(1, Ordering::Relaxed);
                let code = if e.kind() == std::io::ErrorKind::ConnectionRefused {
                    error_code::REFUSED
                } else {
                    error_code::UNREACHABLE
                };
                Err(refuse(code, e.to_string()))
            }
            Err(_) => {
                stats.connect_failed.fetch_add(1, Ordering::Relaxed);
                Err(refuse(error_code::UNREACHABLE, "connect timed out".into()))
            }
        }
    };
    let stream = match refusal {
        Ok(stream) => stream,
        Err(response) => {
            replier.respond(&route, &response).await;
            replier.forget(conn_id, &route);
            return;
        }
    };
    stats.connects.fetch_add(1, Ordering::Relaxed);
    let (to_socket, mut from_mixnet) = mpsc::channel::<Vec<u8>>(limits::SOCKS_SOCKET_QUEUE_CHUNKS);
    if let Ok(mut s) = replier.state.lock() {
        if let Some(conn) = s.conns.get_mut(&conn_id) {
            conn.to_socket = Some(to_socket);
        }
        flush(&mut s.conns, conn_id);
    }
    if !replier
        .respond(&route, &Response::Connected { conn_id })
        .await
    {
        replier.forget(conn_id, &route);
        return;
    }
    let (mut reader, mut writer) = stream.into_split();
    let upstream = async {
        let mut seq = 0u64;
        let mut buf = vec![0u8; PROVIDER_READ_BYTES];
        loop {
            let n = reader.read(&mut buf).await.unwrap_or(0);
            let chunk = Chunk {
                conn_id,
                seq,
                closed: n == 0,
                bytes: buf[..n].to_vec(),
            };
            seq += 1;
            let sent = replier.respond(&route, &Response::Data(chunk)).await;
            if n == 0 || !sent {
                break;
            }
        }
    };
    let downstream = async {
        while let Some(bytes) = from_mixnet.recv().await {
            if bytes.is_empty() || writer.write_all(&bytes).await.is_err() {
                break;
            }
        }
        let _ = writer.shutdown().await;
    };
    tokio::join!(upstream, downstream);
    replier.forget(conn_id, &route);
}

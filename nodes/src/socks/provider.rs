//! The service provider: opens TCP connections for proxy clients (if the allow-list permits)
//! and relays bytes both ways as mixnet messages. Built on [`crate::service`]: it answers
//! through the reply SURBs each proxy connection sends under its random sender tag, never to
//! an address, unless the proxy chose to reveal its own.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lethe_proto::service::VERSION;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::ordered::Ordered;
use super::protocol::{error_code, legacy_connect_refusal, Chunk, Request, Response};
use super::relay::MixnetPort;
use super::socks5::AllowList;
use crate::limits;
use crate::service::{write_dump, Received, Responder, SenderTag, Service, ServiceStats};

/// How often the state dump is rewritten while no request comes (SURBs may still arrive).
const STATE_DUMP_EVERY: Duration = Duration::from_secs(1);

#[derive(Default, Debug)]
pub struct ProviderStats {
    pub connects: AtomicU64,
    pub refused_not_allowed: AtomicU64,
    pub connect_failed: AtomicU64,
    pub malformed: AtomicU64,
    pub overflow: AtomicU64,
    /// The envelope's counters: old protocols, SURBs refused, responses stalled.
    pub service: Arc<ServiceStats>,
}

/// Where a connection's responses go: through the SURBs sent under the tag, or to the
/// address the proxy chose to reveal.
#[derive(Debug, Clone)]
struct Route {
    tag: SenderTag,
    reply_to: Option<String>,
}

#[derive(Debug)]
struct Conn {
    /// Known once the Connect arrived (Data may overtake it).
    route: Option<Route>,
    ordered: Ordered,
    /// Set once the TCP connection is open; chunks wait in `ordered` until then.
    to_socket: Option<mpsc::Sender<Vec<u8>>>,
}

type Conns = Arc<Mutex<HashMap<u64, Conn>>>;

/// What a connection's tasks share.
#[derive(Clone)]
struct Ctx {
    conns: Conns,
    responder: Responder,
    stats: Arc<ProviderStats>,
}

impl Ctx {
    async fn respond(&self, route: &Route, response: &Response) -> bool {
        self.responder
            .respond(&route.tag, route.reply_to.as_deref(), response.encode())
            .await
    }

    /// The connection is over: once the proxy has acknowledged every response (lost ones
    /// are resent meanwhile), its SURBs are discarded.
    async fn finish(&self, conn_id: u64, route: &Route) {
        if let Ok(mut c) = self.conns.lock() {
            c.remove(&conn_id);
        }
        self.responder.settle(&route.tag).await;
        self.responder.forget(&route.tag);
    }
}

/// Serves relay requests from the mixnet until it closes. With `state_dump`, writes a debug
/// dump of everything it holds about its users there after each request and every
/// [`STATE_DUMP_EVERY`] (for tests and audits: it must name no user who did not reveal its
/// address; its SURB counters show expired SURBs).
pub async fn run(
    port: MixnetPort,
    allow: AllowList,
    stats: Arc<ProviderStats>,
    state_dump: Option<PathBuf>,
) {
    let mut service = Service::new(port, stats.service.clone());
    let ctx = Ctx {
        conns: Arc::new(Mutex::new(HashMap::new())),
        responder: service.responder(),
        stats,
    };
    let allow = Arc::new(allow);
    let mut dump_tick = tokio::time::interval(STATE_DUMP_EVERY);
    loop {
        tokio::select! {
            received = service.next() => {
                let Some(received) = received else { break };
                serve_one(&ctx, received, &allow);
            }
            _ = dump_tick.tick(), if state_dump.is_some() => {}
        }
        if let Some(path) = &state_dump {
            let conns = ctx
                .conns
                .lock()
                .map(|c| format!("{c:#?}"))
                .unwrap_or_default();
            write_dump(path, &format!("{conns}\n{}\n", ctx.responder.dump()));
        }
    }
}

fn serve_one(ctx: &Ctx, received: Received, allow: &Arc<AllowList>) {
    match received {
        Received::Request(request) => handle(ctx, request, allow),
        Received::OtherVersion(bytes) => {
            let error = format!(
                "SOCKS relay protocol version {} is not spoken here (version {VERSION} is): \
                 upgrade lethe",
                bytes.first().copied().unwrap_or(0)
            );
            if let Some((to, refusal)) = legacy_connect_refusal(&bytes, &error) {
                ctx.responder.send_to(to, refusal);
            }
        }
    }
}

fn handle(ctx: &Ctx, request: crate::service::Request, allow: &Arc<AllowList>) {
    let crate::service::Request {
        tag,
        reply_to,
        body,
    } = request;
    let request = match Request::decode(&body) {
        Ok(r) => r,
        Err(_) => {
            ctx.stats.malformed.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    match request {
        Request::Connect { conn_id, target } => {
            if let Some(address) = &reply_to {
                tracing::debug!(conn_id, %address, "a proxy revealed its address");
            }
            let route = Route { tag, reply_to };
            let admitted = ctx.conns.lock().map(|mut c| {
                if c.len() >= limits::SOCKS_CONNECTIONS_MAX && !c.contains_key(&conn_id) {
                    return false;
                }
                let conn = c.entry(conn_id).or_insert_with(|| Conn {
                    route: None,
                    ordered: Ordered::new(limits::SOCKS_REORDER_BYTES_MAX),
                    to_socket: None,
                });
                conn.route = Some(route.clone());
                true
            });
            let ctx = ctx.clone();
            if !admitted.unwrap_or(false) {
                ctx.stats.overflow.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(async move {
                    let busy = Response::ConnectError {
                        conn_id,
                        code: error_code::OVERLOADED,
                        text: "provider busy".into(),
                    };
                    ctx.respond(&route, &busy).await;
                    ctx.responder.settle(&route.tag).await;
                    ctx.responder.forget(&route.tag);
                });
                return;
            }
            tokio::spawn(open(conn_id, route, target, ctx, allow.clone()));
        }
        Request::Data(chunk) => accept_chunk(&ctx.conns, chunk, &ctx.stats),
    }
}

fn accept_chunk(conns: &Conns, chunk: Chunk, stats: &ProviderStats) {
    let Ok(mut c) = conns.lock() else { return };
    let len = c.len();
    let conn = match c.get_mut(&chunk.conn_id) {
        Some(conn) => conn,
        // Data overtook its Connect on another route: hold it (bounded).
        None if len < limits::SOCKS_CONNECTIONS_MAX => {
            c.entry(chunk.conn_id).or_insert_with(|| Conn {
                route: None,
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
    flush(&mut c, chunk.conn_id);
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

async fn open(conn_id: u64, route: Route, target: String, ctx: Ctx, allow: Arc<AllowList>) {
    let stats = ctx.stats.clone();
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
            ctx.respond(&route, &response).await;
            ctx.finish(conn_id, &route).await;
            return;
        }
    };
    stats.connects.fetch_add(1, Ordering::Relaxed);
    let (to_socket, mut from_mixnet) = mpsc::channel::<Vec<u8>>(limits::SOCKS_SOCKET_QUEUE_CHUNKS);
    if let Ok(mut c) = ctx.conns.lock() {
        if let Some(conn) = c.get_mut(&conn_id) {
            conn.to_socket = Some(to_socket);
        }
        flush(&mut c, conn_id);
    }
    if !ctx.respond(&route, &Response::Connected { conn_id }).await {
        ctx.finish(conn_id, &route).await;
        return;
    }
    let (mut reader, mut writer) = stream.into_split();
    let upstream = async {
        let mut seq = 0u64;
        let mut buf = vec![0u8; limits::SOCKS_PROVIDER_READ_BYTES];
        loop {
            let n = reader.read(&mut buf).await.unwrap_or(0);
            let chunk = Chunk {
                conn_id,
                seq,
                closed: n == 0,
                bytes: buf[..n].to_vec(),
            };
            seq += 1;
            let sent = ctx.respond(&route, &Response::Data(chunk)).await;
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
    ctx.finish(conn_id, &route).await;
}

//! The service provider: opens TCP connections for proxy clients (if the allow-list permits)
//! and relays bytes both ways as mixnet messages.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::ordered::Ordered;
use super::protocol::{error_code, Chunk, Request, Response};
use super::relay::{
    MixnetPort, Outgoing, CONNECTIONS_MAX, READ_CHUNK_BYTES, REORDER_BYTES_MAX, SOCKET_QUEUE_CHUNKS,
};
use super::socks5::AllowList;

pub const TCP_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Default, Debug)]
pub struct ProviderStats {
    pub connects: AtomicU64,
    pub refused_not_allowed: AtomicU64,
    pub connect_failed: AtomicU64,
    pub malformed: AtomicU64,
    pub overflow: AtomicU64,
}

struct Conn {
    ordered: Ordered,
    /// Set once the TCP connection is open; chunks wait in `ordered` until then.
    to_socket: Option<mpsc::Sender<Vec<u8>>>,
}

type Conns = Arc<Mutex<HashMap<u64, Conn>>>;

/// Serves relay requests from the mixnet until it closes.
pub async fn run(port: MixnetPort, allow: AllowList, stats: Arc<ProviderStats>) {
    let MixnetPort {
        outgoing,
        mut incoming,
        ..
    } = port;
    let conns: Conns = Arc::new(Mutex::new(HashMap::new()));
    let allow = Arc::new(allow);
    while let Some(bytes) = incoming.recv().await {
        let request = match Request::decode(&bytes) {
            Ok(r) => r,
            Err(_) => {
                stats.malformed.fetch_add(1, Ordering::Relaxed);
                continue;
            }
        };
        match request {
            Request::Connect {
                conn_id,
                reply_to,
                target,
            } => {
                let admitted = conns.lock().map(|mut c| {
                    if c.len() >= CONNECTIONS_MAX && !c.contains_key(&conn_id) {
                        return false;
                    }
                    c.entry(conn_id).or_insert_with(|| Conn {
                        ordered: Ordered::new(REORDER_BYTES_MAX),
                        to_socket: None,
                    });
                    true
                });
                if !admitted.unwrap_or(false) {
                    stats.overflow.fetch_add(1, Ordering::Relaxed);
                    let _ = outgoing.try_send(Outgoing {
                        to: reply_to,
                        bytes: Response::ConnectError {
                            conn_id,
                            code: error_code::OVERLOADED,
                            text: "provider busy".into(),
                        }
                        .encode(),
                    });
                    continue;
                }
                tokio::spawn(open(
                    conn_id,
                    reply_to,
                    target,
                    conns.clone(),
                    outgoing.clone(),
                    allow.clone(),
                    stats.clone(),
                ));
            }
            Request::Data(chunk) => accept_chunk(&conns, chunk, &stats),
        }
    }
}

fn accept_chunk(conns: &Conns, chunk: Chunk, stats: &ProviderStats) {
    let Ok(mut c) = conns.lock() else { return };
    let len = c.len();
    let conn = match c.get_mut(&chunk.conn_id) {
        Some(conn) => conn,
        // Data overtook its Connect on another route: hold it (bounded).
        None if len < CONNECTIONS_MAX => c.entry(chunk.conn_id).or_insert_with(|| Conn {
            ordered: Ordered::new(REORDER_BYTES_MAX),
            to_socket: None,
        }),
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

async fn open(
    conn_id: u64,
    reply_to: String,
    target: String,
    conns: Conns,
    outgoing: mpsc::Sender<Outgoing>,
    allow: Arc<AllowList>,
    stats: Arc<ProviderStats>,
) {
    let refuse = |code: u8, text: String| Outgoing {
        to: reply_to.clone(),
        bytes: Response::ConnectError {
            conn_id,
            code,
            text,
        }
        .encode(),
    };
    if !allow.allows(&target) {
        stats.refused_not_allowed.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut c) = conns.lock() {
            c.remove(&conn_id);
        }
        let _ = outgoing
            .send(refuse(
                error_code::NOT_ALLOWED,
                format!("{target} is not on the allow-list"),
            ))
            .await;
        return;
    }
    let stream = match tokio::time::timeout(TCP_CONNECT_TIMEOUT, TcpStream::connect(&target)).await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            stats.connect_failed.fetch_add(1, Ordering::Relaxed);
            if let Ok(mut c) = conns.lock() {
                c.remove(&conn_id);
            }
            let code = if e.kind() == std::io::ErrorKind::ConnectionRefused {
                error_code::REFUSED
            } else {
                error_code::UNREACHABLE
            };
            let _ = outgoing.send(refuse(code, e.to_string())).await;
            return;
        }
        Err(_) => {
            stats.connect_failed.fetch_add(1, Ordering::Relaxed);
            if let Ok(mut c) = conns.lock() {
                c.remove(&conn_id);
            }
            let _ = outgoing
                .send(refuse(error_code::UNREACHABLE, "connect timed out".into()))
                .await;
            return;
        }
    };
    stats.connects.fetch_add(1, Ordering::Relaxed);
    let (to_socket, mut from_mixnet) = mpsc::channel::<Vec<u8>>(SOCKET_QUEUE_CHUNKS);
    if let Ok(mut c) = conns.lock() {
        if let Some(conn) = c.get_mut(&conn_id) {
            conn.to_socket = Some(to_socket);
        }
        flush(&mut c, conn_id);
    }
    if outgoing
        .send(Outgoing {
            to: reply_to.clone(),
            bytes: Response::Connected { conn_id }.encode(),
        })
        .await
        .is_err()
    {
        return;
    }
    let (mut reader, mut writer) = stream.into_split();
    let upstream = async {
        let mut seq = 0u64;
        let mut buf = vec![0u8; READ_CHUNK_BYTES];
        loop {
            let n = reader.read(&mut buf).await.unwrap_or(0);
            let chunk = Chunk {
                conn_id,
                seq,
                closed: n == 0,
                bytes: buf[..n].to_vec(),
            };
            seq += 1;
            let sent = outgoing
                .send(Outgoing {
                    to: reply_to.clone(),
                    bytes: Response::Data(chunk).encode(),
                })
                .await;
            if n == 0 || sent.is_err() {
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
    if let Ok(mut c) = conns.lock() {
        c.remove(&conn_id);
    }
}

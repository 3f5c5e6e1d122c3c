//! The client side: a SOCKS5 listener whose connections are relayed to a service provider.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};

use super::ordered::Ordered;
use super::protocol::{error_code, Chunk, Request, Response};
use super::relay::{
    MixnetPort, Outgoing, CONNECTIONS_MAX, READ_CHUNK_BYTES, REORDER_BYTES_MAX, SOCKET_QUEUE_CHUNKS,
};
use super::socks5::{self, reply};

/// How long the provider has to answer a Connect (mixnet round trip plus its connect).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(60);

struct Conn {
    connected: Option<oneshot::Sender<Result<(), (u8, String)>>>,
    ordered: Ordered,
    to_socket: mpsc::Sender<Vec<u8>>,
}

type Conns = Arc<Mutex<HashMap<u64, Conn>>>;

/// Counters a caller may print.
#[derive(Default, Debug)]
pub struct ProxyStats {
    pub connections: std::sync::atomic::AtomicU64,
    pub refused: std::sync::atomic::AtomicU64,
    pub malformed: std::sync::atomic::AtomicU64,
}

/// Serves SOCKS5 on `listener` until the mixnet port closes.
pub async fn run(
    listener: TcpListener,
    port: MixnetPort,
    provider: String,
    stats: Arc<ProxyStats>,
) {
    let conns: Conns = Arc::new(Mutex::new(HashMap::new()));
    let MixnetPort {
        outgoing,
        mut incoming,
        own_address,
    } = port;
    let dispatch_conns = conns.clone();
    let dispatch_stats = stats.clone();
    let dispatcher = tokio::spawn(async move {
        while let Some(bytes) = incoming.recv().await {
            match Response::decode(&bytes) {
                Ok(response) => dispatch(&dispatch_conns, response),
                Err(_) => {
                    dispatch_stats
                        .malformed
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }
    });
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let full = conns.lock().map(|c| c.len() >= CONNECTIONS_MAX).unwrap_or(true);
                if full {
                    stats.refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    continue;
                }
                stats.connections.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tokio::spawn(serve(stream, conns.clone(), outgoing.clone(), provider.clone(), own_address.clone()));
            }
            _ = outgoing.closed() => break,
        }
    }
    dispatcher.abort();
}

fn dispatch(conns: &Conns, response: Response) {
    let Ok(mut conns) = conns.lock() else { return };
    match response {
        Response::Connected { conn_id } => {
            if let Some(tx) = conns.get_mut(&conn_id).and_then(|c| c.connected.take()) {
                let _ = tx.send(Ok(()));
            }
        }
        Response::ConnectError {
            conn_id,
            code,
            text,
        } => {
            if let Some(mut conn) = conns.remove(&conn_id) {
                if let Some(tx) = conn.connected.take() {
                    let _ = tx.send(Err((code, text)));
                }
            }
        }
        Response::Data(Chunk {
            conn_id,
            seq,
            closed,
            bytes,
        }) => {
            let Some(conn) = conns.get_mut(&conn_id) else {
                return;
            };
            if conn.ordered.push(seq, bytes, closed).is_err() {
                conns.remove(&conn_id);
                return;
            }
            while let Some((bytes, closed)) = conn.ordered.pop() {
                // A full socket queue means the application stopped reading: close the relay.
                if conn.to_socket.try_send(bytes).is_err() {
                    conns.remove(&conn_id);
                    return;
                }
                if closed {
                    // An empty chunk after the data tells the writer to finish.
                    let _ = conn.to_socket.try_send(Vec::new());
                    break;
                }
            }
        }
    }
}

async fn serve(
    mut stream: TcpStream,
    conns: Conns,
    outgoing: mpsc::Sender<Outgoing>,
    provider: String,
    own_address: String,
) {
    let Ok(target) = socks5::accept(&mut stream).await else {
        return;
    };
    let conn_id: u64 = rand::random();
    let (connected_tx, connected_rx) = oneshot::channel();
    let (to_socket, mut from_mixnet) = mpsc::channel::<Vec<u8>>(SOCKET_QUEUE_CHUNKS);
    if let Ok(mut c) = conns.lock() {
        c.insert(
            conn_id,
            Conn {
                connected: Some(connected_tx),
                ordered: Ordered::new(REORDER_BYTES_MAX),
                to_socket,
            },
        );
    }
    let connect = Request::Connect {
        conn_id,
        reply_to: own_address,
        target,
    };
    if outgoing
        .send(Outgoing {
            to: provider.clone(),
            bytes: connect.encode(),
        })
        .await
        .is_err()
    {
        let _ = socks5::send_reply(&mut stream, reply::GENERAL_FAILURE).await;
        return;
    }
    let code = match tokio::time::timeout(CONNECT_TIMEOUT, connected_rx).await {
        Ok(Ok(Ok(()))) => reply::SUCCEEDED,
        Ok(Ok(Err((code, _)))) => match code {
            error_code::NOT_ALLOWED => reply::NOT_ALLOWED,
            error_code::REFUSED => reply::CONNECTION_REFUSED,
            error_code::UNREACHABLE => reply::HOST_UNREACHABLE,
            _ => reply::GENERAL_FAILURE,
        },
        Ok(Err(_)) => reply::GENERAL_FAILURE,
        Err(_) => reply::TTL_EXPIRED,
    };
    if socks5::send_reply(&mut stream, code).await.is_err() || code != reply::SUCCEEDED {
        if let Ok(mut c) = conns.lock() {
            c.remove(&conn_id);
        }
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
                    to: provider.clone(),
                    bytes: Request::Data(chunk).encode(),
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

//! The client side: a SOCKS5 listener whose connections are relayed to a service provider.
//! Each connection has its own random sender tag and sends reply SURBs under it (more when
//! the provider asks, bounded); the proxy's address goes out only with `reveal_address`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};

use lethe_proto::limits::{SERVICE_SURBS_ASK, SERVICE_TAG_SURBS_MAX};
use lethe_proto::service::{FromService, SenderTag, ToService, SENDER_TAG_BYTES};

use super::ordered::Ordered;
use super::protocol::{error_code, Chunk, Request, Response};
use super::relay::{MixnetPort, Outgoing};
use super::socks5::{self, reply};
use crate::limits;

struct Conn {
    tag: SenderTag,
    connected: Option<oneshot::Sender<Result<(), (u8, String)>>>,
    ordered: Ordered,
    to_socket: mpsc::Sender<Vec<u8>>,
    /// SURBs sent under the tag less the replies that came back through them: what the
    /// provider may still hold (more if replies were lost), bounded when it asks for more.
    surbs_out: usize,
}

/// How the proxy talks to the provider.
#[derive(Debug, Clone)]
pub struct ProxyOptions {
    /// The provider's address.
    pub provider: String,
    /// Send our own address with each Connect and get replies to it, not through SURBs: the
    /// provider then learns who we are (the first protocol's behaviour).
    pub reveal_address: bool,
}

type Conns = Arc<Mutex<HashMap<u64, Conn>>>;

/// Counters a caller may print.
#[derive(Default, Debug)]
pub struct ProxyStats {
    pub connections: std::sync::atomic::AtomicU64,
    pub refused: std::sync::atomic::AtomicU64,
    pub malformed: std::sync::atomic::AtomicU64,
    /// SURBs sent when the provider asked for more.
    pub surbs_topped_up: std::sync::atomic::AtomicU64,
    /// Asks for more SURBs refused: the provider would hold more than a tag's bound.
    pub surb_asks_refused: std::sync::atomic::AtomicU64,
}

/// Serves SOCKS5 on `listener` until the mixnet port closes.
pub async fn run(
    listener: TcpListener,
    port: MixnetPort,
    options: ProxyOptions,
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
    let dispatch_out = outgoing.clone();
    let provider = options.provider.clone();
    let dispatcher = tokio::spawn(async move {
        while let Some(message) = incoming.recv().await {
            let decoded = FromService::decode(&message.data)
                .ok()
                .and_then(|m| match m {
                    FromService::Response { tag, body } => {
                        Some((tag, Some(Response::decode(&body).ok()?)))
                    }
                    FromService::MoreSurbs { tag, wanted } => {
                        let wanted = usize::from(wanted).min(SERVICE_SURBS_ASK);
                        top_up(
                            &dispatch_conns,
                            &dispatch_out,
                            &provider,
                            tag,
                            wanted,
                            &dispatch_stats,
                        );
                        Some((tag, None))
                    }
                });
            match decoded {
                Some((tag, Some(response))) => dispatch(&dispatch_conns, tag, response),
                Some((_, None)) => {}
                None => {
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
                let full = conns.lock().map(|c| c.len() >= limits::SOCKS_CONNECTIONS_MAX).unwrap_or(true);
                if full {
                    stats.refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    continue;
                }
                stats.connections.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let reply_to = options.reveal_address.then(|| own_address.clone());
                tokio::spawn(serve(stream, conns.clone(), outgoing.clone(), options.provider.clone(), reply_to));
            }
            _ = outgoing.closed() => break,
        }
    }
    dispatcher.abort();
}

/// The provider asks for `wanted` more SURBs under `tag`: send them, unless it would then
/// hold more than a tag may (it spent one of ours to ask).
fn top_up(
    conns: &Conns,
    outgoing: &mpsc::Sender<Outgoing>,
    provider: &str,
    tag: SenderTag,
    wanted: usize,
    stats: &ProxyStats,
) {
    use std::sync::atomic::Ordering::Relaxed;
    let granted = conns.lock().ok().and_then(|mut c| {
        let conn = c.values_mut().find(|c| c.tag == tag)?;
        conn.surbs_out = conn.surbs_out.saturating_sub(1);
        if conn.surbs_out + wanted > SERVICE_TAG_SURBS_MAX {
            stats.surb_asks_refused.fetch_add(1, Relaxed);
            return None;
        }
        conn.surbs_out += wanted;
        Some(wanted)
    });
    let Some(granted) = granted else { return };
    stats.surbs_topped_up.fetch_add(granted as u64, Relaxed);
    let message = Outgoing::Send {
        to: provider.to_string(),
        bytes: ToService::Surbs { tag }.encode(),
        reply_surbs: granted,
    };
    let outgoing = outgoing.clone();
    tokio::spawn(async move {
        let _ = outgoing.send(message).await;
    });
}

fn dispatch(conns: &Conns, tag: SenderTag, response: Response) {
    let Ok(mut conns) = conns.lock() else { return };
    let conn_id = match &response {
        Response::Connected { conn_id }
        | Response::ConnectError { conn_id, .. }
        | Response::Data(Chunk { conn_id, .. }) => *conn_id,
    };
    // Only the provider we sent the tag to knows it: anything else is not for this connection.
    match conns.get_mut(&conn_id) {
        Some(conn) if conn.tag == tag => conn.surbs_out = conn.surbs_out.saturating_sub(1),
        _ => return,
    }
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
    reply_to: Option<String>,
) {
    let Ok(target) = socks5::accept(&mut stream).await else {
        return;
    };
    let conn_id: u64 = rand::random();
    let tag = SenderTag(rand::random::<[u8; SENDER_TAG_BYTES]>());
    let reply_surbs = if reply_to.is_some() {
        0
    } else {
        limits::SOCKS_SURBS_WITH_CONNECT
    };
    let (connected_tx, connected_rx) = oneshot::channel();
    let (to_socket, mut from_mixnet) = mpsc::channel::<Vec<u8>>(limits::SOCKS_SOCKET_QUEUE_CHUNKS);
    if let Ok(mut c) = conns.lock() {
        c.insert(
            conn_id,
            Conn {
                tag,
                connected: Some(connected_tx),
                ordered: Ordered::new(limits::SOCKS_REORDER_BYTES_MAX),
                to_socket,
                surbs_out: reply_surbs,
            },
        );
    }
    let connect = ToService::Request {
        tag,
        reply_to: reply_to.clone(),
        body: Request::Connect { conn_id, target }.encode(),
    };
    if outgoing
        .send(Outgoing::Send {
            to: provider.clone(),
            bytes: connect.encode(),
            reply_surbs,
        })
        .await
        .is_err()
    {
        let _ = socks5::send_reply(&mut stream, reply::GENERAL_FAILURE).await;
        return;
    }
    let code = match tokio::time::timeout(
        Duration::from_millis(limits::SOCKS_PROXY_CONNECT_TIMEOUT_MS),
        connected_rx,
    )
    .await
    {
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
        let mut buf = vec![0u8; limits::SOCKS_READ_CHUNK_BYTES];
        loop {
            let n = reader.read(&mut buf).await.unwrap_or(0);
            let chunk = Chunk {
                conn_id,
                seq,
                closed: n == 0,
                bytes: buf[..n].to_vec(),
            };
            seq += 1;
            let request = ToService::Request {
                tag,
                reply_to: None,
                body: Request::Data(chunk).encode(),
            };
            let sent = outgoing
                .send(Outgoing::Send {
                    to: provider.clone(),
                    bytes: request.encode(),
                    reply_surbs: 0,
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

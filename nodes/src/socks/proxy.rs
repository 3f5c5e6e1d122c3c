//! The client side: a SOCKS5 listener whose connections are relayed to a service provider.
//! Each connection has its own random sender tag and sends reply SURBs under it (more when
//! the provider asks, bounded); the proxy's address goes out only with `reveal_address`.
//! When the topology shows every mixnode on a newer Sphinx key rotation, each open
//! connection sends SURBs of the new key epoch, which replace its older ones at the provider
//! (those die when the nodes drop the old keys at the end of the rotation overlap).
//! Responses come numbered: the proxy drops duplicates and, through SURBs, acknowledges them
//! (the provider resends lost ones); a response missing for good ends the application's
//! connection with a reset, never a clean close over a truncated stream.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};

use lethe_proto::limits::{
    SERVICE_SURBS_PER_MESSAGE_MAX, SERVICE_SURBS_WINDOW_MAX, SERVICE_SURBS_WINDOW_MIN,
    SERVICE_TAG_SURBS_MAX,
};
use lethe_proto::service::replies::{Ack, Arrival, ReplyTracker, UserAction};
use lethe_proto::service::{FromService, KeyEpochs, SenderTag, ToService, SENDER_TAG_BYTES};

use super::ordered::Ordered;
use super::protocol::{error_code, Chunk, Request, Response};
use super::relay::{MixnetPort, Outgoing};
use super::socks5::{self, reply};
use crate::limits;

/// What the dispatcher hands a connection's socket writer. The channel closing without
/// [`ToSocket::Finish`] means the relay failed: the application's connection is reset.
enum ToSocket {
    Data(Vec<u8>),
    Finish,
}

struct Conn {
    tag: SenderTag,
    connected: Option<oneshot::Sender<Result<(), (u8, String)>>>,
    ordered: Ordered,
    to_socket: mpsc::Sender<ToSocket>,
    /// The responses received, by number.
    replies: ReplyTracker,
    /// SURBs sent under the tag less the replies that came back through them: what the
    /// provider may still hold (more if replies were lost), bounded when it asks for more.
    surbs_out: usize,
    /// Replies come through SURBs (not to our revealed address).
    anonymous: bool,
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
    /// Asks for more SURBs refused, whole or in part: the provider would hold more than a
    /// tag's bound.
    pub surb_asks_refused: std::sync::atomic::AtomicU64,
    /// SURBs sent to replace those built for mixnode keys that rotated out.
    pub surbs_replaced: std::sync::atomic::AtomicU64,
    /// Responses received twice (resent while the first copy was still on its way).
    pub reply_duplicates: std::sync::atomic::AtomicU64,
    pub acks_sent: std::sync::atomic::AtomicU64,
    /// Connections reset: a response never came, or the application stopped reading.
    pub reset: std::sync::atomic::AtomicU64,
}

impl ProxyStats {
    /// The counters as JSON.
    pub fn snapshot(&self) -> serde_json::Value {
        serde_json::json!({
            "connections": self.connections.load(Relaxed),
            "refused": self.refused.load(Relaxed),
            "malformed": self.malformed.load(Relaxed),
            "surbs_topped_up": self.surbs_topped_up.load(Relaxed),
            "surb_asks_refused": self.surb_asks_refused.load(Relaxed),
            "reply_duplicates": self.reply_duplicates.load(Relaxed),
            "acks_sent": self.acks_sent.load(Relaxed),
            "reset": self.reset.load(Relaxed),
            "surbs_replaced": self.surbs_replaced.load(Relaxed),
        })
    }
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
        key_epochs,
    } = port;
    // The key epoch our SURBs are labelled with: the oldest mixnode rotation of the topology.
    let label = Arc::new(AtomicU32::new(key_epochs.borrow().oldest));
    let follower = tokio::spawn(follow_rotations(
        key_epochs,
        label.clone(),
        conns.clone(),
        outgoing.clone(),
        options.provider.clone(),
        stats.clone(),
    ));
    let dispatch_conns = conns.clone();
    let dispatch_stats = stats.clone();
    let dispatch_out = outgoing.clone();
    let dispatch_provider = options.provider.clone();
    let started = Instant::now();
    let acker = tokio::spawn(acknowledge(
        conns.clone(),
        outgoing.clone(),
        options.provider.clone(),
        stats.clone(),
        started,
    ));
    let provider = options.provider.clone();
    let dispatch_label = label.clone();
    let dispatcher = tokio::spawn(async move {
        while let Some(message) = incoming.recv().await {
            let decoded = FromService::decode(&message.data)
                .ok()
                .and_then(|m| match m {
                    FromService::Response { tag, seq, body } => {
                        Some((tag, Some((seq, Response::decode(&body).ok()?))))
                    }
                    FromService::MoreSurbs { tag, wanted } => {
                        let wanted = usize::from(wanted);
                        let key_epoch = dispatch_label.load(Relaxed);
                        top_up(
                            &dispatch_conns,
                            &dispatch_out,
                            &provider,
                            (tag, key_epoch),
                            wanted,
                            &dispatch_stats,
                        );
                        Some((tag, None))
                    }
                });
            match decoded {
                Some((tag, Some((seq, response)))) => {
                    let now_us = lethe_proto::duration_us(started.elapsed());
                    let last =
                        dispatch(&dispatch_conns, tag, seq, response, now_us, &dispatch_stats);
                    if let Some(ack) = last {
                        send_ack(&dispatch_out, &dispatch_provider, tag, ack, &dispatch_stats);
                    }
                }
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
                let link = Link {
                    conns: conns.clone(),
                    outgoing: outgoing.clone(),
                    provider: options.provider.clone(),
                    label: label.clone(),
                };
                tokio::spawn(serve(stream, link, reply_to));
            }
            _ = outgoing.closed() => break,
        }
    }
    dispatcher.abort();
    follower.abort();
    acker.abort();
}

/// Sends what the connections' trackers ask for: acknowledgements, and resets of
/// connections whose missing responses did not come.
async fn acknowledge(
    conns: Conns,
    outgoing: mpsc::Sender<Outgoing>,
    provider: String,
    stats: Arc<ProxyStats>,
    started: Instant,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(limits::SOCKS_ACK_TICK_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now_us = lethe_proto::duration_us(started.elapsed());
        let mut acks = Vec::new();
        if let Ok(mut c) = conns.lock() {
            let mut given_up = Vec::new();
            for (conn_id, conn) in c.iter_mut() {
                match conn.replies.poll(now_us) {
                    Some(UserAction::Ack(ack)) if conn.anonymous => acks.push((conn.tag, ack)),
                    Some(UserAction::GiveUp) => given_up.push(*conn_id),
                    _ => {}
                }
            }
            for conn_id in given_up {
                // Dropping its sender without a Finish resets the application's connection.
                c.remove(&conn_id);
                stats.reset.fetch_add(1, Relaxed);
                tracing::warn!(conn_id, "a response never came: connection reset");
            }
        }
        for (tag, ack) in acks {
            send_ack(&outgoing, &provider, tag, ack, &stats);
        }
    }
}

fn send_ack(
    outgoing: &mpsc::Sender<Outgoing>,
    provider: &str,
    tag: SenderTag,
    ack: Ack,
    stats: &ProxyStats,
) {
    stats.acks_sent.fetch_add(1, Relaxed);
    let message = Outgoing::Send {
        to: provider.to_string(),
        bytes: ToService::Ack { tag, ack }.encode(),
        reply_surbs: 0,
    };
    let outgoing = outgoing.clone();
    tokio::spawn(async move {
        let _ = outgoing.send(message).await;
    });
}

/// What a connection's task needs of the proxy.
struct Link {
    conns: Conns,
    outgoing: mpsc::Sender<Outgoing>,
    provider: String,
    label: Arc<AtomicU32>,
}

/// Sends `count` fresh SURBs under `tag`, labelled `key_epoch`, in messages of at most
/// [`SERVICE_SURBS_PER_MESSAGE_MAX`] (the first arrives sooner than one large message would).
fn send_surbs(
    outgoing: &mpsc::Sender<Outgoing>,
    provider: &str,
    (tag, key_epoch): (SenderTag, u32),
    count: usize,
) {
    let outgoing = outgoing.clone();
    let provider = provider.to_string();
    tokio::spawn(async move {
        let mut left = count;
        while left > 0 {
            let n = left.min(SERVICE_SURBS_PER_MESSAGE_MAX);
            left -= n;
            let message = Outgoing::Send {
                to: provider.clone(),
                bytes: ToService::Surbs { tag, key_epoch }.encode(),
                reply_surbs: n,
            };
            if outgoing.send(message).await.is_err() {
                return;
            }
        }
    });
}

/// Follows the topology's key rotations: once every mixnode is on a newer rotation, labels
/// SURBs with it and sends each open connection replacements for the SURBs its provider
/// holds (the provider drops the older ones when they arrive).
async fn follow_rotations(
    mut key_epochs: watch::Receiver<KeyEpochs>,
    label: Arc<AtomicU32>,
    conns: Conns,
    outgoing: mpsc::Sender<Outgoing>,
    provider: String,
    stats: Arc<ProxyStats>,
) {
    while key_epochs.changed().await.is_ok() {
        if key_epochs.borrow_and_update().oldest <= label.load(Relaxed) {
            continue;
        }
        // The client core takes the new topology from the same source: give it a moment, so
        // no SURB built with the old keys carries the new label.
        tokio::time::sleep(Duration::from_millis(limits::SOCKS_KEY_EPOCH_SETTLE_MS)).await;
        let key_epoch = key_epochs.borrow_and_update().oldest;
        label.store(key_epoch, Relaxed);
        let replace: Vec<(SenderTag, usize)> = conns
            .lock()
            .map(|mut c| {
                c.values_mut()
                    .filter(|c| c.anonymous)
                    .map(|c| {
                        let count = c
                            .surbs_out
                            .clamp(SERVICE_SURBS_WINDOW_MIN, SERVICE_SURBS_WINDOW_MAX);
                        c.surbs_out = count;
                        (c.tag, count)
                    })
                    .collect()
            })
            .unwrap_or_default();
        tracing::info!(
            key_epoch,
            connections = replace.len(),
            "mixnode keys rotated: replacing SURBs"
        );
        for (tag, count) in replace {
            stats.surbs_replaced.fetch_add(count as u64, Relaxed);
            send_surbs(&outgoing, &provider, (tag, key_epoch), count);
        }
    }
}

/// The provider asks for `wanted` more SURBs under `tag`: send them, or as many as keep what
/// it may hold within a tag's bound (it spent one of ours to ask); a cut is counted.
fn top_up(
    conns: &Conns,
    outgoing: &mpsc::Sender<Outgoing>,
    provider: &str,
    (tag, key_epoch): (SenderTag, u32),
    wanted: usize,
    stats: &ProxyStats,
) {
    let granted = conns.lock().ok().and_then(|mut c| {
        let conn = c.values_mut().find(|c| c.tag == tag && c.anonymous)?;
        conn.surbs_out = conn.surbs_out.saturating_sub(1);
        let room = SERVICE_TAG_SURBS_MAX.saturating_sub(conn.surbs_out);
        let granted = wanted.min(SERVICE_SURBS_WINDOW_MAX).min(room);
        if granted < wanted {
            stats.surb_asks_refused.fetch_add(1, Relaxed);
        }
        conn.surbs_out += granted;
        Some(granted)
    });
    let Some(granted) = granted.filter(|g| *g > 0) else {
        return;
    };
    stats.surbs_topped_up.fetch_add(granted as u64, Relaxed);
    send_surbs(outgoing, provider, (tag, key_epoch), granted);
}

/// Hands response `seq` of `tag` to its connection. Returns the acknowledgement to send at
/// once when the connection's last response arrived (its tracker goes with it).
fn dispatch(
    conns: &Conns,
    tag: SenderTag,
    seq: u64,
    response: Response,
    now_us: u64,
    stats: &ProxyStats,
) -> Option<Ack> {
    use std::sync::atomic::Ordering::Relaxed;
    let Ok(mut conns) = conns.lock() else {
        return None;
    };
    let conn_id = match &response {
        Response::Connected { conn_id }
        | Response::ConnectError { conn_id, .. }
        | Response::Data(Chunk { conn_id, .. }) => *conn_id,
    };
    // Only the provider we sent the tag to knows it: anything else is not for this connection.
    let conn = match conns.get_mut(&conn_id) {
        Some(conn) if conn.tag == tag => conn,
        _ => return None,
    };
    conn.surbs_out = conn.surbs_out.saturating_sub(1);
    match conn.replies.on_response(seq, now_us) {
        Arrival::Fresh => {}
        Arrival::Duplicate => {
            stats.reply_duplicates.fetch_add(1, Relaxed);
            return None;
        }
        Arrival::OutOfWindow => return None,
    }
    // Acknowledged now if the connection ends with this response.
    let last_ack = conn.anonymous.then(|| conn.replies.ack());
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
            return last_ack;
        }
        Response::Data(Chunk {
            conn_id,
            seq,
            closed,
            bytes,
        }) => {
            let conn = conns.get_mut(&conn_id)?;
            if conn.ordered.push(seq, bytes, closed).is_err() {
                conns.remove(&conn_id);
                stats.reset.fetch_add(1, Relaxed);
                return None;
            }
            while let Some((bytes, closed)) = conn.ordered.pop() {
                // A full socket queue means the application stopped reading: reset the relay.
                if conn.to_socket.try_send(ToSocket::Data(bytes)).is_err() {
                    conns.remove(&conn_id);
                    stats.reset.fetch_add(1, Relaxed);
                    return None;
                }
                if closed {
                    let _ = conn.to_socket.try_send(ToSocket::Finish);
                    return last_ack;
                }
            }
        }
    }
    None
}

async fn serve(mut stream: TcpStream, link: Link, reply_to: Option<String>) {
    let Link {
        conns,
        outgoing,
        provider,
        label,
    } = link;
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
    // One more than the chunks: the Finish after a full queue of data.
    let (to_socket, mut from_mixnet) =
        mpsc::channel::<ToSocket>(limits::SOCKS_SOCKET_QUEUE_CHUNKS + 1);
    if let Ok(mut c) = conns.lock() {
        c.insert(
            conn_id,
            Conn {
                tag,
                connected: Some(connected_tx),
                ordered: Ordered::new(limits::SOCKS_REORDER_BYTES_MAX),
                to_socket,
                replies: ReplyTracker::new(),
                surbs_out: reply_surbs,
                anonymous: reply_to.is_none(),
            },
        );
    }
    let connect = ToService::Request {
        tag,
        key_epoch: label.load(Relaxed),
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
    let reset = relay(
        conn_id,
        &mut reader,
        &mut writer,
        &mut from_mixnet,
        |chunk| {
            let request = ToService::Request {
                tag,
                key_epoch: label.load(Relaxed),
                reply_to: None,
                body: Request::Data(chunk).encode(),
            };
            let outgoing = outgoing.clone();
            let provider = provider.clone();
            async move {
                outgoing
                    .send(Outgoing::Send {
                        to: provider,
                        bytes: request.encode(),
                        reply_surbs: 0,
                    })
                    .await
                    .is_ok()
            }
        },
    )
    .await;
    if let Ok(mut c) = conns.lock() {
        c.remove(&conn_id);
    }
    if reset {
        // A reset, not a close: the application must not take a truncated stream as whole.
        if let Ok(stream) = reader.reunite(writer) {
            let _ = stream.set_zero_linger();
        }
    }
}

/// Relays one connection until the provider's data ends and the application closes, or the
/// relay fails; true if the application's connection must be reset (the relay failed before
/// the provider's data ended). Application bytes go out through `send`, chunk by chunk.
async fn relay<F, Fut>(
    conn_id: u64,
    reader: &mut tokio::net::tcp::OwnedReadHalf,
    writer: &mut tokio::net::tcp::OwnedWriteHalf,
    from_mixnet: &mut mpsc::Receiver<ToSocket>,
    send: F,
) -> bool
where
    F: Fn(Chunk) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
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
            if !send(chunk).await || n == 0 {
                break;
            }
        }
    };
    let downstream = async {
        loop {
            match from_mixnet.recv().await {
                Some(ToSocket::Data(bytes)) => {
                    if writer.write_all(&bytes).await.is_err() {
                        return false;
                    }
                }
                Some(ToSocket::Finish) => {
                    let _ = writer.shutdown().await;
                    return false;
                }
                // The dispatcher dropped the connection without a Finish.
                None => return true,
            }
        }
    };
    tokio::pin!(upstream, downstream);
    let mut upstream_done = false;
    let reset = loop {
        tokio::select! {
            () = &mut upstream, if !upstream_done => upstream_done = true,
            reset = &mut downstream => break reset,
        }
    };
    if !reset && !upstream_done {
        upstream.await;
    }
    reset
}

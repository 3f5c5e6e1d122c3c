//! The gateway's sends to mixnodes (client packets to layer 1, SURB-ACKs to their first hop):
//! one task per next hop on the gateway's tokio runtime, fed by a bounded queue of Nym frames,
//! writing over one persistent TCP connection and reconnecting with exponential backoff.
//! Callers never block: a full queue drops the packet (counted). Usable from any thread.
//!
//! As in the engine's egress, a first hop that cannot be reached does not hoard packets: a
//! frame that waited `UNREACHABLE_DROP` for a connection, a batch lost with its connection, and
//! a batch the hop did not take within `UNREACHABLE_DROP` are dropped and counted
//! (`egress_dropped`); a batch is not written into a connection the hop already closed.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lethe_crypto::framing::{
    encode_frame_to_vec, FrameHeader, FramingVersion, KeyRotation, PacketSize,
};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::metrics::GatewayMetrics;
use crate::limits::{
    EGRESS_BACKOFF_MS_INITIAL, EGRESS_BACKOFF_MS_MAX, EGRESS_CONNECT_TIMEOUT_MS,
    EGRESS_WRITE_BATCH_FRAMES,
};
use crate::node::rotation::{self, Schedule};
use lethe_engine::limits::EGRESS_HOPS_MAX;

/// The longest a frame waits for a first hop that cannot be reached (or stopped reading).
const UNREACHABLE_DROP: Duration =
    Duration::from_millis(lethe_engine::runtime::egress::UNREACHABLE_DROP_MS_DEFAULT);

#[derive(Clone, Copy, Debug)]
pub struct EgressSettings {
    pub framing: FramingVersion,
    /// The network's Sphinx key rotation schedule: v8 frames carry the parity of the current
    /// network-wide rotation id, counted as mixnodes count theirs (clients build packets with
    /// the keys the directory publishes now).
    pub rotation: Schedule,
    pub queue_packets_max: u32,
}

impl EgressSettings {
    /// The v8 rotation byte at `now_ms`.
    pub fn key_rotation(&self, now_ms: u64) -> KeyRotation {
        // No epoch (rotation disabled): the id of a mixnode without rotation.
        let id = self.rotation.epoch(now_ms);
        KeyRotation::for_rotation_id(id.unwrap_or(rotation::UNSCHEDULED_ROTATION_ID))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EgressError {
    #[error("not a Sphinx packet size")]
    NotSphinx,
    #[error("queue to the next hop is full")]
    Full,
    #[error("too many next hops")]
    TooManyHops,
}

pub struct Egress {
    runtime: tokio::runtime::Handle,
    settings: EgressSettings,
    hops: Mutex<HashMap<SocketAddr, mpsc::Sender<Queued>>>,
    metrics: Arc<GatewayMetrics>,
}

impl Egress {
    pub fn new(
        runtime: tokio::runtime::Handle,
        settings: EgressSettings,
        metrics: Arc<GatewayMetrics>,
    ) -> Egress {
        Egress {
            runtime,
            settings,
            hops: Mutex::new(HashMap::new()),
            metrics,
        }
    }

    /// Frames `packet` and queues it for `next_hop`; every error is counted as a drop.
    pub fn send(&self, next_hop: SocketAddr, packet: &[u8]) -> Result<(), EgressError> {
        let result = self.try_send(next_hop, packet);
        if result.is_err() {
            GatewayMetrics::add(&self.metrics.egress_dropped, 1);
        }
        result
    }

    fn try_send(&self, next_hop: SocketAddr, packet: &[u8]) -> Result<(), EgressError> {
        let size =
            PacketSize::from_sphinx_packet_len(packet.len()).ok_or(EgressError::NotSphinx)?;
        let header = match self.settings.framing {
            FramingVersion::V7 => FrameHeader::v7(size),
            FramingVersion::V8 => {
                FrameHeader::v8(size, self.settings.key_rotation(rotation::now_ms()))
            }
        };
        let mut frame = Vec::with_capacity(header.frame_len());
        encode_frame_to_vec(&header, packet, &mut frame).map_err(|_| EgressError::NotSphinx)?;
        let queue = self.queue(next_hop)?;
        queue
            .try_send(Queued {
                at: Instant::now(),
                frame,
            })
            .map_err(|_| EgressError::Full)
    }

    fn queue(&self, next_hop: SocketAddr) -> Result<mpsc::Sender<Queued>, EgressError> {
        let mut hops = self.hops.lock().map_err(|_| EgressError::Full)?;
        if let Some(queue) = hops.get(&next_hop) {
            return Ok(queue.clone());
        }
        if hops.len() >= EGRESS_HOPS_MAX {
            return Err(EgressError::TooManyHops);
        }
        let capacity = self.settings.queue_packets_max.max(1) as usize;
        let (sender, receiver) = mpsc::channel(capacity);
        self.runtime
            .spawn(writer(next_hop, receiver, self.metrics.clone()));
        hops.insert(next_hop, sender.clone());
        Ok(sender)
    }
}

/// A frame and when it was queued.
struct Queued {
    at: Instant,
    frame: Vec<u8>,
}

async fn writer(
    next_hop: SocketAddr,
    mut queue: mpsc::Receiver<Queued>,
    metrics: Arc<GatewayMetrics>,
) {
    let mut stream: Option<TcpStream> = None;
    let mut backoff_ms = EGRESS_BACKOFF_MS_INITIAL;
    let mut retry_at = Instant::now();
    let mut batch: Vec<u8> = Vec::new();
    let mut batch_frames: u64 = 0;
    let mut oldest = Instant::now();
    // Ends when the egress (its sender) is dropped at shutdown.
    loop {
        if batch_frames == 0 {
            let Some(first) = queue.recv().await else {
                return;
            };
            oldest = first.at;
            batch.extend_from_slice(&first.frame);
            batch_frames = 1;
            while batch_frames < EGRESS_WRITE_BATCH_FRAMES as u64 {
                let Ok(next) = queue.try_recv() else { break };
                batch.extend_from_slice(&next.frame);
                batch_frames += 1;
            }
        }
        if stream.as_ref().is_some_and(peer_closed) {
            stream = None; // closed by the hop (idle timeout, restart): reconnect first
        }
        let connection = match stream.as_mut() {
            Some(connection) => connection,
            None => {
                let now = Instant::now();
                let expires = oldest + UNREACHABLE_DROP;
                if now >= expires {
                    GatewayMetrics::add(&metrics.egress_dropped, batch_frames);
                    batch.clear();
                    batch_frames = 0;
                    continue;
                }
                if now < retry_at {
                    tokio::time::sleep_until(retry_at.min(expires).into()).await;
                    continue;
                }
                match connect(next_hop).await {
                    Ok(connected) => {
                        backoff_ms = EGRESS_BACKOFF_MS_INITIAL;
                        stream.insert(connected)
                    }
                    Err(_) => {
                        retry_at = Instant::now() + Duration::from_millis(backoff_ms);
                        backoff_ms = (backoff_ms * 2).min(EGRESS_BACKOFF_MS_MAX);
                        continue;
                    }
                }
            }
        };
        match tokio::time::timeout(UNREACHABLE_DROP, connection.write_all(&batch)).await {
            Ok(Ok(())) => GatewayMetrics::add(&metrics.egress_sent, batch_frames),
            outcome => {
                if outcome.is_err() {
                    // Stalled: reset, so the hop does not get these bytes when it reads again.
                    // (Deprecated for the blocking close a non-zero linger makes; zero resets
                    // at once.)
                    #[allow(deprecated)]
                    let _ = connection.set_linger(Some(Duration::ZERO));
                }
                // The batch in flight is lost with the connection: count it, reconnect.
                GatewayMetrics::add(&metrics.egress_dropped, batch_frames);
                stream = None;
            }
        }
        batch.clear();
        batch_frames = 0;
    }
}

/// True if the hop closed a connection we only write to (a read sees end-of-stream or an
/// error); writes would still succeed into our buffer until its reset arrives.
fn peer_closed(stream: &TcpStream) -> bool {
    let mut byte = [0u8; 1];
    match stream.try_read(&mut byte) {
        Ok(0) => true,
        Ok(_) => false, // a hop sends nothing on this connection; ignore it
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    }
}

async fn connect(next_hop: SocketAddr) -> std::io::Result<TcpStream> {
    let stream = tokio::time::timeout(
        Duration::from_millis(EGRESS_CONNECT_TIMEOUT_MS),
        TcpStream::connect(next_hop),
    )
    .await
    .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    stream.set_nodelay(true)?;
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v8_byte_is_the_parity_of_the_network_wide_rotation_id() {
        const DAY_MS: u64 = 86_400_000;
        let settings = |interval_ms| EgressSettings {
            framing: FramingVersion::V8,
            rotation: Schedule {
                interval_ms,
                overlap_ms: 0,
            },
            queue_packets_max: 1,
        };
        // id = unix time / interval (`Schedule::epoch`).
        assert_eq!(settings(DAY_MS).key_rotation(2 * DAY_MS), KeyRotation::Even);
        assert_eq!(
            settings(DAY_MS).key_rotation(3 * DAY_MS + 5),
            KeyRotation::Odd
        );
        assert_eq!(
            settings(DAY_MS).key_rotation(3 * DAY_MS - 1),
            KeyRotation::Even
        );
        // No rotation: id 1, as a mixnode without a schedule.
        assert_eq!(settings(0).key_rotation(2 * DAY_MS), KeyRotation::Odd);
    }

    /// Packets for a first hop that is down are dropped and counted within the bound, never
    /// delivered when it returns; packets after its return are.
    #[test]
    fn a_dead_first_hop_costs_counted_drops_not_a_late_burst() {
        use std::io::Read;
        use std::sync::atomic::Ordering;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let hop = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let metrics = Arc::new(GatewayMetrics::default());
        let egress = Egress::new(
            runtime.handle().clone(),
            EgressSettings {
                framing: FramingVersion::V7,
                rotation: Schedule {
                    interval_ms: 0,
                    overlap_ms: 0,
                },
                queue_packets_max: 64,
            },
            metrics.clone(),
        );
        let packet = vec![0u8; PacketSize::Regular.packet_len()];
        for _ in 0..10 {
            egress.send(hop, &packet).unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while metrics.egress_dropped.load(Ordering::Relaxed) < 10 {
            assert!(Instant::now() < deadline, "held packets were never counted");
            std::thread::sleep(Duration::from_millis(20));
        }
        let listener = std::net::TcpListener::bind(hop).unwrap();
        let frame_len = FrameHeader::v7(PacketSize::Regular).frame_len();
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut received = Vec::new();
        listener.set_nonblocking(true).unwrap();
        let mut conn = loop {
            egress.send(hop, &packet).unwrap(); // until the writer's retry reaches the hop
            match listener.accept() {
                Ok((conn, _)) => break conn,
                Err(_) => {
                    assert!(Instant::now() < deadline, "never reconnected");
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        };
        conn.set_nonblocking(false).unwrap();
        conn.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut buffer = [0u8; 65_536];
        while let Ok(n) = conn.read(&mut buffer) {
            if n == 0 {
                break;
            }
            received.extend_from_slice(&buffer[..n]);
        }
        assert!(!received.is_empty());
        assert_eq!(received.len() % frame_len, 0);
        // Only frames sent after the hop returned arrive (the counter may lag the read).
        let arrived = (received.len() / frame_len) as u64;
        let deadline = Instant::now() + Duration::from_secs(20);
        while metrics.egress_sent.load(Ordering::Relaxed) != arrived {
            assert!(Instant::now() < deadline, "sent != arrived {arrived}");
            std::thread::sleep(Duration::from_millis(20));
        }
        drop(egress);
        runtime.shutdown_timeout(Duration::from_secs(1));
    }
}

//! One egress connection per next hop per core: a bounded queue of framed packets, written in
//! batches by a writer task that (re)connects with exponential backoff.
//!
//! The queue is a byte buffer preallocated for `queue_packets_max` frames; the writer swaps it
//! with its own spare buffer and writes the whole batch with non-blocking `send`s, so a busy hop
//! gets one syscall per batch and no per-packet allocation.
//!
//! A hop that cannot be reached does not hoard packets: what waited `unreachable_drop_ms` for a
//! connection (plus at most one connect attempt), what was being written when the connection
//! broke, and what a hop stopped reading for that long are dropped and counted
//! (`next_hop_unreachable`), and a stalled connection is reset so the kernel does not deliver
//! its old bytes when the hop returns. Before each batch the writer checks that the hop has not
//! closed the connection (an idle timeout there, a restart), so a batch is not written into a
//! socket the hop already closed and counted as sent.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use glommio::net::TcpStream;
use lethe_crypto::framing::FRAME_MAX_LEN;
use lethe_crypto::framing::{encode_frame, FrameHeader, FramingVersion, KeyRotation, PacketSize};

use super::sock;
use crate::metrics::{CoreMetrics, DropReason};

/// First wait before retrying a send to a full socket (about one small batch's worth of time).
pub const FULL_WAIT_US_MIN: u64 = 20;
/// Longest wait between retries to a next hop that does not read: a stalled hop costs one
/// wake-up per millisecond, and a recovered one is written to within a millisecond.
pub const FULL_WAIT_US_MAX: u64 = 1_000;
const _: () = assert!(FULL_WAIT_US_MIN > 0 && FULL_WAIT_US_MIN <= FULL_WAIT_US_MAX);

/// How a core writes to its next hops.
#[derive(Clone, Debug)]
pub struct EgressConfig {
    pub framing: FramingVersion,
    pub queue_packets_max: u32,
    pub frame_bytes_max: u32,
    pub backoff_ms_initial: u64,
    pub backoff_ms_max: u64,
    pub connect_timeout_ms: u64,
    /// The longest a packet waits for a hop that cannot be reached (or has stopped reading).
    pub unreachable_drop_ms: u64,
}

/// The default of [`EgressConfig::unreachable_drop_ms`]: a restart of a neighbour takes longer,
/// and packets older than this are past any mix delay senders expect.
pub const UNREACHABLE_DROP_MS_DEFAULT: u64 = 2_000;

/// One next hop's bounded queue of framed packets on one core, emptied by its writer task.
pub struct NextHopQueue {
    next_hop: SocketAddr,
    config: Rc<EgressConfig>,
    pending: RefCell<Vec<u8>>,
    pending_packets: Cell<u32>,
    /// When the oldest packet of `pending` was queued (µs, runtime clock).
    oldest_pending_us: Cell<u64>,
    /// Packets of the batch the writer is sending (taken from `pending`, not yet all sent).
    inflight_packets: Cell<u32>,
    wake: LocalSender<()>,
    metrics: Arc<CoreMetrics>,
}

impl NextHopQueue {
    /// Creates the queue and spawns its writer task on the current executor.
    pub fn spawn(
        next_hop: SocketAddr,
        config: Rc<EgressConfig>,
        metrics: Arc<CoreMetrics>,
        stop: Arc<AtomicBool>,
    ) -> Rc<NextHopQueue> {
        assert!(config.queue_packets_max > 0);
        let bytes = config.queue_packets_max as usize * config.frame_bytes_max as usize;
        let (wake, woken) = local_channel::new_bounded(1);
        let egress = Rc::new(NextHopQueue {
            next_hop,
            pending: RefCell::new(Vec::with_capacity(bytes)),
            pending_packets: Cell::new(0),
            oldest_pending_us: Cell::new(0),
            inflight_packets: Cell::new(0),
            wake,
            metrics,
            config,
        });
        glommio::spawn_local(writer(egress.clone(), woken, bytes, stop)).detach();
        egress
    }

    /// Queues one packet; `Err` (counted) when the queue is full. `rotation` is the v8 frame's
    /// rotation byte: the rotation of the key that opened the packet.
    pub fn enqueue(&self, packet: &[u8], rotation: KeyRotation) -> Result<(), DropReason> {
        if self.pending_packets.get() >= self.config.queue_packets_max {
            self.metrics.dropped(DropReason::EgressFull, 1);
            return Err(DropReason::EgressFull);
        }
        let Some(size) = PacketSize::from_sphinx_packet_len(packet.len()) else {
            self.metrics.dropped(DropReason::Malformed, 1);
            return Err(DropReason::Malformed);
        };
        let header = match self.config.framing {
            FramingVersion::V7 => FrameHeader::v7(size),
            FramingVersion::V8 => FrameHeader::v8(size, rotation),
        };
        let mut pending = self.pending.borrow_mut();
        let start = pending.len();
        let frame_len = header.frame_len();
        assert!(frame_len <= FRAME_MAX_LEN);
        if start + frame_len > pending.capacity() {
            drop(pending);
            self.metrics.dropped(DropReason::EgressFull, 1);
            return Err(DropReason::EgressFull);
        }
        pending.resize(start + frame_len, 0);
        if encode_frame(&header, packet, &mut pending[start..]).is_err() {
            pending.truncate(start);
            drop(pending);
            self.metrics.dropped(DropReason::Malformed, 1);
            return Err(DropReason::Malformed);
        }
        drop(pending);
        if self.pending_packets.get() == 0 {
            self.oldest_pending_us.set(super::monotonic_us());
        }
        self.pending_packets.set(self.pending_packets.get() + 1);
        // Full means a wake-up is already pending: nothing lost.
        let _ = self.wake.try_send(());
        Ok(())
    }

    /// Packets queued or being sent: zero once everything handed to this hop has left.
    pub fn queued_packets(&self) -> u32 {
        self.pending_packets.get() + self.inflight_packets.get()
    }

    pub fn next_hop(&self) -> SocketAddr {
        self.next_hop
    }

    /// Drops (and counts) every queued packet, none in flight.
    fn drop_pending(&self, reason: DropReason) -> u32 {
        let count = self.pending_packets.replace(0);
        self.pending.borrow_mut().clear();
        self.metrics.dropped(reason, u64::from(count));
        count
    }

    /// Shutdown: counts what is still queued or in flight as dropped and empties the queue (the
    /// writer ends with the executor; a batch it was still sending counts whole).
    pub fn abandon(&self) -> u32 {
        let count = self.pending_packets.replace(0) + self.inflight_packets.replace(0);
        self.pending.borrow_mut().clear();
        self.metrics.dropped(DropReason::Shutdown, u64::from(count));
        count
    }
}

async fn writer(
    egress: Rc<NextHopQueue>,
    woken: LocalReceiver<()>,
    bytes: usize,
    stop: Arc<AtomicBool>,
) {
    let mut spare: Vec<u8> = Vec::with_capacity(bytes);
    let mut stream: Option<TcpStream> = None;
    let mut backoff_ms = egress.config.backoff_ms_initial;
    let mut retry_at_us = 0u64;
    let bound_us = egress.config.unreachable_drop_ms.saturating_mul(1_000);
    // Runs until its executor ends; each turn waits for work, so the loop is paced by input.
    loop {
        if egress.pending_packets.get() == 0 {
            if woken.recv().await.is_none() {
                return;
            }
            continue;
        }
        if stream.is_none() {
            let now_us = super::monotonic_us();
            let expires_us = egress.oldest_pending_us.get().saturating_add(bound_us);
            if now_us >= expires_us {
                egress.drop_pending(DropReason::NextHopUnreachable);
                continue;
            }
            if now_us < retry_at_us {
                let wait_us = retry_at_us.min(expires_us) - now_us;
                glommio::timer::sleep(Duration::from_micros(wait_us)).await;
                continue;
            }
            match connect(&egress).await {
                Ok(connected) => {
                    CoreMetrics::add(&egress.metrics.connections_egress, 1);
                    backoff_ms = egress.config.backoff_ms_initial;
                    stream = Some(connected);
                }
                Err(_) => {
                    CoreMetrics::add(&egress.metrics.connect_failures, 1);
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    retry_at_us = super::monotonic_us().saturating_add(backoff_ms * 1_000);
                    backoff_ms = (backoff_ms * 2).min(egress.config.backoff_ms_max);
                    continue;
                }
            }
        }
        let Some(connection) = stream.as_ref() else {
            continue;
        };
        if sock::peer_closed(connection) {
            // Closed by the hop (idle timeout, restart): reconnect before writing.
            stream = None;
            egress
                .metrics
                .connections_egress
                .fetch_sub(1, Ordering::Relaxed);
            continue;
        }
        std::mem::swap(&mut *egress.pending.borrow_mut(), &mut spare);
        let packets = egress.pending_packets.replace(0);
        egress.inflight_packets.set(packets);
        assert!(!spare.is_empty());
        let written = send_all(connection, &spare, bound_us).await;
        spare.clear();
        if egress.inflight_packets.replace(0) == 0 {
            return; // abandoned at shutdown (and counted) while this batch was being sent
        }
        match written {
            Sent::All => CoreMetrics::add(&egress.metrics.packets_sent, u64::from(packets)),
            Sent::Closed | Sent::Stalled => {
                if written == Sent::Stalled {
                    sock::discard_unsent_on_close(connection);
                }
                // The batch in flight is lost with the connection; count it and reconnect.
                egress
                    .metrics
                    .dropped(DropReason::NextHopUnreachable, u64::from(packets));
                egress
                    .metrics
                    .connections_egress
                    .fetch_sub(1, Ordering::Relaxed);
                stream = None;
            }
        }
    }
}

/// How a batch's write ended.
#[derive(Debug, PartialEq, Eq)]
enum Sent {
    All,
    /// The connection is gone.
    Closed,
    /// The hop took no byte for the unreachable bound.
    Stalled,
}

/// Writes all of `bytes` with non-blocking sends.
///
/// A full socket (the next hop reads slower than we send) is retried on a timer, from
/// `FULL_WAIT_US_MIN` doubling to `FULL_WAIT_US_MAX`, rather than through glommio's one-shot
/// writability poll: a wake-up lost there left a writer asleep for good after its next hop
/// stalled and recovered. Other tasks (readers, the timer loop) run during the waits. A hop
/// that takes nothing for `stall_us` is given up on.
async fn send_all(connection: &TcpStream, bytes: &[u8], stall_us: u64) -> Sent {
    let mut sent = 0;
    let mut wait_us = FULL_WAIT_US_MIN;
    let mut progress_us = super::monotonic_us();
    while sent < bytes.len() {
        match sock::send_now(connection, &bytes[sent..]) {
            sock::Io::Done(count) => {
                sent += count;
                wait_us = FULL_WAIT_US_MIN;
                progress_us = super::monotonic_us();
            }
            sock::Io::WouldBlock => {
                if super::monotonic_us().saturating_sub(progress_us) >= stall_us {
                    return Sent::Stalled;
                }
                glommio::timer::sleep(Duration::from_micros(wait_us)).await;
                wait_us = (wait_us * 2).min(FULL_WAIT_US_MAX);
            }
            sock::Io::Closed => return Sent::Closed,
        }
    }
    Sent::All
}

async fn connect(egress: &NextHopQueue) -> std::io::Result<TcpStream> {
    let timeout = Duration::from_millis(egress.config.connect_timeout_ms);
    let stream = TcpStream::connect_timeout(egress.next_hop, timeout).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

//! loadgen's own final hop: a TCP listener speaking Nym framing that plays the gateway. It
//! unwraps the last Sphinx layer with its own X25519 key, reads the [`Stamp`] from the payload
//! and hands it to the current run's [`Tracker`].

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use lethe_crypto::framing::FrameDecoder;
use lethe_crypto::sphinx::{self, constants::HEADER_SIZE, BatchProcessor, Hop, NodeSecrets};
use lethe_nodes::sink::read_until_stopped;
use x25519_dalek::{PublicKey, StaticSecret};

use crate::limits::{
    RECEIVER_BATCH_PACKETS, RECEIVER_CONNECTIONS_MAX, RECEIVER_POLL_MS, RECEIVER_READ_BUFFER_BYTES,
};
use crate::stamp::Stamp;
use crate::tracker::{Arrival, Tracker};

const POLL: Duration = Duration::from_millis(RECEIVER_POLL_MS);

/// The run currently being counted, with its start time.
#[derive(Clone, Debug)]
pub struct ActiveRun {
    pub tracker: Arc<Tracker>,
    pub start: Instant,
    /// `--trace`: loadgen's rows (gateway receivers record their deliveries).
    pub trace: Option<Arc<crate::trace::PacketTrace>>,
}

/// Why the receiver did not count a frame, and how busy it was.
#[derive(Debug, Default)]
pub struct ReceiverCounters {
    pub frames: AtomicU64,
    pub frames_skipped: AtomicU64,
    pub streams_unframeable: AtomicU64,
    pub sphinx_errors: AtomicU64,
    pub not_final_hop: AtomicU64,
    pub wrong_destination: AtomicU64,
    pub bad_payload: AtomicU64,
    pub other_run: AtomicU64,
    pub connections: AtomicU64,
    pub connections_refused: AtomicU64,
    pub busy_ns: AtomicU64,
}

/// A snapshot of [`ReceiverCounters`].
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct ReceiverStats {
    pub frames: u64,
    pub frames_skipped: u64,
    pub streams_unframeable: u64,
    pub sphinx_errors: u64,
    pub not_final_hop: u64,
    pub wrong_destination: u64,
    pub bad_payload: u64,
    pub other_run: u64,
    pub connections: u64,
    pub connections_refused: u64,
    pub busy_ns: u64,
}

impl ReceiverCounters {
    pub fn snapshot(&self) -> ReceiverStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ReceiverStats {
            frames: get(&self.frames),
            frames_skipped: get(&self.frames_skipped),
            streams_unframeable: get(&self.streams_unframeable),
            sphinx_errors: get(&self.sphinx_errors),
            not_final_hop: get(&self.not_final_hop),
            wrong_destination: get(&self.wrong_destination),
            bad_payload: get(&self.bad_payload),
            other_run: get(&self.other_run),
            connections: get(&self.connections),
            connections_refused: get(&self.connections_refused),
            busy_ns: get(&self.busy_ns),
        }
    }
}

impl ReceiverStats {
    /// Frames that reached the receiver but were not counted as a packet of the run.
    pub fn rejected(&self) -> u64 {
        self.frames_skipped
            + self.sphinx_errors
            + self.not_final_hop
            + self.wrong_destination
            + self.bad_payload
    }

    /// `self - before`, field by field.
    pub fn since(&self, before: &ReceiverStats) -> ReceiverStats {
        ReceiverStats {
            frames: self.frames.saturating_sub(before.frames),
            frames_skipped: self.frames_skipped.saturating_sub(before.frames_skipped),
            streams_unframeable: self
                .streams_unframeable
                .saturating_sub(before.streams_unframeable),
            sphinx_errors: self.sphinx_errors.saturating_sub(before.sphinx_errors),
            not_final_hop: self.not_final_hop.saturating_sub(before.not_final_hop),
            wrong_destination: self
                .wrong_destination
                .saturating_sub(before.wrong_destination),
            bad_payload: self.bad_payload.saturating_sub(before.bad_payload),
            other_run: self.other_run.saturating_sub(before.other_run),
            connections: self.connections.saturating_sub(before.connections),
            connections_refused: self
                .connections_refused
                .saturating_sub(before.connections_refused),
            busy_ns: self.busy_ns.saturating_sub(before.busy_ns),
        }
    }
}

struct Shared {
    secret: StaticSecret,
    destination: [u8; 32],
    run: Mutex<Option<ActiveRun>>,
    stop: AtomicBool,
    counters: ReceiverCounters,
    open: AtomicU64,
}

/// The final-hop receiver. Dropping it stops its threads.
pub struct StandInGateway {
    pub address: SocketAddr,
    pub public_key: [u8; 32],
    pub destination: [u8; 32],
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl StandInGateway {
    /// Binds `bind` (use port 0) with a fresh random key.
    pub fn start(bind: SocketAddr) -> Result<StandInGateway, String> {
        let mut key = [0u8; 32];
        getrandom::fill(&mut key).map_err(|e| format!("random key: {e}"))?;
        let secret = StaticSecret::from(key);
        let public_key = PublicKey::from(&secret).to_bytes();
        let mut destination = [0u8; 32];
        getrandom::fill(&mut destination).map_err(|e| format!("random destination: {e}"))?;
        let listener =
            TcpListener::bind(bind).map_err(|e| format!("receiver: bind {bind}: {e}"))?;
        let address = listener.local_addr().map_err(|e| e.to_string())?;
        listener
            .set_nonblocking(true)
            .map_err(|e| format!("receiver: {e}"))?;
        let shared = Arc::new(Shared {
            secret,
            destination,
            run: Mutex::new(None),
            stop: AtomicBool::new(false),
            counters: ReceiverCounters::default(),
            open: AtomicU64::new(0),
        });
        let accept_shared = Arc::clone(&shared);
        let acceptor = std::thread::Builder::new()
            .name("receiver-accept".into())
            .spawn(move || accept_loop(&listener, &accept_shared))
            .map_err(|e| format!("receiver thread: {e}"))?;
        Ok(StandInGateway {
            address,
            public_key,
            destination,
            shared,
            acceptor: Some(acceptor),
        })
    }

    /// Counts packets of `run` from now on (packets of other runs go to `other_run`).
    pub fn set_run(&self, run: Option<ActiveRun>) {
        if let Ok(mut slot) = self.shared.run.lock() {
            *slot = run;
        }
    }

    pub fn stats(&self) -> ReceiverStats {
        self.shared.counters.snapshot()
    }
}

impl Drop for StandInGateway {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(handle) = self.acceptor.take() {
            let _ = handle.join();
        }
    }
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    while !shared.stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, _)) => {
                if shared.open.load(Ordering::Relaxed) >= RECEIVER_CONNECTIONS_MAX {
                    shared
                        .counters
                        .connections_refused
                        .fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                shared.open.fetch_add(1, Ordering::Relaxed);
                shared.counters.connections.fetch_add(1, Ordering::Relaxed);
                let conn_shared = Arc::clone(shared);
                let spawned = std::thread::Builder::new()
                    .name("receiver-conn".into())
                    .spawn(move || {
                        serve(stream, &conn_shared);
                        conn_shared.open.fetch_sub(1, Ordering::Relaxed);
                    });
                if spawned.is_err() {
                    shared.open.fetch_sub(1, Ordering::Relaxed);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(POLL),
            Err(_) => std::thread::sleep(POLL),
        }
    }
}

fn serve(mut stream: TcpStream, shared: &Shared) {
    if stream.set_nonblocking(false).is_err() || stream.set_read_timeout(Some(POLL)).is_err() {
        return;
    }
    let mut decoder = FrameDecoder::new();
    let mut buffer = vec![0u8; RECEIVER_READ_BUFFER_BYTES];
    // Packets of one read; at most RECEIVER_READ_BUFFER_BYTES / (smallest frame) + 1 entries.
    let mut packets: Vec<Vec<u8>> = Vec::new();
    let mut processor = BatchProcessor::new(RECEIVER_BATCH_PACKETS);
    read_until_stopped(&mut stream, &mut buffer, &shared.stop, |bytes| {
        let started = Instant::now();
        let counters = &shared.counters;
        let mut used = 0usize;
        let fed = decoder.feed(bytes, |frame| match frame {
            Ok(frame) => {
                counters.frames.fetch_add(1, Ordering::Relaxed);
                if packets.len() <= used {
                    packets.push(Vec::new());
                }
                if let Some(slot) = packets.get_mut(used) {
                    slot.clear();
                    slot.extend_from_slice(frame.packet);
                    used += 1;
                }
            }
            Err(_) => {
                counters.frames_skipped.fetch_add(1, Ordering::Relaxed);
            }
        });
        open_packets(&mut packets[..used], &mut processor, shared);
        let spent = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        counters.busy_ns.fetch_add(spent, Ordering::Relaxed);
        if fed.is_err() {
            counters.streams_unframeable.fetch_add(1, Ordering::Relaxed);
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    });
}

/// Unwraps the final layer of every packet (X25519 across SIMD lanes) and records the stamps.
fn open_packets(packets: &mut [Vec<u8>], processor: &mut BatchProcessor, shared: &Shared) {
    if packets.is_empty() {
        return;
    }
    let counters = &shared.counters;
    let keys = NodeSecrets {
        primary: &shared.secret,
        secondary: None,
    };
    let mut finals = vec![false; packets.len()];
    processor.process(packets, keys, |index, outcome| {
        let ok = match outcome {
            Ok((processed, _)) => match processed.hop {
                Hop::Final { destination, .. } if destination == shared.destination => true,
                Hop::Final { .. } => {
                    counters.wrong_destination.fetch_add(1, Ordering::Relaxed);
                    false
                }
                Hop::Forward { .. } => {
                    counters.not_final_hop.fetch_add(1, Ordering::Relaxed);
                    false
                }
            },
            Err(_) => {
                counters.sphinx_errors.fetch_add(1, Ordering::Relaxed);
                false
            }
        };
        if let Some(slot) = finals.get_mut(index) {
            *slot = ok;
        }
    });
    let run = shared.run.lock().ok().and_then(|slot| slot.clone());
    let arrival_ns = run
        .as_ref()
        .map(|run| u64::try_from(run.start.elapsed().as_nanos()).unwrap_or(u64::MAX));
    for (packet, _) in packets.iter().zip(finals).filter(|(_, ok)| *ok) {
        let stamp = packet
            .get(HEADER_SIZE..)
            .and_then(|payload| sphinx::recover_plaintext(payload).ok())
            .and_then(Stamp::decode);
        let Some(stamp) = stamp else {
            counters.bad_payload.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let (Some(run), Some(arrival_ns)) = (
            run.as_ref()
                .filter(|run| run.tracker.run_id == stamp.run_id),
            arrival_ns,
        ) else {
            counters.other_run.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        if run.tracker.record(&stamp, arrival_ns) == Arrival::OutOfRange {
            counters.bad_payload.fetch_add(1, Ordering::Relaxed);
        }
    }
}

//! The per-core runtime on glommio (io_uring): one executor per core, each owning a
//! [`Core`](crate::core::Core), its own listener on the shared port (SO_REUSEPORT: the kernel
//! spreads connections), its ingress connections, its egress connections per next hop, and a
//! timer loop that sleeps until the core's next deadline.
//!
//! **No cross-core handoff.** A packet is processed and forwarded by the core whose listener
//! accepted its connection; each core keeps its own egress connection per next hop. The only
//! shared state is the replay filter (atomic words) and the metrics (per-core atomics).
//!
//! Shutdown: [`Runtime::shutdown`] sets a flag; every core stops accepting and reading, keeps
//! its timer loop running until what falls due within the grace period is sent (or nothing is
//! left), then counts the rest as `shutdown` drops and ends.

pub mod egress;
pub mod final_hop;
pub mod memlock;
mod sock;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use futures_lite::{future, AsyncReadExt};
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use glommio::net::{TcpListener, TcpStream};
use glommio::{ExecutorJoinHandle, LocalExecutorBuilder, Placement};
use lethe_crypto::framing::{FrameDecoder, KeyRotation, PacketType};

use crate::core::{Action, Core, NodeKeys};
use crate::limits::EngineConfig;
use crate::metrics::{CoreMetrics, DropReason, Stage};
use crate::replay::ReplayFilterSet;

pub use egress::{Egress, EgressConfig};
pub use final_hop::{final_hop_channel, FinalHop, FinalHopSender};

/// Next hops one core keeps connections to (a mixnet layer is hundreds of nodes).
pub const EGRESS_HOPS_MAX: usize = 4_096;
/// Ingress connections one core serves at once.
pub const INGRESS_CONNECTIONS_MAX: u64 = 4_096;
/// Bytes read per `read` call on an ingress connection (about 27 regular frames).
pub const READ_BYTES: usize = 64 * 1024;
/// Kernel receive buffer of an ingress connection (SO_RCVBUF; Linux doubles it for its own
/// bookkeeping). Loopback and LAN round trips are too short for receive autotuning to grow the
/// window past ~64 KiB, which caps every read at about one 27-frame read: a busy peer then waits
/// on our window instead of queueing a full batch. The kernel charges only queued bytes.
pub const INGRESS_RCVBUF_BYTES: usize = 1 << 20;
/// glommio's preemption period: the longest a task that always has work (a reader whose socket
/// never drains) runs before the executor polls its rings. I/O that waits on the rings (an
/// egress connect, a write to a full socket, the timer loop's sleep) waits up to this long under
/// load (10 ms held a new egress connection's first packets that long). Each preemption costs a
/// ring turn: 500 µs measured ~4% of saturated throughput, 2 ms is in the noise.
pub const PREEMPT_US: u64 = 2_000;
/// How long an idle core polls its rings before parking. Parking and being woken costs glommio
/// a `membarrier` (an IPI to every CPU running this process), several `io_uring_enter` calls
/// and the wake-up itself: measured at ~25 µs of CPU per idle period, plus wake-up latency.
/// Polling for about as long first costs no more when nothing comes, and saves all of it when a
/// packet arrives within the window (moderate load: inter-arrival times of tens of µs).
pub const SPIN_BEFORE_PARK_US_DEFAULT: u64 = 30;
/// Longest accepted polling time (a core that polls longer is simply a busy-polling core).
pub const SPIN_BEFORE_PARK_US_MAX: u64 = 10_000;
/// How often idle loops look at the stop flag.
pub const STOP_POLL_MS: u64 = 20;
/// The longest the timer loop sleeps without being woken.
pub const TIMER_IDLE_US_MAX: u64 = 50_000;

#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    pub listen: SocketAddr,
    pub cores: u32,
    /// CPU per core (`cpus[i]` for core `i`); empty leaves the executors unpinned.
    pub cpus: Vec<usize>,
    pub engine: EngineConfig,
    pub egress: EgressConfig,
    pub shutdown_grace_ms: u64,
    /// io_uring registered I/O memory per executor (glommio's `io_memory`), locked memory.
    pub io_memory_bytes: usize,
    pub ring_depth: usize,
    /// Final-hop packets: a mixnode counts and drops them (`final_hop_at_mixnode`).
    pub deliver_final_hops: bool,
    /// How long an idle core polls before it parks (µs; 0 = park at once): see
    /// [`SPIN_BEFORE_PARK_US_DEFAULT`].
    pub spin_before_park_us: u64,
    /// Treat every v8 frame's rotation byte as `Unknown` (try the primary, then the secondary
    /// key): for a node that does not take part in the network's key rotation (a gateway keeps
    /// one key), whose key's id says nothing about the byte senders write.
    pub ignore_rotation_byte: bool,
}

#[derive(Debug)]
pub enum StartError {
    Config(String),
    Memlock(String),
    Executor(String),
    Bind(String),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Config(m) => write!(f, "invalid configuration: {m}"),
            StartError::Memlock(m) => write!(f, "{m}"),
            StartError::Executor(m) => write!(f, "cannot start an engine core: {m}"),
            StartError::Bind(m) => write!(f, "cannot listen: {m}"),
        }
    }
}

impl std::error::Error for StartError {}

/// A key set handed from the control plane to one core (key rotation without restart).
#[derive(Default)]
struct KeyUpdate {
    generation: AtomicU64,
    applied: AtomicU64,
    slot: Mutex<Option<(NodeKeys, ReplayFilterSet)>>,
}

pub struct Runtime {
    handles: Vec<ExecutorJoinHandle<()>>,
    key_updates: Vec<Arc<KeyUpdate>>,
    stop: Arc<AtomicBool>,
    local_addr: SocketAddr,
    metrics: Vec<Arc<CoreMetrics>>,
}

impl Runtime {
    /// Starts `config.cores` executors; returns once every core listens.
    pub fn start(
        config: RuntimeConfig,
        keys: NodeKeys,
        replay: ReplayFilterSet,
    ) -> Result<Runtime, StartError> {
        Runtime::start_with_final_hops(config, keys, replay, None)
    }

    /// [`Runtime::start`] for a gateway: with `Some(sender)`, every final-hop packet is copied
    /// into the bounded hand-off (see [`final_hop`]) instead of being counted and dropped.
    pub fn start_with_final_hops(
        config: RuntimeConfig,
        keys: NodeKeys,
        replay: ReplayFilterSet,
        final_hops: Option<FinalHopSender>,
    ) -> Result<Runtime, StartError> {
        config
            .engine
            .validate()
            .map_err(|e| StartError::Config(e.to_string()))?;
        if config.spin_before_park_us > SPIN_BEFORE_PARK_US_MAX {
            return Err(StartError::Config(format!(
                "spin_before_park_us = {} is above {SPIN_BEFORE_PARK_US_MAX}",
                config.spin_before_park_us
            )));
        }
        if config.cores == 0
            || (!config.cpus.is_empty() && config.cpus.len() < config.cores as usize)
        {
            return Err(StartError::Config(
                "cores must be > 0 and cpus must list one per core".into(),
            ));
        }
        memlock::check(config.cores, config.io_memory_bytes).map_err(StartError::Memlock)?;
        let stop = Arc::new(AtomicBool::new(false));
        let mut runtime = Runtime {
            handles: Vec::new(),
            key_updates: Vec::new(),
            stop: stop.clone(),
            local_addr: config.listen,
            metrics: Vec::new(),
        };
        for index in 0..config.cores {
            let metrics = Arc::new(CoreMetrics::default());
            let (bound_tx, bound_rx) = mpsc::channel();
            let key_update = Arc::new(KeyUpdate::default());
            runtime.key_updates.push(key_update.clone());
            let setup = ShardSetup {
                key_update,
                listen: runtime.local_addr,
                config: config.clone(),
                keys: keys.clone(),
                replay: replay.clone(),
                metrics: metrics.clone(),
                stop: stop.clone(),
                bound: bound_tx,
                final_hops: final_hops.clone(),
            };
            let handle = executor_builder(&config, index)
                .spawn(move || run_shard(setup))
                .map_err(|e| executor_error(&config, e.to_string()))?;
            runtime.handles.push(handle);
            runtime.metrics.push(metrics);
            // Core 0 resolves an ephemeral port; the others bind the same one.
            match bound_rx.recv() {
                Ok(Ok(addr)) => runtime.local_addr = addr,
                Ok(Err(message)) => {
                    runtime.shutdown();
                    let _ = runtime.join();
                    return Err(StartError::Bind(message));
                }
                Err(_) => {
                    runtime.shutdown();
                    let _ = runtime.join();
                    return Err(executor_error(&config, "executor exited at start".into()));
                }
            }
        }
        Ok(runtime)
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn metrics(&self) -> &[Arc<CoreMetrics>] {
        &self.metrics
    }

    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }

    /// Installs a new key set (and its replay filters) on every core: key rotation without a
    /// restart. Each core picks it up within one timer-loop turn (at most
    /// `TIMER_IDLE_US_MAX`); `keys_applied` tells when all have.
    pub fn install_keys(&self, keys: &NodeKeys, replay: &ReplayFilterSet) {
        for update in &self.key_updates {
            if let Ok(mut slot) = update.slot.lock() {
                *slot = Some((keys.clone(), replay.clone()));
                update.generation.fetch_add(1, Ordering::Release);
            }
        }
    }

    /// True once every core runs the latest installed key set.
    pub fn keys_applied(&self) -> bool {
        self.key_updates
            .iter()
            .all(|u| u.applied.load(Ordering::Acquire) == u.generation.load(Ordering::Acquire))
    }

    /// Asks every core to stop (returns at once; `join` waits).
    pub fn shutdown(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    /// Waits for every core to end.
    pub fn join(self) -> Result<(), String> {
        let mut result = Ok(());
        for handle in self.handles {
            if let Err(e) = handle.join() {
                result = Err(e.to_string());
            }
        }
        result
    }
}

fn executor_builder(config: &RuntimeConfig, index: u32) -> LocalExecutorBuilder {
    let placement = match config.cpus.get(index as usize) {
        Some(&cpu) => Placement::Fixed(cpu),
        None => Placement::Unbound,
    };
    LocalExecutorBuilder::new(placement)
        .name(&format!("lethe-core-{index}"))
        .io_memory(config.io_memory_bytes)
        .ring_depth(config.ring_depth)
        .preempt_timer(Duration::from_micros(PREEMPT_US))
        .spin_before_park(Duration::from_micros(config.spin_before_park_us))
}

fn executor_error(config: &RuntimeConfig, message: String) -> StartError {
    let lower = message.to_lowercase();
    let memory = lower.contains("memory")
        || lower.contains("buffer space")
        || lower.contains("cannot allocate");
    if memory {
        let required = memlock::required_bytes(config.cores, config.io_memory_bytes);
        let advice = memlock::advice(config.cores, required, memlock::limit_bytes());
        return StartError::Memlock(format!("{message}: {advice}"));
    }
    StartError::Executor(message)
}

/// Monotonic nanoseconds since the first call (the cost clock for crypto metrics).
fn monotonic_ns() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

struct ShardSetup {
    key_update: Arc<KeyUpdate>,
    listen: SocketAddr,
    config: RuntimeConfig,
    keys: NodeKeys,
    replay: ReplayFilterSet,
    metrics: Arc<CoreMetrics>,
    stop: Arc<AtomicBool>,
    bound: mpsc::Sender<Result<SocketAddr, String>>,
    final_hops: Option<FinalHopSender>,
}

/// One core's state, shared by its tasks (all on one thread).
struct Shard {
    core: RefCell<Core>,
    egress: RefCell<HashMap<SocketAddr, Rc<Egress>>>,
    egress_config: Rc<EgressConfig>,
    metrics: Arc<CoreMetrics>,
    stop: Arc<AtomicBool>,
    wake: LocalSender<()>,
    /// When the timer loop will next run on its own (µs; `u64::MAX` while it is running):
    /// readers wake it only for work due earlier than that, not on every read.
    timer_armed_us: Cell<u64>,
    deliver_final_hops: bool,
    ignore_rotation_byte: bool,
    /// Gateways: where final-hop packets go (`None` on a mixnode: counted and dropped).
    final_hops: Option<FinalHopSender>,
}

impl Shard {
    fn now_us(&self) -> u64 {
        monotonic_ns() / 1_000
    }

    /// Hands the core's actions to egress; releases every buffer.
    fn pump(&self, now_us: u64) {
        let mut core = self.core.borrow_mut();
        let mut egress = self.egress.borrow_mut();
        while let Some(action) = core.poll_action() {
            match action {
                Action::Forward {
                    next_hop,
                    buffer,
                    rotation,
                    ..
                } => {
                    let residence_us = now_us.saturating_sub(core.arrived_us(&buffer));
                    self.metrics
                        .stage(Stage::ProcessingResidence)
                        .record(residence_us);
                    if let Some(queue) = egress_for(&mut egress, next_hop, self) {
                        let _ = queue.enqueue(core.packet(&buffer), rotation);
                    }
                    core.release(buffer);
                }
                Action::Deliver {
                    destination,
                    identifier,
                    buffer,
                } => {
                    match &self.final_hops {
                        Some(sender) => {
                            let _ = sender.offer(
                                &self.metrics,
                                destination,
                                identifier,
                                core.packet(&buffer),
                            );
                        }
                        None if !self.deliver_final_hops => {
                            self.metrics.dropped(DropReason::FinalHopAtMixnode, 1);
                        }
                        None => {}
                    }
                    core.release(buffer);
                }
                Action::Drop { .. } => {}
            }
        }
    }

    fn egress_idle(&self) -> bool {
        self.egress
            .borrow()
            .values()
            .all(|e| e.queued_packets() == 0)
    }
}

fn egress_for(
    egress: &mut HashMap<SocketAddr, Rc<Egress>>,
    next_hop: SocketAddr,
    shard: &Shard,
) -> Option<Rc<Egress>> {
    if let Some(queue) = egress.get(&next_hop) {
        return Some(queue.clone());
    }
    if egress.len() >= EGRESS_HOPS_MAX {
        shard.metrics.dropped(DropReason::UnknownNextHop, 1);
        return None;
    }
    let queue = Egress::spawn(
        next_hop,
        shard.egress_config.clone(),
        shard.metrics.clone(),
        shard.stop.clone(),
    );
    egress.insert(next_hop, queue.clone());
    Some(queue)
}

async fn run_shard(setup: ShardSetup) {
    let listener = match TcpListener::bind(setup.listen) {
        Ok(listener) => listener,
        Err(e) => {
            let _ = setup.bound.send(Err(format!("{}: {e}", setup.listen)));
            return;
        }
    };
    let local_addr = match listener.local_addr() {
        Ok(addr) => addr,
        Err(e) => {
            let _ = setup.bound.send(Err(e.to_string()));
            return;
        }
    };
    let mut core = Core::new(
        setup.config.engine.clone(),
        setup.keys,
        setup.replay,
        setup.metrics.clone(),
        monotonic_ns() / 1_000,
    );
    core.set_cost_clock(monotonic_ns);
    let (wake, woken) = local_channel::new_bounded(1);
    let shard = Rc::new(Shard {
        core: RefCell::new(core),
        egress: RefCell::new(HashMap::new()),
        egress_config: Rc::new(setup.config.egress.clone()),
        metrics: setup.metrics,
        stop: setup.stop,
        wake,
        timer_armed_us: Cell::new(u64::MAX),
        deliver_final_hops: setup.config.deliver_final_hops,
        ignore_rotation_byte: setup.config.ignore_rotation_byte,
        final_hops: setup.final_hops,
    });
    glommio::spawn_local(accept_loop(shard.clone(), listener)).detach();
    let _ = setup.bound.send(Ok(local_addr));
    timer_loop(
        shard,
        woken,
        setup.key_update,
        setup.config.shutdown_grace_ms,
    )
    .await;
}

/// Resolves when the stop flag is set (checked every `STOP_POLL_MS`).
async fn stopped(stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        glommio::timer::sleep(Duration::from_millis(STOP_POLL_MS)).await;
    }
}

async fn accept_loop(shard: Rc<Shard>, listener: TcpListener) {
    loop {
        let accepted = future::or(async { Some(listener.accept().await) }, async {
            stopped(&shard.stop).await;
            None
        })
        .await;
        match accepted {
            None => return, // the listener closes here: stop accepting
            Some(Ok(stream)) => {
                if CoreMetrics::get(&shard.metrics.connections_ingress) >= INGRESS_CONNECTIONS_MAX {
                    continue; // dropped: closes the connection
                }
                glommio::spawn_local(serve_connection(shard.clone(), stream)).detach();
            }
            Some(Err(_)) => glommio::timer::sleep(Duration::from_millis(10)).await,
        }
    }
}

async fn serve_connection(shard: Rc<Shard>, mut stream: TcpStream) {
    CoreMetrics::add(&shard.metrics.connections_ingress, 1);
    sock::set_receive_buffer(&stream, INGRESS_RCVBUF_BYTES);
    let mut decoder = FrameDecoder::new();
    let mut buffer = vec![0u8; READ_BYTES];
    // One stop watcher for the connection's life (not a new timer per read).
    let mut stop = std::pin::pin!(stopped(&shard.stop));
    loop {
        let count = match sock::recv_now(&stream, &mut buffer) {
            sock::Io::Done(count) => count,
            sock::Io::Closed => break,
            sock::Io::WouldBlock => {
                if shard.stop.load(Ordering::Relaxed) {
                    break;
                }
                let read = future::or(async { Some(stream.read(&mut buffer).await) }, async {
                    (&mut stop).await;
                    None
                })
                .await;
                match read {
                    Some(Ok(count)) if count > 0 => count,
                    _ => break, // EOF, error or stopping
                }
            }
        };
        let (fatal, now_us) = feed(&shard, &mut decoder, &buffer[..count], shard.now_us());
        if count < buffer.len() {
            // The socket is drained: nothing more to batch with now, so waiting for the flush
            // deadline would only add latency. Under load reads fill the buffer and batches
            // fill up before this; at moderate load whole lane groups go now and a partial one
            // waits for the next read (`Core::flush_drained`).
            shard.core.borrow_mut().flush_drained(now_us);
        }
        shard.pump(now_us);
        let due_us = shard.core.borrow().poll_timeout();
        if due_us.is_some_and(|due_us| due_us < shard.timer_armed_us.get()) {
            let _ = shard.wake.try_send(());
        }
        if fatal {
            break;
        }
        // Let the egress writers send what this read produced before reading more: packets
        // leave right after their batch, and egress queues stay short.
        future::yield_now().await;
    }
    shard
        .metrics
        .connections_ingress
        .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
}

/// Decodes frames into the core; `true` if the stream lost framing (close it), and the time
/// now (re-read after each batch the core ran: a batch takes long enough that the frames
/// after it reach the core later than the read).
fn feed(shard: &Shard, decoder: &mut FrameDecoder, bytes: &[u8], mut now_us: u64) -> (bool, u64) {
    let mut core = shard.core.borrow_mut();
    let metrics = &shard.metrics;
    let result = decoder.feed(bytes, |frame| {
        CoreMetrics::add(&metrics.frames_received, 1);
        match frame {
            Ok(frame) if frame.header.packet_type == PacketType::Mix => {
                let rotation = if shard.ignore_rotation_byte {
                    KeyRotation::Unknown
                } else {
                    frame.header.key_rotation
                };
                let _ = core.handle_packet(now_us, rotation, frame.packet);
                if core.batched_count() == 0 {
                    // The batch ran (or the packet was dropped; the clock read is cheap).
                    now_us = shard.now_us();
                }
            }
            // Outfox is framed but not processed; skipped frames are malformed.
            Ok(_) | Err(_) => core.handle_skipped_frame(),
        }
    });
    if result.is_err() {
        metrics.dropped(DropReason::Malformed, 1);
        return (true, now_us);
    }
    (false, now_us)
}

/// Applies a key set the control plane installed, if there is a new one (never blocks).
fn apply_key_update(shard: &Shard, update: &KeyUpdate) {
    let generation = update.generation.load(Ordering::Acquire);
    if generation == update.applied.load(Ordering::Relaxed) {
        return;
    }
    let Ok(mut slot) = update.slot.try_lock() else {
        return; // being written: next turn
    };
    if let Some((keys, replay)) = slot.take() {
        shard.core.borrow_mut().set_keys(keys, replay);
    }
    update
        .applied
        .store(update.generation.load(Ordering::Acquire), Ordering::Release);
}

async fn timer_loop(
    shard: Rc<Shard>,
    woken: LocalReceiver<()>,
    key_update: Arc<KeyUpdate>,
    grace_ms: u64,
) {
    let mut stopping_since_us: Option<u64> = None;
    // Runs until shutdown; every turn is bounded (the core fires a bounded number of timers).
    loop {
        shard.timer_armed_us.set(u64::MAX);
        apply_key_update(&shard, &key_update);
        let now_us = shard.now_us();
        shard.core.borrow_mut().handle_timeout(now_us);
        shard.pump(now_us);
        if stopping_since_us.is_none() && shard.stop.load(Ordering::Relaxed) {
            stopping_since_us = Some(now_us);
            shard.core.borrow_mut().flush_batch(now_us);
            shard.pump(now_us);
        }
        if let Some(since_us) = stopping_since_us {
            let idle = {
                let core = shard.core.borrow();
                core.delayed_count() == 0 && core.batched_count() == 0
            } && shard.egress_idle();
            if idle || now_us >= since_us + grace_ms * 1_000 {
                shard.core.borrow_mut().abandon_pending();
                for queue in shard.egress.borrow().values() {
                    queue.abandon();
                }
                return;
            }
        }
        let next_us = shard.core.borrow().poll_timeout();
        let wait_us = next_us
            .map_or(TIMER_IDLE_US_MAX, |t| t.saturating_sub(now_us))
            .min(TIMER_IDLE_US_MAX);
        if wait_us == 0 {
            glommio::yield_if_needed().await;
            continue;
        }
        shard.timer_armed_us.set(now_us.saturating_add(wait_us));
        future::or(
            glommio::timer::sleep(Duration::from_micros(wait_us)),
            async {
                let _ = woken.recv().await;
            },
        )
        .await;
    }
}

//! The per-core runtime on glommio (io_uring): one executor per core, each owning a
//! [`Core`](crate::core::Core), its own listener on the shared port (SO_REUSEPORT: the kernel
//! spreads connections), its ingress connections, its egress connections per next hop, and a
//! timer loop that sleeps until the core's next deadline.
//!
//! **No cross-core handoff.** A packet is processed and forwarded by the core whose listener
//! accepted its connection; each core keeps its own egress connection per next hop. The only
//! shared state is the replay filter (atomic words) and the metrics (per-core atomics).
//!
//! Shutdown: [`Runtime::shutdown`] sets a flag; every core's timer loop sees it within one turn,
//! shuts its listener and ingress sockets down (their pending reads end: no task polls a stop
//! timer, see [`wake_gate`]), keeps running until what falls due within the grace period is sent
//! (or nothing is left), then counts the rest as `shutdown` drops and ends.
//!
//! Liveness: every turn of a core's timer loop stamps its metrics, and a panic on a core thread
//! is recorded ([`liveness`]); the node's control loop and `/health` read both.

pub mod egress;
pub mod final_hop;
pub mod ingress;
pub mod liveness;
pub mod memlock;
pub mod nudge;
mod sock;
pub mod trace;
pub mod wake_gate;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use futures_lite::{future, AsyncReadExt};
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use glommio::net::{TcpListener, TcpStream};
use glommio::{ExecutorJoinHandle, LocalExecutorBuilder, Placement};
use lethe_crypto::framing::{FrameDecoder, KeyRotation, PacketType};

use crate::core::{Action, Admitted, BatchRan, Core, NodeKeys};
use crate::limits::{EngineConfig, EGRESS_HOPS_MAX};
use crate::metrics::{CoreMetrics, DropReason};
use crate::replay::ReplayFilterSet;

pub use egress::{EgressConfig, NextHopQueue};
pub use final_hop::{final_hop_channel, FinalHop, FinalHopSender};
pub use ingress::IngressLimits;
pub use liveness::Health;
/// The port probe `run` does before binding, for `lethe <role> check-config`.
pub use sock::check_port_free;
pub use trace::{PacketEvent, PacketEventKind, TraceEvents, TraceHook};

use ingress::{Admission, IngressTable};
use wake_gate::WakeGated;

/// Ingress connections one core serves at once.
pub const INGRESS_CONNECTIONS_MAX: u32 = 4_096;
/// Ingress connections one address (IPv6: one /64) may hold on one core. Honest peers hold one
/// per core of theirs (a whole local testnet shares 127.0.0.1); a stranger needs many
/// addresses to fill a core.
pub const INGRESS_PER_IP_MAX: u32 = 256;
/// An ingress connection with no whole frame for this long is closed (upstream nodes reconnect
/// when they next have a packet; Loopix cover traffic keeps honest links busier than this).
pub const INGRESS_IDLE_TIMEOUT_MS: u64 = 300_000;
/// When a core is full, a newcomer takes the slot of a connection idle at least this long.
pub const INGRESS_EVICT_IDLE_MS: u64 = 10_000;
/// How often a core looks for idle ingress connections.
pub const INGRESS_SWEEP_US: u64 = 1_000_000;
const _: () = assert!(INGRESS_PER_IP_MAX <= INGRESS_CONNECTIONS_MAX);
const _: () = assert!(INGRESS_EVICT_IDLE_MS * 1_000 > INGRESS_SWEEP_US);
const _: () = assert!(INGRESS_EVICT_IDLE_MS <= INGRESS_IDLE_TIMEOUT_MS);

impl IngressLimits {
    pub const DEFAULT: IngressLimits = IngressLimits {
        connections_max: INGRESS_CONNECTIONS_MAX,
        per_ip_max: INGRESS_PER_IP_MAX,
        idle_timeout_us: INGRESS_IDLE_TIMEOUT_MS * 1_000,
        evict_idle_us: INGRESS_EVICT_IDLE_MS * 1_000,
    };
}

impl Default for IngressLimits {
    fn default() -> Self {
        IngressLimits::DEFAULT
    }
}
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
/// load, so a long period holds a new egress connection's first packets that long. Each
/// preemption costs a ring turn, so a short one costs throughput (figures: `bench/README.md`).
pub const PREEMPT_US: u64 = 2_000;
/// How long an idle core polls its rings before parking. Parking and being woken costs glommio
/// a `membarrier` (an IPI to every CPU running this process), several `io_uring_enter` calls
/// and the wake-up itself: tens of µs of CPU per idle period (`bench/README.md`), plus wake-up
/// latency. Polling for about as long first costs no more when nothing comes, and saves all of it when a
/// packet arrives within the window (moderate load: inter-arrival times of tens of µs).
pub const SPIN_BEFORE_PARK_US_DEFAULT: u64 = 30;
/// Longest accepted polling time (a core that polls longer is simply a busy-polling core).
pub const SPIN_BEFORE_PARK_US_MAX: u64 = 10_000;
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
    /// Caps and idle timeout of ingress connections (per core).
    pub ingress: IngressLimits,
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
    /// Test hook: the next timer-loop turn of a core panics (see `inject_core_panic`).
    panic_requested: Arc<AtomicBool>,
    local_addr: SocketAddr,
    metrics: Vec<Arc<CoreMetrics>>,
    /// Each core thread's kernel id (0 until it runs), for [`nudge`].
    core_tids: Vec<Arc<AtomicI32>>,
    /// When each core was last nudged (µs on the runtime's clock; 0: never).
    nudged_us: Vec<AtomicU64>,
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
        Runtime::start_traced(config, keys, replay, final_hops, None)
    }

    /// [`Runtime::start_with_final_hops`] with an optional packet-event hook ([`trace`]): every
    /// core records its arrivals, departures, deliveries and pre-crypto drops into it.
    pub fn start_traced(
        config: RuntimeConfig,
        keys: NodeKeys,
        replay: ReplayFilterSet,
        final_hops: Option<FinalHopSender>,
        trace: Option<TraceHook>,
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
        if config.ingress.connections_max == 0
            || config.ingress.per_ip_max == 0
            || config.ingress.per_ip_max > config.ingress.connections_max
        {
            return Err(StartError::Config(
                "ingress: connections_max and per_ip_max must be > 0, per_ip_max <= connections_max"
                    .into(),
            ));
        }
        memlock::check(config.cores, config.io_memory_bytes).map_err(StartError::Memlock)?;
        sock::check_port_free(config.listen).map_err(StartError::Bind)?;
        liveness::install_panic_hook();
        nudge::install_handler();
        let stop = Arc::new(AtomicBool::new(false));
        let panic_requested = Arc::new(AtomicBool::new(false));
        let mut runtime = Runtime {
            handles: Vec::new(),
            key_updates: Vec::new(),
            stop: stop.clone(),
            panic_requested: panic_requested.clone(),
            local_addr: config.listen,
            metrics: Vec::new(),
            core_tids: Vec::new(),
            nudged_us: Vec::new(),
        };
        for index in 0..config.cores {
            let metrics = Arc::new(CoreMetrics::default());
            let (bound_tx, bound_rx) = mpsc::channel();
            let key_update = Arc::new(KeyUpdate::default());
            runtime.key_updates.push(key_update.clone());
            let tid = Arc::new(AtomicI32::new(0));
            runtime.core_tids.push(tid.clone());
            runtime.nudged_us.push(AtomicU64::new(0));
            let setup = ShardSetup {
                key_update,
                tid,
                listen: runtime.local_addr,
                config: config.clone(),
                keys: keys.clone(),
                replay: replay.clone(),
                metrics: metrics.clone(),
                stop: stop.clone(),
                panic_requested: panic_requested.clone(),
                bound: bound_tx,
                final_hops: final_hops.clone(),
                trace: trace.clone(),
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

    /// Whether every core is still serving: see [`liveness`].
    pub fn health(&self) -> Health {
        liveness::check(&self.metrics, monotonic_us())
    }

    /// The longest any core's loop has now been silent (µs).
    pub fn loop_silence_us(&self) -> u64 {
        let now_us = monotonic_us();
        self.metrics
            .iter()
            .map(|m| now_us.saturating_sub(CoreMetrics::get(&m.loop_turn_us)))
            .max()
            .unwrap_or(0)
    }

    /// Cores whose loop has been silent for [`nudge::NUDGE_SILENCE_US`] and that were not
    /// nudged within that time: the ones [`Runtime::nudge_core`] should wake.
    pub fn cores_to_nudge(&self) -> Vec<usize> {
        let now_us = monotonic_us();
        let silent = |since_us: u64| now_us.saturating_sub(since_us) >= nudge::NUDGE_SILENCE_US;
        (0..self.metrics.len())
            .filter(|&index| {
                silent(CoreMetrics::get(&self.metrics[index].loop_turn_us))
                    && silent(self.nudged_us[index].load(Ordering::Relaxed))
            })
            .collect()
    }

    /// Sends core `index`'s thread the nudge signal (see [`nudge`]), counted in its metrics;
    /// false if the core has no thread (not started, or gone).
    pub fn nudge_core(&self, index: usize) -> bool {
        let (Some(tid), Some(nudged_us), Some(metrics)) = (
            self.core_tids.get(index),
            self.nudged_us.get(index),
            self.metrics.get(index),
        ) else {
            return false;
        };
        nudged_us.store(monotonic_us(), Ordering::Relaxed);
        let sent = nudge::nudge(tid.load(Ordering::Relaxed));
        if sent {
            CoreMetrics::add(&metrics.core_nudges, 1);
        }
        sent
    }

    /// Makes one core panic at its next timer-loop turn: for tests of what a node does when a
    /// core fails. Nothing else calls it.
    #[doc(hidden)]
    pub fn inject_core_panic(&self) {
        self.panic_requested.store(true, Ordering::SeqCst);
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

/// Monotonic nanoseconds since the first call: the runtime's clock, which also times batches.
fn monotonic_ns() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// The runtime's clock in µs: what cores stamp `CoreMetrics::loop_turn_us` with.
pub fn monotonic_us() -> u64 {
    monotonic_ns() / 1_000
}

struct ShardSetup {
    key_update: Arc<KeyUpdate>,
    /// Where the core thread writes its kernel id.
    tid: Arc<AtomicI32>,
    listen: SocketAddr,
    config: RuntimeConfig,
    keys: NodeKeys,
    replay: ReplayFilterSet,
    metrics: Arc<CoreMetrics>,
    stop: Arc<AtomicBool>,
    panic_requested: Arc<AtomicBool>,
    bound: mpsc::Sender<Result<SocketAddr, String>>,
    final_hops: Option<FinalHopSender>,
    trace: Option<TraceHook>,
}

/// One core's state, shared by its tasks (all on one thread).
struct Shard {
    core: RefCell<Core>,
    egress: RefCell<HashMap<SocketAddr, Rc<NextHopQueue>>>,
    egress_config: Rc<EgressConfig>,
    metrics: Arc<CoreMetrics>,
    stop: Arc<AtomicBool>,
    panic_requested: Arc<AtomicBool>,
    /// Ingress connections by id, with their descriptors (closed by the timer loop).
    ingress: RefCell<IngressTable>,
    /// The listener's descriptor: shut down at stop so the accept ends.
    listener_fd: RawFd,
    wake: LocalSender<()>,
    /// When the timer loop will next run on its own (µs; `u64::MAX` while it is running):
    /// readers wake it only for work due earlier than that, not on every read.
    timer_armed_us: Cell<u64>,
    deliver_final_hops: bool,
    ignore_rotation_byte: bool,
    /// Gateways: where final-hop packets go (`None` on a mixnode: counted and dropped).
    final_hops: Option<FinalHopSender>,
    /// Packet events for a trace (`None`: tracing off, one branch per packet).
    trace: Option<TraceHook>,
}

impl Shard {
    fn now_us(&self) -> u64 {
        monotonic_ns() / 1_000
    }

    /// Hands the core's actions to egress; releases every buffer.
    fn pump(&self) {
        // Residence and lateness end at the hand-off, now: the callers' clock reading predates
        // the batch they ran, whose crypto is part of a packet's time in the node.
        let handed_off_us = self.now_us();
        let mut core = self.core.borrow_mut();
        let mut egress = self.egress.borrow_mut();
        while let Some(action) = core.poll_action() {
            match action {
                Action::Forward {
                    next_hop,
                    buffer,
                    rotation,
                    at_us,
                } => {
                    core.record_hand_off(&buffer, at_us, handed_off_us);
                    if let Some(hook) = &self.trace {
                        trace_departure(hook, &core, &buffer, next_hop, at_us, handed_off_us);
                    }
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
                    if let Some(hook) = &self.trace {
                        hook.record(PacketEvent {
                            t_ns: trace::trace_clock_ns(),
                            kind: PacketEventKind::Deliver,
                            packet_id: core.tag(&buffer),
                            size_bytes: core.packet(&buffer).len() as u32,
                            next_hop: None,
                            drop_reason: None,
                            lab: None,
                        });
                    }
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
    egress: &mut HashMap<SocketAddr, Rc<NextHopQueue>>,
    next_hop: SocketAddr,
    shard: &Shard,
) -> Option<Rc<NextHopQueue>> {
    if let Some(queue) = egress.get(&next_hop) {
        return Some(queue.clone());
    }
    if egress.len() >= EGRESS_HOPS_MAX {
        shard.metrics.dropped(DropReason::UnknownNextHop, 1);
        return None;
    }
    let queue = NextHopQueue::spawn(
        next_hop,
        shard.egress_config.clone(),
        shard.metrics.clone(),
        shard.stop.clone(),
    );
    egress.insert(next_hop, queue.clone());
    Some(queue)
}

async fn run_shard(setup: ShardSetup) {
    setup.tid.store(nudge::current_tid(), Ordering::Relaxed);
    let listener_fd = match sock::bind_listener(setup.listen) {
        Ok(fd) => fd,
        Err(e) => {
            let _ = setup.bound.send(Err(format!("{}: {e}", setup.listen)));
            return;
        }
    };
    // SAFETY: `listener_fd` is a bound, listening TCP socket nothing else owns.
    let listener = unsafe { TcpListener::from_raw_fd(listener_fd) };
    let local_addr = match listener.local_addr() {
        Ok(addr) => addr,
        Err(e) => {
            let _ = setup.bound.send(Err(e.to_string()));
            return;
        }
    };
    let core = Core::new(
        setup.config.engine.clone(),
        setup.keys,
        setup.replay,
        setup.metrics.clone(),
        monotonic_ns() / 1_000,
    );
    let (wake, woken) = local_channel::new_bounded(1);
    let shard = Rc::new(Shard {
        core: RefCell::new(core),
        egress: RefCell::new(HashMap::new()),
        egress_config: Rc::new(setup.config.egress.clone()),
        metrics: setup.metrics,
        stop: setup.stop,
        panic_requested: setup.panic_requested,
        ingress: RefCell::new(IngressTable::new(setup.config.ingress)),
        listener_fd,
        wake,
        timer_armed_us: Cell::new(u64::MAX),
        deliver_final_hops: setup.config.deliver_final_hops,
        ignore_rotation_byte: setup.config.ignore_rotation_byte,
        final_hops: setup.final_hops,
        trace: setup.trace,
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

/// Accepts until the listener is shut down (at stop). The accept is the only future of its
/// task and gated ([`WakeGated`]): it is polled once per wake-up of its own.
async fn accept_loop(shard: Rc<Shard>, listener: TcpListener) {
    loop {
        let stream = match WakeGated::new(listener.accept()).await {
            Ok(stream) => stream,
            Err(_) if shard.stop.load(Ordering::Relaxed) => return,
            Err(_) => {
                // Out of descriptors or a transient error: pause rather than spin.
                glommio::timer::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if shard.stop.load(Ordering::Relaxed) {
            return;
        }
        let Ok(peer) = stream.peer_addr() else {
            continue; // already gone
        };
        let admission =
            shard
                .ingress
                .borrow_mut()
                .admit(peer.ip(), stream.as_raw_fd(), shard.now_us());
        let id = match admission {
            Admission::Admitted(id) => id,
            Admission::AdmittedEvicting { id, evicted } => {
                CoreMetrics::add(&shard.metrics.connections_idle_closed, 1);
                sock::shutdown_fd(evicted);
                id
            }
            Admission::RefusedPerIp | Admission::RefusedFull => {
                CoreMetrics::add(&shard.metrics.connections_refused, 1);
                continue; // dropped: closes the connection
            }
        };
        glommio::spawn_local(serve_connection(shard.clone(), stream, id)).detach();
    }
}

async fn serve_connection(shard: Rc<Shard>, mut stream: TcpStream, id: u64) {
    CoreMetrics::add(&shard.metrics.connections_ingress, 1);
    sock::set_receive_buffer(&stream, INGRESS_RCVBUF_BYTES);
    let mut decoder = FrameDecoder::new();
    let mut buffer = vec![0u8; READ_BYTES];
    loop {
        let count = match sock::recv_now(&stream, &mut buffer) {
            sock::Io::Done(count) => count,
            sock::Io::Closed => break,
            sock::Io::WouldBlock => {
                if shard.stop.load(Ordering::Relaxed) {
                    break;
                }
                // Shutdown, the idle sweep and eviction end this read by shutting the socket
                // down (`sock::shutdown_fd`): no timer is raced against it.
                match stream.read(&mut buffer).await {
                    Ok(count) if count > 0 => count,
                    _ => break, // EOF, error or closed by this core
                }
            }
        };
        let fed = feed(&shard, &mut decoder, &buffer[..count], shard.now_us());
        let now_us = fed.now_us;
        if fed.frames > 0 {
            shard.ingress.borrow_mut().touch(id, now_us);
        }
        if count < buffer.len() {
            // The socket is drained: nothing more to batch with now, so waiting for the flush
            // deadline would only add latency. Under load reads fill the buffer and batches
            // fill up before this; at moderate load whole lane groups go now and a partial one
            // waits for the next read (`Core::flush_drained`).
            let started_ns = monotonic_ns();
            let mut core = shard.core.borrow_mut();
            let ran = core.flush_drained(started_ns / 1_000);
            report_batch_cost(&mut core, ran, started_ns);
        }
        shard.pump();
        let due_us = shard.core.borrow().poll_timeout();
        if due_us.is_some_and(|due_us| due_us < shard.timer_armed_us.get()) {
            let _ = shard.wake.try_send(());
        }
        if fed.lost_framing {
            break;
        }
        // Let the egress writers send what this read produced before reading more: packets
        // leave right after their batch, and egress queues stay short.
        future::yield_now().await;
    }
    // Forget the descriptor before the stream closes it: the table never names a closed fd.
    shard.ingress.borrow_mut().remove(id);
    drop(stream);
    shard
        .metrics
        .connections_ingress
        .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
}

/// What one read's bytes did.
struct Fed {
    /// The stream lost framing: close it.
    lost_framing: bool,
    /// The clock's last reading: per packet, and after each batch the core ran (a batch takes
    /// long enough that the frames after it reach the core later than the read).
    now_us: u64,
    /// Whole frames decoded.
    frames: u32,
}

/// Reports the cost of the batch a core call started at `started_ns` ran, if it ran one: the
/// call's duration (the core reads no clock).
fn report_batch_cost(core: &mut Core, ran: Option<BatchRan>, started_ns: u64) {
    if let Some(ran) = ran {
        core.record_batch_cost(ran, monotonic_ns().saturating_sub(started_ns));
    }
}

/// Decodes frames into the core.
fn feed(shard: &Shard, decoder: &mut FrameDecoder, bytes: &[u8], mut now_us: u64) -> Fed {
    let mut core = shard.core.borrow_mut();
    let metrics = &shard.metrics;
    let mut frames = 0u32;
    let result = decoder.feed(bytes, |frame| {
        frames += 1;
        CoreMetrics::add(&metrics.frames_received, 1);
        match frame {
            Ok(frame) if frame.header.packet_type == PacketType::Mix => {
                let rotation = if shard.ignore_rotation_byte {
                    KeyRotation::Unknown
                } else {
                    frame.header.key_rotation
                };
                // Read per packet: its arrival time, and the start of the batch it may complete.
                let started_ns = monotonic_ns();
                now_us = started_ns / 1_000;
                let admitted = match &shard.trace {
                    None => core.handle_packet(now_us, rotation, frame.packet),
                    Some(hook) => traced_arrival(hook, &mut core, now_us, rotation, frame.packet),
                };
                match admitted {
                    Admitted::BatchRan(ran) => {
                        let ended_ns = monotonic_ns();
                        core.record_batch_cost(ran, ended_ns.saturating_sub(started_ns));
                        now_us = ended_ns / 1_000;
                    }
                    // Counted by the core under its reason.
                    Admitted::Queued | Admitted::Dropped(_) => {}
                }
            }
            // Outfox is framed but not processed; skipped frames are malformed.
            Ok(_) | Err(_) => core.handle_skipped_frame(),
        }
    });
    if result.is_err() {
        metrics.dropped(DropReason::Malformed, 1);
    }
    Fed {
        lost_framing: result.is_err(),
        now_us,
        frames,
    }
}

/// Records a packet's arrival (and its drop, if the core refuses it) around `handle_packet`.
fn traced_arrival(
    hook: &TraceHook,
    core: &mut Core,
    now_us: u64,
    rotation: KeyRotation,
    packet: &[u8],
) -> Admitted {
    let id = trace::packet_id(packet);
    let event = PacketEvent {
        t_ns: trace::trace_clock_ns(),
        kind: PacketEventKind::Arrive,
        packet_id: id,
        size_bytes: packet.len() as u32,
        next_hop: None,
        drop_reason: None,
        lab: None,
    };
    hook.record(event);
    let admitted = core.handle_packet_tagged(now_us, rotation, packet, id);
    if let Admitted::Dropped(reason) = admitted {
        hook.record(PacketEvent {
            kind: PacketEventKind::Drop,
            drop_reason: Some(reason),
            ..event
        });
    }
    admitted
}

/// Records a `Forward`'s hand-off to egress; lab hooks also link it to its input.
fn trace_departure(
    hook: &TraceHook,
    core: &Core,
    buffer: &crate::pool::BufId,
    next_hop: SocketAddr,
    at_us: u64,
    handed_off_us: u64,
) {
    let packet = core.packet(buffer);
    let lab = hook.lab().then(|| {
        let arrived_us = core.arrived_us(buffer);
        trace::LabLink {
            in_packet_id: core.tag(buffer),
            delay_drawn_ns: at_us.saturating_sub(arrived_us) * 1_000,
            residence_ns: handed_off_us.saturating_sub(arrived_us) * 1_000,
        }
    });
    hook.record(PacketEvent {
        t_ns: trace::trace_clock_ns(),
        kind: PacketEventKind::Depart,
        packet_id: trace::packet_id(packet),
        size_bytes: packet.len() as u32,
        next_hop: Some(next_hop),
        drop_reason: None,
        lab,
    });
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
    let mut swept_us = shard.now_us();
    let mut idle = Vec::new();
    // Runs until shutdown; every turn is bounded (the core fires a bounded number of timers).
    loop {
        shard.timer_armed_us.set(u64::MAX);
        apply_key_update(&shard, &key_update);
        let now_ns = monotonic_ns();
        let now_us = now_ns / 1_000;
        CoreMetrics::set(&shard.metrics.loop_turn_us, now_us);
        if shard.panic_requested.swap(false, Ordering::SeqCst) {
            // The one deliberate panic: what a test of core failure asks for.
            #[allow(clippy::panic)]
            {
                panic!("core panic injected by a test (Runtime::inject_core_panic)");
            }
        }
        {
            let mut core = shard.core.borrow_mut();
            let ran = core.handle_timeout(now_us);
            report_batch_cost(&mut core, ran, now_ns);
        }
        shard.pump();
        if now_us >= swept_us + INGRESS_SWEEP_US {
            swept_us = now_us;
            shard.ingress.borrow_mut().take_idle(now_us, &mut idle);
            CoreMetrics::add(&shard.metrics.connections_idle_closed, idle.len() as u64);
            for fd in idle.drain(..) {
                sock::shutdown_fd(fd);
            }
        }
        if stopping_since_us.is_none() && shard.stop.load(Ordering::Relaxed) {
            stopping_since_us = Some(now_us);
            // Stop accepting and reading: the pending accept and reads end.
            sock::shutdown_fd(shard.listener_fd);
            for fd in shard.ingress.borrow().descriptors() {
                sock::shutdown_fd(fd);
            }
            {
                let mut core = shard.core.borrow_mut();
                let ran = core.flush_batch(now_us);
                report_batch_cost(&mut core, ran, now_ns);
            }
            shard.pump();
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

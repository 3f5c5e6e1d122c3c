//! `lethe mixnode`: `init` writes keys and a commented config; `run` starts the engine cores,
//! the metrics endpoint and replay-filter persistence, and shuts down on SIGTERM/SIGINT.

pub mod config;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lethe_crypto::framing::FramingVersion;
use lethe_engine::core::NodeKeys;
use lethe_engine::runtime::{EgressConfig, IngressLimits, Runtime, RuntimeConfig};

use crate::keyfile;
use crate::limits::{
    EGRESS_BACKOFF_MS_INITIAL, EGRESS_BACKOFF_MS_MAX, EGRESS_CONNECT_TIMEOUT_MS, ENGINE_RING_DEPTH,
};
use crate::node::runtime_config::{
    egress_frame_bytes, engine_config, log_memory, report, MemoryAccount, Profile, Sizing,
};
use crate::node::{keys, replay, resolve, rotation, CONFIG_FILE};
use crate::topology::Role;
use config::Config;

/// Flags of `lethe mixnode run`; each overrides `config.toml` and has a `LETHE_*` twin.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct RunOverrides {
    /// Mixnet listen address (config: mixnode.listen_address).
    #[arg(long, env = "LETHE_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Metrics/health HTTP address (config: mixnode.metrics_address).
    #[arg(long, env = "LETHE_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Engine cores; 0 = all (config: mixnode.cores).
    #[arg(long, env = "LETHE_CORES")]
    pub cores: Option<u32>,
    /// Egress framing version, 7 or 8 (config: mixnode.egress_framing).
    #[arg(long, env = "LETHE_EGRESS_FRAMING")]
    pub egress_framing: Option<u8>,
    /// Packets queued per next hop before new ones are dropped (config:
    /// mixnode.egress_queue_packets_max).
    #[arg(long, env = "LETHE_EGRESS_QUEUE_PACKETS_MAX")]
    pub egress_queue_packets_max: Option<u32>,
    /// Packets per Sphinx batch (config: engine.batch_packets_max).
    #[arg(long, env = "LETHE_BATCH_PACKETS_MAX")]
    pub batch_packets_max: Option<u32>,
    /// Longest wait of a partial batch in µs (config: engine.batch_flush_us).
    #[arg(long, env = "LETHE_BATCH_FLUSH_US")]
    pub batch_flush_us: Option<u64>,
    /// Packet buffers per core (config: engine.pool_buffers_count).
    #[arg(long, env = "LETHE_POOL_BUFFERS")]
    pub pool_buffers: Option<u32>,
    /// Pool memory per core in bytes (config: engine.pool_memory_bytes).
    #[arg(long, env = "LETHE_POOL_MEMORY_BYTES")]
    pub pool_memory_bytes: Option<u64>,
    /// Accepted packet sizes, comma-separated: regular,ack,ext8,ext16,ext32
    /// (config: engine.packet_sizes).
    #[arg(long, env = "LETHE_PACKET_SIZES", value_delimiter = ',')]
    pub packet_sizes: Option<Vec<String>>,
    /// Delayed packets per core (config: engine.timer_entries_max).
    #[arg(long, env = "LETHE_TIMER_ENTRIES_MAX")]
    pub timer_entries_max: Option<u32>,
    /// Replay sizing: packets per second (config: replay.packets_per_s).
    #[arg(long, env = "LETHE_REPLAY_PACKETS_PER_S")]
    pub replay_packets_per_s: Option<u64>,
    /// Replay sizing: key lifetime in seconds (config: replay.key_lifetime_s).
    #[arg(long, env = "LETHE_REPLAY_KEY_LIFETIME_S")]
    pub replay_key_lifetime_s: Option<u64>,
    /// Replay sizing: packets one filter holds, packets/s × key lifetime in s (config:
    /// replay.capacity_packets). Wins over the two flags above.
    #[arg(long, env = "LETHE_REPLAY_CAPACITY_PACKETS")]
    pub replay_capacity_packets: Option<u64>,
    /// Replay snapshot interval in seconds (config: replay.snapshot_interval_s).
    #[arg(long, env = "LETHE_SNAPSHOT_INTERVAL_S")]
    pub snapshot_interval_s: Option<u64>,
    /// Seconds between scheduled Sphinx key rotations, at multiples of it since the Unix
    /// epoch (network-wide rotation id = unix time / interval); 0 = never (config:
    /// keys.rotation_interval_s).
    #[arg(long, env = "LETHE_ROTATION_INTERVAL_S")]
    pub rotation_interval_s: Option<u64>,
    /// Seconds the previous Sphinx key stays accepted after a rotation (config:
    /// keys.rotation_overlap_s).
    #[arg(long, env = "LETHE_ROTATION_OVERLAP_S")]
    pub rotation_overlap_s: Option<u64>,
    /// Shutdown grace period in ms (config: mixnode.shutdown_grace_ms).
    #[arg(long, env = "LETHE_SHUTDOWN_GRACE_MS")]
    pub shutdown_grace_ms: Option<u64>,
    /// µs an idle core polls before it sleeps (config: mixnode.spin_before_park_us).
    #[arg(long, env = "LETHE_SPIN_BEFORE_PARK_US")]
    pub spin_before_park_us: Option<u64>,
    #[command(flatten)]
    pub announce: AnnounceArgs,
    #[command(flatten)]
    pub trace: crate::trace::TraceArgs,
}

/// Directory registration flags of `lethe mixnode run` (none: the node does not register).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct AnnounceArgs {
    /// Directory authority base URL (`http://host:port`): register there and heartbeat.
    /// Repeat (or comma-separate) for each authority: each is announced to independently.
    #[arg(long, env = "LETHE_DIRECTORY", value_delimiter = ',')]
    pub directory: Vec<String>,
    /// Mix address to advertise; default: the bound listen address (which must then be a
    /// specific IP, not 0.0.0.0).
    #[arg(long, env = "LETHE_ANNOUNCE", requires = "directory")]
    pub announce: Option<SocketAddr>,
    /// Metrics URL to advertise; default: `http://<metrics address>/metrics`, with the
    /// announced IP if the metrics address is unspecified.
    #[arg(long, env = "LETHE_METRICS_URL", requires = "directory")]
    pub metrics_url: Option<String>,
    /// Seconds between heartbeats.
    #[arg(long, env = "LETHE_HEARTBEAT_S", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub heartbeat_s: u64,
}

impl RunOverrides {
    pub fn apply(&self, config: &mut Config) {
        let m = &mut config.mixnode;
        m.listen_address = self.listen.unwrap_or(m.listen_address);
        m.metrics_address = self.metrics_listen.unwrap_or(m.metrics_address);
        m.cores = self.cores.unwrap_or(m.cores);
        m.egress_framing = self.egress_framing.unwrap_or(m.egress_framing);
        m.egress_queue_packets_max = self
            .egress_queue_packets_max
            .unwrap_or(m.egress_queue_packets_max);
        m.shutdown_grace_ms = self.shutdown_grace_ms.unwrap_or(m.shutdown_grace_ms);
        m.spin_before_park_us = self.spin_before_park_us.unwrap_or(m.spin_before_park_us);
        let e = &mut config.engine;
        e.batch_packets_max = self.batch_packets_max.unwrap_or(e.batch_packets_max);
        e.batch_flush_us = self.batch_flush_us.unwrap_or(e.batch_flush_us);
        e.pool_buffers_count = self.pool_buffers.unwrap_or(e.pool_buffers_count);
        e.pool_memory_bytes = self.pool_memory_bytes.unwrap_or(e.pool_memory_bytes);
        if let Some(sizes) = &self.packet_sizes {
            e.packet_sizes = sizes.clone();
        }
        e.timer_entries_max = self.timer_entries_max.unwrap_or(e.timer_entries_max);
        let r = &mut config.replay;
        r.apply_flags(
            self.replay_packets_per_s,
            self.replay_key_lifetime_s,
            self.replay_capacity_packets,
        );
        r.snapshot_interval_s = self.snapshot_interval_s.unwrap_or(r.snapshot_interval_s);
        let k = &mut config.keys;
        k.rotation_interval_s = self.rotation_interval_s.unwrap_or(k.rotation_interval_s);
        k.rotation_overlap_s = self.rotation_overlap_s.unwrap_or(k.rotation_overlap_s);
    }
}

/// `lethe mixnode init`: keys (0600, in a 0700 dir) and the commented config; never
/// overwrites.
pub fn init(dir: &Path, profile: Profile) -> Result<(), String> {
    keyfile::create_private_dir(dir)?;
    let config_path = dir.join(CONFIG_FILE);
    if config_path.exists() {
        return Err(format!(
            "{} exists: refusing to overwrite",
            config_path.display()
        ));
    }
    let text = config::template(profile);
    let config: Config = toml::from_str(&text).map_err(|e| e.to_string())?;
    // What the profile implies, before anything is written (a sizing error writes nothing).
    let sizing = Sizing::of(&config.replay, &config.engine, config.mixnode.cores)?;
    keyfile::create_private_dir(&resolve(dir, &config.replay.data_dir))?;
    keys::write_keys(dir, &config.keys)?;
    keyfile::write_new(&config_path, text.as_bytes(), 0o600)?;
    // The keys an operator hands to others (the identity names the node in the directory,
    // the Sphinx key is what clients encrypt to) and the next command, filled in.
    let identity =
        keyfile::read_public(&resolve(dir, &config.keys.identity).with_extension("pub"))?;
    let sphinx =
        keyfile::read_public(&resolve(dir, &config.keys.sphinx_primary).with_extension("pub"))?;
    println!("identity={}", keyfile::hex(&identity));
    println!("sphinx_key={}", keyfile::hex(&sphinx));
    println!("config={}", config_path.display());
    sizing.print(profile, config.replay.snapshot_interval_s);
    eprintln!(
        "initialised mixnode in {d}. Next, register it with a directory and start it:\n\n  \
         {exe} mixnode run --dir {d} --directory http://DIRECTORY:8080 --announce \
         PUBLIC_IP:{port}\n\n--announce is the address other nodes reach this one at (the \
         listener binds {listen}); without --directory the node runs unregistered.",
        d = keyfile::shell_quote(&dir.to_string_lossy()),
        exe = crate::testnet::invoked_as(),
        listen = config.mixnode.listen_address,
        port = config.mixnode.listen_address.port(),
    );
    Ok(())
}

pub(crate) fn runtime_config(config: &Config) -> Result<RuntimeConfig, String> {
    let m = &config.mixnode;
    let cores = match m.cores {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
        n => n,
    };
    let framing = match m.egress_framing {
        7 => FramingVersion::V7,
        8 => FramingVersion::V8,
        other => return Err(format!("egress_framing = {other}: must be 7 or 8")),
    };
    if m.egress_queue_packets_max == 0 {
        return Err("egress_queue_packets_max must be > 0".into());
    }
    let engine = engine_config(&config.engine)?;
    let frame_bytes_max = egress_frame_bytes(&engine, m.egress_queue_packets_max);
    tracing::info!(
        packet_sizes = %engine.packet_sizes,
        pool_buffers_per_core = engine.pool_buffers_count,
        pool_buffer_bytes = engine.pool_buffer_bytes,
        "packet pool"
    );
    Ok(RuntimeConfig {
        listen: m.listen_address,
        cores,
        cpus: m.cpus.clone(),
        engine,
        egress: EgressConfig {
            framing,
            queue_packets_max: m.egress_queue_packets_max,
            frame_bytes_max,
            backoff_ms_initial: EGRESS_BACKOFF_MS_INITIAL,
            backoff_ms_max: EGRESS_BACKOFF_MS_MAX,
            connect_timeout_ms: EGRESS_CONNECT_TIMEOUT_MS,
            unreachable_drop_ms: lethe_engine::runtime::egress::UNREACHABLE_DROP_MS_DEFAULT,
        },
        ingress: ingress_limits(m)?,
        shutdown_grace_ms: m.shutdown_grace_ms,
        io_memory_bytes: m.io_memory_bytes,
        ring_depth: ENGINE_RING_DEPTH,
        deliver_final_hops: false,
        ignore_rotation_byte: false,
        spin_before_park_us: m.spin_before_park_us,
    })
}

fn ingress_limits(m: &config::MixnodeSection) -> Result<IngressLimits, String> {
    let limits = IngressLimits {
        per_ip_max: m.ingress_connections_per_ip_max,
        idle_timeout_us: m.ingress_idle_timeout_s.saturating_mul(1_000_000),
        ..IngressLimits::DEFAULT
    };
    if limits.per_ip_max == 0 || limits.per_ip_max > limits.connections_max {
        return Err(format!(
            "ingress_connections_per_ip_max = {}: must be 1..={}",
            limits.per_ip_max, limits.connections_max
        ));
    }
    if limits.idle_timeout_us < limits.evict_idle_us {
        return Err(format!(
            "ingress_idle_timeout_s = {}: must be at least {} s",
            m.ingress_idle_timeout_s,
            limits.evict_idle_us / 1_000_000
        ));
    }
    Ok(limits)
}

/// Locks the state a mixnode writes, which its config may put outside its directory (where
/// another node's config could point too): the replay snapshots and the keys directory
/// (rotated keys and the rotation state).
fn lock_state(
    dir: &Path,
    config: &Config,
    locks: &mut crate::lock::NodeLocks,
) -> Result<(), String> {
    let primary = resolve(dir, &config.keys.sphinx_primary);
    locks.state_dir(&resolve(dir, &config.replay.data_dir), "replay.data_dir")?;
    locks.state_dir(primary.parent().unwrap_or(dir), "keys.sphinx_primary")
}

/// `lethe mixnode run`.
pub fn run(dir: &Path, overrides: &RunOverrides) -> Result<(), String> {
    // Registered first, so a signal that arrives during start-up is not lost.
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ])
    .map_err(|e| format!("signals: {e}"))?;
    // Before anything is read or written: a second process on this directory stops here.
    // Held (with the state locks) until `run` returns, i.e. for the process's life.
    let mut locks = crate::lock::NodeLocks::claim(dir, "mixnode")?;
    let mut config = Config::load(dir)?;
    overrides.apply(&mut config);
    lock_state(dir, &config, &mut locks)?;
    // The identity is used only to register, but a key that is unreadable, exposed or corrupt
    // is refused now, whatever the flags: not first noticed the day `--directory` is added.
    keyfile::read_private(&resolve(dir, &config.keys.identity))?;
    for url in &overrides.announce.directory {
        check_announce(url, &overrides.announce, config.mixnode.listen_address)?;
    }
    let mut rotation =
        rotation::Rotation::start(dir, &config.keys, &config.replay, rotation::now_ms())?;
    let runtime_config = runtime_config(&config)?;
    let memory = log_memory(&rotation.replay_set(), &runtime_config);
    let cores = runtime_config.cores;
    let trace_setup = overrides.trace.setup()?;
    let trace_config = format!("{runtime_config:?}");
    let runtime = Runtime::start_traced(
        runtime_config,
        rotation.keys().clone(),
        rotation.replay_set(),
        None,
        trace_setup.as_ref().map(|t| t.hook.clone()),
    )
    .map_err(|e| e.to_string())?;
    let (runtime, trace) = crate::trace::start(
        trace_setup,
        runtime,
        lethe_sim::trace::Role::Mix,
        &trace_config,
    )?;
    let metrics = runtime.metrics().to_vec();
    let registering = !overrides.announce.directory.is_empty();
    let status = crate::http::NodeStatus::new("mixnode", registering);
    let schedule = rotation::Schedule::from_keys(&config.keys)?;
    status.set_sphinx_keys(key_expiries(&rotation, &schedule));
    status.set_memory(memory);
    let metrics_addr = crate::http::serve(
        config.mixnode.metrics_address,
        metrics.clone(),
        status.clone(),
    )?;
    let data_dir = resolve(dir, &config.replay.data_dir);
    let stop = Arc::new(AtomicBool::new(false));
    let snapshots = replay::spawn_snapshots(
        data_dir.clone(),
        rotation.replay().clone(),
        config.replay.snapshot_interval_s,
        stop.clone(),
    );
    println!("listen={}", runtime.local_addr());
    println!("metrics={metrics_addr}");
    let announcer = match overrides.announce.directory.as_slice() {
        [] => None,
        urls => Some(start_announcer(
            dir,
            &config,
            urls,
            &overrides.announce,
            Bound {
                mix: runtime.local_addr(),
                metrics: metrics_addr,
            },
            rotation.keys(),
            &status,
        )?),
    };
    tracing::info!(listen = %runtime.local_addr(), cores, "mixnode up");
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
    let control = Control {
        runtime: &runtime,
        announcer: announcer.as_ref(),
        status: &status,
        schedule,
        memory,
    };
    let signal = match wait_for_signal(&mut signals, &mut rotation, &control) {
        Ok(signal) => signal,
        Err(failure) => {
            // A core is gone: keep the replay state, say why, and let the supervisor restart
            // us. Not joined: a wedged core would hold the exit up.
            tracing::error!("{failure}: exiting");
            if let Some(announcer) = announcer {
                announcer.stop();
            }
            runtime.shutdown();
            if let Err(e) = replay::save_locked(&data_dir, rotation.replay()) {
                tracing::error!(error = %e, "replay snapshot at exit failed");
            }
            report(&metrics);
            std::process::exit(crate::supervise::EXIT_ENGINE_FAILED);
        }
    };
    tracing::info!(
        signal = crate::logging::signal_name(signal),
        grace_ms = config.mixnode.shutdown_grace_ms,
        "stopping mixnode"
    );
    // Leave the directory first (stop heartbeating, deregister): it drops us from the next
    // topology at once, so no client routes into a node that is going away.
    if let Some(announcer) = announcer {
        announcer.leave();
    }
    runtime.shutdown();
    let joined = runtime.join();
    crate::trace::finish(trace);
    stop.store(true, Ordering::SeqCst);
    let _ = snapshots.join();
    replay::save_locked(&data_dir, rotation.replay())?;
    report(&metrics);
    joined
}

/// The control-plane loop: waits for SIGTERM/SIGINT, and meanwhile runs the key-rotation
/// schedule (checked every 100 ms; a failed rotation is logged and retried) and watches the
/// engine's liveness (`Err` when a core failed).
/// What the control loop watches and updates besides the rotation.
struct Control<'a> {
    runtime: &'a Runtime,
    announcer: Option<&'a crate::directory::Announcer>,
    status: &'a crate::http::NodeStatus,
    schedule: rotation::Schedule,
    /// What the node stated of its memory at start (its replay filters change with each
    /// rotation).
    memory: MemoryAccount,
}

/// The live Sphinx keys and when each stops being accepted: the primary at its successor's
/// boundary plus the overlap (never, with rotation disabled), the secondary at the end of
/// its overlap.
fn key_expiries(
    rotation: &rotation::Rotation,
    schedule: &rotation::Schedule,
) -> Vec<crate::http::KeyExpiry> {
    let state = rotation.state();
    let primary = state.primary_rotation_id;
    let mut keys = vec![crate::http::KeyExpiry {
        rotation_id: primary,
        expires_at_s: schedule
            .enabled()
            .then(|| schedule.overlap_end_ms(primary) / 1_000),
    }];
    if let Some(secondary) = state.secondary_rotation_id {
        keys.push(crate::http::KeyExpiry {
            rotation_id: secondary,
            expires_at_s: state.secondary_until_ms.map(|ms| ms / 1_000),
        });
    }
    keys
}

fn wait_for_signal(
    signals: &mut signal_hook::iterator::Signals,
    rotation: &mut rotation::Rotation,
    control: &Control<'_>,
) -> Result<i32, String> {
    let (runtime, announcer) = (control.runtime, control.announcer);
    let mut failures = 0u32;
    let mut engine = crate::supervise::EngineWatch::default();
    // Runs until a signal arrives; every turn is bounded (one rotation step at most).
    loop {
        if let Some(signal) = signals.pending().next() {
            return Ok(signal);
        }
        engine.check(runtime, announcer)?;
        match rotation.tick(rotation::now_ms(), runtime) {
            Ok(true) => {
                failures = 0;
                control
                    .status
                    .set_sphinx_keys(key_expiries(rotation, &control.schedule));
                control
                    .status
                    .set_memory(control.memory.holding(&rotation.replay_set()));
                if let Some(announcer) = announcer {
                    let mut descriptor = announcer.descriptor();
                    let primary = &rotation.keys().primary;
                    descriptor.sphinx_key = keyfile::hex(&primary.public_key());
                    descriptor.rotation_id = primary.rotation_id;
                    announcer.update(descriptor);
                }
            }
            Ok(false) => {}
            Err(e) => {
                if failures.is_multiple_of(100) {
                    tracing::error!(error = %e, failures, "sphinx key rotation failed; retrying");
                }
                failures = failures.saturating_add(1);
            }
        }
        std::thread::sleep(Duration::from_millis(crate::limits::STOP_POLL_MS));
    }
}

/// `lethe mixnode deregister`: the node in `dir` leaves the authorities at `urls` at once.
pub fn deregister(dir: &Path, urls: &[String]) -> Result<(), String> {
    let config = Config::load(dir)?;
    crate::directory::announce::deregister_command(&resolve(dir, &config.keys.identity), urls)
}

/// Refuses, before anything starts, an announcement that could not work.
pub(crate) fn check_announce(
    url: &str,
    args: &AnnounceArgs,
    listen: SocketAddr,
) -> Result<(), String> {
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(format!(
            "--directory {url}: must be an http:// or https:// URL"
        ));
    }
    match args.announce {
        Some(addr) if addr.ip().is_unspecified() || addr.port() == 0 => {
            Err(format!("--announce {addr}: must be a specific IP and port"))
        }
        Some(_) => Ok(()),
        None if listen.ip().is_unspecified() => Err(format!(
            "listening on {listen}: pass --announce ADDR, the address others reach this node at"
        )),
        None => Ok(()),
    }
}

/// The addresses the node's listeners bound.
struct Bound {
    mix: SocketAddr,
    metrics: SocketAddr,
}

/// Registers this node with the directory and keeps heartbeating, on its own thread.
fn start_announcer(
    dir: &Path,
    config: &Config,
    urls: &[String],
    args: &AnnounceArgs,
    bound: Bound,
    keys: &NodeKeys,
    status: &crate::http::NodeStatus,
) -> Result<crate::directory::Announcer, String> {
    let identity = keyfile::read_private(&resolve(dir, &config.keys.identity))?;
    let (mix_address, metrics) = (args.announce.unwrap_or(bound.mix), bound.metrics);
    let metrics_url = args.metrics_url.clone().unwrap_or_else(|| {
        let host = if metrics.ip().is_unspecified() {
            SocketAddr::new(mix_address.ip(), metrics.port())
        } else {
            metrics
        };
        format!("http://{host}/metrics")
    });
    let descriptor = crate::directory::announce::node_descriptor(
        &identity,
        Role::Mixnode,
        mix_address,
        &keys.primary.public_key(),
        keys.primary.rotation_id,
        None,
        Some(metrics_url),
    );
    tracing::info!(%mix_address, directory = %urls.join(","), "announcing");
    crate::directory::spawn_announcer(
        urls,
        &identity,
        descriptor,
        Duration::from_secs(args.heartbeat_s),
        status.registration.clone(),
    )
    .map_err(|e| format!("announcer: {e}"))
}

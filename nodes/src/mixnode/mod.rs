//! `lethe mixnode`: `init` writes keys and a commented config; `run` starts the engine cores,
//! the metrics endpoint and replay-filter persistence, and shuts down on SIGTERM/SIGINT.

pub mod config;
pub mod rotation;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lethe_crypto::framing::{FramingVersion, FRAME_MAX_LEN, HEADER_MAX_LEN};
use lethe_engine::core::{NodeKeys, SphinxKey};
use lethe_engine::limits::{pool_buffers_for, PacketSizes, PACKET_BYTES_DEFAULT};
use lethe_engine::metrics::{CoreMetrics, DropReason};
use lethe_engine::runtime::{EgressConfig, IngressLimits, Runtime, RuntimeConfig};
use lethe_engine::{snapshot_path, EngineConfig, ReplayConfig, ReplayFilter, ReplayFilterSet};
use x25519_dalek::{PublicKey, StaticSecret};

use crate::keyfile;
use crate::topology::Role;
use config::{resolve, Config, EngineSection, KeysSection, ReplaySection, CONFIG_FILE};

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
}

/// Directory registration flags of `lethe mixnode run` (none: the node does not register).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct AnnounceArgs {
    /// Directory base URL (`http://host:port`): register there and heartbeat.
    #[arg(long, env = "LETHE_DIRECTORY")]
    pub directory: Option<String>,
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
pub fn init(dir: &Path, profile: config::Profile) -> Result<(), String> {
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
    let sizing = config::Sizing::of(&config.replay, &config.engine, config.mixnode.cores)?;
    keyfile::create_private_dir(&resolve(dir, &config.replay.data_dir))?;
    write_keys(dir, &config.keys)?;
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

/// Writes a new ed25519 identity and the two x25519 Sphinx keys (shared with the gateway).
pub(crate) fn write_keys(dir: &Path, keys: &KeysSection) -> Result<(), String> {
    let identity_path = resolve(dir, &keys.identity);
    if let Some(parent) = identity_path.parent() {
        keyfile::create_private_dir(parent)?;
    }
    let identity = keyfile::random_32()?;
    keyfile::write_key_pair(
        &identity_path,
        &identity,
        &keyfile::ed25519_public(&identity),
    )?;
    for path in [&keys.sphinx_primary, &keys.sphinx_secondary] {
        let secret = StaticSecret::from(*keyfile::random_32()?);
        let public = PublicKey::from(&secret).to_bytes();
        keyfile::write_key_pair(&resolve(dir, path), secret.as_bytes(), &public)?;
    }
    Ok(())
}

pub(crate) fn load_keys(dir: &Path, keys: &KeysSection) -> Result<NodeKeys, String> {
    let read = |path: &PathBuf| -> Result<StaticSecret, String> {
        Ok(StaticSecret::from(*keyfile::read_private(&resolve(
            dir, path,
        ))?))
    };
    // The identity key is not used by the data plane yet; check it is there and private.
    keyfile::read_private(&resolve(dir, &keys.identity))?;
    // The primary only: it is the key the gateway announces and clients encrypt to. The
    // secondary `init` writes is announced nowhere, so no packet can be built for it; loading
    // it cost a second replay filter (1.8 GB by default, and its snapshot file) for nothing.
    let primary = SphinxKey::new(keys.primary_rotation_id, read(&keys.sphinx_primary)?);
    Ok(NodeKeys::new(primary, None))
}

/// One filter per live key: the snapshot if there is one, else a fresh filter.
pub(crate) fn load_replay(
    dir: &Path,
    replay: &ReplaySection,
    keys: &NodeKeys,
) -> Result<ReplayFilterSet, String> {
    let data_dir = resolve(dir, &replay.data_dir);
    let params = replay.params()?;
    let mut set = ReplayFilterSet::default();
    let ids = [
        Some(keys.primary.rotation_id),
        keys.secondary.as_ref().map(|k| k.rotation_id),
    ];
    for id in ids.into_iter().flatten() {
        let path = snapshot_path(&data_dir, id);
        let filter = if path.exists() {
            let filter =
                ReplayFilter::load(&path, id).map_err(|e| format!("{}: {e}", path.display()))?;
            tracing::info!(rotation = id, file = %path.display(), "replay filter loaded");
            filter
        } else {
            let filter = ReplayFilter::try_new(id, params)
                .map_err(|_| format!("replay: cannot allocate {} bytes", params.bytes()))?;
            tracing::info!(
                rotation = id,
                bytes = params.bytes(),
                capacity_packets = replay.capacity_packets(),
                fp_rate = replay.fp_rate,
                "replay filter allocated"
            );
            filter
        };
        set.insert(Arc::new(filter))
            .map_err(|e| format!("replay: {e:?}"))?;
    }
    remove_stale_snapshots(&data_dir, &set);
    for filter in set.rotation_ids().filter_map(|id| set.get(id)) {
        check_fill(filter);
    }
    Ok(set)
}

/// Warns when a filter holds more than it was sized for: its false-positive rate (fresh
/// packets dropped as replays) is then above the target. Estimated from the fraction of bits
/// set: a fresh tag is a false positive when its `k` bits are all set, about `fill^k` (each
/// tag's bits lie in one word; uneven words make it a slight underestimate). Reads the whole
/// filter: called at start and after a snapshot, on the snapshot thread.
fn check_fill(filter: &ReplayFilter) -> f64 {
    let params = filter.params();
    let fill = filter.fill_ratio();
    let fp_estimate = fill.powi(params.hash_count as i32);
    let fp_target = params.false_positive_rate();
    if fp_estimate > fp_target {
        tracing::warn!(
            rotation = filter.rotation_id(),
            fill_ratio = fill,
            fp_estimate,
            fp_target,
            capacity_packets = params.items_expected,
            "replay filter past its capacity: fresh packets are dropped as replays more often \
             than its false-positive target; raise replay.capacity_packets (packets/s x key \
             lifetime) or rotate the key"
        );
    }
    fp_estimate
}

/// Deletes snapshots in `data_dir` of rotations that are not live: a key no longer accepted
/// needs no filter, and each file is a filter's size (1.8 GB by default). They are left by a
/// stop between a rotation's steps, and by gateways before they dropped their unused
/// secondary key's filter.
fn remove_stale_snapshots(data_dir: &Path, set: &ReplayFilterSet) {
    let Ok(entries) = std::fs::read_dir(data_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let id = name
            .to_str()
            .and_then(|n| n.strip_prefix("replay-rot-"))
            .and_then(|n| n.strip_suffix(".bin"))
            .and_then(|n| n.parse::<lethe_engine::replay::RotationId>().ok());
        let Some(id) = id else { continue };
        if set.get(id).is_some() {
            continue;
        }
        let path = entry.path();
        let bytes = entry.metadata().map_or(0, |m| m.len());
        match std::fs::remove_file(&path) {
            Ok(()) => tracing::info!(
                rotation = id,
                file = %path.display(),
                bytes,
                "replay snapshot of a rotation no longer live removed"
            ),
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "cannot remove stale replay snapshot")
            }
        }
    }
}

/// Snapshots each live filter that took a new tag since its last snapshot (see
/// `ReplayFilter::save_if_changed`), logging the file, its size and the time it took.
pub(crate) fn save_replay(data_dir: &Path, set: &ReplayFilterSet) -> Result<(), String> {
    for id in set.rotation_ids() {
        if let Some(filter) = set.get(id) {
            let path = snapshot_path(data_dir, id);
            let started = Instant::now();
            let written = filter
                .save_if_changed(&path)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            if written {
                let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
                let fp_estimate = check_fill(filter);
                tracing::info!(
                    rotation = id,
                    file = %path.display(),
                    bytes = filter.snapshot_bytes(),
                    duration_ms,
                    fp_estimate,
                    "replay snapshot written"
                );
            } else {
                tracing::debug!(
                    rotation = id,
                    file = %path.display(),
                    "replay snapshot not rewritten: no packet accepted since the last"
                );
            }
        }
    }
    Ok(())
}

/// Logs what a node allocates at start: the replay filters (live now; one more during a
/// rotation's overlap) and, per core, the packet pool (reserved; pages are touched as
/// buffers are first used) and the io_uring memory.
pub(crate) fn log_memory(set: &ReplayFilterSet, runtime: &RuntimeConfig) {
    let filters: Vec<_> = set.rotation_ids().filter_map(|id| set.get(id)).collect();
    let replay_bytes: u64 = filters.iter().map(|f| f.params().bytes()).sum();
    let e = &runtime.engine;
    let pool_bytes = u64::from(e.pool_buffers_count) * u64::from(e.pool_buffer_bytes);
    tracing::info!(
        replay_filters = filters.len(),
        replay_filter_bytes = filters.first().map_or(0, |f| f.params().bytes()),
        replay_bytes,
        cores = runtime.cores,
        pool_packets_per_core = e.pool_buffers_count,
        pool_bytes_per_core = pool_bytes,
        io_memory_bytes_per_core = runtime.io_memory_bytes,
        timer_entries_per_core = e.timer_entries_max,
        total_bytes_max = replay_bytes.saturating_add(
            pool_bytes
                .saturating_add(runtime.io_memory_bytes as u64)
                .saturating_mul(u64::from(runtime.cores))
        ),
        "memory allocated"
    );
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
            backoff_ms_initial: 100,
            backoff_ms_max: 2_000,
            connect_timeout_ms: 1_500,
            unreachable_drop_ms: lethe_engine::runtime::egress::UNREACHABLE_DROP_MS_DEFAULT,
        },
        ingress: ingress_limits(m)?,
        shutdown_grace_ms: m.shutdown_grace_ms,
        io_memory_bytes: m.io_memory_bytes,
        ring_depth: 128,
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

/// Bytes budgeted per queued egress frame. A next hop's queue holds at most
/// `queue_packets_max` frames and `queue_packets_max × this` bytes (twice: the queue and the
/// writer's spare). The budget stays one regular frame's buffer (2560 B), as before larger
/// sizes existed, so enabling ext8 does not multiply the per-hop memory: larger frames count
/// against the byte budget by their size. Raised only if the queue could not hold one frame
/// of the largest enabled size.
pub(crate) fn egress_frame_bytes(engine: &EngineConfig, queue_packets_max: u32) -> u32 {
    assert!(queue_packets_max > 0);
    let frame_len_max = engine.packet_sizes.packet_len_max() + HEADER_MAX_LEN;
    assert!(frame_len_max <= FRAME_MAX_LEN);
    let per_frame = (frame_len_max as u32).div_ceil(queue_packets_max);
    let bytes = per_frame.max(PACKET_BYTES_DEFAULT);
    assert!(u64::from(bytes) * u64::from(queue_packets_max) >= frame_len_max as u64);
    bytes
}

/// The engine's configuration from the `[engine]` section (shared with the gateway). Buffers
/// are sized for the largest accepted packet; their count comes from the memory budget unless
/// set explicitly, and an explicit count must fit the budget.
pub(crate) fn engine_config(e: &EngineSection) -> Result<EngineConfig, String> {
    let packet_sizes =
        PacketSizes::parse_list(&e.packet_sizes).map_err(|m| format!("engine: {m}"))?;
    let buffer_bytes = packet_sizes.buffer_bytes();
    let budget_count = pool_buffers_for(e.pool_memory_bytes, buffer_bytes);
    let pool_buffers_count = match e.pool_buffers_count {
        0 => budget_count,
        n if n <= budget_count => n,
        n => {
            return Err(format!(
                "engine: pool_buffers_count = {n} buffers of {buffer_bytes} B (sizes \
                 {packet_sizes}) exceed pool_memory_bytes = {}; at most {budget_count}",
                e.pool_memory_bytes
            ))
        }
    };
    let engine = EngineConfig {
        timer_tick_us: e.timer_tick_us,
        timer_delay_ms_max: e.delay_ms_max,
        timer_entries_max: e.timer_entries_max,
        pool_buffers_count,
        pool_buffer_bytes: buffer_bytes,
        packet_sizes,
        batch_packets_max: e.batch_packets_max,
        batch_flush_us: e.batch_flush_us,
        batch_align_packets: e.batch_align_packets,
        batch_hold_us: e.batch_hold_us,
        replay: ReplayConfig::default(),
    };
    engine.validate().map_err(|e| format!("engine: {e}"))?;
    Ok(engine)
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
    if let Some(url) = &overrides.announce.directory {
        check_announce(url, &overrides.announce, config.mixnode.listen_address)?;
    }
    let mut rotation = rotation::Rotation::start(dir, &config, rotation::now_ms())?;
    let runtime_config = runtime_config(&config)?;
    log_memory(&rotation.replay_set(), &runtime_config);
    let cores = runtime_config.cores;
    let runtime = Runtime::start(
        runtime_config,
        rotation.keys().clone(),
        rotation.replay_set(),
    )
    .map_err(|e| e.to_string())?;
    let metrics = runtime.metrics().to_vec();
    let registering = overrides.announce.directory.is_some();
    let status = crate::http::NodeStatus::new("mixnode", registering);
    let schedule = rotation::Schedule::from_keys(&config.keys)?;
    status.set_sphinx_keys(key_expiries(&rotation, &schedule));
    let metrics_addr = crate::http::serve(
        config.mixnode.metrics_address,
        metrics.clone(),
        status.clone(),
    )?;
    let data_dir = resolve(dir, &config.replay.data_dir);
    let stop = Arc::new(AtomicBool::new(false));
    let snapshots = spawn_snapshots(
        data_dir.clone(),
        rotation.replay().clone(),
        config.replay.snapshot_interval_s,
        stop.clone(),
    );
    println!("listen={}", runtime.local_addr());
    println!("metrics={metrics_addr}");
    let announcer = match &overrides.announce.directory {
        Some(url) => Some(start_announcer(
            dir,
            &config,
            url,
            &overrides.announce,
            Bound {
                mix: runtime.local_addr(),
                metrics: metrics_addr,
            },
            rotation.keys(),
            &status,
        )?),
        None => None,
    };
    tracing::info!(listen = %runtime.local_addr(), cores, "mixnode up");
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
    let control = Control {
        runtime: &runtime,
        announcer: announcer.as_ref(),
        status: &status,
        schedule,
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
            if let Err(e) = save_replay_locked(&data_dir, rotation.replay()) {
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
    stop.store(true, Ordering::SeqCst);
    let _ = snapshots.join();
    save_replay_locked(&data_dir, rotation.replay())?;
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
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `lethe mixnode deregister`: the node in `dir` leaves the directory at `url` at once.
pub fn deregister(dir: &Path, url: &str) -> Result<(), String> {
    let config = Config::load(dir)?;
    crate::directory::announce::deregister_command(&resolve(dir, &config.keys.identity), url)
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
    url: &str,
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
    tracing::info!(%mix_address, directory = %url, "announcing");
    crate::directory::spawn_announcer(
        url,
        &identity,
        descriptor,
        Duration::from_secs(args.heartbeat_s),
        status.registration.clone(),
    )
    .map_err(|e| format!("announcer: {e}"))
}

/// Saves the live filters under the set's lock (rotation changes the set under it too).
pub(crate) fn save_replay_locked(
    data_dir: &Path,
    replay: &Mutex<ReplayFilterSet>,
) -> Result<(), String> {
    let set = replay.lock().map_err(|_| "replay set lock poisoned")?;
    save_replay(data_dir, &set)
}

pub(crate) fn spawn_snapshots(
    data_dir: PathBuf,
    replay: Arc<Mutex<ReplayFilterSet>>,
    interval_s: u64,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let interval = Duration::from_secs(interval_s.max(1));
        let mut last = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(100));
            if last.elapsed() >= interval {
                if let Err(e) = save_replay_locked(&data_dir, &replay) {
                    tracing::error!(error = %e, "replay snapshot failed");
                }
                last = Instant::now();
            }
        }
    })
}

pub(crate) fn report(metrics: &[Arc<CoreMetrics>]) {
    let sum = |f: &dyn Fn(&CoreMetrics) -> u64| metrics.iter().map(|m| f(m)).sum::<u64>();
    tracing::info!(
        received = sum(&|m| CoreMetrics::get(&m.packets_received)),
        forwarded = sum(&|m| CoreMetrics::get(&m.packets_forwarded)),
        sent = sum(&|m| CoreMetrics::get(&m.packets_sent)),
        "engine stopped"
    );
    for reason in DropReason::ALL {
        let count = sum(&|m| m.dropped_count(reason));
        if count > 0 {
            tracing::info!(reason = reason.label(), count, "engine dropped packets");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section() -> EngineSection {
        let config: Config = toml::from_str(config::TEMPLATE).unwrap();
        config.engine
    }

    #[test]
    fn pool_is_sized_from_the_largest_size_and_the_memory_budget() {
        let engine = engine_config(&section()).unwrap();
        assert_eq!(engine.packet_sizes, PacketSizes::MIXNODE_DEFAULT);
        assert_eq!(engine.pool_buffer_bytes, 8_576);
        assert_eq!(engine.pool_buffers_count, 19_562);
        let mut regular = section();
        regular.packet_sizes = vec!["regular".into(), "ack".into()];
        let engine = engine_config(&regular).unwrap();
        assert_eq!(engine.pool_buffers_count, 68_985);
        let mut explicit = section();
        explicit.pool_buffers_count = 19_563; // one more than the budget holds
        assert!(engine_config(&explicit).is_err());
        explicit.pool_buffers_count = 1_000;
        assert_eq!(engine_config(&explicit).unwrap().pool_buffers_count, 1_000);
        let mut bad = section();
        bad.packet_sizes = vec!["outfox".into()];
        assert!(engine_config(&bad).is_err());
    }

    #[test]
    fn egress_byte_budget_stays_regular_unless_one_frame_would_not_fit() {
        let mut all = section();
        all.packet_sizes = vec!["regular".into(), "ext32".into()];
        let engine = engine_config(&all).unwrap();
        assert_eq!(egress_frame_bytes(&engine, 2_000), PACKET_BYTES_DEFAULT);
        // A one-packet queue must still hold one ext32 frame (33133 + 4 bytes).
        assert_eq!(egress_frame_bytes(&engine, 1), 33_137);
        assert_eq!(egress_frame_bytes(&engine, 4), 8_285);
    }
}

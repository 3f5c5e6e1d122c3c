//! `lethe gateway`: `init` writes keys and a commented config; `run` starts the engine cores
//! (mixnet side: final-hop unwrapping through the batched Sphinx path), the mailbox writer
//! (SQLite), the client WebSocket server and egress to mixnodes (tokio), the metrics endpoint,
//! optional directory registration and topology refresh, and stops on SIGTERM/SIGINT.
//!
//! Threads: engine cores (glommio) → bounded final-hop hand-off → `lethe-mailbox` (SQLite
//! writer; classifies, stores, then pushes and ACKs) → per-session bounded queues → session
//! tasks (tokio, 2 workers) → clients. Client `Forward`s → per-next-hop egress tasks → layer 1.

pub mod admission;
pub mod config;
pub mod egress;
pub mod live;
pub mod mailbox;
pub mod metrics;
pub mod registration;
pub mod sessions;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lethe_crypto::framing::FramingVersion;
use lethe_engine::runtime::{final_hop_channel, EgressConfig, Runtime, RuntimeConfig};
use zeroize::Zeroizing;

use crate::directory::client::AuthorityArgs;
use crate::keyfile;
use crate::limits::{
    EGRESS_BACKOFF_MS_INITIAL, EGRESS_BACKOFF_MS_MAX, EGRESS_CONNECT_TIMEOUT_MS, ENGINE_RING_DEPTH,
    GATEWAY_COMMANDS_MAX,
};
use crate::node::rotation::Schedule;
use crate::node::runtime_config::{self, engine_config, Profile, Sizing};
use crate::node::{keys, replay, resolve, CONFIG_FILE};
use config::Config;
use egress::{Egress, EgressSettings};
use live::LiveSessions;
use metrics::GatewayMetrics;
use sessions::{FirstHops, SessionSettings, Shared};

/// tokio worker threads (sessions, egress, directory): the engine cores do the Sphinx work.
pub const TOKIO_WORKERS: usize = 2;

/// Flags of `lethe gateway run`; each overrides `config.toml` and has a `LETHE_*` twin.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct RunOverrides {
    /// Mixnet listen address (config: gateway.listen_address).
    #[arg(long, env = "LETHE_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Client WebSocket listen address (config: gateway.client_address).
    #[arg(long, env = "LETHE_CLIENT_LISTEN")]
    pub client_listen: Option<SocketAddr>,
    /// Metrics/health HTTP address (config: gateway.metrics_address).
    #[arg(long, env = "LETHE_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Engine cores; 0 = all (config: gateway.cores).
    #[arg(long, env = "LETHE_CORES")]
    pub cores: Option<u32>,
    /// Egress framing version, 7 or 8 (config: gateway.egress_framing).
    #[arg(long, env = "LETHE_EGRESS_FRAMING")]
    pub egress_framing: Option<u8>,
    /// Mailbox retention in hours (config: gateway.retention_hours).
    #[arg(long, env = "LETHE_RETENTION_HOURS")]
    pub retention_hours: Option<u64>,
    /// Authenticated client sessions at once (config: gateway.sessions_max).
    #[arg(long, env = "LETHE_SESSIONS_MAX")]
    pub sessions_max: Option<u32>,
    #[command(flatten)]
    pub authority: AuthorityArgs,
    /// The mix address to announce (config: gateway.announce_address; default: the bound
    /// listener, which must then be a specific IP, not 0.0.0.0).
    #[arg(long, env = "LETHE_ANNOUNCE")]
    pub announce: Option<SocketAddr>,
    /// The client URL to announce, `ws://` or `wss://` (config: gateway.announce_client_url;
    /// default: `ws://<announced IP>:<client port>`).
    #[arg(long, env = "LETHE_ANNOUNCE_CLIENT_URL")]
    pub announce_client_url: Option<String>,
    /// Seconds between heartbeats to each authority (their heartbeat timeout must allow two).
    #[arg(long, env = "LETHE_HEARTBEAT_S", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub heartbeat_s: u64,
    /// Forward client packets to any first hop (tests only: no topology check).
    #[arg(long, env = "LETHE_ALLOW_ANY_FIRST_HOP")]
    pub allow_any_first_hop: bool,
    /// Packet buffers per core (config: engine.pool_buffers_count).
    #[arg(long, env = "LETHE_POOL_BUFFERS")]
    pub pool_buffers: Option<u32>,
    /// Delayed packets per core (config: engine.timer_entries_max).
    #[arg(long, env = "LETHE_TIMER_ENTRIES_MAX")]
    pub timer_entries_max: Option<u32>,
    /// Replay sizing: packets per second (config: replay.packets_per_s).
    #[arg(long, env = "LETHE_REPLAY_PACKETS_PER_S")]
    pub replay_packets_per_s: Option<u64>,
    /// Replay sizing: key lifetime in seconds (config: replay.key_lifetime_s).
    #[arg(long, env = "LETHE_REPLAY_KEY_LIFETIME_S")]
    pub replay_key_lifetime_s: Option<u64>,
    /// Replay sizing: packets the filter holds (config: replay.capacity_packets). Wins over
    /// the two flags above.
    #[arg(long, env = "LETHE_REPLAY_CAPACITY_PACKETS")]
    pub replay_capacity_packets: Option<u64>,
    /// Shutdown grace period in ms (config: gateway.shutdown_grace_ms).
    #[arg(long, env = "LETHE_SHUTDOWN_GRACE_MS")]
    pub shutdown_grace_ms: Option<u64>,
    /// Require bandwidth credentials of the issuers with this aggregated verification key
    /// (config: gateway.verification_key). Without it, admission is open.
    #[arg(long, env = "LETHE_VERIFICATION_KEY")]
    pub verification_key: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub trace: crate::trace::TraceArgs,
}

impl RunOverrides {
    pub fn apply(&self, config: &mut Config) {
        let g = &mut config.gateway;
        g.listen_address = self.listen.unwrap_or(g.listen_address);
        g.client_address = self.client_listen.unwrap_or(g.client_address);
        g.metrics_address = self.metrics_listen.unwrap_or(g.metrics_address);
        g.cores = self.cores.unwrap_or(g.cores);
        g.egress_framing = self.egress_framing.unwrap_or(g.egress_framing);
        g.retention_hours = self.retention_hours.unwrap_or(g.retention_hours);
        g.sessions_max = self.sessions_max.unwrap_or(g.sessions_max);
        g.shutdown_grace_ms = self.shutdown_grace_ms.unwrap_or(g.shutdown_grace_ms);
        g.announce_address = self.announce.or(g.announce_address);
        if let Some(url) = &self.announce_client_url {
            g.announce_client_url = Some(url.clone());
        }
        if let Some(path) = &self.verification_key {
            // A flag's relative path is relative to the working directory, not the gateway's.
            g.verification_key = Some(std::path::absolute(path).unwrap_or_else(|_| path.clone()));
        }
        let e = &mut config.engine;
        e.pool_buffers_count = self.pool_buffers.unwrap_or(e.pool_buffers_count);
        e.timer_entries_max = self.timer_entries_max.unwrap_or(e.timer_entries_max);
        config.replay.apply_flags(
            self.replay_packets_per_s,
            self.replay_key_lifetime_s,
            self.replay_capacity_packets,
        );
    }
}

/// `lethe gateway init`: keys (0600, in a 0700 dir) and the commented config; never
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
    let sizing = Sizing::of(&config.replay, &config.engine, config.gateway.cores)?;
    keyfile::create_private_dir(&resolve(dir, &config.replay.data_dir))?;
    keys::write_keys(dir, &config.keys)?;
    keyfile::write_new(&config_path, text.as_bytes(), 0o600)?;
    // What clients pin (`client init --gateway`), and the next command, filled in.
    let identity =
        keyfile::read_public(&resolve(dir, &config.keys.identity).with_extension("pub"))?;
    println!("identity={}", keyfile::hex(&identity));
    println!("config={}", config_path.display());
    sizing.print(profile, config.replay.snapshot_interval_s);
    eprintln!(
        "initialised gateway in {d}. Next, register it with a directory and start it:\n\n  \
         {exe} gateway run --dir {d} --directory http://DIRECTORY:8080 --directory-key KEY \
         --announce PUBLIC_IP:{port}\n\nAdd --verification-key PATH to require bandwidth \
         credentials, and --announce-client-url wss://NAME/ if clients reach it through a \
         proxy or by another name.",
        d = keyfile::shell_quote(&dir.to_string_lossy()),
        exe = crate::testnet::invoked_as(),
        port = config.gateway.listen_address.port(),
    );
    Ok(())
}

fn framing(version: u8) -> Result<FramingVersion, String> {
    match version {
        7 => Ok(FramingVersion::V7),
        8 => Ok(FramingVersion::V8),
        other => Err(format!("egress_framing = {other}: must be 7 or 8")),
    }
}

pub(crate) fn runtime_config(config: &Config) -> Result<RuntimeConfig, String> {
    let g = &config.gateway;
    let cores = match g.cores {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
        n => n,
    };
    let engine = engine_config(&config.engine)?;
    if g.egress_queue_packets_max == 0 {
        return Err("egress_queue_packets_max must be > 0".into());
    }
    let frame_bytes_max = runtime_config::egress_frame_bytes(&engine, g.egress_queue_packets_max);
    Ok(RuntimeConfig {
        listen: g.listen_address,
        cores,
        cpus: g.cpus.clone(),
        engine,
        egress: EgressConfig {
            framing: framing(g.egress_framing)?,
            queue_packets_max: g.egress_queue_packets_max,
            frame_bytes_max,
            backoff_ms_initial: EGRESS_BACKOFF_MS_INITIAL,
            backoff_ms_max: EGRESS_BACKOFF_MS_MAX,
            connect_timeout_ms: EGRESS_CONNECT_TIMEOUT_MS,
            unreachable_drop_ms: lethe_engine::runtime::egress::UNREACHABLE_DROP_MS_DEFAULT,
        },
        ingress: lethe_engine::runtime::IngressLimits::DEFAULT,
        shutdown_grace_ms: g.shutdown_grace_ms,
        io_memory_bytes: g.io_memory_bytes,
        ring_depth: ENGINE_RING_DEPTH,
        deliver_final_hops: true,
        ignore_rotation_byte: true,
        spin_before_park_us: lethe_engine::runtime::SPIN_BEFORE_PARK_US_DEFAULT,
    })
}

/// Locks the state a gateway writes, which its config may put outside its directory (where
/// another node's config could point too): the mailbox, the replay snapshots and, with
/// admission on, the credentials database.
fn lock_state(
    dir: &Path,
    config: &Config,
    locks: &mut crate::lock::NodeLocks,
) -> Result<(), String> {
    let g = &config.gateway;
    locks.state_file(&resolve(dir, &g.database), "gateway.database")?;
    locks.state_dir(&resolve(dir, &config.replay.data_dir), "replay.data_dir")?;
    if g.verification_key.is_some() {
        let credentials = resolve(dir, &g.credentials_database);
        locks.state_file(&credentials, "gateway.credentials_database")?;
    }
    Ok(())
}

/// `lethe gateway run`.
/// `lethe gateway deregister`: the gateway in `dir` leaves the authorities at `urls` at once.
pub fn deregister(dir: &Path, urls: &[String]) -> Result<(), String> {
    let config = Config::load(dir)?;
    crate::directory::announce::deregister_command(&resolve(dir, &config.keys.identity), urls)
}

pub fn run(dir: &Path, overrides: &RunOverrides) -> Result<(), String> {
    // Registered first, so a signal that arrives during start-up is not lost.
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ])
    .map_err(|e| format!("signals: {e}"))?;
    // Before anything is read or written: a second process on this directory stops here.
    // Held (with the state locks) until `run` returns, i.e. for the process's life.
    let mut locks = crate::lock::NodeLocks::claim(dir, "gateway")?;
    let mut config = Config::load(dir)?;
    overrides.apply(&mut config);
    lock_state(dir, &config, &mut locks)?;
    let directory = overrides.authority.pinned()?;
    if directory.is_some() {
        registration::check_announce(
            config.gateway.listen_address,
            config.gateway.announce_address,
            config.gateway.announce_client_url.as_deref(),
        )?;
    }
    let keys = keys::load_keys(dir, &config.keys)?;
    let identity_seed = keyfile::read_private(&resolve(dir, &config.keys.identity))?;
    let identity = keyfile::ed25519_public(&identity_seed);
    let sphinx_key =
        keyfile::read_public(&resolve(dir, &config.keys.sphinx_primary).with_extension("pub"))?;
    let replay = replay::load(dir, &config.replay, &keys)?;
    let runtime_config = runtime_config(&config)?;
    let g = config.gateway.clone();

    let database = resolve(dir, &g.database);
    let conn = mailbox::open(&database).map_err(|e| format!("{}: {e}", database.display()))?;
    let reader = Arc::new(
        mailbox::Reader::open(&database).map_err(|e| format!("{}: {e}", database.display()))?,
    );
    let admission = match &g.verification_key {
        Some(vk) => {
            let vk = resolve(dir, vk);
            let db = resolve(dir, &g.credentials_database);
            let admission = admission::Admission::open(&db, &vk, identity)?;
            tracing::info!(
                verification_key = %vk.display(),
                database = %db.display(),
                "admission: bandwidth credentials required"
            );
            Some(Arc::new(admission))
        }
        None => {
            tracing::warn!(
                "admission is open: no --verification-key, clients forward without credentials"
            );
            None
        }
    };
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(TOKIO_WORKERS)
        .thread_name("lethe-gateway")
        .enable_all()
        .build()
        .map_err(|e| format!("tokio: {e}"))?;
    let metrics = Arc::new(GatewayMetrics::default());
    let egress = Arc::new(Egress::new(
        tokio.handle().clone(),
        EgressSettings {
            framing: framing(g.egress_framing)?,
            // The id depends on the interval alone.
            rotation: Schedule {
                interval_ms: config.keys.rotation_interval_s.saturating_mul(1_000),
                overlap_ms: 0,
            },
            queue_packets_max: g.egress_queue_packets_max,
        },
        metrics.clone(),
    ));
    let live = Arc::new(LiveSessions::default());
    let (commands, command_queue) = crossbeam_channel::bounded(GATEWAY_COMMANDS_MAX);
    let (final_hop_sender, final_hops) =
        final_hop_channel(g.final_hop_queue_packets.max(1) as usize);
    let mut trace_setup = overrides.trace.setup()?;
    let client_trace = trace_setup
        .as_mut()
        .map(crate::trace::TraceSetup::client_side);
    let writer_stop = Arc::new(AtomicBool::new(false));
    let writer = mailbox::spawn_writer(
        conn,
        mailbox::WriterLinks {
            final_hops,
            commands: command_queue,
            live: live.clone(),
            egress: egress.clone(),
            metrics: metrics.clone(),
            stop: writer_stop.clone(),
            trace: client_trace.clone(),
        },
        mailbox::WriterSettings {
            retention: Duration::from_secs(g.retention_hours.saturating_mul(3600)),
            clients_max: g.clients_max,
            client_idle: Duration::from_secs(u64::from(g.client_idle_days).saturating_mul(86_400)),
        },
    )?;
    let memory = runtime_config::log_memory(&replay, &runtime_config);
    let cores = runtime_config.cores;
    let trace_config = format!("{runtime_config:?}");
    let runtime = Runtime::start_traced(
        runtime_config,
        keys,
        replay.clone(),
        Some(final_hop_sender),
        trace_setup.as_ref().map(|t| t.hook.clone()),
    )
    .map_err(|e| e.to_string())?;
    let (runtime, trace) = crate::trace::start(
        trace_setup,
        runtime,
        lethe_sim::trace::Role::Gateway,
        &trace_config,
    )?;
    let engine_metrics = runtime.metrics().to_vec();
    let extra = metrics.clone();
    let status = crate::http::NodeStatus::new("gateway", directory.is_some());
    // The gateway does not rotate its Sphinx key: it is accepted until replaced by hand.
    status.set_sphinx_keys(vec![crate::http::KeyExpiry {
        rotation_id: config.keys.primary_rotation_id,
        expires_at_s: None,
    }]);
    status.set_memory(memory);
    let metrics_addr = crate::http::serve_with(
        g.metrics_address,
        engine_metrics.clone(),
        status.clone(),
        Some(Arc::new(move |out: &mut String| extra.render(out))),
    )?;

    let first_hops = Arc::new(FirstHops::new(overrides.allow_any_first_hop));
    let client_listener = tokio
        .block_on(tokio::net::TcpListener::bind(g.client_address))
        .map_err(|e| format!("client listener {}: {e}", g.client_address))?;
    let client_addr = client_listener
        .local_addr()
        .map_err(|e| format!("client listener: {e}"))?;
    let shared = Arc::new(Shared {
        identity_seed: Zeroizing::new(*identity_seed),
        live,
        reader,
        commands,
        egress,
        first_hops: first_hops.clone(),
        metrics: metrics.clone(),
        settings: SessionSettings {
            sessions_max: g.sessions_max,
            handshake_timeout: Duration::from_millis(g.handshake_timeout_ms.max(1)),
            idle_timeout: Duration::from_secs(g.session_idle_timeout_s),
        },
        connections: AtomicU32::new(0),
        pending: sessions::PendingConnections::new(
            g.pending_connections_max,
            g.pending_connections_per_ip_max,
            metrics.clone(),
        ),
        admission,
        trace: client_trace,
    });
    tokio.spawn(sessions::serve(client_listener, shared));

    let mix_address = g
        .announce_address
        .unwrap_or_else(|| registration::dialable(runtime.local_addr()));
    // Registered and heartbeating for as long as this handle lives.
    let announcer = if let Some(authorities) = directory {
        let urls = authorities.urls().to_vec();
        registration::refresh_topology(tokio.handle(), authorities, first_hops, metrics.clone());
        let descriptor = registration::descriptor(&registration::DescriptorParts {
            identity,
            sphinx_key,
            rotation_id: config.keys.primary_rotation_id,
            mix_address,
            client_address: client_addr,
            metrics_address: metrics_addr,
            client_url: g.announce_client_url.clone(),
        });
        Some(
            crate::directory::spawn_announcer(
                &urls,
                &identity_seed,
                descriptor,
                Duration::from_secs(overrides.heartbeat_s),
                status.registration.clone(),
            )
            .map_err(|e| format!("announcer: {e}"))?,
        )
    } else {
        if !overrides.allow_any_first_hop {
            tracing::warn!("no --directory: client forwards are refused (NOT_LAYER1: no topology)");
        }
        None
    };

    let data_dir = resolve(dir, &config.replay.data_dir);
    let snapshot_stop = Arc::new(AtomicBool::new(false));
    let snapshots = replay::spawn_snapshots(
        data_dir.clone(),
        Arc::new(std::sync::Mutex::new(replay.clone())),
        config.replay.snapshot_interval_s,
        snapshot_stop.clone(),
    );
    // One write, errors ignored: whoever reads these may close the pipe once it has them.
    let announced = format!(
        "listen={}\nclient_url=ws://{}\nmetrics={metrics_addr}\nidentity={}\nsphinx_key={}\n",
        runtime.local_addr(),
        registration::dialable(client_addr),
        keyfile::hex(&identity),
        keyfile::hex(&sphinx_key),
    );
    {
        use std::io::Write as _;
        let mut stdout = std::io::stdout().lock();
        let _ = stdout.write_all(announced.as_bytes());
        let _ = stdout.flush();
    }
    tracing::info!(
        mixnet = %runtime.local_addr(),
        clients = %client_addr,
        cores,
        "gateway up"
    );

    let mut engine = crate::supervise::EngineWatch::default();
    // Waits for SIGTERM/SIGINT, checking the engine's liveness every 100 ms.
    let signal = loop {
        if let Some(signal) = signals.pending().next() {
            break signal;
        }
        if let Err(failure) = engine.check(&runtime, announcer.as_ref()) {
            // Mail already handed to the writer is committed by it; not joined: a wedged
            // core would hold the exit up. The supervisor restarts us.
            tracing::error!("{failure}: exiting");
            drop(announcer);
            runtime.shutdown();
            writer_stop.store(true, Ordering::SeqCst);
            let _ = writer.join();
            if let Err(e) = replay::save(&data_dir, &replay) {
                tracing::error!(error = %e, "replay snapshot at exit failed");
            }
            std::process::exit(crate::supervise::EXIT_ENGINE_FAILED);
        }
        std::thread::sleep(Duration::from_millis(crate::limits::STOP_POLL_MS));
    };
    tracing::info!(
        signal = crate::logging::signal_name(signal),
        "stopping gateway"
    );
    // Leave the directory first: it drops us from the next topology at once.
    if let Some(announcer) = announcer {
        announcer.leave();
    }
    runtime.shutdown();
    let joined = runtime.join();
    // The cores are gone: the writer drains what they handed over, commits, and ends.
    writer_stop.store(true, Ordering::SeqCst);
    let _ = writer.join();
    // After the mailbox: its last deliveries are in the trace too.
    crate::trace::finish(trace);
    snapshot_stop.store(true, Ordering::SeqCst);
    let _ = snapshots.join();
    replay::save(&data_dir, &replay)?;
    tokio.shutdown_timeout(Duration::from_millis(crate::limits::TOKIO_SHUTDOWN_MS));
    runtime_config::report(&engine_metrics);
    tracing::info!(
        stored = GatewayMetrics::get(&metrics.final_hop_stored),
        acks = GatewayMetrics::get(&metrics.acks_forwarded),
        forwarded = GatewayMetrics::get(&metrics.forwarded_from_clients),
        "gateway stopped"
    );
    joined
}

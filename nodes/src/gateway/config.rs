//! `config.toml` of a gateway. The `[engine]`, `[replay]` and `[keys]` sections are the
//! mixnode's (same meaning, same code); `[gateway]` is the gateway's own.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::limits::{
    CLIENTS_MAX_DEFAULT, CLIENT_IDLE_DAYS_DEFAULT, PENDING_CONNECTIONS_MAX_DEFAULT,
    PENDING_CONNECTIONS_PER_IP_MAX_DEFAULT,
};
use crate::node::keys::KeysSection;
use crate::node::replay::ReplaySection;
use crate::node::runtime_config::{EngineSection, Profile};
use crate::node::CONFIG_FILE;
use lethe_proto::limits::{SESSION_IDLE_TIMEOUT_S_DEFAULT, SESSION_IDLE_TIMEOUT_S_MIN};

pub const CONFIG_VERSION: u32 = 1;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub version: u32,
    /// What `init` sized the gateway for; informational (the values in the file count).
    #[serde(default)]
    pub profile: Profile,
    pub gateway: GatewaySection,
    pub engine: EngineSection,
    pub replay: ReplaySection,
    pub keys: KeysSection,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewaySection {
    pub listen_address: SocketAddr,
    pub client_address: SocketAddr,
    pub metrics_address: SocketAddr,
    pub cores: u32,
    pub cpus: Vec<usize>,
    pub egress_framing: u8,
    pub egress_queue_packets_max: u32,
    pub shutdown_grace_ms: u64,
    pub io_memory_bytes: usize,
    pub final_hop_queue_packets: u32,
    /// Established (authenticated) client sessions at once.
    pub sessions_max: u32,
    /// The whole unauthenticated phase of a connection: WebSocket upgrade, hello and auth.
    pub handshake_timeout_ms: u64,
    /// An authenticated session silent both ways (no client message, nothing delivered)
    /// for this long is closed; at least `SESSION_IDLE_TIMEOUT_S_MIN`.
    #[serde(default = "default_session_idle_timeout_s")]
    pub session_idle_timeout_s: u64,
    /// Unauthenticated connections at once (all sources).
    #[serde(default = "default_pending_connections_max")]
    pub pending_connections_max: u32,
    /// Unauthenticated connections at once from one source address (IPv6: one /64).
    #[serde(default = "default_pending_connections_per_ip_max")]
    pub pending_connections_per_ip_max: u32,
    /// Durable client records (the mailbox's `clients` table) at most.
    #[serde(default = "default_clients_max")]
    pub clients_max: u32,
    /// A durable client record with no session for this long and no mail is deleted.
    #[serde(default = "default_client_idle_days")]
    pub client_idle_days: u32,
    pub retention_hours: u64,
    pub database: PathBuf,
    /// The issuers' aggregated verification key: set, clients need bandwidth credentials.
    #[serde(default)]
    pub verification_key: Option<PathBuf>,
    /// Spent credential tags and client balances (SQLite).
    #[serde(default = "default_credentials_database")]
    pub credentials_database: PathBuf,
    /// The mix address registered with the directory (`--announce`); unset: the listener's,
    /// which must then be a specific IP.
    #[serde(default)]
    pub announce_address: Option<SocketAddr>,
    /// The client URL registered with the directory (`--announce-client-url`, `ws://` or
    /// `wss://`); unset: `ws://<announced mix IP>:<client port>`.
    #[serde(default)]
    pub announce_client_url: Option<String>,
}

fn default_credentials_database() -> PathBuf {
    PathBuf::from("credentials.sqlite")
}

fn default_session_idle_timeout_s() -> u64 {
    SESSION_IDLE_TIMEOUT_S_DEFAULT
}

fn default_pending_connections_max() -> u32 {
    PENDING_CONNECTIONS_MAX_DEFAULT
}

fn default_pending_connections_per_ip_max() -> u32 {
    PENDING_CONNECTIONS_PER_IP_MAX_DEFAULT
}

fn default_clients_max() -> u32 {
    CLIENTS_MAX_DEFAULT
}

fn default_client_idle_days() -> u32 {
    CLIENT_IDLE_DAYS_DEFAULT
}

/// The file `init` writes: every key with its meaning and default.
pub const TEMPLATE: &str = r#"# Lethe gateway configuration. Flags and LETHE_* environment variables override these values
# at `lethe gateway run` (they are not written back). Relative paths are relative to the
# gateway directory.
version = 1
# What `init --profile` sized this gateway for: "default" (production: 1.8 GB replay filter,
# 160 MB of packet buffers) or "small" (first runs and testnets: tens of MB). Informational:
# the values below count.
profile = "default"

[gateway]
# Where the mixnet listener binds (TCP, Nym framing): final-hop packets arrive here. 1790, not
# a mixnode's 1789 (nor its metrics port 9100 below), so a gateway and a mixnode can share a
# host with both configs as `init` writes them.
listen_address = "0.0.0.0:1790"
# Where clients connect (WebSocket, ws://; Nym's default client port is 9000).
client_address = "0.0.0.0:9000"
# Plain-HTTP endpoint serving /metrics (Prometheus text) and /health. Keep it private.
metrics_address = "127.0.0.1:9101"
# What the directory publishes. With a listener on 0.0.0.0 the gateway cannot know its public
# address: set announce_address (or --announce) or registering is refused. The client URL
# defaults to ws://<announced IP>:<client port>; set it when clients come through a proxy,
# TLS terminator or another name (or --announce-client-url).
# announce_address = "203.0.113.7:1790"
# announce_client_url = "wss://gateway.example.org/"
# Engine cores for the mixnet side (Sphinx unwrapping). 0 = every available CPU.
cores = 1
# Pin core i to cpus[i]. Empty = unpinned.
cpus = []
# Framing of frames the gateway sends to mixnodes (client packets, SURB-ACKs): 7 or 8.
egress_framing = 7
# Packets queued per next hop before new ones are dropped (counted).
egress_queue_packets_max = 2000
# On SIGTERM/SIGINT: keep processing what is queued for this long.
shutdown_grace_ms = 2000
# io_uring registered I/O memory per core (locked memory; see RLIMIT_MEMLOCK).
io_memory_bytes = 131072
# Final-hop packets waiting between the engine cores and the mailbox writer (overflow counted).
final_hop_queue_packets = 8192
# Authenticated client sessions open at once; a client that completes its handshake beyond
# this is refused (OVERLOADED). Connections still handshaking do not count here.
sessions_max = 8192
# A connection must finish its WebSocket upgrade and the 3-message handshake within this
# time (one deadline for all of it), or it is closed.
handshake_timeout_ms = 5000
# An authenticated session that neither hears from its client nor delivers anything to it
# for this many seconds is closed (it holds a sessions_max slot). Clients keep theirs busy:
# cover traffic, or a keep-alive every 60 s when cover is off, so keep this above 120.
session_idle_timeout_s = 300
# Connections not yet authenticated (upgrade or handshake unfinished), at once. At the cap the
# oldest is closed to make room: honest handshakes take a few round trips, a flood's linger.
pending_connections_max = 1024
# Connections not yet authenticated from one source address (IPv6: one /64); more are
# closed at once.
pending_connections_per_ip_max = 8
# A client becomes durable (a row in the mailbox's clients table, kept across restarts) once
# it uses the gateway (an accepted Forward or credential) or mail is stored for it; a bare
# handshake is remembered in memory only. Records at most; beyond, new clients stay
# in-memory only (counted).
clients_max = 500000
# A record with no session for this many days and no mail waiting is deleted.
client_idle_days = 30
# Messages not confirmed by their client are deleted after this many hours (Nym: 24).
retention_hours = 24
# The mailbox: SQLite (WAL). Holds deliveries until the client confirms them.
database = "gateway.sqlite"
# Admission: the credential issuers' aggregated verification key (`lethe keygen` writes
# verification.key). Set, a client must spend a bandwidth credential before it may forward,
# and each forward is charged its packet length. Unset, admission is open.
# verification_key = "verification.key"
# Spent credential tags and client bandwidth balances (SQLite, beside the mailbox).
credentials_database = "credentials.sqlite"

[engine]
# Sphinx packets processed per batch, and the longest a partial batch waits.
batch_packets_max = 64
batch_flush_us = 200
# Whole SIMD lane groups per early batch (0 = this CPU's X25519 lanes; 1 = off), and how long a
# partial group may wait for the rest when the core could not keep up with small batches (0 = off).
# See the mixnode's config.toml.
batch_align_packets = 0
batch_hold_us = 150
# Forward delays above this are clamped to it (a gateway forwards only if it is a middle hop).
delay_ms_max = 10000
timer_tick_us = 1000
timer_entries_max = 65536
# Packet buffers per core (2432 bytes each for regular and ack packets; reserved at start,
# in memory as first used).
pool_buffers_count = 65536

[replay]
# The replay filter: the tag of every packet unwrapped under the gateway's Sphinx key, in
# memory and snapshotted to data_dir (replay-rot-<id>.bin, the filter's size). One filter:
# the gateway announces and uses one Sphinx key (the secondary `init` writes is unused).
# What a gateway unwraps is its clients' traffic arriving from the last mix layer: ~55
# packets/s per connected client at the clients' default rates (Poisson stream 20 ms, loop
# cover 200 ms), so ~2000/s is a few dozen busy clients, the same order as a mixnode.
# Sizing rule: capacity_packets = packets/s x the key's life, at false-positive rate fp_rate;
# ~10.2 bytes a packet at 1e-5 (180000000 -> 1.83 GB, 4200000 -> 43 MB). The gateway's key
# does not rotate yet, so its life is until you replace it: past capacity_packets fresh
# packets are dropped as replays more often than fp_rate (logged as a warning at start and
# at each snapshot with the filter's fill): replace the key or raise capacity_packets.
capacity_packets = 180000000
fp_rate = 1e-5
# Snapshot the filter this often and at shutdown, only if packets were accepted since the
# last one; loaded at start.
snapshot_interval_s = 600
data_dir = "data"

[keys]
# ed25519 identity (clients pin it; it signs the handshake); x25519 Sphinx keys.
identity = "keys/ed25519_identity"
sphinx_primary = "keys/x25519_sphinx_primary"
sphinx_secondary = "keys/x25519_sphinx_secondary"
primary_rotation_id = 1
secondary_rotation_id = 0
"#;

/// The small profile: (line of `TEMPLATE`, its replacement). Each line occurs once.
const SMALL_PROFILE_LINES: [(&str, &str); 5] = [
    ("profile = \"default\"", "profile = \"small\""),
    ("secondary_rotation_id = 0", SMALL_ROTATION),
    ("pool_buffers_count = 65536", "pool_buffers_count = 4096"),
    ("timer_entries_max = 65536", "timer_entries_max = 16384"),
    ("capacity_packets = 180000000", "capacity_packets = 4200000"),
];

/// The small profile's mixnodes rotate hourly: the v8 rotation byte of frames the gateway
/// sends them is the parity of their rotation id, counted with their interval.
const SMALL_ROTATION: &str =
    "secondary_rotation_id = 0\n# The mixnodes' Sphinx key rotation interval \
     (small profile: 1 h): it numbers the\n# rotation byte of v8 frames sent to them.\n\
     rotation_interval_s = 3600\nrotation_overlap_s = 600";

/// The config `init --profile` writes.
pub fn template(profile: Profile) -> String {
    match profile {
        Profile::Default => TEMPLATE.to_string(),
        Profile::Small => SMALL_PROFILE_LINES
            .iter()
            .fold(TEMPLATE.to_string(), |text, (from, to)| {
                text.replacen(&format!("\n{from}\n"), &format!("\n{to}\n"), 1)
            }),
    }
}

impl Config {
    pub fn load(dir: &Path) -> Result<Config, String> {
        let path = dir.join(CONFIG_FILE);
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let config: Config =
            toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        if config.version != CONFIG_VERSION {
            return Err(format!(
                "{}: config version {} is not {CONFIG_VERSION}",
                path.display(),
                config.version
            ));
        }
        config
            .replay
            .params()
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if config.gateway.session_idle_timeout_s < SESSION_IDLE_TIMEOUT_S_MIN {
            return Err(format!(
                "{}: gateway.session_idle_timeout_s must be at least {SESSION_IDLE_TIMEOUT_S_MIN}",
                path.display()
            ));
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_parses() {
        let config: Config = toml::from_str(TEMPLATE).unwrap();
        assert_eq!(config.version, CONFIG_VERSION);
        assert_eq!(config.gateway.retention_hours, 24);
        assert_eq!(config.gateway.sessions_max, 8192);
        let g = &config.gateway;
        assert_eq!(
            (
                g.pending_connections_max,
                g.pending_connections_per_ip_max,
                g.clients_max,
                g.client_idle_days,
                g.session_idle_timeout_s
            ),
            (
                PENDING_CONNECTIONS_MAX_DEFAULT,
                PENDING_CONNECTIONS_PER_IP_MAX_DEFAULT,
                CLIENTS_MAX_DEFAULT,
                CLIENT_IDLE_DAYS_DEFAULT,
                SESSION_IDLE_TIMEOUT_S_DEFAULT
            ),
            "the template spells out the defaults"
        );
        assert!(config.gateway.verification_key.is_none());
        // Not a mixnode's defaults (1789, 9100): both fit on one host as initialised.
        assert_eq!(config.gateway.listen_address.port(), 1790);
        assert_eq!(config.gateway.metrics_address.port(), 9101);
        assert!(config.gateway.announce_address.is_none());
        assert!(config.gateway.announce_client_url.is_none());
        assert_eq!(
            config.gateway.credentials_database,
            PathBuf::from("credentials.sqlite")
        );
    }

    #[test]
    fn profiles_size_the_replay_filter_and_the_pool() {
        let default: Config = toml::from_str(&template(Profile::Default)).unwrap();
        assert_eq!(default.profile, Profile::Default);
        assert_eq!(default.replay.capacity_packets(), 180_000_000);
        let text = template(Profile::Small);
        for (from, to) in SMALL_PROFILE_LINES {
            assert_eq!(
                TEMPLATE.matches(&format!("\n{from}\n")).count(),
                1,
                "{from}"
            );
            assert!(text.contains(to), "{to}");
        }
        let small: Config = toml::from_str(&text).unwrap();
        assert_eq!(small.profile, Profile::Small);
        let sizing = crate::node::runtime_config::Sizing::of(
            &small.replay,
            &small.engine,
            small.gateway.cores,
        )
        .unwrap();
        assert!(sizing.replay_filter_bytes < 48 << 20, "{sizing:?}");
        assert!(sizing.pool_bytes_per_core < 12 << 20, "{sizing:?}");
        assert!(sizing.memory_bytes_max() < 128 << 20, "{sizing:?}");
    }

    #[test]
    fn the_gateway_keeps_one_filter_and_drops_stale_snapshots() {
        let dir = std::env::temp_dir().join(format!("lethe-gwfilter-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        crate::gateway::init(&dir, Profile::Small).unwrap();
        let config = Config::load(&dir).unwrap();
        // What an older gateway could leave: the unused secondary's filter (rotation 0), and a
        // leftover of some other rotation.
        for stale in [0, 7] {
            let path = lethe_engine::snapshot_path(&dir.join("data"), stale);
            std::fs::write(&path, b"stale").unwrap();
        }
        let keys = crate::node::keys::load_keys(&dir, &config.keys).unwrap();
        assert!(
            keys.secondary.is_none(),
            "the secondary is announced nowhere"
        );
        let set = crate::node::replay::load(&dir, &config.replay, &keys).unwrap();
        assert_eq!(set.rotation_ids().collect::<Vec<_>>(), [1]);
        let params = set.get(1).unwrap().params();
        assert_eq!(params.items_expected, 4_200_000);
        let left: Vec<_> = std::fs::read_dir(dir.join("data"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("replay-rot-"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn replay_sizing_is_validated_at_load() {
        let dir = std::env::temp_dir().join(format!("lethe-gwcfg-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(CONFIG_FILE);
        std::fs::write(&path, TEMPLATE).unwrap();
        assert!(Config::load(&dir).is_ok());
        let bad = TEMPLATE.replace("capacity_packets = 180000000", "capacity_packets = 0");
        std::fs::write(&path, bad).unwrap();
        let err = Config::load(&dir).unwrap_err();
        assert!(
            err.contains("replay: capacity_packets = 0: must be in"),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn configs_without_the_connection_limits_still_load() {
        let old: String = TEMPLATE
            .lines()
            .filter(|l| {
                !["pending_connections", "clients_max", "client_idle_days"]
                    .iter()
                    .any(|k| l.starts_with(k))
            })
            .map(|l| format!("{l}\n"))
            .collect();
        assert_ne!(old, TEMPLATE);
        let config: Config = toml::from_str(&old).unwrap();
        assert_eq!(
            config.gateway.pending_connections_max,
            PENDING_CONNECTIONS_MAX_DEFAULT
        );
        assert_eq!(config.gateway.client_idle_days, CLIENT_IDLE_DAYS_DEFAULT);
    }
}

//! `config.toml` of a gateway. The `[engine]`, `[replay]` and `[keys]` sections are the
//! mixnode's (same meaning, same code); `[gateway]` is the gateway's own.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::mixnode::config::{EngineSection, KeysSection, ReplaySection};

pub use crate::mixnode::config::{resolve, CONFIG_FILE};
pub const CONFIG_VERSION: u32 = 1;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub version: u32,
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
    pub sessions_max: u32,
    pub handshake_timeout_ms: u64,
    pub retention_hours: u64,
    pub database: PathBuf,
    /// The issuers' aggregated verification key: set, clients need bandwidth credentials.
    #[serde(default)]
    pub verification_key: Option<PathBuf>,
    /// Spent credential tags and client balances (SQLite).
    #[serde(default = "default_credentials_database")]
    pub credentials_database: PathBuf,
}

fn default_credentials_database() -> PathBuf {
    PathBuf::from("credentials.sqlite")
}

/// The file `init` writes: every key with its meaning and default.
pub const TEMPLATE: &str = r#"# Lethe gateway configuration. Flags and LETHE_* environment variables override these values
# at `lethe gateway run` (they are not written back). Relative paths are relative to the
# gateway directory.
version = 1

[gateway]
# Where the mixnet listener binds (TCP, Nym framing): final-hop packets arrive here.
listen_address = "0.0.0.0:1789"
# Where clients connect (WebSocket, ws://; Nym's default client port is 9000).
client_address = "0.0.0.0:9000"
# Plain-HTTP endpoint serving /metrics (Prometheus text) and /health. Keep it private.
metrics_address = "127.0.0.1:9100"
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
# Client sessions open at once (handshaking or established); more are refused.
sessions_max = 8192
# A client must finish the 3-message handshake within this time.
handshake_timeout_ms = 10000
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
# Packet buffers per core (2560 bytes each).
pool_buffers_count = 65536

[replay]
# Replay filter sizing: items = packets_per_s x key_lifetime_s, at false-positive rate fp_rate.
packets_per_s = 2000
key_lifetime_s = 90000
fp_rate = 1e-5
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
        assert!(config.gateway.verification_key.is_none());
        assert_eq!(
            config.gateway.credentials_database,
            PathBuf::from("credentials.sqlite")
        );
    }
}

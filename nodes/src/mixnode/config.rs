//! `config.toml` of a mixnode: written from a commented template by `init`, read by `run`,
//! then overridden by flags and their `LETHE_*` environment twins.

use std::net::SocketAddr;
use std::path::Path;

use serde::Deserialize;

use crate::node::keys::KeysSection;
use crate::node::replay::{self, ReplaySection};
use crate::node::runtime_config::{EngineSection, Profile};
use crate::node::CONFIG_FILE;

pub const CONFIG_VERSION: u32 = 1;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub version: u32,
    /// What `init` sized the node for; informational (the values in the file count).
    #[serde(default)]
    pub profile: Profile,
    pub mixnode: MixnodeSection,
    pub engine: EngineSection,
    pub replay: ReplaySection,
    pub keys: KeysSection,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MixnodeSection {
    pub listen_address: SocketAddr,
    pub metrics_address: SocketAddr,
    pub cores: u32,
    pub cpus: Vec<usize>,
    pub egress_framing: u8,
    pub egress_queue_packets_max: u32,
    pub shutdown_grace_ms: u64,
    pub io_memory_bytes: usize,
    /// Configs written before it existed get the default.
    #[serde(default = "spin_before_park_us_default")]
    pub spin_before_park_us: u64,
    /// Configs written before they existed get the defaults.
    #[serde(default = "ingress_per_ip_max_default")]
    pub ingress_connections_per_ip_max: u32,
    #[serde(default = "ingress_idle_timeout_s_default")]
    pub ingress_idle_timeout_s: u64,
}

fn spin_before_park_us_default() -> u64 {
    lethe_engine::runtime::SPIN_BEFORE_PARK_US_DEFAULT
}

fn ingress_per_ip_max_default() -> u32 {
    lethe_engine::runtime::INGRESS_PER_IP_MAX
}

fn ingress_idle_timeout_s_default() -> u64 {
    lethe_engine::runtime::INGRESS_IDLE_TIMEOUT_MS / 1_000
}

/// The file `init` writes: every key with its meaning and default.
pub const TEMPLATE: &str = r#"# Lethe mixnode configuration. Flags and LETHE_* environment variables override these
# values at `lethe mixnode run` (they are not written back). Relative paths are relative to
# the node directory.
version = 1
# What `init --profile` sized this node for: "default" (production: ~2000 packets/s under
# 24 h keys, 1.8 GB per replay filter) or "small" (first runs and testnets: ~1000 packets/s
# under 1 h keys, 43 MB per filter, one core). Informational: the values below count.
profile = "default"

[mixnode]
# Where the mixnet listener binds (TCP, Nym framing; Nym's default port is 1789).
listen_address = "0.0.0.0:1789"
# Plain-HTTP endpoint serving /metrics (Prometheus text) and /health. Keep it private.
metrics_address = "127.0.0.1:9100"
# Engine cores: one io_uring executor each. 0 = every available CPU.
cores = 0
# Pin core i to cpus[i] (e.g. [1, 2]: leave CPU 0 to interrupts). Empty = unpinned.
cpus = []
# Framing version of frames sent to next hops: 7 (legacy, what Nym nodes emit today) or 8
# (adds the key-rotation byte). Both are accepted on ingress.
egress_framing = 7
# Packets queued per next hop before new ones are dropped (Nym: 2000).
egress_queue_packets_max = 2000
# On SIGTERM/SIGINT: keep sending what falls due for this long, then drop the rest (counted).
shutdown_grace_ms = 10000
# io_uring registered I/O memory per core (locked memory; see RLIMIT_MEMLOCK).
io_memory_bytes = 131072
# After its last piece of work a core polls this long (µs) before it sleeps: a packet arriving
# meanwhile is taken without a wake-up (tens of µs on a VM, and the source of most light-load
# latency tails). Higher: lower latency under a trickle of traffic, a core that rarely sleeps.
# 0 = sleep at once; at most 10000.
spin_before_park_us = 30
# Ingress connections one address (IPv6: one /64) may hold per core; each core serves at most
# 4096, and when full gives the slot of a connection idle for 10 s to a newcomer.
ingress_connections_per_ip_max = 256
# An ingress connection that delivers no whole frame for this long is closed (upstream nodes
# reconnect when they next have a packet).
ingress_idle_timeout_s = 300

[engine]
# Sphinx packets processed per batch, and the longest a partial batch waits.
batch_packets_max = 64
batch_flush_us = 200
# When a core has read all there is, it processes whole groups of this many packets and keeps
# the rest (fewer than a group) for the next batch: past a whole group of SIMD lanes a packet
# costs about as much as the next full group. Fewer than one group go at once unless held (below).
# 0 = the X25519 lane count of this CPU's SIMD path (8 with AVX-512 IFMA); 1 = off.
batch_align_packets = 0
# With less than a group read, a core holds it for the rest of the group if those packets came
# faster than a small batch takes to process (the core would fall behind) and, at that rate, the
# rest comes within this many µs of the first (never longer; at most batch_flush_us). Near
# saturation it runs full groups instead of small batches that cost nearly as much each; below
# that, and at light load, nothing waits. 0 = off.
batch_hold_us = 150
# Forward delays above this are clamped to it (Nym: 10 s).
delay_ms_max = 10000
# Timer resolution, and packets that may wait for their delay at once, per core.
timer_tick_us = 1000
timer_entries_max = 65536
# Sphinx packet sizes accepted (Nym's): regular (2413 B), ack (386 B), ext8 (8557 B),
# ext16 (16749 B), ext32 (33133 B). Frames of other sizes are dropped and counted
# (reason packet_size_disabled); the connection stays up. Buffers are sized for the largest.
packet_sizes = ["regular", "ack", "ext8"]
# Memory of one core's packet buffers. It bounds the packets queued, delayed or in flight:
# 160 MiB holds 19562 buffers with ext8 enabled, 68985 with regular + ack only.
pool_memory_bytes = 167772160
# Packet buffers per core; 0 = as many as pool_memory_bytes holds (an explicit count must fit).
pool_buffers_count = 0

[replay]
# The replay filter: one per live Sphinx key (two during a rotation's overlap), holding the
# tag of every packet accepted under that key; in memory, and snapshotted to data_dir.
# Sizing rule: capacity_packets = packets/s x key lifetime (rotation_interval_s +
# rotation_overlap_s below), at false-positive rate fp_rate (the odds that a fresh packet is
# dropped as a replay once the filter is full). At 1e-5 a packet takes 81 bits, so a filter
# is ~10.2 bytes x capacity_packets: Nym's 2000/s x 90000 s = 180000000 -> 1.83 GB (3.7 GB
# during an overlap); the small profile's 1000/s x 4200 s = 4200000 -> 43 MB. A key that
# sees more packets than this drops fresh ones more often than fp_rate; fewer wastes memory.
capacity_packets = 180000000
fp_rate = 1e-5
# Snapshot the filters to data_dir this often and at shutdown, each only if packets were
# accepted since its last snapshot (one file per live key, replay-rot-<id>.bin, the filter's
# size); loaded at start. A restart forgets the packets accepted since the last snapshot.
snapshot_interval_s = 600
data_dir = "data"

[keys]
# ed25519 identity; x25519 Sphinx keys. Files hold 32 bytes as hex, mode 0600; public keys
# are in the `.pub` files beside them. The primary is the first start's Sphinx key (the
# secondary is unused by a mixnode).
identity = "keys/ed25519_identity"
sphinx_primary = "keys/x25519_sphinx_primary"
sphinx_secondary = "keys/x25519_sphinx_secondary"
# Scheduled rotation. Rotation ids are network-wide: id = unix time (s) / rotation_interval_s,
# from the system clock (keep it synchronised, e.g. NTP), so nodes with the same interval agree
# on the id and on the v8 frame's rotation byte (the id's parity). At each multiple of the
# interval a new Sphinx key (keys/x25519_sphinx_rot-<id>) becomes primary and is announced;
# the old one stays accepted for rotation_overlap_s after that boundary, then it and its
# replay filter are deleted. A node down across a boundary rotates when it starts; changing
# the interval renumbers (new key at the next start). State: keys/sphinx_rotation.toml.
# Nym: 24 h, 1 h (keys valid for 24 one-hour epochs plus one epoch of overlap). 0 = never
# rotate (the key keeps rotation id 1).
# Size replay.capacity_packets for a key's whole life: packets/s x (interval + overlap).
rotation_interval_s = 86400
rotation_overlap_s = 3600
"#;

impl Config {
    pub fn load(dir: &Path) -> Result<Config, String> {
        let path = dir.join(CONFIG_FILE);
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let config: Config =
            toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        for key in ignored_keys(&text) {
            tracing::warn!(
                config = %path.display(),
                "keys.{key} is ignored: rotation ids come from the clock"
            );
        }
        if config.version != CONFIG_VERSION {
            return Err(format!(
                "{}: config version {} is not {CONFIG_VERSION}",
                path.display(),
                config.version
            ));
        }
        replay::check_keys(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        config
            .replay
            .params()
            .map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(config)
    }
}

/// The small profile: (line of `TEMPLATE`, its replacement). Each line occurs once.
const SMALL_PROFILE_LINES: [(&str, &str); 6] = [
    ("profile = \"default\"", "profile = \"small\""),
    ("cores = 0", "cores = 1"),
    (
        "pool_memory_bytes = 167772160",
        "pool_memory_bytes = 16777216",
    ),
    ("timer_entries_max = 65536", "timer_entries_max = 16384"),
    ("capacity_packets = 180000000", "capacity_packets = 4200000"),
    (
        "rotation_interval_s = 86400\nrotation_overlap_s = 3600",
        SMALL_ROTATION,
    ),
];

/// 1 h keys with 10 min of overlap: a network's nodes must share the interval (ids and the v8
/// rotation byte come from it), so this suits a network of small nodes (a testnet).
const SMALL_ROTATION: &str = "rotation_interval_s = 3600\nrotation_overlap_s = 600";

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

/// Keys of configs written before rotation ids were network-wide: accepted, ignored.
fn ignored_keys(text: &str) -> Vec<&'static str> {
    let Ok(table) = toml::from_str::<toml::Table>(text) else {
        return Vec::new();
    };
    let keys = table.get("keys").and_then(toml::Value::as_table);
    ["primary_rotation_id", "secondary_rotation_id"]
        .into_iter()
        .filter(|k| keys.is_some_and(|t| t.contains_key(*k)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_parses() {
        let config: Config = toml::from_str(TEMPLATE).unwrap();
        assert_eq!(config.version, CONFIG_VERSION);
        assert_eq!(config.mixnode.egress_framing, 7);
        assert!(!TEMPLATE.contains("rotation_id"));
        assert!(ignored_keys(TEMPLATE).is_empty());
        assert_eq!(config.engine.packet_sizes, ["regular", "ack", "ext8"]);
        assert_eq!(
            config.engine.pool_memory_bytes,
            lethe_engine::limits::POOL_MEMORY_BYTES_DEFAULT
        );
    }

    #[test]
    fn default_profile_sizes_a_production_node() {
        let config: Config = toml::from_str(&template(Profile::Default)).unwrap();
        assert_eq!(config.profile, Profile::Default);
        assert_eq!(config.replay.capacity_packets(), 180_000_000);
        let bytes = config.replay.params().unwrap().bytes();
        assert!((1_800_000_000..1_900_000_000).contains(&bytes), "{bytes}");
    }

    #[test]
    fn small_profile_is_tens_of_megabytes() {
        let text = template(Profile::Small);
        for (from, to) in SMALL_PROFILE_LINES {
            assert_eq!(
                TEMPLATE.matches(&format!("\n{from}\n")).count(),
                1,
                "{from}"
            );
            assert!(text.contains(to), "{to}");
        }
        let config: Config = toml::from_str(&text).unwrap();
        assert_eq!(config.profile, Profile::Small);
        assert_eq!(config.mixnode.cores, 1);
        // ~1000 packets/s over a key's life (interval + overlap).
        let life_s = config.keys.rotation_interval_s + config.keys.rotation_overlap_s;
        assert_eq!((config.keys.rotation_interval_s, life_s), (3_600, 4_200));
        assert_eq!(config.replay.capacity_packets(), 1_000 * life_s);
        let filter = config.replay.params().unwrap().bytes();
        assert!(filter < 48 << 20, "{filter}");
        assert_eq!(config.engine.pool_memory_bytes, 16 << 20);
        // Worst case, mid-overlap with every buffer in use: under 128 MiB.
        assert!(2 * filter + config.engine.pool_memory_bytes < 128 << 20);
    }

    #[test]
    fn replay_sizing_is_validated_with_a_clear_error() {
        let dir = std::env::temp_dir().join(format!("lethe-mixcfg-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let write = |text: &str| std::fs::write(dir.join(CONFIG_FILE), text).unwrap();
        write(TEMPLATE);
        assert!(Config::load(&dir).is_ok());
        write(&TEMPLATE.replace("capacity_packets = 180000000", "capacity_packets = 10"));
        let err = Config::load(&dir).unwrap_err();
        assert!(err.contains("capacity_packets = 10: must be in"), "{err}");
        write(&TEMPLATE.replace("capacity_packets = 180000000", "capacity_packets = \"1G\""));
        assert!(Config::load(&dir).unwrap_err().contains("capacity_packets"));
        write(&TEMPLATE.replace("fp_rate = 1e-5", "fp_rate = 2.0"));
        assert!(Config::load(&dir).unwrap_err().contains("fp_rate = 2"));
        write(
            &TEMPLATE
                .replace(
                    "capacity_packets = 180000000",
                    "capacity_packets = 10000000000\nfp_rate = 1e-12",
                )
                .replacen("fp_rate = 1e-5\n", "", 1),
        );
        let err = Config::load(&dir).unwrap_err();
        assert!(err.contains("lower capacity_packets"), "{err}");
        write(&TEMPLATE.replace(
            "capacity_packets = 180000000",
            "capacity_packets = 1\npackets_per_s = 5",
        ));
        assert!(Config::load(&dir).unwrap_err().contains("not both"));
        // A config from before capacity_packets sizes from the rate and the key lifetime.
        write(&TEMPLATE.replace(
            "capacity_packets = 180000000",
            "packets_per_s = 200\nkey_lifetime_s = 3600",
        ));
        assert_eq!(
            Config::load(&dir).unwrap().replay.capacity_packets(),
            720_000
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_config_written_before_network_wide_ids_still_loads() {
        let old = TEMPLATE.replace(
            "sphinx_secondary = \"keys/x25519_sphinx_secondary\"\n",
            "sphinx_secondary = \"keys/x25519_sphinx_secondary\"\n\
             primary_rotation_id = 1\nsecondary_rotation_id = 0\n",
        );
        assert_ne!(old, TEMPLATE);
        let config: Config = toml::from_str(&old).unwrap();
        assert_eq!(config.keys.rotation_interval_s, 86_400);
        assert_eq!(
            ignored_keys(&old),
            ["primary_rotation_id", "secondary_rotation_id"]
        );
    }
}

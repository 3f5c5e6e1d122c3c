//! The engine's part of a node's config, shared by mixnodes and gateways: the `[engine]`
//! section, the `init` profiles and what they imply in memory, and the engine and egress
//! sizing derived from them.

use std::sync::Arc;

use lethe_crypto::framing::{FRAME_MAX_LEN, HEADER_MAX_LEN};
use lethe_engine::limits::{pool_buffers_for, PacketSizes, PACKET_BYTES_DEFAULT};
use lethe_engine::metrics::{CoreMetrics, DropReason};
use lethe_engine::runtime::RuntimeConfig;
use lethe_engine::{EngineConfig, ReplayConfig, ReplayFilterSet};
use serde::Deserialize;

use super::replay::ReplaySection;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineSection {
    pub batch_packets_max: u32,
    pub batch_flush_us: u64,
    /// 0 = the SIMD path's X25519 lane count; configs written before it existed get 0.
    #[serde(default)]
    pub batch_align_packets: u32,
    /// Configs written before it existed get the default.
    #[serde(default = "batch_hold_us_default")]
    pub batch_hold_us: u64,
    pub delay_ms_max: u64,
    pub timer_tick_us: u64,
    pub timer_entries_max: u32,
    /// 0 = as many as `pool_memory_bytes` holds.
    pub pool_buffers_count: u32,
    /// Memory budget of one core's pool; configs written before it existed get the default.
    #[serde(default = "pool_memory_bytes_default")]
    pub pool_memory_bytes: u64,
    /// Accepted Sphinx sizes (`regular`, `ack`, `ext8`, `ext16`, `ext32`); configs written
    /// before it existed keep regular + ack, what they accepted then.
    #[serde(default = "packet_sizes_regular")]
    pub packet_sizes: Vec<String>,
}

fn batch_hold_us_default() -> u64 {
    lethe_engine::limits::BATCH_HOLD_US_DEFAULT
}

fn pool_memory_bytes_default() -> u64 {
    lethe_engine::limits::POOL_MEMORY_BYTES_DEFAULT
}

fn packet_sizes_regular() -> Vec<String> {
    vec!["regular".into(), "ack".into()]
}

/// What `init --profile` sizes a node for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// A production node: Nym's sizing, ~2000 packets/s under 24 h keys (1.8 GB per replay
    /// filter), every CPU, 160 MiB of packet buffers per core.
    #[default]
    Default,
    /// First runs and laptop testnets: ~1000 packets/s under 1 h keys (43 MB per replay
    /// filter), one core, 16 MiB of packet buffers.
    Small,
}

impl Profile {
    pub const fn name(self) -> &'static str {
        match self {
            Profile::Default => "default",
            Profile::Small => "small",
        }
    }
}

impl std::fmt::Display for Profile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What a config implies in memory and on disk; `init` prints it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sizing {
    pub replay_filter_bytes: u64,
    pub pool_bytes_per_core: u64,
    pub cores: u32,
}

impl Sizing {
    /// `cores` as configured (0 = every CPU of this machine).
    pub fn of(
        replay: &ReplaySection,
        engine: &EngineSection,
        cores: u32,
    ) -> Result<Sizing, String> {
        let replay_filter_bytes = replay.params()?.bytes();
        let engine = engine_config(engine)?;
        let cores = match cores {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
            n => n,
        };
        Ok(Sizing {
            replay_filter_bytes,
            pool_bytes_per_core: u64::from(engine.pool_buffers_count)
                * u64::from(engine.pool_buffer_bytes),
            cores,
        })
    }

    /// The most it holds: two replay filters (a rotation's overlap) and every pool buffer in
    /// use on every core. Steady state is one filter and the buffers traffic touched.
    pub fn memory_bytes_max(&self) -> u64 {
        self.replay_filter_bytes.saturating_mul(2).saturating_add(
            self.pool_bytes_per_core
                .saturating_mul(u64::from(self.cores)),
        )
    }

    /// `profile=`, `replay_filter_bytes=`, `memory_bytes_max=` on stdout (with `init`'s other
    /// `key=value` lines), and what they mean on stderr.
    pub fn print(&self, profile: Profile, snapshot_interval_s: u64) {
        let mb = |b: u64| b.div_ceil(1_000_000);
        println!("profile={profile}");
        println!("replay_filter_bytes={}", self.replay_filter_bytes);
        println!("memory_bytes_max={}", self.memory_bytes_max());
        eprintln!(
            "profile {profile}: replay filter {} MB per live Sphinx key (two during a \
             rotation's overlap), packet buffers up to {} MB per core x {} core(s): {} MB at \
             first, up to {} MB. On disk: one {} MB snapshot per live key in the data \
             directory, rewritten every {snapshot_interval_s} s if packets arrived, and at stop.",
            mb(self.replay_filter_bytes),
            mb(self.pool_bytes_per_core),
            self.cores,
            mb(self.replay_filter_bytes),
            mb(self.memory_bytes_max()),
            mb(self.replay_filter_bytes),
        );
    }
}

/// Bytes budgeted per queued egress frame. A next hop's queue holds at most
/// `queue_packets_max` frames and `queue_packets_max × this` bytes (twice: the queue and the
/// writer's spare). The budget stays one regular frame's buffer (2560 B), as before larger
/// sizes existed, so enabling ext8 does not multiply the per-hop memory: larger frames count
/// against the byte budget by their size. Raised only if the queue could not hold one frame
/// of the largest enabled size.
pub fn egress_frame_bytes(engine: &EngineConfig, queue_packets_max: u32) -> u32 {
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
pub fn engine_config(e: &EngineSection) -> Result<EngineConfig, String> {
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

/// What a node's sized allocations take, as `/metrics` states it (`lethe_memory_bytes_max`,
/// `lethe_memory_replay_filters_bytes`): what a memory verdict may take out of a process's
/// RSS before it calls growth a leak.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryAccount {
    /// The replay filters held now: one per live Sphinx key, two during a rotation's overlap.
    pub replay_filters_bytes: u64,
    /// The most they all take: two replay filters (a rotation's overlap), and on every core
    /// every pool buffer in use and the io_uring memory.
    pub bytes_max: u64,
}

impl MemoryAccount {
    /// The account of a node running `runtime` that holds the filters of `set` now.
    pub fn of(set: &ReplayFilterSet, runtime: &RuntimeConfig) -> MemoryAccount {
        let filter_bytes = filters(set).map(|f| f.params().bytes()).max().unwrap_or(0);
        let e = &runtime.engine;
        let per_core = (u64::from(e.pool_buffers_count) * u64::from(e.pool_buffer_bytes))
            .saturating_add(runtime.io_memory_bytes as u64);
        MemoryAccount {
            replay_filters_bytes: 0,
            bytes_max: filter_bytes
                .saturating_mul(2)
                .saturating_add(per_core.saturating_mul(u64::from(runtime.cores))),
        }
        .holding(set)
    }

    /// The same account with the filters of `set` held (after a rotation, or its overlap's
    /// end).
    pub fn holding(self, set: &ReplayFilterSet) -> MemoryAccount {
        MemoryAccount {
            replay_filters_bytes: filters(set).map(|f| f.params().bytes()).sum(),
            ..self
        }
    }
}

fn filters(set: &ReplayFilterSet) -> impl Iterator<Item = &Arc<lethe_engine::ReplayFilter>> {
    set.rotation_ids().filter_map(|id| set.get(id))
}

/// Logs what a node allocates at start: the replay filters (live now; one more during a
/// rotation's overlap) and, per core, the packet pool (reserved; pages are touched as
/// buffers are first used) and the io_uring memory. Returns the account it logged.
pub fn log_memory(set: &ReplayFilterSet, runtime: &RuntimeConfig) -> MemoryAccount {
    let account = MemoryAccount::of(set, runtime);
    let e = &runtime.engine;
    tracing::info!(
        replay_filters = filters(set).count(),
        replay_filter_bytes = filters(set).next().map_or(0, |f| f.params().bytes()),
        replay_bytes = account.replay_filters_bytes,
        cores = runtime.cores,
        pool_packets_per_core = e.pool_buffers_count,
        pool_bytes_per_core = u64::from(e.pool_buffers_count) * u64::from(e.pool_buffer_bytes),
        io_memory_bytes_per_core = runtime.io_memory_bytes,
        timer_entries_per_core = e.timer_entries_max,
        total_bytes_max = account.bytes_max,
        "memory allocated"
    );
    account
}

pub fn report(metrics: &[Arc<CoreMetrics>]) {
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
    use crate::mixnode::config::{Config, TEMPLATE};

    fn section() -> EngineSection {
        let config: Config = toml::from_str(TEMPLATE).unwrap();
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

//! Every limit of the engine in one place, with the relations between them checked at compile
//! time, and the runtime configuration whose defaults derive from them.
//!
//! Names put units and qualifiers last (`delay_ms_max`), following TigerBeetle's style.

use std::fmt;

use lethe_crypto::framing::PacketSize;

/// Nym's cap on a forward delay (`maximum_forward_packet_delay`): with a 50 ms mean,
/// P(delay > 10 s) ≈ 1e-87, so the cap only ever bites on malicious or corrupt headers.
pub const DELAY_MS_MAX: u64 = 10_000;

/// Default timer tick. 1 ms keeps quantisation jitter ≤ mean/10 even at Loopix's 1 ms-range means
/// only coarsely; 100 µs ticks are allowed for low-delay deployments.
pub const TIMER_TICK_US_DEFAULT: u64 = 1_000;
pub const TIMER_TICK_US_MIN: u64 = 10;
pub const TIMER_TICK_US_MAX: u64 = 10_000;

/// Hierarchical wheel geometry: `TIMER_LEVELS` levels of `TIMER_SLOTS` slots (a u64 bitmap each).
pub const TIMER_SLOT_BITS: u32 = 6;
pub const TIMER_SLOTS: u32 = 1 << TIMER_SLOT_BITS;
pub const TIMER_LEVELS: u32 = 4;
/// The top level is cyclic: a deadline must never alias the slot being processed, so the delay
/// span is kept one top-level slot short of the full wheel range.
pub const TIMER_DELAY_TICKS_LIMIT: u64 =
    (TIMER_SLOTS as u64 - 1) << (TIMER_SLOT_BITS * (TIMER_LEVELS - 1));

/// Pending timers per core. At 500k pkt/s and a 200 ms mean delay, 100k are in flight.
pub const TIMER_ENTRIES_DEFAULT: u32 = 1 << 18;
pub const TIMER_ENTRIES_MAX: u32 = 1 << 24;

/// Packet buffers. Nym's largest regular Sphinx packet (extended 32 KiB payload) plus framing
/// fits in 32 KiB + 1 KiB; the default is the 2 KiB-payload regular packet (2413 B) rounded up.
pub const PACKET_BYTES_DEFAULT: u32 = 2_560;
pub const PACKET_BYTES_MAX: u32 = 33 * 1024;
/// Buffers are laid out on cache-line boundaries.
pub const BUFFER_ALIGN_BYTES: u32 = 64;
pub const POOL_BUFFERS_DEFAULT: u32 = 1 << 18;
pub const POOL_BUFFERS_MAX: u32 = 1 << 22;
/// Memory bound of one core's pool.
pub const POOL_BYTES_MAX: u64 = 8 << 30;
/// Default memory budget of one core's pool: what 65536 regular (2560-byte) buffers took before
/// larger sizes could be enabled. The buffer count is derived from it (`pool_buffers_for`), so
/// enabling ext8 trades buffers for size instead of growing memory.
pub const POOL_MEMORY_BYTES_DEFAULT: u64 = 160 << 20;

/// Next hops one engine core, or the gateway's client egress, keeps a queue and connection
/// for (a mixnet layer is hundreds of nodes).
pub const EGRESS_HOPS_MAX: usize = 4_096;

/// Batching: one batch feeds one sendmmsg / io_uring submission (UIO_MAXIOV = 1024).
pub const BATCH_PACKETS_DEFAULT: u32 = 64;
pub const BATCH_PACKETS_MAX: u32 = 1_024;
pub const BATCH_FLUSH_US_DEFAULT: u64 = 200;
pub const BATCH_FLUSH_US_MAX: u64 = 100_000;
/// About the time a lane group of 8 packets takes to arrive at 70 % of one core's saturated
/// rate (`node-efficiency`'s `node_pps_per_core`, `bench/README.md`).
pub const BATCH_HOLD_US_DEFAULT: u64 = 150;

/// Replay protection, after Nym: FP 1e-5, items = packets/s × key lifetime (24 h + 1 epoch).
pub const REPLAY_FP_RATE_DEFAULT: f64 = 1e-5;
pub const REPLAY_FP_RATE_MIN: f64 = 1e-12;
pub const REPLAY_KEY_LIFETIME_S: u64 = 25 * 3_600;
pub const REPLAY_PACKETS_PER_S_DEFAULT: u64 = 2_000;
pub const REPLAY_PACKETS_PER_S_MIN: u64 = 200;
/// Packets (replay tags) one filter may be sized for. The sizing rule: packets/s × key lifetime
/// (rotation interval + overlap), at a false-positive target. At 1e-5 a tag takes ~81 bits
/// (10 B): the default 180 M (2000/s × 25 h) is 1.8 GB, the small profile's 4.2 M (1000/s ×
/// 70 min) 42 MB. Above the maximum the filter would exceed `REPLAY_FILTER_BYTES_MAX` at any
/// useful rate anyway; below the minimum a filter is a few hundred bytes.
pub const REPLAY_CAPACITY_PACKETS_MIN: u64 = 1_000;
pub const REPLAY_CAPACITY_PACKETS_MAX: u64 = 10_000_000_000;
/// A filter per live Sphinx key: current + (previous during overlap | next, pre-announced).
pub const REPLAY_FILTERS_LIVE_MAX: u32 = 3;
/// Memory bound of one filter (the sizing refuses anything larger).
pub const REPLAY_FILTER_BYTES_MAX: u64 = 16 << 30;
pub const REPLAY_TAG_BYTES: u32 = 32;
/// Hash positions per tag. Bits come straight from the tag: 8 bytes pick the block, the other
/// 24 bytes (192 bits) give up to 21 positions of 9 bits.
pub const REPLAY_HASHES_MAX: u32 = 16;
pub const REPLAY_BLOCK_WORDS_MAX: u32 = 8;

const _: () = assert!(TIMER_TICK_US_MIN <= TIMER_TICK_US_DEFAULT);
const _: () = assert!(TIMER_TICK_US_DEFAULT <= TIMER_TICK_US_MAX);
const _: () = assert!(TIMER_SLOTS == u64::BITS); // one occupancy bitmap word per level
                                                 // The delay cap must fit the wheel at the finest tick.
const _: () = assert!(DELAY_MS_MAX * 1_000 / TIMER_TICK_US_MIN <= TIMER_DELAY_TICKS_LIMIT);
const _: () = assert!(TIMER_ENTRIES_DEFAULT <= TIMER_ENTRIES_MAX);
// Entry indices are u32 with u32::MAX reserved as the list terminator.
const _: () = assert!(TIMER_ENTRIES_MAX < u32::MAX);
const _: () = assert!(PACKET_BYTES_DEFAULT <= PACKET_BYTES_MAX);
const _: () = assert!(BUFFER_ALIGN_BYTES.is_power_of_two());
const _: () = assert!(POOL_BUFFERS_DEFAULT <= POOL_BUFFERS_MAX);
const _: () = assert!(POOL_BUFFERS_MAX < u32::MAX);
const _: () = assert!(POOL_BUFFERS_DEFAULT as u64 * PACKET_BYTES_DEFAULT as u64 <= POOL_BYTES_MAX);
// Every Sphinx size fits a buffer; the default buffer holds regular and ACK packets.
const _: () = assert!(PacketSize::Extended32.packet_len() <= PACKET_BYTES_MAX as usize);
const _: () = assert!(PacketSize::Regular.packet_len() <= PACKET_BYTES_DEFAULT as usize);
const _: () = assert!(PacketSize::Ack.packet_len() <= PacketSize::Regular.packet_len());
const _: () = assert!(POOL_MEMORY_BYTES_DEFAULT <= POOL_BYTES_MAX);
// The default budget holds the mixnode's former 65536 regular buffers, and with ext32 enabled
// still several full batches of the largest buffers.
const _: () = assert!((1u64 << 16) * PACKET_BYTES_DEFAULT as u64 <= POOL_MEMORY_BYTES_DEFAULT);
const _: () =
    assert!(POOL_MEMORY_BYTES_DEFAULT / PACKET_BYTES_MAX as u64 >= 4 * BATCH_PACKETS_MAX as u64);
const _: () = assert!(BATCH_PACKETS_DEFAULT <= BATCH_PACKETS_MAX);
const _: () = assert!(BATCH_FLUSH_US_DEFAULT <= BATCH_FLUSH_US_MAX);
const _: () = assert!(BATCH_HOLD_US_DEFAULT <= BATCH_FLUSH_US_DEFAULT);
// Flushing a partial batch must not add more than the mean forwarding delay's order of magnitude.
const _: () = assert!(BATCH_FLUSH_US_MAX <= DELAY_MS_MAX * 1_000);
const _: () = assert!(REPLAY_FP_RATE_MIN < REPLAY_FP_RATE_DEFAULT);
const _: () = assert!(REPLAY_FP_RATE_DEFAULT < 1.0);
const _: () = assert!(REPLAY_PACKETS_PER_S_MIN <= REPLAY_PACKETS_PER_S_DEFAULT);
// 8 tag bytes pick the block; each position needs log2(64 × block words) ≤ 9 bits of the rest.
const _: () = assert!(REPLAY_HASHES_MAX * 9 <= (REPLAY_TAG_BYTES - 8) * 8);
const _: () = assert!(REPLAY_BLOCK_WORDS_MAX * 64 == 512); // one cache line at most
const _: () = assert!(REPLAY_FILTERS_LIVE_MAX >= 2);
const _: () = assert!(REPLAY_CAPACITY_PACKETS_MIN < REPLAY_CAPACITY_PACKETS_MAX);
// The former per-rate sizing's extremes stay expressible.
const _: () =
    assert!(REPLAY_PACKETS_PER_S_DEFAULT * REPLAY_KEY_LIFETIME_S <= REPLAY_CAPACITY_PACKETS_MAX);

/// The Sphinx packet sizes a node accepts: a set over `PacketSize::SPHINX`, one bit per wire
/// tag. A frame of another size is dropped and counted (`packet_size_disabled`), never the
/// connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PacketSizes {
    tags: u8,
}

const _: () = assert!(PacketSize::ALL.len() < u8::BITS as usize);

impl PacketSizes {
    /// Regular and ACK: the two sizes every Nym client sends.
    pub const REGULAR: PacketSizes = PacketSizes::of(&[PacketSize::Regular, PacketSize::Ack]);
    /// The mixnode default: regular, ACK and ext8 (the extended size Nym clients may set as
    /// their secondary size; ext16/ext32 are "research only" per Nym's operator FAQ).
    pub const MIXNODE_DEFAULT: PacketSizes =
        PacketSizes::of(&[PacketSize::Regular, PacketSize::Ack, PacketSize::Extended8]);

    pub const fn of(sizes: &[PacketSize]) -> PacketSizes {
        let mut tags = 0u8;
        let mut index = 0;
        while index < sizes.len() {
            assert!(!sizes[index].is_outfox()); // framed but never processed
            tags |= 1 << sizes[index].tag();
            index += 1;
        }
        PacketSizes { tags }
    }

    pub const fn contains(self, size: PacketSize) -> bool {
        self.tags & (1 << size.tag()) != 0
    }

    pub const fn is_empty(self) -> bool {
        self.tags == 0
    }

    /// The enabled sizes, in `PacketSize::SPHINX` order.
    pub fn iter(self) -> impl Iterator<Item = PacketSize> {
        PacketSize::SPHINX
            .into_iter()
            .filter(move |s| self.contains(*s))
    }

    /// The longest enabled packet (0 if none).
    pub fn packet_len_max(self) -> usize {
        self.iter().map(PacketSize::packet_len).max().unwrap_or(0)
    }

    /// The pool buffer that holds the longest enabled packet, aligned to `BUFFER_ALIGN_BYTES`.
    pub fn buffer_bytes(self) -> u32 {
        let len = self.packet_len_max() as u32;
        let aligned = len.div_ceil(BUFFER_ALIGN_BYTES) * BUFFER_ALIGN_BYTES;
        assert!(aligned >= len);
        assert!(aligned <= PACKET_BYTES_MAX);
        aligned
    }

    /// Parses `regular`, `ack`, `ext8`, `ext16`, `ext32`.
    pub fn parse_name(name: &str) -> Option<PacketSize> {
        match name.trim().to_ascii_lowercase().as_str() {
            "regular" => Some(PacketSize::Regular),
            "ack" => Some(PacketSize::Ack),
            "ext8" | "extended8" => Some(PacketSize::Extended8),
            "ext16" | "extended16" => Some(PacketSize::Extended16),
            "ext32" | "extended32" => Some(PacketSize::Extended32),
            _ => None,
        }
    }

    pub const fn name(size: PacketSize) -> &'static str {
        match size {
            PacketSize::Regular => "regular",
            PacketSize::Ack => "ack",
            PacketSize::Extended8 => "ext8",
            PacketSize::Extended16 => "ext16",
            PacketSize::Extended32 => "ext32",
            PacketSize::OutfoxRegular => "outfox_regular",
            PacketSize::OutfoxAck => "outfox_ack",
        }
    }

    /// Parses a list of names (config array or comma-separated flag); refuses an empty set.
    pub fn parse_list<S: AsRef<str>>(names: &[S]) -> Result<PacketSizes, String> {
        let mut tags = 0u8;
        for name in names {
            let size = PacketSizes::parse_name(name.as_ref()).ok_or_else(|| {
                format!(
                    "packet size {:?}: expected regular, ack, ext8, ext16 or ext32",
                    name.as_ref()
                )
            })?;
            tags |= 1 << size.tag();
        }
        if tags == 0 {
            return Err("packet_sizes: enable at least one size".into());
        }
        Ok(PacketSizes { tags })
    }
}

impl fmt::Display for PacketSizes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.iter().map(PacketSizes::name).collect();
        write!(f, "{}", names.join(","))
    }
}

/// Buffers a pool of `memory_bytes` holds at `buffer_bytes` each (capped at `POOL_BUFFERS_MAX`).
pub fn pool_buffers_for(memory_bytes: u64, buffer_bytes: u32) -> u32 {
    assert!(buffer_bytes > 0);
    let count = (memory_bytes / u64::from(buffer_bytes)).min(u64::from(POOL_BUFFERS_MAX)) as u32;
    assert!(u64::from(count) * u64::from(buffer_bytes) <= memory_bytes);
    count
}

/// Runtime configuration of one core's engine pieces; `Default` derives from the consts above.
#[derive(Clone, Debug, PartialEq)]
pub struct EngineConfig {
    pub timer_tick_us: u64,
    pub timer_delay_ms_max: u64,
    pub timer_entries_max: u32,
    pub pool_buffers_count: u32,
    pub pool_buffer_bytes: u32,
    /// Sizes accepted; `pool_buffer_bytes` must hold the longest.
    pub packet_sizes: PacketSizes,
    pub batch_packets_max: u32,
    pub batch_flush_us: u64,
    /// When the runtime has drained its sockets, batches go in whole groups of this many
    /// packets (the rest wait for the next batch, at most `batch_flush_us`); fewer than one
    /// group go at once. 0 = the X25519 lane count of the SIMD path in use (8 with IFMA, 4
    /// with AVX2, 1 portable); 1 = every drained read releases everything.
    pub batch_align_packets: u32,
    /// A drained read with less than one lane group pending holds it for the rest of the
    /// group when (a) the pending packets arrived faster than a partial group takes to
    /// process (measured; the core would fall behind running them in small batches) and (b)
    /// at that arrival rate the rest comes within this many µs of the oldest packet's arrival
    /// (released then at the latest; capped by `batch_flush_us`). Near saturation this runs
    /// full groups instead of small, dear batches that keep the core ~100 % busy; below it
    /// (a) fails and at light load (b) does, and nothing waits. 0 = never hold.
    pub batch_hold_us: u64,
    pub replay: ReplayConfig,
}

/// How to size one replay filter.
#[derive(Clone, Debug, PartialEq)]
pub struct ReplayConfig {
    pub packets_per_s: u64,
    pub key_lifetime_s: u64,
    pub fp_rate: f64,
    /// 1 = exact race semantics (one atomic word per tag); 8 = one cache line per tag (fewer bits
    /// per item, but concurrent duplicates can both pass: see `replay`).
    pub block_words: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigError {
    OutOfRange {
        field: &'static str,
        value: u64,
        min: u64,
        max: u64,
    },
    FpRateOutOfRange,
    BlockWords(u32),
    /// No size enabled, or the buffers cannot hold the longest enabled one.
    PacketSizes {
        buffer_bytes: u32,
        packet_len_max: u32,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::OutOfRange {
                field,
                value,
                min,
                max,
            } => {
                write!(f, "{field} = {value} is outside [{min}, {max}]")
            }
            ConfigError::FpRateOutOfRange => {
                write!(f, "replay fp_rate must be in [{REPLAY_FP_RATE_MIN}, 1)")
            }
            ConfigError::BlockWords(w) => {
                write!(f, "replay block_words = {w}: must be 1, 2, 4 or 8")
            }
            ConfigError::PacketSizes {
                buffer_bytes,
                packet_len_max,
            } => write!(
                f,
                "packet sizes: none enabled, or the longest ({packet_len_max} B) does not fit \
                 pool buffers of {buffer_bytes} B"
            ),
        }
    }
}

impl std::error::Error for ConfigError {}

impl Default for ReplayConfig {
    fn default() -> Self {
        ReplayConfig {
            packets_per_s: REPLAY_PACKETS_PER_S_DEFAULT,
            key_lifetime_s: REPLAY_KEY_LIFETIME_S,
            fp_rate: REPLAY_FP_RATE_DEFAULT,
            block_words: 1,
        }
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            timer_tick_us: TIMER_TICK_US_DEFAULT,
            timer_delay_ms_max: DELAY_MS_MAX,
            timer_entries_max: TIMER_ENTRIES_DEFAULT,
            pool_buffers_count: POOL_BUFFERS_DEFAULT,
            pool_buffer_bytes: PACKET_BYTES_DEFAULT,
            packet_sizes: PacketSizes::REGULAR,
            batch_packets_max: BATCH_PACKETS_DEFAULT,
            batch_flush_us: BATCH_FLUSH_US_DEFAULT,
            batch_align_packets: 0,
            batch_hold_us: BATCH_HOLD_US_DEFAULT,
            replay: ReplayConfig::default(),
        }
    }
}

fn check_range(field: &'static str, value: u64, min: u64, max: u64) -> Result<(), ConfigError> {
    if value < min || value > max {
        return Err(ConfigError::OutOfRange {
            field,
            value,
            min,
            max,
        });
    }
    Ok(())
}

impl EngineConfig {
    /// Checks every field against the limits; a config that passes can be handed to the
    /// constructors, whose `assert!`s then never fire.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_range(
            "timer_tick_us",
            self.timer_tick_us,
            TIMER_TICK_US_MIN,
            TIMER_TICK_US_MAX,
        )?;
        check_range(
            "timer_delay_ms_max",
            self.timer_delay_ms_max,
            1,
            DELAY_MS_MAX,
        )?;
        let delay_ticks_max = self.timer_delay_ms_max * 1_000 / self.timer_tick_us;
        check_range(
            "timer_delay_ticks_max",
            delay_ticks_max,
            1,
            TIMER_DELAY_TICKS_LIMIT,
        )?;
        let entries = u64::from(self.timer_entries_max);
        check_range(
            "timer_entries_max",
            entries,
            1,
            u64::from(TIMER_ENTRIES_MAX),
        )?;
        let buffers = u64::from(self.pool_buffers_count);
        check_range(
            "pool_buffers_count",
            buffers,
            1,
            u64::from(POOL_BUFFERS_MAX),
        )?;
        let bytes = u64::from(self.pool_buffer_bytes);
        check_range("pool_buffer_bytes", bytes, 1, u64::from(PACKET_BYTES_MAX))?;
        check_range("pool_bytes", buffers * bytes, 1, POOL_BYTES_MAX)?;
        let packet_len_max = self.packet_sizes.packet_len_max() as u32;
        if self.packet_sizes.is_empty() || packet_len_max > self.pool_buffer_bytes {
            return Err(ConfigError::PacketSizes {
                buffer_bytes: self.pool_buffer_bytes,
                packet_len_max,
            });
        }
        let batch = u64::from(self.batch_packets_max);
        check_range("batch_packets_max", batch, 1, u64::from(BATCH_PACKETS_MAX))?;
        check_range("batch_flush_us", self.batch_flush_us, 0, BATCH_FLUSH_US_MAX)?;
        check_range(
            "batch_align_packets",
            u64::from(self.batch_align_packets),
            0,
            batch,
        )?;
        check_range("batch_hold_us", self.batch_hold_us, 0, BATCH_FLUSH_US_MAX)?;
        self.replay.validate()
    }

    /// The wheel's delay cap in ticks (rounded down, so the cap is never exceeded).
    pub fn timer_delay_ticks_max(&self) -> u64 {
        self.timer_delay_ms_max * 1_000 / self.timer_tick_us
    }

    /// One core's pieces, built from a config that passed `validate` (they `assert!` it).
    pub fn tick_clock(&self) -> crate::TickClock {
        crate::TickClock::new(self.timer_tick_us)
    }

    pub fn timer_wheel<T>(&self, now_us: u64) -> crate::TimerWheel<T> {
        let start = self.tick_clock().now_tick(now_us);
        crate::TimerWheel::new(self.timer_entries_max, self.timer_delay_ticks_max(), start)
    }

    pub fn buffer_pool(&self) -> crate::BufferPool {
        crate::BufferPool::new(self.pool_buffers_count, self.pool_buffer_bytes)
    }

    pub fn batcher<T>(&self) -> crate::Batcher<T> {
        crate::Batcher::new(self.batch_packets_max, self.batch_flush_us)
    }
}

impl ReplayConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_range(
            "replay_packets_per_s",
            self.packets_per_s,
            REPLAY_PACKETS_PER_S_MIN,
            10_000_000,
        )?;
        check_range(
            "replay_key_lifetime_s",
            self.key_lifetime_s,
            1,
            30 * 24 * 3_600,
        )?;
        // Written positively so NaN fails too.
        let fp_ok = self.fp_rate >= REPLAY_FP_RATE_MIN && self.fp_rate < 1.0;
        if !fp_ok {
            return Err(ConfigError::FpRateOutOfRange);
        }
        let words_ok =
            self.block_words.is_power_of_two() && self.block_words <= REPLAY_BLOCK_WORDS_MAX;
        if !words_ok {
            return Err(ConfigError::BlockWords(self.block_words));
        }
        Ok(())
    }

    /// Items one filter must hold: every packet accepted under one key.
    pub fn items_expected(&self) -> u64 {
        self.packets_per_s.saturating_mul(self.key_lifetime_s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_is_valid() {
        assert_eq!(EngineConfig::default().validate(), Ok(()));
        assert_eq!(EngineConfig::default().timer_delay_ticks_max(), 10_000);
        assert_eq!(ReplayConfig::default().items_expected(), 180_000_000);
    }

    #[test]
    fn pieces_build_from_a_valid_config() {
        let config = EngineConfig {
            timer_tick_us: 100,
            timer_entries_max: 1_000,
            pool_buffers_count: 100,
            ..EngineConfig::default()
        };
        assert_eq!(config.validate(), Ok(()));
        let mut wheel = config.timer_wheel::<u32>(1_234_567);
        assert_eq!(wheel.elapsed(), 12_345);
        assert_eq!(wheel.delay_ticks_max(), 100_000);
        assert_eq!(wheel.insert(u64::MAX, 1), Ok(12_345 + 100_000));
        assert_eq!(config.buffer_pool().capacity(), 100);
        assert!(config.batcher::<u32>().is_empty());
    }

    #[test]
    fn invalid_configs_are_refused() {
        let base = EngineConfig::default();
        let mut c = base.clone();
        c.timer_tick_us = 0;
        assert!(c.validate().is_err());
        let mut c = base.clone();
        c.timer_delay_ms_max = DELAY_MS_MAX + 1;
        assert!(c.validate().is_err());
        let mut c = base.clone();
        c.batch_packets_max = 0;
        assert!(c.validate().is_err());
        let mut c = base.clone();
        c.replay.fp_rate = f64::NAN;
        assert_eq!(c.validate(), Err(ConfigError::FpRateOutOfRange));
        let mut c = base.clone();
        c.replay.block_words = 3;
        assert_eq!(c.validate(), Err(ConfigError::BlockWords(3)));
        let mut c = base.clone();
        c.packet_sizes = PacketSizes::MIXNODE_DEFAULT; // ext8 does not fit 2560-byte buffers
        assert!(matches!(c.validate(), Err(ConfigError::PacketSizes { .. })));
        c.pool_buffer_bytes = c.packet_sizes.buffer_bytes();
        assert_eq!(c.validate(), Ok(()));
        let mut c = base;
        c.pool_buffers_count = POOL_BUFFERS_MAX;
        c.pool_buffer_bytes = PACKET_BYTES_MAX;
        assert!(c.validate().is_err()); // 4M × 33 KiB exceeds the pool memory bound
    }

    #[test]
    fn packet_sizes_parse_and_size_the_pool() {
        let sizes = PacketSizes::parse_list(&["regular", "ACK", " ext8"]).unwrap();
        assert_eq!(sizes, PacketSizes::MIXNODE_DEFAULT);
        assert_eq!(sizes.to_string(), "regular,ack,ext8");
        assert!(sizes.contains(PacketSize::Extended8));
        assert!(!sizes.contains(PacketSize::Extended32));
        assert_eq!(sizes.buffer_bytes(), 8_576); // 8557 rounded up to 64
        assert_eq!(PacketSizes::REGULAR.buffer_bytes(), 2_432);
        assert!(PacketSizes::parse_list::<&str>(&[]).is_err());
        assert!(PacketSizes::parse_list(&["outfox"]).is_err());
        let all = PacketSizes::parse_list(&["ext32", "ext16"]).unwrap();
        assert_eq!(all.buffer_bytes(), 33_152);
        let count = pool_buffers_for(POOL_MEMORY_BYTES_DEFAULT, sizes.buffer_bytes());
        assert_eq!(count, 19_562);
        assert!(u64::from(count) * 8_576 <= POOL_MEMORY_BYTES_DEFAULT);
        assert_eq!(pool_buffers_for(u64::MAX, 64), POOL_BUFFERS_MAX);
    }
}

//! Per-core counters and histograms, and their Prometheus text rendering.
//!
//! Thread-per-core: each core owns one [`CoreMetrics`] (behind an `Arc` so the scrape thread can
//! read it) and is its only writer, so every `fetch_add` is an uncontended relaxed atomic on a
//! line no other core writes. A scrape sums the cores. Nothing here allocates after
//! construction except [`render_prometheus`], which runs on the control plane.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// Why a packet was dropped. The discriminant indexes the drop counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum DropReason {
    /// Not a Sphinx packet we can process: bad length, MAC, point, flag, version, or a frame
    /// the decoder skipped (unknown packet type, bad rotation byte, Outfox).
    Malformed = 0,
    /// The replay tag was seen before under that key.
    Replayed = 1,
    /// The frame names a key rotation this node holds no key (or no replay filter) for.
    UnknownKey = 2,
    /// No room: buffer pool, timer wheel or action queue exhausted.
    Overload = 3,
    /// The next-hop address does not decode to a socket address.
    UnknownNextHop = 4,
    /// The egress queue to the next hop was full (or the hop unreachable).
    EgressFull = 5,
    /// Still queued when the shutdown grace period ended.
    Shutdown = 6,
    /// A final-hop packet reached a node that does not deliver (a mixnode).
    FinalHopAtMixnode = 7,
    /// A gateway's final-hop hand-off (engine cores → gateway threads) was full.
    FinalHopQueueFull = 8,
    /// A Sphinx packet of a size this node does not accept (`packet_sizes` setting).
    PacketSizeDisabled = 9,
    /// Lost with the connection to the next hop, or waited longer than the egress bound
    /// (`EgressConfig::unreachable_drop_ms`) for a connection that would take it.
    NextHopUnreachable = 10,
}

impl DropReason {
    pub const COUNT: usize = 11;
    pub const ALL: [DropReason; DropReason::COUNT] = [
        DropReason::Malformed,
        DropReason::Replayed,
        DropReason::UnknownKey,
        DropReason::Overload,
        DropReason::UnknownNextHop,
        DropReason::EgressFull,
        DropReason::Shutdown,
        DropReason::FinalHopAtMixnode,
        DropReason::FinalHopQueueFull,
        DropReason::PacketSizeDisabled,
        DropReason::NextHopUnreachable,
    ];

    /// The Prometheus label value.
    pub const fn label(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::Replayed => "replayed",
            DropReason::UnknownKey => "unknown_key",
            DropReason::Overload => "overload",
            DropReason::UnknownNextHop => "unknown_next_hop",
            DropReason::EgressFull => "egress_full",
            DropReason::Shutdown => "shutdown",
            DropReason::FinalHopAtMixnode => "final_hop_at_mixnode",
            DropReason::FinalHopQueueFull => "final_hop_queue_full",
            DropReason::PacketSizeDisabled => "packet_size_disabled",
            DropReason::NextHopUnreachable => "next_hop_unreachable",
        }
    }
}

const _: () = assert!(DropReason::ALL.len() == DropReason::COUNT);
const _: () = assert!(DropReason::NextHopUnreachable as usize == DropReason::COUNT - 1);

/// Power-of-two buckets: bucket `i` counts values `<= 2^i`; the last bucket is `+Inf`.
pub const HISTOGRAM_BUCKETS: usize = 25;

/// A fixed-bucket histogram of `u64` values (microseconds or packet counts).
#[derive(Debug)]
pub struct Histogram {
    buckets: [AtomicU64; HISTOGRAM_BUCKETS],
    sum: AtomicU64,
    count: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    pub fn record(&self, value: u64) {
        let index = bucket_index(value);
        debug_assert!(index < HISTOGRAM_BUCKETS);
        self.buckets[index].fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(value, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    pub fn sum(&self) -> u64 {
        self.sum.load(Ordering::Relaxed)
    }

    /// Non-cumulative count of bucket `index`.
    pub fn bucket(&self, index: usize) -> u64 {
        self.buckets[index].load(Ordering::Relaxed)
    }

    /// The smallest bucket bound `b` with at least `q` of the values `<= b` (an upper estimate).
    pub fn quantile_upper_bound(&self, q: f64) -> u64 {
        let total = self.count();
        if total == 0 {
            return 0;
        }
        let target = ((total as f64) * q).ceil() as u64;
        let mut seen = 0u64;
        for index in 0..HISTOGRAM_BUCKETS {
            seen += self.bucket(index);
            if seen >= target.max(1) {
                return bucket_bound(index);
            }
        }
        u64::MAX
    }
}

fn bucket_index(value: u64) -> usize {
    if value <= 1 {
        return 0;
    }
    // ceil(log2(value)): the first power of two >= value.
    let index = (u64::BITS - (value - 1).leading_zeros()) as usize;
    index.min(HISTOGRAM_BUCKETS - 1)
}

fn bucket_bound(index: usize) -> u64 {
    if index >= HISTOGRAM_BUCKETS - 1 {
        return u64::MAX;
    }
    1u64 << index
}

/// The latency stages a packet goes through, each with a histogram in microseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Stage {
    /// Arrival to the start of its batch's processing (batching delay).
    BatchWait = 0,
    /// Sphinx processing of one batch, divided by its packets (runtime-measured).
    CryptoPerPacket = 1,
    /// How late a forward left relative to its deadline (timer resolution, load).
    DelayLateness = 2,
    /// Arrival to hand-off for sending, excluding the encoded delay.
    ProcessingResidence = 3,
}

impl Stage {
    pub const COUNT: usize = 4;
    pub const ALL: [Stage; Stage::COUNT] = [
        Stage::BatchWait,
        Stage::CryptoPerPacket,
        Stage::DelayLateness,
        Stage::ProcessingResidence,
    ];

    pub const fn label(self) -> &'static str {
        match self {
            Stage::BatchWait => "batch_wait",
            Stage::CryptoPerPacket => "crypto_per_packet",
            Stage::DelayLateness => "delay_lateness",
            Stage::ProcessingResidence => "processing_residence",
        }
    }
}

/// One core's metrics. Written only by that core; read by the scrape.
#[derive(Debug, Default)]
pub struct CoreMetrics {
    pub packets_received: AtomicU64,
    pub packets_forwarded: AtomicU64,
    pub packets_delivered: AtomicU64,
    pub packets_sent: AtomicU64,
    pub packets_delay_clamped: AtomicU64,
    pub packets_dropped: [AtomicU64; DropReason::COUNT],
    pub frames_received: AtomicU64,
    pub timer_wheel_packets: AtomicU64,
    pub connections_ingress: AtomicU64,
    pub connections_egress: AtomicU64,
    pub connect_failures: AtomicU64,
    /// Ingress connections closed at accept: over the per-core or per-address cap.
    pub connections_refused: AtomicU64,
    /// Ingress connections closed for idling (no whole frame within the timeout), or evicted
    /// for a newcomer when the table was full.
    pub connections_idle_closed: AtomicU64,
    /// When this core's timer loop last turned (µs on the runtime's clock): its liveness.
    pub loop_turn_us: AtomicU64,
    /// Signals sent to wake this core after its loop was silent (`runtime::nudge`).
    pub core_nudges: AtomicU64,
    pub batch_packets: Histogram,
    pub stage_us: [Histogram; Stage::COUNT],
}

impl CoreMetrics {
    pub fn add(counter: &AtomicU64, value: u64) {
        counter.fetch_add(value, Ordering::Relaxed);
    }

    pub fn dropped(&self, reason: DropReason, count: u64) {
        self.packets_dropped[reason as usize].fetch_add(count, Ordering::Relaxed);
    }

    pub fn dropped_count(&self, reason: DropReason) -> u64 {
        self.packets_dropped[reason as usize].load(Ordering::Relaxed)
    }

    pub fn stage(&self, stage: Stage) -> &Histogram {
        &self.stage_us[stage as usize]
    }

    pub fn set(counter: &AtomicU64, value: u64) {
        counter.store(value, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// Renders the Prometheus text exposition format (0.0.4) summed over `cores`.
pub fn render_prometheus(cores: &[std::sync::Arc<CoreMetrics>], uptime_s: u64, out: &mut String) {
    let sum = |pick: &dyn Fn(&CoreMetrics) -> u64| cores.iter().map(|c| pick(c)).sum::<u64>();
    let counters: [(&str, &str, u64); 11] = [
        (
            "lethe_frames_received_total",
            "Frames decoded from ingress connections.",
            sum(&|c| CoreMetrics::get(&c.frames_received)),
        ),
        (
            "lethe_packets_received_total",
            "Sphinx packets accepted into the engine.",
            sum(&|c| CoreMetrics::get(&c.packets_received)),
        ),
        (
            "lethe_packets_forwarded_total",
            "Packets whose delay expired and were handed to egress.",
            sum(&|c| CoreMetrics::get(&c.packets_forwarded)),
        ),
        (
            "lethe_packets_sent_total",
            "Packets written to a next-hop connection.",
            sum(&|c| CoreMetrics::get(&c.packets_sent)),
        ),
        (
            "lethe_packets_delivered_total",
            "Final-hop packets.",
            sum(&|c| CoreMetrics::get(&c.packets_delivered)),
        ),
        (
            "lethe_packets_delay_clamped_total",
            "Forward delays above the maximum, clamped to it (as Nym does).",
            sum(&|c| CoreMetrics::get(&c.packets_delay_clamped)),
        ),
        (
            "lethe_connect_failures_total",
            "Failed connection attempts to next hops.",
            sum(&|c| CoreMetrics::get(&c.connect_failures)),
        ),
        (
            "lethe_connections_refused_total",
            "Ingress connections closed at accept (per-core or per-address cap).",
            sum(&|c| CoreMetrics::get(&c.connections_refused)),
        ),
        (
            "lethe_connections_idle_closed_total",
            "Ingress connections closed for idling or evicted for a newcomer.",
            sum(&|c| CoreMetrics::get(&c.connections_idle_closed)),
        ),
        (
            "lethe_core_nudges_total",
            "Signals sent to wake a core whose loop was silent for 1 s (a lost io_uring wake-up).",
            sum(&|c| CoreMetrics::get(&c.core_nudges)),
        ),
        (
            "lethe_uptime_seconds_total",
            "Deprecated, removed in the next release: use the gauge lethe_uptime_seconds.",
            uptime_s,
        ),
    ];
    for (name, help, value) in counters {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
        );
    }
    let name = "lethe_packets_dropped_total";
    let _ = writeln!(
        out,
        "# HELP {name} Packets dropped, by reason.\n# TYPE {name} counter"
    );
    for reason in DropReason::ALL {
        let value = sum(&|c| c.dropped_count(reason));
        let _ = writeln!(out, "{name}{{reason=\"{}\"}} {value}", reason.label());
    }
    let gauges: [(&str, &str, u64); 4] = [
        (
            "lethe_timer_wheel_packets",
            "Packets waiting for their forward delay.",
            sum(&|c| CoreMetrics::get(&c.timer_wheel_packets)),
        ),
        (
            "lethe_connections_ingress",
            "Open ingress connections.",
            sum(&|c| CoreMetrics::get(&c.connections_ingress)),
        ),
        (
            "lethe_connections_egress",
            "Open egress connections.",
            sum(&|c| CoreMetrics::get(&c.connections_egress)),
        ),
        ("lethe_cores", "Engine cores running.", cores.len() as u64),
    ];
    // Which SIMD paths this process runs (benchmark reports name them beside their figures).
    let _ = writeln!(
        out,
        "# HELP lethe_simd_info SIMD paths of this node (X25519 and symmetric crypto).\n\
         # TYPE lethe_simd_info gauge\n\
         lethe_simd_info{{x25519=\"{}\",symmetric=\"{}\"}} 1",
        lethe_crypto::sphinx::batch::dh_path_name(),
        lethe_crypto::simd::path_name()
    );
    for (name, help, value) in gauges {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
        );
    }
    render_histogram(
        out,
        "lethe_batch_packets",
        "Packets per processed batch.",
        "",
        1.0,
        cores.iter().map(|c| &c.batch_packets),
    );
    let name = "lethe_stage_seconds";
    for stage in Stage::ALL {
        let label = format!("stage=\"{}\"", stage.label());
        render_histogram(
            out,
            name,
            "Per-stage packet latency.",
            &label,
            1e-6,
            cores.iter().map(|c| c.stage(stage)),
        );
    }
}

fn render_histogram<'a>(
    out: &mut String,
    name: &str,
    help: &str,
    labels: &str,
    scale: f64,
    parts: impl Iterator<Item = &'a Histogram> + Clone,
) {
    if !out.contains(&format!("# TYPE {name} histogram")) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
    }
    let sep = if labels.is_empty() { "" } else { "," };
    let mut cumulative = 0u64;
    for index in 0..HISTOGRAM_BUCKETS {
        cumulative += parts.clone().map(|h| h.bucket(index)).sum::<u64>();
        let le = if index == HISTOGRAM_BUCKETS - 1 {
            "+Inf".to_string()
        } else {
            format!("{}", bucket_bound(index) as f64 * scale)
        };
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {cumulative}"
        );
    }
    let sum: u64 = parts.map(Histogram::sum).sum();
    // The count is the +Inf bucket, not the histogram's own counter: cores record while this
    // reads, so a separately read counter can differ by the samples recorded in between.
    let count = cumulative;
    let braces = if labels.is_empty() {
        String::new()
    } else {
        format!("{{{labels}}}")
    };
    let _ = writeln!(out, "{name}_sum{braces} {}", sum as f64 * scale);
    let _ = writeln!(out, "{name}_count{braces} {count}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn buckets_are_powers_of_two() {
        assert_eq!(bucket_index(0), 0);
        assert_eq!(bucket_index(1), 0);
        assert_eq!(bucket_index(2), 1);
        assert_eq!(bucket_index(3), 2);
        assert_eq!(bucket_index(4), 2);
        assert_eq!(bucket_index(5), 3);
        assert_eq!(bucket_index(u64::MAX), HISTOGRAM_BUCKETS - 1);
    }

    #[test]
    fn renders_sums_over_cores() {
        let a = Arc::new(CoreMetrics::default());
        let b = Arc::new(CoreMetrics::default());
        CoreMetrics::add(&a.packets_received, 3);
        CoreMetrics::add(&b.packets_received, 4);
        b.dropped(DropReason::Replayed, 2);
        a.batch_packets.record(64);
        let mut out = String::new();
        render_prometheus(&[a, b], 5, &mut out);
        assert!(out.contains("lethe_packets_received_total 7\n"));
        assert!(out.contains("lethe_packets_dropped_total{reason=\"replayed\"} 2\n"));
        assert!(out.contains("lethe_batch_packets_bucket{le=\"64\"} 1\n"));
        assert!(out.contains("lethe_batch_packets_count 1\n"));
        assert_eq!(
            out.matches("# TYPE lethe_stage_seconds histogram").count(),
            1
        );
    }

    #[test]
    fn quantile_upper_bound() {
        let h = Histogram::default();
        for v in [1, 2, 3, 100] {
            h.record(v);
        }
        assert_eq!(h.quantile_upper_bound(0.5), 2);
        assert_eq!(h.quantile_upper_bound(1.0), 128);
    }
}

#[cfg(test)]
mod render_tests {
    use super::*;

    #[test]
    fn the_exposition_names_the_simd_paths_and_the_new_drop_reason() {
        let mut out = String::new();
        render_prometheus(&[std::sync::Arc::new(CoreMetrics::default())], 5, &mut out);
        let info = out
            .lines()
            .find(|l| l.starts_with("lethe_simd_info{"))
            .expect("lethe_simd_info");
        assert!(info.contains(&format!(
            "x25519=\"{}\"",
            lethe_crypto::sphinx::batch::dh_path_name()
        )));
        assert!(info.ends_with("} 1"));
        assert!(out.contains("lethe_packets_dropped_total{reason=\"next_hop_unreachable\"} 0"));
        assert!(out.contains("# TYPE lethe_connections_refused_total counter"));
    }
}

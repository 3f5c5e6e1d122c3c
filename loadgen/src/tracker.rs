//! Receive-side accounting of one run: which packets arrived (a bitmap: loss and duplicates),
//! their end-to-end latency from the time they were *scheduled* to leave (an HdrHistogram), and
//! a per-second series.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use hdrhistogram::Histogram;

use crate::stamp::Stamp;

/// Latencies are recorded in microseconds, 1 µs to 1 h, 3 significant digits.
pub const LATENCY_US_MAX: u64 = 3_600_000_000;
/// Seconds kept in the per-second series; later arrivals count in `series_overflow`.
pub const SERIES_SECONDS_MAX: usize = 3_600;
/// Largest run the bitmap tracks (16 MiB of bits).
pub const PACKETS_MAX: u64 = 1 << 27;

/// A latency histogram in µs (3 significant digits).
pub fn latency_histogram() -> Result<Histogram<u64>, String> {
    Histogram::new_with_bounds(1, LATENCY_US_MAX, 3).map_err(|e| format!("histogram: {e}"))
}

fn series_histogram() -> Result<Histogram<u32>, String> {
    Histogram::new_with_bounds(1, LATENCY_US_MAX, 2).map_err(|e| format!("histogram: {e}"))
}

/// What became of one delivered packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arrival {
    /// First arrival: counted, latency recorded.
    Delivered,
    /// Seen before.
    Duplicate,
    /// Sequence number beyond the run.
    OutOfRange,
}

/// One second of arrivals (by arrival time).
#[derive(Clone, Debug)]
pub struct Second {
    pub delivered: u64,
    pub latency_us: Histogram<u32>,
}

/// The state of one run's receive side.
#[derive(Debug)]
pub struct Tracker {
    pub run_id: u32,
    pub total: u64,
    delivered: AtomicU64,
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    seen: Vec<u64>,
    duplicates: u64,
    out_of_range: u64,
    latency_us: Histogram<u64>,
    series: Vec<Option<Second>>,
    series_overflow: u64,
    empty_second: Histogram<u32>,
}

/// A copy of a tracker's results.
#[derive(Clone, Debug)]
pub struct TrackerResult {
    pub delivered: u64,
    pub duplicates: u64,
    pub out_of_range: u64,
    pub latency_us: Histogram<u64>,
    /// Index = second after the start; `None` where nothing arrived.
    pub series: Vec<Option<Second>>,
    pub series_overflow: u64,
}

impl Tracker {
    pub fn new(run_id: u32, total: u64) -> Result<Tracker, String> {
        if total > PACKETS_MAX {
            return Err(format!(
                "{total} packets in one run: at most {PACKETS_MAX} (lower --rate or --duration)"
            ));
        }
        let words = usize::try_from(total.div_ceil(64)).map_err(|e| e.to_string())?;
        Ok(Tracker {
            run_id,
            total,
            delivered: AtomicU64::new(0),
            inner: Mutex::new(Inner {
                seen: vec![0; words],
                duplicates: 0,
                out_of_range: 0,
                latency_us: latency_histogram()?,
                series: Vec::new(),
                series_overflow: 0,
                empty_second: series_histogram()?,
            }),
        })
    }

    /// Packets delivered so far (first arrivals).
    pub fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }

    /// Records a packet of this run arriving `arrival_ns` after the run's start. Latency is
    /// `arrival - scheduled`: a packet that left late is charged its whole lateness.
    pub fn record(&self, stamp: &Stamp, arrival_ns: u64) -> Arrival {
        debug_assert_eq!(stamp.run_id, self.run_id);
        if stamp.seq >= self.total {
            if let Ok(mut inner) = self.inner.lock() {
                inner.out_of_range += 1;
            }
            return Arrival::OutOfRange;
        }
        let Ok(mut inner) = self.inner.lock() else {
            return Arrival::OutOfRange;
        };
        let word = (stamp.seq / 64) as usize;
        let bit = 1u64 << (stamp.seq % 64);
        let Some(slot) = inner.seen.get_mut(word) else {
            inner.out_of_range += 1;
            return Arrival::OutOfRange;
        };
        if *slot & bit != 0 {
            inner.duplicates += 1;
            return Arrival::Duplicate;
        }
        *slot |= bit;
        let latency_us = (arrival_ns.saturating_sub(stamp.scheduled_ns) / 1_000).max(1);
        inner.latency_us.saturating_record(latency_us);
        let second = (arrival_ns / 1_000_000_000) as usize;
        if second < SERIES_SECONDS_MAX {
            if inner.series.len() <= second {
                inner.series.resize(second + 1, None);
            }
            let empty = inner.empty_second.clone();
            let entry = inner.series[second].get_or_insert(Second {
                delivered: 0,
                latency_us: empty,
            });
            entry.delivered += 1;
            entry.latency_us.saturating_record(latency_us);
        } else {
            inner.series_overflow += 1;
        }
        self.delivered.fetch_add(1, Ordering::Relaxed);
        Arrival::Delivered
    }

    pub fn result(&self) -> Result<TrackerResult, String> {
        let inner = self
            .inner
            .lock()
            .map_err(|_| "tracker lock poisoned".to_string())?;
        Ok(TrackerResult {
            delivered: self.delivered(),
            duplicates: inner.duplicates,
            out_of_range: inner.out_of_range,
            latency_us: inner.latency_us.clone(),
            series: inner.series.clone(),
            series_overflow: inner.series_overflow,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn stamp(seq: u64, scheduled_ns: u64) -> Stamp {
        Stamp {
            run_id: 1,
            seq,
            scheduled_ns,
        }
    }

    #[test]
    fn counts_duplicates_and_out_of_range() {
        let t = Tracker::new(1, 100).unwrap();
        assert_eq!(t.record(&stamp(3, 0), 2_000_000), Arrival::Delivered);
        assert_eq!(t.record(&stamp(3, 0), 2_500_000), Arrival::Duplicate);
        assert_eq!(t.record(&stamp(100, 0), 1), Arrival::OutOfRange);
        assert_eq!(
            t.record(&stamp(99, 1_000_000_000), 1_003_000_000),
            Arrival::Delivered
        );
        let r = t.result().unwrap();
        assert_eq!((r.delivered, r.duplicates, r.out_of_range), (2, 1, 1));
        assert_eq!(r.latency_us.len(), 2);
        assert_eq!(r.series.len(), 2);
        assert_eq!(r.series[1].as_ref().unwrap().delivered, 1);
        assert!(Tracker::new(1, PACKETS_MAX + 1).is_err());
    }
}

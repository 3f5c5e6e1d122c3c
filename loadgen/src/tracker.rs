//! Receive-side accounting of one run: which packets arrived (a bitmap: loss and duplicates),
//! their end-to-end latency from the time they were *scheduled* to leave (an HdrHistogram), and
//! a per-second series.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use hdrhistogram::Histogram;

use crate::limits::{LATENCY_US_MAX, PACKETS_MAX, SERIES_SECONDS_MAX, WINDOWS_MAX};
use crate::stamp::Stamp;

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
    /// Length of a window of scheduled send time (`--window`), ns.
    window_ns: u64,
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
    /// Latency of the packets *scheduled* in each window (index = scheduled time / window),
    /// made on the first arrival of the window.
    windows: Vec<Option<Histogram<u32>>>,
    /// Deliveries by second of *scheduled* time (the live view's "undelivered so far"); later
    /// seconds than [`SERIES_SECONDS_MAX`] count in the last.
    delivered_by_scheduled_s: Vec<u64>,
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
    /// Latency of the delivered packets by window of scheduled time (`None`: none arrived).
    pub windows: Vec<Option<Histogram<u32>>>,
    /// The bitmap of delivered sequence numbers.
    seen: Vec<u64>,
}

impl TrackerResult {
    /// Packets with `first <= seq < end` delivered.
    pub fn delivered_in(&self, first: u64, end: u64) -> u64 {
        let mut count = 0u64;
        let mut seq = first;
        while seq < end {
            let word = (seq / 64) as usize;
            let Some(bits) = self.seen.get(word) else {
                break;
            };
            let from = seq % 64;
            let to = (end - word as u64 * 64).min(64);
            let mask = if to - from == 64 {
                u64::MAX
            } else {
                ((1u64 << (to - from)) - 1) << from
            };
            count += u64::from((bits & mask).count_ones());
            seq = (word as u64 + 1) * 64;
        }
        count
    }
}

impl Tracker {
    /// A run of `total` packets whose windows of scheduled time last `window_ns` (0: one
    /// window).
    pub fn new(run_id: u32, total: u64, window_ns: u64) -> Result<Tracker, String> {
        if total > PACKETS_MAX {
            return Err(format!(
                "{total} packets in one run: at most {PACKETS_MAX} (lower --rate or --duration)"
            ));
        }
        let words = usize::try_from(total.div_ceil(64)).map_err(|e| e.to_string())?;
        Ok(Tracker {
            run_id,
            total,
            window_ns,
            delivered: AtomicU64::new(0),
            inner: Mutex::new(Inner {
                seen: vec![0; words],
                duplicates: 0,
                out_of_range: 0,
                latency_us: latency_histogram()?,
                series: Vec::new(),
                series_overflow: 0,
                empty_second: series_histogram()?,
                windows: Vec::new(),
                delivered_by_scheduled_s: Vec::new(),
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
        let window = stamp
            .scheduled_ns
            .checked_div(self.window_ns)
            .unwrap_or(0)
            .min(WINDOWS_MAX as u64 - 1) as usize;
        if inner.windows.len() <= window {
            inner.windows.resize(window + 1, None);
        }
        if inner.windows[window].is_none() {
            inner.windows[window] = Some(inner.empty_second.clone());
        }
        if let Some(histogram) = inner.windows[window].as_mut() {
            histogram.saturating_record(latency_us);
        }
        let scheduled_s =
            ((stamp.scheduled_ns / 1_000_000_000) as usize).min(SERIES_SECONDS_MAX - 1);
        if inner.delivered_by_scheduled_s.len() <= scheduled_s {
            inner.delivered_by_scheduled_s.resize(scheduled_s + 1, 0);
        }
        inner.delivered_by_scheduled_s[scheduled_s] += 1;
        self.delivered.fetch_add(1, Ordering::Relaxed);
        Arrival::Delivered
    }

    /// Packets scheduled before second `end_s` of the run that were delivered (so far).
    pub fn delivered_scheduled_before(&self, end_s: u64) -> u64 {
        let Ok(inner) = self.inner.lock() else {
            return 0;
        };
        let end = usize::try_from(end_s).unwrap_or(usize::MAX);
        inner.delivered_by_scheduled_s.iter().take(end).sum()
    }

    /// Deliveries in second `second` of arrival time, and their p50 and p99 latency, ms
    /// (`None` when nothing arrived then).
    pub fn second_figures(&self, second: u64) -> Option<(u64, f64, f64)> {
        let inner = self.inner.lock().ok()?;
        let entry = inner.series.get(usize::try_from(second).ok()?)?.as_ref()?;
        let q = |quantile: f64| entry.latency_us.value_at_quantile(quantile) as f64 / 1e3;
        (entry.delivered > 0).then(|| (entry.delivered, q(0.5), q(0.99)))
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
            windows: inner.windows.clone(),
            seen: inner.seen.clone(),
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
    fn counts_delivered_ranges_and_windows_by_scheduled_time() {
        let t = Tracker::new(1, 300, 1_000_000_000).unwrap();
        for seq in [0, 1, 63, 64, 65, 127, 128, 200, 299] {
            // Scheduled at seq x 10 ms; arrivals late enough to fall in a later second.
            t.record(
                &stamp(seq, seq * 10_000_000),
                seq * 10_000_000 + 1_500_000_000,
            );
        }
        let r = t.result().unwrap();
        assert_eq!(r.delivered_in(0, 300), 9);
        assert_eq!(r.delivered_in(0, 64), 3);
        assert_eq!(r.delivered_in(64, 128), 3);
        assert_eq!(r.delivered_in(63, 66), 3);
        assert_eq!(r.delivered_in(129, 200), 0);
        assert_eq!(r.delivered_in(200, 201), 1);
        assert_eq!(r.delivered_in(5, 5), 0);
        assert_eq!(r.delivered_in(250, 10_000), 1);
        // Windows of 1 s of scheduled time: seq 0-99 in window 0, 100-199 in 1, 200-299 in 2.
        let counts: Vec<u64> = r
            .windows
            .iter()
            .map(|w| w.as_ref().map_or(0, Histogram::len))
            .collect();
        assert_eq!(counts, vec![5, 2, 2]);
    }

    #[test]
    fn counts_duplicates_and_out_of_range() {
        let t = Tracker::new(1, 100, 0).unwrap();
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
        assert!(Tracker::new(1, PACKETS_MAX + 1, 0).is_err());
    }
}

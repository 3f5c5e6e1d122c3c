//! Receive-side accounting of one run: which packets arrived (a bitmap: loss and duplicates),
//! their end-to-end latency from the time they were *scheduled* to leave (an HdrHistogram), and
//! a per-second series.
//!
//! Memory is fixed when the run starts, however long it lasts: the bitmap is sized by the
//! run's packets, the per-second series keeps a summary per second (count, p50, p99: what the
//! report shows), not a histogram per second (13 KiB each, which made a 10-minute soak's
//! loadgen grow by 7 MiB). Only the last [`SERIES_OPEN_SECONDS`] seconds of arrival time have
//! a histogram, reused as time moves on.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use hdrhistogram::Histogram;

use crate::limits::{
    LATENCY_US_MAX, PACKETS_MAX, SERIES_OPEN_SECONDS, SERIES_SECONDS_MAX, WINDOWS_MAX,
};
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

/// One second of arrivals (by arrival time): how many, and their latency quantiles.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Second {
    pub delivered: u64,
    pub p50_us: u64,
    pub p99_us: u64,
}

/// An open second's slot that holds none yet.
const NO_SECOND: usize = usize::MAX;

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
    /// One summary per second of arrival time, allocated whole at the start; the quantiles
    /// of a second are filled in when its histogram is reused (or read while it is open).
    series: Vec<Second>,
    /// Seconds with arrivals so far: one more than the latest.
    series_len: usize,
    /// The histograms of the latest seconds: second `s` uses slot `s % SERIES_OPEN_SECONDS`
    /// (`.0` is the second it holds, [`NO_SECOND`] when none).
    open: Vec<(usize, Histogram<u32>)>,
    series_overflow: u64,
    /// Arrivals recorded after their second's histogram was reused (receiver threads record
    /// slightly out of arrival order): counted in their second, not in its quantiles.
    series_unsorted: u64,
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
    pub series_unsorted: u64,
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
        let empty_second = series_histogram()?;
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
                series: vec![Second::default(); SERIES_SECONDS_MAX],
                series_len: 0,
                open: vec![(NO_SECOND, empty_second.clone()); SERIES_OPEN_SECONDS],
                series_overflow: 0,
                series_unsorted: 0,
                empty_second,
                windows: Vec::new(),
                delivered_by_scheduled_s: vec![0; SERIES_SECONDS_MAX],
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
            inner.record_second(second, latency_us);
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
        if let Some(count) = inner.delivered_by_scheduled_s.get_mut(scheduled_s) {
            *count += 1;
        }
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
        let entry = inner.summary(usize::try_from(second).ok()?)?;
        let ms = |us: u64| us as f64 / 1e3;
        (entry.delivered > 0).then(|| (entry.delivered, ms(entry.p50_us), ms(entry.p99_us)))
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
            series: (0..inner.series_len)
                .map(|second| inner.summary(second).filter(|s| s.delivered > 0))
                .collect(),
            series_overflow: inner.series_overflow,
            series_unsorted: inner.series_unsorted,
            windows: inner.windows.clone(),
            seen: inner.seen.clone(),
        })
    }
}

impl Inner {
    /// Counts an arrival in `second` (< [`SERIES_SECONDS_MAX`]) and records its latency in
    /// the second's histogram, reusing the slot of a second that has passed.
    fn record_second(&mut self, second: usize, latency_us: u64) {
        self.series[second].delivered += 1;
        self.series_len = self.series_len.max(second + 1);
        let slot = second % SERIES_OPEN_SECONDS;
        let held = self.open[slot].0;
        if held != second {
            if held != NO_SECOND && held > second {
                self.series_unsorted += 1;
                return;
            }
            if held != NO_SECOND {
                self.series[held] = summarize(self.series[held].delivered, &self.open[slot].1);
            }
            self.open[slot].1.reset();
            self.open[slot].0 = second;
        }
        self.open[slot].1.saturating_record(latency_us);
    }

    /// Second `second`'s figures: from its histogram while it is open.
    fn summary(&self, second: usize) -> Option<Second> {
        let entry = *self.series.get(second)?;
        let (held, histogram) = &self.open[second % SERIES_OPEN_SECONDS];
        Some(if *held == second {
            summarize(entry.delivered, histogram)
        } else {
            entry
        })
    }
}

fn summarize(delivered: u64, latency_us: &Histogram<u32>) -> Second {
    Second {
        delivered,
        p50_us: latency_us.value_at_quantile(0.5),
        p99_us: latency_us.value_at_quantile(0.99),
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod memory_tests {
    use super::*;

    /// A million packets arriving over the longest series the tracker keeps: every second's
    /// figures match a histogram of its own, and the tracker holds what it held at the start
    /// (its series is allocated whole; a histogram per second would take about 45 MiB).
    #[test]
    fn a_million_packets_over_an_hour_keep_fixed_memory_and_exact_seconds() {
        let packets: u64 = 1_000_000;
        let seconds = SERIES_SECONDS_MAX as u64;
        let rss_before = crate::windows::rss_kib(std::process::id()).unwrap();
        let t = Tracker::new(1, packets, 60_000_000_000).unwrap();
        let mut reference: Vec<Histogram<u32>> =
            (0..4).map(|_| series_histogram().unwrap()).collect();
        let sampled = [0u64, 1, 1_799, seconds - 1];
        for seq in 0..packets {
            let arrival_ns = seq * seconds * 1_000_000_000 / packets;
            // Latencies from 1 ms to about 101 ms, varying within each second.
            let latency_ns = 1_000_000 + (seq * 7_919 % 100) * 1_000_000;
            let stamp = Stamp {
                run_id: 1,
                seq,
                scheduled_ns: arrival_ns.saturating_sub(latency_ns),
            };
            let latency_us = (arrival_ns - stamp.scheduled_ns) / 1_000;
            assert_eq!(t.record(&stamp, arrival_ns), Arrival::Delivered);
            let second = arrival_ns / 1_000_000_000;
            if let Some(i) = sampled.iter().position(|&s| s == second) {
                reference[i].saturating_record(latency_us.max(1));
            }
        }
        let rss_after = crate::windows::rss_kib(std::process::id()).unwrap();
        let r = t.result().unwrap();
        assert_eq!(r.delivered, packets);
        assert_eq!(r.series.len(), SERIES_SECONDS_MAX);
        assert_eq!((r.series_overflow, r.series_unsorted), (0, 0));
        for (i, &second) in sampled.iter().enumerate() {
            let got = r.series[second as usize].unwrap();
            assert_eq!(
                got,
                summarize(reference[i].len(), &reference[i]),
                "second {second}"
            );
        }
        let total: u64 = r.series.iter().flatten().map(|s| s.delivered).sum();
        assert_eq!(total, packets);
        // The bitmap (122 KiB) and the series (84 KiB) are all the tracker adds; the bound
        // leaves room for the other tests of this binary running meanwhile.
        let grew_kib = rss_after.saturating_sub(rss_before);
        assert!(grew_kib < 8 * 1024, "RSS grew {grew_kib} KiB");
    }

    #[test]
    fn arrivals_out_of_order_across_a_reused_second_are_counted_not_lost() {
        let t = Tracker::new(1, 100, 0).unwrap();
        let at = |s: u64| s * 1_000_000_000 + 5_000_000;
        let stamp = |seq: u64, s: u64| Stamp {
            run_id: 1,
            seq,
            scheduled_ns: s * 1_000_000_000,
        };
        t.record(&stamp(0, 0), at(0));
        t.record(&stamp(1, 10), at(10));
        // Second 0's slot now holds a later second: this one counts, without a latency.
        let late_second = SERIES_OPEN_SECONDS as u64 * 3;
        t.record(&stamp(2, late_second), at(late_second));
        t.record(&stamp(3, 0), at(0));
        let r = t.result().unwrap();
        assert_eq!(r.series[0].unwrap().delivered, 2);
        assert_eq!(r.series_unsorted, 1);
        // 5 ms, to the histogram's two significant digits.
        let p50_us = r.series[0].unwrap().p50_us;
        assert!((5_000..5_100).contains(&p50_us), "{p50_us}");
        assert_eq!(r.series[10].unwrap().delivered, 1);
        assert!(r.series[1].is_none());
        assert_eq!(t.second_figures(10).map(|f| f.0), Some(1));
    }
}

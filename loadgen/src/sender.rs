//! One sender: takes pre-built frames off its bounded queue and writes each when it is due.
//!
//! Frames that are already due when a write starts go out together in one write (at most
//! [`SENDER_BATCH_FRAMES_MAX`]). A frame handed to the kernel more than the late bound after its due
//! time is counted late; its latency is still measured from its due time.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::Receiver;

use hdrhistogram::Histogram;

use crate::limits::SENDER_BATCH_FRAMES_MAX;
use crate::schedule::Clock;
use crate::trace::PacketTrace;
use crate::tracker::latency_histogram;

/// A framed packet ready to send.
#[derive(Debug)]
pub struct OutPacket {
    pub due_ns: u64,
    /// Its place in the run's schedule (the stamp's `seq`).
    pub seq: u64,
    pub frame: Vec<u8>,
}

/// Where a sender gets its frames.
pub trait PacketSource {
    /// The next frame, waiting for it if needed; `None` when no more will come.
    fn next_wait(&mut self) -> Option<OutPacket>;
    /// The next frame if it is ready now and due by `now_ns`.
    fn next_due(&mut self, now_ns: u64) -> Option<OutPacket>;
}

/// A bounded channel from the generator.
pub struct ChannelSource {
    pub receiver: Receiver<OutPacket>,
    pub peeked: Option<OutPacket>,
}

impl PacketSource for ChannelSource {
    fn next_wait(&mut self) -> Option<OutPacket> {
        self.peeked.take().or_else(|| self.receiver.recv().ok())
    }

    fn next_due(&mut self, now_ns: u64) -> Option<OutPacket> {
        let packet = match self.peeked.take() {
            Some(packet) => packet,
            None => self.receiver.try_recv().ok()?,
        };
        if packet.due_ns <= now_ns {
            return Some(packet);
        }
        self.peeked = Some(packet);
        None
    }
}

impl PacketSource for VecDeque<OutPacket> {
    fn next_wait(&mut self) -> Option<OutPacket> {
        self.pop_front()
    }

    fn next_due(&mut self, now_ns: u64) -> Option<OutPacket> {
        if self.front()?.due_ns <= now_ns {
            return self.pop_front();
        }
        None
    }
}

/// Counters shared with the progress display.
#[derive(Debug, Default)]
pub struct LiveCounters {
    pub sent: AtomicU64,
    pub late: AtomicU64,
}

/// What a sender did.
#[derive(Clone, Debug)]
pub struct SenderStats {
    pub sent: u64,
    pub late: u64,
    /// Frames in a write that failed (connection lost); not sent.
    pub failed: u64,
    pub write_errors: Vec<String>,
    /// How long after its due time each frame was handed to the kernel, µs.
    pub lateness_us: Histogram<u64>,
    /// Time spent writing (the rest was spent waiting for due times).
    pub busy_ns: u64,
    /// Frames sent, by second of the send.
    pub sent_per_second: Vec<u64>,
    /// Frames sent, by window of their scheduled time (`PaceConfig::window_ns`).
    pub sent_per_window: Vec<u64>,
    /// When the last frame was handed over, ns after the start.
    pub last_send_ns: u64,
}

impl SenderStats {
    pub fn new() -> Result<SenderStats, String> {
        Ok(SenderStats {
            sent: 0,
            late: 0,
            failed: 0,
            write_errors: Vec::new(),
            lateness_us: latency_histogram()?,
            busy_ns: 0,
            sent_per_second: Vec::new(),
            sent_per_window: Vec::new(),
            last_send_ns: 0,
        })
    }

    pub fn merge(&mut self, other: &SenderStats) {
        self.sent += other.sent;
        self.late += other.late;
        self.failed += other.failed;
        self.write_errors.extend(other.write_errors.iter().cloned());
        let _ = self.lateness_us.add(&other.lateness_us);
        self.busy_ns += other.busy_ns;
        if self.sent_per_second.len() < other.sent_per_second.len() {
            self.sent_per_second.resize(other.sent_per_second.len(), 0);
        }
        for (mine, theirs) in self.sent_per_second.iter_mut().zip(&other.sent_per_second) {
            *mine += theirs;
        }
        if self.sent_per_window.len() < other.sent_per_window.len() {
            self.sent_per_window.resize(other.sent_per_window.len(), 0);
        }
        for (mine, theirs) in self.sent_per_window.iter_mut().zip(&other.sent_per_window) {
            *mine += theirs;
        }
        self.last_send_ns = self.last_send_ns.max(other.last_send_ns);
    }
}

/// How a sender paces.
#[derive(Clone, Copy, Debug)]
pub struct PaceConfig {
    /// Lateness above this counts as late.
    pub late_bound_ns: u64,
    /// Frames not yet sent at this time are abandoned (counted as not sent).
    pub give_up_ns: u64,
    /// Length of a window of scheduled time for `sent_per_window`, ns (0: one window).
    pub window_ns: u64,
}

/// Sends every frame of `source` at its due time through `write`, until the source ends, a
/// write fails, `stop` is set or `give_up_ns` passes. With `trace`, each write's frames are
/// recorded as sent when the write started (one lock per write).
#[allow(clippy::too_many_arguments)]
pub fn pace<C, S, W>(
    clock: &C,
    source: &mut S,
    mut write: W,
    config: PaceConfig,
    stop: &AtomicBool,
    live: &LiveCounters,
    stats: &mut SenderStats,
    trace: Option<&PacketTrace>,
) where
    C: Clock,
    S: PacketSource,
    W: FnMut(&[u8]) -> std::io::Result<()>,
{
    let mut buffer: Vec<u8> = Vec::new();
    let mut due: Vec<u64> = Vec::with_capacity(SENDER_BATCH_FRAMES_MAX);
    let mut seqs: Vec<u64> = Vec::with_capacity(SENDER_BATCH_FRAMES_MAX);
    while let Some(first) = source.next_wait() {
        if stop.load(Ordering::Relaxed) || clock.now_ns().max(first.due_ns) > config.give_up_ns {
            break;
        }
        clock.sleep_until_ns(first.due_ns);
        let start = clock.now_ns();
        buffer.clear();
        due.clear();
        seqs.clear();
        buffer.extend_from_slice(&first.frame);
        due.push(first.due_ns);
        seqs.push(first.seq);
        while due.len() < SENDER_BATCH_FRAMES_MAX {
            let Some(next) = source.next_due(start) else {
                break;
            };
            buffer.extend_from_slice(&next.frame);
            due.push(next.due_ns);
            seqs.push(next.seq);
        }
        if let Err(e) = write(&buffer) {
            stats.failed += due.len() as u64;
            stats.write_errors.push(e.to_string());
            break;
        }
        let done = clock.now_ns();
        if let Some(trace) = trace {
            // Stamped before the write: the gateway may relay a packet before `write` returns.
            trace.sent(&seqs, start);
        }
        stats.busy_ns += done.saturating_sub(start);
        account(stats, live, &due, done, &config);
    }
}

fn account(
    stats: &mut SenderStats,
    live: &LiveCounters,
    due: &[u64],
    done: u64,
    config: &PaceConfig,
) {
    let bound = config.late_bound_ns;
    let second = (done / 1_000_000_000) as usize;
    if second < crate::limits::SERIES_SECONDS_MAX {
        if stats.sent_per_second.len() <= second {
            stats.sent_per_second.resize(second + 1, 0);
        }
        stats.sent_per_second[second] += due.len() as u64;
    }
    let mut late = 0;
    for &due_ns in due {
        let window = due_ns
            .checked_div(config.window_ns)
            .unwrap_or(0)
            .min(crate::limits::WINDOWS_MAX as u64 - 1) as usize;
        if stats.sent_per_window.len() <= window {
            stats.sent_per_window.resize(window + 1, 0);
        }
        stats.sent_per_window[window] += 1;
        let lateness = done.saturating_sub(due_ns);
        stats
            .lateness_us
            .saturating_record((lateness / 1_000).max(1));
        if lateness > bound {
            late += 1;
        }
    }
    stats.sent += due.len() as u64;
    stats.late += late;
    stats.last_send_ns = done;
    live.sent.fetch_add(due.len() as u64, Ordering::Relaxed);
    live.late.fetch_add(late, Ordering::Relaxed);
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::schedule::Schedule;
    use crate::stamp::Stamp;
    use crate::tracker::Tracker;
    use std::cell::Cell;

    /// Time moves only when the sender sleeps or a write takes time.
    struct SimClock {
        now: Cell<u64>,
    }

    impl Clock for SimClock {
        fn now_ns(&self) -> u64 {
            self.now.get()
        }
        fn sleep_until_ns(&self, ns: u64) {
            self.now.set(self.now.get().max(ns));
        }
    }

    /// 1000 packets/s for 1 s; the write of packet 100 stalls the sender for 200 ms. The
    /// packets due during the stall go out late, in a burst, and each is charged the time since
    /// it was *due*: latencies ramp from ~200 ms down, none is hidden.
    #[test]
    fn a_stalled_sender_charges_missed_packets_from_their_due_times() {
        const TRANSIT_NS: u64 = 1_000_000;
        const STALL_NS: u64 = 200_000_000;
        let schedule = Schedule::new(1000.0, 1.0, 1).unwrap();
        let mut source: VecDeque<OutPacket> = (0..schedule.total)
            .map(|seq| OutPacket {
                due_ns: schedule.due_ns(seq),
                seq,
                frame: seq.to_be_bytes().to_vec(),
            })
            .collect();
        let clock = SimClock { now: Cell::new(0) };
        let tracker = Tracker::new(1, schedule.total, 0).unwrap();
        let mut naive = latency_histogram().unwrap();
        let mut stats = SenderStats::new().unwrap();
        let live = LiveCounters::default();
        let stop = AtomicBool::new(false);
        let config = PaceConfig {
            late_bound_ns: 1_000_000,
            give_up_ns: u64::MAX,
            window_ns: 500_000_000,
        };
        pace(
            &clock,
            &mut source,
            |bytes| {
                let mut stalled = false;
                for chunk in bytes.chunks(8) {
                    let seq = u64::from_be_bytes(chunk.try_into().unwrap());
                    if seq == 100 {
                        stalled = true;
                    }
                }
                // The stall happens inside the write; the packets arrive after it.
                if stalled {
                    clock.now.set(clock.now.get() + STALL_NS);
                }
                for chunk in bytes.chunks(8) {
                    let seq = u64::from_be_bytes(chunk.try_into().unwrap());
                    let stamp = Stamp {
                        run_id: 1,
                        seq,
                        scheduled_ns: schedule.due_ns(seq),
                    };
                    let arrival = clock.now.get() + TRANSIT_NS;
                    tracker.record(&stamp, arrival);
                    naive.saturating_record((TRANSIT_NS / 1000).max(1));
                }
                Ok(())
            },
            config,
            &stop,
            &live,
            &mut stats,
            None,
        );
        let result = tracker.result().unwrap();
        assert_eq!(stats.sent, 1000);
        assert_eq!(result.delivered, 1000);
        // The stall ends at 300 ms: packet 100 and those due at 101..=298 ms left more than
        // 1 ms late (299 and 300 left within the bound).
        assert_eq!(stats.late, 199, "late count");
        let latency = &result.latency_us;
        // Packet 100 was due at 100 ms and arrived at 301 ms.
        assert_eq!(latency.value_at_quantile(1.0) / 1000, 201);
        // 20% of packets were delayed by the stall: p80 is ~1 ms, p90 is ~100 ms.
        assert!(latency.value_at_quantile(0.79) < 2_000);
        assert!(latency.value_at_quantile(0.9) > 90_000);
        // A sender-side (send time to arrival) measurement would see 1 ms everywhere.
        assert_eq!(naive.value_at_quantile(1.0) / 1000, 1);
        // Lateness as the sender saw it: up to 200 ms.
        assert_eq!(stats.lateness_us.value_at_quantile(1.0) / 1000, 200);
        // Windows count by scheduled time, not send time: the burst after the stall belongs
        // to the first half-second.
        assert_eq!(stats.sent_per_window, vec![500, 500]);
    }

    #[test]
    fn abandons_frames_past_the_give_up_time() {
        let mut source: VecDeque<OutPacket> = (0..10)
            .map(|seq| OutPacket {
                due_ns: seq * 1_000_000,
                seq,
                frame: vec![0; 8],
            })
            .collect();
        let clock = SimClock { now: Cell::new(0) };
        let mut stats = SenderStats::new().unwrap();
        let config = PaceConfig {
            late_bound_ns: 1_000_000,
            give_up_ns: 4_500_000,
            window_ns: 0,
        };
        pace(
            &clock,
            &mut source,
            |_| Ok(()),
            config,
            &AtomicBool::new(false),
            &LiveCounters::default(),
            &mut stats,
            None,
        );
        assert_eq!(stats.sent, 5);
    }
}

//! Long runs (soaks): the run cut into windows of scheduled send time, and the memory of every
//! local node process (and loadgen's own) sampled at the start, at the end of each window and
//! at the end of the run, from `/proc/PID/status` (VmRSS).
//!
//! Memory is judged after warm-up: the growth reported is from the end of the first window to
//! the end of the run, so the pools, filters and caches a node fills while it warms up are not
//! mistaken for a leak. A node also states, on its metrics endpoint, the replay filters it holds
//! (`lethe_memory_replay_filters_bytes`: a second one during each key rotation's overlap) and the
//! most its sized allocations take (`lethe_memory_bytes_max`); each RSS sample is taken with
//! them, so the growth its own accounting explains (a run that ends inside an overlap) is told
//! apart from growth it does not (a leak).

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::limits::{LOG_SCAN_BYTES_MAX, MEMORY_SAMPLE_TRIES, WINDOWS_MAX};
use serde::Serialize;

/// The series a node states its replay filters in (bytes held now).
pub const REPLAY_FILTERS_SERIES: &str = "lethe_memory_replay_filters_bytes";
/// The series a node states the most its sized allocations take in (bytes).
pub const MEMORY_MAX_SERIES: &str = "lethe_memory_bytes_max";

/// What the Rust runtime writes when a thread panics.
const PANIC_MARK: &str = "panicked at";

/// A local process whose memory and life the run watches.
#[derive(Clone, Debug)]
pub struct WatchedProcess {
    pub name: String,
    pub pid: u32,
    /// Its stderr log, scanned for panics at the end of the run.
    pub log: Option<PathBuf>,
    /// Its metrics endpoint, read with each RSS sample for the memory it states.
    pub metrics: Option<SocketAddr>,
}

/// One memory sample of a process.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct MemorySample {
    pub rss_kib: u64,
    /// The replay filters it said it held (KiB) when the RSS was read; `None` when it states
    /// none (loadgen, directory, issuers) or its endpoint did not answer.
    pub replay_filters_kib: Option<u64>,
    /// The most its sized allocations take, as it states it (KiB).
    pub stated_max_kib: Option<u64>,
}

/// One sample of every watched process, in their order (`None`: not running).
pub type Sample = Vec<Option<MemorySample>>;

/// Resident memory of `pid`, KiB; `None` once it has exited (or is a zombie).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
}

/// Lines of `log` (its first [`LOG_SCAN_BYTES_MAX`] bytes) that report a panic.
pub fn panics_logged(log: &Path) -> u64 {
    let Ok(file) = std::fs::File::open(log) else {
        return 0;
    };
    BufReader::new(file.take(LOG_SCAN_BYTES_MAX))
        .split(b'\n')
        .map_while(Result::ok)
        .filter(|line| {
            line.windows(PANIC_MARK.len())
                .any(|w| w == PANIC_MARK.as_bytes())
        })
        .count() as u64
}

/// True while `pid` runs: it exists and is not a zombie (the testnet's nodes are not
/// loadgen's children; whoever reaps them may be slow, or not reap at all).
pub fn running(pid: u32) -> bool {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return false;
    };
    text.lines()
        .find_map(|line| line.strip_prefix("State:"))
        .and_then(|rest| rest.split_whitespace().next())
        .is_some_and(|state| state != "Z" && state != "X")
}

/// One memory sample of every watched process, in their order.
pub fn sample(processes: &[WatchedProcess]) -> Sample {
    processes.iter().map(memory_sample).collect()
}

/// The RSS of `process` and the memory it states. The statement is read before and after the
/// RSS, and again (a few times at most) if a key rotation changed it in between, so both
/// describe the same moment.
fn memory_sample(process: &WatchedProcess) -> Option<MemorySample> {
    let stated = || {
        let samples = crate::scrape::scrape(process.metrics?).ok()?;
        let kib = |series: &str| samples.get(series).map(|bytes| (*bytes as u64) / 1024);
        Some((kib(REPLAY_FILTERS_SERIES), kib(MEMORY_MAX_SERIES)))
    };
    let mut sample = None;
    for _ in 0..MEMORY_SAMPLE_TRIES {
        let before = stated();
        let rss_kib = rss_kib(process.pid)?;
        let after = stated();
        let (replay_filters_kib, stated_max_kib) = after.unwrap_or_default();
        sample = Some(MemorySample {
            rss_kib,
            replay_filters_kib,
            stated_max_kib,
        });
        if before == after {
            break;
        }
    }
    sample
}

/// Memory of one process over the run (the report's `result.processes[]`).
#[derive(Clone, Debug, Serialize)]
pub struct ProcessReport {
    pub name: String,
    pub pid: u32,
    /// `null` when it was not running at that moment.
    pub rss_kib_start: Option<u64>,
    pub rss_kib_first_window_end: Option<u64>,
    pub rss_kib_end: Option<u64>,
    /// From the end of the first window to the end of the run; `null` with a single window
    /// (no warm-up to leave out) or when it was not running at either moment.
    pub rss_growth_after_warmup_kib: Option<i64>,
    pub rss_growth_after_warmup_pct: Option<f64>,
    /// The replay filters the node said it held at those two moments (`null`: it states none).
    pub replay_filters_kib_first_window_end: Option<u64>,
    pub replay_filters_kib_end: Option<u64>,
    /// The growth its own accounting does not explain: the RSS growth after warm-up less the
    /// change in the replay filters it holds (a key rotation's overlap adds one, its end drops
    /// one); the RSS growth itself for a process that states none. What the verdict judges.
    pub rss_growth_unaccounted_kib: Option<i64>,
    pub rss_growth_unaccounted_pct: Option<f64>,
    /// The most its sized allocations take, as it states it (its last statement).
    pub memory_kib_max_stated: Option<u64>,
    /// Still running after the run (loadgen itself always is).
    pub running_at_end: bool,
    /// Lines of its log that report a panic (0 when it has no log).
    pub panics_logged: u64,
}

/// Memory of every process from the samples: `start`, one per window end (`windows[i][p]`),
/// and `end`.
pub fn process_reports(
    processes: &[WatchedProcess],
    start: &[Option<MemorySample>],
    windows: &[Sample],
    end: &[Option<MemorySample>],
) -> Vec<ProcessReport> {
    processes
        .iter()
        .enumerate()
        .map(|(index, process)| {
            let at = |samples: &[Option<MemorySample>]| samples.get(index).copied().flatten();
            let first = windows.first().and_then(|w| at(w));
            let last = at(end);
            // Growth needs a window after the warm-up one and both samples.
            let judged = if windows.len() >= 2 {
                first.zip(last)
            } else {
                None
            };
            let percent = |kib: i64| {
                first
                    .filter(|f| f.rss_kib > 0)
                    .map(|f| kib as f64 * 100.0 / f.rss_kib as f64)
            };
            let growth = judged.map(|(f, l)| l.rss_kib as i64 - f.rss_kib as i64);
            let replay_change = judged.and_then(|(f, l)| {
                Some(l.replay_filters_kib? as i64 - f.replay_filters_kib? as i64)
            });
            let unaccounted = growth.map(|g| g - replay_change.unwrap_or(0));
            let stated_max = [last, first, at(start)]
                .into_iter()
                .flatten()
                .find_map(|s| s.stated_max_kib)
                .or_else(|| windows.iter().rev().find_map(|w| at(w)?.stated_max_kib));
            ProcessReport {
                name: process.name.clone(),
                pid: process.pid,
                rss_kib_start: at(start).map(|s| s.rss_kib),
                rss_kib_first_window_end: first.map(|s| s.rss_kib),
                rss_kib_end: last.map(|s| s.rss_kib),
                rss_growth_after_warmup_kib: growth,
                rss_growth_after_warmup_pct: growth.and_then(percent),
                replay_filters_kib_first_window_end: first.and_then(|s| s.replay_filters_kib),
                replay_filters_kib_end: last.and_then(|s| s.replay_filters_kib),
                rss_growth_unaccounted_kib: unaccounted,
                rss_growth_unaccounted_pct: unaccounted.and_then(percent),
                memory_kib_max_stated: stated_max,
                running_at_end: last.is_some(),
                panics_logged: process.log.as_deref().map_or(0, panics_logged),
            }
        })
        .collect()
}

/// Window `index` of `window_ns` within a run whose schedule ends at `end_ns` (the last
/// window is cut at the end of the run): `[start, end)` in ns after the start.
pub fn bounds_ns(index: usize, window_ns: u64, run_ns: u64) -> (u64, u64) {
    let start = (index as u64).saturating_mul(window_ns);
    let end = start.saturating_add(window_ns).min(run_ns.max(start));
    (start, end)
}

/// Windows of `window_ns` covering `run_ns` (at least one).
pub fn count(window_ns: u64, run_ns: u64) -> usize {
    if window_ns == 0 {
        return 1;
    }
    (run_ns.div_ceil(window_ns) as usize).clamp(1, WINDOWS_MAX)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn own_rss_is_read_and_a_dead_pid_has_none() {
        assert!(rss_kib(std::process::id()).unwrap() > 0);
        // No metrics endpoint: the RSS alone.
        let own = memory_sample(&WatchedProcess {
            name: "loadgen".into(),
            pid: std::process::id(),
            log: None,
            metrics: None,
        })
        .unwrap();
        assert!(own.rss_kib > 0 && own.replay_filters_kib.is_none());
        assert!(running(std::process::id()));
        assert!(!running(u32::MAX - 1));
        // Pid numbers stop far below this (pid_max is at most 2^22).
        assert_eq!(rss_kib(u32::MAX - 1), None);
    }

    fn rss(kib: u64) -> Option<MemorySample> {
        Some(MemorySample {
            rss_kib: kib,
            ..MemorySample::default()
        })
    }

    fn watched(names: &[&str]) -> Vec<WatchedProcess> {
        names
            .iter()
            .enumerate()
            .map(|(i, name)| WatchedProcess {
                name: (*name).into(),
                pid: i as u32 + 1,
                log: None,
                metrics: None,
            })
            .collect()
    }

    #[test]
    fn growth_is_measured_after_the_first_window() {
        let processes = watched(&["a", "b"]);
        let start = vec![rss(100), rss(50)];
        let windows = vec![vec![rss(200), rss(80)], vec![rss(210), None]];
        let end = vec![rss(220), None];
        let reports = process_reports(&processes, &start, &windows, &end);
        assert_eq!(reports[0].rss_growth_after_warmup_kib, Some(20));
        assert_eq!(reports[0].rss_growth_after_warmup_pct, Some(10.0));
        // It states no replay filters: all its growth is unaccounted for.
        assert_eq!(reports[0].rss_growth_unaccounted_kib, Some(20));
        assert!(reports[0].running_at_end);
        assert_eq!(reports[1].rss_growth_after_warmup_kib, None);
        assert!(!reports[1].running_at_end);
        // One window: nothing after the warm-up to judge.
        let single = process_reports(&processes, &start, &windows[..1], &end);
        assert_eq!(single[0].rss_growth_after_warmup_kib, None);
        assert_eq!(single[0].rss_growth_unaccounted_kib, None);
    }

    #[test]
    fn the_replay_filters_a_node_states_are_taken_out_of_its_growth() {
        let node = |rss_kib, replay_filters_kib| {
            Some(MemorySample {
                rss_kib,
                replay_filters_kib: Some(replay_filters_kib),
                stated_max_kib: Some(200_000),
            })
        };
        let processes = watched(&["mix1"]);
        // Ends inside an overlap: a second 41,700 KiB filter, 200 KiB of other growth.
        let windows = vec![vec![node(50_000, 41_700)], vec![node(50_100, 41_700)]];
        let end = vec![node(91_900, 83_400)];
        let r = &process_reports(&processes, &[node(49_000, 41_700)], &windows, &end)[0];
        assert_eq!(r.rss_growth_after_warmup_kib, Some(41_900));
        assert_eq!(r.rss_growth_unaccounted_kib, Some(200));
        assert_eq!(r.rss_growth_unaccounted_pct, Some(0.4));
        assert_eq!(r.replay_filters_kib_end, Some(83_400));
        assert_eq!(r.memory_kib_max_stated, Some(200_000));
        // Window 1 inside an overlap, the end after it: the filter dropped is no shrinkage
        // that hides a leak of the same size.
        let windows = vec![vec![node(92_000, 83_400)], vec![node(50_000, 41_700)]];
        let end = vec![node(80_000, 41_700)];
        let r = &process_reports(&processes, &[None], &windows, &end)[0];
        assert_eq!(r.rss_growth_after_warmup_kib, Some(-12_000));
        assert_eq!(r.rss_growth_unaccounted_kib, Some(29_700));
    }

    #[test]
    fn panics_are_counted_in_logs() {
        let path = std::env::temp_dir().join(format!("loadgen-panic-{}.log", std::process::id()));
        std::fs::write(
            &path,
            "started\nthread 'main' panicked at src/x.rs:1:1:\nboom\nthread 'w' panicked at y\n",
        )
        .unwrap();
        assert_eq!(panics_logged(&path), 2);
        std::fs::write(&path, "all fine\n").unwrap();
        assert_eq!(panics_logged(&path), 0);
        let _ = std::fs::remove_file(&path);
        assert_eq!(panics_logged(&path), 0);
    }

    #[test]
    fn windows_cover_the_run_and_the_last_is_cut() {
        let s = 1_000_000_000;
        assert_eq!(count(300 * s, 1_800 * s), 6);
        assert_eq!(count(300 * s, 10 * s), 1);
        assert_eq!(count(30 * s, 100 * s), 4);
        assert_eq!(bounds_ns(3, 30 * s, 100 * s), (90 * s, 100 * s));
        assert_eq!(bounds_ns(0, 300 * s, 10 * s), (0, 10 * s));
    }
}
